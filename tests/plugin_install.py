"""Installing a plugin distribution from plugins/ into the test environment, for real.

The distribution is built as a wheel from a copy of its sources (the build leaves nothing
in the repository), pip-installed into this interpreter's environment, and uninstalled
afterwards, even when the install or a test failed; kproxy-core then finds it through the
``kproxy`` entry-point group like any third-party plugin.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cli_run
import pytest

from kproxy_core.plugins import KproxyPluginManager, get_plugin_manager, set_plugin_manager

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=600)


def build_wheel(src: Path, out: Path) -> Path:
    """The distribution's wheel, built from a copy of ``src`` with this environment's setuptools."""
    copy = out / "src" / src.name
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    r = pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", str(out), str(copy))
    assert r.returncode == 0, f"pip wheel failed:\n{r.stdout}\n{r.stderr}"
    return next(out.glob("*.whl"))


@contextmanager
def installed(dist: str, module: str, out: Path) -> Iterator[tuple[importlib.metadata.Distribution, Path]]:
    """``plugins/<dist>`` pip-installed from its wheel for the duration of the block."""
    probe = pip("--version")
    if probe.returncode:
        pytest.skip(f"pip is not available for {sys.executable}: {(probe.stderr or probe.stdout).strip()}")
    wheel = build_wheel(PLUGINS / dist, out)
    try:
        r = pip("install", "--no-deps", "--no-index", "--force-reinstall", "--quiet", str(wheel))
        assert r.returncode == 0, f"pip install failed:\n{r.stdout}\n{r.stderr}"
        importlib.invalidate_caches()
        yield importlib.metadata.distribution(dist), wheel
    finally:
        r = pip("uninstall", "-y", dist)
        sys.modules.pop(module, None)
        importlib.invalidate_caches()
    assert r.returncode == 0, f"pip uninstall failed:\n{r.stdout}\n{r.stderr}"


@contextmanager
def as_default(pm: KproxyPluginManager) -> Iterator[KproxyPluginManager]:
    """``pm`` as the process's default plugin manager for the block (the kernel oracles
    build their clusters with the default)."""
    previous = get_plugin_manager()
    set_plugin_manager(pm)
    try:
        yield pm
    finally:
        set_plugin_manager(previous)


def user_env() -> dict[str, str]:
    """This environment as a user has it: entry points loaded (the test process turns
    autoload off)."""
    return {k: v for k, v in os.environ.items() if k != "KPROXY_DISABLE_PLUGIN_AUTOLOAD"}


def kproxy(*args: str) -> subprocess.CompletedProcess[str]:
    """``kproxy ARGS`` with entry points on, as a user runs it: the installed console script,
    from outside the repository (paths in ARGS are absolute)."""
    return cli_run.kproxy(*args, env=user_env(), timeout=120)

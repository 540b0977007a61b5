"""The ``kproxy`` command as a user runs it: the console script pip installed next to this
interpreter, started from a directory outside the repository.

``python -m kproxy_core`` with the working directory at the repository root would import the
source tree's ``kproxy_core`` (the working directory comes first on ``sys.path``); in a clean
clone that tree has no compiled extension, so the tests would exercise the pure-Python twin
instead of the build pip installed. The console script puts its own directory first, not the
working directory, and runs from an empty temporary directory here, so inputs are passed as
absolute paths.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _find() -> Path:
    # not resolved: the venv's python is a symlink out of the venv, the script is not
    beside = Path(sys.executable).parent / "kproxy"
    if beside.is_file():
        return beside
    found = shutil.which("kproxy")
    return Path(found) if found else beside


# Where the script is, or where it should be (for command lists built at import time,
# such as test_dns_server.SERVE); script() fails the test when it is not there.
SCRIPT = _find()


def script() -> Path:
    """The installed ``kproxy`` console script; fails the test (never skips) without it."""
    if not SCRIPT.is_file():
        pytest.fail(f"the kproxy console script is not installed: not at {SCRIPT} nor on PATH "
                    f"(pip install kproxy-core into {sys.prefix})", pytrace=False)
    return SCRIPT


def command(*args: str) -> list[str]:
    """``kproxy ARGS`` as an argument list, for Popen and ``ip netns exec``."""
    return [str(script()), *args]


def kproxy(*args: str, env: Mapping[str, str] | None = None, cwd: Path | str | None = None,
           input: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``kproxy ARGS`` to completion, output captured as text. ``env`` replaces the
    environment (default: this process's); ``cwd`` defaults to a fresh empty directory
    outside the repository, removed afterwards."""
    cmd = command(*args)
    env = dict(os.environ if env is None else env)
    if cwd is not None:
        return subprocess.run(cmd, input=input, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="kproxy-cwd-") as here:
        assert not Path(here).resolve().is_relative_to(ROOT), f"TMPDIR is inside the repository: {here}"
        return subprocess.run(cmd, input=input, capture_output=True, text=True, env=env, cwd=here, timeout=timeout)

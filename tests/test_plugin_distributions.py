"""The plugin distributions under plugins/: each builds a wheel, installs like anyone
else's, registers through the ``kproxy`` entry-point group and passes its own tests.

One module-scoped install at a time: a distribution is pip-installed into this
environment from the wheel built here, its tests run in a subprocess, and it is
uninstalled again, even when a test failed.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import plugin_install
import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTIONS = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))


def _project(src: Path) -> dict[str, object]:
    with open(src / "pyproject.toml", "rb") as f:
        data: dict[str, dict[str, object]] = tomllib.load(f)
    return data["project"]


def test_the_plugin_distributions_are_here() -> None:
    assert {p.name for p in DISTRIBUTIONS} >= {"kproxy-extravip"}


@pytest.fixture(scope="module", params=DISTRIBUTIONS, ids=lambda p: p.name)
def installed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    src: Path = request.param
    module = str(_project(src)["name"]).replace("-", "_")
    with plugin_install.installed(src.name, module, tmp_path_factory.mktemp(src.name)) as (_, wheel):
        yield src, wheel


def test_the_wheel_carries_the_entry_point_and_no_tests(installed: tuple[Path, Path]) -> None:
    src, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("tests/")]
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "[kproxy]" in text
    project = _project(src)
    groups = project.get("entry-points")
    assert isinstance(groups, dict) and groups.get("kproxy")
    dist = importlib.metadata.distribution(str(project["name"]))
    assert {ep.name for ep in dist.entry_points if ep.group == "kproxy"} == set(groups["kproxy"])


def test_the_distribution_passes_its_own_tests(installed: tuple[Path, Path], tmp_path: Path) -> None:
    src, _ = installed
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(src / "tests")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout

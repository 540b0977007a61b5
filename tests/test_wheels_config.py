"""The wheel matrix: [tool.cibuildwheel] in pyproject.toml and the GitHub workflow that runs it.

Neither runs here (no container engine); both are checked for what they would do:
cibuildwheel itself lists the build identifiers the configuration selects, and the
workflow is validated against GitHub's workflow schema (check-jsonschema's vendored copy)
and against the configuration it must agree with.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "wheels.yml"
PYTHONS = ("cp310", "cp311", "cp312", "cp313", "cp314")
PLATFORMS = ("manylinux_x86_64", "manylinux_aarch64", "musllinux_x86_64", "musllinux_aarch64")


def _config() -> dict[str, Any]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    return data


def _workflow() -> dict[Any, Any]:
    if not WORKFLOW.exists():
        pytest.skip("the repository's .github/ is not here (the suite runs from a copy of its tests)")
    data: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    return data


def test_cibuildwheel_lists_the_matrix() -> None:
    pytest.importorskip("cibuildwheel", reason="cibuildwheel 4 needs Python 3.11 or later")
    r = subprocess.run([sys.executable, "-m", "cibuildwheel", "--print-build-identifiers", "--platform", "linux"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = set(r.stdout.split())
    assert got == {f"{py}-{plat}" for py in PYTHONS for plat in PLATFORMS}


def test_the_configuration_tests_the_wheel_outside_the_tree() -> None:
    cfg = _config()["tool"]["cibuildwheel"]
    assert cfg["test-extras"] == ["test"]
    assert cfg["test-command"].split()[0] == "pytest"
    sources = cfg["test-sources"]
    assert "kproxy_core" not in sources and "tests" in sources  # the source package is never copied
    for s in sources:
        assert (ROOT / s).exists(), s
    assert cfg["manylinux-x86_64-image"] == cfg["manylinux-aarch64-image"] == "manylinux_2_28"
    # emulated aarch64 runs the twin and engine tests (see the comment there); they exist
    (over,) = cfg["overrides"]
    assert over["select"] == "*-*linux_aarch64"
    files = over["test-command"].split()[2:]
    assert files and all((ROOT / f).is_file() for f in files), files
    assert cfg["musllinux-x86_64-image"] == cfg["musllinux-aarch64-image"] == "musllinux_1_2"


def test_the_workflow_is_a_valid_github_workflow() -> None:
    _workflow()
    pytest.importorskip("check_jsonschema")
    r = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                        str(WORKFLOW)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _steps(wf: dict[Any, Any]) -> list[dict[str, Any]]:
    return [step for job in wf["jobs"].values() for step in job["steps"]]


def test_the_workflow_pins_every_action() -> None:
    uses = [s["uses"] for s in _steps(_workflow()) if "uses" in s]
    assert uses
    for u in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+\.\d+\.\d+", u), f"{u}: not pinned to a release"


def test_the_workflow_runs_the_configuration() -> None:
    wf = _workflow()
    pytest.importorskip("cibuildwheel", reason="cibuildwheel 4 needs Python 3.11 or later")
    # the same cibuildwheel as the tests use (the test extra pins it)
    cibw = [s for s in _steps(wf) if s.get("uses", "").startswith("pypa/cibuildwheel@")]
    assert len(cibw) == 1
    assert cibw[0]["uses"] == f"pypa/cibuildwheel@v{importlib.metadata.version('cibuildwheel')}"
    # the jobs split the configuration's architectures and select nothing else
    archs = _config()["tool"]["cibuildwheel"]["linux"]["archs"]
    assert wf["jobs"]["build_wheels"]["strategy"]["matrix"]["arch"] == archs
    assert set(cibw[0]["env"]) == {"CIBW_ARCHS_LINUX"}
    # the sdist's suite runs from a copy of the same files cibuildwheel copies
    run = next(s["run"] for s in _steps(wf) if "cp -r" in s.get("run", ""))
    copied = re.search(r"cp -r (.*?) /tmp/suite", run)
    assert copied and copied.group(1).split() == _config()["tool"]["cibuildwheel"]["test-sources"]
    # triggers: pushes (branches and v* tags), pull requests
    on = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads the key `on` as True
    assert "v*" in on["push"]["tags"] and "pull_request" in on


def test_the_upload_is_trusted_publishing_on_a_tag() -> None:
    job = _workflow()["jobs"]["publish"]
    assert job["permissions"] == {"id-token": "write"}
    assert "startsWith(github.ref, 'refs/tags/v')" in job["if"]
    assert set(job["needs"]) == {"build_wheels", "build_sdist"}
    assert job["steps"][-1]["uses"].startswith("pypa/gh-action-pypi-publish@")
    assert all("password" not in (s.get("with") or {}) for s in job["steps"])  # no token

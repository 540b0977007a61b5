"""tools/build_wheels.py, the native wheel matrix: what it finds, and one real build."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "build_wheels.py"
pytestmark = pytest.mark.skipif(not TOOL.exists(),
                                reason="tools/ is not here (the suite runs from a copy of its tests)")


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_wheels", TOOL)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["build_wheels"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_it_finds_this_interpreter(tool: ModuleType) -> None:
    found = tool.find_pythons()
    minor = sys.version_info[1]
    assert minor in found
    _, version = found[minor]
    assert version[:2] == sys.version_info[:2] and version >= tuple(sys.version_info[:3])
    assert all(10 <= m <= 14 for m in found)


def test_it_copies_what_cibuildwheel_copies(tool: ModuleType) -> None:
    if sys.version_info >= (3, 11):
        import tomllib

        with open(ROOT / "pyproject.toml", "rb") as f:
            assert tool.test_sources() == tomllib.load(f)["tool"]["cibuildwheel"]["test-sources"]
    assert "tests" in tool.test_sources()


def test_it_reads_pytest_summaries(tool: ModuleType) -> None:
    out = "....\n=========== 2310 passed, 9 skipped in 412.00s (0:06:52) ===========\n"
    assert tool.summary(out) == "2310 passed, 9 skipped in 412.00s (0:06:52)"
    assert tool.summary("nothing") == "no summary"


@pytest.mark.slow
def test_it_builds_and_repairs_a_wheel_for_this_python(tool: ModuleType, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("auditwheel") is None and importlib.util.find_spec("auditwheel") is None:
        pytest.skip("auditwheel is not installed")
    code = tool.main(["--python", f"3.{sys.version_info[1]}", "--no-tests", "--out", str(tmp_path)])
    table = capsys.readouterr().out
    assert code == 0, table
    wheels = sorted(tmp_path.glob("kproxy_core-*manylinux*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "kproxy_core/_engine.pyi" in names and "kproxy_core/examples/mynginx.yaml" in names
    assert not [n for n in names if n.startswith("tests/")]
    assert f"cp3{sys.version_info[1]}" in wheels[0].name and "manylinux_2_" in wheels[0].name
    assert list(tmp_path.glob("kproxy_extravip-*-py3-none-any.whl"))
    assert wheels[0].name in table and "not run (--no-tests)" in table

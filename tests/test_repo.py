"""The repository's own promises: README commands, lint, types, the stub contract, packaging."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# cibuildwheel and tools/build_wheels.py run the suite from a copy of tests/ and a few
# other files, without the package's sources: what checks the sources needs them
SOURCE_TREE = (ROOT / "kproxy_core" / "__init__.py").exists() and (ROOT / ".ci" / "run").exists()
needs_source = pytest.mark.skipif(
    not SOURCE_TREE, reason="the source tree is not here (the suite runs from a copy of its tests, against a wheel)")


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_the_two_commands() -> None:
    demo, tests = _readme_commands()[:2]
    assert demo.endswith("kproxy demo") and "pip install ." in demo
    assert tests.endswith("pytest") and "[test]" in tests


@needs_source
def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in ci


def _tool(name: str) -> list[str]:
    return [sys.executable, "-m", name]


@needs_source
def test_ruff_clean() -> None:
    pytest.importorskip("ruff")
    r = subprocess.run([*_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_source
def test_mypy_clean() -> None:
    pytest.importorskip("mypy")
    r = subprocess.run([*_tool("mypy")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_source
def test_stubtest_engine() -> None:
    """The hand-written kproxy_core/_engine.pyi matches the compiled module."""
    pytest.importorskip("mypy")
    import kproxy_core

    if not kproxy_core.COMPILED_AVAILABLE:
        pytest.fail("kproxy_core._engine is not built")
    allow = ROOT / "kproxy_core" / "stubtest-allowlist.txt"
    cmd = [sys.executable, "-m", "mypy.stubtest", "kproxy_core._engine"]
    if allow.exists():
        # Cython adds pickling helpers only in some builds: allow them, don't require them
        cmd += ["--allowlist", str(allow), "--ignore-unused-allowlist"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr


@needs_source
@pytest.mark.slow
def test_sdist_builds_a_wheel(tmp_path: Path) -> None:
    """The sdist carries src/*.pyx and friends, so a wheel builds from it."""
    pytest.importorskip("build")
    src = tmp_path / "src"
    skip = shutil.ignore_patterns(".venv", "build", "dist", "*.so", "*.egg-info", ".git", "__pycache__",
                                  ".hypothesis")

    def ignore(d: str, names: list[str]) -> set[str]:
        # the generated src/*.c goes; kproxy_core/roofline.c is a source and stays
        return set(skip(d, names)) | ({n for n in names if n.endswith(".c")} if Path(d).name == "src" else set())

    shutil.copytree(ROOT, src, ignore=ignore)
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                        str(src)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sdist = next((tmp_path / "dist").glob("*.tar.gz"))
    wheel = next((tmp_path / "dist").glob("*.whl"))
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    assert any(n.endswith("src/_engine.pyx") for n in names)
    assert any(n.endswith("examples/mynginx.yaml") for n in names)
    wnames = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("kproxy_core/_engine") and n.endswith(".so") for n in wnames)
    assert "kproxy_core/_engine.pyi" in wnames and "kproxy_core/py.typed" in wnames
    assert "kproxy_core/roofline.c" in wnames  # `kproxy bench --sweep` compiles it
    assert "kproxy_core/examples/mynginx.yaml" in wnames


# --------------------------------------------------------------------------- what CI tests


@pytest.mark.parametrize("strict", ["1", ""])
def test_strict_mode_fails_a_run_that_skipped(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                             strict: str) -> None:
    monkeypatch.setenv("KPROXY_TESTS_STRICT", strict)
    pytester.makepyfile("import pytest\ndef test_a():\n    pytest.skip('dig is not installed')\n"
                        "def test_b():\n    pass\n")
    r = pytester.runpytest("-p", "strict_skips", "-p", "no:cacheprovider")
    r.assert_outcomes(passed=1, skipped=1)
    assert r.ret == (pytest.ExitCode.TESTS_FAILED if strict else pytest.ExitCode.OK)
    if strict:
        r.stdout.fnmatch_lines(["*KPROXY_TESTS_STRICT is set: 1 skipped test(s) fail this run*",
                                "*test_a*dig is not installed*"])


@needs_source
def test_ci_forbids_skips() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "export KPROXY_TESTS_STRICT=1" in ci
    assert ci.index("export KPROXY_TESTS_STRICT=1") < ci.index(_readme_commands()[1])


def test_the_suite_tests_the_installed_package() -> None:
    """Under CI the suite imports the package pip installed from a wheel it built, never
    the source tree (tests run with --import-mode=importlib, which adds no rootdir to
    sys.path, from the pytest console script, which adds no working directory)."""
    import importlib.metadata

    import kproxy_core

    here = Path(kproxy_core.__file__).resolve().parent
    dist = importlib.metadata.distribution("kproxy-core")
    editable = bool(json.loads(dist.read_text("direct_url.json") or "{}").get("dir_info", {}).get("editable"))
    if not os.environ.get("KPROXY_TESTS_STRICT") and (editable or here == ROOT / "kproxy_core"):
        pytest.skip("a development install: the package under test is the source tree")
    assert here != ROOT / "kproxy_core", f"kproxy_core was imported from the source tree {here}"
    assert not editable, "kproxy-core is installed in editable mode"
    files = {str(f) for f in dist.files or ()}
    assert any(f.startswith("kproxy_core/_engine") and f.endswith((".so", ".pyd")) for f in files)
    assert (here / "__init__.py").exists() and kproxy_core.COMPILED_AVAILABLE
    assert dist.version == kproxy_core.__version__

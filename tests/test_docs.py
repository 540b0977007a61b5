"""docs/plugins.md keeps up with kproxy_core/hookspecs.py: every hook has a section with its
exact signature, every example runs, and every hook is implemented by some test."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from kproxy_core import hookspecs

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "plugins.md"


def hook_names() -> list[str]:
    return sorted(n for n, f in vars(hookspecs).items() if n.startswith("kproxy_") and callable(f))


def signature_text(name: str) -> str:
    """``kproxy_x(a: T, b: U) -> R`` from the spec (annotations are strings here)."""
    sig = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{name}({params}) -> {sig.return_annotation}"


def sections() -> dict[str, str]:
    """Level-3 headings of the doc: heading text -> body."""
    out: dict[str, str] = {}
    parts = re.split(r"^### (.+)$", DOC.read_text(), flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        out[heading.strip().strip("`")] = body
    return out


def test_there_are_hooks() -> None:
    assert hook_names() == [
        "kproxy_endpoint_selector",
        "kproxy_endpoint_weights",
        "kproxy_read_object",
        "kproxy_register_service_types",
        "kproxy_validate_service",
    ]


@pytest.mark.parametrize("name", hook_names())
def test_every_hook_is_documented_with_its_exact_signature(name: str) -> None:
    docs = sections()
    assert signature_text(name) in docs, f"no '### `{signature_text(name)}`' section in docs/plugins.md"
    assert "```python" in docs[signature_text(name)], f"the {name} section has no runnable example"


@pytest.mark.parametrize("name", hook_names())
def test_every_hook_has_a_test(name: str) -> None:
    """Some test (not this file, not the docs) implements the hook."""
    here = Path(__file__).name
    pattern = re.compile(rf"def {name}\(")
    users = [p.name for p in (ROOT / "tests").rglob("test_*.py") if p.name != here and pattern.search(p.read_text())]
    assert users, f"no test implements {name}"


@pytest.mark.parametrize("name", hook_names())
def test_every_hook_has_a_docstring_saying_when_and_what(name: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert "Called" in doc and ("Return" in doc or "return" in doc), name


def examples() -> list[tuple[int, str]]:
    text = DOC.read_text()
    return [
        (text[: m.start()].count("\n") + 1, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.M | re.S)
    ]


@pytest.mark.parametrize(("line", "code"), examples(), ids=[f"line{n}" for n, _ in examples()])
def test_examples_run(line: int, code: str) -> None:
    exec(compile(code, f"{DOC}:{line}", "exec"), {"__name__": f"docs_example_{line}"})

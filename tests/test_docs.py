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


def test_every_handler_member_is_in_the_table_with_its_types() -> None:
    """Each ServiceType method appears in the handler table with its arguments' types."""
    from kproxy_core.servicetypes import ServiceType

    text = DOC.read_text()
    for name, member in vars(ServiceType).items():
        if name.startswith("_"):
            continue
        if callable(member):
            sig = inspect.signature(member)
            params = ", ".join(f"{p.name}: {p.annotation}" for p in list(sig.parameters.values())[1:])
            row = f"`{name}({params}) -> {sig.return_annotation}`".replace("|", "\\|")
        else:
            row = f"`{name}: "
        assert row in text, f"docs/plugins.md: the handler table has no {row}"


@pytest.mark.parametrize("cls", ["EndpointInfo", "NodeView", "PlanPort", "FrontendSpec", "RuleText"])
def test_the_types_plugins_get_are_documented_field_by_field(cls: str) -> None:
    import dataclasses

    import kproxy_core as kp

    text = DOC.read_text()
    for f in dataclasses.fields(getattr(kp, cls)):
        assert f"`{f.name}`" in text or f"{f.name}=" in text, f"docs/plugins.md: {cls}.{f.name} is not documented"


def test_the_docs_name_every_environment_variable_of_the_manager() -> None:
    from kproxy_core import plugins

    text = DOC.read_text()
    for var in (plugins.AUTOLOAD_OFF_ENV, plugins.DISABLE_ENV, plugins.TRACE_ENV, "KPROXY_TRACEBACK",
                plugins.PRIORITY_ATTRIBUTE, "tryfirst", "trylast"):
        assert var in text, var

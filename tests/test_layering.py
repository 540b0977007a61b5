"""The package's import graph: no cycles, and the layers the design names.

Every import counts: at module level, inside functions (lazy) and under
``TYPE_CHECKING``, since each is a dependency a reader of the module has to follow. The
compiled core's ``.pyx`` is read too. Importing a name from the package itself
(``from . import x`` where ``x`` is not a module) counts as an import of
``kproxy_core/__init__``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import kproxy_core

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(kproxy_core.__file__).resolve().parent  # the package under test, installed or not
PYX = ROOT / "src" / "_engine.pyx"  # only in the source tree
EXTENSIONS = {"kproxy_core._engine"}  # built from src/, not a .py file


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = ["kproxy_core", *p.relative_to(PACKAGE).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (p, is_pkg)
    return out


MODULES = _modules()


def _targets(module: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".") if is_pkg else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append(sub if sub in MODULES or sub in EXTENSIONS else base)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in its text)."""
    graph: dict[str, set[str]] = {}
    known = set(MODULES) | EXTENSIONS
    for name, (path, is_pkg) in MODULES.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                deps.update(t for t in _targets(name, is_pkg, node) if t in known)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in known)
        deps.discard(name)
        graph[name] = deps
    if PYX.exists():
        pyx = set(re.findall(r"^\s*(?:from|import)\s+(kproxy_core(?:\.\w+)*)", PYX.read_text(), re.M))
        graph["kproxy_core._engine"] = {m for m in pyx if m in known}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        for w in graph.get(v, ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


GRAPH = import_graph()


def test_the_graph_is_read() -> None:
    # the reader finds imports of every kind, or the checks below would pass on nothing
    assert "kproxy_core.chains" in GRAPH["kproxy_core.plan"]
    assert "kproxy_core.plugins" in GRAPH["kproxy_core.plan"]  # a lazy import
    assert "kproxy_core.plantypes" in GRAPH["kproxy_core.hookspecs"]  # under TYPE_CHECKING
    assert "kproxy_core._engine" in GRAPH["kproxy_core.engine"]
    if PYX.exists():
        assert "kproxy_core.tables" in GRAPH["kproxy_core._engine"]  # from the .pyx
    assert "kproxy_core.engine" in GRAPH["kproxy_core"]


def test_cycles_are_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


@pytest.mark.parametrize(
    "module",
    ["kproxy_core.plan", "kproxy_core.tables", "kproxy_core._engine_py", "kproxy_core._engine",
     "kproxy_core.trace", "kproxy_core.model", "kproxy_core.manifests", "kproxy_core.dns"],
)
def test_the_plan_and_below_import_no_renderer(module: str) -> None:
    below = closure(GRAPH, module) | {module}
    assert not {m for m in below if m.startswith("kproxy_core.render")}


def test_the_model_does_not_reach_the_loader() -> None:
    assert "kproxy_core.manifests" not in closure(GRAPH, "kproxy_core.model")
    # nor the plugin API: the model is data
    assert closure(GRAPH, "kproxy_core.model") <= {"kproxy_core.addresses"}


def test_the_plugin_api_needs_no_planner() -> None:
    # what plugins are handed is data: the planner, the resolver and the engine call them
    for module in ("kproxy_core.servicetypes", "kproxy_core.hookspecs", "kproxy_core.plantypes"):
        reach = closure(GRAPH, module)
        assert not reach & {"kproxy_core.plan", "kproxy_core.dns", "kproxy_core.engine", "kproxy_core.manifests"}


def test_chain_names_come_from_one_module() -> None:
    # kube-proxy's chain hashing (sha256 + base32) is written once, in kproxy_core.chains
    hashing = {name for name, (path, _) in MODULES.items() if "b32encode" in path.read_text()}
    assert hashing == {"kproxy_core.chains"}
    for user in ("kproxy_core.plan", "kproxy_core.plantypes", "kproxy_core.render.iptables",
                 "kproxy_core.render.nftables", "kproxy_core.trace"):
        assert "kproxy_core.chains" in GRAPH[user], user

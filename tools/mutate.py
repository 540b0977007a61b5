"""Mutation testing for kproxy-core: plant small bugs one at a time and see whether the
tests notice.

Run from the repository root (an installed dev environment: ``pip install -e '.[test]'``)::

    python tools/mutate.py run --sample 40 --seed 1      # Python mutants of the decision code
    python tools/mutate.py plants                        # the planted bugs of issue 15
    python tools/mutate.py run --only plan.py:412        # the mutants of one line
    python tools/mutate.py c-run --sample 60 --seed 1    # C mutants of the core's decision functions

Every mutant is applied to a private copy of the tree (``--work``, default a temporary
directory), never to the tree itself, so the suite can keep running meanwhile. A mutant is
*killed* when its test command fails, *survived* when it passes, *timeout* when it runs
past ``--timeout`` (counted as killed: a hang is noticed). The C mutants rebuild the
extension in the copy (about a minute each).

The Python mutants are the usual small ones, found with ``ast`` in the functions of the
target files (docstrings, messages and type annotations left alone): a comparison turned
into its neighbour (``<`` and ``<=``, ``==`` and ``!=``, ``in`` and ``not in``), ``and``
and ``or`` swapped, a ``not`` dropped, an int constant off by one, ``True``/``False``
flipped, ``+``/``-`` swapped, a ``return X`` that returns None, an ``if`` whose condition
is forced false. ``--sample`` draws that many per file (seeded) instead of all of them.

The C mutants (``c-run``) are found by tokens in the bodies of the core's decision
functions in src/kp_core.h (``C_FUNCTIONS``: matching, source classes, the firewall and
NodePort address checks, the selectors, flow and affinity lookup, expiry, the alias and
Maglev tables, what an update keeps), comments and preprocessor lines left alone: a
comparison turned into its neighbour, ``&&`` and ``||`` swapped, an integer constant off
by one. Each is compiled at -O1 with the compiler commands of one full build (the
Cython output does not change, only the header it includes), about 15 s, then runs the
tests of the compiled core.

Results go to ``--out`` (JSON: one row per mutant with the file, line, the change, the
outcome and the first failing test) and a summary is printed; tests/MUTATION.md keeps the
last run's score and the reasons the survivors do not matter.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# the decision code and the tests that speak for it (fast ones: no kernel, no network)
TARGETS: dict[str, list[str]] = {
    "kproxy_core/plan.py": [
        "tests/test_kube_proxy_flows.py", "tests/test_kube_proxy_table.py", "tests/test_trace_walk.py",
        "tests/test_render_iptables.py", "tests/test_render_nftables.py", "tests/test_nftables_mode.py",
        "tests/test_engine.py", "tests/test_duplicate_endpoints.py", "tests/test_mutation_survivors.py",
        "tests/test_plugin_authoring.py",  # the plugin answers plan.py checks (the second run's survivors)
    ],
    "kproxy_core/manifests.py": [
        "tests/test_manifests.py", "tests/test_port_boundaries.py", "tests/test_realworld.py",
        "tests/test_incremental.py", "tests/test_service_cidr.py", "tests/test_mutation_survivors.py",
    ],
    "kproxy_core/render/iptables.py": ["tests/test_render_iptables.py", "tests/test_cli_rules.py",
                                       "tests/test_plugins.py", "tests/test_mutation_survivors.py"],
    "kproxy_core/render/nftables.py": ["tests/test_render_nftables.py", "tests/test_nftables_mode.py",
                                       "tests/test_plugins.py", "tests/test_mutation_survivors.py"],
    "kproxy_core/tables.py": ["tests/test_core_twins.py", "tests/test_engine.py", "tests/test_kube_proxy_flows.py",
                              "tests/test_mutation_survivors.py"],
}
PYTEST = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
          "--no-header", "-W", "ignore", "-m", "not slow"]  # slow: the kernel namespaces, wheel builds


@dataclass
class Mutant:
    file: str
    line: int
    col: int
    end_line: int
    end_col: int
    before: str
    after: str
    kind: str
    outcome: str = ""
    failed: str = ""
    seconds: float = 0.0

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


# --------------------------------------------------------------------------- finding mutants


_CMP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
             ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}


def _skipped_lines(tree: ast.Module) -> set[int]:
    """Lines of docstrings, raise statements and warnings: mutating messages proves nothing."""
    out: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            out.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
        if isinstance(node, ast.Raise):
            out.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return out


def find_mutants(path: str) -> list[Mutant]:
    src = (ROOT / path).read_text()
    tree = ast.parse(src)
    skip = _skipped_lines(tree)
    inside_fn: set[int] = set()
    annotations: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            inside_fn.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
            for a in [*node.args.args, *node.args.kwonlyargs, node.returns]:
                ann = getattr(a, "annotation", a)
                if ann is not None:
                    annotations.update(range(ann.lineno, (ann.end_lineno or ann.lineno) + 1))
        if isinstance(node, ast.AnnAssign):
            annotations.update(range(node.annotation.lineno, (node.annotation.end_lineno or 0) + 1))
    joined: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            joined.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    out: list[Mutant] = []

    def add(node: ast.AST, new: ast.AST | str, kind: str) -> None:
        line = getattr(node, "lineno", 0)
        if line not in inside_fn or line in skip or line in annotations:
            return
        seg = ast.get_source_segment(src, node)
        if seg is None or ("\n" in seg and kind not in ("cmp", "boolop")):
            return
        after = new if isinstance(new, str) else ast.unparse(new)
        if after == seg:
            return
        out.append(Mutant(path, line, node.col_offset, node.end_lineno or line, node.end_col_offset or 0,
                          seg, after, kind))

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMP_SWAP:
            if node.lineno in joined:
                continue
            m = ast.Compare(node.left, [_CMP_SWAP[type(node.ops[0])]()], node.comparators)
            add(node, m, "cmp")
        elif isinstance(node, ast.BoolOp) and node.lineno not in joined:
            other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            add(node, ast.BoolOp(other, node.values), "boolop")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not) and node.lineno not in joined:
            add(node, node.operand, "not")
        elif isinstance(node, ast.Constant) and node.lineno not in joined:
            if node.value is True or node.value is False:
                add(node, "False" if node.value else "True", "bool")
            elif type(node.value) is int and 0 <= node.value <= 70000:
                add(node, str(node.value + 1), "int")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub) and node.lineno not in joined:
            if isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
                continue  # string concatenation
            op = ast.Sub() if isinstance(node.op, ast.Add) else ast.Add()
            add(node, ast.BinOp(node.left, op, node.right), "arith")
        elif isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            add(node, "return None", "return")
        elif isinstance(node, ast.If) and node.test.lineno not in joined:
            add(node.test, "False", "if-false")
    # one mutant per (line, column, change)
    seen: set[tuple[int, int, str]] = set()
    unique = []
    for m in out:
        key = (m.line, m.col, m.after)
        if key not in seen:
            seen.add(key)
            unique.append(m)
    return unique


def apply(src: str, m: Mutant) -> str:
    lines = src.splitlines(keepends=True)
    start = sum(len(x) for x in lines[: m.line - 1]) + len(lines[m.line - 1].encode()[: m.col].decode())
    end = sum(len(x) for x in lines[: m.end_line - 1]) + len(lines[m.end_line - 1].encode()[: m.end_col].decode())
    assert src[start:end] == m.before, (m, src[start:end])
    return src[:start] + m.after + src[end:]


# --------------------------------------------------------------------------- running


def make_copy(work: Path, rev: str | None = None) -> Path:
    """The tree to mutate: the working tree as it is, or ``rev`` of the repository (with
    its extension built), so that edits in progress do not leak in."""
    copy = work / "tree"
    if copy.exists():
        shutil.rmtree(copy)
    if rev is not None:
        copy.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(copy)], input=archive, check=True)
        build(copy)
        return copy
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".hypothesis",
                                    "benchmarks", "dist", "wheelhouse")
    shutil.copytree(ROOT, copy, ignore=ignore)
    return copy


def run_tests(copy: Path, tests: list[str], timeout: float, select: str | None = None) -> tuple[str, str, float]:
    existing = [t for t in tests if (copy / t).exists()]
    if select:
        existing = ["-k", select, *existing]
    # PYTHONPATH: subprocesses (the kproxy script) import the copy too, not the installed tree
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", KPROXY_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONPATH=str(copy))
    t0 = time.monotonic()
    try:
        r = subprocess.run([*PYTEST, *existing], cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", "", time.monotonic() - t0
    took = time.monotonic() - t0
    if r.returncode == 0:
        return "survived", "", took
    failed = next((ln.split(" ", 1)[1].split(" - ")[0] for ln in r.stdout.splitlines() if ln.startswith("FAILED ")),
                  "")
    if r.returncode not in (1,):  # collection error, crash: the mutant broke the import
        return "killed", failed or f"pytest exit {r.returncode}", took
    return "killed", failed, took


def cmd_run(args: argparse.Namespace) -> int:
    work = Path(args.work or tempfile.mkdtemp(prefix="kproxy-mutate-"))
    copy = make_copy(work, args.rev)
    rng = random.Random(args.seed)
    files = args.files.split(",") if args.files else list(TARGETS)
    mutants: list[Mutant] = []
    for f in files:
        found = find_mutants(f)
        if args.only:
            found = [m for m in found if f"{Path(m.file).name}:{m.line}" in args.only.split(",")]
        elif args.sample and len(found) > args.sample:
            found = rng.sample(found, args.sample)
        mutants.extend(sorted(found, key=lambda m: (m.line, m.col)))
    print(f"{len(mutants)} mutants in {', '.join(files)}; work tree {copy}", flush=True)
    baseline = {f: run_tests(copy, TARGETS[f], args.timeout)[:2] for f in files}
    if any(v[0] != "survived" for v in baseline.values()):
        failing = {f: v[1] or v[0] for f, v in baseline.items() if v[0] != "survived"}
        print(f"the tests fail without a mutant: {failing}", file=sys.stderr)
        return 2
    for i, m in enumerate(mutants, 1):
        path = copy / m.file
        original = path.read_text()
        path.write_text(apply(original, m))
        try:
            m.outcome, m.failed, m.seconds = run_tests(copy, TARGETS[m.file], args.timeout)
        finally:
            path.write_text(original)
        print(f"[{i}/{len(mutants)}] {m.outcome:<8} {m.where} {m.kind}: {m.before!r} -> {m.after!r}"
              f"{'  (' + m.failed + ')' if m.failed else ''}", flush=True)
    rows = [asdict(m) for m in mutants]
    Path(args.out).write_text(json.dumps({"seed": args.seed, "sample": args.sample, "mutants": rows}, indent=1))
    killed = sum(m.outcome in ("killed", "timeout") for m in mutants)
    print(f"score: {killed}/{len(mutants)} killed ({killed / max(1, len(mutants)):.0%}); results in {args.out}")
    for m in mutants:
        if m.outcome == "survived":
            print(f"  survived {m.where} {m.kind}: {m.before!r} -> {m.after!r}")
    return 0


# --------------------------------------------------------------------------- C mutants

# the decision functions of the compiled core: what a packet gets, not how memory is kept
C_FUNCTIONS = [
    "kp_pick", "kp_in4", "kp_in6", "kp_is_local4", "kp_is_local6", "kp_cls4", "kp_cls6",
    "kp_action4", "kp_action6", "kp_np_accepts4", "kp_np_accepts6", "kp_check4", "kp_check6",
    "kp_rr_next", "kp_select4", "kp_select6", "kp_match4", "kp_match6", "kp_decide4", "kp_decide6",
    "kp_flow4_find", "kp_flow6_find", "kp_aff4_find", "kp_aff6_find", "kp_table_place",
    "kp_flows_drop", "kp_alias_thr", "kp_alias_build", "kp_blk_alias", "kp_blk_finish",
    "kp_blk_keeps", "kp_blk_has", "kp_rr_carry", "kp_maglev_fill", "kp_heap_down", "kp_turn_lt",
]
C_FILE = "src/kp_core.h"
C_RUN_TESTS = ["tests/test_core_twins.py", "tests/test_flow_expiry.py", "tests/test_engine.py",
               "tests/test_kube_proxy_flows.py", "tests/test_selectors_engine.py", "tests/test_differential.py",
               "tests/test_incremental.py", "tests/test_mutation_survivors.py", "tests/test_flow_table_slots.py"]
C_SELECT = "not python"  # a C mutant cannot change the pure-Python twin: its parametrisations are left out
_C_TOKEN = re.compile(r"<<=|>>=|<<|>>|->|<=|>=|==|!=|&&|\|\||<|>|\b\d+\b")
_C_SWAP = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "==", "&&": "||", "||": "&&"}


def _c_bodies(src: str, names: list[str]) -> dict[str, tuple[int, int]]:
    """Each function's body as (first line, last line), 1-based, by brace counting from
    its definition (the header's functions have no braces in strings or chars)."""
    lines = src.splitlines()
    out: dict[str, tuple[int, int]] = {}
    for name in names:
        pat = re.compile(r"^(?:KP_INLINE|static)\b[^;]*\b" + re.escape(name) + r"\(")
        start = next((i for i, ln in enumerate(lines) if pat.match(ln)), None)
        if start is None:
            raise SystemExit(f"tools/mutate.py: {name} is not defined in {C_FILE} any more; update C_FUNCTIONS")
        depth, seen, i = 0, False, start
        while i < len(lines):
            code = re.sub(r"/\*.*?\*/|//.*", "", lines[i])
            depth += code.count("{") - code.count("}")
            seen = seen or "{" in code
            if seen and depth == 0:
                break
            i += 1
        out[name] = (start + 1, i + 1)
    return out


def find_c_mutants(path: str = C_FILE, names: list[str] | None = None) -> list[Mutant]:
    src = (ROOT / path).read_text()
    lines = src.splitlines()
    out: list[Mutant] = []
    in_comment = False
    for name, (first, last) in _c_bodies(src, names or C_FUNCTIONS).items():
        for no in range(first + 1, last + 1):  # not the signature line
            raw = lines[no - 1]
            code = raw
            if in_comment:  # a comment opened on an earlier line
                end = code.find("*/")
                if end < 0:
                    continue
                code = " " * (end + 2) + code[end + 2:]
                in_comment = False
            code = re.sub(r"/\*.*?\*/", lambda m: " " * len(m.group()), code)
            if "/*" in code:
                code = code[: code.index("/*")]
                in_comment = True
            if "//" in code:
                code = code[: code.index("//")]
            if code.lstrip().startswith("#"):
                continue
            for m in _C_TOKEN.finditer(code):
                tok = m.group()
                if tok in _C_SWAP:
                    after, kind = _C_SWAP[tok], "cmp" if tok not in ("&&", "||") else "logic"
                elif tok.isdigit():
                    if raw[m.start() - 1: m.start()] in ("[",) and code[m.end(): m.end() + 1] == "]":
                        kind = "index"
                    else:
                        kind = "int"
                    after = str(int(tok) + 1) if tok != "1" else "0"
                else:
                    continue
                out.append(Mutant(path, no, m.start(), no, m.end(), tok, after, f"c-{kind} in {name}"))
    return out


def _c_compile_commands(copy: Path) -> list[list[str]]:
    """The compile and link commands of a full build of the copy, at -O1 (a mutant only
    changes the header the Cython output includes, so these two are all a rebuild needs)."""
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--force"], cwd=copy, capture_output=True,
                       text=True, timeout=1200)
    if r.returncode:
        raise SystemExit(f"building the extension failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    cmds = []
    for ln in r.stdout.splitlines():
        words = shlex.split(ln)
        if words and ("_engine.c" in ln or ("-shared" in words and "_engine.o" in ln)):
            cmds.append(["-O1" if w in ("-O2", "-O3") else w for w in words])
    if len(cmds) != 2 or "-c" not in cmds[0]:
        raise SystemExit(f"tools/mutate.py: expected a compile and a link command in the build output, got {cmds}")
    return cmds


def _c_rebuild(copy: Path, cmds: list[list[str]]) -> bool:
    """Compile and link; False when the mutant does not compile (not counted)."""
    for cmd in cmds:
        r = subprocess.run(cmd, cwd=copy, capture_output=True, text=True, timeout=600)
        if r.returncode:
            return False
    built = Path(cmds[1][cmds[1].index("-o") + 1])
    shutil.copyfile(copy / built, copy / "kproxy_core" / built.name)
    return True


def cmd_c_run(args: argparse.Namespace) -> int:
    work = Path(args.work or tempfile.mkdtemp(prefix="kproxy-cmutate-"))
    copy = make_copy(work, args.rev)
    names = args.functions.split(",") if args.functions else None
    mutants = find_c_mutants(C_FILE, names)
    total = len(mutants)
    if args.only:
        wanted = {int(x) for x in args.only.split(",")}
        mutants = [m for m in mutants if m.line in wanted]
    elif args.sample and len(mutants) > args.sample:
        mutants = sorted(random.Random(args.seed).sample(mutants, args.sample), key=lambda m: (m.line, m.col))
    cmds = _c_compile_commands(copy)
    print(f"{len(mutants)} of {total} C mutants in {len(names or C_FUNCTIONS)} functions; work tree {copy}",
          flush=True)
    tests = args.tests.split(",") if args.tests else C_RUN_TESTS
    header = copy / C_FILE
    original = header.read_text()
    if not _c_rebuild(copy, cmds) or run_tests(copy, tests, args.timeout, C_SELECT)[0] != "survived":
        print("the tests fail without a mutant (at -O1)", file=sys.stderr)
        return 2
    for i, m in enumerate(mutants, 1):
        header.write_text(apply(original, m))
        t0 = time.monotonic()
        try:
            if _c_rebuild(copy, cmds):
                m.outcome, m.failed, _ = run_tests(copy, tests, args.timeout, C_SELECT)
            else:
                m.outcome = "no-compile"
        finally:
            header.write_text(original)
        m.seconds = round(time.monotonic() - t0, 1)
        print(f"[{i}/{len(mutants)}] {m.outcome:<8} {m.where} {m.kind}: {m.before!r} -> {m.after!r}"
              f"{'  (' + m.failed + ')' if m.failed else ''} [{m.seconds:.0f} s]", flush=True)
    _c_rebuild(copy, cmds)
    counted = [m for m in mutants if m.outcome != "no-compile"]
    killed = sum(m.outcome in ("killed", "timeout") for m in counted)
    Path(args.out).write_text(json.dumps({"seed": args.seed, "sample": args.sample, "of": total,
                                          "mutants": [asdict(m) for m in mutants]}, indent=1))
    print(f"score: {killed}/{len(counted)} killed ({killed / max(1, len(counted)):.0%}); results in {args.out}")
    for m in counted:
        if m.outcome == "survived":
            line = original.splitlines()[m.line - 1].strip()
            print(f"  survived {m.where} {m.kind}: {m.before!r} -> {m.after!r}   | {line}")
    return 0


# --------------------------------------------------------------------------- planted bugs

C_TESTS = ["tests/test_core_twins.py", "tests/test_flow_expiry.py", "tests/test_engine.py",
           "tests/test_kube_proxy_flows.py", "tests/test_selectors_engine.py", "tests/test_differential.py"]
CLI_TESTS = ["tests/test_cli.py", "tests/test_envvars.py", "tests/test_repo.py"]

# issue 15's review: (what, file, text, replacement); the tests are the file's TARGETS
PLANTS: list[tuple[str, str, str, str]] = [
    ("masquerade pods instead of non-pods (plan)", "kproxy_core/plan.py",
     "    elif det.implemented and not from_pod:\n        w.masquerade = True",
     "    elif det.implemented and from_pod:\n        w.masquerade = True"),
    ("no serving-terminating fallback (plan)", "kproxy_core/plan.py",
     "                cluster_eps = [e for e in eps if e.serving and e.terminating]",
     "                cluster_eps = []"),
    ("internalTrafficPolicy=Local ignored (plan)", "kproxy_core/plan.py",
     '    internal_local = svc.internal_traffic_policy == "Local"', "    internal_local = False"),
    ("probability printed with 5 decimals (iptables renderer)", "kproxy_core/chains.py",
     'return f"{1.0 / n:0.10f}"', 'return f"{1.0 / n:0.5f}"'),
    ("kp_pick never picks the last endpoint (C)", "src/kp_core.h",
     "return (uint32_t)(((h >> 32) * (uint64_t)n) >> 32);",
     "return n > 1 ? (uint32_t)(((h >> 32) * (uint64_t)(n - 1)) >> 32) : 0;"),
    ("a flow is not refreshed when hit (C)", "src/kp_core.h",
     "                if (track == 1 && fl->stamp != now + st->timeout[proto])\n"
     "                    fl->stamp = now + st->timeout[proto];", ""),
    ("v4 hairpin masquerade dropped (C)", "src/kp_core.h", "    if (sel->addr == src) masq = 1;", ""),
    ("localhost NodePorts flag ignored (plan)", "kproxy_core/plan.py",
     'if self.family != "IPv4" or not self.localhost_nodeports or self.nftables:',
     'if self.family != "IPv4" or self.nftables:'),
    ("service port check accepts 65536 (manifests)", "kproxy_core/manifests.py",
     "        if type(port) is int and 0 < port < 65536:", "        if type(port) is int and 0 < port <= 65536:"),
    ("flow expiry stamp > now -> >= (C)", "src/kp_core.h", "            if (fl->stamp > now) {",
     "            if (fl->stamp >= now) {"),
    ("an endpoint in two slices: keep the first, not the non-terminating one (plan)", "kproxy_core/plan.py",
     "                if key not in found or not info.terminating:", "                if key not in found:"),
    ("`kproxy env` subcommand removed (CLI)", "kproxy_core/cli.py", "    _add_env_parser(sub)\n", ""),
]
PLANT_TESTS = {"kproxy_core/chains.py": TARGETS["kproxy_core/render/iptables.py"], "src/kp_core.h": C_TESTS,
               "kproxy_core/cli.py": CLI_TESTS}


def build(copy: Path) -> None:
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "--force"], cwd=copy,
                       capture_output=True, text=True, timeout=1200)
    if r.returncode:
        raise SystemExit(f"building the extension failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")


def count_failures(copy: Path, tests: list[str], timeout: float) -> tuple[int, int, str]:
    """(failed, passed, first failing test) of a run without -x."""
    existing = [t for t in tests if (copy / t).exists()]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", KPROXY_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONPATH=str(copy))
    cmd = [c for c in PYTEST if c != "-x"]
    r = subprocess.run([*cmd, *existing], cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]
    failed = sum(int(n) for n in re.findall(r"(\d+) (?:failed|error)", tail))
    passed = sum(int(n) for n in re.findall(r"(\d+) passed", tail))
    first = next((ln.split(" ", 1)[1].split(" - ")[0] for ln in r.stdout.splitlines()
                  if ln.startswith(("FAILED ", "ERROR "))), "")
    return failed, passed, first


def cmd_plants(args: argparse.Namespace) -> int:
    work = Path(args.work or tempfile.mkdtemp(prefix="kproxy-plants-"))
    copy = make_copy(work, args.rev)
    so = sorted((copy / "kproxy_core").glob("_engine*.so"))
    saved = {p: p.read_bytes() for p in so}
    rows = []
    for what, file, text, new in PLANTS:
        if args.only and args.only.lower() not in what.lower():
            continue
        path = copy / file
        original = path.read_text()
        if original.count(text) < 1:
            raise SystemExit(f"plant {what!r}: the text is not in {file} any more; update tools/mutate.py")
        path.write_text(original.replace(text, new, 1))
        tests = PLANT_TESTS.get(file) or TARGETS[file]
        t0 = time.monotonic()
        try:
            if file.startswith("src/"):
                build(copy)
            failed, passed, first = count_failures(copy, tests, args.timeout)
        finally:
            path.write_text(original)
            for p, data in saved.items():
                p.write_bytes(data)
        took = time.monotonic() - t0
        rows.append({"plant": what, "file": file, "failed": failed, "passed": passed, "first": first,
                     "seconds": round(took)})
        verdict = f"caught, {failed} failures" if failed else "SURVIVED"
        print(f"{what}: {verdict} ({passed} passed; {first}) [{took:.0f} s]", flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    return 1 if any(r["failed"] == 0 for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/mutate.py", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="Python mutants of the decision code")
    r.add_argument("--files", help="comma-separated targets (default: all of " + ", ".join(TARGETS) + ")")
    r.add_argument("--sample", type=int, default=0, help="mutants per file, drawn with --seed (0: all)")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--only", help="FILE:LINE,... (the file's base name): the mutants of those lines")
    r.add_argument("--timeout", type=float, default=600.0, help="seconds per test run")
    r.add_argument("--work", help="where the copy of the tree goes (default: a new temporary directory)")
    r.add_argument("--out", default="mutation-results.json")
    r.add_argument("--rev", help="mutate this commit (git archive, extension built) instead of the working tree")
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("c-run", help="C mutants of the compiled core's decision functions")
    c.add_argument("--functions", help="comma-separated function names (default: C_FUNCTIONS)")
    c.add_argument("--sample", type=int, default=0, help="mutants drawn with --seed (0: all)")
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--only", help="LINE,... of src/kp_core.h: the mutants of those lines")
    c.add_argument("--tests", help="comma-separated test files (default: C_RUN_TESTS)")
    c.add_argument("--timeout", type=float, default=300.0, help="seconds per test run (a hang is killed)")
    c.add_argument("--work")
    c.add_argument("--out", default="c-mutation-results.json")
    c.add_argument("--rev", help="mutate this commit (git archive, extension built) instead of the working tree")
    c.set_defaults(func=cmd_c_run)
    pl = sub.add_parser("plants", help="the planted bugs of issue 15, each against its file's tests")
    pl.add_argument("--only", help="plants whose description contains this text")
    pl.add_argument("--timeout", type=float, default=1200.0)
    pl.add_argument("--work")
    pl.add_argument("--out", default="plant-results.json")
    pl.add_argument("--rev", help="plant into this commit (git archive, extension built) instead of the working tree")
    pl.set_defaults(func=cmd_plants)
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

"""One address:port listed more than once for a Service port: which copy kube-proxy keeps.

Upstream (kubernetes/kubernetes pkg/proxy/endpointslicecache.go, recent versions):
``endpointInfoByServicePort`` walks the Service's slices and each slice's ports, and
``addEndpoints`` walks the slice's endpoints in list order, keyed by ``IP:port`` (the
address canonical, ``ParseIPSloppy(...).String()``). A copy is stored when the key is new
or when the copy is **not terminating**; nothing else counts (not ready, not serving, not
the node). So:

* rule T: a non-terminating copy beats a terminating one, in either order (the comment
  there: a pod IP reused by a new pod while the old one terminates; prefer the running
  pod);
* rule F: of two terminating copies, the first one seen stays;
* rule L: of two non-terminating copies, the last one seen stays.

The slices come from a Go map, so "first" and "last" across slices are unspecified
upstream ("the result is undefined"); within one slice they follow the list. kproxy-core
walks the slices in name order (``Cluster.slices_for``), which makes F and L across slices
deterministic: where upstream allows either copy the tests below check that kproxy's is
one of them and then pin kproxy's own choice, saying so. Older kube-proxy (04791b49) kept
a *local* copy instead; the current rule ignores locality, and so does kproxy-core.

The effect is then read three ways on both twins: the plan's endpoint (which copy's
node and conditions), ``engine.trace`` candidates and filtered endpoints, and lookups
(which endpoints new connections reach, or REJECT when none is usable), with the pools
as ``CategorizeEndpoints`` forms them: the ready endpoints, else the serving terminating
ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from k8s import ep, eport, node, port, service, slice_

import kproxy_core as kp

NODE = "n1"
VIP = "10.96.0.10"
DUP = "10.0.1.1"  # the address listed twice
OTHER = "10.0.2.2"  # a ready endpoint of its own (the "anchor"), in some tests
CLIENT = "10.0.0.7"

# conditions: (ready, serving, terminating)
COND = {
    "ready": (True, True, False),
    "not-ready": (False, False, False),
    "terminating-serving": (False, True, True),
    "terminating": (False, False, True),
}

# (copy p, copy q, the upstream rule, which copy it keeps: "p", "q", or "first"/"last" seen)
PAIRS = [
    ("ready", "terminating-serving", "T", "p"),
    ("ready", "terminating", "T", "p"),
    ("not-ready", "terminating-serving", "T", "p"),
    ("not-ready", "terminating", "T", "p"),
    ("terminating-serving", "terminating", "F", "first"),
    ("ready", "not-ready", "L", "last"),
]


def _copy(cond: str, node_name: str) -> dict[str, Any]:
    ready, serving, terminating = COND[cond]
    return ep(DUP, node_name, ready=ready, serving=serving, terminating=terminating)


def _cluster(slices: list[tuple[str, list[dict[str, Any]]]], anchor: bool, **spec: Any) -> list[dict[str, Any]]:
    objs = [
        node(NODE, "192.168.0.1"), node("node-p", "192.168.0.2"), node("node-q", "192.168.0.3"),
        service("default", "web", VIP, [port(80, "http")], **spec),
    ]
    for name, endpoints in slices:
        objs.append(slice_("default", "web", endpoints, [eport(8080, "http")], name=name))
    if anchor:
        objs.append(slice_("default", "web", [ep(OTHER, "node-q")], [eport(8080, "http")], name="web-m"))
    return objs


def _kept(engine: kp.Engine) -> kp.EndpointInfo:
    """The plan's one endpoint for the duplicated address."""
    (pp,) = engine.plans["IPv4"].ports
    got = [e for e in pp.endpoints if e.ip == DUP]
    assert len(got) == 1, pp.endpoints
    return got[0]


def _conds(e: Any) -> tuple[bool, bool, bool]:
    return (e.ready, e.serving, e.terminating) if not isinstance(e, dict) else (
        e["ready"], e["serving"], e["terminating"])


def _pool(kept: str, anchor: bool) -> set[str]:
    """The cluster pool (CategorizeEndpoints): ready endpoints, else serving terminating ones."""
    ready, serving, terminating = COND[kept]
    eps = {f"{DUP}:8080": (ready, serving and terminating)}
    if anchor:
        eps[f"{OTHER}:8080"] = (True, False)
    ready_ones = {k for k, (r, _) in eps.items() if r}
    return ready_ones or {k for k, (_, fb) in eps.items() if fb}


def _check(engine: kp.Engine, kept: str, node_name: str, anchor: bool) -> None:
    """The plan, the trace and the lookups all show the copy ``kept`` (from ``node_name``)."""
    e = _kept(engine)
    assert (_conds(e), e.node) == (COND[kept], node_name)
    want = _pool(kept, anchor)
    t = engine.trace(CLIENT, VIP, 80, "TCP", sport=999, now=0.0)
    assert {c["endpoint"] for c in t.candidates} == want
    for c in t.candidates:
        if c["endpoint"] == f"{DUP}:8080":
            assert (_conds(c), c["node"]) == (COND[kept], node_name)
    if want and f"{DUP}:8080" not in want:  # (no pool at all: REJECT, nothing to filter)
        assert f"{DUP}:8080" in {f["endpoint"] for f in t.filtered}
    seen = set()
    verdicts = set()
    for i in range(64):
        d = engine.lookup(f"10.0.0.{i + 1}", VIP, 80, "TCP", sport=2000 + i, now=0.0, track=0)  # new connections
        verdicts.add(d.verdict)
        if d.endpoint:
            seen.add(f"{d.endpoint[0]}:{d.endpoint[1]}")
    assert (verdicts, seen) == (({"DNAT"}, want) if want else ({"REJECT"}, set()))
    assert t.verdict == ("DNAT" if want else "REJECT")


def _winner(rule_pick: str, seen: list[tuple[str, str]]) -> tuple[str, str]:
    """The (condition, node) an upstream rule keeps of copies in the order seen."""
    if rule_pick == "first":
        return seen[0]
    if rule_pick == "last":
        return seen[-1]
    return next(c for c in seen if c[1] == f"node-{rule_pick}")


def _upstream(seen: list[tuple[str, str]]) -> tuple[str, str]:
    """addEndpoints itself, for cross-checking the table: stored when new or not terminating."""
    kept: tuple[str, str] | None = None
    for copy in seen:
        if kept is None or not COND[copy[0]][2]:
            kept = copy
    assert kept is not None
    return kept


def test_the_table_is_addendpoints() -> None:
    """PAIRS agrees with a line-by-line model of addEndpoints, in both orders."""
    for p, q, _rule, pick in PAIRS:
        for seen in ([(p, "node-p"), (q, "node-q")], [(q, "node-q"), (p, "node-p")]):
            assert _upstream(seen) == _winner(pick, seen)


def _pair_id(pair: tuple[str, str, str, str]) -> str:
    return f"{pair[0]}+{pair[1]}"


@pytest.mark.parametrize("anchor", [False, True], ids=["alone", "with-ready-other"])
@pytest.mark.parametrize("p_first", [True, False], ids=["p-in-web-a", "p-in-web-z"])
@pytest.mark.parametrize("pair", PAIRS, ids=_pair_id)
def test_two_slices(make_engine: Callable[..., kp.Engine], pair: tuple[str, str, str, str], p_first: bool,
                    anchor: bool) -> None:
    """The same address:port in two slices of one Service (slice names sorted both ways,
    and given to the loader in the other order than their names). Rule T (a
    non-terminating copy wins) holds in both orders; for F and L upstream keeps whichever
    copy its map yields first/last, and kproxy-core's map is the slices in name order."""
    p, q, rule, pick = pair
    p_copy, q_copy = _copy(p, "node-p"), _copy(q, "node-q")
    first, last = ("web-a", [p_copy]), ("web-z", [q_copy])
    if not p_first:
        first, last = ("web-a", [q_copy]), ("web-z", [p_copy])
    engine = make_engine(_cluster([last, first], anchor), node=NODE)
    seen = [(p, "node-p"), (q, "node-q")] if p_first else [(q, "node-q"), (p, "node-p")]
    allowed = {_upstream(seen), _upstream(seen[::-1])}  # upstream: either map order
    kept = _winner(pick, seen)
    if rule == "T":
        assert allowed == {(p, "node-p")} == {kept}
    else:
        assert len(allowed) == 2 and kept in allowed  # kproxy-core's choice: slice name order
    _check(engine, kept[0], kept[1], anchor)


@pytest.mark.parametrize("anchor", [False, True], ids=["alone", "with-ready-other"])
@pytest.mark.parametrize("p_first", [True, False], ids=["p-listed-first", "p-listed-second"])
@pytest.mark.parametrize("pair", PAIRS, ids=_pair_id)
def test_one_slice(make_engine: Callable[..., kp.Engine], pair: tuple[str, str, str, str], p_first: bool,
                   anchor: bool) -> None:
    """Both copies in one slice: upstream walks a slice's endpoints in list order, so all
    three rules are defined there: T (a non-terminating copy wins), F (of two terminating
    copies the first listed), L (of two non-terminating copies the last listed)."""
    p, q, _rule, pick = pair
    copies = [_copy(p, "node-p"), _copy(q, "node-q")]
    seen = [(p, "node-p"), (q, "node-q")]
    if not p_first:
        copies, seen = copies[::-1], seen[::-1]
    engine = make_engine(_cluster([("web-a", copies)], anchor), node=NODE)
    kept = _upstream(seen)
    assert kept == _winner(pick, seen)
    _check(engine, kept[0], kept[1], anchor)


@pytest.mark.parametrize("terminating_first", [True, False])
def test_apply_moves_the_winner(make_engine: Callable[..., kp.Engine], terminating_first: bool) -> None:
    """Rule T through ``Engine.apply``: a terminating copy alone is used as the fallback;
    a ready copy of the same address arriving in another slice replaces it (whichever
    slice name sorts first), and leaving again brings the fallback back."""
    term = ("web-a" if terminating_first else "web-z", [_copy("terminating-serving", "node-p")])
    ready_name = "web-z" if terminating_first else "web-a"
    engine = make_engine(_cluster([term], anchor=True), node=NODE)
    _check(engine, "terminating-serving", "node-p", anchor=True)
    engine.apply([slice_("default", "web", [_copy("ready", "node-q")], [eport(8080, "http")], name=ready_name)])
    _check(engine, "ready", "node-q", anchor=True)
    gone = slice_("default", "web", [], [eport(8080, "http")], name=ready_name)
    engine.apply([{"type": "DELETED", "object": gone}])
    _check(engine, "terminating-serving", "node-p", anchor=True)


@pytest.mark.parametrize("local_first", [True, False])
def test_locality_does_not_pick_the_copy(make_engine: Callable[..., kp.Engine], local_first: bool) -> None:
    """Rule T, not the older "favour the local copy": a terminating copy on this node loses
    to a ready one elsewhere, in either slice order, so with internalTrafficPolicy Local
    this node has no local endpoint (kube-proxy 04791b49 would have kept the local,
    terminating copy and used it as the local fallback)."""
    local, remote = [_copy("terminating-serving", NODE)], [_copy("ready", "node-q")]
    names = ("web-a", "web-z") if local_first else ("web-z", "web-a")
    objs = _cluster([(names[0], local), (names[1], remote)], anchor=False, internalTrafficPolicy="Local")
    engine = make_engine(objs, node=NODE)
    e = _kept(engine)
    assert (_conds(e), e.node, e.local) == (COND["ready"], "node-q", False)
    (pp,) = engine.plans["IPv4"].ports
    assert pp.local == () and not pp.local_fallback
    assert engine.lookup(CLIENT, VIP, 80, "TCP", sport=5, now=0.0).verdict == "DROP"


def test_ipv6_copies_meet_in_canonical_form(make_engine: Callable[..., kp.Engine]) -> None:
    """The key is the canonical address (upstream: ParseIPSloppy(...).String()), so two
    spellings of one IPv6 address are one endpoint, and rule T applies to them."""
    objs = [
        node(NODE, "192.168.0.1", "fd00:1::1"), node("node-p", "192.168.0.2"), node("node-q", "192.168.0.3"),
        service("default", "web", "fd00:96::10", [port(80, "http")]),
        slice_("default", "web", [ep("fd00:10:0:0::1", "node-p", ready=False, serving=True, terminating=True)],
               [eport(8080, "http")], name="web-a", family="IPv6"),
        slice_("default", "web", [ep("FD00:10::1", "node-q")], [eport(8080, "http")], name="web-z", family="IPv6"),
    ]
    engine = make_engine(objs, node=NODE)
    (pp,) = engine.plans["IPv6"].ports
    assert [(e.endpoint, e.node, e.ready, e.terminating) for e in pp.endpoints] == [
        ("[fd00:10::1]:8080", "node-q", True, False)]
    t = engine.trace("fd00:20::7", "fd00:96::10", 80, "TCP", sport=9, now=0.0)
    assert [(c["endpoint"], c["node"]) for c in t.candidates] == [("[fd00:10::1]:8080", "node-q")]
    d = engine.lookup("fd00:20::7", "fd00:96::10", 80, "TCP", sport=9, now=0.0)
    assert d.endpoint == ("fd00:10::1", 8080)

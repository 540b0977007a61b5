"""The built-in endpoint selectors through the Engine, over both twins: the annotations
(kproxy-core.io/selector, /weights, /maglev-table-size, /maglev-seed) in, the endpoints
lookups and batches choose out; and the Core's checks of the selector tables."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import random
from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from k8s import ep, eport, node, port, service, slice_

import kproxy_core as kp
from kproxy_core import _engine_py, selectors
from kproxy_core.addresses import join_host_port
from kproxy_core.selectors import (
    SEED_ANNOTATION,
    SELECTOR_ANNOTATION,
    TABLE_SIZE_ANNOTATION,
    WEIGHTS_ANNOTATION,
    Selector,
    maglev_disruption,
    selection_shares,
)
from kproxy_core.tables import FamilyTables

try:
    from kproxy_core import _engine as _compiled
except ImportError:  # pragma: no cover - only without a build
    _compiled = None  # type: ignore[assignment]

NODE = "n1"
CHI2_1E6 = {1: 23.928, 2: 27.631, 4: 33.377, 9: 44.811}
KINDS = ["random", "weighted", "round-robin", "source-hash", "maglev"]
Engine = Callable[..., kp.Engine]


def ips(n: int, v6: bool = False, base: int = 1) -> list[str]:
    return [f"fd00:10::{i}" if v6 else f"10.0.1.{i}" for i in range(base, base + n)]


def web(kind: str | None = None, weights: dict[str, int] | None = None, n: int = 5,
        annotations: dict[str, str] | None = None, name: str = "web", cip: int = 10,
        order: list[int] | None = None, **spec: Any) -> list[dict[str, Any]]:
    """A NodePort service with n endpoints per family (on n2), and its slices."""
    svc = service("default", name, [f"10.96.0.{cip}", f"fd00:96::{cip}"], [port(80, "http", node_port=30000 + cip)],
                  type="NodePort", **spec)
    ann = dict(annotations or {})
    if kind:
        ann[SELECTOR_ANNOTATION] = kind
    if weights:
        ann[WEIGHTS_ANNOTATION] = ",".join(f"{k}={v}" for k, v in weights.items())
    svc["metadata"]["annotations"] = ann
    idx = order or list(range(n))
    out = [svc]
    for fam, v6 in (("IPv4", False), ("IPv6", True)):
        addrs = ips(n, v6, base=cip * 10)
        out.append(slice_("default", name, [ep(addrs[i], "n2") for i in idx], [eport(8080, "http")],
                          name=f"{name}-{fam.lower()}", family=fam))
    return out


def cluster(*svcs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    objs = [node(NODE, "192.168.0.1", "fd00:1::1", pod_cidr="10.0.0.0/24"), node("n2", "192.168.0.2")]
    for s in svcs:
        objs += s
    return objs


def flows(k: int, seed: int = 1, v6: bool = False) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    if v6:
        return [(str(ipaddress.IPv6Address((0x20010DB8 << 96) | rng.getrandbits(32))), rng.randrange(1024, 65536))
                for _ in range(k)]
    return [(str(ipaddress.IPv4Address(0xCB000000 | rng.getrandbits(24))), rng.randrange(1024, 65536))
            for _ in range(k)]


def look(e: kp.Engine, fl: list[tuple[str, int]], now: float = 0.0, track: int = 1, cip: int = 10) -> list[Any]:
    out = []
    for s, sp in fl:
        dst = f"fd00:96::{cip}" if ":" in s else f"10.96.0.{cip}"
        out.append(e._core.lookup(s, dst, 80, "TCP", sp, now, track).endpoint)
    return out


def columns(fl: list[tuple[str, int]], cip: int = 10) -> tuple[np.ndarray, ...]:
    v6 = ":" in fl[0][0]
    if v6:
        src = np.array([list(ipaddress.ip_address(s).packed) for s, _ in fl], np.uint8).reshape(-1, 16)
        dst = np.tile(np.frombuffer(ipaddress.ip_address(f"fd00:96::{cip}").packed, np.uint8), (len(fl), 1))
    else:
        src = np.array([int(ipaddress.ip_address(s)) for s, _ in fl], np.uint32)
        dst = np.full(len(fl), int(ipaddress.ip_address(f"10.96.0.{cip}")), np.uint32)
    return (src, dst, np.full(len(fl), 80, np.uint16), np.full(len(fl), 6, np.uint8),
            np.array([sp for _, sp in fl], np.uint16))


def batch(e: kp.Engine, fl: list[tuple[str, int]], track: bool = False, cip: int = 10) -> list[str]:
    cols = columns(fl, cip)
    v6 = cols[0].ndim == 2
    out = (e.lookup_batch6 if v6 else e.lookup_batch)(*cols, now=0.0, track=track)
    return [r["endpoint"] for r in e.decode(out)]


def ep_text(d: Any) -> str:
    return join_host_port(*d)


# --------------------------------------------------------------------------- weighted


def test_weighted_lookups_follow_the_weights(make_engine: Engine) -> None:
    addrs = ips(6, base=100)
    w = dict(zip(addrs, [8, 4, 2, 1, 1, 0], strict=True))
    e = make_engine(cluster(web("weighted", w, n=6)), node=NODE)
    fl = flows(20_000, seed=2)
    got = Counter(batch(e, fl))
    counts = [got.get(f"{a}:8080", 0) for a in addrs]
    assert counts[5] == 0  # weight 0: out of the pool
    expect = [20_000 * wi / 16 for wi in (8, 4, 2, 1, 1)]
    x2 = sum((o - e) ** 2 / e for o, e in zip(counts[:5], expect, strict=True))
    assert x2 < CHI2_1E6[4], (counts, x2)
    # per call: the same choices
    assert [ep_text(d) for d in look(e, fl[:300], track=0)] == batch(e, fl[:300])
    t = e.trace("203.0.113.5", "10.96.0.10", 80)
    assert {f["endpoint"]: f["reason"] for f in t.filtered}["10.0.1.105:8080"].startswith("weight 0")


def test_weights_make_random_weighted(make_engine: Engine) -> None:
    addrs = ips(3, base=100)
    e = make_engine(cluster(web(None, dict(zip(addrs, [3, 1, 1], strict=True)), n=3)), node=NODE)
    pp = e.plans["IPv4"].ports[0]
    assert pp.selector.kind == "weighted" and pp.selector.origin == selectors.DEFAULT_SELECTOR.origin
    t = e.trace("203.0.113.5", "10.96.0.10", 80)
    assert [c["probability"] for c in t.candidates] == [0.6, 0.2, 0.2]
    assert any("weighted random (alias table" in s and "3:1:1" in s for s in t.steps)


def test_equal_weights_choose_exactly_as_random(make_engine: Engine) -> None:
    addrs = ips(5, base=100) + ips(5, v6=True, base=100)
    plain = make_engine(cluster(web(None)), node=NODE)
    weighted = make_engine(cluster(web("weighted", dict.fromkeys(addrs, 7))), node=NODE)
    for v6 in (False, True):
        fl = flows(500, seed=3, v6=v6)
        assert batch(weighted, fl) == batch(plain, fl)
        assert look(weighted, fl) == look(plain, fl)


def test_all_zero_weights_leave_no_endpoint(make_engine: Engine) -> None:
    addrs = ips(3, base=100)
    e = make_engine(cluster(web("weighted", dict.fromkeys(addrs, 0), n=3)), node=NODE)
    d = e.lookup("203.0.113.5", "10.96.0.10", 80, now=0.0)
    assert d.verdict == "REJECT" and d.endpoint is None


# --------------------------------------------------------------------------- round-robin


def rr_letters(e: kp.Engine, fl: list[tuple[str, int]], names: list[str], track: int = 1, now: float = 0.0) -> str:
    return "".join("abcdefgh"[names.index(d[0])] for d in look(e, fl, now=now, track=track))


def test_round_robin_sequence_of_new_flows(make_engine: Engine) -> None:
    names = ips(3, base=100)
    e = make_engine(cluster(web("round-robin", dict(zip(names, [5, 1, 1], strict=True)), n=3)), node=NODE)
    fl = flows(14, seed=4)
    assert rr_letters(e, fl[:7], names) == "aabacaa"
    assert rr_letters(e, fl[:7], names) == "aabacaa"  # established flows keep theirs, do not advance
    t = e.trace(fl[7][0], "10.96.0.10", 80, sport=fl[7][1], now=0.0)  # read only: shows the next
    assert t.endpoint == f"{names[0]}:8080"
    assert rr_letters(e, fl[7:14], names) == "aabacaa"
    # a stateless batch is a batch of new connections: it advances too
    assert [d.split(":")[0] for d in batch(e, flows(3, seed=5))] == [names[0], names[0], names[1]]
    assert rr_letters(e, flows(4, seed=6), names) == "acaa"


def test_round_robin_plain_rotation_and_ipv6(make_engine: Engine) -> None:
    e = make_engine(cluster(web("round-robin", n=4)), node=NODE)
    v4, v6 = ips(4, base=100), ips(4, v6=True, base=100)
    assert [d[0] for d in look(e, flows(9, seed=1))] == (v4 * 3)[:9]
    assert [d[0] for d in look(e, flows(6, seed=1, v6=True))] == (v6 * 2)[:6]  # its own cursor


def test_round_robin_affinity_does_not_advance(make_engine: Engine) -> None:
    names = ips(3, base=100)
    e = make_engine(cluster(web("round-robin", n=3, sessionAffinity="ClientIP")), node=NODE)
    client = "203.0.113.7"
    first = look(e, [(client, 1000)])[0]
    assert look(e, [(client, p) for p in range(1001, 1006)]) == [first] * 5  # affinity wins
    others = [d[0] for d in look(e, [("203.0.113.8", 2000), ("203.0.113.9", 2000)])]
    assert others == names[1:3]


def test_round_robin_state_across_updates(make_engine: Engine) -> None:
    names = ips(3, base=100)
    objs = cluster(web("round-robin", dict(zip(names, [5, 1, 1], strict=True)), n=3), web(name="other", cip=20))
    e = make_engine(objs, node=NODE)
    assert rr_letters(e, flows(3, seed=1), names) == "aab"
    # an unrelated service changes: the cursor carries over
    e.apply(web(name="other", cip=20, n=2)[1:])
    assert rr_letters(e, flows(4, seed=2), names) == "acaa"
    assert rr_letters(e, flows(3, seed=3), names) == "aab"
    # a weight change in mid-cycle: the pool is new, its cursor starts at the head
    e.apply(web("round-robin", dict(zip(names, [1, 2, 1], strict=True)), n=3)[:1])
    assert rr_letters(e, flows(5, seed=4), names) == "bacbb"
    # the same service and weights applied again (nothing changed): it carries on
    e.apply(web("round-robin", dict(zip(names, [1, 2, 1], strict=True)), n=3)[:1])
    assert rr_letters(e, flows(3, seed=5), names) == "acb"


def test_round_robin_endpoints_change_restarts(make_engine: Engine) -> None:
    e = make_engine(cluster(web("round-robin", n=3)), node=NODE)
    names = ips(3, base=100)
    assert [d[0] for d in look(e, flows(2, seed=1))] == names[:2]
    e.apply(web("round-robin", n=3, order=[0, 1])[1:2])  # one endpoint gone
    assert [d[0] for d in look(e, flows(3, seed=2))] == [names[0], names[1], names[0]]


def test_round_robin_restarts_when_only_the_first_endpoint_changed(make_engine: Engine) -> None:
    """Same count, same later endpoints, another first one: the pool is new and its
    cursor starts at the head (a C mutant that compared from the second entry on carried
    it over)."""
    names = ips(3, base=100)
    e = make_engine(cluster(web("round-robin", n=3)), node=NODE)
    assert [d[0] for d in look(e, flows(2, seed=1))] == names[:2]
    new_first = "10.0.0.200"  # sorts before 10.0.1.101 as the pool does ("IP:port" strings)
    slices = web("round-robin", n=3)[1:]
    slices[0]["endpoints"][0]["addresses"] = [new_first]
    e.apply(slices[:1])
    assert [d[0] for d in look(e, flows(3, seed=2))] == [new_first, names[1], names[2]]


# --------------------------------------------------------------------------- Maglev and source-hash


@pytest.mark.parametrize("kind", ["maglev", "source-hash"])
def test_consistent_across_engines_seeds_and_updates(make_engine: Engine, kind: str) -> None:
    ann = {SEED_ANNOTATION: "99"}
    objs = cluster(web(kind, annotations=ann, n=7), web(name="other", cip=20))
    a = make_engine(objs, node=NODE, seed=1)
    b = make_engine(objs, node="n2", seed=2)
    for v6 in (False, True):
        fl = flows(400, seed=7, v6=v6)
        first = batch(a, fl)
        assert batch(b, fl) == first  # another node, another engine seed: the same endpoints
        assert len(set(first)) == 7
        a.apply(web(name="other", cip=20, n=1)[1:])  # unrelated
        assert batch(a, fl) == first
        a.clear_flows()
        assert [ep_text(d) for d in look(a, fl)] == first


def test_source_hash_keeps_a_client(make_engine: Engine) -> None:
    e = make_engine(cluster(web("source-hash", n=5)), node=NODE)
    for client in ("203.0.113.1", "203.0.113.2", "2001:db8::5"):
        assert len({d for d in look(e, [(client, p) for p in range(1000, 1040)])}) == 1
    clients = flows(2000, seed=9)
    assert len(set(batch(e, clients))) == 5
    maglev = make_engine(cluster(web("maglev", n=5)), node=NODE)
    assert len({d for d in look(maglev, [("203.0.113.1", p) for p in range(1000, 1040)])}) > 1


def test_maglev_flows_stay_pinned_and_new_ones_follow_the_table(make_engine: Engine) -> None:
    e = make_engine(cluster(web("maglev", n=5)), node=NODE)
    fl = flows(300, seed=11)
    before = look(e, fl)
    e.apply(web("maglev", n=8)[1:2])  # three more endpoints: the table changes
    assert look(e, fl, now=1.0) == before  # established: pinned by the flow table
    fresh = [ep_text(d) for d in look(e, fl, track=0)]
    assert sum(f != ep_text(b) for f, b in zip(fresh, before, strict=True)) > 30


def test_maglev_table_size_annotation_and_warnings(make_engine: Engine) -> None:
    e = make_engine(cluster(web("maglev", n=5, annotations={TABLE_SIZE_ANNOTATION: "509"})), node=NODE)
    assert not [w for w in e.warnings if "table size" in w]
    t = e.tables["IPv4"]
    assert t.port_table_len is not None and t.port_table_len[0, 0] == 509
    small = make_engine(cluster(web("maglev", n=5, annotations={TABLE_SIZE_ANNOTATION: "101"})), node=NODE)
    assert any("table size 101 is below 100 × the 5 endpoints" in w for w in small.warnings)
    tiny = make_engine(cluster(web("maglev", n=5, annotations={TABLE_SIZE_ANNOTATION: "3"})), node=NODE)
    assert any("table size 3 is smaller than the 5 endpoints" in w for w in tiny.warnings)
    assert tiny.tables["IPv4"].port_table_len[0, 0] == selectors.default_table_size(5)  # type: ignore[index]
    assert len(set(batch(tiny, flows(500)))) == 5


def test_shuffled_endpoints_build_the_same_tables(make_engine: Engine) -> None:
    a = make_engine(cluster(web("maglev", n=9)), node=NODE)
    b = make_engine(cluster(web("maglev", n=9, order=[4, 2, 8, 0, 1, 7, 3, 6, 5])), node=NODE)
    for fam in ("IPv4", "IPv6"):
        ta, tb = a.tables[fam], b.tables[fam]
        assert ta.sel_table is not None and tb.sel_table is not None
        assert ta.sel_table.tolist() == tb.sel_table.tolist()
        assert (ta.sel_table >= 0).all()
    fl = flows(300, seed=12)
    assert batch(a, fl) == batch(b, fl)


def test_maglev_disruption_matches_the_flows(make_engine: Engine, impl: str) -> None:
    """Removing 1 of 10 endpoints: the flows that move are the changed slots' share
    (binomial, 4σ), and the disruption report's forced part is the removed one's slots."""
    k = 100_000 if impl == "compiled" else 30_000
    e = make_engine(cluster(web("maglev", n=10)), node=NODE)
    keys = [x.endpoint for x in e.plans["IPv4"].ports[0].cluster]
    t0 = e.tables["IPv4"]
    assert t0.sel_table is not None
    old = [keys[i] for i in t0.sel_table.tolist()]
    fl = flows(k, seed=13)
    before = batch(e, fl)
    gone = keys[3]
    e.apply(web("maglev", n=10, order=[i for i in range(10) if i != 3])[1:2])
    keys2 = [x.endpoint for x in e.plans["IPv4"].ports[0].cluster]
    t1 = e.tables["IPv4"]
    assert t1.sel_table is not None
    new = [keys2[i] for i in t1.sel_table.tolist()]
    d = maglev_disruption(old, new, [gone])
    assert d.forced == old.count(gone) and gone not in new and d.changed >= d.forced
    after = batch(e, fl)
    moved = sum(a != b for a, b in zip(before, after, strict=True)) / k
    p = d.changed / d.M
    assert abs(moved - p) <= 4 * math.sqrt(p * (1 - p) / k), (moved, p)
    assert before.count(f"{gone}") > 0 and f"{gone}" not in after


# --------------------------------------------------------------------------- batches, twins, trace


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
@pytest.mark.parametrize("track", [True, False], ids=["track", "stateless"])
def test_batches_equal_per_call_lookups(make_engine: Engine, kind: str, v6: bool, track: bool) -> None:
    addrs = ips(6, v6=v6, base=100)
    w = dict(zip(addrs, [1, 2, 3, 1, 5, 2], strict=True))
    objs = cluster(web(kind, w, n=6))
    a, b = make_engine(objs, node=NODE), make_engine(objs, node=NODE)
    fl = flows(300, seed=14, v6=v6)
    fl += fl[:50]  # some established flows again
    per_call = [ep_text(d) for d in look(a, fl, track=1 if track else 0)]
    assert batch(b, fl, track=track) == per_call


@pytest.mark.skipif(bool(os.environ.get("KPROXY_NO_EXTENSIONS")), reason="KPROXY_NO_EXTENSIONS is set")
@pytest.mark.parametrize("kind", KINDS)
def test_twins_agree_on_every_selector(kind: str) -> None:
    w = dict(zip(ips(6, base=100) + ips(6, v6=True, base=100), [1, 2, 3, 1, 5, 2] * 2, strict=True))
    objs = cluster(web(kind, w, n=6, sessionAffinity="ClientIP"), web(kind, name="other", cip=20, n=3))
    c = kp.Cluster.from_objects(objs)
    engines = [kp.Engine(c, node=NODE, seed=5, impl=impl) for impl in ("compiled", "python")]
    for v6 in (False, True):
        fl = flows(400, seed=15, v6=v6)
        fl += [(s, p + 1) for s, p in fl[:100]]  # affinity hits
        res = [look(e, fl) for e in engines]
        assert res[0] == res[1]
        outs = [batch(e, fl, track=False) for e in engines]
        assert outs[0] == outs[1]
    assert engines[0].tables["IPv4"].sel_table.tolist() == engines[1].tables["IPv4"].sel_table.tolist()  # type: ignore[union-attr]


@pytest.mark.skipif(bool(os.environ.get("KPROXY_NO_EXTENSIONS")), reason="KPROXY_NO_EXTENSIONS is set")
@pytest.mark.parametrize("kind", KINDS)
def test_twins_agree_with_a_local_pool_after_the_cluster_pool(kind: str) -> None:
    """externalTrafficPolicy=Local keeps a second pool (this node's endpoints) right after
    the cluster pool: in-cluster clients pick from the first, NodePort clients from the
    second, and neither pool's selector state (alias columns, round-robin totals) may
    reach into the other. The twins agree on both, packet by packet. C mutants that
    summed one weight past the cluster pool survived every test whose local pool was empty."""
    names = ips(6, base=100)
    weights = dict(zip(names, [1, 2, 3, 1, 5, 2], strict=True))
    ann = {SELECTOR_ANNOTATION: kind, WEIGHTS_ANNOTATION: ",".join(f"{a}={w}" for a, w in weights.items())}
    svc = service("default", "web", ["10.96.0.10"], [port(80, "http", node_port=30010)], type="NodePort",
                  externalTrafficPolicy="Local")
    svc["metadata"]["annotations"] = ann
    eps = [ep(a, NODE if i % 2 else "n2") for i, a in enumerate(names)]  # local: 101, 103, 105 (2, 1, 2)
    c = kp.Cluster.from_objects(cluster([svc, slice_("default", "web", eps, [eport(8080, "http")], name="w4")]))
    engines = [kp.Engine(c, node=NODE, seed=5, impl=impl) for impl in ("compiled", "python")]
    fl = flows(600, seed=21)
    for dst, dport in (("10.96.0.10", 80), ("192.168.0.1", 30010)):
        res = [[e.lookup(s, dst, dport, sport=p, now=0.0).endpoint for s, p in fl] for e in engines]
        assert res[0] == res[1], (dst, kind)
        if dst == "192.168.0.1":
            assert {a for a, _ in res[0]} <= set(names[1::2])


@pytest.mark.parametrize("kind", KINDS)
def test_trace_gives_the_selectors_shares(make_engine: Engine, kind: str) -> None:
    addrs = ips(4, base=100)
    w = dict(zip(addrs, [3, 1, 1, 1], strict=True)) if kind != "random" else None  # weights make it weighted
    e = make_engine(cluster(web(kind, w, n=4)), node=NODE)
    t = e.trace("203.0.113.5", "10.96.0.10", 80, sport=4242, now=0.0)
    pp = e.plans["IPv4"].ports[0]
    table = None
    ft = e.tables["IPv4"]
    if kind in ("maglev", "source-hash"):
        assert ft.sel_table is not None and ft.port_table_len is not None
        table = ft.sel_table[: ft.port_table_len[0, 0]].tolist()
    shares = selection_shares(pp.selector, [x.weight for x in pp.cluster], table)
    assert [c["probability"] for c in t.candidates] == shares
    assert t.endpoint == ep_text(e.lookup("203.0.113.5", "10.96.0.10", 80, sport=4242, now=0.0).endpoint)
    text = "\n".join(t.steps)
    if kind == "random":
        assert "each with probability 1/4" in text
    else:
        assert pp.selector.origin in text and pp.selector.kind in text.replace("weighted random", "weighted")
    if kind in ("maglev", "source-hash"):
        assert f"lookup table of {len(table or [])} slots" in text


def test_per_port_selector_annotation(make_engine: Engine) -> None:
    svc = service("default", "multi", ["10.96.0.30"], [port(80, "http"), port(9090, "metrics")])
    svc["metadata"]["annotations"] = {SELECTOR_ANNOTATION: "http=maglev,metrics=round-robin"}
    sl = slice_("default", "multi", [ep(a, "n2") for a in ips(3, base=200)],
                [eport(8080, "http"), eport(9090, "metrics")])
    e = make_engine(cluster([svc, sl]), node=NODE)
    kinds = {pp.port_name: pp.selector.kind for pp in e.plans["IPv4"].ports}
    assert kinds == {"http": "maglev", "metrics": "round-robin"}
    fl = flows(6, seed=3)
    rr = [e.lookup(s, "10.96.0.30", 9090, sport=p, now=0.0).endpoint[0] for s, p in fl]
    assert rr == ips(3, base=200) * 2


# --------------------------------------------------------------------------- the Core's tables


def _tables(kinds: list[str]) -> tuple[FamilyTables, FamilyTables, list[str]]:
    svcs = [web(k, {a: i + 1 for i, a in enumerate(ips(4, base=100 + 10 * j))}, n=4, name=f"s{j}", cip=10 + j)
            for j, k in enumerate(kinds)]
    e = kp.Engine(kp.Cluster.from_objects(cluster(*svcs)), node=NODE, seed=1, impl="python")
    return e.tables["IPv4"], e.tables["IPv6"], [s.name for s in e.service_ports]


def _bad() -> list[tuple[str, dict[str, Any]]]:
    t4, _, _ = _tables(["weighted", "round-robin", "maglev", "source-hash"])
    assert t4.sel_table is not None and t4.port_table_len is not None and t4.port_table_start is not None
    assert t4.pool_weight is not None and t4.port_selector is not None
    tab = t4.sel_table.copy()
    tab[int(t4.port_table_start[2, 0])] = 4  # past the 4 endpoints of its pool
    return [
        ("selector code out of range", {"port_selector": np.full_like(t4.port_selector, 5)}),
        ("selector rows", {"port_selector": t4.port_selector[:-1]}),
        ("weight 0", {"pool_weight": np.zeros_like(t4.pool_weight)}),
        ("weight too big", {"pool_weight": t4.pool_weight.astype(np.int64) + selectors.MAX_WEIGHT}),
        ("weight rows", {"pool_weight": t4.pool_weight[:-1]}),
        ("negative seed", {"port_seed": np.full(len(t4.port_selector), -1, np.int64)}),
        ("float seed", {"port_seed": np.zeros(len(t4.port_selector))}),
        ("table entry past its pool", {"sel_table": tab}),
        ("table entry negative", {"sel_table": t4.sel_table - 1}),
        ("table shorter than its segments", {"sel_table": t4.sel_table[:-1]}),
        ("table start past the end", {"port_table_start": t4.port_table_start + len(t4.sel_table)}),
        ("Maglev pool without a table", {"port_table_len": np.zeros_like(t4.port_table_len)}),
        ("table float", {"sel_table": t4.sel_table.astype(float)}),
        ("table 2-d", {"sel_table": t4.sel_table.reshape(-1, 1)}),
    ]


def core_module(name: str) -> ModuleType:
    if name == "python":
        return _engine_py
    if _compiled is None:
        if os.environ.get("KPROXY_NO_EXTENSIONS"):
            pytest.skip("KPROXY_NO_EXTENSIONS is set")
        pytest.fail("kproxy_core._engine is not built")
    return _compiled


@pytest.mark.parametrize(("name", "change"), _bad(), ids=[b[0] for b in _bad()])
def test_bad_selector_tables_are_refused(impl: str, name: str, change: dict[str, Any]) -> None:
    mod = core_module(impl)
    t4, t6, names = _tables(["weighted", "round-robin", "maglev", "source-hash"])
    core = mod.Core(3)
    core.load(t4, t6, names)
    before = [core.lookup(s, f"10.96.0.{10 + j}", 80, sport=1, now=0.0).endpoint for j in range(4) for s, _ in flows(5)]
    with pytest.raises(ValueError):
        core.load(dataclasses.replace(t4, **change), t6, names)
    after = [core.lookup(s, f"10.96.0.{10 + j}", 80, sport=1, now=0.0, track=2).endpoint
             for j in range(4) for s, _ in flows(5)]
    assert after == before


def test_tables_without_selector_columns_are_random(impl: str) -> None:
    mod = core_module(impl)
    t4, t6, names = _tables(["weighted", "maglev"])
    plain = {f: None for f in ("port_selector", "port_seed", "pool_weight", "port_table_start",
                               "port_table_len", "sel_table")}
    core = mod.Core(3)
    core.load(dataclasses.replace(t4, **plain), dataclasses.replace(t6, **plain), names)
    h = _engine_py.packet_hash(3, False, int(ipaddress.ip_address("203.0.113.1")),
                               int(ipaddress.ip_address("10.96.0.10")), 7, 80, 6)
    pool = [f"10.0.1.{100 + i}" for i in range(4)]
    assert core.lookup("203.0.113.1", "10.96.0.10", 80, sport=7, now=0.0).endpoint[0] == pool[_engine_py.pick(h, 4)]


def test_maglev_builder_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from kproxy_core.engine import maglev_builder

    monkeypatch.setenv("KPROXY_NO_EXTENSIONS", "1")
    assert maglev_builder() is _engine_py.maglev_table
    monkeypatch.delenv("KPROXY_NO_EXTENSIONS")
    if _compiled is not None:
        assert maglev_builder() is _compiled.maglev_table
    assert maglev_builder("python") is _engine_py.maglev_table


def test_selector_kinds_round_trip() -> None:
    for kind in KINDS:
        assert Selector(kind).kind == kind  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the alias threshold, exactly


def unmix(z: int) -> int:
    """The inverse of the splitmix64 finaliser (selectors.mix)."""
    m64 = (1 << 64) - 1

    def unxorshift(y: int, s: int) -> int:
        x = y
        for _ in range(64 // s + 1):
            x = y ^ (x >> s)
        return x & m64

    z = unxorshift(z, 31)
    z = (z * pow(0x94D049BB133111EB, -1, 1 << 64)) & m64
    z = unxorshift(z, 27)
    z = (z * pow(0xBF58476D1CE4E5B9, -1, 1 << 64)) & m64
    return unxorshift(z, 30)


def test_weighted_pick_at_the_alias_threshold(impl: str) -> None:
    """The compiled core keeps a column iff r < ceil(prob * 2**64 / W), the twin iff
    hi64(r * W) < prob: equal for every r. Packets whose remix r lands on either side of
    a column's threshold (the engine seed chosen so that the packet hash is exactly h)."""
    mod = core_module(impl)
    t4, t6, names = _tables(["weighted"])  # weights 1, 2, 3, 4: W = 10, n = 4
    table = selectors.alias_table([1, 2, 3, 4])
    src, dst = int(ipaddress.ip_address("203.0.113.1")), int(ipaddress.ip_address("10.96.0.10"))
    ports = (1234 << 24) | (80 << 8) | 6
    pool = [f"10.0.1.{100 + i}" for i in range(4)]
    checked = 0
    for col, prob in enumerate(table.prob):
        if prob >= table.total:
            continue
        thr = -(-(prob << 64) // table.total)
        for r in range(thr - 40, thr + 40):
            h = unmix(r) ^ selectors.WEIGHT_SALT
            if selectors.pick(h, 4) != col:
                continue
            seed = unmix(unmix(h) ^ ports) ^ ((src << 32) | dst)
            assert _engine_py.packet_hash(seed, False, src, dst, 1234, 80, 6) == h
            want = table.alias[col] if r >= thr else col
            assert selectors.alias_pick(table, h) == want
            core = mod.Core(seed)
            core.load(t4, t6, names)
            assert core.lookup("203.0.113.1", "10.96.0.10", 80, sport=1234, now=0.0, track=0).endpoint[0] == pool[want]
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("weights", [None, [3, 1, 2, 1, 1]], ids=["rotation", "smooth"])
def test_round_robin_carries_over_a_rebuild_with_the_same_pools(make_engine: Engine, weights: list[int] | None
                                                                 ) -> None:
    """A change to the Service that leaves its pools as they were (here: an externalIP
    added) rebuilds its tables, and both pools' cursors carry over: the cluster pool's
    (in-cluster clients, all five endpoints) and the local pool's (NodePort clients under
    externalTrafficPolicy=Local, the three on this node). The oracle is a twin engine that
    never saw the change: every later pick matches it, and differs from a restart at the
    head. A C mutation run found the cluster pool's carry untested: a rebuild restarted it."""
    local, remote = ips(3, base=100), ips(2, base=110)
    names = sorted(local + remote, key=lambda a: f"{a}:8080")
    ann = {SELECTOR_ANNOTATION: "round-robin"}
    if weights:
        ann[WEIGHTS_ANNOTATION] = ",".join(f"{a}={w}" for a, w in zip(names, weights, strict=True))

    def objects(external_ips: list[str]) -> list[dict[str, Any]]:
        svc = service("default", "web", ["10.96.0.10"], [port(80, "http", node_port=30010)], type="NodePort",
                      externalTrafficPolicy="Local", externalIPs=external_ips)
        svc["metadata"]["annotations"] = ann
        eps = [ep(a, NODE) for a in local] + [ep(a, "n2") for a in remote]
        return [svc, slice_("default", "web", eps, [eport(8080, "http")], name="web-ipv4")]

    changed, unchanged = (make_engine(cluster(objects([])), node=NODE) for _ in range(2))

    def picks(e: kp.Engine, start: int) -> list[tuple[str, str]]:
        inside = [e.lookup("10.0.0.5", "10.96.0.10", 80, sport=start + i, now=0.0).endpoint[0] for i in range(3)]
        outside = [e.lookup("203.0.113.9", "192.168.0.1", 30010, sport=start + i, now=0.0).endpoint[0]
                   for i in range(2)]
        assert set(outside) <= set(local)
        return [("cluster", a) for a in inside] + [("local", a) for a in outside]

    assert picks(changed, 1000) == picks(unchanged, 1000)  # both mid-cycle now
    changed.apply(objects(["192.168.99.1"])[:1])
    assert changed.lookup("203.0.113.9", "192.168.99.1", 80, sport=1, now=0.0, track=2).verdict == "DNAT"  # read only
    after = picks(changed, 2000)
    assert after == picks(unchanged, 2000)
    assert after != picks(make_engine(cluster(objects([])), node=NODE), 2000), "a restart would look the same"


def test_round_robin_cluster_cursor_carries_when_only_the_local_pool_changed(make_engine: Engine) -> None:
    """Two endpoints trade nodes: the cluster pool (the same three endpoints, in the same
    order) carries its cursor over, and the local pool, now another endpoint, starts
    afresh. A C mutant that compared one entry past the cluster pool (into the local
    pool) restarted the cluster pool as well."""
    names = ips(3, base=100)

    def objects(local: str) -> list[dict[str, Any]]:
        svc = service("default", "web", ["10.96.0.10"], [port(80, "http", node_port=30010)], type="NodePort",
                      externalTrafficPolicy="Local")
        svc["metadata"]["annotations"] = {SELECTOR_ANNOTATION: "round-robin"}
        eps = [ep(a, NODE if a == local else "n2") for a in names]
        return [svc, slice_("default", "web", eps, [eport(8080, "http")], name="web-ipv4")]

    e = make_engine(cluster(objects(names[0])), node=NODE)

    def inside(start: int, n: int) -> list[str]:
        return [e.lookup("10.0.0.5", "10.96.0.10", 80, sport=start + i, now=0.0).endpoint[0] for i in range(n)]

    def outside(start: int) -> str:
        return str(e.lookup("203.0.113.9", "192.168.0.1", 30010, sport=start, now=0.0).endpoint[0])

    assert inside(1000, 2) == names[:2] and outside(1000) == names[0]
    e.apply(objects(names[1])[1:])
    assert outside(2000) == names[1]
    assert inside(3000, 3) == [names[2], names[0], names[1]]  # carried on, not restarted


@pytest.mark.parametrize("w", [[3, 1, 2], [5, 1, 1]], ids=["3-1-2", "5-1-1"])
def test_smooth_round_robin_pools_do_not_touch_each_other(make_engine: Engine, w: list[int]) -> None:
    """Smooth weighted round-robin keeps one current weight per endpoint of each pool; the
    cluster pool's turns must leave the local pool's weights alone. Interleaved in-cluster
    and NodePort connections pick exactly what each pool picks alone in a fresh engine. A C
    mutant that also advanced the entry past the cluster pool's end (the local pool's
    first) survived the suite, and so did one that let the cluster pool's turn read that
    entry as a candidate (with 5:1:1 it wins the cluster's second turn)."""
    names = ips(3, base=100)
    weights = dict(zip(names, w, strict=True))
    svc = service("default", "web", ["10.96.0.10"], [port(80, "http", node_port=30010)], type="NodePort",
                  externalTrafficPolicy="Local")
    svc["metadata"]["annotations"] = {SELECTOR_ANNOTATION: "round-robin",
                                      WEIGHTS_ANNOTATION: ",".join(f"{a}={w}" for a, w in weights.items())}
    eps = [ep(names[0], NODE), ep(names[1], NODE), ep(names[2], "n2")]  # local pool: the first two
    objs = cluster([svc, slice_("default", "web", eps, [eport(8080, "http")], name="web-ipv4")])

    def inside(e: kp.Engine, sport: int) -> str:
        return str(e.lookup("10.0.0.5", "10.96.0.10", 80, sport=sport, now=0.0).endpoint[0])

    def outside(e: kp.Engine, sport: int) -> str:
        return str(e.lookup("203.0.113.9", "192.168.0.1", 30010, sport=sport, now=0.0).endpoint[0])

    rounds = sum(w) * (w[0] + w[1])  # whole cycles of both pools
    alone_in, alone_out = make_engine(objs, node=NODE), make_engine(objs, node=NODE)
    want_in = [inside(alone_in, 1000 + i) for i in range(rounds)]
    want_out = [outside(alone_out, 1000 + i) for i in range(rounds)]
    assert Counter(want_in) == {a: k * rounds // sum(w) for a, k in weights.items()}
    assert Counter(want_out) == {a: weights[a] * rounds // (w[0] + w[1]) for a in names[:2]}
    both = make_engine(objs, node=NODE)
    got_in, got_out = [], []
    for i in range(rounds):
        got_in.append(inside(both, 1000 + i))
        got_out.append(outside(both, 1000 + i))
    assert (got_in, got_out) == (want_in, want_out)

"""The slots of the flow and affinity tables: keys that share a bucket's tag, an expired
key coming back to its own slot, and which flow a full bucket gives up.

Two flows, or two affinity clients, whose keys share a bucket and a 16-bit tag.

The flow and affinity tables keep a 16-bit tag per slot (the low bits of the key's hash)
and compare the whole key only where the tag matches (src/kp_core.h ``kp_flow4_find``,
``kp_flow6_find``, ``kp_aff4_find``, ``kp_aff6_find``; kproxy_core/_engine_py.py
``_Table.find``). Random keys share a tag once in 65,536 pairs, so the suite's other tests
almost never reach the path where the first tag match is the wrong key and the search must
go on. A C mutation run found that gap: a search that never moves past a tag match (a hang),
or a key comparison with one ``&&`` turned into ``||`` (a flow taken for another one), both
survived it.

Here the keys are chosen so that they collide. The hash functions are the cores' own
(``packet_hash``, ``affinity_hash``, checked equal across the twins in test_core_twins),
and the tables are one bucket of 8 slots. For each pair the test checks three things:
- each key keeps its own endpoint;
- the tables hold one entry per key;
- the two keys' first picks differ, so a key answered with the other's entry is seen.

Placing a key (``kp_table_place``, ``_Table.place``) takes the key's own slot, else an
empty one, else (flows) the first expired one, else the one with the smallest stamp, the
first on ties. The tests at the end pin each of those choices, which the same C run found
untested.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
from k8s import ep, eport, node, port, service, slice_

import kproxy_core as kp
import kproxy_core._engine_py as py_core

NODE = "n1"
SEED = 12345
VIP = {"IPv4": "10.96.0.10", "IPv6": "fd00:96::10"}
EP = {"IPv4": "10.0.1.{}", "IPv6": "fd00:10::{}"}
SRC = {"IPv4": "10.0.0.{}", "IPv6": "fd00:20::{}"}  # one client, when only the port varies
PROTO = {"TCP": 6, "UDP": 17}


def _cluster(affinity: bool) -> kp.Cluster:
    extra = {"sessionAffinity": "ClientIP"} if affinity else {}
    return kp.Cluster.from_objects([
        node(NODE, "192.168.0.1", "fd00:1::1"),
        service("default", "web", [VIP["IPv4"], VIP["IPv6"]], [port(80, "http", "TCP"), port(53, "dns", "UDP")],
                ipFamilyPolicy="RequireDualStack", **extra),
        slice_("default", "web", [ep(EP["IPv4"].format(i), "n2") for i in range(1, 9)],
               [eport(8080, "http", "TCP"), eport(8053, "dns", "UDP")], name="web-v4"),
        slice_("default", "web", [ep(EP["IPv6"].format(i), "n2") for i in range(1, 9)],
               [eport(8080, "http", "TCP"), eport(8053, "dns", "UDP")], name="web-v6", family="IPv6"),
    ])


def _core_module(impl: str) -> ModuleType:
    if impl == "compiled":
        import kproxy_core._engine as compiled

        return compiled
    return py_core


def _tag(h: int) -> int:
    return (h & 0xFFFF) or 1


def _int(addr: str) -> int:
    return int(ipaddress.ip_address(addr))


def _colliding(keys: Iterator[Any], tag_of: Callable[[Any], int], differ: Callable[[Any, Any], bool]) -> Iterator[
        tuple[Any, Any]]:
    """Pairs of keys with the same tag, in the order they are found; differ: the pair is usable."""
    seen: dict[int, list[Any]] = {}
    for k in keys:
        t = tag_of(k)
        for other in seen.get(t, []):
            if differ(other, k):
                yield other, k
        seen.setdefault(t, []).append(k)


def _sources(family: str) -> Iterator[str]:
    """Many client addresses of the family."""
    if family == "IPv6":
        return (f"fd00:20::{i:x}" for i in range(1, 60000))
    return (f"10.0.{i // 250}.{i % 250 + 1}" for i in range(60000))


@pytest.fixture(params=["IPv4", "IPv6"])
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("proto", ["TCP", "UDP"])
@pytest.mark.parametrize("varies", ["sport", "src"])
def test_flows_sharing_a_tag_stay_apart(impl: str, family: str, proto: str, varies: str) -> None:
    """Two connections that differ only in their source port (or only in their source
    address) and share a tag: each keeps its own endpoint, and there are two flows."""
    engine = kp.Engine(_cluster(False), node=NODE, impl=impl, seed=SEED, flow_capacity=8)
    mod = _core_module(impl)
    v6, vip, dport = family == "IPv6", VIP[family], 80 if proto == "TCP" else 53

    def keys() -> Iterator[tuple[str, int]]:
        if varies == "sport":
            return ((SRC[family].format(7), sport) for sport in range(1, 65536))
        return ((src, 40000) for src in _sources(family))

    def tag_of(k: tuple[str, int]) -> int:
        return _tag(mod.packet_hash(SEED, v6, _int(k[0]), _int(vip), k[1], dport, PROTO[proto]))

    def first_pick(k: tuple[str, int]) -> Any:
        return engine.lookup(k[0], vip, dport, proto, sport=k[1], now=0.0, track=0).endpoint

    a, b = next(_colliding(keys(), tag_of, lambda x, y: first_pick(x) != first_pick(y)))
    assert tag_of(a) == tag_of(b) and a != b
    want = {a: first_pick(a), b: first_pick(b)}
    for k in (a, b):
        got = engine.lookup(k[0], vip, dport, proto, sport=k[1], now=0.0)
        assert got.endpoint == want[k], (k, got.endpoint, want)
    assert engine.flow_count == 2
    # later packets of both connections, read-only and tracked, find their own flow
    for now, track in ((1.0, 2), (2.0, 1)):
        for k in (b, a):
            assert engine.lookup(k[0], vip, dport, proto, sport=k[1], now=now, track=track).endpoint == want[k]
    assert engine.flow_count == 2


def test_affinity_clients_sharing_a_tag_stay_apart(impl: str, family: str) -> None:
    """ClientIP affinity for two clients whose (service, client) keys share a tag: each
    client's new connections keep going to its own first endpoint."""
    engine = kp.Engine(_cluster(True), node=NODE, impl=impl, seed=SEED, affinity_capacity=8)
    mod = _core_module(impl)
    v6, vip = family == "IPv6", VIP[family]
    svc = engine.lookup(SRC[family].format(1), vip, 80, "TCP", sport=1, now=0.0, track=0).service_index

    def tag_of(src: str) -> int:
        return _tag(mod.affinity_hash(SEED, v6, svc, _int(src)))

    def first_pick(src: str) -> Any:
        return engine.lookup(src, vip, 80, "TCP", sport=1000, now=0.0, track=0).endpoint

    a, b = next(_colliding(_sources(family), tag_of, lambda x, y: first_pick(x) != first_pick(y)))
    want = {a: first_pick(a), b: first_pick(b)}
    for src in (a, b):
        assert engine.lookup(src, vip, 80, "TCP", sport=1000, now=0.0).endpoint == want[src]
    # new connections (other source ports), both clients, several times: the affinity holds
    for sport in range(2000, 2010):
        for src in (b, a):
            assert engine.lookup(src, vip, 80, "TCP", sport=sport, now=1.0).endpoint == want[src], (src, sport)


# --------------------------------------------------------------------------- one bucket's slots

def _one_bucket(impl: str, pool: list[int]) -> kp.Engine:
    """An engine whose flow table is one bucket of 8 slots, TCP flows living 100 s."""
    engine = kp.Engine(_cluster(False), node=NODE, impl=impl, seed=SEED, flow_capacity=8,
                       timeouts={"TCP": 100.0, "UDP": 30.0, "SCTP": 30.0})
    engine.apply(_slices(pool))
    return engine


def _slices(pool: list[int]) -> list[dict[str, Any]]:
    return [slice_("default", "web", [ep(EP[fam].format(i), "n2") for i in pool],
                   [eport(8080, "http", "TCP"), eport(8053, "dns", "UDP")],
                   name=f"web-{'v4' if fam == 'IPv4' else 'v6'}", **({"family": "IPv6"} if fam == "IPv6" else {}))
            for fam in ("IPv4", "IPv6")]


def test_an_expired_flow_comes_back_to_its_own_slot(impl: str, family: str) -> None:
    """A connection whose flow has expired picks afresh and is written back over its own
    (expired) entry: one entry per key, whatever slot it sits in. A C survivor found the
    first slot of the table (index 0) not taken as the key's own, so that flow was written
    twice."""
    engine = _one_bucket(impl, [1])
    vip, src = VIP[family], SRC[family].format(7)
    first = engine.lookup(src, vip, 80, "TCP", sport=1000, now=0.0)  # the first flow: slot 0
    assert engine.flow_count == 1
    again = engine.lookup(src, vip, 80, "TCP", sport=1000, now=150.0)  # expired at 100
    assert again.endpoint == first.endpoint and engine.flow_count == 1
    engine.lookup(src, vip, 80, "TCP", sport=1001, now=150.0)
    assert engine.flow_count == 2


@pytest.mark.parametrize("ties", [False, True], ids=["stamps-differ", "stamps-tie"])
def test_a_full_bucket_gives_up_its_oldest_flow(impl: str, family: str, ties: bool) -> None:
    """Eight live flows fill the bucket. A ninth connection takes the slot of the flow
    that would expire first (the oldest stamp), not simply the first slot. When all eight
    stamps are equal, it takes the first slot. Every flow is made on endpoint 1, then
    seven endpoints join: a flow still held answers endpoint 1, and the evicted one is
    picked afresh. C survivors always gave up the first slot, or broke ties towards the
    second."""
    engine = _one_bucket(impl, [1])
    vip = VIP[family]
    first = (EP[family].format(1), 8080)
    probe = _one_bucket(impl, list(range(1, 9)))  # what a new connection gets once seven joined

    def new_pick_is_another(src: str, sport: int) -> bool:
        return bool(probe.lookup(src, vip, 80, "TCP", sport=sport, now=0.0, track=0).endpoint != first)

    clients = [(SRC[family].format(10 + i), 2000 + i) for i in range(9)]
    victim = 0 if ties else 1
    src = clients[victim][0]
    clients[victim] = (src, next(p for p in range(3000, 4000) if new_pick_is_another(src, p)))
    for t, (src, sport) in enumerate(clients[:8]):  # slots 0..7, stamps 100..107 (or all 100)
        engine.lookup(src, vip, 80, "TCP", sport=sport, now=0.0 if ties else float(t))
    if not ties:
        engine.lookup(*clients[0][:1], vip, 80, "TCP", sport=clients[0][1], now=8.0)  # slot 0 now lives to 108
    engine.apply(_slices(list(range(1, 9))))

    def held(k: tuple[str, int], now: float) -> bool:
        return bool(engine.lookup(k[0], vip, 80, "TCP", sport=k[1], now=now, track=2).endpoint == first)

    assert all(held(k, 9.0) for k in clients[:8])
    engine.lookup(*clients[8][:1], vip, 80, "TCP", sport=clients[8][1], now=9.0)  # the ninth: evicts one
    assert engine.flow_count == 8
    assert not held(clients[victim], 9.0), "the oldest flow (stamp 101), or the first of equals, is given up"
    assert all(held(k, 9.0) for k in clients[:8] if k != clients[victim])


def test_both_families_affinity_clients_keep_their_endpoints(impl: str) -> None:
    """IPv4 and IPv6 ClientIP affinity live in tables of their own (records of different
    sizes). Clients of both families, interleaved in a small table, each keep their first
    endpoint across many new connections. A C mutant that put IPv4 affinity into the IPv6
    table (overlapping records) survived the single-family tests."""
    engine = kp.Engine(_cluster(True), node=NODE, impl=impl, seed=SEED, affinity_capacity=8)
    clients = [(fam, src) for i in range(4) for fam, src in (("IPv4", f"10.0.0.{20 + i}"),
                                                              ("IPv6", f"fd00:20::{20 + i:x}"))]
    first = {c: engine.lookup(c[1], VIP[c[0]], 80, "TCP", sport=1000, now=0.0).endpoint for c in clients}
    assert len(set(first.values())) > 2
    for sport in range(1001, 1011):
        for c in clients:
            got = engine.lookup(c[1], VIP[c[0]], 80, "TCP", sport=sport, now=float(sport - 1000))
            assert got.endpoint == first[c], (c, sport, got.endpoint, first[c])


def test_both_families_flows_keep_their_endpoints_and_are_dropped_apart(impl: str) -> None:
    """IPv4 and IPv6 flows live in tables of their own too. Interleaved connections of both
    families keep their endpoint when the pool grows. When a family's endpoint leaves, its
    UDP flows are the ones dropped, and only its own. The mutant that put IPv4 flows in the
    IPv6 table survived the single-family tests."""
    engine = _one_bucket(impl, [1])
    clients = [(fam, SRC[fam].format(30 + i), sport) for i in range(4) for fam in ("IPv4", "IPv6")
               for sport in (3000 + i,)]
    for fam, src, sport in clients:
        for proto, dport in (("TCP", 80), ("UDP", 53)):
            engine.lookup(src, VIP[fam], dport, proto, sport=sport, now=0.0)
    assert engine.flow_count == 16
    assert engine.apply(_slices(list(range(1, 9)))).flows_dropped == 0
    for fam, src, sport in clients:
        for proto, dport, port_ in (("TCP", 80, 8080), ("UDP", 53, 8053)):
            got = engine.lookup(src, VIP[fam], dport, proto, sport=sport, now=1.0, track=2).endpoint
            assert got == (EP[fam].format(1), port_), (fam, src, proto, got)
    only_v4 = [s for s in _slices(list(range(2, 9))) if s["metadata"]["name"] == "web-v4"]
    assert engine.apply(only_v4).flows_dropped == 4  # the IPv4 UDP flows to the endpoint that left
    assert engine.flow_count == 12


def test_a_full_affinity_bucket_gives_up_its_least_recent_client(impl: str, family: str) -> None:
    """ClientIP affinity stamps are the last use, not an expiry, so a full affinity bucket
    gives up the client used longest ago, never "the first stale one". Eight clients fill
    the one bucket, the first is used again last, and a ninth client arrives: the second
    client, now the least recent, loses its affinity. Its next connection is picked afresh,
    while the others keep theirs. A C mutant that placed affinity like flows (every stamp
    in the past looks expired) gave up the first slot instead."""
    engine = kp.Engine(_cluster(True), node=NODE, impl=impl, seed=SEED, affinity_capacity=8)
    vip = VIP[family]
    clients = list(_sources(family))[:9]

    def connect(src: str, sport: int, now: float, track: int = 1) -> Any:
        return engine.lookup(src, vip, 80, "TCP", sport=sport, now=now, track=track).endpoint

    sticky = {src: connect(src, 1000, float(t)) for t, src in enumerate(clients[:8])}
    connect(clients[0], 1001, 8.0)  # the first client is the most recent now
    # the second client's next connection (sport below), picked afresh, goes elsewhere
    sport = next(p for p in range(2000, 3000) if connect(clients[1], p, 9.0, track=0) != sticky[clients[1]])
    connect(clients[8], 1000, 9.0)  # the ninth client takes the least recent slot
    for src in clients[2:8] + clients[:1]:
        assert connect(src, 5000, 10.0) == sticky[src], src
    # last (its new affinity needs a slot too, and takes the least recent one then)
    assert connect(clients[1], sport, 11.0) != sticky[clients[1]]

"""The engine core at the Core level, over both twins: kproxy_core._engine (compiled)
and kproxy_core._engine_py (the reference). The same decisions, tables and errors for
every input; malformed input raises, never crashes; batches running in threads while
another thread loads see the old tables or the new ones, never a mix.

Tables come from the real path: model objects -> plan.make_config/build_plan ->
tables.build_tables.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kproxy_core import _engine_py
from kproxy_core.engine import OUT6_DTYPE, OUT_DTYPE
from kproxy_core.errors import KproxyError, PacketError
from kproxy_core.model import (
    Cluster,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    LoadBalancerIngress,
    Node,
    Service,
    ServicePort,
)
from kproxy_core.plan import build_plan, make_config
from kproxy_core.tables import FamilyTables, build_tables

try:
    from kproxy_core import _engine as _compiled
except ImportError:  # pragma: no cover - only without a build
    _compiled = None  # type: ignore[assignment]


@pytest.fixture(params=["compiled", "python"])
def twin(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "python":
        return _engine_py
    if _compiled is None:
        if os.environ.get("KPROXY_NO_EXTENSIONS"):
            pytest.skip("KPROXY_NO_EXTENSIONS is set")
        pytest.fail("kproxy_core._engine is not built; install the package first")
    return _compiled


def both() -> tuple[ModuleType, ModuleType]:
    if _compiled is None:
        pytest.skip("kproxy_core._engine is not built")
    return _engine_py, _compiled


# --------------------------------------------------------------------------- a cluster

NODE = "n1"
NODES = {
    "n1": Node("n1", (("InternalIP", "192.168.0.1"), ("InternalIP", "fd00:1::1")),
               ("10.0.1.0/24", "fd00:10:1::/64")),
    "n2": Node("n2", (("InternalIP", "192.168.0.2"), ("InternalIP", "fd00:1::2")),
               ("10.0.2.0/24", "fd00:10:2::/64")),
}
CLUSTER_CIDR = "10.0.0.0/16,fd00:10::/48"


def _svc(name: str, cips: tuple[str, ...], ports: tuple[ServicePort, ...], **kw: Any) -> Service:
    fams = tuple("IPv6" if ":" in c else "IPv4" for c in cips)
    return Service("default", name, kw.pop("type", "ClusterIP"), cips, fams, False, ports,
                   selector={"app": name}, **kw)


def _slices(name: str, ports: tuple[EndpointPort, ...], v4: list[tuple[str, str]],
            v6: list[tuple[str, str]]) -> list[EndpointSlice]:
    out = []
    for fam, eps in (("IPv4", v4), ("IPv6", v6)):
        if eps:
            out.append(EndpointSlice("default", f"{name}-{fam.lower()}", name, fam, ports,
                                     tuple(Endpoint((ip,), node_name=n) for ip, n in eps)))
    return out


def cluster(variant: int) -> Cluster:
    """Variant 0; 1: endpoints moved (some gone, some new), `empty` gets one;
    2: `web` deleted, `aff` loses endpoints."""
    web_v4 = [("10.0.1.5", "n1"), ("10.0.2.6", "n2"), ("10.0.2.7", "n2")]
    web_v6 = [("fd00:10:1::5", "n1"), ("fd00:10:2::6", "n2")]
    if variant == 1:
        web_v4 = [("10.0.1.5", "n1"), ("10.0.2.7", "n2"), ("10.0.1.9", "n1")]
        web_v6 = [("fd00:10:2::6", "n2"), ("fd00:10:1::9", "n1")]
    aff_v4 = [(f"10.0.2.{i}", "n2") for i in range(40, 44)]
    if variant == 2:
        aff_v4 = aff_v4[:2]
    http = (EndpointPort("http", "TCP", 8080),)
    svcs = []
    slices: list[EndpointSlice] = []
    if variant != 2:
        svcs.append(_svc("web", ("10.96.0.10", "fd00:96::10"),
                         (ServicePort("http", "TCP", 80), ServicePort("dns", "UDP", 53))))
        slices += _slices("web", (*http, EndpointPort("dns", "UDP", 5353)), web_v4, web_v6)
    svcs.append(_svc("np", ("10.96.0.11", "fd00:96::11"), (ServicePort("http", "TCP", 80, 30080),),
                     type="NodePort", external_traffic_policy="Local"))
    slices += _slices("np", http, [("10.0.2.20", "n2")] + ([("10.0.1.21", "n1")] if variant == 1 else []),
                      [("fd00:10:2::20", "n2")])
    svcs.append(_svc("np2", ("10.96.0.15",), (ServicePort("s", "SCTP", 9000, 30090),), type="NodePort"))
    slices += _slices("np2", (EndpointPort("s", "SCTP", 9999),), [("10.0.2.30", "n2"), ("10.0.1.31", "n1")], [])
    svcs.append(_svc("empty", ("10.96.0.12", "fd00:96::12"), (ServicePort("http", "TCP", 80),)))
    if variant == 1:
        slices += _slices("empty", http, [("10.0.1.50", "n1")], [])
    svcs.append(_svc("aff", ("10.96.0.13",), (ServicePort("http", "TCP", 80),),
                     session_affinity="ClientIP", affinity_timeout=7))
    slices += _slices("aff", http, aff_v4, [])
    svcs.append(_svc("ext", ("10.96.0.14", "fd00:96::14"), (ServicePort("https", "TCP", 443),),
                     external_ips=("192.168.99.1", "fd00:99::1")))
    slices += _slices("ext", (EndpointPort("https", "TCP", 8443),), [("10.0.2.60", "n2")],
                      [("fd00:10:2::60", "n2")])
    svcs.append(_svc("itp", ("10.96.0.16",), (ServicePort("http", "TCP", 80),),
                     internal_traffic_policy="Local"))
    slices += _slices("itp", http, [("10.0.2.70", "n2")], [])
    # a LoadBalancer with source ranges (n1's addresses inside them: its VIPs are allowed
    # sources too); variant 1 narrows them, so loads meet flows created while allowed
    ranges = ("203.0.113.0/28", "192.168.0.0/24", "fd00:1::/64", "2001:db8::/120")
    svcs.append(_svc("lb", ("10.96.0.17", "fd00:96::17"), (ServicePort("http", "TCP", 80, 30081),),
                     type="LoadBalancer",
                     load_balancer_ingress=(LoadBalancerIngress("192.168.99.2"), LoadBalancerIngress("fd00:99::2")),
                     load_balancer_source_ranges=ranges if variant != 1 else ranges[1:]))
    slices += _slices("lb", http, [("10.0.2.80", "n2")], [("fd00:10:2::80", "n2")])
    return Cluster({s.key: s for s in svcs}, {s.key: s for s in slices}, NODES)


def _plans(variant: int, **cfg: Any) -> dict[str, Any]:
    cl = cluster(variant)
    return {fam: build_plan(cl, make_config(cl, fam, NODE, cluster_cidr=CLUSTER_CIDR, **cfg))  # type: ignore[arg-type]
            for fam in ("IPv4", "IPv6")}


SERVICES = sorted({pp.spn for v in (0, 1, 2) for p in _plans(v).values() for pp in p.ports})
INDEX = {name: i for i, name in enumerate(SERVICES)}


def tables(variant: int, **cfg: Any) -> tuple[FamilyTables, FamilyTables]:
    plans = _plans(variant, **cfg)
    return build_tables(plans["IPv4"], INDEX), build_tables(plans["IPv6"], INDEX)


VARIANTS = [tables(0), tables(1), tables(2), tables(0, nodeport_addresses="192.168.0.1/32")]

SRC4 = ["10.0.1.5", "10.0.1.20", "10.0.2.30", "10.0.1.31", "192.168.0.1", "192.168.0.2", "127.0.0.1",
        "203.0.113.9", "10.0.2.40", "203.0.113.99", "192.168.99.2"]
DST4 = ["10.96.0.10", "10.96.0.11", "10.96.0.12", "10.96.0.13", "10.96.0.14", "10.96.0.15", "10.96.0.16",
        "192.168.99.1", "192.168.0.1", "127.0.0.1", "192.168.0.2", "203.0.113.1", "192.168.99.2"]
SRC6 = ["fd00:10:1::5", "fd00:10:1::20", "fd00:1::1", "::1", "2001:db8::9", "fd00:10:2::6", "2001:db8::1:9",
        "fd00:99::2"]
DST6 = ["fd00:96::10", "fd00:96::11", "fd00:96::12", "fd00:96::14", "fd00:99::1", "fd00:1::1", "::1",
        "2001:db8::1", "fd00:99::2"]
PORTS = [80, 53, 443, 9000, 30080, 30090, 8080, 1]
PROTOS = [6, 17, 132]

Packet = tuple[str, str, int, int, int]  # src, dst, dport, proto, sport


def packets(draw: Callable[..., Any], v6: bool, n_max: int = 30) -> list[Packet]:
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    n = draw(st.integers(0, n_max))
    return [(draw(st.sampled_from(src)), draw(st.sampled_from(dst)), draw(st.sampled_from(PORTS)),
             draw(st.sampled_from(PROTOS)), draw(st.integers(0, 3))) for _ in range(n)]


def columns(rows: list[Packet], v6: bool) -> tuple[np.ndarray, ...]:
    if v6:
        src = np.array([list(ipaddress.ip_address(r[0]).packed) for r in rows], np.uint8).reshape(-1, 16)
        dst = np.array([list(ipaddress.ip_address(r[1]).packed) for r in rows], np.uint8).reshape(-1, 16)
    else:
        src = np.array([int(ipaddress.ip_address(r[0])) for r in rows], np.uint32)
        dst = np.array([int(ipaddress.ip_address(r[1])) for r in rows], np.uint32)
    dport = np.array([r[2] for r in rows], np.uint16)
    proto = np.array([r[3] for r in rows], np.uint8)
    sport = np.array([r[4] for r in rows], np.uint16)
    return src, dst, dport, proto, sport


def batch(core: Any, rows: list[Packet], v6: bool, now: float, track: int,
          sport: bool = True) -> np.ndarray:
    src, dst, dport, proto, sp = columns(rows, v6)
    out = np.zeros(len(rows), OUT6_DTYPE if v6 else OUT_DTYPE)
    (core.lookup_batch6 if v6 else core.lookup_batch)(src, dst, dport, proto, sp if sport else None,
                                                        out, now, track)
    return out


def loaded(mod: ModuleType, variant: int = 0, seed: int = 7, **kw: Any) -> Any:
    core = mod.Core(seed, **kw)
    core.load(*VARIANTS[variant], SERVICES)
    return core


def key(d: Any) -> tuple[Any, ...]:
    return (d.verdict, d.service, d.service_index, d.frontend, d.endpoint, d.masquerade)


# --------------------------------------------------------------------------- the module

def test_the_compiled_twin_is_compiled() -> None:
    py, c = both()
    assert c.__file__ is not None and c.__file__.endswith((".so", ".pyd"))
    assert c.Core.__module__ == "kproxy_core._engine" and not hasattr(c.Core, "_decide")
    assert c.Decision is not py.Decision


def test_out_dtypes_are_the_engines() -> None:
    assert _engine_py.OUT_DTYPE == OUT_DTYPE and _engine_py.OUT6_DTYPE == OUT6_DTYPE
    assert OUT_DTYPE.itemsize == 13


@settings(max_examples=300, deadline=None)
@given(z=st.integers(0, 2**64 - 1), seed=st.integers(0, 2**64 - 1), v6=st.booleans(),
       a=st.integers(0, 2**128 - 1), b=st.integers(0, 2**128 - 1), sport=st.integers(0, 65535),
       dport=st.integers(0, 65535), proto=st.integers(0, 255), svc=st.integers(0, 2**31 - 1),
       n=st.integers(1, 2**31 - 1))
def test_hashes_agree(z: int, seed: int, v6: bool, a: int, b: int, sport: int, dport: int, proto: int,
                      svc: int, n: int) -> None:
    py, c = both()
    if not v6:
        a, b = a & 0xFFFFFFFF, b & 0xFFFFFFFF
    assert py.mix(z) == c.mix(z)
    h = py.packet_hash(seed, v6, a, b, sport, dport, proto)
    assert h == c.packet_hash(seed, v6, a, b, sport, dport, proto)
    assert py.affinity_hash(seed, v6, svc, a) == c.affinity_hash(seed, v6, svc, a)
    assert py.pick(h, n) == c.pick(h, n) < n


def test_mix_is_splitmix64() -> None:
    py, c = both()
    # the first outputs of splitmix64 seeded with 0: mix(k * golden gamma)
    assert c.mix(0x9E3779B97F4A7C15) == py.mix(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF


# --------------------------------------------------------------------------- decisions

def test_decisions(twin: ModuleType) -> None:
    core = loaded(twin)
    L = core.lookup
    d = L("10.0.1.20", "10.96.0.10", 80, "TCP", sport=1, now=0.0)
    assert d.verdict == "DNAT" and d.service == "default/web:http" and d.frontend == "ClusterIP"
    assert d.service_index == SERVICES.index("default/web:http")
    assert d.endpoint in {("10.0.1.5", 8080), ("10.0.2.6", 8080), ("10.0.2.7", 8080)}
    assert d.masquerade is False  # from a pod
    assert L("203.0.113.9", "10.96.0.10", 80, "TCP", sport=1, now=0.0).masquerade is True
    assert L("10.0.1.20", "10.96.0.10", 53, "UDP", now=0.0).endpoint[1] == 5353
    e = L("10.0.1.20", "10.96.0.12", 80, "tcp", now=0.0)
    assert (e.verdict, e.service, e.frontend, e.endpoint) == ("REJECT", "default/empty:http", "ClusterIP", None)
    assert L("10.0.1.20", "10.96.0.16", 80, 6, now=0.0).verdict == "DROP"  # itp=Local, none on n1
    p = L("10.0.1.20", "203.0.113.1", 80, now=0.0)
    assert (p.verdict, p.service, p.service_index, p.frontend, p.endpoint, p.masquerade) == (
        "PASS", None, -1, None, None, False)
    n = L("203.0.113.9", "192.168.0.1", 30080, "TCP", sport=5, now=0.0)  # etp=Local, none on n1
    assert (n.verdict, n.frontend) == ("DROP", "NodePort")
    assert L("10.0.1.20", "192.168.0.1", 30080, "TCP", now=0.0).verdict == "DNAT"  # pods short-circuit
    s = L("203.0.113.9", "192.168.0.1", 30090, "SCTP", now=0.0)
    assert (s.verdict, s.frontend, s.masquerade) == ("DNAT", "NodePort", True)
    x = L("203.0.113.9", "192.168.99.1", 443, "TCP", now=0.0)
    assert (x.verdict, x.frontend, x.endpoint) == ("DNAT", "ExternalIP", ("10.0.2.60", 8443))
    v = L("fd00:10:1::20", "fd00:96::10", 80, "TCP", now=0.0)
    assert v.verdict == "DNAT" and v.endpoint in {("fd00:10:1::5", 8080), ("fd00:10:2::6", 8080)}
    assert L("fd00:10:1::20", "fd00:96::10", 53, "UDP", now=0.0).service == "default/web:dns"


def test_hairpin_masquerades(twin: ModuleType) -> None:
    core = loaded(twin)
    hits = [core.lookup("10.0.1.5", "10.96.0.10", 80, "TCP", sport=s, now=0.0, track=0) for s in range(60)]
    own = [d for d in hits if d.endpoint == ("10.0.1.5", 8080)]
    assert own and all(d.masquerade for d in own)
    assert not any(d.masquerade for d in hits if d.endpoint != ("10.0.1.5", 8080))


def test_nothing_loaded_passes(twin: ModuleType) -> None:
    core = twin.Core()
    d = core.lookup("10.0.1.20", "10.96.0.10", 80, now=0.0)
    assert (d.verdict, d.service, d.service_index, d.frontend, d.endpoint) == ("PASS", None, -1, None, None)
    out = batch(core, [("10.0.1.20", "10.96.0.10", 80, 6, 1)], False, 0.0, 1)
    assert out["verdict"][0] == 0 and out["service"][0] == -1 and core.flow_count() == 0
    assert batch(core, [("::1", "fd00:96::10", 80, 6, 1)], True, 0.0, 1)["verdict"][0] == 0


def test_decision_objects_agree_across_twins() -> None:
    py, c = both()
    args = ("DNAT", "default/web:http", 3, "ClusterIP", ("10.0.1.5", 8080), True)
    a, b = py.Decision(*args), c.Decision(*args)
    assert a == b and b == a and (a != b) is False and (b != a) is False
    assert repr(a) == repr(b) == (
        "Decision(verdict='DNAT', service='default/web:http', frontend='ClusterIP', "
        "endpoint=('10.0.1.5', 8080), masquerade=True)")
    for other in (c.Decision("DNAT", "default/web:http", 4, "ClusterIP", ("10.0.1.5", 8080), True),
                  py.Decision("DROP", *args[1:])):
        assert a != other and b != other and other != b
    assert (b == 3) is False and b != "DNAT"
    for d in (a, b):
        with pytest.raises(TypeError):
            hash(d)
    b.verdict = "DROP"  # plain attributes, as in the twin
    assert b.verdict == "DROP" and b != a


def test_decisions_agree_across_twins_on_real_tables() -> None:
    py, c = both()
    cores = [loaded(py), loaded(c)]
    for srcs, dsts in ((SRC4, DST4), (SRC6, DST6)):
        for i, (s, d) in enumerate((s, d) for s in srcs for d in dsts):
            for port in PORTS:
                for proto in ("TCP", "UDP", "SCTP"):
                    a, b = (k.lookup(s, d, port, proto, sport=i % 5, now=float(i), track=1) for k in cores)
                    assert a == b and key(a) == key(b) and repr(a) == repr(b), (s, d, port, proto)
        assert cores[0].flow_count() == cores[1].flow_count()


# --------------------------------------------------------------------------- flows and affinity

FLOW = ("10.0.1.20", "10.96.0.10", 80, "TCP")


def test_track_modes(twin: ModuleType) -> None:
    core = loaded(twin, flow_capacity=64, timeouts=(10.0, 5.0, 20.0))
    core.lookup(*FLOW, sport=1, now=0.0, track=0)
    core.lookup(*FLOW, sport=1, now=0.0, track=2)
    assert core.flow_count() == 0
    first = core.lookup(*FLOW, sport=1, now=0.0, track=1)
    assert core.flow_count() == 1
    # read-only lookups see the flow but do not refresh it: expiry is 0 + 10
    assert core.lookup(*FLOW, sport=1, now=9.0, track=2) == first
    assert core.flow_count() == 1
    # expiry is exclusive: at now == expiry the flow no longer matches
    miss = core.lookup(*FLOW, sport=1, now=10.0, track=2)
    assert miss.verdict == "DNAT"  # a fresh pick (it may or may not be the same endpoint)
    # a read-write hit refreshes
    core.lookup(*FLOW, sport=1, now=5.0, track=1)
    assert core.lookup(*FLOW, sport=1, now=14.5, track=2) == first


def test_flows_keep_their_endpoint_and_loads_drop_the_gone(twin: ModuleType) -> None:
    core = loaded(twin, flow_capacity=4096, stale_flows="all")
    flows = [(f"10.0.1.{i}", "10.96.0.10", 80, "TCP", 1000 + i) for i in range(20, 120)]
    before = [core.lookup(*f[:4], sport=f[4], now=0.0).endpoint for f in flows]
    gone = sum(e == ("10.0.2.6", 8080) for e in before)
    assert 0 < gone < len(flows)
    assert core.load(*VARIANTS[1], SERVICES) == gone
    after = [core.lookup(*f[:4], sport=f[4], now=1.0, track=2).endpoint for f in flows]
    assert all(a == b for a, b in zip(before, after, strict=True) if a != ("10.0.2.6", 8080))
    assert ("10.0.2.6", 8080) not in after
    # variant 2 deletes the service: every web flow goes (the re-picked ones were not written)
    assert core.load(*VARIANTS[2], SERVICES) == len(flows) - gone


@pytest.mark.parametrize(("proto", "dport"), [("TCP", 80), ("UDP", 53)])
def test_loads_drop_only_udp_flows_by_default(twin: ModuleType, proto: str, dport: int) -> None:
    """kube-proxy's conntrack cleanup: UDP entries to a gone endpoint are deleted, TCP ones
    stay DNATed to it until they time out."""
    core = loaded(twin, flow_capacity=4096)
    flows = [(f"10.0.1.{i}", "10.96.0.10", dport, proto, 1000 + i) for i in range(20, 120)]
    before = [core.lookup(*f[:4], sport=f[4], now=0.0).endpoint for f in flows]
    gone = sum(e[0] == "10.0.2.6" for e in before)
    assert 0 < gone < len(flows)
    assert core.load(*VARIANTS[1], SERVICES) == (gone if proto == "UDP" else 0)
    after = [core.lookup(*f[:4], sport=f[4], now=1.0, track=2).endpoint for f in flows]
    assert (after == before) == (proto == "TCP")


def test_a_batch_with_each_packets_time_is_the_packets_one_by_one(twin: ModuleType) -> None:
    """now as an array: each packet's own clock for timeouts, as single lookups at those
    times. ClientIP affinity of 7 s: a client back after 20 s may be sent elsewhere, one
    back after 3 s may not (with one clock for the batch every client would stick)."""
    clients = [f"10.0.1.{i}" for i in range(20, 80)]
    rows: list[Packet] = []
    times: list[float] = []
    for k, t in enumerate((0.0, 3.0, 23.0, 24.0, 60.0)):
        for s in clients:
            rows.append((s, "10.96.0.13", 80, 6, 1000 + k))  # a new connection each time
            times.append(t)
    got = batch(loaded(twin), rows, False, np.array(times), 1)  # type: ignore[arg-type]
    one = loaded(twin)
    want = [one.lookup(r[0], r[1], r[2], r[3], sport=r[4], now=t) for r, t in zip(rows, times, strict=True)]
    assert [(str(ipaddress.ip_address(int(a))), int(p)) for a, p in zip(got["ep_ip"], got["ep_port"], strict=True)
            ] == [d.endpoint for d in want]
    n = len(clients)
    first, back3, back23 = (got["ep_ip"][k * n:(k + 1) * n] for k in (0, 1, 2))
    assert (first == back3).all() and (first != back23).any()
    with pytest.raises(PacketError, match="now: expected a number or a float64 array of shape"):
        batch(loaded(twin), rows, False, np.array(times[:-1]), 1)  # type: ignore[arg-type]
    with pytest.raises(PacketError, match=r"now\[0\]: nan is not a finite number of seconds"):
        batch(loaded(twin), rows, False, np.array([math.nan] * len(rows)), 1)  # type: ignore[arg-type]


def test_client_ip_affinity(twin: ModuleType) -> None:
    core = loaded(twin)
    picks = {core.lookup("10.0.1.20", "10.96.0.13", 80, "TCP", sport=s, now=float(s) / 10).endpoint
             for s in range(30)}
    assert len(picks) == 1
    first = picks.pop()
    # idle for more than timeoutSeconds (7): a new pick, which sticks again
    spread = {core.lookup(f"10.0.1.{i}", "10.96.0.13", 80, "TCP", sport=1, now=0.0, track=0).endpoint
              for i in range(100, 140)}
    assert len(spread) > 1
    again = core.lookup("10.0.1.20", "10.96.0.13", 80, "TCP", sport=99, now=2.9 + 6.9)
    assert again.endpoint == first  # 6.9 s after the last use: still affine


def test_eviction_keeps_the_table_bounded(twin: ModuleType) -> None:
    core = loaded(twin, flow_capacity=8, timeouts=(100.0, 100.0, 100.0))  # one bucket of 8
    for i in range(30):
        core.lookup("10.0.1.20", "10.96.0.10", 80, "TCP", sport=i, now=float(i))
    assert core.flow_count() == 8
    core.clear()
    assert core.flow_count() == 0


def test_sport_none_is_zero(twin: ModuleType) -> None:
    rows = [("10.0.1.20", "10.96.0.10", 80, 6, 0), ("10.0.1.21", "10.96.0.13", 80, 6, 0)]
    a = batch(loaded(twin), rows, False, 0.0, 1, sport=False)
    b = batch(loaded(twin), rows, False, 0.0, 1)
    assert a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------- differential

@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_twins_agree(data: st.DataObject) -> None:
    """Random packets, tracking modes, clocks, loads and clears, with small tables
    (evictions), repeated tuples and both families: decisions, batch outputs, flow
    counts and drop counts are identical."""
    mods = both()
    seed = data.draw(st.integers(0, 2**64 - 1), label="seed")
    fcap = data.draw(st.integers(1, 40), label="flow_capacity")
    acap = data.draw(st.integers(1, 20), label="affinity_capacity")
    timeouts = data.draw(st.tuples(*[st.sampled_from([0.5, 2.0, 5.0, 30.0])] * 3), label="timeouts")
    cores = [m.Core(seed, fcap, acap, timeouts) for m in mods]
    variant = data.draw(st.integers(0, len(VARIANTS) - 1))
    assert cores[0].load(*VARIANTS[variant], SERVICES) == cores[1].load(*VARIANTS[variant], SERVICES)
    now = 0.0
    for _ in range(data.draw(st.integers(1, 20))):
        now += data.draw(st.sampled_from([0.0, 0.0, 0.25, 1.0, 3.0, 8.0]))
        track = data.draw(st.sampled_from([1, 1, 1, 0, 2]))
        op = data.draw(st.sampled_from(["lookup", "lookup", "batch", "batch", "load", "clear"]))
        if op == "lookup":
            for r in packets(data.draw, data.draw(st.booleans()), 12):
                proto = data.draw(st.sampled_from([r[3], {6: "TCP", 17: "UDP", 132: "sctp"}[r[3]]]))
                a, b = (c.lookup(r[0], r[1], r[2], proto, sport=r[4], now=now, track=track) for c in cores)
                assert key(a) == key(b) and a == b, (r, a, b)
        elif op == "batch":
            v6 = data.draw(st.booleans())
            rows = packets(data.draw, v6)
            with_sport = data.draw(st.booleans())
            outs = [batch(c, rows, v6, now, track, with_sport) for c in cores]
            assert outs[0].tobytes() == outs[1].tobytes(), (rows, outs)
        elif op == "load":
            variant = data.draw(st.integers(0, len(VARIANTS) - 1))
            assert cores[0].load(*VARIANTS[variant], SERVICES) == cores[1].load(*VARIANTS[variant], SERVICES)
        else:
            for c in cores:
                c.clear()
        assert cores[0].flow_count() == cores[1].flow_count()


# --------------------------------------------------------------------------- malformed input

@pytest.mark.parametrize("src", [None, "", "garbage", "1.2.3", "1.2.3.4.5", "01.2.3.4", "1.2.3.256",
                                 " 1.2.3.4", "1.2.3.4 ", "١.2.3.4", "1.2.3.4/32", "::g", 2**129, -1,
                                 b"1.2.3.4", 1.5, object()])
def test_bad_addresses(twin: ModuleType, src: object) -> None:
    core = loaded(twin)
    with pytest.raises(PacketError):
        core.lookup(src, "10.96.0.10", 80, now=0.0)
    with pytest.raises(PacketError):
        core.lookup("10.0.1.20", src, 80, now=0.0)


def test_address_forms(twin: ModuleType) -> None:
    core = loaded(twin)
    ref = core.lookup("10.0.1.20", "10.96.0.10", 80, sport=3, now=0.0, track=0)
    for s, d in ((0x0A000114, 0x0A60000A), (ipaddress.ip_address("10.0.1.20"), "10.96.0.10"),
                 ("10.0.1.20", ipaddress.IPv4Address("10.96.0.10"))):
        assert core.lookup(s, d, 80, sport=3, now=0.0, track=0) == ref
    with pytest.raises(PacketError, match="different IP families"):
        core.lookup("10.0.1.20", "fd00:96::10", 80, now=0.0)
    with pytest.raises(PacketError):
        core.lookup("::1", "10.96.0.10", 80, now=0.0)


@pytest.mark.parametrize("proto", ["ICMP", "Tcp", "", 1, 0, 6.0, True, None, np.uint8(6), b"TCP"])
def test_bad_protocols(twin: ModuleType, proto: object) -> None:
    with pytest.raises(PacketError):
        loaded(twin).lookup("10.0.1.20", "10.96.0.10", 80, proto, now=0.0)


@pytest.mark.parametrize("port", [-1, 65536, 2**70, -(2**70), 80.0, True, False, "80", None, np.uint16(80)])
def test_bad_ports(twin: ModuleType, port: object) -> None:
    core = loaded(twin)
    with pytest.raises(PacketError):
        core.lookup("10.0.1.20", "10.96.0.10", port, "TCP", now=0.0)
    with pytest.raises(PacketError):
        core.lookup("10.0.1.20", "10.96.0.10", 80, "TCP", sport=port, now=0.0)


def test_bad_now(twin: ModuleType) -> None:
    core = loaded(twin)
    # NaN and infinities were taken (every flow expired, or lived forever); a list was a TypeError
    for bad in ("soon", [1.0], math.nan, math.inf, -math.inf, b"1"):
        with pytest.raises(PacketError, match=r"^now: "):
            core.lookup("10.0.1.20", "10.96.0.10", 80, now=bad)
    assert core.lookup("10.0.1.20", "10.96.0.10", 80, now=-3).verdict == "DNAT"
    assert core.lookup("10.0.1.20", "10.96.0.10", 80).verdict == "DNAT"  # the wall clock


def _cols4(n: int = 5) -> dict[str, Any]:
    rows = [("10.0.1.20", "10.96.0.10", 80, 6, i) for i in range(n)]
    src, dst, dport, proto, sport = columns(rows, False)
    return {"src": src, "dst": dst, "dport": dport, "proto": proto, "sport": sport,
            "out": np.zeros(n, OUT_DTYPE)}


def _call(core: Any, c: dict[str, Any], v6: bool = False) -> None:
    f = core.lookup_batch6 if v6 else core.lookup_batch
    f(c["src"], c["dst"], c["dport"], c["proto"], c["sport"], c["out"], 0.0, 1)


@pytest.mark.parametrize("name,value", [
    ("src", np.zeros(5, np.int64)), ("src", np.zeros(5, np.uint16)), ("src", [1, 2, 3, 4, 5]),
    ("src", None), ("src", np.zeros(5, ">u4")), ("src", np.zeros((5, 1), np.uint32)),
    ("dst", np.zeros(4, np.uint32)), ("dst", np.zeros(6, np.uint32)), ("dst", 7),
    ("dport", np.zeros(5, np.int32)), ("dport", np.zeros(5, np.uint32)), ("dport", np.zeros(3, np.uint16)),
    ("proto", np.zeros(5, np.int8)), ("proto", np.zeros(5, np.uint16)), ("proto", b"\x06" * 5),
    ("sport", np.zeros(5, np.int64)), ("sport", np.zeros(6, np.uint16)), ("sport", "x"),
])
def test_bad_batch_columns(twin: ModuleType, name: str, value: Any) -> None:
    core = loaded(twin)
    c = _cols4()
    c[name] = value
    with pytest.raises(PacketError):
        _call(core, c)
    assert core.flow_count() == 0


@pytest.mark.parametrize("out", [
    np.zeros(5, OUT6_DTYPE), np.zeros((5, 1), OUT_DTYPE), np.zeros(5, np.uint8), np.zeros(65, np.uint8),
    None, [0] * 5, np.zeros(5, [("verdict", "u1"), ("service", "<i4")]),
])
def test_bad_out(twin: ModuleType, out: Any) -> None:
    c = _cols4()
    c["out"] = out
    with pytest.raises(ValueError):
        _call(loaded(twin), c)


def test_read_only_out(twin: ModuleType) -> None:
    c = _cols4()
    c["out"].flags.writeable = False
    with pytest.raises(ValueError):
        _call(loaded(twin), c)


def test_bad_v6_columns(twin: ModuleType) -> None:
    core = loaded(twin)
    rows = [("fd00:10:1::20", "fd00:96::10", 80, 6, 1)] * 4
    src, dst, dport, proto, sport = columns(rows, True)
    out = np.zeros(4, OUT6_DTYPE)
    for s in (src[:, :15], np.zeros((4, 17), np.uint8), src.reshape(-1), src.astype(np.uint16),
              np.zeros((3, 16), np.uint8), src.view(np.uint32)):
        with pytest.raises(PacketError):
            core.lookup_batch6(s, dst, dport, proto, sport, out, 0.0, 1)
        with pytest.raises(PacketError):
            core.lookup_batch6(src, s, dport, proto, sport, out, 0.0, 1)
    with pytest.raises(ValueError):
        core.lookup_batch6(src, dst, dport, proto, sport, np.zeros(4, OUT_DTYPE), 0.0, 1)
    with pytest.raises(PacketError):  # IPv4 columns to the IPv6 batch
        core.lookup_batch6(*columns([("10.0.1.20", "10.96.0.10", 80, 6, 1)] * 4, False), out, 0.0, 1)
    assert core.flow_count() == 0


def test_empty_batches(twin: ModuleType) -> None:
    core = loaded(twin)
    out = batch(core, [], False, 0.0, 1)
    assert out.shape == (0,)
    out6 = batch(core, [], True, 0.0, 1)
    assert out6.shape == (0,)
    core.lookup_batch(np.zeros(0, np.uint32), np.zeros(0, np.uint32), np.zeros(0, np.uint16),
                      np.zeros(0, np.uint8), None, np.zeros(0, OUT_DTYPE), 0.0, 1)
    assert core.flow_count() == 0


@pytest.mark.parametrize("v6", [False, True])
def test_strided_columns_give_the_same_results(twin: ModuleType, v6: bool) -> None:
    """Non-contiguous inputs and outputs (any strides) are read and written correctly."""
    srcs, dsts = (SRC6, DST6) if v6 else (SRC4, DST4)
    rows = [(s, d, p, pr, sp) for s in srcs for d in dsts for p in (80, 30080, 443)
            for pr in (6, 132) for sp in (0, 1)][:200]
    ref = batch(loaded(twin), rows, v6, 0.0, 1)
    src, dst, dport, proto, sport = columns(rows, v6)

    def spread(a: np.ndarray) -> np.ndarray:
        wide = np.zeros((a.shape[0] * 3, *a.shape[1:]), a.dtype)
        wide[::3] = a
        return wide[::3]

    if v6:  # the address bytes themselves strided too (Fortran order: 16 bytes n apart)
        src, dst = np.asfortranarray(src), np.asfortranarray(dst)
        assert src.strides[1] != 1
    else:
        src, dst = spread(src), spread(dst)
    big = np.zeros(len(rows) * 2, OUT6_DTYPE if v6 else OUT_DTYPE)
    out = big[::-2]
    core = loaded(twin)
    (core.lookup_batch6 if v6 else core.lookup_batch)(src, dst, spread(dport), spread(proto),
                                                        spread(sport), out, 0.0, 1)
    assert out.tobytes() == ref.tobytes()
    assert not big[::2].tobytes().strip(b"\0")  # the rows between were not written


def _replace(t: FamilyTables, **kw: Any) -> FamilyTables:
    return dataclasses.replace(t, **kw)


def _bad_tables() -> list[tuple[str, tuple[FamilyTables, FamilyTables], list[str]]]:
    t4, t6 = VARIANTS[0]
    r = len(t4.rec_port)
    bad = [
        ("fe_rec out of range", _replace(t4, fe_rec=t4.fe_rec + r)),
        ("fe_rec negative", _replace(t4, fe_rec=t4.fe_rec - 100)),
        ("np_rec out of range", _replace(t4, np_rec=np.full_like(t4.np_rec, r))),
        ("rec_port out of range", _replace(t4, rec_port=t4.rec_port + len(t4.port_service))),
        ("rec_kind out of range", _replace(t4, rec_kind=np.full_like(t4.rec_kind, 5))),
        ("rec_action pool 3", _replace(t4, rec_action=t4.rec_action | 0x0C)),
        ("rec_action shape", _replace(t4, rec_action=t4.rec_action[:, :3])),
        ("rec_action rows", _replace(t4, rec_action=t4.rec_action[:-1])),
        ("rec_np_filter pool 3", _replace(t4, rec_np_filter=t4.rec_np_filter | 0x0C)),
        ("pool start past the end", _replace(t4, port_pool_start=t4.port_pool_start + len(t4.pool_ep))),
        ("pool len past the end", _replace(t4, port_pool_len=t4.port_pool_len + 1000)),
        ("pool len negative", _replace(t4, port_pool_len=t4.port_pool_len - 1000)),
        ("pool_ep out of range", _replace(t4, pool_ep=t4.pool_ep + len(t4.ep_port))),
        ("port_service out of range", _replace(t4, port_service=t4.port_service + len(SERVICES))),
        ("port_affinity negative", _replace(t4, port_affinity=t4.port_affinity.astype(np.int64) - 1)),
        ("ep_str short", _replace(t4, ep_str=t4.ep_str[:-1])),
        ("ep_addr short", _replace(t4, ep_addr=t4.ep_addr[:-1])),
        ("fe_port too big", _replace(t4, fe_port=t4.fe_port.astype(np.int64) + 70000)),
        ("fe_proto rows", _replace(t4, fe_proto=t4.fe_proto[:-1])),
        ("float array", _replace(t4, fe_port=t4.fe_port.astype(float))),
        ("not an array", _replace(t4, pool_ep=object())),
        ("v6 address array", _replace(t4, fe_addr=np.zeros((len(t4.fe_port), 16), np.uint8))),
        ("det_prefix too long", _replace(t4, det_prefix=33)),
        ("det_prefix not an int", _replace(t4, det_prefix=8.0)),
        ("det_addr empty", _replace(t4, det_addr=np.zeros(0, np.uint32))),
    ]
    out = [(name, (t, t6), SERVICES) for name, t in bad]
    out += [
        ("families swapped", (t6, t4), SERVICES),
        ("v6 flag wrong", (t4, _replace(t6, v6=False)), SERVICES),
        ("v6 rows of 15 bytes", (t4, _replace(t6, ep_addr=t6.ep_addr[:, :15])), SERVICES),
        ("too few service names", (t4, t6), SERVICES[:2]),
    ]
    return out


@pytest.mark.parametrize("name,pair,services", _bad_tables(), ids=[b[0] for b in _bad_tables()])
def test_inconsistent_tables_are_refused(twin: ModuleType, name: str,
                                         pair: tuple[FamilyTables, FamilyTables], services: list[str]) -> None:
    core = loaded(twin)
    before = core.lookup("10.0.1.20", "10.96.0.10", 80, sport=1, now=0.0)
    with pytest.raises(ValueError):
        core.load(*pair, services)
    # unchanged: the same tables, the same flow
    assert core.lookup("10.0.1.20", "10.96.0.10", 80, sport=1, now=0.0, track=2) == before
    assert core.flow_count() == 1


def test_empty_pools_drop(twin: ModuleType) -> None:
    """Tables whose pools are all empty (kproxy_core.tables never builds them): DROP."""
    py, c = both()
    t4, t6 = VARIANTS[0]
    empty = (_replace(t4, port_pool_len=np.zeros_like(t4.port_pool_len)),
             _replace(t6, port_pool_len=np.zeros_like(t6.port_pool_len)))
    core = twin.Core(3)
    core.load(*empty, SERVICES)
    d = core.lookup("10.0.1.20", "10.96.0.10", 80, now=0.0)
    assert (d.verdict, d.service, d.frontend, d.endpoint) == ("DROP", "default/web:http", "ClusterIP", None)
    rows = [(s, d_, p, 6, 0) for s in SRC4 for d_ in DST4 for p in (80, 30080)]
    outs = []
    for m in (py, c):
        k = m.Core(3)
        k.load(*empty, SERVICES)
        outs.append(batch(k, rows, False, 0.0, 1).tobytes())
    assert outs[0] == outs[1]
    assert core.flow_count() == 0


def test_tables_without_anything(twin: ModuleType) -> None:
    """Zero-row tables (and [] for arrays) load; everything passes."""
    t4, t6 = VARIANTS[0]
    z = {f.name: [] for f in dataclasses.fields(FamilyTables)
         if f.name not in ("v6", "np_match_all", "np_loopback", "det_on", "det_addr", "det_prefix",
                           "duplicates")}
    core = twin.Core()
    assert core.load(_replace(t4, **z), _replace(t6, **z), []) == 0
    assert core.lookup("10.0.1.20", "127.0.0.1", 80, now=0.0).verdict == "PASS"


@pytest.mark.parametrize("kw", [
    {"flow_capacity": 0}, {"affinity_capacity": 0}, {"flow_capacity": -5},
    {"timeouts": (1.0, 2.0)}, {"timeouts": (1.0, 2.0, 0.0)}, {"timeouts": (1.0, math.nan, 2.0)},
    {"timeouts": (1.0, -2.0, 3.0, 4.0)},
])
def test_bad_constructor_arguments(twin: ModuleType, kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        twin.Core(1, **kw)


def test_huge_capacity_is_a_memory_error(twin: ModuleType) -> None:
    with pytest.raises(MemoryError):
        twin.Core(1, flow_capacity=1 << 70)
    with pytest.raises(ValueError, match="flow_capacity must be an integer"):
        twin.Core(1, flow_capacity=math.inf)


def test_errors_are_kproxy_errors() -> None:
    assert issubclass(PacketError, KproxyError) and issubclass(PacketError, ValueError)


# --------------------------------------------------------------------------- threads

def test_batches_see_old_or_new_tables_never_a_mix(twin: ModuleType) -> None:
    n, rounds = (4000, 60) if twin is not _engine_py else (150, 12)
    rng = np.random.default_rng(5)
    rows = [(SRC4[i], DST4[j], PORTS[k], 6, int(s)) for i, j, k, s in zip(
        rng.integers(0, len(SRC4), n), rng.integers(0, len(DST4), n), rng.integers(0, 3, n),
        rng.integers(0, 1000, n), strict=True)]
    want = [batch(loaded(twin, v), rows, False, 0.0, 0).tobytes() for v in (0, 1)]
    assert want[0] != want[1]
    core = loaded(twin, 0)
    cols = columns(rows, False)
    errors: list[BaseException] = []
    seen: set[int] = set()
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                out = np.zeros(n, OUT_DTYPE)
                core.lookup_batch(*cols, out, 0.0, 0)
                got = out.tobytes()
                assert got in want, "a batch mixed the old and the new tables"
                seen.add(want.index(got))
                d = core.lookup("10.0.1.20", "10.96.0.10", 80, "TCP", sport=1, now=0.0, track=0)
                assert d.verdict == "DNAT"
        except BaseException as e:  # reported below
            errors.append(e)
            stop.set()

    def writer() -> None:
        try:
            for i in range(rounds):
                core.load(*VARIANTS[(i + 1) % 2], SERVICES)
                tracked = np.zeros(n, OUT_DTYPE)  # a tracking batch between loads, too
                core.lookup_batch(*cols, tracked, float(i), 1)
        except BaseException as e:  # reported below
            errors.append(e)
        finally:
            stop.set()

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert seen  # the readers ran

"""The exact moment a flow expires, and what a packet refreshes (both twins, both families).

The core keeps one stamp per flow: the time of its last packet plus the timeout of its
protocol (``Engine(timeouts=...)``), ``stamp = now + timeout[proto]`` in double precision
(src/kp_core.h ``kp_decide4``/``kp_decide6``, kproxy_core/_engine_py.py ``Core._decide``).
A packet belongs to the flow while ``stamp > now``; a packet at ``now == stamp`` is a new
connection and picks its endpoint afresh.

That is conntrack's rule, which is what keeps a kube-proxy connection on its endpoint (the
DNAT is done once, for the first packet; later packets follow the conntrack entry):
``nf_ct_is_expired()`` in include/net/netfilter/nf_conntrack.h is
``(s32)(ct->timeout - nfct_time_stamp) <= 0``, so an entry whose timeout equals the current
time is already dead, and the next packet goes through the nat table again. Every packet
of a live entry moves its timeout to now + the protocol's timeout (nf_ct_refresh), as
every tracked lookup here moves the stamp.

A tick is the smallest step of the core's clock: ``now`` is a C double, so the step at a
time ``t`` is ``math.nextafter(t, inf) - t``; a test at ``t = 0.1`` shows that the boundary
is the double sum ``now + timeout`` (``0.1 + 0.2`` is not ``0.3``), not the decimal one.

The oracle for "what a new connection would get" is the same engine's lookup with
``track=0`` (the flow table untouched): it is our own code, but only the pick, not the
expiry under test.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from k8s import ep, eport, node, port, service, slice_

import kproxy_core as kp
from kproxy_core.addresses import join_host_port

NODE = "n1"
TIMEOUTS = {"TCP": 100.0, "UDP": 30.0, "SCTP": 0.2}
PORTS = {"TCP": 80, "UDP": 53, "SCTP": 9}
PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}
FAMILIES = {
    "IPv4": {"vip": "10.96.0.10", "ep": "10.0.1.{}", "src": "10.0.0.{}"},
    "IPv6": {"vip": "fd00:96::10", "ep": "fd00:10::{}", "src": "fd00:20::{}"},
}
FIRST = 1  # the endpoint every flow starts on


def _objects(endpoints: list[int]) -> list[dict[str, Any]]:
    """The cluster with the pool ``endpoints`` (host numbers): one Service, a port per protocol."""
    ports = [port(p, proto.lower(), proto) for proto, p in PORTS.items()]
    eports = [eport(8000 + p, proto.lower(), proto) for proto, p in PORTS.items()]
    return [
        node(NODE, "192.168.0.1", "fd00:1::1"),
        service("default", "web", [FAMILIES["IPv4"]["vip"], FAMILIES["IPv6"]["vip"]], ports,
                ipFamilyPolicy="RequireDualStack"),
        slice_("default", "web", [ep(FAMILIES["IPv4"]["ep"].format(i), "n2") for i in endpoints], eports,
               name="web-v4"),
        slice_("default", "web", [ep(FAMILIES["IPv6"]["ep"].format(i), "n2") for i in endpoints], eports,
               name="web-v6", family="IPv6"),
    ]


def _slices(endpoints: list[int]) -> list[dict[str, Any]]:
    return _objects(endpoints)[2:]


JOINED = list(range(1, 9))  # the first endpoint stays, seven join: a new pick is rarely it
REPLACED = [2]  # the first endpoint leaves: a new pick can only be the second


def _endpoint(family: str, proto: str, host: int) -> tuple[str, int]:
    return FAMILIES[family]["ep"].format(host), 8000 + PORTS[proto]


def _after(t: float) -> float:
    return math.nextafter(t, math.inf)


def _before(t: float) -> float:
    return math.nextafter(t, -math.inf)


class Flows:
    """Many flows of one protocol and family to the Service, all made at ``t0`` on the
    first endpoint, then the pool changed to ``pool``; ``fresh`` are those whose new pick
    (track=0, the flow table untouched) is another endpoint."""

    def __init__(self, engine: kp.Engine, family: str, proto: str, t0: float, pool: list[int],
                 refresh_at: float | None = None) -> None:
        self.engine, self.family, self.proto = engine, family, proto
        self.vip, self.dport = FAMILIES[family]["vip"], PORTS[proto]
        self.keys = [(FAMILIES[family]["src"].format(i), 40000 + i) for i in range(1, 41)]
        first = _endpoint(family, proto, FIRST)
        for src, sport in self.keys:
            assert self.lookup(src, sport, t0).endpoint == first
            if refresh_at is not None:
                assert self.lookup(src, sport, refresh_at).endpoint == first
        res = engine.apply(_slices(pool))
        assert res.flows_dropped == 0, "the first endpoint's flows are kept (TCP/SCTP, or UDP to a kept one)"
        self.repick = {k: self.lookup(*k, t0, track=0).endpoint for k in self.keys}
        self.fresh = [k for k in self.keys if self.repick[k] != first]
        assert len(self.fresh) >= 4, self.repick
        self.first = first

    def lookup(self, src: str, sport: int, now: float, track: int = 1) -> Any:
        return self.engine.lookup(src, self.vip, self.dport, self.proto, sport=sport, now=now, track=track)


@pytest.fixture(params=["IPv4", "IPv6"])
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=list(PORTS))
def proto(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=[1000.0, 0.1], ids=["t0=1000", "t0=0.1"])
def t0(request: pytest.FixtureRequest) -> float:
    return float(request.param)


def _engine(make_engine: Callable[..., kp.Engine]) -> kp.Engine:
    return make_engine(_objects([FIRST]), node=NODE, timeouts=TIMEOUTS)


def test_expires_exactly_at_stamp(make_engine: Callable[..., kp.Engine], family: str, proto: str,
                                  t0: float) -> None:
    """A flow made at t0 expires at exactly t0 + timeout[proto], as conntrack's
    nf_ct_is_expired (timeout - now <= 0): one tick before, the packet is the flow's and
    keeps the first endpoint; at the stamp and one tick after, it is a new connection and
    gets the pick a new connection gets in the changed pool."""
    flows = Flows(_engine(make_engine), family, proto, t0, JOINED)
    stamp = t0 + TIMEOUTS[proto]
    before, at, after = flows.fresh[:3]
    assert flows.lookup(*before, _before(stamp)).endpoint == flows.first
    assert flows.lookup(*at, stamp).endpoint == flows.repick[at] != flows.first
    assert flows.lookup(*after, _after(stamp)).endpoint == flows.repick[after] != flows.first


def _column(family: str, addresses: list[str]) -> np.ndarray:
    """Addresses as a batch takes them: uint32 (IPv4) or (n, 16) uint8 rows (IPv6)."""
    if family == "IPv4":
        return np.array([int(ipaddress.IPv4Address(a)) for a in addresses], dtype=np.uint32)
    return np.array([list(ipaddress.IPv6Address(a).packed) for a in addresses], dtype=np.uint8)


def test_expiry_boundary_in_batches(impl: str, family: str, proto: str, t0: float) -> None:
    """The same boundary through ``lookup_batch``/``lookup_batch6``, each packet with its
    own time: one tick before the stamp the flow's endpoint, at it and after it a new pick."""
    engine = kp.Engine(kp.Cluster.from_objects(_objects([FIRST])), node=NODE, timeouts=TIMEOUTS,
                       impl=impl, seed=12345)
    flows = Flows(engine, family, proto, t0, JOINED)
    stamp = t0 + TIMEOUTS[proto]
    keys = flows.fresh[:3]
    n = len(keys)
    batch = engine.lookup_batch if family == "IPv4" else engine.lookup_batch6
    out = batch(
        _column(family, [src for src, _ in keys]), _column(family, [flows.vip] * n),
        np.full(n, PORTS[proto], dtype=np.uint16), np.full(n, PROTO_NUMBERS[proto], dtype=np.uint8),
        np.array([sport for _, sport in keys], dtype=np.uint16),
        now=np.array([_before(stamp), stamp, _after(stamp)]),
    )
    want = [flows.first, flows.repick[keys[1]], flows.repick[keys[2]]]
    assert [row["endpoint"] for row in engine.decode(out)] == [join_host_port(*e) for e in want]
    assert flows.first not in want[1:]


def deselect(params: dict[str, Any]) -> bool:
    """UDP flows to an endpoint that left are dropped at once (kube-proxy's conntrack
    cleanup): the "replaced" pool says nothing about expiry for them."""
    return params.get("change") == "replaced" and params.get("proto") == "UDP"


@pytest.mark.parametrize("change", ["joined", "replaced"])
def test_refreshed_flow_keeps_its_endpoint(make_engine: Callable[..., kp.Engine], family: str, proto: str,
                                           t0: float, change: str) -> None:
    """A packet before expiry refreshes the flow (nf_ct_refresh: timeout = now + the
    protocol's timeout): made at t0, hit again at t1 = t0 + timeout/2, the flow outlives its
    first stamp t0 + timeout and keeps its endpoint, even though the pool changed so that a
    new connection gets another one (with "replaced" the endpoint has even left the pool:
    TCP and SCTP flows keep it, as their conntrack entries do); it expires at exactly
    t1 + timeout, when the packet is picked afresh. A flow that was not hit at t1 is picked
    afresh at t0 + timeout: the test tells a refreshed flow from a re-picked one."""
    timeout = TIMEOUTS[proto]
    t1 = t0 + timeout / 2
    pool = JOINED if change == "joined" else REPLACED
    refreshed = Flows(_engine(make_engine), family, proto, t0, pool, refresh_at=t1)
    stale = Flows(_engine(make_engine), family, proto, t0, pool)
    first_stamp, second_stamp = t0 + timeout, t1 + timeout
    assert first_stamp < second_stamp
    a, b, c, d = refreshed.fresh[:4]
    assert refreshed.lookup(*a, first_stamp).endpoint == refreshed.first
    assert refreshed.lookup(*b, _before(second_stamp)).endpoint == refreshed.first
    assert refreshed.lookup(*c, second_stamp).endpoint == refreshed.repick[c] != refreshed.first
    assert refreshed.lookup(*d, _after(second_stamp)).endpoint == refreshed.repick[d] != refreshed.first
    # the control: without the packet at t1 the flow ends at its first stamp
    s = stale.fresh[0]
    assert stale.lookup(*s, _before(first_stamp)).endpoint == stale.first
    s = stale.fresh[1]
    assert stale.lookup(*s, first_stamp).endpoint == stale.repick[s] != stale.first
    if change == "replaced":
        assert set(refreshed.repick.values()) == {_endpoint(family, proto, 2)}


def test_each_packet_moves_the_stamp(make_engine: Callable[..., kp.Engine], family: str, proto: str) -> None:
    """A flow hit every 0.9 timeouts lives on far past its first stamp, and ends exactly
    one timeout after its last packet."""
    timeout = TIMEOUTS[proto]
    t0 = 1000.0
    hits = [t0 + 0.9 * timeout * k for k in range(1, 6)]
    flows = Flows(_engine(make_engine), family, proto, t0, JOINED)
    a, b = flows.fresh[:2]
    for t in hits:
        assert flows.lookup(*a, t).endpoint == flows.first
        assert flows.lookup(*b, t).endpoint == flows.first
    last = hits[-1] + timeout
    assert flows.lookup(*a, _before(last)).endpoint == flows.first
    assert flows.lookup(*b, last).endpoint == flows.repick[b] != flows.first


def test_read_only_lookups_do_not_refresh(impl: str, family: str) -> None:
    """A trace (track=2: the flow table read, not written) sees the flow while it is alive
    but does not move its stamp; its own boundary is the same ``stamp > now``."""
    engine = kp.Engine(kp.Cluster.from_objects(_objects([FIRST])), node=NODE, timeouts=TIMEOUTS, impl=impl,
                       seed=12345)
    flows = Flows(engine, family, "TCP", 1000.0, JOINED)
    stamp = 1000.0 + TIMEOUTS["TCP"]
    a = flows.fresh[0]
    assert flows.lookup(*a, 1050.0, track=2).endpoint == flows.first
    assert flows.lookup(*a, _before(stamp), track=2).endpoint == flows.first
    assert flows.lookup(*a, stamp, track=2).endpoint == flows.repick[a]
    assert flows.lookup(*a, _before(stamp)).endpoint == flows.first  # still the flow: nothing moved it

"""Differential property tests: the compiled core and the pure-Python twin agree on
random clusters and packets; and every lookup agrees with its own trace (the plan)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from k8s import ep, eport, lb, node, port, service, slice_

import kproxy_core as kp

NODES = [("n1", "192.168.0.1", "fd00:1::1"), ("n2", "192.168.0.2", "fd00:1::2"), ("n3", "192.168.0.3", "fd00:1::3")]
PROTOS = ["TCP", "UDP", "SCTP"]
# loadBalancerSourceRanges: node addresses, pods, external clients (203.0.113.9 in, .200 out)
LB_RANGES = ["192.168.0.0/24", "192.168.0.2/32", "10.0.0.0/8", "203.0.113.0/25", "0.0.0.0/0",
             "fd00:1::/64", "fd00:10::/64", "2001:db8::/64"]


BOTH_MODES = ("iptables", "nftables")
# endpoint selector annotations (kproxy_core.selectors): every kind, per port, and table
# sizes that are fine, below 100 × the endpoints, and below the endpoints (a fallback)
SELECTOR_TEXTS = ["random", "weighted", "round-robin", "source-hash", "maglev", "p0=maglev,p1=round-robin",
                  "p1=source-hash,p2=weighted", "=maglev"]


def selector_annotations(draw: st.DrawFn, i: int) -> dict[str, str]:
    """Random kproxy-core.io/ annotations for service ``s{i}`` (its endpoints' addresses
    are known: see the slices below)."""
    ann: dict[str, str] = {}
    if draw(st.integers(0, 3)):
        ann["kproxy-core.io/selector"] = draw(st.sampled_from(SELECTOR_TEXTS))
    if draw(st.booleans()):
        keys = [f"10.{k % 3}.{i}.{k + 1}" for k in range(4)] + [f"fd00:10::{i}:{k + 1}" for k in range(4)]
        chosen = draw(st.lists(st.sampled_from(keys), max_size=5, unique=True))
        ann["kproxy-core.io/weights"] = ",".join(f"{k}={draw(st.integers(0, 5))}" for k in chosen)
    if draw(st.integers(0, 3)) == 0:
        ann["kproxy-core.io/maglev-table-size"] = draw(st.sampled_from(["3", "7", "251", "1021"]))
    if draw(st.booleans()):
        ann["kproxy-core.io/maglev-seed"] = str(draw(st.integers(0, 2**64 - 1)))
    return ann


@st.composite
def clusters(
    draw: st.DrawFn, modes: tuple[str, ...] = ("iptables",), selectors: bool = False
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A random cluster and Engine options; ``modes``: the proxy modes to draw from
    (test_trace_walk.py's iptables walker needs iptables mode); ``selectors``: give
    services random endpoint selector annotations."""
    objs: list[dict[str, Any]] = []
    for name, ip4, ip6 in NODES:
        o = node(name, ip4, ip6, pod_cidr=f"10.{NODES.index((name, ip4, ip6))}.0.0/24",
                 zone=draw(st.sampled_from(["za", "zb", None])))
        objs.append(o)
    used_np: set[tuple[int, str]] = set()
    for i in range(draw(st.integers(1, 5))):
        dual = draw(st.booleans())
        cips = [f"172.30.0.{i + 1}"] + ([f"fd00:30::{i + 1}"] if dual else [])
        if draw(st.booleans()) and dual:
            cips = cips[::-1]
        typ = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
        # a LoadBalancer may go without node ports (allocateLoadBalancerNodePorts: false)
        with_np = typ == "NodePort" or (typ == "LoadBalancer" and draw(st.booleans()))
        ports = []
        eports = []
        for j in range(draw(st.integers(1, 3))):
            proto = draw(st.sampled_from(PROTOS))
            np_ = 0
            if with_np:
                np_ = draw(st.integers(30000, 30010))
                if (np_, proto) in used_np:
                    np_ = 0
                else:
                    used_np.add((np_, proto))
            p = port(80 + j, f"p{j}", proto, node_port=np_ or None)
            if with_np and not np_:
                p["nodePort"] = 31000 + i * 10 + j
                used_np.add((p["nodePort"], proto))
            ports.append(p)
            if draw(st.integers(0, 4)):
                eports.append(eport(8000 + j, f"p{j}", proto))
        spec: dict[str, Any] = {}
        if typ != "ClusterIP":
            spec["externalTrafficPolicy"] = draw(st.sampled_from(["Cluster", "Local"]))
        if typ == "LoadBalancer":
            if not with_np:
                spec["allocateLoadBalancerNodePorts"] = False
            if draw(st.booleans()):
                spec["loadBalancerSourceRanges"] = draw(st.lists(st.sampled_from(LB_RANGES), min_size=1, max_size=3))
        spec["internalTrafficPolicy"] = draw(st.sampled_from(["Cluster", "Local"]))
        if draw(st.booleans()):
            spec["sessionAffinity"] = "ClientIP"
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": draw(st.integers(1, 50))}}
        if draw(st.integers(0, 3)) == 0:
            spec["externalIPs"] = [f"192.168.99.{i + 1}"]
        svc = service("ns", f"s{i}", cips, ports, type=typ, **spec)
        if selectors:
            svc["metadata"]["annotations"] = selector_annotations(draw, i)
        if typ == "LoadBalancer":
            ingress: list[str | dict[str, Any]] = [
                f"192.168.98.{i + 1}", f"fd00:98::{i + 1}", {"hostname": "lb.example"},
                {"ip": f"192.168.97.{i + 1}", "ipMode": "Proxy"}, "203.0.113.77"]
            lb(svc, *draw(st.lists(st.sampled_from(ingress), max_size=3, unique_by=str)))
        objs.append(svc)
        for fam in ("IPv4", "IPv6"):
            eps = []
            for k in range(draw(st.integers(0, 4))):
                ready = draw(st.booleans())
                ip = f"10.{k % 3}.{i}.{k + 1}" if fam == "IPv4" else f"fd00:10::{i}:{k + 1}"
                eps.append(ep(ip, draw(st.sampled_from(["n1", "n2", "n3", None])), ready=ready,
                              serving=ready or draw(st.booleans()), terminating=not ready and draw(st.booleans()),
                              zone_hints=draw(st.sampled_from([None, ["za"], ["zb"]]))))
            if eps or draw(st.booleans()):
                objs.append(slice_("ns", f"s{i}", eps, eports, name=f"s{i}-{fam.lower()}", family=fam))
    opts = {
        "node": draw(st.sampled_from(["n1", "n2", None])),
        "cluster_cidr": draw(st.sampled_from([None, "10.0.0.0/8", "10.0.0.0/8,fd00:10::/64"])),
        "masquerade_all": draw(st.booleans()),
        "nodeport_addresses": draw(st.sampled_from([None, "192.168.0.0/24", "192.168.0.1/32,127.0.0.0/8"])),
        "mode": draw(st.sampled_from(modes)),
        "service_cidrs": draw(st.sampled_from([None, "172.30.0.0/24,fd00:30::/112"])),
    }
    return objs, opts


def packets(draw: st.DrawFn, objs: list[dict[str, Any]], v6: bool) -> list[tuple[str, str, int, str, int]]:
    addrs: list[str] = []
    ports = [80, 81, 82, 8000, 30000, 30005]
    for o in objs:
        if o["kind"] == "Service":
            addrs += o["spec"].get("clusterIPs", []) + o["spec"].get("externalIPs", [])
            addrs += [i["ip"] for i in o.get("status", {}).get("loadBalancer", {}).get("ingress", []) if "ip" in i]
            ports += [p.get("nodePort", 80) for p in o["spec"]["ports"]]
        elif o["kind"] == "Node":
            addrs += [a["address"] for a in o["status"]["addresses"]]
        elif o["kind"] == "EndpointSlice":
            addrs += [e["addresses"][0] for e in o["endpoints"]]
    addrs += ["127.0.0.1", "127.0.0.9", "203.0.113.9", "203.0.113.200", "10.0.0.7", "::1", "2001:db8::9",
              "fd00:10::77", "172.30.0.99", "fd00:30::99"]
    fam = [a for a in addrs if (":" in a) == v6]
    out = []
    for _ in range(draw(st.integers(1, 30))):
        out.append((draw(st.sampled_from(fam)), draw(st.sampled_from(fam)), draw(st.sampled_from(ports)),
                    draw(st.sampled_from(PROTOS)), draw(st.integers(0, 65535))))
    return out


def _ip_arrays(rows: list[tuple[str, str, int, str, int]], v6: bool) -> tuple[np.ndarray, ...]:
    import ipaddress

    if v6:
        src = np.array([list(ipaddress.ip_address(r[0]).packed) for r in rows], dtype=np.uint8).reshape(-1, 16)
        dst = np.array([list(ipaddress.ip_address(r[1]).packed) for r in rows], dtype=np.uint8).reshape(-1, 16)
    else:
        src = np.array([int(ipaddress.ip_address(r[0])) for r in rows], dtype=np.uint32)
        dst = np.array([int(ipaddress.ip_address(r[1])) for r in rows], dtype=np.uint32)
    dport = np.array([r[2] for r in rows], dtype=np.uint16)
    proto = np.array([{"TCP": 6, "UDP": 17, "SCTP": 132}[r[3]] for r in rows], dtype=np.uint8)
    sport = np.array([r[4] for r in rows], dtype=np.uint16)
    return src, dst, dport, proto, sport


def _same(a: Any, b: Any) -> bool:
    return (a.verdict, a.service, a.frontend, a.endpoint, a.masquerade) == (
        b.verdict, b.service, b.frontend, b.endpoint, b.masquerade)


@pytest.mark.skipif(bool(os.environ.get("KPROXY_NO_EXTENSIONS")), reason="KPROXY_NO_EXTENSIONS is set")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_twins_agree(data: st.DataObject) -> None:
    objs, opts = data.draw(clusters(BOTH_MODES, selectors=True))
    cluster = kp.Cluster.from_objects(objs)
    seed = data.draw(st.integers(0, 2**64 - 1))
    cap = data.draw(st.sampled_from([8, 64, 1 << 12]))
    engines = [kp.Engine(cluster, seed=seed, impl=impl, flow_capacity=cap, affinity_capacity=cap, **opts)
               for impl in ("compiled", "python")]
    now = 0.0
    for _round in range(3):
        v6 = data.draw(st.booleans())
        rows = packets(data.draw, objs, v6)
        for r in rows:
            now += data.draw(st.sampled_from([0.0, 0.5, 20.0, 100.0]))
            a, b = (e.lookup(*r[:4], sport=r[4], now=now) for e in engines)
            assert _same(a, b), (r, a, b)
            ta, tb = (e.trace(*r[:4], sport=r[4], now=now) for e in engines)
            assert ta.to_dict() == tb.to_dict()
        cols = _ip_arrays(rows, v6)
        track = data.draw(st.booleans())  # once for both (it was drawn per engine: round-robin told)
        outs = [(e.lookup_batch6 if v6 else e.lookup_batch)(*cols, now=now, track=track) for e in engines]
        assert outs[0].tobytes() == outs[1].tobytes()
        assert engines[0].flow_count == engines[1].flow_count
        if data.draw(st.booleans()):  # an update between rounds: drop one service's slices
            victim = data.draw(st.sampled_from([o for o in objs if o["kind"] == "Service"]))
            name = victim["metadata"]["name"]
            events = [{"type": "DELETED", "object": o} for o in objs
                      if o["kind"] == "EndpointSlice" and o["metadata"]["labels"]["kubernetes.io/service-name"] == name]
            res = [e.apply(events) for e in engines]
            assert res[0].flows_dropped == res[1].flows_dropped


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_lookup_agrees_with_trace(data: st.DataObject) -> None:
    """Stateless lookups land on a candidate of the trace, with its verdict and masquerade."""
    objs, opts = data.draw(clusters(BOTH_MODES, selectors=True))
    impl = "python" if os.environ.get("KPROXY_NO_EXTENSIONS") else "compiled"  # a missing core fails
    engine = kp.Engine(kp.Cluster.from_objects(objs), seed=data.draw(st.integers(0, 2**32)), impl=impl, **opts)
    for v6 in (False, True):
        for r in packets(data.draw, objs, v6):
            t = engine.trace(*r[:4], sport=r[4], now=0.0)
            d = engine.lookup(*r[:4], sport=r[4], now=0.0)
            assert d.verdict == t.verdict
            assert d.service == t.service
            if d.verdict == "DNAT":
                assert t.endpoint in {c["endpoint"] for c in t.candidates}
                assert abs(sum(c["probability"] for c in t.candidates) - 1.0) < 1e-9
                assert d.masquerade == t.masquerade
            else:
                assert t.candidates == []
            engine.clear_flows()

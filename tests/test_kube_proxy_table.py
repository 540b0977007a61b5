"""KUBE-PROXY.md §8, row by row and override by override, over both twins.

The cluster follows kube-proxy's TestInternalExternalMasquerade (proxier_test.go):
svc1 eTP=Cluster, svc2 eTP=Local, svc3 iTP=Local, each with one endpoint on this node
(10.180.0.x) and one elsewhere (10.180.1.x); the local detector is 10.0.0.0/8.
LoadBalancer frontends arrive with the LoadBalancer plugin; NodePort stands in for them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from k8s import ep, eport, node, port, service, slice_

import kproxy_core as kp

NODE = "test-node"
NODE_IP = "192.168.0.2"
POD = "10.0.0.2"
EXTERNAL = "203.0.113.2"
LOCALHOST = "127.0.0.1"


def masq_cluster() -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = [
        node(NODE, NODE_IP, "192.168.1.2", pod_cidr="10.0.0.0/24"),
        node("other-node", "192.168.0.3", pod_cidr="10.0.1.0/24"),
    ]
    policies = {1: {}, 2: {"externalTrafficPolicy": "Local"}, 3: {"internalTrafficPolicy": "Local"}}
    for i, pol in policies.items():
        objs.append(service("ns1", f"svc{i}", f"172.30.0.4{i}", [port(80, "p80", node_port=3000 + i)],
                            type="NodePort", **pol))
        objs.append(slice_("ns1", f"svc{i}", [ep(f"10.180.0.{i}", NODE), ep(f"10.180.1.{i}", "other-node")],
                           [eport(80, "p80")]))
    return objs


ALL = {1: {"10.180.0.1:80", "10.180.1.1:80"}, 2: {"10.180.0.2:80", "10.180.1.2:80"},
       3: {"10.180.0.3:80", "10.180.1.3:80"}}
LOCAL = {i: {f"10.180.0.{i}:80"} for i in (1, 2, 3)}


def reached(
    engine: kp.Engine, src: str, dst: str, dport: int, proto: str = "TCP"
) -> tuple[set[str], set[bool], set[str]]:
    """Endpoints, masquerade flags and verdicts seen over 64 new connections."""
    eps, masq, verdicts = set(), set(), set()
    for sport in range(40000, 40064):
        d = engine.lookup(src, dst, dport, proto, sport=sport, now=0.0)
        verdicts.add(d.verdict)
        if d.endpoint:
            eps.add(f"{d.endpoint[0]}:{d.endpoint[1]}")
        masq.add(d.masquerade)
    return eps, masq, verdicts


def check(engine: kp.Engine, src: str, dst: str, dport: int, expect: set[str], masq: bool, proto: str = "TCP") -> None:
    t = engine.trace(src, dst, dport, proto, sport=1, now=0.0)
    assert t.verdict == "DNAT", str(t)
    assert {c["endpoint"] for c in t.candidates} == expect, str(t)
    assert t.masquerade is masq, str(t)
    eps, masqs, verdicts = reached(engine, src, dst, dport, proto)
    assert verdicts == {"DNAT"}
    assert eps == expect
    assert masqs == {masq}


# source, destination kind, svc -> (expected endpoints, masquerade)
ROWS = [
    # pod -> ClusterIP
    ("pod", "cip", 1, ALL[1], False), ("pod", "cip", 2, ALL[2], False), ("pod", "cip", 3, LOCAL[3], False),
    # pod -> NodePort
    ("pod", "np", 1, ALL[1], True), ("pod", "np", 2, ALL[2], False), ("pod", "np", 3, ALL[3], True),
    # node -> ClusterIP
    ("node", "cip", 1, ALL[1], True), ("node", "cip", 2, ALL[2], True), ("node", "cip", 3, LOCAL[3], True),
    # node -> NodePort, localhost -> NodePort
    ("node", "np", 1, ALL[1], True), ("node", "np", 2, ALL[2], True), ("node", "np", 3, ALL[3], True),
    ("localhost", "np", 1, ALL[1], True), ("localhost", "np", 2, ALL[2], True),
    ("localhost", "np", 3, ALL[3], True),
    # external -> ClusterIP
    ("external", "cip", 1, ALL[1], True), ("external", "cip", 2, ALL[2], True),
    ("external", "cip", 3, LOCAL[3], True),
    # external -> NodePort
    ("external", "np", 1, ALL[1], True), ("external", "np", 2, LOCAL[2], False),
    ("external", "np", 3, ALL[3], True),
]
SOURCES = {"pod": POD, "node": NODE_IP, "localhost": LOCALHOST, "external": EXTERNAL}


def _dst(kind: str, svc: int, src: str) -> tuple[str, int]:
    if kind == "cip":
        return f"172.30.0.4{svc}", 80
    return (LOCALHOST if src == LOCALHOST else NODE_IP), 3000 + svc


@pytest.mark.parametrize(("source", "kind", "svc", "expect", "masq"), ROWS)
def test_table_row(make_engine: Callable[..., kp.Engine], source: str, kind: str, svc: int,
                   expect: set[str], masq: bool) -> None:
    engine = make_engine(masq_cluster(), node=NODE, cluster_cidr="10.0.0.0/8")
    src = SOURCES[source]
    dst, dport = _dst(kind, svc, src)
    check(engine, src, dst, dport, expect, masq)


@pytest.mark.parametrize("svc", [1, 2, 3])
def test_nodeport_on_every_local_address(make_engine: Callable[..., kp.Engine], svc: int) -> None:
    engine = make_engine(masq_cluster(), node=NODE, cluster_cidr="10.0.0.0/8")
    expect = LOCAL[2] if svc == 2 else ALL[svc]
    check(engine, EXTERNAL, "192.168.1.2", 3000 + svc, expect, svc != 2)


# ---------------------------------------------------------------- overrides


def test_no_local_detector(make_engine: Callable[..., kp.Engine]) -> None:
    engine = make_engine(masq_cluster(), node=NODE)  # no --cluster-cidr
    for src in (NODE_IP, EXTERNAL):
        check(engine, src, "172.30.0.41", 80, ALL[1], False)
    # no pod short-circuit: a pod reaching an eTP=Local NodePort gets only local endpoints
    check(engine, POD, NODE_IP, 3002, LOCAL[2], False)
    # LOCAL sources still take the "route LOCAL" path to every endpoint, masqueraded
    check(engine, NODE_IP, NODE_IP, 3002, ALL[2], True)


def test_node_cidr_detector(make_engine: Callable[..., kp.Engine]) -> None:
    engine = make_engine(masq_cluster(), node=NODE, detect_local_mode="NodeCIDR")
    check(engine, "10.0.0.9", "172.30.0.41", 80, ALL[1], False)  # this node's podCIDR
    check(engine, "10.0.1.9", "172.30.0.41", 80, ALL[1], True)  # another node's pod


def test_masquerade_all(make_engine: Callable[..., kp.Engine]) -> None:
    engine = make_engine(masq_cluster(), node=NODE, cluster_cidr="10.0.0.0/8", masquerade_all=True)
    check(engine, POD, "172.30.0.41", 80, ALL[1], True)
    check(engine, POD, "172.30.0.43", 80, LOCAL[3], True)


def test_hairpin_is_masqueraded(make_engine: Callable[..., kp.Engine]) -> None:
    engine = make_engine(masq_cluster(), node=NODE, cluster_cidr="10.0.0.0/8")
    hits = set()
    for sport in range(1000, 1200):
        d = engine.lookup("10.180.0.1", "172.30.0.41", 80, "TCP", sport=sport, now=0.0)
        hits.add((d.endpoint, d.masquerade))
    assert hits == {(("10.180.0.1", 80), True), (("10.180.1.1", 80), False)}
    t = next(
        t for t in (engine.trace("10.180.0.1", "172.30.0.41", 80, sport=s, now=0.0) for s in range(1000, 1200))
        if t.endpoint == "10.180.0.1:80"
    )
    assert t.masquerade and t.chains[-1] == "KUBE-MARK-MASQ" and t.chains[-2].startswith("KUBE-SEP-")


def test_nodeport_addresses(make_engine: Callable[..., kp.Engine]) -> None:
    engine = make_engine(masq_cluster(), node=NODE, cluster_cidr="10.0.0.0/8",
                         nodeport_addresses="192.168.0.0/24")
    check(engine, EXTERNAL, NODE_IP, 3001, ALL[1], True)
    # the node's other address is outside --nodeport-addresses: not a NodePort (it has endpoints)
    assert engine.lookup(EXTERNAL, "192.168.1.2", 3001, "TCP", sport=5, now=0.0).verdict == "PASS"
    # localhost NodePorts are off unless the CIDRs include 127.0.0.0/8
    assert engine.lookup(LOCALHOST, LOCALHOST, 3001, "TCP", sport=5, now=0.0).verdict == "PASS"
    engine = make_engine(masq_cluster(), node=NODE, cluster_cidr="10.0.0.0/8",
                         nodeport_addresses=["192.168.0.0/24", "127.0.0.0/8"])
    check(engine, LOCALHOST, LOCALHOST, 3001, ALL[1], True)


def test_localhost_nodeports_flag(make_engine: Callable[..., kp.Engine]) -> None:
    engine = make_engine(masq_cluster(), node=NODE, cluster_cidr="10.0.0.0/8", localhost_nodeports=False)
    assert engine.lookup(LOCALHOST, LOCALHOST, 3001, "TCP", sport=5, now=0.0).verdict == "PASS"
    assert engine.lookup(LOCALHOST, "127.0.0.5", 3001, "TCP", sport=5, now=0.0).verdict == "PASS"
    check(engine, EXTERNAL, NODE_IP, 3001, ALL[1], True)


def test_localhost_nodeport_any_loopback_address(make_engine: Callable[..., kp.Engine]) -> None:
    engine = make_engine(masq_cluster(), node=NODE, cluster_cidr="10.0.0.0/8")
    check(engine, "127.0.0.1", "127.0.0.5", 3001, ALL[1], True)


def no_endpoint_cluster(**pol: Any) -> list[dict[str, Any]]:
    return [
        node(NODE, NODE_IP),
        node("other-node", "192.168.0.3"),
        service("ns1", "svc1", "172.30.0.41", [port(80, "p80", node_port=3001)], type="NodePort",
                externalIPs=["192.168.99.33"], **pol),
    ]


@pytest.mark.parametrize("src", [POD, NODE_IP, EXTERNAL, "10.180.0.1"])
def test_no_endpoints_reject(make_engine: Callable[..., kp.Engine], src: str) -> None:
    engine = make_engine(no_endpoint_cluster(), node=NODE, cluster_cidr="10.0.0.0/8")
    for dst, dport, fe in (("172.30.0.41", 80, "ClusterIP"), ("192.168.99.33", 80, "ExternalIP"),
                           (NODE_IP, 3001, "NodePort")):
        d = engine.lookup(src, dst, dport, "TCP", sport=7, now=0.0)
        if src == NODE_IP and fe == "ExternalIP":
            # the kernel disagrees with "from any source": the node's own packet to a
            # non-local external IP skips KUBE-EXTERNAL-SERVICES (INPUT/FORWARD only)
            assert d.verdict == "PASS"
            continue
        assert (d.verdict, d.service, d.frontend) == ("REJECT", "ns1/svc1:p80", fe)
        t = engine.trace(src, dst, dport, "TCP", sport=7, now=0.0)
        assert t.verdict == "REJECT" and t.candidates == []
        assert t.chains[-1] in ("filter:KUBE-SERVICES", "filter:KUBE-EXTERNAL-SERVICES")


def test_internal_local_without_local_endpoints_drops(make_engine: Callable[..., kp.Engine]) -> None:
    objs = no_endpoint_cluster(internalTrafficPolicy="Local")
    objs.append(slice_("ns1", "svc1", [ep("10.180.1.1", "other-node")], [eport(80, "p80")]))
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    assert engine.lookup(POD, "172.30.0.41", 80, "TCP", sport=7, now=0.0).verdict == "DROP"
    # external frontends still use every endpoint
    check(engine, EXTERNAL, NODE_IP, 3001, {"10.180.1.1:80"}, True)


def test_external_local_without_local_endpoints(make_engine: Callable[..., kp.Engine]) -> None:
    objs = no_endpoint_cluster(externalTrafficPolicy="Local")
    objs.append(slice_("ns1", "svc1", [ep("10.180.1.1", "other-node")], [eport(80, "p80")]))
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    for dst, dport in ((NODE_IP, 3001), ("192.168.99.33", 80)):
        assert engine.lookup(EXTERNAL, dst, dport, "TCP", sport=7, now=0.0).verdict == "DROP"
        check(engine, POD, dst, dport, {"10.180.1.1:80"}, False)  # pod short-circuit
        check(engine, NODE_IP, dst, dport, {"10.180.1.1:80"}, True)  # route LOCAL
    check(engine, EXTERNAL, "172.30.0.41", 80, {"10.180.1.1:80"}, True)


@pytest.mark.parametrize("proto", ["UDP", "SCTP"])
def test_udp_sctp_same_shapes(make_engine: Callable[..., kp.Engine], proto: str) -> None:
    objs = [
        node(NODE, NODE_IP),
        service("ns1", "svc1", "172.30.0.41", [port(53, "dns-tcp", "TCP"), port(53, "dns", proto, node_port=3053)],
                type="NodePort"),
        slice_("ns1", "svc1", [ep("10.180.0.1", NODE)], [eport(5353, "dns", proto)]),
    ]
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    check(engine, POD, "172.30.0.41", 53, {"10.180.0.1:5353"}, False, proto)
    check(engine, EXTERNAL, NODE_IP, 3053, {"10.180.0.1:5353"}, True, proto)
    # the same port number over TCP is an independent service port with no endpoints
    d = engine.lookup(POD, "172.30.0.41", 53, "TCP", sport=9, now=0.0)
    assert (d.verdict, d.service) == ("REJECT", "ns1/svc1:dns-tcp")


def test_terminating_fallback(make_engine: Callable[..., kp.Engine]) -> None:
    """TestTerminatingEndpointsTrafficPolicyLocal/Cluster, condensed."""
    objs = [
        node(NODE, NODE_IP),
        node("other-node", "192.168.0.3"),
        service("ns1", "svc1", "172.30.0.41", [port(80, "p80", node_port=3001)], type="NodePort",
                externalTrafficPolicy="Local"),
        slice_("ns1", "svc1", [
            ep("10.0.1.1", "other-node"),  # remote, ready
            ep("10.0.1.2", NODE, ready=False, serving=True, terminating=True),  # local, serving
            ep("10.0.1.3", NODE, ready=False, serving=False, terminating=True),  # local, not serving
        ], [eport(80, "p80")]),
    ]
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    check(engine, EXTERNAL, NODE_IP, 3001, {"10.0.1.2:80"}, False)  # local falls back to serving
    check(engine, POD, "172.30.0.41", 80, {"10.0.1.1:80"}, False)  # cluster keeps the ready one
    t = engine.trace(EXTERNAL, NODE_IP, 3001, sport=3, now=0.0)
    reasons = {f["endpoint"]: f["reason"] for f in t.filtered}
    assert "10.0.1.3:80" in reasons and "not serving" in reasons["10.0.1.3:80"]


def test_remote_serving_terminating_prevents_reject(make_engine: Callable[..., kp.Engine]) -> None:
    objs = [
        node(NODE, NODE_IP),
        node("other-node", "192.168.0.3"),
        service("ns1", "svc1", "172.30.0.41", [port(80, "p80", node_port=3001)], type="NodePort",
                externalTrafficPolicy="Local"),
        slice_("ns1", "svc1", [ep("10.0.1.1", "other-node", ready=False, serving=True, terminating=True)],
               [eport(80, "p80")]),
    ]
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    assert engine.lookup(EXTERNAL, NODE_IP, 3001, "TCP", sport=5, now=0.0).verdict == "DROP"
    check(engine, POD, "172.30.0.41", 80, {"10.0.1.1:80"}, False)


def test_no_serving_endpoint_rejects(make_engine: Callable[..., kp.Engine]) -> None:
    objs = [
        node(NODE, NODE_IP),
        service("ns1", "svc1", "172.30.0.41", [port(80, "p80")]),
        slice_("ns1", "svc1", [ep("10.0.1.1", NODE, ready=False, serving=False, terminating=True)],
               [eport(80, "p80")]),
    ]
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    assert engine.lookup(POD, "172.30.0.41", 80, "TCP", sport=5, now=0.0).verdict == "REJECT"


def test_topology_hints(make_engine: Callable[..., kp.Engine]) -> None:
    objs = [
        node(NODE, NODE_IP, zone="zone-a"),
        node("other-node", "192.168.0.3", zone="zone-b"),
        service("ns1", "svc1", "172.30.0.41", [port(80, "p80")]),
        slice_("ns1", "svc1", [ep("10.0.1.1", NODE, zone_hints=["zone-a"]),
                               ep("10.0.1.2", "other-node", zone_hints=["zone-b"])], [eport(80, "p80")]),
    ]
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    check(engine, POD, "172.30.0.41", 80, {"10.0.1.1:80"}, False)
    t = engine.trace(POD, "172.30.0.41", 80, sport=1, now=0.0)
    assert any("topology" in f["reason"] for f in t.filtered)
    # one endpoint without hints: hints are ignored
    objs[-1]["endpoints"].append(ep("10.0.1.3", "other-node"))
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    check(engine, POD, "172.30.0.41", 80, {"10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"}, False)


def test_prefer_same_node_hints(make_engine: Callable[..., kp.Engine]) -> None:
    objs = [
        node(NODE, NODE_IP, zone="zone-a"),
        node("other-node", "192.168.0.3", zone="zone-a"),
        service("ns1", "svc1", "172.30.0.41", [port(80, "p80")]),
        slice_("ns1", "svc1", [ep("10.0.1.1", NODE, zone_hints=["zone-a"], node_hints=[NODE]),
                               ep("10.0.1.2", "other-node", zone_hints=["zone-a"], node_hints=["other-node"])],
               [eport(80, "p80")]),
    ]
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    check(engine, POD, "172.30.0.41", 80, {"10.0.1.1:80"}, False)


def test_endpoint_order_probabilities_and_chain_names(make_engine: Callable[..., kp.Engine]) -> None:
    objs = [
        node(NODE, NODE_IP),
        service("ns1", "svc1", "172.30.0.41", [port(80, "p80")]),
        slice_("ns1", "svc1", [ep("10.180.0.2"), ep("10.180.0.10"), ep("10.180.0.1")], [eport(80, "p80")]),
    ]
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    t = engine.trace(POD, "172.30.0.41", 80, sport=1, now=0.0)
    # sorted as strings: '0' < ':' puts 10.180.0.10:80 before 10.180.0.1:80
    assert [c["endpoint"] for c in t.candidates] == ["10.180.0.10:80", "10.180.0.1:80", "10.180.0.2:80"]
    assert [c["rule_probability"] for c in t.candidates] == ["0.3333333333", "0.5000000000", None]
    assert t.chains[:2] == ["KUBE-SERVICES", "KUBE-SVC-XPGD46QRK7WJZT7O"]
    sep = {c["endpoint"]: c["chain"] for c in t.candidates}
    assert sep["10.180.0.1:80"] == "KUBE-SEP-SXIVWICOYRO3J4NJ"


def test_session_affinity(make_engine: Callable[..., kp.Engine]) -> None:
    objs = [
        node(NODE, NODE_IP),
        service("ns1", "svc1", "172.30.0.41", [port(80, "p80")], sessionAffinity="ClientIP",
                sessionAffinityConfig={"clientIP": {"timeoutSeconds": 100}}),
        slice_("ns1", "svc1", [ep(f"10.180.0.{i}") for i in range(1, 9)], [eport(80, "p80")]),
    ]
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    clients = [f"10.1.0.{i}" for i in range(1, 21)]
    first = {c: engine.lookup(c, "172.30.0.41", 80, "TCP", sport=1000, now=0.0).endpoint for c in clients}
    # new connections within the timeout stick to the endpoint
    for i, c in enumerate(clients):
        for sport in range(2000, 2010):
            assert engine.lookup(c, "172.30.0.41", 80, "TCP", sport=sport, now=50.0 + i).endpoint == first[c]
    # each new connection refreshes the entry: 100 s after the last one it still holds
    assert engine.lookup(clients[0], "172.30.0.41", 80, "TCP", sport=3000, now=150.0).endpoint == first[clients[0]]
    # after the timeout, clients are picked afresh: with 8 endpoints some of 20 clients move
    later = {c: engine.lookup(c, "172.30.0.41", 80, "TCP", sport=5000, now=10_000.0).endpoint for c in clients}
    assert later != first
    assert len(set(first.values())) > 1


def test_default_affinity_timeout(make_engine: Callable[..., kp.Engine]) -> None:
    objs = [
        node(NODE, NODE_IP),
        service("ns1", "svc1", "172.30.0.41", [port(80, "p80")], sessionAffinity="ClientIP"),
        slice_("ns1", "svc1", [ep(f"10.180.0.{i}") for i in range(1, 9)], [eport(80, "p80")]),
    ]
    engine = make_engine(objs, node=NODE)
    assert engine.plans["IPv4"].ports[0].affinity_timeout == 10800
    first = engine.lookup("10.1.0.1", "172.30.0.41", 80, "TCP", sport=1, now=0.0).endpoint
    assert all(engine.lookup("10.1.0.1", "172.30.0.41", 80, "TCP", sport=s, now=10800.0).endpoint == first
               for s in range(2, 30))

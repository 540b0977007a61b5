"""LoadBalancer VIPs and loadBalancerSourceRanges (KUBE-PROXY.md §3.1, §5, §6.3 steps 3,
4 and 9, §8), over both twins.

The §8 rows use TestInternalExternalMasquerade's services (svc1 eTP=Cluster, svc2
eTP=Local, svc3 iTP=Local, one endpoint on this node and one elsewhere) as type
LoadBalancer; the source-range cases follow TestLoadBalancer (proxier_test.go).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from k8s import ep, eport, lb, node, port, service, slice_

import kproxy_core as kp
from kproxy_core import _engine_py
from kproxy_core.addresses import join_host_port
from kproxy_core.engine import OUT_DTYPE
from kproxy_core.plan import build_plan, fw_allows, fw_sources, make_config
from kproxy_core.tables import FamilyTables, build_tables

NODE = "test-node"
NODE_IP = "192.168.0.2"
POD = "10.0.0.2"
EXTERNAL = "203.0.113.2"
BLOCKED = "203.0.113.130"  # outside 203.0.113.0/25
LOCALHOST = "127.0.0.1"


def reached(
    engine: kp.Engine, src: str, dst: str, dport: int, proto: str = "TCP"
) -> tuple[set[str], set[bool], set[str]]:
    """Endpoints, masquerade flags and verdicts seen over 64 new connections."""
    eps, masq, verdicts = set(), set(), set()
    for sport in range(40000, 40064):
        d = engine.lookup(src, dst, dport, proto, sport=sport, now=0.0)
        verdicts.add(d.verdict)
        if d.endpoint:
            eps.add(join_host_port(*d.endpoint))
        masq.add(d.masquerade)
    return eps, masq, verdicts


def check(engine: kp.Engine, src: str, dst: str, dport: int, expect: set[str], masq: bool,
          frontend: str = "LoadBalancer") -> None:
    t = engine.trace(src, dst, dport, "TCP", sport=1, now=0.0)
    assert t.verdict == "DNAT", str(t)
    assert t.frontend == frontend, str(t)
    assert {c["endpoint"] for c in t.candidates} == expect, str(t)
    assert t.masquerade is masq, str(t)
    eps, masqs, verdicts = reached(engine, src, dst, dport)
    assert verdicts == {"DNAT"}
    assert eps == expect
    assert masqs == {masq}


def refused(engine: kp.Engine, src: str, dst: str, dport: int, verdict: str,
            frontend: str = "LoadBalancer", last_chain: str | None = None) -> None:
    for sport in (1, 2, 3):
        d = engine.lookup(src, dst, dport, "TCP", sport=sport, now=0.0)
        assert (d.verdict, d.frontend, d.endpoint, d.masquerade) == (verdict, frontend, None, False)
    t = engine.trace(src, dst, dport, "TCP", sport=1, now=0.0)
    assert t.verdict == verdict and t.candidates == [] and t.frontend == frontend, str(t)
    if last_chain:
        assert t.chains[-1] == last_chain, str(t)


# --------------------------------------------------------------------------- §8 rows

LB_IP = {1: "9.10.11.1", 2: "9.10.11.2", 3: "9.10.11.3"}


def masq_cluster(**extra: Any) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = [
        node(NODE, NODE_IP, "192.168.1.2", pod_cidr="10.0.0.0/24"),
        node("other-node", "192.168.0.3", pod_cidr="10.0.1.0/24"),
    ]
    policies = {1: {}, 2: {"externalTrafficPolicy": "Local"}, 3: {"internalTrafficPolicy": "Local"}}
    for i, pol in policies.items():
        objs.append(lb(service("ns1", f"svc{i}", f"172.30.0.4{i}", [port(80, "p80", node_port=3000 + i)],
                               type="LoadBalancer", **pol, **extra), LB_IP[i]))
        objs.append(slice_("ns1", f"svc{i}", [ep(f"10.180.0.{i}", NODE), ep(f"10.180.1.{i}", "other-node")],
                           [eport(80, "p80")]))
    return objs


ALL = {i: {f"10.180.0.{i}:80", f"10.180.1.{i}:80"} for i in (1, 2, 3)}
LOCAL = {i: {f"10.180.0.{i}:80"} for i in (1, 2, 3)}
SOURCES = {"pod": POD, "node": NODE_IP, "localhost": LOCALHOST, "external": EXTERNAL}

# source, destination kind, svc -> expected endpoints, masquerade (KUBE-PROXY.md §8)
ROWS = [
    ("pod", "cip", 1, ALL[1], False), ("pod", "cip", 2, ALL[2], False), ("pod", "cip", 3, LOCAL[3], False),
    ("pod", "np", 1, ALL[1], True), ("pod", "np", 2, ALL[2], False), ("pod", "np", 3, ALL[3], True),
    ("pod", "lb", 1, ALL[1], True), ("pod", "lb", 2, ALL[2], False), ("pod", "lb", 3, ALL[3], True),
    ("node", "cip", 1, ALL[1], True), ("node", "cip", 2, ALL[2], True), ("node", "cip", 3, LOCAL[3], True),
    ("node", "np", 1, ALL[1], True), ("node", "np", 2, ALL[2], True), ("node", "np", 3, ALL[3], True),
    ("node", "lb", 1, ALL[1], True), ("node", "lb", 2, ALL[2], True), ("node", "lb", 3, ALL[3], True),
    ("localhost", "np", 1, ALL[1], True), ("localhost", "np", 2, ALL[2], True),
    ("localhost", "np", 3, ALL[3], True),
    ("external", "cip", 1, ALL[1], True), ("external", "cip", 2, ALL[2], True),
    ("external", "cip", 3, LOCAL[3], True),
    ("external", "np", 1, ALL[1], True), ("external", "np", 2, LOCAL[2], False),
    ("external", "np", 3, ALL[3], True),
    ("external", "lb", 1, ALL[1], True), ("external", "lb", 2, LOCAL[2], False),
    ("external", "lb", 3, ALL[3], True),
]
KIND = {"cip": "ClusterIP", "np": "NodePort", "lb": "LoadBalancer"}


def _dst(kind: str, svc: int, src: str) -> tuple[str, int]:
    if kind == "cip":
        return f"172.30.0.4{svc}", 80
    if kind == "lb":
        return LB_IP[svc], 80
    return (LOCALHOST if src == LOCALHOST else NODE_IP), 3000 + svc


@pytest.mark.parametrize(("source", "kind", "svc", "expect", "masq"), ROWS)
def test_table_row(make_engine: Callable[..., kp.Engine], source: str, kind: str, svc: int,
                   expect: set[str], masq: bool) -> None:
    engine = make_engine(masq_cluster(), node=NODE, cluster_cidr="10.0.0.0/8")
    src = SOURCES[source]
    dst, dport = _dst(kind, svc, src)
    check(engine, src, dst, dport, expect, masq, KIND[kind])


def test_lb_chain_path(make_engine: Callable[..., kp.Engine]) -> None:
    engine = make_engine(masq_cluster(), node=NODE, cluster_cidr="10.0.0.0/8")
    pp = next(p for p in engine.plans["IPv4"].ports if p.service == "svc2")
    assert pp.lb_ips == ("9.10.11.2",) and not pp.uses_fw_chain
    t = engine.trace(EXTERNAL, "9.10.11.2", 80, sport=1, now=0.0)
    assert t.chains[:3] == ["KUBE-SERVICES", pp.ext_chain, pp.svl_chain]
    t = engine.trace(POD, "9.10.11.2", 80, sport=1, now=0.0)
    assert t.chains[:3] == ["KUBE-SERVICES", pp.ext_chain, pp.svc_chain]


def test_lb_without_local_detector(make_engine: Callable[..., kp.Engine]) -> None:
    """No pod short-circuit: a pod reaching an eTP=Local LB gets local endpoints only."""
    engine = make_engine(masq_cluster(), node=NODE)
    check(engine, POD, LB_IP[2], 80, LOCAL[2], False)
    check(engine, NODE_IP, LB_IP[2], 80, ALL[2], True)


# --------------------------------------------------------------------------- source ranges

LB1, LB2 = "1.2.3.4", "5.6.7.8"
EP = {"10.180.0.1:80"}


def ranges_cluster(ranges: list[str], node_ips: tuple[str, ...] = (NODE_IP, "192.168.1.2"),
                   **spec: Any) -> list[dict[str, Any]]:
    """TestLoadBalancer: one LB service, two VIPs, an endpoint without a node."""
    spec.setdefault("loadBalancerSourceRanges", ranges)
    return [
        node(NODE, *node_ips),
        lb(service("ns1", "svc1", "172.30.0.41", [port(80, "p80", node_port=3001)], type="LoadBalancer",
                   **spec), LB1, LB2),
        slice_("ns1", "svc1", [ep("10.180.0.1")], [eport(80, "p80")]),
    ]


TEST_LOAD_BALANCER_RANGES = ["192.168.0.0/24", " 203.0.113.0/25"]


def test_load_balancer_source_ranges(make_engine: Callable[..., kp.Engine]) -> None:
    """TestLoadBalancer's packet flows, one by one."""
    engine = make_engine(ranges_cluster(TEST_LOAD_BALANCER_RANGES), node=NODE, cluster_cidr="10.0.0.0/8")
    check(engine, POD, "172.30.0.41", 80, EP, False, "ClusterIP")
    check(engine, EXTERNAL, NODE_IP, 3001, EP, True, "NodePort")
    check(engine, BLOCKED, NODE_IP, 3001, EP, True, "NodePort")  # NodePort ignores the ranges
    for vip in (LB1, LB2):
        check(engine, EXTERNAL, vip, 80, EP, True)
        refused(engine, BLOCKED, vip, 80, "DROP", last_chain="filter:KUBE-PROXY-FIREWALL")
        refused(engine, POD, vip, 80, "DROP", last_chain="filter:KUBE-PROXY-FIREWALL")
        check(engine, NODE_IP, vip, 80, EP, True)  # 192.168.0.0/24 contains the node IP
        check(engine, vip, vip, 80, EP, True)  # so the VIP as a source is allowed too
    check(engine, LB1, LB2, 80, EP, True)  # either VIP, to either VIP
    t = engine.trace(EXTERNAL, LB1, 80, sport=1, now=0.0)
    pp = engine.plans["IPv4"].ports[0]
    assert pp.uses_fw_chain and pp.source_ranges == ("192.168.0.0/24", "203.0.113.0/25")
    assert t.chains[:3] == ["KUBE-SERVICES", pp.fw_chain, pp.ext_chain]
    t = engine.trace(BLOCKED, LB1, 80, sport=1, now=0.0)
    assert t.chains == ["KUBE-SERVICES", pp.fw_chain, "filter:KUBE-PROXY-FIREWALL"]
    assert any("outside" in s and "KUBE-FW" in s for s in t.steps), str(t)


def test_node_ip_outside_the_ranges(make_engine: Callable[..., kp.Engine]) -> None:
    engine = make_engine(ranges_cluster(["203.0.113.0/25"]), node=NODE, cluster_cidr="10.0.0.0/8")
    check(engine, EXTERNAL, LB1, 80, EP, True)
    refused(engine, NODE_IP, LB1, 80, "DROP")
    refused(engine, LB1, LB1, 80, "DROP")  # no allowFromNode: the VIP is not a source
    refused(engine, "192.168.1.2", LB1, 80, "DROP")
    assert fw_sources(engine.plans["IPv4"].ports[0], engine.configs["IPv4"]) == ("203.0.113.0/25",)


def test_only_the_first_node_ip_counts(make_engine: Callable[..., kp.Engine]) -> None:
    """kube-proxy's nodeIP is one address: a range containing only the node's second
    address allows that address as a source, but not the VIPs."""
    engine = make_engine(ranges_cluster(["192.168.1.0/24"]), node=NODE, cluster_cidr="10.0.0.0/8")
    check(engine, "192.168.1.2", LB1, 80, EP, True)
    refused(engine, NODE_IP, LB1, 80, "DROP")
    refused(engine, LB1, LB1, 80, "DROP")


def test_off_cluster_observer_has_no_node_ip(make_engine: Callable[..., kp.Engine]) -> None:
    engine = make_engine(ranges_cluster(TEST_LOAD_BALANCER_RANGES), node=None)
    check(engine, NODE_IP, LB1, 80, EP, True)  # inside 192.168.0.0/24
    refused(engine, LB1, LB1, 80, "DROP")


def test_a_range_of_everything_allows_everyone(make_engine: Callable[..., kp.Engine]) -> None:
    engine = make_engine(ranges_cluster(["0.0.0.0/0"]), node=NODE, cluster_cidr="10.0.0.0/8")
    for src in (EXTERNAL, BLOCKED, POD, NODE_IP, LB1):
        check(engine, src, LB1, 80, EP, True)


def test_ranges_of_the_other_family_do_not_make_a_fw_chain(make_engine: Callable[..., kp.Engine]) -> None:
    engine = make_engine(ranges_cluster(["2001:db8::/64"]), node=NODE, cluster_cidr="10.0.0.0/8")
    assert not engine.plans["IPv4"].ports[0].uses_fw_chain
    for src in (EXTERNAL, BLOCKED, POD):
        check(engine, src, LB1, 80, EP, True)


def test_fw_with_external_local(make_engine: Callable[..., kp.Engine]) -> None:
    """KUBE-FW comes before the eTP=Local short-circuits: a pod outside the ranges is
    dropped, one inside them is short-circuited to every endpoint."""
    objs = masq_cluster(loadBalancerSourceRanges=["10.0.0.0/30", "203.0.113.0/25"])
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    check(engine, POD, LB_IP[2], 80, ALL[2], False)  # 10.0.0.2 is in 10.0.0.0/30
    refused(engine, "10.0.0.9", LB_IP[2], 80, "DROP")
    check(engine, EXTERNAL, LB_IP[2], 80, LOCAL[2], False)
    refused(engine, NODE_IP, LB_IP[2], 80, "DROP")
    check(engine, "10.0.0.9", NODE_IP, 3002, ALL[2], False, "NodePort")  # NodePort: no ranges
    check(engine, "10.0.0.9", "172.30.0.42", 80, ALL[2], False, "ClusterIP")


def test_external_ips_ignore_the_ranges(make_engine: Callable[..., kp.Engine]) -> None:
    objs = ranges_cluster(["203.0.113.0/25"], externalIPs=["192.168.99.33"])
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    check(engine, BLOCKED, "192.168.99.33", 80, EP, True, "ExternalIP")
    refused(engine, BLOCKED, LB1, 80, "DROP")


def test_established_flow_survives_a_range_change(make_engine: Callable[..., kp.Engine]) -> None:
    """A flow created while allowed keeps its endpoint (conntrack); new ones are dropped."""
    objs = ranges_cluster(["203.0.113.0/24"])
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    first = engine.lookup(BLOCKED, LB1, 80, "TCP", sport=5, now=0.0)
    assert first.verdict == "DNAT"
    changed = ranges_cluster(["203.0.113.0/25"])
    result = engine.apply([changed[1]])
    assert result.flows_dropped == 0
    assert engine.lookup(BLOCKED, LB1, 80, "TCP", sport=5, now=1.0) == first
    assert engine.lookup(BLOCKED, LB1, 80, "TCP", sport=6, now=1.0).verdict == "DROP"
    assert engine.trace(BLOCKED, LB1, 80, "TCP", sport=5, now=1.0).verdict == "DNAT"


def test_batches_agree_with_lookups(make_engine: Callable[..., kp.Engine]) -> None:
    engine = make_engine(ranges_cluster(TEST_LOAD_BALANCER_RANGES), node=NODE, cluster_cidr="10.0.0.0/8")
    rows = [(s, d) for s in (EXTERNAL, BLOCKED, POD, NODE_IP, LB1, LB2, "192.168.1.2")
            for d in (LB1, LB2)]
    src = np.array([int(ipaddress.ip_address(r[0])) for r in rows], np.uint32)
    dst = np.array([int(ipaddress.ip_address(r[1])) for r in rows], np.uint32)
    out = engine.lookup_batch(src, dst, np.full(len(rows), 80, np.uint16), np.full(len(rows), 6, np.uint8),
                              np.full(len(rows), 9, np.uint16), now=0.0, track=False)
    got = [(r["verdict"], r["frontend"], r["masquerade"]) for r in engine.decode(out)]
    want = []
    for s, d in rows:
        dec = engine.lookup(s, d, 80, "TCP", sport=9, now=0.0, track=0)
        want.append((dec.verdict, dec.frontend, dec.masquerade))
    assert got == want
    # BLOCKED, POD and the node's second address (outside 192.168.0.0/24), to either VIP
    assert [w[0] for w in want].count("DROP") == 6


# --------------------------------------------------------------------------- which VIPs

def test_hostname_only_and_proxy_mode_ingress_are_skipped(make_engine: Callable[..., kp.Engine]) -> None:
    svc = lb(service("ns1", "svc1", "172.30.0.41", [port(80, "p80", node_port=3001)], type="LoadBalancer",
                     loadBalancerSourceRanges=["203.0.113.0/25"]),
             {"hostname": "lb.example.com"}, {"ip": "1.2.3.5", "ipMode": "Proxy"},
             {"ip": "1.2.3.6", "ipMode": "VIP"}, LB1, "2001:db8:99::1")
    objs = [node(NODE, NODE_IP), svc, slice_("ns1", "svc1", [ep("10.180.0.1")], [eport(80, "p80")])]
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    assert engine.plans["IPv4"].ports[0].lb_ips == ("1.2.3.6", LB1)  # order kept, family filtered
    assert engine.plans["IPv6"].ports == ()  # no IPv6 clusterIP: the service is not in that proxier
    assert engine.lookup(EXTERNAL, "1.2.3.5", 80, "TCP", sport=1, now=0.0).verdict == "PASS"
    check(engine, EXTERNAL, "1.2.3.6", 80, EP, True)
    check(engine, EXTERNAL, LB1, 80, EP, True)
    refused(engine, BLOCKED, "1.2.3.6", 80, "DROP")


def test_only_skipped_ingress_means_not_externally_accessible(make_engine: Callable[..., kp.Engine]) -> None:
    """No VIP and no nodePort: iTP=Local then applies to every endpoint pool."""
    svc = lb(service("ns1", "svc1", "172.30.0.41", [port(80, "p80")], type="LoadBalancer",
                     allocateLoadBalancerNodePorts=False, internalTrafficPolicy="Local"),
             {"hostname": "lb.example.com"}, {"ip": "1.2.3.5", "ipMode": "Proxy"})
    objs = [node(NODE, NODE_IP), node("other-node", "192.168.0.3"), svc,
            slice_("ns1", "svc1", [ep("10.180.0.1", NODE), ep("10.180.1.1", "other-node")], [eport(80, "p80")])]
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    pp = engine.plans["IPv4"].ports[0]
    assert pp.lb_ips == () and not pp.externally_accessible and pp.cluster == ()
    check(engine, POD, "172.30.0.41", 80, {"10.180.0.1:80"}, False, "ClusterIP")
    # with a VIP the port is externally accessible and uses cluster endpoints too
    lb(svc, "1.2.3.4")
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    check(engine, EXTERNAL, LB1, 80, {"10.180.0.1:80", "10.180.1.1:80"}, True)
    check(engine, POD, "172.30.0.41", 80, {"10.180.0.1:80"}, False, "ClusterIP")


def test_status_on_a_non_lb_service_is_ignored(make_engine: Callable[..., kp.Engine]) -> None:
    svc = lb(service("ns1", "svc1", "172.30.0.41", [port(80, "p80", node_port=3001)], type="NodePort"), LB1)
    objs = [node(NODE, NODE_IP), svc, slice_("ns1", "svc1", [ep("10.180.0.1")], [eport(80, "p80")])]
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    assert engine.plans["IPv4"].ports[0].lb_ips == ()
    assert engine.lookup(EXTERNAL, LB1, 80, "TCP", sport=1, now=0.0).verdict == "PASS"


def test_ipv6_load_balancer(make_engine: Callable[..., kp.Engine]) -> None:
    v6_node = "2001:db8::1"
    svc = lb(service("ns1", "svc1", ["172.30.0.41", "fd00:172:30::41"], [port(80, "p80", node_port=3001)],
                     type="LoadBalancer",
                     loadBalancerSourceRanges=["2001:db8::/64", "2600:5200::/32", "203.0.113.0/25"]),
             LB1, "2001:db8:99::1", "2001:db8:99::2")
    objs = [node(NODE, NODE_IP, v6_node), svc,
            slice_("ns1", "svc1", [ep("10.180.0.1")], [eport(80, "p80")], name="v4"),
            slice_("ns1", "svc1", [ep("fd00:10:180::1")], [eport(80, "p80")], name="v6", family="IPv6")]
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8,fd00:10::/48")
    pp6 = engine.plans["IPv6"].ports[0]
    assert pp6.lb_ips == ("2001:db8:99::1", "2001:db8:99::2")
    assert pp6.source_ranges == ("2001:db8::/64", "2600:5200::/32")
    assert fw_sources(pp6, engine.configs["IPv6"]) == (
        "2001:db8::/64", "2600:5200::/32", "2001:db8:99::1/128", "2001:db8:99::2/128")
    ep6 = {"[fd00:10:180::1]:80"}
    for vip in pp6.lb_ips:
        check(engine, "2600:5200::1", vip, 80, ep6, True)
        check(engine, v6_node, vip, 80, ep6, True)
        check(engine, vip, vip, 80, ep6, True)
        refused(engine, "2600:5300::1", vip, 80, "DROP")
        refused(engine, "fd00:10::2", vip, 80, "DROP")  # a pod outside the ranges
    check(engine, "2600:5300::1", v6_node, 3001, ep6, True, "NodePort")
    # the IPv4 side has only the IPv4 range: the node IP is outside it
    check(engine, EXTERNAL, LB1, 80, EP, True)
    refused(engine, NODE_IP, LB1, 80, "DROP")


# --------------------------------------------------------------------------- no endpoints

def test_lb_without_endpoints_rejects(make_engine: Callable[..., kp.Engine]) -> None:
    objs = ranges_cluster(["203.0.113.0/25"])[:2]
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    assert not engine.plans["IPv4"].ports[0].uses_fw_chain  # usesFWChain needs endpoints
    for src in (EXTERNAL, BLOCKED, POD, NODE_IP, LB1):
        if src == NODE_IP:
            # the node's own packet to a VIP it does not hold passes OUTPUT only and never
            # meets KUBE-EXTERNAL-SERVICES (INPUT/FORWARD): the kernel lets it out
            assert engine.lookup(src, LB1, 80, "TCP", sport=1, now=0.0).verdict == "PASS"
        else:
            refused(engine, src, LB1, 80, "REJECT", last_chain="filter:KUBE-EXTERNAL-SERVICES")
        refused(engine, src, NODE_IP, 3001, "REJECT", "NodePort")
        refused(engine, src, "172.30.0.41", 80, "REJECT", "ClusterIP")


def test_external_local_without_local_endpoints(make_engine: Callable[..., kp.Engine]) -> None:
    objs = [
        node(NODE, NODE_IP), node("other-node", "192.168.0.3"),
        lb(service("ns1", "svc1", "172.30.0.41", [port(80, "p80", node_port=3001)], type="LoadBalancer",
                   externalTrafficPolicy="Local", healthCheckNodePort=30000), LB1),
        slice_("ns1", "svc1", [ep("10.180.1.1", "other-node")], [eport(80, "p80")]),
    ]
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    pp = engine.plans["IPv4"].ports[0]
    assert pp.health_check_node_port == 30000
    refused(engine, EXTERNAL, LB1, 80, "DROP", last_chain="filter:KUBE-EXTERNAL-SERVICES")
    check(engine, POD, LB1, 80, {"10.180.1.1:80"}, False)  # pod short-circuit
    check(engine, NODE_IP, LB1, 80, {"10.180.1.1:80"}, True)  # route LOCAL
    check(engine, EXTERNAL, "172.30.0.41", 80, {"10.180.1.1:80"}, True, "ClusterIP")


# --------------------------------------------------------------------------- no NodePort

@pytest.mark.parametrize("etp", ["Cluster", "Local"])
def test_no_node_ports(make_engine: Callable[..., kp.Engine], etp: str) -> None:
    """allocateLoadBalancerNodePorts: false (TestTerminatingEndpointsTrafficPolicy*'s
    services have no nodePort either): the LB VIP still goes through KUBE-EXT."""
    objs = [
        node(NODE, NODE_IP), node("other-node", "192.168.0.3"),
        lb(service("ns1", "svc1", "172.30.1.1", [port(80)], type="LoadBalancer",
                   allocateLoadBalancerNodePorts=False, externalTrafficPolicy=etp), LB1),
        slice_("ns1", "svc1", [ep("10.0.1.1", NODE), ep("10.0.1.5", "other-node")], [eport(80)]),
    ]
    engine = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/8")
    pp = engine.plans["IPv4"].ports[0]
    assert pp.node_port == 0 and pp.externally_accessible and pp.uses_external_chain
    if etp == "Cluster":
        check(engine, EXTERNAL, LB1, 80, {"10.0.1.1:80", "10.0.1.5:80"}, True)
    else:
        check(engine, EXTERNAL, LB1, 80, {"10.0.1.1:80"}, False)
    assert engine.trace(EXTERNAL, LB1, 80, sport=1, now=0.0).chains[1] == pp.ext_chain
    check(engine, POD, "172.30.1.1", 80, {"10.0.1.1:80", "10.0.1.5:80"}, False, "ClusterIP")
    assert engine.lookup(EXTERNAL, NODE_IP, 80, "TCP", sport=1, now=0.0).verdict == "PASS"


# --------------------------------------------------------------------------- plan helpers

def test_fw_helpers_without_a_fw_chain() -> None:
    cluster = kp.Cluster.from_objects(masq_cluster())
    cfg = make_config(cluster, "IPv4", NODE, cluster_cidr="10.0.0.0/8")
    pp = build_plan(cluster, cfg).ports[0]
    assert fw_sources(pp, cfg) == () and fw_allows(pp, cfg, "8.8.8.8")


# --------------------------------------------------------------------------- the tables

def _twin(impl: str) -> ModuleType:
    if impl == "python":
        return _engine_py
    from kproxy_core import _engine

    return _engine


def _tables() -> tuple[FamilyTables, FamilyTables, list[str]]:
    cluster = kp.Cluster.from_objects(ranges_cluster(TEST_LOAD_BALANCER_RANGES))
    plans = [build_plan(cluster, make_config(cluster, fam, NODE, cluster_cidr="10.0.0.0/8"))
             for fam in ("IPv4", "IPv6")]
    return build_tables(plans[0], {"ns1/svc1:p80": 0}), build_tables(plans[1], {"ns1/svc1:p80": 0}), ["ns1/svc1:p80"]


def test_tables_layout() -> None:
    t4, t6, _ = _tables()
    assert t4.rec_action.shape == (len(t4.rec_port), 8)
    kinds = t4.rec_kind.tolist()
    lb_recs = [i for i, k in enumerate(kinds) if k == 4]
    assert len(lb_recs) == 2
    # both VIPs share one list: the two ranges and the two VIPs as /32
    assert {(int(t4.rec_fw_start[i]), int(t4.rec_fw_len[i])) for i in lb_recs} == {(0, 4)}
    assert t4.fw_prefix.tolist() == [24, 25, 32, 32]
    other = [i for i in range(len(kinds)) if i not in lb_recs]
    assert all(t4.rec_fw_len[i] == 0 for i in other)
    assert (t4.rec_action[other, :4] == t4.rec_action[other, 4:]).all()
    assert (t4.rec_action[lb_recs, :4] == 3).all()  # DROP for every blocked class
    assert t6.fw_addr.shape == (0, 16) and t6.rec_action.shape == (0, 8)


def _bad_fw_tables() -> list[tuple[str, FamilyTables]]:
    t4, _, _ = _tables()
    r = dataclasses.replace
    return [
        ("rec_action of 4 columns", r(t4, rec_action=t4.rec_action[:, :4])),
        ("fw_prefix too long", r(t4, fw_prefix=np.full_like(t4.fw_prefix, 33))),
        ("fw_prefix negative", r(t4, fw_prefix=t4.fw_prefix.astype(np.int64) - 100)),
        ("fw_addr short", r(t4, fw_addr=t4.fw_addr[:-1])),
        ("fw_addr of IPv6 rows", r(t4, fw_addr=np.zeros((len(t4.fw_prefix), 16), np.uint8))),
        ("rec_fw_len past the end", r(t4, rec_fw_len=t4.rec_fw_len + 1)),
        ("rec_fw_start past the end", r(t4, rec_fw_start=t4.rec_fw_start + 3)),
        ("rec_fw_start negative", r(t4, rec_fw_start=t4.rec_fw_start - 1)),
        ("rec_fw_len negative", r(t4, rec_fw_len=t4.rec_fw_len - 1)),
        ("rec_fw_len rows", r(t4, rec_fw_len=t4.rec_fw_len[:-1])),
        ("rec_fw_start float", r(t4, rec_fw_start=t4.rec_fw_start.astype(float))),
        ("fw_prefix not an array", r(t4, fw_prefix=object())),
    ]


@pytest.mark.parametrize("name", [b[0] for b in _bad_fw_tables()])
def test_bad_fw_tables_are_refused(impl: str, name: str) -> None:
    core = _twin(impl).Core(1)
    t4, t6, services = _tables()
    core.load(t4, t6, services)
    before = core.lookup(EXTERNAL, LB1, 80, sport=1, now=0.0)
    bad = dict(_bad_fw_tables())[name]
    with pytest.raises(ValueError):
        core.load(bad, t6, services)
    assert core.lookup(EXTERNAL, LB1, 80, sport=1, now=0.0, track=2) == before
    assert core.lookup(BLOCKED, LB1, 80, sport=1, now=0.0).verdict == "DROP"


def test_fw_lists_on_any_record_agree_across_twins() -> None:
    """Hand-made tables (a source list on every record, any prefix, host bits set):
    both twins decide every class the same way, for lookups and batches."""
    if not kp.COMPILED_AVAILABLE:
        pytest.skip("the compiled core is not built")
    t4, t6, services = _tables()
    rng = np.random.default_rng(3)
    n_rec = len(t4.rec_port)
    odd = dataclasses.replace(
        t4,
        rec_action=(rng.integers(0, 4, (n_rec, 8)) | (rng.integers(0, 3, (n_rec, 8)) << 2)
                    | (rng.integers(0, 2, (n_rec, 8)) << 4)).astype(np.uint8),
        rec_fw_start=rng.integers(0, 3, n_rec).astype(np.int32),
        rec_fw_len=rng.integers(0, 4, n_rec).astype(np.int32),
        fw_addr=np.array([0xCB007182, 0xC0A80002, 0x0A000002, 0x01020304, 0, 0xFFFFFFFF], np.uint32),
        fw_prefix=np.array([25, 24, 31, 32, 0, 1], np.uint8),
    )
    cores = [m.Core(9) for m in (_engine_py, _twin("compiled"))]
    for c in cores:
        c.load(odd, t6, services)
    srcs = [EXTERNAL, BLOCKED, POD, "10.0.0.3", NODE_IP, LB1, LB2, "127.0.0.1", "255.1.1.1", "0.0.0.1"]
    dsts = [LB1, LB2, "172.30.0.41", NODE_IP, "127.0.0.1", "192.168.1.2"]
    for s in srcs:
        for d in dsts:
            for dport in (80, 3001):
                a, b = (c.lookup(s, d, dport, "TCP", sport=7, now=0.0, track=0) for c in cores)
                assert a == b, (s, d, dport, a, b)
    rows = [(s, d, p) for s in srcs for d in dsts for p in (80, 3001)]
    cols = (np.array([int(ipaddress.ip_address(r[0])) for r in rows], np.uint32),
            np.array([int(ipaddress.ip_address(r[1])) for r in rows], np.uint32),
            np.array([r[2] for r in rows], np.uint16), np.full(len(rows), 6, np.uint8),
            np.arange(len(rows), dtype=np.uint16))
    outs = []
    for c in cores:
        out = np.zeros(len(rows), OUT_DTYPE)
        c.lookup_batch(*cols, out, 0.0, 1)
        outs.append(out.tobytes())
    assert outs[0] == outs[1]

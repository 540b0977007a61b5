"""kproxy_core.render.nftables against kube-proxy's own expected nftables states.

The acceptance cases are the full-ruleset expectations of kubernetes/kubernetes
pkg/proxy/nftables/proxier_test.go @ 81810de6 (every ``assertNFTablesTransactionEqual``
of TestOverallNFTablesRules, TestBadIPs, the 12 of TestSyncProxyRulesRepeated and
TestSyncProxyRulesStartup) and of proxy_userns_test.go (TestProxyRulesInUserNS),
transcribed into tests/data/nftables/<Case>.nft, with the Go test's objects translated
to manifests (<Case>.yaml) and the fake proxier's settings in <Case>.json. Each case is
planned as NewFakeProxier is configured, rendered, turned into the state the Go test
dumps (``knftables.Fake`` after the transaction) and sorted like
``sortNFTablesTransaction``; the result must equal the sorted expected text exactly.

Every transcribed case and a stream of random clusters are also loaded with the real
``nft -f`` into a private network namespace; the kernel's table must hold exactly the
chains, rules, sets, maps and elements the renderer's model of the transaction says.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kproxy_core as kp
from kproxy_core.plan import ProxyPlan, build_plan, make_config
from kproxy_core.render.nftables import (
    NftablesError,
    NftablesOptions,
    NftState,
    apply_transaction,
    chain_name_base,
    check_references,
    dump_state,
    endpoint_chain_name_base,
    normalize_like_kube_proxy_tests,
    render_nftables,
    sort_like_kube_proxy_tests,
)

DATA = Path(__file__).parent / "data" / "nftables"
COMMIT = "81810de635aa13aa0a32992f6def3aa9d6025ebc"  # kubernetes/kubernetes, proxier_test.go


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    cfg: dict[str, Any]

    @property
    def options(self) -> NftablesOptions:
        return NftablesOptions(
            masquerade_bit=self.cfg["masquerade_bit"],
            mark_format=self.cfg["mark_format"],
            stale_chains=tuple(self.cfg["stale_chains"]),
        )


CASES = [Case(p.stem, json.loads(p.read_text())) for p in sorted(DATA.glob("*.json"))]


def case_plan(case: Case) -> tuple[kp.Cluster, ProxyPlan]:
    cluster = kp.load(DATA / f"{case.cfg['inputs']}.yaml")
    cfg = make_config(
        cluster, case.cfg["family"], case.cfg["node"],
        cluster_cidr=case.cfg["cluster_cidr"],
        nodeport_addresses=case.cfg["nodeport_addresses"],
        masquerade_all=case.cfg["masquerade_all"],
    )
    return cluster, build_plan(cluster, cfg)


def case_render(case: Case, plan: ProxyPlan) -> str:
    return render_nftables(plan, case.options, service_cidrs=case.cfg["service_cidrs"])


def expected_raw(case: Case) -> str:
    return (DATA / f"{case.cfg['expected']}.nft").read_text()


def lb_vips_missing(cluster: kp.Cluster, plan: ProxyPlan) -> bool:
    """A LoadBalancer service with a usable ingress IP of this family whose plan has no VIPs."""
    fam6 = plan.family == "IPv6"
    for pp in plan.ports:
        svc = cluster.services[(pp.namespace, pp.service)]
        usable = [
            ing.ip for ing in svc.load_balancer_ingress
            if ing.ip and ing.ip_mode in (None, "VIP") and (":" in ing.ip) == fam6
        ]
        if svc.type == "LoadBalancer" and usable and not pp.lb_ips:
            return True
    return False


# --------------------------------------------------------------------------- acceptance


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_kube_proxy_expected_state(case: Case) -> None:
    cluster, plan = case_plan(case)
    assert not lb_vips_missing(cluster, plan)  # the plan fills LoadBalancer VIPs as kube-proxy does
    got = normalize_like_kube_proxy_tests(case_render(case, plan))
    assert got == sort_like_kube_proxy_tests(expected_raw(case))


def test_every_go_assertion_is_a_case() -> None:
    names = {c.name for c in CASES}
    assert {c.cfg["test"] for c in CASES} == {
        "TestOverallNFTablesRules", "TestBadIPs", "TestSyncProxyRulesRepeated",
        "TestSyncProxyRulesStartup", "TestProxyRulesInUserNS",
    }
    assert len([n for n in names if n.startswith("TestSyncProxyRulesRepeated__")]) == 12



@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_expected_files_are_consistent(case: Case) -> None:
    """Transcription checks: the header names the test and commit, every proxier_test.go
    case starts with the same baseRules, the text is a state (applying it changes nothing
    but the order) without dangling references, and every stale chain is an empty chain."""
    raw = expected_raw(case)
    head = raw.split("\n\n", 1)[0]
    assert case.cfg["test"] in head
    assert COMMIT in head
    base = (DATA / "TestProxyRulesInUserNS.nft").read_text().split("\n\n", 1)[1]
    assert base.startswith("add table ip kube-proxy")
    assert raw.split("\n\n", 1)[1].startswith(base)
    state = apply_transaction(raw)
    assert sort_like_kube_proxy_tests(dump_state(state)) == sort_like_kube_proxy_tests(raw)
    assert check_references(state) == []
    for chain in case.cfg["stale_chains"]:
        assert state.chains[chain].rules == []


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_render_is_consistent(case: Case) -> None:
    _, plan = case_plan(case)
    text = case_render(case, plan)
    assert check_references(apply_transaction(text)) == []
    assert render_nftables(plan, case.options, service_cidrs=case.cfg["service_cidrs"]) == text  # deterministic


# --------------------------------------------------------------------------- names (proxier_test.go)

LONG_NS = "very-long-namespace-name-abcdefghijklmnopqrstuvwxyz0123456789xx"
LONG_SVC = "very-long-service-name-why-would-you-even-do-this-i-mean-really"
LONG_PORT = "port-443-providing-the-hypertext-transmission-protocol-with-tls"
LONG_BASE = f"{LONG_NS}/{LONG_SVC}/sctp/{LONG_PORT}"


@pytest.mark.parametrize(
    ("ns", "svc", "proto", "port", "expected"),
    [  # Test_servicePortChainNameBase
        ("testing", "service", "tcp", "http", "P4ZYZVCF-testing/service/tcp/http"),
        ("testing", "service", "tcp", "https", "LZBRENCP-testing/service/tcp/https"),
        (LONG_NS, LONG_SVC, "sctp", LONG_PORT, f"KR6NACJP-{LONG_BASE}"),
        ("ns1", "svc1", "TCP", "p80", "ULMVA6XW-ns1/svc1/tcp/p80"),
    ],
)
def test_chain_name_base(ns: str, svc: str, proto: str, port: str, expected: str) -> None:
    assert chain_name_base(ns, svc, proto, port) == expected


@pytest.mark.parametrize(
    ("ns", "svc", "port", "endpoint", "expected"),
    [  # Test_servicePortEndpointChainNameBase
        ("testing", "service", "http", "10.180.0.1:80", "JO2XBXZR-testing/service/tcp/http__10.180.0.1/80"),
        ("testing", "service", "http", "10.180.0.2:80", "5S6H3H22-testing/service/tcp/http__10.180.0.2/80"),
        ("testing", "service", "http", "[fd80:abcd:12::a1b2:c3d4:e5f6:9999]:80",
         "U7E2ET36-testing/service/tcp/http__fd80.abcd.12..a1b2.c3d4.e5f6.9999/80"),
        (LONG_NS, LONG_SVC, LONG_PORT, "[1234:5678:9abc:def0::abc:1234]:443",
         f"5YS7AFEA-{LONG_BASE}__1234.5678.9abc.def0..abc.1234/443"),
        (LONG_NS, LONG_SVC, LONG_PORT, "[1234:5678:9abc:def0::abcd:1234:5678]:443",
         f"CI6C53Q3-{LONG_BASE}__1234.5678.9abc.def0..abcd.1234..."),
        (LONG_NS, LONG_SVC, LONG_PORT, "[1234:5678:9abc:def0::abcd:1234:8765]:443",
         f"2FLXFK6X-{LONG_BASE}__1234.5678.9abc.def0..abcd.1234..."),
    ],
)
def test_endpoint_chain_name_base(ns: str, svc: str, port: str, endpoint: str, expected: str) -> None:
    proto = "sctp" if ns == LONG_NS else "tcp"
    assert endpoint_chain_name_base(ns, svc, proto, port, endpoint) == expected


# --------------------------------------------------------------------------- small clusters

NODE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {"name": "test-node"},
    "status": {"addresses": [
        {"type": "InternalIP", "address": a}
        for a in ("192.168.0.2", "192.168.1.2", "192.168.99.11", "2001:db8::1", "2001:db8:1::2")
    ]},
}
FAKE_NODEPORT_ADDRESSES = ["192.168.0.2/32", "2001:db8::1/128"]


def _svc(ns: str, name: str, cip: str, ports: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    status = spec.pop("status", None)
    obj: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name},
        "spec": {"clusterIP": cip, "ports": ports, **spec},
    }
    if status is not None:
        obj["status"] = status
    return obj


def _slice(
    ns: str, svc: str, endpoints: list[dict[str, Any]], ports: list[dict[str, Any]], n: int = 1, family: str = "IPv4"
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": f"{svc}-{n}", "labels": {"kubernetes.io/service-name": svc}},
        "addressType": family, "endpoints": endpoints, "ports": ports,
    }


def _lb(*ingress: dict[str, Any]) -> dict[str, Any]:
    return {"loadBalancer": {"ingress": list(ingress)}}


def _plan(objs: list[dict[str, Any]], family: str = "IPv4", **kw: Any) -> ProxyPlan:
    cluster = kp.Cluster.from_objects([*objs, NODE])
    kw.setdefault("cluster_cidr", "10.0.0.0/8,fd00:10::/64")
    kw.setdefault("nodeport_addresses", FAKE_NODEPORT_ADDRESSES)
    return build_plan(cluster, make_config(cluster, family, "test-node", **kw))  # type: ignore[arg-type]


def _state(plan: ProxyPlan, options: NftablesOptions | None = None, **kw: Any) -> NftState:
    text = render_nftables(plan, options or NftablesOptions(), **kw)
    state = apply_transaction(text)
    assert check_references(state) == []
    return state


def _rules(state: NftState, chain: str) -> list[str]:
    return state.chains[chain].rules


def _elements(state: NftState, name: str) -> list[str]:
    c = state.maps.get(name) or state.sets[name]
    return list(c.elements.values())


EP80 = [{"name": "p80", "port": 80, "protocol": "TCP"}]
SVC1_BASE = "ULMVA6XW-ns1/svc1/tcp/p80"


@pytest.mark.parametrize(
    ("ip", "mode", "expected"),
    [("1.2.3.4", "Proxy", False), ("1.2.3.5", "VIP", True), ("1.2.3.6", None, True)],
)
def test_load_balancer_ingress_ip_mode(ip: str, mode: str | None, expected: bool) -> None:
    """TestLoadBalancerIngressRouteTypeProxy: ipMode Proxy ingress gets no service-ips element."""
    ingress: dict[str, Any] = {"ip": ip, **({"ipMode": mode} if mode else {})}
    plan = _plan([
        _svc("ns1", "svc1", "10.20.30.41", [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}],
             type="LoadBalancer", status=_lb(ingress)),
        _slice("ns1", "svc1", [{"addresses": ["10.180.0.1"]}], EP80),
    ])
    keys = {e.split(" : ")[0] for e in _elements(_state(plan), "service-ips")}
    assert (f"{{ {ip} . tcp . 80" in keys) == expected


def test_load_balancer_source_ranges_allow_node() -> None:
    """TestLoadBalancer's service: a range holding the node IP adds the LB IPs to the allowed sources."""
    plan = _plan([
        _svc("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}],
             type="LoadBalancer", loadBalancerSourceRanges=["192.168.0.0/24", " 203.0.113.0/25"],
             status=_lb({"ip": "1.2.3.4"}, {"ip": "5.6.7.8"})),
        _slice("ns1", "svc1", [{"addresses": ["10.180.0.1"]}], EP80),
    ])
    state = _state(plan)
    assert _rules(state, f"firewall-{SVC1_BASE}") == [
        "ip saddr != { 192.168.0.0/24 , 203.0.113.0/25 , 1.2.3.4 , 5.6.7.8 } drop"
    ]
    assert _elements(state, "firewall-ips") == [
        f"{{ 1.2.3.4 . tcp . 80 : goto firewall-{SVC1_BASE} }}",
        f"{{ 5.6.7.8 . tcp . 80 : goto firewall-{SVC1_BASE} }}",
    ]
    other = _state(plan, NftablesOptions(node_ip="192.168.1.2"))
    assert _rules(other, f"firewall-{SVC1_BASE}") == ["ip saddr != { 192.168.0.0/24 , 203.0.113.0/25 } drop"]


def test_firewall_without_endpoints() -> None:
    """Unlike iptables mode, the firewall chain does not depend on endpoints (NFTABLES.md §5.7)."""
    plan = _plan([
        _svc("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}],
             type="LoadBalancer", loadBalancerSourceRanges=["203.0.113.0/25"], status=_lb({"ip": "1.2.3.4"})),
    ])
    (pp,) = plan.ports
    assert not pp.has_endpoints and not pp.uses_fw_chain  # the plan's flag is iptables' KUBE-FW condition
    state = _state(plan)
    assert _rules(state, f"firewall-{SVC1_BASE}") == ["ip saddr != { 203.0.113.0/25 } drop"]
    assert _elements(state, "firewall-ips") == [f"{{ 1.2.3.4 . tcp . 80 : goto firewall-{SVC1_BASE} }}"]
    assert _elements(state, "no-endpoint-services") == [
        '{ 172.30.0.41 . tcp . 80 comment "ns1/svc1:p80" : goto reject-chain }',
        '{ 1.2.3.4 . tcp . 80 comment "ns1/svc1:p80" : goto reject-chain }',
    ]
    assert _elements(state, "no-endpoint-nodeports") == ['{ tcp . 3001 comment "ns1/svc1:p80" : goto reject-chain }']
    assert "service-ips" in state.maps and _elements(state, "service-ips") == []


def test_external_traffic_policy_local() -> None:
    eps: list[dict[str, Any]] = [{"addresses": ["10.180.0.1"]}, {"addresses": ["10.180.2.1"], "nodeName": "test-node"}]
    plan = _plan([
        _svc("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}],
             type="LoadBalancer", externalTrafficPolicy="Local", externalIPs=["192.168.99.11"],
             healthCheckNodePort=30000, status=_lb({"ip": "1.2.3.4"})),
        _slice("ns1", "svc1", eps, EP80),
    ])
    state = _state(plan)
    local_ep = "endpoint-" + endpoint_chain_name_base("ns1", "svc1", "tcp", "p80", "10.180.2.1:80")
    assert _rules(state, f"external-{SVC1_BASE}") == [
        f'ip saddr 10.0.0.0/8 goto service-{SVC1_BASE} comment "short-circuit pod traffic"',
        'fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"',
        f'fib saddr type local goto service-{SVC1_BASE} comment "short-circuit local traffic"',
        f"goto local-{SVC1_BASE}",
    ]
    assert _rules(state, f"local-{SVC1_BASE}") == [f"numgen random mod 1 vmap {{ 0 : goto {local_ep} }}"]
    assert len(_rules(state, f"service-{SVC1_BASE}")) == 2
    assert _elements(state, "no-endpoint-services") == []
    # no local detector: no pod short-circuit
    state = _state(_plan([
        _svc("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": 3001}],
             type="NodePort", externalTrafficPolicy="Local"),
        _slice("ns1", "svc1", eps, EP80),
    ], cluster_cidr=None))
    assert [r.split(" comment")[0] for r in _rules(state, f"external-{SVC1_BASE}")] == [
        "fib saddr type local jump mark-for-masquerade",
        f"fib saddr type local goto service-{SVC1_BASE}",
        f"goto local-{SVC1_BASE}",
    ]
    assert _rules(state, f"service-{SVC1_BASE}")[0].startswith("numgen")  # no masquerade rule without detector


def test_internal_traffic_policy_local_without_local_endpoints() -> None:
    eps: list[dict[str, Any]] = [{"addresses": [f"10.0.1.{i}"], "nodeName": f"node{i}"} for i in (1, 2)]
    state = _state(_plan([
        _svc("ns1", "svc1", "172.30.1.1", [{"name": "", "port": 80, "protocol": "TCP"}], internalTrafficPolicy="Local"),
        _slice("ns1", "svc1", eps, [{"name": "", "port": 80, "protocol": "TCP"}]),
    ]))
    assert _elements(state, "no-endpoint-services") == ['{ 172.30.1.1 . tcp . 80 comment "ns1/svc1" : drop }']
    assert _elements(state, "cluster-ips") == ["{ 172.30.1.1 }"]
    assert not [c for c in state.chains if "/" in c]


def test_internal_traffic_policy_local_and_masquerade_all() -> None:
    eps = [{"addresses": ["10.0.1.1"], "nodeName": "test-node"}, {"addresses": ["10.0.1.2"], "nodeName": "node2"}]
    objs = [
        _svc("ns1", "svc1", "172.30.1.1", [{"name": "", "port": 80, "protocol": "TCP"}], internalTrafficPolicy="Local"),
        _slice("ns1", "svc1", eps, [{"name": "", "port": 80, "protocol": "TCP"}]),
    ]
    base = chain_name_base("ns1", "svc1", "tcp", "")
    assert base.endswith("-ns1/svc1/tcp/")
    state = _state(_plan(objs, masquerade_all=True))
    assert _elements(state, "service-ips") == [f"{{ 172.30.1.1 . tcp . 80 : goto local-{base} }}"]
    assert _rules(state, f"local-{base}")[0] == "ip daddr 172.30.1.1 jump mark-for-masquerade"
    assert f"service-{base}" not in state.chains


def test_session_affinity_and_ipv6() -> None:
    eps = [{"addresses": ["fd00:10:180::2:1"]}, {"addresses": ["fd00:10:180::1"]}]
    plan = _plan([
        _svc("ns1", "svc1", "fd00:172:30::41", [{"name": "p80", "port": 80, "protocol": "UDP", "nodePort": 3001}],
             type="NodePort", sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 30}}),
        _slice("ns1", "svc1", eps, [{"name": "p80", "port": 8080, "protocol": "UDP"}], family="IPv6"),
    ], family="IPv6")
    text = render_nftables(plan, service_cidrs=["172.30.0.0/16", "fd00:10:96::/112", "fd00:172:30::/112"])
    assert text.startswith('add table ip6 kube-proxy { comment "rules for kube-proxy" ; }\n')
    state = apply_transaction(text)
    assert check_references(state) == []
    base = chain_name_base("ns1", "svc1", "udp", "p80")
    ep1, ep2 = (endpoint_chain_name_base("ns1", "svc1", "udp", "p80", e) for e in
                ("[fd00:10:180::1]:8080", "[fd00:10:180::2:1]:8080"))
    assert ep1.endswith("__fd00.10.180..1/8080")
    assert _rules(state, f"service-{base}") == [
        "ip6 daddr fd00:172:30::41 ip6 saddr != fd00:10::/64 jump mark-for-masquerade",
        f"ip6 saddr @affinity-{ep1} goto endpoint-{ep1}",
        f"ip6 saddr @affinity-{ep2} goto endpoint-{ep2}",
        f"numgen random mod 2 vmap {{ 0 : goto endpoint-{ep1} , 1 : goto endpoint-{ep2} }}",
    ]
    assert _rules(state, f"endpoint-{ep1}") == [
        "ip6 saddr fd00:10:180::1 jump mark-for-masquerade",
        f"update @affinity-{ep1} {{ ip6 saddr }}",
        "meta l4proto udp dnat to [fd00:10:180::1]:8080",
    ]
    assert state.sets[f"affinity-{ep1}"].spec == "{ type ipv6_addr ; flags dynamic,timeout ; timeout 30s ; }"
    assert _rules(state, "cluster-ips-check") == [
        'ip6 daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"',
        'ip6 daddr { fd00:10:96::/112,fd00:172:30::/112 } drop comment "Drop traffic to unallocated ClusterIPs"',
    ]
    assert _elements(state, "nodeport-ips") == ["{ 2001:db8::1 }"]
    assert _elements(state, "service-nodeports") == [f"{{ udp . 3001 : goto external-{base} }}"]


def test_service_cidrs_per_family() -> None:
    """TestProxier_OnServiceCIDRsChanged: this family's CIDRs, joined with ',' (no spaces)."""
    both = ["172.30.0.0/16", "172.50.0.0/16", "fd00:10:96::/112", "fd00:172:30::/112"]
    for family, expected in (("IPv4", "172.30.0.0/16,172.50.0.0/16"), ("IPv6", "fd00:10:96::/112,fd00:172:30::/112")):
        state = _state(_plan([], family=family), service_cidrs=both)
        ipx = "ip6" if family == "IPv6" else "ip"
        assert _rules(state, "cluster-ips-check")[1] == (
            f'{ipx} daddr {{ {expected} }} drop comment "Drop traffic to unallocated ClusterIPs"'
        )
    assert len(_rules(_state(_plan([])), "cluster-ips-check")) == 1  # no ServiceCIDRs known: no drop rule
    assert len(_rules(_state(_plan([]), service_cidrs="172.30.0.0/16,fd00::/64"), "cluster-ips-check")) == 2
    with pytest.raises(ValueError, match="not a valid CIDR"):
        render_nftables(_plan([]), service_cidrs=["172.30.0.0/33"])


def test_nodeport_addresses_match_all() -> None:
    state = _state(_plan([], nodeport_addresses=None))
    assert "nodeport-ips" not in state.sets
    assert _rules(state, "services")[1] == (
        "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
    )
    assert _rules(state, "nodeport-endpoints-check") == [
        "ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"
    ]
    state6 = _state(_plan([], family="IPv6", nodeport_addresses=["192.168.0.0/24"]))  # none of this family
    assert _rules(state6, "nodeport-endpoints-check") == [
        "ip6 daddr != ::1 meta l4proto . th dport vmap @no-endpoint-nodeports"
    ]
    # loopback is never a NodePort address in nftables mode
    state = _state(_plan([], nodeport_addresses=["192.168.0.0/16", "127.0.0.0/8"]))
    assert _elements(state, "nodeport-ips") == ["{ 192.168.0.2 }", "{ 192.168.1.2 }", "{ 192.168.99.11 }"]


def test_transaction_shape_and_options() -> None:
    plan = _plan([
        _svc("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80, "protocol": "TCP"}]),
        _slice("ns1", "svc1", [{"addresses": ["10.180.0.1"]}], EP80),
    ])
    text = render_nftables(plan)
    lines = text.split("\n")
    assert lines[1:3] == [
        "add chain ip kube-proxy filter-prerouting-pre-dnat",
        "delete chain ip kube-proxy filter-prerouting-pre-dnat",
    ]
    assert "add rule ip kube-proxy mark-for-masquerade mark set mark or 0x00004000" in lines
    assert "add rule ip kube-proxy masquerading mark and 0x00004000 == 0 return" in lines
    assert lines.index(f"add chain ip kube-proxy service-{SVC1_BASE}") + 1 == lines.index(
        f"flush chain ip kube-proxy service-{SVC1_BASE}"
    )
    # the per-service part follows the setup part
    assert max(i for i, line in enumerate(lines) if line.startswith("add map")) < lines.index(
        "add element ip kube-proxy cluster-ips { 172.30.0.41 }"
    )
    later = render_nftables(plan, NftablesOptions(first_sync=False, mark_format="test", masquerade_bit=0))
    assert "delete chain" not in later
    assert "add rule ip kube-proxy mark-for-masquerade mark set mark or 0x1" in later
    bare = render_nftables(plan, NftablesOptions(object_comments=False, flush_containers=True))
    assert bare.startswith("add table ip kube-proxy\n")
    assert "add set ip kube-proxy cluster-ips { type ipv4_addr ; }" in bare
    assert "add chain ip kube-proxy reject-chain\n" in bare
    assert "flush map ip kube-proxy service-nodeports\n" in bare
    assert 'comment "Reject traffic to invalid ports of ClusterIPs"' in bare  # rule comments stay
    iface = render_nftables(plan, NftablesOptions(detector_tokens=("iifname cbr0", "iifname != cbr0")))
    assert "ip daddr 172.30.0.41 iifname != cbr0 jump mark-for-masquerade" in iface
    stale = render_nftables(plan, NftablesOptions(stale_chains=(f"service-{SVC1_BASE}", "endpoint-X-a/b/tcp/p__1/2")))
    gone = "endpoint-X-a/b/tcp/p__1/2"
    assert stale.endswith(f"add chain ip kube-proxy {gone}\nflush chain ip kube-proxy {gone}\n")
    assert stale.count(f"add chain ip kube-proxy service-{SVC1_BASE}") == 1  # active: not flushed again
    for bad in (
        {"masquerade_bit": 32}, {"mark_format": "go"}, {"node_ip": "nope"}, {"stale_chains": ("services",)},
    ):
        with pytest.raises(ValueError):
            NftablesOptions(**bad)


def test_ensure_elem_deduplicates() -> None:
    """Two ports of one service add the ClusterIP to cluster-ips once (ensureElem)."""
    ports = [{"name": "a", "port": 80, "protocol": "TCP"}, {"name": "b", "port": 80, "protocol": "UDP"}]
    text = render_nftables(_plan([_svc("ns1", "svc1", "172.30.0.41", ports)]))
    assert text.count("add element ip kube-proxy cluster-ips { 172.30.0.41 }") == 1
    assert text.count("add element ip kube-proxy no-endpoint-services") == 2


def test_sort_like_kube_proxy_tests() -> None:
    text = "\n".join([
        "add element ip kube-proxy m { b : drop }",
        "# comment",
        "add rule ip kube-proxy c2 z",
        "",
        "add map ip kube-proxy m { type x ; }",
        "add rule ip kube-proxy c1 second",
        "add element ip kube-proxy m { a : drop }",
        "add rule ip kube-proxy c1 first",
        "add chain ip kube-proxy c2",
        "add chain ip kube-proxy c1",
        'add table ip kube-proxy { comment "x" ; }',
    ])
    assert sort_like_kube_proxy_tests(text).split("\n") == [
        'add table ip kube-proxy { comment "x" ; }',
        "add chain ip kube-proxy c1",
        "add chain ip kube-proxy c2",
        "add rule ip kube-proxy c1 second",
        "add rule ip kube-proxy c1 first",
        "add rule ip kube-proxy c2 z",
        "add map ip kube-proxy m { type x ; }",
        "add element ip kube-proxy m { a : drop }",
        "add element ip kube-proxy m { b : drop }",
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("add chain ip kube-proxy c", "no table"),
        ("add table ip kube-proxy\nadd rule ip kube-proxy c jump x", "no chain c"),
        ("add table ip kube-proxy\nflush chain ip kube-proxy c", "no chain c"),
        ("add table ip kube-proxy\nadd chain ip kube-proxy c\nadd rule ip kube-proxy c drop\n"
         "delete chain ip kube-proxy c", "not empty"),
        ("add table ip kube-proxy\nadd element ip kube-proxy s { 1.2.3.4 }", "no set or map s"),
        ("add table ip kube-proxy\nadd map ip kube-proxy m { type x : verdict ; }\n"
         "add element ip kube-proxy m { a : drop }\nadd element ip kube-proxy m { a : accept }", "another value"),
        ("add table ip kube-proxy\nadd table ip6 kube-proxy", "family ip6"),
        ("add table ip filter", "not a kube-proxy table operation"),
    ],
)
def test_apply_transaction_errors(text: str, error: str) -> None:
    with pytest.raises(NftablesError, match=error):
        apply_transaction(text)


def test_check_references() -> None:
    state = apply_transaction(
        "add table ip kube-proxy\nadd chain ip kube-proxy a\nadd rule ip kube-proxy a ip daddr @nope goto b\n"
        "add map ip kube-proxy m { type x : verdict ; }\nadd element ip kube-proxy m { k : goto c }\n"
    )
    assert check_references(state) == [
        "chain a: reference to missing set/map nope",
        "chain a: goto to missing chain b",
        "map m: goto to missing chain c",
    ]


# --------------------------------------------------------------------------- the kernel: nft -f


@dataclasses.dataclass
class Netns:
    name: str

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *args], capture_output=True, text=True,
                              check=check, timeout=60)

    def load(self, text: str, family: str) -> dict[str, Any]:
        """Load ``text`` with ``nft -f`` into an empty ruleset; return the table as nft's JSON."""
        self.run("nft", "flush", "ruleset")
        with tempfile.NamedTemporaryFile("w", suffix=".nft", delete=False) as f:
            f.write(text)
        try:
            res = self.run("nft", "-f", f.name, check=False)
            assert res.returncode == 0, f"nft -f failed:\n{res.stderr}\n{text}"
        finally:
            os.unlink(f.name)
        table = "ip6" if family == "IPv6" else "ip"
        listed = self.run("nft", "list", "table", table, "kube-proxy", check=False)
        assert listed.returncode == 0, listed.stderr
        data: dict[str, Any] = json.loads(self.run("nft", "-j", "list", "table", table, "kube-proxy").stdout)
        return data


@pytest.fixture(scope="module")
def netns() -> Iterator[Netns]:
    if os.geteuid() != 0:
        pytest.skip("nft -f loading needs root (network namespaces)")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    ns = Netns(f"kpnft{os.getpid()}")
    res = subprocess.run(["ip", "netns", "add", ns.name], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {res.stderr.strip()}")
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "delete", ns.name], capture_output=True, timeout=30)


def kernel_summary(data: dict[str, Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {"chain": {}, "set": {}, "map": {}}
    for obj in data["nftables"]:
        (kind, body), = obj.items()
        if kind in ("set", "map", "chain"):
            out[kind][body["name"]] = len(body.get("elem", [])) if kind != "chain" else 0
    for obj in data["nftables"]:
        if "rule" in obj:
            out["chain"][obj["rule"]["chain"]] += 1
    return out


def model_summary(state: NftState) -> dict[str, dict[str, int]]:
    return {
        "chain": {name: len(ch.rules) for name, ch in state.chains.items()},
        "set": {name: len(c.elements) for name, c in state.sets.items()},
        "map": {name: len(c.elements) for name, c in state.maps.items()},
    }


def check_loads(netns: Netns, text: str, family: str) -> None:
    state = apply_transaction(text)
    assert check_references(state) == []
    assert kernel_summary(netns.load(text, family)) == model_summary(state)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_nft_loads_transcribed_case(case: Case, netns: Netns) -> None:
    _, plan = case_plan(case)
    check_loads(netns, case_render(case, plan), plan.family)
    check_loads(netns, render_nftables(plan, service_cidrs=case.cfg["service_cidrs"]), plan.family)  # real mark


def loadable(state: NftState) -> str:
    """A state as nft input in dependency order: table, chains, sets and maps, rules, elements."""
    lines = dump_state(state).split("\n")
    kinds = ("table", "chain", "set", "map", "rule", "element")
    return "\n".join(sorted((x for x in lines if x), key=lambda x: kinds.index(x.split(" ")[1]))) + "\n"


@pytest.mark.parametrize(
    "name", ["TestOverallNFTablesRules", "TestSyncProxyRulesRepeated__step09_empty_svc3_endpoints"]
)
def test_nft_loads_expected_state(name: str, netns: Netns) -> None:
    """The transcribed expectation itself, put in dependency order, is valid nft input."""
    check_loads(netns, loadable(apply_transaction((DATA / f"{name}.nft").read_text())), "IPv4")


def test_nft_refuses_long_element_comments(netns: Netns) -> None:
    """kube-proxy @531be812 writes "ns/svc:port" element comments uncut; past 128 bytes nft refuses
    the whole transaction (kubernetes#139515, fixed by #139516). comment_limit=128 cuts them."""
    plan = _plan([_svc(LONG_NS, LONG_SVC, "172.30.0.10", [{"name": LONG_PORT, "port": 80, "protocol": "TCP"}])])
    spn = f"{LONG_NS}/{LONG_SVC}:{LONG_PORT}"
    text = render_nftables(plan)
    assert f'comment "{spn}" : goto reject-chain' in text
    netns.run("nft", "flush", "ruleset")
    res = subprocess.run(["ip", "netns", "exec", netns.name, "nft", "-f", "-"], input=text,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "comment too long" in res.stderr
    cut = render_nftables(plan, NftablesOptions(comment_limit=128))
    assert f'comment "{spn[:128]}" : goto reject-chain' in cut
    check_loads(netns, cut, "IPv4")
    with pytest.raises(ValueError):
        NftablesOptions(comment_limit=0)


# --------------------------------------------------------------------------- random clusters


@st.composite
def random_clusters(draw: Callable[..., Any]) -> tuple[list[dict[str, Any]], str]:
    family = draw(st.sampled_from(["IPv4", "IPv6"]))
    v6 = family == "IPv6"

    def ip(prefix4: str, prefix6: str, i: int) -> str:
        return f"{prefix6}{i:x}" if v6 else f"{prefix4}{i}"

    objs: list[dict[str, Any]] = []
    for s in range(draw(st.integers(0, 4))):
        stype = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
        long_names = draw(st.booleans()) and s == 0
        ns_name = LONG_NS if long_names else f"ns{s}"
        svc_name = LONG_SVC if long_names else "svc"
        nports = 1 if draw(st.booleans()) else draw(st.integers(2, 3))
        ports = []
        for j in range(nports):
            name = "" if nports == 1 and draw(st.booleans()) else (LONG_PORT[:60] + f"-{j}" if long_names else f"p{j}")
            port: dict[str, Any] = {
                "name": name, "port": 80 + j, "protocol": draw(st.sampled_from(["TCP", "UDP", "SCTP"])),
            }
            if stype != "ClusterIP" and draw(st.booleans()):
                port["nodePort"] = 30000 + 10 * s + j
            ports.append(port)
        spec: dict[str, Any] = {"type": stype}
        if draw(st.booleans()):
            spec["externalIPs"] = [ip("192.168.99.", "2001:db8:99::", 20 + s)]
        if stype != "ClusterIP" and draw(st.booleans()):
            spec["externalTrafficPolicy"] = "Local"
        if draw(st.booleans()):
            spec["internalTrafficPolicy"] = "Local"
        if draw(st.booleans()):
            spec["sessionAffinity"] = "ClientIP"
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": draw(st.integers(1, 86400))}}
        if stype == "LoadBalancer":
            spec["status"] = _lb(
                {"ip": ip("1.2.3.", "2001:db8:77::", 10 + s)},
                *([{"hostname": "lb.example"}] if draw(st.booleans()) else []),
                *([{"ip": ip("5.6.7.", "2001:db8:78::", 10 + s), "ipMode": "Proxy"}] if draw(st.booleans()) else []),
            )
            if draw(st.booleans()):
                spec["loadBalancerSourceRanges"] = draw(st.lists(
                    st.sampled_from(["203.0.113.0/25", "192.168.0.0/24", "2001:db8::/64", "2600::/16"]),
                    min_size=1, max_size=3, unique=True,
                ))
        objs.append(_svc(ns_name, svc_name, ip("172.30.0.", "fd00:172:30::", 10 + s), ports, **spec))
        for n in range(draw(st.integers(0, 2))):
            endpoints = []
            for e in range(draw(st.integers(0, 4))):
                ready = draw(st.booleans())
                addr = (f"fd00:10:abcd:1234:{s:x}:{n:x}:ffff:{e + 1:x}" if long_names and v6 else
                        ip(f"10.{s}.{n}.", f"fd00:10::{s}:{n}:", e + 1))
                endpoints.append({
                    "addresses": [addr],
                    "conditions": {"ready": ready, "serving": ready or draw(st.booleans()),
                                   "terminating": not ready and draw(st.booleans())},
                    "nodeName": draw(st.sampled_from(["test-node", "other", None])),
                })
            names = draw(
                st.lists(st.sampled_from(ports), min_size=1, max_size=len(ports), unique_by=lambda p: p["name"])
            )
            slice_ports = [{"name": p["name"], "port": 8000 + p["port"], "protocol": p["protocol"]} for p in names]
            objs.append(_slice(ns_name, svc_name, [{k: v for k, v in e.items() if v is not None} for e in endpoints],
                               slice_ports, n=n + 1, family=family))
    return objs, family


@st.composite
def random_setups(draw: Callable[..., Any]) -> tuple[ProxyPlan, NftablesOptions, list[str]]:
    objs, family = draw(random_clusters())
    plan = _plan(
        objs, family,
        cluster_cidr="10.0.0.0/8,fd00:10::/64" if draw(st.booleans()) else None,
        nodeport_addresses=draw(st.sampled_from([
            None, FAKE_NODEPORT_ADDRESSES, ["192.168.0.0/24", "2001:db8::/64", "127.0.0.0/8"],
        ])),
        masquerade_all=draw(st.booleans()),
    )
    options = NftablesOptions(
        comment_limit=128,  # the default (no limit) is refused by nft for the long names: see below
        first_sync=draw(st.booleans()),
        mark_format=draw(st.sampled_from(["real", "test"])),
        masquerade_bit=draw(st.integers(0, 31)),
        object_comments=draw(st.booleans()),
        flush_containers=draw(st.booleans()),
    )
    cidrs = draw(st.sampled_from([[], ["172.30.0.0/16", "fd00:172:30::/64"], ["fd00:172:30::/64", "172.30.0.0/24"]]))
    return plan, options, cidrs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_setups())
def test_random_clusters_render_consistently(setup: tuple[ProxyPlan, NftablesOptions, list[str]]) -> None:
    plan, options, cidrs = setup
    text = render_nftables(plan, options, service_cidrs=cidrs)
    state = apply_transaction(text)
    assert check_references(state) == []
    normalized = normalize_like_kube_proxy_tests(text)
    assert normalize_like_kube_proxy_tests(normalized) == normalized
    for line in text.split("\n")[:-1]:
        assert re.match(r"(add|flush|delete) (table|chain|rule|set|map|element) ip6? kube-proxy", line), line
    for name in state.chains:
        assert len(name) < 256
    # one element per frontend kube-proxy writes, nothing else
    for pp in plan.ports:
        key = f"{{ {pp.cluster_ip} . {pp.proto} . {pp.port}"
        in_service = any(e.startswith(key + " :") for e in state.maps["service-ips"].elements.values())
        in_reject = any(e.startswith(key + " comment") for e in state.maps["no-endpoint-services"].elements.values())
        assert in_service == pp.has_internal_endpoints
        assert in_reject == (not pp.has_internal_endpoints)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setup=random_setups())
def test_nft_loads_random_clusters(setup: tuple[ProxyPlan, NftablesOptions, list[str]], netns: Netns) -> None:
    plan, options, cidrs = setup
    check_loads(netns, render_nftables(plan, options, service_cidrs=cidrs), plan.family)

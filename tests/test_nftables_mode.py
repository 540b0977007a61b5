"""``Engine(..., mode="nftables")``: kube-proxy's nftables-mode decisions, over both twins.

The rules render/nftables.py writes are the reference (NFTABLES.md §1.6, §2, §6): each
behavioural difference from iptables mode is checked against iptables mode on the same
cluster, the KUBE-PROXY.md §8 rows that behave the same still hold, and the trace names
the nftables chains.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from k8s import ep, eport, lb, node, port, service, slice_
from test_kube_proxy_table import ROWS, SOURCES, _dst, check, masq_cluster, no_endpoint_cluster

import kproxy_core as kp
from kproxy_core.errors import ManifestError
from kproxy_core.plan import make_config
from kproxy_core.render.nftables import chain_name_base, endpoint_chain_name_base

NODE = "test-node"
NODE_IP = "192.168.0.2"
NODE_IP2 = "192.168.1.2"
POD = "10.0.0.2"
EXTERNAL = "203.0.113.2"
BLOCKED = "203.0.113.130"  # outside 203.0.113.0/25
LOCALHOST = "127.0.0.1"
LB_IP = "9.10.11.1"

Make = Callable[..., kp.Engine]


def nft(make_engine: Make, objs: Any, **kw: Any) -> kp.Engine:
    kw.setdefault("node", NODE)
    kw.setdefault("cluster_cidr", "10.0.0.0/8")
    return make_engine(objs, mode="nftables", **kw)


def verdict(engine: kp.Engine, src: str, dst: str, dport: int, proto: str = "TCP") -> tuple[Any, ...]:
    d = engine.lookup(src, dst, dport, proto, sport=7, now=0.0)
    t = engine.trace(src, dst, dport, proto, sport=7, now=0.0)
    assert (t.verdict, t.service, t.frontend) == (d.verdict, d.service, d.frontend), str(t)
    return d.verdict, d.service, d.frontend


def svc_base(ns: str, name: str, port_name: str, proto: str = "TCP") -> str:
    return chain_name_base(ns, name, proto, port_name)


# --------------------------------------------------------------------------- config


def test_mode_reaches_the_config(make_engine: Make) -> None:
    e = nft(make_engine, masq_cluster())
    assert {c.mode for c in e.configs.values()} == {"nftables"}
    assert make_engine(masq_cluster(), node=NODE).configs["IPv4"].mode == "iptables"
    with pytest.raises(ManifestError, match="proxy-mode"):
        make_config(kp.Cluster.from_objects(masq_cluster()), "IPv4", NODE, mode="ipvs")


# --------------------------------------------------------------------------- 1. localhost NodePorts


def test_no_localhost_nodeports(make_engine: Make) -> None:
    # even with --nodeport-addresses including loopback, and with the localhost flag on
    for kw in ({}, {"nodeport_addresses": "0.0.0.0/0"}, {"nodeport_addresses": ["192.168.0.0/16", "127.0.0.0/8"]}):
        e = nft(make_engine, masq_cluster(), **kw)
        assert not e.configs["IPv4"].localhost_nodeports_active
        for dst in (LOCALHOST, "127.0.0.5"):
            assert verdict(e, LOCALHOST, dst, 3001) == ("PASS", None, None)
        # the same cluster in iptables mode serves them
        ipt = make_engine(masq_cluster(), node=NODE, cluster_cidr="10.0.0.0/8", **kw)
        assert ipt.lookup(LOCALHOST, LOCALHOST, 3001, "TCP", sport=7, now=0.0).verdict == "DNAT"
    text = nft(make_engine, masq_cluster(), nodeport_addresses="0.0.0.0/0").render("nftables")
    assert "ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports" in text


def test_no_ipv6_localhost_nodeports(make_engine: Make) -> None:
    objs = [node(NODE, "fd00::2"),
            service("ns", "s", "fd00:30::1", [port(80, "p", node_port=3001)], type="NodePort"),
            slice_("ns", "s", [ep("fd00:10::1", NODE)], [eport(80, "p")], family="IPv6")]
    e = nft(make_engine, objs, nodeport_addresses="::/0")
    assert verdict(e, "::1", "::1", 3001) == ("PASS", None, None)
    assert verdict(e, "fd00::2", "fd00::2", 3001)[0] == "DNAT"


# --------------------------------------------------------------------------- 2. primary NodePort addresses


def test_default_nodeport_addresses_are_primary(make_engine: Make) -> None:
    e = nft(make_engine, masq_cluster())
    cfg = e.configs["IPv4"]
    assert cfg.nodeport_cidrs == (f"{NODE_IP}/32",) and cfg.nodeport_ips == (NODE_IP,)
    check(e, EXTERNAL, NODE_IP, 3001, {"10.180.0.1:80", "10.180.1.1:80"}, True)
    # the node's second address is no NodePort address in nftables mode (it is in iptables mode)
    assert verdict(e, EXTERNAL, NODE_IP2, 3001) == ("PASS", None, None)
    ipt = make_engine(masq_cluster(), node=NODE, cluster_cidr="10.0.0.0/8")
    assert ipt.lookup(EXTERNAL, NODE_IP2, 3001, "TCP", sport=7, now=0.0).verdict == "DNAT"
    # the rules say the same: nodeport-ips holds the primary IP only
    text = e.render("nftables")
    assert re.findall(r"add element ip kube-proxy nodeport-ips \{ (\S+) \}", text) == [NODE_IP]
    assert "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports" in text
    # an explicit --nodeport-addresses wins
    e = nft(make_engine, masq_cluster(), nodeport_addresses="192.168.0.0/16")
    assert verdict(e, EXTERNAL, NODE_IP2, 3001)[0] == "DNAT"


def test_primary_without_node_ip_matches_all(make_engine: Make) -> None:
    e = nft(make_engine, masq_cluster(), node=None)
    assert e.configs["IPv4"].nodeport_match_all
    assert "fib daddr type local ip daddr != 127.0.0.0/8" in e.render("nftables", family="IPv4")
    # IPv6: the node has no IPv6 address, so the IPv6 proxier matches all
    e = nft(make_engine, masq_cluster())
    assert e.configs["IPv6"].nodeport_match_all and not e.configs["IPv4"].nodeport_match_all


# --------------------------------------------------------------------------- 3. firewall without endpoints


def fw_cluster(with_endpoints: bool, **pol: Any) -> list[dict[str, Any]]:
    objs = [node(NODE, NODE_IP, pod_cidr="10.0.0.0/24"), node("other-node", "192.168.0.3"),
            lb(service("ns1", "svc1", "172.30.0.41", [port(80, "p80", node_port=3001)], type="LoadBalancer",
                       loadBalancerSourceRanges=["203.0.113.0/25"], **pol), LB_IP)]
    if with_endpoints:
        objs.append(slice_("ns1", "svc1", [ep("10.180.1.1", "other-node")], [eport(80, "p80")]))
    return objs


def test_firewall_without_endpoints(make_engine: Make) -> None:
    e = nft(make_engine, fw_cluster(False))
    fw = f"firewall-{svc_base('ns1', 'svc1', 'p80')}"
    assert verdict(e, BLOCKED, LB_IP, 80) == ("DROP", "ns1/svc1:p80", "LoadBalancer")
    t = e.trace(BLOCKED, LB_IP, 80, "TCP", sport=7, now=0.0)
    assert t.chains == ["filter-prerouting-pre-dnat", "firewall-check", fw], str(t)
    assert verdict(e, EXTERNAL, LB_IP, 80) == ("REJECT", "ns1/svc1:p80", "LoadBalancer")
    t = e.trace(EXTERNAL, LB_IP, 80, "TCP", sport=7, now=0.0)
    assert t.chains == ["filter-prerouting-pre-dnat", "firewall-check", fw, "nat-prerouting", "services",
                        "filter-forward", "service-endpoints-check", "reject-chain"], str(t)
    # the rules: firewall chain and firewall-ips element, and the no-endpoint REJECT
    text = e.render("nftables")
    assert f"add element ip kube-proxy firewall-ips {{ {LB_IP} . tcp . 80 : goto {fw} }}" in text
    assert f"add rule ip kube-proxy {fw} ip saddr != {{ 203.0.113.0/25 }} drop" in text
    # iptables mode: no KUBE-FW without endpoints, every source gets the REJECT
    ipt = make_engine(fw_cluster(False), node=NODE, cluster_cidr="10.0.0.0/8")
    assert ipt.lookup(BLOCKED, LB_IP, 80, "TCP", sport=7, now=0.0).verdict == "REJECT"


def test_firewall_with_endpoints(make_engine: Make) -> None:
    e = nft(make_engine, fw_cluster(True))
    assert verdict(e, BLOCKED, LB_IP, 80) == ("DROP", "ns1/svc1:p80", "LoadBalancer")
    base = svc_base("ns1", "svc1", "p80")
    check(e, EXTERNAL, LB_IP, 80, {"10.180.1.1:80"}, True)
    t = e.trace(EXTERNAL, LB_IP, 80, "TCP", sport=7, now=0.0)
    assert t.chains[:8] == ["filter-prerouting-pre-dnat", "firewall-check", f"firewall-{base}", "nat-prerouting",
                            "services", f"external-{base}", "mark-for-masquerade", f"service-{base}"], str(t)
    # eTP=Local without a local endpoint: blocked sources are dropped by the firewall, others by the filter map
    e = nft(make_engine, fw_cluster(True, externalTrafficPolicy="Local"))
    t = e.trace(BLOCKED, LB_IP, 80, "TCP", sport=7, now=0.0)
    assert t.verdict == "DROP" and t.chains[-1] == f"firewall-{base}", str(t)
    t = e.trace(EXTERNAL, LB_IP, 80, "TCP", sport=7, now=0.0)
    assert t.verdict == "DROP" and t.chains[-2:] == ["filter-forward", "service-endpoints-check"], str(t)


# --------------------------------------------------------------------------- 4. cluster-ips-check


def cip_cluster() -> list[dict[str, Any]]:
    return [
        node(NODE, NODE_IP, "fd00::2", pod_cidr="10.0.0.0/24"),
        service("ns1", "svc1", ["172.30.0.41", "fd00:30::41"], [port(80, "p80")]),
        slice_("ns1", "svc1", [ep("10.180.0.1", NODE)], [eport(80, "p80")]),
        slice_("ns1", "svc1", [ep("fd00:10::1", NODE)], [eport(80, "p80")], name="svc1-v6", family="IPv6"),
        service("ns1", "svc2", "172.30.0.42", [port(53, "dns", proto="UDP")]),  # no endpoints
    ]


CIDRS = "172.30.0.0/16,fd00:30::/112"


@pytest.mark.parametrize("src", [POD, NODE_IP, EXTERNAL])
def test_cluster_ips_check(make_engine: Make, src: str) -> None:
    e = nft(make_engine, cip_cluster(), service_cidrs=CIDRS)
    filt = "filter-output" if src == NODE_IP else "filter-forward"
    # a port that is no service port of the ClusterIP, or another protocol: rejected
    for dst, dport, proto, svc in (("172.30.0.41", 81, "TCP", "ns1/svc1:p80"),
                                   ("172.30.0.41", 80, "UDP", "ns1/svc1:p80"),
                                   ("172.30.0.42", 53, "TCP", "ns1/svc2:dns")):
        assert verdict(e, src, dst, dport, proto) == ("REJECT", svc, "ClusterIP")
        t = e.trace(src, dst, dport, proto, sport=7, now=0.0)
        assert t.chains[-2:] == [filt, "cluster-ips-check"] and t.candidates == [], str(t)
    # unallocated address inside the service CIDR: dropped
    assert verdict(e, src, "172.30.0.99", 80) == ("DROP", None, None)
    assert e.trace(src, "172.30.0.99", 80, "TCP", sport=7, now=0.0).chains[-1] == "cluster-ips-check"
    # outside the service CIDRs: left alone
    assert verdict(e, src, "172.31.0.99", 80) == ("PASS", None, None)
    # the service ports themselves still work, and svc2 (no endpoints) rejects on its own port
    assert verdict(e, src, "172.30.0.41", 80)[0] == "DNAT"
    assert verdict(e, src, "172.30.0.42", 53, "UDP") == ("REJECT", "ns1/svc2:dns", "ClusterIP")


def test_cluster_ips_check_ipv6(make_engine: Make) -> None:
    e = nft(make_engine, cip_cluster(), service_cidrs=CIDRS)
    assert verdict(e, "fd00:10::9", "fd00:30::41", 81) == ("REJECT", "ns1/svc1:p80", "ClusterIP")
    assert verdict(e, "fd00:10::9", "fd00:30::99", 80) == ("DROP", None, None)
    assert verdict(e, "fd00:10::9", "fd00:31::99", 80) == ("PASS", None, None)
    assert verdict(e, "fd00:10::9", "fd00:30::41", 80)[0] == "DNAT"


def test_cluster_ips_check_follows_the_rules(make_engine: Make) -> None:
    e = nft(make_engine, cip_cluster(), service_cidrs=CIDRS)
    text = e.render("nftables", family="IPv4")
    cips = re.findall(r"add element ip kube-proxy cluster-ips \{ (\S+) \}", text)
    assert sorted(cips) == ["172.30.0.41", "172.30.0.42"]
    assert 'ip daddr { 172.30.0.0/16 } drop comment "Drop traffic to unallocated ClusterIPs"' in text
    assert sorted(int(x) for x in e.tables["IPv4"].cip_addr) == sorted(int(ipaddress.ip_address(c)) for c in cips)
    # without service CIDRs, kube-proxy writes no drop rule: unallocated addresses pass
    e = nft(make_engine, cip_cluster())
    assert e.service_cidrs == ()
    assert verdict(e, POD, "172.30.0.99", 80) == ("PASS", None, None)
    assert verdict(e, POD, "172.30.0.41", 81)[0] == "REJECT"


def test_cluster_ips_check_from_service_cidr_objects(make_engine: Make) -> None:
    objs = [*cip_cluster(), {"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
                             "metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["172.30.0.0/24"]}}]
    e = nft(make_engine, objs)
    assert verdict(e, POD, "172.30.0.99", 80) == ("DROP", None, None)
    assert verdict(e, POD, "172.30.1.99", 80) == ("PASS", None, None)


def test_iptables_mode_has_no_cluster_ips_check(make_engine: Make) -> None:
    e = make_engine(cip_cluster(), node=NODE, cluster_cidr="10.0.0.0/8", service_cidrs=CIDRS)
    assert len(e.tables["IPv4"].cip_addr) == 0 and len(e.tables["IPv4"].scidr_prefix) == 0
    for dst, dport in (("172.30.0.41", 81), ("172.30.0.99", 80)):
        assert verdict(e, POD, dst, dport) == ("PASS", None, None)
    t = e.trace(POD, "172.30.0.41", 81, "TCP", sport=7, now=0.0)
    assert t.chains == ["KUBE-SERVICES"]


def test_cluster_ips_check_skips_the_node_and_flows(make_engine: Make) -> None:
    """cluster-ips-check hangs off forward/output only (not input); established flows keep going."""
    e = nft(make_engine, cip_cluster(), service_cidrs=CIDRS)
    assert verdict(e, POD, NODE_IP, 81) == ("PASS", None, None)
    d = e.lookup(POD, "172.30.0.41", 80, "TCP", sport=9, now=0.0)
    assert d.verdict == "DNAT"
    assert e.lookup(POD, "172.30.0.41", 80, "TCP", sport=9, now=1.0).verdict == "DNAT"


# --------------------------------------------------------------------------- 5. other differences


@pytest.mark.parametrize("src", [POD, NODE_IP, EXTERNAL, "10.180.0.1"])
def test_no_endpoints_reject(make_engine: Make, src: str) -> None:
    """service-endpoints-check hangs off filter-output too: the node's own packet to an
    external IP without endpoints is rejected (iptables mode lets it leave)."""
    e = nft(make_engine, no_endpoint_cluster())
    for dst, dport, fe in (("172.30.0.41", 80, "ClusterIP"), ("192.168.99.33", 80, "ExternalIP"),
                           (NODE_IP, 3001, "NodePort")):
        assert verdict(e, src, dst, dport) == ("REJECT", "ns1/svc1:p80", fe)
        t = e.trace(src, dst, dport, "TCP", sport=7, now=0.0)
        check_chain = "nodeport-endpoints-check" if fe == "NodePort" else "service-endpoints-check"
        assert t.chains[-2:] == [check_chain, "reject-chain"] and t.candidates == [], str(t)
        hook = "filter-input" if fe == "NodePort" else ("filter-output" if src == NODE_IP else "filter-forward")
        assert t.chains[-3] == hook, str(t)


def test_nodeport_outside_nodeport_addresses_is_not_rejected(make_engine: Make) -> None:
    """nodeport-endpoints-check matches NodePort addresses only; iptables' KUBE-EXTERNAL-SERVICES
    rejects the NodePort on every LOCAL address."""
    e = nft(make_engine, [*no_endpoint_cluster(), node(NODE, NODE_IP, NODE_IP2)])
    assert verdict(e, EXTERNAL, NODE_IP2, 3001) == ("PASS", None, None)
    assert verdict(e, EXTERNAL, NODE_IP, 3001)[0] == "REJECT"
    ipt = make_engine([*no_endpoint_cluster(), node(NODE, NODE_IP, NODE_IP2)], node=NODE,
                      nodeport_addresses=f"{NODE_IP}/32")
    assert ipt.lookup(EXTERNAL, NODE_IP2, 3001, "TCP", sport=7, now=0.0).verdict == "REJECT"


def test_etp_local_without_local_endpoints(make_engine: Make) -> None:
    objs = [node(NODE, NODE_IP, pod_cidr="10.0.0.0/24"), node("other-node", "192.168.0.3"),
            service("ns1", "svc1", "172.30.0.41", [port(80, "p80", node_port=3001)], type="NodePort",
                    externalTrafficPolicy="Local", externalIPs=["192.168.99.33"]),
            slice_("ns1", "svc1", [ep("10.180.1.1", "other-node")], [eport(80, "p80")])]
    e = nft(make_engine, objs)
    base = svc_base("ns1", "svc1", "p80")
    # outside clients: dropped by the no-endpoint maps after falling through external-<base>
    t = e.trace(EXTERNAL, NODE_IP, 3001, "TCP", sport=7, now=0.0)
    assert t.verdict == "DROP" and t.chains == ["nat-prerouting", "services", f"external-{base}", "filter-input",
                                                "nodeport-endpoints-check"], str(t)
    t = e.trace(EXTERNAL, "192.168.99.33", 80, "TCP", sport=7, now=0.0)
    assert t.verdict == "DROP" and t.chains[-2:] == ["filter-forward", "service-endpoints-check"], str(t)
    # pods and the node are short-circuited to service-<base>
    check(e, POD, NODE_IP, 3001, {"10.180.1.1:80"}, False)
    check(e, NODE_IP, NODE_IP, 3001, {"10.180.1.1:80"}, True)
    t = e.trace(POD, NODE_IP, 3001, "TCP", sport=7, now=0.0)
    assert t.chains[:4] == ["nat-prerouting", "services", f"external-{base}", f"service-{base}"], str(t)


def test_trace_chain_names_and_hairpin(make_engine: Make) -> None:
    e = nft(make_engine, masq_cluster())
    base = svc_base("ns1", "svc1", "p80")
    assert base == "ULMVA6XW-ns1/svc1/tcp/p80"  # NFTABLES.md §2.1
    ep_chain = "endpoint-" + endpoint_chain_name_base("ns1", "svc1", "TCP", "p80", "10.180.0.1:80")
    t = next(t for t in (e.trace("10.180.0.1", "172.30.0.41", 80, sport=s, now=0.0) for s in range(1000, 1200))
             if t.endpoint == "10.180.0.1:80")
    assert t.masquerade
    assert t.chains == ["nat-prerouting", "services", f"service-{base}", ep_chain, "mark-for-masquerade"], str(t)
    assert all(c["chain"].startswith("endpoint-") for c in t.candidates)
    assert {c["rule_probability"] for c in t.candidates} == {"numgen 0", "numgen 1"}
    # every chain named by a trace exists in the rendered ruleset
    text = e.render("nftables")
    for chain in t.chains:
        assert f"add chain ip kube-proxy {chain}" in text
    t = e.trace(EXTERNAL, NODE_IP, 3001, "TCP", sport=7, now=0.0)
    assert t.chains[:4] == ["nat-prerouting", "services", f"external-{base}", "mark-for-masquerade"], str(t)
    for chain in t.chains:
        if chain not in ("nat-prerouting", "services"):
            assert f"add chain ip kube-proxy {chain}" in text, chain


def test_session_affinity(make_engine: Make) -> None:
    objs = [node(NODE, NODE_IP),
            service("ns1", "svc1", "172.30.0.41", [port(80, "p80")], sessionAffinity="ClientIP",
                    sessionAffinityConfig={"clientIP": {"timeoutSeconds": 10}}),
            slice_("ns1", "svc1", [ep(f"10.180.0.{i}", NODE) for i in range(1, 5)], [eport(80, "p80")])]
    e = nft(make_engine, objs)
    first = e.lookup(POD, "172.30.0.41", 80, "TCP", sport=1, now=0.0).endpoint
    assert {e.lookup(POD, "172.30.0.41", 80, "TCP", sport=s, now=float(s)).endpoint for s in range(2, 9)} == {first}
    assert "timeout 10s" in e.render("nftables")
    t = e.trace(POD, "172.30.0.41", 80, "TCP", sport=99, now=9.0)
    assert t.endpoint == f"{first[0]}:{first[1]}" and any("affinity" in s for s in t.steps)


# --------------------------------------------------------------------------- §8 rows that still hold


@pytest.mark.parametrize(("source", "kind", "svc", "expect", "masq"),
                         [r for r in ROWS if r[0] != "localhost"])
def test_table_row(make_engine: Make, source: str, kind: str, svc: int, expect: set[str], masq: bool) -> None:
    e = nft(make_engine, masq_cluster())
    src = SOURCES[source]
    dst, dport = _dst(kind, svc, src)
    check(e, src, dst, dport, expect, masq)


def test_localhost_rows_do_not_hold(make_engine: Make) -> None:
    e = nft(make_engine, masq_cluster())
    for svc in (1, 2, 3):
        assert verdict(e, LOCALHOST, LOCALHOST, 3000 + svc) == ("PASS", None, None)


# --------------------------------------------------------------------------- twins agree


@st.composite
def nft_cases(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[tuple[str, str, int, str]]]:
    objs: list[dict[str, Any]] = [node(NODE, NODE_IP, NODE_IP2, "fd00::2", pod_cidr="10.0.0.0/24"),
                                  node("other-node", "192.168.0.3", "fd00::3")]
    for i in range(draw(st.integers(1, 4))):
        typ = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
        proto = draw(st.sampled_from(["TCP", "UDP"]))
        spec: dict[str, Any] = {}
        if typ != "ClusterIP":
            spec["externalTrafficPolicy"] = draw(st.sampled_from(["Cluster", "Local"]))
        spec["internalTrafficPolicy"] = draw(st.sampled_from(["Cluster", "Local"]))
        if typ == "LoadBalancer" and draw(st.booleans()):
            spec["loadBalancerSourceRanges"] = draw(st.lists(
                st.sampled_from(["203.0.113.0/25", "192.168.0.0/24", "10.0.0.0/8", "fd00::/64"]), min_size=1,
                max_size=2))
        if draw(st.booleans()):
            spec["externalIPs"] = [f"192.168.99.{i + 1}"]
        svc = service("ns", f"s{i}", [f"172.30.0.{i + 1}", f"fd00:30::{i + 1}"],
                      [port(80, "p", proto, node_port=3000 + i if typ != "ClusterIP" else None)], type=typ, **spec)
        if typ == "LoadBalancer":
            lb(svc, f"9.10.11.{i + 1}", f"fd00:98::{i + 1}")
        objs.append(svc)
        for fam, fmt in (("IPv4", "10.180.{}.{}"), ("IPv6", "fd00:10::{}:{}")):
            eps = [ep(fmt.format(k, i + 1), draw(st.sampled_from([NODE, "other-node"])), ready=draw(st.booleans()))
                   for k in range(draw(st.integers(0, 3)))]
            if eps:
                objs.append(slice_("ns", f"s{i}", eps, [eport(80, "p", proto)], name=f"s{i}-{fam}", family=fam))
    v4 = [NODE_IP, NODE_IP2, POD, EXTERNAL, BLOCKED, LOCALHOST, "172.30.0.1", "172.30.0.2", "172.30.0.99",
          "172.31.0.1", "9.10.11.1", "192.168.99.1", "10.180.0.1"]
    v6 = ["fd00::2", "::1", "fd00:30::1", "fd00:30::99", "fd00:98::1", "2001:db8::1", "fd00:10::0:1"]
    rows: list[tuple[str, str, int, str]] = []
    for _ in range(draw(st.integers(5, 25))):
        addrs = draw(st.sampled_from([v4, v6]))
        rows.append((draw(st.sampled_from(addrs)), draw(st.sampled_from(addrs)),
                     draw(st.sampled_from([80, 81, 3000, 3001])), draw(st.sampled_from(["TCP", "UDP"]))))
    return objs, rows


@pytest.mark.skipif(bool(os.environ.get("KPROXY_NO_EXTENSIONS")), reason="KPROXY_NO_EXTENSIONS is set")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=nft_cases(), cidrs=st.sampled_from([None, CIDRS]), np_addrs=st.sampled_from([None, "0.0.0.0/0,::/0"]))
def test_twins_agree_in_nftables_mode(
    case: tuple[list[dict[str, Any]], list[tuple[str, str, int, str]]], cidrs: str | None, np_addrs: str | None
) -> None:
    objs, rows = case
    cluster = kp.Cluster.from_objects(objs)
    engines = [kp.Engine(cluster, node=NODE, cluster_cidr="10.0.0.0/8,fd00:10::/64", mode="nftables", seed=5,
                         impl=impl, service_cidrs=cidrs, nodeport_addresses=np_addrs)
               for impl in ("compiled", "python")]
    for i, (src, dst, dport, proto) in enumerate(rows):
        r = (src, dst, dport, proto)
        a, b = (e.lookup(src, dst, dport, proto, sport=i, now=float(i)) for e in engines)
        assert (a.verdict, a.service, a.frontend, a.endpoint, a.masquerade) == (
            b.verdict, b.service, b.frontend, b.endpoint, b.masquerade), r
        ta, tb = (e.trace(src, dst, dport, proto, sport=i, now=float(i)) for e in engines)
        assert ta.to_dict() == tb.to_dict()
        assert ta.verdict == a.verdict and ta.service == a.service

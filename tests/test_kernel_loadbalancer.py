"""The Linux kernel as the oracle for LoadBalancer Services, in iptables and nftables mode.

The LoadBalancer plugin (kproxy_core/plugins/loadbalancer.py) feeds the plan's ``lb_ips`` and
``source_ranges``; here the rendered rules run in a node namespace (the oracles of
test_kernel_iptables.py and test_kernel_nftables.py) and every probe is compared with both
engine twins: verdict, endpoint among the traced candidates, masquerade as the endpoint saw it.
Each probe also states the verdict kube-proxy is documented to give (KUBE-PROXY.md §3.1, §5,
§6.3 steps 3-6 and 9, §8; NFTABLES.md §2.2-§2.5), so the comparison cannot pass vacuously.

Two kinds of VIPs, as clusters have them (manifests shaped as kubectl prints them:
``status.loadBalancer.ingress: [{ip: ..., ipMode: VIP}]``):

- *local* VIPs, addresses of the node namespace itself (kube-vip in ARP mode puts the VIP on
  the node's interface). The Node object does not list them, as in a real cluster, so the
  engine cannot know that the kernel counts them as LOCAL. A connection of the node to its
  own local VIP comes *from* the VIP, which is why kube-proxy's firewall lets the VIP through
  as a source when a source range holds the node IP;
- *routed* VIPs, only routed to the node (to a sink that owns the range and answers on the
  service ports, so a packet the rules leave alone is seen to pass).

Clients: a pod, two external namespaces (``allowed`` inside the source ranges, ``external``
outside), the node binding its second address (``node``), its primary address
(``node-primary``) or letting the kernel pick (``node-auto``: the VIP itself for a local VIP).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from k8s import ep, eport, lb, node, port, service, slice_
from netns import SINK_LABEL, Probe, Reply, Topology, topology, unavailable_reason
from test_kernel_iptables import (
    CLUSTER_CIDR,
    EXTERNAL_IPS,
    NODE,
    NODE_IPS,
    NODE_LABEL,
    OTHER,
    POD_CLIENT,
    SERVICE_CIDR,
    Oracle,
    Sources,
    describe,
    kernel_masquerades,
    kernel_verdict,
)
from test_kernel_iptables import build_oracle as build_oracle_iptables
from test_kernel_nftables import build_oracle as build_oracle_nftables

pytestmark = pytest.mark.slow

MODES = ("iptables", "nftables")
ALLOWED = "198.51.100.2"  # inside every source range below
BLOCKED = "203.0.113.2"  # outside all of them
LOCAL_LBS = "192.168.98.0/24"  # VIPs that are addresses of the node
ROUTED_LBS = "192.168.97.0/24"  # VIPs routed to the node (the sink owns them)
HEALTH_CHECK = 32002
NODE_SERVER_PORTS = (80, 443, 30008, HEALTH_CHECK)  # the node's own server: PASS is visible there


@pytest.fixture(scope="module", autouse=True)
def _kernel_available() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)


def require(mode: str) -> None:
    tool = "nft" if mode == "nftables" else "iptables-restore"
    if shutil.which(tool) is None:
        pytest.skip(f"{mode} ('{tool}') is not installed")


def build(mode: str, topo: Topology, objs: list[dict[str, Any]], **kw: Any) -> Oracle:
    return (build_oracle_nftables if mode == "nftables" else build_oracle_iptables)(topo, objs, **kw)


# --------------------------------------------------------------------------- manifests


def vip(ip: str, mode: str = "VIP") -> dict[str, str]:
    return {"ip": ip, "ipMode": mode}


def lb_service(name: str, cluster_ip: str, ports: list[dict[str, Any]], ingress: list[dict[str, str]],
               **spec: Any) -> dict[str, Any]:
    """A type LoadBalancer Service as the API server stores it (defaults filled in)."""
    spec.setdefault("externalTrafficPolicy", "Cluster")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    spec.setdefault("allocateLoadBalancerNodePorts", True)
    spec.setdefault("sessionAffinity", "None")
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    return lb(service("ns1", name, cluster_ip, ports, type="LoadBalancer", **spec), *ingress)


def local_vip(i: int) -> str:
    return f"192.168.98.{i}"


def routed_vip(i: int) -> str:
    return f"192.168.97.{i}"


def cip(i: int) -> str:
    return f"172.30.0.{40 + i}"


LOCAL_VIPS = tuple(local_vip(i) for i in range(1, 11))


def both(i: int) -> list[dict[str, str]]:
    return [vip(local_vip(i)), vip(routed_vip(i))]


def eps(i: int, local: bool = True, remote: bool = True) -> list[dict[str, Any]]:
    return [ep(f"10.180.0.{i}", NODE)] * local + [ep(f"10.180.1.{i}", OTHER)] * remote


def cluster4() -> list[dict[str, Any]]:
    """svc1 eTP=Cluster; svc2 eTP=Local with a health check port; svc3 source ranges holding the
    node IP, svc4 source ranges without it (and with the pods' range); svc5 no endpoints; svc6
    only ipMode Proxy entries; svc7 a hostname-only entry; svc8 allocateLoadBalancerNodePorts
    false (port p without a NodePort, port q with an explicit one); svc9 eTP=Local with a remote
    endpoint only; svc10 UDP with source ranges. Endpoints: 10.180.0.i here, 10.180.1.i elsewhere."""
    objs: list[dict[str, Any]] = [
        node(NODE, *NODE_IPS, pod_cidr="10.0.0.0/24"),
        node(OTHER, "192.168.0.3", pod_cidr="10.0.1.0/24"),
    ]

    def add(i: int, ingress: list[dict[str, str]], endpoints: list[dict[str, Any]], proto: str = "TCP",
            **spec: Any) -> None:
        p, tp = (53, 5353) if proto == "UDP" else (80, 8080)
        objs.append(lb_service(f"svc{i}", cip(i), [port(p, "p", proto, node_port=30000 + i)], ingress, **spec))
        if endpoints:
            objs.append(slice_("ns1", f"svc{i}", endpoints, [eport(tp, "p", proto)]))

    add(1, both(1), eps(1))
    add(2, both(2), eps(2), externalTrafficPolicy="Local", healthCheckNodePort=HEALTH_CHECK)
    add(3, both(3), eps(3), loadBalancerSourceRanges=["198.51.100.0/24", f"{NODE_IPS[0]}/32"])
    add(4, both(4), eps(4), loadBalancerSourceRanges=[" 198.51.100.0/24 ", "10.0.0.0/24"])
    add(5, both(5), [])
    add(6, [vip(local_vip(6), "Proxy"), vip(routed_vip(6), "Proxy")], eps(6))
    add(7, [{"hostname": "lb7.example.com"}], eps(7))
    add(9, both(9), eps(9, local=False), externalTrafficPolicy="Local", healthCheckNodePort=32009)
    add(10, both(10), eps(10), proto="UDP", loadBalancerSourceRanges=["198.51.100.0/24"])
    objs.append(lb_service("svc8", cip(8), [port(80, "p"), port(443, "q", node_port=30018)], both(8),
                           allocateLoadBalancerNodePorts=False))
    objs.append(slice_("ns1", "svc8", eps(8), [eport(8080, "p"), eport(8443, "q")]))
    return objs


# --------------------------------------------------------------------------- cases


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    source: str
    dst: str
    dport: int
    verdict: str  # what the kernel does (iptables mode, and nftables mode unless ``nft``)
    expect: frozenset[str] | None = None  # the endpoints that answer
    masq: bool | None = None  # whether the endpoints saw the masquerade address
    proto: str = "TCP"
    nft: str | None = None  # the nftables verdict where it differs
    only: str | None = None  # the one mode the case is about

    def verdict_in(self, mode: str) -> str:
        return self.nft if mode == "nftables" and self.nft is not None else self.verdict


def all_(i: int, p: int = 8080) -> frozenset[str]:
    return frozenset({f"10.180.0.{i}:{p}", f"10.180.1.{i}:{p}"})


def local(i: int) -> frozenset[str]:
    return frozenset({f"10.180.0.{i}:8080"})


def remote(i: int) -> frozenset[str]:
    return frozenset({f"10.180.1.{i}:8080"})


def c(name: str, source: str, dst: str, dport: int, verdict: str, expect: frozenset[str] | None = None,
      masq: bool | None = None, **kw: Any) -> Case:
    return Case(f"{source}-{name}", source, dst, dport, verdict, expect, masq, **kw)


def vips(i: int) -> list[tuple[str, str]]:
    return [("local", local_vip(i)), ("routed", routed_vip(i))]


# A VIP on the node's interface is LOCAL to the kernel (addrtype LOCAL / fib type local): the
# engine knows it through local_addresses=. Before it did (regression): the node's own connection
# from such a VIP was an external source to the engine, a NodePort on it was PASS, and a packet to
# it without endpoints left the node instead of looping through INPUT to be rejected.


CASES4: list[Case] = [
    # svc1, eTP=Cluster: every source reaches every endpoint, masqueraded, on both kinds of VIP
    *(c(f"{k}-svc1", s, ip, 80, "DNAT", all_(1), True)
      for k, ip in vips(1) for s in ("allowed", "external", "pod", "node", "node-primary")),
    c("local-svc1", "node-auto", local_vip(1), 80, "DNAT", all_(1), True),
    # iptables' NodePort tail rule matches any LOCAL destination, a local VIP too (nftables mode
    # serves NodePorts on the node's primary address only)
    c("local-vip-nodeport-svc1", "external", local_vip(1), 30001, "DNAT", all_(1), True, only="iptables"),
    # svc2, eTP=Local: external clients reach this node's endpoint with their own address; pods reach
    # every endpoint unmasqueraded; the node every endpoint, masqueraded (from its local VIP too)
    *(c(f"{k}-svc2", s, ip, 80, "DNAT", local(2), False) for k, ip in vips(2) for s in ("allowed", "external")),
    *(c(f"{k}-svc2", "pod", ip, 80, "DNAT", all_(2), False) for k, ip in vips(2)),
    *(c(f"{k}-svc2", s, ip, 80, "DNAT", all_(2), True) for k, ip in vips(2) for s in ("node", "node-primary")),
    c("local-svc2", "node-auto", local_vip(2), 80, "DNAT", all_(2), True),
    c("health-check-svc2", "external", NODE_IPS[0], HEALTH_CHECK, "PASS"),
    # svc3, source ranges holding the node IP: the allowed client in, the other client, pods and the
    # node's second address dropped; the node IP in, and the node from its local VIP (the node-IP
    # exception); the NodePort ignores the ranges
    *(c(f"{k}-svc3", s, ip, 80, "DNAT", all_(3), True) for k, ip in vips(3) for s in ("allowed", "node-primary")),
    *(c(f"{k}-svc3", s, ip, 80, "DROP") for k, ip in vips(3) for s in ("external", "pod", "node")),
    c("local-svc3", "node-auto", local_vip(3), 80, "DNAT", all_(3), True),
    c("nodeport-svc3", "external", NODE_IPS[0], 30003, "DNAT", all_(3), True),
    # svc4, source ranges with the pods' range but not the node IP: pods in, the node out from
    # every address, its local VIP included
    *(c(f"{k}-svc4", s, ip, 80, "DNAT", all_(4), True) for k, ip in vips(4) for s in ("allowed", "pod")),
    *(c(f"{k}-svc4", s, ip, 80, "DROP") for k, ip in vips(4) for s in ("external", "node", "node-primary")),
    c("local-svc4", "node-auto", local_vip(4), 80, "DROP"),
    # svc5, no endpoints: rejected, except the node's own packet to a routed VIP in iptables mode
    # (KUBE-EXTERNAL-SERVICES hangs off INPUT and FORWARD); to its local VIP it loops through INPUT
    *(c(f"{k}-svc5", s, ip, 80, "REJECT") for k, ip in vips(5) for s in ("external", "pod")),
    c("routed-svc5", "node", routed_vip(5), 80, "PASS", nft="REJECT"),
    c("local-svc5", "node", local_vip(5), 80, "REJECT"),
    # svc6 (ipMode Proxy only) and svc7 (hostname only): no VIP rules; the NodePort and ClusterIP work
    *(c(f"{k}-svc{i}", "external", local_vip(i) if k == "local" else routed_vip(i), 80, "PASS")
      for i in (6, 7) for k in ("local", "routed")),
    *(c(f"nodeport-svc{i}", "external", NODE_IPS[0], 30000 + i, "DNAT", all_(i), True) for i in (6, 7)),
    *(c(f"cluster-ip-svc{i}", "pod", cip(i), 80, "DNAT", all_(i)) for i in (6, 7)),
    # svc8, allocateLoadBalancerNodePorts false: the VIPs work on both ports; port p has no NodePort
    # (the node's own server answers 30008), port q keeps its explicit 30018
    *(c(f"{k}-svc8", "external", ip, 80, "DNAT", all_(8), True) for k, ip in vips(8)),
    *(c(f"{k}-svc8-q", "external", ip, 443, "DNAT", all_(8, 8443), True) for k, ip in vips(8)),
    c("nodeport-svc8", "external", NODE_IPS[0], 30008, "PASS"),
    c("nodeport-svc8-q", "external", NODE_IPS[0], 30018, "DNAT", all_(8, 8443), True),
    # svc9, eTP=Local with a remote endpoint only: external clients dropped, pods and the node served
    *(c(f"{k}-svc9", "external", ip, 80, "DROP") for k, ip in vips(9)),
    *(c(f"{k}-svc9", "pod", ip, 80, "DNAT", remote(9), False) for k, ip in vips(9)),
    *(c(f"{k}-svc9", "node", ip, 80, "DNAT", remote(9), True) for k, ip in vips(9)),
    c("local-svc9", "node-auto", local_vip(9), 80, "DNAT", remote(9), True),
    # svc10, UDP with source ranges
    *(c(f"{k}-svc10", "allowed", ip, 53, "DNAT", all_(10, 5353), True, proto="UDP") for k, ip in vips(10)),
    *(c(f"{k}-svc10", "external", ip, 53, "DROP", proto="UDP") for k, ip in vips(10)),
]


def params(cases: list[Case]) -> list[Any]:
    return [pytest.param(case, id=f"{case.name}-{case.proto}") for case in cases]


# --------------------------------------------------------------------------- running


@dataclasses.dataclass
class Run:
    mode: str
    oracle: Oracle
    replies: dict[Case, tuple[Probe, list[Reply]]]
    local_vips: tuple[str, ...]


def run_cases(oracle: Oracle, cases: list[Case]) -> dict[Case, tuple[Probe, list[Reply]]]:
    """Every case's probe at once (cases are independent: fresh source ports, no affinity)."""
    probes = [(k.source, oracle.probe_for(k.source, k.dst, k.dport, k.proto, count=24)) for k in cases]
    replies = oracle.run(probes)
    return {k: (probe, r) for k, (_, probe), r in zip(cases, probes, replies, strict=True)}


def add_node_clients(oracle: Oracle, primary: str, second: str) -> None:
    """The node as a client from its primary (the node IP) and its second address, explicitly
    (build_oracle's "node" binds whichever one is not the masquerade source)."""
    oracle.clients["node-primary"] = ("node", primary)
    oracle.clients["node"] = ("node", second)


@pytest.fixture(scope="module")
def v4(request: pytest.FixtureRequest) -> Iterator[Run]:
    mode = request.param
    require(mode)
    objs = cluster4()
    sources = Sources(pods={"pod": POD_CLIENT}, externals={"allowed": ALLOWED, "external": BLOCKED})
    with topology(NODE_IPS, tag=f"lb{mode[0]}") as topo:
        topo.add_node_addresses(*LOCAL_VIPS)
        # the VIPs on the node's interface are local to the kernel: the engine is told so
        oracle = build(mode, topo, objs, sources=sources, routes=(SERVICE_CIDR, EXTERNAL_IPS, ROUTED_LBS),
                       local_addresses=LOCAL_VIPS)
        topo.start_servers({"node": (NODE_SERVER_PORTS, ())}, label=NODE_LABEL)
        add_node_clients(oracle, NODE_IPS[0], NODE_IPS[1])
        yield Run(mode, oracle, run_cases(oracle, CASES4), LOCAL_VIPS)


def deselect(params: dict[str, Any]) -> bool:
    """A case about one mode is not collected in the other (tests/conftest.py asks)."""
    case, mode = params.get("case"), params.get("v4", params.get("v6"))
    return isinstance(case, Case) and case.only not in (None, mode)


def check_case(request: pytest.FixtureRequest, run: Run, case: Case) -> None:
    assert case.only in (None, run.mode), "deselect() leaves a case only in its mode"
    probe, replies = run.replies[case]
    verdict = case.verdict_in(run.mode)
    # the kernel does what kube-proxy is documented to do ...
    assert {kernel_verdict(r) for r in replies} == {verdict}, describe(replies)
    if verdict == "PASS":  # the node's own server for its own addresses, else the sink
        own = case.dst in run.oracle.topo.node_ips or case.dst in run.local_vips
        assert {r.endpoint for r in replies} == {f"{NODE_LABEL if own else SINK_LABEL}:{case.dport}"}, describe(replies)
    if case.expect is not None and verdict == "DNAT":
        assert {r.endpoint for r in replies} == case.expect, describe(replies)
    if case.masq is not None and verdict == "DNAT" and replies[0].src != run.oracle.masq_source:
        # (from the masquerade address itself the rewrite is invisible)
        assert {kernel_masquerades(r) for r in replies} == {case.masq}, describe(replies)
    # ... and so does the engine, both twins
    run.oracle.check(case.source, probe, replies, expect_all=True)


@pytest.mark.parametrize("case", params(CASES4))
@pytest.mark.parametrize("v4", MODES, indirect=True)
def test_loadbalancer(request: pytest.FixtureRequest, v4: Run, case: Case) -> None:
    check_case(request, v4, case)


def test_node_auto_source_is_the_local_vip() -> None:
    """The setup the node-IP exception is about: without a bound address, the node's connection
    to its local VIP comes from the VIP; to a routed one from the node IP."""
    with topology(NODE_IPS, tag="lbsrc") as topo:
        topo.add_node_addresses(local_vip(1))
        topo.route_to_node(ROUTED_LBS)
        assert topo.source_address(local_vip(1)) == local_vip(1)
        assert topo.source_address(routed_vip(1)) == NODE_IPS[0]


# --------------------------------------------------------------------------- the loaded rules

FIREWALL_CHAIN = r"chain firewall-[A-Z2-7]{8}-\S+ \{(.*?)\n\t\}"  # per-service firewall chains of ``nft list``


@pytest.mark.parametrize("v4", MODES, indirect=True)
def test_loaded_rules(v4: Run) -> None:
    """What is (not) in the kernel: the health check ACCEPT rule (iptables only), no NodePort for
    port p of svc8, no VIP rules for ipMode Proxy / hostname-only, the node-IP exception's VIP
    sources in svc3's firewall and not in svc4's, svc4's range trimmed."""
    topo = v4.oracle.topo
    if v4.mode == "iptables":
        text = topo.iptables_save()
        assert (f'-A KUBE-NODEPORTS -p tcp -m comment --comment "ns1/svc2:p health check node port" '
                f"-m tcp --dport {HEALTH_CHECK} -j ACCEPT") in text.splitlines(), text
        assert "--dport 32009 -j ACCEPT" in text  # svc9's health check port, remote endpoints only
        for svc in (1, 3, 4, 5, 6, 10):
            assert f'"ns1/svc{svc}:p health check node port"' not in text
        fw3 = [ln for ln in text.splitlines() if ln.startswith("-A KUBE-FW-") and "ns1/svc3:p" in ln]
        fw4 = [ln for ln in text.splitlines() if ln.startswith("-A KUBE-FW-") and "ns1/svc4:p" in ln]
        assert any(f"-s {local_vip(3)}/32 " in ln for ln in fw3), fw3
        assert any(f"-s {routed_vip(3)}/32 " in ln for ln in fw3), fw3
        assert not any(f"-s {local_vip(4)}/32 " in ln for ln in fw4), fw4
        assert any("-s 198.51.100.0/24 " in ln for ln in fw4), fw4
        assert sum("ns1/svc3:p traffic not accepted by KUBE-FW-" in ln for ln in text.splitlines()) == 2
    else:
        text = topo.nft_list("table ip kube-proxy")
        assert str(HEALTH_CHECK) not in text and "32009" not in text  # no health check rules (NFTABLES.md §6)
        firewalls = re.findall(FIREWALL_CHAIN, text, re.S)
        fw3 = next(b for b in firewalls if local_vip(3) in b)
        assert routed_vip(3) in fw3 and NODE_IPS[0] in fw3, fw3
        fw4 = next(b for b in firewalls if "10.0.0.0/24" in b)
        assert local_vip(4) not in fw4 and routed_vip(4) not in fw4 and "198.51.100.0/24" in fw4, fw4
    # port p of svc8 has no NodePort; port q keeps 30018; no trace of ipMode Proxy VIPs
    assert "30008" not in text and "30018" in text
    for ip in (local_vip(6), routed_vip(6)):
        assert ip not in text, ip
    assert "svc7:p loadbalancer IP" not in text


# --------------------------------------------------------------------------- IPv6

NODE6 = "2001:db8::2"  # the IPv6 node IP (inside svc1's source ranges)
NODE6_2 = "2001:db8::3"
V6_CIDR = "fd00:10::/64"
V6_SERVICE_CIDR = "fd00:30::/112"
ROUTED6 = "2001:db8:97::/64"
SINK6 = "2001:db8:ff::1"
ALLOWED6 = "2001:db8:1::2"
BLOCKED6 = "2001:db8:2::2"


def local6(i: int) -> str:
    return f"2001:db8:98::{i}"


def routed6(i: int) -> str:
    return f"2001:db8:97::{i}"


def cluster6() -> list[dict[str, Any]]:
    """svc1 eTP=Cluster, source ranges holding the node IP; svc2 eTP=Local, source ranges without
    it. Each with a local and a routed VIP, an endpoint here and one elsewhere."""
    objs: list[dict[str, Any]] = [node(NODE, NODE_IPS[0], NODE6, NODE6_2), node(OTHER, "192.168.0.3")]
    for i, ranges, spec in (
        (1, ["2001:db8:1::/64", f"{NODE6}/128"], {}),
        (2, ["2001:db8:1::/64"], {"externalTrafficPolicy": "Local", "healthCheckNodePort": HEALTH_CHECK}),
    ):
        objs.append(lb_service(f"svc{i}", f"fd00:30::{40 + i}", [port(80, "p", node_port=30000 + i)],
                               [vip(local6(i)), vip(routed6(i))], loadBalancerSourceRanges=ranges, **spec))
        objs.append(slice_("ns1", f"svc{i}", [ep(f"fd00:10::{i}:a", NODE), ep(f"fd00:10::{i}:b", OTHER)],
                           [eport(8080, "p")], family="IPv6"))
    return objs


def all6(i: int) -> frozenset[str]:
    return frozenset({f"[fd00:10::{i}:a]:8080", f"[fd00:10::{i}:b]:8080"})


def vips6(i: int) -> list[tuple[str, str]]:
    return [("local", local6(i)), ("routed", routed6(i))]


CASES6: list[Case] = [
    # svc1: the allowed client in (masqueraded); the other client, pods and the node's second address
    # dropped; the node IP allowed, and the node's own connection to its local VIP (from the VIP) too,
    # by the node-IP exception
    *(c(f"{k}-svc1", s, ip, 80, "DNAT", all6(1), True) for k, ip in vips6(1) for s in ("allowed", "node-primary")),
    *(c(f"{k}-svc1", s, ip, 80, "DROP") for k, ip in vips6(1) for s in ("external", "pod", "node")),
    c("local-svc1", "node-auto", local6(1), 80, "DNAT", all6(1), True),
    # svc2, eTP=Local: the allowed client reaches this node's endpoint only, unmasqueraded; everything
    # else is outside the ranges, the node's own connections too (no node-IP exception)
    *(c(f"{k}-svc2", "allowed", ip, 80, "DNAT", frozenset({"[fd00:10::2:a]:8080"}), False) for k, ip in vips6(2)),
    *(c(f"{k}-svc2", s, ip, 80, "DROP") for k, ip in vips6(2) for s in ("external", "pod", "node", "node-primary")),
    c("local-svc2", "node-auto", local6(2), 80, "DROP"),
    # the sink answers on a routed VIP nobody uses: the DROPs above are the firewall's, not a black hole
    c("unused-routed-vip", "external", routed6(9), 80, "PASS"),
]


@pytest.fixture(scope="module")
def v6(request: pytest.FixtureRequest) -> Iterator[Run]:
    mode = request.param
    require(mode)
    objs = cluster6()
    sources = Sources(pods={"pod": "fd00:10::2"}, externals={"allowed": ALLOWED6, "external": BLOCKED6})
    with topology([NODE6, NODE6_2], tag=f"lb6{mode[0]}") as topo:
        topo.add_node_addresses(local6(1), local6(2))
        oracle = build(mode, topo, objs, sources=sources, family="IPv6", routes=(V6_SERVICE_CIDR,),
                       cluster_cidr=[CLUSTER_CIDR, V6_CIDR], service_cidrs=[SERVICE_CIDR, V6_SERVICE_CIDR],
                       local_addresses=[local6(1), local6(2)])
        topo.add_sink([ROUTED6], {80}, (), ip=SINK6)  # a routed VIP left alone would be answered
        add_node_clients(oracle, NODE6, NODE6_2)
        yield Run(mode, oracle, run_cases(oracle, CASES6), (local6(1), local6(2)))


@pytest.mark.parametrize("case", params(CASES6))
@pytest.mark.parametrize("v6", MODES, indirect=True)
def test_loadbalancer_ipv6(request: pytest.FixtureRequest, v6: Run, case: Case) -> None:
    check_case(request, v6, case)


@pytest.mark.parametrize("v6", MODES, indirect=True)
def test_loaded_rules_ipv6(v6: Run) -> None:
    """The IPv6 node-IP exception as loaded: svc1's firewall lets its VIPs through as /128 sources,
    svc2's does not."""
    topo = v6.oracle.topo
    if v6.mode == "iptables":
        lines = topo.iptables_save("IPv6").splitlines()
        fw1 = [ln for ln in lines if ln.startswith("-A KUBE-FW-") and "ns1/svc1:p" in ln]
        fw2 = [ln for ln in lines if ln.startswith("-A KUBE-FW-") and "ns1/svc2:p" in ln]
        for ip in (local6(1), routed6(1)):
            assert any(f"-s {ip}/128 " in ln for ln in fw1), fw1
        assert not any(f"-s {local6(2)}/128 " in ln for ln in fw2) and fw2, fw2
    else:
        text = topo.nft_list("table ip6 kube-proxy")
        firewalls = re.findall(FIREWALL_CHAIN, text, re.S)
        assert len(firewalls) == 2, text
        fw1 = next(b for b in firewalls if NODE6 in b)
        fw2 = next(b for b in firewalls if NODE6 not in b)
        assert local6(1) in fw1 and routed6(1) in fw1, fw1
        assert local6(2) not in fw2 and routed6(2) not in fw2, fw2

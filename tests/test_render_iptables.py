"""kproxy_core.render.iptables against kube-proxy's own expected iptables-restore input.

The acceptance cases are full-output dumps transcribed from kube-proxy's
pkg/proxy/iptables/proxier_test.go (tests/data/iptables/<Case>.txt, each headed by a
comment naming the test and the version it was taken from), with the Go test's
objects translated to manifests (<Case>.yaml). Each case loads the manifests, builds
the plan exactly as the Go fake proxier is configured (node test-node, cluster CIDR
10.0.0.0/8 or fd00:10::/64 unless the test uses a no-op local detector, masquerade
bit 14 spelled ``0x4000``, nfacct counters as in that version), renders, normalises
like ``sortIPTablesRules`` and compares with the expected text exactly, after the
``strings.TrimLeft(expected, " \\t\\n")`` of ``assertIPTablesRulesEqual``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kproxy_core as kp
from kproxy_core.chains import hash16
from kproxy_core.plan import ProxyPlan, build_plan, make_config
from kproxy_core.render.iptables import (
    LARGE_CLUSTER_ENDPOINTS_THRESHOLD,
    IptablesOptions,
    compute_probability,
    normalize_like_kube_proxy_tests,
    render_iptables,
    to_iptables_save,
)

DATA = Path(__file__).parent / "data" / "iptables"
CURRENT = "531be812"  # kubernetes/kubernetes commit 531be81208e2274ef42e72525a26610a9622bcdf
OLDER = "older"  # the older proxier_test.go (no nfacct, testHostname); KUBE-PROXY.md §0

V4_CIDR = "10.0.0.0/8"
V6_CIDR = "fd00:10::/64"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str  # <name>.txt holds the expected dump
    inputs: str  # <inputs>.yaml holds the objects
    version: str = OLDER
    family: str = "IPv4"
    cluster_cidr: str | None = f"{V4_CIDR},{V6_CIDR}"  # None: NewNoOpLocalDetector()
    nodeport_addresses: tuple[str, ...] | None = None
    localhost_nodeports: bool = True
    random_fully: bool = False

    @property
    def options(self) -> IptablesOptions:
        return IptablesOptions(
            masquerade_bit=14,
            mark_format="test",
            nfacct=self.version == CURRENT,  # both counters exist in the current fake
            random_fully=self.random_fully,
        )


NODEPORT_CIDRS = ("192.168.0.0/24", "2001:db8::/64")


def _same(name: str) -> Case:
    """A case whose inputs file is named like the case."""
    return Case(name, name)


CASES = [
    # current proxier_test.go
    Case("TestOverallIPTablesRules", "TestOverallIPTablesRules", CURRENT),
    Case("TestSyncProxyRulesRepeated", "TestSyncProxyRulesRepeated", CURRENT),
    Case("TestBadIPs", "TestBadIPs", CURRENT),
    # older proxier_test.go
    Case("TestOverallIPTablesRulesWithMultipleServices", "TestOverallIPTablesRulesWithMultipleServices"),
    Case("TestLoadBalancer", "TestLoadBalancer"),
    Case("TestNodePort", "TestNodePort"),
    Case("TestHealthCheckNodePort", "TestHealthCheckNodePort", nodeport_addresses=("127.0.0.0/8",)),
    Case("TestMasqueradeRule__randomFully_false", "TestMasqueradeRule", random_fully=False),
    Case("TestMasqueradeRule__randomFully_true", "TestMasqueradeRule", random_fully=True),
    Case("TestExternalTrafficPolicyLocal", "TestExternalTrafficPolicyLocal"),
    Case("TestNonLocalExternalIPs", "TestNonLocalExternalIPs"),
    Case("TestEnableLocalhostNodePortsIPv4", "TestEnableLocalhostNodePortsIPv4", cluster_cidr=None),
    Case(
        "TestDisableLocalhostNodePortsIPv4", "TestDisableLocalhostNodePortsIPv4",
        cluster_cidr=None, localhost_nodeports=False,
    ),
    Case(
        "TestDisableLocalhostNodePortsIPv4WithNodeAddress", "TestDisableLocalhostNodePortsIPv4WithNodeAddress",
        cluster_cidr=None, localhost_nodeports=False, nodeport_addresses=("127.0.0.0/8",),
    ),
    Case("TestEnableLocalhostNodePortsIPv6", "TestEnableLocalhostNodePortsIPv6", family="IPv6", cluster_cidr=None),
    Case(
        "TestDisableLocalhostNodePortsIPv6", "TestDisableLocalhostNodePortsIPv6",
        family="IPv6", cluster_cidr=None, localhost_nodeports=False,
    ),
    Case(
        "TestOnlyLocalNodePortsNoClusterCIDR", "TestOnlyLocalNodePortsNoClusterCIDR",
        cluster_cidr=None, nodeport_addresses=NODEPORT_CIDRS, localhost_nodeports=False,
    ),
    Case(
        "TestOnlyLocalNodePorts", "TestOnlyLocalNodePorts",
        nodeport_addresses=NODEPORT_CIDRS, localhost_nodeports=False,
    ),
    *(
        _same(f"TestInternalTrafficPolicyE2E__{sub}")
        for sub in ("cluster", "local_with_local_endpoints", "local_without_local_endpoints")
    ),
    *(
        _same(f"TestTerminatingEndpointsTrafficPolicy{policy}__{sub}")
        for policy in ("Local", "Cluster")
        for sub in (
            "ready_endpoints_exist",
            "only_terminating_endpoints_exist",
            "terminating_endpoints_on_remote_node",
            "no_usable_endpoints_on_any_node",
        )
    ),
]


# --------------------------------------------------------------------------- helpers


def expected_text(name: str) -> str:
    """The transcribed dump: header comment lines dropped, then TrimLeft(" \\t\\n")."""
    lines = (DATA / f"{name}.txt").read_text().split("\n")
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "\n".join(lines).lstrip(" \t\n")


def case_plan(case: Case) -> tuple[kp.Cluster, ProxyPlan]:
    cluster = kp.load(DATA / f"{case.inputs}.yaml")
    cfg = make_config(
        cluster, case.family, "test-node",  # type: ignore[arg-type]
        cluster_cidr=case.cluster_cidr,
        nodeport_addresses=case.nodeport_addresses,
        localhost_nodeports=case.localhost_nodeports,
    )
    return cluster, build_plan(cluster, cfg)


def expected_lb_vips(cluster: kp.Cluster, namespace: str, name: str, family: str) -> tuple[str, ...]:
    """KUBE-PROXY.md §3.1: status.loadBalancer.ingress IPs, skipping hostname-only and
    ipMode Proxy, filtered to the family, in order. (Test scaffolding only, to check the
    renderer while plan_port does not fill lb_ips yet.)"""
    svc = cluster.services[(namespace, name)]
    if svc.type != "LoadBalancer":
        return ()
    return tuple(
        ing.ip
        for ing in svc.load_balancer_ingress
        if ing.ip and ing.ip_mode in (None, "VIP") and (":" in ing.ip) == (family == "IPv6")
    )


def lb_vips_missing(cluster: kp.Cluster, plan: ProxyPlan) -> bool:
    return any(
        not pp.lb_ips and expected_lb_vips(cluster, pp.namespace, pp.service, plan.family)
        for pp in plan.ports
    )


def consistency_errors(text: str) -> list[str]:
    """proxier_test.go's checkIPTablesRuleJumps (KUBE-PROXY.md §9.3), per table."""
    errors = []
    exempt = {
        "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING",
        "KUBE-FORWARD", "KUBE-MARK-MASQ", "KUBE-PROXY-FIREWALL", "KUBE-FIREWALL",
    }
    builtin_targets = {"ACCEPT", "REJECT", "DROP", "MARK", "RETURN", "DNAT", "SNAT", "MASQUERADE"}
    for table in re.findall(r"^\*(\S+)\n(.*?)^COMMIT$", text, flags=re.S | re.M):
        name, body = table
        lines = body.split("\n")

        def matches(pattern: str, lines: Sequence[str] = lines) -> set[str]:
            rx = re.compile(pattern)
            return {m.group(1) for line in lines if (m := rx.search(line))}

        created = matches(r"^:([^ ]*)") - matches(r"-X ([^ ]*)")
        filled = matches(r"-A ([^ ]*)")
        jumped = matches(r"-j ([^ ]*)") - builtin_targets
        missing = (jumped - created) | (filled - created)
        if missing:
            errors.append(f"some chains in {name} are used but were not created: {sorted(missing)}")
        empty = jumped - filled - {"KUBE-NODEPORTS"}
        if empty:
            errors.append(f"some chains in {name} are jumped to but have no rules: {sorted(empty)}")
        extra = created - jumped - exempt
        if extra:
            errors.append(f"some chains in {name} are created but not used: {sorted(extra)}")
    return errors


@pytest.mark.parametrize(
    ("nat_body", "error"),
    [  # TestCheckIPTablesRuleJumps (proxier_test.go @ 531be812)
        (
            ":KUBE-MARK-MASQ - [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]\n"
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n"
            '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 10.20.30.41'
            " --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O\n"
            '-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp'
            " -d 10.20.30.41 --dport 80 ! -s 10.0.0.0/24 -j KUBE-MARK-MASQ\n",
            None,
        ),
        (
            ":KUBE-SERVICES - [0:0]\n"
            '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41'
            " --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O\n",
            "some chains in nat are used but were not created: ['KUBE-SVC-XPGD46QRK7WJZT7O']",
        ),
        (
            ":KUBE-SERVICES - [0:0]\n:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]\n"
            '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41'
            " --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O\n",
            "some chains in nat are jumped to but have no rules: ['KUBE-SVC-XPGD46QRK7WJZT7O']",
        ),
        (
            ":KUBE-MARK-MASQ - [0:0]\n:KUBE-SERVICES - [0:0]\n"
            '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" ...\n'
            '-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp'
            " -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ\n",
            "some chains in nat are used but were not created: ['KUBE-SVC-XPGD46QRK7WJZT7O']",
        ),
        (
            ":KUBE-MARK-MASQ - [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]\n"
            '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" ...\n',
            "some chains in nat are created but not used: ['KUBE-SVC-XPGD46QRK7WJZT7O']",
        ),
    ],
)
def test_consistency_checker_matches_kube_proxy(nat_body: str, error: str | None) -> None:
    errors = consistency_errors(f"*filter\nCOMMIT\n*nat\n{nat_body}COMMIT\n")
    assert errors[:1] == ([error] if error else [])


def render_normalized(plan: ProxyPlan, options: IptablesOptions) -> str:
    return normalize_like_kube_proxy_tests(render_iptables(plan, options).lstrip(" \t\n"))


# --------------------------------------------------------------------------- acceptance


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_kube_proxy_expected_output(case: Case) -> None:
    cluster, plan = case_plan(case)
    assert not lb_vips_missing(cluster, plan)  # the plan fills LoadBalancer VIPs as kube-proxy does
    assert render_normalized(plan, case.options) == expected_text(case.name)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_expected_dumps_are_consistent_and_normalised(case: Case) -> None:
    """assertIPTablesRulesEqual(checkConsistency=true) checks the expected text too; and a
    sortIPTablesRules output is a fixed point of the normalisation (catches transcription slips)."""
    text = expected_text(case.name)
    assert consistency_errors(text) == []
    assert normalize_like_kube_proxy_tests(text) == text


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_renders_are_consistent_and_save_parsable(case: Case) -> None:
    _cluster, plan = case_plan(case)
    for p in (plan,):
        text = render_iptables(p, case.options)
        assert consistency_errors(text) == []
        to_iptables_save(text, p.family)  # every rule is understood


# --------------------------------------------------------------------------- chain names


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ns1/svc1:p80tcp", "XPGD46QRK7WJZT7O"),
        ("ns1/svc1:p80tcp10.180.0.1:80", "SXIVWICOYRO3J4NJ"),
        ("ns2/svc2:p80tcp", "GNZBNJ2PO5MGZ6GT"),
        ("ns5/svc5:p80tcp", "NUKIZ6OKUXPJNT4C"),
        ("ns5/svc5:p80tcp10.180.0.3:80", "I77PXRDZVX7PMWMN"),
        ("ns2/svc2:p8080tcp", "2VJB64SDSIJUP5T6"),
        ("ns1/svc1tcp", "AQI2S6QIMU7PVVRP"),
        ("ns1/svc1:p80tcp[ff06::c1]:80", "LIGRYQQLSZN4UWQ5"),
    ],
)
def test_chain_name_hashes(text: str, expected: str) -> None:
    """KUBE-PROXY.md §1 table (names checked against proxier_test.go)."""
    assert hash16(text) == expected


def test_chain_names_in_render() -> None:
    cluster = kp.Cluster.from_objects([
        _svc("ns1", "svc1", "172.30.0.41", [{"name": "", "port": 80}]),
        _slice("ns1", "svc1", [{"addresses": ["10.0.1.1"]}], [{"name": "", "port": 80}]),
        NODE,
    ])
    plan = _plan(cluster)
    (pp,) = plan.ports
    assert (pp.svc_chain, pp.sep_chain(pp.endpoints[0])) == ("KUBE-SVC-AQI2S6QIMU7PVVRP", "KUBE-SEP-3JOIVZTXZZRGORX4")
    text = render_iptables(plan)
    assert ":KUBE-SVC-AQI2S6QIMU7PVVRP - [0:0]" in text
    assert "-A KUBE-SEP-3JOIVZTXZZRGORX4 -m comment --comment ns1/svc1 -s 10.0.1.1 -j KUBE-MARK-MASQ" in text


# --------------------------------------------------------------------------- probabilities


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, "1.0000000000"),
        (2, "0.5000000000"),
        (10, "0.1000000000"),
        (100, "0.0100000000"),
        (1000, "0.0010000000"),
        (10000, "0.0001000000"),
        (100000, "0.0000100000"),
        (100001, "0.0000099999"),
    ],
)
def test_compute_probability(n: int, expected: str) -> None:
    """TestComputeProbability's table."""
    assert compute_probability(n) == expected


def test_compute_probability_strictly_increasing() -> None:
    """TestComputeProbability: parsed back, 1/i increases strictly as i goes down to 2."""
    previous = 0.0
    for i in range(100000, 1, -1):
        current = float(compute_probability(i))
        assert current > previous, i
        previous = current


def test_probability_cascade_in_render() -> None:
    eps = [{"addresses": [f"10.0.1.{i}"]} for i in (1, 2, 3, 10)]
    cluster = kp.Cluster.from_objects([
        _svc("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80}]),
        _slice("ns1", "svc1", eps, [{"name": "p80", "port": 80}]),
        NODE,
    ])
    rules = [r for r in render_iptables(_plan(cluster)).split("\n") if r.startswith("-A KUBE-SVC-") and "->" in r]
    # endpoints sorted as strings (KUBE-PROXY.md §3.2): 10.0.1.10:80 sorts before 10.0.1.1:80
    targets = [m.group(1) for r in rules if (m := re.search(r'-> (\S+)"', r))]
    assert targets == ["10.0.1.10:80", "10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"]
    probs = [m.group(1) if (m := re.search(r"--probability (\S+)", r)) else None for r in rules]
    assert probs == ["0.2500000000", "0.3333333333", "0.5000000000", None]


# --------------------------------------------------------------------------- iptables-save form


@pytest.mark.parametrize(
    ("restore", "saved"),
    [
        (  # KUBE-PROXY.md §10: basic matches first, /32, quoted comment, tcp options after -m tcp
            '-A X -m comment --comment "c" -m tcp -p tcp -d 10.96.0.1 --dport 443 ! -s 10.244.0.0/16 -j X',
            '-A X ! -s 10.244.0.0/16 -d 10.96.0.1/32 -p tcp -m comment --comment "c" -m tcp --dport 443 -j X',
        ),
        (
            "-A KUBE-SEP-X -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80",
            '-A KUBE-SEP-X -p tcp -m comment --comment "ns1/svc1:p80" -m tcp -j DNAT --to-destination 10.180.0.1:80',
        ),
        (
            "-A KUBE-SEP-X -m comment --comment default/kubernetes:https -s 10.0.0.5 -j KUBE-MARK-MASQ",
            '-A KUBE-SEP-X -s 10.0.0.5/32 -m comment --comment "default/kubernetes:https" -j KUBE-MARK-MASQ',
        ),
        ("-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000", "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"),
        ("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000", "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0"),
        (
            "-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN",
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        ),
        (
            '-A S -m comment --comment "a -> b" -m statistic --mode random --probability 0.5000000000 -j E',
            '-A S -m comment --comment "a -> b" -m statistic --mode random --probability 0.50000000000 -j E',
        ),
        (
            "-A S -m statistic --mode random --probability 0.3333333333 -j E",
            "-A S -m statistic --mode random --probability 0.33333333349 -j E",
        ),
        (
            "-A S -m statistic --mode random --probability 0.2000000000 -j E",
            "-A S -m statistic --mode random --probability 0.20000000019 -j E",
        ),
        (
            '-A S -m comment --comment "x" -m recent --name KUBE-SEP-X --rcheck --seconds 10800 --reap -j KUBE-SEP-X',
            '-A S -m comment --comment "x" -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-X'
            " --mask 255.255.255.255 --rsource -j KUBE-SEP-X",
        ),
        (
            "-A KUBE-SEP-X -m comment --comment x -m recent --name KUBE-SEP-X --set -m tcp -p tcp"
            " -j DNAT --to-destination 10.0.1.1:80",
            '-A KUBE-SEP-X -p tcp -m comment --comment "x" -m recent --set --name KUBE-SEP-X'
            " --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.0.1.1:80",
        ),
        (
            '-A KUBE-SERVICES -m comment --comment "x has no endpoints" -m udp -p udp -d 172.30.0.46 --dport 53'
            " -j REJECT",
            '-A KUBE-SERVICES -d 172.30.0.46/32 -p udp -m comment --comment "x has no endpoints" -m udp --dport 53'
            " -j REJECT --reject-with icmp-port-unreachable",
        ),
        (
            '-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8'
            " ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
            '-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet'
            ' connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP',
        ),
        (
            '-A KUBE-SERVICES -m comment --comment "n" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS',
            '-A KUBE-SERVICES ! -d 127.0.0.0/8 -m comment --comment "n" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS',
        ),
        (
            "-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp -d 127.0.0.0/8 --dport 3001"
            " -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-X",
            '-A KUBE-NODEPORTS -d 127.0.0.0/8 -p tcp -m comment --comment "ns2/svc2:p80" -m tcp --dport 3001'
            " -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-X",
        ),
        (
            '-A KUBE-FW-X -m comment --comment "other traffic to a will be dropped by KUBE-PROXY-FIREWALL"',
            '-A KUBE-FW-X -m comment --comment "other traffic to a will be dropped by KUBE-PROXY-FIREWALL"',
        ),
        (
            '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
            " --random-fully",
            '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
            " --random-fully",
        ),
        # a REJECT that names its reply keeps it, and only it (a mutant added the default too)
        ("-A X -p tcp -j REJECT --reject-with tcp-reset", "-A X -p tcp -j REJECT --reject-with tcp-reset"),
        # round-robin's nth: --every/--packet are options the reader does not list, read up to
        # the next option (as iptables-save printed it in a namespace)
        (
            '-A KUBE-SVC-X -m comment --comment "ns/svc:p -> 10.0.1.1:80" -m statistic --mode nth --every 3'
            " --packet 0 -j KUBE-SEP-X",
            '-A KUBE-SVC-X -m comment --comment "ns/svc:p -> 10.0.1.1:80" -m statistic --mode nth --every 3'
            " --packet 0 -j KUBE-SEP-X",
        ),
    ],
)
def test_to_iptables_save_rules(restore: str, saved: str) -> None:
    chain = restore.split()[1]
    text = f"*nat\n:{chain} - [0:0]\n{restore}\nCOMMIT\n"
    assert to_iptables_save(text, "IPv4") == f"*nat\n:{chain} - [0:0]\n{saved}\nCOMMIT\n"


def test_to_iptables_save_refuses_an_option_before_any_match() -> None:
    with pytest.raises(ValueError, match=r"^option --dport before any match in '-A X --dport 80 -j ACCEPT'$"):
        to_iptables_save("*nat\n:X - [0:0]\n-A X --dport 80 -j ACCEPT\nCOMMIT\n", "IPv4")


def test_to_iptables_save_ipv6() -> None:
    text = (
        "*nat\n:KUBE-SEP-X - [0:0]\n:S - [0:0]\n"
        "-A KUBE-SEP-X -m comment --comment x -s ff06::c1 -j KUBE-MARK-MASQ\n"
        "-A KUBE-SEP-X -m comment --comment x -m tcp -p tcp -j DNAT --to-destination [ff06::c1]:80\n"
        "-A S -m recent --name KUBE-SEP-X --rcheck --seconds 5 --reap -j KUBE-SEP-X\n"
        '-A S -m comment --comment "n" -m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS\n'
        "-A S -m tcp -p tcp -d fd00:AB34:0::20 --dport 80 -j REJECT\n"
        "COMMIT\n"
    )
    assert to_iptables_save(text, "IPv6") == (
        "*nat\n:KUBE-SEP-X - [0:0]\n:S - [0:0]\n"
        '-A KUBE-SEP-X -s ff06::c1/128 -m comment --comment "x" -j KUBE-MARK-MASQ\n'
        '-A KUBE-SEP-X -p tcp -m comment --comment "x" -m tcp -j DNAT --to-destination [ff06::c1]:80\n'
        "-A S -m recent --rcheck --seconds 5 --reap --name KUBE-SEP-X"
        " --mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff --rsource -j KUBE-SEP-X\n"
        '-A S ! -d ::1/128 -m comment --comment "n" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n'
        "-A S -d fd00:ab34::20/128 -p tcp -m tcp --dport 80 -j REJECT --reject-with icmp6-port-unreachable\n"
        "COMMIT\n"
    )


def test_to_iptables_save_groups_sorted_chains_and_drops_deleted() -> None:
    text = (
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-A - [0:0]\n:KUBE-GONE - [0:0]\n"
        "-A KUBE-SERVICES -j KUBE-A\n-A KUBE-A -j RETURN\n-A KUBE-SERVICES -j RETURN\n-X KUBE-GONE\nCOMMIT\n"
    )
    assert to_iptables_save(text, "IPv4") == (
        "*nat\n:KUBE-A - [0:0]\n:KUBE-SERVICES - [0:0]\n"
        "-A KUBE-A -j RETURN\n-A KUBE-SERVICES -j KUBE-A\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n"
    )


def test_to_iptables_save_of_a_full_render() -> None:
    _cluster, plan = case_plan(CASES[0])
    saved = to_iptables_save(render_iptables(plan, IptablesOptions(nfacct=True)), "IPv4")
    lines = saved.split("\n")
    assert lines[:8] == [
        "*filter",
        ":KUBE-EXTERNAL-SERVICES - [0:0]",
        ":KUBE-FIREWALL - [0:0]",
        ":KUBE-FORWARD - [0:0]",
        ":KUBE-NODEPORTS - [0:0]",
        ":KUBE-PROXY-FIREWALL - [0:0]",
        ":KUBE-SERVICES - [0:0]",
        '-A KUBE-EXTERNAL-SERVICES -d 192.168.99.22/32 -p tcp -m comment --comment "ns2/svc2:p80 has no local'
        ' endpoints" -m tcp --dport 80 -j DROP',
    ]
    for line in (
        '-A KUBE-SERVICES -d 172.30.0.46/32 -p tcp -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp'
        " --dport 80 -j REJECT --reject-with icmp-port-unreachable",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts"
        " -j DROP",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT',
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic'
        " --mode random --probability 0.50000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC",
        '-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -m recent --rcheck'
        " --seconds 10800 --reap --name KUBE-SEP-I77PXRDZVX7PMWMN --mask 255.255.255.255 --rsource"
        " -j KUBE-SEP-I77PXRDZVX7PMWMN",
        '-A KUBE-SEP-I77PXRDZVX7PMWMN -p tcp -m comment --comment "ns5/svc5:p80" -m recent --set'
        " --name KUBE-SEP-I77PXRDZVX7PMWMN --mask 255.255.255.255 --rsource -m tcp -j DNAT"
        " --to-destination 10.180.0.3:80",
        '-A KUBE-FW-NUKIZ6OKUXPJNT4C -s 203.0.113.0/25 -m comment --comment "ns5/svc5:p80 loadbalancer IP"'
        " -j KUBE-EXT-NUKIZ6OKUXPJNT4C",
    ):
        assert line in lines, line


# --------------------------------------------------------------------------- normalisation


def test_normalize_like_sort_iptables_rules_comment_styles() -> None:
    """TestSortIPTablesRules "correctly match same service name in different styles of comments"."""
    given_text = (
        "*filter\nCOMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n"
        '-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" svc2 line 1\n'
        "-A KUBE-SERVICES -m comment --comment ns2/svc2 svc2 line 2\n"
        '-A KUBE-SERVICES -m comment --comment "ns2/svc2 blah" svc2 line 3\n'
        '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" svc1 line 1\n'
        "-A KUBE-SERVICES -m comment --comment ns1/svc1 svc1 line 2\n"
        '-A KUBE-SERVICES -m comment --comment "ns1/svc1 blah" svc1 line 3\n'
        "-A KUBE-SERVICES -m comment --comment ns4/svc4 svc4 line 1\n"
        '-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" svc4 line 2\n'
        '-A KUBE-SERVICES -m comment --comment "ns4/svc4 blah" svc4 line 3\n'
        '-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" svc3 line 1\n'
        '-A KUBE-SERVICES -m comment --comment "ns3/svc3 blah" svc3 line 2\n'
        "-A KUBE-SERVICES -m comment --comment ns3/svc3 svc3 line 3\n"
        "COMMIT\n"
    )
    assert normalize_like_kube_proxy_tests(given_text) == (
        "*filter\nCOMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n"
        '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" svc1 line 1\n'
        "-A KUBE-SERVICES -m comment --comment ns1/svc1 svc1 line 2\n"
        '-A KUBE-SERVICES -m comment --comment "ns1/svc1 blah" svc1 line 3\n'
        '-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" svc2 line 1\n'
        "-A KUBE-SERVICES -m comment --comment ns2/svc2 svc2 line 2\n"
        '-A KUBE-SERVICES -m comment --comment "ns2/svc2 blah" svc2 line 3\n'
        '-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" svc3 line 1\n'
        '-A KUBE-SERVICES -m comment --comment "ns3/svc3 blah" svc3 line 2\n'
        "-A KUBE-SERVICES -m comment --comment ns3/svc3 svc3 line 3\n"
        "-A KUBE-SERVICES -m comment --comment ns4/svc4 svc4 line 1\n"
        '-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" svc4 line 2\n'
        '-A KUBE-SERVICES -m comment --comment "ns4/svc4 blah" svc4 line 3\n'
        "COMMIT\n"
    )


def test_normalize_like_sort_iptables_rules_junk_and_tables() -> None:
    """TestSortIPTablesRules "unexpected junk lines are preserved", plus table order and -X lines."""
    given_text = (
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SEP-RS4RBKLTHTF2IUXJ - [0:0]\n:KUBE-AAAAA - [0:0]\n"
        ":KUBE-ZZZZZ - [0:0]\n:WHY-IS-THIS-CHAIN-HERE - [0:0]\n:KUBE-OLD - [0:0]\n"
        '-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" svc2 line 1\n'
        "-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT"
        " --to-destination 10.180.0.2:80\n"
        '-A KUBE-ZZZZZ -m comment --comment "mystery chain number 1"\n'
        "-A KUBE-SERVICES -m comment --comment ns2/svc2 svc2 line 2\n"
        "-A WHY-IS-THIS-CHAIN-HERE -j ACCEPT\n"
        '-A KUBE-SERVICES -m comment --comment "ns2/svc2 blah" svc2 line 3\n'
        '-A KUBE-AAAAA -m comment --comment "mystery chain number 2"\n'
        "-X KUBE-OLD\nCOMMIT\n*filter\nCOMMIT\n"
    )
    assert normalize_like_kube_proxy_tests(given_text) == (
        "*filter\nCOMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-AAAAA - [0:0]\n:KUBE-OLD - [0:0]\n"
        ":KUBE-SEP-RS4RBKLTHTF2IUXJ - [0:0]\n:KUBE-ZZZZZ - [0:0]\n:WHY-IS-THIS-CHAIN-HERE - [0:0]\n"
        '-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" svc2 line 1\n'
        "-A KUBE-SERVICES -m comment --comment ns2/svc2 svc2 line 2\n"
        '-A KUBE-SERVICES -m comment --comment "ns2/svc2 blah" svc2 line 3\n'
        '-A KUBE-AAAAA -m comment --comment "mystery chain number 2"\n'
        "-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT"
        " --to-destination 10.180.0.2:80\n"
        '-A KUBE-ZZZZZ -m comment --comment "mystery chain number 1"\n'
        "-A WHY-IS-THIS-CHAIN-HERE -j ACCEPT\n"
        "-X KUBE-OLD\nCOMMIT\n"
    )


def test_normalize_keeps_nodeport_tail_last() -> None:
    given_text = (
        "*nat\n:KUBE-SERVICES - [0:0]\n"
        '-A KUBE-SERVICES -m comment --comment "ns9/svc:p cluster IP" -j A\n'
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in'
        ' this chain" -d 192.168.0.2 -j KUBE-NODEPORTS\n'
        '-A KUBE-SERVICES -m comment --comment "ns1/svc:p cluster IP" -j B\n'
        "COMMIT\n"
    )
    lines = normalize_like_kube_proxy_tests(given_text).split("\n")
    assert lines[2].endswith("-j B") and lines[3].endswith("-j A") and "must be the last" in lines[4]


# --------------------------------------------------------------------------- options


def test_large_cluster_mode_like_kube_proxy() -> None:
    """TestSyncProxyRulesLargeClusterMode's endpoint lines, below and above the threshold."""
    half = LARGE_CLUSTER_ENDPOINTS_THRESHOLD // 2 - 1
    objs: list[dict[str, Any]] = [
        _svc("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80}]),
        _svc("ns2", "svc2", "172.30.0.42", [{"name": "p8080", "port": 8080}]),
        _svc("ns3", "svc3", "172.30.0.43", [{"name": "p8081", "port": 8081}]),
        _slice("ns1", "svc1", [{"addresses": [f"10.0.{i % 256}.{i // 256}"]} for i in range(half)],
               [{"name": "p80", "port": 80}]),
        _slice("ns2", "svc2", [{"addresses": [f"10.1.{i % 256}.{i // 256}"]} for i in range(half)],
               [{"name": "p8080", "port": 8080}]),
        NODE,
    ]
    small = render_iptables(_plan(kp.Cluster.from_objects(objs), masquerade_all=True))
    sep_dnat = [line for line in small.split("\n") if line.startswith("-A KUBE-SEP-") and "-j DNAT" in line]
    assert len(sep_dnat) == 2 * half and all("--comment" in line for line in sep_dnat)
    assert (
        "-A KUBE-SEP-DKGQUZGBKLTPAR56 -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT"
        " --to-destination 10.0.0.0:80"
    ) in sep_dnat

    objs.append(_slice("ns3", "svc3", [{"addresses": [a]} for a in ("203.0.113.4", "203.0.113.8", "203.0.113.12")],
                       [{"name": "p8081", "port": 8081}]))
    large = render_iptables(_plan(kp.Cluster.from_objects(objs), masquerade_all=True))
    lines = large.split("\n")
    assert "-A KUBE-SEP-RUVVH7YV3PHQBDOS -m tcp -p tcp -j DNAT --to-destination 203.0.113.4:8081" in lines
    assert "-A KUBE-SEP-DKGQUZGBKLTPAR56 -m tcp -p tcp -j DNAT --to-destination 10.0.0.0:80" in lines
    assert not any(line.startswith("-A KUBE-SEP-") and "--comment" in line for line in lines)
    assert not any(re.match(r"-A KUBE-SVC-\S+ .*-j KUBE-SEP-", line) and "--comment" in line for line in lines)
    # every other comment stays
    assert '-A KUBE-SERVICES -m comment --comment "ns3/svc3:p8081 cluster IP"' in large
    # explicit overrides
    assert "-m comment --comment ns3/svc3:p8081 -s 203.0.113.4" in render_iptables(
        _plan(kp.Cluster.from_objects(objs)), IptablesOptions(comments=True)
    )
    no_comments = render_iptables(_plan(kp.Cluster.from_objects(objs[:3] + objs[5:])), IptablesOptions(comments=False))
    assert not any(line.startswith("-A KUBE-SEP-") and "--comment" in line for line in no_comments.split("\n"))
    assert "-A KUBE-SEP-RUVVH7YV3PHQBDOS -m tcp -p tcp -j DNAT --to-destination 203.0.113.4:8081" in no_comments


def test_large_cluster_mode_counts_unready_endpoints() -> None:
    """The threshold counts every endpoint of every service port, ready or not."""
    ready = [{"addresses": [f"10.2.{i // 250}.{i % 250 + 1}"]} for i in range(10)]
    unready = [
        {"addresses": [f"10.3.{i // 250}.{i % 250 + 1}"], "conditions": {"ready": False, "serving": False}}
        for i in range(LARGE_CLUSTER_ENDPOINTS_THRESHOLD - 9)
    ]
    cluster = kp.Cluster.from_objects([
        _svc("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80}]),
        _slice("ns1", "svc1", ready, [{"name": "p80", "port": 80}]),
        {**_slice("ns1", "svc1", unready, [{"name": "p80", "port": 80}]),
         "metadata": {"namespace": "ns1", "name": "svc1-2", "labels": {"kubernetes.io/service-name": "svc1"}}},
        NODE,
    ])
    lines = render_iptables(_plan(cluster)).split("\n")
    seps = [line for line in lines if line.startswith("-A KUBE-SEP-")]
    assert len(seps) == 20 and not any("--comment" in line for line in seps)


def test_mark_formats_and_other_options() -> None:
    cluster = kp.Cluster.from_objects([NODE])
    real = render_iptables(_plan(cluster))
    assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000" in real
    assert "-m mark ! --mark 0x00004000/0x00004000 -j RETURN" in real
    assert "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP" in real
    other = render_iptables(_plan(cluster), IptablesOptions(masquerade_bit=0, mark_format="test",
                                                            conntrack_tcp_liberal=True, random_fully=True))
    assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x1" in other
    assert "INVALID" not in other
    assert "-j MASQUERADE --random-fully" in other
    with pytest.raises(ValueError):
        IptablesOptions(masquerade_bit=32)
    with pytest.raises(ValueError):
        IptablesOptions(mark_format="go")


def test_interface_detector_tokens() -> None:
    cluster = kp.Cluster.from_objects([
        _svc("ns1", "svc1", "172.30.0.41", [{"name": "p80", "port": 80, "nodePort": 30080}],
             type="NodePort", externalTrafficPolicy="Local"),
        _slice("ns1", "svc1", [{"addresses": ["10.0.1.1"], "nodeName": "test-node"}], [{"name": "p80", "port": 80}]),
        NODE,
    ])
    text = render_iptables(_plan(cluster), IptablesOptions(detector_tokens=("-i cbr0", "! -i cbr0")))
    assert "--dport 80 ! -i cbr0 -j KUBE-MARK-MASQ" in text
    assert '"pod traffic for ns1/svc1:p80 external destinations" -i cbr0 -j KUBE-SVC-' in text
    assert "! -i cbr0" in to_iptables_save(text, "IPv4")


def test_nodeport_addresses_tail_rules_and_nodeip_for_firewall() -> None:
    cluster = kp.Cluster.from_objects([NODE])
    cfg = make_config(cluster, "IPv4", "test-node", nodeport_addresses=["192.168.0.0/16", "127.0.0.0/8"])
    tails = [line for line in render_iptables(build_plan(cluster, cfg)).split("\n") if "-j KUBE-NODEPORTS" in line]
    assert [t.split(" -d ")[1].split()[0] for t in tails] == ["192.168.0.2", "192.168.1.2", "192.168.99.11",
                                                             "127.0.0.1"]
    cfg6 = make_config(cluster, "IPv6", "test-node", nodeport_addresses=["::/0"])
    text6 = render_iptables(build_plan(cluster, cfg6))
    assert "-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS" in text6
    assert "KUBE-FIREWALL" not in text6


# --------------------------------------------------------------------------- random clusters

NODE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {"name": "test-node"},
    "status": {"addresses": [
        {"type": "InternalIP", "address": a}
        for a in ("192.168.0.2", "192.168.1.2", "192.168.99.11", "2001:db8::1", "2001:db8:1::2")
    ]},
}


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


def _plan(cluster: kp.Cluster, family: str = "IPv4", **kw: Any) -> ProxyPlan:
    cfg = make_config(cluster, family, "test-node", cluster_cidr=f"{V4_CIDR},{V6_CIDR}", **kw)  # type: ignore[arg-type]
    return build_plan(cluster, cfg)


@st.composite
def random_clusters(draw: Callable[..., Any]) -> tuple[list[dict[str, Any]], str]:
    family = draw(st.sampled_from(["IPv4", "IPv6"]))
    v6 = family == "IPv6"

    def ip(prefix4: str, prefix6: str, i: int) -> str:
        return f"{prefix6}{i:x}" if v6 else f"{prefix4}{i}"

    objs: list[dict[str, Any]] = [NODE]
    for s in range(draw(st.integers(0, 4))):
        stype = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
        ports = []
        for j in range(draw(st.integers(1, 3))):
            port: dict[str, Any] = {
                "name": f"p{j}", "port": 80 + j, "protocol": draw(st.sampled_from(["TCP", "UDP", "SCTP"])),
            }
            if stype != "ClusterIP" and draw(st.booleans()):
                port["nodePort"] = 30000 + 10 * s + j
            ports.append(port)
        spec: dict[str, Any] = {"type": stype}
        if draw(st.booleans()):
            spec["externalIPs"] = [ip("192.168.99.", "2001:db8:99::", 20 + s)]
        if stype != "ClusterIP" and draw(st.booleans()):
            spec["externalTrafficPolicy"] = "Local"
            if stype == "LoadBalancer":
                spec["healthCheckNodePort"] = 32000 + s
        if draw(st.booleans()):
            spec["internalTrafficPolicy"] = "Local"
        if draw(st.booleans()):
            spec["sessionAffinity"] = "ClientIP"
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": draw(st.integers(1, 86400))}}
        if stype == "LoadBalancer":
            spec["status"] = {"loadBalancer": {"ingress": [
                {"ip": ip("1.2.3.", "2001:db8:77::", 10 + s)},
                *([{"hostname": "lb.example"}] if draw(st.booleans()) else []),
            ]}}
            if draw(st.booleans()):
                spec["loadBalancerSourceRanges"] = draw(st.lists(
                    st.sampled_from(["203.0.113.0/25", "192.168.0.0/24", "2001:db8::/64", "2600::/16"]),
                    min_size=1, max_size=3, unique=True,
                ))
        objs.append(_svc(f"ns{s}", "svc", ip("172.30.0.", "fd00:172:30::", 10 + s), ports, **spec))
        for n in range(draw(st.integers(0, 2))):
            endpoints = []
            for e in range(draw(st.integers(0, 4))):
                ready = draw(st.booleans())
                endpoints.append({
                    "addresses": [ip(f"10.{s}.{n}.", f"fd00:10::{s}:{n}:", e + 1)],
                    "conditions": {"ready": ready, "serving": ready or draw(st.booleans()),
                                   "terminating": not ready and draw(st.booleans())},
                    "nodeName": draw(st.sampled_from(["test-node", "other", None])),
                })
            names = draw(
                st.lists(st.sampled_from(ports), min_size=1, max_size=len(ports), unique_by=lambda p: p["name"])
            )
            slice_ports = [{"name": p["name"], "port": 8000 + p["port"], "protocol": p["protocol"]} for p in names]
            objs.append(_slice(f"ns{s}", "svc", [{k: v for k, v in e.items() if v is not None} for e in endpoints],
                               slice_ports, n=n + 1, family=family))
    return objs, family


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_clusters(), st.booleans(), st.booleans())
def test_random_clusters_render_consistently(data: tuple[list[dict[str, Any]], str], detector: bool,
                                             match_all: bool) -> None:
    """checkConsistency (§9.3) on renders of random clusters: every jump target and every
    -A chain is declared, nothing jumps to an empty chain but KUBE-NODEPORTS, and no
    declared chain is left unused; the normaliser and to_iptables_save accept the text."""
    objs, family = data
    cluster = kp.Cluster.from_objects(objs)
    cfg = make_config(
        cluster, family, "test-node",  # type: ignore[arg-type]
        cluster_cidr=f"{V4_CIDR},{V6_CIDR}" if detector else None,
        nodeport_addresses=None if match_all else ["192.168.0.0/24", "2001:db8::/64", "127.0.0.0/8"],
    )
    plan = build_plan(cluster, cfg)
    for p in (plan,):
        for options in (IptablesOptions(), IptablesOptions(nfacct=True, mark_format="test", comments=False)):
            text = render_iptables(p, options)
            assert consistency_errors(text) == [], text
            normalized = normalize_like_kube_proxy_tests(text)
            assert sorted(normalized.split("\n")) == sorted(text.split("\n"))
            assert normalize_like_kube_proxy_tests(normalized) == normalized
            saved = to_iptables_save(text, p.family)
            assert saved.count("\n-A ") == text.count("\n-A ")
            for addr in re.findall(r" -[sd] (\S+)", saved):
                net = ipaddress.ip_network(addr)
                assert (net.version == 6) == (family == "IPv6")


UPSTREAM_COMMIT = "531be81208e2274ef42e72525a26610a9622bcdf"
FORK_COMMIT = "07fb8ceb0fc1d962cc2a752b8239a3a0702a3601"


def test_dump_sources() -> None:
    """Every expected dump names its commit, and every dump not from the current upstream
    file is listed in SOURCES.md with current upstream functions whose cases
    (tests/test_kube_proxy_flows.py) or pinned dumps test the same behaviour."""
    sources = (DATA / "SOURCES.md").read_text()
    table = dict(re.findall(r"^\| (Test\w+) \| (Test[\w, ]+) \|$", sources, re.M))
    flows = json.loads((DATA.parent / "kube-proxy-flows" / "cases.json").read_text())
    current = {f["function"] for f in flows["functions"] if f["commit"] == UPSTREAM_COMMIT}
    upstream_dumps = set()
    for path in sorted(DATA.glob("*.txt")):
        header = path.read_text().split("\n", 1)[0]
        commit = re.search(r" @ ([0-9a-f]{40})$", header)
        assert header.startswith(f"# {path.stem.split('__')[0]}") and commit, f"{path.name}: {header!r}"
        if "kubernetes/kubernetes pkg/proxy/iptables/proxier_test.go" in header:
            assert commit.group(1) == UPSTREAM_COMMIT, path.name
            upstream_dumps.add(path.stem)
            assert path.stem not in table, f"{path.name} is pinned upstream; SOURCES.md lists it as a fork dump"
        else:
            assert commit.group(1) == FORK_COMMIT and "danwinship/kubernetes" in header, path.name
            assert path.stem in table, f"{path.name} is not in SOURCES.md's table"
    assert set(table) <= {p.stem for p in DATA.glob("*.txt")}, "SOURCES.md lists a dump that is not here"
    assert len(upstream_dumps) == 3 and len(table) == 26
    for dump, functions in table.items():
        for fn in functions.split(", "):
            assert fn in current or fn in upstream_dumps, f"{dump}: {fn} has no pinned upstream expectation"

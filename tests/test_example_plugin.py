"""The example plugin distribution plugins/kproxy-extravip, installed for real.

A module fixture pip-installs the distribution into this environment (from a copy of its
sources, so that the build leaves nothing in the repository) and uninstalls it afterwards;
kproxy-core then finds it through the ``kproxy`` entry-point group like any third-party
plugin. Its Service type ``ExtraVIP`` (a ClusterIP Service also reachable on an address
allocated from a VIP range; the rule is in the plugin's module docstring) is checked end
to end: loading and validation, lookups and batch lookups over both twins against an
equivalent plain Service, traces, both renderers' rules, cluster DNS, the ``kproxy``
command in a subprocess, and the kernel (iptables and nftables rules loaded into a
network namespace, real TCP connections to the VIP).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import plugin_install
import pytest
import yaml
from k8s import ep, eport, node, port, service, slice_
from netns import Topology, topology, unavailable_reason
from test_kernel_iptables import (
    CLUSTER_CIDR,
    EXTERNAL,
    EXTERNAL_IPS,
    NODE,
    NODE_IPS,
    OTHER,
    POD_CLIENT,
    SERVICE_CIDR,
    describe,
    kernel_verdict,
)
from test_kernel_iptables import build_oracle as build_iptables_oracle
from test_kernel_nftables import build_oracle as build_nftables_oracle

import kproxy_core as kp
from kproxy_core.errors import ManifestError
from kproxy_core.plugins import KproxyPluginManager, make_plugin_manager

PLUGIN_SRC = Path(__file__).resolve().parent.parent / "plugins" / "kproxy-extravip"
DIST = "kproxy-extravip"
MODULE = "kproxy_extravip"
VIP_RANGE = "198.51.100.0/24"
VIP6_RANGE = "2001:db8:5100::/120"
RANGE = "extravip.example.com/range"
ADDRESS = "extravip.example.com/address"
POLICY = "extravip.example.com/policy"
FIXED_VIP = "198.51.100.200"
NODE_CLIENT = NODE_IPS[1]  # the node's own connections, from its second address
POD6 = "fd00:10::2"


# --------------------------------------------------------------------------- installation


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[importlib.metadata.Distribution]:
    """kproxy-extravip pip-installed from its wheel into this environment for the module."""
    with plugin_install.installed(DIST, MODULE, tmp_path_factory.mktemp("extravip")) as (dist, _):
        yield dist


@pytest.fixture(scope="module")
def pm(installed: importlib.metadata.Distribution) -> KproxyPluginManager:
    """A plugin manager that loads the entry points (the test process turns autoload off)."""
    return make_plugin_manager(entry_points=True)


@pytest.fixture(scope="module")
def plugin(pm: KproxyPluginManager) -> ModuleType:
    mod = pm.get_plugin("extravip")
    assert isinstance(mod, ModuleType)
    return mod


@pytest.fixture
def default_manager(pm: KproxyPluginManager) -> Iterator[KproxyPluginManager]:
    """``pm`` as the shared default manager (the kernel oracle builds its clusters with it)."""
    with plugin_install.as_default(pm):
        yield pm


# --------------------------------------------------------------------------- clusters


def extravip(name: str, cluster_ip: str | list[str], policy: str | None = None, *, address: str | None = None,
             range_: str | None = None, ports: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    obj = service("ns1", name, cluster_ip, ports or [port(80, "p")], type="ExtraVIP", **spec)
    ann = {k: v for k, v in ((POLICY, policy), (ADDRESS, address), (RANGE, range_)) if v is not None}
    if ann:
        obj["metadata"]["annotations"] = ann
    return obj


def endpoints(name: str, *ips: str, family: str = "IPv4") -> dict[str, Any]:
    """Endpoints on this node and the other one, alternately; target port 8080."""
    eps = [ep(ip, NODE if i % 2 == 0 else OTHER) for i, ip in enumerate(ips)]
    return slice_("ns1", name, eps, [eport(8080, "p")], name=f"{name}-{family.lower()}", family=family)


def nodes() -> list[dict[str, Any]]:
    return [node(NODE, *NODE_IPS, "2001:db8::2", pod_cidr="10.0.0.0/24"), node(OTHER, "192.168.0.3")]


def cluster_objects() -> list[dict[str, Any]]:
    """web: internal policy, hashed VIP; pub: external policy, fixed VIP; empty: no
    endpoints; dual: dual-stack."""
    return [
        *nodes(),
        extravip("web", "172.30.0.41"),
        endpoints("web", "10.180.0.1", "10.180.1.1"),
        extravip("pub", "172.30.0.42", "external", address=FIXED_VIP),
        endpoints("pub", "10.180.0.2", "10.180.1.2"),
        extravip("empty", "172.30.0.43"),
        extravip("dual", ["172.30.0.44", "fd00:30::44"], ipFamilyPolicy="RequireDualStack"),
        endpoints("dual", "10.180.0.4"),
        endpoints("dual", "fd00:10::4", family="IPv6"),
    ]


def make_engine(pm: KproxyPluginManager, objs: list[dict[str, Any]], impl: str | None = None,
                **kw: Any) -> kp.Engine:
    cluster = kp.Cluster.from_objects(objs, plugins=pm)
    return kp.Engine(cluster, node=NODE, cluster_cidr=[CLUSTER_CIDR, "fd00:10::/64"], plugins=pm, impl=impl,
                     seed=7, **kw)


def vip(engine: kp.Engine, name: str, rtype: str = "A") -> str:
    answer = engine.resolve(f"{name}.ns1.vip.cluster.local", rtype)
    assert answer.rcode == "NOERROR" and len(answer.records) == 1, answer
    return answer.records[0].data


# --------------------------------------------------------------------------- installation and loading


def test_installed_distribution_is_what_kproxy_loads(
    installed: importlib.metadata.Distribution, pm: KproxyPluginManager, plugin: ModuleType
) -> None:
    eps = [e for e in installed.entry_points if e.group == "kproxy"]
    assert [(e.name, e.value) for e in eps] == [("extravip", MODULE)]
    assert "extravip" in pm.plugin_names()
    assert pm.registry.owner("ExtraVIP") == "extravip"
    assert "ExtraVIP" in pm.registry.names()
    # the installed copy, not the sources under plugins/
    assert plugin.__file__ is not None and PLUGIN_SRC not in Path(plugin.__file__).resolve().parents
    assert Path(plugin.__file__).resolve() == Path(str(installed.locate_file(f"{MODULE}.py"))).resolve()


def test_without_entry_points_the_type_is_unknown(installed: importlib.metadata.Distribution) -> None:
    bare = make_plugin_manager(entry_points=False)
    assert "ExtraVIP" not in bare.registry
    with pytest.raises(ManifestError) as err:
        kp.Cluster.from_objects(cluster_objects(), plugins=bare)
    assert 'Service ns1/web: spec.type: "ExtraVIP" is not a known Service type' in str(err.value)


@pytest.mark.parametrize(
    ("annotations", "spec", "field", "words"),
    [
        ({RANGE: "198.51.100.0/33"}, {}, f"metadata.annotations[{RANGE}]", "is not a CIDR"),
        ({RANGE: "198.51.100.1/24"}, {}, f"metadata.annotations[{RANGE}]", "host bits set"),
        ({RANGE: "10.1.0.0/24,10.2.0.0/24"}, {}, f"metadata.annotations[{RANGE}]", "more than one IPv4 range"),
        ({ADDRESS: "not-an-ip"}, {}, f"metadata.annotations[{ADDRESS}]", "is not an IP address"),
        ({ADDRESS: "203.0.113.9"}, {}, f"metadata.annotations[{ADDRESS}]", f"outside {VIP_RANGE}"),
        ({ADDRESS: "10.9.0.5", RANGE: "10.1.0.0/24"}, {}, f"metadata.annotations[{ADDRESS}]", "outside 10.1.0.0/24"),
        ({ADDRESS: "198.51.100.255"}, {}, f"metadata.annotations[{ADDRESS}]", "first or last address"),
        ({ADDRESS: "2001:db8:5100::9"}, {}, f"metadata.annotations[{ADDRESS}]", "no IPv6 ClusterIP"),
        ({ADDRESS: "198.51.100.9"}, {"externalIPs": ["198.51.100.9"]}, f"metadata.annotations[{ADDRESS}]",
         "collides with spec.externalIPs[0] of the same Service"),
        ({POLICY: "sideways"}, {}, f"metadata.annotations[{POLICY}]", "is not one of internal, external"),
        ({}, {"ports": [port(80, "p", node_port=30080)]}, "spec.ports[0].nodePort", "may not be used"),
        ({}, {"clusterIP": "None", "clusterIPs": ["None"]}, "spec.clusterIP", "needs a ClusterIP"),
    ],
    ids=["range-prefix", "range-host-bits", "range-twice", "address-junk", "address-outside-default",
         "address-outside-annotated", "address-broadcast", "address-wrong-family", "address-own-external-ip",
         "policy", "nodeport",
         "headless"],
)
def test_validation_names_the_field(
    pm: KproxyPluginManager, annotations: dict[str, str], spec: dict[str, Any], field: str, words: str
) -> None:
    obj = extravip("web", "172.30.0.41")
    obj["metadata"]["annotations"] = annotations
    obj["spec"].update(spec)
    if spec.get("clusterIP") == "None":
        del obj["spec"]["ipFamilies"]
    with pytest.raises(ManifestError) as err:
        kp.Cluster.from_objects([*nodes(), obj], plugins=pm)
    lines = err.value.problems
    assert any(line.startswith(f"Service ns1/web: {field}: ") and words in line for line in lines), lines


def test_fixed_address_taken_by_another_service(pm: KproxyPluginManager) -> None:
    # a handler's validate() sees one Service (the API passes no cluster), so a collision
    # between two is found when the plan is built; the handler raises it as bad input
    objs = [*nodes(), extravip("a", "172.30.0.41", address=FIXED_VIP), extravip("b", "172.30.0.42", address=FIXED_VIP)]
    cluster = kp.Cluster.from_objects(objs, plugins=pm)
    with pytest.raises(ManifestError) as err:
        kp.Engine(cluster, node=NODE, plugins=pm)
    assert str(err.value) == (
        f"Service ns1/b: metadata.annotations[{ADDRESS}]: {FIXED_VIP} is already taken by Service ns1/a ({ADDRESS})")


def _slot(name: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(f"ns1/{name}".encode()).digest()[:8], "big") % n


def test_allocation_follows_the_documented_rule(pm: KproxyPluginManager) -> None:
    """Hash slot, then the first free address upwards; fixed addresses first; ClusterIPs
    and externalIPs inside the range are taken; every VIP distinct."""
    net = ipaddress.ip_network("10.77.0.0/27")  # 30 usable addresses: .1 ... .30
    names = [f"s{i:02d}" for i in range(29)]  # and one externalIP: the range is full
    hashed = [names[0], *names[2:]]
    # s01 fixes the address s00's hash picks; a plain Service's externalIP holds the next one
    first_pick = net.network_address + 1 + _slot(names[0], 30)
    after = net.network_address + 1 + (_slot(names[0], 30) + 1) % 30
    objs: list[dict[str, Any]] = [*nodes()]
    for i, n in enumerate(names):
        objs.append(extravip(n, f"172.30.1.{i + 1}", range_=str(net), address=str(first_pick) if n == "s01" else None))
    objs.append(service("ns1", "plain", "172.30.2.1", [port(80, "p")], externalIPs=[str(after)]))
    engine = make_engine(pm, objs)
    got = {n: ipaddress.ip_address(vip(engine, n)) for n in names}
    # the rule, independently
    taken = {first_pick, after}
    want = {"s01": first_pick}
    for n in sorted(hashed):
        slot = _slot(n, 30)
        for k in range(30):
            cand = net.network_address + 1 + (slot + k) % 30
            if cand not in taken:
                taken.add(cand)
                want[n] = cand
                break
    assert got == want
    assert got["s00"] != first_pick
    assert sorted({*got.values(), after}) == [net.network_address + k for k in range(1, 31)]
    # one claim more: the range runs out
    objs.append(extravip("s99", "172.30.1.99", range_=str(net)))
    with pytest.raises(ManifestError, match=r"range 10\.77\.0\.0/27 has no free address left"):
        make_engine(pm, objs)


def test_apply_replans_every_service_of_a_cluster_wide_type(pm: KproxyPluginManager) -> None:
    """A new Service that sorts first and hashes to an existing Service's address takes it;
    the existing one moves, although apply() was handed only the new one."""
    net = "10.77.0.0/29"  # 6 usable addresses
    engine = make_engine(pm, [*nodes(), extravip("web", "172.30.1.1", range_=net)])
    before = vip(engine, "web")
    usable = [str(ipaddress.ip_network(net).network_address + k) for k in range(1, 7)]
    thief = next(f"a{i}" for i in range(500) if usable[_slot(f"a{i}", 6)] == before)
    engine.apply([extravip(thief, "172.30.1.2", range_=net)])
    assert vip(engine, thief) == before and vip(engine, "web") != before
    fresh = make_engine(pm, [*nodes(), extravip("web", "172.30.1.1", range_=net),
                             extravip(thief, "172.30.1.2", range_=net)])
    assert (vip(engine, "web"), vip(engine, thief)) == (vip(fresh, "web"), vip(fresh, thief))
    d = engine.lookup("10.0.0.9", vip(engine, "web"), 80)
    assert d.service == "ns1/web:p" and d.frontend == "ExtraVIP"


# --------------------------------------------------------------------------- lookups


@dataclass(frozen=True)
class Outcome:
    """What an engine decides for 64 new connections of one client (lookup_batch)."""

    verdicts: frozenset[str]
    endpoints: frozenset[str]
    masquerade: frozenset[tuple[str | None, bool]]  # per endpoint
    frontends: frozenset[str | None]


def outcome(engine: kp.Engine, src: str, dst: str, dport: int = 80) -> Outcome:
    n = 64
    out = engine.lookup_batch(
        np.full(n, int(ipaddress.IPv4Address(src)), np.uint32),
        np.full(n, int(ipaddress.IPv4Address(dst)), np.uint32),
        np.full(n, dport, np.uint16), np.full(n, 6, np.uint8),
        sport=np.arange(40000, 40000 + n, dtype=np.uint16), now=0.0, track=False,
    )
    rows = engine.decode(out)
    return Outcome(
        frozenset(r["verdict"] for r in rows),
        frozenset(r["endpoint"] for r in rows if r["endpoint"]),
        frozenset((r["endpoint"], r["masquerade"]) for r in rows),
        frozenset(r["frontend"] for r in rows),
    )


SOURCES = {"pod": POD_CLIENT, "hairpin": "10.180.0.1", "node": NODE_CLIENT, "external": EXTERNAL}
EQUIVALENT_SPECS = {"default": {}, "iTP-Local": {"internalTrafficPolicy": "Local"}}


@pytest.mark.parametrize("spec", EQUIVALENT_SPECS.values(), ids=EQUIVALENT_SPECS.keys())
@pytest.mark.parametrize("policy", ["internal", "external"])
@pytest.mark.parametrize("source", SOURCES.values(), ids=SOURCES.keys())
def test_vip_decides_like_the_equivalent_plain_address(
    pm: KproxyPluginManager, impl: str, policy: str, spec: dict[str, Any], source: str
) -> None:
    """The VIP of an internal ExtraVIP is decided like the ClusterIP of an equivalent plain
    Service, an external one like its externalIP: verdicts, endpoints and masquerade."""
    plain: dict[str, Any] = {**spec, **({"externalIPs": ["192.168.99.51"]} if policy == "external" else {})}
    objs = [
        *nodes(),
        extravip("x", "172.30.0.41", policy, **spec),
        endpoints("x", "10.180.0.1", "10.180.1.1"),
        service("ns1", "plain", "172.30.0.51", [port(80, "p")], **plain),
        endpoints("plain", "10.180.0.1", "10.180.1.1"),
    ]
    engine = make_engine(pm, objs, impl)
    assert engine.compiled is (impl == "compiled")
    got = outcome(engine, source, vip(engine, "x"))
    want = outcome(engine, source, "172.30.0.51" if policy == "internal" else "192.168.99.51")
    assert (got.verdicts, got.endpoints, got.masquerade) == (want.verdicts, want.endpoints, want.masquerade)
    assert got.frontends == {"ExtraVIP"}
    assert want.frontends == {"ClusterIP" if policy == "internal" else "ExternalIP"}


# KUBE-PROXY.md §8 for one endpoint here and one elsewhere: the ClusterIP masquerades all but
# pod sources; an externalIP masquerades every source (eTP=Cluster)
MASQUERADE = {
    ("internal", "pod"): False, ("internal", "node"): True, ("internal", "external"): True,
    ("external", "pod"): True, ("external", "node"): True, ("external", "external"): True,
}


@pytest.mark.parametrize(("policy_source", "masq"), MASQUERADE.items(), ids=[f"{p}-{s}" for p, s in MASQUERADE])
def test_lookup_hits_the_vip(pm: KproxyPluginManager, impl: str, policy_source: tuple[str, str], masq: bool) -> None:
    policy, source = policy_source
    engine = make_engine(pm, cluster_objects(), impl)
    name = "web" if policy == "internal" else "pub"
    dst = vip(engine, name)
    assert (dst == FIXED_VIP) is (name == "pub")
    assert ipaddress.ip_address(dst) in ipaddress.ip_network(VIP_RANGE)
    mine = {(f"10.180.{k}.{1 if name == 'web' else 2}", 8080) for k in (0, 1)}
    seen = set()
    for sport in range(50000, 50032):
        d = engine.lookup(SOURCES[source], dst, 80, "TCP", sport=sport, now=0.0)
        assert (d.verdict, d.service, d.frontend, d.masquerade) == ("DNAT", f"ns1/{name}:p", "ExtraVIP", masq), d
        assert d.endpoint in mine
        seen.add(d.endpoint)
    assert seen == mine
    batch = outcome(engine, SOURCES[source], dst)
    assert batch.verdicts == {"DNAT"} and batch.frontends == {"ExtraVIP"}
    assert batch.masquerade == {(f"{ip}:{p}", masq) for ip, p in mine}


def test_vip_without_endpoints_rejects(pm: KproxyPluginManager, impl: str) -> None:
    engine = make_engine(pm, cluster_objects(), impl)
    dst = vip(engine, "empty")
    for src in (POD_CLIENT, NODE_CLIENT, EXTERNAL):
        d = engine.lookup(src, dst, 80, "TCP", sport=40000, now=0.0)
        assert (d.verdict, d.service, d.frontend, d.endpoint) == ("REJECT", "ns1/empty:p", "ExtraVIP", None), d
        assert outcome(engine, src, dst).verdicts == {"REJECT"}
    # another port of the VIP is nobody's
    assert engine.lookup(POD_CLIENT, dst, 81, "TCP", sport=40000, now=0.0).verdict == "PASS"


def test_dual_stack_vip(pm: KproxyPluginManager, impl: str) -> None:
    engine = make_engine(pm, cluster_objects(), impl)
    v6 = vip(engine, "dual", "AAAA")
    assert ipaddress.ip_address(v6) in ipaddress.ip_network(VIP6_RANGE)
    d = engine.lookup(POD6, v6, 80, "TCP", sport=40000, now=0.0)
    assert (d.verdict, d.frontend, d.endpoint, d.masquerade) == ("DNAT", "ExtraVIP", ("fd00:10::4", 8080), False)
    d = engine.lookup(POD_CLIENT, vip(engine, "dual"), 80, "TCP", sport=40000, now=0.0)
    assert (d.verdict, d.frontend, d.endpoint) == ("DNAT", "ExtraVIP", ("10.180.0.4", 8080))


# --------------------------------------------------------------------------- trace, rules, DNS


def test_trace_through_the_vip(pm: KproxyPluginManager, impl: str) -> None:
    engine = make_engine(pm, cluster_objects(), impl)
    dst = vip(engine, "web")
    slot = _slot("web", 254)
    t = engine.trace(POD_CLIENT, dst, 80, "TCP", sport=1234, now=0.0)
    assert (t.verdict, t.service, t.frontend) == ("DNAT", "ns1/web:p", "ExtraVIP")
    assert t.chains[0] == "KUBE-SERVICES" and t.chains[1].startswith("KUBE-SVC-")
    assert t.chains[-1].startswith("KUBE-SEP-") and len(t.chains) == 3
    assert {c["endpoint"] for c in t.candidates} == {"10.180.0.1:8080", "10.180.1.1:8080"}
    assert any(s.startswith(f"ExtraVIP: ns1/web answers on {dst}, allocated from {VIP_RANGE} (the default range)")
               and f"sha256(\"ns1/web\") picks 198.51.100.{slot + 1}" in s for s in t.steps), t.steps
    assert any("handled like the ClusterIP" in s for s in t.steps), t.steps
    # the external policy: through KUBE-EXT, masqueraded; the fixed address explained
    t = engine.trace(EXTERNAL, FIXED_VIP, 80, "TCP", sport=1234, now=0.0)
    assert (t.verdict, t.frontend, t.masquerade) == ("DNAT", "ExtraVIP", True)
    assert t.chains[0] == "KUBE-SERVICES" and t.chains[1].startswith("KUBE-EXT-")
    assert "KUBE-MARK-MASQ" in t.chains and t.chains[-1].startswith("KUBE-SEP-")
    assert f"ExtraVIP: ns1/pub answers on {FIXED_VIP}, fixed by {ADDRESS} (inside {VIP_RANGE}, the default range)" in (
        t.steps), t.steps
    # and a name of the cluster zone
    t = engine.trace(POD_CLIENT, "web.ns1.vip.cluster.local", 80, "TCP", sport=1234, now=0.0)
    assert (t.verdict, t.frontend, t.packet["dst"]) == ("DNAT", "ExtraVIP", dst)
    assert f"DNS answer: web.ns1.vip.cluster.local. A {dst}" in t.steps


def _section(text: str, table: str) -> str:
    start = text.index(f"*{table}\n")
    return text[start:text.index("COMMIT\n", start)]


def test_iptables_rules(pm: KproxyPluginManager, plugin: ModuleType) -> None:
    engine = make_engine(pm, cluster_objects())
    text = engine.render("iptables")
    nat, filt = _section(text, "nat"), _section(text, "filter")
    web, pub = vip(engine, "web"), FIXED_VIP
    ports = {pp.service: pp for pp in engine.plans["IPv4"].ports}
    svc, ext = ports["web"].svc_chain, ports["pub"].ext_chain
    # kube-proxy's rules for the VIPs, with the plugin's comment ("extra VIP")
    assert (f'-A KUBE-SERVICES -m comment --comment "ns1/web:p extra VIP" -m tcp -p tcp -d {web} --dport 80 '
            f"-j {svc}") in nat
    assert (f'-A {svc} -m comment --comment "ns1/web:p extra VIP" -m tcp -p tcp -d {web} --dport 80 '
            f"! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ") in nat
    assert (f'-A KUBE-SERVICES -m comment --comment "ns1/pub:p extra VIP" -m tcp -p tcp -d {pub} --dport 80 '
            f"-j {ext}") in nat
    assert (f'-A KUBE-SERVICES -m comment --comment "ns1/empty:p has no endpoints" -m tcp -p tcp '
            f"-d {vip(engine, 'empty')} --dport 80 -j REJECT") in filt
    # the plugin's own RuleText, in the filter table
    handler = pm.registry.get("ExtraVIP")
    assert isinstance(handler, plugin.ExtraVIPType)
    for name in ("web", "pub", "empty"):
        (rt,) = handler.rules(ports[name], "iptables", "IPv4")
        assert rt.table == "filter" and rt.chains == (f"XVIP-{ports[name].chain_base}",)
        assert f":{rt.chains[0]} - [0:0]" in filt
        for line in rt.lines:
            assert line in filt.splitlines()
    assert f"-A KUBE-PROXY-FIREWALL -p tcp -m conntrack --ctorigdst {web} --ctorigdstport 80 " in filt


def test_nftables_rules(pm: KproxyPluginManager, plugin: ModuleType) -> None:
    engine = make_engine(pm, cluster_objects(), mode="nftables")
    text = engine.render("nftables")
    lines = text.splitlines()
    web = vip(engine, "web")
    ports = {pp.service: pp for pp in engine.plans["IPv4"].ports}
    assert any(re.fullmatch(rf"add element ip kube-proxy service-ips \{{ {re.escape(web)} \. tcp \. 80 "
                            rf": goto service-\w+-ns1/web/tcp/p \}}", line) for line in lines), text
    assert any(line.startswith(f"add element ip kube-proxy service-ips {{ {FIXED_VIP} . tcp . 80 : goto external-")
               for line in lines), text
    assert any(line.startswith(f"add element ip kube-proxy no-endpoint-services {{ {vip(engine, 'empty')} . tcp . 80")
               for line in lines), text
    handler = pm.registry.get("ExtraVIP")
    assert isinstance(handler, plugin.ExtraVIPType)
    for name in ("web", "pub", "empty"):
        (rt,) = handler.rules(ports[name], "nftables", "IPv4")
        assert rt.chains == (f"extravip-{ports[name].chain_base}",)
        assert f"add chain ip kube-proxy {rt.chains[0]}" in lines
        for line in rt.lines:
            assert line in lines
    assert (f'add rule ip kube-proxy extravip-{ports["web"].chain_base} counter comment '
            f'"ns1/web:p ExtraVIP {web}:80 (internal)"') in lines
    # the IPv6 table has the dual-stack Service's VIP
    text6 = engine.render("nftables", family="IPv6")
    assert f"add element ip6 kube-proxy service-ips {{ {vip(engine, 'dual', 'AAAA')} . tcp . 80 : goto" in text6
    assert f"ip6 daddr {vip(engine, 'dual', 'AAAA')} meta l4proto tcp th dport 80 ct state new jump" in text6


def test_dns(pm: KproxyPluginManager) -> None:
    engine = make_engine(pm, cluster_objects())
    a, aaaa = vip(engine, "dual", "A"), vip(engine, "dual", "AAAA")
    assert ipaddress.ip_address(a) in ipaddress.ip_network(VIP_RANGE)
    assert ipaddress.ip_address(aaaa) in ipaddress.ip_network(VIP6_RANGE)
    assert vip(engine, "pub") == FIXED_VIP
    assert len({vip(engine, n) for n in ("web", "pub", "empty", "dual")}) == 4
    # IPv4-only Services answer AAAA with no data; the service name keeps its ClusterIPs
    nodata = engine.resolve("web.ns1.vip.cluster.local", "AAAA")
    assert (nodata.rcode, nodata.records) == ("NOERROR", ())
    svc = engine.resolve("dual.ns1.svc.cluster.local", "AAAA")
    assert [r.data for r in svc.records] == ["fd00:30::44"]
    assert engine.resolve("nothing.ns1.vip.cluster.local").rcode == "NXDOMAIN"


# regression: an external plugin frontend once ignored externalTrafficPolicy: Local
def test_external_policy_honours_external_traffic_policy_local(pm: KproxyPluginManager) -> None:
    objs = [
        *nodes(),
        extravip("x", "172.30.0.41", "external", externalTrafficPolicy="Local"),
        endpoints("x", "10.180.0.1", "10.180.1.1"),
        service("ns1", "plain", "172.30.0.51", [port(80, "p")], externalIPs=["192.168.99.51"],
                externalTrafficPolicy="Local"),
        endpoints("plain", "10.180.0.1", "10.180.1.1"),
    ]
    engine = make_engine(pm, objs)
    got, want = outcome(engine, EXTERNAL, vip(engine, "x")), outcome(engine, EXTERNAL, "192.168.99.51")
    assert want.endpoints == {"10.180.0.1:8080"} and not any(m for _, m in want.masquerade)
    assert (got.endpoints, got.masquerade) == (want.endpoints, want.masquerade)


# --------------------------------------------------------------------------- the kproxy command


kproxy = plugin_install.kproxy


@pytest.fixture
def cluster_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump_all(cluster_objects(), sort_keys=False))
    return path


def test_cli_plugins(installed: importlib.metadata.Distribution) -> None:
    r = kproxy("plugins", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    mine = [p for p in out["plugins"] if p["name"] == "extravip"]
    assert [{k: v for k, v in p.items() if k != "distribution"} for p in mine] == [
        {"name": "extravip", "module": MODULE, "priority": 0, "hooks": ["kproxy_register_service_types"]}]
    assert out["asking_order"]["kproxy_register_service_types"] == ["extravip", "externalname", "loadbalancer"]
    assert {"type": "ExtraVIP", "plugin": "extravip", "handler": "ExtraVIPType"} in out["service_types"]
    text = kproxy("plugins")
    assert text.returncode == 0, text.stderr
    assert re.search(r"^  extravip\s+kproxy_extravip\b.*: kproxy_register_service_types$", text.stdout, re.M)
    assert re.search(r"^  ExtraVIP\s+extravip\s+ExtraVIPType$", text.stdout, re.M)


# regression: entry-point plugins once had no distribution in list_plugin_distinfo()
def test_cli_plugins_names_the_distribution(installed: importlib.metadata.Distribution) -> None:
    r = kproxy("plugins", "--json")
    assert r.returncode == 0, r.stderr
    (mine,) = [p for p in json.loads(r.stdout)["plugins"] if p["name"] == "extravip"]
    assert mine["distribution"] == f"{DIST} {installed.version}"


def test_cli_trace_and_rules(pm: KproxyPluginManager, cluster_file: Path) -> None:
    engine = make_engine(pm, cluster_objects())
    web = vip(engine, "web")
    r = kproxy("trace", "-f", str(cluster_file), "--cluster-cidr", CLUSTER_CIDR, "--src", f"{POD_CLIENT}:5555",
               "--dst", f"{web}:80", "--json")
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)
    assert (t["verdict"], t["service"], t["frontend"], t["masquerade"]) == ("DNAT", "ns1/web:p", "ExtraVIP", False)
    assert t["endpoint"] in {"10.180.0.1:8080", "10.180.1.1:8080"}
    assert t["chains"][0] == "KUBE-SERVICES" and t["chains"][-1].startswith("KUBE-SEP-")
    assert any(s.startswith(f"ExtraVIP: ns1/web answers on {web}") for s in t["steps"])
    r = kproxy("trace", "-f", str(cluster_file), "--src", EXTERNAL, "--dst", "pub.ns1.vip.cluster.local:80")
    assert r.returncode == 0, r.stderr
    assert f"-> {FIXED_VIP}:80 TCP" in r.stdout and "via ExtraVIP" in r.stdout and "masquerade  yes" in r.stdout
    r = kproxy("rules", "-f", str(cluster_file), "--cluster-cidr", f"{CLUSTER_CIDR},fd00:10::/64")
    assert r.returncode == 0, r.stderr
    assert r.stdout == engine.render("iptables")
    r = kproxy("rules", "-f", str(cluster_file), "--mode", "nftables")
    assert r.returncode == 0, r.stderr
    assert f'counter comment "ns1/web:p ExtraVIP {web}:80 (internal)"' in r.stdout


def test_cli_bad_annotation(installed: importlib.metadata.Distribution, tmp_path: Path) -> None:
    objs = cluster_objects()
    objs[2]["metadata"]["annotations"] = {RANGE: "198.51.100.0/33"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump_all(objs))
    r = kproxy("trace", "-f", str(path), "--src", POD_CLIENT, "--dst", "172.30.0.41:80")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"kproxy: error: Service ns1/web: metadata.annotations[{RANGE}]: '198.51.100.0/33' "
                               "is not a CIDR"), lines


# --------------------------------------------------------------------------- the kernel


def kernel_objects() -> list[dict[str, Any]]:
    # the kernel topology is IPv4 only: without the dual-stack Service and its slices
    return [o for o in cluster_objects() if not o["metadata"]["name"].startswith("dual")]


def _counter(topo: Topology, mode: str, chain: str) -> int:
    """Packets counted by the plugin's accounting rule in the node's ruleset."""
    if mode == "iptables":
        out = subprocess.run(["ip", "netns", "exec", topo.node, "iptables-save", "-c", "-t", "filter"],
                             capture_output=True, text=True, check=True).stdout
        m = re.search(rf"^\[(\d+):\d+\] -A {chain} ", out, re.M)
    else:
        out = topo.nft_list(f"chain ip kube-proxy {chain}")
        m = re.search(r"counter packets (\d+)", out)
    assert m, out
    return int(m.group(1))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_kernel_connections_to_the_vip(default_manager: KproxyPluginManager, mode: str) -> None:
    """The rendered rules loaded into a network namespace: real TCP connections to the VIPs
    from a pod, the node and an external client reach the endpoints both twins name (with
    their masquerade), the VIP without endpoints refuses, and the accounting counts."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    if mode == "nftables" and shutil.which("nft") is None:
        pytest.skip("nftables ('nft') is not installed")
    build = build_nftables_oracle if mode == "nftables" else build_iptables_oracle
    with topology(NODE_IPS, tag="xv") as topo:
        oracle = build(topo, kernel_objects(), routes=(SERVICE_CIDR, EXTERNAL_IPS, VIP_RANGE))
        engine = oracle.engines[0]
        assert {e.compiled for e in oracle.engines} == ({True, False} if kp.COMPILED_AVAILABLE else {False})
        vips = {name: vip(engine, name) for name in ("web", "pub", "empty")}
        cases = [(src, name) for name in vips for src in ("pod", "node", "external")]
        probes = [(src, oracle.probe_for(src, vips[name], 80, count=24 if name != "empty" else 2))
                  for src, name in cases]
        for (src, name), (source, probe), replies in zip(cases, probes, oracle.run(probes), strict=True):
            oracle.check(source, probe, replies, expect_all=True)
            verdicts = {kernel_verdict(r) for r in replies}
            if name == "empty":
                assert verdicts == {"REJECT"}, describe(replies)
            else:
                assert verdicts == {"DNAT"}, describe(replies)
                k = 1 if name == "web" else 2
                assert {r.endpoint for r in replies} == {f"10.180.0.{k}:8080", f"10.180.1.{k}:8080"}, src
        if mode == "iptables":  # the plugin's text round-trips through the kernel as written
            assert topo.iptables_save() == engine.render(format="save", with_jumps=True)
        prefix = "XVIP-" if mode == "iptables" else "extravip-"
        ports = {pp.service: pp for pp in engine.plans["IPv4"].ports}
        for name in ("web", "pub"):
            assert _counter(topo, mode, prefix + ports[name].chain_base) >= 3 * 24, name

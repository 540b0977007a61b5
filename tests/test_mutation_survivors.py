"""Tests written for mutants that survived the first mutation run (tests/MUTATION.md): each
test names the line it guards and the mutant that used to pass unnoticed."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

import kproxy_core as kp
from kproxy_core.plan import endpoint_selection
from kproxy_core.plugins import make_plugin_manager
from kproxy_core.render.nftables import NftablesError, _quote, apply_transaction
from kproxy_core.testing import endpoint, endpoint_slice, node, service


class Dual(kp.ServiceType):
    """A plugin type with one internal frontend per family."""

    name = "Dual"

    def frontends(self, service: kp.Service, port: kp.ServicePort, family: str, cluster: kp.Cluster) -> Any:
        yield kp.FrontendSpec("192.0.2.10", kind="Dual", policy="internal")
        yield kp.FrontendSpec("2001:db8::10", kind="Dual", policy="internal")

    def rules(self, port: Any, renderer: str, family: str) -> Any:
        yield kp.RuleText(self.table, (f"-A DUAL-COUNT -d {port.cluster_ip}",), ("DUAL-COUNT",))

    table = "filter"


class DualPlugin:
    def __init__(self, handler: kp.ServiceType | None = None) -> None:
        self.handler = handler or Dual()

    @kp.hookimpl
    def kproxy_register_service_types(self, registry: Any) -> None:
        registry.register(self.handler)


def dual_objects(type: str = "Dual") -> list[dict[str, Any]]:
    """A dual-stack Service of ``type`` on node n1, one endpoint per family."""
    return [node("n1", addresses=["192.168.0.2", "fd00::2"]),
            service("web", type=type, cluster_ips=["10.96.0.10", "fd00:96::10"], ip_families=["IPv4", "IPv6"],
                    ports=[80]),
            endpoint_slice("web", ["10.1.0.5"], name="web-v4"),
            endpoint_slice("web", ["fd00:1::5"], name="web-v6")]


def test_a_plugin_frontend_of_the_other_family_is_left_out() -> None:
    """plan.py ``_plugin_frontends``: ``(addr.version == 6) != fam6`` forced False put the
    IPv6 frontend into the IPv4 plan (and the other way round)."""
    pm = make_plugin_manager([DualPlugin()], entry_points=False)
    engine = kp.Engine(kp.Cluster.from_objects(dual_objects(), plugins=pm), node="n1")
    v4, v6 = engine.plans["IPv4"].ports[0], engine.plans["IPv6"].ports[0]
    assert [f.ip for f in v4.extra_frontends] == ["192.0.2.10"]
    assert [f.ip for f in v6.extra_frontends] == ["2001:db8::10"]
    assert engine.lookup("10.1.9.9", "192.0.2.10", 80).endpoint == ("10.1.0.5", 8080)
    assert engine.lookup("fd00:1::9", "2001:db8::10", 80).endpoint == ("fd00:1::5", 8080)


def test_masquerade_all_marks_a_plugin_internal_frontend() -> None:
    """render/iptables.py: the internal frontend's ``-j KUBE-MARK-MASQ`` under
    --masquerade-all (``mark_masq_all`` forced False wrote the detector's rule instead)."""
    pm = make_plugin_manager([DualPlugin()], entry_points=False)
    cluster = kp.Cluster.from_objects(dual_objects(), plugins=pm)
    text = kp.Engine(cluster, node="n1", masquerade_all=True, cluster_cidr="10.0.0.0/8").render("iptables")
    rule = ('-A KUBE-SVC-{} -m comment --comment "default/web Dual IP" -m tcp -p tcp -d 192.0.2.10 --dport 80 '
            "-j KUBE-MARK-MASQ")
    chain = next(w for w in text.split() if w.startswith("KUBE-SVC-"))
    assert rule.format(chain.removeprefix("KUBE-SVC-")) in text
    engine = kp.Engine(cluster, node="n1", masquerade_all=True, cluster_cidr="10.0.0.0/8")
    assert engine.lookup("10.1.9.9", "192.0.2.10", 80).masquerade  # a pod source, masqueraded all the same
    plain = kp.Engine(cluster, node="n1", cluster_cidr="10.0.0.0/8")
    assert not plain.lookup("10.1.9.9", "192.0.2.10", 80).masquerade
    assert "! -s 10.0.0.0/8 -j KUBE-MARK-MASQ" in plain.render("iptables")


@pytest.mark.parametrize("table", ["mangle", "raw", ""])
def test_rule_text_for_another_table_is_refused(table: str) -> None:
    """render/iptables.py: RuleText.table must be filter or nat (the check inverted
    refused both and let any other through)."""
    handler = Dual()
    handler.table = table  # type: ignore[misc]
    pm = make_plugin_manager([DualPlugin(handler)], entry_points=False)
    engine = kp.Engine(kp.Cluster.from_objects(dual_objects(), plugins=pm), node="n1")
    with pytest.raises(ValueError, match=r"table must be 'filter' or 'nat'"):
        engine.render("iptables")
    handler.table = "filter"  # type: ignore[misc]
    assert ":DUAL-COUNT - [0:0]" in engine.render("iptables")


def test_a_one_second_affinity_is_written_in_both_modes() -> None:
    """render/nftables.py: ``affinity = pp.affinity_timeout > 0`` as ``> 1`` dropped the
    affinity of a Service with timeoutSeconds 1, the smallest the API server accepts."""
    objs = [service("web", session_affinity_timeout=1), endpoint_slice("web", ["10.1.0.5", "10.1.0.6"])]
    cluster = kp.Cluster.from_objects(objs)
    nft = kp.Engine(cluster, node=None, mode="nftables").render("nftables")
    assert "timeout 1s" in nft and "update @affinity-" in nft
    ipt = kp.Engine(cluster, node=None).render("iptables")
    assert "--rcheck --seconds 1 --reap" in ipt


@pytest.mark.parametrize("verb", ["insert", "replace", "delete", "flush"])
def test_the_nft_reader_refuses_rules_other_than_add(verb: str) -> None:
    """render/nftables.py ``apply_transaction``: only ``add rule`` is modelled; the check
    forced off accepted an ``insert rule`` as an append."""
    text = ("add table ip kube-proxy\nadd chain ip kube-proxy services\n"
            f"{verb} rule ip kube-proxy services ip daddr 10.0.0.1 drop\n")
    with pytest.raises(NftablesError, match=r"line 3: "):
        apply_transaction(text)
    state = apply_transaction(text.replace(f"{verb} rule", "add rule"))
    assert state.chains["services"].rules == ["ip daddr 10.0.0.1 drop"]


def test_endpoint_selection_alone_uses_the_default_manager() -> None:
    """plan.py ``endpoint_selection(plugins=None)``: the shared default manager answers (the
    ``plugins is None`` branch forced off called hooks on None)."""
    svc = kp.Cluster.from_objects([service("web", annotations={"kproxy-core.io/selector": "round-robin"})])
    s = svc.services[("default", "web")]
    eps, selector, by, _ = endpoint_selection(s, s.ports[0], [])
    assert (eps, selector.kind, by) == ([], "round-robin", "annotations")


def test_the_nodes_own_packet_to_its_local_external_ip_is_rejected() -> None:
    """tables.py ``_dst_local``: a frontend on one of the node's own addresses is local to
    the kernel, so the node's own packet to it passes filter INPUT (KUBE-EXTERNAL-SERVICES:
    REJECT without endpoints), while one to a remote externalIP leaves unchanged. The
    mutant ``return None`` for node addresses made both PASS."""
    objs = [node("n1", addresses=["192.168.0.2"]), service("web", external_ips=["192.168.0.2", "203.0.113.5"])]
    for impl in ("compiled", "python"):
        engine = kp.Engine(kp.Cluster.from_objects(objs), node="n1", cluster_cidr="10.0.0.0/8", impl=impl)
        assert engine.lookup("192.168.0.2", "192.168.0.2", 80).verdict == "REJECT", impl
        assert engine.lookup("192.168.0.2", "203.0.113.5", 80).verdict == "PASS", impl
        assert engine.lookup("198.51.100.9", "203.0.113.5", 80).verdict == "REJECT", impl
    # with an endpoint the local address is DNATed for the node itself too
    objs.append(endpoint_slice("web", [endpoint("10.1.0.5", node="n1")]))
    engine = kp.Engine(kp.Cluster.from_objects(objs), node="n1", cluster_cidr="10.0.0.0/8")
    assert engine.lookup("192.168.0.2", "192.168.0.2", 80).verdict == "DNAT"


@pytest.mark.parametrize(("mode", "option"), [("BridgeInterface", "pod_bridge_interface"),
                                              ("InterfaceNamePrefix", "pod_interface_name_prefix")])
def test_an_interface_name_is_at_most_15_characters(mode: str, option: str) -> None:
    """plan.py: Linux interface names are at most IFNAMSIZ - 1 = 15 bytes (what iptables -i
    and nft iifname accept); the second run's survivor forced the check off. 15 characters
    plan, 16 or a space are one ManifestError naming the flag."""
    pm = make_plugin_manager([DualPlugin()], entry_points=False)
    cluster = kp.Cluster.from_objects(dual_objects(), plugins=pm)
    ok = kp.Engine(cluster, node="n1", detect_local_mode=mode, **{option: "a" * 15})
    assert ok.plans["IPv4"].ports
    flag = "--" + option.replace("_", "-")
    for bad in ("a" * 16, "cbr 0", "veth*"):
        with pytest.raises(kp.ManifestError, match=rf"^{flag}: '{re.escape(bad)}' is not an interface name$"):
            kp.Engine(cluster, node="n1", detect_local_mode=mode, **{option: bad})


@pytest.mark.parametrize("localhost_nodeports", [True, False])
def test_kubelet_firewall_jumps_are_ipv4_only(localhost_nodeports: bool) -> None:
    """render/iptables.py ``jump_rules``: kube-proxy fills kubelet's KUBE-FIREWALL (the
    localnet block for localhost NodePorts) in IPv4 only, so only an IPv4 table with
    localhost NodePorts on jumps to it from INPUT and OUTPUT (the second run's survivor
    swapped the family; only the kernel tests, left out of mutation runs, saw it)."""
    engine = kp.Engine(kp.Cluster.from_objects(dual_objects("NodePort")), node="n1",
                       localhost_nodeports=localhost_nodeports)
    jumps = {fam: [ln for ln in engine.render("iptables", family=fam, with_jumps=True).splitlines()  # type: ignore[arg-type]
                   if ln.endswith("-j KUBE-FIREWALL")] for fam in ("IPv4", "IPv6")}
    assert jumps["IPv4"] == (["-A OUTPUT -j KUBE-FIREWALL", "-A INPUT -j KUBE-FIREWALL"] if localhost_nodeports else [])
    assert jumps["IPv6"] == []


def test_an_apply_on_a_cluster_whose_services_were_replaced() -> None:
    """manifests.py ``indexed``: a Cluster whose maps a user replaced (``dataclasses.replace``
    with a plain dict) has its indexes rebuilt; the second run's survivor kept the old
    ones when any index was set, so a Service taken out still held its ClusterIP and an
    apply that gave the IP to another Service was refused."""
    cluster = kp.Cluster.from_objects(dual_objects("NodePort"))
    without_web = dataclasses.replace(cluster, services={k: v for k, v in cluster.services.items()
                                                          if k != ("default", "web")})
    engine = kp.Engine(without_web, node="n1")
    engine.apply([service("api", cluster_ips=["10.96.0.10"], ports=[81])])
    assert engine.lookup("10.1.9.9", "10.96.0.10", 81).verdict == "REJECT"  # no endpoints: api's, not web's
    assert engine.lookup("10.1.9.9", "10.96.0.10", 80).verdict == "PASS"


@pytest.mark.parametrize("n", [2, 3, 5])
def test_round_robin_nth_cascade_in_iptables(n: int) -> None:
    """render/iptables.py: round-robin is a cascade of ``statistic --mode nth`` rules, the
    k-th (from 0) with ``--every n-k --packet 0`` and the last one without, so that each
    endpoint takes one turn in n (the second run's survivor wrote ``n+k``; only the kernel
    test of the selectors, left out of mutation runs, saw it)."""
    objs = [node("n1", addresses=["192.168.0.2"]),
            service("web", annotations={"kproxy-core.io/selector": "round-robin"}),
            endpoint_slice("web", [f"10.1.0.{i}" for i in range(1, n + 1)])]
    text = kp.Engine(kp.Cluster.from_objects(objs), node="n1", mode="iptables").render("iptables")
    svc_rules = [ln for ln in text.splitlines() if ln.startswith("-A KUBE-SVC-") and "-j KUBE-SEP-" in ln]
    assert len(svc_rules) == n
    everies = [re.search(r"--mode nth --every (\d+) --packet 0 ", ln) for ln in svc_rules]
    assert [int(m.group(1)) if m else None for m in everies] == [*range(n, 1, -1), None]


def test_nft_comments_are_quoted_like_gos_percent_q() -> None:
    """render/nftables.py ``_quote`` (kube-proxy writes comments with Go's %q): a quote and
    a backslash are escaped, as are newline and tab (the second run's survivor left quote
    and backslash bare; Kubernetes names never hold them, plugin text may)."""
    assert _quote('a"b\\c\n\t~') == '"a\\"b\\\\c\\n\\t~"'


def test_the_nft_reader_refuses_deleting_a_missing_element() -> None:
    """render/nftables.py ``apply_transaction``: ``delete element`` of an element that is
    not there fails the transaction, as nft does ("No such file or directory"; checked in
    a namespace); the second run's survivor let it through to a KeyError."""
    text = ("add table ip kube-proxy\nadd set ip kube-proxy s { type ipv4_addr ; }\n"
            "add element ip kube-proxy s { 10.0.0.1 }\ndelete element ip kube-proxy s { 10.0.0.1 }\n")
    assert apply_transaction(text).sets["s"].elements == {}
    with pytest.raises(NftablesError, match=r"^line 5: no element 10.0.0.1 in s$"):
        apply_transaction(text + "delete element ip kube-proxy s { 10.0.0.1 }\n")

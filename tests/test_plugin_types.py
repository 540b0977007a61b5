"""The bundled Service-type plugins, LoadBalancer and ExternalName, through the plugin API.

kube-proxy's expected LoadBalancer rules (proxier_test.go) are in test_render_iptables.py and
test_render_nftables.py, its lookups in test_loadbalancer.py and the kernel's verdicts in
test_kernel_loadbalancer.py; this file covers what the plugins add on their own: which
ingress entries become frontends, validation, trace steps, DNS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cli_run
import pytest
from k8s import ep, eport, lb, node, port, service, slice_

import kproxy_core as kp
from kproxy_core.plugins import make_plugin_manager

NODE = "n1"


def lb_objs(ingress: list[dict[str, Any]], **spec: Any) -> list[dict[str, Any]]:
    svc = service("ns", "web", "10.96.0.10", [port(80, "http", node_port=30080)], type="LoadBalancer", **spec)
    svc["status"] = {"loadBalancer": {"ingress": ingress}}
    return [
        node(NODE, "192.168.0.2", pod_cidr="10.0.0.0/24"),
        svc,
        slice_("ns", "web", [ep("10.0.0.5", NODE), ep("10.0.1.5", "n2")], [eport(8080, "http")]),
    ]


# --------------------------------------------------------------------------- LoadBalancer


def test_vip_and_proxy_and_hostname_entries(make_engine: Any) -> None:
    objs = lb_objs([
        {"ip": "192.0.2.1", "ipMode": "VIP"},
        {"ip": "192.0.2.2"},
        {"ip": "192.0.2.3", "ipMode": "Proxy"},
        {"hostname": "lb.example.com"},
        {"ip": "2001:db8::1"},
    ])
    e = make_engine(objs, node=NODE, cluster_cidr="10.0.0.0/16")
    assert e.plans["IPv4"].ports[0].lb_ips == ("192.0.2.1", "192.0.2.2")
    assert e.lookup("203.0.113.1", "192.0.2.1", 80).frontend == "LoadBalancer"
    assert e.lookup("203.0.113.1", "192.0.2.2", 80).verdict == "DNAT"
    assert e.lookup("203.0.113.1", "192.0.2.3", 80).verdict == "PASS"  # ipMode Proxy: kube-proxy skips it
    t = e.trace("203.0.113.1", "192.0.2.1", 80)
    assert (
        "LoadBalancer: ingress entries kube-proxy skips: 192.0.2.3 (ipMode Proxy: the balancer proxies to the "
        "nodes), lb.example.com (hostname only)"
    ) in t.steps


def test_lb_ip_in_the_other_family_needs_that_family() -> None:
    objs = lb_objs([{"ip": "2001:db8::1"}])
    e = kp.Engine(kp.Cluster.from_objects(objs), node=NODE)
    assert e.plans["IPv4"].ports[0].lb_ips == ()  # a single-stack IPv4 service has no IPv6 proxier entry
    assert e.plans["IPv6"].ports == ()


def test_source_ranges_per_family(make_engine: Any) -> None:
    objs = lb_objs([{"ip": "192.0.2.1"}], loadBalancerSourceRanges=["198.51.100.0/24", "2001:db8:1::/48"])
    e = make_engine(objs, node=NODE)
    assert e.plans["IPv4"].ports[0].source_ranges == ("198.51.100.0/24",)
    assert e.lookup("198.51.100.7", "192.0.2.1", 80).verdict == "DNAT"
    assert e.lookup("203.0.113.7", "192.0.2.1", 80).verdict == "DROP"


def test_allocate_load_balancer_node_ports_false(make_engine: Any) -> None:
    objs = lb_objs([{"ip": "192.0.2.1"}], allocateLoadBalancerNodePorts=False)
    del objs[1]["spec"]["ports"][0]["nodePort"]
    c = kp.Cluster.from_objects(objs)
    assert not any("nodePort" in w for w in c.warnings)
    e = make_engine(c, node=NODE)
    assert e.plans["IPv4"].ports[0].node_port == 0
    assert e.lookup("203.0.113.1", "192.168.0.2", 30080).verdict == "PASS"
    assert e.lookup("203.0.113.1", "192.0.2.1", 80).verdict == "DNAT"
    assert any("allocateLoadBalancerNodePorts is false" in s for s in e.trace("203.0.113.1", "192.0.2.1", 80).steps)


def test_missing_node_port_with_allocation_on_is_a_warning() -> None:
    objs = lb_objs([{"ip": "192.0.2.1"}])
    del objs[1]["spec"]["ports"][0]["nodePort"]
    assert kp.Cluster.from_objects(objs).warnings == (
        "Service ns/web: spec.ports[0].nodePort: missing although allocateLoadBalancerNodePorts is true "
        "(the API server would allocate one); no NodePort rules for this port",
    )


def test_health_check_node_port() -> None:
    objs = lb_objs([{"ip": "192.0.2.1"}], externalTrafficPolicy="Local", healthCheckNodePort=31000)
    e = kp.Engine(kp.Cluster.from_objects(objs), node=NODE)
    assert e.plans["IPv4"].ports[0].health_check_node_port == 31000
    assert ('-A KUBE-NODEPORTS -m comment --comment "ns/web:http health check node port" -m tcp -p tcp '
            "--dport 31000 -j ACCEPT") in e.render("iptables")
    # eTP=Cluster: the API server would refuse it, kube-proxy ignores it
    objs = lb_objs([{"ip": "192.0.2.1"}], healthCheckNodePort=31000)
    c = kp.Cluster.from_objects(objs)
    assert c.warnings == (
        "Service ns/web: spec.healthCheckNodePort: may only be set when externalTrafficPolicy is 'Local'; "
        "kube-proxy ignores it",
    )
    assert kp.Engine(c, node=NODE).plans["IPv4"].ports[0].health_check_node_port == 0
    objs = lb_objs([{"ip": "192.0.2.1"}], externalTrafficPolicy="Local")
    assert any("healthCheckNodePort: missing" in w for w in kp.Cluster.from_objects(objs).warnings)


@pytest.mark.parametrize(
    ("ingress", "message"),
    [
        ({"ip": "192.0.2.1", "ipMode": "Direct"},
         "status.loadBalancer.ingress[0].ipMode: 'Direct' is not one of VIP, Proxy"),
        ({"hostname": "a.example.com", "ipMode": "VIP"}, "status.loadBalancer.ingress[0].ipMode: may only be set "
         "when ip is set"),
    ],
)
def test_bad_ingress_is_an_error(ingress: dict[str, Any], message: str) -> None:
    with pytest.raises(kp.ManifestError) as e:
        kp.Cluster.from_objects(lb_objs([ingress]))
    assert str(e.value) == f"Service ns/web: {message}"


def test_pending_load_balancer_has_only_cluster_ip_and_node_port(make_engine: Any) -> None:
    e = make_engine(lb_objs([]), node=NODE)
    assert e.lookup("203.0.113.1", "192.168.0.2", 30080).verdict == "DNAT"
    assert "LoadBalancer: no status.loadBalancer.ingress yet (pending): only the ClusterIP and NodePorts" in (
        e.trace("203.0.113.1", "192.168.0.2", 30080).steps)


def test_lb_builder_matches_kubectl_shape() -> None:
    obj = lb(service("ns", "x", "10.96.0.1", [port(80)], type="LoadBalancer"), "192.0.2.9")
    assert obj["status"]["loadBalancer"]["ingress"][0]["ip"] == "192.0.2.9"


# --------------------------------------------------------------------------- ExternalName


def ext(name: str, external_name: Any, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "ExternalName", **spec}
    if external_name is not None:
        body["externalName"] = external_name
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "ns", "name": name}, "spec": body}


def test_external_name_cname_and_no_rules() -> None:
    objs = [ext("db", "db.example.com."), service("ns", "web", "10.96.0.10", [port(80)])]
    e = kp.Engine(kp.Cluster.from_objects(objs), node=None)
    assert all(pp.service != "db" for pp in e.plans["IPv4"].ports)
    assert "ns/db" not in e.render("iptables") and "ns/db" not in e.render("nftables")
    a = e.resolve("db.ns.svc.cluster.local")
    assert a.rcode == "NOERROR"
    assert [(r.name, r.rtype, r.data) for r in a.records] == [("db.ns.svc.cluster.local", "CNAME", "db.example.com.")]
    assert any(n.startswith("db.example.com is outside the cluster zone: a resolver asks upstream") for n in a.notes)
    spelled = e.resolve("DB.ns.svc.cluster.local.", "CNAME")  # case-insensitive, root dot, echoes the spelling
    echoed = [(r.name, r.rtype, r.data) for r in spelled.records]
    assert echoed == [("DB.ns.svc.cluster.local", "CNAME", "db.example.com.")]
    assert e.resolve("db.ns.svc.cluster.local", "TXT").records == ()  # NODATA
    assert e.resolve("db.ns.svc.cluster.local", "TXT").rcode == "NOERROR"


def test_external_name_into_the_zone_is_followed() -> None:
    objs = [ext("alias", "web.ns.svc.cluster.local"), service("ns", "web", "10.96.0.10", [port(80)])]
    e = kp.Engine(kp.Cluster.from_objects(objs), node=None, seed=1)
    a = e.resolve("alias.ns.svc.cluster.local")
    assert [(r.rtype, r.data) for r in a.records] == [("CNAME", "web.ns.svc.cluster.local."), ("A", "10.96.0.10")]
    t = e.trace("10.1.0.1", "alias.ns.svc.cluster.local", 80)
    assert t.packet["dst"] == "10.96.0.10" and t.service == "ns/web"
    # 4 dots < ndots:5: a pod tries the search list first (3 NXDOMAINs), then the name as written
    assert [s for s in t.steps if s.endswith("NXDOMAIN")] == [
        f"DNS A alias.ns.svc.cluster.local.{d}: NXDOMAIN"
        for d in ("default.svc.cluster.local", "svc.cluster.local", "cluster.local")
    ]
    assert t.steps[4:7] == [
        "DNS A alias.ns.svc.cluster.local: NOERROR",
        "DNS answer: alias.ns.svc.cluster.local. CNAME web.ns.svc.cluster.local.",
        "DNS answer: web.ns.svc.cluster.local. A 10.96.0.10",
    ]


def test_ip_valued_external_name_is_flagged() -> None:
    c = kp.Cluster.from_objects([ext("legacy", "10.20.30.40")])
    assert c.warnings == (
        "Service ns/legacy: spec.externalName: '10.20.30.40' is an IP address: CoreDNS answers NXDOMAIN for this "
        "Service (no CNAME, no A record; coredns/coredns#2324); use a ClusterIP Service without a selector and an "
        "EndpointSlice instead",
    )
    e = kp.Engine(c, node=None)
    a = e.resolve("legacy.ns.svc.cluster.local")
    assert a.rcode == "NXDOMAIN" and a.records == ()
    assert any("coredns/coredns#2324" in n for n in a.notes)
    t = e.trace("10.1.0.1", "legacy.ns.svc.cluster.local", 443)
    assert t.verdict == "PASS" and t.service == "ns/legacy"
    assert "ns/legacy is type ExternalName: kube-proxy writes no rules for it and no packet is proxied" in t.steps
    assert any("coredns/coredns#2324" in s for s in t.steps)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "spec.externalName: required for type ExternalName"),
        ("", "spec.externalName: required for type ExternalName"),
        ("-bad.example.com", "spec.externalName: '-bad.example.com': a lowercase RFC 1123 subdomain"),
        ("DB.example.com", "spec.externalName: 'DB.example.com': a lowercase RFC 1123 subdomain"),
        ("under_score.example.com", "spec.externalName: 'under_score.example.com': a lowercase RFC 1123 subdomain"),
        ("a" * 254, "spec.externalName: '" + "a" * 254 + "': must be no more than 253 characters"),
    ],
)
def test_bad_external_name(value: Any, message: str) -> None:
    with pytest.raises(kp.ManifestError) as e:
        kp.Cluster.from_objects([ext("db", value)])
    assert str(e.value).startswith(f"Service ns/db: {message}")


def test_external_name_may_not_carry_node_ports() -> None:
    obj = ext("db", "db.example.com", ports=[{"port": 5432, "nodePort": 30000}])
    with pytest.raises(kp.ManifestError, match=r"nodePort: may not be used when type is 'ExternalName'"):
        kp.Cluster.from_objects([obj])


def test_cli_trace_by_name(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [ext("db", "db.example.com")]}))
    r = cli_run.kproxy("trace", "-f", str(f), "--src", "10.1.0.1", "--dst", "db.ns.svc.cluster.local:5432", "--json",
                       timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["verdict"] == "PASS" and out["service"] == "ns/db"
    assert "DNS answer: db.ns.svc.cluster.local. CNAME db.example.com." in out["steps"]


def test_annotations_plugin_validates_at_load() -> None:
    obj = service("ns", "web", "10.96.0.10", [port(80)])
    obj["metadata"]["annotations"] = {"kproxy-core.io/selector": "fastest"}
    with pytest.raises(kp.ManifestError) as e:
        kp.Cluster.from_objects([obj])
    assert str(e.value) == (
        "Service ns/web: metadata.annotations[kproxy-core.io/selector]: 'fastest' is not one of random, weighted, "
        "round-robin, source-hash, maglev"
    )
    obj["metadata"]["annotations"] = {"kproxy-core.io/weights": "10.0.0.1=heavy"}
    with pytest.raises(kp.ManifestError, match=r"kproxy-core.io/weights\]: '10.0.0.1=heavy': weight 'heavy'"):
        kp.Cluster.from_objects([obj])
    # without the bundled plugins nobody reads the annotations
    kp.Cluster.from_objects([obj], plugins=make_plugin_manager(entry_points=False, bundled=False))


def test_local_addresses_make_a_vip_local(make_engine: Any) -> None:
    """A load-balancer VIP on the node's interface (kube-vip) is LOCAL to the kernel: the
    NodePort tail rule accepts it and the node's connection from it is a local source
    (kernel-checked in test_kernel_loadbalancer.py)."""
    objs = lb_objs([{"ip": "192.0.2.1"}], externalTrafficPolicy="Local", healthCheckNodePort=31000)
    objs[2] = slice_("ns", "web", [ep("10.0.1.5", "n2")], [eport(8080, "http")])  # a remote endpoint only
    plain = make_engine(objs, node=NODE)
    vip_local = make_engine(objs, node=NODE, local_addresses="192.0.2.1")
    assert plain.lookup("203.0.113.1", "192.0.2.1", 30080).verdict == "PASS"
    # a NodePort packet now: eTP=Local without a local endpoint drops it
    assert vip_local.lookup("203.0.113.1", "192.0.2.1", 30080).verdict == "DROP"
    assert plain.lookup("192.0.2.1", "192.0.2.1", 80).verdict == "DROP"  # an external source, eTP=Local
    d = vip_local.lookup("192.0.2.1", "192.0.2.1", 80)
    assert (d.verdict, d.masquerade) == ("DNAT", True)
    assert vip_local.plans["IPv4"].config.node_ip == "192.168.0.2"  # never kube-proxy's nodeIP
    with pytest.raises(kp.ManifestError, match=r"--local-address: 'vip' is not an IP address"):
        make_engine(objs, node=NODE, local_addresses=["vip"])

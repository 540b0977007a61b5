"""The Multi-Cluster Services plugin distribution plugins/kproxy-mcs, installed for real
from its wheel, end to end: ServiceImports and their imported EndpointSlices through both
twins, both renderers, the kernel (connections to a ClusterSetIP land on an imported
endpoint) and ``dig`` against ``kproxy dns serve`` (``clusterset.local``)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import plugin_install
import pytest
import yaml
from k8s import node
from netns import topology, unavailable_reason
from test_dns_dig import dig
from test_dns_server import SERVE, Served
from test_kernel_iptables import CLUSTER_CIDR, NODE, NODE_IPS, OTHER, POD_CLIENT, SERVICE_CIDR, describe, kernel_verdict
from test_kernel_iptables import build_oracle as build_iptables_oracle
from test_kernel_nftables import build_oracle as build_nftables_oracle

import kproxy_core as kp
from kproxy_core.plugins import KproxyPluginManager, make_plugin_manager

DIST, MODULE = "kproxy-mcs", "kproxy_mcs"
NS = "shop"
WEB_IP = "172.30.9.9"  # in SERVICE_CIDR: the kernel topology routes it to the node
SVC_LABEL, CLUSTER_LABEL = "multicluster.kubernetes.io/service-name", "multicluster.kubernetes.io/source-cluster"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[importlib.metadata.Distribution]:
    with plugin_install.installed(DIST, MODULE, tmp_path_factory.mktemp("mcs")) as (dist, _):
        yield dist


@pytest.fixture(scope="module")
def pm(installed: importlib.metadata.Distribution) -> KproxyPluginManager:
    return make_plugin_manager(entry_points=True)


@pytest.fixture
def default_manager(pm: KproxyPluginManager) -> Iterator[KproxyPluginManager]:
    with plugin_install.as_default(pm):
        yield pm


def derived(name: str) -> str:
    import kproxy_mcs

    return str(kproxy_mcs.derived_name(NS, name))


def service_import(name: str, kind: str, ips: list[str] | None, ports: list[dict[str, Any]],
                   clusters: tuple[str, ...], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": kind, "ports": ports, **spec}
    if ips:
        body["ips"] = ips
    return {"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
            "metadata": {"name": name, "namespace": NS}, "spec": body,
            "status": {"clusters": [{"cluster": c} for c in clusters]}}


def imported(name: str, cluster: str, ips: list[str], port: int = 8080, hostnames: bool = False,
             ready: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-{cluster}", "namespace": NS, "labels": {SVC_LABEL: name, CLUSTER_LABEL: cluster}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": ready},
                       **({"hostname": f"{name}-{i}"} if hostnames else {})} for i, ip in enumerate(ips)],
    }


def objects() -> list[dict[str, Any]]:
    """web: a ClusterSetIP exported by east and west; db: headless, exported by east."""
    return [
        node(NODE, *NODE_IPS, pod_cidr="10.0.0.0/24"), node(OTHER, "192.168.0.3"),
        service_import("web", "ClusterSetIP", [WEB_IP], [{"name": "http", "port": 80, "protocol": "TCP"}],
                       ("east", "west")),
        imported("web", "east", ["10.180.0.1", "10.180.0.2"]),
        imported("web", "west", ["10.190.0.1"]),
        service_import("db", "Headless", None, [{"name": "http", "port": 5432}], ("east",)),
        imported("db", "east", ["10.180.0.7", "10.180.0.8"], port=5432, hostnames=True),
    ]


def engine_for(pm: KproxyPluginManager, objs: list[dict[str, Any]], impl: str | None = None,
               **kw: Any) -> kp.Engine:
    return kp.Engine(kp.Cluster.from_objects(objs, plugins=pm), node=NODE, cluster_cidr=CLUSTER_CIDR, plugins=pm,
                     impl=impl, seed=3, **kw)


kproxy = plugin_install.kproxy


# --------------------------------------------------------------------------- installation


def test_kproxy_plugins_lists_it(installed: importlib.metadata.Distribution) -> None:
    r = kproxy("plugins", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    mine = [p for p in out["plugins"] if p["name"] == "mcs"]
    assert len(mine) == 1 and mine[0]["module"] == MODULE
    assert set(mine[0]["hooks"]) == {"kproxy_read_object", "kproxy_register_service_types"}
    assert {"type": "ServiceImport", "plugin": "mcs", "handler": "ServiceImportType"} in out["service_types"]
    text = kproxy("plugins").stdout
    assert re.search(r"^  mcs\s+kproxy_mcs\b", text, re.M), text


def test_without_the_plugin_kube_proxy_sees_no_service(installed: importlib.metadata.Distribution) -> None:
    plain = make_plugin_manager(entry_points=False)
    engine = kp.Engine(kp.Cluster.from_objects(objects(), plugins=plain), node=NODE, plugins=plain)
    assert engine.lookup(POD_CLIENT, WEB_IP, 80).verdict == "PASS"


# --------------------------------------------------------------------------- decisions


def test_both_twins_send_a_clusterset_ip_to_every_cluster(pm: KproxyPluginManager, impl: str) -> None:
    engine = engine_for(pm, objects(), impl=impl)
    got = {engine.lookup(POD_CLIENT, WEB_IP, 80, "TCP", sport=s).endpoint for s in range(2000, 2300)}
    assert got == {("10.180.0.1", 8080), ("10.180.0.2", 8080), ("10.190.0.1", 8080)}
    d = engine.lookup(POD_CLIENT, WEB_IP, 80, "TCP", sport=9)
    assert (d.verdict, d.service, d.frontend, d.masquerade) == ("DNAT", f"{NS}/{derived('web')}:http", "ClusterIP",
                                                                 False)
    # from outside the pod network the ClusterIP rules masquerade, as for any ClusterIP
    assert engine.lookup("203.0.113.9", WEB_IP, 80, "TCP", sport=9).masquerade
    assert engine.lookup(POD_CLIENT, WEB_IP, 81, "TCP").verdict == "PASS"  # no such port
    # a headless import is not proxied
    assert not [p for p in engine.service_ports if p.name.startswith(f"{NS}/{derived('db')}")]


def test_batches_agree_with_single_lookups(pm: KproxyPluginManager, impl: str) -> None:
    import numpy as np

    engine = engine_for(pm, objects(), impl=impl)
    n = 64
    src = np.full(n, int.from_bytes(bytes(map(int, POD_CLIENT.split("."))), "big"), dtype=np.uint32)
    dst = np.full(n, int.from_bytes(bytes(map(int, WEB_IP.split("."))), "big"), dtype=np.uint32)
    out = engine.lookup_batch(src, dst, np.full(n, 80, np.uint16), np.full(n, 6, np.uint8),
                              np.arange(3000, 3000 + n, dtype=np.uint16), track=False)
    for i in range(n):
        d = engine.lookup(POD_CLIENT, WEB_IP, 80, "TCP", sport=3000 + i, track=False)
        assert d.endpoint is not None and int(out["ep_port"][i]) == d.endpoint[1]
        assert str(__import__("ipaddress").ip_address(int(out["ep_ip"][i]))) == d.endpoint[0]


def test_session_affinity_of_the_import(pm: KproxyPluginManager, impl: str) -> None:
    objs = objects()
    objs[2]["spec"].update(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})
    engine = engine_for(pm, objs, impl=impl)
    first = engine.lookup(POD_CLIENT, WEB_IP, 80, "TCP", sport=100, now=0.0).endpoint
    assert {engine.lookup(POD_CLIENT, WEB_IP, 80, "TCP", sport=s, now=1.0).endpoint for s in range(101, 140)} == {first}


def test_apply_follows_imports_and_their_slices(pm: KproxyPluginManager, impl: str) -> None:
    engine = engine_for(pm, objects(), impl=impl)
    engine.apply([{"type": "DELETED", "object": imported("web", "east", ["10.180.0.1", "10.180.0.2"])}])
    got = {engine.lookup(POD_CLIENT, WEB_IP, 80, "TCP", sport=s, track=False).endpoint for s in range(50)}
    assert got == {("10.190.0.1", 8080)}
    moved = objects()[2]
    moved["spec"]["ips"] = ["172.30.9.10"]
    engine.apply([moved])
    assert engine.lookup(POD_CLIENT, WEB_IP, 80, track=False).verdict == "PASS"
    assert engine.lookup(POD_CLIENT, "172.30.9.10", 80, track=False).endpoint == ("10.190.0.1", 8080)
    engine.apply([{"type": "DELETED", "object": moved}])
    assert engine.lookup(POD_CLIENT, "172.30.9.10", 80, track=False).verdict == "PASS"
    assert engine.resolve(f"web.{NS}.svc.clusterset.local").rcode == "NXDOMAIN"


def test_a_trace_names_the_import_and_the_source_clusters(pm: KproxyPluginManager, impl: str) -> None:
    t = engine_for(pm, objects(), impl=impl).trace(POD_CLIENT, WEB_IP, 80, "TCP", sport=4000)
    assert {c["endpoint"]: c["note"] for c in t.candidates} == {
        "10.180.0.1:8080": "from cluster east", "10.180.0.2:8080": "from cluster east",
        "10.190.0.1:8080": "from cluster west"}
    steps = "\n".join(t.steps)
    assert f"ServiceImport {NS}/web (type ClusterSetIP, ClusterSetIP {WEB_IP})" in steps
    assert "exported by 2 cluster(s): east, west" in steps
    assert t.chains[:2] == ["KUBE-SERVICES", next(c for c in t.chains if c.startswith("KUBE-SVC-"))]


def test_both_renderers_write_the_clusterset_ip(pm: KproxyPluginManager) -> None:
    engine = engine_for(pm, objects())
    spn = f"{NS}/{derived('web')}:http"
    assert f'-A KUBE-SERVICES -m comment --comment "{spn} cluster IP" -m tcp -p tcp -d {WEB_IP} --dport 80' \
        in engine.render("iptables")
    assert "ip daddr . meta l4proto . th dport vmap @service-ips" in engine.render("nftables")
    assert f"{WEB_IP} . tcp . 80 : goto service-" in engine.render("nftables")


# --------------------------------------------------------------------------- the kernel


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_kernel_connections_to_a_clusterset_ip(default_manager: KproxyPluginManager, mode: str) -> None:
    """The rendered rules loaded into a network namespace: TCP connections from a pod to the
    ClusterSetIP land on the imported endpoints of both clusters, as both twins say."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    if mode == "nftables" and shutil.which("nft") is None:
        pytest.skip("nftables ('nft') is not installed")
    build = build_nftables_oracle if mode == "nftables" else build_iptables_oracle
    with topology(NODE_IPS, tag="mcs") as topo:
        oracle = build(topo, objects(), routes=(SERVICE_CIDR,))
        assert {e.compiled for e in oracle.engines} == ({True, False} if kp.COMPILED_AVAILABLE else {False})
        probes = [(src, oracle.probe_for(src, WEB_IP, 80, count=30)) for src in ("pod", "node")]
        for (src, probe), replies in zip(probes, oracle.run(probes), strict=True):
            oracle.check(src, probe, replies, expect_all=True)
            assert {kernel_verdict(r) for r in replies} == {"DNAT"}, describe(replies)
            assert {r.endpoint for r in replies} == {"10.180.0.1:8080", "10.180.0.2:8080", "10.190.0.1:8080"}, src


# --------------------------------------------------------------------------- DNS


@pytest.fixture(scope="module")
def server(installed: importlib.metadata.Distribution, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if shutil.which("dig") is None:
        pytest.skip("dig (dnsutils) is not installed")
    path = tmp_path_factory.mktemp("mcs-dns") / "clusterset.yaml"
    path.write_text(yaml.safe_dump_all(objects()))
    served = Served([*SERVE, "-f", str(path), "--listen", "127.0.0.1:0"], path.with_suffix(".log"),
                    env=plugin_install.user_env())
    try:
        yield served.port
    finally:
        assert served.stop() == 0, served.log.read_text()


@pytest.mark.parametrize(("qname", "qtype", "rcode", "answer"), [
    (f"web.{NS}.svc.clusterset.local", "A", "NOERROR", [f"web.{NS}.svc.clusterset.local. 5 IN A {WEB_IP}"]),
    (f"web.{NS}.svc.clusterset.local", "AAAA", "NOERROR", []),
    (f"_http._tcp.web.{NS}.svc.clusterset.local", "SRV", "NOERROR",
     [f"_http._tcp.web.{NS}.svc.clusterset.local. 5 IN SRV 0 100 80 web.{NS}.svc.clusterset.local."]),
    (f"db.{NS}.svc.clusterset.local", "A", "NOERROR",
     [f"db.{NS}.svc.clusterset.local. 5 IN A 10.180.0.7", f"db.{NS}.svc.clusterset.local. 5 IN A 10.180.0.8"]),
    (f"db-1.east.db.{NS}.svc.clusterset.local", "A", "NOERROR",
     [f"db-1.east.db.{NS}.svc.clusterset.local. 5 IN A 10.180.0.8"]),
    (f"_http._tcp.db.{NS}.svc.clusterset.local", "SRV", "NOERROR", [
        f"_http._tcp.db.{NS}.svc.clusterset.local. 5 IN SRV 0 50 5432 db-0.east.db.{NS}.svc.clusterset.local.",
        f"_http._tcp.db.{NS}.svc.clusterset.local. 5 IN SRV 0 50 5432 db-1.east.db.{NS}.svc.clusterset.local."]),
    ("dns-version.clusterset.local", "TXT", "NOERROR", ['dns-version.clusterset.local. 28800 IN TXT "1.0.0"']),
    (f"nope.{NS}.svc.clusterset.local", "A", "NXDOMAIN", []),
    # the derived Service is a Service of the cluster zone too, as with a real MCS controller
    (f"web.{NS}.svc.cluster.local", "A", "NXDOMAIN", []),
])
def test_dig_clusterset_local(server: int, qname: str, qtype: str, rcode: str, answer: list[str]) -> None:
    status, flags, sections = dig(server, qname, qtype)
    assert status == rcode and "aa" in flags
    assert sorted(sections["ANSWER"]) == sorted(answer)
    if rcode == "NXDOMAIN" or not answer:
        assert [r.split()[3] for r in sections["AUTHORITY"]] == ["SOA"]


def test_dig_the_derived_service_in_the_cluster_zone(server: int) -> None:
    status, _, sections = dig(server, f"{derived('web')}.{NS}.svc.cluster.local", "A")
    assert status == "NOERROR" and sections["ANSWER"] == [f"{derived('web')}.{NS}.svc.cluster.local. 5 IN A {WEB_IP}"]


def test_cli_trace_and_resolve(installed: importlib.metadata.Distribution, tmp_path: Path) -> None:
    path = tmp_path / "clusterset.yaml"
    path.write_text(yaml.safe_dump_all(objects()))
    r = kproxy("trace", "-f", str(path), "--src", f"{POD_CLIENT}:4000", "--dst", f"{WEB_IP}:80", "--json")
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)
    assert t["verdict"] == "DNAT" and {c["note"] for c in t["candidates"]} == {"from cluster east", "from cluster west"}
    r = kproxy("dns", "resolve", "-f", str(path), f"web.{NS}.svc.clusterset.local")
    assert r.returncode == 0 and WEB_IP in r.stdout, r.stderr
    bad = objects()
    bad[2]["spec"]["type"] = "Anycast"
    path.write_text(yaml.safe_dump_all(bad))
    r = kproxy("trace", "-f", str(path), "--src", POD_CLIENT, "--dst", f"{WEB_IP}:80")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "kproxy: error: ServiceImport shop/web: spec.type: 'Anycast' is not ClusterSetIP or Headless"]

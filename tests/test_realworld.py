"""Real dumps nobody on this project wrote (tests/data/realworld, provenance in its
SOURCES.md): each must load as a new user would load it, trace every Service port to one
of that Service's own endpoints (or REJECT/DROP where kube-proxy would), render both rule
modes into a kernel network namespace, and resolve its names.

The expected endpoints are worked out here from the objects the loader read (the
Service's EndpointSlices, its port names, the endpoints' conditions and nodes), not from
the plan the engine builds.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from netns import PREFIX, run, unavailable_reason

import kproxy_core as kp
from kproxy_core.manifests import BETA_SLICE_NOTE
from kproxy_core.model import Cluster, Service, ServicePort

DATA = Path(__file__).parent / "data" / "realworld"
DUMPS = sorted(p.name for p in DATA.iterdir() if p.name[:2].isdigit())
EXTERNAL = "203.0.113.7"  # a client outside the cluster

# What each dump warns about, exactly: anything else is a regression.
WARNINGS: dict[str, tuple[str, ...]] = {
    "01-gke-per-object-dump": (BETA_SLICE_NOTE,),
    "02-kind-per-object-dump": tuple(
        f'EndpointSlice {s}: metadata.labels["kubernetes.io/service-name"]: Service {svc} not found'
        for s, svc in (
            ("kube-system/kube-dns-g52c8", "kube-system/kube-dns"),
            ("olm/operatorhubio-catalog-v5t5v", "olm/operatorhubio-catalog"),
            ("olm/packageserver-service-mp47t", "olm/packageserver-service"),
        )
    ),
}

# A floor per dump, so a loader that silently drops objects fails: (Services, slices, Nodes)
SIZES = {
    "01-gke-per-object-dump": (60, 60, 2),
    "02-kind-per-object-dump": (13, 12, 1),
    "03-aks-cluster-info-dump": (6, 0, 1),
    "05-aws-elb-loadbalancer-service.yaml": (1, 0, 0),
    "06-loadbalancer-empty-ingress-entry.yaml": (1, 0, 0),
    "07-docker-desktop-tcp-udp-nodeport-service.yaml": (1, 0, 0),
    "08-local-headless-service.yaml": (1, 0, 0),
}


def test_every_dump_is_covered() -> None:
    assert sorted(SIZES) == DUMPS
    sources = (DATA / "SOURCES.md").read_text()
    for d in DUMPS:
        assert f"`{d}" in sources, f"{d} has no provenance row in SOURCES.md"


@pytest.fixture(scope="module", params=DUMPS)
def dump(request: pytest.FixtureRequest) -> tuple[str, Cluster]:
    name = str(request.param)
    return name, kp.load(str(DATA / name))


def test_loads_with_only_the_expected_warnings(dump: tuple[str, Cluster]) -> None:
    name, cluster = dump
    assert cluster.warnings == WARNINGS.get(name, ())
    assert (len(cluster.services), len(cluster.slices), len(cluster.nodes)) == SIZES[name]


def test_the_cli_loads_it_quietly(dump: tuple[str, Cluster]) -> None:
    # the user's first command: no error, and no more warning lines than the loader gives
    name, _ = dump
    r = subprocess.run([str(Path(sys.executable).with_name("kproxy")), "rules", "-f", str(DATA / name)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(r.stderr.splitlines()) == len(WARNINGS.get(name, ())), r.stderr
    assert r.stdout.rstrip().endswith("COMMIT")


# ---------------------------------------------------------------------------- trace


@dataclass(frozen=True)
class Frontend:
    kind: str
    ip: str
    port: int


def frontends(svc: Service, sp: ServicePort, node_ips: tuple[str, ...]) -> Iterator[Frontend]:
    if svc.type == "ExternalName" or svc.headless:
        return
    for ip in svc.cluster_ips:
        if ipaddress.ip_address(ip).version == 4:
            yield Frontend("ClusterIP", ip, sp.port)
    for ip in svc.external_ips:
        if ipaddress.ip_address(ip).version == 4:
            yield Frontend("externalIP", ip, sp.port)
    if svc.type == "LoadBalancer":
        for ing in svc.load_balancer_ingress:
            if ing.ip and ipaddress.ip_address(ing.ip).version == 4:
                yield Frontend("LoadBalancer", ing.ip, sp.port)
    if sp.node_port:
        for ip in node_ips:
            yield Frontend("NodePort", ip, sp.node_port)


def own_endpoints(cluster: Cluster, svc: Service, sp: ServicePort, node: str | None,
                  local_only: bool) -> tuple[set[str], bool]:
    """The ``ip:port`` a packet to this Service port may reach, and whether the Service
    has any usable endpoint at all (kube-proxy REJECTs without, DROPs when only a Local
    policy leaves none). Ready endpoints; when none is ready, the serving terminating ones."""
    ready: set[str] = set()
    fallback: set[str] = set()
    local: dict[str, bool] = {}
    for s in cluster.slices_for(svc.namespace, svc.name):
        if s.address_type != "IPv4":
            continue
        for p in s.ports:
            if p.name != sp.name or p.protocol != sp.protocol or p.port is None:
                continue
            for e in s.endpoints:
                target = f"{e.addresses[0]}:{p.port}"
                local[target] = e.node_name == node
                if e.ready:
                    ready.add(target)
                elif e.serving and e.terminating:
                    fallback.add(target)
    usable = ready or fallback
    if local_only:
        return {t for t in usable if local[t]}, bool(usable)
    return usable, bool(usable)


def test_every_service_port_reaches_its_own_endpoints(dump: tuple[str, Cluster]) -> None:
    name, cluster = dump
    engine = kp.Engine(cluster)
    node_ips = cluster.nodes[engine.node].ips("IPv4") if engine.node else ()
    traced = 0
    for svc in cluster.services.values():
        for sp in svc.ports:
            for fe in frontends(svc, sp, node_ips):
                external = fe.kind != "ClusterIP"
                policy = svc.external_traffic_policy if external else svc.internal_traffic_policy
                want, any_usable = own_endpoints(cluster, svc, sp, engine.node, policy == "Local")
                t = engine.trace(EXTERNAL, fe.ip, fe.port, sp.protocol, sport=40000 + traced % 20000)
                where = f"{name}: {svc.ref} {sp.name or sp.port}/{sp.protocol} via {fe.kind} {fe.ip}:{fe.port}"
                assert (t.service or "").partition(":")[0] == f"{svc.namespace}/{svc.name}", f"{where}: hit {t.service}"
                if want:
                    assert t.verdict == "DNAT" and t.endpoint in want, f"{where}: {t.verdict} {t.endpoint} {want}"
                    assert {c["endpoint"] for c in t.candidates} == want, where
                    assert sum(c["probability"] for c in t.candidates) == pytest.approx(1.0)
                else:
                    assert t.verdict == ("DROP" if any_usable else "REJECT"), f"{where}: {t.verdict}"
                traced += 1
    assert traced >= sum(len(s.ports) for s in cluster.services.values()
                         if not s.headless and s.type != "ExternalName" and s.cluster_ips)


# ---------------------------------------------------------------------------- DNS


def test_every_name_resolves(dump: tuple[str, Cluster]) -> None:
    _, cluster = dump
    engine = kp.Engine(cluster)
    for svc in cluster.services.values():
        fqdn = f"{svc.name}.{svc.namespace}.svc.cluster.local"
        a = engine.resolve(fqdn, "A")
        got = {r.data for r in a.records if r.rtype == "A"}
        if svc.type == "ExternalName":
            assert a.records[0].rtype == "CNAME" and a.records[0].data == svc.external_name.rstrip(".") + ".", fqdn
        elif svc.headless:
            want = {e.addresses[0] for s in cluster.slices_for(svc.namespace, svc.name) if s.address_type == "IPv4"
                    for e in s.endpoints if e.ready}
            assert got == want, fqdn
            if not want:
                assert a.rcode == "NXDOMAIN", fqdn
        else:
            assert got == {ip for ip in svc.cluster_ips if ipaddress.ip_address(ip).version == 4}, fqdn
            for ip in got:
                ptr = engine.resolve(ipaddress.ip_address(ip).reverse_pointer, "PTR")
                assert [r.data for r in ptr.records] == [fqdn + "."], ip
            # and a pod in the Service's namespace reaches it by its short name
            if svc.ports and got:
                sp = svc.ports[0]
                t = engine.trace(EXTERNAL, svc.name, sp.port, sp.protocol, namespace=svc.namespace)
                assert (t.service or "").partition(":")[0] == f"{svc.namespace}/{svc.name}", fqdn
        for sp in svc.ports:
            if sp.name and svc.type != "ExternalName":
                srv = engine.resolve(f"_{sp.name}._{sp.protocol.lower()}.{fqdn}", "SRV")
                if got:
                    assert srv.rcode == "NOERROR" and srv.records, f"SRV {sp.name} of {fqdn}"


# ---------------------------------------------------------------------------- kernel


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    why = unavailable_reason()
    if why:
        pytest.skip(why)
    for tool in ("iptables-restore", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    ns = f"{PREFIX}rw{os.getpid()}"
    run(["ip", "netns", "add", ns])
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_rules_load_into_the_kernel(dump: tuple[str, Cluster], netns: str, mode: str) -> None:
    name, cluster = dump
    engine = kp.Engine(cluster, mode=mode)
    text = engine.render(with_jumps=True) if mode == "iptables" else engine.render()
    if mode == "iptables":
        run(["ip", "netns", "exec", netns, "iptables-restore"], input=text)
        saved = run(["ip", "netns", "exec", netns, "iptables-save", "-t", "nat"])
        # every Service chain the renderer wrote is in the kernel
        for line in text.splitlines():
            if line.startswith(":KUBE-SVC-") or line.startswith(":KUBE-SEP-"):
                assert line.split()[0] in saved, f"{name}: {line.split()[0]} not loaded"
        for table in ("nat", "filter"):
            run(["ip", "netns", "exec", netns, "iptables", "-t", table, "-F"])
            run(["ip", "netns", "exec", netns, "iptables", "-t", table, "-X"])
    else:
        run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=text)
        listed = run(["ip", "netns", "exec", netns, "nft", "list", "table", "ip", "kube-proxy"])
        for svc in cluster.services.values():
            for ip in svc.cluster_ips:
                if not svc.headless and ipaddress.ip_address(ip).version == 4 and svc.ports:
                    assert ip in listed, f"{name}: {svc.ref} ClusterIP {ip} not in the loaded table"
        run(["ip", "netns", "exec", netns, "nft", "flush", "ruleset"])

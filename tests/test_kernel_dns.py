"""The whole service-discovery path of a pod, on the kernel, in both proxy modes.

A pod namespace gets kubelet's ``resolv.conf`` for a ClusterFirst pod (``nameserver`` the
kube-dns ClusterIP, the namespace's search path, ``ndots:5``; ``ip netns exec`` bind-mounts
``/etc/netns/<ns>/resolv.conf``). Its DNS queries go to the kube-dns ClusterIP, which the rules
kproxy-core rendered for the node DNAT to the "CoreDNS pod": a namespace running
``kproxy dns serve`` on port 53. glibc's resolver (``getaddrinfo``, ``getent``) and ``dig`` then
resolve Service names through it, and the pod connects to the address it got, which the same
rules DNAT to a backend. Every step is compared with what the engine says: ``resolve_as_pod``
for the name, ``trace`` for the endpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cli_run
import pytest
import yaml
from dns_cluster import namespace
from k8s import ep, eport, node, port, service, slice_
from netns import PYTHON, Probe, Topology, topology, unavailable_reason

import kproxy_core as kp

pytestmark = pytest.mark.slow

NODE_IP = "10.0.0.1"
SERVICE_CIDR = "10.96.0.0/16"
DNS_VIP = "10.96.0.10"
DNS_POD = "10.244.0.53"
WEB_VIP = "10.96.1.1"
WEB_PODS = ("10.244.0.7", "10.244.0.8")
DB_POD = "10.244.1.9"  # a headless Service's only endpoint
CLIENT = "10.244.0.5"
MODES = ("iptables", "nftables")


def objects() -> list[dict[str, Any]]:
    dns = service("kube-system", "kube-dns", DNS_VIP, [port(53, "dns", "UDP"), port(53, "dns-tcp", "TCP")])
    dns["metadata"]["labels"] = {"k8s-app": "kube-dns"}
    client = ep(CLIENT, node="worker-1")
    client["targetRef"] = {"kind": "Pod", "namespace": "shop", "name": "client-0"}
    db = ep(DB_POD, node="worker-1")
    db["hostname"] = "db-0"
    return [
        node("worker-1", NODE_IP, pod_cidr="10.244.0.0/16"),
        namespace("kube-system"), namespace("shop"),
        dns,
        slice_("kube-system", "kube-dns", [ep(DNS_POD, node="worker-1")], [eport(53, "dns", "UDP"),
                                                                         eport(53, "dns-tcp", "TCP")]),
        service("shop", "web", WEB_VIP, [port(80, "http")]),
        slice_("shop", "web", [ep(ip, node="worker-1") for ip in WEB_PODS], [eport(80, "http")]),
        service("shop", "db", "None", [port(80, "pg")]),
        slice_("shop", "db", [db], [eport(80, "pg")]),
        service("shop", "clients", "None", [port(80, "http")]),
        slice_("shop", "clients", [client], [eport(80, "http")]),
    ]


RESOLV_CONF = (f"nameserver {DNS_VIP}\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\n"
               "options ndots:5 timeout:2 attempts:2\n")

GETADDRINFO = r"""
import socket, sys, json
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = sorted({ai[4][0] for ai in socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)})
    except socket.gaierror as e:
        out[name] = str(e.errno)
print(json.dumps(out))
"""


class Run:
    def __init__(self, mode: str, topo: Topology, engine: kp.Engine, client_ns: str) -> None:
        self.mode, self.topo, self.engine, self.client_ns = mode, topo, engine, client_ns

    def exec(self, *cmd: str, timeout: float = 30) -> str:
        return subprocess.run(["ip", "netns", "exec", self.client_ns, *cmd], capture_output=True, text=True,
                              timeout=timeout, check=True).stdout


@pytest.fixture(scope="module", params=MODES)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    mode = request.param
    tool = "nft" if mode == "nftables" else "iptables-restore"
    for t in (tool, "dig", "getent"):
        if shutil.which(t) is None:
            pytest.skip(f"{t} is not installed")
    objs = objects()
    path = tmp_path_factory.mktemp("dns") / "cluster.yaml"
    path.write_text(yaml.safe_dump_all(objs))
    engine = kp.Engine(kp.Cluster.from_objects(objs), node="worker-1", cluster_cidr="10.244.0.0/16", mode=mode,
                       seed=1)
    with topology([NODE_IP], tag=f"dns{mode[0]}") as topo:
        topo.add_hosts({"coredns": (DNS_POD, "pod"), "client": (CLIENT, "pod"), "db": (DB_POD, "pod"),
                        **{f"web{i}": (ip, "pod") for i, ip in enumerate(WEB_PODS)}})
        topo.route_to_node(SERVICE_CIDR)
        topo.start_servers({f"web{i}": ((80,), ()) for i in range(len(WEB_PODS))} | {"db": ((80,), ())})
        if mode == "nftables":
            topo.load_nft(engine.render("nftables"))
        else:
            topo.load_iptables(engine.render("iptables", with_jumps=True))
        log = path.with_suffix(".log")
        with log.open("w") as fh:
            server = subprocess.Popen(
                ["ip", "netns", "exec", topo.hosts["coredns"].ns,
                 *cli_run.command("dns", "serve", "-f", str(path), "--listen", f"{DNS_POD}:53")],
                stdout=subprocess.DEVNULL, stderr=fh, env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=path.parent,
            )
        topo.processes.append(server)  # killed by topo.close()
        deadline = time.monotonic() + 30
        while "serving" not in log.read_text():
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        client_ns = topo.hosts["client"].ns
        etc = Path("/etc/netns") / client_ns
        made_parent = not etc.parent.exists()
        etc.mkdir(parents=True, exist_ok=True)
        try:
            (etc / "resolv.conf").write_text(RESOLV_CONF)
            yield Run(mode, topo, engine, client_ns)
        finally:
            shutil.rmtree(etc, ignore_errors=True)
            if made_parent:
                with contextlib.suppress(OSError):
                    etc.parent.rmdir()


def test_dig_through_the_kube_dns_cluster_ip(run: Run) -> None:
    """dig asks the kube-dns ClusterIP; kube-proxy's rules carry it to the server, over UDP and TCP."""
    for transport in ("+notcp", "+tcp"):
        out = run.exec("dig", f"@{DNS_VIP}", "+short", "+tries=1", "+time=3", transport,
                       "web.shop.svc.cluster.local")
        assert out.split() == [WEB_VIP], transport
    srv = run.exec("dig", f"@{DNS_VIP}", "+short", "+tries=1", "+time=3", "_pg._tcp.db.shop.svc.cluster.local", "SRV")
    assert srv.split() == ["0", "100", "80", "db-0.db.shop.svc.cluster.local."]
    ptr = run.exec("dig", f"@{DNS_VIP}", "+short", "+tries=1", "+time=3", "-x", WEB_VIP)
    assert ptr.split() == ["web.shop.svc.cluster.local."]


def test_glibc_resolver_walks_the_search_path(run: Run) -> None:
    """getaddrinfo with kubelet's resolv.conf gets what resolve_as_pod says, name by name."""
    import json

    names = ["web", "web.shop", "db", "db-0.db", "kube-dns.kube-system", "web.shop.svc.cluster.local", "nope"]
    got = json.loads(run.exec(*PYTHON, "-c", GETADDRINFO, *names))
    zone = run.engine.dns_zone()
    for name in names:
        walk = kp.resolve_as_pod(zone, name, "A", "shop")
        expected = sorted(r.data for r in walk.answer.records if r.rtype == "A")
        if expected:
            assert got[name] == expected, name
        else:
            # NXDOMAIN in the zone, and the last try ("nope." as written) is outside it: the server
            # refuses it (no recursion; CoreDNS would forward it upstream), which glibc reports as a
            # temporary failure rather than "no such name"
            assert walk.answer.rcode == "NXDOMAIN" and walk.tried[-1].rcode == "REFUSED", name
            assert got[name] == str(socket.EAI_AGAIN), name
    assert got["web"] == [WEB_VIP] and got["db"] == [DB_POD] and got["kube-dns.kube-system"] == [DNS_VIP]
    hosts = run.exec("getent", "hosts", "web").split()
    assert hosts[:2] == [WEB_VIP, "web.shop.svc.cluster.local"]


def test_name_to_address_to_endpoint(run: Run) -> None:
    """The pod connects to "web" as an application would: the name resolves through the kube-dns
    ClusterIP, the connection is DNAT'd to a backend the engine's trace lists as a candidate."""
    script = (
        "import socket,sys\n"
        "seen=set()\n"
        "for i in range(12):\n"
        "    s=socket.create_connection(('web',80),timeout=5); seen.add(s.recv(200).decode().split()[0]); s.close()\n"
        "print(' '.join(sorted(seen)))\n"
    )
    seen = set(run.exec(*PYTHON, "-c", script).split())
    trace = run.engine.trace(CLIENT, "web", 80)
    assert trace.packet["dst"] == WEB_VIP and trace.verdict == "DNAT"
    candidates = {c["endpoint"] for c in trace.to_dict()["candidates"]}
    assert candidates == {f"{ip}:80" for ip in WEB_PODS}
    assert seen and seen <= candidates  # 12 connections, each to a candidate ("<ip>:80 saw ...")
    # the engine agrees on the DNS step too: the trace resolved "web" from the client's namespace
    assert "namespace shop" in trace.steps[0]
    # and a Service that exists only in DNS (headless) is reached directly, without kube-proxy
    direct = run.topo.probe_one("client", Probe(DB_POD, 80, "TCP", count=1))
    assert direct[0].endpoint == f"{DB_POD}:80"

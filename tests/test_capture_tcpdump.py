"""Captures taken by tcpdump itself, in network namespaces this test makes: real TCP
connections and UDP datagrams to a ClusterIP address, read back by kproxy_core.captures
(Ethernet on a veth, and Linux cooked on ``-i any``) and classified: every packet of a
connection goes to the same endpoint, and the counts agree with what tcpdump wrote."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from k8s import ep, eport, node, port, service, slice_

import kproxy_core as kp
from kproxy_core import captures, flows

pa = pytest.importorskip("pyarrow")

VIP, CLIENT = "172.30.0.10", "10.99.0.1"
VIP6, CLIENT6 = "fd00:30::10", "fd99::1"
CONNECTIONS, DATAGRAMS = 12, 7

SERVER = r"""
import socket, sys, threading
def tcp(fam, ip):
    s = socket.socket(fam, socket.SOCK_STREAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, 80)); s.listen(64)
    while True:
        c, _ = s.accept(); c.recv(100); c.sendall(b"hello"); c.close()
def udp(fam, ip):
    s = socket.socket(fam, socket.SOCK_DGRAM); s.bind((ip, 53))
    while True:
        d, a = s.recvfrom(100); s.sendto(d, a)
for fam, ip in ((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2])):
    threading.Thread(target=tcp, args=(fam, ip), daemon=True).start()
    threading.Thread(target=udp, args=(fam, ip), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

CLIENT_SRC = r"""
import socket, sys
n, m = int(sys.argv[3]), int(sys.argv[4])
for k, (fam, ip) in enumerate(((socket.AF_INET, sys.argv[1]), (socket.AF_INET6, sys.argv[2]))):
    any_ = "::" if fam == socket.AF_INET6 else "0.0.0.0"
    for i in range(n):  # each connection from its own source port: one 5-tuple each
        c = socket.socket(fam, socket.SOCK_STREAM)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind((any_, 41000 + 100 * k + i)); c.settimeout(5); c.connect((ip, 80))
        c.sendall(b"hi"); c.recv(100); c.close()
    for i in range(m):
        u = socket.socket(fam, socket.SOCK_DGRAM); u.bind((any_, 42000 + 100 * k + i)); u.settimeout(5)
        u.sendto(b"q", (ip, 53)); u.recvfrom(100); u.close()
"""


KNOCK = r"""
import socket, sys
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"knock", (sys.argv[1], 9))
"""


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    """Two namespaces on a veth pair: the client (10.99.0.1, fd99::1) and the "service"
    side that owns the ClusterIPs (172.30.0.10, fd00:30::10)."""
    if shutil.which("tcpdump") is None or os.geteuid() != 0:
        pytest.skip("needs root and tcpdump (.ci/run installs it)")
    tag = f"kpcap{os.getpid()}"
    a, b = f"{tag}-c", f"{tag}-s"
    made: list[str] = []
    try:
        for ns in (a, b):
            sh("ip", "netns", "add", ns)
            made.append(ns)
        sh("ip", "link", "add", "vc", "netns", a, "type", "veth", "peer", "name", "vs", "netns", b)
        sides = ((a, "vc", (CLIENT, CLIENT6), (VIP, VIP6)), (b, "vs", (VIP, VIP6), (CLIENT, CLIENT6)))
        for ns, dev, mine, other in sides:
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{mine[0]}/32", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"{mine[1]}/128", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "route", "add", f"{other[0]}/32", "dev", dev)
            sh("ip", "-n", ns, "-6", "route", "add", f"{other[1]}/128", "dev", dev)
        yield a, b
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def cluster() -> kp.Cluster:
    return kp.Cluster.from_objects([
        node("n1", "192.168.0.2", "fd00:ff::2"),
        service("ns", "web", [VIP, VIP6], [port(80, "http"), port(53, "dns", "UDP")],
                ipFamilyPolicy="RequireDualStack"),
        slice_("ns", "web", [ep(f"10.0.0.{i}", "n1") for i in range(1, 5)],
               [eport(8080, "http"), eport(5353, "dns", "UDP")]),
        slice_("ns", "web", [ep(f"fd00:10::{i}", "n1") for i in range(1, 5)],
               [eport(8080, "http"), eport(5353, "dns", "UDP")], name="web-v6", family="IPv6"),
    ])


def capture(pair: tuple[str, str], tmp_path: Path, iface: str) -> tuple[Path, int, str]:
    """Run the traffic with tcpdump writing in the client's namespace; the capture, the
    packet count tcpdump reports, and what it said."""
    a, b = pair
    out = tmp_path / f"{iface}.pcap"
    server = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-c", SERVER, VIP, VIP6],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    dump = subprocess.Popen(["ip", "netns", "exec", a, "tcpdump", "-Z", "root", "--immediate-mode", "-B", "32768",
                             "-i", iface, "-U", "-n", "-w", str(out)],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        assert dump.stderr is not None
        said = [dump.stderr.readline()]
        while "listening on" not in said[-1]:  # ("data link type LINUX_SLL2" first, on any)
            said.append(dump.stderr.readline())
            assert said[-1], said
        # "listening" comes a little before packets are seen: knock (UDP to a port that is
        # no service's) until the capture grows
        deadline = time.monotonic() + 10
        while out.stat().st_size <= 24:
            assert time.monotonic() < deadline, "tcpdump sees no packets"
            sh("ip", "netns", "exec", a, sys.executable, "-c", KNOCK, VIP)
            time.sleep(0.1)
        sh("ip", "netns", "exec", a, sys.executable, "-c", CLIENT_SRC, VIP, VIP6, str(CONNECTIONS), str(DATAGRAMS))
        time.sleep(0.3)
    finally:
        dump.terminate()
        _, err = dump.communicate(timeout=10)
        server.kill()
        server.wait(timeout=5)
    captured = [int(line.split()[0]) for line in err.splitlines() if "packets captured" in line]
    assert captured, err
    return out, captured[0], err


@pytest.mark.parametrize("iface", ["vc", "any"])
def test_a_tcpdump_capture_is_read_and_classified(pair: tuple[str, str], tmp_path: Path, iface: str) -> None:
    for _ in range(3):  # a capture the kernel dropped packets from is taken again
        path, captured, dropped = capture(pair, tmp_path, iface)
        if "\n0 packets dropped by kernel" in "\n" + dropped:
            break
    stats = captures.CaptureStats()
    tables = list(captures.read_pcap(path, stats=stats))
    assert stats.records == captured  # every packet tcpdump wrote
    # ARP and neighbour discovery besides the TCP and UDP: skipped, by reason
    assert set(stats.skipped) <= {"not IP", "not TCP, UDP or SCTP"}
    table = pa.concat_tables(tables)
    engine = kp.Engine(cluster(), node="n1", seed=1)
    got = flows.classify(table, engine)
    rows: list[dict[str, Any]] = got.to_pylist()
    to_vip = [r for r in rows if r["verdict"] == "DNAT"]
    # requests: per family, each TCP connection's packets (SYN, data, ACKs, FIN) and each datagram
    conns: dict[tuple[Any, ...], set[str]] = {}
    for r in to_vip:
        conns.setdefault((r["src"], r["sport"], r["dst"], r["dport"], r["proto"]), set()).add(r["endpoint_ip"])
    tcp = sorted(k[1] for k in conns if k[3] == 80)
    udp = sorted(k[1] for k in conns if k[3] == 53)
    assert tcp == [41000 + 100 * f + i for f in (0, 1) for i in range(CONNECTIONS)], dropped
    assert udp == [42000 + 100 * f + i for f in (0, 1) for i in range(DATAGRAMS)], dropped
    assert all(len(eps) == 1 for eps in conns.values())  # one endpoint per connection, as conntrack keeps it
    assert {r["endpoint_port"] for r in to_vip} == {8080, 5353}
    assert all(r["service"] == "web" and r["namespace"] == "ns" for r in to_vip)
    # the replies come from the ClusterIP's port to the client: no service there
    replies = [r for r in rows if r["verdict"] != "DNAT"]
    assert replies and all(r["verdict"] == "PASS" and r["service"] is None for r in replies)
    assert len(to_vip) + len(replies) == stats.packets == captured - sum(stats.skipped.values())

"""kproxy_core.flowlogs: Hubble's flows, AWS VPC Flow Logs and conntrack's table read as
tables of 5-tuples, every non-blank line either a row or a skip counted with its reason and
line, never an exception; and the rows classified by a real engine (a record to a ClusterIP
is DNAT to its Service; for conntrack, to the very endpoint the kernel's DNAT chose).

The samples are real where real ones exist: conntrack's table is made here, by TCP
connections and UDP datagrams through a DNAT in network namespaces, and the saved text is
mostly that tool's output (the few made lines are named); VPC records are AWS's documented
examples, with a few made in their shape; Hubble lines are Cilium's documented and tested
ones, and others built in their shape (protojson's proto names, as `hubble observe -o
jsonpb` prints them)."""

from __future__ import annotations

import gzip
import io
import json
import random
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import netns
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from k8s import ep, eport, node, port, service, slice_

import kproxy_core as kp
from kproxy_core import flowlogs, flows
from kproxy_core.inputs import InputError, ReadStats, open_input

pa = pytest.importorskip("pyarrow")
pc = pytest.importorskip("pyarrow.compute")

NODE = "n1"
COMMON = ["line", "src", "dst", "sport", "dport", "proto", "time"]
Reader = Callable[..., Iterator[Any]]


def cluster_objects() -> list[dict[str, Any]]:
    return [
        node(NODE, "192.168.0.2", "fd00:ff::2", pod_cidr="10.0.0.0/24"),
        service("default", "web", ["10.96.0.10", "fd00:96::10"], [port(80, "http"), port(53, "dns", "UDP")],
                ipFamilyPolicy="RequireDualStack"),
        slice_("default", "web", [ep("10.0.1.5", NODE)], [eport(8080, "http"), eport(5353, "dns", "UDP")]),
        slice_("default", "web", [ep("fd00:10::5", NODE)], [eport(8080, "http"), eport(5353, "dns", "UDP")],
               name="web-v6", family="IPv6"),
        # the addresses of AWS's documented flow log records, made Services here
        service("aws", "ssh", ["172.31.16.21", "2001:db8:1234:a102:3304:8879:34cf:4071"], [port(22, "ssh")],
                ipFamilyPolicy="RequireDualStack"),
        slice_("aws", "ssh", [ep("172.31.20.5", NODE)], [eport(2222, "ssh")]),
        slice_("aws", "ssh", [ep("2001:db8:1234:a102::5", NODE)], [eport(2222, "ssh")], name="ssh-v6",
               family="IPv6"),
        service("aws", "iperf", "10.0.0.62", [port(5001, "iperf")]),
        slice_("aws", "iperf", [ep("10.0.3.9", NODE)], [eport(5001, "iperf")]),
    ]


def engine() -> kp.Engine:
    return kp.Engine(kp.Cluster.from_objects(cluster_objects()), node=NODE,
                     cluster_cidr=["10.0.0.0/8", "fd00:10::/64"], seed=5)


def read(reader: Reader, data: bytes, chunk: int = 1 << 16) -> tuple[Any, ReadStats, list[Any]]:
    """The tables of ``data`` concatenated, the stats, and the tables."""
    stats = ReadStats()
    tables = list(reader(io.BytesIO(data), stats, chunk=chunk))
    assert all(0 < t.num_rows <= chunk for t in tables)
    whole = pa.concat_tables(tables) if tables else None
    return whole, stats, tables


def rows(table: Any, *names: str) -> list[tuple[Any, ...]]:
    return [tuple(r[n] for n in names) for r in table.to_pylist()]


def classified(table: Any) -> list[tuple[Any, ...]]:
    """(line, verdict, namespace/service:port, endpoint) of each classified row."""
    out = []
    for r in flows.classify(table, engine()).to_pylist():
        svc = f"{r['namespace']}/{r['service']}:{r['port_name']}" if r["service"] is not None else None
        endpoint = (r["endpoint_ip"], r["endpoint_port"]) if r["endpoint_ip"] is not None else None
        out.append((r["line"], r["verdict"], svc, endpoint))
    return out


def check_counts(stats: ReadStats, tables: list[Any], data: bytes, not_records: int = 0) -> None:
    """Every non-blank line is a record (but ``not_records`` of them), and every record a
    row or a skip: the rows' lines are distinct non-blank lines, the skips' are others."""
    emitted = [n for t in tables for n in t.column("line").to_pylist()]
    assert stats.records == len(emitted) + sum(stats.skipped.values())
    nonblank = {i + 1 for i, line in enumerate(data.split(b"\n")) if line.strip()}
    assert stats.records == len(nonblank) - not_records
    assert emitted == sorted(set(emitted)) and set(emitted) <= nonblank
    for where in stats.examples.values():
        assert set(where) <= nonblank - set(emitted)


# =========================================================================== conntrack

# `conntrack -L` output saved with 2>&1 (the tool's summary comes first). Lines 1-3, 5 and 7
# are real: conntrack v1.4.7 on Linux 6.18, two network namespaces joined by a veth, TCP over
# IPv6 and IPv4 and a UDP datagram, accounting on, a zone and a mark set by nftables, and an
# ICMP echo; line 7 as `-o extended` prints it. Lines 8 and 9 are real too, from another such
# run: `-o timestamp` (its [start=...] holds spaces) and an event of `conntrack -E -o
# timestamp`. Made: line 6 (cut, and garbled), 10 (a protocol conntrack calls unknown), 11 (a
# port too large) and 12 (no address).
CT_SAVED = b"""\
conntrack v1.4.7 (conntrack-tools): 4 flow entries have been shown.
tcp      6 59 CLOSE_WAIT src=fd00:78::1 dst=fd00:78::2 sport=56414 dport=8081 packets=4 bytes=296 \
src=fd00:78::2 dst=fd00:78::1 sport=8081 dport=56414 packets=3 bytes=225 [ASSURED] mark=42 delta-time=1 use=1
udp      17 29 src=10.78.0.1 dst=10.78.0.2 sport=41716 dport=5300 packets=1 bytes=29 [UNREPLIED] \
src=10.78.0.2 dst=10.78.0.1 sport=5300 dport=41716 packets=0 bytes=0 mark=0 zone=7 delta-time=1 use=1

icmp     1 29 src=10.78.0.1 dst=10.78.0.2 type=8 code=0 id=4660 packets=1 bytes=32 src=10.78.0.2 \
dst=10.78.0.1 type=0 code=0 id=4660 packets=1 bytes=32 mark=0 delta-time=1 use=1
tcp      6 59 CLOSE_WAIT src=10.78.0.1 dst=10.78.0.2 sport=51172 \xe2\x80\x94 garbled
ipv4     2 tcp      6 59 CLOSE_WAIT src=10.78.0.1 dst=10.78.0.2 sport=51172 dport=8081 packets=4 bytes=216 \
src=10.78.0.2 dst=10.78.0.1 sport=8081 dport=51172 packets=3 bytes=165 [ASSURED] mark=42 delta-time=1 use=1 \
id=1185997856
udp      17 29 src=10.77.0.1 dst=10.77.0.2 sport=42000 dport=5353 packets=1 bytes=29 [UNREPLIED] src=10.77.0.2 \
dst=10.77.0.1 sport=5353 dport=42000 packets=0 bytes=0 mark=0 delta-time=0 [start=Sun Dec  6 07:22:39 2026] use=1 \
id=1571092682
[1796541778.608185]\t    [NEW] udp      17 30 src=10.77.0.1 dst=10.77.0.2 sport=42100 dport=5353 [UNREPLIED] \
src=10.77.0.2 dst=10.77.0.1 sport=5353 dport=42100
unknown  2 599 src=10.78.0.1 dst=224.0.0.22 [UNREPLIED] src=224.0.0.22 dst=10.78.0.1 mark=0 use=1
tcp      6 59 CLOSE_WAIT src=10.78.0.1 dst=10.78.0.2 sport=99999 dport=8081 src=10.78.0.2 dst=10.78.0.1 \
sport=8081 dport=51172 [ASSURED] mark=0 use=1
tcp      6 59 CLOSE_WAIT src=10.78.0.300 dst=10.78.0.2 sport=51172 dport=8081 src=10.78.0.2 dst=10.78.0.1 \
sport=8081 dport=51172 [ASSURED] mark=0 use=1
"""


def test_saved_conntrack_text() -> None:
    table, stats, tables = read(flowlogs.read_conntrack, CT_SAVED)
    assert table.column_names == [
        *COMMON, "ct_timeout", "ct_state", "reply_src", "reply_dst", "reply_sport", "reply_dport", "ct_assured",
        "ct_unreplied", "packets", "bytes", "ct_mark", "ct_zone"]
    assert rows(table, "line", "src", "dst", "sport", "dport", "proto") == [
        (2, "fd00:78::1", "fd00:78::2", 56414, 8081, "TCP"),
        (3, "10.78.0.1", "10.78.0.2", 41716, 5300, "UDP"),
        (7, "10.78.0.1", "10.78.0.2", 51172, 8081, "TCP"),
        (8, "10.77.0.1", "10.77.0.2", 42000, 5353, "UDP"),
        (9, "10.77.0.1", "10.77.0.2", 42100, 5353, "UDP"),
    ]
    got = {r["line"]: r for r in table.to_pylist()}
    assert (got[2]["ct_timeout"], got[2]["ct_state"], got[2]["ct_assured"], got[2]["ct_unreplied"]) == \
        (59, "CLOSE_WAIT", True, False)
    assert (got[2]["reply_src"], got[2]["reply_dst"], got[2]["reply_sport"], got[2]["reply_dport"]) == \
        ("fd00:78::2", "fd00:78::1", 8081, 56414)
    assert (got[2]["packets"], got[2]["bytes"], got[2]["ct_mark"], got[2]["ct_zone"]) == (4, 296, 42, None)
    assert (got[3]["ct_state"], got[3]["ct_unreplied"], got[3]["ct_zone"], got[3]["packets"]) == (None, True, 7, 1)
    assert got[7] == {**got[7], "ct_state": "CLOSE_WAIT", "packets": 4, "bytes": 216, "reply_sport": 8081}
    assert [got[n]["time"] for n in (2, 3, 7)] == [None, None, None]
    assert got[8]["time"] == 1796541759.0  # [start=Sun Dec  6 07:22:39 2026], read as UTC
    assert got[9]["time"] == pytest.approx(1796541778.608185)  # the event's own clock
    assert (got[9]["ct_timeout"], got[9]["packets"], got[9]["reply_sport"]) == (30, None, 5353)
    assert stats.records == 10  # the summary is not one
    assert stats.skipped == {"not TCP, UDP or SCTP (icmp)": 1, "no original tuple": 1,
                             "not TCP, UDP or SCTP (unknown)": 1, "sport: not a port": 1,
                             "src: not an IP address": 1}
    assert stats.examples == {"not TCP, UDP or SCTP (icmp)": [5], "no original tuple": [6],
                              "not TCP, UDP or SCTP (unknown)": [10], "sport: not a port": [11],
                              "src: not an IP address": [12]}
    check_counts(stats, tables, CT_SAVED, not_records=1)
    assert flowlogs.sniff(CT_SAVED) == "conntrack"


def test_conntrack_tool_messages_and_garbage() -> None:
    data = (b"conntrack v1.4.7 (conntrack-tools): 0 flow entries have been shown.\n\n"
            b"conntrack v1.4.8 (conntrack-tools): Operation failed: such conntrack doesn't exist\n"
            b"conntrack: this is no summary\nhello\n\xff\xfe\n")
    table, stats, _ = read(flowlogs.read_conntrack, data)
    assert table is None
    assert stats.records == 3
    assert stats.skipped == {"not a conntrack entry": 2, "not UTF-8": 1}
    assert stats.examples == {"not a conntrack entry": [4, 5], "not UTF-8": [6]}
    assert flowlogs.sniff(data.split(b"\n")[0] + b"\n") == "conntrack"  # only the summary: an empty table


def test_a_conntrack_number_too_big_for_its_column_is_null() -> None:
    # bug (fuzzing): a 10-digit timeout raised ArrowInvalid (the ct_timeout column is int32)
    data = (b"tcp      6 3285487516 ESTABLISHED src=10.0.0.1 dst=10.96.0.10 sport=1000 dport=80 "
            b"src=10.0.1.5 dst=10.0.0.1 sport=8080 dport=1000 [ASSURED] mark=0 use=1\n"
            b"tcp      6 431999 ESTABLISHED src=10.0.0.2 dst=10.96.0.10 sport=1001 dport=80 "
            b"src=10.0.1.5 dst=10.0.0.2 sport=8080 dport=1001 [ASSURED] mark=0 use=1\n")
    table, stats, _ = read(flowlogs.read_conntrack, data)
    assert stats.kept == 2 and table.column("ct_timeout").to_pylist() == [None, 431999]


# the kernel: a node namespace with kube-proxy's kind of DNAT, a client and an endpoint
NAT_RULES = """
table ip kpt-flowlogs {
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        ip daddr 10.96.0.10 tcp dport 80 dnat to 10.0.1.5:8080
        ip daddr 10.96.0.10 udp dport 53 dnat to 10.0.1.5:5353
    }
}
"""
ICMP_ECHO = r"""
import socket, struct
def checksum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
msg = struct.pack("!BBHHH", 8, 0, 0, 0x4B50, 1) + b"kpxy"
msg = msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]
socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).sendto(msg, ("10.0.1.5", 0))
"""


@pytest.fixture(scope="module")
def kernel_conntrack() -> dict[str, Any]:
    """conntrack's table of a node namespace after real traffic through it: 3 TCP
    connections and 2 UDP datagrams to the ClusterIP-like 10.96.0.10 (DNAT to
    10.0.1.5), one TCP connection straight to 10.0.1.5, one ICMP echo."""
    reason = netns.unavailable_reason()
    for tool in ("conntrack", "nft"):
        if reason is None and shutil.which(tool) is None:
            reason = f"{tool} is not installed"
    if reason:
        pytest.skip(reason)
    with netns.topology(["192.168.0.2"], tag="ct") as topo:
        topo.add_hosts({"client": ("10.0.0.10", "pod"), "server": ("10.0.1.5", "pod")})
        topo.sysctl(topo.node, {"net.netfilter.nf_conntrack_acct": 1})
        topo.load_nft(NAT_RULES)
        topo.start_servers({"server": ([8080], [5353])})
        tcp, udp, direct = topo.sports(3), topo.sports(2), topo.sports(1)
        replies = topo.probe({"client": [
            netns.Probe("10.96.0.10", 80, "TCP", count=3, sport=tcp),
            netns.Probe("10.96.0.10", 53, "UDP", count=2, sport=udp),
            netns.Probe("10.0.1.5", 8080, "TCP", count=1, sport=direct),
        ]})["client"]
        assert [[r.outcome for r in probe] for probe in replies] == [["connected"] * 3, ["connected"] * 2,
                                                                      ["connected"]]
        assert {r.endpoint for probe in replies for r in probe} == {"10.0.1.5:8080", "10.0.1.5:5353"}
        netns.run(["ip", "netns", "exec", topo.hosts["client"].ns, *netns.PYTHON, "-c", ICMP_ECHO])
        conntrack = ["ip", "netns", "exec", topo.node, "conntrack", "-L"]
        out = {
            "plain": netns.run(conntrack).encode(),
            "extended": netns.run([*conntrack, "-o", "extended"]).encode(),
            "saved": subprocess.run(conntrack, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    timeout=30, check=True).stdout,
        }
    out["ports"] = {"tcp": [tcp, tcp + 1, tcp + 2], "udp": [udp, udp + 1], "direct": direct}
    return out


@pytest.mark.slow
def test_real_conntrack_table_holds_the_original_tuples(kernel_conntrack: dict[str, Any]) -> None:
    ports = kernel_conntrack["ports"]
    want = ({("10.0.0.10", "10.96.0.10", p, 80, "TCP", "10.0.1.5", 8080) for p in ports["tcp"]}
            | {("10.0.0.10", "10.96.0.10", p, 53, "UDP", "10.0.1.5", 5353) for p in ports["udp"]}
            | {("10.0.0.10", "10.0.1.5", ports["direct"], 8080, "TCP", "10.0.1.5", 8080)})
    seen = []
    for form in ("plain", "extended", "saved"):
        data = kernel_conntrack[form]
        assert flowlogs.sniff(data) == "conntrack", data[:300]
        table, stats, tables = read(flowlogs.read_conntrack, data)
        got = rows(table, "src", "dst", "sport", "dport", "proto", "reply_src", "reply_sport")
        assert want <= set(got), data.decode()
        assert stats.skipped.get("not TCP, UDP or SCTP (icmp)", 0) >= 1, (stats, data.decode())
        mine = [r for r in table.to_pylist() if r["src"] == "10.0.0.10"]
        for r in mine:
            assert r["reply_dst"] == "10.0.0.10" and r["reply_dport"] == r["sport"]
            assert r["packets"] >= 1 and r["bytes"] > 0  # accounting is on
            assert r["ct_mark"] == 0 and r["ct_zone"] is None and r["time"] is None
            if r["proto"] == "TCP":
                assert r["ct_state"] in ("TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "FIN_WAIT", "ESTABLISHED")
                assert r["ct_assured"] is True
            else:
                assert r["ct_state"] is None and r["ct_timeout"] <= 180
        check_counts(stats, tables, data, not_records=int(form == "saved"))
        seen.append(sorted(got))
    assert seen[0] == seen[1] == seen[2]  # -o extended and a saved stderr change nothing


@pytest.mark.slow
def test_real_conntrack_classified_as_the_kernel_translated(kernel_conntrack: dict[str, Any]) -> None:
    table, _, _ = read(flowlogs.read_conntrack, kernel_conntrack["plain"])
    table = table.filter(pc.equal(table.column("src"), "10.0.0.10"))
    out = flows.classify(table, engine()).to_pylist()
    assert len(out) == 6
    for r in out:
        if r["dst"] == "10.96.0.10":  # the engine's DNAT is the kernel's: the REPLY tuple's source
            assert (r["verdict"], r["namespace"], r["service"]) == ("DNAT", "default", "web")
            assert (r["endpoint_ip"], r["endpoint_port"]) == (r["reply_src"], r["reply_sport"])
            assert r["port_name"] == {"TCP": "http", "UDP": "dns"}[r["proto"]]
        else:
            assert (r["verdict"], r["service"], r["reply_src"]) == ("PASS", None, r["dst"])


# =========================================================================== AWS VPC Flow Logs

V2_HEADER = b"version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end " \
            b"action log-status"
# AWS's documented records (awsdocs/amazon-vpc-user-guide, doc_source/flow-logs-records-examples.md):
# accepted and rejected traffic, no data and skipped records, the ICMP pair of the security
# group and network ACL example, IPv6 traffic
AWS_V2 = [
    b"2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 "
    b"ACCEPT OK",
    b"2 123456789010 eni-1235b8ca123456789 172.31.9.69 172.31.9.12 49761 3389 6 20 4249 1418530010 1418530070 "
    b"REJECT OK",
    b"2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA",
    b"2 123456789010 eni-11111111aaaaaaaaa - - - - - - - 1431280876 1431280934 - SKIPDATA",
    b"2 123456789010 eni-1235b8ca123456789 203.0.113.12 172.31.16.139 0 0 1 4 336 1432917027 1432917142 ACCEPT OK",
    b"2 123456789010 eni-1235b8ca123456789 172.31.16.139 203.0.113.12 0 0 1 4 336 1432917094 1432917142 REJECT OK",
    b"2 123456789010 eni-1235b8ca123456789 2001:db8:1234:a100:8d6e:3477:df66:f105 "
    b"2001:db8:1234:a102:3304:8879:34cf:4071 34892 22 6 54 8855 1477913708 1477913820 ACCEPT OK",
]
# in the same shape: a "-" port, an address that is none, UDP, a cut record
MADE_V2 = [
    b"2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 - 22 6 20 4249 1418530010 1418530070 "
    b"ACCEPT OK",
    b"2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.999 20642 22 6 20 4249 1418530010 1418530070 "
    b"ACCEPT OK",
    b"2 123456789010 eni-1235b8ca123456789 10.0.0.10 10.96.0.10 53000 53 17 1 70 1418530011 1418530071 ACCEPT OK",
    b"2 123456789010 eni-1235b8ca123456789 10.0.0.10 10.96.0.10 53000 53 17 1 70 1418530011 ACCEPT OK",
]
# the documentation's custom formats: the TCP flag sequence (pkt-srcaddr, pkt-dstaddr; one
# record printed there with two spaces), and the transit gateway
TCP_FLAGS_HEADER = (b"version vpc-id subnet-id instance-id interface-id account-id type srcaddr dstaddr srcport "
                    b"dstport pkt-srcaddr pkt-dstaddr protocol bytes packets start end action tcp-flags log-status")
TCP_FLAGS = [
    b"3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 "
    b"IPv4 52.213.180.42 10.0.0.62 43416 5001 52.213.180.42 10.0.0.62 6 568 8 1566848875 1566848933 ACCEPT 2 OK",
    b"3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 "
    b"IPv4 10.0.0.62 52.213.180.42 5001 43416 10.0.0.62 52.213.180.42 6 376 7 1566848875 1566848933 ACCEPT 18 OK",
    b"3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 "
    b"IPv4 10.0.0.62 52.213.180.42 5001 43638  10.0.0.62 52.213.180.42 6 967 14 1566933133 1566933193 ACCEPT 19 OK",
]
TGW_HEADER = (b"version interface-id account-id vpc-id subnet-id instance-id srcaddr dstaddr srcport dstport protocol "
              b"tcp-flags type pkt-srcaddr pkt-dstaddr action log-status")
TGW = [
    b"3 eni-33333333333333333 123456789010 vpc-abcdefab012345678 subnet-22222222bbbbbbbbb i-01234567890123456 "
    b"10.20.33.164 10.40.2.236 39812 80 6 3 IPv4 10.20.33.164 10.40.2.236 ACCEPT OK",
    b"...",
    b"3 eni-11111111111111111 123456789010 vpc-abcdefab012345678 subnet-11111111aaaaaaaaa - 10.40.1.175 "
    b"10.40.2.236 39812 80 6 3 IPv4 10.20.33.164 10.40.2.236 ACCEPT OK",
]
NAT_HEADER = b"instance-id interface-id srcaddr dstaddr pkt-srcaddr pkt-dstaddr"  # no ports, no protocol
NAT = b"- eni-1235b8ca123456789 10.0.1.5 10.0.0.220 10.0.1.5 203.0.113.5"


def vpc_v2_file() -> bytes:
    return b"\n".join([V2_HEADER, *AWS_V2, b"", *MADE_V2]) + b"\n"


def test_vpc_default_format_with_its_header() -> None:
    data = vpc_v2_file()
    assert flowlogs.sniff(data) == "vpc"
    table, stats, tables = read(flowlogs.read_vpc, data)
    assert table.column_names == [*COMMON, "version", "account_id", "interface_id", "packets", "bytes", "start",
                                  "end", "action", "log_status"]
    assert [str(t) for t in table.schema.types] == [
        "uint64", "string", "string", "int32", "int32", "string", "double", "string", "string", "string", "int64",
        "int64", "int64", "int64", "string", "string"]
    assert rows(table, "line", "src", "dst", "sport", "dport", "proto", "time", "action") == [
        (2, "172.31.16.139", "172.31.16.21", 20641, 22, "TCP", 1418530010.0, "ACCEPT"),
        (3, "172.31.9.69", "172.31.9.12", 49761, 3389, "TCP", 1418530010.0, "REJECT"),
        (8, "2001:db8:1234:a100:8d6e:3477:df66:f105", "2001:db8:1234:a102:3304:8879:34cf:4071", 34892, 22, "TCP",
         1477913708.0, "ACCEPT"),
        (12, "10.0.0.10", "10.96.0.10", 53000, 53, "UDP", 1418530011.0, "ACCEPT"),
    ]
    first = table.to_pylist()[0]
    assert {k: first[k] for k in ("version", "account_id", "interface_id", "packets", "bytes", "start", "end",
                                  "log_status")} == {
        "version": "2", "account_id": "123456789010", "interface_id": "eni-1235b8ca123456789", "packets": 20,
        "bytes": 4249, "start": 1418530010, "end": 1418530070, "log_status": "OK"}
    assert stats.skipped == {"NODATA record": 1, "SKIPDATA record": 1, "not TCP, UDP or SCTP (protocol 1)": 2,
                             "srcport: '-'": 1, "dstaddr: not an IP address": 1,
                             "fewer fields than the header (13 of 14)": 1}
    assert stats.examples == {"NODATA record": [4], "SKIPDATA record": [5], "not TCP, UDP or SCTP (protocol 1)": [6, 7],
                              "srcport: '-'": [10], "dstaddr: not an IP address": [11],
                              "fewer fields than the header (13 of 14)": [13]}
    check_counts(stats, tables, data, not_records=1)
    assert classified(table) == [
        (2, "DNAT", "aws/ssh:ssh", ("172.31.20.5", 2222)),
        (3, "PASS", None, None),
        (8, "DNAT", "aws/ssh:ssh", ("2001:db8:1234:a102::5", 2222)),
        (12, "DNAT", "default/web:dns", ("10.0.1.5", 5353)),
    ]


def test_vpc_custom_formats() -> None:
    data = b"\n".join([TCP_FLAGS_HEADER, *TCP_FLAGS]) + b"\n"
    assert flowlogs.sniff(data) == "vpc"
    table, stats, tables = read(flowlogs.read_vpc, data)
    assert table.column_names == [
        *COMMON, "version", "vpc_id", "subnet_id", "instance_id", "interface_id", "account_id", "type", "pkt_srcaddr",
        "pkt_dstaddr", "bytes", "packets", "start", "end", "action", "tcp_flags", "log_status"]
    assert rows(table, "line", "src", "dst", "sport", "dport", "tcp_flags", "bytes", "packets", "pkt_srcaddr") == [
        (2, "52.213.180.42", "10.0.0.62", 43416, 5001, "2", 568, 8, "52.213.180.42"),
        (3, "10.0.0.62", "52.213.180.42", 5001, 43416, "18", 376, 7, "10.0.0.62"),
        (4, "10.0.0.62", "52.213.180.42", 5001, 43638, "19", 967, 14, "10.0.0.62"),  # two spaces: still a record
    ]
    check_counts(stats, tables, data, not_records=1)
    assert [c[1:3] for c in classified(table)] == [("DNAT", "aws/iperf:iperf"), ("PASS", None), ("PASS", None)]

    # the transit gateway's: no start (time null), pkt-srcaddr unlike srcaddr (src is srcaddr)
    data = b"\n".join([TGW_HEADER, *TGW]) + b"\n"
    table, stats, tables = read(flowlogs.read_vpc, data)
    assert rows(table, "line", "src", "pkt_srcaddr", "instance_id", "time") == [
        (2, "10.20.33.164", "10.20.33.164", "i-01234567890123456", None),
        (4, "10.40.1.175", "10.20.33.164", None, None),
    ]
    assert stats.skipped == {"fewer fields than the header (1 of 17)": 1} and stats.examples[
        "fewer fields than the header (1 of 17)"] == [3]
    check_counts(stats, tables, data, not_records=1)

    # the NAT gateway's names no ports and no protocol: not a file of lookups
    with pytest.raises(InputError, match=r"^line 1: a VPC flow log header without srcport, dstport, protocol "):
        list(flowlogs.read_vpc(io.BytesIO(NAT_HEADER + b"\n" + NAT + b"\n"), ReadStats()))
    with pytest.raises(InputError, match="names srcaddr twice"):
        list(flowlogs.read_vpc(io.BytesIO(V2_HEADER + b" srcaddr\n"), ReadStats()))


def test_vpc_without_a_header_and_files_joined() -> None:
    headerless = b"\r\n".join([*AWS_V2, b"   ", *MADE_V2])  # a CloudWatch Logs export, CRLF, no last newline
    assert flowlogs.sniff(headerless) == "vpc"
    table, stats, tables = read(flowlogs.read_vpc, headerless)
    with_header, want, _ = read(flowlogs.read_vpc, vpc_v2_file())
    assert rows(table, "line", "src", "sport") == [(n - 1, s, p) for n, s, p in rows(with_header, "line", "src",
                                                                                        "sport")]
    assert table.drop_columns("line").equals(with_header.drop_columns("line"))
    assert stats.skipped == {k.replace("the header", "the default format"): v for k, v in want.skipped.items()}
    check_counts(stats, tables, headerless)

    # S3 files joined: the same header again is no record; another names the fields on
    joined = b"\n".join([V2_HEADER, AWS_V2[0], V2_HEADER, AWS_V2[1], TCP_FLAGS_HEADER, TCP_FLAGS[0], V2_HEADER,
                         AWS_V2[6]]) + b"\n"
    stats = ReadStats()
    tables = list(flowlogs.read_vpc(io.BytesIO(joined), stats))
    assert [(t.column("line").to_pylist(), t.num_columns) for t in tables] == [([2, 4], 16), ([6], 23), ([8], 16)]
    check_counts(stats, tables, joined, not_records=4)


def test_vpc_compressed(tmp_path: Path) -> None:
    data = vpc_v2_file()
    plain, stats, _ = read(flowlogs.read_vpc, data)
    (tmp_path / "flows.log.gz").write_bytes(gzip.compress(data))
    with pa.CompressedOutputStream(str(tmp_path / "flows.log.zst"), "zstd") as out:
        out.write(data)
    for name in ("flows.log.gz", "flows.log.zst"):
        path = str(tmp_path / name)
        got_stats = ReadStats()
        with open_input(path, got_stats) as f:
            head = f.peek(1 << 16)[: 1 << 16] if hasattr(f, "peek") else b""
            assert flowlogs.sniff(head) == "vpc"
            tables = list(flowlogs.read_vpc(f, got_stats, chunk=2))
        assert pa.concat_tables(tables).equals(plain)
        assert (got_stats.records, got_stats.skipped) == (stats.records, stats.skipped)
        assert got_stats.bytes_read == (tmp_path / name).stat().st_size


# =========================================================================== Hubble

# Cilium's documentation, "Configuring Hubble exporter" (cilium/cilium,
# Documentation/observability/hubble/configuration/export.rst): two exported flows, field
# masks on (an ICMPv6 drop, and xwing's SYN to a deathstar pod refused by policy)
DOC_ICMP6 = (b'{"flow":{"time":"2023-08-21T12:12:13.517394084Z","verdict":"DROPPED","IP":{"source":'
             b'"fe80::64d8:8aff:fe72:fc14","destination":"ff02::2","ipVersion":"IPv6"},"l4":{"ICMPv6":{"type":133}},'
             b'"source":{},"destination":{},"node_name":"kind-kind/kind-worker","drop_reason_desc":"INVALID_SOURCE_IP"},'
             b'"node_name":"kind-kind/kind-worker","time":"2023-08-21T12:12:13.517394084Z"}')
DOC_XWING = (b'{"flow":{"time":"2023-08-21T12:12:18.510175415Z","verdict":"DROPPED","IP":{"source":"10.244.1.60",'
             b'"destination":"10.244.1.5","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":44916,"destination_port":80,'
             b'"flags":{"SYN":true}}},"source":{"namespace":"default","pod_name":"xwing"},"destination":{"namespace":'
             b'"default","pod_name":"deathstar-7848d6c4d5-th9v2"},"node_name":"kind-kind/kind-worker",'
             b'"drop_reason_desc":"POLICY_DENIED"},"node_name":"kind-kind/kind-worker",'
             b'"time":"2023-08-21T12:12:18.510175415Z"}')
# Hubble's own printer test (cilium/cilium, hubble/pkg/printer/printer_test.go): the same flow
# as `-o jsonpb` prints it (wrapped in GetFlowsResponse) and as `-o json` (the bare Flow)
PRINTER_JSONPB = (b'{"flow":{"time":"1970-01-01T00:20:34.567800Z","verdict":"DROPPED","IP":{"source":"1.1.1.1",'
                  b'"destination":"2.2.2.2"},"l4":{"TCP":{"source_port":31793,"destination_port":8080}},"source":'
                  b'{"identity":4},"destination":{"identity":12345},"Type":"L3_L4","node_name":"k8s1","event_type":'
                  b'{"type":1,"sub_type":133},"is_reply":false,"Summary":"TCP Flags: SYN"}}')
PRINTER_JSON = PRINTER_JSONPB[len(b'{"flow":'):-1]
# built in the same shape (protojson's proto names): to the ClusterIP of default/web
MADE_DNS = (b'{"flow":{"time":"2024-05-07T10:11:12.123456789Z","verdict":"FORWARDED","ethernet":{"source":'
            b'"a2:1b:3c:4d:5e:6f","destination":"b2:1b:3c:4d:5e:70"},"IP":{"source":"10.0.0.10","destination":'
            b'"10.96.0.10","ipVersion":"IPv4"},"l4":{"UDP":{"source_port":41234,"destination_port":53}},"source":'
            b'{"ID":1234,"identity":5678,"namespace":"default","labels":["k8s:app=client"],"pod_name":'
            b'"client-7d9f8b6c5-x2x4z"},"destination":{"identity":2,"labels":["reserved:world"]},"Type":"L3_L4",'
            b'"node_name":"kind-worker","event_type":{"type":4,"sub_type":3},"traffic_direction":"EGRESS",'
            b'"trace_observation_point":"TO_STACK","is_reply":false,"Summary":"UDP"},"node_name":"kind-worker",'
            b'"time":"2024-05-07T10:11:12.123456789Z"}')
MADE_REPLY = (b'{"flow":{"time":"2024-05-07T10:11:12.124Z","verdict":"FORWARDED","IP":{"source":"10.0.1.5",'
              b'"destination":"10.0.0.10","ipVersion":"IPv4"},"l4":{"UDP":{"source_port":5353,"destination_port":'
              b'41234}},"source":{"namespace":"default","pod_name":"web-5c9f7b9d6-abcde"},"destination":{"namespace":'
              b'"default","pod_name":"client-7d9f8b6c5-x2x4z"},"Type":"L3_L4","node_name":"kind-worker",'
              b'"traffic_direction":"EGRESS","is_reply":true,"Summary":"UDP"},"node_name":"kind-worker",'
              b'"time":"2024-05-07T10:11:12.124Z"}')
MADE_DROPPED = (b'{"flow":{"time":"2024-05-07T10:11:13.5+02:00","verdict":"DROPPED","drop_reason":133,"IP":'
                b'{"source":"10.0.0.11","destination":"10.96.0.10","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":'
                b'40000,"destination_port":80,"flags":{"SYN":true}}},"source":{"namespace":"other","pod_name":"intruder"},'
                b'"destination":{"identity":2},"Type":"L3_L4","node_name":"kind-worker","event_type":{"type":1,'
                b'"sub_type":133},"traffic_direction":"EGRESS","drop_reason_desc":"POLICY_DENIED","Summary":'
                b'"TCP Flags: SYN"},"node_name":"kind-worker","time":"2024-05-07T10:11:13.5+02:00"}')
MADE_ICMP4 = (b'{"flow":{"time":"2024-05-07T10:11:14Z","verdict":"FORWARDED","IP":{"source":"10.0.0.10","destination":'
              b'"10.0.1.5","ipVersion":"IPv4"},"l4":{"ICMPv4":{"type":8}},"Type":"L3_L4","node_name":"kind-worker",'
              b'"Summary":"ICMPv4 EchoRequest"},"node_name":"kind-worker","time":"2024-05-07T10:11:14Z"}')
MADE_L7 = (b'{"flow":{"time":"2024-05-07T10:11:15Z","verdict":"FORWARDED","IP":{"source":"10.0.0.10","destination":'
           b'"10.96.0.10","ipVersion":"IPv4"},"source":{"namespace":"default","pod_name":"client-7d9f8b6c5-x2x4z"},'
           b'"Type":"L7","node_name":"kind-worker","l7":{"type":"REQUEST","dns":{"query":'
           b'"web.default.svc.cluster.local.","qtypes":["A"],"observation_source":"proxy"}},"traffic_direction":'
           b'"EGRESS","is_reply":false,"Summary":"DNS Query web.default.svc.cluster.local. A"},'
           b'"node_name":"kind-worker","time":"2024-05-07T10:11:15Z"}')
MADE_L7_NO_IP = MADE_L7.replace(b'"IP":{"source":"10.0.0.10","destination":"10.96.0.10","ipVersion":"IPv4"},', b"")
MADE_TCP6 = (b'{"time":"2024-05-07T10:11:16Z","verdict":"FORWARDED","IP":{"source":"fd00:10::9","destination":'
             b'"fd00:96::10","ipVersion":"IPv6"},"l4":{"TCP":{"source_port":50000,"destination_port":80,"flags":'
             b'{"SYN":true}}},"source":{"namespace":"default","pod_name":"client6"},"destination":{"identity":2},'
             b'"Type":"L3_L4","node_name":"kind-worker","traffic_direction":"EGRESS","is_reply":false,'
             b'"Summary":"TCP Flags: SYN"}')
MADE_CAMEL = (b'{"flow":{"time":"2024-05-07T10:11:17Z","verdict":"FORWARDED","IP":{"source":"10.0.0.12",'
              b'"destination":"10.96.0.10","ipVersion":"IPv4"},"l4":{"TCP":{"sourcePort":40001,"destinationPort":80}},'
              b'"source":{"namespace":"default","podName":"camel"},"nodeName":"kind-worker","trafficDirection":'
              b'"EGRESS","isReply":false},"nodeName":"kind-worker","time":"2024-05-07T10:11:17Z"}')
MADE_LOST = (b'{"lost_events":{"source":"HUBBLE_RING_BUFFER","num_events_lost":"3","cpu":1},'
             b'"node_name":"kind-worker","time":"2024-05-07T10:11:18Z"}')
HUBBLE = [DOC_ICMP6, DOC_XWING, PRINTER_JSONPB, PRINTER_JSON, MADE_DNS, MADE_REPLY, MADE_DROPPED, MADE_ICMP4,
          MADE_L7, MADE_L7_NO_IP, MADE_TCP6, MADE_CAMEL, MADE_LOST, b"Error: rpc error: code = Unavailable", b"[1,2]",
          b'{"kind":"Pod"}']


def test_hubble_flows() -> None:
    data = b"\n".join(HUBBLE) + b"\n"
    assert flowlogs.sniff(data) == "hubble"
    table, stats, tables = read(flowlogs.read_hubble, data)
    assert table.column_names == [*COMMON, "hubble_verdict", "hubble_source_pod", "hubble_destination_pod",
                                  "hubble_node", "hubble_is_reply", "hubble_direction"]
    assert [str(t) for t in table.schema.types][-6:] == ["string", "string", "string", "string", "bool", "string"]
    assert rows(table, "line", "src", "dst", "sport", "dport", "proto", "hubble_verdict", "hubble_source_pod",
                "hubble_destination_pod", "hubble_node", "hubble_is_reply", "hubble_direction") == [
        (2, "10.244.1.60", "10.244.1.5", 44916, 80, "TCP", "DROPPED", "default/xwing",
         "default/deathstar-7848d6c4d5-th9v2", "kind-kind/kind-worker", None, None),
        (3, "1.1.1.1", "2.2.2.2", 31793, 8080, "TCP", "DROPPED", None, None, "k8s1", False, None),
        (4, "1.1.1.1", "2.2.2.2", 31793, 8080, "TCP", "DROPPED", None, None, "k8s1", False, None),
        (5, "10.0.0.10", "10.96.0.10", 41234, 53, "UDP", "FORWARDED", "default/client-7d9f8b6c5-x2x4z", None,
         "kind-worker", False, "EGRESS"),
        (6, "10.0.1.5", "10.0.0.10", 5353, 41234, "UDP", "FORWARDED", "default/web-5c9f7b9d6-abcde",
         "default/client-7d9f8b6c5-x2x4z", "kind-worker", True, "EGRESS"),
        (7, "10.0.0.11", "10.96.0.10", 40000, 80, "TCP", "DROPPED", "other/intruder", None, "kind-worker", None,
         "EGRESS"),
        (11, "fd00:10::9", "fd00:96::10", 50000, 80, "TCP", "FORWARDED", "default/client6", None, "kind-worker",
         False, "EGRESS"),
        (12, "10.0.0.12", "10.96.0.10", 40001, 80, "TCP", "FORWARDED", "default/camel", None, "kind-worker", False,
         "EGRESS"),
    ]
    times = dict(rows(table, "line", "time"))
    assert times[2] == pytest.approx(1692619938.510175415)
    assert times[3] == times[4] == pytest.approx(1234.5678)
    assert times[5] == pytest.approx(1715076672.123456789)
    assert times[7] == pytest.approx(1715076673.5 - 7200)  # +02:00
    assert stats.skipped == {"not TCP, UDP or SCTP (ICMPv6)": 1, "not TCP, UDP or SCTP (ICMPv4)": 1,
                             "no L4 (L7 record)": 1, "no IP (L7 record)": 1, "not a flow (lost_events)": 1,
                             "not JSON": 1, "not a JSON object": 1, "not a Hubble flow": 1}
    assert stats.examples == {"not TCP, UDP or SCTP (ICMPv6)": [1], "not TCP, UDP or SCTP (ICMPv4)": [8],
                              "no L4 (L7 record)": [9], "no IP (L7 record)": [10], "not a flow (lost_events)": [13],
                              "not JSON": [14], "not a JSON object": [15], "not a Hubble flow": [16]}
    check_counts(stats, tables, data)
    assert classified(table) == [
        (2, "PASS", None, None),
        (3, "PASS", None, None),
        (4, "PASS", None, None),
        (5, "DNAT", "default/web:dns", ("10.0.1.5", 5353)),
        (6, "PASS", None, None),
        (7, "DNAT", "default/web:http", ("10.0.1.5", 8080)),  # Cilium dropped it; kube-proxy's rules would not
        (11, "DNAT", "default/web:http", ("fd00:10::5", 8080)),
        (12, "DNAT", "default/web:http", ("10.0.1.5", 8080)),
    ]


def test_hubble_odd_values_are_skipped_not_raised() -> None:
    flow = b'{"flow":{"IP":{"source":"%s","destination":"10.96.0.10"},"l4":{"TCP":%s}}}'
    data = b"\n".join([
        flow % (b"10.0.0.1", b'{"destination_port":80}'),  # no source_port: protojson's 0
        flow % (b"10.0.0.1", b'{"source_port":-1,"destination_port":80}'),
        flow % (b"10.0.0.1", b'{"source_port":1,"destination_port":70000}'),
        flow % (b"10.0.0.1", b'{"source_port":true,"destination_port":80}'),
        flow % (b"not-an-ip", b'{"source_port":1,"destination_port":80}'),
        flow % (b"10.0.0.1", b'{"source_port":"443","destination_port":"80"}'),
        b'{"flow":null}', b'{"flow":{"IP":null}}', b'{"IP":{"source":1,"destination":2}}', b"[" * 100000,
        b'{"flow":{"IP":{"source":"10.0.0.1","destination":"10.0.0.2"},"l4":{"\\u00e9":{}},"time":"yesterday"}}',
        b'\xff{"IP":{}}',
    ]) + b"\n"
    table, stats, tables = read(flowlogs.read_hubble, data)
    assert rows(table, "line", "sport", "dport", "time") == [(1, 0, 80, None), (6, 443, 80, None)]
    assert stats.skipped == {"sport: not a port": 2, "dport: not a port": 1, "src: not an IP address": 1,
                             "not a Hubble flow": 1, "no IP": 2, "not JSON": 1,
                             "not TCP, UDP or SCTP (unknown)": 1, "not UTF-8": 1}
    check_counts(stats, tables, data)


# =========================================================================== all three


def test_sniff() -> None:
    assert flowlogs.sniff(vpc_v2_file()) == "vpc"
    assert flowlogs.sniff(b"\n".join(AWS_V2)) == "vpc"
    assert flowlogs.sniff(TGW_HEADER + b"\n") == "vpc"
    assert flowlogs.sniff(NAT_HEADER + b"\n" + NAT) == "vpc"  # a VPC flow log, if not one of lookups
    assert flowlogs.sniff(CT_SAVED) == "conntrack"
    assert flowlogs.sniff(MADE_LOST + b"\n" + PRINTER_JSON + b"\n") == "hubble"
    assert flowlogs.sniff(b"\n\n" + DOC_XWING) == "hubble"  # a whole file without its last newline
    assert flowlogs.sniff(DOC_XWING * 100) is None  # the first line cut off by the 64 KiB: nothing to go by
    for other in (b"", b"\n\n", b"hello world\n", b'{"kind":"Pod"}\n', b"\x1f\x8b\x08\x00",
                  b"ts,src,dst\n1,2,3\n", b"tcp 6 hello\n", b"2 123 eni-1 x\n", MADE_LOST + b"\n"):
        assert flowlogs.sniff(other) is None, other


def many(lines: list[bytes], n: int) -> bytes:
    """``lines`` over and over, with ports changed so that rows differ."""
    out = []
    for i in range(n):
        port = str(1024 + i).encode()
        line = lines[i % len(lines)]
        out.append(re.sub(rb"(sport=|source_port\":)\d+", lambda m, port=port: m.group(1) + port, line))
    return b"\n".join(out) + b"\n"


CASES: dict[str, tuple[Reader, bytes]] = {
    "hubble": (flowlogs.read_hubble, many(HUBBLE, 200)),
    "vpc": (flowlogs.read_vpc, V2_HEADER + b"\n" + many([*AWS_V2, *MADE_V2, b""], 300)),
    "conntrack": (flowlogs.read_conntrack, many(CT_SAVED.split(b"\n"), 300)),
}


@pytest.mark.parametrize("fmt", CASES)
def test_chunks_and_blocks_do_not_change_the_rows(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    reader, data = CASES[fmt]
    whole, stats, tables = read(reader, data)
    assert len(tables) == 1 and whole.num_rows >= 100
    small, small_stats, small_tables = read(reader, data, chunk=3)
    assert [t.num_rows for t in small_tables[:-1]] == [3] * (len(small_tables) - 1)
    assert small.equals(whole)
    assert (small_stats.records, small_stats.skipped, small_stats.examples) == \
        (stats.records, stats.skipped, stats.examples)
    monkeypatch.setattr(flowlogs, "BLOCK", 37)  # lines cut across many reads
    blocked, blocked_stats, _ = read(reader, data, chunk=50)
    assert blocked.equals(whole) and blocked_stats.skipped == stats.skipped


@pytest.mark.parametrize("fmt", CASES)
def test_a_line_too_long_is_counted_not_held(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    reader, data = CASES[fmt]
    lines = data.split(b"\n")
    lines.insert(5, b"x" * 5000)
    data = b"\n".join(lines)
    monkeypatch.setattr(flowlogs, "BLOCK", 64)
    monkeypatch.setattr(flowlogs, "MAX_LINE", 1000)
    _, stats, tables = read(reader, data)
    assert stats.skipped[flowlogs.LONG_LINE] == 1 and stats.examples[flowlogs.LONG_LINE] == [6]
    check_counts(stats, tables, data, not_records=data.count(b"(conntrack-tools)") if fmt == "conntrack" else
                 int(fmt == "vpc"))


# --------------------------------------------------------------------------- garbage never raises

REAL = {"hubble": HUBBLE, "vpc": [*AWS_V2, *MADE_V2],
        "conntrack": [line for line in CT_SAVED.split(b"\n") if line]}
TOOL = re.compile(rb"conntrack v[0-9][^ ]* \(conntrack-tools\):")
JUNK = [b"-", b"", b"x", b"99999", b"1.2.3", b"::", b"\xff\xfe", b"=", b"src=", b"[", b"]", b"{", b'"', b"\t",
        b"\r", b"0", b"65536", b"NODATA", b"tcp", b"ipv4", b"[ASSURED]", b"\xe2\x80\x94", b"\x00"]


def mutated(line: bytes, seed: int) -> bytes:
    rng = random.Random(seed)
    tokens = line.split(b" ")
    i = rng.randrange(len(tokens))
    op = rng.randrange(6)
    if op == 0:
        del tokens[i]
    elif op == 1:
        tokens[i] = rng.choice(JUNK)
    elif op == 2:
        tokens.insert(i, rng.choice(tokens))
    elif op == 3:
        return line[:rng.randrange(len(line) + 1)]
    elif op == 4:
        at = rng.randrange(len(line) + 1)
        return (line[:at] + bytes([rng.randrange(256)]) + line[at:]).replace(b"\n", b"")
    else:
        tokens[i] = tokens[i][: rng.randrange(len(tokens[i]) + 1)] + rng.choice(JUNK)
    return b" ".join(tokens).replace(b"\n", b"")


FLOW_KEYS = ["flow", "IP", "source", "destination", "l4", "TCP", "UDP", "SCTP", "ICMPv4", "source_port",
             "destination_port", "sourcePort", "pod_name", "namespace", "time", "Type", "is_reply", "verdict",
             "node_name", "traffic_direction", "lost_events"]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False) | st.text(max_size=12)
    | st.sampled_from(["10.0.0.1", "fd00::1", "TCP", "UDP", "L7", "", "1.2.3.4 ", "443"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FLOW_KEYS) | st.text(max_size=6),
                                                                 inner, max_size=3),
    max_leaves=6)


def retyped(line: bytes, seed: int, value: Any) -> bytes:
    """A real Hubble line with one value somewhere in it (or a new key) replaced by ``value``."""
    rng = random.Random(seed)
    obj = json.loads(line)
    node = obj
    while isinstance(node, dict) and node and rng.random() < 0.7:
        key = rng.choice(sorted(node))
        if not isinstance(node[key], dict):
            break
        node = node[key]
    if isinstance(node, dict):
        node[rng.choice([*sorted(node), *FLOW_KEYS]) if node else rng.choice(FLOW_KEYS)] = value
    return json.dumps(obj, separators=(",", ":")).encode()


def lines_of(fmt: str) -> st.SearchStrategy[list[bytes]]:
    real = st.sampled_from(REAL[fmt])
    typed = st.builds(retyped, st.sampled_from(HUBBLE[:13]), st.integers(0, 1 << 30), JSON_VALUES)
    return st.lists(st.one_of(
        *([typed] * (fmt == "hubble")),
        real,
        st.builds(mutated, real, st.integers(0, 1 << 30)),
        st.builds(mutated, st.builds(mutated, real, st.integers(0, 1 << 30)), st.integers(0, 1 << 30)),
        st.text(max_size=60).map(lambda s: s.encode("utf-8", "surrogatepass").replace(b"\n", b"")),
        st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")),
    ), max_size=25)


def not_records(fmt: str, lines: list[bytes]) -> int:
    if fmt == "conntrack":
        return sum(bool(TOOL.match(line.strip())) for line in lines)
    if fmt == "vpc":  # the header, and a line further on that is a full header
        names = re.compile(rb"[a-z][a-z-]*(?:-[a-z]+)*\Z")
        needed = {b"srcaddr", b"dstaddr", b"srcport", b"dstport", b"protocol"}
        return 1 + sum(all(names.match(t) for t in line.split()) and needed <= set(line.split())
                       and len(set(line.split())) == len(line.split()) for line in lines[1:])
    return 0


@pytest.mark.parametrize("fmt", ["hubble", "vpc", "conntrack"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_garbage_never_raises_and_every_line_is_counted(fmt: str, data: st.DataObject) -> None:
    lines = data.draw(lines_of(fmt))
    if fmt == "vpc":
        lines = [V2_HEADER, *lines]
    eol = data.draw(st.sampled_from([b"\n", b"\r\n"]))
    text = eol.join(lines) + data.draw(st.sampled_from([b"", eol]))
    reader = {"hubble": flowlogs.read_hubble, "vpc": flowlogs.read_vpc, "conntrack": flowlogs.read_conntrack}[fmt]
    chunk = data.draw(st.integers(1, 8))
    table, stats, tables = read(reader, text, chunk=chunk)
    check_counts(stats, tables, text, not_records(fmt, [line.strip() for line in text.split(b"\n") if line.strip()]))
    if table is not None:
        assert table.column_names[:7] == COMMON
        for r in table.to_pylist():
            assert r["proto"] in ("TCP", "UDP", "SCTP") and 0 <= r["sport"] <= 65535 and 0 <= r["dport"] <= 65535
        answers = flows.classify(table, engine())  # every row is a lookup
        assert answers.column("error").null_count == answers.num_rows

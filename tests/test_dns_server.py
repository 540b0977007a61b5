"""The DNS server (kproxy_core.dnsserver) on real sockets: dnspython and ``dig`` against 127.0.0.1.

The core check is that the wire answer is exactly the zone's Answer (rcode, AA, answer, authority,
additional), over UDP and TCP, for a list of names and types; the rest pins the protocol behaviour
(flags, EDNS, truncation and TCP fallback, malformed input, timeouts) and following cluster changes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cli_run
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.reversename
import dns.update
import pytest
import yaml
from k8s import ep, eport, port, service, slice_

import kproxy_core as kp
from kproxy_core import dnsserver
from kproxy_core.dns import DnsRecord, Zone
from kproxy_core.dnsserver import ServerThread, handle, serve_in_thread

ROOT = Path(__file__).resolve().parent.parent
ARTICLE = ROOT / "examples" / "mynginx.yaml"
LOAD_SCRIPT = ROOT / "benchmarks" / "dns_load.py"
SERVE = [str(cli_run.SCRIPT), "dns", "serve"]  # the installed command (Served fails the test without it)
DIG = shutil.which("dig")
TCP_TIMEOUT = 0.5  # the server's idle timeout in these tests: small, so timeout tests are fast
BIG = 40  # ready endpoints of the headless "big": its A answer is ~690 bytes, over 512

def article_objects() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(ARTICLE.read_text()) if d]


def extra_objects() -> list[dict[str, Any]]:
    return [
        service("web", "dual", ["10.96.0.10", "fd00::10"], [port(443, "https")]),
        service("web", "ext", [], [], type="ExternalName", externalName="example.org"),
        service("web", "alias", [], [], type="ExternalName", externalName="mynginx.default.svc.cluster.local"),
        service("web", "small", "None", [port(8080, "http")]),
        slice_("web", "small", [ep("10.1.1.1"), {**ep("10.1.1.2"), "hostname": "two"}, ep("10.1.1.3", ready=False)],
               [eport(8080, "http")]),
        service("web", "big", "None", [port(80, "http")]),
        slice_("web", "big", [ep(f"10.2.0.{i + 1}") for i in range(BIG)], [eport(80, "http")]),
    ]


def new_engine() -> kp.Engine:
    return kp.Engine(kp.Cluster.from_objects(article_objects() + extra_objects()))


@pytest.fixture(scope="module")
def engine() -> kp.Engine:
    return new_engine()


@pytest.fixture(scope="module")
def server(engine: kp.Engine) -> Iterator[ServerThread]:
    s = serve_in_thread(lambda: engine.dns_zone(), tcp_timeout=TCP_TIMEOUT)
    try:
        yield s
    finally:
        s.stop()


def udp(s: ServerThread, q: dns.message.Message, **kw: Any) -> dns.message.Message:
    return dns.query.udp(q, "127.0.0.1", port=s.port, timeout=3, **kw)


def tcp(s: ServerThread, q: dns.message.Message) -> dns.message.Message:
    return dns.query.tcp(q, "127.0.0.1", port=s.port, timeout=3)


def dig(s: ServerThread, *args: str) -> str:
    if DIG is None:
        pytest.skip("dig is not installed (apt-get install bind9-dnsutils)")
    r = subprocess.run([DIG, "@127.0.0.1", "-p", str(s.port), "+time=2", "+tries=1", *args],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def raw_udp(s: ServerThread, data: bytes, wait: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        sock.sendto(data, ("127.0.0.1", s.port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def raw_tcp(s: ServerThread, data: bytes) -> dns.message.Message:
    """Send one framed message, read one framed response."""
    with socket.create_connection(("127.0.0.1", s.port), timeout=3) as sock:
        sock.sendall(len(data).to_bytes(2, "big") + data)
        return dns.message.from_wire(read_framed(sock))


def read_framed(sock: socket.socket) -> bytes:
    size = int.from_bytes(read_exactly(sock, 2), "big")
    return read_exactly(sock, size)


def read_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "connection closed"
        buf += chunk
    return buf


def assert_alive(s: ServerThread) -> None:
    """A good query still answers over UDP and over TCP."""
    q = dns.message.make_query("mynginx.default.svc.cluster.local", "A")
    for r in (udp(s, q), tcp(s, q)):
        assert r.rcode() == dns.rcode.NOERROR
        assert [rd.to_text() for rrset in r.answer for rd in rrset] == ["100.68.181.31"]


# --------------------------------------------------------------------------- wire == zone


def expected_sections(zone: Zone, name: str, rtype: str) -> tuple[Any, ...]:
    """The zone's Answer in comparable form: records grouped into RRsets by (name, type) in order,
    each RRset's TTL the smallest of its records; names compared case-insensitively."""
    a = zone.resolve(name, rtype)

    def group(records: tuple[DnsRecord, ...]) -> list[tuple[str, str, int, list[str]]]:
        sets: dict[tuple[str, str], tuple[int, list[str]]] = {}
        for r in records:
            ttl = zone.ttl if r.ttl is None else r.ttl
            rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(r.rtype), r.data,
                                     origin=dns.name.root, relativize=False).to_text().lower()
            old_ttl, rds = sets.get((r.name.lower(), r.rtype), (ttl, []))
            if rd not in rds:
                rds.append(rd)
            sets[(r.name.lower(), r.rtype)] = (min(ttl, old_ttl), rds)
        return [(n + ".", t, ttl, rds) for (n, t), (ttl, rds) in sets.items()]

    return a.rcode, a.authoritative, group(a.records), group(a.authority), group(a.additional)


def wire_sections(r: dns.message.Message) -> tuple[Any, ...]:
    def group(rrsets: list[Any]) -> list[tuple[str, str, int, list[str]]]:
        return [(rrset.name.to_text().lower(), dns.rdatatype.to_text(rrset.rdtype), rrset.ttl,
                 [rd.to_text().lower() for rd in rrset]) for rrset in rrsets]

    return (dns.rcode.to_text(r.rcode()), bool(r.flags & dns.flags.AA), group(r.answer), group(r.authority),
            group(r.additional))


QUESTIONS = [
    ("mynginx.default.svc.cluster.local", "A"),
    ("MyNginx.Default.svc.CLUSTER.local.", "A"),
    ("mynginx.default.svc.cluster.local", "AAAA"),
    ("mynginx.default.svc.cluster.local", "SRV"),
    ("mynginx.default.svc.cluster.local", "TXT"),
    ("mynginx.default.svc.cluster.local", "MX"),
    ("mynginx.default.svc.cluster.local", "CNAME"),
    ("mynginx.default.svc.cluster.local", "ANY"),
    ("dual.web.svc.cluster.local", "A"),
    ("dual.web.svc.cluster.local", "AAAA"),
    ("_https._tcp.dual.web.svc.cluster.local", "SRV"),
    ("ext.web.svc.cluster.local", "CNAME"),
    ("ext.web.svc.cluster.local", "A"),
    ("ext.web.svc.cluster.local", "TXT"),
    ("alias.web.svc.cluster.local", "A"),
    ("small.web.svc.cluster.local", "A"),
    ("small.web.svc.cluster.local", "SRV"),
    ("_http._tcp.small.web.svc.cluster.local", "SRV"),
    ("two.small.web.svc.cluster.local", "A"),
    ("_nope._tcp.small.web.svc.cluster.local", "SRV"),
    ("big.web.svc.cluster.local", "A"),
    ("nope.default.svc.cluster.local", "A"),
    ("nope.nowhere.svc.cluster.local", "AAAA"),
    ("default.svc.cluster.local", "A"),
    ("foo.cluster.local", "A"),
    ("cluster.local", "SOA"),
    ("cluster.local", "NS"),
    ("dns-version.cluster.local", "TXT"),
    ("31.181.68.100.in-addr.arpa", "PTR"),
    ("2.2.96.100.in-addr.arpa", "PTR"),
    ("1.1.1.10.in-addr.arpa", "PTR"),
    (dns.reversename.from_address("fd00::10").to_text(), "PTR"),
    (dns.reversename.from_address("10.2.0.7").to_text(), "PTR"),
    ("4.3.2.1.in-addr.arpa", "PTR"),
    ("example.com", "A"),
    ("kubernetes.default.svc.cluster.local.example.com", "A"),
]


@pytest.mark.parametrize(("name", "rtype"), QUESTIONS, ids=[f"{n}/{t}" for n, t in QUESTIONS])
def test_wire_is_the_zone_answer(server: ServerThread, engine: kp.Engine, name: str, rtype: str) -> None:
    zone = engine.dns_zone()
    want = expected_sections(zone, name, rtype)
    q = dns.message.make_query(name, rtype, use_edns=0, payload=4096)
    again = dns.message.make_query(name, rtype, use_edns=0, payload=4096)  # the same bytes but the id: cached
    for r in (udp(server, q), udp(server, again), tcp(server, q)):
        assert not r.flags & dns.flags.TC
        assert wire_sections(r) == want
        assert r.flags & dns.flags.QR and not r.flags & dns.flags.RA
        assert r.question[0].name.to_text() == q.question[0].name.to_text()  # spelling kept


def test_response_cache() -> None:
    engines = [new_engine(), new_engine()]
    engines[1].apply([service("default", "mynginx", "100.64.7.7", [port(80)])])
    current = [engines[0].dns_zone()]
    with serve_in_thread(lambda: current[0]) as s:
        answers = []
        for qid in (1, 2, 3):
            q = dns.message.make_query("mynginx.default.svc.cluster.local", "A", id=qid)
            r = udp(s, q)
            answers.append(r.to_wire()[2:])
            assert r.id == qid and r.answer[0][0].to_text() == "100.68.181.31"
        assert answers[0] == answers[1] == answers[2]
        current[0] = engines[1].dns_zone()  # another Zone object: the cache starts over
        assert udp(s, dns.message.make_query("mynginx.default.svc.cluster.local", "A", id=1)).answer[0][0].to_text() \
            == "100.64.7.7"
    with serve_in_thread(lambda: engines[0].dns_zone(), cache_size=0) as s:
        for name, rtype in QUESTIONS[:8]:
            q = dns.message.make_query(name, rtype, use_edns=0, payload=4096)
            assert wire_sections(udp(s, q)) == expected_sections(engines[0].dns_zone(), name, rtype)


def test_handle_is_the_same_function(engine: kp.Engine) -> None:
    zone = engine.dns_zone()
    q = dns.message.make_query("dual.web.svc.cluster.local", "AAAA")
    out = handle(q.to_wire(), zone, tcp=False)
    assert out is not None
    r = dns.message.from_wire(out)
    assert r.id == q.id and wire_sections(r) == expected_sections(zone, "dual.web.svc.cluster.local", "AAAA")
    assert handle(b"\x00" * 11, zone, tcp=False) is None


# --------------------------------------------------------------------------- literal expectations


def test_dig_short(server: ServerThread) -> None:
    assert dig(server, "mynginx.default.svc.cluster.local", "+short").split() == ["100.68.181.31"]
    assert dig(server, "dual.web.svc.cluster.local", "AAAA", "+short").split() == ["fd00::10"]
    assert dig(server, "dual.web.svc.cluster.local", "A", "+short").split() == ["10.96.0.10"]
    assert dig(server, "ext.web.svc.cluster.local", "CNAME", "+short").split() == ["example.org."]
    assert sorted(dig(server, "small.web.svc.cluster.local", "+short").split()) == ["10.1.1.1", "10.1.1.2"]


def test_flags_and_case(server: ServerThread) -> None:
    out = dig(server, "MyNginx.Default.svc.CLUSTER.local")
    assert "status: NOERROR" in out
    flags = out.split(";; flags:")[1].split(";")[0].split()
    assert "aa" in flags and "qr" in flags and "ra" not in flags and "rd" in flags
    assert ";MyNginx.Default.svc.CLUSTER.local.\tIN\tA" in out.replace(" ", "\t").replace("\t\t", "\t")
    answer = out.split(";; ANSWER SECTION:")[1].strip().splitlines()[0].split()
    assert answer == ["MyNginx.Default.svc.CLUSTER.local.", "5", "IN", "A", "100.68.181.31"]

    q = dns.message.make_query("MyNginx.Default.svc.CLUSTER.local", "A")
    q.flags &= ~dns.flags.RD
    r = udp(server, q)
    assert r.question[0].name.labels == (b"MyNginx", b"Default", b"svc", b"CLUSTER", b"local", b"")
    assert r.answer[0].name.labels[:5] == (b"MyNginx", b"Default", b"svc", b"CLUSTER", b"local")
    assert r.flags & dns.flags.AA and not r.flags & (dns.flags.RD | dns.flags.RA)


def test_negative_answers(server: ServerThread, engine: kp.Engine) -> None:
    r = udp(server, dns.message.make_query("nope.default.svc.cluster.local", "A"))
    assert r.rcode() == dns.rcode.NXDOMAIN and r.flags & dns.flags.AA and not r.answer
    zone_answer = engine.dns_zone().resolve("nope.default.svc.cluster.local", "A")
    assert [rrset.rdtype for rrset in r.authority] == [dns.rdatatype.from_text(x.rtype) for x in zone_answer.authority]
    if zone_answer.authority:  # CoreDNS puts the zone's SOA there
        assert r.authority[0].rdtype == dns.rdatatype.SOA and r.authority[0].name == dns.name.from_text("cluster.local")
    r = udp(server, dns.message.make_query("mynginx.default.svc.cluster.local", "AAAA"))
    assert r.rcode() == dns.rcode.NOERROR and not r.answer  # NODATA


def test_refused_outside_the_zone(server: ServerThread) -> None:
    for name in ("example.com", "cluster.local.example.com", "."):
        r = udp(server, dns.message.make_query(name, "A"))
        assert r.rcode() == dns.rcode.REFUSED and not r.answer and not r.flags & dns.flags.RA
    assert "status: REFUSED" in dig(server, "example.com")


def test_zone_transfer_refused(server: ServerThread) -> None:
    for rtype in ("AXFR", "IXFR"):
        r = tcp(server, dns.message.make_query("cluster.local", rtype))
        assert r.rcode() == dns.rcode.REFUSED and not r.answer
    assert "Transfer failed" in dig(server, "cluster.local", "AXFR")


# --------------------------------------------------------------------------- truncation and TCP


def test_truncated_over_udp_without_edns(server: ServerThread) -> None:
    q = dns.message.make_query("big.web.svc.cluster.local", "A")
    r = udp(server, q)
    assert r.flags & dns.flags.TC and r.flags & dns.flags.AA
    assert r.question == q.question and not r.answer and not r.authority and not r.additional
    assert r.edns < 0
    out = dig(server, "big.web.svc.cluster.local", "+noedns", "+notcp", "+ignore")
    assert " tc" in out.split(";; flags:")[1].split(";")[0] and "ANSWER: 0" in out


def test_tcp_fallback_gets_everything(server: ServerThread) -> None:
    out = dig(server, "big.web.svc.cluster.local", "+noedns")  # dig retries over TCP on TC
    assert "Truncated, retrying in TCP mode" in out
    assert f"ANSWER: {BIG}," in out and "(TCP)" in out
    assert len(dig(server, "big.web.svc.cluster.local", "+short").split()) == BIG  # EDNS 1232: fits over UDP
    r, used_tcp = dns.query.udp_with_fallback(dns.message.make_query("big.web.svc.cluster.local", "A"),
                                              "127.0.0.1", port=server.port, timeout=3)
    assert used_tcp and not r.flags & dns.flags.TC and sum(len(x) for x in r.answer) == BIG
    assert sum(len(x) for x in tcp(server, dns.message.make_query("big.web.svc.cluster.local", "A")).answer) == BIG


def test_edns_payload_decides_the_udp_limit(server: ServerThread) -> None:
    r = udp(server, dns.message.make_query("big.web.svc.cluster.local", "A", use_edns=0, payload=4096))
    assert not r.flags & dns.flags.TC and sum(len(x) for x in r.answer) == BIG
    for small in (512, 100):  # below 512 counts as 512
        r = udp(server, dns.message.make_query("big.web.svc.cluster.local", "A", use_edns=0, payload=small))
        assert r.flags & dns.flags.TC and not r.answer
        assert r.edns == 0 and r.payload == dnsserver.EDNS_PAYLOAD  # OPT kept in the truncated response
    r = udp(server, dns.message.make_query("mynginx.default.svc.cluster.local", "A", use_edns=0, payload=100))
    assert not r.flags & dns.flags.TC and r.answer


def test_tcp_several_queries_per_connection(server: ServerThread) -> None:
    names = ["mynginx.default.svc.cluster.local", "dual.web.svc.cluster.local", "nope.default.svc.cluster.local"]
    queries = [dns.message.make_query(n, "A") for n in names]
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as sock:
        sock.sendall(b"".join(q.to_wire(prepend_length=True) for q in queries))  # pipelined
        responses = [dns.message.from_wire(read_framed(sock)) for _ in queries]
        q = dns.message.make_query("big.web.svc.cluster.local", "A")  # and one more after a pause
        sock.sendall(q.to_wire(prepend_length=True))
        big = dns.message.from_wire(read_framed(sock))
    assert [r.id for r in responses] == [q.id for q in queries]
    assert [r.rcode() for r in responses] == [dns.rcode.NOERROR, dns.rcode.NOERROR, dns.rcode.NXDOMAIN]
    assert sum(len(x) for x in big.answer) == BIG


# --------------------------------------------------------------------------- EDNS


def test_edns_opt_echoed(server: ServerThread) -> None:
    r = udp(server, dns.message.make_query("mynginx.default.svc.cluster.local", "A", use_edns=0, payload=4096))
    assert r.edns == 0 and r.payload == dnsserver.EDNS_PAYLOAD and r.rcode() == dns.rcode.NOERROR
    assert udp(server, dns.message.make_query("mynginx.default.svc.cluster.local", "A")).edns < 0
    out = dig(server, "mynginx.default.svc.cluster.local")  # dig sends a COOKIE option: ignored, still answered
    assert "EDNS: version: 0" in out and f"udp: {dnsserver.EDNS_PAYLOAD}" in out and "100.68.181.31" in out


def test_edns_version_1_is_badvers(server: ServerThread) -> None:
    q = dns.message.make_query("mynginx.default.svc.cluster.local", "A", use_edns=1)
    for r in (udp(server, q), tcp(server, q)):
        assert r.rcode() == dns.rcode.BADVERS and r.edns == 0 and not r.answer
    assert "status: BADVERS" in dig(server, "mynginx.default.svc.cluster.local", "+edns=1", "+noednsnegotiation")


# --------------------------------------------------------------------------- malformed input


def header(qid: int, flags: int, qd: int = 0, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return b"".join(x.to_bytes(2, "big") for x in (qid, flags, qd, an, ns, ar))


def test_random_bytes(server: ServerThread) -> None:
    rng = random.Random(20240611)
    sizes = [0, 1, 5, 11, 12, 13, 17, 30, 64, 100, 300, 511, 512, 513, 1500, 4000]
    sizes += [rng.randrange(0, 600) for _ in range(150)]
    answered = dropped = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        for size in sizes:
            data = bytes(rng.getrandbits(8) for _ in range(size))
            sock.sendto(data, ("127.0.0.1", server.port))
            if size < 12 or data[2] & 0x80:  # short or QR=1: nothing comes back
                dropped += 1
                continue
            r = sock.recv(65535)
            answered += 1
            assert r[:2] == data[:2]  # the id, echoed
            assert r[2] & 0x80  # QR
            assert r[3] & 0x0F in (dns.rcode.FORMERR, dns.rcode.NOTIMP, dns.rcode.REFUSED, dns.rcode.NOERROR,
                                   dns.rcode.NXDOMAIN)
        # nothing was sent for the dropped ones: the next datagram is the answer to this query
        q = dns.message.make_query("mynginx.default.svc.cluster.local", "A")
        sock.sendto(q.to_wire(), ("127.0.0.1", server.port))
        assert dns.message.from_wire(sock.recv(65535)).id == q.id
    assert answered > 50 and dropped > 50
    assert_alive(server)


def test_short_and_response_messages_are_dropped(server: ServerThread) -> None:
    assert raw_udp(server, b"\x12\x34\x01", wait=0.3) is None
    assert raw_udp(server, header(7, 0x0100)[:11], wait=0.3) is None
    q = dns.message.make_query("mynginx.default.svc.cluster.local", "A")
    resp = dns.message.make_response(q).to_wire()  # QR=1
    assert raw_udp(server, resp, wait=0.3) is None
    assert_alive(server)


def test_formerr_echoes_the_id(server: ServerThread) -> None:
    q = dns.message.make_query("mynginx.default.svc.cluster.local", "A")
    wire = q.to_wire()
    five = wire[:4] + (5).to_bytes(2, "big") + wire[6:]  # claims 5 questions, has 1
    two = header(q.id, 0x0100, qd=2) + wire[12:] + wire[12:]  # two questions
    none = header(q.id, 0x0100)  # a bare header, no question
    for data in (five, two, none, wire + b"junk"):
        for r in (dns.message.from_wire(raw_udp(server, data) or b""), raw_tcp(server, data)):
            assert r.id == q.id and r.rcode() == dns.rcode.FORMERR and r.flags & dns.flags.QR
            assert not r.question and not r.answer
    assert_alive(server)


@pytest.mark.parametrize("opcode", [dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.IQUERY, dns.opcode.STATUS])
def test_other_opcodes_notimp(server: ServerThread, opcode: dns.opcode.Opcode) -> None:
    if opcode == dns.opcode.UPDATE:
        q: dns.message.Message = dns.update.UpdateMessage("cluster.local")
        q.add("x.cluster.local", 30, "A", "10.0.0.1")  # type: ignore[attr-defined]
    else:
        q = dns.message.make_query("cluster.local", "SOA")
        q.set_opcode(opcode)
    data = q.to_wire()
    for wire in (raw_udp(server, data), raw_tcp(server, data).to_wire()):
        assert wire is not None
        r = dns.message.from_wire(wire)
        assert r.id == q.id and r.rcode() == dns.rcode.NOTIMP and r.opcode() == opcode
    assert_alive(server)


def test_class_other_than_in_refused(server: ServerThread) -> None:
    for rdclass in ("CH", "HS", "ANY"):
        q = dns.message.make_query("version.bind", "TXT", rdclass=rdclass)
        for r in (udp(server, q), tcp(server, q)):
            assert r.rcode() == dns.rcode.REFUSED and not r.answer and r.question == q.question
    assert "status: REFUSED" in dig(server, "CH", "mynginx.default.svc.cluster.local")
    assert_alive(server)


def test_tcp_length_prefix_longer_than_data_times_out(server: ServerThread) -> None:
    q = dns.message.make_query("mynginx.default.svc.cluster.local", "A").to_wire()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        start = time.monotonic()
        sock.sendall((len(q) + 40).to_bytes(2, "big") + q)
        assert sock.recv(100) == b""  # closed by the server, nothing answered
        elapsed = time.monotonic() - start
    assert TCP_TIMEOUT * 0.8 <= elapsed < TCP_TIMEOUT + 3
    assert_alive(server)


def test_tcp_idle_connection_closed(server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        start = time.monotonic()
        assert sock.recv(100) == b""
        assert time.monotonic() - start < TCP_TIMEOUT + 3


def test_tcp_garbage(server: ServerThread) -> None:
    rng = random.Random(7)
    junk = bytes(rng.getrandbits(8) for _ in range(40))
    junk = junk[:2] + bytes([junk[2] & 0x07, junk[3]]) + junk[4:]  # a query (QR=0, opcode QUERY)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(len(junk).to_bytes(2, "big") + junk)  # framed garbage: FORMERR, connection stays
        r = dns.message.from_wire(read_framed(sock))
        assert r.id == int.from_bytes(junk[:2], "big") and r.rcode() == dns.rcode.FORMERR
        sock.sendall(b"\x00\x05hello")  # shorter than a header: dropped, connection stays
        q = dns.message.make_query("mynginx.default.svc.cluster.local", "A")
        sock.sendall(q.to_wire(prepend_length=True))
        assert dns.message.from_wire(read_framed(sock)).id == q.id
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # "GE" = a 18245-byte length prefix
        assert sock.recv(100) == b""  # times out, closed
    assert_alive(server)


def test_tcp_connection_limit(engine: kp.Engine) -> None:
    with serve_in_thread(lambda: engine.dns_zone(), max_tcp_connections=2, tcp_timeout=5) as s:
        held = [socket.create_connection(("127.0.0.1", s.port), timeout=3) for _ in range(2)]
        try:
            time.sleep(0.1)
            with socket.create_connection(("127.0.0.1", s.port), timeout=3) as extra:
                assert extra.recv(100) == b""  # closed at once
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.2)
        assert_alive(s)


class ZoneBroke(Exception):
    pass


def test_zone_failure_is_servfail_and_logged(engine: kp.Engine, caplog: pytest.LogCaptureFixture) -> None:
    broken = {"on": True}

    class Flaky:
        zone = "cluster.local"
        ttl = 5

        def resolve(self, name: str, rtype: str) -> Any:
            if broken["on"]:
                raise ZoneBroke("the zone is broken")
            return engine.dns_zone().resolve(name, rtype)

    bad_data = Zone("cluster.local")  # a record the wire cannot carry: also SERVFAIL
    bad_data.add(DnsRecord("x.cluster.local", "A", "not-an-address"))
    with caplog.at_level(logging.DEBUG, logger="kproxy.dns"), \
            serve_in_thread(lambda: Flaky(), tcp_timeout=TCP_TIMEOUT) as s:  # type: ignore[arg-type, return-value]
        q = dns.message.make_query("mynginx.default.svc.cluster.local", "A")
        for _ in range(3):
            assert udp(s, q).rcode() == dns.rcode.SERVFAIL
            assert tcp(s, q).rcode() == dns.rcode.SERVFAIL
        broken["on"] = False
        assert_alive(s)
    lines = [r for r in caplog.records if r.name == "kproxy.dns" and "ZoneBroke" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR  # throttled: one line for six failures
    assert "\n" not in lines[0].getMessage()

    out = handle(dns.message.make_query("x.cluster.local", "A").to_wire(), bad_data, tcp=False)
    assert out is not None and dns.message.from_wire(out).rcode() == dns.rcode.SERVFAIL


def test_source_failure_is_servfail() -> None:
    def source() -> Zone:
        raise RuntimeError("no cluster")

    with serve_in_thread(source) as s:
        assert udp(s, dns.message.make_query("a.cluster.local", "A")).rcode() == dns.rcode.SERVFAIL
        # malformed messages never reach the source
        assert raw_udp(s, b"\x00" * 5, wait=0.2) is None


# --------------------------------------------------------------------------- API, IPv6, changes


def test_thread_handle_lifecycle(engine: kp.Engine) -> None:
    s = serve_in_thread(lambda: engine.dns_zone())
    try:
        port_ = s.port
        assert s.host == "127.0.0.1" and port_ > 0
        assert_alive(s)
    finally:
        s.stop()
    s.stop()  # idempotent
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert sock.connect_ex(("127.0.0.1", port_)) != 0
    with serve_in_thread(lambda: engine.dns_zone()) as a, pytest.raises(OSError):
        serve_in_thread(lambda: engine.dns_zone(), port=a.port)  # taken: the bind error reaches the caller


def test_ipv6_listener(engine: kp.Engine) -> None:
    try:
        s = serve_in_thread(lambda: engine.dns_zone(), host="::1")
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    with s:
        r = dns.query.udp(dns.message.make_query("mynginx.default.svc.cluster.local", "A"), "::1", port=s.port,
                          timeout=3)
        assert r.answer and r.answer[0][0].to_text() == "100.68.181.31"
        r = dns.query.tcp(dns.message.make_query("dual.web.svc.cluster.local", "AAAA"), "::1", port=s.port, timeout=3)
        assert r.answer[0][0].to_text() == "fd00::10"


def test_apply_shows_up_without_restart() -> None:
    engine = new_engine()
    with serve_in_thread(lambda: engine.dns_zone(), tcp_timeout=TCP_TIMEOUT) as s:
        q = dns.message.make_query("fresh.default.svc.cluster.local", "A")
        assert udp(s, q).rcode() == dns.rcode.NXDOMAIN
        engine.apply([service("default", "fresh", "100.64.9.9", [port(80)])])
        r = udp(s, q)
        assert r.rcode() == dns.rcode.NOERROR and [rd.to_text() for rd in r.answer[0]] == ["100.64.9.9"]
        engine.apply([{"type": "DELETED", "object": service("default", "fresh", "100.64.9.9", [port(80)])}])
        assert udp(s, q).rcode() == dns.rcode.NXDOMAIN


def test_stub_resolver(server: ServerThread) -> None:
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = ["127.0.0.1"]
    res.port = server.port
    res.lifetime = 5
    assert [rd.to_text() for rd in res.resolve("mynginx.default.svc.cluster.local", "A")] == ["100.68.181.31"]
    srv = res.resolve("_http._tcp.small.web.svc.cluster.local", "SRV")
    targets = sorted((rd.port, rd.target.to_text()) for rd in srv)
    zone_srv = new_engine().dns_zone().resolve("_http._tcp.small.web.svc.cluster.local", "SRV").records
    assert targets == sorted((int(r.data.split()[2]), r.data.split()[3]) for r in zone_srv)
    assert targets and all(p == 8080 for p, _ in targets)
    with pytest.raises(dns.resolver.NXDOMAIN):
        res.resolve("nope.default.svc.cluster.local", "A")
    assert sorted(rd.to_text() for rd in res.resolve("big.web.svc.cluster.local", "A")) == sorted(
        f"10.2.0.{i + 1}" for i in range(BIG))


# --------------------------------------------------------------------------- command line


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    dnsserver.add_serve_arguments(p)
    return p.parse_args(list(argv))


def test_serve_arguments() -> None:
    a = parse()
    assert (a.listen, a.domain, a.ttl, a.watch, a.watch_interval, a.verbose) == (
        ("127.0.0.1", 5353), "cluster.local", 5, False, 1.0, False)
    assert (a.pods, a.endpoint_pod_names, a.cache, a.tcp_timeout) == ("disabled", False, dnsserver.DEFAULT_CACHE,
                                                                      dnsserver.DEFAULT_TCP_TIMEOUT)
    a = parse("--listen", "[::1]:53", "--domain", "Example.Local.", "--ttl", "3600", "--watch", "-v", "--cache", "0",
              "--pods", "insecure", "--tcp-timeout", "0.5")
    assert (a.listen, a.domain, a.ttl, a.watch, a.verbose) == (("::1", 53), "example.local", 3600, True, True)
    assert (a.cache, a.pods, a.tcp_timeout) == (0, "insecure", 0.5)
    for bad in (["--ttl", "3601"], ["--ttl", "-1"], ["--listen", "127.0.0.1"], ["--listen", "1.2.3.4:70000"],
                ["--watch-interval", "0"], ["--cache", "-1"], ["--domain", "a..b"], ["--pods", "verified"]):
        with pytest.raises(SystemExit):
            parse(*bad)
    p = argparse.ArgumentParser()
    dnsserver.add_serve_arguments(p)
    text = " ".join(p.format_help().split())
    assert "no recursion" in text and "REFUSED" in text and "in-addr.arpa" in text


class Served:
    """A ``dns serve`` subprocess; stderr goes to a file so that it can be read while it runs.
    It runs in the log's directory (a temporary one, outside the repository)."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        if cmd[0] == str(cli_run.SCRIPT):
            cli_run.script()  # not installed: fail with the reason, not FileNotFoundError
        self.log = log
        self.fh = log.open("w")
        env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.fh, env=env, cwd=log.parent)
        self.port = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = log.read_text()
            for line in text.splitlines():
                if line.startswith("kproxy dns: serving ") and " on udp+tcp " in line:
                    self.port = int(line.rsplit(":", 1)[1])
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"the server did not start: {log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.fh.close()
        return self.proc.returncode


def query(port: int, name: str, rtype: str = "A") -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rtype), "127.0.0.1", port=port, timeout=3)


def poll(fn: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.1)
    return False


def watch_scenario(cmd: list[str], tmp_path: Path) -> None:
    manifests = tmp_path / "cluster"
    manifests.mkdir()
    (manifests / "article.yaml").write_text(ARTICLE.read_text())
    served = Served([*cmd, "-f", str(manifests), "--listen", "127.0.0.1:0", "--watch", "--watch-interval", "0.2",
                     "--ttl", "7"], tmp_path / "stderr.txt")
    try:
        r = query(served.port, "mynginx.default.svc.cluster.local")
        assert r.answer[0].ttl == 7 and r.answer[0][0].to_text() == "100.68.181.31"
        assert query(served.port, "late.default.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
        (manifests / "late.yaml").write_text(yaml.safe_dump(service("default", "late", "100.64.1.2", [port(80)])))
        assert poll(lambda: query(served.port, "late.default.svc.cluster.local").rcode() == dns.rcode.NOERROR)
        (manifests / "late.yaml").write_text("kind: Service\nmetadata: {name: [broken\n")
        assert poll(lambda: "reload failed" in served.log.read_text())
        assert query(served.port, "late.default.svc.cluster.local").rcode() == dns.rcode.NOERROR  # previous zone
        (manifests / "late.yaml").unlink()
        assert poll(lambda: query(served.port, "late.default.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN)
    finally:
        code = served.stop()
    log = served.log.read_text()
    assert code == 0, log
    failures = [line for line in log.splitlines() if "reload failed" in line]
    assert len(failures) == 1, log  # one line per problem


def test_cli_dns_serve_watch(tmp_path: Path) -> None:
    watch_scenario(SERVE, tmp_path)
    help_text = cli_run.kproxy("dns", "serve", "--help", timeout=60).stdout
    assert "REFUSED" in help_text and "recursion" in help_text


def test_serve_sigint_exits_0(tmp_path: Path) -> None:
    served = Served([*SERVE, "-f", str(ARTICLE), "--listen", "127.0.0.1:0"],
                    tmp_path / "stderr.txt")
    try:
        assert query(served.port, "mynginx.default.svc.cluster.local").answer
        served.proc.send_signal(signal.SIGINT)
        assert served.proc.wait(10) == 0
    finally:
        served.stop()


def test_serve_bad_input_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Service\nmetadata: {name: [broken\n")
    r = cli_run.kproxy("dns", "serve", "-f", str(bad), "--listen", "127.0.0.1:0", timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("kproxy: error: ") and len(r.stderr.splitlines()) == 1


# --------------------------------------------------------------------------- the load script


def test_load_script_small(tmp_path: Path) -> None:
    # its own session, so that a timeout kills the script and the server it started; run from
    # outside the repository, where the script's `python -m kproxy_core` imports the installed package
    proc = subprocess.Popen([sys.executable, str(LOAD_SCRIPT), "--queries", "300", "--concurrency", "8", "--services",
                             "30", "--headless", "5", "--endpoints", "4", "--max-seconds", "60", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            cwd=tmp_path)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stdout + stderr
    out = json.loads(stdout)
    assert out["queries"] == 300 and out["answered"] == 300
    assert out["qps"] > 0 and out["timeouts"] == 0 and out["errors"] == 0
    lat = out["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] < 5000
    assert out["rcodes"]["NOERROR"] > 0 and out["rcodes"]["NXDOMAIN"] > 0
    assert out["server"]["exit_code"] == 0

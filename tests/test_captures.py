"""kproxy_core.captures: pcap files (written here with dpkt, the library of the format) read
in C and by the twin, every skipped packet counted with its reason, and classified as the
engine's single lookups would, packet by packet."""

from __future__ import annotations

import gzip
import io
import socket
import struct
from pathlib import Path
from typing import Any

import cli_run
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kproxy_core as kp
from kproxy_core import _engine_py, captures, flows

dpkt = pytest.importorskip("dpkt")
pa = pytest.importorskip("pyarrow")

try:
    from kproxy_core import _engine as _compiled
except ImportError:  # pragma: no cover - only without a build
    _compiled = None  # type: ignore[assignment]

SCANS = {"python": _engine_py.scan_pcap, **({"compiled": _compiled.scan_pcap} if _compiled is not None else {})}
SCANS_NG = {"python": _engine_py.scan_pcapng,
            **({"compiled": _compiled.scan_pcapng} if _compiled is not None else {})}
MAC = b"\x02\x00\x00\x00\x00\x01"


def ip4(src: str, dst: str, l4: Any, proto: int, mf: int = 0, offset: int = 0) -> Any:
    return dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, mf=mf, offset=offset, data=l4)


def ip6(src: str, dst: str, l4: Any, nxt: int, ext: bytes = b"") -> bytes:
    pkt = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst),
                       nxt=nxt, hlim=64, data=b"")
    body = ext + bytes(l4)
    pkt.plen = len(body)
    return bytes(pkt.pack_hdr()) + body


def ether(payload: bytes, etype: int, tags: tuple[int, ...] = ()) -> bytes:
    out = MAC + MAC
    for tpid in tags:
        out += struct.pack(">HH", tpid, 7)
    return out + struct.pack(">H", etype) + payload


def tcp(sport: int, dport: int) -> Any:
    return dpkt.tcp.TCP(sport=sport, dport=dport, flags=dpkt.tcp.TH_SYN)


def udp(sport: int, dport: int) -> Any:
    return dpkt.udp.UDP(sport=sport, dport=dport)


def sctp(sport: int, dport: int) -> bytes:
    return struct.pack(">HHII", sport, dport, 0, 0)


# every kind of frame, with what a reader must make of it: (family, src, dst, sport, dport, proto) or a skip
V4 = bytes(ip4("10.0.0.9", "172.30.0.10", tcp(40000, 80), 6))
FRAMES: list[tuple[str, bytes, Any]] = [
    ("tcp4", ether(V4, 0x0800), (4, "10.0.0.9", "172.30.0.10", 40000, 80, 6)),
    ("udp4 vlan", ether(bytes(ip4("10.0.0.9", "172.30.0.11", udp(5000, 53), 17)), 0x0800, (0x8100,)),
     (4, "10.0.0.9", "172.30.0.11", 5000, 53, 17)),
    ("sctp4 qinq", ether(bytes(ip4("10.0.0.9", "172.30.0.12", sctp(7, 3868), 132)), 0x0800, (0x88A8, 0x8100)),
     (4, "10.0.0.9", "172.30.0.12", 7, 3868, 132)),
    ("tcp6", ether(ip6("fd00:10::9", "fd00:30::10", tcp(41000, 443), 6), 0x86DD),
     (6, "fd00:10::9", "fd00:30::10", 41000, 443, 6)),
    ("udp6 hbh+dstopts", ether(ip6("fd00:10::9", "fd00:30::10", udp(6000, 53), 0,
                                   bytes([60, 0, 1, 4, 0, 0, 0, 0]) + bytes([17, 0, 1, 4, 0, 0, 0, 0])), 0x86DD),
     (6, "fd00:10::9", "fd00:30::10", 6000, 53, 17)),
    ("udp6 atomic fragment", ether(ip6("fd00:10::9", "fd00:30::10", udp(6001, 53), 44,
                                       bytes([17, 0, 0, 0, 0, 0, 0, 1])), 0x86DD),
     (6, "fd00:10::9", "fd00:30::10", 6001, 53, 17)),
    ("arp", ether(bytes(28), 0x0806), "not IP"),
    ("icmp", ether(bytes(ip4("10.0.0.9", "172.30.0.10", dpkt.icmp.ICMP(type=8), 1)), 0x0800),
     "not TCP, UDP or SCTP"),
    ("first fragment", ether(bytes(ip4("10.0.0.9", "172.30.0.10", tcp(1, 2), 6, mf=1)), 0x0800), "IP fragment"),
    ("later fragment", ether(bytes(ip4("10.0.0.9", "172.30.0.10", b"xxxxxxxx", 6, offset=185)), 0x0800), "IP fragment"),
    ("v6 fragment", ether(ip6("fd00:10::9", "fd00:30::10", b"x" * 8, 44, bytes([17, 0, 0, 8, 0, 0, 0, 1])), 0x86DD),
     "IP fragment"),
    ("truncated", ether(V4, 0x0800)[:30], "truncated"),
    ("no ports", ether(V4[:20] + b"\x9c", 0x0800), "truncated"),
]


def pcap(frames: list[bytes], linktype: int = 1, nano: bool = False, big: bool = False) -> bytes:
    """A classic pcap file: dpkt's writer (little-endian), or the same fields big-endian."""
    if not big:
        buf = io.BytesIO()
        w = dpkt.pcap.Writer(buf, linktype=linktype, nano=nano)
        for i, f in enumerate(frames):
            w.writepkt(f, ts=1_700_000_000 + i + 0.25)
        return buf.getvalue()
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(">IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for i, f in enumerate(frames):
        out += struct.pack(">IIII", 1_700_000_000 + i, 250_000_000 if nano else 250_000, len(f), len(f)) + f
    return out


def decode(chunk: Any) -> list[tuple[Any, ...]]:
    rows = []
    for r in chunk.to_pylist():
        a, b = socket.inet_ntop(socket.AF_INET6, r["src"]), socket.inet_ntop(socket.AF_INET6, r["dst"])
        fam = 4 if a.startswith("::ffff:") and "." in a else 6
        if fam == 4:
            a, b = a.removeprefix("::ffff:"), b.removeprefix("::ffff:")
        rows.append((fam, a, b, r["sport"], r["dport"], r["proto"]))
    return rows


@pytest.mark.parametrize("impl", list(SCANS))
@pytest.mark.parametrize(("nano", "big"), [(False, False), (True, False), (False, True), (True, True)])
def test_every_frame_is_read_or_counted(tmp_path: Path, impl: str, nano: bool, big: bool) -> None:
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap([f for _, f, _ in FRAMES], nano=nano, big=big))
    stats = captures.CaptureStats()
    chunks = list(captures.read_pcap(path, stats=stats, impl=impl))
    got = [row for c in chunks for row in decode(c)]
    assert got == [w for _, _, w in FRAMES if isinstance(w, tuple)]
    want_skips: dict[str, int] = {}
    for _, _, w in FRAMES:
        if isinstance(w, str):
            want_skips[w] = want_skips.get(w, 0) + 1
    assert stats.skipped == want_skips and stats.records == len(FRAMES)
    times = [t for c in chunks for t in c.column("time").to_pylist()]
    assert times[0] == pytest.approx(1_700_000_000.25)


@pytest.mark.parametrize("impl", list(SCANS))
@pytest.mark.parametrize(("linktype", "wrap"), [
    (113, lambda p, et: struct.pack(">HHH8sH", 0, 1, 6, MAC + b"\0\0", et) + p),          # Linux cooked
    (276, lambda p, et: struct.pack(">HHIHBB8s", et, 0, 2, 1, 0, 6, MAC + b"\0\0") + p),  # Linux cooked v2
    (101, lambda p, et: p),                                                                 # raw IP
    (228, lambda p, et: p),
])
def test_link_types(tmp_path: Path, impl: str, linktype: int, wrap: Any) -> None:
    frames = [wrap(V4, 0x0800), wrap(ip6("fd00:10::9", "fd00:30::10", tcp(1, 2), 6), 0x86DD)]
    if linktype in (113, 276):
        frames.append(wrap(bytes(28), 0x0806))
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap(frames, linktype=linktype))
    stats = captures.CaptureStats()
    got = [row for c in captures.read_pcap(path, stats=stats, impl=impl) for row in decode(c)]
    assert got == [(4, "10.0.0.9", "172.30.0.10", 40000, 80, 6), (6, "fd00:10::9", "fd00:30::10", 1, 2, 6)]
    assert stats.skipped == ({"not IP": 1} if linktype in (113, 276) else {})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=20), st.sampled_from([1, 101, 113, 276]))
def test_the_twins_agree_on_any_bytes(frames: list[bytes], linktype: int) -> None:
    data = pcap(frames, linktype=linktype)
    results = [scan(data, 24, False, False, linktype, 64) for scan in SCANS.values()]
    for r in results[1:]:
        assert r[0] == results[0][0] and r[1] == results[0][1]
        for a, b in zip(r[2:], results[0][2:], strict=True):
            assert np.array_equal(a, b)


def test_chunks_and_gzip_change_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = [f for _, f, _ in FRAMES] * 40
    whole = tmp_path / "c.pcap"
    whole.write_bytes(pcap(frames))
    stats = captures.CaptureStats()
    want = [row for c in captures.read_pcap(whole, stats=stats) for row in decode(c)]
    # the first packets skipped for each reason, numbered in the whole capture
    n = len(FRAMES)
    for reason in ("IP fragment", "truncated"):
        where = [k * n + i for k in range(40) for i, (_, _, w) in enumerate(FRAMES, 1) if w == reason]
        assert stats.examples[reason] == where[:captures.EXAMPLES]
    packed = tmp_path / "c.pcap.gz"
    packed.write_bytes(gzip.compress(whole.read_bytes()))
    monkeypatch.setattr(captures, "CHUNK_BYTES", 333)  # records cut across reads
    small = captures.CaptureStats()
    chunks = list(captures.read_pcap(packed, chunk_packets=7, stats=small))
    assert max(c.num_rows for c in chunks) <= 7 and [row for c in chunks for row in decode(c)] == want
    assert small == stats  # the same counts and packet numbers, however the file is cut


@pytest.mark.parametrize(("content", "message"), [
    (b"\x0a\x0d\x0d\x0a" + bytes(40), "the section at byte 0 has no byte-order magic"),
    (b"hello world, not a capture at all", "not a pcap or pcapng capture (magic 68656c6c)"),
    (pcap([V4], linktype=105), "link type 105 is not read"),
    (pcap([ether(V4, 0x0800)])[:-5], "the last record (at byte 24) is cut off (65 bytes)"),
    (pcap([ether(V4, 0x0800)])[:24] + struct.pack("<IIII", 0, 0, 1 << 20, 1 << 20), "claims 1048576 bytes"),
], ids=["pcapng-no-magic", "text", "linktype", "cut", "huge-record"])
def test_files_that_are_not_read(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pcap"
    path.write_bytes(content)
    with pytest.raises(captures.CaptureError) as e:
        list(captures.read_pcap(path))
    assert message in str(e.value) and str(e.value).startswith(str(path))


def cluster() -> kp.Cluster:
    from k8s import ep, eport, node, port, service, slice_

    return kp.Cluster.from_objects([
        node("n1", "192.168.0.2", pod_cidr="10.0.0.0/24"),
        service("ns", "web", "172.30.0.10", [port(80, "http")]),
        slice_("ns", "web", [ep("10.0.0.5", "n1"), ep("10.0.0.6", "n1"), ep("10.0.0.7", "n1")], [eport(8080, "http")]),
    ])


def test_packets_of_one_connection_keep_their_endpoint(tmp_path: Path, impl: str) -> None:
    """Every packet is looked up with the flow table: the first of a 5-tuple picks, the
    rest follow it, exactly as single lookups in capture order would."""
    rng = np.random.default_rng(2)
    conns = [(f"10.0.0.{20 + i}", 30000 + i) for i in range(40)]
    order = [conns[int(k)] for k in rng.integers(0, len(conns), 400)]
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap([ether(bytes(ip4(s, "172.30.0.10", tcp(p, 80), 6)), 0x0800) for s, p in order]))
    engine = kp.Engine(cluster(), node="n1", cluster_cidr="10.0.0.0/8", seed=9, impl=impl)
    got = []
    for chunk in captures.read_pcap(path, chunk_packets=64):
        now = float(chunk.column("time")[-1].as_py())
        got += flows.classify(chunk, engine, now=now).column("endpoint_ip").to_pylist()
    single = kp.Engine(cluster(), node="n1", cluster_cidr="10.0.0.0/8", seed=9, impl=impl)
    want = [single.lookup(s, "172.30.0.10", 80, "TCP", sport=p, now=0.0).endpoint[0] for s, p in order]
    assert got == want
    first = {}
    for (conn, ip) in zip(order, got, strict=True):
        assert first.setdefault(conn, ip) == ip


def test_kproxy_classify_a_capture(tmp_path: Path) -> None:
    import yaml
    from k8s import ep, eport, node, port, service, slice_

    objs = [node("n1", "192.168.0.2", pod_cidr="10.0.0.0/24"), service("ns", "web", "172.30.0.10", [port(80, "http")]),
            slice_("ns", "web", [ep("10.0.0.5", "n1")], [eport(8080, "http")])]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump_all(objs))
    cap = tmp_path / "c.pcap"
    cap.write_bytes(pcap([f for _, f, _ in FRAMES]))
    out = tmp_path / "out.jsonl"
    r = cli_run.kproxy("classify", "-f", str(tmp_path / "c.yaml"), "--packets", str(cap), "--out", str(out),
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("13 packets in the capture, 6 looked up\n"), r.stdout
    # each reason with the numbers of its packets, in capture order from 1
    for reason in ("IP fragment", "truncated", "not IP", "not TCP, UDP or SCTP"):
        where = [i for i, (_, _, w) in enumerate(FRAMES, 1) if w == reason]
        assert f"  skipped: {reason}: {len(where)} (packet {', '.join(map(str, where))})\n" in r.stdout, r.stdout
    rows = [__import__("json").loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["src"] == "10.0.0.9" and rows[0]["verdict"] == "DNAT" and rows[0]["endpoint_ip"] == "10.0.0.5"
    assert rows[3]["src"] == "fd00:10::9" and rows[3]["verdict"] == "PASS"
    bad = tmp_path / "x.pcap"
    bad.write_bytes(pcapng([(0, ether(V4, 0x0800), 1)], [(1, 6)])[:-6])
    r = cli_run.kproxy("classify", "-f", str(tmp_path / "c.yaml"), "--packets", str(bad), timeout=120)
    assert r.returncode == 2 and r.stderr.startswith(f"kproxy: error: {bad}: the last record"), r.stderr


# --------------------------------------------------------------------------- pcapng


def _block(btype: int, body: bytes, big: bool) -> bytes:
    e = ">" if big else "<"
    body += bytes(-len(body) % 4)
    return struct.pack(f"{e}II", btype, len(body) + 12) + body + struct.pack(f"{e}I", len(body) + 12)


def pcapng(packets: list[tuple[int, bytes, int]], interfaces: list[tuple[int, int]], big: bool = False,
           sections: int = 1) -> bytes:
    """Sections (each with the same interfaces: (link type, if_tsresol)), then the packets
    (interface, frame, timestamp in that interface's units) as Enhanced Packet Blocks, with a
    Name Resolution Block and a Simple Packet Block (interface 0) between."""
    e = ">" if big else "<"
    out = b""
    for _ in range(sections):
        out += _block(0x0A0D0D0A, struct.pack(f"{e}IHHq", 0x1A2B3C4D, 1, 0, -1), big)
        for lt, res in interfaces:
            opts = struct.pack(f"{e}HH", 9, 1) + bytes([res, 0, 0, 0]) + struct.pack(f"{e}HH", 0, 0)
            out += _block(1, struct.pack(f"{e}HHI", lt, 0, 0) + opts, big)
        out += _block(4, struct.pack(f"{e}HH", 0, 0), big)  # name resolution: passed over
        for iface, frame, ts in packets:
            out += _block(6, struct.pack(f"{e}IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame)) + frame,
                          big)
        out += _block(3, struct.pack(f"{e}I", len(V4) + 14) + ether(V4, 0x0800), big)
    return out


@pytest.mark.parametrize("impl", list(SCANS))
@pytest.mark.parametrize("big", [False, True])
def test_pcapng_sections_interfaces_and_blocks(tmp_path: Path, impl: str, big: bool) -> None:
    frames = [(0, ether(V4, 0x0800), 1_700_000_000_250_000),  # microseconds (10**-6)
              (1, V4, 1_700_000_000_250_000_000),  # raw IP, nanoseconds (10**-9)
              (2, ether(V4, 0x0800), 7),  # an interface of a link type not read
              (0, ether(bytes(28), 0x0806), 1)]
    path = tmp_path / "c.pcapng"
    path.write_bytes(pcapng(frames, [(1, 6), (101, 9), (105, 6)], big=big, sections=2))
    stats = captures.CaptureStats()
    chunks = list(captures.read_pcap(path, stats=stats, impl=impl, chunk_packets=3))
    rows = [row for c in chunks for row in decode(c)]
    assert rows == [(4, "10.0.0.9", "172.30.0.10", 40000, 80, 6)] * 6  # 2 EPBs and the SPB, twice
    times = [t for c in chunks for t in c.column("time").to_pylist()]
    assert times == [pytest.approx(1_700_000_000.25), pytest.approx(1_700_000_000.25), 0.0] * 2
    assert stats.skipped == {"link type not read": 2, "not IP": 2} and stats.records == 10


def test_pcapng_written_by_dpkt(tmp_path: Path) -> None:
    buf = io.BytesIO()
    w = dpkt.pcapng.Writer(buf, linktype=1)
    for i, (_, frame, _) in enumerate(FRAMES):
        w.writepkt(frame, ts=1_700_000_000 + i)
    path = tmp_path / "d.pcapng"
    path.write_bytes(buf.getvalue())
    stats = captures.CaptureStats()
    chunks = list(captures.read_pcap(path, stats=stats))
    rows = [row for c in chunks for row in decode(c)]
    assert rows == [w for _, _, w in FRAMES if isinstance(w, tuple)] and stats.records == len(FRAMES)
    # each packet's length on the wire, from its block (what --summary adds up)
    assert [b for c in chunks for b in c.column("bytes").to_pylist()] == [
        len(f) for _, f, w in FRAMES if isinstance(w, tuple)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.binary(max_size=90), st.integers(0, 2**40)), max_size=12),
       st.booleans())
def test_the_pcapng_twins_agree(packets: list[tuple[int, bytes, int]], big: bool) -> None:
    data = pcapng(packets, [(1, 6), (276, 9)], big=big)
    start = len(_block(0x0A0D0D0A, bytes(16), big))
    results = []
    for scan in SCANS_NG.values():
        pos, lts, tks, got = start, [], [], []
        while True:
            r = scan(data, pos, big, lts, tks, 64)
            got.append(r[:12])
            pos = r[0]
            if r[12] == 2:
                e = ">" if big else "<"
                length = struct.unpack(f"{e}I", data[pos + 4:pos + 8])[0]
                lts.append(struct.unpack(f"{e}H", data[pos + 8:pos + 10])[0])
                tks.append(1e-6 if len(lts) == 1 else 1e-9)
                pos += length
            elif r[1] == 0:
                break
        results.append(got)
    for other in results[1:]:
        assert len(other) == len(results[0])
        for a, b in zip(other, results[0], strict=True):
            assert a[:2] == b[:2] and all(np.array_equal(x, y) for x, y in zip(a[2:], b[2:], strict=True))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_any_bytes_after_a_section_header_are_read_or_refused_alike(tail: bytes, big: bool) -> None:
    outcomes = []
    for scan in SCANS_NG.values():
        try:
            r = scan(tail, 0, big, [1, 113], [1e-6, 1e-9], 64)
            outcomes.append(("ok", r[0], r[1], r[12], *(x.tolist() for x in r[2:12])))
        except ValueError as e:
            outcomes.append(("error", str(e)))
    assert all(o == outcomes[0] for o in outcomes)

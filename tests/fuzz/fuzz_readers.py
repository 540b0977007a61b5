"""Fuzz the traffic-file readers: ``kproxy_core.captures.read_pcap`` (pcap and pcapng, from a
stream, on both cores' scanners), ``kproxy_core.flowlogs`` (``read_hubble``, ``read_vpc``,
``read_conntrack``) and ``kproxy_core.traffic.detect`` / ``read_tables`` over a temporary
file (any format, gzip too).

Inputs are raw bytes, or files built from fuzzed parts that each reader gets past its first
checks: pcap and pcapng headers with frames of every link type (Ethernet with VLAN tags,
SLL, SLL2, raw IP; IPv4, IPv6 with extension headers, fragments; TCP, UDP, SCTP, ICMP), and
lines of Hubble JSON, VPC Flow Logs and conntrack text with damaged fields.

Contract: nothing but a KproxyError (CaptureError, InputError) escapes; every record is kept
or counted as skipped (the tables' rows are the records less the skipped ones); the two
cores' capture scanners return the same tables and counts, or the same error.
"""

from __future__ import annotations

import atexit
import gzip
import io
import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Finding, Provider, libfuzzer_main

_S: dict[str, Any] = {}

ADDR4 = (b"\x0a\x60\x00\x0a", b"\x64\x60\x01\x05", b"\x08\x08\x08\x08", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff")
ADDR6 = (bytes(15) + b"\x01", b"\xfd\x00" + bytes(13) + b"\x14", b"\x20\x01\x0d\xb8" + bytes(12))
LINKTYPES = (1, 113, 276, 101, 12, 14, 228, 229, 0, 105, 127, 1, 1)
TEXT_FIELDS = ("10.0.0.1", "fd00::1", "10.0.0.300", "::ffff:1.2.3.4", "-", "", "80", "65535", "65536", "-1",
               "6", "17", "132", "1", "tcp", "udp", "sctp", "icmp", "TCP", "ACCEPT", "REJECT", "OK", "NODATA",
               "2", "0", "99999999999999999999", "é", "\x00", "1e3", "nan", "[ASSURED]", "[UNREPLIED]")


def setup() -> None:
    import kproxy_core.captures as captures
    import kproxy_core.flowlogs as flowlogs
    import kproxy_core.traffic as traffic
    from kproxy_core.errors import KproxyError
    from kproxy_core.inputs import ReadStats

    tmp = tempfile.mkdtemp(prefix="kproxy-fuzz-")
    atexit.register(shutil.rmtree, tmp, True)
    _S.update(captures=captures, flowlogs=flowlogs, traffic=traffic, KproxyError=KproxyError, ReadStats=ReadStats,
              path=os.path.join(tmp, "traffic"))


def one_input(data: bytes) -> None:
    if not _S:
        setup()
    p = Provider(data)
    mode = p.byte() % 10
    if mode == 0:
        _pcap(p.rest())
    elif mode == 1:
        _pcap(_pcap_file(p))
    elif mode == 2:
        _pcap(_pcapng_file(p))
    elif mode in (3, 4, 5):
        kind = ("hubble", "vpc", "conntrack")[mode - 3]
        raw = p.rest() if p.int(0, 3) == 0 else _lines(p, kind)
        _flowlog(kind, raw)
    else:
        k = p.int(0, 4)
        raw = (p.rest() if k == 0 else _pcap_file(p) if k == 1 else _pcapng_file(p) if k == 2
               else _lines(p, p.choice(("hubble", "vpc", "conntrack", "csv", "jsonl"))))
        if p.int(0, 5) == 0:
            raw = gzip.compress(raw, mtime=0)
        _traffic(raw, p.choice((None, None, "pcap", "hubble", "vpc", "conntrack", "csv", "jsonl", "parquet")))


# ---------------------------------------------------------------------------- checks


def _rows(tables: list[Any]) -> int:
    return sum(t.num_rows for t in tables)


def _pcap(raw: bytes) -> None:
    captures = _S["captures"]
    got = []
    for impl in ("compiled", "python"):
        stats = captures.CaptureStats()
        try:
            tables = list(captures.read_pcap("fuzz.pcap", chunk_packets=7, stats=stats, impl=impl,
                                             stream=io.BytesIO(raw)))
            got.append(("ok", [t.to_pydict() for t in tables], stats.records, stats.skipped, stats.examples))
            if _rows(tables) != stats.packets:
                raise Finding(f"read_pcap ({impl}): {_rows(tables)} rows, but {stats.records} records less "
                              f"{sum(stats.skipped.values())} skipped")
        except _S["KproxyError"] as e:
            _one_line(e, "read_pcap")
            got.append(("error", type(e), str(e), stats.records))
        except Finding:
            raise
        except Exception as e:
            raise Finding(f"read_pcap ({impl}): undocumented {type(e).__name__}: {e}") from e
    if got[0] != got[1]:
        raise Finding(f"read_pcap: the twins disagree: {str(got[0])[:300]} / {str(got[1])[:300]}")


def _flowlog(kind: str, raw: bytes) -> None:
    flowlogs = _S["flowlogs"]
    reader = {"hubble": flowlogs.read_hubble, "vpc": flowlogs.read_vpc, "conntrack": flowlogs.read_conntrack}[kind]
    stats = _S["ReadStats"]()
    try:
        tables = list(reader(io.BytesIO(raw), stats, 5))
    except _S["KproxyError"] as e:
        _one_line(e, f"read_{kind}")
        return
    except Exception as e:
        raise Finding(f"read_{kind}: undocumented {type(e).__name__}: {e}") from e
    _counted(f"read_{kind}", tables, stats)
    _sniffed(raw)


def _traffic(raw: bytes, fmt: str | None) -> None:
    traffic = _S["traffic"]
    path = _S["path"]
    with open(path, "wb") as f:
        f.write(raw)
    stats = _S["ReadStats"]()
    try:
        tables = list(traffic.read_tables(path, fmt, stats, chunk=6))
    except _S["KproxyError"] as e:
        _one_line(e, "read_tables")
        return
    except Exception as e:
        raise Finding(f"read_tables({fmt}): undocumented {type(e).__name__}: {e}") from e
    _counted(f"read_tables({fmt})", tables, stats)


def _counted(what: str, tables: list[Any], stats: Any) -> None:
    if any(t.num_rows == 0 for t in tables):
        raise Finding(f"{what}: an empty table")
    if _rows(tables) != stats.kept:
        raise Finding(f"{what}: {_rows(tables)} rows, but {stats.records} records less "
                      f"{sum(stats.skipped.values())} skipped ({stats.skipped})")


def _sniffed(raw: bytes) -> None:
    try:
        _S["flowlogs"].sniff(raw[:1 << 16])
    except Exception as e:
        raise Finding(f"sniff: {type(e).__name__}: {e}") from e


def _one_line(e: BaseException, what: str) -> None:
    text = str(e)
    if not text.strip() or "\n" in text:
        raise Finding(f"{what}: {type(e).__name__} message is empty or not one line: {text[:300]!r}")


# ---------------------------------------------------------------------------- building inputs


def _frame(p: Provider, linktype: int) -> bytes:
    """A frame of this link type: mostly well formed, sometimes cut or odd."""
    v6 = p.int(0, 2) == 0
    proto = p.choice((6, 17, 132, 1, 58, 47))
    l4 = struct.pack(">HH", p.choice((80, 53, 30080, 0, 65535)), p.int(0, 65535)) + p.bytes(16)
    if v6:
        ext = b""
        nh = proto
        for _ in range(p.int(0, 3) if p.int(0, 3) == 0 else 0):
            kind = p.choice((0, 43, 60, 44, 51))
            if kind == 44:
                body = struct.pack(">BBHI", nh, 0, p.choice((0, 1, 8, 0xFFF9)), 0)
            else:
                n = p.int(0, 2)
                body = bytes([nh, n]) + bytes(6 + 8 * n if kind != 51 else 2 + 4 * n)
            ext = body + ext
            nh = kind
        ip = (struct.pack(">IHBB", 0x60000000, len(ext) + len(l4), nh, 64) + p.choice(ADDR6) + p.choice(ADDR6)
              + ext)
        etype = 0x86DD
    else:
        ihl = p.choice((5, 5, 5, 6, 4, 15))
        opts = bytes((ihl - 5) * 4) if ihl > 5 else b""
        frag = p.choice((0, 0, 0, 0x2000, 0x0001, 0x4000))
        ip = (struct.pack(">BBHHHBBH", 0x40 | ihl, 0, 20 + len(opts) + len(l4), 0, frag, 64, proto, 0)
              + p.choice(ADDR4) + p.choice(ADDR4) + opts)
        etype = 0x0800
    if p.int(0, 9) == 0:
        ip = bytes([p.byte()]) + ip[1:]  # another IP version
    body = ip + l4
    if linktype == 1:
        tags = b"".join(struct.pack(">HH", p.choice((0x8100, 0x88A8, 0x9100)), 7) for _ in range(p.int(0, 2)))
        head = bytes(12) + tags + struct.pack(">H", etype if p.int(0, 7) else p.choice((0x0806, 0x88CC)))
        frame = head[:12] + head[12:] + body if tags else head + body
    elif linktype == 113:
        frame = bytes(14) + struct.pack(">H", etype) + body
    elif linktype == 276:
        frame = struct.pack(">H", etype) + bytes(18) + body
    else:
        frame = body
    if p.int(0, 5) == 0:
        frame = frame[:p.int(0, len(frame))]
    return frame


def _pcap_file(p: Provider) -> bytes:
    swapped, nanos = p.bool(), p.bool()
    linktype = p.choice(LINKTYPES)
    e = ">" if swapped else "<"
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype | (p.int(0, 1) << 28))]
    for _ in range(p.int(0, 12)):
        frame = _frame(p, linktype)
        incl = len(frame) if p.int(0, 7) else p.choice((0, len(frame) + 1, 1 << 18, 1 << 31, 0xFFFFFFFF))
        out.append(struct.pack(e + "IIII", p.int(0, 0xFFFFFFFF), p.int(0, 1999999), incl, len(frame)) + frame)
    raw = b"".join(out)
    if p.int(0, 3) == 0:
        raw = raw[:p.int(0, len(raw))]
    return raw


def _block(e: str, btype: int, body: bytes, p: Provider) -> bytes:
    body = body + bytes(-len(body) % 4)
    n = 12 + len(body)
    if p.int(0, 15) == 0:
        n = p.choice((0, 8, 13, n + 4, 1 << 25))
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def _pcapng_file(p: Provider) -> bytes:
    out = []
    for _ in range(p.int(1, 2)):
        e = ">" if p.bool() else "<"
        out.append(_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1), p))
        ifaces = []
        for _ in range(p.int(0, 3)):
            lt = p.choice(LINKTYPES)
            opts = b""
            if p.bool():
                opts = struct.pack(e + "HH", 9, 1) + bytes([p.choice((6, 9, 0x80 | 20, 0xFF, 0))]) + bytes(3)
                opts += struct.pack(e + "HH", 0, 0)
            ifaces.append(lt)
            out.append(_block(e, 1, struct.pack(e + "HHI", lt, 0, 65535) + opts, p))
        for _ in range(p.int(0, 10)):
            k = p.int(0, 5)
            iface = p.int(0, max(len(ifaces) - 1, 0)) if p.int(0, 7) else p.int(0, 5)
            frame = _frame(p, ifaces[iface] if iface < len(ifaces) else 1)
            if k <= 3:
                cap = len(frame) if p.int(0, 7) else p.choice((len(frame) + 4, 1 << 20))
                out.append(_block(e, 6, struct.pack(e + "IIIII", iface, p.int(0, 0xFFFFFFFF), p.int(0, 0xFFFFFFFF),
                                                    cap, len(frame)) + frame, p))
            elif k == 4:
                out.append(_block(e, 3, struct.pack(e + "I", len(frame) if p.bool() else 0xFFFF) + frame, p))
            else:
                out.append(_block(e, p.choice((2, 4, 5, 7, 0x80000001)), p.bytes(12), p))
    raw = b"".join(out)
    if p.int(0, 3) == 0:
        raw = raw[:p.int(0, len(raw))]
    return raw


def _field(p: Provider) -> str:
    return p.choice(TEXT_FIELDS) if p.int(0, 3) else p.text(8)


def _lines(p: Provider, kind: str) -> bytes:
    lines: list[str] = []
    for _ in range(p.int(1, 10)):
        if kind == "hubble":
            flow: dict[str, Any] = {
                "IP": {"source": _field(p), "destination": _field(p)},
                "l4": {p.choice(("TCP", "UDP", "SCTP", "ICMPv4")): {
                    "source_port": p.choice((80, "80", -1, None, 1 << 70, True)), "destinationPort": p.int(0, 70000)}},
                "time": p.choice(("2024-05-07T10:11:12.123456789Z", "2024-02-30T00:00:00Z", "x", 5, None,
                                  "9999-12-31T23:59:59+23:59", "0001-01-01T00:00:00-23:59")),
                "verdict": _field(p), "is_reply": p.choice((True, False, None, "yes")),
                "source": {"namespace": _field(p), "pod_name": _field(p)} if p.bool() else p.choice((None, 5, [])),
                "Type": p.choice(("L3_L4", "L7", None, 5, "x" * 40)),
            }
            if p.int(0, 5) == 0:
                del flow[p.choice(("IP", "l4"))]
            obj: Any = {"flow": flow, "node_name": _field(p), "time": "2024-05-07T10:11:12Z"} if p.bool() else flow
            if p.int(0, 7) == 0:
                obj = p.choice(({"lost_events": {}}, [], "x", 5, {"flow": 5}))
            line = json.dumps(obj)
        elif kind == "vpc":
            if p.int(0, 5) == 0:
                line = " ".join(p.choice(("version", "srcaddr", "dstaddr", "srcport", "dstport", "protocol",
                                          "start", "end", "action", "log-status", "packets", "bytes",
                                          "account-id", "interface-id", "pkt-srcaddr", "flow-direction", "x-y"))
                                for _ in range(p.int(0, 14)))
            else:
                fields = ["2", "123456789012", "eni-1", _field(p), _field(p), _field(p), _field(p), _field(p),
                          _field(p), _field(p), str(p.int(0, 1 << 40)), str(p.int(0, 1 << 40)),
                          p.choice(("ACCEPT", "REJECT", "-")), p.choice(("OK", "NODATA", "SKIPDATA"))]
                if p.int(0, 3) == 0:
                    del fields[p.int(0, len(fields) - 1)]
                line = " ".join(fields)
        elif kind == "conntrack":
            parts = [p.choice(("ipv4     2 ", "ipv6     10 ", "", "[1796541778.608185] [NEW] ", "[UPDATE] "))
                     + p.choice(("tcp", "udp", "sctp", "icmp", "unknown", "gre")), str(p.int(0, 255)),
                     str(p.int(0, 1 << 33))]
            if p.bool():
                parts.append(p.choice(("ESTABLISHED", "TIME_WAIT", "SYN_SENT", "x")))
            for _ in range(p.int(1, 2)):
                parts += [f"src={_field(p)}", f"dst={_field(p)}", f"sport={_field(p)}", f"dport={_field(p)}"]
                if p.bool():
                    parts += [f"packets={p.int(0, 99)}", f"bytes={_field(p)}"]
                if p.bool():
                    parts.append(p.choice(("[UNREPLIED]", "[ASSURED]")))
            parts += p.choice(([], ["mark=0", "use=1"], ["zone=70000"], ["[start=Sun Dec  6 07:22:39 2026]"],
                               ["[start=Sun", "Dec"]))
            line = " ".join(parts)
            if p.int(0, 9) == 0:
                line = "conntrack v1.4.7 (conntrack-tools): 4 flow entries have been shown."
        elif kind == "csv":
            if not lines:
                lines.append(",".join(p.choice(("src", "dst", "dport", "proto", "sport", "time", "x"))
                                      for _ in range(p.int(1, 6))))
            line = ",".join(_field(p) for _ in range(p.int(0, 7)))
        else:
            line = json.dumps({k: _field(p) if p.bool() else p.int(-5, 70000)
                               for k in ("src", "dst", "dport", "proto", "sport", "time")[:p.int(0, 6)]})
        lines.append(line)
    text = "\n".join(lines) + p.choice(("\n", "", "\n\n", "\r\n"))
    return text.encode("utf-8", "surrogatepass")


if __name__ == "__main__":
    libfuzzer_main(setup, one_input, ["kproxy_core.captures", "kproxy_core.flowlogs", "kproxy_core.traffic",
                                      "kproxy_core.inputs", "kproxy_core._engine_py"])

"""Packet captures (tcpdump's pcap and Wireshark's pcapng files) as tables of flows.

:func:`read_pcap` streams a capture (gzip-compressed or not, or any stream through
``stream``) in chunks of packets: each chunk is a pyarrow Table with ``time`` (seconds),
``src`` and ``dst`` (16-byte addresses, IPv4 mapped into ``::ffff:0:0/96``, which
:func:`kproxy_core.flows.classify` reads), ``sport``, ``dport``, ``proto`` and ``bytes`` (the
packet's length on the wire), in capture order. Frames are parsed in C (the compiled core's
``scan_pcap``, with its twin): Ethernet with any 802.1Q/802.1ad tags, Linux cooked captures
(SLL and SLL2) and raw IP; IPv4 and IPv6 (extension headers walked); TCP, UDP and SCTP.
Packets that cannot be a lookup are counted by reason (:data:`SKIPS`), never dropped
silently: not IP (ARP, LLDP, ...), IP fragments (only an unfragmented packet carries both
ports), truncated by the capture's snap length, another transport (ICMP, ...).

Every packet is looked up: the first of a 5-tuple is a new connection, later ones find it
in the engine's flow table, as conntrack would (classify with ``track=True``).

pcapng (Wireshark's default) is read too: sections of either byte order, each interface
with its own link type and timestamp unit (``if_tsresol``), Enhanced and Simple Packet
Blocks; a packet of an interface whose link type is not read is counted as skipped.
"""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from .engine import core_module
from .errors import KproxyError

SKIPS = ("not IP", "IP fragment", "truncated", "not TCP, UDP or SCTP", "link type not read")
LINKTYPES = {1: "Ethernet", 101: "raw IP", 12: "raw IP", 14: "raw IP", 228: "raw IPv4", 229: "raw IPv6",
             113: "Linux cooked (SLL)", 276: "Linux cooked v2 (SLL2)"}
_MAGIC = {
    b"\xd4\xc3\xb2\xa1": (False, False), b"\xa1\xb2\xc3\xd4": (True, False),  # microseconds
    b"\x4d\x3c\xb2\xa1": (False, True), b"\xa1\xb2\x3c\x4d": (True, True),  # nanoseconds
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
CHUNK_BYTES = 1 << 24
EXAMPLES = 5  # packet numbers kept per reason


class CaptureError(KproxyError):
    """A file that is not a capture this reads (one line: the file and why)."""


@dataclass
class CaptureStats:
    """Records read and packets skipped, by reason (:data:`SKIPS`), with the numbers (from
    1, in capture order) of the first few of each reason."""

    records: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)

    @property
    def packets(self) -> int:
        return self.records - sum(self.skipped.values())


def is_capture(head: bytes) -> bool:
    """Do these first bytes start a pcap or pcapng file?"""
    return head[:4] in _MAGIC or head[:4] == PCAPNG_MAGIC


def _open(path: str | Path) -> IO[bytes]:
    raw = open(path, "rb")  # noqa: SIM115 - returned, closed by the caller
    head = raw.read(2)
    raw.seek(0)
    if head == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    return raw


def _table(t: Any, src: Any, dst: Any, sport: Any, dport: Any, proto: Any, length: Any) -> Any:
    import pyarrow as pa

    n = len(t)
    return pa.table({
        "time": pa.array(t, pa.float64()),
        "src": pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(src)]),
        "sport": pa.array(sport, pa.uint16()),
        "dst": pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(dst)]),
        "dport": pa.array(dport, pa.uint16()),
        "proto": pa.array(proto, pa.uint8()),
        "bytes": pa.array(length, pa.uint32()),
    })


class _Reader:
    """The bytes of a file, read ahead in blocks, consumed from the front. ``pending`` is a
    view into one of two buffers, used in turn: a block is read straight after what is
    left of the last (no copy of the block, nothing consumed is copied)."""

    def __init__(self, f: IO[bytes], first: bytes) -> None:
        self.f = f
        self.pending: bytes | memoryview = first
        self.offset = 0  # of pending[0] in the file
        self.eof = False
        self.buffers = [bytearray(), bytearray()]

    def fill(self) -> None:
        if self.eof or len(self.pending) >= CHUNK_BYTES:
            return
        rest = len(self.pending)
        buf = self.buffers[0]
        self.buffers.reverse()  # the next fill writes the other one: pending may view this one
        if len(buf) < rest + CHUNK_BYTES:
            buf.extend(bytes(rest + CHUNK_BYTES - len(buf)))
        buf[:rest] = self.pending
        view = memoryview(buf)
        got = self.f.readinto(view[rest:rest + CHUNK_BYTES])  # type: ignore[attr-defined]
        self.eof = not got
        self.pending = view[:rest + (got or 0)]

    def take(self, n: int) -> None:
        self.pending = self.pending[n:]
        self.offset += n


def read_pcap(path: str | Path, *, chunk_packets: int = 1 << 18, stats: CaptureStats | None = None,
              impl: str | None = None, stream: IO[bytes] | None = None) -> Iterator[Any]:
    """The capture's packets (pcap or pcapng) as pyarrow Tables of at most ``chunk_packets``
    rows (see the module docstring); ``stats`` collects the counts. ``stream``: the file's
    bytes already opened (decompressed), ``path`` then only names it. CaptureError for a
    file that is not a capture, a pcap link type not read, or a corrupt record or block."""
    stats = stats if stats is not None else CaptureStats()
    core = core_module(impl)
    with (_open(path) if stream is None else contextlib.nullcontext(stream)) as f:
        head = f.read(24)
        if head[:4] == PCAPNG_MAGIC:
            yield from _read_pcapng(path, _Reader(f, head), core.scan_pcapng, chunk_packets, stats)
            return
        if len(head) < 24 or head[:4] not in _MAGIC:
            raise CaptureError(f"{path}: not a pcap or pcapng capture (magic {head[:4].hex() or 'missing'})")
        swapped, nanos = _MAGIC[head[:4]]
        linktype = int.from_bytes(head[20:24], "big" if swapped else "little") & 0x0FFFFFFF
        if linktype not in LINKTYPES:
            raise CaptureError(f"{path}: link type {linktype} is not read "
                               f"({', '.join(f'{k} {v}' for k, v in sorted(LINKTYPES.items()))})")
        r = _Reader(f, b"")
        r.offset = 24
        while True:
            r.fill()
            pos, n, table = _scanned(path, r, stats, core.scan_pcap, swapped, nanos, linktype, chunk_packets)
            if table is not None:
                yield table
            r.take(pos)
            if n == 0 and _stuck(path, r):
                return


def _scanned(path: str | Path, r: _Reader, stats: CaptureStats, scan: Any, *args: Any) -> tuple[Any, ...]:
    """``scan(r.pending, 0, *args)`` (either scanner): ``(pos, records, table or None, ...)``
    with whatever the scanner returns after its columns; the skipped packets counted."""
    try:
        pos, n, t, src, dst, _fam, sport, dport, proto, length, skipped, where, *rest = scan(r.pending, 0, *args)
    except ValueError as e:
        raise CaptureError(f"{path}: {str(e).replace('at byte ', f'at byte {r.offset}+')}") from None
    base = stats.records  # packets before this scan's first
    stats.records += n
    for reason, count, first in zip(SKIPS, skipped.tolist(), where.tolist(), strict=True):
        if count:
            stats.skipped[reason] = stats.skipped.get(reason, 0) + count
            seen = stats.examples.setdefault(reason, [])
            seen.extend(base + 1 + k for k in first[:EXAMPLES - len(seen)] if k >= 0)
    return (pos, n, _table(t, src, dst, sport, dport, proto, length) if len(t) else None, *rest)


def _stuck(path: str | Path, r: _Reader) -> bool:
    """After a scan that read nothing: True at the end of the file, else read on (or fail)."""
    if r.eof:
        if r.pending:
            raise CaptureError(f"{path}: the last record (at byte {r.offset}) is cut off ({len(r.pending)} bytes)")
        return True
    if len(r.pending) >= CHUNK_BYTES:
        raise CaptureError(f"{path}: a record at byte {r.offset} does not fit {CHUNK_BYTES} bytes")
    return False


def _read_pcapng(path: str | Path, r: _Reader, scan: Any, chunk_packets: int, stats: CaptureStats) -> Iterator[Any]:
    """pcapng: Section Header and Interface Description Blocks here, packets in C."""
    swapped = False
    linktypes: list[int] = []
    ticks: list[float] = []
    while True:
        r.fill()
        p = r.pending
        if len(p) >= 12 and p[:4] == PCAPNG_MAGIC:  # a section: its byte order, no interfaces yet
            magic = p[8:12]
            if magic not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
                raise CaptureError(f"{path}: the section at byte {r.offset} has no byte-order magic")
            swapped = magic == b"\x1a\x2b\x3c\x4d"
            length = int.from_bytes(p[4:8], "big" if swapped else "little")
            if length < 28 or length % 4 or (len(p) < length and r.eof):
                raise CaptureError(f"{path}: the section header at byte {r.offset} is malformed ({length} bytes)")
            if len(p) < length:
                continue
            linktypes, ticks = [], []
            r.take(length)
            continue
        pos, n, table, stop = _scanned(path, r, stats, scan, swapped, linktypes, ticks, chunk_packets)
        if table is not None:
            yield table
        r.take(pos)
        if stop == 1 and len(r.pending) < 12 and r.eof:
            raise CaptureError(f"{path}: the section header at byte {r.offset} is cut off")
        if stop == 2:  # an Interface Description Block: its link type and timestamp unit
            order: Literal["big", "little"] = "big" if swapped else "little"
            p = r.pending
            length = int.from_bytes(p[4:8], order)
            if len(p) < length:
                r.fill()
                p = r.pending
                if len(p) < length:
                    raise CaptureError(f"{path}: the interface block at byte {r.offset} is cut off")
            linktypes.append(int.from_bytes(p[8:10], order))
            ticks.append(_tsresol(bytes(p[16:length - 4]), order))
            r.take(length)
        elif stop == 0 and n == 0 and _stuck(path, r):
            return


def _tsresol(options: bytes, order: Literal["big", "little"]) -> float:
    """Seconds per timestamp unit from an interface's if_tsresol option (default 10**-6)."""
    at = 0
    while at + 4 <= len(options):
        code = int.from_bytes(options[at:at + 2], order)
        size = int.from_bytes(options[at + 2:at + 4], order)
        if code == 0:
            break
        if code == 9 and size >= 1:
            v = options[at + 4]
            return float(2.0 ** -(v & 0x7F)) if v & 0x80 else float(10.0 ** -v)
        at += 4 + (size + 3) // 4 * 4
    return 1e-6

"""Packet captures (tcpdump's and Wireshark's classic pcap files) as tables of flows.

:func:`read_pcap` streams a capture (gzip-compressed or not) in chunks of packets: each
chunk is a pyarrow Table with ``time`` (seconds), ``src`` and ``dst`` (16-byte addresses,
IPv4 mapped into ``::ffff:0:0/96``, which :func:`kproxy_core.flows.classify` reads), ``sport``,
``dport`` and ``proto``, in capture order. Frames are parsed in C (the compiled core's
``scan_pcap``, with its twin): Ethernet with any 802.1Q/802.1ad tags, Linux cooked captures
(SLL and SLL2) and raw IP; IPv4 and IPv6 (extension headers walked); TCP, UDP and SCTP.
Packets that cannot be a lookup are counted by reason (:data:`SKIPS`), never dropped
silently: not IP (ARP, LLDP, ...), IP fragments (only an unfragmented packet carries both
ports), truncated by the capture's snap length, another transport (ICMP, ...).

Every packet is looked up: the first of a 5-tuple is a new connection, later ones find it
in the engine's flow table, as conntrack would (classify with ``track=True``).

pcapng (Wireshark's default) is refused with a message for now: ``tshark -F pcap`` or
``editcap -F pcap`` convert it.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .engine import core_module
from .errors import KproxyError

SKIPS = ("not IP", "IP fragment", "truncated", "not TCP, UDP or SCTP")
LINKTYPES = {1: "Ethernet", 101: "raw IP", 12: "raw IP", 14: "raw IP", 228: "raw IPv4", 229: "raw IPv6",
             113: "Linux cooked (SLL)", 276: "Linux cooked v2 (SLL2)"}
_MAGIC = {
    b"\xd4\xc3\xb2\xa1": (False, False), b"\xa1\xb2\xc3\xd4": (True, False),  # microseconds
    b"\x4d\x3c\xb2\xa1": (False, True), b"\xa1\xb2\x3c\x4d": (True, True),  # nanoseconds
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
CHUNK_BYTES = 1 << 24


class CaptureError(KproxyError):
    """A file that is not a capture this reads (one line: the file and why)."""


@dataclass
class CaptureStats:
    """Records read and packets skipped, by reason (:data:`SKIPS`)."""

    records: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

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


def read_pcap(path: str | Path, *, chunk_packets: int = 1 << 18, stats: CaptureStats | None = None,
              impl: str | None = None) -> Iterator[Any]:
    """The capture's packets as pyarrow Tables of at most ``chunk_packets`` rows (see the
    module docstring); ``stats`` collects the counts. CaptureError for a file that is not a
    classic pcap, a link type not read, or a corrupt record."""
    import pyarrow as pa

    scan = core_module(impl).scan_pcap
    stats = stats if stats is not None else CaptureStats()
    with _open(path) as f:
        header = f.read(24)
        if header[:4] == PCAPNG_MAGIC:
            raise CaptureError(f"{path}: a pcapng capture, which is not read yet: convert it with "
                               "'editcap -F pcap IN OUT' (or tshark -F pcap)")
        if len(header) < 24 or header[:4] not in _MAGIC:
            raise CaptureError(f"{path}: not a pcap capture (magic {header[:4].hex() or 'missing'})")
        swapped, nanos = _MAGIC[header[:4]]
        linktype = int.from_bytes(header[20:24], "big" if swapped else "little") & 0x0FFFFFFF
        if linktype not in LINKTYPES:
            raise CaptureError(f"{path}: link type {linktype} is not read "
                               f"({', '.join(f'{k} {v}' for k, v in sorted(LINKTYPES.items()))})")
        pending = b""
        offset = 24  # of pending[0] in the file, for messages
        eof = False
        while not eof or pending:
            if not eof and len(pending) < CHUNK_BYTES:
                more = f.read(CHUNK_BYTES)
                eof = not more
                pending += more
            try:
                pos, n, t, src, dst, _fam, sport, dport, proto, skipped = scan(
                    pending, 0, swapped, nanos, linktype, chunk_packets)
            except ValueError as e:
                raise CaptureError(f"{path}: {str(e).replace('at byte ', f'at byte {offset}+')}") from None
            stats.records += n
            for reason, count in zip(SKIPS, skipped.tolist(), strict=True):
                if count:
                    stats.skipped[reason] = stats.skipped.get(reason, 0) + count
            if len(t):
                yield pa.table({
                    "time": pa.array(t, pa.float64()),
                    "src": pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(t), [None, pa.py_buffer(src)]),
                    "sport": pa.array(sport, pa.uint16()),
                    "dst": pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(t), [None, pa.py_buffer(dst)]),
                    "dport": pa.array(dport, pa.uint16()),
                    "proto": pa.array(proto, pa.uint8()),
                })
            pending = pending[pos:]
            offset += pos
            if n == 0:
                if eof:
                    if pending:
                        raise CaptureError(f"{path}: the last record (at byte {offset}) is cut off "
                                           f"({len(pending)} bytes)")
                    break
                if len(pending) >= CHUNK_BYTES:  # not even one record fits: the scan says why
                    raise CaptureError(f"{path}: a record at byte {offset} does not fit {CHUNK_BYTES} bytes")

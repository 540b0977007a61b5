"""Traffic files in: what a file is (by its content), how it is decompressed, how far
reading it has come, and what was skipped in it.

Every reader streams its file as pyarrow Tables of at most ``chunk`` records with the
columns :func:`kproxy_core.flows.classify` reads (``src``, ``dst``, ``sport``, ``dport``,
``proto``), ``time`` (seconds since the epoch, float64) when the format has it, ``bytes``
when it has it, and the format's own columns beside them. A record that cannot be read is
counted in :class:`ReadStats` by reason, with its line (or packet) number among the first
:data:`EXAMPLES` of each reason; it is never dropped silently and never raises.

Formats (:data:`FORMATS`): ``pcap`` (pcap and pcapng), ``parquet``, ``hubble`` (``hubble
observe -o jsonpb``), ``vpc`` (AWS VPC Flow Logs, default or custom format with a header
line), ``conntrack`` (``conntrack -L`` text), ``csv`` and ``jsonl`` (5-tuples). gzip and zstd
compression are undone transparently (zstd through pyarrow, or Python 3.14's
``compression.zstd``).
"""

from __future__ import annotations

import gzip
import io
import os
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from .errors import KproxyError

FORMATS = ("pcap", "parquet", "hubble", "vpc", "conntrack", "csv", "jsonl")
EXAMPLES = 5  # line numbers kept per reason
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class InputError(KproxyError, ValueError):
    """A file that cannot be read at all (one line: the file and why)."""


@dataclass
class ReadStats:
    """What reading saw: records (lines with content, or packets), the ones skipped by
    reason with where the first few were, and the file's bytes read so far (compressed)."""

    records: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)
    bytes_read: int = 0

    def skip(self, reason: str, where: int, count: int = 1) -> None:
        """Count ``count`` records skipped for ``reason``; ``where`` is the first one's
        line (or packet) number, 1-based (0: not known)."""
        self.skipped[reason] = self.skipped.get(reason, 0) + count
        seen = self.examples.setdefault(reason, [])
        if where and len(seen) < EXAMPLES:
            seen.append(where)

    @property
    def kept(self) -> int:
        return self.records - sum(self.skipped.values())

    def add(self, other: ReadStats) -> None:
        self.records += other.records
        self.bytes_read += other.bytes_read
        for reason, n in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n
            seen = self.examples.setdefault(reason, [])
            seen.extend(other.examples.get(reason, [])[:EXAMPLES - len(seen)])

    def lines(self, unit: str = "line") -> list[str]:
        """One line per reason: ``skipped: REASON: N (line 3, 9, ...)``."""
        out = []
        for reason, n in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            where = self.examples.get(reason)
            at = f" ({unit} {', '.join(map(str, where))}{', ...' if n > len(where) else ''})" if where else ""
            out.append(f"skipped: {reason}: {n}{at}")
        return out


class Counted(io.RawIOBase):
    """A binary file that counts the bytes read from it (into ``stats.bytes_read``)."""

    def __init__(self, raw: IO[bytes], stats: ReadStats) -> None:
        self.raw = raw
        self.stats = stats

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self.raw.readinto(b)  # type: ignore[attr-defined]
        self.stats.bytes_read += n or 0
        return n or 0

    def close(self) -> None:
        self.raw.close()
        super().close()


def open_input(path: str, stats: ReadStats | None = None) -> IO[bytes]:
    """``path`` (``-``: standard input) as a decompressed binary stream; the compressed
    bytes read are counted in ``stats``."""
    stats = stats if stats is not None else ReadStats()
    try:
        raw: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    buffered = io.BufferedReader(Counted(raw, stats), 1 << 20)
    head = buffered.peek(4)[:4]
    if head[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=buffered)  # type: ignore[return-value]
    if head == ZSTD_MAGIC:
        return _zstd(path, buffered)
    return buffered


def _zstd(path: str, f: IO[bytes]) -> IO[bytes]:
    if sys.version_info >= (3, 14):
        from compression import zstd  # type: ignore[import-not-found]

        return zstd.ZstdFile(f)  # type: ignore[no-any-return]
    try:
        import pyarrow as pa
    except ImportError:
        raise InputError(f"{path}: zstd-compressed; reading it needs pyarrow (pip install 'kproxy-core[flows]') "
                         "or Python 3.14") from None
    stream = pa.CompressedInputStream(pa.PythonFile(f, mode="r"), "zstd")
    return io.BufferedReader(_ArrowRaw(stream), 1 << 20)


class _ArrowRaw(io.RawIOBase):
    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.stream.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:
        self.stream.close()
        super().close()


def file_size(path: str) -> int | None:
    try:
        return os.path.getsize(path) if path != "-" else None
    except OSError:
        return None


class Progress:
    """One line on a terminal, redrawn at most 5 times a second: bytes read (of the file's
    size when known), records, and their rate."""

    def __init__(self, stats: ReadStats, total_bytes: int | None, enabled: bool, out: IO[str] | None = None) -> None:
        self.stats = stats
        self.total = total_bytes
        self.enabled = enabled
        self.out = out or sys.stderr
        self.start = self.last = time.monotonic()
        self.drawn = False

    def update(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < 0.2:
            return
        self.last = now
        s = self.stats
        took = max(now - self.start, 1e-9)
        size = f"{_mib(s.bytes_read)}" + (f" / {_mib(self.total)} ({100.0 * s.bytes_read / self.total:.0f}%)"
                                           if self.total else "")
        print(f"\r{size}, {s.records:,} records, {s.records / took / 1e6:.2f} M/s, "
              f"{_mib(int(s.bytes_read / took))}/s   ", end="", file=self.out, flush=True)
        self.drawn = True

    def close(self) -> None:
        if self.enabled:
            self.update(force=True)
            print(file=self.out)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"

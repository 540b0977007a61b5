"""Flow records written as text, as tables to classify: Cilium Hubble's flows (``hubble
observe -o jsonpb``), AWS VPC Flow Logs, and the kernel's connection tracking table
(``conntrack -L``).

Each reader takes a decompressed binary stream (:func:`kproxy_core.inputs.open_input`),
reads it in blocks of whole lines (memory stays flat, whatever the file's size) and yields
pyarrow Tables of ``chunk`` rows (the last one fewer; never an empty one), records in line
order, with the columns :func:`kproxy_core.flows.classify` reads and where each came from:

- ``line``: uint64, the record's line in the file (1-based);
- ``src``, ``dst``: strings, the addresses as written (IPv4 or IPv6 text);
- ``sport``, ``dport``: int32;
- ``proto``: string, ``TCP``, ``UDP`` or ``SCTP``;
- ``time``: float64 seconds since the epoch, null where the record has none;

then the format's own columns (each reader says which). Every non-blank line is a record,
counted in :class:`~kproxy_core.inputs.ReadStats` (a VPC header and conntrack's closing
"N flow entries have been shown" are not records). A record that cannot be the lookup of
a 5-tuple (an ICMP flow, a VPC NODATA record, a garbled line) is left out of the tables
and counted with its reason and line number: it never raises, and nothing is dropped
uncounted. Only a file that cannot be the format at all raises InputError.

VPC Flow Logs and conntrack are parsed a block at a time by numpy over the bytes (tokens,
keys, decimal numbers, addresses checked as inet_pton reads them), not line by line in
Python; Hubble's JSON is parsed line by line. :func:`sniff` tells the three apart by their
first lines.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import numpy as np

from .engine import core_module
from .inputs import EXAMPLES, InputError, ReadStats

BLOCK = 1 << 20  # bytes read at a time; the lines they complete are scanned together
MAX_LINE = 1 << 20  # a longer line is counted and skipped as it streams by, never held
SNIFF_BYTES = 1 << 16
LONG_LINE = "line longer than 1 MiB"
NOT_UTF8 = "not UTF-8"
PROTOS = ("TCP", "UDP", "SCTP")
_PROTO_CODE = {6: 0, 17: 1, 132: 2}
_PROTO_INDEX = np.full(1000, -1, dtype=np.int8)  # IANA number (up to 3 digits) -> index into PROTOS
_PROTO_INDEX[list(_PROTO_CODE)] = list(_PROTO_CODE.values())


def _space(u8: np.ndarray) -> np.ndarray:
    """Which bytes are bytes.split()'s whitespace (space, and 9 to 13: tab, newline,
    vertical tab, form feed, carriage return): what separates tokens and fills a blank line."""
    space: np.ndarray = (u8 == 32) | ((u8 - np.uint8(9)) <= np.uint8(4))  # uint8 wraps below 9
    return space


def _pa() -> Any:
    try:
        import pyarrow
    except ImportError:  # pragma: no cover - the flows extra is missing
        raise InputError("reading flow logs needs pyarrow (pip install 'kproxy-core[flows]')") from None
    return pyarrow


def _pc() -> Any:
    _pa()
    import pyarrow.compute

    return pyarrow.compute


# --------------------------------------------------------------------------- what a file is

# AWS VPC Flow Logs fields by the version that brought them (the "Available fields" table of
# the VPC user guide); a header may also name fields this list does not know yet
VPC_V2 = ("version", "account-id", "interface-id", "srcaddr", "dstaddr", "srcport", "dstport", "protocol",
          "packets", "bytes", "start", "end", "action", "log-status")
VPC_FIELDS = frozenset((
    *VPC_V2,
    "vpc-id", "subnet-id", "instance-id", "tcp-flags", "type", "pkt-srcaddr", "pkt-dstaddr",  # 3
    "region", "az-id", "sublocation-type", "sublocation-id",  # 4
    "pkt-src-aws-service", "pkt-dst-aws-service", "flow-direction", "traffic-path",  # 5
    "ecs-cluster-arn", "ecs-cluster-name", "ecs-container-instance-arn", "ecs-container-instance-id",  # 7
    "ecs-container-id", "ecs-second-container-id", "ecs-service-name", "ecs-task-definition-arn",
    "ecs-task-arn", "ecs-task-id",
    "reject-reason",  # 8
))
VPC_NEEDED = ("srcaddr", "dstaddr", "srcport", "dstport", "protocol")
VPC_INTEGERS = frozenset({"packets", "bytes", "start", "end"})
_FIELD_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*\Z", re.ASCII)

_CT_LINE = re.compile(r"(?:\[\d+(?:\.\d+)?\]\s+)?(?:\[[A-Z]+\]\s+)?(?:ipv[46]\s+\d+\s+)?"
                      r"(?:tcp|udp|sctp|icmp|icmpv6|unknown|dccp|gre|udplite)\s+\d+\s+(?:\d+\s+)?\S", re.ASCII)
# conntrack-tools' own messages ("... 4 flow entries have been shown."), on stderr but often
# saved with the table
_CT_TOOL = re.compile(r"conntrack v[0-9][^ ]* \(conntrack-tools\):")
_CT_TOOL_BYTES = re.compile(_CT_TOOL.pattern.encode())

_HUBBLE_EVENTS = ("node_status", "lost_events", "agent_event", "debug_event")
_HUBBLE_FLOW_KEYS = ("IP", "l4", "verdict", "Type", "ethernet", "l7", "event_type")


def sniff(head: bytes) -> str | None:
    """``"hubble"``, ``"vpc"`` or ``"conntrack"`` when the first bytes of a file (up to 64
    KiB, already decompressed) look like that format, else None. The first lines that say
    something decide: a JSON object with a Hubble flow (wrapped in ``flow`` or bare), a VPC
    header or default-format record, a conntrack entry."""
    text = head[:SNIFF_BYTES].decode("utf-8", "replace")
    lines = text.split("\n")
    if len(head) >= SNIFF_BYTES and len(lines) > 1:
        lines.pop()  # may be cut off by the 64 KiB
    seen, tool = 0, False
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if _CT_TOOL.match(line):  # conntrack's summary, first when stderr was saved too
            tool = True
            continue
        seen += 1
        if seen > 8:
            break
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):
                return None
            if isinstance(obj, dict) and (isinstance(obj.get("flow"), dict)
                                          or any(k in obj for k in ("IP", "l4", "verdict"))):
                return "hubble"
            if isinstance(obj, dict) and any(k in obj for k in _HUBBLE_EVENTS):
                continue  # Hubble's other events: flows follow
            return None
        if _CT_LINE.match(line) and "src=" in line:
            return "conntrack"
        tokens = line.split()
        if _vpc_header(tokens) or _vpc_v2_record(tokens):
            return "vpc"
        return None
    return "conntrack" if tool and not seen else None


def _vpc_header(tokens: list[str]) -> bool:
    return (bool(tokens) and all(_FIELD_NAME.match(t) for t in tokens)
            and sum(t in VPC_FIELDS for t in tokens) >= 2 and "srcaddr" in tokens and "dstaddr" in tokens)


def _vpc_v2_record(tokens: list[str]) -> bool:
    """A record of the default format (what a CloudWatch Logs export holds, no header)."""
    return (len(tokens) == 14 and tokens[0] == "2"
            and (tokens[1] in ("-", "unknown") or (len(tokens[1]) == 12 and tokens[1].isdigit()))
            and tokens[12] in ("ACCEPT", "REJECT", "-") and tokens[13] in ("OK", "NODATA", "SKIPDATA"))


# --------------------------------------------------------------------------- reading blocks


def _blocks(f: IO[bytes], stats: ReadStats) -> Iterator[tuple[int, bytes]]:
    """The stream as blocks of whole lines: ``(number of the first line, bytes)``, every line
    ending in a newline (one is added to a last line without). A line longer than
    :data:`MAX_LINE` is counted in ``stats`` as a record skipped (:data:`LONG_LINE`), its
    bytes dropped as they arrive."""
    for number, block in _cut(f):
        if block is None:
            stats.records += 1
            stats.skip(LONG_LINE, number)
        else:
            yield number, block


def _cut(f: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """:func:`_blocks`, with a line too long as ``(its number, None)``."""
    number, rest, dropping = 1, b"", False
    while True:
        data = f.read(BLOCK)
        if not data:
            break
        if dropping:
            cut = data.find(b"\n")
            if cut < 0:
                continue
            yield number, None
            number, dropping, data = number + 1, False, data[cut + 1:]
        if rest:
            data = rest + data
        cut = data.rfind(b"\n") + 1
        if cut:
            block = data[:cut]
            yield number, block
            number += block.count(b"\n")
        rest = data[cut:]
        if len(rest) > MAX_LINE:
            rest, dropping = b"", True
    if dropping:
        yield number, None
    elif rest:
        yield number, rest + b"\n"


class _Scan:
    """One block's lines and tokens (runs of bytes that are not ASCII whitespace, as
    ``bytes.split()`` cuts them) as arrays of offsets into the block: line ``i`` is
    ``starts[i]:ends[i]`` (``ends`` at its newline), token ``k`` is ``ts[k]:te[k]`` on line
    ``tline[k]``; line ``i`` has ``count[i]`` tokens from ``tfirst[i]``. ``unreadable``:
    lines that are not UTF-8. ``win[i]`` is the 8 bytes from offset ``i`` as a little-endian
    uint64 (zeros past the end), so that a token's first bytes are one gather."""

    def __init__(self, block: bytes, first: int) -> None:
        u8 = np.frombuffer(block, dtype=np.uint8)
        self.block, self.u8, self.first = block, u8, first
        pad = np.zeros(len(u8) + 32, dtype=np.uint8)
        pad[:len(u8)] = u8
        self.win = np.ndarray(shape=(len(u8) + 24,), dtype="<u8", buffer=pad, strides=(1,))
        self.ends = np.flatnonzero(u8 == 10)
        n = len(self.ends)
        self.starts = np.zeros(n, dtype=np.int64)
        self.starts[1:] = self.ends[:-1] + 1
        # where space and token meet: token starts and ends alternate (the block ends in a
        # newline, so the last token ends; one at offset 0 starts without a meeting)
        meet = np.flatnonzero(np.diff(_space(u8).view(np.int8))).astype(np.int64) + 1
        if len(u8) and not _space(u8[:1])[0]:
            meet = np.concatenate((np.zeros(1, dtype=np.int64), meet))
        self.ts, self.te = meet[0::2], meet[1::2]
        upto = np.searchsorted(self.ts, self.ends)  # tokens before each line's end
        self.count = np.diff(upto, prepend=0)
        self.tfirst = upto - self.count
        self.tline = np.repeat(np.arange(n), self.count)
        self.unreadable = np.zeros(n, dtype=bool)
        high = np.flatnonzero(u8 >= 0x80) if len(u8) and u8.max() >= 0x80 else ()
        if len(high):
            for i in np.unique(np.searchsorted(self.ends, high)).tolist():
                try:
                    block[self.starts[i]:self.ends[i]].decode("utf-8")
                except UnicodeDecodeError:
                    self.unreadable[i] = True

    def text(self, i: int) -> str:
        return self.block[self.starts[i]:self.ends[i]].decode("utf-8", "replace")

    def numbers(self, lines: np.ndarray) -> np.ndarray:
        return (lines + self.first).astype(np.uint64)

    def word(self, tokens: np.ndarray, word: bytes) -> np.ndarray:
        """Which of these tokens are exactly ``word``."""
        return _equals(self.win, self.ts[tokens], self.te[tokens], word)

    def first_byte(self, tokens: np.ndarray) -> np.ndarray:
        byte: np.ndarray = (self.win[self.ts[tokens]] & np.uint64(0xFF)).astype(np.uint8)
        return byte

    def digit_lines(self, lines: np.ndarray) -> np.ndarray:
        """Which of these lines hold a decimal digit."""
        digit = (self.u8 >= 48) & (self.u8 <= 57)
        has: np.ndarray = np.logical_or.reduceat(digit, self.starts)[lines] if len(self.starts) else digit[:0]
        return has


_MASK = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)  # the low k bytes


def _code(word: bytes) -> int:
    return int.from_bytes(word[:8].ljust(8, b"\0"), "little")


def _equals(win: np.ndarray, s: np.ndarray, e: np.ndarray, word: bytes) -> np.ndarray:
    """Which of the byte ranges ``s:e`` (of the scan whose window is ``win``) are ``word``."""
    same: np.ndarray = (e - s) == len(word)
    for at in range(0, len(word), 8):
        piece = word[at:at + 8]
        same &= (win[s + at] & _MASK[len(piece)]) == np.uint64(_code(piece))
    return same


def _digits(win: np.ndarray, s: np.ndarray, e: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The decimal numbers in the byte ranges ``s:e`` (of the scan whose window is ``win``)
    of at most ``width`` (<= 18) digits, and which ranges are one (the value is 0 where not)."""
    lengths = e - s
    ok = (lengths >= 1) & (lengths <= width)
    value = np.zeros(len(s), dtype=np.int64)
    if not ok.any():
        return value, ok
    wide = int(lengths[ok].max())  # digits of the longest: usually far fewer than width
    for base in range(0, wide, 8):
        word = win[s + base]
        for j in range(min(8, wide - base)):
            d = ((word >> np.uint64(8 * j)) & np.uint64(0xFF)).astype(np.int64) - 48
            inside = base + j < lengths
            ok &= ~inside | ((d >= 0) & (d <= 9))
            value = np.where(inside, value * 10 + d, value)
    return np.where(ok, value, 0), ok


def _strings(u8: np.ndarray, s: np.ndarray, e: np.ndarray, valid: np.ndarray | None = None) -> Any:
    """A pyarrow string array of the byte ranges ``u8[s:e]`` (null where not ``valid``);
    the ranges are UTF-8 (tokens of lines that are) and of one block (32-bit offsets do)."""
    pa = _pa()
    n = len(s)
    lengths = (e - s) if valid is None else np.where(valid, e - s, 0)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    data = u8[np.repeat(s - offsets[:-1], lengths) + np.arange(total)] if total else np.zeros(0, dtype=np.uint8)
    bitmap = None
    if valid is not None and not valid.all():
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(pa.string(), n, [bitmap, pa.py_buffer(offsets.astype(np.int32)),
                                                  pa.py_buffer(data)])


def _families(arr: Any) -> np.ndarray:
    """4 or 6 for each string of a (zero-offset) pyarrow string array that is an IPv4 or
    IPv6 address as inet_pton reads them (the parser classify uses), else 0."""
    n = len(arr)
    if not n:
        return np.zeros(0, dtype=np.uint8)
    bufs = arr.buffers()
    off = np.frombuffer(bufs[1], dtype=np.int32)[arr.offset:arr.offset + n + 1]
    data = bufs[2] if bufs[2] is not None else b""
    valid = np.ones(n, dtype=bool) if arr.null_count == 0 else np.asarray(
        arr.is_valid().to_numpy(zero_copy_only=False))
    fam, _, _ = core_module().parse_ips(off, memoryview(data), valid)
    return np.asarray(fam, dtype=np.uint8)


def _drop_addresses(families: dict[str, np.ndarray], drop: Callable[[np.ndarray, str], None]) -> None:
    """Skip the records with an address that is none, and those whose two are of different
    families (IPv4 and IPv6)."""
    for name, fam in families.items():
        drop(fam == 0, f"{name}: not an IP address")
    src, dst = families.values()
    drop(src != dst, "addresses of different families")


def _kept_addresses(u8: np.ndarray, spans: dict[str, tuple[np.ndarray, np.ndarray]], n: int, sel: np.ndarray,
                    keep: np.ndarray, drop: Callable[[np.ndarray, str], None]) -> tuple[Any, Any, np.ndarray] | None:
    """The source and destination address columns (``spans``: the byte ranges of the two,
    in that order, of the records ``sel`` of ``n``) of the records that stay once those
    with a bad address are dropped, and which records those are (None: no record stays)."""
    pa = _pa()
    addrs: dict[str, Any] = {}
    families = {}
    for name, (s, e) in spans.items():
        addrs[name] = _strings(u8, s, e)
        families[name] = np.zeros(n, dtype=np.uint8)
        families[name][sel] = _families(addrs[name])
    _drop_addresses(families, drop)
    good = keep[sel]
    sel = sel[good]
    if not len(sel):
        return None
    src, dst = (a.filter(pa.array(good)) for a in addrs.values())
    return src, dst, sel


def _skip(stats: ReadStats, reason: str, numbers: Any) -> None:
    """Count the records of these line numbers as skipped for ``reason``."""
    n = len(numbers)
    if not n:
        return
    shown = min(n, EXAMPLES)
    for number in numbers[:shown]:
        stats.skip(reason, int(number))
    if n > shown:
        stats.skip(reason, 0, n - shown)


class _Chunks:
    """Tables of exactly ``chunk`` rows (the last fewer) out of tables of any size; a table
    with other columns first sends what is pending."""

    def __init__(self, chunk: int) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, not {chunk}")
        self.chunk = chunk
        self.parts: list[Any] = []
        self.rows = 0

    def add(self, table: Any) -> Iterator[Any]:
        if table is None or not table.num_rows:
            return
        if self.parts and not table.schema.equals(self.parts[0].schema):
            yield from self.flush()
        self.parts.append(table)
        self.rows += table.num_rows
        if self.rows < self.chunk:
            return
        whole = self.parts[0] if len(self.parts) == 1 else _pa().concat_tables(self.parts)
        full = self.rows // self.chunk * self.chunk
        for at in range(0, full, self.chunk):
            yield whole.slice(at, self.chunk)
        rest = whole.slice(full)
        self.parts, self.rows = ([rest] if rest.num_rows else []), rest.num_rows

    def flush(self) -> Iterator[Any]:
        if self.rows:
            yield self.parts[0] if len(self.parts) == 1 else _pa().concat_tables(self.parts)
        self.parts, self.rows = [], 0


def _flow_table(numbers: np.ndarray, src: Any, dst: Any, sport: np.ndarray, dport: np.ndarray,
                proto: np.ndarray, when: Any, own: dict[str, Any]) -> Any:
    """The table of the common columns (``proto``: indices into :data:`PROTOS`; ``when``: a
    float64 pyarrow array) and the format's own."""
    pa = _pa()
    names = pa.array(PROTOS, pa.string())
    cols = {
        "line": pa.array(numbers, pa.uint64()),
        "src": src,
        "dst": dst,
        "sport": pa.array(sport.astype(np.int32), pa.int32()),
        "dport": pa.array(dport.astype(np.int32), pa.int32()),
        "proto": pa.DictionaryArray.from_arrays(pa.array(proto.astype(np.int8), pa.int8()), names)
        .cast(pa.string()),
        "time": when,
    }
    cols.update(own)
    return pa.table(cols)


def _ints(values: np.ndarray, ok: np.ndarray, typ: Any) -> Any:
    """An integer column of type ``typ``, null where not ``ok`` or where the number does not fit
    the type (a 10-digit conntrack timeout was an ArrowInvalid for its int32 column: fuzzing)."""
    pa = _pa()
    info = np.iinfo(typ.to_pandas_dtype())
    ok = ok & (values >= info.min) & (values <= info.max)
    return pa.array(np.where(ok, values, 0), typ, mask=None if ok.all() else ~ok)


# --------------------------------------------------------------------------- AWS VPC Flow Logs


def read_vpc(f: IO[bytes], stats: ReadStats, chunk: int = 1 << 16) -> Iterator[Any]:
    """AWS VPC Flow Logs as tables (see the module docstring for the common columns).

    Records are space-separated fields named by a header line, as files delivered to S3
    begin (the default version 2 format or any custom one, in any order); without one (a
    CloudWatch Logs export), the default format's 14 fields. A header further on (files
    joined together) names the fields from there on, and the same header again is not a
    record. ``src``, ``dst``, ``sport``, ``dport`` come from ``srcaddr``, ``dstaddr``,
    ``srcport``, ``dstport`` (the addresses of the network interface's side, as the
    security groups saw them), ``proto`` from ``protocol`` (IANA numbers 6, 17, 132), ``time``
    from ``start`` when the format has it.

    Own columns: every other field of the header, ``-`` turned ``_`` in the name
    (``account_id``, ``interface_id``, ``action``, ``log_status``, ``pkt_srcaddr``, ...):
    ``packets``, ``bytes``, ``start``, ``end`` int64, the others strings; ``-`` (no value) is
    null. ``pkt-srcaddr`` and ``pkt-dstaddr`` (the packet's own addresses, behind a NAT
    gateway or a transit gateway) are kept as columns only: the lookup uses ``srcaddr`` and
    ``dstaddr``.

    Skipped: ``NODATA record``, ``SKIPDATA record``, a needed field ``-`` (``srcaddr: '-'``),
    ``not TCP, UDP or SCTP (protocol 1)``, ``protocol: not a number``, ``srcport: not a
    port``, ``srcaddr: not an IP address``, ``addresses of different families``, ``fewer
    fields than the header (12 of 14)`` (or
    ``more``; ``the default format`` without a header), ``not UTF-8``, ``line longer than
    1 MiB``. InputError when the first line is a header without the fields a lookup needs."""
    out = _Chunks(chunk)
    state: tuple[tuple[str, ...], bool] | None = None  # the fields, and whether a header named them
    for first, block in _blocks(f, stats):
        scan = _Scan(block, first)
        lines = np.flatnonzero(scan.count > 0)
        heads: dict[int, tuple[str, ...]] = {}
        if state is None and len(lines):
            at = int(lines[0])
            tokens = scan.text(at).split()
            if _vpc_header(tokens) or (tokens and all(_FIELD_NAME.match(t) for t in tokens)
                                       and any(t in VPC_FIELDS for t in tokens)):
                heads[at] = _vpc_fields(tokens, scan.first + at)
            else:
                state = (VPC_V2, False)
        for at in _vpc_header_lines(scan, lines):
            tokens = scan.text(at).split()
            if _vpc_header(tokens) and all(t in tokens for t in VPC_NEEDED) and len(set(tokens)) == len(tokens):
                heads[at] = tuple(tokens)
        stats.records += len(lines) - len(heads)
        bad = scan.unreadable[lines]
        _skip(stats, NOT_UTF8, scan.numbers(lines[bad]))
        lines = lines[~bad]
        lo = -1
        for at in [*sorted(heads), len(scan.ends)]:
            rows = lines[(lines > lo) & (lines < at)]
            if len(rows) and state is not None:
                yield from out.add(_vpc_rows(scan, rows, state[0], state[1], stats))
            if at in heads:
                state = (heads[at], True)
            lo = at
    yield from out.flush()


def _vpc_fields(tokens: list[str], number: int) -> tuple[str, ...]:
    missing = [t for t in VPC_NEEDED if t not in tokens]
    if missing:
        raise InputError(f"line {number}: a VPC flow log header without {', '.join(missing)} "
                         f"(a lookup needs {', '.join(VPC_NEEDED)})")
    twice = sorted({t for t in tokens if tokens.count(t) > 1})
    if twice:
        raise InputError(f"line {number}: the VPC flow log header names {', '.join(twice)} twice")
    return tuple(tokens)


def _vpc_header_lines(scan: _Scan, lines: np.ndarray) -> list[int]:
    """Lines that may be a header: no digit, the first byte a lowercase letter (every
    record holds a digit: an address, a port, an interface id)."""
    if not len(lines):
        return []
    first = scan.first_byte(scan.tfirst[lines])
    maybe = lines[(first >= ord("a")) & (first <= ord("z"))]
    maybe = maybe[~scan.digit_lines(maybe)] if len(maybe) else maybe
    return [int(i) for i in maybe.tolist()]


def _vpc_rows(scan: _Scan, rows: np.ndarray, fields: tuple[str, ...], headed: bool, stats: ReadStats) -> Any:
    """The table of these lines (non-blank, readable, not a header) read with ``fields``."""
    pa = _pa()
    u8 = scan.u8
    nf = len(fields)
    count = scan.count[rows]
    what = "the header" if headed else "the default format"
    for k in np.unique(count[count != nf]).tolist():
        _skip(stats, f"{'fewer' if k < nf else 'more'} fields than {what} ({k} of {nf})",
              scan.numbers(rows[count == k]))
    rows = rows[count == nf]
    if not len(rows):
        return None
    base = scan.tfirst[rows]
    span = {name: (scan.ts[base + j], scan.te[base + j]) for j, name in enumerate(fields)}
    dash = {name: _equals(scan.win, s, e, b"-") for name, (s, e) in span.items()}
    keep = np.ones(len(rows), dtype=bool)

    def drop(mask: np.ndarray, reason: str) -> None:
        gone = keep & mask
        _skip(stats, reason, scan.numbers(rows[gone]))
        keep[gone] = False

    if "log-status" in span:
        for status in ("NODATA", "SKIPDATA"):
            drop(_equals(scan.win, *span["log-status"], status.encode()), f"{status} record")
    for name in VPC_NEEDED:
        drop(dash[name], f"{name}: '-'")
    proto, ok = _digits(scan.win, *span["protocol"], 3)
    drop(~ok, "protocol: not a number")
    other = keep & ~np.isin(proto, list(_PROTO_CODE))
    for p in np.unique(proto[other]).tolist():
        drop(proto == p, f"not TCP, UDP or SCTP (protocol {p})")
    ports: dict[str, np.ndarray] = {}
    for name in ("srcport", "dstport"):
        ports[name], ok = _digits(scan.win, *span[name], 5)
        drop(~ok | (ports[name] > 65535), f"{name}: not a port")
    sel = np.flatnonzero(keep)
    got = _kept_addresses(u8, {n: (span[n][0][sel], span[n][1][sel]) for n in ("srcaddr", "dstaddr")},
                          len(rows), sel, keep, drop)
    if got is None:
        return None
    src, dst, sel = got
    if "start" in span:
        start, ok = _digits(scan.win, span["start"][0][sel], span["start"][1][sel], 18)
        when = pa.array(start.astype(np.float64), pa.float64(), mask=None if ok.all() else ~ok)
    else:
        when = pa.nulls(len(sel), pa.float64())
    own: dict[str, Any] = {}
    for name in fields:
        if name in VPC_NEEDED:
            continue
        col = name.replace("-", "_")
        col = col if col not in ("line", "src", "dst", "sport", "dport", "proto", "time") else f"vpc_{col}"
        s, e = span[name][0][sel], span[name][1][sel]
        if name in VPC_INTEGERS:
            own[col] = _ints(*_digits(scan.win, s, e, 18), pa.int64())
        else:
            own[col] = _strings(u8, s, e, ~dash[name][sel])
    return _flow_table(scan.numbers(rows[sel]), src, dst, ports["srcport"][sel], ports["dstport"][sel],
                       _PROTO_INDEX[proto[sel]],
                       when, own)


# --------------------------------------------------------------------------- conntrack


def read_conntrack(f: IO[bytes], stats: ReadStats, chunk: int = 1 << 16) -> Iterator[Any]:
    """The kernel's connection tracking table as ``conntrack -L`` prints it (also with ``-o
    extended``, ``-o id``, ``-o timestamp`` or ``-o ktimestamp``, with accounting on, with
    zones and marks; and ``conntrack -E`` events, ``[seconds]`` and ``[NEW]`` in front), as
    tables (see the module docstring for the common columns). The ORIGINAL tuple, the first
    ``src= dst= sport= dport=``, is the lookup: what the first packet carried, before any NAT
    rewrote it. ``time``: an event's timestamp, or ``[start=...]`` of ``-o timestamp``
    (conntrack prints the node's local time without a zone; it is read as UTC); else null.

    Own columns: ``ct_timeout`` (int32, seconds left; null in a DESTROY event), ``ct_state``
    (TCP's or SCTP's state, null for UDP), ``reply_src``, ``reply_dst``, ``reply_sport``,
    ``reply_dport`` (the REPLY tuple: after DNAT, ``reply_src`` is the endpoint), ``ct_assured``,
    ``ct_unreplied`` (bool), ``packets``, ``bytes`` (int64, the original direction's counters;
    null without accounting), ``ct_mark`` (int64), ``ct_zone`` (int32, null without a zone).

    conntrack-tools' own messages ("conntrack v1.4.7 (conntrack-tools): 3 flow entries have
    been shown.") are not records. Skipped: ``not TCP, UDP or SCTP (icmp)`` (the name as
    printed), ``no original tuple``, ``sport: not a port``, ``src: not an IP address``,
    ``addresses of different families``, ``not a conntrack entry``, ``not UTF-8``, ``line
    longer than 1 MiB``."""
    out = _Chunks(chunk)
    for first, block in _blocks(f, stats):
        scan = _Scan(block, first)
        lines = np.flatnonzero(scan.count > 0)
        tool = lines[scan.word(scan.tfirst[lines], b"conntrack")] if len(lines) else lines
        tool = np.array([i for i in tool.tolist() if _CT_TOOL_BYTES.match(block[scan.starts[i]:scan.ends[i]].strip())],
                        dtype=np.int64)
        if len(tool):
            lines = np.setdiff1d(lines, tool)
        stats.records += len(lines)
        bad = scan.unreadable[lines]
        _skip(stats, NOT_UTF8, scan.numbers(lines[bad]))
        yield from out.add(_ct_rows(scan, lines[~bad], stats))
    yield from out.flush()


class _Keys:
    """Every token's key: the bytes before its first ``=`` when that is among the token's
    first 8 bytes (every key read here is shorter), else the whole token; and where that
    ``=`` is (-1: none). ``key`` packs a key's first 7 bytes, its length (to
    127) and whether a ``=`` follows into one uint64, to compare tokens in one pass."""

    def __init__(self, scan: _Scan) -> None:
        ts, te = scan.ts, scan.te
        head = scan.win[ts]
        at = np.full(len(ts), -1, dtype=np.int64)  # the first "=" among a token's first 8 bytes
        for j in range(7, -1, -1):
            at[((head >> np.uint64(8 * j)) & np.uint64(0xFF)) == 61] = j
        at[at >= te - ts] = -1  # past the token: not its own
        self.scan = scan
        self.eq = np.where(at >= 0, ts + at, -1)
        self.length = np.where(at >= 0, at, te - ts)
        self.key = self._pack(head, self.length, at >= 0)

    @staticmethod
    def _pack(head: np.ndarray, length: np.ndarray, has: np.ndarray) -> np.ndarray:
        packed: np.ndarray = ((head & _MASK[np.minimum(length, 7)]) | (np.minimum(length, 127).astype(np.uint64)
                              << np.uint64(56)) | (has.astype(np.uint64) << np.uint64(63)))
        return packed

    def packed(self, word: bytes, value: bool = True) -> np.uint64:
        """The key of ``word=...`` (``value``), or of ``word``, as :attr:`key` packs them."""
        key: np.uint64 = self._pack(np.array([_code(word)], dtype=np.uint64), np.array([len(word)]),
                                    np.array([value]))[0]
        return key

    def named(self, word: bytes, value: bool = True) -> np.ndarray:
        """Which tokens are ``word=...`` (``value``), or exactly ``word``."""
        hit: np.ndarray = self.key == self.packed(word, value)
        if len(word) > 7:  # the packed key holds 7 bytes: check the rest
            at = np.flatnonzero(hit)
            hit[at] = _equals(self.scan.win, self.scan.ts[at], self.scan.ts[at] + len(word), word)
        return hit


def _nth(mask: np.ndarray, tline: np.ndarray, n: int, times: int) -> list[np.ndarray]:
    """For each of ``n`` lines, the 1st, 2nd... token where ``mask`` is (-1: none)."""
    idx = np.flatnonzero(mask)
    on = tline[idx]
    out = []
    for _ in range(times):
        once = np.ones(len(idx), dtype=bool)
        once[1:] = on[1:] != on[:-1]
        got = np.full(n, -1, dtype=np.int64)
        got[on[once]] = idx[once]
        out.append(got)
        idx, on = idx[~once], on[~once]
    return out


def _ct_rows(scan: _Scan, rows: np.ndarray, stats: ReadStats) -> Any:
    """The table of these conntrack lines (non-blank, readable, not the tool's messages)."""
    pa = _pa()
    if not len(rows):
        return None
    u8, ts, te = scan.u8, scan.ts, scan.te
    ntok = len(ts)
    keys = _Keys(scan)
    p = scan.tfirst[rows].copy()
    end = p + scan.count[rows]

    def at(t: np.ndarray) -> np.ndarray:
        clipped: np.ndarray = np.clip(t, 0, max(ntok - 1, 0))
        return clipped

    def valued(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return keys.eq[at(t)] + 1, te[at(t)]

    # conntrack -E: "[1796541778.608185]" and "[NEW]" before the entry
    when = np.full(len(rows), np.nan)
    for _ in range(2):
        br = (p < end) & (scan.first_byte(at(p)) == ord("[")) & (keys.eq[at(p)] < 0)
        if br.any():
            when[br] = np.where(np.isnan(when[br]), _event_seconds(u8, ts[at(p[br])], te[at(p[br])]), when[br])
        p = np.where(br, p + 1, p)
    extended = (p + 1 < end) & (scan.word(at(p), b"ipv4") | scan.word(at(p), b"ipv6"))
    p = np.where(extended, p + 2, p)
    name_byte = scan.first_byte(at(p))
    _, pnum_ok = _digits(scan.win, ts[at(p + 1)], te[at(p + 1)], 3)
    head_ok = (p + 1 < end) & (keys.eq[at(p)] < 0) & (name_byte >= ord("a")) & (name_byte <= ord("z")) & pnum_ok
    proto = np.full(len(rows), -1, dtype=np.int8)
    for i, word in enumerate((b"tcp", b"udp", b"sctp")):
        proto[keys.named(word, value=False)[at(p)]] = i
    named_at = p.copy()
    p = p + 2
    timeout, has_timeout = _digits(scan.win, ts[at(p)], te[at(p)], 10)
    has_timeout &= p < end
    p = np.where(has_timeout, p + 1, p)
    state_byte = scan.first_byte(at(p))
    has_state = (p < end) & (keys.eq[at(p)] < 0) & (state_byte >= ord("A")) & (state_byte <= ord("Z"))
    state_at = p.copy()
    p = np.where(has_state, p + 1, p)

    n = len(scan.ends)

    def keyed(t: np.ndarray, word: bytes) -> np.ndarray:
        """Whether token ``t`` (of each row's line) is ``word=...``."""
        hit: np.ndarray = (t >= 0) & (t < end) & (keys.key[at(t)] == keys.packed(word))
        return hit

    # the ORIGINAL tuple: the line's first "src=" and the three after it; the REPLY tuple: the
    # next "src=" within 4 tokens (after the counters and [UNREPLIED], when there are)
    s0 = _nth(keys.named(b"src"), scan.tline, n, 1)[0][rows]
    orig_ok = (s0 >= p) & keyed(s0 + 1, b"dst") & keyed(s0 + 2, b"sport") & keyed(s0 + 3, b"dport")
    s1 = np.full(len(rows), -1, dtype=np.int64)
    for j in range(4, 0, -1):
        s1 = np.where(keyed(s0 + 3 + j, b"src"), s0 + 3 + j, s1)
    reply_ok = orig_ok & (s1 >= 0) & keyed(s1 + 1, b"dst") & keyed(s1 + 2, b"sport") & keyed(s1 + 3, b"dport")
    first = {"src": s0, "dst": s0 + 1, "sport": s0 + 2, "dport": s0 + 3}
    second = {"src": s1, "dst": s1 + 1, "sport": s1 + 2, "dport": s1 + 3}
    counted = orig_ok & keyed(s0 + 4, b"packets") & keyed(s0 + 5, b"bytes")

    keep = np.ones(len(rows), dtype=bool)

    def drop(mask: np.ndarray, reason: str) -> None:
        gone = keep & mask
        _skip(stats, reason, scan.numbers(rows[gone]))
        keep[gone] = False

    drop(~head_ok, "not a conntrack entry")
    other = keep & (proto < 0)
    if other.any():  # by the protocol's name as printed, each name once
        named = keys.key[at(named_at)]
        for c in sorted(set(named[other].tolist())):
            mask = other & (named == np.uint64(c))
            t = int(named_at[np.flatnonzero(mask)[0]])
            label = scan.block[ts[t]:ts[t] + keys.length[t]].decode("utf-8", "replace")
            drop(mask, f"not TCP, UDP or SCTP ({label})")
    drop(~orig_ok, "no original tuple")
    sport, ok = _digits(scan.win, *valued(first["sport"]), 5)
    drop(~ok | (sport > 65535), "sport: not a port")
    dport, ok = _digits(scan.win, *valued(first["dport"]), 5)
    drop(~ok | (dport > 65535), "dport: not a port")
    sel = np.flatnonzero(keep)
    got = _kept_addresses(u8, {n: valued(first[n][sel]) for n in ("src", "dst")}, len(rows), sel, keep, drop)
    if got is None:
        return None
    src, dst, sel = got
    take = {k: v[sel] for k, v in first.items()}
    rtake = {k: v[sel] for k, v in second.items()}
    rok = reply_ok[sel]
    own: dict[str, Any] = {}
    own["ct_timeout"] = _ints(timeout[sel], has_timeout[sel], pa.int32())
    own["ct_state"] = _strings(u8, ts[at(state_at[sel])], te[at(state_at[sel])], has_state[sel])
    own["reply_src"] = _strings(u8, *valued(rtake["src"]), rok)
    own["reply_dst"] = _strings(u8, *valued(rtake["dst"]), rok)
    for name in ("sport", "dport"):
        v, ok = _digits(scan.win, *valued(rtake[name]), 5)
        own[f"reply_{name}"] = _ints(v, ok & rok & (v <= 65535), pa.int32())
    flags = {}
    for word in (b"[ASSURED]", b"[UNREPLIED]"):
        on = np.zeros(n, dtype=bool)
        on[scan.tline[keys.named(word, value=False)]] = True
        flags[word] = on[rows[sel]]
    own["ct_assured"] = pa.array(flags[b"[ASSURED]"], pa.bool_())
    own["ct_unreplied"] = pa.array(flags[b"[UNREPLIED]"], pa.bool_())
    for name, t in (("packets", take["dport"] + 1), ("bytes", take["dport"] + 2)):
        v, ok = _digits(scan.win, *valued(t), 18)
        own[name] = _ints(v, ok & counted[sel], pa.int64())
    for col, word, width, typ in (("ct_mark", b"mark", 10, pa.int64()), ("ct_zone", b"zone", 5, pa.int32())):
        t = _nth(keys.named(word), scan.tline, n, 1)[0][rows[sel]]
        v, ok = _digits(scan.win, *valued(t), width)
        own[col] = _ints(v, ok & (t >= 0), typ)
    started = _nth(keys.named(b"[start"), scan.tline, n, 1)[0][rows[sel]]
    seconds = when[sel]
    if (started >= 0).any():
        seconds = np.where(np.isnan(seconds), _start_seconds(scan, keys, started, end[sel]), seconds)
    when_col = pa.array(seconds, pa.float64(), from_pandas=True)
    return _flow_table(scan.numbers(rows[sel]), src, dst, sport[sel], dport[sel], proto[sel], when_col, own)


def _event_seconds(u8: np.ndarray, s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """``[1796541778.608185]`` (conntrack -E -o timestamp) as seconds; NaN for another
    bracketed word (``[NEW]``)."""
    pc = _pc()
    text = _strings(u8, s + 1, np.maximum(e - 1, s + 1))
    closed = u8[np.maximum(e - 1, 0)] == ord("]")
    ok = np.asarray(pc.match_substring_regex(text, r"^[0-9]{1,12}(\.[0-9]{1,9})?$").to_numpy(
        zero_copy_only=False)) & closed
    out = np.full(len(s), np.nan)
    if ok.any():
        out[ok] = np.asarray(text.filter(_pa().array(ok)).cast(_pa().float64()).to_numpy(zero_copy_only=False))
    return out


def _start_seconds(scan: _Scan, keys: _Keys, started: np.ndarray, end: np.ndarray) -> np.ndarray:
    """``[start=Sun Dec  6 07:22:39 2026]`` (conntrack -o timestamp) as seconds, read as UTC;
    NaN where there is none. The date spans tokens up to the one ending in ``]``."""
    u8, ts, te = scan.u8, scan.ts, scan.te
    last = len(ts) - 1
    stop = np.full(len(started), -1, dtype=np.int64)
    for j in range(6):
        t = started + j
        closes = (started >= 0) & (t < end) & (u8[te[np.minimum(t, last)] - 1] == ord("]")) & (stop < 0)
        stop[closes] = t[closes]
    ok = stop >= 0
    out = np.full(len(started), np.nan)
    if not ok.any():
        return out
    text = _strings(u8, keys.eq[started[ok]] + 1, te[stop[ok]] - 1).dictionary_encode()
    words = text.dictionary.to_pylist()
    values = np.array([_ctime(w) for w in words] or [np.nan], dtype=np.float64)
    out[ok] = values[np.asarray(text.indices.to_numpy(zero_copy_only=False))]
    return out


def _ctime(text: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(text.strip(), "%a %b %d %H:%M:%S %Y")))
    except ValueError:
        return float("nan")


# --------------------------------------------------------------------------- Hubble


def read_hubble(f: IO[bytes], stats: ReadStats, chunk: int = 1 << 16) -> Iterator[Any]:
    """Cilium Hubble's flows as ``hubble observe -o jsonpb`` prints them (and the Hubble
    exporter writes them): one JSON object per line, each flow wrapped as GetFlowsResponse
    ``{"flow": {...}, "node_name": ..., "time": ...}`` (Hubble 0.8 on), or the bare Flow
    (``-o json``, older releases). Field names are flow.proto's (``IP``, ``l4``, ``TCP``,
    ``source_port``, ``pod_name``, ``is_reply``, ``traffic_direction``, ...; protojson's
    lowerCamelCase spellings are read too); a port left out is 0, as protojson omits zeros.
    ``time`` is the flow's (RFC 3339) or else the response's. See the module docstring for
    the common columns.

    Own columns (strings unless said): ``hubble_verdict`` (FORWARDED, DROPPED, ...),
    ``hubble_source_pod`` and ``hubble_destination_pod`` (``namespace/pod_name``; null when
    the endpoint is no pod), ``hubble_node``, ``hubble_is_reply`` (bool; null when Hubble
    does not know), ``hubble_direction`` (``traffic_direction``: INGRESS, EGRESS).

    Skipped: ``not JSON``, ``not UTF-8``, ``not a JSON object``, ``not a flow (lost_events)``
    (Hubble's other events), ``not a Hubble flow``, ``no IP (L7 record)`` and ``no L4 (L7
    record)`` (what the flow is, from ``Type``, when it says), ``not TCP, UDP or SCTP
    (ICMPv4)``, ``sport: not a port``, ``src: not an IP address``, ``addresses of different
    families``, ``line longer than 1 MiB``."""
    out = _Chunks(chunk)
    for first, block in _blocks(f, stats):
        cols: tuple[list[Any], ...] = tuple([] for _ in range(12))
        adds = tuple(c.append for c in cols)
        for i, raw in enumerate(block.split(b"\n")[:-1]):
            line = raw.strip()
            if not line:
                continue
            stats.records += 1
            got = _hubble(line)
            if isinstance(got, str):
                stats.skip(got, first + i)
                continue
            adds[0](first + i)
            for add, value in zip(adds[1:], got, strict=True):
                add(value)
        yield from out.add(_hubble_table(cols, stats))
    yield from out.flush()


def _hubble_table(cols: tuple[list[Any], ...], stats: ReadStats) -> Any:
    pa = _pa()
    if not cols[0]:
        return None
    numbers = np.array(cols[0], dtype=np.uint64)
    src, dst = pa.array(cols[1], pa.string()), pa.array(cols[2], pa.string())
    keep = np.ones(len(numbers), dtype=bool)

    def drop(mask: np.ndarray, reason: str) -> None:
        gone = keep & mask
        _skip(stats, reason, numbers[gone])
        keep[gone] = False

    _drop_addresses({"src": _families(src), "dst": _families(dst)}, drop)
    mask = None if keep.all() else pa.array(keep)
    table = _flow_table(numbers, src, dst, np.array(cols[3], dtype=np.int32), np.array(cols[4], dtype=np.int32),
                        np.array(cols[5], dtype=np.int8), pa.array(cols[6], pa.float64()), {
                            "hubble_verdict": pa.array(cols[7], pa.string()),
                            "hubble_source_pod": pa.array(cols[8], pa.string()),
                            "hubble_destination_pod": pa.array(cols[9], pa.string()),
                            "hubble_node": pa.array(cols[10], pa.string()),
                            "hubble_is_reply": pa.array([r[0] for r in cols[11]], pa.bool_()),
                            "hubble_direction": pa.array([r[1] for r in cols[11]], pa.string()),
                        })
    return table if mask is None else table.filter(mask)


def _get(d: dict[str, Any], snake: str, camel: str) -> Any:
    value = d.get(snake)
    return d.get(camel) if value is None else value


def _port(value: Any) -> int | None:
    if value is None:
        return 0  # protojson leaves zeros out
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isdigit() and value.isascii():
        value = int(value)
    return value if isinstance(value, int) and 0 <= value <= 65535 else None


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _pod(endpoint: Any) -> str | None:
    if not isinstance(endpoint, dict):
        return None
    pod = _get(endpoint, "pod_name", "podName")
    if not isinstance(pod, str) or not pod:
        return None
    ns = endpoint.get("namespace")
    return f"{ns}/{pod}" if isinstance(ns, str) and ns else pod


_L4_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,15}\Z", re.ASCII)


def _hubble(line: bytes) -> tuple[Any, ...] | str:
    """One line's values (src, dst, sport, dport, proto index, time, verdict, source pod,
    destination pod, node, (is_reply, direction)), or why it is not a lookup."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return NOT_UTF8
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return "not JSON"
    if not isinstance(obj, dict):
        return "not a JSON object"
    flow = obj.get("flow")
    outer: dict[str, Any] = obj
    if not isinstance(flow, dict):
        event = next((k for k in _HUBBLE_EVENTS if k in obj), None)
        if event is not None:
            return f"not a flow ({event})"
        if "flow" in obj or not any(k in obj for k in _HUBBLE_FLOW_KEYS):
            return "not a Hubble flow"
        flow, outer = obj, {}
    kind = flow.get("Type")
    what = f" ({kind} record)" if isinstance(kind, str) and _L4_NAME.match(kind) else ""
    ip = flow.get("IP")
    src = ip.get("source") if isinstance(ip, dict) else None
    dst = ip.get("destination") if isinstance(ip, dict) else None
    if not (isinstance(src, str) and src and isinstance(dst, str) and dst):
        return f"no IP{what}"
    l4 = flow.get("l4")
    if not isinstance(l4, dict) or not l4:
        return f"no L4{what}"
    proto = next((i for i, name in enumerate(PROTOS) if l4.get(name) is not None), -1)
    if proto < 0:
        key = next(iter(l4))
        return f"not TCP, UDP or SCTP ({key if _L4_NAME.match(key) else 'unknown'})"
    ports = l4[PROTOS[proto]]
    if not isinstance(ports, dict):
        ports = {}
    sport = _port(_get(ports, "source_port", "sourcePort"))
    if sport is None:
        return "sport: not a port"
    dport = _port(_get(ports, "destination_port", "destinationPort"))
    if dport is None:
        return "dport: not a port"
    reply = _get(flow, "is_reply", "isReply")
    if not isinstance(reply, bool):
        reply = True if flow.get("reply") is True else None  # the deprecated bool: only true is sure
    direction = _text(_get(flow, "traffic_direction", "trafficDirection"))
    node = _text(_get(flow, "node_name", "nodeName")) or _text(_get(outer, "node_name", "nodeName"))
    when = rfc3339(flow.get("time"))
    return (src, dst, sport, dport, proto, rfc3339(outer.get("time")) if when is None else when,
            _text(flow.get("verdict")), _pod(flow.get("source")), _pod(flow.get("destination")), node,
            (reply, direction))


_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(\.\d{1,9})?(?:[Zz]|([+-])(\d\d):(\d\d))\Z",
                      re.ASCII)
_SECONDS: dict[str, float] = {}


def rfc3339(text: Any) -> float | None:
    """An RFC 3339 time (``2024-05-07T10:11:12.123456789Z``, protojson's Timestamp) as
    seconds since the epoch; None if it is not one."""
    if not isinstance(text, str):
        return None
    m = _RFC3339.match(text)
    if m is None:
        return None
    whole = _SECONDS.get(text[:19])
    if whole is None:
        try:
            y, mo, d, h, mi, sec = (int(g) for g in m.groups()[:6])
            stamp = _dt.datetime(y, mo, d, h, mi, sec, tzinfo=_dt.timezone.utc)
        except ValueError:
            return None
        if len(_SECONDS) > 4096:
            _SECONDS.clear()
        whole = _SECONDS[text[:19]] = stamp.timestamp()
    seconds = whole + (float(m.group(7)) if m.group(7) else 0.0)
    if m.group(8):
        seconds -= (1 if m.group(8) == "+" else -1) * (int(m.group(9)) * 3600 + int(m.group(10)) * 60)
    return seconds

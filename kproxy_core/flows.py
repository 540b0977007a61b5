"""Classify tables of flows: pyarrow Tables (and pandas DataFrames) in, the same with
kube-proxy's answer per record out.

Input columns: ``src``, ``dst``, ``dport``, ``proto`` and optionally ``sport`` (0 when
absent). Addresses are strings (IPv4 and IPv6 mixed, as inet_pton reads them, parsed in C),
unsigned integers (IPv4), or 16-byte binaries (IPv4 mapped, as kproxy_core.captures
writes them); ports integers or decimal strings; ``proto`` a name (``TCP``,
``udp``, ...) or a number (6, 17, 132). Records are looked up in table order through the
engine's batch path (flows are tracked unless ``track=False``), one family at a time.

Added columns: ``verdict`` (DNAT, REJECT, DROP, PASS; null for a bad record), ``namespace``,
``service``, ``port_name``, ``frontend``, ``endpoint_ip``, ``endpoint_port``,
``endpoint_node`` and ``endpoint_pod`` (from the cluster's EndpointSlices, when known),
``masquerade``, and ``error`` (why a record could not be classified; null otherwise). Bad
records are kept, never dropped: their ``error`` says what was wrong.

pyarrow is an optional dependency: ``pip install 'kproxy-core[flows]'``.
"""

from __future__ import annotations

import ipaddress
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .addresses import join_host_port
from .engine import VERDICT_NAMES, core_module
from .errors import KproxyError

if TYPE_CHECKING:
    from .engine import Engine

REQUIRED = ("src", "dst", "dport", "proto")
ADDED = ("verdict", "namespace", "service", "port_name", "frontend", "endpoint_ip", "endpoint_port",
         "endpoint_node", "endpoint_pod", "masquerade", "error")
DENSE_SPAN = 1 << 22  # IPv4 endpoint ranges up to a /10 get a direct table (16 MiB)
_PROTO_NAMES = {"TCP": 6, "UDP": 17, "SCTP": 132, "6": 6, "17": 17, "132": 132}


class FlowError(KproxyError):
    """A table that cannot be classified at all (a missing column, an unreadable type)."""


def _pa() -> Any:
    try:
        import pyarrow
    except ImportError:  # pragma: no cover - the flows extra is missing
        raise FlowError("flow tables need pyarrow (pip install 'kproxy-core[flows]')") from None
    return pyarrow


@dataclass
class Stats:
    """What a classification saw: records, bad ones (by reason), verdicts."""

    records: int = 0
    bad: dict[str, int] = field(default_factory=dict)
    verdicts: dict[str, int] = field(default_factory=dict)

    def add(self, other: Stats) -> None:
        self.records += other.records
        for mine, theirs in ((self.bad, other.bad), (self.verdicts, other.verdicts)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v


def classify(table: Any, engine: Engine, *, track: bool = True, now: float | np.ndarray | None = None,
             stats: Stats | None = None) -> Any:
    """``table`` (a pyarrow Table or RecordBatch, or a pandas DataFrame) with kube-proxy's
    answer per record appended (see the module docstring); the same type comes back.

    ``now``, the clock of flow and affinity timeouts: one time for every record, or a
    float64 array with each record's; None: each record's ``time`` column (seconds, or a
    timestamp type; a record without one takes the time of the record before it) if the
    table has one, else the wall clock."""
    pa = _pa()
    as_pandas = type(table).__module__.startswith("pandas")
    if as_pandas:
        t = pa.Table.from_pandas(table, preserve_index=False)
    elif isinstance(table, pa.RecordBatch):
        t = pa.Table.from_batches([table])
    elif isinstance(table, pa.Table):
        t = table
    else:
        raise FlowError(f"classify: a pyarrow Table or a pandas DataFrame, not {type(table).__name__}")
    check_columns(t.column_names)
    if now is None and "time" in t.column_names:
        now = fill_times(times_of(t))
    out = t
    for name, col in _answer(t, engine, track, now, stats).items():
        out = out.append_column(name, col)
    if as_pandas:
        return out.to_pandas()
    if isinstance(table, pa.RecordBatch):
        return out.combine_chunks().to_batches()[0] if out.num_rows else pa.RecordBatch.from_pylist([], out.schema)
    return out


def check_columns(names: Any) -> None:
    """FlowError unless the column names hold every one classify needs and none it adds."""
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise FlowError(f"classify: the table has no column {', '.join(missing)} (needs {', '.join(REQUIRED)}"
                        ", and sport optionally)")
    clash = [c for c in ADDED if c in names]
    if clash:
        raise FlowError(f"classify: the table already has the column(s) {', '.join(clash)} this adds")


def _column(t: Any, name: str) -> Any:
    col = t.column(name)
    return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)


def _addresses(arr: Any, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(family, v4, v6) of an address column (family 0: not an address, or null)."""
    pa = _pa()
    n = len(arr)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if arr.null_count == 0 and pa.types.is_uint32(arr.type):  # every one an IPv4 address, as it is
        return np.full(n, 4, dtype=np.uint8), arr.to_numpy(), np.zeros((n, 16), dtype=np.uint8)
    valid = np.ones(n, dtype=bool) if arr.null_count == 0 else np.asarray(arr.is_valid().to_numpy(zero_copy_only=False))
    if pa.types.is_integer(arr.type):
        values = arr.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        fam = np.where(valid & (values >= 0) & (values <= 0xFFFFFFFF), 4, 0).astype(np.uint8)
        return fam, np.where(fam == 4, values, 0).astype(np.uint32), np.zeros((n, 16), dtype=np.uint8)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        wide = pa.types.is_large_string(arr.type)
        bufs = arr.buffers()
        off = np.frombuffer(bufs[1], dtype=np.int64 if wide else np.int32)[arr.offset: arr.offset + n + 1]
        data = bufs[2] if bufs[2] is not None else b""
        fam, v4, v6 = core_module().parse_ips(off, memoryview(data), valid)
        return fam, v4, v6
    if pa.types.is_fixed_size_binary(arr.type) and arr.type.byte_width == 16:
        # 16-byte addresses (kproxy_core.captures): IPv4 mapped into ::ffff:0:0/96
        raw = np.frombuffer(arr.buffers()[1], dtype=np.uint8)[arr.offset * 16:(arr.offset + n) * 16].reshape(n, 16)
        fam, v4 = core_module().split_mapped(raw, None if arr.null_count == 0 else valid)
        return fam, v4, raw
    raise FlowError(f"classify: column {name}: {arr.type} is not a string, integer or 16-byte binary type")


def _ints(arr: Any, name: str, lo: int, hi: int, default: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(values, ok) of a port column: integers, or decimal strings (ok None: all are)."""
    pa = _pa()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        enc = arr.dictionary_encode()
        words = enc.dictionary.to_pylist()
        table = np.array([int(w) if isinstance(w, str) and w.strip().isdigit() else -1 for w in words] or [-1],
                         dtype=np.int64)
        idx = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        values = np.where(idx >= 0, table[np.maximum(idx, 0)], -1)
    elif arr.null_count == 0 and pa.types.is_uint16(arr.type) and lo == 0 and hi == 65535:
        return arr.to_numpy(), None  # every value a port, as it is
    elif pa.types.is_integer(arr.type):
        values = arr.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        if arr.null_count:
            values[~np.asarray(arr.is_valid().to_numpy(zero_copy_only=False))] = -1
    else:
        raise FlowError(f"classify: column {name}: {arr.type} is not an integer or string type")
    if default is not None and arr.null_count:
        values = np.where(np.asarray(arr.is_valid().to_numpy(zero_copy_only=False)), values, default)
    ok = (values >= lo) & (values <= hi)
    return values, ok


def _protos(arr: Any) -> tuple[np.ndarray, np.ndarray]:
    pa = _pa()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if arr.null_count == 0 and pa.types.is_uint8(arr.type):  # numbers, as captures give them
        values = arr.to_numpy()
        return values, (values == 6) | (values == 17) | (values == 132)
    if pa.types.is_integer(arr.type):
        values = arr.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    elif pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        enc = arr.dictionary_encode()
        words = enc.dictionary.to_pylist()
        table = np.array([_PROTO_NAMES.get(str(w).strip().upper(), 0) for w in words] or [0], dtype=np.int64)
        idx = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        values = np.where(idx >= 0, table[np.maximum(idx, 0)], 0)
    else:
        raise FlowError(f"classify: column proto: {arr.type} is not an integer or string type")
    ok = (values == 6) | (values == 17) | (values == 132)
    return values, ok


def times_of(table: Any) -> np.ndarray:
    """A table's ``time`` column as float64 seconds (timestamps converted; nulls NaN)."""
    pa = _pa()
    col = _column(table, "time")
    if pa.types.is_timestamp(col.type):
        unit = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[col.type.unit]
        ints = col.cast(pa.int64()).to_numpy(zero_copy_only=False)
        return np.asarray(ints, dtype=np.float64) * unit if not col.null_count else np.where(
            np.asarray(col.is_valid().to_numpy(zero_copy_only=False)), np.asarray(ints, dtype=np.float64) * unit,
            np.nan)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type):
        return np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    raise FlowError(f"classify: column time: {col.type} is not a number of seconds or a timestamp")


def fill_times(t: np.ndarray, first: float = 0.0) -> np.ndarray:
    """``t`` with each missing (non-finite) time replaced by the one before it (``first``
    before any)."""
    bad = ~np.isfinite(t)
    if not bad.any():
        return t
    idx = np.where(~bad, np.arange(len(t)), -1)
    np.maximum.accumulate(idx, out=idx)
    return np.where(idx >= 0, t[np.maximum(idx, 0)], first).astype(np.float64)


def _answer(t: Any, engine: Engine, track: bool, now: float | np.ndarray | None,
            stats: Stats | None) -> dict[str, Any]:
    pa = _pa()
    n = t.num_rows
    errors = np.zeros(n, dtype=np.int8)  # index into REASONS (0: none)
    sf, s4, s6 = _addresses(_column(t, "src"), "src")
    df, d4, d6 = _addresses(_column(t, "dst"), "dst")
    dport, dport_ok = _ints(_column(t, "dport"), "dport", 0, 65535, None)
    sport: np.ndarray | None = None
    sport_ok: np.ndarray | None = None
    if "sport" in t.column_names:
        sport, sport_ok = _ints(_column(t, "sport"), "sport", 0, 65535, 0)
    proto, proto_ok = _protos(_column(t, "proto"))
    # the first reason that applies, in column order
    reasons = ["", "src: not an IP address", "dst: not an IP address", "src and dst are of different IP families",
               "sport: not a port (0-65535)", "dport: not a port (0-65535)", "proto: not TCP, UDP, SCTP or 6, 17, 132"]
    same = sf == df
    if not (proto_ok.all() and (dport_ok is None or dport_ok.all()) and (sport_ok is None or sport_ok.all())
            and same.all() and sf.all()):
        for code, bad in ((6, ~proto_ok), (5, None if dport_ok is None else ~dport_ok),
                          (4, None if sport_ok is None else ~sport_ok), (3, ~same & (sf > 0) & (df > 0)),
                          (2, df == 0), (1, sf == 0)):
            if bad is not None:
                errors[bad] = code

    good = errors == 0
    all_good = bool(good.all())
    fams = [fam for fam in (4, 6) if (sf == fam).any()] if n else []
    if all_good and len(fams) == 1:  # one family, nothing bad: the lookup's own arrays, no scatter
        fam = fams[0]
        args = (dport.astype(np.uint16, copy=False), proto.astype(np.uint8, copy=False),
                None if sport is None else sport.astype(np.uint16, copy=False))
        out = (engine.lookup_batch(s4, d4, *args, now=now, track=track) if fam == 4 else
               engine.lookup_batch6(s6, d6, *args, now=now, track=track))
        verdict, service, frontend = out["verdict"], out["service"], out["frontend"]
        ep_port, masq = out["ep_port"], out["masq"]
        ep4 = out["ep_ip"] if fam == 4 else np.zeros(n, dtype=np.uint32)
        ep6 = out["ep_ip"] if fam == 6 else np.zeros((n, 16), dtype=np.uint8)
    else:
        verdict = np.full(n, -1, dtype=np.int8)
        service = np.full(n, -1, dtype=np.int32)
        frontend = np.zeros(n, dtype=np.int8)
        ep_port = np.zeros(n, dtype=np.int32)
        masq = np.zeros(n, dtype=bool)
        ep4 = np.zeros(n, dtype=np.uint32)
        ep6 = np.zeros((n, 16), dtype=np.uint8)
        for fam in fams:
            idx = np.flatnonzero(good & (sf == fam))
            if not len(idx):
                continue
            args = (dport[idx].astype(np.uint16), proto[idx].astype(np.uint8),
                    None if sport is None else sport[idx].astype(np.uint16))
            clock = now[idx] if isinstance(now, np.ndarray) else now
            if fam == 4:
                out = engine.lookup_batch(s4[idx], d4[idx], *args, now=clock, track=track)
                ep4[idx] = out["ep_ip"]
            else:
                out = engine.lookup_batch6(s6[idx], d6[idx], *args, now=clock, track=track)
                ep6[idx] = out["ep_ip"]
            verdict[idx] = out["verdict"]
            service[idx] = out["service"]
            frontend[idx] = out["frontend"]
            ep_port[idx] = out["ep_port"]
            masq[idx] = out["masq"]

    dnat = verdict == 1
    words = _words(engine)
    cols: dict[str, Any] = {}
    cols["verdict"] = _dict_column(verdict, words.verdicts, _validity(verdict < 0))
    no_service = _validity(service < 0)
    for name in ("namespace", "service", "port_name"):
        cols[name] = _dict_column(service, words.services[name], no_service)
    cols["frontend"] = _dict_column(frontend, words.frontends, _validity(frontend == 0))
    ep_code, known = words.endpoint_codes(ep4, ep6, sf, dnat)
    stale = np.flatnonzero(dnat & ~known)
    if len(stale):  # flows kept to endpoints the dictionaries never had (TCP, as conntrack)
        words.add_addresses(ep4[stale], ep6[stale], sf[stale])
        ep_code, known = words.endpoint_codes(ep4, ep6, sf, dnat)
    gone = ~dnat | ~known
    for name, vocab in (("endpoint_ip", words.ip), ("endpoint_node", words.node), ("endpoint_pod", words.pod)):
        cols[name] = _dict_column(ep_code, vocab, _validity(gone | ~vocab.known[ep_code]))
    cols["endpoint_port"] = pa.array(ep_port, type=pa.uint16(), mask=~dnat)
    cols["masquerade"] = pa.array(masq, type=pa.bool_(), mask=verdict < 0)
    cols["error"] = _dict_column(errors, _Vocab(reasons), _validity(errors == 0))
    if stats is not None:
        stats.records += n
        for code, count in zip(*np.unique(errors[errors > 0], return_counts=True), strict=True):
            stats.bad[reasons[code]] = stats.bad.get(reasons[code], 0) + int(count)
        for code, count in zip(*np.unique(verdict[verdict >= 0], return_counts=True), strict=True):
            stats.verdicts[VERDICT_NAMES[code]] = stats.verdicts.get(VERDICT_NAMES[code], 0) + int(count)
    return cols


class _Vocab:
    """The words of a dictionary column, each once, and where each code's word sits."""

    def __init__(self, words: list[str]) -> None:
        first: dict[str, int] = {}
        self.remap = np.array([first.setdefault(w, len(first)) for w in words or [""]], dtype=np.int32)
        self.identity = len(first) == len(self.remap)  # every word once: codes are indices already
        self.array = _pa().array(list(first), type=_pa().string())


def _validity(null: np.ndarray) -> Any:
    """An Arrow validity bitmap (None: no nulls), shared by the columns with these nulls."""
    if not null.any():
        return None
    return _pa().py_buffer(np.packbits(~null, bitorder="little"))


def _dict_column(codes: np.ndarray, vocab: _Vocab | _Growing, validity: Any) -> Any:
    """A dictionary-encoded string column: the word of ``codes[i]``, null where the
    ``validity`` bitmap says. Codes under a null may be anything from -1 up (-1 reads the
    last word, which the null hides)."""
    pa = _pa()
    # codes as they are when they are the indices already (-1 under a null is never read)
    as_is = vocab.identity and codes.dtype == np.int32 and codes.flags.c_contiguous
    indices = codes if as_is else vocab.remap[codes]
    arr = pa.Array.from_buffers(pa.int32(), len(indices), [validity, pa.py_buffer(indices)])
    return pa.DictionaryArray.from_arrays(arr, vocab.array, safe=False)


class _Growing:
    """A dictionary column's words that only grow: the word of each code (codes are
    assigned outside, from 0 up, and may change word), each word once in ``array``, which
    grows by the words new since it was last made (a copy of the old buffers, no
    re-encoding of the words)."""

    def __init__(self, identity: bool = False) -> None:
        self.first: dict[str, int] = {}
        self.words: list[str] = []
        self.codes = 0
        self._remap = np.zeros(64, dtype=np.int32)
        self._known = np.zeros(64, dtype=bool)
        self.identity = identity  # every code its own word, set in order: codes are the indices
        self._array: Any = None
        self._made = 0

    def set(self, code: int, word: str | None) -> None:
        if code >= len(self._remap):
            size = max(2 * len(self._remap), code + 1)
            self._remap = np.resize(self._remap, size)
            self._known = np.concatenate([self._known, np.zeros(size - len(self._known), dtype=bool)])
        self.codes = max(self.codes, code + 1)
        if word is None:
            self._known[code] = False
            return
        at = self.first.get(word)
        if at is None:
            at = self.first[word] = len(self.words)
            self.words.append(word)
        self._remap[code] = at
        self._known[code] = True
        self.identity = self.identity and at == code

    @property
    def remap(self) -> np.ndarray:
        return self._remap[:max(self.codes, 1)]

    @property
    def known(self) -> np.ndarray:
        return self._known[:max(self.codes, 1)]

    @property
    def array(self) -> Any:
        pa = _pa()
        if self._array is None or self._made < len(self.words):
            new = pa.array(self.words[self._made:] if self._array is not None else self.words or [""],
                           type=pa.string())
            self._array = new if self._array is None else pa.concat_arrays([self._array, new])
            self._made = len(self.words)
        return self._array


class _Words:
    """The dictionaries of classify's string answers for one engine: verdicts, frontends
    (the engine's own kinds: ``Engine.frontend_names``, which its plugins extend), the
    service ports' names, and every endpoint address the engine's EndpointSlices have
    had, with its node and pod. They are kept with the engine and brought up to date after
    each ``apply`` by reading only the EndpointSlices of the Services it recomputed
    (``Engine.changed_since``), so a change costs what it touched. Codes never change: an
    address keeps its code, and its node and pod, after it leaves the cluster (a TCP flow
    may still go there, as conntrack keeps it)."""

    def __init__(self) -> None:
        self.verdicts = _Vocab(list(VERDICT_NAMES))
        self.frontends = _Growing(identity=True)  # code -> kind (code 0, none, is null)
        self.services = {name: _Growing() for name in ("namespace", "service", "port_name")}
        self.n_services = 0
        self.ip, self.node, self.pod = _Growing(identity=True), _Growing(), _Growing()
        self.code: dict[str, int] = {}  # endpoint address text -> code
        self.lo4 = 0
        self.dense4: np.ndarray | None = np.zeros(0, dtype=np.int32)  # address - lo4 -> code (-1: none)
        self.keys4 = np.zeros(0, dtype=np.uint32)  # sorted, with codes4, when no dense table fits
        self.codes4 = np.zeros(0, dtype=np.int64)
        self.keys6 = np.zeros(0, dtype=np.dtype((np.void, 16)))
        self.codes6 = np.zeros(0, dtype=np.int64)
        self.generation = -1

    def sync(self, engine: Engine) -> None:
        """Read what the engine's applies changed since the last sync."""
        kinds = engine.frontend_names
        for code in range(self.frontends.codes, len(kinds)):
            self.frontends.set(code, kinds[code] or "")
        if engine.generation == self.generation:
            return
        changed = engine.changed_since(self.generation)
        cluster = engine.cluster
        slices = (cluster.slices.values() if changed is None else
                  [sl for ns, name in sorted(changed) for sl in cluster.slices_for(ns, name)])
        new4: list[tuple[int, int]] = []
        new6: list[tuple[bytes, int]] = []
        for sl in slices:
            for ep in sl.endpoints:
                pod = ep.target.split(" ", 1)[1] if ep.target and ep.target.startswith("Pod ") else None
                for ip in ep.addresses:
                    code = self._code(ip, new4, new6)
                    self.node.set(code, ep.node_name)
                    self.pod.set(code, pod)
        self._index(new4, new6)
        for i in range(self.n_services, len(engine.service_ports)):
            info = engine.service_ports[i]
            for name, word in (("namespace", info.namespace), ("service", info.service),
                               ("port_name", info.port_name)):
                self.services[name].set(i, word)
        self.n_services = len(engine.service_ports)
        self.generation = engine.generation

    def _code(self, ip: str, new4: list[tuple[int, int]], new6: list[tuple[bytes, int]]) -> int:
        code = self.code.get(ip)
        if code is None:
            code = self.code[ip] = len(self.code)
            self.ip.set(code, ip)
            if ":" in ip:
                new6.append((ipaddress.IPv6Address(ip).packed, code))
            else:
                new4.append((int(ipaddress.IPv4Address(ip)), code))
        return code

    def _index(self, new4: list[tuple[int, int]], new6: list[tuple[bytes, int]]) -> None:
        """Put new addresses in the lookup tables: IPv4 in a direct table over their range
        while it spans at most DENSE_SPAN (one pod range, usually), else sorted arrays."""
        if new4:
            a = np.array([k for k, _ in new4], dtype=np.int64)
            c = np.array([v for _, v in new4], dtype=np.int64)
            dense = self.dense4
            if dense is not None:
                lo = min(int(a.min()), self.lo4) if len(dense) else int(a.min())
                hi = max(int(a.max()), self.lo4 + len(dense) - 1) if len(dense) else int(a.max())
                if hi - lo < DENSE_SPAN:
                    if lo != self.lo4 or hi - lo + 1 != len(dense):  # a wider range: the old one moved in
                        grown = np.full(hi - lo + 1, -1, dtype=np.int32)
                        grown[self.lo4 - lo:self.lo4 - lo + len(dense)] = dense
                        dense, self.lo4 = grown, lo
                        self.dense4 = dense
                    dense[a - lo] = c
                    a = a[:0]
                else:  # too wide: every address so far to the sorted arrays
                    have = np.flatnonzero(dense >= 0)
                    a = np.concatenate([have + self.lo4, a])
                    c = np.concatenate([dense[have].astype(np.int64), c])
                    self.dense4 = None
            if len(a):
                self.keys4, self.codes4 = _insert_sorted(self.keys4, self.codes4, a.astype(np.uint32), c)
        if new6:
            self.keys6, self.codes6 = _insert_sorted(
                self.keys6, self.codes6, np.array([k for k, _ in new6], dtype=self.keys6.dtype),
                np.array([v for _, v in new6], dtype=np.int64))

    def add_addresses(self, ep4: np.ndarray, ep6: np.ndarray, fam: np.ndarray) -> None:
        """Give codes to endpoint addresses never seen (no node or pod known)."""
        new4: list[tuple[int, int]] = []
        new6: list[tuple[bytes, int]] = []
        for a in sorted(set(ep4[fam == 4].tolist())):
            ip = str(ipaddress.IPv4Address(a))
            if ip not in self.code:
                self.node.set(self._code(ip, new4, new6), None)
        for raw in sorted({bytes(r) for r in ep6[fam == 6]}):
            ip = str(ipaddress.IPv6Address(raw))
            if ip not in self.code:
                self.node.set(self._code(ip, new4, new6), None)
        for code in range(self.pod.codes, len(self.code)):
            self.pod.set(code, None)
        self._index(new4, new6)

    def endpoint_codes(self, ep4: np.ndarray, ep6: np.ndarray, fam: np.ndarray,
                       dnat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each DNAT record's endpoint as its code, and whether it has one."""
        codes = np.zeros(len(ep4), dtype=np.int64)
        known = np.zeros(len(ep4), dtype=bool)
        dense = self.dense4
        if dense is not None and len(dense):  # IPv4 through the direct table, IPv6 below
            sel = dnat & (fam == 4)
            offset = ep4.astype(np.int64) - self.lo4
            inside = sel & (offset >= 0) & (offset < len(dense))
            got = np.where(inside, dense[np.where(inside, offset, 0)], -1)
            known = got >= 0
            codes = np.maximum(got, 0).astype(np.int64)
        sorted_tables: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = [
            (self.keys6, self.codes6, np.ascontiguousarray(ep6).view(np.dtype((np.void, 16))).ravel(), 6)]
        if dense is None:
            sorted_tables.append((self.keys4, self.codes4, ep4, 4))
        for keys, values, want_all, f in sorted_tables:
            sel_idx = np.flatnonzero(dnat & (fam == f))
            if not len(sel_idx) or not len(keys):
                continue
            want = want_all[sel_idx]
            pos = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
            hit = keys[pos] == want
            codes[sel_idx] = np.where(hit, values[pos], 0)
            known[sel_idx] = hit
        return codes, known


def _insert_sorted(keys: np.ndarray, codes: np.ndarray, new: np.ndarray,
                   new_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``keys`` (and their ``codes``) with new keys put in place: a sort of the new
    ones and one move of the old, not a sort of all."""
    order = np.argsort(new, kind="stable")
    new, new_codes = new[order], new_codes[order]
    at = np.searchsorted(keys, new)
    return np.insert(keys, at, new), np.insert(codes, at, new_codes)


_WORDS: weakref.WeakKeyDictionary[Any, _Words] = weakref.WeakKeyDictionary()


def _words(engine: Engine) -> _Words:
    got = _WORDS.get(engine)
    if got is None:
        got = _WORDS[engine] = _Words()
    got.sync(engine)
    return got


def endpoints_text(table: Any) -> Iterator[str | None]:
    """``endpoint_ip:endpoint_port`` per record of a classified table (None where not DNAT)."""
    for ip, port in zip(table.column("endpoint_ip").to_pylist(), table.column("endpoint_port").to_pylist(),
                        strict=True):
        yield None if ip is None else join_host_port(ip, port)

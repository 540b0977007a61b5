"""Pure-Python twin of the compiled core (``kproxy_core._engine``): the same API and results.

It is the reference in differential tests and the baseline in benchmarks. The flow
and affinity tables are the same bounded, bucketed hash tables as in C (same hash,
same buckets, same eviction), so both twins agree packet for packet, also under
table pressure.

Hash of a packet (64-bit splitmix finaliser, seeded):
  IPv4: h = mix(seed ^ (src << 32 | dst)); h = mix(h ^ (sport << 24 | dport << 8 | proto))
  IPv6: the four 64-bit halves of src and dst, then the ports, folded the same way.
Endpoint pick: ((h >> 32) * n) >> 32 (multiply-shift, no modulo bias) for kube-proxy's
random choice; the other selectors run the reference code of kproxy_core.selectors
(alias tables, round-robin cursors, Maglev lookup tables), which the C core mirrors.
Flow bucket: (h >> 16) & (buckets - 1), tag h & 0xffff (0 -> 1); 8 slots per bucket.
"""

from __future__ import annotations

import ipaddress
import math
import operator
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from .errors import EngineError, PacketError
from .selectors import (
    MAX_WEIGHT,
    SELECTOR_CODES,
    AliasTable,
    RoundRobin,
    alias_pick,
    alias_table,
    check_maglev,
    maglev_fill,
    maglev_slot,
    mix,
    pick,
    selector_hash,
)
from .tables import FRONTEND_NAMES, MAX_FRONTEND_KINDS, VERDICTS, FamilyTables

M64 = (1 << 64) - 1
SLOTS = 8
LOOP4 = 0x7F000000
LOOP6 = 1
PROTO_IN = {"TCP": 6, "UDP": 17, "SCTP": 132, "tcp": 6, "udp": 17, "sctp": 132}
AFFINITY_SALT = 0x9E3779B97F4A7C15
# what an update does with a flow whose endpoint left its service: "udp" drops the UDP
# ones only, as kube-proxy's conntrack cleanup (TCP and SCTP entries stay until they
# time out, still DNATed to the old endpoint); "all" drops every one
STALE_FLOWS = ("udp", "all")
# engine.OUT_DTYPE / OUT6_DTYPE (engine imports this module, so they are spelled out here)
OUT_DTYPE = np.dtype(
    [("verdict", "u1"), ("service", "<i4"), ("frontend", "u1"), ("ep_ip", "<u4"),
     ("ep_port", "<u2"), ("masq", "?")]
)
OUT6_DTYPE = np.dtype(
    [("verdict", "u1"), ("service", "<i4"), ("frontend", "u1"), ("ep_ip", "u1", (16,)),
     ("ep_port", "<u2"), ("masq", "?")]
)


def packet_hash(seed: int, v6: bool, src: int, dst: int, sport: int, dport: int, proto: int) -> int:
    ports = (sport << 24) | (dport << 8) | proto
    if not v6:
        return mix(mix(seed ^ ((src << 32) | dst)) ^ ports)
    h = mix(seed ^ (src >> 64))
    h = mix(h ^ (src & M64))
    h = mix(h ^ (dst >> 64))
    h = mix(h ^ (dst & M64))
    return mix(h ^ ports)


def affinity_hash(seed: int, v6: bool, service: int, src: int) -> int:
    base = (seed + AFFINITY_SALT) & M64
    if not v6:
        return mix(base ^ ((service << 32) | src))
    return mix(mix(mix(base ^ service) ^ (src >> 64)) ^ (src & M64))


def maglev_table(offsets: Sequence[int], skips: Sequence[int], weights: Sequence[int], size: int) -> np.ndarray:
    """The Maglev lookup table (int32, ``size`` entries) of endpoints given by their
    permutations: :func:`kproxy_core.selectors.maglev_fill` as an array."""
    offs, sks, ws = (_int_list(x, name) for x, name in ((offsets, "offsets"), (skips, "skips"), (weights, "weights")))
    size = operator.index(size)
    check_maglev(offs, sks, ws, size)
    return np.array(maglev_fill(offs, sks, ws, size), dtype=np.int32)


def split_mapped(raw: Any, validity: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Families and IPv4 addresses of (n, 16) uint8 addresses, IPv4 mapped into
    ``::ffff:0:0/96`` (what kproxy_core.captures writes): family 4 and the address for a
    mapped one, 6 for any other, 0 where ``validity`` is False. Returns ``(family, v4)``."""
    a = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, 16)
    n = len(a)
    ok = np.ones(n, dtype=bool) if validity is None else np.ascontiguousarray(validity, dtype=bool)
    if len(ok) != n:
        raise ValueError("split_mapped: validity must hold one entry per address")
    family = np.zeros(n, dtype=np.uint8)
    v4 = np.zeros(n, dtype=np.uint32)
    for i in range(n):
        if not ok[i]:
            continue
        b = bytes(a[i])
        if b[:12] == b"\0" * 10 + b"\xff\xff":
            family[i] = 4
            v4[i] = int.from_bytes(b[12:], "big")
        else:
            family[i] = 6
    return family, v4


def parse_ips(offsets: Any, data: Any, validity: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Addresses of a column of strings (Arrow's layout: ``n + 1`` offsets into ``data``),
    parsed by the C library's inet_pton (``socket.inet_pton``). Returns ``(family, v4, v6)``:
    uint8 ``4``/``6``/``0`` (not an address, or missing where ``validity`` is False), uint32
    addresses, and (n, 16) uint8 addresses. ValueError for offsets that do not fit the data."""
    off = np.ascontiguousarray(offsets, dtype=np.int64)
    raw = bytes(data)
    n = len(off) - 1
    if n < 0:
        raise ValueError("parse_ips: offsets must hold n + 1 entries")
    ok = None if validity is None else np.ascontiguousarray(validity, dtype=np.uint8)
    if ok is not None and len(ok) != n:
        raise ValueError("parse_ips: validity must hold one entry per string")
    for i in range(n):
        if off[i] < 0 or off[i + 1] < off[i] or off[i + 1] > len(raw):
            raise ValueError(f"parse_ips: offsets[{i}:{i + 2}] = {off[i]}, {off[i + 1]} do not fit {len(raw)} bytes")
    family = np.zeros(n, dtype=np.uint8)
    v4 = np.zeros(n, dtype=np.uint32)
    v6 = np.zeros((n, 16), dtype=np.uint8)
    for i in range(n):
        if ok is not None and not ok[i]:
            continue
        text = raw[off[i]:off[i + 1]]
        if not 0 < len(text) <= 63 or b"\0" in text:
            continue
        af = socket.AF_INET6 if b":" in text else socket.AF_INET
        try:
            packed = socket.inet_pton(af, text.decode("latin-1"))
        except (OSError, ValueError):
            continue
        if af == socket.AF_INET6:
            v6[i] = np.frombuffer(packed, dtype=np.uint8)
            family[i] = 6
        else:
            v4[i] = int.from_bytes(packed, "big")
            family[i] = 4
    return family, v4, v6


_SKIP_NOT_IP, _SKIP_FRAGMENT, _SKIP_TRUNCATED, _SKIP_OTHER_PROTOCOL, _SKIP_LINKTYPE = range(5)
_LINKTYPES_READ = (1, 113, 276, 101, 12, 14, 228, 229)
_ETHER_IP = (0x0800, 0x86DD)


def _frame(p: bytes, linktype: int) -> tuple[int, bytes, bytes, int, int, int] | int:
    """One frame: (family, src, dst, sport, dport, proto) with 16-byte addresses (IPv4
    mapped), or a skip reason."""
    off = 0
    if linktype == 1:  # Ethernet, then 802.1Q / 802.1ad tags
        if len(p) < 14:
            return _SKIP_TRUNCATED
        etype, off = int.from_bytes(p[12:14], "big"), 14
        while etype in (0x8100, 0x88A8, 0x9100):
            if len(p) < off + 4:
                return _SKIP_TRUNCATED
            etype, off = int.from_bytes(p[off + 2:off + 4], "big"), off + 4
        if etype not in _ETHER_IP:
            return _SKIP_NOT_IP
    elif linktype in (113, 276):  # Linux cooked captures, v1 and v2
        head, at = (16, 14) if linktype == 113 else (20, 0)
        if len(p) < head:
            return _SKIP_TRUNCATED
        if int.from_bytes(p[at:at + 2], "big") not in _ETHER_IP:
            return _SKIP_NOT_IP
        off = head
    if len(p) < off + 1:
        return _SKIP_TRUNCATED
    version = p[off] >> 4
    if version == 4:
        if len(p) < off + 20:
            return _SKIP_TRUNCATED
        ihl = (p[off] & 15) * 4
        if ihl < 20:
            return _SKIP_TRUNCATED
        if int.from_bytes(p[off + 6:off + 8], "big") & 0x3FFF:
            return _SKIP_FRAGMENT
        proto = p[off + 9]
        src = bytes(10) + b"\xff\xff" + p[off + 12:off + 16]
        dst = bytes(10) + b"\xff\xff" + p[off + 16:off + 20]
        off += ihl
    elif version == 6:
        if len(p) < off + 40:
            return _SKIP_TRUNCATED
        nh, src, dst = p[off + 6], p[off + 8:off + 24], p[off + 24:off + 40]
        off += 40
        while nh in (0, 43, 60, 44, 51):
            if len(p) < off + 8:
                return _SKIP_TRUNCATED
            if nh == 44:
                if int.from_bytes(p[off + 2:off + 4], "big") & 0xFFF9:
                    return _SKIP_FRAGMENT
                hl = 8
            elif nh == 51:
                hl = (p[off + 1] + 2) * 4
            else:
                hl = (p[off + 1] + 1) * 8
            nh, off = p[off], off + hl
        proto = nh
    else:
        return _SKIP_NOT_IP
    if proto not in (6, 17, 132):
        return _SKIP_OTHER_PROTOCOL
    if len(p) < off + 4:
        return _SKIP_TRUNCATED
    return (version, src, dst, int.from_bytes(p[off:off + 2], "big"), int.from_bytes(p[off + 2:off + 4], "big"),
            proto)


def scan_pcap(data: Any, pos: int, swapped: bool, nanos: bool, linktype: int, max_packets: int) -> tuple[Any, ...]:
    """The records of a classic pcap file from ``data[pos:]`` (see the compiled core's
    ``scan_pcap``): ``(pos, n, time, src, dst, family, sport, dport, proto, length, skipped,
    where)``."""
    raw = bytes(data)
    if pos < 0 or pos > len(raw) or max_packets < 0:
        raise ValueError("scan_pcap: pos or max_packets out of range")
    order: Literal["big", "little"] = "big" if swapped else "little"
    rows: list[tuple[float, int, bytes, bytes, int, int, int, int]] = []
    skipped = np.zeros(5, dtype=np.int64)
    where = np.full((5, SKIP_EXAMPLES), -1, dtype=np.int64)
    records = 0
    while len(rows) < max_packets and pos + 16 <= len(raw):
        sec = int.from_bytes(raw[pos:pos + 4], order)
        frac = int.from_bytes(raw[pos + 4:pos + 8], order)
        incl = int.from_bytes(raw[pos + 8:pos + 12], order)
        if incl > 262144:
            raise ValueError(f"scan_pcap: a record at byte {pos} claims {incl} bytes: not a pcap record")
        if pos + 16 + incl > len(raw):
            break
        got = _frame(raw[pos + 16:pos + 16 + incl], linktype)
        if isinstance(got, int):
            _skip(skipped, where, got, records)
        else:
            fam, src, dst, sport, dport, proto = got
            rows.append((sec + frac * (1e-9 if nanos else 1e-6), fam, src, dst, sport, dport, proto,
                         int.from_bytes(raw[pos + 12:pos + 16], order)))
        records += 1
        pos += 16 + incl
    return (pos, records, *_columns(rows), skipped, where)


SKIP_EXAMPLES = 5  # skipped packets whose numbers a scan returns, per reason


def _skip(skipped: np.ndarray, where: np.ndarray, reason: int, number: int) -> None:
    if skipped[reason] < SKIP_EXAMPLES:
        where[reason, skipped[reason]] = number
    skipped[reason] += 1


def _columns(rows: list[tuple[float, int, bytes, bytes, int, int, int, int]]) -> tuple[np.ndarray, ...]:
    n = len(rows)
    return (
        np.array([r[0] for r in rows], dtype=np.float64),
        np.frombuffer(b"".join(r[2] for r in rows), dtype=np.uint8).reshape(n, 16).copy(),
        np.frombuffer(b"".join(r[3] for r in rows), dtype=np.uint8).reshape(n, 16).copy(),
        np.array([r[1] for r in rows], dtype=np.uint8),
        np.array([r[4] for r in rows], dtype=np.uint16),
        np.array([r[5] for r in rows], dtype=np.uint16),
        np.array([r[6] for r in rows], dtype=np.uint8),
        np.array([r[7] for r in rows], dtype=np.uint32),
    )


def scan_pcapng(data: Any, pos: int, swapped: bool, linktypes: Any, ticks: Any, max_packets: int) -> tuple[Any, ...]:
    """The blocks of one pcapng section from ``data[pos:]`` (see the compiled core's
    ``scan_pcapng``): ``(pos, n, time, src, dst, family, sport, dport, proto, length, skipped,
    where, stop)``."""
    raw = bytes(data)
    lts = [int(x) for x in linktypes]
    tks = [float(x) for x in ticks]
    if pos < 0 or pos > len(raw) or max_packets < 0 or len(tks) != len(lts):
        raise ValueError("scan_pcapng: pos, max_packets or the interfaces out of range")
    order: Literal["big", "little"] = "big" if swapped else "little"

    def u32(at: int) -> int:
        return int.from_bytes(raw[at:at + 4], order)

    rows: list[tuple[float, int, bytes, bytes, int, int, int, int]] = []
    skipped = np.zeros(5, dtype=np.int64)
    where = np.full((5, SKIP_EXAMPLES), -1, dtype=np.int64)
    records = stop = 0
    while len(rows) < max_packets and pos + 12 <= len(raw):
        btype, blen = u32(pos), u32(pos + 4)
        if btype == 0x0A0D0D0A:
            stop = 1
            break
        if blen < 12 or blen % 4 or blen > 16777216:
            raise ValueError(f"scan_pcapng: the block at byte {pos} is malformed (type {btype:#x}, length {blen})")
        if pos + blen > len(raw):
            break
        if btype == 1:
            stop = 2
            break
        if btype in (6, 3):
            if btype == 6:
                if blen < 32:
                    raise ValueError(f"scan_pcapng: the block at byte {pos} is malformed (type {btype:#x}, "
                                     f"length {blen})")
                iface, caplen, data_at = u32(pos + 8), u32(pos + 20), pos + 28
                ts = (u32(pos + 12) << 32) | u32(pos + 16)
                wire = u32(pos + 24)
                if data_at + caplen > pos + blen - 4:
                    raise ValueError(f"scan_pcapng: the block at byte {pos} is malformed (type {btype:#x}, "
                                     f"length {blen})")
            else:
                if blen < 16:
                    raise ValueError(f"scan_pcapng: the block at byte {pos} is malformed (type {btype:#x}, "
                                     f"length {blen})")
                iface, ts, caplen, data_at = 0, 0, min(u32(pos + 8), blen - 16), pos + 12
                wire = u32(pos + 8)
            if iface >= len(lts):
                raise ValueError(f"scan_pcapng: a packet at byte {pos} names interface {iface}, which no block "
                                 "described")
            got = (_frame(raw[data_at:data_at + caplen], lts[iface]) if lts[iface] in _LINKTYPES_READ
                   else _SKIP_LINKTYPE)
            if isinstance(got, int):
                _skip(skipped, where, got, records)
            else:
                fam, src, dst, sport, dport, proto = got
                rows.append((ts * tks[iface], fam, src, dst, sport, dport, proto, wire))
            records += 1
        pos += blen
    return (pos, records, *_columns(rows), skipped, where, stop)


def _int_list(x: Any, name: str) -> list[int]:
    try:
        return [operator.index(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    except TypeError:
        raise ValueError(f"maglev: {name} must be a sequence of integers") from None


class Decision:
    """What kube-proxy does with one packet (see ``kproxy_core.Engine.lookup``)."""

    __slots__ = ("endpoint", "frontend", "masquerade", "service", "service_index", "verdict")

    def __init__(
        self,
        verdict: str,
        service: str | None,
        service_index: int,
        frontend: str | None,
        endpoint: tuple[str, int] | None,
        masquerade: bool,
    ) -> None:
        self.verdict = verdict
        self.service = service
        self.service_index = service_index
        self.frontend = frontend
        self.endpoint = endpoint
        self.masquerade = masquerade

    def __repr__(self) -> str:
        return (
            f"Decision(verdict={self.verdict!r}, service={self.service!r}, "
            f"frontend={self.frontend!r}, endpoint={self.endpoint!r}, "
            f"masquerade={self.masquerade!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not hasattr(other, "verdict"):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k, None) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


class _Bucketed:
    """Bounded hash table: buckets of SLOTS slots, 16-bit tags, evict the oldest."""

    def __init__(self, capacity: int) -> None:
        nb = 1
        while nb * SLOTS < capacity:
            nb <<= 1
            if nb > 1 << 34:  # as the compiled core (an infinite capacity looped forever)
                raise MemoryError(f"table capacity {capacity!r} is too large")
        self.nbuckets = nb
        self.tags = [0] * (nb * SLOTS)
        self.stamp = [0.0] * (nb * SLOTS)  # expiry (flows) or last use (affinity)
        self.vals: list[Any] = [None] * (nb * SLOTS)
        self.count = 0

    def slot_range(self, h: int) -> tuple[range, int]:
        b = (h >> 16) & (self.nbuckets - 1)
        tag = (h & 0xFFFF) or 1
        return range(b * SLOTS, b * SLOTS + SLOTS), tag

    def find(self, h: int, key: tuple[int, ...]) -> int:
        slots, tag = self.slot_range(h)
        for s in slots:
            if self.tags[s] == tag and self.vals[s][0] == key:
                return s
        return -1

    def place(self, h: int, key: tuple[int, ...], now: float, live: bool) -> int:
        """A slot for key: its own, else empty, else stale, else the oldest one."""
        slots, tag = self.slot_range(h)
        free = stale = -1
        oldest = slots.start
        for s in slots:
            t = self.tags[s]
            if t == 0:
                if free < 0:
                    free = s
                continue
            if t == tag and self.vals[s][0] == key:
                return s
            if stale < 0 and not live and self.stamp[s] <= now:
                stale = s
            if self.stamp[s] < self.stamp[oldest]:
                oldest = s
        s = free if free >= 0 else stale if stale >= 0 else oldest
        if self.tags[s] == 0:
            self.count += 1
        self.tags[s] = tag
        return s

    def clear(self) -> None:
        n = len(self.tags)
        self.tags = [0] * n
        self.stamp = [0.0] * n
        self.vals = [None] * n
        self.count = 0

    def drop(self, s: int) -> None:
        if self.tags[s]:
            self.tags[s] = 0
            self.vals[s] = None
            self.count -= 1


class _Port:
    """One service port: its two pools (entries ``(address, port, text)``; the text is the
    model's address string), selector and selector state, and the keys its records hold."""

    __slots__ = ("affinity", "alias", "keys", "pools", "rr", "seed", "selector", "svc", "tables", "weights")

    def __init__(self, svc: int, affinity: int, selector: int, seed: int) -> None:
        self.svc = svc
        self.affinity = affinity
        self.selector = selector
        self.seed = seed
        self.pools: list[list[tuple[int, int, str]]] = [[], []]
        self.weights: list[list[int]] = [[], []]
        self.tables: list[list[int]] = [[], []]
        self.alias: list[AliasTable | None] = [None, None]
        self.rr: list[RoundRobin | None] = [None, None]
        self.keys: list[tuple[bool, tuple[int, ...]]] = []  # (NodePort?, key) of its records

    def same_pool(self, which: int, other: _Port) -> bool:
        """The same endpoints in the same order with the same weights (round-robin carry)."""
        return (self.weights[which] == other.weights[which]
                and [e[:2] for e in self.pools[which]] == [e[:2] for e in other.pools[which]])

    def has(self, ep: tuple[int, int, str]) -> bool:
        return any(e[0] == ep[0] and e[1] == ep[1] for pool in self.pools for e in pool)


class _Rec:
    """A frontend record: kind, the action byte per source class, the NodePort filter
    action, the KUBE-FW allowed sources (None: no KUBE-FW) and its port."""

    __slots__ = ("action", "fw", "kind", "np_filter", "port")

    def __init__(self, kind: int, action: list[int], np_filter: int,
                 fw: list[tuple[int, int]] | None, port: _Port) -> None:
        self.kind = kind
        self.action = action
        self.np_filter = np_filter
        self.fw = fw
        self.port = port


class _Family:
    def __init__(self, t: FamilyTables, v6: bool, nservices: int, nkinds: int) -> None:
        c = check_tables(t, v6, nservices, nkinds)
        self.v6 = v6
        self.fe: dict[tuple[int, int, int], _Rec] = {}
        self.np: dict[tuple[int, int], _Rec] = {}
        self.ports: dict[int, _Port] = {}
        self._put(c)
        bits = 128 if self.v6 else 32
        full = (1 << bits) - 1
        conv = self._addrs
        self.local = set(conv(c["local_addrs"]))
        self.np_addrs = set(conv(c["np_addrs"]))
        self.np_match_all = c["np_match_all"]
        self.np_loopback = c["np_loopback"]
        self.det_on = c["det_on"]
        prefix = c["det_prefix"]
        self.det_mask = ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1) if self.det_on else 0
        self.det_net = conv(c["det_addr"])[0] if self.det_on else 0
        # nftables' cluster-ips-check (both empty in iptables mode)
        self.cip: dict[int, int] = {}
        for a, svc in zip(conv(c["cip_addr"]), c["cip_service"].tolist(), strict=True):
            self.cip.setdefault(a, svc)
        smasks = [full ^ ((1 << (bits - int(p))) - 1) for p in c["scidr_prefix"]]
        self.scidr = [(a & m, m) for a, m in zip(conv(c["scidr_addr"]), smasks, strict=True)]
        self.check = bool(self.cip) or bool(self.scidr)

    def _put(self, c: dict[str, Any]) -> list[tuple[_Port | None, _Port]]:
        """Install the ports and records of checked tables (a whole family or an update);
        returns (old, new) for every port replaced or added."""
        conv = self._addrs
        bits = 128 if self.v6 else 32
        full = (1 << bits) - 1
        ep_addr = conv(c["ep_addr"])
        ep_port = c["ep_port"].tolist()
        ep_str = c["ep_str"]
        pool_ep = c["pool_ep"].tolist()
        weights = c["pool_weight"].tolist()
        table = c["sel_table"]
        starts, lens = c["port_pool_start"].tolist(), c["port_pool_len"].tolist()
        tstarts, tlens = c["port_table_start"].tolist(), c["port_table_len"].tolist()
        ports: list[_Port] = []
        swapped: list[tuple[_Port | None, _Port]] = []
        for i, (svc, aff, sel, seed) in enumerate(zip(
                c["port_service"].tolist(), c["port_affinity"].tolist(), c["port_selector"].tolist(),
                c["port_seed"].tolist(), strict=True)):
            port = _Port(svc, aff, sel, seed)
            for which in (0, 1):
                st, n = starts[i][which], lens[i][which]
                port.pools[which] = [(ep_addr[e], ep_port[e], ep_str[e]) for e in pool_ep[st:st + n]]
                port.weights[which] = weights[st:st + n]
                ts, tn = tstarts[i][which], tlens[i][which]
                port.tables[which] = table[ts:ts + tn].tolist()
                if sel == SELECTOR_CODES["weighted"]:
                    port.alias[which] = alias_table(port.weights[which])
                elif sel == SELECTOR_CODES["round-robin"]:
                    port.rr[which] = RoundRobin(port.weights[which])
            ports.append(port)
            swapped.append((self.ports.get(svc), port))
            self.ports[svc] = port
        masks = [full ^ ((1 << (bits - int(p))) - 1) for p in c["fw_prefix"]]
        # allowed sources as (network, mask), the network pre-masked (as in C)
        fw = [(a & m, m) for a, m in zip(conv(c["fw_addr"]), masks, strict=True)]
        recs = []
        for port_i, kind, action, npf, fs, fl in zip(
                c["rec_port"].tolist(), c["rec_kind"].tolist(), c["rec_action"].tolist(),
                c["rec_np_filter"].tolist(), c["rec_fw_start"].tolist(), c["rec_fw_len"].tolist(), strict=True):
            recs.append(_Rec(kind, action, npf, fw[fs:fs + fl] if fl else None, ports[port_i]))
        for a, p, pr, r in zip(conv(c["fe_addr"]), c["fe_port"].tolist(), c["fe_proto"].tolist(),
                               c["fe_rec"].tolist(), strict=True):
            self.fe[(a, p, pr)] = recs[r]
            recs[r].port.keys.append((False, (a, p, pr)))
        for p, pr, r in zip(c["np_port"].tolist(), c["np_proto"].tolist(), c["np_rec"].tolist(), strict=True):
            self.np[(p, pr)] = recs[r]
            recs[r].port.keys.append((True, (p, pr)))
        return swapped

    def update_specs(self, specs: Sequence[PortSpec], removed: Sequence[int]) -> set[int]:
        """:meth:`update` from checked :data:`PortSpec` tuples."""
        gone = [p for svc in removed if (p := self.ports.pop(svc, None)) is not None]
        width = 16 if self.v6 else 4
        swapped: list[tuple[_Port | None, _Port]] = []
        for svc, aff, sel, seed, addrs, ports, weights, tables, recs, keys in specs:
            port = _Port(svc, aff, sel, seed)
            for w in (0, 1):
                raw = addrs[w]
                ints = [int.from_bytes(raw[i:i + width], "big") for i in range(0, len(raw), width)]
                port.pools[w] = [(a, int(pt), _text(a, self.v6)) for a, pt in zip(ints, ports[w], strict=True)]
                port.weights[w] = [int(x) for x in weights[w]] if weights[w] is not None else [1] * len(ints)
                port.tables[w] = [int(x) for x in tables[w]] if tables[w] is not None else []
                if sel == SELECTOR_CODES["weighted"]:
                    port.alias[w] = alias_table(port.weights[w])
                elif sel == SELECTOR_CODES["round-robin"]:
                    port.rr[w] = RoundRobin(port.weights[w])
            made = []
            bits = 128 if self.v6 else 32
            for kind, acts, npf, fw, prefixes in recs:
                nets = None
                if prefixes:
                    nets = []
                    for j, pl in enumerate(prefixes):
                        mask = ((1 << bits) - 1) ^ ((1 << (bits - pl)) - 1)
                        nets.append((int.from_bytes(fw[j * width:(j + 1) * width], "big") & mask, mask))
                made.append(_Rec(kind, list(acts), npf, nets, port))
            for nodeport, addr, kport, kproto, ri in keys:
                if nodeport:
                    self.np[(kport, kproto)] = made[ri]
                    port.keys.append((True, (kport, kproto)))
                else:
                    key = (int.from_bytes(addr, "big"), kport, kproto)
                    self.fe[key] = made[ri]
                    port.keys.append((False, key))
            swapped.append((self.ports.get(svc), port))
            self.ports[svc] = port
        return self._finish(swapped, gone)

    def _finish(self, swapped: list[tuple[_Port | None, _Port]], gone: list[_Port]) -> set[int]:
        for old, new in swapped:
            if old is not None:
                gone.append(old)
                for which in (0, 1):
                    rr, orr = new.rr[which], old.rr[which]
                    if rr is not None and orr is not None and new.pools[which] and new.same_pool(which, old):
                        rr.restore(orr)
        for old in gone:
            for nodeport, key in old.keys:
                table: dict[Any, _Rec] = self.np if nodeport else self.fe
                rec = table.get(key)
                if rec is not None and rec.port is old:
                    del table[key]
        return {p.svc for p in gone} | {new.svc for _, new in swapped}

    def cluster_ips_check(self, dst: int) -> tuple[int, int, int, Any, int]:
        """nftables' cluster-ips-check for a packet no frontend matched, not to the node:
        REJECT to an active ClusterIP (its service, frontend ClusterIP), DROP inside a
        service CIDR, else PASS."""
        svc = self.cip.get(dst, -1)
        if svc >= 0:
            return 2, svc, 1, None, 0
        for net, mask in self.scidr:
            if dst & mask == net:
                return 3, -1, 0, None, 0
        return 0, -1, 0, None, 0

    def _addrs(self, arr: np.ndarray) -> list[int]:
        if not self.v6:
            return [int(x) for x in arr]
        return [int.from_bytes(bytes(row), "big") for row in np.asarray(arr, dtype=np.uint8)]

    def is_local(self, a: int) -> bool:
        if a in self.local:
            return True
        return a == LOOP6 if self.v6 else (a >> 24) == 0x7F

    def action(self, rec: _Rec, src: int) -> int:
        """The action byte of a record for a packet from ``src`` (its source class)."""
        pod = self.det_on and (src & self.det_mask) == self.det_net
        cls = int(pod) | (int(self.is_local(src)) << 1)
        if rec.fw is None:
            cls |= 4  # no KUBE-FW: every source is allowed
        else:
            for net, mask in rec.fw:
                if src & mask == net:
                    cls |= 4
                    break
        return int(rec.action[cls])

    def nodeport_accepts(self, a: int) -> bool:
        if self.np_match_all:
            if not self.is_local(a):
                return False
            if self.v6:
                return a != LOOP6
            return self.np_loopback or (a >> 24) != 0x7F
        return a in self.np_addrs

    def select(self, port: _Port, which: int, h: int, src: int, sport: int, dport: int, proto: int,
               advance: bool) -> int:
        """The pool index a new connection takes under the port's selector (n > 0)."""
        kind = port.selector
        if kind == 0:
            return pick(h, len(port.pools[which]))
        if kind == SELECTOR_CODES["weighted"]:
            alias = port.alias[which]
            assert alias is not None
            i = alias_pick(alias, h)
        elif kind == SELECTOR_CODES["round-robin"]:
            rr = port.rr[which]
            assert rr is not None
            i = rr.pick() if advance else rr.peek()
        else:
            fh = selector_hash(port.seed, self.v6, src, sport, dport, proto,
                               source_only=kind == SELECTOR_CODES["source-hash"])
            table = port.tables[which]
            return int(table[maglev_slot(fh, len(table))])
        assert i is not None  # pools hold weights >= 1 (check_tables)
        return i

    def carry_round_robin(self, old: _Family | None) -> None:
        """Unchanged round-robin pools (same service, pool, endpoints and weights) continue
        where the old tables stopped; the others start at their head."""
        if old is None:
            return
        for svc, port in self.ports.items():
            oport = old.ports.get(svc)
            if oport is None:
                continue
            for which in (0, 1):
                rr, orr = port.rr[which], oport.rr[which]
                if rr is not None and orr is not None and port.pools[which] and port.same_pool(which, oport):
                    rr.restore(orr)


class Core:
    """The engine core: frontend, NodePort, endpoint, flow and affinity tables."""

    def __init__(
        self,
        seed: int = 0,
        flow_capacity: int = 1 << 18,
        affinity_capacity: int = 1 << 16,
        timeouts: Sequence[float] = (86400.0, 30.0, 432000.0),
        stale_flows: str = "udp",
    ) -> None:
        self.seed, flow_capacity, affinity_capacity, t = check_options(
            seed, flow_capacity, affinity_capacity, timeouts, stale_flows)
        self.stale_udp_only = stale_flows == "udp"
        self.timeouts = {6: t[0], 17: t[1], 132: t[2]}
        self.flows = (_Bucketed(flow_capacity), _Bucketed(flow_capacity))
        self.aff = (_Bucketed(affinity_capacity), _Bucketed(affinity_capacity))
        self.fam: tuple[_Family | None, _Family | None] = (None, None)
        self.services: list[str] = []
        self.frontends: list[str | None] = list(FRONTEND_NAMES)
        # as the compiled core: lookups and batches see the tables before a load or
        # after it, never a mix (a batch once read the new tables half way through)
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- loading
    def load(self, t4: FamilyTables, t6: FamilyTables, services: Sequence[str],
             frontends: Sequence[str | None] | None = None) -> int:
        """Swap in new tables; drop flows whose endpoint left their service. Returns how many.

        ``frontends``: the names of the tables' frontend-kind codes (index = code), the
        core's so far with any new kinds appended (None: the core's so far; at first
        ``tables.FRONTEND_NAMES``). Inconsistent tables (an index out of range, a bad
        shape) or names (:func:`check_frontends`) raise ValueError and leave the core as
        it was.
        """
        services = list(services)
        with self._lock:
            current = list(self.frontends)
        kinds = check_frontends(frontends, current)
        new = (_Family(t4, False, len(services), len(kinds)), _Family(t6, True, len(services), len(kinds)))
        with self._lock:
            if frontends is not None and self.frontends != current:  # another writer in between
                check_frontends(kinds, self.frontends)
            old = self.fam
            for f, o in zip(new, old, strict=True):
                f.carry_round_robin(o)
            self.fam = new
            self.services = services
            self.frontends.extend(kinds[len(self.frontends):])  # in place: codes never change
            return sum(self._drop_flows(fl, f, None, self.stale_udp_only)
                       for f, fl in zip(new, self.flows, strict=True))

    def update_ports(self, p4: Sequence[PortSpec], r4: Sequence[int], p6: Sequence[PortSpec],
                     r6: Sequence[int], services: Sequence[str], frontends: Sequence[str] = ()) -> int:
        """:meth:`update` with the changed ports as :data:`PortSpec` tuples and the removed
        service indices per family: the lean path of an engine's apply. ``services`` and
        ``frontends``: names to append to the service-port names and the frontend kinds
        (the new indices and codes the ports use)."""
        added = list(services)
        n = len(self.services) + len(added)
        current = list(self.frontends)
        kinds = check_frontends(_appended(current, frontends), current)
        checked = [check_ports(p4, r4, False, n, len(kinds)), check_ports(p6, r6, True, n, len(kinds))]
        with self._lock:
            if self.fam[0] is None or self.fam[1] is None:
                raise EngineError("Core.update_ports before Core.load")
            if self.frontends != current:  # another writer in between
                check_frontends(kinds, self.frontends)
            self.services.extend(added)  # in place, as the compiled core (a copy is O(services))
            self.frontends.extend(kinds[len(self.frontends):])  # in place too: codes never change
            dropped = 0
            for fam, specs, removed, fl in zip(self.fam, checked, (r4, r6), self.flows, strict=True):
                assert fam is not None
                changed = fam.update_specs(specs, removed)
                dropped += self._drop_flows(fl, fam, changed, self.stale_udp_only)
        return dropped

    @staticmethod
    def _drop_flows(fl: _Bucketed, fam: _Family, only: set[int] | None, udp_only: bool) -> int:
        """Drop the flows (of services in ``only``; None: all; UDP ones only if
        ``udp_only``) whose endpoint is in no pool of their service's port any more."""
        dropped = 0
        for s in [i for i, tag in enumerate(fl.tags) if tag]:
            key, svc, ep = fl.vals[s][0], fl.vals[s][1], fl.vals[s][3]
            if (only is not None and svc not in only) or (udp_only and key[4] != 17):
                continue
            port = fam.ports.get(svc)
            if port is None or not port.has(ep):
                fl.drop(s)
                dropped += 1
        return dropped

    def frontend(self, dst: object, dport: int, proto: object = "TCP") -> tuple[int, int, int]:
        """Which service port a new packet to ``dst:dport/proto`` meets, as the decision
        matches it: ``(service index, frontend code, how)``, how 1 = the frontend table,
        2 = the NodePort table (``dst`` is the node's), 3 = nftables' cluster-ips set
        (no frontend; the address is a ClusterIP); ``(-1, 0, 0)`` for none."""
        d, _, v6 = _parse_pair(dst, dst)
        p = _proto(proto)
        _check_port(dport, "dport")
        with self._lock:
            fam = self.fam[v6]
            if fam is None:
                return -1, 0, 0
            rec = fam.fe.get((d, int(dport), p))
            if rec is not None:
                return rec.port.svc, rec.kind, 1
            if fam.is_local(d):
                rec = fam.np.get((int(dport), p))
                return (rec.port.svc, rec.kind, 2) if rec is not None else (-1, 0, 0)
            svc = fam.cip.get(d, -1)
            return (svc, 1, 3) if svc >= 0 else (-1, 0, 0)

    def memory(self) -> dict[str, int]:
        """As the compiled core's, measured with ``sys.getsizeof`` over the twin's own
        containers (its figures are Python's, not comparable byte for byte)."""
        import sys

        out = {"frontends": 0, "nodeports": 0, "blocks": 0, "index": 0, "retired": 0, "flows": 0,
               "affinity": 0, "blocks_count": 0}
        with self._lock:
            for fam in self.fam:
                if fam is None:
                    continue
                out["frontends"] += sys.getsizeof(fam.fe)
                out["nodeports"] += sys.getsizeof(fam.np)
                out["index"] += sys.getsizeof(fam.ports)
                out["blocks_count"] += len(fam.ports)
                recs = {id(r): r for r in (*fam.fe.values(), *fam.np.values())}
                out["blocks"] += sum(sys.getsizeof(r) for r in recs.values())
                for port in fam.ports.values():
                    out["blocks"] += sys.getsizeof(port) + sum(
                        sys.getsizeof(pool) + sum(sys.getsizeof(e) for e in pool) for pool in port.pools)
            for t, key in ((self.flows, "flows"), (self.aff, "affinity")):
                out[key] = sum(sys.getsizeof(x.tags) + sys.getsizeof(x.vals) + sys.getsizeof(x.stamp) for x in t)
        return out

    def flow_count(self) -> int:
        with self._lock:
            return self.flows[0].count + self.flows[1].count

    def clear(self) -> None:
        with self._lock:
            for t in (*self.flows, *self.aff):
                t.clear()

    # ---------------------------------------------------------------- lookups
    def lookup(
        self,
        src: object,
        dst: object,
        dport: int,
        proto: object = "TCP",
        sport: int = 0,
        now: float | None = None,
        track: int = 1,
    ) -> Decision:
        s_addr, d_addr, v6 = _parse_pair(src, dst)
        p = _proto(proto)
        _check_port(dport, "dport")
        _check_port(sport, "sport")
        t = clock(now)
        with self._lock:
            verdict, svc, fe, ep_i, masq = self._decide(
                v6, s_addr, d_addr, int(sport), int(dport), p, t, track
            )
            fam = self.fam[v6]
            services = self.services
            frontends = self.frontends
        endpoint = None
        if verdict == 1 and fam is not None:
            endpoint = (ep_i[2], ep_i[1])
        return Decision(
            VERDICTS[verdict],
            services[svc] if svc >= 0 else None,
            svc,
            frontends[fe],
            endpoint,
            bool(masq),
        )

    def lookup_batch(
        self,
        src: Any,
        dst: Any,
        dport: Any,
        proto: Any,
        sport: Any,
        out: np.ndarray,
        now: float | None = None,
        track: int = 1,
    ) -> None:
        self._batch(False, src, dst, dport, proto, sport, out, now, track)

    def lookup_batch6(
        self,
        src: Any,
        dst: Any,
        dport: Any,
        proto: Any,
        sport: Any,
        out: np.ndarray,
        now: float | None = None,
        track: int = 1,
    ) -> None:
        self._batch(True, src, dst, dport, proto, sport, out, now, track)

    def _batch(
        self, v6: bool, src: Any, dst: Any, dport: Any, proto: Any, sport: Any,
        out: np.ndarray, now: float | None, track: int,
    ) -> None:
        src, dst, dport, proto, sport = batch_columns(v6, src, dst, dport, proto, sport, out)
        n = len(out)
        clock, times = batch_times(now, n)
        ts = [clock] * n if times is None else times.tolist()
        if v6:
            srcs = [int.from_bytes(bytes(r), "big") for r in src]
            dsts = [int.from_bytes(bytes(r), "big") for r in dst]
        else:
            srcs = src.tolist()
            dsts = dst.tolist()
        dports = dport.tolist()
        protos = proto.tolist()
        sports = [0] * n if sport is None else sport.tolist()
        verdicts = out["verdict"]
        services = out["service"]
        frontends = out["frontend"]
        ep_ips = out["ep_ip"]
        ep_ports = out["ep_port"]
        masqs = out["masq"]
        with self._lock:
            fam = self.fam[v6]
            for i in range(n):
                verdict, svc, fe, ep_i, masq = self._decide(
                    v6, srcs[i], dsts[i], sports[i], dports[i], protos[i], ts[i], track
                )
                verdicts[i] = verdict
                services[i] = svc
                frontends[i] = fe
                masqs[i] = masq
                if verdict == 1 and fam is not None:
                    a = ep_i[0]
                    ep_ips[i] = np.frombuffer(a.to_bytes(16, "big"), np.uint8) if v6 else a
                    ep_ports[i] = ep_i[1]
                else:
                    ep_ips[i] = 0
                    ep_ports[i] = 0

    # ---------------------------------------------------------------- the decision
    def _decide(
        self, v6: bool, src: int, dst: int, sport: int, dport: int, proto: int,
        now: float, track: int,
    ) -> tuple[int, int, int, Any, int]:
        """(verdict, service index, frontend, endpoint (address, port, text), masquerade)."""
        fam = self.fam[v6]
        if fam is None:
            return 0, -1, 0, None, 0
        h = packet_hash(self.seed, v6, src, dst, sport, dport, proto)
        flows = self.flows[v6]
        key = (src, dst, sport, dport, proto)
        if track:
            s = flows.find(h, key)
            if s >= 0 and flows.stamp[s] > now:
                _, svc, fe, ep, masq = flows.vals[s]
                if track == 1:
                    flows.stamp[s] = now + self.timeouts.get(proto, 30.0)
                return 1, svc, fe, ep, masq

        rec = fam.fe.get((dst, dport, proto))
        if rec is not None:
            action = fam.action(rec, src)
        elif fam.is_local(dst):
            rec = fam.np.get((dport, proto))
            if rec is None:
                return 0, -1, 0, None, 0
            action = fam.action(rec, src) if fam.nodeport_accepts(dst) else rec.np_filter
        elif fam.check:
            return fam.cluster_ips_check(dst)
        else:
            return 0, -1, 0, None, 0
        verdict = action & 3
        port = rec.port
        svc = port.svc
        fe = rec.kind
        if verdict != 1:
            return verdict, (svc if verdict else -1), (fe if verdict else 0), None, 0
        which = ((action >> 2) & 3) - 1
        if which < 0 or not port.pools[which]:  # cannot happen for tables built by kproxy_core.tables
            return 3, svc, fe, None, 0
        pool = port.pools[which]
        ep = None
        timeout = port.affinity
        aff = self.aff[v6]
        if timeout and track:
            ah = affinity_hash(self.seed, v6, svc, src)
            s = aff.find(ah, (svc, src))
            if s >= 0 and now - aff.stamp[s] <= timeout:
                _, a_addr, a_port = aff.vals[s]
                for e in pool:
                    if e[0] == a_addr and e[1] == a_port:
                        ep = e
                        break
        if ep is None:
            # round-robin: a new connection moves the cursor (track 0 and 1), a read-only
            # lookup (track 2: the trace) does not
            ep = pool[fam.select(port, which, h, src, sport, dport, proto, not track or track == 1)]
        masq = (action >> 4) & 1
        if ep[0] == src:
            masq = 1
        if track == 1:
            if timeout:
                ah = affinity_hash(self.seed, v6, svc, src)
                s = aff.place(ah, (svc, src), now, live=True)
                aff.vals[s] = ((svc, src), ep[0], ep[1])
                aff.stamp[s] = now
            s = flows.place(h, key, now, live=False)
            flows.vals[s] = (key, svc, fe, ep, masq)
            flows.stamp[s] = now + self.timeouts.get(proto, 30.0)
        return 1, svc, fe, ep, masq


def _text(a: int, v6: bool) -> str:
    return str(ipaddress.IPv6Address(a)) if v6 else f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}"


def _parse_pair(src: object, dst: object) -> tuple[int, int, bool]:
    try:
        s = ipaddress.ip_address(src if isinstance(src, str | int) else str(src))
        d = ipaddress.ip_address(dst if isinstance(dst, str | int) else str(dst))
    except ValueError as e:
        raise PacketError(f"bad packet address: {e}") from None
    if s.version != d.version:
        raise PacketError(f"source {s} and destination {d} are of different IP families")
    return int(s), int(d), s.version == 6


def _proto(proto: object) -> int:
    if isinstance(proto, str):
        p = PROTO_IN.get(proto)
        if p is not None:
            return p
    elif isinstance(proto, int) and proto in (6, 17, 132):
        return proto
    raise PacketError(f"protocol {proto!r} is not one of TCP, UDP, SCTP (or 6, 17, 132)")


def _check_port(port: object, what: str) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise PacketError(f"{what} {port!r} is not a port number (0-65535)")


# ------------------------------------------------------------------ the Core's input contract
# The compiled twin (src/_engine.pyx) checks exactly the same things, in the same order.


def batch_columns(
    v6: bool, src: Any, dst: Any, dport: Any, proto: Any, sport: Any, out: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Check a batch: ``out`` a writable 1-d OUT_DTYPE (OUT6_DTYPE) array of n rows; the
    columns exactly uint32 (v4) or (n, 16) uint8 (v6) addresses, uint16 ports, uint8
    protocols, n rows each (any strides). Bad columns raise PacketError, a bad ``out``
    ValueError; nothing is converted (the Engine facade converts)."""
    want = OUT6_DTYPE if v6 else OUT_DTYPE
    if not isinstance(out, np.ndarray) or out.ndim != 1 or out.dtype != want:
        raise ValueError(
            f"out: expected a 1-d array of {'OUT6_DTYPE' if v6 else 'OUT_DTYPE'}, got "
            f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}".rstrip()
        )
    if not out.flags.writeable:
        raise ValueError("out: the array is read-only")
    n = len(out)
    addr: tuple[Any, tuple[int, ...]] = (np.uint8, (n, 16)) if v6 else (np.uint32, (n,))
    return (
        _column(src, "src", *addr),
        _column(dst, "dst", *addr),
        _column(dport, "dport", np.uint16, (n,)),
        _column(proto, "proto", np.uint8, (n,)),
        None if sport is None else _column(sport, "sport", np.uint16, (n,)),
    )


def clock(now: Any) -> float:
    """``now`` as seconds for flow and affinity timeouts: None is the wall clock; else a
    real number (int, float or a numpy scalar, negative ones too) that is finite. Anything
    else raises PacketError naming ``now`` (NaN and infinities once went through, and made
    every flow expire or live forever)."""
    if now is None:
        return time.time()
    if isinstance(now, str | bytes | bytearray | bool) or (isinstance(now, np.ndarray) and now.ndim):
        raise PacketError(f"now: {_brief(now)} is not a number of seconds")
    try:
        t = float(now)
    except (TypeError, ValueError, OverflowError):
        raise PacketError(f"now: {_brief(now)} is not a number of seconds") from None
    if not math.isfinite(t):
        raise PacketError(f"now: {t!r} is not a finite number of seconds")
    return t


def _brief(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def batch_times(now: Any, n: int) -> tuple[float, np.ndarray | None]:
    """A batch's clock: one time for every packet (a number of seconds; None: the wall
    clock; see :func:`clock`), or each packet's own (a float64 array of n finite times), for
    flow and affinity timeouts. Returns (the one time, or 0.0; the array or None). Anything
    else raises PacketError naming ``now`` (for a time that is not finite, its index)."""
    if isinstance(now, np.ndarray) and now.ndim:
        if now.dtype != np.float64 or now.shape != (n,):
            raise PacketError(f"now: expected a number or a float64 array of shape ({n},), "
                              f"got {now.dtype} {now.shape}")
        if n:
            bad = np.flatnonzero(~np.isfinite(now))
            if len(bad):
                i = int(bad[0])
                raise PacketError(f"now[{i}]: {float(now[i])!r} is not a finite number of seconds")
        return 0.0, now
    if isinstance(now, list | tuple):
        raise PacketError(f"now: expected a number or a float64 array of shape ({n},), got a {type(now).__name__}")
    return clock(now), None


def check_options(seed: Any, flow_capacity: Any, affinity_capacity: Any, timeouts: Any,
                  stale_flows: Any) -> tuple[int, int, int, tuple[float, float, float]]:
    """A Core's options, checked (ValueError naming the option): ``seed`` an integer (taken
    mod 2**64), capacities integers >= 1, ``timeouts`` three positive numbers (infinity:
    never), ``stale_flows`` one of :data:`STALE_FLOWS`. Returns the seed, the capacities and
    the timeouts as floats."""
    try:
        if isinstance(seed, bool):
            raise TypeError
        seed = operator.index(seed) & M64
    except TypeError:
        raise ValueError(f"seed must be an integer, not {_brief(seed)}") from None
    caps = []
    for name, cap in (("flow_capacity", flow_capacity), ("affinity_capacity", affinity_capacity)):
        try:
            if isinstance(cap, bool):
                raise TypeError
            v = operator.index(cap)
        except TypeError:
            raise ValueError(f"{name} must be an integer, not {_brief(cap)}") from None
        if v < 1:
            raise ValueError(f"table capacities must be positive ({name} {v})")
        caps.append(v)
    try:
        got = [float(t) for t in timeouts if not isinstance(t, str | bytes | bool)]
        ok = len(got) == len(timeouts) == 3 and all(t > 0 for t in got)  # NaN is not > 0
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"timeouts must be three positive numbers (TCP, UDP, SCTP), not {_brief(timeouts)}")
    if not isinstance(stale_flows, str) or stale_flows not in STALE_FLOWS:
        raise ValueError(f"stale_flows must be one of {', '.join(STALE_FLOWS)}, not {stale_flows!r}")
    return seed, caps[0], caps[1], (got[0], got[1], got[2])


def _column(x: Any, name: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise PacketError(f"{name}: not an array ({e})") from None
    if a.dtype != dtype or a.shape != shape:
        raise PacketError(
            f"{name}: expected a {np.dtype(dtype).name} array of shape {shape}, "
            f"got {a.dtype} {a.shape}"
        )
    return a


_OPTIONAL = ("cip_addr", "cip_service", "scidr_addr", "scidr_prefix")


def check_frontends(names: Any, current: Sequence[str | None]) -> list[str | None]:
    """The frontend-kind names a core decodes codes with after ``Core.load(...,
    frontends=names)`` (None: ``current`` as it is). They must extend the core's
    ``current`` ones (which start with ``tables.FRONTEND_NAMES``): flows keep the code of
    their frontend across loads, so a code never changes its name; each new name is a
    non-empty string not already there, and there are at most
    ``tables.MAX_FRONTEND_KINDS`` kinds (codes 1..127: 7 bits in the flow table).
    ValueError naming the code otherwise."""
    if names is None:
        return list(current)
    if isinstance(names, str | bytes) or not isinstance(names, Sequence):
        raise ValueError(f"frontends: expected a sequence of names, not {type(names).__name__}")
    got = list(names)
    if len(got) - 1 > MAX_FRONTEND_KINDS:
        raise ValueError(f"frontends: {len(got) - 1} kinds, more than {MAX_FRONTEND_KINDS} "
                         "(a flow keeps its frontend's code in 7 bits)")
    for code, name in enumerate(current):
        if code >= len(got) or got[code] != name:
            now = repr(got[code]) if code < len(got) else "missing"
            raise ValueError(f"frontends: code {code} is {name!r} in this core, not {now} "
                             "(flows keep their codes: names may only be appended)")
    seen = set(got[:len(current)])
    for code in range(len(current), len(got)):
        name = got[code]
        if not isinstance(name, str) or not name:
            raise ValueError(f"frontends: code {code}: {name!r} is not a kind's name (a non-empty string)")
        if name in seen:
            raise ValueError(f"frontends: code {code}: {name!r} has a code already")
        seen.add(name)
    return got


def _appended(current: list[str | None], added: Any) -> Any:
    """``current`` with ``added`` (names, for update_ports) after it; ``added`` itself if it
    is not a sequence of names, for :func:`check_frontends` to refuse."""
    if isinstance(added, str | bytes) or not isinstance(added, Sequence):
        return added
    return [*current, *added]


def check_tables(t: FamilyTables, v6: bool, nservices: int, nkinds: int = len(FRONTEND_NAMES)) -> dict[str, Any]:
    """Validate one family's tables; every index in range, every shape consistent.
    ``nkinds``: how many frontend-kind codes the core knows (``rec_kind`` < ``nkinds``).

    Returns the arrays as int64 (addresses: uint32, or (n, 16) uint8 for IPv6) and
    the flags as bools. Raises ValueError naming the field.
    """
    if bool(t.v6) != v6:
        raise ValueError(f"tables: expected {'IPv6' if v6 else 'IPv4'} tables, got v6={t.v6!r}")
    c: dict[str, Any] = {}

    def arr(name: str, lo: int, hi: int, width: int = 0, rows: int | None = None) -> np.ndarray:
        x = getattr(t, name, None) if name in _OPTIONAL else getattr(t, name)
        if x is None and name in _OPTIONAL:
            x = np.zeros((0, width) if width else (0,), dtype=np.int64)
        a = _int_array(x, name, lo, hi, width)
        if rows is not None and len(a) != rows:
            raise ValueError(f"tables: {name} has {len(a)} rows, expected {rows}")
        c[name] = a
        return a

    def addrs(name: str, rows: int | None = None) -> np.ndarray:
        if v6:
            return arr(name, 0, 255, 16, rows).astype(np.uint8)
        return arr(name, 0, 0xFFFFFFFF, 0, rows).astype(np.uint32)

    n_rec = len(_int_array(t.rec_port, "rec_port", -(1 << 63), (1 << 63) - 1, 0))
    n_port = len(_int_array(t.port_service, "port_service", -(1 << 63), (1 << 63) - 1, 0))
    n_pool = len(_int_array(t.pool_ep, "pool_ep", -(1 << 63), (1 << 63) - 1, 0))
    n_ep = len(_int_array(t.ep_port, "ep_port", -(1 << 63), (1 << 63) - 1, 0))
    n_fe = len(arr("fe_port", 0, 65535))
    c["fe_addr"] = addrs("fe_addr", n_fe)
    arr("fe_proto", 0, 255, rows=n_fe)
    arr("fe_rec", 0, n_rec - 1, rows=n_fe)
    n_np = len(arr("np_port", 0, 65535))
    arr("np_proto", 0, 255, rows=n_np)
    arr("np_rec", 0, n_rec - 1, rows=n_np)
    arr("rec_port", 0, n_port - 1)
    arr("rec_kind", 0, nkinds - 1, rows=n_rec)
    for name, width in (("rec_action", 8), ("rec_np_filter", 0)):
        a = arr(name, 0, 255, width, rows=n_rec)
        if (((a >> 2) & 3) == 3).any():
            raise ValueError(f"tables: {name} has an action byte with pool code 3")
    n_fw = len(arr("fw_prefix", 0, 128 if v6 else 32))
    c["fw_addr"] = addrs("fw_addr", n_fw)
    fw_start = arr("rec_fw_start", 0, n_fw, rows=n_rec)
    fw_len = arr("rec_fw_len", 0, n_fw, rows=n_rec)
    if ((fw_start + fw_len) > n_fw).any():
        raise ValueError(
            f"tables: a source list (rec_fw_start + rec_fw_len) ends past fw_addr ({n_fw})"
        )
    arr("port_service", 0, nservices - 1)
    arr("port_affinity", 0, 0xFFFFFFFF, rows=n_port)
    start = arr("port_pool_start", 0, n_pool, 2, rows=n_port)
    length = arr("port_pool_len", 0, n_pool, 2, rows=n_port)
    if ((start + length) > n_pool).any():
        raise ValueError(
            f"tables: a pool (port_pool_start + port_pool_len) ends past pool_ep ({n_pool})"
        )
    arr("pool_ep", 0, n_ep - 1)
    _check_selectors(t, c, n_port, n_pool, length)
    c["ep_addr"] = addrs("ep_addr", n_ep)
    arr("ep_port", 0, 65535)
    c["ep_str"] = list(t.ep_str)
    if len(c["ep_str"]) != n_ep:
        raise ValueError(f"tables: ep_str has {len(c['ep_str'])} entries, expected {n_ep}")
    c["local_addrs"] = addrs("local_addrs")
    # cluster-ips-check (nftables mode); None or absent: none
    n_cip = len(arr("cip_service", 0, nservices - 1))
    c["cip_addr"] = addrs("cip_addr", n_cip)
    n_scidr = len(arr("scidr_prefix", 0, 128 if v6 else 32))
    c["scidr_addr"] = addrs("scidr_addr", n_scidr)
    c["np_addrs"] = addrs("np_addrs")
    c["np_match_all"] = bool(t.np_match_all)
    c["np_loopback"] = bool(t.np_loopback)
    c["det_on"] = bool(t.det_on)
    c["det_prefix"] = 0
    if c["det_on"]:
        c["det_addr"] = det = addrs("det_addr")
        if len(det) < 1:
            raise ValueError("tables: det_addr is empty but det_on is set")
        try:
            prefix = operator.index(t.det_prefix)
        except TypeError:
            raise ValueError(f"tables: det_prefix {t.det_prefix!r} is not an integer") from None
        if not 0 <= prefix <= (128 if v6 else 32):
            raise ValueError(f"tables: det_prefix {prefix} is out of range")
        c["det_prefix"] = int(prefix)
    return c


# A service port for Core.update_ports (tables.PortEntry.spec builds them):
#   (svc, affinity, selector, seed, (addrs0, addrs1), (ports0, ports1), (weights0, weights1),
#    (table0, table1), records, keys)
# addrs: the pool's addresses packed (4 or 16 bytes each, network order); ports: ints;
# weights: ints, or None (every weight 1; random and Maglev pools); tables: the Maglev /
# source-hash lookup table (int32 array, entries index the pool) or None;
# records: (kind, actions (8 bytes, by source class), NodePort filter action,
#           KUBE-FW networks packed, their prefix lengths (bytes));
# keys: (NodePort?, address packed (b"" for a NodePort), port, protocol, record index).
PortSpec = tuple[Any, ...]


def check_ports(ports: Sequence[PortSpec], removed: Sequence[int], v6: bool, nservices: int,
                nkinds: int = len(FRONTEND_NAMES)) -> list[PortSpec]:
    """Validate :data:`PortSpec` tuples for ``Core.update_ports``: ValueError naming the
    field for anything out of range (a record's frontend kind: below ``nkinds``; the
    compiled core then trusts them)."""
    width = 16 if v6 else 4
    bits = 128 if v6 else 32
    seen: set[int] = set()
    out: list[PortSpec] = []

    def num(x: Any, lo: int, hi: int, what: str) -> int:
        try:
            v = operator.index(x)
        except TypeError:
            raise ValueError(f"ports: {what} must be an integer, not {type(x).__name__}") from None
        if not lo <= v <= hi:
            raise ValueError(f"ports: {what} {v} is outside {lo}..{hi}")
        return v

    for r in removed:
        i = num(r, 0, nservices - 1, "removed service index")
        if i in seen:
            raise ValueError(f"ports: service index {i} is given twice")
        seen.add(i)
    for p in ports:
        if not isinstance(p, tuple) or len(p) != 10:
            raise ValueError("ports: each port must be a 10-tuple (see _engine_py.PortSpec)")
        svc = num(p[0], 0, nservices - 1, "service index")
        if svc in seen:
            raise ValueError(f"ports: service index {svc} is given twice")
        seen.add(svc)
        num(p[1], 0, 0xFFFFFFFF, "affinity")
        sel = num(p[2], 0, len(SELECTOR_CODES) - 1, "selector")
        num(p[3], 0, M64, "seed")
        lens = []
        for w in (0, 1):
            a, ports_w, weights, table = p[4][w], p[5][w], p[6][w], p[7][w]
            if not isinstance(a, bytes) or len(a) % width:
                raise ValueError(f"ports: pool addresses must be bytes of {width}-byte addresses")
            n = len(a) // width
            if len(ports_w) != n:
                raise ValueError(f"ports: pool has {n} addresses but {len(ports_w)} ports")
            for x in ports_w:
                num(x, 0, 65535, "endpoint port")
            if weights is not None:
                if len(weights) != n:
                    raise ValueError(f"ports: pool has {n} entries but {len(weights)} weights")
                for x in weights:
                    num(x, 1, MAX_WEIGHT, "weight")
            elif sel in (SELECTOR_CODES["weighted"], SELECTOR_CODES["round-robin"]) and n:
                raise ValueError("ports: a weighted or round-robin pool needs its weights")
            hashed = sel in (SELECTOR_CODES["maglev"], SELECTOR_CODES["source-hash"])
            if hashed and n:
                t = np.asarray(table) if table is not None else np.zeros(0, np.int32)
                if t.ndim != 1 or t.dtype.kind not in "ui" or not len(t) or len(t) > 0x7FFFFFFF:
                    raise ValueError("ports: a Maglev or source-hash pool needs a non-empty integer lookup table")
                if t.min() < 0 or t.max() >= n:
                    raise ValueError("ports: a lookup table has entries outside its pool")
            lens.append(n)
        if lens[0] + lens[1] > 0x7FFFFFFF:
            raise ValueError("ports: pools too large")
        recs = p[8]
        for rec in recs:
            if not isinstance(rec, tuple) or len(rec) != 5:
                raise ValueError("ports: each record must be a 5-tuple")
            num(rec[0], 0, nkinds - 1, "frontend kind")
            acts = rec[1]
            if not isinstance(acts, bytes) or len(acts) != 8:
                raise ValueError("ports: a record's actions must be 8 bytes")
            for a in (*acts, num(rec[2], 0, 255, "NodePort filter action")):
                if (a >> 2) & 3 == 3:
                    raise ValueError("ports: an action byte has pool code 3")
            fw, prefixes = rec[3], rec[4]
            if not isinstance(fw, bytes) or not isinstance(prefixes, bytes) or len(fw) != width * len(prefixes):
                raise ValueError("ports: a record's KUBE-FW sources must be packed addresses and prefix bytes")
            if any(x > bits for x in prefixes):
                raise ValueError(f"ports: a KUBE-FW prefix is longer than {bits}")
        for k in p[9]:
            if not isinstance(k, tuple) or len(k) != 5:
                raise ValueError("ports: each key must be a 5-tuple")
            if not isinstance(k[1], bytes) or len(k[1]) != (0 if k[0] else width):
                raise ValueError("ports: a key's address must be packed (b'' for a NodePort)")
            num(k[2], 0, 65535, "key port")
            num(k[3], 0, 255, "key protocol")
            num(k[4], 0, len(recs) - 1, "key record")
        out.append(p)
    return out


def _check_selectors(t: FamilyTables, c: dict[str, Any], n_port: int, n_pool: int,
                     pool_len: np.ndarray) -> None:
    """The selector columns (all optional: None means every port random, every weight 1):
    port_selector (a code of selectors.SELECTOR_CODES), port_seed (uint64), pool_weight
    (1 .. MAX_WEIGHT per pool entry), and the Maglev / source-hash lookup tables: each
    such port's non-empty pool has a non-empty segment of sel_table
    (port_table_start/len), every entry of which indexes that pool."""

    def opt(name: str, default: np.ndarray, lo: int, hi: int, width: int = 0, rows: int = 0) -> np.ndarray:
        x = getattr(t, name, None)
        a = default if x is None else _int_array(x, name, lo, hi, width)
        if len(a) != rows:
            raise ValueError(f"tables: {name} has {len(a)} rows, expected {rows}")
        c[name] = a
        return a

    sel = opt("port_selector", np.zeros(n_port, np.int64), 0, len(SELECTOR_CODES) - 1, rows=n_port)
    seed = getattr(t, "port_seed", None)
    if seed is None:
        c["port_seed"] = np.zeros(n_port, np.uint64)
    else:
        try:
            a = np.asarray(seed)
        except (TypeError, ValueError) as e:
            raise ValueError(f"tables: port_seed is not an array ({e})") from None
        if a.size == 0 and a.ndim >= 1 and a.shape[0] == 0:
            a = np.zeros(0, np.uint64)
        if a.dtype.kind not in "ui" or a.ndim != 1 or (a.dtype.kind == "i" and a.size and a.min() < 0):
            raise ValueError(
                f"tables: port_seed must be an unsigned 64-bit array of shape (n,), got {a.dtype} {a.shape}"
            )
        if len(a) != n_port:
            raise ValueError(f"tables: port_seed has {len(a)} rows, expected {n_port}")
        c["port_seed"] = a.astype(np.uint64)
    opt("pool_weight", np.ones(n_pool, np.int64), 1, MAX_WEIGHT, rows=n_pool)
    x = getattr(t, "sel_table", None)
    if x is None:
        tab = np.zeros(0, np.int32)
    else:
        try:
            a = np.asarray(x)
        except (TypeError, ValueError) as e:
            raise ValueError(f"tables: sel_table is not an array ({e})") from None
        if a.size == 0 and a.ndim >= 1 and a.shape[0] == 0:
            a = np.zeros(0, np.int32)
        if a.dtype.kind not in "ui" or a.ndim != 1:
            raise ValueError(f"tables: sel_table must be an integer array of shape (n,), got {a.dtype} {a.shape}")
        if len(a) > 0x7FFFFFFF:
            raise ValueError("tables: sel_table has more than 2**31 - 1 entries")
        if a.size and (a.min() < 0 or a.max() > 0x7FFFFFFF):
            raise ValueError("tables: sel_table has values outside 0..2147483647")
        tab = np.array(a, dtype=np.int32)  # a private copy: checked here, loaded as checked
    c["sel_table"] = tab
    n_tab = len(tab)
    zeros2 = np.zeros((n_port, 2), np.int64)
    tstart = opt("port_table_start", zeros2, 0, n_tab, 2, rows=n_port)
    tlen = opt("port_table_len", zeros2, 0, n_tab, 2, rows=n_port)
    if ((tstart + tlen) > n_tab).any():
        raise ValueError(f"tables: a lookup table (port_table_start + port_table_len) ends past sel_table ({n_tab})")
    hashed = np.isin(sel, (SELECTOR_CODES["maglev"], SELECTOR_CODES["source-hash"]))[:, None] & (pool_len > 0)
    if (hashed & (tlen == 0)).any():
        raise ValueError("tables: a Maglev or source-hash pool has no lookup table (port_table_len 0)")
    if hashed.any():
        starts, lens, bound = tstart[hashed], tlen[hashed], pool_len[hashed]
        ext = np.append(tab, np.int32(0))  # reduceat needs every index, even n_tab, in range
        top = np.maximum.reduceat(ext, np.stack([starts, starts + lens], axis=1).ravel())[::2]
        if (top >= bound).any():
            raise ValueError("tables: a Maglev or source-hash lookup table has entries past its pool")


def _int_array(x: Any, name: str, lo: int, hi: int, width: int) -> np.ndarray:
    """``x`` as an int64 array of shape (n,) or (n, width), every value in lo..hi."""
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"tables: {name} is not an array ({e})") from None
    if a.ndim >= 1 and a.shape[0] == 0 and a.size == 0:
        return np.zeros((0, width) if width else (0,), dtype=np.int64)
    if a.dtype.kind not in "ui" or a.ndim != (2 if width else 1) or (width and a.shape[1] != width):
        shape = f"(n, {width})" if width else "(n,)"
        raise ValueError(
            f"tables: {name} must be an integer array of shape {shape}, got {a.dtype} {a.shape}"
        )
    if a.min() < lo or a.max() > hi:
        raise ValueError(f"tables: {name} has values outside {lo}..{hi}")
    return a.astype(np.int64)

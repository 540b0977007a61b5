# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""The compiled engine core: ``Core`` and ``Decision``, an exact twin of
``kproxy_core._engine_py`` (user docs live in ``_engine.pyi``).

The tables and the per-packet decision are C (``kp_core.h``); this module checks and
converts what crosses the boundary, holds the lock and runs the batch loops without
the GIL. The checks themselves (``check_tables``, ``batch_columns`` and the per-call
argument checks) are the twin's own functions, so both twins accept and reject exactly
the same inputs with the same messages; only the common cases (a dotted-quad string,
an int port) are recognised here first, in C.

Locking: one PyThread lock per Core (``lock``) is held by every lookup while it reads:
batches (without the GIL), per-call lookups (with the GIL, for a few hundred
nanoseconds), ``clear``, ``flow_count`` and the flow cleanup of ``load`` and
``update``. A second one (``wlock``) admits one writer at a time. ``update`` changes the
family tables in place without ``lock`` (kp_fam_install: lookups in flight see each
packet's old or new state) and frees what it replaced only while holding ``lock``, when
no lookup that started before can still read it. Nothing that can run Python code (a
finaliser, a signal handler) happens while ``lock`` is held: ``load`` keeps the old tables
alive until after it has released it.
"""

cimport cython
from cpython.long cimport PyLong_AsLongAndOverflow, PyLong_AsLongLongAndOverflow
from cpython.pythread cimport (
    NOWAIT_LOCK,
    WAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_release_lock,
    PyThread_type_lock,
)
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdint cimport uintptr_t
from libc.math cimport isfinite
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

from kp_core cimport *

import operator
import time
from ipaddress import IPv6Address as _IPv6

from kproxy_core._engine_py import (
    AFFINITY_SALT,
    PROTO_IN,
    SLOTS,
    _check_port,
    _parse_pair,
    batch_times,
    check_options,
    check_ports,
    clock,
    _proto,
    _appended,
    batch_columns,
    check_frontends,
    check_tables,
)
from kproxy_core.errors import EngineError
from kproxy_core.selectors import SELECTOR_CODES, WEIGHT_SALT, check_maglev
from kproxy_core.tables import FRONTEND_NAMES, VERDICTS

import numpy as np

__all__ = ["Core", "Decision", "affinity_hash", "maglev_table", "mix", "packet_hash", "pick"]

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    void *PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)


cdef packed struct _out4:  # engine.OUT_DTYPE (kp_out4 in kp_core.h)
    uint8_t verdict
    int32_t service
    uint8_t frontend
    uint32_t ep_ip
    uint16_t ep_port
    uint8_t masq


cdef packed struct _out6:  # engine.OUT6_DTYPE (kp_out6 in kp_core.h)
    uint8_t verdict
    int32_t service
    uint8_t frontend
    uint8_t ep_ip[16]
    uint16_t ep_port
    uint8_t masq


cdef uint64_t M64 = 0xFFFFFFFFFFFFFFFF
cdef tuple _VERDICTS = tuple(VERDICTS)
cdef dict _PROTO_IN = dict(PROTO_IN)
_time = time.time
assert SLOTS == KP_SLOTS and AFFINITY_SALT == 0x9E3779B97F4A7C15
assert WEIGHT_SALT == 0xD6E8FEB86659FD93 and SELECTOR_CODES == {
    "random": KP_SEL_RANDOM, "weighted": KP_SEL_WEIGHTED, "round-robin": KP_SEL_RR,
    "source-hash": KP_SEL_SH, "maglev": KP_SEL_MAGLEV}


cdef int _check(int status) except -1:
    """The one place where a status of the C side becomes an exception."""
    if status == KP_OK:
        return 0
    if status == KP_ENOMEM:
        raise MemoryError("kproxy_core._engine: out of memory")
    if status == KP_ETOOBIG:
        raise MemoryError("kproxy_core._engine: table too large")
    raise EngineError(f"kproxy_core._engine: unexpected status {status}")


# ---------------------------------------------------------------------- hashes (for tests)

def mix(uint64_t z):
    return kp_mix(z)


def packet_hash(uint64_t seed, bint v6, src, dst, uint16_t sport, uint16_t dport, uint8_t proto):
    if not v6:
        return kp_hash4(seed, <uint32_t>src, <uint32_t>dst, sport, dport, proto)
    return kp_hash6(seed, _a6(src), _a6(dst), sport, dport, proto)


def affinity_hash(uint64_t seed, bint v6, int32_t service, src):
    cdef uint64_t aseed = seed + <uint64_t>0x9E3779B97F4A7C15
    if service < 0:
        raise OverflowError("service must not be negative")
    if not v6:
        return kp_ahash4(aseed, service, <uint32_t>src)
    return kp_ahash6(aseed, service, _a6(src))


def pick(uint64_t h, uint32_t n):
    return kp_pick(h, n)


def maglev_table(offsets, skips, weights, size):
    offs = _u32_list(offsets, "offsets")
    sks = _u32_list(skips, "skips")
    ws = _u32_list(weights, "weights")
    check_maglev(offs, sks, ws, size)  # the twin's checks: the loop below always ends
    cdef Py_ssize_t n = len(offs)
    cdef uint32_t m = size
    cdef const uint32_t[:] o = np.array(offs, dtype=np.uint32).reshape(n)
    cdef const uint32_t[:] k = np.array(sks, dtype=np.uint32).reshape(n)
    cdef const uint32_t[:] w = np.array(ws, dtype=np.uint32).reshape(n)
    out = np.empty(m, dtype=np.int32)
    cdef int32_t[:] t = out
    cdef int status
    with nogil:
        status = kp_maglev_fill(&t[0], m, <int32_t>n, &o[0] if n else NULL, &k[0] if n else NULL,
                                &w[0] if n else NULL)
    _check(status)
    return out


cdef extern from "arpa/inet.h" nogil:
    int inet_pton(int af, const char *src, void *dst)

cdef extern from "sys/socket.h" nogil:
    int AF_INET
    int AF_INET6

cdef extern from "string.h" nogil:
    const void *memchr(const void *s, int c, size_t n)


cdef object _validity(object validity, Py_ssize_t n, str wrong):
    """``validity`` as n contiguous bytes (a one-byte stand-in when None: nothing is read
    then), or ValueError(``wrong``)."""
    if validity is None:
        return np.ones(1, dtype=np.uint8)
    ok = np.ascontiguousarray(validity, dtype=np.uint8)
    if ok.shape[0] != n:
        raise ValueError(wrong)
    return ok


def split_mapped(raw, validity=None):
    """Families and IPv4 addresses of (n, 16) uint8 addresses, IPv4 mapped into
    ``::ffff:0:0/96`` (what kproxy_core.captures writes): family 4 and the address for a
    mapped one, 6 for any other, 0 where ``validity`` is False. Returns ``(family, v4)``."""
    cdef const uint8_t[:, ::1] a = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, 16)
    cdef Py_ssize_t n = a.shape[0], i
    cdef const uint8_t[::1] ok = _validity(validity, n, "split_mapped: validity must hold one entry per address")
    cdef bint has_valid = validity is not None
    family_arr = np.zeros(n, dtype=np.uint8)
    v4_arr = np.zeros(n, dtype=np.uint32)
    cdef uint8_t[::1] fam = family_arr
    cdef uint32_t[::1] v4 = v4_arr
    cdef const uint8_t *p
    with nogil:
        for i in range(n):
            if has_valid and not ok[i]:
                continue
            p = &a[i, 0]
            if (p[0] | p[1] | p[2] | p[3] | p[4] | p[5] | p[6] | p[7] | p[8] | p[9]) == 0 \
                    and p[10] == 0xFF and p[11] == 0xFF:
                fam[i] = 4
                v4[i] = (<uint32_t>p[12] << 24) | (<uint32_t>p[13] << 16) | (<uint32_t>p[14] << 8) | p[15]
            else:
                fam[i] = 6
    return family_arr, v4_arr


def parse_ips(offsets, data, validity=None):
    """Addresses of a column of strings (Arrow's layout: ``n + 1`` offsets into ``data``),
    parsed as inet_pton does, in C without the GIL. Returns ``(family, v4, v6)``: uint8
    ``4``/``6``/``0`` (not an address, or missing where ``validity`` is False), uint32
    addresses, and (n, 16) uint8 addresses. ValueError for offsets that do not fit the data."""
    cdef const int64_t[::1] off = np.ascontiguousarray(offsets, dtype=np.int64)
    cdef const uint8_t[::1] buf = np.frombuffer(data, dtype=np.uint8) if len(data) else np.zeros(1, np.uint8)
    cdef Py_ssize_t n = off.shape[0] - 1, size = len(data), i
    if n < 0:
        raise ValueError("parse_ips: offsets must hold n + 1 entries")
    cdef const uint8_t[::1] ok = _validity(validity, n, "parse_ips: validity must hold one entry per string")
    cdef bint has_valid = validity is not None
    for i in range(n):
        if off[i] < 0 or off[i + 1] < off[i] or off[i + 1] > size:
            raise ValueError(f"parse_ips: offsets[{i}:{i + 2}] = {off[i]}, {off[i + 1]} do not fit {size} bytes")
    family_arr = np.zeros(n, dtype=np.uint8)
    v4_arr = np.zeros(n, dtype=np.uint32)
    v6_arr = np.zeros((n, 16), dtype=np.uint8)
    cdef uint8_t[::1] fam = family_arr
    cdef uint32_t[::1] v4 = v4_arr
    cdef uint8_t[:, ::1] v6 = v6_arr
    cdef char text[64]
    cdef unsigned char raw[16]
    cdef Py_ssize_t length
    with nogil:
        for i in range(n):
            if has_valid and not ok[i]:
                continue
            length = off[i + 1] - off[i]
            if length <= 0 or length > 63:
                continue
            memcpy(text, &buf[off[i]], length)
            text[length] = 0
            if memchr(text, 0, length) != NULL:  # inet_pton would stop at the NUL
                continue
            if memchr(text, 58, length) != NULL:  # ':'
                if inet_pton(AF_INET6, text, raw) == 1:
                    memcpy(&v6[i, 0], raw, 16)
                    fam[i] = 6
            elif inet_pton(AF_INET, text, raw) == 1:
                v4[i] = (<uint32_t>raw[0] << 24) | (<uint32_t>raw[1] << 16) | (<uint32_t>raw[2] << 8) | raw[3]
                fam[i] = 4
    return family_arr, v4_arr, v6_arr


# --------------------------------------------------------------------------- packet captures

# why a captured packet is not a connection attempt kproxy looks up (kproxy_core.captures.SKIPS)
cdef enum:
    SKIP_NOT_IP = 0
    SKIP_FRAGMENT = 1
    SKIP_TRUNCATED = 2
    SKIP_OTHER_PROTOCOL = 3
    SKIP_LINKTYPE = 4
    N_SKIPS = 5
    SKIP_EXAMPLES = 5

cdef inline uint16_t _be16(const uint8_t *p) nogil:
    return (<uint16_t>p[0] << 8) | p[1]

cdef inline uint32_t _rd32(const uint8_t *p, bint swapped) nogil:
    if swapped:
        return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]
    return (<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | p[0]


cdef int _packet(const uint8_t *p, Py_ssize_t caplen, int linktype, uint8_t *src, uint8_t *dst,
                 uint16_t *sport, uint16_t *dport, uint8_t *proto) noexcept nogil:
    """One frame: 4 or 6 (the family, addresses and ports written) or -1 - a SKIP_* reason."""
    cdef Py_ssize_t off = 0, ihl, hl
    cdef uint16_t etype = 0
    cdef int version
    cdef uint8_t nh
    if linktype == 1:  # Ethernet, then any 802.1Q / 802.1ad tags
        if caplen < 14:
            return -1 - SKIP_TRUNCATED
        etype = _be16(p + 12)
        off = 14
        while etype == 0x8100 or etype == 0x88A8 or etype == 0x9100:
            if caplen < off + 4:
                return -1 - SKIP_TRUNCATED
            etype = _be16(p + off + 2)
            off += 4
        if etype != 0x0800 and etype != 0x86DD:
            return -1 - SKIP_NOT_IP
    elif linktype == 113:  # Linux cooked (SLL): the protocol at 14
        if caplen < 16:
            return -1 - SKIP_TRUNCATED
        etype = _be16(p + 14)
        off = 16
        if etype != 0x0800 and etype != 0x86DD:
            return -1 - SKIP_NOT_IP
    elif linktype == 276:  # Linux cooked v2 (SLL2): the protocol first
        if caplen < 20:
            return -1 - SKIP_TRUNCATED
        etype = _be16(p)
        off = 20
        if etype != 0x0800 and etype != 0x86DD:
            return -1 - SKIP_NOT_IP
    # raw IP (101, 12, 14, 228, 229) and the link types above: the IP header at off
    if caplen < off + 1:
        return -1 - SKIP_TRUNCATED
    version = p[off] >> 4
    if version == 4:
        if caplen < off + 20:
            return -1 - SKIP_TRUNCATED
        ihl = (p[off] & 15) * 4
        if ihl < 20:
            return -1 - SKIP_TRUNCATED
        if _be16(p + off + 6) & 0x3FFF:  # more fragments, or an offset
            return -1 - SKIP_FRAGMENT
        proto[0] = p[off + 9]
        memset(src, 0, 10)  # IPv4 mapped into ::ffff:0:0/96
        memset(dst, 0, 10)
        src[10] = src[11] = dst[10] = dst[11] = 0xFF
        memcpy(src + 12, p + off + 12, 4)
        memcpy(dst + 12, p + off + 16, 4)
        off += ihl
    elif version == 6:
        if caplen < off + 40:
            return -1 - SKIP_TRUNCATED
        nh = p[off + 6]
        memcpy(src, p + off + 8, 16)
        memcpy(dst, p + off + 24, 16)
        off += 40
        while nh == 0 or nh == 43 or nh == 60 or nh == 44 or nh == 51:
            if caplen < off + 8:
                return -1 - SKIP_TRUNCATED
            if nh == 44:
                if (_be16(p + off + 2) & 0xFFF9) != 0:  # an offset, or more fragments
                    return -1 - SKIP_FRAGMENT
                hl = 8
            elif nh == 51:
                hl = (p[off + 1] + 2) * 4
            else:
                hl = (p[off + 1] + 1) * 8
            nh = p[off]
            off += hl
        proto[0] = nh
    else:
        return -1 - SKIP_NOT_IP
    if proto[0] != 6 and proto[0] != 17 and proto[0] != 132:
        return -1 - SKIP_OTHER_PROTOCOL
    if caplen < off + 4:
        return -1 - SKIP_TRUNCATED
    sport[0] = _be16(p + off)
    dport[0] = _be16(p + off + 2)
    return version


cdef class _Kept:
    """The packets a scan keeps (columns of up to ``cap`` rows) and the skipped ones by reason."""

    cdef object arrays
    cdef double[::1] t
    cdef uint8_t[:, ::1] src
    cdef uint8_t[:, ::1] dst
    cdef uint8_t[::1] fam
    cdef uint16_t[::1] sp
    cdef uint16_t[::1] dp
    cdef uint8_t[::1] pr
    cdef uint32_t[::1] ln
    cdef int64_t[::1] skipped
    cdef int64_t[:, ::1] where  # the first SKIP_EXAMPLES skipped packets' numbers, by reason
    cdef Py_ssize_t n, cap

    def __cinit__(self, Py_ssize_t cap):
        self.arrays = (np.zeros(cap, dtype=np.float64), np.zeros((cap, 16), dtype=np.uint8),
                       np.zeros((cap, 16), dtype=np.uint8), np.zeros(cap, dtype=np.uint8),
                       np.zeros(cap, dtype=np.uint16), np.zeros(cap, dtype=np.uint16), np.zeros(cap, dtype=np.uint8),
                       np.zeros(cap, dtype=np.uint32))
        self.t, self.src, self.dst, self.fam, self.sp, self.dp, self.pr, self.ln = self.arrays
        self.skipped = np.zeros(N_SKIPS, dtype=np.int64)
        self.where = np.full((N_SKIPS, SKIP_EXAMPLES), -1, dtype=np.int64)
        self.n = 0
        self.cap = cap

    cdef void add(self, const uint8_t *frame, Py_ssize_t caplen, uint32_t wire, int linktype,
                  double when, Py_ssize_t number) noexcept nogil:
        """Parse one frame (``wire`` bytes long on the wire; ``number``: the how-manieth of
        this scan, from 0): keep it (when there is room: callers stop at ``cap``), or count it."""
        cdef uint16_t s16, d16
        cdef uint8_t p8
        cdef Py_ssize_t k = self.n
        cdef int got = _packet(frame, caplen, linktype, &self.src[k, 0], &self.dst[k, 0], &s16, &d16, &p8)
        if got < 0:
            self.skip(-1 - got, number)
            return
        self.t[k] = when
        self.fam[k] = got
        self.sp[k] = s16
        self.dp[k] = d16
        self.pr[k] = p8
        self.ln[k] = wire
        self.n += 1

    cdef void skip(self, int reason, Py_ssize_t number) noexcept nogil:
        if self.skipped[reason] < SKIP_EXAMPLES:
            self.where[reason, self.skipped[reason]] = number
        self.skipped[reason] += 1

    def columns(self):
        """(time, src, dst, family, sport, dport, proto, length) of the packets kept, then
        the skipped ones' counts and first numbers, by reason."""
        return (*(a[:self.n] for a in self.arrays), np.asarray(self.skipped), np.asarray(self.where))


def scan_pcap(data, Py_ssize_t pos, bint swapped, bint nanos, int linktype, Py_ssize_t max_packets):
    """The records of a classic pcap file from ``data[pos:]`` (the file header already read):
    up to ``max_packets`` whole records, in C without the GIL. ``swapped``: the file is
    big-endian; ``nanos``: its timestamps are in nanoseconds. Returns ``(pos, n, time, src,
    dst, family, sport, dport, proto, length, skipped, where)``: where the next record starts (a
    record cut off at the end is left for the next call), the records read, and for each packet
    kept its time in seconds, addresses as (n, 16) uint8 (IPv4 mapped into ::ffff:0:0/96),
    family 4 or 6, ports, protocol and length on the wire; ``skipped`` counts the others by
    reason (see kproxy_core.captures.SKIPS), and ``where`` (reasons x SKIP_EXAMPLES) holds
    the numbers of the first of them in this call (0: the record at ``pos``; -1: none).
    ValueError for a record longer than 256 KiB (not a pcap)."""
    cdef const uint8_t[::1] buf = np.frombuffer(data, dtype=np.uint8) if len(data) else np.zeros(1, np.uint8)
    cdef Py_ssize_t size = len(data)
    if pos < 0 or pos > size or max_packets < 0:
        raise ValueError("scan_pcap: pos or max_packets out of range")
    cdef _Kept kept = _Kept(max_packets)
    cdef Py_ssize_t records = 0
    cdef uint32_t sec, frac, incl
    cdef bint bad = False
    with nogil:
        while kept.n < max_packets and pos + 16 <= size:
            sec = _rd32(&buf[pos], swapped)
            frac = _rd32(&buf[pos + 4], swapped)
            incl = _rd32(&buf[pos + 8], swapped)
            if incl > 262144:
                bad = True
                break
            if pos + 16 + <Py_ssize_t>incl > size:
                break
            kept.add(&buf[pos + 16], incl, _rd32(&buf[pos + 12], swapped), linktype,
                     sec + frac * (1e-9 if nanos else 1e-6), records)
            records += 1
            pos += 16 + incl
    if bad:
        raise ValueError(f"scan_pcap: a record at byte {pos} claims {incl} bytes: not a pcap record")
    return (pos, records, *kept.columns())


def scan_pcapng(data, Py_ssize_t pos, bint swapped, linktypes, ticks, Py_ssize_t max_packets):
    """The blocks of one pcapng section from ``data[pos:]``, in C without the GIL: Enhanced
    and Simple Packet Blocks are read (up to ``max_packets``), other blocks passed over,
    until a Section Header or Interface Description Block, the end of the data or a block cut
    off. ``swapped``: the section is big-endian; ``linktypes`` and ``ticks`` (seconds per
    timestamp unit) describe the section's interfaces so far (a link type not read gives
    SKIP_LINKTYPE). Returns ``(pos, n, time, src, dst, family, sport, dport, proto, length,
    skipped, where, stop)``, as ``scan_pcap`` does, with ``stop`` 1 for a Section Header Block at ``pos``,
    2 for an Interface Description Block there, 0 otherwise. ValueError for a block whose
    length is not a multiple of 4, too small, over 16 MiB, or a packet of an interface not
    described."""
    cdef const uint8_t[::1] buf = np.frombuffer(data, dtype=np.uint8) if len(data) else np.zeros(1, np.uint8)
    cdef const int32_t[::1] lts = np.ascontiguousarray(linktypes, dtype=np.int32) if len(linktypes) else np.zeros(1, np.int32)
    cdef const double[::1] tks = np.ascontiguousarray(ticks, dtype=np.float64) if len(ticks) else np.zeros(1, np.float64)
    cdef Py_ssize_t n_if = len(linktypes), size = len(data)
    if pos < 0 or pos > size or max_packets < 0 or len(ticks) != n_if:
        raise ValueError("scan_pcapng: pos, max_packets or the interfaces out of range")
    cdef _Kept kept = _Kept(max_packets)
    cdef Py_ssize_t records = 0, data_at, caplen
    cdef uint32_t btype, blen, iface = 0, wire = 0
    cdef uint64_t ts = 0
    cdef int stop = 0, bad = 0, lt
    with nogil:
        while kept.n < max_packets and pos + 12 <= size:
            btype = _rd32(&buf[pos], swapped)
            blen = _rd32(&buf[pos + 4], swapped)
            if btype == 0x0A0D0D0A:
                stop = 1
                break
            if blen < 12 or blen % 4 or blen > 16777216:
                bad = 1
                break
            if pos + <Py_ssize_t>blen > size:
                break
            if btype == 1:
                stop = 2
                break
            if btype == 6 or btype == 3:  # Enhanced / Simple Packet Block
                if btype == 6:
                    if blen < 32:
                        bad = 1
                        break
                    iface = _rd32(&buf[pos + 8], swapped)
                    ts = (<uint64_t>_rd32(&buf[pos + 12], swapped) << 32) | _rd32(&buf[pos + 16], swapped)
                    caplen = _rd32(&buf[pos + 20], swapped)
                    wire = _rd32(&buf[pos + 24], swapped)
                    data_at = pos + 28
                    if data_at + caplen > pos + <Py_ssize_t>blen - 4:
                        bad = 1
                        break
                else:
                    if blen < 16:
                        bad = 1
                        break
                    iface = 0
                    ts = 0
                    caplen = _rd32(&buf[pos + 8], swapped)  # the original length
                    wire = <uint32_t>caplen
                    data_at = pos + 12
                    if caplen > <Py_ssize_t>blen - 16:
                        caplen = blen - 16
                if iface >= <uint32_t>n_if:
                    bad = 2
                    break
                lt = lts[iface]
                if lt == 1 or lt == 113 or lt == 276 or lt == 101 or lt == 12 or lt == 14 or lt == 228 or lt == 229:
                    kept.add(&buf[data_at], caplen, wire, lt, ts * tks[iface], records)
                else:
                    kept.skip(SKIP_LINKTYPE, records)
                records += 1
            pos += blen
    if bad == 1:
        raise ValueError(f"scan_pcapng: the block at byte {pos} is malformed (type {btype:#x}, length {blen})")
    if bad == 2:
        raise ValueError(f"scan_pcapng: a packet at byte {pos} names interface {iface}, which no block described")
    return (pos, records, *kept.columns(), stop)


cdef list _u32_list(object x, str name):
    # as the twin's _int_list, then bounded: check_maglev refuses anything past 2**32 - 1
    try:
        return [operator.index(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    except TypeError:
        raise ValueError(f"maglev: {name} must be a sequence of integers") from None


cdef inline kp_a6 _a6(object x) except *:
    cdef kp_a6 a
    if x < 0 or x >> 128:
        raise OverflowError("IPv6 address out of range")
    a.hi = <uint64_t>(x >> 64)
    a.lo = <uint64_t>(x & 0xFFFFFFFFFFFFFFFF)
    return a


cdef extern from "Python.h":
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void *PyUnicode_DATA(object o)

# ---------------------------------------------------------------------- Decision

cdef inline str _ip4_text(uint32_t a):
    """Dotted decimal, as str(IPv4Address(a)), written straight into a new ASCII str."""
    cdef char buf[16]
    cdef int n = 0, k, octet
    for k in range(4):
        octet = (a >> (24 - 8 * k)) & 0xFF
        if octet >= 100:
            buf[n] = <char>(48 + octet // 100)
            n += 1
        if octet >= 10:
            buf[n] = <char>(48 + (octet // 10) % 10)
            n += 1
        buf[n] = <char>(48 + octet % 10)
        n += 1
        buf[n] = 46  # '.'
        n += 1
    s = PyUnicode_New(n - 1, 127)
    memcpy(PyUnicode_DATA(s), buf, n - 1)
    return <str>s


@cython.freelist(64)
cdef class Decision:
    # service is resolved from the service list on first access: a lookup spread over
    # 10,000 services otherwise pays a cache miss on the name it may never read
    # (measured per call: 2.9 -> 2.15 M/s with the name taken eagerly)
    # so is the endpoint, built from its address and port on first access (a caller that
    # reads only the verdict skips its text; measured per call, hot: 4.4 -> 5.6 M/s)
    cdef public object verdict
    cdef object _service
    cdef list _services
    cdef int32_t _svc
    cdef public object frontend
    cdef object _endpoint
    cdef uint8_t _ep_kind  # 0: _endpoint holds it; 4 / 6: build it from _ep_*
    cdef uint16_t _ep_port
    cdef uint32_t _ep4
    cdef kp_a6 _ep6
    cdef public object masquerade

    def __init__(self, verdict, service, service_index, frontend, endpoint, masquerade):
        self.verdict = verdict
        self._service = service
        self._services = None
        self._svc = service_index
        self.frontend = frontend
        self._endpoint = endpoint
        self._ep_kind = 0
        self.masquerade = masquerade

    @property
    def endpoint(self):
        if self._ep_kind == 4:
            self._endpoint = (_ip4_text(self._ep4), self._ep_port)
            self._ep_kind = 0
        elif self._ep_kind == 6:
            self._endpoint = (str(_IPv6((<object>self._ep6.hi << 64) | self._ep6.lo)), self._ep_port)
            self._ep_kind = 0
        return self._endpoint

    @endpoint.setter
    def endpoint(self, value):
        self._endpoint = value
        self._ep_kind = 0

    @property
    def service(self):
        if self._services is not None:
            self._service = self._services[self._svc] if self._svc >= 0 else None
            self._services = None
        return self._service

    @property
    def service_index(self):
        return self._svc

    def __repr__(self):
        return (
            f"Decision(verdict={self.verdict!r}, service={self.service!r}, "
            f"frontend={self.frontend!r}, endpoint={self.endpoint!r}, "
            f"masquerade={self.masquerade!r})"
        )

    def __eq__(self, other):
        # as the twin: any object with the six attributes compares by value
        if not hasattr(other, "verdict"):
            return NotImplemented
        return (
            bool(self.endpoint == getattr(other, "endpoint", None))
            and bool(self.frontend == getattr(other, "frontend", None))
            and bool(self.masquerade == getattr(other, "masquerade", None))
            and bool(self.service == getattr(other, "service", None))
            and bool(self.service_index == getattr(other, "service_index", None))
            and bool(self.verdict == getattr(other, "verdict", None))
        )


# ---------------------------------------------------------------------- one family's tables

@cython.final
cdef class _Fam:
    """One family's tables in C (kp_fam: its blocks, frontend and NodePort tables)."""
    cdef kp_fam f
    cdef bint ready

    def __dealloc__(self):
        if self.ready:
            kp_fam_free(&self.f)


cdef _Fam _new_fam(dict c, bint v6):
    """An empty family with the node's address sets and the cluster-ips-check of ``c``."""
    cdef _Fam fam = _Fam.__new__(_Fam)
    cdef kp_fam *f = &fam.f
    cdef Py_ssize_t i
    cdef const uint32_t[:] u4
    cdef const uint8_t[:, :] u6
    cdef const int64_t[:] svc
    nlocal, nnp, ncip, nscidr = (len(c["local_addrs"]), len(c["np_addrs"]), len(c["cip_service"]),
                                 len(c["scidr_prefix"]))
    if max(nlocal, nnp, ncip, nscidr, len(c["fe_port"]), len(c["np_port"])) > 0x7FFFFFFF:
        raise ValueError("tables: more than 2**31 - 1 rows")
    _check(kp_fam_init(f, v6, nlocal, nnp, ncip, nscidr, len(c["fe_port"]), len(c["np_port"])))
    fam.ready = True
    if v6:
        u6 = c["local_addrs"]
        for i in range(f.nlocal):
            f.local6[i] = kp_a6_load(&u6[i, 0])
        u6 = c["np_addrs"]
        for i in range(f.nnpaddr):
            f.npaddr6[i] = kp_a6_load(&u6[i, 0])
    else:
        u4 = c["local_addrs"]
        for i in range(f.nlocal):
            f.local4[i] = u4[i]
        u4 = c["np_addrs"]
        for i in range(f.nnpaddr):
            f.npaddr4[i] = u4[i]
    f.np_match_all = c["np_match_all"]
    f.np_loopback = c["np_loopback"]
    f.det_on = c["det_on"]
    if f.det_on:
        bits = 128 if v6 else 32
        prefix = c["det_prefix"]
        mask = ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)
        if v6:
            f.det_mask6 = _a6(mask)
            f.det_net6 = _a6(int.from_bytes(bytes(c["det_addr"][0]), "big"))
        else:
            f.det_mask4 = mask
            f.det_net4 = int(c["det_addr"][0])
    # nftables' cluster-ips-check: the ClusterIPs with their service, the service CIDRs
    # as pre-masked (network, mask) pairs (both empty in iptables mode)
    svc = c["cip_service"]
    if v6:
        u6 = c["cip_addr"]
        for i in range(f.ncip):
            f.cip6[i].addr = kp_a6_load(&u6[i, 0])
            f.cip6[i].svc = <int32_t>svc[i]
    else:
        u4 = c["cip_addr"]
        for i in range(f.ncip):
            f.cip4[i].addr = u4[i]
            f.cip4[i].svc = <int32_t>svc[i]
    bits = 128 if v6 else 32
    full = (1 << bits) - 1
    prefixes = c["scidr_prefix"]
    addrs = c["scidr_addr"]
    for i in range(f.nscidr):
        mask = full ^ ((1 << (bits - int(prefixes[i]))) - 1)
        if v6:
            net = int.from_bytes(bytes(addrs[i]), "big") & mask
            f.scidr6[i].net = _a6(net)
            f.scidr6[i].mask = _a6(mask)
        else:
            f.scidr4[i].net = <uint32_t>(int(addrs[i]) & mask)
            f.scidr4[i].mask = <uint32_t>mask
    kp_fam_sort(f)
    return fam


cdef class _Blocks:
    """Blocks built in a family's arena, given back to it unless installed (``taken``).
    Built and discarded only by the family's writer (the Core's writer lock, or a family
    no one else sees yet)."""
    cdef kp_blk **b
    cdef Py_ssize_t n
    cdef bint taken
    cdef bint any_sel
    cdef _Fam fam

    cdef void discard(self):
        cdef Py_ssize_t i
        if self.b != NULL and not self.taken:
            for i in range(self.n):
                kp_blk_discard(&self.fam.f, self.b[i])
            self.taken = True

    def __dealloc__(self):
        self.discard()
        if self.b != NULL:
            free(self.b)


cdef inline uint32_t _be32(const unsigned char *p) noexcept nogil:
    """Four bytes in network order (a packed IPv4 address)."""
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef _Blocks _make_blocks(dict c, bint v6, _Fam fam):
    """One block per port of checked tables: its records, the keys that point at them,
    its pools, weights, lookup tables and KUBE-FW sources."""
    cdef Py_ssize_t nport = len(c["port_service"]), i, k, j, r, e
    cdef _Blocks out = _Blocks.__new__(_Blocks)
    out.fam = fam
    rec_port_a = c["rec_port"]
    fe_owner = rec_port_a[c["fe_rec"]] if len(c["fe_rec"]) else np.zeros(0, np.int64)
    np_owner = rec_port_a[c["np_rec"]] if len(c["np_rec"]) else np.zeros(0, np.int64)
    rec_order_a = np.argsort(rec_port_a, kind="stable")
    rec_count_a = np.bincount(rec_port_a, minlength=nport) if len(rec_port_a) else np.zeros(nport, np.int64)
    rec_off_a = np.concatenate([[0], np.cumsum(rec_count_a)]).astype(np.int64)
    rec_slot_a = np.empty(len(rec_port_a), np.int64)  # a record's index in its block
    if len(rec_port_a):
        rec_slot_a[rec_order_a] = np.arange(len(rec_port_a)) - rec_off_a[rec_port_a[rec_order_a]]
    # keys: frontends then NodePorts, grouped by port
    key_port_a = np.concatenate([fe_owner, np_owner]).astype(np.int64)
    key_order_a = np.argsort(key_port_a, kind="stable")
    key_count_a = np.bincount(key_port_a, minlength=nport) if len(key_port_a) else np.zeros(nport, np.int64)
    fw_len_a = c["rec_fw_len"]
    fw_count_a = (np.bincount(rec_port_a, weights=fw_len_a, minlength=nport).astype(np.int64)
                  if len(rec_port_a) else np.zeros(nport, np.int64))
    cdef const int64_t[:] rec_order = rec_order_a
    cdef const int64_t[:] rec_off = rec_off_a
    cdef const int64_t[:] rec_slot = rec_slot_a
    cdef const int64_t[:] key_order = key_order_a.astype(np.int64)
    cdef const int64_t[:] key_count = key_count_a.astype(np.int64)
    cdef const int64_t[:] fw_count = fw_count_a
    cdef const int64_t[:] rkind = c["rec_kind"]
    cdef const int64_t[:] rnpf = c["rec_np_filter"]
    cdef const int64_t[:, :] ract = c["rec_action"]
    cdef const int64_t[:] rfws = c["rec_fw_start"]
    cdef const int64_t[:] rfwl = fw_len_a
    cdef const uint8_t[:] fwp = c["fw_prefix"].astype(np.uint8)
    cdef const int64_t[:] psvc = c["port_service"]
    cdef const int64_t[:] paff = c["port_affinity"]
    cdef const int64_t[:, :] pst = c["port_pool_start"]
    cdef const int64_t[:, :] pln = c["port_pool_len"]
    cdef const uint8_t[:] psel = c["port_selector"].astype(np.uint8)
    cdef const uint64_t[:] pseed = c["port_seed"]
    cdef const int64_t[:, :] tst = c["port_table_start"]
    cdef const int64_t[:, :] tln = c["port_table_len"]
    cdef const int32_t[:] tab = c["sel_table"]
    cdef const int64_t[:] pool_ep = c["pool_ep"]
    cdef const int64_t[:] pool_w = c["pool_weight"]
    cdef const int64_t[:] ep_port = c["ep_port"]
    cdef const int64_t[:] fe_rec = c["fe_rec"]
    cdef const int64_t[:] fe_port = c["fe_port"]
    cdef const int64_t[:] fe_proto = c["fe_proto"]
    cdef const int64_t[:] np_rec = c["np_rec"]
    cdef const int64_t[:] np_port = c["np_port"]
    cdef const int64_t[:] np_proto = c["np_proto"]
    cdef const uint32_t[:] ep4
    cdef const uint32_t[:] fe4
    cdef const uint32_t[:] fw4
    cdef const uint8_t[:, :] ep6
    cdef const uint8_t[:, :] fe6
    cdef const uint8_t[:, :] fw6
    cdef Py_ssize_t nfe = len(c["fe_rec"])
    cdef kp_blk *b
    cdef kp_rec *R
    cdef kp_key *K
    cdef kp_pe4 *p4
    cdef kp_pe6 *p6
    cdef int32_t n0, n1, nfw_at
    cdef int64_t ln, st
    cdef kp_a6 a6
    if v6:
        ep6 = c["ep_addr"]
        fe6 = c["fe_addr"]
        fw6 = c["fw_addr"]
    else:
        ep4 = c["ep_addr"]
        fe4 = c["fe_addr"]
        fw4 = c["fw_addr"]
    out.b = <kp_blk **>calloc(nport if nport else 1, sizeof(kp_blk *))
    if out.b == NULL:
        raise MemoryError("kproxy_core._engine: out of memory")
    cdef Py_ssize_t ko = 0  # where this port's keys start in key_order
    for i in range(nport):
        n0 = <int32_t>pln[i, 0]
        n1 = <int32_t>pln[i, 1]
        b = kp_blk_new(&fam.f.arena, v6, <int32_t>(rec_off[i + 1] - rec_off[i]), <int32_t>key_count[i], n0, n1, psel[i],
                       tln[i, 0] if n0 else 0, tln[i, 1] if n1 else 0, <int32_t>fw_count[i])
        if b == NULL:
            raise MemoryError("kproxy_core._engine: out of memory")
        out.b[i] = b
        out.n = i + 1
        if psel[i] != KP_SEL_RANDOM:
            out.any_sel = True
        b.svc = <int32_t>psvc[i]
        for k in range(2):
            st = pst[i, k]
            ln = pln[i, k]
            for j in range(ln):
                e = pool_ep[st + j]
                if v6:
                    p6 = <kp_pe6 *>b.pool + (n0 if k else 0) + j
                    p6.addr = kp_a6_load(&ep6[e, 0])
                    p6.port = <uint16_t>ep_port[e]
                else:
                    p4 = <kp_pe4 *>b.pool + (n0 if k else 0) + j
                    p4.addr = ep4[e]
                    p4.port = <uint16_t>ep_port[e]
                if b.w != NULL:
                    b.w[(n0 if k else 0) + j] = <uint32_t>pool_w[st + j]
        if n0 and tln[i, 0]:
            memcpy(b.tab, &tab[tst[i, 0]], sizeof(int32_t) * tln[i, 0])
        if n1 and tln[i, 1]:
            memcpy(b.tab + (tln[i, 0] if n0 else 0), &tab[tst[i, 1]], sizeof(int32_t) * tln[i, 1])
        nfw_at = 0
        for j in range(rec_off[i], rec_off[i + 1]):
            r = rec_order[j]
            R = &b.rec[j - rec_off[i]]
            R.kind = <uint8_t>rkind[r]
            R.np_filter = <uint8_t>rnpf[r]
            for k in range(4):  # classes 4-7 (allowed by KUBE-FW) live in the record
                R.action[k] = <uint8_t>ract[r, 4 + k]
                R.blocked[k] = <uint8_t>ract[r, k]
            R.fwn = <int32_t>rfwl[r]
            R.fwl = <const void *><uintptr_t>nfw_at
            for k in range(rfwl[r]):
                if v6:
                    a6 = kp_a6_load(&fw6[rfws[r] + k, 0])
                else:
                    a6.hi = 0
                    a6.lo = fw4[rfws[r] + k]
                kp_blk_set_fw(b, nfw_at, a6, fwp[rfws[r] + k])
                nfw_at += 1
        for j in range(key_count[i]):
            r = key_order[ko + j]
            K = &b.key[j]
            if r < nfe:
                K.np = 0
                K.rec = <int32_t>rec_slot[fe_rec[r]]
                K.port = <uint16_t>fe_port[r]
                K.proto = <uint8_t>fe_proto[r]
                if v6:
                    K.addr = kp_a6_load(&fe6[r, 0])
                else:
                    K.addr.hi = 0
                    K.addr.lo = fe4[r]
            else:
                K.np = 1
                K.rec = <int32_t>rec_slot[np_rec[r - nfe]]
                K.port = <uint16_t>np_port[r - nfe]
                K.proto = <uint8_t>np_proto[r - nfe]
                K.addr.hi = 0
                K.addr.lo = 0
        ko += key_count[i]
        _check(kp_blk_finish(b, <uint32_t>paff[i], pseed[i]))
    return out


cdef _Blocks _spec_blocks(list specs, bint v6, _Fam fam):
    """One block per checked PortSpec (see _engine_py.PortSpec)."""
    cdef Py_ssize_t n = len(specs), i, j, k, w, width = 16 if v6 else 4
    cdef _Blocks out = _Blocks.__new__(_Blocks)
    out.fam = fam
    cdef kp_blk *b
    cdef kp_rec *R
    cdef kp_key *K
    cdef kp_pe4 *p4
    cdef kp_pe6 *p6
    cdef const unsigned char *raw
    cdef const unsigned char *acts
    cdef const unsigned char *pre
    cdef const unsigned char *fwb
    cdef int32_t n0, n1, nfw, off, nfw_at
    cdef int64_t t0, t1
    cdef uint8_t sel
    cdef kp_a6 a6
    cdef const int32_t[:] tv
    out.b = <kp_blk **>calloc(n if n else 1, sizeof(kp_blk *))
    if out.b == NULL:
        raise MemoryError("kproxy_core._engine: out of memory")
    for i in range(n):
        svc, aff, sel_o, seed, addrs, ports, weights, tables, recs, keys = specs[i]
        sel = sel_o
        n0 = <int32_t>(len(addrs[0]) // width)
        n1 = <int32_t>(len(addrs[1]) // width)
        t0 = len(tables[0]) if (tables[0] is not None and n0) else 0
        t1 = len(tables[1]) if (tables[1] is not None and n1) else 0
        nfw = 0
        for rec in recs:
            nfw += len(rec[4])
        b = kp_blk_new(&fam.f.arena, v6, <int32_t>len(recs), <int32_t>len(keys), n0, n1, sel, t0, t1, nfw)
        if b == NULL:
            raise MemoryError("kproxy_core._engine: out of memory")
        out.b[i] = b
        out.n = i + 1
        if sel != KP_SEL_RANDOM:
            out.any_sel = True
        b.svc = <int32_t>svc
        for w in range(2):
            raw = addrs[w]
            off = n0 if w else 0
            pw = ports[w]
            ww = weights[w]
            for j in range(n1 if w else n0):
                if v6:
                    p6 = <kp_pe6 *>b.pool + off + j
                    p6.addr = kp_a6_load(raw + 16 * j)
                    p6.port = <uint16_t>pw[j]
                else:
                    p4 = <kp_pe4 *>b.pool + off + j
                    p4.addr = _be32(raw + 4 * j)
                    p4.port = <uint16_t>pw[j]
                if b.w != NULL:
                    b.w[off + j] = <uint32_t>ww[j] if ww is not None else 1
        if t0:
            tv = np.ascontiguousarray(tables[0], dtype=np.int32)
            memcpy(b.tab, &tv[0], sizeof(int32_t) * t0)
        if t1:
            tv = np.ascontiguousarray(tables[1], dtype=np.int32)
            memcpy(b.tab + t0, &tv[0], sizeof(int32_t) * t1)
        nfw_at = 0
        for j in range(len(recs)):
            kind, act_b, npf, fw_b, pre_b = recs[j]
            R = &b.rec[j]
            R.kind = <uint8_t>kind
            R.np_filter = <uint8_t>npf
            acts = act_b
            for k in range(4):  # classes 4-7 (allowed by KUBE-FW) live in the record
                R.action[k] = acts[4 + k]
                R.blocked[k] = acts[k]
            R.fwn = <int32_t>len(pre_b)
            R.fwl = <const void *><uintptr_t>nfw_at
            pre = pre_b
            fwb = fw_b
            for k in range(len(pre_b)):
                if v6:
                    a6 = kp_a6_load(fwb + 16 * k)
                else:
                    a6.hi = 0
                    a6.lo = _be32(fwb + 4 * k)
                kp_blk_set_fw(b, nfw_at, a6, pre[k])
                nfw_at += 1
        for j in range(len(keys)):
            nodeport, kaddr, kport, kproto, ri = keys[j]
            K = &b.key[j]
            K.np = 1 if nodeport else 0
            K.rec = <int32_t>ri
            K.port = <uint16_t>kport
            K.proto = <uint8_t>kproto
            K.addr.hi = 0
            K.addr.lo = 0
            if not nodeport:
                raw = kaddr
                if v6:
                    K.addr = kp_a6_load(raw)
                else:
                    K.addr.lo = _be32(raw)
        _check(kp_blk_finish(b, <uint32_t>aff, <uint64_t>seed))
    return out


cdef _Fam _build_fam(object t, bint v6, Py_ssize_t nsvc, Py_ssize_t nkinds):
    c = check_tables(t, v6, nsvc, nkinds)  # ValueError for anything inconsistent
    if max(len(c["rec_port"]), len(c["port_service"]), nsvc) > 0x7FFFFFFF:
        raise ValueError("tables: more than 2**31 - 1 rows")
    cdef _Fam fam = _new_fam(c, v6)
    cdef _Blocks blocks = _make_blocks(c, v6, fam)
    cdef int stale = 0
    fam.f.sel_any = blocks.any_sel
    _check(kp_fam_install(&fam.f, blocks.b, <int32_t>blocks.n, NULL, 0, &stale))
    blocks.taken = True
    return fam


# ---------------------------------------------------------------------- the core

cdef inline bint _in4(const uint32_t *a, int32_t n, uint32_t x) noexcept nogil:
    cdef int32_t i
    for i in range(n):
        if a[i] == x:
            return True
    return False


cdef inline bint _in6(const kp_a6 *a, int32_t n, kp_a6 x) noexcept nogil:
    cdef int32_t i
    for i in range(n):
        if a[i].hi == x.hi and a[i].lo == x.lo:
            return True
    return False


cdef inline bint _ip4(object s, uint32_t *out):
    """A dotted quad, parsed in C; False sends the caller to ipaddress."""
    if not PyUnicode_IS_ASCII(s):
        return False
    return kp_parse_ip4(<const char *>PyUnicode_DATA(s), <size_t>PyUnicode_GET_LENGTH(s), out)


cdef inline bint _int4(object x, uint32_t *out):
    """An int below 2**32 (an IPv4 address, as ipaddress takes it); False sends the caller
    to ipaddress (IPv6, negative, too big)."""
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(x, &overflow)
    if overflow or v < 0 or v > 0xFFFFFFFF:
        return False
    out[0] = <uint32_t>v
    return True


cdef inline long _port(object x, str what) except -1:
    cdef int overflow = 0
    cdef long v
    if type(x) is int:
        v = PyLong_AsLongAndOverflow(x, &overflow)
        if not overflow and 0 <= v <= 65535:
            return v
    _check_port(x, what)  # raises for anything but an int (subclass) in range
    return int(x)


cdef inline int _track(object track) except -1:
    # as the twin: any true value reads; only == 1 writes
    cdef int overflow = 0
    cdef long v
    if type(track) is int:  # the common case, without Python comparisons
        v = PyLong_AsLongAndOverflow(track, &overflow)
        if not overflow:
            return 0 if v == 0 else (1 if v == 1 else 2)
    if not track:
        return 0
    return 1 if track == 1 else 2


cdef inline double _now(object now) except? -1.0:
    cdef double t
    if now is None:
        return _time()
    if type(now) is float:
        t = <double>now
        if isfinite(t):
            return t
    return clock(now)  # the twin's check: PacketError naming now


cdef uint64_t _nbuckets(object capacity) except 0:
    nb = 1
    while nb * KP_SLOTS < capacity:
        nb <<= 1
        if nb > (1 << 34):
            raise MemoryError(f"table capacity {capacity!r} is too large")
    return nb


cdef class Core:
    cdef kp_state st
    cdef PyThread_type_lock lock   # held by every lookup while it reads (see the module docstring)
    cdef PyThread_type_lock wlock  # one writer (load, update) at a time
    cdef _Fam fam4
    cdef _Fam fam6
    cdef const kp_fam *c4  # &fam4.f or NULL, changed only with the lock held
    cdef const kp_fam *c6
    cdef list services
    # the names of the frontend-kind codes (index = code): only ever appended to, in place,
    # as flows keep their code across loads (so a code read from any table is in range)
    cdef list frontends
    cdef bint ready

    def __cinit__(self, *args, **kwargs):
        self.lock = PyThread_allocate_lock()
        self.wlock = PyThread_allocate_lock()
        if self.lock == NULL or self.wlock == NULL:
            raise MemoryError("kproxy_core._engine: cannot allocate a lock")
        self.services = []
        self.frontends = list(FRONTEND_NAMES)

    def __dealloc__(self):
        cdef int i
        for i in range(2):
            kp_table_free(&self.st.flows[i])
            kp_table_free(&self.st.aff[i])
        if self.lock != NULL:
            PyThread_free_lock(self.lock)
        if self.wlock != NULL:
            PyThread_free_lock(self.wlock)

    def __init__(
        self,
        seed=0,
        flow_capacity=1 << 18,
        affinity_capacity=1 << 16,
        timeouts=(86400.0, 30.0, 432000.0),
        stale_flows="udp",
    ):
        cdef kp_state st
        cdef int i, status = KP_OK
        memset(&st, 0, sizeof(st))
        seed, flow_capacity, affinity_capacity, t = check_options(
            seed, flow_capacity, affinity_capacity, timeouts, stale_flows)
        st.stale_udp_only = stale_flows == "udp"
        st.seed = seed
        st.aseed = st.seed + <uint64_t>0x9E3779B97F4A7C15
        for i in range(256):
            st.timeout[i] = 30.0
        st.timeout[6] = t[0]
        st.timeout[17] = t[1]
        st.timeout[132] = t[2]
        nbf = _nbuckets(flow_capacity)
        nba = _nbuckets(affinity_capacity)
        status = kp_table_init(&st.flows[0], nbf, sizeof(kp_flow4))
        if status == KP_OK:
            status = kp_table_init(&st.flows[1], nbf, sizeof(kp_flow6))
        if status == KP_OK:
            status = kp_table_init(&st.aff[0], nba, sizeof(kp_aff4))
        if status == KP_OK:
            status = kp_table_init(&st.aff[1], nba, sizeof(kp_aff6))
        if status != KP_OK:
            for i in range(2):  # kp_table_free is a no-op on a zeroed or failed table
                kp_table_free(&st.flows[i])
                kp_table_free(&st.aff[i])
            _check(status)
        # __init__ may run again on a live Core (as the twin allows): swap under the lock
        self._lock()
        old = (self.fam4, self.fam6, self.services, self.frontends)
        if self.ready:
            for i in range(2):
                kp_table_free(&self.st.flows[i])
                kp_table_free(&self.st.aff[i])
        self.st = st
        self.fam4 = self.fam6 = None
        self.c4 = self.c6 = NULL
        self.services = []
        self.frontends = list(FRONTEND_NAMES)  # no flow left to hold a code
        self.ready = True
        PyThread_release_lock(self.lock)
        del old

    cdef inline void _lock(self):
        if not PyThread_acquire_lock(self.lock, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self.lock, WAIT_LOCK)

    # ------------------------------------------------------------------ loading
    def load(self, t4, t6, services, frontends=None):
        services = list(services)
        current = list(self.frontends)
        kinds = check_frontends(frontends, current)
        cdef _Fam n4 = _build_fam(t4, False, len(services), len(kinds))
        cdef _Fam n6 = _build_fam(t6, True, len(services), len(kinds))
        cdef int64_t dropped = 0
        if not self.ready:
            raise EngineError("Core.__init__ was not called")
        self._wlock()
        if frontends is not None and self.frontends != current:  # another writer in between
            try:
                check_frontends(kinds, self.frontends)
            except BaseException:
                PyThread_release_lock(self.wlock)
                raise
        old = (self.fam4, self.fam6, self.services)  # freed after the locks are released
        self._lock()
        try:
            if self.fam4 is not None:
                kp_fam_carry(&n4.f, self.c4)
                kp_fam_carry(&n6.f, self.c6)
            self.fam4 = n4
            self.fam6 = n6
            self.services = services
            self.frontends.extend(kinds[len(self.frontends):])
            self.c4 = &n4.f
            self.c6 = &n6.f
            with nogil:
                dropped = kp_flows_drop(&self.st.flows[0], &n4.f, NULL, 0, self.st.stale_udp_only)
                dropped += kp_flows_drop(&self.st.flows[1], &n6.f, NULL, 0, self.st.stale_udp_only)
        finally:
            PyThread_release_lock(self.lock)
            PyThread_release_lock(self.wlock)
        del old
        return dropped

    def update_ports(self, p4, r4, p6, r6, services, frontends=()):
        """Replace the given ports, remove those of r4 / r6, and append ``services`` to the
        service names and ``frontends`` to the frontend kinds; in place, one publication per
        family (see kp_fam_install). Lookups and batches running meanwhile in other threads
        read, per packet, the old or the new state."""
        if not self.ready:
            raise EngineError("Core.__init__ was not called")
        if self.fam4 is None:
            raise EngineError("Core.update_ports before Core.load")
        added = list(services)
        n = len(self.services) + len(added)
        current = list(self.frontends)
        kinds = check_frontends(_appended(current, frontends), current)
        p4 = check_ports(p4, r4, False, n, len(kinds))
        p6 = check_ports(p6, r6, True, n, len(kinds))
        cdef _Blocks b4 = None
        cdef _Blocks b6 = None
        self._wlock()
        try:
            if self.frontends != current:  # another writer in between
                check_frontends(kinds, self.frontends)
            b4 = _spec_blocks(p4, False, self.fam4)
            b6 = _spec_blocks(p6, True, self.fam6)
            return self._install(b4, list(r4), b6, list(r6), added, kinds)
        finally:
            if b4 is not None:
                b4.discard()
            if b6 is not None:
                b6.discard()
            PyThread_release_lock(self.wlock)

    cdef object _install(self, _Blocks b4, list removed4, _Blocks b6, list removed6, list added, list kinds):
        cdef int stale4 = 0, stale6 = 0
        cdef int64_t dropped = 0
        cdef kp_fam *f4 = &self.fam4.f
        cdef kp_fam *f6 = &self.fam6.f
        cdef int32_t[:] rem4 = np.asarray(removed4, dtype=np.int32).reshape(-1)
        cdef int32_t[:] rem6 = np.asarray(removed6, dtype=np.int32).reshape(-1)
        cdef int32_t[:] only4
        cdef int32_t[:] only6
        cdef int32_t *r4 = &rem4[0] if rem4.shape[0] else NULL
        cdef int32_t *r6 = &rem6[0] if rem6.shape[0] else NULL
        cdef Py_ssize_t i
        if True:  # the caller holds the writer lock
            if (b4.any_sel and not f4.sel_any) or (b6.any_sel and not f6.sel_any):
                # batches pick their loop once: the first non-random selector waits for
                # the batches running with the random-only loop to end
                f4.sel_any = f4.sel_any or b4.any_sel
                f6.sel_any = f6.sel_any or b6.any_sel
                self._lock()
                PyThread_release_lock(self.lock)
            # before the records that name them; in place: a copy of 100,000 names costs
            # more than the rest of an update (Decisions keep the list, and old indices stay)
            self.services.extend(added)
            self.frontends.extend(kinds[len(self.frontends):])
            _check(kp_fam_install(f4, b4.b, <int32_t>b4.n, r4, <int32_t>rem4.shape[0], &stale4))
            b4.taken = True
            _check(kp_fam_install(f6, b6.b, <int32_t>b6.n, r6, <int32_t>rem6.shape[0], &stale6))
            b6.taken = True
            if (stale4 and self.st.flows[0].count) or (stale6 and self.st.flows[1].count):
                only4 = np.unique(np.array([b4.b[i].svc for i in range(b4.n)] + removed4, dtype=np.int32))
                only6 = np.unique(np.array([b6.b[i].svc for i in range(b6.n)] + removed6, dtype=np.int32))
                self._lock()
                with nogil:
                    if stale4 and only4.shape[0]:
                        dropped = kp_flows_drop(&self.st.flows[0], f4, &only4[0], <int32_t>only4.shape[0],
                                                 self.st.stale_udp_only)
                    if stale6 and only6.shape[0]:
                        dropped += kp_flows_drop(&self.st.flows[1], f6, &only6[0], <int32_t>only6.shape[0],
                                                  self.st.stale_udp_only)
                    kp_fam_reclaim(f4)
                    kp_fam_reclaim(f6)
                PyThread_release_lock(self.lock)
            elif f4.nretired + f6.nretired:
                self._reclaim(f4.nretired + f6.nretired > 4096)
        return dropped

    cdef void _reclaim(self, bint wait):
        """Free what updates retired, if no lookup is running now (every lookup reads
        holding the lock: once we hold it, none that started before can still read).
        wait: block until then (the retired list has grown long)."""
        if wait:
            self._lock()
        elif not PyThread_acquire_lock(self.lock, NOWAIT_LOCK):
            return
        kp_fam_reclaim(&self.fam4.f)
        kp_fam_reclaim(&self.fam6.f)
        PyThread_release_lock(self.lock)

    cdef inline void _wlock(self):
        if not PyThread_acquire_lock(self.wlock, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self.wlock, WAIT_LOCK)

    def memory(self):
        """Bytes held, by part: frontend and NodePort tables, port blocks (records, pools,
        selector data), the per-service index, flow and affinity tables."""
        cdef _Fam fam
        out = {"frontends": 0, "nodeports": 0, "blocks": 0, "index": 0, "retired": 0, "flows": 0,
               "affinity": 0, "blocks_count": 0}
        self._lock()
        try:
            for fam in (self.fam4, self.fam6):
                if fam is None:
                    continue
                out["frontends"] += fam.f.fe.size
                out["nodeports"] += fam.f.np.size
                out["blocks"] += fam.f.blk_bytes
                out["blocks_count"] += fam.f.nblk
                out["index"] += fam.f.nsvc * sizeof(void *) + fam.f.cretired * sizeof(void *)
            out["flows"] = sum(self.st.flows[i].nbuckets * KP_SLOTS * (2 + self.st.flows[i].rsize)
                               for i in range(2))
            out["affinity"] = sum(self.st.aff[i].nbuckets * KP_SLOTS * (2 + self.st.aff[i].rsize)
                                  for i in range(2))
        finally:
            PyThread_release_lock(self.lock)
        return out

    def frontend(self, dst, dport, proto="TCP"):
        cdef uint32_t d4 = 0
        cdef kp_a6 d6
        cdef bint v6 = False
        cdef const kp_rec *rec = NULL
        cdef const kp_fam *f
        cdef int how = 0, kind = 0
        cdef int32_t svc = -1, lo, hi, mid
        cdef uint16_t dp
        cdef uint8_t p
        di, _, v6 = _parse_pair(dst, dst)
        if v6:
            d6 = _a6(di)
        else:
            d4 = di
        p = _proto(proto)
        dp = _port(dport, "dport")
        if not self.ready:
            raise EngineError("Core.__init__ was not called")
        self._lock()
        f = self.c6 if v6 else self.c4
        if f != NULL:
            rec = kp_fe6_get(f, d6, dp, p) if v6 else kp_fe4_get(f, d4, dp, p)
            if rec != NULL:
                how = 1
            elif (v6 and ((d6.hi == 0 and d6.lo == 1) or _in6(f.local6, f.nlocal, d6))) or (
                    not v6 and ((d4 >> 24) == 0x7F or _in4(f.local4, f.nlocal, d4))):
                rec = kp_np_get(f, dp, p)
                how = 2 if rec != NULL else 0
            else:
                lo = 0
                hi = f.ncip
                while lo < hi:
                    mid = lo + (hi - lo) // 2
                    if (v6 and (f.cip6[mid].addr.hi < d6.hi or (f.cip6[mid].addr.hi == d6.hi and f.cip6[mid].addr.lo < d6.lo))) or (
                            not v6 and f.cip4[mid].addr < d4):
                        lo = mid + 1
                    else:
                        hi = mid
                if lo < f.ncip and ((v6 and f.cip6[lo].addr.hi == d6.hi and f.cip6[lo].addr.lo == d6.lo) or (
                        not v6 and f.cip4[lo].addr == d4)):
                    svc = f.cip6[lo].svc if v6 else f.cip4[lo].svc
                    kind = 1
                    how = 3
            if rec != NULL:
                svc = rec.svc
                kind = rec.kind
        PyThread_release_lock(self.lock)
        return svc, kind, how

    def flow_count(self):
        cdef int64_t n
        self._lock()
        n = self.st.flows[0].count + self.st.flows[1].count
        PyThread_release_lock(self.lock)
        return n

    def clear(self):
        cdef int i
        self._lock()
        for i in range(2):
            kp_table_clear(&self.st.flows[i])
            kp_table_clear(&self.st.aff[i])
        PyThread_release_lock(self.lock)

    # ------------------------------------------------------------------ lookups
    def lookup(self, src, dst, dport, proto="TCP", sport=0, now=None, track=1):
        cdef uint32_t s4 = 0, d4 = 0
        cdef kp_a6 s6, d6
        cdef bint v6 = False
        s6.hi = s6.lo = d6.hi = d6.lo = 0
        cdef int p, mode
        cdef long dp, sp
        cdef double t
        cdef kp_res r
        cdef list services
        cdef list frontends
        cdef Decision dec
        if not ((type(src) is str and type(dst) is str and _ip4(src, &s4) and _ip4(dst, &d4))
                or (type(src) is int and type(dst) is int and _int4(src, &s4) and _int4(dst, &d4))):
            si, di, v6 = _parse_pair(src, dst)
            if v6:
                s6 = _a6(si)
                d6 = _a6(di)
            else:
                s4 = si
                d4 = di
        po = _PROTO_IN.get(proto) if type(proto) is str else None
        p = _proto(proto) if po is None else po
        dp = _port(dport, "dport")
        sp = _port(sport, "sport")
        t = _now(now)
        mode = _track(track)
        if not self.ready:
            raise EngineError("Core.__init__ was not called")

        self._lock()
        if v6:
            kp_decide6(&self.st, self.c6, s6, d6, <uint16_t>sp, <uint16_t>dp, <uint8_t>p,
                       kp_hash6(self.st.seed, s6, d6, <uint16_t>sp, <uint16_t>dp, <uint8_t>p),
                       KP_REC_UNKNOWN, 0, t, mode, 1, &r)
        else:
            kp_decide4(&self.st, self.c4, s4, d4, <uint16_t>sp, <uint16_t>dp, <uint8_t>p,
                       kp_hash4(self.st.seed, s4, d4, <uint16_t>sp, <uint16_t>dp, <uint8_t>p),
                       KP_REC_UNKNOWN, 0, t, mode, 1, &r)
        services = self.services
        frontends = self.frontends
        PyThread_release_lock(self.lock)

        dec = Decision.__new__(Decision)
        dec.verdict = _VERDICTS[r.verdict]
        dec._services = services
        dec._service = None
        dec._svc = r.svc
        dec.frontend = frontends[r.fe]
        dec._endpoint = None
        dec._ep_kind = 0
        if r.verdict == KP_DNAT:
            dec._ep_port = r.ep_port
            if v6:
                dec._ep6 = r.ep6
                dec._ep_kind = 6
            else:
                dec._ep4 = r.ep_addr
                dec._ep_kind = 4
        dec.masquerade = r.masq != 0
        return dec

    def lookup_batch(self, src, dst, dport, proto, sport, out, now=None, track=1):
        cols = batch_columns(False, src, dst, dport, proto, sport, out)
        clock, times = batch_times(now, len(out))
        cdef double t = clock
        cdef kp_col ct = _nocol() if times is None else _times_col(times)
        # the typed memoryviews hold the buffers for as long as the loop runs
        cdef const uint32_t[:] s = cols[0]
        cdef const uint32_t[:] d = cols[1]
        cdef const uint16_t[:] dp = cols[2]
        cdef const uint8_t[:] pr = cols[3]
        cdef const uint16_t[:] sp = dp if cols[4] is None else cols[4]
        cdef _out4[:] o = out
        cdef int mode = _track(track)
        cdef kp_col cs = _col4(s), cd = _col4(d), cdp = _col2(dp), cpr = _col1(pr)
        cdef kp_col csp = _nocol() if cols[4] is None else _col2(sp)
        cdef char *ob = <char *>&o[0] if o.shape[0] else NULL
        if not self.ready:
            raise EngineError("Core.__init__ was not called")
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
            kp_batch4(&self.st, self.c4, cs, cd, cdp, cpr, csp, ob, o.strides[0], o.shape[0], t,
                      ct, mode)
            PyThread_release_lock(self.lock)

    def lookup_batch6(self, src, dst, dport, proto, sport, out, now=None, track=1):
        cols = batch_columns(True, src, dst, dport, proto, sport, out)
        clock, times = batch_times(now, len(out))
        cdef double t = clock
        cdef kp_col ct = _nocol() if times is None else _times_col(times)
        cdef const uint8_t[:, :] s = cols[0]
        cdef const uint8_t[:, :] d = cols[1]
        cdef const uint16_t[:] dp = cols[2]
        cdef const uint8_t[:] pr = cols[3]
        cdef const uint16_t[:] sp = dp if cols[4] is None else cols[4]
        cdef _out6[:] o = out
        cdef int mode = _track(track)
        cdef kp_col cs = _nocol(), cd = _nocol(), cdp = _col2(dp), cpr = _col1(pr)
        cdef kp_col csp = _nocol() if cols[4] is None else _col2(sp)
        cdef char *ob = <char *>&o[0] if o.shape[0] else NULL
        if o.shape[0]:
            cs.p = <const char *>&s[0, 0]
            cs.step = s.strides[0]
            cd.p = <const char *>&d[0, 0]
            cd.step = d.strides[0]
        if not self.ready:
            raise EngineError("Core.__init__ was not called")
        with nogil:
            PyThread_acquire_lock(self.lock, WAIT_LOCK)
            kp_batch6(&self.st, self.c6, cs, s.strides[1], cd, d.strides[1], cdp, cpr, csp, ob,
                      o.strides[0], o.shape[0], t, ct, mode)
            PyThread_release_lock(self.lock)


# ---------------------------------------------------------------------- batch columns
# A column is a typed memoryview's buffer and stride; batch_columns has checked the
# dtype and length, the typed memoryview checks the buffer format again.

cdef inline kp_col _nocol():
    cdef kp_col c
    c.p = NULL
    c.step = 0
    return c


cdef kp_col _col4(const uint32_t[:] a):
    cdef kp_col c = _nocol()
    if a.shape[0]:
        c.p = <const char *>&a[0]
        c.step = a.strides[0]
    return c


cdef kp_col _times_col(const double[:] a):
    cdef kp_col c = _nocol()
    if a.shape[0]:
        c.p = <const char *>&a[0]
        c.step = a.strides[0]
    return c


cdef kp_col _col2(const uint16_t[:] a):
    cdef kp_col c = _nocol()
    if a.shape[0]:
        c.p = <const char *>&a[0]
        c.step = a.strides[0]
    return c


cdef kp_col _col1(const uint8_t[:] a):
    cdef kp_col c = _nocol()
    if a.shape[0]:
        c.p = <const char *>&a[0]
        c.step = a.strides[0]
    return c

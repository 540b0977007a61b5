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

Locking: one PyThread lock per Core serialises batches (which hold it without the
GIL), per-call lookups (which hold it with the GIL, for a few hundred nanoseconds),
``load``'s swap and flow remap, ``clear`` and ``flow_count``. Nothing that can run
Python code (a finaliser, a signal handler) happens while it is held: ``load`` keeps
the old tables alive until after it has released the lock.
"""

cimport cython
from cpython.long cimport PyLong_AsLongAndOverflow
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
from libc.string cimport memcpy, memset

from kp_core cimport *

import operator
import time

from kproxy_core._engine_py import (
    AFFINITY_SALT,
    PROTO_IN,
    SLOTS,
    _check_port,
    _parse_pair,
    _proto,
    batch_columns,
    check_tables,
)
from kproxy_core.errors import EngineError
from kproxy_core.selectors import SELECTOR_CODES, WEIGHT_SALT, check_maglev
from kproxy_core.tables import FRONTENDS, VERDICTS

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
cdef list _FRONTENDS = FRONTENDS  # grows as plugins add frontend kinds (tables.frontend_code)
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
    cdef public object verdict
    cdef object _service
    cdef list _services
    cdef int32_t _svc
    cdef public object frontend
    cdef public object endpoint
    cdef public object masquerade

    def __init__(self, verdict, service, service_index, frontend, endpoint, masquerade):
        self.verdict = verdict
        self._service = service
        self._services = None
        self._svc = service_index
        self.frontend = frontend
        self.endpoint = endpoint
        self.masquerade = masquerade

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
    """One family's tables in C, and the Python objects decisions hand out."""
    cdef kp_fam f
    cdef list ep_tuple  # (ep_str, port) per endpoint: Decision.endpoint

    def __dealloc__(self):
        kp_fam_free(&self.f)


cdef _Fam _build_fam(object t, bint v6, Py_ssize_t nsvc):
    c = check_tables(t, v6, nsvc)  # ValueError for anything inconsistent
    cdef _Fam fam = _Fam.__new__(_Fam)
    cdef kp_fam *f = &fam.f
    cdef Py_ssize_t i, k, n
    cdef const int64_t[:] a
    cdef const int64_t[:] b
    cdef const int64_t[:] d
    cdef const int64_t[:, :] a2
    cdef const int64_t[:, :] b2
    cdef const uint32_t[:] u4
    cdef const uint8_t[:, :] u6
    cdef kp_a6 x6
    cdef const uint8_t[:] selv
    cdef const uint64_t[:] seedv
    cdef const int32_t[:] tab
    sizes = [len(c[name]) for name in ("rec_port", "port_service", "pool_ep", "ep_port", "fe_port",
                                 "np_port", "local_addrs", "np_addrs", "fw_prefix")]
    if max(sizes + [nsvc]) > 0x7FFFFFFF:
        raise ValueError("tables: more than 2**31 - 1 rows")
    kinds = c["port_selector"]
    nal = sizes[2] if (kinds == KP_SEL_WEIGHTED).any() else 0
    nrr = sizes[2] if (kinds == KP_SEL_RR).any() else 0
    _check(kp_fam_alloc(f, v6, sizes[0], sizes[1], sizes[2], sizes[3], sizes[4], sizes[5],
                        sizes[6], sizes[7], <int32_t>nsvc, sizes[8], len(c["sel_table"]), nal, nrr))

    a = c["rec_port"]
    b = c["rec_kind"]
    d = c["rec_np_filter"]
    a2 = c["rec_action"]
    for i in range(f.nrec):
        f.rec_port[i] = <int32_t>a[i]
        f.rec[i].kind = <uint8_t>b[i]
        f.rec[i].np_filter = <uint8_t>d[i]
        for k in range(4):  # classes 4-7 (allowed by KUBE-FW) live in the record
            f.rec[i].action[k] = <uint8_t>a2[i, 4 + k]
            f.fwrec[i].blocked[k] = <uint8_t>a2[i, k]
    a = c["rec_fw_start"]
    b = c["rec_fw_len"]
    for i in range(f.nrec):
        f.fwrec[i].start = <int32_t>a[i]
        f.fwrec[i].len = <int32_t>b[i]
        f.rec[i].fw = b[i] > 0
    _fill_fw(f, c["fw_addr"], c["fw_prefix"], v6)
    _fill_check(f, c, v6)
    a = c["port_service"]
    b = c["port_affinity"]
    a2 = c["port_pool_start"]
    b2 = c["port_pool_len"]
    for i in range(f.nport):
        f.port[i].svc = <int32_t>a[i]
        f.port[i].affinity = <uint32_t>b[i]
        for k in range(2):
            f.port[i].start[k] = <int32_t>a2[i, k]
            f.port[i].len[k] = <int32_t>b2[i, k]
    selv = kinds.astype(np.uint8)
    seedv = c["port_seed"]
    a2 = c["port_table_start"]
    b2 = c["port_table_len"]
    for i in range(f.nport):
        f.port[i].sel = selv[i]
        f.port[i].seed = seedv[i]
        for k in range(2):
            f.port[i].tstart[k] = <int32_t>a2[i, k]
            f.port[i].tlen[k] = <uint32_t>b2[i, k]
    a = c["pool_ep"]
    b = c["pool_weight"]
    for i in range(f.npool):
        f.pool_ep[i] = <int32_t>a[i]
        f.pool_w[i] = <uint32_t>b[i]
    tab = c["sel_table"]
    if f.ntab:
        memcpy(f.tab, &tab[0], sizeof(int32_t) * f.ntab)

    a = c["ep_port"]
    if v6:
        u6 = c["ep_addr"]
        for i in range(f.nep):
            f.ep6[i].addr = kp_a6_load(&u6[i, 0])
            f.ep6[i].port = <uint16_t>a[i]
    else:
        u4 = c["ep_addr"]
        for i in range(f.nep):
            f.ep4[i].addr = u4[i]
            f.ep4[i].port = <uint16_t>a[i]

    a = c["fe_port"]
    b = c["fe_proto"]
    d = c["fe_rec"]
    if v6:
        u6 = c["fe_addr"]
        for i in range(f.nfe):
            kp_fe6_put(f, kp_a6_load(&u6[i, 0]), <uint16_t>a[i], <uint8_t>b[i], <int32_t>d[i])
    else:
        u4 = c["fe_addr"]
        for i in range(f.nfe):
            kp_fe4_put(f, u4[i], <uint16_t>a[i], <uint8_t>b[i], <int32_t>d[i])
    a = c["np_port"]
    b = c["np_proto"]
    d = c["np_rec"]
    for i in range(f.nnp):
        kp_np_put(f, <uint16_t>a[i], <uint8_t>b[i], <int32_t>d[i])

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
    _check(kp_fam_index(f))
    fam.ep_tuple = list(zip(c["ep_str"], c["ep_port"].tolist()))
    return fam


cdef int _fill_fw(kp_fam *f, addrs, prefixes, bint v6) except -1:
    """The allowed-source CIDRs of every KUBE-FW, as pre-masked (network, mask) pairs."""
    cdef Py_ssize_t i
    bits = 128 if v6 else 32
    full = (1 << bits) - 1
    for i in range(f.nfw):
        mask = full ^ ((1 << (bits - int(prefixes[i]))) - 1)
        if v6:
            net = int.from_bytes(bytes(addrs[i]), "big") & mask
            f.fw6[i].net = _a6(net)
            f.fw6[i].mask = _a6(mask)
        else:
            f.fw4[i].net = <uint32_t>(int(addrs[i]) & mask)
            f.fw4[i].mask = <uint32_t>mask
    return 0


cdef int _fill_check(kp_fam *f, dict c, bint v6) except -1:
    """nftables' cluster-ips-check: the ClusterIPs with their service, the service CIDRs
    as pre-masked (network, mask) pairs (both empty in iptables mode)."""
    cdef Py_ssize_t i
    cdef const int64_t[:] svc = c["cip_service"]
    cdef const uint32_t[:] u4
    cdef const uint8_t[:, :] u6
    ncip, nscidr = len(c["cip_service"]), len(c["scidr_prefix"])
    if max(ncip, nscidr) > 0x7FFFFFFF:
        raise ValueError("tables: more than 2**31 - 1 rows")
    _check(kp_fam_alloc_check(f, <int32_t>ncip, <int32_t>nscidr))
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
    return 0


# ---------------------------------------------------------------------- the core

cdef inline bint _ip4(object s, uint32_t *out):
    """A dotted quad, parsed in C; False sends the caller to ipaddress."""
    if not PyUnicode_IS_ASCII(s):
        return False
    return kp_parse_ip4(<const char *>PyUnicode_DATA(s), <size_t>PyUnicode_GET_LENGTH(s), out)


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
    if not track:
        return 0
    return 1 if track == 1 else 2


cdef inline double _now(object now) except? -1.0:
    if now is None:
        return _time()
    return float(now)


cdef uint64_t _nbuckets(object capacity) except 0:
    nb = 1
    while nb * KP_SLOTS < capacity:
        nb <<= 1
        if nb > (1 << 34):
            raise MemoryError(f"table capacity {capacity!r} is too large")
    return nb


cdef class Core:
    cdef kp_state st
    cdef PyThread_type_lock lock
    cdef _Fam fam4
    cdef _Fam fam6
    cdef const kp_fam *c4  # &fam4.f or NULL, changed only with the lock held
    cdef const kp_fam *c6
    cdef list services
    cdef bint ready
    cdef long port_key  # the last endpoint port handed out, and its int object: most
    cdef object port_obj  # endpoints share a port, and allocating one costs ~25 ns a call

    def __cinit__(self, *args, **kwargs):
        self.lock = PyThread_allocate_lock()
        if self.lock == NULL:
            raise MemoryError("kproxy_core._engine: cannot allocate a lock")
        self.services = []
        self.port_key = -1
        self.port_obj = None

    def __dealloc__(self):
        cdef int i
        for i in range(2):
            kp_table_free(&self.st.flows[i])
            kp_table_free(&self.st.aff[i])
        if self.lock != NULL:
            PyThread_free_lock(self.lock)

    def __init__(
        self,
        seed=0,
        flow_capacity=1 << 18,
        affinity_capacity=1 << 16,
        timeouts=(86400.0, 30.0, 432000.0),
    ):
        cdef kp_state st
        cdef int i, status = KP_OK
        memset(&st, 0, sizeof(st))
        if flow_capacity < 1 or affinity_capacity < 1:
            raise ValueError("table capacities must be positive")
        if len(timeouts) != 3 or any(not (t > 0) for t in timeouts):
            raise ValueError("timeouts must be three positive numbers (TCP, UDP, SCTP)")
        st.seed = seed & M64
        st.aseed = st.seed + <uint64_t>0x9E3779B97F4A7C15
        for i in range(256):
            st.timeout[i] = 30.0
        st.timeout[6] = float(timeouts[0])
        st.timeout[17] = float(timeouts[1])
        st.timeout[132] = float(timeouts[2])
        nbf = _nbuckets(flow_capacity)
        nba = _nbuckets(affinity_capacity)
        status = kp_table_init(&st.flows[0], nbf, sizeof(kp_flow4), 1)
        if status == KP_OK:
            status = kp_table_init(&st.flows[1], nbf, sizeof(kp_flow6), 0)
        if status == KP_OK:
            status = kp_table_init(&st.aff[0], nba, sizeof(kp_aff4), 0)
        if status == KP_OK:
            status = kp_table_init(&st.aff[1], nba, sizeof(kp_aff6), 0)
        if status != KP_OK:
            for i in range(2):  # kp_table_free is a no-op on a zeroed or failed table
                kp_table_free(&st.flows[i])
                kp_table_free(&st.aff[i])
            _check(status)
        # __init__ may run again on a live Core (as the twin allows): swap under the lock
        self._lock()
        old = (self.fam4, self.fam6, self.services)
        if self.ready:
            for i in range(2):
                kp_table_free(&self.st.flows[i])
                kp_table_free(&self.st.aff[i])
        self.st = st
        self.fam4 = self.fam6 = None
        self.c4 = self.c6 = NULL
        self.services = []
        self.ready = True
        PyThread_release_lock(self.lock)
        del old

    cdef inline void _lock(self):
        if not PyThread_acquire_lock(self.lock, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self.lock, WAIT_LOCK)

    # ------------------------------------------------------------------ loading
    def load(self, t4, t6, services):
        services = list(services)
        cdef _Fam n4 = _build_fam(t4, False, len(services))
        cdef _Fam n6 = _build_fam(t6, True, len(services))
        cdef int64_t dropped = 0
        cdef const kp_fam *o4
        cdef const kp_fam *o6
        if not self.ready:
            raise EngineError("Core.__init__ was not called")
        old = (self.fam4, self.fam6, self.services)  # freed after the lock is released
        self._lock()
        try:
            o4 = self.c4
            o6 = self.c6
            self.fam4 = n4
            self.fam6 = n6
            self.services = services
            self.c4 = &n4.f
            self.c6 = &n6.f
            with nogil:
                kp_rr_carry(&n4.f, o4)
                kp_rr_carry(&n6.f, o6)
                dropped = kp_remap(&self.st.flows[0], &n4.f, o4)
                dropped += kp_remap(&self.st.flows[1], &n6.f, o6)
        finally:
            PyThread_release_lock(self.lock)
        del old
        return dropped

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
        cdef _Fam fam
        cdef list services
        cdef Decision dec
        if not (type(src) is str and type(dst) is str and _ip4(src, &s4) and _ip4(dst, &d4)):
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
            fam = self.fam6
            kp_decide6(&self.st, self.c6, s6, d6, <uint16_t>sp, <uint16_t>dp, <uint8_t>p,
                       kp_hash6(self.st.seed, s6, d6, <uint16_t>sp, <uint16_t>dp, <uint8_t>p),
                       KP_REC_UNKNOWN, t, mode, 1, &r)
        else:
            fam = self.fam4
            kp_decide4(&self.st, self.c4, s4, d4, <uint16_t>sp, <uint16_t>dp, <uint8_t>p,
                       kp_hash4(self.st.seed, s4, d4, <uint16_t>sp, <uint16_t>dp, <uint8_t>p),
                       KP_REC_UNKNOWN, t, mode, 0, 1, &r)
        services = self.services
        PyThread_release_lock(self.lock)

        dec = Decision.__new__(Decision)
        dec.verdict = _VERDICTS[r.verdict]
        dec._services = services
        dec._service = None
        dec._svc = r.svc
        dec.frontend = _FRONTENDS[r.fe]
        if r.verdict != KP_DNAT:
            dec.endpoint = None
        elif v6:
            dec.endpoint = fam.ep_tuple[r.ep]
        else:
            # a new tuple beats the cached one: its refcount write misses the cache when
            # calls spread over 100,000 endpoints (measured per call: 1.33 -> 2.0 M/s)
            if r.ep_port != self.port_key:
                self.port_key = r.ep_port
                self.port_obj = r.ep_port
            dec.endpoint = (_ip4_text(r.ep_addr), self.port_obj)
        dec.masquerade = r.masq != 0
        return dec

    def lookup_batch(self, src, dst, dport, proto, sport, out, now=None, track=1):
        cdef double t = _now(now)
        cols = batch_columns(False, src, dst, dport, proto, sport, out)
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
                      mode)
            PyThread_release_lock(self.lock)

    def lookup_batch6(self, src, dst, dport, proto, sport, out, now=None, track=1):
        cdef double t = _now(now)
        cols = batch_columns(True, src, dst, dport, proto, sport, out)
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
                      o.strides[0], o.shape[0], t, mode)
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

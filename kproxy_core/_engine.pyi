"""The compiled engine core (``src/_engine.pyx`` over ``src/kp_core.h``).

An exact twin of :mod:`kproxy_core._engine_py`: the same API, the same results for
every input (the same hash, the same flow and affinity tables, the same errors).
Users go through :class:`kproxy_core.Engine`; this is the contract the facade relies on.

Tracking modes (``track``): 0 = no flow or affinity table is read or written: every
packet is a new connection; 1 = read and write (conntrack-like: a known 5-tuple keeps
its endpoint, a new one is recorded); 2 = read only (``trace`` uses it). As in the
twin, any true value other than 1 means read only.

Endpoint selectors (:mod:`kproxy_core.selectors`; the tables' ``port_selector``): random,
weighted, Maglev and source-hash picks are pure functions of the packet and the tables,
the same in every mode. Round-robin keeps a cursor per pool, which every new connection
moves on: in modes 0 and 1 (a packet that hits the flow table, or whose client has a live
ClientIP affinity entry, is no new choice and does not move it); mode 2 only looks at
where the cursor stands. ``load`` carries a pool's cursor over to the new tables when the
pool is unchanged (same service port, same pool, same endpoints in the same order with
the same weights); any other pool starts at its head.

Threads: every method may be called from any thread. Batches run without the GIL;
batches, per-call lookups, ``load``, ``clear`` and ``flow_count`` are serialised by
one lock per Core, so a lookup sees the tables before a ``load`` or after it, never
a mix.
"""

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from typing_extensions import disjoint_base

from .tables import FamilyTables

__all__ = ["Core", "Decision", "affinity_hash", "maglev_table", "mix", "packet_hash", "pick"]

@disjoint_base
class Decision:
    """What kube-proxy does with one packet (see ``kproxy_core.Engine.lookup``).

    Compares equal to any object with the same six attributes (the twin's Decision
    too); not hashable.
    """

    verdict: str
    """"DNAT", "REJECT", "DROP" or "PASS" (not a service packet: untouched)."""
    @property
    def service(self) -> str | None:
        """kube-proxy's ServicePortName, e.g. "default/mynginx:http"; None for PASS."""
    @property
    def service_index(self) -> int:
        """Index into the ``services`` given to ``Core.load``; -1 for PASS."""
    frontend: str | None
    """"ClusterIP", "NodePort", "ExternalIP", "LoadBalancer" or a plugin's kind (the
    core's ``frontends``); None for PASS."""
    endpoint: tuple[str, int] | None
    """(address, port) of the chosen endpoint for DNAT, else None."""
    masquerade: bool
    """Whether the packet is marked for SNAT."""

    __hash__: ClassVar[None]  # type: ignore[assignment]

    def __init__(
        self,
        verdict: str,
        service: str | None,
        service_index: int,
        frontend: str | None,
        endpoint: tuple[str, int] | None,
        masquerade: bool,
    ) -> None: ...
    def __eq__(self, other: object, /) -> bool: ...

@disjoint_base
class Core:
    """Frontend, NodePort, endpoint, flow and affinity tables, and the decision.

    ``seed`` (taken mod 2**64) seeds every hash. ``flow_capacity`` and
    ``affinity_capacity`` bound the flow and ClientIP-affinity tables of each family:
    buckets of 8 slots, the bucket count the smallest power of two with
    ``buckets * 8 >= capacity``; a full bucket evicts an expired flow, else the
    oldest entry. ``timeouts`` are the flow timeouts in seconds for TCP, UDP and SCTP
    (other protocols: 30 s). ``stale_flows`` says which flows a load or update drops
    when their endpoint left their service: ``"udp"`` the UDP ones only, as kube-proxy's
    conntrack cleanup (TCP and SCTP flows keep their endpoint until they time out),
    ``"all"`` every one. Raises ValueError for a seed or capacity that is not an integer, a
    capacity below 1, timeouts that are not three positive numbers (infinity: never) or
    another ``stale_flows``, MemoryError for tables too large to allocate.
    """

    def __init__(
        self,
        seed: int = 0,
        flow_capacity: int = 262144,
        affinity_capacity: int = 65536,
        timeouts: Sequence[float] = (86400.0, 30.0, 432000.0),
        stale_flows: str = "udp",
    ) -> None: ...
    def load(self, t4: FamilyTables, t6: FamilyTables, services: Sequence[str],
             frontends: Sequence[str | None] | None = None) -> int:
        """Swap in new tables (IPv4, IPv6), the service-port names their indices refer to
        and the frontend kinds their ``rec_kind`` codes refer to.

        ``frontends`` (index = code): the core's kinds so far, with any new ones appended;
        None keeps the core's. A new core has ``tables.FRONTEND_NAMES`` (None, then
        kube-proxy's four kinds at codes 1-4); an engine appends its plugins' kinds
        (``tables.FrontendKinds``), so two cores in one process may give one code different
        kinds. A code keeps its kind for the core's life (flows keep their frontend's code
        across loads): names that change or drop a code, repeat a kind, are not non-empty
        strings, or make more than ``tables.MAX_FRONTEND_KINDS`` (127) kinds raise ValueError
        and leave the core unchanged (``_engine_py.check_frontends``).

        A flow survives iff its endpoint (address, port) is still in a pool of its
        service's port in the new tables, or it is not UDP and ``stale_flows`` is
        ``"udp"``; the others are dropped. Returns how many were dropped. Affinity
        entries are kept (they name addresses, and are checked against the pool when
        used).

        Inconsistent tables (an index out of range, a bad shape or dtype, an action
        byte with pool code 3, a frontend kind without a name in ``frontends``, a KUBE-FW
        source list past the end of ``fw_addr`` or a
        prefix longer than the family's, a selector code, weight or seed out of range, a
        Maglev or source-hash pool without a lookup table or with an entry outside its
        pool) raise ValueError and leave the core unchanged.
        """

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
        """Decide one packet.

        ``src``/``dst``: addresses as text or int (both of one family); ``proto``:
        "TCP"/"UDP"/"SCTP" (or lower case) or 6/17/132; ports: ints 0-65535; ``now``:
        seconds, a finite real number (None: the wall clock). Bad addresses, ports,
        protocols, times or mixed families raise PacketError.
        """

    def lookup_batch(
        self,
        src: Any,
        dst: Any,
        dport: Any,
        proto: Any,
        sport: Any,
        out: np.ndarray,
        now: float | np.ndarray | None = None,
        track: int = 1,
    ) -> None:
        """Decide a batch of IPv4 packets into ``out``, without the GIL.

        ``out``: a writable 1-d array of ``engine.OUT_DTYPE`` (ValueError otherwise);
        its length n is the batch size. Columns, each exactly n rows, any strides (the
        Engine facade converts; the core does not): ``src``/``dst`` uint32, ``dport``
        and ``sport`` uint16 (``sport`` None: all 0), ``proto`` uint8; anything else
        raises PacketError. ``now``: the clock for flow and affinity timeouts, one
        finite number for the batch (None: the wall clock) or each packet's own time (a
        float64 array of n finite times; PacketError otherwise, naming the first bad
        index). Each row gets verdict, service
        (index, -1 for none), frontend, ep_ip, ep_port (0 unless DNAT) and masq.
        """

    def lookup_batch6(
        self,
        src: Any,
        dst: Any,
        dport: Any,
        proto: Any,
        sport: Any,
        out: np.ndarray,
        now: float | np.ndarray | None = None,
        track: int = 1,
    ) -> None:
        """As ``lookup_batch`` for IPv6: ``src``/``dst`` are (n, 16) uint8 arrays
        (network byte order) and ``out`` is an ``engine.OUT6_DTYPE`` array."""

    def update_ports(self, p4: Sequence[tuple[Any, ...]], r4: Sequence[int], p6: Sequence[tuple[Any, ...]],
                     r6: Sequence[int], services: Sequence[str], frontends: Sequence[str] = ()) -> int:
        """Change some service ports in place, one publication per family.

        ``p4``/``p6``: the ports that change, as ``PortSpec`` tuples
        (``kproxy_core._engine_py.PortSpec``: the service index, affinity, selector and seed,
        the pools' packed addresses, ports and weights, the lookup tables, the records and
        the keys that point at them); each replaces the port of its service index, or adds
        it. ``r4``/``r6``: the service indices whose port goes. A key whose record belonged
        to a replaced or removed port and that is not given again is deleted; every other
        port and key stays as it is. ``services``: names to append to the service-port
        names (the new indices); ``frontends``: kinds to append to the frontend kinds (the
        new codes; checked as ``load`` checks them).

        Lookups and batches running meanwhile in other threads get, per packet, the
        answer of the state before or after the update, never a mix (DESIGN §5): records
        are published with release stores, and what an update replaces is freed only once
        no lookup that started before it can still read it. Flows whose endpoint is no
        longer in a pool of their service's port are dropped; returns how many.

        Bad ports (``_engine_py.check_ports``: a value out of range, a service index given
        twice) raise ValueError and leave the core unchanged.
        """

    def frontend(self, dst: object, dport: int, proto: object = "TCP") -> tuple[int, int, int]:
        """Which service port a new packet to ``dst:dport/proto`` meets, as a lookup
        matches it: ``(service index, frontend code, how)`` with ``how`` 1 = the frontend
        table, 2 = the NodePort table (``dst`` is the node's), 3 = nftables'
        cluster-ips set (no frontend, but a ClusterIP); ``(-1, 0, 0)`` for none."""

    def memory(self) -> dict[str, int]:
        """Bytes the core holds, by part: ``frontends`` and ``nodeports`` (the hash
        tables), ``blocks`` (every service port's records, pools and selector data),
        ``index`` (service index to port; the retire list), ``flows``, ``affinity``; and
        ``blocks_count``."""

    def flow_count(self) -> int:
        """Entries in both flow tables (expired ones included until evicted)."""

    def clear(self) -> None:
        """Forget every flow and affinity entry."""

def mix(z: int) -> int:
    """The splitmix64 finaliser, for 0 <= z < 2**64 (OverflowError otherwise)."""

def packet_hash(
    seed: int, v6: bool, src: int, dst: int, sport: int, dport: int, proto: int
) -> int:
    """The flow hash of a 5-tuple (addresses as ints): bucket, tag and endpoint pick."""

def affinity_hash(seed: int, v6: bool, service: int, src: int) -> int:
    """The hash of a (service index, client address) affinity entry."""

def pick(h: int, n: int) -> int:
    """``((h >> 32) * n) >> 32``: an index in [0, n) from a hash, without modulo bias."""

def split_mapped(raw: Any, validity: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Families and IPv4 addresses of (n, 16) uint8 addresses, IPv4 mapped into
    ``::ffff:0:0/96`` (what kproxy_core.captures writes): family 4 and the address for a
    mapped one, 6 for any other, 0 where ``validity`` is False. Returns ``(family, v4)``."""

def parse_ips(offsets: Any, data: Any, validity: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Addresses of a column of strings (Arrow's layout: ``n + 1`` offsets into ``data``),
    parsed as inet_pton does, in C without the GIL. Returns ``(family, v4, v6)``: uint8
    ``4``/``6``/``0`` (not an address, or missing where ``validity`` is False), uint32
    addresses, and (n, 16) uint8 addresses. ValueError for offsets that do not fit the data."""

def scan_pcap(data: Any, pos: int, swapped: bool, nanos: bool, linktype: int, max_packets: int) -> tuple[Any, ...]:
    """The records of a classic pcap file from ``data[pos:]`` (the file header already read):
    up to ``max_packets`` whole records, in C without the GIL. ``swapped``: the file is
    big-endian; ``nanos``: its timestamps are in nanoseconds. Returns ``(pos, n, time, src,
    dst, family, sport, dport, proto, skipped)``: where the next record starts (a record cut
    off at the end is left for the next call), the records read, and for each packet kept its
    time in seconds, addresses as (n, 16) uint8 (IPv4 mapped into ::ffff:0:0/96), family 4 or
    6, ports and protocol; ``skipped`` counts the others by reason (see
    kproxy_core.captures.SKIPS). ValueError for a record longer than 256 KiB (not a pcap)."""

def scan_pcapng(data: Any, pos: int, swapped: bool, linktypes: Any, ticks: Any, max_packets: int) -> tuple[Any, ...]:
    """The blocks of one pcapng section from ``data[pos:]``, in C without the GIL: Enhanced
    and Simple Packet Blocks are read (up to ``max_packets``), other blocks passed over,
    until a Section Header or Interface Description Block, the end of the data or a block cut
    off. ``swapped``: the section is big-endian; ``linktypes`` and ``ticks`` (seconds per
    timestamp unit) describe the section's interfaces so far (a link type not read gives
    SKIP_LINKTYPE). Returns ``(pos, n, time, src, dst, family, sport, dport, proto, skipped,
    stop)``, as ``scan_pcap`` does, with ``stop`` 1 for a Section Header Block at ``pos``,
    2 for an Interface Description Block there, 0 otherwise. ValueError for a block whose
    length is not a multiple of 4, too small, over 16 MiB, or a packet of an interface not
    described."""

def maglev_table(offsets: Sequence[int], skips: Sequence[int], weights: Sequence[int], size: int) -> np.ndarray:
    """The Maglev lookup table (``size`` int32 entries, each an endpoint index) of endpoints
    given by their permutations (offset, skip) and integer weights, built in C without the
    GIL: exactly :func:`kproxy_core.selectors.maglev_fill`. Arguments are checked as
    :func:`kproxy_core.selectors.check_maglev` does (ValueError): N <= M < 2**31, offsets in
    [0, M), skips in [1, M) and coprime with M, weights in 1 .. 2**32 − 1. No endpoints:
    every entry is −1."""

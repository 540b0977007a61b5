"""From a ProxyPlan to the flat arrays both engine twins load, whole or per port.

An engine keeps, per family, a :class:`FamilyState`: one :class:`PortEntry` per service
port (its frontends' records, pools, selector) and who owns each frontend key. A whole
load flattens every entry (:meth:`FamilyState.tables`); an update flattens only the
ports it changed plus those that became a key's owner (:meth:`FamilyState.set`, then
:func:`port_spec`), and ``Core.update_ports`` replaces just those ports in place.

Everything per packet is decided from these arrays; all kube-proxy logic has already
run in :mod:`kproxy_core.plan`. A frontend record carries, for each of the eight
source classes, an action byte: verdict (bits 0-1), pool (bits 2-3: 1 cluster,
2 local) and masquerade (bit 4). A source's class is bit 0 = matched by the local
detector, bit 1 = a node-local address (addrtype LOCAL), bit 2 = allowed by the
record's KUBE-FW.

A record's frontend kind (``rec_kind``) is a code of its engine's :class:`FrontendKinds`:
kube-proxy's four kinds are 1-4 (0: none) in every engine, a plugin's kinds follow in the
order that engine meets them. Codes belong to the engine, not the process: the core is
loaded with their names (``Core.load(..., frontends)``) and decodes with them, and the
engine's ``frontend_names`` decodes its batch results.

KUBE-FW (loadBalancerSourceRanges) exists only for LoadBalancer records whose port
``uses_fw_chain``; such a record has a non-empty list of allowed source CIDRs
(``rec_fw_start``/``rec_fw_len`` into ``fw_addr``/``fw_prefix``, see
:func:`kproxy_core.plan.fw_sources`) and bit 2 is set iff the source is inside one of
them. A record with an empty list has no KUBE-FW: bit 2 is always set (its actions
4-7 equal 0-3 anyway). In nftables mode the firewall is ``firewall-<base>``
(:func:`kproxy_core.plan.fw_active`: not conditioned on endpoints).

Endpoint selectors (:mod:`kproxy_core.selectors`): each port has a selector code
(``port_selector``) and seed (``port_seed``), each pool entry its weight
(``pool_weight``); Maglev and source-hash pools have their lookup table (M entries, each
an index into the pool) in ``sel_table`` at ``port_table_start``/``port_table_len``. The
cores derive the rest (alias tables, round-robin state) when they load the tables.
Maglev tables are the expensive part (M ≥ 100 × the pool's endpoints), so they are built
by the compiled core's builder when it is available and cached per PlanPort with the
walks.

nftables mode adds cluster-ips-check (``cip_*``: every ClusterIP of the family with the
first service port that has it; ``scidr_*``: this family's service CIDRs), consulted only
for a packet that matches no frontend and is not addressed to the node. Both are empty
in iptables mode.
"""

from __future__ import annotations

import bisect
import ipaddress
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from .addresses import parse_cidr
from .errors import ManifestError
from .model import PROTO_NUMBERS
from .plan import EndpointInfo, PlanPort, ProxyPlan, Walk, fw_active, fw_sources, walk
from .selectors import SELECTOR_CODES, default_table_size, maglev_fill, maglev_permutation

VERDICTS = ("PASS", "DNAT", "REJECT", "DROP")
VERDICT_CODE = {v: i for i, v in enumerate(VERDICTS)}
# frontend kind codes: 0 = none, kube-proxy's four at 1-4 in every engine (the C core
# knows 1 = ClusterIP), then each engine's plugin kinds (FrontendKinds); the flow table
# keeps a code in 7 bits, so 127 is the highest
FRONTEND_NAMES: tuple[str | None, ...] = (None, "ClusterIP", "NodePort", "ExternalIP", "LoadBalancer")
MAX_FRONTEND_KINDS = 127


class FrontendKinds:
    """The frontend-kind codes of one engine: :data:`FRONTEND_NAMES` at 0-4, then each
    plugin kind (:attr:`kproxy_core.FrontendSpec.kind`) in the order the engine's tables
    first meet it. Append-only, so a code keeps its meaning for the engine's life (flows
    remember their frontend's code); :attr:`names` (index = code) decodes the engine's
    batch results and is what its core is loaded with (``Core.load(..., frontends)``).

    Each engine has its own: engines with different plugins in one process neither share
    codes nor use up each other's (the codes were once process-wide, and a plugin kind
    seen by one engine shifted what another's tables and checks meant)."""

    __slots__ = ("_codes", "names")

    def __init__(self) -> None:
        self.names: list[str | None] = list(FRONTEND_NAMES)
        self._codes = {k: i for i, k in enumerate(FRONTEND_NAMES) if k is not None}

    def code(self, kind: str, where: str = "") -> int:
        """The code of ``kind``, the next free one for a kind not seen before.
        :class:`~kproxy_core.ManifestError` (naming ``where``, a service port) when the
        engine would have more than :data:`MAX_FRONTEND_KINDS` kinds."""
        code = self._codes.get(kind)
        if code is None:
            code = len(self.names)
            if code > MAX_FRONTEND_KINDS:
                raise ManifestError(
                    f"{where + ': ' if where else ''}frontend kind {kind!r} would be this engine's "
                    f"{code}th kind: an engine holds at most {MAX_FRONTEND_KINDS} (a flow keeps its "
                    "frontend's code in 7 bits); the plugin Service types' frontends name too many distinct kinds")
            self._codes[kind] = code
            self.names.append(kind)
        return code

    def truncate(self, n: int) -> None:
        """Forget the kinds from code ``n`` on (an apply that failed before its tables
        reached the core gives back the codes it took)."""
        n = max(n, len(FRONTEND_NAMES))
        for kind in self.names[n:]:
            del self._codes[kind]  # type: ignore[arg-type]  # codes >= 1 name a kind
        del self.names[n:]


POOL_CODE = {None: 0, "cluster": 1, "local": 2}

# source classes: bit 0 = matched by the local detector, bit 1 = addrtype LOCAL,
# bit 2 = allowed by the record's KUBE-FW (always set for records without one)
CLASSES = ((False, False), (True, False), (False, True), (True, True))
CLASSES8 = tuple((pod, local, allowed) for allowed in (False, True) for pod, local in CLASSES)


def encode(w: Walk) -> int:
    return VERDICT_CODE[w.verdict] | (POOL_CODE[w.pool] << 2) | (int(w.masquerade) << 4)


def _addr_array(ips: Sequence[str], v6: bool) -> npt.NDArray[np.uint8] | npt.NDArray[np.uint32]:
    """Canonical address strings (as the model holds them) as uint32 or (n, 16) uint8 rows:
    ``inet_pton``, one C call per address, instead of ``ipaddress`` (40x slower)."""
    if not v6:
        raw = b"".join([_pton4(ip) for ip in ips])
        out: npt.NDArray[np.uint32] = (np.frombuffer(raw, dtype=">u4").astype(np.uint32) if raw
                                       else np.zeros(0, dtype=np.uint32))
        return out
    if not ips:
        return np.zeros((0, 16), dtype=np.uint8)
    rows: npt.NDArray[np.uint8] = np.frombuffer(b"".join([_pton6(ip) for ip in ips]), dtype=np.uint8)
    out6: npt.NDArray[np.uint8] = rows.reshape(-1, 16).copy()
    return out6


def _pton4(ip: str) -> bytes:
    try:
        return socket.inet_pton(socket.AF_INET, ip)
    except OSError:  # not canonical (never from the model): let ipaddress decide and word it
        return ipaddress.IPv4Address(ip).packed


def _pton6(ip: str) -> bytes:
    try:
        return socket.inet_pton(socket.AF_INET6, ip)
    except OSError:
        return ipaddress.IPv6Address(ip).packed


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=np.int32)


@dataclass
class FamilyTables:
    """The arrays of one family (see the module docstring for the action byte)."""

    v6: bool
    fe_addr: np.ndarray
    fe_port: np.ndarray
    fe_proto: np.ndarray
    fe_rec: np.ndarray
    np_port: np.ndarray
    np_proto: np.ndarray
    np_rec: np.ndarray
    rec_port: np.ndarray
    rec_kind: np.ndarray
    rec_action: np.ndarray  # (R, 8) uint8, indexed by the source class
    rec_np_filter: np.ndarray
    rec_fw_start: np.ndarray  # (R,) int32: the record's allowed sources in fw_addr/fw_prefix
    rec_fw_len: np.ndarray  # (R,) int32: 0 = no KUBE-FW (every source allowed)
    fw_addr: np.ndarray  # v4: uint32[F]; v6: uint8[F, 16]
    fw_prefix: np.ndarray  # (F,) uint8
    port_service: np.ndarray
    port_affinity: np.ndarray
    port_pool_start: np.ndarray  # (P, 2) int32: cluster, local
    port_pool_len: np.ndarray
    pool_ep: np.ndarray
    ep_addr: np.ndarray
    ep_port: np.ndarray
    ep_str: list[str]
    local_addrs: np.ndarray
    np_addrs: np.ndarray
    np_match_all: bool
    np_loopback: bool
    det_on: bool
    det_addr: np.ndarray  # v4: uint32[1]; v6: uint8[1, 16]
    det_prefix: int
    duplicates: tuple[str, ...] = ()  # warnings from flattening: duplicate frontends, Maglev table sizes
    # nftables' cluster-ips-check (empty in iptables mode), consulted only for a packet that
    # matches no frontend and is not addressed to the node: to an active ClusterIP (any
    # port, any protocol) -> REJECT with that ClusterIP's service; else inside a service
    # CIDR -> DROP
    cip_addr: np.ndarray = field(default_factory=_empty)  # v4: uint32[C]; v6: uint8[C, 16]; unique
    cip_service: np.ndarray = field(default_factory=_empty)  # (C,) int32: first service port with it
    scidr_addr: np.ndarray = field(default_factory=_empty)  # v4: uint32[S]; v6: uint8[S, 16]
    scidr_prefix: np.ndarray = field(default_factory=_empty)  # (S,) uint8
    # endpoint selectors (kproxy_core.selectors); None: every port random, every weight 1
    port_selector: np.ndarray | None = None  # (P,) uint8: selectors.SELECTOR_CODES
    port_seed: np.ndarray | None = None  # (P,) uint64: the Maglev / source-hash seed
    pool_weight: np.ndarray | None = None  # like pool_ep, uint32: 1 .. selectors.MAX_WEIGHT
    port_table_start: np.ndarray | None = None  # (P, 2) int64: each pool's lookup table in sel_table
    port_table_len: np.ndarray | None = None  # (P, 2) int64: its size M (0: none)
    sel_table: np.ndarray | None = None  # (T,) int32: Maglev lookup tables, entries index the pool


def maglev_array(offsets: Sequence[int], skips: Sequence[int], weights: Sequence[int], size: int) -> np.ndarray:
    """The Maglev lookup table of endpoints given by their permutations, in Python
    (:func:`kproxy_core.selectors.maglev_fill`); an engine passes its core's
    ``maglev_table`` instead, which builds the same table."""
    return np.array(maglev_fill(list(offsets), list(skips), list(weights), size), dtype=np.int32)


def _maglev(pp: PlanPort, pool: tuple[EndpointInfo, ...], which: str,
            build: Callable[..., np.ndarray]) -> tuple[np.ndarray, tuple[str, ...]]:
    """One pool's Maglev lookup table and the warnings its size deserves."""
    sel = pp.selector
    n = len(pool)
    size = sel.table_size or default_table_size(n)
    warn: list[str] = []
    if sel.table_size and n > size:
        fallback = default_table_size(n)
        warn.append(f"{pp.spn}: {sel.kind} table size {size} is smaller than the {n} endpoints of its "
                    f"{which} pool (some would get no slot); using {fallback}")
        size = fallback
    elif sel.table_size and size < 100 * n:
        warn.append(f"{pp.spn}: {sel.kind} table size {size} is below 100 × the {n} endpoints of its "
                    f"{which} pool: endpoints' shares may differ by more than 1%")
    perms = [maglev_permutation(e.endpoint, size, sel.seed) for e in pool]
    table = build([p[0] for p in perms], [p[1] for p in perms], [e.weight for e in pool], size)
    return np.asarray(table, dtype=np.int32), tuple(warn)


def _actions(pp: PlanPort, plan: ProxyPlan, kind: str, dst_local: bool) -> tuple[list[int], int]:
    """The 8 action bytes of a record (by source class) and its NodePort filter action."""
    cfg = plan.config
    if kind == "LoadBalancer" and fw_active(pp, cfg):
        actions = [
            encode(walk(pp, cfg, "LoadBalancer", from_pod=p, from_local=lo, source_allowed=a, dst_local=dst_local))
            for p, lo, a in CLASSES8
        ]
    else:  # no KUBE-FW: the source-range bit changes nothing
        actions = [
            encode(walk(pp, cfg, kind, from_pod=p, from_local=lo, dst_local=dst_local))
            for p, lo in CLASSES
        ] * 2
    np_filter = 0
    if kind == "NodePort":
        np_filter = encode(
            walk(pp, cfg, "NodePort", from_pod=False, from_local=False, nodeport_accepted=False)
        )
    return actions, np_filter


# ----------------------------------------------------------------------------- per port

FeKey = tuple[str, int, int]  # (address, port, protocol number)
NpKey = tuple[int, int]  # (NodePort, protocol number)
# a frontend record: kind code, the 8 action bytes, the NodePort filter action, the
# KUBE-FW allowed sources as (network address, prefix length) (empty: no KUBE-FW)
Rec = tuple[int, tuple[int, ...], int, tuple[tuple[str, int], ...]]
Order = tuple[str, str, int]  # plan order: namespace, service name, position among its ports


# one pool of a port: its endpoints' addresses and ports, and their weights when the
# selector reads them (None otherwise); the strings and ints are the plan's own objects
Pool = tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...] | None]


@dataclass(eq=False, slots=True)
class PortEntry:
    """What one service port contributes to its family's tables: its claims on frontend
    keys (with the record each would get), its pools and its selector. An engine keeps
    one per service port and replaces only those of the ports an update touches.

    It keeps what the compiled tables need of the port's plan, not the plan itself (its
    ``EndpointInfo`` objects were most of an engine's memory): ``Engine.plan_of`` plans
    the port again when a trace or a renderer needs it."""

    spn: str
    protocol: str
    cluster_ip: str
    affinity: int  # the session-affinity timeout (0: none)
    seed: int  # the selector's seed
    pools: tuple[Pool, Pool]  # (cluster, local)
    svc: int  # the service index (Engine.service_ports)
    order: Order
    fe_keys: tuple[FeKey, ...]
    fe_recs: tuple[Rec, ...]
    np_keys: tuple[NpKey, ...]
    np_recs: tuple[Rec, ...]
    selector: int  # selectors.SELECTOR_CODES
    tables: tuple[np.ndarray | None, np.ndarray | None]  # Maglev / source-hash, per pool
    notes: tuple[str, ...]  # warnings about the port itself (Maglev table sizes)
    # per key: does kube-proxy write it as a DNAT rule (nat table, service-ips), or only as
    # a REJECT / DROP (filter table, no-endpoint-services)? Decides who owns a shared key
    fe_nat: tuple[bool, ...] = ()
    np_nat: tuple[bool, ...] = ()


def port_spec(state: FamilyState, e: PortEntry) -> tuple[Any, ...]:
    """``e`` as a ``Core.update_ports`` port (see ``_engine_py.PortSpec``), with the
    records of the keys it owns."""
    v6 = state.cfg.family == "IPv6"
    pton = _pton6 if v6 else _pton4
    pools = e.pools
    weighted = e.selector in (SELECTOR_CODES["weighted"], SELECTOR_CODES["round-robin"])
    recs: list[tuple[int, bytes, int, bytes, bytes]] = []
    keys: list[tuple[bool, bytes, int, int, int]] = []
    for i, rec in enumerate(e.np_recs):
        if state.owns_np(e, i):
            keys.append((True, b"", e.np_keys[i][0], e.np_keys[i][1], len(recs)))
            recs.append(_rec_spec(rec, pton))
    for i, rec in enumerate(e.fe_recs):
        if state.owns_fe(e, i):
            k = e.fe_keys[i]
            keys.append((False, pton(k[0]), k[1], k[2], len(recs)))
            recs.append(_rec_spec(rec, pton))
    return (
        e.svc, e.affinity, e.selector, e.seed,
        (b"".join([pton(ip) for ip in pools[0][0]]), b"".join([pton(ip) for ip in pools[1][0]])),
        (list(pools[0][1]), list(pools[1][1])),
        (list(pools[0][2] or ()), list(pools[1][2] or ())) if weighted else (None, None),
        e.tables, recs, keys,
    )


def _rec_spec(rec: Rec, pton: Callable[[str], bytes]) -> tuple[int, bytes, int, bytes, bytes]:
    return (rec[0], bytes(rec[1]), rec[2], b"".join([pton(n[0]) for n in rec[3]]), bytes(n[1] for n in rec[3]))


def _dst_local(cfg: Any, ip: str) -> bool:
    """``cfg.is_local_address`` for a canonical address, without ``ipaddress``."""
    if ip in cfg.node_ips or ip in cfg.extra_local_ips:
        return True
    return ip.startswith("127.") if cfg.family == "IPv4" else ip == "::1"


ActionMemo = dict[tuple[Any, ...], tuple[list[int], int]]


def port_entry(pp: PlanPort, cfg: Any, svc: int, order: Order,
               build: Callable[..., np.ndarray] | None = None, memo: ActionMemo | None = None, *,
               kinds: FrontendKinds) -> PortEntry:
    """The tables' view of one service port (the walks of its frontends, its pools).
    Its records' frontend kinds are coded by ``kinds``, the engine's.

    ``memo``: walks already made for this ``cfg``, keyed by what a walk's verdict, pool
    and masquerade depend on (the port's policy flags and whether its pools are empty,
    not its addresses or endpoints): most ports share one, and a walk costs ~10 µs."""
    kind = pp.selector.kind
    pools = (pp.cluster, pp.local)
    if kind == "weighted" and all(len({e.weight for e in pool}) <= 1 for pool in pools):
        kind = "random"  # equal weights: exactly kube-proxy's uniform pick, without the alias read
    tables: list[np.ndarray | None] = [None, None]
    notes: list[str] = []
    if kind in ("maglev", "source-hash"):
        for w, pool in enumerate(pools):
            if pool:
                build = build or maglev_array
                tables[w], warns = _maglev(pp, pool, "cluster" if w == 0 else "local", build)
                notes.extend(warns)
    proto = PROTO_NUMBERS[pp.protocol]
    plan = ProxyPlan(cfg, ())
    if memo is None:
        memo = {}
    flags = (bool(pp.cluster), bool(pp.local), pp.has_endpoints, pp.internal_local, pp.external_local,
             pp.externally_accessible, bool(pp.lb_ips), bool(pp.source_ranges), pp.node_port != 0,
             fw_active(pp, cfg))
    fw: tuple[tuple[str, int], ...] | None = None
    fe_keys: list[FeKey] = []
    fe_recs: list[Rec] = []
    np_keys: list[NpKey] = []
    np_recs: list[Rec] = []
    fe_nat: list[bool] = []
    np_nat: list[bool] = []
    for f in pp.frontends():
        # both renderers: the cluster IP (and internal-policy frontends) get a DNAT rule iff
        # the port has internal endpoints; every external frontend iff it has endpoints
        nat = pp.has_internal_endpoints if f.shape == "ClusterIP" else pp.has_endpoints
        dst_local = f.ip is not None and _dst_local(cfg, f.ip)
        sig = (f.kind, f.policy, dst_local, flags)
        got = memo.get(sig)
        if got is None:
            got = memo[sig] = _actions(pp, plan, f.kind, dst_local)
        nets: tuple[tuple[str, int], ...] = ()
        if f.kind == "LoadBalancer" and fw_active(pp, cfg):
            if fw is None:
                fw = tuple(_net(c) for c in fw_sources(pp, cfg))
            nets = fw
        rec: Rec = (kinds.code(f.kind, f"Service {pp.spn}"), tuple(got[0]), got[1], nets)
        if f.kind == "NodePort":
            np_keys.append((f.port, proto))
            np_recs.append(rec)
            np_nat.append(nat)
        else:
            assert f.ip is not None
            fe_keys.append((f.ip, f.port, proto))
            fe_recs.append(rec)
            fe_nat.append(nat)
    weighted = kind != "random"  # the weights a selector other than random may read
    cols = tuple(
        (tuple([ep.ip for ep in pool]), tuple([ep.port for ep in pool]),
         tuple([ep.weight for ep in pool]) if weighted else None)
        for pool in pools
    )
    return PortEntry(pp.spn, pp.protocol, pp.cluster_ip, pp.affinity_timeout, pp.selector.seed,
                     (cols[0], cols[1]), svc, order, tuple(fe_keys), tuple(fe_recs), tuple(np_keys), tuple(np_recs),
                     SELECTOR_CODES[kind], (tables[0], tables[1]), tuple(notes), tuple(fe_nat), tuple(np_nat))


def _net(cidr: str) -> tuple[str, int]:
    net = ipaddress.ip_network(cidr, strict=False)
    return str(net.network_address), net.prefixlen


Claim = tuple[Order, int, int]  # (port order, service index, the key's position in the port)


class FamilyState:
    """One family's ports and who owns each frontend key, kept across updates.

    Two ports may claim one key (a duplicate ClusterIP:port, externalIP, load-balancer IP or
    NodePort); the others are warned about, and the owner is the port whose rule the
    kernel meets: DNAT rules (nat table, service-ips) before REJECT / DROP ones (filter
    table, no-endpoint-services), then iptables' first rule in plan order, or nftables'
    last element (a later one replaces an earlier one in the map). :meth:`set` replaces
    some ports and says which ports the compiled tables must (re)load: the changed ones and
    those that became a key's owner. ``kinds``: the engine's frontend-kind codes, which its
    entries' records hold (shared by its families; None: a new one)."""

    def __init__(self, cfg: Any, service_cidrs: Sequence[str] = (), kinds: FrontendKinds | None = None) -> None:
        self.cfg = cfg
        self.kinds = FrontendKinds() if kinds is None else kinds
        self.service_cidrs = tuple(service_cidrs)
        self.entries: dict[int, PortEntry] = {}
        self.fe_claims: dict[FeKey, list[Claim]] = {}
        self.np_claims: dict[NpKey, list[Claim]] = {}
        self.notes: dict[int, tuple[str, ...]] = {}  # service index -> its warnings (non-empty)
        self.memo: ActionMemo = {}  # port_entry's walks for this config

    def _claims(self, e: PortEntry, add: bool) -> tuple[set[FeKey], set[NpKey]]:
        _claim(self.fe_claims, e.fe_keys, e, add)
        _claim(self.np_claims, e.np_keys, e, add)
        return set(e.fe_keys), set(e.np_keys)

    def set(self, updates: Mapping[int, PortEntry | None]) -> tuple[list[PortEntry], list[int]]:
        """Replace (or with None remove) the ports of these service indices. Returns the
        ports to (re)load, in plan order, and the service indices whose port is gone."""
        fe_touched: set[FeKey] = set()
        np_touched: set[NpKey] = set()
        removed: list[int] = []
        changed: set[int] = set()
        for svc, new in updates.items():
            old = self.entries.pop(svc, None)
            if old is not None:
                a, b = self._claims(old, False)
                fe_touched |= a
                np_touched |= b
            if new is not None:
                self.entries[svc] = new
                a, b = self._claims(new, True)
                fe_touched |= a
                np_touched |= b
                changed.add(svc)
            elif old is not None:
                removed.append(svc)
        noted: set[int] = set(changed) | set(removed)
        touched = [(False, self.fe_claims.get(k)) for k in fe_touched]
        touched += [(True, self.np_claims.get(k)) for k in np_touched]
        for np_, claims in touched:
            if claims:
                noted.update(c[1] for c in claims)
                changed.add(self._owner(claims, np_)[1])  # its record must be in the tables
        for svc in noted:
            self._note(svc)
        return sorted((self.entries[s] for s in changed), key=_order), sorted(removed)

    def _note(self, svc: int) -> None:
        e = self.entries.get(svc)
        if e is None:
            self.notes.pop(svc, None)
            return
        out = list(e.notes)
        for i, k in enumerate(e.np_keys):
            if not self.owns_np(e, i):
                out.append(f"{e.spn}: NodePort {k[0]}/{e.protocol} is also used by another service")
        for i, (fk, rec) in enumerate(zip(e.fe_keys, e.fe_recs, strict=True)):
            if not self.owns_fe(e, i):
                out.append(f"{e.spn}: {self.kinds.names[rec[0]]} {fk[0]}:{fk[1]}/{e.protocol} "
                           "is also used by another service")
        if out:
            self.notes[svc] = tuple(out)
        else:
            self.notes.pop(svc, None)

    def _owner(self, claims: list[Claim], nodeport: bool) -> Claim:
        if len(claims) == 1:
            return claims[0]
        fallback = None
        for c in (reversed(claims) if self.cfg.nftables else claims):
            e = self.entries[c[1]]
            if (e.np_nat if nodeport else e.fe_nat)[c[2]]:
                return c
            fallback = fallback or c
        assert fallback is not None
        return fallback

    def owns_fe(self, e: PortEntry, i: int) -> bool:
        return self._owner(self.fe_claims[e.fe_keys[i]], False) == (e.order, e.svc, i)

    def owns_np(self, e: PortEntry, i: int) -> bool:
        return self._owner(self.np_claims[e.np_keys[i]], True) == (e.order, e.svc, i)

    def ordered(self) -> list[PortEntry]:
        return sorted(self.entries.values(), key=_order)

    def warnings(self) -> list[str]:
        return [w for svc in sorted(self.notes, key=lambda s: self.entries[s].order) for w in self.notes[svc]]

    def tables(self) -> FamilyTables:
        """Every port's flat arrays, in plan order, each with the records of the keys it owns."""
        return assemble(self, self.ordered())


_Key = TypeVar("_Key")


def _claim(claims: dict[_Key, list[Claim]], keys: Sequence[_Key], e: PortEntry, add: bool) -> None:
    for i, k in enumerate(keys):
        c: Claim = (e.order, e.svc, i)
        lst = claims.get(k)
        if add:
            if lst is None:
                claims[k] = [c]
            else:
                bisect.insort(lst, c)
        elif lst is not None:
            lst.remove(c)
            if not lst:
                del claims[k]


def _order(e: PortEntry) -> Order:
    return e.order


def assemble(state: FamilyState, entries: Sequence[PortEntry]) -> FamilyTables:
    """Flatten every port (in plan order) into :class:`FamilyTables` for :meth:`Core.load`
    (see the module docstring)."""
    cfg = state.cfg
    v6 = cfg.family == "IPv6"
    fe_keys: list[FeKey] = []
    fe_rec: list[int] = []
    np_keys: list[NpKey] = []
    np_rec: list[int] = []
    rec_port: list[int] = []
    rec_kind: list[int] = []
    rec_action: list[tuple[int, ...]] = []
    rec_np_filter: list[int] = []
    rec_fw: list[tuple[int, int]] = []
    fw_nets: list[tuple[str, int]] = []
    port_service: list[int] = []
    port_affinity: list[int] = []
    pool_start: list[tuple[int, int]] = []
    pool_len: list[tuple[int, int]] = []
    pool_ep: list[int] = []
    pool_weight: list[int] = []
    port_selector: list[int] = []
    port_seed: list[int] = []
    table_start: list[tuple[int, int]] = []
    table_len: list[tuple[int, int]] = []
    sel_tables: list[np.ndarray] = []
    n_table = 0
    ep_index: dict[tuple[str, int], int] = {}
    ep_list: list[tuple[str, int]] = []

    fw_seen: dict[tuple[int, tuple[tuple[str, int], ...]], tuple[int, int]] = {}

    def add_rec(pi: int, rec: Rec) -> int:
        rec_port.append(pi)
        rec_kind.append(rec[0])
        rec_action.append(rec[1])
        rec_np_filter.append(rec[2])
        if rec[3]:  # a port's LB records share one list of allowed sources
            got = fw_seen.get((pi, rec[3]))
            if got is None:
                got = fw_seen[(pi, rec[3])] = (len(fw_nets), len(rec[3]))
                fw_nets.extend(rec[3])
            rec_fw.append(got)
        else:
            rec_fw.append((0, 0))
        return len(rec_port) - 1

    for pi, e in enumerate(entries):
        port_service.append(e.svc)
        port_affinity.append(e.affinity)
        port_selector.append(e.selector)
        port_seed.append(e.seed)
        starts = []
        lens = []
        tst = [0, 0]
        tln = [0, 0]
        for w, (ips, ports, weights) in enumerate(e.pools):
            starts.append(len(pool_ep))
            lens.append(len(ips))
            for key in zip(ips, ports, strict=True):
                idx = ep_index.get(key)
                if idx is None:
                    idx = ep_index[key] = len(ep_list)
                    ep_list.append(key)
                pool_ep.append(idx)
            pool_weight.extend(weights if weights is not None else [1] * len(ips))
            table = e.tables[w]
            if table is not None:
                tst[w], tln[w] = n_table, len(table)
                sel_tables.append(table)
                n_table += len(table)
        pool_start.append((starts[0], starts[1]))
        pool_len.append((lens[0], lens[1]))
        table_start.append((tst[0], tst[1]))
        table_len.append((tln[0], tln[1]))
        for i, rec in enumerate(e.np_recs):
            if state.owns_np(e, i):
                np_keys.append(e.np_keys[i])
                np_rec.append(add_rec(pi, rec))
        for i, rec in enumerate(e.fe_recs):
            if state.owns_fe(e, i):
                fe_keys.append(e.fe_keys[i])
                fe_rec.append(add_rec(pi, rec))

    det = cfg.detector
    det_net = det.network
    det_ips = [str(det_net.network_address)] if det_net is not None else ["::" if v6 else "0.0.0.0"]
    cips: dict[str, int] = {}
    scidrs: list[tuple[str, int]] = []
    if cfg.nftables:
        for e in entries:
            cips.setdefault(e.cluster_ip, e.svc)
        for text in state.service_cidrs:
            net, _ = parse_cidr(text.strip())
            if net is not None and (net.version == 6) == v6:
                scidrs.append((str(net.network_address), net.prefixlen))
    return FamilyTables(
        v6=v6,
        fe_addr=_addr_array([k[0] for k in fe_keys], v6),
        fe_port=np.array([k[1] for k in fe_keys], dtype=np.uint16),
        fe_proto=np.array([k[2] for k in fe_keys], dtype=np.uint8),
        fe_rec=np.array(fe_rec, dtype=np.int32),
        np_port=np.array([k[0] for k in np_keys], dtype=np.uint16),
        np_proto=np.array([k[1] for k in np_keys], dtype=np.uint8),
        np_rec=np.array(np_rec, dtype=np.int32),
        rec_port=np.array(rec_port, dtype=np.int32),
        rec_kind=np.array(rec_kind, dtype=np.uint8),
        rec_action=np.array(rec_action, dtype=np.uint8).reshape(-1, 8),
        rec_np_filter=np.array(rec_np_filter, dtype=np.uint8),
        rec_fw_start=np.array([f[0] for f in rec_fw], dtype=np.int32),
        rec_fw_len=np.array([f[1] for f in rec_fw], dtype=np.int32),
        fw_addr=_addr_array([f[0] for f in fw_nets], v6),
        fw_prefix=np.array([f[1] for f in fw_nets], dtype=np.uint8),
        port_service=np.array(port_service, dtype=np.int32),
        port_affinity=np.array(port_affinity, dtype=np.uint32),
        port_pool_start=np.array(pool_start, dtype=np.int32).reshape(-1, 2),
        port_pool_len=np.array(pool_len, dtype=np.int32).reshape(-1, 2),
        pool_ep=np.array(pool_ep, dtype=np.int32),
        ep_addr=_addr_array([e[0] for e in ep_list], v6),
        ep_port=np.array([e[1] for e in ep_list], dtype=np.uint16),
        ep_str=[e[0] for e in ep_list],
        local_addrs=_addr_array(list(cfg.local_ips), v6),
        np_addrs=_addr_array(list(cfg.nodeport_ips), v6),
        np_match_all=cfg.nodeport_match_all,
        np_loopback=cfg.localhost_nodeports_active,
        det_on=det_net is not None,
        det_addr=_addr_array(det_ips, v6),
        det_prefix=det_net.prefixlen if det_net is not None else 0,
        duplicates=tuple(w for e in entries for w in state.notes.get(e.svc, ())),
        cip_addr=_addr_array(list(cips), v6),
        cip_service=np.array(list(cips.values()), dtype=np.int32),
        scidr_addr=_addr_array([c[0] for c in scidrs], v6),
        scidr_prefix=np.array([c[1] for c in scidrs], dtype=np.uint8),
        port_selector=np.array(port_selector, dtype=np.uint8),
        port_seed=np.array(port_seed, dtype=np.uint64),
        pool_weight=np.array(pool_weight, dtype=np.uint32),
        port_table_start=np.array(table_start, dtype=np.int64).reshape(-1, 2),
        port_table_len=np.array(table_len, dtype=np.int64).reshape(-1, 2),
        sel_table=np.concatenate(sel_tables) if sel_tables else np.zeros(0, dtype=np.int32),
    )


def build_tables(
    plan: ProxyPlan,
    service_index: Mapping[str, int],
    cache: Any = None,
    service_cidrs: Sequence[str] = (),
    kinds: FrontendKinds | None = None,
) -> FamilyTables:
    """Flatten a whole plan (what :meth:`Core.load` takes). ``service_cidrs`` (any family;
    this family's are used) feed nftables' cluster-ips-check drop rule; in iptables mode
    the cluster-ips-check tables stay empty. ``cache`` is accepted for compatibility.
    ``kinds`` codes the frontend kinds (None: a new :class:`FrontendKinds`); a plan with
    plugin kinds loads with ``Core.load(t4, t6, services, kinds.names)``, the same
    ``kinds`` given for both families."""
    state = FamilyState(plan.config, service_cidrs, kinds)
    position: dict[tuple[str, str], int] = {}
    updates: dict[int, PortEntry | None] = {}
    for pp in plan.ports:
        key = (pp.namespace, pp.service)
        i = position.get(key, 0)
        position[key] = i + 1
        svc = service_index[pp.spn]
        updates[svc] = port_entry(pp, plan.config, svc, (pp.namespace, pp.service, i), kinds=state.kinds)
    state.set(updates)
    return state.tables()

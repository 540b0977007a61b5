"""From a ProxyPlan to the flat arrays both engine twins load.

Everything per packet is decided from these arrays; all kube-proxy logic has already
run in :mod:`kproxy_core.plan`. A frontend record carries, for each of the eight
source classes, an action byte: verdict (bits 0-1), pool (bits 2-3: 1 cluster,
2 local) and masquerade (bit 4). A source's class is bit 0 = matched by the local
detector, bit 1 = a node-local address (addrtype LOCAL), bit 2 = allowed by the
record's KUBE-FW.

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

import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .addresses import parse_cidr
from .model import PROTO_NUMBERS
from .plan import EndpointInfo, PlanPort, ProxyPlan, Walk, fw_active, fw_sources, walk
from .selectors import SELECTOR_CODES, default_table_size, maglev_permutation

VERDICTS = ("PASS", "DNAT", "REJECT", "DROP")
VERDICT_CODE = {v: i for i, v in enumerate(VERDICTS)}
# frontend kind codes: kube-proxy's four, then plugin kinds in the order first seen
# (append-only and process-wide, so a code never changes meaning; 7 bits in the flow table)
FRONTENDS: list[str | None] = [None, "ClusterIP", "NodePort", "ExternalIP", "LoadBalancer"]
FRONTEND_CODE = {v: i for i, v in enumerate(FRONTENDS) if v is not None}
MAX_FRONTEND_KINDS = 127


def frontend_code(kind: str) -> int:
    """The code of a frontend kind, assigning the next one to a new plugin kind."""
    code = FRONTEND_CODE.get(kind)
    if code is None:
        if len(FRONTENDS) > MAX_FRONTEND_KINDS:
            raise ValueError(f"frontend kind {kind!r}: more than {MAX_FRONTEND_KINDS} kinds")
        code = FRONTEND_CODE[kind] = len(FRONTENDS)
        FRONTENDS.append(kind)
    return code
POOL_CODE = {None: 0, "cluster": 1, "local": 2}

# source classes: bit 0 = matched by the local detector, bit 1 = addrtype LOCAL,
# bit 2 = allowed by the record's KUBE-FW (always set for records without one)
CLASSES = ((False, False), (True, False), (False, True), (True, True))
CLASSES8 = tuple((pod, local, allowed) for allowed in (False, True) for pod, local in CLASSES)


def encode(w: Walk) -> int:
    return VERDICT_CODE[w.verdict] | (POOL_CODE[w.pool] << 2) | (int(w.masquerade) << 4)


def addr_int(ip: str) -> int:
    return int(ipaddress.ip_address(ip))


def _addr_array(ips: list[str], v6: bool) -> npt.NDArray[np.uint8] | npt.NDArray[np.uint32]:
    if not v6:
        return np.array([addr_int(ip) for ip in ips], dtype=np.uint32)
    out = np.zeros((len(ips), 16), dtype=np.uint8)
    for i, ip in enumerate(ips):
        out[i] = np.frombuffer(ipaddress.IPv6Address(ip).packed, dtype=np.uint8)
    return out


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


# id(PlanPort) -> (the PlanPort, {frontend kind: (actions, nodeport filter action),
# "maglev/<pool>": (lookup table, warnings)}); holding the PlanPort keeps its id from
# being reused while the entry lives.
TableCache = dict[int, tuple[PlanPort, dict[str, Any]]]


def maglev_builder() -> Callable[..., np.ndarray]:
    """``maglev_table(offsets, skips, weights, M)`` of the compiled core when it is built
    (and ``KPROXY_NO_EXTENSIONS`` is unset), else the pure-Python twin's (the same tables)."""
    if os.environ.get("KPROXY_NO_EXTENSIONS", "") in ("", "0"):
        try:
            from ._engine import maglev_table

            return maglev_table
        except ImportError:  # pragma: no cover - only without a build
            pass
    from ._engine_py import maglev_table as py_table

    return py_table


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


def build_tables(
    plan: ProxyPlan,
    service_index: Mapping[str, int],
    cache: TableCache | None = None,
    service_cidrs: Sequence[str] = (),
) -> FamilyTables:
    """Flatten a plan. With ``cache``, the walks of unchanged PlanPorts are reused
    (an engine update recomputes only the service ports that changed). ``service_cidrs``
    (any family; this family's are used) feed nftables' cluster-ips-check drop rule; in
    iptables mode the cluster-ips-check tables stay empty."""
    cfg = plan.config
    fresh: TableCache = {}
    v6 = cfg.family == "IPv6"
    fe: dict[tuple[str, int, int], int] = {}
    nps: dict[tuple[int, int], int] = {}
    dups: list[str] = []
    rec_port: list[int] = []
    rec_kind: list[int] = []
    rec_action: list[list[int]] = []
    rec_np_filter: list[int] = []
    rec_fw: list[tuple[int, int]] = []
    fw_nets: list[tuple[str, int]] = []
    fw_lists: dict[int, tuple[int, int]] = {}  # plan port index -> its (start, len)
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
    build_maglev: Callable[..., np.ndarray] | None = None
    ep_index: dict[tuple[str, int], int] = {}
    ep_list: list[tuple[str, int]] = []

    def ep_id(ip: str, port: int) -> int:
        key = (ip, port)
        if key not in ep_index:
            ep_index[key] = len(ep_list)
            ep_list.append(key)
        return ep_index[key]

    def fw_list(pi: int, pp: PlanPort) -> tuple[int, int]:
        """The allowed-source list of a port's KUBE-FW, shared by its LB records."""
        if pi not in fw_lists:
            start = len(fw_nets)
            for cidr in fw_sources(pp, cfg):
                net = ipaddress.ip_network(cidr, strict=False)
                fw_nets.append((str(net.network_address), net.prefixlen))
            fw_lists[pi] = (start, len(fw_nets) - start)
        return fw_lists[pi]

    def add_record(pi: int, pp: PlanPort, kind: str, ip: str | None = None) -> int:
        hit = cache.get(id(pp)) if cache is not None else None
        entry = hit if hit is not None and hit[0] is pp else fresh.get(id(pp), (pp, {}))
        fresh[id(pp)] = entry
        dst_local = ip is not None and cfg.is_local_address(ip)
        ckey = f"{kind}/{int(dst_local)}"
        if ckey not in entry[1]:
            entry[1][ckey] = _actions(pp, plan, kind, dst_local)
        actions, np_filter = entry[1][ckey]
        rec_port.append(pi)
        rec_kind.append(frontend_code(kind))
        rec_action.append(actions)
        rec_np_filter.append(np_filter)
        rec_fw.append(fw_list(pi, pp) if kind == "LoadBalancer" and fw_active(pp, cfg) else (0, 0))
        return len(rec_port) - 1

    for pi, pp in enumerate(plan.ports):
        port_service.append(service_index[pp.spn])
        port_affinity.append(pp.affinity_timeout)
        kind = pp.selector.kind
        pools = (pp.cluster, pp.local)
        if kind == "weighted" and all(len({e.weight for e in pool}) <= 1 for pool in pools):
            kind = "random"  # equal weights: exactly kube-proxy's uniform pick, without the alias read
        port_selector.append(SELECTOR_CODES[kind])
        port_seed.append(pp.selector.seed)
        starts, lens, tstarts, tlens = [], [], [0, 0], [0, 0]
        for w, pool in enumerate(pools):
            starts.append(len(pool_ep))
            lens.append(len(pool))
            pool_ep.extend(ep_id(e.ip, e.port) for e in pool)
            pool_weight.extend(e.weight for e in pool)
            if kind in ("maglev", "source-hash") and pool:
                hit = cache.get(id(pp)) if cache is not None else None
                entry = hit if hit is not None and hit[0] is pp else fresh.get(id(pp), (pp, {}))
                fresh[id(pp)] = entry
                mkey = f"maglev/{w}"
                if mkey not in entry[1]:
                    build_maglev = build_maglev or maglev_builder()
                    entry[1][mkey] = _maglev(pp, pool, "cluster" if w == 0 else "local", build_maglev)
                table, warns = entry[1][mkey]
                dups.extend(warns)
                tstarts[w], tlens[w] = n_table, len(table)
                sel_tables.append(table)
                n_table += len(table)
        pool_start.append((starts[0], starts[1]))
        pool_len.append((lens[0], lens[1]))
        table_start.append((tstarts[0], tstarts[1]))
        table_len.append((tlens[0], tlens[1]))
        proto = PROTO_NUMBERS[pp.protocol]
        for f in pp.frontends():
            if f.kind == "NodePort":
                nkey = (f.port, proto)
                if nkey in nps:
                    dups.append(f"{pp.spn}: NodePort {f.port}/{pp.protocol} is also used by another service")
                    continue
                nps[nkey] = add_record(pi, pp, "NodePort")
                continue
            assert f.ip is not None
            key = (f.ip, f.port, proto)
            if key in fe:
                dups.append(f"{pp.spn}: {f.kind} {f.ip}:{f.port}/{pp.protocol} is also used by another service")
                continue
            fe[key] = add_record(pi, pp, f.kind, f.ip)

    if cache is not None:
        for k in [k for k, v in cache.items() if v[0].cluster_ip and (":" in v[0].cluster_ip) == v6]:
            del cache[k]
        cache.update(fresh)
    det = cfg.detector
    det_net = det.network
    det_ips = [str(det_net.network_address)] if det_net is not None else ["::" if v6 else "0.0.0.0"]
    fe_keys = list(fe)
    np_keys = list(nps)
    cips: dict[str, int] = {}
    scidrs: list[tuple[str, int]] = []
    if cfg.nftables:
        for pp in plan.ports:
            cips.setdefault(pp.cluster_ip, service_index[pp.spn])
        for text in service_cidrs:
            net, _ = parse_cidr(text.strip())
            if net is not None and (net.version == 6) == v6:
                scidrs.append((str(net.network_address), net.prefixlen))
    return FamilyTables(
        v6=v6,
        fe_addr=_addr_array([k[0] for k in fe_keys], v6),
        fe_port=np.array([k[1] for k in fe_keys], dtype=np.uint16),
        fe_proto=np.array([k[2] for k in fe_keys], dtype=np.uint8),
        fe_rec=np.array([fe[k] for k in fe_keys], dtype=np.int32),
        np_port=np.array([k[0] for k in np_keys], dtype=np.uint16),
        np_proto=np.array([k[1] for k in np_keys], dtype=np.uint8),
        np_rec=np.array([nps[k] for k in np_keys], dtype=np.int32),
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
        duplicates=tuple(dups),
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

"""Synthetic clusters and packets for ``kproxy bench`` and benchmarks/, the numpy baseline, and
the check of an engine's answers against the other implementation's.

The numpy baseline is the same stateless decision (``track=False``) written as
whole-array numpy operations over the engine's own tables: sorted frontend keys and
``searchsorted``, the action byte per source class, and the same seeded hash for
the endpoint pick (and, for the weighted, Maglev and source-hash selectors, the same
alias tables and lookup tables). It is what a careful numpy user would write, and it
must agree with the engine (the benchmarks assert it).

The check against the twin (``check_twins``, ``compare_with_twin``) asks the pure-Python twin
the same packets, or a sample of them, and requires identical answers, field by field. It is
self-agreement (both implementations are ours, written from one design): it catches a core
that drifted from the twin, not a misreading of kube-proxy they share.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .engine import Engine
from .model import Cluster, Endpoint, EndpointPort, EndpointSlice, Node, Service, ServicePort
from .selectors import (
    SELECTOR_ANNOTATION,
    SELECTOR_CODES,
    SELECTOR_KINDS,
    WEIGHT_SALT,
    WEIGHTS_ANNOTATION,
    alias_table,
)
from .tables import FamilyTables

SERVICE_BASE = 0x0A600000  # 10.96.0.0
POD_BASE = 0x64400000  # 100.64.0.0


def _ip(n: int) -> str:
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def synthetic_cluster(
    services: int, endpoints: int, nodes: int = 3, selector: str | None = None,
    weights: Sequence[int] | None = None,
) -> Cluster:
    """``services`` ClusterIP services of one TCP port each, ``endpoints`` ready endpoints each.

    ``selector``: every service's ``kproxy-core.io/selector`` annotation (None: kube-proxy's
    random choice); ``weights``: the endpoints' weights (endpoint j of each service weighs
    ``weights[j % len(weights)]``), as ``kproxy-core.io/weights``."""
    if selector is not None and selector not in SELECTOR_KINDS:
        raise ValueError(f"selector must be one of {', '.join(SELECTOR_KINDS)}, not {selector!r}")
    node_objs = {
        f"node-{i}": Node(
            f"node-{i}", (("InternalIP", f"192.168.0.{i + 1}"),), (f"100.64.{i}.0/24",)
        )
        for i in range(nodes)
    }
    svcs: dict[tuple[str, str], Service] = {}
    slices: dict[tuple[str, str], EndpointSlice] = {}
    ep_ip = POD_BASE
    for i in range(services):
        name = f"svc-{i}"
        eps = []
        annotations: dict[str, str] = {SELECTOR_ANNOTATION: selector} if selector else {}
        weight_items = []
        for j in range(endpoints):
            eps.append(Endpoint((_ip(ep_ip),), node_name=f"node-{j % nodes}"))
            if weights:
                weight_items.append(f"{_ip(ep_ip)}={weights[j % len(weights)]}")
            ep_ip += 1
        if weight_items:
            annotations[WEIGHTS_ANNOTATION] = ",".join(weight_items)
        svc = Service(
            "bench", name, "ClusterIP", (_ip(SERVICE_BASE + i + 1),), ("IPv4",), False,
            (ServicePort("http", "TCP", 80),), selector={"app": name}, annotations=annotations,
        )
        sl = EndpointSlice("bench", f"{name}-abc", name, "IPv4",
                           (EndpointPort("http", "TCP", 8080),), tuple(eps))
        svcs[svc.key] = svc
        slices[sl.key] = sl
    return Cluster(svcs, slices, node_objs)


def synthetic_objects(services: int, endpoints: int, nodes: int = 3) -> Iterator[dict[str, Any]]:
    """The manifests of :func:`synthetic_cluster` (random selector) as ``Cluster.from_objects``
    takes them: the Nodes, then each Service followed by its EndpointSlice."""
    for i in range(nodes):
        yield {
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": f"node-{i}"},
            "spec": {"podCIDR": f"100.64.{i}.0/24", "podCIDRs": [f"100.64.{i}.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": f"192.168.0.{i + 1}"}]},
        }
    ep_ip = POD_BASE
    for i in range(services):
        name = f"svc-{i}"
        cip = _ip(SERVICE_BASE + i + 1)
        yield {
            "apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "bench", "name": name},
            "spec": {
                "type": "ClusterIP", "clusterIP": cip, "clusterIPs": [cip], "ipFamilies": ["IPv4"],
                "selector": {"app": name}, "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
            },
        }
        yield slice_object(name, [_ip(ep_ip + j) for j in range(endpoints)], nodes)
        ep_ip += endpoints


def slice_object(service: str, addresses: Sequence[str], nodes: int = 3) -> dict[str, Any]:
    """The EndpointSlice manifest of a synthetic service (``<service>-abc``): ready endpoints at
    ``addresses``, the j-th on node ``j % nodes``, port http 8080/TCP."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "bench", "name": f"{service}-abc",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": [
            {"addresses": [a], "conditions": {"ready": True}, "nodeName": f"node-{j % nodes}"}
            for j, a in enumerate(addresses)
        ],
    }


@dataclass
class Packets:
    src: npt.NDArray[np.uint32]
    dst: npt.NDArray[np.uint32]
    sport: npt.NDArray[np.uint16]
    dport: npt.NDArray[np.uint16]
    proto: npt.NDArray[np.uint8]


def synthetic_packets(services: int, packets: int, flows: int | None = None, seed: int = 1) -> Packets:
    """Packets to the synthetic services' ClusterIPs from pod addresses.

    ``flows``: how many distinct 5-tuples the packets are drawn from (None: every
    packet its own flow, the worst case for the flow table). 5% miss every service.
    """
    rng = np.random.default_rng(seed)
    n = packets if flows is None else flows
    svc = rng.integers(0, services, n)
    dst = (SERVICE_BASE + 1 + svc).astype(np.uint32)
    miss = rng.random(n) < 0.05
    dst[miss] = rng.integers(0x0B000000, 0x0BFFFFFF, int(miss.sum()), dtype=np.uint32)
    src = rng.integers(POD_BASE, POD_BASE + (1 << 20), n, dtype=np.uint32)
    sport = rng.integers(1024, 65535, n, dtype=np.uint16)
    dport = np.full(n, 80, dtype=np.uint16)
    proto = np.full(n, 6, dtype=np.uint8)
    if flows is not None:
        idx = rng.integers(0, flows, packets)
        src, dst, sport, dport, proto = src[idx], dst[idx], sport[idx], dport[idx], proto[idx]
    return Packets(src, dst, sport, dport, proto)


# --------------------------------------------------------------------------- numpy baseline

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    out: npt.NDArray[np.uint64] = z ^ (z >> np.uint64(31))
    return out


def _mulhi(a: npt.NDArray[np.uint64], b: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The high 64 bits of a * b for b < 2**32, in 64-bit pieces."""
    lo = a & np.uint64(0xFFFFFFFF)
    hi = a >> np.uint64(32)
    with np.errstate(over="ignore"):
        out: npt.NDArray[np.uint64] = (hi * b + ((lo * b) >> np.uint64(32))) >> np.uint64(32)
    return out


class NumpyBaseline:
    """Stateless IPv4 lookups (frontend table only: ClusterIP/externalIP) in numpy, with
    the random, weighted, Maglev and source-hash selectors (not round-robin: its cursor
    is sequential state)."""

    def __init__(self, engine: Engine) -> None:
        t: FamilyTables = engine.tables["IPv4"]
        keys = (
            (t.fe_addr.astype(np.uint64) << np.uint64(24))
            | (t.fe_port.astype(np.uint64) << np.uint64(8))
            | t.fe_proto.astype(np.uint64)
        )
        order = np.argsort(keys)
        self.keys = keys[order]
        self.rec = t.fe_rec[order]
        self.t = t
        self.seed = np.uint64(engine.seed & 0xFFFFFFFFFFFFFFFF)
        self.det_on = t.det_on
        self.det_mask = np.uint32(((1 << 32) - 1) ^ ((1 << (32 - t.det_prefix)) - 1)) if t.det_on else np.uint32(0)
        self.det_net = np.uint32(t.det_addr[0]) if t.det_on else np.uint32(0)
        self.local = t.local_addrs
        n_port = len(t.port_service)
        self.kind = (np.zeros(n_port, np.uint8) if t.port_selector is None else t.port_selector).astype(np.intp)
        if (self.kind == SELECTOR_CODES["round-robin"]).any():
            raise ValueError("NumpyBaseline: round-robin is sequential state, not an array operation")
        self.pseed = np.zeros(n_port, np.uint64) if t.port_seed is None else t.port_seed.astype(np.uint64)
        # weighted pools: the alias column's threshold and alias per pool entry, as the core
        # keeps them (keep the entry iff mix(h ^ salt) < ceil(prob * 2**64 / W))
        npool = len(t.pool_ep)
        self.thr = np.full(npool, 0xFFFFFFFFFFFFFFFF, np.uint64)
        self.alias = np.arange(npool, dtype=np.intp)
        weights = np.ones(npool, np.int64) if t.pool_weight is None else t.pool_weight.astype(np.int64)
        for p in np.flatnonzero(self.kind == SELECTOR_CODES["weighted"]):
            for w in (0, 1):
                st, n = int(t.port_pool_start[p, w]), int(t.port_pool_len[p, w])
                if n == 0:
                    continue
                a = alias_table(weights[st:st + n].tolist())
                for i, (pr, al) in enumerate(zip(a.prob, a.alias, strict=True)):
                    self.alias[st + i] = st + al
                    if pr < a.total:
                        self.thr[st + i] = -(-(pr << 64) // a.total)
        self.tstart = np.zeros((n_port, 2), np.int64) if t.port_table_start is None else t.port_table_start
        self.tlen = np.zeros((n_port, 2), np.int64) if t.port_table_len is None else t.port_table_len
        self.table = np.zeros(1, np.int32) if t.sel_table is None or not len(t.sel_table) else t.sel_table

    def lookup(self, p: Packets) -> dict[str, Any]:
        t = self.t
        key = (
            (p.dst.astype(np.uint64) << np.uint64(24))
            | (p.dport.astype(np.uint64) << np.uint64(8))
            | p.proto.astype(np.uint64)
        )
        pos = np.searchsorted(self.keys, key)
        pos[pos >= len(self.keys)] = 0
        hit = self.keys[pos] == key if len(self.keys) else np.zeros(len(key), bool)
        rec = np.where(hit, self.rec[pos] if len(self.rec) else 0, 0)
        pod = ((p.src & self.det_mask) == self.det_net) if self.det_on else np.zeros(len(key), bool)
        local = np.isin(p.src, self.local) | ((p.src >> np.uint32(24)) == 127)
        cls = pod.astype(np.intp) | (local.astype(np.intp) << 1)
        action = np.where(hit, t.rec_action[rec, cls], 0)
        verdict = (action & 3).astype(np.uint8)
        port = t.rec_port[rec]
        which = np.clip(((action >> 2) & 3).astype(np.intp) - 1, 0, 1)
        start = t.port_pool_start[port, which]
        n = t.port_pool_len[port, which].astype(np.uint64)
        h = _mix(self.seed ^ ((p.src.astype(np.uint64) << np.uint64(32)) | p.dst.astype(np.uint64)))
        ports = (
            (p.sport.astype(np.uint64) << np.uint64(24))
            | (p.dport.astype(np.uint64) << np.uint64(8))
            | p.proto.astype(np.uint64)
        )
        h = _mix(h ^ ports)
        with np.errstate(over="ignore"):
            idx = (((h >> np.uint64(32)) * n) >> np.uint64(32)).astype(np.intp)
        dnat = verdict == 1
        kind = np.where(dnat, self.kind[port], 0)
        if (kind == SELECTOR_CODES["weighted"]).any():
            wt = kind == SELECTOR_CODES["weighted"]
            pos = np.where(wt, start + idx, 0)
            keep = _mix(h ^ np.uint64(WEIGHT_SALT)) < self.thr[pos]
            idx = np.where(wt & ~keep, self.alias[pos] - start, idx)
        hashed = (kind == SELECTOR_CODES["maglev"]) | (kind == SELECTOR_CODES["source-hash"])
        if hashed.any():
            # the selector's hash: the 5-tuple without the destination, under its own seed
            # (source-hash: the source address only)
            sh = kind == SELECTOR_CODES["source-hash"]
            fh = _mix(self.pseed[port] ^ (p.src.astype(np.uint64) << np.uint64(32)))
            fh = _mix(fh ^ np.where(sh, np.uint64(0), ports))
            m = self.tlen[port, which].astype(np.uint64)
            slot = np.where(hashed, self.tstart[port, which] + _mulhi(fh, m).astype(np.int64), 0)
            idx = np.where(hashed, self.table[slot], idx)
        ep = np.where(dnat, t.pool_ep[np.where(dnat, start + idx, 0)] if len(t.pool_ep) else 0, 0)
        ep_ip = np.where(dnat, t.ep_addr[ep] if len(t.ep_addr) else 0, 0).astype(np.uint32)
        masq = dnat & ((((action >> 4) & 1) == 1) | (ep_ip == p.src))
        service = np.where(verdict > 0, t.port_service[port], -1).astype(np.int32)
        return {"verdict": verdict, "service": service, "ep_ip": ep_ip, "masq": masq}


# --------------------------------------------------------------------------- the twin as the check

TWIN_SAMPLE = 2_000  # packets compared with the pure-Python twin
ROW_FIELDS = ("verdict", "service", "frontend", "ep_ip", "ep_port", "masq")


def take(p: Packets, idx: Any) -> Packets:
    """The packets of ``p`` at ``idx`` (a slice or an index array)."""
    return Packets(p.src[idx], p.dst[idx], p.sport[idx], p.dport[idx], p.proto[idx])


def _label(engine: Engine) -> str:
    return "compiled" if engine.compiled else "python"


def _disagreement(a: Any, b: Any, p: Packets, labels: tuple[str, str], what: str,
                  fields: Sequence[str] = ROW_FIELDS) -> str | None:
    """None if the batch answers ``a`` and ``b`` to ``p`` agree on ``fields``, else what differs."""
    bad = np.zeros(len(a), bool)
    for f in fields:
        bad |= a[f] != b[f]
    if not bad.any():
        return None

    def row(r: Any) -> str:
        return " ".join(f"{f}={_ip(int(r[f])) if f == 'ep_ip' else r[f]}" for f in fields)

    lines = [f"{int(bad.sum())} of {len(a)} packets answered differently ({what}); the first:"]
    for i in np.flatnonzero(bad)[:5].tolist():
        lines.append(f"  {_ip(int(p.src[i]))}:{p.sport[i]} -> {_ip(int(p.dst[i]))}:{p.dport[i]} proto {p.proto[i]}:"
                     f"\n    {labels[0]}: {row(a[i])}\n    {labels[1]}: {row(b[i])}")
    return "\n".join(lines)


def check_twins(a: Engine, b: Engine, p: Packets, *, now: float = 1000.0) -> int:
    """Ask engines ``a`` and ``b`` (one cluster, one seed: the compiled core and the pure-Python
    twin) the packets ``p`` stateless, then tracked, then tracked again (flow hits now): every
    answer must be the same, field by field, or AssertionError names the first that differ.

    Both must be in one state before (fresh, or fed the same packets since: flows and
    round-robin turns carry over), and are in one state after. Returns the packets checked."""
    labels = (_label(a), _label(b))
    for what, track in (("stateless", False), ("tracked", True), ("tracked again", True)):
        outs = [e.lookup_batch(p.src, p.dst, p.dport, p.proto, p.sport, now=now, track=track) for e in (a, b)]
        why = _disagreement(outs[0], outs[1], p, labels, what)
        if why:
            raise AssertionError(f"the engines disagree: {why}")
    return len(p.src)


def compare_with_twin(out: Any, p: Packets, twin: Engine, *, sample: int = TWIN_SAMPLE, now: float = 1000.0,
                      fields: Sequence[str] = ROW_FIELDS) -> int:
    """``out``: an engine's batch answers to ``p`` (tracked or not); ``twin``: the other
    implementation on the same cluster with the same seed. ``sample`` packets spread evenly over
    ``p`` are asked of the twin stateless, and ``out`` must answer them the same on ``fields``,
    or AssertionError names the first that differ. Returns the packets checked.

    Only where an answer is a function of the packet (a tracked flow keeps the endpoint its first
    packet was given by the same hash): not for round-robin, whose turns depend on the
    connections before (compare its verdict, service and frontend only)."""
    n = len(p.src)
    idx = np.unique(np.linspace(0, n - 1, min(sample, n)).astype(np.int64)) if n else np.zeros(0, np.int64)
    some = take(p, idx)
    ref = twin.lookup_batch(some.src, some.dst, some.dport, some.proto, some.sport, now=now, track=False)
    why = _disagreement(out[idx], ref, some, ("engine", f"{_label(twin)} twin"), "a sample", fields)
    if why:
        raise AssertionError(f"the engine and the twin disagree: {why}")
    return len(idx)


def measure(fn: Any, *, min_time: float = 0.5, repeat: int = 3) -> float:
    """Best-of-``repeat`` seconds per call, each repeat looping for at least ``min_time``."""
    best = float("inf")
    for _ in range(repeat):
        n = 0
        t0 = time.perf_counter()
        while True:
            fn()
            n += 1
            el = time.perf_counter() - t0
            if el >= min_time:
                break
        best = min(best, el / n)
    return best


def run_bench(
    services: int = 10_000,
    endpoints: int = 10,
    packets: int = 1_000_000,
    flows: int | None = 100_000,
    python_packets: int = 20_000,
    min_time: float = 0.5,
    selector: str | None = None,
) -> dict[str, Any]:
    """Lookups/s of the compiled engine, the pure-Python twin and the numpy baseline, one run.

    ``selector``: every service's endpoint selector (None: kube-proxy's random choice);
    ``weighted`` and ``round-robin`` get the weights 1, 2, ..., ``endpoints`` (equal weights
    would make ``weighted`` the random choice)."""
    weights = list(range(1, endpoints + 1)) if selector in ("weighted", "round-robin") else None
    cluster = synthetic_cluster(services, endpoints, selector=selector, weights=weights)
    t0 = time.perf_counter()
    compiled = Engine(cluster, node="node-0", cluster_cidr="100.64.0.0/10", seed=7, impl=None)
    build_s = time.perf_counter() - t0
    twin = Engine(cluster, node="node-0", cluster_cidr="100.64.0.0/10", seed=7, impl="python")
    pk = synthetic_packets(services, packets, flows)
    small = synthetic_packets(services, min(python_packets, packets), flows)
    # before anything is timed, both fresh: the first packets the twin is timed on, asked of
    # both engines stateless and tracked, must get the same answers (then the flows go)
    checked = check_twins(compiled, twin, take(small, slice(0, TWIN_SAMPLE))) if compiled.compiled else 0
    compiled.clear_flows()
    twin.clear_flows()
    res: dict[str, Any] = {
        "services": services,
        "endpoints": endpoints,
        "packets": packets,
        "flows": flows,
        "engine": "compiled" if compiled.compiled else "python (extension not built)",
        "selector": selector or "random",
        "engine_build_seconds": round(build_s, 3),
        "twin_checked_packets": checked,
    }

    def batch(e: Engine, p: Packets, track: bool) -> Any:
        return e.lookup_batch(p.src, p.dst, p.dport, p.proto, p.sport, now=1000.0, track=track)

    rate: dict[str, float] = {}
    rate["compiled_batch_track"] = packets / measure(lambda: batch(compiled, pk, True), min_time=min_time)
    rate["compiled_batch_stateless"] = packets / measure(lambda: batch(compiled, pk, False), min_time=min_time)
    n_small = len(small.src)
    rate["python_batch_track"] = n_small / measure(lambda: batch(twin, small, True), min_time=min_time, repeat=1)
    if selector != "round-robin":
        base = NumpyBaseline(compiled)
        out = batch(compiled, pk, False)
        ref = base.lookup(pk)
        if not (np.array_equal(ref["verdict"], out["verdict"]) and np.array_equal(ref["ep_ip"], out["ep_ip"])):
            raise AssertionError("numpy baseline and engine disagree")
        rate["numpy_batch_stateless"] = packets / measure(lambda: base.lookup(pk), min_time=min_time)
    srcs = [_ip(int(x)) for x in small.src[:10_000]]
    dsts = [_ip(int(x)) for x in small.dst[:10_000]]
    sps = [int(x) for x in small.sport[:10_000]]

    def per_call(e: Engine) -> None:
        look = e.lookup
        for s, d, sp in zip(srcs, dsts, sps, strict=True):
            look(s, d, 80, "TCP", sp, 1000.0)

    rate["compiled_per_call"] = len(srcs) / measure(lambda: per_call(compiled), min_time=min_time)
    rate["python_per_call"] = len(srcs) / measure(lambda: per_call(twin), min_time=min_time, repeat=1)
    # the same call count over a working set of 100 packets (cache-resident, like a simulator
    # that keeps talking to a few services); the line above spreads calls over every service
    hot = [(srcs[i % 100], dsts[i % 100], sps[i % 100]) for i in range(len(srcs))]

    def per_call_hot(e: Engine) -> None:
        look = e.lookup
        for s, d, sp in hot:
            look(s, d, 80, "TCP", sp, 1000.0)

    rate["compiled_per_call_hot"] = len(hot) / measure(lambda: per_call_hot(compiled), min_time=min_time)
    res["lookups_per_second"] = {k: round(v) for k, v in rate.items()}
    res["ratios"] = {
        "batch_compiled_vs_python": round(rate["compiled_batch_track"] / rate["python_batch_track"], 1),
        "per_call_compiled_vs_python": round(rate["compiled_per_call"] / rate["python_per_call"], 1),
    }
    if "numpy_batch_stateless" in rate:
        res["ratios"]["batch_compiled_vs_numpy"] = round(
            rate["compiled_batch_stateless"] / rate["numpy_batch_stateless"], 1)
    return res

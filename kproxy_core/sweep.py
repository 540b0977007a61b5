"""``kproxy bench --sweep``: how build, update, trace, memory and lookups scale with the cluster.

For each size N, a synthetic cluster of N ClusterIP service ports × ``endpoints``
(:func:`kproxy_core.bench.synthetic_cluster`) is built and measured once per column:

- build: ``synthetic_cluster`` + ``Engine``; build from dicts: ``Cluster.from_objects`` +
  ``Engine`` on the same cluster as manifests; json: ``json.loads`` of those manifests
  serialised (all three with the garbage collector off, as ``kproxy_core.manifests`` runs);
- apply: one EndpointSlice replaced by one with new addresses, one ``engine.apply`` call per
  change, services cycled in random order, p50 and p99 over up to ``apply_reps`` calls (fewer
  when they exceed ``apply_budget`` seconds: the row says how many ran);
- trace: the median of ``engine.trace`` over ``trace_reps`` packets to random services;
- bytes per service port: ``engine.memory()`` without its flow and affinity tables when the
  engine has it, else the growth of the resident set across the build (the row says which);
- lookups/s over ``packets`` packets: the engine stateless (``track=False``) and tracked
  (every flow already in a table of ``FLOW_SLOTS_PER_FLOW`` slots per flow), the roofline
  (:mod:`kproxy_core.roofline`, the lean C loop on the same keys), the numpy baseline, and the
  pure-Python twin on a small batch (only up to ``twin_max`` service ports: it is a second
  engine, as slow to build as the first and as big).

apply and trace run with an empty flow table, so they measure the cluster, not the traffic.

Every lookup column is checked against the engine's stateless output before it is timed.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .bench import (
    POD_BASE,
    SERVICE_BASE,
    NumpyBaseline,
    Packets,
    _ip,
    measure,
    slice_object,
    synthetic_cluster,
    synthetic_objects,
    synthetic_packets,
)
from .engine import Engine
from .model import Cluster

ENGINE_OPTIONS: dict[str, Any] = {"node": "node-0", "cluster_cidr": "100.64.0.0/10", "seed": 7}
# Peak bytes per service port of a size without the twin (the build from dicts holds the
# parsed manifests, the cluster and an engine at once): 15.5-19.3 KB at 100,000 ports × 10
# endpoints (this tree, 2026-12), split here into a part per port and one per endpoint. Used for the
# first size only; later sizes extrapolate what the previous ones measured.
PRIOR_PEAK_PER_PORT = 6_000
PRIOR_PEAK_PER_ENDPOINT = 1_000
# the tracked column's flow table holds 4 slots per flow: at 2, 0.5% of 1M flows were evicted
# (8-slot buckets overflow), at 4 one in 10,000; untouched slots cost no memory
FLOW_SLOTS_PER_FLOW = 4
NEW_ADDRESSES = 0x65000000  # 101.0.0.0: apply's replacement endpoints, disjoint from the pods


class SweepMemoryError(MemoryError):
    """A size would not fit in memory (the message is one line)."""


@dataclass
class SweepRow:
    service_ports: int
    endpoints: int
    build_s: float
    build_dicts_s: float
    json_s: float
    apply_us_p50: float
    apply_us_p99: float
    apply_n: int
    trace_us: float
    trace_n: int
    bytes_per_port: float
    bytes_source: str  # "engine.memory()" or "rss"
    packets: int
    flows: int
    stateless_mps: float
    tracked_mps: float
    tracked_flows_held: int
    roofline_mps: float | None
    engine_vs_roofline: float | None
    numpy_mps: float
    twin_mps: float | None
    twin_packets: int
    peak_bytes_per_port: float | None


def _trim() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc), so the resident set's growth
    across the next build counts that build, not reuse of what an earlier size freed."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def estimate_peak(services: int, endpoints: int, measured: Sequence[SweepRow]) -> tuple[int, str]:
    """Peak bytes a size will hold (without the twin), and how that was estimated: a line
    through the peaks of the two largest sizes measured (their fixed part, the packet batches,
    does not grow), one size scaled up, or the prior; 20% margin on what is extrapolated."""
    peaks = [(r.service_ports, r.peak_bytes_per_port * r.service_ports) for r in measured
             if r.peak_bytes_per_port is not None and r.peak_bytes_per_port > 0]
    if len(peaks) >= 2:
        (n1, p1), (n2, p2) = peaks[-2], peaks[-1]
        slope = max((p2 - p1) / (n2 - n1), 0.0) if n2 != n1 else p2 / n2
        return int(p2 + 1.2 * slope * (services - n2)), f"extrapolated from {n1} and {n2} service ports"
    if peaks:
        n1, p1 = peaks[-1]
        return int(1.2 * p1 / n1 * services), f"scaled from {n1} service ports"
    return services * (PRIOR_PEAK_PER_PORT + PRIOR_PEAK_PER_ENDPOINT * endpoints), "estimated"


def check_memory(services: int, endpoints: int, measured: Sequence[SweepRow] = (), twin: bool = False) -> None:
    """Raise :class:`SweepMemoryError` when a size would not fit in the memory available now.

    ``measured``: the smaller sizes of this sweep (see :func:`estimate_peak`); ``twin``: the
    size builds the pure-Python twin as well. Without /proc/meminfo nothing is checked (a
    MemoryError still becomes a one-line error)."""
    avail = _mem_available()
    if avail is None:
        return
    need, how = estimate_peak(services, endpoints, measured)
    if twin:
        need = int(need * 1.5)  # a second engine on the same cluster
    if need > avail:
        raise SweepMemoryError(
            f"{services} service ports × {endpoints} endpoints need about {_gib(need)} ({how}); "
            f"{_gib(avail)} available"
        )


def _ms_roofline(engine: Engine, pk: Packets, out: Any, min_time: float) -> tuple[float | None, str | None]:
    """Roofline lookups/s, after checking it chooses the engine's endpoints; or (None, reason)."""
    from .roofline import Roofline, RooflineUnavailable

    try:
        rl = Roofline(engine)
    except RooflineUnavailable as e:
        return None, str(e)
    with rl:
        ip, port, hits = rl.run(pk.src, pk.dst, pk.sport, pk.dport, pk.proto)
        dnat = out["verdict"] == 1
        if not (hits == int(dnat.sum()) and np.array_equal(ip[dnat], out["ep_ip"][dnat])
                and np.array_equal(port[dnat], out["ep_port"][dnat])):
            raise AssertionError("the roofline and the engine chose different endpoints")
        n = len(pk.src)
        return n / measure(lambda: rl.run(pk.src, pk.dst, pk.sport, pk.dport, pk.proto, ip, port),
                           min_time=min_time), None


def _slice_for(service: int, generation: int, endpoints: int) -> dict[str, Any]:
    base = NEW_ADDRESSES + generation * endpoints
    return slice_object(f"svc-{service}", [_ip(base + j) for j in range(endpoints)])


def measure_apply(engine: Engine, services: int, endpoints: int, reps: int, budget: float,
                  rng: np.random.Generator, min_reps: int = 3) -> list[float]:
    """Seconds of each ``apply`` of one changed EndpointSlice (services cycled in random
    order); stops after ``reps`` calls, or ``budget`` seconds once ``min_reps`` ran. Checks
    that the last changed service now lands on one of its new endpoints."""
    order = rng.permutation(services)
    times: list[float] = []
    spent = 0.0
    svc = gen = 0
    for k in range(reps):
        svc, gen = int(order[k % services]), k
        event = [{"type": "MODIFIED", "object": _slice_for(svc, gen, endpoints)}]
        t0 = time.perf_counter()
        engine.apply(event)
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if spent > budget and len(times) >= min_reps:
            break
    d = engine.lookup(_ip(POD_BASE + 7), _ip(SERVICE_BASE + svc + 1), 80, "TCP", sport=40000)
    base = NEW_ADDRESSES + gen * endpoints
    if d.verdict != "DNAT" or d.endpoint is None or not 0 <= _int(d.endpoint[0]) - base < endpoints:
        raise AssertionError(f"after apply, svc-{svc} does not land on a new endpoint: {d}")
    return times


def _int(ip: str) -> int:
    a, b, c, d = (int(x) for x in ip.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def measure_trace(engine: Engine, services: int, reps: int, rng: np.random.Generator) -> list[float]:
    """Seconds of each ``engine.trace`` of a packet from a pod to a random service (checked:
    the trace names that service)."""
    svcs = rng.integers(0, services, reps)
    srcs = rng.integers(POD_BASE, POD_BASE + (1 << 20), reps)
    sports = rng.integers(1024, 65535, reps)
    engine.trace(_ip(int(srcs[0])), _ip(SERVICE_BASE + int(svcs[0]) + 1), 80, "TCP", sport=int(sports[0]))
    times = []
    for s, src, sp in zip(svcs.tolist(), srcs.tolist(), sports.tolist(), strict=True):
        t0 = time.perf_counter()
        tr = engine.trace(_ip(src), _ip(SERVICE_BASE + s + 1), 80, "TCP", sport=sp)
        times.append(time.perf_counter() - t0)
        if tr.service != f"bench/svc-{s}:http":
            raise AssertionError(f"trace to svc-{s} names {tr.service!r}")
    return times


_warmed = False


def _warm_up() -> None:
    """Build a one-service engine once, so imports, the plugin manager and first-use caches are
    not counted in the first size's build time and memory."""
    global _warmed
    if not _warmed:
        Engine(synthetic_cluster(1, 1), **ENGINE_OPTIONS)
        _warmed = True


def _bytes(engine: Engine, rss_delta: int | None, services: int) -> tuple[float, str]:
    memory = getattr(engine, "memory", None)
    if callable(memory):
        m = memory()
        total = m.get("total", sum(v for v in m.values() if isinstance(v, int)))
        # flow and affinity tables are sized by their capacity (here: for the tracked column's
        # flows), not by the cluster
        total -= sum(int(m.get(k, 0)) for k in ("flows", "affinity"))
        return total / services, "engine.memory()"
    if rss_delta is None:
        return float("nan"), "unavailable"
    return rss_delta / services, "rss"


class _Peak:
    """The largest resident set seen at the marks, above ``base``."""

    def __init__(self) -> None:
        self.base = _rss()
        self.top = self.base or 0

    def mark(self) -> None:
        self.top = max(self.top, _rss() or 0)

    def per_port(self, services: int) -> float | None:
        return None if self.base is None else (self.top - self.base) / services


def _batch(e: Engine, p: Packets, track: bool) -> Any:
    return e.lookup_batch(p.src, p.dst, p.dport, p.proto, p.sport, now=1000.0, track=track)


def _measure_engine(
    services: int, endpoints: int, packets: int, flows: int | None, n_flows: int, peak: _Peak,
    step: Callable[[str], None], notes: dict[str, str] | None, *, min_time: float, apply_reps: int,
    apply_budget: float, trace_reps: int, twin_max: int, twin_packets: int,
) -> dict[str, Any]:
    """Everything measured on the engine built from model objects; it is freed on return."""
    rng = np.random.default_rng(services)
    step("build")
    gc.disable()
    try:
        t0 = time.perf_counter()
        cluster = synthetic_cluster(services, endpoints)
        engine = Engine(cluster, flow_capacity=FLOW_SLOTS_PER_FLOW * n_flows, **ENGINE_OPTIONS)
        build_s = time.perf_counter() - t0
    finally:
        gc.enable()
    rss1 = _rss()
    delta = None if peak.base is None or rss1 is None else rss1 - peak.base
    bytes_per_port, bytes_source = _bytes(engine, delta, services)

    step("packets")
    pk = synthetic_packets(services, packets, flows, seed=services)
    peak.mark()

    step("stateless lookups")
    out = _batch(engine, pk, False)
    stateless = packets / measure(lambda: _batch(engine, pk, False), min_time=min_time)
    step("roofline")
    roof, why = _ms_roofline(engine, pk, out, min_time)
    if why and notes is not None:
        notes["roofline"] = why
    step("numpy baseline")
    numpy_mps = _ms_numpy(engine, pk, out, min_time)
    peak.mark()
    step("tracked lookups")
    engine.clear_flows()
    first = _batch(engine, pk, True)  # inserts every flow; the timed batches find them
    if not np.array_equal(first["ep_ip"], out["ep_ip"]):
        raise AssertionError("tracked and stateless lookups of new flows disagree")
    del first
    held = engine.flow_count
    tracked = packets / measure(lambda: _batch(engine, pk, True), min_time=min_time)
    peak.mark()

    twin_mps: float | None = None
    n_twin = min(twin_packets, packets)
    if services <= twin_max:
        step("pure-Python twin")
        twin_mps = _ms_twin(cluster, pk, out, n_twin, min_time)
        _trim()  # the twin is not counted in the peak: sizes above twin_max do not build it

    # trace and apply with no flows: apply's cleanup of flows to removed endpoints scans the
    # flow table (measured: 1,000 ports, 950,000 flows: 52 -> 120 ms per apply), which is a
    # cost of the traffic held, not of the cluster
    engine.clear_flows()
    step("trace")
    trace_t = measure_trace(engine, services, trace_reps, rng)
    step("apply")
    apply_t = measure_apply(engine, services, endpoints, apply_reps, apply_budget, rng)
    peak.mark()
    return {
        "build_s": build_s,
        "apply_us_p50": float(np.percentile(apply_t, 50)) * 1e6,
        "apply_us_p99": float(np.percentile(apply_t, 99)) * 1e6,
        "apply_n": len(apply_t),
        "trace_us": float(np.median(trace_t)) * 1e6,
        "trace_n": len(trace_t),
        "bytes_per_port": bytes_per_port,
        "bytes_source": bytes_source,
        "stateless_mps": stateless / 1e6,
        "tracked_mps": tracked / 1e6,
        "tracked_flows_held": held,
        "roofline_mps": None if roof is None else roof / 1e6,
        "engine_vs_roofline": None if roof is None else stateless / roof,
        "numpy_mps": numpy_mps / 1e6,
        "twin_mps": None if twin_mps is None else twin_mps / 1e6,
        "twin_packets": n_twin if twin_mps is not None else 0,
    }


def _ms_numpy(engine: Engine, pk: Packets, out: Any, min_time: float) -> float:
    base = NumpyBaseline(engine)
    ref = base.lookup(pk)
    if not (np.array_equal(ref["verdict"], out["verdict"]) and np.array_equal(ref["ep_ip"], out["ep_ip"])):
        raise AssertionError("the numpy baseline and the engine disagree")
    return len(pk.src) / measure(lambda: base.lookup(pk), min_time=min_time)


def _ms_twin(cluster: Cluster, pk: Packets, out: Any, n: int, min_time: float) -> float:
    twin = Engine(cluster, impl="python", **ENGINE_OPTIONS)
    small = Packets(pk.src[:n], pk.dst[:n], pk.sport[:n], pk.dport[:n], pk.proto[:n])
    if not np.array_equal(_batch(twin, small, False)["ep_ip"], out["ep_ip"][:n]):
        raise AssertionError("the pure-Python twin and the engine disagree")
    return n / measure(lambda: _batch(twin, small, False), min_time=min_time, repeat=1)


def _measure_dicts(services: int, endpoints: int, peak: _Peak) -> tuple[float, float]:
    """Seconds of ``json.loads`` of the manifests, and of ``Cluster.from_objects`` + ``Engine``."""
    # one object at a time: the list of dicts would take ~5 times the text's memory
    text = "[" + ",".join(json.dumps(o) for o in synthetic_objects(services, endpoints)) + "]"
    peak.mark()
    gc.disable()
    try:
        t0 = time.perf_counter()
        objs = json.loads(text)
        json_s = time.perf_counter() - t0
        del text
        t0 = time.perf_counter()
        cluster = Cluster.from_objects(objs)
        dicts_s = time.perf_counter() - t0
        del objs  # not timed; and the engine is built without the dicts held
        t0 = time.perf_counter()
        engine = Engine(cluster, **ENGINE_OPTIONS)
        dicts_s += time.perf_counter() - t0
    finally:
        gc.enable()
    peak.mark()
    if len(engine.service_ports) != services:
        raise AssertionError(f"the cluster from dicts has {len(engine.service_ports)} service ports, not {services}")
    return json_s, dicts_s


def run_size(
    services: int,
    endpoints: int = 10,
    packets: int = 1_000_000,
    flows: int | None = None,
    *,
    min_time: float = 0.5,
    apply_reps: int = 200,
    apply_budget: float = 20.0,
    trace_reps: int = 200,
    twin_max: int = 100_000,
    twin_packets: int = 20_000,
    progress: Callable[[str], None] | None = None,
    notes: dict[str, str] | None = None,
) -> SweepRow:
    """One row of the sweep (see the module docstring). ``flows``: distinct flows of the
    tracked column (None: every packet its own flow). ``notes`` receives why a column is
    missing (``"roofline"``)."""
    step = progress or (lambda stage: None)
    n_flows = packets if flows is None else min(flows, packets)
    _warm_up()
    _trim()
    peak = _Peak()
    m = _measure_engine(
        services, endpoints, packets, flows, n_flows, peak, step, notes, min_time=min_time,
        apply_reps=apply_reps, apply_budget=apply_budget, trace_reps=trace_reps, twin_max=twin_max,
        twin_packets=twin_packets,
    )
    _trim()
    step("build from dicts")
    json_s, dicts_s = _measure_dicts(services, endpoints, peak)
    _trim()
    return SweepRow(
        service_ports=services, endpoints=endpoints, build_dicts_s=dicts_s, json_s=json_s,
        packets=packets, flows=n_flows, peak_bytes_per_port=peak.per_port(services), **m,
    )


def _bind(progress: Callable[[int, str], None], n: int) -> Callable[[str], None]:
    return lambda stage: progress(n, stage)


def run_sweep(
    sizes: Sequence[int],
    endpoints: int = 10,
    packets: int = 1_000_000,
    flows: int | None = None,
    *,
    on_row: Callable[[SweepRow], None] | None = None,
    progress: Callable[[int, str], None] | None = None,
    notes: dict[str, str] | None = None,
    **options: Any,
) -> list[SweepRow]:
    """Rows for each size in ``sizes`` (service ports), smallest first. Before each size,
    :func:`check_memory` with the peak measured at the previous one; a MemoryError while
    measuring becomes :class:`SweepMemoryError`. ``on_row`` sees each row as it is done."""
    rows: list[SweepRow] = []
    twin_max = int(options.get("twin_max", 100_000))
    for n in sorted(sizes):
        check_memory(n, endpoints, rows, twin=n <= twin_max)
        step: Callable[[str], None] | None = None
        if progress is not None:
            step = _bind(progress, n)
        try:
            row = run_size(n, endpoints, packets, flows, notes=notes, progress=step, **options)
        except MemoryError as e:
            if isinstance(e, SweepMemoryError):
                raise
            gc.collect()
            detail = f" ({e})" if str(e) else ""
            raise SweepMemoryError(f"{n} service ports × {endpoints} endpoints: out of memory{detail}") from None
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


# --------------------------------------------------------------------------- output

COLUMNS: tuple[tuple[str, str], ...] = (
    ("ports", "service ports"),
    ("build s", "synthetic_cluster + Engine"),
    ("dicts s", "Cluster.from_objects + Engine"),
    ("json s", "json.loads of the manifests"),
    ("apply µs p50/p99", "one EndpointSlice changed"),
    ("trace µs", "median engine.trace"),
    ("B/port", "bytes per service port"),
    ("stateless M/s", "lookup_batch(track=False)"),
    ("tracked M/s", "lookup_batch, flows known"),
    ("roofline M/s", "the lean C loop"),
    ("eng/roof", "stateless / roofline"),
    ("numpy M/s", "NumpyBaseline"),
    ("twin M/s", "pure-Python twin, stateless"),
)


def _num(x: float | None, digits: int = 1) -> str:
    if x is None or x != x:
        return "—"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def row_cells(r: SweepRow) -> list[str]:
    return [
        f"{r.service_ports:,}",
        _num(r.build_s, 2),
        _num(r.build_dicts_s, 2),
        _num(r.json_s, 2),
        f"{_num(r.apply_us_p50, 0)}/{_num(r.apply_us_p99, 0)}",
        _num(r.trace_us, 0),
        _num(r.bytes_per_port, 0),
        _num(r.stateless_mps),
        _num(r.tracked_mps),
        _num(r.roofline_mps),
        "—" if r.engine_vs_roofline is None else f"{r.engine_vs_roofline:.2f}",
        _num(r.numpy_mps),
        _num(r.twin_mps, 3),
    ]


WIDTHS = (11, 8, 8, 7, 19, 9, 8, 14, 12, 13, 9, 10, 9)


def header() -> str:
    return "  ".join(name.rjust(w) for (name, _), w in zip(COLUMNS, WIDTHS, strict=True))


def format_row(r: SweepRow) -> str:
    return "  ".join(c.rjust(w) for c, w in zip(row_cells(r), WIDTHS, strict=True))


def footer(rows: Sequence[SweepRow], notes: dict[str, str]) -> list[str]:
    lines = []
    if rows:
        r = rows[0]
        src = {"rss": "the resident set's growth across the build (no engine.memory())",
               "engine.memory()": "engine.memory() without the flow and affinity tables"}.get(
            r.bytes_source, r.bytes_source)
        lines.append(f"{r.endpoints} endpoints per service port; {r.packets:,} packets per lookup batch, "
                     f"tracked over {r.flows:,} known flows; B/port from {src}; "
                     f"apply over {', '.join(str(x.apply_n) for x in rows)} calls")
    if "roofline" in notes:
        lines.append(f"roofline unavailable: {notes['roofline']}")
    return lines


def to_json(rows: Sequence[SweepRow], notes: dict[str, str]) -> dict[str, Any]:
    return {
        "rows": [asdict(r) for r in rows],
        "roofline_unavailable": notes.get("roofline"),
        "python": sys.version.split()[0],
    }


# --------------------------------------------------------------------------- plot


def plot_available() -> str | None:
    """None if matplotlib imports, else the reason."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        return str(e) or "ImportError"
    return None


def plot(rows: Sequence[SweepRow], path: str) -> None:
    """The sweep's curves against service ports (log x) in one PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r.service_ports for r in rows]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5), constrained_layout=True)
    ax = axes.ravel()

    def curve(a: Any, ys: Sequence[float | None], label: str, style: str = "o-") -> None:
        pts = [(xi, y) for xi, y in zip(x, ys, strict=True) if y is not None and y == y]
        if pts:
            a.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)

    curve(ax[0], [r.build_s for r in rows], "synthetic_cluster + Engine")
    curve(ax[0], [r.build_dicts_s for r in rows], "from_objects + Engine")
    curve(ax[0], [r.json_s for r in rows], "json.loads")
    ax[0].set(title="build", ylabel="seconds", yscale="log")
    curve(ax[1], [r.apply_us_p50 for r in rows], "p50")
    curve(ax[1], [r.apply_us_p99 for r in rows], "p99")
    ax[1].set(title="apply one EndpointSlice", ylabel="µs", yscale="log")
    curve(ax[2], [r.trace_us for r in rows], "median")
    ax[2].set(title="engine.trace", ylabel="µs", yscale="log")
    curve(ax[3], [r.bytes_per_port for r in rows], rows[0].bytes_source if rows else "")
    ax[3].set(title="memory", ylabel="bytes per service port")
    ax[3].set_ylim(bottom=0)
    curve(ax[4], [r.roofline_mps for r in rows], "roofline (lean C)", "k--")
    curve(ax[4], [r.stateless_mps for r in rows], "engine, stateless")
    curve(ax[4], [r.tracked_mps for r in rows], "engine, tracked")
    curve(ax[4], [r.numpy_mps for r in rows], "numpy baseline")
    curve(ax[4], [r.twin_mps for r in rows], "pure-Python twin")
    ax[4].set(title="lookups", ylabel="M lookups/s", yscale="log")
    curve(ax[5], [r.engine_vs_roofline for r in rows], "stateless / roofline")
    ax[5].set(title="engine against the roofline", ylabel="ratio", ylim=(0, 1.05))
    for a in ax:
        a.set_xscale("log")
        a.set_xlabel("service ports")
        a.grid(True, which="both", alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize="small")
    e = rows[0].endpoints if rows else 0
    fig.suptitle(f"kproxy bench --sweep ({e} endpoints per service port)")
    fig.savefig(path, dpi=100)
    plt.close(fig)

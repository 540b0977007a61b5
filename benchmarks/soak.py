"""A soak of the tracked path: many distinct flows through a bounded flow table while the
cluster changes, with resident memory, Python allocations and the flow count watched.

    python benchmarks/soak.py                        # 100 M flows, 10,000 applies, cap 2**20
    python benchmarks/soak.py --flows 2000000 --applies 200 --cap 262144 --json

The cluster: ``--services`` ClusterIP Services of two ports (http 80/TCP, dns 53/UDP) x
``--endpoints`` ready endpoints. Every packet is a flow of its own (source address and port
from a counter, a random Service, ``--udp`` of them UDP), looked up with ``track=True`` in
batches of ``--batch``, one second of the engine's clock per batch (UDP flows expire after
30 batches). Between batches ``Engine.apply`` replaces one random Service's EndpointSlice
(5 to 15 of 16 addresses): UDP flows whose endpoint left are dropped, as kube-proxy's
conntrack cleanup does.

Phases:

* warm-up: ``--warmup-flows`` flows (default 5 x the table's slots: every bucket full) and
  ``--warmup-applies`` applies (default: the engine's log of applies, APPLY_LOG, filled);
* steady: the other flows, with ``--applies`` applies spread over all but the last
  ``--tail-flows`` (default 4 x the slots); the tail refills every slot an apply emptied.

Watched: resident memory (``/proc/self/statm``) with the flows, applies and flow count every
``--every`` seconds; ``tracemalloc`` snapshots at the end of the warm-up and at the end
(started before the cluster is built, so both hold every live allocation; the warm-up one
goes to a temporary file, not kept in memory; ``--no-tracemalloc`` skips them: tracemalloc
slows every Python allocation, mostly ``apply``'s, so the script reports the mean apply time
and the flow rate of each phase). Writes the samples (CSV and JSON) and the resident-memory
curve (PNG, if matplotlib is installed: the ``plot`` extra) to ``--out`` (default
``benchmarks/soak``: soak.csv, soak.json, soak.png).

Exits 1 if resident memory after the warm-up grows by more than ``--rss-tolerance-pct`` of
it or ``--rss-tolerance-mb``, whichever is larger (resident memory less tracemalloc's own,
which follows the allocations it traces), if the Python allocations traced grow by more
than ``--traced-tolerance-mb``, if the flow count ever exceeds the table's slots, or if it
is not exactly the slots at the end.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import sys
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import kproxy_core as kp
from kproxy_core.engine import APPLY_LOG

SERVICE_BASE = 0x0A600000  # 10.96.0.0
POD_BASE = 0x64400000  # 100.64.0.0: the clients (flow sources)
EP_BASE = 0x0A800000  # 10.128.0.0: endpoints, 16 addresses reserved per Service
NODES = 3
SPORTS = 64512  # source ports 1024..65535: flow f is (POD_BASE + f // SPORTS, 1024 + f % SPORTS)
PAGE = os.sysconf("SC_PAGE_SIZE")
OPTIONS: dict[str, Any] = {"node": "node-0", "cluster_cidr": "100.64.0.0/10", "seed": 7}


def _ip(n: int) -> str:
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def slots(capacity: int) -> int:
    """The flow table's slots for ``flow_capacity`` (kproxy_core._engine.Core: buckets of 8,
    a power of two of them, at least ``capacity`` slots): the most flows it holds."""
    buckets = 1
    while buckets * 8 < capacity:
        buckets <<= 1
    return buckets * 8


def slice_object(i: int, addresses: list[int]) -> dict[str, Any]:
    name = f"svc-{i}"
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "soak", "name": f"{name}-abc", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}, {"name": "dns", "protocol": "UDP", "port": 5353}],
        "endpoints": [{"addresses": [_ip(EP_BASE + 16 * i + k)], "conditions": {"ready": True},
                       "nodeName": f"node-{k % NODES}"} for k in addresses],
    }


def objects(services: int, endpoints: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": f"node-{n}"},
        "spec": {"podCIDR": f"100.64.{n}.0/24", "podCIDRs": [f"100.64.{n}.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": f"192.168.0.{n + 1}"}]},
    } for n in range(NODES)]
    for i in range(services):
        cip = _ip(SERVICE_BASE + i + 1)
        out.append({
            "apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "soak", "name": f"svc-{i}"},
            "spec": {"type": "ClusterIP", "clusterIP": cip, "clusterIPs": [cip], "ipFamilies": ["IPv4"],
                     "selector": {"app": f"svc-{i}"},
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080},
                               {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353}]},
        })
        out.append(slice_object(i, list(range(endpoints))))
    return out


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def anon_huge() -> int:
    """Bytes of resident memory in transparent huge pages (the flow table's and the core's
    arena chunks are marked for them): a new one shows as a 2 MiB step."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class Sample:
    seconds: float
    phase: str
    flows: int
    applies: int
    flow_count: int
    rss_bytes: int
    traced_bytes: int  # Python allocations tracemalloc traces now (0 without it)
    tracemalloc_bytes: int  # tracemalloc's own memory (its traces), part of rss_bytes
    anon_huge_bytes: int  # part of rss_bytes in transparent huge pages
    blocks_bytes: int  # the core's service-port blocks, live and retired (Engine.memory)


@dataclass
class Report:
    command: str
    flows: int
    applies: int
    warmup_flows: int
    warmup_applies: int
    capacity: int
    slots: int
    services: int
    endpoints: int
    batch: int
    udp: float
    tracemalloc: bool
    seconds: float = 0.0
    build_seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    flows_per_second: dict[str, float] = field(default_factory=dict)
    lookup_flows_per_second: float = 0.0  # lookup_batch alone, over the whole run
    apply_ms: dict[str, float] = field(default_factory=dict)
    flows_dropped: int = 0
    rss_start: int = 0
    rss_warm: int = 0
    rss_end: int = 0
    rss_max_after_warmup: int = 0
    rss_growth: int = 0  # max after warm-up less warm, tracemalloc's own memory taken out
    rss_allowed: int = 0
    traced_warm: int = 0
    traced_end: int = 0
    traced_growth: int = 0
    traced_top: list[str] = field(default_factory=list)
    flow_count_min_after_warmup: int = 0
    flow_count_max: int = 0
    flow_count_end: int = 0
    failures: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = np.random.default_rng(args.seed)
        self.flows = 0  # flows sent so far
        self.applies = 0
        self.batches = 0
        self.t0 = time.perf_counter()
        self.next_sample = 0.0
        self.phase = "build"
        self.apply_time = 0.0
        self.lookup_time = 0.0
        self.dropped = 0
        self.samples: list[Sample] = []
        objs = objects(args.services, args.endpoints)
        t = time.perf_counter()
        self.engine = kp.Engine(kp.Cluster.from_objects(objs), flow_capacity=args.cap, **OPTIONS)
        self.build_seconds = time.perf_counter() - t
        del objs
        self.cips = (SERVICE_BASE + 1 + np.arange(args.services)).astype(np.uint32)

    def sample(self, force: bool = False) -> None:
        now = time.perf_counter() - self.t0
        if not force and now < self.next_sample:
            return
        self.next_sample = now + self.args.every
        traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
        mem = self.engine.memory(model=False)
        self.samples.append(Sample(round(now, 3), self.phase, self.flows, self.applies, self.engine.flow_count,
                                   rss(), traced, tracemalloc.get_tracemalloc_memory(), anon_huge(),
                                   mem["blocks"] + mem["retired"]))

    def batch(self, n: int) -> None:
        f = np.arange(self.flows, self.flows + n, dtype=np.int64)
        src = (POD_BASE + f // SPORTS).astype(np.uint32)
        sport = (1024 + f % SPORTS).astype(np.uint16)
        dst = self.cips[self.rng.integers(0, len(self.cips), n)]
        udp = self.rng.random(n) < self.args.udp
        proto = np.where(udp, 17, 6).astype(np.uint8)
        dport = np.where(udp, 53, 80).astype(np.uint16)
        t = time.perf_counter()
        self.engine.lookup_batch(src, dst, dport, proto, sport, now=float(self.batches), track=True)
        self.lookup_time += time.perf_counter() - t
        self.flows += n
        self.batches += 1

    def apply(self) -> None:
        i = int(self.rng.integers(0, self.args.services))
        keep = sorted(self.rng.choice(16, int(self.rng.integers(5, 16)), replace=False).tolist())
        t = time.perf_counter()
        res = self.engine.apply([slice_object(i, keep)])
        self.apply_time += time.perf_counter() - t
        self.dropped += res.flows_dropped
        self.applies += 1

    def run(self, flows: int, applies: int, applies_until: int) -> None:
        """Send ``flows`` more flows; ``applies`` applies spread evenly over those sent
        before ``applies_until`` (a flow count)."""
        end = self.flows + flows
        start = self.flows
        span = max(1, min(end, applies_until) - start)
        done = 0
        while self.flows < end:
            n = min(self.args.batch, end - self.flows)
            self.batch(n)
            due = applies if self.flows >= start + span else applies * (self.flows - start) // span
            while done < due:
                self.apply()
                done += 1
            self.sample()


def snapshot_lines(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, top: int) -> tuple[int, list[str]]:
    filters = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>"),
               tracemalloc.Filter(False, "<unknown>")]
    stats = after.filter_traces(filters).compare_to(before.filter_traces(filters), "lineno")
    total = sum(s.size_diff for s in stats)
    lines = [f"{s.size_diff / 1024:+.1f} KiB ({s.count_diff:+d} blocks) {s.traceback[0].filename}:"
             f"{s.traceback[0].lineno}" for s in sorted(stats, key=lambda s: -abs(s.size_diff))[:top]]
    return total, lines


def soak(args: argparse.Namespace, command: str) -> Report:
    cap_slots = slots(args.cap)
    warm_flows = args.warmup_flows if args.warmup_flows is not None else 5 * cap_slots
    tail = args.tail_flows if args.tail_flows is not None else 4 * cap_slots
    if warm_flows + tail > args.flows:
        raise SystemExit(f"--flows {args.flows} is less than the warm-up ({warm_flows}) and the tail ({tail})")
    rep = Report(command, args.flows, args.applies, warm_flows, args.warmup_applies, args.cap, cap_slots,
                 args.services, args.endpoints, args.batch, args.udp, not args.no_tracemalloc)
    gc.collect()
    rep.rss_start = rss()
    if rep.tracemalloc:
        tracemalloc.start(1)
    s = Soak(args)
    rep.build_seconds = round(s.build_seconds, 3)
    s.sample(force=True)

    s.phase = "warm-up"
    t = time.perf_counter()
    s.run(warm_flows, args.warmup_applies, warm_flows)
    gc.collect()
    rep.phase_seconds["warm-up"] = time.perf_counter() - t
    rep.apply_ms["warm-up"] = 1e3 * s.apply_time / max(1, s.applies)
    snap_path = None
    if rep.tracemalloc:
        fd, snap_path = tempfile.mkstemp(suffix=".tracemalloc")
        os.close(fd)
        tracemalloc.take_snapshot().dump(snap_path)  # on disk: the snapshot is not what is measured
        gc.collect()
        rep.traced_warm = tracemalloc.get_traced_memory()[0]
    rep.rss_warm = rss()
    warm_tm = tracemalloc.get_tracemalloc_memory()
    s.sample(force=True)
    warm_index = len(s.samples) - 1

    s.phase = "steady"
    t = time.perf_counter()
    a0, at0 = s.applies, s.apply_time
    steady = args.flows - warm_flows
    s.run(steady, args.applies, args.flows - tail)
    rep.phase_seconds["steady"] = time.perf_counter() - t
    rep.apply_ms["steady"] = 1e3 * (s.apply_time - at0) / max(1, s.applies - a0)
    gc.collect()
    s.phase = "end"
    s.sample(force=True)
    rep.rss_end = rss()
    if rep.tracemalloc and snap_path is not None:
        after = tracemalloc.take_snapshot()
        rep.traced_end = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        before = tracemalloc.Snapshot.load(snap_path)
        os.unlink(snap_path)
        rep.traced_growth, rep.traced_top = snapshot_lines(before, after, args.top)
        del before, after

    rep.seconds = round(time.perf_counter() - s.t0, 3)
    for k, v in list(rep.phase_seconds.items()):
        rep.phase_seconds[k] = round(v, 3)
    rep.flows_per_second = {"warm-up": round(warm_flows / rep.phase_seconds["warm-up"]),
                            "steady": round(steady / rep.phase_seconds["steady"])}
    rep.apply_ms = {k: round(v, 3) for k, v in rep.apply_ms.items()}
    rep.lookup_flows_per_second = round(s.flows / s.lookup_time)
    rep.flows_dropped = s.dropped
    rep.samples = s.samples
    after_warm = s.samples[warm_index:]
    rep.rss_max_after_warmup = max(x.rss_bytes for x in after_warm)
    # tracemalloc's traces follow the allocations they trace: counted there, not here
    rep.rss_growth = max(x.rss_bytes - x.tracemalloc_bytes for x in after_warm) - (rep.rss_warm - warm_tm)
    rep.rss_allowed = max(int(rep.rss_warm * args.rss_tolerance_pct / 100), int(args.rss_tolerance_mb * 2**20))
    rep.flow_count_min_after_warmup = min(x.flow_count for x in after_warm)
    rep.flow_count_max = max(x.flow_count for x in s.samples)
    rep.flow_count_end = s.samples[-1].flow_count

    if rep.rss_growth > rep.rss_allowed:
        rep.failures.append(f"resident memory grew by {rep.rss_growth / 2**20:.1f} MiB after the warm-up "
                            f"(allowed {rep.rss_allowed / 2**20:.1f} MiB)")
    if rep.tracemalloc and rep.traced_growth > args.traced_tolerance_mb * 2**20:
        rep.failures.append(f"Python allocations grew by {rep.traced_growth / 2**20:.2f} MiB after the warm-up "
                            f"(allowed {args.traced_tolerance_mb} MiB)")
    if rep.flow_count_max > cap_slots:
        rep.failures.append(f"the flow table held {rep.flow_count_max} flows, more than its {cap_slots} slots")
    if rep.flow_count_end != cap_slots:
        rep.failures.append(f"the flow table holds {rep.flow_count_end} flows at the end, not its {cap_slots} slots")
    return rep


def write_outputs(rep: Report, out: Path) -> list[str]:
    """Write ``out``.csv, .json and .png; return notes (the PNG skipped)."""
    notes = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(rep.samples[0])))
        w.writeheader()
        for x in rep.samples:
            w.writerow(asdict(x))
    out.with_suffix(".json").write_text(json.dumps(asdict(rep), indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        notes.append("matplotlib is not installed (pip install 'kproxy-core[plot]'): no PNG written")
        return notes
    fig, ax = plt.subplots(figsize=(9, 4.5))
    flows_m = [x.flows / 1e6 for x in rep.samples]
    ax.plot(flows_m, [x.rss_bytes / 2**20 for x in rep.samples], label="resident memory", color="C0")
    if rep.tracemalloc:
        ax.plot(flows_m, [(x.rss_bytes - x.tracemalloc_bytes) / 2**20 for x in rep.samples],
                label="resident less tracemalloc's own", color="C0", linestyle="--")
        ax.plot(flows_m, [x.traced_bytes / 2**20 for x in rep.samples], label="Python allocations (traced)",
                color="C2")
    ax.axvline(rep.warmup_flows / 1e6, color="grey", linestyle=":", label="end of warm-up")
    ax.set_xlabel("flows sent (millions)")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(flows_m, [x.flow_count / 1e6 for x in rep.samples], color="C1", label="flow table entries")
    ax2.set_ylabel("flow table entries (millions)")
    ax2.set_ylim(0, rep.slots / 1e6 * 1.1)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right", fontsize=8)
    ax.set_title(f"soak: {rep.flows / 1e6:g} M flows, {rep.applies + rep.warmup_applies:,} applies, "
                 f"flow table {rep.slots:,} slots")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    plt.close(fig)
    return notes


def summary(rep: Report) -> str:
    mib = 2**20
    return "\n".join([
        f"`{rep.command}`",
        "",
        f"Machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}; {rep.services:,} Services x 2 ports x {rep.endpoints} endpoints",
        "",
        "| what | value |",
        "|---|---:|",
        f"| flows (each its own 5-tuple) | {rep.flows:,} |",
        f"| applies (warm-up + steady) | {rep.warmup_applies:,} + {rep.applies:,} |",
        f"| UDP flows dropped by applies | {rep.flows_dropped:,} |",
        f"| duration | {rep.seconds:.1f} s (build {rep.build_seconds:.1f} s, warm-up "
        f"{rep.phase_seconds['warm-up']:.1f} s, steady {rep.phase_seconds['steady']:.1f} s) |",
        f"| flows/s, warm-up / steady | {rep.flows_per_second['warm-up'] / 1e6:.2f} M / "
        f"{rep.flows_per_second['steady'] / 1e6:.2f} M |",
        f"| flows/s in lookup_batch alone | {rep.lookup_flows_per_second / 1e6:.2f} M |",
        f"| apply, mean, warm-up / steady | {rep.apply_ms['warm-up']:.2f} ms / {rep.apply_ms['steady']:.2f} ms |",
        f"| resident memory: start / after warm-up / end | {rep.rss_start / mib:.1f} / {rep.rss_warm / mib:.1f} / "
        f"{rep.rss_end / mib:.1f} MiB |",
        f"| resident memory: most after warm-up | {rep.rss_max_after_warmup / mib:.1f} MiB |",
        f"| growth after warm-up (less tracemalloc's own) | {rep.rss_growth / mib:+.2f} MiB "
        f"(allowed {rep.rss_allowed / mib:.1f}) |",
        "| Python allocations traced: warm-up / end / growth | "
        + (f"{rep.traced_warm / mib:.1f} / {rep.traced_end / mib:.1f} MiB / {rep.traced_growth / 1024:+.1f} KiB |"
           if rep.tracemalloc else "not traced |"),
        f"| flow table: slots / fewest after warm-up / most / end | {rep.slots:,} / "
        f"{rep.flow_count_min_after_warmup:,} / {rep.flow_count_max:,} / {rep.flow_count_end:,} |",
        "",
        *(["tracemalloc, warm-up -> end, largest changes by line:", "", "```", *rep.traced_top, "```", ""]
          if rep.tracemalloc else []),
        "failures: " + ("; ".join(rep.failures) if rep.failures else "none"),
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flows", type=int, default=100_000_000)
    ap.add_argument("--applies", type=int, default=10_000, help="in the steady phase")
    ap.add_argument("--cap", type=int, default=1 << 20, help="the engine's flow_capacity")
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--batch", type=int, default=65_536)
    ap.add_argument("--udp", type=float, default=0.1, help="share of UDP flows")
    ap.add_argument("--warmup-flows", type=int, default=None)
    ap.add_argument("--warmup-applies", type=int, default=APPLY_LOG + 404)
    ap.add_argument("--tail-flows", type=int, default=None)
    ap.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    ap.add_argument("--no-tracemalloc", action="store_true")
    ap.add_argument("--top", type=int, default=10, help="tracemalloc lines reported")
    ap.add_argument("--rss-tolerance-pct", type=float, default=5.0)
    ap.add_argument("--rss-tolerance-mb", type=float, default=4.0)
    ap.add_argument("--traced-tolerance-mb", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "soak",
                    help="path stem of the .csv, .json and .png")
    ap.add_argument("--json", action="store_true", help="print the report as JSON (without the samples)")
    args = ap.parse_args(argv)
    if not kp.COMPILED_AVAILABLE:
        print("the compiled core is not built: the twin would take days", file=sys.stderr)
        return 2
    command = "python benchmarks/soak.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rep = soak(args, command.strip())
    notes = write_outputs(rep, args.out)
    for note in notes:
        print(note, file=sys.stderr)
    if args.json:
        d = asdict(rep)
        del d["samples"]
        print(json.dumps(d, indent=1))
    else:
        print(summary(rep))
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Records/s of :func:`kproxy_core.dask.classify` on 1 and 2 dask workers, against one process.

    python benchmarks/dask_scaling.py [--records 10000000] [--partitions 16] [--runs 5]

The data: ``--records`` flows (string addresses, as traffic files have them) from pod
addresses to ``--services`` ClusterIP ports x 10 endpoints, 100,000 distinct 5-tuples, 5% to
no service, written once as ``--partitions`` Parquet files (kept in ``--data``, reused).

What is timed, the same work each way, from the files on disk to the verdict counts:

* one process: each file read with pyarrow, classified by ``flows.classify`` with one engine
  (its flows forgotten between files, as the workers do between partitions), the verdicts
  counted;
* plain processes (as many as the most workers measured), the files shared out between
  them, no dask: what this machine gives two processes at once (memory bandwidth, shared
  caches), the ceiling of any scaling;
* dask: ``kproxy_core.dask.classify(dd.read_parquet(data), cluster)["verdict"]
  .value_counts().compute()`` on N worker processes of one thread each, started by
  ``kproxy_core.dask.connect("local:N")`` (``--dask-defaults``: a plain ``LocalCluster``).
  Each worker reads its own partitions and sends back only its counts. The first run of a
  cluster (workers unpickling the cluster and building their engine) is reported apart
  (its median); the run after it is the rate.

The runs go in rounds, one of each configuration per round (a dask cluster is started for
its turn, warmed by one untimed run, timed once, and closed), so that a load which comes and
goes on a shared machine falls on all of them alike; each row also says how many
CPU-seconds other processes used during its runs (from /proc/stat, less this process and
its workers). Prints a markdown table with the machine and the command.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import kproxy_core as kp
from kproxy_core import bench, flows

SEED = 0


def dotted(a: np.ndarray) -> Any:
    """uint32 addresses as dotted-quad strings (vectorised, in Arrow)."""
    octets = [pc.cast(pa.array((a >> s) & 255), pa.string()) for s in (24, 16, 8, 0)]
    return pc.binary_join_element_wise(*octets, ".")


def make_data(directory: Path, records: int, parts: int, services: int) -> None:
    marker = directory / ".complete"  # dot: not read as Parquet
    if marker.exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    step = -(-records // parts)
    for i in range(parts):
        n = min(step, records - i * step)
        pk = bench.synthetic_packets(services, n, 100_000, seed=1 + i)
        table = pa.table({"src": dotted(pk.src), "sport": pk.sport.astype(np.int32), "dst": dotted(pk.dst),
                          "dport": pk.dport.astype(np.int32),
                          "proto": pa.array(np.where(pk.proto == 6, "TCP", "UDP").astype(object), pa.string())})
        pq.write_table(table, directory / f"part-{i:03d}.parquet")
    marker.write_text("")


def single_process(directory: Path, engine: kp.Engine) -> tuple[float, dict[str, int]]:
    counts: dict[str, int] = {}
    t = time.perf_counter()
    for path in sorted(directory.glob("part-*.parquet")):
        engine.clear_flows()
        out = flows.classify(pq.read_table(path), engine)
        for row in pc.value_counts(out.column("verdict").combine_chunks().dictionary_decode()).to_pylist():
            counts[row["values"]] = counts.get(row["values"], 0) + row["counts"]
    return time.perf_counter() - t, counts


_engine: kp.Engine | None = None


def _start(cluster: kp.Cluster) -> None:
    global _engine
    _engine = kp.Engine(cluster, node=None, seed=SEED)


def _count(paths: list[Path]) -> dict[str, int]:
    assert _engine is not None
    counts: dict[str, int] = {}
    for path in paths:
        _engine.clear_flows()
        out = flows.classify(pq.read_table(path), _engine)
        for row in pc.value_counts(out.column("verdict").combine_chunks().dictionary_decode()).to_pylist():
            counts[row["values"]] = counts.get(row["values"], 0) + row["counts"]
    return counts


def processes_run(pool: Any, directory: Path, n: int) -> tuple[float, dict[str, int]]:
    """The files shared out to ``n`` plain processes (no dask): this machine's own ceiling."""
    paths = sorted(directory.glob("part-*.parquet"))
    t = time.perf_counter()
    parts = list(pool.map(_count, [paths[i::n] for i in range(n)]))
    took = time.perf_counter() - t
    counts: dict[str, int] = {}
    for got in parts:
        for k, v in got.items():
            counts[k] = counts.get(k, 0) + v
    return took, counts


def dask_run(directory: Path, cluster: kp.Cluster) -> tuple[float, dict[str, int]]:
    import dask.dataframe as dd

    from kproxy_core import dask as kd

    t = time.perf_counter()
    ddf = dd.read_parquet(str(directory))
    got = kd.classify(ddf, cluster, seed=SEED, node=None)["verdict"].value_counts(split_out=1).compute()
    took = time.perf_counter() - t
    return took, {str(k): int(v) for k, v in got.items() if v}


class Load:
    """CPU seconds the machine spent (/proc/stat, steal included) and this process with its
    children (the dask workers) spent, so that what others ran during a run shows."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()

    def machine(self) -> float:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system, irq softirq steal
        return busy / os.sysconf("SC_CLK_TCK")

    def ours(self) -> float:
        total = 0.0
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except Exception:  # a process that just ended
                pass
        return total

    def sample(self) -> tuple[float, float]:
        return self.machine(), self.ours()


def timed(load: Load, fn: Any) -> tuple[float, dict[str, int], float]:
    """(seconds, verdict counts, CPU seconds others used meanwhile)."""
    m0, o0 = load.sample()
    took, counts = fn()
    m1, o1 = load.sample()
    return took, counts, max(0.0, (m1 - m0) - (o1 - o0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5, help="rounds: one timed run of each configuration in each")
    ap.add_argument("--workers", default="1,2", help="worker counts to measure, comma-separated")
    ap.add_argument("--data", type=Path, default=None, help="where the Parquet files are kept "
                    "(default: $TMPDIR/kproxy-dask-scaling-<records>-<partitions>)")
    ap.add_argument("--dask-defaults", action="store_true", help="workers as distributed starts them, "
                    "not as kproxy_core.dask.connect does (glibc's malloc thresholds kept)")
    args = ap.parse_args()
    import tempfile

    from distributed import Client, LocalCluster

    from kproxy_core import dask as kd

    data = args.data or Path(tempfile.gettempdir()) / f"kproxy-dask-scaling-{args.records}-{args.partitions}"
    t = time.perf_counter()
    make_data(data, args.records, args.partitions, args.services)
    print(f"data: {data} ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
    cluster = bench.synthetic_cluster(args.services, 10)
    n = args.records
    load = Load()

    # rounds: in each, one run of every configuration, a dask cluster started for its turn
    # and closed after it (an idle cluster's scheduler, nannies and workers take a tenth of a
    # core: kept up, they would weigh on the others' runs); a load that comes and goes (a
    # shared machine) falls on every configuration alike
    counts_of = [int(w) for w in args.workers.split(",")]
    engine = kp.Engine(cluster, node=None, seed=SEED)
    reference = single_process(data, engine)[1]  # and the engine's dictionaries built
    import concurrent.futures
    import multiprocessing

    # the plain processes start before any dask worker: a nanny sets its workers' environment
    # (MALLOC_TRIM_THRESHOLD_) in this process too, and processes started later inherit it
    most = max(counts_of)
    pool = concurrent.futures.ProcessPoolExecutor(most, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_start, initargs=(cluster,))
    results: dict[str, list[tuple[float, float]]] = {"-": [], "p": [], **{str(w): [] for w in counts_of}}
    first: dict[int, list[float]] = {w: [] for w in counts_of}
    try:
        assert processes_run(pool, data, most)[1] == reference  # and their engines built
        for r in range(args.runs):
            took, counts, other = timed(load, lambda: single_process(data, engine))
            assert counts == reference
            results["-"].append((took, other))
            took, counts, other = timed(load, lambda: processes_run(pool, data, most))
            assert counts == reference
            results["p"].append((took, other))
            for workers in counts_of:
                if args.dask_defaults:  # distributed's own worker settings (MALLOC_TRIM_THRESHOLD_=65536)
                    client = Client(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                 dashboard_address=None))
                else:  # as `kproxy classify --dask local:N` starts them
                    client = kd.connect(f"local:{workers}")
                try:
                    took, counts = dask_run(data, cluster)  # the workers build their engines
                    assert counts == reference, (counts, reference)
                    first[workers].append(took)
                    took, counts, other = timed(load, lambda: dask_run(data, cluster))
                    assert counts == reference, (counts, reference)
                    results[str(workers)].append((took, other))
                finally:
                    cl = client.cluster
                    client.close()
                    if args.dask_defaults and cl is not None:
                        cl.close()
            print(f"round {r}: " + ", ".join(f"{k}: {v[-1][0]:.2f} s (others {v[-1][1]:.1f} CPU-s)"
                                             for k, v in results.items()), file=sys.stderr)
    finally:
        pool.shutdown()
    rows: list[tuple[str, str, list[tuple[float, float]], float | None]] = [
        ("one process (`flows.classify`)", "-", results["-"], None)]
    rows.append((f"{most} plain processes, the files shared out (no dask: the machine's ceiling)", "p", results["p"],
                 None))
    for workers in counts_of:
        rows.append((f"`kproxy_core.dask.classify`, {workers} worker{'s' if workers > 1 else ''}", str(workers),
                     results[str(workers)], statistics.median(first[workers])))

    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                   platform.processor())
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import dask

    print(f"Machine: nproc {nproc}, {cpu}, Python {platform.python_version()} (dask {dask.__version__}, "
          f"pyarrow {pa.__version__}); {n:,} records in "
          f"{args.partitions} Parquet files, {args.services:,} services x 10 endpoints, {args.runs} runs each"
          f"{', workers as distributed starts them' if args.dask_defaults else ''}.\n"
          f"Command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`.\n")
    base = next((statistics.median(t for t, _ in r) for _, w, r, _ in rows if w == "1"), None)
    best1 = next((min(t for t, _ in r) for _, w, r, _ in rows if w == "1"), None)
    print("| what | median s | best s | M records/s (median) | M records/s (best) | vs 1 worker (median, best) "
          "| first run s (median) | others' CPU-s per run (median) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, w, runs, start in rows:
        times = [t for t, _ in runs]
        med, top = statistics.median(times), min(times)
        speed = f"{base / med:.2f}x, {best1 / top:.2f}x" if base and best1 and w not in ("-", "p") else ""
        print(f"| {name} | {med:.2f} | {top:.2f} | {n / med / 1e6:.2f} | {n / top / 1e6:.2f} | {speed} | "
              f"{'' if start is None else f'{start:.2f}'} | {statistics.median(o for _, o in runs):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

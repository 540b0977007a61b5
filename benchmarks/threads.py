"""Packets/s of ``Engine.lookup_batch`` on 1 and 2 threads: what releasing the GIL buys.

    python benchmarks/threads.py [--services 10000] [--batch 65536] [--seconds 3] [--rounds 3]

The workload is ``kproxy_core.bench``'s: ``--services`` ClusterIP ports x 10 endpoints,
packets from pod addresses, 5% to no service. Each thread loops over its own
``--batch``-packet batch (stateless: every batch the same packets, ``track=False``;
tracked: packets drawn from 100,000 distinct 5-tuples per thread, all held by the flow
table) for ``--seconds``; the rate is all threads' packets over the wall time. Three ways:

* ``1 thread``: one engine, one thread;
* ``2 threads, one engine``: the case in question, two threads sharing one ``Engine``;
* ``2 threads, 2 engines``: one engine per thread, nothing shared but the process. What
  this machine gives two threads that never wait for each other (memory bandwidth, shared
  caches): the ceiling of the case above.

Each row also gives the process's CPU-seconds per wall second while it ran (from
``os.times``): about 1.0 means the two threads took turns, about 2.0 that they ran at once.
The configurations go in rounds (one of each per round, so that load from other processes
falls on all of them alike); the table shows the median of the rounds. Prints a markdown
table, the machine and the command.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import kproxy_core as kp
from kproxy_core import bench

OPTIONS: dict[str, Any] = {"node": "node-0", "cluster_cidr": "100.64.0.0/10", "seed": 7}
FLOWS = 100_000  # distinct 5-tuples per thread on the tracked path


def run_threads(work: list[Callable[[], int]], seconds: float) -> tuple[float, float]:
    """Run each ``work`` (one batch, returns its packet count) in its own thread, in a loop,
    all started together, for ``seconds``. Returns (packets/s, CPU-seconds per second)."""
    counts = [0] * len(work)
    start = threading.Barrier(len(work) + 1)
    stop = threading.Event()

    def loop(i: int) -> None:
        fn = work[i]
        start.wait()
        n = 0
        while not stop.is_set():
            n += fn()
        counts[i] = n

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(len(work))]
    for t in threads:
        t.start()
    cpu0 = os.times()
    t0 = time.perf_counter()
    start.wait()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
        if t.is_alive():
            raise RuntimeError("a benchmark thread did not stop within 60 s")
    wall = time.perf_counter() - t0
    cpu1 = os.times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return sum(counts) / wall, cpu / wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=65_536)
    ap.add_argument("--seconds", type=float, default=3.0, help="per configuration and round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    if not kp.COMPILED_AVAILABLE:
        print("the compiled core is not built: nothing to measure (the twin holds the GIL)", file=sys.stderr)
        return 2

    print(f"kproxy_core from {os.path.dirname(kp.__file__)}", file=sys.stderr)
    cluster = bench.synthetic_cluster(args.services, 10)
    engines = [kp.Engine(cluster, flow_capacity=4 * FLOWS * 2, **OPTIONS) for _ in range(2)]
    packets = {
        "stateless": [bench.synthetic_packets(args.services, args.batch, None, seed=10 + i) for i in range(2)],
        "tracked": [bench.synthetic_packets(args.services, args.batch, FLOWS, seed=20 + i) for i in range(2)],
    }

    def batch(engine: kp.Engine, p: bench.Packets, track: bool) -> Callable[[], int]:
        def run() -> int:
            engine.lookup_batch(p.src, p.dst, p.dport, p.proto, p.sport, now=1000.0, track=track)
            return len(p.src)
        return run

    configs: dict[tuple[str, str], list[Callable[[], int]]] = {}
    for mode, pk in packets.items():
        track = mode == "tracked"
        for e in engines:  # warm: the flows in, the pages touched
            for p in pk:
                batch(e, p, track)()
        configs[(mode, "1 thread")] = [batch(engines[0], pk[0], track)]
        configs[(mode, "2 threads, one engine")] = [batch(engines[0], p, track) for p in pk]
        configs[(mode, "2 threads, 2 engines")] = [batch(e, p, track) for e, p in zip(engines, pk, strict=True)]

    results: dict[tuple[str, str], list[tuple[float, float]]] = {k: [] for k in configs}
    for r in range(args.rounds):
        for key, work in configs.items():
            results[key].append(run_threads(work, args.seconds))
            rate, cpu = results[key][-1]
            print(f"round {r + 1}: {key[0]:9} {key[1]:22} {rate / 1e6:7.2f} M packets/s  cpu {cpu:.2f}",
                  file=sys.stderr)

    print(f"`python benchmarks/threads.py {' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip()
          .replace(" `", "`"))
    print()
    print(f"Machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}; {args.services:,} ClusterIP ports x 10 endpoints, "
          f"batches of {args.batch:,} packets, median of {args.rounds} rounds of {args.seconds:g} s")
    print()
    print("| path | threads | M packets/s | vs 1 thread | CPU-s per s |")
    print("|---|---|---:|---:|---:|")
    for mode in packets:
        one = statistics.median(x[0] for x in results[(mode, "1 thread")])
        for how in ("1 thread", "2 threads, one engine", "2 threads, 2 engines"):
            rates = [x[0] for x in results[(mode, how)]]
            cpus = [x[1] for x in results[(mode, how)]]
            med = statistics.median(rates)
            print(f"| {mode} | {how} | {med / 1e6:.2f} | {med / one:.2f}x | {statistics.median(cpus):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput and latency of ``kproxy dns serve`` measured with dnsperf, on loopback.

Writes a generated cluster (``--services`` Services in 4 namespaces, ``--headless`` of them
headless with ``--endpoints`` ready endpoints each: benchmarks/dns_load.py's generator) and a
dnsperf query file of ``--queries`` questions in dns_load.py's mix (50 % A of ClusterIP Services,
10 % A of headless ones, 15 % SRV, 10 % PTR of ClusterIPs, 15 % names that do not exist, each
missing name a new one unless ``--missing-pool``), starts
``kproxy dns serve`` pinned to one core (``taskset -c 0``), and runs dnsperf pinned to another
(``taskset -c 1``) for ``--seconds``, with ``--outstanding`` queries in flight and, with
``--rate``, at most that many queries a second. dnsperf's summary is parsed (sent, completed, lost,
queries/s, latency average and deviation); with ``--percentiles`` dnsperf also prints every query's
latency (``-v``; dnsperf 2.10 has no histogram option) and p50/p90/p99/max come from those.
The server's CPU time over the run is read from /proc. A fresh server renders each distinct
question once (~40 us) before it answers it from memory: ``--warmup`` first sends every question
of the file once (``dnsperf -n 1``, not measured), so that the run shows the steady state.

    python benchmarks/dns_perf.py --services 10000                  # one run, cache at its default
    python benchmarks/dns_perf.py --services 10000 --cache 0 --json
    python benchmarks/dns_perf.py --report                          # the table of /tmp/dns_results.md

``--report`` runs the set: 10,000 Services from a fresh server (cold), then warmed: 1,000 and
10,000 Services with the default cache and ``--cache 0``, a burst of 500 outstanding queries, and
a run at 80 % of the measured rate for latency.
Every loop is bounded: dnsperf by ``-l``, the server's start by ``--startup``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dns_load import manifests, questions

DNSPERF = "dnsperf"


@dataclass
class Run:
    services: int
    headless: int
    cache: int | None
    outstanding: int
    rate: int | None
    seconds: float
    distinct: int = 0
    sent: int = 0
    completed: int = 0
    lost: int = 0
    qps: float = 0.0
    latency_avg_ms: float = 0.0
    latency_stddev_ms: float = 0.0
    latency_max_ms: float = 0.0
    percentiles_ms: dict[str, float] = field(default_factory=dict)
    rcodes: dict[str, int] = field(default_factory=dict)
    server_cpu: float = 0.0  # the server's CPU seconds over the run / the run's seconds
    workers: int = 1
    warmup: bool = False
    server_args: str = ""
    server_drops: int = 0  # datagrams the server's socket(s) dropped (/proc/net/udp), over the whole life

    @property
    def lost_pct(self) -> float:
        return 100.0 * self.lost / self.sent if self.sent else 0.0


def write_cluster(directory: Path, services: int, headless: int, endpoints: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cluster.yaml").write_text(yaml.safe_dump_all(manifests(services, headless, endpoints)))


def write_queries(path: Path, services: int, headless: int, count: int, seed: int, unique_missing: bool = True) -> int:
    """The dnsperf data file; returns how many distinct questions it holds. ``unique_missing``:
    every missing name is another (``nope-<line>.<ns>.svc.cluster.local``), as search-path
    expansions and random names are; else dns_load.py's pool of one per Service."""
    lines = []
    for n, q in enumerate(questions(services, headless, count, seed)):
        name = q.name
        if unique_missing and q.kind == "NXDOMAIN":
            name = f"nope-{n}.{name.split('.', 2)[1]}.svc.cluster.local."
        lines.append((name, q.rtype))
    path.write_text("".join(f"{name} {rtype}\n" for name, rtype in lines))
    return len({(name.lower(), rtype) for name, rtype in lines})


def start_server(directory: Path, cache: int | None, cpus: str | None, startup: float, log: Path,
                 workers: int = 1, extra: Sequence[str] = ()) -> tuple[subprocess.Popen[bytes], int]:
    cmd = [sys.executable, "-m", "kproxy_core", "dns", "serve", "-f", str(directory), "--listen", "127.0.0.1:0",
           *extra]
    if cache is not None:
        cmd += ["--cache", str(cache)]
    if workers != 1:
        cmd += ["--workers", str(workers)]
    if cpus and shutil.which("taskset"):
        cmd = ["taskset", "-c", cpus, *cmd]
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + startup
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text().splitlines():
            if line.startswith("kproxy dns: serving ") and " on udp+tcp " in line:
                return proc, int(line.rsplit(":", 1)[1])
        time.sleep(0.05)
    stop_server(proc)
    raise RuntimeError(f"the server did not start within {startup:g} s: {log.read_text().strip()}")


def stop_server(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its threads, and of its children (the workers)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def server_pid(proc: subprocess.Popen[bytes]) -> int:
    """The Python process under ``taskset`` (taskset execs it, so the same pid)."""
    return proc.pid


def socket_drops(port: int) -> int:
    """The drops counter of every UDP socket bound to ``port`` (the server's, all workers')."""
    total = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    total += int(fields[-1])
    return total


def run_dnsperf(port: int, data: Path, seconds: float, outstanding: int, rate: int | None, cpus: str | None,
                verbose: bool, once: bool = False, buffer_kb: int = 0) -> tuple[str, list[float]]:
    """dnsperf for ``seconds`` (or, ``once``, through the file once, at most ``seconds``)."""
    if shutil.which(DNSPERF) is None:
        raise RuntimeError("dnsperf is not installed (apt-get install dnsperf)")
    cmd = [DNSPERF, "-s", "127.0.0.1", "-p", str(port), "-d", str(data), "-l", f"{seconds:g}",
           "-q", str(outstanding), "-t", "2", *(["-n", "1"] if once else [])]
    if buffer_kb:
        cmd += ["-b", str(buffer_kb)]
    if rate:
        cmd += ["-Q", str(rate)]
    if verbose:
        cmd.append("-v")
    if cpus and shutil.which("taskset"):
        cmd = ["taskset", "-c", cpus, *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        raise RuntimeError(f"dnsperf exited {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
    latencies = []
    if verbose:
        for line in r.stdout.splitlines():
            if line.startswith("> "):
                with contextlib.suppress(ValueError, IndexError):
                    latencies.append(float(line.rsplit(" ", 1)[1]))
    return r.stdout, latencies


_NUM = r"([0-9.]+)"


def parse_dnsperf(text: str, run: Run) -> None:
    def grab(pattern: str) -> re.Match[str]:
        m = re.search(pattern, text)
        if m is None:
            raise RuntimeError(f"dnsperf's output has no {pattern!r}:\n{text[-2000:]}")
        return m

    run.sent = int(grab(r"Queries sent:\s+(\d+)").group(1))
    run.completed = int(grab(r"Queries completed:\s+(\d+)").group(1))
    run.lost = int(grab(r"Queries lost:\s+(\d+)").group(1))
    run.qps = float(grab(r"Queries per second:\s+" + _NUM).group(1))
    m = grab(r"Average Latency \(s\):\s+" + _NUM + r" \(min " + _NUM + r", max " + _NUM + r"\)")
    run.latency_avg_ms, run.latency_max_ms = float(m.group(1)) * 1e3, float(m.group(3)) * 1e3
    run.latency_stddev_ms = float(grab(r"Latency StdDev \(s\):\s+" + _NUM).group(1)) * 1e3
    codes = re.search(r"Response codes:\s+(.*)", text)
    if codes:
        run.rcodes = {k: int(v) for k, v in re.findall(r"([A-Z]+) (\d+) \(", codes.group(1))}


def percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {}
    s = sorted(latencies)

    def at(p: float) -> float:  # nearest rank
        return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))] * 1e3

    return {"p50": at(50), "p90": at(90), "p99": at(99), "p99.9": at(99.9), "max": s[-1] * 1e3}


def measure(args: argparse.Namespace, services: int, cache: int | None, outstanding: int, rate: int | None,
            seconds: float, verbose: bool, tmp: Path, warmup: bool = False, server_args: str = "") -> Run:
    headless = args.headless if args.headless is not None else services // 10
    run = Run(services, headless, cache, outstanding, rate, seconds, workers=args.workers, warmup=warmup,
              server_args=server_args)
    cluster = tmp / f"cluster-{services}"
    if not cluster.exists():
        write_cluster(cluster, services, headless, args.endpoints)
    data = tmp / f"queries-{services}.txt"
    run.distinct = write_queries(data, services, headless, args.queries, args.seed, not args.missing_pool)
    proc, port = start_server(cluster, cache, args.server_cpus, args.startup, tmp / "server-stderr.txt", args.workers,
                              shlex.split(server_args))
    try:
        if warmup:
            run_dnsperf(port, data, 300, 100, None, args.client_cpus, False, once=True)
        before, t0 = cpu_seconds(server_pid(proc)), time.monotonic()
        text, latencies = run_dnsperf(port, data, seconds, outstanding, rate, args.client_cpus, verbose,
                                      buffer_kb=args.client_buffer)
        run.server_cpu = (cpu_seconds(server_pid(proc)) - before) / (time.monotonic() - t0)
        run.server_drops = socket_drops(port)
    finally:
        code = stop_server(proc)
    if code != 0:
        raise RuntimeError(f"the server exited {code}: {(tmp / 'server-stderr.txt').read_text()[-2000:]}")
    parse_dnsperf(text, run)
    run.percentiles_ms = percentiles(latencies)
    return run


def describe(run: Run) -> str:
    cache = "default" if run.cache is None else str(run.cache)
    rate = f", at most {run.rate} q/s" if run.rate else ""
    warm = ", warmed" if run.warmup else ", fresh server"
    line = (f"{run.services} services ({run.distinct} distinct questions{warm}), cache {cache}, {run.outstanding} "
            f"outstanding{rate}: {run.qps:,.0f} q/s, sent {run.sent}, completed {run.completed}, lost {run.lost} "
            f"({run.lost_pct:.3f} %); latency avg {run.latency_avg_ms:.3f} ms sd {run.latency_stddev_ms:.3f} "
            f"max {run.latency_max_ms:.1f}; server CPU {run.server_cpu:.2f} cores, its socket dropped "
            f"{run.server_drops}")
    if run.percentiles_ms:
        line += "; " + " ".join(f"{k} {v:.3f}" for k, v in run.percentiles_ms.items()) + " ms"
    return line


def table(runs: list[tuple[str, Run]]) -> str:
    out = ["| run | q/s | sent | lost (server socket drops) | latency avg / sd ms | p50 / p99 / p99.9 ms "
           "| server CPU |", "|---|---|---|---|---|---|---|"]
    for name, r in runs:
        p = r.percentiles_ms
        pct = f"{p['p50']:.2f} / {p['p99']:.2f} / {p['p99.9']:.2f}" if p else "-"
        out.append(f"| {name} | {r.qps:,.0f} | {r.sent:,} | {r.lost} ({r.lost_pct:.3f} %) ({r.server_drops}) | "
                   f"{r.latency_avg_ms:.2f} / {r.latency_stddev_ms:.2f} | {pct} | {r.server_cpu:.2f} |")
    return "\n".join(out)


def report(args: argparse.Namespace, tmp: Path) -> list[tuple[str, Run]]:
    runs: list[tuple[str, Run]] = []

    def go(name: str, **kw: Any) -> Run:
        params: dict[str, Any] = {"services": 10000, "cache": None, "outstanding": args.outstanding, "rate": None,
                                  "seconds": args.seconds, "verbose": False, "warmup": True}
        params.update(kw)
        r = measure(args, tmp=tmp, **params)
        runs.append((name, r))
        print(f"{name}: {describe(r)}", file=sys.stderr, flush=True)
        return r

    go("10,000 Services, fresh server (cold)", services=10000, warmup=False)
    go("1,000 Services", services=1000)
    go("1,000 Services, --cache 0", services=1000, cache=0)
    full = go("10,000 Services", services=10000)
    go("10,000 Services, --cache 0", services=10000, cache=0)
    go("10,000 Services, 500 outstanding (-q 500)", services=10000, outstanding=500)
    go("10,000 Services, 500 outstanding, the kernel's default buffer (--udp-buffer 0)", services=10000,
       outstanding=500, server_args="--udp-buffer 0")
    rate = int(full.qps * 0.8)
    go(f"10,000 Services at 80 % ({rate:,} q/s, -Q), latency per query (-v)", services=10000, rate=rate,
       verbose=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--services", type=int, default=10000, help="Services in the cluster (default 10000)")
    p.add_argument("--headless", type=int, default=None, help="how many are headless (default a tenth)")
    p.add_argument("--endpoints", type=int, default=10, help="ready endpoints per headless Service (default 10)")
    p.add_argument("--queries", type=int, default=100000, help="questions in the dnsperf file (default 100000)")
    p.add_argument("--missing-pool", action="store_true",
                   help="missing names from dns_load.py's pool of one per Service (default: each line its own, "
                        "so no cache holds them)")
    p.add_argument("--seconds", type=float, default=20.0, help="dnsperf -l: the run's length (default 20)")
    p.add_argument("--outstanding", type=int, default=100, help="dnsperf -q: queries in flight (default 100)")
    p.add_argument("--rate", type=int, default=None, help="dnsperf -Q: at most this many queries a second")
    p.add_argument("--cache", type=int, default=None, metavar="N", help="the server's --cache (default its default)")
    p.add_argument("--workers", type=int, default=1, help="the server's --workers (default 1)")
    p.add_argument("--server-args", default="", metavar="ARGS", help="more options for the server, e.g. "
                   "'--udp-buffer 0'")
    p.add_argument("--warmup", action="store_true",
                   help="send every question once before the measured run (the steady state)")
    p.add_argument("--percentiles", action="store_true",
                   help="latency percentiles from every query's latency (dnsperf -v)")
    p.add_argument("--client-buffer", type=int, default=4096, metavar="KB",
                   help="dnsperf -b: its socket buffers in KB (default 4096; 0: dnsperf's own). With dnsperf's "
                        "default, a burst of 500 drops responses at the client's socket, not the server's")
    p.add_argument("--server-cpus", default="0", help="taskset -c for the server (default 0; '' for none)")
    p.add_argument("--client-cpus", default="1", help="taskset -c for dnsperf (default 1; '' for none)")
    p.add_argument("--startup", type=float, default=120.0, help="seconds the server may take to load (default 120)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--report", action="store_true", help="run the standard set and print a markdown table")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    if not (args.services > 0 and args.endpoints > 0 and args.queries > 0 and args.seconds > 0
            and args.outstanding > 0 and args.workers > 0):
        p.error("sizes, counts and times must be positive")
    with tempfile.TemporaryDirectory(prefix="kproxy-dns-perf-") as name:
        tmp = Path(name)
        if args.report:
            runs = report(args, tmp)
            if args.json:
                print(json.dumps([{"run": n, **asdict(r)} for n, r in runs], indent=2))
            else:
                print(table(runs))
            return 0
        r = measure(args, args.services, args.cache, args.outstanding, args.rate, args.seconds, args.percentiles,
                    tmp, args.warmup, args.server_args)
    if args.json:
        print(json.dumps({**asdict(r), "lost_pct": r.lost_pct}, indent=2))
    else:
        print(describe(r))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

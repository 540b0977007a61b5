"""``kproxy dns serve`` under dnsperf for a few seconds: a floor low enough for any machine that
runs the suite (the figures are in benchmarks/RESULTS.md), so that a regression in the fast path
or the UDP loop shows. dnsperf missing fails the test: CI must install it (apt-get install dnsperf).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_dns_server import SERVE, Served

ROOT = Path(__file__).resolve().parent.parent
PERF_SCRIPT = ROOT / "benchmarks" / "dns_perf.py"
FLOOR_QPS = 5000

pytestmark = pytest.mark.slow


def need_dnsperf() -> str:
    path = shutil.which("dnsperf")
    if path is None:
        pytest.fail("dnsperf is not installed: apt-get install dnsperf (the DNS load tests need it)")
    return path


def perf(*args: str, timeout: float = 180) -> dict[str, Any]:
    # its own session, so that a timeout kills the script and the server it started
    proc = subprocess.Popen([sys.executable, str(PERF_SCRIPT), "--json", "--server-cpus", "", "--client-cpus", "",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            cwd=PERF_SCRIPT.parent.parent / "tests")  # not the root: the installed package
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stdout + stderr
    out: dict[str, Any] = json.loads(stdout)
    return out


def cpu_ticks(pid: int) -> int:
    return sum(int(x) for x in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13])


@pytest.mark.parametrize("cache", [None, 0], ids=["cache-default", "cache-0"])
def test_dnsperf_floor(cache: int | None) -> None:
    need_dnsperf()
    extra = [] if cache is None else ["--cache", str(cache)]
    out = perf("--services", "500", "--headless", "50", "--endpoints", "6", "--queries", "20000", "--seconds", "3",
               "--outstanding", "200", *extra)
    assert out["sent"] > 0 and out["lost"] == 0, out
    assert out["completed"] == out["sent"]
    assert out["qps"] >= FLOOR_QPS, out
    rcodes = out["rcodes"]
    assert rcodes.get("NOERROR", 0) > 0 and rcodes.get("NXDOMAIN", 0) > 0 and set(rcodes) <= {"NOERROR", "NXDOMAIN"}


def test_dnsperf_latency_percentiles() -> None:
    need_dnsperf()
    out = perf("--services", "200", "--queries", "5000", "--seconds", "2", "--rate", "2000", "--percentiles")
    p = out["percentiles_ms"]
    assert out["lost"] == 0 and 0 < p["p50"] <= p["p90"] <= p["p99"] <= p["max"]
    assert p["p99"] < 50, p  # 2,000 q/s is far below what one core answers


def test_workers_share_the_port(tmp_path: Path) -> None:
    dnsperf = need_dnsperf()
    served = Served([*SERVE, "-f", str(ROOT / "examples" / "mynginx.yaml"), "--listen", "127.0.0.1:0", "--workers",
                     "2"], tmp_path / "stderr.txt")
    try:
        children = [int(p) for p in Path(f"/proc/{served.proc.pid}/task/{served.proc.pid}/children").read_text()
                    .split()]
        assert len(children) == 2
        data = tmp_path / "q.txt"
        data.write_text("mynginx.default.svc.cluster.local A\nnope.default.svc.cluster.local A\n")
        before = [cpu_ticks(pid) for pid in children]
        # several clients (source ports): the kernel spreads them over the workers by their addresses
        r = subprocess.run([dnsperf, "-s", "127.0.0.1", "-p", str(served.port), "-d", str(data), "-l", "2", "-c",
                            "16", "-t", "2"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Queries lost:         0 " in r.stdout, r.stdout
        busy = [cpu_ticks(pid) - t for pid, t in zip(children, before, strict=True)]
        assert all(ticks >= 5 for ticks in busy), busy  # each worker answered for at least 50 ms of CPU
    finally:
        code = served.stop()
    assert code == 0, served.log.read_text()
    time.sleep(0.2)
    assert all(not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
               for pid in children)

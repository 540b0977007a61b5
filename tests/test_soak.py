"""A short run of benchmarks/soak.py (2 M flows, 200 applies after the warm-up): resident
memory and Python allocations flat after the warm-up, the flow table at its slots and never
past them. The full run (100 M flows, 10,000 applies) is the script's default; its figures
are in benchmarks/RESULTS.md."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import kproxy_core as kp

SOAK = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"
CAP = 1 << 16


def test_short_soak_is_flat(tmp_path: Path) -> None:
    if not kp.COMPILED_AVAILABLE:
        pytest.fail("the compiled core is not built")
    out = tmp_path / "soak"
    # batches of 16k: a leak per batch shows over 120 batches; one per apply over 200 applies
    cmd = [sys.executable, str(SOAK), "--flows", "2000000", "--applies", "200", "--warmup-applies", "300",
           "--cap", str(CAP), "--services", "1000", "--batch", "16384", "--every", "0.2",
           "--out", str(out), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    rep = json.loads(stdout) if stdout.strip().startswith("{") else None
    assert proc.returncode == 0 and rep is not None, stdout + stderr
    assert rep["failures"] == []
    assert rep["slots"] == CAP
    assert rep["flow_count_max"] <= CAP and rep["flow_count_end"] == CAP
    assert rep["rss_growth"] <= rep["rss_allowed"]
    assert rep["tracemalloc"] and rep["traced_growth"] < 1 << 20
    assert rep["flows_dropped"] > 0  # the applies dropped UDP flows: the cleanup ran too
    samples = json.loads(out.with_suffix(".json").read_text())["samples"]
    assert len(samples) >= 5 and samples[-1]["flows"] == 2_000_000
    assert out.with_suffix(".csv").read_text().count("\n") == len(samples) + 1
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in stderr
    else:
        assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

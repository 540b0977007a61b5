"""``kproxy bench --sweep`` and the roofline: rows, JSON, the plot, bad input, and the C
reference loop choosing exactly the engine's endpoints.

The roofline's equality with the engine is self-agreement (both are ours); what makes it
meaningful is that the loop is written from the documented hash and pick alone, not from
the engine's C.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cli_run
import numpy as np
import pytest

import kproxy_core as kp
from kproxy_core import bench, roofline, sweep
from kproxy_core.bench import synthetic_cluster, synthetic_objects, synthetic_packets
from kproxy_core.cli import main

TINY = ["bench", "--sweep", "100,300", "--endpoints", "3", "--packets", "20000", "--min-time", "0.01",
        "--reps", "20"]


@pytest.fixture(scope="module")
def roofline_lib(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The roofline compiled into a temporary cache (not the user's ~/.cache), or a skip."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(roofline, "_lib", None)
        try:
            roofline.load()
        except roofline.RooflineUnavailable as e:
            pytest.skip(f"no roofline on this machine: {e}")
        yield


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# --------------------------------------------------------------------------- the CLI


def test_sweep_prints_one_row_per_size(capsys: pytest.CaptureFixture[str], roofline_lib: None) -> None:
    rc, out, err = _run(capsys, *TINY)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ports", "build", "s"]
    rows = [line.split() for line in lines[1:3]]
    assert [r[0] for r in rows] == ["100", "300"]
    for r in rows:
        assert len(r) == len(sweep.COLUMNS)
        assert r[-1] != "—"  # the twin runs at these sizes
        assert r[9] != "—" and 0 < float(r[10]) < 5  # roofline M/s and the ratio
    assert lines[3].startswith("3 endpoints per service port; 20,000 packets")
    assert len(lines) == 4  # no "roofline unavailable" line
    assert err == ""  # no progress line when stderr is not a terminal


def test_sweep_json(capsys: pytest.CaptureFixture[str], roofline_lib: None) -> None:
    rc, out, err = _run(capsys, *TINY, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["roofline_unavailable"] is None
    rows = doc["rows"]
    assert [r["service_ports"] for r in rows] == [100, 300]
    for r in rows:
        assert r["endpoints"] == 3 and r["packets"] == 20_000 and r["flows"] == 20_000
        assert r["apply_n"] == 20 and r["trace_n"] == 20
        assert 0 < r["apply_us_p50"] <= r["apply_us_p99"]
        for key in ("build_s", "build_dicts_s", "json_s", "trace_us", "stateless_mps", "tracked_mps",
                    "roofline_mps", "numpy_mps", "twin_mps"):
            assert r[key] > 0, key
        assert r["bytes_source"] in ("rss", "engine.memory()")
        # 5% of the packets go to no service and make no flow
        assert 0.9 * 20_000 < r["tracked_flows_held"] <= 20_000
        assert r["engine_vs_roofline"] == pytest.approx(r["stateless_mps"] / r["roofline_mps"])


def test_sweep_progress_on_a_terminal(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                      roofline_lib: None) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    rc = main(["bench", "--sweep", "50", "--endpoints", "2", "--packets", "5000", "--min-time", "0.01",
               "--reps", "5"])
    assert rc == 0
    text = err.getvalue()
    assert "\r" in text and "50 service ports: build..." in text and "50 service ports: apply..." in text
    assert text.endswith("\r")  # the line is wiped before the row is printed
    assert capsys.readouterr().out.splitlines()[1].split()[0] == "50"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sweep", "10,abc"], "--sweep: 'abc' is not a whole number of service ports"),
        (["--sweep", "0"], "--sweep: 0 service ports: must be at least 1"),
        (["--sweep", "100,-5"], "--sweep: -5 service ports: must be at least 1"),
        (["--sweep", ""], "--sweep: '' is not a whole number of service ports"),
        (["--sweep", "100", "--services", "100"], "--services: the sweep sets the sizes; give one or the other"),
        (["--sweep", "100", "--reps", "0"], "--reps: must be at least 1"),
        (["--sweep", "100", "--selector", "maglev"],
         "--selector: the sweep (and its roofline) measures kube-proxy's random choice only"),
        (["--sweep", "100000000", "--endpoints", "10"],
         "--sweep: 100000000 service ports × 10 endpoints: more than 67108864 endpoints in all"),
        (["--plot", "x.png"], "--plot: draws a sweep; give --sweep N1,N2,..."),
    ],
)
def test_sweep_bad_input(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    rc, out, err = _run(capsys, "bench", *argv)
    assert rc == 2
    assert err == f"kproxy: error: {message}\n"
    assert out == ""


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="the memory check reads /proc/meminfo (Linux)")
def test_sweep_too_big_for_memory(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "bench", "--sweep", "60000000", "--endpoints", "1")
    assert rc == 2
    assert err.startswith("kproxy: error: --sweep: 60000000 service ports × 1 endpoints need about ")
    assert err.count("\n") == 1 and "available" in err


def test_sizes_before_the_one_that_does_not_fit_are_kept(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def check(services: int, endpoints: int, measured: Any = (), twin: bool = False) -> None:
        if services > 100:
            raise sweep.SweepMemoryError(f"{services} service ports × {endpoints} endpoints need about 1.0 GiB")

    monkeypatch.setattr(sweep, "check_memory", check)
    rc, out, err = _run(capsys, "bench", "--sweep", "50,200", "--endpoints", "2", "--packets", "2000",
                        "--min-time", "0.01", "--reps", "3", "--json")
    assert rc == 2
    assert err == "kproxy: error: --sweep: 200 service ports × 2 endpoints need about 1.0 GiB\n"
    assert [r["service_ports"] for r in json.loads(out)["rows"]] == [50]


def test_memory_error_while_measuring_is_one_line(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kw: Any) -> sweep.SweepRow:
        raise MemoryError()

    monkeypatch.setattr(sweep, "run_size", boom)
    monkeypatch.setattr(sweep, "check_memory", lambda *a, **k: None)
    rc, _, err = _run(capsys, "bench", "--sweep", "100")
    assert rc == 2
    assert err == "kproxy: error: --sweep: 100 service ports × 10 endpoints: out of memory\n"


def test_sweep_without_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    """No C compiler: the roofline column is empty, with the reason, and nothing fails."""
    monkeypatch.setattr(roofline, "_lib", None)
    monkeypatch.setattr(roofline, "compiler", lambda: None)
    notes: dict[str, str] = {}
    row = sweep.run_size(50, 2, 5000, min_time=0.01, apply_reps=3, trace_reps=3, notes=notes)
    assert row.roofline_mps is None and row.engine_vs_roofline is None
    assert notes["roofline"] == "no C compiler found (set CC, or install cc/gcc/clang)"
    assert sweep.format_row(row).split()[9:11] == ["—", "—"]
    assert sweep.footer([row], notes)[-1] == f"roofline unavailable: {notes['roofline']}"


def test_compiler_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(roofline.RooflineUnavailable, match=r"^false failed: exit status 1$"):
        roofline.build(["false"])
    assert not list((tmp_path / "kproxy-core").glob("roofline-*"))  # nothing half-built left


# --------------------------------------------------------------------------- --plot


def test_plot_writes_a_png(capsys: pytest.CaptureFixture[str], tmp_path: Path, roofline_lib: None) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (pip install 'kproxy-core[plot]')")
    png = tmp_path / "sweep.png"
    rc, out, err = _run(capsys, *TINY, "--plot", str(png))
    assert rc == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.splitlines()[-1] == f"plot: {png}"


def test_plot_without_matplotlib(tmp_path: Path) -> None:
    """A matplotlib that fails to import (as when it is not installed): the one-line error, exit
    2, before any measuring."""
    fake = tmp_path / "hide" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(fake.parent), env.get("PYTHONPATH")]))
    png = tmp_path / "sweep.png"
    r = cli_run.kproxy("bench", "--sweep", "100", "--plot", str(png), env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr == "kproxy: error: --plot needs matplotlib: pip install 'kproxy-core[plot]'\n"
    assert r.stdout == "" and not png.exists()


# --------------------------------------------------------------------------- the roofline


@pytest.mark.parametrize("endpoints", [1, 3, 10])
def test_roofline_chooses_the_engines_endpoints(impl: str, endpoints: int, roofline_lib: None) -> None:
    cluster = synthetic_cluster(300, endpoints)
    engine = kp.Engine(cluster, node="node-0", cluster_cidr="100.64.0.0/10", seed=99, impl=impl)
    p = synthetic_packets(300, 50_000 if impl == "compiled" else 5_000, seed=3)
    out = engine.lookup_batch(p.src, p.dst, p.dport, p.proto, p.sport, track=False)
    with roofline.Roofline(engine) as rl:
        ip, port, hits = rl.run(p.src, p.dst, p.sport, p.dport, p.proto)
    dnat = out["verdict"] == 1
    assert set(np.unique(out["verdict"]).tolist()) == {0, 1}  # hits DNAT, misses PASS
    assert hits == int(dnat.sum()) > 0
    assert np.array_equal(ip[dnat], out["ep_ip"][dnat])
    assert np.array_equal(port[dnat], out["ep_port"][dnat])
    assert not ip[~dnat].any() and not port[~dnat].any()


def test_roofline_follows_the_seed(roofline_lib: None) -> None:
    cluster = synthetic_cluster(100, 10)
    p = synthetic_packets(100, 2_000, seed=5)
    picks = []
    for seed in (1, 2):
        engine = kp.Engine(cluster, node="node-0", cluster_cidr="100.64.0.0/10", seed=seed)
        with roofline.Roofline(engine) as rl:
            picks.append(rl.run(p.src, p.dst, p.sport, p.dport, p.proto)[0])
    assert not np.array_equal(picks[0], picks[1])


@pytest.mark.parametrize("n", [0, 1, 5, 31, 32, 33, 100])
def test_roofline_short_batches(n: int, roofline_lib: None) -> None:
    """Batches shorter than, equal to and just over the prefetch pipeline's depth."""
    engine = kp.Engine(synthetic_cluster(40, 4), node="node-0", cluster_cidr="100.64.0.0/10", seed=7)
    p = synthetic_packets(40, max(n, 1), seed=n)
    src, dst, sport, dport, proto = p.src[:n], p.dst[:n], p.sport[:n], p.dport[:n], p.proto[:n]
    out = engine.lookup_batch(src, dst, dport, proto, sport, track=False)
    with roofline.Roofline(engine) as rl:
        ip, _, hits = rl.run(src, dst, sport, dport, proto)
    assert len(ip) == n and hits == int((out["verdict"] == 1).sum())
    assert np.array_equal(ip, np.where(out["verdict"] == 1, out["ep_ip"], 0))


def test_roofline_rejects_bad_buffers(roofline_lib: None) -> None:
    engine = kp.Engine(synthetic_cluster(5, 2), node="node-0", cluster_cidr="100.64.0.0/10", seed=7)
    p = synthetic_packets(5, 10)
    rl = roofline.Roofline(engine)
    with pytest.raises(ValueError, match="different lengths"):
        rl.run(p.src[:5], p.dst, p.sport, p.dport, p.proto)
    with pytest.raises(ValueError, match="out_ip / out_port"):
        rl.run(p.src, p.dst, p.sport, p.dport, p.proto, np.empty(10, np.int64), np.empty(10, np.uint16))
    rl.close()
    rl.close()
    with pytest.raises(ValueError, match="after close"):
        rl.run(p.src, p.dst, p.sport, p.dport, p.proto)


def test_roofline_source_ships_with_the_package() -> None:
    src = roofline.source().decode()
    assert "rl_build" in src and "rl_run" in src and "rl_free" in src
    bench_copy = Path(__file__).resolve().parent.parent / "benchmarks" / "roofline.c"
    if bench_copy.exists():  # a checkout: benchmarks/roofline.c is the same file
        assert bench_copy.read_text() == src


# --------------------------------------------------------------------------- the synthetic manifests


def test_synthetic_objects_are_the_synthetic_cluster() -> None:
    a = synthetic_cluster(60, 4)
    b = kp.Cluster.from_objects(json.loads(json.dumps(list(synthetic_objects(60, 4)))))
    assert b.services == a.services and b.slices == a.slices and b.nodes == a.nodes
    assert b.warnings == ()


# --------------------------------------------------------------------------- the check against the twin


def test_bench_checks_the_compiled_core_against_the_twin(capsys: pytest.CaptureFixture[str]) -> None:
    """``kproxy bench`` asks both implementations the same 2,000 packets before timing them."""
    if not kp.COMPILED_AVAILABLE:
        pytest.fail("the compiled core is not built")
    rc, out, err = _run(capsys, "bench", "--services", "50", "--endpoints", "3", "--packets", "3000",
                        "--flows", "500", "--min-time", "0.01", "--selector", "round-robin", "--json")
    assert rc == 0, err
    assert json.loads(out)["twin_checked_packets"] == bench.TWIN_SAMPLE


def _pair(selector: str | None, seeds: tuple[int, int] = (7, 7)) -> tuple[kp.Engine, kp.Engine]:
    weights = [1, 2, 3] if selector in ("weighted", "round-robin") else None
    cluster = synthetic_cluster(60, 3, selector=selector, weights=weights)
    opts: dict[str, Any] = {"node": "node-0", "cluster_cidr": "100.64.0.0/10"}
    return (kp.Engine(cluster, seed=seeds[0], impl="compiled", **opts),
            kp.Engine(cluster, seed=seeds[1], impl="python", **opts))


@pytest.mark.parametrize("selector", [None, "weighted", "round-robin", "maglev", "source-hash"])
def test_the_twins_agree_on_the_bench_packets(selector: str | None) -> None:
    if not kp.COMPILED_AVAILABLE:
        pytest.fail("the compiled core is not built")
    a, b = _pair(selector)
    p = synthetic_packets(60, 3000, flows=700, seed=4)
    assert bench.check_twins(a, b, p) == 3000
    out = a.lookup_batch(p.src, p.dst, p.dport, p.proto, p.sport, now=1000.0)  # tracked: the flows stay
    fields = ("verdict", "service", "frontend") if selector == "round-robin" else bench.ROW_FIELDS
    assert bench.compare_with_twin(out, p, b, fields=fields) == bench.TWIN_SAMPLE


def test_a_disagreement_names_the_packets() -> None:
    if not kp.COMPILED_AVAILABLE:
        pytest.fail("the compiled core is not built")
    a, b = _pair(None, seeds=(7, 8))  # another seed: other endpoints
    p = synthetic_packets(60, 2000, seed=4)
    with pytest.raises(AssertionError, match=r"(?s)the engines disagree: \d+ of 2000 packets answered "
                                             r"differently \(stateless\); the first:\n  100\.\S+ -> 10\.96\.\S+ "
                                             r"proto 6:\n    compiled: verdict=1 .*\n    python: verdict=1 "):
        bench.check_twins(a, b, p)
    out = a.lookup_batch(p.src, p.dst, p.dport, p.proto, p.sport, now=1000.0, track=False)
    with pytest.raises(AssertionError, match=r"the engine and the twin disagree: \d+ of 2000 packets"):
        bench.compare_with_twin(out, p, b)
    assert bench.compare_with_twin(out, p, b, fields=("verdict", "service", "frontend")) == 2000

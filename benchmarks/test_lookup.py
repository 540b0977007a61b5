"""pytest-benchmark suites: one operation per test, implementations and sizes as parameters.

Run for figures: ``pytest benchmarks --benchmark-enable``; CI runs each body once
(``--benchmark-disable``) so the suites stay importable and correct.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import kproxy_core as kp
from kproxy_core.bench import (
    ROW_FIELDS,
    TWIN_SAMPLE,
    NumpyBaseline,
    Packets,
    check_twins,
    compare_with_twin,
    synthetic_cluster,
    synthetic_packets,
)
from kproxy_core.selectors import default_table_size

SERVICES = 10_000
ENDPOINTS = 10
RANDOM = "random"  # kube-proxy's choice: no selector annotation
OTHER = {"compiled": "python", "python": "compiled"}


def _engine(cluster: kp.Cluster, impl: str) -> kp.Engine:
    if impl == "compiled" and not kp.COMPILED_AVAILABLE:
        pytest.fail("the compiled core is not built")
    return kp.Engine(cluster, node="node-0", cluster_cidr="100.64.0.0/10", seed=7, impl=impl)


@pytest.fixture(scope="module")
def engines() -> dict[tuple[str, str], kp.Engine]:
    """(selector, impl) -> an engine, built once per module run (a build takes seconds)."""
    return {}


def _cached(cache: dict[tuple[str, str], kp.Engine], selector: str, impl: str) -> kp.Engine:
    """The cached engine, its flows cleared. The first use of a selector builds both
    implementations, which must answer the same packets the same while both are fresh
    (round-robin's turns included: bench.check_twins)."""
    if (selector, impl) not in cache:
        cluster = synthetic_cluster(SERVICES, ENDPOINTS) if selector == RANDOM else _selector_cluster(selector)
        pair = {i: _engine(cluster, i) for i in ("compiled", "python")}
        check_twins(pair["compiled"], pair["python"], synthetic_packets(SERVICES, TWIN_SAMPLE, flows=500, seed=3))
        cache.update({(selector, i): e for i, e in pair.items()})
    engine = cache[(selector, impl)]
    engine.clear_flows()
    return engine


def _check(out: Any, p: Packets, cache: dict[tuple[str, str], kp.Engine], selector: str, impl: str) -> None:
    """``out``, the answers of ``impl`` to ``p``, against the other implementation's on a sample
    (bench.compare_with_twin): every field, or for round-robin (whose turns depend on the
    engine's history) the verdict, service and frontend."""
    twin = cache[(selector, OTHER[impl])]
    fields = ("verdict", "service", "frontend") if selector == "round-robin" else ROW_FIELDS
    assert compare_with_twin(out, p, twin, fields=fields) == min(TWIN_SAMPLE, len(p.src))
    assert set(np.unique(out["verdict"]).tolist()) == {0, 1}  # DNAT, and PASS for the 5% to no service


@pytest.mark.parametrize(("impl", "packets"), [("compiled", 1_000_000), ("python", 20_000)])
@pytest.mark.parametrize("track", [True, False], ids=["track", "stateless"])
def test_lookup_batch(benchmark: Any, engines: dict[tuple[str, str], kp.Engine], impl: str, packets: int,
                      track: bool) -> None:
    engine = _cached(engines, RANDOM, impl)
    p = synthetic_packets(SERVICES, packets, flows=min(100_000, packets))
    out = benchmark(engine.lookup_batch, p.src, p.dst, p.dport, p.proto, p.sport, now=1000.0, track=track)
    benchmark.extra_info["lookups"] = packets
    _check(out, p, engines, RANDOM, impl)


def test_lookup_batch_all_new_flows(benchmark: Any, engines: dict[tuple[str, str], kp.Engine]) -> None:
    """Worst case for the flow table: every packet its own flow."""
    engine = _cached(engines, RANDOM, "compiled")
    p = synthetic_packets(SERVICES, 1_000_000, flows=None)

    def run() -> Any:
        engine.clear_flows()
        return engine.lookup_batch(p.src, p.dst, p.dport, p.proto, p.sport, now=1000.0)

    out = benchmark(run)
    benchmark.extra_info["lookups"] = 1_000_000
    _check(out, p, engines, RANDOM, "compiled")


def test_numpy_baseline(benchmark: Any, engines: dict[tuple[str, str], kp.Engine]) -> None:
    engine = _cached(engines, RANDOM, "compiled")
    p = synthetic_packets(SERVICES, 1_000_000, flows=100_000)
    base = NumpyBaseline(engine)
    ref = benchmark(base.lookup, p)
    benchmark.extra_info["lookups"] = 1_000_000
    out = engine.lookup_batch(p.src, p.dst, p.dport, p.proto, p.sport, now=0.0, track=False)
    assert np.array_equal(ref["verdict"], out["verdict"])
    assert np.array_equal(ref["ep_ip"], out["ep_ip"])
    assert np.array_equal(ref["masq"], out["masq"])


@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_lookup_per_call(benchmark: Any, engines: dict[tuple[str, str], kp.Engine], impl: str) -> None:
    engine = _cached(engines, RANDOM, impl)
    p = synthetic_packets(SERVICES, 10_000, flows=5_000)
    from kproxy_core.bench import _ip

    rows = [(_ip(int(s)), _ip(int(d)), int(sp)) for s, d, sp in zip(p.src, p.dst, p.sport, strict=True)]
    look = engine.lookup

    def run() -> int:
        n = 0
        for s, d, sp in rows:
            n += look(s, d, 80, "TCP", sp, 1000.0).verdict == "DNAT"
        return n

    hits = benchmark(run)
    benchmark.extra_info["lookups"] = len(rows)
    # the other implementation: the same number of DNATs, and the same decisions on a sample
    twin = engines[(RANDOM, OTHER[impl])]
    ref = twin.lookup_batch(p.src, p.dst, p.dport, p.proto, p.sport, now=1000.0, track=False)
    assert hits == int((ref["verdict"] == 1).sum()) < len(rows)
    for s, d, sp in rows[:: max(1, len(rows) // TWIN_SAMPLE)]:
        a, b = look(s, d, 80, "TCP", sp, 1000.0), twin.lookup(s, d, 80, "TCP", sp, 1000.0, track=0)
        assert (a.verdict, a.service, a.frontend, a.endpoint, a.masquerade) == (
            b.verdict, b.service, b.frontend, b.endpoint, b.masquerade), (s, d, sp, a, b)


# --------------------------------------------------------------------------- endpoint selectors

SELECTORS = ["weighted", "round-robin", "maglev", "source-hash"]


def _selector_cluster(selector: str) -> kp.Cluster:
    # weights 1..10: unequal, so weighted and round-robin run their real paths (equal
    # weights make weighted the random choice, and round-robin a plain rotation)
    weights = list(range(1, ENDPOINTS + 1)) if selector in ("weighted", "round-robin") else None
    return synthetic_cluster(SERVICES, ENDPOINTS, selector=selector, weights=weights)


@pytest.mark.parametrize("selector", SELECTORS)
@pytest.mark.parametrize(("impl", "packets"), [("compiled", 1_000_000), ("python", 20_000)])
@pytest.mark.parametrize("track", [True, False], ids=["track", "stateless"])
def test_lookup_batch_selector(benchmark: Any, engines: dict[tuple[str, str], kp.Engine],
                               selector: str, impl: str, packets: int, track: bool) -> None:
    engine = _cached(engines, selector, impl)
    p = synthetic_packets(SERVICES, packets, flows=min(100_000, packets))
    out = benchmark(engine.lookup_batch, p.src, p.dst, p.dport, p.proto, p.sport, now=1000.0, track=track)
    benchmark.extra_info["lookups"] = packets
    _check(out, p, engines, selector, impl)
    if selector != "round-robin" and not track:
        ref = NumpyBaseline(engine).lookup(p)  # the same tables and hashes, in numpy
        assert np.array_equal(ref["ep_ip"], out["ep_ip"])


@pytest.mark.parametrize("selector", SELECTORS)
def test_lookup_batch_selector_all_new_flows(benchmark: Any, engines: dict[tuple[str, str], kp.Engine],
                                             selector: str) -> None:
    engine = _cached(engines, selector, "compiled")
    p = synthetic_packets(SERVICES, 1_000_000, flows=None)

    def run() -> Any:
        engine.clear_flows()
        return engine.lookup_batch(p.src, p.dst, p.dport, p.proto, p.sport, now=1000.0)

    out = benchmark(run)
    benchmark.extra_info["lookups"] = 1_000_000
    _check(out, p, engines, selector, "compiled")


@pytest.mark.parametrize("selector", [s for s in SELECTORS if s != "round-robin"])
def test_numpy_baseline_selector(benchmark: Any, engines: dict[tuple[str, str], kp.Engine],
                                 selector: str) -> None:
    engine = _cached(engines, selector, "compiled")
    p = synthetic_packets(SERVICES, 1_000_000, flows=100_000)
    base = NumpyBaseline(engine)
    ref = benchmark(base.lookup, p)
    benchmark.extra_info["lookups"] = 1_000_000
    out = engine.lookup_batch(p.src, p.dst, p.dport, p.proto, p.sport, now=0.0, track=False)
    assert np.array_equal(ref["verdict"], out["verdict"])
    assert np.array_equal(ref["ep_ip"], out["ep_ip"])


@pytest.mark.parametrize("selector", ["random", "weighted", "maglev"])
def test_engine_build(benchmark: Any, selector: str) -> None:
    """Building an engine (plan, tables, the cores' load) for 10,000 service ports: every
    port on Maglev must build in a few seconds with the compiled core."""
    cluster = synthetic_cluster(SERVICES, ENDPOINTS) if selector == "random" else _selector_cluster(selector)
    engine = benchmark.pedantic(_engine, args=(cluster, "compiled"), rounds=1, iterations=1)
    assert len(engine.service_ports) == SERVICES
    t = engine.tables["IPv4"]
    if selector == "maglev":
        assert t.sel_table is not None and len(t.sel_table) == SERVICES * default_table_size(ENDPOINTS)

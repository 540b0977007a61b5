"""pytest-benchmark suites: one operation per test, implementations and sizes as parameters.

Run for figures: ``pytest benchmarks --benchmark-enable``; CI runs each body once
(``--benchmark-disable``) so the suites stay importable and correct.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import kproxy_core as kp
from kproxy_core.bench import NumpyBaseline, synthetic_cluster, synthetic_packets
from kproxy_core.selectors import default_table_size

SERVICES = 10_000
ENDPOINTS = 10


@pytest.fixture(scope="module")
def cluster() -> kp.Cluster:
    return synthetic_cluster(SERVICES, ENDPOINTS)


def _engine(cluster: kp.Cluster, impl: str) -> kp.Engine:
    if impl == "compiled" and not kp.COMPILED_AVAILABLE:
        pytest.fail("the compiled core is not built")
    return kp.Engine(cluster, node="node-0", cluster_cidr="100.64.0.0/10", seed=7, impl=impl)


def _check(out: Any, engine: kp.Engine) -> None:
    hit = out["verdict"] == 1
    assert 0.9 < hit.mean() < 1.0  # 5% of the packets go to no service
    assert (out["service"][hit] >= 0).all() and (out["ep_port"][hit] == 8080).all()


@pytest.mark.parametrize(("impl", "packets"), [("compiled", 1_000_000), ("python", 20_000)])
@pytest.mark.parametrize("track", [True, False], ids=["track", "stateless"])
def test_lookup_batch(benchmark: Any, cluster: kp.Cluster, impl: str, packets: int, track: bool) -> None:
    engine = _engine(cluster, impl)
    p = synthetic_packets(SERVICES, packets, flows=min(100_000, packets))
    out = benchmark(engine.lookup_batch, p.src, p.dst, p.dport, p.proto, p.sport, now=1000.0, track=track)
    benchmark.extra_info["lookups"] = packets
    _check(out, engine)


def test_lookup_batch_all_new_flows(benchmark: Any, cluster: kp.Cluster) -> None:
    """Worst case for the flow table: every packet its own flow."""
    engine = _engine(cluster, "compiled")
    p = synthetic_packets(SERVICES, 1_000_000, flows=None)

    def run() -> Any:
        engine.clear_flows()
        return engine.lookup_batch(p.src, p.dst, p.dport, p.proto, p.sport, now=1000.0)

    out = benchmark(run)
    benchmark.extra_info["lookups"] = 1_000_000
    _check(out, engine)


def test_numpy_baseline(benchmark: Any, cluster: kp.Cluster) -> None:
    engine = _engine(cluster, "compiled" if kp.COMPILED_AVAILABLE else "python")
    p = synthetic_packets(SERVICES, 1_000_000, flows=100_000)
    base = NumpyBaseline(engine)
    ref = benchmark(base.lookup, p)
    benchmark.extra_info["lookups"] = 1_000_000
    out = engine.lookup_batch(p.src, p.dst, p.dport, p.proto, p.sport, now=0.0, track=False)
    assert np.array_equal(ref["verdict"], out["verdict"])
    assert np.array_equal(ref["ep_ip"], out["ep_ip"])
    assert np.array_equal(ref["masq"], out["masq"])


@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_lookup_per_call(benchmark: Any, cluster: kp.Cluster, impl: str) -> None:
    engine = _engine(cluster, impl)
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
    assert 0.9 * len(rows) < hits < len(rows)


# --------------------------------------------------------------------------- endpoint selectors

SELECTORS = ["weighted", "round-robin", "maglev", "source-hash"]


def _selector_cluster(selector: str) -> kp.Cluster:
    # weights 1..10: unequal, so weighted and round-robin run their real paths (equal
    # weights make weighted the random choice, and round-robin a plain rotation)
    weights = list(range(1, ENDPOINTS + 1)) if selector in ("weighted", "round-robin") else None
    return synthetic_cluster(SERVICES, ENDPOINTS, selector=selector, weights=weights)


@pytest.fixture(scope="module")
def selector_engines() -> dict[tuple[str, str], kp.Engine]:
    """(selector, impl) -> an engine, built once per module run (a build takes seconds)."""
    return {}


def _selector_engine(cache: dict[tuple[str, str], kp.Engine], selector: str, impl: str) -> kp.Engine:
    if (selector, impl) not in cache:
        cache[(selector, impl)] = _engine(_selector_cluster(selector), impl)
    engine = cache[(selector, impl)]
    engine.clear_flows()
    return engine


@pytest.mark.parametrize("selector", SELECTORS)
@pytest.mark.parametrize(("impl", "packets"), [("compiled", 1_000_000), ("python", 20_000)])
@pytest.mark.parametrize("track", [True, False], ids=["track", "stateless"])
def test_lookup_batch_selector(benchmark: Any, selector_engines: dict[tuple[str, str], kp.Engine],
                               selector: str, impl: str, packets: int, track: bool) -> None:
    engine = _selector_engine(selector_engines, selector, impl)
    p = synthetic_packets(SERVICES, packets, flows=min(100_000, packets))
    out = benchmark(engine.lookup_batch, p.src, p.dst, p.dport, p.proto, p.sport, now=1000.0, track=track)
    benchmark.extra_info["lookups"] = packets
    _check(out, engine)
    if selector != "round-robin" and not track:
        ref = NumpyBaseline(engine).lookup(p)  # the same tables and hashes, in numpy
        assert np.array_equal(ref["ep_ip"], out["ep_ip"])


@pytest.mark.parametrize("selector", SELECTORS)
def test_lookup_batch_selector_all_new_flows(benchmark: Any, selector_engines: dict[tuple[str, str], kp.Engine],
                                             selector: str) -> None:
    engine = _selector_engine(selector_engines, selector, "compiled")
    p = synthetic_packets(SERVICES, 1_000_000, flows=None)

    def run() -> Any:
        engine.clear_flows()
        return engine.lookup_batch(p.src, p.dst, p.dport, p.proto, p.sport, now=1000.0)

    out = benchmark(run)
    benchmark.extra_info["lookups"] = 1_000_000
    _check(out, engine)


@pytest.mark.parametrize("selector", [s for s in SELECTORS if s != "round-robin"])
def test_numpy_baseline_selector(benchmark: Any, selector_engines: dict[tuple[str, str], kp.Engine],
                                 selector: str) -> None:
    engine = _selector_engine(selector_engines, selector, "compiled" if kp.COMPILED_AVAILABLE else "python")
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

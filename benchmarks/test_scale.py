"""pytest-benchmark suites for how the engine scales: build, apply, trace and lookups at
several cluster sizes, and the roofline (the lean C loop on the engine's keys).

Sizes are service ports × 10 endpoints: 1,000 and 10,000 with ``--benchmark-enable``,
100,000 as well with ``KPROXY_BENCH_LARGE=1``. Under ``--benchmark-disable`` (CI) each body
runs once, at 1,000 only, so the suite stays a quick correctness check.

    pytest benchmarks/test_scale.py --benchmark-enable
    KPROXY_BENCH_LARGE=1 pytest benchmarks/test_scale.py --benchmark-enable --benchmark-max-time=2
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

import kproxy_core as kp
from kproxy_core.bench import (
    POD_BASE,
    SERVICE_BASE,
    TWIN_SAMPLE,
    Packets,
    _ip,
    compare_with_twin,
    slice_object,
    synthetic_cluster,
    synthetic_objects,
    synthetic_packets,
)

ENDPOINTS = 10
PACKETS = 1_000_000
OPTIONS: dict[str, Any] = {"node": "node-0", "cluster_cidr": "100.64.0.0/10", "seed": 7}
NEW = 0x65000000  # 101.0.0.0: replacement endpoints, disjoint from the synthetic pods


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "size" not in metafunc.fixturenames:
        return
    cfg = metafunc.config
    disabled = cfg.getoption("benchmark_disable", False) and not cfg.getoption("benchmark_enable", False)
    sizes = [1_000] if disabled else [1_000, 10_000]
    if not disabled and os.environ.get("KPROXY_BENCH_LARGE") == "1":
        sizes.append(100_000)
    metafunc.parametrize("size", sizes, ids=[f"{n // 1000}k" for n in sizes], scope="module")


class Scale:
    """One size's cluster, engine (flow table with 4 slots per flow: PACKETS flows all stay)
    and packets, built once per module and size."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.cluster = synthetic_cluster(size, ENDPOINTS)
        self.engine = kp.Engine(self.cluster, flow_capacity=4 * PACKETS, **OPTIONS)
        self.packets = synthetic_packets(size, PACKETS, seed=size)
        self.generation = 0  # apply's replacement slices never repeat an address

    def batch(self, track: bool) -> Any:
        p = self.packets
        return self.engine.lookup_batch(p.src, p.dst, p.dport, p.proto, p.sport, now=1000.0, track=track)

    def changed_slice(self, service: int) -> dict[str, Any]:
        base = NEW + self.generation * ENDPOINTS
        self.generation += 1
        return slice_object(f"svc-{service}", [_ip(base + j) for j in range(ENDPOINTS)])

    def lands_on_new(self, service: int, event: dict[str, Any]) -> bool:
        d = self.engine.lookup(_ip(POD_BASE + 9), _ip(SERVICE_BASE + service + 1), 80, "TCP", sport=41000)
        new = {e["addresses"][0] for e in event["object"]["endpoints"]}
        return d.verdict == "DNAT" and d.endpoint is not None and d.endpoint[0] in new


@pytest.fixture(scope="module")
def scale(size: int) -> Scale:
    if not kp.COMPILED_AVAILABLE:
        pytest.fail("the compiled core is not built")
    return Scale(size)


def test_build(benchmark: Any, size: int) -> None:
    """synthetic_cluster + Engine: the model objects and the engine from them."""
    def build() -> kp.Engine:
        return kp.Engine(synthetic_cluster(size, ENDPOINTS), **OPTIONS)

    engine = benchmark.pedantic(build, rounds=3, iterations=1)
    assert len(engine.service_ports) == size


def test_build_from_dicts(benchmark: Any, size: int) -> None:
    """Cluster.from_objects + Engine on the same cluster as manifest dicts."""
    objs = list(synthetic_objects(size, ENDPOINTS))
    engine = benchmark.pedantic(lambda: kp.Engine(kp.Cluster.from_objects(objs), **OPTIONS), rounds=3, iterations=1)
    assert len(engine.service_ports) == size
    assert engine.lookup(_ip(POD_BASE), _ip(SERVICE_BASE + size), 80, "TCP").verdict == "DNAT"


def test_apply_one_slice(benchmark: Any, scale: Scale) -> None:
    """One EndpointSlice replaced by one with new addresses, one apply call; a different
    service each round."""
    rng = np.random.default_rng(1)
    last: list[tuple[int, dict[str, Any]]] = []

    def setup() -> tuple[tuple[list[dict[str, Any]]], dict[str, Any]]:
        svc = int(rng.integers(0, scale.size))
        event = {"type": "MODIFIED", "object": scale.changed_slice(svc)}
        last.append((svc, event))
        return ([event],), {}

    result = benchmark.pedantic(scale.engine.apply, setup=setup, rounds=10, iterations=1)
    svc, event = last[-1]
    assert result.services == (f"bench/svc-{svc}",) and not result.full
    assert scale.lands_on_new(svc, event)


def test_apply_1000_slices(benchmark: Any, scale: Scale) -> None:
    """1,000 changed EndpointSlices in one apply call (one publication)."""
    rng = np.random.default_rng(2)
    last: list[list[tuple[int, dict[str, Any]]]] = []

    def setup() -> tuple[tuple[list[dict[str, Any]]], dict[str, Any]]:
        svcs = rng.choice(scale.size, size=1000, replace=False).tolist()
        changes = [(s, {"type": "MODIFIED", "object": scale.changed_slice(s)}) for s in svcs]
        last.append(changes)
        return ([e for _, e in changes],), {}

    result = benchmark.pedantic(scale.engine.apply, setup=setup, rounds=3, iterations=1)
    changes = last[-1]
    assert len(result.services) == 1000 and not result.full
    for svc, event in changes[::50]:
        assert scale.lands_on_new(svc, event)


def test_trace(benchmark: Any, scale: Scale) -> None:
    """engine.trace of one packet from a pod to a service (the explanation, not a lookup)."""
    svc = scale.size // 2
    tr = benchmark(scale.engine.trace, _ip(POD_BASE + 5), _ip(SERVICE_BASE + svc + 1), 80, "TCP", sport=40000)
    assert tr.service == f"bench/svc-{svc}:http" and tr.verdict == "DNAT"


@pytest.mark.parametrize("track", [False, True], ids=["stateless", "tracked"])
def test_lookup_batch(benchmark: Any, scale: Scale, track: bool) -> None:
    """1,000,000 packets, every one its own flow; tracked: all of them already in the flow
    table (a warm-up batch outside the timed part inserts them)."""
    ref = scale.batch(False)  # now: the apply tests changed some pools
    if track:
        scale.engine.clear_flows()
        scale.batch(True)
        assert scale.engine.flow_count >= 0.999 * int((ref["verdict"] == 1).sum())
    out = benchmark(scale.batch, track)
    benchmark.extra_info["lookups"] = PACKETS
    assert np.array_equal(out["ep_ip"], ref["ep_ip"])
    # the pure-Python twin, fresh from the cluster the applies left, answers a sample the same
    twin = kp.Engine(scale.engine.cluster, impl="python", **OPTIONS)
    assert compare_with_twin(out, scale.packets, twin) == TWIN_SAMPLE
    assert set(np.unique(out["verdict"]).tolist()) == {0, 1}  # DNAT, and PASS for the 5% to no service


def test_roofline(benchmark: Any, scale: Scale) -> None:
    """The lean C loop on the engine's own keys (kproxy_core/roofline.c): the limit the
    stateless lookups are measured against. It must pick exactly the engine's endpoints."""
    from kproxy_core.roofline import Roofline, RooflineUnavailable

    try:
        rl = Roofline(scale.engine)
    except RooflineUnavailable as e:
        pytest.skip(f"no roofline on this machine: {e}")
    p: Packets = scale.packets
    ip = np.empty(PACKETS, np.uint32)
    port = np.empty(PACKETS, np.uint16)
    with rl:
        _, _, hits = benchmark(rl.run, p.src, p.dst, p.sport, p.dport, p.proto, ip, port)
    benchmark.extra_info["lookups"] = PACKETS
    ref = scale.batch(False)
    dnat = ref["verdict"] == 1
    assert hits == int(dnat.sum())
    assert np.array_equal(ip[dnat], ref["ep_ip"][dnat]) and np.array_equal(port[dnat], ref["ep_port"][dnat])

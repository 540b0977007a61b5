"""apply() while other threads look packets up: every answer is the answer of one engine
state that existed while the lookup ran (old or new), never a mix of two, never a crash.

The expected answers of every state come from engines built from scratch on that state's
objects (the compiled twin when built: it is the faster oracle, and the twins agree, see
test_differential); the engine under test is fed the same states through apply()."""

from __future__ import annotations

import ipaddress
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from k8s import ep, eport, node, port, service, slice_

import kproxy_core as kp

NODE = "n1"
NODE_IP = "192.168.0.1"
OPTIONS: dict[str, Any] = {"node": NODE, "cluster_cidr": "10.0.0.0/8", "seed": 5}
N_BASE = 300  # Services s0..s299; s300.. are added later
N_ADDED = 6
N_STATES = 31  # state 0 and 30 applies
N_PACKETS = {"compiled": 200_000, "python": 4_000}  # the twin is ~500x slower per packet
RUN_TIMEOUT = 30.0  # a hang guard: a run takes about a second
GROUP = 4  # batches a reader runs back to back before checking them


def cluster_ip(i: int) -> str:
    return f"172.30.{i // 200}.{i % 200 + 1}"


def endpoint_ip(i: int, k: int) -> str:
    return f"10.{1 + i // 200}.{i % 200}.{k}"


def svc_obj(i: int, node_port: bool) -> dict[str, Any]:
    return service("ns", f"s{i}", cluster_ip(i), [port(80, "p", node_port=30000 + i if node_port else None)],
                   type="NodePort" if node_port else "ClusterIP")


def slice_obj(i: int, eps: list[int]) -> dict[str, Any]:
    return slice_("ns", f"s{i}", [ep(endpoint_ip(i, k), "n2" if k % 3 else NODE) for k in eps],
                  [eport(8080, "p")], name=f"s{i}-a")


Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # src, dst, dport, proto, sport


@dataclass
class Scenario:
    """States 0..N_STATES-1 (state k+1 = state k after ``changes[k]``), the packets, and
    each state's stateless answer to every packet, services numbered by ``names``."""

    initial: list[dict[str, Any]]
    changes: list[list[dict[str, Any]]]
    names: dict[str, int]  # service port name -> id used in ``expected``
    cols: Columns
    expected: np.ndarray  # (N_STATES, n) of kp.OUT_DTYPE, "service" in ``names`` ids
    pools: list[np.ndarray]  # per state: every (service id, endpoint) of states 0..k, as keys


def pool_keys(service: np.ndarray, ep_ip: np.ndarray, ep_port: np.ndarray) -> np.ndarray:
    return (service.astype(np.int64) << 48) | (ep_ip.astype(np.int64) << 16) | ep_port.astype(np.int64)


def build_scenario() -> Scenario:
    rng = random.Random(11)
    node_ports = {i: i % 3 == 0 for i in range(N_BASE)}
    eps = {i: sorted(rng.sample(range(1, 9), rng.randint(1, 4))) for i in range(N_BASE)}
    objs: dict[tuple[str, str], dict[str, Any]] = {}
    for i in range(N_BASE):
        objs["Service", f"s{i}"] = svc_obj(i, node_ports[i])
        objs["EndpointSlice", f"s{i}"] = slice_obj(i, eps[i])
    base = [node(NODE, NODE_IP, pod_cidr="10.0.0.0/24"), node("n2", "192.168.0.2")]
    initial = base + list(objs.values())
    states = [list(initial)]
    changes: list[list[dict[str, Any]]] = []
    added = 0
    for step in range(N_STATES - 1):
        live = sorted(eps)
        i = rng.choice(live)
        kind = step % 10
        if kind == 3 and added < N_ADDED:  # a new Service with a NodePort
            i = N_BASE + added
            added += 1
            node_ports[i], eps[i] = True, sorted(rng.sample(range(1, 9), 2))
            change = [svc_obj(i, True), slice_obj(i, eps[i])]
            objs["Service", f"s{i}"], objs["EndpointSlice", f"s{i}"] = change
        elif kind == 6:  # a Service and its slice deleted
            change = [{"type": "DELETED", "object": objs.pop(("Service", f"s{i}"))},
                      {"type": "DELETED", "object": objs.pop(("EndpointSlice", f"s{i}"))}]
            del eps[i]
        elif kind == 9:  # a NodePort added or removed
            node_ports[i] = not node_ports[i]
            change = [{"type": "MODIFIED", "object": svc_obj(i, node_ports[i])}]
            objs["Service", f"s{i}"] = change[0]["object"]
        else:  # endpoints A_k -> A_k+1
            new = eps[i]
            while new == eps[i]:
                new = sorted(rng.sample(range(1, 9), rng.randint(1, 4)))
            eps[i] = new
            change = [slice_obj(i, new)]
            objs["EndpointSlice", f"s{i}"] = change[0]
        changes.append(change)
        states.append(base + list(objs.values()))

    # packets: to ClusterIPs and to the node's NodePorts of every Service that ever exists
    prng = np.random.default_rng(3)
    n = N_PACKETS["compiled"]
    which = prng.integers(0, N_BASE + N_ADDED, n)
    to_node = prng.random(n) < 0.3
    cips = np.array([int(ipaddress.IPv4Address(cluster_ip(i))) for i in range(N_BASE + N_ADDED)], dtype=np.uint32)
    dst = np.where(to_node, np.uint32(int(ipaddress.IPv4Address(NODE_IP))), cips[which]).astype(np.uint32)
    dport = np.where(to_node, 30000 + which, 80).astype(np.uint16)
    src = np.where(prng.random(n) < 0.5, 0x0A000000 + prng.integers(2, 250, n),
                   0xCB007100 + prng.integers(1, 250, n)).astype(np.uint32)  # pods, 203.0.113.x
    proto = np.where(prng.random(n) < 0.95, 6, 17).astype(np.uint8)
    sport = prng.integers(1024, 65535, n).astype(np.uint16)
    cols = (src, dst, dport, proto, sport)

    impl = "compiled" if kp.COMPILED_AVAILABLE else "python"
    names: dict[str, int] = {}
    expected = np.zeros((N_STATES, n), dtype=kp.OUT_DTYPE)
    pools: list[np.ndarray] = []
    seen = np.zeros(0, dtype=np.int64)
    for k, state in enumerate(states):
        fresh = kp.Engine(kp.Cluster.from_objects(state), impl=impl, flow_capacity=64, **OPTIONS)
        remap = np.array([names.setdefault(s.name, len(names)) for s in fresh.service_ports] + [-1], dtype=np.int32)
        out = fresh.lookup_batch(*cols, now=0.0, track=False)
        out["service"] = remap[out["service"]]
        expected[k] = out
        keys = [pool_keys(np.array([names[pp.spn]] * len(pp.cluster + pp.local)),
                          np.array([int(ipaddress.IPv4Address(e.ip)) for e in pp.cluster + pp.local], dtype=np.int64),
                          np.array([e.port for e in pp.cluster + pp.local], dtype=np.int64))
                for pp in fresh.plans["IPv4"].ports]
        seen = np.union1d(seen, np.concatenate(keys)) if keys else seen
        pools.append(seen)
    assert (expected["verdict"] == 1).mean() > 0.5  # mostly DNAT: the endpoints matter
    return Scenario(initial, changes, names, cols, expected, pools)


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build_scenario()


class Published:
    """How many applies have returned: while a lookup runs between reading ``count`` as
    a and as b, the engine is in a state from a to b + 1 (apply b + 1 may have published
    but not returned yet). ``overlaps`` counts lookups during which an apply returned."""

    def __init__(self) -> None:
        self.count = 0
        self.overlaps = 0

    def window(self, a: int, b: int) -> range:
        self.overlaps += b > a
        return range(a, min(b + 1, N_STATES - 1) + 1)


def drive(engine: kp.Engine, scenario: Scenario, reader: Callable[[Published, threading.Event], None],
          ) -> Published:
    """Run ``reader`` in a thread while the main thread applies every change; re-raise
    what the reader raised."""
    published = Published()
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            reader(published, stop)
        except BaseException as e:  # reported below, with the reader's traceback
            errors.append(e)
            stop.set()

    thread = threading.Thread(target=run, name="reader", daemon=True)
    thread.start()
    time.sleep(0.01)
    for change in scenario.changes:
        if stop.is_set():
            break
        engine.apply(change)
        published.count += 1
        time.sleep(0.01)  # room for lookups wholly inside one state too
    time.sleep(0.01)
    stop.set()
    thread.join(RUN_TIMEOUT)
    assert not thread.is_alive(), f"the reader did not stop within {RUN_TIMEOUT} s"
    if errors:
        raise errors[0]
    assert published.count == N_STATES - 1
    return published


def first(cols: Columns, n: int) -> Columns:
    src, dst, dport, proto, sport = cols
    return src[:n], dst[:n], dport[:n], proto[:n], sport[:n]


def global_ids(engine: kp.Engine, scenario: Scenario, out: np.ndarray) -> np.ndarray:
    """``out`` with its service indices (the engine's) turned into the scenario's ids."""
    remap = np.array([scenario.names.get(s.name, -2) for s in engine.service_ports] + [-1], dtype=np.int32)
    g: np.ndarray = out.copy()
    g["service"] = remap[out["service"]]
    return g


def explain(engine: kp.Engine, scenario: Scenario, i: int, row: Any, window: range) -> str:
    src, dst, dport, proto, sport = (int(c[i]) for c in scenario.cols)
    pkt = (f"{ipaddress.IPv4Address(src)}:{sport} -> {ipaddress.IPv4Address(dst)}:{dport}/{proto}")
    names = {v: k for k, v in scenario.names.items()}

    def show(r: Any) -> str:
        verdict, svc, fe, ip, p, masq = r.tolist()
        return (f"{kp.VERDICT_NAMES[verdict]} {names.get(svc, svc)} via {kp.FRONTEND_NAMES[fe]} "
                f"to {ipaddress.IPv4Address(ip)}:{p} masq={masq}")

    lines = [f"packet {i}: {pkt}", f"  got:      {show(row)}"]
    lines += [f"  state {k:2}: {show(scenario.expected[k][i])}" for k in window]
    return "\n".join(lines)


def check_rows(engine: kp.Engine, scenario: Scenario, out: np.ndarray, window: range) -> set[int]:
    """Every row equals, whole, the row of one state in ``window``; returns the states
    that alone explain some row (more than one: the batch straddled a publication)."""
    n = len(out)
    g = global_ids(engine, scenario, out)
    row = np.dtype((np.void, g.dtype.itemsize))  # whole rows, compared as bytes
    matches = np.stack([g.view(row) == scenario.expected[k][:n].view(row) for k in window])
    bad = ~matches.any(axis=0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AssertionError(f"{int(bad.sum())} of {n} answers are no state's answer (states {window.start}.."
                             f"{window.stop - 1} were live):\n" + explain(engine, scenario, i, g[i], window))
    only = matches.sum(axis=0) == 1
    return {window.start + int(k) for k in np.unique(np.argmax(matches[:, only], axis=0))} if only.any() else set()


def _start(impl: str, scenario: Scenario) -> tuple[kp.Engine, Columns]:
    """The engine on the scenario's first state, and the packets its readers send."""
    if impl == "compiled" and not kp.COMPILED_AVAILABLE:
        pytest.skip("the compiled core is not built")
    engine = kp.Engine(kp.Cluster.from_objects(scenario.initial), impl=impl, **OPTIONS)
    return engine, first(scenario.cols, N_PACKETS[impl])


@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_batches_see_one_state_per_packet(impl: str, scenario: Scenario) -> None:
    engine, cols = _start(impl, scenario)
    batches: list[tuple[range, set[int]]] = []

    def reader(published: Published, stop: threading.Event) -> None:
        while not stop.is_set():
            group = []  # batches back to back (no GIL), checked after: an apply ends inside some
            for _ in range(GROUP):
                a = published.count
                out = engine.lookup_batch(*cols, now=0.0, track=False)
                group.append((published.window(a, published.count), out))
            for window, out in group:
                batches.append((window, check_rows(engine, scenario, out, window)))

    published = drive(engine, scenario, reader)
    assert len(batches) >= 5, batches
    assert published.overlaps > 0, "no batch overlapped an apply: the test proved nothing"
    # and the last state is what the engine answers now
    check_rows(engine, scenario, engine.lookup_batch(*cols, now=0.0, track=False), range(N_STATES - 1, N_STATES))


@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_lookups_see_one_state(impl: str, scenario: Scenario) -> None:
    if impl == "compiled" and not kp.COMPILED_AVAILABLE:
        pytest.skip("the compiled core is not built")
    engine = kp.Engine(kp.Cluster.from_objects(scenario.initial), impl=impl, **OPTIONS)
    n = 3000
    packets = [tuple(int(c[i]) for c in scenario.cols) for i in range(n)]
    calls: list[range] = []

    def reader(published: Published, stop: threading.Event) -> None:
        out = np.zeros(1, dtype=kp.OUT_DTYPE)
        i = 0
        while not stop.is_set():
            src, dst, dport, proto, sport = packets[i % n]
            a = published.count
            d = engine.lookup(src, dst, dport, proto, sport=sport, now=0.0, track=0)
            window = published.window(a, published.count)
            calls.append(window)
            row = out[0]
            row["verdict"] = kp.VERDICT_NAMES.index(d.verdict)
            row["service"] = engine.service_index(d.service) if d.service else -1
            row["frontend"] = engine.frontend_names.index(d.frontend)
            row["ep_ip"] = int(ipaddress.IPv4Address(d.endpoint[0])) if d.endpoint else 0
            row["ep_port"] = d.endpoint[1] if d.endpoint else 0
            row["masq"] = d.masquerade
            g = global_ids(engine, scenario, out)[0]
            if not any(g == scenario.expected[k][i % n] for k in window):
                raise AssertionError("a lookup answered as no state did:\n"
                                     + explain(engine, scenario, i % n, g, window))
            i += 1

    drive(engine, scenario, reader)
    # a single call rarely spans an apply (both want the GIL); they ran in most states
    assert len({w.start for w in calls}) > N_STATES // 2, len(calls)


def check_tracked(engine: kp.Engine, scenario: Scenario, out: np.ndarray, window: range) -> None:
    """With flows a packet may keep an endpoint of an older state: its verdict and service
    are still some state's so far, and its endpoint one that the service had."""
    n = len(out)
    g = global_ids(engine, scenario, out)
    ok = np.zeros(n, dtype=bool)
    for k in range(window.stop):  # a flow may date from any state so far
        exp = scenario.expected[k][:n]
        ok |= (g["verdict"] == exp["verdict"]) & (g["service"] == exp["service"])
    dnat = g["verdict"] == 1
    keys = pool_keys(g["service"], g["ep_ip"], g["ep_port"])
    ok &= ~dnat | np.isin(keys, scenario.pools[window.stop - 1])
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise AssertionError("a tracked packet answered as no state did, or with an endpoint its "
                             "service never had:\n" + explain(engine, scenario, i, g[i], window))


@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_tracked_batches_stay_consistent(impl: str, scenario: Scenario) -> None:
    """As above with track=True: flows may keep endpoints of older states (check_tracked)."""
    engine, cols = _start(impl, scenario)
    rounds: list[int] = []

    def reader(published: Published, stop: threading.Event) -> None:
        while not stop.is_set():
            group = []
            for _ in range(GROUP):
                a = published.count
                out = engine.lookup_batch(*cols, now=float(len(rounds)), track=True)
                group.append((published.window(a, published.count), out))
            for window, out in group:
                rounds.append(len(window))
                check_tracked(engine, scenario, out, window)

    published = drive(engine, scenario, reader)
    assert len(rounds) >= 3 and published.overlaps > 0, rounds
    assert engine.flow_count > 0

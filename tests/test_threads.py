"""Four threads look packets up (two stateless, two tracked) while a fifth applies random
changes (Services added and removed, endpoints changed, a port's number changed, a Service
switched between the random and the Maglev selector, a Node changed: a whole reload) for
``KPROXY_THREADS_SECONDS`` seconds (default 20; the twin gets a sixth of it): every answer
is, per packet, the answer of an engine built from scratch on a state that was live while
the batch ran, no thread crashes or hangs, and batches really ran while applies published.

The live states come from ``Engine.generation`` (bumped when an apply returns, after it
published): a batch between reading generation a and b saw states a to b + 1. Each state's
oracle is an engine built from scratch on its objects (compiled when built: the twins agree,
test_differential), made by the writer just before the apply that publishes it. The oracle
is our own code: this tests apply against a fresh build under threads, not kube-proxy.

Tracked readers send new 5-tuples (a new flow's answer is the stateless one), then the same
ones again: each answer is then the first one (the flow kept it) or a live state's (the flow
was evicted, or dropped because it was UDP and its endpoint left), and a UDP flow kept is
one whose endpoint is still in its service in some live state (kube-proxy's cleanup).
"""

from __future__ import annotations

import faulthandler
import ipaddress
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from k8s import ep, eport, node, port, service, slice_

import kproxy_core as kp
from kproxy_core.selectors import SELECTOR_ANNOTATION

SECONDS = float(os.environ.get("KPROXY_THREADS_SECONDS", "20"))
NODE, NODE_IP = "n1", "192.168.0.1"
OPTIONS: dict[str, Any] = {"node": NODE, "cluster_cidr": "10.0.0.0/8", "seed": 5}
N_MAX = 48  # Services s0..s47 may exist; about three quarters do at any time
N_FIXED = 1 << 16  # the stateless readers' packets
BATCH = {"compiled": 16384, "python": 256}  # the twin is ~500x slower per packet
FLOW_CAPACITY = 1 << 14  # small: the tracked readers' flows evict each other
GRACE = 60.0  # past the run's end, how long threads may take to stop before it is a hang
ORACLE_IMPL = "compiled" if kp.COMPILED_AVAILABLE else "python"


def cluster_ip(i: int) -> int:
    return int(ipaddress.IPv4Address("172.30.0.1")) + i


def svc_obj(i: int, p: int, node_port: bool, maglev: bool) -> dict[str, Any]:
    obj = service("ns", f"s{i}", str(ipaddress.IPv4Address(cluster_ip(i))),
                  [port(p, "p", node_port=30000 + i if node_port else None), port(53, "u", "UDP")],
                  type="NodePort" if node_port else "ClusterIP")
    if maglev:  # a pure function of the packet, as random is (round-robin is not: no oracle)
        obj["metadata"]["annotations"] = {SELECTOR_ANNOTATION: "maglev"}
    return obj


def slice_obj(i: int, eps: list[int]) -> dict[str, Any]:
    return slice_("ns", f"s{i}", [ep(f"10.1.{i}.{k}", "n2" if k % 3 else NODE) for k in eps],
                  [eport(8080, "p"), eport(5353, "u", "UDP")], name=f"s{i}-a")


class World:
    """The cluster's objects as the writer changes them at random."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.zone = "a"
        self.svcs: dict[int, tuple[int, bool, bool, list[int]]] = {}  # i -> port, NodePort?, Maglev?, endpoints
        self.objs: dict[tuple[str, int], dict[str, Any]] = {}
        for i in range(N_MAX):
            if rng.random() < 0.75:
                self._put(i, rng.choice((80, 81)), i % 3 == 0, False, self._eps())
        self.kinds: dict[str, int] = {}

    def nodes(self) -> list[dict[str, Any]]:
        return [node(NODE, NODE_IP, pod_cidr="10.0.0.0/24"), node("n2", "192.168.0.2", zone=self.zone)]

    def _eps(self) -> list[int]:
        return sorted(self.rng.sample(range(1, 9), self.rng.randint(1, 5)))

    def _put(self, i: int, p: int, np_: bool, maglev: bool, eps: list[int]) -> list[dict[str, Any]]:
        old = self.svcs.get(i)
        self.svcs[i] = (p, np_, maglev, eps)
        out = []
        if old is None or old[:3] != (p, np_, maglev):
            self.objs["Service", i] = svc_obj(i, p, np_, maglev)
            out.append(self.objs["Service", i])
        if old is None or old[3] != eps:
            self.objs["EndpointSlice", i] = slice_obj(i, eps)
            out.append(self.objs["EndpointSlice", i])
        return out

    def state(self) -> list[dict[str, Any]]:
        return self.nodes() + list(self.objs.values())

    def change(self) -> list[Any]:
        rng = self.rng
        roll = rng.random()
        n = sum(self.kinds.values())
        if n < 6:  # one of each kind first, whatever the seed
            roll = (0.0, 0.2, 0.3, 0.5, 0.42, 0.47)[n]
        live = sorted(self.svcs)
        if roll < 0.12 and len(live) < N_MAX:
            kind = "add"
            i = rng.choice([k for k in range(N_MAX) if k not in self.svcs])
            out: list[Any] = self._put(i, rng.choice((80, 81)), rng.random() < 0.4, rng.random() < 0.2, self._eps())
        elif roll < 0.24 and len(live) > N_MAX // 2:
            kind = "remove"
            i = rng.choice(live)
            del self.svcs[i]
            out = [{"type": "DELETED", "object": self.objs.pop(("Service", i))},
                   {"type": "DELETED", "object": self.objs.pop(("EndpointSlice", i))}]
        elif roll < 0.4:
            kind = "port"
            i = rng.choice(live)
            p, np_, mg, eps = self.svcs[i]
            out = [{"type": "MODIFIED", "object": o} for o in self._put(i, 161 - p, np_, mg, eps)]
        elif roll < 0.45:
            kind = "selector"
            i = rng.choice(live)
            p, np_, mg, eps = self.svcs[i]
            out = self._put(i, p, np_, not mg, eps)
        elif roll < 0.48:
            kind = "node"  # every Service planned again and the tables loaded whole
            self.zone = "b" if self.zone == "a" else "a"
            out = [self.nodes()[1]]
        else:
            kind = "endpoints"
            i = rng.choice(live)
            p, np_, mg, eps = self.svcs[i]
            new = eps
            while new == eps:
                new = self._eps()
            out = self._put(i, p, np_, mg, new)
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        return out


Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # src, dst, dport, proto, sport


def fixed_packets() -> Columns:
    """To ClusterIPs (ports 80 and 81 TCP, 53 UDP) and the node's NodePorts of every Service
    that may exist, and some to no Service; from pods and from outside."""
    rng = np.random.default_rng(7)
    n = N_FIXED
    which = rng.integers(0, N_MAX, n)
    kind = rng.random(n)
    to_node = kind < 0.2
    nowhere = kind > 0.93
    cips = np.array([cluster_ip(i) for i in range(N_MAX)], dtype=np.uint32)
    dst = np.where(to_node, np.uint32(int(ipaddress.IPv4Address(NODE_IP))), cips[which])
    dst = np.where(nowhere, np.uint32(0xAC1F0000) + which.astype(np.uint32), dst).astype(np.uint32)  # 172.31/16
    cport = rng.choice(np.array([80, 81, 53], dtype=np.int64), n, p=[0.4, 0.4, 0.2])
    dport = np.where(to_node, 30000 + which, cport).astype(np.uint16)
    proto = np.where(~to_node & (cport == 53), 17, 6).astype(np.uint8)
    src = np.where(rng.random(n) < 0.5, 0x0A000000 + rng.integers(2, 250, n),
                   0xCB007100 + rng.integers(1, 250, n)).astype(np.uint32)  # pods, 203.0.113.x
    sport = rng.integers(1024, 65535, n).astype(np.uint16)
    return src, dst, dport, proto, sport


class Names:
    """Service port names -> one numbering for every engine (``service`` columns compared)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.lock = threading.Lock()

    def remap(self, engine: kp.Engine) -> np.ndarray:
        infos = list(engine.service_ports)
        with self.lock:
            ids = [self.ids.setdefault(s.name, len(self.ids)) for s in infos]
        return np.array([*ids, -1], dtype=np.int32)  # -1 stays -1

    def globalise(self, engine: kp.Engine, out: np.ndarray) -> np.ndarray:
        g: np.ndarray = out.copy()
        g["service"] = self.remap(engine)[out["service"]]
        return g


def pool_keys(service: np.ndarray, ep_ip: np.ndarray, ep_port: np.ndarray) -> np.ndarray:
    return (service.astype(np.int64) << 48) | (ep_ip.astype(np.int64) << 16) | ep_port.astype(np.int64)


class Oracle:
    """One state's answers: an engine built from scratch on its objects."""

    def __init__(self, state: list[dict[str, Any]], names: Names, fixed: Columns) -> None:
        self.engine = kp.Engine(kp.Cluster.from_objects(state), impl=ORACLE_IMPL, flow_capacity=8,
                                affinity_capacity=8, **OPTIONS)
        self.names = names
        self.fixed = self.answer(fixed)
        remap = names.remap(self.engine)
        keys = [pool_keys(np.full(len(pp.cluster + pp.local), remap[self.engine.service_index(pp.spn)]),
                          np.array([int(ipaddress.IPv4Address(e.ip)) for e in pp.cluster + pp.local], dtype=np.int64),
                          np.array([e.port for e in pp.cluster + pp.local], dtype=np.int64))
                for pp in self.engine.plans["IPv4"].ports]
        self.pools = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)

    def answer(self, cols: Columns) -> np.ndarray:
        return self.names.globalise(self.engine, self.engine.lookup_batch(*cols, now=0.0, track=False))


ROW = np.dtype((np.void, kp.OUT_DTYPE.itemsize))  # whole rows, compared as bytes


def show(r: Any) -> str:
    verdict, svc, fe, ip, p, masq = r.tolist()
    return (f"{kp.VERDICT_NAMES[verdict]} service#{svc} via {kp.FRONTEND_NAMES[fe]} "
            f"to {ipaddress.IPv4Address(ip)}:{p} masq={masq}")


def explain(cols: Columns, i: int, got: Any, candidates: dict[str, Any]) -> str:
    src, dst, dport, proto, sport = (int(c[i]) for c in cols)
    lines = [f"packet {i}: {ipaddress.IPv4Address(src)}:{sport} -> {ipaddress.IPv4Address(dst)}:{dport}/{proto}",
             f"  got:      {show(got)}"]
    lines += [f"  {k:9} {show(r)}" for k, r in candidates.items()]
    return "\n".join(lines)


@dataclass
class Run:
    """What the threads share: the engine under test, the oracles by generation, counters."""

    engine: kp.Engine
    names: Names
    fixed: Columns
    batch: int
    oracles: dict[int, Oracle] = field(default_factory=dict)
    low: dict[str, int] = field(default_factory=dict)  # per reader: the oldest generation it may ask for
    stop: threading.Event = field(default_factory=threading.Event)
    batches: dict[str, int] = field(default_factory=dict)
    overlaps: dict[str, int] = field(default_factory=dict)  # batches during which an apply returned
    applies: int = 0
    errors: list[tuple[str, BaseException]] = field(default_factory=list)

    def window(self, name: str, a: int, b: int) -> dict[int, Oracle]:
        """The oracles of the states a batch between generations a and b may have seen
        (b + 1 only if its apply had begun: its oracle is made first)."""
        self.batches[name] = self.batches.get(name, 0) + 1
        self.overlaps[name] = self.overlaps.get(name, 0) + (b > a)
        got = {k: self.oracles[k] for k in range(a, b + 2) if k in self.oracles}
        assert a in got and b in got, f"oracles {a}..{b} were dropped too soon ({sorted(self.oracles)[:3]}...)"
        return got


def check_exact(run: Run, cols: Columns, out: np.ndarray, window: dict[int, Oracle],
                expected: Callable[[Oracle], np.ndarray]) -> None:
    g = run.names.globalise(run.engine, out).view(ROW)
    exp = {k: expected(o) for k, o in window.items()}
    ok = np.zeros(len(out), dtype=bool)
    for e in exp.values():
        ok |= g == e.view(ROW)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise AssertionError(f"{int((~ok).sum())} of {len(out)} answers are no live state's (states "
                             f"{min(window)}..{max(window)}):\n" + explain(
                                 cols, i, g.view(kp.OUT_DTYPE)[i],
                                 {f"state {k}:": e[i] for k, e in exp.items()}))


def stateless_reader(run: Run, name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    engine = run.engine
    while not run.stop.is_set():
        a = run.low[name] = engine.generation
        group = []
        for _ in range(2):  # back to back (no GIL between them), checked after
            start = int(rng.integers(0, N_FIXED - run.batch))
            cols: Columns = tuple(c[start:start + run.batch] for c in run.fixed)  # type: ignore[assignment]
            a = engine.generation
            out = engine.lookup_batch(*cols, now=0.0, track=False)
            group.append((start, cols, out, run.window(name, a, engine.generation)))
        for start, cols, out, window in group:
            check_exact(run, cols, out, window, lambda o, s=start: o.fixed[s:s + run.batch])


def tracked_reader(run: Run, name: str, seed: int, index: int) -> None:
    rng = np.random.default_rng(seed)
    engine = run.engine
    counter = 0
    while not run.stop.is_set():
        run.low[name] = engine.generation
        start = int(rng.integers(0, N_FIXED - run.batch))
        _, dst, dport, proto, fsrc = (c[start:start + run.batch] for c in run.fixed)
        # new 5-tuples: this reader's own sources (pods or outside, as the fixed packet's)
        c = counter + np.arange(run.batch)
        counter += run.batch
        pod = (fsrc >> 24) == 10
        src = (np.where(pod, 0x0A800000, 0xCB000000) + (index << 18) + c // 60000).astype(np.uint32)
        sport = (1024 + c % 60000).astype(np.uint16)
        cols: Columns = (src, dst, dport, proto, sport)
        a = engine.generation
        first = engine.lookup_batch(*cols, now=0.0, track=True)
        w1 = run.window(name, a, engine.generation)
        a = engine.generation
        again = engine.lookup_batch(*cols, now=0.0, track=True)
        w2 = run.window(name, a, engine.generation)
        check_exact(run, cols, first, w1, lambda o, c=cols: o.answer(c))
        # again: the flow's first answer, or (evicted, dropped, or not a flow) a live state's
        g1 = run.names.globalise(engine, first)
        g2 = run.names.globalise(engine, again)
        kept = g2.view(ROW) == g1.view(ROW)
        fresh = {k: o.answer(cols) for k, o in w2.items()}
        ok = kept.copy()
        for e in fresh.values():
            ok |= g2.view(ROW) == e.view(ROW)
        # a UDP flow kept has an endpoint its service has in some live state
        udp = kept & (g2["verdict"] == 1) & (proto == 17)
        explained = ok & ~udp
        for e in fresh.values():
            explained |= udp & (g2.view(ROW) == e.view(ROW))
        keys = pool_keys(g2["service"], g2["ep_ip"], g2["ep_port"])
        for o in w2.values():
            explained |= udp & np.isin(keys, o.pools)
        bad = ~explained
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            why = "a UDP flow kept an endpoint its service no longer has" if udp[i] else "no live state's answer"
            raise AssertionError(f"{int(bad.sum())} of {len(cols[0])} second answers: {why} (states "
                                 f"{min(w2)}..{max(w2)}):\n" + explain(
                                     cols, i, g2[i], {"first:": g1[i], **{f"state {k}:": e[i]
                                                                          for k, e in fresh.items()}}))


KINDS = ("add", "remove", "port", "endpoints", "selector", "node")
EXTRA = 30.0


def proven(run: Run) -> bool:
    return run.applies >= len(KINDS) and all(
        any(v for k, v in run.overlaps.items() if k.startswith(kind)) for kind in ("stateless", "tracked"))


def writer(run: Run, world: World, deadline: float) -> None:
    engine = run.engine
    # past the deadline (by at most EXTRA seconds) until every kind of change was applied and
    # both kinds of reader overlapped an apply, however slow the machine: CI once managed only
    # 5 applies in the twin's 3.3 s
    while (time.monotonic() < deadline or (not proven(run) and time.monotonic() < deadline + EXTRA)) \
            and not run.stop.is_set():
        change = world.change()
        gen = engine.generation
        run.oracles[gen + 1] = Oracle(world.state(), run.names, run.fixed)  # before it can be live
        engine.apply(change)
        run.applies += 1
        if run.applies % 16 == 0:
            low = min([gen, *run.low.values()])
            for k in [k for k in run.oracles if k < low]:
                del run.oracles[k]


def stacks() -> str:
    with tempfile.TemporaryFile("w+") as f:
        faulthandler.dump_traceback(file=f, all_threads=True)
        f.seek(0)
        return f.read()


@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_threads_see_live_states(impl: str) -> None:
    if impl == "compiled" and not kp.COMPILED_AVAILABLE:
        pytest.fail("the compiled core is not built")
    seconds = SECONDS if impl == "compiled" else max(2.0, SECONDS / 6)
    seed = int(os.environ.get("KPROXY_THREADS_SEED", "13"))
    world = World(random.Random(seed))
    names = Names()
    fixed = fixed_packets()
    engine = kp.Engine(kp.Cluster.from_objects(world.state()), impl=impl, flow_capacity=FLOW_CAPACITY, **OPTIONS)
    run = Run(engine, names, fixed, BATCH[impl])
    run.oracles[0] = Oracle(world.state(), names, fixed)

    def guarded(name: str, fn: Callable[..., None], *args: Any) -> threading.Thread:
        def body() -> None:
            try:
                fn(*args)
            except BaseException as e:  # reported by the main thread, with the seed
                run.errors.append((name, e))
                run.stop.set()

        return threading.Thread(target=body, name=name, daemon=True)

    readers = [guarded("stateless-0", stateless_reader, run, "stateless-0", seed),
               guarded("stateless-1", stateless_reader, run, "stateless-1", seed + 1),
               guarded("tracked-0", tracked_reader, run, "tracked-0", seed + 2, 0),
               guarded("tracked-1", tracked_reader, run, "tracked-1", seed + 3, 1)]
    for r in readers:
        run.low[r.name] = 0
    deadline = time.monotonic() + seconds
    w = guarded("writer", writer, run, world, deadline)
    # a hang anywhere, this thread's joins included, still leaves every thread's stack
    faulthandler.dump_traceback_later(seconds + EXTRA + 2 * GRACE, exit=False)
    try:
        for t in (*readers, w):
            t.start()
        w.join(seconds + EXTRA + GRACE)
        writer_hung = w.is_alive()
        run.stop.set()
        for t in readers:
            t.join(max(0.1, deadline + GRACE - time.monotonic()))
        hung = [t.name for t in (*readers, w) if t.is_alive()]
        if hung or writer_hung:
            pytest.fail(f"threads {hung} did not stop within {GRACE} s of the end (seed {seed}):\n{stacks()}")
    finally:
        faulthandler.cancel_dump_traceback_later()
    if run.errors:
        name, err = run.errors[0]
        raise AssertionError(f"{name} (seed {seed}, {run.applies} applies, {world.kinds}): {err}") from err

    # every kind of change happened, readers ran all along, and some batch straddled an apply
    assert set(world.kinds) == set(KINDS), world.kinds
    assert run.applies >= (20 if impl == "compiled" else 6), run.applies  # the twin's readers hold the GIL
    for r in readers:
        assert run.batches.get(r.name, 0) >= 4, run.batches
    for kind in ("stateless", "tracked"):
        overlapped = sum(v for k, v in run.overlaps.items() if k.startswith(kind))
        assert overlapped > 0, f"no {kind} batch overlapped an apply: the test proved nothing ({run.batches})"
    assert 0 < engine.flow_count <= FLOW_CAPACITY  # a power of two times 8: exactly the table's slots
    # and now the engine answers as the last state does
    last = run.oracles[engine.generation]
    check_exact(run, fixed, engine.lookup_batch(*fixed, now=0.0, track=False), {engine.generation: last},
                lambda o: o.fixed)
    print(f"{impl}: {run.applies} applies {world.kinds}; batches {run.batches}; overlapping an apply "
          f"{run.overlaps}")

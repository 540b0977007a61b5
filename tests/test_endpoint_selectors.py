"""The endpoint selectors, by the tests SELECTORS.md gives for each algorithm: exact
properties asserted exactly, the rest by statistics with flake-proof thresholds (α = 1e-6).

The algorithms (kproxy_core.selectors) first, then the engine's selectors over both twins
through the annotations: the same choices per call and per batch, IPv4 and IPv6."""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from k8s import ep, eport, node, port, service, slice_

import kproxy_core as kp
from kproxy_core import selectors as sel
from kproxy_core.engine import maglev_builder

# chi-square critical values at alpha = 1e-6 by degrees of freedom (SELECTORS.md §1)
CHI2 = {1: 23.928, 2: 27.631, 4: 33.377, 9: 44.811, 19: 63.677}
NODE = "n1"


def chi2(counts: Sequence[int], probs: Sequence[float]) -> float:
    k = sum(counts)
    return sum((o - k * p) ** 2 / (k * p) for o, p in zip(counts, probs, strict=True) if p > 0)


# --------------------------------------------------------------------------- weighted random (alias)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 1_000_000), min_size=1, max_size=60).filter(lambda w: sum(w) > 0))
def test_alias_table_is_exact(weights: list[int]) -> None:
    """P(i) rebuilt from the table is exactly w_i / W (integers, no rounding)."""
    t = sel.alias_table(weights)
    n, w = len(weights), sum(weights)
    assert t.total == w
    assert [num for num, den in t.distribution()] == [x * n for x in weights]
    assert all(den == n * w for _, den in t.distribution())
    assert all(0 <= p <= w for p in t.prob) and all(0 <= a < n for a in t.alias)


def test_alias_sampler_chi_square_and_zero_weights() -> None:
    weights = [1, 2, 3, 4, 0, 5, 6, 7, 8, 9, 10]
    t = sel.alias_table(weights)
    k = 60_000
    counts = Counter(sel.alias_pick(t, sel.mix(i)) for i in range(k))
    assert counts[4] == 0  # weight 0: never
    probs = [w / sum(weights) for w in weights]
    assert chi2([counts[i] for i in range(len(weights))], probs) < CHI2[9]


def test_alias_empty_and_all_zero_choose_nothing() -> None:
    assert sel.alias_pick(sel.alias_table([]), 123) is None
    assert sel.alias_pick(sel.alias_table([0, 0]), 123) is None


# --------------------------------------------------------------------------- round-robin


def sequence(weights: Sequence[int], n: int) -> str:
    rr = sel.RoundRobin(weights)
    return "".join("abcdefghij"[i] if (i := rr.pick()) is not None else "-" for _ in range(n))


def test_round_robin_golden_sequences() -> None:
    assert sequence([1, 1, 1], 7) == "abcabca"
    assert sequence([5, 1, 1], 7) == "aabacaa"  # nginx's smooth WRR: no burst of a
    assert sequence([4, 6, 2], 12).count("b") == 6
    assert sequence([1, 0, 1], 4) == "acac"  # weight 0 is skipped
    assert sequence([0, 0], 3) == "---"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=12).filter(lambda w: sum(w) > 0),
       st.integers(0, 40))
def test_round_robin_cycle_counts(weights: list[int], offset: int) -> None:
    """Any W consecutive picks (from any starting point) hold endpoint i exactly w_i times."""
    rr = sel.RoundRobin(weights)
    for _ in range(offset):
        rr.pick()
    w = sum(weights)
    cycle = Counter(rr.pick() for _ in range(w))
    assert all(cycle[i] == x for i, x in enumerate(weights))


def test_round_robin_peek_does_not_advance() -> None:
    rr = sel.RoundRobin([3, 1])  # smooth: a a b a
    assert rr.peek() == rr.peek() == rr.pick() == 0
    assert rr.peek() == rr.pick() == 0
    assert rr.peek() == rr.peek() == rr.pick() == 1


# --------------------------------------------------------------------------- Maglev


@pytest.fixture(params=["python", "compiled"])
def fill(request: pytest.FixtureRequest) -> Any:
    """maglev_fill (offsets, skips, weights, M) of each core."""
    if request.param == "python":
        return sel.maglev_fill
    if not kp.COMPILED_AVAILABLE:
        pytest.fail("the compiled core is not built")
    build = maglev_builder()
    return lambda o, k, w, m: [int(x) for x in build(o, k, w, m)]


def test_paper_golden_vector(fill: Any) -> None:
    """Maglev §3.4, Table 1: M=7; B1 (offset 3, skip 4), B2 (0, 2), B3 (3, 1)."""
    old = fill([3, 0, 3], [4, 2, 1], [1, 1, 1], 7)
    assert old == [1, 0, 1, 0, 2, 2, 0]  # B2 B1 B2 B1 B3 B3 B1
    new = fill([3, 3], [4, 1], [1, 1], 7)  # B2 removed
    assert new == [0, 0, 0, 0, 1, 1, 1]  # B1 B1 B1 B1 B3 B3 B3
    d = sel.maglev_disruption(old, new, ["B2"], old_keys=["B1", "B2", "B3"], new_keys=["B1", "B3"])
    assert (d.changed, d.forced, d.collateral) == (3, 2, 1)  # one collateral change: slot 6


@pytest.mark.parametrize("n", [2, 3, 10, 97, 1000])
def test_unweighted_balance_is_exact(fill: Any, n: int) -> None:
    m = 65537
    keys = [f"10.0.{i // 256}.{i % 256}:80" for i in range(n)]
    perms = [sel.maglev_permutation(k, m) for k in keys]
    table = fill([p[0] for p in perms], [p[1] for p in perms], [1] * n, m)
    counts = Counter(table)
    assert -1 not in counts and len(counts) == n
    assert max(counts.values()) - min(counts.values()) == 1  # M prime, 1 < N < M: floor or ceil of M/N


def test_weights_one_to_two(fill: Any) -> None:
    """Envoy's documented example: weights 1:2 at M = 65537 give 21,846 / 43,691 slots."""
    perms = [sel.maglev_permutation(k, 65537) for k in ("a:1", "b:1")]
    table = fill([p[0] for p in perms], [p[1] for p in perms], [1, 2], 65537)
    assert sorted(Counter(table).values()) == [21846, 43691]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 100), min_size=2, max_size=20))
def test_weighted_slot_counts_follow_the_weights(weights: list[int]) -> None:
    m = 16381
    build = maglev_builder()
    keys = [f"10.1.0.{i}:80" for i in range(len(weights))]
    perms = [sel.maglev_permutation(k, m) for k in keys]
    table = [int(x) for x in build([p[0] for p in perms], [p[1] for p in perms], weights, m)]
    counts = Counter(table)
    total = sum(weights)
    assert -1 not in counts
    # SELECTORS.md §4 (c): |count_i − M·w_i/W| ≤ 2 observed (1.21 max at N=20); allow a little slack
    assert max(abs(counts[i] - m * w / total) for i, w in enumerate(weights)) <= 3


def test_both_builders_agree() -> None:
    rnd = random.Random(5)
    for _ in range(20):
        m = rnd.choice([7, 251, 1021, 4093])
        n = rnd.randint(1, min(m, 40))
        keys = [f"k{i}" for i in range(n)]
        weights = [rnd.randint(1, 9) for _ in range(n)]
        perms = [sel.maglev_permutation(k, m, seed=rnd.getrandbits(64)) for k in keys]
        o, k = [p[0] for p in perms], [p[1] for p in perms]
        assert [int(x) for x in maglev_builder()(o, k, weights, m)] == sel.maglev_fill(o, k, weights, m)


def test_maglev_refuses_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="N > M"):
        sel.maglev_fill([0, 1, 2], [1, 1, 1], [1, 1, 1], 2)
    with pytest.raises(ValueError, match="coprime"):
        sel.maglev_fill([0], [2], [1], 4)
    with pytest.raises(ValueError, match="unique"):
        sel.maglev_table(["a", "a"], None, 7)
    assert sel.maglev_fill([], [], [], 7) == [-1] * 7


@pytest.mark.parametrize(("n", "m"), [(10, 65537), (100, 65537)])
def test_disruption_of_one_removal(n: int, m: int) -> None:
    """SELECTORS.md §4 (e): forced is exactly the removed endpoint's slots; no new slot
    points at it; changed ≥ forced; changed ≤ 2 × the ideal k/N at M/N ≳ 500."""
    keys = [f"10.2.{i // 256}.{i % 256}:8080" for i in range(n)]
    old = sel.maglev_table(keys, None, m)
    gone = keys[n // 2]
    rest = [k for k in keys if k != gone]
    new = sel.maglev_table(rest, None, m)
    d = sel.maglev_disruption(old, new, [gone], old_keys=keys, new_keys=rest)
    assert d.forced == Counter(old)[keys.index(gone)]
    assert gone not in {rest[i] for i in new}
    assert d.changed >= d.forced and d.collateral == d.changed - d.forced
    assert d.changed_fraction <= 2 / n


def test_shuffled_endpoints_build_the_same_table() -> None:
    """The cores build from the pool in canonical ("IP:port") order, so the order in the
    EndpointSlice does not matter (SELECTORS.md §4 (d))."""
    ips = [f"10.3.0.{i}" for i in range(1, 9)]
    lookups = []
    for order in (ips, list(reversed(ips)), sorted(ips, key=lambda x: hash(x) % 7)):
        e = kp.Engine(kp.Cluster.from_objects(selector_cluster("maglev", order)), node=NODE)
        lookups.append(batch(e, "10.9.0.1", "10.96.0.10", 80, range(2000)))
    assert all((x == lookups[0]).all() for x in lookups[1:])


# --------------------------------------------------------------------------- the engine


def selector_cluster(kind: str | None, ips: Sequence[str], weights: dict[str, int] | None = None,
                     cip: str = "10.96.0.10", **extra: str) -> list[dict[str, Any]]:
    svc = service("ns", "web", cip, [port(80, "http")])
    ann = dict(extra)
    if kind:
        ann["kproxy-core.io/selector"] = kind
    if weights:
        ann["kproxy-core.io/weights"] = ",".join(f"{k}={v}" for k, v in weights.items())
    svc["metadata"]["annotations"] = ann
    fam = "IPv6" if ":" in ips[0] else "IPv4"
    return [
        node(NODE, "192.168.0.2", "2001:db8::2", pod_cidr="10.0.0.0/24"),
        svc,
        slice_("ns", "web", [ep(ip, NODE) for ip in ips], [eport(8080, "http")], family=fam),
        service("ns", "other", "10.96.0.99", [port(80)]),
    ]


def batch(e: kp.Engine, src: str, dst: str, dport: int, sports: Sequence[int] | range,
          track: bool = False, src_ips: Sequence[str] | None = None) -> np.ndarray:
    """Endpoint addresses of a stateless (or tracking) batch, as strings per packet."""
    n = len(sports)
    v6 = ":" in dst
    srcs = list(src_ips) if src_ips is not None else [src] * n
    pn = np.full(n, 6, np.uint8)
    dp = np.full(n, dport, np.uint16)
    sp = np.array(list(sports), np.uint16)
    if v6:
        s = np.array([np.frombuffer(ipaddress.IPv6Address(x).packed, np.uint8) for x in srcs])
        d = np.tile(np.frombuffer(ipaddress.IPv6Address(dst).packed, np.uint8), (n, 1))
        out = e.lookup_batch6(s, d, dp, pn, sport=sp, now=0.0, track=track)
    else:
        s = np.array([int(ipaddress.IPv4Address(x)) for x in srcs], np.uint32)
        d = np.full(n, int(ipaddress.IPv4Address(dst)), np.uint32)
        out = e.lookup_batch(s, d, dp, pn, sport=sp, now=0.0, track=track)
    return np.array([r["endpoint"] for r in e.decode(out)])


IPS = [f"10.1.0.{i}" for i in range(1, 6)]
IPS6 = [f"fd00::{i}" for i in range(1, 6)]


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_weighted_lookups_follow_the_weights(make_engine: Any, v6: bool) -> None:
    ips = IPS6 if v6 else IPS
    weights = {ip: w for ip, w in zip(ips, [1, 2, 3, 0, 4], strict=True)}
    e = make_engine(selector_cluster(None, ips, weights, cip="fd00:96::10" if v6 else "10.96.0.10"), node=NODE)
    dst = "fd00:96::10" if v6 else "10.96.0.10"
    src = "fd00:9::1" if v6 else "10.9.0.1"
    assert next(p for p in e.plans["IPv6" if v6 else "IPv4"].ports if p.service == "web").selector.kind == "weighted"
    got = Counter(batch(e, src, dst, 80, range(1, 30001)))
    assert got[f"[{ips[3]}]:8080" if v6 else f"{ips[3]}:8080"] == 0
    keys = [f"[{ip}]:8080" if v6 else f"{ip}:8080" for ip in ips]
    probs = [weights[ip] / 10 for ip in ips]
    assert chi2([got[k] for k in keys], probs) < CHI2[4]  # df = 4 (5 endpoints, one at weight 0 adds nothing)
    t = e.trace(src, dst, 80)
    assert {c["endpoint"]: c["probability"] for c in t.candidates} == {k: p for k, p in zip(keys, probs, strict=True)
                                                                      if p > 0}
    assert any(("weighted" in s and "kproxy-core.io/weights" in s) or "alias" in s for s in t.steps), t.steps


def test_round_robin_through_lookup(make_engine: Any) -> None:
    e = make_engine(selector_cluster("round-robin", IPS[:3]), node=NODE)
    first = [e.lookup("10.9.0.1", "10.96.0.10", 80, sport=s, now=0.0).endpoint[0] for s in range(1000, 1007)]
    assert first == [IPS[0], IPS[1], IPS[2], IPS[0], IPS[1], IPS[2], IPS[0]]
    # an established flow keeps its endpoint and takes no turn
    assert e.lookup("10.9.0.1", "10.96.0.10", 80, sport=1001, now=1.0).endpoint[0] == IPS[1]
    assert e.lookup("10.9.0.1", "10.96.0.10", 80, sport=2000, now=1.0).endpoint[0] == IPS[1]
    # the trace peeks: it does not take a turn either
    e.trace("10.9.0.1", "10.96.0.10", 80, sport=3000)
    assert e.lookup("10.9.0.1", "10.96.0.10", 80, sport=3001, now=1.0).endpoint[0] == IPS[2]


def test_maglev_is_consistent_across_engines_and_updates(make_engine: Any) -> None:
    objs = selector_cluster("maglev", IPS)
    a = make_engine(objs, node=NODE, seed=1)
    b = make_engine(objs, node=None, seed=999)  # another node, another seed
    sports = range(1, 5001)
    before = batch(a, "10.9.0.1", "10.96.0.10", 80, sports)
    assert (before == batch(b, "10.9.0.1", "10.96.0.10", 80, sports)).all()
    assert len(set(before)) == len(IPS)
    a.apply([service("ns", "other", "10.96.0.99", [port(81)])])  # an unrelated change
    assert (batch(a, "10.9.0.1", "10.96.0.10", 80, sports) == before).all()


def test_maglev_removal_moves_the_predicted_share(make_engine: Any) -> None:
    """SELECTORS.md §4 (f): 10^5 random connections before and after removing one endpoint
    move in the proportion the tables' disruption report predicts (binomial, 4σ)."""
    ips = [f"10.1.{i // 200}.{i % 200 + 1}" for i in range(20)]
    e = make_engine(selector_cluster("maglev", ips), node=NODE)
    rnd = np.random.default_rng(3)
    n = 100_000
    srcs = [str(ipaddress.IPv4Address(int(x))) for x in rnd.integers(0x0A090000, 0x0A09FFFF, n)]
    sports = [int(x) for x in rnd.integers(1024, 65535, n)]
    before = batch(e, "", "10.96.0.10", 80, sports, src_ips=srcs)
    gone = ips[7]
    e.apply([slice_("ns", "web", [ep(ip, NODE) for ip in ips if ip != gone], [eport(8080, "http")])])
    after = batch(e, "", "10.96.0.10", 80, sports, src_ips=srcs)
    keys = sorted(f"{ip}:8080" for ip in ips)
    rest = [k for k in keys if k != f"{gone}:8080"]
    m = sel.default_table_size(len(ips))
    assert m == sel.default_table_size(len(rest)) == 2039  # the size stays put (Cilium's ladder)
    d = sel.maglev_disruption(sel.maglev_table(keys, None, m), sel.maglev_table(rest, None, m),
                              [f"{gone}:8080"], old_keys=keys, new_keys=rest)
    moved = float((before != after).mean())
    p = d.changed_fraction
    assert abs(moved - p) <= 4 * (p * (1 - p) / n) ** 0.5, (moved, p)
    assert f"{gone}:8080" not in set(after)


def test_source_hash_keeps_a_client(make_engine: Any) -> None:
    e = make_engine(selector_cluster("source-hash", IPS), node=NODE)
    for client in ("10.9.0.1", "10.9.3.7", "10.200.1.1"):
        assert len(set(batch(e, client, "10.96.0.10", 80, range(1, 200)))) == 1
    clients = [f"10.9.{i // 250}.{i % 250 + 1}" for i in range(5000)]
    spread = Counter(batch(e, "", "10.96.0.10", 80, [5] * 5000, src_ips=clients))
    assert chi2([spread[f"{ip}:8080"] for ip in IPS], [0.2] * 5) < CHI2[4]


@pytest.mark.parametrize("kind", ["random", "weighted", "round-robin", "source-hash", "maglev"])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_batch_equals_per_call_and_twins_agree(kind: str, v6: bool) -> None:
    ips = IPS6 if v6 else IPS
    dst = "fd00:96::10" if v6 else "10.96.0.10"
    src = "fd00:9::1" if v6 else "10.9.0.1"
    objs = selector_cluster(kind, ips, {ips[0]: 5, ips[2]: 2} if kind != "random" else None, cip=dst)
    results = []
    for impl in ("compiled", "python"):
        per_call = kp.Engine(kp.Cluster.from_objects(objs), node=NODE, seed=11, impl=impl)
        calls = [per_call.lookup(src, dst, 80, sport=s, now=0.0).endpoint for s in range(1, 301)]
        in_batch = kp.Engine(kp.Cluster.from_objects(objs), node=NODE, seed=11, impl=impl)
        got = batch(in_batch, src, dst, 80, range(1, 301), track=True)
        want = [f"[{ip}]:{p}" if v6 else f"{ip}:{p}" for ip, p in calls]
        assert list(got) == want, (impl, kind)
        results.append(want)
    assert results[0] == results[1]  # compiled and python: the same choices


def test_trace_says_which_selector_and_why(make_engine: Any) -> None:
    e = make_engine(selector_cluster("maglev", IPS, **{"kproxy-core.io/maglev-table-size": "1021"}), node=NODE)
    t = e.trace("10.9.0.1", "10.96.0.10", 80)
    assert any("maglev" in s and "1021" in s and "kproxy-core.io/selector" in s for s in t.steps), t.steps
    assert abs(sum(c["probability"] for c in t.candidates) - 1.0) < 1e-9
    assert {c["endpoint"] for c in t.candidates} == {f"{ip}:8080" for ip in IPS}


def test_bad_table_size_is_refused() -> None:
    with pytest.raises(kp.ManifestError, match=r"maglev-table-size\]: '1000' is not a prime"):
        kp.Cluster.from_objects(selector_cluster("maglev", IPS, **{"kproxy-core.io/maglev-table-size": "1000"}))

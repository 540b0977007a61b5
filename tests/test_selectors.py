"""The endpoint selectors' algorithms (kproxy_core.selectors), exactly where they can be
exact and statistically (chi-square, α = 1e-6) where they cannot; and the two cores'
Maglev builders against them. See /work/shared/SELECTORS.md for the tests this follows."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kproxy_core import _engine_py, selectors
from kproxy_core.selectors import (
    AliasTable,
    RoundRobin,
    Selector,
    alias_pick,
    alias_table,
    default_table_size,
    maglev_disruption,
    maglev_fill,
    maglev_permutation,
    maglev_table,
    selection_shares,
)

try:
    from kproxy_core import _engine as _compiled
except ImportError:  # pragma: no cover - only without a build
    _compiled = None  # type: ignore[assignment]

# χ²_{1−α}(df) for α = 1e-6 (scipy chi2.ppf), from SELECTORS.md §1
CHI2_1E6 = {1: 23.928, 2: 27.631, 4: 33.377, 9: 44.811, 19: 63.677, 99: 180.792}


@pytest.fixture(params=["compiled", "python"])
def builder(request: pytest.FixtureRequest) -> Callable[..., np.ndarray]:
    """Each core's maglev_table(offsets, skips, weights, M)."""
    if request.param == "python":
        return _engine_py.maglev_table  # type: ignore[no-any-return]
    if _compiled is None:
        pytest.skip("kproxy_core._engine is not built")
    return _compiled.maglev_table  # type: ignore[no-any-return]


def chi_square(counts: Sequence[int], weights: Sequence[int]) -> tuple[float, int]:
    """X² of observed counts against the weights' shares, and df = endpoints with w > 0 − 1."""
    k = sum(counts)
    total = sum(weights)
    x2 = 0.0
    for o, w in zip(counts, weights, strict=True):
        if w:
            e = k * w / total
            assert e >= 100, "keep every expected count large"
            x2 += (o - e) ** 2 / e
    return x2, sum(1 for w in weights if w) - 1


# --------------------------------------------------------------------------- weighted random


def reconstruct(t: AliasTable) -> list[tuple[int, int]]:
    """P(i) · n·W from the table (SELECTORS.md §1): prob[i] + Σ_{j: alias[j]=i, prob[j]<W} (W − prob[j])."""
    n, w = len(t.prob), t.total
    num = list(t.prob)
    for j in range(n):
        if t.prob[j] < w:
            num[t.alias[j]] += w - t.prob[j]
    return [(x, n * w) for x in num]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.integers(0, selectors.MAX_WEIGHT), min_size=1, max_size=60).filter(any))
def test_alias_table_is_exact(weights: list[int]) -> None:
    t = alias_table(weights)
    total = sum(weights)
    assert t.total == total
    assert all(0 <= p <= total for p in t.prob) and all(0 <= a < len(weights) for a in t.alias)
    for (num, den), w in zip(reconstruct(t), weights, strict=True):
        assert num * total == w * den  # P(i) == w_i / W, in integers
    assert t.distribution() == reconstruct(t)


def test_alias_table_golden() -> None:
    # s = (15, 3, 3), W = 7: columns 1 and 2 keep 3/7 and give 4/7 to column 0
    assert alias_table([5, 1, 1]) == AliasTable((7, 3, 3), (0, 0, 0), 7)


def test_alias_with_equal_weights_is_the_uniform_pick() -> None:
    rng = random.Random(3)
    for n in (1, 2, 3, 7, 10, 100):
        t = alias_table([4] * n)
        for _ in range(300):
            h = rng.getrandbits(64)
            assert alias_pick(t, h) == selectors.pick(h, n)


def test_alias_with_nothing_to_choose() -> None:
    assert alias_pick(alias_table([]), 12345) is None
    assert alias_pick(alias_table([0, 0]), 12345) is None
    with pytest.raises(ValueError):
        alias_table([1, -1])


@pytest.mark.parametrize("weights", [
    [3, 1], [5, 3, 1, 1, 1], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [10] * 10, [7, 0, 2, 0, 1],
    [1] * 19 + [19], list(range(1, 101)),
], ids=lambda w: f"n{len(w)}")
def test_alias_sampler_chi_square(weights: list[int]) -> None:
    rng = np.random.default_rng(len(weights))
    total = sum(weights)
    k = max(40_000, 100 * total // min(w for w in weights if w) + 1)
    t = alias_table(weights)
    counts = Counter(alias_pick(t, int(h)) for h in rng.integers(0, 2**64, k, dtype=np.uint64))
    observed = [counts.get(i, 0) for i in range(len(weights))]
    assert all(o == 0 for o, w in zip(observed, weights, strict=True) if w == 0)  # zero weight: never
    x2, df = chi_square(observed, weights)
    assert x2 < CHI2_1E6[df], (x2, df)


# --------------------------------------------------------------------------- round-robin


def seq(rr: RoundRobin, k: int) -> str:
    return "".join("abcdefghij"[i] if (i := rr.pick()) is not None else "-" for _ in range(k))


def test_round_robin_golden_sequences() -> None:
    assert seq(RoundRobin([5, 1, 1]), 14) == "aabacaa" * 2  # smooth: no burst of a's
    assert seq(RoundRobin([1, 1, 1]), 7) == "abcabca"  # rotation
    assert seq(RoundRobin([3, 3, 3]), 4) == "abca"
    assert seq(RoundRobin([4, 6, 2]), 12) == "babcab" * 2
    assert seq(RoundRobin([2, 2, 1]), 10) == "abcab" * 2  # ties go to the first
    assert seq(RoundRobin([0, 1, 1]), 4) == "bcbc"  # zero weight: skipped
    assert seq(RoundRobin([0, 2, 1]), 6) == "bcb" * 2
    assert seq(RoundRobin([0, 0]), 3) == "---"  # all zero: nothing
    assert seq(RoundRobin([]), 2) == "--"


def test_round_robin_peek_does_not_advance() -> None:
    rr = RoundRobin([5, 1, 1])
    assert [rr.peek() for _ in range(3)] == [0, 0, 0]
    assert seq(rr, 7) == "aabacaa"
    rot = RoundRobin([1, 1])
    rot.pick()
    assert rot.peek() == rot.peek() == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=12).filter(any), st.integers(1, 3))
def test_round_robin_cycles_hold_every_endpoint_w_times(weights: list[int], cycles: int) -> None:
    rr = RoundRobin(weights)
    total = sum(weights)
    for _ in range(cycles):
        counts = Counter(rr.pick() for _ in range(total))
        assert [counts.get(i, 0) for i in range(len(weights))] == weights
    # smooth: each cycle is a rotation's worth of interleaving, never a burst longer than
    # the largest weight's share allows
    assert all(abs(c) <= total for c in rr.current)


def test_round_robin_rotation_windows() -> None:
    rr = RoundRobin([2] * 5)
    picks = [rr.pick() for _ in range(23)]
    for i in range(len(picks) - 5):
        assert sorted(picks[i:i + 5]) == [0, 1, 2, 3, 4]  # any window of n picks: each once


def test_round_robin_restore() -> None:
    a = RoundRobin([5, 1, 1])
    seq(a, 3)
    b = RoundRobin([5, 1, 1])
    b.restore(a)
    assert seq(b, 4) == "acaa"


# --------------------------------------------------------------------------- Maglev

B1, B2, B3 = (3, 4), (0, 2), (3, 1)  # the paper's Table 1: (offset, skip) at M = 7


def paper(builder: Callable[..., np.ndarray], perms: list[tuple[int, int]], m: int = 7) -> list[int]:
    return [int(x) for x in builder([p[0] for p in perms], [p[1] for p in perms], [1] * len(perms), m)]


def test_maglev_paper_golden_vector(builder: Callable[..., np.ndarray]) -> None:
    before = paper(builder, [B1, B2, B3])
    assert before == [1, 0, 1, 0, 2, 2, 0]  # [B2, B1, B2, B1, B3, B3, B1]
    after = paper(builder, [B1, B3])
    assert after == [0, 0, 0, 0, 1, 1, 1]  # [B1, B1, B1, B1, B3, B3, B3]
    d = maglev_disruption(before, after, [1], old_keys=["B1", "B2", "B3"], new_keys=["B1", "B3"])
    assert (d.changed, d.forced, d.collateral, d.M) == (3, 2, 1, 7)  # slot 6: one collateral change
    assert maglev_fill([3, 0, 3], [4, 2, 1], [1, 1, 1], 7) == before


def test_maglev_one_and_no_endpoint(builder: Callable[..., np.ndarray]) -> None:
    assert paper(builder, [(5, 3)]) == [0] * 7
    assert paper(builder, []) == [-1] * 7  # no endpoint: every slot empty
    assert [int(x) for x in builder([0], [1], [1], 1)] == [0]


def envoy_reference(offsets: list[int], skips: list[int], weights: list[int], m: int) -> list[int]:
    """Envoy's loop, literally (maglev_lb.cc, in integers): iteration t = 1, 2, ...; each
    endpoint in index order takes a turn unless t·w_i < target_i; a turn adds max(w)."""
    n = len(offsets)
    table = [-1] * m
    nxt = [0] * n
    target = [0] * n
    wmax = max(weights)
    filled = 0
    t = 0
    while filled < m:
        t += 1
        for i in range(n):
            if filled == m:
                break
            if t * weights[i] < target[i]:
                continue
            target[i] += wmax
            c = (offsets[i] + skips[i] * nxt[i]) % m
            while table[c] >= 0:
                nxt[i] += 1
                c = (offsets[i] + skips[i] * nxt[i]) % m
            table[c] = i
            nxt[i] += 1
            filled += 1
    return table


@st.composite
def maglev_inputs(draw: st.DrawFn) -> tuple[list[int], list[int], list[int], int]:
    m = draw(st.sampled_from([2, 3, 7, 11, 101, 251, 1021]))
    n = draw(st.integers(1, min(m, 25)))
    offsets = [draw(st.integers(0, m - 1)) for _ in range(n)]
    skips = [draw(st.integers(1, max(1, m - 1))) for _ in range(n)]
    weights = draw(st.one_of(st.just([1] * n), st.lists(st.sampled_from([1, 2, 3, 7, 50, 1000]),
                                                        min_size=n, max_size=n)))
    return offsets, skips, weights, m


@settings(max_examples=300, deadline=None)
@given(maglev_inputs())
def test_maglev_builders_agree_with_envoys_loop(args: tuple[list[int], list[int], list[int], int]) -> None:
    ref = envoy_reference(*args)
    assert maglev_fill(*args) == ref
    assert _engine_py.maglev_table(*args).tolist() == ref
    if _compiled is not None:
        assert _compiled.maglev_table(*args).tolist() == ref


def test_maglev_unweighted_balance(builder: Callable[..., np.ndarray]) -> None:
    rng = random.Random(7)
    for n, m in [(2, 251), (3, 1021), (10, 1021), (37, 4093), (100, 65537), (400, 65537), (1000, 65537)]:
        keys = [f"10.{rng.randrange(256)}.{i >> 8}.{i & 255}:{rng.randrange(1, 65536)}" for i in range(n)]
        keys = sorted(set(keys))
        perms = [maglev_permutation(k, m, 11) for k in keys]
        t = builder([p[0] for p in perms], [p[1] for p in perms], [1] * len(keys), m)
        counts = np.bincount(t, minlength=len(keys))
        assert (t >= 0).all()  # no empty slot
        assert counts.max() - counts.min() == 1, (n, m)  # ⌊M/N⌋ or ⌈M/N⌉, M prime


def test_maglev_weights_one_to_two(builder: Callable[..., np.ndarray]) -> None:
    """Envoy's documented figure: weights 1:2 at M = 65537 give 21,846 / 43,691 slots."""
    perms = [maglev_permutation(k, 65537) for k in ("10.0.0.1:80", "10.0.0.2:80")]
    t = builder([p[0] for p in perms], [p[1] for p in perms], [1, 2], 65537)
    assert np.bincount(t).tolist() == [21846, 43691]
    assert maglev_table(["10.0.0.1:80", "10.0.0.2:80"], [1, 2], 65537) == t.tolist()


def test_maglev_weighted_shares(builder: Callable[..., np.ndarray]) -> None:
    """Envoy's rule gives every endpoint one turn up front and the rest in proportion:
    count_i = T·w_i/w_max + e_i with 0 <= e_i <= 2, so count_i − M·w_i/W lies in
    [−2N·w_i/W, 2] (the light ones lead by at most 2 slots; SELECTORS.md's |·| <= 2 holds
    for most, not all, of N = 20, w in 1..100: the observed maximum here is 2.8)."""
    rng = random.Random(20)
    for _ in range(60):
        n = rng.randint(2, 20)
        w = [rng.randint(1, 100) for _ in range(n)]
        m = rng.choice([4093, 65537])
        perms = [maglev_permutation(f"10.1.0.{i}:80", m, 5) for i in range(n)]
        counts = np.bincount(builder([p[0] for p in perms], [p[1] for p in perms], w, m), minlength=n)
        total = sum(w)
        for c, wi in zip(counts.tolist(), w, strict=True):
            err = c - m * wi / total
            assert -2 * n * wi / total - 1e-9 <= err <= 2 + 1e-9
            assert abs(err) <= 2 * n  # below 0.06% of M at M = 65537


def test_maglev_skewed_weights_build_fast(builder: Callable[..., np.ndarray]) -> None:
    """One endpoint weighing 10^6 among 999 of weight 1: Envoy's loop would run ~M rounds
    of N checks; the builders order turns in a heap."""
    n, m = 1000, 100_003
    perms = [maglev_permutation(f"k{i}", m) for i in range(n)]
    t = builder([p[0] for p in perms], [p[1] for p in perms], [1_000_000] + [1] * (n - 1), m)
    counts = np.bincount(t, minlength=n)
    assert (counts[1:] >= 1).all()  # every endpoint keeps a slot
    assert counts[0] > m - 2 * n


@pytest.mark.parametrize(("offsets", "skips", "weights", "m"), [
    ([0, 1, 2], [1, 1, 1], [1, 1, 1], 2),  # N > M
    ([7], [1], [1], 7),  # offset out of range
    ([0], [0], [1], 7),  # skip 0: would never move
    ([0], [7], [1], 7),  # skip = M
    ([0], [2], [1], 8),  # gcd(skip, M) = 2: the walk would miss half the slots (and loop forever)
    ([0], [1], [0], 7),  # weight 0: leave it out
    ([0], [1], [2**32], 7),
    ([0, 1], [1], [1, 1], 7),  # lengths differ
    ([0], [1], [1], 0),
    ([0], [1], [1], 2**31),
])
def test_maglev_bad_arguments_are_refused(builder: Callable[..., np.ndarray], offsets: list[int],
                                          skips: list[int], weights: list[int], m: int) -> None:
    with pytest.raises(ValueError):
        builder(offsets, skips, weights, m)


def test_maglev_table_keys() -> None:
    with pytest.raises(ValueError):
        maglev_table(["a:1", "a:1"], None, 251)
    assert maglev_table([], None, 251) == [-1] * 251
    assert maglev_table(["a:1", "b:2"], None, 251) == maglev_table(["a:1", "b:2"], [3, 3], 251)


def test_maglev_permutation_is_stable(tmp_path: Path) -> None:
    """BLAKE2b of the key, keyed by the seed: the same in every process (not hash())."""
    assert maglev_permutation("10.0.0.1:80", 65537, 0) == maglev_permutation("10.0.0.1:80", 65537)
    golden = {(k, s): maglev_permutation(k, 65537, s) for k in ("10.0.0.1:80", "[fd00::1]:443") for s in (0, 42)}
    assert len(set(golden.values())) == 4
    import subprocess
    import sys

    code = ("from kproxy_core.selectors import maglev_permutation as p; "
            "print([p(k, 65537, s) for k in ('10.0.0.1:80', '[fd00::1]:443') for s in (0, 42)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123"}, cwd=tmp_path).stdout  # the installed package
    assert out.strip() == str(list(golden.values()))
    for m in (2, 7, 65537):
        for k in ("a", "b", "c"):
            off, skip = maglev_permutation(k, m, 9)
            assert 0 <= off < m and 1 <= skip <= m - 1
    assert maglev_permutation("a", 1) == (0, 1)


def table_of(keys: list[str], m: int, seed: int = 3) -> list[str]:
    return [keys[i] for i in maglev_table(keys, None, m, seed)]


@pytest.mark.parametrize("n", [10, 100])
def test_maglev_disruption_removing_one(n: int) -> None:
    m = 65537
    keys = sorted(f"10.2.{i >> 8}.{i & 255}:8080" for i in range(n))
    old = table_of(keys, m)
    gone = keys[n // 3]
    new = table_of([k for k in keys if k != gone], m)
    d = maglev_disruption(old, new, [gone])
    assert gone not in new  # no slot points at the removed endpoint
    assert d.forced == old.count(gone)  # exactly its slots
    assert d.changed >= d.forced and d.collateral == d.changed - d.forced
    assert d.changed_fraction <= 2 * (1 / n)  # below twice the ideal k/N (M/N >= 655)
    assert d.forced_fraction == pytest.approx(1 / n, abs=1 / m + 1e-12)
    # by index tables and keys, or removed as an old index: the same report
    oi = maglev_table(keys, None, m, 3)
    ni = maglev_table([k for k in keys if k != gone], None, m, 3)
    rest = [k for k in keys if k != gone]
    assert maglev_disruption(oi, ni, [keys.index(gone)], old_keys=keys, new_keys=rest) == d
    assert maglev_disruption(oi, ni, [gone], old_keys=keys, new_keys=rest) == d


def test_maglev_disruption_nothing_removed() -> None:
    t = table_of(["a:1", "b:1"], 251)
    assert maglev_disruption(t, t) == selectors.Disruption(0, 0, 0, 251)
    with pytest.raises(ValueError):
        maglev_disruption(t, t[:-1])


def test_shuffled_keys_need_sorting() -> None:
    """Fill order decides the table: the cores always build from the canonical order."""
    keys = [f"10.3.0.{i}:80" for i in range(1, 30)]
    a = table_of(sorted(keys), 1021)
    shuffled = keys[:]
    random.Random(1).shuffle(shuffled)
    assert table_of(sorted(shuffled), 1021) == a


def test_default_table_size() -> None:
    for n in (1, 2, 3, 10, 160, 650, 1000, 5000):
        m = default_table_size(n)
        assert selectors.is_prime(m) and m >= 100 * n


# --------------------------------------------------------------------------- shares and hashes


def test_selection_shares() -> None:
    w = [3, 1, 1]
    assert selection_shares(Selector("random"), w) == [1 / 3] * 3
    assert selection_shares(Selector("weighted"), w) == [0.6, 0.2, 0.2]
    assert selection_shares(Selector("round-robin"), w) == [0.6, 0.2, 0.2]
    table = maglev_table(["a:1", "b:1", "c:1"], w, 251)
    shares = selection_shares(Selector("maglev"), w, table)
    assert sum(shares) == pytest.approx(1.0)
    assert shares == [table.count(i) / 251 for i in range(3)]
    with pytest.raises(ValueError):
        selection_shares(Selector("source-hash"), w)
    assert selection_shares(Selector("weighted"), []) == []


def test_selector_hash_leaves_out_the_destination() -> None:
    h = selectors.selector_hash
    assert h(5, False, 0x0A000001, 1000, 80, 6) == _engine_py.packet_hash(5, False, 0x0A000001, 0, 1000, 80, 6)
    assert h(5, True, 1 << 100, 1000, 80, 6) == _engine_py.packet_hash(5, True, 1 << 100, 0, 1000, 80, 6)
    assert h(5, False, 9, 1, 2, 6, source_only=True) == h(5, False, 9, 3, 4, 17, source_only=True)
    assert selectors.maglev_slot(2**64 - 1, 1021) == 1020 and selectors.maglev_slot(0, 1021) == 0


def test_selector_codes_match_the_kinds() -> None:
    assert list(selectors.SELECTOR_CODES) == list(selectors.SELECTOR_KINDS)


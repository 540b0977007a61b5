"""Endpoint selectors: which endpoint of a pool a new connection gets.

kube-proxy picks uniformly at random (``random``, the default). A service port can ask
for another built-in selector, chosen by a plugin hook (:mod:`kproxy_core.hookspecs`) or,
without a plugin, by annotations on the Service:

``kproxy-core.io/selector``
    ``random`` | ``weighted`` | ``round-robin`` | ``source-hash`` | ``maglev``, for every
    port, or per port name: ``http=maglev,metrics=round-robin`` (an unnamed port is
    ``""``: ``=maglev``). Ports not listed keep ``random``.
``kproxy-core.io/weights``
    ``KEY=WEIGHT`` pairs separated by commas; KEY is an endpoint address (``10.0.1.5``),
    an address and port (``10.0.1.5:8080``, ``[fd00::5]:8080``) or the name of the
    endpoint's targetRef (a pod name). WEIGHT is an integer 0 ... 1,000,000; endpoints
    not listed weigh 1; weight 0 takes an endpoint out of every pool.
``kproxy-core.io/maglev-table-size``
    Maglev / source-hash lookup table size: a prime ≥ 100 × the pool's endpoints.
``kproxy-core.io/maglev-seed``
    The seed of the Maglev permutation and flow hashes (every node must use the same).

Weights with ``random`` make it ``weighted``. Nothing a plugin supplies runs per packet:
the plan carries a :class:`Selector` and the endpoints' weights, and the compiled core
builds its tables (alias tables, Maglev lookup tables) from them.

The reference algorithms live here, in plain Python over plain lists, and the engine's
pure-Python twin (:mod:`kproxy_core._engine_py`) runs exactly this code; the compiled core
(``src/kp_core.h``) mirrors it and the tests hold the two to the same result packet for
packet. A pool is always taken in kube-proxy's canonical order (sorted by the
``"IP:port"`` string), so every node builds the same tables from the same endpoints.

``random``
    kube-proxy's uniform choice: ``pick(h, n)``, the multiply-shift of the 5-tuple hash.
``weighted``
    Weighted random over a Vose alias table in integers (:func:`alias_table`,
    :func:`alias_pick`): P(i) = w_i / W exactly. Equal weights choose exactly as
    ``random`` does.
``round-robin``
    New connections take the pool in turn (:class:`RoundRobin`); unequal weights use
    nginx's smooth weighted round-robin (weights 5, 1, 1 give ``a a b a c a a``). The
    engine keeps a cursor per pool that only new connections move (a flow-table or
    ClientIP-affinity hit does not; a stateless batch is all new connections; ``trace``
    only looks); new tables keep an unchanged pool's cursor and restart a changed one.
``maglev``
    Consistent hashing: a Maglev lookup table per pool (:func:`maglev_table`), indexed by
    a hash of the connection (source address, ports, protocol) under the selector's seed,
    not the engine's: every node with the same endpoints and seed sends a connection to
    the same endpoint, and removing one endpoint moves few others' connections
    (:func:`maglev_disruption`).
``source-hash``
    The Maglev table of the pool keyed on the source address only: a client keeps its
    endpoint across connections and nodes. This replaces IPVS's ``sh`` (256 buckets
    filled in list order, where removing 1 of 10 endpoints moves about 91% of clients;
    Maglev moves about 10%).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from math import gcd
from typing import Any, Literal

SelectorKind = Literal["random", "weighted", "round-robin", "source-hash", "maglev"]
SELECTOR_KINDS: tuple[SelectorKind, ...] = ("random", "weighted", "round-robin", "source-hash", "maglev")

ANNOTATION_PREFIX = "kproxy-core.io/"
SELECTOR_ANNOTATION = ANNOTATION_PREFIX + "selector"
WEIGHTS_ANNOTATION = ANNOTATION_PREFIX + "weights"
TABLE_SIZE_ANNOTATION = ANNOTATION_PREFIX + "maglev-table-size"
SEED_ANNOTATION = ANNOTATION_PREFIX + "maglev-seed"

MAX_WEIGHT = 1_000_000
MAX_TABLE_SIZE = 5_000_011  # Envoy's limit for a Maglev table


@dataclass(frozen=True)
class Selector:
    """How one service port picks an endpoint for a new connection.

    ``table_size`` (Maglev and source-hash): the lookup table size M, a prime ≥ 100 ×
    endpoints; 0 picks the smallest suitable prime (see :func:`default_table_size`).
    ``seed``: the Maglev hash seed (every node must share it to agree). ``origin`` says who
    chose the selector, for the trace.
    """

    kind: SelectorKind = "random"
    table_size: int = 0
    seed: int = 0
    origin: str = "kube-proxy's default"

    @property
    def uniform(self) -> bool:
        return self.kind == "random"


DEFAULT_SELECTOR = Selector()


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


# Cilium's table sizes (pkg/maglev): primes, each about twice the one before
TABLE_SIZES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)


def default_table_size(endpoints: int) -> int:
    """The smallest of :data:`TABLE_SIZES` that is ≥ 100 × endpoints (Maglev's bound of at
    most 1% difference in hash space needs M > 100 N), or beyond them the smallest prime
    ≥ 100 × endpoints. A ladder, not the exact bound: M must stay put when an endpoint
    comes or goes, or every connection would move."""
    need = 100 * endpoints
    for m in TABLE_SIZES:
        if m >= need:
            return m
    m = need
    while not is_prime(m):
        m += 1
    return m


def parse_selector_annotation(text: str, port_name: str) -> str | None:
    """The selector kind text the annotation gives ``port_name``, or None."""
    text = text.strip()
    if "=" not in text:
        return text or None
    for item in text.split(","):
        if not item.strip():
            continue
        name, _, kind = item.partition("=")
        if name.strip() == port_name:
            return kind.strip()
    return None


def parse_weights_annotation(text: str) -> dict[str, int]:
    """``KEY=WEIGHT,...`` → {key: weight}; raises ValueError with the offending item."""
    out: dict[str, int] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.rpartition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{item!r} is not KEY=WEIGHT")
        try:
            weight = int(value.strip())
        except ValueError:
            raise ValueError(f"{item!r}: weight {value.strip()!r} is not an integer") from None
        if not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"{item!r}: weight must be between 0 and {MAX_WEIGHT}")
        out[key] = weight
    return out


def selector_from_annotations(
    annotations: Mapping[str, str], port_name: str, who: str
) -> tuple[Selector | None, dict[str, int]]:
    """The selector and weights the annotations ask for (None/{} when they say nothing).

    ``who`` names the object for errors (``Service ns/name``); bad values raise
    ValueError with one line naming the object and the annotation.
    """
    selector: Selector | None = None
    weights: dict[str, int] = {}
    raw = annotations.get(SELECTOR_ANNOTATION)
    table_size = 0
    seed = 0
    if TABLE_SIZE_ANNOTATION in annotations:
        text = annotations[TABLE_SIZE_ANNOTATION].strip()
        if not text.isdigit() or not is_prime(int(text)) or int(text) > MAX_TABLE_SIZE:
            raise ValueError(
                f"{who}: metadata.annotations[{TABLE_SIZE_ANNOTATION}]: {text!r} is not a prime "
                f"≤ {MAX_TABLE_SIZE}"
            )
        table_size = int(text)
    if SEED_ANNOTATION in annotations:
        text = annotations[SEED_ANNOTATION].strip()
        if not text.isdigit() or int(text) >= 1 << 64:
            raise ValueError(f"{who}: metadata.annotations[{SEED_ANNOTATION}]: {text!r} is not a 64-bit seed")
        seed = int(text)
    if raw is not None:
        kind = parse_selector_annotation(raw, port_name)
        if kind is not None:
            if kind not in SELECTOR_KINDS:
                raise ValueError(
                    f"{who}: metadata.annotations[{SELECTOR_ANNOTATION}]: {kind!r} is not one of "
                    + ", ".join(SELECTOR_KINDS)
                )
            selector = Selector(kind, table_size, seed, f"annotation {SELECTOR_ANNOTATION}")
    if WEIGHTS_ANNOTATION in annotations:
        try:
            weights = parse_weights_annotation(annotations[WEIGHTS_ANNOTATION])
        except ValueError as e:
            raise ValueError(f"{who}: metadata.annotations[{WEIGHTS_ANNOTATION}]: {e}") from None
    if selector is None and (table_size or seed) and not weights:
        return None, weights
    return selector, weights


def weight_for(weights: Mapping[str, int], ip: str, endpoint: str, target: str | None) -> int:
    """An endpoint's weight from a KEY→weight map (address:port, then address, then
    targetRef name; 1 when absent)."""
    for key in (endpoint, ip, target):
        if key is not None and key in weights:
            return weights[key]
    return 1


def uniform_weights(weights: Sequence[int]) -> bool:
    return len(set(weights)) <= 1


# --------------------------------------------------------------------------- shared by the cores

SELECTOR_CODES: dict[str, int] = {kind: i for i, kind in enumerate(SELECTOR_KINDS)}
"""The selector's code in the engine tables (``FamilyTables.port_selector``)."""

M64 = (1 << 64) - 1
WEIGHT_SALT = 0xD6E8FEB86659FD93
"""Remixes the packet hash into the weighted pick's second uniform (``mix(h ^ WEIGHT_SALT)``)."""


def mix(z: int) -> int:
    """The splitmix64 finaliser (the engine's hash step), for 0 <= z < 2**64."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def pick(h: int, n: int) -> int:
    """``((h >> 32) * n) >> 32``: an index in [0, n) from a 64-bit hash (multiply-shift)."""
    return ((h >> 32) * n) >> 32


# --------------------------------------------------------------------------- weighted random


@dataclass(frozen=True)
class AliasTable:
    """A Vose alias table in integers: column i keeps i with probability prob[i] / total
    and otherwise gives alias[i]; each column has probability 1 / n."""

    prob: tuple[int, ...]
    alias: tuple[int, ...]
    total: int  # W, the sum of the weights

    def distribution(self) -> list[tuple[int, int]]:
        """Each index's exact probability as (numerator, denominator n·W)."""
        n, w = len(self.prob), self.total
        num = list(self.prob)
        for j, (p, a) in enumerate(zip(self.prob, self.alias, strict=True)):
            if p < w and a != j:
                num[a] += w - p
        return [(x, n * w) for x in num]


def alias_table(weights: Sequence[int]) -> AliasTable:
    """Vose's alias method with integers: s_i = w_i·n; W = Σw.

    Indices with s_i < W go on the ``small`` stack, the others on ``large`` (both in index
    order, popped from the end). While both are non-empty: pop l (small) and g (large),
    prob[l] = s_l, alias[l] = g, s_g += s_l − W, and push g back by the same test. What is
    left gets prob = W (and is its own alias). P(i) is exactly w_i / W. Zero weights are
    allowed and never chosen; all-zero (or no) weights give a table that chooses nothing.
    """
    w = [int(x) for x in weights]
    if any(x < 0 for x in w):
        raise ValueError("alias_table: weights must not be negative")
    n = len(w)
    total = sum(w)
    s = [x * n for x in w]
    prob = [total] * n
    alias = list(range(n))
    small = [i for i in range(n) if s[i] < total]
    large = [i for i in range(n) if s[i] >= total]
    while small and large:
        lo = small.pop()
        g = large.pop()
        prob[lo] = s[lo]
        alias[lo] = g
        s[g] += s[lo] - total
        (small if s[g] < total else large).append(g)
    return AliasTable(tuple(prob), tuple(alias), total)


def alias_pick(table: AliasTable, h: int) -> int | None:
    """The weighted pick the cores make for a packet hash ``h``: column i = pick(h, n),
    then u = the high 64 bits of mix(h ^ WEIGHT_SALT) · W, a uniform in [0, W); keep i if
    u < prob[i], else alias[i]. None when nothing can be chosen."""
    n = len(table.prob)
    if n == 0 or table.total <= 0:
        return None
    i = pick(h, n)
    u = (mix(h ^ WEIGHT_SALT) * table.total) >> 64
    return i if u < table.prob[i] else table.alias[i]


# --------------------------------------------------------------------------- round-robin


class RoundRobin:
    """One pool's round-robin cursor, as the cores keep it.

    Equal weights: plain rotation in pool order (IPVS ``rr``). Unequal weights: nginx's
    smooth weighted round-robin: every pick adds w_i to each current weight, takes the
    largest (the first on ties) and subtracts W from it; a cycle of W picks holds endpoint
    i exactly w_i times, without bursts. Zero-weight endpoints are skipped; all-zero gives
    None. :meth:`pick` advances (a new connection); :meth:`peek` says what the next pick
    would be without advancing (the engine's read-only lookups).
    """

    __slots__ = ("current", "pos", "total", "uniform", "weights")

    def __init__(self, weights: Sequence[int]) -> None:
        self.weights = tuple(int(w) for w in weights)
        if any(w < 0 for w in self.weights):
            raise ValueError("RoundRobin: weights must not be negative")
        self.total = sum(self.weights)
        self.uniform = len({w for w in self.weights if w > 0}) <= 1
        self.pos = 0  # rotation: where the next pick starts
        self.current = [0] * len(self.weights)  # smooth: nginx's current weights

    def pick(self) -> int | None:
        return self._choose(True)

    def peek(self) -> int | None:
        return self._choose(False)

    def _choose(self, advance: bool) -> int | None:
        n = len(self.weights)
        if self.total <= 0:
            return None
        if self.uniform:
            i = self.pos
            while self.weights[i] == 0:
                i = i + 1 if i + 1 < n else 0
            if advance:
                self.pos = i + 1 if i + 1 < n else 0
            return i
        best, best_v = -1, 0
        for i, w in enumerate(self.weights):
            if w > 0 and (best < 0 or self.current[i] + w > best_v):
                best, best_v = i, self.current[i] + w
        if advance:
            for i, w in enumerate(self.weights):
                self.current[i] += w
            self.current[best] -= self.total
        return best

    def state(self) -> tuple[int, tuple[int, ...]]:
        return self.pos, tuple(self.current)

    def restore(self, other: RoundRobin) -> None:
        """Continue where ``other`` (the same pool in the previous tables) stopped."""
        self.pos = other.pos
        self.current = list(other.current)


# --------------------------------------------------------------------------- Maglev


def maglev_permutation(key: str, size: int, seed: int = 0) -> tuple[int, int]:
    """(offset, skip) of an endpoint key (``"IP:port"``) in a table of ``size`` slots:
    h1, h2 = the two 64-bit halves (little-endian) of BLAKE2b-128 of the key, keyed with
    the seed (8 bytes, little-endian); offset = h1 mod M, skip = h2 mod (M − 1) + 1.
    Stable across processes and machines (unlike Python's ``hash``)."""
    if size < 1:
        raise ValueError("maglev_permutation: the table size must be at least 1")
    d = hashlib.blake2b(key.encode(), digest_size=16, key=(seed & M64).to_bytes(8, "little")).digest()
    h1 = int.from_bytes(d[:8], "little")
    h2 = int.from_bytes(d[8:], "little")
    return h1 % size, (h2 % (size - 1) + 1) if size > 1 else 1


def check_maglev(offsets: Sequence[int], skips: Sequence[int], weights: Sequence[int], size: int) -> None:
    """What both cores' builders require (ValueError otherwise): equal lengths, N <= M,
    offsets in [0, M), skips in [1, M) and coprime with M (so that every permutation
    visits every slot; M prime makes every skip coprime), weights in 1 .. 2**32 − 1."""
    n = len(offsets)
    if len(skips) != n or len(weights) != n:
        raise ValueError("maglev: offsets, skips and weights must have the same length")
    if not 1 <= size <= 0x7FFFFFFF:
        raise ValueError(f"maglev: table size {size} is not in 1 .. 2**31 − 1")
    if n > size:
        raise ValueError(f"maglev: {n} endpoints do not fit a table of {size} slots (N > M)")
    for o, k, w in zip(offsets, skips, weights, strict=True):
        if not 0 <= o < size:
            raise ValueError(f"maglev: offset {o} is outside 0 .. {size - 1}")
        if not (1 <= k < size or k == size == 1) or gcd(k, size) != 1:
            raise ValueError(f"maglev: skip {k} is not in 1 .. {size - 1} and coprime with {size}")
        if not 1 <= w <= 0xFFFFFFFF:
            raise ValueError(f"maglev: weight {w} is not in 1 .. 2**32 − 1 (leave zero weights out)")


def maglev_fill(offsets: Sequence[int], skips: Sequence[int], weights: Sequence[int], size: int) -> list[int]:
    """The Maglev lookup table (Eisenbud et al., NSDI'16, Pseudocode 1) of endpoints given
    by their permutations (offset, skip): a list of ``size`` endpoint indexes.

    Endpoints take turns; a turn walks the endpoint's permutation (offset, offset + skip,
    ... mod M, stepped without overflow) to its next empty slot and claims it. Weights
    follow Envoy's rule in integers: in iteration t = 1, 2, ... endpoint i takes a turn
    unless t·w_i < target_i, and each turn adds max(w) to target_i (so every endpoint gets
    a slot, and weights 1:2 at M = 65537 give 21,846 / 43,691 slots). Equal weights are
    the paper's plain rounds. No endpoints: every slot is −1.
    """
    offsets = [int(x) for x in offsets]
    skips = [int(x) for x in skips]
    weights = [int(x) for x in weights]
    check_maglev(offsets, skips, weights, size)
    n = len(offsets)
    table = [-1] * size
    if n == 0:
        return table
    pos = list(offsets)

    def turn(i: int) -> None:
        c, k = pos[i], skips[i]
        while table[c] >= 0:
            c += k
            if c >= size:
                c -= size
        table[c] = i
        c += k
        pos[i] = c - size if c >= size else c

    filled = 0
    if len(set(weights)) == 1:
        while True:
            for i in range(n):
                turn(i)
                filled += 1
                if filled == size:
                    return table
    # Envoy's iterations as events: turn k + 1 of i comes in the first iteration after its
    # turn k with t·w_i >= k·max(w); within an iteration, endpoints go in index order
    wmax = max(weights)
    heap = [(1, i) for i in range(n)]
    turns = [0] * n
    while filled < size:
        t, i = heapq.heappop(heap)
        turn(i)
        filled += 1
        turns[i] += 1
        heapq.heappush(heap, (max(t + 1, -(-turns[i] * wmax // weights[i])), i))
    return table


def maglev_table(keys: Sequence[str], weights: Sequence[int] | None, size: int, seed: int = 0) -> list[int]:
    """The Maglev lookup table of endpoints named by ``keys`` (``"IP:port"``), in the order
    given (the cores use the pool's canonical order), with integer ``weights`` (None: all
    1), ``size`` slots (a prime; :func:`default_table_size` picks one) and the permutation
    seed. The same as the cores build; a list of indexes into ``keys``."""
    if len(set(keys)) != len(keys):
        raise ValueError("maglev_table: endpoint keys must be unique (equal keys share a permutation)")
    perms = [maglev_permutation(k, size, seed) for k in keys]
    return maglev_fill([p[0] for p in perms], [p[1] for p in perms],
                       [1] * len(keys) if weights is None else weights, size)


def selector_hash(seed: int, v6: bool, src: int, sport: int, dport: int, proto: int,
                  source_only: bool = False) -> int:
    """The hash Maglev (and, with ``source_only``, source-hash) indexes its table with: the
    engine's 5-tuple hash with the destination address left out and the selector's seed,
    so that it is the same on every node and for every frontend's address;
    ``source_only`` zeroes the ports and protocol too."""
    if source_only:
        sport = dport = proto = 0
    ports = (sport << 24) | (dport << 8) | proto
    seed &= M64
    if not v6:
        return mix(mix(seed ^ (src << 32)) ^ ports)
    h = mix(seed ^ (src >> 64))
    h = mix(h ^ (src & M64))
    h = mix(mix(h))  # the destination's two halves, both 0
    return mix(h ^ ports)


def maglev_slot(h: int, size: int) -> int:
    """The table slot of a hash: the high 64 bits of h·M (no modulo bias, no division)."""
    return (h * size) >> 64


@dataclass(frozen=True)
class Disruption:
    """How many of a Maglev table's M slots changed endpoint between two tables.

    ``forced``: slots of removed endpoints (their connections must move); ``collateral``:
    the other changed slots (connections moved although their endpoint stayed).
    For uniformly hashed connections the fractions are the fractions that move."""

    changed: int
    forced: int
    collateral: int
    M: int

    @property
    def changed_fraction(self) -> float:
        return self.changed / self.M if self.M else 0.0

    @property
    def forced_fraction(self) -> float:
        return self.forced / self.M if self.M else 0.0

    @property
    def collateral_fraction(self) -> float:
        return self.collateral / self.M if self.M else 0.0


def maglev_disruption(
    old_table: Sequence[Any],
    new_table: Sequence[Any],
    removed: Sequence[Hashable] = (),
    *,
    old_keys: Sequence[Hashable] | None = None,
    new_keys: Sequence[Hashable] | None = None,
) -> Disruption:
    """Compare two lookup tables of the same size slot by slot (SELECTORS.md §4):
    changed = #{s: old[s] != new[s]}, forced = #{s: old[s] is removed}, collateral =
    changed − forced.

    Tables hold endpoint keys, or indexes with ``old_keys``/``new_keys`` to name them
    (an index table's indexes shift when an endpoint leaves, so give the keys).
    ``removed``: the removed endpoints, as keys or as indexes into ``old_keys``.
    """
    if len(old_table) != len(new_table):
        raise ValueError("maglev_disruption: the tables differ in size")
    old = list(old_table) if old_keys is None else [old_keys[i] for i in old_table]
    new = list(new_table) if new_keys is None else [new_keys[i] for i in new_table]
    gone: set[Hashable] = set()
    for r in removed:
        if old_keys is not None and isinstance(r, int) and not isinstance(r, bool) and r not in old_keys:
            gone.add(old_keys[r])
        else:
            gone.add(r)
    changed = sum(1 for a, b in zip(old, new, strict=True) if a != b)
    forced = sum(1 for a in old if a in gone)
    return Disruption(changed, forced, changed - forced, len(old))


# --------------------------------------------------------------------------- shares


# A round-robin cycle is written out position by position; past this many positions
# (weights summing higher) the rules fall back to weighted random choice.
MAX_RENDERED_CYCLE = 4096


def selection_form(selector: Selector, weights: Sequence[int]) -> tuple[str, list[int], list[int]]:
    """How kube-proxy-style rules pick among the endpoints of one pool, given their weights
    in pool order (both renderers write this form, and the trace quotes it).

    Returns ``(mode, order, weights)``: ``("random", [], [])`` for kube-proxy's uniform
    cascade; ``("weighted", [], weights)`` for weighted random choice (iptables:
    ``statistic --probability w_i / (w_i + ... + w_n)``, nftables: ``numgen random mod W``
    with a range per endpoint); ``("cycle", order, [])`` for round-robin, where ``order``
    is one cycle of endpoint indexes (iptables: ``statistic --mode nth`` rules, nftables:
    ``numgen inc mod len(order)``): the kernel then takes the same turns as the engine's
    cursor, one per new connection. Maglev and source-hash have no equivalent in either
    and are written as kube-proxy's uniform choice (``render.selector_note`` says so).
    """
    weights = list(weights)
    n = len(weights)
    if n > 1 and selector.kind == "round-robin":
        if len(set(weights)) <= 1:
            return "cycle", list(range(n)), []
        if sum(weights) <= MAX_RENDERED_CYCLE:
            rr = RoundRobin(weights)
            return "cycle", [int(rr.pick()) for _ in range(sum(weights))], []  # type: ignore[arg-type]
        return "weighted", [], weights
    if n > 1 and selector.kind in ("weighted", "round-robin") and len(set(weights)) > 1:
        return "weighted", [], weights
    return "random", [], []


def selection_shares(selector: Selector, weights: Sequence[int], table: Sequence[int] | None = None) -> list[float]:
    """Each endpoint's share of new connections under ``selector``: random 1/n; weighted
    w_i/W (probability); round-robin w_i/W (of every cycle of W connections);
    maglev / source-hash: its slots / M in the lookup ``table`` (required)."""
    n = len(weights)
    if n == 0:
        return []
    if selector.kind == "random":
        return [1.0 / n] * n
    if selector.kind in ("maglev", "source-hash"):
        if table is None:
            raise ValueError(f"selection_shares: {selector.kind} needs the lookup table")
        counts = [0] * n
        for e in table:
            if 0 <= e < n:
                counts[e] += 1
        m = len(table)
        return [c / m if m else 0.0 for c in counts]
    total = sum(weights)
    return [w / total if total else 0.0 for w in weights]

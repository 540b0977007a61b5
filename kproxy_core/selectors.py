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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

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


def default_table_size(endpoints: int) -> int:
    """The smallest prime ≥ max(251, 100 × endpoints): Maglev's bound of at most 1%
    difference in hash space between endpoints needs M > 100 N."""
    m = max(251, 100 * endpoints)
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

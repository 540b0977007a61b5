"""The kernel runs the selectors the rules can express, and agrees with the engine.

Weighted random becomes ``statistic --probability w_i / (w_i + ... + w_n)`` rules (iptables)
or one ``numgen random mod W`` map with a range per endpoint (nftables): the kernel's picks
must fit the engine's probabilities (chi-square, α = 1e-6). Round-robin becomes an ``nth``
cascade or a ``numgen inc`` map: the kernel must take exactly the turns the engine takes, one
per new connection, for plain and for smooth weighted round-robin. Maglev has no equivalent:
its rules load, pick uniformly, and the engine says so.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from k8s import ep, eport, node, port, service, slice_
from netns import topology, unavailable_reason
from test_kernel_iptables import NODE, NODE_IPS, OTHER, Oracle, describe, kernel_verdict
from test_kernel_iptables import build_oracle as build_oracle_iptables
from test_kernel_nftables import build_oracle as build_oracle_nftables

import kproxy_core as kp

pytestmark = pytest.mark.slow

MODES = ("iptables", "nftables")
CHI2_CRITICAL = {2: 27.631, 3: 30.664}  # alpha = 1e-6 (SELECTORS.md §1)
N_WEIGHTED = 800


@pytest.fixture(scope="module", autouse=True)
def _kernel_available() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)


def cip(i: int) -> str:
    return f"172.30.0.{40 + i}"


def endpoint(i: int, k: int) -> str:
    return f"10.180.{k % 2}.{10 * i + k}"


def objects() -> list[dict[str, Any]]:
    """svc1 weighted 1:2:5; svc2 round-robin over 3; svc3 round-robin weighted 3:1:1; svc4 maglev
    over 2; svc5 weighted 1:3 with an endpoint at weight 0. Endpoint k of svc i: 10.180.(k%2).(10i+k)."""
    objs: list[dict[str, Any]] = [node(NODE, *NODE_IPS, pod_cidr="10.0.0.0/24"), node(OTHER, "192.168.0.3")]

    def add(i: int, n: int, **annotations: str) -> None:
        svc = service("ns1", f"svc{i}", cip(i), [port(80, "p")])
        svc["metadata"]["annotations"] = {f"kproxy-core.io/{k}": v for k, v in annotations.items()}
        objs.append(svc)
        eps = [ep(endpoint(i, k), NODE if k % 2 == 0 else OTHER) for k in range(n)]
        objs.append(slice_("ns1", f"svc{i}", eps, [eport(8080, "p")]))

    def weights(i: int, *ws: int) -> str:
        return ",".join(f"{endpoint(i, k)}={w}" for k, w in enumerate(ws))

    add(1, 3, weights=weights(1, 1, 2, 5))
    add(2, 3, selector="round-robin")
    add(3, 3, selector="round-robin", weights=weights(3, 3, 1, 1))
    add(4, 2, selector="maglev")
    add(5, 3, weights=weights(5, 1, 0, 3))
    return objs


def build(mode: str, topo: Any, objs: list[dict[str, Any]]) -> Oracle:
    return (build_oracle_nftables if mode == "nftables" else build_oracle_iptables)(topo, objs)


@pytest.fixture(scope="module", params=MODES)
def oracle(request: pytest.FixtureRequest) -> Iterator[Oracle]:
    if request.param == "nftables" and not shutil.which("nft"):
        pytest.skip("nft is not installed")
    with topology(NODE_IPS, tag=f"sel{request.param[0]}") as topo:
        yield build(request.param, topo, objects())


@pytest.mark.parametrize(("svc", "df"), [(1, 2), (5, 1)], ids=["weights-1-2-5", "weights-1-0-3"])
def test_weighted_random(oracle: Oracle, svc: int, df: int) -> None:
    probe = oracle.probe_for("pod", cip(svc), 80, count=N_WEIGHTED)
    replies = oracle.run([("pod", probe)])[0]
    assert {kernel_verdict(r) for r in replies} == {"DNAT"}, describe(replies)
    oracle.check("pod", probe, replies, expect_all=True)
    counts = Counter(str(r.endpoint) for r in replies)
    for engine in oracle.engines:
        probs = {c["endpoint"]: c["probability"] for c in engine.trace(replies[0].src or "", cip(svc), 80).candidates}
        assert len(probs) == df + 1
        chi2 = sum((counts[e] - N_WEIGHTED * p) ** 2 / (N_WEIGHTED * p) for e, p in probs.items())
        limit = CHI2_CRITICAL.get(df, 23.928)  # df=1: 23.928
        assert chi2 < limit, (counts, probs, chi2)
    if svc == 5:  # the weight-0 endpoint gets nothing, in the kernel as in the engine
        assert counts[f"{endpoint(5, 1)}:8080"] == 0


@pytest.mark.parametrize("svc", [2, 3], ids=["round-robin", "smooth-weighted-round-robin"])
def test_round_robin_takes_the_engines_turns(oracle: Oracle, svc: int) -> None:
    """One connection after another: the kernel's nth/numgen-inc counters start at 0 like the
    engine's cursor, and each new connection takes the next turn."""
    n = 15
    probe = oracle.probe_for("pod", cip(svc), 80, count=n)
    replies = oracle.run([("pod", probe)])[0]
    assert len(replies) == n and {kernel_verdict(r) for r in replies} == {"DNAT"}, describe(replies)
    kernel = [str(r.endpoint) for r in sorted(replies, key=lambda r: r.sport)]
    mode = oracle.engines[0].mode
    for impl in [e.compiled for e in oracle.engines]:
        fresh = kp.Engine(kp.Cluster.from_objects(oracle.objects), node=NODE, cluster_cidr="10.0.0.0/8",
                          mode=mode, impl="compiled" if impl else "python", seed=99)
        src = replies[0].src or ""
        engine = []
        for r in sorted(replies, key=lambda r: r.sport):
            d = fresh.lookup(src, cip(svc), 80, sport=r.sport, now=0.0)
            engine.append(f"{d.endpoint[0]}:{d.endpoint[1]}")
        assert kernel == engine, (kernel, engine)
    if svc == 3:  # 3:1:1, smooth: no burst of the heavy endpoint (pool order: "IP:port" strings)
        a, b, c = sorted(f"{endpoint(3, k)}:8080" for k in range(3))
        assert kernel[:5] == [a, b, a, c, a] and Counter(kernel[:5]) == {a: 3, b: 1, c: 1}


def test_maglev_rules_load_and_the_engine_says_they_pick_uniformly(oracle: Oracle) -> None:
    probe = oracle.probe_for("pod", cip(4), 80, count=40)
    replies = oracle.run([("pod", probe)])[0]
    assert {kernel_verdict(r) for r in replies} == {"DNAT"}, describe(replies)
    assert {str(r.endpoint) for r in replies} == {f"{endpoint(4, k)}:8080" for k in range(2)}
    notes = oracle.engines[0].render_notes()
    assert notes == [
        "ns1/svc4:p uses the maglev selector (annotation kproxy-core.io/selector), which neither iptables nor "
        "nftables rules can express: the rules pick uniformly at random"
    ]

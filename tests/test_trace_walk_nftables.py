"""nftables mode: trace's chain path is exactly the path through the rendered ``nft -f`` text.

A walker that reads only the nftables transaction (tests/nftables_walker.py) follows
each NEW packet through the base chains in hook/priority order; trace's chains,
verdict, endpoint and masquerade must match it.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nftables_walker import Packet, Walker
from test_differential import clusters, packets
from test_kube_proxy_table import masq_cluster

import kproxy_core as kp

SERVICE_CIDRS = "172.30.0.0/16,fd00:30::/112"


def _check(engine: kp.Engine, walkers: dict[str, Walker], row: tuple[str, str, int, str, int]) -> None:
    src, dst, dport, proto, sport = row
    engine.clear_flows()
    t = engine.trace(src, dst, dport, proto, sport=sport, now=0.0)
    fam = t.family
    local = set(engine.configs[fam].node_ips)
    res = walkers[fam].walk(Packet(src, dst, dport, proto.lower(), local, t.endpoint))
    assert res.chains == t.chains, (row, res, str(t))
    assert res.verdict == t.verdict, (row, res, str(t))
    assert res.endpoint == t.endpoint, (row, res, str(t))
    assert res.masquerade == t.masquerade, (row, res, str(t))


def _walkers(engine: kp.Engine) -> dict[str, Walker]:
    return {fam: Walker(engine.render("nftables", family=fam)) for fam in ("IPv4", "IPv6")}


def test_section8_cluster_paths() -> None:
    engine = kp.Engine(
        kp.Cluster.from_objects(masq_cluster()),
        node="test-node",
        cluster_cidr="10.0.0.0/8",
        seed=3,
        mode="nftables",
        service_cidrs=SERVICE_CIDRS,
    )
    walkers = _walkers(engine)
    seen: set[str] = set()
    for src in ("10.0.0.2", "192.168.0.2", "127.0.0.1", "203.0.113.2", "10.180.0.1"):
        for svc in (1, 2, 3):
            for dst, dport in (
                (f"172.30.0.4{svc}", 80),
                ("192.168.0.2", 3000 + svc),
                ("127.0.0.1", 3000 + svc),
                (f"172.30.0.4{svc}", 81),
                ("172.30.9.9", 80),  # cluster-ips-check: reject, drop
            ):
                for sport in range(1000, 1010):
                    _check(engine, walkers, (src, dst, dport, "TCP", sport))
                    seen.add(engine.trace(src, dst, dport, "TCP", sport=sport, now=0.0).verdict)
    assert seen == {"DNAT", "PASS", "REJECT", "DROP"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_clusters(data: st.DataObject) -> None:
    objs, opts = data.draw(clusters())
    opts.update(mode="nftables", service_cidrs=SERVICE_CIDRS)
    engine = kp.Engine(kp.Cluster.from_objects(objs), seed=data.draw(st.integers(0, 2**32)), **opts)
    walkers = _walkers(engine)
    rows: list[Any] = packets(data.draw, objs, False) + packets(data.draw, objs, True)
    for row in rows:
        _check(engine, walkers, row)

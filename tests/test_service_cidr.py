"""ServiceCIDR objects (networking.k8s.io): parsed, validated, applied and deleted."""

from __future__ import annotations

import pytest

import kproxy_core as kp
from kproxy_core.manifests import apply_objects


def scidr(name: str, *cidrs: object, api: str = "networking.k8s.io/v1") -> dict[str, object]:
    return {"apiVersion": api, "kind": "ServiceCIDR", "metadata": {"name": name}, "spec": {"cidrs": list(cidrs)}}


def test_parsed_per_family_in_name_order() -> None:
    c = kp.Cluster.from_objects([scidr("b", "10.96.0.0/12", "fd00:96::/112"), scidr("a", "10.100.0.0/16",
                                                                               api="networking.k8s.io/v1beta1")])
    assert c.service_cidrs_for("IPv4") == ("10.100.0.0/16", "10.96.0.0/12")
    assert c.service_cidrs_for("IPv6") == ("fd00:96::/112",)
    engine = kp.Engine(c, node=None)
    assert engine.service_cidrs == ("10.100.0.0/16", "10.96.0.0/12", "fd00:96::/112")
    assert kp.Engine(c, node=None, service_cidrs="172.30.0.0/16").service_cidrs == ("172.30.0.0/16",)


@pytest.mark.parametrize(("cidrs", "message"), [
    (["10.96.0.0/33"], 'ServiceCIDR x: spec.cidrs[0]: "10.96.0.0/33" is not a valid CIDR'),
    (["10.96.0.0/12", "10.100.0.0/16"], "ServiceCIDR x: spec.cidrs[1]: at most one CIDR per IP family"),
    ([7], "ServiceCIDR x: spec.cidrs[0]: 7 is not a valid CIDR"),
])
def test_errors(cidrs: list[object], message: str) -> None:
    with pytest.raises(kp.ManifestError) as e:
        kp.Cluster.from_objects([scidr("x", *cidrs)])
    assert str(e.value) == message


def test_leading_zeros_warn_and_delete() -> None:
    c = kp.Cluster.from_objects([scidr("k", "010.096.0.0/12")])
    assert c.service_cidrs["k"] == ("10.96.0.0/12",) and "leading zeros" in c.warnings[0]
    c2, changes = apply_objects(c, [{"type": "DELETED", "object": scidr("k")}])
    assert c2.service_cidrs == {} and not changes.all and not changes.services

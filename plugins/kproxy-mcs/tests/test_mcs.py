"""kproxy-mcs's own tests: run against the installed kproxy-core and the installed plugin
(``pip install kproxy-core plugins/kproxy-mcs pytest``, then ``pytest`` here).
kproxy-core's suite runs these against the plugin's wheel, and tests the plugin end to end
(tests/test_mcs_plugin.py: both twins, both renderers, the kernel, dig)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import kproxy_mcs as mcs
import pytest

import kproxy_core as kp
from kproxy_core.testing import assert_candidates, endpoint, plugin_manager, service


@pytest.fixture(scope="module")
def pm() -> Any:
    # the installed entry point, and nothing else that happens to be installed
    return plugin_manager(entry_points=["mcs"])


def service_import(name: str, kind: str = "ClusterSetIP", ips: list[str] | None = None,
                   ports: list[dict[str, Any]] | None = None, clusters: tuple[str, ...] = ("east",),
                   version: str = "v1alpha1", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": kind, "ports": ports if ports is not None else [{"name": "http", "port": 80}]}
    if ips is not None:
        body["ips"] = ips
    body.update(spec)
    obj: dict[str, Any] = {"apiVersion": f"multicluster.x-k8s.io/{version}", "kind": "ServiceImport",
                           "metadata": {"name": name, "namespace": "shop"}}
    status = [{"cluster": c} for c in clusters]
    if version == "v1alpha2":
        obj.update(body, clusters=status)
    else:
        obj.update(spec=body, status={"clusters": status})
    return obj


def imported_slice(name: str, cluster: str, *ips: str, port: int = 8080, hostname: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-{cluster}", "namespace": "shop",
                     "labels": {mcs.SERVICE_NAME_LABEL: name, mcs.SOURCE_CLUSTER_LABEL: cluster}},
        "addressType": "IPv6" if ":" in ips[0] else "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [endpoint(ip, hostname=hostname) for ip in ips],
    }


def test_the_derived_name_is_the_reference_controllers() -> None:
    digest = hashlib.sha256(b"shop/web").digest()
    assert mcs.derived_name("shop", "web") == "derived-" + base64.b32hexencode(digest).decode().lower()[:10]
    assert len(mcs.derived_name("shop", "web")) == len("derived-") + 10


@pytest.mark.parametrize("version", ["v1alpha1", "v1beta1", "v1alpha2"])
def test_a_clusterset_ip_reaches_every_imported_endpoint(pm: Any, version: str) -> None:
    objs = [service_import("web", ips=["172.30.9.9"], version=version),
            imported_slice("web", "east", "10.180.0.1"), imported_slice("web", "west", "10.190.0.1")]
    engine = kp.Engine(kp.Cluster.from_objects(objs, plugins=pm), node=None, plugins=pm, seed=1)
    assert_candidates(engine.trace("10.0.0.2", "172.30.9.9", 80), {"10.180.0.1:8080": 0.5, "10.190.0.1:8080": 0.5})
    got = {engine.lookup("10.0.0.2", "172.30.9.9", 80, "TCP", sport=s).endpoint for s in range(1000, 1100)}
    assert got == {("10.180.0.1", 8080), ("10.190.0.1", 8080)}
    d = engine.lookup("10.0.0.2", "172.30.9.9", 80, "TCP", sport=1)
    assert d.service == f"shop/{mcs.derived_name('shop', 'web')}:http"


def test_clusterset_dns(pm: Any) -> None:
    objs = [service_import("web", ips=["172.30.9.9", "fd00:30::9"]), imported_slice("web", "east", "10.180.0.1"),
            service_import("db", "Headless", ports=[{"name": "http", "port": 5432}]),
            imported_slice("db", "east", "10.180.0.7", hostname="db-0"),
            imported_slice("db", "west", "10.190.0.7")]
    zone = kp.Engine(kp.Cluster.from_objects(objs, plugins=pm), node=None, plugins=pm).dns_zone()

    def data(name: str, rtype: str) -> list[str]:
        return sorted(r.data for r in zone.resolve(name, rtype).records)

    assert data("web.shop.svc.clusterset.local", "A") == ["172.30.9.9"]
    assert data("web.shop.svc.clusterset.local", "AAAA") == ["fd00:30::9"]
    assert data("_http._tcp.web.shop.svc.clusterset.local", "SRV") == ["0 100 80 web.shop.svc.clusterset.local."]
    assert data("db.shop.svc.clusterset.local", "A") == ["10.180.0.7", "10.190.0.7"]
    assert data("db-0.east.db.shop.svc.clusterset.local", "A") == ["10.180.0.7"]
    assert data("10-190-0-7.west.db.shop.svc.clusterset.local", "A") == ["10.190.0.7"]
    assert data("_http._tcp.db.shop.svc.clusterset.local", "SRV") == [
        "0 50 8080 10-190-0-7.west.db.shop.svc.clusterset.local.",
        "0 50 8080 db-0.east.db.shop.svc.clusterset.local.",
    ]
    assert data("dns-version.clusterset.local", "TXT") == ['"1.0.0"']
    assert zone.resolve("east.db.shop.svc.clusterset.local", "A").nodata  # exists below, but no record
    assert zone.resolve("nope.shop.svc.clusterset.local", "A").rcode == "NXDOMAIN"


@pytest.mark.parametrize(("change", "message"), [
    ({"type": "Other"}, "spec.type: 'Other' is not ClusterSetIP or Headless"),
    ({"ports": [{"name": "http", "port": 0}]}, "spec.ports[0].port: 0 is not a port (1-65535)"),
    ({"ports": [{"port": 80}, {"port": 81, "name": "b"}]}, "spec.ports[0].name: required when the import has more"),
    ({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}, "spec.ports[1]: 80/TCP is used by another"),
    ({"ips": ["10.0.0.1", "10.0.0.2", "10.0.0.3"]}, "spec.ips: 3 addresses: at most 2"),
    ({"ips": ["10.0.0.1", "10.0.0.2"]}, "spec.ips: 10.0.0.1 and 10.0.0.2 are of one family"),
    ({"ips": ["10.0.0.300"]}, "spec.ips[0]: '10.0.0.300' is not an IP address"),
    ({"sessionAffinity": "Sticky"}, "spec.sessionAffinity: 'Sticky' is not None or ClientIP"),
])
def test_bad_imports_are_one_line_errors(pm: Any, change: dict[str, Any], message: str) -> None:
    obj = service_import("web", ips=["172.30.9.9"])
    obj["spec"].update(change)
    with pytest.raises(kp.ManifestError) as e:
        kp.Cluster.from_objects([obj], plugins=pm)
    assert str(e.value).startswith(f"ServiceImport shop/web: {message}"), str(e.value)
    assert "\n" not in str(e.value)


def test_a_clusterset_ip_import_without_an_address_waits(pm: Any) -> None:
    cluster = kp.Cluster.from_objects([service_import("web")], plugins=pm)
    assert not cluster.services
    assert any(w.startswith("ServiceImport shop/web: spec.ips: empty") for w in cluster.warnings)


def test_the_type_is_not_for_hand_written_services(pm: Any) -> None:
    svc = service("x", namespace="shop", type="ServiceImport", cluster_ip="172.30.0.1")
    with pytest.raises(kp.ManifestError, match=r"Service shop/x: spec\.type: ServiceImport is the type of the"):
        kp.Cluster.from_objects([svc], plugins=pm)

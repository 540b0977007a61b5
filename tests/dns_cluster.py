"""The cluster of CoreDNS's kubernetes-plugin handler tests (plugin/kubernetes/handler_test.go:
``svcIndex`` and ``epsIndex``) as manifests, plus a few objects for what those tests leave
out (PTR, dual-stack headless, not-ready endpoints, ExternalName by IP)."""

from __future__ import annotations

from typing import Any

from k8s import ep, eport, port, service, slice_

SERIAL = 1499347823  # the SOA serial CoreDNS's expected outputs carry


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def headless(ns: str, name: str, ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return service(ns, name, "None", ports or [])


def external(ns: str, name: str, target: str) -> dict[str, Any]:
    svc = service(ns, name, [], [port(80, "http")], type="ExternalName", externalName=target)
    svc["spec"].pop("selector")
    return svc


def named(e: dict[str, Any], hostname: str) -> dict[str, Any]:
    e["hostname"] = hostname
    return e


def coredns_objects() -> list[dict[str, Any]]:
    """handler_test.go's services and endpoints, with two departures a real cluster forces:
    hdls1's IPv6 addresses are in their own slice (an EndpointSlice holds one address
    family) and svcempty has its own ClusterIP (CoreDNS's test gives it svc1's)."""
    http = [port(80, "http")]
    return [
        namespace("testns"),
        namespace("kube-system"),
        service("kube-system", "kubedns", "10.0.0.10", [port(53, "dns", "UDP")]),
        slice_("kube-system", "kubedns", [ep("172.0.0.100")], [eport(53, "dns", "UDP")]),
        service("testns", "svc1", "10.0.0.1", http),
        slice_("testns", "svc1", [named(ep("172.0.0.1"), "ep1a")], [eport(80, "http")], name="svc1-slice1"),
        service("testns", "svcempty", "10.0.0.11", http),  # 10.0.0.1 in CoreDNS's test; the API server forbids sharing
        slice_("testns", "svcempty", [], [eport(80, "http")], name="svcempty-slice1"),
        service("testns", "svc6", "1234:abcd::1", http),
        headless("testns", "hdls1"),
        slice_(
            "testns", "hdls1",
            [ep("172.0.0.2"), ep("172.0.0.3"), named(ep("172.0.0.4"), "dup-name"), named(ep("172.0.0.5"), "dup-name")],
            [eport(80, "http")], name="hdls1-slice1",
        ),
        slice_(
            "testns", "hdls1", [ep("5678:abcd::1"), ep("5678:abcd::2")], [eport(80, "http")],
            name="hdls1-slice2", family="IPv6",
        ),
        external("testns", "external", "ext.interwebs.test"),
        external("testns", "external-to-service", "svc1.testns.svc.cluster.local."),
        headless("testns", "hdlsprtls"),
        slice_("testns", "hdlsprtls", [ep("172.0.0.20")], [], name="hdlsprtls-slice1"),
        service("unexposedns", "svc1", "10.0.0.2", http),
        service("testns", "svc-dual-stack", ["10.0.0.3", "10::3"], http),
    ]


def extra_objects() -> list[dict[str, Any]]:
    """What the handler tests leave out: a multi-port headless Service with a not-ready
    endpoint, a Service with no ready endpoint, an IP-valued externalName, UDP ports."""
    return [
        namespace("other"),
        headless("other", "db", [port(5432, "pg"), port(9187, "metrics")]),
        slice_(
            "other", "db",
            [named(ep("10.8.0.1"), "db-0"), named(ep("10.8.0.2"), "db-1"), named(ep("10.8.0.3", ready=False), "db-2")],
            [eport(5432, "pg"), eport(9187, "metrics")], name="db-1",
        ),
        headless("other", "down", [port(80, "http")]),
        slice_("other", "down", [ep("10.8.1.1", ready=False)], [eport(80, "http")], name="down-1"),
        external("other", "byip", "1.2.3.4"),
        service("other", "dns", "10.0.0.53", [port(53, "dns", "UDP"), port(53, "dns-tcp", "TCP")]),
        slice_("other", "dns", [ep("10.8.2.1")], [eport(53, "dns", "UDP"), eport(53, "dns-tcp", "TCP")], name="dns-1"),
    ]

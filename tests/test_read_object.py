"""The plugin API added for kinds kproxy-core does not know (0.2): ``kproxy_read_object``,
a Service type's own DNS zone (``dns_zones``, ``zone_records``) and its notes on the
candidates of a trace (``endpoint_notes``)."""

from __future__ import annotations

from typing import Any

import pytest

import kproxy_core as kp
from kproxy_core.errors import PluginError
from kproxy_core.plugins import make_plugin_manager

API = "example.com/v1"


def route(name: str, vip: str | None, backends: list[str], port: int = 5432, ns: str = "default") -> dict[str, Any]:
    spec: dict[str, Any] = {"port": port, "backends": backends}
    if vip is not None:
        spec["vip"] = vip
    return {"apiVersion": API, "kind": "StaticRoute", "metadata": {"namespace": ns, "name": name}, "spec": spec}


class Routes:
    """Reads a StaticRoute as a Service of type Routed and its EndpointSlice."""

    @kp.hookimpl
    def kproxy_read_object(self, obj: Any, report: Any) -> Any:
        if obj.get("kind") != "StaticRoute":
            return None
        meta, spec = obj["metadata"], obj.get("spec", {})
        if "vip" not in spec:
            report.error("spec.vip", "required")
            return []
        if not spec.get("backends"):
            report.warn("spec.backends", "empty: connections are rejected")
        name = f"route-{meta['name']}"
        ns = meta.get("namespace", "default")
        return [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name},
             "spec": {"type": "Routed", "clusterIP": spec["vip"], "ports": [{"port": spec["port"]}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": name}},
             "addressType": "IPv4", "ports": [{"name": "", "port": spec["port"], "protocol": "TCP"}],
             "endpoints": [{"addresses": [ip]} for ip in spec["backends"]]},
        ]

    @kp.hookimpl
    def kproxy_register_service_types(self, registry: Any) -> None:
        registry.register(RoutedType())


class RoutedType(kp.ServiceType):
    name = "Routed"

    def dns_zones(self, zone: str) -> list[str]:
        return ["routes.example"]

    def zone_records(self, zone: str, cluster: Any) -> list[kp.DnsRecord]:
        return [kp.DnsRecord(f"version.{zone}", "TXT", '"1"')]

    def dns_records(self, service: Any, zone: str, cluster: Any) -> list[kp.DnsRecord]:
        return [kp.DnsRecord(f"{service.name}.{service.namespace}.routes.example", "A", service.cluster_ips[0])]

    def endpoint_notes(self, service: Any, port: Any, cluster: Any) -> dict[str, str]:
        return {ep.endpoint: f"backend {i}" for i, ep in enumerate(port.endpoints)}


@pytest.fixture
def pm() -> Any:
    return make_plugin_manager([Routes()], entry_points=False)


def test_an_unknown_kind_is_read_as_core_objects(pm: Any, make_engine: Any) -> None:
    cluster = kp.Cluster.from_objects([route("db", "10.96.5.5", ["10.1.0.7"])], plugins=pm)
    assert set(cluster.services) == {("default", "route-db")} and set(cluster.slices) == {("default", "route-db")}
    engine = make_engine(cluster, node=None, plugins=pm)
    d = engine.lookup("10.1.2.3", "10.96.5.5", 5432)
    assert (d.verdict, d.service, d.endpoint) == ("DNAT", "default/route-db", ("10.1.0.7", 5432))


def test_apply_adds_replaces_and_deletes_what_the_plugin_read(pm: Any, make_engine: Any) -> None:
    engine = make_engine(kp.Cluster.from_objects([route("db", "10.96.5.5", ["10.1.0.7"])], plugins=pm),
                         node=None, plugins=pm)
    engine.apply([{"type": "MODIFIED", "object": route("db", "10.96.5.5", ["10.1.0.8"])}])
    assert engine.lookup("10.1.2.3", "10.96.5.5", 5432).endpoint == ("10.1.0.8", 5432)
    engine.apply([route("web", "10.96.5.6", ["10.1.0.9"], port=80)])
    assert engine.lookup("10.1.2.3", "10.96.5.6", 80).endpoint == ("10.1.0.9", 80)
    engine.apply([{"type": "DELETED", "object": route("db", "10.96.5.5", ["10.1.0.8"])}])
    # a new connection (the open TCP one keeps its endpoint until it times out, as conntrack's entry)
    assert engine.lookup("10.1.2.3", "10.96.5.5", 5432, sport=40000).verdict == "PASS"
    assert engine.lookup("10.1.2.3", "10.96.5.5", 5432).endpoint == ("10.1.0.8", 5432)
    assert set(engine.cluster.services) == {("default", "route-web")}
    # the same state as an engine built from scratch
    fresh = make_engine(kp.Cluster.from_objects([route("web", "10.96.5.6", ["10.1.0.9"], port=80)], plugins=pm),
                        node=None, plugins=pm)
    assert engine.cluster.services == fresh.cluster.services and engine.cluster.slices == fresh.cluster.slices


def test_errors_and_warnings_name_the_object_read(pm: Any) -> None:
    with pytest.raises(kp.ManifestError) as e:
        kp.Cluster.from_objects([route("db", None, ["10.1.0.7"])], plugins=pm)
    assert str(e.value) == "StaticRoute default/db: spec.vip: required"
    with pytest.raises(kp.ManifestError) as e:
        kp.Cluster.from_objects([route("db", "10.96.5.500", ["10.1.0.7"])], plugins=pm)
    assert str(e.value).startswith("StaticRoute default/db (read as Service default/route-db): spec.clusterIP: ")
    cluster = kp.Cluster.from_objects([route("db", "10.96.5.5", [])], plugins=pm)
    assert "StaticRoute default/db: spec.backends: empty: connections are rejected" in cluster.warnings
    # a warning goes when its object is replaced
    engine = kp.Engine(cluster, node=None, plugins=pm)
    engine.apply([route("db", "10.96.5.5", ["10.1.0.7"])])
    assert not [w for w in engine.cluster.warnings if "spec.backends" in w]


def test_a_reply_that_is_not_a_list_of_objects_names_the_hook(pm: Any) -> None:
    class Bad:
        @kp.hookimpl
        def kproxy_read_object(self, obj: Any, report: Any) -> Any:
            return {"kind": "Service"} if obj.get("kind") == "StaticRoute" else None

    bad = make_plugin_manager([Bad()], entry_points=False)
    with pytest.raises(PluginError, match="kproxy_read_object: StaticRoute default/db: returned a mapping"):
        kp.Cluster.from_objects([route("db", "10.96.5.5", [])], plugins=bad)


def test_the_first_plugin_that_answers_reads_the_object() -> None:
    class Skip:
        @kp.hookimpl
        def kproxy_read_object(self, obj: Any, report: Any) -> Any:
            return [] if obj.get("kind") == "StaticRoute" else None

    # the asking order is the plugins' names (Routes before Skip), whatever the registration order
    for plugins in ([Routes(), Skip()], [Skip(), Routes()]):
        pm = make_plugin_manager(plugins, entry_points=False)
        assert pm.implementers("kproxy_read_object") == ["Routes", "Skip"]
        assert kp.Cluster.from_objects([route("db", "10.96.5.5", ["10.1.0.7"])], plugins=pm).services

    class LateSkip(Skip):
        kproxy_priority = 5  # a higher priority is asked first

    pm = make_plugin_manager([Routes(), LateSkip()], entry_points=False)
    assert pm.implementers("kproxy_read_object") == ["LateSkip", "Routes"]
    assert not kp.Cluster.from_objects([route("db", "10.96.5.5", ["10.1.0.7"])], plugins=pm).services


def test_known_kinds_can_be_read_differently() -> None:
    class Relabel:
        """EndpointSlices labelled example.com/owner belong to that Service."""

        @kp.hookimpl
        def kproxy_read_object(self, obj: Any, report: Any) -> Any:
            owner = obj.get("metadata", {}).get("labels", {}).get("example.com/owner")
            if obj.get("kind") != "EndpointSlice" or owner is None:
                return None
            meta = {**obj["metadata"], "labels": {"kubernetes.io/service-name": owner}}
            return [{**obj, "metadata": meta}]

    pm = make_plugin_manager([Relabel()], entry_points=False)
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
           "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}}
    sl = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
          "metadata": {"name": "x", "namespace": "default", "labels": {"example.com/owner": "web"}},
          "addressType": "IPv4", "ports": [{"name": "", "port": 80, "protocol": "TCP"}],
          "endpoints": [{"addresses": ["10.1.0.1"]}]}
    engine = kp.Engine(kp.Cluster.from_objects([svc, sl], plugins=pm), node=None, plugins=pm)
    assert engine.lookup("10.1.2.3", "10.96.0.10", 80).endpoint == ("10.1.0.1", 80)
    assert kp.Engine(kp.Cluster.from_objects([svc, sl]), node=None).lookup("10.1.2.3", "10.96.0.10", 80).verdict \
        == "REJECT"  # without the plugin the slice has no Service


def test_a_type_answers_in_a_zone_of_its_own(pm: Any) -> None:
    engine = kp.Engine(kp.Cluster.from_objects([route("db", "10.96.5.5", ["10.1.0.7"])], plugins=pm),
                       node=None, plugins=pm)
    zone = engine.dns_zone()
    assert zone.extra_zones == ("routes.example",)
    a = zone.resolve("route-db.default.routes.example", "A")
    assert (a.rcode, [r.data for r in a.records], a.authoritative) == ("NOERROR", ["10.96.5.5"], True)
    assert zone.resolve("route-db.default.routes.example", "AAAA").nodata
    assert zone.resolve("default.routes.example", "A").nodata  # a name with names below it exists
    missing = zone.resolve("nope.default.routes.example", "A")
    assert missing.rcode == "NXDOMAIN" and missing.authority[0].rtype == "SOA"
    assert missing.authority[0].name == "routes.example"
    assert zone.resolve("routes.example", "SOA").records[0].data.startswith("ns.dns.routes.example. ")
    assert zone.resolve("version.routes.example", "TXT").records[0].data == '"1"'
    assert zone.resolve("www.example.org", "A").rcode == "REFUSED"
    # the cluster zone is as before
    assert zone.resolve("route-db.default.svc.cluster.local", "A").records[0].data == "10.96.5.5"


@pytest.mark.parametrize(("zones", "records", "message"), [
    (["cluster.local"], [], "dns_zones() named 'cluster.local', which is not a zone of its own"),
    (["x.cluster.local"], [], "dns_zones() named 'x.cluster.local'"),
    ([], [kp.DnsRecord("a.example.org", "A", "10.0.0.1")], "a.example.org is outside the zones served"),
])
def test_records_and_zones_that_do_not_fit_are_plugin_errors(zones: list[str], records: list[kp.DnsRecord],
                                                             message: str) -> None:
    class Odd(RoutedType):
        def dns_zones(self, zone: str) -> list[str]:
            return zones

        def dns_records(self, service: Any, zone: str, cluster: Any) -> list[kp.DnsRecord]:
            return records

    class OddRoutes(Routes):
        @kp.hookimpl
        def kproxy_register_service_types(self, registry: Any) -> None:
            registry.register(Odd())

    pm = make_plugin_manager([OddRoutes()], entry_points=False)
    engine = kp.Engine(kp.Cluster.from_objects([route("db", "10.96.5.5", ["10.1.0.7"])], plugins=pm),
                       node=None, plugins=pm)
    with pytest.raises(PluginError, match=message.replace("(", r"\(").replace(")", r"\)")):
        engine.dns_zone()


def test_a_trace_shows_the_notes_of_the_candidates(pm: Any, make_engine: Any) -> None:
    engine = make_engine(kp.Cluster.from_objects([route("db", "10.96.5.5", ["10.1.0.7", "10.1.0.8"])], plugins=pm),
                         node=None, plugins=pm)
    t = engine.trace("10.1.2.3", "10.96.5.5", 5432, sport=1000)
    assert [c["note"] for c in t.candidates] == ["backend 0", "backend 1"]
    text = str(t)
    assert "note" in text and "backend 1" in text
    plain = make_engine(kp.Cluster.from_objects([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}}]), node=None)
    assert "note" not in str(plain.trace("10.1.2.3", "10.96.0.10", 80))

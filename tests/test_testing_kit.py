"""kproxy_core.testing (the kit for plugin authors) and kproxy_core.pytest_plugin.

The builders are checked against the real loader (what they give loads without a
warning and reads back as the Services, slices and Nodes asked for) and against the
manifests kubectl prints; the trace helpers against real traces; the pytest plugin in a
child pytest, as a plugin author's suite uses it.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import kproxy_core as kp
import kproxy_core.pytest_plugin as kp_pytest_plugin
import kproxy_core.testing as kit
from kproxy_core.plugins import AUTOLOAD_OFF_ENV
from kproxy_core.testing import (
    assert_candidates,
    assert_chosen_from,
    assert_filtered,
    candidates,
    endpoint,
    endpoint_slice,
    filtered,
    namespace,
    node,
    plugin_manager,
    port,
    service,
)

ROOT = Path(__file__).resolve().parent.parent


def _example(doc: str | None) -> str:
    """The indented block after the first ``::`` of a docstring."""
    lines = (doc or "").splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip().endswith("::")) + 1
    block = []
    for line in lines[start:]:
        if line.strip() and not line.startswith("    "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


def _load(*objs: dict[str, Any], plugins: Any = None) -> kp.Cluster:
    return kp.Cluster.from_objects(list(objs), plugins=plugins or plugin_manager())


# --------------------------------------------------------------------------- the docs


def test_the_module_example_runs() -> None:
    code = _example(kit.__doc__)
    assert "assert_candidates(" in code
    exec(compile(code, "kproxy_core/testing.py docstring", "exec"), {})


def test_everything_public_is_documented_and_typed() -> None:
    for name in kit.__all__:
        obj = getattr(kit, name)
        if callable(obj) and inspect.isfunction(obj):
            assert obj.__doc__, name
            sig = inspect.signature(obj)
            assert sig.return_annotation is not inspect.Signature.empty, name
            assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values()), name


# --------------------------------------------------------------------------- plugin managers


class PreferZone:
    """Endpoints in ``zone`` weigh ``inside``, the others ``outside`` (0: left out); no
    answer when no endpoint is in the zone."""

    def __init__(self, zone: str, inside: int = 1, outside: int = 0) -> None:
        self.zone, self.inside, self.outside = zone, inside, outside

    @kp.hookimpl
    def kproxy_endpoint_weights(self, endpoints: Any) -> list[int] | None:
        if not any(e.zone == self.zone for e in endpoints):
            return None
        return [self.inside if e.zone == self.zone else self.outside for e in endpoints]


ZONED = [
    service("web"),
    endpoint_slice("web", [endpoint("10.1.0.1", zone="a"), endpoint("10.1.0.2", zone="b"),
                           endpoint("10.1.0.3", zone="a"), endpoint("10.1.0.4", zone="c")]),
]


def _zoned_trace(pm: Any, objs: list[dict[str, Any]] = ZONED) -> kp.Trace:
    engine = kp.Engine(kp.Cluster.from_objects(objs, plugins=pm), node=None, plugins=pm, seed=7)
    trace: kp.Trace = engine.trace("10.2.0.1", "10.96.0.10", 80, sport=40000)
    return trace


def test_a_zone_preferring_plugin_keeps_the_zone() -> None:
    pm = plugin_manager(PreferZone("a"))
    t = _zoned_trace(pm)
    assert_candidates(t, {"10.1.0.1:8080": 0.5, "10.1.0.3:8080": 0.5})
    assert_filtered(t, {"10.1.0.2:8080": "weight 0", "10.1.0.4:8080": "weight 0"})
    assert_chosen_from(t, ["10.1.0.1:8080", "10.1.0.3:8080"])


def test_a_zone_preferring_plugin_weighs_the_zone() -> None:
    t = _zoned_trace(plugin_manager(PreferZone("a", inside=4, outside=1)))
    assert_candidates(t, {"10.1.0.1:8080": 0.4, "10.1.0.2:8080": 0.1, "10.1.0.3:8080": 0.4, "10.1.0.4:8080": 0.1})
    assert_filtered(t, {})


def test_a_zone_preferring_plugin_without_the_zone_leaves_it_to_kube_proxy() -> None:
    t = _zoned_trace(plugin_manager(PreferZone("z")))
    assert_candidates(t, {f"10.1.0.{i}:8080": 0.25 for i in range(1, 5)})


def test_the_manager_holds_the_bundled_plugins_and_the_ones_given() -> None:
    p = PreferZone("a")
    pm = plugin_manager(p)
    assert pm.is_registered(p)
    assert {"LoadBalancer", "ExternalName"} <= set(pm.registry.names())
    bare = plugin_manager(p, bundled=False)
    assert bare.is_registered(p) and "LoadBalancer" not in bare.registry.names()


def test_no_entry_point_is_loaded_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AUTOLOAD_OFF_ENV, raising=False)
    installed = {ep.name for ep in importlib.metadata.entry_points(group="kproxy")}
    assert "loadbalancer" in installed  # kproxy-core declares its bundled plugins as entry points
    pm = plugin_manager(bundled=False)
    assert pm.plugin_names() == [] and "LoadBalancer" not in pm.registry.names()


def test_the_environment_disables_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KPROXY_DISABLE_PLUGINS", "loadbalancer")  # a user's setting, not the test's
    assert plugin_manager().registry.owner("LoadBalancer") == "loadbalancer"


def test_a_named_entry_point_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(AUTOLOAD_OFF_ENV, "1")  # named ones are loaded all the same
    pm = plugin_manager(bundled=False, entry_points=["loadbalancer"])
    assert pm.plugin_names() == ["loadbalancer"] and pm.registry.owner("LoadBalancer") == "loadbalancer"
    assert plugin_manager(bundled=False, entry_points="loadbalancer").plugin_names() == ["loadbalancer"]


def test_an_entry_point_that_is_not_installed_is_an_error() -> None:
    with pytest.raises(kp.PluginError, match="no-such-plugin"):
        plugin_manager(entry_points=["no-such-plugin"])


def test_a_misspelled_hook_fails_at_once() -> None:
    class Typo:
        @kp.hookimpl
        def kproxy_endpoint_weight(self, endpoints: Any) -> None:
            return None

    with pytest.raises(kp.PluginError, match="kproxy_endpoint_weight"):
        plugin_manager(Typo())


# --------------------------------------------------------------------------- builders


def test_the_defaults_are_what_kubectl_prints() -> None:
    assert service("web") == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
            "sessionAffinity": "None",
            "type": "ClusterIP",
        },
        "status": {"loadBalancer": {}},
    }
    assert endpoint_slice("web", ["10.1.0.5"]) == {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-ipv4",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web",
                       "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.1.0.5"],
                       "conditions": {"ready": True, "serving": True, "terminating": False}}],
        "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
    }
    assert node("n1") == {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1", "kubernetes.io/os": "linux"}},
        "spec": {},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": "n1"}]},
    }
    assert namespace("shop") == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop"}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def test_the_defaults_load_without_warnings() -> None:
    cluster = _load(service("web"), endpoint_slice("web", ["10.1.0.5", "10.1.0.6"]), node("n1"), namespace("shop"))
    assert cluster.warnings == ()
    svc = cluster.services[("default", "web")]
    assert (svc.type, svc.cluster_ips, svc.ip_families) == ("ClusterIP", ("10.96.0.10",), ("IPv4",))
    assert not svc.headless
    assert svc.ports == (kp.ServicePort("", "TCP", 80, 0, 80),)
    sl = cluster.slices[("default", "web-ipv4")]
    assert (sl.service_name, sl.address_type) == ("web", "IPv4")
    assert [(e.addresses, e.ready, e.serving, e.terminating) for e in sl.endpoints] == [
        (("10.1.0.5",), True, True, False), (("10.1.0.6",), True, True, False)]
    assert [(p.name, p.protocol, p.port) for p in sl.ports] == [("", "TCP", 8080)]
    assert cluster.nodes["n1"].addresses == (("InternalIP", "10.0.0.1"),)
    assert "shop" in cluster.namespaces
    engine = kp.Engine(cluster, node="n1", plugins=plugin_manager())
    assert engine.warnings == ()
    assert_candidates(engine.trace("10.2.0.1", "10.96.0.10", 80), {"10.1.0.5:8080": 0.5, "10.1.0.6:8080": 0.5})


SERVICES: dict[str, dict[str, Any]] = {  # name -> service() keywords
    "clusterip": {},
    "nodeport": {"type": "NodePort", "ports": [("http", 80), ("dns", 53, "UDP")]},
    "lb": {"type": "LoadBalancer", "load_balancer_ips": ["192.0.2.1", {"hostname": "lb.example"}]},
    "lb-local": {"type": "LoadBalancer", "external_traffic_policy": "Local"},
    "lb-no-node-ports": {"type": "LoadBalancer", "allocateLoadBalancerNodePorts": False},
    "externalname": {"type": "ExternalName", "externalName": "db.example.com"},
    "headless": {"headless": True},
    "no-cluster-ip": {"cluster_ip": None},
    "dual-stack": {"cluster_ips": ["10.96.0.10", "fd00:96::10"]},
    "everything": {"selector": {"app": "a"}, "labels": {"team": "x"}, "annotations": {"note": "y"},
                   "external_ips": ["192.0.2.9"], "internal_traffic_policy": "Local",
                   "session_affinity_timeout": 600, "ports": [port(80, name="http", target_port="web")]},
}


@pytest.mark.parametrize("name", list(SERVICES))
def test_every_kind_of_service_loads_without_warnings(name: str) -> None:
    svc = service(name, **SERVICES[name])
    slices = [endpoint_slice(name, ["10.1.0.5"], name=f"{name}-{i}", ports=[(p.get("name", ""), 8080, p["protocol"])])
              for i, p in enumerate(svc["spec"]["ports"])]
    cluster = _load(svc, *slices, node("n1"))
    assert cluster.warnings == ()
    assert kp.Engine(cluster, node="n1", plugins=plugin_manager()).warnings == ()


def test_services_read_back_as_built() -> None:
    objs = []
    for i, (name, kw) in enumerate(SERVICES.items()):
        if "cluster_ips" not in kw and "cluster_ip" not in kw:
            kw = {"cluster_ip": f"10.96.1.{i}", **kw}
        objs.append(service(name, **kw))
    cluster = _load(*objs)
    assert cluster.warnings == ()
    get = {name: cluster.services[("default", name)] for name in SERVICES}
    assert [p.node_port != 0 for p in get["nodeport"].ports] == [True, True]
    assert [(p.name, p.protocol) for p in get["nodeport"].ports] == [("http", "TCP"), ("dns", "UDP")]
    lb = get["lb"]
    assert [(i.ip, i.hostname) for i in lb.load_balancer_ingress] == [("192.0.2.1", ""), ("", "lb.example")]
    assert lb.external_traffic_policy == "Cluster" and lb.ports[0].node_port
    local = get["lb-local"]
    assert local.external_traffic_policy == "Local" and 30000 <= local.health_check_node_port <= 32767
    assert get["lb-no-node-ports"].ports[0].node_port == 0
    assert (get["externalname"].external_name, get["externalname"].cluster_ips) == ("db.example.com", ())
    assert get["headless"].headless and get["no-cluster-ip"].cluster_ips == ()
    assert get["clusterip"].cluster_ips == ("10.96.1.0",)
    assert get["dual-stack"].cluster_ips == ("10.96.0.10", "fd00:96::10")
    assert get["dual-stack"].ip_families == ("IPv4", "IPv6")
    e = get["everything"]
    assert (e.selector, e.labels, e.annotations) == ({"app": "a"}, {"team": "x"}, {"note": "y"})
    assert (e.external_ips, e.internal_traffic_policy) == (("192.0.2.9",), "Local")
    assert (e.session_affinity, e.affinity_timeout) == ("ClientIP", 600)
    assert e.ports == (kp.ServicePort("http", "TCP", 80, 0, "web"),)


def test_node_ports_are_stable_distinct_and_kept_when_given() -> None:
    a = service("a", type="NodePort", ports=[("http", 80), ("https", 443), port(8080, name="alt", node_port=30080)])
    got = [p["nodePort"] for p in a["spec"]["ports"]]
    assert got == [p["nodePort"] for p in service("a", type="NodePort", ports=[
        ("http", 80), ("https", 443), port(8080, name="alt", node_port=30080)])["spec"]["ports"]]
    assert len(set(got)) == 3 and got[2] == 30080 and all(30000 <= n <= 32767 for n in got)
    b = service("b", type="NodePort", cluster_ip="10.96.0.11", ports=[("http", 80)])
    assert b["spec"]["ports"][0]["nodePort"] not in got  # another Service, another port (this pair)
    assert _load(a, b).warnings == ()


def test_spec_keywords_are_merged_last() -> None:
    svc = service("web", type="LoadBalancer", loadBalancerSourceRanges=["192.0.2.0/24"], sessionAffinity="ClientIP")
    assert svc["spec"]["loadBalancerSourceRanges"] == ["192.0.2.0/24"]
    assert svc["spec"]["sessionAffinity"] == "ClientIP"
    assert _load(svc).services[("default", "web")].load_balancer_source_ranges == ("192.0.2.0/24",)


def test_the_builders_copy_what_they_are_given() -> None:
    p = port(80, name="http")
    ep = endpoint("10.1.0.5", pod="web-0")
    svc = service("web", ports=[p])
    sl = endpoint_slice("web", [ep], ports=[("http", 8080)])
    svc["spec"]["ports"][0]["port"] = 81
    sl["endpoints"][0]["addresses"].append("10.1.0.6")
    assert p["port"] == 80 and ep["addresses"] == ["10.1.0.5"] and "namespace" not in ep["targetRef"]


@pytest.mark.parametrize(("kwargs", "conditions"), [
    ({}, (True, True, False)),
    ({"ready": False}, (False, False, False)),
    ({"terminating": True}, (False, True, True)),
    ({"terminating": True, "serving": False}, (False, False, True)),
    ({"ready": False, "serving": True}, (False, True, False)),
])
def test_endpoint_conditions_follow_the_controller(kwargs: dict[str, Any], conditions: tuple[bool, ...]) -> None:
    e = endpoint("10.1.0.5", **kwargs)
    assert (e["conditions"]["ready"], e["conditions"]["serving"], e["conditions"]["terminating"]) == conditions
    sl = _load(service("web"), endpoint_slice("web", [e])).slices[("default", "web-ipv4")]
    assert (sl.endpoints[0].ready, sl.endpoints[0].serving, sl.endpoints[0].terminating) == conditions


def test_endpoint_fields_read_back() -> None:
    e = endpoint("10.1.0.5", node="n1", zone="a", pod="web-0", hostname="web-0", hint_zones=["a"], hint_nodes=["n1"])
    cluster = _load(service("web", headless=True), endpoint_slice("web", [e], namespace="default"), node("n1"))
    assert cluster.warnings == ()
    got = cluster.slices[("default", "web-ipv4")].endpoints[0]
    assert (got.node_name, got.zone, got.hostname, got.target) == ("n1", "a", "web-0", "Pod default/web-0")
    assert (got.zone_hints, got.node_hints) == (("a",), ("n1",))


def test_slices_infer_their_address_type_and_name() -> None:
    assert endpoint_slice("web", ["fd00::5"])["addressType"] == "IPv6"
    assert endpoint_slice("web", ["fd00::5"])["metadata"]["name"] == "web-ipv6"
    assert endpoint_slice("web", ["db.example.com"])["addressType"] == "FQDN"
    assert endpoint_slice("web", [])["addressType"] == "IPv4"
    assert endpoint_slice("web", [], name="web-abcde")["metadata"]["name"] == "web-abcde"
    assert endpoint_slice("web", ["fd00::5"], address_type="IPv4")["addressType"] == "IPv4"


def test_slice_ports_and_labels() -> None:
    sl = endpoint_slice("web", ["10.1.0.5"], ports=[8080, ("http", 8081), ("dns", 53, "UDP"),
                                                    {"name": "x", "port": 1, "protocol": "SCTP", "appProtocol": "y"}],
                        labels={"extra": "1", "endpointslice.kubernetes.io/managed-by": "me"})
    assert sl["ports"] == [{"name": "", "port": 8080, "protocol": "TCP"},
                           {"name": "http", "port": 8081, "protocol": "TCP"},
                           {"name": "dns", "port": 53, "protocol": "UDP"},
                           {"name": "x", "port": 1, "protocol": "SCTP", "appProtocol": "y"}]
    assert sl["metadata"]["labels"] == {"kubernetes.io/service-name": "web",
                                        "endpointslice.kubernetes.io/managed-by": "me", "extra": "1"}
    with pytest.raises(TypeError, match="a port is a number"):
        endpoint_slice("web", [], ports=[("http",)])  # type: ignore[list-item]


def test_dual_stack_with_named_ports_reaches_both_families() -> None:
    objs = [service("web", cluster_ips=["10.96.0.10", "fd00:96::10"], ports=[("http", 80), ("metrics", 9090)]),
            endpoint_slice("web", ["10.1.0.5"], ports=[("http", 8080), ("metrics", 9091)]),
            endpoint_slice("web", ["fd00:1::5"], ports=[("http", 8080), ("metrics", 9091)])]
    cluster = _load(*objs)
    assert cluster.warnings == ()
    engine = kp.Engine(cluster, node=None, plugins=plugin_manager())
    assert_candidates(engine.trace("10.2.0.1", "10.96.0.10", 9090), {"10.1.0.5:9091": 1.0})
    assert_candidates(engine.trace("fd00:2::1", "fd00:96::10", 80), {"[fd00:1::5]:8080": 1.0})


def test_nodes_read_back() -> None:
    n = _load(node("n1", addresses=["10.0.0.1", "fd00::1"], zone="a", labels={"role": "edge"},
                   pod_cidrs=["10.1.0.0/24", "fd00:1::/64"])).nodes["n1"]
    assert n.addresses == (("InternalIP", "10.0.0.1"), ("InternalIP", "fd00::1"))
    assert (n.zone, n.labels["role"], n.pod_cidrs) == ("a", "edge", ("10.1.0.0/24", "fd00:1::/64"))


# --------------------------------------------------------------------------- trace helpers


@pytest.fixture(scope="module")
def zoned() -> kp.Trace:
    """Candidates 10.1.0.1 and .3 (0.5 each); .2 and .4 filtered out (weight 0)."""
    return _zoned_trace(plugin_manager(PreferZone("a")))


def test_the_helpers_read_a_trace_and_its_dict(zoned: kp.Trace) -> None:
    assert candidates(zoned) == candidates(zoned.to_dict()) == {"10.1.0.1:8080": 0.5, "10.1.0.3:8080": 0.5}
    assert set(filtered(zoned)) == {"10.1.0.2:8080", "10.1.0.4:8080"}
    assert_candidates(zoned.to_dict(), {"10.1.0.3:8080": 0.5, "10.1.0.1:8080": 0.5})
    assert_candidates(zoned, {"10.1.0.3:8080": 0.5 + 1e-12, "10.1.0.1:8080": 0.5})
    assert_candidates(zoned, {"10.1.0.3:8080": 0.51, "10.1.0.1:8080": 0.5}, tolerance=0.02)
    with pytest.raises(TypeError, match=r"kproxy_core\.Trace"):
        candidates({"verdict": "DNAT"})


def test_a_wrong_probability_is_shown_beside_the_right_one(zoned: kp.Trace) -> None:
    with pytest.raises(AssertionError) as e:
        assert_candidates(zoned, {"10.1.0.1:8080": 0.25, "10.1.0.3:8080": 0.5})
    lines = str(e.value).splitlines()
    assert lines[0] == ("the trace's candidates are not the expected ones "
                        f"(verdict DNAT, service default/web via ClusterIP, chosen {zoned.endpoint}):")
    assert lines[1].split() == ["endpoint", "expected", "got"]
    assert lines[2].split() == ["10.1.0.1:8080", "0.25", "0.5", "wrong", "probability"]
    assert lines[3].split() == ["10.1.0.3:8080", "0.5", "0.5"]


def test_a_missing_endpoint_says_why_it_was_filtered(zoned: kp.Trace) -> None:
    with pytest.raises(AssertionError, match=r"10\.1\.0\.2:8080 +0\.25 +- +missing \(filtered out: weight 0"):
        assert_candidates(zoned, {"10.1.0.1:8080": 0.25, "10.1.0.2:8080": 0.25, "10.1.0.3:8080": 0.5})


def test_an_extra_endpoint_is_named(zoned: kp.Trace) -> None:
    with pytest.raises(AssertionError, match=r"10\.1\.0\.3:8080 +- +0\.5 +extra"):
        assert_candidates(zoned, {"10.1.0.1:8080": 1.0})


def test_assert_filtered_checks_the_set_and_the_reasons(zoned: kp.Trace) -> None:
    assert_filtered(zoned, {"10.1.0.2:8080": "weight 0", "10.1.0.4:8080": ""})
    with pytest.raises(AssertionError, match=r"10\.1\.0\.2:8080 +'not ready' +.weight 0 .* +wrong reason"):
        assert_filtered(zoned, {"10.1.0.2:8080": "not ready", "10.1.0.4:8080": "weight 0"})
    with pytest.raises(AssertionError, match=r"10\.1\.0\.4:8080 +- +.weight 0 .* +extra"):
        assert_filtered(zoned, {"10.1.0.2:8080": "weight 0"})
    with pytest.raises(AssertionError, match=r"10\.1\.0\.1:8080 +'x' +- +not filtered out \(a candidate\)"):
        assert_filtered(zoned, {"10.1.0.1:8080": "x", "10.1.0.2:8080": "", "10.1.0.4:8080": ""})


def test_assert_chosen_from(zoned: kp.Trace) -> None:
    assert_chosen_from(zoned, candidates(zoned))
    with pytest.raises(AssertionError, match=rf"the trace chose {zoned.endpoint} \(verdict DNAT, service "
                                             r"default/web via ClusterIP\), not one of 10\.1\.0\.2:8080; candidates: "):
        assert_chosen_from(zoned, ["10.1.0.2:8080"])
    engine = kp.Engine(_load(service("web")), node=None, plugins=plugin_manager())
    nothing = engine.trace("10.2.0.1", "10.96.0.99", 80)
    with pytest.raises(AssertionError, match=r"the trace chose no endpoint \(verdict PASS\)"):
        assert_chosen_from(nothing, ["10.1.0.1:8080"])
    assert_candidates(nothing, {})


# --------------------------------------------------------------------------- the pytest plugin


def _registered() -> bool:
    return any(ep.value == "_kproxy_pytestplugin" for ep in importlib.metadata.entry_points(group="pytest11"))


def _child_pytest(tmp_path: Path, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """pytest in a child process on ``files``, in an environment as a plugin author has it
    (no KPROXY_* variables), with kproxy-core's pytest plugin as pytest finds it installed
    (or named with -p while this source tree's entry point is not installed yet)."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KPROXY_", "PYTEST_"))}
    load = [] if _registered() else ["-p", "_kproxy_pytestplugin"]
    # in file order: CHILD's tests are a sequence (each checks what the one before left
    # behind), which pytest-randomly, when installed, would shuffle
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                           *load, *files],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


CHILD = '''
import inspect
import os

import kproxy_core as kp
from kproxy_core import plugins
from kproxy_core.testing import plugin_manager

ENV = "KPROXY_DISABLE_PLUGIN_AUTOLOAD"
state = {}


class Marker:
    @kp.hookimpl
    def kproxy_endpoint_weights(self, endpoints):
        return None


def test_1_a_default_to_come_back_to():
    assert ENV not in os.environ
    state["before"] = plugin_manager()
    plugins.set_plugin_manager(state["before"])


def test_2_each_manager_becomes_the_default(kproxy_plugin_manager):
    assert os.environ[ENV] == "1"
    assert inspect.signature(kproxy_plugin_manager) == inspect.signature(plugin_manager)
    marker = Marker()
    pm = kproxy_plugin_manager(marker)
    assert plugins.get_plugin_manager() is pm and pm.is_registered(marker)
    assert kp.Engine(kp.Cluster.from_objects([]), node=None).plugins is pm
    bare = kproxy_plugin_manager(bundled=False)
    assert plugins.get_plugin_manager() is bare and "LoadBalancer" not in bare.registry.names()


def test_3_the_default_and_the_environment_come_back():
    assert ENV not in os.environ
    assert plugins.get_plugin_manager() is state["before"]
    plugins.set_plugin_manager(None)


def test_4_a_default_not_built_yet(kproxy_plugin_manager):
    kproxy_plugin_manager()


def test_5_is_not_built_by_the_fixture():
    assert plugins.peek_plugin_manager() is None


def test_6_a_test_without_the_fixture_sees_nothing_of_it():
    assert ENV not in os.environ and plugins.peek_plugin_manager() is None
'''


@pytest.mark.slow
def test_the_fixture_sets_and_restores_the_default(tmp_path: Path) -> None:
    example = _example(kp_pytest_plugin.__doc__)
    assert "def test_heavy(kproxy_plugin_manager)" in example
    r = _child_pytest(tmp_path, {"test_child.py": CHILD, "test_docstring_example.py": example})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "7 passed" in r.stdout, r.stdout[-2000:]


@pytest.mark.slow
def test_a_failing_plugin_test_fails(tmp_path: Path) -> None:
    # the child run really runs the fixture's tests: a wrong expectation is a failure
    r = _child_pytest(tmp_path, {"test_wrong.py": textwrap.dedent('''
        import kproxy_core as kp
        from kproxy_core.testing import assert_candidates, endpoint_slice, service

        def test_wrong(kproxy_plugin_manager):
            pm = kproxy_plugin_manager()
            cluster = kp.Cluster.from_objects([service("web"), endpoint_slice("web", ["10.1.0.5"])])
            assert_candidates(kp.Engine(cluster, node=None).trace("10.2.0.1", "10.96.0.10", 80), {"10.1.0.6:8080": 1})
    ''')})
    assert r.returncode == 1, r.stdout[-4000:] + r.stderr[-2000:]
    assert "10.1.0.6:8080" in r.stdout and "missing" in r.stdout and "1 failed" in r.stdout


def test_the_pytest_plugin_has_no_hooks_and_imports_nothing_early(tmp_path: Path) -> None:
    import _kproxy_pytestplugin

    for module in (kp_pytest_plugin, _kproxy_pytestplugin):
        assert not [n for n in vars(module) if n.startswith("pytest_")]
    assert kp_pytest_plugin.kproxy_plugin_manager is _kproxy_pytestplugin.kproxy_plugin_manager
    # what pytest imports in every run imports nothing of kproxy-core (numpy, the compiled core)
    code = ("import sys, _kproxy_pytestplugin; "
            "assert not [m for m in sys.modules if m.startswith('kproxy_core') or m == 'numpy'], "
            "sorted(m for m in sys.modules if 'kproxy' in m)")
    # from outside the tree: the module as installed, not the source file
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_pyproject_registers_the_pytest_plugin() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - 3.10
        tomllib = pytest.importorskip("tomli")
    path = ROOT / "pyproject.toml"
    if not path.exists():
        pytest.fail(f"{path} is missing")
    project = tomllib.loads(path.read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"kproxy": "_kproxy_pytestplugin"}

"""The plugin API: the manager, the hooks, the Service-type registry, and failures that name
the plugin. (The bundled LoadBalancer and ExternalName plugins: test_plugin_types.py; the
separate example distribution: test_example_plugin.py.)"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cli_run
import pytest
from k8s import ep, eport, node, port, service, slice_

import kproxy_core as kp
from kproxy_core.plan import EndpointInfo
from kproxy_core.plugins import (
    BUNDLED,
    get_plugin_manager,
    make_plugin_manager,
    set_plugin_manager,
)
from kproxy_core.servicetypes import Report, ServiceTypeRegistry

ARTICLE = Path(__file__).resolve().parent.parent / "examples" / "mynginx.yaml"
NODE = "n1"


def cluster_objs(**svc_spec: Any) -> list[dict[str, Any]]:
    return [
        node(NODE, "192.168.0.2", pod_cidr="10.0.0.0/24"),
        service("ns", "web", "10.96.0.10", [port(80, "http")], **svc_spec),
        slice_("ns", "web", [ep("10.0.0.5", NODE), ep("10.0.1.5", "n2"), ep("10.0.2.5", "n2")],
               [eport(8080, "http")]),
    ]


# --------------------------------------------------------------------------- the manager


def test_bundled_plugins_and_types() -> None:
    pm = make_plugin_manager(entry_points=False)
    assert pm.plugin_names() == [name for name, _ in BUNDLED]
    assert pm.registry.names() == ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
    assert [pm.registry.owner(t) for t in pm.registry.names()] == ["core", "core", "loadbalancer", "externalname"]


def test_without_bundled_plugins_loadbalancer_is_unknown() -> None:
    pm = make_plugin_manager(entry_points=False, bundled=False)
    with pytest.raises(kp.ManifestError) as e:
        kp.Cluster.from_objects(cluster_objs(type="LoadBalancer"), plugins=pm)
    assert str(e.value) == (
        'Service ns/web: spec.type: "LoadBalancer" is not a known Service type (ClusterIP, NodePort; '
        "plugins add others)"
    )


def test_hookimpl_is_reexported() -> None:
    from kproxy_core.hookspecs import NAME, hookimpl

    assert kp.hookimpl is hookimpl and NAME == "kproxy" and hookimpl.project_name == "kproxy"


def test_default_manager_is_shared_and_replaceable() -> None:
    pm = get_plugin_manager()
    assert get_plugin_manager() is pm
    mine = make_plugin_manager(entry_points=False)
    set_plugin_manager(mine)
    try:
        assert get_plugin_manager() is mine
    finally:
        set_plugin_manager(pm)


def test_misspelled_hook_fails_at_start_up() -> None:
    class Typo:
        @kp.hookimpl
        def kproxy_registr_service_types(self, registry: ServiceTypeRegistry) -> None:
            pass

    with pytest.raises(kp.PluginError, match=r"^plugin Typo: unknown hook 'kproxy_registr_service_types'"):
        make_plugin_manager([Typo()], entry_points=False)


def test_unknown_argument_fails_at_registration() -> None:
    class Extra:
        @kp.hookimpl
        def kproxy_endpoint_selector(self, service: kp.Service, colour: str) -> None:
            pass

    with pytest.raises(kp.PluginError, match=r"^plugin Extra: .*colour"):
        make_plugin_manager([Extra()], entry_points=False)


def test_two_instances_of_one_class_get_distinct_names() -> None:
    class P:
        pass

    assert make_plugin_manager([P(), P()], entry_points=False, bundled=False).plugin_names() == ["P", "P#2"]


def test_a_broken_entry_point_names_the_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "kproxy_broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kproxy-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[kproxy]\nbroken = kproxy_broken_missing_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(kp.PluginError) as e:
        make_plugin_manager(entry_points=True)
    assert str(e.value).startswith(
        "plugin broken: loading kproxy_broken_missing_module from kproxy-broken 1.0 failed: ModuleNotFoundError"
    )
    make_plugin_manager(entry_points=False)  # the switch really skips them


def test_entry_points_follow_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dist = tmp_path / "kproxy_envtest-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kproxy-envtest\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[kproxy]\nenvtest = kproxy_envtest_mod\n")
    (tmp_path / "kproxy_envtest_mod.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("KPROXY_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "envtest" not in make_plugin_manager().plugin_names()
    monkeypatch.delenv("KPROXY_DISABLE_PLUGIN_AUTOLOAD")
    assert "envtest" in make_plugin_manager().plugin_names()


def test_trace_env_logs_hook_and_handler_calls(tmp_path: Path) -> None:
    code = (
        "import sys, kproxy_core as kp, yaml\n"
        "from kproxy_core.plugins import make_plugin_manager\n"
        "pm = make_plugin_manager(entry_points=False)\n"
        "c = kp.Cluster.from_objects(yaml.safe_load_all(open(sys.argv[1])), plugins=pm)\n"
        "kp.Engine(c, plugins=pm)\n"
    )
    env = dict(os.environ, KPROXY_TRACE_PLUGINS="1")
    # from outside the repository, so that `-c` (the working directory first on sys.path)
    # imports the installed kproxy_core, not the source tree
    r = subprocess.run([sys.executable, "-c", code, str(ARTICLE)], env=env, capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "kproxy_validate_service [hook]" in r.stderr
    assert "kproxy_endpoint_selector [hook]" in r.stderr
    assert "core: NodePortType.frontends(default/mynginx" in r.stderr


# --------------------------------------------------------------------------- the registry


class BoxType(kp.ServiceType):
    """A type for these tests: a ClusterIP Service also reachable on one annotated address."""

    name = "Box"

    def __init__(self, policy: str = "internal") -> None:
        self.policy = policy

    def validate(self, service: kp.Service, report: Report) -> None:
        if "box/ip" not in service.annotations:
            report.error("metadata.annotations[box/ip]", "required")

    def frontends(self, service: kp.Service, port: kp.ServicePort, family: str, cluster: kp.Cluster) -> Iterator[
            kp.FrontendSpec]:
        ip = service.annotations["box/ip"]
        if (":" in ip) == (family == "IPv6"):
            yield kp.FrontendSpec(ip, "Box", policy=self.policy)  # type: ignore[arg-type]

    def rules(self, port: Any, renderer: str, family: str) -> Iterator[kp.RuleText]:
        if renderer == "iptables":
            yield kp.RuleText("filter", (f"-A BOX-COUNT -d {port.extra_frontends[0].ip}",), ("BOX-COUNT",))
        else:
            rule = f"add rule ip kube-proxy box-count ip daddr {port.extra_frontends[0].ip} counter"
            yield kp.RuleText(lines=(rule,), chains=("box-count",))

    def trace_steps(self, service: kp.Service, port: Any, frontend: str | None) -> Iterator[str]:
        yield f"box: {service.ref} via {frontend}"


class BoxPlugin:
    def __init__(self, handler: kp.ServiceType | None = None) -> None:
        self.handler = handler or BoxType()

    @kp.hookimpl
    def kproxy_register_service_types(self, registry: ServiceTypeRegistry) -> None:
        registry.register(self.handler)


def box_objs(ip: str = "192.0.2.10", **spec: Any) -> list[dict[str, Any]]:
    objs = cluster_objs(type="Box", **spec)
    objs[1]["metadata"]["annotations"] = {"box/ip": ip}
    return objs


def test_register_twice_is_refused_unless_replacing() -> None:
    class Again:
        @kp.hookimpl
        def kproxy_register_service_types(self, registry: ServiceTypeRegistry) -> None:
            registry.register(BoxType())

    with pytest.raises(kp.PluginError, match=r"^plugin Again: .*'Box' is already registered by BoxPlugin"):
        make_plugin_manager([BoxPlugin(), Again()], entry_points=False)

    class Replace:
        kproxy_priority = 1  # asked before BoxPlugin, so it registers after it

        @kp.hookimpl
        def kproxy_register_service_types(self, registry: ServiceTypeRegistry) -> None:
            registry.register(BoxType("external"), replace=True)

    pm = make_plugin_manager([BoxPlugin(), Replace()], entry_points=False)
    assert pm.registry.owner("Box") == "Replace"


def test_register_needs_a_service_type() -> None:
    class Bad:
        @kp.hookimpl
        def kproxy_register_service_types(self, registry: ServiceTypeRegistry) -> None:
            registry.register(object())  # type: ignore[arg-type]

    with pytest.raises(kp.PluginError, match=r"^plugin Bad: kproxy_register_service_types: .* is not a ServiceType"):
        make_plugin_manager([Bad()], entry_points=False)


def test_handler_validate_names_the_field() -> None:
    pm = make_plugin_manager([BoxPlugin()], entry_points=False)
    objs = box_objs()
    del objs[1]["metadata"]["annotations"]
    with pytest.raises(kp.ManifestError) as e:
        kp.Cluster.from_objects(objs, plugins=pm)
    assert str(e.value) == "Service ns/web: metadata.annotations[box/ip]: required"


def test_plugin_type_may_not_carry_node_ports() -> None:
    pm = make_plugin_manager([BoxPlugin()], entry_points=False)
    objs = box_objs()
    objs[1]["spec"]["ports"][0]["nodePort"] = 30080
    with pytest.raises(kp.ManifestError, match=r"spec.ports\[0\].nodePort: may not be used when type is \"Box\""):
        kp.Cluster.from_objects(objs, plugins=pm)


@pytest.mark.parametrize("policy", ["internal", "external"])
def test_plugin_frontend_acts_like_its_builtin_shape(make_engine: Any, policy: str) -> None:
    """An internal frontend decides exactly like the ClusterIP, an external one like an externalIP."""
    pm = make_plugin_manager([BoxPlugin(BoxType(policy))], entry_points=False)
    box = make_engine(kp.Cluster.from_objects(box_objs(), plugins=pm), node=NODE, cluster_cidr="10.0.0.0/16",
                      plugins=pm)
    plain = make_engine(cluster_objs(externalIPs=["192.0.2.10"]), node=NODE, cluster_cidr="10.0.0.0/16")
    twin = "10.96.0.10" if policy == "internal" else "192.0.2.10"
    for src in ("10.0.0.7", "192.168.0.2", "203.0.113.9"):
        for sport in range(1000, 1012):
            got = box.lookup(src, "192.0.2.10", 80, sport=sport)
            want = plain.lookup(src, twin, 80, sport=sport)
            assert (got.verdict, got.masquerade) == (want.verdict, want.masquerade)
            assert got.frontend == "Box" and got.service == "ns/web:http"
            pool = {c["endpoint"] for c in plain.trace(src, twin, 80, sport=sport).candidates}
            assert f"{got.endpoint[0]}:{got.endpoint[1]}" in pool
            if policy == "external":  # the same destination: the same hash, the same pick
                assert got.endpoint == want.endpoint
    t = box.trace("203.0.113.9", "192.0.2.10", 80)
    assert t.frontend == "Box" and "box: ns/web via Box" in t.steps
    assert any("a Box frontend, handled like" in s for s in t.steps)


def test_plugin_frontend_without_endpoints_is_rejected(make_engine: Any) -> None:
    pm = make_plugin_manager([BoxPlugin()], entry_points=False)
    objs = box_objs()[:2]
    e = make_engine(kp.Cluster.from_objects(objs, plugins=pm), node=NODE, plugins=pm)
    assert e.lookup("10.0.0.7", "192.0.2.10", 80).verdict == "REJECT"


def test_plugin_frontend_in_rules_and_rule_text() -> None:
    pm = make_plugin_manager([BoxPlugin()], entry_points=False)
    e = kp.Engine(kp.Cluster.from_objects(box_objs(), plugins=pm), node=NODE, cluster_cidr="10.0.0.0/16",
                  plugins=pm)
    ipt = e.render("iptables")
    assert ('-A KUBE-SERVICES -m comment --comment "ns/web:http Box IP" -m tcp -p tcp -d 192.0.2.10 --dport 80 '
            "-j KUBE-SVC-") in ipt
    assert ":BOX-COUNT - [0:0]" in ipt and "-A BOX-COUNT -d 192.0.2.10" in ipt
    nft = e.render("nftables")
    assert "add element ip kube-proxy service-ips { 192.0.2.10 . tcp . 80 : goto service-" in nft
    assert "add rule ip kube-proxy box-count ip daddr 192.0.2.10 counter" in nft


def test_bad_frontend_from_a_handler_is_an_error() -> None:
    class Wrong(BoxType):
        def frontends(self, service: kp.Service, port: kp.ServicePort, family: str,
                      cluster: kp.Cluster) -> Iterator[kp.FrontendSpec]:
            yield kp.FrontendSpec("not-an-ip", "Box")

    pm = make_plugin_manager([BoxPlugin(Wrong())], entry_points=False)
    with pytest.raises(kp.ManifestError, match=r"^Service ns/web: type Box: frontend 'not-an-ip' is not an IP"):
        kp.Engine(kp.Cluster.from_objects(box_objs(), plugins=pm), node=NODE, plugins=pm)


def test_handler_exception_names_plugin_type_and_method() -> None:
    class Crashing(BoxType):
        def frontends(self, service: kp.Service, port: kp.ServicePort, family: str,
                      cluster: kp.Cluster) -> Iterator[kp.FrontendSpec]:
            yield from ()
            raise ZeroDivisionError("boom")

    pm = make_plugin_manager([BoxPlugin(Crashing())], entry_points=False)
    with pytest.raises(kp.PluginError) as e:
        kp.Engine(kp.Cluster.from_objects(box_objs(), plugins=pm), node=NODE, plugins=pm)
    assert str(e.value) == (
        "plugin BoxPlugin: Service type Box: frontends() failed for Service ns/web port http: ZeroDivisionError: boom"
    )


# --------------------------------------------------------------------------- hooks


class Validator:
    @kp.hookimpl
    def kproxy_validate_service(self, service: kp.Service, report: Report) -> None:
        if service.name.startswith("tmp-"):
            report.warn("metadata.name", "temporary service")
        if service.annotations.get("forbidden"):
            report.error("metadata.annotations[forbidden]", "not here")


def test_validate_hook_warns_and_errors() -> None:
    pm = make_plugin_manager([Validator()], entry_points=False)
    objs = cluster_objs()
    objs[1]["metadata"]["name"] = "tmp-web"
    c = kp.Cluster.from_objects(objs, plugins=pm)
    assert "Service ns/tmp-web: metadata.name: temporary service" in c.warnings
    objs[1]["metadata"]["annotations"] = {"forbidden": "yes"}
    with pytest.raises(kp.ManifestError) as e:
        kp.Cluster.from_objects(objs, plugins=pm)
    assert str(e.value) == "Service ns/tmp-web: metadata.annotations[forbidden]: not here"


def test_validate_hook_runs_on_apply() -> None:
    pm = make_plugin_manager([Validator()], entry_points=False)
    e = kp.Engine(kp.Cluster.from_objects(cluster_objs(), plugins=pm), node=NODE, plugins=pm)
    bad = cluster_objs()[1]
    bad["metadata"]["annotations"] = {"forbidden": "1"}
    with pytest.raises(kp.ManifestError, match="not here"):
        e.apply([bad])


class Chooser:
    def __init__(self, kind: str = "maglev", weights: Sequence[int] | None = None) -> None:
        self.kind, self.weights = kind, weights
        self.seen: list[tuple[str, str]] = []

    @kp.hookimpl
    def kproxy_endpoint_selector(self, service: kp.Service, port: kp.ServicePort, family: str) -> kp.Selector:
        self.seen.append((service.ref, family))
        return kp.Selector(self.kind, origin="plugin Chooser")  # type: ignore[arg-type]

    @kp.hookimpl
    def kproxy_endpoint_weights(self, service: kp.Service, port: kp.ServicePort,
                                endpoints: Sequence[EndpointInfo]) -> Sequence[int] | None:
        return self.weights


def test_selector_and_weights_hooks_reach_the_plan() -> None:
    chooser = Chooser("round-robin", [3, 0, 1])
    pm = make_plugin_manager([chooser], entry_points=False)
    e = kp.Engine(kp.Cluster.from_objects(cluster_objs(), plugins=pm), node=NODE, plugins=pm)
    pp = e.plans["IPv4"].ports[0]
    assert pp.selector == kp.Selector("round-robin", origin="plugin Chooser")
    assert [(x.ip, x.weight) for x in pp.endpoints] == [("10.0.0.5", 3), ("10.0.1.5", 0), ("10.0.2.5", 1)]
    assert [x.ip for x in pp.cluster] == ["10.0.0.5", "10.0.2.5"]  # weight 0 is out of every pool
    # no IPv6 ClusterIP: the IPv6 proxier skips the port (the engine may ask again when it
    # plans a port anew, for a trace or the whole plan, and gets the same answer)
    assert chooser.seen and set(chooser.seen) == {("ns/web", "IPv4")}
    t = e.trace("10.0.0.7", "10.96.0.10", 80)
    assert {"endpoint": "10.0.1.5:8080", "reason": "weight 0 (from plugin Chooser)"} in t.filtered


def test_plugins_answer_before_the_annotations() -> None:
    pm = make_plugin_manager([Chooser("source-hash")], entry_points=False)
    objs = cluster_objs()
    objs[1]["metadata"]["annotations"] = {"kproxy-core.io/selector": "round-robin"}
    with pytest.warns(kp.PluginWarning, match=r"^plugins Chooser, annotations all answer kproxy_endpoint_selector "
                      r"for Service ns/web port http \(IPv4\) .*: Chooser wins"):
        e = kp.Engine(kp.Cluster.from_objects(objs, plugins=pm), node=NODE, plugins=pm)
    assert e.plans["IPv4"].ports[0].selector.kind == "source-hash"
    e2 = kp.Engine(kp.Cluster.from_objects(objs), node=NODE)  # annotations alone
    assert e2.plans["IPv4"].ports[0].selector.kind == "round-robin"


def test_a_subset_of_hook_arguments_is_enough() -> None:
    class Minimal:
        @kp.hookimpl
        def kproxy_endpoint_selector(self) -> kp.Selector:
            return kp.Selector("round-robin")

    pm = make_plugin_manager([Minimal()], entry_points=False)
    e = kp.Engine(kp.Cluster.from_objects(cluster_objs(), plugins=pm), node=NODE, plugins=pm)
    assert e.plans["IPv4"].ports[0].selector.kind == "round-robin"


@pytest.mark.parametrize("weights", [[1, 2], [1, 2, -1], [1, 2, "3"], [1, 2, 2_000_000]])
def test_bad_weights_are_an_error_naming_the_service(weights: list[Any]) -> None:
    pm = make_plugin_manager([Chooser("random", weights)], entry_points=False)
    with pytest.raises(kp.PluginError) as e:
        kp.Engine(kp.Cluster.from_objects(cluster_objs(), plugins=pm), node=NODE, plugins=pm)
    assert str(e.value) == (
        f"plugin Chooser: hook kproxy_endpoint_weights returned {weights!r} (list) for Service ns/web port http "
        "(IPv4); expected a list of 3 ints from 0 to 1000000, one per endpoint in the order given, or None"
    )


def test_bad_selector_is_an_error_naming_the_service() -> None:
    class Wrong:
        @kp.hookimpl
        def kproxy_endpoint_selector(self) -> str:
            return "maglev"

    pm = make_plugin_manager([Wrong()], entry_points=False)
    with pytest.raises(kp.PluginError) as e:
        kp.Engine(kp.Cluster.from_objects(cluster_objs(), plugins=pm), node=NODE, plugins=pm)
    assert str(e.value) == (
        "plugin Wrong: hook kproxy_endpoint_selector returned 'maglev' (str) for Service ns/web port http (IPv4); "
        'expected a kproxy_core.Selector (e.g. Selector("round-robin")) or None'
    )


def test_hook_exception_names_plugin_and_hook() -> None:
    class Failing:
        @kp.hookimpl
        def kproxy_endpoint_weights(self, endpoints: Sequence[EndpointInfo]) -> list[int]:
            return [1 // 0 for _ in endpoints]

    pm = make_plugin_manager([Failing()], entry_points=False)
    with pytest.raises(kp.PluginError) as e:
        kp.Engine(kp.Cluster.from_objects(cluster_objs(), plugins=pm), node=NODE, plugins=pm)
    assert str(e.value) == (
        "plugin Failing: hook kproxy_endpoint_weights failed for Service ns/web port http (IPv4): "
        "ZeroDivisionError: integer division or modulo by zero"
    )


def test_registering_hook_exception_names_the_plugin() -> None:
    class Failing:
        @kp.hookimpl
        def kproxy_register_service_types(self, registry: ServiceTypeRegistry) -> None:
            raise KeyError("x")

    with pytest.raises(kp.PluginError, match=r"^plugin Failing: hook kproxy_register_service_types failed: KeyError"):
        make_plugin_manager([Failing()], entry_points=False)


def test_cli_lists_plugins_and_exits_1_on_plugin_failure(tmp_path: Path) -> None:
    r = cli_run.kproxy("plugins", timeout=60)
    assert r.returncode == 0 and "LoadBalancer   loadbalancer" in r.stdout, r.stderr
    # an entry point whose hook raises: kproxy says which plugin, exit 1
    dist = tmp_path / "kproxy_crash-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kproxy-crash\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[kproxy]\ncrash = kproxy_crash_mod\n")
    (tmp_path / "kproxy_crash_mod.py").write_text(
        "from kproxy_core import hookimpl\n"
        "@hookimpl\n"
        "def kproxy_endpoint_selector(service):\n"
        "    raise RuntimeError('crashed on ' + service.ref)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "KPROXY_DISABLE_PLUGIN_AUTOLOAD"}
    env["PYTHONPATH"] = str(tmp_path)
    r = cli_run.kproxy("rules", "-f", str(ARTICLE), env=env, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "kproxy: error: plugin crash: hook kproxy_endpoint_selector failed for Service default/mynginx port 80 "
        "(IPv4): RuntimeError: crashed on default/mynginx (--traceback or KPROXY_TRACEBACK=1 shows where)"
    )


def test_engine_refuses_a_type_its_plugins_do_not_know() -> None:
    pm = make_plugin_manager([BoxPlugin()], entry_points=False)
    cluster = kp.Cluster.from_objects(box_objs(), plugins=pm)
    with pytest.raises(kp.ManifestError) as e:
        kp.Engine(cluster, node=NODE, plugins=make_plugin_manager(entry_points=False))
    assert str(e.value) == (
        "Service ns/web: spec.type: 'Box' is not a Service type of the engine's plugin manager (ClusterIP, NodePort, "
        "LoadBalancer, ExternalName), but the Cluster was loaded with another manager that has it (from plugin "
        "BoxPlugin): give the Engine that manager, or no plugins= at all (an Engine defaults to its Cluster's manager)"
    )
    # a Cluster built without the type's plugin at all: the plain message
    objs = box_objs()
    objs[1]["spec"]["type"] = "ClusterIP"
    plain = kp.Cluster.from_objects(objs, plugins=pm)
    changed = dict(plain.services)
    changed[("ns", "web")] = dataclasses.replace(changed[("ns", "web")], type="Nope")
    with pytest.raises(kp.ManifestError, match=r"^Service ns/web: spec.type: 'Nope' is not a known Service type "
                                               r"\(ClusterIP, NodePort, LoadBalancer, ExternalName, Box; plugins"):
        kp.Engine(dataclasses.replace(plain, services=changed), node=NODE)


def test_an_engine_defaults_to_the_manager_its_cluster_was_loaded_with() -> None:
    pm = make_plugin_manager([BoxPlugin()], entry_points=False)
    engine = kp.Engine(kp.Cluster.from_objects(box_objs(), plugins=pm), node=NODE)
    assert engine.plugins is pm
    assert engine.lookup("10.0.0.7", "192.0.2.10", 80).frontend == "Box"
    engine.apply([box_objs("192.0.2.11")[1]])  # the applied cluster keeps the manager
    assert engine.cluster.plugins is pm and engine.lookup("10.0.0.7", "192.0.2.11", 80).frontend == "Box"
    assert kp.Engine(engine.cluster, node=NODE).plugins is pm

"""What a plugin author meets (issue 14): context in the planning hooks, one asking order
whatever the install order, who supplied the selector and the weights, and messages that
say what to do: wrong answers, failing and disabled plugins, misspelled hooks and
arguments, unmarked functions, --traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cli_run
import pytest
from k8s import ep, eport, node, port, service, slice_

import kproxy_core as kp
from kproxy_core.plan import EndpointInfo
from kproxy_core.plugins import make_plugin_manager

ARTICLE = Path(__file__).resolve().parent.parent / "examples" / "mynginx.yaml"


def zoned_cluster() -> list[dict[str, Any]]:
    """Two nodes in zone a, one in zone b; web has two endpoints in a and one in b."""
    return [
        node("a1", "192.168.0.1", zone="a"),
        node("a2", "192.168.0.2", zone="a"),
        node("b1", "192.168.0.3", zone="b"),
        service("ns", "web", "10.96.0.10", [port(80, "http")]),
        slice_("ns", "web", [ep("10.0.0.5", "a1", zone="a"), ep("10.0.0.6", "a2", zone="a"),
                             ep("10.0.1.5", "b1", zone="b")], [eport(8080, "http")]),
    ]


class PreferMyZone:
    """The worked example of docs/plugins.md: endpoints in the node's zone weigh 9, others 1."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str]] = []

    @kp.hookimpl
    def kproxy_endpoint_weights(self, endpoints: Sequence[EndpointInfo], node: kp.NodeView | None,
                                family: str) -> list[int] | None:
        self.calls.append((node.name if node else None, family))
        if node is None or node.zone is None or not any(e.zone == node.zone for e in endpoints):
            return None
        return [9 if e.zone == node.zone else 1 for e in endpoints]


def candidates(trace: kp.Trace) -> dict[str, float]:
    return {c["endpoint"]: c["probability"] for c in trace.candidates}


@pytest.mark.parametrize("where", ["a1", "b1", None])
def test_zone_preferring_weights_follow_the_node(make_engine: Any, where: str | None) -> None:
    plugin = PreferMyZone()
    pm = make_plugin_manager([plugin], entry_points=False)
    engine = make_engine(kp.Cluster.from_objects(zoned_cluster(), plugins=pm), node=where)
    got = candidates(engine.trace("10.0.9.9", "10.96.0.10", 80))
    if where == "a1":
        want = {"10.0.0.5:8080": 9 / 19, "10.0.0.6:8080": 9 / 19, "10.0.1.5:8080": 1 / 19}
    elif where == "b1":
        want = {"10.0.0.5:8080": 1 / 11, "10.0.0.6:8080": 1 / 11, "10.0.1.5:8080": 9 / 11}
    else:  # an off-cluster observer: node is None, the plugin has no opinion
        want = dict.fromkeys(["10.0.0.5:8080", "10.0.0.6:8080", "10.0.1.5:8080"], 1 / 3)
    assert got.keys() == want.keys()
    for k, p in want.items():
        assert got[k] == pytest.approx(p, abs=1e-9), (k, got)
    assert set(plugin.calls) == {(where, "IPv4")}
    # and the lookups follow the probabilities
    if where == "a1":
        picks = [engine.lookup("10.0.9.9", "10.96.0.10", 80, sport=s).endpoint for s in range(1, 3001)]
        share = picks.count(("10.0.1.5", 8080)) / len(picks)
        assert 0.03 < share < 0.08, share


def test_the_node_view_the_hooks_get() -> None:
    seen: list[Any] = []

    class Look:
        @kp.hookimpl
        def kproxy_endpoint_selector(self, node: kp.NodeView | None, cluster: kp.Cluster, family: str) -> None:
            seen.append((node, cluster, family))

    objs = zoned_cluster()
    objs[0]["metadata"]["labels"]["rack"] = "r7"
    pm = make_plugin_manager([Look()], entry_points=False)
    cluster = kp.Cluster.from_objects(objs, plugins=pm)
    kp.Engine(cluster, node="a1")
    view, got_cluster, family = seen[0]
    assert (view.name, view.zone, view.addresses, view.ips("IPv4"), view.ips("IPv6")) == (
        "a1", "a", (("InternalIP", "192.168.0.1"),), ("192.168.0.1",), ())
    assert dict(view.labels) == {"topology.kubernetes.io/zone": "a", "rack": "r7"}
    with pytest.raises(TypeError):
        view.labels["rack"] = "r8"  # read-only
    assert got_cluster.nodes.keys() == cluster.nodes.keys() and family == "IPv4"


# --------------------------------------------------------------------------- the order


def chooser(name: str, kind: str, priority: int | None = None, **marker: bool) -> Any:
    def kproxy_endpoint_selector(self: Any) -> kp.Selector:
        return kp.Selector(kind)  # type: ignore[arg-type]

    attrs: dict[str, Any] = {"kproxy_endpoint_selector": kp.hookimpl(**marker)(kproxy_endpoint_selector)}
    if priority is not None:
        attrs["kproxy_priority"] = priority
    return type(name, (), attrs)()


def selector_of(pm: Any) -> tuple[str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kp.PluginWarning)
        engine = kp.Engine(kp.Cluster.from_objects(zoned_cluster(), plugins=pm), node="a1")
    pp = engine.plans["IPv4"].ports[0]
    return pp.selector.kind, pp.selector_by


def test_the_asking_order_does_not_depend_on_the_registration_order() -> None:
    a, b = chooser("Alpha", "maglev"), chooser("Beta", "round-robin")
    for plugins in ([a, b], [b, a]):
        pm = make_plugin_manager(plugins, entry_points=False)
        assert pm.implementers("kproxy_endpoint_selector") == ["Alpha", "Beta", "annotations"]
        assert selector_of(pm) == ("maglev", "Alpha")


def test_priority_then_tryfirst_and_trylast() -> None:
    a, b = chooser("Alpha", "maglev"), chooser("Beta", "round-robin", priority=10)
    pm = make_plugin_manager([a, b], entry_points=False)
    assert pm.implementers("kproxy_endpoint_selector") == ["Beta", "Alpha", "annotations"]
    assert selector_of(pm) == ("round-robin", "Beta")
    # tryfirst beats any priority; trylast loses to every plain implementation
    first = chooser("Zed", "source-hash", tryfirst=True)
    last = chooser("Aardvark", "weighted", priority=99, trylast=True)
    pm = make_plugin_manager([a, b, first, last], entry_points=False)
    assert pm.implementers("kproxy_endpoint_selector") == ["Zed", "Beta", "Alpha", "Aardvark", "annotations"]
    assert selector_of(pm) == ("source-hash", "Zed")


def test_a_priority_must_be_an_int() -> None:
    with pytest.raises(kp.PluginError, match=r"^plugin Odd: kproxy_priority must be an int, not '3'$"):
        make_plugin_manager([chooser("Odd", "maglev", priority="3")], entry_points=False)  # type: ignore[arg-type]


def test_two_answers_for_one_port_are_a_warning_once_and_the_trace_names_both_suppliers() -> None:
    class Weigher:
        @kp.hookimpl
        def kproxy_endpoint_weights(self, endpoints: Sequence[EndpointInfo]) -> list[int]:
            return [1, 2, 3][: len(endpoints)]

    objs = zoned_cluster()
    objs.append(service("ns", "api", "10.96.0.11", [port(80, "http")]))
    pm = make_plugin_manager([chooser("Alpha", "round-robin"), chooser("Beta", "maglev"), Weigher()],
                             entry_points=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = kp.Engine(kp.Cluster.from_objects(objs, plugins=pm), node="a1")
        engine.trace("10.0.9.9", "10.96.0.11", 80)  # planned anew: no second warning
    mine = [str(w.message) for w in caught if issubclass(w.category, kp.PluginWarning)]
    assert mine == [
        "plugins Alpha, Beta all answer kproxy_endpoint_selector for Service ns/api port http (IPv4) (and maybe "
        "more ports): Alpha wins, being asked first; Beta is ignored. Set kproxy_priority on the plugin that "
        "should win, or disable one (KPROXY_DISABLE_PLUGINS)"
    ]
    t = engine.trace("10.0.9.9", "10.96.0.10", 80)
    assert "plugins: selector round-robin from plugin Alpha; weights 1:2:3 from plugin Weigher" in t.steps
    pp = engine.plans["IPv4"].ports[1]
    assert (pp.selector_by, pp.weights_by) == ("Alpha", "Weigher")


def test_without_plugins_the_trace_names_no_supplier() -> None:
    engine = kp.Engine(kp.Cluster.from_objects(zoned_cluster()), node="a1")
    t = engine.trace("10.0.9.9", "10.96.0.10", 80)
    assert not any(s.startswith("plugins:") for s in t.steps)
    assert engine.plans["IPv4"].ports[0].selector_by == ""


# --------------------------------------------------------------------------- entry points


@pytest.fixture
def dists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Write fake installed distributions (a dist-info with a kproxy entry point, and the
    module) into a directory on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("KPROXY_DISABLE_PLUGIN_AUTOLOAD", raising=False)

    def add(ep_name: str, module: str, source: str | None, dist: str | None = None) -> None:
        dist = dist or f"kproxy-{ep_name}"
        info = tmp_path / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[kproxy]\n{ep_name} = {module}\n")
        if source is not None:
            (tmp_path / f"{module}.py").write_text(source)

    add.path = tmp_path  # type: ignore[attr-defined]
    yield add
    for name in list(sys.modules):
        if name.startswith("kpt_"):
            del sys.modules[name]


SELECTOR = (
    "import kproxy_core as kp\n"
    "{extra}\n"
    "@kp.hookimpl\n"
    "def kproxy_endpoint_selector(service):\n"
    "    return kp.Selector({kind!r})\n"
)


def test_entry_points_are_asked_by_name_whatever_the_install_order(dists: Any) -> None:
    # the distributions' names sort the other way round from the entry points'
    dists("zeta", "kpt_zeta", SELECTOR.format(extra="", kind="maglev"), dist="kproxy-aaa")
    dists("alpha", "kpt_alpha", SELECTOR.format(extra="", kind="round-robin"), dist="kproxy-zzz")
    pm = make_plugin_manager(entry_points=True)
    assert pm.implementers("kproxy_endpoint_selector") == ["alpha", "zeta", "annotations"]
    assert selector_of(pm) == ("round-robin", "alpha")
    # only the named entry points
    pm = make_plugin_manager(entry_points=["zeta"])
    assert "alpha" not in pm.plugin_names() and selector_of(pm) == ("maglev", "zeta")
    # one string is one name (not its letters), or several separated by commas
    pm = make_plugin_manager(entry_points="zeta")
    assert "zeta" in pm.plugin_names() and "alpha" not in pm.plugin_names()
    assert {"alpha", "zeta"} <= set(make_plugin_manager(entry_points="alpha,zeta").plugin_names())
    assert "alpha" not in make_plugin_manager(entry_points=True, disabled="alpha").plugin_names()
    with pytest.raises(kp.PluginError, match=r"^plugin nope: no such entry point in the 'kproxy' group "
                                             r"\(installed: .*alpha.*zeta"):
        make_plugin_manager(entry_points=["nope"])


def test_a_plugin_is_disabled_by_name(dists: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    dists("alpha", "kpt_alpha2", SELECTOR.format(extra="", kind="round-robin"))
    monkeypatch.setenv("KPROXY_DISABLE_PLUGINS", "alpha, annotations")
    pm = make_plugin_manager(entry_points=True)
    assert "alpha" not in pm.plugin_names() and "annotations" not in pm.plugin_names()
    assert pm.disabled == ("alpha", "annotations")
    assert selector_of(pm) == ("random", "")
    # a plugin handed to the manager, by its name
    pm = make_plugin_manager([chooser("Mine", "maglev")], entry_points=False, disabled=["Mine"])
    assert "Mine" not in pm.plugin_names()


def run_cli(*args: str, env: dict[str, str] | None = None,
            path: Path | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if k not in ("KPROXY_DISABLE_PLUGIN_AUTOLOAD", "KPROXY_TRACEBACK")}
    if path is not None:
        e["PYTHONPATH"] = str(path)
    e.update(env or {})
    # the installed console script, from outside the repository: PYTHONPATH adds the fake
    # distributions to its path, not the source tree
    return cli_run.kproxy(*args, env=e, timeout=120)


def test_a_plugin_that_fails_to_load_says_how_to_go_on(dists: Any) -> None:
    dists("broken", "kpt_missing_module", None)
    dists("crash", "kpt_crash", SELECTOR.format(extra="kproxy_priority = 3", kind="maglev").replace(
        "return kp.Selector('maglev')", "raise RuntimeError('crashed on ' + service.ref)"))
    r = run_cli("rules", "-f", str(ARTICLE), path=dists.path)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == (
        "kproxy: error: plugin broken: loading kpt_missing_module from kproxy-broken 1.0 failed: "
        "ModuleNotFoundError: No module named 'kpt_missing_module' (KPROXY_DISABLE_PLUGINS=broken runs without "
        "it, `pip uninstall kproxy-broken` removes it) (--traceback or KPROXY_TRACEBACK=1 shows where)"
    )
    # `kproxy plugins` still lists what loaded, what failed and why, in asking order
    r = run_cli("plugins", path=dists.path)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines[0] == "plugins (in asking order: priority, then name)"
    assert lines[1].startswith("  crash          kpt_crash (kproxy-crash 1.0), priority 3: kproxy_endpoint_selector")
    assert "  kproxy_endpoint_selector       crash > annotations (first answer wins)" in lines
    assert lines[-2:] == ["failed to load", "  broken         kpt_missing_module from kproxy-broken 1.0: "
                          "ModuleNotFoundError: No module named 'kpt_missing_module'"]
    assert r.stderr.strip() == ("kproxy: error: 1 plugin failed to load; KPROXY_DISABLE_PLUGINS=broken runs "
                                "without it")
    # disabling it: the next failure is the crashing hook, named with the Service port
    r = run_cli("rules", "-f", str(ARTICLE), path=dists.path, env={"KPROXY_DISABLE_PLUGINS": "broken"})
    assert r.returncode == 1 and r.stderr.strip() == (
        "kproxy: error: plugin crash: hook kproxy_endpoint_selector failed for Service default/mynginx port 80 "
        "(IPv4): RuntimeError: crashed on default/mynginx (--traceback or KPROXY_TRACEBACK=1 shows where)"
    )
    for how in (["--traceback"], []):
        env = {"KPROXY_DISABLE_PLUGINS": "broken"} | ({} if how else {"KPROXY_TRACEBACK": "1"})
        r = run_cli("rules", "-f", str(ARTICLE), *how, path=dists.path, env=env)
        assert r.returncode == 1
        assert "Traceback (most recent call last)" in r.stderr and 'kpt_crash.py", line' in r.stderr
        assert r.stderr.splitlines()[-1] == (
            "kproxy: error: plugin crash: hook kproxy_endpoint_selector failed for Service default/mynginx port 80 "
            "(IPv4): RuntimeError: crashed on default/mynginx")
    r = run_cli("rules", "-f", str(ARTICLE), path=dists.path,
                env={"KPROXY_DISABLE_PLUGINS": "broken,crash"})
    assert r.returncode == 0 and "KUBE-SERVICES" in r.stdout


def test_kproxy_plugins_json_has_the_order_and_the_failures(dists: Any) -> None:
    dists("broken", "kpt_missing_module2", None)
    r = run_cli("plugins", "--json", path=dists.path, env={"KPROXY_DISABLE_PLUGINS": "externalname"})
    import json

    got = json.loads(r.stdout)
    assert r.returncode == 1
    assert [p["name"] for p in got["plugins"]] == ["annotations", "loadbalancer"]
    assert got["asking_order"]["kproxy_endpoint_selector"] == ["annotations"]
    assert got["disabled"] == ["externalname"]
    assert [(f["name"], f["reason"]) for f in got["failed"]] == [
        ("broken", "ModuleNotFoundError: No module named 'kpt_missing_module2'")]


# --------------------------------------------------------------------------- authoring mistakes


def test_a_misspelled_hook_suggests_the_nearest() -> None:
    class Typo:
        @kp.hookimpl
        def kproxy_endpoint_weight(self, endpoints: Any) -> None:
            pass

    with pytest.raises(kp.PluginError) as e:
        make_plugin_manager([Typo()], entry_points=False)
    assert str(e.value) == (
        "plugin Typo: unknown hook 'kproxy_endpoint_weight'; did you mean 'kproxy_endpoint_weights'? (the hooks: "
        "kproxy_endpoint_selector, kproxy_endpoint_weights, kproxy_read_object, kproxy_register_service_types, "
        "kproxy_validate_service)"
    )


def test_a_wrong_argument_lists_the_hooks_arguments() -> None:
    class Wrong:
        @kp.hookimpl
        def kproxy_endpoint_weights(self, endpoint: Any) -> None:
            pass

    with pytest.raises(kp.PluginError) as e:
        make_plugin_manager([Wrong()], entry_points=False)
    assert str(e.value) == (
        "plugin Wrong: hook kproxy_endpoint_weights: argument 'endpoint' is not one of its arguments (service, "
        "port, endpoints, family, node, cluster); did you mean 'endpoints'?"
    )

    def kproxy_validate_service(servce: Any) -> None:  # a module-level function, as in a plugin module
        pass

    module = type(sys)("kpt_module_plugin")
    module.kproxy_validate_service = kp.hookimpl(kproxy_validate_service)  # type: ignore[attr-defined]
    with pytest.raises(kp.PluginError, match=r"argument 'servce' .*\(service, report\); did you mean 'service'\?$"):
        make_plugin_manager([module], entry_points=False)


def test_an_unmarked_function_named_like_a_hook_is_a_warning() -> None:
    class Forgot:
        def kproxy_endpoint_weights(self, endpoints: Any) -> list[int]:
            return [1 for _ in endpoints]

        def kproxy_endpoint_wieghts(self) -> None:
            pass

    with pytest.warns(kp.PluginWarning) as caught:
        pm = make_plugin_manager([Forgot()], entry_points=False)
    assert sorted(str(w.message) for w in caught) == [
        "plugin Forgot: kproxy_endpoint_weights is not marked @kproxy_core.hookimpl, so it is never called "
        "(add the marker)",
        "plugin Forgot: kproxy_endpoint_wieghts is not marked @kproxy_core.hookimpl, so it is never called; "
        "did you mean 'kproxy_endpoint_weights'?",
    ]
    assert pm.implementers("kproxy_endpoint_weights") == ["annotations"]


def test_wrappers_are_refused() -> None:
    class Wrap:
        @kp.hookimpl(wrapper=True)
        def kproxy_endpoint_selector(self) -> Iterator[None]:
            return (yield)

    with pytest.raises(kp.PluginError, match=r"^plugin Wrap: hook kproxy_endpoint_selector: wrappers are not "):
        make_plugin_manager([Wrap()], entry_points=False)


def test_load_takes_a_list_of_paths(tmp_path: Path) -> None:
    objs = zoned_cluster()
    import yaml

    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump_all(objs[:3]))
    b.write_text(yaml.safe_dump_all(objs[3:]))
    one = kp.load([str(a), b])
    two = kp.load(str(a), str(b))
    assert one.services == two.services and set(one.nodes) == {"a1", "a2", "b1"}
    assert one.services.keys() == {("ns", "web")}
    with pytest.raises(kp.ManifestError, match=r"nothing\.yaml"):
        kp.load([str(a), str(tmp_path / "nothing.yaml")])


def test_failures_while_loading_name_the_object() -> None:
    class Picky:
        @kp.hookimpl
        def kproxy_validate_service(self, service: kp.Service) -> None:
            raise KeyError("owner")

    pm = make_plugin_manager([Picky()], entry_points=False)
    with pytest.raises(kp.PluginError) as e:
        kp.Cluster.from_objects(zoned_cluster(), plugins=pm)
    assert str(e.value) == "plugin Picky: hook kproxy_validate_service failed for Service ns/web: KeyError: 'owner'"

    class Reader:
        @kp.hookimpl
        def kproxy_read_object(self, obj: Any) -> None:
            if obj["kind"] == "Node":
                raise ValueError("no nodes today")

    pm = make_plugin_manager([Reader()], entry_points=False)
    with pytest.raises(kp.PluginError) as e:
        kp.Cluster.from_objects(zoned_cluster(), plugins=pm)
    assert str(e.value) == "plugin Reader: hook kproxy_read_object failed for Node a1: ValueError: no nodes today"


def test_a_handler_answer_of_the_wrong_type_names_the_plugin() -> None:
    class Odd(kp.ServiceType):
        name = "Odd"

        def frontends(self, service: kp.Service, port: kp.ServicePort, family: str,
                      cluster: kp.Cluster) -> Iterator[Any]:
            yield "192.0.2.1"

    class OddPlugin:
        @kp.hookimpl
        def kproxy_register_service_types(self, registry: Any) -> None:
            registry.register(Odd())

    objs = zoned_cluster()
    objs[3]["spec"]["type"] = "Odd"
    pm = make_plugin_manager([OddPlugin()], entry_points=False)
    with pytest.raises(kp.PluginError) as e:
        kp.Engine(kp.Cluster.from_objects(objs, plugins=pm), node="a1")
    assert str(e.value) == (
        "plugin OddPlugin: Service type Odd: frontends() returned '192.0.2.1' (str) for Service ns/web port http "
        "(IPv4); expected kproxy_core.FrontendSpec objects"
    )


def test_a_cluster_pickles_without_its_manager() -> None:
    """Dask sends clusters to workers: the manager (modules inside) stays behind."""
    import pickle

    pm = make_plugin_manager([PreferMyZone()], entry_points=False)
    cluster = kp.Cluster.from_objects(zoned_cluster(), plugins=pm)
    again = pickle.loads(pickle.dumps(cluster))
    assert cluster.plugins is pm and again.plugins is None
    assert again.services == cluster.services and again.nodes == cluster.nodes
    assert kp.Engine(again, node="a1").lookup("10.0.9.9", "10.96.0.10", 80).verdict == "DNAT"

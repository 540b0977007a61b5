"""Frontend-kind codes belong to each engine: kube-proxy's four kinds are 1-4 everywhere,
a plugin's kinds follow in each engine's own order, and every decoder (lookups, batches,
``decode``, traces, flow tables) reads the engine's ``frontend_names``. Self-agreement only:
there is no outside oracle for plugin kinds, so each engine is checked against the kinds its
own cluster asks for."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from k8s import ep, eport, node, port, service, slice_

import kproxy_core as kp
from kproxy_core import _engine_py
from kproxy_core.engine import COMPILED_AVAILABLE
from kproxy_core.plugins import make_plugin_manager
from kproxy_core.servicetypes import ServiceTypeRegistry
from kproxy_core.tables import MAX_FRONTEND_KINDS

NODE = "n1"
BUILTIN = (None, "ClusterIP", "NodePort", "ExternalIP", "LoadBalancer")
BASE = "192.0.2.1"  # a Service's plugin frontends: BASE, BASE + 1, ... one per kind
IMPLS = ["python", *(["compiled"] if COMPILED_AVAILABLE else [])]


def kinds_type(type_name: str) -> kp.ServiceType:
    """A Service type whose Services answer, besides their ClusterIP, on one address per
    kind listed in the annotation ``kinds/names`` (from ``kinds/base`` up), like the
    ClusterIP."""

    class KindsType(kp.ServiceType):
        name = type_name

        def frontends(self, service: kp.Service, port: kp.ServicePort, family: str,
                      cluster: kp.Cluster) -> Iterator[kp.FrontendSpec]:
            if family != "IPv4":
                return
            base = ipaddress.IPv4Address(service.annotations["kinds/base"])
            for i, kind in enumerate(service.annotations["kinds/names"].split(",")):
                yield kp.FrontendSpec(str(base + i), kind, policy="internal")

    return KindsType()


class TypesPlugin:
    def __init__(self, *type_names: str) -> None:
        self.types = [kinds_type(n) for n in type_names]

    @kp.hookimpl
    def kproxy_register_service_types(self, registry: ServiceTypeRegistry) -> None:
        for t in self.types:
            registry.register(t)


def typed(name: str, cluster_ip: str, type_name: str, kinds: list[str], base: str = BASE) -> list[dict[str, Any]]:
    """A Service of a plugin type answering on one address per kind, and its endpoints."""
    svc = service("ns", name, cluster_ip, [port(80, "http")], type=type_name)
    svc["metadata"]["annotations"] = {"kinds/names": ",".join(kinds), "kinds/base": base}
    return [svc, slice_("ns", name, [ep("10.0.0.5", NODE)], [eport(8080, "http")])]


def engine_of(plugin_types: tuple[str, ...], objs: list[dict[str, Any]], impl: str) -> kp.Engine:
    pm = make_plugin_manager([TypesPlugin(*plugin_types)], entry_points=False)
    cluster = kp.Cluster.from_objects([node(NODE, "192.168.0.2", pod_cidr="10.0.0.0/24"), *objs], plugins=pm)
    return kp.Engine(cluster, node=NODE, seed=1, impl=impl)


def addr(i: int) -> str:
    return str(ipaddress.IPv4Address(BASE) + i)


def frontend_of(engine: kp.Engine, dst: str) -> tuple[str | None, str | None, str | None]:
    """The frontend a packet to ``dst:80`` meets, as a lookup, a decoded batch and a trace say."""
    d = engine.lookup("10.0.0.99", dst, 80, "TCP", sport=1000, now=0.0, track=0)
    out = engine.lookup_batch(np.array([int(ipaddress.IPv4Address("10.0.0.99"))], dtype=np.uint32),
                              np.array([int(ipaddress.IPv4Address(dst))], dtype=np.uint32),
                              np.array([80], dtype=np.uint16), np.array([6], dtype=np.uint8),
                              np.array([1000], dtype=np.uint16), now=0.0, track=False)
    assert engine.frontend_names[out["frontend"][0]] == engine.decode(out)[0]["frontend"]
    t = engine.trace("10.0.0.99", dst, 80, "TCP", sport=1000, now=0.0)
    return d.frontend, engine.decode(out)[0]["frontend"], t.frontend


@pytest.mark.parametrize("impl", IMPLS)
def test_two_engines_with_different_plugins_each_decode_their_own_kinds(impl: str) -> None:
    # regression (issue 15): kind codes were process-wide, so a plugin kind one engine met
    # changed what another engine's core accepted and decoded
    box = engine_of(("Box",), typed("web", "10.96.0.10", "Box", ["Box"]), impl)
    edge = engine_of(("Edge",), typed("web", "10.96.0.10", "Edge", ["Edge", "Gate"]), impl)
    plain = engine_of((), [], impl)
    assert box.frontend_names == (*BUILTIN, "Box")
    assert edge.frontend_names == (*BUILTIN, "Edge", "Gate")  # code 5 is Edge here, Box there
    assert plain.frontend_names == BUILTIN == kp.FRONTEND_NAMES
    assert frontend_of(box, addr(0)) == ("Box",) * 3
    assert frontend_of(edge, addr(0)) == ("Edge",) * 3
    assert frontend_of(edge, addr(1)) == ("Gate",) * 3
    assert frontend_of(box, "10.96.0.10") == ("ClusterIP",) * 3  # the built-in codes everywhere
    assert frontend_of(edge, "10.96.0.10") == ("ClusterIP",) * 3


@pytest.mark.parametrize("impl", IMPLS)
def test_a_bare_core_knows_only_the_builtin_kinds(impl: str) -> None:
    box = engine_of(("Box",), typed("web", "10.96.0.10", "Box", ["Box"]), impl)
    t = box.tables
    names = [s.name for s in box.service_ports]
    core = box._impl.Core(seed=1)
    with pytest.raises(ValueError, match="rec_kind"):  # code 5 is no kind of this core's
        core.load(t["IPv4"], t["IPv6"], names)
    core.load(t["IPv4"], t["IPv6"], names, box.frontend_names)
    assert core.lookup("10.0.0.99", addr(0), 80, now=0.0).frontend == "Box"
    core.load(t["IPv4"], t["IPv6"], names)  # None: the names it has
    with pytest.raises(ValueError, match=r"^frontends: code 5 is 'Box' in this core, not 'Edge'"):
        core.load(t["IPv4"], t["IPv6"], names, [*BUILTIN, "Edge"])
    with pytest.raises(ValueError, match=r"^frontends: code 6: 'Box' has a code already"):
        core.update_ports([], [], [], [], [], ["Box"])
    with pytest.raises(ValueError, match=r"^frontends: code 6: '' is not a kind's name"):
        core.update_ports([], [], [], [], [], [""])
    with pytest.raises(ValueError, match=r"^frontends: expected a sequence of names, not str"):
        core.update_ports([], [], [], [], [], "Edge")
    assert core.lookup("10.0.0.99", addr(0), 80, now=0.0).frontend == "Box"  # unchanged
    core.update_ports([], [], [], [], [], ["Edge"])
    with pytest.raises(ValueError, match=r"^frontends: 128 kinds, more than 127"):
        core.update_ports([], [], [], [], [], [f"k{i}" for i in range(122)])


@pytest.mark.parametrize("impl", IMPLS)
def test_apply_adds_a_plugin_kind_in_place(impl: str) -> None:
    engine = engine_of(("Box", "Edge"), typed("web", "10.96.0.10", "Box", ["Box"]), impl)
    engine.lookup("10.0.0.99", addr(0), 80, "TCP", sport=7, now=0.0)  # a flow, coded 5
    got = engine.apply(typed("edge", "10.96.0.11", "Edge", ["Edge", "Box"], base="198.51.100.1"))
    assert not got.full  # Core.update_ports appended the new kind
    assert engine.frontend_names == (*BUILTIN, "Box", "Edge")
    assert frontend_of(engine, "198.51.100.1") == ("Edge",) * 3
    assert frontend_of(engine, "198.51.100.2") == ("Box",) * 3
    assert engine.lookup("10.0.0.99", addr(0), 80, "TCP", sport=7, now=1.0).frontend == "Box"  # the flow
    engine.apply([{"type": "DELETED", "object": typed("edge", "10.96.0.11", "Edge", ["Edge"])[0]}])
    assert engine.frontend_names == (*BUILTIN, "Box", "Edge")  # codes are never given back once loaded


@pytest.mark.parametrize("impl", IMPLS)
def test_kinds_are_not_used_up_across_engines(impl: str) -> None:
    most = MAX_FRONTEND_KINDS - 4  # plugin kinds one engine can have
    engines = [
        engine_of(("Many",), typed("web", "10.96.0.10", "Many", [f"{p}{i}" for i in range(most)]), impl)
        for p in "abc"
    ]  # 3 × 123 distinct kinds in one process
    for p, engine in zip("abc", engines, strict=True):
        assert len(engine.frontend_names) == MAX_FRONTEND_KINDS + 1
        assert engine.frontend_names[-1] == f"{p}{most - 1}"
        assert frontend_of(engine, addr(most - 1)) == (f"{p}{most - 1}",) * 3
        assert frontend_of(engine, addr(0)) == (f"{p}0",) * 3


@pytest.mark.parametrize("impl", IMPLS)
def test_one_engine_with_too_many_kinds_is_refused(impl: str) -> None:
    most = MAX_FRONTEND_KINDS - 4
    with pytest.raises(kp.ManifestError, match=(
            r"^Service ns/web:http: frontend kind 'k123' would be this engine's 128th kind: an engine "
            r"holds at most 127 \(a flow keeps its frontend's code in 7 bits\)")):
        engine_of(("Many",), typed("web", "10.96.0.10", "Many", [f"k{i}" for i in range(most + 1)]), impl)
    engine = engine_of(("Many",), typed("web", "10.96.0.10", "Many", [f"k{i}" for i in range(most)]), impl)
    before = engine.frontend_names
    with pytest.raises(kp.ManifestError, match="frontend kind 'extra' would be this engine's 128th kind"):
        engine.apply(typed("more", "10.96.0.11", "Many", ["k0", "extra"], base="198.51.100.1"))
    assert engine.frontend_names == before  # the refused apply took no code
    engine.apply(typed("more", "10.96.0.11", "Many", ["k0", "k5"], base="198.51.100.1"))  # known kinds fit
    assert frontend_of(engine, "198.51.100.2") == ("k5",) * 3


@pytest.mark.parametrize("impl", IMPLS)
def test_flow_tables_name_each_engines_kinds(impl: str) -> None:
    pa = pytest.importorskip("pyarrow")
    from kproxy_core.flows import classify

    box = engine_of(("Box",), typed("web", "10.96.0.10", "Box", ["Box"]), impl)
    edge = engine_of(("Edge",), typed("web", "10.96.0.10", "Edge", ["Edge"]), impl)
    table = pa.table({"src": ["10.0.0.99", "10.0.0.99", "10.0.0.99"], "dst": [addr(0), "10.96.0.10", "10.1.1.1"],
                      "dport": [80, 80, 80], "proto": ["TCP"] * 3})
    assert classify(table, box, track=False).column("frontend").to_pylist() == ["Box", "ClusterIP", None]
    assert classify(table, edge, track=False).column("frontend").to_pylist() == ["Edge", "ClusterIP", None]
    box.apply(typed("other", "10.96.0.11", "Box", ["Box", "Late"], base="198.51.100.1"))
    later = pa.table({"src": ["10.0.0.99"], "dst": ["198.51.100.2"], "dport": [80], "proto": ["TCP"]})
    assert classify(later, box, track=False).column("frontend").to_pylist() == ["Late"]  # a kind added later


def test_the_builtin_names_are_a_public_tuple() -> None:
    assert kp.FRONTEND_NAMES == BUILTIN and isinstance(kp.FRONTEND_NAMES, tuple)
    assert _engine_py.check_frontends(None, BUILTIN) == list(BUILTIN)

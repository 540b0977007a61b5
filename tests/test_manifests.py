"""kproxy_core.manifests: reading manifests, validation messages, mirroring, watch events."""

from __future__ import annotations

import copy
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kproxy_core.errors import ManifestError
from kproxy_core.manifests import (
    BETA_SLICE_NOTE,
    ChangeSet,
    apply_objects,
    cluster_from_objects,
    load,
    read_objects,
)
from kproxy_core.model import Cluster, Endpoint, EndpointPort, ServicePort

EXAMPLE = Path(__file__).parent.parent / "examples" / "mynginx.yaml"
SVC_LABEL = 'metadata.labels["kubernetes.io/service-name"]'

# ----------------------------------------------------------------------------- builders


def svc(name: str = "web", ns: str | None = "default", **spec: Any) -> dict[str, Any]:
    """A valid ClusterIP Service; keyword arguments override spec fields (None removes)."""
    body: dict[str, Any] = {
        "clusterIP": "10.96.0.10",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
    }
    for key, value in spec.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    meta: dict[str, Any] = {"name": name}
    if ns is not None:
        meta["namespace"] = ns
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": body}


def eps(
    name: str = "web-abc",
    service: str | None = "web",
    ns: str = "default",
    address_type: Any = "IPv4",
    endpoints: list[Any] | None = None,
    ports: list[Any] | None = None,
) -> dict[str, Any]:
    labels = {} if service is None else {"kubernetes.io/service-name": service}
    obj: dict[str, Any] = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "addressType": address_type,
        "ports": ports if ports is not None else [{"name": "http", "port": 8080}],
        "endpoints": endpoints
        if endpoints is not None
        else [{"addresses": ["10.0.1.1"], "conditions": {"ready": True}, "nodeName": "n1"}],
    }
    return obj


def legacy(
    name: str = "ext",
    ns: str = "default",
    subsets: list[Any] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": meta, "subsets": subsets or []}


def node(name: str = "worker-1", **fields: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": fields.pop("labels", {})},
        "spec": fields.pop("spec", {}),
        "status": {"addresses": fields.pop("addresses", [])},
    }
    return obj


def problems(*objects: Any) -> list[str]:
    with pytest.raises(ManifestError) as info:
        cluster_from_objects(objects)
    return list(info.value.problems)


def one_problem(*objects: Any) -> str:
    found = problems(*objects)
    assert len(found) == 1, found
    return found[0]


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


# ----------------------------------------------------------------------------- reading


def test_read_multi_document_yaml_file(tmp_path: Path) -> None:
    f = tmp_path / "cluster.yaml"
    f.write_text(yaml.safe_dump_all([svc(), None, eps()]) + "---\n# only a comment\n---\n" + yaml.safe_dump(node()))
    pairs = read_objects(f)
    assert [origin for origin, _ in pairs] == [f"{f}#0", f"{f}#2", f"{f}#4"]
    assert [obj["kind"] for _, obj in pairs] == ["Service", "EndpointSlice", "Node"]
    cluster = load(str(f))
    assert set(cluster.services) == {("default", "web")}
    assert set(cluster.slices) == {("default", "web-abc")}
    assert list(cluster.nodes) == ["worker-1"]
    assert cluster.warnings == ()


def test_read_directory_recursively_sorted(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.yml").write_text(yaml.safe_dump(node("n3")))
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(node("n1")))
    (tmp_path / "b" / "c.json").write_text(json.dumps(node("n2")))
    (tmp_path / "notes.txt").write_text("not: [a manifest")
    (tmp_path / "README.md").write_text("# nothing")
    cluster = load(tmp_path)
    assert list(cluster.nodes) == ["n1", "n2", "n3"]


def test_json_file_and_json_stream(tmp_path: Path) -> None:
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"kind": "List", "apiVersion": "v1", "items": [svc()]}, indent=2))
    stream = tmp_path / "watch.json"
    stream.write_text(json.dumps(event("ADDED", node("n1")), indent=2) + "\n" + json.dumps(event("ADDED", node("n2"))))
    pairs = read_objects(single, stream)
    assert [o for o, _ in pairs] == [f"{single}#0.items[0]", f"{stream}#0", f"{stream}#1"]
    cluster = load(single, stream)
    assert list(cluster.nodes) == ["n1", "n2"]
    assert ("default", "web") in cluster.services


def test_json_syntax_error_has_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.json"
    f.write_text('{\n  "kind": "Service",\n  "apiVersion": v1\n}\n')
    with pytest.raises(ManifestError) as info:
        read_objects(f)
    assert info.value.problems == (f"{f}: line 3: Expecting value",)


def test_lists_are_flattened_recursively() -> None:
    service_list = {
        "apiVersion": "v1",
        "kind": "ServiceList",
        "metadata": {"resourceVersion": "1"},
        "items": [svc("a", clusterIP="10.96.0.1"), svc("b", clusterIP="10.96.0.2")],
    }
    outer = {"apiVersion": "v1", "kind": "List", "items": [service_list, node(), None]}
    pairs = read_objects(outer)
    assert [o for o, _ in pairs] == [
        "<dict 0>.items[0].items[0]",
        "<dict 0>.items[0].items[1]",
        "<dict 0>.items[1]",
    ]
    cluster = cluster_from_objects([outer])
    assert set(cluster.services) == {("default", "a"), ("default", "b")}
    empty = {"apiVersion": "v1", "kind": "EndpointSliceList", "items": None}
    assert read_objects(empty) == []


def test_stdin_yaml_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(yaml.safe_dump_all([svc(), node()])))
    pairs = read_objects("-")
    assert [o for o, _ in pairs] == ["<stdin>#0", "<stdin>#1"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(svc()) + json.dumps(node())))
    cluster = load("-")
    assert list(cluster.nodes) == ["worker-1"]
    assert ("default", "web") in cluster.services


def test_dicts_and_iterables_of_dicts() -> None:
    pairs = read_objects(svc(), [node("a"), node("b")], (o for o in [eps()]))
    assert [o for o, _ in pairs] == ["<dict 0>", "<dict 1>", "<dict 2>", "<dict 3>"]
    cluster = load(svc(), [node("a"), node("b")])
    assert list(cluster.nodes) == ["a", "b"]
    assert Cluster.from_objects([svc()]).services == cluster.services
    # A single mapping given where an iterable is expected is one object.
    assert cluster_from_objects(svc()).services == cluster.services


def test_yaml_syntax_error_reports_line(tmp_path: Path) -> None:
    f = tmp_path / "cluster.yaml"
    f.write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  type: ClusterIP\n  ports: port: 80\n")
    with pytest.raises(ManifestError) as info:
        read_objects(f)
    (line,) = info.value.problems
    assert line.startswith(f"{f}: line 7: mapping values are not allowed")


def test_reading_problems_are_collected(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("---\n- a\n- b\n---\njust text\n")
    with pytest.raises(ManifestError) as info:
        read_objects(missing, scalar, [svc(), 5])
    assert info.value.problems == (
        f"{missing}: No such file or directory",
        f"{scalar}#0: the document is a list, not a mapping",
        f"{scalar}#1: the document is a string, not a mapping",
        "<dict 1>: the document is an integer, not a mapping",
    )
    assert isinstance(info.value, ValueError)


def test_kubectl_get_all_dump_skips_other_kinds(tmp_path: Path) -> None:
    dump = {
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "web-6b4-r2vxq", "namespace": "default"},
                "spec": {"containers": [{"name": "nginx", "image": "nginx"}]},
                "status": {"podIP": "100.96.2.2", "phase": "Running"},
            },
            svc(),
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"run": "web"}}},
            },
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {"name": "web-6b4", "namespace": "default"},
                "spec": {"replicas": 1},
            },
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}, "data": {"a": 1}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}},
            {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "spec": "junk"},
        ],
    }
    f = tmp_path / "all.yaml"
    f.write_text(yaml.safe_dump(dump))
    cluster = load(f)
    assert list(cluster.services) == [("default", "web")]
    assert cluster.slices == {} and cluster.nodes == {} and cluster.warnings == ()


def test_example_cluster() -> None:
    cluster = load(EXAMPLE)
    web = cluster.services[("default", "mynginx")]
    assert web.type == "NodePort"
    assert web.cluster_ips == ("100.68.181.31",)
    assert web.ports == (ServicePort("", "TCP", 80, 30379, 80),)
    assert list(cluster.nodes) == ["master-1", "worker-1", "worker-2"]
    assert cluster.nodes["worker-2"].zone == "us-east-1b"
    (eps_,) = cluster.slices_for("default", "mynginx")
    assert eps_.endpoints[0].addresses == ("100.96.2.2",)
    assert eps_.endpoints[0].target == "Pod default/mynginx-6b474476c4-r2vxq"
    assert cluster.warnings == ()


# ----------------------------------------------------------------------------- objects


def test_missing_kind_api_version_and_name() -> None:
    found = problems(
        {"apiVersion": "v1", "metadata": {"name": "x"}},
        {"kind": "Service", "metadata": {"name": "x"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "a"}},
        {"apiVersion": "v1", "kind": "Node"},
        {"apiVersion": 1, "kind": "Node", "metadata": {"name": "n"}},
    )
    assert found == [
        "<dict 0>: kind: required",
        "<dict 1>: apiVersion: required",
        "Service at <dict 2>: metadata.name: required",
        "Node at <dict 3>: metadata.name: required",
        "<dict 4>: apiVersion: 1 must be a string",
    ]


def test_namespace_defaults_to_default() -> None:
    cluster = cluster_from_objects([svc(ns=None), eps(ns="")])
    assert ("default", "web") in cluster.services
    assert ("default", "web-abc") in cluster.slices


def test_duplicates_last_one_wins_with_warning() -> None:
    first, second = svc(clusterIP="10.96.0.1"), svc(clusterIP="10.96.0.2")
    cluster = cluster_from_objects([first, node("n1"), second])
    assert cluster.services[("default", "web")].cluster_ips == ("10.96.0.2",)
    assert cluster.warnings == ("Service default/web: appears more than once in the input; the last one wins",)
    # A Node keeps the position of its first appearance.
    cluster = cluster_from_objects([node("a"), node("b"), node("a", labels={"x": "y"})])
    assert list(cluster.nodes) == ["a", "b"]
    assert cluster.nodes["a"].labels == {"x": "y"}


# ----------------------------------------------------------------------------- Service


def test_service_defaults() -> None:
    s = cluster_from_objects([svc()]).services[("default", "web")]
    assert s.type == "ClusterIP"
    assert s.cluster_ips == ("10.96.0.10",) and not s.headless and s.ip_families == ()
    assert s.ports == (ServicePort("http", "TCP", 80, 0, 8080),)
    assert s.external_traffic_policy == "Cluster" == s.internal_traffic_policy
    assert s.session_affinity == "None" and s.affinity_timeout == 10800
    assert s.health_check_node_port == 0 and s.allocate_load_balancer_node_ports
    assert s.selector is None and s.labels == {} and s.annotations == {}
    assert s.spec["clusterIP"] == "10.96.0.10"


def test_service_full() -> None:
    obj = svc(
        type="LoadBalancer",
        clusterIP="fd00::0a",
        clusterIPs=["fd00::0a", "10.96.0.10"],
        ipFamilies=["IPv6", "IPv4"],
        ports=[
            {"name": "http", "port": 80, "targetPort": "web", "nodePort": 30080},
            {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
        ],
        externalIPs=["192.0.2.1", "2001:DB8::1"],
        externalTrafficPolicy="Local",
        internalTrafficPolicy="",
        sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}},
        healthCheckNodePort=31000,
        allocateLoadBalancerNodePorts=False,
        loadBalancerSourceRanges=[" 203.0.113.0/25", "2001:db8::/32"],
        selector={"app": "web"},
    )
    obj["metadata"]["labels"] = {"app": "web"}
    obj["metadata"]["annotations"] = {"note": "x"}
    obj["status"] = {
        "loadBalancer": {
            "ingress": [
                {"ip": "198.51.100.7", "ipMode": "Proxy"},
                {"hostname": "lb.example.com"},
            ]
        }
    }
    s = cluster_from_objects([obj]).services[("default", "web")]
    assert s.cluster_ips == ("fd00::a", "10.96.0.10")
    assert s.ip_families == ("IPv6", "IPv4")
    assert s.cluster_ip_for("IPv4") == "10.96.0.10"
    assert s.ports == (
        ServicePort("http", "TCP", 80, 30080, "web"),
        ServicePort("dns", "UDP", 53, 30053, None),
    )
    assert s.external_ips == ("192.0.2.1", "2001:db8::1")
    assert s.external_traffic_policy == "Local" and s.internal_traffic_policy == "Cluster"
    assert s.session_affinity == "ClientIP" and s.affinity_timeout == 60
    assert s.health_check_node_port == 31000 and not s.allocate_load_balancer_node_ports
    assert s.load_balancer_source_ranges == ("203.0.113.0/25", "2001:db8::/32")
    assert [(i.ip, i.hostname, i.ip_mode) for i in s.load_balancer_ingress] == [
        ("198.51.100.7", "", "Proxy"),
        ("", "lb.example.com", None),
    ]
    assert s.selector == {"app": "web"} and s.labels == {"app": "web"}
    assert s.annotations == {"note": "x"}


@pytest.mark.parametrize(
    "spec",
    [
        {"clusterIP": "None"},
        {"clusterIP": "None", "clusterIPs": ["None"]},
        {"clusterIP": ""},
        {"clusterIP": None},
        {"clusterIP": None, "clusterIPs": []},
    ],
)
def test_headless(spec: dict[str, Any]) -> None:
    s = cluster_from_objects([svc(**spec)]).services[("default", "web")]
    assert s.headless and s.cluster_ips == ()


def test_external_name_needs_no_ports_or_cluster_ip() -> None:
    obj = svc(type="ExternalName", externalName="db.example.com", clusterIP=None, ports=None)
    s = cluster_from_objects([obj]).services[("default", "web")]
    assert s.type == "ExternalName" and s.external_name == "db.example.com" and s.ports == ()


def test_empty_selector_is_none() -> None:
    assert cluster_from_objects([svc(selector={})]).services[("default", "web")].selector is None


W = "Service default/web: "


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 70000}]},
            "spec.ports[1].port: 70000 is not a valid port",
        ),
        ({"ports": [{"port": 0}]}, "spec.ports[0].port: 0 is not a valid port"),
        ({"ports": [{"port": "80"}]}, 'spec.ports[0].port: "80" is not a valid port'),
        ({"ports": [{"port": True}]}, "spec.ports[0].port: true is not a valid port"),
        ({"ports": [{"port": 80.0}]}, "spec.ports[0].port: 80.0 is not a valid port"),
        ({"ports": [{"name": "x"}]}, "spec.ports[0].port: required"),
        (
            {"ports": [{"port": 80, "protocol": "tcp"}]},
            'spec.ports[0].protocol: "tcp" is not supported (TCP, UDP or SCTP)',
        ),
        (
            {"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]},
            'spec.ports[1].name: duplicate port name "a" (also spec.ports[0])',
        ),
        (
            {"ports": [{"name": "a", "port": 80}, {"port": 81}]},
            "spec.ports[1].name: required when there is more than one port",
        ),
        (
            {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]},
            "spec.ports[1]: duplicate port 80/TCP (also spec.ports[0])",
        ),
        (
            {"ports": [{"port": 80, "nodePort": 30080}]},
            "spec.ports[0].nodePort: may not be used when type is 'ClusterIP'",
        ),
        (
            {"type": "NodePort", "ports": [{"port": 80, "nodePort": 70000}]},
            "spec.ports[0].nodePort: 70000 is not a valid port",
        ),
        (
            {"ports": [{"port": 80, "targetPort": [8080]}]},
            "spec.ports[0].targetPort: [8080] must be an integer or a string",
        ),
        (
            {"type": "Balanced"},
            'spec.type: "Balanced" is not a known Service type (ClusterIP, NodePort, LoadBalancer, ExternalName; '
            "plugins add others)",
        ),
        ({"clusterIP": "10.0.0.300"}, 'spec.clusterIP: "10.0.0.300" is not a valid IP address'),
        (
            {"clusterIPs": ["10.0.0.1"], "clusterIP": "10.0.0.2"},
            'spec.clusterIPs[0]: "10.0.0.1" must match spec.clusterIP ("10.0.0.2")',
        ),
        (
            {"clusterIP": None, "clusterIPs": ["10.0.0.1", "10.0.0.2"]},
            "spec.clusterIPs[1]: may specify no more than one IP for each IP family",
        ),
        (
            {"clusterIP": None, "clusterIPs": ["10.0.0.1", "fd00::1", "10.0.0.3"]},
            "spec.clusterIPs: must have at most 2 entries, not 3",
        ),
        (
            {"clusterIP": "None", "clusterIPs": ["None", "10.0.0.1"]},
            'spec.clusterIPs: "None" must be the only entry of a headless service',
        ),
        (
            {"ipFamilies": ["IPv6"]},
            'spec.ipFamilies[0]: "IPv6" does not match the family of spec.clusterIPs[0] (IPv4)',
        ),
        ({"ipFamilies": ["ipv4"]}, 'spec.ipFamilies[0]: "ipv4" is not supported (IPv4 or IPv6)'),
        (
            {"ipFamilies": ["IPv4", "IPv4"]},
            'spec.ipFamilies[1]: duplicate IP family "IPv4"',
        ),
        (
            {"externalIPs": ["1.2.3.4", "example.com"]},
            'spec.externalIPs[1]: "example.com" is not a valid IP address',
        ),
        (
            {"externalTrafficPolicy": "Local "},
            'spec.externalTrafficPolicy: "Local " is not supported (Cluster or Local)',
        ),
        (
            {"internalTrafficPolicy": "local"},
            'spec.internalTrafficPolicy: "local" is not supported (Cluster or Local)',
        ),
        (
            {"sessionAffinity": "Cookie"},
            'spec.sessionAffinity: "Cookie" is not supported (None or ClientIP)',
        ),
        (
            {"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}},
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 86401 must be an integer between 1 and 86400",
        ),
        (
            {"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}},
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 must be an integer between 1 and 86400",
        ),
        ({"healthCheckNodePort": -1}, "spec.healthCheckNodePort: -1 is not a valid port"),
        (
            {"allocateLoadBalancerNodePorts": "yes"},
            'spec.allocateLoadBalancerNodePorts: "yes" must be true or false',
        ),
        ({"ports": {"port": 80}}, "spec.ports: must be a list, not a mapping"),
        ({"ports": ["80"]}, "spec.ports[0]: must be a mapping, not a string"),
        ({"selector": ["app"]}, "spec.selector: must be a mapping, not a list"),
        ({"selector": {"version": 1.0}}, 'spec.selector["version"]: 1.0 must be a string'),
        ({"externalName": 5}, "spec.externalName: 5 must be a string"),
        (
            {"loadBalancerSourceRanges": [10]},
            "spec.loadBalancerSourceRanges[0]: 10 must be a string",
        ),
    ],
)
def test_service_errors(spec: dict[str, Any], message: str) -> None:
    assert one_problem(svc(**spec)) == W + message


def test_service_spec_must_be_a_mapping() -> None:
    obj = svc()
    obj["spec"] = ["ports"]
    assert one_problem(obj) == "Service default/web: spec: must be a mapping, not a list"
    obj = svc()
    obj["metadata"]["labels"] = {"a": True}
    assert one_problem(obj) == 'Service default/web: metadata.labels["a"]: true must be a string'


def test_service_problems_are_all_collected() -> None:
    found = problems(
        svc("a", clusterIP="x", ports=[{"port": 0}]),
        svc("b", clusterIP="10.96.0.2", type="Foo"),
    )
    assert found == [
        'Service default/a: spec.clusterIP: "x" is not a valid IP address',
        "Service default/a: spec.ports[0].port: 0 is not a valid port",
        'Service default/b: spec.type: "Foo" is not a known Service type (ClusterIP, NodePort, LoadBalancer, '
        "ExternalName; plugins add others)",
    ]


def test_cluster_ip_conflict_names_the_other_service() -> None:
    found = problems(svc("y", ns="b"), svc("x", ns="b"), svc("z", ns="a"))
    assert found == [
        "Service b/x: spec.clusterIPs[0]: 10.96.0.10 is already used by Service a/z",
        "Service b/y: spec.clusterIPs[0]: 10.96.0.10 is already used by Service a/z",
    ]
    # Headless services and ExternalName services do not take part.
    cluster_from_objects([svc("a", clusterIP="None"), svc("b", clusterIP="None"), svc("c", clusterIP="10.1.1.1")])


def test_node_port_conflict() -> None:
    a = svc("a", type="NodePort", ports=[{"port": 80, "nodePort": 30080}])
    b = svc(
        "b",
        clusterIP="10.96.0.11",
        type="NodePort",
        ports=[
            {"name": "x", "port": 80, "nodePort": 30080},
            {"name": "y", "port": 81, "nodePort": 30080, "protocol": "UDP"},
            {"name": "z", "port": 82, "nodePort": 30080, "protocol": "UDP"},
        ],
    )
    assert problems(b, a) == [
        "Service default/b: spec.ports[0].nodePort: 30080/TCP is already used by Service default/a",
        "Service default/b: spec.ports[2].nodePort: 30080/UDP is already used by spec.ports[1]",
    ]


def test_leading_zeros_are_accepted_with_a_warning() -> None:
    obj = svc(clusterIP="010.096.000.010", externalIPs=["192.000.002.001"])
    cluster = cluster_from_objects([obj])
    s = cluster.services[("default", "web")]
    assert s.cluster_ips == ("10.96.0.10",) and s.external_ips == ("192.0.2.1",)
    assert cluster.warnings == (
        'Service default/web: spec.clusterIP: "010.096.000.010" has leading zeros; '
        "read as 10.96.0.10 (like kube-proxy's ParseIPSloppy)",
        'Service default/web: spec.externalIPs[0]: "192.000.002.001" has leading zeros; '
        "read as 192.0.2.1 (like kube-proxy's ParseIPSloppy)",
    )
    # clusterIPs[0] equal to clusterIP is reported once, under spec.clusterIP.
    both = svc(clusterIP="010.096.000.010", clusterIPs=["010.096.000.010"])
    assert len(cluster_from_objects([both]).warnings) == 1


def test_source_ranges_trimmed_canonical_and_invalid_dropped() -> None:
    obj = svc(
        type="LoadBalancer",
        ports=[{"port": 80, "nodePort": 30080}],
        loadBalancerSourceRanges=[" 203.0.113.000/025", "bogus", "10.0.0.1", " 10.1.0.0/16 "],
    )
    cluster = cluster_from_objects([obj])
    s = cluster.services[("default", "web")]
    assert s.load_balancer_source_ranges == ("203.0.113.0/25", "10.1.0.0/16")
    assert cluster.warnings == (
        'Service default/web: spec.loadBalancerSourceRanges[0]: " 203.0.113.000/025" has '
        "leading zeros; read as 203.0.113.0/25 (like kube-proxy's ParseIPSloppy)",
        'Service default/web: spec.loadBalancerSourceRanges[1]: "bogus" is not a valid CIDR; kube-proxy drops it',
        'Service default/web: spec.loadBalancerSourceRanges[2]: "10.0.0.1" is not a valid CIDR; kube-proxy drops it',
    )


def test_invalid_load_balancer_ingress_ip_is_skipped_with_warning() -> None:
    obj = svc(type="LoadBalancer", ports=[{"port": 80, "nodePort": 30080}])
    obj["status"] = {"loadBalancer": {"ingress": [{"ip": "1.2.3"}, {"ip": "1.2.3.4"}]}}
    cluster = cluster_from_objects([obj])
    ingress = cluster.services[("default", "web")].load_balancer_ingress
    assert [i.ip for i in ingress] == ["1.2.3.4"]
    assert cluster.warnings == (
        'Service default/web: status.loadBalancer.ingress[0].ip: "1.2.3" is not a valid IP '
        "address; kube-proxy skips it",
    )


# ----------------------------------------------------------------------------- EndpointSlice


def test_slice_fields_and_condition_defaults() -> None:
    obj = eps(
        endpoints=[
            {
                "addresses": ["10.0.1.1", "10.0.1.2"],
                "nodeName": "n1",
                "zone": "z1",
                "hostname": "web-0",
                "hints": {"forZones": [{"name": "z1"}], "forNodes": [{"name": "n1"}]},
                "targetRef": {"kind": "Pod", "namespace": "default", "name": "web-0", "uid": "u"},
            },
            {
                "addresses": ["10.0.1.3"],
                "conditions": {"ready": False, "serving": True, "terminating": True},
                "targetRef": {"kind": "Pod", "name": "web-1"},
            },
            {"addresses": ["10.0.1.4"], "conditions": {"ready": None}},
        ],
        ports=[{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "", "port": None}],
    )
    cluster = cluster_from_objects([svc(), obj])
    s = cluster.slices[("default", "web-abc")]
    assert s.service_name == "web" and s.address_type == "IPv4" and s.mirrored_from is None
    assert s.ports == (EndpointPort("http", "TCP", 8080), EndpointPort("", "TCP", None))
    assert s.endpoints == (
        Endpoint(
            ("10.0.1.1", "10.0.1.2"),
            True,
            True,
            False,
            "n1",
            "z1",
            "web-0",
            ("z1",),
            ("n1",),
            "Pod default/web-0",
        ),
        Endpoint(("10.0.1.3",), False, True, True, target="Pod default/web-1"),
        Endpoint(("10.0.1.4",)),
    )
    assert cluster.warnings == ()
    assert cluster.slices_for("default", "web") == [s]


def test_fqdn_and_ipv6_slices() -> None:
    fqdn = eps("f", address_type="FQDN", endpoints=[{"addresses": ["db.example.com"]}])
    six = eps("s", address_type="IPv6", endpoints=[{"addresses": ["FD00:0::1"]}])
    cluster = cluster_from_objects([svc(), fqdn, six])
    assert cluster.slices[("default", "f")].endpoints[0].addresses == ("db.example.com",)
    assert cluster.slices[("default", "s")].endpoints[0].addresses == ("fd00::1",)


S = "EndpointSlice default/web-abc: "


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            {"endpoints": [{"addresses": ["10.0.0.300"]}]},
            'endpoints[0].addresses[0]: "10.0.0.300" is not a valid IPv4 address',
        ),
        (
            {"endpoints": [{"addresses": ["10.0.0.1", "fd00::1"]}]},
            'endpoints[0].addresses[1]: "fd00::1" is not a valid IPv4 address',
        ),
        (
            {"address_type": "IPv6", "endpoints": [{"addresses": ["10.0.0.1"]}]},
            'endpoints[0].addresses[0]: "10.0.0.1" is not a valid IPv6 address',
        ),
        ({"address_type": None}, "addressType: required (IPv4, IPv6 or FQDN)"),
        ({"address_type": "IPv5"}, 'addressType: "IPv5" is not supported (IPv4, IPv6 or FQDN)'),
        ({"endpoints": [{"addresses": []}]}, "endpoints[0].addresses: must have at least 1 address"),
        ({"endpoints": [{}]}, "endpoints[0].addresses: must have at least 1 address"),
        (
            {"endpoints": [{"addresses": [f"10.0.0.{i}" for i in range(101)]}]},
            "endpoints[0].addresses: must have at most 100 addresses, not 101",
        ),
        (
            {"endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": "true"}}]},
            'endpoints[0].conditions.ready: "true" must be true or false',
        ),
        (
            {"endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"terminating": 1}}]},
            "endpoints[0].conditions.terminating: 1 must be true or false",
        ),
        (
            {"endpoints": [{"addresses": ["10.0.0.1"], "nodeName": 7}]},
            "endpoints[0].nodeName: 7 must be a string",
        ),
        ({"endpoints": [["10.0.0.1"]]}, "endpoints[0]: must be a mapping, not a list"),
        ({"endpoints": {"addresses": []}}, "endpoints: must be a list, not a mapping"),
        ({"ports": [{"name": "a", "port": 0}]}, "ports[0].port: 0 is not a valid port"),
        (
            {"ports": [{"name": "a", "port": 80, "protocol": "HTTP"}]},
            'ports[0].protocol: "HTTP" is not supported (TCP, UDP or SCTP)',
        ),
        (
            {"endpoints": [{"addresses": ["10.0.0.1"], "hints": {"forZones": ["z"]}}]},
            "endpoints[0].hints.forZones[0]: must be a mapping, not a string",
        ),
    ],
)
def test_slice_errors(kw: dict[str, Any], message: str) -> None:
    assert one_problem(svc(), eps(**kw)) == S + message


def test_slice_warnings() -> None:
    cluster = cluster_from_objects(
        [
            svc(),
            eps(
                ports=[{"port": 80}, {"name": None, "port": 81}, {"name": "", "port": 82}],
                endpoints=[{"addresses": ["010.000.001.001"]}],
            ),
            eps("orphan", service="gone"),
            eps("unlabelled", service=None),
        ]
    )
    assert cluster.warnings == (
        S + 'ports[0].name is absent; kube-proxy ignores such ports (write name: "")',
        S + 'ports[1].name is absent; kube-proxy ignores such ports (write name: "")',
        S + 'endpoints[0].addresses[0]: "010.000.001.001" has leading zeros; read as 10.0.1.1 '
        "(like kube-proxy's ParseIPSloppy)",
        f"EndpointSlice default/unlabelled: {SVC_LABEL}: missing or empty; the slice is ignored by kube-proxy",
        f"EndpointSlice default/orphan: {SVC_LABEL}: Service default/gone not found",
    )
    s = cluster.slices[("default", "web-abc")]
    assert [p.name for p in s.ports] == [None, None, ""]
    assert s.endpoints[0].addresses == ("10.0.1.1",)
    assert cluster.slices[("default", "unlabelled")].service_name == ""


def test_v1beta1_slice_is_read_as_v1_with_one_warning() -> None:
    topo = {"kubernetes.io/hostname": "n2", "topology.kubernetes.io/zone": "z1", "topology.kubernetes.io/region": "r"}
    beta = eps(endpoints=[
        {"addresses": ["10.0.1.1"], "conditions": {"ready": True}, "topology": topo},
        # the nodeName field wins over the topology hostname; a zone field over the topology zone
        {"addresses": ["10.0.1.2"], "conditions": {"ready": False}, "nodeName": "n3", "zone": "z9",
         "topology": topo, "hints": {"forZones": [{"name": "z1"}]}},
        {"addresses": ["10.0.1.3"]},
    ])
    beta["apiVersion"] = "discovery.k8s.io/v1beta1"
    other = eps(name="web-def", endpoints=[{"addresses": ["10.0.1.4"], "topology": topo}])
    other["apiVersion"] = "discovery.k8s.io/v1beta1"
    cluster = cluster_from_objects([svc(), beta, other])
    e = cluster.slices[("default", "web-abc")].endpoints
    assert [(x.addresses, x.node_name, x.zone, x.ready) for x in e] == [
        (("10.0.1.1",), "n2", "z1", True),
        (("10.0.1.2",), "n3", "z9", False),
        (("10.0.1.3",), None, None, True),
    ]
    assert e[1].zone_hints == ("z1",)
    assert cluster.slices[("default", "web-def")].endpoints[0].node_name == "n2"
    # one line for the whole input, not one per slice
    assert cluster.warnings == (BETA_SLICE_NOTE,)


def test_v1beta1_slice_errors_name_the_slice() -> None:
    beta = eps(endpoints=[{"addresses": ["10.0.1.1"], "topology": {"kubernetes.io/hostname": 7}}])
    beta["apiVersion"] = "discovery.k8s.io/v1beta1"
    with pytest.raises(ManifestError, match=r"^EndpointSlice default/web-abc: endpoints\[0\]\.nodeName: 7"):
        cluster_from_objects([svc(), beta])


def test_typed_list_items_take_the_list_kind() -> None:
    # kubectl cluster-info dump / the API server: items of a typed list carry no apiVersion/kind
    service = svc()
    del service["apiVersion"], service["kind"]
    nodes = {"apiVersion": "v1", "kind": "NodeList",
             "items": [{"metadata": {"name": "n1"}, "status": {"addresses": [{"type": "InternalIP",
                                                                                "address": "192.168.0.1"}]}}]}
    doc = {"apiVersion": "v1", "kind": "ServiceList", "metadata": {}, "items": [service]}
    events = {"apiVersion": "v1", "kind": "EventList", "items": [{"metadata": {"name": "e1"}}]}
    cluster = cluster_from_objects(read_objects(doc, nodes, events))
    assert list(cluster.services) == [("default", "web")]
    assert list(cluster.nodes) == ["n1"]
    # an item that names its own kind keeps it; one with only one of the two is not guessed
    half = svc(name="half")
    del half["kind"]
    with pytest.raises(ManifestError, match=r"items\[0\]: kind: required"):
        read_and_build({"apiVersion": "v1", "kind": "ServiceList", "items": [half]})


def read_and_build(*docs: Any) -> Cluster:
    return cluster_from_objects(read_objects(*docs))


@pytest.mark.parametrize("path", ["", " "])
def test_an_empty_path_is_an_error_not_the_current_directory(path: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "svc.yaml").write_text(yaml.safe_dump(svc()))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ManifestError, match="an empty path"):
        read_objects(path)


# ----------------------------------------------------------------------------- Endpoints


def test_endpoints_are_mirrored_ready_and_not_ready() -> None:
    obj = legacy(
        subsets=[
            {
                "addresses": [
                    {
                        "ip": "10.0.0.1",
                        "nodeName": "n1",
                        "hostname": "h1",
                        "targetRef": {"kind": "Pod", "namespace": "default", "name": "p1"},
                    }
                ],
                "notReadyAddresses": [{"ip": "10.0.0.2"}],
                "ports": [{"port": 5432}],
            }
        ]
    )
    cluster = cluster_from_objects([svc("ext", selector=None), obj])
    assert cluster.slices == {}
    (mirror,) = cluster.legacy_endpoints[("default", "ext")]
    assert mirror.name == "ext-mirror-0"
    assert mirror.service_name == "ext" and mirror.address_type == "IPv4"
    assert mirror.mirrored_from == "Endpoints default/ext"
    assert mirror.ports == (EndpointPort("", "TCP", 5432),)
    # addressToEndpoint sets only Ready; nil serving/terminating read as True/False.
    assert mirror.endpoints == (
        Endpoint(("10.0.0.1",), True, True, False, "n1", None, "h1", target="Pod default/p1"),
        Endpoint(("10.0.0.2",), False, True, False),
    )
    assert cluster.slices_for("default", "ext") == [mirror]


def test_endpoints_dual_family_subset_gives_one_slice_per_family() -> None:
    obj = legacy(
        subsets=[
            {
                "addresses": [{"ip": "fd00::1"}, {"ip": "10.0.0.1"}, {"ip": "010.0.0.2"}],
                "ports": [{"name": "a", "port": 80, "protocol": "UDP"}, {"name": "b", "port": 81}],
            }
        ]
    )
    cluster = cluster_from_objects([obj])
    v4, v6 = cluster.legacy_endpoints[("default", "ext")]
    assert (v4.name, v4.address_type, v6.name, v6.address_type) == (
        "ext-mirror-0",
        "IPv4",
        "ext-mirror-1",
        "IPv6",
    )
    assert [e.addresses for e in v4.endpoints] == [("10.0.0.1",), ("10.0.0.2",)]
    assert [e.addresses for e in v6.endpoints] == [("fd00::1",)]
    assert v4.ports == v6.ports == (EndpointPort("a", "UDP", 80), EndpointPort("b", "TCP", 81))
    assert cluster.warnings == (
        'Endpoints default/ext: subsets[0].addresses[2].ip: "010.0.0.2" has leading zeros; '
        "read as 10.0.0.2 (like kube-proxy's ParseIPSloppy)",
    )


def test_endpoints_repacked_like_the_controller() -> None:
    # The same address ready in one subset and not ready in another for the same port:
    # RepackSubsets keeps it once, not ready. Subsets with the same ports merge.
    obj = legacy(
        subsets=[
            {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}]},
            {"notReadyAddresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]},
            {"addresses": [{"ip": "10.0.0.9"}], "ports": [{"port": 90}]},
            {"addresses": [{"ip": "10.0.0.7"}]},
        ]
    )
    cluster = cluster_from_objects([obj])
    first, second = cluster.legacy_endpoints[("default", "ext")]
    assert [(e.addresses[0], e.ready) for e in first.endpoints] == [
        ("10.0.0.2", True),
        ("10.0.0.1", False),
    ]
    assert [(e.addresses[0], p.port) for e in second.endpoints for p in second.ports] == [("10.0.0.9", 90)]
    assert cluster.warnings == (
        "Endpoints default/ext: subsets[3].ports: empty; the mirroring controller drops this subset",
    )


@pytest.mark.parametrize(
    ("labels", "annotations"),
    [
        ({"endpointslice.kubernetes.io/skip-mirror": "true"}, None),
        (None, {"control-plane.alpha.kubernetes.io/leader": "{}"}),
    ],
)
def test_endpoints_not_mirrored(labels: dict[str, str] | None, annotations: dict[str, str] | None) -> None:
    subsets = [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]
    obj = legacy(subsets=subsets, labels=labels, annotations=annotations)
    cluster = cluster_from_objects([svc("ext"), obj])
    assert cluster.legacy_endpoints == {}
    assert cluster.slices_for("default", "ext") == []


def test_slices_for_uses_legacy_endpoints_only_when_the_controller_would() -> None:
    subsets = [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"name": "http", "port": 80}]}]
    real = eps("web-real", service="web")
    with_selector = svc(selector={"app": "web"})
    without_selector = svc(selector=None)
    ep = legacy("web", subsets=subsets)

    cluster = cluster_from_objects([with_selector, real, ep])
    assert [s.name for s in cluster.slices_for("default", "web")] == ["web-real"]
    cluster = cluster_from_objects([without_selector, real, ep])
    assert [s.name for s in cluster.slices_for("default", "web")] == ["web-mirror-0", "web-real"]
    cluster = cluster_from_objects([with_selector, ep])
    assert [s.name for s in cluster.slices_for("default", "web")] == ["web-mirror-0"]


E = "Endpoints default/ext: "


@pytest.mark.parametrize(
    ("subset", "message"),
    [
        (
            {"addresses": [{"ip": "10.0.0.1"}, {"ip": "bad"}], "ports": [{"port": 80}]},
            'subsets[0].addresses[1].ip: "bad" is not a valid IP address',
        ),
        (
            {"notReadyAddresses": [{"hostname": "x"}], "ports": [{"port": 80}]},
            "subsets[0].notReadyAddresses[0].ip: required",
        ),
        (
            {"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 65536}]},
            "subsets[0].ports[0].port: 65536 is not a valid port",
        ),
        (
            {"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80, "protocol": "udp"}]},
            'subsets[0].ports[0].protocol: "udp" is not supported (TCP, UDP or SCTP)',
        ),
        (
            {"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}, {"name": "b", "port": 81}]},
            "subsets[0].ports[0].name: required when there is more than one port",
        ),
        ({"addresses": "10.0.0.1"}, "subsets[0].addresses: must be a list, not a string"),
    ],
)
def test_endpoints_errors(subset: dict[str, Any], message: str) -> None:
    assert one_problem(legacy(subsets=[subset])) == E + message


# ----------------------------------------------------------------------------- Node


def test_node_fields() -> None:
    obj = node(
        "n1",
        labels={"failure-domain.beta.kubernetes.io/zone": "old-zone"},
        spec={"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]},
        addresses=[
            {"type": "Hostname", "address": "n1"},
            {"type": "InternalIP", "address": "192.168.0.2"},
            {"type": "InternalDNS", "address": "n1.internal"},
            {"type": "ExternalIP", "address": "2001:DB8::2"},
        ],
    )
    n = cluster_from_objects([obj]).nodes["n1"]
    assert n.addresses == (("InternalIP", "192.168.0.2"), ("ExternalIP", "2001:db8::2"))
    assert n.pod_cidrs == ("10.244.1.0/24", "fd00:10:244:1::/64")
    assert n.zone == "old-zone"
    obj["metadata"]["labels"]["topology.kubernetes.io/zone"] = "new-zone"
    assert cluster_from_objects([obj]).nodes["n1"].zone == "new-zone"


def test_node_problems_and_warnings() -> None:
    bad = node("n1", addresses=[{"type": "InternalIP", "address": "192.168.0.256"}])
    assert one_problem(bad) == ('Node n1: status.addresses[0].address: "192.168.0.256" is not a valid IP address')
    bad = node("n1", spec={"podCIDRs": ["10.244.1.0/33"]})
    assert one_problem(bad) == 'Node n1: spec.podCIDRs[0]: "10.244.1.0/33" is not a valid CIDR'
    sloppy = node(
        "n1",
        spec={"podCIDR": "010.244.001.000/24"},
        addresses=[{"type": "InternalIP", "address": "192.168.000.002"}],
    )
    cluster = cluster_from_objects([sloppy])
    assert cluster.nodes["n1"].pod_cidrs == ("10.244.1.0/24",)
    assert cluster.nodes["n1"].addresses == (("InternalIP", "192.168.0.2"),)
    assert cluster.warnings == (
        'Node n1: status.addresses[0].address: "192.168.000.002" has leading zeros; '
        "read as 192.168.0.2 (like kube-proxy's ParseIPSloppy)",
        'Node n1: spec.podCIDR: "010.244.001.000/24" has leading zeros; read as 10.244.1.0/24 '
        "(like kube-proxy's ParseIPSloppy)",
    )


# ----------------------------------------------------------------------------- apply / watch


def test_apply_watch_events_and_changesets() -> None:
    base = cluster_from_objects([svc(), eps(), node("n1")])

    # MODIFIED slice moving to another service: both services are reported.
    moved = eps(service="api")
    c1, ch = apply_objects(base, [event("ADDED", svc("api", clusterIP="10.96.0.11"))])
    assert ch == ChangeSet(frozenset({("default", "api")}), frozenset(), False)
    c2, ch = apply_objects(c1, [event("MODIFIED", moved)])
    assert ch.services == {("default", "web"), ("default", "api")} and not ch.all
    assert c2.slices[("default", "web-abc")].service_name == "api"
    assert c2.slices_for("default", "web") == []

    # DELETED removes; deleting something absent is a no-op.
    c3, ch = apply_objects(c2, [event("DELETED", svc("api")), event("DELETED", svc("nope"))])
    assert ("default", "api") not in c3.services
    assert ch.services == {("default", "api")}
    assert c3.warnings == (f"EndpointSlice default/web-abc: {SVC_LABEL}: Service default/api not found",)

    # Node changes affect everything.
    c4, ch = apply_objects(c3, [event("MODIFIED", node("n1", labels={"a": "b"}))])
    assert ch == ChangeSet(frozenset(), frozenset({"n1"}), True)
    c5, ch = apply_objects(c4, [event("DELETED", node("n1"))])
    assert c5.nodes == {} and ch.nodes == {"n1"} and ch.all

    # An identical object changes nothing; bookmarks are ignored.
    same, ch = apply_objects(base, [svc(), {"type": "BOOKMARK", "object": {"kind": "Service"}}])
    assert ch == ChangeSet() and same == base

    # The base is never modified.
    assert set(base.services) == {("default", "web")} and "n1" in base.nodes


def test_apply_plain_objects_and_endpoints() -> None:
    base = cluster_from_objects([svc("ext", selector=None)])
    subsets = [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]
    c1, ch = apply_objects(base, [legacy(subsets=subsets)])
    assert ch.services == {("default", "ext")}
    assert len(c1.slices_for("default", "ext")) == 1
    skip = legacy(subsets=subsets, labels={"endpointslice.kubernetes.io/skip-mirror": "true"})
    c2, ch = apply_objects(c1, [event("MODIFIED", skip)])
    assert ch.services == {("default", "ext")} and c2.legacy_endpoints == {}


def test_apply_replaces_warnings_of_replaced_objects() -> None:
    sloppy = svc(clusterIP="010.096.000.010")
    base = cluster_from_objects([sloppy, node("n1"), eps("orphan", service="gone")])
    assert len(base.warnings) == 2
    fixed, _ = apply_objects(base, [event("MODIFIED", svc())])
    assert fixed.warnings == (f"EndpointSlice default/orphan: {SVC_LABEL}: Service default/gone not found",)
    adopted, ch = apply_objects(fixed, [svc("gone", clusterIP="10.96.0.99")])
    assert adopted.warnings == () and ch.services == {("default", "gone")}


def test_apply_validates_the_merged_cluster() -> None:
    base = cluster_from_objects([svc("a")])
    with pytest.raises(ManifestError) as info:
        apply_objects(base, [event("ADDED", svc("b"))])
    assert info.value.problems == (
        "Service default/b: spec.clusterIPs[0]: 10.96.0.10 is already used by Service default/a",
    )
    ok, _ = apply_objects(base, [event("DELETED", svc("a")), event("ADDED", svc("b"))])
    assert list(ok.services) == [("default", "b")]


def test_apply_bad_events() -> None:
    base = Cluster()
    with pytest.raises(ManifestError) as info:
        apply_objects(
            base,
            [
                ("w.json#0", {"type": "UPDATED", "object": svc()}),
                ("w.json#1", {"type": "ADDED", "object": "svc"}),
                ("w.json#2", {"type": "ERROR", "object": {"kind": "Status", "message": "gone"}}),
            ],
        )
    assert info.value.problems == (
        'w.json#0: type: "UPDATED" is not a watch event type (ADDED, MODIFIED or DELETED)',
        "w.json#1: object: must be a mapping, not a string",
        'w.json#2: watch ERROR event: "gone"',
    )


def test_cluster_from_objects_equals_apply_on_empty() -> None:
    objects = [svc(), eps(), node("n1"), legacy("x", subsets=[])]
    assert cluster_from_objects(objects) == apply_objects(Cluster(), objects)[0]
    pairs = read_objects(objects)
    assert cluster_from_objects(pairs) == cluster_from_objects(objects)


# ----------------------------------------------------------------------------- junk in


json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["", "None", "TCP", "UDP", "IPv4", "IPv6", "10.0.0.1", "fd00::1", "010.0.0.1", "Local", "a"])
)
json_like = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.sampled_from(["name", "port", "ip"]), children, max_size=4)
    ),
    max_leaves=20,
)


def maybe(keys: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={k: v | json_like for k, v in keys.items()})


port_like = maybe(
    {
        "name": st.text(max_size=3),
        "port": st.integers(-1, 70000),
        "protocol": st.sampled_from(["TCP", "UDP", "tcp"]),
        "nodePort": st.integers(0, 40000),
        "targetPort": st.integers(0, 9),
    }
)
address_like = maybe(
    {
        "ip": st.sampled_from(["10.0.0.1", "fd00::1", "x"]),
        "nodeName": st.text(max_size=3),
        "hostname": st.text(max_size=3),
        "targetRef": maybe({"kind": st.just("Pod"), "name": st.text(max_size=3), "uid": st.text(max_size=3)}),
    }
)
meta_like = maybe(
    {
        "name": st.sampled_from(["a", "b"]),
        "namespace": st.sampled_from(["x", ""]),
        "labels": st.dictionaries(
            st.sampled_from(
                ["kubernetes.io/service-name", "topology.kubernetes.io/zone", "endpointslice.kubernetes.io/skip-mirror"]
            ),
            st.text(max_size=3),
        ),
        "annotations": st.dictionaries(st.text(max_size=3), st.text(max_size=3)),
    }
)
service_like = st.fixed_dictionaries(
    {"apiVersion": st.just("v1"), "kind": st.just("Service"), "metadata": meta_like},
    optional={
        "spec": maybe(
            {
                "type": st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]),
                "clusterIP": st.sampled_from(["10.96.0.1", "None", "", "fd00::1"]),
                "clusterIPs": st.lists(st.sampled_from(["10.96.0.1", "fd00::1", "None"]), max_size=3),
                "ipFamilies": st.lists(st.sampled_from(["IPv4", "IPv6"]), max_size=3),
                "ports": st.lists(port_like, max_size=3),
                "externalIPs": st.lists(st.sampled_from(["1.2.3.4", "x"]), max_size=2),
                "sessionAffinityConfig": maybe({"clientIP": maybe({"timeoutSeconds": st.integers()})}),
                "loadBalancerSourceRanges": st.lists(st.sampled_from(["1.0.0.0/8", "x"]), max_size=2),
                "selector": st.dictionaries(st.text(max_size=3), st.text(max_size=3)),
                "healthCheckNodePort": st.integers(-1, 70000),
            }
        ),
        "status": maybe(
            {
                "loadBalancer": maybe(
                    {
                        "ingress": st.lists(
                            maybe({"ip": st.sampled_from(["1.2.3.4", "x"]), "hostname": st.text(max_size=3)}),
                            max_size=2,
                        )
                    }
                )
            }
        ),
    },
)
slice_like = st.fixed_dictionaries(
    {"apiVersion": st.just("discovery.k8s.io/v1"), "kind": st.just("EndpointSlice"), "metadata": meta_like},
    optional={
        "addressType": st.sampled_from(["IPv4", "IPv6", "FQDN", "x"]) | json_like,
        "ports": st.lists(port_like, max_size=3) | json_like,
        "endpoints": st.lists(
            maybe(
                {
                    "addresses": st.lists(st.sampled_from(["10.0.0.1", "fd00::1", "a.b"]), max_size=3),
                    "conditions": maybe(
                        {"ready": st.booleans(), "serving": st.booleans(), "terminating": st.booleans()}
                    ),
                    "nodeName": st.text(max_size=3),
                    "hints": maybe(
                        {
                            "forZones": st.lists(maybe({"name": st.text(max_size=2)})),
                            "forNodes": st.lists(maybe({"name": st.text(max_size=2)})),
                        }
                    ),
                    "targetRef": maybe({"kind": st.just("Pod"), "name": st.text(max_size=3)}),
                }
            ),
            max_size=3,
        )
        | json_like,
    },
)
endpoints_like = st.fixed_dictionaries(
    {"apiVersion": st.just("v1"), "kind": st.just("Endpoints"), "metadata": meta_like},
    optional={
        "subsets": st.lists(
            maybe(
                {
                    "addresses": st.lists(address_like, max_size=3),
                    "notReadyAddresses": st.lists(address_like, max_size=3),
                    "ports": st.lists(port_like, max_size=3),
                }
            ),
            max_size=3,
        )
        | json_like
    },
)
node_like = st.fixed_dictionaries(
    {"apiVersion": st.just("v1"), "kind": st.just("Node"), "metadata": meta_like},
    optional={
        "spec": maybe(
            {
                "podCIDR": st.sampled_from(["10.0.0.0/24", "x"]),
                "podCIDRs": st.lists(st.sampled_from(["10.0.0.0/24", "fd00::/64", "1"])),
            }
        ),
        "status": maybe(
            {
                "addresses": st.lists(
                    maybe(
                        {
                            "type": st.sampled_from(["InternalIP", "ExternalIP", "Hostname"]),
                            "address": st.sampled_from(["10.0.0.1", "fd00::1", "x", "01.2.3.4"]),
                        }
                    ),
                    max_size=3,
                )
            }
        ),
    },
)
any_object = service_like | slice_like | endpoints_like | node_like | json_like
watch_event = st.fixed_dictionaries(
    {"type": st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "X"]), "object": any_object}
)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_object | watch_event, max_size=6))
def test_junk_never_raises_anything_but_manifest_error(objects: list[Any]) -> None:
    snapshot = copy.deepcopy(objects)
    try:
        cluster = cluster_from_objects(objects)
    except ManifestError as e:
        assert e.problems and all(isinstance(p, str) and "\n" not in p for p in e.problems)
    else:
        assert isinstance(cluster, Cluster)
        assert all(isinstance(w, str) for w in cluster.warnings)
    assert objects == snapshot  # the input is not modified


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(any_object, max_size=4), st.lists(any_object | watch_event, max_size=4))
def test_junk_apply_never_raises_anything_but_manifest_error(first: list[Any], second: list[Any]) -> None:
    try:
        base = cluster_from_objects(first)
    except ManifestError:
        base = Cluster()
    try:
        cluster, changes = apply_objects(base, second)
    except ManifestError:
        return
    assert isinstance(changes, ChangeSet)
    assert all(k[1] in {"a", "b"} for k in changes.services if k in cluster.services)


# ----------------------------------------------------------------------------- performance


def test_20k_services_and_slices_load_fast() -> None:
    objects: list[dict[str, Any]] = []
    for i in range(20000):
        ip = f"{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        objects.append(
            svc(
                f"s{i}",
                clusterIP=f"10.{ip}",
                type="NodePort" if i % 2 else "ClusterIP",
                selector={"app": f"s{i}"},
                ports=[
                    {"name": "http", "port": 80, "targetPort": 8080} | ({"nodePort": 30000 + i // 2} if i % 2 else {}),
                    {"name": "https", "port": 443, "targetPort": "https"},
                ],
            )
        )
    for i in range(20000):
        objects.append(
            eps(
                f"s{i}-abcde",
                service=f"s{i}",
                ports=[{"name": "http", "port": 8080}, {"name": "https", "port": 8443}],
                endpoints=[
                    {
                        "addresses": [f"100.{64 + j}.{(i >> 8) & 255}.{i & 255}"],
                        "conditions": {"ready": True, "serving": True, "terminating": False},
                        "nodeName": f"node-{j}",
                        "zone": "z1",
                        "targetRef": {"kind": "Pod", "namespace": "default", "name": f"p{i}-{j}"},
                    }
                    for j in range(3)
                ],
            )
        )
    start = time.perf_counter()
    cluster = cluster_from_objects(objects)
    elapsed = time.perf_counter() - start
    assert len(cluster.services) == 20000 and len(cluster.slices) == 20000
    assert cluster.warnings == ()
    assert elapsed < 5.0, f"loading 40k objects took {elapsed:.2f}s"


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=200) | st.sampled_from(["a: [1\n", "? [a, b]\n: c\n", "- !!set {a}\n"]))
def test_junk_text_on_stdin_never_raises_anything_but_manifest_error(text: str) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdin", io.StringIO(text))
        try:
            load("-")
        except ManifestError as e:
            assert e.problems


def test_yaml_only_types_are_reported_not_raised(tmp_path: Path) -> None:
    f = tmp_path / "odd.yaml"
    f.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, creationTimestamp: 2021-01-01}\n"
        "spec:\n  clusterIP: 10.96.0.10\n  ports: !!set {80}\n  externalName: !!binary aGk=\n"
    )
    with pytest.raises(ManifestError) as info:
        load(f)
    assert info.value.problems == (
        "Service default/web: spec.ports: must be a list, not a set",
        "Service default/web: spec.externalName: \"b'hi'\" must be a string",
    )


def test_a_yaml_reader_error_is_one_line(tmp_path: Path) -> None:
    # bug (fuzzing): a control character made a ManifestError line span two lines ('\n  in "<unicode string>"')
    f = tmp_path / "bad.yaml"
    f.write_bytes(b"\x0c\x01kind: Node\n")
    with pytest.raises(ManifestError) as info:
        load(f)
    assert len(info.value.problems) == 1 and "\n" not in info.value.problems[0]
    assert "control characters are not allowed" in info.value.problems[0]


@pytest.mark.parametrize("field", ["name", "namespace"])
@pytest.mark.parametrize("bad", ["a\nb", 'we"b', "a b", "x/y", "é", "-a", "a" * 254])
def test_names_that_are_no_object_names_are_refused(field: str, bad: str) -> None:
    # bug (fuzzing): a namespace holding a newline loaded, and broke the iptables rule text (iptables-save failed)
    obj = svc()
    obj["metadata"][field] = bad
    with pytest.raises(ManifestError, match=rf"metadata\.{field}: .* is not a"):
        cluster_from_objects([obj])


def test_a_port_name_that_is_no_name_is_refused() -> None:
    # bug (fuzzing): a Service port named with a newline loaded, and broke the iptables rule text (iptables-save failed)
    obj = svc(ports=[{"name": "we\x01\nb", "port": 80}])
    with pytest.raises(ManifestError, match=r"spec\.ports\[0\]\.name: .* is not a port name"):
        cluster_from_objects([obj])

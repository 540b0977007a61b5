"""Service environment variables: kubelet's own test cases, the DISCOVERY facts, the formats.

Transcribed from kubernetes/kubernetes:
- ``pkg/kubelet/envvars/envvars_test.go``: TestFromServices (exact list, exact order);
- ``pkg/kubelet/kubelet_pods_test.go``: TestMakeEnvironmentVariables (the cases about
  services, enableServiceLinks, ConfigMaps/Secrets, ``$(VAR)`` expansion);
- ``third_party/forked/golang/expansion/expand_test.go``: TestMapReference, TestMapping,
  TestMappingDual.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import cli_run
import pytest
import yaml
from k8s import port, service

import kproxy_core as kp
from kproxy_core.envvars import (
    config_sources,
    container_env,
    env_name,
    expand,
    format_env,
    from_services,
    service_env,
    service_host,
)
from kproxy_core.model import Service, ServicePort

DATA = Path(__file__).resolve().parent / "data" / "envvars"
CLUSTER_FILE = DATA / "cluster.yaml"


def lines(pairs: list[tuple[str, str]] | dict[str, str]) -> str:
    items = pairs.items() if isinstance(pairs, dict) else pairs
    return "".join(f"{k}={v}\n" for k, v in items)


# --------------------------------------------------------------------------- TestFromServices


def go_service(name: str, cluster_ip: str, *ports: tuple[str, int, str], selector: str = "baz") -> Service:
    """A Service as the Go test builds it: spec.clusterIP as written, no API validation
    (``q-u-u-x`` has an unnamed port beside a named one, which the API server rejects)."""
    return Service(
        namespace="",
        name=name,
        cluster_ips=() if cluster_ip in ("", "None") else (cluster_ip,),
        headless=cluster_ip in ("", "None"),
        ports=tuple(ServicePort(n, proto, p) for n, p, proto in ports),
        selector={"bar": selector},
        spec={
            "selector": {"bar": selector},
            "clusterIP": cluster_ip,
            "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
        },
    )


FROM_SERVICES_INPUT = [
    go_service("foo-bar", "1.2.3.4", ("", 8080, "TCP")),
    go_service("abc-123", "5.6.7.8", ("u-d-p", 8081, "UDP"), ("t-c-p", 8081, "TCP")),
    go_service("q-u-u-x", "9.8.7.6", ("", 8082, "TCP"), ("8083", 8083, "TCP")),
    go_service("svrc-clusterip-none", "None", ("", 8082, "TCP")),
    go_service("svrc-clusterip-empty", "", ("", 8082, "TCP")),
    go_service("super-ipv6", "2001:DB8::", ("u-d-p", 8084, "UDP"), ("t-c-p", 8084, "TCP")),
    go_service("sctp-1", "1.2.3.4", ("", 777, "SCTP"), selector="sctp-sel"),
]

FROM_SERVICES_EXPECTED = [
    ("FOO_BAR_SERVICE_HOST", "1.2.3.4"),
    ("FOO_BAR_SERVICE_PORT", "8080"),
    ("FOO_BAR_PORT", "tcp://1.2.3.4:8080"),
    ("FOO_BAR_PORT_8080_TCP", "tcp://1.2.3.4:8080"),
    ("FOO_BAR_PORT_8080_TCP_PROTO", "tcp"),
    ("FOO_BAR_PORT_8080_TCP_PORT", "8080"),
    ("FOO_BAR_PORT_8080_TCP_ADDR", "1.2.3.4"),
    ("ABC_123_SERVICE_HOST", "5.6.7.8"),
    ("ABC_123_SERVICE_PORT", "8081"),
    ("ABC_123_SERVICE_PORT_U_D_P", "8081"),
    ("ABC_123_SERVICE_PORT_T_C_P", "8081"),
    ("ABC_123_PORT", "udp://5.6.7.8:8081"),
    ("ABC_123_PORT_8081_UDP", "udp://5.6.7.8:8081"),
    ("ABC_123_PORT_8081_UDP_PROTO", "udp"),
    ("ABC_123_PORT_8081_UDP_PORT", "8081"),
    ("ABC_123_PORT_8081_UDP_ADDR", "5.6.7.8"),
    ("ABC_123_PORT_8081_TCP", "tcp://5.6.7.8:8081"),
    ("ABC_123_PORT_8081_TCP_PROTO", "tcp"),
    ("ABC_123_PORT_8081_TCP_PORT", "8081"),
    ("ABC_123_PORT_8081_TCP_ADDR", "5.6.7.8"),
    ("Q_U_U_X_SERVICE_HOST", "9.8.7.6"),
    ("Q_U_U_X_SERVICE_PORT", "8082"),
    ("Q_U_U_X_SERVICE_PORT_8083", "8083"),
    ("Q_U_U_X_PORT", "tcp://9.8.7.6:8082"),
    ("Q_U_U_X_PORT_8082_TCP", "tcp://9.8.7.6:8082"),
    ("Q_U_U_X_PORT_8082_TCP_PROTO", "tcp"),
    ("Q_U_U_X_PORT_8082_TCP_PORT", "8082"),
    ("Q_U_U_X_PORT_8082_TCP_ADDR", "9.8.7.6"),
    ("Q_U_U_X_PORT_8083_TCP", "tcp://9.8.7.6:8083"),
    ("Q_U_U_X_PORT_8083_TCP_PROTO", "tcp"),
    ("Q_U_U_X_PORT_8083_TCP_PORT", "8083"),
    ("Q_U_U_X_PORT_8083_TCP_ADDR", "9.8.7.6"),
    ("SUPER_IPV6_SERVICE_HOST", "2001:DB8::"),
    ("SUPER_IPV6_SERVICE_PORT", "8084"),
    ("SUPER_IPV6_SERVICE_PORT_U_D_P", "8084"),
    ("SUPER_IPV6_SERVICE_PORT_T_C_P", "8084"),
    ("SUPER_IPV6_PORT", "udp://[2001:DB8::]:8084"),
    ("SUPER_IPV6_PORT_8084_UDP", "udp://[2001:DB8::]:8084"),
    ("SUPER_IPV6_PORT_8084_UDP_PROTO", "udp"),
    ("SUPER_IPV6_PORT_8084_UDP_PORT", "8084"),
    ("SUPER_IPV6_PORT_8084_UDP_ADDR", "2001:DB8::"),
    ("SUPER_IPV6_PORT_8084_TCP", "tcp://[2001:DB8::]:8084"),
    ("SUPER_IPV6_PORT_8084_TCP_PROTO", "tcp"),
    ("SUPER_IPV6_PORT_8084_TCP_PORT", "8084"),
    ("SUPER_IPV6_PORT_8084_TCP_ADDR", "2001:DB8::"),
    ("SCTP_1_SERVICE_HOST", "1.2.3.4"),
    ("SCTP_1_SERVICE_PORT", "777"),
    ("SCTP_1_PORT", "sctp://1.2.3.4:777"),
    ("SCTP_1_PORT_777_SCTP", "sctp://1.2.3.4:777"),
    ("SCTP_1_PORT_777_SCTP_PROTO", "sctp"),
    ("SCTP_1_PORT_777_SCTP_PORT", "777"),
    ("SCTP_1_PORT_777_SCTP_ADDR", "1.2.3.4"),
]


def test_TestFromServices() -> None:
    assert from_services(FROM_SERVICES_INPUT) == FROM_SERVICES_EXPECTED


def test_TestFromServices_keeps_input_order() -> None:
    got = from_services(FROM_SERVICES_INPUT[::-1])
    assert [n for n, _ in got[:7]] == [n for n, _ in FROM_SERVICES_EXPECTED if n.startswith("SCTP_1_")]
    assert sorted(got) == sorted(FROM_SERVICES_EXPECTED)


# DISCOVERY.md §2.5, pasted as written there.
DISCOVERY_2_5 = """\
FOO_BAR_SERVICE_HOST=1.2.3.4
FOO_BAR_SERVICE_PORT=8080
FOO_BAR_PORT=tcp://1.2.3.4:8080
FOO_BAR_PORT_8080_TCP=tcp://1.2.3.4:8080
FOO_BAR_PORT_8080_TCP_PROTO=tcp
FOO_BAR_PORT_8080_TCP_PORT=8080
FOO_BAR_PORT_8080_TCP_ADDR=1.2.3.4
ABC_123_SERVICE_HOST=5.6.7.8
ABC_123_SERVICE_PORT=8081
ABC_123_SERVICE_PORT_U_D_P=8081
ABC_123_SERVICE_PORT_T_C_P=8081
ABC_123_PORT=udp://5.6.7.8:8081
ABC_123_PORT_8081_UDP=udp://5.6.7.8:8081
ABC_123_PORT_8081_UDP_PROTO=udp
ABC_123_PORT_8081_UDP_PORT=8081
ABC_123_PORT_8081_UDP_ADDR=5.6.7.8
ABC_123_PORT_8081_TCP=tcp://5.6.7.8:8081
ABC_123_PORT_8081_TCP_PROTO=tcp
ABC_123_PORT_8081_TCP_PORT=8081
ABC_123_PORT_8081_TCP_ADDR=5.6.7.8
Q_U_U_X_SERVICE_HOST=9.8.7.6
Q_U_U_X_SERVICE_PORT=8082
Q_U_U_X_SERVICE_PORT_8083=8083
Q_U_U_X_PORT=tcp://9.8.7.6:8082
Q_U_U_X_PORT_8082_TCP=tcp://9.8.7.6:8082
Q_U_U_X_PORT_8082_TCP_PROTO=tcp
Q_U_U_X_PORT_8082_TCP_PORT=8082
Q_U_U_X_PORT_8082_TCP_ADDR=9.8.7.6
Q_U_U_X_PORT_8083_TCP=tcp://9.8.7.6:8083
Q_U_U_X_PORT_8083_TCP_PROTO=tcp
Q_U_U_X_PORT_8083_TCP_PORT=8083
Q_U_U_X_PORT_8083_TCP_ADDR=9.8.7.6
SUPER_IPV6_SERVICE_HOST=2001:DB8::
SUPER_IPV6_SERVICE_PORT=8084
SUPER_IPV6_SERVICE_PORT_U_D_P=8084
SUPER_IPV6_SERVICE_PORT_T_C_P=8084
SUPER_IPV6_PORT=udp://[2001:DB8::]:8084
SUPER_IPV6_PORT_8084_UDP=udp://[2001:DB8::]:8084
SUPER_IPV6_PORT_8084_UDP_PROTO=udp
SUPER_IPV6_PORT_8084_UDP_PORT=8084
SUPER_IPV6_PORT_8084_UDP_ADDR=2001:DB8::
SUPER_IPV6_PORT_8084_TCP=tcp://[2001:DB8::]:8084
SUPER_IPV6_PORT_8084_TCP_PROTO=tcp
SUPER_IPV6_PORT_8084_TCP_PORT=8084
SUPER_IPV6_PORT_8084_TCP_ADDR=2001:DB8::
SCTP_1_SERVICE_HOST=1.2.3.4
SCTP_1_SERVICE_PORT=777
SCTP_1_PORT=sctp://1.2.3.4:777
SCTP_1_PORT_777_SCTP=sctp://1.2.3.4:777
SCTP_1_PORT_777_SCTP_PROTO=sctp
SCTP_1_PORT_777_SCTP_PORT=777
SCTP_1_PORT_777_SCTP_ADDR=1.2.3.4
"""


def test_discovery_2_5_worked_example() -> None:
    assert lines(from_services(FROM_SERVICES_INPUT)) == DISCOVERY_2_5


def go_manifest(svc: Service, namespace: str = "ns") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": namespace, "name": svc.name},
            "spec": dict(svc.spec)}


def test_TestFromServices_through_manifests() -> None:
    """The inputs the API server would accept, each loaded from a manifest: the same variables.

    Each alone: ``foo-bar`` and ``sctp-1`` share 1.2.3.4, which a cluster rejects. ``q-u-u-x`` is
    left out: its unnamed port beside a named one fails validation. ``""`` loads as a Service
    without a ClusterIP and, like ``None``, gives nothing."""
    blocks: dict[str, list[tuple[str, str]]] = {}
    for name, value in FROM_SERVICES_EXPECTED:
        blocks.setdefault(name.split("_SERVICE_")[0].split("_PORT")[0], []).append((name, value))
    for svc in FROM_SERVICES_INPUT:
        if svc.name == "q-u-u-x":
            with pytest.raises(kp.ManifestError, match=r"q-u-u-x: spec.ports\[0\].name: required"):
                kp.Cluster.from_objects([go_manifest(svc)])
            continue
        cluster = kp.Cluster.from_objects([go_manifest(svc)])
        got = service_env(cluster, "ns", master_namespace="ns")
        assert list(got.items()) == blocks.get(env_name(svc.name), []), svc.name
    cluster = kp.Cluster.from_objects([go_manifest(FROM_SERVICES_INPUT[5])])
    assert cluster.services[("ns", "super-ipv6")].cluster_ips == ("2001:db8::",)  # the model canonicalises ...
    assert cluster.services[("ns", "super-ipv6")].spec["clusterIP"] == "2001:DB8::"  # ... the spec keeps it


# --------------------------------------------------------------------------- TestMakeEnvironmentVariables


def build_service(name: str, namespace: str, cluster_ip: str, protocol: str, port_: int) -> dict[str, Any]:
    """kubelet_pods_test.go's buildService: one unnamed port."""
    return service(namespace, name, cluster_ip, [{"protocol": protocol, "port": port_}])


# kubelet's list also holds test2/test and default/not-special a second and third time, with
# clusterIP "None" and "": a Cluster keys Services by namespace/name, so those cannot sit
# beside the real ones; they give nothing (see test_headless_and_externalname_skipped).
KUBELET_SERVICES = [
    build_service("kubernetes", "default", "1.2.3.1", "TCP", 8081),
    build_service("test", "test1", "1.2.3.3", "TCP", 8083),
    build_service("kubernetes", "test2", "1.2.3.4", "TCP", 8084),
    build_service("test", "test2", "1.2.3.5", "TCP", 8085),
    build_service("not-special", "default", "1.2.3.8", "TCP", 8088),
]

KUBERNETES_1_2_3_1 = {
    "KUBERNETES_SERVICE_HOST": "1.2.3.1",
    "KUBERNETES_SERVICE_PORT": "8081",
    "KUBERNETES_PORT": "tcp://1.2.3.1:8081",
    "KUBERNETES_PORT_8081_TCP": "tcp://1.2.3.1:8081",
    "KUBERNETES_PORT_8081_TCP_PROTO": "tcp",
    "KUBERNETES_PORT_8081_TCP_PORT": "8081",
    "KUBERNETES_PORT_8081_TCP_ADDR": "1.2.3.1",
}
KUBERNETES_1_2_3_4 = {
    "KUBERNETES_SERVICE_HOST": "1.2.3.4",
    "KUBERNETES_SERVICE_PORT": "8084",
    "KUBERNETES_PORT": "tcp://1.2.3.4:8084",
    "KUBERNETES_PORT_8084_TCP": "tcp://1.2.3.4:8084",
    "KUBERNETES_PORT_8084_TCP_PROTO": "tcp",
    "KUBERNETES_PORT_8084_TCP_PORT": "8084",
    "KUBERNETES_PORT_8084_TCP_ADDR": "1.2.3.4",
}
TEST_1_2_3_3 = {
    "TEST_SERVICE_HOST": "1.2.3.3",
    "TEST_SERVICE_PORT": "8083",
    "TEST_PORT": "tcp://1.2.3.3:8083",
    "TEST_PORT_8083_TCP": "tcp://1.2.3.3:8083",
    "TEST_PORT_8083_TCP_PROTO": "tcp",
    "TEST_PORT_8083_TCP_PORT": "8083",
    "TEST_PORT_8083_TCP_ADDR": "1.2.3.3",
}
TEST_1_2_3_5 = {
    "TEST_SERVICE_HOST": "1.2.3.5",
    "TEST_SERVICE_PORT": "8085",
    "TEST_PORT": "tcp://1.2.3.5:8085",
    "TEST_PORT_8085_TCP": "tcp://1.2.3.5:8085",
    "TEST_PORT_8085_TCP_PROTO": "tcp",
    "TEST_PORT_8085_TCP_PORT": "8085",
    "TEST_PORT_8085_TCP_ADDR": "1.2.3.5",
}
NOT_SPECIAL_1_2_3_8 = {
    "NOT_SPECIAL_SERVICE_HOST": "1.2.3.8",
    "NOT_SPECIAL_SERVICE_PORT": "8088",
    "NOT_SPECIAL_PORT": "tcp://1.2.3.8:8088",
    "NOT_SPECIAL_PORT_8088_TCP": "tcp://1.2.3.8:8088",
    "NOT_SPECIAL_PORT_8088_TCP_PROTO": "tcp",
    "NOT_SPECIAL_PORT_8088_TCP_PORT": "8088",
    "NOT_SPECIAL_PORT_8088_TCP_ADDR": "1.2.3.8",
}


def lit(name: str, value: str = "") -> dict[str, Any]:
    return {"name": name, "value": value} if value else {"name": name}


def field_ref(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def key_ref(name: str, kind: str, obj: str, key: str, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": obj, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {kind: ref}}


API_SERVER_ENV = [
    lit("FOO", "BAR"),
    lit("TEST_SERVICE_HOST", "1.2.3.3"),
    lit("TEST_SERVICE_PORT", "8083"),
    lit("TEST_PORT", "tcp://1.2.3.3:8083"),
    lit("TEST_PORT_8083_TCP", "tcp://1.2.3.3:8083"),
    lit("TEST_PORT_8083_TCP_PROTO", "tcp"),
    lit("TEST_PORT_8083_TCP_PORT", "8083"),
    lit("TEST_PORT_8083_TCP_ADDR", "1.2.3.3"),
]
EXPANSION_ENV = [
    lit("TEST_LITERAL", "test-test-test"),
    field_ref("POD_NAME", "metadata.name"),
    lit("OUT_OF_ORDER_TEST", "$(OUT_OF_ORDER_TARGET)"),
    lit("OUT_OF_ORDER_TARGET", "FOO"),
    lit("EMPTY_VAR"),
    lit("EMPTY_TEST", "foo-$(EMPTY_VAR)"),
    lit("POD_NAME_TEST2", "test2-$(POD_NAME)"),
    lit("POD_NAME_TEST3", "$(POD_NAME_TEST2)-3"),
    lit("LITERAL_TEST", "literal-$(TEST_LITERAL)"),
]
EXPANSION_EXPECTED = {
    "TEST_LITERAL": "test-test-test",
    "POD_NAME": "dapi-test-pod-name",
    "POD_NAME_TEST2": "test2-dapi-test-pod-name",
    "POD_NAME_TEST3": "test2-dapi-test-pod-name-3",
    "LITERAL_TEST": "literal-test-test-test",
    "OUT_OF_ORDER_TEST": "$(OUT_OF_ORDER_TARGET)",
    "OUT_OF_ORDER_TARGET": "FOO",
    "TEST_UNDEFINED": "$(UNDEFINED_VAR)",
    "EMPTY_VAR": "",
    "EMPTY_TEST": "foo-",
}
CONFIGMAP_ENV_FROM = [
    {"configMapRef": {"name": "test-config-map"}},
    {"prefix": "p_", "configMapRef": {"name": "test-config-map"}},
]
SECRET_ENV_FROM = [
    {"secretRef": {"name": "test-secret"}},
    {"prefix": "p_", "secretRef": {"name": "test-secret"}},
]
DUPE_ENV = [lit("TEST_LITERAL", "test-test-test"), lit("EXPANSION_TEST", "$(REPLACE_ME)"), lit("DUPE_TEST", "ENV_VAR")]

# (case name, ns, enableServiceLinks, container, nilLister, configMap data, secret data, expected env)
# kubelet's fake API client returns the test's ConfigMap/Secret for whatever name is asked; here it
# is given under the name the container refers to.
MAKE_ENV_CASES: list[tuple[str, str, bool, dict[str, Any], bool, Any, Any, dict[str, str]]] = [
    ("api server = Y, kubelet = Y", "test1", False, {"env": API_SERVER_ENV}, False, None, None,
     {"FOO": "BAR", **TEST_1_2_3_3, **KUBERNETES_1_2_3_1}),
    ("api server = Y, kubelet = N", "test1", False, {"env": API_SERVER_ENV}, True, None, None,
     {"FOO": "BAR", **TEST_1_2_3_3}),
    ("api server = N; kubelet = Y", "test1", False, {"env": [lit("FOO", "BAZ")]}, False, None, None,
     {"FOO": "BAZ", **KUBERNETES_1_2_3_1}),
    ("api server = N; kubelet = Y; service env vars", "test1", True, {"env": [lit("FOO", "BAZ")]}, False, None, None,
     {"FOO": "BAZ", **TEST_1_2_3_3, **KUBERNETES_1_2_3_1}),
    ("master service in pod ns", "test2", False, {"env": [lit("FOO", "ZAP")]}, False, None, None,
     {"FOO": "ZAP", **KUBERNETES_1_2_3_1}),
    ("master service in pod ns, service env vars", "test2", True, {"env": [lit("FOO", "ZAP")]}, False, None, None,
     {"FOO": "ZAP", **TEST_1_2_3_5, **KUBERNETES_1_2_3_4}),
    ("pod in master service ns", "default", False, {}, False, None, None, dict(KUBERNETES_1_2_3_1)),
    ("pod in master service ns, service env vars", "default", True, {}, False, None, None,
     {**NOT_SPECIAL_1_2_3_8, **KUBERNETES_1_2_3_1}),
    ("env expansion", "test1", False, {"env": [*EXPANSION_ENV, lit("TEST_UNDEFINED", "$(UNDEFINED_VAR)")]},
     False, None, None, {**EXPANSION_EXPECTED, **KUBERNETES_1_2_3_1}),
    ("env expansion, service env vars", "test1", True,
     {"env": [*EXPANSION_ENV, lit("SERVICE_VAR_TEST", "$(TEST_SERVICE_HOST):$(TEST_SERVICE_PORT)"),
              lit("TEST_UNDEFINED", "$(UNDEFINED_VAR)")]},
     False, None, None, {**EXPANSION_EXPECTED, **TEST_1_2_3_3, "SERVICE_VAR_TEST": "1.2.3.3:8083",
                         **KUBERNETES_1_2_3_1}),
    ("configmapkeyref_missing_optional", "test", False,
     {"env": [key_ref("POD_NAME", "configMapKeyRef", "missing-config-map", "key", optional=True)]},
     False, None, None, dict(KUBERNETES_1_2_3_1)),
    ("configmapkeyref_missing_key_optional", "test", False,
     {"env": [key_ref("POD_NAME", "configMapKeyRef", "test-config-map", "key", optional=True)]},
     True, {"a": "b"}, None, {}),
    ("secretkeyref_missing_optional", "test", False,
     {"env": [key_ref("POD_NAME", "secretKeyRef", "missing-secret", "key", optional=True)]},
     False, None, None, dict(KUBERNETES_1_2_3_1)),
    ("secretkeyref_missing_key_optional", "test", False,
     {"env": [key_ref("POD_NAME", "secretKeyRef", "test-secret", "key", optional=True)]},
     True, None, {"a": "b"}, {}),
    ("configmap", "test1", False, {"envFrom": CONFIGMAP_ENV_FROM, "env": DUPE_ENV}, False,
     {"REPLACE_ME": "FROM_CONFIG_MAP", "DUPE_TEST": "CONFIG_MAP"}, None,
     {"TEST_LITERAL": "test-test-test", "REPLACE_ME": "FROM_CONFIG_MAP", "EXPANSION_TEST": "FROM_CONFIG_MAP",
      "DUPE_TEST": "ENV_VAR", "p_REPLACE_ME": "FROM_CONFIG_MAP", "p_DUPE_TEST": "CONFIG_MAP", **KUBERNETES_1_2_3_1}),
    ("configmap allow prefix to start with a digital", "test1", False,
     {"envFrom": [CONFIGMAP_ENV_FROM[0], {"prefix": "1_", "configMapRef": {"name": "test-config-map"}}],
      "env": DUPE_ENV}, False,
     {"REPLACE_ME": "FROM_CONFIG_MAP", "DUPE_TEST": "CONFIG_MAP"}, None,
     {"TEST_LITERAL": "test-test-test", "REPLACE_ME": "FROM_CONFIG_MAP", "EXPANSION_TEST": "FROM_CONFIG_MAP",
      "DUPE_TEST": "ENV_VAR", "1_REPLACE_ME": "FROM_CONFIG_MAP", "1_DUPE_TEST": "CONFIG_MAP", **KUBERNETES_1_2_3_1}),
    ("configmap, service env vars", "test1", True, {"envFrom": CONFIGMAP_ENV_FROM, "env": DUPE_ENV}, False,
     {"REPLACE_ME": "FROM_CONFIG_MAP", "DUPE_TEST": "CONFIG_MAP"}, None,
     {"TEST_LITERAL": "test-test-test", **TEST_1_2_3_3, "REPLACE_ME": "FROM_CONFIG_MAP",
      "EXPANSION_TEST": "FROM_CONFIG_MAP", "DUPE_TEST": "ENV_VAR", "p_REPLACE_ME": "FROM_CONFIG_MAP",
      "p_DUPE_TEST": "CONFIG_MAP", **KUBERNETES_1_2_3_1}),
    ("configmap_missing_optional", "test", False,
     {"envFrom": [{"configMapRef": {"optional": True, "name": "missing-config-map"}}]},
     False, None, None, dict(KUBERNETES_1_2_3_1)),
    ("configmap_invalid_keys_valid", "test", False,
     {"envFrom": [{"prefix": "p_", "configMapRef": {"name": "test-config-map"}}]},
     False, {"1234": "abc"}, None, {"p_1234": "abc", **KUBERNETES_1_2_3_1}),
    ("secret", "test1", False, {"envFrom": SECRET_ENV_FROM, "env": DUPE_ENV}, False,
     None, {"REPLACE_ME": "FROM_SECRET", "DUPE_TEST": "SECRET"},
     {"TEST_LITERAL": "test-test-test", "REPLACE_ME": "FROM_SECRET", "EXPANSION_TEST": "FROM_SECRET",
      "DUPE_TEST": "ENV_VAR", "p_REPLACE_ME": "FROM_SECRET", "p_DUPE_TEST": "SECRET", **KUBERNETES_1_2_3_1}),
    ("secret, service env vars", "test1", True, {"envFrom": SECRET_ENV_FROM, "env": DUPE_ENV}, False,
     None, {"REPLACE_ME": "FROM_SECRET", "DUPE_TEST": "SECRET"},
     {"TEST_LITERAL": "test-test-test", **TEST_1_2_3_3, "REPLACE_ME": "FROM_SECRET", "EXPANSION_TEST": "FROM_SECRET",
      "DUPE_TEST": "ENV_VAR", "p_REPLACE_ME": "FROM_SECRET", "p_DUPE_TEST": "SECRET", **KUBERNETES_1_2_3_1}),
    ("secret_missing_optional", "test", False,
     {"envFrom": [{"secretRef": {"name": "missing-secret", "optional": True}}]},
     False, None, None, dict(KUBERNETES_1_2_3_1)),
    ("secret_invalid_keys_valid", "test", False,
     {"envFrom": [{"prefix": "p_", "secretRef": {"name": "test-secret"}}]},
     False, None, {"1234.name": "abc"}, {"p_1234.name": "abc", **KUBERNETES_1_2_3_1}),
]


def kubelet_pod(ns: str, links: bool | None, container: dict[str, Any]) -> dict[str, Any]:
    """The Pod kubelet_pods_test.go builds around each case's container."""
    spec: dict[str, Any] = {
        "serviceAccountName": "special",
        "nodeName": "node-name",
        "containers": [{"name": "c", **container}],
    }
    if links is not None:
        spec["enableServiceLinks"] = links
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": ns, "name": "dapi-test-pod-name", "annotations": {}}, "spec": spec}


def kubelet_sources(ns: str, data: dict[str, str] | None, name: str) -> dict[tuple[str, str], dict[str, str]]:
    return {} if data is None else {(ns, name): data}


@pytest.mark.parametrize(
    ("ns", "links", "container", "nil_lister", "cm", "secret", "expected"),
    [pytest.param(*case[1:], id=f"TestMakeEnvironmentVariables/{case[0]}") for case in MAKE_ENV_CASES],
)
def test_TestMakeEnvironmentVariables(
    ns: str, links: bool, container: dict[str, Any], nil_lister: bool, cm: Any, secret: Any, expected: dict[str, str]
) -> None:
    # nilLister (a kubelet without an API server) sees no Services: an empty cluster here
    cluster = kp.Cluster() if nil_lister else kp.Cluster.from_objects(KUBELET_SERVICES)
    warnings: list[str] = []
    got = container_env(
        cluster,
        kubelet_pod(ns, links, container),
        configmaps=kubelet_sources(ns, cm, "test-config-map"),
        secrets=kubelet_sources(ns, secret, "test-secret"),
        warnings=warnings,
    )
    assert got == expected  # kubelet's test compares sorted lists: the order is not specified
    # the optional objects kubelet finds missing were just not given here: said, not fatal
    assert all("was not given (optional" in w for w in warnings)


@pytest.mark.parametrize(
    ("case", "container"),
    [
        pytest.param(name, container, id=f"TestMakeEnvironmentVariables/{name}")
        for name, container in [
            ("configmap_missing", {"envFrom": [{"configMapRef": {"name": "test-config-map"}}]}),
            ("secret_missing", {"envFrom": [{"secretRef": {"name": "test-secret"}}]}),
        ]
    ],
)
def test_TestMakeEnvironmentVariables_missing_source(case: str, container: dict[str, Any]) -> None:
    """kubelet fails these (expectedError); offline the source may just not have been given:
    the rest of the environment, and one line naming the Pod and the field."""
    cluster = kp.Cluster.from_objects(KUBELET_SERVICES)
    warnings: list[str] = []
    got = container_env(cluster, kubelet_pod("test1", False, container), warnings=warnings)
    assert got == KUBERNETES_1_2_3_1
    kind = "ConfigMap" if case.startswith("configmap") else "Secret"
    field = "configMapRef" if kind == "ConfigMap" else "secretRef"
    name = "test-config-map" if kind == "ConfigMap" else "test-secret"
    assert warnings == [
        f"Pod test1/dapi-test-pod-name: spec.containers[0].envFrom[0].{field}: "
        f"{kind} test1/{name} was not given; its keys left out"
    ]


def test_TestMakeEnvironmentVariables_downward_api_pod() -> None:
    """"downward api pod", with the IPs in the manifest's status (kubelet passes them in)."""
    pod = kubelet_pod("downward-api", False, {"env": [
        field_ref("POD_NAME", "metadata.name"),
        field_ref("POD_NAMESPACE", "metadata.namespace"),
        field_ref("POD_NODE_NAME", "spec.nodeName"),
        field_ref("POD_SERVICE_ACCOUNT_NAME", "spec.serviceAccountName"),
        field_ref("POD_IP", "status.podIP"),
        field_ref("POD_IPS", "status.podIPs"),
        field_ref("HOST_IP", "status.hostIP"),
        field_ref("HOST_IPS", "status.hostIPs"),
    ]})
    pod["status"] = {
        "podIP": "1.2.3.4", "podIPs": [{"ip": "1.2.3.4"}, {"ip": "fd00::6"}],
        "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}, {"ip": "::1"}],
    }
    assert container_env(kp.Cluster(), pod) == {
        "POD_NAME": "dapi-test-pod-name",
        "POD_NAMESPACE": "downward-api",
        "POD_NODE_NAME": "node-name",
        "POD_SERVICE_ACCOUNT_NAME": "special",
        "POD_IP": "1.2.3.4",
        "POD_IPS": "1.2.3.4,fd00::6",
        "HOST_IP": "127.0.0.1",
        "HOST_IPS": "127.0.0.1,::1",
    }


def test_enable_service_links_absent_is_true() -> None:
    """kubelet's "nil_enableServiceLinks" fails a Pod the API server did not default; a
    manifest without the field gets the API default, true."""
    cluster = kp.Cluster.from_objects(KUBELET_SERVICES)
    got = container_env(cluster, kubelet_pod("test1", None, {}))
    assert got == {**TEST_1_2_3_3, **KUBERNETES_1_2_3_1}
    pod = kubelet_pod("test1", None, {})
    pod["spec"]["enableServiceLinks"] = None
    assert container_env(cluster, pod) == got


# --------------------------------------------------------------------------- service_env: DISCOVERY §2.1–2.4


def cluster_of(*objs: dict[str, Any]) -> kp.Cluster:
    return kp.Cluster.from_objects(list(objs))


KUBE = service("default", "kubernetes", "10.96.0.1", [port(443, "https")])


def test_kubernetes_always_even_without_links() -> None:
    c = cluster_of(KUBE, service("app", "web", "10.96.0.9", [port(80)]))
    off = service_env(c, "app", enable_service_links=False)
    assert off == {
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "KUBERNETES_SERVICE_PORT_HTTPS": "443",
        "KUBERNETES_PORT": "tcp://10.96.0.1:443",
        "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443",
        "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
        "KUBERNETES_PORT_443_TCP_PORT": "443",
        "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1",
    }
    on = service_env(c, "app")
    assert on["WEB_SERVICE_HOST"] == "10.96.0.9" and set(off) < set(on)


def test_other_namespaces_never_included() -> None:
    c = cluster_of(KUBE, service("a", "one", "10.96.0.2", [port(80)]), service("b", "two", "10.96.0.3", [port(80)]),
                   service("default", "three", "10.96.0.4", [port(80)]))
    env = service_env(c, "a")
    assert "ONE_SERVICE_HOST" in env
    assert not [k for k in env if k.startswith(("TWO_", "THREE_"))]
    assert not [k for k in service_env(c, "nowhere") if not k.startswith("KUBERNETES_")]


def test_namespace_kubernetes_wins_only_with_links() -> None:
    own = service("team", "kubernetes", "10.96.0.50", [port(8443)])
    for objs in ([KUBE, own], [own, KUBE]):  # whatever the input order
        c = cluster_of(*objs)
        assert service_env(c, "team")["KUBERNETES_SERVICE_HOST"] == "10.96.0.50"
        assert service_env(c, "team")["KUBERNETES_PORT"] == "tcp://10.96.0.50:8443"
        assert "KUBERNETES_PORT_443_TCP" not in service_env(c, "team")
        assert service_env(c, "team", enable_service_links=False)["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
        assert service_env(c, "elsewhere")["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"


def test_headless_namespace_kubernetes_does_not_hide_the_master_one() -> None:
    c = cluster_of(KUBE, service("team", "kubernetes", "None", [port(8443)]))
    assert service_env(c, "team")["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"


def test_master_namespace_option() -> None:
    """Older kubelets' --master-service-namespace."""
    c = cluster_of(KUBE, service("control", "kubernetes", "10.97.0.1", [port(6443)]))
    assert service_env(c, "app", master_namespace="control")["KUBERNETES_SERVICE_HOST"] == "10.97.0.1"
    assert service_env(c, "app")["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert service_env(cluster_of(service("app", "x", "10.96.0.5", [port(1)])), "app", enable_service_links=False) == {}


def test_headless_and_externalname_skipped() -> None:
    c = cluster_of(
        KUBE,
        service("app", "headless", "None", [port(80)]),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "app", "name": "empty"},
         "spec": {"clusterIP": "", "ports": [{"port": 80}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "app", "name": "ext"},
         "spec": {"type": "ExternalName", "externalName": "db.example.com", "ports": [{"port": 5432}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "app", "name": "unallocated"},
         "spec": {"ports": [{"port": 80}]}},
        service("app", "real", "10.96.0.7", [port(80)]),
    )
    env = service_env(c, "app")
    assert {k.split("_")[0] for k in env} == {"KUBERNETES", "REAL"}
    assert from_services([c.services[("app", n)] for n in ("headless", "empty", "ext", "unallocated")]) == []
    assert [service_host(c.services[("app", n)]) for n in ("headless", "empty", "ext")] == ["None", "", ""]


@pytest.mark.parametrize("stype", ["NodePort", "LoadBalancer"])
def test_nodeport_and_loadbalancer_included_with_service_port(stype: str) -> None:
    svc = service("app", "front", "10.96.0.8", [port(80, "http", node_port=30080)], type=stype)
    svc["spec"]["ports"][0]["targetPort"] = 8080
    env = service_env(cluster_of(svc), "app")
    assert env == {
        "FRONT_SERVICE_HOST": "10.96.0.8",
        "FRONT_SERVICE_PORT": "80",
        "FRONT_SERVICE_PORT_HTTP": "80",
        "FRONT_PORT": "tcp://10.96.0.8:80",
        "FRONT_PORT_80_TCP": "tcp://10.96.0.8:80",
        "FRONT_PORT_80_TCP_PROTO": "tcp",
        "FRONT_PORT_80_TCP_PORT": "80",
        "FRONT_PORT_80_TCP_ADDR": "10.96.0.8",
    }
    assert not any(v.endswith(("30080", "8080")) for v in env.values())  # never nodePort or targetPort


def test_service_port_from_unnamed_ports0() -> None:
    env = service_env(cluster_of(service("app", "solo", "10.96.0.11", [port(7000)])), "app")
    assert env["SOLO_SERVICE_PORT"] == "7000"
    assert not [k for k in env if k.startswith("SOLO_SERVICE_PORT_")]
    # ports[0] named: _SERVICE_PORT is still ports[0], and each name gets its own
    env = service_env(cluster_of(service("app", "duo", "10.96.0.12", [port(8443, "https"), port(80, "http")])), "app")
    ports = (env["DUO_SERVICE_PORT"], env["DUO_SERVICE_PORT_HTTPS"], env["DUO_SERVICE_PORT_HTTP"])
    assert ports == ("8443", "8443", "80")
    assert env["DUO_PORT"] == "tcp://10.96.0.12:8443"


def test_ipv6_bracketed_only_in_urls() -> None:
    env = service_env(cluster_of(service("app", "six", "fd00::10", [port(80, "http"), port(53, "dns", "UDP")])), "app")
    urls = {k for k, v in env.items() if "://" in v}
    assert urls == {"SIX_PORT", "SIX_PORT_80_TCP", "SIX_PORT_53_UDP"}
    assert env["SIX_PORT"] == "tcp://[fd00::10]:80" and env["SIX_PORT_53_UDP"] == "udp://[fd00::10]:53"
    for k, v in env.items():
        assert ("[" in v) == (k in urls), k
    assert env["SIX_SERVICE_HOST"] == env["SIX_PORT_80_TCP_ADDR"] == env["SIX_PORT_53_UDP_ADDR"] == "fd00::10"


def test_ip_as_written_not_canonicalised() -> None:
    env = service_env(cluster_of(service("app", "up", "FD00:0:0::A", [port(80)])), "app")
    assert env["UP_SERVICE_HOST"] == "FD00:0:0::A" and env["UP_PORT"] == "tcp://[FD00:0:0::A]:80"


@pytest.mark.parametrize(("ips", "primary"), [(["fd00::20", "10.96.0.20"], "fd00::20"),
                                              (["10.96.0.20", "fd00::20"], "10.96.0.20")])
def test_dual_stack_uses_primary_cluster_ip(ips: list[str], primary: str) -> None:
    env = service_env(cluster_of(service("app", "dual", ips, [port(80)], ipFamilyPolicy="RequireDualStack")), "app")
    secondary = ips[1]
    assert env["DUAL_SERVICE_HOST"] == primary
    assert not [v for v in env.values() if secondary in v]


def test_cluster_ips_without_cluster_ip_uses_the_first() -> None:
    """The API server copies clusterIPs[0] into an empty clusterIP."""
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "app", "name": "late"},
           "spec": {"clusterIPs": ["10.96.0.30", "fd00::30"], "ports": [{"port": 80}]}}
    assert service_env(cluster_of(svc), "app")["LATE_SERVICE_HOST"] == "10.96.0.30"


def test_names_only_dash_to_underscore() -> None:
    assert env_name("my-svc-2") == "MY_SVC_2"
    env = service_env(cluster_of(service("app", "svc-1", "10.96.0.13", [port(8083, "8083"), port(81, "a-b")])), "app")
    assert env["SVC_1_SERVICE_PORT_8083"] == "8083" and env["SVC_1_SERVICE_PORT_A_B"] == "81"


def test_collision_later_service_in_sorted_order_wins() -> None:
    """DISCOVERY §2.4: ``a`` port 80 and ``a-port-80-tcp`` both make A_PORT_80_TCP_PORT; kubelet's
    winner is map order, ours the later Service in (namespace, name) order, whatever the input order."""
    a = service("app", "a", "10.96.0.14", [port(80)])
    b = service("app", "a-port-80-tcp", "10.96.0.15", [port(443)])
    for objs in ([a, b], [b, a]):
        env = service_env(cluster_of(*objs), "app")
        assert env["A_PORT_80_TCP_PORT"] == "tcp://10.96.0.15:443"  # a-port-80-tcp's _PORT wins over a's
        keys = list(env)
        assert keys.index("A_PORT_80_TCP_PORT") < keys.index("A_PORT_80_TCP_SERVICE_HOST")  # first position kept


def test_service_env_order() -> None:
    c = kp.load(CLUSTER_FILE)
    env = service_env(c, "shop")
    prefixes = []
    for k in env:
        p = k.split("_SERVICE_")[0].split("_PORT")[0]
        if p not in prefixes:
            prefixes.append(p)
    assert prefixes == ["KUBERNETES", "CACHE", "DNS", "WEB"]  # (default, kubernetes) first, then by name
    assert list(env)[:8] == [n for n, _ in from_services([c.services[("default", "kubernetes")]])]
    assert list(env)[8:] == [n for n, _ in from_services([c.services[("shop", n)] for n in ("cache", "dns", "web")])]


# --------------------------------------------------------------------------- container_env


def test_env_overrides_service_vars_and_expands_them() -> None:
    c = cluster_of(KUBE, service("app", "db", "10.96.0.16", [port(5432)]))
    pod = {"kind": "Pod", "metadata": {"namespace": "app", "name": "p"}, "spec": {"containers": [{"name": "c", "env": [
        lit("DB_SERVICE_HOST", "db.app.svc"),
        lit("URL", "postgres://$(DB_SERVICE_HOST):$(DB_SERVICE_PORT)/$$(NOT)"),
    ]}]}}
    env = container_env(c, pod)
    assert env["DB_SERVICE_HOST"] == "db.app.svc"  # env beats the service variable
    assert env["URL"] == "postgres://db.app.svc:5432/$(NOT)"  # ... also in later $(VAR)
    assert env["DB_PORT"] == "tcp://10.96.0.16:5432"
    assert list(env)[:2] == ["DB_SERVICE_HOST", "URL"]


def test_envfrom_beats_service_vars() -> None:
    c = cluster_of(KUBE)
    pod = {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "c", "envFrom": [{"configMapRef": {"name": "cm"}}, {"secretRef": {"name": "s"}}]}]}}
    env = container_env(c, pod, configmaps={("default", "cm"): {"KUBERNETES_SERVICE_HOST": "x", "A": "cm"}},
                        secrets={("default", "s"): {"A": "secret"}})
    assert env["KUBERNETES_SERVICE_HOST"] == "x" and env["A"] == "secret"  # later envFrom wins


def test_container_selection() -> None:
    pod = {"kind": "Pod", "metadata": {"name": "p"}, "spec": {
        "initContainers": [{"name": "init", "env": [lit("WHO", "init")]}],
        "containers": [{"name": "main", "env": [lit("WHO", "main")]}, {"name": "side", "env": [lit("WHO", "side")]}]}}
    c = kp.Cluster()
    assert [container_env(c, pod, n)["WHO"] for n in (None, "side", "init")] == ["main", "side", "init"]
    with pytest.raises(kp.ManifestError) as err:
        container_env(c, pod, "nope")
    assert str(err.value) == 'Pod default/p: spec.containers: no container named "nope"'


def test_unresolvable_value_from_is_left_out_and_reported() -> None:
    c = cluster_of(KUBE, service("app", "web", "10.96.0.17", [port(80)]))
    pod = {"kind": "Pod", "metadata": {"namespace": "app", "generateName": "web-"}, "spec": {"containers": [
        {"name": "c", "env": [
            {"name": "WEB_SERVICE_HOST", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            field_ref("POD_IP", "status.podIP"),
            field_ref("POD_NAME", "metadata.name"),
            lit("ECHO", "$(WEB_SERVICE_HOST)|$(POD_IP)"),
            key_ref("PASSWORD", "secretKeyRef", "db", "password"),
            key_ref("LEVEL", "configMapKeyRef", "cfg", "level"),
        ]}]}}
    warnings: list[str] = []
    env = container_env(c, pod, configmaps={("app", "cfg"): {"other": "x"}}, warnings=warnings)
    assert "WEB_SERVICE_HOST" not in env  # its real value would have hidden the service variable
    assert env["WEB_SERVICE_PORT"] == "80"
    assert env["ECHO"] == "$(WEB_SERVICE_HOST)|$(POD_IP)"  # no stand-in for unknown values
    assert not {"POD_IP", "POD_NAME", "PASSWORD", "LEVEL"} & set(env)
    who = "Pod app/web-*: spec.containers[0].env"
    assert warnings == [
        f"{who}[0].valueFrom.resourceFieldRef: not known offline; WEB_SERVICE_HOST left out",
        f"{who}[1].valueFrom.fieldRef: status.podIP is not in the manifest; POD_IP left out",
        f"{who}[2].valueFrom.fieldRef: metadata.name is not in the manifest; POD_NAME left out",
        f"{who}[4].valueFrom.secretKeyRef: Secret app/db was not given; PASSWORD left out",
        f'{who}[5].valueFrom.configMapKeyRef: ConfigMap app/cfg has no key "level": kubelet would not start the '
        "container; LEVEL left out",
    ]
    with pytest.warns(UserWarning) as record:  # no list: warnings.warn, the same lines
        container_env(c, pod, configmaps={("app", "cfg"): {"other": "x"}})
    assert [str(w.message) for w in record] == warnings


def test_field_ref_labels_and_annotations() -> None:
    pod = {"kind": "Pod", "metadata": {"name": "p", "labels": {"app": "web"}, "annotations": {"a/b": "c"}},
           "spec": {"containers": [{"name": "c", "env": [
               field_ref("APP", "metadata.labels['app']"), field_ref("AB", "metadata.annotations['a/b']"),
               field_ref("NONE", "metadata.labels['missing']")]}]}}
    assert container_env(kp.Cluster(), pod) == {"APP": "web", "AB": "c", "NONE": ""}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p["spec"]["containers"][0].update(env={"A": "1"}),
         "Pod shop/p: spec.containers[0].env: must be a list, not a mapping"),
        (lambda p: p["spec"]["containers"][0].update(env=[{"name": 5, "value": "x"}]),
         "Pod shop/p: spec.containers[0].env[0].name: 5 must be a string"),
        (lambda p: p["spec"]["containers"][0].update(env=[{"name": "A", "value": 1}]),
         "Pod shop/p: spec.containers[0].env[0].value: 1 must be a string"),
        (lambda p: p["spec"].update(enableServiceLinks="yes"),
         'Pod shop/p: spec.enableServiceLinks: "yes" must be true or false'),
        (lambda p: p["spec"].update(containers="web"),
         "Pod shop/p: spec.containers: must be a list, not a string"),
        (lambda p: p["spec"]["containers"][0].update(envFrom=[{"prefix": "x"}]),
         "Pod shop/p: spec.containers[0].envFrom[0]: must have exactly one of configMapRef, secretRef"),
        (lambda p: p["spec"]["containers"][0].update(env=[field_ref("X", "spec.hostname")]),
         'Pod shop/p: spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: "spec.hostname" is not supported '
         "for env (one of metadata.name, metadata.namespace, metadata.uid, spec.nodeName, spec.serviceAccountName, "
         "status.hostIP, status.hostIPs, status.podIP, status.podIPs)"),
        (lambda p: p.update(kind="Deployment"), 'Deployment shop/p: kind: "Deployment": expected a Pod'),
        (lambda p: p["metadata"].update(namespace=["shop"]), "Pod default/p: metadata.namespace: [\"shop\"] must be a "
                                                             "string"),
    ],
)
def test_bad_pod_is_one_line_manifest_error(mutate: Any, message: str) -> None:
    pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "shop", "name": "p"},
                           "spec": {"containers": [{"name": "web"}]}}
    mutate(pod)
    with pytest.raises(kp.ManifestError) as err:
        container_env(kp.load(CLUSTER_FILE), pod)
    assert isinstance(err.value, ValueError)
    assert err.value.problems == (message,)
    assert "\n" not in str(err.value)


def test_every_problem_reported() -> None:
    pod = {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"enableServiceLinks": 1, "containers": [
        {"name": "c", "env": [{"name": "A", "value": 1}, {"value": "x"}]}]}}
    with pytest.raises(kp.ManifestError) as err:
        container_env(kp.Cluster(), pod)
    assert err.value.problems == (
        "Pod default/p: spec.enableServiceLinks: 1 must be true or false",
        "Pod default/p: spec.containers[0].env[0].value: 1 must be a string",
        "Pod default/p: spec.containers[0].env[1].name: required",
    )


POD_FILE = DATA / "pod.yaml"
CHECKOUT_APP = {
    "LOG_LEVEL": "debug",
    "KUBERNETES_SERVICE_HOST": "overridden-by-envFrom",
    "DB_USER": "admin",
    "DB_PASSWORD": "it's s3cr3t",
    "WEB_URL": "http://FD00:10:96::A:80/$(literal)",
    "CACHE_SERVICE_HOST": "cache.shop.svc",
    "POD_NAME": "checkout",
}
CHECKOUT_WARNING = ("Pod shop/checkout: spec.containers[0].env[3].valueFrom.fieldRef: status.podIP is not in the "
                    "manifest; POD_IP left out")


def checkout_env(container: str | None = None, warnings: list[str] | None = None) -> dict[str, str]:
    objects = list(yaml.safe_load_all(POD_FILE.read_text()))
    configmaps, secrets = config_sources(objects)
    return container_env(kp.load(CLUSTER_FILE), objects[0], container, configmaps=configmaps, secrets=secrets,
                         warnings=warnings if warnings is not None else [])


def test_pod_file() -> None:
    warnings: list[str] = []
    env = checkout_env(warnings=warnings)
    service_vars = service_env(kp.load(CLUSTER_FILE), "shop")
    assert env == {**CHECKOUT_APP, **{k: v for k, v in service_vars.items() if k not in CHECKOUT_APP}}
    assert list(env)[: len(CHECKOUT_APP)] == list(CHECKOUT_APP)  # set first, then the service variables
    assert warnings == [CHECKOUT_WARNING]
    assert checkout_env("sidecar") == {"ROLE": "sidecar", **service_vars}


def test_config_sources() -> None:
    cms, secrets = config_sources([
        {"kind": "ConfigMap", "metadata": {"namespace": "app", "name": "cfg"}, "data": {"LEVEL": "debug"},
         "binaryData": {"blob": "AAEC"}},
        {"kind": "Secret", "metadata": {"namespace": "app", "name": "db"},
         "data": {"password": "czNjcjN0", "user": "YWRtaW4="}, "stringData": {"user": "root"}},
        {"kind": "Service", "metadata": {"name": "ignored"}},
    ])
    assert cms == {("app", "cfg"): {"LEVEL": "debug"}}
    assert secrets == {("app", "db"): {"password": "s3cr3t", "user": "root"}}
    with pytest.raises(kp.ManifestError) as err:
        config_sources([{"kind": "Secret", "metadata": {"name": "bad"}, "data": {"k": "not base64!"}}])
    assert err.value.problems == ('Secret default/bad: data["k"]: not base64-encoded UTF-8 text',)


# --------------------------------------------------------------------------- expansion (expand_test.go)


def test_TestMapReference() -> None:
    declared = {"FOO": "bar", "ZOO": "$(FOO)-1", "BLU": "$(ZOO)-2"}
    service_vars: dict[str, str] = {}
    for name, value in [("FOO", "bar"), ("ZOO", "$(FOO)-1"), ("BLU", "$(ZOO)-2")]:
        declared[name] = expand(value, declared, service_vars)
    assert declared == {"FOO": "bar", "ZOO": "bar-1", "BLU": "bar-1-2"}


EXPANSION_CASES = [
    ("whole string", "$(VAR_A)", "A"),
    ("repeat", "$(VAR_A)-$(VAR_A)", "A-A"),
    ("beginning", "$(VAR_A)-1", "A-1"),
    ("middle", "___$(VAR_B)___", "___B___"),
    ("end", "___$(VAR_C)", "___C"),
    ("compound", "$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C"),
    ("escape & expand", "$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
    ("compound escape", "$$(VAR_A)_$$(VAR_B)", "$(VAR_A)_$(VAR_B)"),
    ("mixed in escapes", "f000-$$VAR_A", "f000-$VAR_A"),
    ("backslash escape ignored", "foo\\$(VAR_C)bar", "foo\\Cbar"),
    ("backslash escape ignored 2", "foo\\\\$(VAR_C)bar", "foo\\\\Cbar"),
    ("lots of backslashes", "foo\\\\\\\\$(VAR_A)bar", "foo\\\\\\\\Abar"),
    ("nested var references", "$(VAR_A$(VAR_B))", "$(VAR_A$(VAR_B))"),
    ("nested var references second type", "$(VAR_A$(VAR_B)", "$(VAR_A$(VAR_B)"),
    ("value is a reference", "$(VAR_REF)", "$(VAR_A)"),
    ("value is a reference x 2", "%%$(VAR_REF)--$(VAR_REF)%%", "%%$(VAR_A)--$(VAR_A)%%"),
    ("empty var", "foo$(VAR_EMPTY)bar", "foobar"),
    ("unterminated expression", "foo$(VAR_Awhoops!", "foo$(VAR_Awhoops!"),
    ("expression without operator", "f00__(VAR_A)__", "f00__(VAR_A)__"),
    ("shell special vars pass through", "$?_boo_$!", "$?_boo_$!"),
    ("bare operators are ignored", "$VAR_A", "$VAR_A"),
    ("undefined vars are passed through", "$(VAR_DNE)", "$(VAR_DNE)"),
    ("multiple (even) operators, var undefined", "$$$$$$(BIG_MONEY)", "$$$(BIG_MONEY)"),
    ("multiple (even) operators, var defined", "$$$$$$(VAR_A)", "$$$(VAR_A)"),
    ("multiple (odd) operators, var undefined", "$$$$$$$(GOOD_ODDS)", "$$$$(GOOD_ODDS)"),
    ("multiple (odd) operators, var defined", "$$$$$$$(VAR_A)", "$$$A"),
    ("missing open expression", "$VAR_A)", "$VAR_A)"),
    ("shell syntax ignored", "${VAR_A}", "${VAR_A}"),
    ("trailing incomplete expression not consumed", "$(VAR_B)_______$(A", "B_______$(A"),
    ("trailing incomplete expression, no content, is not consumed", "$(VAR_C)_______$(", "C_______$("),
    ("operator at end of input string is preserved", "$(VAR_A)foobarzab$", "Afoobarzab$"),
    ("shell escaped incomplete expr", "foo-\\$(VAR_A", "foo-\\$(VAR_A"),
    ("lots of $( in middle", "--$($($($($--", "--$($($($($--"),
    ("lots of $( in beginning", "$($($($($--foo$(", "$($($($($--foo$("),
    ("lots of $( at end", "foo0--$($($($(", "foo0--$($($($("),
    ("escaped operators in variable names are not escaped", "$(foo$$var)", "$(foo$$var)"),
    ("newline not expanded", "\n", "\n"),
    # not in expand_test.go: a multi-byte rune after $ (the rune-aware tryReadVariableName)
    ("rune after operator", "$é$(VAR_A)", "$éA"),
]


@pytest.mark.parametrize(("text", "want"), [pytest.param(i, w, id=n) for n, i, w in EXPANSION_CASES])
@pytest.mark.parametrize("test", ["TestMapping", "TestMappingDual"])
def test_expansion(test: str, text: str, want: str) -> None:
    if test == "TestMapping":
        contexts = [{"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": ""}]
    else:
        contexts = [{"VAR_A": "A", "VAR_EMPTY": ""}, {"VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)"}]
    assert expand(text, *contexts) == want


# --------------------------------------------------------------------------- format_env

TRICKY = {
    "PLAIN": "tcp://10.0.0.1:80",
    "V6URL": "tcp://[fd00::1]:80",
    "EMPTY": "",
    "SPACE": "a b",
    "SQUOTE": "it's",
    "DQUOTE": 'say "hi"',
    "DOLLAR": "$HOME and $(FOO) and ${BAR}",
    "BACKTICK": "`id`",
    "SUBST": "$(touch /nonexistent/kproxy-env-test)",
    "NEWLINE": "line1\nline2",
    "TAB": "a\tb",
    "BACKSLASH": "back\\slash\\n",
    "BOTH": "it's \"both\"\nand $X",
    "UNICODE": "ünïcødé ✓",
    "HASH": "#not a comment",
    "GLOB": "*",
    "TILDE": "~root",
    "EQUALS": "a=b==c",
    "SEMI": "a; echo pwned",
}


def parse_dotenv(text: str) -> dict[str, str]:
    """A reader for the dotenv grammar format_env documents (bare, '...', "..." with \\ escapes)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            continue  # blank lines are allowed between entries
        name, sep, raw = line.partition("=")
        assert sep, line
        if raw.startswith("'"):
            assert raw.endswith("'") and len(raw) >= 2 and "'" not in raw[1:-1], line
            value = raw[1:-1]
        elif raw.startswith('"'):
            assert raw.endswith('"') and len(raw) >= 2, line
            body, chars, i = raw[1:-1], [], 0
            while i < len(body):
                ch = body[i]
                if ch == "\\":
                    chars.append({"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}[body[i + 1]])
                    i += 2
                else:
                    assert ch != '"', line
                    chars.append(ch)
                    i += 1
            value = "".join(chars)
        else:
            assert all(ch.isalnum() or ch in "_@%+=:,./-" for ch in raw), line
            value = raw
        out[name] = value
    return out


def sh_env(script: str, *, auto_export: bool = False) -> dict[str, str]:
    """The environment after ``sh`` evaluates ``script`` (``env -0`` output, NUL-separated)."""
    sh = shutil.which("sh")
    assert sh, "no sh"
    prog = ('set -a; ' if auto_export else "") + 'eval "$1"; exec env -0'
    r = subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", sh, "-c", prog, "sh", script],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    out: dict[str, str] = {}
    for item in r.stdout.split(b"\0"):
        if item:
            k, _, v = item.decode().partition("=")
            out[k] = v
    return out


def test_dotenv_sorted_and_parsable() -> None:
    text = format_env(TRICKY)
    assert text.endswith("\n")
    names = [line.partition("=")[0] for line in text.splitlines()]
    assert names == sorted(TRICKY)
    assert parse_dotenv(text) == TRICKY
    by_name = dict(line.split("=", 1) for line in text.splitlines())
    assert by_name["PLAIN"] == "tcp://10.0.0.1:80"  # no quotes when none are needed
    assert by_name["EMPTY"] == ""
    assert by_name["SPACE"] == "'a b'"
    assert by_name["DOLLAR"] == "'$HOME and $(FOO) and ${BAR}'"
    assert by_name["SQUOTE"] == '"it\'s"'
    assert by_name["NEWLINE"] == '"line1\\nline2"'


def test_dotenv_single_line_values_are_also_sh() -> None:
    simple = {k: v for k, v in TRICKY.items() if "'" not in v and not any(ord(c) < 32 for c in v)}
    assert sh_env(format_env(simple), auto_export=True).items() >= simple.items()


def test_service_env_dotenv_is_bare_except_ipv6_urls() -> None:
    env = service_env(kp.load(CLUSTER_FILE), "shop")
    for line in format_env(env).splitlines():
        name, _, raw = line.partition("=")
        assert raw == env[name] or (raw == f"'{env[name]}'" and "[" in env[name]), line


def test_json_sorted() -> None:
    text = format_env(TRICKY, "json")
    assert json.loads(text) == TRICKY
    assert list(json.loads(text)) == sorted(TRICKY)
    assert text.endswith("}\n")
    assert format_env({}, "json") == "{}\n"


def test_shell_round_trips_through_sh() -> None:
    text = format_env(TRICKY, "shell")
    assert re.findall(r"^export (\w+)=", text, re.MULTILINE) == sorted(TRICKY)
    assert "export PLAIN=tcp://10.0.0.1:80\n" in text and "export EMPTY=''\n" in text
    assert sh_env(text).items() >= TRICKY.items()


def test_shell_round_trips_service_env() -> None:
    env = service_env(kp.load(CLUSTER_FILE), "shop")
    assert sh_env(format_env(env, "shell")).items() >= env.items()


def test_shell_skips_names_sh_cannot_assign() -> None:
    text = format_env({"p_1234.name": "abc", "1_X": "y", "OK": "z"}, "shell")
    assert text == ('# skipped "1_X": not a name sh can assign\n'
                    "export OK=z\n"
                    '# skipped "p_1234.name": not a name sh can assign\n')
    assert sh_env(text)["OK"] == "z"


def test_format_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown env format 'yaml': use one of dotenv, json, shell"):
        format_env({}, "yaml")
    with pytest.raises(ValueError, match="cannot be an environment variable name"):
        format_env({"A=B": "x"})
    with pytest.raises(ValueError, match="NUL"):
        format_env({"A": "x\0y"}, "json")
    assert format_env({}) == format_env({}, "shell") == ""


# --------------------------------------------------------------------------- the CLI: kproxy env


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``kproxy`` from outside the repository (a missing ``env`` subcommand is a
    failure of every test here, not a skip)."""
    return cli_run.kproxy(*args)


@pytest.mark.parametrize("ns", ["shop", "team", "other", "default", "empty"])
def test_cli_env_dotenv(ns: str) -> None:
    r = run("env", "-f", str(CLUSTER_FILE), "--namespace", ns)
    assert r.returncode == 0, r.stderr
    assert parse_dotenv(r.stdout) == service_env(kp.load(CLUSTER_FILE), ns)


def test_cli_env_formats() -> None:
    want = service_env(kp.load(CLUSTER_FILE), "shop")
    r = run("env", "-f", str(CLUSTER_FILE), "--namespace", "shop", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == want
    r = run("env", "-f", str(CLUSTER_FILE), "--namespace", "shop", "--format", "shell")
    assert r.returncode == 0, r.stderr
    assert sh_env(r.stdout).items() >= want.items()
    r = run("env", "-f", str(CLUSTER_FILE), "--namespace", "shop", "--format", "dotenv")
    assert r.returncode == 0, r.stderr
    assert parse_dotenv(r.stdout) == want
    assert want["WEB_SERVICE_HOST"] == "FD00:10:96::A" and want["WEB_PORT"] == "tcp://[FD00:10:96::A]:80"


def test_cli_env_no_service_links() -> None:
    r = run("env", "-f", str(CLUSTER_FILE), "--namespace", "team", "--no-service-links", "--format", "json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got == service_env(kp.load(CLUSTER_FILE), "team", enable_service_links=False)
    assert got["KUBERNETES_SERVICE_HOST"] == "10.96.0.1" and not [k for k in got if not k.startswith("KUBERNETES_")]
    r = run("env", "-f", str(CLUSTER_FILE), "--namespace", "team", "--format", "json")
    assert json.loads(r.stdout)["KUBERNETES_SERVICE_HOST"] == "10.96.0.50"  # the namespace's own wins


def test_cli_env_errors(tmp_path: Path) -> None:
    r = run("env", "-f", str(CLUSTER_FILE), "--namespace", "shop", "--format", "yaml")
    assert r.returncode == 2 and "dotenv" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(service("shop", "web", "10.96.0.1", [{"port": 70000}])))
    r = run("env", "-f", str(bad), "--namespace", "shop")
    assert r.returncode == 2 and r.stderr.startswith("kproxy: error: ") and "Traceback" not in r.stderr


def test_cli_env_pod() -> None:
    r = run("env", "-f", str(CLUSTER_FILE), "--pod", str(POD_FILE), "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == checkout_env()
    assert r.stderr == f"kproxy: warning: {CHECKOUT_WARNING}\n"
    r = run("env", "-f", str(CLUSTER_FILE), "--pod", str(POD_FILE), "--container", "sidecar", "--format", "shell")
    assert r.returncode == 0, r.stderr
    assert sh_env(r.stdout).items() >= checkout_env("sidecar").items()

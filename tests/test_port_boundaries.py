"""Every port field the loader reads, at its boundaries (0, 1, 65535, 65536, -1, 1.5, "80",
true, null): what the API server accepts loads and the Engine runs on it; anything else is
exactly one line ``<Kind> ns/name: <field path>: <value> ...``, never a traceback, through
``Cluster.from_objects``, ``Engine.apply`` and the ``kproxy`` command alike.

The oracle is the API server's validation (pkg/apis/core/validation, discovery/validation):
``IsValidPortNum`` (1..65535) for Service ``port``, EndpointSlice ``port`` (null means "all
ports", which kube-proxy ignores) and Endpoints ``port``; ``nodePort`` and
``healthCheckNodePort`` 0 mean unset (the allocator then checks the node port range, which
kproxy-core does not know: any 1..65535 is taken); ``targetPort`` 0 and "" are defaulted to
``port``, an integer must be a port number and a string an IANA_SVC_NAME
(``IsValidPortName``). JSON numbers and booleans keep their type (YAML ``"80"`` is a string).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from k8s import node

import kproxy_core as kp
from kproxy_core.cli import main as cli_main

NODE = "n1"
NODE_IP = "192.168.0.1"
CLUSTER_IP = "10.96.0.10"
POD = "10.0.0.5"
LEGACY_POD = "10.0.0.6"
CLIENT = "203.0.113.9"

BOUNDARY: tuple[Any, ...] = (0, 1, 65535, 65536, -1, 1.5, "80", True, None)
# targetPort's named form (IsValidPortName): the rule's edges
NAMES: tuple[str, ...] = ("http", "", "a23456789012345", "a234567890123456", "HTTP", "-http", "http-",
                          "ht--tp", "h-t-t-p", "8080x", "h_ttp", "ht tp")


def _service(stype: str = "ClusterIP", port: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    p = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, **(port or {})}
    body = {"type": stype, "clusterIP": CLUSTER_IP, "selector": {"app": "web"}, "ports": [p], **spec}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "web"}, "spec": body}


def _slice(port: Any = 8080) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "default", "name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": port}],
        "endpoints": [{"addresses": [POD], "conditions": {"ready": True}, "nodeName": "n2"}],
    }


def _legacy(port: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"namespace": "default", "name": "web"},
        "subsets": [{"addresses": [{"ip": LEGACY_POD, "nodeName": "n2"}],
                     "ports": [{"name": "http", "protocol": "TCP", "port": port}]}],
    }


class Field:
    """One port field: how to put a value in, which values the API server accepts, and the
    error for the others: ``<value as JSON> is not a valid port`` unless ``messages`` has
    another for the value's type (``"null"``: the whole message for a missing value)."""

    def __init__(self, name: str, who: str, path: str, build: Callable[[Any], list[dict[str, Any]]],
                 valid: Callable[[Any], bool], messages: dict[Any, str] | None = None) -> None:
        self.name, self.who, self.path, self.build, self.valid = name, who, path, build, valid
        self.messages = messages or {}

    def error(self, value: Any) -> str:
        if value is None:
            return f"{self.who}: {self.path}: {self.messages['null']}"
        msg = self.messages.get(type(value), "is not a valid port")
        return f"{self.who}: {self.path}: {json.dumps(value, ensure_ascii=False)} {msg}"


def _port_number(v: Any) -> bool:
    return type(v) is int and 1 <= v <= 65535


def _zero_or_port(v: Any) -> bool:
    return v is None or (type(v) is int and 0 <= v <= 65535)


def _target_ok(v: Any) -> bool:
    if v is None or (type(v) is int and 0 <= v <= 65535):
        return True
    if type(v) is not str:
        return False
    # IsValidPortName, spelled out rule by rule (not the loader's regular expression)
    return v == "" or (
        len(v) <= 15 and all(c in "abcdefghijklmnopqrstuvwxyz0123456789-" for c in v)
        and any(c.isalpha() for c in v) and "--" not in v and not v.startswith("-") and not v.endswith("-")
    )


W = "Service default/web"
FIELDS = {
    f.name: f for f in [
        Field("service.port", W, "spec.ports[0].port",
              lambda v: [_service(port={"port": v}), _slice()], _port_number, {"null": "required"}),
        Field("service.nodePort", W, "spec.ports[0].nodePort",
              lambda v: [_service("NodePort", port={"nodePort": v}), _slice()], _zero_or_port),
        Field("service.targetPort", W, "spec.ports[0].targetPort",
              lambda v: [_service(port={"targetPort": v}), _slice()], _target_ok,
              {float: "must be an integer or a string", bool: "must be an integer or a string",
               str: "is not a valid port name (at most 15 of a-z, 0-9 and '-', with a letter, no '-' at either "
                    "end or twice in a row)"}),
        Field("service.healthCheckNodePort", W, "spec.healthCheckNodePort",
              lambda v: [_service("LoadBalancer", port={"nodePort": 30080}, externalTrafficPolicy="Local",
                                  healthCheckNodePort=v), _slice()], _zero_or_port),
        Field("slice.port", "EndpointSlice default/web-1", "ports[0].port",
              lambda v: [_service(), _slice(v)], lambda v: v is None or _port_number(v)),
        Field("endpoints.port", "Endpoints default/web", "subsets[0].ports[0].port",
              lambda v: [_service(selector=None), _legacy(v)], _port_number, {"null": "required"}),
    ]
}


def _cases() -> list[tuple[str, Any]]:
    out = [(name, v) for name in FIELDS for v in BOUNDARY]
    out += [("service.targetPort", v) for v in NAMES]
    return out


CASES = _cases()
VALID = [c for c in CASES if FIELDS[c[0]].valid(c[1])]
INVALID = [c for c in CASES if not FIELDS[c[0]].valid(c[1])]


def _id(case: tuple[str, Any]) -> str:
    return f"{case[0]}={case[1]!r}"


def _objects(name: str, value: Any) -> list[dict[str, Any]]:
    return [node(NODE, NODE_IP), node("n2", "192.168.0.2"), *FIELDS[name].build(value)]


def test_the_table_is_the_api_servers() -> None:
    """The expectations themselves, for the values the brief lists (a slip in the table
    would make every test below agree with a wrong loader)."""
    ok = {name: [v for v in BOUNDARY if FIELDS[name].valid(v)] for name in FIELDS}
    assert ok == {
        "service.port": [1, 65535],
        "service.nodePort": [0, 1, 65535, None],
        "service.targetPort": [0, 1, 65535, None],
        "service.healthCheckNodePort": [0, 1, 65535, None],
        "slice.port": [1, 65535, None],
        "endpoints.port": [1, 65535],
    }
    assert [v for v in NAMES if _target_ok(v)] == ["http", "", "a23456789012345", "h-t-t-p", "8080x"]


# --------------------------------------------------------------------------- refused


# issue 15: a port of 65536 passed the loader and Engine(...) died with OverflowError
@pytest.mark.parametrize("case", INVALID, ids=_id)
def test_refused_with_one_line(case: tuple[str, Any]) -> None:
    name, value = case
    with pytest.raises(kp.ManifestError) as got:
        kp.Cluster.from_objects(_objects(name, value))
    assert got.value.problems == (FIELDS[name].error(value),)
    assert str(got.value) == FIELDS[name].error(value)


@pytest.mark.parametrize("case", INVALID, ids=_id)
def test_refused_by_apply_engine_unchanged(case: tuple[str, Any], make_engine: Callable[..., kp.Engine]) -> None:
    name, value = case
    engine = make_engine([node(NODE, NODE_IP), node("n2", "192.168.0.2")], node=NODE)
    before = engine.lookup(CLIENT, CLUSTER_IP, 80, "TCP", sport=1000, now=0.0)
    with pytest.raises(kp.ManifestError) as got:
        engine.apply(FIELDS[name].build(value))
    assert got.value.problems == (FIELDS[name].error(value),)
    assert not engine.cluster.services and engine.generation == 0
    assert engine.lookup(CLIENT, CLUSTER_IP, 80, "TCP", sport=1000, now=0.0).verdict == before.verdict == "PASS"


def _write(tmp_path: Path, objects: list[dict[str, Any]]) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    return path


@pytest.mark.parametrize("case", INVALID, ids=_id)
def test_cli_exit_2_one_line(case: tuple[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name, value = case
    rc = cli_main(["rules", "-f", str(_write(tmp_path, _objects(name, value))), "--node", NODE])
    out, err = capsys.readouterr()
    assert (rc, out, err.splitlines()) == (2, "", [f"kproxy: error: {FIELDS[name].error(value)}"])


# --------------------------------------------------------------------------- accepted


def _check_engine(engine: kp.Engine, name: str, value: Any) -> None:
    """The engine built on an accepted value answers packets to the port it names."""
    dport = value if name == "service.port" else 80
    d = engine.lookup(CLIENT, CLUSTER_IP, dport, "TCP", sport=1000, now=0.0)
    if name == "slice.port" and value is None:  # "all ports": kube-proxy ignores the port, so no endpoints
        assert (d.verdict, d.endpoint) == ("REJECT", None)
    elif name == "slice.port":
        assert (d.verdict, d.endpoint) == ("DNAT", (POD, value))
    elif name == "endpoints.port":
        assert (d.verdict, d.endpoint) == ("DNAT", (LEGACY_POD, value))
    else:  # the Service's own port fields (targetPort is never read by kube-proxy)
        assert (d.verdict, d.endpoint) == ("DNAT", (POD, 8080))
    t = engine.trace(CLIENT, CLUSTER_IP, dport)
    assert (t.verdict, t.endpoint) == (d.verdict, d.endpoint and f"{d.endpoint[0]}:{d.endpoint[1]}")
    if name == "service.port" and value != 80:
        assert engine.lookup(CLIENT, CLUSTER_IP, 80, "TCP", sport=1000, now=0.0).verdict == "PASS"
    if name == "service.nodePort" and value:
        d = engine.lookup(CLIENT, NODE_IP, value, "TCP", sport=1000, now=0.0)
        assert (d.verdict, d.frontend, d.endpoint) == ("DNAT", "NodePort", (POD, 8080))


@pytest.mark.parametrize("case", VALID, ids=_id)
def test_accepted_and_engine_runs(case: tuple[str, Any], make_engine: Callable[..., kp.Engine]) -> None:
    name, value = case
    cluster = kp.Cluster.from_objects(_objects(name, value))
    _check_engine(make_engine(cluster, node=NODE), name, value)


@pytest.mark.parametrize("case", VALID, ids=_id)
def test_accepted_by_apply(case: tuple[str, Any], make_engine: Callable[..., kp.Engine]) -> None:
    name, value = case
    engine = make_engine([node(NODE, NODE_IP), node("n2", "192.168.0.2")], node=NODE)
    engine.apply(FIELDS[name].build(value))
    _check_engine(engine, name, value)


@pytest.mark.parametrize("case", VALID, ids=_id)
def test_cli_accepts(case: tuple[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name, value = case
    rc = cli_main(["rules", "-f", str(_write(tmp_path, _objects(name, value))), "--node", NODE])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "*nat" in out and "error" not in err


def test_nan_and_huge_numbers_are_one_line_too() -> None:
    """Beyond the brief's values: what a JSON or YAML reader can also hand over."""
    for value, text in ((math.inf, "Infinity"), (math.nan, "NaN"), (2**63, str(2**63)), (-(2**63), str(-(2**63)))):
        with pytest.raises(kp.ManifestError) as got:
            kp.Cluster.from_objects(_objects("service.port", value))
        assert got.value.problems == (f"{W}: spec.ports[0].port: {text} is not a valid port",)


IMPLS = ["compiled", "python"] if kp.COMPILED_AVAILABLE else ["python"]
ANY_VALUE = st.one_of(
    st.integers(-3, 65540), st.integers(-(2**70), 2**70), st.floats(), st.booleans(), st.none(),
    st.text(alphabet="abzAZ09-_ .", max_size=18),
)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(FIELDS)), value=ANY_VALUE)
def test_any_value_one_line_or_a_running_engine(name: str, value: Any) -> None:
    """Whatever the value: the table's error line alone, or a cluster both twins run."""
    try:
        cluster = kp.Cluster.from_objects(_objects(name, value))
    except kp.ManifestError as e:
        assert e.problems == (FIELDS[name].error(value),)
        assert not FIELDS[name].valid(value)
        return
    assert FIELDS[name].valid(value)
    for impl in IMPLS:
        _check_engine(kp.Engine(cluster, node=NODE, impl=impl, seed=1), name, value)

"""kproxy-extravip's own tests: run against the installed kproxy-core and the installed
plugin (``pip install kproxy-core plugins/kproxy-extravip pytest``, then ``pytest`` in this
directory). kproxy-core's suite installs the plugin's wheel and runs these too
(tests/test_plugin_distributions.py), besides its end-to-end tests of the plugin
(tests/test_example_plugin.py: both twins, the renderers, DNS, the kernel).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import subprocess
import sys
from typing import Any

import kproxy_extravip as xv
import pytest

import kproxy_core as kp
from kproxy_core import testing
from kproxy_core.errors import ManifestError
from kproxy_core.testing import assert_candidates, plugin_manager


@pytest.fixture(scope="module")
def pm() -> Any:
    # the installed entry point, and nothing else that happens to be installed
    return plugin_manager(entry_points=["extravip"])


def service(name: str, cluster_ip: str = "10.96.0.10", annotations: dict[str, str] | None = None,
            ns: str = "default", **spec: Any) -> dict[str, Any]:
    """An ExtraVIP Service with one port, http 80."""
    return testing.service(name, namespace=ns, type="ExtraVIP", cluster_ip=cluster_ip, ports=[("http", 80)],
                           annotations=annotations or {}, **spec)


def endpoints(name: str, ips: list[str], ns: str = "default") -> dict[str, Any]:
    """The Service's EndpointSlice: ``ips`` on port http 8080."""
    return testing.endpoint_slice(name, ips, namespace=ns, ports=[("http", 8080)])


def test_the_type_is_registered_through_the_entry_point(pm: Any) -> None:
    assert "ExtraVIP" in pm.registry.names()
    assert pm.registry.owner("ExtraVIP") == "extravip"


def test_the_vip_is_allocated_by_the_documented_rule(pm: Any) -> None:
    cluster = kp.Cluster.from_objects([service("web")], plugins=pm)
    got = xv.allocate(cluster, "IPv4")[("default", "web")]
    net = ipaddress.ip_network("198.51.100.0/24")
    n = net.num_addresses - 2  # the first and the last are never allocated
    slot = int.from_bytes(hashlib.sha256(b"default/web").digest()[:8], "big") % n
    assert got.how == "hash" and got.skipped == 0 and got.range == net
    assert got.ip == got.start == net.network_address + 1 + slot


def test_lookups_to_the_vip_reach_the_endpoints(pm: Any) -> None:
    objs = [service("web", annotations={xv.ADDRESS_ANNOTATION: "198.51.100.7"}),
            endpoints("web", ["10.0.1.1", "10.0.1.2"])]
    engine = kp.Engine(kp.Cluster.from_objects(objs, plugins=pm), node=None, plugins=pm, seed=1)
    d = engine.lookup("10.0.9.9", "198.51.100.7", 80, "TCP", sport=1234)
    assert d.verdict == "DNAT" and d.frontend == "ExtraVIP" and d.service == "default/web:http"
    t = engine.trace("10.0.9.9", "198.51.100.7", 80, "TCP", sport=1234)
    assert_candidates(t, {"10.0.1.1:8080": 0.5, "10.0.1.2:8080": 0.5})
    assert d.endpoint is not None and t.endpoint == f"{d.endpoint[0]}:{d.endpoint[1]}"  # the flow's endpoint
    assert engine.lookup("10.0.9.9", "198.51.100.8", 80, "TCP").verdict == "PASS"


def test_a_fixed_address_outside_the_range_is_refused(pm: Any) -> None:
    with pytest.raises(ManifestError, match=r"Service default/web: .*address.*outside 198\.51\.100\.0/24"):
        kp.Cluster.from_objects([service("web", annotations={xv.ADDRESS_ANNOTATION: "203.0.113.1"})], plugins=pm)


def test_two_services_cannot_hold_one_address(pm: Any) -> None:
    objs = [service("a", "10.96.0.10", {xv.ADDRESS_ANNOTATION: "198.51.100.9"}),
            service("b", "10.96.0.11", {xv.ADDRESS_ANNOTATION: "198.51.100.9"})]
    cluster = kp.Cluster.from_objects(objs, plugins=pm)
    with pytest.raises(xv.AllocationError, match=r"198\.51\.100\.9"):
        kp.Engine(cluster, node=None, plugins=pm)


def test_the_kproxy_command_lists_and_uses_the_plugin(tmp_path: Any) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KPROXY_DISABLE_PLUGIN_AUTOLOAD"}
    r = subprocess.run([sys.executable, "-m", "kproxy_core", "plugins"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "ExtraVIP" in r.stdout, r.stderr
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"kind": "List", "items": [
        service("web", annotations={xv.ADDRESS_ANNOTATION: "198.51.100.7"}), endpoints("web", ["10.0.1.1"])]}))
    r = subprocess.run([sys.executable, "-m", "kproxy_core", "trace", "-f", str(path), "--src", "10.0.9.9:1234",
                        "--dst", "198.51.100.7:80", "--json"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)
    assert t["verdict"] == "DNAT" and t["frontend"] == "ExtraVIP" and t["endpoint"] == "10.0.1.1:8080"


def test_code_that_uses_the_default_manager_sees_the_plugin(kproxy_plugin_manager: Any) -> None:
    """kproxy-core's pytest fixture: the manager it makes is the default while the test
    runs, so a Cluster and an Engine built without plugins= know ExtraVIP."""
    pm = kproxy_plugin_manager(entry_points=["extravip"])
    objs = [service("web", annotations={xv.ADDRESS_ANNOTATION: "198.51.100.9"}), endpoints("web", ["10.0.1.1"])]
    engine = kp.Engine(kp.Cluster.from_objects(objs), node=None)
    assert engine.plugins is pm
    assert_candidates(engine.trace("10.0.9.9", "198.51.100.9", 80), {"10.0.1.1:8080": 1.0})

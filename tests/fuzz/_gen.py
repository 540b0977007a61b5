"""Manifests for the fuzz harnesses: valid objects (tests/k8s.py's builders and the article
cluster) and structured damage to them, driven by a :class:`_common.Provider`.

A mutation picks a place in an object (any key of any mapping, any item of any list, found by
walking it) and puts there what a hand-written or badly generated manifest could: a value of
the wrong type, a huge or negative int, NaN, None, deep nesting, odd unicode, a near-valid
address; or deletes it, duplicates it, adds a stray key.
"""

from __future__ import annotations

import copy
from typing import Any

from _common import Provider
from k8s import ep, eport, lb, node, port, service, slice_

NODES = ("worker-1", "worker-2", "master-1")


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def endpoints(ns: str, name: str, ips: list[str], p: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"namespace": ns, "name": name},
            "subsets": [{"addresses": [{"ip": ip, "nodeName": "worker-2"} for ip in ips],
                         "notReadyAddresses": [{"ip": "10.9.9.9"}],
                         "ports": [{"name": "http", "port": p, "protocol": "TCP"}]}]}


def service_cidr(name: str, *cidrs: str) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": name},
            "spec": {"cidrs": list(cidrs)}}


def base_objects() -> list[dict[str, Any]]:
    """A small cluster touching every kind and frontend: the engines' starting point."""
    web = service("default", "web", "10.96.0.10", [port(80, "http"), port(443, "https")])
    np_ = service("default", "np", "10.96.0.11", [port(8080, "web", "TCP", 30080), port(53, "dns", "UDP", 30053)],
                  type="NodePort", externalTrafficPolicy="Local")
    lbs = lb(service("default", "lb", "10.96.0.12", [port(80, "", "TCP", 30081)], type="LoadBalancer",
                     loadBalancerSourceRanges=["203.0.113.0/24"], externalIPs=["192.0.2.7"]), "198.51.100.9")
    aff = service("team", "sticky", "10.96.0.13", [port(9000, "", "SCTP")], sessionAffinity="ClientIP",
                  sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}, internalTrafficPolicy="Local")
    dual = service("team", "dual", ["10.96.0.14", "fd00:96::14"], [port(80, "http")],
                   ipFamilyPolicy="RequireDualStack")
    six = service("team", "six", "fd00:96::15", [port(8443, "web", "TCP", 30443)], type="NodePort")
    headless = service("team", "hl", "None", [port(5432, "pg")])
    ext = service("team", "ext", [], [port(80)], type="ExternalName", externalName="example.com")
    ext["spec"].pop("selector")
    return [
        node("worker-1", "172.20.40.11", "fd00:20::11", pod_cidr="100.96.1.0/24", zone="a"),
        node("worker-2", "172.20.50.12", pod_cidr="100.96.2.0/24", zone="b"),
        namespace("default"), namespace("team"),
        web, slice_("default", "web", [ep("100.96.1.5", "worker-1"), ep("100.96.2.6", "worker-2", zone="b"),
                                       ep("100.96.2.7", "worker-2", ready=False, serving=True, terminating=True)],
                    [eport(80, "http"), eport(8443, "https")]),
        np_, slice_("default", "np", [ep("100.96.1.8", "worker-1", zone_hints=["a"])],
                    [eport(8080, "web"), eport(53, "dns", "UDP")]),
        lbs, slice_("default", "lb", [ep("100.96.2.9", "worker-2")], [eport(80)]),
        aff, slice_("team", "sticky", [ep("100.96.1.10", "worker-1"), ep("100.96.2.11", "worker-2")],
                    [eport(9000, "", "SCTP")]),
        dual, slice_("team", "dual", [ep("100.96.1.12", "worker-1")], [eport(80, "http")], name="dual-v4"),
        slice_("team", "dual", [ep("fd00:100::12", "worker-1")], [eport(80, "http")], name="dual-v6", family="IPv6"),
        six, slice_("team", "six", [ep("fd00:100::13", "worker-1")], [eport(8443, "web")], family="IPv6"),
        headless, slice_("team", "hl", [ep("100.96.1.14", "worker-1")], [eport(5432, "pg")]),
        ext,
        service("legacy", "old", "10.96.0.16", [port(80, "http")]),
        endpoints("legacy", "old", ["100.96.2.15"], 80),
        service_cidr("kubernetes", "10.96.0.0/16", "fd00:96::/112"),
    ]


def templates() -> list[dict[str, Any]]:
    """More objects to mutate: every kind, and the article cluster's."""
    out = base_objects()
    out.append(endpoints("legacy", "old2", ["100.96.2.16", "100.96.1.17"], 8080))
    out.append(service("default", "web", "10.96.0.10", [port(80, "http")], type="NodePort"))
    out.append({"type": "DELETED", "object": service("default", "web", "10.96.0.10", [port(80, "http")])})
    out.append({"type": "MODIFIED", "object": slice_("default", "web", [ep("100.96.1.99", "worker-1")],
                                                     [eport(80, "http")])})
    out.append({"apiVersion": "v1", "kind": "List", "items": [namespace("x"), node("worker-3", "172.20.60.13")]})
    out.append({"apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
                "metadata": {"namespace": "default", "name": "web-beta",
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["100.96.2.30"], "topology": {"kubernetes.io/hostname": "worker-2"}}],
                "ports": [{"name": "http", "port": 80}]})
    return out


WEIRD: tuple[Any, ...] = (
    None, True, False, 0, -1, 1 << 31, 1 << 63, -(1 << 63), 10 ** 30, 65536, 70000, 0.5, float("nan"),
    float("inf"), -0.0, "", " ", "None", "null", "0", "-1", "65535", "80", "٣", "\u202e", "\x00", "é" * 300,
    "a" * 1000, "10.0.0.1", "010.000.000.001", "10.0.0.1/32", "::ffff:10.0.0.1", "fd00::1%eth0", "300.1.1.1",
    "0.0.0.0", "255.255.255.255", "::", "fe80::1", "1.2.3.4 ", "TCP", "udp", "ICMP", "ClientIP", "Local",
    "LoadBalancer", "ExternalName", "NodePort", "IPv6", "IPv4", "PreferDualStack", "Cluster", "*", "..",
    "a.b.c", "-", "worker-1", "worker-3", [], {}, [None], [{}], [[]], {"": None}, {"a": {"b": {}}},
)


def weird_value(p: Provider) -> Any:
    k = p.int(0, 9)
    if k <= 4:
        return copy.copy(p.choice(WEIRD))
    if k == 5:
        return p.int(-(1 << 70), 1 << 70)
    if k == 6:
        return p.text(24)
    if k == 7:  # deep nesting
        depth = p.choice((10, 100, 400))
        v: Any = p.choice(("x", 1, None))
        for _ in range(depth):
            v = [v] if p.bool() else {"k": v}
        return v
    if k == 8:
        return [p.choice(WEIRD) for _ in range(p.int(0, 4))]
    return p.float()


def _places(obj: Any, out: list[tuple[Any, Any]], depth: int = 0) -> None:
    """Every (container, key or index) in obj, depth first."""
    if depth > 12:
        return
    if isinstance(obj, dict):
        for k in list(obj):
            out.append((obj, k))
            _places(obj[k], out, depth + 1)
    elif isinstance(obj, list):
        for i in range(len(obj)):
            out.append((obj, i))
            _places(obj[i], out, depth + 1)


KEYS = ("clusterIP", "clusterIPs", "ports", "port", "nodePort", "targetPort", "protocol", "type", "selector",
        "externalIPs", "externalTrafficPolicy", "internalTrafficPolicy", "sessionAffinity", "ipFamilies",
        "ipFamilyPolicy", "loadBalancerIP", "healthCheckNodePort", "addresses", "conditions", "nodeName", "zone",
        "hints", "namespace", "name", "labels", "annotations", "addressType", "endpoints", "status", "spec",
        "items", "kind", "apiVersion", "object", "metadata", "ready", "serving", "terminating", "podCIDR",
        "podCIDRs", "cidrs", "subsets", "ip", "hostname", "allocateLoadBalancerNodePorts",
        "publishNotReadyAddresses", "trafficDistribution", "ipMode", "forNodes", "forZones")


def mutate(p: Provider, obj: Any, rounds: int) -> Any:
    root = [obj]
    for _ in range(rounds):
        places: list[tuple[Any, Any]] = [(root, 0)]
        _places(root[0], places)
        box, key = p.choice(places)
        op = p.int(0, 7)
        if op <= 2:
            box[key] = weird_value(p)
        elif op == 3:
            if (isinstance(box, dict) and box is not root) or (isinstance(box, list) and box is not root):
                del box[key]
        elif op == 4:  # duplicate a list item or a value elsewhere
            value = copy.deepcopy(box[key])
            if isinstance(box, list) and box is not root:
                box.insert(key, value)
            elif isinstance(box[key], dict):
                box[key][p.choice(KEYS)] = value if p.bool() else weird_value(p)
        elif op == 5 and isinstance(box[key], dict):
            box[key][p.choice(KEYS)] = weird_value(p)
        elif op == 6 and isinstance(box[key], str):
            s = box[key]
            at = p.int(0, len(s))
            box[key] = s[:at] + p.choice(("", "0", ".", ":", "/", " ", "-", "\u0000", "9" * 20, "é")) + s[at + 1:]
        elif op == 7 and isinstance(box[key], int) and not isinstance(box[key], bool):
            box[key] = box[key] + p.choice((-1, 1, 65536, -65536, 1 << 32, -(1 << 32), 1 << 64))
    return root[0]


def objects(p: Provider, most: int = 4) -> list[Any]:
    """Some templates, each mutated a few times (maybe none)."""
    pool = templates()
    out = []
    for _ in range(p.int(1, most)):
        obj = copy.deepcopy(p.choice(pool))
        out.append(mutate(p, obj, p.int(0, 3)))
    return out

"""Tiny manifest builders for tests (plain dicts, as `kubectl get -o yaml` would print)."""

from __future__ import annotations

from typing import Any


def node(name: str, *ips: str, pod_cidr: str | None = None, zone: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {}},
        "spec": {},
        "status": {"addresses": [{"type": "InternalIP", "address": ip} for ip in ips]},
    }
    if pod_cidr:
        obj["spec"]["podCIDR"] = pod_cidr
    if zone:
        obj["metadata"]["labels"]["topology.kubernetes.io/zone"] = zone
    return obj


def service(
    ns: str,
    name: str,
    cluster_ip: str | list[str],
    ports: list[dict[str, Any]],
    type: str = "ClusterIP",
    **spec: Any,
) -> dict[str, Any]:
    ips = [cluster_ip] if isinstance(cluster_ip, str) else cluster_ip
    body: dict[str, Any] = {"type": type, "ports": ports, "selector": {"app": name}}
    if ips and ips[0] != "None":
        body["clusterIP"] = ips[0]
        body["clusterIPs"] = ips
        body["ipFamilies"] = ["IPv6" if ":" in ip else "IPv4" for ip in ips]
    elif ips:
        body["clusterIP"] = "None"
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name}, "spec": body}


def port(p: int, name: str = "", proto: str = "TCP", node_port: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "port": p, "protocol": proto, "targetPort": p}
    if node_port:
        out["nodePort"] = node_port
    return out


def ep(ip: str, node: str | None = None, ready: bool = True, serving: bool | None = None,
       terminating: bool = False, zone_hints: list[str] | None = None,
       node_hints: list[str] | None = None, zone: str | None = None) -> dict[str, Any]:
    cond = {"ready": ready, "serving": ready if serving is None else serving, "terminating": terminating}
    out: dict[str, Any] = {"addresses": [ip], "conditions": cond}
    if node:
        out["nodeName"] = node
    if zone:
        out["zone"] = zone
    hints: dict[str, Any] = {}
    if zone_hints is not None:
        hints["forZones"] = [{"name": z} for z in zone_hints]
    if node_hints is not None:
        hints["forNodes"] = [{"name": n} for n in node_hints]
    if hints:
        out["hints"] = hints
    return out


def slice_(ns: str, svc: str, endpoints: list[dict[str, Any]], ports: list[dict[str, Any]],
           name: str | None = None, family: str = "IPv4") -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": name or f"{svc}-abcde",
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": family,
        "endpoints": endpoints,
        "ports": ports,
    }


def eport(p: int, name: str = "", proto: str = "TCP") -> dict[str, Any]:
    return {"name": name, "port": p, "protocol": proto}


def lb(svc: dict[str, Any], *ingress: str | dict[str, Any]) -> dict[str, Any]:
    """``svc`` with ``status.loadBalancer.ingress`` set: a string is ``{"ip": s}``, a dict
    is used as is (``{"hostname": ...}``, ``{"ip": ..., "ipMode": "Proxy"}``)."""
    entries = [{"ip": i} if isinstance(i, str) else i for i in ingress]
    svc["status"] = {"loadBalancer": {"ingress": entries}}
    return svc

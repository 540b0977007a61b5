"""Multi-Cluster Services for kproxy-core: ServiceImports as kube-proxy is given them, and
``clusterset.local``.

The Multi-Cluster Services API (KEP-1645, ``multicluster.x-k8s.io``) exports a Service
from some clusters of a clusterset and imports it into the others as a ``ServiceImport``;
the endpoints of every exporting cluster arrive as EndpointSlices labelled
``multicluster.kubernetes.io/service-name`` (the ServiceImport) and
``multicluster.kubernetes.io/source-cluster`` (the cluster they come from). kube-proxy does
not read ServiceImports: an MCS controller gives it a *derived* Service for each, and
relabels the imported slices to it, so that kube-proxy programs the ClusterSetIP like any
ClusterIP (the KEP's "dummy Service"; the mcs-api reference controller). This plugin does
what that controller does, offline:

- a ``ServiceImport`` of type ``ClusterSetIP`` is read as a Service named like the
  reference controller names it (``derived-`` and ten characters of the lowercase base32hex
  sha256 of ``<namespace>/<name>``), of type ``ServiceImport`` (this plugin's), whose
  ClusterIPs are ``spec.ips``, with the import's ports and session affinity; a ``Headless``
  one as a headless Service of that name;
- an EndpointSlice with ``multicluster.kubernetes.io/service-name`` is read with
  ``kubernetes.io/service-name`` set to the derived Service (as the controller relabels it);
- the cluster DNS gets ``clusterset.local``, as the MCS DNS specification (v1.0.0, in the
  KEP's ``specification.md``) describes it: ``<svc>.<ns>.svc.clusterset.local`` A/AAAA (the
  ClusterSetIPs, or every ready endpoint of a headless import across its clusters; none:
  NXDOMAIN), ``<hostname>.<clusterid>.<svc>.<ns>.svc.clusterset.local`` for the endpoints of
  a headless import (the hostname, else the dashed address), SRV records for named ports
  (to the service name, or to each endpoint name), and ``dns-version.clusterset.local`` TXT
  ``"1.0.0"``. No PTR records (the specification does not require them) and no
  per-cluster names (it forbids them);
- a trace to a ClusterSetIP names the ServiceImport, the clusters that export it, and the
  source cluster of every candidate.

Read: ``multicluster.x-k8s.io/v1alpha1`` and ``v1beta1`` (fields under ``spec`` and
``status``) and ``v1alpha2`` (the same fields at the root). Each object is checked, with
one-line errors naming it and the field. A ``ClusterSetIP`` import without ``ips`` (its
address not allocated yet) is skipped with a warning.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from kproxy_core.addresses import join_host_port
from kproxy_core.dnstypes import DnsRecord
from kproxy_core.hookspecs import hookimpl
from kproxy_core.model import Cluster, EndpointSlice, Service
from kproxy_core.plantypes import PlanPort
from kproxy_core.servicetypes import Report, ServiceType, ServiceTypeRegistry

__all__ = [
    "DERIVED_ANNOTATION",
    "GROUP",
    "SERVICE_NAME_LABEL",
    "SOURCE_CLUSTER_LABEL",
    "TYPE",
    "ZONE",
    "ServiceImportType",
    "derived_name",
    "kproxy_read_object",
    "kproxy_register_service_types",
]

GROUP = "multicluster.x-k8s.io"
VERSIONS = ("v1alpha1", "v1alpha2", "v1beta1")
SERVICE_NAME_LABEL = "multicluster.kubernetes.io/service-name"
SOURCE_CLUSTER_LABEL = "multicluster.kubernetes.io/source-cluster"
DERIVED_ANNOTATION = "multicluster.kubernetes.io/derived-service"  # as the reference controller writes it
# what the derived Service carries about its import (this plugin's own annotations)
IMPORT_ANNOTATION = "kproxy-mcs.io/service-import"
IMPORT_TYPE_ANNOTATION = "kproxy-mcs.io/import-type"
CLUSTERS_ANNOTATION = "kproxy-mcs.io/clusters"
TYPE = "ServiceImport"  # the derived Service's spec.type
ZONE = "clusterset.local"
DNS_SCHEMA_VERSION = "1.0.0"  # the MCS DNS specification's dns-version
VERSION_TTL = 28800
PROTOCOLS = ("TCP", "UDP", "SCTP")
MAX_AFFINITY_TIMEOUT = 86400
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def derived_name(namespace: str, name: str) -> str:
    """The derived Service's name: ``derived-`` and the first ten characters of the
    lowercase base32hex sha256 of ``<namespace>/<name>`` (the mcs-api reference controller)."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return "derived-" + base64.b32hexencode(digest).decode().lower()[:10]


# --------------------------------------------------------------------------- reading


def _q(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _ports(raw: Any, report: Report, path: str, headless: bool) -> list[dict[str, Any]]:
    if raw is None or raw == []:
        if not headless:
            report.error(path, "required: a ClusterSetIP import has at least one port")
        return []
    if not isinstance(raw, list):
        report.error(path, f"must be a list, not {type(raw).__name__}")
        return []
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    numbers: set[tuple[int, str]] = set()
    for i, p in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(p, Mapping):
            report.error(where, f"must be a mapping, not {type(p).__name__}")
            continue
        port, protocol, name = p.get("port"), p.get("protocol", "TCP"), p.get("name", "")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            report.error(f"{where}.port", f"{_q(port)} is not a port (1-65535)")
            continue
        if protocol not in PROTOCOLS:
            report.error(f"{where}.protocol", f"{_q(protocol)} is not one of {', '.join(PROTOCOLS)}")
            continue
        if name is None:
            name = ""
        if not isinstance(name, str) or (name and not _LABEL.fullmatch(name)):
            report.error(f"{where}.name", f"{_q(name)} is not a DNS label")
            continue
        if not name and len(raw) > 1:
            report.error(f"{where}.name", "required when the import has more than one port")
            continue
        if name in names:
            report.error(f"{where}.name", f"{_q(name)} is used by another port")
            continue
        if (port, protocol) in numbers:
            report.error(where, f"{port}/{protocol} is used by another port")
            continue
        names.add(name)
        numbers.add((port, protocol))
        item: dict[str, Any] = {"name": name, "port": port, "protocol": protocol}
        if p.get("appProtocol") is not None:
            item["appProtocol"] = p["appProtocol"]
        out.append(item)
    return out


def _ips(raw: Any, report: Report, path: str) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        report.error(path, f"must be a list, not {type(raw).__name__}")
        return []
    if len(raw) > 2:
        report.error(path, f"{len(raw)} addresses: at most 2 (one per IP family)")
        return []
    out: list[str] = []
    for i, text in enumerate(raw):
        try:
            ip = ipaddress.ip_address(text) if isinstance(text, str) else None
        except ValueError:
            ip = None
        if ip is None:
            report.error(f"{path}[{i}]", f"{_q(text)} is not an IP address")
            return []
        out.append(str(ip))
    if len(out) == 2 and (":" in out[0]) == (":" in out[1]):
        report.error(path, f"{out[0]} and {out[1]} are of one family: a dual-stack import has one of each")
        return []
    return out


def _clusters(raw: Any, report: Report, path: str) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        report.error(path, f"must be a list, not {type(raw).__name__}")
        return []
    out: list[str] = []
    for i, c in enumerate(raw):
        name = c.get("cluster") if isinstance(c, Mapping) else None
        if not isinstance(name, str) or not name or len(name) > 253 or not _SUBDOMAIN.fullmatch(name):
            report.error(f"{path}[{i}].cluster", f"{_q(name)} is not a cluster name (an RFC 1123 subdomain)")
            continue
        out.append(name)
    return out


def read_service_import(obj: Mapping[str, Any], report: Report) -> list[dict[str, Any]]:
    """The derived Service of a ServiceImport (none for a ClusterSetIP import without an
    address yet), after checking the object."""
    version = str(obj.get("apiVersion", "")).partition("/")[2]
    if version not in VERSIONS:
        known = ", ".join(f"{GROUP}/{v}" for v in VERSIONS)
        report.error("apiVersion", f"{_q(obj.get('apiVersion'))} is not read ({known})")
        return []
    meta = obj["metadata"]
    namespace, name = meta.get("namespace") or "default", meta["name"]
    if version == "v1alpha2":  # fields at the root
        spec, at, clusters_raw, clusters_at = obj, "", obj.get("clusters"), "clusters"
    else:
        spec = obj.get("spec")
        if not isinstance(spec, Mapping):
            report.error("spec", "required (a mapping)")
            return []
        status = obj.get("status") if isinstance(obj.get("status"), Mapping) else {}
        at, clusters_raw, clusters_at = "spec.", status.get("clusters"), "status.clusters"
    kind = spec.get("type")
    if kind not in ("ClusterSetIP", "Headless"):
        report.error(f"{at}type", f"{_q(kind)} is not ClusterSetIP or Headless" if kind is not None else
                     "required (ClusterSetIP or Headless)")
        return []
    headless = kind == "Headless"
    ports = _ports(spec.get("ports"), report, f"{at}ports", headless)
    ips = _ips(spec.get("ips"), report, f"{at}ips")
    clusters = _clusters(clusters_raw, report, clusters_at)
    affinity = spec.get("sessionAffinity")
    if affinity not in (None, "None", "ClientIP"):
        report.error(f"{at}sessionAffinity", f"{_q(affinity)} is not None or ClientIP")
    config = spec.get("sessionAffinityConfig")
    if config is not None and not isinstance(config, Mapping):
        report.error(f"{at}sessionAffinityConfig", f"must be a mapping, not {type(config).__name__}")
        config = None
    if headless and ips:
        report.warn(f"{at}ips", "a Headless import has no ClusterSetIP: the addresses are ignored")
    if not headless and not ips:
        report.warn(f"{at}ips", "empty: no ClusterSetIP is allocated yet, so there is nothing to program "
                    "and no clusterset.local address")
        return []
    derived = derived_name(namespace, name)
    annotations = {IMPORT_ANNOTATION: name, IMPORT_TYPE_ANNOTATION: kind, CLUSTERS_ANNOTATION: ",".join(clusters)}
    svc_spec: dict[str, Any] = {"type": TYPE, "ports": ports}
    if headless:
        svc_spec["clusterIP"] = "None"
    else:
        svc_spec["clusterIP"] = ips[0]
        svc_spec["clusterIPs"] = ips
        svc_spec["ipFamilies"] = ["IPv6" if ":" in ip else "IPv4" for ip in ips]
        svc_spec["ipFamilyPolicy"] = "RequireDualStack" if len(ips) == 2 else "SingleStack"
        if affinity is not None:
            svc_spec["sessionAffinity"] = affinity
        if config is not None:
            svc_spec["sessionAffinityConfig"] = dict(config)
    return [{
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": namespace, "name": derived, "annotations": annotations},
        "spec": svc_spec,
    }]


def read_slice(obj: Mapping[str, Any], report: Report) -> list[Mapping[str, Any]] | None:
    """An imported EndpointSlice, relabelled to the derived Service (None: not imported)."""
    meta = obj.get("metadata")
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    if not isinstance(labels, Mapping) or SERVICE_NAME_LABEL not in labels:
        return None
    imported = labels[SERVICE_NAME_LABEL]
    if not isinstance(imported, str) or not _LABEL.fullmatch(imported):
        report.error(f"metadata.labels[{SERVICE_NAME_LABEL!r}]", f"{_q(imported)} is not a ServiceImport name")
        return []
    derived = derived_name(meta.get("namespace") or "default", imported)
    if labels.get(SOURCE_CLUSTER_LABEL) is None:
        report.warn(f"metadata.labels[{SOURCE_CLUSTER_LABEL!r}]",
                    "missing: its endpoints get no clusterset.local names and no source cluster in traces")
    own = labels.get("kubernetes.io/service-name")
    if own not in (None, derived):
        report.warn("metadata.labels['kubernetes.io/service-name']",
                    f"{_q(own)} is replaced by {derived}, the Service of ServiceImport {imported}")
    new_labels = {**labels, "kubernetes.io/service-name": derived}
    return [{**obj, "metadata": {**meta, "labels": new_labels}}]


@hookimpl
def kproxy_read_object(obj: Mapping[str, Any], report: Report) -> list[Mapping[str, Any]] | None:
    kind, api = obj.get("kind"), obj.get("apiVersion")
    if kind == "ServiceImport" and isinstance(api, str) and api.startswith(GROUP + "/"):
        return list(read_service_import(obj, report))
    if kind == "EndpointSlice":
        return read_slice(obj, report)
    return None


# --------------------------------------------------------------------------- the Service type


def _dashed(ip: str) -> str:
    label = ip.replace(".", "-").replace(":", "-")
    return label + "0" if label.endswith("-") else label


def _rtype(ip: str) -> str:
    return "AAAA" if ":" in ip else "A"


def _imported(service: Service) -> tuple[str, str, list[str]]:
    """The ServiceImport's name, type and exporting clusters, from the derived Service."""
    ann = service.annotations
    clusters = [c for c in ann.get(CLUSTERS_ANNOTATION, "").split(",") if c]
    return ann.get(IMPORT_ANNOTATION, service.name), ann.get(IMPORT_TYPE_ANNOTATION, "ClusterSetIP"), clusters


def _slices(cluster: Cluster, service: Service) -> Iterator[EndpointSlice]:
    for sl in cluster.slices_for(service.namespace, service.name):
        if SERVICE_NAME_LABEL in sl.labels:
            yield sl


class ServiceImportType(ServiceType):
    """The derived Service of a ServiceImport: programmed like a ClusterIP Service (kube-proxy
    is given exactly that), answered in clusterset.local."""

    name = TYPE

    def validate(self, service: Service, report: Report) -> None:
        if IMPORT_ANNOTATION not in service.annotations:
            report.error("spec.type", f"{TYPE} is the type of the Services kproxy-mcs derives from ServiceImports; "
                         "write a ServiceImport (multicluster.x-k8s.io) instead")

    def dns_zones(self, zone: str) -> Iterable[str]:
        return [ZONE]

    def zone_records(self, zone: str, cluster: Cluster) -> Iterable[DnsRecord]:
        return [DnsRecord(f"dns-version.{zone}", "TXT", f'"{DNS_SCHEMA_VERSION}"', VERSION_TTL)]

    def dns_records(self, service: Service, zone: str, cluster: Cluster) -> Iterable[DnsRecord]:
        name, kind, _ = _imported(service)
        base = f"{name}.{service.namespace}.svc.{ZONE}"
        if kind != "Headless":
            for ip in service.cluster_ips:
                yield DnsRecord(base, _rtype(ip), ip)
            for p in service.ports:
                if p.name:
                    yield DnsRecord(f"_{p.name}._{p.protocol.lower()}.{base}", "SRV", f"0 100 {p.port} {base}.")
            return
        srv: dict[str, list[tuple[str, int]]] = {}
        for sl in _slices(cluster, service):
            source = sl.labels.get(SOURCE_CLUSTER_LABEL)
            for ep in sl.endpoints:
                if not ep.ready or not ep.addresses:
                    continue
                label = ep.hostname or _dashed(ep.addresses[0])
                for ip in ep.addresses:
                    yield DnsRecord(base, _rtype(ip), ip)
                    if source:
                        yield DnsRecord(f"{label}.{source}.{base}", _rtype(ip), ip)
                if source:
                    for p in sl.ports:
                        if p.name and p.port:
                            key = f"_{p.name}._{p.protocol.lower()}.{base}"
                            srv.setdefault(key, []).append((f"{label}.{source}.{base}", p.port))
        for key, targets in srv.items():
            unique = list(dict.fromkeys(targets))
            weight = max(1, 100 // len(unique))
            for target, port in unique:
                yield DnsRecord(key, "SRV", f"0 {weight} {port} {target}.")

    def endpoint_notes(self, service: Service, port: PlanPort, cluster: Cluster) -> Mapping[str, str]:
        notes: dict[str, str] = {}
        for sl in _slices(cluster, service):
            source = sl.labels.get(SOURCE_CLUSTER_LABEL)
            text = f"from cluster {source}" if source else "source cluster unknown"
            for p in sl.ports:
                if p.port and p.name == port.port_name and p.protocol == port.protocol:
                    for ep in sl.endpoints:
                        if ep.addresses:
                            notes.setdefault(join_host_port(ep.addresses[0], p.port), text)
        return notes

    def trace_steps(self, service: Service, port: PlanPort | None, frontend: str | None) -> Iterable[str]:
        name, kind, clusters = _imported(service)
        what = f"ServiceImport {service.namespace}/{name} (type {kind}"
        what += f", ClusterSetIP {', '.join(service.cluster_ips)})" if kind != "Headless" else ")"
        yield (f"Multi-Cluster Services: {service.ref} is the Service kube-proxy is given for {what}; "
               f"its name in the clusterset is {name}.{service.namespace}.svc.{ZONE}")
        if clusters:
            yield f"exported by {len(clusters)} cluster(s): {', '.join(clusters)} (the import's status)"


@hookimpl
def kproxy_register_service_types(registry: ServiceTypeRegistry) -> None:
    registry.register(ServiceImportType())

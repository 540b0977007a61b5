"""A testing kit for kproxy plugin authors: managers, manifests and trace assertions.

A plugin's test builds a manager that holds the plugin under test and nothing else
installed, a few manifests as ``kubectl get -o yaml`` prints them, and checks what a
trace says of the packet::

    import kproxy_core as kp
    from kproxy_core.testing import assert_candidates, endpoint, endpoint_slice, plugin_manager, service


    class PreferZoneA:
        @kp.hookimpl
        def kproxy_endpoint_weights(self, endpoints):
            return [3 if e.zone == "a" else 1 for e in endpoints]


    pm = plugin_manager(PreferZoneA())
    objs = [service("web"),
            endpoint_slice("web", [endpoint("10.1.0.5", zone="a"), endpoint("10.1.0.6", zone="b")])]
    engine = kp.Engine(kp.Cluster.from_objects(objs, plugins=pm), node=None, plugins=pm)
    assert_candidates(engine.trace("10.2.0.1", "10.96.0.10", 80), {"10.1.0.5:8080": 0.75, "10.1.0.6:8080": 0.25})

A plugin distribution's own tests load its installed entry point and nothing else that
happens to be installed: ``plugin_manager(entry_points=["myplugin"])``.

The builders (:func:`service`, :func:`port`, :func:`endpoint_slice`, :func:`endpoint`,
:func:`node`, :func:`namespace`) return plain dicts with the fields the API server fills
in (``clusterIPs``, ``ipFamilies``, ``sessionAffinity``, ``nodePort`` for NodePort and
LoadBalancer Services, ...), so that what they give loads with
:meth:`kproxy_core.Cluster.from_objects` without a warning. They do not check their
arguments: a test may build a manifest the loader refuses. Extra fields go in as
keyword arguments (camelCase, as in the manifest) or by editing the dict.

The trace helpers (:func:`candidates`, :func:`filtered`, :func:`assert_candidates`,
:func:`assert_filtered`, :func:`assert_chosen_from`) take a :class:`kproxy_core.Trace` or
its ``to_dict()``; endpoints are named as the trace names them, ``IP:port`` (``[IPv6]:port``).

The pytest plugin :mod:`kproxy_core.pytest_plugin`, registered with pytest when
kproxy-core is installed, adds the fixture ``kproxy_plugin_manager``: :func:`plugin_manager`
whose managers are also the shared default while the test runs.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeAlias

from .plugins import KproxyPluginManager, make_plugin_manager
from .trace import Trace

__all__ = [
    # plugin managers
    "plugin_manager",
    # manifests
    "EndpointPortSpec",
    "Manifest",
    "ServicePortSpec",
    "endpoint",
    "endpoint_slice",
    "namespace",
    "node",
    "port",
    "service",
    # traces
    "TraceLike",
    "assert_candidates",
    "assert_chosen_from",
    "assert_filtered",
    "candidates",
    "filtered",
]

Manifest: TypeAlias = dict[str, Any]  # what the builders return
# a Service port: a number, (name, number), (name, number, protocol) or a port() dict
ServicePortSpec: TypeAlias = int | tuple[str, int] | tuple[str, int, str] | Mapping[str, Any]
# an EndpointSlice port: the same forms, or a dict as the slice holds it
EndpointPortSpec: TypeAlias = int | tuple[str, int] | tuple[str, int, str] | Mapping[str, Any]
TraceLike: TypeAlias = Trace | Mapping[str, Any]  # a Trace or its to_dict()

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
ZONE_LABEL = "topology.kubernetes.io/zone"
NODE_PORT_RANGE = (30000, 32767)  # the API server's default --service-node-port-range


# --------------------------------------------------------------------------- plugin managers


def plugin_manager(
    *plugins: object,
    entry_points: Iterable[str] = (),
    bundled: bool = True,
) -> KproxyPluginManager:
    """A plugin manager holding the bundled plugins (unless ``bundled=False``), the plugin
    objects given (modules, classes or instances with ``@kproxy_core.hookimpl`` functions)
    and, of the installed ``kproxy`` entry points, only those named in ``entry_points``
    (one name may be given as a string; a name that is not installed raises
    :class:`kproxy_core.PluginError`). Nothing else installed is loaded and nothing is
    left out, whatever ``KPROXY_DISABLE_PLUGIN_AUTOLOAD`` and ``KPROXY_DISABLE_PLUGINS``
    say. A misspelled hook name raises PluginError here, as it does at start-up."""
    names = [entry_points] if isinstance(entry_points, str) else list(entry_points)
    return make_plugin_manager(plugins, entry_points=names or False, bundled=bundled, disabled=())


# --------------------------------------------------------------------------- manifests


def port(
    port: int,
    *,
    name: str = "",
    protocol: str = "TCP",
    target_port: int | str | None = None,
    node_port: int | None = None,
) -> Manifest:
    """One entry of a Service's ``spec.ports``. ``target_port`` defaults to ``port``, as
    the API server defaults it (kube-proxy takes the backend port from the EndpointSlice;
    the Service's ``targetPort`` is carried along). :func:`service` fills in ``node_port``
    for NodePort and LoadBalancer Services when it is not given."""
    out: Manifest = {}
    if name:
        out["name"] = name
    if node_port is not None:
        out["nodePort"] = node_port
    out["port"] = port
    out["protocol"] = protocol
    out["targetPort"] = port if target_port is None else target_port
    return out


def service(
    name: str,
    *,
    namespace: str = "default",
    ports: Sequence[ServicePortSpec] = (80,),
    type: str = "ClusterIP",
    cluster_ip: str | None = "10.96.0.10",
    headless: bool = False,
    cluster_ips: Sequence[str] | None = None,
    ip_families: Sequence[str] | None = None,
    selector: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    external_ips: Sequence[str] = (),
    external_traffic_policy: str | None = None,
    internal_traffic_policy: str | None = None,
    session_affinity_timeout: int | None = None,
    load_balancer_ips: Sequence[str | Mapping[str, Any]] = (),
    **spec: Any,
) -> Manifest:
    """A ``v1 Service``.

    ``ports``: numbers, ``(name, number)`` / ``(name, number, protocol)`` tuples or
    :func:`port` dicts (more than one port needs names). ``cluster_ip``: None leaves the
    field out; ``headless=True`` writes ``clusterIP: None``; ``cluster_ips`` (one per IP
    family) replaces ``cluster_ip``. ``ip_families`` defaults to the families of the
    cluster IPs (IPv4 for a headless Service). A Service of type ExternalName gets no
    cluster IP (give ``externalName=...``). ``selector``: None leaves it out.

    ``external_traffic_policy`` defaults to Cluster for NodePort and LoadBalancer Services
    (left out for the others); ``internal_traffic_policy`` to Cluster.
    ``session_affinity_timeout`` sets ``sessionAffinity: ClientIP`` with that timeout.
    ``load_balancer_ips`` go into ``status.loadBalancer.ingress`` (a string is
    ``{"ip": ...}``, a mapping is taken as is: ``{"hostname": ...}``, ``{"ip": ..., "ipMode": "Proxy"}``).

    As the API server does, NodePort and LoadBalancer Services get a ``nodePort`` on every
    port that has none (unless ``allocateLoadBalancerNodePorts=False``), and a LoadBalancer
    with ``external_traffic_policy="Local"`` a ``healthCheckNodePort``: numbers in
    30000-32767 that depend only on the namespace, name, port and protocol (read them from
    the dict, or give them). Other keyword arguments are ``spec`` fields, camelCase as in
    the manifest, written last (``externalName="db.example.com"``,
    ``loadBalancerSourceRanges=[...]``).
    """
    meta: Manifest = {"name": name, "namespace": namespace}
    if labels is not None:
        meta["labels"] = dict(labels)
    if annotations is not None:
        meta["annotations"] = dict(annotations)
    body: Manifest = {}
    if type != "ExternalName":
        ips: list[str] = []
        if headless:
            body["clusterIP"], body["clusterIPs"] = "None", ["None"]
        elif cluster_ips is not None:
            ips = list(cluster_ips)
        elif cluster_ip is not None:
            ips = [cluster_ip]
        if ips:
            body["clusterIP"], body["clusterIPs"] = ips[0], ips
        families = list(ip_families) if ip_families is not None else [_family(ip) for ip in ips]
        if headless and not families:
            families = ["IPv4"]
        if families:
            body["ipFamilies"] = families
            body["ipFamilyPolicy"] = "RequireDualStack" if len(families) > 1 else "SingleStack"
    if external_ips:
        body["externalIPs"] = list(external_ips)
    if external_traffic_policy is not None:
        body["externalTrafficPolicy"] = external_traffic_policy
    elif type in ("NodePort", "LoadBalancer"):
        body["externalTrafficPolicy"] = "Cluster"
    if internal_traffic_policy is not None:
        body["internalTrafficPolicy"] = internal_traffic_policy
    elif type != "ExternalName":
        body["internalTrafficPolicy"] = "Cluster"
    body["ports"] = [_service_port(p) for p in ports]
    if selector is not None:
        body["selector"] = dict(selector)
    if session_affinity_timeout is not None:
        body["sessionAffinity"] = "ClientIP"
        body["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": session_affinity_timeout}}
    else:
        body["sessionAffinity"] = "None"
    body["type"] = type
    body.update(copy.deepcopy(spec))

    taken = {p["nodePort"] for p in body["ports"] if isinstance(p, dict) and p.get("nodePort")}
    allocate = type == "NodePort" or (type == "LoadBalancer" and body.get("allocateLoadBalancerNodePorts") is not False)
    if allocate:
        for p in body["ports"]:
            if isinstance(p, dict) and not p.get("nodePort"):
                key = f"{namespace}/{name}:{p.get('port')}/{p.get('protocol', 'TCP')}"
                p["nodePort"] = _free_node_port(key, taken)
                taken.add(p["nodePort"])
    if type == "LoadBalancer" and body.get("externalTrafficPolicy") == "Local" and "healthCheckNodePort" not in body:
        body["healthCheckNodePort"] = _free_node_port(f"{namespace}/{name} health check", taken)

    ingress = [{"ip": ip} if isinstance(ip, str) else copy.deepcopy(dict(ip)) for ip in load_balancer_ips]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": body,
        "status": {"loadBalancer": {"ingress": ingress} if ingress else {}},
    }


def endpoint(
    ip_or_ips: str | Sequence[str],
    *,
    node: str | None = None,
    zone: str | None = None,
    ready: bool | None = None,
    serving: bool | None = None,
    terminating: bool = False,
    pod: str | None = None,
    hostname: str | None = None,
    hint_zones: Sequence[str] = (),
    hint_nodes: Sequence[str] = (),
) -> Manifest:
    """One entry of an EndpointSlice's ``endpoints``, for :func:`endpoint_slice`.

    The conditions follow the EndpointSlice controller: ``ready`` defaults to
    ``not terminating`` (a terminating endpoint is never ready), ``serving`` (the pod
    passes its readiness probe) to ``ready``, or to True for a terminating endpoint
    (it still serves while it drains; give ``serving=False`` for one that does not).
    ``pod``: the name of the Pod in ``targetRef`` (its namespace is the slice's).
    ``hint_zones`` / ``hint_nodes``: topology hints (``hints.forZones`` / ``forNodes``).
    """
    is_ready = not terminating if ready is None else ready
    out: Manifest = {
        "addresses": [ip_or_ips] if isinstance(ip_or_ips, str) else list(ip_or_ips),
        "conditions": {
            "ready": is_ready,
            "serving": (True if terminating else is_ready) if serving is None else serving,
            "terminating": terminating,
        },
    }
    if hostname is not None:
        out["hostname"] = hostname
    if node is not None:
        out["nodeName"] = node
    if pod is not None:
        out["targetRef"] = {"kind": "Pod", "name": pod}
    if zone is not None:
        out["zone"] = zone
    hints: Manifest = {}
    if hint_zones:
        hints["forZones"] = [{"name": z} for z in hint_zones]
    if hint_nodes:
        hints["forNodes"] = [{"name": n} for n in hint_nodes]
    if hints:
        out["hints"] = hints
    return out


def endpoint_slice(
    service: str,
    endpoints: Iterable[str | Mapping[str, Any]],
    *,
    namespace: str = "default",
    name: str | None = None,
    ports: Sequence[EndpointPortSpec] = (8080,),
    address_type: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> Manifest:
    """A ``discovery.k8s.io/v1 EndpointSlice`` of the Service named ``service``.

    ``endpoints``: addresses or :func:`endpoint` dicts. ``ports``: numbers (unnamed),
    ``(name, number)`` / ``(name, number, protocol)`` tuples or dicts; a slice port serves
    the Service port of the same name and protocol, so a Service with named ports needs
    named slice ports. ``address_type`` defaults to the family of the first address
    (FQDN if it is no IP address; IPv4 for an empty slice). ``name`` defaults to
    ``<service>-<address type>`` (``web-ipv4``): give one when a Service has more than one
    slice of a family. ``labels`` are added to ``kubernetes.io/service-name`` and
    ``endpointslice.kubernetes.io/managed-by`` (and may replace them).
    """
    entries: list[Manifest] = []
    for e in endpoints:
        entry = endpoint(e) if isinstance(e, str) else copy.deepcopy(dict(e))
        ref = entry.get("targetRef")
        if isinstance(ref, dict) and "namespace" not in ref:
            entry["targetRef"] = {**ref, "namespace": namespace}
        entries.append(entry)
    if address_type is None:
        first = next((a for e in entries for a in e.get("addresses") or ()), None)
        address_type = "IPv4" if first is None else _address_type(first)
    all_labels = {SERVICE_NAME_LABEL: service, MANAGED_BY_LABEL: "endpointslice-controller.k8s.io"}
    all_labels.update(labels or {})
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name if name is not None else f"{service}-{address_type.lower()}",
            "namespace": namespace,
            "labels": all_labels,
        },
        "addressType": address_type,
        "endpoints": entries,
        "ports": [_slice_port(p) for p in ports],
    }


def node(
    name: str,
    *,
    addresses: Sequence[str] = ("10.0.0.1",),
    zone: str | None = None,
    labels: Mapping[str, str] | None = None,
    pod_cidrs: Sequence[str] = (),
) -> Manifest:
    """A ``v1 Node`` with an InternalIP per address of ``addresses``, the
    ``topology.kubernetes.io/zone`` label when ``zone`` is given, and ``spec.podCIDR(s)``
    when ``pod_cidrs`` are (kube-proxy's ``--detect-local-mode=NodeCIDR`` reads them)."""
    all_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
    if zone is not None:
        all_labels[ZONE_LABEL] = zone
    all_labels.update(labels or {})
    spec: Manifest = {}
    if pod_cidrs:
        spec["podCIDR"], spec["podCIDRs"] = pod_cidrs[0], list(pod_cidrs)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": all_labels},
        "spec": spec,
        "status": {"addresses": [{"type": "InternalIP", "address": ip} for ip in addresses]
                   + [{"type": "Hostname", "address": name}]},
    }


def namespace(name: str, *, labels: Mapping[str, str] | None = None) -> Manifest:
    """A ``v1 Namespace`` (the cluster DNS answers for the names of those that exist)."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **(labels or {})}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def _family(ip: str) -> str:
    return "IPv6" if ":" in ip else "IPv4"


def _address_type(address: str) -> str:
    try:
        return "IPv6" if ipaddress.ip_address(address).version == 6 else "IPv4"
    except ValueError:
        return "FQDN"


def _port_fields(spec: ServicePortSpec | EndpointPortSpec) -> tuple[str, int, str] | None:
    """(name, number, protocol) of a number or a tuple; None for a mapping."""
    if isinstance(spec, Mapping):
        return None
    if isinstance(spec, int):
        return "", spec, "TCP"
    if isinstance(spec, tuple) and len(spec) in (2, 3):
        return spec[0], spec[1], spec[2] if len(spec) == 3 else "TCP"
    raise TypeError(f"a port is a number, (name, number), (name, number, protocol) or a mapping, not {spec!r}")


def _service_port(spec: ServicePortSpec) -> Manifest:
    fields = _port_fields(spec)
    if fields is None:
        return copy.deepcopy(dict(spec))  # type: ignore[arg-type]  # _port_fields: a mapping
    name, number, protocol = fields
    return port(number, name=name, protocol=protocol)


def _slice_port(spec: EndpointPortSpec) -> Manifest:
    fields = _port_fields(spec)
    if fields is None:
        return copy.deepcopy(dict(spec))  # type: ignore[arg-type]  # _port_fields: a mapping
    name, number, protocol = fields
    return {"name": name, "port": number, "protocol": protocol}


def _free_node_port(key: str, taken: set[int]) -> int:
    """A port of the NodePort range picked by a hash of ``key`` (stable from run to run),
    the next free one if it is taken."""
    lo, hi = NODE_PORT_RANGE
    n = hi - lo + 1
    slot = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % n
    while lo + slot in taken:
        slot = (slot + 1) % n
    return lo + slot


# --------------------------------------------------------------------------- traces


def candidates(trace: TraceLike) -> dict[str, float]:
    """The trace's candidate endpoints (``IP:port``) and their probabilities, in pool order."""
    return {str(c["endpoint"]): float(c["probability"]) for c in _trace_dict(trace)["candidates"]}


def filtered(trace: TraceLike) -> dict[str, str]:
    """The endpoints the trace lists as filtered out (``IP:port``) and the reasons."""
    return {str(f["endpoint"]): str(f["reason"]) for f in _trace_dict(trace)["filtered"]}


def assert_candidates(trace: TraceLike, expected: Mapping[str, float], *, tolerance: float = 1e-9) -> None:
    """The trace's candidates are exactly the endpoints of ``expected``, each with its
    probability (within ``tolerance``). Otherwise an AssertionError shows expected and got
    side by side, one line per endpoint: missing (with the reason, if it was filtered
    out), extra, wrong probability."""
    t = _trace_dict(trace)
    got = candidates(t)
    why = filtered(t)
    rows: list[tuple[str, str, str, str]] = []
    bad = False
    for ep in [*expected, *(e for e in got if e not in expected)]:
        want, have = expected.get(ep), got.get(ep)
        if have is None:
            note = "missing" + (f" (filtered out: {why[ep]})" if ep in why else "")
        elif want is None:
            note = "extra"
        elif abs(have - want) > tolerance:
            note = "wrong probability"
        else:
            note = ""
        bad = bad or bool(note)
        rows.append((ep, _num(want), _num(have), note))
    if bad:
        raise AssertionError(f"the trace's candidates are not the expected ones ({_summary(t)}):\n"
                             + "\n".join(_table([("endpoint", "expected", "got", ""), *rows])))


def assert_filtered(trace: TraceLike, expected: Mapping[str, str]) -> None:
    """The endpoints the trace lists as filtered out are exactly those of ``expected``,
    each with a reason that contains the expected text. Otherwise an AssertionError shows
    expected and got side by side."""
    t = _trace_dict(trace)
    got = filtered(t)
    rows: list[tuple[str, str, str, str]] = []
    bad = False
    for ep in [*expected, *(e for e in got if e not in expected)]:
        want, have = expected.get(ep), got.get(ep)
        if have is None:
            note = "not filtered out" + (" (a candidate)" if ep in candidates(t) else "")
        elif want is None:
            note = "extra"
        elif want not in have:
            note = "wrong reason"
        else:
            note = ""
        bad = bad or bool(note)
        rows.append((ep, "-" if want is None else repr(want), "-" if have is None else repr(have), note))
    if bad:
        raise AssertionError(f"the trace's filtered endpoints are not the expected ones ({_summary(t)}):\n"
                             + "\n".join(_table([("endpoint", "expected reason (part)", "got", ""), *rows])))


def assert_chosen_from(trace: TraceLike, endpoints: Iterable[str]) -> None:
    """The packet was sent to one of ``endpoints`` (``IP:port``)."""
    t = _trace_dict(trace)
    allowed = list(endpoints)
    chosen = t.get("endpoint")
    if chosen not in allowed:
        what = f"chose {chosen}" if chosen else "chose no endpoint"
        raise AssertionError(f"the trace {what} ({_summary(t, chosen=False)}), not one of "
                             f"{', '.join(allowed) or '(none)'}; candidates: {', '.join(candidates(t)) or '(none)'}")


def _trace_dict(trace: TraceLike) -> Mapping[str, Any]:
    if isinstance(trace, Trace):
        return trace.to_dict()
    if isinstance(trace, Mapping) and "candidates" in trace and "filtered" in trace:
        return trace
    raise TypeError(f"expected a kproxy_core.Trace or its to_dict(), not {trace!r:.80}")


def _summary(t: Mapping[str, Any], *, chosen: bool = True) -> str:
    out = f"verdict {t.get('verdict')}"
    if t.get("service"):
        out += f", service {t['service']}" + (f" via {t['frontend']}" if t.get("frontend") else "")
    if chosen and t.get("endpoint"):
        out += f", chosen {t['endpoint']}"
    return out


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.12g}"


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]

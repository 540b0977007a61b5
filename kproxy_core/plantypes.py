"""What the plan decides for one service port: :class:`PlanPort`, its endpoints
(:class:`EndpointInfo`) and the addresses it answers on (:class:`Frontend`).

Plain data with kube-proxy's port-level predicates and chain names; the plugin API
(:mod:`kproxy_core.servicetypes`, :mod:`kproxy_core.hookspecs`) hands these to plugins,
and :mod:`kproxy_core.plan` builds them. Nothing here imports the planner, the plugin
manager or a renderer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Literal

from .addresses import join_host_port
from .chains import endpoint_chain, service_chain_base
from .selectors import DEFAULT_SELECTOR, Selector

FrontendKind = Literal["ClusterIP", "NodePort", "ExternalIP", "LoadBalancer"]
FrontendPolicy = Literal["internal", "external"]
BUILTIN_FRONTEND_KINDS = ("ClusterIP", "NodePort", "ExternalIP", "LoadBalancer")
Pool = Literal["cluster", "local"]


# --------------------------------------------------------------------------- plan data


@dataclass(frozen=True, slots=True)
class NodeView:
    """The node a plan is for, as the planning hooks see it (read-only).

    ``name``; ``zone``: its ``topology.kubernetes.io/zone`` label (None without one);
    ``labels``: every label (a read-only mapping); ``addresses``: ``(type, IP)`` pairs of
    ``status.addresses`` with an IP value (``("InternalIP", "10.0.0.1")``), in order.
    The hooks get None instead of a NodeView for an off-cluster observer (``node=None``).
    """

    name: str
    zone: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    addresses: tuple[tuple[str, str], ...] = ()

    def ips(self, family: str | None = None) -> tuple[str, ...]:
        """The node's IP addresses, optionally of one family (``"IPv4"``/``"IPv6"``), in order."""
        out: list[str] = []
        for _, ip in self.addresses:
            if ip not in out and (family is None or (":" in ip) == (family == "IPv6")):
                out.append(ip)
        return tuple(out)


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """One endpoint of a service port, as kube-proxy's endpoints map holds it.

    ``ip``, ``port``: the address traffic is DNATed to. ``ready``, ``serving``,
    ``terminating``: the EndpointSlice conditions (a missing ``serving`` follows
    ``ready``). ``node``: the ``nodeName`` of the endpoint (None when the slice says
    none); ``zone``: its ``zone`` field. ``local``: ``node`` is the node the plan is for
    (what ``externalTrafficPolicy: Local`` and ``internalTrafficPolicy: Local`` keep).
    ``zone_hints``, ``node_hints``: the topology hints (``hints.forZones``,
    ``hints.forNodes``) that ``trafficDistribution`` and topology-aware routing use.
    ``target``: the ``targetRef`` as ``"Kind namespace/name"`` (``"Pod default/web-1"``),
    or None. ``weight``: the selector weight given by ``kproxy_endpoint_weights`` (1 when
    nobody weighs; 0 takes the endpoint out of every pool). ``endpoint``: ``"IP:port"``
    (``"[IPv6]:port"``).
    """

    ip: str
    port: int
    ready: bool
    serving: bool
    terminating: bool
    node: str | None
    zone: str | None
    local: bool
    zone_hints: tuple[str, ...] = ()
    node_hints: tuple[str, ...] = ()
    target: str | None = None
    weight: int = 1  # the selector's weight (kproxy_core.selectors); 0 = never chosen

    @property
    def endpoint(self) -> str:
        return join_host_port(self.ip, self.port)


@dataclass(frozen=True, slots=True)
class Frontend:
    """An address (or, for NodePort, a port on the node) a service port answers on.

    ``kind`` is one of :data:`BUILTIN_FRONTEND_KINDS` or a plugin's kind; a plugin kind
    follows ``policy``: ``internal`` is written and walked like the ClusterIP,
    ``external`` like an externalIP. ``comment`` is the rule comment's suffix."""

    kind: str
    ip: str | None  # None for NodePort (any accepted node address)
    port: int
    protocol: str
    policy: FrontendPolicy = "external"
    comment: str = ""

    @property
    def shape(self) -> FrontendKind:
        """The built-in kind whose rules this frontend gets."""
        if self.kind in BUILTIN_FRONTEND_KINDS:
            return self.kind  # type: ignore[return-value]
        return "ClusterIP" if self.policy == "internal" else "ExternalIP"


@dataclass(frozen=True)
class PlanPort:
    """One service port as one proxier sees it, after CategorizeEndpoints."""

    spn: str
    namespace: str
    service: str
    port_name: str
    protocol: str
    port: int
    node_port: int
    cluster_ip: str
    external_ips: tuple[str, ...]
    lb_ips: tuple[str, ...]
    source_ranges: tuple[str, ...]
    health_check_node_port: int
    internal_local: bool
    external_local: bool
    affinity_timeout: int  # 0 = no ClientIP affinity
    endpoints: tuple[EndpointInfo, ...]  # every endpoint, sorted by "IP:port" string
    cluster: tuple[EndpointInfo, ...]
    local: tuple[EndpointInfo, ...]
    all_reachable: tuple[EndpointInfo, ...]
    has_endpoints: bool
    topology_mode: str
    cluster_fallback: bool  # cluster list fell back to serving+terminating endpoints
    local_fallback: bool
    selector: Selector = DEFAULT_SELECTOR  # how a new connection picks from a pool
    service_type: str = "ClusterIP"
    extra_frontends: tuple[Frontend, ...] = ()  # plugin frontends other than LoadBalancer IPs
    selector_by: str = ""  # the plugin whose kproxy_endpoint_selector answer is the selector ("": none)
    weights_by: str = ""  # the plugin whose kproxy_endpoint_weights answer gave the weights ("": none)

    @property
    def internal_frontends(self) -> tuple[Frontend, ...]:
        return tuple(f for f in self.extra_frontends if f.policy == "internal")

    @property
    def external_frontends(self) -> tuple[Frontend, ...]:
        return tuple(f for f in self.extra_frontends if f.policy == "external")

    # ---- port-level predicates (serviceport.go)
    @property
    def proto(self) -> str:
        return self.protocol.lower()

    @property
    def externally_accessible(self) -> bool:
        return (
            self.node_port != 0 or bool(self.lb_ips) or bool(self.external_ips) or bool(self.external_frontends)
        )

    @property
    def uses_cluster_endpoints(self) -> bool:
        return not self.internal_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_local or (self.external_local and self.externally_accessible)

    # ---- syncProxyRules decision variables (KUBE-PROXY.md §5)
    @property
    def uses_cluster_chain(self) -> bool:
        return bool(self.cluster) and self.uses_cluster_endpoints

    @property
    def uses_local_chain(self) -> bool:
        return bool(self.local) and self.uses_local_endpoints

    @property
    def has_internal_endpoints(self) -> bool:
        return self.has_endpoints and not (self.internal_local and not self.local)

    @property
    def has_external_endpoints(self) -> bool:
        return self.has_endpoints and not (self.external_local and not self.local)

    @property
    def uses_external_chain(self) -> bool:
        return self.has_endpoints and self.externally_accessible

    @property
    def uses_fw_chain(self) -> bool:
        return self.has_endpoints and bool(self.lb_ips) and bool(self.source_ranges)

    # ---- chain names (KUBE-PROXY.md §1)
    @cached_property
    def chain_base(self) -> str:
        return service_chain_base(self.spn, self.protocol)

    @property
    def svc_chain(self) -> str:
        return "KUBE-SVC-" + self.chain_base

    @property
    def svl_chain(self) -> str:
        return "KUBE-SVL-" + self.chain_base

    @property
    def ext_chain(self) -> str:
        return "KUBE-EXT-" + self.chain_base

    @property
    def fw_chain(self) -> str:
        return "KUBE-FW-" + self.chain_base

    def sep_chain(self, ep: EndpointInfo) -> str:
        return endpoint_chain(self.spn, self.protocol, ep.endpoint)

    def pool(self, which: Pool) -> tuple[EndpointInfo, ...]:
        return self.cluster if which == "cluster" else self.local

    def frontends(self) -> list[Frontend]:
        out = [Frontend("ClusterIP", self.cluster_ip, self.port, self.protocol, "internal", "cluster IP")]
        out += self.internal_frontends
        ext, lb = "external IP", "loadbalancer IP"
        out += [Frontend("ExternalIP", ip, self.port, self.protocol, "external", ext) for ip in self.external_ips]
        out += self.external_frontends
        out += [Frontend("LoadBalancer", ip, self.port, self.protocol, "external", lb) for ip in self.lb_ips]
        if self.node_port:
            out.append(Frontend("NodePort", None, self.node_port, self.protocol))
        return out

    def filter_reasons(self) -> list[tuple[EndpointInfo, str]]:
        """Endpoints that are in no pool a packet can use, each with the reason."""
        used = {e.endpoint for e in self.cluster} | {e.endpoint for e in self.local}
        out = []
        for ep in self.endpoints:
            if ep.endpoint in used:
                continue
            if ep.weight == 0:
                why = f"weight 0 (from plugin {self.weights_by})" if self.weights_by else "weight 0"
            elif not ep.ready and not (ep.serving and ep.terminating):
                why = "not ready" if not ep.terminating else "terminating and not serving"
            elif ep.terminating:
                why = "terminating (ready endpoints exist, so kube-proxy does not fall back to it)"
            elif self.topology_mode == "PreferSameNode":
                why = "topology: hinted for other nodes (PreferSameNode)"
            elif self.topology_mode == "PreferSameZone":
                why = "topology: hinted for other zones (PreferSameZone)"
            elif not ep.local and not self.uses_cluster_endpoints:
                why = "not local (internalTrafficPolicy=Local)"
            else:
                why = "not used"
            out.append((ep, why))
        return out

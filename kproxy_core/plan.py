"""kube-proxy's logic, once: from a Cluster to a per-node, per-family ProxyPlan.

Everything kube-proxy decides before a packet arrives is computed here: which
service ports exist for this family, their frontends, the endpoint lists after
port matching, deduplication and string ordering, ``CategorizeEndpoints``, the
policy flags of ``syncProxyRules`` and the chain names. :func:`walk` then follows
one packet class through the chains kube-proxy writes, and is shared by the engine
tables, the trace and (later) the renderers, so they agree by construction.

References are to kubernetes/kubernetes pkg/proxy (see KUBE-PROXY.md §3-§8).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from .addresses import Family, IPNetwork, parse_cidr
from .chains import (
    KUBE_MARK_MASQ,
    KUBE_NODEPORTS,
    KUBE_SERVICES,
    NFT_FIREWALL_CHECK,
    NFT_MARK_MASQ,
    NFT_NODEPORT_ENDPOINTS_CHECK,
    NFT_REJECT_CHAIN,
    NFT_SERVICE_ENDPOINTS_CHECK,
    NFT_SERVICES,
    chain_name_base,
    nft_filter_chain,
    nft_nat_chain,
    service_port_name,
)
from .errors import ManifestError, NodeNotFoundError, PluginError
from .model import Cluster, Node, Service, ServicePort
from .plantypes import BUILTIN_FRONTEND_KINDS, FrontendKind, Pool
from .plantypes import EndpointInfo as EndpointInfo  # the plan's data, importable from here as before
from .plantypes import Frontend as Frontend
from .plantypes import NodeView as NodeView
from .plantypes import PlanPort as PlanPort
from .selectors import DEFAULT_SELECTOR, MAX_WEIGHT, Selector, uniform_weights
from .servicetypes import FrontendSpec

if TYPE_CHECKING:
    from .plugins import KproxyPluginManager

Verdict = Literal["DNAT", "REJECT", "DROP", "PASS"]
Mode = Literal["iptables", "nftables"]
MODES: tuple[Mode, ...] = ("iptables", "nftables")

FILTER_PREFIX = "filter:"

ZONE_LABEL = "topology.kubernetes.io/zone"


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class LocalDetector:
    """kube-proxy's local-traffic detector (pkg/proxy/util/localdetector.go).

    ``mode`` is ``ClusterCIDR`` or ``NodeCIDR`` (match ``-s cidr``), ``BridgeInterface``
    (``-i br``), ``InterfaceNamePrefix`` (``-i pfx+``), or ``None`` (no detector:
    ``IsImplemented() == false``). An interface detector sees the interface a packet came
    in on, which an address lookup cannot: for lookups it stands for "the source is in this
    node's podCIDR" (local pods sit behind that bridge or those interfaces), kept in ``cidr``.
    """

    mode: str = "None"
    cidr: str | None = None
    interface: str | None = None  # the bridge name, or the interface name prefix

    @property
    def implemented(self) -> bool:
        return self.cidr is not None or self.interface is not None

    def describe(self) -> str:
        if self.interface is not None:
            kind = "bridge" if self.mode == "BridgeInterface" else "interface prefix"
            return f"pods' {kind} {self.interface}, taken as the node's podCIDR {self.cidr} ({self.mode} detector)"
        return f"local pod range {self.cidr} ({self.mode} detector)"

    def iptables_tokens(self) -> tuple[str, str] | None:
        """``IfLocal()`` / ``IfNotLocal()``: the match words of the rules."""
        if self.mode == "BridgeInterface":
            return f"-i {self.interface}", f"! -i {self.interface}"
        if self.mode == "InterfaceNamePrefix":
            return f"-i {self.interface}+", f"! -i {self.interface}+"
        if self.cidr is None:
            return None
        return f"-s {self.cidr}", f"! -s {self.cidr}"

    def nftables_tokens(self) -> tuple[str, str] | None:
        """``IfLocalNFT()`` / ``IfNotLocalNFT()``."""
        if self.mode == "BridgeInterface":
            return f"iifname {self.interface}", f"iifname != {self.interface}"
        if self.mode == "InterfaceNamePrefix":
            return f"iifname {self.interface}*", f"iifname != {self.interface}*"
        if self.cidr is None:
            return None
        fam = "ip6" if ":" in self.cidr else "ip"
        return f"{fam} saddr {self.cidr}", f"{fam} saddr != {self.cidr}"

    @cached_property
    def network(self) -> IPNetwork | None:
        return parse_cidr(self.cidr)[0] if self.cidr else None

    def is_local(self, ip: str) -> bool:
        net = self.network
        return net is not None and ipaddress.ip_address(ip) in net


@dataclass(frozen=True)
class ProxyConfig:
    """One proxier's settings: a node, an IP family and kube-proxy's flags."""

    family: Family
    node: str | None = None
    node_ips: tuple[str, ...] = ()
    node_zone: str | None = None
    node_view: NodeView | None = field(default=None, compare=False, repr=False)  # what the planning hooks see
    detector: LocalDetector = field(default_factory=LocalDetector)
    masquerade_all: bool = False
    nodeport_cidrs: tuple[str, ...] = ()  # this family's --nodeport-addresses; () = match all
    localhost_nodeports: bool = True
    prefer_same_node_hints: bool = True  # the PreferSameTrafficDistribution gate
    mode: Mode = "iptables"  # the proxier whose rules decide: "iptables" or "nftables"
    plugins: KproxyPluginManager | None = field(default=None, compare=False, repr=False)  # None: the default
    # addresses the node owns besides its Node object's (a load-balancer VIP kube-vip puts on
    # the interface): local to the kernel (addrtype LOCAL), never kube-proxy's nodeIP
    extra_local_ips: tuple[str, ...] = ()

    @property
    def local_ips(self) -> tuple[str, ...]:
        """Every address of the node of this family: its Node addresses, then the extra ones."""
        return self.node_ips + tuple(ip for ip in self.extra_local_ips if ip not in self.node_ips)

    @property
    def nftables(self) -> bool:
        return self.mode == "nftables"

    @property
    def nodeport_match_all(self) -> bool:
        return not self.nodeport_cidrs or any(
            c.endswith("/0") for c in self.nodeport_cidrs
        )

    @property
    def localhost_nodeports_active(self) -> bool:
        """IPv4 only, never in nftables mode (no route_localnet; loopback is skipped in
        nodeport-ips), and forced off when --nodeport-addresses has no IPv4 loopback."""
        if self.family != "IPv4" or not self.localhost_nodeports or self.nftables:
            return False
        if self.nodeport_match_all:
            return True
        return any(
            ipaddress.ip_address("127.0.0.1") in ipaddress.ip_network(c)
            for c in self.nodeport_cidrs
        )

    @property
    def node_ip(self) -> str | None:
        """kube-proxy's ``nodeIP`` for this family (only the KUBE-FW allowFromNode check
        reads it): the node's first address of the family."""
        return self.node_ips[0] if self.node_ips else None

    @property
    def plugin_manager(self) -> KproxyPluginManager:
        if self.plugins is not None:
            return self.plugins
        from .plugins import get_plugin_manager

        return get_plugin_manager()

    @property
    def loopback(self) -> str:
        return "127.0.0.1" if self.family == "IPv4" else "::1"

    def is_local_address(self, ip: str) -> bool:
        """``-m addrtype --src-type/--dst-type LOCAL``: the node's addresses and loopback."""
        if ip in self.node_ips or ip in self.extra_local_ips:
            return True
        addr = ipaddress.ip_address(ip)
        return addr.is_loopback if self.family == "IPv4" else ip == "::1"

    @cached_property
    def nodeport_ips(self) -> tuple[str, ...]:
        """Destinations the NodePort tail rule accepts when not matching all LOCAL addresses.

        With --nodeport-addresses, kube-proxy writes one ``-d NODEIP`` rule per node
        address inside the CIDRs; loopback counts only for IPv4 with localhost NodePorts.
        """
        nets = [ipaddress.ip_network(c) for c in self.nodeport_cidrs]
        ips = [ip for ip in self.local_ips if any(ipaddress.ip_address(ip) in n for n in nets)]
        if self.nftables:  # nodeport-ips skips loopback addresses
            ips = [ip for ip in ips if not ipaddress.ip_address(ip).is_loopback]
        if self.localhost_nodeports_active and any(
            ipaddress.ip_address("127.0.0.1") in n for n in nets
        ):
            ips.append("127.0.0.1")
        return tuple(ips)

    def nodeport_accepts(self, dst: str) -> bool:
        """Does the KUBE-SERVICES tail rule send a packet to ``dst`` into KUBE-NODEPORTS?"""
        if self.nodeport_match_all:
            if not self.is_local_address(dst):
                return False
            if self.family == "IPv6":
                return dst != "::1"
            return self.localhost_nodeports_active or not ipaddress.ip_address(dst).is_loopback
        return dst in self.nodeport_ips


def fw_active(pp: PlanPort, cfg: ProxyConfig) -> bool:
    """Does ``pp`` have a firewall for loadBalancerSourceRanges on this proxier?

    iptables: KUBE-FW-<hash> (:attr:`PlanPort.uses_fw_chain`: LB VIPs, source ranges and
    endpoints). nftables: ``firewall-<base>`` needs LB VIPs and valid source ranges only
    (NFTABLES.md §2.2, ``usesFWChain`` is not conditioned on endpoints)."""
    if not cfg.nftables:
        return pp.uses_fw_chain
    return bool(pp.lb_ips) and bool(valid_source_ranges(pp))


def valid_source_ranges(pp: PlanPort) -> list[IPNetwork]:
    """The source ranges render/nftables.py writes: parsed, invalid ones skipped."""
    out = []
    for text in pp.source_ranges:
        net, _ = parse_cidr(text.strip())
        if net is not None:
            out.append(net)
    return out


def fw_sources(pp: PlanPort, cfg: ProxyConfig) -> tuple[str, ...]:
    """The sources the firewall lets through, as canonical CIDRs, in rule order
    (KUBE-PROXY.md §6.3 step 9; NFTABLES.md §2.4 ``firewall-<base>``): the service's
    loadBalancerSourceRanges of the family, then, when one of them contains the node IP
    (``cfg.node_ip``), each LB VIP as a /32 (/128): a node reaching its own VIP is SNATed
    to it. ``()`` when the port has no firewall (:func:`fw_active`; everything is
    allowed then; see :func:`fw_allows`)."""
    if not fw_active(pp, cfg):
        return ()
    ranges = [str(n) for n in valid_source_ranges(pp)] if cfg.nftables else list(pp.source_ranges)
    out = list(ranges)
    node_ip = cfg.node_ip
    if node_ip is not None:
        node = ipaddress.ip_address(node_ip)
        if any(
            node.version == net.version and node in net
            for net in (ipaddress.ip_network(c, strict=False) for c in ranges)
        ):
            bits = 128 if cfg.family == "IPv6" else 32
            out += [f"{ip}/{bits}" for ip in pp.lb_ips]
    return tuple(out)


def fw_allows(pp: PlanPort, cfg: ProxyConfig, src: str) -> bool:
    """Does ``pp``'s firewall let a packet from ``src`` through?

    Always True when the port has no firewall (:func:`fw_active`); otherwise True iff
    ``src`` is inside one of :func:`fw_sources`. iptables: blocked packets fall through
    un-DNAT'd and filter KUBE-PROXY-FIREWALL drops them; nftables: ``firewall-<base>``
    drops them before DNAT (priority -110).
    """
    if not fw_active(pp, cfg):
        return True
    addr = ipaddress.ip_address(src)
    return any(
        addr.version == net.version and addr in net
        for net in (ipaddress.ip_network(c, strict=False) for c in fw_sources(pp, cfg))
    )


@dataclass(frozen=True)
class ProxyPlan:
    """Everything one proxier (node, family) has decided, plus the config it used."""

    config: ProxyConfig
    ports: tuple[PlanPort, ...]
    warnings: tuple[str, ...] = ()

    @property
    def family(self) -> Family:
        return self.config.family


# --------------------------------------------------------------------------- building


def _endpoints_for(
    cluster: Cluster, svc: Service, sp: ServicePort, family: Family, node: str | None
) -> list[EndpointInfo]:
    """Join slices to a service port by (name, protocol); dedupe by "IP:port"; sort as strings."""
    found: dict[str, EndpointInfo] = {}
    for sl in cluster.slices_for(svc.namespace, svc.name):
        if sl.address_type != family:
            continue
        for p in sl.ports:
            if p.name is None or not p.port or p.name != sp.name or p.protocol != sp.protocol:
                continue
            for ep in sl.endpoints:
                if not ep.addresses:
                    continue
                info = EndpointInfo(
                    ip=ep.addresses[0],
                    port=p.port,
                    ready=ep.ready,
                    serving=ep.serving,
                    terminating=ep.terminating,
                    node=ep.node_name,
                    zone=ep.zone,
                    local=node is not None and ep.node_name == node,
                    zone_hints=ep.zone_hints,
                    node_hints=ep.node_hints,
                    target=ep.target,
                )
                key = info.endpoint
                # as addEndpoints (pkg/proxy/endpointslicecache.go): a later copy of an IP:port
                # replaces the earlier one unless it is terminating (a pod on a reused IP beats
                # the terminating one); ready, serving and locality play no part. Slices come in
                # name order here, in Go map order upstream (tests/test_duplicate_endpoints.py)
                if key not in found or not info.terminating:
                    found[key] = info
    return [found[k] for k in sorted(found)]


def _topology_mode(eps: Sequence[EndpointInfo], cfg: ProxyConfig) -> str:
    """``topologyModeFromHints``: looks at ready endpoints only."""
    ready = [e for e in eps if e.ready]
    if not ready:
        return ""
    if (
        cfg.prefer_same_node_hints
        and cfg.node is not None
        and all(e.node_hints for e in ready)
        and any(cfg.node in e.node_hints for e in ready)
    ):
        return "PreferSameNode"
    if (
        cfg.node_zone
        and all(e.zone_hints for e in ready)
        and any(cfg.node_zone in e.zone_hints for e in ready)
    ):
        return "PreferSameZone"
    return ""


def _topology_ok(ep: EndpointInfo, mode: str, cfg: ProxyConfig) -> bool:
    if mode == "PreferSameNode":
        return cfg.node in ep.node_hints
    if mode == "PreferSameZone":
        return cfg.node_zone in ep.zone_hints
    return True


def plan_port(
    cluster: Cluster, svc: Service, sp: ServicePort, cfg: ProxyConfig
) -> PlanPort | None:
    """One service port for one proxier, or None when kube-proxy skips it for this family."""
    cip = svc.cluster_ip_for(cfg.family)
    pm = cfg.plugin_manager
    registry = pm.registry
    handler = registry.get(svc.type)
    if handler is None:  # loaded with other plugins than the engine's
        other = getattr(cluster, "plugins", None)
        if other is not None and other is not pm and svc.type in other.registry:
            raise ManifestError(
                f"Service {svc.ref}: spec.type: {svc.type!r} is not a Service type of the engine's plugin manager "
                f"({', '.join(registry.names())}), but the Cluster was loaded with another manager that has it "
                f"(from plugin {other.registry.owner(svc.type)}): give the Engine that manager, or no plugins= "
                "at all (an Engine defaults to its Cluster's manager)"
            )
        raise ManifestError(
            f"Service {svc.ref}: spec.type: {svc.type!r} is not a known Service type "
            f"({', '.join(registry.names())}; plugins add others)"
        )
    if svc.headless or cip is None or not handler.proxied:
        return None
    fam6 = cfg.family == "IPv6"
    ext_ips = tuple(ip for ip in svc.external_ips if (":" in ip) == fam6)
    specs: list[Any] = registry.call(svc.type, "frontends", svc, sp, cfg.family, cluster)
    lb_ips, ranges, extra = _plugin_frontends(svc, sp, cfg, specs)  # they feed ExternallyAccessible
    # kube-proxy's ExternallyAccessible, with a plugin's external frontends counting like externalIPs
    accessible_type = handler.externally_accessible or bool(svc.external_ips) or any(
        f.policy == "external" for f in extra
    )
    external_local = accessible_type and svc.external_traffic_policy == "Local"
    internal_local = svc.internal_traffic_policy == "Local"
    hc = int(registry.call(svc.type, "health_check_node_port", svc)) if external_local else 0
    every, selector, selector_by, weights_by = endpoint_selection(
        svc, sp, _endpoints_for(cluster, svc, sp, cfg.family, cfg.node), cfg.family, pm, cfg.node_view, cluster
    )
    eps = [e for e in every if e.weight > 0]

    accessible = (
        sp.node_port != 0 or bool(lb_ips) or bool(ext_ips) or any(f.policy == "external" for f in extra)
    )
    uses_cluster = not internal_local or accessible
    uses_local = internal_local or (external_local and accessible)
    cluster_eps: list[EndpointInfo] = []
    local_eps: list[EndpointInfo] = []
    has_any = False
    mode = ""
    cluster_fb = local_fb = False
    if eps:
        if uses_cluster:
            mode = _topology_mode(eps, cfg)
            cluster_eps = [e for e in eps if e.ready and _topology_ok(e, mode, cfg)]
            if not cluster_eps:
                cluster_eps = [e for e in eps if e.serving and e.terminating]
                cluster_fb = bool(cluster_eps)
            has_any = bool(cluster_eps)
        if uses_local:
            has_any = has_any or any(e.ready or (e.serving and e.terminating) for e in eps)
            if any(e.local and e.ready for e in eps):
                local_eps = [e for e in eps if e.local and e.ready]
            elif any(e.local and e.serving and e.terminating for e in eps):
                local_eps = [e for e in eps if e.local and e.serving and e.terminating]
                local_fb = True
    if not uses_local:
        reachable = cluster_eps
    elif not uses_cluster:
        reachable = local_eps
    elif mode == "" and not local_fb:
        reachable = cluster_eps
    else:
        keys = {e.endpoint for e in cluster_eps} | {e.endpoint for e in local_eps}
        reachable = [e for e in eps if e.endpoint in keys]
    return PlanPort(
        spn=service_port_name(svc.namespace, svc.name, sp.name),
        namespace=svc.namespace,
        service=svc.name,
        port_name=sp.name,
        protocol=sp.protocol,
        port=sp.port,
        node_port=sp.node_port,
        cluster_ip=cip,
        external_ips=ext_ips,
        lb_ips=lb_ips,
        source_ranges=ranges,
        health_check_node_port=hc,
        internal_local=internal_local,
        external_local=external_local,
        affinity_timeout=svc.affinity_timeout if svc.session_affinity == "ClientIP" else 0,
        endpoints=tuple(every),
        cluster=tuple(cluster_eps),
        local=tuple(local_eps),
        all_reachable=tuple(reachable),
        has_endpoints=has_any,
        topology_mode=mode,
        cluster_fallback=cluster_fb,
        local_fallback=local_fb,
        selector=selector,
        service_type=svc.type,
        extra_frontends=tuple(extra),
        selector_by=selector_by,
        weights_by=weights_by,
    )


def _plugin_frontends(
    svc: Service, sp: ServicePort, cfg: ProxyConfig, specs: Sequence[Any]  # what a handler gave: checked here
) -> tuple[tuple[str, ...], tuple[str, ...], list[Frontend]]:
    """A handler's frontends for one port and family: load-balancer IPs (with their
    source ranges) and other frontends. A frontend of the other family is skipped;
    a malformed one is an error naming the Service, the type and the address."""
    lb_ips: list[str] = []
    ranges: tuple[str, ...] | None = None
    extra: list[Frontend] = []
    fam6 = cfg.family == "IPv6"
    who = f"Service {svc.ref}: type {svc.type}"
    for spec in specs:
        if not isinstance(spec, FrontendSpec):
            owner = cfg.plugin_manager.registry.owner(svc.type)
            raise PluginError(
                f"plugin {owner}: Service type {svc.type}: frontends() returned {_short(spec)} for Service "
                f"{svc.ref} port {sp.name or sp.port} ({cfg.family}); expected kproxy_core.FrontendSpec objects"
            )
        try:
            addr = ipaddress.ip_address(spec.ip)
        except ValueError:
            raise ManifestError(f"{who}: frontend {spec.ip!r} is not an IP address") from None
        if (addr.version == 6) != fam6:
            continue
        protocol = spec.protocol or sp.protocol
        port = spec.port if spec.port is not None else sp.port
        if protocol not in ("TCP", "UDP", "SCTP") or not 0 < port < 65536:
            raise ManifestError(f"{who}: frontend {spec.ip}: bad port {port}/{protocol}")
        if spec.policy not in ("internal", "external"):
            raise ManifestError(f"{who}: frontend {spec.ip}: policy {spec.policy!r} is not internal or external")
        if spec.kind == "LoadBalancer":
            if port != sp.port or protocol != sp.protocol or spec.policy != "external":
                raise ManifestError(
                    f"{who}: frontend {spec.ip}: a LoadBalancer frontend uses the service port and "
                    "the external policy"
                )
            if ranges is not None and tuple(spec.source_ranges) != ranges:
                raise ManifestError(f"{who}: LoadBalancer frontends of one port must share their source ranges")
            ranges = tuple(spec.source_ranges)
            if str(addr) not in lb_ips:
                lb_ips.append(str(addr))
            continue
        if spec.kind in BUILTIN_FRONTEND_KINDS:
            raise ManifestError(f"{who}: frontend {spec.ip}: kind {spec.kind!r} is kube-proxy's own")
        if spec.source_ranges:
            raise ManifestError(f"{who}: frontend {spec.ip}: source ranges apply to LoadBalancer frontends only")
        if protocol != sp.protocol:
            raise ManifestError(f"{who}: frontend {spec.ip}: protocol must be the service port's ({sp.protocol})")
        extra.append(Frontend(spec.kind, str(addr), port, protocol, spec.policy, spec.comment))
    return tuple(lb_ips), ranges or (), extra


def endpoint_selection(
    svc: Service,
    sp: ServicePort,
    eps: list[EndpointInfo],
    family: Family = "IPv4",
    plugins: KproxyPluginManager | None = None,
    node: NodeView | None = None,
    cluster: Cluster | None = None,
) -> tuple[list[EndpointInfo], Selector, str, str]:
    """The selector of one service port and its endpoints with their weights, from the
    ``kproxy_endpoint_selector`` and ``kproxy_endpoint_weights`` hooks (the bundled
    annotations plugin answers last), and the plugins that supplied each (``""``: none).

    Every implementation is asked, in the manager's asking order; the first answer wins,
    and when another plugin answered too, a :class:`PluginWarning` says so once. Weights
    with the ``random`` selector make it ``weighted``. An answer of the wrong type is a
    PluginError naming the plugin, the hook, the Service port and what was expected.
    """
    if plugins is None:
        from .plugins import get_plugin_manager

        plugins = get_plugin_manager()
    if cluster is None:
        cluster = Cluster()
    where = f"Service {svc.ref} port {sp.name or sp.port} ({family})"
    args: dict[str, Any] = dict(service=svc, port=sp, family=family, node=node, cluster=cluster)
    selectors = plugins.answers("kproxy_endpoint_selector", context=where, **args)
    weighers = plugins.answers("kproxy_endpoint_weights", context=where, endpoints=tuple(eps), **args)
    selector_by = weights_by = ""
    selector: Selector | None = None
    if selectors:
        selector_by, selector = selectors[0]
        if not isinstance(selector, Selector):
            raise PluginError(
                f"plugin {selector_by}: hook kproxy_endpoint_selector returned {_short(selector)} for {where}; "
                "expected a kproxy_core.Selector (e.g. Selector(\"round-robin\")) or None"
            )
        _warn_conflict(plugins, "kproxy_endpoint_selector", selectors, where)
    if weighers:
        weights_by, got = weighers[0]
        weights = list(got) if isinstance(got, Sequence) and not isinstance(got, str | bytes) else None
        if weights is None or len(weights) != len(eps) or not all(
            isinstance(w, int) and not isinstance(w, bool) and 0 <= w <= MAX_WEIGHT for w in weights
        ):
            raise PluginError(
                f"plugin {weights_by}: hook kproxy_endpoint_weights returned {_short(got)} for {where}; "
                f"expected a list of {len(eps)} int{'s' if len(eps) != 1 else ''} from 0 to {MAX_WEIGHT}, "
                "one per endpoint in the order given, or None"
            )
        _warn_conflict(plugins, "kproxy_endpoint_weights", weighers, where)
        eps = [replace(e, weight=w) for e, w in zip(eps, weights, strict=True)]
    selector = selector or DEFAULT_SELECTOR
    if selector.kind == "random" and not uniform_weights([e.weight for e in eps if e.weight > 0]):
        selector = replace(selector, kind="weighted")
    return eps, selector, selector_by, weights_by


def _short(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}... ({type(value).__name__})" if len(text) > 60 else f"{text} ({type(value).__name__})"


def _warn_conflict(plugins: KproxyPluginManager, hook: str, answers: list[tuple[str, Any]], where: str) -> None:
    """Say once per hook and set of plugins that more than one answered."""
    names = tuple(name for name, _ in answers)
    if len(names) < 2:
        return
    others = ", ".join(names[1:])
    plugins.warn_once(
        hook, names,
        f"plugins {', '.join(names)} all answer {hook} for {where} (and maybe more ports): "
        f"{names[0]} wins, being asked first; {others} {'is' if len(names) == 2 else 'are'} ignored. "
        f"Set kproxy_priority on the plugin that should win, or disable one (KPROXY_DISABLE_PLUGINS)",
    )


def node_view(node: Node) -> NodeView:
    """What the planning hooks see of a Node."""
    return NodeView(node.name, node.zone, MappingProxyType(dict(node.labels)), tuple(node.addresses))


def make_config(
    cluster: Cluster,
    family: Family,
    node: str | None,
    *,
    cluster_cidr: str | Sequence[str] | None = None,
    detect_local_mode: str | None = None,
    masquerade_all: bool = False,
    nodeport_addresses: str | Sequence[str] | None = None,
    localhost_nodeports: bool = True,
    mode: str = "iptables",
    pod_bridge_interface: str | None = None,
    pod_interface_name_prefix: str | None = None,
    plugins: KproxyPluginManager | None = None,
    local_addresses: str | Sequence[str] | None = None,
) -> ProxyConfig:
    """Build one family's ProxyConfig; bad flag values raise ManifestError (one line each).

    ``mode="nftables"``: without ``nodeport_addresses``, NodePorts are served on the node's
    primary IP of the family only (``--nodeport-addresses primary``, the nftables default,
    resolved as cmd/kube-proxy/app/server.go does: ``<nodeIP>/32`` or ``/128``; a loopback
    node IP, or none, leaves match-all).
    """
    if mode not in MODES:
        raise ManifestError(f"--proxy-mode: {mode!r} is not one of iptables, nftables")
    node_obj: Node | None = None
    if node is not None:
        node_obj = cluster.nodes.get(node)
        if node_obj is None:
            known = ", ".join(cluster.nodes) or "none"
            raise NodeNotFoundError(f"node {node!r} is not in the cluster (nodes: {known})")
    fam6 = family == "IPv6"
    cidrs = _cidr_list("--cluster-cidr", cluster_cidr)
    det_mode = detect_local_mode or ("ClusterCIDR" if cidrs else "None")
    detector = LocalDetector()
    if det_mode == "ClusterCIDR":
        own = [c for c in cidrs if (":" in c) == fam6]
        if own:
            detector = LocalDetector("ClusterCIDR", own[0])
    elif det_mode == "NodeCIDR":
        pod_cidr = node_obj.pod_cidr_for(family) if node_obj else None
        if pod_cidr:
            detector = LocalDetector("NodeCIDR", pod_cidr)
    elif det_mode in ("BridgeInterface", "InterfaceNamePrefix"):
        flag, iface = (
            ("--pod-bridge-interface", pod_bridge_interface)
            if det_mode == "BridgeInterface"
            else ("--pod-interface-name-prefix", pod_interface_name_prefix)
        )
        if not iface:
            raise ManifestError(f"--detect-local-mode {det_mode} needs {flag}")
        if not all(c.isalnum() or c in "-_.@" for c in iface) or len(iface) > 15:
            raise ManifestError(f"{flag}: {iface!r} is not an interface name")
        pod_cidr = node_obj.pod_cidr_for(family) if node_obj else None
        detector = LocalDetector(det_mode, pod_cidr, iface)
    elif det_mode != "None":
        raise ManifestError(
            f"--detect-local-mode: {det_mode!r} is not one of ClusterCIDR, NodeCIDR, "
            "BridgeInterface, InterfaceNamePrefix, None"
        )
    np_cidrs = tuple(
        c for c in _cidr_list("--nodeport-addresses", nodeport_addresses) if (":" in c) == fam6
    )
    node_ips = node_obj.ips(family) if node_obj else ()
    extra: list[str] = []
    items = local_addresses.split(",") if isinstance(local_addresses, str) else list(local_addresses or ())
    for item in (i.strip() for i in items):
        try:
            addr = ipaddress.ip_address(item)
        except ValueError:
            raise ManifestError(f"--local-address: {item!r} is not an IP address") from None
        if (addr.version == 6) == fam6 and str(addr) not in extra:
            extra.append(str(addr))
    if mode == "nftables" and nodeport_addresses is None and node_ips:
        primary = ipaddress.ip_address(node_ips[0])
        if not primary.is_loopback:
            np_cidrs = (f"{primary}/{primary.max_prefixlen}",)
    return ProxyConfig(
        family=family,
        node=node,
        node_ips=node_ips,
        node_zone=node_obj.zone if node_obj else None,
        node_view=node_view(node_obj) if node_obj else None,
        detector=detector,
        masquerade_all=masquerade_all,
        nodeport_cidrs=np_cidrs,
        localhost_nodeports=localhost_nodeports,
        mode=mode,
        plugins=plugins,
        extra_local_ips=tuple(extra),
    )


def _cidr_list(flag: str, value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    items: Iterable[str] = value.split(",") if isinstance(value, str) else value
    out = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        net, _ = parse_cidr(item)
        if net is None:
            raise ManifestError(f"{flag}: {item!r} is not a valid CIDR")
        out.append(str(net))
    return out


def build_plan(cluster: Cluster, config: ProxyConfig) -> ProxyPlan:
    ports: list[PlanPort] = []
    for key in sorted(cluster.services):
        svc = cluster.services[key]
        for sp in svc.ports:
            pp = plan_port(cluster, svc, sp, config)
            if pp is not None:
                ports.append(pp)
    return ProxyPlan(config=config, ports=tuple(ports))


# --------------------------------------------------------------------------- packet walk


@dataclass
class Walk:
    """Where one packet class goes through kube-proxy's chains (before the endpoint pick)."""

    verdict: Verdict
    pool: Pool | None = None
    masquerade: bool = False
    chains: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    def enter_pool(self, chain: str, pool: Pool, why: str) -> Walk:
        """DNAT into ``pool`` through ``chain``."""
        self.chains.append(chain)
        self.pool = pool
        self.verdict = "DNAT"
        self.steps.append(why)
        return self


def _enter_internal(w: Walk, pp: PlanPort, cfg: ProxyConfig, from_pod: bool, chain: str, mark_chain: str) -> Walk:
    """ClusterIP traffic with internal endpoints: the internal masquerade rule, then the pool
    (the same in both modes; only the chain names differ)."""
    det = cfg.detector
    w.chains.append(chain)
    if cfg.masquerade_all:
        w.masquerade = True
        w.chains.append(mark_chain)
        w.steps.append("masquerade: --masquerade-all marks all cluster IP traffic")
    elif det.implemented and not from_pod:
        w.masquerade = True
        w.chains.append(mark_chain)
        w.steps.append(f"masquerade: the source is not a local pod ({det.describe()}), so it is marked for SNAT")
    elif det.implemented:
        w.steps.append(f"no masquerade: the source is a local pod ({det.describe()})")
    else:
        w.steps.append("no masquerade: no local detector, cluster IP traffic is assumed to come from pods")
    w.pool = "local" if pp.internal_local else "cluster"
    w.verdict = "DNAT"
    w.steps.append(
        f"internalTrafficPolicy=Local: only this node's endpoints ({chain})"
        if pp.internal_local
        else f"internalTrafficPolicy=Cluster: any ready endpoint ({chain})"
    )
    return w


def plugin_frontend(pp: PlanPort, kind: str) -> Frontend | None:
    """The first plugin frontend of ``kind`` on ``pp`` (None for kube-proxy's kinds)."""
    if kind in BUILTIN_FRONTEND_KINDS:
        return None
    for f in pp.extra_frontends:
        if f.kind == kind:
            return f
    raise KeyError(f"{pp.spn} has no {kind} frontend")


def _a(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def _describe_plugin_frontend(fe: Frontend, spn: str) -> str:
    like = "the cluster IP (internal policy)" if fe.policy == "internal" else "an external IP (external policy)"
    return f"destination is {_a(fe.comment)} of {spn}: {_a(fe.kind)} frontend, handled like {like}"


def walk(
    pp: PlanPort,
    cfg: ProxyConfig,
    kind: str,
    *,
    from_pod: bool,
    from_local: bool,
    nodeport_accepted: bool = True,
    source_allowed: bool = True,
    dst_local: bool = False,
) -> Walk:
    """Follow a NEW packet of one source class through the rules written for ``pp``.

    ``from_pod``: the local detector matches the source; ``from_local``: the source is
    one of the node's own addresses (addrtype LOCAL). ``nodeport_accepted``: for
    NodePort, whether the tail rule of KUBE-SERVICES sends the destination into
    KUBE-NODEPORTS (else only the filter rule for LOCAL destinations applies).
    ``source_allowed``: for LoadBalancer IPs with source ranges, whether KUBE-FW lets
    the source through (:func:`fw_allows`; ignored when the port has no KUBE-FW chain).
    ``dst_local``: for externalIPs and LoadBalancer IPs, whether the address is one of the
    node's own (then the packet also reaches the filter INPUT hook). The result excludes
    the per-endpoint hairpin masquerade.

    Filter verdicts follow the hooks the kernel runs: KUBE-EXTERNAL-SERVICES is jumped to
    from INPUT and FORWARD only, so the node's own packet to a non-local external or
    load-balancer IP never meets its REJECT rule (checked against the kernel in
    tests/test_kernel_iptables.py; kube-proxy's unit-test tracer runs every filter chain
    for every packet and would say REJECT).
    """
    fe = plugin_frontend(pp, kind)
    shape: FrontendKind = fe.shape if fe is not None else kind  # type: ignore[assignment]
    if cfg.nftables:
        return _walk_nft(
            pp, cfg, shape, from_pod=from_pod, from_local=from_local, nodeport_accepted=nodeport_accepted,
            source_allowed=source_allowed, dst_local=dst_local, plugin=fe,
        )
    spn = pp.spn
    kind = shape
    w = Walk("PASS", chains=[KUBE_SERVICES])
    no_eps: Verdict = "REJECT" if not pp.has_endpoints else "DROP"
    det = cfg.detector

    def filter_verdict(chain: str, verdict: Verdict, why: str) -> Walk:
        w.verdict = verdict
        w.chains.append(FILTER_PREFIX + chain)
        w.steps.append(why)
        return w

    if kind == "ClusterIP":
        w.steps.append(
            _describe_plugin_frontend(fe, spn) if fe is not None
            else f"{pp.cluster_ip}:{pp.port}/{pp.protocol} is the cluster IP of {spn}"
        )
        if not pp.has_internal_endpoints:
            if not pp.has_endpoints:
                return filter_verdict(
                    KUBE_SERVICES, "REJECT",
                    f"{spn} has no endpoints: filter KUBE-SERVICES rejects it",
                )
            return filter_verdict(
                KUBE_SERVICES, "DROP",
                f"{spn} has no local endpoints (internalTrafficPolicy=Local): "
                "filter KUBE-SERVICES drops it",
            )
        return _enter_internal(w, pp, cfg, from_pod, pp.svl_chain if pp.internal_local else pp.svc_chain,
                               KUBE_MARK_MASQ)

    external_filter = "KUBE-EXTERNAL-SERVICES"
    def output_only() -> Walk:
        w.steps.append(
            f"{spn} has no endpoints, but the node's own packet to a non-local address only "
            f"passes the OUTPUT hook, and {external_filter} hangs off INPUT and FORWARD: "
            "the packet leaves the node unchanged"
        )
        return w

    if kind == "ExternalIP":
        w.steps.append(
            _describe_plugin_frontend(fe, spn) if fe is not None else f"destination is an external IP of {spn}"
        )
        if not pp.has_endpoints:
            if from_local and not dst_local:
                return output_only()
            return filter_verdict(external_filter, "REJECT", f"{spn} has no endpoints: rejected")
    elif kind == "LoadBalancer":
        w.steps.append(f"destination is a load-balancer IP of {spn}")
        if not pp.has_endpoints:
            if from_local and not dst_local:
                return output_only()
            return filter_verdict(external_filter, "REJECT", f"{spn} has no endpoints: rejected")
        if pp.uses_fw_chain:
            w.chains.append(pp.fw_chain)
            if not source_allowed:
                return filter_verdict(
                    "KUBE-PROXY-FIREWALL", "DROP",
                    "source is outside loadBalancerSourceRanges: KUBE-PROXY-FIREWALL drops it",
                )
            w.steps.append("source is allowed by loadBalancerSourceRanges")
    else:  # NodePort
        if not nodeport_accepted:
            w.steps.append(
                f"port {pp.node_port}/{pp.protocol} is the NodePort of {spn}, but this "
                "destination is not a NodePort address (--nodeport-addresses)"
            )
            if not pp.has_external_endpoints:
                return filter_verdict(
                    external_filter, no_eps,
                    f"{spn} has no {'local ' if pp.has_endpoints else ''}endpoints: "
                    f"filter {external_filter} {'rejects' if no_eps == 'REJECT' else 'drops'} "
                    "every LOCAL destination of the NodePort",
                )
            w.steps.append("not a service packet: delivered to the node unchanged")
            w.chains = []
            return w
        w.chains.append(KUBE_NODEPORTS)
        w.steps.append(f"port {pp.node_port}/{pp.protocol} on a node address is the NodePort of {spn}")
        if not pp.has_endpoints:
            return filter_verdict(external_filter, "REJECT", f"{spn} has no endpoints: rejected")

    # KUBE-EXT
    w.chains.append(pp.ext_chain)
    if not pp.external_local:
        w.masquerade = True
        w.chains.append(KUBE_MARK_MASQ)
        w.steps.append("masquerade: externalTrafficPolicy=Cluster masquerades external destinations")
        return w.enter_pool(pp.svc_chain, "cluster", "externalTrafficPolicy=Cluster: any ready endpoint")
    if det.implemented and from_pod:
        return w.enter_pool(
            pp.svc_chain, "cluster",
            f"externalTrafficPolicy=Local, but the source is a pod ({det.cidr}): "
            "short-circuit to all endpoints, no masquerade",
        )
    if from_local:
        w.masquerade = True
        w.chains.append(KUBE_MARK_MASQ)
        w.steps.append("masquerade: the source is a node-local address (addrtype LOCAL)")
        return w.enter_pool(
            pp.svc_chain, "cluster",
            "externalTrafficPolicy=Local, but node-local traffic is routed to all endpoints",
        )
    if not pp.has_external_endpoints:
        # KUBE-PROXY-FIREWALL comes first in INPUT and FORWARD, and drops anything still
        # addressed to a firewalled load-balancer IP
        first = "KUBE-PROXY-FIREWALL" if kind == "LoadBalancer" and pp.uses_fw_chain else external_filter
        return filter_verdict(
            first, "DROP",
            f"externalTrafficPolicy=Local and {spn} has no local endpoints: dropped",
        )
    return w.enter_pool(
        pp.svl_chain, "local",
        "externalTrafficPolicy=Local: only this node's endpoints, source IP preserved",
    )


# --------------------------------------------------------------------------- nftables walk

def _walk_nft(
    pp: PlanPort,
    cfg: ProxyConfig,
    kind: FrontendKind,
    *,
    from_pod: bool,
    from_local: bool,
    nodeport_accepted: bool,
    source_allowed: bool,
    dst_local: bool,
    plugin: Frontend | None = None,
) -> Walk:
    """:func:`walk` through the rules render/nftables.py writes (NFTABLES.md §1.6, §2).

    Differences from iptables mode: the firewall (``firewall-check`` in the pre-DNAT filter
    chains) is not gated on endpoints and drops before DNAT; ``service-endpoints-check``
    hangs off filter input, forward *and* output, so the node's own packet to an external
    or load-balancer IP without endpoints is rejected too; a NodePort on an address that
    is not a NodePort address is left alone (``nodeport-endpoints-check`` matches only
    NodePort addresses).
    """
    spn = pp.spn
    base = chain_name_base(pp.namespace, pp.service, pp.proto, pp.port_name)
    svc_chain, local_chain = f"service-{base}", f"local-{base}"
    ext_chain, fw_chain = f"external-{base}", f"firewall-{base}"
    if kind == "NodePort":
        dst_local = True
    filt = nft_filter_chain(from_local, dst_local)
    w = Walk("PASS", chains=[])
    det = cfg.detector

    def filter_verdict(hook: str, chain: str, verdict: Verdict, why: str) -> Walk:
        w.verdict = verdict
        w.chains += [hook, chain] + ([NFT_REJECT_CHAIN] if verdict == "REJECT" else [])
        w.steps.append(why)
        return w

    def no_endpoints(hook: str, check: str, what: str) -> Walk:
        verdict: Verdict = "REJECT" if not pp.has_endpoints else "DROP"
        return filter_verdict(
            hook, check, verdict,
            f"{spn} has no {'' if not pp.has_endpoints else 'local '}endpoints: {what} in "
            f"@no-endpoint-{'nodeports' if check == NFT_NODEPORT_ENDPOINTS_CHECK else 'services'} "
            f"({'goto reject-chain' if verdict == 'REJECT' else 'drop'}), reached from {hook}",
        )

    if kind == "LoadBalancer" and fw_active(pp, cfg):
        pre = "filter-output-pre-dnat" if from_local else "filter-prerouting-pre-dnat"
        w.chains += [pre, NFT_FIREWALL_CHECK, fw_chain]
        if not source_allowed:
            w.verdict = "DROP"
            w.steps.append(
                f"source is outside loadBalancerSourceRanges: {fw_chain} drops it before DNAT "
                "(not conditioned on endpoints in nftables mode)"
            )
            return w
        w.steps.append("source is allowed by loadBalancerSourceRanges")

    w.chains += [nft_nat_chain(from_local), NFT_SERVICES]
    if kind == "ClusterIP":
        w.steps.append(
            _describe_plugin_frontend(plugin, spn) if plugin is not None
            else f"{pp.cluster_ip}:{pp.port}/{pp.protocol} is the cluster IP of {spn}"
        )
        if not pp.has_internal_endpoints:
            if not pp.has_endpoints:
                return no_endpoints(filt, NFT_SERVICE_ENDPOINTS_CHECK, "the cluster IP is")
            return filter_verdict(
                filt, NFT_SERVICE_ENDPOINTS_CHECK, "DROP",
                f"{spn} has no local endpoints (internalTrafficPolicy=Local): the cluster IP is in "
                f"@no-endpoint-services (drop), reached from {filt}",
            )
        return _enter_internal(w, pp, cfg, from_pod, local_chain if pp.internal_local else svc_chain, NFT_MARK_MASQ)

    check = NFT_SERVICE_ENDPOINTS_CHECK
    hook = filt
    if kind == "ExternalIP":
        w.steps.append(
            _describe_plugin_frontend(plugin, spn) if plugin is not None else f"destination is an external IP of {spn}"
        )
    elif kind == "LoadBalancer":
        w.steps.append(f"destination is a load-balancer IP of {spn}")
    else:  # NodePort
        check, hook = NFT_NODEPORT_ENDPOINTS_CHECK, "filter-input"
        if not nodeport_accepted:
            w.steps.append(
                f"port {pp.node_port}/{pp.protocol} is the NodePort of {spn}, but this destination "
                "is not a NodePort address (nodeport-ips / --nodeport-addresses; never loopback in "
                "nftables mode): neither services nor nodeport-endpoints-check matches it, "
                "so it is delivered to the node unchanged"
            )
            return w
        w.steps.append(f"port {pp.node_port}/{pp.protocol} on a NodePort address is the NodePort of {spn}")
    if not pp.has_endpoints:
        return no_endpoints(hook, check, "the destination is")

    w.chains.append(ext_chain)
    if not pp.external_local:
        w.masquerade = True
        w.chains.append(NFT_MARK_MASQ)
        w.steps.append("masquerade: externalTrafficPolicy=Cluster masquerades external destinations")
        return w.enter_pool(svc_chain, "cluster", "externalTrafficPolicy=Cluster: any ready endpoint")
    if det.implemented and from_pod:
        return w.enter_pool(
            svc_chain, "cluster",
            f"externalTrafficPolicy=Local, but the source is a pod ({det.cidr}): "
            "short-circuit pod traffic to all endpoints, no masquerade",
        )
    if from_local:
        w.masquerade = True
        w.chains.append(NFT_MARK_MASQ)
        w.steps.append("masquerade: the source is a node-local address (fib saddr type local)")
        return w.enter_pool(
            svc_chain, "cluster",
            "externalTrafficPolicy=Local, but local traffic is short-circuited to all endpoints",
        )
    if not pp.has_external_endpoints:
        w.steps.append(f"externalTrafficPolicy=Local: {ext_chain} ends without a verdict, no DNAT")
        return no_endpoints(hook, check, "the destination is")
    return w.enter_pool(
        local_chain, "local",
        "externalTrafficPolicy=Local: only this node's endpoints, source IP preserved",
    )

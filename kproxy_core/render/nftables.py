"""kube-proxy's nftables-mode ``nft -f`` input, written from a ProxyPlan.

:func:`render_nftables` writes the transaction one *full* ``syncProxyRules`` of
pkg/proxy/nftables/proxier.go (reference layout, commit 531be812, v1.34+) hands to
``nft -f`` for ``plan.config.family``: table ``ip kube-proxy`` (IPv4) or
``ip6 kube-proxy`` (IPv6), its base chains, the fixed chains, sets and verdict
maps of ``setupNFTables``, then every service port's elements and chains
(NFTABLES.md §1-§3). Every decision (which endpoints, which chains, reject or
drop, masquerading) was already taken by :mod:`kproxy_core.plan`; this module
spells it out in knftables' text form. One nftables-specific decision is taken
here: ``usesFWChain`` is ``LB VIPs and source ranges`` *without* the endpoint
condition of iptables mode, so :attr:`PlanPort.uses_fw_chain` is not used.

Order. kube-proxy walks its service map (a Go map), so the order of the per-service
operations changes from one sync to the next. We write them in a deterministic order
instead: ``plan.ports`` order (services sorted by namespace/name, then each service's
ports in spec order); inside one service port, the operations follow kube-proxy's
code order exactly (endpoint chains, policy chains, external chain, set/map
elements, then the chain rules, §3.2). Endpoint chains and affinity sets follow the
plan's endpoint order (sorted by the ``IP:port`` string), ``nodeport-ips`` the
node's address order (kube-proxy: Go map order). The setup part is kube-proxy's
fixed order. Elements go through kube-proxy's ``ensureElem``: a key written twice
with the same value is written once.

The text is the input of a sync against a table kube-proxy has not written yet
(``readOrReset`` finds nothing): with :attr:`NftablesOptions.first_sync` it starts
with the add+delete of the base chains of a process's first sync.
:attr:`NftablesOptions.stale_chains` adds the ``flush chain`` of service chains left
over from an earlier sync (preceded by ``add chain`` so the text also loads on its own).

:func:`normalize_like_kube_proxy_tests` turns a transaction (or a dump) into what
pkg/proxy/nftables/proxier_test.go compares: the resulting state as
``knftables.Fake.Dump()`` prints it, sorted by ``sortNFTablesTransaction``
(helpers_test.go, NFTABLES.md §3.3).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..addresses import parse_cidr, parse_ip
from ..chains import chain_name_base, endpoint_chain_name_base, hash_and_truncate
from ..plan import EndpointInfo, PlanPort, ProxyPlan, valid_source_ranges
from . import plugin_rules, selection_rules

__all__ = [
    "BASE_CHAINS",
    "JUMP_CHAINS",
    "NftState",
    "NftablesError",
    "NftablesOptions",
    "apply_transaction",
    "chain_name_base",
    "check_references",
    "dump_state",
    "endpoint_chain_name_base",
    "hash_and_truncate",
    "normalize_like_kube_proxy_tests",
    "render_nftables",
    "sort_like_kube_proxy_tests",
]

TABLE = "kube-proxy"

# chain, set and map names (proxier.go constants)
FILTER_PREROUTING_PRE_DNAT = "filter-prerouting-pre-dnat"
FILTER_OUTPUT_PRE_DNAT = "filter-output-pre-dnat"
FILTER_INPUT = "filter-input"
FILTER_FORWARD = "filter-forward"
FILTER_OUTPUT = "filter-output"
NAT_PREROUTING = "nat-prerouting"
NAT_OUTPUT = "nat-output"
NAT_POSTROUTING = "nat-postrouting"
SERVICES = "services"
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NODEPORT_IPS = "nodeport-ips"
CLUSTER_IPS = "cluster-ips"
SERVICE_ENDPOINTS_CHECK = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK = "nodeport-endpoints-check"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
REJECT_CHAIN = "reject-chain"
CLUSTER_IPS_CHECK = "cluster-ips-check"
FIREWALL_IPS = "firewall-ips"
FIREWALL_CHECK = "firewall-check"
MARK_MASQ = "mark-for-masquerade"
MASQUERADING = "masquerading"

# nftablesBaseChains: (name, type, hook, priority as knftables writes it, i.e. numeric)
BASE_CHAINS: tuple[tuple[str, str, str, int], ...] = (
    (FILTER_PREROUTING_PRE_DNAT, "filter", "prerouting", -110),  # dstnat-10
    (FILTER_OUTPUT_PRE_DNAT, "filter", "output", -110),  # dstnat-10
    (FILTER_INPUT, "filter", "input", 0),  # filter
    (FILTER_FORWARD, "filter", "forward", 0),  # filter
    (FILTER_OUTPUT, "filter", "output", 0),  # filter
    (NAT_PREROUTING, "nat", "prerouting", -100),  # dstnat
    (NAT_OUTPUT, "nat", "output", -100),  # dstnat
    (NAT_POSTROUTING, "nat", "postrouting", 100),  # srcnat
)

# nftablesJumpChains: (destination chain, source base chain, extra args)
JUMP_CHAINS: tuple[tuple[str, str, str], ...] = (
    (NODEPORT_ENDPOINTS_CHECK, FILTER_INPUT, "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, FILTER_INPUT, "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, FILTER_FORWARD, "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, FILTER_OUTPUT, "ct state new"),
    (FIREWALL_CHECK, FILTER_PREROUTING_PRE_DNAT, "ct state new"),
    (FIREWALL_CHECK, FILTER_OUTPUT_PRE_DNAT, "ct state new"),
    (SERVICES, NAT_OUTPUT, ""),
    (SERVICES, NAT_PREROUTING, ""),
    (MASQUERADING, NAT_POSTROUTING, ""),
    (CLUSTER_IPS_CHECK, FILTER_FORWARD, "ct state new"),
    (CLUSTER_IPS_CHECK, FILTER_OUTPUT, "ct state new"),
)

# the containers readOrReset manages (flushed with NftablesOptions.flush_containers)
MANAGED_CONTAINERS: tuple[tuple[str, str], ...] = (
    ("set", CLUSTER_IPS),
    ("map", SERVICE_IPS),
    ("map", FIREWALL_IPS),
    ("map", NO_ENDPOINT_SERVICES),
    ("map", NO_ENDPOINT_NODEPORTS),
    ("map", SERVICE_NODEPORTS),
)


class NftablesError(ValueError):
    """A transaction that nft (or knftables' fake) would refuse."""


@dataclass(frozen=True)
class NftablesOptions:
    """Proxier settings that the plan does not carry (they change text, not decisions)."""

    masquerade_bit: int = 14
    mark_format: str = "real"  # "real": 0x00004000 as Go's %#08x; "test": 0x4000 as proxier_test.go's fake
    first_sync: bool = True  # the process's first sync: add+delete every base chain first
    # (LOCAL, NOTLOCAL) words for interface-based detectors, e.g. ("iifname cbr0", "iifname != cbr0");
    # default from plan.config.detector ("ip saddr CIDR", "ip saddr != CIDR")
    detector_tokens: tuple[str, str] | None = None
    node_ip: str | None = None  # the proxier's nodeIP (firewall allowFromNode); default: first node IP
    object_comments: bool = True  # False: knftables' noObjectComments (no table/chain/set/map comments)
    flush_containers: bool = False  # flush the 6 managed sets/maps (readOrReset's fallback; old layout)
    stale_chains: tuple[str, ...] = ()  # service chains left over from an earlier sync: flushed
    # Element comments ("ns/svc:port") longer than this are cut. None: as at 531be812, never cut, so a
    # Service whose comment exceeds the kernel's 128-byte limit makes nft refuse the whole sync
    # (kubernetes#139515); 128: as kubernetes#139516 (merged 2026-06) does.
    comment_limit: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.masquerade_bit <= 31:
            raise ValueError(f"masquerade_bit: {self.masquerade_bit} is not in 0..31")
        if self.mark_format not in ("real", "test"):
            raise ValueError(f"mark_format: {self.mark_format!r} is not 'real' or 'test'")
        if self.node_ip is not None and parse_ip(self.node_ip)[0] is None:
            raise ValueError(f"node_ip: {self.node_ip!r} is not an IP address")
        if self.comment_limit is not None and self.comment_limit < 1:
            raise ValueError(f"comment_limit: {self.comment_limit} is not positive")
        for chain in self.stale_chains:
            if "/" not in chain:
                raise ValueError(f"stale_chains: {chain!r} is not a service chain name (no '/')")

    @property
    def mark(self) -> str:
        """The masquerade mark as kube-proxy (or its test fake) spells it."""
        value = 1 << self.masquerade_bit
        return f"0x{value:08x}" if self.mark_format == "real" else hex(value)


_DEFAULT_OPTIONS = NftablesOptions()


# --------------------------------------------------------------------------- names


def _base(pp: PlanPort) -> str:
    return chain_name_base(pp.namespace, pp.service, pp.proto, pp.port_name)


def _ep_base(pp: PlanPort, ep: EndpointInfo) -> str:
    return endpoint_chain_name_base(pp.namespace, pp.service, pp.proto, pp.port_name, ep.endpoint)


def _quote(text: str) -> str:
    """Go's ``%q`` for the printable ASCII of Kubernetes names."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


# --------------------------------------------------------------------------- rendering


class _Tx:
    """A knftables Transaction: operations in call order, plus ensureChain/ensureElem state."""

    def __init__(self, family: str, object_comments: bool, comment_limit: int | None = None) -> None:
        self.family = family
        self.object_comments = object_comments
        self.comment_limit = comment_limit
        self.lines: list[str] = []
        self.created: set[str] = set()
        self.elements: dict[str, dict[str, str]] = {}

    def _obj(self, verb: str, kind: str, name: str, spec: str = "") -> None:
        line = f"{verb} {kind} {self.family} {TABLE} {name}"
        self.lines.append(f"{line} {spec}" if spec else line)

    def comment(self, text: str) -> str:
        return f"comment {_quote(text)} ; " if self.object_comments else ""

    def table(self, comment: str) -> None:
        spec = f"{{ {self.comment(comment)}}}" if self.object_comments else ""
        self.lines.append(f"add table {self.family} {TABLE}" + (f" {spec}" if spec else ""))

    def chain(self, name: str, spec: str = "") -> None:
        self._obj("add", "chain", name, spec)

    def flush_chain(self, name: str) -> None:
        self._obj("flush", "chain", name)

    def delete_chain(self, name: str) -> None:
        self._obj("delete", "chain", name)

    def ensure_chain(self, name: str) -> None:
        """``ensureChain``: add+flush, at most once per transaction."""
        if name in self.created:
            return
        self.created.add(name)
        self.chain(name)
        self.flush_chain(name)

    def rule(self, chain: str, rule: str, comment: str | None = None) -> None:
        text = f"add rule {self.family} {TABLE} {chain} {rule}"
        self.lines.append(f"{text} comment {_quote(comment)}" if comment is not None else text)

    def container(self, kind: str, name: str, type_: str, comment: str | None = None, extra: str = "") -> None:
        words = f"type {type_} ; {extra}" + (self.comment(comment) if comment is not None else "")
        self._obj("add", kind, name, f"{{ {words}}}")

    def element(self, name: str, key: Sequence[str], value: str | None = None, comment: str | None = None) -> None:
        text = f"{{ {' . '.join(key)}"
        if comment is not None:
            text += f" comment {_quote(comment)}"
        if value is not None:
            text += f" : {value}"
        self._obj("add", "element", name, text + " }")

    def ensure_elem(self, name: str, key: Sequence[str], value: str | None = None, comment: str | None = None) -> None:
        """``nftElementStorage.ensureElem`` on an empty container."""
        store = self.elements.setdefault(name, {})
        k, v = " . ".join(key), value or ""
        if k in store:
            if store[k] == v:
                return
            self._obj("delete", "element", name, f"{{ {k} }}")
        store[k] = v
        if comment is not None and self.comment_limit is not None:
            comment = comment.encode()[: self.comment_limit].decode(errors="ignore")
        self.element(name, key, value, comment)


@dataclass(frozen=True)
class _Words:
    ipx: str  # "ip" / "ip6"
    addr: str  # "ipv4_addr" / "ipv6_addr"
    no_localhost: str


def _words(plan: ProxyPlan) -> _Words:
    if plan.config.family == "IPv6":
        return _Words("ip6", "ipv6_addr", "ip6 daddr != ::1")
    return _Words("ip", "ipv4_addr", "ip daddr != 127.0.0.0/8")


def _detector_tokens(plan: ProxyPlan, options: NftablesOptions) -> tuple[str, str] | None:
    """``IfLocalNFT()`` / ``IfNotLocalNFT()`` of the local detector, or None (not implemented)."""
    if options.detector_tokens is not None:
        return options.detector_tokens
    return plan.config.detector.nftables_tokens()


def _service_cidrs(plan: ProxyPlan, cidrs: Sequence[str]) -> str:
    """``OnServiceCIDRsChanged``: this family's CIDRs as given, joined with "," (no spaces)."""
    own: list[str] = []
    for text in cidrs:
        net, _ = parse_cidr(text)
        if net is None:
            raise ValueError(f"service CIDR {text!r} is not a valid CIDR")
        if (net.version == 6) == (plan.config.family == "IPv6"):
            own.append(text)
    return ",".join(own)


def _nodeport_ips(plan: ProxyPlan) -> list[str]:
    """``GetNodeIPs`` for this family's --nodeport-addresses, loopback skipped (node address order)."""
    cfg = plan.config
    nets = [ipaddress.ip_network(c) for c in cfg.nodeport_cidrs]
    out: list[str] = []
    for ip in cfg.local_ips:
        addr = ipaddress.ip_address(ip)
        if addr.is_loopback or ip in out:
            continue
        if any(addr.version == n.version and addr in n for n in nets):
            out.append(ip)
    return out


def _setup(tx: _Tx, plan: ProxyPlan, options: NftablesOptions, w: _Words, service_cidrs: str) -> None:
    """``setupNFTables`` (proxier.go @531be812)."""
    cfg = plan.config
    mark = options.mark
    tx.table("rules for kube-proxy")
    if options.first_sync:
        for name, *_ in BASE_CHAINS:
            tx.chain(name)
            tx.delete_chain(name)
    for name, ctype, hook, priority in BASE_CHAINS:
        tx.chain(name, f"{{ type {ctype} hook {hook} priority {priority} ; }}")
        tx.flush_chain(name)
    for dst, src, extra in JUMP_CHAINS:
        tx.ensure_chain(dst)
        tx.rule(src, f"{extra} jump {dst}" if extra else f"jump {dst}")
    for chain in (SERVICES, CLUSTER_IPS_CHECK, MASQUERADING, MARK_MASQ):
        tx.ensure_chain(chain)
    tx.rule(MARK_MASQ, f"mark set mark or {mark}")
    tx.rule(MASQUERADING, f"mark and {mark} == 0 return")
    tx.rule(MASQUERADING, f"mark set mark xor {mark}")
    tx.rule(MASQUERADING, "masquerade fully-random")

    tx.container("set", CLUSTER_IPS, w.addr, "Active ClusterIPs")
    tx.rule(CLUSTER_IPS_CHECK, f"{w.ipx} daddr @{CLUSTER_IPS} reject", "Reject traffic to invalid ports of ClusterIPs")
    if service_cidrs:
        tx.rule(
            CLUSTER_IPS_CHECK, f"{w.ipx} daddr {{ {service_cidrs} }} drop", "Drop traffic to unallocated ClusterIPs"
        )

    tx.container("set", NODEPORT_IPS, w.addr, "IPs that accept NodePort traffic")
    if cfg.nodeport_match_all:
        tx._obj("delete", "set", NODEPORT_IPS)
    else:
        tx._obj("flush", "set", NODEPORT_IPS)
        for ip in _nodeport_ips(plan):
            tx.element(NODEPORT_IPS, [ip])

    tx.container(
        "map", NO_ENDPOINT_SERVICES, f"{w.addr} . inet_proto . inet_service : verdict",
        "vmap to drop or reject packets to services with no endpoints",
    )
    tx.container(
        "map", NO_ENDPOINT_NODEPORTS, "inet_proto . inet_service : verdict",
        "vmap to drop or reject packets to service nodeports with no endpoints",
    )
    reject_comment = tx.comment("helper for @no-endpoint-services / @no-endpoint-nodeports")
    tx.chain(REJECT_CHAIN, f"{{ {reject_comment}}}" if reject_comment else "")
    tx.flush_chain(REJECT_CHAIN)
    tx.rule(REJECT_CHAIN, "reject")

    tx.rule(SERVICE_ENDPOINTS_CHECK, f"{w.ipx} daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}")
    if cfg.nodeport_match_all:
        tx.rule(NODEPORT_ENDPOINTS_CHECK, f"{w.no_localhost} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}")
    else:
        tx.rule(
            NODEPORT_ENDPOINTS_CHECK,
            f"{w.ipx} daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}",
        )

    tx.container(
        "map", FIREWALL_IPS, f"{w.addr} . inet_proto . inet_service : verdict",
        "destinations that are subject to LoadBalancerSourceRanges",
    )
    tx.ensure_chain(FIREWALL_CHECK)
    tx.rule(FIREWALL_CHECK, f"{w.ipx} daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}")

    tx.container(
        "map", SERVICE_IPS, f"{w.addr} . inet_proto . inet_service : verdict",
        "ClusterIP, ExternalIP and LoadBalancer IP traffic",
    )
    tx.container("map", SERVICE_NODEPORTS, "inet_proto . inet_service : verdict", "NodePort traffic")
    tx.rule(SERVICES, f"{w.ipx} daddr . meta l4proto . th dport vmap @{SERVICE_IPS}")
    if cfg.nodeport_match_all:
        tx.rule(SERVICES, f"fib daddr type local {w.no_localhost} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}")
    else:
        tx.rule(SERVICES, f"{w.ipx} daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}")

    if options.flush_containers:
        for kind, name in MANAGED_CONTAINERS:
            tx._obj("flush", kind, name)


def _service_port(
    tx: _Tx, pp: PlanPort, plan: ProxyPlan, options: NftablesOptions, w: _Words,
    detector: tuple[str, str] | None, node_ip: str | None,
) -> None:
    """One iteration of syncProxyRules' service-port loop (a full sync: nothing skipped)."""
    cfg = plan.config
    proto, port = pp.proto, str(pp.port)
    base = _base(pp)
    cluster_chain, local_chain = f"service-{base}", f"local-{base}"
    external_chain, fw_chain = f"external-{base}", f"firewall-{base}"
    affinity = pp.affinity_timeout > 0

    def ep_chain(ep: EndpointInfo) -> str:
        return f"endpoint-{_ep_base(pp, ep)}"

    def affinity_set(ep: EndpointInfo) -> str:
        return f"affinity-{_ep_base(pp, ep)}"

    for ep in pp.all_reachable:
        tx.ensure_chain(ep_chain(ep))
    if pp.uses_cluster_chain:
        tx.ensure_chain(cluster_chain)
    if pp.uses_local_chain:
        tx.ensure_chain(local_chain)
    internal_chain = local_chain if pp.internal_local else cluster_chain
    external_policy_chain = local_chain if pp.external_local else cluster_chain
    if pp.uses_external_chain:
        tx.ensure_chain(external_chain)

    if not pp.has_endpoints:
        internal_verdict = external_verdict = f"goto {REJECT_CHAIN}"
    else:
        internal_verdict = external_verdict = "drop"

    tx.ensure_elem(CLUSTER_IPS, [pp.cluster_ip])
    if pp.has_internal_endpoints:
        tx.ensure_elem(SERVICE_IPS, [pp.cluster_ip, proto, port], f"goto {internal_chain}")
    else:
        tx.ensure_elem(NO_ENDPOINT_SERVICES, [pp.cluster_ip, proto, port], internal_verdict, pp.spn)

    # plugin frontends with the internal policy: like the ClusterIP (not in cluster-ips)
    for fe in pp.internal_frontends:
        key = [str(fe.ip), fe.protocol.lower(), str(fe.port)]
        if pp.has_internal_endpoints:
            tx.ensure_elem(SERVICE_IPS, key, f"goto {internal_chain}")
        else:
            tx.ensure_elem(NO_ENDPOINT_SERVICES, key, internal_verdict, pp.spn)

    external = [[ip, proto, port] for ip in pp.external_ips]
    external += [[str(fe.ip), fe.protocol.lower(), str(fe.port)] for fe in pp.external_frontends]
    for key in external:
        if pp.has_endpoints:
            tx.ensure_elem(SERVICE_IPS, key, f"goto {external_chain}")
        if not pp.has_external_endpoints:
            tx.ensure_elem(NO_ENDPOINT_SERVICES, key, external_verdict, pp.spn)

    ranges = valid_source_ranges(pp)
    uses_fw_chain = bool(pp.lb_ips) and bool(ranges)  # not conditioned on endpoints (unlike iptables)
    if uses_fw_chain:
        tx.ensure_chain(fw_chain)
    for ip in pp.lb_ips:
        if pp.has_endpoints:
            tx.ensure_elem(SERVICE_IPS, [ip, proto, port], f"goto {external_chain}")
        if uses_fw_chain:
            tx.ensure_elem(FIREWALL_IPS, [ip, proto, port], f"goto {fw_chain}")
    if not pp.has_external_endpoints:
        for ip in pp.lb_ips:
            tx.ensure_elem(NO_ENDPOINT_SERVICES, [ip, proto, port], external_verdict, pp.spn)

    if pp.node_port:
        if pp.has_endpoints:
            tx.ensure_elem(SERVICE_NODEPORTS, [proto, str(pp.node_port)], f"goto {external_chain}")
        if not pp.has_external_endpoints:
            tx.ensure_elem(NO_ENDPOINT_NODEPORTS, [proto, str(pp.node_port)], external_verdict, pp.spn)

    # chain contents
    if pp.has_internal_endpoints:
        for vip in [pp.cluster_ip] + [str(fe.ip) for fe in pp.internal_frontends]:
            if cfg.masquerade_all:
                tx.rule(internal_chain, f"{w.ipx} daddr {vip} jump {MARK_MASQ}")
            elif detector is not None:
                tx.rule(internal_chain, f"{w.ipx} daddr {vip} {detector[1]} jump {MARK_MASQ}")

    if pp.uses_external_chain:
        if not pp.external_local:
            tx.rule(external_chain, f"jump {MARK_MASQ}")
        else:
            if detector is not None:
                tx.rule(external_chain, f"{detector[0]} goto {cluster_chain}", "short-circuit pod traffic")
            tx.rule(external_chain, f"fib saddr type local jump {MARK_MASQ}", "masquerade local traffic")
            tx.rule(external_chain, f"fib saddr type local goto {cluster_chain}", "short-circuit local traffic")
        if pp.has_external_endpoints:
            tx.rule(external_chain, f"goto {external_policy_chain}")

    if uses_fw_chain:
        sources = [str(net) for net in ranges]
        node = ipaddress.ip_address(node_ip) if node_ip else None
        if node is not None and any(node.version == net.version and node in net for net in ranges):
            sources += list(pp.lb_ips)  # allowFromNode
        tx.rule(fw_chain, f"{w.ipx} saddr != {{ {' , '.join(sources)} }} drop")

    if affinity:
        for ep in pp.all_reachable:
            timeout = f"flags dynamic,timeout ; timeout {pp.affinity_timeout}s ; "
            tx.container("set", affinity_set(ep), w.addr, None, timeout)

    def endpoint_dispatch(chain: str, endpoints: Sequence[EndpointInfo]) -> None:
        if affinity:
            for ep in endpoints:
                tx.rule(chain, f"{w.ipx} saddr @{affinity_set(ep)} goto {ep_chain(ep)}")
        mode, order, weights = selection_rules(pp, endpoints)
        if mode == "cycle":  # round-robin: the numgen counter walks one cycle
            items = " , ".join(f"{k} : goto {ep_chain(endpoints[i])}" for k, i in enumerate(order))
            tx.rule(chain, f"numgen inc mod {len(order)} vmap {{ {items} }}")
            return
        if mode == "weighted":  # a range of the numbers 0 .. W-1 per endpoint, as wide as its weight
            ranges, lo = [], 0
            for ep, wt in zip(endpoints, weights, strict=True):
                hi = lo + wt - 1
                ranges.append(f"{lo}{'' if hi == lo else f'-{hi}'} : goto {ep_chain(ep)}")
                lo = hi + 1
            tx.rule(chain, f"numgen random mod {lo} vmap {{ {' , '.join(ranges)} }}")
            return
        items = " , ".join(f"{i} : goto {ep_chain(ep)}" for i, ep in enumerate(endpoints))
        tx.rule(chain, f"numgen random mod {len(endpoints)} vmap {{ {items} }}")

    if pp.uses_cluster_chain:
        endpoint_dispatch(cluster_chain, pp.cluster)
    if pp.uses_local_chain:
        endpoint_dispatch(local_chain, pp.local)

    for ep in pp.all_reachable:
        chain = ep_chain(ep)
        tx.rule(chain, f"{w.ipx} saddr {ep.ip} jump {MARK_MASQ}")
        if affinity:
            tx.rule(chain, f"update @{affinity_set(ep)} {{ {w.ipx} saddr }}")
        tx.rule(chain, f"meta l4proto {proto} dnat to {ep.endpoint}")


def render_nftables(
    plan: ProxyPlan, options: NftablesOptions = _DEFAULT_OPTIONS, *, service_cidrs: Sequence[str] = ()
) -> str:
    """The ``nft -f`` input of one full sync for ``plan.config.family`` (one line per operation).

    ``service_cidrs`` are the ServiceCIDRs (e.g. ``"172.30.0.0/16"``); this family's are
    written, as given, into the ``cluster-ips-check`` drop rule (none: no drop rule).
    """
    if isinstance(service_cidrs, str):
        service_cidrs = [c for c in service_cidrs.split(",") if c]
    w = _words(plan)
    tx = _Tx(w.ipx, options.object_comments, options.comment_limit)
    _setup(tx, plan, options, w, _service_cidrs(plan, service_cidrs))
    detector = _detector_tokens(plan, options)
    node_ip = options.node_ip or (plan.config.node_ips[0] if plan.config.node_ips else None)
    setup_chains = set(tx.created)
    for pp in plan.ports:
        _service_port(tx, pp, plan, options, w, detector, node_ip)
    for rt in plugin_rules(plan, "nftables"):
        for chain in rt.chains:
            tx.ensure_chain(chain)
        tx.lines.extend(rt.lines)
    service_chains = tx.created - setup_chains
    for chain in options.stale_chains:
        if chain not in service_chains:
            tx.chain(chain)
            tx.flush_chain(chain)
    return "\n".join(tx.lines) + "\n"


# --------------------------------------------------------------------------- state and normalisation


@dataclass
class _Chain:
    spec: str
    rules: list[str] = field(default_factory=list)


@dataclass
class _Container:
    spec: str
    elements: dict[str, str] = field(default_factory=dict)  # key text -> full "{ ... }" text


@dataclass
class NftState:
    """The table after a transaction, as ``knftables.Fake`` keeps it (one table)."""

    family: str | None = None
    table_spec: str | None = None
    chains: dict[str, _Chain] = field(default_factory=dict)
    sets: dict[str, _Container] = field(default_factory=dict)
    maps: dict[str, _Container] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return self.table_spec is not None


def _element_parts(body: str) -> tuple[str, str]:
    """``{ K1 . K2 [comment "c"] [: V] }`` -> (key text, value text)."""
    inner = body.strip()
    if not (inner.startswith("{") and inner.endswith("}")):
        raise NftablesError(f"bad element {body!r}")
    inner = inner[1:-1].strip()
    key, sep, value = inner.partition(" : ")
    key = key.split(" comment ", 1)[0].strip()
    return key, value.strip() if sep else ""


def apply_transaction(text: str, state: NftState | None = None) -> NftState:
    """Run ``text`` (``nft -f`` lines of one table) on ``state`` like ``knftables.Fake.Run``.

    Adding an existing table, chain, set or map is a no-op (the first spec stays);
    rules are appended; an element whose key exists is a no-op with the same value and
    an error with another. Flushing or deleting something missing is an error, as in nft.
    Blank lines and ``#`` comments are skipped.
    """
    st = state if state is not None else NftState()
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split(" ")
        if len(words) < 4 or words[0] not in ("add", "flush", "delete") or words[3] != TABLE:
            raise NftablesError(f"line {lineno}: not a kube-proxy table operation: {line!r}")
        verb, kind, family = words[0], words[1], words[2]
        if st.family is None:
            st.family = family
        elif family != st.family:
            raise NftablesError(f"line {lineno}: family {family} in a {st.family} transaction")
        if kind == "table":
            if verb == "add":
                if st.table_spec is None:
                    st.table_spec = " ".join(words[4:])
            elif verb == "delete":
                st.table_spec = None
                st.chains.clear()
                st.sets.clear()
                st.maps.clear()
            else:
                for ch in st.chains.values():
                    ch.rules.clear()
                for c in (*st.sets.values(), *st.maps.values()):
                    c.elements.clear()
            continue
        if not st.exists:
            raise NftablesError(f"line {lineno}: no table {family} {TABLE}: {line!r}")
        if len(words) < 5:
            raise NftablesError(f"line {lineno}: no object name: {line!r}")
        name, rest = words[4], " ".join(words[5:])
        if kind == "chain":
            if verb == "add":
                st.chains.setdefault(name, _Chain(rest))
            elif name not in st.chains:
                raise NftablesError(f"line {lineno}: no chain {name}")
            elif verb == "flush":
                st.chains[name].rules.clear()
            else:
                if st.chains[name].rules:
                    raise NftablesError(f"line {lineno}: chain {name} is not empty")
                del st.chains[name]
        elif kind == "rule":
            if verb != "add":
                raise NftablesError(f"line {lineno}: only 'add rule' is supported: {line!r}")
            if name not in st.chains:
                raise NftablesError(f"line {lineno}: no chain {name} for rule")
            st.chains[name].rules.append(rest)
        elif kind in ("set", "map"):
            store = st.sets if kind == "set" else st.maps
            if verb == "add":
                store.setdefault(name, _Container(rest))
            elif name not in store:
                raise NftablesError(f"line {lineno}: no {kind} {name}")
            elif verb == "flush":
                store[name].elements.clear()
            else:
                del store[name]
        elif kind == "element":
            container = st.sets.get(name) or st.maps.get(name)
            if container is None:
                raise NftablesError(f"line {lineno}: no set or map {name} for element")
            key, value = _element_parts(rest)
            if verb == "add":
                old = container.elements.get(key)
                if old is None:
                    container.elements[key] = rest
                elif _element_parts(old)[1] != value:
                    raise NftablesError(f"line {lineno}: element {key} of {name} exists with another value")
            elif verb == "delete":
                if key not in container.elements:
                    raise NftablesError(f"line {lineno}: no element {key} in {name}")
                del container.elements[key]
            else:
                raise NftablesError(f"line {lineno}: cannot flush an element: {line!r}")
        else:
            raise NftablesError(f"line {lineno}: unknown object type {kind!r}")
    return st


def dump_state(state: NftState) -> str:
    """``knftables.Fake.Dump()``: table, chains by name (each with its rules), sets, maps."""
    if not state.exists:
        return ""
    fam = state.family
    head = f"add table {fam} {TABLE}"
    out = [f"{head} {state.table_spec}" if state.table_spec else head]
    for name in sorted(state.chains):
        ch = state.chains[name]
        out.append(f"add chain {fam} {TABLE} {name}" + (f" {ch.spec}" if ch.spec else ""))
        out.extend(f"add rule {fam} {TABLE} {name} {rule}" for rule in ch.rules)
    for kind, store in (("set", state.sets), ("map", state.maps)):
        for name in sorted(store):
            c = store[name]
            out.append(f"add {kind} {fam} {TABLE} {name} {c.spec}")
            out.extend(f"add element {fam} {TABLE} {name} {elem}" for elem in c.elements.values())
    return "\n".join(out) + "\n"


_OBJECT_ORDER = {"table": 10, "chain": 9, "rule": 8, "set": 7, "map": 6, "element": 5}


def sort_like_kube_proxy_tests(text: str) -> str:
    """helpers_test.go's ``sortNFTablesTransaction``.

    Blank lines and lines starting with ``#`` are dropped; the rest is stably sorted by
    object type (table, chain, rule, set, map, element), then by object name (word 4);
    rules of one chain keep their order, other ties go by the whole line. Joined with
    ``\\n``, no trailing newline.
    """
    lines = [line for line in text.split("\n") if line and not line.startswith("#")]

    def key(item: tuple[int, str]) -> tuple[int, str, int, str]:
        index, line = item
        words = line.split(" ")
        if len(words) < 5:
            return (-100, "", index, "")  # Go treats these as equal to anything; keep them first, in order
        if words[1] == "rule":
            return (-_OBJECT_ORDER[words[1]], words[4], index, "")
        return (-_OBJECT_ORDER.get(words[1], 0), words[4], 0, line)

    return "\n".join(line for _, line in sorted(enumerate(lines), key=key))


def normalize_like_kube_proxy_tests(text: str) -> str:
    """What proxier_test.go compares for ``text``: ``sortNFTablesTransaction(nft.Dump())``.

    ``text`` is a transaction (e.g. :func:`render_nftables` output, with its flushes and
    deletes) or a dump; it is applied to an empty table first (:func:`apply_transaction`).
    """
    return sort_like_kube_proxy_tests(dump_state(apply_transaction(text)))


def check_references(state: NftState) -> list[str]:
    """Dangling references nft would refuse: ``jump``/``goto`` to a missing chain (in rules
    and verdict-map elements) and ``@name`` of a missing set or map."""
    errors = []
    containers = set(state.sets) | set(state.maps)

    def refs(where: str, text: str) -> None:
        words = text.replace("{", " ").replace("}", " ").split()
        for i, word in enumerate(words):
            if word in ("jump", "goto") and i + 1 < len(words) and words[i + 1] not in state.chains:
                errors.append(f"{where}: {word} to missing chain {words[i + 1]}")
            if word.startswith("@") and word[1:] not in containers:
                errors.append(f"{where}: reference to missing set/map {word[1:]}")

    for name, ch in state.chains.items():
        for rule in ch.rules:
            refs(f"chain {name}", rule.split(' comment "', 1)[0])
    for name, c in state.maps.items():
        for elem in c.elements.values():
            refs(f"map {name}", _element_parts(elem)[1])
    return errors

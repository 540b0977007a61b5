"""kube-proxy's iptables-mode ``iptables-restore`` input, written from a ProxyPlan.

:func:`render_iptables` writes what one full ``syncProxyRules`` of
pkg/proxy/iptables/proxier.go hands to ``iptables-restore --noflush --counters``
for ``plan.config.family``: the ``filter`` table then the ``nat`` table, each ending
in ``COMMIT`` (KUBE-PROXY.md §6). Every decision (which endpoints, which chains,
REJECT or DROP, masquerading) was already taken by :mod:`kproxy_core.plan`; this
module only spells it out, token for token as kube-proxy's ``LineBuffer`` does.

Order. kube-proxy walks its service map, a Go map, so the order of the service
ports in its output is random from one sync to the next (KUBE-PROXY.md §9). We write
them in a deterministic order instead: ``plan.ports`` order, i.e. services sorted by
namespace/name, then each service's ports in spec order. Within one service port the
rules follow kube-proxy's emission order exactly; the NodePort catch-all stays the
last rule of nat KUBE-SERVICES. Two more Go-map orders are replaced likewise: the
endpoint chains of ``allReachableEndpoints`` (union case) are written in the sorted
endpoint order, and the per-IP NodePort tail rules (``--nodeport-addresses``) in
``plan.config.nodeport_ips`` order.

Not written: stale-chain deletion (``:CHAIN`` + ``-X CHAIN`` for chains left over from
an earlier sync, which depends on the kernel's previous state) and the jump rules
from the built-in chains (ensured with ``iptables -C``/``-I``, not part of the
restore input; §6.6).

:func:`normalize_like_kube_proxy_tests` applies the ordering normalisation of
proxier_test.go (``sortIPTablesRules`` + ``IPTablesDump.String()``, §9), and
:func:`to_iptables_save` predicts the canonical form ``iptables-save`` prints back
after the kernel round trip (§10).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cmp_to_key

from ..addresses import Family
from ..chains import KUBE_MARK_MASQ, KUBE_NODEPORTS, KUBE_SERVICES, compute_probability, weighted_probability
from ..plan import EndpointInfo, PlanPort, ProxyPlan
from . import plugin_rules, selection_rules

__all__ = [
    "LARGE_CLUSTER_ENDPOINTS_THRESHOLD",
    "IptablesOptions",
    "compute_probability",
    "normalize_like_kube_proxy_tests",
    "jump_rules",
    "render_iptables",
    "to_iptables_save",
]

# pkg/proxy/iptables/proxier.go: more endpoints than this drops the per-endpoint comments
LARGE_CLUSTER_ENDPOINTS_THRESHOLD = 1000

KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBELET_FIREWALL = "KUBE-FIREWALL"

NFACCT_CT_INVALID = "ct_state_invalid_dropped_pkts"  # metrics.IPTablesCTStateInvalidDroppedNFAcctCounter
NFACCT_LOCALHOST_NP = "localhost_nps_accepted_pkts"  # metrics.LocalhostNodePortAcceptedNFAcctCounter

NODEPORTS_TAIL_COMMENT = '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"'


@dataclass(frozen=True)
class IptablesOptions:
    """Proxier settings that the plan does not carry (they change text, not decisions)."""

    masquerade_bit: int = 14
    random_fully: bool = False  # iptables supports --random-fully (HasRandomFully)
    nfacct: bool = False  # emit the nfacct matches current kube-proxy emits when counters exist
    conntrack_tcp_liberal: bool = False  # nf_conntrack_tcp_be_liberal set: no INVALID-drop rule
    comments: bool | None = None  # None: kube-proxy's large-cluster rule (> 1000 endpoints -> no SEP/SVC->SEP comments)
    mark_format: str = "real"  # "real": 0x00004000 as Go's %#08x; "test": 0x4000 as proxier_test.go's fake
    # (LOCAL, NOTLOCAL) token strings for interface-based detectors; default from
    # plan.config.detector ("-s CIDR", "! -s CIDR")
    detector_tokens: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.masquerade_bit <= 31:
            raise ValueError(f"masquerade_bit: {self.masquerade_bit} is not in 0..31")
        if self.mark_format not in ("real", "test"):
            raise ValueError(f"mark_format: {self.mark_format!r} is not 'real' or 'test'")

    @property
    def mark(self) -> str:
        """The masquerade mark as kube-proxy (or its test fake) spells it."""
        value = 1 << self.masquerade_bit
        return f"0x{value:08x}" if self.mark_format == "real" else hex(value)


_DEFAULT_OPTIONS = IptablesOptions()


# --------------------------------------------------------------------------- rendering


@dataclass
class _Buffers:
    filter_chains: list[str] = field(default_factory=list)
    filter_rules: list[str] = field(default_factory=list)
    nat_chains: list[str] = field(default_factory=list)
    nat_rules: list[str] = field(default_factory=list)
    # plugin rule text: (chain declarations, rules), after kube-proxy's own
    filter_extra: tuple[list[str], list[str]] = field(default_factory=lambda: ([], []))
    nat_extra: tuple[list[str], list[str]] = field(default_factory=lambda: ([], []))

    def filter_chain(self, name: str) -> None:
        self.filter_chains.append(f":{name} - [0:0]")

    def nat_chain(self, name: str) -> None:
        self.nat_chains.append(f":{name} - [0:0]")

    def filter(self, *tokens: str) -> None:
        self.filter_rules.append(" ".join(t for t in tokens if t))

    def nat(self, *tokens: str) -> None:
        self.nat_rules.append(" ".join(t for t in tokens if t))


def _detector_tokens(plan: ProxyPlan, options: IptablesOptions) -> tuple[str, str] | None:
    if options.detector_tokens is not None:
        return options.detector_tokens
    return plan.config.detector.iptables_tokens()


def _large_cluster_mode(plan: ProxyPlan) -> bool:
    """kube-proxy counts every endpoint of every service port (ready or not)."""
    return sum(len(pp.endpoints) for pp in plan.ports) > LARGE_CLUSTER_ENDPOINTS_THRESHOLD


# iptablesJumpChains (proxier.go): (table, built-in chain, kube chain, extra args, comment), in
# kube-proxy's list order. Each is ensured with ``iptables -C`` and else inserted at position 1,
# so on a clean table one built-in chain holds them in the reverse of this order (§6.6).
_NEW = "-m conntrack --ctstate NEW"
JUMP_CHAINS: tuple[tuple[str, str, str, str, str | None], ...] = (
    ("filter", "INPUT", KUBE_EXTERNAL_SERVICES, _NEW, "kubernetes externally-visible service portals"),
    ("filter", "FORWARD", KUBE_EXTERNAL_SERVICES, _NEW, "kubernetes externally-visible service portals"),
    ("filter", "INPUT", KUBE_NODEPORTS, "", "kubernetes health check service ports"),
    ("filter", "FORWARD", KUBE_SERVICES, _NEW, "kubernetes service portals"),
    ("filter", "OUTPUT", KUBE_SERVICES, _NEW, "kubernetes service portals"),
    ("filter", "FORWARD", KUBE_FORWARD, "", "kubernetes forwarding rules"),
    ("filter", "INPUT", KUBE_PROXY_FIREWALL, _NEW, "kubernetes load balancer firewall"),
    ("filter", "OUTPUT", KUBE_PROXY_FIREWALL, _NEW, "kubernetes load balancer firewall"),
    ("filter", "FORWARD", KUBE_PROXY_FIREWALL, _NEW, "kubernetes load balancer firewall"),
    ("nat", "OUTPUT", KUBE_SERVICES, "", "kubernetes service portals"),
    ("nat", "PREROUTING", KUBE_SERVICES, "", "kubernetes service portals"),
    ("nat", "POSTROUTING", KUBE_POSTROUTING, "", "kubernetes postrouting rules"),
    # kubelet's KUBE-FIREWALL, which kube-proxy fills when localhost NodePorts are on
    ("filter", "INPUT", KUBELET_FIREWALL, "", None),
    ("filter", "OUTPUT", KUBELET_FIREWALL, "", None),
)


def jump_rules(plan: ProxyPlan, table: str) -> list[str]:
    """The built-in chains' jumps into kube-proxy's chains, as they end up on a clean table."""
    with_firewall = plan.config.family == "IPv4" and plan.config.localhost_nodeports_active
    out = []
    for tbl, builtin, chain, extra, comment in reversed(JUMP_CHAINS):
        if tbl != table or (chain == KUBELET_FIREWALL and not with_firewall):
            continue
        words = ["-A", builtin, extra, f'-m comment --comment "{comment}"' if comment else "", "-j", chain]
        out.append(" ".join(w for w in words if w))
    return out


def render_iptables(
    plan: ProxyPlan, options: IptablesOptions = _DEFAULT_OPTIONS, *, with_jumps: bool = False
) -> str:
    """The complete ``iptables-restore`` input of one full sync, for ``plan.config.family``.

    ``with_jumps`` adds the jump rules kube-proxy ensures in the built-in chains (not part
    of its restore input), so the text loads into an empty network namespace as a working
    dataplane.
    """
    cfg = plan.config
    ipv6 = cfg.family == "IPv6"
    mark = options.mark
    localhost_nodeports = cfg.localhost_nodeports_active  # always False for IPv6
    detector = _detector_tokens(plan, options)
    comments = options.comments if options.comments is not None else not _large_cluster_mode(plan)
    node_ip = cfg.node_ips[0] if cfg.node_ips else None

    b = _Buffers()
    for chain in (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL):
        b.filter_chain(chain)
    for chain in (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ):
        b.nat_chain(chain)

    b.nat("-A", KUBE_POSTROUTING, "-m mark ! --mark", f"{mark}/{mark}", "-j RETURN")
    b.nat("-A", KUBE_POSTROUTING, "-j MARK --xor-mark", mark)
    b.nat(
        "-A", KUBE_POSTROUTING,
        '-m comment --comment "kubernetes service traffic requiring SNAT"',
        "-j MASQUERADE", "--random-fully" if options.random_fully else "",
    )
    b.nat("-A", KUBE_MARK_MASQ, "-j MARK --or-mark", mark)

    if not ipv6 and localhost_nodeports:
        b.filter_chain(KUBELET_FIREWALL)
        b.filter(
            "-A", KUBELET_FIREWALL,
            '-m comment --comment "block incoming localnet connections"',
            "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
        )

    for pp in plan.ports:
        _render_port(
            b, pp,
            mark_masq_all=cfg.masquerade_all,
            detector=detector,
            comments=comments,
            node_ip=node_ip,
            localhost_nodeport_counter=options.nfacct and not ipv6 and localhost_nodeports,
        )

    for rt in plugin_rules(plan, "iptables"):
        if rt.table not in ("filter", "nat"):
            raise ValueError(f"{rt!r}: table must be 'filter' or 'nat'")
        extra = b.filter_extra if rt.table == "filter" else b.nat_extra
        extra[0].extend(f":{c} - [0:0]" for c in rt.chains)
        extra[1].extend(rt.lines)

    # The NodePort catch-all, after every per-service KUBE-SERVICES rule (§6.4).
    if cfg.nodeport_match_all:
        if ipv6:
            dest = "-m addrtype --dst-type LOCAL ! -d ::1/128"
        elif not localhost_nodeports:
            dest = "-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8"
        else:
            dest = "-m addrtype --dst-type LOCAL"
        b.nat("-A", KUBE_SERVICES, "-m comment --comment", NODEPORTS_TAIL_COMMENT, dest, "-j", KUBE_NODEPORTS)
    else:
        for ip in cfg.nodeport_ips:
            if ipaddress.ip_address(ip).is_loopback and (ipv6 or not localhost_nodeports):
                continue
            b.nat("-A", KUBE_SERVICES, "-m comment --comment", NODEPORTS_TAIL_COMMENT, "-d", ip, "-j", KUBE_NODEPORTS)

    if not options.conntrack_tcp_liberal:
        b.filter(
            "-A", KUBE_FORWARD, "-m conntrack --ctstate INVALID",
            f"-m nfacct --nfacct-name {NFACCT_CT_INVALID}" if options.nfacct else "",
            "-j DROP",
        )
    b.filter(
        "-A", KUBE_FORWARD, '-m comment --comment "kubernetes forwarding rules"',
        "-m mark --mark", f"{mark}/{mark}", "-j ACCEPT",
    )
    b.filter(
        "-A", KUBE_FORWARD, '-m comment --comment "kubernetes forwarding conntrack rule"',
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    )

    jumps_f = jump_rules(plan, "filter") if with_jumps else []
    jumps_n = jump_rules(plan, "nat") if with_jumps else []
    builtin_f = [f":{c} ACCEPT [0:0]" for c in BUILTIN_CHAINS["filter"]] if with_jumps else []
    builtin_n = [f":{c} ACCEPT [0:0]" for c in BUILTIN_CHAINS["nat"]] if with_jumps else []
    lines = [
        "*filter", *builtin_f, *b.filter_chains, *b.filter_extra[0], *b.filter_rules, *b.filter_extra[1],
        *jumps_f, "COMMIT",
        "*nat", *builtin_n, *b.nat_chains, *b.nat_extra[0], *b.nat_rules, *b.nat_extra[1], *jumps_n, "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def _render_port(
    b: _Buffers,
    pp: PlanPort,
    *,
    mark_masq_all: bool,
    detector: tuple[str, str] | None,
    comments: bool,
    node_ip: str | None,
    localhost_nodeport_counter: bool,
) -> None:
    """One service port, in the order of proxier.go's service loop (KUBE-PROXY.md §6.3)."""
    spn = pp.spn
    match_proto = f"-m {pp.proto} -p {pp.proto}"
    has_endpoints = pp.has_endpoints
    has_internal = pp.has_internal_endpoints
    has_external = pp.has_external_endpoints
    cluster_chain = pp.svc_chain
    local_chain = pp.svl_chain
    internal_chain = local_chain if pp.internal_local else cluster_chain
    external_policy_chain = local_chain if pp.external_local else cluster_chain
    external_chain = pp.ext_chain
    fw_chain = pp.fw_chain
    uses_fw = pp.uses_fw_chain
    lb_chain = fw_chain if uses_fw else external_chain

    if not has_endpoints:
        internal_target = external_target = "REJECT"
        internal_comment = external_comment = f'"{spn} has no endpoints"'
    else:
        internal_target = external_target = "REJECT"
        internal_comment = external_comment = f'"{spn} has no endpoints"'
        if not has_internal:
            internal_target, internal_comment = "DROP", f'"{spn} has no local endpoints"'
        if not has_external:
            external_target, external_comment = "DROP", f'"{spn} has no local endpoints"'

    port = str(pp.port)
    # 1. cluster IP
    if has_internal:
        b.nat(
            "-A", KUBE_SERVICES, "-m comment --comment", f'"{spn} cluster IP"', match_proto,
            "-d", pp.cluster_ip, "--dport", port, "-j", internal_chain,
        )
    else:
        b.filter(
            "-A", KUBE_SERVICES, "-m comment --comment", internal_comment, match_proto,
            "-d", pp.cluster_ip, "--dport", port, "-j", internal_target,
        )
    # 1b. plugin frontends with the internal policy: written like the cluster IP
    for fe in pp.internal_frontends:
        fe_match = (f"-m {fe.protocol.lower()} -p {fe.protocol.lower()}", "-d", str(fe.ip), "--dport", str(fe.port))
        if has_internal:
            b.nat("-A", KUBE_SERVICES, "-m comment --comment", f'"{spn} {fe.comment}"', *fe_match, "-j", internal_chain)
        else:
            b.filter("-A", KUBE_SERVICES, "-m comment --comment", internal_comment, *fe_match, "-j", internal_target)
    # 2. external IPs (and plugin frontends with the external policy, written the same way)
    for eip in pp.external_ips:
        if has_endpoints:
            b.nat(
                "-A", KUBE_SERVICES, "-m comment --comment", f'"{spn} external IP"', match_proto,
                "-d", eip, "--dport", port, "-j", external_chain,
            )
        if not has_external:
            b.filter(
                "-A", KUBE_EXTERNAL_SERVICES, "-m comment --comment", external_comment, match_proto,
                "-d", eip, "--dport", port, "-j", external_target,
            )
    for fe in pp.external_frontends:
        fe_match = (f"-m {fe.protocol.lower()} -p {fe.protocol.lower()}", "-d", str(fe.ip), "--dport", str(fe.port))
        if has_endpoints:
            b.nat("-A", KUBE_SERVICES, "-m comment --comment", f'"{spn} {fe.comment}"', *fe_match, "-j", external_chain)
        if not has_external:
            b.filter(
                "-A", KUBE_EXTERNAL_SERVICES, "-m comment --comment", external_comment, *fe_match,
                "-j", external_target,
            )
    # 3. load-balancer IPs
    for lbip in pp.lb_ips:
        if has_endpoints:
            b.nat(
                "-A", KUBE_SERVICES, "-m comment --comment", f'"{spn} loadbalancer IP"', match_proto,
                "-d", lbip, "--dport", port, "-j", lb_chain,
            )
        if uses_fw:
            b.filter(
                "-A", KUBE_PROXY_FIREWALL, "-m comment --comment", f'"{spn} traffic not accepted by {fw_chain}"',
                match_proto, "-d", lbip, "--dport", port, "-j DROP",
            )
    # 4. load-balancer IPs without (local) endpoints
    if not has_external:
        for lbip in pp.lb_ips:
            b.filter(
                "-A", KUBE_EXTERNAL_SERVICES, "-m comment --comment", external_comment, match_proto,
                "-d", lbip, "--dport", port, "-j", external_target,
            )
    # 5. node port
    if pp.node_port:
        node_port = str(pp.node_port)
        if has_endpoints:
            if localhost_nodeport_counter:
                b.nat(
                    "-A", KUBE_NODEPORTS, "-m comment --comment", spn, match_proto, "-d 127.0.0.0/8",
                    "--dport", node_port, f"-m nfacct --nfacct-name {NFACCT_LOCALHOST_NP}", "-j", external_chain,
                )
            b.nat(
                "-A", KUBE_NODEPORTS, "-m comment --comment", spn, match_proto,
                "--dport", node_port, "-j", external_chain,
            )
        if not has_external:
            b.filter(
                "-A", KUBE_EXTERNAL_SERVICES, "-m comment --comment", external_comment,
                "-m addrtype --dst-type LOCAL", match_proto, "--dport", node_port, "-j", external_target,
            )
    # 6. health check node port (regardless of endpoints)
    if pp.health_check_node_port:
        b.filter(
            "-A", KUBE_NODEPORTS, "-m comment --comment", f'"{spn} health check node port"',
            "-m tcp -p tcp --dport", str(pp.health_check_node_port), "-j ACCEPT",
        )

    # 7. internal masquerade (into the internal traffic chain, which may be KUBE-SVL)
    if has_internal:
        internal = [(pp.cluster_ip, port, "cluster IP", match_proto)] + [
            (str(fe.ip), str(fe.port), fe.comment, f"-m {fe.protocol.lower()} -p {fe.protocol.lower()}")
            for fe in pp.internal_frontends
        ]
        for ip, dport, what, match in internal:
            head = ("-A", internal_chain, "-m comment --comment", f'"{spn} {what}"', match, "-d", ip, "--dport", dport)
            if mark_masq_all:
                b.nat(*head, "-j", KUBE_MARK_MASQ)
            elif detector is not None:
                b.nat(*head, detector[1], "-j", KUBE_MARK_MASQ)

    # 8. external traffic chain
    if pp.uses_external_chain:
        b.nat_chain(external_chain)
        if not pp.external_local:
            b.nat(
                "-A", external_chain, "-m comment --comment",
                f'"masquerade traffic for {spn} external destinations"', "-j", KUBE_MARK_MASQ,
            )
        else:
            if detector is not None:
                b.nat(
                    "-A", external_chain, "-m comment --comment",
                    f'"pod traffic for {spn} external destinations"', detector[0], "-j", cluster_chain,
                )
            b.nat(
                "-A", external_chain, "-m comment --comment",
                f'"masquerade LOCAL traffic for {spn} external destinations"',
                "-m addrtype --src-type LOCAL -j", KUBE_MARK_MASQ,
            )
            b.nat(
                "-A", external_chain, "-m comment --comment",
                f'"route LOCAL traffic for {spn} external destinations"',
                "-m addrtype --src-type LOCAL -j", cluster_chain,
            )
        if has_external:
            b.nat("-A", external_chain, "-j", external_policy_chain)

    # 9. load-balancer source ranges
    if uses_fw:
        b.nat_chain(fw_chain)
        fw_head = ("-A", fw_chain, "-m comment --comment", f'"{spn} loadbalancer IP"')
        allow_from_node = False
        for cidr in pp.source_ranges:
            b.nat(*fw_head, "-s", cidr, "-j", external_chain)
            if node_ip is not None and _cidr_contains(cidr, node_ip):
                allow_from_node = True
        if allow_from_node:
            for lbip in pp.lb_ips:
                b.nat(*fw_head, "-s", lbip, "-j", external_chain)
        other = f'"other traffic to {spn} will be dropped by {KUBE_PROXY_FIREWALL}"'
        b.nat("-A", fw_chain, "-m comment --comment", other)

    # 10-11. policy chains
    if pp.uses_cluster_chain:
        b.nat_chain(cluster_chain)
        _service_to_endpoint_rules(b, pp, cluster_chain, pp.cluster, comments)
    if pp.uses_local_chain:
        b.nat_chain(local_chain)
        _service_to_endpoint_rules(b, pp, local_chain, pp.local, comments)

    # 12. endpoint chains
    for ep in pp.all_reachable:
        sep = pp.sep_chain(ep)
        b.nat_chain(sep)
        comment = ("-m comment --comment", spn) if comments else ()
        b.nat("-A", sep, *comment, "-s", ep.ip, "-j", KUBE_MARK_MASQ)
        affinity = ("-m recent --name", sep, "--set") if pp.affinity_timeout else ()
        b.nat("-A", sep, *comment, *affinity, match_proto, "-j DNAT --to-destination", ep.endpoint)


def _service_to_endpoint_rules(
    b: _Buffers, pp: PlanPort, chain: str, endpoints: Sequence[EndpointInfo], comments: bool
) -> None:
    """``writeServiceToEndpointRules``: affinity checks first, then the probability cascade."""
    def comment(ep: EndpointInfo) -> tuple[str, ...]:
        return ("-m comment --comment", f'"{pp.spn} -> {ep.endpoint}"') if comments else ()

    if pp.affinity_timeout:
        for ep in endpoints:
            sep = pp.sep_chain(ep)
            b.nat(
                "-A", chain, *comment(ep), "-m recent --name", sep,
                "--rcheck --seconds", str(pp.affinity_timeout), "--reap -j", sep,
            )
    mode, order, weights = selection_rules(pp, endpoints)
    if mode == "cycle":  # round-robin: one nth rule per position of the cycle
        for k, i in enumerate(order):
            ep = endpoints[i]
            nth = ("-m statistic --mode nth --every", str(len(order) - k), "--packet 0") if k < len(order) - 1 else ()
            b.nat("-A", chain, *comment(ep), *nth, "-j", pp.sep_chain(ep))
        return
    n = len(endpoints)
    rest = sum(weights)
    for i, ep in enumerate(endpoints):
        if i == n - 1:
            stat: tuple[str, ...] = ()
        elif mode == "weighted":
            stat = ("-m statistic --mode random --probability", weighted_probability(weights[i], rest))
            rest -= weights[i]
        else:
            stat = ("-m statistic --mode random --probability", compute_probability(n - i))
        b.nat("-A", chain, *comment(ep), *stat, "-j", pp.sep_chain(ep))


def _cidr_contains(cidr: str, ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False


# --------------------------------------------------------------------------- parsing dumps


@dataclass
class _Chain:
    name: str
    counters: str = "[0:0]"
    rules: list[str] = field(default_factory=list)
    deleted: bool = False
    policy: str = "-"  # ACCEPT/DROP for a built-in chain


# built-in chains per table, in the kernel's order (iptables-save lists them first)
BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}


@dataclass
class _Table:
    name: str
    chains: list[_Chain] = field(default_factory=list)

    def chain(self, name: str) -> _Chain | None:
        return next((c for c in self.chains if c.name == name), None)


def _split_words(line: str) -> list[str]:
    """Split a rule on spaces; a double-quoted word is one word, without its quotes."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        if line[i] == " ":
            i += 1
            continue
        if line[i] == '"':
            end = line.find('"', i + 1)
            if end < 0:
                raise ValueError(f"unterminated quote in {line!r}")
            words.append(line[i + 1 : end])
            i = end + 1
        else:
            end = line.find(" ", i)
            end = n if end < 0 else end
            words.append(line[i:end])
            i = end
    return words


def _parse_dump(text: str) -> list[_Table]:
    """``iptablestest.ParseIPTablesDump``, keeping each rule's raw text."""
    tables: list[_Table] = []
    table: _Table | None = None
    for lineno, raw in enumerate(text.strip("\n").split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            if table is not None:
                raise ValueError(f"line {lineno}: table {line[1:]} starts before {table.name} is committed")
            table = _Table(line[1:])
            continue
        if table is None:
            raise ValueError(f"line {lineno}: {line!r} outside of a table")
        if line == "COMMIT":
            tables.append(table)
            table = None
        elif line.startswith(":"):
            fields = line[1:].split()
            if not fields:
                raise ValueError(f"line {lineno}: bad chain line {line!r}")
            if table.chain(fields[0]) is not None:
                raise ValueError(f"line {lineno}: duplicate chain {fields[0]}")
            table.chains.append(
                _Chain(
                    fields[0], fields[2] if len(fields) > 2 else "[0:0]", policy=fields[1] if len(fields) > 1 else "-"
                )
            )
        elif line.startswith(("-A ", "-X ")):
            fields = line.split()
            chain = table.chain(fields[1]) if len(fields) > 1 else None
            if chain is None:
                raise ValueError(f"line {lineno}: {line!r} names an undeclared chain")
            if line.startswith("-A "):
                chain.rules.append(line)
            else:
                chain.deleted = True
        else:
            raise ValueError(f"line {lineno}: unexpected {line!r}")
    if table is not None:
        raise ValueError(f"table {table.name} is not committed")
    return tables


def _comment_of(rule: str) -> str | None:
    words = _split_words(rule)
    for i, w in enumerate(words[:-1]):
        if w == "--comment":
            return words[i + 1]
    return None


def _service_name(comment: str) -> str:
    """The comment up to the first space or colon (``orderByCommentServiceName``)."""
    cut = [i for i in (comment.find(" "), comment.find(":")) if i >= 0]
    return comment[: min(cut)] if cut else comment


def _stable_sort(rules: list[str], less: Callable[[str, str], bool]) -> list[str]:
    def cmp(a: str, b: str) -> int:
        return -1 if less(a, b) else (1 if less(b, a) else 0)

    return sorted(rules, key=cmp_to_key(cmp))


def _by_service_name(a: str, b: str) -> bool:
    ca, cb = _comment_of(a), _comment_of(b)
    if ca is None or cb is None:
        return False
    return _service_name(ca) < _service_name(cb)


def _nat_services_less(a: str, b: str) -> bool:
    ca, cb = _comment_of(a), _comment_of(b)
    if ca is not None and "must be the last rule" in ca:
        return False
    if cb is not None and "must be the last rule" in cb:
        return True
    return _by_service_name(a, b)


def _chain_order(name: str) -> tuple[int, str]:
    if name == KUBE_NODEPORTS:
        return (0, "")
    if name == KUBE_SERVICES:
        return (1, "")
    return (2, name) if name.startswith("KUBE-") else (3, name)


def normalize_like_kube_proxy_tests(text: str) -> str:
    """proxier_test.go's ``sortIPTablesRules`` followed by ``IPTablesDump.String()`` (§9).

    Tables by name; chains KUBE-NODEPORTS, KUBE-SERVICES, other ``KUBE-*``, the rest
    (each group by name); all chain lines, then every chain's rules in chain order,
    then ``-X`` lines, then ``COMMIT``. The rules of KUBE-NODEPORTS and KUBE-SERVICES
    (both tables) are stably sorted by the service name in their comment, keeping
    nat KUBE-SERVICES' "must be the last rule" rule last; other chains keep their
    order.
    """
    tables = sorted(_parse_dump(text), key=lambda t: t.name)
    out: list[str] = []
    for t in tables:
        t.chains.sort(key=lambda c: _chain_order(c.name))
        for c in t.chains:
            if c.name == KUBE_NODEPORTS or (c.name == KUBE_SERVICES and t.name == "filter"):
                c.rules = _stable_sort(c.rules, _by_service_name)
            elif c.name == KUBE_SERVICES and t.name == "nat":
                c.rules = _stable_sort(c.rules, _nat_services_less)
        out.append(f"*{t.name}")
        out.extend(f":{c.name} - {c.counters}" for c in t.chains)
        for c in t.chains:
            out.extend(c.rules)
        out.extend(f"-X {c.name}" for c in t.chains if c.deleted)
        out.append("COMMIT")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- iptables-save form

_BASIC = ("-s", "-d", "-i", "-o", "-p")
_BASIC_ALIASES = {
    "--source": "-s", "--src": "-s", "--destination": "-d", "--dst": "-d",
    "--in-interface": "-i", "--out-interface": "-o", "--protocol": "-p",
}
# option -> number of arguments (options not listed take the words up to the next option)
_OPTION_ARGS = {
    "--comment": 1, "--dport": 1, "--sport": 1, "--destination-port": 1, "--source-port": 1,
    "--src-type": 1, "--dst-type": 1, "--ctstate": 1, "--mark": 1, "--mode": 1, "--probability": 1,
    "--name": 1, "--seconds": 1, "--hitcount": 1, "--mask": 1, "--nfacct-name": 1,
    "--set": 0, "--rcheck": 0, "--update": 0, "--remove": 0, "--reap": 0, "--rttl": 0,
    "--rsource": 0, "--rdest": 0,
    "--to-destination": 1, "--to-source": 1, "--or-mark": 1, "--xor-mark": 1, "--and-mark": 1,
    "--set-mark": 1, "--set-xmark": 1, "--random-fully": 0, "--random": 0, "--persistent": 0,
    "--reject-with": 1, "--to-ports": 1,
}
_MODULE_OPTIONS = {
    "comment": {"--comment"},
    "tcp": {"--dport", "--sport", "--destination-port", "--source-port"},
    "udp": {"--dport", "--sport", "--destination-port", "--source-port"},
    "sctp": {"--dport", "--sport", "--destination-port", "--source-port"},
    "addrtype": {"--src-type", "--dst-type"},
    "conntrack": {"--ctstate"},
    "mark": {"--mark"},
    "statistic": {"--mode", "--probability"},
    "recent": {"--name", "--set", "--rcheck", "--update", "--remove", "--seconds", "--reap",
               "--hitcount", "--rttl", "--mask", "--rsource", "--rdest"},
    "nfacct": {"--nfacct-name"},
}
_CTSTATES = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT")


@dataclass
class _Opt:
    name: str
    args: list[str]
    negated: bool = False


def _hex(value: str) -> str:
    return hex(int(value, 0))


def _mark_value(text: str) -> str:
    value, _, mask = text.partition("/")
    if not mask or int(mask, 0) == 0xFFFFFFFF:
        return _hex(value)
    return f"{_hex(value)}/{_hex(mask)}"


def _save_address(text: str, v6: bool) -> str:
    net = ipaddress.ip_network(text, strict=False)
    if (net.version == 6) != v6:
        raise ValueError(f"{text!r} is not an {'IPv6' if v6 else 'IPv4'} address")
    return f"{net.network_address}/{net.prefixlen}"


def _save_probability(text: str) -> str:
    stored = math.floor(0x80000000 * float(text) + 0.5)  # lround() in libxt_statistic
    return f"{stored / 0x80000000:.11f}"


def _format_opts(opts: list[_Opt]) -> list[str]:
    out: list[str] = []
    for o in opts:
        if o.negated:
            out.append("!")
        out.append(o.name)
        out.extend(o.args)
    return out


def _save_match(module: str, opts: list[_Opt], v6: bool) -> list[str]:
    if module == "comment":
        return ["-m", "comment", *(f'{o.name} "{o.args[0]}"' for o in opts)]
    if module == "mark":
        for o in opts:
            if o.name == "--mark":
                o.args = [_mark_value(o.args[0])]
    elif module == "conntrack":
        for o in opts:
            if o.name == "--ctstate":
                states = o.args[0].split(",")
                o.args = [",".join(sorted(states, key=lambda s: _CTSTATES.index(s) if s in _CTSTATES else 99))]
    elif module == "statistic":
        for o in opts:
            if o.name == "--probability":
                o.args = [_save_probability(o.args[0])]
    elif module == "recent":
        named = {o.name: o for o in opts}
        ordered = [named[k] for k in ("--rcheck", "--set", "--update", "--remove") if k in named]
        ordered += [named[k] for k in ("--seconds", "--reap", "--hitcount", "--rttl", "--name") if k in named]
        mask = named.get("--mask")
        ordered.append(mask or _Opt("--mask", ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" if v6 else "255.255.255.255"]))
        ordered.append(named.get("--rdest") or named.get("--rsource") or _Opt("--rsource", []))
        opts = ordered
    elif module in ("addrtype", "tcp", "udp", "sctp"):
        order = ["--src-type", "--dst-type"] if module == "addrtype" else ["--sport", "--dport"]
        opts = sorted(opts, key=lambda o: order.index(o.name) if o.name in order else len(order))
    return ["-m", module, *_format_opts(opts)]


def _save_target(target: str, opts: list[_Opt], v6: bool) -> list[str]:
    if target == "MARK":
        for o in opts:
            value = o.args[0]
            if o.name == "--or-mark":
                o.name, o.args = "--set-xmark", [f"{_hex(value)}/{_hex(value)}"]
            elif o.name == "--xor-mark":
                o.name, o.args = "--set-xmark", [f"{_hex(value)}/0x0"]
            elif o.name == "--set-mark":
                v, _, m = value.partition("/")
                o.name, o.args = "--set-xmark", [f"{_hex(v)}/{_hex(m) if m else '0xffffffff'}"]
            elif o.name == "--and-mark":
                o.name, o.args = "--set-xmark", [f"0x0/{hex(~int(value, 0) & 0xFFFFFFFF)}"]
            elif o.name == "--set-xmark":
                v, _, m = value.partition("/")
                o.args = [f"{_hex(v)}/{_hex(m) if m else '0xffffffff'}"]
    elif target == "REJECT" and not any(o.name == "--reject-with" for o in opts):
        opts = [*opts, _Opt("--reject-with", ["icmp6-port-unreachable" if v6 else "icmp-port-unreachable"])]
    return ["-j", target, *_format_opts(opts)]


def _save_rule(line: str, v6: bool) -> str:
    words = _split_words(line)
    if len(words) < 2 or words[0] != "-A":
        raise ValueError(f"not a rule: {line!r}")
    basic: dict[str, tuple[bool, str]] = {}
    matches: list[tuple[str, list[_Opt]]] = []
    target: str | None = None
    target_opts: list[_Opt] = []
    negate = False
    i = 2
    while i < len(words):
        w = _BASIC_ALIASES.get(words[i], words[i])
        if w == "!":
            negate = True
            i += 1
            continue
        if w in _BASIC:
            basic[w] = (negate, words[i + 1])
            i += 2
        elif w == "-m" or w == "--match":
            matches.append((words[i + 1], []))
            i += 2
        elif w == "-j" or w == "--jump":
            target = words[i + 1]
            i += 2
        elif w.startswith("-"):
            nargs = _OPTION_ARGS.get(w)
            if nargs is None:
                j = i + 1
                while j < len(words) and not words[j].startswith("-") and words[j] != "!":
                    j += 1
                args = words[i + 1 : j]
            else:
                args = words[i + 1 : i + 1 + nargs]
            opt = _Opt(w, list(args), negate)
            if target is not None:
                target_opts.append(opt)
            else:
                owner = next((m for m in reversed(matches) if w in _MODULE_OPTIONS.get(m[0], ())), None)
                if owner is None and not matches:
                    raise ValueError(f"option {w} before any match in {line!r}")
                (owner or matches[-1])[1].append(opt)
            i += 1 + len(args)
        else:
            raise ValueError(f"unexpected word {w!r} in {line!r}")
        negate = False

    out = ["-A", words[1]]
    for key in _BASIC:
        if key in basic:
            neg, value = basic[key]
            if key in ("-s", "-d"):
                value = _save_address(value, v6)
            out += ["!", key, value] if neg else [key, value]
    for module, opts in matches:
        out += _save_match(module, opts, v6)
    if target is not None:
        out += _save_target(target, target_opts, v6)
    return " ".join(out)


def to_iptables_save(text: str, family: Family) -> str:
    """The canonical form ``iptables-save``/``ip6tables-save`` prints after restoring ``text`` (§10).

    Per rule: basic matches first (``[!] -s``, ``[!] -d``, ``-i``, ``-o``, ``-p``, host
    addresses with ``/32`` or ``/128``), then the ``-m`` matches in the given order with
    comments double-quoted, marks in minimal hex, ``--probability`` as ``%.11f`` of
    ``lround(p * 2^31) / 2^31``, ``recent`` with its defaults
    (``--mask``, ``--rsource``), then the target with ``MARK`` as ``--set-xmark`` and
    ``REJECT``'s default ``--reject-with``. Chains are listed by name (libiptc keeps
    user chains sorted) with their rules grouped; chains that ``text`` deletes with
    ``-X`` are gone. Only the chains in ``text`` are printed (no built-in chains,
    counters ``[0:0]``); tables keep their order in ``text``.
    """
    v6 = family == "IPv6"
    out: list[str] = []
    for t in _parse_dump(text):
        builtin = BUILTIN_CHAINS.get(t.name, ())
        chains = sorted(
            (c for c in t.chains if not c.deleted),
            key=lambda c: (0, builtin.index(c.name), "") if c.name in builtin else (1, 0, c.name),
        )
        out.append(f"*{t.name}")
        out.extend(f":{c.name} {c.policy} [0:0]" for c in chains)
        for c in chains:
            for rule in c.rules:
                try:
                    out.append(_save_rule(rule, v6))
                except IndexError:
                    raise ValueError(f"truncated rule: {rule!r}") from None
        out.append("COMMIT")
    return "\n".join(out) + "\n"

"""Why a packet went where it went: the chain path, every candidate and every reason.

A Trace combines the plan (what kube-proxy wrote for this node) with the engine's
actual decision for the packet (which includes established flows and session
affinity); it never changes the engine's flow or affinity tables.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .addresses import Family, join_host_port
from .chains import (
    KUBE_MARK_MASQ,
    KUBE_NODEPORTS,
    KUBE_SERVICES,
    NFT_CLUSTER_IPS_CHECK,
    NFT_MARK_MASQ,
    NFT_SERVICES,
    compute_probability,
    endpoint_chain_name_base,
    nft_filter_chain,
    nft_nat_chain,
    weighted_probability,
)
from .errors import PacketError, PluginError
from .model import PROTO_NAMES, Cluster
from .plan import (
    EndpointInfo,
    PlanPort,
    ProxyConfig,
    Walk,
    fw_active,
    fw_allows,
    fw_sources,
    walk,
)
from .selectors import selection_form
from .servicetypes import CORE
from .tables import PortEntry

if TYPE_CHECKING:
    from .dns import Zone
    from .plugins import KproxyPluginManager


class TracedEngine(Protocol):
    """What a trace reads of an engine (:class:`kproxy_core.Engine` is one): its core's
    frontend tables and decision (and the kinds its frontend codes stand for), its
    per-family entries and configs, and its cluster."""

    @property
    def _core(self) -> Any: ...  # the Core: frontend(dst, dport, proto), lookup(..., 2)

    @property
    def _states(self) -> Any: ...  # family -> tables.FamilyState

    @property
    def cluster(self) -> Cluster: ...

    @property
    def configs(self) -> Mapping[Family, ProxyConfig]: ...

    @property
    def node(self) -> str | None: ...

    @property
    def plugins(self) -> KproxyPluginManager: ...

    @property
    def frontend_names(self) -> Sequence[str | None]: ...  # the kinds of its core's codes

    @property
    def service_cidrs(self) -> tuple[str, ...]: ...

    def plan_of(self, family: Family, entry: PortEntry) -> PlanPort: ...

    def port_entry(self, family: Family, spn: str) -> PortEntry | None: ...

    def dns_zone(self) -> Zone: ...


@dataclass
class Trace:
    packet: dict[str, Any]
    node: str | None
    family: Family
    verdict: str
    service: str | None = None
    frontend: str | None = None
    endpoint: str | None = None
    masquerade: bool = False
    candidates: list[dict[str, Any]] = field(default_factory=list)
    filtered: list[dict[str, str]] = field(default_factory=list)
    chains: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "packet": self.packet,
            "node": self.node,
            "family": self.family,
            "verdict": self.verdict,
            "service": self.service,
            "frontend": self.frontend,
            "endpoint": self.endpoint,
            "masquerade": self.masquerade,
            "candidates": self.candidates,
            "filtered": self.filtered,
            "chains": self.chains,
            "steps": self.steps,
        }

    def __str__(self) -> str:
        p = self.packet
        src = join_host_port(p["src"], p["sport"])
        dst = join_host_port(p["dst"], p["dport"])
        name = f" ({p['dst_name']})" if p.get("dst_name") and p["dst_name"] != p["dst"] else ""
        rows: list[tuple[str, str]] = [
            ("packet", f"{src} -> {dst} {p['proto']}{name}"),
            ("node", f"{self.node or '(off-cluster observer)'} ({self.family})"),
        ]
        verdict = self.verdict
        if self.endpoint:
            verdict += f" to {self.endpoint}"
        rows.append(("verdict", verdict))
        if self.service:
            rows.append(("service", f"{self.service} via {self.frontend}" if self.frontend else self.service))
        if self.verdict == "DNAT":
            rows.append(("masquerade", "yes (source NAT to the node)" if self.masquerade else "no"))
        if self.chains:
            rows.append(("chains", " -> ".join(self.chains)))
        width = max(len(k) for k, _ in rows)
        lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
        if self.candidates:
            lines.append("candidates")
            noted = any("note" in c for c in self.candidates)
            table = [("endpoint", "probability", "rule", "node", "local") + (("note",) if noted else ())]
            for c in self.candidates:
                table.append((
                    c["endpoint"] + (" *" if c["endpoint"] == self.endpoint else ""),
                    f"{c['probability']:.4f}",
                    c["rule_probability"] or "(last rule)",
                    c["node"] or "-",
                    "yes" if c["local"] else "no",
                ) + ((c.get("note", "-"),) if noted else ()))
            lines += _table(table)
        if self.filtered:
            lines.append("filtered out")
            lines += _table([("endpoint", "reason")] + [(f["endpoint"], f["reason"]) for f in self.filtered])
        if self.steps:
            lines.append("why")
            lines += [f"  {i}. {s}" for i, s in enumerate(self.steps, 1)]
        return "\n".join(lines)


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _match(
    engine: TracedEngine, fam: Family, dst: str, dport: int, proto: str
) -> tuple[PlanPort | None, str | None, bool]:
    """The frontend a NEW packet hits: the core's own frontend and NodePort tables answer
    (one hash lookup each, whatever the number of services), then the port's plan."""
    svc, kind, how = engine._core.frontend(dst, dport, proto)
    if how not in (1, 2):
        return None, None, False
    entry = engine._states[fam].entries.get(svc)
    if entry is None:  # pragma: no cover - the core and the engine hold the same ports
        return None, None, False
    if how == 2:
        return engine.plan_of(fam, entry), "NodePort", engine.configs[fam].nodeport_accepts(dst)
    return engine.plan_of(fam, entry), engine.frontend_names[kind], True


def trace_packet(
    engine: TracedEngine, src: str, dst: str, dport: int, proto: str | int, sport: int, now: float | None
) -> Trace:
    decision = engine._core.lookup(src, dst, dport, proto, sport, now, 2)
    s_ip, d_ip = _address(src), _address(dst)
    fam: Family = "IPv4" if s_ip.version == 4 else "IPv6"
    proto_name = PROTO_NAMES[proto] if isinstance(proto, int) else proto.upper()
    if proto_name not in ("TCP", "UDP", "SCTP"):
        raise PacketError(f"protocol {proto!r} is not one of TCP, UDP, SCTP")
    src_s, dst_s = str(s_ip), str(d_ip)
    t = Trace(
        packet={"src": src_s, "sport": sport, "dst": dst_s, "dport": dport, "proto": proto_name},
        node=engine.node,
        family=fam,
        verdict=decision.verdict,
        service=decision.service,
        frontend=decision.frontend,
        masquerade=decision.masquerade,
    )
    if decision.endpoint is not None:
        t.endpoint = join_host_port(*decision.endpoint)
    cfg = engine.configs[fam]
    pp, kind, accepted = _match(engine, fam, dst_s, dport, proto_name)
    from_local = cfg.is_local_address(src_s)
    if cfg.nftables:
        # every packet runs through nat-prerouting/nat-output -> services (two vmap lookups)
        pass_chains = [nft_nat_chain(from_local), NFT_SERVICES]
    else:
        # every packet runs through nat KUBE-SERVICES; the tail rule sends NodePort addresses on
        pass_chains = [KUBE_SERVICES] + ([KUBE_NODEPORTS] if cfg.nodeport_accepts(dst_s) else [])
    if (pp is None or kind is None) and cfg.nftables and not cfg.is_local_address(dst_s):
        _cluster_ips_check(t, engine, fam, dst_s, dport, proto_name, from_local, pass_chains)
        return t
    if pp is None or kind is None:
        t.steps.append(
            f"{join_host_port(dst_s, dport)}/{proto_name} is no cluster IP, external IP, "
            "load-balancer IP or NodePort on this node: kube-proxy leaves the packet alone"
        )
        t.chains = pass_chains
        if decision.verdict != "PASS":
            t.steps.append(f"an established flow still carries it ({decision.verdict})")
        return t
    from_pod = cfg.detector.implemented and cfg.detector.is_local(src_s)
    allowed = kind != "LoadBalancer" or fw_allows(pp, cfg, src_s)
    w = walk(pp, cfg, kind, from_pod=from_pod, from_local=from_local, nodeport_accepted=accepted,
             source_allowed=allowed, dst_local=cfg.is_local_address(dst_s))
    t.steps.extend(_source_steps(cfg, src_s, from_pod, from_local))
    if kind == "LoadBalancer" and fw_active(pp, cfg):
        fw_name = "the firewall chain" if cfg.nftables else "KUBE-FW"
        t.steps.append(
            f"source {src_s} is {'inside' if allowed else 'outside'} the sources {fw_name} allows "
            f"({', '.join(fw_sources(pp, cfg))})"
        )
    t.steps.extend(w.steps)
    t.steps.extend(plugin_steps(engine, pp, kind))
    t.chains = list(w.chains) if w.verdict != "PASS" else pass_chains
    _explain_pool(t, pp, w, decision, engine, src_s, now)
    return t


def plugin_steps(engine: TracedEngine, pp: PlanPort, kind: str | None) -> list[str]:
    """What the plugin behind ``pp``'s Service type adds to the explanation."""
    registry = engine.plugins.registry
    svc = engine.cluster.services.get((pp.namespace, pp.service))
    if svc is None or registry.owner(pp.service_type) == CORE:
        return []
    return [str(step) for step in registry.call(pp.service_type, "trace_steps", svc, pp, kind)]


def trace_name(
    engine: TracedEngine,
    src: str,
    name: str,
    dport: int,
    proto: str | int,
    sport: int,
    now: float | None,
    namespace: str | None = None,
) -> Trace:
    """Trace a packet to a DNS name: resolve it as a pod in ``namespace`` would (default: the
    namespace of the pod whose address ``src`` is, else ``default``), A for an IPv4 source
    and AAAA for IPv6, with the pod's search path and ndots:5; then trace the packet to the
    first address. A name without an address (an ExternalName's CNAME out of the cluster,
    NXDOMAIN) is explained instead."""
    from ._engine_py import _check_port, _proto, clock
    from .dns import resolve_as_pod

    try:
        v6 = _address(src).version == 6
    except ValueError:
        raise PacketError(f"source {src!r} is not an IP address") from None
    # what the lookup would refuse, refused before resolving (a name without an address
    # never reaches it: a bad protocol was a KeyError there)
    number = _proto(proto)
    _check_port(dport, "dport")
    _check_port(sport, "sport")
    if now is not None:
        clock(now)
    if namespace is not None and not isinstance(namespace, str):
        raise PacketError(f"namespace must be a namespace's name, not {namespace!r}")
    ns = namespace or _namespace_of(engine, str(_address(src))) or "default"
    try:
        walk = resolve_as_pod(engine.dns_zone(), name, "AAAA" if v6 else "A", ns)
    except ValueError as e:
        raise PacketError(f"resolving {name!r}: {e}") from None
    ans = walk.answer
    steps = [f"DNS: {walk.query!r} resolved as a pod in namespace {ns} does "
             f"(search {' '.join(walk.search)}, ndots:{walk.ndots})"]
    steps += [f"DNS {t.rtype} {t.name}: {t.rcode}{' (NODATA)' if t.nodata else ''}" for t in walk.tried if t is not ans]
    steps.append(f"DNS {ans.rtype} {ans.name}: {ans.rcode}{' (NODATA)' if ans.nodata else ''}")
    steps += [f"DNS answer: {r.name}. {r.rtype} {r.data}" for r in ans.records]
    steps += [f"DNS: {n}" for n in ans.notes]
    address = next((r.data for r in ans.records if r.rtype == ans.rtype), None)
    if address is not None:
        t = trace_packet(engine, src, address, dport, proto, sport, now)
        t.packet["dst_name"] = ans.name
        t.steps[:0] = steps
        return t
    proto_name = PROTO_NAMES[number]
    t = Trace(
        packet={"src": str(_address(src)), "sport": sport, "dst": ans.name, "dport": dport, "proto": proto_name,
                "dst_name": ans.name},
        node=engine.node,
        family="IPv6" if v6 else "IPv4",
        verdict="PASS",
        steps=steps,
    )
    svc = _service_of_name(engine, ans.name)
    if svc is not None and svc.type in engine.plugins.registry:
        t.service = svc.ref
        t.steps += [str(x) for x in engine.plugins.registry.call(svc.type, "trace_steps", svc, None, None)]
    t.steps.append("no cluster address to send the packet to: kube-proxy never sees it")
    return t


def _address(x: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as the core reads it: text, or an int (``str(int)`` is no address)."""
    return ipaddress.ip_address(x if isinstance(x, str | int) else str(x))


def _namespace_of(engine: TracedEngine, ip: str) -> str | None:
    """The namespace of the pod (an endpoint's targetRef, else its slice) whose address ``ip`` is."""
    for sl in engine.cluster.slices.values():
        for ep in sl.endpoints:
            if ip in ep.addresses:
                if ep.target and ep.target.startswith("Pod ") and "/" in ep.target:
                    return ep.target[4:].partition("/")[0]
                return sl.namespace
    return None


def _service_of_name(engine: TracedEngine, name: str) -> Any:
    labels = name.lower().split(".")
    if len(labels) >= 4 and labels[2] == "svc":
        return engine.cluster.services.get((labels[1], labels[0]))
    return None


def _cluster_ips_check(
    t: Trace, engine: TracedEngine, fam: Family, dst: str, dport: int, proto: str, from_local: bool,
    pass_chains: list[str],
) -> None:
    """nftables mode, no frontend matched, destination not on the node: cluster-ips-check
    (from filter-forward / filter-output, after DNAT)."""
    svc, _, how = engine._core.frontend(dst, dport, proto)
    entry = engine._states[fam].entries.get(svc) if how == 3 else None
    owner = engine.plan_of(fam, entry) if entry is not None else None
    what = f"{join_host_port(dst, dport)}/{proto}"
    filt = nft_filter_chain(from_local, False)
    t.chains = list(pass_chains)
    if owner is not None:
        t.steps.append(
            f"{what} matches no service-ips element, but {dst} is the cluster IP of {owner.spn} "
            f"(in @cluster-ips): {filt} -> cluster-ips-check rejects traffic to invalid ports of ClusterIPs"
        )
        t.chains += [filt, NFT_CLUSTER_IPS_CHECK]
    else:
        nets = [n for n in engine.service_cidrs if _in_cidr(dst, n)]
        if nets:
            t.steps.append(
                f"{dst} is inside the service CIDR {nets[0]} but is no allocated cluster IP: "
                f"{filt} -> cluster-ips-check drops traffic to unallocated ClusterIPs"
            )
            t.chains += [filt, NFT_CLUSTER_IPS_CHECK]
        else:
            t.steps.append(
                f"{what} is no cluster IP, external IP, load-balancer IP or NodePort on this node "
                "and lies outside the service CIDRs: kube-proxy leaves the packet alone"
            )
    if t.verdict == "DNAT":
        t.steps.append("an established flow still carries it (DNAT)")


def _in_cidr(ip: str, cidr: str) -> bool:
    try:
        net = ipaddress.ip_network(cidr.strip(), strict=False)
    except ValueError:
        return False
    addr = ipaddress.ip_address(ip)
    return addr.version == net.version and addr in net


def _source_steps(cfg: ProxyConfig, src: str, from_pod: bool, from_local: bool) -> list[str]:
    det = cfg.detector
    what = []
    if det.implemented:
        what.append(f"source {src} is {'a local pod' if from_pod else 'not a local pod'}: {det.describe()}")
    else:
        what.append("no local-traffic detector (no --cluster-cidr): pod and non-pod sources look alike")
    if from_local:
        how = "fib saddr type local" if cfg.nftables else "addrtype LOCAL"
        what.append(f"source {src} is an address of the node itself ({how})")
    return what


def _suppliers(pp: PlanPort) -> str:
    """Which plugin gave the selector and which the weights (kproxy_endpoint_selector,
    kproxy_endpoint_weights)."""
    sel = f"selector {pp.selector.kind} from plugin {pp.selector_by}" if pp.selector_by else (
        "no plugin chose a selector")
    if pp.weights_by:
        ws = f"weights {':'.join(str(e.weight) for e in pp.endpoints)} from plugin {pp.weights_by}"
    else:
        ws = "no plugin gave weights"
    return f"plugins: {sel}; {ws}"


def _explain_pool(
    t: Trace, pp: PlanPort, w: Walk, decision: Any, engine: TracedEngine, src: str, now: float | None
) -> None:
    if w.pool is None:
        return
    from .selectors import DEFAULT_SELECTOR, selection_shares

    pool = pp.pool(w.pool)
    n = len(pool)
    nft = engine.configs[t.family].nftables
    ep_chain = _nft_ep_chain if nft else _ipt_ep_chain
    sel = pp.selector
    weights = [ep.weight for ep in pool]
    table: list[int] | None = None
    if sel.kind in ("maglev", "source-hash") and n:
        # the lookup table the core holds for this pool
        entry = engine.port_entry(t.family, pp.spn)
        got = entry.tables[0 if w.pool == "cluster" else 1] if entry is not None else None
        table = got.tolist() if got is not None else None
    shares = selection_shares(sel, weights, table)
    rules = _rule_texts(pp, pool, nft)
    notes = _endpoint_notes(engine, pp)
    for i, ep in enumerate(pool):
        rule = rules[i]
        extra = {"note": notes[ep.endpoint]} if ep.endpoint in notes else {}
        t.candidates.append({
            "endpoint": ep.endpoint,
            "probability": shares[i],
            "rule_probability": rule,
            "node": ep.node,
            "local": ep.local,
            "zone": ep.zone,
            "ready": ep.ready,
            "serving": ep.serving,
            "terminating": ep.terminating,
            "chain": ep_chain(pp, ep),
            **extra,
        })
    pool_keys = {ep.endpoint for ep in pool}
    for ep, why in pp.filter_reasons():
        t.filtered.append({"endpoint": ep.endpoint, "reason": why})
    for ep in pp.endpoints:
        if ep.endpoint not in pool_keys and all(f["endpoint"] != ep.endpoint for f in t.filtered):
            reason = "not on this node" if w.pool == "local" else "only in the local pool"
            t.filtered.append({"endpoint": ep.endpoint, "reason": reason})
    if w.pool == "cluster" and pp.cluster_fallback:
        t.steps.append("no ready endpoint: kube-proxy falls back to serving, terminating endpoints")
    if w.pool == "local" and pp.local_fallback:
        t.steps.append("no ready local endpoint: falling back to serving, terminating local endpoints")
    if pp.topology_mode and w.pool == "cluster":
        t.steps.append(f"topology hints in use ({pp.topology_mode}): only hinted endpoints")
    if (pp.selector_by or pp.weights_by) and n:
        t.steps.append(_suppliers(pp))
    if sel.kind != "random" and n:
        origin = sel.origin
        if sel.kind == "weighted" and origin == DEFAULT_SELECTOR.origin:
            origin += ", weighted by the endpoints' weights"
        ratio = ":".join(str(x) for x in weights)
        equal = len(set(weights)) == 1
        listed = ", ".join(f"{ep.endpoint} {x:.2%}" for ep, x in zip(pool, shares, strict=True))
        if sel.kind == "weighted":
            how = ("equal, so each is as likely as with kube-proxy's uniform choice" if equal
                   else f"{ratio}")
            t.steps.append(f"{n} candidates, weighted random (alias table; {origin}), weights {how}: "
                           f"probabilities {listed}")
        elif sel.kind == "round-robin":
            if equal:
                t.steps.append(f"{n} candidates, round-robin ({origin}): new connections take them in "
                               "turn, in pool order (established flows and affinity do not move it)")
            else:
                t.steps.append(f"{n} candidates, smooth weighted round-robin ({origin}), weights {ratio}: "
                               f"every {sum(weights)} new connections give {', '.join(map(str, weights))}")
        else:
            key = ("the source address only" if sel.kind == "source-hash"
                   else "the connection's source address, ports and protocol")
            weighted = "" if equal else f", weights {ratio}"
            t.steps.append(f"{n} candidates, {sel.kind} ({origin}): a Maglev lookup table of "
                           f"{len(table or ())} slots{weighted}, indexed by a hash of {key} "
                           f"(seed {sel.seed}, the same on every node): shares {listed}")
    elif n > 1 and nft:
        t.steps.append(f"{n} candidates, each with probability 1/{n} (numgen random mod {n} vmap)")
    elif n > 1:
        t.steps.append(
            f"{n} candidates, each with probability 1/{n} (kube-proxy's statistic rules "
            f"{', '.join(compute_probability(n - i) for i in range(n - 1))}, then an unconditional jump)"
        )
    if pp.affinity_timeout:
        how = (
            "per-endpoint affinity sets of client IPs, timeout refreshed by update @affinity-…"
            if nft
            else "recent module"
        )
        t.steps.append(
            f"sessionAffinity ClientIP: a client keeps its endpoint for {pp.affinity_timeout} s "
            f"after its last new connection ({how})"
        )
    if decision.endpoint is None:
        return
    chosen = join_host_port(*decision.endpoint)
    sep = next((ep_chain(pp, ep) for ep in pp.endpoints if ep.endpoint == chosen), None)
    if sep:
        t.chains.append(sep)
    if chosen not in pool_keys:
        t.steps.append(f"an established flow keeps {chosen} (conntrack), outside today's pool")
    else:
        t.steps.append(f"chosen: {chosen}")
    if decision.endpoint[0] == src:
        t.chains.append(NFT_MARK_MASQ if nft else KUBE_MARK_MASQ)
        t.steps.append("hairpin: the endpoint is the source itself, so it is masqueraded")


def _endpoint_notes(engine: TracedEngine, pp: PlanPort) -> dict[str, str]:
    """What the Service type's plugin says of each endpoint (``ServiceType.endpoint_notes``)."""
    registry = engine.plugins.registry
    svc = engine.cluster.services.get((pp.namespace, pp.service))
    if svc is None or svc.type not in registry or registry.owner(svc.type) == CORE:
        return {}
    got = registry.call(svc.type, "endpoint_notes", svc, pp, engine.cluster)
    if not isinstance(got, Mapping):
        raise PluginError(f"plugin {registry.owner(svc.type)}: Service type {svc.type}: endpoint_notes() "
                          f"returned {type(got).__name__}, not a mapping")
    return {str(k): str(v) for k, v in got.items()}


def _rule_texts(pp: PlanPort, pool: Sequence[EndpointInfo], nft: bool) -> list[str | None]:
    """What the rendered rules say of each endpoint of the pool (None: the last, unconditional
    rule): kube-proxy's ``statistic`` probability or ``numgen`` value, the weighted ones, or
    the round-robin cycle positions (selectors.selection_form decides the form)."""
    n = len(pool)
    mode, order, weights = selection_form(pp.selector, [ep.weight for ep in pool])
    if mode == "cycle":
        where = [[k for k, j in enumerate(order) if j == i] for i in range(n)]
        word = f"numgen inc mod {len(order)}:" if nft else f"nth of a {len(order)}-turn cycle:"
        return [f"{word} {','.join(map(str, ks))}" for ks in where]
    if mode == "weighted":
        out: list[str | None] = []
        lo, rest = 0, sum(weights)
        for i, wt in enumerate(weights):
            if nft:
                out.append(f"numgen {lo}" if wt == 1 else f"numgen {lo}-{lo + wt - 1}")
            else:
                out.append(None if i == n - 1 else weighted_probability(wt, rest))
            lo += wt
            rest -= wt
        return out
    # kube-proxy: one numgen random mod n vmap, or the 1/k, 1/(k-1), ... statistic cascade
    return [f"numgen {i}" if nft else (None if i == n - 1 else compute_probability(n - i)) for i in range(n)]


def _ipt_ep_chain(pp: PlanPort, ep: EndpointInfo) -> str:
    return pp.sep_chain(ep)


def _nft_ep_chain(pp: PlanPort, ep: EndpointInfo) -> str:
    return "endpoint-" + endpoint_chain_name_base(pp.namespace, pp.service, pp.proto, pp.port_name, ep.endpoint)

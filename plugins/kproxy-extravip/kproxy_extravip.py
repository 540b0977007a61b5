"""The ExtraVIP Service type: a kproxy-core plugin shipped as its own distribution.

An ``ExtraVIP`` Service is a ClusterIP Service that is also reachable on one more
address per IP family, its *VIP*, allocated from a VIP range. Everything kube-proxy does
for the ClusterIP (endpoints, traffic policies, session affinity) applies to the VIP;
kproxy-core treats the VIP as a plugin frontend of kind ``ExtraVIP``, so it shows up in
lookups, traces, both renderers' rules and the cluster DNS. ``nodePort`` is refused
(the type has no node ports), and a headless ExtraVIP Service makes no sense.

Annotations (all optional)::

    extravip.example.com/range    the range(s) to allocate from, comma-separated, at most one
                                  per family (default 198.51.100.0/24 and 2001:db8:5100::/120)
    extravip.example.com/address  the VIP(s) themselves, at most one per family, inside the
                                  family's range
    extravip.example.com/policy   internal (default): handled like the ClusterIP (reachable
                                  from anywhere, internalTrafficPolicy, masquerade of non-pod
                                  sources); external: handled like an externalIP (KUBE-EXT,
                                  masquerade of traffic from outside the cluster)

Allocation, per family, over the whole cluster (deterministic and without collisions):

1. A range's *usable* addresses are all of them except, in a range of more than two
   addresses, the first and the last (network and broadcast; the IPv6 subnet-router
   anycast address).
2. *Taken* from the start: every ClusterIP, externalIP and load-balancer ingress IP of
   every Service in the cluster.
3. ExtraVIP Services with an ``address`` annotation, sorted by namespace/name, take that
   address; an address already taken is an error naming both owners.
4. The others, sorted by namespace/name, start at usable address number
   ``sha256("<namespace>/<name>") mod n`` (the first 8 bytes of the digest, big-endian;
   n usable addresses in their range) and take the first free address from there
   upwards, wrapping around; a full range is an error.

Only ExtraVIP Services of that family (with a ClusterIP of the family) take part.

DNS: ``<svc>.<ns>.vip.<zone>`` answers A/AAAA with the VIP(s). Rules: per service port a
decision-neutral accounting chain that counts new connections to the VIP (iptables: a
``XVIP-<hash>`` chain in the filter table, jumped to from filter KUBE-PROXY-FIREWALL on the
connection's original destination; nftables: an ``extravip-<hash>`` chain jumped to from
the pre-DNAT filter chains). Trace: which VIP was allocated and why.

What the per-Service ``validate`` cannot see (the other Services) is checked when the
plan is built: a fixed address another Service already holds, or an exhausted range,
raises :class:`AllocationError` there, a ManifestError naming the Service and the
annotation, which kproxy reports as bad input. The handler is ``cluster_wide``: one
Service's VIP depends on the others, so ``Engine.apply`` replans every ExtraVIP Service
whenever a Service changes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

from kproxy_core.dns import DnsRecord
from kproxy_core.errors import ManifestError
from kproxy_core.hookspecs import hookimpl
from kproxy_core.model import Cluster, Service, ServicePort
from kproxy_core.plan import PlanPort
from kproxy_core.servicetypes import FrontendSpec, Report, RuleText, ServiceType, ServiceTypeRegistry

__all__ = [
    "ADDRESS_ANNOTATION",
    "DEFAULT_RANGES",
    "KIND",
    "LABEL",
    "POLICY_ANNOTATION",
    "RANGE_ANNOTATION",
    "Allocation",
    "AllocationError",
    "ExtraVIPType",
    "allocate",
    "dns_name",
    "kproxy_register_service_types",
]

Family: TypeAlias = Literal["IPv4", "IPv6"]
Address: TypeAlias = "ipaddress.IPv4Address | ipaddress.IPv6Address"
Network: TypeAlias = "ipaddress.IPv4Network | ipaddress.IPv6Network"
Policy: TypeAlias = Literal["internal", "external"]

KIND = "ExtraVIP"  # the spec.type served, and the frontend kind lookups report
LABEL = "extra VIP"  # the rule comment suffix: "<ns>/<svc>:<port> extra VIP"
PREFIX = "extravip.example.com/"
RANGE_ANNOTATION = PREFIX + "range"
ADDRESS_ANNOTATION = PREFIX + "address"
POLICY_ANNOTATION = PREFIX + "policy"
POLICIES: tuple[Policy, ...] = ("internal", "external")
FAMILIES: tuple[Family, ...] = ("IPv4", "IPv6")
DEFAULT_RANGES: Mapping[Family, Network] = {
    "IPv4": ipaddress.ip_network("198.51.100.0/24"),
    "IPv6": ipaddress.ip_network("2001:db8:5100::/120"),
}
# kube-proxy's chains the accounting jumps come from. iptables: filter KUBE-PROXY-FIREWALL is
# the one every new connection meets before anything accepts it (INPUT, OUTPUT and, first of
# all, FORWARD); filter KUBE-SERVICES would miss masqueraded forwarded connections, which
# KUBE-FORWARD accepts earlier. nftables: the pre-DNAT filter base chains, where the
# destination is still the VIP.
IPTABLES_FROM = "KUBE-PROXY-FIREWALL"
NFT_FROM = ("filter-prerouting-pre-dnat", "filter-output-pre-dnat")
NFT_TABLE = "kube-proxy"


def _path(annotation: str) -> str:
    return f"metadata.annotations[{annotation}]"


def _family(addr: Address | Network) -> Family:
    return "IPv6" if addr.version == 6 else "IPv4"


class AllocationError(ManifestError):
    """A VIP that cannot be allocated: the fixed address is taken, or the range is full.
    A ManifestError: the input is wrong, so kproxy reports it as bad input (exit 2)."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """One Service's annotations, parsed; ``problems`` are (field, message) pairs."""

    ranges: Mapping[Family, Network]
    addresses: Mapping[Family, Address]
    policy: Policy
    range_annotated: frozenset[Family]
    problems: tuple[tuple[str, str], ...]


def _items(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def settings(service: Service) -> Settings:
    """Parse the ``extravip.example.com/*`` annotations of ``service``."""
    ann = service.annotations
    problems: list[tuple[str, str]] = []
    ranges: dict[Family, Network] = dict(DEFAULT_RANGES)
    annotated: set[Family] = set()
    if RANGE_ANNOTATION in ann:
        path = _path(RANGE_ANNOTATION)
        items = _items(ann[RANGE_ANNOTATION])
        if not items:
            problems.append((path, "must list one CIDR per IP family"))
        for item in items:
            try:
                net = ipaddress.ip_network(item, strict=True)
            except ValueError as e:
                problems.append((path, f"{item!r} is not a CIDR ({e})"))
                continue
            fam = _family(net)
            if fam in annotated:
                problems.append((path, f"{item!r}: more than one {fam} range"))
                continue
            annotated.add(fam)
            ranges[fam] = net
    addresses: dict[Family, Address] = {}
    if ADDRESS_ANNOTATION in ann:
        path = _path(ADDRESS_ANNOTATION)
        items = _items(ann[ADDRESS_ANNOTATION])
        if not items:
            problems.append((path, "must list one address per IP family"))
        for item in items:
            try:
                addr = ipaddress.ip_address(item)
            except ValueError:
                problems.append((path, f"{item!r} is not an IP address"))
                continue
            fam = _family(addr)
            if fam in addresses:
                problems.append((path, f"{item!r}: more than one {fam} address"))
                continue
            addresses[fam] = addr
    policy: Policy = "internal"
    if POLICY_ANNOTATION in ann:
        raw = ann[POLICY_ANNOTATION].strip()
        if raw in POLICIES:
            policy = "external" if raw == "external" else "internal"
        else:
            problems.append((_path(POLICY_ANNOTATION), f"{raw!r} is not one of {', '.join(POLICIES)}"))
    return Settings(ranges, addresses, policy, frozenset(annotated), tuple(problems))


# --------------------------------------------------------------------------- allocation


def _usable(net: Network) -> tuple[int, int]:
    """(first usable address as an integer, number of usable addresses)."""
    first, n = int(net.network_address), net.num_addresses
    return (first + 1, n - 2) if n > 2 else (first, n)


def _slot(service: Service, n: int) -> int:
    digest = hashlib.sha256(f"{service.namespace}/{service.name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % n


def _is_usable(addr: Address, net: Network) -> bool:
    first, n = _usable(net)
    return addr in net and first <= int(addr) < first + n


@dataclass(frozen=True)
class Allocation:
    """The VIP of one ExtraVIP Service in one family, and how it was chosen.

    ``how`` is ``"address"`` (the annotation fixed it) or ``"hash"``; for ``"hash"``,
    ``start`` is the address the hash picked and ``skipped`` how many taken addresses
    were passed over before ``ip``."""

    ip: Address
    range: Network
    how: Literal["address", "hash"]
    start: Address
    skipped: int = 0


def _taken_by_others(cluster: Cluster, family: Family) -> dict[Address, str]:
    taken: dict[Address, str] = {}
    for key in sorted(cluster.services):
        svc = cluster.services[key]
        own = () if svc.headless else svc.cluster_ips
        for text in (*own, *svc.external_ips, *(i.ip for i in svc.load_balancer_ingress if i.ip)):
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                continue
            if _family(addr) == family:
                taken.setdefault(addr, f"Service {svc.ref}")
    return taken


def allocate(cluster: Cluster, family: Family) -> dict[tuple[str, str], Allocation]:
    """Every ExtraVIP Service's VIP in ``family``, by (namespace, name); see the module
    docstring for the rule. Raises AllocationError for a collision or a full range."""
    members = [
        cluster.services[key]
        for key in sorted(cluster.services)
        if cluster.services[key].type == KIND and cluster.services[key].cluster_ip_for(family) is not None
    ]
    taken = _taken_by_others(cluster, family)
    out: dict[tuple[str, str], Allocation] = {}
    parsed = {svc.key: settings(svc) for svc in members}
    for svc in members:
        fixed = parsed[svc.key].addresses.get(family)
        if fixed is None:
            continue
        owner = taken.get(fixed)
        if owner is not None:
            raise AllocationError(
                f"Service {svc.ref}: {_path(ADDRESS_ANNOTATION)}: {fixed} is already taken by {owner}"
            )
        taken[fixed] = f"Service {svc.ref} ({ADDRESS_ANNOTATION})"
        out[svc.key] = Allocation(fixed, parsed[svc.key].ranges[family], "address", fixed)
    for svc in members:
        if svc.key in out:
            continue
        net = parsed[svc.key].ranges[family]
        first, n = _usable(net)
        slot = _slot(svc, n)
        start = ipaddress.ip_address(first + slot)
        for skipped in range(min(n, len(taken) + 1)):
            candidate = ipaddress.ip_address(first + (slot + skipped) % n)
            if candidate not in taken:
                taken[candidate] = f"Service {svc.ref}"
                out[svc.key] = Allocation(candidate, net, "hash", start, skipped)
                break
        else:
            raise AllocationError(f"Service {svc.ref}: {family} range {net} has no free address left")
    return out


def dns_name(service: Service, zone: str) -> str:
    """``<svc>.<ns>.vip.<zone>``: the name of the VIP(s) in the cluster zone."""
    return f"{service.name}.{service.namespace}.vip.{zone.strip().rstrip('.')}".lower()


# --------------------------------------------------------------------------- the handler


class ExtraVIPType(ServiceType):
    """The ``ExtraVIP`` handler: the ClusterIP plus one allocated VIP per family."""

    name = KIND
    externally_accessible = False  # like ClusterIP: the VIP's policy says how it is treated
    node_ports = False  # kproxy-core then refuses spec.ports[].nodePort itself
    cluster_wide = True  # a VIP depends on the other Services: Engine.apply replans them all

    def __init__(self) -> None:
        # the allocation of the last cluster seen (clusters are immutable; Engine.apply
        # makes a new one), so that planning N ports does not allocate N times
        self._cache: tuple[weakref.ref[Cluster], dict[Family, dict[tuple[str, str], Allocation]]] | None = None

    def allocation(self, cluster: Cluster, family: Family) -> dict[tuple[str, str], Allocation]:
        cache = self._cache
        if cache is None or cache[0]() is not cluster:
            cache = (weakref.ref(cluster), {})
            self._cache = cache
        table = cache[1].get(family)
        if table is None:
            table = cache[1][family] = allocate(cluster, family)
        return table

    def validate(self, service: Service, report: Report) -> None:
        if service.headless:
            report.error("spec.clusterIP", f"type {KIND} needs a ClusterIP; a headless Service has no VIP")
        s = settings(service)
        for path, msg in s.problems:
            report.error(path, msg)
        families = [f for f in FAMILIES if service.cluster_ip_for(f) is not None]
        for fam in sorted(s.range_annotated):
            if fam not in families and not service.headless:
                report.warn(_path(RANGE_ANNOTATION), f"the Service has no {fam} ClusterIP: the {fam} range is unused")
        own = {ip: f"spec.clusterIPs[{i}]" for i, ip in enumerate(service.cluster_ips)}
        own.update({ip: f"spec.externalIPs[{i}]" for i, ip in enumerate(service.external_ips)})
        path = _path(ADDRESS_ANNOTATION)
        for fam, addr in s.addresses.items():
            net = s.ranges[fam]
            if fam not in families:
                report.error(path, f"{addr}: the Service has no {fam} ClusterIP")
            elif addr not in net:
                where = "the range of " + RANGE_ANNOTATION if fam in s.range_annotated else "the default range"
                report.error(path, f"{addr} is outside {net} ({where})")
            elif not _is_usable(addr, net):
                report.error(path, f"{addr} is the first or last address of {net}, which are never allocated")
            elif str(addr) in own:
                report.error(path, f"{addr} collides with {own[str(addr)]} of the same Service")

    def frontends(
        self, service: Service, port: ServicePort, family: str, cluster: Cluster
    ) -> Iterable[FrontendSpec]:
        fam: Family = "IPv6" if family == "IPv6" else "IPv4"
        alloc = self.allocation(cluster, fam).get(service.key)
        if alloc is not None:
            yield FrontendSpec(str(alloc.ip), KIND, policy=settings(service).policy, label=LABEL)

    def dns_records(self, service: Service, zone: str, cluster: Cluster) -> Iterable[DnsRecord]:
        for fam in FAMILIES:
            alloc = self.allocation(cluster, fam).get(service.key)
            if alloc is not None:
                yield DnsRecord(dns_name(service, zone), "AAAA" if fam == "IPv6" else "A", str(alloc.ip))

    def rules(self, port: PlanPort, renderer: str, family: str) -> Iterable[RuleText]:
        for fe in port.extra_frontends:
            if fe.kind != KIND or fe.ip is None:
                continue
            what = f"{port.spn} {KIND} {_join(fe.ip, fe.port)} ({fe.policy})"
            if renderer == "iptables":
                yield _iptables_accounting(port, fe.ip, fe.port, fe.protocol, what)
            elif renderer == "nftables":
                yield _nftables_accounting(port, fe.ip, fe.port, fe.protocol, family, what)

    def trace_steps(self, service: Service, port: PlanPort | None, frontend: str | None) -> Iterable[str]:
        if port is None:
            return
        s = settings(service)
        for fe in port.extra_frontends:
            if fe.kind == KIND and fe.ip is not None:
                yield from _explain(service, s, ipaddress.ip_address(fe.ip), fe.policy, frontend == KIND)


def _join(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _iptables_accounting(port: PlanPort, ip: str, dport: int, proto: str, what: str) -> RuleText:
    chain = "XVIP-" + port.chain_base
    p = proto.lower()
    # written as iptables-save prints it back (-p first, no /32 on --ctorigdst), so that
    # Engine.render(format="save") is exactly what the kernel shows after loading it
    return RuleText(
        table="filter",
        chains=(chain,),
        lines=(
            f"-A {IPTABLES_FROM} -p {p} -m conntrack --ctorigdst {ip} --ctorigdstport {dport} "
            f'-m comment --comment "{port.spn} {LABEL} accounting" -j {chain}',
            f'-A {chain} -m comment --comment "{what}"',  # no target: it only counts
        ),
    )


def _nftables_accounting(port: PlanPort, ip: str, dport: int, proto: str, family: str, what: str) -> RuleText:
    chain = "extravip-" + port.chain_base
    fam = "ip6" if family == "IPv6" else "ip"
    lines = [
        f"add rule {fam} {NFT_TABLE} {base} {fam} daddr {ip} meta l4proto {proto.lower()} th dport {dport} "
        f"ct state new jump {chain}"
        for base in NFT_FROM
    ]
    lines.append(f'add rule {fam} {NFT_TABLE} {chain} counter comment "{what}"')
    return RuleText(chains=(chain,), lines=tuple(lines))


def _explain(service: Service, s: Settings, ip: Address, policy: str, hit: bool) -> Iterator[str]:
    fam = _family(ip)
    net = s.ranges[fam]
    source = f"{RANGE_ANNOTATION}" if fam in s.range_annotated else "the default range"
    head = f"{KIND}: {service.ref} answers on {ip}"
    if s.addresses.get(fam) == ip:
        yield f"{head}, fixed by {ADDRESS_ANNOTATION} (inside {net}, {source})"
    else:
        first, n = _usable(net)
        start = ipaddress.ip_address(first + _slot(service, n))
        skipped = (int(ip) - int(start)) % n
        why = (
            "it was free" if skipped == 0
            else f"{skipped} address{'es' if skipped > 1 else ''} from there {'were' if skipped > 1 else 'was'} "
            f"taken, {ip} is the first free one"
        )
        yield (
            f"{head}, allocated from {net} ({source}): sha256(\"{service.ref}\") picks {start} "
            f"(slot {int(start) - first} of {n}); {why}"
        )
    like = "the ClusterIP" if policy == "internal" else "an externalIP"
    yield (
        f"{KIND}: {POLICY_ANNOTATION} is {policy}: {'this packet is sent to the VIP, ' if hit else 'the VIP is '}"
        f"handled like {like}"
    )


@hookimpl
def kproxy_register_service_types(registry: ServiceTypeRegistry) -> None:
    registry.register(ExtraVIPType())

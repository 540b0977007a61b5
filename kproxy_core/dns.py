"""Cluster DNS from the same model kube-proxy's decisions come from.

The answers are CoreDNS's ``kubernetes`` plugin's (the reference where it and the
Kubernetes DNS specification differ), for a Corefile like kubeadm's::

    kubernetes cluster.local in-addr.arpa ip6.arpa { pods disabled; ttl 5 }

:func:`build_zone` indexes a :class:`~kproxy_core.model.Cluster` once; :meth:`Zone.resolve`
answers one question offline with CoreDNS's rcode, answer, authority (the SOA of a
negative answer) and additional sections:

- ``<svc>.<ns>.svc.<zone>``: the ClusterIPs (with or without endpoints); for a headless
  Service one address per distinct ready endpoint address (NXDOMAIN when none is ready);
- ``<ep>.<svc>.<ns>.svc.<zone>``: an endpoint by hostname or dashed IP;
- SRV on ``_<port>._<proto>.<svc>...`` and on the bare name (every port), with CoreDNS's
  priority 0, weight ``floor(100/N)`` and the targets' addresses in the additional section;
- PTR under ``in-addr.arpa`` / ``ip6.arpa`` for ClusterIPs and ready endpoint addresses;
- ``dns-version.<zone>`` TXT, the zone's SOA and NS, pod records when ``pods="insecure"``;
- whatever the Service-type plugins add (the bundled ExternalName plugin adds a CNAME,
  followed while its target is inside the zone).

Names are case-insensitive; answers echo the question's spelling.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .dnstypes import DEFAULT_TTL as DEFAULT_TTL  # the records' module; importable from here as before
from .dnstypes import RTYPES as RTYPES
from .dnstypes import DnsRecord as DnsRecord
from .errors import PluginError

if TYPE_CHECKING:
    from .model import Cluster, Service
    from .servicetypes import ServiceTypeRegistry

DEFAULT_ZONE = "cluster.local"
MAX_TTL = 3600
REVERSE_ZONES = ("in-addr.arpa", "ip6.arpa")
SCHEMA_VERSION = "1.1.0"  # the Kubernetes DNS specification CoreDNS implements
VERSION_TTL = 28800  # dns-version's TTL is fixed
POD_MODES = ("disabled", "insecure")


def normalize(name: str) -> str:
    """Names compare case-insensitively and without the root dot."""
    return name.strip().rstrip(".").lower()


def service_name(service: Service, zone: str) -> str:
    return f"{service.name}.{service.namespace}.svc.{normalize(zone)}".lower()


def dashed(ip: str) -> str:
    """The endpoint label CoreDNS gives an address without a hostname: ``10.1.2.3`` →
    ``10-1-2-3``, ``fd00::1`` → ``fd00--1``, with a ``0`` after a trailing dash
    (``fd00::`` → ``fd00--0``)."""
    label = ip.replace(".", "-").replace(":", "-")
    return label + "0" if label.endswith("-") else label


def reverse_name(ip: str) -> str:
    """``10.0.0.1`` → ``1.0.0.10.in-addr.arpa`` (full nibble form under ip6.arpa)."""
    return ipaddress.ip_address(ip).reverse_pointer


@dataclass(frozen=True)
class Answer:
    """What a resolver gets: ``rcode`` (``NOERROR``, ``NXDOMAIN`` or ``REFUSED``; NODATA is
    NOERROR without records), the answer ``records`` in order (CNAMEs first), the
    ``authority`` section (the zone's SOA on a negative answer), the ``additional``
    section (SRV targets' addresses, the name server's address) and notes that explain
    the answer. Records owned by the question's name carry its spelling."""

    name: str
    rtype: str
    rcode: str
    records: tuple[DnsRecord, ...] = ()
    notes: tuple[str, ...] = ()
    authority: tuple[DnsRecord, ...] = ()
    additional: tuple[DnsRecord, ...] = ()
    authoritative: bool = True
    ttl: int = DEFAULT_TTL

    @property
    def nodata(self) -> bool:
        return self.rcode == "NOERROR" and not self.records

    def text(self, ttl: int | None = None) -> str:
        """The answer section as ``dig`` prints it."""
        return "\n".join(r.text(self.ttl if ttl is None else ttl) for r in self.records)

    def to_dict(self) -> dict[str, object]:
        def recs(rs: tuple[DnsRecord, ...]) -> list[dict[str, object]]:
            return [
                {"name": r.name + ".", "ttl": r.ttl if r.ttl is not None else self.ttl, "type": r.rtype, "data": r.data}
                for r in rs
            ]

        return {
            "name": self.name + ".",
            "type": self.rtype,
            "rcode": self.rcode,
            "nodata": self.nodata,
            "authoritative": self.authoritative,
            "answer": recs(self.records),
            "authority": recs(self.authority),
            "additional": recs(self.additional),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class _Backend:
    """One of CoreDNS's ``msg.Service`` items: an address (or a CNAME target), a port
    (-1: none) and the name SRV targets and PTRs use."""

    host: str
    port: int
    target: str


@dataclass(frozen=True)
class _EndpointAddress:
    ip: str
    label: str  # hostname, pod name (endpoint_pod_names) or dashed IP
    ports: tuple[tuple[str, str, int], ...]  # (name, protocol, port); (("", "", -1),) for a slice without ports


@dataclass
class _ServiceEntry:
    service: Service
    fqdn: str
    cluster_ips: tuple[str, ...]
    headless: bool
    proxied: bool
    addresses: list[_EndpointAddress]


class _Missing(Exception):
    """NXDOMAIN (CoreDNS's errNoItems)."""


@dataclass
class _Lookup:
    exists: bool = False
    records: list[DnsRecord] = field(default_factory=list)
    additional: list[DnsRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Zone:
    """The cluster zone (and the reverse zones) of one cluster state.

    ``records`` holds records added by Service-type plugins, by name; ``notes`` explain
    names (an IP-valued externalName). ``pods``: ``"disabled"`` (CoreDNS's default) or
    ``"insecure"`` (``a-b-c-d.<ns>.pod.<zone>`` answered from the name). ``serial``: the
    SOA serial, the Unix time the zone was built. ``endpoint_pod_names``: label endpoints
    without a hostname by their pod's name, as CoreDNS's ``endpoint_pod_names`` option.
    """

    zone: str = DEFAULT_ZONE
    ttl: int = DEFAULT_TTL
    records: dict[str, list[DnsRecord]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    pods: str = "disabled"
    serial: int = 0
    endpoint_pod_names: bool = False
    _services: dict[tuple[str, str], _ServiceEntry] = field(default_factory=dict, repr=False)
    _namespaces: set[str] = field(default_factory=set, repr=False)
    _ptr: dict[str, list[str]] = field(default_factory=dict, repr=False)  # IP -> PTR targets (ClusterIP first)
    _ptr_cluster_ip: set[str] = field(default_factory=set, repr=False)
    _dns_ips: tuple[str, ...] = ()
    # zones Service-type plugins write into besides the cluster zone (``clusterset.local``),
    # answered from ``records`` alone; ``_names`` holds every owner name there and its parents
    extra_zones: tuple[str, ...] = ()
    _names: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.zone = normalize(self.zone)
        if not self.serial:
            self.serial = int(time.time())

    # ------------------------------------------------------------------ building

    def add(self, record: DnsRecord) -> None:
        name = normalize(record.name)
        bucket = self.records.setdefault(name, [])
        if record not in bucket:
            bucket.append(record)
        zone = self._extra_zone_of(name)
        while zone is not None and name not in self._names:  # the name and its parents exist
            self._names.add(name)
            if name == zone:
                break
            name = name.partition(".")[2]

    def in_zone(self, name: str) -> bool:
        """Is ``name`` inside a forward zone served here (the cluster zone or an extra one)?"""
        name = normalize(name)
        return any(name == z or name.endswith("." + z) for z in (self.zone, *self.extra_zones))

    def zone_of(self, name: str) -> str | None:
        """The zone this server is authoritative for that holds ``name``, if any."""
        name = normalize(name)
        for z in (self.zone, *REVERSE_ZONES, *self.extra_zones):
            if name == z or name.endswith("." + z):
                return z
        return None

    def _extra_zone_of(self, name: str) -> str | None:
        for z in self.extra_zones:
            if name == z or name.endswith("." + z):
                return z
        return None

    def soa(self, zone: str | None = None) -> DnsRecord:
        """CoreDNS's SOA: ``ns.dns.<zone>. hostmaster.<zone>. serial 7200 1800 86400 ttl``,
        its own TTL capped at 300."""
        z = zone or self.zone
        return DnsRecord(
            z, "SOA", f"ns.dns.{z}. hostmaster.{z}. {self.serial} 7200 1800 86400 {self.ttl}", min(self.ttl, 300)
        )

    # ------------------------------------------------------------------ answering

    def resolve(self, name: str, rtype: str = "A") -> Answer:
        """Answer ``rtype`` for ``name`` as CoreDNS would (see the module docstring).

        ``rtype`` is any type mnemonic (``MX`` on an existing name is NODATA). Names
        outside the cluster and reverse zones are REFUSED: there is no recursion."""
        rtype = rtype.upper()
        spelled = name.strip().rstrip(".")
        qname = spelled.lower()
        zone = self.zone_of(qname)
        if zone is None:
            served = ", ".join((self.zone, *REVERSE_ZONES, *self.extra_zones))
            return Answer(
                spelled, rtype, "REFUSED", authoritative=False, ttl=self.ttl,
                notes=(f"{qname} is outside the zones served ({served}); no recursion",),
            )
        if zone == self.zone:
            look = self._forward(qname, rtype, set())
        elif zone in self.extra_zones:
            look = self._extra(qname, rtype, zone)
        else:
            look = self._reverse(qname, rtype)
        records = [_respell(r, qname, spelled) for r in look.records]
        additional = _dedupe(look.additional)
        notes = tuple(dict.fromkeys(look.notes))
        if records:
            return Answer(spelled, rtype, "NOERROR", tuple(records), notes, (), tuple(additional), ttl=self.ttl)
        rcode = "NOERROR" if look.exists else "NXDOMAIN"
        return Answer(spelled, rtype, rcode, (), notes, (self.soa(zone),), ttl=self.ttl)

    def _forward(self, qname: str, rtype: str, seen: set[str]) -> _Lookup:
        out = _Lookup(notes=list(self.notes.get(qname, ())))
        static = self.records.get(qname)
        if static:
            out.exists = True
            exact = [r for r in static if r.rtype == rtype]
            cname = next((r for r in static if r.rtype == "CNAME"), None)
            if exact or rtype == "CNAME" or cname is None:
                out.records += exact
            elif rtype in ("A", "AAAA", "ANY"):
                self._follow(cname, rtype, seen | {qname}, out)
            if out.records:
                return out
        with contextlib.suppress(_Missing):
            self._structured(qname, rtype, out)
        return out

    def _extra(self, qname: str, rtype: str, zone: str) -> _Lookup:
        """A name in a plugin's zone: its records; NODATA for a name that exists (it, or a
        name below it, has records) without the type; the SOA and NS at the apex."""
        out = _Lookup(notes=list(self.notes.get(qname, ())))
        out.exists = qname == zone or qname in self._names
        if qname == zone:
            if rtype == "SOA":
                out.records.append(self.soa(zone))
            elif rtype == "NS":
                out.records.append(DnsRecord(zone, "NS", f"ns.dns.{zone}."))
                out.additional += [DnsRecord(f"ns.dns.{zone}", _addr_type(ip), ip) for ip in self._dns_ips]
        out.records += [r for r in self.records.get(qname, ()) if r.rtype == rtype]
        return out

    def _follow(self, cname: DnsRecord, rtype: str, seen: set[str], out: _Lookup) -> None:
        """CoreDNS answers A/AAAA on an ExternalName with the CNAME and, when the target is
        inside the zone, the target's records."""
        out.records.append(cname)
        target = normalize(cname.data)
        if target in seen:
            out.notes.append(f"CNAME loop at {target}")
        elif not self.in_zone(target):
            out.notes.append(
                f"{target} is outside the cluster zone: a resolver asks upstream for it "
                "(CoreDNS does, and appends the answer)"
            )
        elif rtype != "ANY":
            more = self._forward(target, rtype, seen)
            out.records += more.records
            out.additional += more.additional
            out.notes += more.notes

    def _structured(self, qname: str, rtype: str, out: _Lookup) -> None:
        """Names CoreDNS parses: the apex, ``dns-version``, ``ns.dns``, ``…svc`` and ``…pod``."""
        z = self.zone
        if qname == z:
            out.exists = True
            if rtype == "SOA":
                out.records.append(self.soa())
            elif rtype == "NS":
                out.records.append(DnsRecord(z, "NS", f"ns.dns.{z}."))
                out.additional += [DnsRecord(f"ns.dns.{z}", _addr_type(ip), ip) for ip in self._dns_ips]
            return
        rest = qname[: -len(z) - 1]
        if rest == "dns-version":
            # CoreDNS: only TXT exists; any other type does not parse as svc/pod (NXDOMAIN)
            if rtype == "TXT":
                out.exists = True
                out.records.append(DnsRecord(qname, "TXT", f'"{SCHEMA_VERSION}"', VERSION_TTL))
            return
        if rest == "ns.dns":
            out.exists = bool(self._dns_ips)
            out.records += [DnsRecord(qname, _addr_type(ip), ip) for ip in self._dns_ips if _addr_type(ip) == rtype]
            return
        segs = rest.split(".")
        kind = segs[-1]
        if kind not in ("svc", "pod"):
            raise _Missing
        labels = segs[:-1]
        if not labels:
            out.exists = True  # svc.<zone> / pod.<zone>: NODATA
            return
        namespace = labels[-1]
        if len(labels) == 1:
            if not self._namespace(namespace):
                raise _Missing
            out.exists = True  # <ns>.svc.<zone>: NODATA
            return
        if kind == "pod":
            if len(labels) != 2:
                raise _Missing
            self._pod(labels[0], namespace, qname, rtype, out)
            return
        name = labels[-2]
        endpoint = port = proto = ""
        if len(labels) == 3:
            endpoint = labels[0]
        elif len(labels) == 4:
            port, proto = labels[0].removeprefix("_"), labels[1].removeprefix("_")
        elif len(labels) > 4:
            raise _Missing
        backends = self._find(namespace, name, endpoint, port, proto)
        out.exists = True
        self._answer(qname, rtype, backends, out)

    def _namespace(self, namespace: str) -> bool:
        return namespace in self._namespaces

    def _find(self, namespace: str, name: str, endpoint: str, port: str, proto: str) -> list[_Backend]:
        """CoreDNS's ``findServices``: raises _Missing when nothing matches (NXDOMAIN)."""
        entry = self._services.get((namespace, name))
        if entry is None or not entry.proxied:
            raise _Missing  # unproxied types answer only through their plugin's records
        out: list[_Backend] = []
        if entry.headless or endpoint:
            for addr in entry.addresses:
                if endpoint and addr.label != endpoint:
                    continue
                for pname, pproto, pnum in addr.ports:
                    if _match(port, pname) and _match(proto, pproto):
                        out.append(_Backend(addr.ip, pnum, f"{addr.label}.{entry.fqdn}"))
        else:
            for p in entry.service.ports:
                if _match(port, p.name) and _match(proto, p.protocol):
                    out += [_Backend(ip, p.port, entry.fqdn) for ip in entry.cluster_ips]
        if not out:
            raise _Missing
        return out

    def _answer(self, qname: str, rtype: str, backends: list[_Backend], out: _Lookup) -> None:
        if rtype in ("A", "AAAA", "ANY"):
            seen: set[str] = set()
            for b in backends:
                t = _addr_type(b.host)
                if (rtype == "ANY" or t == rtype) and b.host not in seen:
                    seen.add(b.host)
                    out.records.append(DnsRecord(qname, t, b.host))
        if rtype in ("SRV", "ANY"):
            weight = max(1, 100 // len(backends))
            pairs: set[tuple[str, int]] = set()
            addrs: set[tuple[str, str]] = set()
            for b in backends:
                if b.port == -1:
                    continue  # a slice without ports: A records only
                if (b.target, b.port) not in pairs:
                    pairs.add((b.target, b.port))
                    out.records.append(DnsRecord(qname, "SRV", f"0 {weight} {b.port} {b.target}."))
                if (b.target, b.host) not in addrs:
                    addrs.add((b.target, b.host))
                    out.additional.append(DnsRecord(b.target, _addr_type(b.host), b.host))

    def _pod(self, label: str, namespace: str, qname: str, rtype: str, out: _Lookup) -> None:
        if self.pods != "insecure":
            out.notes.append("pod records are off (CoreDNS's default `pods disabled`)")
            raise _Missing
        if not self._namespace(namespace):
            raise _Missing
        text = label.replace("-", ".") if label.count("-") == 3 and "--" not in label else label.replace("-", ":")
        try:
            ip = str(ipaddress.ip_address(text))
        except ValueError:
            raise _Missing from None
        out.exists = True
        if rtype in (_addr_type(ip), "ANY"):
            out.records.append(DnsRecord(qname, _addr_type(ip), ip))

    def _reverse(self, qname: str, rtype: str) -> _Lookup:
        out = _Lookup()
        ip = _from_reverse(qname)
        if ip is None or ip not in self._ptr:
            if ip is not None:
                out.notes.append(f"{ip} is no ClusterIP and no ready endpoint address (CoreDNS would fall through)")
            return out
        out.exists = True
        if rtype in ("PTR", "ANY"):
            targets = self._ptr[ip][:1] if ip in self._ptr_cluster_ip else self._ptr[ip]
            out.records += [DnsRecord(qname, "PTR", t + ".") for t in targets]
        return out


def _addr_type(ip: str) -> str:
    return "AAAA" if ":" in ip else "A"


def _match(want: str, have: str) -> bool:
    return not want or want == have.lower()


def _respell(r: DnsRecord, qname: str, spelled: str) -> DnsRecord:
    return DnsRecord(spelled, r.rtype, r.data, r.ttl) if r.name.lower() == qname else r


def _dedupe(records: Iterable[DnsRecord]) -> list[DnsRecord]:
    return list(dict.fromkeys(records))


def _from_reverse(qname: str) -> str | None:
    """The address a full reverse name stands for, or None."""
    if qname.endswith(".in-addr.arpa"):
        parts = qname[: -len(".in-addr.arpa")].split(".")
        if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
            return None
        try:
            return str(ipaddress.IPv4Address(".".join(reversed(parts))))
        except ValueError:
            return None
    if qname.endswith(".ip6.arpa"):
        nibbles = qname[: -len(".ip6.arpa")].split(".")
        if len(nibbles) != 32 or not all(len(n) == 1 and n in "0123456789abcdef" for n in nibbles):
            return None
        return str(ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16)))
    return None


def _endpoint_label(ip: str, hostname: str | None, target: str | None, pod_names: bool) -> str:
    if hostname:
        return hostname.lower()
    if pod_names and target and target.startswith("Pod "):
        pod = target.rpartition("/")[2]
        if 0 < len(pod) < 64:
            return pod.lower()
    return dashed(ip)


def _ready_addresses(cluster: Cluster, namespace: str, name: str, pod_names: bool) -> Iterator[_EndpointAddress]:
    """Every ready address of the slices labelled for the Service, in slice order (CoreDNS
    reads ``conditions.ready`` as written; nil counts as ready)."""
    for sl in cluster.slices_for(namespace, name):
        ports = tuple(
            (p.name or "", p.protocol, p.port if p.port is not None else -1) for p in sl.ports
        ) or (("", "", -1),)
        for ep in sl.endpoints:
            if not ep.ready:
                continue
            for ip in ep.addresses:
                yield _EndpointAddress(ip, _endpoint_label(ip, ep.hostname, ep.target, pod_names), ports)


def _dns_service_ips(cluster: Cluster) -> tuple[str, ...]:
    """The cluster DNS Service's ClusterIPs: the address of ``ns.dns.<zone>``. CoreDNS finds
    the Service in front of its own pod; offline, the kube-system Service labelled
    ``k8s-app: kube-dns`` or named kube-dns, kubedns or coredns stands for it."""
    for svc in sorted(cluster.services.values(), key=lambda s: s.key):
        dns = svc.namespace == "kube-system" and (
            svc.labels.get("k8s-app") == "kube-dns" or svc.name in ("kube-dns", "kubedns", "coredns")
        )
        if dns and svc.cluster_ips and not svc.headless:
            return svc.cluster_ips
    return ()


def build_zone(
    cluster: Cluster,
    registry: ServiceTypeRegistry | None = None,
    zone: str = DEFAULT_ZONE,
    ttl: int = DEFAULT_TTL,
    *,
    pods: str = "disabled",
    endpoint_pod_names: bool = False,
    serial: int | None = None,
) -> Zone:
    """The cluster zone for ``cluster``: the core's records and the Service-type plugins'."""
    if registry is None and cluster.plugins is not None:  # the manager the cluster was loaded with
        registry = cluster.plugins.registry
    if registry is None:
        from .plugins import get_plugin_manager

        registry = get_plugin_manager().registry
    if not 0 <= ttl <= MAX_TTL:
        raise ValueError(f"DNS TTL {ttl}: must be between 0 and {MAX_TTL} seconds")
    if pods not in POD_MODES:
        raise ValueError(f"pods mode {pods!r}: must be one of {', '.join(POD_MODES)}")
    z = Zone(normalize(zone), ttl, pods=pods, serial=serial or 0, endpoint_pod_names=endpoint_pod_names)
    z._dns_ips = _dns_service_ips(cluster)
    extra: dict[str, str] = {}  # zone -> the Service type that serves it
    for type_name in registry.names():
        for name in registry.call(type_name, "dns_zones", z.zone):
            name = normalize(name)
            if not name or name == z.zone or name in REVERSE_ZONES or name.endswith("." + z.zone):
                raise PluginError(f"plugin {registry.owner(type_name)}: Service type {type_name}: dns_zones() "
                                  f"named {name!r}, which is not a zone of its own")
            extra.setdefault(name, type_name)
    z.extra_zones = tuple(extra)
    for name, type_name in extra.items():
        for rec in registry.call(type_name, "zone_records", name, cluster):
            z.add(rec)
    z._namespaces = set(cluster.namespaces)
    keys = set(cluster.services)
    keys.update((s.namespace, s.service_name) for s in cluster.slices.values() if s.service_name)
    keys.update(cluster.legacy_endpoints)
    for ns, _ in keys:
        z._namespaces.add(ns)
    ptr_eps: dict[str, list[str]] = {}
    for key in sorted(keys):
        svc = cluster.services.get(key)
        addresses = list(_ready_addresses(cluster, key[0], key[1], endpoint_pod_names))
        fqdn = f"{key[1]}.{key[0]}.svc.{z.zone}".lower()
        for a in addresses:  # CoreDNS indexes endpoints by address for any Service type
            bucket = ptr_eps.setdefault(a.ip, [])
            if f"{a.label}.{fqdn}" not in bucket:
                bucket.append(f"{a.label}.{fqdn}")
        if svc is None:
            continue
        proxied = _proxied(registry, svc)
        cluster_ips = () if svc.headless or not proxied else svc.cluster_ips
        z._services[key] = _ServiceEntry(svc, fqdn, cluster_ips, svc.headless, proxied, addresses)
        for ip in cluster_ips:
            if ip not in z._ptr_cluster_ip:  # the first Service with the address wins
                z._ptr_cluster_ip.add(ip)
                z._ptr[ip] = [fqdn]
        if svc.type in registry:
            for rec in registry.call(svc.type, "dns_records", svc, z.zone, cluster):
                if not z.in_zone(rec.name):
                    raise PluginError(f"plugin {registry.owner(svc.type)}: Service type {svc.type}: dns_records() "
                                      f"for {svc.ref}: {rec.name} is outside the zones served")
                z.add(rec)
            if fqdn not in z.records and not proxied:
                # say why a name of an unproxied Service has no record (an IP-valued externalName)
                z.notes.setdefault(fqdn, []).extend(registry.call(svc.type, "trace_steps", svc, None, None))
    for ip, targets in ptr_eps.items():
        z._ptr.setdefault(ip, targets)
    return z


def _proxied(registry: ServiceTypeRegistry, svc: Service) -> bool:
    handler = registry.get(svc.type)
    return handler is None or handler.proxied


# --------------------------------------------------------------------------- a pod's resolver

NDOTS = 5  # kubelet writes `options ndots:5` for ClusterFirst pods
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def search_path(namespace: str, zone: str = DEFAULT_ZONE) -> tuple[str, ...]:
    """The search list kubelet writes into a ClusterFirst pod's resolv.conf."""
    z = normalize(zone)
    return (f"{namespace}.svc.{z}", f"svc.{z}", z)


@dataclass(frozen=True)
class Lookup:
    """A name resolved as a pod's stub resolver does it: every name ``tried`` (with the
    answer it got) and the ``answer`` the application sees."""

    query: str
    namespace: str
    search: tuple[str, ...]
    ndots: int
    tried: tuple[Answer, ...]
    answer: Answer

    def to_dict(self) -> dict[str, object]:
        return {
            "query": self.query,
            "namespace": self.namespace,
            "search": list(self.search),
            "ndots": self.ndots,
            "tried": [
                {"name": a.name + ".", "type": a.rtype, "rcode": a.rcode, "nodata": a.nodata} for a in self.tried
            ],
            "answer": self.answer.to_dict(),
        }

    def text(self) -> str:
        """``dig``-style output: the walk as comments, then the final answer's sections."""
        a = self.answer
        out = [
            f"; <<>> kproxy dns resolve <<>> {self.query} {a.rtype} (a pod in namespace {self.namespace})",
            f";; search {' '.join(self.search)}, ndots:{self.ndots}",
        ]
        for t in self.tried:
            why = " (NODATA)" if t.nodata else " (outside the cluster zone: CoreDNS forwards it upstream)" if (
                t.rcode == "REFUSED") else ""
            out.append(f";; tried {t.name}. {t.rtype}: {t.rcode}{why}")
        flags = "qr aa rd" if a.authoritative else "qr rd"
        out += [
            f";; ->>HEADER<<- opcode: QUERY, status: {a.rcode}",
            f";; flags: {flags}; QUERY: 1, ANSWER: {len(a.records)}, AUTHORITY: {len(a.authority)}, "
            f"ADDITIONAL: {len(a.additional)}",
            "",
            ";; QUESTION SECTION:",
            f";{a.name}.\t\tIN\t{a.rtype}",
        ]
        for title, recs in (("ANSWER", a.records), ("AUTHORITY", a.authority), ("ADDITIONAL", a.additional)):
            if recs:
                out += ["", f";; {title} SECTION:"] + [r.text(a.ttl) for r in recs]
        if a.notes:
            out += [""] + [f";; note: {n}" for n in a.notes]
        return "\n".join(out)


def resolve_as_pod(
    zone: Zone,
    name: str,
    rtype: str = "A",
    namespace: str = "default",
    *,
    ndots: int = NDOTS,
    search: tuple[str, ...] | None = None,
) -> Lookup:
    """Resolve ``name`` as a ClusterFirst pod in ``namespace`` does (glibc's rules): a name
    ending in a dot is absolute; one with fewer than ``ndots`` dots is tried with each
    search suffix, then as written; otherwise as written first. The walk stops at the
    first answer with records and goes on after NXDOMAIN or NODATA (glibc reports NODATA
    if any try gave it). A name outside the zones this resolver serves would go to
    CoreDNS's upstream: it is listed as REFUSED and the walk goes on."""
    rtype = rtype.upper()
    raw = name.strip()
    if not raw or raw == ".":
        raise ValueError("empty DNS name")
    if search is None and not _NAMESPACE.fullmatch(namespace):
        raise ValueError(f"namespace {namespace!r} is not a valid namespace name (a lowercase RFC 1123 label)")
    suffixes = search if search is not None else search_path(namespace, zone.zone)
    if raw.endswith("."):
        candidates = [raw[:-1]]
    else:
        expanded = [f"{raw}.{s}" for s in suffixes]
        candidates = [raw, *expanded] if raw.count(".") >= ndots else [*expanded, raw]
    if any(not label or len(label) > 63 for label in raw.removesuffix(".").split(".")):
        raise ValueError(f"{raw!r} is not a valid DNS name (an empty label, or a label over 63 characters)")
    if len(raw.removesuffix(".")) > 253:
        raise ValueError(f"{raw!r} is not a valid DNS name (over 253 characters)")
    candidates = [c for c in candidates if len(c) <= 253]  # a resolver skips suffixes that make it too long
    tried: list[Answer] = []
    for c in candidates:
        ans = zone.resolve(c, rtype)
        tried.append(ans)
        if ans.rcode == "NOERROR" and ans.records:
            return Lookup(raw, namespace, suffixes, ndots, tuple(tried), ans)
    in_zone = [a for a in tried if a.rcode != "REFUSED"]
    final = next((a for a in in_zone if a.nodata), in_zone[-1] if in_zone else tried[-1])
    return Lookup(raw, namespace, suffixes, ndots, tuple(tried), final)

"""Cluster DNS records from the same model kube-proxy's decisions come from.

:func:`build_zone` collects the records of one cluster zone: A/AAAA of every Service's
ClusterIPs, one A/AAAA per ready endpoint address of a headless Service, and whatever
the Service-type plugins add (the bundled ExternalName plugin adds CNAMEs).
:meth:`Zone.resolve` answers one question offline, following CNAMEs inside the zone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import Cluster, Service
    from .servicetypes import ServiceTypeRegistry

DEFAULT_ZONE = "cluster.local"
DEFAULT_TTL = 5
RTYPES = ("A", "AAAA", "CNAME", "SRV", "PTR", "TXT")


def normalize(name: str) -> str:
    """Names compare case-insensitively and without the root dot."""
    return name.strip().rstrip(".").lower()


def service_name(service: Service, zone: str) -> str:
    return f"{service.name}.{service.namespace}.svc.{normalize(zone)}".lower()


@dataclass(frozen=True)
class DnsRecord:
    """One resource record. ``name`` without the root dot; ``data`` in presentation
    form (an address, a target name with its dot, ``"prio weight port target."``);
    ``ttl`` None = the zone's."""

    name: str
    rtype: str
    data: str
    ttl: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalize(self.name))
        if self.rtype not in RTYPES:
            raise ValueError(f"DNS record {self.name}: type {self.rtype!r} is not one of {', '.join(RTYPES)}")


@dataclass(frozen=True)
class Answer:
    """What a resolver gets: ``rcode`` (``NOERROR``, ``NXDOMAIN`` or ``REFUSED``), the answer
    records in order (CNAMEs first), and notes that explain the answer."""

    name: str
    rtype: str
    rcode: str
    records: tuple[DnsRecord, ...] = ()
    notes: tuple[str, ...] = ()

    def text(self, ttl: int = DEFAULT_TTL) -> str:
        """The answer section as ``dig`` prints it."""
        return "\n".join(
            f"{r.name}.\t{r.ttl if r.ttl is not None else ttl}\tIN\t{r.rtype}\t{r.data}" for r in self.records
        )


@dataclass
class Zone:
    """The records of one cluster zone, by name."""

    zone: str = DEFAULT_ZONE
    ttl: int = DEFAULT_TTL
    records: dict[str, list[DnsRecord]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def add(self, record: DnsRecord) -> None:
        bucket = self.records.setdefault(record.name, [])
        if record not in bucket:
            bucket.append(record)

    def in_zone(self, name: str) -> bool:
        name = normalize(name)
        return name == self.zone or name.endswith("." + self.zone)

    def resolve(self, name: str, rtype: str = "A") -> Answer:
        """Answer ``rtype`` for ``name``: NXDOMAIN for a name with no records, NOERROR
        with no records (NODATA) for a name that has records of other types. For A and
        AAAA a CNAME is answered and followed while its target is inside the zone (other
        types on a CNAME name are NODATA, as CoreDNS answers for ExternalName)."""
        rtype = rtype.upper()
        qname = normalize(name)
        if not self.in_zone(qname):
            return Answer(qname, rtype, "REFUSED", notes=(f"{qname} is outside the zone {self.zone}",))
        out: list[DnsRecord] = []
        notes: list[str] = []
        current = qname
        seen: set[str] = set()
        while True:
            notes += self.notes.get(current, [])
            recs = self.records.get(current)
            if not recs:
                if current == qname:
                    return Answer(qname, rtype, "NXDOMAIN", notes=tuple(notes))
                break
            exact = [r for r in recs if r.rtype == rtype]
            if exact or rtype == "CNAME":
                out += exact
                break
            cname = next((r for r in recs if r.rtype == "CNAME"), None)
            if cname is None or rtype not in ("A", "AAAA"):  # CoreDNS: TXT/SRV on a CNAME name is NODATA
                break
            out.append(cname)
            target = normalize(cname.data)
            if target in seen or not self.in_zone(target):
                if not self.in_zone(target):
                    notes.append(f"{target} is outside the cluster zone: a resolver asks upstream for it")
                break
            seen.add(current)
            current = target
        return Answer(qname, rtype, "NOERROR", tuple(out), tuple(notes))


def _ready_addresses(cluster: Cluster, svc: Service) -> list[str]:
    seen: list[str] = []
    for sl in cluster.slices_for(svc.namespace, svc.name):
        for ep in sl.endpoints:
            if ep.ready:
                for ip in ep.addresses[:1]:
                    if ip not in seen:
                        seen.append(ip)
    return seen


def build_zone(
    cluster: Cluster,
    registry: ServiceTypeRegistry | None = None,
    zone: str = DEFAULT_ZONE,
    ttl: int = DEFAULT_TTL,
) -> Zone:
    """Every record of ``zone`` for ``cluster``: the core's and the Service-type plugins'."""
    if registry is None:
        from .plugins import get_plugin_manager

        registry = get_plugin_manager().registry
    z = Zone(normalize(zone), ttl)
    for key in sorted(cluster.services):
        svc = cluster.services[key]
        name = service_name(svc, z.zone)
        for rec in _core_records(cluster, svc, name):
            z.add(rec)
        if svc.type in registry:
            for rec in registry.call(svc.type, "dns_records", svc, z.zone, cluster):
                z.add(rec)
            if name not in z.records and not _proxied(registry, svc):
                # say why a name of an unproxied Service has no record (an IP-valued externalName)
                z.notes.setdefault(name, []).extend(registry.call(svc.type, "trace_steps", svc, None, None))
    return z


def _proxied(registry: ServiceTypeRegistry, svc: Service) -> bool:
    handler = registry.get(svc.type)
    return handler is None or handler.proxied


def _core_records(cluster: Cluster, svc: Service, name: str) -> Iterable[DnsRecord]:
    if svc.headless:
        for ip in _ready_addresses(cluster, svc):
            yield DnsRecord(name, "AAAA" if ipaddress.ip_address(ip).version == 6 else "A", ip)
        return
    for ip in svc.cluster_ips:
        yield DnsRecord(name, "AAAA" if ipaddress.ip_address(ip).version == 6 else "A", ip)

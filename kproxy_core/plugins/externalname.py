"""The ExternalName Service type (bundled plugin).

kube-proxy writes no rules for an ExternalName Service: it is a DNS alias. The cluster
DNS answers ``<svc>.<ns>.svc.<zone>`` with a CNAME to ``spec.externalName``
(DISCOVERY.md §1.6). An IP-valued externalName (``1.2.3.4``) passes API validation,
since it is a syntactically valid DNS name, yet CoreDNS keeps no record for it and
answers NXDOMAIN (coredns/coredns#2324): it is flagged when loaded, in the trace and
in the DNS answer.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from kproxy_core.dns import DnsRecord, service_name
from kproxy_core.hookspecs import hookimpl
from kproxy_core.model import Cluster, Service
from kproxy_core.plan import PlanPort
from kproxy_core.servicetypes import Report, ServiceType, ServiceTypeRegistry

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
IP_VALUED = (
    "is an IP address: CoreDNS answers NXDOMAIN for this Service (no CNAME, no A record; "
    "coredns/coredns#2324); use a ClusterIP Service without a selector and an EndpointSlice instead"
)


def target(service: Service) -> str:
    """``spec.externalName`` without its trailing dot, lower-cased."""
    return service.external_name.strip().rstrip(".").lower()


def ip_valued(service: Service) -> bool:
    try:
        ipaddress.ip_address(target(service))
    except ValueError:
        return False
    return True


def _dns1123_subdomain(name: str) -> str | None:
    if len(name) > 253:
        return "must be no more than 253 characters"
    for label in name.split("."):
        if not _LABEL.match(label):
            return (
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                "'-' or '.', and must start and end with an alphanumeric character"
            )
    return None


class ExternalNameType(ServiceType):
    name = "ExternalName"
    proxied = False

    def validate(self, service: Service, report: Report) -> None:
        raw = service.external_name
        if not raw:
            report.error("spec.externalName", "required for type ExternalName")
            return
        problem = _dns1123_subdomain(raw[:-1] if raw.endswith(".") else raw)
        if problem:
            report.error("spec.externalName", f"{raw!r}: {problem}")
        elif ip_valued(service):
            report.warn("spec.externalName", f"{raw!r} {IP_VALUED}")

    def dns_records(self, service: Service, zone: str, cluster: Cluster) -> Iterable[DnsRecord]:
        if service.external_name and not ip_valued(service):
            yield DnsRecord(service_name(service, zone), "CNAME", target(service) + ".")

    def trace_steps(self, service: Service, port: PlanPort | None, frontend: str | None) -> Iterable[str]:
        yield f"{service.ref} is type ExternalName: kube-proxy writes no rules for it and no packet is proxied"
        if ip_valued(service):
            yield f"externalName {service.external_name!r} {IP_VALUED}"
        else:
            yield (
                f"cluster DNS: {service_name(service, 'cluster.local')}. CNAME {target(service)}. "
                "(clients connect to whatever that name resolves to, outside kube-proxy)"
            )


@hookimpl
def kproxy_register_service_types(registry: ServiceTypeRegistry) -> None:
    registry.register(ExternalNameType())

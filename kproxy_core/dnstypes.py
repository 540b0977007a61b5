"""A DNS resource record as the cluster zone holds it (:class:`DnsRecord`).

The zone (:mod:`kproxy_core.dns`) is made of these, and Service-type plugins return them
from ``dns_records``; they live apart from the zone so that the plugin API can name
them without importing the resolver.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TTL = 5
RTYPES = ("A", "AAAA", "CNAME", "SRV", "PTR", "TXT", "SOA", "NS")


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
        object.__setattr__(self, "name", self.name.strip().rstrip("."))
        if self.rtype not in RTYPES:
            raise ValueError(f"DNS record {self.name}: type {self.rtype!r} is not one of {', '.join(RTYPES)}")

    def text(self, ttl: int = DEFAULT_TTL) -> str:
        """One line as ``dig`` prints it."""
        return f"{self.name}.\t{self.ttl if self.ttl is not None else ttl}\tIN\t{self.rtype}\t{self.data}"

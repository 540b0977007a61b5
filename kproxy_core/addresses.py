"""IP address parsing the way kube-proxy does it (Go's ``netutils.ParseIPSloppy``).

Kubernetes still accepts IPv4 addresses with leading zeros in objects created before
strict validation; kube-proxy reads ``010.000.000.001`` as the decimal ``10.0.0.1``.
Python's :mod:`ipaddress` rejects such strings, so everything that reads an address
from a manifest goes through :func:`parse_ip`.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Family = Literal["IPv4", "IPv6"]

FAMILIES: tuple[Family, Family] = ("IPv4", "IPv6")


def _strip_v4_zeros(text: str) -> str | None:
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and p.isascii() for p in parts):
        return None
    return ".".join(str(int(p)) for p in parts)


def parse_ip(text: object) -> tuple[IPAddress | None, bool]:
    """Parse ``text`` as an IP address; return ``(address or None, had_leading_zeros)``."""
    if not isinstance(text, str) or not text or text != text.strip():
        return None, False
    try:
        return ipaddress.ip_address(text), False
    except ValueError:
        pass
    if "%" in text:  # zoned addresses are not valid Kubernetes addresses
        return None, False
    fixed = _strip_v4_zeros(text)
    if fixed is None:
        return None, False
    try:
        return ipaddress.IPv4Address(fixed), True
    except ValueError:
        return None, False


def parse_cidr(text: object) -> tuple[IPNetwork | None, bool]:
    """Parse a CIDR like Go's ``ParseCIDRSloppy`` (host bits are masked off)."""
    if not isinstance(text, str) or "/" not in text:
        return None, False
    addr_text, _, bits = text.partition("/")
    addr, sloppy = parse_ip(addr_text)
    if addr is None or not bits.isdigit() or not bits.isascii():
        return None, False
    try:
        return ipaddress.ip_network(f"{addr}/{int(bits)}", strict=False), sloppy
    except ValueError:
        return None, False


def family_of(addr: IPAddress | IPNetwork) -> Family:
    return "IPv4" if addr.version == 4 else "IPv6"


def join_host_port(host: str, port: int) -> str:
    """``net.JoinHostPort``: ``10.0.0.1:80``, ``[fd00::1]:80``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(text: str) -> tuple[str, int | None]:
    """Inverse of :func:`join_host_port`; a bare address gives ``(address, None)``."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"{text!r}: missing ']'")
        if not rest:
            return host, None
        if not rest.startswith(":") or not rest[1:].isdigit():
            raise ValueError(f"{text!r}: bad port")
        return host, int(rest[1:])
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        if not port.isdigit():
            raise ValueError(f"{text!r}: bad port")
        return host, int(port)
    return text, None

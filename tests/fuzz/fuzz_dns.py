"""Fuzz the DNS message handler: ``kproxy_core.dnsserver.handle(wire, zone, tcp=...)``.

Only the public ``handle`` and the zone builder (``kproxy_core.dns.build_zone``) are used, so
whatever query path the server has is what runs. The first byte picks the input's shape:
a raw datagram over UDP or TCP, a TCP stream (length-prefixed messages, cut as the server
cuts them), or a well-formed query (names of the zone, any type and class, EDNS, flags)
built with dnspython and then damaged at a few bytes.

Contract: ``handle`` never raises and returns bytes or None; a response parses with
dnspython, is a response (QR) with the query's id and opcode, and fits the transport
(UDP: 512 bytes, or the query's EDNS payload if larger; TCP: 65535).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Finding, Provider, libfuzzer_main

NAMES = (
    "svc1.testns.svc.cluster.local.", "hdls1.testns.svc.cluster.local.", "_http._tcp.svc1.testns.svc.cluster.local.",
    "dup-name.hdls1.testns.svc.cluster.local.", "external.testns.svc.cluster.local.",
    "external-to-service.testns.svc.cluster.local.", "svc6.testns.svc.cluster.local.", "testns.svc.cluster.local.",
    "cluster.local.", "dns-version.cluster.local.", "1.0.0.10.in-addr.arpa.", "2.0.0.172.in-addr.arpa.",
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.c.b.a.4.3.2.1.ip6.arpa.", "example.com.", ".",
    "*.testns.svc.cluster.local.", "db.other.svc.cluster.local.", "_pg._tcp.db.other.svc.cluster.local.",
    "byip.other.svc.cluster.local.", "10-0-0-1.testns.pod.cluster.local.", "svc.cluster.local.",
)
RDTYPES = (1, 28, 33, 12, 5, 16, 6, 2, 255, 252, 251, 41, 0, 65535, 99, 15)

_state: dict[str, Any] = {}


def setup() -> None:
    import dns.edns
    import dns.flags
    import dns.message
    import dns.name
    import dns.rdataclass
    import dns.rdatatype
    from dns_cluster import coredns_objects, extra_objects

    import kproxy_core as kp
    from kproxy_core.dns import build_zone
    from kproxy_core.dnsserver import handle

    cluster = kp.Cluster.from_objects(coredns_objects() + extra_objects())
    _state.update(
        handle=handle,
        zones=[build_zone(cluster, serial=1), build_zone(cluster, zone="example.org", ttl=0, pods="insecure",
                                                          endpoint_pod_names=True, serial=2)],
        message=dns.message,
        name=dns.name,
        edns=dns.edns,
    )


def one_input(data: bytes) -> None:
    if not _state:
        setup()
    p = Provider(data)
    mode = p.byte() % 5
    zone = _state["zones"][p.byte() & 1]
    if mode == 0:
        _check(p.rest(), zone, tcp=False)
    elif mode == 1:
        _check(p.rest(), zone, tcp=True)
    elif mode == 2:  # a TCP stream: messages behind 2-byte lengths, as the server reads them
        stream = p.rest()
        at = 0
        while at + 2 <= len(stream):
            n = int.from_bytes(stream[at:at + 2], "big")
            msg = stream[at + 2:at + 2 + n]
            if len(msg) < n:
                break
            _check(msg, zone, tcp=True)
            at += 2 + n
    else:
        wire = _query(p)
        tcp = p.bool()
        edits = p.int(0, 4) if mode == 4 else 0
        buf = bytearray(wire)
        for _ in range(edits):
            if not buf:
                break
            at = p.int(0, len(buf) - 1)
            op = p.int(0, 2)
            if op == 0:
                buf[at] = p.byte()
            elif op == 1:
                del buf[at:at + p.int(1, 8)]
            else:
                buf[at:at] = p.bytes(8)
        _check(bytes(buf), zone, tcp=tcp)


def _query(p: Provider) -> bytes:
    message, name_mod = _state["message"], _state["name"]
    labels = p.int(0, 3)
    if labels:
        qname = ".".join(p.text(12).replace(".", "-") or "x" for _ in range(labels)) + "." + p.choice(NAMES)
        try:
            name = name_mod.from_text(qname)
        except Exception:
            name = name_mod.from_text(p.choice(NAMES))
    else:
        name = name_mod.from_text(p.choice(NAMES))
    rdtype = p.choice(RDTYPES) if p.bool() else p.int(0, 65535)
    rdclass = 1 if p.bool() else p.int(0, 65535)
    q = message.Message(id=p.int(0, 65535))
    q.flags = p.int(0, 0xFFFF) & ~0x8000 if p.bool() else 0x0100
    q.question.append(_rrset(name, rdclass, rdtype))
    if p.bool():
        options = []
        if p.bool():
            options.append(_state["edns"].GenericOption(p.int(0, 65535), p.bytes(16)))
        q.use_edns(p.int(0, 3) if p.bool() else 0, p.int(0, 0xFFFF) << 16 if p.bool() else 0, p.int(0, 65535),
                   options=options)
    if p.int(0, 7) == 0:  # a second question
        q.question.append(_rrset(name_mod.from_text(p.choice(NAMES)), 1, p.choice(RDTYPES)))
    try:
        return bytes(q.to_wire())
    except Exception:
        return bytes(12)


def _rrset(name: Any, rdclass: int, rdtype: int) -> Any:
    import dns.rrset

    return dns.rrset.RRset(name, rdclass, rdtype)


def _check(wire: bytes, zone: Any, *, tcp: bool) -> None:
    try:
        out = _state["handle"](wire, zone, tcp=tcp)
    except Exception as e:
        raise Finding(f"handle raised {type(e).__name__}: {e}") from e
    if out is None:
        return
    if not isinstance(out, bytes):
        raise Finding(f"handle returned {type(out).__name__}, not bytes or None")
    message = _state["message"]
    try:
        resp = message.from_wire(out)
    except Exception as e:
        raise Finding(f"the response does not parse: {type(e).__name__}: {e}: {out!r}") from e
    if len(wire) >= 2 and resp.id != int.from_bytes(wire[:2], "big"):
        raise Finding(f"the response's id {resp.id} is not the query's {wire[:2].hex()}")
    if not resp.flags & 0x8000:
        raise Finding("the response has QR=0")
    if len(wire) >= 4 and ((resp.flags >> 11) & 0xF) != ((wire[2] >> 3) & 0xF):
        raise Finding("the response's opcode is not the query's")
    limit = 65535
    if not tcp:
        limit = 512
        try:
            q = message.from_wire(wire)
        except Exception:
            q = None
        if q is not None and q.edns >= 0:
            limit = max(512, q.payload)
    if len(out) > limit:
        raise Finding(f"a {len(out)}-byte response over {'TCP' if tcp else 'UDP'} (limit {limit})")


if __name__ == "__main__":
    libfuzzer_main(setup, one_input, ["kproxy_core.dnsserver", "kproxy_core.dns"])

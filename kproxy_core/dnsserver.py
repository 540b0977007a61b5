"""A cluster DNS server over a :class:`~kproxy_core.dns.Zone`: UDP and TCP on one port, asyncio.

:func:`handle` turns one query message into the response wire (or None: drop it); :class:`DnsServer`
runs it on a socket pair, asking ``source()`` for the zone on every query, so a new zone (after
``engine.apply``, or a reload) answers without a restart; :func:`serve_in_thread` runs a server in a
background thread; :func:`add_serve_arguments` and :func:`serve_command` are ``kproxy dns serve``.

The server is authoritative for the cluster zone and the reverse zones only, and never recurses:
every other name is REFUSED (the zone says so) and RA is 0.

What goes on the wire, in the order the checks run:

- fewer than 12 bytes, or QR=1 (a response): dropped, nothing sent;
- an opcode other than QUERY: NOTIMP; a message that does not parse: FORMERR echoing only the id;
- EDNS version above 0: BADVERS; not exactly one question (or a question of type OPT): FORMERR;
- a class other than IN: REFUSED; AXFR/IXFR: REFUSED (no zone transfers: the zone changes with the
  cluster, and a client that wants every record can read the manifests);
- otherwise the zone's :class:`~kproxy_core.dns.Answer`: rcode, AA, answer/authority/additional
  records as RRsets grouped by (name, type) in the zone's order; an exception in the zone or a record
  it cannot express gives SERVFAIL and one log line.

A query with an OPT record gets OPT version 0 with our payload size (1232) back. Over UDP the response
must fit max(512, the client's EDNS payload), or 512 without EDNS; one that does not is sent as the
question alone with TC=1 (OPT kept), and the client retries over TCP (limit 65535). TCP connections
carry any number of length-prefixed queries, answered in order; a connection closes when a message
(or the next length prefix) does not arrive within ``tcp_timeout``, and connections beyond
``max_tcp_connections`` are closed at once.

Responses are dnspython's rendering of those messages. A query of the common shape (one question
with a plain name, class IN, no EDNS or a bare OPT) gets the same bytes without a Message being
built: it is parsed by hand, and each (name, type) is rendered to wire once and kept until the zone
changes, each query patching in its id, RD bit and the question's spelling (see "the fast path"
below; tests/test_dns_fastpath.py compares the two paths). Everything else goes through dnspython.
UDP is served by a thread doing blocking recvfrom/sendto on a socket with a 4 MB receive buffer;
``kproxy dns serve --workers N`` runs N such servers in processes sharing the port (SO_REUSEPORT).

Problems are logged on the ``kproxy.dns`` logger, one line each, the same problem at most once per
:data:`LOG_EVERY` seconds; malformed client messages at DEBUG, zone failures at ERROR. Per-query lines
only with ``log_queries``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import hashlib
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from .addresses import join_host_port, split_host_port
from .dns import DEFAULT_TTL, DEFAULT_ZONE, POD_MODES, normalize
from .errors import KproxyError

if TYPE_CHECKING:
    from .dns import Answer, DnsRecord, Zone
    from .engine import Engine
    from .model import Cluster

__all__ = [
    "DEFAULT_CACHE",
    "DEFAULT_LISTEN",
    "DEFAULT_MAX_TCP",
    "DEFAULT_TCP_TIMEOUT",
    "DEFAULT_UDP_BUFFER",
    "EDNS_PAYLOAD",
    "SERVE_DESCRIPTION",
    "SERVE_HELP",
    "DnsServer",
    "ServerThread",
    "add_serve_arguments",
    "add_zone_arguments",
    "handle",
    "serve_command",
    "serve_in_thread",
    "zone_options",
]

log = logging.getLogger("kproxy.dns")

EDNS_PAYLOAD: Final = 1232  # the DNS flag day 2020 size: no IP fragmentation on common paths
UDP_MIN: Final = 512
TCP_MAX: Final = 65535
HEADER_LEN: Final = 12
DEFAULT_LISTEN: Final = "127.0.0.1:5353"
DEFAULT_TCP_TIMEOUT: Final = 5.0
DEFAULT_MAX_TCP: Final = 128
LOG_EVERY: Final = 10.0
DEFAULT_CACHE: Final = 10000
DEFAULT_UDP_BUFFER: Final = 4 << 20  # bytes: a burst of 500 queries overflowed Linux's default 208 KB
UDP_RECEIVE: Final = 65535
BIND_ATTEMPTS: Final = 20

SERVE_HELP: Final = "answer DNS queries for the cluster zone over UDP and TCP"
SERVE_DESCRIPTION: Final = (
    "Serve the cluster DNS records of the manifests (CoreDNS kubernetes-plugin semantics) over UDP and TCP. "
    "The server is authoritative for the cluster zone (--domain) and the reverse zones in-addr.arpa and "
    "ip6.arpa only, with no recursion: every other name gets REFUSED, and zone transfers (AXFR/IXFR) too."
)


# --------------------------------------------------------------------------- logging


class _Throttle:
    """Logs a problem once, then at most once per ``every`` seconds with a count of the repeats,
    so a client sending garbage or a zone failing on every query cannot flood the log."""

    def __init__(self, every: float = LOG_EVERY) -> None:
        self.every = every
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}

    def __call__(self, level: int, key: str, msg: str, *args: object) -> None:
        if not log.isEnabledFor(level):
            return
        now = time.monotonic()
        with self._lock:
            last, repeats = self._seen.get(key, (-self.every, 0))
            if now - last < self.every:
                self._seen[key] = (last, repeats + 1)
                return
            if len(self._seen) > 1024:
                self._seen.clear()
            self._seen[key] = (now, 0)
        if repeats:
            msg += f" (and {repeats} more like it in the last {now - last:.0f} s)"
        log.log(level, msg, *args)


_problem = _Throttle()


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines() or [""]
    text = f"{type(exc).__name__}: {lines[0]}" if not isinstance(exc, KproxyError) else lines[0]
    if len(lines) > 1:
        text += f" (and {len(lines) - 1} more)"
    return text


# --------------------------------------------------------------------------- one message


@dataclass(frozen=True)
class _Reply:
    wire: bytes | None
    summary: str  # for the per-query log line
    cacheable: bool = False  # the zone's answer: the same query bytes get the same response from the same zone


_OPCODE_QUERY: Final = int(dns.opcode.QUERY)
_ZONE_TRANSFERS: Final = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})


def handle(wire: bytes, zone: Zone, *, tcp: bool) -> bytes | None:
    """The response to one DNS message ``wire`` from ``zone``, or None when nothing is to be sent.

    ``tcp``: the message came over TCP (size limit 65535) rather than UDP (512, or the client's
    EDNS payload). Never raises: a failure inside the zone is a SERVFAIL response. The same path
    as the server's: a query of the common shape is answered from the zone's rendered answers.
    """
    wire = bytes(wire)  # the same object for bytes; a bytearray or memoryview copied
    answers = _answers_of(zone)
    if answers is not None:
        out = _quick(wire, tcp, answers)
        if out is not None:
            return out
    return _respond(wire, lambda: zone, tcp=tcp).wire


def _respond(wire: bytes, source: Callable[[], Zone], *, tcp: bool) -> _Reply:
    if len(wire) < HEADER_LEN:
        _problem(logging.DEBUG, "short", "dropped a %d-byte message: shorter than a DNS header", len(wire))
        return _Reply(None, "short message dropped")
    qid = int.from_bytes(wire[0:2], "big")
    flags = int.from_bytes(wire[2:4], "big")
    if flags & dns.flags.QR:
        _problem(logging.DEBUG, "qr", "dropped a message with QR=1 (a response, not a query)")
        return _Reply(None, "response dropped")
    opcode = (flags >> 11) & 0xF
    try:
        query = dns.message.from_wire(wire)
    except Exception as e:  # anything dnspython cannot parse is the client's problem
        if opcode != _OPCODE_QUERY:
            return _Reply(_header_only(qid, flags, dns.rcode.NOTIMP), f"opcode {opcode} NOTIMP")
        _problem(logging.DEBUG, "formerr", "FORMERR for a malformed query: %s", _one_line(e))
        return _Reply(_header_only(qid, flags, dns.rcode.FORMERR), "malformed FORMERR")
    try:
        return _answer(query, source, tcp=tcp)
    except Exception as e:  # a bug of ours: still answer
        _problem(logging.ERROR, f"internal:{type(e).__name__}", "SERVFAIL: internal error: %s", _one_line(e))
        return _Reply(_header_only(qid, flags, dns.rcode.SERVFAIL), "internal error SERVFAIL")


def _header_only(qid: int, query_flags: int, rcode: dns.rcode.Rcode) -> bytes:
    """A response carrying only the header: the id, opcode and RD of the query, and ``rcode``."""
    msg = dns.message.Message(id=qid)
    msg.flags = dns.flags.QR | (query_flags & dns.flags.RD)
    msg.set_opcode(dns.opcode.Opcode((query_flags >> 11) & 0xF))
    msg.set_rcode(rcode)
    return msg.to_wire()


def _answer(query: dns.message.Message, source: Callable[[], Zone], *, tcp: bool) -> _Reply:
    opcode = query.opcode()
    if opcode != dns.opcode.QUERY:
        return _final(_bare_response(query, dns.rcode.NOTIMP, keep_question=True), query, tcp,
                      f"opcode {dns.opcode.to_text(opcode)} NOTIMP")
    if query.edns > 0:
        return _final(_bare_response(query, dns.rcode.BADVERS, keep_question=True), query, tcp,
                      f"EDNS version {query.edns} BADVERS")
    if len(query.question) != 1 or query.question[0].rdtype == dns.rdatatype.OPT:
        return _final(_bare_response(query, dns.rcode.FORMERR, keep_question=False), query, tcp,
                      f"{len(query.question)} questions FORMERR")
    q = query.question[0]
    qtext = f"{q.name} {dns.rdataclass.to_text(q.rdclass)} {dns.rdatatype.to_text(q.rdtype)}"
    if q.rdclass != dns.rdataclass.IN:
        return _final(_bare_response(query, dns.rcode.REFUSED, keep_question=True), query, tcp, f"{qtext} REFUSED")
    if q.rdtype in _ZONE_TRANSFERS:
        return _final(_bare_response(query, dns.rcode.REFUSED, keep_question=True), query, tcp,
                      f"{qtext} REFUSED (no zone transfers)")
    response = dns.message.make_response(query, recursion_available=False, our_payload=EDNS_PAYLOAD)
    try:
        zone = source()
        answer = zone.resolve(q.name.to_text(omit_final_dot=True), dns.rdatatype.to_text(q.rdtype))
        _fill(response, answer, zone.ttl)
    except Exception as e:
        _problem(logging.ERROR, f"zone:{type(e).__name__}", "SERVFAIL for %s: the zone failed: %s",
                 qtext, _one_line(e))
        return _final(_bare_response(query, dns.rcode.SERVFAIL, keep_question=True), query, tcp,
                      f"{qtext} SERVFAIL")
    summary = f"{qtext} {dns.rcode.to_text(response.rcode())} {sum(len(r) for r in response.answer)} answers"
    return _final(response, query, tcp, summary, cacheable=True)


def _bare_response(query: dns.message.Message, rcode: dns.rcode.Rcode, *, keep_question: bool) -> dns.message.Message:
    response = dns.message.make_response(query, recursion_available=False, our_payload=EDNS_PAYLOAD)
    if not keep_question:
        response.question = []
    response.set_rcode(rcode)
    return response


def _fill(response: dns.message.Message, answer: Answer, ttl: int) -> None:
    try:
        rcode = dns.rcode.from_text(answer.rcode)
    except dns.rcode.UnknownRcode:
        raise ValueError(f"the zone answered rcode {answer.rcode!r}") from None
    response.set_rcode(rcode)
    if answer.authoritative:
        response.flags |= dns.flags.AA
    response.answer = _rrsets(answer.records, ttl)
    response.authority = _rrsets(answer.authority, ttl)
    response.additional = _rrsets(answer.additional, ttl)


def _rrsets(records: Sequence[DnsRecord], default_ttl: int) -> list[dns.rrset.RRset]:
    """Records grouped into RRsets by (name, type), in order of first appearance; an RRset
    has one TTL, so records of one set with different TTLs get the smallest."""
    out: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
    for rec in records:
        name = _name(rec.name)
        rdata = _rdata(rec.rtype, rec.data)
        rrset = out.get((name, rdata.rdtype))
        if rrset is None:
            rrset = out[(name, rdata.rdtype)] = dns.rrset.RRset(name, dns.rdataclass.IN, rdata.rdtype)
        rrset.add(rdata, default_ttl if rec.ttl is None else rec.ttl)
    return list(out.values())


@functools.lru_cache(maxsize=8192)
def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text, origin=dns.name.root)


@functools.lru_cache(maxsize=8192)
def _rdata(rtype: str, data: str) -> dns.rdata.Rdata:
    # cached: parsing presentation form is most of the cost of an answer, and rdata are immutable
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), data, origin=dns.name.root,
                              relativize=False)


def _final(
    response: dns.message.Message, query: dns.message.Message, tcp: bool, summary: str, *, cacheable: bool = False
) -> _Reply:
    if tcp:
        limit = TCP_MAX
    elif query.edns >= 0:
        limit = max(UDP_MIN, query.payload)
    else:
        limit = UDP_MIN
    try:
        # want_shuffle=False: the zone's order, as CoreDNS without its loadbalance plugin
        return _Reply(response.to_wire(max_size=limit, want_shuffle=False), summary, cacheable)
    except dns.exception.TooBig:
        pass
    # Question only, TC=1, OPT kept: the client asks again over TCP (RFC 7766 section 5)
    response.answer = []
    response.authority = []
    response.additional = []
    response.flags |= dns.flags.TC
    return _Reply(response.to_wire(max_size=limit), summary + " TC", cacheable)


# --------------------------------------------------------------------------- the fast path
#
# Almost every query a cluster DNS server sees has one shape: a header with QDCOUNT 1, one
# question with a plain uncompressed name, class IN, and nothing else or one OPT RR (version 0,
# no options). Such a query is answered here without dnspython: its answer is rendered to wire
# once per zone and question (lower-cased name, type), byte for byte as _respond renders it, and
# kept in the zone's _Answers; each query then only patches in its id, its RD bit and the
# question's spelling (0x20 case randomisation is echoed). Anything else (other opcodes or
# classes, EDNS options or versions, compression in the question, TCP messages of another shape,
# malformed input, AXFR/IXFR/OPT questions, names dnspython would print with escapes, a zone that
# fails) goes to _respond, which is the reference: tests/test_dns_fastpath.py compares the two.
#
# Why the patching is exact: dnspython compresses names case-insensitively, so past the question
# every byte of a response is the same whatever the question's case (the question's own bytes are
# at offset 12, and owner names equal to it become pointers there). The response does not depend
# on the query's other flags (dnspython's make_response copies RD only; CD and DO are not echoed),
# and the OPT RR it adds is always the same 11 bytes; only the size limit (512, the query's EDNS
# payload, or 65535 over TCP) decides between the whole response and the question alone with TC.
#
# Measured (2-core Xeon 2.5 GHz, 10,000 Services): dnspython's path costs ~224 us a query; here a
# rendered answer reused costs ~1.5 us (the server answers 161,000 queries/s on one core when every
# answer is kept, recvfrom and sendto included), and rendering one ~20-40 us, half of it
# Zone.resolve (79,000 queries/s when 15 % of the questions are names never seen before).

_PLAIN_COUNTS: Final = b"\x00\x01\x00\x00\x00\x00"  # QDCOUNT 1, ANCOUNT 0, NSCOUNT 0
_OPT_OWNER_TYPE: Final = b"\x00\x00\x29"  # the root name, type OPT
_OPT_RR: Final = _OPT_OWNER_TYPE + EDNS_PAYLOAD.to_bytes(2, "big") + bytes(6)  # version 0, no flags, no options
_CLASS_IN: Final = b"\x00\x01"
_SLOW_TYPES: Final = frozenset(int(t).to_bytes(2, "big") for t in (dns.rdatatype.OPT, *_ZONE_TRANSFERS))
# label bytes dnspython's to_text prints as themselves (others become \DDD or get a backslash)
_TEXT_BYTES: Final = bytes(range(0x21, 0x7F)).translate(None, b'"().;\\@$')
_HEAD = struct.Struct("!HHHHH")  # flags, QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT: the header after the id
_RR_HEAD = struct.Struct("!HHI")  # type, class, TTL
_COMPRESSED: Final = frozenset({dns.rdatatype.NS, dns.rdatatype.CNAME, dns.rdatatype.PTR})  # dnspython compresses
_PLAIN_RDATA: Final = frozenset({dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.TXT, dns.rdatatype.SRV})
_SINGLETONS: Final = frozenset(t for t in dns.rdatatype.RdataType if dns.rdatatype.is_singleton(t))
_RCODES: Final = {r.name: int(r) for r in dns.rcode.Rcode if int(r) <= 15}
# plain ints: arithmetic on dnspython's enum flags costs ~2 us an operation
_QR, _AA, _TC, _IN = int(dns.flags.QR), int(dns.flags.AA), int(dns.flags.TC), int(dns.rdataclass.IN)
MAX_KEPT: Final = 200_000  # answers with records kept per zone: a bound for `pods insecure`, where any IP has one

# An entry: (headers, truncated headers, tail). A header is the 10 bytes after the id, indexed by
# rd | opt << 1 (the header tuples are shared by every answer with the same flags and counts);
# the tail is everything after the question's name (its type and class first), without the OPT
# RR. ~250 bytes an answer with its key (10,000 Services), most of it the tail.
_Entry = tuple[tuple[bytes, ...], tuple[bytes, ...], bytes]
_Name = tuple[bytes, bytes]  # a name's uncompressed wire form, and the same lower-cased


class _Answers:
    """The rendered answers of one zone, keyed by the question's lower-cased name (wire) and type.

    Answers with records are kept for the zone's life (a zone never changes: a new cluster state
    is a new zone, and so a new _Answers); at most MAX_KEPT of them, the oldest out first. Answers
    without (NXDOMAIN, NODATA, REFUSED: any name can ask for one) are kept up to ``negative_max``.
    Shared by threads: a race renders an answer twice, and both renderings are the same."""

    __slots__ = ("kept", "negative", "negative_max", "zone")

    def __init__(self, zone: Zone, negative_max: int) -> None:
        self.zone = zone
        # ordered: the oldest goes in O(1) (a dict's next(iter()) walks past the deleted entries
        # at its front: 1.8 us an eviction at 10,000, against 0.3)
        self.kept: OrderedDict[bytes, _Entry] = OrderedDict()
        self.negative: OrderedDict[bytes, _Entry] = OrderedDict()
        self.negative_max = negative_max

    def render(self, wire: bytes, qend: int, key: bytes) -> _Entry | None:
        entry = _render(wire, qend, self.zone)
        if entry is None:
            return None
        store, bound = (self.kept, MAX_KEPT) if entry[0][0][4:6] != b"\x00\x00" else (self.negative, self.negative_max)
        if bound:
            if len(store) >= bound:
                with contextlib.suppress(KeyError):  # another thread emptied it first
                    store.popitem(last=False)
            store[key] = entry
        return entry


def _quick(wire: bytes, tcp: bool, answers: _Answers) -> bytes | None:
    """The response to a query of the common shape from ``answers``, or None: take _respond."""
    try:
        if wire[2] & 0xF8 or wire[4:10] != _PLAIN_COUNTS or wire[10]:  # QR, opcode; counts
            return None
        i = 12
        n = wire[12]
        while n:
            if n > 63:  # a pointer, or a label type dnspython refuses
                return None
            i += n + 1
            n = wire[i]
        qend = i + 1
        if qend == 13 or qend > 267:  # the root; over 255 bytes
            return None
        end = qend + 4
        if wire[11] == 0 and len(wire) == end:
            opt = 0
            limit = UDP_MIN
        elif (wire[11] == 1 and len(wire) == end + 11 and wire[end:end + 3] == _OPT_OWNER_TYPE
              and not wire[end + 6] and wire[end + 9] == 0 and wire[end + 10] == 0):  # version 0, RDLEN 0
            opt = 1
            limit = max(UDP_MIN, wire[end + 3] << 8 | wire[end + 4])
        else:
            return None
        qtype = wire[qend:qend + 2]
        if wire[qend + 2:end] != _CLASS_IN or qtype in _SLOW_TYPES:
            return None
        key = wire[12:qend].lower() + qtype
        entry = answers.kept.get(key) or answers.negative.get(key) or answers.render(wire, qend, key)
        if entry is None:
            return None
        heads, truncated, tail = entry
        k = (wire[2] & 1) | opt << 1
        if qend + len(tail) + 11 * opt <= (TCP_MAX if tcp else limit):
            out = wire[:2] + heads[k] + wire[12:qend] + tail
        else:
            out = wire[:2] + truncated[k] + wire[12:end]
        return out + _OPT_RR if opt else out
    except Exception:  # never ours to report: _respond answers it, or logs the zone's failure
        return None


def _render(wire: bytes, qend: int, zone: Zone) -> _Entry | None:
    """The answer to the question at ``wire[12:qend + 4]`` rendered as dnspython renders it, or None
    when a name or an answer is one _respond must handle. Raises on a zone failure."""
    labels = []
    i = 12
    while i < qend - 1:
        label = wire[i + 1:i + 1 + wire[i]]
        if label.translate(None, _TEXT_BYTES):
            return None
        labels.append(label.decode("ascii"))
        i += 1 + wire[i]
    qtype = int.from_bytes(wire[qend:qend + 2], "big")
    answer = zone.resolve(".".join(labels), _type_text(qtype))
    rcode = _RCODES.get(answer.rcode)
    if rcode is None:
        return None
    out = bytearray(wire[:qend + 4])
    compress: dict[bytes, int] = {}
    low = wire[12:qend].lower()
    i = 0
    while low[i]:
        compress[low[i:]] = 12 + i
        i += low[i] + 1
    counts = []
    for records in (answer.records, answer.authority, answer.additional):
        count = 0
        if not records:
            counts.append(0)
            continue
        for owner, rdtype, ttl, plans in _wire_rrsets(records, zone.ttl):
            for fixed, names, rest in plans:
                _put_name(out, compress, *owner)
                out += _RR_HEAD.pack(rdtype, _IN, ttl)
                at = len(out)
                out += b"\x00\x00"
                if fixed is not None:
                    out += fixed
                else:
                    for name in names:
                        _put_name(out, compress, *name)
                    out += rest
                out[at:at + 2] = (len(out) - at - 2).to_bytes(2, "big")
            count += len(plans)
        counts.append(count)
    heads, truncated = _headers(_QR | (_AA if answer.authoritative else 0) | rcode, *counts)
    return heads, truncated, bytes(out[qend:])


@functools.lru_cache(maxsize=4096)
def _headers(flags: int, an: int, ns: int, ar: int) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """The headers after the id, whole and truncated (question and OPT only, TC), for each
    rd | opt << 1: RD copied from the query, an OPT RR added when it had one."""
    heads = tuple(_HEAD.pack(flags | (k & 1) << 8, 1, an, ns, ar + (k >> 1)) for k in range(4))
    truncated = tuple(_HEAD.pack(flags | _TC | (k & 1) << 8, 1, 0, 0, k >> 1) for k in range(4))
    return heads, truncated


def _wire_rrsets(
    records: Sequence[DnsRecord], default_ttl: int
) -> list[tuple[_Name, int, int, list[tuple[bytes | None, tuple[_Name, ...], bytes]]]]:
    """:func:`_rrsets` for the renderer: (owner, type, TTL, rdata plans) per RRset, grouped and
    de-duplicated as dnspython's RRset does it (names and rdata compared case-insensitively; a
    singleton type such as CNAME keeps the last rdata; the TTL is the smallest)."""
    groups: dict[tuple[bytes, int], list[Any]] = {}
    for rec in records:
        owner = _wire_name(rec.name)
        key = owner[1]
        rdtype, digest, plan = _plan(rec.rtype, rec.data)
        ttl = default_ttl if rec.ttl is None else rec.ttl
        if not 0 <= ttl <= 0xFFFFFFFF:
            raise ValueError(f"TTL {ttl}")
        group = groups.get((key, rdtype))
        if group is None:
            groups[(key, rdtype)] = [owner, rdtype, ttl, {digest: plan}]
            continue
        group[2] = min(group[2], ttl)
        if rdtype in _SINGLETONS:
            group[3] = {digest: plan}
        else:
            group[3].setdefault(digest, plan)
    return [(owner, rdtype, ttl, list(plans.values())) for owner, rdtype, ttl, plans in groups.values()]


def _put_name(out: bytearray, compress: dict[bytes, int], wire: bytes, low: bytes) -> None:
    """Write a name as dnspython's Name.to_wire does with a compression table (keyed by the
    lower-cased wire of a suffix: names compare case-insensitively): a pointer to the first
    earlier occurrence of a suffix, else the label, remembering where it starts."""
    i = 0
    while wire[i]:
        key = low[i:]
        pos = compress.get(key)
        if pos is not None:
            out += (0xC000 + pos).to_bytes(2, "big")
            return
        if len(out) <= 0x3FFF:
            compress[key] = len(out)
        out += wire[i:i + wire[i] + 1]
        i += wire[i] + 1
    out.append(0)


def _wire(name: dns.name.Name) -> _Name:
    wire = name.to_wire()
    assert wire is not None
    return wire, wire.lower()


@functools.lru_cache(maxsize=1 << 16)
def _wire_name(text: str) -> _Name:
    return _wire(_name(text))


@functools.lru_cache(maxsize=1 << 16)
def _plan(rtype: str, data: str) -> tuple[int, bytes, tuple[bytes | None, tuple[_Name, ...], bytes]]:
    """(type, rdata compared as dnspython compares it, how to write it): fixed bytes, or the
    names to compress (NS, CNAME, PTR, SOA: as dnspython does) and the bytes after them."""
    rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), data, origin=dns.name.root,
                             relativize=False)
    digest = rd.to_digestable(dns.name.root)
    whole = rd.to_wire()
    assert whole is not None
    if rd.rdtype in _PLAIN_RDATA:
        return int(rd.rdtype), digest, (whole, (), b"")
    if rd.rdtype in _COMPRESSED:
        names = [rd.target]  # type: ignore[attr-defined]
    elif rd.rdtype == dns.rdatatype.SOA:
        names = [rd.mname, rd.rname]  # type: ignore[attr-defined]
    else:
        raise ValueError(f"type {rtype} is not rendered here")
    split = tuple(_wire(n) for n in names)
    return int(rd.rdtype), digest, (None, split, whole[sum(len(w) for w, _ in split):])


@functools.lru_cache(maxsize=1024)
def _type_text(rdtype: int) -> str:
    return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))


_answers_by_zone: dict[int, tuple[weakref.ref[Any], _Answers]] = {}
_answers_lock = threading.Lock()


def _answers_of(zone: Zone) -> _Answers | None:
    """handle()'s rendered answers for ``zone`` (a few zones at a time), or None when the zone
    cannot be tracked (no weak reference to it)."""
    hit = _answers_by_zone.get(id(zone))
    if hit is not None and hit[0]() is zone:
        return hit[1]
    try:
        ref = weakref.ref(zone)
    except TypeError:
        return None
    answers = _Answers(zone, DEFAULT_CACHE)
    with _answers_lock:
        for k, (r, _) in list(_answers_by_zone.items()):
            if r() is None:
                del _answers_by_zone[k]
        if len(_answers_by_zone) >= 8:
            del _answers_by_zone[next(iter(_answers_by_zone))]
        _answers_by_zone[id(zone)] = (ref, answers)
    return answers


def _summary(wire: bytes, answers: _Answers, tcp: bool) -> str:
    """The log line's text for a query _quick answered (only with ``log_queries``)."""
    i = 12
    labels = []
    while wire[i]:
        labels.append(wire[i + 1:i + 1 + wire[i]].decode("ascii", "replace"))
        i += wire[i] + 1
    qtype = wire[i + 1:i + 3]
    key = wire[12:i + 1].lower() + qtype
    entry = answers.kept.get(key) or answers.negative.get(key)
    text = f"{'.'.join(labels)}. IN {_type_text(int.from_bytes(qtype, 'big'))}"
    if entry is None:
        return text
    flags, _, an = struct.unpack("!HHH", entry[0][0][:6])
    return f"{text} {dns.rcode.to_text(dns.rcode.Rcode.make(flags & 0xF))} {an} answers"


# --------------------------------------------------------------------------- the server


class DnsServer:
    """UDP and TCP DNS on ``host``:``port`` (port 0: a free port, the same for both; see
    :attr:`port` after :meth:`start`), answering from ``source()``, which is called once per query.

    ``tcp_timeout``: seconds a TCP connection may wait for the next query (or the rest of one)
    before it is closed; ``max_tcp_connections``: open TCP connections beyond this are closed
    at once; ``log_queries``: one INFO line per query on ``kproxy.dns``; ``cache_size``: answers
    without records (NXDOMAIN, NODATA, REFUSED) kept rendered per zone (0: none); answers with
    records are kept for the zone's life (up to :data:`MAX_KEPT`). Rendered answers belong to the
    Zone object ``source()`` returned, so a Zone must not be changed in place while it is served:
    changes show up by ``source()`` returning a new one (as ``Engine.dns_zone`` does after ``apply``).
    ``udp_buffer``: the UDP socket's receive buffer asked of the kernel, in bytes (as root beyond
    ``net.core.rmem_max``); :attr:`udp_buffer_granted` says what it gave. ``reuse_port``: bind with
    SO_REUSEPORT, so that several servers (processes) share the port.

    UDP is served by a thread of its own doing blocking ``recvfrom``/``sendto``; TCP by the event
    loop. (A bare echo loop measured on the 2-core test box: ~190,000 datagrams/s in a thread,
    ~23,000 through an asyncio DatagramProtocol, which wakes epoll once per datagram.)
    Use from a running event loop: ``await start()``, ``await stop()`` (or ``async with``).
    """

    def __init__(
        self,
        source: Callable[[], Zone],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tcp_timeout: float = DEFAULT_TCP_TIMEOUT,
        max_tcp_connections: int = DEFAULT_MAX_TCP,
        log_queries: bool = False,
        cache_size: int = DEFAULT_CACHE,
        udp_buffer: int = DEFAULT_UDP_BUFFER,
        reuse_port: bool = False,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is not in 0..65535")
        if tcp_timeout <= 0:
            raise ValueError("tcp_timeout must be positive")
        if max_tcp_connections < 1:
            raise ValueError("max_tcp_connections must be at least 1")
        self.source = source
        self.host = host
        self._requested_port = port
        self.tcp_timeout = tcp_timeout
        self.max_tcp_connections = max_tcp_connections
        self.log_queries = log_queries
        self.cache_size = max(0, cache_size)
        self.udp_buffer = udp_buffer
        self.udp_buffer_granted = 0
        self.reuse_port = reuse_port
        self._answers: _Answers | None = None
        self._port: int | None = None
        self._udp: socket.socket | None = None
        self._udp_thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._tcp: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        """The bound port (UDP and TCP)."""
        if self._port is None:
            raise RuntimeError("the server is not started")
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` (``[host]:port`` for IPv6)."""
        return join_host_port(self.host, self.port)

    async def start(self) -> None:
        """Bind UDP, then TCP on the same port; for port 0 retry with another free port while
        the one UDP got is taken for TCP. Raises OSError when the address cannot be bound."""
        if self._port is not None:
            raise RuntimeError("the server is already started")
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host, None, type=socket.SOCK_DGRAM)
        if not infos:  # pragma: no cover - getaddrinfo raises instead
            raise OSError(f"cannot resolve {self.host!r}")
        family, ip = infos[0][0], str(infos[0][4][0])
        for attempt in range(BIND_ATTEMPTS):
            udp = self._udp_socket(family, ip)
            port = int(udp.getsockname()[1])
            try:
                self._tcp = await asyncio.start_server(
                    self._serve_tcp, ip, port, family=family, reuse_address=True, reuse_port=self.reuse_port or None,
                    backlog=self.max_tcp_connections,
                )
            except OSError:
                udp.close()
                if self._requested_port or attempt == BIND_ATTEMPTS - 1:
                    raise
                continue
            self._udp = udp
            self._port = port
            self._closing.clear()
            self._udp_thread = threading.Thread(target=self._serve_udp, args=(udp,), daemon=True,
                                                name=f"kproxy-dns-udp-{port}")
            self._udp_thread.start()
            return

    def _udp_socket(self, family: int, ip: str) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if self.udp_buffer > 0:
                self.udp_buffer_granted = _receive_buffer(sock, self.udp_buffer)
            sock.bind((ip, self._requested_port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def stop(self) -> None:
        """Close both sockets and every open TCP connection."""
        udp, thread = self._udp, self._udp_thread
        if udp is not None:
            self._closing.set()
            with contextlib.suppress(OSError):  # ENOTCONN on an unconnected socket, after waking recvfrom
                udp.shutdown(socket.SHUT_RDWR)
            if thread is not None:
                thread.join(2.0)
                if thread.is_alive():  # a kernel that did not wake it: a datagram does
                    with contextlib.suppress(OSError), socket.socket(udp.family, socket.SOCK_DGRAM) as poke:
                        poke.sendto(b"", udp.getsockname())
                    thread.join(2.0)
            udp.close()
            self._udp = self._udp_thread = None
        if self._tcp is not None:
            self._tcp.close()
            for w in list(self._writers):
                w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 5.0)
            self._tcp = None

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _serve_udp(self, sock: socket.socket) -> None:
        # _reply inlined for the common case: ~1 us of the ~6 a datagram costs
        recvfrom, sendto, closing = sock.recvfrom, sock.sendto, self._closing.is_set
        source, quick, reply, logged = self.source, _quick, self._reply, self.log_queries
        while not closing():
            try:
                data, peer = recvfrom(UDP_RECEIVE)
            except OSError as e:
                if closing():
                    return
                _problem(logging.DEBUG, "udp-error", "UDP socket error: %s", _one_line(e))
                continue
            if closing():
                return
            try:
                out = None
                if not logged:
                    try:
                        zone = source()
                    except Exception:
                        zone = None  # _reply answers SERVFAIL
                    if zone is not None:
                        answers = self._answers
                        if answers is None or answers.zone is not zone:
                            answers = self._answers = _Answers(zone, self.cache_size)
                        out = quick(data, False, answers)
                if out is None:
                    out = reply(data, tcp=False, peer=peer)
                if out is not None:
                    sendto(out, peer)
            except OSError as e:  # e.g. a peer address the kernel refuses
                _problem(logging.DEBUG, "udp-error", "UDP socket error: %s", _one_line(e))
            except Exception as e:  # a bug of ours: keep serving
                _problem(logging.ERROR, f"internal:{type(e).__name__}", "UDP: internal error: %s", _one_line(e))

    def _reply(self, data: bytes, *, tcp: bool, peer: Any) -> bytes | None:
        try:
            zone = self.source()
        except Exception as e:
            err = e

            def failing() -> Zone:
                raise err

            reply = _respond(data, failing, tcp=tcp)
            if self.log_queries:
                log.info("%s %s %s", "tcp" if tcp else "udp", _peer(peer), reply.summary)
            return reply.wire
        answers = self._answers
        if answers is None or answers.zone is not zone:
            answers = self._answers = _Answers(zone, self.cache_size)
        out = _quick(data, tcp, answers)
        if out is not None:
            if self.log_queries:
                summary = _summary(data, answers, tcp) + (" TC" if out[2] & 0x02 else "")
                log.info("%s %s %s", "tcp" if tcp else "udp", _peer(peer), summary)
            return out
        reply = _respond(data, lambda: zone, tcp=tcp)
        if self.log_queries:
            log.info("%s %s %s", "tcp" if tcp else "udp", _peer(peer), reply.summary)
        return reply.wire

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if len(self._writers) >= self.max_tcp_connections:
            _problem(logging.WARNING, "tcp-limit", "closed a TCP connection from %s: already %d open",
                     _peer(peer), len(self._writers))
            writer.close()
            return
        self._writers.add(writer)
        try:
            while True:
                prefix = await asyncio.wait_for(reader.readexactly(2), self.tcp_timeout)
                data = await asyncio.wait_for(reader.readexactly(int.from_bytes(prefix, "big")), self.tcp_timeout)
                reply = self._reply(data, tcp=True, peer=peer)
                if reply is None:
                    continue
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await asyncio.wait_for(writer.drain(), self.tcp_timeout)
        except asyncio.IncompleteReadError as e:
            if e.partial:
                _problem(logging.DEBUG, "tcp-eof", "TCP connection from %s closed in the middle of a message",
                         _peer(peer))
        except asyncio.TimeoutError:
            _problem(logging.DEBUG, "tcp-timeout", "closed an idle TCP connection from %s after %.1f s",
                     _peer(peer), self.tcp_timeout)
        except (ConnectionError, OSError) as e:
            _problem(logging.DEBUG, "tcp-error", "TCP connection from %s: %s", _peer(peer), _one_line(e))
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


def _receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for a ``size``-byte receive buffer, with SO_RCVBUFFORCE first (root may go past
    ``net.core.rmem_max``), else SO_RCVBUF (capped at it); return what the kernel granted
    (Linux reports twice the size set: its bookkeeping counts in)."""
    force = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None)
    try:
        if force is None:
            raise PermissionError
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def _peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return join_host_port(str(peer[0]), int(peer[1]))
    return str(peer)


# --------------------------------------------------------------------------- in a thread


class ServerThread:
    """A :class:`DnsServer` on its own event loop in a daemon thread; :meth:`stop` (or leaving
    the ``with`` block) closes it. Made by :func:`serve_in_thread`."""

    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"kproxy-dns-{server.host}", daemon=True)

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the DNS server thread did not start")
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start())
        except BaseException as e:
            self._error = e
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self.server.stop())
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and wait for the thread; calling it again does nothing."""
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_in_thread(
    source: Callable[[], Zone],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tcp_timeout: float = DEFAULT_TCP_TIMEOUT,
    max_tcp_connections: int = DEFAULT_MAX_TCP,
    log_queries: bool = False,
    cache_size: int = DEFAULT_CACHE,
) -> ServerThread:
    """Start a :class:`DnsServer` (same arguments) in a background thread and return once it is
    bound, or raise the bind error: ``with serve_in_thread(lambda: engine.dns_zone()) as s: ... s.port``."""
    server = DnsServer(source, host, port, tcp_timeout=tcp_timeout, max_tcp_connections=max_tcp_connections,
                       log_queries=log_queries, cache_size=cache_size)
    return ServerThread(server).start()


# --------------------------------------------------------------------------- kproxy dns serve


def _listen_arg(text: str) -> tuple[str, int]:
    try:
        host, port = split_host_port(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if port is None or not host:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT ([IPv6]:PORT)")
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: port {port} is not in 0..65535")
    return host, port


def _ttl_arg(text: str) -> int:
    try:
        ttl = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= ttl <= 3600:
        raise argparse.ArgumentTypeError(f"{ttl} is not in 0..3600")
    return ttl


def _domain_arg(text: str) -> str:
    try:
        name = dns.name.from_text(text)
    except dns.exception.DNSException as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    if name == dns.name.root:
        raise argparse.ArgumentTypeError("the domain cannot be the root")
    return normalize(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


def _count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def add_zone_arguments(g: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The zone's options that ``kproxy dns serve`` and ``kproxy dns resolve`` share (the TTL
    aside); :func:`zone_options` turns them into :meth:`Engine.dns_zone` keywords."""
    g.add_argument("--domain", type=_domain_arg, default=DEFAULT_ZONE, metavar="ZONE",
                   help=f"the cluster zone (default {DEFAULT_ZONE})")
    g.add_argument("--pods", choices=POD_MODES, default="disabled",
                   help="pod records a-b-c-d.<ns>.pod.<zone> (default disabled, as CoreDNS)")
    g.add_argument("--endpoint-pod-names", action="store_true",
                   help="name endpoints without a hostname by their pod (CoreDNS's endpoint_pod_names)")


def zone_options(args: argparse.Namespace) -> dict[str, Any]:
    """``pods`` and ``endpoint_pod_names`` from the options of :func:`add_zone_arguments`."""
    return {"pods": args.pods, "endpoint_pod_names": args.endpoint_pod_names}


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``kproxy dns serve`` (the caller adds ``-f`` and the engine options);
    sets the parser's description when it has none (see :data:`SERVE_DESCRIPTION`)."""
    if not p.description:
        p.description = SERVE_DESCRIPTION
    g = p.add_argument_group("DNS server")
    g.add_argument("--listen", type=_listen_arg, default=_listen_arg(DEFAULT_LISTEN), metavar="HOST:PORT",
                   help=f"address for UDP and TCP (default {DEFAULT_LISTEN}; IPv6 as [::1]:5353; port 0 picks a "
                        "free port). Answers only the cluster zone and in-addr.arpa/ip6.arpa, no recursion: "
                        "other names get REFUSED")
    g.add_argument("--ttl", type=_ttl_arg, default=DEFAULT_TTL, metavar="SECONDS",
                   help=f"TTL of the records, 0-3600 (default {DEFAULT_TTL}, as CoreDNS)")
    add_zone_arguments(g)
    g.add_argument("--watch", action="store_true",
                   help="reload when a -f file or directory changes; a load error is logged and the previous "
                        "records keep being served")
    g.add_argument("--watch-interval", type=_positive_float, default=1.0, metavar="SECONDS",
                   help="how often --watch looks at the files' mtimes (default 1.0)")
    g.add_argument("--watch-settle", type=_positive_float, default=DEFAULT_SETTLE, metavar="SECONDS",
                   help="--watch loads a change once the files' contents have stayed the same this long, and "
                        f"keeps what it loaded only if they did not change while it read them (default "
                        f"{DEFAULT_SETTLE:g}): a file being written is never served half-written")
    g.add_argument("--tcp-timeout", type=_positive_float, default=DEFAULT_TCP_TIMEOUT, metavar="SECONDS",
                   help=f"close a TCP connection idle this long (default {DEFAULT_TCP_TIMEOUT:g})")
    g.add_argument("--cache", type=_count_arg, default=DEFAULT_CACHE, metavar="N",
                   help="every answer is rendered to wire once and kept until the records change; answers with "
                        "records always, answers without (NXDOMAIN, NODATA, REFUSED: any name can ask for one) "
                        f"up to N of them (default {DEFAULT_CACHE}; 0: rendered for every query)")
    g.add_argument("--udp-buffer", type=_count_arg, default=DEFAULT_UDP_BUFFER, metavar="BYTES",
                   help=f"the UDP socket's receive buffer (default {DEFAULT_UDP_BUFFER}, past net.core.rmem_max "
                        "when run as root; 0: the kernel's default): room for a burst of queries")
    g.add_argument("--workers", type=_workers_arg, default=1, metavar="N",
                   help="serve from N processes sharing the port (SO_REUSEPORT; the kernel spreads clients over "
                        "them), one per core (default 1)")
    g.add_argument("-v", "--verbose", action="store_true", help="log every query and debug details to stderr")


def _workers_arg(text: str) -> int:
    value = _count_arg(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


class _Current:
    """The engine answering now and its zone, swapped together by --watch (one attribute), so a
    query sees the old zone or the new; :meth:`zone` is the server's ``source``."""

    def __init__(self, engine: Engine, args: argparse.Namespace) -> None:
        self.domain: str = args.domain
        self.ttl: int = args.ttl
        self.options = zone_options(args)
        self.state = (engine, self.build(engine))

    @property
    def engine(self) -> Engine:
        return self.state[0]

    def build(self, engine: Engine) -> Zone:
        return engine.dns_zone(self.domain, self.ttl, **self.options)

    def zone(self) -> Zone:
        return self.state[1]


def serve_command(
    args: argparse.Namespace,
    load_cluster: Callable[[], Cluster],
    make_engine: Callable[[Cluster], Engine],
) -> int:
    """``kproxy dns serve``: load, serve until SIGINT or SIGTERM, return 0.

    ``args``: the options of :func:`add_serve_arguments`, and ``files`` (the ``-f`` paths) for
    ``--watch``. ``load_cluster()`` reads the manifests again on every reload; each reload builds a
    new Engine with ``make_engine`` rather than ``engine.apply``-ing the objects, because a file
    that lost an object must lose its records, and ``apply`` only adds or replaces.
    Errors of the first load and of binding propagate (the CLI turns them into exit status 2).
    """
    handler = _log_handler(args.verbose)
    try:
        files = [f for f in (getattr(args, "files", None) or []) if f != "-"]
        if args.watch and len(files) != len(getattr(args, "files", None) or []):
            raise KproxyError("--watch cannot watch stdin (-f -): give files or directories")
        seen = _fingerprint(files) if args.watch else None  # before the load: a change during it is seen
        current = _Current(make_engine(load_cluster()), args)  # the zone is built: errors surface now
        gc.collect()  # before the first query: the load's cyclic garbage, then the rest out of sight
        _freeze()
        watch = _Watch(files, args.watch_interval, getattr(args, "watch_settle", DEFAULT_SETTLE), current,
                       load_cluster, make_engine, seen) if seen is not None else None
        workers = getattr(args, "workers", 1)
        if workers > 1:
            return _serve_workers(args, current, watch, workers)
        return asyncio.run(_serve(args, current, watch))
    finally:
        if handler is not None:
            log.removeHandler(handler)


def _log_handler(verbose: bool) -> logging.Handler | None:
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    if log.handlers or logging.getLogger().handlers:
        return None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kproxy dns: %(message)s"))
    log.addHandler(handler)
    return handler


async def _serve(
    args: argparse.Namespace,
    current: _Current,
    watch: _Watch | None,
    *,
    port: int | None = None,
    ready: Callable[[DnsServer], object] | None = None,
) -> int:
    """Serve until SIGINT or SIGTERM. ``port`` and ``ready``: a worker of ``--workers`` binds
    ``port`` with SO_REUSEPORT and calls ``ready(server)`` where a lone server prints its line."""
    host, listen_port = args.listen
    server = DnsServer(current.zone, host, listen_port if port is None else port, tcp_timeout=args.tcp_timeout,
                       log_queries=args.verbose, cache_size=args.cache, reuse_port=port is not None,
                       udp_buffer=getattr(args, "udp_buffer", DEFAULT_UDP_BUFFER))
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform / thread
            loop.add_signal_handler(sig, stop.set)
    tasks = []
    try:
        if ready is None:
            print(f"kproxy dns: serving {current.domain} (and in-addr.arpa, ip6.arpa) on udp+tcp {server.address}",
                  file=sys.stderr, flush=True)
        else:
            ready(server)
            tasks.append(asyncio.ensure_future(_orphaned(stop)))
        log.debug("UDP receive buffer: %d bytes asked, the kernel reports %d", server.udp_buffer,
                  server.udp_buffer_granted)
        if server.udp_buffer and server.udp_buffer_granted < server.udp_buffer:
            log.info("the kernel granted a UDP receive buffer of %d bytes, not the %d asked (net.core.rmem_max): "
                     "a burst of queries may overflow it", server.udp_buffer_granted, server.udp_buffer)
        if watch is not None:
            tasks.append(asyncio.ensure_future(watch.run()))
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await server.stop()
    return 0


async def _orphaned(stop: asyncio.Event) -> None:
    """A worker stops when its parent is gone (killed without passing the signal on)."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    stop.set()


def _serve_workers(args: argparse.Namespace, current: _Current, watch: _Watch | None, workers: int) -> int:
    """``--workers N``: N forked processes, each a whole server (UDP thread, TCP, its own --watch)
    on the same port with SO_REUSEPORT; this process binds the port first (so that port 0 gets
    one free for UDP and TCP), waits until every worker is up, prints the line, and passes
    SIGINT/SIGTERM on. Returns 0 when the workers stopped cleanly."""
    if not hasattr(os, "fork") or not hasattr(socket, "SO_REUSEPORT"):
        raise KproxyError("--workers: this platform has no fork() or no SO_REUSEPORT")
    host, port = args.listen
    family = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][0]
    reservation: list[socket.socket] = []
    for attempt in range(BIND_ATTEMPTS):  # UDP and TCP held on one port until the workers have bound it
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        for s in (udp, tcp):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            udp.bind((host, port))
            tcp.bind((host, int(udp.getsockname()[1])))
        except OSError:
            udp.close()
            tcp.close()
            if port or attempt == BIND_ATTEMPTS - 1:
                raise
            continue
        reservation = [udp, tcp]
        break
    bound = int(reservation[0].getsockname()[1])
    children: list[int] = []
    status_r, status_w = os.pipe()
    try:
        for _ in range(workers):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the worker; its coverage is its own process's
                os.close(status_r)
                for s in reservation:
                    s.close()
                code = 1
                try:
                    code = asyncio.run(_serve(args, current, watch, port=bound,
                                              ready=lambda _: os.write(status_w, b"+")))
                except BaseException as e:
                    with contextlib.suppress(OSError):
                        os.write(status_w, b"!")
                    log.error("worker %d: %s", os.getpid(), _one_line(e))
                finally:
                    logging.shutdown()
                    os._exit(code)
            children.append(pid)
        os.close(status_w)
        status_w = -1
        got = b""
        deadline = time.monotonic() + 60
        while len(got) < workers and time.monotonic() < deadline and b"!" not in got:
            chunk = os.read(status_r, workers)
            if not chunk:
                break
            got += chunk
        for s in reservation:
            s.close()
        if got != b"+" * workers:
            raise KproxyError(f"--workers: {got.count(b'+')} of {workers} workers started")
        print(f"kproxy dns: serving {current.domain} (and in-addr.arpa, ip6.arpa) with {workers} workers on udp+tcp "
              f"{join_host_port(host, bound)}", file=sys.stderr, flush=True)
        stopping = threading.Event()

        def forward(signum: int, frame: object) -> None:
            stopping.set()
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

        old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            codes = []
            for pid in list(children):
                _, status = os.waitpid(pid, 0)
                children.remove(pid)
                codes.append(os.waitstatus_to_exitcode(status))
                if not stopping.is_set():  # a worker died on its own: stop the others
                    log.error("a worker exited (%d): stopping", codes[-1])
                    forward(signal.SIGTERM, None)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        return 0 if stopping.is_set() and all(c == 0 for c in codes) else 1
    finally:
        for s in reservation:
            s.close()
        if status_w >= 0:
            os.close(status_w)
        os.close(status_r)
        for pid in children:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)


# --------------------------------------------------------------------------- --watch

Snapshot = dict[str, tuple[int, int, int]]
Fingerprint = tuple[Snapshot, str]
DEFAULT_SETTLE: Final = 0.2


def _snapshot(paths: Sequence[str]) -> Snapshot:
    """(mtime_ns, size, inode) of every path and of everything under the directories among them."""
    out: Snapshot = {}
    for p in paths:
        for path in [Path(p), *(sorted(Path(p).rglob("*")) if os.path.isdir(p) else ())]:
            try:
                st = path.stat()
            except OSError:
                continue  # gone, or not there yet: its absence is the state
            out[str(path)] = (st.st_mtime_ns, st.st_size, st.st_ino)
    return out


def _fingerprint(paths: Sequence[str]) -> Fingerprint:
    """The snapshot and a digest of every file's bytes: equal fingerprints taken apart in time
    mean nothing was written in between (the contents catch a rewrite within one mtime tick)."""
    snap = _snapshot(paths)
    digest = hashlib.blake2b(digest_size=16)
    for path in snap:
        digest.update(path.encode(errors="surrogateescape") + b"\x00")
        if os.path.isfile(path):
            try:
                digest.update(Path(path).read_bytes())
            except OSError as e:
                digest.update(f"\x00{type(e).__name__}".encode())
        digest.update(b"\x00")
    return snap, digest.hexdigest()


class _Watch:
    """--watch: reloads when the files change, never from a half-written file.

    A writer rewriting a file in place (truncate, then write, perhaps in pieces) or replacing it
    (write a temporary file, rename it over) leaves moments where the file holds part of the new
    state, and a part may parse (YAML documents end anywhere). So a change is loaded only once
    the files' fingerprints (mtimes, sizes, inodes and contents) have stayed equal for ``settle``
    seconds, and what was loaded is kept only if the fingerprint is still that one after the
    load: a file written during the load is loaded again. A load that fails (a parse error)
    keeps the previous zone and is logged once; the next change is loaded as usual. What this
    cannot tell apart is a writer that stops for longer than ``settle`` halfway: its part is
    served until it writes again."""

    def __init__(
        self,
        files: list[str],
        interval: float,
        settle: float,
        current: _Current,
        load_cluster: Callable[[], Cluster],
        make_engine: Callable[[Cluster], Engine],
        seen: Fingerprint,
    ) -> None:
        self.files = files
        self.interval = interval
        self.settle = settle
        self.current = current
        self.load_cluster = load_cluster
        self.make_engine = make_engine
        self.seen = seen

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if await asyncio.to_thread(_snapshot, self.files) == self.seen[0]:
                continue
            if await asyncio.to_thread(_fingerprint, self.files) == self.seen:
                continue  # touched, not changed
            await self._reload()

    async def _settled(self) -> Fingerprint:
        last = await asyncio.to_thread(_fingerprint, self.files)
        while True:
            await asyncio.sleep(self.settle)
            now = await asyncio.to_thread(_fingerprint, self.files)
            if now == last:
                return now
            last = now

    def _build(self) -> tuple[Engine, Zone]:
        engine = self.make_engine(self.load_cluster())
        return engine, self.current.build(engine)

    async def _reload(self) -> None:
        while True:
            state = await self._settled()
            try:
                engine, zone = await asyncio.to_thread(self._build)
            except Exception as e:
                self.seen = state
                log.error("reload failed, still serving the previous records: %s", _one_line(e))
                return
            if await asyncio.to_thread(_fingerprint, self.files) != state:
                log.debug("the files changed while they were loaded: loading them again")
                continue
            self.seen = state
            self.current.state = (engine, zone)
            del engine, zone
            _freeze()
            log.info("reloaded: %d services", len(self.current.engine.cluster.services))
            return


def _freeze() -> None:
    """Move what is alive now (the engine and zone just loaded) out of the cyclic collector's
    sight: a full collection walks every tracked object, ~200 ms at 10,000 Services, a pause
    that a burst of queries cannot wait out; frozen objects are still freed by reference count
    when replaced (engines and zones hold no reference cycles)."""
    gc.freeze()

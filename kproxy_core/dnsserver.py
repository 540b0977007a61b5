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

Responses are cached per Zone object, keyed by the query's bytes (see :class:`DnsServer`).

Problems are logged on the ``kproxy.dns`` logger, one line each, the same problem at most once per
:data:`LOG_EVERY` seconds; malformed client messages at DEBUG, zone failures at ERROR. Per-query lines
only with ``log_queries``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, cast

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
MAX_CACHED: Final = 4096  # bytes; bigger responses (long headless answers over TCP) are rebuilt each time
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
    EDNS payload). Never raises: a failure inside the zone is a SERVFAIL response.
    """
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


# --------------------------------------------------------------------------- the server


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # 3.11's selector transport is not a subclass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = self.server._reply(data, tcp=False, peer=addr)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable from a gone client
        _problem(logging.DEBUG, "udp-error", "UDP socket error: %s", _one_line(exc))


class DnsServer:
    """UDP and TCP DNS on ``host``:``port`` (port 0: a free port, the same for both; see
    :attr:`port` after :meth:`start`), answering from ``source()``, which is called once per query.

    ``tcp_timeout``: seconds a TCP connection may wait for the next query (or the rest of one)
    before it is closed; ``max_tcp_connections``: open TCP connections beyond this are closed
    at once; ``log_queries``: one INFO line per query on ``kproxy.dns``; ``cache_size``: responses
    kept (0: none). The cache maps the query's bytes (all but the id) to the response's and is
    emptied whenever ``source()`` returns another Zone object, so a Zone must not be changed in
    place while it is served: changes show up by ``source()`` returning a new one (as
    ``Engine.dns_zone`` does after ``apply``).
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
        self._cache: dict[tuple[bytes, bool], tuple[bytes, str]] = {}
        self._cache_zone: object = None
        self._port: int | None = None
        self._udp: asyncio.DatagramTransport | None = None
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
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(ip, self._requested_port), family=family
            )
            port = int(udp.get_extra_info("sockname")[1])
            try:
                self._tcp = await asyncio.start_server(
                    self._serve_tcp, ip, port, family=family, reuse_address=True, backlog=self.max_tcp_connections
                )
            except OSError:
                udp.close()
                if self._requested_port or attempt == BIND_ATTEMPTS - 1:
                    raise
                continue
            self._udp = udp
            self._port = port
            return

    async def stop(self) -> None:
        """Close both sockets and every open TCP connection."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
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

    def _reply(self, data: bytes, *, tcp: bool, peer: Any) -> bytes | None:
        reply = self._cached(data, tcp)
        if self.log_queries:
            log.info("%s %s %s", "tcp" if tcp else "udp", _peer(peer), reply.summary)
        return reply.wire

    def _cached(self, data: bytes, tcp: bool) -> _Reply:
        # Measured (2-core box, 1000 services): a miss costs 300-750 us, almost all of it dnspython
        # parsing and rendering; a hit is a dict lookup.
        if not self.cache_size or len(data) < HEADER_LEN or len(data) > UDP_MIN or data[2] & 0x80:
            return _respond(data, self.source, tcp=tcp)
        try:
            zone = self.source()
        except Exception as e:
            err = e

            def failing() -> Zone:
                raise err

            return _respond(data, failing, tcp=tcp)
        if zone is not self._cache_zone:
            self._cache.clear()
            self._cache_zone = zone
        key = (data[2:], tcp)
        hit = self._cache.get(key)
        if hit is not None:
            return _Reply(data[:2] + hit[0], hit[1] + " (cached)")
        reply = _respond(data, lambda: zone, tcp=tcp)
        if reply.cacheable and reply.wire is not None and len(reply.wire) <= MAX_CACHED:
            if len(self._cache) >= self.cache_size:
                del self._cache[next(iter(self._cache))]  # the oldest
            self._cache[key] = (reply.wire[2:], reply.summary)
        return reply

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
    g.add_argument("--tcp-timeout", type=_positive_float, default=DEFAULT_TCP_TIMEOUT, metavar="SECONDS",
                   help=f"close a TCP connection idle this long (default {DEFAULT_TCP_TIMEOUT:g})")
    g.add_argument("--cache", type=_count_arg, default=DEFAULT_CACHE, metavar="N",
                   help=f"responses to keep until the records change (default {DEFAULT_CACHE}; 0: no cache)")
    g.add_argument("-v", "--verbose", action="store_true", help="log every query and debug details to stderr")


class _Current:
    """The engine answering now; swapped whole by --watch, so a query sees the old zone or the new."""

    def __init__(self, engine: Engine, args: argparse.Namespace) -> None:
        self.engine = engine
        self.domain: str = args.domain
        self.ttl: int = args.ttl
        self.options = zone_options(args)

    def zone(self, engine: Engine | None = None) -> Zone:
        return (engine or self.engine).dns_zone(self.domain, self.ttl, **self.options)


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
        current = _Current(make_engine(load_cluster()), args)
        current.zone()  # build it now: errors surface before the socket opens, and the first query is fast
        return asyncio.run(_serve(args, current, files, load_cluster, make_engine))
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
    files: list[str],
    load_cluster: Callable[[], Cluster],
    make_engine: Callable[[Cluster], Engine],
) -> int:
    host, port = args.listen
    server = DnsServer(current.zone, host, port, tcp_timeout=args.tcp_timeout, log_queries=args.verbose,
                       cache_size=args.cache)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform / thread
            loop.add_signal_handler(sig, stop.set)
    watcher = None
    try:
        print(f"kproxy dns: serving {current.domain} (and in-addr.arpa, ip6.arpa) on udp+tcp {server.address}",
              file=sys.stderr, flush=True)
        if args.watch:
            watcher = asyncio.ensure_future(_watch(files, args.watch_interval, current, load_cluster, make_engine))
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await server.stop()
    return 0


Snapshot = dict[str, tuple[int, int, int]]


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


async def _watch(
    files: list[str],
    interval: float,
    current: _Current,
    load_cluster: Callable[[], Cluster],
    make_engine: Callable[[Cluster], Engine],
) -> None:
    seen = await asyncio.to_thread(_snapshot, files)
    while True:
        await asyncio.sleep(interval)
        now = await asyncio.to_thread(_snapshot, files)
        if now == seen:
            continue
        await asyncio.sleep(min(0.2, interval))  # let a writer finish before reading
        seen = await asyncio.to_thread(_snapshot, files)

        def rebuild() -> Engine:
            engine = make_engine(load_cluster())
            current.zone(engine)
            return engine

        try:
            engine = await asyncio.to_thread(rebuild)
        except Exception as e:
            log.error("reload failed, still serving the previous records: %s", _one_line(e))
            continue
        current.engine = engine
        log.info("reloaded: %d services", len(engine.cluster.services))

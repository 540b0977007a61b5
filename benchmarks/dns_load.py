"""A bounded load test of ``kproxy dns serve`` on loopback.

Generates a cluster (``--services`` ClusterIP Services, ``--headless`` of them headless with
``--endpoints`` ready endpoints each) as manifests in a temporary directory, starts the server on a
free port, and sends ``--queries`` UDP queries from one asyncio socket with ``--concurrency`` in
flight: A on Service names, A on headless names, SRV, PTR of ClusterIPs and names that do not exist.
Every query has a timeout (``--timeout``), the whole run a hard bound (``--max-seconds``). Reports
queries/s, latency percentiles, timeouts and errors (no answer that parses, a wrong id, an rcode or
A answer other than expected).

    python benchmarks/dns_load.py                     # 20000 queries, 32 in flight
    python benchmarks/dns_load.py --queries 300 --json

``--server``: ``cli`` (the default) runs ``python -m kproxy_core dns serve``, what is reported;
``thread`` serves in this process (client and server then share the GIL, so the figure is lower).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import yaml

SERVICE_BASE = int(ipaddress.ip_address("10.96.0.0"))
POD_BASE = int(ipaddress.ip_address("10.128.0.0"))
NAMESPACES = 4
FULL_CHECK_EVERY = 20


# --------------------------------------------------------------------------- the cluster


def manifests(services: int, headless: int, endpoints: int) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    pod = POD_BASE
    for i in range(services):
        ns, name = f"ns-{i % NAMESPACES}", f"svc-{i}"
        is_headless = i < headless
        spec: dict[str, Any] = {"type": "ClusterIP", "selector": {"app": name},
                                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
        if is_headless:
            spec["clusterIP"] = "None"
        else:
            ip = str(ipaddress.ip_address(SERVICE_BASE + i + 1))
            spec.update(clusterIP=ip, clusterIPs=[ip], ipFamilies=["IPv4"])
        objs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name},
                     "spec": spec})
        eps = []
        for _ in range(endpoints if is_headless else 2):
            eps.append({"addresses": [str(ipaddress.ip_address(pod))], "conditions": {"ready": True}})
            pod += 1
        objs.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": ns, "name": f"{name}-x1", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "endpoints": eps,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        })
    return objs


@dataclass(frozen=True)
class Question:
    kind: str
    name: str
    rtype: str
    rcode: int
    a: str | None = None  # the one A record expected (ClusterIP Services)


def questions(services: int, headless: int, count: int, seed: int) -> list[Question]:
    """The query mix: 50% A of ClusterIP Services, 10% A of headless ones, 15% SRV, 10% PTR of a
    ClusterIP, 15% names that do not exist."""
    rng = random.Random(seed)
    clusterip = list(range(headless, services))
    out = []
    for _ in range(count):
        roll = rng.random()
        if not clusterip or not headless:
            roll = min(roll, 0.49) if clusterip else max(roll, 0.5)
        if roll < 0.5 and clusterip:
            i = rng.choice(clusterip)
            ip = str(ipaddress.ip_address(SERVICE_BASE + i + 1))
            out.append(Question("A", f"svc-{i}.ns-{i % NAMESPACES}.svc.cluster.local.", "A", dns.rcode.NOERROR, ip))
        elif roll < 0.6 and headless:
            i = rng.randrange(headless)
            out.append(Question("A headless", f"svc-{i}.ns-{i % NAMESPACES}.svc.cluster.local.", "A",
                                dns.rcode.NOERROR))
        elif roll < 0.75:
            i = rng.randrange(services)
            out.append(Question("SRV", f"_http._tcp.svc-{i}.ns-{i % NAMESPACES}.svc.cluster.local.", "SRV",
                                dns.rcode.NOERROR))
        elif roll < 0.85 and clusterip:
            i = rng.choice(clusterip)
            name = dns.reversename.from_address(str(ipaddress.ip_address(SERVICE_BASE + i + 1))).to_text()
            out.append(Question("PTR", name, "PTR", dns.rcode.NOERROR))
        else:
            i = rng.randrange(services)
            out.append(Question("NXDOMAIN", f"nope-{i}.ns-{i % NAMESPACES}.svc.cluster.local.", "A",
                                dns.rcode.NXDOMAIN))
    return out


# --------------------------------------------------------------------------- the server


@dataclass
class Server:
    mode: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    thread: Any = None
    log: Path | None = None
    exit_code: int | None = None

    def stop(self) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.exit_code = 0
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.exit_code = self.proc.returncode


def start_server(mode: str, directory: Path, startup: float, cache: int | None) -> Server:
    if mode == "thread":
        import kproxy_core as kp
        from kproxy_core.dnsserver import DEFAULT_CACHE, serve_in_thread

        engine = kp.Engine(kp.load(str(directory)))
        engine.dns_zone()
        t = serve_in_thread(lambda: engine.dns_zone(), cache_size=DEFAULT_CACHE if cache is None else cache)
        return Server("thread", t.port, thread=t)
    prefix = ["-m", "kproxy_core", "dns", "serve"]
    log = directory.parent / "server-stderr.txt"
    with log.open("w") as fh:
        extra = [] if cache is None else ["--cache", str(cache)]
        proc = subprocess.Popen([sys.executable, *prefix, "-f", str(directory), "--listen", "127.0.0.1:0", *extra],
                                stdout=subprocess.DEVNULL, stderr=fh, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = Server(mode, 0, proc=proc, log=log)
    deadline = time.monotonic() + startup
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text().splitlines():
            if line.startswith("kproxy dns: serving ") and " on udp+tcp " in line:
                server.port = int(line.rsplit(":", 1)[1])
                return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"the {mode} server did not start within {startup:g} s: {log.read_text().strip()}")


# --------------------------------------------------------------------------- the client


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.stray = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        fut = self.waiting.pop(int.from_bytes(data[:2], "big"), None) if len(data) >= 2 else None
        if fut is None or fut.done():
            self.stray += 1  # late (after its timeout) or not ours
            return
        fut.set_result(data)


@dataclass
class Result:
    latencies_ns: list[int] = field(default_factory=list)
    timeouts: int = 0
    errors: int = 0
    truncated: int = 0  # TC=1: over 512 bytes (a headless SRV with its additional A records)
    error_samples: list[str] = field(default_factory=list)
    rcodes: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    seconds: float = 0.0
    cut_short: bool = False


def _check(q: Question, qid: int, wire: bytes, full: bool) -> str | None:
    """Header checks on every response (the client must not be the bottleneck: a full parse costs
    ~100 us); ``full``: parse it with dnspython and compare the A records."""
    if len(wire) < 12 or int.from_bytes(wire[:2], "big") != qid or not wire[2] & 0x80:
        return f"{q.name} {q.rtype}: bad header"
    rcode, ancount = wire[3] & 0x0F, int.from_bytes(wire[6:8], "big")
    if rcode != q.rcode:
        want = dns.rcode.to_text(dns.rcode.Rcode(q.rcode))
        return f"{q.name} {q.rtype}: {dns.rcode.to_text(dns.rcode.Rcode(rcode))}, expected {want}"
    if q.rcode == dns.rcode.NOERROR and not ancount and not wire[2] & 0x02:  # TC: counted apart
        return f"{q.name} {q.rtype}: no answer"
    if q.a is not None and (ancount != 1 or wire[-4:] != ipaddress.ip_address(q.a).packed):
        return f"{q.name} A: {ancount} records, not just {q.a}"  # no EDNS, no additional: the A's rdata ends it
    if full:
        try:
            r = dns.message.from_wire(wire)
        except Exception as e:
            return f"{q.name} {q.rtype}: unparseable response ({type(e).__name__}: {e})"
        if q.a is not None and [rd.to_text() for rrset in r.answer for rd in rrset] != [q.a]:
            return f"{q.name} A: {[rd.to_text() for rrset in r.answer for rd in rrset]}, expected {q.a}"
    return None


async def run_client(port: int, qs: list[Question], concurrency: int, timeout: float, max_seconds: float) -> Result:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_Client, remote_addr=("127.0.0.1", port))
    res = Result()
    deadline = time.monotonic() + max_seconds
    wires = [dns.message.make_query(q.name, q.rtype, id=0).to_wire() for q in qs]  # outside the timed part
    it: Iterator[tuple[int, Question]] = enumerate(qs)
    ids = iter(range(1 << 30))

    async def worker() -> None:
        for n, q in it:
            if time.monotonic() > deadline:
                res.cut_short = True
                return
            qid = next(ids) & 0xFFFF
            while qid in proto.waiting:
                qid = next(ids) & 0xFFFF
            wire = qid.to_bytes(2, "big") + wires[n][2:]
            fut: asyncio.Future[bytes] = loop.create_future()
            proto.waiting[qid] = fut
            t0 = time.perf_counter_ns()
            transport.sendto(wire)
            res.sent += 1
            res.kinds[q.kind] += 1
            try:
                data = await asyncio.wait_for(fut, min(timeout, max(0.001, deadline - time.monotonic())))
            except asyncio.TimeoutError:
                proto.waiting.pop(qid, None)
                res.timeouts += 1
                continue
            res.latencies_ns.append(time.perf_counter_ns() - t0)
            problem = _check(q, qid, data, full=n % FULL_CHECK_EVERY == 0)
            res.rcodes[dns.rcode.to_text(dns.rcode.Rcode(data[3] & 0x0F))] += 1
            res.truncated += bool(data[2] & 0x02)
            if problem:
                res.errors += 1
                if len(res.error_samples) < 5:
                    res.error_samples.append(problem)

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        res.seconds = time.perf_counter() - start
        transport.close()
    return res


def percentile(sorted_ns: list[int], p: float) -> float:
    if not sorted_ns:
        return 0.0
    k = min(len(sorted_ns) - 1, max(0, round(p / 100 * len(sorted_ns) + 0.5) - 1))  # nearest rank
    return sorted_ns[k] / 1e6


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--services", type=int, default=1000, help="Services in the cluster (default 1000)")
    p.add_argument("--headless", type=int, default=100, help="how many of them are headless (default 100)")
    p.add_argument("--endpoints", type=int, default=10, help="ready endpoints per headless Service (default 10)")
    p.add_argument("--queries", type=int, default=20000, help="queries to send (default 20000)")
    p.add_argument("--concurrency", type=int, default=32, help="queries in flight (default 32)")
    p.add_argument("--timeout", type=float, default=2.0, help="per-query timeout in seconds (default 2)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="hard bound on the run (default 120)")
    p.add_argument("--server", choices=["cli", "thread"], default="cli",
                   help="how the server runs: a `kproxy dns serve` subprocess (default) or a thread of this process")
    p.add_argument("--server-cache", type=int, default=None, metavar="N",
                   help="the server's --cache: answers without records it keeps (default: the server's; 0: none)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    if not (args.services > 0 and 0 <= args.headless <= args.services and args.endpoints >= 1
            and args.queries > 0 and args.concurrency > 0 and args.timeout > 0 and args.max_seconds > 0):
        p.error("sizes, counts and times must be positive (and --headless <= --services)")
    mode = args.server

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kproxy-dns-load-") as tmp:
        directory = Path(tmp) / "cluster"
        directory.mkdir()
        (directory / "cluster.yaml").write_text(
            yaml.safe_dump_all(manifests(args.services, args.headless, args.endpoints)))
        qs = questions(args.services, args.headless, args.queries, args.seed)
        server = start_server(mode, directory, startup=min(60.0, args.max_seconds), cache=args.server_cache)
        try:
            left = args.max_seconds - (time.monotonic() - started)
            warm = [Question("warm-up", q.name, q.rtype, q.rcode, q.a) for q in qs[: min(200, len(qs))]]
            asyncio.run(run_client(server.port, warm, min(8, args.concurrency), args.timeout, max(1.0, left / 10)))
            left = args.max_seconds - (time.monotonic() - started)
            res = asyncio.run(run_client(server.port, qs, args.concurrency, args.timeout, max(0.001, left)))
        finally:
            server.stop()

    lat = sorted(res.latencies_ns)
    out: dict[str, Any] = {
        "server": {"mode": mode, "port": server.port, "exit_code": server.exit_code, "cache": args.server_cache},
        "cluster": {"services": args.services, "headless": args.headless, "endpoints": args.endpoints},
        "queries": args.queries, "sent": res.sent, "answered": len(lat), "concurrency": args.concurrency,
        "seconds": round(res.seconds, 3), "qps": round(len(lat) / res.seconds, 1) if res.seconds else 0.0,
        "latency_ms": {k: round(percentile(lat, q), 3) for k, q in
                       (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        "timeouts": res.timeouts, "errors": res.errors, "truncated": res.truncated, "error_samples": res.error_samples,
        "cut_short": res.cut_short, "rcodes": dict(res.rcodes), "mix": dict(res.kinds),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        lm = out["latency_ms"]
        cache = "" if args.server_cache is None else f", cache {args.server_cache}"
        print(f"kproxy dns load: {res.sent}/{args.queries} queries over UDP, {args.concurrency} in flight, "
              f"server {mode} on 127.0.0.1:{server.port} ({args.services} services, {args.headless} headless "
              f"x {args.endpoints} endpoints{cache})")
        print(f"  {out['qps']:.0f} queries/s over {res.seconds:.2f} s; latency ms p50 {lm['p50']:.3f} "
              f"p90 {lm['p90']:.3f} p99 {lm['p99']:.3f} max {lm['max']:.3f}")
        print(f"  timeouts {res.timeouts}, errors {res.errors}, truncated (TC=1) {res.truncated}; rcodes "
              + ", ".join(f"{k} {v}" for k, v in sorted(res.rcodes.items()))
              + ("; CUT SHORT by --max-seconds" if res.cut_short else ""))
        for sample in res.error_samples:
            print(f"  error: {sample}")
    ok = not res.errors and not res.timeouts and not res.cut_short and server.exit_code == 0
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

"""A small network-namespace topology library for kernel-oracle tests.

One *node* namespace plays the kube-proxy node: its addresses (the Node's InternalIPs) sit
on a dummy interface (ifb or an empty bridge where the kernel has no dummy driver). Every
other namespace is a *host* behind its own veth pair: pods (endpoints and clients),
external clients, and optionally a *sink* that owns whole address ranges (service VIPs,
externalIPs) and answers there, so that packets the node's rules leave untouched are seen
to pass instead of timing out. The node routes those ranges to the sink (or, without a
sink, to the dummy); either way the node's own connections to a VIP leave through OUTPUT,
where DNAT applies, with a node address as source.

The node side of each veth is unnumbered, so the node's LOCAL addresses are exactly the
InternalIPs plus loopback, as the engine assumes; it gets a /32 (/128) route to the host.
The host side has the host's address and a default route via the node's first IPv4
address, reached on-link (IPv6: via a fixed link-local address on the node side).

Identity servers answer each TCP connection or UDP datagram with
``"<ip>:<port> saw <peer ip>"`` (``[ip]:port`` for IPv6, as Go's JoinHostPort; a label
instead of the address for the sink and the node), from the address the client asked for.
Clients are one short Python process per host and batch, every attempt bounded by a
timeout, probes running concurrently.

Everything a Topology creates (namespaces, processes) is removed by ``close()``, which
fixtures call from their finalizers; servers also exit when the test process goes away.
Namespace names start with ``kpt<pid>-``, and only the names this object created are ever
deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

PREFIX = f"kpt{os.getpid()}-"
_COUNTER = itertools.count()

# Flags for the helper interpreters: isolated (no user site, no PYTHON* env) and no site
# import, which keeps start-up near 15 ms; the scripts use the standard library only.
PYTHON = [sys.executable, "-I", "-S"]

SERVER_SRC = r"""
import selectors, socket, struct, sys
PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; the constant is missing before 3.12
ip, tcp, udp, label = sys.argv[1:5]
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
any_ = "::" if fam == socket.AF_INET6 else "0.0.0.0"
host = label or (f"[{ip}]" if fam == socket.AF_INET6 else ip)
sel = selectors.DefaultSelector()
for kind, ports in (("tcp", tcp), ("udp", udp)):
    for p in (int(x) for x in ports.split(",") if x):
        s = socket.socket(fam, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((any_, p))
        if kind == "tcp":
            s.listen(1024)
        elif fam == socket.AF_INET:  # answer from the address asked (the host may own several)
            s.setsockopt(socket.IPPROTO_IP, PKTINFO, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, (kind, p))
sel.register(sys.stdin, selectors.EVENT_READ, ("stdin", 0))
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        kind, p = key.data
        if kind == "stdin":
            if not sys.stdin.readline():  # the test process went away: leave with it
                sys.exit(0)
            continue
        try:
            if kind == "tcp":
                c, peer = key.fileobj.accept()
                c.settimeout(2.0)
                with c:
                    c.sendall(f"{host}:{p} saw {peer[0]}".encode())
            else:
                data, anc, _, peer = key.fileobj.recvmsg(2048, 256)
                info = []
                for level, typ, d in anc:
                    if (level, typ) == (socket.IPPROTO_IP, PKTINFO):  # in_pktinfo: ifindex, spec_dst, addr
                        info.append((level, typ, struct.pack("=I4s4s", 0, d[8:12], bytes(4))))
                    elif (level, typ) == (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO):  # addr, ifindex
                        info.append((level, typ, d[:16] + struct.pack("=I", 0)))
                key.fileobj.sendmsg([f"{host}:{p} saw {peer[0]}".encode()], info, 0, peer)
        except OSError:
            pass
"""

CLIENT_SRC = r"""
import errno, json, socket, sys
from concurrent.futures import ThreadPoolExecutor

def attempt(p, i):
    fam = socket.AF_INET6 if ":" in p["dst"] else socket.AF_INET
    tcp = p["proto"] == "TCP"
    s = socket.socket(fam, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    out = {"outcome": "error", "reply": None, "local": None, "detail": ""}
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if p["src"] is not None or p["sport"] is not None:
            s.bind((p["src"] or ("::" if fam == socket.AF_INET6 else "0.0.0.0"),
                    0 if p["sport"] is None else p["sport"] + i))
        s.settimeout(p["timeout"])
        s.connect((p["dst"], p["dport"]))
        out["local"] = list(s.getsockname()[:2])
        if not tcp:
            try:
                s.send(b"?")
            except PermissionError:  # the node's own datagram dropped or rejected in OUTPUT:
                out["detail"] = "EPERM on send"  # a REJECT's ICMP error still arrives below
        if tcp:  # the server writes its identity and closes
            data = b""
            while chunk := s.recv(2048):
                data += chunk
        else:
            data = s.recv(2048)
        out["reply"] = data.decode()
        out["outcome"] = "connected" if data else "noreply"
    except ConnectionRefusedError:
        out["outcome"] = "refused"
    except (socket.timeout, TimeoutError):
        out["outcome"] = "timeout"
    except OSError as e:
        out["detail"] = errno.errorcode.get(e.errno or 0, str(e))
    finally:
        if out["local"] is None:
            try:
                out["local"] = list(s.getsockname()[:2])
            except OSError:
                pass
        s.close()
    return out

def run(p):
    res = []
    for i in range(p["count"]):
        r = attempt(p, i)
        res.append(r)
        if r["outcome"] == "timeout":  # dropped: one is evidence enough, keep the wait bounded
            break
    return res

probes = json.load(sys.stdin)
with ThreadPoolExecutor(max_workers=max(1, min(32, len(probes)))) as ex:
    print(json.dumps(list(ex.map(run, probes))))
"""


IPV6_GATEWAY = "fe80::1"
SINK_IP = "192.0.2.1"
SINK_LABEL = "sink"


class TopologyError(RuntimeError):
    pass


def run(cmd: Sequence[str], *, input: str | None = None, timeout: float = 30.0) -> str:
    """Run a command, raise TopologyError with its stderr on failure; return stdout."""
    r = subprocess.run(list(cmd), input=input, capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise TopologyError(f"{' '.join(cmd)!r} exited {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def unavailable_reason() -> str | None:
    """Why kernel tests cannot run here (not root, no iproute2, ``ip netns add`` fails), or None."""
    if os.geteuid() != 0:
        return "kernel tests need root (network namespaces and iptables)"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    probe = f"{PREFIX}probe{next(_COUNTER)}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode:
        return f"'ip netns add' fails here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def join_host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclasses.dataclass(frozen=True)
class Probe:
    """``count`` attempts to reach dst:dport from one host (stopping at the first timeout).

    ``src`` binds the client's address (None: the kernel picks); ``sport`` is the first
    source port, attempt i uses ``sport + i`` (None: ephemeral ports)."""

    dst: str
    dport: int
    proto: str = "TCP"
    count: int = 1
    src: str | None = None
    sport: int | None = None
    timeout: float = 1.0


@dataclasses.dataclass(frozen=True)
class Reply:
    """One attempt as the kernel handled it.

    ``outcome``: "connected" (the endpoint answered), "refused" (RST or ICMP unreachable:
    REJECT), "timeout" (silently dropped), "noreply" (connected, but nothing came back)
    or "error" (``detail`` holds the errno name)."""

    outcome: str
    endpoint: str | None  # "ip:port" the server reported
    seen: str | None  # the source address the endpoint saw
    src: str | None  # the client's own address
    sport: int | None
    detail: str = ""

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Reply:
        endpoint = seen = None
        if raw["reply"]:
            endpoint, _, seen = str(raw["reply"]).partition(" saw ")
        local = raw.get("local") or [None, None]
        return cls(raw["outcome"], endpoint, seen, local[0], local[1], raw.get("detail", ""))


@dataclasses.dataclass
class Host:
    """A namespace behind a node veth: a pod (endpoint or client) or an external client."""

    ns: str
    ip: str
    kind: str
    veth: str  # the node-side interface name


class Topology:
    """A node namespace plus hosts behind it. Use as a context manager, or call close()."""

    def __init__(self, node_ips: Sequence[str], *, tag: str = "t") -> None:
        if not node_ips:
            raise ValueError("the node needs at least one address")
        self.node_ips = list(node_ips)
        self.base = f"{PREFIX}{tag}{next(_COUNTER)}"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[str]] = []
        self.hosts: dict[str, Host] = {}
        self._veths = itertools.count()
        self._sports = itertools.count(20000)
        self.node = self._add_namespace("node")
        try:
            self._setup_node()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process and delete every namespace this topology created."""
        for p in self.processes:
            if p.poll() is None:
                p.kill()
        for p in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
            for f in (p.stdin, p.stdout):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()
        self.processes.clear()
        errors = []
        for ns in reversed(self.namespaces):
            r = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if r.returncode and os.path.exists(f"/run/netns/{ns}"):
                errors.append(f"{ns}: {r.stderr.strip()}")
        self.namespaces.clear()
        if errors:
            raise TopologyError("could not delete namespaces: " + "; ".join(errors))

    def _add_namespace(self, role: str) -> str:
        ns = f"{self.base}-{role}"
        run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        return ns

    def _setup_node(self) -> None:
        sysctls = {
            "net.ipv4.ip_forward": 1,
            "net.ipv4.conf.all.route_localnet": 1,  # localhost NodePorts
            "net.ipv4.conf.all.rp_filter": 0,
            "net.ipv4.conf.default.rp_filter": 0,
            "net.ipv4.icmp_ratelimit": 0,  # every REJECT answers (no rate-limited "timeouts")
            "net.ipv4.icmp_ratemask": 0,
            "net.ipv6.conf.all.forwarding": 1,
            "net.ipv6.conf.default.accept_dad": 0,
            "net.ipv6.icmp.ratelimit": 0,
        }
        self.sysctl(self.node, sysctls)
        # A dummy-like interface for the node's addresses and VIP routes. Some kernels are
        # built without the dummy driver; ifb, or an empty bridge, serve the same purpose.
        for kind in ("dummy", "ifb", "bridge"):
            r = subprocess.run(["ip", "-n", self.node, "link", "add", "kp0", "type", kind],
                               capture_output=True, text=True)
            if r.returncode == 0:
                break
        else:
            raise TopologyError(f"cannot create a dummy, ifb or bridge interface: {r.stderr.strip()}")
        cmds = ["link set lo up", "link set kp0 up"]
        cmds += [f"addr add {ip}/{_host_len(ip)} dev kp0 nodad" if ":" in ip else f"addr add {ip}/32 dev kp0"
                 for ip in self.node_ips]
        self.ip_batch(self.node, cmds)

    # ------------------------------------------------------------------ building
    def sysctl(self, ns: str, values: Mapping[str, object]) -> None:
        script = "; ".join(
            f"echo {v} > /proc/sys/{k.replace('.', '/')}" for k, v in values.items()
        )
        run(["ip", "netns", "exec", ns, "sh", "-ec", script])

    def ip_batch(self, ns: str, commands: Iterable[str]) -> None:
        run(["ip", "-n", ns, "-batch", "-"], input="\n".join(commands) + "\n")

    def route_to_node(self, *cidrs: str) -> None:
        """Route destinations (service VIP ranges, externalIPs) in the node to its dummy, so
        the node's own connections leave through OUTPUT (where DNAT applies) with a node
        address as source."""
        self.ip_batch(self.node, [f"route add {c} dev kp0" for c in cidrs])

    def add_node_addresses(self, *ips: str) -> None:
        """More addresses on the node's own interface that are not InternalIPs: a
        load-balancer VIP that kube-vip (ARP mode), or kube-proxy's IPVS mode, puts on a
        node. The kernel counts them as LOCAL (addrtype, ``fib ... type local``); they stay
        out of ``node_ips`` (as out of the Node object). IPv6 ones are deprecated
        (``preferred_lft 0``), so that source selection (longest matching prefix) never picks
        a VIP for the node's connections elsewhere; a connection to the VIP itself still
        comes from the VIP."""
        self.ip_batch(self.node, [
            f"addr add {ip}/{_host_len(ip)} dev kp0" + (" nodad preferred_lft 0" if ":" in ip else "")
            for ip in ips
        ])

    def add_hosts(self, hosts: Mapping[str, tuple[str, str]]) -> None:
        """Add namespaces: name -> (ip, kind), kind "pod", "external" or "sink" (a label)."""
        node_cmds = []
        host_cmds: dict[str, list[str]] = {}
        for name, (ip, kind) in hosts.items():
            if name in self.hosts or name == "node":
                raise ValueError(f"host {name!r} exists")
            ns = self._add_namespace(name)
            veth = f"vh{next(self._veths)}"
            self.hosts[name] = Host(ns, ip, kind, veth)
            v6 = ":" in ip
            if not any((":" in a) == v6 for a in self.node_ips):
                raise ValueError(f"the node has no {'IPv6' if v6 else 'IPv4'} address to route {ip}")
            # IPv4: the node's first address, answered by ARP on the unnumbered veth. IPv6
            # neighbour discovery answers only for addresses on the link, so there the
            # gateway is a fixed link-local address on the node side.
            gw = IPV6_GATEWAY if v6 else next(a for a in self.node_ips if ":" not in a)
            node_cmds += [
                f"link add {veth} type veth peer name eth0 netns {ns}",
                *([f"addr add {IPV6_GATEWAY}/64 dev {veth} nodad"] if v6 else []),
                f"link set {veth} up",
                f"route add {ip}/{_host_len(ip)} dev {veth}",
            ]
            host_cmds[ns] = [
                "link set lo up",
                "link set eth0 up",
                f"addr add {ip}/{_host_len(ip)} dev eth0" + (" nodad" if v6 else ""),
                *([] if v6 else [f"route add {gw} dev eth0"]),
                f"route add default via {gw} dev eth0",
            ]
        for name, (ip, _) in hosts.items():
            if ":" in ip:
                self.sysctl(self.hosts[name].ns, {"net.ipv6.conf.all.accept_dad": 0,
                                                  "net.ipv6.conf.default.accept_dad": 0})
        self.ip_batch(self.node, node_cmds)
        for ns, cmds in host_cmds.items():
            self.ip_batch(ns, cmds)

    def start_servers(self, servers: Mapping[str, tuple[Iterable[int], Iterable[int]]],
                      timeout: float = 15.0, label: str = "") -> None:
        """Start an identity server in each named host ("node": the node itself):
        name -> (tcp ports, udp ports). The server names itself ``label`` if given, else by
        the host's address."""
        started = []
        for name, (tcp, udp) in servers.items():
            ns, ip = (self.node, self.node_ips[0]) if name == "node" else (self.hosts[name].ns, self.hosts[name].ip)
            p = subprocess.Popen(
                ["ip", "netns", "exec", ns, *PYTHON, "-c", SERVER_SRC, ip,
                 ",".join(map(str, sorted(set(tcp)))), ",".join(map(str, sorted(set(udp)))), label],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
            self.processes.append(p)
            started.append((name, p))
        deadline = time.monotonic() + timeout
        for name, p in started:
            assert p.stdout is not None
            ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = p.stdout.readline() if ready else ""
            if line.strip() != "ready":
                raise TopologyError(f"server in {name} did not start (exit code {p.poll()})")

    def add_sink(self, cidrs: Sequence[str], tcp: Iterable[int], udp: Iterable[int],
                 ip: str = SINK_IP) -> None:
        """A host that owns whole ranges (``ip route add local``) and answers on the given
        ports as ``"sink:<port> saw <peer>"``; the node routes the ranges to it. Packets
        the node's rules leave untouched (not DNAT'd, not dropped) end up here, so "passed
        through" is observable rather than a timeout. The node's own connections to these
        ranges leave with the node's first address as source, like the dummy routes."""
        self.add_hosts({"sink": (ip, "sink")})
        veth = self.hosts["sink"].veth
        # IPv6 neighbour discovery answers only for configured addresses, not for a
        # ``local`` route: an IPv6 range goes via the sink's own address
        self.ip_batch(self.node, [f"route add {c} via {ip} dev {veth}" if ":" in c else f"route add {c} dev {veth}"
                                  for c in cidrs])
        self.ip_batch(self.hosts["sink"].ns, [f"route add local {c} dev lo" for c in cidrs])
        self.start_servers({"sink": (tcp, udp)}, label=SINK_LABEL)

    def load_iptables(self, text: str, family: str = "IPv4") -> None:
        tool = "iptables-restore" if family == "IPv4" else "ip6tables-restore"
        run(["ip", "netns", "exec", self.node, tool], input=text)

    def iptables_save(self, family: str = "IPv4") -> str:
        """The node's rules as ``iptables-save`` prints them, without comment lines and with
        the built-in chains' counters zeroed."""
        tool = "iptables-save" if family == "IPv4" else "ip6tables-save"
        out = run(["ip", "netns", "exec", self.node, tool])
        lines = (re.sub(r"\[\d+:\d+\]$", "[0:0]", line) for line in out.splitlines() if not line.startswith("#"))
        return "".join(line + "\n" for line in lines)

    def load_nft(self, text: str) -> None:
        """Load an nftables transaction (``nft -f``) into the node; its base chains hook themselves."""
        run(["ip", "netns", "exec", self.node, "nft", "-f", "-"], input=text)

    def nft_list(self, what: str = "ruleset") -> str:
        """``nft list <what>`` in the node, e.g. "ruleset" or "table ip kube-proxy"."""
        return run(["ip", "netns", "exec", self.node, "nft", "list", *what.split()])

    def source_address(self, dst: str) -> str:
        """The source address the node picks towards dst (what MASQUERADE rewrites to)."""
        out = run(["ip", "-n", self.node, "-o", "route", "get", dst])
        words = out.split()
        return words[words.index("src") + 1]

    # ------------------------------------------------------------------ traffic
    def ns_of(self, name: str) -> str:
        return self.node if name == "node" else self.hosts[name].ns

    def sports(self, n: int) -> int:
        """A block of n source ports never used before in this topology (fresh conntrack)."""
        first = next(self._sports)
        for _ in range(n - 1):
            next(self._sports)
        if first + n > 30000:
            raise TopologyError("source-port budget of this topology exhausted")
        return first

    def probe(self, batches: Mapping[str, Sequence[Probe]]) -> dict[str, list[list[Reply]]]:
        """Run the probes of each host (name -> probes; "node" is the node itself), all hosts
        and all probes of a host concurrently. Returns name -> per probe, its replies."""
        procs = {}
        for name, probes in batches.items():
            payload = json.dumps([dataclasses.asdict(p) for p in probes])
            p = subprocess.Popen(
                ["ip", "netns", "exec", self.ns_of(name), *PYTHON, "-c", CLIENT_SRC],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            self.processes.append(p)
            procs[name] = (p, payload, probes)
        out: dict[str, list[list[Reply]]] = {}
        try:
            for name, (p, payload, probes) in procs.items():
                budget = 15.0 + max((pr.count * (pr.timeout + 0.5) for pr in probes), default=0.0)
                stdout, stderr = p.communicate(payload, timeout=budget)
                if p.returncode:
                    raise TopologyError(f"client in {name} failed: {stderr.strip()}")
                out[name] = [[Reply.parse(r) for r in replies] for replies in json.loads(stdout)]
        finally:
            for p, _, _ in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=5)
                self.processes.remove(p)
        return out

    def probe_one(self, name: str, probe: Probe) -> list[Reply]:
        return self.probe({name: [probe]})[name][0]


def _host_len(ip: str) -> int:
    return 128 if ":" in ip else 32


@contextlib.contextmanager
def topology(node_ips: Sequence[str], *, tag: str = "t") -> Iterator[Topology]:
    topo = Topology(node_ips, tag=tag)
    try:
        yield topo
    finally:
        topo.close()


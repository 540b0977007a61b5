"""Walk rendered ``nft -f`` text (kube-proxy's nftables mode) as a NEW packet would, for tests.

Independent of kproxy_core: it reads only the transaction text (``add/flush/delete``
of tables, chains, rules, sets, maps and elements), finds the base chains with their
hooks and priorities, and runs the packet through them hook by hook
(NFTABLES.md §1.6): a node-local source takes output (filter-output-pre-dnat -110,
nat-output -100, filter-output 0), then postrouting, then input when the (DNATed)
destination is local; any other source takes prerouting (filter-prerouting-pre-dnat,
nat-prerouting), then input (local destination) or forward, then postrouting.
``numgen random mod N vmap`` is resolved towards the endpoint the engine chose (the
element whose endpoint chain DNATs there), which is how the random number would have
had to come out. Affinity sets start empty (a new client), so ``ip saddr @affinity-…``
never matches and ``update @affinity-…`` changes nothing for this walk.

Reporting convention (trace.py / plan.py ``_walk_nft``): the nat dstnat base chain and
``services`` are always listed; every chain then entered (``jump``/``goto``/vmap hit)
is listed in order. The filter base chains are listed only when a chain they jump to
matches the packet (a vmap/set hit, a drop or reject): the plumbing ``ct state new
jump service-endpoints-check`` whose lookup misses is left out, as trace does.
nat-postrouting/masquerading are walked but not listed: trace reports their outcome
as ``masquerade``.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, field

NAT_DSTNAT_CHAINS = ("nat-prerouting", "nat-output")  # trace always lists these (and services)


@dataclass
class Packet:
    src: str
    dst: str
    dport: int
    proto: str  # tcp/udp/sctp
    local: set[str] = field(default_factory=set)  # the node's addresses (fib type local)
    endpoint: str | None = None  # "ip:port" the numgen vmaps must lead to
    iif: str | None = None  # input interface, for iifname detectors


@dataclass
class Result:
    chains: list[str]
    verdict: str  # DNAT / REJECT / DROP / PASS
    endpoint: str | None = None
    masquerade: bool = False


@dataclass
class Chain:
    hook: str | None = None
    priority: int = 0
    rules: list[list[str]] = field(default_factory=list)


def _element(text: str) -> tuple[tuple[str, ...], list[str]]:
    """``{ K1 . K2 [comment "c"] [: V...] }`` -> (key parts, value words)."""
    words = shlex.split(text)
    assert words[0] == "{" and words[-1] == "}", text
    words = words[1:-1]
    if "comment" in words:
        i = words.index("comment")
        del words[i : i + 2]
    value: list[str] = []
    if ":" in words:
        i = words.index(":")
        words, value = words[:i], words[i + 1 :]
    return tuple(w for w in words if w != "."), value


def parse(text: str) -> tuple[dict[str, Chain], dict[str, dict[tuple[str, ...], list[str]]]]:
    """Apply the transaction to an empty table: (chains, sets and maps with their elements)."""
    chains: dict[str, Chain] = {}
    containers: dict[str, dict[tuple[str, ...], list[str]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        words = line.split(" ", 5)
        verb, kind = words[0], words[1]
        if kind == "table":
            continue
        name, rest = words[4], words[5] if len(words) > 5 else ""
        if kind == "chain":
            if verb == "delete":
                chains.pop(name)
            elif verb == "flush":
                chains[name].rules.clear()
            else:
                ch = chains.setdefault(name, Chain())
                spec = rest.split()
                if "hook" in spec:
                    ch.hook = spec[spec.index("hook") + 1]
                    ch.priority = int(spec[spec.index("priority") + 1])
        elif kind == "rule":
            chains[name].rules.append(shlex.split(rest))
        elif kind in ("set", "map"):
            if verb == "delete":
                containers.pop(name)
            elif verb == "flush":
                containers[name].clear()
            else:
                containers.setdefault(name, {})
        elif kind == "element":
            key, value = _element(rest)
            if verb == "delete":
                del containers[name][key]
            else:
                containers[name].setdefault(key, value)
        else:
            raise ValueError(f"walker does not know {line!r}")
    return chains, containers


def _same(value: object, item: str) -> bool:
    """Does a packet field ``value`` equal (or fall inside) one set/map key part ``item``?"""
    if isinstance(value, int):
        return item.isdigit() and int(item) == value
    v = str(value)
    try:
        addr = ipaddress.ip_address(v)
    except ValueError:
        return v == item
    try:
        net = ipaddress.ip_network(item, strict=False)
    except ValueError:
        return False
    return addr.version == net.version and addr in net


def _key_matches(values: list[object], key: tuple[str, ...]) -> bool:
    return len(key) == len(values) and all(_same(v, k) for v, k in zip(values, key, strict=True))


class _NoMatch(Exception):
    pass


@dataclass
class _State:
    pkt: Packet
    dst: str
    mark: int = 0
    dport: int = 0
    dnat: str | None = None
    dnatted: bool = False
    masquerade: bool = False
    chains: list[str] = field(default_factory=list)


class Walker:
    def __init__(self, text: str) -> None:
        self.chains, self.containers = parse(text)

    # ------------------------------------------------------------------ matching

    def _is_local(self, pkt: Packet, ip: str) -> bool:
        a = ipaddress.ip_address(ip)
        return ip in pkt.local or (a.version == 4 and a.is_loopback) or ip == "::1"

    def _selector(self, words: list[str], i: int, st: _State) -> tuple[object, int]:
        """One selector at ``words[i]``: (its value for the packet, index after it)."""
        w = words[i]
        if w in ("ip", "ip6"):
            return (st.dst if words[i + 1] == "daddr" else st.pkt.src), i + 2
        if w == "meta" and words[i + 1] == "l4proto":
            return st.pkt.proto, i + 2
        if w == "th" and words[i + 1] == "dport":
            return st.dport, i + 2
        if w == "fib":  # fib daddr|saddr type
            ip = st.dst if words[i + 1] == "daddr" else st.pkt.src
            return ("local" if self._is_local(st.pkt, ip) else "unicast"), i + 3
        if w == "iifname":
            if st.pkt.iif is None:
                raise ValueError("the packet has no input interface for an iifname match")
            return st.pkt.iif, i + 1
        if w == "ct" and words[i + 1] == "state":
            return "new", i + 2
        if w == "mark" and words[i + 1] == "and":
            return st.mark & int(words[i + 2], 0), i + 3
        raise ValueError(f"walker does not know selector {w!r} in {words}")

    def _numgen(self, items: list[tuple[str, list[str]]], st: _State) -> list[str] | None:
        """The ``numgen random`` vmap element whose endpoint chain DNATs to the chosen endpoint."""
        for _, verdict in items:
            target = verdict[1] if len(verdict) == 2 and verdict[0] in ("goto", "jump") else None
            for rule in self.chains.get(target or "", Chain()).rules:
                if "dnat" in rule and rule[rule.index("dnat") + 2] == st.pkt.endpoint:
                    return verdict
        return None

    @staticmethod
    def _braced(words: list[str], i: int) -> tuple[list[str], int]:
        """The words inside ``{ ... }`` starting at ``words[i] == "{"``; index after ``}``."""
        j = words.index("}", i)
        return words[i + 1 : j], j + 1

    # ------------------------------------------------------------------ running

    def _run(self, name: str, st: _State) -> str | None:
        """Run a chain: a terminal verdict (accept/drop/reject) or None (fell through / return)."""
        for rule in self.chains[name].rules:
            try:
                verdict = self._rule(rule, st)
            except _NoMatch:
                continue
            if verdict == "return":
                return None
            if verdict is not None:
                return verdict
        return None

    def _enter(self, how: str, target: str, st: _State) -> str | None:
        st.chains.append(target)
        result = self._run(target, st)
        if how == "goto":
            return "return" if result is None else result  # the goto'ing chain ends here too
        return result

    def _rule(self, words: list[str], st: _State) -> str | None:
        """Evaluate one rule; raise _NoMatch when a match fails; the verdict (or None: next rule)."""
        if "comment" in words:
            words = words[: words.index("comment")]
        i = 0
        while i < len(words):
            w = words[i]
            if w in ("jump", "goto"):
                return self._enter(w, words[i + 1], st)
            if w == "return":
                return "return"
            if w in ("drop", "reject", "accept"):
                return w
            if w == "dnat":  # dnat to ADDR:PORT: terminal (accept)
                st.dnat = words[i + 2]
                return "accept"
            if w == "masquerade":
                st.masquerade = True
                return "accept"
            if w == "update":  # update @affinity-… { ip saddr }: affinity for later packets only
                _, i = self._braced(words, i + 2)
                continue
            if w == "mark" and words[i + 1] == "set":  # mark set mark or|xor M
                op, bits = words[i + 3], int(words[i + 4], 0)
                st.mark = st.mark | bits if op == "or" else st.mark ^ bits
                i += 5
                continue
            if w == "numgen":  # numgen random mod N vmap { 0 : goto X , ... }
                inner, i = self._braced(words, i + 5)
                items = [_element("{ " + item + " }") for item in " ".join(inner).split(" , ")]
                verdict = self._numgen([(k[0], v) for k, v in items], st)
                if verdict is None:
                    raise _NoMatch
                return self._verdict(verdict, st)
            # a match: selector [. selector ...] then [!=|==] value / @set / { ... } / vmap
            values: list[object] = []
            value, i = self._selector(words, i, st)
            values.append(value)
            while i < len(words) and words[i] == ".":
                value, i = self._selector(words, i + 1, st)
                values.append(value)
            if words[i] == "vmap":
                ref = words[i + 1]
                assert ref.startswith("@"), words
                for key, verdict in self.containers[ref[1:]].items():
                    if _key_matches(values, key):
                        return self._verdict(verdict, st)
                raise _NoMatch
            neg = words[i] == "!="
            if words[i] in ("!=", "=="):
                i += 1
            if words[i].startswith("@"):
                keys = list(self.containers[words[i][1:]])
                i += 1
            elif words[i] == "{":
                inner, i = self._braced(words, i)
                keys = [(x.strip(),) for x in " ".join(inner).split(",") if x.strip()]
            else:
                keys = [(words[i],)]
                i += 1
            hit = any(_key_matches(values, k) for k in keys)
            if hit == neg:
                raise _NoMatch
        return None

    def _verdict(self, verdict: list[str], st: _State) -> str | None:
        if verdict[0] in ("goto", "jump"):
            return self._enter(verdict[0], verdict[1], st)
        if verdict[0] in ("drop", "reject", "accept", "return"):
            return verdict[0]
        raise ValueError(f"walker does not know verdict {verdict}")

    # ------------------------------------------------------------------ hooks

    def _hook(self, hook: str, st: _State, res: Result) -> str | None:
        """Run the base chains of one hook in priority order; drop/reject or None."""
        for name, ch in sorted(
            ((n, c) for n, c in self.chains.items() if c.hook == hook), key=lambda item: item[1].priority
        ):
            path: list[str] = []
            verdict = None
            for rule in ch.rules:
                st.chains = []
                try:
                    verdict = self._rule(rule, st)
                except _NoMatch:
                    continue
                # A base chain's ``ct state new jump X`` whose X matched nothing (its lookup
                # missed) is plumbing trace leaves out; keep X when anything in it matched.
                if len(st.chains) > 1 or verdict in ("drop", "reject") or name in NAT_DSTNAT_CHAINS:
                    path += st.chains
                if verdict is not None:
                    break
            if hook != "postrouting" and (path or name in NAT_DSTNAT_CHAINS):
                res.chains += [name, *path]
            if verdict in ("drop", "reject"):
                return verdict
            if st.dnat is not None and not st.dnatted:  # later chains see the new daddr and dport
                res.verdict, res.endpoint, st.dnatted = "DNAT", st.dnat, True
                host, port = st.dnat.rsplit(":", 1)
                st.dst, st.dport = host.strip("[]"), int(port)
        return None

    def walk(self, pkt: Packet) -> Result:
        res = Result(chains=[], verdict="PASS")
        st = _State(pkt, pkt.dst, dport=pkt.dport)
        if self._is_local(pkt, pkt.src):
            # Looped back over lo, the packet also meets prerouting again, but the connection's
            # DNAT is already set up (nat-prerouting is not consulted) and firewall-check would
            # look up the DNATed daddr; the walk, like trace, leaves that second pass out.
            hooks = ["output", "postrouting", "input?"]
        else:
            hooks = ["prerouting", "input|forward", "postrouting"]
        for hook in hooks:
            if hook == "input?":
                if not self._is_local(pkt, st.dst):
                    continue
                hook = "input"
            elif hook == "input|forward":
                hook = "input" if self._is_local(pkt, st.dst) else "forward"
            verdict = self._hook(hook, st, res)
            if verdict is not None:
                res.verdict, res.endpoint = verdict.upper(), None
                return res
        res.masquerade = st.masquerade
        return res

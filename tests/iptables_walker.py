"""Walk rendered iptables-restore text as a NEW packet would, for tests.

Independent of kproxy_core.plan: it reads only the rule text. ``statistic`` rules are
resolved towards a given endpoint (the one the engine chose), which is how the
kernel's random choice would have had to go for that endpoint.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, field


@dataclass
class Packet:
    src: str
    dst: str
    dport: int
    proto: str  # tcp/udp/sctp
    local: set[str] = field(default_factory=set)  # the node's addresses (addrtype LOCAL)
    endpoint: str | None = None  # "ip:port" the statistic rules must lead to


@dataclass
class Result:
    chains: list[str]
    verdict: str  # DNAT / REJECT / DROP / PASS
    endpoint: str | None = None
    masquerade: bool = False


def parse(text: str) -> dict[str, dict[str, list[list[str]]]]:
    tables: dict[str, dict[str, list[list[str]]]] = {}
    cur: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        if line.startswith("*"):
            cur = tables.setdefault(line[1:], {})
        elif line.startswith(":"):
            cur.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            words = shlex.split(line)
            cur.setdefault(words[1], []).append(words[2:])
    return tables


def _is_local(pkt: Packet, ip: str) -> bool:
    a = ipaddress.ip_address(ip)
    return ip in pkt.local or (a.version == 4 and a.is_loopback) or ip == "::1"


def _in(ip: str, net: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(net, strict=False)


class Walker:
    def __init__(self, text: str) -> None:
        self.t = parse(text)

    def _dnat_of(self, chain: str) -> str | None:
        for rule in self.t["nat"].get(chain, []):
            if "--to-destination" in rule:
                return rule[rule.index("--to-destination") + 1]
        return None

    def _matches(self, rule: list[str], pkt: Packet, dst: str, table: str) -> bool:
        i = 0
        neg = False
        target = rule[rule.index("-j") + 1] if "-j" in rule else None
        while i < len(rule):
            w = rule[i]
            if w == "!":
                neg = True
                i += 1
                continue
            arg = rule[i + 1] if i + 1 < len(rule) else ""
            ok = True
            if w == "-j":
                break
            if w == "-p":
                ok = arg == pkt.proto
            elif w == "-d":
                ok = _in(dst, arg)
            elif w == "-s":
                ok = _in(pkt.src, arg)
            elif w == "--dport":
                ok = int(arg) == pkt.dport
            elif w == "--dst-type":
                ok = _is_local(pkt, dst) if arg == "LOCAL" else True
            elif w == "--src-type":
                ok = _is_local(pkt, pkt.src) if arg == "LOCAL" else True
            elif w == "--probability":
                ok = target is not None and self._dnat_of(target) == pkt.endpoint
            elif w == "--rcheck":
                return False  # a new client: no recent entry yet
            elif w == "--ctstate":
                ok = "NEW" in arg.split(",") if table == "filter" else True
                if arg == "INVALID":
                    ok = False
            elif w == "--mark":
                ok = False  # the walk reports the mark separately; mark matches only in POSTROUTING/FORWARD
            elif w in ("-m", "--comment", "--mode", "--name", "--nfacct-name", "--seconds", "--to-destination"):
                i += 2
                neg = False
                continue
            elif w in ("--set", "--reap"):
                i += 1
                continue
            else:
                raise ValueError(f"walker does not know {w!r} in {rule}")
            if neg:
                ok = not ok
            if not ok:
                return False
            neg = False
            i += 2
        return True

    def walk(self, pkt: Packet) -> Result:
        res = Result(chains=["KUBE-SERVICES"], verdict="PASS")
        done = self._run("nat", "KUBE-SERVICES", pkt, pkt.dst, res)
        dst = pkt.dst
        if done and res.verdict == "DNAT" and res.endpoint:
            return res
        for chain in self._filter_path(pkt, dst):
            for rule in self.t["filter"].get(chain, []):
                target = rule[rule.index("-j") + 1] if "-j" in rule else None
                if target in ("REJECT", "DROP") and self._matches(rule, pkt, dst, "filter"):
                    res.chains.append("filter:" + chain)
                    res.verdict = target
                    return res
        return res

    def _filter_path(self, pkt: Packet, dst: str) -> list[str]:
        """kube-proxy's filter chains in the order the hooks reach them (jumps prepended,
        so each built-in chain holds them in reverse list order; KUBE-PROXY.md §6.6)."""
        output = ["KUBE-PROXY-FIREWALL", "KUBE-SERVICES"]
        inp = ["KUBE-PROXY-FIREWALL", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES"]
        forward = ["KUBE-PROXY-FIREWALL", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"]
        src_local, dst_local = _is_local(pkt, pkt.src), _is_local(pkt, dst)
        if src_local:
            return output + (inp if dst_local else [])
        return inp if dst_local else forward

    def _run(self, table: str, chain: str, pkt: Packet, dst: str, res: Result) -> bool:
        """Run a chain; True when a terminal target (DNAT) ended the walk."""
        for rule in self.t[table].get(chain, []):
            if not self._matches(rule, pkt, dst, table):
                continue
            if "-j" not in rule:
                continue  # e.g. the FW chain's last, comment-only rule
            target = rule[rule.index("-j") + 1]
            if target == "DNAT":
                res.verdict = "DNAT"
                res.endpoint = rule[rule.index("--to-destination") + 1]
                return True
            if target == "MARK":
                res.masquerade = True
                continue
            if target == "RETURN":
                return False
            if target in self.t[table]:
                res.chains.append(target)
                if self._run(table, target, pkt, dst, res):
                    return True
        return False

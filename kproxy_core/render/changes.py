"""What a sync rewrites: rule counts of one rendered state and the changes between two.

kube-proxy's partial syncs rewrite KUBE-SERVICES, KUBE-NODEPORTS, KUBE-POSTROUTING,
KUBE-MARK-MASQ and the filter chains every time, and a service's own chains only when
the service or its endpoints changed (KUBE-PROXY.md §7). :func:`diff_rules` reports
the chains whose rules differ, which is what such a sync has to write.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, field

from ..plan import ProxyPlan


@dataclass
class RuleCounts:
    rules: int = 0
    chains: int = 0
    per_table: Counter[str] = field(default_factory=Counter)
    per_service: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, object]:
        return {
            "rules": self.rules,
            "chains": self.chains,
            "per_table": dict(self.per_table),
            "per_service": dict(sorted(self.per_service.items())),
        }


def _chains(text: str) -> dict[tuple[str, str], list[str]]:
    """(table, chain) -> rule lines, for every chain declared or appended to."""
    out: dict[tuple[str, str], list[str]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            out.setdefault((table, line[1:].split()[0]), [])
        elif line.startswith("-A "):
            out.setdefault((table, line.split()[1]), []).append(line)
    return out


def _owners(plans: list[ProxyPlan]) -> dict[str, str]:
    owner: dict[str, str] = {}
    for plan in plans:
        for pp in plan.ports:
            for name in (pp.svc_chain, pp.svl_chain, pp.ext_chain, pp.fw_chain):
                owner[name] = pp.spn
            for ep in pp.endpoints:
                owner[pp.sep_chain(ep)] = pp.spn
    return owner


def _service_of(rule: str, chain: str, owner: dict[str, str]) -> str:
    if chain in owner:
        return owner[chain]
    marker = "--comment "
    at = rule.find(marker)
    if at < 0:
        return "(kube-proxy)"
    rest = rule[at + len(marker):]
    comment = rest[1:rest.index('"', 1)] if rest.startswith('"') else rest.split()[0]
    name = comment.split(" ")[0].split(":")[0]
    if name.count("/") == 1 and not name.startswith("kubernetes"):
        return comment.split(" ")[0]
    return "(kube-proxy)"


def count_rules(text: str, plan: ProxyPlan) -> RuleCounts:
    """Rules and chains of an iptables-restore text, per table and per service port."""
    owner = _owners([plan])
    c = RuleCounts()
    for (table, chain), rules in _chains(text).items():
        c.chains += 1
        c.rules += len(rules)
        c.per_table[table] += len(rules)
        for rule in rules:
            c.per_service[_service_of(rule, chain, owner)] += 1
    return c


@dataclass
class RuleDiff:
    added_chains: list[str]
    removed_chains: list[str]
    changed_chains: list[str]
    unified: str
    before: RuleCounts
    after: RuleCounts

    def to_dict(self) -> dict[str, object]:
        return {
            "added_chains": self.added_chains,
            "removed_chains": self.removed_chains,
            "changed_chains": self.changed_chains,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "diff": self.unified,
        }

    def summary(self) -> str:
        b, a = self.before, self.after
        lines = [
            f"rules   {b.rules} -> {a.rules} ({a.rules - b.rules:+d})",
            f"chains  {b.chains} -> {a.chains} ({a.chains - b.chains:+d}): "
            f"{len(self.added_chains)} added, {len(self.removed_chains)} removed, "
            f"{len(self.changed_chains)} rewritten",
        ]
        services = sorted(set(b.per_service) | set(a.per_service))
        moved = [(s, b.per_service[s], a.per_service[s]) for s in services if b.per_service[s] != a.per_service[s]]
        if moved:
            width = max(len(s) for s, _, _ in moved)
            lines.append("rules per service port that changed:")
            lines += [f"  {s.ljust(width)}  {x} -> {y} ({y - x:+d})" for s, x, y in moved]
        return "\n".join(lines)


def diff_rules(old: str, new: str, old_plan: ProxyPlan, new_plan: ProxyPlan) -> RuleDiff:
    before, after = _chains(old), _chains(new)

    def name(key: tuple[str, str]) -> str:
        return f"{key[0]}/{key[1]}"

    added = sorted(name(k) for k in after.keys() - before.keys())
    removed = sorted(name(k) for k in before.keys() - after.keys())
    changed = sorted(name(k) for k in after.keys() & before.keys() if after[k] != before[k])
    unified = "".join(
        difflib.unified_diff(old.splitlines(True), new.splitlines(True), "old", "new", n=1)
    )
    return RuleDiff(added, removed, changed, unified, count_rules(old, old_plan), count_rules(new, new_plan))

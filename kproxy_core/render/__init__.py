"""Renderers: kube-proxy's iptables and nftables rules from a plan."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import PluginError
from ..plan import EndpointInfo, PlanPort, ProxyPlan
from ..selectors import RoundRobin
from ..servicetypes import CORE, RuleText


def plugin_rules(plan: ProxyPlan, renderer: str) -> list[RuleText]:
    """The rule text Service-type plugins add for the plan's ports, in port order."""
    cfg = plan.config
    registry = cfg.plugin_manager.registry
    out: list[RuleText] = []
    for pp in plan.ports:
        if registry.owner(pp.service_type) == CORE:
            continue
        for rt in registry.call(pp.service_type, "rules", pp, renderer, cfg.family):
            if not isinstance(rt, RuleText):
                raise PluginError(
                    f"plugin {registry.owner(pp.service_type)}: Service type {pp.service_type}: "
                    f"rules() returned {rt!r}, not a RuleText"
                )
            out.append(rt)
    return out


# A round-robin cycle is written out position by position; past this many positions
# (weights summing higher) the rules fall back to weighted random choice.
MAX_RENDERED_CYCLE = 4096


def selection_rules(pp: PlanPort, endpoints: Sequence[EndpointInfo]) -> tuple[str, list[int], list[int]]:
    """How the rules pick among ``endpoints`` (one pool of ``pp``), for both renderers.

    Returns ``(mode, order, weights)``: ``("random", [], [])`` for kube-proxy's uniform
    cascade; ``("weighted", [], weights)`` for weighted random choice (iptables:
    ``statistic --probability w_i / (w_i + ... + w_n)``, nftables: ``numgen random mod W``
    with a range per endpoint); ``("cycle", order, [])`` for round-robin, where ``order``
    is one cycle of endpoint indexes (iptables: ``statistic --mode nth`` rules, nftables:
    ``numgen inc mod len(order)``): the kernel then takes the same turns as the engine's
    cursor, one per new connection. Maglev and source-hash have no equivalent in either
    and are written as kube-proxy's uniform choice (:func:`selector_note` says so).
    """
    sel = pp.selector
    weights = [ep.weight for ep in endpoints]
    n = len(endpoints)
    if n > 1 and sel.kind == "round-robin":
        if len(set(weights)) <= 1:
            return "cycle", list(range(n)), []
        if sum(weights) <= MAX_RENDERED_CYCLE:
            rr = RoundRobin(weights)
            return "cycle", [int(rr.pick()) for _ in range(sum(weights))], []  # type: ignore[arg-type]
        return "weighted", [], weights
    if n > 1 and sel.kind in ("weighted", "round-robin") and len(set(weights)) > 1:
        return "weighted", [], weights
    return "random", [], []


def selector_note(pp: PlanPort) -> str | None:
    """Why the rendered rules of ``pp`` do not choose as the engine does, or None."""
    sel = pp.selector
    if sel.kind in ("maglev", "source-hash") and len(pp.all_reachable) > 1:
        return (
            f"{pp.spn} uses the {sel.kind} selector ({sel.origin}), which neither iptables nor nftables "
            "rules can express: the rules pick uniformly at random"
        )
    if sel.kind == "round-robin" and len({e.weight for e in pp.all_reachable}) > 1 and (
        sum(e.weight for e in pp.cluster) > MAX_RENDERED_CYCLE or sum(e.weight for e in pp.local) > MAX_RENDERED_CYCLE
    ):
        return (
            f"{pp.spn}: a weighted round-robin cycle longer than {MAX_RENDERED_CYCLE} is written as weighted "
            "random choice"
        )
    return None

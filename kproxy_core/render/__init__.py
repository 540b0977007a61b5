"""Renderers: kube-proxy's iptables and nftables rules from a plan."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import PluginError
from ..plan import EndpointInfo, PlanPort, ProxyPlan
from ..selectors import MAX_RENDERED_CYCLE, selection_form
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


def selection_rules(pp: PlanPort, endpoints: Sequence[EndpointInfo]) -> tuple[str, list[int], list[int]]:
    """How the rules pick among ``endpoints`` (one pool of ``pp``), for both renderers:
    :func:`kproxy_core.selectors.selection_form` of the port's selector and the endpoints'
    weights."""
    return selection_form(pp.selector, [ep.weight for ep in endpoints])


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

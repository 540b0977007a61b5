"""Renderers: kube-proxy's iptables and nftables rules from a plan."""

from __future__ import annotations

from ..errors import PluginError
from ..plan import ProxyPlan
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

"""The LoadBalancer Service type (bundled plugin).

kube-proxy's view of a LoadBalancer (KUBE-PROXY.md §3.1, §5-§8): the ClusterIP and, per
port, the NodePort it implies (none with ``allocateLoadBalancerNodePorts: false``), plus
one frontend per ``status.loadBalancer.ingress[].ip`` of the family. Hostname-only
entries and ``ipMode: Proxy`` ones are skipped: traffic to a proxying load balancer
arrives from the balancer, addressed to the node. ``loadBalancerSourceRanges`` become
KUBE-FW (allowed sources DNAT, others are dropped, with the node-IP exception), and
``healthCheckNodePort`` is opened when externalTrafficPolicy is Local. Everything here
goes through the plugin API only.
"""

from __future__ import annotations

from collections.abc import Iterable

from kproxy_core.hookspecs import hookimpl
from kproxy_core.model import Cluster, Service, ServicePort
from kproxy_core.plan import PlanPort
from kproxy_core.servicetypes import FrontendSpec, Report, ServiceType, ServiceTypeRegistry

IP_MODES = ("VIP", "Proxy")


def _v6(text: str) -> bool:
    return ":" in text


class LoadBalancerType(ServiceType):
    name = "LoadBalancer"
    externally_accessible = True
    node_ports = True

    def validate(self, service: Service, report: Report) -> None:
        for i, ing in enumerate(service.load_balancer_ingress):
            path = f"status.loadBalancer.ingress[{i}]"
            if ing.ip_mode is not None and ing.ip_mode not in IP_MODES:
                report.error(f"{path}.ipMode", f"{ing.ip_mode!r} is not one of VIP, Proxy")
            if ing.ip_mode is not None and not ing.ip:
                report.error(f"{path}.ipMode", "may only be set when ip is set")
        local = service.external_traffic_policy == "Local"
        if service.health_check_node_port and not local:
            # the API server refuses this; kube-proxy's own tests feed it, and it ignores it
            report.warn(
                "spec.healthCheckNodePort",
                "may only be set when externalTrafficPolicy is 'Local'; kube-proxy ignores it",
            )
        elif local and not service.health_check_node_port:
            report.warn(
                "spec.healthCheckNodePort",
                "missing with externalTrafficPolicy Local (the API server allocates one); "
                "kube-proxy opens no health check port",
            )
        if service.allocate_load_balancer_node_ports:
            for i, sp in enumerate(service.ports):
                if not sp.node_port:
                    report.warn(
                        f"spec.ports[{i}].nodePort",
                        "missing although allocateLoadBalancerNodePorts is true (the API server "
                        "would allocate one); no NodePort rules for this port",
                    )

    def frontends(
        self, service: Service, port: ServicePort, family: str, cluster: Cluster
    ) -> Iterable[FrontendSpec]:
        v6 = family == "IPv6"
        ranges = tuple(c for c in service.load_balancer_source_ranges if _v6(c) == v6)
        for ing in service.load_balancer_ingress:
            if ing.ip and ing.ip_mode in (None, "VIP") and _v6(ing.ip) == v6:
                yield FrontendSpec(ing.ip, "LoadBalancer", source_ranges=ranges)

    def health_check_node_port(self, service: Service) -> int:
        return service.health_check_node_port

    def trace_steps(self, service: Service, port: PlanPort | None, frontend: str | None) -> Iterable[str]:
        skipped = []
        for ing in service.load_balancer_ingress:
            if not ing.ip:
                skipped.append(f"{ing.hostname or '(empty)'} (hostname only)")
            elif ing.ip_mode == "Proxy":
                skipped.append(f"{ing.ip} (ipMode Proxy: the balancer proxies to the nodes)")
        if not service.load_balancer_ingress:
            yield "LoadBalancer: no status.loadBalancer.ingress yet (pending): only the ClusterIP and NodePorts"
        if skipped:
            yield "LoadBalancer: ingress entries kube-proxy skips: " + ", ".join(skipped)
        if port is not None and port.lb_ips and service.load_balancer_source_ranges:
            yield (
                "LoadBalancer: loadBalancerSourceRanges " + ", ".join(service.load_balancer_source_ranges)
                + " guard the load-balancer IPs"
            )
        if not service.allocate_load_balancer_node_ports:
            yield (
                "LoadBalancer: allocateLoadBalancerNodePorts is false: ports without a nodePort have no "
                "NodePort rules"
            )


@hookimpl
def kproxy_register_service_types(registry: ServiceTypeRegistry) -> None:
    registry.register(LoadBalancerType())

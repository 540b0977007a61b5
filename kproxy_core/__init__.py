"""kproxy-core: kube-proxy's per-packet decision, offline, from ordinary manifests.

>>> import kproxy_core as kp
>>> cluster = kp.load("cluster.yaml")
>>> engine = kp.Engine(cluster, node="worker-1", cluster_cidr="100.96.0.0/11")
>>> engine.lookup("10.0.0.5", "100.68.181.31", 80, "TCP", sport=40000).verdict
'DNAT'
"""

from __future__ import annotations

from .dns import Answer, DnsRecord, Lookup, Zone, build_zone, resolve_as_pod
from .engine import (
    COMPILED_AVAILABLE,
    FRONTEND_NAMES,
    OUT6_DTYPE,
    OUT_DTYPE,
    VERDICT_NAMES,
    ApplyResult,
    Engine,
    ServicePortInfo,
)
from .envvars import container_env, format_env, service_env
from .errors import (
    EngineError,
    KproxyError,
    KproxyWarning,
    ManifestError,
    NodeNotFoundError,
    PacketError,
    PluginError,
    PluginWarning,
    ServiceNotFoundError,
)
from .hookspecs import hookimpl
from .manifests import load
from .model import Cluster, Endpoint, EndpointPort, EndpointSlice, Node, Service, ServicePort
from .plan import PlanPort, ProxyConfig, ProxyPlan
from .plantypes import EndpointInfo, NodeView
from .selectors import Selector
from .servicetypes import FrontendSpec, RuleText, ServiceType, ServiceTypeRegistry
from .trace import Trace

__version__ = "0.2.0.dev0"  # the one place; pyproject.toml and `kproxy --version` read it

__all__ = [
    # engine
    "COMPILED_AVAILABLE",
    "FRONTEND_NAMES",
    "OUT6_DTYPE",
    "OUT_DTYPE",
    "VERDICT_NAMES",
    "ApplyResult",
    "Engine",
    "ServicePortInfo",
    "Trace",
    # model and input
    "Cluster",
    "Endpoint",
    "EndpointPort",
    "EndpointSlice",
    "Node",
    "Service",
    "ServicePort",
    "load",
    # plan
    "EndpointInfo",
    "NodeView",
    "PlanPort",
    "ProxyConfig",
    "ProxyPlan",
    # plugins
    "FrontendSpec",
    "RuleText",
    "Selector",
    "ServiceType",
    "ServiceTypeRegistry",
    "hookimpl",
    # discovery
    "Answer",
    "DnsRecord",
    "Lookup",
    "Zone",
    "build_zone",
    "resolve_as_pod",
    "container_env",
    "format_env",
    "service_env",
    # errors
    "EngineError",
    "KproxyError",
    "ManifestError",
    "NodeNotFoundError",
    "PacketError",
    "PluginError",
    "PluginWarning",
    "KproxyWarning",
    "ServiceNotFoundError",
]

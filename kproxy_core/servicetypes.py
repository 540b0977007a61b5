"""Service types: the handler interface and the registry plugins add types to.

kube-proxy's core knows ``ClusterIP`` and ``NodePort``; every other ``spec.type`` is
served by a handler a plugin registers from
:func:`kproxy_core.hookspecs.kproxy_register_service_types` (the bundled ``LoadBalancer``
and ``ExternalName`` plugins do exactly that). A handler is consulted while manifests
are validated and while the plan is built, never per packet:

- :meth:`ServiceType.validate` checks the spec (errors name the object and the field);
- :meth:`ServiceType.frontends` adds addresses a service port answers on, each with the
  traffic policy it follows; the plan, the compiled core, the trace and both renderers
  treat them like kube-proxy's own: an ``external`` frontend like an externalIP (or a
  load-balancer IP for kind ``LoadBalancer``: KUBE-FW and source ranges), an
  ``internal`` one like the ClusterIP;
- :meth:`ServiceType.dns_records` adds records to the cluster zone;
- :meth:`ServiceType.rules` adds rule text to a renderer's output;
- :meth:`ServiceType.trace_steps` adds lines to a trace that meets the type.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from .errors import ManifestError, PluginError
from .plantypes import BUILTIN_FRONTEND_KINDS as BUILTIN_FRONTEND_KINDS  # importable from here as before
from .plantypes import FrontendPolicy

if TYPE_CHECKING:
    from .dnstypes import DnsRecord
    from .model import Cluster, Service, ServicePort
    from .plantypes import PlanPort

CORE = "core"


@dataclass(frozen=True)
class FrontendSpec:
    """An address one service port answers on, for one IP family.

    ``kind`` is what lookups and traces report as the frontend. Kind ``LoadBalancer``
    gets kube-proxy's load-balancer rules (``"<svc> loadbalancer IP"``, KUBE-FW for
    ``source_ranges``, the node-IP exception); any other kind is written like an
    externalIP (``policy="external"``: KUBE-EXT, externalTrafficPolicy, masquerade of
    external traffic) or like the ClusterIP (``policy="internal"``: the internal
    traffic chain, internalTrafficPolicy, masquerade of non-pod sources), with
    ``label`` (default ``"<kind> IP"``) in the rule comment. ``port``/``protocol``
    default to the service port's. ``source_ranges`` is for kind ``LoadBalancer`` only.
    """

    ip: str
    kind: str = "LoadBalancer"
    port: int | None = None
    protocol: str | None = None
    source_ranges: tuple[str, ...] = ()
    policy: FrontendPolicy = "external"
    label: str | None = None

    @property
    def comment(self) -> str:
        if self.label is not None:
            return self.label
        return "loadbalancer IP" if self.kind == "LoadBalancer" else f"{self.kind} IP"


@dataclass(frozen=True)
class RuleText:
    """Rule text a Service type adds for one service port to one renderer's output.

    iptables: ``table`` is ``"filter"`` or ``"nat"``; ``chains`` are new chains to declare
    (``:NAME - [0:0]``) and ``lines`` are ``-A CHAIN ...`` rules, appended after
    kube-proxy's rules of that table. nftables: ``table`` is ignored, ``chains`` are
    declared in kube-proxy's table and ``lines`` are complete ``add rule ...`` commands.
    Lookups do not model this text: keep it neutral for the decision (counters, logs,
    accounting chains) or the kernel will disagree with the engine.
    """

    table: str = "nat"
    lines: tuple[str, ...] = ()
    chains: tuple[str, ...] = ()


class Report(Protocol):
    """Where :meth:`ServiceType.validate` and ``kproxy_validate_service`` report problems."""

    def error(self, path: str, msg: str) -> None: ...

    def warn(self, path: str, msg: str) -> None: ...


class ServiceType:
    """Base class of a Service type handler; override what the type needs.

    ``name``: the ``spec.type`` value served. ``proxied``: False for types kube-proxy
    writes no rules for (ExternalName): their ports get no plan entry. ``externally_accessible``:
    kube-proxy's ``ExternallyAccessible`` (NodePort, LoadBalancer): externalTrafficPolicy
    applies. ``node_ports``: the type's ports may carry ``nodePort``. ``cluster_wide``: the
    handler's answers for one Service depend on other Services (an address allocated
    cluster-wide), so :meth:`kproxy_core.Engine.apply` replans every Service of the type
    whenever any Service changes.

    A problem with the input that only shows across Services (two Services asking for one
    address) can be raised as :class:`kproxy_core.ManifestError` from any method: it
    reaches the user as bad input (exit 2), not as a plugin failure.
    """

    name: ClassVar[str] = ""
    proxied: ClassVar[bool] = True
    externally_accessible: ClassVar[bool] = False
    node_ports: ClassVar[bool] = False
    cluster_wide: ClassVar[bool] = False

    def validate(self, service: Service, report: Report) -> None:
        """Check the spec of a Service of this type; report problems on ``report``."""

    def frontends(
        self, service: Service, port: ServicePort, family: str, cluster: Cluster
    ) -> Iterable[FrontendSpec]:
        """Extra frontends of one service port for one family (``"IPv4"``/``"IPv6"``)."""
        return ()

    def health_check_node_port(self, service: Service) -> int:
        """The port kube-proxy's health check server answers on (0: none); asked only
        when externalTrafficPolicy is Local."""
        return 0

    def dns_records(self, service: Service, zone: str, cluster: Cluster) -> Iterable[DnsRecord]:
        """Records this Service adds to the cluster zone (``zone`` like ``cluster.local``), or
        to a zone :meth:`dns_zones` names."""
        return ()

    def zone_records(self, zone: str, cluster: Cluster) -> Iterable[DnsRecord]:
        """Records of a zone :meth:`dns_zones` names that belong to no Service (its
        ``dns-version``); asked once per zone and cluster state."""
        return ()

    def dns_zones(self, zone: str) -> Iterable[str]:
        """Zones besides the cluster zone ``zone`` that this type's :meth:`dns_records` write
        into (``clusterset.local``): the DNS server answers them with authority, from
        those records alone (NXDOMAIN for other names, NODATA for a name that exists
        without the type asked, the zone's SOA and NS at its apex)."""
        return ()

    def rules(self, port: PlanPort, renderer: str, family: str) -> Iterable[RuleText]:
        """Rule text for one planned service port; ``renderer`` is ``iptables`` or ``nftables``."""
        return ()

    def trace_steps(self, service: Service, port: PlanPort | None, frontend: str | None) -> Iterable[str]:
        """Lines for a trace that reached this Service (``port`` None: not proxied)."""
        return ()

    def endpoint_notes(self, service: Service, port: PlanPort, cluster: Cluster) -> Mapping[str, str]:
        """A note per endpoint of a traced port (``"IP:port"`` -> text, like the cluster it
        was imported from), shown beside each candidate; endpoints without one get none."""
        return {}


class ClusterIPType(ServiceType):
    """kube-proxy's core: a virtual IP inside the cluster."""

    name = "ClusterIP"


class NodePortType(ServiceType):
    """kube-proxy's core: the ClusterIP plus a port on every node address."""

    name = "NodePort"
    externally_accessible = True
    node_ports = True


T = TypeVar("T")


class ServiceTypeRegistry:
    """The Service types one plugin manager knows, by ``spec.type`` name."""

    def __init__(self, trace: Callable[[str], None] | None = None) -> None:
        self._handlers: dict[str, ServiceType] = {}
        self._owners: dict[str, str] = {}
        self._current = CORE
        self._trace = trace
        self.register(ClusterIPType())
        self.register(NodePortType())

    @contextmanager
    def registering_for(self, plugin: str) -> Iterator[None]:
        """Attribute registrations made inside the block to ``plugin``."""
        before, self._current = self._current, plugin
        try:
            yield
        finally:
            self._current = before

    def register(self, handler: ServiceType, *, replace: bool = False) -> None:
        """Serve ``handler.name`` with ``handler``."""
        name = getattr(handler, "name", "")
        if not isinstance(handler, ServiceType) or not isinstance(name, str) or not name:
            raise PluginError(
                f"plugin {self._current}: kproxy_register_service_types: {handler!r} is not a "
                "ServiceType with a name"
            )
        if name in self._handlers and not replace:
            raise PluginError(
                f"plugin {self._current}: kproxy_register_service_types: Service type {name!r} is "
                f"already registered by {self._owners[name]} (pass replace=True to override)"
            )
        self._handlers[name] = handler
        self._owners[name] = self._current

    def get(self, name: str) -> ServiceType | None:
        return self._handlers.get(name)

    def owner(self, name: str) -> str:
        """The plugin that registered ``name`` (``core`` for ClusterIP and NodePort)."""
        return self._owners.get(name, CORE)

    def names(self) -> tuple[str, ...]:
        return tuple(self._handlers)

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def call(self, type_name: str, method: str, *args: Any) -> Any:
        """``handler.method(*args)`` for the handler of ``type_name``; a failure becomes a
        PluginError naming the plugin, the type and the method. Iterables are realised
        into lists so that a failing generator is caught here too."""
        handler = self._handlers[type_name]
        if self._trace is not None:
            self._trace(f"{self.owner(type_name)}: {type(handler).__name__}.{method}{_brief(args)}\n")
        try:
            result = getattr(handler, method)(*args)
            if method in _ITERABLE_METHODS:
                result = list(result)
        except (PluginError, ManifestError):  # ManifestError: the input is wrong, and the plugin says so
            raise
        except Exception as e:
            raise PluginError(
                f"plugin {self.owner(type_name)}: Service type {type_name}: {method}() failed{_subject(args)}: "
                f"{type(e).__name__}: {e}"
            ) from e
        return result


_ITERABLE_METHODS = frozenset({"frontends", "dns_records", "dns_zones", "zone_records", "rules", "trace_steps"})


def _subject(args: tuple[Any, ...]) -> str:
    """`` for Service ns/name port http`` from a handler call's arguments ("" without a Service)."""
    svc = next((a.ref for a in args if isinstance(getattr(a, "ref", None), str)), None)
    spn = next((a.spn for a in args if isinstance(getattr(a, "spn", None), str)), None)
    if spn is not None:  # a PlanPort: ns/name:port
        return f" for Service port {spn}"
    if svc is None:
        return ""
    port = next((a for a in args if hasattr(a, "protocol") and hasattr(a, "port") and hasattr(a, "name")), None)
    return f" for Service {svc}" + (f" port {port.name or port.port}" if port is not None else "")


def _brief(args: tuple[Any, ...]) -> str:
    parts = []
    for a in args:
        ref = getattr(a, "ref", None) or getattr(a, "spn", None)
        parts.append(str(ref) if ref is not None else repr(a)[:40])
    return "(" + ", ".join(parts) + ")"


def trace_writer() -> Callable[[str], None]:
    def write(text: str) -> None:
        sys.stderr.write(text)

    return write

"""The hooks a kproxy plugin can implement.

A plugin is any module or object with functions decorated ``@kproxy_core.hookimpl`` and
named after the specs below. It is found through the ``kproxy`` entry-point group (or
handed to :func:`kproxy_core.plugins.make_plugin_manager`). ``NAME`` names the markers,
the manager and the entry-point group.

Hooks are grouped by when they run. Arguments are add-only across versions: a hook
implementation may accept any subset of a spec's parameters (pluggy passes only those it
names), so a plugin keeps working when a later version adds one. Every call of a plugin
runs while manifests are loaded or the plan is built, never per packet: a plugin chooses
and parameterises, the compiled core executes. Plugins are asked in the manager's
documented order (``tryfirst``, plain, ``trylast``; then ``kproxy_priority``; then the
name: :mod:`kproxy_core.plugins`), whatever the install order. An exception raised in a
hook, or an answer of the wrong type, becomes a :class:`kproxy_core.errors.PluginError`
naming the plugin, the hook and what was being read or planned; a
:class:`kproxy_core.errors.ManifestError` raised in a hook is bad input and passes as it is.

docs/plugins.md has one section per hook with a runnable example.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .model import Cluster, Service, ServicePort
    from .plantypes import EndpointInfo, NodeView
    from .selectors import Selector
    from .servicetypes import Report, ServiceTypeRegistry

NAME = "kproxy"

hookspec = pluggy.HookspecMarker(NAME)
hookimpl = pluggy.HookimplMarker(NAME)


# --------------------------------------------------------------------------- start-up


@hookspec
def kproxy_register_service_types(registry: ServiceTypeRegistry) -> None:
    """Add Service types: call ``registry.register(handler)`` for each.

    Called once, when the plugin manager is built, after every plugin is registered
    (bundled ones first, then entry points). ``registry`` is the
    :class:`kproxy_core.servicetypes.ServiceTypeRegistry` of the manager; a handler is a
    :class:`kproxy_core.servicetypes.ServiceType` whose ``name`` is the ``spec.type`` it
    serves. Registering a name twice is an error unless ``replace=True``. Return nothing.
    """


# --------------------------------------------------------------------------- loading


@hookspec(firstresult=True)
def kproxy_read_object(obj: Mapping[str, Any], report: Report) -> Sequence[Mapping[str, Any]] | None:
    """Read an object as other objects: a kind kproxy-core does not know, or one it knows
    but should see differently.

    Called for every object :func:`kproxy_core.load`, :meth:`kproxy_core.Cluster.from_objects`
    and :meth:`kproxy_core.Engine.apply` read (the object of a watch event), before the core
    looks at it, when some plugin implements this hook. ``obj`` is the manifest as given
    (``apiVersion``, ``kind``, ``metadata``, ...). Return None to leave it alone (the core
    reads it, or skips a kind it does not know), or a list of manifests (possibly empty)
    to read in its place: each is read like an input object, in the same way (added,
    replaced or deleted: a deletion deletes what the replacements name, so the answer must
    depend only on the object, and the same object must always give the same names) and
    is not passed to this hook again. ``report.error(field, message)`` rejects the object
    with one line naming it (``<Kind> <namespace>/<name>: <field>: <message>``);
    ``report.warn`` accepts it with a warning. firstresult: the first plugin that returns
    a list, in the asking order, reads the object. Multi-Cluster Services reads ``ServiceImport`` objects this
    way, as the Service kube-proxy is given for each.
    """


@hookspec
def kproxy_validate_service(service: Service, report: Report) -> None:
    """Check one Service of any type as it is loaded.

    Called for every Service read by :func:`kproxy_core.load`,
    :meth:`kproxy_core.Cluster.from_objects` and :meth:`kproxy_core.Engine.apply`, after the
    core checks and the type handler's own ``validate``. ``service`` is the parsed
    :class:`kproxy_core.model.Service` (``service.spec`` and ``service.annotations`` hold
    the raw fields); ``report.error(field, message)`` rejects the input with one line
    naming the object and the field, ``report.warn(field, message)`` accepts it with a
    warning. Return nothing.
    """


# --------------------------------------------------------------------------- planning


@hookspec(firstresult=True)
def kproxy_endpoint_selector(
    service: Service, port: ServicePort, family: str, node: NodeView | None, cluster: Cluster
) -> Selector | None:
    """Choose how new connections to one service port pick an endpoint.

    Called while the plan is built, once per service port and IP family, and again
    whenever the engine plans that port anew (after an ``apply`` that touches it, for a
    trace or a whole plan): answer the same for the same arguments. ``service`` is the
    :class:`kproxy_core.model.Service`, ``port`` the :class:`kproxy_core.model.ServicePort`
    being planned, ``family`` ``"IPv4"`` or ``"IPv6"``, ``node`` the
    :class:`kproxy_core.plantypes.NodeView` the plan is for (None for an off-cluster
    observer), ``cluster`` the :class:`kproxy_core.model.Cluster` (read Nodes from it: a
    Node change replans every port, another Service's change does not replan this one).
    Return a :class:`kproxy_core.selectors.Selector` (kind ``random``, ``weighted``,
    ``round-robin``, ``source-hash`` or ``maglev``, with its table size and seed), or None
    to leave the choice to the next plugin. firstresult, in the manager's asking order
    (:mod:`kproxy_core.plugins`); the bundled ``annotations`` plugin answers last, from
    the ``kproxy-core.io/selector`` annotation. Nobody answering means kube-proxy's
    uniform random choice. Any other return value is a PluginError naming the plugin.
    """


@hookspec(firstresult=True)
def kproxy_endpoint_weights(
    service: Service,
    port: ServicePort,
    endpoints: Sequence[EndpointInfo],
    family: str,
    node: NodeView | None,
    cluster: Cluster,
) -> Sequence[int] | None:
    """Weigh the endpoints of one service port.

    Called when ``kproxy_endpoint_selector`` is, with the same ``service``, ``port``,
    ``family``, ``node`` and ``cluster``, and every endpoint of the port in kube-proxy's
    order (:class:`kproxy_core.plantypes.EndpointInfo`: ``ip``, ``port``, ``ready``,
    ``serving``, ``terminating``, ``node``, ``zone``, ``local``, ``zone_hints``,
    ``node_hints``, ``target``). Return one integer weight (0 ... 1,000,000) per
    endpoint, in the same order, or None to leave it to the next plugin. Weight 0 takes
    an endpoint out of every pool. firstresult; the bundled ``annotations`` plugin
    answers last, from ``kproxy-core.io/weights``. Weights with the ``random`` selector
    make it ``weighted``. Any other return value is a PluginError naming the plugin.
    """

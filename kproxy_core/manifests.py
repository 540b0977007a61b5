"""Kubernetes manifests in, :class:`~kproxy_core.model.Cluster` out.

Reads what ``kubectl get ... -o yaml|json`` prints (multi-document YAML, JSON streams,
``kind: List`` / ``ServiceList`` wrappers, watch events) and keeps the four kinds
kube-proxy's decisions depend on: ``v1 Service``, ``discovery.k8s.io/v1 EndpointSlice``,
``v1 Node`` and legacy ``v1 Endpoints`` (converted the way the EndpointSlice *mirroring*
controller would). Every other kind is skipped.

Bad input never escapes as a Python exception: every problem becomes one line
``<Kind> <namespace>/<name>: <field path>: <message>`` and all of them are raised
together as one :class:`~kproxy_core.errors.ManifestError`. Accepted oddities (leading
zeros in IPv4 addresses, dropped source ranges, orphan slices, ...) become lines of the
same shape in :attr:`Cluster.warnings <kproxy_core.model.Cluster.warnings>`.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from .addresses import family_of, parse_cidr, parse_ip
from .errors import ManifestError, PluginError
from .model import (
    DEFAULT_AFFINITY_TIMEOUT,
    GONE,
    MAX_AFFINITY_TIMEOUT,
    PROTOCOLS,
    Cluster,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    FrozenMap,
    LoadBalancerIngress,
    Node,
    Service,
    ServicePort,
    build_slice_index,
    frozen,
    install_loader,
    overlay_keys,
)

if TYPE_CHECKING:
    from .plugins import KproxyPluginManager

_K = TypeVar("_K")
_V = TypeVar("_V")

__all__ = [
    "ChangeSet",
    "apply_objects",
    "cluster_from_objects",
    "load",
    "read_objects",
]

_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SKIP_MIRROR_LABEL = "endpointslice.kubernetes.io/skip-mirror"
# resourcelock.LeaderElectionRecordAnnotationKey: such Endpoints are never mirrored.
LEADER_ANNOTATION = "control-plane.alpha.kubernetes.io/leader"
ZONE_LABEL = "topology.kubernetes.io/zone"
HOSTNAME_LABEL = "kubernetes.io/hostname"
LEGACY_ZONE_LABEL = "failure-domain.beta.kubernetes.io/zone"
# kube-controller-manager --mirroring-max-endpoints-per-subset default.
MIRRORING_MAX_ENDPOINTS_PER_SUBSET = 1000
MAX_ADDRESSES_PER_ENDPOINT = 100

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")  # Kubernetes' own
_TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9.-]{0,62}$")
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
IP_FAMILIES = ("IPv4", "IPv6")
TRAFFIC_POLICIES = ("Cluster", "Local")
AFFINITIES = ("None", "ClientIP")
WATCH_EVENTS = ("ADDED", "MODIFIED", "DELETED")

_SLICE_API = "discovery.k8s.io/v1"
_SLICE_API_BETA = "discovery.k8s.io/v1beta1"
_READ_KINDS = {
    ("v1", "Service"),
    (_SLICE_API, "EndpointSlice"),
    ("v1", "Endpoints"),
    ("v1", "Node"),
    ("networking.k8s.io/v1", "ServiceCIDR"),
    ("networking.k8s.io/v1beta1", "ServiceCIDR"),
    ("v1", "Namespace"),
}
_CLUSTER_SCOPED = ("Node", "ServiceCIDR", "Namespace")

_SPACE = re.compile(r"\s*")
# An IPv4 address already in canonical form (no leading zeros): the common case.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_V4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")

ObjectKey = tuple[str, str, str]  # (kind, namespace, name); namespace "" for Nodes


@dataclass(frozen=True)
class ChangeSet:
    """What :func:`apply_objects` changed, so a caller can recompute only that.

    ``services``: every ``(namespace, service-name)`` whose Service, EndpointSlices
    (old and new ``kubernetes.io/service-name`` label) or legacy Endpoints were added,
    replaced by something different, or deleted. ``nodes``: Node names added, changed
    or deleted. ``all``: the change can affect every service (a Node changed).
    """

    services: frozenset[tuple[str, str]] = frozenset()
    nodes: frozenset[str] = frozenset()
    all: bool = False
    service_cidrs: bool = False  # a ServiceCIDR was added, changed or deleted


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building (or parsing) many objects.

    Nothing built here forms reference cycles, so reference counting frees it all;
    but each full collection walks the whole input, which made loading 40k objects
    1.5-2x slower. The previous state is restored afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# --------------------------------------------------------------------------- reading


def read_objects(*sources: Any) -> list[tuple[str, dict[str, Any]]]:
    """Read manifests; return ``(origin, object)`` pairs in input order.

    A source is a path (a file, or a directory searched recursively for ``*.yaml``,
    ``*.yml`` and ``*.json`` in sorted order), ``"-"`` for standard input, a mapping
    (one object), or an iterable of mappings and paths (``load(["a.yaml", "b.yaml"])``
    reads like ``load("a.yaml", "b.yaml")``). ``kind: List`` and every ``kind: *List``
    are flattened into their ``items``; empty documents are skipped. ``origin`` names
    the document (``cluster.yaml#3``, ``cluster.yaml#0.items[2]``, ``<stdin>#0``,
    ``<dict 0>``). Unreadable files, syntax errors and documents that are not mappings
    are collected and raised as one :class:`ManifestError`.
    """
    with _gc_paused():
        return _read_objects(sources)


def _read_objects(sources: tuple[Any, ...]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    problems: list[str] = []
    counter = 0
    for src in sources:
        if isinstance(src, Mapping):
            _flatten(f"<dict {counter}>", src, out, problems)
            counter += 1
        elif isinstance(src, str | os.PathLike):
            if isinstance(src, str) and src == "-":
                _read_stdin(out, problems)
            else:
                _read_path(Path(src), str(src), out, problems)
        elif isinstance(src, Iterable) and not isinstance(src, bytes | bytearray):
            for item in src:
                if isinstance(item, str | os.PathLike):  # a list of paths: load(["a.yaml", "b.yaml"])
                    if isinstance(item, str) and item == "-":
                        _read_stdin(out, problems)
                    else:
                        _read_path(Path(item), str(item), out, problems)
                    continue
                _flatten(f"<dict {counter}>", item, out, problems)
                counter += 1
        else:
            problems.append(f"{_q(src)}: not a path, a mapping or an iterable of mappings ({type(src).__name__})")
    if problems:
        raise ManifestError(problems)
    return out


def _read_path(path: Path, name: str, out: list[tuple[str, dict[str, Any]]], problems: list[str]) -> None:
    if not name.strip():
        # Path("") is the current directory: never walk it by accident
        problems.append(f"{_q(name)}: an empty path (give a file, a directory, or - for standard input)")
        return
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.name.lower().endswith(_MANIFEST_SUFFIXES) and p.is_file())
        for p in files:
            _read_file(p, str(p), out, problems)
    else:
        _read_file(path, name, out, problems)


def _read_file(path: Path, name: str, out: list[tuple[str, dict[str, Any]]], problems: list[str]) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        problems.append(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})")
        return
    except OSError as e:
        problems.append(f"{name}: {e.strerror or e}")
        return
    if name.lower().endswith(".json"):
        _parse_json(name, text, out, problems)
    else:
        _parse_yaml(name, text, out, problems)


def _read_stdin(out: list[tuple[str, dict[str, Any]]], problems: list[str]) -> None:
    try:
        text = sys.stdin.read()
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"<stdin>: {e}")
        return
    if text.lstrip()[:1] in ("{", "["):
        # Probably JSON (kubectl -o json, watch event streams); YAML if that fails.
        json_out: list[tuple[str, dict[str, Any]]] = []
        json_problems: list[str] = []
        _parse_json("<stdin>", text, json_out, json_problems)
        if not json_problems:
            out.extend(json_out)
            return
    _parse_yaml("<stdin>", text, out, problems)


def _parse_yaml(name: str, text: str, out: list[tuple[str, dict[str, Any]]], problems: list[str]) -> None:
    try:
        for i, doc in enumerate(yaml.load_all(text, Loader=_YAML_LOADER)):
            _flatten(f"{name}#{i}", doc, out, problems)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problems.append(f"{name}: {where}{e.problem or e.context or 'invalid YAML'}")
    except (yaml.YAMLError, RecursionError) as e:
        problems.append(f"{name}: {' '.join(str(e).split())}")  # a ReaderError's text spans lines


def _parse_json(name: str, text: str, out: list[tuple[str, dict[str, Any]]], problems: list[str]) -> None:
    """A JSON file, or a stream of concatenated values (``kubectl get -w -o json``)."""
    decoder = json.JSONDecoder()
    pos, i, end = 0, 0, len(text)
    while True:
        m = _SPACE.match(text, pos)
        pos = m.end() if m else pos
        if pos >= end:
            return
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            problems.append(f"{name}: line {e.lineno}: {e.msg}")
            return
        except RecursionError:
            problems.append(f"{name}: nested too deeply")
            return
        _flatten(f"{name}#{i}", doc, out, problems)
        i += 1


def _flatten(origin: str, doc: Any, out: list[tuple[str, dict[str, Any]]], problems: list[str]) -> None:
    if doc is None:
        return
    if type(doc) is not dict and not isinstance(doc, Mapping):
        problems.append(f"{origin}: the document is {_what(doc)}, not a mapping")
        return
    kind = doc.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and "items" in doc:
        items = doc["items"]
        if items is None:
            return
        if not isinstance(items, list):
            problems.append(f"{origin}: items: must be a list, not {_what(items)}")
            return
        # A typed list (ServiceList, NodeList, ...) as the API server returns it: the items
        # carry no apiVersion/kind. Like apimachinery's unstructured list decoding, an item
        # with neither gets the list's apiVersion and its kind minus "List".
        item_kind = kind[: -len("List")]
        list_api = doc.get("apiVersion")
        for j, item in enumerate(items):
            if (
                item_kind
                and isinstance(item, Mapping)
                and not item.get("kind")
                and not item.get("apiVersion")
                and "object" not in item
            ):
                item = {"apiVersion": list_api, "kind": item_kind, **item}
            _flatten(f"{origin}.items[{j}]", item, out, problems)
        return
    out.append((origin, doc if type(doc) is dict else dict(doc)))


# --------------------------------------------------------------------------- building


def load(*sources: Any, plugins: KproxyPluginManager | None = None) -> Cluster:
    """:func:`read_objects` then :func:`cluster_from_objects`."""
    return cluster_from_objects(read_objects(*sources), plugins=plugins)


def cluster_from_objects(objects: Any, plugins: KproxyPluginManager | None = None) -> Cluster:
    """Build a validated :class:`Cluster` from objects (dicts or ``(origin, dict)`` pairs).

    ``plugins``: the plugin manager whose Service types and ``kproxy_validate_service``
    hooks check the Services (default: :func:`kproxy_core.plugins.get_plugin_manager`).
    """
    with _gc_paused():
        return _apply_objects(Cluster(), objects, False, plugins)[0]


install_loader(cluster_from_objects)


def apply_objects(
    base: Cluster, objects: Any, plugins: KproxyPluginManager | None = None
) -> tuple[Cluster, ChangeSet]:
    """Apply objects and watch events to ``base``; return the new cluster and what changed.

    ``objects``: dicts or ``(origin, dict)`` pairs. A plain object adds or replaces the
    object of the same kind, namespace and name; a watch event
    ``{"type": "ADDED"|"MODIFIED"|"DELETED", "object": {...}}`` (as
    ``kubectl get -w -o json --output-watch-events`` prints it) adds, replaces or
    removes it (removing something absent does nothing). The cross-object checks run
    on the merged cluster. ``base`` is not modified. Raises :class:`ManifestError`
    listing every problem.
    """
    with _gc_paused():
        return _apply_objects(base, objects, True, plugins)


def _apply_objects(
    base: Cluster, objects: Any, want_changes: bool, plugins: KproxyPluginManager | None
) -> tuple[Cluster, ChangeSet]:
    if plugins is None:
        from .plugins import get_plugin_manager

        plugins = get_plugin_manager()
    pairs, problems = _pairs(objects)
    b = _Builder(base, plugins)
    for origin, obj in pairs:
        b.feed(origin, obj, problems)
    incremental = bool(base.services or base.slices)
    if incremental:
        cross_errors, ip_index, np_index = _index_check(base, b)
    else:
        cross_errors, ip_index, np_index = _full_index_check(b.services)
    problems.extend(cross_errors)
    if problems:
        raise ManifestError(problems)
    slices = b.slices.result()
    slice_index = _slice_index(base, b, slices)

    # Warnings: the base's, minus those of objects touched here and minus the orphan-slice
    # warnings of the slices whose Service may have come or gone (recomputed), then this
    # input's in input order.
    affected = _orphan_candidates(base, b, slice_index) if incremental else None
    cross_warnings = _orphans(b.services, slices, affected)
    warnings: list[str] = []
    if base.warnings:
        touched_prefixes = {_who(*key) for key in b.touched}
        stale = set(_orphans(base.services, base.slices, affected))
        warnings = [w for w in base.warnings if w not in stale and _who_of(w) not in touched_prefixes]
    for ws in b.object_warnings.values():
        warnings.extend(ws)
    warnings.extend(cross_warnings)
    if b.read_beta_slices:
        warnings.append(BETA_SLICE_NOTE)

    cluster = Cluster(
        services=b.services.result(),
        slices=slices,
        nodes=b.nodes.result(),
        warnings=tuple(dict.fromkeys(warnings)),
        legacy_endpoints=b.legacy.result(),
        service_cidrs=b.service_cidrs.result(),
        namespaces=b.namespace_set(),
        slice_index=slice_index,
        ip_index=ip_index,
        nodeport_index=np_index,
        plugins=plugins,
    )
    return cluster, b.changes(base) if want_changes else ChangeSet()


def _pairs(objects: Any) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    out: list[tuple[str, dict[str, Any]]] = []
    problems: list[str] = []
    if isinstance(objects, Mapping):
        objects = [objects]
    elif not isinstance(objects, Iterable) or isinstance(objects, str | bytes):
        raise ManifestError(f"{_q(objects)}: not an iterable of objects")
    for i, item in enumerate(objects):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            _flatten(item[0], item[1], out, problems)
        else:
            _flatten(f"<dict {i}>", item, out, problems)
    return out, problems


def _who_of(warning: str) -> str:
    """The object a warning names (an object a plugin read as others names the original)."""
    return warning.partition(": ")[0].partition(" (read as ")[0]


def _who(kind: str, namespace: str, name: str) -> str:
    # a name with a line break or another control character is quoted: an error stays one line
    if not name.isprintable():
        name = _q(name)
    if not namespace.isprintable():
        namespace = _q(namespace)
    return f"{kind} {name}" if kind in _CLUSTER_SCOPED else f"{kind} {namespace}/{name}"


class _Ctx:
    """Collects the problems of one object, each prefixed with ``<Kind> ns/name``."""

    __slots__ = ("errors", "warnings", "who")

    def __init__(self, who: str) -> None:
        self.who = who
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, path: str, msg: str) -> None:
        self.errors.append(f"{self.who}: {path}: {msg}")

    def warn(self, path: str, msg: str) -> None:
        self.warnings.append(f"{self.who}: {path}: {msg}")


class _Builder:
    """Mutable copies of the base cluster's tables while objects are applied."""

    def __init__(self, base: Cluster, plugins: KproxyPluginManager) -> None:
        self.plugins = plugins
        self.services: _Edit[tuple[str, str], Service] = _Edit(base.services)
        self.slices: _Edit[tuple[str, str], EndpointSlice] = _Edit(base.slices)
        self.legacy: _Edit[tuple[str, str], tuple[EndpointSlice, ...]] = _Edit(base.legacy_endpoints)
        self.nodes: _Edit[str, Node] = _Edit(base.nodes)
        self.service_cidrs: _Edit[str, tuple[str, ...]] = _Edit(base.service_cidrs)
        self._base_namespaces = base.namespaces
        self._namespaces: set[str] | None = None  # a copy, once a Namespace is touched
        self.touched: set[ObjectKey] = set()
        self.object_warnings: dict[Any, list[str]] = {}
        self._plain_seen: set[ObjectKey] = set()
        # plugins that read objects as other objects (kproxy_read_object): asked only if any
        self._readers = bool(plugins.hook.kproxy_read_object.get_hookimpls())
        self.read_beta_slices = False  # a discovery.k8s.io/v1beta1 EndpointSlice was read

    def feed(self, origin: str, obj: Mapping[str, Any], problems: list[str]) -> None:
        deleting = False
        is_event = "kind" not in obj and "object" in obj and "type" in obj
        if is_event:
            etype = obj.get("type")
            if etype == "BOOKMARK":
                return
            if etype == "ERROR":
                status = obj.get("object")
                msg = status.get("message") if isinstance(status, Mapping) else None
                problems.append(f"{origin}: watch ERROR event: {_q(msg or status)}")
                return
            if not isinstance(etype, str) or etype not in WATCH_EVENTS:
                problems.append(f"{origin}: type: {_q(etype)} is not a watch event type (ADDED, MODIFIED or DELETED)")
                return
            inner = obj.get("object")
            if type(inner) is not dict and not isinstance(inner, Mapping):
                problems.append(f"{origin}: object: must be a mapping, not {_what(inner)}")
                return
            obj = inner
            deleting = etype == "DELETED"

        self._read(origin, obj, deleting, is_event, problems, None)

    def _read(self, origin: str, obj: Mapping[str, Any], deleting: bool, is_event: bool, problems: list[str],
              via: str | None) -> None:
        """One object (a watch event's, or a plugin's replacement of one: ``via`` names the
        object it replaces)."""
        ident = _identify(origin, obj, problems, any_kind=self._readers and via is None)
        if ident is None:
            return
        api, kind, namespace, name, meta = ident
        if self._readers and via is None and self._read_by_plugin(origin, obj, deleting, is_event, problems, ident):
            return
        if kind == "EndpointSlice" and api == _SLICE_API_BETA:
            obj = _slice_from_v1beta1(obj)
            api = _SLICE_API
            self.read_beta_slices = True
        if (api, kind) not in _READ_KINDS:
            return
        key: ObjectKey = (kind, namespace, name)
        self.touched.add(key)
        self.object_warnings.pop(key, None)
        if deleting:
            self._delete(key)
            return

        ctx = _Ctx(_who(*key) if via is None else f"{via} (read as {_who(*key)})")
        if not is_event and via is None:
            if key in self._plain_seen:
                ctx.warnings.append(f"{ctx.who}: appears more than once in the input; the last one wins")
            self._plain_seen.add(key)
        labels = _str_map(ctx, meta.get("labels"), "metadata.labels")
        annotations = _str_map(ctx, meta.get("annotations"), "metadata.annotations")
        nk = (namespace, name)
        if kind == "Service":
            svc = _parse_service(ctx, namespace, name, obj, labels, annotations)
            if not ctx.errors:
                _plugin_checks(ctx, svc, self.plugins)
            if not ctx.errors:
                self.services[nk] = svc
        elif kind == "EndpointSlice":
            eps = _parse_slice(ctx, namespace, name, obj, labels)
            if not ctx.errors:
                self.slices[nk] = eps
        elif kind == "Endpoints":
            mirrored = _parse_endpoints(ctx, namespace, name, obj, labels, annotations)
            if not ctx.errors:
                if mirrored:
                    self.legacy[nk] = mirrored
                else:
                    self.legacy.pop(nk, None)
        elif kind == "ServiceCIDR":
            cidrs = _parse_service_cidr(ctx, obj)
            if not ctx.errors:
                self.service_cidrs[name] = cidrs
        elif kind == "Namespace":
            self.namespaces.add(name)  # only its existence matters (cluster DNS)
        else:
            node = _parse_node(ctx, name, obj, labels)
            if not ctx.errors:
                self.nodes[name] = node
        problems.extend(ctx.errors)
        self.object_warnings[key] = ctx.warnings

    def _read_by_plugin(self, origin: str, obj: Mapping[str, Any], deleting: bool, is_event: bool,
                        problems: list[str], ident: tuple[str, str, str, str, Mapping[str, Any]]) -> bool:
        """Offer the object to ``kproxy_read_object``; True when a plugin read it (its
        replacements are read instead)."""
        _, kind, namespace, name, _ = ident
        key: ObjectKey = (kind, namespace, name)
        ctx = _Ctx(_who(*key))
        got = self.plugins.call_hook("kproxy_read_object", context=ctx.who, obj=obj, report=ctx)
        if got is None and not ctx.errors and not ctx.warnings:
            return False
        self.touched.add(key)
        self.object_warnings[key] = [] if deleting else ctx.warnings
        if ctx.errors and not deleting:
            problems.extend(ctx.errors)
            return True
        if got is None:
            return False
        if isinstance(got, Mapping) or not isinstance(got, Iterable) or not all(isinstance(o, Mapping) for o in got):
            raise PluginError(f"plugin hook kproxy_read_object: {ctx.who}: returned {_what(got)}, "
                              "not a list of objects (or None)")
        for replacement in got:
            self._read(origin, replacement, deleting, is_event, problems, ctx.who)
        return True

    @property
    def namespaces(self) -> set[str]:
        if self._namespaces is None:
            self._namespaces = set(self._base_namespaces)
        return self._namespaces

    def namespace_set(self) -> frozenset[str]:
        return self._base_namespaces if self._namespaces is None else frozenset(self._namespaces)

    def _delete(self, key: ObjectKey) -> None:
        kind, namespace, name = key
        if kind == "Service":
            self.services.pop((namespace, name), None)
        elif kind == "EndpointSlice":
            self.slices.pop((namespace, name), None)
        elif kind == "Endpoints":
            self.legacy.pop((namespace, name), None)
        elif kind == "ServiceCIDR":
            self.service_cidrs.pop(name, None)
        elif kind == "Namespace":
            self.namespaces.discard(name)
        else:
            self.nodes.pop(name, None)

    def changes(self, base: Cluster) -> ChangeSet:
        services: set[tuple[str, str]] = set()
        nodes: set[str] = set()
        cidrs = False
        for kind, namespace, name in self.touched:
            nk = (namespace, name)
            if kind == "Service":
                old_svc, new_svc = base.services.get(nk), self.services.get(nk)
                if old_svc != new_svc or (old_svc is not None and new_svc is not None and old_svc.spec != new_svc.spec):
                    services.add(nk)
            elif kind == "EndpointSlice":
                old, new = base.slices.get(nk), self.slices.get(nk)
                if old != new:
                    for s in (old, new):
                        if s is not None and s.service_name:
                            services.add((namespace, s.service_name))
            elif kind == "Endpoints":
                if base.legacy_endpoints.get(nk) != self.legacy.get(nk):
                    services.add(nk)
            elif kind == "ServiceCIDR":
                cidrs = cidrs or base.service_cidrs.get(name) != self.service_cidrs.get(name)
            elif kind == "Namespace":
                continue  # no lookup depends on it (DNS does)
            elif kind == "Node" and base.nodes.get(name) != self.nodes.get(name):
                nodes.add(name)
            # any other kind was read by a plugin as the objects above (also touched)
        return ChangeSet(frozenset(services), frozenset(nodes), bool(nodes), cidrs)


BETA_SLICE_NOTE = (
    f"EndpointSlice: apiVersion {_SLICE_API_BETA} is read as the API server converts it to {_SLICE_API}: "
    'each endpoint\'s topology["topology.kubernetes.io/zone"] becomes its zone, and without a nodeName '
    'its topology["kubernetes.io/hostname"] becomes the nodeName (where kube-proxy looked before that field existed)'
)


def _slice_from_v1beta1(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """A ``discovery.k8s.io/v1beta1`` EndpointSlice in its v1 form.

    The two versions differ only in where an endpoint's node and zone live. The API
    server's conversion (pkg/apis/discovery/v1beta1/conversion.go) moves
    ``topology["topology.kubernetes.io/zone"]`` into ``zone`` and keeps ``nodeName``;
    slices written before the ``nodeName`` field existed (Kubernetes 1.19/1.20) name the
    node only as ``topology["kubernetes.io/hostname"]``, which kube-proxy then read for
    locality, so that value becomes ``nodeName`` when the field is absent. Anything
    malformed is left as it is, for the v1 checks to report.
    """
    endpoints = obj.get("endpoints")
    if type(endpoints) is not list:
        return obj
    converted: list[Any] = []
    for e in endpoints:
        topology = e.get("topology") if isinstance(e, Mapping) else None
        if isinstance(e, Mapping) and isinstance(topology, Mapping):
            e = dict(e)
            zone = topology.get(ZONE_LABEL)
            if e.get("zone") is None and zone is not None:
                e["zone"] = zone
            host = topology.get(HOSTNAME_LABEL)
            if e.get("nodeName") is None and host is not None:
                e["nodeName"] = host
        converted.append(e)
    return {**obj, "endpoints": converted}


def _identify(
    origin: str, obj: Mapping[str, Any], problems: list[str], any_kind: bool = False
) -> tuple[str, str, str, str, Mapping[str, Any]] | None:
    """``(apiVersion, kind, namespace, name, metadata)``, or None (skip / error). A kind the
    core does not read is skipped, unless ``any_kind`` (a plugin may read it): then it is
    identified too, and skipped quietly if it cannot be."""
    kind, api = obj.get("kind"), obj.get("apiVersion")
    bad = False
    for field, value in (("apiVersion", api), ("kind", kind)):
        if value is None or value == "":
            problems.append(f"{origin}: {field}: required")
            bad = True
        elif not isinstance(value, str):
            problems.append(f"{origin}: {field}: {_q(value)} must be a string")
            bad = True
    if bad:
        return None
    assert isinstance(kind, str) and isinstance(api, str)
    if (api, kind) not in _READ_KINDS and not (kind == "EndpointSlice" and api == _SLICE_API_BETA):
        if not any_kind:
            return None
        problems = []  # not the core's kind: nothing to say about its metadata
    who = f"{kind} at {origin}"
    meta = obj.get("metadata")
    if type(meta) is not dict and not isinstance(meta, Mapping):
        if meta is None:
            problems.append(f"{who}: metadata.name: required")
        else:
            problems.append(f"{who}: metadata: must be a mapping, not {_what(meta)}")
        return None
    name = meta.get("name")
    if name is None or name == "":
        problems.append(f"{who}: metadata.name: required")
        return None
    if not isinstance(name, str):
        problems.append(f"{who}: metadata.name: {_q(name)} must be a string")
        return None
    if not _OBJECT_NAME.fullmatch(name):  # a newline or quote here broke the rule text (fuzzing)
        problems.append(f"{who}: metadata.name: {_q(name)} is not an object name (DNS subdomain: "
                        "letters, digits, '-' and '.', at most 253)")
        return None
    namespace = ""
    if kind not in _CLUSTER_SCOPED:
        ns = meta.get("namespace")
        if ns is None or ns == "":
            namespace = "default"
        elif isinstance(ns, str):
            namespace = ns
        else:
            problems.append(f"{kind} at {origin}: metadata.namespace: {_q(ns)} must be a string")
            return None
        if not _OBJECT_NAME.fullmatch(namespace):
            problems.append(f"{kind} at {origin}: metadata.namespace: {_q(namespace)} is not a namespace name "
                            "(letters, digits, '-' and '.', at most 253)")
            return None
    return api, kind, namespace, name, meta


# Kubernetes object names are DNS subdomains (lower case; upper case and '_' are let through
# here, as before): never whitespace, quotes, slashes or control characters, which would
# end up inside rule comments and DNS names
_OBJECT_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9_])?", re.ASCII)


# --------------------------------------------------------------------------- Service


def _parse_service(
    ctx: _Ctx,
    namespace: str,
    name: str,
    obj: Mapping[str, Any],
    labels: dict[str, str],
    annotations: dict[str, str],
) -> Service:
    # Absent optional fields are common: each is tested inline before any helper call.
    spec = obj.get("spec")
    if type(spec) is not dict:
        spec = _mapping(ctx, spec, "spec") or {}
    get = spec.get
    stype = get("type")
    if stype is None or (type(stype) is str and stype in SERVICE_TYPES):
        stype = stype or "ClusterIP"
    elif type(stype) is not str or not _TYPE_NAME.match(stype):
        stype = _choice(ctx, stype, "spec.type", SERVICE_TYPES, "ClusterIP")
    # any other name: a plugin's type, checked against the registry by _plugin_checks

    headless, cluster_ips, cluster_families = _cluster_ips(ctx, get("clusterIP"), get("clusterIPs"))
    ip_families: list[str] = []
    fam_list = get("ipFamilies")
    if fam_list is not None:
        ip_families = _ip_families(ctx, fam_list, headless, cluster_ips, cluster_families)

    ports = _service_ports(ctx, get("ports"), stype)

    external_ips: list[str] = []
    v = get("externalIPs")
    if v is not None:
        for i, value in enumerate(_list(ctx, v, "spec.externalIPs")):
            ip = _ip(ctx, value, f"spec.externalIPs[{i}]")
            if ip is not None:
                external_ips.append(ip)

    etp = get("externalTrafficPolicy")
    if etp is None or etp == "Cluster" or etp == "Local":
        etp = etp or "Cluster"
    else:
        etp = _choice(ctx, etp, "spec.externalTrafficPolicy", TRAFFIC_POLICIES, "Cluster")
    itp = get("internalTrafficPolicy")
    if itp is None or itp == "Cluster" or itp == "Local":
        itp = itp or "Cluster"
    else:
        itp = _choice(ctx, itp, "spec.internalTrafficPolicy", TRAFFIC_POLICIES, "Cluster")
    affinity = get("sessionAffinity")
    if affinity is None or affinity == "None" or affinity == "ClientIP":
        affinity = affinity or "None"
    else:
        affinity = _choice(ctx, affinity, "spec.sessionAffinity", AFFINITIES, "None")
    timeout = DEFAULT_AFFINITY_TIMEOUT
    v = get("sessionAffinityConfig")
    if v is not None:
        timeout = _affinity_timeout(ctx, v)

    hcnp = get("healthCheckNodePort")
    if hcnp is None:
        hcnp = 0
    elif not (_is_int(hcnp) and 0 <= hcnp <= 65535):
        ctx.error("spec.healthCheckNodePort", f"{_q(hcnp)} is not a valid port")
        hcnp = 0
    allocate = get("allocateLoadBalancerNodePorts")
    if type(allocate) is not bool:
        allocate = _bool(ctx, allocate, "spec.allocateLoadBalancerNodePorts", True)

    source_ranges: tuple[str, ...] = ()
    v = get("loadBalancerSourceRanges")
    if v is not None:
        source_ranges = _source_ranges(ctx, v)

    ingress: tuple[LoadBalancerIngress, ...] = ()
    status = obj.get("status")
    if status is not None:
        ingress = _lb_ingress(ctx, status)

    selector = get("selector")
    if selector is not None:
        selector = _str_map(ctx, selector, "spec.selector")
    external_name = get("externalName")
    if type(external_name) is not str:
        external_name = _str(ctx, external_name, "spec.externalName")

    return Service(
        namespace=namespace,
        name=name,
        type=stype,
        cluster_ips=cluster_ips,
        ip_families=tuple(ip_families),
        headless=headless,
        ports=ports,
        external_ips=tuple(external_ips),
        external_traffic_policy=etp,
        internal_traffic_policy=itp,
        session_affinity=affinity,
        affinity_timeout=timeout,
        health_check_node_port=hcnp,
        load_balancer_ingress=ingress,
        load_balancer_source_ranges=source_ranges,
        allocate_load_balancer_node_ports=allocate,
        external_name=external_name,
        selector=selector or None,
        labels=labels,
        annotations=annotations,
        spec=spec,
    )


def _plugin_checks(ctx: _Ctx, svc: Service, plugins: KproxyPluginManager) -> None:
    """The Service type must be registered; its handler and the ``kproxy_validate_service``
    hooks check the rest."""
    registry = plugins.registry
    handler = registry.get(svc.type)
    if handler is None:
        known = ", ".join(registry.names())
        ctx.error("spec.type", f"{_q(svc.type)} is not a known Service type ({known}; plugins add others)")
        return
    if not handler.node_ports and svc.type not in SERVICE_TYPES:
        for i, sp in enumerate(svc.ports):
            if sp.node_port:
                ctx.error(f"spec.ports[{i}].nodePort", f"may not be used when type is {_q(svc.type)}")
    registry.call(svc.type, "validate", svc, ctx)
    plugins.call_hook("kproxy_validate_service", context=f"Service {svc.ref}", service=svc, report=ctx)


def _cluster_ips(ctx: _Ctx, cip_raw: Any, cips_raw: Any) -> tuple[bool, tuple[str, ...], list[str]]:
    """``(headless, canonical clusterIPs, their families)``.

    An entry equal to spec.clusterIP is reported under that name, once.
    """
    cip = cip_raw if type(cip_raw) is str else _str(ctx, cip_raw, "spec.clusterIP")
    if cips_raw is None and cip and cip != "None":
        ip = _ip(ctx, cip, "spec.clusterIP")  # the common case
        if ip is None:
            return False, (), []
        return False, (ip,), ["IPv6" if ":" in ip else "IPv4"]
    cips = _list(ctx, cips_raw, "spec.clusterIPs")
    entries: list[tuple[str, Any]] = [(f"spec.clusterIPs[{i}]", v) for i, v in enumerate(cips)]
    if entries:
        if cip and cips[0] != cip:
            ctx.error("spec.clusterIPs[0]", f"{_q(cips[0])} must match spec.clusterIP ({_q(cip)})")
        elif cip:
            entries[0] = ("spec.clusterIP", cip)
    elif cip:
        entries = [("spec.clusterIP", cip)]
    if not entries or entries[0][1] == "None":
        if len(entries) > 1:
            ctx.error("spec.clusterIPs", '"None" must be the only entry of a headless service')
        return True, (), []
    if len(entries) > 2:
        ctx.error("spec.clusterIPs", f"must have at most 2 entries, not {len(entries)}")
    ips: list[str] = []
    families: list[str] = []
    for i, (path, value) in enumerate(entries):
        ip = _ip(ctx, value, path)
        if ip is None:
            continue
        fam = "IPv6" if ":" in ip else "IPv4"
        if fam in families and len(entries) == 2:
            ctx.error(f"spec.clusterIPs[{i}]", "may specify no more than one IP for each IP family")
        ips.append(ip)
        families.append(fam)
    if len(ips) != len(entries):
        families = []  # an invalid entry: no family matching below
    return False, tuple(ips), families


def _ip_families(
    ctx: _Ctx, raw: Any, headless: bool, cluster_ips: tuple[str, ...], cluster_families: list[str]
) -> list[str]:
    fam_list = _list(ctx, raw, "spec.ipFamilies")
    ip_families: list[str] = []
    if len(fam_list) > 2:
        ctx.error("spec.ipFamilies", f"must have at most 2 entries, not {len(fam_list)}")
    for i, fam in enumerate(fam_list):
        if type(fam) is not str or fam not in IP_FAMILIES:
            ctx.error(f"spec.ipFamilies[{i}]", f"{_q(fam)} is not supported (IPv4 or IPv6)")
        elif fam in ip_families:
            ctx.error(f"spec.ipFamilies[{i}]", f"duplicate IP family {_q(fam)}")
        else:
            ip_families.append(fam)
    if not headless and len(ip_families) == len(fam_list) and cluster_families:
        for i, (fam, cfam) in enumerate(zip(ip_families, cluster_families, strict=False)):
            if fam != cfam:
                ctx.error(
                    f"spec.ipFamilies[{i}]",
                    f"{_q(fam)} does not match the family of spec.clusterIPs[{i}] ({cfam})",
                )
    return ip_families


def _affinity_timeout(ctx: _Ctx, raw: Any) -> int:
    sac = _mapping(ctx, raw, "spec.sessionAffinityConfig")
    if sac:
        cfg = _mapping(ctx, sac.get("clientIP"), "spec.sessionAffinityConfig.clientIP")
        if cfg:
            value = cfg.get("timeoutSeconds")
            if value is not None:
                if _is_int(value) and 1 <= value <= MAX_AFFINITY_TIMEOUT:
                    return int(value)
                ctx.error(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    f"{_q(value)} must be an integer between 1 and {MAX_AFFINITY_TIMEOUT}",
                )
    return DEFAULT_AFFINITY_TIMEOUT


def _source_ranges(ctx: _Ctx, raw: Any) -> tuple[str, ...]:
    """Like kube-proxy: trimmed, parsed sloppily, canonical; invalid ones dropped."""
    out: list[str] = []
    for i, value in enumerate(_list(ctx, raw, "spec.loadBalancerSourceRanges")):
        path = f"spec.loadBalancerSourceRanges[{i}]"
        if type(value) is not str:
            ctx.error(path, f"{_q(value)} must be a string")
            continue
        net, sloppy = parse_cidr(value.strip())
        if net is None:
            ctx.warn(path, f"{_q(value)} is not a valid CIDR; kube-proxy drops it")
            continue
        text = str(net)
        if sloppy:
            ctx.warn(path, _sloppy_msg(value, text))
        out.append(text)
    return tuple(out)


def _service_ports(ctx: _Ctx, raw_ports: Any, stype: str) -> tuple[ServicePort, ...]:
    raw = _list(ctx, raw_ports, "spec.ports")
    multi = len(raw) > 1
    names: dict[str, int] = {}
    numbers: dict[tuple[int, str], int] = {}
    ports: list[ServicePort] = []
    for i, p in enumerate(raw):
        if type(p) is not dict and not isinstance(p, Mapping):
            ctx.error(f"spec.ports[{i}]", f"must be a mapping, not {_what(p)}")
            continue
        name = p.get("name")
        if type(name) is not str:
            name = _str(ctx, name, f"spec.ports[{i}].name")
        if name and not _OBJECT_NAME.fullmatch(name):  # it goes into rule comments (fuzzing: a newline did)
            ctx.error(f"spec.ports[{i}].name", f"{_q(name)} is not a port name (letters, digits and '-')")
        if name:
            other = names.setdefault(name, i)
            if other != i:
                ctx.error(
                    f"spec.ports[{i}].name",
                    f"duplicate port name {_q(name)} (also spec.ports[{other}])",
                )
        elif multi:
            ctx.error(f"spec.ports[{i}].name", "required when there is more than one port")
        protocol = p.get("protocol")
        if protocol is None:
            protocol = "TCP"
        elif type(protocol) is not str or protocol not in PROTOCOLS:
            protocol = _protocol(ctx, protocol, f"spec.ports[{i}].protocol")
        port = p.get("port")
        if type(port) is int and 0 < port < 65536:
            other = numbers.setdefault((port, protocol), i)
            if other != i:
                ctx.error(f"spec.ports[{i}]", f"duplicate port {port}/{protocol} (also spec.ports[{other}])")
        else:
            if port is None:
                ctx.error(f"spec.ports[{i}].port", "required")
            else:
                ctx.error(f"spec.ports[{i}].port", f"{_q(port)} is not a valid port")
            port = 0
        node_port = p.get("nodePort")
        if node_port is None or (type(node_port) is int and node_port == 0):
            node_port = 0
        elif not _is_port(node_port):
            ctx.error(f"spec.ports[{i}].nodePort", f"{_q(node_port)} is not a valid port")
            node_port = 0
        elif stype in ("ClusterIP", "ExternalName"):
            ctx.error(f"spec.ports[{i}].nodePort", f"may not be used when type is {stype!r}")
        target = p.get("targetPort")
        # 0 and "" are what the API server's defaulting replaces by spec.ports[].port
        if target is None or (type(target) is int and 0 <= target < 65536):
            pass
        elif type(target) is str:
            if target and (len(target) > 15 or not _IANA_SVC_NAME.fullmatch(target)):
                ctx.error(f"spec.ports[{i}].targetPort", f"{_q(target)} is not a valid port name ({_IANA_RULE})")
                target = None
        elif type(target) is int:
            ctx.error(f"spec.ports[{i}].targetPort", f"{_q(target)} is not a valid port")
            target = None
        else:
            ctx.error(f"spec.ports[{i}].targetPort", f"{_q(target)} must be an integer or a string")
            target = None
        ports.append(ServicePort(name, protocol, port, node_port, target))
    return tuple(ports)


# validation.IsValidPortName, the named form of a targetPort (IANA_SVC_NAME, RFC 6335): no
# '-' at either end and no "--", at least one letter; at most 15 characters (checked apart)
_IANA_SVC_NAME = re.compile(r"(?=[a-z0-9-]*[a-z])[a-z0-9](?:-?[a-z0-9])*", re.ASCII)
_IANA_RULE = "at most 15 of a-z, 0-9 and '-', with a letter, no '-' at either end or twice in a row"


def _lb_ingress(ctx: _Ctx, raw_status: Any) -> tuple[LoadBalancerIngress, ...]:
    status = _mapping(ctx, raw_status, "status")
    if not status:
        return ()
    lb = _mapping(ctx, status.get("loadBalancer"), "status.loadBalancer")
    if not lb:
        return ()
    out: list[LoadBalancerIngress] = []
    for i, entry in enumerate(_list(ctx, lb.get("ingress"), "status.loadBalancer.ingress")):
        path = f"status.loadBalancer.ingress[{i}]"
        m = _entry(ctx, entry, path)
        if m is None:
            continue
        hostname = _str(ctx, m.get("hostname"), f"{path}.hostname")
        ip_mode = _opt_str(ctx, m.get("ipMode"), f"{path}.ipMode")
        raw_ip = m.get("ip")
        ip = ""
        if raw_ip is not None and raw_ip != "":
            if not isinstance(raw_ip, str):
                ctx.error(f"{path}.ip", f"{_q(raw_ip)} must be a string")
                continue
            addr, sloppy = parse_ip(raw_ip)
            if addr is None:
                ctx.warn(f"{path}.ip", f"{_q(raw_ip)} is not a valid IP address; kube-proxy skips it")
                continue
            ip = str(addr)
            if sloppy:
                ctx.warn(f"{path}.ip", _sloppy_msg(raw_ip, ip))
        out.append(LoadBalancerIngress(ip=ip, hostname=hostname, ip_mode=ip_mode))
    return tuple(out)


# --------------------------------------------------------------------------- EndpointSlice


def _parse_slice(ctx: _Ctx, namespace: str, name: str, obj: Mapping[str, Any], labels: dict[str, str]) -> EndpointSlice:
    address_type = obj.get("addressType")
    if address_type is None or address_type == "":
        ctx.error("addressType", "required (IPv4, IPv6 or FQDN)")
        address_type = ""
    elif not isinstance(address_type, str) or address_type not in ADDRESS_TYPES:
        ctx.error("addressType", f"{_q(address_type)} is not supported (IPv4, IPv6 or FQDN)")
        address_type = ""
    service_name = labels.get(SERVICE_NAME_LABEL, "")
    if not service_name:
        ctx.warn(
            f"metadata.labels[{_q(SERVICE_NAME_LABEL)}]",
            "missing or empty; the slice is ignored by kube-proxy",
        )

    ports: list[EndpointPort] = []
    for i, entry in enumerate(_list(ctx, obj.get("ports"), "ports")):
        path = f"ports[{i}]"
        p = _entry(ctx, entry, path)
        if p is None:
            continue
        port_name = p.get("name")
        if port_name is None:
            ctx.warnings.append(f'{ctx.who}: {path}.name is absent; kube-proxy ignores such ports (write name: "")')
        elif type(port_name) is not str:
            port_name = _str(ctx, port_name, f"{path}.name")
        number = p.get("port")
        if number is not None and not _is_port(number):
            ctx.error(f"{path}.port", f"{_q(number)} is not a valid port")
            number = None
        protocol = p.get("protocol")
        if type(protocol) is not str or protocol not in PROTOCOLS:
            protocol = _protocol(ctx, protocol, f"{path}.protocol")
        ports.append(EndpointPort(port_name, protocol, number))

    family = address_type if address_type in IP_FAMILIES else None
    endpoints: list[Endpoint] = []
    for i, entry in enumerate(_list(ctx, obj.get("endpoints"), "endpoints")):
        if type(entry) is dict or isinstance(entry, Mapping):
            endpoints.append(_slice_endpoint(ctx, entry, i, family, namespace))
        else:
            ctx.error(f"endpoints[{i}]", f"must be a mapping, not {_what(entry)}")
    return EndpointSlice(
        namespace=namespace,
        name=name,
        service_name=service_name,
        address_type=address_type,
        ports=tuple(ports),
        endpoints=tuple(endpoints),
        labels=labels,
    )


def _slice_endpoint(ctx: _Ctx, e: Mapping[str, Any], i: int, family: str | None, namespace: str) -> Endpoint:
    # The common, valid case is checked inline; field paths are formatted only for
    # problems (this loop dominates loading time for large clusters).
    raw = e.get("addresses")
    addresses: tuple[str, ...]
    if family == "IPv4" and type(raw) is list and len(raw) == 1:
        a = raw[0]
        if type(a) is str and _V4.fullmatch(a):
            addresses = (a,)
        else:
            addresses = _slice_addresses(ctx, raw, f"endpoints[{i}].addresses", family)
    elif (
        family == "IPv4"
        and type(raw) is list
        and 0 < len(raw) <= MAX_ADDRESSES_PER_ENDPOINT
        and all(type(a) is str and _V4.fullmatch(a) for a in raw)
    ):
        addresses = tuple(raw)
    else:
        addresses = _slice_addresses(ctx, raw, f"endpoints[{i}].addresses", family)

    cond = e.get("conditions")
    ready, serving, terminating = True, True, False
    if type(cond) is dict or isinstance(cond, Mapping):
        v = cond.get("ready")
        if v is not None:
            ready = v if type(v) is bool else _bool(ctx, v, f"endpoints[{i}].conditions.ready", True)
        v = cond.get("serving")
        if v is not None:
            serving = v if type(v) is bool else _bool(ctx, v, f"endpoints[{i}].conditions.serving", True)
        v = cond.get("terminating")
        if v is not None:
            terminating = v if type(v) is bool else _bool(ctx, v, f"endpoints[{i}].conditions.terminating", False)
    elif cond is not None:
        _mapping(ctx, cond, f"endpoints[{i}].conditions")

    # node and zone names repeat across every endpoint of the cluster: one string each
    node_name = e.get("nodeName")
    if node_name is not None and type(node_name) is not str:
        node_name = _opt_str(ctx, node_name, f"endpoints[{i}].nodeName")
    if node_name is not None:
        node_name = _intern(node_name)
    zone = e.get("zone")
    if zone is not None and type(zone) is not str:
        zone = _opt_str(ctx, zone, f"endpoints[{i}].zone")
    if zone is not None:
        zone = _intern(zone)
    hostname = e.get("hostname")
    if hostname is not None and type(hostname) is not str:
        hostname = _opt_str(ctx, hostname, f"endpoints[{i}].hostname")

    zone_hints: tuple[str, ...] = ()
    node_hints: tuple[str, ...] = ()
    hints = e.get("hints")
    if hints is not None:
        path = f"endpoints[{i}].hints"
        hm = _mapping(ctx, hints, path)
        if hm:
            zone_hints = _hint_names(ctx, hm.get("forZones"), f"{path}.forZones")
            node_hints = _hint_names(ctx, hm.get("forNodes"), f"{path}.forNodes")

    ref = e.get("targetRef")
    target: str | None = None
    if ref is not None:
        if type(ref) is dict:
            kind, ns, name = ref.get("kind"), ref.get("namespace", namespace), ref.get("name")
            if type(kind) is str and type(ns) is str and type(name) is str:
                target = f"{kind} {ns or namespace}/{name}" if kind else f"{ns or namespace}/{name}"
            else:
                target = _target(ctx, ref, f"endpoints[{i}].targetRef", namespace)
        else:
            target = _target(ctx, ref, f"endpoints[{i}].targetRef", namespace)
    return Endpoint(
        addresses,
        ready,
        serving,
        terminating,
        node_name,
        zone,
        hostname,
        zone_hints,
        node_hints,
        target,
    )


_intern = sys.intern


def _slice_addresses(ctx: _Ctx, raw: Any, path: str, family: str | None) -> tuple[str, ...]:
    if raw is not None and type(raw) is not list:
        ctx.error(path, f"must be a list, not {_what(raw)}")
        return ()
    raw_addrs = raw or []
    if not raw_addrs:
        ctx.error(path, "must have at least 1 address")
    elif len(raw_addrs) > MAX_ADDRESSES_PER_ENDPOINT:
        ctx.error(
            path,
            f"must have at most {MAX_ADDRESSES_PER_ENDPOINT} addresses, not {len(raw_addrs)}",
        )
    addresses: list[str] = []
    for j, value in enumerate(raw_addrs):
        if family is not None:
            ip = _ip(ctx, value, f"{path}[{j}]", family)
            if ip is not None:
                addresses.append(ip)
        elif isinstance(value, str):
            addresses.append(value)
        else:
            ctx.error(f"{path}[{j}]", f"{_q(value)} must be a string")
    return tuple(addresses)


def _hint_names(ctx: _Ctx, value: Any, path: str) -> tuple[str, ...]:
    names: list[str] = []
    for i, entry in enumerate(_list(ctx, value, path)):
        m = _entry(ctx, entry, f"{path}[{i}]")
        if m is not None:
            names.append(_str(ctx, m.get("name"), f"{path}[{i}].name"))
    return tuple(names)


def _target(ctx: _Ctx, value: Any, path: str, namespace: str) -> str | None:
    ref = _mapping(ctx, value, path)
    if not ref:
        return None
    kind = _str(ctx, ref.get("kind"), f"{path}.kind")
    ns = _str(ctx, ref.get("namespace"), f"{path}.namespace") or namespace
    name = _str(ctx, ref.get("name"), f"{path}.name")
    return f"{kind} {ns}/{name}" if kind else f"{ns}/{name}"


# --------------------------------------------------------------------------- Endpoints


@dataclass(frozen=True, slots=True)
class _LegacyAddress:
    ip: str
    node_name: str | None
    hostname: str | None
    target: str | None


def _parse_endpoints(
    ctx: _Ctx,
    namespace: str,
    name: str,
    obj: Mapping[str, Any],
    labels: dict[str, str],
    annotations: dict[str, str],
) -> tuple[EndpointSlice, ...]:
    """Legacy Endpoints → the EndpointSlices the mirroring controller would write.

    Follows pkg/controller/endpointslicemirroring: ``shouldMirror`` (skip-mirror label,
    leader-election annotation), ``RepackSubsets`` (addresses regrouped by port set,
    de-duplicated by IP and targetRef.uid, not-ready wins over ready), then one slice
    per subset and address family with ``addressToEndpoint``: only
    ``conditions.ready`` is set (serving/terminating stay nil), nodeName, hostname and
    targetRef are copied. At most 1000 addresses per subset, ready ones first.
    The controller's slice names are generated; ours are ``<name>-mirror-<k>``, k
    counting this Endpoints' slices from 0 (IPv4 before IPv6 within a subset).
    """
    subsets = _list(ctx, obj.get("subsets"), "subsets")
    # Validate everything even when the object is not mirrored.
    port_order: list[tuple[str, int, str]] = []
    by_port: dict[tuple[str, int, str], dict[tuple[str, str], bool]] = {}
    info: dict[tuple[str, str], _LegacyAddress] = {}
    for si, entry in enumerate(subsets):
        spath = f"subsets[{si}]"
        ss = _entry(ctx, entry, spath)
        if ss is None:
            continue
        ports = _legacy_ports(ctx, ss.get("ports"), f"{spath}.ports")
        groups = (
            (
                True,
                _legacy_addresses(ctx, ss.get("addresses"), f"{spath}.addresses", namespace, info),
            ),
            (
                False,
                _legacy_addresses(ctx, ss.get("notReadyAddresses"), f"{spath}.notReadyAddresses", namespace, info),
            ),
        )
        if not ports and (groups[0][1] or groups[1][1]):
            ctx.warn(f"{spath}.ports", "empty; the mirroring controller drops this subset")
        for port in ports:
            addrs = by_port.get(port)
            if addrs is None:
                addrs = by_port[port] = {}
                port_order.append(port)
            for ready, keys in groups:
                for key in keys:
                    if addrs.get(key, True):  # not ready trumps ready
                        addrs[key] = ready
    if labels.get(SKIP_MIRROR_LABEL) == "true" or LEADER_ANNOTATION in annotations:
        return ()

    # RepackSubsets: ports offered by exactly the same addresses form one subset.
    subsets_by_sig: dict[frozenset[tuple[tuple[str, str], bool]], list[tuple[str, int, str]]] = {}
    for port in port_order:
        subsets_by_sig.setdefault(frozenset(by_port[port].items()), []).append(port)

    slices: list[EndpointSlice] = []
    skipped = 0
    origin = f"Endpoints {namespace}/{name}"
    for sig_ports in subsets_by_sig.values():
        addrs = by_port[sig_ports[0]]
        ordered = [k for k, r in addrs.items() if r] + [k for k, r in addrs.items() if not r]
        if len(ordered) > MIRRORING_MAX_ENDPOINTS_PER_SUBSET:
            skipped += len(ordered) - MIRRORING_MAX_ENDPOINTS_PER_SUBSET
            ordered = ordered[:MIRRORING_MAX_ENDPOINTS_PER_SUBSET]
        slice_ports = tuple(EndpointPort(n, proto, num) for n, num, proto in sig_ports)
        for fam in IP_FAMILIES:
            eps = []
            for key in ordered:
                a = info[key]
                if ("IPv6" if ":" in a.ip else "IPv4") != fam:
                    continue
                eps.append(
                    Endpoint(
                        addresses=(a.ip,),
                        ready=addrs[key],
                        node_name=a.node_name,
                        hostname=a.hostname,
                        target=a.target,
                    )
                )
            if eps:
                slices.append(
                    EndpointSlice(
                        namespace=namespace,
                        name=f"{name}-mirror-{len(slices)}",
                        service_name=name,
                        address_type=fam,
                        ports=slice_ports,
                        endpoints=tuple(eps),
                        mirrored_from=origin,
                    )
                )
    if skipped:
        ctx.warn(
            "subsets",
            f"{skipped} addresses are not mirrored (the mirroring controller takes at most "
            f"{MIRRORING_MAX_ENDPOINTS_PER_SUBSET} per subset)",
        )
    return tuple(slices)


def _legacy_ports(ctx: _Ctx, value: Any, path: str) -> list[tuple[str, int, str]]:
    raw = _list(ctx, value, path)
    multi = len(raw) > 1
    names: set[str] = set()
    out: list[tuple[str, int, str]] = []
    for i, entry in enumerate(raw):
        ppath = f"{path}[{i}]"
        p = _entry(ctx, entry, ppath)
        if p is None:
            continue
        name = _str(ctx, p.get("name"), f"{ppath}.name")
        if name:
            if name in names:
                ctx.error(f"{ppath}.name", f"duplicate port name {_q(name)}")
            names.add(name)
        elif multi:
            ctx.error(f"{ppath}.name", "required when there is more than one port")
        protocol = _protocol(ctx, p.get("protocol"), f"{ppath}.protocol")
        port = p.get("port")
        if port is None:
            ctx.error(f"{ppath}.port", "required")
        elif not _is_port(port):
            ctx.error(f"{ppath}.port", f"{_q(port)} is not a valid port")
        else:
            out.append((name, port, protocol))
    return out


def _legacy_addresses(
    ctx: _Ctx, value: Any, path: str, namespace: str, info: dict[tuple[str, str], _LegacyAddress]
) -> list[tuple[str, str]]:
    keys: list[tuple[str, str]] = []
    for i, entry in enumerate(_list(ctx, value, path)):
        apath = f"{path}[{i}]"
        a = _entry(ctx, entry, apath)
        if a is None:
            continue
        ip = _ip(ctx, a.get("ip"), f"{apath}.ip")
        node_name = _opt_str(ctx, a.get("nodeName"), f"{apath}.nodeName")
        hostname = _str(ctx, a.get("hostname"), f"{apath}.hostname") or None
        ref = a.get("targetRef")
        target = _target(ctx, ref, f"{apath}.targetRef", namespace)
        uid = ref.get("uid") if isinstance(ref, Mapping) else None
        if ip is None:
            continue
        key = (ip, uid if isinstance(uid, str) else "")
        info.setdefault(key, _LegacyAddress(ip, node_name, hostname, target))
        keys.append(key)
    return keys


# --------------------------------------------------------------------------- Node


def _parse_node(ctx: _Ctx, name: str, obj: Mapping[str, Any], labels: dict[str, str]) -> Node:
    spec = _mapping(ctx, obj.get("spec"), "spec") or {}
    status = _mapping(ctx, obj.get("status"), "status") or {}
    addresses: list[tuple[str, str]] = []
    for i, entry in enumerate(_list(ctx, status.get("addresses"), "status.addresses")):
        path = f"status.addresses[{i}]"
        a = _entry(ctx, entry, path)
        if a is None:
            continue
        atype = _str(ctx, a.get("type"), f"{path}.type")
        if atype not in ("InternalIP", "ExternalIP"):
            continue
        ip = _ip(ctx, a.get("address"), f"{path}.address")
        if ip is not None:
            addresses.append((atype, ip))

    cidrs: list[str] = []
    raw: list[tuple[str, Any]] = []
    if spec.get("podCIDR") not in (None, ""):
        raw.append(("spec.podCIDR", spec.get("podCIDR")))
    raw.extend((f"spec.podCIDRs[{i}]", v) for i, v in enumerate(_list(ctx, spec.get("podCIDRs"), "spec.podCIDRs")))
    for path, value in raw:
        net, sloppy = parse_cidr(value)
        if net is None:
            ctx.error(path, f"{_q(value)} is not a valid CIDR")
            continue
        text = str(net)
        if sloppy:
            ctx.warn(path, _sloppy_msg(value, text))
        if text not in cidrs:
            cidrs.append(text)

    zone = labels.get(ZONE_LABEL) or labels.get(LEGACY_ZONE_LABEL) or None
    return Node(name=name, addresses=tuple(addresses), pod_cidrs=tuple(cidrs), zone=zone, labels=labels)


# --------------------------------------------------------------------------- ServiceCIDR


def _parse_service_cidr(ctx: _Ctx, obj: Mapping[str, Any]) -> tuple[str, ...]:
    """networking.k8s.io ServiceCIDR: ``spec.cidrs`` (one per family at most)."""
    spec = _mapping(ctx, obj.get("spec"), "spec") or {}
    out: list[str] = []
    for i, value in enumerate(_list(ctx, spec.get("cidrs"), "spec.cidrs")):
        net, sloppy = parse_cidr(value)
        if net is None:
            ctx.error(f"spec.cidrs[{i}]", f"{_q(value)} is not a valid CIDR")
            continue
        if sloppy:
            ctx.warn(f"spec.cidrs[{i}]", _sloppy_msg(value, str(net)))
        if any((":" in c) == (net.version == 6) for c in out):
            ctx.error(f"spec.cidrs[{i}]", "at most one CIDR per IP family")
            continue
        out.append(str(net))
    return tuple(out)


# --------------------------------------------------------------------------- cross-object


class _Edit(MutableMapping[_K, _V]):
    """A mapping being edited: reads fall through to the base, writes are kept aside
    (so an apply costs what it changes), :meth:`result` shares the base's bulk."""

    __slots__ = ("base", "changes")

    def __init__(self, base: Mapping[_K, _V]) -> None:
        self.base = base
        self.changes: dict[_K, Any] = {}

    def __getitem__(self, key: _K) -> _V:
        ch = self.changes
        if key in ch:
            v = ch[key]
            if v is GONE:
                raise KeyError(key)
            return v  # type: ignore[no-any-return]
        return self.base[key]

    def __contains__(self, key: object) -> bool:
        ch = self.changes
        if key in ch:
            return ch[key] is not GONE
        return key in self.base

    def __setitem__(self, key: _K, value: _V) -> None:
        self.changes[key] = value

    def __delitem__(self, key: _K) -> None:
        if key not in self:
            raise KeyError(key)
        self.changes[key] = GONE

    def __iter__(self) -> Iterator[_K]:
        return overlay_keys(self.base, self.changes)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def result(self) -> FrozenMap[_K, _V]:
        return frozen(self.base).updated(self.changes) if self.changes else frozen(self.base)


def _claims(svc: Service) -> tuple[list[tuple[int, str]], list[tuple[int, tuple[int, str]]]]:
    """The ClusterIPs (position, IP) and NodePorts (position, (port, protocol)) a Service holds."""
    ips = [] if svc.headless or svc.type == "ExternalName" else list(enumerate(svc.cluster_ips))
    nps = [(i, (p.node_port, p.protocol)) for i, p in enumerate(svc.ports) if p.node_port]
    return ips, nps


def _full_index_check(
    services: Mapping[tuple[str, str], Service],
) -> tuple[list[str], FrozenMap[str, tuple[str, str]], FrozenMap[tuple[int, str], tuple[tuple[str, str], int]]]:
    """Conflicts between Services (errors: a ClusterIP or NodePort used twice; the first
    in namespace/name order keeps it) and the indexes of who holds what."""
    problems: list[str] = []
    ip_owner: dict[str, tuple[str, str]] = {}
    node_port_owner: dict[tuple[int, str], tuple[tuple[str, str], int]] = {}
    for key in sorted(services):
        _claim(services[key], ip_owner, node_port_owner, problems)
    return problems, FrozenMap(ip_owner), FrozenMap(node_port_owner)


def _claim(svc: Service, ip_owner: MutableMapping[str, Any], np_owner: MutableMapping[tuple[int, str], Any],
           problems: list[str]) -> None:
    who = f"Service {svc.namespace}/{svc.name}"
    ips, nps = _claims(svc)
    for i, ip in ips:
        owner = ip_owner.get(ip)
        if owner is None:
            ip_owner[ip] = svc.key
        elif owner != svc.key:
            problems.append(f"{who}: spec.clusterIPs[{i}]: {ip} is already used by Service {owner[0]}/{owner[1]}")
    for i, np_key in nps:
        other = np_owner.get(np_key)
        if other is None:
            np_owner[np_key] = (svc.key, i)
        elif other != (svc.key, i):
            by = f"Service {other[0][0]}/{other[0][1]}" if other[0] != svc.key else f"spec.ports[{other[1]}]"
            problems.append(
                f"{who}: spec.ports[{i}].nodePort: {np_key[0]}/{np_key[1]} is already used by {by}"
            )


def indexed(cluster: Cluster) -> Cluster:
    """``cluster`` with the indexes and shared maps an apply builds on (a Cluster made by
    :func:`load` or :meth:`Cluster.from_objects` has them; one built directly from model
    objects gets them here, once, instead of in its first apply)."""
    if cluster.ip_index is not None and cluster.nodeport_index is not None and cluster.slice_index is not None \
            and all(isinstance(m, FrozenMap) for m in (cluster.services, cluster.slices, cluster.nodes)):
        return cluster
    _, ip_index, np_index = _full_index_check(cluster.services)
    return dataclasses.replace(
        cluster, services=frozen(cluster.services), slices=frozen(cluster.slices), nodes=frozen(cluster.nodes),
        legacy_endpoints=frozen(cluster.legacy_endpoints), service_cidrs=frozen(cluster.service_cidrs),
        ip_index=ip_index, nodeport_index=np_index, slice_index=build_slice_index(cluster.slices),
    )


def _index_check(
    base: Cluster, b: _Builder,
) -> tuple[list[str], FrozenMap[str, tuple[str, str]], FrozenMap[tuple[int, str], tuple[tuple[str, str], int]]]:
    """:func:`_full_index_check` for an apply: only the Services touched can conflict
    (the base had none), so only their claims are checked, against the base's indexes."""
    if base.ip_index is None or base.nodeport_index is None:
        _, ip_index, np_index = _full_index_check(base.services)
    else:
        ip_index, np_index = frozen(base.ip_index), frozen(base.nodeport_index)
    touched = sorted({(ns, name) for kind, ns, name in b.touched if kind == "Service"})
    if not touched:
        return [], ip_index, np_index
    ips = _Edit(ip_index)
    nps = _Edit(np_index)
    for key in touched:  # first release what the touched Services held
        old = base.services.get(key)
        if old is not None:
            _release(old, ips, nps)
    problems: list[str] = []
    now = [svc for key in touched if (svc := b.services.get(key)) is not None]
    # an untouched holder that sorts after a touched claimant loses the address to it,
    # as the full check would have it: take those holders out and claim in order
    late: set[tuple[str, str]] = set()
    for svc in now:
        new_ips, new_nps = _claims(svc)
        for _, ip in new_ips:
            holder = ips.get(ip)
            if holder is not None and holder > svc.key:
                late.add(holder)
        for _, np_key in new_nps:
            np_holder = nps.get(np_key)
            if np_holder is not None and np_holder[0] > svc.key:
                late.add(np_holder[0])
    claimants = sorted([*now, *(b.services[k] for k in late)], key=lambda s: s.key)
    for k in late:
        _release(b.services[k], ips, nps)
    for svc in claimants:
        _claim(svc, ips, nps, problems)
    return problems, ips.result(), nps.result()


def _release(svc: Service, ips: MutableMapping[str, Any], nps: MutableMapping[tuple[int, str], Any]) -> None:
    """Take out of the indexes what ``svc`` holds there."""
    held_ips, held_nps = _claims(svc)
    for _, ip in held_ips:
        if ips.get(ip) == svc.key:
            del ips[ip]
    for i, np_key in held_nps:
        if nps.get(np_key) == (svc.key, i):
            del nps[np_key]


def _slice_index(base: Cluster, b: _Builder, slices: Mapping[tuple[str, str], EndpointSlice]
                 ) -> FrozenMap[tuple[str, str], tuple[str, ...]]:
    """The new cluster's (namespace, service) -> slice names, from the base's."""
    if base.slice_index is None or not (base.services or base.slices):
        return build_slice_index(slices)
    index = _Edit(frozen(base.slice_index))
    for kind, ns, name in b.touched:
        if kind != "EndpointSlice":
            continue
        old, new = base.slices.get((ns, name)), slices.get((ns, name))
        if old is not None and old.service_name:
            k = (ns, old.service_name)
            names = tuple(n for n in index.get(k, ()) if n != name)
            if names:
                index[k] = names
            elif k in index:
                del index[k]
        if new is not None and new.service_name:
            k = (ns, new.service_name)
            index[k] = (*index.get(k, ()), name)
    return index.result()


def _orphan_candidates(base: Cluster, b: _Builder, index: Mapping[tuple[str, str], tuple[str, ...]]
                       ) -> set[tuple[str, str]]:
    """The slices whose Service may have come or gone: those touched, and those of the
    Services touched (before and after)."""
    out: set[tuple[str, str]] = set()
    old_index = base.slice_index if base.slice_index is not None else build_slice_index(base.slices)
    for kind, ns, name in b.touched:
        if kind == "EndpointSlice":
            out.add((ns, name))
        elif kind == "Service":
            for idx in (old_index, index):
                out.update((ns, n) for n in idx.get((ns, name), ()))
    return out


def _orphans(
    services: Mapping[tuple[str, str], Service],
    slices: Mapping[tuple[str, str], EndpointSlice],
    only: set[tuple[str, str]] | None = None,
) -> list[str]:
    """Warnings for EndpointSlices whose Service is missing (of the slices ``only``, or all)."""
    warnings: list[str] = []
    label = f"metadata.labels[{_q(SERVICE_NAME_LABEL)}]"
    keys: Iterable[tuple[str, str]] = slices if only is None else sorted(k for k in only if k in slices)
    for key in keys:
        s = slices[key]
        if s.service_name and (s.namespace, s.service_name) not in services:
            warnings.append(
                f"EndpointSlice {s.namespace}/{s.name}: {label}: Service {s.namespace}/{s.service_name} not found"
            )
    return warnings


# --------------------------------------------------------------------------- field helpers


def _what(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def _q(value: Any) -> str:
    """A value as the manifest would spell it (JSON), shortened."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _sloppy_msg(raw: Any, canonical: str) -> str:
    return f"{_q(raw)} has leading zeros; read as {canonical} (like kube-proxy's ParseIPSloppy)"


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_port(value: Any) -> bool:
    return type(value) is int and 0 < value < 65536


def _mapping(ctx: _Ctx, value: Any, path: str) -> Mapping[str, Any] | None:
    if value is None or type(value) is dict or isinstance(value, Mapping):
        return value
    ctx.error(path, f"must be a mapping, not {_what(value)}")
    return None


def _entry(ctx: _Ctx, value: Any, path: str) -> Mapping[str, Any] | None:
    """A list element that must be a mapping (null is an error here)."""
    if type(value) is dict or isinstance(value, Mapping):
        return value
    ctx.error(path, f"must be a mapping, not {_what(value)}")
    return None


def _list(ctx: _Ctx, value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if type(value) is list:
        return value
    ctx.error(path, f"must be a list, not {_what(value)}")
    return []


def _str(ctx: _Ctx, value: Any, path: str) -> str:
    if value is None:
        return ""
    if type(value) is str:
        return value
    ctx.error(path, f"{_q(value)} must be a string")
    return ""


def _opt_str(ctx: _Ctx, value: Any, path: str) -> str | None:
    if value is None or type(value) is str:
        return value
    ctx.error(path, f"{_q(value)} must be a string")
    return None


def _bool(ctx: _Ctx, value: Any, path: str, default: bool) -> bool:
    if value is None:
        return default
    if type(value) is bool:
        return value
    ctx.error(path, f"{_q(value)} must be true or false")
    return default


def _choice(ctx: _Ctx, value: Any, path: str, choices: tuple[str, ...], default: str) -> str:
    if value is None or value == "":
        return default
    if type(value) is str and value in choices:
        return value
    allowed = ", ".join(choices[:-1]) + f" or {choices[-1]}"
    ctx.error(path, f"{_q(value)} is not supported ({allowed})")
    return default


def _protocol(ctx: _Ctx, value: Any, path: str) -> str:
    return _choice(ctx, value, path, PROTOCOLS, "TCP")


def _str_map(ctx: _Ctx, value: Any, path: str) -> dict[str, str]:
    if value is None:
        return {}
    if type(value) is dict:
        for k, v in value.items():
            if type(k) is not str or type(v) is not str:
                break
        else:
            return dict(value)
    m = _mapping(ctx, value, path)
    if not m:
        return {}
    out: dict[str, str] = {}
    items: Iterable[tuple[Any, Any]] = m.items()
    for k, v in items:
        if not isinstance(k, str):
            ctx.error(path, f"key {_q(k)} must be a string")
        elif v is None:
            out[k] = ""  # Go decodes null into the zero value
        elif isinstance(v, str):
            out[k] = v
        else:
            ctx.error(f"{path}[{_q(k)}]", f"{_q(v)} must be a string")
    return out


def _ip(ctx: _Ctx, value: Any, path: str, family: str | None = None) -> str | None:
    """Canonical address, or None after reporting why not (leading zeros: a warning)."""
    if family != "IPv6" and type(value) is str and _V4.fullmatch(value):
        return value
    addr, sloppy = parse_ip(value)
    if addr is None or (family is not None and family_of(addr) != family):
        if value is None or value == "":
            ctx.error(path, "required")
        else:
            ctx.error(path, f"{_q(value)} is not a valid {family or 'IP'} address")
        return None
    text = str(addr)
    if sloppy:
        ctx.warn(path, _sloppy_msg(value, text))
    return text

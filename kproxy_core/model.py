"""The cluster as kube-proxy sees it: immutable, validated, typed objects.

No kube-proxy logic lives here (that is :mod:`kproxy_core.plan`); objects hold the
fields kube-proxy reads, already normalised (canonical addresses, defaults applied).
:mod:`kproxy_core.manifests` builds them from manifests and reports bad input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Generic, TypeVar

from .addresses import Family

DEFAULT_AFFINITY_TIMEOUT = 10800  # DefaultClientIPServiceAffinitySeconds
MAX_AFFINITY_TIMEOUT = 86400  # MaxClientIPServiceAffinitySeconds

PROTOCOLS = ("TCP", "UDP", "SCTP")
PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}
PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}


K = TypeVar("K")
V = TypeVar("V")


class _Gone:
    __slots__ = ()

    def __repr__(self) -> str:
        return "GONE"


GONE: Any = _Gone()  # FrozenMap.updated: remove the key


class FrozenMap(Mapping[K, V], Generic[K, V]):
    """An immutable mapping whose updated copies share their bulk.

    A copy made by :meth:`updated` keeps the same base dict and a small top layer of
    changes, so an update costs O(√n), not O(n): the top layer is folded into a new base
    once it outgrows 4√n entries (so that amortised, each update also pays for its share
    of the next fold). The clusters an :meth:`Engine.apply` produces share their objects
    this way."""

    __slots__ = ("_base", "_len", "_top")

    def __init__(self, base: Mapping[K, V] | None = None) -> None:
        self._base: dict[K, V] = dict(base) if base else {}
        self._top: dict[K, Any] = {}
        self._len = len(self._base)

    def __getitem__(self, key: K) -> V:
        top = self._top
        if top and key in top:
            v = top[key]
            if v is GONE:
                raise KeyError(key)
            return v  # type: ignore[no-any-return]
        return self._base[key]

    def get(self, key: K, default: Any = None) -> Any:
        top = self._top
        if top and key in top:
            v = top[key]
            return default if v is GONE else v
        return self._base.get(key, default)

    def __contains__(self, key: object) -> bool:
        top = self._top
        if top and key in top:
            return top[key] is not GONE
        return key in self._base

    def __iter__(self) -> Iterator[K]:
        return overlay_keys(self._base, self._top)

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"FrozenMap({dict(self.items())!r})"

    def updated(self, changes: Mapping[K, Any]) -> FrozenMap[K, V]:
        """A copy with ``changes`` applied (a value of :data:`GONE` removes its key)."""
        out: FrozenMap[K, V] = FrozenMap.__new__(FrozenMap)
        top = dict(self._top)
        n = self._len
        base = self._base
        for k, v in changes.items():
            n += (v is not GONE) - (k in self)
            if v is GONE and k not in base:
                top.pop(k, None)
            else:
                top[k] = v
        out._len = n
        if len(top) > 64 and len(top) * len(top) > 16 * len(base):
            merged = {k: v for k, v in base.items() if k not in top}
            merged.update((k, v) for k, v in top.items() if v is not GONE)
            out._base, out._top = merged, {}
        else:
            out._base, out._top = base, top
        return out


def overlay_keys(base: Mapping[K, Any], top: Mapping[K, Any]) -> Iterator[K]:
    """The keys of ``base`` with the changes ``top`` laid over it (a value of :data:`GONE`
    removes its key): base's order, then the keys top adds."""
    if not top:
        yield from base
        return
    for k in base:
        if k not in top:
            yield k
    for k, v in top.items():
        if v is not GONE:
            yield k


def frozen(m: Mapping[K, V]) -> FrozenMap[K, V]:
    return m if isinstance(m, FrozenMap) else FrozenMap(m)


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    protocol: str
    port: int
    node_port: int = 0
    target_port: int | str | None = None


@dataclass(frozen=True, slots=True)
class LoadBalancerIngress:
    ip: str = ""
    hostname: str = ""
    ip_mode: str | None = None


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    type: str = "ClusterIP"
    cluster_ips: tuple[str, ...] = ()
    ip_families: tuple[str, ...] = ()
    headless: bool = False
    ports: tuple[ServicePort, ...] = ()
    external_ips: tuple[str, ...] = ()
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    session_affinity: str = "None"
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    health_check_node_port: int = 0
    load_balancer_ingress: tuple[LoadBalancerIngress, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    allocate_load_balancer_node_ports: bool = True
    external_name: str = ""
    selector: Mapping[str, str] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    spec: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def cluster_ip_for(self, family: Family) -> str | None:
        """``GetClusterIPByFamily``: the ClusterIP this family's proxier uses, if any."""
        if self.headless or not self.cluster_ips:
            return None
        if not self.ip_families:
            ip = self.cluster_ips[0]
            return ip if (":" in ip) == (family == "IPv6") else None
        for fam, ip in zip(self.ip_families, self.cluster_ips, strict=False):
            if fam == family:
                return ip
        return None


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str | None
    protocol: str
    port: int | None


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    zone: str | None = None
    hostname: str | None = None
    zone_hints: tuple[str, ...] = ()
    node_hints: tuple[str, ...] = ()
    target: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str
    address_type: str
    ports: tuple[EndpointPort, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    mirrored_from: str | None = None  # "Endpoints ns/name" when converted from legacy Endpoints
    labels: Mapping[str, str] = field(default_factory=dict, compare=False)  # metadata.labels, as read

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    addresses: tuple[tuple[str, str], ...] = ()  # (type, canonical IP), IP-valued types only
    pod_cidrs: tuple[str, ...] = ()
    zone: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def ips(self, family: Family | None = None) -> tuple[str, ...]:
        """The node's own addresses (addrtype LOCAL), optionally of one family, in order."""
        seen: list[str] = []
        for _, ip in self.addresses:
            if ip in seen:
                continue
            if family is None or (":" in ip) == (family == "IPv6"):
                seen.append(ip)
        return tuple(seen)

    def pod_cidr_for(self, family: Family) -> str | None:
        for cidr in self.pod_cidrs:
            if (":" in cidr) == (family == "IPv6"):
                return cidr
        return None


@dataclass(frozen=True)
class Cluster:
    """Services, EndpointSlices and Nodes, keyed by namespace/name (Nodes by name).

    Build one with :func:`kproxy_core.load` or :meth:`Cluster.from_objects`.
    ``warnings`` lists what was accepted but deserves a look (one line each).
    """

    services: Mapping[tuple[str, str], Service] = field(default_factory=dict)
    slices: Mapping[tuple[str, str], EndpointSlice] = field(default_factory=dict)
    nodes: Mapping[str, Node] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    legacy_endpoints: Mapping[tuple[str, str], tuple[EndpointSlice, ...]] = field(
        default_factory=dict, repr=False
    )
    service_cidrs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # ServiceCIDR name -> CIDRs
    namespaces: frozenset[str] = frozenset()  # Namespace objects given (only their names matter)
    # indexes kept across apply (None: built on first use): (namespace, service name) ->
    # the names of its EndpointSlices; ClusterIP -> the Service that has it; (nodePort,
    # protocol) -> (Service, port position)
    slice_index: Mapping[tuple[str, str], tuple[str, ...]] | None = field(default=None, compare=False, repr=False)
    ip_index: Mapping[str, tuple[str, str]] | None = field(default=None, compare=False, repr=False)
    nodeport_index: Mapping[tuple[int, str], tuple[tuple[str, str], int]] | None = field(
        default=None, compare=False, repr=False)
    # the plugin manager the cluster was loaded with: an Engine given none uses it
    plugins: Any = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to Dask workers) without the plugin manager, which holds modules: a
        worker's Engine uses that process's default manager."""
        state = dict(self.__dict__)
        state["plugins"] = None
        return state

    def service_cidrs_for(self, family: Family) -> tuple[str, ...]:
        """Every ServiceCIDR's CIDR of one family, in name order (nftables' cluster-ips-check)."""
        v6 = family == "IPv6"
        return tuple(c for name in sorted(self.service_cidrs) for c in self.service_cidrs[name] if (":" in c) == v6)

    @classmethod
    def from_objects(cls, objects: Iterable[Mapping[str, Any]], plugins: Any = None) -> Cluster:
        """Build a cluster from manifest dicts (as ``yaml.safe_load`` returns them).

        ``plugins``: the plugin manager whose Service types and validation hooks apply
        (default: :func:`kproxy_core.plugins.get_plugin_manager`). The loader,
        :func:`kproxy_core.manifests.cluster_from_objects`, does the work: the model
        describes a cluster and does not import the loader, which installs itself here
        (:func:`install_loader`) when it is imported, as importing ``kproxy_core`` does."""
        if _loader is None:  # pragma: no cover - kproxy_core/__init__ imports the loader
            raise RuntimeError("Cluster.from_objects: kproxy_core.manifests has not been imported")
        return _loader(objects, plugins)

    @cached_property
    def _slice_names(self) -> Mapping[tuple[str, str], tuple[str, ...]]:
        if self.slice_index is not None:
            return self.slice_index
        return build_slice_index(self.slices)

    def slices_for(self, namespace: str, service: str) -> list[EndpointSlice]:
        """EndpointSlices attached to a Service (by the ``kubernetes.io/service-name`` label).

        Legacy Endpoints are mirrored into slices only when the input has no real
        EndpointSlice for that service (the EndpointSlice controller would have made
        equivalent ones) or the Service has no selector (what the mirroring
        controller mirrors).
        """
        slices = self.slices
        own = [slices[(namespace, n)] for n in self._slice_names.get((namespace, service), ())]
        legacy = self.legacy_endpoints.get((namespace, service), ())
        svc = self.services.get((namespace, service))
        if legacy and (not own or (svc is not None and svc.selector is None)):
            own.extend(legacy)
        return sorted(own, key=lambda s: s.name)

    @property
    def first_node(self) -> str | None:
        return next(iter(self.nodes), None)


def build_slice_index(slices: Mapping[tuple[str, str], EndpointSlice]) -> FrozenMap[tuple[str, str], tuple[str, ...]]:
    """(namespace, service name) -> the names of the EndpointSlices labelled for it."""
    index: dict[tuple[str, str], list[str]] = {}
    for s in slices.values():
        if s.service_name:
            index.setdefault((s.namespace, s.service_name), []).append(s.name)
    return FrozenMap({k: tuple(v) for k, v in index.items()})


_loader: Callable[[Iterable[Mapping[str, Any]], Any], Cluster] | None = None


def install_loader(loader: Callable[[Iterable[Mapping[str, Any]], Any], Cluster]) -> None:
    """Make ``loader(objects, plugins)`` what :meth:`Cluster.from_objects` calls."""
    global _loader
    _loader = loader

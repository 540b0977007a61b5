"""The Engine: a node's kube-proxy decisions over a Cluster, per packet or per batch.

The compiled core (``kproxy_core._engine``) and its pure-Python twin
(``kproxy_core._engine_py``) implement the same ``Core`` API; ``KPROXY_NO_EXTENSIONS=1``
or ``Engine(..., impl="python")`` selects the twin.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from . import _engine_py
from .addresses import FAMILIES, Family
from .dns import DEFAULT_TTL, DEFAULT_ZONE, Answer, Zone, build_zone, normalize
from .errors import PacketError
from .manifests import _gc_paused as gc_paused
from .manifests import apply_objects, indexed
from .model import PROTO_NUMBERS, Cluster
from .plan import PlanPort, ProxyConfig, ProxyPlan, make_config, plan_port
from .tables import FRONTEND_NAMES as _BUILTIN_FRONTENDS
from .tables import VERDICTS, FamilyState, FamilyTables, FrontendKinds, PortEntry, port_entry, port_spec

if TYPE_CHECKING:
    from .plugins import KproxyPluginManager

try:
    from . import _engine as _compiled

    COMPILED_AVAILABLE = True
except ImportError:  # pragma: no cover - only without a build
    _compiled = None  # type: ignore[assignment]
    COMPILED_AVAILABLE = False


def _env_wants_python() -> bool:
    return os.environ.get("KPROXY_NO_EXTENSIONS", "") not in ("", "0")


def core_module(impl: str | None = None) -> ModuleType:
    """The module providing ``Core``: ``"compiled"``, ``"python"`` or None (the default)."""
    if impl is None:
        impl = "python" if _env_wants_python() or not COMPILED_AVAILABLE else "compiled"
    if impl == "python":
        return _engine_py
    if impl == "compiled":
        if _compiled is None:
            raise ImportError("kproxy_core._engine is not built; install the package or use impl='python'")
        mod: ModuleType = _compiled
        return mod
    raise ValueError(f"impl must be 'compiled' or 'python', not {impl!r}")


def maglev_builder(impl: str | None = None) -> Callable[..., np.ndarray]:
    """``maglev_table(offsets, skips, weights, M)`` of the core :func:`core_module` picks
    (both build the same tables)."""
    build: Callable[..., np.ndarray] = core_module(impl).maglev_table
    return build


OUT_DTYPE: Final = np.dtype(
    [("verdict", "u1"), ("service", "<i4"), ("frontend", "u1"), ("ep_ip", "<u4"),
     ("ep_port", "<u2"), ("masq", "?")]
)
OUT6_DTYPE: Final = np.dtype(
    [("verdict", "u1"), ("service", "<i4"), ("frontend", "u1"), ("ep_ip", "u1", (16,)),
     ("ep_port", "<u2"), ("masq", "?")]
)
VERDICT_NAMES: Final = VERDICTS
# the built-in frontend kinds by code (0: none), the same in every engine; an engine's own
# list, with its plugins' kinds after these, is Engine.frontend_names
FRONTEND_NAMES: Final[tuple[str | None, ...]] = _BUILTIN_FRONTENDS

DEFAULT_TIMEOUTS: Final = {"TCP": 86400.0, "UDP": 30.0, "SCTP": 432000.0}


@dataclass(frozen=True)
class ServicePortInfo:
    """One entry of ``Engine.service_ports`` (the ``service`` index of batch results)."""

    name: str  # kube-proxy's ServicePortName, e.g. "default/mynginx" or "ns/svc:http"
    namespace: str
    service: str
    port_name: str
    protocol: str
    port: int
    present: bool = True  # False once deleted by apply(); the index stays reserved


@dataclass(frozen=True)
class ApplyResult:
    services: tuple[str, ...]  # namespace/name of every Service that was recomputed
    ports_before: int
    ports_after: int
    flows_dropped: int
    full: bool


class _FIRST:
    pass


FIRST_NODE: Final = _FIRST()
APPLY_LOG = 4096  # applies whose recomputed Services Engine.changed_since can name


class Engine:
    """kube-proxy's decisions for one node (or an off-cluster observer with ``node=None``).

    One plan per IP family, as kube-proxy runs one proxier per family; lookups go to
    the family of the packet's addresses.
    """

    lookup: Callable[..., Any]

    def __init__(
        self,
        cluster: Cluster,
        node: str | _FIRST | None = FIRST_NODE,
        *,
        cluster_cidr: str | Sequence[str] | None = None,
        detect_local_mode: str | None = None,
        masquerade_all: bool = False,
        nodeport_addresses: str | Sequence[str] | None = None,
        localhost_nodeports: bool = True,
        mode: str = "iptables",
        seed: int | None = None,
        flow_capacity: int = 1 << 18,
        affinity_capacity: int = 1 << 16,
        timeouts: Mapping[str, float] | None = None,
        impl: str | None = None,
        service_cidrs: str | Sequence[str] | None = None,
        pod_bridge_interface: str | None = None,
        pod_interface_name_prefix: str | None = None,
        plugins: KproxyPluginManager | None = None,
        local_addresses: str | Sequence[str] | None = None,
        stale_flows: str = "udp",
    ) -> None:
        if not isinstance(mode, str) or mode not in ("iptables", "nftables"):
            raise ValueError(f"mode must be 'iptables' or 'nftables', not {mode!r}")
        _check_texts(cluster_cidr=cluster_cidr, nodeport_addresses=nodeport_addresses,
                     service_cidrs=service_cidrs, local_addresses=local_addresses)
        _check_texts(False, detect_local_mode=detect_local_mode, pod_bridge_interface=pod_bridge_interface,
                     pod_interface_name_prefix=pod_interface_name_prefix)
        if node is not None and not isinstance(node, str | _FIRST):
            raise ValueError(f"node must be a node's name or None, not {node!r}")
        if isinstance(node, _FIRST):
            node = cluster.first_node
        self.cluster = indexed(cluster)  # apply builds on its indexes
        self.node = node
        self.mode = mode
        if plugins is None:  # the manager the cluster was loaded with, else the shared default
            plugins = cluster.plugins
        if plugins is None:
            from .plugins import get_plugin_manager

            plugins = get_plugin_manager()
        self.plugins: KproxyPluginManager = plugins
        self._zones: dict[tuple[str, int, str, bool], Zone] = {}
        self._service_cidr_flag = service_cidrs
        self.seed = int.from_bytes(os.urandom(8), "little") if seed is None else seed
        self._settings = dict(
            cluster_cidr=cluster_cidr,
            detect_local_mode=detect_local_mode,
            masquerade_all=masquerade_all,
            nodeport_addresses=nodeport_addresses,
            localhost_nodeports=localhost_nodeports,
            mode=mode,
            pod_bridge_interface=pod_bridge_interface,
            pod_interface_name_prefix=pod_interface_name_prefix,
            plugins=plugins,
            local_addresses=local_addresses,
        )
        self.configs: dict[Family, ProxyConfig] = {
            fam: make_config(cluster, fam, node, **self._settings)  # type: ignore[arg-type]
            for fam in FAMILIES
        }
        t = dict(DEFAULT_TIMEOUTS)
        if timeouts is not None and (not isinstance(timeouts, Mapping) or set(timeouts) - set(DEFAULT_TIMEOUTS)):
            raise ValueError(f"timeouts must map TCP, UDP and SCTP to seconds, not {timeouts!r}")
        t.update(timeouts or {})
        self._impl = core_module(impl)
        self.compiled = self._impl is not _engine_py
        self._core = self._impl.Core(
            self.seed, flow_capacity, affinity_capacity,
            (t["TCP"], t["UDP"], t["SCTP"]), stale_flows,
        )
        self.stale_flows = stale_flows
        self.lookup = self._core.lookup
        self._lock = threading.Lock()
        self._service_index: dict[str, int] = {}
        self.service_ports: list[ServicePortInfo] = []
        self._names_loaded = 0  # how many of service_ports' names the core has
        self._kinds = FrontendKinds()  # this engine's frontend-kind codes (frontend_names)
        self._kinds_loaded = 0  # how many of them the core has
        self._derived: dict[str, Any] = {}  # plans, tables, warnings: built on demand
        # what each apply recomputed, for what follows the engine's state piece by piece
        # (kproxy_core.flows' dictionaries): see changed_since
        self.generation = 0
        self._applied: collections.deque[tuple[int, tuple[tuple[str, str], ...], bool]] = collections.deque(
            maxlen=APPLY_LOG)
        with gc_paused():  # millions of objects, no cycles: a collection would walk them all
            self._build_all()

    # ------------------------------------------------------------------ building
    def _plan_service(self, fam: Family, key: tuple[str, str]) -> list[PlanPort]:
        svc = self.cluster.services.get(key)
        if svc is None:
            return []
        out = []
        for sp in svc.ports:
            pp = plan_port(self.cluster, svc, sp, self.configs[fam])
            if pp is not None:
                out.append(pp)
        return out

    def _index(self, pp: PlanPort) -> int:
        """The service index of a service port, assigned on first sight and kept forever
        (batch results refer to it; a deleted port's index stays reserved)."""
        i = self._service_index.get(pp.spn)
        if i is None:
            i = self._service_index[pp.spn] = len(self.service_ports)
            self.service_ports.append(
                ServicePortInfo(pp.spn, pp.namespace, pp.service, pp.port_name, pp.protocol, pp.port)
            )
        return i

    def _entries(self, fam: Family, key: tuple[str, str]) -> dict[int, PortEntry]:
        cfg = self.configs[fam]
        out: dict[int, PortEntry] = {}
        for i, pp in enumerate(self._plan_service(fam, key)):
            svc = self._index(pp)
            out[svc] = port_entry(pp, cfg, svc, (key[0], key[1], i), self._impl.maglev_table,
                                  memo=self._states[fam].memo, kinds=self._kinds)
        return out

    def _build_all(self) -> int:
        """Plan every service port and load whole tables (at start and after a change
        that can affect every port: a Node)."""
        cidrs = self.service_cidrs if self.mode == "nftables" else ()
        self._states: dict[Family, FamilyState] = {}
        self._svc_ports: dict[Family, dict[tuple[str, str], list[int]]] = {}
        registry = self.plugins.registry
        self._wide = {
            k for k, svc in self.cluster.services.items()
            if (h := registry.get(svc.type)) is not None and h.cluster_wide
        }
        for fam in FAMILIES:
            state = self._states[fam] = FamilyState(self.configs[fam], cidrs, self._kinds)
            by_key: dict[tuple[str, str], list[int]] = {}
            updates: dict[int, PortEntry | None] = {}
            for key in sorted(self.cluster.services):
                got = self._entries(fam, key)
                if got:
                    updates.update(got)
                    by_key[key] = list(got)
            state.set(updates)
            self._states[fam] = state
            self._svc_ports[fam] = by_key
        for i, info in enumerate(self.service_ports):
            present = any(i in st.entries for st in self._states.values())
            if present != info.present:
                self.service_ports[i] = dataclasses.replace(info, present=present)
        return self._load_all()

    def _load_all(self) -> int:
        self._derived = {}
        t4, t6 = self._states["IPv4"].tables(), self._states["IPv6"].tables()
        names = [s.name for s in self.service_ports]
        kinds = list(self._kinds.names)
        dropped: int = self._core.load(t4, t6, names, kinds)
        self._names_loaded = len(names)
        self._kinds_loaded = len(kinds)
        self._derived["tables"] = {"IPv4": t4, "IPv6": t6}
        return dropped

    @property
    def plans(self) -> dict[Family, ProxyPlan]:
        """Each family's whole plan (planned again on demand, and again after an update:
        the engine keeps only what its tables need of each port)."""
        got: dict[Family, ProxyPlan] | None = self._derived.get("plans")
        if got is None:
            got = {}
            for fam in self._states:
                ports: list[PlanPort] = []
                for key in sorted(self._svc_ports[fam]):
                    ports.extend(self._plan_service(fam, key))
                got[fam] = ProxyPlan(self.configs[fam], tuple(ports))
            self._derived["plans"] = got
        return got

    def plan_of(self, family: Family, entry: PortEntry) -> PlanPort:
        """The plan of the service port behind one of this engine's table entries (planned
        again: one Service's ports, whatever the size of the cluster; kept until the next
        change, so tracing many packets to one Service plans it once)."""
        ns, name, i = entry.order
        cache: dict[tuple[Family, str, str], list[PlanPort]] = self._derived.setdefault("plan_of", {})
        got = cache.get((family, ns, name))
        if got is None:
            if len(cache) >= 4096:  # a bound on what traces to many Services keep
                cache.clear()
            got = cache[(family, ns, name)] = self._plan_service(family, (ns, name))
        return got[i]

    @property
    def tables(self) -> dict[Family, FamilyTables]:
        """Each family's whole flat tables (:mod:`kproxy_core.tables`), as :meth:`Core.load`
        takes them; assembled on demand after an update."""
        got: dict[Family, FamilyTables] | None = self._derived.get("tables")
        if got is None:
            got = self._derived["tables"] = {fam: st.tables() for fam, st in self._states.items()}
        return got

    @property
    def frontend_names(self) -> tuple[str | None, ...]:
        """This engine's frontend kinds by code, which the ``frontend`` column of its batch
        results holds: :data:`FRONTEND_NAMES` (None, then kube-proxy's four: the same codes
        in every engine), then the kinds its plugins' Service types add, in the order the
        engine met them. Codes belong to the engine: another engine, with other plugins,
        gives other kinds these codes. Only grows (a code never changes its kind), by at
        most 127 kinds in all."""
        return tuple(self._kinds.names)

    @property
    def warnings(self) -> tuple[str, ...]:
        """The cluster's warnings, then the tables' (duplicate frontends, Maglev table sizes)."""
        got: tuple[str, ...] | None = self._derived.get("warnings")
        if got is None:
            got = self._derived["warnings"] = tuple(self.cluster.warnings) + tuple(
                w for fam in FAMILIES for w in self._states[fam].warnings()
            )
        return got

    def port_entry(self, family: Family, spn: str) -> PortEntry | None:
        """The tables' entry of one service port in one family (its plan port, records,
        pools and lookup tables), or None."""
        i = self._service_index.get(spn)
        return None if i is None else self._states[family].entries.get(i)

    def apply(self, objects: Iterable[Mapping[str, Any] | tuple[str, Mapping[str, Any]]]) -> ApplyResult:
        """Add, replace or delete objects (plain manifests, or watch events with
        ``type: ADDED|MODIFIED|DELETED``; each may be an ``(origin, object)`` pair, the
        origin naming it in errors); recompute only the affected service ports and
        change only their entries in the compiled tables (one publication per call).

        UDP flows whose endpoint is gone from its service are dropped, as kube-proxy's
        conntrack cleanup does; TCP and SCTP flows keep their endpoint until they time
        out, as their conntrack entries do (``stale_flows="all"`` drops those too);
        lookups running in other threads see, per packet, the old tables or the new
        ones, never a mix.
        """
        with self._lock, gc_paused():
            new_cluster, changes = apply_objects(self.cluster, objects, self.plugins)
            before = sum(len(st.entries) for st in self._states.values())
            # a refusal while planning (a plugin type's handler, the engine's own Node gone)
            # must leave the engine as it was: everything below that can refuse runs before
            # anything is changed, and what was set aside comes back if it does
            saved = (self.cluster, self.configs, self._zones, self._derived, self._states,
                     self._svc_ports, self._wide, len(self.service_ports))
            try:
                self.cluster = new_cluster
                self._zones = {}  # after the cluster: a zone built meanwhile from the old one is dropped
                self._derived = {}
                full = changes.all
                if full:
                    self.configs = {
                        fam: make_config(new_cluster, fam, self.node, **self._settings)  # type: ignore[arg-type]
                        for fam in FAMILIES
                    }
                    keys: list[tuple[str, str]] = sorted(new_cluster.services)
                    dropped = self._build_all()
                else:
                    keys, dropped = self._update(changes)
            except BaseException:
                (self.cluster, self.configs, self._zones, self._derived, self._states,
                 self._svc_ports, self._wide, n) = saved
                for info in self.service_ports[n:]:
                    self._service_index.pop(info.name, None)
                del self.service_ports[n:]
                self._kinds.truncate(self._kinds_loaded)  # kinds planned but never loaded
                raise
            after = sum(len(st.entries) for st in self._states.values())
            self.generation += 1
            self._applied.append((self.generation, tuple(keys), full))
            return ApplyResult(
                services=tuple(f"{ns}/{n}" for ns, n in keys),
                ports_before=before,
                ports_after=after,
                flows_dropped=dropped,
                full=full,
            )

    def changed_since(self, generation: int) -> set[tuple[str, str]] | None:
        """The (namespace, name) of every Service an apply recomputed after ``generation``
        (``self.generation`` then), or None when that is not known: an apply recomputed
        everything, or the log of the last APPLY_LOG applies does not reach back."""
        if generation == self.generation:
            return set()
        if generation < 0 or not self._applied or self._applied[0][0] > generation + 1:
            return None
        out: set[tuple[str, str]] = set()
        for gen, keys, full in self._applied:
            if gen > generation:
                if full:
                    return None
                out.update(keys)
        return out

    def _update(self, changes: Any) -> tuple[list[tuple[str, str]], int]:
        registry = self.plugins.registry
        touched = set(changes.services)
        wide = set(self._wide)
        for k in touched:  # the index of cluster-wide Services follows the changed ones
            svc = self.cluster.services.get(k)
            h = registry.get(svc.type) if svc is not None else None
            if h is not None and h.cluster_wide:
                wide.add(k)
            else:
                wide.discard(k)
        if touched:  # a cluster-wide type's answers may change with any Service
            touched |= wide
        keys = sorted(touched)
        # plan first: a refusal here changes nothing (apply restores the rest)
        planned = {fam: {key: self._entries(fam, key) for key in keys} for fam in FAMILIES}
        self._wide = wide
        nft = self.mode == "nftables"
        reload = nft and changes.service_cidrs
        if reload:
            for st in self._states.values():
                st.service_cidrs = self.service_cidrs
        specs: dict[Family, tuple[list[Any], list[int]]] = {}
        changed: set[int] = set()
        for fam in FAMILIES:
            state = self._states[fam]
            by_key = self._svc_ports[fam]
            updates: dict[int, PortEntry | None] = {}
            for key in keys:
                got = planned[fam][key]
                for i in by_key.pop(key, ()):
                    if i not in got:
                        updates[i] = None
                updates.update(got)
                if got:
                    by_key[key] = list(got)
            if nft and not reload:
                # nftables' cluster-ips-check holds every ClusterIP: a port added, removed or
                # moved to another address changes it, and it is loaded whole
                for i, e in updates.items():
                    old = state.entries.get(i)
                    if e is None or old is None or old.cluster_ip != e.cluster_ip:
                        reload = True
                        break
            entries, removed = state.set(updates)
            changed.update(updates)
            specs[fam] = ([port_spec(state, e) for e in entries], removed)
        for i in changed:
            info = self.service_ports[i]
            present = any(i in st.entries for st in self._states.values())
            if present != info.present:
                self.service_ports[i] = dataclasses.replace(info, present=present)
        if reload:
            return keys, self._load_all()
        names = [s.name for s in self.service_ports[self._names_loaded:]]
        kinds = self._kinds.names[self._kinds_loaded:]
        dropped: int = self._core.update_ports(*specs["IPv4"], *specs["IPv6"], names, kinds)
        self._names_loaded += len(names)
        self._kinds_loaded += len(kinds)
        return keys, dropped

    # ------------------------------------------------------------------ batches
    def lookup_batch(
        self,
        src: Any,
        dst: Any,
        dport: Any,
        proto: Any,
        sport: Any = None,
        now: float | npt.NDArray[np.float64] | None = None,
        track: bool = True,
    ) -> npt.NDArray[Any]:
        """Decide a batch of IPv4 packets (addresses as uint32, ports uint16, proto uint8).

        Returns a structured array (``OUT_DTYPE``): verdict (index into VERDICT_NAMES),
        service (index into ``service_ports``, -1 for none), frontend (index into this
        engine's :attr:`frontend_names`), ep_ip, ep_port, masq. ``track=False`` skips the
        flow and affinity tables (a pure function of the packet). ``now`` is the clock of
        their timeouts: one time for the batch (None: the wall clock) or a float64 array
        with each packet's own. The GIL is released.
        """
        cols = _columns(False, src, dst, dport, proto, sport)
        out = np.zeros(len(cols[2]), dtype=OUT_DTYPE)
        self._core.lookup_batch(*cols, out, now, 1 if track else 0)
        return out

    def lookup_batch6(
        self,
        src: Any,
        dst: Any,
        dport: Any,
        proto: Any,
        sport: Any = None,
        now: float | npt.NDArray[np.float64] | None = None,
        track: bool = True,
    ) -> npt.NDArray[Any]:
        """IPv6 batches: ``src``/``dst`` are (n, 16) uint8 arrays (network byte order)."""
        cols = _columns(True, src, dst, dport, proto, sport)
        out = np.zeros(len(cols[2]), dtype=OUT6_DTYPE)
        self._core.lookup_batch6(*cols, out, now, 1 if track else 0)
        return out

    # ------------------------------------------------------------------ views
    def trace(
        self,
        src: str,
        dst: str,
        dport: int,
        proto: str | int = "TCP",
        sport: int = 0,
        now: float | None = None,
        *,
        namespace: str | None = None,
    ) -> Any:
        """Explain one packet: chain path, candidates and probabilities, reasons (a Trace).

        ``dst`` may be a DNS name (``mynginx``, ``mynginx.default``, a full name): it is
        resolved first as a pod in ``namespace`` would (its search path and ndots:5; by
        default the namespace of the pod whose address ``src`` is, else ``default``), and the
        trace says how."""
        from .trace import trace_name, trace_packet

        try:
            ipaddress.ip_address(str(dst))
        except ValueError:
            if isinstance(dst, str) and dst.strip():
                return trace_name(self, src, dst, dport, proto, sport, now, namespace)
        return trace_packet(self, src, dst, dport, proto, sport, now)

    def dns_zone(
        self,
        zone: str = DEFAULT_ZONE,
        ttl: int = DEFAULT_TTL,
        *,
        pods: str = "disabled",
        endpoint_pod_names: bool = False,
    ) -> Zone:
        """The cluster DNS zone of this engine's cluster, as CoreDNS's ``kubernetes`` plugin
        serves it (built once per cluster state: :meth:`apply` makes the next call build
        the new one). See :mod:`kproxy_core.dns`."""
        key = (normalize(zone), ttl, pods, endpoint_pod_names)
        zones = self._zones
        z = zones.get(key)
        if z is None:
            z = zones[key] = build_zone(
                self.cluster, self.plugins.registry, zone, ttl, pods=pods, endpoint_pod_names=endpoint_pod_names
            )
        return z

    def resolve(
        self, name: str, rtype: str = "A", *, zone: str = DEFAULT_ZONE, ttl: int = DEFAULT_TTL
    ) -> Answer:
        """Answer a DNS question about the cluster zone offline, as CoreDNS would: Service
        and endpoint names, SRV, PTR, ``dns-version``, an ExternalName's CNAME (from the
        bundled plugin), plugin types' records. See :class:`kproxy_core.dns.Answer`."""
        return self.dns_zone(zone, ttl).resolve(name, rtype)

    @property
    def service_cidrs(self) -> tuple[str, ...]:
        """The service CIDRs for nftables' cluster-ips-check: ``service_cidrs=`` (kube-proxy's
        --service-cluster-ip-range) if given, else the cluster's ServiceCIDR objects."""
        flag = self._service_cidr_flag
        if flag:
            items = flag.split(",") if isinstance(flag, str) else list(flag)
            return tuple(c.strip() for c in items if c.strip())
        return tuple(c for fam in FAMILIES for c in self.cluster.service_cidrs_for(fam))

    @property
    def primary_family(self) -> Family:
        """The family of the node's first address (else of the first ClusterIP; else IPv4),
        like kube-proxy's primary proxier."""
        if self.node is not None:
            ips = self.cluster.nodes[self.node].ips()
            if ips:
                return "IPv6" if ":" in ips[0] else "IPv4"
        for svc in self.cluster.services.values():
            if svc.cluster_ips and not svc.headless:
                return "IPv6" if ":" in svc.cluster_ips[0] else "IPv4"
        return "IPv4"

    def render(
        self,
        mode: str | None = None,
        *,
        family: Family | None = None,
        format: str = "restore",
        with_jumps: bool = False,
        masquerade_bit: int = 14,
        random_fully: bool = False,
        nfacct: bool = False,
    ) -> str:
        """The rules kube-proxy writes for this node and family.

        ``mode``: "iptables" (the ``iptables-restore`` input; ``format="save"`` gives what
        ``iptables-save`` prints after the kernel round trip) or "nftables" (the ``nft -f``
        input; its base chains hook themselves, so it always loads as a working dataplane).
        ``family``: which proxier (default :attr:`primary_family`). ``with_jumps``
        (iptables): add the jumps from the built-in chains, so the text loads into an
        empty network namespace as a working dataplane.
        """
        from .render.iptables import IptablesOptions, render_iptables, to_iptables_save

        mode = mode or self.mode
        fam = family or self.primary_family
        if fam not in FAMILIES:
            raise ValueError(f"family must be IPv4 or IPv6, not {fam!r}")
        if format not in ("restore", "save"):
            raise ValueError(f"format must be 'restore' or 'save', not {format!r}")
        if mode == "nftables":
            from .render.nftables import NftablesOptions, render_nftables

            if format != "restore":
                raise ValueError("format='save' is for iptables; nftables text is what nft list prints")
            # element comments cut at the kernel's 128 bytes, as kube-proxy does since #139516
            nft = NftablesOptions(masquerade_bit=masquerade_bit, comment_limit=128)
            return render_nftables(self.plans[fam], nft, service_cidrs=self.service_cidrs)
        if mode != "iptables":
            raise ValueError(f"mode must be 'iptables' or 'nftables', not {mode!r}")
        opts = IptablesOptions(masquerade_bit=masquerade_bit, random_fully=random_fully, nfacct=nfacct)
        text = render_iptables(self.plans[fam], opts, with_jumps=with_jumps)
        return to_iptables_save(text, fam) if format == "save" else text

    def render_notes(self, family: Family | None = None) -> list[str]:
        """Where :meth:`render`'s rules cannot choose endpoints as the engine does (Maglev
        and source-hash selectors have no iptables or nftables equivalent), one line each."""
        from .render import selector_note

        plan = self.plans[family or self.primary_family]
        return [note for pp in plan.ports if (note := selector_note(pp)) is not None]

    def memory(self, *, model: bool = True) -> dict[str, int]:
        """Bytes held, by part: the core's ``frontends`` and ``nodeports`` hash tables,
        ``blocks`` (each service port's records, pools and selector data), ``index``,
        ``flows`` and ``affinity`` tables; ``model`` (the Cluster and the engine's
        per-port plan entries, measured by walking the Python objects once: O(objects),
        about a second per million; ``model=False`` skips it); and ``total``. Also
        ``service_ports`` and ``blocks_count``, to divide by."""
        out: dict[str, int] = dict(self._core.memory())
        out["model"] = deep_size((self.cluster, self._states, self._svc_ports, self._service_index,
                                  self.service_ports)) if model else 0
        out["total"] = sum(v for k, v in out.items() if k != "blocks_count")
        out["service_ports"] = sum(1 for s in self.service_ports if s.present)
        return out

    @property
    def flow_count(self) -> int:
        return int(self._core.flow_count())

    def clear_flows(self) -> None:
        """Forget every flow and affinity entry (as ``conntrack -F`` plus a fresh kube-proxy)."""
        self._core.clear()

    def service_index(self, name: str) -> int:
        from .errors import ServiceNotFoundError

        try:
            return self._service_index[name]
        except KeyError:
            raise ServiceNotFoundError(f"no service port named {name!r}") from None

    def decode(self, out: npt.NDArray[Any]) -> list[dict[str, Any]]:
        """Batch results of this engine as dicts (verdict/service/frontend names, endpoint
        "ip:port")."""
        from .addresses import join_host_port

        v6 = out.dtype == OUT6_DTYPE
        names = [s.name for s in self.service_ports]
        kinds = self._kinds.names
        rows = []
        for r in out:
            ep = None
            if r["verdict"] == 1:
                ip = (
                    str(ipaddress.IPv6Address(bytes(r["ep_ip"])))
                    if v6
                    else str(ipaddress.IPv4Address(int(r["ep_ip"])))
                )
                ep = join_host_port(ip, int(r["ep_port"]))
            rows.append({
                "verdict": VERDICTS[r["verdict"]],
                "service": names[r["service"]] if r["service"] >= 0 else None,
                "frontend": kinds[r["frontend"]],
                "endpoint": ep,
                "masquerade": bool(r["masq"]),
            })
        return rows


def deep_size(root: object) -> int:
    """Bytes of every Python object reachable from ``root`` (each counted once), without
    modules, classes and functions (shared with everything else)."""
    import gc
    import sys
    import types

    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    seen: set[int] = set()
    total = 0
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, np.ndarray) and obj.base is None:
            total += obj.nbytes
        stack.extend(gc.get_referents(obj))
    return total


def _check_texts(lists: bool = True, **options: Any) -> None:
    """Options that are None, a string or (``lists``) a list or tuple of strings: ValueError
    naming the option otherwise (an int once failed deep in the planning as a TypeError)."""
    for name, value in options.items():
        if value is None or isinstance(value, str):
            continue
        if lists and isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            continue
        what = "a string or a list of strings" if lists else "a string"
        raise ValueError(f"{name} must be {what}, not {value!r}")


def _columns(v6: bool, src: Any, dst: Any, dport: Any, proto: Any, sport: Any) -> tuple[Any, ...]:
    addr_dtype = np.uint8 if v6 else np.uint32
    s = _as(src, addr_dtype, "src")
    d = _as(dst, addr_dtype, "dst")
    dp = _as(dport, np.uint16, "dport")
    pr = _as(proto, np.uint8, "proto")
    sp = None if sport is None else _as(sport, np.uint16, "sport")
    n = len(dp)
    if v6:
        for name, a in (("src", s), ("dst", d)):
            if a.ndim != 2 or a.shape[1] != 16:
                raise PacketError(f"{name}: IPv6 addresses must be an (n, 16) uint8 array")
    for name, col in (("src", s), ("dst", d), ("proto", pr), ("sport", sp)):
        if col is not None and len(col) != n:
            raise PacketError(f"{name}: length {len(col)} differs from dport's {n}")
    return s, d, dp, pr, sp


def _as(x: Any, dtype: Any, name: str) -> npt.NDArray[Any]:
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise PacketError(f"{name}: not an array ({e})") from None
    if a.ndim == 0:  # len() of it was a TypeError
        raise PacketError(f"{name}: expected an array of packets, got a scalar")
    if a.dtype == dtype and a.flags.c_contiguous:
        return a
    if a.dtype.kind not in "ui":
        raise PacketError(f"{name}: expected integers, got {a.dtype}")
    info = np.iinfo(dtype)
    if a.size and (a.min() < info.min or a.max() > info.max):
        raise PacketError(f"{name}: values outside {info.min}..{info.max}")
    return np.ascontiguousarray(a, dtype=dtype)


def proto_number(proto: str | int) -> int:
    if isinstance(proto, int) and proto in (6, 17, 132):
        return proto
    if isinstance(proto, str) and proto.upper() in PROTO_NUMBERS:
        return PROTO_NUMBERS[proto.upper()]
    raise PacketError(f"protocol {proto!r} is not one of TCP, UDP, SCTP")

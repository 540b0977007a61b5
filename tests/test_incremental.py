"""Engine.apply() against a rebuild from scratch: a long-lived engine fed random sequences
of adds, replacements and deletions decides every packet as an engine built afresh on the
same objects, and its tracked flows survive or go as the new pools say.

Only self-agreement is possible here: the fresh engine is the oracle (test_differential,
the kube-proxy tables and the kernel tests vouch for it), and the twins must agree with
each other after the same history. Below the state machine: flows across single updates,
and refused applies that must leave the engine as it was (two strict xfails today)."""

from __future__ import annotations

import ipaddress
import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule
from k8s import ep, eport, lb, node, port, service, slice_
from test_differential import LB_RANGES, PROTOS, SELECTOR_TEXTS, _ip_arrays

import kproxy_core as kp
from kproxy_core.plugins import make_plugin_manager
from kproxy_core.servicetypes import ServiceTypeRegistry

# both, unless KPROXY_NO_EXTENSIONS says the compiled core is absent on purpose (a missing core fails)
IMPLS = [impl for impl in ("compiled", "python") if impl == "python" or not os.environ.get("KPROXY_NO_EXTENSIONS")]
FAMILIES = ("IPv4", "IPv6")
NS = "ns"
N_SVC = 5  # Services s0..s4; EndpointSlices may also point to s5, which never exists
PROTO_OF = ("TCP", "UDP", "SCTP")  # the usual protocol of port p0, p1, p2 (so slices mostly match)
SHARED_NODE_PORTS = (30000, 30001, 30002)  # drawn now and then: collisions are rejected
EXTERNAL_IPS = ("192.168.99.1", "192.168.99.2", "fd00:99::1", "fd00:99::2")  # shared: duplicates happen
LB_INGRESS: tuple[str | dict[str, Any], ...] = (
    "192.168.98.1", "192.168.98.2", "fd00:98::1", "203.0.113.77",
    {"ip": "192.168.97.1", "ipMode": "Proxy"}, {"hostname": "lb.example"})
BOX_IPS = ("192.0.2.1", "192.0.2.2", "2001:db8:2::1", "2001:db8:2::2")
BOX_IP, BOX_POLICY = "box.test/ip", "box.test/policy"
OWN_NODE = "n1"


# --------------------------------------------------------------------------- plugin types


class BoxType(kp.ServiceType):
    """A ClusterIP Service also reachable on the addresses of its box.test/ip annotation."""

    name = "Box"

    def frontends(self, service: kp.Service, port: kp.ServicePort, family: str,
                  cluster: kp.Cluster) -> Iterator[kp.FrontendSpec]:
        if service.cluster_ip_for(family) is None:  # type: ignore[arg-type]
            return
        policy = service.annotations.get(BOX_POLICY, "internal")
        for ip in service.annotations.get(BOX_IP, "").split(","):
            if ip and (":" in ip) == (family == "IPv6"):
                yield kp.FrontendSpec(ip, "Box", policy=policy)  # type: ignore[arg-type]


def ranked_vip(rank: int, family: str) -> str:
    return f"2001:db8:5100::{10 + rank:x}" if family == "IPv6" else f"198.51.100.{10 + rank}"


class RankedType(kp.ServiceType):
    """cluster_wide: the extra VIP is numbered by the Service's rank among all Services, so
    adding or deleting any Service moves the VIPs of the Ranked Services after it."""

    name = "Ranked"
    cluster_wide = True

    def frontends(self, service: kp.Service, port: kp.ServicePort, family: str,
                  cluster: kp.Cluster) -> Iterator[kp.FrontendSpec]:
        if service.cluster_ip_for(family) is None:  # type: ignore[arg-type]
            return
        rank = sorted(cluster.services).index(service.key)
        yield kp.FrontendSpec(ranked_vip(rank, family), "Ranked", policy="external")


class TypesPlugin:
    @kp.hookimpl
    def kproxy_register_service_types(self, registry: ServiceTypeRegistry) -> None:
        registry.register(BoxType())
        registry.register(RankedType())


PM = make_plugin_manager([TypesPlugin()], entry_points=False)


# --------------------------------------------------------------------------- objects

def sometimes(draw: Callable[..., Any], one_in: int) -> bool:
    """True about once in ``one_in`` draws; False is the simple case hypothesis shrinks to."""
    return bool(draw(st.integers(1, one_in)) == one_in)


def selector_annotations(draw: st.DrawFn, i: int) -> dict[str, str]:
    """kproxy-core.io/ endpoint selector annotations for s{i}, as test_differential's but
    rarer (weights that leave endpoints out make many pools empty)."""
    ann: dict[str, str] = {}
    if sometimes(draw, 2):
        ann["kproxy-core.io/selector"] = draw(st.sampled_from(SELECTOR_TEXTS))
    if sometimes(draw, 5):
        keys = [f"10.{k % 3}.{i}.{k + 1}" for k in range(4)] + [f"fd00:10::{i}:{k + 1}" for k in range(4)]
        chosen = draw(st.lists(st.sampled_from(keys), max_size=5, unique=True))
        ann["kproxy-core.io/weights"] = ",".join(f"{k}={draw(st.integers(0, 5))}" for k in chosen)
    if sometimes(draw, 6):
        ann["kproxy-core.io/maglev-table-size"] = draw(st.sampled_from(["3", "7", "251", "1021"]))
    if sometimes(draw, 4):
        ann["kproxy-core.io/maglev-seed"] = str(draw(st.integers(0, 2**64 - 1)))
    return ann


SERVICE_KINDS = ("ClusterIP", "ClusterIP", "NodePort", "NodePort", "LoadBalancer", "LoadBalancer", "Box", "Ranked",
                 "ExternalName", "headless")


@st.composite
def service_objs(draw: st.DrawFn, i: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(SERVICE_KINDS))
    typ = "ClusterIP" if kind == "headless" else kind
    host = i + 1
    if sometimes(draw, 6):
        host += 50  # readdressed
    if sometimes(draw, 12):
        host = draw(st.integers(1, N_SVC))  # maybe another Service's ClusterIP: rejected while it holds it
    v4, v6 = f"172.30.0.{host}", f"fd00:30::{host:x}"
    cips: list[str] = draw(st.sampled_from([[v4], [v6], [v4, v6], [v6, v4]]))
    if kind == "headless":
        cips = ["None"]
    elif kind == "ExternalName":
        cips = []
    with_np = typ == "NodePort" or (typ == "LoadBalancer" and draw(st.booleans()))
    ports = []
    for j in range(draw(st.integers(1, 3))):
        proto = draw(st.sampled_from(PROTOS)) if sometimes(draw, 4) else PROTO_OF[j]
        np_ = None
        if with_np:
            np_ = draw(st.sampled_from(SHARED_NODE_PORTS)) if sometimes(draw, 8) else 31000 + 10 * i + j
        ports.append(port(80 + j, f"p{j}", proto, node_port=np_))
    spec: dict[str, Any] = {}
    if kind == "ExternalName":
        spec["externalName"] = "db.example.com"
    elif kind != "headless":
        if typ in ("NodePort", "LoadBalancer"):
            spec["externalTrafficPolicy"] = "Local" if sometimes(draw, 3) else "Cluster"
        spec["internalTrafficPolicy"] = "Local" if sometimes(draw, 4) else "Cluster"
        if sometimes(draw, 4):
            spec["sessionAffinity"] = "ClientIP"
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": draw(st.integers(1, 50))}}
        if sometimes(draw, 3):
            spec["externalIPs"] = draw(st.lists(st.sampled_from(EXTERNAL_IPS), min_size=1, max_size=2, unique=True))
        if typ == "LoadBalancer":
            if not with_np:
                spec["allocateLoadBalancerNodePorts"] = False
            if draw(st.booleans()):
                spec["loadBalancerSourceRanges"] = draw(st.lists(st.sampled_from(LB_RANGES), min_size=1, max_size=3))
    svc = service(NS, f"s{i}", cips, ports, type=typ, **spec)
    ann = selector_annotations(draw, i) if kind not in ("ExternalName", "headless") else {}
    if kind == "Box":
        ann[BOX_IP] = ",".join(draw(st.lists(st.sampled_from(BOX_IPS), min_size=1, max_size=2, unique=True)))
        ann[BOX_POLICY] = draw(st.sampled_from(["internal", "external"]))
    svc["metadata"]["annotations"] = ann
    if typ == "LoadBalancer":
        lb(svc, *draw(st.lists(st.sampled_from(LB_INGRESS), max_size=3, unique_by=str)))
    return svc


@st.composite
def slice_objs(draw: st.DrawFn, i: int, part: str, svc: dict[str, Any] | None = None) -> dict[str, Any]:
    """EndpointSlice ``s{i}-{part}``: mostly for s{i}, now and then (relabelled) for
    another Service or for s5, which does not exist; slices a, b and c of one i draw
    from the same four addresses, so one endpoint is often listed in two slices. With
    ``svc``: for that Service, mostly of its families and protocols. Endpoint ports are
    8000 + j for port p{j} of every Service, so a shared address is a shared endpoint."""
    target = draw(st.integers(0, N_SVC)) if svc is None and sometimes(draw, 6) else i
    families = list(FAMILIES)
    protos = dict(enumerate(PROTO_OF))
    if svc is not None:
        families = sorted({"IPv6" if ":" in ip else "IPv4" for ip in svc["spec"].get("clusterIPs", [])}) or families
        protos = {int(p["name"][1:]): p["protocol"] for p in svc["spec"]["ports"]}
    fam = draw(st.sampled_from(families))
    eps = []
    keys: list[int] = []
    if not sometimes(draw, 8):
        keys = draw(st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True))
    if keys and sometimes(draw, 2):
        keys.append(4)  # one address any Service's slices may list: an endpoint of several Services
    hinted = sometimes(draw, 5)  # topology hints on every endpoint, or on none
    for k in keys:
        ip = f"10.{k % 3}.{i}.{k + 1}" if fam == "IPv4" else f"fd00:10::{i}:{k + 1}"
        if k == 4:
            ip = "10.9.9.9" if fam == "IPv4" else "fd00:10::9:9"
        ready = not sometimes(draw, 5)
        eps.append(ep(ip, draw(st.sampled_from(["n1", "n2", "n3", None])), ready=ready,
                      serving=ready or draw(st.booleans()), terminating=not ready and draw(st.booleans()),
                      zone_hints=draw(st.sampled_from([["za"], ["zb"]])) if hinted else None))
    names = draw(st.lists(st.sampled_from(sorted(protos)), min_size=1, max_size=3, unique=True))
    eports = [eport(8000 + j, f"p{j}", draw(st.sampled_from(PROTOS)) if sometimes(draw, 8) else protos.get(j, "TCP"))
              for j in names]
    return slice_(NS, f"s{target}", eps, eports, name=f"s{i}-{part}", family=fam)


@st.composite
def service_with_slices(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Service s{i} and one to three EndpointSlices that fit it (mostly)."""
    i = draw(st.integers(0, N_SVC - 1))
    svc = draw(service_objs(i))
    parts = draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=3, unique=True))
    return [svc, *(draw(slice_objs(i, part, svc)) for part in parts)]


@st.composite
def node_objs(draw: st.DrawFn, k: int) -> dict[str, Any]:
    """Node n{k} (n4 is not there at the start), readdressed or rezoned now and then."""
    v4 = f"192.168.0.{k + draw(st.sampled_from([0, 10]))}"
    v6 = f"fd00:1::{k + draw(st.sampled_from([0, 10])):x}"
    ips = draw(st.sampled_from([[v4, v6], [v4], [v6, v4], [v4, f"192.168.0.{k + 10}"]]))
    return node(f"n{k}", *dict.fromkeys(ips), pod_cidr=f"10.{k - 1}.0.0/24",
                zone=draw(st.sampled_from(["za", "zb", None])))


SERVICE_CIDRS = (["172.30.0.0/24", "fd00:30::/112"], ["172.30.0.0/25"], ["fd00:30::/112"],
                 ["172.30.0.0/24", "fd00:30::/120"], ["198.51.100.0/24", "2001:db8:5100::/120"])


def service_cidr(name: str, cidrs: list[str]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": name},
            "spec": {"cidrs": cidrs}}


@st.composite
def service_cidr_objs(draw: st.DrawFn) -> dict[str, Any]:
    """A ServiceCIDR (nftables' cluster-ips-check, when service_cidrs= is not given)."""
    return service_cidr(draw(st.sampled_from(["kubernetes", "extra"])), draw(st.sampled_from(SERVICE_CIDRS)))


@st.composite
def any_object(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["Service"] * 3 + ["EndpointSlice"] * 3 + ["Node", "ServiceCIDR"]))
    if kind == "Service":
        return draw(service_objs(draw(st.integers(0, N_SVC - 1))))
    if kind == "EndpointSlice":
        return draw(slice_objs(draw(st.integers(0, N_SVC - 1)), draw(st.sampled_from("abc"))))
    if kind == "ServiceCIDR":
        return draw(service_cidr_objs())
    return draw(node_objs(draw(st.integers(1, 4))))


def bad_object(draw: Callable[..., Any]) -> dict[str, Any]:
    """An object apply() must refuse on its own."""
    which = draw(st.sampled_from(["port", "type", "slice"]))
    if which == "port":
        return service(NS, f"s{draw(st.integers(0, N_SVC - 1))}", "172.30.0.1", [port(70000, "p0")])
    if which == "type":
        return service(NS, f"s{draw(st.integers(0, N_SVC - 1))}", "172.30.0.1", [port(80, "p0")], type="Nope")
    bad = slice_(NS, "s0", [ep("10.0.0.1")], [eport(8000, "p0")], name="s0-a")
    bad["endpoints"][0]["addresses"] = ["not-an-ip"]
    return bad


def key_of(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


OPTIONS = st.fixed_dictionaries({
    "node": st.sampled_from([OWN_NODE, None]),
    "mode": st.sampled_from(["iptables", "nftables"]),
    "cluster_cidr": st.sampled_from([None, "10.0.0.0/8,fd00:10::/64"]),
    "masquerade_all": st.sampled_from([False, False, True]),
    "nodeport_addresses": st.sampled_from([None, None, "192.168.0.0/24,fd00:1::/64"]),
    "seed": st.integers(0, 2**64 - 1),
    # nftables: --service-cluster-ip-range, or (None) the ServiceCIDR objects
    "service_cidrs": st.sampled_from(["172.30.0.0/24,fd00:30::/112", None]),
    # kube-proxy's cleanup (UDP flows only) or every flow to a gone endpoint
    "stale_flows": st.sampled_from(["udp", "all"]),
})


# --------------------------------------------------------------------------- packets


def _v6(a: str) -> bool:
    return ":" in a


VIPS = ([f"172.30.0.{h}" for h in (*range(1, N_SVC + 1), *range(51, N_SVC + 51))]
        + [f"fd00:30::{h:x}" for h in (*range(1, N_SVC + 1), *range(51, N_SVC + 51))]
        + list(EXTERNAL_IPS) + [i if isinstance(i, str) else i.get("ip", "") for i in LB_INGRESS]
        + list(BOX_IPS) + [ranked_vip(r, f) for r in range(N_SVC) for f in FAMILIES]
        + ["172.30.0.99", "8.8.8.8", "fd00:30::99", "2001:db8:ffff::1"])
VIPS = [a for a in VIPS if a]
# the own node's addresses before and after a readdressing, and another node's
NODE_ADDRS = ["192.168.0.1", "192.168.0.11", "192.168.0.2", "fd00:1::1", "fd00:1::b", "fd00:1::2"]
NODE_PORTS = sorted({31000 + 10 * i + j for i in range(N_SVC) for j in range(3)} | set(SHARED_NODE_PORTS) | {80, 9999})
# a pod, a node, clients inside and outside the load-balancer source ranges
SOURCES = {False: ["10.0.0.7", "192.168.0.2", "203.0.113.9", "198.18.0.1"],
           True: ["fd00:10::7", "fd00:1::2", "2001:db8::9", "2001:db8:ff::1"]}
HAIRPIN = {False: "10.1.0.2", True: "fd00:10::0:2"}  # an endpoint of s0, to s0's ClusterIPs
# tracked flows come only from these, so their flows and affinity never touch the stateless
# packets and traces above
FLOW_SOURCES = {False: ["10.0.0.8", "203.0.113.10"], True: ["fd00:10::8", "2001:db8::10"]}

Packet = tuple[str, str, int, str, int]


def universe(v6: bool) -> list[Packet]:
    """Every frontend any Service can have (present or gone), from every kind of source."""
    rng = random.Random(6 if v6 else 4)
    out: list[tuple[str, str, int, str]] = []
    services = [(p, pr) for p in (80, 81, 82) for pr in PROTOS] + [(9999, "TCP")]
    for dst in (a for a in VIPS if _v6(a) == v6):
        out += [(s, dst, p, pr) for s in SOURCES[v6] for p, pr in services]
    for dst in ("172.30.0.1", "172.30.0.51", "fd00:30::1", "fd00:30::33"):
        out += [(HAIRPIN[v6], dst, p, pr) for p, pr in services if _v6(dst) == v6]
    for dst in (a for a in NODE_ADDRS if _v6(a) == v6):
        out += [(s, dst, p, pr) for s in SOURCES[v6][:3] for p in NODE_PORTS for pr in PROTOS]
    lo = "::1" if v6 else "127.0.0.1"
    out += [(lo, lo, p, pr) for p in NODE_PORTS for pr in PROTOS]
    return [(*r, rng.randrange(1, 65536)) for r in out]


Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # src, dst, dport, proto, sport


def columns(rows: list[Packet], v6: bool) -> Columns:
    return _ip_arrays(rows, v6)  # type: ignore[return-value]


PACKETS = {v6: universe(v6) for v6 in (False, True)}
COLUMNS = {v6: columns(PACKETS[v6], v6) for v6 in (False, True)}


def batch(engine: kp.Engine, v6: bool) -> np.ndarray:
    lookup = engine.lookup_batch6 if v6 else engine.lookup_batch
    out: np.ndarray = lookup(*COLUMNS[v6], now=0.0, track=False)
    return out


def service_names(engine: kp.Engine, out: np.ndarray) -> np.ndarray:
    names = np.array([s.name for s in engine.service_ports] + [""], dtype=object)
    picked: np.ndarray = names[out["service"]]  # -1 (no service) is the ""
    return picked


def frontend_kinds(engine: kp.Engine, out: np.ndarray) -> np.ndarray:
    """The frontend kinds of batch results by name: codes are the engine's own (a plugin
    kind's code depends on when that engine first met it)."""
    picked: np.ndarray = np.array(engine.frontend_names, dtype=object)[out["frontend"]]
    return picked


def same_ep(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ip = (a["ep_ip"] == b["ep_ip"]) if a["ep_ip"].ndim == 1 else (a["ep_ip"] == b["ep_ip"]).all(axis=1)
    return ip & (a["ep_port"] == b["ep_port"])  # type: ignore[no-any-return]


def ep_is_src(out: np.ndarray, v6: bool) -> np.ndarray:
    src = COLUMNS[v6][0]
    return (out["ep_ip"] == src).all(axis=1) if v6 else out["ep_ip"] == src  # type: ignore[no-any-return]


def norm_ep(endpoint: tuple[str, int] | str | None) -> tuple[str, int] | None:
    if endpoint is None:
        return None
    if isinstance(endpoint, str):  # a trace's "ip:port" / "[ip]:port"
        host, _, p = endpoint.rpartition(":")
        return str(ipaddress.ip_address(host.strip("[]"))), int(p)
    return str(ipaddress.ip_address(endpoint[0])), int(endpoint[1])


def decoded(engine: kp.Engine, out: np.ndarray, i: int) -> dict[str, Any]:
    return engine.decode(out[i:i + 1])[0]


# --------------------------------------------------------------------------- the machine


class IncrementalEngine(RuleBasedStateMachine):
    """One long-lived engine per twin, fed through apply(); after every apply, an engine
    built afresh on the same objects is the oracle."""

    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.engines: dict[str, kp.Engine] = {}
        self.opts: dict[str, Any] = {}
        self.indices: dict[str, dict[str, int]] = {impl: {} for impl in IMPLS}
        # tracked flows: (v6, src, dst, dport, proto, sport) -> (service port, endpoint)
        self.flows: dict[tuple[Any, ...], tuple[str, tuple[str, int]]] = {}
        self.hits: list[tuple[bool, str, int, str]] = []
        self.steps = 0

    # ------------------------------------------------------------------ set-up
    @initialize(opts=OPTIONS, data=st.data())
    def start(self, opts: dict[str, Any], data: st.DataObject) -> None:
        self.opts = opts
        objects = {key_of(o): o for o in (data.draw(node_objs(k), label=f"n{k}") for k in (1, 2, 3))}
        if not sometimes(data.draw, 4):
            objects["ServiceCIDR", "", "kubernetes"] = service_cidr("kubernetes", list(SERVICE_CIDRS[0]))
        groups = [data.draw(service_with_slices()) for _ in range(data.draw(st.integers(1, 4), label="services"))]
        groups += [[data.draw(any_object())] for _ in range(data.draw(st.integers(0, 3), label="others"))]
        for group in groups:
            trial = {**objects, **{key_of(o): o for o in group}}
            if self._valid(trial):
                objects = trial
        self.objects = objects
        cluster = kp.Cluster.from_objects(list(objects.values()), plugins=PM)
        # a flow table far larger than the flows tracked here (no bucket ever fills), yet small:
        # the twins' load() walks the whole table
        self.engines = {impl: kp.Engine(cluster, impl=impl, plugins=PM, flow_capacity=1 << 14,
                                        affinity_capacity=1 << 10, **opts) for impl in IMPLS}
        self.check({})

    @staticmethod
    def _valid(objects: dict[tuple[str, str, str], dict[str, Any]]) -> bool:
        try:
            kp.Cluster.from_objects(list(objects.values()), plugins=PM)
        except kp.ManifestError:
            return False
        return True

    # ------------------------------------------------------------------ changes
    def change(self, draw: Callable[..., Any], form: str | None = None) -> dict[str, Any]:
        """One add/replace (plain object or ADDED/MODIFIED event) or one DELETED event."""
        if self.objects and sometimes(draw, 4):
            keys = sorted(k for k in self.objects if k != ("Node", "", self.opts["node"]))
            gone = [("Service", NS, f"s{i}") for i in range(N_SVC)] + [("Node", "", "n4"), ("ServiceCIDR", "", "extra")]
            kind, ns, name = draw(st.sampled_from(keys + gone))
            obj = self.objects.get((kind, ns, name)) or {
                "Node": node(name), "ServiceCIDR": service_cidr(name, [])}.get(kind) or service(
                ns, name, "None", [port(80, "p0")])
            return {"type": "DELETED", "object": obj}
        obj = draw(any_object())
        form = form or draw(st.sampled_from(["plain", "ADDED", "MODIFIED"]))
        return obj if form == "plain" else {"type": form, "object": obj}

    @rule(data=st.data())
    def apply_one(self, data: st.DataObject) -> None:
        self.apply([self.change(data.draw)])

    @rule(data=st.data())
    def apply_batch(self, data: st.DataObject) -> None:
        form = data.draw(st.sampled_from(["plain", "ADDED", "MODIFIED", None]), label="form")
        self.apply([self.change(data.draw, form) for _ in range(data.draw(st.integers(2, 6), label="n"))])

    @rule(data=st.data())
    def apply_service_with_slices(self, data: st.DataObject) -> None:
        form = data.draw(st.sampled_from(["plain", "ADDED", "MODIFIED"]), label="form")
        self.apply([o if form == "plain" else {"type": form, "object": o} for o in data.draw(service_with_slices())])

    @rule(data=st.data())
    def apply_node(self, data: st.DataObject) -> None:
        """A Node readdressed or rezoned, mostly the engine's own: everything may change."""
        obj = data.draw(node_objs(data.draw(st.sampled_from([1, 1, 2, 3, 4]), label="node")))
        self.apply([data.draw(st.sampled_from([obj, {"type": "MODIFIED", "object": obj}]), label="form")])

    @rule(data=st.data())
    def apply_with_a_bad_object(self, data: st.DataObject) -> None:
        items = [self.change(data.draw) for _ in range(data.draw(st.integers(0, 2), label="n"))]
        items.insert(data.draw(st.integers(0, len(items))), bad_object(data.draw))
        self.apply(items, bad=True)

    def apply(self, items: list[dict[str, Any]], bad: bool = False) -> None:
        self.steps += 1
        new = dict(self.objects)
        for item in items:
            if "type" in item:
                if item["type"] == "DELETED":
                    new.pop(key_of(item["object"]), None)
                else:
                    new[key_of(item["object"])] = item["object"]
            else:
                new[key_of(item)] = item
        rejected = bad or not self._valid(new)
        event(f"apply: {'refused' if rejected else 'accepted'}")
        results: dict[str, kp.ApplyResult] = {}
        for impl, engine in self.engines.items():
            ports_before = list(engine.service_ports)
            if rejected:
                with pytest.raises(kp.ManifestError):
                    engine.apply(items)
                assert engine.service_ports == ports_before, "a refused apply changed service_ports"
            else:
                results[impl] = engine.apply(items)
        if not rejected:
            self.objects = new
        self.check(results)

    # ------------------------------------------------------------------ flows
    @rule(data=st.data())
    def open_flows(self, data: st.DataObject) -> None:
        """Track new connections (track=1) to frontends that DNAT now; repeat some old ones."""
        picks: list[tuple[Any, ...]] = []
        for _ in range(data.draw(st.integers(1, 10), label="flows")):
            if self.flows and sometimes(data.draw, 4):
                picks.append(data.draw(st.sampled_from(sorted(self.flows))))
            elif self.hits:
                v6, dst, dport, proto = data.draw(st.sampled_from(self.hits))
                src = data.draw(st.sampled_from(FLOW_SOURCES[v6]))
                picks.append((v6, src, dst, dport, proto, data.draw(st.integers(1, 65535))))
        self.track(picks)

    def track(self, picks: list[tuple[Any, ...]]) -> None:
        for key in picks:
            _, src, dst, dport, proto, sport = key
            ds = [e.lookup(src, dst, dport, proto, sport=sport, now=0.0, track=1) for e in self.engines.values()]
            facts = [(d.verdict, d.service, d.frontend, d.endpoint, d.masquerade) for d in ds]
            assert all(f == facts[0] for f in facts), f"twins differ on a tracked flow {key}: {facts}"
            d = ds[0]
            if key in self.flows:
                assert (d.verdict, d.service, norm_ep(d.endpoint)) == ("DNAT", *self.flows[key]), (
                    f"tracked flow {key} lost its endpoint {self.flows[key]}: now {facts[0]}")
            elif d.verdict == "DNAT":
                ep_ = norm_ep(d.endpoint)
                assert d.service is not None and ep_ is not None
                self.flows[key] = (d.service, ep_)
        for impl, engine in self.engines.items():
            assert engine.flow_count == len(self.flows), (
                f"{impl}: flow_count {engine.flow_count}, but {len(self.flows)} tracked flows are live")

    def check_flows(self, fresh: kp.Engine, results: dict[str, kp.ApplyResult]) -> None:
        pools: dict[tuple[bool, str], set[tuple[str, int]]] = {}
        for fam in FAMILIES:
            for pp in fresh.plans[fam].ports:  # type: ignore[index]
                eps = {norm_ep((e.ip, e.port)) for e in (*pp.cluster, *pp.local)}
                pools[fam == "IPv6", pp.spn] = eps  # type: ignore[assignment]
        if results:
            gone = [k for k, (spn, e) in self.flows.items() if e not in pools.get((k[0], spn), set())
                    and (self.opts["stale_flows"] == "all" or str(k[4]).upper() in ("UDP", "17"))]
            for impl, res in results.items():
                assert res.flows_dropped == len(gone), (
                    f"{impl}: flows_dropped {res.flows_dropped}, expected {len(gone)}: {gone}")
            for k in gone:
                del self.flows[k]
            if gone:
                event("apply dropped tracked flows")
        for impl, engine in self.engines.items():
            assert engine.flow_count == len(self.flows), (
                f"{impl}: flow_count {engine.flow_count}, but {len(self.flows)} tracked flows are live")
            for key, (spn, e) in self.flows.items():
                _, src, dst, dport, proto, sport = key
                d = engine.lookup(src, dst, dport, proto, sport=sport, now=0.0, track=1)
                assert (d.verdict, d.service, norm_ep(d.endpoint)) == ("DNAT", spn, e), (
                    f"{impl}: tracked flow {key} to {spn} {e} after apply: {d.verdict} {d.service} {d.endpoint}")

    # ------------------------------------------------------------------ rules text
    @rule()
    def rules_text_agrees(self) -> None:
        cluster = kp.Cluster.from_objects(list(self.objects.values()), plugins=PM)
        fresh = kp.Engine(cluster, impl=IMPLS[0], plugins=PM, flow_capacity=64, affinity_capacity=64, **self.opts)
        for mode in ("iptables", "nftables"):
            for fam in FAMILIES:
                want = fresh.render(mode, family=fam)  # type: ignore[arg-type]
                for impl, engine in self.engines.items():
                    got = engine.render(mode, family=fam)  # type: ignore[arg-type]
                    assert got == want, f"{impl}: {mode} {fam} rules differ from a fresh engine's:\n" + _diff(want, got)

    # ------------------------------------------------------------------ the oracle
    def check(self, results: dict[str, kp.ApplyResult]) -> None:
        """Both long-lived twins against one engine built afresh (the compiled one when built:
        the twins agree, test_differential says so, and the Python twin is the slow part)."""
        cluster = kp.Cluster.from_objects(list(self.objects.values()), plugins=PM)
        oracle = kp.Engine(cluster, impl=IMPLS[0], plugins=PM, flow_capacity=64, affinity_capacity=64, **self.opts)
        rr = {fam == "IPv6": {pp.spn for pp in oracle.plans[fam].ports if pp.selector.kind == "round-robin"}  # type: ignore[index]
              for fam in FAMILIES}
        wants = {v6: batch(oracle, v6) for v6 in (False, True)}
        w_svcs = {v6: service_names(oracle, want) for v6, want in wants.items()}
        traces: dict[Packet, tuple[Any, Any]] = {}

        def oracle_trace(p: Packet) -> Any:
            if p not in traces:
                traces[p] = (oracle.trace(*p[:4], sport=p[4], now=0.0),
                             oracle.lookup(*p[:4], sport=p[4], now=0.0, track=0))
            return traces[p]

        twin_out: dict[bool, list[tuple[list[str], np.ndarray]]] = {False: [], True: []}
        for impl, engine in self.engines.items():
            for v6, want in wants.items():
                got = batch(engine, v6)
                twin_out[v6].append(([s.name for s in engine.service_ports], got))
                g_svc, w_svc = service_names(engine, got), w_svcs[v6]
                rr_rows = (want["verdict"] == 1) & np.isin(w_svc, list(rr[v6]))
                hairpin = ep_is_src(got, v6) | ep_is_src(want, v6)
                bad = ((got["verdict"] != want["verdict"]) | (g_svc != w_svc)
                       | (frontend_kinds(engine, got) != frontend_kinds(oracle, want))
                       | ((got["masq"] != want["masq"]) & ~(rr_rows & hairpin)) | (~same_ep(got, want) & ~rr_rows))
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    raise AssertionError(
                        f"{impl}: {int(bad.sum())} of {len(bad)} stateless lookups differ from a fresh engine's; "
                        f"first: {PACKETS[v6][i]}\n  long-lived: {decoded(engine, got, i)}\n"
                        f"  fresh:      {decoded(oracle, want, i)}\n{self.describe()}")
                for row in np.flatnonzero(rr_rows & (got["verdict"] == 1)):
                    pkt = PACKETS[v6][int(row)]
                    chosen = norm_ep(decoded(engine, got, int(row))["endpoint"])
                    pool = {norm_ep(c["endpoint"]) for c in oracle_trace(pkt)[0].candidates}
                    assert chosen in pool, f"{impl}: round-robin pick {chosen} for {pkt} is no candidate {pool}"
            self.check_traces(impl, engine, oracle_trace, wants, rr)
            present = {s.name for s in engine.service_ports if s.present}
            assert present == {s.name for s in oracle.service_ports}, (
                f"{impl}: present service ports {sorted(present)} != fresh {[s.name for s in oracle.service_ports]}")
            warnings = {w for w in engine.warnings if "appears more than once" not in w}
            assert warnings == set(oracle.warnings), (
                f"{impl}: warnings {sorted(warnings ^ set(oracle.warnings))} differ from a fresh engine's")
            for i, s in enumerate(engine.service_ports):
                assert self.indices[impl].setdefault(s.name, i) == i, f"{impl}: {s.name} moved to index {i}"
            if impl in results:
                assert results[impl].ports_after == sum(len(p.ports) for p in oracle.plans.values())
        # the twins had the same history (round-robin cursors included): the same answers
        for v6, outs in twin_out.items():
            for names, out in outs[1:]:
                assert names == outs[0][0], "the twins' service_ports differ"
                assert out.tobytes() == outs[0][1].tobytes(), f"the long-lived twins differ (IPv6: {v6})"
        self.hits = sorted({(v6, *PACKETS[v6][int(i)][1:4]) for v6, want in wants.items()
                            for i in np.flatnonzero(want["verdict"] == 1)})
        event(f"frontends that DNAT: {min(len(self.hits) // 10 * 10, 30)}+")
        self.check_flows(oracle, results)
        if len(self.flows) < 400:  # a new flow to every frontend, so that every pool has flows
            self.track([(v6, FLOW_SOURCES[v6][self.steps % 2], dst, dport, proto, 1 + self.steps)
                        for v6, dst, dport, proto in self.hits])

    def check_traces(self, impl: str, engine: kp.Engine, oracle_trace: Callable[[Packet], Any],
                     wants: dict[bool, np.ndarray], rr: dict[bool, set[str]]) -> None:
        """Traces (candidates, probabilities, chains, steps) and per-call lookups of a sample:
        one packet per frontend that hits, rotating over the sources, and a few misses."""
        rng = random.Random(self.steps)
        sample: list[tuple[bool, Packet]] = []
        for v6 in (False, True):
            hit = np.flatnonzero(wants[v6]["verdict"] != 0)
            by_frontend: dict[tuple[str, int, str], list[Packet]] = {}
            for i in hit:
                p = PACKETS[v6][int(i)]
                by_frontend.setdefault(p[1:4], []).append(p)
            groups = sorted(by_frontend)
            rng.shuffle(groups)
            sample += [(v6, rng.choice(by_frontend[g])) for g in groups[:12]]
            sample += [(v6, p) for p in rng.sample(PACKETS[v6], 2)]
        for v6, p in sample:
            t_got = engine.trace(*p[:4], sport=p[4], now=0.0)
            d_got = engine.lookup(*p[:4], sport=p[4], now=0.0, track=0)
            t_want, d_want = oracle_trace(p)
            if t_want.service in rr[v6] and t_want.verdict == "DNAT":
                keys = ("verdict", "service", "frontend", "candidates", "filtered")
                a, b = t_got.to_dict(), t_want.to_dict()
                assert {k: a[k] for k in keys} == {k: b[k] for k in keys}, (
                    f"{impl}: trace of {p} differs from a fresh engine's:\n{t_got}\n---\n{t_want}\n{self.describe()}")
                assert norm_ep(d_got.endpoint) in {norm_ep(c["endpoint"]) for c in t_want.candidates}
                assert (d_got.verdict, d_got.service, d_got.frontend) == (d_want.verdict, d_want.service,
                                                                           d_want.frontend)
            else:
                assert t_got.to_dict() == t_want.to_dict(), (
                    f"{impl}: trace of {p} differs from a fresh engine's:\n{t_got}\n---\n{t_want}\n{self.describe()}")
                assert (d_got.verdict, d_got.service, d_got.frontend, d_got.endpoint, d_got.masquerade) == (
                    d_want.verdict, d_want.service, d_want.frontend, d_want.endpoint, d_want.masquerade), (
                    f"{impl}: per-call lookup of {p}: {d_got}, fresh {d_want}")

    def describe(self) -> str:
        lines = [f"options: {self.opts}"]
        for (kind, _, name), o in sorted(self.objects.items()):
            if kind == "Service":
                spec = o["spec"]
                lines.append(f"  Service {name}: {spec['type']} {spec.get('clusterIPs', spec.get('clusterIP'))} "
                             f"ports {[(p['port'], p['protocol'], p.get('nodePort')) for p in spec['ports']]} "
                             f"ann {o['metadata'].get('annotations')}")
            elif kind == "EndpointSlice":
                eps = [e["addresses"][0] + "".join(k[0] for k, v in e["conditions"].items() if v)
                       + f"@{e.get('nodeName')}" for e in o["endpoints"]]
                lines.append(f"  EndpointSlice {name} -> {o['metadata']['labels']['kubernetes.io/service-name']}: "
                             f"{eps} ports "
                             f"{[(p['name'], p['protocol']) for p in o['ports']]}")
            elif kind == "ServiceCIDR":
                lines.append(f"  ServiceCIDR {name}: {o['spec']['cidrs']}")
            else:
                lines.append(f"  Node {name}: {[a['address'] for a in o['status']['addresses']]}")
        return "\n".join(lines)


def _diff(a: str, b: str) -> str:
    import difflib

    return "\n".join(difflib.unified_diff(a.splitlines(), b.splitlines(), "fresh", "long-lived", lineterm="", n=1))


TestIncrementalEngine = IncrementalEngine.TestCase
TestIncrementalEngine.settings = settings(
    max_examples=70, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# --------------------------------------------------------------------------- flows across updates

WEB_IPS = {"IPv4": "172.30.1.1", "IPv6": "fd00:30:1::1"}


def web_objs(eps4: Sequence[str], eps6: Sequence[str] = (), target: int = 8080, **spec: Any) -> list[dict[str, Any]]:
    return [
        node(OWN_NODE, "192.168.0.1", "fd00:1::1", pod_cidr="10.0.0.0/24"),
        node("n2", "192.168.0.2", "fd00:1::2"),
        service(NS, "web", [WEB_IPS["IPv4"], WEB_IPS["IPv6"]], [port(80, "http", node_port=30080),
                                                               port(53, "dns", "UDP")], type="NodePort", **spec),
        slice_(NS, "web", [ep(ip, "n2") for ip in eps4], [eport(target, "http"), eport(5353, "dns", "UDP")],
               name="web-v4"),
        slice_(NS, "web", [ep(ip, "n2") for ip in eps6], [eport(target, "http"), eport(5353, "dns", "UDP")],
               name="web-v6", family="IPv6"),
    ]


def api_objs(*eps: str, target: int = 8443) -> list[dict[str, Any]]:
    return [service(NS, "api", "172.30.1.2", [port(443, "https")]),
            slice_(NS, "api", [ep(ip) for ip in eps], [eport(target, "https")], name="api-1")]


FOUR = {"IPv4": [f"10.0.1.{i}" for i in range(1, 5)], "IPv6": [f"fd00:10::1:{i}" for i in range(1, 5)]}


def clients(family: str, n: int = 80, sport: int = 40000) -> list[tuple[str, int]]:
    return [(f"fd00:10::{i:x}" if family == "IPv6" else f"10.0.0.{i}", sport + i) for i in range(1, n + 1)]


def connect(engine: kp.Engine, who: list[tuple[str, int]], dst: str, dport: int, proto: str = "TCP",
            now: float = 0.0) -> list[tuple[str, int] | None]:
    """One tracked packet per client 5-tuple: the endpoint each goes to (None: no DNAT)."""
    return [engine.lookup(s, dst, dport, proto, sport=p, now=now).endpoint for s, p in who]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("proto", "dport"), [("TCP", 80), ("UDP", 53)])
def test_flows_to_staying_endpoints_survive_a_change_of_the_others(
        make_engine: Callable[..., kp.Engine], family: str, proto: str, dport: int) -> None:
    eps = FOUR[family]
    engine = make_engine([*web_objs(FOUR["IPv4"], FOUR["IPv6"]), *api_objs("10.0.2.1", "10.0.2.2")], node=OWN_NODE,
                         stale_flows="all")
    who = clients(family)
    before = connect(engine, who, WEB_IPS[family], dport, proto)
    api_before = connect(engine, clients("IPv4"), "172.30.1.2", 443)
    total = engine.flow_count
    assert total == 2 * len(who)
    # two endpoints go, two arrive, in one slice update
    new = [eps[0], eps[1], eps[0][:-1] + "5", eps[0][:-1] + "6"]
    v4, v6 = (new, FOUR["IPv6"]) if family == "IPv4" else (FOUR["IPv4"], new)
    gone = {eps[2], eps[3]}
    lost = [b for b in before if b is not None and b[0] in gone]
    assert 0 < len(lost) < len(before)  # the seed sends some flows to the leaving endpoints
    objs = web_objs(v4, v6)
    res = engine.apply([objs[3] if family == "IPv4" else objs[4]])
    assert res.flows_dropped == len(lost)
    assert res.services == ("ns/web",)
    assert engine.flow_count == total - len(lost)
    after = connect(engine, who, WEB_IPS[family], dport, proto, now=1.0)
    target = 8080 if dport == 80 else 5353
    for b, a in zip(before, after, strict=True):
        assert b is not None and a is not None
        if b[0] in gone:  # the next packet of a dropped flow picks a remaining endpoint
            assert a[0] in new and a[1] == target
        else:
            assert a == b
    assert engine.flow_count == total  # the dropped ones were opened again
    assert connect(engine, clients("IPv4"), "172.30.1.2", 443, now=1.0) == api_before


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("proto", "dport"), [("TCP", 80), ("UDP", 53)])
def test_by_default_only_udp_flows_leave_with_their_endpoint(
        make_engine: Callable[..., kp.Engine], family: str, proto: str, dport: int) -> None:
    """kube-proxy's conntrack cleanup deletes UDP entries to a gone endpoint; a TCP
    connection's entry stays, still DNATed to it, until it times out."""
    eps = FOUR[family]
    engine = make_engine(web_objs(FOUR["IPv4"], FOUR["IPv6"]), node=OWN_NODE)
    assert engine.stale_flows == "udp"
    who = clients(family)
    before = connect(engine, who, WEB_IPS[family], dport, proto)
    gone = {eps[2], eps[3]}
    lost = [b for b in before if b is not None and b[0] in gone]
    assert 0 < len(lost) < len(before)
    new = [eps[0], eps[1]]
    v4, v6 = (new, FOUR["IPv6"]) if family == "IPv4" else (FOUR["IPv4"], new)
    objs = web_objs(v4, v6)
    res = engine.apply([objs[3] if family == "IPv4" else objs[4]])
    assert res.flows_dropped == (len(lost) if proto == "UDP" else 0)
    after = connect(engine, who, WEB_IPS[family], dport, proto, now=1.0)
    for b, a in zip(before, after, strict=True):
        assert b is not None and a is not None
        if b[0] in gone and proto == "UDP":
            assert a[0] in new
        else:  # TCP keeps its (now gone) endpoint, as its conntrack entry does
            assert a == b
    # a new TCP connection goes to the endpoints that are left
    fresh = connect(engine, [(s, p + 1) for s, p in who], WEB_IPS[family], dport, proto, now=1.0)
    assert {f[0] for f in fresh if f} <= set(new)
    # once the TCP flows time out, their next packet picks again
    late = connect(engine, who, WEB_IPS[family], dport, proto, now=1.0 + 86401.0)
    assert {a[0] for a in late if a} <= set(new)


def test_stale_flows_is_checked(make_engine: Callable[..., kp.Engine]) -> None:
    with pytest.raises(ValueError, match="stale_flows must be one of udp, all, not 'tcp'"):
        make_engine(web_objs(FOUR["IPv4"]), stale_flows="tcp")


def test_flows_survive_unrelated_applies(make_engine: Callable[..., kp.Engine]) -> None:
    engine = make_engine([*web_objs(FOUR["IPv4"], FOUR["IPv6"]), *api_objs("10.0.2.1")], node=OWN_NODE)
    who4, who6 = clients("IPv4"), clients("IPv6")
    web4 = connect(engine, who4, WEB_IPS["IPv4"], 80)
    web6 = connect(engine, who6, WEB_IPS["IPv6"], 53, "UDP")
    n = engine.flow_count
    db = [service(NS, "db", "172.30.1.3", [port(5432, "pg")], type="NodePort"),
          slice_(NS, "db", [ep("10.0.3.1")], [eport(5432, "pg")], name="db-1")]
    steps: list[list[dict[str, Any]]] = [
        db,  # a new Service and its slice
        [{"type": "MODIFIED", "object": api_objs("10.0.2.1", "10.0.2.2")[1]}],  # another Service's endpoints
        [{"type": "MODIFIED", "object": service(NS, "api", "172.30.1.4", [port(443, "https")])}],  # readdressed
        [{"type": "DELETED", "object": db[0]}, {"type": "DELETED", "object": db[1]}],
        [node("n2", "192.168.0.12", "fd00:1::2", zone="za")],  # a Node: everything is recomputed
        [node(OWN_NODE, "192.168.0.11", "fd00:1::1", pod_cidr="10.0.0.0/24")],  # the own node, readdressed
        [node("n3", "192.168.0.3")],
        [{"type": "DELETED", "object": api_objs()[0]}],
    ]
    for change in steps:
        res = engine.apply(change)
        assert res.flows_dropped == 0, change
        assert engine.flow_count == n
        assert connect(engine, who4, WEB_IPS["IPv4"], 80, now=1.0) == web4, change
        assert connect(engine, who6, WEB_IPS["IPv6"], 53, "UDP", now=1.0) == web6, change
        assert engine.flow_count == n


def test_deleting_a_service_drops_its_flows(make_engine: Callable[..., kp.Engine]) -> None:
    objs = [*web_objs(FOUR["IPv4"], FOUR["IPv6"]), *api_objs("10.0.2.1", "10.0.2.2")]
    engine = make_engine(objs, node=OWN_NODE, stale_flows="all")
    who = clients("IPv4")
    connect(engine, who, WEB_IPS["IPv4"], 80)
    connect(engine, clients("IPv6"), WEB_IPS["IPv6"], 80)
    api = connect(engine, who, "172.30.1.2", 443)
    index = engine.service_index("ns/web:http")
    res = engine.apply([{"type": "DELETED", "object": objs[2]}])  # the Service; its slices stay, orphaned
    assert res.flows_dropped == 2 * len(who)
    assert engine.flow_count == len(who)
    assert not engine.service_ports[index].present
    assert {d.verdict for d in (engine.lookup(s, WEB_IPS["IPv4"], 80, sport=p, now=1.0) for s, p in who)} == {"PASS"}
    assert connect(engine, who, "172.30.1.2", 443, now=1.0) == api
    assert engine.flow_count == len(who)
    # back again: the same index, new flows
    res = engine.apply([objs[2]])
    assert res.flows_dropped == 0 and engine.service_index("ns/web:http") == index
    assert None not in connect(engine, who, WEB_IPS["IPv4"], 80, now=2.0)
    assert engine.flow_count == 2 * len(who)
    # its slices deleted: flows dropped, new packets rejected (no endpoints)
    res = engine.apply([{"type": "DELETED", "object": objs[3]}])
    assert res.flows_dropped == len(who) and engine.flow_count == len(who)
    d = engine.lookup(who[0][0], WEB_IPS["IPv4"], 80, sport=who[0][1], now=3.0)
    assert (d.verdict, d.service) == ("REJECT", "ns/web:http")


def test_a_new_target_port_drops_the_flows(make_engine: Callable[..., kp.Engine]) -> None:
    """An endpoint is its address and port: the same pods on a new port are new endpoints."""
    engine = make_engine(web_objs(FOUR["IPv4"]), node=OWN_NODE, stale_flows="all")
    who = clients("IPv4")
    connect(engine, who, WEB_IPS["IPv4"], 80)
    res = engine.apply([web_objs(FOUR["IPv4"], target=8081)[3]])
    assert res.flows_dropped == len(who) and engine.flow_count == 0
    assert {e[1] for e in connect(engine, who, WEB_IPS["IPv4"], 80, now=1.0) if e} == {8081}


def test_affinity_to_a_removed_endpoint_moves_the_client(make_engine: Callable[..., kp.Engine]) -> None:
    affinity: dict[str, Any] = {"sessionAffinity": "ClientIP",
                                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}
    engine = make_engine(web_objs(FOUR["IPv4"], **affinity), node=OWN_NODE, stale_flows="all")
    sticky = connect(engine, [("10.0.0.1", 1000 + i) for i in range(6)], WEB_IPS["IPv4"], 80)
    assert len(set(sticky)) == 1 and sticky[0] is not None
    left = [ip for ip in FOUR["IPv4"] if ip != sticky[0][0]]
    res = engine.apply([web_objs(left)[3]])
    assert res.flows_dropped == len(sticky)
    moved = connect(engine, [("10.0.0.1", 2000 + i) for i in range(6)], WEB_IPS["IPv4"], 80, now=1.0)
    assert len(set(moved)) == 1 and moved[0] is not None and moved[0][0] in left


def test_an_endpoint_of_two_services_leaves_one(make_engine: Callable[..., kp.Engine]) -> None:
    """One pod behind two Services: its flows through the one it leaves are dropped, its
    flows through the other stay (a flow's endpoint is looked up in its own service)."""
    shared, other = "10.0.1.1", "10.0.1.2"
    engine = make_engine([*web_objs([shared, other]), *api_objs(shared, target=8080)], node=OWN_NODE,
                         stale_flows="all")
    who = clients("IPv4")
    web = connect(engine, who, WEB_IPS["IPv4"], 80)
    api = connect(engine, who, "172.30.1.2", 443)
    assert set(api) == {(shared, 8080)} and 0 < web.count((shared, 8080)) < len(who)
    res = engine.apply([web_objs([other])[3]])  # the pod leaves web only
    assert res.flows_dropped == web.count((shared, 8080))
    assert connect(engine, who, "172.30.1.2", 443, now=1.0) == api
    assert set(connect(engine, who, WEB_IPS["IPv4"], 80, now=1.0)) == {(other, 8080)}
    res = engine.apply([api_objs(other, target=8080)[1]])  # and then api: its flows go too
    assert res.flows_dropped == len(who)


@pytest.mark.skipif(bool(os.environ.get("KPROXY_NO_EXTENSIONS")), reason="KPROXY_NO_EXTENSIONS is set")
def test_twins_drop_the_same_flows() -> None:
    """A run of endpoint-set changes A_k -> A_k+1 with flows open across them: the twins
    drop the same flows and send every packet to the same endpoint."""
    rng = random.Random(7)
    pool = [f"10.0.1.{i}" for i in range(1, 13)]
    sets = [sorted(rng.sample(pool, rng.randint(1, 8))) for _ in range(12)]
    cluster = kp.Cluster.from_objects([*web_objs(sets[0]), *api_objs("10.0.2.1")])
    engines = [kp.Engine(cluster, node=OWN_NODE, seed=99, impl=impl) for impl in ("compiled", "python")]
    who = clients("IPv4", n=60)
    dropped = 0
    for k, eps in enumerate(sets[1:], 1):
        answers = [connect(e, who[: 20 * (k % 3 + 1)], WEB_IPS["IPv4"], 80 if k % 2 else 53, "TCP" if k % 2 else "UDP",
                           now=float(k)) for e in engines]
        assert answers[0] == answers[1], k
        results = [e.apply([web_objs(eps)[3]]) for e in engines]
        assert results[0].flows_dropped == results[1].flows_dropped, (k, results)
        assert engines[0].flow_count == engines[1].flow_count
        dropped += results[0].flows_dropped
    assert dropped > 0


# --------------------------------------------------------------------------- refused applies


class OnlyOneType(kp.ServiceType):
    """cluster_wide, and refuses at plan time (not in validate) a second Service of its type."""

    name = "OnlyOne"
    cluster_wide = True

    def frontends(self, service: kp.Service, port: kp.ServicePort, family: str,
                  cluster: kp.Cluster) -> Iterator[kp.FrontendSpec]:
        mine = sorted(k for k, s in cluster.services.items() if s.type == self.name)
        if len(mine) > 1:
            raise kp.ManifestError(f"Service {service.ref}: spec.type: only one OnlyOne Service may exist")
        yield from ()


class OnlyOnePlugin:
    @kp.hookimpl
    def kproxy_register_service_types(self, registry: ServiceTypeRegistry) -> None:
        registry.register(OnlyOneType())


def assert_like_fresh(engine: kp.Engine, objects: list[dict[str, Any]], **opts: Any) -> None:
    fresh = kp.Engine(kp.Cluster.from_objects(objects, plugins=engine.plugins), impl=IMPLS[0],
                      plugins=engine.plugins, seed=engine.seed, **opts)
    for v6 in (False, True):
        got, want = batch(engine, v6), batch(fresh, v6)
        assert (service_names(engine, got) == service_names(fresh, want)).all()
        assert (frontend_kinds(engine, got) == frontend_kinds(fresh, want)).all()
        assert (got[["verdict", "ep_ip", "ep_port", "masq"]] == want[["verdict", "ep_ip", "ep_port", "masq"]]).all()


# Regression: apply() set engine.cluster before planning; a refusal while planning left the refused objects in.
def test_a_refusal_while_planning_changes_nothing(impl: str) -> None:
    pm = make_plugin_manager([OnlyOnePlugin()], entry_points=False)
    first = service(NS, "s0", "172.30.0.1", [port(80, "p0")], type="OnlyOne")
    objs = [node(OWN_NODE, "192.168.0.1"), first, slice_(NS, "s0", [ep("10.0.0.1")], [eport(8000, "p0")])]
    engine = kp.Engine(kp.Cluster.from_objects(objs, plugins=pm), node=OWN_NODE, impl=impl, plugins=pm, seed=1)
    before = engine.cluster
    second = service(NS, "s1", "172.30.0.2", [port(80, "p0")], type="OnlyOne")
    with pytest.raises(kp.ManifestError, match="only one OnlyOne"):
        engine.apply([second])
    # an unrelated change afterwards is accepted, and the refused Service never arrives
    moved = slice_(NS, "s0", [ep("10.0.0.2")], [eport(8000, "p0")])
    engine.apply([moved])  # raises now: the refused Service is still in engine.cluster
    assert engine.cluster.services.keys() == before.services.keys()
    assert_like_fresh(engine, [objs[0], first, moved], node=OWN_NODE)


# Regression: deleting the engine's own Node raised NodeNotFoundError after engine.cluster had lost the Node.
def test_deleting_the_own_node_changes_nothing_when_refused(make_engine: Callable[..., kp.Engine]) -> None:
    objs = web_objs(FOUR["IPv4"])
    engine = make_engine(objs, node=OWN_NODE)
    try:
        engine.apply([{"type": "DELETED", "object": objs[0]}])
    except kp.KproxyError:
        assert OWN_NODE in engine.cluster.nodes  # fails now: the Node is gone from the engine's cluster
        assert_like_fresh(engine, objs, node=OWN_NODE)
    else:
        pytest.fail("deleting the own Node was accepted: say what the engine is then, and pin it here")

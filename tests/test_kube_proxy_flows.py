"""kube-proxy's own packet-flow cases as the oracle for the plan, on both twins and in the kernel.

The cases are kube-proxy's ``runPacketFlowTests`` tables (pkg/proxy/iptables/proxier_test.go:
kubernetes/kubernetes @ 531be81208e2274ef42e72525a26610a9622bcdf, plus the functions only an
older copy of these tests has: danwinship/kubernetes pkg/proxy/iptables/rules_test.go @ 07fb8ceb,
a fork branch holding the file's 2023 tests), translated to manifests and ``cases.json`` in
tests/data/kube-proxy-flows/; its README says how a case maps to an Engine. Not our code: the
expectations were written by kube-proxy's authors against kube-proxy's rules.

Engine (both twins), one item per case, named by its function and its 1-based position there
(``TestNodePort-3``; ``-older`` marks the older copy's function of a name the current file also
has): the traced verdict and candidate set (probability > 0) equal ``output`` (``"ip:port, ..."``
is DNAT to exactly those; ``"REJECT"``/``"DROP"`` are verdicts; ``""`` and ``"ACCEPT"`` are PASS),
and ``Trace.masquerade`` equals ``masq``. A case of the README's known-difference kind (the
node's own packet to a non-local externalIP or LB IP of a Service without endpoints, REJECT in
kube-proxy's tracer but untouched in the kernel) must carry ``known_difference`` in cases.json;
it is then held to the kernel's behaviour (PASS), reported as KNOWN DIFFERENCE in the warnings
summary and left out of the count of agreeing cases. No case is of that kind today.

Kernel: one network-namespace topology (tests/netns.py) per test function serves all of its
runs. The node holds the Node's InternalIP and the run's ``local_addresses`` (changed between
runs), after two addresses of its own that no case uses (198.51.100.1, 2001:db8:ffff::1), so
MASQUERADE's rewrite is visible even to the node's own connections; endpoints are namespaces
behind it; pod-CIDR and external sources are namespaces too, and the node's own sources
(its addresses, loopback, an LB IP it holds for "same node to LB, SNATted to LB") connect from
the node. A sink owns every other destination, and the node answers on every port, so PASS is
an answer rather than a timeout. Each run's rules are loaded (iptables-restore; then, in a
second pass, ``nft -f``) and every case of the run is probed with real TCP/UDP: the verdict
(connected / refused / timeout / answered by the sink or the node), the endpoint reached (one
of ``output``) and the source the endpoint saw (the masquerade address iff ``masq``).

nftables mode runs the same cases where kube-proxy's expectation applies to it: NFTABLES.md §6
changes three kinds (localhost NodePorts never, so PASS; NodePorts only on the node's primary
address, so a secondary address PASSes; unknown ports on ClusterIPs REJECT), which the kernel
must then show. Not run in nftables: the IPv6 runs with default NodePort addresses, whose Node
object has no IPv6 InternalIP, so nftables' "primary" NodePort address is not defined
(TestNodePorts-22, -23, -25, -27, -28, -30).

Not expressible in the kernel (checked below against the rule that selects them):

- TestClusterIPGeneral-7 (SCTP): the probe client speaks TCP and UDP only.
- TestOnlyLocalNodePortsNoClusterCIDR-3, TestOnlyLocalNodePorts-3 (pod to 127.0.0.1): a pod's
  connection to a loopback address never leaves the pod (its own ``lo`` answers), so no packet
  reaches the node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import json
import re
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from netns import SINK_LABEL, Probe, Reply, Topology, TopologyError, unavailable_reason

import kproxy_core as kp

DATA = Path(__file__).parent / "data" / "kube-proxy-flows"
DOC: dict[str, Any] = json.loads((DATA / "cases.json").read_text())
CURRENT = "531be81208e2274ef42e72525a26610a9622bcdf"
OLDER_COPY = "07fb8ceb0fc1d962cc2a752b8239a3a0702a3601"  # danwinship/kubernetes pkg/proxy/iptables/rules_test.go
SPORT = int(DOC["sport"])

VERDICT_OF_OUTPUT = {"": "PASS", "ACCEPT": "PASS", "REJECT": "REJECT", "DROP": "DROP"}


class KnownDifference(UserWarning):
    """A kube-proxy case the README explains away (its tracer, not the kernel, says REJECT)."""


@dataclasses.dataclass(frozen=True)
class Flow:
    """One kube-proxy packet-flow case and the run (manifest, proxier settings) it belongs to."""

    id: str
    function: str
    commit: str | None
    run: str
    run_key: int  # runs in file order; one Engine and one rule set each
    manifest: str
    settings_json: str  # the Engine arguments: cases.json defaults updated by the run's settings
    name: str
    src: str
    dst: str
    dport: int
    proto: str
    output: str
    masq: bool
    known_difference: str | None

    @property
    def settings(self) -> dict[str, Any]:
        return dict(json.loads(self.settings_json))

    @property
    def verdict(self) -> str:
        return VERDICT_OF_OUTPUT.get(self.output, "DNAT")

    @property
    def candidates(self) -> frozenset[str]:
        if self.verdict != "DNAT":
            return frozenset()
        return frozenset(e.strip() for e in self.output.split(","))

    @property
    def family(self) -> str:
        return "IPv6" if ":" in self.dst else "IPv4"

    def __str__(self) -> str:
        return (f"{self.id} = {self.function} / {self.run or '-'} / {self.name!r}: "
                f"{self.src} -> {self.dst}:{self.dport}/{self.proto}; kube-proxy says "
                f"{self.output or 'PASS'!s}, masq {self.masq}")


def load_flows() -> list[Flow]:
    flows = []
    bases: set[str] = set()
    run_key = 0
    for fn in DOC["functions"]:
        base = fn["function"].split(" ")[0]
        if base in bases:  # the older copy's version of a function the current file has too
            base += "-older"
        bases.add(base)
        i = 0
        for run in fn["runs"]:
            settings = json.dumps({**DOC["defaults"], **run["settings"]}, sort_keys=True)
            for c in run["cases"]:
                i += 1
                flows.append(Flow(
                    id=f"{base}-{i}", function=fn["function"], commit=fn.get("commit"), run=run["run"],
                    run_key=run_key, manifest=run["manifest"], settings_json=settings, name=c["name"],
                    src=c["src"], dst=c["dst"], dport=int(c["dport"]), proto=c["proto"], output=c["output"],
                    masq=bool(c["masq"]), known_difference=c.get("known_difference"),
                ))
            run_key += 1
    return flows


FLOWS = load_flows()


@functools.cache
def objects(manifest: str) -> tuple[dict[str, Any], ...]:
    with (DATA / manifest).open() as fh:
        return tuple(o for o in yaml.safe_load_all(fh) if o)


@functools.cache
def cluster(manifest: str) -> kp.Cluster:
    return kp.load(str(DATA / manifest))


@functools.cache
def engine(manifest: str, settings_json: str, impl: str | None, mode: str = "iptables") -> kp.Engine:
    kw = json.loads(settings_json)
    kw["mode"] = mode
    if mode == "nftables":  # as kube-proxy's nftables test fake: so that cluster-ips-check exists
        kw["service_cidrs"] = ["172.30.0.0/16", "fd00:172:30::/112"]
    return kp.Engine(cluster(manifest), impl=impl, seed=7, **kw)


# --------------------------------------------------------------------------- addresses


def is_loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_loopback


def internal_ips(flow: Flow) -> set[str]:
    """The InternalIPs of the proxier's Node object."""
    node = flow.settings["node"]
    return {
        a["address"]
        for o in objects(flow.manifest)
        if o["kind"] == "Node" and o["metadata"]["name"] == node
        for a in o.get("status", {}).get("addresses", [])
        if a.get("type") == "InternalIP"
    }


def node_addresses(flow: Flow) -> set[str]:
    """The node's own non-loopback addresses in this run: InternalIPs and local_addresses."""
    return internal_ips(flow) | set(flow.settings.get("local_addresses") or [])


def is_local(flow: Flow, ip: str) -> bool:
    return is_loopback(ip) or ip in node_addresses(flow)


def services(flow: Flow) -> list[dict[str, Any]]:
    return [o for o in objects(flow.manifest) if o["kind"] == "Service"]


def external_frontends(flow: Flow) -> set[str]:
    """externalIPs and load-balancer ingress IPs of the run's Services."""
    out: set[str] = set()
    for s in services(flow):
        out.update(s["spec"].get("externalIPs") or [])
        out.update(i["ip"] for i in s.get("status", {}).get("loadBalancer", {}).get("ingress", []) if i.get("ip"))
    return out


def cluster_ips(flow: Flow) -> set[str]:
    return {ip for s in services(flow) for ip in s["spec"].get("clusterIPs") or [s["spec"]["clusterIP"]]}


def node_ports(flow: Flow) -> set[int]:
    return {int(p["nodePort"]) for s in services(flow) for p in s["spec"]["ports"] if p.get("nodePort")}


def is_known_difference(flow: Flow) -> bool:
    """The README's rule: kube-proxy's tracer runs filter KUBE-EXTERNAL-SERVICES for every
    packet, so the node's own packet to a non-local externalIP or load-balancer IP of a
    Service without endpoints reads REJECT there, where the kernel (that chain hangs off INPUT
    and FORWARD only) lets it leave unchanged."""
    return (
        flow.output == "REJECT"
        and is_local(flow, flow.src)
        and not is_local(flow, flow.dst)
        and flow.dst in external_frontends(flow)
    )


# --------------------------------------------------------------------------- the engine


def test_case_count() -> None:
    """All of cases.json is here: 292 cases of 18 functions (246 of 12 from the current file)."""
    assert len(DOC["functions"]) == 18
    assert len({f.function for f in FLOWS}) == 18
    assert len(FLOWS) == 292
    assert len({f.id for f in FLOWS}) == 292
    current = [f for f in FLOWS if f.commit == CURRENT]
    assert (len({f.function for f in current}), len(current)) == (12, 246)
    assert {f.commit for f in FLOWS} == {CURRENT, OLDER_COPY}
    assert DOC["source"]["commit"] == CURRENT
    known = [f.id for f in FLOWS if f.known_difference]
    recognised = [f.id for f in FLOWS if is_known_difference(f)]
    assert known == recognised, "mark every case of the README's known-difference kind in cases.json"
    print(f"{len(FLOWS) - len(known)} kube-proxy cases must agree; {len(known)} known differences: {known}")


@pytest.mark.parametrize("flow", [pytest.param(f, id=f.id) for f in FLOWS])
def test_kube_proxy_case(impl: str, flow: Flow) -> None:
    t = engine(flow.manifest, flow.settings_json, impl).trace(
        flow.src, flow.dst, flow.dport, flow.proto, sport=SPORT, now=0.0
    )
    got = (t.verdict, frozenset(c["endpoint"] for c in t.candidates if c["probability"] > 0), t.masquerade)
    if is_known_difference(flow) or flow.known_difference:
        assert flow.known_difference, f"{flow}\nis of the README's known-difference kind: mark it in cases.json"
        assert is_known_difference(flow), f"{flow}\nis marked known_difference but is not of that kind"
        warnings.warn(KnownDifference(f"KNOWN DIFFERENCE {flow}: {flow.known_difference}"), stacklevel=1)
        assert t.verdict == "PASS", f"{flow}\nthe kernel lets this packet leave unchanged\n{t}"
        return
    assert got == (flow.verdict, flow.candidates, flow.masq), f"{flow}\n{t}"


# --------------------------------------------------------------------------- the kernel

POD_CIDRS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00:10::/64"))
# The node's first addresses (what MASQUERADE picks); no case uses them. The IPv6 one comes first
# so that the node's own server listens on [::] (both families).
MASQ = {"IPv6": "2001:db8:ffff::1", "IPv4": "198.51.100.1"}
NODE_LABEL = "node"
PROBE_TIMEOUT = 1.0

# NFTABLES.md §6, as it changes kube-proxy's iptables expectations
NFT_LOCALHOST = "NFTABLES.md §6: localhost NodePorts never (the node's own socket answers)"
NFT_PRIMARY = "NFTABLES.md §6: default NodePort addresses are the node's primary IPs only"
NFT_UNKNOWN_PORT = "NFTABLES.md §6: unknown ports on ClusterIPs are rejected"
NFT_NO_PRIMARY = ("the Node has no InternalIP of this family: nftables' default ('primary') NodePort "
                  "address is undefined")


def source_role(flow: Flow) -> str:
    """Where the source lives: "node" (its addresses, loopback, or an address it holds to send
    to itself, as "same node to LB, SNATted to LB"), "pod" (the pod CIDRs) or "external"."""
    if is_local(flow, flow.src) or flow.src == flow.dst:
        return "node"
    if any(ipaddress.ip_address(flow.src) in net for net in POD_CIDRS):
        return "pod"
    return "external"


def not_expressible(flow: Flow) -> str | None:
    if flow.proto not in ("TCP", "UDP"):
        return f"{flow.proto}: the probe client speaks TCP and UDP only"
    if is_loopback(flow.dst) and source_role(flow) != "node":
        return "a pod's connection to a loopback address never leaves the pod"
    return None


def nft_expectation(flow: Flow) -> tuple[str, str] | None:
    """(kernel verdict, reason) where nftables mode differs from kube-proxy's iptables case;
    ("", reason) where nftables' answer is not defined."""
    nodeport = flow.dport in node_ports(flow) and is_local(flow, flow.dst)
    if flow.verdict == "DNAT" and is_loopback(flow.dst):
        return "PASS", NFT_LOCALHOST
    if nodeport and not flow.settings.get("nodeport_addresses") and not is_loopback(flow.dst):
        family_ips = {ip for ip in internal_ips(flow) if (":" in ip) == (flow.family == "IPv6")}
        if not family_ips:
            return "", NFT_NO_PRIMARY
        if flow.dst not in family_ips and flow.verdict == "DNAT":
            return "PASS", NFT_PRIMARY
    if flow.verdict == "PASS" and flow.dst in cluster_ips(flow):
        return "REJECT", NFT_UNKNOWN_PORT
    return None


KERNEL_FLOWS = [f for f in FLOWS if not_expressible(f) is None]
NFT_FLOWS = [f for f in KERNEL_FLOWS if (nft_expectation(f) or ("?", ""))[0] != ""]


def test_not_expressible_list() -> None:
    """The module docstring names exactly the cases the kernel cannot express."""
    documented = re.findall(r"^- (.*?) \(", __doc__ or "", flags=re.M)
    ids = [i for line in documented for i in line.split(", ")]
    assert sorted(ids) == sorted(f.id for f in FLOWS if not_expressible(f)), documented
    no_nft = [f.id for f in KERNEL_FLOWS if f not in NFT_FLOWS]
    assert no_nft == [f"TestNodePorts-{i}" for i in (22, 23, 25, 27, 28, 30)], no_nft


def kernel_verdict(r: Reply) -> str | None:
    if r.outcome == "connected":
        return "PASS" if str(r.endpoint).startswith((f"{SINK_LABEL}:", f"{NODE_LABEL}:")) else "DNAT"
    return {"refused": "REJECT", "timeout": "DROP"}.get(r.outcome)


@dataclasses.dataclass
class KernelOutcome:
    replies: list[Reply]
    masq_source: str
    rules: str  # the rule set loaded for this case's run (shown when the case fails)


class World:
    """One topology for all runs of one kube-proxy test function."""

    def __init__(self, flows: Sequence[Flow], tag: str) -> None:
        self.flows = list(flows)
        endpoints: dict[str, tuple[set[int], set[int]]] = {}
        for manifest in dict.fromkeys(f.manifest for f in flows):
            for o in objects(manifest):
                if o["kind"] != "EndpointSlice":
                    continue
                for e in o["endpoints"]:
                    tcp, udp = endpoints.setdefault(e["addresses"][0], (set(), set()))
                    for p in o["ports"]:
                        {"TCP": tcp, "UDP": udp}.get(p["protocol"], set()).add(int(p["port"]))
        # addresses the node holds in some run or phase: never the sink's (it would answer its
        # peer at such an address itself); where the node lacks one, a route via its dummy
        node_ever = {ip for f in flows for ip in node_addresses(f)} | {
            f.src for f in flows if source_role(f) == "node" and not is_loopback(f.src)}
        clients = {f.src for f in flows if source_role(f) != "node"}
        tcp = {f.dport for f in flows if f.proto == "TCP"} | {p for f in flows for p in node_ports(f)}
        udp = {f.dport for f in flows if f.proto == "UDP"}
        dsts = {f.dst for f in flows if not is_loopback(f.dst)} - set(endpoints) - clients
        # IPv6 destinations go via the dummy: the DNAT'd ones (ClusterIPs) need only a route
        sink = sorted(ip for ip in dsts - node_ever if ":" not in ip)
        via_node = sorted(ip for ip in dsts - set(sink) if not any(ip in internal_ips(f) for f in flows))
        self.topo = Topology([MASQ["IPv6"], MASQ["IPv4"]], tag=tag)
        self.node_extra: set[str] = set()
        try:
            hosts = {f"e{i}": (ip, "pod") for i, ip in enumerate(sorted(endpoints))}
            by_ip = {ip: name for name, (ip, _) in hosts.items()}
            for ip in sorted(clients - set(endpoints)):
                name = f"c{len(hosts)}"
                hosts[name] = (ip, "pod" if any(ipaddress.ip_address(ip) in n for n in POD_CIDRS) else "external")
                by_ip[ip] = name
            self.host_of = by_ip
            self.topo.add_hosts(hosts)
            for fam, ip in MASQ.items():
                probe_dst = next((h for h, _ in hosts.values() if (":" in h) == (fam == "IPv6")), None)
                if probe_dst:
                    picked = self.topo.source_address(probe_dst)
                    if picked != ip:
                        raise TopologyError(f"MASQUERADE would pick {picked}, not {ip}")
            self.topo.start_servers({by_ip[ip]: ports for ip, ports in endpoints.items()})
            if sink:
                self.topo.add_sink([f"{ip}/32" for ip in sink], tcp, udp)
            if via_node:
                self.topo.route_to_node(*(f"{ip}/{128 if ':' in ip else 32}" for ip in via_node))
            self.topo.start_servers({"node": (tcp, udp)}, label=NODE_LABEL)
        except BaseException:
            self.topo.close()
            raise

    def set_node_addresses(self, wanted: set[str]) -> None:
        """The node's addresses besides MASQ: exactly ``wanted`` (the run's, plus any a case sends from)."""
        drop = sorted(self.node_extra - wanted)
        if drop:
            self.topo.ip_batch(self.topo.node, [f"addr del {ip}/{128 if ':' in ip else 32} dev kp0" for ip in drop])
        add = sorted(wanted - self.node_extra)
        if add:
            self.topo.add_node_addresses(*add)
        self.node_extra = set(wanted)

    def load(self, flow: Flow, mode: str) -> str:
        e = engine(flow.manifest, flow.settings_json, None, mode)
        texts = []
        for family in ("IPv4", "IPv6"):
            if mode == "nftables":
                text = e.render("nftables", family=family)  # type: ignore[arg-type]
                table = "ip" if family == "IPv4" else "ip6"
                with contextlib.suppress(TopologyError):
                    self.topo.load_nft(f"delete table {table} kube-proxy\n")
                self.topo.load_nft(text)
            else:
                text = e.render("iptables", family=family, with_jumps=True)  # type: ignore[arg-type]
                self.topo.load_iptables(text, family)
            texts.append(text)
        return "\n".join(texts)

    def clear_iptables(self) -> None:
        for family in ("IPv4", "IPv6"):
            self.topo.load_iptables("*nat\nCOMMIT\n*filter\nCOMMIT\n", family)

    def run(self, mode: str, flows: Sequence[Flow]) -> dict[str, KernelOutcome]:
        out: dict[str, KernelOutcome] = {}
        runs: dict[int, list[Flow]] = {}
        for f in flows:
            runs.setdefault(f.run_key, []).append(f)
        for run_flows in runs.values():
            rules = self.load(run_flows[0], mode)
            phases: dict[frozenset[str], list[Flow]] = {}
            for f in run_flows:  # an address the node must hold only to send from it (src == dst)
                extra = {f.src} if source_role(f) == "node" and not is_local(f, f.src) else set()
                phases.setdefault(frozenset(extra), []).append(f)
            for extra, phase in phases.items():
                self.set_node_addresses(node_addresses(phase[0]) | extra)
                batches: dict[str, list[tuple[Flow, Probe]]] = {}
                for f in phase:
                    count = 4 if f.verdict == "DNAT" else 2
                    probe = Probe(f.dst, f.dport, f.proto, count=count, src=f.src,
                                  sport=self.topo.sports(count), timeout=PROBE_TIMEOUT)
                    host = "node" if source_role(f) == "node" else self.host_of[f.src]
                    batches.setdefault(host, []).append((f, probe))
                results = self.topo.probe({h: [p for _, p in items] for h, items in batches.items()})
                for h, items in batches.items():
                    for (f, _), replies in zip(items, results[h], strict=True):
                        out[f.id] = KernelOutcome(replies, MASQ[f.family], rules)
        return out

    def close(self) -> None:
        self.topo.close()


@dataclasses.dataclass
class KernelRun:
    outcomes: dict[tuple[str, str], KernelOutcome]  # (mode, case id) -> outcome
    seconds: float


@pytest.fixture(scope="module")
def kernel() -> Iterator[KernelRun]:
    """Every expressible case through iptables, then (same topologies) nftables."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    modes = ["iptables"] + (["nftables"] if shutil.which("nft") else [])
    started = time.monotonic()
    outcomes: dict[tuple[str, str], KernelOutcome] = {}
    by_function: dict[str, list[Flow]] = {}
    for f in KERNEL_FLOWS:
        by_function.setdefault(f.function, []).append(f)
    for i, flows in enumerate(by_function.values()):
        world = World(flows, tag=f"f{i}")
        try:
            for mode in modes:
                selected = flows if mode == "iptables" else [f for f in flows if f in NFT_FLOWS]
                for case_id, outcome in world.run(mode, selected).items():
                    outcomes[(mode, case_id)] = outcome
                if mode == "iptables":
                    world.clear_iptables()
        finally:
            world.close()
    yield KernelRun(outcomes, time.monotonic() - started)


def describe(replies: Sequence[Reply]) -> str:
    return "\n".join(f"  {r.outcome:9} {r.src}:{r.sport} -> {r.endpoint} saw {r.seen} {r.detail}".rstrip()
                     for r in replies)


def check_kernel(flow: Flow, outcome: KernelOutcome, verdict: str, masq: bool, note: str = "") -> None:
    replies = outcome.replies
    what = f"{flow}{note}\nkernel:\n{describe(replies)}\nrules loaded:\n{outcome.rules}"
    assert replies, what
    assert {kernel_verdict(r) for r in replies} == {verdict}, what
    if verdict != "DNAT":
        return
    assert {str(r.endpoint) for r in replies} <= flow.candidates, what
    seen = outcome.masq_source if masq else flow.src
    assert {r.seen for r in replies} == {seen}, what + f"\n(masquerade address {outcome.masq_source})"


@pytest.mark.slow
@pytest.mark.parametrize("flow", [pytest.param(f, id=f.id) for f in KERNEL_FLOWS])
def test_kernel_iptables(kernel: KernelRun, flow: Flow) -> None:
    outcome = kernel.outcomes[("iptables", flow.id)]
    if flow.known_difference:
        check_kernel(flow, outcome, "PASS", False, " (known difference: the kernel passes it)")
        return
    check_kernel(flow, outcome, flow.verdict, flow.masq)


@pytest.mark.slow
@pytest.mark.parametrize("flow", [pytest.param(f, id=f.id) for f in NFT_FLOWS])
def test_kernel_nftables(kernel: KernelRun, flow: Flow) -> None:
    if ("nftables", flow.id) not in kernel.outcomes:
        pytest.skip("nftables ('nft') is not installed")
    outcome = kernel.outcomes[("nftables", flow.id)]
    changed = nft_expectation(flow)
    if changed:
        check_kernel(flow, outcome, changed[0], False, f" ({changed[1]})")
    elif flow.known_difference:  # nftables rejects the node's own packet there (NFTABLES.md §6)
        check_kernel(flow, outcome, "REJECT", False)
    else:
        check_kernel(flow, outcome, flow.verdict, flow.masq)


@pytest.mark.slow
def test_kernel_wall_time(kernel: KernelRun) -> None:
    """All of it within the budget (about two minutes on two shared cores)."""
    print(f"kernel: {len(kernel.outcomes)} probes of {len(KERNEL_FLOWS)} cases in {kernel.seconds:.1f} s")
    assert kernel.seconds < 150

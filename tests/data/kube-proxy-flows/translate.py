"""Translation of kube-proxy's packet-flow tests (pkg/proxy/iptables/proxier_test.go) into
Kubernetes manifests (one YAML per function and cluster state) and cases.json.

Run it from anywhere: it writes next to itself. The Go helpers are mirrored one to one:
makeTestService -> svc(), makeTestEndpointSlice -> eps(), the test node -> NODE. Every case
keeps the Go test's own name, source, destination, port, protocol, output and masq.
"""
# ruff: noqa: E501  (rows mirror the Go test tables one to one)
import copy
import json
import os

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = "kubernetes/kubernetes"
PATH = "pkg/proxy/iptables/proxier_test.go"
COMMIT = "531be81208e2274ef42e72525a26610a9622bcdf"

# NewFakeProxier's world (constants at the top of proxier_test.go)
testNodeName = "test-node"
testNodeIP = "192.168.0.2"
testNodeIPAlt = "192.168.1.2"
testExternalIP = "192.168.99.11"
testNodeIPv6 = "2001:db8::1"
testNodeIPv6Alt = "2001:db8:1::2"
testExternalClient = "203.0.113.2"
testExternalClientBlocked = "203.0.113.130"

NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": testNodeName},
        "status": {"addresses": [{"type": "InternalIP", "address": testNodeIP}]}}

# NewFakeProxier: localDetector NewDetectLocalByCIDR("10.0.0.0/8") (IPv4) / "fd00:10::/64" (IPv6),
# localhostNodePorts true, nodePortAddresses nil (match all), masqueradeAll false; the fake
# network (and runPacketFlowTests' nodeIPs = testNodeIPs) make these addresses LOCAL besides
# the node IP and loopback.
DEFAULTS = {
    "node": testNodeName,
    "cluster_cidr": ["10.0.0.0/8", "fd00:10::/64"],
    "masquerade_all": False,
    "nodeport_addresses": None,
    "localhost_nodeports": True,
    "local_addresses": [testNodeIPAlt, testExternalIP, testNodeIPv6, testNodeIPv6Alt],
    "mode": "iptables",
}


def svc(ns, name, *, type=None, cluster_ip, ports, external_ips=None, lb_ips=None, etp=None,
        itp=None, hc=None, source_ranges=None, affinity=None, selector=None):
    """makeTestService(ns, name, func): only the fields the Go closure sets."""
    spec = {}
    if type:
        spec["type"] = type
    spec["clusterIP"] = cluster_ip
    spec["clusterIPs"] = [cluster_ip]
    spec["ipFamilies"] = ["IPv6" if ":" in cluster_ip else "IPv4"]
    if selector:
        spec["selector"] = selector
    spec["ports"] = []
    for p in ports:
        q = {"name": p.get("name", ""), "port": p["port"], "protocol": p.get("protocol", "TCP")}
        if p.get("nodePort"):
            q["nodePort"] = p["nodePort"]
        if p.get("targetPort") is not None:
            q["targetPort"] = p["targetPort"]
        spec["ports"].append(q)
    if external_ips:
        spec["externalIPs"] = list(external_ips)
    if etp:
        spec["externalTrafficPolicy"] = etp
    if itp:
        spec["internalTrafficPolicy"] = itp
    if hc:
        spec["healthCheckNodePort"] = hc
    if source_ranges:
        spec["loadBalancerSourceRanges"] = list(source_ranges)
    if affinity:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": affinity}}
    obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name},
           "spec": spec}
    if lb_ips:
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in lb_ips]}}
    return obj


def ep(ip, node=None, ready=None, serving=None, terminating=None):
    e = {"addresses": [ip]}
    cond = {}
    if ready is not None:
        cond["ready"] = ready
    if serving is not None:
        cond["serving"] = serving
    if terminating is not None:
        cond["terminating"] = terminating
    if cond:
        e["conditions"] = cond
    if node is not None:
        e["nodeName"] = node
    return e


def eps(ns, name, num, endpoints, ports, family="IPv4"):
    """makeTestEndpointSlice(ns, name, num, func); ports: (name, port, protocol)."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": ns, "name": f"{name}-{num}",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": family, "endpoints": endpoints,
            "ports": [{"name": n, "port": p, "protocol": pr} for n, p, pr in ports]}


def case(name, src, dst, dport, output="", masq=False, proto="TCP", **extra):
    c = {"name": name, "src": src, "dst": dst, "dport": dport, "proto": proto,
         "output": output, "masq": masq}
    c.update(extra)
    return c


functions = []   # [{function, commit, runs: [{run, manifest, settings, cases}]}]
manifests = {}   # file name -> list of objects


def add(function, runs, note=None, source=None):
    f = {"function": function, "repo": REPO, "path": PATH, "commit": COMMIT}
    f.update(source or {})
    f["runs"] = runs
    if note:
        f["note"] = note
    functions.append(f)


def run(manifest, objs, cases, name=None, settings=None):
    if manifest in manifests:
        assert manifests[manifest] == objs, manifest
    manifests[manifest] = objs
    r = {"run": name or "", "manifest": manifest, "settings": settings or {}, "cases": cases}
    return r


def out(*eps_):
    return ", ".join(eps_)


# ------------------------------------------------------------------ TestOverallIPTablesRules setup
overall = [
    NODE,
    svc("ns1", "svc1", cluster_ip="172.30.0.41", ports=[{"name": "p80", "port": 80}]),
    svc("ns2", "svc2", type="LoadBalancer", etp="Local", cluster_ip="172.30.0.42",
        ports=[{"name": "p80", "port": 80, "nodePort": 3001}], lb_ips=["1.2.3.4"],
        external_ips=["192.168.99.22"], hc=30000),
    svc("ns3", "svc3", type="NodePort", cluster_ip="172.30.0.43",
        ports=[{"name": "p80", "port": 80, "nodePort": 3003}]),
    svc("ns4", "svc4", type="NodePort", cluster_ip="172.30.0.44", external_ips=["192.168.99.33"],
        ports=[{"name": "p80", "port": 80, "targetPort": 80}]),
    svc("ns5", "svc5", type="LoadBalancer", etp="Cluster", cluster_ip="172.30.0.45",
        ports=[{"name": "p80", "port": 80, "nodePort": 3002}], lb_ips=["5.6.7.8"], hc=30000,
        source_ranges=[" 203.0.113.0/25"], affinity=10800),
    svc("ns6", "svc6", type="ClusterIP", cluster_ip="172.30.0.46",
        ports=[{"name": "p80", "port": 80, "targetPort": 80}]),
    eps("ns1", "svc1", 1, [ep("10.180.0.1")], [("p80", 80, "TCP")]),
    eps("ns2", "svc2", 1, [ep("10.180.0.2")], [("p80", 80, "TCP")]),
    eps("ns3", "svc3", 1, [ep("10.180.0.3")], [("p80", 80, "TCP")]),
    eps("ns4", "svc4", 1, [ep("10.180.0.4"), ep("10.180.0.5", testNodeName)], [("p80", 80, "TCP")]),
    eps("ns5", "svc5", 1, [ep("10.180.0.3")], [("p80", 80, "TCP")]),
]

# ------------------------------------------------------------------ TestTracePacket
add("TestTracePacket", [run("TestTracePacket.yaml", overall, [
    case("no match", "10.0.0.2", "10.0.0.3", 80, ""),
    case("single endpoint", "10.0.0.2", "172.30.0.41", 80, "10.180.0.1:80"),
    case("multiple endpoints", "10.0.0.2", "172.30.0.44", 80, "10.180.0.4:80, 10.180.0.5:80"),
    case("LOCAL, KUBE-MARK-MASQ", testNodeIP, "192.168.99.22", 80, "10.180.0.2:80", True),
    case("DROP", testExternalClient, "192.168.99.22", 80, "DROP"),
    case("ACCEPT (NodePortHealthCheck)", testNodeIP, testNodeIP, 30000, "ACCEPT"),
    case("REJECT", "10.0.0.2", "172.30.0.46", 80, "REJECT"),
])], note="TestTracePacket traces a static rule set; that set is what kube-proxy writes for the "
          "Services and EndpointSlices of TestOverallIPTablesRules (same chains, IPs and ports, minus "
          "the localhost-NodePort, affinity and nfacct rules that no case here touches), so those "
          "objects stand in for it.")

# ------------------------------------------------------------------ TestNoEndpointsReject
m = [NODE, svc("ns1", "svc1", type="LoadBalancer", cluster_ip="172.30.0.41",
               external_ips=["192.168.99.11"], ports=[{"name": "p80", "port": 80, "nodePort": 3001}],
               lb_ips=["1.2.3.4"])]
add("TestNoEndpointsReject", [run("TestNoEndpointsReject.yaml", m, [
    case("pod to cluster IP with no endpoints", "10.0.0.2", "172.30.0.41", 80, "REJECT"),
    case("external to external IP with no endpoints", testExternalClient, "192.168.99.11", 80, "REJECT"),
    case("pod to NodePort with no endpoints", "10.0.0.2", testNodeIP, 3001, "REJECT"),
    case("external to NodePort with no endpoints", testExternalClient, testNodeIP, 3001, "REJECT"),
    case("pod to LoadBalancer IP with no endpoints", "10.0.0.2", "1.2.3.4", 80, "REJECT"),
    case("external to LoadBalancer IP with no endpoints", testExternalClient, "1.2.3.4", 80, "REJECT"),
])])

# ------------------------------------------------------------------ TestClusterIPGeneral
m = [NODE,
     svc("ns1", "svc1", cluster_ip="172.30.0.41", ports=[{"name": "http", "port": 80}]),
     svc("ns2", "svc2", cluster_ip="172.30.0.42", ports=[
         {"name": "http", "port": 80},
         {"name": "https", "port": 443, "targetPort": 8443},
         {"name": "dns-udp", "port": 53, "protocol": "UDP"},
         {"name": "dns-tcp", "port": 53, "targetPort": 5353},
         {"name": "dns-sctp", "port": 53, "protocol": "SCTP"}]),
     eps("ns1", "svc1", 1, [ep("10.180.0.1", testNodeName)], [("http", 80, "TCP")]),
     eps("ns2", "svc2", 1, [ep("10.180.0.1", testNodeName), ep("10.180.2.1", "node2")],
         [("http", 80, "TCP"), ("https", 8443, "TCP"), ("dns-udp", 53, "UDP"),
          ("dns-tcp", 5353, "TCP"), ("dns-sctp", 53, "SCTP")])]
add("TestClusterIPGeneral", [run("TestClusterIPGeneral.yaml", m, [
    case("simple clusterIP", "10.180.0.2", "172.30.0.41", 80, "10.180.0.1:80", False),
    case("hairpin to cluster IP", "10.180.0.1", "172.30.0.41", 80, "10.180.0.1:80", True),
    case("clusterIP with multiple endpoints", "10.180.0.2", "172.30.0.42", 80, "10.180.0.1:80, 10.180.2.1:80"),
    case("clusterIP with TargetPort", "10.180.0.2", "172.30.0.42", 443, "10.180.0.1:8443, 10.180.2.1:8443"),
    case("clusterIP with TCP, UDP, and SCTP on same port (TCP)", "10.180.0.2", "172.30.0.42", 53,
         "10.180.0.1:5353, 10.180.2.1:5353", proto="TCP"),
    case("clusterIP with TCP, UDP, and SCTP on same port (UDP)", "10.180.0.2", "172.30.0.42", 53,
         "10.180.0.1:53, 10.180.2.1:53", proto="UDP"),
    case("clusterIP with TCP, UDP, and SCTP on same port (SCTP)", "10.180.0.2", "172.30.0.42", 53,
         "10.180.0.1:53, 10.180.2.1:53", proto="SCTP"),
    case("TCP-only port does not match UDP traffic", "10.180.0.2", "172.30.0.42", 80, "", proto="UDP"),
    case("svc1 does not accept svc2's ports", "10.180.0.2", "172.30.0.41", 443, ""),
])])

# ------------------------------------------------------------------ TestLoadBalancer
m = [NODE,
     svc("ns1", "svc1", type="LoadBalancer", cluster_ip="172.30.0.41",
         ports=[{"name": "p80", "port": 80, "nodePort": 3001}], lb_ips=["1.2.3.4", "5.6.7.8"],
         source_ranges=["192.168.0.0/24", " 203.0.113.0/25"]),
     eps("ns1", "svc1", 1, [ep("10.180.0.1")], [("p80", 80, "TCP")])]
e = "10.180.0.1:80"
add("TestLoadBalancer", [run("TestLoadBalancer.yaml", m, [
    case("pod to cluster IP", "10.0.0.2", "172.30.0.41", 80, e, False),
    case("external to nodePort", testExternalClient, testNodeIP, 3001, e, True),
    case("nodePort bypasses LoadBalancerSourceRanges", testExternalClientBlocked, testNodeIP, 3001, e, True),
    case("accepted external to LB1", testExternalClient, "1.2.3.4", 80, e, True),
    case("accepted external to LB2", testExternalClient, "5.6.7.8", 80, e, True),
    case("blocked external to LB1", testExternalClientBlocked, "1.2.3.4", 80, "DROP"),
    case("blocked external to LB2", testExternalClientBlocked, "5.6.7.8", 80, "DROP"),
    case("pod to LB1 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", "1.2.3.4", 80, "DROP"),
    case("pod to LB2 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", "5.6.7.8", 80, "DROP"),
    case("node to LB1 (allowed by LoadBalancerSourceRanges)", testNodeIP, "1.2.3.4", 80, e, True),
    case("node to LB2 (allowed by LoadBalancerSourceRanges)", testNodeIP, "5.6.7.8", 80, e, True),
    case("same node to LB1, SNATted to LB1 (implicitly allowed)", "1.2.3.4", "1.2.3.4", 80, e, True),
    case("same node to LB2, SNATted to LB2 (implicitly allowed)", "5.6.7.8", "5.6.7.8", 80, e, True),
])])

# ------------------------------------------------------------------ TestNodePorts
np_runs = []
for (tname, fam, lnp, npa, allow_alt) in [
    ("ipv4, localhost-nodeports enabled", 4, True, None, True),
    ("ipv4, localhost-nodeports disabled", 4, False, None, True),
    ("ipv4, localhost-nodeports disabled, localhost in nodeport-addresses", 4, False,
     ["192.168.0.0/24", "127.0.0.1/32"], False),
    ("ipv4, localhost-nodeports enabled, multiple nodeport-addresses", 4, False,
     ["192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"], True),
    ("ipv6, localhost-nodeports enabled", 6, True, None, True),
    ("ipv6, localhost-nodeports disabled", 6, False, None, True),
    ("ipv6, localhost-nodeports disabled, multiple nodeport-addresses", 6, False,
     ["192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"], False),
]:
    if fam == 4:
        svc_ip, ep1, ep2 = "172.30.0.41", "10.180.0.1", "10.180.2.1"
        pod, ext, nip, alt, lo = "10.0.0.2", testExternalClient, testNodeIP, testNodeIPAlt, "127.0.0.1"
        o = f"{ep1}:80, {ep2}:80"
        fname = "TestNodePorts-ipv4.yaml"
    else:
        svc_ip, ep1, ep2 = "fd00:172:30::41", "fd00:10:180::1", "fd00:10:180::2:1"
        pod, ext, nip, alt, lo = "fd00:10::2", "2600:5200::1", testNodeIPv6, testNodeIPv6Alt, "::1"
        o = f"[{ep1}]:80, [{ep2}]:80"
        fname = "TestNodePorts-ipv6.yaml"
    m = [NODE,
         svc("ns1", "svc1", type="NodePort", cluster_ip=svc_ip,
             ports=[{"name": "p80", "port": 80, "nodePort": 3001}]),
         eps("ns1", "svc1", 1, [ep(ep1), ep(ep2, testNodeName)], [("p80", 80, "TCP")],
             family=f"IPv{fam}")]
    cs = [
        case("pod to cluster IP", pod, svc_ip, 80, o, False),
        case("external to nodePort", ext, nip, 3001, o, True),
        case("node to nodePort", nip, nip, 3001, o, True),
    ]
    if fam == 4 and lnp:
        cs.append(case("localhost to nodePort gets masqueraded", lo, lo, 3001, o, True))
    else:
        cs.append(case("localhost to nodePort is ignored", lo, lo, 3001, ""))
    if allow_alt:
        cs.append(case("external to nodePort on secondary IP", ext, alt, 3001, o, True))
    else:
        cs.append(case("secondary nodeIP ignores NodePorts", ext, alt, 3001, ""))
    st = {"localhost_nodeports": lnp}
    if npa is not None:
        st["nodeport_addresses"] = npa
    np_runs.append(run(fname, m, cs, name=tname, settings=st))
add("TestNodePorts", np_runs)

# ------------------------------------------------------------------ TestHealthCheckNodePort
m = [NODE, svc("ns1", "svc1", type="LoadBalancer", cluster_ip="172.30.0.42",
               ports=[{"name": "p80", "port": 80, "nodePort": 3001}], hc=30000, etp="Local")]
st = {"nodeport_addresses": ["127.0.0.0/8"]}
add("TestHealthCheckNodePort", [
    run("TestHealthCheckNodePort.yaml", m, [
        case("firewall accepts HealthCheckNodePort", "1.2.3.4", testNodeIP, 30000, "ACCEPT", False),
    ], name="service present", settings=st),
    run("TestHealthCheckNodePort--deleted.yaml", [NODE], [
        case("HealthCheckNodePort no longer has any rule", "1.2.3.4", testNodeIP, 30000, ""),
    ], name="after OnServiceDelete", settings=st),
])

# ------------------------------------------------------------------ TestExternalTrafficPolicyLocal / Cluster
for pol in ("Local", "Cluster"):
    m = [NODE,
         svc("ns1", "svc1", type="LoadBalancer", etp=pol, cluster_ip="172.30.0.41",
             external_ips=["192.168.99.11"],
             ports=[{"name": "p80", "port": 80, "nodePort": 3001, "targetPort": 80}],
             hc=30000 if pol == "Local" else None, lb_ips=["1.2.3.4"]),
         eps("ns1", "svc1", 1, [ep("10.180.0.1"), ep("10.180.2.1", testNodeName)], [("p80", 80, "TCP")])]
    both = "10.180.0.1:80, 10.180.2.1:80"
    if pol == "Local":
        cs = [
            case("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", "172.30.0.41", 80, both, False),
            case("pod to external IP hits both endpoints, unmasqueraded", "10.0.0.2", "192.168.99.11", 80, both, False),
            case("external to external IP hits only local endpoint, unmasqueraded", testExternalClient, "192.168.99.11", 80, "10.180.2.1:80", False),
            case("pod to LB IP hits only both endpoints, unmasqueraded", "10.0.0.2", "1.2.3.4", 80, both, False),
            case("external to LB IP hits only local endpoint, unmasqueraded", testExternalClient, "1.2.3.4", 80, "10.180.2.1:80", False),
            case("pod to NodePort hits both endpoints, unmasqueraded", "10.0.0.2", testNodeIP, 3001, both, False),
            case("external to NodePort hits only local endpoint, unmasqueraded", testExternalClient, testNodeIP, 3001, "10.180.2.1:80", False),
        ]
    else:
        cs = [
            case("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", "172.30.0.41", 80, both, False),
            case("pod to external IP hits both endpoints, masqueraded", "10.0.0.2", "192.168.99.11", 80, both, True),
            case("external to external IP hits both endpoints, masqueraded", testExternalClient, "192.168.99.11", 80, both, True),
            case("pod to LB IP hits both endpoints, masqueraded", "10.0.0.2", "1.2.3.4", 80, both, True),
            case("external to LB IP hits both endpoints, masqueraded", testExternalClient, "1.2.3.4", 80, both, True),
            case("pod to NodePort hits both endpoints, masqueraded", "10.0.0.2", testNodeIP, 3001, both, True),
            case("external to NodePort hits both endpoints, masqueraded", testExternalClient, testNodeIP, 3001, both, True),
        ]
    add(f"TestExternalTrafficPolicy{pol}", [run(f"TestExternalTrafficPolicy{pol}.yaml", m, cs)])

# ------------------------------------------------------------------ TestInternalTrafficPolicy
itp_runs = []
for i, (tname, itp, endpoints, flows) in enumerate([
    ("internalTrafficPolicy is cluster", "Cluster",
     [("10.0.1.1", testNodeName), ("10.0.1.2", "node1"), ("10.0.1.3", "node2")],
     [case("pod to ClusterIP hits all endpoints", "10.0.0.2", "172.30.1.1", 80,
           "10.0.1.1:80, 10.0.1.2:80, 10.0.1.3:80", False)]),
    ("internalTrafficPolicy is local and there is one local endpoint", "Local",
     [("10.0.1.1", testNodeName), ("10.0.1.2", "node1"), ("10.0.1.3", "node2")],
     [case("pod to ClusterIP hits only local endpoint", "10.0.0.2", "172.30.1.1", 80, "10.0.1.1:80", False)]),
    ("internalTrafficPolicy is local and there are multiple local endpoints", "Local",
     [("10.0.1.1", testNodeName), ("10.0.1.2", testNodeName), ("10.0.1.3", "node2")],
     [case("pod to ClusterIP hits all local endpoints", "10.0.0.2", "172.30.1.1", 80,
           "10.0.1.1:80, 10.0.1.2:80", False)]),
    ("internalTrafficPolicy is local and there are no local endpoints", "Local",
     [("10.0.1.1", "node0"), ("10.0.1.2", "node1"), ("10.0.1.3", "node2")],
     [case("no endpoints", "10.0.0.2", "172.30.1.1", 80, "DROP")]),
], 1):
    s = svc("ns1", "svc1", cluster_ip="172.30.1.1", selector={"foo": "bar"},
            ports=[{"name": "", "port": 80}], itp=itp)
    sl = eps("ns1", "svc1", 1, [ep(a, n, ready=True) for a, n in endpoints], [("", 80, "TCP")])
    itp_runs.append(run(f"TestInternalTrafficPolicy--{i}.yaml", [NODE, s, sl], flows, name=tname))
    itp_runs.append(run(f"TestInternalTrafficPolicy--{i}-deleted.yaml", [NODE, s], [
        case("endpoints deleted", "10.0.0.2", "172.30.1.1", 80, "REJECT")],
        name=tname + " (after OnEndpointSliceDelete)"))
add("TestInternalTrafficPolicy", itp_runs)

# ------------------------------------------------------------------ TestTerminatingEndpointsTrafficPolicy{Local,Cluster}
def term_svc(pol):
    # Spec.Ports has no NodePort (0): kube-proxy writes no NodePort rule for it
    return svc("ns1", "svc1", type="LoadBalancer", etp=pol, cluster_ip="172.30.1.1",
               ports=[{"name": "", "port": 80, "targetPort": 80}], hc=30000, lb_ips=["1.2.3.4"])


def term_slice(endpoints):
    return eps("ns1", "svc1", 1, endpoints, [("", 80, "TCP")])


R = dict(ready=True, serving=True, terminating=False)
ST = dict(ready=False, serving=True, terminating=True)     # serving, terminating
NS = dict(ready=False, serving=False, terminating=True)    # neither ready nor serving
after = [case("pod to clusterIP after endpoints deleted", "10.0.0.2", "172.30.1.1", 80, "REJECT"),
         case("external to LB after endpoints deleted", testExternalClient, "1.2.3.4", 80, "REJECT")]

local_tests = [
    ("ready endpoints exist",
     [ep("10.0.1.1", testNodeName, **R), ep("10.0.1.2", testNodeName, **R), ep("10.0.1.3", testNodeName, **ST),
      ep("10.0.1.4", testNodeName, **NS), ep("10.0.1.5", "node-1", **R)],
     [case("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80", False),
      case("external to LB", testExternalClient, "1.2.3.4", 80, "10.0.1.1:80, 10.0.1.2:80", False)]),
    ("only terminating endpoints exist",
     [ep("10.0.1.2", testNodeName, **ST), ep("10.0.1.3", testNodeName, **ST), ep("10.0.1.4", testNodeName, **NS),
      ep("10.0.1.5", "node-1", **R)],
     [case("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, "10.0.1.5:80", False),
      case("external to LB", testExternalClient, "1.2.3.4", 80, "10.0.1.2:80, 10.0.1.3:80", False)]),
    ("terminating endpoints on remote node",
     [ep("10.0.1.5", "node-1", **ST)],
     [case("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, "10.0.1.5:80"),
      case("external to LB, no locally-usable endpoints", testExternalClient, "1.2.3.4", 80, "DROP")]),
    ("no usable endpoints on any node",
     [ep("10.0.1.5", testNodeName, **NS), ep("10.0.1.5", "node-1", **NS)],
     [case("pod to clusterIP, no usable endpoints", "10.0.0.2", "172.30.1.1", 80, "REJECT"),
      case("external to LB, no usable endpoints", testExternalClient, "1.2.3.4", 80, "REJECT")]),
]
cluster_tests = [
    ("ready endpoints exist",
     [ep("10.0.1.1", testNodeName, **R), ep("10.0.1.2", testNodeName, **R), ep("10.0.1.3", "another-node", **ST),
      ep("10.0.1.4", "another-node", **NS), ep("10.0.1.5", "another-node", **R)],
     [case("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80", False),
      case("external to LB", testExternalClient, "1.2.3.4", 80, "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80", True)]),
    ("only terminating endpoints exist",
     [ep("10.0.1.2", testNodeName, **ST), ep("10.0.1.3", testNodeName, **ST), ep("10.0.1.4", "another-node", **NS),
      ep("10.0.1.5", "another-node", **ST)],
     [case("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80", False),
      case("external to LB", testExternalClient, "1.2.3.4", 80, "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80", True)]),
    ("terminating endpoints on remote node",
     [ep("10.0.1.5", "node-1", **ST)],
     [case("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, "10.0.1.5:80", False),
      case("external to LB", testExternalClient, "1.2.3.4", 80, "10.0.1.5:80", True)]),
    ("no usable endpoints on any node",
     [ep("10.0.1.5", testNodeName, **NS), ep("10.0.1.5", "node-1", **NS)],
     [case("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, "REJECT"),
      case("external to LB", testExternalClient, "1.2.3.4", 80, "REJECT")]),
]
for pol, tests in (("Local", local_tests), ("Cluster", cluster_tests)):
    fn = f"TestTerminatingEndpointsTrafficPolicy{pol}"
    runs = []
    for i, (tname, endpoints, flows) in enumerate(tests, 1):
        runs.append(run(f"{fn}--{i}.yaml", [NODE, term_svc(pol), term_slice(endpoints)], flows, name=tname))
        runs.append(run(f"{fn}--deleted.yaml", [NODE, term_svc(pol)], copy.deepcopy(after),
                        name=tname + " (after OnEndpointSliceDelete)"))
    add(fn, runs)

# ------------------------------------------------------------------ TestInternalExternalMasquerade
m = [NODE,
     svc("ns1", "svc1", type="LoadBalancer", cluster_ip="172.30.0.41",
         ports=[{"name": "p80", "port": 80, "nodePort": 3001}], hc=30001, lb_ips=["1.2.3.4"]),
     svc("ns2", "svc2", type="LoadBalancer", cluster_ip="172.30.0.42",
         ports=[{"name": "p80", "port": 80, "nodePort": 3002}], hc=30002, etp="Local", lb_ips=["5.6.7.8"]),
     svc("ns3", "svc3", type="LoadBalancer", cluster_ip="172.30.0.43",
         ports=[{"name": "p80", "port": 80, "nodePort": 3003}], hc=30003, itp="Local", lb_ips=["9.10.11.12"]),
     eps("ns1", "svc1", 1, [ep("10.180.0.1", testNodeName), ep("10.180.1.1", "remote")], [("p80", 80, "TCP")]),
     eps("ns2", "svc2", 1, [ep("10.180.0.2", testNodeName), ep("10.180.1.2", "remote")], [("p80", 80, "TCP")]),
     eps("ns3", "svc3", 1, [ep("10.180.0.3", testNodeName), ep("10.180.1.3", "remote")], [("p80", 80, "TCP")])]
o1, o2, o3 = "10.180.0.1:80, 10.180.1.1:80", "10.180.0.2:80, 10.180.1.2:80", "10.180.0.3:80, 10.180.1.3:80"
flow = [
    case("pod to ClusterIP", "10.0.0.2", "172.30.0.41", 80, o1, False),
    case("pod to NodePort", "10.0.0.2", testNodeIP, 3001, o1, True),
    case("pod to LB", "10.0.0.2", "1.2.3.4", 80, o1, True),
    case("node to ClusterIP", testNodeIP, "172.30.0.41", 80, o1, True),
    case("node to NodePort", testNodeIP, testNodeIP, 3001, o1, True),
    case("localhost to NodePort", "127.0.0.1", "127.0.0.1", 3001, o1, True),
    case("node to LB", testNodeIP, "1.2.3.4", 80, o1, True),
    case("external to ClusterIP", testExternalClient, "172.30.0.41", 80, o1, True),
    case("external to NodePort", testExternalClient, testNodeIP, 3001, o1, True),
    case("external to LB", testExternalClient, "1.2.3.4", 80, o1, True),
    case("pod to ClusterIP with eTP:Local", "10.0.0.2", "172.30.0.42", 80, o2, False),
    case("pod to NodePort with eTP:Local", "10.0.0.2", testNodeIP, 3002, o2, False),
    case("pod to LB with eTP:Local", "10.0.0.2", "5.6.7.8", 80, o2, False),
    case("node to ClusterIP with eTP:Local", testNodeIP, "172.30.0.42", 80, o2, True),
    # (sic) the Go case sends this one to port 3001, svc1's NodePort, and expects svc1's endpoints
    case("node to NodePort with eTP:Local", testNodeIP, testNodeIP, 3001, o1, True),
    case("localhost to NodePort with eTP:Local", "127.0.0.1", "127.0.0.1", 3002, o2, True),
    case("node to LB with eTP:Local", testNodeIP, "5.6.7.8", 80, o2, True),
    case("external to ClusterIP with eTP:Local", testExternalClient, "172.30.0.42", 80, o2, True),
    case("external to NodePort with eTP:Local", testExternalClient, testNodeIP, 3002, "10.180.0.2:80", False),
    case("external to LB with eTP:Local", testExternalClient, "5.6.7.8", 80, "10.180.0.2:80", False),
    case("pod to ClusterIP with iTP:Local", "10.0.0.2", "172.30.0.43", 80, "10.180.0.3:80", False),
    case("pod to NodePort with iTP:Local", "10.0.0.2", testNodeIP, 3003, o3, True),
    case("pod to LB with iTP:Local", "10.0.0.2", "9.10.11.12", 80, o3, True),
    case("node to ClusterIP with iTP:Local", testNodeIP, "172.30.0.43", 80, "10.180.0.3:80", True),
    case("node to NodePort with iTP:Local", testNodeIP, testNodeIP, 3003, o3, True),
    case("localhost to NodePort with iTP:Local", "127.0.0.1", "127.0.0.1", 3003, o3, True),
    case("node to LB with iTP:Local", testNodeIP, "9.10.11.12", 80, o3, True),
    case("external to ClusterIP with iTP:Local", testExternalClient, "172.30.0.43", 80, "10.180.0.3:80", True),
    case("external to NodePort with iTP:Local", testExternalClient, testNodeIP, 3003, o3, True),
    case("external to LB with iTP:Local", testExternalClient, "9.10.11.12", 80, o3, True),
]
no_detector = {
    "node to ClusterIP": {"masq": False},
    "node to ClusterIP with eTP:Local": {"masq": False},
    "node to ClusterIP with iTP:Local": {"masq": False},
    "external to ClusterIP": {"masq": False},
    "external to ClusterIP with eTP:Local": {"masq": False},
    "external to ClusterIP with iTP:Local": {"masq": False},
    "pod to NodePort with eTP:Local": {"output": "10.180.0.2:80"},
    "pod to LB with eTP:Local": {"output": "10.180.0.2:80"},
}
masq_all = {
    "pod to ClusterIP": {"masq": True},
    "pod to ClusterIP with eTP:Local": {"masq": True},
    "pod to ClusterIP with iTP:Local": {"masq": True},
}
masq_all_no_detector = dict(masq_all)
masq_all_no_detector.update({
    "pod to NodePort with eTP:Local": {"output": "10.180.0.2:80"},
    "pod to LB with eTP:Local": {"output": "10.180.0.2:80"},
})
iem_runs = []
for tname, masq_all_flag, detector, overrides in [
    ("base", False, True, {}),
    ("no LocalTrafficDetector", False, False, no_detector),
    ("masqueradeAll", True, True, masq_all),
    ("masqueradeAll, no LocalTrafficDetector", True, False, masq_all_no_detector),
]:
    cs = copy.deepcopy(flow)
    applied = 0
    for c in cs:
        if c["name"] in overrides:
            c.update(overrides[c["name"]])
            applied += 1
    assert applied == len(overrides), tname
    st = {"masquerade_all": masq_all_flag}
    if not detector:
        st["cluster_cidr"] = None   # fp.localDetector = NewNoOpLocalDetector()
    iem_runs.append(run("TestInternalExternalMasquerade.yaml", m, cs, name=tname, settings=st))
add("TestInternalExternalMasquerade", iem_runs)


# ------------------------------------------------------------------ older copy of the same file
# Four functions that the current file no longer has, read from an older stored copy of
# these tests (index id 44324665236): danwinship/kubernetes pkg/proxy/iptables/rules_test.go
# @ 07fb8ceb, a fork branch holding the 2023 tests of proxier_test.go (testHostname, no
# nfacct); no kubernetes/kubernetes commit of that text is in the index. Its
# runPacketFlowTests took a single nodeIP: the tracer's LOCAL addresses were testNodeIP,
# 127.0.0.1 and ::1 only, so these runs declare no extra local addresses.
OLD = {"repo": "danwinship/kubernetes", "path": "pkg/proxy/iptables/rules_test.go",
       "commit": "07fb8ceb0fc1d962cc2a752b8239a3a0702a3601", "stored_copy_id": "44324665236",
       "provenance": "a fork branch holding the 2023 tests of kubernetes/kubernetes pkg/proxy/iptables/"
                     "proxier_test.go (testHostname, testNodeIP-only tracer); no upstream commit of this "
                     "text is in the index"}
OLD_ST = {"local_addresses": []}

m = [NODE, svc("ns1", "svc1", type="NodePort", cluster_ip="172.30.0.41",
               ports=[{"name": "p80", "port": 80, "nodePort": 3001}]),
     eps("ns1", "svc1", 1, [ep("10.180.0.1")], [("p80", 80, "TCP")])]
add("TestNodePort", [run("TestNodePort.yaml", m, [
    case("pod to cluster IP", "10.0.0.2", "172.30.0.41", 80, "10.180.0.1:80", False),
    case("external to nodePort", testExternalClient, testNodeIP, 3001, "10.180.0.1:80", True),
    case("node to nodePort", testNodeIP, testNodeIP, 3001, "10.180.0.1:80", True),
    case("localhost to nodePort gets masqueraded", "127.0.0.1", "127.0.0.1", 3001, "10.180.0.1:80", True),
], settings=OLD_ST)], source=OLD)

m = [NODE, svc("ns1", "svc1", cluster_ip="172.30.0.41", external_ips=["192.168.99.11"],
               ports=[{"name": "p80", "port": 80, "targetPort": 80}]),
     eps("ns1", "svc1", 1, [ep("10.180.0.1"), ep("10.180.2.1", testNodeName)], [("p80", 80, "TCP")])]
add("TestNonLocalExternalIPs", [run("TestNonLocalExternalIPs.yaml", m, [
    case("pod to cluster IP", "10.0.0.2", "172.30.0.41", 80, "10.180.0.1:80, 10.180.2.1:80", False),
    case("external to external IP", testExternalClient, "192.168.99.11", 80, "10.180.0.1:80, 10.180.2.1:80", True),
], settings=OLD_ST)], source=OLD)

m = [NODE, svc("ns1", "svc1", type="NodePort", cluster_ip="172.30.0.41", etp="Local",
               ports=[{"name": "p80", "port": 80, "nodePort": 3001}]),
     eps("ns1", "svc1", 1, [ep("10.180.0.1"), ep("10.180.2.1", testNodeName)], [("p80", 80, "TCP")])]
for fn, detector in (("TestOnlyLocalNodePortsNoClusterCIDR", False), ("TestOnlyLocalNodePorts", True)):
    st = dict(OLD_ST, nodeport_addresses=["192.168.0.0/24", "2001:db8::/64"], localhost_nodeports=False)
    if not detector:
        st["cluster_cidr"] = None   # fp.localDetector = NewNoOpLocalDetector()
    cs = [
        case("pod to cluster IP hit both endpoints", "10.0.0.2", "172.30.0.41", 80, "10.180.0.1:80, 10.180.2.1:80", False),
        case("external to NodePort hits only local endpoint", testExternalClient, testNodeIP, 3001, "10.180.2.1:80", False),
        case("pod to localhost doesn't work because localhost is not in nodePortAddresses", "10.0.0.2", "127.0.0.1", 3001, ""),
    ]
    if detector:
        cs.append(case("pod to NodePort hits both endpoints", "10.0.0.2", testNodeIP, 3001, "10.180.0.1:80, 10.180.2.1:80", False))
    else:
        cs.append(case("pod to NodePort hits only local endpoint", "10.0.0.2", testNodeIP, 3001, "10.180.2.1:80", False))
    add(fn, [run("TestOnlyLocalNodePorts.yaml", m, cs, settings=st)], source=OLD)


# The older copy's TestTerminatingEndpointsTrafficPolicy{Local,Cluster}: the same cases as the
# current file, but the Service also has a selector and sessionAffinity ClientIP (10800 s),
# and the remote nodes are called host-1 / another-host. kube-proxy's tracer never matches
# the affinity ("recent --rcheck") rules, so every endpoint of the pool is still a candidate.
def rename_nodes(endpoints):
    out = copy.deepcopy(endpoints)
    for e in out:
        if e.get("nodeName") == "node-1":
            e["nodeName"] = "host-1"
        elif e.get("nodeName") == "another-node":
            e["nodeName"] = "another-host"
    return out


for pol, tests in (("Local", local_tests), ("Cluster", cluster_tests)):
    fn = f"TestTerminatingEndpointsTrafficPolicy{pol}"
    s_aff = svc("ns1", "svc1", type="LoadBalancer", etp=pol, cluster_ip="172.30.1.1", selector={"foo": "bar"},
                ports=[{"name": "", "port": 80, "targetPort": 80}], hc=30000, lb_ips=["1.2.3.4"], affinity=10800)
    runs = []
    for i, (tname, endpoints, flows) in enumerate(tests, 1):
        runs.append(run(f"{fn}-affinity--{i}.yaml", [NODE, s_aff, term_slice(rename_nodes(endpoints))],
                        copy.deepcopy(flows), name=tname, settings=OLD_ST))
        runs.append(run(f"{fn}-affinity--deleted.yaml", [NODE, s_aff], copy.deepcopy(after),
                        name=tname + " (after OnEndpointSliceDelete)", settings=OLD_ST))
    add(fn + " (older copy: ClientIP affinity)", runs, source=OLD)


def main():
    for fname, objs in manifests.items():
        with open(os.path.join(HERE, fname), "w") as fh:
            fh.write(f"# translated from {REPO} {PATH} (see cases.json for the version of each function)\n")
            yaml.safe_dump_all(objs, fh, sort_keys=False, explicit_start=True)
    doc = {
        "source": {"repo": REPO, "path": PATH, "commit": COMMIT},
        "defaults": DEFAULTS,
        "sport": 12345,
        "output_mapping": {"": "PASS", "ACCEPT": "PASS", "REJECT": "REJECT", "DROP": "DROP",
                           "ip:port, ...": "DNAT to exactly these candidates"},
        "functions": functions,
    }
    with open(os.path.join(HERE, "cases.json"), "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    n = sum(len(r["cases"]) for f in functions for r in f["runs"])
    print(f"{len(functions)} functions, {n} cases, {len(manifests)} manifests")


if __name__ == "__main__":
    main()

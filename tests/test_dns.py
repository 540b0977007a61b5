"""Cluster DNS answers offline (kproxy_core.dns), checked against CoreDNS's own expected
outputs (plugin/kubernetes/handler_test.go, reverse_test.go) and DISCOVERY.md's facts."""

from __future__ import annotations

import pytest
from dns_cluster import SERIAL, coredns_objects, external, extra_objects, namespace
from k8s import ep, eport, port, service, slice_

import kproxy_core as kp
from kproxy_core.dns import Answer, DnsRecord, Zone, build_zone, dashed, reverse_name

SOA = "cluster.local.\t5\tIN\tSOA\tns.dns.cluster.local. hostmaster.cluster.local. 1499347823 7200 1800 86400 5"


@pytest.fixture(scope="module")
def zone() -> Zone:
    cluster = kp.Cluster.from_objects(coredns_objects() + extra_objects())
    return build_zone(cluster, serial=SERIAL)


def lines(records: tuple[DnsRecord, ...], ttl: int = 5) -> list[str]:
    return sorted(" ".join(r.text(ttl).split()) for r in records)


def norm(rrs: list[str]) -> list[str]:
    return sorted(" ".join(r.split()) for r in rrs)


# handler_test.go's dnsTestCases, in its order: (qname, qtype, rcode, answer, authority, additional).
# "CNAME External Truncated Lookup" needs an upstream and is checked separately below.
CASES: list[tuple[str, str, str, list[str], list[str], list[str]]] = [
    ("svc1.testns.svc.cluster.local.", "A", "NOERROR", ["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"], [], []),
    ("svcempty.testns.svc.cluster.local.", "A", "NOERROR", ["svcempty.testns.svc.cluster.local. 5 IN A 10.0.0.11"],
     [], []),
    ("svc1.testns.svc.cluster.local.", "SRV", "NOERROR",
     ["svc1.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc1.testns.svc.cluster.local."], [],
     ["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
    ("svcempty.testns.svc.cluster.local.", "SRV", "NOERROR",
     ["svcempty.testns.svc.cluster.local. 5 IN SRV 0 100 80 svcempty.testns.svc.cluster.local."], [],
     ["svcempty.testns.svc.cluster.local. 5 IN A 10.0.0.11"]),
    ("svc6.testns.svc.cluster.local.", "SRV", "NOERROR",
     ["svc6.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc6.testns.svc.cluster.local."], [],
     ["svc6.testns.svc.cluster.local. 5 IN AAAA 1234:abcd::1"]),
    ("_http._tcp.svc1.testns.svc.cluster.local.", "SRV", "NOERROR",
     ["_http._tcp.svc1.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc1.testns.svc.cluster.local."], [],
     ["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
    ("_http._tcp.svcempty.testns.svc.cluster.local.", "SRV", "NOERROR",
     ["_http._tcp.svcempty.testns.svc.cluster.local. 5 IN SRV 0 100 80 svcempty.testns.svc.cluster.local."], [],
     ["svcempty.testns.svc.cluster.local. 5 IN A 10.0.0.11"]),
    ("hdls1.testns.svc.cluster.local.", "A", "NOERROR",
     [f"hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.{i}" for i in (2, 3, 4, 5)], [], []),
    ("hdlsprtls.testns.svc.cluster.local.", "A", "NOERROR", ["hdlsprtls.testns.svc.cluster.local. 5 IN A 172.0.0.20"],
     [], []),
    ("172-0-0-20.hdlsprtls.testns.svc.cluster.local.", "A", "NOERROR",
     ["172-0-0-20.hdlsprtls.testns.svc.cluster.local. 5 IN A 172.0.0.20"], [], []),
    ("172-0-0-2.hdls1.testns.svc.cluster.local.", "A", "NOERROR",
     ["172-0-0-2.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2"], [], []),
    ("172-0-0-3.hdls1.testns.svc.cluster.local.", "A", "NOERROR",
     ["172-0-0-3.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.3"], [], []),
    ("dup-name.hdls1.testns.svc.cluster.local.", "A", "NOERROR",
     ["dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4",
      "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5"], [], []),
    ("_http._tcp.hdls1.testns.svc.cluster.local.", "SRV", "NOERROR",
     [f"_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 {t}.hdls1.testns.svc.cluster.local."
      for t in ("172-0-0-2", "172-0-0-3", "5678-abcd--1", "5678-abcd--2", "dup-name")], [],
     ["172-0-0-2.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2",
      "172-0-0-3.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.3",
      "5678-abcd--1.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1",
      "5678-abcd--2.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2",
      "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4",
      "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5"]),
    ("5678-abcd--2.hdls1.testns.svc.cluster.local", "AAAA", "NOERROR",
     ["5678-abcd--2.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2"], [], []),
    ("external.testns.svc.cluster.local.", "CNAME", "NOERROR",
     ["external.testns.svc.cluster.local. 5 IN CNAME ext.interwebs.test."], [], []),
    ("external-to-service.testns.svc.cluster.local", "A", "NOERROR",
     ["external-to-service.testns.svc.cluster.local. 5 IN CNAME svc1.testns.svc.cluster.local.",
      "svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"], [], []),
    ("svc1.testns.svc.cluster.local.", "AAAA", "NOERROR", [], [SOA], []),
    ("svc0.testns.svc.cluster.local.", "AAAA", "NXDOMAIN", [], [SOA], []),
    ("svc0.testns.svc.cluster.local.", "A", "NXDOMAIN", [], [SOA], []),
    ("svc0.svc-nons.svc.cluster.local.", "A", "NXDOMAIN", [], [SOA], []),
    ("dns-version.cluster.local.", "TXT", "NOERROR", ['dns-version.cluster.local. 28800 IN TXT "1.1.0"'], [], []),
    ("bogusendpoint.hdls1.testns.svc.cluster.local.", "A", "NXDOMAIN", [], [SOA], []),
    ("bogusendpoint.svc0.testns.svc.cluster.local.", "A", "NXDOMAIN", [], [SOA], []),
    ("svc6.testns.svc.cluster.local.", "AAAA", "NOERROR", ["svc6.testns.svc.cluster.local. 5 IN AAAA 1234:abcd::1"],
     [], []),
    ("_http._tcp.svc6.testns.svc.cluster.local.", "SRV", "NOERROR",
     ["_http._tcp.svc6.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc6.testns.svc.cluster.local."], [],
     ["svc6.testns.svc.cluster.local. 5 IN AAAA 1234:abcd::1"]),
    ("hdls1.testns.svc.cluster.local.", "AAAA", "NOERROR",
     [f"hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::{i}" for i in (1, 2)],
     [], []),
    ("5678-abcd--1.hdls1.testns.svc.cluster.local.", "AAAA", "NOERROR",
     ["5678-abcd--1.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1"], [], []),
    ("svc.cluster.local.", "A", "NOERROR", [], [SOA], []),
    ("pod.cluster.local.", "A", "NOERROR", [], [SOA], []),
    ("testns.svc.cluster.local.", "A", "NOERROR", [], [SOA], []),
    ("svc.cluster.local.", "NS", "NOERROR", [], [SOA], []),
    ("testns.svc.cluster.local.", "NS", "NOERROR", [], [SOA], []),
    ("foo.cluster.local.", "NS", "NXDOMAIN", [], [SOA], []),
    ("foo.svc.cluster.local.", "NS", "NXDOMAIN", [], [SOA], []),
    ("svc-dual-stack.testns.svc.cluster.local.", "A", "NOERROR",
     ["svc-dual-stack.testns.svc.cluster.local. 5 IN A 10.0.0.3"], [], []),
    ("svc-dual-stack.testns.svc.cluster.local.", "AAAA", "NOERROR",
     ["svc-dual-stack.testns.svc.cluster.local. 5 IN AAAA 10::3"], [], []),
    ("svc-dual-stack.testns.svc.cluster.local.", "SRV", "NOERROR",
     ["svc-dual-stack.testns.svc.cluster.local. 5 IN SRV 0 50 80 svc-dual-stack.testns.svc.cluster.local."], [],
     ["svc-dual-stack.testns.svc.cluster.local. 5 IN A 10.0.0.3",
      "svc-dual-stack.testns.svc.cluster.local. 5 IN AAAA 10::3"]),
    ("svc1.testns.svc.cluster.local.", "SOA", "NOERROR", [], [SOA], []),
    ("endpoint.external.testns.svc.cluster.local.", "CNAME", "NXDOMAIN", [], [SOA], []),
]


@pytest.mark.parametrize(("qname", "qtype", "rcode", "answer", "authority", "additional"), CASES,
                         ids=[f"{c[1]}:{c[0]}" for c in CASES])
def test_coredns_handler_cases(zone: Zone, qname: str, qtype: str, rcode: str, answer: list[str],
                               authority: list[str], additional: list[str]) -> None:
    got = zone.resolve(qname, qtype)
    assert got.rcode == rcode
    assert lines(got.records) == norm(answer)
    assert lines(got.authority) == norm(authority)
    assert lines(got.additional) == norm(additional)
    assert got.authoritative


def test_cname_precedes_its_target(zone: Zone) -> None:
    """CoreDNS's CNAMEOrder check: a CNAME comes before the records of its target."""
    got = zone.resolve("external-to-service.testns.svc.cluster.local", "A")
    assert [r.rtype for r in got.records] == ["CNAME", "A"]


def test_external_cname_outside_zone_needs_upstream(zone: Zone) -> None:
    """The truncated-upstream case of handler_test.go: CoreDNS appends what its upstream
    says about ext.interwebs.test; offline there is no upstream, so the CNAME alone, and a note."""
    got = zone.resolve("external.testns.svc.cluster.local.", "A")
    assert lines(got.records) == ["external.testns.svc.cluster.local. 5 IN CNAME ext.interwebs.test."]
    assert any("upstream" in n for n in got.notes)
    for qtype in ("TXT", "SRV"):  # DISCOVERY §1.6: NODATA
        assert zone.resolve("external.testns.svc.cluster.local.", qtype).nodata
    assert zone.resolve("_http._tcp.external.testns.svc.cluster.local.", "SRV").rcode == "NXDOMAIN"


def test_ip_valued_external_name_is_nxdomain(zone: Zone) -> None:
    for qtype in ("A", "CNAME", "AAAA"):
        got = zone.resolve("byip.other.svc.cluster.local", qtype)
        assert (got.rcode, got.records) == ("NXDOMAIN", ())
        assert any("coredns/coredns#2324" in n for n in got.notes)
    assert zone.resolve("x.byip.other.svc.cluster.local").rcode == "NXDOMAIN"


# ------------------------------------------------------------------ DISCOVERY.md facts


def test_headless_ready_only_and_none_ready_is_nxdomain(zone: Zone) -> None:
    got = zone.resolve("db.other.svc.cluster.local")
    assert sorted(r.data for r in got.records) == ["10.8.0.1", "10.8.0.2"]  # db-2 is not ready
    assert zone.resolve("db-2.db.other.svc.cluster.local").rcode == "NXDOMAIN"
    down = zone.resolve("down.other.svc.cluster.local")
    assert down.rcode == "NXDOMAIN" and lines(down.authority) == [" ".join(SOA.split())]
    # ready endpoints but none in the family: NODATA
    assert zone.resolve("db.other.svc.cluster.local", "AAAA").nodata


def test_ready_nil_counts_as_ready() -> None:
    e = ep("10.9.0.1")
    del e["conditions"]
    cluster = kp.Cluster.from_objects([service("ns", "h", "None", []), slice_("ns", "h", [e], [])])
    assert [r.data for r in build_zone(cluster).resolve("h.ns.svc.cluster.local").records] == ["10.9.0.1"]


def test_headless_srv_per_endpoint_and_port(zone: Zone) -> None:
    got = zone.resolve("_pg._tcp.db.other.svc.cluster.local", "SRV")
    assert lines(got.records) == [
        f"_pg._tcp.db.other.svc.cluster.local. 5 IN SRV 0 50 5432 db-{i}.db.other.svc.cluster.local." for i in (0, 1)
    ]
    assert lines(got.additional) == [f"db-{i}.db.other.svc.cluster.local. 5 IN A 10.8.0.{i + 1}" for i in (0, 1)]
    bare = zone.resolve("db.other.svc.cluster.local", "SRV")  # CoreDNS: every port, 4 backends -> weight 25
    assert sorted(r.data for r in bare.records) == sorted(
        f"0 25 {p} db-{i}.db.other.svc.cluster.local." for i in (0, 1) for p in (5432, 9187)
    )
    assert len(bare.additional) == 2
    # an A query on the SRV name answers the same addresses
    assert sorted(r.data for r in zone.resolve("_pg._tcp.db.other.svc.cluster.local").records) == [
        "10.8.0.1", "10.8.0.2"]


def test_srv_port_and_proto_matching(zone: Zone) -> None:
    ok = zone.resolve("_DNS._UDP.dns.other.svc.cluster.local", "SRV")  # case-insensitive
    assert [r.data for r in ok.records] == ["0 100 53 dns.other.svc.cluster.local."]
    assert ok.records[0].name == "_DNS._UDP.dns.other.svc.cluster.local"  # echoes the spelling
    assert [r.data for r in zone.resolve("dns-tcp.tcp.dns.other.svc.cluster.local", "SRV").records] == [
        "0 100 53 dns.other.svc.cluster.local."]  # underscores are optional to CoreDNS
    for bad in ("_dns._tcp", "_nope._udp", "_dns._sctp"):
        assert zone.resolve(f"{bad}.dns.other.svc.cluster.local", "SRV").rcode == "NXDOMAIN", bad
    bare = zone.resolve("dns.other.svc.cluster.local", "SRV")
    assert [r.data for r in bare.records] == ["0 50 53 dns.other.svc.cluster.local."]  # one (target, port)


def test_srv_weight_minimum_is_one() -> None:
    eps = [ep(f"10.7.{i // 250}.{i % 250 + 1}") for i in range(150)]
    cluster = kp.Cluster.from_objects([service("ns", "big", "None", [port(80, "http")]),
                                       slice_("ns", "big", eps, [eport(80, "http")])])
    got = build_zone(cluster).resolve("_http._tcp.big.ns.svc.cluster.local", "SRV")
    assert len(got.records) == 150 and {r.data.split()[1] for r in got.records} == {"1"}


def test_clusterip_service_endpoint_names(zone: Zone) -> None:
    """CoreDNS answers <ep>.<svc> for a ClusterIP Service too (the SPEC only for headless)."""
    got = zone.resolve("ep1a.svc1.testns.svc.cluster.local")
    assert [r.data for r in got.records] == ["172.0.0.1"]


def test_no_records_type_is_nodata(zone: Zone) -> None:
    for qtype in ("TXT", "MX", "CNAME", "PTR", "HINFO"):
        got = zone.resolve("svc1.testns.svc.cluster.local", qtype)
        assert got.nodata and got.authority, qtype
    assert zone.resolve("dns-version.cluster.local", "A").rcode == "NXDOMAIN"  # CoreDNS: does not parse
    assert zone.resolve("nope.cluster.local", "TXT").rcode == "NXDOMAIN"
    assert zone.resolve("a.b.c.d.svc1.testns.svc.cluster.local").rcode == "NXDOMAIN"  # too many labels
    assert zone.resolve("*.testns.svc.cluster.local").rcode == "NXDOMAIN"  # wildcards are gone (CoreDNS 1.9)
    assert zone.resolve("any.testns.svc.cluster.local").rcode == "NXDOMAIN"


def test_apex_soa_and_ns(zone: Zone) -> None:
    soa = zone.resolve("cluster.local", "SOA")
    assert lines(soa.records) == [" ".join(SOA.split())]
    ns = zone.resolve("Cluster.Local.", "NS")
    assert [(r.name, r.data) for r in ns.records] == [("Cluster.Local", "ns.dns.cluster.local.")]
    assert [r.data for r in ns.additional] == ["10.0.0.10"]  # the kube-system/kubedns Service
    assert [r.data for r in zone.resolve("ns.dns.cluster.local").records] == ["10.0.0.10"]


def test_outside_zone_refused(zone: Zone) -> None:
    got = zone.resolve("example.com", "A")
    assert got.rcode == "REFUSED" and not got.authoritative and not got.authority
    assert zone.resolve("cluster.local.example.com").rcode == "REFUSED"
    assert zone.resolve("notcluster.local").rcode == "REFUSED"


def test_case_insensitive_and_echoed(zone: Zone) -> None:
    got = zone.resolve("SVC1.TestNS.svc.Cluster.Local.", "A")
    assert [(r.name, r.data) for r in got.records] == [("SVC1.TestNS.svc.Cluster.Local", "10.0.0.1")]
    srv = zone.resolve("Svc1.testns.svc.cluster.local", "SRV")
    assert srv.additional[0].name == "svc1.testns.svc.cluster.local"  # targets are ours, lower case


def test_namespace_existence() -> None:
    cluster = kp.Cluster.from_objects([namespace("empty"), service("ns", "a", "10.0.0.1", [port(80)])])
    z = build_zone(cluster)
    assert z.resolve("empty.svc.cluster.local").nodata
    assert z.resolve("ns.svc.cluster.local").nodata  # has a Service: it exists
    assert z.resolve("missing.svc.cluster.local").rcode == "NXDOMAIN"


# ------------------------------------------------------------------ PTR


def test_reverse_names() -> None:
    assert reverse_name("10.0.0.1") == "1.0.0.10.in-addr.arpa"
    assert reverse_name("fd00::1").startswith("1.0.0.0.") and reverse_name("fd00::1").endswith(".d.f.ip6.arpa")
    assert dashed("fd00::") == "fd00--0" and dashed("5678:abcd::1") == "5678-abcd--1" and dashed("1.2.3.4") == "1-2-3-4"


def test_ptr_cluster_ip(zone: Zone) -> None:
    got = zone.resolve("1.0.0.10.in-addr.arpa", "PTR")
    assert lines(got.records) == ["1.0.0.10.in-addr.arpa. 5 IN PTR svc1.testns.svc.cluster.local."]
    v6 = zone.resolve(reverse_name("1234:abcd::1"), "PTR")
    assert [r.data for r in v6.records] == ["svc6.testns.svc.cluster.local."]
    assert [r.data for r in zone.resolve(reverse_name("10::3"), "PTR").records] == [
        "svc-dual-stack.testns.svc.cluster.local."]


def test_ptr_endpoints(zone: Zone) -> None:
    assert [r.data for r in zone.resolve("2.0.0.172.in-addr.arpa.", "PTR").records] == [
        "172-0-0-2.hdls1.testns.svc.cluster.local."]
    assert [r.data for r in zone.resolve("4.0.0.172.in-addr.arpa", "PTR").records] == [
        "dup-name.hdls1.testns.svc.cluster.local."]
    assert [r.data for r in zone.resolve(reverse_name("5678:abcd::2"), "PTR").records] == [
        "5678-abcd--2.hdls1.testns.svc.cluster.local."]
    assert [r.data for r in zone.resolve("1.0.0.172.in-addr.arpa", "PTR").records] == [
        "ep1a.svc1.testns.svc.cluster.local."]
    # not ready: no PTR; unknown: NXDOMAIN with the reverse zone's SOA
    miss = zone.resolve("3.0.8.10.in-addr.arpa", "PTR")
    assert miss.rcode == "NXDOMAIN"
    assert [r.name for r in miss.authority] == ["in-addr.arpa"]
    assert miss.authority[0].data.startswith("ns.dns.in-addr.arpa. hostmaster.in-addr.arpa. ")
    assert zone.resolve("2.0.0.172.in-addr.arpa", "A").nodata
    assert zone.resolve("0.0.172.in-addr.arpa", "PTR").rcode == "NXDOMAIN"


def test_ptr_cluster_ip_beats_endpoints() -> None:
    objs = [
        service("ns", "a", "10.96.0.5", [port(80, "http")]),
        service("ns", "b", "None", [port(80, "http")]), slice_("ns", "b", [ep("10.96.0.5")], [eport(80, "http")]),
    ]
    got = build_zone(kp.Cluster.from_objects(objs)).resolve("5.0.96.10.in-addr.arpa", "PTR")
    assert [r.data for r in got.records] == ["a.ns.svc.cluster.local."]


def test_ptr_one_per_service_selecting_a_pod() -> None:
    objs = [
        service("ns", "a", "None", [port(80, "http")]), slice_("ns", "a", [ep("10.1.1.1")], [eport(80, "http")]),
        service("ns", "b", "10.96.0.9", [port(80, "http")]), slice_("ns", "b", [ep("10.1.1.1")], [eport(80, "http")]),
    ]
    got = build_zone(kp.Cluster.from_objects(objs)).resolve("1.1.1.10.in-addr.arpa", "PTR")
    assert sorted(r.data for r in got.records) == [f"10-1-1-1.{s}.ns.svc.cluster.local." for s in "ab"]


# ------------------------------------------------------------------ options


def test_ttl_and_domain() -> None:
    cluster = kp.Cluster.from_objects(coredns_objects())
    z = build_zone(cluster, zone="corp.example.", ttl=30, serial=7)
    got = z.resolve("svc1.testns.svc.corp.example", "A")
    assert got.text() == "svc1.testns.svc.corp.example.\t30\tIN\tA\t10.0.0.1"
    neg = z.resolve("nope.testns.svc.corp.example", "A")
    assert lines(neg.authority, 30) == [
        "corp.example. 30 IN SOA ns.dns.corp.example. hostmaster.corp.example. 7 7200 1800 86400 30"]
    assert z.resolve("dns-version.corp.example", "TXT").records[0].ttl == 28800
    assert z.resolve("svc1.testns.svc.cluster.local").rcode == "REFUSED"
    assert build_zone(cluster, ttl=3600).soa().ttl == 300  # the SOA's own TTL is capped
    with pytest.raises(ValueError, match="TTL"):
        build_zone(cluster, ttl=3601)


def test_pod_records() -> None:
    cluster = kp.Cluster.from_objects([namespace("web"), service("ns", "a", "10.0.0.1", [port(80)])])
    off = build_zone(cluster)
    assert off.resolve("10-1-2-3.web.pod.cluster.local").rcode == "NXDOMAIN"
    on = build_zone(cluster, pods="insecure")
    assert [r.data for r in on.resolve("10-1-2-3.web.pod.cluster.local").records] == ["10.1.2.3"]
    assert [r.data for r in on.resolve("fd00--1.web.pod.cluster.local", "AAAA").records] == ["fd00::1"]
    assert on.resolve("10-1-2-3.nowhere.pod.cluster.local").rcode == "NXDOMAIN"  # namespace must exist
    assert on.resolve("10-1-2.web.pod.cluster.local").rcode == "NXDOMAIN"
    assert on.resolve("web.pod.cluster.local").nodata


def test_endpoint_pod_names() -> None:
    e = ep("10.2.0.5")
    e["targetRef"] = {"kind": "Pod", "namespace": "ns", "name": "web-7d9f"}
    cluster = kp.Cluster.from_objects([service("ns", "w", "None", [port(80, "http")]),
                                       slice_("ns", "w", [e], [eport(80, "http")])])
    assert build_zone(cluster).resolve("10-2-0-5.w.ns.svc.cluster.local").records
    z = build_zone(cluster, endpoint_pod_names=True)
    assert [r.data for r in z.resolve("web-7d9f.w.ns.svc.cluster.local").records] == ["10.2.0.5"]


def test_legacy_endpoints_and_external_name_in_zone() -> None:
    objs = [
        service("ns", "a", "10.0.0.1", [port(80, "http")]),
        external("ns", "alias", "a.ns.svc.cluster.local"),
        external("ns", "loop1", "loop2.ns.svc.cluster.local"),
        external("ns", "loop2", "loop1.ns.svc.cluster.local"),
    ]
    z = build_zone(kp.Cluster.from_objects(objs))
    got = z.resolve("alias.ns.svc.cluster.local")
    assert [(r.rtype, r.data) for r in got.records] == [("CNAME", "a.ns.svc.cluster.local."), ("A", "10.0.0.1")]
    loop = z.resolve("loop1.ns.svc.cluster.local")
    assert [r.rtype for r in loop.records] == ["CNAME", "CNAME"] and any("loop" in n for n in loop.notes)


def test_engine_resolve_follows_apply() -> None:
    engine = kp.Engine(kp.Cluster.from_objects(coredns_objects()))
    assert engine.resolve("new.testns.svc.cluster.local").rcode == "NXDOMAIN"
    engine.apply([service("testns", "new", "10.0.0.77", [port(80)])])
    assert [r.data for r in engine.resolve("new.testns.svc.cluster.local").records] == ["10.0.0.77"]
    assert engine.dns_zone() is engine.dns_zone()  # cached until the next apply


def test_answer_to_dict(zone: Zone) -> None:
    d = zone.resolve("_http._tcp.svc1.testns.svc.cluster.local", "SRV").to_dict()
    assert d["rcode"] == "NOERROR" and d["answer"] == [
        {"name": "_http._tcp.svc1.testns.svc.cluster.local.", "ttl": 5, "type": "SRV",
         "data": "0 100 80 svc1.testns.svc.cluster.local."}]
    assert isinstance(zone.resolve("x.cluster.local"), Answer)


# ------------------------------------------------------------------ a pod's resolver


def test_search_path_walk(zone: Zone) -> None:
    from kproxy_core.dns import resolve_as_pod, search_path

    assert search_path("testns") == ("testns.svc.cluster.local", "svc.cluster.local", "cluster.local")
    short = resolve_as_pod(zone, "svc1", "A", "testns")
    assert [t.name for t in short.tried] == ["svc1.testns.svc.cluster.local"]
    assert [r.data for r in short.answer.records] == ["10.0.0.1"]
    # DISCOVERY §1.11: data.prod from ns test tries data.prod.test.svc... first
    cross = resolve_as_pod(zone, "db.other", "A", "testns")
    assert [(t.name, t.rcode) for t in cross.tried] == [
        ("db.other.testns.svc.cluster.local", "NXDOMAIN"), ("db.other.svc.cluster.local", "NOERROR")]
    # 5 dots or more: as written first
    full = resolve_as_pod(zone, "_http._tcp.svc1.testns.svc.cluster.local", "SRV", "other")
    assert [t.name for t in full.tried] == ["_http._tcp.svc1.testns.svc.cluster.local"]
    # fewer than 5 dots: the search list first, even for a full service name
    four = resolve_as_pod(zone, "svc1.testns.svc.cluster.local", "A", "other")
    assert len(four.tried) == 4 and four.tried[-1].name == "svc1.testns.svc.cluster.local"
    absolute = resolve_as_pod(zone, "svc1.testns.svc.cluster.local.", "A", "other")
    assert len(absolute.tried) == 1
    # nothing anywhere: NXDOMAIN; a NODATA on the way wins (glibc's got_nodata)
    miss = resolve_as_pod(zone, "nothing", "A", "testns")
    assert miss.answer.rcode == "NXDOMAIN" and [t.rcode for t in miss.tried][-1] == "REFUSED"
    nodata = resolve_as_pod(zone, "svc1", "AAAA", "testns")
    assert nodata.answer.nodata and nodata.answer.name == "svc1.testns.svc.cluster.local"
    assert "status: NOERROR" in nodata.text() and ";; AUTHORITY SECTION:" in nodata.text()
    with pytest.raises(ValueError, match="not a valid DNS name"):
        resolve_as_pod(zone, "a..b", "A")
    with pytest.raises(ValueError, match="empty"):
        resolve_as_pod(zone, " ", "A")
    with pytest.raises(ValueError, match="namespace 'Bad' is not a valid namespace name"):
        resolve_as_pod(zone, "svc1", "A", "Bad")


# ------------------------------------------------------------------ any question, on the wire too

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_LABELS = ["svc1", "SVC1", "hdls1", "db", "db-0", "dup-name", "172-0-0-2", "5678-abcd--1", "_http", "_tcp", "http",
           "tcp", "_pg", "udp", "testns", "other", "kube-system", "svc", "pod", "cluster", "local", "dns-version",
           "ns", "dns", "in-addr", "arpa", "ip6", "10", "0", "1", "172", "byip", "external", "*", "any", "x",
           "10-1-2-3", "a" * 63]
_TYPES = ["A", "AAAA", "SRV", "PTR", "CNAME", "TXT", "SOA", "NS", "MX", "ANY", "HINFO"]
_ZONE = build_zone(kp.Cluster.from_objects(coredns_objects() + extra_objects()), serial=SERIAL)


@settings(max_examples=300, deadline=None)
@given(labels=st.lists(st.sampled_from(_LABELS), min_size=0, max_size=8), qtype=st.sampled_from(_TYPES),
       suffix=st.sampled_from(["cluster.local", "svc.cluster.local", "testns.svc.cluster.local", "in-addr.arpa",
                               "ip6.arpa", "example.com", ""]))
def test_any_question_is_answered_consistently(labels: list[str], qtype: str, suffix: str) -> None:
    """Whatever the name: an rcode CoreDNS could give, records of the asked type (or the CNAME
    chain), the SOA exactly on negative answers, and the server's wire carrying exactly that."""
    import dns.message
    import dns.rcode

    from kproxy_core.dnsserver import handle

    name = ".".join([*labels, suffix]).strip(".") or "cluster.local"
    got = _ZONE.resolve(name, qtype)
    assert got.rcode in ("NOERROR", "NXDOMAIN", "REFUSED")
    if got.rcode == "REFUSED":
        assert not got.records and not got.authority
    elif got.records:
        assert not got.authority
        assert all(r.rtype in (qtype, "CNAME") or qtype == "ANY" for r in got.records)
        assert got.records[0].name.lower() == name.lower()
    else:
        assert [r.rtype for r in got.authority] == ["SOA"]
    if len(name) > 250:
        return  # no such question on the wire
    wire = handle(dns.message.make_query(name, qtype).to_wire(), _ZONE, tcp=True)
    assert wire is not None
    msg = dns.message.from_wire(wire)
    assert dns.rcode.to_text(msg.rcode()) == got.rcode
    assert sum(len(rrset) for rrset in msg.answer) == len(got.records)
    assert sum(len(rrset) for rrset in msg.authority) == len(got.authority)


# ------------------------------------------------------------------ trace to a name


def test_trace_resolves_names_as_the_source_pod() -> None:
    client = ep("10.8.5.5")
    client["targetRef"] = {"kind": "Pod", "namespace": "other", "name": "client-0"}
    objs = coredns_objects() + extra_objects() + [
        service("other", "clients", "None", [port(80, "http")]),
        slice_("other", "clients", [client], [eport(80, "http")]),
        namespace("other"),
    ]
    engine = kp.Engine(kp.Cluster.from_objects(objs))
    # the source is a pod of namespace "other": "dns" is other/dns
    t = engine.trace("10.8.5.5", "dns", 53, "UDP")
    assert t.packet["dst"] == "10.0.0.53" and t.packet["dst_name"] == "dns.other.svc.cluster.local"
    assert "namespace other" in t.steps[0]
    # an unknown source is in default: "svc1.testns" walks the search list
    t = engine.trace("192.0.2.9", "svc1.testns", 80)
    assert t.packet["dst"] == "10.0.0.1"
    assert any("svc1.testns.default.svc.cluster.local: NXDOMAIN" in s for s in t.steps)
    t = engine.trace("192.0.2.9", "dns", 53, "UDP", namespace="other")
    assert t.packet["dst"] == "10.0.0.53"
    miss = engine.trace("192.0.2.9", "nothing", 80)
    assert miss.verdict == "PASS" and "kube-proxy never sees it" in miss.steps[-1]
    with pytest.raises(kp.PacketError, match="not a valid DNS name"):
        engine.trace("192.0.2.9", "a..b", 80)


# ------------------------------------------------------------------ kproxy dns resolve


def test_cli_dns_resolve(tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]) -> None:
    import json
    from pathlib import Path

    import yaml

    from kproxy_core.cli import main

    path = Path(str(tmp_path)) / "c.yaml"
    path.write_text(yaml.safe_dump_all(coredns_objects() + extra_objects()))
    assert main(["dns", "resolve", "-f", str(path), "svc1", "--from-namespace", "testns"]) == 0
    out = capsys.readouterr().out
    assert ";; ->>HEADER<<- opcode: QUERY, status: NOERROR" in out and ";; flags: qr aa rd;" in out
    assert "svc1.testns.svc.cluster.local.\t5\tIN\tA\t10.0.0.1" in out.split(";; ANSWER SECTION:")[1]
    assert main(["dns", "resolve", "-f", str(path), "db.other", "-t", "srv", "--from-namespace", "testns",
                 "--ttl", "30", "--domain", "cluster.local"]) == 0
    out = capsys.readouterr().out
    assert ";; tried db.other.testns.svc.cluster.local. SRV: NXDOMAIN" in out
    assert "db-0.db.other.svc.cluster.local.\t30\tIN\tA\t10.8.0.1" in out.split(";; ADDITIONAL SECTION:")[1]
    assert main(["dns", "resolve", "-f", str(path), "nothing.testns.svc.cluster.local.", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["answer"]["rcode"] == "NXDOMAIN" and d["answer"]["authority"][0]["type"] == "SOA"
    assert main(["dns", "resolve", "-f", str(path), "10-1-2-3.testns.pod", "--pods", "insecure",
                 "--from-namespace", "x"]) == 0
    assert "10.1.2.3" in capsys.readouterr().out
    # bad input: one line, exit 2
    for argv in (["a..b"], ["svc1", "--ttl", "4000"], ["svc1", "--type", "FOO"], ["svc1", "--from-namespace", "a.b"],
                 ["svc1", "--from-namespace", ""]):
        assert main(["dns", "resolve", "-f", str(path), *argv]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("kproxy: warning: ")]
        assert len(errors) == 1 and errors[0].startswith("kproxy: error: "), errors

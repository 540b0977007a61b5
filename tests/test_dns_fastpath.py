"""The DNS server's fast path (rendered answers, a hand parser) against its dnspython path.

``dnsserver._respond`` builds every response with dnspython and is the reference; the fast path
(``dnsserver._quick``, which ``handle`` and the server try first) must give the same bytes for
every query it takes, the first time (rendering) and every time after (patching the id, the RD
bit and the question's spelling into the rendered answer), and must leave every other query to
the reference. Only self-agreement: the reference's own answers are checked against CoreDNS's
cases in test_dns.py and test_dns_dig.py.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.rrset
import pytest
from dns_cluster import coredns_objects, extra_objects
from hypothesis import given, settings
from hypothesis import strategies as st

import kproxy_core as kp
from kproxy_core import dnsserver
from kproxy_core.dns import DnsRecord, Zone, reverse_name
from kproxy_core.dnsserver import _Answers, _quick, _respond, handle

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from dns_load import manifests
from test_dns_server import article_objects
from test_dns_server import extra_objects as server_objects

TYPES = ("A", "AAAA", "SRV", "PTR", "TXT", "ANY", "CNAME")
MORE_TYPES = ("NS", "SOA", "MX", "TYPE65280")


def zones() -> dict[str, Zone]:
    coredns = kp.Cluster.from_objects(coredns_objects() + extra_objects())
    return {
        "coredns": kp.Engine(coredns).dns_zone(),
        "coredns-pods-ttl0": kp.Engine(coredns).dns_zone("Example.ORG", 0, pods="insecure", endpoint_pod_names=True),
        "server": kp.Engine(kp.Cluster.from_objects(article_objects() + server_objects())).dns_zone(),
        "generated": kp.Engine(kp.Cluster.from_objects(manifests(24, 6, 8))).dns_zone(),
    }


ZONES = zones()


def names(zone: Zone) -> list[str]:
    """Every name the zone has, and names around them it does not."""
    z = zone.zone
    out = {z, f"dns-version.{z}", f"ns.dns.{z}", f"svc.{z}", f"pod.{z}", f"foo.{z}", "example.com", "in-addr.arpa",
           f"{z}.example.com", f"a.b.c.d.e.svc.{z}"}
    for ns in zone._namespaces:
        out |= {f"{ns}.svc.{z}", f"{ns}.pod.{z}", f"nope.{ns}.svc.{z}", f"10-1-2-3.{ns}.pod.{z}", f"*.{ns}.svc.{z}"}
    for entry in zone._services.values():
        fqdn = entry.fqdn
        out |= {fqdn, f"nope.{fqdn}", f"_nope._tcp.{fqdn}"}
        for p in entry.service.ports:
            out |= {f"_{p.name}._{p.protocol.lower()}.{fqdn}", f"{p.name}.{p.protocol.lower()}.{fqdn}"}
        for a in entry.addresses:
            out.add(f"{a.label}.{fqdn}")
            for pname, proto, _ in a.ports:
                out.add(f"_{pname}._{proto.lower()}.{fqdn}")
    for ip in zone._ptr:
        out.add(reverse_name(ip))
    out |= set(zone.records)
    out.add(reverse_name("192.0.2.1"))
    return sorted(n for n in out if "" not in n.split("."))  # an unnamed port makes ".tcp.<svc>"


def spelled(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def query(name: str, rtype: str, rng: random.Random, variant: int) -> tuple[bytes, bool]:
    """Variant 0: lower case, no EDNS, RD; 1: mixed case, EDNS 1232, CD; 2: mixed case, EDNS with a
    small or large payload, DO, random flags; 3: the same over TCP."""
    name = name if variant == 0 else spelled(name, rng)
    if variant == 0:
        q = dns.message.make_query(name, rtype)
    elif variant == 1:
        q = dns.message.make_query(name, rtype, use_edns=0, payload=1232)
        q.flags = dns.flags.CD
    else:
        q = dns.message.make_query(name, rtype, use_edns=0, payload=rng.choice([100, 512, 600, 4096, 65535]),
                                   want_dnssec=True)
        q.flags = rng.getrandbits(16) & ~0xF800 & ~0x8000  # any flags and rcode bits, QR 0, opcode QUERY
    return q.to_wire(), variant == 3


def cases() -> Iterator[tuple[str, str, str]]:
    for zname, zone in ZONES.items():
        for name in names(zone):
            for rtype in TYPES:
                yield zname, name, rtype
        for rtype in MORE_TYPES:
            yield zname, zone.zone, rtype


@pytest.mark.parametrize("zname", list(ZONES))
def test_fast_path_is_the_dnspython_path(zname: str) -> None:
    zone = ZONES[zname]
    answers = _Answers(zone, 1000)
    rng = random.Random(zname)
    checked = 0
    for z, name, rtype in cases():
        if z != zname:
            continue
        for variant in range(4):
            wire, tcp = query(name, rtype, rng, variant)
            want = _respond(wire, lambda: zone, tcp=tcp).wire
            got = _quick(wire, tcp, answers)
            assert got is not None, (name, rtype, variant)  # the common shape: the fast path takes it
            assert got == want, (name, rtype, variant, got.hex(), want and want.hex())
            checked += 1
    assert checked > 400
    assert answers.kept and answers.negative  # rendered once, then patched


def test_every_answer_kind_is_covered() -> None:
    """The comparison above goes through truncation, every section and every rcode."""
    seen: set[str] = set()
    for zname, name, rtype in cases():
        if zname not in ("coredns", "server"):
            continue
        zone = ZONES[zname]
        for tcp, edns in ((False, -1), (True, -1), (False, 0)):
            wire = dns.message.make_query(name, rtype, use_edns=edns, payload=512).to_wire()
            r = dns.message.from_wire(_quick(wire, tcp, _Answers(zone, 0)) or b"")
            seen.add(dns.rcode.to_text(r.rcode()))
            seen |= {f"{s} {dns.rdatatype.to_text(rrset.rdtype)}" for s, rrsets in
                     (("an", r.answer), ("ns", r.authority), ("ar", r.additional)) for rrset in rrsets}
            if r.flags & dns.flags.TC:
                seen.add("TC")
    assert {"NOERROR", "NXDOMAIN", "REFUSED", "TC"} <= seen
    assert {"an A", "an AAAA", "an SRV", "an PTR", "an TXT", "an CNAME", "an SOA", "an NS", "ns SOA", "ar A",
            "ar AAAA"} <= seen


def test_case_and_id_and_flags_are_patched() -> None:
    zone = ZONES["server"]
    answers = _Answers(zone, 10)
    first = dns.message.make_query("mynginx.default.svc.cluster.local", "A", id=1)
    _quick(first.to_wire(), False, answers)
    q = dns.message.make_query("MyNGINX.default.SVC.cluster.LOCAL", "A", id=4242)
    q.flags = 0  # RD off
    out = _quick(q.to_wire(), False, answers)
    assert out == _respond(q.to_wire(), lambda: zone, tcp=False).wire
    r = dns.message.from_wire(out or b"")
    assert r.id == 4242 and not r.flags & dns.flags.RD and r.flags & dns.flags.AA
    assert r.question[0].name.labels[:5] == (b"MyNGINX", b"default", b"SVC", b"cluster", b"LOCAL")
    assert r.answer[0].name.labels[:5] == (b"MyNGINX", b"default", b"SVC", b"cluster", b"LOCAL")
    assert len(answers.kept) == 1  # one rendering for both spellings


def header(qid: int, flags: int, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return b"".join(x.to_bytes(2, "big") for x in (qid, flags, qd, an, ns, ar))


def unusual() -> list[tuple[str, bytes]]:
    q = dns.message.make_query("mynginx.default.svc.cluster.local", "A", id=7)
    plain = q.to_wire()
    name_end = plain.index(b"\x00", 12) + 1
    with_cookie = dns.message.make_query("mynginx.default.svc.cluster.local", "A", use_edns=0,
                                         options=[dns.edns.GenericOption(10, b"12345678")]).to_wire()
    padded = dns.message.make_query("mynginx.default.svc.cluster.local", "A", use_edns=0,
                                    options=[dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"")]).to_wire()
    version1 = dns.message.make_query("mynginx.default.svc.cluster.local", "A", use_edns=1).to_wire()
    chaos = dns.message.make_query("version.bind", "TXT", rdclass="CH").to_wire()
    notify = dns.message.make_query("cluster.local", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    two = dns.message.make_query("mynginx.default.svc.cluster.local", "A")
    two.question.append(dns.rrset.RRset(dns.name.from_text("cluster.local"), 1, 1))
    dotted = header(9, 0x0100) + b"\x07my.ngin\x07default\x03svc\x07cluster\x05local\x00\x00\x01\x00\x01"
    spaced = header(9, 0x0100) + b"\x07my ngin\x07default\x03svc\x07cluster\x05local\x00\x00\x01\x00\x01"
    pointer = header(9, 0x0100) + b"\xc0\x0c\x00\x01\x00\x01"
    return [
        ("EDNS option", with_cookie), ("EDNS padding", padded), ("EDNS version 1", version1), ("class CH", chaos),
        ("opcode NOTIFY", notify.to_wire()), ("two questions", two.to_wire()), ("trailing junk", plain + b"x"),
        ("a byte short", plain[:-1]), ("AXFR", dns.message.make_query("cluster.local", "AXFR").to_wire()),
        ("IXFR", dns.message.make_query("cluster.local", "IXFR").to_wire()),
        ("OPT question", header(9, 0x0100) + plain[12:name_end] + b"\x00\x29\x00\x01"),
        ("a dot in a label", dotted), ("a space in a label", spaced), ("a pointer", pointer),
        ("the root", dns.message.make_query(".", "NS").to_wire()),
        ("an answer record", plain[:6] + b"\x00\x01" + plain[8:] + plain[12:name_end] + b"\x00\x01\x00\x01"
         + b"\x00\x00\x00\x05\x00\x04\x01\x02\x03\x04"),
        ("ARCOUNT 2", plain[:10] + b"\x00\x02" + plain[12:]), ("QR=1", plain[:2] + b"\x81\x00" + plain[4:]),
        ("short", plain[:11]), ("empty", b""),
        ("OPT not at the root", plain[:10] + b"\x00\x01" + plain[12:] + b"\x01a\x00\x00\x29\x04\xd0\x00\x00\x00\x00"
         b"\x00\x00"),
    ]


@pytest.mark.parametrize(("what", "wire"), unusual(), ids=[w for w, _ in unusual()])
def test_unusual_queries_take_the_dnspython_path(what: str, wire: bytes) -> None:
    zone = ZONES["server"]
    assert _quick(wire, False, _Answers(zone, 10)) is None
    assert _quick(wire, True, _Answers(zone, 10)) is None
    for tcp in (False, True):
        assert handle(wire, zone, tcp=tcp) == _respond(wire, lambda: zone, tcp=tcp).wire


class Flaky:
    """A zone that fails until told otherwise."""

    zone = "cluster.local"
    ttl = 5

    def __init__(self, real: Zone) -> None:
        self.real = real
        self.broken = True

    def resolve(self, name: str, rtype: str) -> Any:
        if self.broken:
            raise RuntimeError("broken")
        return self.real.resolve(name, rtype)


def test_zone_failures_are_not_kept() -> None:
    flaky = Flaky(ZONES["server"])
    answers = _Answers(flaky, 10)  # type: ignore[arg-type]
    wire = dns.message.make_query("mynginx.default.svc.cluster.local", "A").to_wire()
    assert _quick(wire, False, answers) is None  # _respond answers SERVFAIL and logs it
    assert dns.message.from_wire(handle(wire, flaky, tcp=False) or b"").rcode() == dns.rcode.SERVFAIL  # type: ignore[arg-type]
    flaky.broken = False
    assert _quick(wire, False, answers) == _respond(wire, lambda: ZONES["server"], tcp=False).wire
    bad = Zone("cluster.local")  # a record the wire cannot carry: SERVFAIL from _respond, nothing kept
    bad.add(DnsRecord("x.cluster.local", "A", "not-an-address"))
    bad_answers = _Answers(bad, 10)
    wire = dns.message.make_query("x.cluster.local", "A").to_wire()
    assert _quick(wire, False, bad_answers) is None and not bad_answers.kept
    assert dns.message.from_wire(handle(wire, bad, tcp=False) or b"").rcode() == dns.rcode.SERVFAIL


def test_negative_answers_are_bounded_and_positive_ones_kept() -> None:
    zone = ZONES["generated"]
    answers = _Answers(zone, 5)
    for i in range(50):
        _quick(dns.message.make_query(f"nope-{i}.ns-0.svc.cluster.local", "A").to_wire(), False, answers)
        _quick(dns.message.make_query(f"svc-{i % 24}.ns-{i % 4}.svc.cluster.local", "SRV").to_wire(), False,
               answers)
    assert len(answers.negative) == 5 and len(answers.kept) == 24
    none = _Answers(zone, 0)
    wire = dns.message.make_query("nope.ns-0.svc.cluster.local", "A").to_wire()
    assert _quick(wire, False, none) == _respond(wire, lambda: zone, tcp=False).wire and not none.negative


def test_handle_keeps_answers_per_zone() -> None:
    a, b = ZONES["coredns"], ZONES["coredns-pods-ttl0"]
    for _ in range(2):
        for zone, name in ((a, "svc1.testns.svc.cluster.local"), (b, "svc1.testns.svc.example.org")):
            wire = dns.message.make_query(name, "A").to_wire()
            assert handle(wire, zone, tcp=False) == _respond(wire, lambda z=zone: z, tcp=False).wire
    assert dnsserver._answers_of(a) is dnsserver._answers_of(a) is not dnsserver._answers_of(b)


# --------------------------------------------------------------------------- any bytes

_NAMES = [*(n + "." for n in names(ZONES["coredns"])[:60]), "example.com.", "."]


@st.composite
def damaged_queries(draw: Any) -> bytes:
    """A query of the common shape (or near it), then a few bytes changed, cut or added."""
    q = dns.message.make_query(draw(st.sampled_from(_NAMES)), draw(st.sampled_from([*TYPES, *MORE_TYPES])),
                               use_edns=draw(st.sampled_from([-1, 0, 1])), payload=draw(st.integers(0, 65535)))
    q.flags = draw(st.integers(0, 0xFFFF))
    wire = bytearray(q.to_wire())
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(wire)))
        op = draw(st.integers(0, 2))
        if op == 0 and at < len(wire):
            wire[at] = draw(st.integers(0, 255))
        elif op == 1:
            del wire[at:at + draw(st.integers(1, 4))]
        else:
            wire[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(wire)


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(wire=st.one_of(damaged_queries(), st.binary(max_size=80)), tcp=st.booleans())
def test_any_bytes_same_response(wire: bytes, tcp: bool) -> None:
    zone = ZONES["coredns"]
    assert handle(wire, zone, tcp=tcp) == _respond(wire, lambda: zone, tcp=tcp).wire

"""`kproxy dns serve` asked by `dig` for every record kind: CoreDNS's expected answers
(tests/test_dns.py's CASES) come back on the wire, section by section."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import cli_run
import pytest
import yaml
from dns_cluster import coredns_objects, extra_objects
from test_dns import CASES
from test_dns_server import SERVE, Served

pytestmark = pytest.mark.skipif(shutil.which("dig") is None, reason="dig (dnsutils) is not installed")

SERIAL = re.compile(r"(hostmaster\.\S+) \d+ ")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    path = tmp_path_factory.mktemp("dns") / "cluster.yaml"
    path.write_text(yaml.safe_dump_all(coredns_objects() + extra_objects()))
    served = Served([*SERVE, "-f", str(path), "--listen", "127.0.0.1:0"], path.with_suffix(".log"))
    try:
        yield served.port
    finally:
        assert served.stop() == 0, served.log.read_text()


def dig(port: int, *args: str) -> tuple[str, set[str], dict[str, list[str]]]:
    """(status, flags, sections) of one dig query."""
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=5", "+nostats", "+nocmd", *args],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    status = re.search(r"status: (\w+)", out)
    flags = re.search(r";; flags: ([a-z ]+);", out)
    assert status and flags, out
    sections: dict[str, list[str]] = {"ANSWER": [], "AUTHORITY": [], "ADDITIONAL": []}
    current = None
    for line in out.splitlines():
        m = re.match(r";; (\w+) SECTION:", line)
        if m:
            current = m.group(1)
            continue
        if not line.strip():
            current = None
        elif current in sections and not line.startswith(";"):
            sections[current].append(SERIAL.sub(r"\1 SERIAL ", " ".join(line.split())))
    return status.group(1), set(flags.group(1).split()), sections


def norm(rrs: list[str]) -> list[str]:
    return sorted(SERIAL.sub(r"\1 SERIAL ", " ".join(r.split())) for r in rrs)


@pytest.mark.parametrize(("qname", "qtype", "rcode", "answer", "authority", "additional"), CASES,
                         ids=[f"{c[1]}:{c[0]}" for c in CASES])
def test_dig_coredns_cases(server: int, qname: str, qtype: str, rcode: str, answer: list[str],
                           authority: list[str], additional: list[str]) -> None:
    status, flags, got = dig(server, qname, qtype)
    assert status == rcode
    assert {"qr", "aa"} <= flags and "ra" not in flags
    assert sorted(got["ANSWER"]) == norm(answer)
    assert sorted(got["AUTHORITY"]) == norm(authority)
    assert sorted(got["ADDITIONAL"]) == norm(additional)


def test_dig_ptr(server: int) -> None:
    assert dig(server, "-x", "10.0.0.1")[2]["ANSWER"] == [
        "1.0.0.10.in-addr.arpa. 5 IN PTR svc1.testns.svc.cluster.local."]
    assert dig(server, "-x", "5678:abcd::1")[2]["ANSWER"] == [
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.c.b.a.8.7.6.5.ip6.arpa. 5 IN PTR "
        "5678-abcd--1.hdls1.testns.svc.cluster.local."]
    status, _, got = dig(server, "-x", "192.0.2.1")
    assert status == "NXDOMAIN" and got["AUTHORITY"][0].startswith("in-addr.arpa. 5 IN SOA ns.dns.in-addr.arpa.")


def test_dig_short_forms(server: int) -> None:
    def short(*args: str) -> list[str]:
        out = subprocess.run(["dig", "@127.0.0.1", "-p", str(server), "+short", *args],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        return sorted(out.split("\n")[:-1])

    assert short("svc1.testns.svc.cluster.local") == ["10.0.0.1"]
    assert short("db.other.svc.cluster.local") == ["10.8.0.1", "10.8.0.2"]
    assert short("_pg._tcp.db.other.svc.cluster.local", "SRV") == [
        "0 50 5432 db-0.db.other.svc.cluster.local.", "0 50 5432 db-1.db.other.svc.cluster.local."]
    assert short("dns-version.cluster.local", "TXT") == ['"1.1.0"']
    assert short("external.testns.svc.cluster.local", "CNAME") == ["ext.interwebs.test."]
    assert short("cluster.local", "NS") == ["ns.dns.cluster.local."]
    assert short("byip.other.svc.cluster.local") == []


def test_dig_echoes_spelling_and_refuses_outside(server: int) -> None:
    status, _, got = dig(server, "SVC1.TestNS.svc.CLUSTER.local", "A")
    assert status == "NOERROR" and got["ANSWER"] == ["SVC1.TestNS.svc.CLUSTER.local. 5 IN A 10.0.0.1"]
    status, flags, got = dig(server, "example.com", "A")
    assert status == "REFUSED" and "aa" not in flags and not any(got.values())


def test_dnspython_resolver(server: int) -> None:
    import dns.resolver

    r = dns.resolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.port = server
    assert sorted(a.to_text() for a in r.resolve("hdls1.testns.svc.cluster.local", "AAAA")) == [
        "5678:abcd::1", "5678:abcd::2"]
    srv = r.resolve("_http._tcp.hdls1.testns.svc.cluster.local", "SRV")
    assert len(srv) == 5 and {a.weight for a in srv} == {16} and {a.priority for a in srv} == {0}
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("svc0.testns.svc.cluster.local", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        r.resolve("svc1.testns.svc.cluster.local", "AAAA")
    # a pod's search path, through the stub resolver
    r.search = [dns.name.from_text(s) for s in ("testns.svc.cluster.local", "svc.cluster.local", "cluster.local")]
    r.ndots = 5
    assert [a.to_text() for a in r.resolve("svc1", "A", search=True)] == ["10.0.0.1"]
    assert [a.to_text() for a in r.resolve("db.other", "A", search=True)] != []


def test_cli_resolve_matches_server(server: int, tmp_path: Path) -> None:
    """`kproxy dns resolve` and the server agree name by name."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump_all(coredns_objects() + extra_objects()))
    import json

    for name, qtype in [("svc1.testns.svc.cluster.local.", "A"), ("_http._tcp.hdls1.testns.svc.cluster.local.", "SRV"),
                        ("2.0.0.172.in-addr.arpa.", "PTR"), ("svc6.testns.svc.cluster.local.", "AAAA")]:
        r = cli_run.kproxy("dns", "resolve", "-f", str(path), name, "--type", qtype, "--json", timeout=120)
        assert r.returncode == 0, r.stderr
        out = r.stdout
        ans = json.loads(out)["answer"]
        mine = sorted(f"{r['name']} {r['ttl']} IN {r['type']} {r['data']}" for r in ans["answer"])
        assert mine == sorted(dig(server, name, qtype)[2]["ANSWER"])

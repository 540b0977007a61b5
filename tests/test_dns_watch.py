"""``kproxy dns serve --watch`` while its manifest file is rewritten under it.

The file is rewritten 100 times, alternating between two cluster states, the ways editors and
tools write: in place (truncate, then write in pieces with pauses) and by a temporary file renamed
over it. Queries go out all the while. No query may fail (time out, SERVFAIL), and every answer
must be the answer of one of the two whole states: a half-written file (which may well parse, as
YAML documents end anywhere) must never be served.
"""

from __future__ import annotations

import argparse
import os
import random
import threading
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest
import yaml
from k8s import ep, eport, port, service, slice_
from test_dns_server import SERVE, Served

import kproxy_core as kp
from kproxy_core import dnsserver

pytestmark = pytest.mark.slow

SERVICES = 40
REWRITES = 100
SETTLE = 0.25


def state(which: int) -> list[dict[str, object]]:
    """Both states have every name; each name's answer differs between them. The names queried
    sit at the start, the middle and the end of the file, so a file cut anywhere answers one of
    them differently from both states."""
    objs: list[dict[str, object]] = []
    for i in range(SERVICES):
        objs.append(service("w", f"svc-{i}", f"10.{96 + which}.0.{i + 1}", [port(80, "http")]))
        objs.append(slice_("w", f"svc-{i}", [ep(f"10.{200 + which}.{i}.1")], [eport(8080, "http")]))
    objs.append(service("w", "hdls", "None", [port(80, "http")]))
    objs.append(slice_("w", "hdls", [ep(f"10.{210 + which}.0.{j + 1}") for j in range(3 + which)],
                       [eport(8080, "http")]))
    return objs


QUESTIONS = [(f"svc-{i}.w.svc.cluster.local", "A") for i in (0, SERVICES // 2, SERVICES - 1)] + [
    ("hdls.w.svc.cluster.local", "A"), ("_http._tcp.hdls.w.svc.cluster.local", "SRV"),
]


def answers(objs: list[dict[str, object]]) -> dict[tuple[str, str], tuple[str, tuple[str, ...]]]:
    zone = kp.Engine(kp.Cluster.from_objects(objs)).dns_zone()
    out = {}
    for name, rtype in QUESTIONS:
        a = zone.resolve(name, rtype)
        out[(name, rtype)] = (a.rcode, tuple(sorted(r.data for r in a.records)))
    return out


def seen(r: dns.message.Message) -> tuple[str, tuple[str, ...]]:
    return dns.rcode.to_text(r.rcode()), tuple(sorted(rd.to_text() for rrset in r.answer for rd in rrset))


def write(path: Path, text: str, how: int, rng: random.Random) -> None:
    data = text.encode()
    if how == 0:  # in place, in pieces, as a program streaming its output does
        with path.open("r+b") as f:
            f.truncate(0)
            cuts = sorted(rng.sample(range(1, len(data)), 3))
            for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
                f.write(data[a:b])
                f.flush()
                time.sleep(rng.uniform(0, 0.02))
    elif how == 1:  # a temporary file renamed over it, as editors save
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    else:  # in place, at once
        path.write_bytes(data)


def test_watch_never_serves_a_half_written_file(tmp_path: Path) -> None:
    texts = [yaml.safe_dump_all(state(0)), yaml.safe_dump_all(state(1))]
    want = [answers(state(0)), answers(state(1))]
    assert all(want[0][q] != want[1][q] for q in QUESTIONS)
    path = tmp_path / "cluster.yaml"
    path.write_text(texts[0])
    served = Served([*SERVE, "-f", str(path), "--listen", "127.0.0.1:0", "--watch", "--watch-interval", "0.05",
                     "--watch-settle", str(SETTLE)], tmp_path / "stderr.txt")
    failures: list[str] = []
    states_seen: set[int] = set()
    sent = [0]
    done = threading.Event()

    def client() -> None:
        while not done.is_set():
            for name, rtype in QUESTIONS:
                sent[0] += 1
                try:
                    r = dns.query.udp(dns.message.make_query(name, rtype), "127.0.0.1", port=served.port, timeout=2)
                except Exception as e:
                    failures.append(f"{name} {rtype}: {type(e).__name__}: {e}")
                    continue
                got = seen(r)
                which = [i for i in (0, 1) if want[i][(name, rtype)] == got]
                if not which:
                    failures.append(f"{name} {rtype}: {got} is neither state's answer")
                states_seen.update(which)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    rng = random.Random(13)
    try:
        for i in range(1, REWRITES + 1):
            write(path, texts[i % 2], i % 3, rng)
            time.sleep(rng.choice([0.01, 0.03, 0.05, SETTLE * 2.5]))  # now and then long enough to reload
        final = want[REWRITES % 2]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r = dns.query.udp(dns.message.make_query(*QUESTIONS[-1]), "127.0.0.1", port=served.port, timeout=2)
            if seen(r) == final[QUESTIONS[-1]]:
                break
            time.sleep(0.1)
        else:
            failures.append("the last state was never served")
    finally:
        done.set()
        thread.join(10)
        code = served.stop()
    log = served.log.read_text()
    assert code == 0, log
    assert not failures, f"{len(failures)} of {sent[0]} queries failed: {failures[:5]}"
    assert sent[0] > 200 and states_seen == {0, 1}
    reloads = log.count("reloaded:")
    assert reloads >= 10, log
    assert "reload failed" not in log, log  # never even tried to read a half-written file


def test_watch_and_workers_arguments() -> None:
    p = argparse.ArgumentParser()
    dnsserver.add_serve_arguments(p)
    a = p.parse_args([])
    assert (a.watch_settle, a.workers, a.cache, a.udp_buffer) == (
        dnsserver.DEFAULT_SETTLE, 1, dnsserver.DEFAULT_CACHE, dnsserver.DEFAULT_UDP_BUFFER)
    a = p.parse_args(["--watch-settle", "0.5", "--workers", "2", "--cache", "0", "--udp-buffer", "0"])
    assert (a.watch_settle, a.workers, a.cache, a.udp_buffer) == (0.5, 2, 0, 0)
    for bad in (["--watch-settle", "0"], ["--workers", "0"], ["--workers", "x"], ["--udp-buffer", "-1"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
    text = " ".join(p.format_help().split())
    assert "half-written" in text and "SO_REUSEPORT" in text and "NXDOMAIN" in text

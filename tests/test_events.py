"""kproxy_core.events: recorded watch streams read with their times, and flows classified
against the cluster of their own time, with conntrack's rules for flows that outlive
their endpoint (TCP keeps it until it times out, UDP picks again)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from k8s import ep, eport, node, port, service, slice_

import kproxy_core as kp
from kproxy_core import events, flows

pa = pytest.importorskip("pyarrow")

NODE = "n1"
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def base() -> list[dict[str, Any]]:
    return [
        node(NODE, "192.168.0.2", pod_cidr="10.0.0.0/24"),
        service("ns", "web", "172.30.0.10", [port(80, "http"), port(53, "dns", "UDP")]),
        slice_("ns", "web", [ep("10.0.0.5", NODE), ep("10.0.0.6", NODE)],
               [eport(8080, "http"), eport(5353, "dns", "UDP")]),
    ]


def rfc3339(t: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def engine(impl: str, **kw: Any) -> kp.Engine:
    return kp.Engine(kp.Cluster.from_objects(base()), node=NODE, seed=3, impl=impl, **kw)


def test_parse_time() -> None:
    assert events.parse_time("2023-11-14T22:13:20Z") == T0
    assert events.parse_time("2023-11-14T22:13:20.123456789Z") == pytest.approx(T0 + 0.123456789)
    assert events.parse_time("2023-11-14T23:13:20+01:00") == T0
    assert events.parse_time(T0) == T0
    for bad in ("yesterday", "", None, True, float("nan"), "2023-11-14 22:13:20"):
        assert events.parse_time(bad) is None


def recording(tmp_path: Path, items: list[Any], pretty: bool = True) -> Path:
    path = tmp_path / "watch.json"
    path.write_text("".join(json.dumps(i, indent=2 if pretty else None) + "\n" for i in items))
    return path


def test_a_recording_in_kubectls_form_is_read_in_order_with_its_times(tmp_path: Path) -> None:
    svc, sl = base()[1], base()[2]
    sl_later = json.loads(json.dumps(sl))
    sl_later["metadata"]["annotations"] = {events.TRIGGER_TIME: rfc3339(T0 + 20)}
    sl_gone = json.loads(json.dumps(sl))
    sl_gone["metadata"]["deletionTimestamp"] = rfc3339(T0 + 40)
    items = [
        {"type": "ADDED", "object": {**svc, "metadata": {**svc["metadata"], "creationTimestamp": rfc3339(T0)}}},
        {"type": "MODIFIED", "object": sl_later},
        {"time": T0 + 30, "type": "MODIFIED", "object": sl},  # a recorder's own time wins
        {"type": "DELETED", "object": sl_gone},
        {"type": "MODIFIED", "object": sl},  # no time at all: that of the one before
        {"type": "MODIFIED", "object": sl_later},  # earlier than the one before: stream order wins
    ]
    timeline = events.read_events(recording(tmp_path, items))
    assert timeline.times.tolist() == [T0, T0 + 20, T0 + 30, T0 + 40, T0 + 40, T0 + 40]
    assert [e["type"] for _, e in timeline.events] == ["ADDED", "MODIFIED", "MODIFIED", "DELETED", "MODIFIED",
                                                       "MODIFIED"]
    assert timeline.untimed == 1
    assert timeline.events[3][0].startswith(f"{tmp_path / 'watch.json'}: line ")
    assert len(timeline.between(T0 + 20, T0 + 40)) == 4


def test_plain_objects_lists_and_yaml_are_read(tmp_path: Path) -> None:
    sl = base()[2]
    gone = json.loads(json.dumps(sl))
    gone["metadata"]["deletionTimestamp"] = rfc3339(T0)
    p = recording(tmp_path, [{"kind": "List", "apiVersion": "v1", "items": [base()[1], sl]}, gone], pretty=False)
    t = events.read_events(p)
    assert [e["type"] for _, e in t.events] == ["MODIFIED", "MODIFIED", "DELETED"]
    import yaml

    y = tmp_path / "watch.yaml"
    y.write_text(yaml.safe_dump_all([{"type": "ADDED", "object": sl}, {"type": "DELETED", "object": sl}]))
    assert [e["type"] for _, e in events.read_events(y).events] == ["ADDED", "DELETED"]


@pytest.mark.parametrize(("text", "message"), [
    ('{"type": "ADDED", "object": {}}\n{"oops"', r"watch.json: line 2: not JSON"),
    ('{"type": "RENAMED", "object": {}}', r"type: 'RENAMED' is not ADDED, MODIFIED or DELETED"),
    ("[1]", r"line 1 \(#1\): not an object"),
])
def test_a_bad_recording_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "watch.json"
    p.write_text(text)
    with pytest.raises(events.EventsError, match=message):
        events.read_events(p)


def flows_table(rows: list[tuple[float, str, int, int, str]]) -> Any:
    return pa.table({
        "time": pa.array([r[0] for r in rows], pa.float64()),
        "src": [r[1] for r in rows], "sport": [r[2] for r in rows],
        "dst": ["172.30.0.10"] * len(rows), "dport": [r[3] for r in rows], "proto": [r[4] for r in rows],
    })


def endpoint_change(times: float, keep: list[str]) -> dict[str, Any]:
    sl = slice_("ns", "web", [ep(ip, NODE) for ip in keep], [eport(8080, "http"), eport(5353, "dns", "UDP")])
    return {"time": times, "type": "MODIFIED", "object": sl}


@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_flows_are_decided_by_the_cluster_of_their_own_time(impl: str) -> None:
    clients = [(f"10.1.0.{i}", 40000 + i) for i in range(1, 41)]
    first = flows.classify(flows_table([(T0, s, p, 80, "TCP") for s, p in clients]), engine(impl))
    picks = dict(zip(clients, first.column("endpoint_ip").to_pylist(), strict=True))
    gone = "10.0.0.6"
    assert gone in picks.values() and "10.0.0.5" in picks.values()
    # at T0+100 the endpoint 10.0.0.6 leaves and 10.0.0.7 comes
    timeline = events.Timeline.from_events([("watch", endpoint_change(T0 + 100, ["10.0.0.5", "10.0.0.7"]))])
    rows = []
    for s, p in clients:
        rows += [(T0, s, p, 80, "TCP"), (T0 + 50, s, p, 80, "TCP"),  # before the change
                 (T0 + 150, s, p, 80, "TCP"),  # the same TCP connection after it
                 (T0 + 150, s, p + 1000, 80, "TCP"),  # a new connection after it
                 (T0, s, p, 53, "UDP"), (T0 + 110, s, p, 53, "UDP")]  # a UDP flow across it
    timed = events.TimedStats()
    stats = flows.Stats()
    eng = engine(impl)
    got = pa.concat_tables(list(events.classify_timed([flows_table(rows)], eng, timeline, stats=stats,
                                                      timed=timed)))
    assert got.num_rows == len(rows) and timed.applied == 1 and timed.late == 0
    assert got.column("time").to_pylist() == [r[0] for r in rows]  # the input's order
    eps = got.column("endpoint_ip").to_pylist()
    for i, (s, p) in enumerate(clients):
        tcp0, tcp50, tcp150, new150, udp0, udp110 = eps[6 * i: 6 * i + 6]
        assert tcp0 == tcp50 == tcp150 == picks[s, p]  # conntrack keeps the TCP flow's endpoint
        assert new150 in ("10.0.0.5", "10.0.0.7")
        if udp0 == gone:  # kube-proxy's cleanup deleted the UDP entry: picked again
            assert udp110 in ("10.0.0.5", "10.0.0.7")
        else:
            assert udp110 == udp0
    assert "10.0.0.7" in eps[3::6] and gone in eps[2::6] and stats.records == len(rows)
    # a kept flow to the gone endpoint still names its node (from when the cluster had it)
    nodes = got.column("endpoint_node").to_pylist()
    assert all(nodes[i] == NODE for i in range(2, len(rows), 6))
    # past the TCP timeout (86400 s) the old connection's next packet picks again
    late = next(events.classify_timed([flows_table([(T0 + 90000, s, p, 80, "TCP") for s, p in clients])],
                                      eng, events.Timeline(), timed=timed))
    assert set(late.column("endpoint_ip").to_pylist()) <= {"10.0.0.5", "10.0.0.7"}


@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_records_out_of_order_and_late_ones(impl: str) -> None:
    timeline = events.Timeline.from_events([("w", endpoint_change(T0 + 100, ["10.0.0.9"]))])
    chunks = [flows_table([(T0 + 200, "10.1.0.1", 1, 80, "TCP"), (T0 + 10, "10.1.0.2", 2, 80, "TCP")]),
              flows_table([(T0 + 20, "10.1.0.3", 3, 80, "TCP")])]
    timed = events.TimedStats()
    got = list(events.classify_timed(chunks, engine(impl), timeline, timed=timed))
    # within a chunk records go in time order (the answers in the input's order)
    first = got[0].column("endpoint_ip").to_pylist()
    assert first[0] == "10.0.0.9" and first[1] in ("10.0.0.5", "10.0.0.6")
    # a later chunk's record from before a change already applied: the newer cluster, counted
    assert got[1].column("endpoint_ip").to_pylist() == ["10.0.0.9"] and timed.late == 1


@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_a_change_the_engine_refuses_is_named_and_the_rest_applied(impl: str) -> None:
    bad = {"time": T0 + 1, "type": "MODIFIED",
           "object": service("ns", "web", "172.30.0.10", [{"port": 99999, "protocol": "TCP"}])}
    good = endpoint_change(T0 + 2, ["10.0.0.9"])
    timeline = events.Timeline.from_events([("watch: line 1", bad), ("watch: line 2", good)])
    timed = events.TimedStats()
    eng = engine(impl)
    got = next(events.classify_timed([flows_table([(T0 + 5, "10.1.0.1", 1, 80, "TCP")])], eng, timeline,
                                     timed=timed))
    assert timed.applied == 1 and timed.refused_count == 1
    assert "99999" in timed.refused[0] and "ns/web" in timed.refused[0]
    assert got.column("endpoint_ip").to_pylist() == ["10.0.0.9"]


def test_classify_takes_each_records_time_column() -> None:
    """A table with a time column: each record's own clock (UDP flows of 30 s)."""
    eng = engine("compiled", timeouts={"UDP": 30.0})
    aff = [service("ns", "sticky", "172.30.0.20", [port(80)], sessionAffinity="ClientIP",
                   sessionAffinityConfig={"clientIP": {"timeoutSeconds": 10}}),
           slice_("ns", "sticky", [ep(f"10.0.0.{i}", NODE) for i in range(20, 28)], [eport(8080)])]
    eng.apply(aff)
    clients = [f"10.1.0.{i}" for i in range(1, 60)]
    times = [T0, T0 + 5, T0 + 40]
    table = pa.table({
        "time": pa.array([np.datetime64(int(t * 1e6), "us") for t in times for _ in clients], pa.timestamp("us")),
        "src": clients * 3, "sport": [k for k in range(3) for _ in clients],
        "dst": ["172.30.0.20"] * (3 * len(clients)), "dport": [80] * (3 * len(clients)),
        "proto": ["TCP"] * (3 * len(clients)),
    })
    got = flows.classify(table, eng).column("endpoint_ip").to_pylist()
    n = len(clients)
    assert got[:n] == got[n:2 * n]  # 5 s later: still affine
    assert got[:n] != got[2 * n:]  # 40 s later the affinity (10 s) has expired for every client


@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_changed_since_names_what_each_apply_recomputed(impl: str) -> None:
    """What classify's dictionaries follow: only the Services an apply recomputed are read again."""
    eng = engine(impl)
    start = eng.generation
    eng.apply([endpoint_change(T0, ["10.0.0.9"])["object"]])
    assert eng.changed_since(start) == {("ns", "web")} and eng.changed_since(eng.generation) == set()
    eng.apply([node("n2", "192.168.0.3")])  # a Node: everything recomputed
    assert eng.changed_since(start) is None and eng.changed_since(-1) is None
    got = flows.classify(flows_table([(T0, "10.1.0.1", 1, 80, "TCP")]), eng)
    assert got.column("endpoint_ip").to_pylist() == ["10.0.0.9"]

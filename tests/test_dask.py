"""kproxy_core.dask on a real dask cluster (two worker processes of one thread each): the
answers of partitions classified on the workers are those of one single-process
classification, each worker builds its engine once, time-aware partitions are decided by
the cluster of their time, and traffic files become a Parquet dataset partitioned by file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from k8s import ep, eport, node, port, service, slice_

import kproxy_core as kp
from kproxy_core import events, flows
from kproxy_core.traffic import read_tables

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pd = pytest.importorskip("pandas")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")
# the product's module: with dask present, failing to import it is a failure, not a skip
import kproxy_core.dask as kd  # noqa: E402

NODE = "n1"
SEED = 7
OPTIONS: dict[str, Any] = {"node": NODE, "cluster_cidr": "10.0.0.0/8"}
T0 = 1_700_000_000.0
WEB = [f"10.0.0.{i}" for i in range(5, 13)]  # web's endpoints, on n1 and n2 by turns
API = [f"10.0.1.{i}" for i in range(1, 7)]
GONE = "10.0.0.6"  # leaves web at T0 + 100
NEW = "10.0.0.99"  # joins web at T0 + 100


def objects() -> list[dict[str, Any]]:
    return [
        node(NODE, "192.168.0.2", pod_cidr="10.0.0.0/24"), node("n2", "192.168.0.3", pod_cidr="10.0.1.0/24"),
        service("ns", "web", "172.30.0.10", [port(80, "http", node_port=30080), port(53, "dns", "UDP")],
                type="NodePort"),
        web_slice(WEB),
        service("ns", "api", "172.30.0.20", [port(443, "https")]),
        slice_("ns", "api", [ep(ip, "n2") for ip in API], [eport(8443, "https")]),
        service("ns", "empty", "172.30.0.30", [port(80)]),  # no endpoints: REJECT
    ]


def web_slice(ips: list[str]) -> dict[str, Any]:
    return slice_("ns", "web", [ep(ip, NODE if i % 2 == 0 else "n2") for i, ip in enumerate(ips)],
                  [eport(8080, "http"), eport(5353, "dns", "UDP")])


def engine() -> kp.Engine:
    if not kp.COMPILED_AVAILABLE:
        pytest.fail("kproxy_core._engine is not built")
    return kp.Engine(kp.Cluster.from_objects(objects()), seed=SEED, **OPTIONS)


def traffic(n: int, seed: int = 1, *, times: bool = False) -> Any:
    """``n`` records: pod clients to the ClusterIPs, the NodePort and unknown addresses,
    TCP and UDP, and about 1% bad ones (not an address, a port out of range, ICMP)."""
    rng = np.random.default_rng(seed)
    clients = np.array([f"10.0.{a}.{b}" for a in (2, 3) for b in range(1, 255)] + ["203.0.113.7", "198.51.100.9"])
    targets = [("172.30.0.10", 80, "TCP"), ("172.30.0.10", 53, "UDP"), ("172.30.0.20", 443, "TCP"),
               ("172.30.0.30", 80, "TCP"), ("192.168.0.2", 30080, "TCP"), ("192.168.0.3", 30080, "TCP"),
               ("1.2.3.4", 443, "TCP"), ("172.30.0.99", 80, "UDP")]
    pick = rng.integers(0, len(targets), n)
    src = clients[rng.integers(0, len(clients), n)].astype(object)
    dst = np.array([t[0] for t in targets], dtype=object)[pick]
    dport = np.array([t[1] for t in targets])[pick]
    proto = np.array([t[2] for t in targets], dtype=object)[pick]
    sport = rng.integers(1024, 65536, n)
    bad = rng.random(n)
    src[bad < 0.004] = "not-an-address"
    dport[(bad >= 0.004) & (bad < 0.008)] = 70000
    proto[(bad >= 0.008) & (bad < 0.01)] = "ICMP"
    cols: dict[str, Any] = {"src": src.tolist(), "sport": sport, "dst": dst.tolist(), "dport": dport,
                            "proto": proto.tolist()}
    if times:
        cols = {"time": np.sort(T0 + rng.random(n) * 300.0), **cols}
    return pa.table(cols)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        with distributed.Client(cluster) as c:
            yield c
    finally:
        cluster.close()


def with_answers(inputs: Any, answers: Any) -> Any:
    """``inputs`` (pandas) with the added columns of a classified Table, as kproxy_core.dask
    returns them."""
    out = inputs.copy()
    for name, col in kd.to_pandas(answers)[list(flows.ADDED)].items():
        out[name] = col.array
    return out


def on_disk(table: Any, directory: Path, parts: int) -> Any:
    """``table`` as ``parts`` Parquet files, read by dask (each worker reads its own)."""
    directory.mkdir()
    step = -(-table.num_rows // parts)
    for i in range(parts):
        pq.write_table(table.slice(i * step, step), directory / f"part-{i:02d}.parquet")
    ddf = dd.read_parquet(directory)
    assert ddf.npartitions == parts
    return ddf


def test_partitions_on_two_workers_answer_as_one_process(client: Any, tmp_path: Path) -> None:
    table = traffic(300_000)
    ddf = on_disk(table, tmp_path / "in", 12)
    client.run(kd.clear_cache)
    before = client.run(kd.worker_stats)
    got = kd.classify(ddf, objects(), seed=SEED, **OPTIONS).compute()
    after = client.run(kd.worker_stats)

    expected = with_answers(ddf.compute(), flows.classify(table, engine()))
    pd.testing.assert_frame_equal(got, expected)  # every column, every record, in order
    counts = got["verdict"].value_counts()
    assert counts["DNAT"] > 0 and counts["REJECT"] > 0 and counts["PASS"] > 0
    assert got["error"].notna().sum() > 0 and got["endpoint_port"].isna().sum() > 0
    assert set(got["endpoint_ip"].dropna()) == set(WEB) | set(API)

    # both workers did work, and each built its engine once for all of its partitions
    assert len(after) == 2
    for worker, stats in after.items():
        assert stats["engines_built"] - before[worker]["engines_built"] == 1
        assert stats["partitions"] > before[worker]["partitions"]
    assert sum(after[w]["records"] - before[w]["records"] for w in after) == table.num_rows

    # a second computation reuses them
    kd.classify(ddf.partitions[:4], objects(), seed=SEED, **OPTIONS).compute()
    again = client.run(kd.worker_stats)
    assert all(again[w]["engines_built"] == after[w]["engines_built"] for w in after)


def test_meta_is_what_comes_back(client: Any) -> None:
    ddf = dd.from_pandas(traffic(2_000).to_pandas(), npartitions=3)
    lazy = kd.classify(ddf, objects(), seed=SEED, **OPTIONS)
    got = lazy.compute()
    assert list(lazy.columns) == list(got.columns)
    for name in got.columns:  # categoricals: categories unknown until computed
        want, have = lazy.dtypes[name], got.dtypes[name]
        assert (isinstance(want, pd.CategoricalDtype) and isinstance(have, pd.CategoricalDtype)) or want == have, name
    assert got.dtypes["endpoint_port"] == "UInt16" and got.dtypes["masquerade"] == "boolean"
    # manifest text and a Cluster give the same as object dicts
    text = "\n---\n".join(json.dumps(o) for o in objects())
    by_text = kd.classify(ddf, text, seed=SEED, **OPTIONS).compute()
    by_cluster = kd.classify(ddf, kp.Cluster.from_objects(objects()), seed=SEED, **OPTIONS).compute()
    pd.testing.assert_frame_equal(by_text, got)
    pd.testing.assert_frame_equal(by_cluster, got)


def test_bad_calls_are_refused_before_anything_runs() -> None:
    ddf = dd.from_pandas(pd.DataFrame({"src": ["10.0.2.1"], "dst": ["172.30.0.10"], "dport": [80]}), npartitions=1)
    with pytest.raises(flows.FlowError, match="no column proto"):
        kd.classify(ddf, objects())
    full = dd.from_pandas(traffic(10).to_pandas(), npartitions=1)
    with pytest.raises(flows.FlowError, match="needs a time column"):
        kd.classify(full, objects(), events=events.Timeline())
    with pytest.raises(TypeError, match="not an Engine"):
        kd.classify(full, engine())
    with pytest.raises(kp.ManifestError):
        kd.classify(full, "kind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 99999}]}\n")


def timeline_items() -> list[dict[str, Any]]:
    """web loses GONE and gains NEW at T0 + 100; api keeps only two endpoints at T0 + 200."""
    api = slice_("ns", "api", [ep(ip, "n2") for ip in API[:2]], [eport(8443, "https")])
    return [
        {"time": T0 + 100, "type": "MODIFIED", "object": web_slice([ip for ip in WEB if ip != GONE] + [NEW])},
        {"time": T0 + 200, "type": "MODIFIED", "object": api},
    ]


def plain(df: Any) -> Any:
    """``df`` with its string answers as plain values (not categories)."""
    return df.astype({name: object for name, dtype in kd.ANSWER_DTYPES.items() if dtype == "category"})


def to_gone(src: str) -> int:
    """A source port whose TCP connection from ``src`` to web:80 picks GONE (before it leaves)."""
    probe = pa.table({"src": [src] * 500, "sport": list(range(20000, 20500)), "dst": ["172.30.0.10"] * 500,
                      "dport": [80] * 500, "proto": ["TCP"] * 500})
    picks = flows.classify(probe, engine(), track=False).column("endpoint_ip").to_pylist()
    return 20000 + picks.index(GONE)


def connection(src: str, sport: int, *times: float) -> Any:
    n = len(times)
    return pa.table({"time": [T0 + t for t in times], "src": [src] * n, "sport": [sport] * n,
                     "dst": ["172.30.0.10"] * n, "dport": [80] * n, "proto": ["TCP"] * n})


def test_partitions_by_time_are_decided_by_the_cluster_of_their_time(client: Any, tmp_path: Path) -> None:
    # two TCP connections to GONE: one with packets 10 s apart around its leaving (in one
    # partition: conntrack keeps it), one with packets 290 s apart (partitions apart)
    inside, across = ("10.0.2.201", to_gone("10.0.2.201")), ("10.0.2.202", to_gone("10.0.2.202"))
    table = pa.concat_tables([traffic(60_000, seed=2, times=True), connection(*inside, 95, 105),
                              connection(*across, 5, 295)]).sort_by("time")
    ddf = dd.from_pandas(table.to_pandas(), npartitions=8, sort=False)  # ~37 s each
    recording = tmp_path / "watch.json"
    recording.write_text("".join(json.dumps(i) + "\n" for i in timeline_items()))
    stats_before = client.run(kd.worker_stats)
    got = kd.classify(ddf, objects(), events=recording, seed=SEED, **OPTIONS).compute()
    stats_after = client.run(kd.worker_stats)
    # the workers' engines went forward through the changes (rebuilt only when a partition was older)
    assert sum(stats_after[w]["engines_advanced"] - stats_before[w]["engines_advanced"] for w in stats_after) >= 1

    timeline = events.read_events(recording)
    frames = []
    for i in range(ddf.npartitions):  # one process, each partition from the base cluster
        part = ddf.get_partition(i).compute()
        answers = list(events.classify_timed([pa.Table.from_pandas(part, preserve_index=False)], engine(),
                                             timeline))
        frames.append(with_answers(part, answers[0]))
    # the categories are each engine's dictionaries (their order is its history's): values compared
    pd.testing.assert_frame_equal(plain(got), plain(pd.concat(frames)))

    # the changes took effect: a connection first seen after GONE left never goes to it
    first_seen = got.groupby(["src", "sport", "dst", "dport", "proto"], sort=False)["time"].transform("min")
    after = got[(first_seen > T0 + 100) & (got["dst"] == "172.30.0.10")]
    before = got[(got["time"] < T0 + 100) & (got["dst"] == "172.30.0.10")]
    assert len(after) > 1000 and GONE not in set(after["endpoint_ip"].dropna())
    assert NEW in set(after["endpoint_ip"].dropna()) and NEW not in set(before["endpoint_ip"].dropna())
    assert GONE in set(before["endpoint_ip"].dropna())
    api_late = got[(got["time"] > T0 + 200) & (got["dst"] == "172.30.0.20")]
    assert set(api_late["endpoint_ip"].dropna()) == set(API[:2])

    # at partition boundaries: within one, conntrack keeps a TCP flow's endpoint after it left;
    # a flow whose packets are partitions apart is decided afresh, by the cluster of the time
    part_of = {idx: i for i, frame in enumerate(frames) for idx in frame.index}

    def packets(src: str, sport: int) -> Any:
        return got[(got["src"] == src) & (got["sport"] == sport) & (got["dst"] == "172.30.0.10")]

    kept, fresh = packets(*inside), packets(*across)
    assert len({part_of[i] for i in kept.index}) == 1 and len({part_of[i] for i in fresh.index}) == 2
    assert kept["endpoint_ip"].tolist() == [GONE, GONE]
    assert fresh["endpoint_ip"].iloc[0] == GONE and fresh["endpoint_ip"].iloc[1] != GONE


def write_csv(path: Path, table: Any) -> None:
    import pyarrow.csv as pcsv

    pcsv.write_csv(table, path)


def single_process(path: Path) -> Any:
    """A file classified in one process, one engine and one flow state for all its chunks."""
    eng = engine()
    return pa.concat_tables([flows.classify(t, eng) for t in read_tables(str(path))])


def test_files_become_a_dataset_partitioned_by_file(client: Any, tmp_path: Path) -> None:
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    a, b = traffic(40_000, seed=3), traffic(25_000, seed=4)
    pq.write_table(a, tmp_path / "a.parquet")
    write_csv(tmp_path / "b flows.csv", b)
    out = tmp_path / "out"
    missing = tmp_path / "nowhere.csv"
    totals = kd.classify_files([tmp_path / "a.parquet", tmp_path / "b flows.csv", missing], out, objects(),
                               client=client, seed=SEED, **OPTIONS)
    assert totals["records"] == a.num_rows + b.num_rows
    assert len(totals["errors"]) == 1 and totals["errors"][0].startswith(f"{missing}: ")
    assert "\n" not in totals["errors"][0] and "Traceback" not in totals["errors"][0]
    files = totals["files"]
    assert files[str(tmp_path / "a.parquet")]["records"] == a.num_rows
    assert files[str(tmp_path / "b flows.csv")]["records"] == b.num_rows
    assert files[str(missing)]["error"] == totals["errors"][0]
    assert sum(totals["verdicts"].values()) + sum(totals["bad"].values()) == a.num_rows + b.num_rows

    dataset = ds.dataset(out, partitioning="hive")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["file=a.parquet", "file=b%20flows.csv"]  # one partition per input file, none for the missing
    for name, path in (("a.parquet", tmp_path / "a.parquet"), ("b flows.csv", tmp_path / "b flows.csv")):
        part = dataset.to_table(filter=pc.field("file") == name)
        want = single_process(path)
        assert part.num_rows == want.num_rows
        for col in want.column_names:
            assert part.column(col).to_pylist() == want.column(col).to_pylist(), (name, col)


def test_a_timed_file_and_an_empty_partition(client: Any, tmp_path: Path) -> None:
    table = traffic(30_000, seed=5, times=True)
    pq.write_table(table, tmp_path / "timed.parquet")
    timeline = events.Timeline.from_events([("w", i) for i in timeline_items()])
    totals = kd.classify_files([tmp_path / "timed.parquet"], tmp_path / "out", objects(), client=client,
                               events=timeline, seed=SEED, chunk=7_000, **OPTIONS)
    assert totals["errors"] == [] and totals["files"][str(tmp_path / "timed.parquet")]["parts"] == 1
    assert totals["timed"]["applied"] == 2
    import pyarrow.dataset as ds

    got = ds.dataset(tmp_path / "out", partitioning="hive").to_table()
    chunks = read_tables(str(tmp_path / "timed.parquet"), chunk=7_000)
    want = pa.concat_tables(events.classify_timed(chunks, engine(), timeline))
    for col in want.column_names:
        assert got.column(col).to_pylist() == want.column(col).to_pylist(), col

    # a partition with no records comes back empty, with the answers' dtypes
    df = table.slice(0, 100).to_pandas()
    ddf = dd.from_pandas(df, npartitions=2).map_partitions(lambda p: p.iloc[:0] if p.index[0] == 0 else p)
    out = kd.classify(ddf, objects(), events=timeline, seed=SEED, **OPTIONS).compute()
    assert len(out) == 50 and out.dtypes["endpoint_port"] == "UInt16"


def test_connect() -> None:
    with pytest.raises(ValueError, match="local:N"):
        kd.connect("local:zero")
    with kd.connect("local:1") as c:
        assert list(c.nthreads().values()) == [1]
        cluster = c.cluster
    assert cluster.status.name == "closed"

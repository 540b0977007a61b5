"""kproxy_core.flows: tables of flows (pyarrow, pandas) classified record by record, as
the engine's single lookups would, with bad records kept and explained; and the compiled
address parser under it, against its twin."""

from __future__ import annotations

import ipaddress
import json
import socket
from pathlib import Path
from typing import Any

import cli_run
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from k8s import ep, eport, node, port, service, slice_

import kproxy_core as kp
from kproxy_core import _engine_py, flows

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

try:
    from kproxy_core import _engine as _compiled
except ImportError:  # pragma: no cover - only without a build
    _compiled = None  # type: ignore[assignment]

PARSERS = [_engine_py.parse_ips] + ([_compiled.parse_ips] if _compiled is not None else [])
NODE = "n1"


def cluster_objects() -> list[dict[str, Any]]:
    return [
        node(NODE, "192.168.0.2", "fd00:ff::2", pod_cidr="10.0.0.0/24"), node("n2", "192.168.0.3"),
        service("ns", "web", ["172.30.0.10", "fd00:30::10"], [port(80, "http"), port(53, "dns", "UDP")],
                ipFamilyPolicy="RequireDualStack", type="NodePort"),
        slice_("ns", "web", [ep("10.0.0.5", NODE), ep("10.0.1.5", "n2")],
               [eport(8080, "http"), eport(5353, "dns", "UDP")]),
        slice_("ns", "web", [ep("fd00:10::5", NODE)], [eport(8080, "http"), eport(5353, "dns", "UDP")],
               name="web-v6", family="IPv6"),
        service("ns", "empty", "172.30.0.11", [port(80)]),
    ]


def engine(impl: str = "compiled", **kw: Any) -> kp.Engine:
    if impl == "compiled" and not kp.COMPILED_AVAILABLE:
        pytest.fail("kproxy_core._engine is not built")
    return kp.Engine(kp.Cluster.from_objects(cluster_objects()), node=NODE, cluster_cidr=["10.0.0.0/8", "fd00:10::/64"],
                     seed=5, impl=impl, **kw)


# --------------------------------------------------------------------------- the address parser


def _column(texts: list[str | None]) -> tuple[np.ndarray, bytes, np.ndarray]:
    raw = [(t or "").encode("utf-8", "surrogatepass") for t in texts]
    off = np.cumsum([0] + [len(r) for r in raw]).astype(np.int64)
    return off, b"".join(raw), np.array([t is not None for t in texts])


def _reference(text: str | None) -> tuple[int, bytes]:
    """inet_pton, as the parsers promise (0: not an address)."""
    if text is None or "\0" in text or not 0 < len(text.encode("utf-8", "surrogatepass")) <= 63:
        return 0, b""
    af = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return (6 if af == socket.AF_INET6 else 4), socket.inet_pton(af, text)
    except (OSError, ValueError, UnicodeEncodeError):
        return 0, b""


addresses = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: a.exploded),
    st.from_regex(r"[0-9a-fA-F:.%]{0,20}", fullmatch=True),
    st.text(max_size=70),
    st.sampled_from(["010.1.1.1", "1.2.3.4\x00x", "fe80::1%eth0", "::ffff:1.2.3.4", " 1.2.3.4", "1.2.3.4 ",
                     "256.1.1.1", "1.2.3", "::", "1::2::3", "0000:0000:0000:0000:0000:ffff:255.255.255.255"]),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(addresses, max_size=40))
def test_parsers_agree_with_inet_pton(texts: list[str | None]) -> None:
    off, data, valid = _column(texts)
    want = [_reference(t) for t in texts]
    for parse in PARSERS:
        fam, v4, v6 = parse(off, data, valid)
        assert fam.tolist() == [f for f, _ in want]
        for i, (f, packed) in enumerate(want):
            if f == 4:
                assert int(v4[i]) == int.from_bytes(packed, "big")
            elif f == 6:
                assert bytes(v6[i]) == packed


@pytest.mark.parametrize("parse", PARSERS)
def test_offsets_that_do_not_fit_are_refused(parse: Any) -> None:
    for off, data in (([0, 5], b"1.2"), ([3, 1], b"1.2.3.4"), ([-1, 2], b"1.2"), ([], b"")):
        with pytest.raises(ValueError, match="parse_ips"):
            parse(np.array(off), data)
    with pytest.raises(ValueError, match="validity"):
        parse(np.array([0, 0]), b"", np.array([True, True]))


# --------------------------------------------------------------------------- classify


def packets(n: int, seed: int) -> dict[str, list[Any]]:
    rng = np.random.default_rng(seed)
    srcs = ["10.0.0.9", "10.0.3.7", "203.0.113.5", "192.168.0.2", "fd00:10::9", "2001:db8::7"]
    dsts = ["172.30.0.10", "172.30.0.11", "172.30.0.12", "192.168.0.2", "fd00:30::10", "fd00:ff::2"]
    out: dict[str, list[Any]] = {"src": [], "sport": [], "dst": [], "dport": [], "proto": []}
    for _ in range(n):
        v6 = bool(rng.integers(2))
        out["src"].append(srcs[int(rng.integers(3)) + (4 if v6 else 0)] if not v6 else srcs[4 + int(rng.integers(2))])
        out["dst"].append(dsts[4 + int(rng.integers(2))] if v6 else dsts[int(rng.integers(4))])
        out["sport"].append(int(rng.integers(1024, 1100)))
        out["dport"].append(int(rng.choice([80, 53, 81, 30080])))
        out["proto"].append(str(rng.choice(["TCP", "udp", "6", "17"])))
    return out


def expected(eng: kp.Engine, cols: dict[str, list[Any]], track: bool) -> list[dict[str, Any]]:
    rows = []
    for s, sp, d, dp, pr in zip(cols["src"], cols["sport"], cols["dst"], cols["dport"], cols["proto"], strict=True):
        proto = {"6": "TCP", "17": "UDP"}.get(pr, pr.upper())
        dec = eng.lookup(s, d, dp, proto, sport=sp, now=0.0, track=track)
        rows.append({"verdict": dec.verdict, "service": dec.service, "frontend": dec.frontend,
                     "endpoint": dec.endpoint, "masquerade": dec.masquerade})
    return rows


def got_rows(table: Any) -> list[dict[str, Any]]:
    out = []
    for r in table.to_pylist():
        spn = None
        if r["service"] is not None:
            spn = f"{r['namespace']}/{r['service']}" + (f":{r['port_name']}" if r["port_name"] else "")
        endpoint = (r["endpoint_ip"], r["endpoint_port"]) if r["endpoint_ip"] is not None else None
        out.append({"verdict": r["verdict"], "service": spn, "frontend": r["frontend"], "endpoint": endpoint,
                    "masquerade": r["masquerade"]})
    return out


@pytest.mark.parametrize("track", [False, True])
def test_a_table_is_classified_as_single_lookups_would(impl: str, track: bool) -> None:
    cols = packets(600, seed=3)
    got = flows.classify(pa.table(cols), engine(impl), track=track, now=0.0)
    assert got_rows(got) == expected(engine(impl), cols, track)
    assert got.column("error").null_count == got.num_rows
    assert got.column_names[:5] == ["src", "sport", "dst", "dport", "proto"]


def test_the_endpoint_search_without_the_direct_table(monkeypatch: pytest.MonkeyPatch) -> None:
    cols = packets(400, seed=8)
    want = got_rows(flows.classify(pa.table(cols), engine(), track=False))
    monkeypatch.setattr(flows, "DENSE_SPAN", 0)  # IPv4 endpoints found by binary search instead
    eng = engine()
    got = flows.classify(pa.table(cols), eng, track=False)
    assert flows._words(eng).dense4 is None
    assert got_rows(got) == want and got.column("endpoint_node").null_count < got.num_rows


def test_endpoint_owners_and_types() -> None:
    got = flows.classify(pa.table({"src": ["10.0.0.9"], "dst": ["172.30.0.10"], "dport": [80], "proto": ["TCP"]}),
                         engine()).to_pylist()[0]
    assert got["endpoint_node"] in (NODE, "n2") and got["endpoint_pod"] is None  # the slice names no pods
    assert "sport" not in got  # an absent sport column is 0 for the lookup, and not added
    ips = {"10.0.0.5": NODE, "10.0.1.5": "n2"}
    assert ips[got["endpoint_ip"]] == got["endpoint_node"]


def test_integer_addresses_dictionaries_chunks_and_large_strings() -> None:
    cols = packets(200, seed=4)
    v4 = [i for i, s in enumerate(cols["src"]) if ":" not in s]
    sub = {k: [v[i] for i in v4] for k, v in cols.items()}
    ints = pa.table({"src": pa.array([int(ipaddress.ip_address(s)) for s in sub["src"]], pa.uint32()),
                     "sport": pa.array([*sub["sport"][:-1], None], pa.uint16()),
                     "dst": pa.array([int(ipaddress.ip_address(s)) for s in sub["dst"]], pa.int64()),
                     "dport": pa.array([str(p) for p in sub["dport"]]),
                     "proto": pa.array(sub["proto"]).dictionary_encode()})
    want = got_rows(flows.classify(pa.table(sub), engine(), track=False))
    sub0 = {**sub, "sport": [*sub["sport"][:-1], 0]}  # a null sport is 0
    assert got_rows(flows.classify(ints, engine(), track=False)) == got_rows(
        flows.classify(pa.table(sub0), engine(), track=False))
    ints = ints.set_column(1, "sport", pa.array(sub["sport"], pa.uint16()))
    ints = ints.set_column(4, "proto", pa.array([{"TCP": 6, "UDP": 17}.get(x.upper(), int(x) if x.isdigit() else 0)
                                                 for x in sub["proto"]], pa.uint8()))
    assert got_rows(flows.classify(ints, engine(), track=False)) == want
    half = len(sub["src"]) // 2
    chunked = pa.table({k: pa.chunked_array([pa.array(v[:half], pa.large_string() if k in ("src", "dst") else None),
                                             pa.array(v[half:], pa.large_string() if k in ("src", "dst") else None)])
                        for k, v in sub.items()})
    assert got_rows(flows.classify(chunked, engine(), track=False)) == want
    sliced = pa.table(cols).slice(7, 50)
    assert got_rows(flows.classify(sliced, engine(), track=False)) == \
        got_rows(flows.classify(pa.table({k: v[7:57] for k, v in cols.items()}), engine(), track=False))


def test_pandas_and_record_batches_come_back_as_they_came() -> None:
    pd = pytest.importorskip("pandas")
    cols = packets(20, seed=5)
    df = flows.classify(pd.DataFrame(cols), engine(), track=False)
    assert isinstance(df, pd.DataFrame) and list(df.columns[-2:]) == ["masquerade", "error"] and len(df) == 20
    batch = flows.classify(pa.RecordBatch.from_pydict(cols), engine(), track=False)
    assert isinstance(batch, pa.RecordBatch) and batch.num_rows == 20
    assert got_rows(pa.Table.from_batches([batch])) == got_rows(flows.classify(pa.table(cols), engine(), track=False))


def test_bad_records_are_kept_with_their_reason() -> None:
    t = pa.table({
        "src": ["10.0.0.9", "nope", "10.0.0.9", "fd00::1", "10.0.0.9", "10.0.0.9", None, "10.0.0.9"],
        "sport": pa.array([1, 2, 3, 4, 70000, 6, 7, None], pa.int64()),
        "dst": ["172.30.0.10", "172.30.0.10", "1.2.3.999", "172.30.0.10", "172.30.0.10", "172.30.0.10",
                "172.30.0.10", "172.30.0.10"],
        "dport": ["80", "80", "80", "80", "80", "x", "80", "80"],
        "proto": ["TCP", "TCP", "TCP", "TCP", "TCP", "TCP", "TCP", "ICMP"]})
    stats = flows.Stats()
    got = flows.classify(t, engine(), stats=stats).to_pylist()
    assert [r["error"] for r in got] == [
        None, "src: not an IP address", "dst: not an IP address", "src and dst are of different IP families",
        "sport: not a port (0-65535)", "dport: not a port (0-65535)", "src: not an IP address",
        "proto: not TCP, UDP, SCTP or 6, 17, 132"]
    assert [r["verdict"] for r in got] == ["DNAT"] + [None] * 7
    assert stats.records == 8 and sum(stats.bad.values()) == 7 and stats.verdicts == {"DNAT": 1}


def test_tables_that_cannot_be_classified() -> None:
    with pytest.raises(flows.FlowError, match="no column dport"):
        flows.classify(pa.table({"src": ["1.2.3.4"], "dst": ["1.2.3.4"], "proto": ["TCP"]}), engine())
    with pytest.raises(flows.FlowError, match=r"already has the column.*verdict"):
        flows.classify(pa.table({"src": ["1.2.3.4"], "dst": ["1.2.3.4"], "dport": [1], "proto": ["TCP"],
                                 "verdict": ["x"]}), engine())
    with pytest.raises(flows.FlowError, match="column src: double is not a string, integer or 16-byte binary type"):
        flows.classify(pa.table({"src": [1.5], "dst": ["1.2.3.4"], "dport": [1], "proto": ["TCP"]}), engine())
    with pytest.raises(flows.FlowError, match="not list"):
        flows.classify([], engine())


# --------------------------------------------------------------------------- the command


def test_kproxy_classify_parquet(tmp_path: Path) -> None:
    import yaml

    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump_all(cluster_objects()))
    cols = packets(300, seed=6)
    cols["src"][0] = "garbage"
    src = tmp_path / "flows.parquet"
    pq.write_table(pa.table(cols), src, row_group_size=64)
    want = got_rows(flows.classify(pa.table(cols), engine(), now=0.0))
    for ext in (".parquet", ".jsonl", ".csv"):
        out = tmp_path / f"out{ext}"
        r = cli_run.kproxy("classify", "-f", str(cluster), "--packets", str(src), "--out", str(out), "--node", NODE,
                           "--cluster-cidr", "10.0.0.0/8,fd00:10::/64", "--seed", "5", timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("300 records, 1 bad\n  bad: src: not an IP address: 1\n"), r.stdout
        if ext == ".parquet":
            assert got_rows(pq.read_table(out)) == want
        elif ext == ".jsonl":
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            assert got_rows(pa.Table.from_pylist(rows)) == want
        else:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(out, convert_options=pcsv.ConvertOptions(
                column_types={"port_name": pa.string(), "endpoint_ip": pa.string()}, strings_can_be_null=True))
            assert [r["verdict"] for r in table.to_pylist()] == [w["verdict"] for w in want]
    r = cli_run.kproxy("classify", "-f", str(cluster), "--packets", str(src), "--out", str(tmp_path / "x.txt"),
                       timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == (
        f"kproxy: error: --out: {tmp_path / 'x.txt'}: the extension says the format: .parquet, .jsonl or .csv")


SPLITTERS = [_engine_py.split_mapped] + ([_compiled.split_mapped] if _compiled is not None else [])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.ip_addresses(v=4).map(lambda a: b"\0" * 10 + b"\xff\xff" + a.packed),
                          st.ip_addresses(v=6).map(lambda a: a.packed), st.binary(min_size=16, max_size=16)),
                max_size=40),
       st.data())
def test_split_mapped_is_the_ipv4_mapped_test(raw: list[bytes], data: st.DataObject) -> None:
    valid = np.array(data.draw(st.lists(st.booleans(), min_size=len(raw), max_size=len(raw))), dtype=bool)
    a = np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(-1, 16)
    want_fam = [0 if not ok else 4 if ipaddress.IPv6Address(r).ipv4_mapped else 6 for r, ok in zip(raw, valid,
                                                                                                   strict=True)]
    want_v4 = [int(ipaddress.IPv6Address(r).ipv4_mapped or 0) if ok else 0 for r, ok in zip(raw, valid, strict=True)]
    for split in SPLITTERS:
        fam, v4 = split(a, valid)
        assert fam.tolist() == want_fam and v4.tolist() == want_v4

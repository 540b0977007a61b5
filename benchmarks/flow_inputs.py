"""Rates of the traffic readers and classification, one run, printed as a markdown table.

    python benchmarks/flow_inputs.py [--packets 2000000] [--services 10000]

Measures, on the same synthetic traffic (flows to 10,000 ClusterIP ports x 10 endpoints,
100,000 distinct 5-tuples, 5% to no service): Parquet in -> classify -> Parquet out (the
issue's "Arrow columns straight into lookup_batch"), classify alone with integer and string
addresses and with each record's time, a pcap of 54-byte TCP frames read alone and read +
classified, and reading the same file's bytes (the physical limit of one pass over it).
Best of 3 each; the file is in the page cache.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import kproxy_core as kp
from kproxy_core import bench, captures, flows, traffic


def best(fn: Any, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def write_pcap(path: str, pk: bench.Packets) -> None:
    """Ethernet/IPv4/TCP frames of 54 bytes, 1 us apart."""
    n = len(pk.src)
    rec = np.zeros(n, dtype=[("sec", "<u4"), ("usec", "<u4"), ("incl", "<u4"), ("orig", "<u4"), ("eth", "V14"),
                             ("ipv", "u1"), ("tos", "u1"), ("tot", ">u2"), ("id", ">u2"), ("frag", ">u2"),
                             ("ttl", "u1"), ("p", "u1"), ("csum", ">u2"), ("src", ">u4"), ("dst", ">u4"),
                             ("sport", ">u2"), ("dport", ">u2"), ("rest", "V16")])
    rec["sec"] = 1_700_000_000 + np.arange(n) // 1_000_000
    rec["usec"] = np.arange(n) % 1_000_000
    rec["incl"] = rec["orig"] = 54
    eth = np.frombuffer(b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00", dtype="V14")[0]
    rec["eth"] = eth
    rec["ipv"], rec["tot"], rec["ttl"], rec["p"] = 0x45, 40, 64, 6
    rec["src"], rec["dst"], rec["sport"], rec["dport"] = pk.src, pk.dst, pk.sport, pk.dport
    with open(path, "wb") as f:
        f.write(b"\xd4\xc3\xb2\xa1" + (2).to_bytes(2, "little") + (4).to_bytes(2, "little") + bytes(8)
                + (65535).to_bytes(4, "little") + (1).to_bytes(4, "little"))
        f.write(rec.tobytes())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--services", type=int, default=10_000)
    args = ap.parse_args()
    n = args.packets
    engine = kp.Engine(bench.synthetic_cluster(args.services, 10), node=None, seed=1)
    pk = bench.synthetic_packets(args.services, n, 100_000)
    ints = pa.table({"src": pk.src, "sport": pk.sport, "dst": pk.dst, "dport": pk.dport, "proto": pk.proto})
    import ipaddress

    texts = pa.table({"src": [str(ipaddress.IPv4Address(int(a))) for a in pk.src],
                      "sport": pk.sport, "dst": [str(ipaddress.IPv4Address(int(a))) for a in pk.dst],
                      "dport": pk.dport, "proto": pk.proto})
    timed = ints.append_column("time", pa.array(1_700_000_000 + np.arange(n) * 1e-6))
    rows: list[tuple[str, float]] = []
    flows.classify(ints.slice(0, 1000), engine)  # the dictionaries, built once per engine state

    def rate(name: str, fn: Any, count: int = n) -> None:
        rows.append((name, count / best(fn) / 1e6))
        print(f"{name}: {rows[-1][1]:.2f} M/s", file=sys.stderr)

    rate("classify, uint32 addresses, one clock", lambda: flows.classify(ints, engine, now=0.0))
    rate("classify, uint32 addresses, each record's time", lambda: flows.classify(timed, engine))
    rate("classify, string addresses", lambda: flows.classify(texts, engine, now=0.0))
    rate("`lookup_batch` alone (the same columns as arrays)",
         lambda: engine.lookup_batch(pk.src, pk.dst, pk.dport, pk.proto, pk.sport, now=0.0))
    with tempfile.TemporaryDirectory() as d:
        src, out = os.path.join(d, "in.parquet"), os.path.join(d, "out.parquet")
        pq.write_table(timed, src)

        def parquet_through() -> None:
            sink = traffic.ParquetSink(out)
            for t in traffic.read_tables(src):
                sink.write(flows.classify(t, engine))
            sink.close()

        def parquet_copy() -> None:  # the same output table's bytes, nothing decided: the I/O's limit
            got = flows.classify(timed.slice(0, 1 << 18), engine)
            sink = traffic.ParquetSink(out)
            for t in traffic.read_tables(src):
                sink.write(got.slice(0, t.num_rows))
            sink.close()

        rate("Parquet in -> classify -> Parquet out (with time)", parquet_through)
        rate("Parquet in -> Parquet out of the same shape, nothing classified (the I/O alone)", parquet_copy)
        rate("Parquet read alone", lambda: [t for t in traffic.read_tables(src)])
        cap = os.path.join(d, "in.pcap")
        write_pcap(cap, pk)
        rate("reading the pcap's bytes (`open().read()`)", lambda: Path(cap).read_bytes())
        rate("`read_pcap` alone", lambda: [t for t in captures.read_pcap(cap)])

        def pcap_through() -> None:
            for t in captures.read_pcap(cap):
                flows.classify(t, engine)

        rate("`read_pcap` + classify (each packet's time, flow table)", pcap_through)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
          f"`python benchmarks/flow_inputs.py --packets {n} --services {args.services}`\n")
    print("| what | M records/s |\n|---|---:|")
    for name, r in rows:
        print(f"| {name} | {r:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

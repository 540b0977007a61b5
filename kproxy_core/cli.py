"""``kproxy``: kube-proxy's decisions from the command line.

Errors in the input are printed as ``kproxy: error: ...`` lines naming the object and
field, with exit status 2; an internal failure exits 1.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import sys
import traceback
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import IO, Any, TextIO

import numpy as np

from .addresses import join_host_port, split_host_port
from .engine import VERDICT_NAMES, Engine
from .errors import KproxyError, KproxyWarning, ManifestError, PluginError
from .manifests import load
from .model import PROTO_NUMBERS, Cluster

PROG = "kproxy"


class UsageError(Exception):
    """Bad command-line input (exit 2)."""


# --------------------------------------------------------------------------- shared options


def _add_cluster(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "-f", "--filename", dest="files", action="append", required=required, metavar="CLUSTER",
        help="manifests: a file, a directory or - for stdin (repeatable)",
    )
    p.add_argument("--all-problems", action="store_true",
                   help=f"print every error and warning about the input (default: the first {MAX_LINES} of each, "
                        "then how many more)")


def _add_engine(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("kube-proxy settings")
    g.add_argument("--node", "--hostname-override", dest="node", metavar="NODE",
                   help="whose view (default: the first Node in the input)")
    g.add_argument("--cluster-cidr", metavar="CIDR[,CIDR]",
                   help="pod CIDR(s) for the ClusterCIDR local detector")
    g.add_argument("--detect-local-mode", choices=["ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix",
                                                   "None"],
                   help="local-traffic detector (default: ClusterCIDR when --cluster-cidr is set); for lookups the "
                        "interface modes stand for the node's podCIDR")
    g.add_argument("--pod-bridge-interface", metavar="IFACE", help="the pods' bridge (BridgeInterface)")
    g.add_argument("--pod-interface-name-prefix", metavar="PREFIX",
                   help="the pods' interface name prefix (InterfaceNamePrefix)")
    g.add_argument("--masquerade-all", action="store_true",
                   help="masquerade all cluster IP traffic")
    g.add_argument("--nodeport-addresses", metavar="CIDR,...",
                   help="node addresses that accept NodePorts (default: all)")
    g.add_argument("--iptables-localhost-nodeports", default="true", choices=["true", "false"],
                   help="accept NodePorts on 127.0.0.1 (IPv4; default true)")
    g.add_argument("--seed", type=int, default=None, help="seed for the endpoint choice")
    g.add_argument("--stale-flows", default="udp", choices=["udp", "all"],
                   help="flows whose endpoint an update removes: udp drops the UDP ones only, as kube-proxy's "
                        "conntrack cleanup (TCP/SCTP keep it until they time out); all drops every one")
    g.add_argument("--local-address", metavar="IP[,IP]", action="append",
                   help="an address the node owns besides its Node addresses (a load-balancer VIP "
                        "kube-vip puts on the interface); repeatable")


def _load(files: Sequence[str]) -> Cluster:
    return load(*files)


def _engine(args: argparse.Namespace, cluster: Cluster) -> Engine:
    node = args.node if args.node is not None else cluster.first_node
    return Engine(
        cluster,
        node=node,
        cluster_cidr=args.cluster_cidr,
        detect_local_mode=args.detect_local_mode,
        masquerade_all=args.masquerade_all,
        nodeport_addresses=args.nodeport_addresses,
        localhost_nodeports=args.iptables_localhost_nodeports == "true",
        seed=args.seed,
        stale_flows=args.stale_flows,
        service_cidrs=getattr(args, "service_cidr", None),
        pod_bridge_interface=args.pod_bridge_interface,
        pod_interface_name_prefix=args.pod_interface_name_prefix,
        local_addresses=[a for arg in args.local_address or () for a in arg.split(",") if a.strip()],
    )


MAX_LINES = 10  # errors or warnings printed about one input before a count of the rest
_all_problems = False  # --all-problems


def _print_lines(level: str, lines: Sequence[str], noun: str) -> None:
    """Every line when asked for, else the first MAX_LINES and how many more (a dump
    with one systematic problem would otherwise print it hundreds of times)."""
    shown = lines if _all_problems or len(lines) <= MAX_LINES else lines[:MAX_LINES]
    for line in shown:
        print(f"{PROG}: {level}: {line}", file=sys.stderr)
    if len(shown) < len(lines):
        more = len(lines) - len(shown)
        print(f"{PROG}: {level}: ... and {more} more {noun}{'s' if more != 1 else ''} "
              "(--all-problems prints every one)", file=sys.stderr)


def _warn(cluster: Cluster, engine: Engine | None = None) -> None:
    _print_lines("warning", engine.warnings if engine else cluster.warnings, "warning")


# --------------------------------------------------------------------------- trace


def _endpoint_arg(text: str, what: str, need_port: bool) -> tuple[str, int]:
    try:
        host, port = split_host_port(text)
    except ValueError as e:
        raise UsageError(f"--{what}: {e}") from None
    if port is None:
        if need_port:
            raise UsageError(f"--{what}: {text!r} needs a port (IP:PORT, [IPv6]:PORT)")
        port = 0
    if port > 65535:
        raise UsageError(f"--{what}: {port} is not a valid port")
    return host, port


def cmd_trace(args: argparse.Namespace) -> int:
    cluster = _load(args.files)
    engine = _engine(args, cluster)
    _warn(cluster, engine)
    src, sport = _endpoint_arg(args.src, "src", False)
    dst, dport = _endpoint_arg(args.dst, "dst", True)
    t = engine.trace(src, dst, dport, args.proto.upper(), sport=sport, now=0.0, namespace=args.from_namespace)
    if args.json:
        print(json.dumps(t.to_dict(), indent=2))
    else:
        print(t)
    return 0


# --------------------------------------------------------------------------- demo


def demo_cluster() -> Cluster:
    text = resources.files("kproxy_core.examples").joinpath("mynginx.yaml").read_text()
    import yaml

    return Cluster.from_objects([d for d in yaml.safe_load_all(text) if d])


def cmd_demo(args: argparse.Namespace) -> int:
    cluster = demo_cluster()
    node = "worker-1"
    engine = Engine(cluster, node=node, cluster_cidr="100.96.0.0/11", seed=1)
    out = sys.stdout
    out.write("The article cluster (examples/mynginx.yaml): kops on AWS, cluster CIDR 100.96.0.0/11\n\n")
    for n in cluster.nodes.values():
        out.write(f"  node {n.name:<9} {', '.join(ip for _, ip in n.addresses):<28} pods {', '.join(n.pod_cidrs)}\n")
    for svc in cluster.services.values():
        for sp in svc.ports:
            np_txt = f", NodePort {sp.node_port}" if sp.node_port else ""
            out.write(
                f"  service {svc.ref} ({svc.type}): "
                f"{join_host_port(svc.cluster_ips[0], sp.port)}/{sp.protocol}{np_txt}\n"
            )
    for pp in engine.plans["IPv4"].ports:
        for ep in pp.endpoints:
            out.write(f"  endpoint {ep.endpoint} on {ep.node} for {pp.spn}\n")
    out.write(f"\nkube-proxy's view from {node} ({engine.plans['IPv4'].config.node_ips[0]}):\n")
    pod_ip = "100.96.1.5"
    internal = engine.trace(pod_ip, "100.68.181.31", 80, "TCP", sport=43122, now=0.0)
    out.write(f"\n1. A pod on {node} ({pod_ip}) connects to the ClusterIP\n\n")
    out.write(_indent(str(internal)) + "\n")
    ext_ip = cluster.nodes[node].ips("IPv4")[-1]
    external = engine.trace("203.0.113.77", ext_ip, 30379, "TCP", sport=51000, now=0.0)
    out.write(f"\n2. A client on the internet connects to NodePort {ext_ip}:30379\n\n")
    out.write(_indent(str(external)) + "\n")
    _demo_discovery(out, cluster, engine)
    out.write(
        "\nTry it yourself: kproxy trace -f examples/mynginx.yaml --node worker-1 "
        "--cluster-cidr 100.96.0.0/11 --src 100.96.1.5 --dst 100.68.181.31:80\n"
    )
    return 0


def _demo_discovery(out: IO[str], cluster: Cluster, engine: Engine) -> None:
    from .dns import resolve_as_pod
    from .envvars import format_env, service_env

    zone = engine.dns_zone()
    out.write("\n3. How the pod found the Service: cluster DNS (CoreDNS's answers) and kubelet's variables\n\n")
    walk = resolve_as_pod(zone, "mynginx", "A", "default")
    out.write(f"   resolv.conf: search {' '.join(walk.search)}, options ndots:{walk.ndots}\n")
    for rtype, name in (("A", "mynginx"), ("SRV", "mynginx.default.svc.cluster.local."),
                        ("PTR", "31.181.68.100.in-addr.arpa.")):
        for r in resolve_as_pod(zone, name, rtype, "default").answer.records:
            out.write(f"   {' '.join(r.text(zone.ttl).split())}\n")
    for line in format_env(service_env(cluster, "default")).splitlines():
        out.write(f"   {line}\n")
    out.write(
        "\n   Serve it: kproxy dns serve -f examples/mynginx.yaml --listen 127.0.0.1:5353, then\n"
        "   dig @127.0.0.1 -p 5353 mynginx.default.svc.cluster.local\n"
    )


def _indent(text: str) -> str:
    return "\n".join("   " + line if line else line for line in text.splitlines())


# --------------------------------------------------------------------------- classify

COLUMNS = ("src", "sport", "dst", "dport", "proto")
CHUNK = 65536


def _open_packets(path: str) -> IO[str]:
    if path == "-":
        return sys.stdin
    raw = open(path, "rb")  # noqa: SIM115 - closed by the TextIOWrapper
    head = raw.read(2)
    raw.seek(0)
    stream: IO[bytes] = gzip.GzipFile(fileobj=raw) if head == b"\x1f\x8b" else raw  # type: ignore[assignment]
    return io.TextIOWrapper(stream, encoding="utf-8", newline="")


def _rows(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    f = _open_packets(path)
    with f:
        first = f.readline()
        lineno = 1
        if first.lstrip().startswith("{"):
            for lineno, line in enumerate([first, *f], 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise UsageError(f"{path}: line {lineno}: not JSON: {e}") from None
                if not isinstance(obj, dict):
                    raise UsageError(f"{path}: line {lineno}: expected an object")
                yield lineno, obj
            return
        reader = csv.reader([first])
        header = [h.strip().lower() for h in next(reader)]
        missing = [c for c in COLUMNS if c not in header and c != "sport"]
        if missing:
            raise UsageError(f"{path}: line 1: CSV header lacks {', '.join(missing)} (need {', '.join(COLUMNS)})")
        for lineno, row in enumerate(csv.reader(f), 2):
            if not row or not "".join(row).strip():
                continue
            yield lineno, dict(zip(header, (c.strip() for c in row), strict=False))


def _parse_packet(path: str, lineno: int, row: dict[str, Any]) -> tuple[bool, bytes | int, bytes | int, int, int, int]:
    import ipaddress

    where = f"{path}: line {lineno}"
    try:
        src = ipaddress.ip_address(str(row["src"]).strip())
        dst = ipaddress.ip_address(str(row["dst"]).strip())
    except KeyError as e:
        raise UsageError(f"{where}: missing {e.args[0]}") from None
    except ValueError as e:
        raise UsageError(f"{where}: {e}") from None
    if src.version != dst.version:
        raise UsageError(f"{where}: src and dst are of different IP families")
    ports = []
    for col in ("sport", "dport"):
        v = row.get(col, 0 if col == "sport" else None)
        try:
            n = int(v) if v not in (None, "") else (0 if col == "sport" else -1)
        except (TypeError, ValueError):
            n = -1
        if not 0 <= n <= 65535:
            raise UsageError(f"{where}: {col}: {v!r} is not a port")
        ports.append(n)
    p = str(row.get("proto", "")).strip()
    proto = PROTO_NUMBERS.get(p.upper()) or (int(p) if p.isdigit() and int(p) in (6, 17, 132) else None)
    if proto is None:
        raise UsageError(f"{where}: proto: {p!r} is not TCP, UDP, SCTP or 6, 17, 132")
    v6 = src.version == 6
    return (v6, src.packed if v6 else int(src), dst.packed if v6 else int(dst), ports[0], ports[1], proto)


def _packet_files(args: argparse.Namespace) -> list[str]:
    """--packets, each a file, - or a glob pattern, in order."""
    import glob

    out: list[str] = []
    for spec in args.packets:
        if spec == "-" or os.path.exists(spec):
            out.append(spec)
            continue
        if not glob.has_magic(spec):
            raise UsageError(f"--packets: {spec}: no such file")
        found = sorted(glob.glob(spec))
        if not found:
            raise UsageError(f"--packets: {spec}: no file matches")
        out.extend(found)
    return out


def _wants_tables(args: argparse.Namespace, files: list[str], found: dict[str, str]) -> bool:
    """The table path (pyarrow): any input but CSV/JSON 5-tuples, or an option only it has.
    The format found for the one file, if it was looked at, goes into ``found``."""
    if args.events or args.summary or args.format or args.dask or len(files) > 1:
        return True
    if args.out and os.path.splitext(args.out)[1].lower() in (".parquet", ".csv"):
        return True
    from .traffic import detect

    try:
        found[files[0]] = detect(files[0])
    except KproxyError:
        return False  # the CSV/JSON reader names what is wrong
    return found[files[0]] not in ("csv", "jsonl")


def _classify_table(args: argparse.Namespace, engine: Engine, files: list[str],
                    found: dict[str, str]) -> int:
    """Any traffic file in (kproxy_core.traffic), streamed by chunks through
    kproxy_core.flows (or kproxy_core.events with --events); Parquet, JSON lines or CSV out
    by the extension of --out; counts (and with --summary the summary) on stdout. ``found``:
    formats already found, by file."""
    from . import events as timed_mod
    from . import flows, inputs, traffic

    try:
        import pyarrow as pa
    except ImportError:
        raise UsageError("--packets: this input needs pyarrow (pip install 'kproxy-core[flows]')") from None

    out_path = args.out
    ext = os.path.splitext(out_path)[1].lower() if out_path else ""
    if out_path and ext not in (".parquet", ".jsonl", ".json", ".csv"):
        raise UsageError(f"--out: {out_path}: the extension says the format: .parquet, .jsonl or .csv")
    timeline = None
    if args.events:
        try:
            timeline = timed_mod.read_events(args.events)
        except timed_mod.EventsError as e:
            raise UsageError(f"--events: {e}") from None
    writer: Any = None
    text_out: IO[str] | None = None
    first_csv = True
    stats = flows.Stats()
    read = inputs.ReadStats()
    timed = timed_mod.TimedStats()
    summary = _Summary(args.top)
    formats: set[str] = set()
    progress = inputs.Progress(read, sum(inputs.file_size(f) or 0 for f in files) or None,
                               sys.stderr.isatty() and not args.no_progress)
    try:
        for path in files:
            engine.clear_flows()  # flows are a file's own (one capture, one node's log)
            fmt = args.format or found.get(path) or traffic.detect(path)
            formats.add(fmt)
            tables = traffic.read_tables(path, fmt, read)
            got_tables = (timed_mod.classify_timed(tables, engine, timeline, stats=stats, timed=timed)
                          if timeline is not None else
                          (flows.classify(t, engine, now=None if "time" in t.column_names else args.now, stats=stats)
                           for t in tables))
            for got in got_tables:
                summary.add(got)
                if ext in (".jsonl", ".json", ".csv"):
                    got = _addresses_as_text(got)
                if ext == ".parquet":
                    if writer is None:
                        writer = traffic.ParquetSink(out_path)
                    writer.write(got)
                elif ext in (".jsonl", ".json"):
                    if text_out is None:
                        text_out = open(out_path, "w")  # noqa: SIM115 - closed below
                    for row in got.to_pylist():
                        text_out.write(json.dumps(row) + "\n")
                elif ext == ".csv":
                    import pyarrow.csv as pcsv

                    plain = got.cast(pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type)
                                                else f for f in got.schema]))
                    if text_out is None:
                        text_out = open(out_path, "w")  # noqa: SIM115 - closed below
                    buf = pa.BufferOutputStream()
                    pcsv.write_csv(plain, buf, pcsv.WriteOptions(include_header=first_csv))
                    first_csv = False
                    text_out.write(buf.getvalue().to_pybytes().decode())
                progress.update()
    except (KproxyError, pa.ArrowInvalid) as e:
        raise UsageError(str(e).splitlines()[0]) from None
    finally:
        if writer is not None:
            writer.close()
        if text_out is not None:
            text_out.close()
        progress.close()
    if formats == {"pcap"}:
        print(f"{read.records} packets in the capture, {read.kept} looked up")
        for line in read.lines("packet"):
            print(f"  {line}")
    elif read.skipped:
        print(f"{read.records} records read, {read.kept} classified")
        for line in read.lines("line"):
            print(f"  {line}")
    bad = sum(stats.bad.values())
    print(f"{stats.records} records, {bad} bad")
    for reason, n in sorted(stats.bad.items(), key=lambda kv: -kv[1]):
        print(f"  bad: {reason}: {n}")
    if timeline is not None:
        print(f"{len(timeline)} changes in {args.events}: {timed.applied} applied, {timed.refused_count} refused, "
              f"{timed.late} records older than a change already applied")
        for why in timed.refused:
            print(f"  refused: {why}")
    for title, counter in (("verdict", Counter(stats.verdicts)), ("service", summary.per_service)):
        print(f"\nby {title}")
        width = max((len(k) for k in counter), default=0)
        for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {k.ljust(width)}  {v:>10}  {100.0 * v / max(stats.records, 1):6.2f}%")
    if args.summary:
        summary.print(sys.stdout)
    return 0


class _Summary:
    """Counts and bytes per service and verdict, the top talkers (sources) to each
    service, and the records that met no service with their top destinations."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.per_service: Counter[str] = Counter()
        self.by_service_verdict: dict[tuple[str, str], list[int]] = {}
        self.talkers: dict[str, dict[Any, list[int]]] = {}
        self.nowhere: dict[tuple[Any, Any, Any], list[int]] = {}
        self.have_bytes = False

    def add(self, t: Any) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        n = t.num_rows
        if not n:
            return
        ns = t.column("namespace").cast(pa.string())
        svc = t.column("service").cast(pa.string())
        name = pc.if_else(pc.is_null(svc), pa.scalar("(none)"), pc.binary_join_element_wise(ns, svc, "/"))
        verdict = pc.if_else(pc.is_null(t.column("verdict")), pa.scalar("(bad record)"),
                             t.column("verdict").cast(pa.string()))
        if "bytes" in t.column_names:
            self.have_bytes = True
            size = pc.fill_null(t.column("bytes").cast(pa.int64()), 0)
        else:
            size = pa.array(np.zeros(n, dtype=np.int64))
        src = t.column("src")
        if pa.types.is_fixed_size_binary(src.type) or pa.types.is_binary(src.type):
            pass  # 16-byte addresses: shown as text at the end
        else:
            src = src.cast(pa.string())
        g = pa.table({"svc": name, "verdict": verdict, "src": src, "bytes": size, "n": pa.array(np.ones(n, np.int64))})
        for r in g.group_by(["svc", "verdict"]).aggregate([("n", "sum"), ("bytes", "sum")]).to_pylist():
            acc = self.by_service_verdict.setdefault((r["svc"], r["verdict"]), [0, 0])
            acc[0] += r["n_sum"]
            acc[1] += r["bytes_sum"]
            self.per_service[r["svc"]] += r["n_sum"]
        for r in g.group_by(["svc", "src"]).aggregate([("n", "sum"), ("bytes", "sum")]).to_pylist():
            acc = self.talkers.setdefault(r["svc"], {}).setdefault(r["src"], [0, 0])
            acc[0] += r["n_sum"]
            acc[1] += r["bytes_sum"]
        none = pc.is_null(svc)
        if pc.any(none).as_py():
            miss = t.filter(none)
            dst = miss.column("dst")
            if not (pa.types.is_fixed_size_binary(dst.type) or pa.types.is_binary(dst.type)):
                dst = dst.cast(pa.string())
            h = pa.table({"dst": dst, "dport": miss.column("dport").cast(pa.string()),
                          "proto": miss.column("proto").cast(pa.string()),
                          "bytes": size.filter(none) if isinstance(size, pa.Array) else pc.filter(size, none),
                          "n": pa.array(np.ones(miss.num_rows, np.int64))})
            for r in h.group_by(["dst", "dport", "proto"]).aggregate([("n", "sum"), ("bytes", "sum")]).to_pylist():
                acc = self.nowhere.setdefault((r["dst"], r["dport"], r["proto"]), [0, 0])
                acc[0] += r["n_sum"]
                acc[1] += r["bytes_sum"]

    def print(self, out: IO[str]) -> None:
        b = self.have_bytes
        print("\nsummary: records" + (" and bytes" if b else "") + " per service and verdict", file=out)
        for (svc, verdict), (n, size) in sorted(self.by_service_verdict.items(), key=lambda kv: (-kv[1][0], kv[0])):
            print(f"  {svc}  {verdict}  {n}" + (f"  {size} bytes" if b else ""), file=out)
        print(f"\nsummary: top {self.top} talkers to each service", file=out)
        for svc in sorted(self.talkers, key=lambda k: -self.per_service[k]):
            if svc == "(none)":
                continue
            print(f"  {svc}", file=out)
            ranked = sorted(self.talkers[svc].items(), key=lambda kv: (-kv[1][0], str(kv[0])))[: self.top]
            for src, (n, size) in ranked:
                print(f"    {_text_address(src)}  {n}" + (f"  {size} bytes" if b else ""), file=out)
        total = sum(v[0] for v in self.nowhere.values())
        print(f"\nsummary: {total} records met no service; top {self.top} destinations", file=out)
        ranked_dst = sorted(self.nowhere.items(), key=lambda kv: (-kv[1][0], str(kv[0])))[: self.top]
        for (dst, dport, proto), (n, size) in ranked_dst:
            print(f"  {_text_address(dst)} {dport}/{_proto_text(proto)}  {n}" + (f"  {size} bytes" if b else ""),
                  file=out)


def _text_address(a: Any) -> str:
    if isinstance(a, bytes) and len(a) == 16:
        import ipaddress

        v6 = ipaddress.IPv6Address(a)
        return str(v6.ipv4_mapped or v6)
    return str(a)


def _proto_text(p: Any) -> str:
    return {"6": "TCP", "17": "UDP", "132": "SCTP"}.get(str(p), str(p).upper())


def _addresses_as_text(table: Any) -> Any:
    """src and dst of a capture's table (16-byte, IPv4 mapped) as address strings."""
    import ipaddress

    import pyarrow as pa

    for name in ("src", "dst"):
        i = table.column_names.index(name)
        if not pa.types.is_fixed_size_binary(table.schema.field(name).type):
            continue
        text = []
        for raw in table.column(name).to_pylist():
            a = ipaddress.IPv6Address(raw)
            text.append(str(a.ipv4_mapped or a))
        table = table.set_column(i, name, pa.array(text, pa.string()))
    return table


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        cluster_cidr=args.cluster_cidr, detect_local_mode=args.detect_local_mode, masquerade_all=args.masquerade_all,
        nodeport_addresses=args.nodeport_addresses, localhost_nodeports=args.iptables_localhost_nodeports == "true",
        stale_flows=args.stale_flows, pod_bridge_interface=args.pod_bridge_interface,
        pod_interface_name_prefix=args.pod_interface_name_prefix,
        local_addresses=[a for arg in args.local_address or () for a in arg.split(",") if a.strip()],
    )


def _classify_dask(args: argparse.Namespace, files: list[str]) -> int:
    """--dask: one task per input file on the scheduler's workers, each writing its part
    of a Parquet dataset (out/file=NAME/...)."""
    try:
        from . import dask as kdask
    except ImportError as e:
        raise UsageError(f"--dask needs dask and distributed (pip install 'kproxy-core[dask]'): {e}") from None
    if not args.out:
        raise UsageError("--dask: --out DIR names the Parquet dataset to write")
    cluster = _load(args.files)
    node = args.node if args.node is not None else cluster.first_node
    seed = 0 if args.seed is None else args.seed
    try:
        client = kdask.connect(args.dask)
    except ValueError as e:
        raise UsageError(str(e)) from None
    except (OSError, TimeoutError) as e:
        raise UsageError(f"--dask: {args.dask}: {e}") from None
    try:
        result = kdask.classify_files(files, args.out, cluster, client=client, fmt=args.format, events=args.events,
                                      seed=seed, node=node, **_engine_options(args))
    except KproxyError as e:
        raise UsageError(str(e).splitlines()[0]) from None
    finally:
        client.close()  # type: ignore[no-untyped-call]
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    else:
        per_file: dict[str, Any] = result.get("files", {})
        print(f"{result.get('records', 0)} records in {len(per_file)} files on {args.dask}, written to {args.out}")
        for name, f in sorted(per_file.items()):
            state = f"error: {f['error']}" if f.get("error") else f"{f.get('records', 0)} records"
            print(f"  {name}: {state}")
            for reason, n in sorted((f.get("skipped") or {}).items(), key=lambda kv: -kv[1]):
                print(f"    skipped: {reason}: {n}")
        print("\nby verdict")
        verdicts = result.get("verdicts", {})
        width = max((len(k) for k in verdicts), default=0)
        for k, v in sorted(verdicts.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {k.ljust(width)}  {v:>10}")
    for why in result.get("errors", []):
        print(f"{PROG}: error: {why}", file=sys.stderr)
    return 1 if result.get("errors") else 0


def cmd_classify(args: argparse.Namespace) -> int:
    files = _packet_files(args)
    if args.dask:
        return _classify_dask(args, files)
    cluster = _load(args.files)
    engine = _engine(args, cluster)
    _warn(cluster, engine)
    found: dict[str, str] = {}
    if _wants_tables(args, files, found):
        return _classify_table(args, engine, files, found)
    args.packets = files[0]
    names = [s.name for s in engine.service_ports]
    kinds = engine.frontend_names  # the engine's codes (a plugin's kinds follow the built-in ones)
    per_service: Counter[str] = Counter()
    per_frontend: Counter[str] = Counter()
    per_verdict: Counter[str] = Counter()
    out_file: IO[str] | None = open(args.out, "w") if args.out else None  # noqa: SIM115
    per_packet = out_file or (sys.stdout if args.json else None)
    progress = sys.stderr.isatty() and not args.no_progress
    total = 0

    def flush(buf: list[tuple[bool, Any, Any, int, int, int]]) -> None:
        nonlocal total
        if not buf:
            return
        v6_mask = np.fromiter((r[0] for r in buf), dtype=bool, count=len(buf))
        results: list[dict[str, Any] | None] = [None] * len(buf)
        for v6 in (False, True):
            idx = np.flatnonzero(v6_mask == v6)
            if not len(idx):
                continue
            sel = [buf[i] for i in idx]
            if v6:
                src = np.frombuffer(b"".join(r[1] for r in sel), np.uint8).reshape(-1, 16)
                dst = np.frombuffer(b"".join(r[2] for r in sel), np.uint8).reshape(-1, 16)
            else:
                src = np.fromiter((r[1] for r in sel), np.uint32, len(sel))
                dst = np.fromiter((r[2] for r in sel), np.uint32, len(sel))
            sport = np.fromiter((r[3] for r in sel), np.uint16, len(sel))
            dport = np.fromiter((r[4] for r in sel), np.uint16, len(sel))
            proto = np.fromiter((r[5] for r in sel), np.uint8, len(sel))
            look = engine.lookup_batch6 if v6 else engine.lookup_batch
            out = look(src, dst, dport, proto, sport, now=args.now)
            cols = (out["verdict"].tolist(), out["service"].tolist(), out["frontend"].tolist())
            for v, s, fe in zip(*cols, strict=True):
                per_verdict[VERDICT_NAMES[v]] += 1
                per_service[names[s] if s >= 0 else "(none)"] += 1
                per_frontend[kinds[fe] or "(none)"] += 1
            if per_packet is not None:
                for i, row in zip(idx, engine.decode(out), strict=True):
                    results[i] = row
        if per_packet is not None:
            for r, res in zip(buf, results, strict=True):
                assert res is not None
                pkt = _packet_dict(r)
                per_packet.write(json.dumps({**pkt, **res}) + "\n")
        total += len(buf)
        if progress:
            print(f"\r{PROG}: classified {total:,} packets", end="", file=sys.stderr, flush=True)

    try:
        buf: list[tuple[bool, Any, Any, int, int, int]] = []
        for lineno, row in _rows(args.packets):
            buf.append(_parse_packet(args.packets, lineno, row))
            if len(buf) >= CHUNK:
                flush(buf)
                buf = []
        flush(buf)
    finally:
        if out_file:
            out_file.close()
        if progress:
            print(file=sys.stderr)
    if args.json:
        return 0
    print(f"{total} packets")
    for title, counter in (("verdict", per_verdict), ("frontend", per_frontend), ("service", per_service)):
        print(f"\nby {title}")
        width = max((len(k) for k in counter), default=0)
        for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {k.ljust(width)}  {v:>10}  {100.0 * v / max(total, 1):6.2f}%")
    return 0


def _packet_dict(r: tuple[bool, Any, Any, int, int, int]) -> dict[str, Any]:
    import ipaddress

    v6, s, d, sp, dp, pr = r
    addr = ipaddress.IPv6Address if v6 else ipaddress.IPv4Address
    return {"src": str(addr(s)), "sport": sp, "dst": str(addr(d)), "dport": dp,
            "proto": {6: "TCP", 17: "UDP", 132: "SCTP"}[pr]}


# --------------------------------------------------------------------------- rules


def _render(args: argparse.Namespace, engine: Engine) -> str:
    family = {"ipv4": "IPv4", "ipv6": "IPv6", None: None}[args.family]
    try:
        return engine.render(
            args.mode, family=family, format=args.format, with_jumps=args.with_jumps,  # type: ignore[arg-type]
            masquerade_bit=args.masquerade_bit, nfacct=args.nfacct, random_fully=args.random_fully,
        )
    except ValueError as e:
        raise UsageError(f"rules: {e}") from None


def cmd_rules(args: argparse.Namespace) -> int:
    from .render.changes import count_rules, diff_rules

    if not 0 <= args.masquerade_bit <= 31:
        raise UsageError(f"--masquerade-bit: {args.masquerade_bit} is not in 0..31")
    if args.diff:
        engines = []
        for path in args.diff:
            cluster = _load([path])
            engines.append(_engine(args, cluster))
        texts = [_render(args, e) for e in engines]
        fam = {"ipv4": "IPv4", "ipv6": "IPv6", None: None}[args.family] or engines[1].primary_family
        d = diff_rules(texts[0], texts[1], engines[0].plans[fam], engines[1].plans[fam])
        if args.json:
            print(json.dumps(d.to_dict(), indent=2))
        else:
            sys.stdout.write(d.unified)
            print(("\n" if d.unified else "") + d.summary())
        return 0
    if not args.files:
        raise UsageError("rules: give -f CLUSTER, or --diff OLD NEW")
    cluster = _load(args.files)
    engine = _engine(args, cluster)
    _warn(cluster, engine)
    text = _render(args, engine)
    for note in engine.render_notes({"ipv4": "IPv4", "ipv6": "IPv6", None: None}[args.family]):
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    if args.count:
        fam = {"ipv4": "IPv4", "ipv6": "IPv6", None: None}[args.family] or engine.primary_family
        c = count_rules(text, engine.plans[fam])
        if args.json:
            print(json.dumps(c.to_dict(), indent=2))
        else:
            print(f"{c.rules} rules in {c.chains} chains ("
                  + ", ".join(f"{t} {n}" for t, n in c.per_table.items()) + ")")
            width = max((len(s) for s in c.per_service), default=0)
            for s, n in sorted(c.per_service.items(), key=lambda kv: (-kv[1], kv[0])):
                print(f"  {s.ljust(width)}  {n}")
        return 0
    sys.stdout.write(text)
    return 0


# --------------------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace) -> int:
    if args.sweep is not None:
        return _bench_sweep(args)
    if args.plot is not None:
        raise UsageError("--plot: draws a sweep; give --sweep N1,N2,...")
    from .bench import run_bench

    if args.services is None:
        args.services = 10_000
    if args.flows is None:
        args.flows = 100_000
    for name in ("services", "endpoints", "packets"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name}: must be at least 1")
    res = run_bench(
        services=args.services, endpoints=args.endpoints, packets=args.packets,
        flows=None if args.flows == 0 else min(args.flows, args.packets),
        min_time=args.min_time, selector=args.selector,
    )
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"synthetic cluster: {res['services']} service ports x {res['endpoints']} endpoints; "
          f"{res['packets']} packets from {res['flows'] or res['packets']} flows; engine: {res['engine']}; "
          f"selector: {res['selector']}")
    if res.get("twin_checked_packets"):
        print(f"  checked {res['twin_checked_packets']:,} packets against the pure-Python twin: identical answers")
    rates = res["lookups_per_second"]
    width = max(len(k) for k in rates)
    for k, v in rates.items():
        print(f"  {k.ljust(width)}  {v / 1e6:10.3f} M lookups/s")
    for k, v in res["ratios"].items():
        print(f"  {k.ljust(width)}  {v:10.1f} x")
    return 0


MAX_SWEEP_ENDPOINTS = 1 << 26  # the synthetic pod addresses run from 100.64.0.0 and must stay IPv4


def _sweep_sizes(text: str) -> list[int]:
    sizes = []
    for item in text.split(","):
        item = item.strip()
        try:
            n = int(item)
        except ValueError:
            raise UsageError(f"--sweep: {item!r} is not a whole number of service ports") from None
        if n < 1:
            raise UsageError(f"--sweep: {n} service ports: must be at least 1")
        sizes.append(n)
    return sorted(set(sizes))


def _bench_sweep(args: argparse.Namespace) -> int:
    from . import sweep

    sizes = _sweep_sizes(args.sweep)
    if args.services is not None:
        raise UsageError("--services: the sweep sets the sizes; give one or the other")
    if args.selector is not None:
        raise UsageError("--selector: the sweep (and its roofline) measures kube-proxy's random choice only")
    for name in ("endpoints", "packets", "reps"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name}: must be at least 1")
    if args.flows is not None and args.flows < 0:
        raise UsageError("--flows: must be 0 (every packet its own flow) or more")
    if sizes[-1] * args.endpoints > MAX_SWEEP_ENDPOINTS:
        raise UsageError(f"--sweep: {sizes[-1]} service ports × {args.endpoints} endpoints: more than "
                         f"{MAX_SWEEP_ENDPOINTS} endpoints in all")
    if args.plot is not None:
        why = sweep.plot_available()
        if why is not None:
            raise UsageError("--plot needs matplotlib: pip install 'kproxy-core[plot]'")
    flows = None if not args.flows else args.flows
    tty = sys.stderr.isatty() and not args.no_progress
    notes: dict[str, str] = {}
    width = 0

    def progress(n: int, stage: str) -> None:
        nonlocal width
        line = f"{PROG} bench: {n:,} service ports: {stage}..."
        sys.stderr.write("\r" + line.ljust(width))
        sys.stderr.flush()
        width = len(line)

    def clear() -> None:
        if width:
            sys.stderr.write("\r" + " " * width + "\r")
            sys.stderr.flush()

    rows: list[sweep.SweepRow] = []

    def on_row(row: sweep.SweepRow) -> None:
        clear()
        rows.append(row)
        if not args.json:
            print(sweep.format_row(row), flush=True)

    def report() -> None:
        if args.json:
            print(json.dumps(sweep.to_json(rows, notes), indent=2))
        else:
            for line in sweep.footer(rows, notes):
                print(line)

    if not args.json:
        print(sweep.header(), flush=True)
    try:
        sweep.run_sweep(sizes, args.endpoints, args.packets, flows, on_row=on_row,
                        progress=progress if tty else None, notes=notes, min_time=args.min_time,
                        apply_reps=args.reps, trace_reps=args.reps)
    except sweep.SweepMemoryError as e:
        clear()
        if rows:  # the sizes measured before the one that does not fit are worth keeping
            report()
        raise UsageError(f"--sweep: {e}") from None
    finally:
        clear()
    report()
    if args.plot is not None:
        sweep.plot(rows, args.plot)
        if not args.json:
            print(f"plot: {args.plot}")
    return 0


# --------------------------------------------------------------------------- plugins


def cmd_plugins(args: argparse.Namespace) -> int:
    """Every plugin in asking order, the order each hook asks, the Service types, and the
    plugins that failed to load (with the reason) or were disabled. Exit 1 when one failed."""
    from .plugins import FIRSTRESULT, HOOKS, make_plugin_manager

    pm = make_plugin_manager(keep_going=True)  # a broken plugin must not hide the others
    dists = {id(plugin): f"{dist.project_name} {dist.version}" for plugin, dist in pm.list_plugin_distinfo()}
    plugins: list[dict[str, Any]] = []
    for name in pm.asking_names():
        plugin = pm.get_plugin(name)
        hooks = sorted(c.name for c in pm.get_hookcallers(plugin) or ())
        where = getattr(plugin, "__name__", type(plugin).__name__)
        plugins.append({"name": name, "module": where, "distribution": dists.get(id(plugin)),
                        "priority": pm.priority(name), "hooks": hooks})
    order = {h: pm.implementers(h) for h in HOOKS if pm.implementers(h)}
    registry = pm.registry
    types = [
        {"type": t, "plugin": registry.owner(t), "handler": type(registry.get(t)).__qualname__}
        for t in registry.names()
    ]
    failed = [{"name": f.name, "where": f.where, "reason": f.reason, "message": f.message()} for f in pm.failed]
    if args.json:
        print(json.dumps({"plugins": plugins, "asking_order": order, "service_types": types, "failed": failed,
                          "disabled": list(pm.disabled)}, indent=2))
        return 1 if failed else 0
    print("plugins (in asking order: priority, then name)")
    for p in plugins:
        dist = f" ({p['distribution']})" if p["distribution"] else ""
        print(f"  {p['name']:<14} {p['module']}{dist}, priority {p['priority']}: {', '.join(p['hooks'])}")
    print("hooks (who is asked, in order; tryfirst/trylast included)")
    for hook, names in order.items():
        how = "first answer wins" if hook in FIRSTRESULT else "every one"
        print(f"  {hook:<30} {' > '.join(names)} ({how})")
    print("service types")
    for t in types:
        print(f"  {t['type']:<14} {t['plugin']:<14} {t['handler']}")
    if pm.disabled:
        print(f"disabled (KPROXY_DISABLE_PLUGINS): {', '.join(pm.disabled)}")
    if failed:
        print("failed to load")
        for f in pm.failed:
            print(f"  {f.name:<14} {f.where}: {f.reason}")
        print(f"{PROG}: error: {len(failed)} plugin{'s' if len(failed) > 1 else ''} failed to load; "
              f"KPROXY_DISABLE_PLUGINS={','.join(f.name for f in pm.failed)} runs without "
              f"{'them' if len(failed) > 1 else 'it'}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- dns, env


def _dns_engine(args: argparse.Namespace, cluster: Cluster) -> Engine:
    return Engine(cluster, node=cluster.first_node)


def cmd_dns_resolve(args: argparse.Namespace) -> int:
    import dns.rdatatype

    from .dns import resolve_as_pod
    from .dnsserver import zone_options

    try:
        dns.rdatatype.from_text(args.type)
    except dns.rdatatype.UnknownRdatatype:
        raise UsageError(f"--type: {args.type!r} is not a DNS record type (A, AAAA, SRV, PTR, TXT, ...)") from None
    cluster = _load(args.files)
    _warn(cluster)
    try:
        zone = _dns_engine(args, cluster).dns_zone(args.domain, args.ttl, **zone_options(args))
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        result = resolve_as_pod(zone, args.name, args.type, args.from_namespace)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.text())
    return 0


def cmd_dns_serve(args: argparse.Namespace) -> int:
    from .dnsserver import serve_command

    def load_cluster() -> Cluster:
        cluster = _load(args.files)
        _warn(cluster)
        return cluster

    return serve_command(args, load_cluster, lambda c: _dns_engine(args, c))


def cmd_env(args: argparse.Namespace) -> int:
    from .envvars import config_sources, container_env, format_env, service_env
    from .manifests import read_objects

    if args.pod is None and args.namespace is None:
        raise UsageError("--namespace: required (or --pod FILE)")
    cluster = _load(args.files)
    _warn(cluster)
    if args.pod is None:
        env = service_env(cluster, args.namespace, enable_service_links=not args.no_service_links)
    else:
        pods = [(origin, o) for origin, o in read_objects(args.pod) if o.get("kind") == "Pod"]
        if len(pods) != 1:
            raise UsageError(f"--pod: {args.pod} holds {len(pods)} Pod objects; give exactly one")
        pod = dict(pods[0][1])
        if args.namespace is not None:
            pod["metadata"] = {**(pod.get("metadata") or {}), "namespace": args.namespace}
        if args.no_service_links:
            pod["spec"] = {**(pod.get("spec") or {}), "enableServiceLinks": False}
        configmaps, secrets = config_sources(o for _, o in read_objects(*args.files, args.pod))
        warnings: list[str] = []
        env = container_env(cluster, pod, args.container, configmaps=configmaps, secrets=secrets, warnings=warnings)
        for w in warnings:
            print(f"{PROG}: warning: {w}", file=sys.stderr)
    text = format_env(env, args.format)
    sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")
    return 0


def _add_dns_parsers(sub: Any) -> None:
    from .dns import DEFAULT_TTL
    from .dnsserver import add_serve_arguments, add_zone_arguments

    dns = sub.add_parser("dns", help="cluster DNS: resolve a name as a pod would, or serve the zone")
    dsub = dns.add_subparsers(dest="dns_command", required=True, metavar="COMMAND")

    r = dsub.add_parser(
        "resolve", help="answer a name as a pod in a namespace sees it (search path, ndots:5), like dig",
        description="Resolve NAME offline as CoreDNS's kubernetes plugin answers a ClusterFirst pod in "
                    "--from-namespace: the search path <ns>.svc.<zone> svc.<zone> <zone> and ndots:5, "
                    "printed like dig's sections (or --json).",
    )
    _add_cluster(r)
    r.add_argument("name", metavar="NAME", help="a name (mynginx, mynginx.default, a full name, a reverse name)")
    r.add_argument("--type", "-t", default="A", type=str.upper, metavar="TYPE",
                   help="A, AAAA, SRV, PTR, CNAME, TXT, SOA, NS or any other type (NODATA) (default A)")
    r.add_argument("--from-namespace", default="default", metavar="NS", help="the pod's namespace (default default)")
    r.add_argument("--ttl", type=int, default=DEFAULT_TTL, help=f"record TTL, 0-3600 (default {DEFAULT_TTL})")
    add_zone_arguments(r)
    r.add_argument("--json", action="store_true", help="the walk and the answer as one JSON object")
    r.set_defaults(func=cmd_dns_resolve)

    s = dsub.add_parser("serve", help="serve the cluster zone on UDP and TCP (authoritative, no recursion)")
    _add_cluster(s)
    add_serve_arguments(s)
    s.set_defaults(func=cmd_dns_serve)


def _add_env_parser(sub: Any) -> None:
    e = sub.add_parser(
        "env", help="the service environment variables kubelet gives a pod",
        description="The variables kubelet injects into a pod's containers: {SVC}_SERVICE_HOST, _SERVICE_PORT, "
                    "{SVC}_PORT... for every Service of the namespace with a ClusterIP, and default/kubernetes "
                    "always. With --pod, the container's whole environment in kubelet's precedence "
                    "(envFrom, env, then service variables); ConfigMaps and Secrets come from -f.",
    )
    _add_cluster(e)
    e.add_argument("--namespace", "-n", metavar="NS", help="the pod's namespace (required without --pod)")
    e.add_argument("--format", default="dotenv", choices=["dotenv", "json", "shell"],
                   help="dotenv NAME=value lines (default), a JSON object, or sh export lines; sorted by name")
    e.add_argument("--no-service-links", action="store_true",
                   help="enableServiceLinks: false (only default/kubernetes remains)")
    e.add_argument("--pod", metavar="FILE", help="a Pod manifest: its namespace, enableServiceLinks, env and envFrom")
    e.add_argument("--container", metavar="NAME", help="with --pod: which container (default the first)")
    e.set_defaults(func=cmd_env)


# --------------------------------------------------------------------------- main


def _version() -> str:
    from . import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("--traceback", action="store_true",
                   help="on a plugin failure, print the full traceback too (anywhere on the line; or "
                        "KPROXY_TRACEBACK=1)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="the article cluster: trace an in-cluster and an internet packet")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("trace", help="explain what kube-proxy does with one packet")
    _add_cluster(t)
    t.add_argument("--src", required=True, metavar="IP[:PORT]", help="source (port optional)")
    t.add_argument("--dst", required=True, metavar="IP:PORT",
                   help="destination; [IPv6]:PORT, or NAME:PORT for a DNS name (mynginx:80, "
                        "mynginx.default.svc.cluster.local:80), resolved first as a pod would")
    t.add_argument("--from-namespace", metavar="NS",
                   help="resolve a NAME destination as a pod in NS (default: the source pod's namespace, "
                        "else default)")
    t.add_argument("--proto", default="tcp", type=str.lower, choices=["tcp", "udp", "sctp"])
    t.add_argument("--json", action="store_true", help="print the trace as one JSON object")
    _add_engine(t)
    t.set_defaults(func=cmd_trace)

    c = sub.add_parser("classify", help="count packets of a CSV/JSONL file by service, frontend, verdict")
    _add_cluster(c)
    c.add_argument("--packets", required=True, metavar="FILE", action="append",
                   help="traffic: CSV with header src,sport,dst,dport,proto or JSONL (- for stdin); with pyarrow (the "
                   "flows extra) also a pcap/pcapng capture, Parquet, Hubble JSON (hubble observe -o jsonpb), AWS VPC "
                   "Flow Logs, conntrack -L text; gzip or zstd; the format found by content. Repeatable, and a "
                   "quoted glob pattern reads every file it matches (flows start afresh in each file)")
    c.add_argument("--format", choices=["pcap", "parquet", "hubble", "vpc", "conntrack", "csv", "jsonl"],
                   help="the input format, when finding it by content is not wanted")
    c.add_argument("--events", metavar="FILE",
                   help="a recorded watch stream (kubectl get endpointslices,services -A --watch -o json "
                        "--output-watch-events): each record is decided by the cluster of its own time")
    c.add_argument("--summary", action="store_true",
                   help="also print records (and bytes) per service and verdict, the top talkers to each service "
                        "and the records that met no service")
    c.add_argument("--top", type=int, default=5, metavar="N", help="talkers and destinations in the summary")
    c.add_argument("--dask", metavar="SCHEDULER",
                   help="classify the files on Dask: tcp://HOST:8786 or local:N (N worker processes); --out is then "
                        "a directory, a Parquet dataset partitioned by input file (the dask extra)")
    c.add_argument("--json", action="store_true", help="print one JSON line per packet instead of counts")
    c.add_argument("--out", metavar="FILE", help="also write one record per packet to FILE (JSON lines; for "
                   "Parquet and capture input .parquet, .jsonl or .csv by the extension)")
    c.add_argument("--now", type=float, default=0.0, help="clock for flow timeouts (seconds; default 0)")
    c.add_argument("--no-progress", action="store_true", help="no progress line on a terminal")
    _add_engine(c)
    c.set_defaults(func=cmd_classify)

    r = sub.add_parser("rules", help="the iptables rules kube-proxy writes for a node (restore or save form)")
    _add_cluster(r, required=False)
    r.add_argument("--mode", default="iptables", choices=["iptables", "nftables"], help="proxy mode")
    r.add_argument("--service-cidr", metavar="CIDR[,CIDR]",
                   help="service CIDRs for nftables' cluster-ips-check (default: the input's ServiceCIDR objects)")
    r.add_argument("--format", default="restore", choices=["restore", "save"],
                   help="restore: kube-proxy's iptables-restore input; save: what iptables-save shows after loading it")
    r.add_argument("--family", choices=["ipv4", "ipv6"], type=str.lower,
                   help="which proxier: iptables (ipv4) or ip6tables (ipv6); default the node's primary family")
    r.add_argument("--with-jumps", action="store_true",
                   help="add the jumps from the built-in chains, so the output loads into an empty netns")
    r.add_argument("--masquerade-bit", type=int, default=14, help="fwmark bit for SNAT (default 14)")
    r.add_argument("--random-fully", action="store_true", help="MASQUERADE --random-fully (iptables supports it)")
    r.add_argument("--nfacct", action="store_true",
                   help="emit the nfacct counter matches current kube-proxy writes when the kernel has nfacct")
    r.add_argument("--diff", nargs=2, metavar=("OLD", "NEW"),
                   help="the rule changes between two cluster states, with a count summary")
    r.add_argument("--count", action="store_true", help="count rules and chains, per table and per service port")
    r.add_argument("--json", action="store_true", help="--count/--diff as JSON")
    _add_engine(r)
    r.set_defaults(func=cmd_rules)

    pl = sub.add_parser("plugins", help="the loaded plugins and the Service types they add")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plugins)

    b = sub.add_parser(
        "bench", help="lookups/s: compiled engine, pure-Python twin, numpy baseline; --sweep: how it scales",
        description="Measure the engine on a synthetic cluster of ClusterIP services. With --sweep, one row "
                    "per size: build, apply, trace, bytes per service port, and lookups/s against the roofline "
                    "(a lean C loop on the same keys, compiled with the system C compiler).",
    )
    b.add_argument("--services", type=int, default=None, help="service ports (default 10000; not with --sweep)")
    b.add_argument("--endpoints", type=int, default=10, help="endpoints per service port (default 10)")
    b.add_argument("--packets", type=int, default=1_000_000, help="packets per lookup batch (default 1000000)")
    b.add_argument("--flows", type=int, default=None,
                   help="distinct flows (0: every packet new; default 100000, with --sweep every packet its own)")
    b.add_argument("--min-time", type=float, default=0.5, help="seconds per measurement")
    b.add_argument("--sweep", metavar="N1,N2,...",
                   help="one row per cluster size (service ports), e.g. 1000,10000,100000,1000000")
    b.add_argument("--plot", metavar="FILE.png", help="with --sweep: draw the curves (needs kproxy-core[plot])")
    b.add_argument("--reps", type=int, default=200,
                   help="with --sweep: apply and trace calls per size (default 200; apply stops early after 20 s)")
    b.add_argument("--no-progress", action="store_true", help="no progress line on a terminal")
    from .selectors import SELECTOR_KINDS

    b.add_argument("--selector", choices=SELECTOR_KINDS, default=None,
                   help="every service's endpoint selector (weighted and round-robin get weights 1..N)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)

    _add_dns_parsers(sub)
    _add_env_parser(sub)
    return p


TRACEBACK_ENV = "KPROXY_TRACEBACK"


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """kproxy-core's own warnings as ``kproxy: warning: ...``; others as Python prints them."""
    if issubclass(category, KproxyWarning):
        print(f"{PROG}: warning: {message}", file=sys.stderr)
    else:  # pragma: no cover - a library's warning
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --traceback may stand anywhere on the line (before or after the command)
    show_tb = "--traceback" in argv or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--traceback"]
    parser = build_parser()
    args = parser.parse_args(argv)
    global _all_problems
    _all_problems = bool(getattr(args, "all_problems", False))
    warnings.showwarning = _show_warning
    try:
        return int(args.func(args))
    except (ManifestError, UsageError) as e:
        if show_tb:
            traceback.print_exc()
        _print_lines("error", str(e).splitlines() or [type(e).__name__], "problem")
        return 2
    except PluginError as e:  # not the input's fault: a plugin failed
        if show_tb:
            traceback.print_exc()
        hint = "" if show_tb or e.__cause__ is None else " (--traceback or KPROXY_TRACEBACK=1 shows where)"
        print(f"{PROG}: error: {e}{hint}", file=sys.stderr)
        return 1
    except KproxyError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # pragma: no cover - e.g. `kproxy classify ... | head`
        return 0
    except (OSError, UnicodeDecodeError, EOFError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        return 130
    except Exception as e:  # internal failure: still one line, exit 1
        print(f"{PROG}: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

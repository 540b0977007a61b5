"""Fuzz the manifest loader and what a loaded cluster feeds: ``kp.load`` of YAML and JSON text
(any bytes, in a file), ``kp.Cluster.from_objects`` of damaged objects (tests/fuzz/_gen.py:
valid Services, EndpointSlices, Endpoints, Nodes, Namespaces, ServiceCIDRs with wrong types,
huge or negative ints, NaN, None, deep nesting, odd unicode, missing fields), and then, on a
cluster that loads, an Engine of each twin, lookups and traces of packets to every frontend,
both renderers and the DNS zone.

Contract: loading raises nothing but ManifestError (one line per problem); a cluster that
loads builds an Engine on both twins, which agree on every lookup, and traces, renders
(iptables restore and save, nftables) and serves DNS without raising.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Finding, Provider, libfuzzer_main

_S: dict[str, Any] = {}


def setup() -> None:
    import json

    import _gen
    import yaml

    import kproxy_core as kp
    from kproxy_core.errors import KproxyError, ManifestError

    tmp = tempfile.mkdtemp(prefix="kproxy-fuzz-")
    atexit.register(shutil.rmtree, tmp, True)
    _S.update(kp=kp, gen=_gen, yaml=yaml, json=json, ManifestError=ManifestError, KproxyError=KproxyError,
              yaml_path=os.path.join(tmp, "in.yaml"), json_path=os.path.join(tmp, "in.json"))


def one_input(data: bytes) -> None:
    if not _S:
        setup()
    p = Provider(data)
    mode = p.byte() % 8
    if mode == 0:
        cluster = _load_text(p.rest(), "yaml_path")
    elif mode == 1:
        cluster = _load_text(p.rest(), "json_path")
    else:
        objs = _S["gen"].objects(p, 6)
        if p.int(0, 3) == 0:  # with every object the base cluster has: engines with more in them
            objs = _S["gen"].base_objects() + objs
        how = p.int(0, 2)
        if how == 0:
            cluster = _build(objs)
        else:
            try:
                text = (_S["yaml"].safe_dump_all(objs) if how == 1 else
                        "\n".join(_S["json"].dumps(o) for o in objs))
            except (ValueError, TypeError, RecursionError, _S["yaml"].YAMLError):
                return  # not expressible as text (the serialiser's limit, not the loader's)
            cluster = _load_text(text.encode("utf-8", "surrogatepass"), "yaml_path" if how == 1 else "json_path")
    if cluster is not None:
        _exercise(cluster, p)


def _load_text(raw: bytes, where: str) -> Any:
    path = _S[where]
    with open(path, "wb") as f:
        f.write(raw)
    return _loading(lambda: _S["kp"].load(path), "kp.load")


def _build(objs: list[Any]) -> Any:
    return _loading(lambda: _S["kp"].Cluster.from_objects(objs), "Cluster.from_objects")


def _loading(call: Any, what: str) -> Any:
    try:
        return call()
    except _S["ManifestError"] as e:
        if not e.problems or any(not line.strip() or "\n" in line for line in e.problems):
            raise Finding(f"{what}: a ManifestError line is empty or not one line: {e.problems!r}"[:600]) from e
        return None
    except Exception as e:
        raise Finding(f"{what}: undocumented {type(e).__name__}: {str(e)[:300]}") from e


def _exercise(cluster: Any, p: Provider) -> None:
    kp = _S["kp"]
    node = p.choice([None, *sorted(cluster.nodes)]) if cluster.nodes and p.bool() else kp.engine.FIRST_NODE
    mode = "nftables" if p.bool() else "iptables"
    try:
        engines = [kp.Engine(cluster, node=node, mode=mode, impl=impl, seed=3, cluster_cidr="100.96.0.0/11",
                             flow_capacity=256, affinity_capacity=64) for impl in ("compiled", "python")]
    except Exception as e:
        raise Finding(f"Engine of a cluster that loaded: {type(e).__name__}: {str(e)[:300]}") from e
    packets = _packets(cluster, engines[0])
    for src, dst, dport, proto in packets:
        try:
            a, b = (e.lookup(src, dst, dport, proto, sport=40000, now=100.0, track=0) for e in engines)
        except Exception as e:
            raise Finding(f"lookup {src} -> {dst}:{dport}/{proto}: {type(e).__name__}: {e}") from e
        if a != b:
            raise Finding(f"lookup {src} -> {dst}:{dport}/{proto}: compiled {a!r}, python {b!r}")
    e = engines[0]
    try:
        for src, dst, dport, proto in packets[:6]:
            str(e.trace(src, dst, dport, proto, sport=40000, now=100.0))
        for key in sorted(cluster.services)[:3]:
            try:  # a name the cluster's objects make may be no DNS name: PacketError says so
                e.trace("100.96.1.5", f"{key[1]}.{key[0]}", 80, "TCP")
            except _S["kp"].PacketError:
                pass
        for fam in ("IPv4", "IPv6"):
            e.render(family=fam)
            e.render("iptables", family=fam, format="save", with_jumps=True)
            e.render("nftables", family=fam)
            e.render_notes(fam)
        for key in sorted(cluster.services)[:4]:
            for rtype in ("A", "AAAA", "SRV"):
                e.resolve(f"{key[1]}.{key[0]}.svc.cluster.local", rtype)
        e.memory(model=False)
        e.warnings  # noqa: B018
    except Exception as x:
        raise Finding(f"a cluster that loaded: {type(x).__name__}: {str(x)[:300]}") from x


def _packets(cluster: Any, engine: Any) -> list[tuple[str, str, int, str]]:
    """Packets to every frontend the cluster has (ClusterIPs, external and LB IPs, NodePorts
    on the node's addresses), from a pod, a node and outside."""
    srcs4, srcs6 = ["100.96.1.5", "8.8.8.8"], ["fd00:100::5", "2001:db8::9"]
    out: list[tuple[str, str, int, str]] = []
    node_ips: list[str] = []
    if engine.node is not None:
        node_ips = list(cluster.nodes[engine.node].ips())
    for svc in list(cluster.services.values())[:12]:
        addrs = list(svc.cluster_ips) + list(svc.external_ips)
        addrs += [i.ip for i in svc.load_balancer_ingress if getattr(i, "ip", None)]
        for sp in svc.ports[:3]:
            for a in addrs[:4]:
                if not _is_ip(a):
                    continue
                for s in (srcs6 if ":" in a else srcs4):
                    out.append((s, a, sp.port, sp.protocol))
            if sp.node_port:
                for a in node_ips[:2]:
                    out.append((srcs6[1] if ":" in a else srcs4[1], a, sp.node_port, sp.protocol))
    return out[:60]


def _is_ip(text: Any) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


if __name__ == "__main__":
    libfuzzer_main(setup, one_input, ["kproxy_core"])

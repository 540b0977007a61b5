"""Fuzz the engine's API on both twins: ``Engine.lookup_batch`` / ``lookup_batch6`` / ``lookup`` /
``trace`` / ``apply``, the core's batch entry points with any strides (``Core.lookup_batch``,
which the facade documents as taking any strides), and the Engine's options.

Every input is a short program (up to 8 calls) run on a compiled and a pure-Python engine
over the same small cluster (tests/fuzz/_gen.py). Arguments come in every form a caller
could pass: other dtypes, lists, non-contiguous views, 2-d or 0-d arrays, columns of other
lengths, out-of-range values, NaN / infinite / negative ``now`` (one number or one per
packet), odd ``track`` values, mutated manifests for ``apply``.

Contract checked: no crash or hang; an error is a KproxyError (plain ValueError only
where documented: the Engine's and Core's options, a bad ``out``; MemoryError only for a
capacity too large to allocate); both twins give the same answer or the same error (type
and message); and a call that fails changes nothing: the fixed probe batch answers as
before, until an ``apply`` succeeds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Finding, Provider, libfuzzer_main

IMPLS = ("compiled", "python")
OPTIONS: dict[str, Any] = dict(node="worker-1", cluster_cidr="100.96.0.0/11", seed=7, flow_capacity=512,
                               affinity_capacity=64)
V4 = ("100.96.1.5", "100.96.2.6", "172.20.40.11", "172.20.50.12", "127.0.0.1", "10.96.0.10", "10.96.0.11",
      "10.96.0.12", "10.96.0.13", "10.96.0.14", "10.96.0.16", "10.96.9.9", "198.51.100.9", "192.0.2.7",
      "203.0.113.5", "8.8.8.8", "0.0.0.0", "255.255.255.255")
V6 = ("fd00:96::14", "fd00:96::15", "fd00:20::11", "::1", "fd00:100::12", "fd00:96::99", "2001:db8::1", "::",
      "::ffff:10.96.0.10")
PORTS = (80, 443, 8080, 53, 9000, 5432, 8443, 30080, 30053, 30081, 30443, 0, 65535, 1)
PROTOS = (6, 17, 132)
NAMES = ("web", "web.default", "np.default.svc.cluster.local", "sticky.team", "ext.team", "hl.team.svc",
         "nope", "", " ", "a..b", "kubernetes.default", "x" * 300, "web.default.svc.cluster.local.")
NOTES = ("abc", "", "1e3", "nan", b"1", None, [1.0], (), {}, object)
CAP_HUGE = 1 << 40  # refused before anything is allocated (both twins: MemoryError)

_S: dict[str, Any] = {}


def setup() -> None:
    import ipaddress

    import _gen
    import numpy as np

    import kproxy_core as kp
    from kproxy_core.errors import KproxyError

    _S.update(np=np, kp=kp, KproxyError=KproxyError, ipaddress=ipaddress,
              cluster=kp.Cluster.from_objects(_gen.base_objects()), gen=_gen, dirty=True)
    # every frontend of the base cluster (ClusterIPs, NodePorts, the LB and external IPs, an
    # nftables-free miss) from a pod, the node itself and outside: small, as the Python twin
    # answers it after every input
    hits4 = [("10.96.0.10", 80, 6), ("10.96.0.10", 443, 6), ("10.96.0.11", 8080, 6), ("10.96.0.11", 53, 17),
             ("172.20.40.11", 30080, 6), ("172.20.40.11", 30053, 17), ("127.0.0.1", 30080, 6),
             ("10.96.0.12", 80, 6), ("198.51.100.9", 80, 6), ("192.0.2.7", 80, 6), ("172.20.40.11", 30081, 6),
             ("10.96.0.13", 9000, 132), ("10.96.0.14", 80, 6), ("10.96.0.16", 80, 6), ("10.96.9.9", 80, 6),
             ("10.96.0.10", 81, 6), ("10.96.0.10", 80, 17)]
    v4 = [(int(ipaddress.IPv4Address(s)), int(ipaddress.IPv4Address(d)), pt, pr)
          for s in ("100.96.1.5", "172.20.40.11", "203.0.113.5") for d, pt, pr in hits4]
    _S["probe4"] = tuple(np.array(c, dtype=t) for c, t in zip(zip(*v4, strict=True),
                                                              (np.uint32, np.uint32, np.uint16, np.uint8),
                                                              strict=True))
    hits6 = [("fd00:96::14", 80, 6), ("fd00:96::15", 8443, 6), ("fd00:20::11", 30443, 6), ("::1", 30443, 6),
             ("fd00:96::99", 80, 6)]
    v6 = [(ipaddress.IPv6Address(s).packed, ipaddress.IPv6Address(d).packed, pt, pr)
          for s in ("fd00:100::5", "2001:db8::1") for d, pt, pr in hits6]
    _S["probe6"] = (np.frombuffer(b"".join(r[0] for r in v6), np.uint8).reshape(-1, 16),
                    np.frombuffer(b"".join(r[1] for r in v6), np.uint8).reshape(-1, 16),
                    np.array([r[2] for r in v6], np.uint16), np.array([r[3] for r in v6], np.uint8))


def _probe(e: Any) -> bytes:
    """The fixed probe's answers (stateless: track=0 reads no flow or affinity entry)."""
    a = e.lookup_batch(*_S["probe4"], now=1000.0, track=False)
    b = e.lookup_batch6(*_S["probe6"], now=1000.0, track=False)
    return bytes(a.tobytes() + b.tobytes())


def _fresh() -> None:
    """The engines as setup made them: rebuilt after a successful apply, else flows cleared."""
    if _S["dirty"]:
        kp = _S["kp"]
        _S["engines"] = [kp.Engine(_S["cluster"], impl=impl, **OPTIONS) for impl in IMPLS]
        answers = [_probe(e) for e in _S["engines"]]
        if answers[0] != answers[1]:
            raise Finding("the twins' probe answers differ on the base cluster")
        _S["expected"] = answers[0]
        _S["dirty"] = False
    else:
        for e in _S["engines"]:
            e.clear_flows()


def one_input(data: bytes) -> None:
    if not _S:
        setup()
    _fresh()
    p = Provider(data)
    applied = False
    for _ in range(p.int(1, 8)):
        if not p.remaining:
            break
        op = p.int(0, 31)
        if op < 9:
            _batch(p, v6=False)
        elif op < 13:
            _batch(p, v6=True)
        elif op < 17:
            _core_batch(p, v6=p.int(0, 3) == 0)
        elif op < 23:
            _lookup(p)
        elif op < 27:
            _trace(p)
        elif op < 30:
            applied |= _apply(p)
        else:
            _options(p)
    if not applied:
        for e in _S["engines"]:
            if _probe(e) != _S["expected"]:
                raise Finding(f"{'compiled' if e.compiled else 'python'}: the probe answers differently after "
                              "calls that applied nothing")


# ---------------------------------------------------------------------------- calling both twins


def _both(call: Any, what: str, allowed: tuple[type[BaseException], ...] = ()) -> list[Any]:
    """``call(engine)`` on each twin: the results, or ("error", type, message); the same on both."""
    out = []
    ok = (_S["KproxyError"], *allowed)
    for e in _S["engines"]:
        try:
            out.append(("ok", call(e)))
        except ok as x:
            msg = str(x)
            if not msg.strip() or ("\n" in msg and not isinstance(x, _S["kp"].ManifestError)):
                raise Finding(f"{what}: {type(x).__name__} message is not one line: {msg!r}") from x
            out.append(("error", type(x), msg))
        except Finding:
            raise
        except Exception as x:
            raise Finding(f"{what}: undocumented {type(x).__name__} "
                          f"({'compiled' if e.compiled else 'python'}): {x}") from x
    a, b = out
    if a[0] != b[0] or a[1:] != b[1:]:
        raise Finding(f"{what}: the twins disagree: compiled {_short(a)}, python {_short(b)}")
    return out


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) < 400 else text[:400] + "..."


# ---------------------------------------------------------------------------- argument forms

DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64", "bool",
          "object", "U4", "complex64", "datetime64[s]")


def _form(p: Provider, a: Any) -> Any:
    """``a`` (a correct column) in another form, most of the time unchanged."""
    np = _S["np"]
    k = p.int(0, 23)
    if k < 12:
        return a
    if k == 12:
        return a.tolist()
    if k == 13:
        try:
            return a.astype(p.choice(DTYPES))
        except (TypeError, ValueError):
            return a
    if k == 14:  # a strided view of the same values
        big = np.repeat(a, 2, axis=0)
        return big[::2]
    if k == 15:
        return a[::-1]
    if k == 16:
        return a.reshape((-1, 1)) if a.ndim == 1 else a.reshape(-1)
    if k == 17:
        return a[:-1] if len(a) else np.zeros(1, a.dtype)
    if k == 18:
        return np.concatenate([a, a[:1]]) if len(a) else a
    if k == 19:
        return a.astype(np.int64) + p.choice((1 << 32, -1, 1 << 16, -(1 << 40)))
    if k == 20:
        return a[0] if len(a) else a.reshape(-1)[:0]
    if k == 21:
        return None
    if k == 22:
        return np.asfortranarray(a) if a.ndim == 2 else a.astype(a.dtype.newbyteorder())
    return p.choice(NOTES)


def _columns(p: Provider, n: int, v6: bool) -> list[Any]:
    np, ipaddress = _S["np"], _S["ipaddress"]

    def addr() -> Any:
        if v6:
            if p.int(0, 3):
                return ipaddress.IPv6Address(p.choice(V6)).packed
            return p.take(16).ljust(16, b"\0")
        if p.int(0, 3):
            return int(ipaddress.IPv4Address(p.choice(V4)))
        return p.int(0, 0xFFFFFFFF)

    rows = [(addr(), addr(), p.choice(PORTS) if p.int(0, 3) else p.int(0, 65535),
             p.choice(PROTOS) if p.int(0, 7) else p.byte(), p.int(0, 65535)) for _ in range(n)]
    if v6:
        src = np.frombuffer(b"".join(r[0] for r in rows), np.uint8).reshape(n, 16).copy()
        dst = np.frombuffer(b"".join(r[1] for r in rows), np.uint8).reshape(n, 16).copy()
    else:
        src = np.array([r[0] for r in rows], np.uint32)
        dst = np.array([r[1] for r in rows], np.uint32)
    return [src, dst, np.array([r[2] for r in rows], np.uint16), np.array([r[3] for r in rows], np.uint8),
            np.array([r[4] for r in rows], np.uint16)]


def _now(p: Provider, n: int) -> Any:
    np = _S["np"]
    k = p.int(0, 11)
    if k < 3:
        return 1000.0 + p.int(0, 100000)
    if k == 3:
        return p.float()
    if k == 4:
        return p.choice((float("nan"), float("inf"), float("-inf"), -1.0, -1e300, 1e308, 0.0, -0.0))
    if k in (5, 6, 7):
        times = 1000.0 + np.arange(n, dtype=np.float64) * p.int(0, 40)
        if k == 6 and n:
            times[p.int(0, n - 1)] = p.choice((float("nan"), float("inf"), float("-inf"), -5.0))
        if k == 7:
            return _form(p, times)
        return times
    if k == 8:
        return np.float32(p.int(0, 1 << 20))
    if k == 9:
        return p.choice(NOTES)
    if k == 10:
        return p.int(-(1 << 70), 1 << 70)
    return None


def _track(p: Provider) -> Any:
    return p.choice((0, 1, 2, True, False, 1, 1, 0, -1, 3, 1.0, None, "x", 1 << 70))


def _result(out: Any) -> Any:
    return out.tobytes() if hasattr(out, "tobytes") else out


def _batch(p: Provider, v6: bool) -> None:
    n = p.int(0, 24)
    cols = [_form(p, c) for c in _columns(p, n, v6)]
    if p.bool():
        cols[4] = None
    now = _now(p, n)
    track = _track(p)
    if now is None and track:
        now = 5000.0  # the wall clock: twins called a moment apart could disagree on a timeout

    def call(e: Any) -> Any:
        f = e.lookup_batch6 if v6 else e.lookup_batch
        return _result(f(*cols[:4], sport=cols[4], now=now, track=track))

    _both(call, f"lookup_batch{'6' if v6 else ''}")


def _core_batch(p: Provider, v6: bool) -> None:
    """The core's entry point: columns of the exact dtypes in any strides, and ``out`` in any form."""
    np = _S["np"]
    from kproxy_core.engine import OUT6_DTYPE, OUT_DTYPE

    n = p.int(0, 24)
    cols = _columns(p, n, v6)
    for i in range(5):
        k = p.int(0, 7)
        if k == 1:
            big = np.repeat(cols[i], p.int(2, 4), axis=0)
            cols[i] = big[::len(big) // n] if n else big[:0]
        elif k == 2:
            cols[i] = cols[i][::-1]
        elif k == 3 and v6 and i < 2:
            cols[i] = np.asfortranarray(cols[i])
        elif k == 4 and v6 and i < 2:
            wide = np.zeros((n, 32), np.uint8)
            wide[:, ::2] = cols[i]
            cols[i] = wide[:, ::2]
        elif k == 5:
            cols[i] = _form(p, cols[i])
    dtype = OUT6_DTYPE if v6 else OUT_DTYPE
    k = p.int(0, 9)
    if k < 5:
        out = np.zeros(n, dtype)
    elif k == 5:
        out = np.zeros(2 * n, dtype)[::2]
    elif k == 6:
        out = np.zeros(n, dtype)[::-1]
    elif k == 7:
        out = np.zeros(n, dtype)
        out.flags.writeable = False
    elif k == 8:
        out = np.zeros((n, 1), dtype)
    else:
        out = np.zeros(n, OUT_DTYPE if v6 else OUT6_DTYPE)
    now = _now(p, n)
    track = _track(p)
    if now is None and track:
        now = 5000.0
    sport = None if p.bool() else cols[4]

    def call(e: Any) -> Any:
        o = out.copy() if out.flags.writeable else out
        f = e._core.lookup_batch6 if v6 else e._core.lookup_batch
        f(cols[0], cols[1], cols[2], cols[3], sport, o, now, track)
        return o.tobytes()

    _both(call, f"Core.lookup_batch{'6' if v6 else ''}", allowed=(ValueError,))


def _scalar_addr(p: Provider) -> Any:
    ipaddress = _S["ipaddress"]
    k = p.int(0, 15)
    if k < 6:
        return p.choice(V4)
    if k < 9:
        return p.choice(V6)
    if k == 9:
        return int(ipaddress.ip_address(p.choice(V4 + V6)))
    if k == 10:
        return p.int(-(1 << 130), 1 << 130)
    if k == 11:
        return ipaddress.ip_address(p.choice(V4 + V6))
    if k == 12:
        return p.text(20)
    if k == 13:
        return p.choice(V4).encode()
    return p.choice(NOTES)


def _scalar_port(p: Provider) -> Any:
    np = _S["np"]
    k = p.int(0, 11)
    if k < 7:
        return p.choice(PORTS)
    if k == 7:
        return p.int(-(1 << 70), 1 << 70)
    if k == 8:
        return p.choice((True, 80.0, "80", np.uint16(80), np.int64(-1), None))
    return p.int(0, 65535)


def _scalar_proto(p: Provider) -> Any:
    np = _S["np"]
    return p.choice(("TCP", "UDP", "SCTP", "tcp", "udp", "sctp", 6, 17, 132, "Tcp", "ICMP", 1, 0, 256, -6, "6",
                     b"TCP", None, np.uint8(6), True, 6.0, "TCP ", "\u0130"))


def _lookup(p: Provider) -> None:
    src, dst = _scalar_addr(p), _scalar_addr(p)
    dport, proto, sport = _scalar_port(p), _scalar_proto(p), _scalar_port(p) if p.bool() else 0
    now = _now(p, 1)
    track = _track(p)
    if now is None and track:
        now = 5000.0
    _both(lambda e: e.lookup(src, dst, dport, proto, sport=sport, now=now, track=track), "lookup")


def _trace(p: Provider) -> None:
    src = _scalar_addr(p)
    dst = p.choice(NAMES) if p.int(0, 3) == 0 else _scalar_addr(p)
    dport, proto, sport = _scalar_port(p), _scalar_proto(p), _scalar_port(p) if p.bool() else 0
    now = _now(p, 1)
    namespace = p.choice((None, "default", "team", "nope", "", 5))

    def call(e: Any) -> Any:
        t = e.trace(src, dst, dport, proto, sport, now, namespace=namespace)
        str(t)
        return t.to_dict()

    _both(call, "trace")


def _apply(p: Provider) -> bool:
    import copy

    objs = _S["gen"].objects(p, 3)
    try:
        copies = [copy.deepcopy(objs) for _ in IMPLS]
    except RecursionError:  # nested deeper than copy.deepcopy goes: not the library's
        return False
    before = [_probe(e) for e in _S["engines"]]
    got = _both(lambda e: e.apply(copies[0 if e.compiled else 1]), "apply")
    if got[0][0] == "ok":
        _S["dirty"] = True
        answers = [_probe(e) for e in _S["engines"]]
        if answers[0] != answers[1]:
            raise Finding("after an apply the twins' probe answers differ")
        return True
    for e, was in zip(_S["engines"], before, strict=True):
        if _probe(e) != was:
            raise Finding(f"a refused apply changed the {'compiled' if e.compiled else 'python'} engine")
    return False


def _options(p: Provider) -> None:
    kp = _S["kp"]
    opts: dict[str, Any] = {}
    huge = False
    for key in ("flow_capacity", "affinity_capacity"):
        k = p.int(0, 7)
        if k == 0:
            opts[key] = p.choice((0, -1, 1, 7, 8, 9, True, 2.5, float("nan"), float("inf"), "64", None, 1 << 70))
            huge |= opts[key] in (float("inf"), 1 << 70)
        elif k == 1:
            opts[key] = CAP_HUGE << p.int(0, 30)
            huge = True
        elif k == 2:
            opts[key] = p.int(1, 1 << 14)
    if p.int(0, 2) == 0:
        opts["timeouts"] = p.choice(({"TCP": float("nan")}, {"UDP": 0}, {"SCTP": -1.0}, {"TCP": float("inf")},
                                     {"TCP": "10"}, {"ICMP": 5.0}, {"tcp": 5.0}, {"UDP": 1e-300}, {"TCP": None},
                                     [("TCP", 1.0)], "TCP", {"UDP": True}, {"TCP": 1 << 2000}))
    if p.int(0, 3) == 0:
        opts["seed"] = p.choice((-1, 1 << 64, 1 << 200, 0, 1.5, "7", float("nan"), True))
    if p.int(0, 3) == 0:
        opts["mode"] = p.choice(("nftables", "ipvs", "", None, "IPTABLES"))
    if p.int(0, 3) == 0:
        opts["stale_flows"] = p.choice(("all", "udp", "none", None, ""))
    if p.int(0, 3) == 0:
        opts["node"] = p.choice((None, "worker-2", "nope", "", 5))
    if p.int(0, 3) == 0:
        opts["cluster_cidr"] = p.choice(("100.96.0.0/11", "", "nope", "100.96.0.0/33", ["100.96.0.0/11", "fd00::/8"],
                                         "10.0.0.1", 5, "::/0"))
    if p.int(0, 3) == 0:
        opts["nodeport_addresses"] = p.choice(("172.20.0.0/16", "primary", "", "nope", ["0.0.0.0/0", "::/0"], 7))
    if p.int(0, 5) == 0:
        opts["detect_local_mode"] = p.choice(("ClusterCIDR", "NodeCIDR", "BridgeInterface", "nope", "", 5))
    if p.int(0, 5) == 0:
        opts["masquerade_all"] = p.choice((True, "yes", None))
    base = {**OPTIONS, **opts}
    allowed: tuple[type[BaseException], ...] = (ValueError, MemoryError) if huge else (ValueError,)

    def build(e: Any) -> Any:
        impl = "compiled" if e.compiled else "python"
        eng = kp.Engine(_S["cluster"], impl=impl, **base)
        return _probe(eng)

    _both(build, f"Engine({', '.join(f'{k}={v!r}' for k, v in opts.items())})", allowed)


if __name__ == "__main__":
    libfuzzer_main(setup, one_input, ["kproxy_core"])

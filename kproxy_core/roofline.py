"""The roofline for stateless lookups: ``roofline.c`` compiled at benchmark time, through ctypes.

``roofline.c`` is the leanest loop that makes the engine's stateless IPv4 decision for
ClusterIP services (its opening comment says what it leaves out). :class:`Roofline` loads
an engine's own frontend keys and cluster pools into it; ``kproxy bench --sweep`` and
benchmarks/test_scale.py compare ``lookup_batch(track=False)`` with it and check that both
choose the same endpoints.

The library is built with the system C compiler at ``-O3`` (the engine's level, so the
comparison is about the loops, not the flags) and cached by a hash of the source, the
compiler and the flags under ``$XDG_CACHE_HOME/kproxy-core`` (else ``~/.cache/kproxy-core``,
else a temporary directory). Without a compiler, :func:`load` raises
:class:`RooflineUnavailable` with a one-line reason.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FLAGS = ("-O3", "-shared", "-fPIC")
_lib: ctypes.CDLL | None = None


class RooflineUnavailable(RuntimeError):
    """No roofline here: no C compiler, or it failed (the message is one line)."""


def source() -> bytes:
    return resources.files("kproxy_core").joinpath("roofline.c").read_bytes()


def compiler() -> list[str] | None:
    """The C compiler command: $CC, else Python's own CC, else cc, gcc or clang on PATH."""
    for cand in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc", "clang"):
        if not cand:
            continue
        cmd = shlex.split(str(cand))
        if cmd and shutil.which(cmd[0]):
            return cmd
    return None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    d = Path(base) / "kproxy-core"
    try:
        d.mkdir(parents=True, exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    d = Path(tempfile.gettempdir()) / f"kproxy-core-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def build(cc: list[str] | None = None) -> Path:
    """Compile roofline.c (once per source, compiler and flags) and return the library's path."""
    if sys.platform == "win32":
        raise RooflineUnavailable("the roofline is built with a Unix C compiler (not on Windows)")
    cc = cc or compiler()
    if cc is None:
        raise RooflineUnavailable("no C compiler found (set CC, or install cc/gcc/clang)")
    src = source()
    key = hashlib.sha256(src + "\0".join([*cc, *FLAGS]).encode()).hexdigest()[:16]
    d = _cache_dir()
    lib = d / f"roofline-{key}{sysconfig.get_config_var('SHLIB_SUFFIX') or '.so'}"
    if lib.exists():
        return lib
    with tempfile.TemporaryDirectory(dir=d) as tmp:
        c_file = Path(tmp) / "roofline.c"
        c_file.write_bytes(src)
        out = Path(tmp) / lib.name
        try:
            r = subprocess.run([*cc, *FLAGS, "-o", str(out), str(c_file)],
                               capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RooflineUnavailable(f"{cc[0]} failed: {e}") from None
        if r.returncode != 0:
            first = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[0]
            raise RooflineUnavailable(f"{cc[0]} failed: {first}")
        os.replace(out, lib)  # atomic: a concurrent run sees no half-written library
    return lib


def load() -> ctypes.CDLL:
    """The compiled roofline library (built on first use in this process)."""
    global _lib
    if _lib is None:
        path = build()
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            raise RooflineUnavailable(f"cannot load {path}: {e}") from None
        p, i64, u64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64
        lib.rl_build.restype = p
        lib.rl_build.argtypes = [u64, i64, p, p, p, p, p, i64, p, p]
        lib.rl_run.restype = i64
        lib.rl_run.argtypes = [p, i64, p, p, p, p, p, p, p]
        lib.rl_free.restype = None
        lib.rl_free.argtypes = [p]
        _lib = lib
    return _lib


def _ptr(a: npt.NDArray[Any]) -> int:
    return int(a.ctypes.data)


def _col(a: Any, dtype: type[np.generic]) -> npt.NDArray[Any]:
    return np.ascontiguousarray(a, dtype=dtype)


class Roofline:
    """An engine's IPv4 frontends and cluster pools, loaded into the roofline loop.

    Reads only ``engine.tables["IPv4"]`` and ``engine.seed``. Every frontend leads to its
    service port's cluster pool (column 0), which is the engine's choice for every
    frontend hit when all services are ClusterIP and the sources are pods under a
    ClusterCIDR detector (the synthetic cluster's case); the harness checks it.
    """

    _handle: int | None = None  # set last in __init__: __del__ may run after a failed one

    def __init__(self, engine: Any) -> None:
        lib = load()
        t = engine.tables["IPv4"]
        port = np.asarray(t.rec_port)[np.asarray(t.fe_rec)]
        start = _col(np.asarray(t.port_pool_start)[port, 0], np.uint32)
        length = _col(np.asarray(t.port_pool_len)[port, 0], np.uint32)
        fe_addr, fe_port, fe_proto = _col(t.fe_addr, np.uint32), _col(t.fe_port, np.uint16), _col(t.fe_proto, np.uint8)
        pool_ep = np.asarray(t.pool_ep)
        pool_ip = _col(np.asarray(t.ep_addr)[pool_ep], np.uint32)
        pool_port = _col(np.asarray(t.ep_port)[pool_ep], np.uint16)
        handle = lib.rl_build(
            engine.seed & 0xFFFFFFFFFFFFFFFF, len(fe_addr), _ptr(fe_addr), _ptr(fe_port), _ptr(fe_proto),
            _ptr(start), _ptr(length), len(pool_ip), _ptr(pool_ip), _ptr(pool_port),
        )
        if not handle:
            raise MemoryError("roofline: out of memory (or inconsistent tables)")
        self._lib = lib
        self._handle = handle
        self.frontends = len(fe_addr)

    def run(
        self, src: Any, dst: Any, sport: Any, dport: Any, proto: Any,
        out_ip: npt.NDArray[np.uint32] | None = None, out_port: npt.NDArray[np.uint16] | None = None,
    ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint16], int]:
        """Each packet's endpoint (ip, port; 0, 0 for no service) and the number of hits.

        Pass ``out_ip``/``out_port`` to reuse buffers (the benchmark does, so a timed run
        allocates nothing)."""
        if self._handle is None:
            raise ValueError("roofline: used after close()")
        cols = (_col(src, np.uint32), _col(dst, np.uint32), _col(sport, np.uint16), _col(dport, np.uint16),
                _col(proto, np.uint8))
        n = len(cols[0])
        if any(len(c) != n for c in cols):
            raise ValueError("roofline: columns of different lengths")
        ip = np.empty(n, np.uint32) if out_ip is None else out_ip
        port = np.empty(n, np.uint16) if out_port is None else out_port
        if len(ip) != n or len(port) != n or ip.dtype != np.uint32 or port.dtype != np.uint16 \
                or not (ip.flags.c_contiguous and port.flags.c_contiguous):
            raise ValueError("roofline: out_ip / out_port must be contiguous uint32 / uint16 of the batch's length")
        hits = self._lib.rl_run(self._handle, n, *(_ptr(c) for c in cols), _ptr(ip), _ptr(port))
        return ip, port, int(hits)

    def close(self) -> None:
        if self._handle is not None:
            self._lib.rl_free(self._handle)
            self._handle = None

    def __enter__(self) -> Roofline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

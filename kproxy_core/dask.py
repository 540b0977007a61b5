"""Classify flows on a dask cluster: dask DataFrames partition by partition, and traffic
files one task per file, each worker process with engines of its own.

What is sent, and what is not: the cluster travels as data, a pickled
:class:`~kproxy_core.Cluster` (manifest text and object lists are parsed on the client
first, so a bad manifest fails there, at once, naming the document), with the seed, the
engine's options and, with ``events``, the :class:`~kproxy_core.events.Timeline`. It
enters the task graph once and every task depends on it, so each worker receives it once.
An :class:`~kproxy_core.Engine` is never pickled: it holds the compiled core's tables. Each
worker process builds its engines from that data, keyed by a digest of cluster, timeline,
seed and options, and keeps them for the partitions (and later computations) that follow;
a worker with several threads has one engine per thread in use, never two threads on one.

The seed is fixed (0 unless given) and is part of the digest: an endpoint pick is a hash
of the 5-tuple under the seed, so every worker picks as every other would.

Flow state is per partition (per file for :func:`classify_files`): the engine forgets its
flows and ClientIP affinity entries before each partition (``Engine.clear_flows``), so no
answer depends on which worker took a partition or in what order. Within a partition,
flows are tracked as :func:`kproxy_core.flows.classify` tracks them; across partitions:

* without events and without ClientIP affinity, the answers are those of one
  single-process :func:`kproxy_core.flows.classify` of the whole table, record for record:
  a flow's endpoint is the hash pick of its 5-tuple whether its first packet was in the
  partition or before it;
* with ClientIP affinity, a client's affinity entry does not cross a partition boundary:
  its first connection in a partition picks afresh;
* with ``events``, a partition is decided by the cluster at its earliest record time
  (every change at a time <= that applied), then :func:`kproxy_core.events.classify_timed`
  applies the changes inside the partition as its records pass them: within the partition
  conntrack's rules hold (a TCP flow keeps an endpoint that went away, a UDP flow picks
  again). A flow whose endpoint went away before its partition began is decided afresh
  there, by the cluster of that time: the connection's earlier packets are in another
  partition, and nothing of them is known. Partitions that follow connections (larger
  ones, or split at quiet times) keep such answers exact.

Answers come back as the DataFrame's own columns plus :data:`kproxy_core.flows.ADDED`, in
fixed dtypes whatever a partition holds (:data:`ANSWER_DTYPES`): the string answers
categorical (the categories are the engine's dictionaries, which can differ between
partitions when events change the cluster; dask unites them), ``endpoint_port`` a
nullable ``UInt16`` and ``masquerade`` a nullable ``boolean`` (pyarrow's conversion would
give float64 and object when a partition has nulls, uint16 and bool when it has none).
:func:`to_pandas` converts a single-process result the same way.

dask and distributed are optional dependencies: ``pip install 'kproxy-core[dask]'``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import shutil
import threading
import uuid
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from .engine import Engine
from .errors import KproxyError, ManifestError
from .events import Replayer, TimedStats, Timeline, classify_timed, read_events
from .flows import ADDED, REQUIRED, FlowError, Stats, check_columns, fill_times, times_of
from .flows import classify as classify_table
from .model import Cluster

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client

__all__ = [
    "ANSWER_DTYPES",
    "classify",
    "classify_files",
    "connect",
    "to_pandas",
    "worker_stats",
    "clear_cache",
]

INPUT_COLUMNS = (*REQUIRED, "sport", "time")  # what a partition sends to the engine
PART_ROWS = 1 << 24  # records per Parquet file of classify_files' output (a file holds whole chunks)
MAX_CACHED = 4  # (cluster, timeline, seed, options) kept per worker process, least recent dropped
#: the dtype of each added column (``"category"``: categorical, categories of strings)
ANSWER_DTYPES: dict[str, str] = {name: "category" for name in ADDED} | {
    "endpoint_port": "UInt16", "masquerade": "boolean"}


def _pd() -> Any:
    import importlib

    return importlib.import_module("pandas")  # untyped here (no pandas-stubs): Any


def _require_dask() -> None:
    try:
        import dask.dataframe  # noqa: F401
    except ImportError:  # pragma: no cover - the dask extra is missing
        raise ImportError("kproxy_core.dask needs dask: pip install 'kproxy-core[dask]'") from None


# --------------------------------------------------------------------------- what travels


@dataclass(frozen=True)
class _Spec:
    """What a worker needs to build (or find) its engine: all data, no engine."""

    key: str  # digest of everything below: the worker cache's key
    cluster: bytes  # a pickled Cluster (zlib), unpickled only by a worker that builds
    timeline: bytes | None  # a pickled Timeline (zlib)
    seed: int
    options: tuple[tuple[str, Any], ...]


def _as_cluster(cluster: Any) -> Cluster:
    """A Cluster from a Cluster, manifest text or bytes (YAML or JSON, as ``kubectl get``
    prints them), a path (``pathlib.Path``) to manifests, or an iterable of object dicts."""
    from .manifests import cluster_from_objects, load

    if isinstance(cluster, Cluster):
        return cluster
    if isinstance(cluster, Engine):
        raise TypeError("kproxy_core.dask: pass the cluster (engine.cluster), not an Engine: engines are built "
                        "on the workers")
    if isinstance(cluster, os.PathLike):
        return load(cluster)
    if isinstance(cluster, bytes | bytearray | memoryview):
        try:
            cluster = bytes(cluster).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ManifestError(f"<manifests>: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if isinstance(cluster, str):
        return cluster_from_objects(_parse_manifests(cluster))
    if isinstance(cluster, Iterable):
        return cluster_from_objects(list(cluster))
    raise TypeError(f"kproxy_core.dask: a Cluster, manifest text, a Path or a list of objects, "
                    f"not {type(cluster).__name__}")


def _parse_manifests(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Manifest text as the loader reads a file: JSON (one value or a stream of them) when it
    looks like JSON and parses, else YAML documents."""
    from .manifests import _parse_json, _parse_yaml

    out: list[tuple[str, dict[str, Any]]] = []
    problems: list[str] = []
    if text.lstrip()[:1] in ("{", "["):
        _parse_json("<manifests>", text, out, problems)
        if not problems:
            return out
        out, problems = [], []
    _parse_yaml("<manifests>", text, out, problems)
    if problems:
        raise ManifestError(problems)
    return out


def _as_timeline(events: Timeline | str | os.PathLike[str] | None) -> Timeline | None:
    if events is None or isinstance(events, Timeline):
        return events
    return read_events(os.fspath(events))


_lock = threading.Lock()  # this module's caches, on the client and on the workers
_pickled: OrderedDict[int, tuple[weakref.ref[Any], bytes]] = OrderedDict()


def _pickle(obj: Any) -> bytes:
    """``obj`` pickled and compressed, once while it lives (a Cluster or Timeline is not
    changed after it is made; pickling a cluster of 10,000 Services takes most of a second,
    and zlib makes its 6.6 MB 0.6 MB in 16 ms: the task graph stays small)."""
    with _lock:
        got = _pickled.get(id(obj))
        if got is not None and got[0]() is obj:
            _pickled.move_to_end(id(obj))
            return got[1]
    blob = zlib.compress(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), 1)
    with _lock:
        _pickled[id(obj)] = (weakref.ref(obj), blob)
        while len(_pickled) > 4:
            _pickled.popitem(last=False)
    return blob


def _unpickle(blob: bytes) -> Any:
    return pickle.loads(zlib.decompress(blob))


def _spec(cluster: Any, events: Timeline | str | os.PathLike[str] | None, seed: int,
          options: Mapping[str, Any]) -> _Spec:
    if seed is None:
        raise ValueError("kproxy_core.dask: the seed must be fixed (an int), so that every worker picks alike")
    for bad in ("plugins", "cluster"):
        if bad in options:
            raise TypeError(f"kproxy_core.dask: {bad}= cannot be sent to the workers (they use their own)")
    blob = _pickle(_as_cluster(cluster))
    timeline = _as_timeline(events)
    tblob = None if timeline is None else _pickle(timeline)
    opts = tuple(sorted(options.items()))
    h = hashlib.sha256(blob)
    h.update(b"\0" if tblob is None else tblob)
    h.update(repr((int(seed), opts)).encode())
    return _Spec(h.hexdigest()[:32], blob, tblob, int(seed), opts)


# --------------------------------------------------------------------------- the worker's engines


@dataclass
class _Held:
    """An engine, and how far into the timeline its cluster is (changes applied)."""

    engine: Engine
    at: int = 0


@dataclass
class _Entry:
    cluster: Cluster
    timeline: Timeline | None
    idle: list[_Held] = field(default_factory=list)


_cache: OrderedDict[str, _Entry] = OrderedDict()
_counts = {"engines_built": 0, "engines_advanced": 0, "partitions": 0, "files": 0, "records": 0}


def worker_stats() -> dict[str, int]:
    """This process's counts: engines built, engines moved forward in time, partitions and
    files classified, records, and the engines it holds
    (``client.run(kproxy_core.dask.worker_stats)`` asks every worker)."""
    with _lock:
        return {**_counts, "engines_cached": sum(len(e.idle) for e in _cache.values())}


def clear_cache() -> None:
    """Drop this process's engines (``client.run(kproxy_core.dask.clear_cache)``)."""
    with _lock:
        _cache.clear()


def _entry(spec: _Spec) -> _Entry:
    with _lock:
        got = _cache.get(spec.key)
        if got is not None:
            _cache.move_to_end(spec.key)
            return got
    # unpickled outside the lock (a big cluster takes a while); two threads may both do it
    made = _Entry(_unpickle(spec.cluster), None if spec.timeline is None else _unpickle(spec.timeline))
    with _lock:
        got = _cache.setdefault(spec.key, made)
        _cache.move_to_end(spec.key)
        while len(_cache) > MAX_CACHED:
            _cache.popitem(last=False)
        return got


@contextlib.contextmanager
def _engine_at(spec: _Spec, target: int) -> Iterator[_Held]:
    """An engine of ``spec`` for this thread alone, its cluster that of the base with the
    timeline's first ``target`` changes applied, and no flows; given back afterwards.

    The idle engine nearest below ``target`` is moved forward (its changes applied in one
    batch, as :class:`~kproxy_core.events.Replayer` applies them); when every idle engine
    is past ``target``, or none is idle, one is built from the base cluster."""
    entry = _entry(spec)
    with _lock:
        behind = [h for h in entry.idle if h.at <= target]
        held = max(behind, key=lambda h: h.at) if behind else None
        if held is not None:
            entry.idle.remove(held)
        elif entry.idle:  # all newer: its slot is taken by a rebuilt one
            entry.idle.pop()
    if held is None:
        engine = Engine(entry.cluster, seed=spec.seed, **dict(spec.options))
        held = _Held(engine)
        with _lock:
            _counts["engines_built"] += 1
    if held.at < target:
        assert entry.timeline is not None
        replay = Replayer(held.engine, entry.timeline)
        replay.next = held.at
        replay.to_index(target)
        held.at = target
        with _lock:
            _counts["engines_advanced"] += 1
    held.engine.clear_flows()
    yield held
    # reached only when nothing raised: an engine a failure may have left half way is dropped
    with _lock:
        if _cache.get(spec.key) is entry:
            entry.idle.append(held)


def _first_index(timeline: Timeline, times: np.ndarray) -> int:
    """How many changes come before a table's first record, as classify_timed counts it
    (records without a time take the time of the record before, 0.0 before any)."""
    if not len(times):
        return 0
    t0 = float(np.min(fill_times(times, 0.0)))
    return int(np.searchsorted(timeline.times, t0, side="right"))


def _classify_arrow(table: Any, spec: _Spec, track: bool, stats: Stats | None = None) -> Any:
    """One partition (a pyarrow Table) classified on this worker with a fresh flow state."""
    import pyarrow as pa

    if spec.timeline is None:
        with _engine_at(spec, 0) as held:
            return classify_table(table, held.engine, track=track, stats=stats)
    entry = _entry(spec)
    timeline = entry.timeline
    assert timeline is not None
    times = times_of(table) if table.num_rows else np.zeros(0)
    start = _first_index(timeline, times)
    with _engine_at(spec, start) as held:
        if not table.num_rows:
            return classify_table(table, held.engine, track=track, stats=stats)
        rest = Timeline(timeline.times[start:], timeline.events[start:])
        timed = TimedStats()
        parts = list(classify_timed([table], held.engine, rest, track=track, stats=stats, timed=timed))
        held.at = start + timed.applied + timed.refused_count  # every change it went through, taken or not
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts)


_dtypes: OrderedDict[tuple[int, int, int, int], tuple[Any, Any]] = OrderedDict()
MAX_DTYPES = 64  # categorical dtypes kept, one per dictionary seen (an engine state's)


def _categories(dictionary: Any) -> Any:
    """The pandas CategoricalDtype of an Arrow dictionary, made once per dictionary: a
    partition's string answers share their engine state's dictionaries (every endpoint of
    the cluster, 100,000 strings for a big one), and making their pandas categories cost more
    than classifying the partition did. The dictionary is held with its dtype, so its
    buffers' addresses, the key, cannot be reused while it is cached."""
    bufs = dictionary.buffers()
    key = (bufs[1].address if bufs[1] is not None else 0, bufs[2].address if bufs[2] is not None else 0,
           dictionary.offset, len(dictionary))
    with _lock:
        got = _dtypes.get(key)
        if got is not None:
            _dtypes.move_to_end(key)
            return got[1]
    pd = _pd()
    dtype = pd.CategoricalDtype(pd.Index(dictionary.to_pandas()))
    with _lock:
        _dtypes[key] = (dictionary, dtype)
        while len(_dtypes) > MAX_DTYPES:
            _dtypes.popitem(last=False)
    return dtype


def _answers(table: Any) -> dict[str, Any]:
    """The added columns of a classified Table as pandas arrays, in :data:`ANSWER_DTYPES`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    pd = _pd()
    out: dict[str, Any] = {}
    for name in ADDED:
        col = table.column(name)
        arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        if pa.types.is_dictionary(arr.type):
            codes = pc.fill_null(arr.indices, -1).to_numpy(zero_copy_only=False)
            out[name] = pd.Categorical.from_codes(codes, dtype=_categories(arr.dictionary))
        else:  # uint16 and bool with nulls: a nullable array of their values and mask
            integer = pa.types.is_integer(arr.type)
            values = arr.fill_null(0 if integer else False).to_numpy(zero_copy_only=False)
            mask = arr.is_null().to_numpy(zero_copy_only=False)
            out[name] = (pd.arrays.IntegerArray if integer else pd.arrays.BooleanArray)(values, mask)
    return out


def to_pandas(table: Any) -> Any:
    """A Table from :func:`kproxy_core.flows.classify` as a DataFrame with the answers in
    :data:`ANSWER_DTYPES`, as :func:`classify` returns them (the other columns as pyarrow
    converts them)."""
    out = table.drop_columns(list(ADDED)).to_pandas()
    for name, col in _answers(table).items():
        out[name] = col
    return out


def _partition(part: Any, spec: _Spec, track: bool) -> Any:
    import pyarrow as pa

    cols = [c for c in INPUT_COLUMNS if c in part.columns]
    table = pa.Table.from_pandas(part[cols], preserve_index=False)
    answers = _answers(_classify_arrow(table, spec, track))
    out = part.copy(deep=False)
    for name, col in answers.items():
        out[name] = col
    with _lock:
        _counts["partitions"] += 1
        _counts["records"] += len(part)
    return out


def _meta(meta: Any) -> Any:
    from dask.dataframe.utils import UNKNOWN_CATEGORIES

    pd = _pd()
    out = meta.copy(deep=False)
    for name, dtype in ANSWER_DTYPES.items():
        kind = pd.CategoricalDtype([UNKNOWN_CATEGORIES]) if dtype == "category" else pd.api.types.pandas_dtype(dtype)
        out[name] = pd.Series([], dtype=kind, index=meta.index[:0])
    return out


def classify(ddf: dd.DataFrame, cluster: Any, *, events: Timeline | str | os.PathLike[str] | None = None,
             seed: int = 0, track: bool = True, **engine_options: Any) -> dd.DataFrame:
    """``ddf`` with kube-proxy's answer per record: each partition classified by
    :func:`kproxy_core.flows.classify` on a worker, with a flow state of its own (see the
    module docstring for what that decides at partition boundaries).

    ``cluster``: a :class:`~kproxy_core.Cluster`, manifest text or bytes, a
    ``pathlib.Path`` to manifests, or a list of object dicts (parsed here, sent as data).
    ``events``: a :class:`~kproxy_core.events.Timeline` or the path of a recorded watch
    stream (read here); each partition then needs a ``time`` column and is decided by the
    cluster of its records' times. ``seed`` and ``engine_options`` (``node``,
    ``cluster_cidr``, ``mode``, ...) go to :class:`~kproxy_core.Engine` on every worker.

    The index, the partitions and the input columns are kept as they are; the added columns
    come in :data:`ANSWER_DTYPES` (categories unknown until computed). A Cluster object given
    to several calls is pickled once; the workers keep their engines between calls."""
    _require_dask()
    import dask.dataframe as dd
    from dask.delayed import delayed

    if not isinstance(ddf, dd.DataFrame):
        raise TypeError(f"kproxy_core.dask.classify: a dask DataFrame, not {type(ddf).__name__}")
    meta = ddf._meta
    check_columns(list(meta.columns))
    if events is not None and "time" not in meta.columns:
        raise FlowError("classify: time-aware classification needs a time column")
    spec = _spec(cluster, events, seed, engine_options)
    shared = delayed(spec, name=f"kproxy-engine-spec-{spec.key}", traverse=False)
    out: dd.DataFrame = ddf.map_partitions(  # type: ignore[no-untyped-call]
        _partition, shared, track, meta=_meta(meta), transform_divisions=False, align_dataframes=False)
    return out


# --------------------------------------------------------------------------- files


def _hive_dir(name: str) -> str:
    """The dataset directory of one input file (its name escaped as pyarrow's ``hive``
    partitioning un-escapes it)."""
    return "file=" + quote(name, safe="")


def _one_line(shown: str, e: BaseException, path: str | None = None) -> str:
    """``shown: what went wrong``, the first line of it, without a traceback (``path``, the
    name the worker opened, is replaced by ``shown`` where the message has it)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if path and path != shown:
        text = text.replace(path, shown)
    if not isinstance(e, KproxyError | OSError):
        text = f"{type(e).__name__}: {text}"
    return text if text.startswith(shown) else f"{shown}: {text}"


def _classify_file(path: str, shown: str, out_dir: str, spec: _Spec, fmt: str | None, chunk: int | None,
                   track: bool) -> dict[str, Any]:
    """One input file (``path``, absolute; ``shown``, as the caller named it), read and
    classified on this worker chunk by chunk with one flow state (flows cross chunks, not
    files), written as ``out_dir/file=<name>/part-NNNNN.parquet`` (:data:`PART_ROWS` records
    each, the last fewer). The file's output appears whole or not at all: it is written
    beside the dataset, in a directory pyarrow skips (its name starts with a dot), and moved
    in at the end, replacing the file's output of an earlier run."""
    from .inputs import ReadStats
    from .traffic import ParquetSink, read_tables

    name = os.path.basename(path.rstrip("/")) or path
    read = ReadStats()
    stats = Stats()
    timed = TimedStats()
    result: dict[str, Any] = {"path": shown, "name": name, "records": 0, "parts": 0, "error": None}
    final = Path(out_dir) / _hive_dir(name)
    tmp = Path(out_dir) / f".{_hive_dir(name)}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        kw: dict[str, Any] = {"fmt": fmt, "stats": read}
        if chunk is not None:
            kw["chunk"] = chunk
        tables = iter(read_tables(path, **kw))
        first = next(tables, None)
        tmp.mkdir(parents=True)
        sink: ParquetSink | None = None
        try:
            in_part = 0
            for out in [] if first is None else _file_answers(first, tables, spec, track, stats, timed):
                if sink is None or in_part >= PART_ROWS:
                    if sink is not None:
                        sink.close()
                    sink = ParquetSink(str(tmp / f"part-{result['parts']:05d}.parquet"))
                    result["parts"] += 1
                    in_part = 0
                sink.write(out)  # written by a thread of its own while the next chunk is classified
                in_part += out.num_rows
                result["records"] += out.num_rows
        finally:
            if sink is not None:
                sink.close()
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except Exception as e:  # one line naming the file; the other files go on
        result["error"] = _one_line(shown, e, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    result["read"] = {"records": read.records, "skipped": dict(read.skipped),
                      "examples": {k: list(v) for k, v in read.examples.items()}}
    result["stats"] = {"records": stats.records, "bad": dict(stats.bad), "verdicts": dict(stats.verdicts)}
    result["timed"] = {"applied": timed.applied, "refused": list(timed.refused),
                       "refused_count": timed.refused_count, "late": timed.late}
    with _lock:
        _counts["files"] += 1
        _counts["records"] += int(result["records"])
    return result


def _file_answers(first: Any, rest: Iterator[Any], spec: _Spec, track: bool, stats: Stats,
                  timed: TimedStats) -> Iterator[Any]:
    """The classified chunks of one file: the engine brought to the cluster at the first
    chunk's earliest record (with events), then one flow state through every chunk."""
    import itertools

    if spec.timeline is None:
        with _engine_at(spec, 0) as held:
            for table in itertools.chain([first], rest):
                yield classify_table(table, held.engine, track=track, stats=stats)
        return
    timeline = _entry(spec).timeline
    assert timeline is not None
    if "time" not in first.column_names:
        raise FlowError("classify: time-aware classification needs a time column (the format has none)")
    start = _first_index(timeline, times_of(first))
    with _engine_at(spec, start) as held:
        tail = Timeline(timeline.times[start:], timeline.events[start:])
        yield from classify_timed(itertools.chain([first], rest), held.engine, tail, track=track, stats=stats,
                                  timed=timed)
        held.at = start + timed.applied + timed.refused_count  # every change it went through, taken or not


def classify_files(paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], cluster: Any, *,
                   client: Client, fmt: str | None = None, events: Timeline | str | os.PathLike[str] | None = None,
                   seed: int = 0, chunk: int | None = None, track: bool = True,
                   **engine_options: Any) -> dict[str, Any]:
    """Classify traffic files on a dask cluster, one task per file, into a Parquet dataset
    partitioned by input file: ``out_dir/file=<name>/part-00000.parquet``, ... (read it
    with ``pyarrow.dataset.dataset(out_dir, partitioning="hive")``).

    Each worker reads its file itself (``read_tables`` of :mod:`kproxy_core.traffic`; the
    paths, made absolute here, must be readable there, and ``out_dir`` writable, as on a
    shared file system) and classifies it chunk by chunk with one flow state for the whole
    file, so the answers are those of a single-process classification of that file (flows
    do not cross files). With ``events``, through :func:`kproxy_core.events.classify_timed`,
    from the cluster at the time of the first chunk's earliest record. A file's earlier
    output is replaced; a file that fails leaves none. ``fmt``: the files' format (None:
    each file's found from its content); ``chunk``: records per chunk read.

    Returns totals: ``records``, ``files`` (per input path: ``records``, ``parts``,
    ``skipped``, ``error``), ``skipped`` (reading's reasons, with counts), ``bad`` (records
    kept but not classifiable, by reason), ``verdicts``, ``timed`` (changes applied and
    refused, late records) and ``errors``: one line per file that failed, naming it. A
    failed file does not stop the others, and nothing is raised for it."""
    from distributed import as_completed

    from .inputs import FORMATS

    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    names = [os.path.basename(os.fspath(p).rstrip("/")) for p in paths]
    seen: dict[str, str] = {}
    for p, n in zip(paths, names, strict=True):
        if n in seen:
            raise ValueError(f"{os.fspath(p)}: its name {n!r} is that of {seen[n]} too: the dataset is partitioned "
                             "by file name")
        seen[n] = os.fspath(p)
    spec = _spec(cluster, events, seed, engine_options)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    shared = client.scatter(spec, hash=False)  # type: ignore[no-untyped-call]
    strs = [os.fspath(p) for p in paths]
    futures = client.map(_classify_file, [os.path.abspath(p) for p in strs], strs,
                         out_dir=os.path.abspath(out_dir), spec=shared, fmt=fmt, chunk=chunk,
                         track=track, pure=False)
    by_future = dict(zip(futures, strs, strict=True))
    results: dict[str, dict[str, Any]] = {}
    for fut in as_completed(futures):  # type: ignore[no-untyped-call]
        p = by_future[fut]
        try:
            results[p] = fut.result()
        except Exception as e:  # the task itself failed (a worker lost): still one line
            results[p] = {"path": p, "name": os.path.basename(p), "records": 0, "parts": 0,
                          "error": _one_line(p, e), "read": {"skipped": {}}, "stats": {}, "timed": {}}
    return _totals([results[p] for p in strs])


def _totals(results: list[dict[str, Any]]) -> dict[str, Any]:
    def add(into: dict[str, int], more: Mapping[str, int]) -> None:
        for k, v in more.items():
            into[k] = into.get(k, 0) + int(v)

    skipped: dict[str, int] = {}
    bad: dict[str, int] = {}
    verdicts: dict[str, int] = {}
    timed: dict[str, Any] = {"applied": 0, "refused_count": 0, "refused": [], "late": 0}
    files: dict[str, dict[str, Any]] = {}
    for r in results:
        add(skipped, r["read"].get("skipped", {}))
        add(bad, r["stats"].get("bad", {}))
        add(verdicts, r["stats"].get("verdicts", {}))
        t = r.get("timed") or {}
        for k in ("applied", "refused_count", "late"):
            timed[k] += int(t.get(k, 0))
        for line in t.get("refused", []):  # the first few, as TimedStats keeps them
            if line not in timed["refused"] and len(timed["refused"]) < 5:
                timed["refused"].append(line)
        files[r["path"]] = {"name": r["name"], "records": r["records"], "parts": r["parts"],
                            "skipped": dict(r["read"].get("skipped", {})), "error": r["error"]}
    return {
        "records": sum(int(r["records"]) for r in results),
        "files": files,
        "skipped": skipped,
        "bad": bad,
        "verdicts": verdicts,
        "timed": timed,
        "errors": [r["error"] for r in results if r["error"]],
    }


# --------------------------------------------------------------------------- clusters


def connect(spec: str) -> Client:
    """A dask client: ``local:N`` starts N worker processes of one thread each on this
    machine (``local``: one per CPU), closed with the client; anything else is the address
    of a running scheduler (``tcp://host:8786``).

    The local workers keep glibc's own malloc thresholds: distributed starts its workers
    with ``MALLOC_TRIM_THRESHOLD_=65536`` (to hand freed memory back to the system at once),
    which fixes the mmap threshold at 128 KiB, so every column of every partition is a fresh
    mapping whose pages fault in anew: a quarter of the time of a partition's classification.
    Workers started otherwise (``dask worker``) can be given the same by the configuration
    ``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_: null``."""
    _require_dask()
    import dask
    from distributed import Client

    made: Client
    if spec == "local" or spec.startswith("local:"):
        count = spec.partition(":")[2]
        if count and not (count.isdigit() and int(count) > 0):
            raise ValueError(f"--dask {spec}: local:N, N a number of workers (1 or more)")
        n = int(count) if count else (os.cpu_count() or 1)
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            # no dashboard; the scheduler's HTTP server (metrics) on any free port
            made = Client(n_workers=n, threads_per_worker=1, processes=True,  # type: ignore[no-untyped-call]
                          dashboard_address=None, scheduler_kwargs={"dashboard_address": ":0"})
    else:
        made = Client(spec)  # type: ignore[no-untyped-call]
    return made

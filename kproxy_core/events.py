"""A cluster through time: recorded watch streams, and flows classified against the
cluster as it was at each flow's own time.

A recording is what ``kubectl get endpointslices,services -A --watch -o json
--output-watch-events`` prints (JSON values one after another, pretty or one per line):
watch events ``{"type": "ADDED"|"MODIFIED"|"DELETED", "object": {...}}``, or plain objects
(without ``--output-watch-events``: each replaces the object of its kind, namespace and
name; one with ``metadata.deletionTimestamp`` is taken as deleted), or Lists of them. YAML
(``-o yaml``, documents separated by ``---``) is read too.

The time of each change, first of these that is there:

1. a ``time`` (or ``ts``) beside ``type`` and ``object`` in the event: when it was seen.
   A recorder adds it, e.g. ``kubectl get ... --watch -o json --output-watch-events |
   jq -c '{time: now, type, object}'``; RFC 3339 text or seconds since the epoch;
2. for a deletion, ``metadata.deletionTimestamp``;
3. an EndpointSlice's ``endpoints.kubernetes.io/last-change-trigger-time`` annotation (when
   the change to the Service or its Pods that caused it happened);
4. the newest ``metadata.managedFields[].time``;
5. ``metadata.creationTimestamp``.

A watch stream is in the order the API server made the changes (resourceVersion order), so
stream order wins: a change whose time is earlier than the one before it (clocks of
different writers, or an event with none of the above) is taken to happen at the time of
the one before. Times are seconds since the epoch throughout.

Time semantics of :func:`classify_timed`: a record at time t is decided by the cluster with
every change at a time <= t applied, and by the flows and affinity entries of the records
before it; each record's own time is the clock of their timeouts. So a TCP or SCTP flow that
began before its endpoint went away keeps that endpoint until the flow times out, as its
conntrack entry would (kube-proxy's conntrack cleanup deletes only UDP entries of a gone
endpoint: a UDP flow's next packet picks again, see ``Engine(stale_flows=...)``). Records
are decided in time order within a chunk (results come back in the input's order); a record
older than a change already applied for an earlier chunk is decided by the newer cluster and
counted as ``late`` (sort the input by time to have none).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import KproxyError, ManifestError

if TYPE_CHECKING:
    from .engine import Engine
    from .flows import Stats

TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", re.IGNORECASE)


class EventsError(KproxyError, ValueError):
    """A recording that cannot be read (one line: the file, where, and why)."""


def parse_time(value: Any) -> float | None:
    """Seconds since the epoch of an RFC 3339 time (any fraction digits) or a number;
    None if it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if np.isfinite(value) else None
    if not isinstance(value, str):
        return None
    m = _RFC3339.match(value.strip())
    if not m:
        return None
    whole, frac, zone = m.groups()
    try:
        t = datetime.fromisoformat(whole + ("+00:00" if zone.upper() == "Z" else zone))
    except ValueError:
        return None
    return t.replace(tzinfo=t.tzinfo or timezone.utc).timestamp() + (float(frac) if frac else 0.0)


@dataclass
class Timeline:
    """Changes to a cluster in the order they happened: ``times[i]`` (seconds, never
    decreasing) and ``events[i]``, an ``(origin, watch event)`` pair for ``Engine.apply``."""

    times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    untimed: int = 0  # events that had no time of their own

    def __len__(self) -> int:
        return len(self.events)

    def between(self, start: float, end: float) -> Timeline:
        """The changes at times in (start, end] (``-inf``/``inf`` for open ends)."""
        lo = int(np.searchsorted(self.times, start, side="right"))
        hi = int(np.searchsorted(self.times, end, side="right"))
        return Timeline(self.times[lo:hi], self.events[lo:hi])

    @classmethod
    def from_events(cls, items: Iterable[tuple[str, Mapping[str, Any]]]) -> Timeline:
        times: list[float] = []
        events: list[tuple[str, dict[str, Any]]] = []
        untimed = 0
        last = -np.inf
        for origin, raw in items:
            event = _as_event(origin, raw)
            t = event_time(event, raw)
            if t is None:
                untimed += 1
                t = last if last > -np.inf else -np.inf
            last = max(last, t)
            times.append(last)
            events.append((origin, event))
        return cls(np.array(times, dtype=np.float64), events, untimed)


def _as_event(origin: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise EventsError(f"{origin}: not an object")
    if "object" in raw and "type" in raw:
        kind = raw.get("type")
        if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"):
            raise EventsError(f"{origin}: type: {kind!r} is not ADDED, MODIFIED or DELETED")
        return {"type": kind, "object": raw["object"]}
    meta = raw.get("metadata")
    gone = isinstance(meta, Mapping) and bool(meta.get("deletionTimestamp"))
    return {"type": "DELETED" if gone else "MODIFIED", "object": dict(raw)}


def event_time(event: Mapping[str, Any], raw: Mapping[str, Any]) -> float | None:
    """The time of a change (see the module docstring), or None."""
    for key in ("time", "ts"):
        if key in raw and "object" in raw:
            t = parse_time(raw[key])
            if t is not None:
                return t
    obj = event.get("object")
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping):
        return None
    if event.get("type") == "DELETED":
        t = parse_time(meta.get("deletionTimestamp"))
        if t is not None:
            return t
    notes = meta.get("annotations")
    if isinstance(notes, Mapping):
        t = parse_time(notes.get(TRIGGER_TIME))
        if t is not None:
            return t
    fields = meta.get("managedFields")
    if isinstance(fields, list):
        stamps = [parse_time(f.get("time")) for f in fields if isinstance(f, Mapping)]
        known = [s for s in stamps if s is not None]
        if known:
            return max(known)
    return parse_time(meta.get("creationTimestamp"))


def read_events(path: str | Path) -> Timeline:
    """A recorded watch stream (see the module docstring) as a :class:`Timeline`."""
    from .inputs import InputError, open_input

    name = str(path)
    try:
        with open_input(name) as f:
            text = f.read().decode("utf-8")
    except InputError as e:
        raise EventsError(str(e)) from None
    except UnicodeDecodeError as e:
        raise EventsError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return Timeline.from_events(_values(name, text))


def _values(name: str, text: str) -> Iterator[tuple[str, Any]]:
    stripped = text.lstrip()
    if not stripped:
        return
    if stripped[0] in "{[":
        decoder = json.JSONDecoder()
        at, n, count = len(text) - len(stripped), len(text), 0
        while at < n:
            try:
                value, end = decoder.raw_decode(text, at)
            except json.JSONDecodeError as e:
                line = text.count("\n", 0, e.pos) + 1
                raise EventsError(f"{name}: line {line}: not JSON: {e.msg}") from None
            line = text.count("\n", 0, at) + 1
            for item in _items(value):
                count += 1
                yield f"{name}: line {line} (#{count})", item
            at = end
            while at < n and text[at] in " \t\r\n":
                at += 1
        return
    import yaml

    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise EventsError(f"{name}: not JSON or YAML: {str(e).splitlines()[0]}") from None
    count = 0
    for doc in docs:
        for item in _items(doc):
            count += 1
            yield f"{name}: #{count}", item


def _items(value: Any) -> list[Any]:
    if isinstance(value, Mapping) and isinstance(value.get("items"), list) and "object" not in value:
        return list(value["items"])  # a List
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


@dataclass
class TimedStats:
    """What time-aware classification did besides classifying: changes applied, changes
    refused (with why, the first few), and records older than a change already applied."""

    applied: int = 0
    refused: list[str] = field(default_factory=list)
    refused_count: int = 0
    late: int = 0


class Replayer:
    """Applies a timeline's changes to an engine, up to a time, at most once each."""

    def __init__(self, engine: Engine, timeline: Timeline, stats: TimedStats | None = None) -> None:
        self.engine = engine
        self.timeline = timeline
        self.next = 0  # the first change not applied
        self.stats = stats if stats is not None else TimedStats()

    @property
    def applied_until(self) -> float:
        """The time of the last change applied (``-inf`` before any)."""
        return float(self.timeline.times[self.next - 1]) if self.next else -np.inf

    def until(self, t: float) -> None:
        """Apply every change at a time <= t not applied yet (one apply; a change the
        engine refuses is set aside, named, and the others applied)."""
        end = int(np.searchsorted(self.timeline.times, t, side="right"))
        self.to_index(end)

    def to_index(self, end: int) -> None:
        if end <= self.next:
            return
        batch = self.timeline.events[self.next:end]
        self.next = end
        try:
            self.engine.apply(batch)
            self.stats.applied += len(batch)
            return
        except ManifestError:
            pass
        for item in batch:  # one at a time, to name the ones refused
            try:
                self.engine.apply([item])
                self.stats.applied += 1
            except ManifestError as e:
                self.stats.refused_count += 1
                if len(self.stats.refused) < 5:
                    self.stats.refused.append(str(e).splitlines()[0])


def classify_timed(tables: Iterable[Any], engine: Engine, timeline: Timeline, *, track: bool = True,
                   stats: Stats | None = None, timed: TimedStats | None = None) -> Iterator[Any]:
    """Each table (with a ``time`` column) classified as :func:`kproxy_core.flows.classify`
    does, each record against the cluster at its own time (see the module docstring);
    the engine's cluster is moved forward through ``timeline`` as the records go."""
    import pyarrow as pa

    from .flows import FlowError, classify, fill_times, times_of

    replay = Replayer(engine, timeline, timed)
    for table in tables:
        if "time" not in table.column_names:
            raise FlowError("classify: time-aware classification needs a time column")
        # no time: decided at the time of the record before
        t = fill_times(times_of(table), replay.applied_until if replay.next else 0.0)
        order = np.argsort(t, kind="stable")
        ts = t[order]
        due = np.searchsorted(timeline.times, ts, side="right")  # changes due before each record
        replay.stats.late += int(np.count_nonzero(due < replay.next))
        due = np.maximum(due, replay.next)
        bounds = np.flatnonzero(np.diff(due)) + 1
        starts = np.concatenate(([0], bounds))
        ends = np.concatenate((bounds, [len(ts)]))
        sorted_in = table.take(pa.array(order)) if not (order[:-1] < order[1:]).all() else table
        parts = []
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            if b <= a:
                continue
            replay.to_index(int(due[a]))
            parts.append(classify(sorted_in.slice(a, b - a), engine, track=track, now=ts[a:b].copy(),
                                  stats=stats))
        if not parts:
            continue
        out = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        if sorted_in is not table:  # back into the input's order
            inverse = np.empty_like(order)
            inverse[order] = np.arange(len(order))
            out = out.take(pa.array(inverse))
        yield out


def state_at(base: Sequence[Any], timeline: Timeline, t: float) -> list[Any]:
    """The objects (plain manifests and watch events, in order) that make the cluster of
    time ``t``: ``base`` then every change at a time <= t."""
    end = int(np.searchsorted(timeline.times, t, side="right"))
    return [*base, *timeline.events[:end]]

"""Runs recorded in forked children reach the one ``/metrics`` endpoint of their worker.

Celery's prefork pool, RQ's work horse and gunicorn run jobs in processes forked from the
one that called ``instrument()`` (the *owner*, which serves ``/metrics``). A forked child
starts with empty instruments of its own (so nothing of the parent's is counted twice) and
leaves a snapshot of them in a shared directory, written atomically:

* when a run finishes in the child (so a child that ends with ``os._exit`` right after its
  job, as RQ's horse does, loses nothing it finished), and
* at every watchdog tick (so its in-flight gauges and stall verdicts stay current).

A long-lived pool process (Celery's prefork children, Dramatiq's and Huey's worker processes)
runs many jobs of many names, and a snapshot holds every series it has: with 50 task names one
costs about 9 ms to write, which must not be paid twice per task on the task's own thread. Such
a child is *lazy* (:attr:`ProcessShare.lazy`, set by its integration while the watchdog runs):
a run's start and end only mark the snapshot stale, and the watchdog's next tick writes it
(every tick while it is stale or runs are in flight, at least every
:data:`IDLE_FLUSH_SECONDS` otherwise), as does the child's exit. A lazy child killed outright
loses what it counted since its last tick; a Celery child's main process still records the
killed run's end, and also its start when the child's last snapshot is older than the run
(:meth:`ProcessShare.written_at`).

At collection the owner merges its own samples with every child's: counters and histograms
are summed; gauges of live children are combined per metric (timestamps by minimum, counts
by sum, thresholds by maximum). A child that has died is folded in once: its counters and
histograms are added to an archive kept by the owner, its gauges (runs in flight, stalls)
dropped, and its file removed, so a dead child's in-flight values never linger and the
directory does not grow with every RQ horse.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import values as _pc_values
from prometheus_client.core import Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.utils import floatToGoString

from . import errors

_MIN_GAUGES = {
    "otel_jobs_oldest_run_start_timestamp_seconds",
    "otel_jobs_stalest_heartbeat_timestamp_seconds",
    "otel_jobs_watchdog_last_tick_timestamp_seconds",
    "process_start_time_seconds",
}
_SUM_GAUGES = {
    "otel_jobs_runs_in_progress",
    "otel_jobs_runs_stalled",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
}

#: A lazy child with nothing new still writes its snapshot this often (its watchdog's last
#: tick must not look stale on the owner's endpoint).
IDLE_FLUSH_SECONDS = 10.0
_WRITTEN_AT_MEMORY = 1024  # dead children whose last snapshot time the owner remembers

Family = dict[str, Any]  # {"name", "type", "help", "samples": {(sample, labels): value}}
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return True


def _serialise(registry: CollectorRegistry) -> list[dict[str, Any]]:
    """The registry's families as a snapshot holds them (creation timestamps left out).

    Labelled counters and histograms, nearly all of a worker's samples, are read from their
    label children directly: building prometheus-client's samples first costs about 3 times as
    much (a pool child with 50 task names: 9 ms against 2.5 ms). That reads private fields, as
    :mod:`otel_jobs.core.textformat` does; if one is missing, the error is counted
    (``multiprocess.serialise``) and prometheus-client's ``collect()`` is used instead.
    """
    if _pc_values.ValueClass is _pc_values.MutexValue:
        try:
            return _read_directly(registry)
        except Exception as exc:
            errors.record("multiprocess.serialise", exc)
    return _collected(registry)


def _read_directly(registry: CollectorRegistry) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with registry._lock:
        collectors: list[Any] = list(registry._collector_to_names)
    for collector in collectors:
        kind = getattr(collector, "_type", None)
        if not (
            isinstance(collector, MetricWrapperBase)
            and collector._labelnames
            and kind in ("counter", "histogram")
        ):
            out.extend(_families_of(collector.collect()))
            continue
        metric: Any = collector
        name, labelnames = metric._name, metric._labelnames
        with metric._lock:
            children: list[tuple[tuple[str, ...], Any]] = list(metric._metrics.items())
        samples: list[list[Any]] = []
        if kind == "counter":
            total = name + "_total"
            for values, child in children:
                samples.append(
                    [total, dict(zip(labelnames, values, strict=True)), child._value.get()]
                )
        else:
            bounds = [floatToGoString(b) for b in metric._upper_bounds]
            bucket, count, total = name + "_bucket", name + "_count", name + "_sum"
            for values, child in children:
                labels = dict(zip(labelnames, values, strict=True))
                cumulative = 0.0
                for le, value in zip(bounds, child._buckets, strict=True):
                    cumulative += value.get()
                    samples.append([bucket, {**labels, "le": le}, cumulative])
                samples.append([count, labels, cumulative])
                samples.append([total, labels, child._sum.get()])
        out.append({"name": name, "type": kind, "help": metric._documentation, "samples": samples})
    return out


def _collected(registry: CollectorRegistry) -> list[dict[str, Any]]:
    return list(_families_of(registry.collect()))


def _families_of(families: Any) -> Iterator[dict[str, Any]]:
    for family in families:
        counted = family.type in ("counter", "histogram", "summary")
        yield {
            "name": family.name,
            "type": family.type,
            "help": family.documentation,
            "samples": [
                [s.name, s.labels, s.value]
                for s in family.samples
                if not (counted and s.name.endswith("_created"))
            ],
        }


def _combine(name: str, sample: str, old: float, new: float, kind: str) -> float:
    if kind in ("counter", "histogram", "summary"):
        if sample.endswith("_created"):
            return min(old, new)
        return old + new
    if name in _MIN_GAUGES:
        return min(old, new)
    if name in _SUM_GAUGES:
        return old + new
    return max(old, new)


def _merge_into(
    into: dict[str, Family], families: list[dict[str, Any]], *, counters_only: bool = False
) -> None:
    for fam in families:
        kind = fam["type"]
        if counters_only and kind not in ("counter", "histogram", "summary"):
            continue
        target = into.get(fam["name"])
        if target is None:
            target = into[fam["name"]] = {
                "name": fam["name"],
                "type": kind,
                "help": fam["help"],
                "samples": {},
            }
        samples = target["samples"]
        for sample_name, labels, value in fam["samples"]:
            if sample_name.endswith("_created") and kind in ("counter", "histogram", "summary"):
                continue  # creation timestamps: noise on a worker's endpoint, and wrong once summed
            key: SampleKey = (sample_name, tuple(sorted(labels.items())))
            if key in samples:
                samples[key] = _combine(fam["name"], sample_name, samples[key], value, kind)
            else:
                samples[key] = value


class ProcessShare:
    """The directory shared by the owner and its forked children (see module docstring)."""

    def __init__(self, directory: str, owner_pid: int) -> None:
        self.directory = directory
        self.owner_pid = owner_pid
        self._archive: dict[str, Family] = {}
        self._lock = threading.Lock()
        self.lazy = False  # in a child: runs mark the snapshot stale, the watchdog writes it
        self.dirty = False  # in a lazy child: something was counted since the last snapshot
        self.last_flush = 0.0  # monotonic time of this child's last snapshot
        self._written_at: dict[int, float] = {}  # dead children folded in: their last "at"
        os.makedirs(directory, exist_ok=True)

    @property
    def in_child(self) -> bool:
        return os.getpid() != self.owner_pid

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._archive = {}
        self.lazy = self.dirty = False
        self.last_flush = 0.0
        self._written_at = {}

    def changed(self, registry: CollectorRegistry) -> None:
        """A run started or ended in this (child) process: write the snapshot now, or, in a
        lazy child, mark it stale for the watchdog's next tick."""
        if self.lazy:
            self.dirty = True
        else:
            self.flush(registry)

    def due(self) -> bool:
        """Whether a lazy child's watchdog tick should write the snapshot (always when eager)."""
        return (
            not self.lazy or self.dirty or time.monotonic() - self.last_flush >= IDLE_FLUSH_SECONDS
        )

    def flush(self, registry: CollectorRegistry) -> None:
        """Write this (child) process's snapshot; a no-op in the owner."""
        pid = os.getpid()
        if pid == self.owner_pid:
            return
        # One flush at a time: a watchdog tick that read the instruments before a run started
        # must not replace, after it, the snapshot a later flush took with that run in it.
        with self._lock:
            self.dirty = False  # before reading: a change made meanwhile marks it again
            at = time.time()  # everything counted before this is in the snapshot
            data = json.dumps(
                {"pid": pid, "at": at, "families": _serialise(registry)}, separators=(",", ":")
            )
            path = os.path.join(self.directory, f"{pid}.json")
            tmp = f"{path}.{threading.get_ident()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(data)
            os.replace(tmp, path)
            self.last_flush = time.monotonic()

    def written_at(self, pid: int) -> float | None:
        """The Unix time child ``pid`` took its last snapshot (None: it left none).

        The owner asks when it records the end of a run the child did not finish: a run that
        started after that time is not counted in the snapshot."""
        with self._lock:
            try:
                with open(os.path.join(self.directory, f"{pid}.json"), encoding="utf-8") as f:
                    at = json.load(f).get("at")
            except FileNotFoundError:
                return self._written_at.get(pid)
            except (OSError, ValueError) as exc:
                errors.record("multiprocess.read", exc)
                return None
        return float(at) if isinstance(at, (int, float)) else None

    def alone(self) -> bool:
        """True when no forked child has left metrics (nothing to merge into the owner's)."""
        try:
            return not self._archive and all(pid == self.owner_pid for pid, _ in self.children())
        except Exception:
            return False

    def children(self) -> Iterator[tuple[int, str]]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in names:
            stem, dot, ext = name.partition(".")
            if ext == "json" and stem.isdigit():
                yield int(stem), os.path.join(self.directory, name)

    def merged(self, local: CollectorRegistry) -> dict[str, Family]:
        """The owner's families merged with every child's (dead children folded into the archive)."""
        merged: dict[str, Family] = {}
        _merge_into(merged, _serialise(local))
        with self._lock:
            for pid, path in sorted(self.children()):
                if pid == self.owner_pid:
                    continue
                try:
                    with open(path, encoding="utf-8") as f:
                        snapshot = json.load(f)
                    families = snapshot["families"]
                except (OSError, ValueError, KeyError) as exc:
                    errors.record("multiprocess.read", exc)
                    continue
                if pid_alive(pid):
                    _merge_into(merged, families)
                else:
                    _merge_into(self._archive, families, counters_only=True)
                    if isinstance(snapshot.get("at"), (int, float)):
                        if len(self._written_at) >= _WRITTEN_AT_MEMORY:
                            self._written_at.pop(next(iter(self._written_at)))
                        self._written_at[pid] = float(snapshot["at"])
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
            archive = [
                {"name": f["name"], "type": f["type"], "help": f["help"],
                 "samples": [[k[0], dict(k[1]), v] for k, v in f["samples"].items()]}
                for f in self._archive.values()
            ]  # fmt: skip
        _merge_into(merged, archive)
        return merged

    def remove(self) -> None:
        for _pid, path in list(self.children()):
            try:
                os.unlink(path)
            except OSError:
                pass


class MergedCollector:
    """A prometheus-client collector serving the owner's and its children's samples as one."""

    def __init__(self, share: ProcessShare, local: CollectorRegistry) -> None:
        self._share = share
        self._local = local

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        share = self._share
        if share.alone():
            # No forked child has left metrics: serve the owner's families as they are (minus the
            # creation timestamps, as merging does), without the copy, sort and rebuild of a
            # merge, which doubles the cost of a scrape (bench/bench_scrape.py).
            for family in self._local.collect():
                if family.type in ("counter", "histogram", "summary"):
                    family.samples = [s for s in family.samples if not s.name.endswith("_created")]
                yield family
            return
        try:
            merged = share.merged(self._local)
        except Exception as exc:
            errors.record("multiprocess.merge", exc)
            yield from self._local.collect()
            return
        for fam in merged.values():
            name = fam["name"]
            metric = Metric(name, fam["help"], fam["type"])
            for (sample_name, labels), value in fam["samples"].items():
                metric.add_sample(sample_name, dict(labels), value)
            yield metric

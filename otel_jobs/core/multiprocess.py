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
directory does not grow with every RQ horse. A job's last success and failures in a row are the
exception (:mod:`otel_jobs.core.streaks`): each snapshot carries them per series, they are merged
across the owner and its children, live and dead, and a dead child's are kept in the archive.

The directory may be one other users can write to (``OTEL_JOBS_MULTIPROCESS_DIR`` is the
operator's choice), so every file in it is untrusted until checked, and every access goes
through the helpers of :class:`ProcessShare` (:meth:`~ProcessShare.read`,
:meth:`~ProcessShare.write`, :meth:`~ProcessShare.touch`, :meth:`~ProcessShare.exists`),
integrations included, which use :mod:`otel_jobs.core.private_files`; what a snapshot holds and
how snapshots merge is :mod:`otel_jobs.core.snapshots`:

* a file is read only if it is a regular file owned by this process's user, opened with
  ``O_NOFOLLOW`` (a symlink is refused, not followed) and ``O_NONBLOCK`` (a FIFO cannot hang
  the reader), and no larger than :data:`MAX_FILE_BYTES`;
* a snapshot's content is type-checked (:func:`checked_snapshot`) before any of it is merged,
  and label values are cleaned (:mod:`otel_jobs.core.labels`);
* a file that fails any check is skipped (never merged, never folded into the archive),
  counted once under ``multiprocess.read`` and logged once;
* a file is written under a new name (``O_CREAT|O_EXCL|O_NOFOLLOW``, mode 0600) and renamed
  over the target, so a symlink planted at any name is never followed;
* a configured directory is created with mode 0700; the private default directory
  (:func:`private_directory`) holds a lock its owner keeps for its whole life (and its forked
  children with it), so that directories left by owners that ended without cleaning up
  (``os._exit``, SIGKILL) are recognised and removed when the next owner starts.

Never: follow a symlink, open anything but a regular file, trust a value's type, or raise
into a job (the callers guard every call).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from . import errors, streaks
from .labels import clean as clean_label
from .private_files import (
    MAX_FILE_BYTES,
    UnsafeFileError,
    create_private,
    pid_alive,
    pid_named,
    private_directory,
    read_private,
    write_private,
)
from .snapshots import (
    Family,
    checked_snapshot,
    clean_samples,
    each_collected,
    merge_into,
    parse,
    serialise,
)

logger = logging.getLogger("otel_jobs")

# Kept importable from here (the files and the snapshot format have modules of their own).
__all__ = [
    "IDLE_FLUSH_SECONDS",
    "MAX_FILE_BYTES",
    "MergedCollector",
    "ProcessShare",
    "UnsafeFileError",
    "pid_alive",
    "private_directory",
]

#: A lazy child with nothing new still writes its snapshot this often (its watchdog's last
#: tick must not look stale on the owner's endpoint).
IDLE_FLUSH_SECONDS = 10.0
_WRITTEN_AT_MEMORY = 1024  # dead children whose last snapshot time the owner remembers
_BAD_MEMORY = 1024  # bad files already counted (a file that stays is counted once)


class ProcessShare:
    """The directory shared by the owner and its forked children (see module docstring)."""

    def __init__(self, directory: str, owner_pid: int) -> None:
        self.directory = directory
        self.owner_pid = owner_pid
        self._archive: dict[str, Family] = {}
        # Last success and failure streak per series (core/streaks.py): this process's own
        # (``outcomes``, set by the agent) go in its snapshot; dead children's are folded here.
        self.outcomes: Callable[[], list[list[Any]]] | None = None
        self._streaks: dict[streaks.Key, streaks.State] = {}
        self._lock = threading.Lock()
        self.lazy = False  # in a child: runs mark the snapshot stale, the watchdog writes it
        self.dirty = False  # in a lazy child: something was counted since the last snapshot
        self.last_flush = 0.0  # monotonic time of this child's last snapshot
        self._written_at: dict[int, float] = {}  # dead children folded in: their last "at"
        # bad files already counted: name -> what identifies that version of the file
        self._bad: dict[str, tuple[int, ...]] = {}
        os.makedirs(directory, mode=0o700, exist_ok=True)
        try:
            st = os.stat(directory)
            if st.st_uid != os.geteuid() or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
                logger.warning(
                    "otel-jobs: the multiprocess directory %s can be written by other users "
                    "(its owner is uid %s, its mode %o); otel-jobs reads only regular files of its "
                    "own user there, but another user can still delete or replace them. Use a "
                    "directory of mode 0700 owned by the worker's user.",
                    directory,
                    st.st_uid,
                    stat.S_IMODE(st.st_mode),
                )
        except OSError:
            pass

    @property
    def in_child(self) -> bool:
        return os.getpid() != self.owner_pid

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._archive = {}
        self._streaks = {}
        self.lazy = self.dirty = False
        self.last_flush = 0.0
        self._written_at = {}
        self._bad = {}

    # --- files of the directory, for otel-jobs and its integrations (see module docstring) ---

    def path(self, name: str) -> str:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"not a file name of the multiprocess directory: {name!r}")
        return os.path.join(self.directory, name)

    def read(self, name: str, limit: int = MAX_FILE_BYTES) -> bytes | None:
        """The content of file ``name`` (None: there is none, or it fails a check, counted)."""
        path = self.path(name)
        try:
            return read_private(path, limit)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._reject(name, exc)
            return None

    def write(self, name: str, data: bytes) -> None:
        """Replace file ``name`` atomically with ``data`` (mode 0600, symlinks not followed)."""
        write_private(self.path(name), data)

    def touch(self, name: str) -> None:
        """Make sure file ``name`` exists (an empty marker), created as :meth:`write` does."""
        path = self.path(name)
        try:
            create_private(path)
        except FileExistsError:
            if not self.exists(name):  # someone else's, or not a file: put ours in its place
                write_private(path, b"")

    def exists(self, name: str) -> bool:
        """Whether file ``name`` exists as a regular file of this user (others are counted)."""
        try:
            st = os.lstat(self.path(name))
        except FileNotFoundError:
            return False
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
            return True
        self._reject(name, UnsafeFileError(f"{self.path(name)} is not a regular file of this user"))
        return False

    def remove(self, name: str | None = None) -> None:
        """Remove file ``name`` if there is one; without a name, every child's snapshot. What
        cannot be removed (a directory planted there, another user's file in a sticky
        directory) is left, counted as a bad file."""
        if name is not None:
            try:
                os.unlink(self.path(name))
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._reject(name, exc)
            return
        for _pid, path in list(self.children()):
            try:
                os.unlink(path)
            except OSError:
                pass

    def names(self) -> list[str]:
        """The names in the directory ([] if it is gone)."""
        try:
            return os.listdir(self.directory)
        except FileNotFoundError:
            return []

    def _identity(self, name: str) -> tuple[int, ...]:
        try:
            st = os.lstat(self.path(name))
        except OSError:
            return ()
        return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_uid, st.st_mode)

    def _reject(self, name: str, exc: Exception) -> None:
        """Skip a bad file: counted (``multiprocess.read``) once per version of it, logged once."""
        identity = self._identity(name)
        if self._bad.get(name) == identity:
            return
        if len(self._bad) >= _BAD_MEMORY:
            self._bad.pop(next(iter(self._bad)))
        self._bad[name] = identity
        errors.record("multiprocess.read", exc)

    def _known_bad(self, name: str) -> bool:
        return name in self._bad and self._bad[name] == self._identity(name)

    # --- snapshots -----------------------------------------------------------------------------

    def flush_or_mark_stale(self, registry: CollectorRegistry) -> None:
        """A run started or ended in this (child) process: write the snapshot now, or, in a
        lazy child, mark it stale for the watchdog's next tick."""
        if self.lazy:
            self.dirty = True
        else:
            self.flush(registry)

    def snapshot_due(self) -> bool:
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
            snapshot = {"pid": pid, "at": at, "families": serialise(registry)}
            if self.outcomes is not None:
                snapshot["streaks"] = self.outcomes()
            data = json.dumps(snapshot, separators=(",", ":"))
            encoded = data.encode("utf-8")
            if len(encoded) > MAX_FILE_BYTES:  # the owner would skip it: say why, here
                raise ValueError(
                    f"otel-jobs: the metrics snapshot of process {pid} has {len(encoded)} bytes, "
                    f"more than the {MAX_FILE_BYTES} the endpoint reads; lower max_job_names"
                )
            self.write(f"{pid}.json", encoded)
            self.last_flush = time.monotonic()

    def _snapshot(
        self, pid: int
    ) -> tuple[float | None, list[dict[str, Any]], dict[streaks.Key, streaks.State]] | None:
        """The checked snapshot of child ``pid``: its time, families and outcome states (None:
        none, or a bad one, counted)."""
        name = f"{pid}.json"
        if self._known_bad(name):
            return None
        data = self.read(name)
        if data is None:
            return None
        try:
            snapshot = parse(data)
            at, families = checked_snapshot(snapshot, pid)
            states = streaks.decode(snapshot.get("streaks", []), clean_label)
            return at, families, states
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            self._reject(name, exc)
            return None

    def fold(self, registry: CollectorRegistry) -> None:
        """Keep the counters and histograms of ``registry`` with the dead children's (the
        archive): what a child that is gone counted nowhere, counted for it by its parent (the
        start of an RQ work horse's run, killed before it left a snapshot)."""
        families = serialise(registry)
        with self._lock:
            merge_into(self._archive, families, counters_only=True)

    def written_at(self, pid: int) -> float | None:
        """The Unix time child ``pid`` took its last snapshot (None: it left none).

        The owner asks when it records the end of a run the child did not finish: a run that
        started after that time is not counted in the snapshot."""
        with self._lock:
            if not os.path.lexists(self.path(f"{pid}.json")):
                return self._written_at.get(pid)
            snapshot = self._snapshot(pid)
        return snapshot[0] if snapshot is not None else None

    def no_child_snapshots(self) -> bool:
        """True when no forked child has left metrics (nothing to merge into the owner's)."""
        try:
            return not self._archive and all(
                pid == self.owner_pid or self._known_bad(os.path.basename(path))
                for pid, path in self.children()
            )
        except Exception:
            return False

    def children(self) -> Iterator[tuple[int, str]]:
        for name in self.names():
            stem, dot, ext = name.partition(".")
            pid = pid_named(stem) if ext == "json" else None
            if pid is not None:
                yield pid, os.path.join(self.directory, name)

    def merged(self, local: CollectorRegistry) -> dict[str, Family]:
        """The owner's families merged with every child's (dead children folded into the archive)."""
        merged: dict[str, Family] = {}
        merge_into(merged, serialise(local))
        views: dict[streaks.Key, list[streaks.State]] = {}
        for key, state in (
            streaks.decode(self.outcomes(), str) if self.outcomes is not None else {}
        ).items():
            views.setdefault(key, []).append(state)
        with self._lock:
            for pid, path in sorted(self.children()):
                if pid == self.owner_pid:
                    continue
                snapshot = self._snapshot(pid)
                if snapshot is None:
                    continue  # a bad file: never merged, never folded, and left where it is
                at, families, states = snapshot
                if pid_alive(pid):
                    merge_into(merged, families)
                    for key, state in states.items():
                        views.setdefault(key, []).append(state)
                    continue
                merge_into(self._archive, families, counters_only=True)
                for key, state in states.items():  # its last success and streak stay
                    kept = self._streaks.get(key)
                    self._streaks[key] = state if kept is None else streaks.merge([kept, state])
                if at is not None:
                    if len(self._written_at) >= _WRITTEN_AT_MEMORY:
                        self._written_at.pop(next(iter(self._written_at)))
                    self._written_at[pid] = at
                try:
                    os.unlink(path)
                except OSError:
                    pass
            self._remove_dead_writers_files()
            archive = [
                {"name": f["name"], "type": f["type"], "help": f["help"],
                 "samples": [[k[0], dict(k[1]), v] for k, v in f["samples"].items()]}
                for f in self._archive.values()
            ]  # fmt: skip
            for key, state in self._streaks.items():
                views.setdefault(key, []).append(state)
        merge_into(merged, archive)
        streaks.apply(merged, views)
        return merged

    def _remove_dead_writers_files(self) -> None:
        # A child killed while writing leaves its unfinished "<pid>.json.<random>.tmp".
        for name in self.names():
            stem, _, rest = name.partition(".")
            pid = pid_named(stem)
            if pid is not None and rest.startswith("json.") and rest.endswith(".tmp"):
                if not pid_alive(pid) and self.exists(name):
                    self.remove(name)


class MergedCollector:
    """A prometheus-client collector serving the owner's and its children's samples as one."""

    def __init__(self, share: ProcessShare, local: CollectorRegistry) -> None:
        self._share = share
        self._local = local

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        share = self._share
        if share.no_child_snapshots():
            # No forked child has left metrics: serve the owner's families as they are (minus the
            # creation timestamps, as merging does), without the copy, sort and rebuild of a
            # merge, which doubles the cost of a scrape (bench/bench_scrape.py).
            for family in each_collected(self._local):
                if family.type in ("counter", "histogram", "summary"):
                    family.samples = [s for s in family.samples if not s.name.endswith("_created")]
                clean_samples(family)
                yield family
            return
        try:
            merged = share.merged(self._local)
        except Exception as exc:
            errors.record("multiprocess.merge", exc)
            for family in each_collected(self._local):
                clean_samples(family)
                yield family
            return
        for fam in merged.values():
            name = fam["name"]
            metric = Metric(name, fam["help"], fam["type"])
            for (sample_name, labels), value in fam["samples"].items():
                metric.add_sample(sample_name, dict(labels), value)
            clean_samples(metric)
            yield metric

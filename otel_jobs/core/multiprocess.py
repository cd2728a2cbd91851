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
integrations included:

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

import fcntl
import json
import logging
import math
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString

from . import _prometheus_internals as _pc
from . import errors, streaks
from .labels import MAX_LABEL_CHARS, needs_cleaning, utf8
from .labels import clean as clean_label

logger = logging.getLogger("otel_jobs")

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
_BAD_MEMORY = 1024  # bad files already counted (a file that stays is counted once)

#: The largest file read from the directory; a bigger one is skipped, not read at every
#: scrape. A pool child's snapshot with 1,000 task names that each succeeded, failed and timed
#: out is about 12 MB (30 MB with 200-character names).
MAX_FILE_BYTES = 64 * 1024 * 1024

_PRIVATE_PREFIX = "otel-jobs-"
_LOCK_NAME = "owner.lock"
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = {"counter", "gauge", "histogram", "summary", "gaugehistogram", "unknown", "info",
          "stateset"}  # fmt: skip
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


class UnsafeFileError(OSError):
    """A file of the shared directory that otel-jobs refuses to read or write (see above)."""


def _open_private(path: str) -> tuple[int, os.stat_result]:
    """An fd for reading ``path`` and its status, or :class:`UnsafeFileError` (fd closed)."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the last component is a symlink (O_NOFOLLOW)
            raise UnsafeFileError(f"{path} is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(f"{path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise UnsafeFileError(
                f"{path} is owned by uid {st.st_uid}, not by this process's user ({os.geteuid()})"
            )
        return fd, st
    except BaseException:
        os.close(fd)
        raise


def read_private(path: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The content of ``path`` if it is a regular file of this user, at most ``limit`` bytes.

    Raises :class:`UnsafeFileError` otherwise (a symlink, a FIFO, a device, another user's
    file, a file too large), ``FileNotFoundError`` if there is none.
    """
    fd, st = _open_private(path)
    try:
        if st.st_size > limit:
            raise UnsafeFileError(f"{path} has {st.st_size} bytes, more than {limit}")
        chunks = []
        size = 0
        while size <= limit:  # the file may grow while it is read
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise UnsafeFileError(f"{path} has more than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_private(path: str, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, in a new file of mode 0600.

    The new file is created under a random name with ``O_CREAT|O_EXCL|O_NOFOLLOW`` (nothing
    planted there is opened or followed) and renamed over ``path`` (a symlink at ``path`` is
    replaced, not followed).
    """
    tmp = f"{path}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, _CREATE_FLAGS, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def checked_snapshot(snapshot: Any, pid: int) -> tuple[float | None, list[dict[str, Any]]]:
    """``(at, families)`` of a child's snapshot, after checking every field's type.

    Raises ``ValueError`` naming the first field that is not what a snapshot holds. Label
    values are cleaned (valid UTF-8, at most 200 characters) in place.
    """
    if not isinstance(snapshot, dict):
        raise ValueError(f"snapshot of {pid}: not an object")
    if snapshot.get("pid", pid) != pid:
        raise ValueError(f"snapshot of {pid}: pid {snapshot.get('pid')!r}")
    at = snapshot.get("at")
    if at is not None and not (_number(at) and math.isfinite(at)):
        raise ValueError(f"snapshot of {pid}: at={at!r}")
    families = snapshot.get("families")
    if not isinstance(families, list):
        raise ValueError(f"snapshot of {pid}: families={type(families).__name__}")
    names_ok: set[str] = set()
    for fam in families:
        if not (
            isinstance(fam, dict)
            and isinstance(fam.get("name"), str)
            and _NAME.match(fam["name"])
            and fam.get("type") in _KINDS
            and isinstance(fam.get("help"), str)
            and isinstance(fam.get("samples"), list)
        ):
            raise ValueError(f"snapshot of {pid}: a family is not name/type/help/samples")
        for sample in fam["samples"]:
            if not (isinstance(sample, list) and len(sample) == 3):
                raise ValueError(f"snapshot of {pid}: a sample of {fam['name']}")
            name, labels, value = sample
            if not _number(value) or not isinstance(labels, dict):
                raise ValueError(f"snapshot of {pid}: a sample of {fam['name']}")
            if name not in names_ok:
                if not (isinstance(name, str) and _NAME.match(name)):
                    raise ValueError(f"snapshot of {pid}: a sample name of {fam['name']}")
                names_ok.add(name)
            for key, label in labels.items():
                if key not in names_ok:
                    if not _LABEL_NAME.match(key):
                        raise ValueError(f"snapshot of {pid}: a label name of {fam['name']}")
                    names_ok.add(key)
                if not isinstance(label, str):
                    raise ValueError(f"snapshot of {pid}: a label value of {fam['name']}")
                if needs_cleaning(label):
                    labels[key] = clean_label(label)
    return (float(at) if at is not None else None), families


def _lock_is_free(path: str) -> bool:
    """Whether nobody holds the owner lock at ``path`` (its owner and children are gone)."""
    try:
        fd, _st = _open_private(path)
    except OSError:
        return False  # none yet (a directory being made), or not ours: leave it alone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # also releases the lock taken
    return True


def remove_stale_private_directories(parent: str | None = None) -> int:
    """Remove the private directories (``otel-jobs-*``) left in ``parent`` by dead owners.

    A directory is removed only if it is this user's, is not a symlink, and holds an owner
    lock that nobody holds any more. Returns how many were removed.
    """
    parent = parent or tempfile.gettempdir()
    removed = 0
    uid = os.geteuid()
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(_PRIVATE_PREFIX):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            continue
        if _lock_is_free(os.path.join(entry.path, _LOCK_NAME)):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
    return removed


_held_locks: dict[str, int] = {}  # private directory -> fd of its owner lock
_held_lock = threading.Lock()


def private_directory() -> str:
    """A new private directory (mode 0700) for this owner, after removing stale ones.

    The owner lock inside is held through an fd that forked children inherit, so the
    directory stays in use until the owner and all its children have ended.
    """
    with _held_lock:
        for directory, fd in list(_held_locks.items()):
            if not os.path.isdir(directory):  # removed by its owner's stop(): let go
                os.close(fd)
                del _held_locks[directory]
    with errors.guard("multiprocess.cleanup"):
        remove_stale_private_directories()
    directory = tempfile.mkdtemp(prefix=_PRIVATE_PREFIX)
    # Locked before it gets its name: the lock is never seen free while its owner lives.
    tmp = os.path.join(directory, f".{_LOCK_NAME}.tmp")
    fd = os.open(tmp, _CREATE_FLAGS, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, os.path.join(directory, _LOCK_NAME))
    except BaseException:
        os.close(fd)
        raise
    with _held_lock:
        _held_locks[directory] = fd
    return directory


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
    much (a pool child with 50 task names: 9 ms against 2.5 ms). That reads private fields
    (:mod:`otel_jobs.core._prometheus_internals`), as :mod:`otel_jobs.core.textformat` does; if
    one fails, the error is counted (``multiprocess.serialise``) and prometheus-client's
    ``collect()`` is used instead.
    """
    if _pc.direct_reads():
        try:
            return _read_directly(registry)
        except Exception as exc:
            errors.record("multiprocess.serialise", exc)
    return _collected(registry)


def _read_directly(registry: CollectorRegistry) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for collector in _pc.collectors(registry):
        kind = _pc.labelled_kind(collector)
        if kind not in ("counter", "histogram"):
            try:
                out.extend(_families_of(collector.collect()))
            except Exception as exc:  # one collector that fails leaves the others in
                errors.record("collect", exc)
            continue
        name, help_text, labelnames = _pc.family(collector)
        children = _pc.label_children(collector)
        samples: list[list[Any]] = []
        if kind == "counter":
            total, value = name + "_total", _pc.counter_value
            for values, child in children:
                samples.append([total, dict(zip(labelnames, values, strict=True)), value(child)])
        else:
            bounds: list[str] | None = None
            bucket, count, total = name + "_bucket", name + "_count", name + "_sum"
            for values, child in children:
                if bounds is None:
                    bounds = [floatToGoString(b) for b in _pc.histogram_bounds(child)]
                labels = dict(zip(labelnames, values, strict=True))
                child_sum, *counts = _pc.histogram_values(child)
                cumulative = 0.0
                for le, counted in zip(bounds, counts, strict=True):
                    cumulative += counted
                    samples.append([bucket, {**labels, "le": le}, cumulative])
                samples.append([count, labels, cumulative])
                samples.append([total, labels, child_sum])
        out.append({"name": name, "type": kind, "help": help_text, "samples": samples})
    return out


def _collected(registry: CollectorRegistry) -> list[dict[str, Any]]:
    return list(_families_of(_each_collected(registry)))


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
            if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
                logger.warning(
                    "otel-jobs: the multiprocess directory %s can be written by other users; "
                    "otel-jobs reads only regular files of its own user there, but another user "
                    "can still delete or replace them. Use a directory of mode 0700.",
                    directory,
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
            os.close(os.open(path, _CREATE_FLAGS, 0o600))
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
        """Remove file ``name`` if there is one; without a name, every child's snapshot."""
        if name is not None:
            try:
                os.unlink(self.path(name))
            except FileNotFoundError:
                pass
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
            snapshot = {"pid": pid, "at": at, "families": _serialise(registry)}
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
            snapshot = json.loads(data)
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
        families = _serialise(registry)
        with self._lock:
            _merge_into(self._archive, families, counters_only=True)

    def written_at(self, pid: int) -> float | None:
        """The Unix time child ``pid`` took its last snapshot (None: it left none).

        The owner asks when it records the end of a run the child did not finish: a run that
        started after that time is not counted in the snapshot."""
        with self._lock:
            if not os.path.lexists(self.path(f"{pid}.json")):
                return self._written_at.get(pid)
            snapshot = self._snapshot(pid)
        return snapshot[0] if snapshot is not None else None

    def alone(self) -> bool:
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
            if ext == "json" and stem.isdigit():
                yield int(stem), os.path.join(self.directory, name)

    def merged(self, local: CollectorRegistry) -> dict[str, Family]:
        """The owner's families merged with every child's (dead children folded into the archive)."""
        merged: dict[str, Family] = {}
        _merge_into(merged, _serialise(local))
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
                    _merge_into(merged, families)
                    for key, state in states.items():
                        views.setdefault(key, []).append(state)
                    continue
                _merge_into(self._archive, families, counters_only=True)
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
        _merge_into(merged, archive)
        streaks.apply(merged, views)
        return merged

    def _remove_dead_writers_files(self) -> None:
        # A child killed while writing leaves its unfinished "<pid>.json.<random>.tmp".
        for name in self.names():
            stem, _, rest = name.partition(".")
            if stem.isdigit() and rest.startswith("json.") and rest.endswith(".tmp"):
                if not pid_alive(int(stem)) and self.exists(name):
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
        if share.alone():
            # No forked child has left metrics: serve the owner's families as they are (minus the
            # creation timestamps, as merging does), without the copy, sort and rebuild of a
            # merge, which doubles the cost of a scrape (bench/bench_scrape.py).
            for family in _each_collected(self._local):
                if family.type in ("counter", "histogram", "summary"):
                    family.samples = [s for s in family.samples if not s.name.endswith("_created")]
                _clean_samples(family)
                yield family
            return
        try:
            merged = share.merged(self._local)
        except Exception as exc:
            errors.record("multiprocess.merge", exc)
            for family in _each_collected(self._local):
                _clean_samples(family)
                yield family
            return
        for fam in merged.values():
            name = fam["name"]
            metric = Metric(name, fam["help"], fam["type"])
            for (sample_name, labels), value in fam["samples"].items():
                metric.add_sample(sample_name, dict(labels), value)
            _clean_samples(metric)
            yield metric


def _each_collected(registry: CollectorRegistry) -> Iterator[Metric]:
    """The families of ``registry``, collector by collector: one that raises is left out
    (counted under ``collect``), the others are served."""
    try:
        collectors = _pc.collectors(registry)
    except AttributeError:  # another prometheus-client: all or nothing, as it collects
        yield from registry.collect()
        return
    for collector in collectors:
        try:
            families = list(collector.collect())
        except Exception as exc:
            errors.record("collect", exc)
            continue
        yield from families


def _clean_samples(family: Metric) -> None:
    """Clean the label values (and help) of ``family`` that prometheus-client could not write.

    Label values otel-jobs records are cleaned once, as they become labels, and a child's
    snapshot is cleaned as it is read; this is the last guard, on the path prometheus-client
    writes, against one value (from another collector of the registry) failing the scrape.
    """
    family.documentation = utf8(family.documentation)
    samples = family.samples
    for i, sample in enumerate(samples):
        labels = sample.labels
        for value in labels.values():
            # Inline, not any(): this runs for every sample of a scrape on this path.
            if len(value) > MAX_LABEL_CHARS or (not value.isascii() and needs_cleaning(value)):
                samples[i] = sample._replace(labels={k: clean_label(v) for k, v in labels.items()})
                break

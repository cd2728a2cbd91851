"""Leases: each worker process lists its runs in flight in Redis, renewed by its watchdog, so that
another process (``otel-jobs monitor``) can tell a run lost with its worker from one still running.

Where (the broker's own Redis, as the framework integration offers it, unless ``lease_url``):

* ``otel_jobs:leases``: a sorted set, one member per process with runs in flight (its lease id,
  ``host:pid:start``), scored by the lease's expiry in milliseconds *on the Redis server's
  clock* (``TIME`` inside the script), so that no two hosts' clocks are ever compared;
* ``otel_jobs:lease:<id>``: a hash: ``worker`` (host, pid, TTL) and one field ``run:<key>`` per
  run in flight (JSON: framework, job id, name, queue, attempt, start, and the checkpoint: the
  last ``heartbeat(progress, **details)`` and when it was written; for a framework whose broker
  forgets a message once it is delivered, what putting it back takes). Kept
  :data:`KEEP_SECONDS` after its last renewal, for a monitor to find what a dead process had;
* ``otel_jobs:attempt:<framework>:<job id>``: written by the monitor when it counts a run lost
  (its checkpoint, worker, how many times the job was lost), read by
  :attr:`otel_jobs.Run.previous_attempt`.

What it costs, and must never cost more:

* On the job's path, a dict store and a clock read when an integration tracks a run
  (:meth:`LeaseKeeper.track`) and a set lookup when a run ends (:meth:`LeaseKeeper.ended`); no
  I/O, no serialization. ``track`` also wakes the lease thread, at most once per watchdog
  interval, so that a run starting in a process whose lease was not written in the last
  interval is in the lease one round trip after its start, not at the next tick.
* The watchdog's tick (:meth:`LeaseKeeper.tick`) compares the runs in flight with those last
  written and wakes the lease thread only when that set changed or the lease is due for renewal
  (every third of the TTL; the checkpoints are written then, so a checkpoint is at most a third
  of the TTL old). The thread writes at most once per watchdog interval (one script, one round
  trip), however many runs start and end; a process with nothing in flight and nothing to take
  back writes nothing. ``bench/bench_lease.py`` measures the cost per run and per tick.
* The lease thread does the I/O with one-second socket timeouts. Redis unreachable is logged once
  (and once when it answers again) and retried at the next tick; it never blocks the watchdog or
  a job. A bug here is an internal error (``otel_jobs_internal_errors_total{component="lease"}``).

What a run knows of its job's lost attempts (``previous_attempt``, redeliveries) is
:mod:`.lease_attempts`, a base class of :class:`LeaseKeeper`; what a lease holds in Redis is
:mod:`.lease_records`.

What a lease can and cannot tell (a run killed within a tick of its start, a worker alive but
cut off from Redis for longer than the TTL, redeliveries the broker does not mark) is told to
users in the docs on lost runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import errors
from .lease_attempts import LeaseAttempts, redis_errors
from .lease_records import (
    KEEP_SECONDS,
    KEY_ATTEMPT,
    KEY_LEASE,
    KEY_LEASES,
    MAX_CHECKPOINT_BYTES,
    MAX_REQUEUE_BYTES,
    REDELIVERY_CHECK,
    RELEASE_TIMEOUT,
    REQUEUE_MARK,
    RUN_FIELD,
    SOCKET_TIMEOUT,
    WORKER_FIELD,
    PreviousAttempt,
    bounded_extra,
    checkpoint,
    describe,
    redis_client,
    run_entry,
)

if TYPE_CHECKING:
    import redis

    from .agent import Agent
    from .run import Run

logger = logging.getLogger("otel_jobs")

# The records' names stay importable from here (they live in core/lease_records.py).
__all__ = [
    "KEEP_SECONDS",
    "KEY_ATTEMPT",
    "KEY_LEASE",
    "KEY_LEASES",
    "MAX_CHECKPOINT_BYTES",
    "MAX_REQUEUE_BYTES",
    "REDELIVERY_CHECK",
    "RELEASE_TIMEOUT",
    "REQUEUE_MARK",
    "RUN_FIELD",
    "SOCKET_TIMEOUT",
    "WORKER_FIELD",
    "LeaseKeeper",
    "PreviousAttempt",
    "checkpoint",
    "describe",
    "redis_client",
]

# KEYS: the set of leases, this lease's hash, then attempt records to read. ARGV: lease id, TTL
# (ms), seconds kept, then field/value pairs. No pairs: the lease is taken back. Returns the
# Redis time (ms), whether the lease had expired before this renewal (a monitor may have counted
# its runs lost), and the attempt records asked for.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local before = redis.call('ZSCORE', KEYS[1], ARGV[1])
local expired = 0
if before and tonumber(before) < now then expired = 1 end
redis.call('DEL', KEYS[2])
if #ARGV > 3 then
  for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]) * 1000)
local attempts = {}
if #KEYS > 2 then attempts = redis.call('MGET', unpack(KEYS, 3)) end
return {now, expired, attempts}
"""

#: What an integration gives :meth:`LeaseKeeper.track`: where its broker's Redis is (a URL, or
#: a redis-py ``ConnectionPool`` whose address and credentials to use), or None.
Source = Callable[[], Any]
#: ... and the entry's extra fields, computed on the lease thread once per run (JSON-able).
Extra = Callable[[], Mapping[str, Any]]


class LeaseKeeper(LeaseAttempts):
    """This process's lease (see the module docstring). One per agent, rebuilt in a forked child."""

    def __init__(self, agent: Agent) -> None:
        settings = agent.settings
        self.agent = agent
        self.enabled = settings.lease
        self.url = settings.lease_url
        self.ttl = settings.lease_ttl
        self.interval = settings.watchdog_interval
        #: Redis round trips made (lease writes and releases): the bench's figure.
        self.writes = 0
        self._reset()

    def _reset(self) -> None:
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.id = f"{self.host}:{self.pid}:{time.time_ns():x}"
        self._tracked: dict[int, tuple[Source | None, Extra | None]] = {}
        self._given: dict[int, PreviousAttempt | None] = {}
        self._stale: set[int] = set()
        self._entries: dict[int, tuple[Any, str]] = {}  # run key -> (signature, JSON)
        self._extras: dict[int, dict[str, Any]] = {}
        #: Run keys in the lease as last written.
        self.written: frozenset[int] = frozenset()
        self._last: tuple[Any, ...] = ()
        self._renewed = -math.inf
        self._written_at = -math.inf
        self._nudge_after = -math.inf
        self._wake = threading.Event()
        self._io = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._client: redis.Redis | None = None
        self._source: Any = self.url
        self._down = False
        self._said_no_source = False
        self._said_expired = False

    # --- on the job's path ----------------------------------------------------------------

    def track(self, run: Run, source: Source | None = None, extra: Extra | None = None) -> None:
        """Called by an integration as ``run`` starts: where its broker's Redis is, and what the
        run's entry adds (both called later, on the lease thread). A dict store; and, at most
        once per watchdog interval, the lease thread woken to write the run now rather than at
        the next tick (a run killed right after its start is then in the lease already)."""
        if self.enabled:
            self._tracked[run.key] = (source, extra)
            now = time.monotonic()
            if now >= self._nudge_after:
                self._nudge_after = now + self.interval
                self._wake.set()  # the thread, once started, writes at once if none is due

    def ended(self, run: Run) -> None:
        """Called as ``run`` finishes: if the lease lists it, have it taken out now. What was
        tracked for it goes now, not at the next ticks: its closures hold the run, its span and
        the framework's request, which kept about 24 objects per run for the cyclic GC to walk
        until then (Celery, in process: 35 GC passes per 1,000 tasks instead of none, +35 us
        per task; bench/bench_celery.py)."""
        key = run.key
        self._tracked.pop(key, None)
        self._given.pop(key, None)
        if key in self.written:
            self._wake.set()

    # --- the watchdog's tick --------------------------------------------------------------

    def tick(self) -> None:
        """Wake the lease thread if the lease must change or be renewed (no I/O here)."""
        runs = self.agent.runs()
        keys = tuple(r.key for r in runs)
        if len(self._tracked) > len(runs) or len(self._given) > len(runs) or self._stale:
            # Forgotten once not in flight at two ticks in a row: a run tracked just after
            # this tick's look at the table is in flight at the next one.
            live = set(keys)
            stale = {k for k in (*self._tracked, *self._given) if k not in live}
            for key in stale & self._stale:
                self._tracked.pop(key, None)
                self._given.pop(key, None)
            self._stale = stale
        if not self.enabled:
            return
        now = time.monotonic()
        if keys != self._last or (runs and now - self._renewed >= self.ttl / 3):
            if self._thread is None or not self._thread.is_alive():
                self._start()
            self._wake.set()

    def _start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="otel-jobs-lease", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            if self._stopping:
                return
            # At most one write per watchdog interval: the runs that start and end meanwhile
            # are written together.
            gap = self._written_at + self.interval - time.monotonic()
            if gap > 0:
                time.sleep(gap)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self.write()
            except Exception as exc:
                errors.record("lease", exc)

    # --- the I/O ------------------------------------------------------------------------------

    def write(self, timeout: float | None = None) -> bool:
        """Write the lease as the runs in flight stand now (take it back if none); True if done.

        Called on the lease thread, and at exit or at the end of a forked child's run with a
        ``timeout`` (seconds to wait for a write in progress)."""
        if not self._io.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            return self._write()
        finally:
            self._io.release()

    def _write(self) -> bool:
        runs = self.agent.runs()
        keys = tuple(r.key for r in runs)
        if not runs and not self.written:
            self._last = keys
            return True
        client = self._connect(runs)
        if client is None:
            return False
        pairs: list[str] = []
        if runs:
            pairs += [WORKER_FIELD, self._worker_json()]
            for run in runs:
                pairs += [RUN_FIELD + str(run.key), self._entry(run)]
        checked = self._to_check(runs)
        try:
            answer: Any = client.eval(
                _RENEW,
                2 + len(checked),
                KEY_LEASES,
                KEY_LEASE + self.id,
                *[f"{KEY_ATTEMPT}{run.framework}:{run.job_id}" for run in checked],
                self.id,
                str(int(self.ttl * 1000)),
                str(KEEP_SECONDS),
                *pairs,
            )
            _, expired, attempts = answer
        except redis_errors() as exc:
            self.writes += 1
            self._written_at = time.monotonic()
            if not self._down:
                self._down = True
                logger.warning(
                    "otel-jobs: cannot write this process's lease to %s (%s: %s): a monitor "
                    "would count its runs lost after %gs; retrying at each watchdog tick",
                    describe(self._source),
                    type(exc).__name__,
                    exc,
                    self.ttl,
                )
            return False
        self.writes += 1
        self._written_at = time.monotonic()
        if self._down:
            self._down = False
            logger.warning(
                "otel-jobs: the lease's Redis at %s answers again", describe(self._source)
            )
        if expired and not self._said_expired:
            self._said_expired = True
            logger.warning(
                "otel-jobs: this process's lease had expired before it was renewed (more than "
                "%gs without renewal: a frozen process, or Redis out of reach); a monitor may "
                "have counted its runs lost (and requeued them with --requeue-lost)",
                self.ttl,
            )
        self._redelivered(checked, attempts)
        self.written = frozenset(keys)
        self._last = keys
        self._renewed = time.monotonic()
        live = set(self.written)
        for table in (self._entries, self._extras):
            for key in [k for k in table if k not in live]:
                table.pop(key, None)
        return True

    def _connect(self, runs: list[Run]) -> redis.Redis | None:
        if self._client is not None:
            return self._client
        source = self._source
        if source is None:
            for run in runs:
                found = self._tracked.get(run.key)
                if found is not None and found[0] is not None:
                    source = found[0]()
                    if source is not None:
                        break
        if source is None:
            if runs and not self._said_no_source:
                self._said_no_source = True
                logger.info(
                    "otel-jobs: no lease is kept for this process's runs: their broker is not a "
                    "Redis otel-jobs knows of; set OTEL_JOBS_LEASE_URL (a Redis) for "
                    "`otel-jobs monitor` to find runs lost with their worker"
                )
            return None
        self._source = source
        self._client = redis_client(source)
        return self._client

    def _worker_json(self) -> str:
        return json.dumps(
            {"host": self.host, "pid": self.pid, "ttl": self.ttl, "lease": self.id},
            separators=(",", ":"),
        )

    def _entry(self, run: Run) -> str:
        signature = (run.progress, run.details)
        cached = self._entries.get(run.key)
        if cached is not None and cached[0] == signature:
            return cached[1]
        extra = self._extras.get(run.key)
        if extra is None:
            extra = self._extras[run.key] = self._extra(run)
        text = run_entry(run, self.host, self.pid, extra)
        self._entries[run.key] = (signature, text)
        return text

    def _extra(self, run: Run) -> dict[str, Any]:
        tracked = self._tracked.get(run.key)
        if tracked is None or tracked[1] is None:
            return {}
        try:
            return bounded_extra(dict(tracked[1]()))
        except Exception as exc:
            errors.record("lease", exc)
            return {}

    # --- the end of a process -----------------------------------------------------------------

    def release(self, timeout: float = RELEASE_TIMEOUT) -> None:
        """Bring the lease up to date now (taken back if no run is in flight): at a graceful exit,
        and where a process ends by ``os._exit`` right after a run (an RQ work horse)."""
        if not self.enabled or (not self.written and not self.agent.runs()):
            return
        with errors.guard("lease"):
            self.write(timeout)

    def close(self) -> None:
        """Stop the lease thread and take the lease back (``uninstrument()``)."""
        self._stopping = True
        self._wake.set()
        self.release()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)
        if self._client is not None:
            try:
                self._client.connection_pool.disconnect()
            except Exception:
                pass

    def after_fork_in_child(self) -> None:
        """A forked child: a lease of its own (its parent's runs are not its to list)."""
        self._reset()

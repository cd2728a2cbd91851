"""Finding the runs lost with their worker, from the leases the workers keep in Redis.

Once per poll, for one framework (:attr:`Detector.framework`) on one Redis:

1. one script reads the Redis clock and the leases that expired before it
   (``otel_jobs:leases``, at most :data:`MAX_LEASES_PER_POLL`), and one pipeline their content
   (:mod:`otel_jobs.core.lease` says what a lease holds);
2. the framework is asked which of the runs listed are still unfinished (:meth:`unfinished`:
   RQ reads each job's status; a framework that cannot tell says all);
3. each unfinished run is *claimed* by one script (``SET NX`` on
   ``otel_jobs:lost:claim:<lease>:<run>``): the script also checks that the lease is still
   expired (a worker that renewed it meanwhile is alive), counts the job's losses
   (``otel_jobs:lost:count:<framework>:<job id>``), writes the attempt record its next run reads
   as ``previous_attempt`` and takes the run out of the lease (the lease itself once empty).
   Two monitors at once: one claim wins, the other does nothing with that run;
4. for each run claimed: ``otel_jobs_runs_lost_total`` +1, one span ``<job> lost`` (from the
   run's start to its lease's expiry) and one WARNING record, then the policy: nothing more by
   default; with ``requeue`` the run is put back on its queue (:meth:`requeue`,
   ``otel_jobs_runs_requeued_total`` +1) unless its broker redelivers it by itself (Celery's
   ``acks_late``: counted only), and a job lost more than ``max_lost`` times goes to its
   framework's failed place (:meth:`dead_letter`) instead. A run its broker hands out again by
   itself is counted only; with ``requeue`` its next delivery is told what the lost attempt
   reached and ``max_lost`` where the framework allows (:meth:`tell_next_delivery`: Dramatiq,
   whose worker then fails a job lost more than ``max_lost`` times into its dead-letter queue).

The run itself is :mod:`.runs`; the span and the log record, :mod:`.report`. A run finished
after all (step 2) is only taken out of the lease. Bounded: at most
:data:`MAX_RUNS_PER_POLL` runs are handled per poll (the rest at the next). Not read-only, unlike
the queue collectors: claims, lease clean-up and (asked for) requeues write to Redis; nothing is
written for a lease that has not expired.

A claimed run whose requeue fails (the broker went away between the claim and the publish) is
counted lost and logged, not requeued: the claim is not taken back, so that no run is ever put
back twice.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter

from ...core import errors
from ...core.config import OVERFLOW_VALUE
from ...core.labels import clean as clean_label
from ...core.lease import KEEP_SECONDS, KEY_ATTEMPT, KEY_LEASE, KEY_LEASES, RUN_FIELD, WORKER_FIELD
from .. import _redis
from ..base import BrokerUnavailable
from .report import log_lost, lost_span
from .runs import LostRun

__all__ = [
    "MAX_LEASES_PER_POLL",
    "MAX_RUNS_PER_POLL",
    "Detector",
    "LostRun",
    "logger",
    "lost_counters",
]

if TYPE_CHECKING:
    import redis

logger = logging.getLogger("otel_jobs.monitor")

MAX_LEASES_PER_POLL = 200
MAX_RUNS_PER_POLL = 100
#: Distinct ``job_name`` (and ``queue``) label values per framework before ``__overflow__``.
MAX_LABEL_VALUES = 1000
KEY_CLAIM = "otel_jobs:lost:claim:"
KEY_COUNT = "otel_jobs:lost:count:"

_EXPIRED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local found = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
return {now, found}
"""

# KEYS: leases, lease hash, claim, loss count, attempt record. ARGV: lease id, run field, seconds
# kept, attempt JSON, mode ("claim" or "drop"). Returns {won, losses}: won 1 (claimed: count it),
# 0 (another monitor's, or dropped), -1 (the lease was renewed: its worker is alive).
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) >= now then return {-1, 0} end
local won, losses = 0, 0
if ARGV[5] == 'claim' and redis.call('SET', KEYS[3], '1', 'NX', 'EX', tonumber(ARGV[3])) then
  won = 1
  losses = redis.call('INCR', KEYS[4])
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[3]))
  local attempt = cjson.decode(ARGV[4])
  attempt['lost'] = losses
  redis.call('SET', KEYS[5], cjson.encode(attempt), 'EX', tonumber(ARGV[3]))
end
redis.call('HDEL', KEYS[2], ARGV[2])
if redis.call('HLEN', KEYS[2]) <= 1 then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return {won, losses}
"""


class _Counters:
    """``otel_jobs_runs_lost_total`` and ``otel_jobs_runs_requeued_total``, once per registry."""

    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, _Counters] = (
        weakref.WeakKeyDictionary()
    )
    _lock = threading.Lock()

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["framework", "job_name", "queue"]
        self.lost = Counter(
            "otel_jobs_runs_lost",
            "Runs whose worker died before they finished (its lease expired), counted once.",
            labels,
            registry=registry,
        )
        self.requeued = Counter(
            "otel_jobs_runs_requeued",
            "Lost runs put back on their queue by the monitor (--requeue-lost).",
            labels,
            registry=registry,
        )

    @classmethod
    def of(cls, registry: CollectorRegistry) -> _Counters:
        with cls._lock:
            found = cls._by_registry.get(registry)
            if found is None:
                found = cls._by_registry[registry] = cls(registry)
            return found


def lost_counters(registry: CollectorRegistry) -> None:
    """Register ``otel_jobs_runs_lost_total`` and ``otel_jobs_runs_requeued_total`` (once)."""
    _Counters.of(registry)


class Detector:
    """The lost runs of one framework on one Redis; subclasses override the framework hooks."""

    framework: ClassVar[str] = "base"
    #: The framework's broker hands out again every run lost with its worker: count only.
    redelivers: ClassVar[bool] = False
    #: :meth:`requeue` and :meth:`dead_letter` exist for this framework.
    requeues: ClassVar[bool] = True

    def __init__(
        self,
        client: redis.Redis,
        *,
        requeue: bool = False,
        max_lost: int = 2,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.client = client
        self.where = _redis.address(client)
        self.requeue_lost = requeue
        self.max_lost = max_lost
        self.tracer = tracer or trace.get_tracer("otel_jobs.monitor")
        self.counters: _Counters | None = None
        self._names: set[str] = set()
        self._queues: set[str] = set()
        self._down = False

    # --- the monitor's calls ------------------------------------------------------------------

    def register(self, registry: CollectorRegistry) -> None:
        self.counters = _Counters.of(registry)

    def check(self) -> None:
        _redis.ping(self.client)

    def poll(self) -> None:
        """Find, claim and handle the lost runs of this framework (see the module docstring)."""
        try:
            self._poll()
        except BrokerUnavailable as exc:
            if not self._down:
                self._down = True
                logger.warning(
                    "otel-jobs monitor: cannot read the %s leases at %s (%s); lost runs are "
                    "found once it answers",
                    self.framework,
                    self.where,
                    exc,
                )
            return
        if self._down:
            self._down = False
            logger.warning(
                "otel-jobs monitor: the %s leases at %s answer again", self.framework, self.where
            )

    def abort(self) -> None:
        _redis.close(self.client)

    def close(self) -> None:
        _redis.close(self.client)

    # --- the framework's hooks ----------------------------------------------------------------

    def unfinished(self, runs: Sequence[LostRun]) -> list[bool]:
        """For each run, whether its job is still unfinished as the framework holds it."""
        return [True] * len(runs)

    def requeue(self, run: LostRun, attempt: Mapping[str, Any]) -> bool:
        """Put the job back on its queue (same id, arguments, attempt count); False: cannot."""
        return False

    def dead_letter(self, run: LostRun, attempt: Mapping[str, Any]) -> bool:
        """Move the job to the framework's failed place, outcome lost; False: there is none."""
        return False

    def tell_next_delivery(self, run: LostRun, attempt: Mapping[str, Any]) -> bool:
        """For a run its broker hands out again (with ``requeue``): have its next delivery know
        ``attempt`` (with ``max_lost``), so that its worker stops a job lost more than
        ``max_lost`` times; False: the framework's worker cannot be told."""
        return False

    # --- the work -------------------------------------------------------------------------------

    def _poll(self) -> None:
        now_ms, found = _redis_call(
            lambda: self.client.eval(_EXPIRED, 1, KEY_LEASES, str(MAX_LEASES_PER_POLL))
        )
        if not found:
            return
        leases = [(_redis.text(found[i]), float(found[i + 1])) for i in range(0, len(found), 2)]
        contents = _redis.read(self.client, [("hgetall", KEY_LEASE + lid) for lid, _ in leases])
        runs: list[LostRun] = []
        empty: list[tuple[str, str]] = []
        for (lease, expiry), content in zip(leases, contents, strict=True):
            fields = {_redis.text(k): v for k, v in (content or {}).items()}
            try:
                worker = json.loads(fields.get(WORKER_FIELD) or "{}")
            except ValueError:
                worker = {}
            listed = [name for name in fields if name.startswith(RUN_FIELD)]
            if not listed:
                empty.append((lease, ""))  # nothing in flight (or already handled): tidy it
            for name in listed:
                run = LostRun.parse(lease, name, fields[name], worker, expiry / 1000.0)
                if run is None:
                    empty.append((lease, name))
                elif run.framework == self.framework:
                    runs.append(run)
        for lease, name in empty:
            self._claim_script(lease, name, None, "drop")
        runs = runs[:MAX_RUNS_PER_POLL]
        if not runs:
            return
        for run, open_ in zip(runs, self.unfinished(runs), strict=True):
            if not open_:
                self._claim_script(run.lease, run.key, run, "drop")
                continue
            attempt = run.attempt_record()
            if self.requeue_lost:  # what the worker of a redelivered run compares with
                attempt["max_lost"] = self.max_lost
            won, losses = self._claim_script(run.lease, run.key, run, "claim", attempt)
            if won == 1:
                attempt["lost"] = losses
                with errors.guard(f"monitor.lost.{self.framework}"):
                    self._lost(run, attempt, int(losses), now_ms / 1000.0)

    def _claim_script(
        self,
        lease: str,
        name: str,
        run: LostRun | None,
        mode: str,
        attempt: Mapping[str, Any] | None = None,
    ) -> tuple[int, int]:
        framework = run.framework if run is not None else self.framework
        job = run.job_id if run is not None and run.job_id is not None else f"{lease}/{name}"
        won, losses = _redis_call(
            lambda: self.client.eval(
                _CLAIM,
                5,
                KEY_LEASES,
                KEY_LEASE + lease,
                f"{KEY_CLAIM}{lease}:{name}",
                f"{KEY_COUNT}{framework}:{job}",
                f"{KEY_ATTEMPT}{framework}:{job}",
                lease,
                name or WORKER_FIELD + ":none",
                str(KEEP_SECONDS),
                json.dumps(attempt or {}),
                mode,
            )
        )
        return int(won), int(losses)

    def _lost(self, run: LostRun, attempt: dict[str, Any], losses: int, now: float) -> None:
        job_name, queue = self._label(self._names, run.name), self._label(self._queues, run.queue)
        if self.counters is not None:
            self.counters.lost.labels(run.framework, job_name, queue).inc()
        if run.redelivers or self.redelivers:
            action = "broker_redelivers"
            if self.requeue_lost and self.tell_next_delivery(run, attempt):
                if losses > self.max_lost:
                    action = "dead_letter_on_redelivery"
        elif not self.requeue_lost or not self.requeues:
            action = "counted"
        elif losses > self.max_lost:
            action = "dead_lettered" if self.dead_letter(run, attempt) else "not_requeued"
        elif self.requeue(run, attempt):
            action = "requeued"
            if self.counters is not None:
                self.counters.requeued.labels(run.framework, job_name, queue).inc()
        else:
            action = "requeue_failed"
        lost_span(self.tracer, run, action, losses)
        log_lost(run, action, losses, now, self.requeues)

    def _label(self, seen: set[str], value: str) -> str:
        value = clean_label(value)
        if value in seen:
            return value
        if len(seen) >= MAX_LABEL_VALUES:
            return OVERFLOW_VALUE
        seen.add(value)
        return value


def _redis_call(call: Any) -> Any:
    try:
        return call()
    except _redis.ERRORS as exc:
        raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc

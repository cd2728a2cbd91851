"""What a run knows of its job's lost attempts: :attr:`otel_jobs.Run.previous_attempt` and the
runs a broker or a monitor handed out again (``otel_jobs_runs_redelivered_total``).

Part of this process's :class:`~otel_jobs.core.lease.LeaseKeeper` (a base class of it): the
attempt record ``otel_jobs:attempt:<framework>:<job id>`` that ``otel-jobs monitor`` writes when
it counts a run lost is known to a run

* without I/O, when its message carries it (:meth:`given`, :meth:`requeued`: a Celery header,
  RQ's ``job.meta``, a Dramatiq message option);
* in the round trip that first writes the run to the lease, for the frameworks whose broker
  hands a lost run out again unmarked (:data:`~otel_jobs.core.lease_records.REDELIVERY_CHECK`:
  :meth:`_to_check`, :meth:`_redelivered`);
* else by one ``GET`` when the run first reads ``previous_attempt`` (:meth:`previous_attempt`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from . import errors
from .lease_records import KEY_ATTEMPT, REDELIVERY_CHECK, PreviousAttempt, describe, redis_client

if TYPE_CHECKING:
    import redis

    from .agent import Agent
    from .run import Run

logger = logging.getLogger("otel_jobs")


class LeaseAttempts:
    """The previous attempts of the runs in flight (see the module docstring)."""

    agent: Agent
    enabled: bool
    written: frozenset[int]
    _given: dict[int, PreviousAttempt | None]
    _tracked: dict[int, tuple[Any, Any]]
    _client: redis.Redis | None
    _source: Any

    def given(self, run: Run, attempt: PreviousAttempt | None) -> None:
        """The previous attempt a requeued message carries (read at its start, no I/O)."""
        self._given[run.key] = attempt

    def requeued(self, run: Run, mark: object) -> bool:
        """``mark``: the :data:`REQUEUE_MARK` a job carries, if any. True when ``run`` is the run
        a monitor requeued (the same attempt number as the lost one; a later retry of the job
        keeps the mark but not the number); its previous attempt is then known without I/O."""
        if not mark or not isinstance(mark, (str, bytes)):
            return False
        attempt = PreviousAttempt.from_json(mark)
        if attempt is None:
            return False
        self._given[run.key] = attempt
        return attempt.attempt in (None, run.attempt)

    def _to_check(self, runs: list[Run]) -> list[Run]:
        """Runs not yet in the lease that a broker may have handed out again unmarked."""
        found = []
        for run in runs:
            offset = REDELIVERY_CHECK.get(run.framework)
            if (
                offset is not None
                and run.key not in self.written
                and run.key not in self._given
                and run.job_id is not None
                and run.attempt - offset >= 1
            ):
                found.append(run)
        return found

    def _redelivered(self, runs: list[Run], records: list[Any]) -> None:
        """Count the runs whose job's previous attempt, of the number expected, was lost."""
        for run, raw in zip(runs, records or [None] * len(runs), strict=False):
            if isinstance(raw, PreviousAttempt):
                attempt: PreviousAttempt | None = raw
            else:
                attempt = PreviousAttempt.from_json(raw) if raw else None
            offset = REDELIVERY_CHECK.get(run.framework)
            if attempt is None or offset is None:
                continue
            self._given.setdefault(run.key, attempt)
            if attempt.attempt == run.attempt - offset:
                with errors.guard("lease"):
                    self.agent.telemetry.record_redelivered(run.series)

    def previous_attempt(self, run: Run) -> PreviousAttempt | None:
        """The last lost attempt of ``run``'s job (see :attr:`otel_jobs.Run.previous_attempt`)."""
        key = run.key
        if key in self._given:
            return self._given[key]
        found: PreviousAttempt | None = None
        if self.enabled and run.job_id is not None:
            answered, raw = self._lookup(run)
            if not answered:
                return None  # asked again next time
            found = PreviousAttempt.from_json(raw) if raw else None
        self._given[key] = found
        if found is not None:
            self._redelivered([run], [found])
        return found

    def record(self, run: Run) -> str | bytes | None:
        """The attempt record of ``run``'s job as the monitor wrote it (JSON), or None: one
        ``GET``, for a run that its broker says it handed out again (Dramatiq on RabbitMQ)."""
        if not self.enabled or run.job_id is None:
            return None
        answered, raw = self._lookup(run)
        return raw if answered and isinstance(raw, (str, bytes)) else None

    def _lookup(self, run: Run) -> tuple[bool, Any]:
        client = self._client
        if client is None:
            tracked = self._tracked.get(run.key)
            source = self._source
            if source is None and tracked is not None and tracked[0] is not None:
                with errors.guard("lease"):
                    source = tracked[0]()
            if source is None:
                return True, None
            client = self._client = redis_client(source)
            self._source = source
        try:
            raw: Any = client.get(f"{KEY_ATTEMPT}{run.framework}:{run.job_id}")
        except redis_errors() as exc:
            logger.warning(
                "otel-jobs: previous_attempt of run %s of %s unknown: its lease's Redis at %s "
                "did not answer (%s)",
                run.job_id,
                run.name,
                describe(self._source),
                exc,
            )
            return False, None
        return True, raw


def redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.exceptions.RedisError, OSError)

"""RQ: a run is lost when its lease expired and RQ still holds its job as started.

RQ's own registries say that a job started (``StartedJobRegistry``) and that its worker
renews it (the registry's score, the worker key's TTL), but RQ renews them every
``job_monitoring_interval`` (30 s) for ``+60`` s, and cleans up abandoned jobs only at its next
maintenance: minutes. The lease is the detection (its TTL plus one poll); the job's
``status`` is the check that the run did not finish after all (``started``: lost; ``finished``,
``failed``...: it ended just before its horse died).

Requeue: the job leaves the started registry (RQ 3 keeps ``<job id>:<execution id>`` there,
earlier versions the id), carries its previous attempt in ``job.meta`` and goes back on its
queue through ``Queue.enqueue_job`` (same id, arguments and ``number_of_retries``). Failed
place: the ``FailedJobRegistry``, with an ``exc_info`` saying it was lost. Both read and write
jobs with RQ's default (pickle) serializer and ``Job`` class.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry

from ...core.lease import REQUEUE_MARK
from .. import _redis
from .detector import Detector, LostRun, logger


class RQDetector(Detector):
    framework = "rq"

    def unfinished(self, runs: Sequence[LostRun]) -> list[bool]:
        statuses = _redis.read(
            self.client,
            [("hget", Job.key_for(r.job_id or ""), "status") for r in runs],
        )
        return [_redis.text(s) == JobStatus.STARTED.value if s else False for s in statuses]

    def _job(self, run: LostRun, attempt: Mapping[str, Any]) -> Job | None:
        try:
            job = Job.fetch(run.job_id or "", connection=self.client)
        except Exception as exc:  # NoSuchJobError, a job RQ cannot read back
            logger.warning(
                "otel-jobs monitor: RQ job %s (lost) cannot be read back (%s: %s)",
                run.job_id,
                type(exc).__name__,
                exc,
            )
            return None
        registry = StartedJobRegistry(job.origin, connection=self.client)
        entries = [
            entry
            for entry in self.client.zscan_iter(registry.key, match=f"{job.id}*")
            if _redis.text(entry[0]) in (job.id,) or _redis.text(entry[0]).startswith(job.id + ":")
        ]
        if entries:
            self.client.zrem(registry.key, *[entry[0] for entry in entries])
        job.meta[REQUEUE_MARK] = json.dumps(dict(attempt))
        job.save_meta()
        return job

    def requeue(self, run: LostRun, attempt: Mapping[str, Any]) -> bool:
        job = self._job(run, attempt)
        if job is None:
            return False
        job.started_at = None
        job.ended_at = None
        Queue(job.origin, connection=self.client).enqueue_job(job)
        return True

    def dead_letter(self, run: LostRun, attempt: Mapping[str, Any]) -> bool:
        job = self._job(run, attempt)
        if job is None:
            return False
        with self.client.pipeline() as pipe:
            job.set_status(JobStatus.FAILED, pipeline=pipe)
            FailedJobRegistry(job.origin, connection=self.client).add(
                job,
                exc_string=(
                    f"otel-jobs: lost with its worker {attempt.get('lost')} times (worker "
                    f"{run.host} pid {run.pid}); not requeued again (--max-lost)"
                ),
                pipeline=pipe,
            )
            pipe.execute()
        return True

"""Celery: a run is lost when its lease expired; Celery keeps no record of a run in progress.

A task acknowledged late (``acks_late``) is handed out again by its broker when its worker
dies (RabbitMQ when the connection closes, Redis after the visibility timeout): counted, never
requeued. Otherwise the message was acknowledged when it was delivered, and the lease carries
what publishing it again takes (:mod:`otel_jobs.integrations.celery.leases`): requeue sends the
same task id, arguments and retries to its queue through the app, with the previous attempt in
a header. Failed place: the result backend (the task's state ``FAILURE`` with a
``WorkerLostError``), when the app has one; without one a poison task is only counted and
logged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ...core.lease import REQUEUE_MARK
from .detector import Detector, LostRun, logger


class CeleryDetector(Detector):
    framework = "celery"

    def __init__(self, client: Any, app: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.app = app

    def requeue(self, run: LostRun, attempt: Mapping[str, Any]) -> bool:
        data = run.requeue
        if not data or not data.get("body"):
            logger.warning(
                "otel-jobs monitor: Celery task %s of %s cannot be requeued: its lease has no "
                "message to publish again (%s)",
                run.job_id,
                run.name,
                "arguments JSON cannot hold" if data else "an acks_late task, or an older worker",
            )
            return False
        from kombu.utils.json import loads

        args, kwargs = loads(data["body"])
        with self.app.connection_for_write() as connection:
            self.app.send_task(
                str(data.get("task") or run.name),
                args=args,
                kwargs=kwargs,
                task_id=run.job_id,
                retries=int(data.get("retries") or 0),
                queue=data.get("queue") or run.queue,
                headers={REQUEUE_MARK: json.dumps(dict(attempt))},
                connection=connection,
                retry=False,
            )
        return True

    def dead_letter(self, run: LostRun, attempt: Mapping[str, Any]) -> bool:
        from billiard.exceptions import WorkerLostError
        from celery.backends.base import DisabledBackend

        backend = self.app.backend
        if isinstance(backend, DisabledBackend) or run.job_id is None:
            return False
        backend.mark_as_failure(
            run.job_id,
            WorkerLostError(
                f"otel-jobs: lost with its worker {attempt.get('lost')} times; not requeued "
                "again (--max-lost)"
            ),
        )
        return True

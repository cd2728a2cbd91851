"""Huey: a run is lost when its lease expired; Huey keeps no record of a task in progress.

Huey removes a message from its queue when a consumer takes it: a consumer that dies mid-task
loses it for good, and nothing in Redis says that it was running. So the lease entry carries the
message itself (:func:`otel_jobs.integrations.leases.huey_started`: Huey's serialized bytes,
its ``retries`` as the run started). Requeue: those bytes pushed back on the instance's queue
through its storage, as Huey enqueues (same task id, arguments and retries: the same attempt
number); Huey's message has no header, so the requeued run finds its ``previous_attempt`` in
Redis. Failed place: Huey has none; a job lost more than ``max_lost`` times gets an error
result (Huey's ``Error``, as a task that raised) under its id when the instance stores results,
so that ``result.get()`` raises ``TaskException`` saying it was lost; without a result store it
is only counted and logged. Its ``on_error`` task, if any, is not enqueued.

Only the runs of the instance given to the monitor (the queue named like it) are requeued:
another Huey instance's runs on the same Redis are counted, with ``requeue_failed``.
Whether a run finished just before its worker died cannot be told (a result may be an earlier
attempt's error): every run of an expired lease counts as lost.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from .detector import Detector, LostRun, logger


class HueyDetector(Detector):
    framework = "huey"

    def __init__(self, client: Any, huey: Any = None, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.huey = huey

    def _cannot(self, run: LostRun, why: str) -> bool:
        logger.warning(
            "otel-jobs monitor: Huey task %s of %s (queue %s) cannot be requeued: %s",
            run.job_id,
            run.name,
            run.queue,
            why,
        )
        return False

    def requeue(self, run: LostRun, attempt: Mapping[str, Any]) -> bool:
        if self.huey is None:
            return self._cannot(run, "the monitor was given no Huey instance")
        if run.queue != self.huey.name:
            return self._cannot(run, f"it is not a task of the Huey instance {self.huey.name!r}")
        data = run.requeue or {}
        try:
            message = base64.b64decode(str(data.get("message") or ""), validate=True)
        except (binascii.Error, ValueError):
            message = b""
        if not message:
            return self._cannot(
                run,
                "its lease has no message to enqueue again"
                + (" (over 64 KB)" if run.entry.get("requeue_left_out") else " (an older worker)"),
            )
        priority = data.get("priority")
        self.huey.storage.enqueue(message, priority if isinstance(priority, int) else None)
        return True

    def dead_letter(self, run: LostRun, attempt: Mapping[str, Any]) -> bool:
        huey = self.huey
        if huey is None or run.job_id is None or not huey.results or run.queue != huey.name:
            return False
        from huey.utils import Error

        huey.put_result(
            run.job_id,
            Error(
                {
                    "error": (
                        f"otel-jobs: lost with its worker {attempt.get('lost')} times (worker "
                        f"{run.host} pid {run.pid}); not requeued again (--max-lost)"
                    ),
                    "retries": None,
                    "traceback": None,
                    "task_id": run.job_id,
                }
            ),
        )
        return True

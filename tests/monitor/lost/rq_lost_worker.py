"""An RQ worker for the lost-run tests: ``LOST_WORKER_CLASS`` (``Worker``: a work horse forked
per job; ``SimpleWorker``: jobs in the worker process) on ``LOST_QUEUE`` at ``LOST_BROKER``."""

from __future__ import annotations

import os

import otel_jobs

otel_jobs.instrument(prometheus_port=int(os.environ["LOST_PORT"]), frameworks=["rq"], outbound=[])

from redis import Redis  # noqa: E402
from rq import Queue, SimpleWorker, Worker  # noqa: E402

connection = Redis.from_url(os.environ["LOST_BROKER"])
kind = {"Worker": Worker, "SimpleWorker": SimpleWorker}[os.environ["LOST_WORKER_CLASS"]]
kind([Queue(os.environ["LOST_QUEUE"], connection=connection)], connection=connection).work(
    with_scheduler=False
)

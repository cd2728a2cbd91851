"""Audit findings reach the worker's log as WARNING records, once each (issue 20 item 6).

They used to be bare lines on stderr: logged before Celery had set up its logging, or, under
``rq worker`` (which sets up only its own ``rq.worker`` logger), through Python's last-resort
handler. Celery's side is checked in test_celery.py (the findings test); RQ's here, on a
``redis-server`` of the test's own (every database of the shared Redis has an owner already).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from rq import Queue

from otel_jobs.integrations import rq as rq_integration
from tests.integrations.rq_support import JOBS
from tests.integrations.workers import start, worker_env
from tests.monitor.support import RedisServer
from tests.support import free_port

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]


def test_rq_findings_go_through_the_workers_log_handler_once_each(tmp_path: Path) -> None:
    from redis import Redis

    server = RedisServer(tmp_path / "redis").start()
    redis_url = server.url()
    connection = Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=10)
    try:
        queue = Queue("everything", connection=connection)
        queue.enqueue(f"{JOBS}.ok", 1, job_timeout=-1)
        queue.enqueue(f"{JOBS}.boom", failure_ttl=60)
        expected = rq_integration.audit(redis_url)
        assert {f.finding for f in expected} >= {"no_time_limit", "single_queue"}

        log = tmp_path / "worker.log"
        env = worker_env(
            OTEL_JOBS_PROMETHEUS_PORT=str(free_port()), OTEL_JOBS_FRAMEWORKS="rq",
            PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
        )  # fmt: skip
        rq = str(Path(sys.executable).parent / "rq")
        worker = start(
            [rq, "worker", "--burst", "-c", "tests.integrations.rq_settings", "-u", redis_url,
             "everything"],
            log, env, ROOT,
        )  # fmt: skip
        assert worker.wait(timeout=120) == 0, log.read_text()
    finally:
        connection.close()
        server.stop()

    output = log.read_text()
    lines = [line for line in output.splitlines() if "otel-jobs: rq configuration:" in line]
    # Once each, though the job without a time limit is found again when it runs.
    assert len(lines) == len(expected), output
    for finding in expected:
        assert sum(finding.message in line for line in lines) == 1, finding.finding
    for line in lines:
        # RQ's own format (`%(asctime)s %(message)s`, time as HH:MM:SS), like its other lines.
        assert re.match(r"\d\d:\d\d:\d\d otel-jobs: rq configuration: ", line), line

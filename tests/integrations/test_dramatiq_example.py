"""examples/dramatiq/ does what its README says: its launcher and two worker processes on the real
Redis, its enqueue script, the stuck actor seen stalled on /metrics and its diagnosis logged."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.integrations.workers import kill_group, purge_dramatiq, start, wait_for, worker_env
from tests.support import Samples, free_port, require_redis, scrape

pytest.importorskip("dramatiq")

pytestmark = pytest.mark.broker

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples/dramatiq"
REDIS_URL = "redis://127.0.0.1:6379/12"


def test_the_example_shows_its_stuck_actor(tmp_path: Path) -> None:
    require_redis()
    port = free_port()
    queue = f"otel-jobs-test-dq-example-{uuid.uuid4().hex[:8]}"
    env = worker_env(
        OTEL_JOBS_PROMETHEUS_PORT=str(port),
        OTEL_JOBS_MULTIPROCESS_DIR=str(tmp_path / "mp"),
        REDIS_URL=REDIS_URL,
        DRAMATIQ_QUEUE=queue,
        PYTHONPATH=os.pathsep.join([str(EXAMPLE), str(ROOT)]),
    )
    log = tmp_path / "worker.log"
    url = f"http://127.0.0.1:{port}/metrics"
    worker = start(
        [sys.executable, "run_worker.py", "tasks", "--processes", "2", "--threads", "2"],
        log, env, EXAMPLE, new_session=True,
    )  # fmt: skip
    try:
        wait_for("the worker's /metrics", lambda: worker.poll() is None and scrape(url), log=log)
        subprocess.run([sys.executable, "enqueue.py"], cwd=EXAMPLE, env=env, check=True, timeout=60)
        stuck = {"job_name": "wait_for_approval", "queue": queue}
        healthy = {"job_name": "send_report", "queue": queue}

        def stalled() -> Samples | None:
            s = scrape(url)
            ready = (
                s.total("otel_jobs_runs_finished_total", outcome="success", **healthy) == 3
                and s.total("otel_jobs_runs_stalled", **stuck) == 1
            )
            return s if ready else None

        s = wait_for("3 reports and the stalled verdict", stalled, log=log)
        assert s.value("otel_jobs_runs_started_total", **healthy) == 3
        assert s.value("otel_jobs_runs_in_progress", **stuck) == 1
        assert s.value("otel_jobs_stalls_detected_total", reason="no_heartbeat", **stuck) == 1
        assert s.value("otel_jobs_run_max_duration_seconds", **stuck) == 30
        assert s.value("otel_jobs_run_max_duration_seconds", **healthy) == 600
        wait_for("the diagnosis in the log", lambda: "stalled" in log.read_text(), log=log)
        logged = log.read_text()
        assert "of wait_for_approval" in logged and "in wait_for_approval" in logged
        assert "BLPOP" in logged  # the outbound call without a timeout it is stuck in
    finally:
        kill_group(worker)  # the stuck actor never returns
        purge_dramatiq(REDIS_URL, queue)

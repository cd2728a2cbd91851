"""examples/huey/ does what its README says: its consumer (two forked workers) on the real Redis,
its enqueue script, the stuck task seen stalled on /metrics, then Huey's timeout ending it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.integrations.workers import kill_group, purge_huey, start, wait_for, worker_env
from tests.support import Samples, free_port, require_redis, scrape

pytest.importorskip("huey")

pytestmark = pytest.mark.broker

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples/huey"
REDIS_URL = "redis://127.0.0.1:6379/13"


def test_the_example_shows_its_stuck_task_then_its_timeout(tmp_path: Path) -> None:
    require_redis()
    port = free_port()
    name = f"otel-jobs-test-huey-example-{uuid.uuid4().hex[:8]}"
    env = worker_env(
        OTEL_JOBS_PROMETHEUS_PORT=str(port),
        OTEL_JOBS_MULTIPROCESS_DIR=str(tmp_path / "mp"),
        REDIS_URL=REDIS_URL,
        HUEY_NAME=name,
        APPROVAL_TIMEOUT="8",  # the README's 30 s, shortened; still after the 5 s stall
        PYTHONPATH=os.pathsep.join([str(EXAMPLE), str(ROOT)]),
    )
    log = tmp_path / "consumer.log"
    url = f"http://127.0.0.1:{port}/metrics"
    consumer_bin = str(Path(sys.executable).parent / "huey_consumer")
    consumer = start(
        [sys.executable, consumer_bin, "worker.huey", "-k", "process", "-w", "2"],
        log, env, EXAMPLE, new_session=True,
    )  # fmt: skip
    try:
        wait_for(
            "the consumer's /metrics", lambda: consumer.poll() is None and scrape(url), log=log
        )
        subprocess.run([sys.executable, "enqueue.py"], cwd=EXAMPLE, env=env, check=True, timeout=60)
        stuck = {"job_name": "tasks.wait_for_approval", "queue": name}
        healthy = {"job_name": "tasks.send_report", "queue": name}

        def stalled() -> Samples | None:
            s = scrape(url)
            ready = (
                s.total("otel_jobs_runs_finished_total", outcome="success", **healthy) == 3
                and s.total("otel_jobs_runs_stalled", **stuck) == 1
            )
            return s if ready else None

        s = wait_for("3 reports and the stalled verdict", stalled, log=log)
        assert s.value("otel_jobs_runs_in_progress", **stuck) == 1
        assert s.value("otel_jobs_stalls_detected_total", reason="no_heartbeat", **stuck) == 1
        assert s.value("otel_jobs_run_max_duration_seconds", **stuck) == 8
        assert s.value("otel_jobs_run_max_duration_seconds", **healthy) == 3600
        logged = log.read_text()
        assert "of tasks.wait_for_approval" in logged and "BLPOP" in logged
        # Huey's own timeout (SIGALRM in the worker process) ends it.
        s = wait_for(
            "the timeout",
            lambda: (
                (s := scrape(url)).total(
                    "otel_jobs_runs_finished_total", outcome="timeout", **stuck
                )
                == 1
                and s
            ),
            log=log,
        )
        assert s.value("otel_jobs_runs_in_progress", **stuck) == 0
        assert s.total("otel_jobs_runs_started_total", **stuck) == 1
    finally:
        kill_group(consumer)
        purge_huey(REDIS_URL, name)

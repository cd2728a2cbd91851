"""No run is ever counted lost while its worker lives: runs across two Celery prefork workers
(two processes each), both restarted gracefully (SIGTERM, warm shutdown), under a real
``otel-jobs monitor`` process paused with SIGSTOP for longer than the lease TTL and resumed.

Scaled down from the issue's 1,000 runs and 30 s pause to keep the suite quick: 300 runs (one
in five lasting 1.5 s, so that leases are renewed many times over), 3 graceful restarts, a pause
of twice the lease TTL (3 s). Every run finishes exactly once, the workers' leases were seen
in Redis while they ran (the test could see a loss), and the monitor counts none.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest
import redis

from otel_jobs.core.lease import KEY_LEASES

from ..support import MonitorProcess
from .support import Worker, python, wait_for

pytestmark = pytest.mark.broker

REDIS_DB = 12
RUNS = 300


def test_graceful_restarts_and_a_paused_monitor_count_no_run_lost(
    redis_url: str, tmp_path: Path
) -> None:
    queue = f"lost-{uuid.uuid4().hex[:8]}"
    env = {
        "LOST_BROKER": redis_url, "LOST_QUEUE": queue, "LOST_DIR": str(tmp_path),
        "OTEL_JOBS_LEASE_TTL": "3", "OTEL_JOBS_WATCHDOG_INTERVAL": "0.5",
    }  # fmt: skip

    def worker(index: int) -> Worker:
        started = Worker(
            [python(), "-m", "celery", "-A", "tests.monitor.lost.celery_lost_app:app", "worker",
             "-Q", queue, "-c", "2", "--pool", "prefork", "-n", f"np{index}-{uuid.uuid4().hex[:4]}@%h",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            tmp_path / f"worker-{index}.log", **env,
        )  # fmt: skip
        started.wait_serving()
        return started

    from celery import Celery

    app = Celery("np", broker=redis_url, set_as_current=False)
    app.conf.task_default_queue = queue
    monitor = MonitorProcess(
        ["--celery-app", "tests.monitor.lost.celery_lost_app:app", "--interval", "0.5",
         "--requeue-lost"],
        tmp_path / "monitor.log", **{k: v for k, v in env.items() if k.startswith("LOST_")},
    )  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    workers = [worker(0), worker(1)]
    leases_seen = 0
    try:
        monitor.wait_for("the monitor serving", lambda s: "otel_jobs_queue_depth" in s.names())
        for i in range(RUNS):
            seconds = 1.5 if i % 5 == 0 else 0.02
            app.send_task("lost.sleepy", args=["many", f"run-{i}", seconds], queue=queue)
        done = tmp_path / "many.done"

        def finished() -> int:
            return len(done.read_text().splitlines()) if done.exists() else 0

        for restart, at in enumerate((50, 120, 190)):
            wait_for(f"{at} runs done", lambda at=at: finished() >= at)  # type: ignore[misc]
            leases_seen = max(leases_seen, int(client.zcard(KEY_LEASES)))
            old = workers[restart % 2]
            assert old.stop(signal.SIGTERM) == 0, old.tail()  # warm: running tasks finish
            workers[restart % 2] = worker(10 + restart)
            if restart == 1:
                monitor.proc.send_signal(signal.SIGSTOP)
                leases_seen = max(leases_seen, int(client.zcard(KEY_LEASES)))
                time.sleep(6)  # twice the lease TTL: every lease renewed meanwhile, none expired
                monitor.proc.send_signal(signal.SIGCONT)
        wait_for("every run done", lambda: finished() >= RUNS)
        lines = done.read_text().splitlines()
        assert sorted(lines) == sorted(f"run-{i}" for i in range(RUNS))  # each exactly once
        assert leases_seen > 0, "no lease was ever seen: the test could not see a loss"
        samples = monitor.wait_for(
            "two more polls", lambda s: s.find("otel_jobs_monitor_poll_duration_seconds_count")
        )
        for _ in range(4):  # a few more polls after the last run
            samples = monitor.wait_for("the monitor serving", lambda s: True)
            time.sleep(0.5)
        assert samples.find("otel_jobs_runs_lost_total") == []
        assert samples.find("otel_jobs_runs_requeued_total") == []
        assert "was lost with its worker" not in monitor.tail()
    finally:
        for w in workers:
            w.kill()
        monitor.stop()
        client.close()

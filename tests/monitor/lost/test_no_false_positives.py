"""No run is ever counted lost while its worker lives: runs across two Celery prefork workers
(two processes each), both restarted gracefully (SIGTERM, warm shutdown), under a real
``otel-jobs monitor`` process paused with SIGSTOP for longer than the lease TTL and resumed.

Scaled down from the issue's 1,000 runs and 30 s pause to keep the suite quick: 300 runs (one
in five lasting 1.5 s, so that leases are renewed many times over), 3 graceful restarts, a pause
of twice the lease TTL (3 s). Every run finishes exactly once, the workers' leases were seen
in Redis while they ran (the test could see a loss), and the monitor counts none.

The scenario itself is :func:`restarts_and_a_paused_monitor`, which ``bench/bench_lost_runs.py``
runs at the issue's full scale.
"""

from __future__ import annotations

import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from otel_jobs.core.lease import KEY_LEASES
from tests.support import Samples

from ..support import MonitorProcess
from .support import Worker, python, wait_for

pytestmark = pytest.mark.broker

REDIS_DB = 12
RUNS = 300
PAUSE = 6.0  # twice the lease TTL: every lease renewed meanwhile, none expired
LEASE_TTL = 3.0


@dataclass
class Outcome:
    """What :func:`restarts_and_a_paused_monitor` saw."""

    finished: list[str]  # the runs' lines, one per run that finished (twice if run twice)
    redelivered: list[str]  # the runs Celery itself handed out again (kombu's restore)
    leases_seen: int  # the most leases seen in Redis at once while the runs went on
    samples: Samples  # the monitor's last scrape, a few polls after the last run
    monitor_log: str
    seconds: float  # wall time from the first run sent to the last one finished


def restarts_and_a_paused_monitor(
    redis_url: str,
    directory: Path,
    runs: int = RUNS,
    pause: float = PAUSE,
    lease_ttl: float = LEASE_TTL,
    timeout: float = 120.0,
) -> Outcome:
    """``runs`` runs across two workers, the first and second restarted gracefully at 1/6, 2/5
    and 19/30 of the runs, the monitor paused ``pause`` seconds after the second restart."""
    queue = f"lost-{uuid.uuid4().hex[:8]}"
    env = {
        "LOST_BROKER": redis_url, "LOST_QUEUE": queue, "LOST_DIR": str(directory),
        "OTEL_JOBS_LEASE_TTL": str(lease_ttl), "OTEL_JOBS_WATCHDOG_INTERVAL": "0.5",
    }  # fmt: skip

    def worker(index: int) -> Worker:
        started = Worker(
            [python(), "-m", "celery", "-A", "tests.monitor.lost.celery_lost_app:app", "worker",
             "-Q", queue, "-c", "2", "--pool", "prefork", "-n", f"np{index}-{uuid.uuid4().hex[:4]}@%h",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            directory / f"worker-{index}.log", **env,
        )  # fmt: skip
        started.wait_serving()
        return started

    from celery import Celery

    app = Celery("np", broker=redis_url, set_as_current=False)
    app.conf.task_default_queue = queue
    monitor = MonitorProcess(
        ["--celery-app", "tests.monitor.lost.celery_lost_app:app", "--interval", "0.5",
         "--requeue-lost"],
        directory / "monitor.log", **{k: v for k, v in env.items() if k.startswith("LOST_")},
    )  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    workers = [worker(0), worker(1)]
    leases_seen = 0
    try:
        monitor.wait_for("the monitor serving", lambda s: "otel_jobs_queue_depth" in s.names())
        began = time.monotonic()
        for i in range(runs):
            seconds = 1.5 if i % 5 == 0 else 0.02
            app.send_task("lost.sleepy", args=["many", f"run-{i}", seconds], queue=queue)
        done = directory / "many.done"

        def finished() -> int:
            return len(done.read_text().splitlines()) if done.exists() else 0

        for restart, at in enumerate(runs * share // 300 for share in (50, 120, 190)):
            wait_for(f"{at} runs done", lambda at=at: finished() >= at, timeout)  # type: ignore[misc]
            leases_seen = max(leases_seen, int(client.zcard(KEY_LEASES)))
            old = workers[restart % 2]
            assert old.stop(signal.SIGTERM) == 0, old.tail()  # warm: running tasks finish
            workers[restart % 2] = worker(10 + restart)
            if restart == 1:
                monitor.proc.send_signal(signal.SIGSTOP)
                leases_seen = max(leases_seen, int(client.zcard(KEY_LEASES)))
                time.sleep(pause)
                monitor.proc.send_signal(signal.SIGCONT)
        wait_for("every run done", lambda: finished() >= runs, timeout)
        seconds = time.monotonic() - began
        samples = monitor.wait_for(
            "two more polls", lambda s: s.find("otel_jobs_monitor_poll_duration_seconds_count")
        )
        for _ in range(4):  # a few more polls after the last run
            samples = monitor.wait_for("the monitor serving", lambda s: True)
            time.sleep(0.5)
        again = directory / "many.redelivered"
        redelivered = again.read_text().splitlines() if again.exists() else []
        return Outcome(
            done.read_text().splitlines(),
            redelivered,
            leases_seen,
            samples,
            monitor.tail(),
            seconds,
        )
    finally:
        for w in workers:
            w.kill()
        monitor.stop()
        client.close()


def test_graceful_restarts_and_a_paused_monitor_count_no_run_lost(
    redis_url: str, tmp_path: Path
) -> None:
    outcome = restarts_and_a_paused_monitor(redis_url, tmp_path)
    assert sorted(set(outcome.finished)) == sorted(f"run-{i}" for i in range(RUNS))
    # Each exactly once, but for what Celery itself hands out again: a worker stopping warm
    # restores the messages it holds unacknowledged, which can include one a pool child has
    # just taken (early acknowledgement is sent after the child accepts it). Never the monitor.
    twice = sorted({line for line in outcome.finished if outcome.finished.count(line) > 1})
    assert set(twice) <= set(outcome.redelivered), (twice, outcome.redelivered)
    assert outcome.leases_seen > 0, "no lease was ever seen: the test could not see a loss"
    assert outcome.samples.find("otel_jobs_runs_lost_total") == []
    assert outcome.samples.find("otel_jobs_runs_requeued_total") == []
    assert "was lost with its worker" not in outcome.monitor_log

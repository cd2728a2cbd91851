"""examples/dramatiq/ does what its README says: its launcher and two worker processes on the real
Redis, its enqueue script, the stuck actor seen stalled on /metrics and its diagnosis logged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import Samples, free_port, require_redis, scrape

pytest.importorskip("dramatiq")

pytestmark = pytest.mark.broker

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples/dramatiq"
REDIS_URL = "redis://127.0.0.1:6379/12"


def wait_for(what: str, check: Callable[[], Any], log: Path, timeout: float = 90.0) -> Any:
    """Poll ``check`` until it returns something true; a generous deadline, not a timing test."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}\n{log.read_text()[-4000:]}")


def test_the_example_shows_its_stuck_actor(tmp_path: Path) -> None:
    require_redis()
    port = free_port()
    queue = f"otel-jobs-test-dq-example-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        {
            "OTEL_JOBS_PROMETHEUS_PORT": str(port),
            "OTEL_JOBS_MULTIPROCESS_DIR": str(tmp_path / "mp"),
            "REDIS_URL": REDIS_URL,
            "DRAMATIQ_QUEUE": queue,
            "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(ROOT)]),
        }
    )
    log = tmp_path / "worker.log"
    url = f"http://127.0.0.1:{port}/metrics"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "run_worker.py", "tasks", "--processes", "2", "--threads", "2"],
            cwd=EXAMPLE, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for("the worker's /metrics", lambda: worker.poll() is None and scrape(url), log)
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

        s = wait_for("3 reports and the stalled verdict", stalled, log)
        assert s.value("otel_jobs_runs_started_total", **healthy) == 3
        assert s.value("otel_jobs_runs_in_progress", **stuck) == 1
        assert s.value("otel_jobs_stalls_detected_total", reason="no_heartbeat", **stuck) == 1
        assert s.value("otel_jobs_run_max_duration_seconds", **stuck) == 30
        assert s.value("otel_jobs_run_max_duration_seconds", **healthy) == 600
        wait_for("the diagnosis in the log", lambda: "stalled" in log.read_text(), log)
        logged = log.read_text()
        assert "of wait_for_approval" in logged and "in wait_for_approval" in logged
        assert "BLPOP" in logged  # the outbound call without a timeout it is stuck in
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # the stuck actor never returns
        worker.wait(timeout=30)
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(f"dramatiq:{queue}*"))
        keys += client.scan_iter(f"dramatiq:__acks__.*.{queue}*")  # per worker, per queue
        if keys:
            client.delete(*keys)
        client.close()

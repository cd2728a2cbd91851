"""examples/rq as a user runs it: partner, worker script, enqueue; the stuck job is on /metrics
and in the log with its diagnosis. Redis DB 8 is this module's own (the example's queue names
are fixed), emptied before and after."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integrations.rq_support import ROOT, empty_redis_db, kill_tree
from tests.integrations.workers import wait_for
from tests.support import free_port, scrape

EXAMPLE = ROOT / "examples" / "rq"
REDIS_URL = "redis://127.0.0.1:6379/8"

pytestmark = pytest.mark.broker


@pytest.fixture
def example_db() -> Iterator[None]:
    with empty_redis_db(REDIS_URL):
        yield


def test_example_shows_the_stuck_job(example_db: None, tmp_path: Path) -> None:
    metrics_port, partner_port = free_port(), free_port()
    env = {
        **os.environ,
        "REDIS_URL": REDIS_URL,
        "PARTNER_PORT": str(partner_port),
        "STUCK_AFTER": "1",
        "OTEL_JOBS_PROMETHEUS_PORT": str(metrics_port),
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "worker.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(tmp_path / "partner.log", "wb") as out:
            procs.append(
                subprocess.Popen([sys.executable, "partner.py"], cwd=EXAMPLE, env=env, stdout=out)
            )
        with open(log, "wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "worker.py"], cwd=EXAMPLE, env=env, stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_for("the worker", lambda: "Listening on" in log.read_text())
        wait_for("the partner", lambda: "never answers" in (tmp_path / "partner.log").read_text())
        done = subprocess.run(
            [sys.executable, "enqueue.py"], cwd=EXAMPLE, env=env, capture_output=True, timeout=60
        )
        assert done.returncode == 0, done.stderr.decode()

        stuck = {"job_name": "tasks.fetch_invoice", "queue": "billing"}
        reports = {"job_name": "tasks.build_report", "queue": "reports"}

        def stalled() -> bool:
            m = scrape(url)
            return m.total("otel_jobs_runs_stalled", **stuck) == 1 and (
                m.total("otel_jobs_runs_finished_total", outcome="success", **reports) == 3
            )

        wait_for("the stuck job and three reports on /metrics", stalled)
        m = scrape(url)
        assert m.value("otel_jobs_runs_started_total", **reports) == 3
        assert m.value("otel_jobs_runs_started_total", **stuck) == 1
        assert m.value("otel_jobs_runs_in_progress", **stuck) == 1
        assert m.value("otel_jobs_stalls_detected_total", reason="no_heartbeat", **stuck) == 1
        assert m.value("otel_jobs_run_max_duration_seconds", **stuck) == 300  # billing's timeout
        wait_for(
            "the diagnosis in the log",
            lambda: any(
                "tasks.fetch_invoice" in line and "stalled" in line and "tasks.py:" in line
                for line in log.read_text().splitlines()
            ),
        )
    finally:
        for proc in procs:
            kill_tree(proc)

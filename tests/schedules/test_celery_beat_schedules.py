"""Celery beat: the schedule gauges match what a real beat holds, standalone and in ``worker -B``.

First beat's own ``Service`` runs in this process (a thread), sending to the real Redis, so that
its entries can be compared with the gauges; then a real ``celery worker -B`` (prefork: beat is
a process forked from the worker) shows the same entries on the worker's ``/metrics``. Redis DB 6
is this module's own, emptied before and after.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.beat import Service

from tests.schedules import beat_app
from tests.support import agent_metrics, emptied_redis_db, free_port, scrape

from .conftest import stop, wait_for
from .support import INTERVAL, NEXT, SENT

pytestmark = pytest.mark.broker

REDIS_URL = "redis://127.0.0.1:6379/6"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REFRESH = {"job_name": "beat_app.refresh", "schedule": "refresh-every-2s"}
NIGHTLY = {"job_name": "beat_app.nightly", "schedule": "nightly-report"}


@pytest.fixture
def clean_db() -> Iterator[redis.Redis]:
    with emptied_redis_db(REDIS_URL) as client:
        yield client


def test_next_run_last_sent_and_interval_match_beat(
    instrumented: Callable[..., Any], clean_db: redis.Redis, tmp_path: Path
) -> None:
    instrumented(frameworks=["celery"])
    service = Service(beat_app.app, schedule_filename=str(tmp_path / "beat-schedule"))
    thread = threading.Thread(target=service.start, daemon=True)
    thread.start()
    try:
        wait_for("two sends", lambda: clean_db.llen("beat") >= 2, timeout=60)
        scheduler = service.scheduler
        for _ in range(50):  # a scrape taken while beat sent nothing new
            before = scheduler.schedule["refresh-every-2s"].last_run_at
            m = agent_metrics()
            if scheduler.schedule["refresh-every-2s"].last_run_at == before:
                break
        # beat sets last_run_at as it reserves the entry, then sends it; due again 2 s later.
        # (beat's timestamps and the gauges read the clock microseconds apart)
        assert m.value(NEXT, **REFRESH) == pytest.approx(before.timestamp() + 2, abs=0.01)
        sent = m.value(SENT, **REFRESH)
        assert before.timestamp() <= sent < before.timestamp() + 2
        assert m.value(INTERVAL, **REFRESH) == 2

        nightly = scheduler.schedule["nightly-report"]
        remaining = nightly.schedule.remaining_estimate(nightly.last_run_at)
        due = nightly.schedule.now() + remaining
        assert m.value(NEXT, **NIGHTLY) == pytest.approx(due.timestamp(), abs=0.01)
        assert due.hour == 3 and due.minute == 30
        assert m.value(INTERVAL, **NIGHTLY) == 86400
        assert m.find(SENT, **NIGHTLY) == []
    finally:
        service.stop()
        thread.join(30)


def test_worker_with_embedded_beat_serves_the_entries(
    clean_db: redis.Redis, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
        "OJ_METRICS_PORT": str(port),
        "OJ_BEAT_BROKER": REDIS_URL,
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    log = (tmp_path / "worker.log").open("wb")
    celery = str(Path(sys.executable).parent / "celery")
    proc = subprocess.Popen(
        [celery, "-A", "beat_app", "worker", "-B", "--pool", "prefork", "-c", "1",
         "--schedule", str(tmp_path / "beat-schedule"), "--loglevel", "INFO"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        # beat is a process forked from the worker: its entries reach the worker's endpoint.
        m = wait_for(
            "the embedded beat's entries on the worker's /metrics",
            lambda: (s := scrape(url)).find(SENT, **REFRESH) and s,
            timeout=90,
        )
        assert m.value(INTERVAL, **REFRESH) == 2
        assert m.value(NEXT, **REFRESH) > m.value(SENT, **REFRESH)
        assert m.value(INTERVAL, **NIGHTLY) == 86400
        # and the worker runs what beat sends
        wait_for(
            "a run of the beat task",
            lambda: scrape(url).find("otel_jobs_last_success_timestamp_seconds", **{
                "job_name": "beat_app.refresh"}),
            timeout=90,
        )  # fmt: skip
    finally:
        try:
            os.killpg(proc.pid, 15)
        except ProcessLookupError:
            pass
        stop(proc)
        log.close()

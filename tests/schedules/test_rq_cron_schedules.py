"""RQ's cron scheduler: a real ``rq cron`` process on the real Redis exports the schedule gauges.

Its configuration file calls ``otel_jobs.instrument()`` and registers a 2 s interval job and a
crontab job, as users write it. The gauges are compared with the scheduler's own state, which
it saves in Redis after each enqueue. Redis DB 5 is this module's own, emptied before and after.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support import Samples, emptied_redis_db, free_port, scrape

from .conftest import stop, wait_for
from .support import INTERVAL, NEXT, SENT

pytest.importorskip("rq.cron", reason="the installed RQ has no cron scheduler (RQ 2.5+)")
pytestmark = pytest.mark.broker

REDIS_URL = "redis://127.0.0.1:6379/5"
ROOT = Path(__file__).resolve().parents[2]

JOBS = textwrap.dedent(
    """
    def refresh():
        return "refreshed"

    def nightly():
        return "done"
    """
)
CONFIG = textwrap.dedent(
    """
    import os
    import otel_jobs
    from rq import cron
    from cron_jobs import nightly, refresh

    otel_jobs.instrument(prometheus_port=int(os.environ["TEST_METRICS_PORT"]))

    cron.register(refresh, queue_name="schedules", interval=2)
    cron.register(nightly, queue_name="schedules", cron="30 3 * * *", name="nightly-report")
    """
)


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    with emptied_redis_db(REDIS_URL) as conn:
        yield conn


@pytest.fixture
def rq_cron(tmp_path: Path, client: redis.Redis) -> Iterator[str]:
    (tmp_path / "cron_jobs.py").write_text(JOBS)
    (tmp_path / "cron_config.py").write_text(CONFIG)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "TEST_METRICS_PORT": str(port),
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    log = (tmp_path / "rq-cron.log").open("wb")
    rq = str(Path(sys.executable).parent / "rq")
    proc = subprocess.Popen(
        [rq, "cron", "--url", REDIS_URL, "cron_config"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for("rq cron's /metrics", lambda: proc.poll() is None and scrape(url).names())
        yield url
    finally:
        stop(proc)
        log.close()


def saved_jobs(client: redis.Redis) -> dict[str, Any]:
    """The scheduler's cron jobs as it saved them in Redis, by name."""
    from rq.cron import CronScheduler

    schedulers = CronScheduler.all(client)
    assert len(schedulers) == 1
    return {job.name: job for job in schedulers[0].get_jobs()}


def test_next_run_last_sent_and_interval_match_the_scheduler(
    rq_cron: str, client: redis.Redis
) -> None:
    wait_for(
        "two enqueues of the interval job",
        lambda: client.llen("rq:queue:schedules") >= 2,
        timeout=60,
    )
    for _ in range(50):  # a scrape taken while the scheduler saved nothing new
        before = saved_jobs(client)
        m: Samples = scrape(rq_cron)
        after = saved_jobs(client)
        state = [(j.latest_enqueue_time, j.next_enqueue_time) for j in before.values()]
        if state == [(j.latest_enqueue_time, j.next_enqueue_time) for j in after.values()]:
            break
    refresh, nightly = before["cron_jobs.refresh"], before["nightly-report"]
    labels = {"job_name": "cron_jobs.refresh", "schedule": "cron_jobs.refresh"}
    assert m.value(NEXT, **labels) == refresh.next_enqueue_time.timestamp()
    assert m.value(SENT, **labels) == refresh.latest_enqueue_time.timestamp()
    assert m.value(INTERVAL, **labels) == 2
    labels = {"job_name": "cron_jobs.nightly", "schedule": "nightly-report"}
    assert m.value(NEXT, **labels) == nightly.next_enqueue_time.timestamp()
    assert m.value(INTERVAL, **labels) == 86400
    assert m.find(SENT, **labels) == []  # not due yet: never sent

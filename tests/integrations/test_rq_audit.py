"""The RQ configuration audit on the real Redis: ``audit(url)`` and a real worker's start-up.

Redis DB 10 is this module's own and is emptied before each test, so the queues and jobs the
audit sees are exactly those the test enqueued.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Queue, Retry

from otel_jobs.integrations import rq as rq_integration
from tests.integrations.rq_support import JOBS, RQWorker, empty_redis_db, launch_workers
from tests.integrations.workers import wait_for
from tests.support import Samples

AUDIT_URL = "redis://127.0.0.1:6379/10"

pytestmark = pytest.mark.broker


@pytest.fixture
def empty_db() -> Iterator[Redis]:
    with empty_redis_db(AUDIT_URL) as connection:
        yield connection


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., RQWorker]]:
    with launch_workers(tmp_path) as start:
        yield start


def bad_configuration(connection: Redis) -> None:
    """One queue for everything, a job without a time limit, failures forgotten in a minute."""
    q = Queue("everything", connection=connection)
    q.enqueue(f"{JOBS}.ok", 1, job_timeout=-1)
    q.enqueue(f"{JOBS}.boom", failure_ttl=60)


def good_configuration(connection: Redis) -> None:
    fast = Queue("fast", connection=connection, default_timeout=30)
    slow = Queue("slow", connection=connection, default_timeout=600)
    fast.enqueue(f"{JOBS}.ok", 1, retry=Retry(max=3, interval=[1, 5, 30]))
    slow.enqueue(f"{JOBS}.sleepy", 1, retry=Retry(max=2))
    slow.enqueue(f"{JOBS}.boom", failure_ttl=7 * 86400)


def test_audit_finds_each_mistake(empty_db: Redis) -> None:
    bad_configuration(empty_db)
    findings = rq_integration.audit(AUDIT_URL)
    by_id = {f.finding: f for f in findings}
    assert sorted(by_id) == ["no_retry_or_dead_letter", "no_time_limit", "single_queue"]
    assert all(f.framework == "rq" for f in findings)
    assert f"{JOBS}.ok(1)" in by_id["no_time_limit"].message
    assert "failure_ttl=60" in by_id["no_retry_or_dead_letter"].message
    assert "'everything'" in by_id["single_queue"].message
    assert len(empty_db.lrange("rq:queue:everything", 0, -1)) == 2  # read-only: nothing dequeued


def test_audit_of_a_good_configuration_is_empty(empty_db: Redis) -> None:
    good_configuration(empty_db)
    assert rq_integration.audit(AUDIT_URL) == []


def test_audit_of_an_empty_redis_is_empty(empty_db: Redis) -> None:
    assert rq_integration.audit(AUDIT_URL) == []


def findings_of(worker: Any) -> tuple[Samples, dict[str, float]]:
    """The worker's /metrics once it shows its configuration findings, and those findings."""
    m = wait_for(
        "the findings on /metrics",
        lambda: (m := worker.metrics()).find("otel_jobs_config_finding", framework="rq") and m,
    )
    found = {
        s.labels["finding"]: s.value
        for s in m.samples
        if s.name == "otel_jobs_config_finding" and s.labels.get("framework") == "rq"
    }
    return m, found


def test_worker_reports_findings_at_start(empty_db: Redis, start_worker) -> None:
    """A real worker audits at start-up: each finding once in its log and on its /metrics."""
    bad_configuration(empty_db)
    worker = start_worker("everything", url=AUDIT_URL)
    _, found = findings_of(worker)
    assert found == {"no_time_limit": 1, "no_retry_or_dead_letter": 1, "single_queue": 1}
    wait_for("the jobs to run", lambda: worker.finished() == 2)
    log = worker.output()
    for text in ("no execution time limit", "no retry or dead-letter path", "a single queue"):
        assert log.count(text) == 1, text  # once, though the job without a limit also ran


def test_worker_with_a_good_configuration_reports_nothing(empty_db: Redis, start_worker) -> None:
    good_configuration(empty_db)
    worker = start_worker("fast", "slow", url=AUDIT_URL)
    wait_for("the jobs to run", lambda: worker.finished() >= 3)
    assert worker.metrics().find("otel_jobs_config_finding", framework="rq") == []
    assert "rq configuration" not in worker.output()


# --- a Queue subclass with a key prefix of its own (found by running RQ's own suite) ------------

PREFIXED = "tests.integrations.rq_prefixed.PrefixedQueue"


def prefixed_configuration(connection: Redis) -> None:
    """A good configuration of rq.Queue, and in the same rq:queues set a PrefixedQueue whose
    only job has no time limit."""
    from tests.integrations.rq_prefixed import PrefixedQueue

    good_configuration(connection)
    PrefixedQueue("custom", connection=connection).enqueue(f"{JOBS}.ok", 1, job_timeout=-1)


def test_audit_skips_the_queues_of_another_queue_class(empty_db: Redis) -> None:
    prefixed_configuration(empty_db)
    with pytest.raises(ValueError, match="Not a valid RQ queue key"):
        Queue.all(connection=empty_db)  # what the audit called
    assert rq_integration.audit(AUDIT_URL) == []  # rq.Queue's queues, and they are fine


def test_doctor_with_a_queue_subclass_in_redis(empty_db: Redis) -> None:
    import subprocess
    import sys

    from tests.integrations.rq_support import ROOT

    prefixed_configuration(empty_db)
    proc = subprocess.run(
        [sys.executable, "-m", "otel_jobs", "doctor", "--rq-redis-url", AUDIT_URL],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr  # 2 was "cannot check RQ"


def test_worker_audits_the_queues_of_its_own_queue_class(empty_db: Redis, start_worker) -> None:
    prefixed_configuration(empty_db)
    worker = start_worker("custom", url=AUDIT_URL, env_extra={"RQ_QUEUE_CLASS": PREFIXED})
    m, found = findings_of(worker)
    assert found == {"no_time_limit": 1, "single_queue": 1}  # PrefixedQueue's: one queue
    assert f"{JOBS}.ok(1)" in worker.output()
    wait_for("the job to run", lambda: worker.finished(queue="custom") == 1)
    assert m.find("otel_jobs_internal_errors_total", component="integration.rq.audit") in (
        [],
        [0.0],
    )

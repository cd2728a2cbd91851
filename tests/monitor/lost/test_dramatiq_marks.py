"""What a Dramatiq worker does with the lost-run mark a monitor wrote into a message, with a real
``dramatiq.Worker`` on Dramatiq's ``StubBroker`` (the mark put in the message's options as the
monitor writes it; the whole path on real brokers: ``test_others.py``).

* lost more than ``max_lost`` times, as this very attempt: not run, failed into the dead-letter
  queue, the run ``cancelled`` with ``otel_jobs.lost.count``, counted redelivered and dead-lettered;
* lost ``max_lost`` times: run, its ``previous_attempt`` known, counted redelivered;
* the mark of an earlier attempt (the job retried since): run, not counted redelivered;
* a mark that is not an attempt record: run as if it had none.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_jobs.core.lease import REQUEUE_MARK
from tests.support import agent_metrics

dramatiq = pytest.importorskip("dramatiq")

from dramatiq.brokers.stub import StubBroker  # noqa: E402

import otel_jobs  # noqa: E402


def mark(lost: int, attempt: int = 1, max_lost: int = 1) -> str:
    return json.dumps(
        {"progress": 0.4, "details": {"page": 7}, "host": "h", "pid": 42, "lost": lost,
         "attempt": attempt, "max_lost": max_lost}
    )  # fmt: skip


def process(options: dict[str, Any]) -> tuple[StubBroker, str, list[Any]]:
    """One message of a fresh actor with ``options``, through a real worker: the broker, the
    queue and what the actor saw (its run's ``previous_attempt``) if it ran."""
    broker = StubBroker()
    broker.emit_after("process_boot")
    queue = f"marks-{uuid.uuid4().hex[:8]}"
    seen: list[Any] = []

    @dramatiq.actor(broker=broker, queue_name=queue, actor_name="marked", max_retries=0)
    def marked() -> None:
        run = otel_jobs.current_run()
        seen.append(run.previous_attempt if run is not None else "no run")

    broker.enqueue(
        dramatiq.Message(queue_name=queue, actor_name="marked", args=(), kwargs={}, options=options)
    )
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        broker.join(queue, fail_fast=False)
        worker.join()
    finally:
        worker.stop()
    return broker, queue, seen


def test_lost_more_than_max_lost_times_it_is_dead_lettered_without_running(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    instrumented(frameworks=["dramatiq"])
    broker, queue, seen = process({REQUEUE_MARK: mark(lost=2)})
    assert seen == []
    assert [m.message_id for m in broker.dead_letters] != []
    samples = agent_metrics()
    labels = {"job_name": "marked", "queue": queue}
    assert samples.value("otel_jobs_runs_finished_total", outcome="cancelled", **labels) == 1
    assert samples.value("otel_jobs_runs_redelivered_total", **labels) == 1
    assert samples.value("otel_jobs_runs_dead_lettered_total", **labels) == 1
    (span,) = [s for s in span_exporter.get_finished_spans() if s.name == "marked"]
    attrs = span.attributes or {}
    assert attrs["otel_jobs.lost.count"] == 2 and attrs["otel_jobs.lost.action"] == "dead_lettered"
    assert attrs["job.outcome"] == "cancelled"


def test_lost_max_lost_times_it_runs_knowing_its_previous_attempt(
    instrumented: Callable[..., Any],
) -> None:
    instrumented(frameworks=["dramatiq"])
    broker, queue, seen = process({REQUEUE_MARK: mark(lost=1)})
    (previous,) = seen
    assert previous.lost == 1 and previous.progress == 0.4 and previous.details == {"page": 7}
    assert broker.dead_letters == []
    samples = agent_metrics()
    labels = {"job_name": "marked", "queue": queue}
    assert samples.value("otel_jobs_runs_finished_total", outcome="success", **labels) == 1
    assert samples.value("otel_jobs_runs_redelivered_total", **labels) == 1


def test_the_mark_of_an_earlier_attempt_does_not_stop_a_retry(
    instrumented: Callable[..., Any],
) -> None:
    instrumented(frameworks=["dramatiq"])
    broker, queue, seen = process({REQUEUE_MARK: mark(lost=5), "retries": 1})  # attempt 2
    (previous,) = seen
    assert previous.lost == 5  # the job's last lost attempt, all the same
    assert broker.dead_letters == []
    samples = agent_metrics()
    labels = {"job_name": "marked", "queue": queue}
    assert samples.value("otel_jobs_runs_finished_total", outcome="success", **labels) == 1
    assert samples.total("otel_jobs_runs_redelivered_total", **labels) == 0


@pytest.mark.parametrize("bad", ["not json", json.dumps([1]), json.dumps({"lost": "many"})])
def test_a_mark_that_is_not_an_attempt_record_is_ignored(
    instrumented: Callable[..., Any], bad: str
) -> None:
    instrumented(frameworks=["dramatiq"])
    broker, queue, seen = process({REQUEUE_MARK: bad})
    assert len(seen) == 1 and broker.dead_letters == []
    samples = agent_metrics()
    assert (
        samples.value(
            "otel_jobs_runs_finished_total", job_name="marked", queue=queue, outcome="success"
        )
        == 1
    )

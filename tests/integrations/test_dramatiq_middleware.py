"""Where otel-jobs' Dramatiq middleware goes, reproducing the cases of Dramatiq's own suite
(``tests/test_broker.py``, Dramatiq 2.x) that failed with otel-jobs enabled.

* ``middleware=[]`` asks for a broker with no middleware: it stays empty (a RabbitmqBroker on
  the real RabbitMQ, a StubBroker, a module-level broker found at ``instrument()``);
  ``attach(broker)`` records its runs all the same, and ``detach(broker)`` takes otel-jobs off.
* ``add_middleware(m, before=AgeLimit)`` / ``after=AgeLimit`` put ``m`` right before / after
  ``AgeLimit``, with otel-jobs still first (so its ``after_*`` hooks run last); the runs of a real
  ``dramatiq.Worker`` keep their outcomes (retry, then failure). On a detached broker, Dramatiq's
  own expectations hold to the index.
"""

from __future__ import annotations

import sys
import types
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support import require_rabbitmq

dramatiq = pytest.importorskip("dramatiq")

from dramatiq.brokers.stub import StubBroker  # noqa: E402
from dramatiq.middleware import AgeLimit, Middleware, Retries  # noqa: E402

from otel_jobs.integrations import dramatiq as integration  # noqa: E402
from otel_jobs.integrations.dramatiq import OtelJobsMiddleware  # noqa: E402


class EmptyMiddleware(Middleware):
    pass


def _ours(broker: Any) -> list[Any]:
    return [m for m in broker.middleware if isinstance(m, OtelJobsMiddleware)]


def test_a_rabbitmq_broker_created_without_middleware_stays_empty(
    instrumented: Callable[..., Any],
) -> None:
    require_rabbitmq()
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    instrumented(frameworks=["dramatiq"])
    broker = RabbitmqBroker(middleware=[], url="amqp://guest:guest@127.0.0.1:5672")
    try:
        assert not broker.middleware
    finally:
        broker.close()


def test_an_empty_middleware_list_is_respected_and_attach_adds_otel_jobs(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    instrumented(frameworks=["dramatiq"])
    broker = StubBroker(middleware=[])
    assert broker.middleware == []
    assert _ours(StubBroker()) != []  # the default list does get it

    integration.attach(broker)
    integration.attach(broker)  # once
    assert len(_ours(broker)) == 1 and len(broker.middleware) == 1
    queue = f"otj-empty-{uuid.uuid4().hex[:8]}"

    @dramatiq.actor(broker=broker, queue_name=queue, actor_name="mw_attached")
    def attached() -> None:
        pass

    broker.emit_after("process_boot")
    attached.send()
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        broker.join(queue)
        worker.join()
    finally:
        worker.stop()
    spans = [s for s in span_exporter.get_finished_spans() if s.name == "mw_attached"]
    assert [s.attributes["job.outcome"] for s in spans] == ["success"]

    integration.detach(broker)
    assert _ours(broker) == []  # the worker's own middleware stays


def test_a_module_level_broker_without_middleware_is_left_alone(
    instrumented: Callable[..., Any],
) -> None:
    module = types.ModuleType("otj_test_dramatiq_empty_broker")
    module.broker = StubBroker(middleware=[])  # type: ignore[attr-defined]
    module.full = StubBroker()  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        instrumented(frameworks=["dramatiq"])
        assert module.broker.middleware == []  # type: ignore[attr-defined]
        assert len(_ours(module.full)) == 1  # type: ignore[attr-defined]
    finally:
        del sys.modules[module.__name__]


def test_before_and_after_place_a_middleware_next_to_the_one_named(
    instrumented: Callable[..., Any],
) -> None:
    instrumented(frameworks=["dramatiq"])
    before, after = EmptyMiddleware(), EmptyMiddleware()
    broker = StubBroker()
    broker.add_middleware(before, before=AgeLimit)
    broker.add_middleware(after, after=AgeLimit)
    kinds = [type(m) for m in broker.middleware]
    age = kinds.index(AgeLimit)
    assert broker.middleware[age - 1] is before
    assert broker.middleware[age + 1] is after
    assert isinstance(broker.middleware[0], OtelJobsMiddleware)  # still the outermost


@pytest.mark.parametrize(
    ("where", "index"), [("before", 0), ("after", 1)], ids=["before-AgeLimit", "after-AgeLimit"]
)
def test_dramatiqs_own_positions_hold_on_a_detached_broker(
    instrumented: Callable[..., Any], where: str, index: int
) -> None:
    instrumented(frameworks=["dramatiq"])
    broker = StubBroker()
    integration.detach(broker)
    assert _ours(broker) == []
    empty = EmptyMiddleware()
    broker.add_middleware(empty, **{where: AgeLimit})
    assert broker.middleware[index] == empty  # Dramatiq's own assertion


def test_outcomes_with_a_middleware_added_before_the_first(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    """Retries still decides before otel-jobs does: a retried attempt, then the failure."""
    instrumented(frameworks=["dramatiq"])
    broker = StubBroker()
    seen: list[str] = []

    class Watching(Middleware):
        def after_process_message(self, broker: Any, message: Any, **kwargs: Any) -> None:
            seen.append(message.actor_name)

    broker.add_middleware(Watching(), before=AgeLimit)
    assert [type(m) for m in broker.middleware][:3] == [OtelJobsMiddleware, Watching, AgeLimit]
    assert any(isinstance(m, Retries) for m in broker.middleware)
    queue = f"otj-order-{uuid.uuid4().hex[:8]}"

    @dramatiq.actor(
        broker=broker, queue_name=queue, max_retries=1, min_backoff=10, max_backoff=20,
        actor_name="mw_flaky",
    )  # fmt: skip
    def flaky() -> None:
        raise RuntimeError("fails every time")

    broker.emit_after("process_boot")
    flaky.send()
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        broker.join(queue, fail_fast=False)  # the message is dead-lettered on purpose
        worker.join()
    finally:
        worker.stop()
    spans = [s for s in span_exporter.get_finished_spans() if s.name == "mw_flaky"]
    outcomes = sorted((s.attributes["job.attempt"], s.attributes["job.outcome"]) for s in spans)
    assert outcomes == [(1, "retry"), (2, "failure")]
    assert seen == ["mw_flaky", "mw_flaky"]

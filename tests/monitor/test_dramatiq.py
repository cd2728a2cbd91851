"""The monitor on Dramatiq: real ``dramatiq`` workers on a real Redis and the real RabbitMQ."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_jobs.monitor.dramatiq import collector_for_broker, message_due
from tests.integrations.dramatiq_app import APP
from tests.support.processes import AppWorker

from .conftest import RABBITMQ_URL
from .support import Polled, age_grows, ages, depth, poll_until, read_alike, snapshot

dramatiq = pytest.importorskip("dramatiq")

from dramatiq.brokers.rabbitmq import RabbitmqBroker  # noqa: E402
from dramatiq.brokers.redis import RedisBroker  # noqa: E402

pytestmark = pytest.mark.broker

REDIS_DB = 3


def message(queue: str, actor: str, *args: Any) -> Any:
    return dramatiq.Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={})


class Worker(AppWorker):
    def __init__(self, broker_url: str, queue: str, directory: Path) -> None:
        super().__init__(
            directory,
            ("mon_dramatiq_app", APP),
            [sys.executable, "-m", "dramatiq", "mon_dramatiq_app", "--processes", "1",
             "--threads", "2", "--queues", queue],
            {"DQ_BROKER": broker_url, "DQ_QUEUE": queue},
            "dramatiq-worker.log",
        )  # fmt: skip


@pytest.fixture
def redis_broker(redis_url: str) -> Iterator[RedisBroker]:
    broker = RedisBroker(url=redis_url)
    yield broker
    broker.close()


@pytest.fixture
def rabbit_broker(rabbit_queue: str) -> Iterator[RabbitmqBroker]:
    broker = RabbitmqBroker(url=RABBITMQ_URL)
    yield broker
    broker.close()


# --- Redis -------------------------------------------------------------------------------------


def test_redis_backlog_nobody_drains_then_a_worker_drains_it(
    redis_url: str, redis_broker: RedisBroker, workers: Callable[[str, str], Worker]
) -> None:
    queue = "mon-dq"
    redis_broker.declare_queue(queue)
    for i in range(5):
        redis_broker.enqueue(message(queue, "ok", i))
    before = snapshot(redis_url)
    with Polled([collector_for_broker(redis_broker)]) as m:
        s = m.poll()
        assert depth(s, "dramatiq", queue, "waiting") == 5
        for state in ("scheduled", "reserved", "dead"):
            assert depth(s, "dramatiq", queue, state) == 0
        age_grows(m, "dramatiq", queue, s)
        assert snapshot(redis_url) == before, "the monitor changed something in Redis"

        workers(redis_url, queue)
        drained = poll_until(
            m, "the worker to drain the queue", "dramatiq", queue, waiting=0, reserved=0
        )
        assert ages(drained, "dramatiq", queue) == []


def test_redis_delayed_dead_and_reserved_messages_in_their_state(
    redis_url: str, redis_broker: RedisBroker, workers: Callable[[str, str], Worker]
) -> None:
    queue = "mon-dq-states"
    redis_broker.declare_queue(queue)
    redis_broker.enqueue(message(queue, "ok", 1), delay=3_600_000)
    redis_broker.enqueue(message(queue, "boom"))
    redis_broker.enqueue(message(queue, "sleep", 600))
    with Polled([collector_for_broker(redis_broker)]) as m:
        s = m.poll()
        assert depth(s, "dramatiq", queue, "scheduled") == 1
        assert depth(s, "dramatiq", queue, "waiting") == 2
        workers(redis_url, queue)
        s = poll_until(
            m,
            "boom dead-lettered, sleep running, the delayed one still delayed",
            "dramatiq",
            queue,
            dead=1,
            reserved=1,
        )
        # The worker holds the delayed message until it is due: still scheduled, not waiting.
        assert depth(s, "dramatiq", queue, "scheduled") == 1
        assert depth(s, "dramatiq", queue, "waiting") == 0
        assert ages(s, "dramatiq", queue) == []


def test_redis_two_monitors_read_the_same_figures(redis_broker: RedisBroker) -> None:
    queue = "mon-dq-two"
    redis_broker.declare_queue(queue)
    for i in range(3):
        redis_broker.enqueue(message(queue, "ok", i))
    redis_broker.enqueue(message(queue, "ok", 9), delay=60_000)
    collectors = [collector_for_broker(redis_broker) for _ in range(2)]
    readings = read_alike(collectors[:1], collectors[1:])
    assert readings[0].depths["waiting"] == 3


def test_a_delayed_message_made_due_ages_from_its_due_time() -> None:
    # The otel-jobs middleware stamps otel_jobs_due (ms) as a delayed message becomes due.
    published = message("q", "ok").copy(message_timestamp=1_000_000, options={})
    assert message_due(published.encode()) == 1000.0
    due = published.copy(options={"otel_jobs_due": 5_000_000})
    assert message_due(due.encode()) == 5000.0
    assert message_due(b"not a message") is None


# --- RabbitMQ ----------------------------------------------------------------------------------


def test_rabbitmq_backlog_delayed_dead_then_drained_and_no_age(
    rabbit_queue: str, rabbit_broker: RabbitmqBroker, workers: Callable[[str, str], Worker]
) -> None:
    queue = rabbit_queue
    rabbit_broker.declare_queue(queue)
    for i in range(4):
        rabbit_broker.enqueue(message(queue, "ok", i))
    rabbit_broker.enqueue(message(queue, "boom"))
    rabbit_broker.enqueue(message(queue, "ok", 9), delay=3_600_000)
    with Polled([collector_for_broker(rabbit_broker)]) as m:
        s = m.poll()
        assert depth(s, "dramatiq", queue, "waiting") == 5
        assert depth(s, "dramatiq", queue, "scheduled") == 1
        assert depth(s, "dramatiq", queue, "dead") == 0
        assert ages(s, "dramatiq", queue) == []
        assert depth(m.poll(), "dramatiq", queue, "waiting") == 5  # passive: nothing taken

        workers(RABBITMQ_URL, queue)
        s = poll_until(
            m,
            "the worker to drain the queue and dead-letter boom",
            "dramatiq",
            queue,
            waiting=0,
            dead=1,
        )
        assert ages(s, "dramatiq", queue) == []


def test_rabbitmq_two_monitors_read_the_same_figures(
    rabbit_queue: str, rabbit_broker: RabbitmqBroker
) -> None:
    rabbit_broker.declare_queue(rabbit_queue)
    for i in range(2):
        rabbit_broker.enqueue(message(rabbit_queue, "ok", i))
    readings = read_alike(
        [collector_for_broker(rabbit_broker)], [collector_for_broker(rabbit_broker)]
    )
    assert readings[0].depths == {"waiting": 2, "scheduled": 0, "dead": 0}

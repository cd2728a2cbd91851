"""The monitor on Celery: real ``celery worker`` processes on a real Redis and the real RabbitMQ."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from otel_jobs.monitor import celery as celery_monitor
from otel_jobs.monitor.celery import collector_for_app
from tests.support.processes import AppWorker

from .conftest import RABBITMQ_URL
from .support import (
    Polled,
    age_grows,
    ages,
    assert_depths,
    depth,
    poll_until,
    read_alike,
    snapshot,
    wait_for,
)

celery = pytest.importorskip("celery")

pytestmark = pytest.mark.broker

REDIS_DB = 2

# The worker's module, and the app the test publishes with (the same tasks, the same queue).
APP = textwrap.dedent(
    """
    import os
    import time

    from celery import Celery

    app = Celery("mon_celery_app", broker=os.environ["MON_BROKER"])
    app.conf.task_default_queue = os.environ["MON_QUEUE"]
    app.conf.broker_connection_retry_on_startup = True


    @app.task(name="mon.ok")
    def ok(i):
        return i


    @app.task(name="mon.sleep")
    def sleep(seconds):
        time.sleep(seconds)
    """
)


def make_app(broker: str, queue: str) -> Any:
    app = celery.Celery(f"mon-{uuid.uuid4().hex[:6]}", broker=broker)
    app.conf.task_default_queue = queue
    return app


class Worker(AppWorker):
    def __init__(self, broker: str, queue: str, directory: Path) -> None:
        super().__init__(
            directory,
            ("mon_celery_app", APP),
            [sys.executable, "-m", "celery", "-A", "mon_celery_app", "worker", "-P", "solo",
             "-c", "1", "-Q", queue, "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-l", "info"],
            {"MON_BROKER": broker, "MON_QUEUE": queue},
            "celery-worker.log",
        )  # fmt: skip
        wait_for("the worker to be ready", lambda: "ready." in self.log.read_text(), log=self.log)


@pytest.fixture
def publisher(instrumented: Callable[..., Any]) -> None:
    """This process publishes as an instrumented app does: each message stamped with its time."""
    instrumented(frameworks=["celery"], outbound=[], prometheus=False, watchdog=False)


def send(app: Any, name: str, *args: Any, **options: Any) -> None:
    app.send_task(name, args=args, **options)


# --- Redis -------------------------------------------------------------------------------------


def test_redis_backlog_nobody_drains_then_a_worker_drains_it(
    redis_url: str, workers: Callable[[str, str], Worker], publisher: None
) -> None:
    queue = "mon-celery"
    app = make_app(redis_url, queue)
    for i in range(6):
        send(app, "mon.ok", i)
    before = snapshot(redis_url)
    with Polled([collector_for_app(app)]) as m:
        s = m.poll()
        assert_depths(s, "celery", queue, waiting=6, reserved=0, scheduled=0)
        age_grows(m, "celery", queue, s)
        assert snapshot(redis_url) == before, "the monitor changed something in Redis"

        workers(redis_url, queue)
        drained = poll_until(m, "the worker to drain the queue", "celery", queue, waiting=0)
        wait_for("nothing reserved", lambda: depth(m.poll(), "celery", queue, "reserved") == 0)
        assert ages(drained, "celery", queue) == []


def test_redis_messages_without_a_publish_stamp_have_no_age(redis_url: str) -> None:
    # No otel-jobs in the publisher and no ETA: the message carries no time to tell an age from.
    queue = "mon-celery-plain"
    app = make_app(redis_url, queue)
    send(app, "mon.ok", 1)
    send(app, "mon.ok", 2, priority=5)  # another of the queue's priority lists
    with Polled([collector_for_app(app)]) as m:
        s = m.poll()
        assert depth(s, "celery", queue, "waiting") == 2
        assert ages(s, "celery", queue) == []


def test_redis_scheduled_and_reserved_tasks_held_by_a_worker(
    redis_url: str,
    workers: Callable[[str, str], Worker],
    publisher: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = "mon-celery-held"
    app = make_app(redis_url, queue)
    workers(redis_url, queue)
    send(app, "mon.ok", 1, countdown=3600)  # the worker holds it, unacknowledged, until due
    send(app, "mon.sleep", 600)  # running: delivered and not acknowledged
    with Polled([collector_for_app(app)]) as m:
        s = poll_until(m, "one scheduled, one reserved", "celery", queue, scheduled=1, reserved=1)
        assert depth(s, "celery", queue, "waiting") == 0
        assert ages(s, "celery", queue) == []
        assert s.find("otel_jobs_queue_depth", queue=celery_monitor.UNATTRIBUTED) == []
        # Past the read limit, the unacknowledged messages are counted, not read one by one.
        monkeypatch.setattr(celery_monitor, "UNACKED_READ_LIMIT", 1)
        s = m.poll()
        assert depth(s, "celery", celery_monitor.UNATTRIBUTED, "reserved") == 2
        assert depth(s, "celery", queue, "reserved") == 0


def test_redis_two_monitors_read_the_same_figures(redis_url: str, publisher: None) -> None:
    queue = "mon-celery-two"
    app = make_app(redis_url, queue)
    for i in range(4):
        send(app, "mon.ok", i, priority=i * 3)
    readings = read_alike([collector_for_app(app)], [collector_for_app(app)])
    assert readings[0].depths["waiting"] == 4


# --- RabbitMQ ----------------------------------------------------------------------------------


def test_rabbitmq_backlog_then_drained_and_no_age(
    rabbit_queue: str, workers: Callable[[str, str], Worker], publisher: None
) -> None:
    app = make_app(RABBITMQ_URL, rabbit_queue)
    for i in range(5):
        send(app, "mon.ok", i)
    missing = f"{rabbit_queue}-never-declared"
    collector = celery_monitor.CeleryAMQPCollector(app, [rabbit_queue, missing], timeout=5)
    with Polled([collector]) as m:
        s = m.poll()
        assert depth(s, "celery", rabbit_queue, "waiting") == 5
        assert depth(s, "celery", missing, "waiting") == 0
        # AMQP cannot peek at a message: never an age on RabbitMQ.
        assert ages(s, "celery", rabbit_queue) == []
        assert s.value("otel_jobs_monitor_broker_up", framework="celery") == 1
        # Passive declares only: still 5 after a second look, and the queue was not created.
        assert depth(m.poll(), "celery", rabbit_queue, "waiting") == 5

        workers(RABBITMQ_URL, rabbit_queue)
        wait_for(
            "the worker to drain the queue",
            lambda: depth(m.poll(), "celery", rabbit_queue, "waiting") == 0,
        )

    import pika

    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        connection.channel().queue_declare(missing, passive=True)
    connection.close()


def test_rabbitmq_two_monitors_read_the_same_figures(rabbit_queue: str) -> None:
    app = make_app(RABBITMQ_URL, rabbit_queue)
    for i in range(3):
        send(app, "mon.ok", i)
    readings = read_alike([collector_for_app(app)], [collector_for_app(app)])
    assert readings[0].depths == {"waiting": 3}

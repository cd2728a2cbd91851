"""The monitor's loop: deadlines, a hung or failing collector, internal errors, the schedule.

The first tests drive :class:`Monitor` with collectors of their own (one that hangs until
released, one that raises a bug), as dramatiq tests its deadline logic by calling it directly;
the last ones point the real collectors at a server that accepts and never answers: each
gives up by its own timeouts, so its thread is free again and no poll is stuck.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from otel_jobs.monitor import BrokerUnavailable, Collector, Monitor, QueueReading
from otel_jobs.monitor.memory import MemoryCollector
from tests.support import Samples
from tests.support.servers import SilentServer

from .support import Polled, wait_for


class Hung(Collector):
    """Answers only once released; counts the polls it was asked for and the aborts."""

    framework = "hung"

    def __init__(self) -> None:
        super().__init__("hung://nowhere")
        self.release = threading.Event()
        self.polls = 0
        self.aborts = 0

    def poll(self) -> list[QueueReading]:
        self.polls += 1
        self.release.wait(60)
        return [QueueReading("q", {"waiting": 2}, None)]

    def abort(self) -> None:
        self.aborts += 1


class Buggy(Collector):
    framework = "buggy"

    def poll(self) -> list[QueueReading]:
        raise KeyError("a bug in a collector")


class Down(Collector):
    framework = "down"

    def poll(self) -> list[QueueReading]:
        raise BrokerUnavailable("ConnectionError: refused")


def up(samples: Samples, framework: str) -> float:
    return samples.value("otel_jobs_monitor_broker_up", framework=framework)


@pytest.fixture
def healthy() -> MemoryCollector:
    return MemoryCollector({"fine": lambda: (1, 1000.0)}, framework="fine")


def test_a_hung_broker_is_down_at_the_deadline_and_not_asked_again_until_it_answers(
    healthy: MemoryCollector, caplog: pytest.LogCaptureFixture
) -> None:
    hung = Hung()
    with (
        caplog.at_level(logging.WARNING, "otel_jobs.monitor"),
        Polled([hung, healthy], timeout=0.3) as m,
    ):
        s = m.poll()
        assert up(s, "hung") == 0 and up(s, "fine") == 1
        assert s.find("otel_jobs_queue_depth", framework="hung") == []  # unknown, not 0
        assert (
            s.value("otel_jobs_queue_depth", framework="fine", queue="fine", state="waiting") == 1
        )
        assert hung.aborts == 1
        s = m.poll()  # still hung: not asked a second time, still down, the other still read
        assert hung.polls == 1 and up(s, "hung") == 0 and up(s, "fine") == 1
        hung.release.set()
        s = wait_for("the hung broker to answer", lambda: (x := m.poll()) and up(x, "hung") and x)
        assert s.value("otel_jobs_queue_depth", framework="hung", queue="q", state="waiting") == 2
    messages = [r.getMessage() for r in caplog.records]
    down = [t for t in messages if "cannot read hung" in t]
    assert len(down) == 1 and "no answer within 0.3s" in down[0]
    assert len([t for t in messages if "hung at hung://nowhere answers again" in t]) == 1


def test_a_poll_that_overran_its_deadline_is_in_the_poll_duration_when_it_returns(
    healthy: MemoryCollector,
) -> None:
    hung = Hung()
    duration = "otel_jobs_monitor_poll_duration_seconds"
    with Polled([hung, healthy], timeout=0.3) as m:
        s = m.poll()
        assert up(s, "hung") == 0
        assert s.find(f"{duration}_count", framework="hung") in ([], [0.0])
        threading.Event().wait(0.5)  # the poll has taken 0.8 s and more when it returns
        hung.release.set()
        s = wait_for(
            "the overdue poll to be counted",
            lambda: (
                (x := m.scrape()) and x.find(f"{duration}_count", framework="hung") == [1.0] and x
            ),
        )
        assert s.value(f"{duration}_sum", framework="hung") >= 0.8
        assert s.value(f"{duration}_bucket", framework="hung", le="0.5") == 0
        # The next poll, answered at once, is counted as well; and the healthy one's every poll.
        s = m.poll()
        assert s.value(f"{duration}_count", framework="hung") == 2
        assert s.value(f"{duration}_count", framework="fine") == 2


@pytest.mark.internal_errors("monitor.buggy")
def test_a_bug_in_a_collector_is_counted_logged_once_and_the_loop_goes_on(
    healthy: MemoryCollector, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, "otel_jobs"), Polled([Buggy("b://x"), healthy]) as m:
        first = m.poll().value("otel_jobs_internal_errors_total", component="monitor.buggy")
        s = m.poll()
    assert s.value("otel_jobs_internal_errors_total", component="monitor.buggy") == first + 1
    assert up(s, "buggy") == 0 and up(s, "fine") == 1
    logged = [r for r in caplog.records if "internal error in monitor.buggy" in r.getMessage()]
    assert len(logged) <= 1  # once per component and type in the process (maybe before this test)


def test_a_broker_that_refuses_is_down_with_its_reason_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "otel_jobs.monitor"), Polled([Down("d://x")]) as m:
        for _ in range(3):
            s = m.poll()
    assert up(s, "down") == 0
    logged = [r.getMessage() for r in caplog.records if "cannot read down" in r.getMessage()]
    assert len(logged) == 1 and "ConnectionError: refused" in logged[0]
    assert "otel_jobs_monitor_broker_up" in logged[0]


def test_run_polls_until_stopped(healthy: MemoryCollector) -> None:
    calls: list[int] = []
    stop = threading.Event()

    def read() -> tuple[int, float | None]:
        calls.append(1)
        if len(calls) >= 3:
            stop.set()
        return 0, None

    monitor = Monitor([MemoryCollector({"q": read})], interval=0.05, timeout=0.05)
    thread = threading.Thread(target=monitor.run, args=(stop,))
    thread.start()
    thread.join(60)
    monitor.close()
    assert not thread.is_alive() and len(calls) >= 3


# --- the real collectors against a server that never answers ------------------------------------


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    with SilentServer() as server:
        yield server


def _gives_up_by_itself(collector: Collector) -> None:
    # Its sockets are not closed for it when a poll overruns (abort does nothing here): only the
    # collector's own connect and read timeouts can end its poll.
    collector.abort = lambda: None  # type: ignore[method-assign]
    with Polled([collector], timeout=0.5) as m:
        assert up(m.poll(), collector.framework) == 0

        # Its own timeouts end the poll: the next poll asks it again and it fails again, with a
        # reason of its own rather than the previous poll still running.
        def asked_again() -> bool:
            m.poll()
            ((_, outcome),) = m.monitor.outcomes()
            return not outcome.up and "has not returned" not in outcome.reason

        wait_for("the collector to give up by itself", asked_again, timeout=60)


def _redis_collector(kind: str, url: str) -> Collector:
    """The collector of ``kind`` on the Redis at ``url``, built as the command builds it (each
    makes its Redis client its own way: from the URL, from the app's connection or pool)."""
    if kind == "rq":
        from otel_jobs.monitor.rq import RQCollector

        return RQCollector(url, timeout=0.5)
    if kind == "arq":
        from otel_jobs.monitor.arq import ArqCollector

        return ArqCollector(url, timeout=0.5)
    if kind == "celery":
        celery = pytest.importorskip("celery")
        from otel_jobs.monitor.celery import collector_for_app

        return collector_for_app(celery.Celery("silent", broker=url), timeout=0.5)
    if kind == "dramatiq":
        from dramatiq.brokers.redis import RedisBroker

        from otel_jobs.monitor.dramatiq import collector_for_broker

        broker = RedisBroker(url=url)
        broker.declare_queue("q")
        return collector_for_broker(broker, timeout=0.5)
    huey = pytest.importorskip("huey")
    from otel_jobs.monitor.huey import HueyCollector

    return HueyCollector(huey.RedisHuey("silent", url=url), timeout=0.5)


@pytest.mark.parametrize("kind", ["rq", "arq", "celery", "dramatiq", "huey"])
def test_redis_collectors_give_up_on_a_silent_server(silent: SilentServer, kind: str) -> None:
    _gives_up_by_itself(_redis_collector(kind, f"redis://127.0.0.1:{silent.port}/0"))


def test_celery_on_rabbitmq_gives_up_on_a_silent_server(silent: SilentServer) -> None:
    celery = pytest.importorskip("celery")
    from otel_jobs.monitor.celery import collector_for_app

    app = celery.Celery("silent", broker=f"amqp://guest:guest@127.0.0.1:{silent.port}//")
    _gives_up_by_itself(collector_for_app(app, timeout=0.5))


def test_dramatiq_on_rabbitmq_gives_up_on_a_silent_server(silent: SilentServer) -> None:
    pytest.importorskip("pika")
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    from otel_jobs.monitor.dramatiq import collector_for_broker

    broker = RabbitmqBroker(url=f"amqp://guest:guest@127.0.0.1:{silent.port}")
    broker.declare_queue("q")
    try:
        _gives_up_by_itself(collector_for_broker(broker, timeout=0.5))
    finally:
        broker.close()

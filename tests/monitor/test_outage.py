"""A broker that goes away and comes back, under a real ``otel-jobs monitor`` process.

Redis: a ``redis-server`` of the test's own, stopped and started again on the same port, under
one monitor watching all five frameworks on it. RabbitMQ: reached through a TCP proxy that is
stopped (every connection cut, new ones refused) and started again, under a monitor watching
Celery and Dramatiq through it. Each time: ``otel_jobs_monitor_broker_up`` goes to 0 while the
monitor keeps serving ``/metrics``, then back to 1, the queues' series with it; one log line
when each broker goes down, one when it answers again; and the monitor stops cleanly.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Samples, require_rabbitmq
from tests.support.servers import Forwarder

from .support import MonitorProcess, RedisServer

pytestmark = pytest.mark.broker

APP = textwrap.dedent(
    """
    import os

    import dramatiq
    from celery import Celery
    from huey import RedisHuey

    URL = os.environ["MON_BROKER"]
    if URL.startswith("redis"):
        from dramatiq.brokers.redis import RedisBroker as Broker
    else:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker as Broker

    app = Celery("mon_outage", broker=URL)
    app.conf.task_default_queue = "outage"
    broker = Broker(url=URL)
    dramatiq.set_broker(broker)
    huey = RedisHuey("outage", url=URL) if URL.startswith("redis") else None


    @dramatiq.actor(queue_name="outage")
    def act():
        pass
    """
)


def brokers_up(samples: Samples) -> dict[str, float]:
    return {
        s.labels["framework"]: s.value
        for s in samples.samples
        if s.name == "otel_jobs_monitor_broker_up"
    }


def run_outage(monitor: MonitorProcess, frameworks: set[str], stop: object, start: object) -> None:
    def all_are(value: float) -> object:
        return lambda s: (
            (found := brokers_up(s)).keys() == frameworks and set(found.values()) == {value}
        )

    monitor.wait_for("every broker up", all_are(1.0))
    assert monitor.wait_for("the queues read", lambda s: s.find("otel_jobs_queue_depth"))
    stop()  # type: ignore[operator]
    down = monitor.wait_for("every broker down", all_are(0.0))
    assert down.find("otel_jobs_queue_depth") == []  # unknown while down, not zero
    # Still serving, still polling: down stays down, no crash, no poll stuck.
    monitor.wait_for("another poll while down", all_are(0.0))
    start()  # type: ignore[operator]
    back = monitor.wait_for("every broker up again", all_are(1.0))
    assert {s.labels["framework"] for s in back.samples if s.name == "otel_jobs_queue_depth"} == (
        frameworks
    )
    assert monitor.stop() == 0, monitor.tail()
    log = monitor.tail()
    for framework in frameworks:
        assert log.count(f"cannot read {framework} at") == 1, log
        assert log.count(f"{framework} at") >= 2, log
    assert log.count(" answers again") == len(frameworks), log
    assert "Traceback" not in log, log


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "mon_outage_app.py").write_text(APP)
    return tmp_path


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_redis_goes_away_and_comes_back(app_dir: Path, own_redis: RedisServer) -> None:
    url = own_redis.url(0)
    monitor = MonitorProcess(
        ["--celery-app", "mon_outage_app:app", "--dramatiq-broker", "mon_outage_app:broker",
         "--huey", "mon_outage_app.huey", "--rq-redis-url", url, "--arq-redis-url", url,
         "--queues", "rq=outage", "--interval", "0.5"],
        app_dir / "monitor.log", cwd=app_dir, MON_BROKER=url,
    )  # fmt: skip
    try:
        run_outage(
            monitor, {"celery", "rq", "dramatiq", "arq", "huey"}, own_redis.stop, own_redis.start
        )
    finally:
        monitor.stop()


def test_rabbitmq_goes_away_and_comes_back(app_dir: Path) -> None:
    require_rabbitmq()
    proxy = Forwarder(("127.0.0.1", 5672)).start()
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}"
    monitor = MonitorProcess(
        ["--celery-app", "mon_outage_app:app", "--dramatiq-broker", "mon_outage_app:broker",
         "--interval", "0.5", "--queues", "outage-monitor-test"],
        app_dir / "monitor.log", cwd=app_dir, MON_BROKER=url,
    )  # fmt: skip
    try:
        run_outage(monitor, {"celery", "dramatiq"}, proxy.stop, proxy.start)
        # What was logged while it started (held until the brokers answered) is in the log, once.
        assert monitor.tail().count("runs lost with their worker are not looked for") == 2
    finally:
        monitor.stop()
        proxy.stop()

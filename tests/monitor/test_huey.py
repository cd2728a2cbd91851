"""The monitor on Huey: a real ``huey_consumer`` on a real Redis."""

from __future__ import annotations

import datetime
import importlib
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from otel_jobs.monitor.huey import HueyCollector

from .support import Polled, age_grows, ages, depth, poll_until, snapshot

huey_lib = pytest.importorskip("huey")

pytestmark = pytest.mark.broker

REDIS_DB = 5

APP = textwrap.dedent(
    """
    import os
    import time

    from huey import PriorityRedisHuey, RedisHuey

    kind = PriorityRedisHuey if os.environ.get("MON_PRIORITY") == "1" else RedisHuey
    huey = kind(os.environ["MON_NAME"], url=os.environ["MON_BROKER"])


    @huey.task()
    def ok(i):
        return i


    @huey.task()
    def sleep(seconds):
        time.sleep(seconds)
    """
)


class App:
    """The app module, imported here (to enqueue) and by the consumer (to run the tasks)."""

    def __init__(self, directory: Path, url: str, priority: bool = False) -> None:
        self.name = f"mon_huey_{uuid.uuid4().hex[:8]}"
        self.directory = directory
        self.env = {
            "MON_NAME": self.name,
            "MON_BROKER": url,
            "MON_PRIORITY": "1" if priority else "0",
        }
        (directory / f"{self.name}.py").write_text(APP)
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        sys.path.insert(0, str(directory))
        try:
            self.module: ModuleType = importlib.import_module(self.name)
        finally:
            sys.path.remove(str(directory))
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.huey = self.module.huey
        self.procs: list[subprocess.Popen[bytes]] = []

    def consumer(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(self.env, PYTHONPATH=str(self.directory))
        with open(self.directory / "consumer.log", "ab") as out:
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "huey.bin.huey_consumer",
                        f"{self.name}.huey",
                        "-w",
                        "2",
                        "-k",
                        "thread",
                        "-d",
                        "0.1",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.directory,
                    start_new_session=True,
                )  # fmt: skip
            )
        return self.procs[-1]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture
def app(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., App]]:
    made: list[App] = []

    def make(priority: bool = False) -> App:
        made.append(App(tmp_path, redis_url, priority))
        return made[-1]

    yield make
    for a in made:
        a.stop()


def test_a_backlog_nobody_drains_then_a_consumer_drains_it(
    app: Callable[..., App], redis_url: str
) -> None:
    a = app()
    # Huey's messages carry no publish time: a plain head message has no age to tell.
    for i in range(3):
        a.module.ok(i)
    with Polled([HueyCollector(a.huey)]) as m:
        s = m.poll()
        assert depth(s, "huey", a.name, "waiting") == 3
        assert depth(s, "huey", a.name, "scheduled") == 0
        assert ages(s, "huey", a.name) == []


def test_a_head_with_a_due_time_ages_and_a_consumer_drains_the_queue(
    app: Callable[..., App], redis_url: str
) -> None:
    a = app()
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=2)
    a.module.ok.schedule((0,), eta=past)  # due two minutes ago, first in the queue
    for i in range(4):
        a.module.ok(i)
    before = snapshot(redis_url)
    with Polled([HueyCollector(a.huey)]) as m:
        s = m.poll()
        assert depth(s, "huey", a.name, "waiting") == 5
        (age,) = ages(s, "huey", a.name)
        assert age >= 120
        age_grows(m, "huey", a.name, s)
        assert snapshot(redis_url) == before, "the monitor changed something in Redis"

        a.consumer()
        drained = poll_until(m, "the consumer to drain the queue", "huey", a.name, waiting=0)
        assert ages(drained, "huey", a.name) == []


def test_a_delayed_task_is_scheduled_once_the_consumer_has_read_it(
    app: Callable[..., App],
) -> None:
    a = app()
    a.consumer()
    a.module.ok.schedule((1,), delay=3600)
    with Polled([HueyCollector(a.huey)]) as m:
        s = poll_until(m, "the delayed task in the schedule", "huey", a.name, scheduled=1)
        assert depth(s, "huey", a.name, "waiting") == 0


def test_two_monitors_agree_and_a_priority_queue_is_counted(app: Callable[..., App]) -> None:
    plain, ranked = app(), app(priority=True)
    plain.module.ok(1)
    for i in range(3):
        ranked.module.ok(i)
    with (
        Polled([HueyCollector(plain.huey), HueyCollector(ranked.huey)]) as x,
        Polled([HueyCollector(plain.huey), HueyCollector(ranked.huey)]) as y,
    ):
        x.poll()
        y.poll()
        one, two = x.monitor.outcomes(), y.monitor.outcomes()
        assert [o.readings for _, o in one] == [o.readings for _, o in two]
        s = x.scrape()
    assert depth(s, "huey", ranked.name, "waiting") == 3
    assert ages(s, "huey", ranked.name) == []

"""Helpers of the monitor's tests: a Redis of their own, the monitor in-process (polled on
demand, scraped on its real ``/metrics``) or as a subprocess.

* :class:`RedisServer` is ``redis-server --port N --save ''`` on a free port, stopped and
  restarted at will (the outage tests), and the per-framework tests' Redis: the monitor's
  tests never touch the shared Redis on 6379.
* :class:`Polled` is a :class:`~otel_jobs.monitor.Monitor` served on a free port, polled when
  the test says so: :meth:`Polled.poll` returns the parsed scrape.
* :class:`MonitorProcess` is ``python -m otel_jobs monitor ...``, scraped until it shows what
  the test waits for.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from otel_jobs.core.exposition import MetricsServer, serve
from otel_jobs.monitor import Collector, Monitor, QueueReading
from tests import support
from tests.support import Samples, free_port, scrape
from tests.support.waiting import WAIT, wait_for

ROOT = Path(__file__).resolve().parents[2]


def depth(samples: Samples, framework: str, queue: str, state: str) -> float:
    return samples.value("otel_jobs_queue_depth", framework=framework, queue=queue, state=state)


def assert_depths(samples: Samples, framework: str, queue: str, **states: float) -> None:
    """The queue's depth in each of ``states`` is the one given."""
    for state, n in states.items():
        assert depth(samples, framework, queue, state) == n, state


def ages(samples: Samples, framework: str, queue: str) -> list[float]:
    return samples.find(
        "otel_jobs_queue_oldest_waiting_age_seconds", framework=framework, queue=queue
    )


def age_grows(monitor: Polled, framework: str, queue: str, samples: Samples) -> Samples:
    """Polls until the queue's oldest waiting age is past the one ``samples`` shows (nobody
    drains it); that scrape."""
    (age,) = ages(samples, framework, queue)
    return wait_for(
        "the oldest age to grow",
        lambda: (x := monitor.poll()) and ages(x, framework, queue)[0] > age and x,
    )


def poll_until(monitor: Polled, what: str, framework: str, queue: str, **states: float) -> Samples:
    """Polls until the queue's depth in each of ``states`` is the one given; that scrape."""
    return wait_for(
        what,
        lambda: (
            (x := monitor.poll())
            and all(depth(x, framework, queue, state) == n for state, n in states.items())
            and x
        ),
    )


def read_alike(a: Sequence[Collector], b: Sequence[Collector]) -> list[QueueReading]:
    """Two monitors (collectors ``a`` and ``b`` on the same broker) polled once each: both
    reach it and read the same figures; those readings."""
    with Polled(a) as x, Polled(b) as y:
        x.poll()
        y.poll()
        ((_, one),) = x.monitor.outcomes()
        ((_, two),) = y.monitor.outcomes()
    assert one.up and two.up
    assert one.readings == two.readings
    return one.readings


def require_binary(name: str, package: str) -> str:
    """The path of program ``name`` of Debian's ``package``; skip (CI: fail) without it."""
    return support.require_binary(name, f"apt-get install -y {package}")


class RedisServer:
    """A ``redis-server`` of the test's own on a free port (no persistence)."""

    def __init__(self, directory: Path) -> None:
        self.binary = require_binary("redis-server", "redis-server")
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.directory)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

        def answers() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        wait_for(f"redis-server on {self.port}", answers, timeout=30)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self.proc = None


class Polled:
    """A Monitor served on a free port, polled when the test asks (``with Polled(...) as m``)."""

    def __init__(self, collectors: Sequence[Collector], timeout: float = 5.0) -> None:
        self.monitor = Monitor(collectors, interval=3600, timeout=timeout)
        self.server: MetricsServer = serve(self.monitor.registry, "127.0.0.1", 0)

    def poll(self) -> Samples:
        self.monitor.poll()
        return scrape(self.server.url)

    def scrape(self) -> Samples:
        return scrape(self.server.url)

    def __enter__(self) -> Polled:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        self.monitor.close()


class MonitorProcess:
    """``python -m otel_jobs monitor <args>`` on a free port, its log in ``log``."""

    def __init__(self, args: Sequence[str], log: Path, cwd: Path | None = None, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.log = log
        environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(cwd or ""), str(ROOT)) if p)
        environ.update(env)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "otel_jobs", "monitor", "--port", str(self.port), *args],
                stdout=out, stderr=subprocess.STDOUT, env=environ, cwd=cwd or ROOT,
            )  # fmt: skip

    def wait_for(self, what: str, done: Callable[[Samples], Any], timeout: float = WAIT) -> Samples:
        """Scrape until ``done(samples)``; fails at once if the monitor exits."""
        last: list[Samples] = []

        def check() -> Samples | None:
            if self.proc.poll() is not None:
                pytest.fail(f"the monitor exited ({self.proc.returncode}):\n{self.tail()}")
            samples = scrape(self.url)
            last[:] = [samples]
            return samples if done(samples) else None

        try:
            return wait_for(what, check, timeout)
        except AssertionError:
            text = last[0].text if last else "(no scrape)"
            pytest.fail(
                f"timed out waiting for {what}\n--- /metrics\n{text}\n--- log\n{self.tail()}"
            )

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=30)


def snapshot(url: str) -> dict[bytes, object]:
    """Every key of the database with its content (a list in order, a sorted set with its scores,
    a hash, a set, a string): equal before and after the monitor polls if it changed nothing."""
    import redis

    client = redis.Redis.from_url(url)
    read = {
        b"list": lambda k: client.lrange(k, 0, -1),
        b"zset": lambda k: client.zrange(k, 0, -1, withscores=True),
        b"hash": client.hgetall,
        b"set": client.smembers,
        b"string": client.get,
    }
    try:
        return {
            key: (kind, read[kind](key) if kind in read else None)
            for key in client.scan_iter(count=1000)
            for kind in [client.type(key)]
        }
    finally:
        client.close()

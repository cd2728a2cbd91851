"""Helpers of the integration tests: worker processes on the real brokers, polled on /metrics.

* ``wait_for(what, check)`` polls ``check`` until it returns something true (a generous deadline
  on a shared, slow machine: never a timing assertion); with ``log=`` a failure shows its tail.
* ``worker_env(**extra)`` is this process's environment without its ``OTEL_*`` settings (the
  worker configures itself), plus ``extra``.
* ``start(command, log, env, cwd)`` starts a worker with its output in ``log``; ``stop(proc)``
  stops it with a signal (killed if it does not exit) and returns its exit code;
  ``kill_group(proc)`` kills a worker started with ``new_session=True`` and all its processes.
* ``GroupWorker`` is a worker (with forked processes) scraped on its /metrics until it settles.
* ``purge_dramatiq`` / ``purge_huey`` delete what a test queue left on its broker.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import Samples, scrape

WAIT = 90.0  # seconds: generous, the machine is shared and slow


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float = WAIT,
    interval: float = 0.2,
    log: Path | None = None,
) -> Any:
    """Poll ``check`` until it returns something true; an OSError or AssertionError is retried."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, AssertionError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    tail = f"\n{log.read_text(errors='replace')[-4000:]}" if log is not None else ""
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}{tail}")


def worker_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without ``OTEL_*`` (the test's own settings), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(extra)
    return env


def start(
    command: list[str],
    log: Path,
    env: dict[str, str],
    cwd: Path | None = None,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``command`` with its stdout and stderr in ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )  # fmt: skip


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
    """Send ``sig`` and wait for the exit (killed after ``timeout``); the exit code."""
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a worker started in a session of its own, with every process of its group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # a hung job never returns: no graceful stop
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


class GroupWorker:
    """A worker in a session of its own (its forked processes too), serving ``url``."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        kill_group(self.proc)

    def wait_for(self, done: Callable[[Samples], bool], what: str, timeout: float = 120) -> Samples:
        """Poll /metrics until ``done(samples)``; fails at once if the worker exits."""
        deadline = time.monotonic() + timeout
        last: Samples | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                name = type(self).__name__.lower()
                pytest.fail(f"{name} exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                last = scrape(self.url)
            except OSError:
                last = None
            if last is not None and done(last):
                return last
            time.sleep(0.3)
        text = last.text if last is not None else "(no scrape)"
        pytest.fail(f"timed out waiting for {what}\n--- /metrics\n{text}\n--- log\n{self.tail()}")

    def wait_serving(self) -> Samples:
        """Until /metrics is served and shows the watchdog's ticks."""
        return self.wait_for(
            lambda s: "otel_jobs_watchdog_last_tick_timestamp_seconds" in s.names(), "/metrics"
        )

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def delete_keys(redis_url: str, *patterns: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = [key for pattern in patterns for key in client.scan_iter(pattern)]
    if keys:
        client.delete(*keys)
    client.close()


def purge_dramatiq(broker_url: str, queue: str) -> None:
    """Delete a Dramatiq queue (and its delay and dead-letter queues) on Redis or RabbitMQ."""
    if broker_url.startswith("redis"):
        # dramatiq:<queue>* and the per worker, per queue acks
        delete_keys(broker_url, f"dramatiq:{queue}*", f"dramatiq:__acks__.*.{queue}*")
        return
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    channel = connection.channel()
    for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
        channel.queue_delete(name)
    connection.close()


def purge_huey(redis_url: str, name: str) -> None:
    """Delete the keys of the Huey instance ``name`` on Redis."""
    clean = re.sub("[^A-Za-z0-9_]", "", name)  # the name RedisStorage uses in its keys
    delete_keys(redis_url, f"huey.*.{clean}")

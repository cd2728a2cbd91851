"""Helpers of the lost-run tests: real workers in sessions of their own, killed with their group.

* :class:`Worker` is a worker command started in a session of its own with its ``/metrics`` on
  a free port; ``kill()`` sends SIGKILL to its whole process group (main process, pool
  children, work horses), ``stop()`` a graceful signal;
* :func:`wait_lost` polls a monitor until a run is counted lost, checking on the way that it is
  counted at the first poll after its lease expired on the Redis clock (the documented bound:
  the lease TTL plus one poll), never before;
* :func:`lease_of` finds the lease entry of a job id.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from otel_jobs.core.lease import KEY_LEASE, KEY_LEASES
from tests.support import Samples, free_port, scrape

from ..support import ROOT, wait_for
from .test_detector import listed

__all__ = ["ROOT", "Worker", "lease_of", "listed", "wait_for", "wait_lost"]


class Worker:
    """A worker process group; ``url`` its ``/metrics``."""

    def __init__(self, command: list[str], log: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.log = log
        environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        environ.update(
            PYTHONPATH=str(ROOT), LOST_PORT=str(self.port), LOST_WORKER="1", PYTHONUNBUFFERED="1"
        )
        environ.update({k: v.replace("{port}", str(self.port)) for k, v in env.items()})
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def wait_serving(self) -> Samples:
        return self.wait_for(
            "/metrics", lambda s: "otel_jobs_watchdog_last_tick_timestamp_seconds" in s.names()
        )

    def wait_for(self, what: str, done: Callable[[Samples], Any]) -> Samples:
        def check() -> Samples | None:
            if self.proc.poll() is not None:
                pytest.fail(f"the worker exited ({self.proc.returncode}):\n{self.tail()}")
            samples = scrape(self.url)
            return samples if done(samples) else None

        result: Samples = wait_for(what, check, log=self.log)
        return result

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def lease_of(url: str, job_id: str) -> tuple[str, float] | None:
    """``(lease id, expiry in ms)`` of the lease listing ``job_id``, if any."""
    client: Any = redis.Redis.from_url(url, decode_responses=True)
    try:
        for lease, score in client.zrange(KEY_LEASES, 0, -1, withscores=True):
            for name, value in client.hgetall(KEY_LEASE + lease).items():
                if name.startswith("run:") and json.loads(value).get("job_id") == job_id:
                    return lease, score
        return None
    finally:
        client.close()


def redis_ms(url: str) -> float:
    client: Any = redis.Redis.from_url(url)
    try:
        seconds, micros = client.time()
        return seconds * 1000 + micros / 1000
    finally:
        client.close()


def wait_lost(
    poll: Callable[[], Samples], lease_url: str, job_id: str, count: Callable[[Samples], float]
) -> Samples:
    """Poll until ``count(samples)`` is 1; a poll that starts after the run's lease expired (on
    the Redis clock) must count it, and no poll before may."""
    found = lease_of(lease_url, job_id)
    assert found is not None, f"no lease lists {job_id}"
    _, expiry = found

    wrong: list[str] = []

    def check() -> Samples | None:
        expired = redis_ms(lease_url) > expiry
        samples = poll()
        counted = count(samples)
        if not expired and counted:
            wrong.append(f"counted {counted} before its lease expired")
        if expired and counted != 1:
            wrong.append(
                f"counted {counted} at the first poll after its lease expired "
                f"(lease then: {lease_of(lease_url, job_id)}, read first: {found})"
            )
        return samples if expired else None

    result: Samples = wait_for(f"{job_id} counted lost", check)
    assert wrong == [], wrong
    return result


def python() -> str:
    return sys.executable

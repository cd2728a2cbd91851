"""Helpers of the lost-run tests: real workers in sessions of their own, killed with their group.

* :class:`Worker` is a worker command started in a session of its own with its ``/metrics`` on
  a free port; ``kill()`` sends SIGKILL to its whole process group (main process, pool
  children, work horses), ``stop()`` a graceful signal;
* :func:`wait_lost` polls a monitor until a run is counted lost, checking on the way that it is
  counted at the first poll after its lease expired on the Redis clock (the documented bound:
  the lease TTL plus one poll), never before;
* :func:`lease_of` finds the lease entry of a job id;
* :func:`killed_each_time`: a poison job run by one worker after another, each killed by it;
* :func:`finished_once_more`: the run handed out again finished by a second worker, once.
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

__all__ = [
    "ROOT",
    "Worker",
    "Workers",
    "counters",
    "finished_once_more",
    "killed_each_time",
    "lease_of",
    "listed",
    "previous_of",
    "quiet_after",
    "wait_for",
    "wait_lost",
]


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


class Workers:
    """Workers of one ``command`` started one after another (logs ``worker-<n>.log`` in
    ``tmp``) with the environment of the lost-run apps: broker ``url``, ``queue``, a 2 s lease
    TTL and ``env``; each waited for until it serves ``/metrics`` when ``serving``."""

    def __init__(
        self, command: list[str], tmp: Path, url: str, queue: str, serving: bool, **env: str
    ) -> None:
        self.command, self.tmp, self.serving = command, tmp, serving
        self.env = {
            "LOST_BROKER": url, "LOST_QUEUE": queue, "LOST_DIR": str(tmp),
            "OTEL_JOBS_LEASE_TTL": "2", **env,
        }  # fmt: skip
        self.started: list[Worker] = []

    def __call__(self, log: str = "") -> Worker:
        log = log or f"worker-{len(self.started)}.log"
        worker = Worker(self.command, self.tmp / log, **self.env)
        self.started.append(worker)
        if self.serving:
            worker.wait_serving()
        return worker

    def kill(self) -> None:
        for worker in self.started:
            worker.kill()


def counters(framework: str) -> tuple[Callable[..., float], Callable[..., float]]:
    """``lost(samples, job, queue)`` and ``requeued(samples, job, queue)`` of ``framework``: its
    ``otel_jobs_runs_lost_total`` and ``otel_jobs_runs_requeued_total``."""

    def lost(samples: Samples, job: str, queue: str) -> float:
        return samples.total(
            "otel_jobs_runs_lost_total", framework=framework, job_name=job, queue=queue
        )

    def requeued(samples: Samples, job: str, queue: str) -> float:
        return samples.total(
            "otel_jobs_runs_requeued_total", framework=framework, job_name=job, queue=queue
        )

    return lost, requeued


def killed_each_time(
    times: int, start: Callable[[], Worker], attempts: Path, counted: Callable[[], float], what: str
) -> None:
    """``times`` workers in turn, each started by ``start()``, run the poison job ``what``, which
    kills each one: after each, the job ran once more (a line in ``attempts``) and the monitor
    counts one more loss (``counted()``, a poll)."""
    for attempt in range(1, times + 1):
        worker = start()

        def died(worker: Worker = worker) -> bool:
            return worker.proc.poll() is not None

        wait_for(f"the poison {what} to kill its worker", died, log=worker.log)
        assert len(attempts.read_text().splitlines()) == attempt

        def lost(attempt: int = attempt) -> bool:
            return counted() == attempt

        wait_for(f"loss {attempt} counted", lost)


def finished_once_more(
    worker: Worker, tmp: Path, run: str, job_name: str, queue: str, **finished: str
) -> Samples:
    """The run ``run`` of ``job_name`` handed out again done by ``worker`` (its file
    ``<run>.done`` in ``tmp``), counted as finished (``finished``: more labels) and once as
    redelivered on its ``/metrics``."""
    wait_for("the run handed out again done", (tmp / f"{run}.done").exists, log=worker.log)
    samples = worker.wait_for(
        "the run finished",
        lambda s: s.total("otel_jobs_runs_finished_total", job_name=job_name, **finished) >= 1,
    )
    assert samples.value("otel_jobs_runs_redelivered_total", job_name=job_name, queue=queue) == 1
    return samples


def quiet_after(
    worker: Worker, tmp: Path, send: Callable[[], Any], poll: Callable[[], Samples]
) -> Samples:
    """A quick job (``send()``, its file ``q1.done`` in ``tmp``) through ``worker``, then three
    more monitor polls: the last one's samples (nothing more must be counted or run)."""
    send()
    wait_for("a quick job", (tmp / "q1.done").exists, log=worker.log)
    for _ in range(3):
        samples = poll()
    return samples


def previous_of(tmp: Path, run: str) -> dict[str, Any]:
    """What the run ``run`` handed out again read as ``previous_attempt`` (lost_apps.page_body)."""
    found: dict[str, Any] = json.loads((tmp / f"{run}.previous").read_text())
    return found


def python() -> str:
    return sys.executable

"""Helpers of the RQ tests: real ``rq worker`` processes started on the real Redis.

``launch_workers(tmp_path)`` yields ``start(*queues, worker_class=..., jobs=..., url=...,
instrument=True, env_extra=...)``, which starts ``rq worker -c tests.integrations.rq_settings`` (the settings
module calls ``otel_jobs.instrument()`` at start-up) on a free /metrics port and waits until it
listens; every worker and its work horses are killed when the ``with`` block ends.
``redis_connection(url)`` is a connection to the tests' Redis, ``empty_redis_db(url)`` one to a
Redis database emptied before and after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import Redis
from rq.job import Job, JobStatus

from tests.integrations.workers import wait_for
from tests.support import Samples, free_port, require_redis, scrape

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/9"
JOBS = "tests.integrations.rq_jobs"


@dataclass
class RQWorker:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def metrics(self) -> Samples:
        return scrape(self.url)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def finished(self, **labels: str) -> float:
        return self.metrics().total("otel_jobs_runs_finished_total", **labels)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def launch_workers(tmp_path: Path) -> Iterator[Callable[..., RQWorker]]:
    """See the module docstring."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        *queues: str,
        worker_class: str = "rq.Worker",
        jobs: dict[str, Any] | None = None,
        url: str = REDIS_URL,
        instrument: bool = True,
        wait_ready: bool = True,
        env_extra: dict[str, str] | None = None,
    ) -> RQWorker:
        port = free_port()
        env = {
            **os.environ,
            "OTEL_JOBS_PROMETHEUS_PORT": str(port),
            "OTEL_JOBS_FRAMEWORKS": "rq",
            "OTEL_JOBS_TEST_JOBS": json.dumps(jobs or {}),
            "OTEL_JOBS_TEST_NO_INSTRUMENT": "" if instrument else "1",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        env.update(env_extra or {})
        log = tmp_path / f"worker-{port}.log"
        command = [
            sys.executable, "-m", "rq.cli", "worker", "-c", "tests.integrations.rq_settings",
            "-u", url, "-w", worker_class, "--name", f"otj-{port}", *queues,
        ]  # fmt: skip
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        worker = RQWorker(proc, f"http://127.0.0.1:{port}/metrics", log)
        if wait_ready:
            wait_for(
                f"the worker to start (log: {log})",
                lambda: proc.poll() is None and "Listening on" in worker.output(),
            )
            if instrument:
                wait_for("its /metrics", worker.metrics)
        return worker

    try:
        yield start
    finally:
        _stop(procs)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        kill_tree(proc)


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Kill a worker and its work horses (which run in process groups of their own)."""
    for child in _children(proc.pid):
        _kill(child)
    _kill(proc.pid)
    proc.wait(timeout=30)


def redis_connection(url: str = REDIS_URL) -> Redis:
    """A connection to the Redis database ``url`` (the test is skipped when Redis is down); a
    context manager that closes it."""
    require_redis()
    return Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)


@contextmanager
def empty_redis_db(url: str) -> Iterator[Redis]:
    """A connection to the Redis database ``url``, emptied before and after."""
    connection = redis_connection(url)
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


def statuses(jobs: list[Job]) -> list[str]:
    return [job.get_status(refresh=True) for job in jobs]


def all_done(jobs: list[Job]) -> bool:
    return all(s in (JobStatus.FINISHED, JobStatus.FAILED) for s in statuses(jobs))

"""Running one of examples/ as its README says: its worker, then its enqueue script.

The example tests of Dramatiq, Huey and arq run a worker whose stuck job must show as stalled on
its ``/metrics`` after three healthy reports: :func:`example_running` starts the worker and
enqueues (:func:`forked_example`: one with forked worker processes, on its own Redis DB and
queue), :func:`wait_for_reports_and_stall` waits for that picture.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import Samples, free_port, require_redis, scrape
from tests.support.processes import kill_group, start, worker_env
from tests.support.waiting import wait_for

ROOT = Path(__file__).parents[2]


@dataclass(frozen=True)
class Example:
    """A running example: its worker's ``/metrics`` URL and log."""

    url: str
    log: Path


@contextmanager
def example_running(
    name: str,
    argv: Sequence[str],
    log: Path,
    stop: Callable[[subprocess.Popen[bytes]], Any],
    *,
    new_session: bool = False,
    **env: str,
) -> Iterator[Example]:
    """examples/``name``'s worker (``argv``, run in the example's folder, writing ``log``) once it
    serves ``/metrics``, after its ``enqueue.py`` ran; ``stop(worker)`` at the end."""
    example = ROOT / "examples" / name
    port = free_port()
    environ = worker_env(
        OTEL_JOBS_PROMETHEUS_PORT=str(port),
        **env,
        PYTHONPATH=os.pathsep.join([str(example), str(ROOT)]),
    )
    url = f"http://127.0.0.1:{port}/metrics"
    worker = start(list(argv), log, environ, example, new_session=new_session)
    try:
        wait_for("the worker's /metrics", lambda: worker.poll() is None and scrape(url), log=log)
        subprocess.run(
            [sys.executable, "enqueue.py"], cwd=example, env=environ, check=True, timeout=60
        )
        yield Example(url, log)
    finally:
        stop(worker)


@contextmanager
def forked_example(
    name: str,
    argv: Sequence[str],
    tmp_path: Path,
    redis_url: str,
    queue: str,
    purge: Callable[[str, str], None],
    **env: str,
) -> Iterator[Example]:
    """:func:`example_running` for an example whose worker forks processes: in a session of its
    own, killed with its group at the end (the stuck job never returns), its multiprocess files
    and log in ``tmp_path``, on the Redis at ``redis_url``; ``purge(redis_url, queue)`` after."""
    require_redis()
    try:
        with example_running(
            name,
            argv,
            tmp_path / "worker.log",
            kill_group,
            new_session=True,
            OTEL_JOBS_MULTIPROCESS_DIR=str(tmp_path / "mp"),
            REDIS_URL=redis_url,
            **env,
        ) as example:
            yield example
    finally:
        purge(redis_url, queue)


def wait_for_reports_and_stall(
    example: Example, healthy: dict[str, str], stuck: dict[str, str]
) -> Samples:
    """The scrape that shows three successful ``healthy`` runs and the ``stuck`` run stalled."""

    def stalled() -> Samples | None:
        s = scrape(example.url)
        ready = (
            s.total("otel_jobs_runs_finished_total", outcome="success", **healthy) == 3
            and s.total("otel_jobs_runs_stalled", **stuck) == 1
        )
        return s if ready else None

    return wait_for("3 reports and the stalled verdict", stalled, log=example.log)

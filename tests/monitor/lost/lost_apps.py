"""The jobs the lost-run tests run in real workers, for each framework.

Configured from the environment: ``LOST_BROKER`` (broker URL), ``LOST_QUEUE`` (a queue of the
test's own), ``LOST_DIR`` (where the jobs leave their traces) and ``LOST_RESULTS`` (Celery's
result backend, for the failed place of a poison task). Every job:

* ``page(name)``: heartbeats ``progress=0.4, page=7``; a first attempt then waits to be killed
  (its file ``<name>.started`` says it is running); an attempt whose ``previous_attempt`` is set
  writes it to ``<name>.previous`` and appends one line to ``<name>.done`` (its side effect);
* ``poison(name)``: heartbeats, appends a line to ``<name>.attempts``, then kills its worker's
  whole process group (each time it runs; with ``LOST_KILL_PARENT_GROUP=1``, an RQ work horse,
  which RQ puts in a session of its own, also its parent's);
* ``quick(name)``: appends a line to ``<name>.done``;
* ``sleepy(name, line, seconds)``: sleeps, then appends ``line`` to ``<name>.done``.

Each app declares them with :func:`declare`.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import otel_jobs

DIR = Path(os.environ.get("LOST_DIR", "/tmp"))
QUEUE = os.environ.get("LOST_QUEUE", "lost")


def note(name: str, suffix: str, line: str = "x") -> None:
    """Append ``line`` to ``<name>.<suffix>`` in the apps' directory."""
    with open(DIR / f"{name}.{suffix}", "a") as out:
        out.write(line + "\n")


def page_body(name: str) -> None:
    otel_jobs.heartbeat(progress=0.4, page=7)
    run = otel_jobs.current_run()
    previous = run.previous_attempt if run is not None else None
    if previous is None:
        (DIR / f"{name}.started").write_text(str(os.getpid()))
        time.sleep(3600)  # until killed
        return
    (DIR / f"{name}.previous").write_text(
        json.dumps({"progress": previous.progress, "details": dict(previous.details),
                    "lost": previous.lost, "pid": previous.pid})
    )  # fmt: skip
    note(name, "done")


def poison_body(name: str) -> None:
    otel_jobs.heartbeat(progress=0.1)
    note(name, "attempts", str(os.getpid()))
    time.sleep(float(os.environ.get("LOST_POISON_AFTER", "2.5")))  # past the first lease write
    groups = {os.getpgrp()}
    if os.environ.get("LOST_KILL_PARENT_GROUP") == "1":  # an RQ horse: its worker's too
        groups.add(os.getpgid(os.getppid()))
    for group in sorted(groups, key=lambda g: g == os.getpgrp()):  # its own last
        os.killpg(group, signal.SIGKILL)


def quick_body(name: str) -> None:
    note(name, "done")


def sleepy_body(name: str, line: str, seconds: float) -> None:
    otel_jobs.heartbeat(progress=0.5)
    time.sleep(seconds)
    note(name, "done", line)


def declare(
    task: Callable[..., Callable[[Callable[..., None]], Any]], module: str, **names: str
) -> None:
    """Declare each job of ``names`` (``page="lost.page"``: :func:`page_body` under that name)
    as ``task(name=...)`` of a function of ``module`` (Huey names a task after its module)."""
    for body, name in names.items():
        run: Callable[..., None] = globals()[f"{body}_body"]

        def job(*args: Any, _run: Callable[..., None] = run) -> None:
            _run(*args)

        job.__module__, job.__name__, job.__qualname__ = module, body, body
        task(name=name)(job)

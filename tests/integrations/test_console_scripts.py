"""Stall verdicts under the frameworks' own commands start at the user's line (issue 20 item 4).

Each worker is started with its installed console script (``celery``, ``rq``, ``dramatiq``,
``arq``, ``huey_consumer``), as a user does, from a project directory holding one module with a
job stuck in a loop. Forked processes (Celery's prefork children, RQ's work horses, Huey's
process workers) carry the console script's frame at the bottom of their stack: it used to be
taken for the user's code, so the stack shown started there, with some 30 framework frames above
the user's line. Redis DB 2 is this module's own (no other module uses it), emptied before and
after each test.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.integrations.rq_support import empty_redis_db
from tests.integrations.workers import kill_group, start, wait_for, worker_env
from tests.support import free_port

pytestmark = pytest.mark.broker

REDIS_URL = "redis://127.0.0.1:6379/2"
BIN = Path(sys.executable).parent

#: The stuck job's body, the same in every app; the marked line is where it waits.
STUCK = """\
    while True:
        time.sleep(0.05)  # the user's line
"""

APPS = {
    "celery": """
from celery import Celery

app = Celery("stuckapp", broker=os.environ["BROKER"])
app.conf.update(task_default_queue=os.environ["QUEUE"], worker_enable_remote_control=False,
                broker_connection_retry_on_startup=True)


@app.task(name="stuck")
def stuck():
{STUCK}""",
    "rq": """
def stuck():
{STUCK}""",
    "dramatiq": """
import dramatiq
from dramatiq.brokers.redis import RedisBroker

dramatiq.set_broker(RedisBroker(url=os.environ["BROKER"]))


@dramatiq.actor(queue_name=os.environ["QUEUE"], max_retries=0)
def stuck():
{STUCK}""",
    "arq": """
import asyncio

from arq.connections import RedisSettings


async def stuck(ctx):
{STUCK}

class WorkerSettings:
    functions = [stuck]
    redis_settings = RedisSettings.from_dsn(os.environ["BROKER"])
    queue_name = os.environ["QUEUE"]
""",
    "huey": """
from huey import RedisHuey

huey = RedisHuey(os.environ["QUEUE"], url=os.environ["BROKER"])


@huey.task()
def stuck():
{STUCK}""",
}

#: The command a user types (the console script), run from the project directory.
COMMANDS = {
    "celery": ["celery", "-A", "stuckapp", "worker", "-P", "prefork", "-c", "1", "-l", "INFO",
               "--without-gossip", "--without-mingle", "--without-heartbeat"],
    "rq": ["rq", "worker", "-c", "stuckapp", "-u", REDIS_URL, "{queue}"],
    "dramatiq": ["dramatiq", "stuckapp", "-p", "1", "-t", "1"],
    "arq": ["arq", "stuckapp.WorkerSettings"],
    "huey": ["huey_consumer", "stuckapp.huey", "-k", "process", "-w", "1"],
}  # fmt: skip

#: Python run in the project directory to enqueue one stuck job.
SEND = {
    "celery": "stuckapp.stuck.delay()",
    "rq": "from redis import Redis; from rq import Queue; "
    "Queue(os.environ['QUEUE'], connection=Redis.from_url(os.environ['BROKER']))"
    ".enqueue('stuckapp.stuck')",
    "dramatiq": "stuckapp.stuck.send()",
    "arq": textwrap.dedent(
        """
        import asyncio
        from arq import create_pool

        async def send():
            pool = await create_pool(stuckapp.WorkerSettings.redis_settings)
            await pool.enqueue_job("stuck", _queue_name=os.environ["QUEUE"])
            await pool.aclose()

        asyncio.run(send())
        """
    ),
    "huey": "stuckapp.stuck()",
}


def write_app(directory: Path, framework: str) -> int:
    """Write ``stuckapp.py`` for ``framework``; the number of the user's line."""
    body = APPS[framework].replace("{STUCK}", STUCK)
    if framework == "arq":
        body = body.replace("time.sleep(0.05)", "await asyncio.sleep(0.05)")
    text = (
        textwrap.dedent(
            """\
        import os
        import time

        import otel_jobs

        otel_jobs.instrument()
        """
        )
        + body
    )
    (directory / "stuckapp.py").write_text(text)
    return next(i for i, line in enumerate(text.splitlines(), 1) if "the user's line" in line)


def verdict(log: Path) -> str | None:
    """The log once it holds a stall verdict."""
    text = log.read_text(errors="replace")
    return text if " stalled: " in text else None


def stack_of_first_verdict(log: str) -> list[str]:
    """The lines of the first stall verdict's stack, as the log shows them."""
    lines = log.splitlines()
    start = next(
        i for i, line in enumerate(lines) if "otel-jobs: run " in line and " stalled: " in line
    )
    stack = []
    for line in lines[start + 1 :]:
        if not (line.startswith(" ") or line.startswith("(")):
            break
        stack.append(line)
    return stack


@pytest.mark.parametrize("framework", list(APPS))
def test_the_stall_verdict_starts_at_the_users_line(tmp_path: Path, framework: str) -> None:
    pytest.importorskip(framework)
    script = BIN / COMMANDS[framework][0]
    if not script.exists():
        pytest.skip(f"no {script.name} console script next to {sys.executable}")
    project = tmp_path / "project"
    project.mkdir()
    line = write_app(project, framework)
    queue = f"ojcs-{framework}-{uuid.uuid4().hex[:8]}"
    common = {"BROKER": REDIS_URL, "QUEUE": queue, "PYTHONPATH": str(project)}
    env = worker_env(
        **common,
        OTEL_JOBS_FRAMEWORKS=framework,
        OTEL_JOBS_PROMETHEUS_PORT=str(free_port()),
        OTEL_JOBS_MULTIPROCESS_DIR=str(tmp_path / "mp"),
        OTEL_JOBS_HEARTBEAT_TIMEOUT="1",
        OTEL_JOBS_WATCHDOG_INTERVAL="0.2",
        PYTHONUNBUFFERED="1",
    )
    command = [str(script), *(a.format(queue=queue) for a in COMMANDS[framework][1:])]
    if framework == "celery":
        command += ["-Q", queue]
    log = tmp_path / "worker.log"
    with empty_redis_db(REDIS_URL):
        worker = start(command, log, env, project, new_session=True)
        try:
            sender = worker_env(
                **common, OTEL_JOBS_PROMETHEUS_ENABLED="false", OTEL_JOBS_WATCHDOG_ENABLED="false"
            )
            subprocess.run(
                [sys.executable, "-c", f"import os, stuckapp\n{SEND[framework]}"],
                cwd=project, env=sender, check=True, timeout=120, capture_output=True,
            )  # fmt: skip
            text = wait_for("the stall verdict in the worker's log", lambda: verdict(log), log=log)
        finally:
            kill_group(worker)
    stack = stack_of_first_verdict(text)
    frames = [s for s in stack if re.match(r"\s+\S.*:\d+ in ", s)]
    assert frames, text[-4000:]
    # The user's frame first (flush left), the worker's and the framework's outer frames counted.
    assert frames[0] == f"  stuckapp.py:{line} in stuck", "\n".join(stack)
    assert re.fullmatch(r"\(\d+ outer frames of the worker and libraries not shown\)", stack[0])

"""A worker asked to stop while a stalled run is in flight says so once, and how to force it.

Real workers on a Redis of the test's own (:class:`tests.monitor.support.RedisServer`, so the
shared server's databases are not touched): ``celery worker`` (prefork: the stalled run is in a
pool child, the signal reaches the main process) and ``rq worker`` (the run is in the work
horse). Each gets a job that hangs without heartbeating, the watchdog's stall verdict, then the
framework's warm-shutdown signal: the log says once that the worker waits for that run, with its
diagnosis and how to force the shutdown, and doing what it says ends the worker. A warm
shutdown that waits only for a healthy run says nothing (RQ).
"""

from __future__ import annotations

import inspect
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integrations import celery_app, rq_jobs
from tests.integrations.rq_support import launch_workers
from tests.monitor.support import wait_for
from tests.support import free_port, scrape
from tests.support.processes import app_env
from tests.support.servers import SilentServer

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))
WAITS = "is shutting down and waits for its runs in flight to end"
ENDED = 60.0  # generous: the machine is small and shared


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A TCP server that accepts connections and never answers."""
    with SilentServer() as server:
        yield server.port


def _line_of(func: object, needle: str) -> int:
    source, first = inspect.getsourcelines(func)  # type: ignore[arg-type]
    return first + next(i for i, line in enumerate(source) if needle in line)


def _said(log: str) -> list[str]:
    return [line for line in log.splitlines() if WAITS in line]


def _ended(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait(timeout=ENDED)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker did not end when forced as the message says")


# --- Celery ----------------------------------------------------------------------------------


def _celery_worker(
    tmp_path: Path, redis_url: str
) -> tuple[subprocess.Popen[bytes], Path, str, str]:
    prefix = f"ojw-{uuid.uuid4().hex[:8]}"
    release = tmp_path / "release"
    release.mkdir()
    log = tmp_path / "celery.log"
    _, slow = celery_app.queues(prefix)
    env = {
        **os.environ,
        "OJ_CELERY_WORKER": "1",
        "OJ_CELERY_BROKER": redis_url,
        "OJ_CELERY_PREFIX": prefix,
        "OJ_CELERY_PORT": str(free_port()),
        "OJ_CELERY_RELEASE_DIR": str(release),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    env.pop("OTEL_JOBS_START", None)  # the default (lazy): serving starts at the worker's start
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [CELERY, "-A", "tests.integrations.celery_app", "worker", "-P", "prefork", "-c", "1",
             "-Q", slow, "--without-gossip", "--without-mingle", "--without-heartbeat",
             "-l", "INFO"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    wait_for("the worker to be ready", lambda: "ready." in log.read_text(), log=log)
    return proc, log, prefix, slow


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def test_celery_warm_shutdown_waiting_for_a_stalled_task_says_so_once(
    tmp_path: Path, redis_url: str
) -> None:
    proc, log, prefix, queue = _celery_worker(tmp_path, redis_url)
    publisher = celery_app.make_app(redis_url, prefix)
    try:
        publisher.send_task("oj.hang", args=["never-released"], queue=queue)
        wait_for(
            "the stall verdict",
            lambda: re.search(r"run \S+ of oj\.hang .* stalled", log.read_text()),
            log=log,
        )
        assert not _said(log.read_text())  # nobody asked it to stop yet
        os.kill(proc.pid, signal.SIGTERM)  # the main process: Celery's warm shutdown
        wait_for("the shutdown message", lambda: _said(log.read_text()), log=log)
        time.sleep(2)  # ten watchdog ticks (0.2 s): room for a repeat, which must not come
        (said,) = _said(log.read_text())
        assert "the Celery worker" in said and "run " in said and "of oj.hang" in said
        line = _line_of(celery_app.hang.run, "time.sleep(0.05)")
        assert re.search(rf"it is stalled: no heartbeat .*celery_app\.py:{line} in hang", said)
        assert "SIGQUIT" in said and "A second SIGTERM does not" in said
        assert proc.poll() is None  # still waiting for the stalled task
        os.kill(proc.pid, signal.SIGQUIT)  # what the message says
        _ended(proc)
    finally:
        publisher.close()
        _kill_group(proc)
    assert len(_said(log.read_text())) == 1


# --- RQ --------------------------------------------------------------------------------------


def test_rq_warm_shutdown_waiting_for_a_stalled_job_says_so_once(
    tmp_path: Path, redis_url: str, blackhole: int
) -> None:
    from redis import Redis
    from rq import Queue

    name = f"{rq_jobs.__name__}.hang"
    connection = Redis.from_url(redis_url)
    queue = Queue(f"ojw-{uuid.uuid4().hex[:8]}", connection=connection)
    with launch_workers(tmp_path) as start:
        worker = start(
            queue.name,
            url=redis_url,
            jobs={name: {"heartbeat_timeout": 1}},
            env_extra={"OTEL_JOBS_START": "lazy"},  # the default: serving starts with the worker
        )
        queue.enqueue(name, str(tmp_path / "horse.pid"), blackhole, job_timeout=600)
        wait_for(
            "the stall verdict",
            lambda: re.search(rf"of {re.escape(name)} .* stalled", worker.output()),
            log=worker.log,
        )
        assert not _said(worker.output())
        os.kill(worker.proc.pid, signal.SIGTERM)  # RQ's warm shutdown
        wait_for("the shutdown message", lambda: _said(worker.output()), log=worker.log)
        time.sleep(2)  # two watchdog ticks at least: room for a repeat, which must not come
        (said,) = _said(worker.output())
        assert "the RQ worker" in said and f"of {name} (queue {queue.name})" in said
        line = _line_of(rq_jobs.hang, "conn.recv(1)")
        assert re.search(rf"it is stalled: no heartbeat .*rq_jobs\.py:{line} in hang", said)
        assert "SIGTERM or SIGINT (Ctrl+C) again" in said
        assert worker.proc.poll() is None  # still waiting for the work horse
        os.kill(worker.proc.pid, signal.SIGTERM)  # what the message says: the cold shutdown
        _ended(worker.proc)
        assert len(_said(worker.output())) == 1
    connection.close()


def test_rq_warm_shutdown_with_a_healthy_job_says_nothing(tmp_path: Path, redis_url: str) -> None:
    from redis import Redis
    from rq import Queue

    connection = Redis.from_url(redis_url)
    queue = Queue(f"ojw-{uuid.uuid4().hex[:8]}", connection=connection)
    with launch_workers(tmp_path) as start:
        worker = start(queue.name, url=redis_url, env_extra={"OTEL_JOBS_START": "lazy"})
        queue.enqueue(f"{rq_jobs.__name__}.sleepy", 3)
        wait_for("the job to start", lambda: "sleepy" in worker.output(), log=worker.log)
        os.kill(worker.proc.pid, signal.SIGTERM)
        assert _ended(worker.proc) == 0
        text = worker.output()
        assert "Job OK" in text and not _said(text)
    connection.close()


# --- Dramatiq, Huey and arq: their CLI on an app module written for the test -----------------

HANG_APP = """
import os, time

import otel_jobs

if os.environ.get("WS_FRAMEWORK") == "dramatiq":
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=os.environ["WS_REDIS"])
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name=os.environ["WS_QUEUE"], max_retries=0)
    def hang():
        while True:
            time.sleep(0.05)  # never heartbeats
elif os.environ.get("WS_FRAMEWORK") == "arq":
    import asyncio

    from arq.connections import RedisSettings

    async def hang(ctx):
        while True:
            try:
                await asyncio.sleep(3600)  # never heartbeats
            except asyncio.CancelledError:
                pass  # swallowed: arq's cancellation does not end it

    class WorkerSettings:
        functions = [hang]
        redis_settings = RedisSettings.from_dsn(os.environ["WS_REDIS"])
        queue_name = os.environ["WS_QUEUE"]
else:
    from huey import RedisHuey

    huey = RedisHuey(os.environ["WS_QUEUE"], url=os.environ["WS_REDIS"])

    @huey.task()
    def hang():
        while True:
            time.sleep(0.05)  # never heartbeats

if os.environ.get("WS_WORKER") == "1":
    otel_jobs.instrument(
        prometheus_port=int(os.environ["WS_PORT"]),
        frameworks=[os.environ["WS_FRAMEWORK"]],
        outbound=[],
        watchdog_interval=0.2,
        heartbeat_timeout=1,
    )
"""


def _start_cli(
    tmp_path: Path, redis_url: str, framework: str, command: list[str]
) -> tuple[subprocess.Popen[bytes], Path, dict[str, str]]:
    env = app_env(tmp_path, "ws_app", HANG_APP, "WS", redis_url, framework)
    log = tmp_path / f"{framework}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=tmp_path, env={**env, "WS_WORKER": "1"}, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return proc, log, env


def _publish(tmp_path: Path, env: dict[str, str], code: str) -> None:
    subprocess.run(
        [sys.executable, "-c", f"import ws_app; {code}"], cwd=tmp_path, env=env, check=True,
        timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("framework", "stop", "force", "hint"),
    [
        ("dramatiq", signal.SIGTERM, signal.SIGTERM, "send the dramatiq process SIGTERM"),
        ("huey", signal.SIGINT, signal.SIGINT, "send it SIGINT again (Ctrl+C)"),
        ("arq", signal.SIGTERM, signal.SIGKILL, "end the process with SIGKILL"),
    ],
)
def test_dramatiq_huey_arq_warm_shutdown_waiting_for_a_stalled_task_say_so_once(
    tmp_path: Path, redis_url: str, framework: str, stop: int, force: int, hint: str
) -> None:
    if framework == "dramatiq":
        command = [str(Path(sys.executable).with_name("dramatiq")), "ws_app", "--processes", "1",
                   "--threads", "1"]  # fmt: skip
        send = "ws_app.hang.send()"
    elif framework == "arq":
        command = [str(Path(sys.executable).with_name("arq")), "ws_app.WorkerSettings"]
        send = (
            "import asyncio; from arq import create_pool\n"
            "async def main():\n"
            "    pool = await create_pool(ws_app.WorkerSettings.redis_settings)\n"
            "    await pool.enqueue_job('hang', _queue_name=ws_app.WorkerSettings.queue_name)\n"
            "    await pool.aclose()\n"
            "asyncio.run(main())"
        )
    else:
        # Process workers: the task runs in a child of the consumer the signal goes to.
        command = [str(Path(sys.executable).with_name("huey_consumer")), "ws_app.huey", "-k",
                   "process", "-w", "1", "-d", "0.1", "--no-periodic"]  # fmt: skip
        send = "ws_app.hang()"
    proc, log, env = _start_cli(tmp_path, redis_url, framework, command)
    try:
        _publish(tmp_path, env, send)
        wait_for(
            "the stall verdict", lambda: re.search(r"hang .* stalled", log.read_text()), log=log
        )
        # Serving started at the worker's start (lazy), in the process that serves /metrics.
        url = f"http://127.0.0.1:{env['WS_PORT']}/metrics"
        wait_for("the stall on /metrics", lambda: scrape(url).total("otel_jobs_runs_stalled") == 1)
        os.kill(proc.pid, stop)
        wait_for("the shutdown message", lambda: _said(log.read_text()), log=log)
        time.sleep(2)  # ten watchdog ticks: room for a repeat, which must not come
        (said,) = _said(log.read_text())
        shown = {"dramatiq": "Dramatiq", "huey": "Huey", "arq": "arq"}[framework]
        assert f"the {shown} worker is shutting down" in said
        line = _line_of_app(tmp_path, framework)
        assert re.search(rf"it is stalled: no heartbeat .*ws_app\.py:{line} in hang", said), said
        assert hint in said
        assert proc.poll() is None
        os.kill(proc.pid, force)  # what the message says
        _ended(proc)
    finally:
        _kill_group(proc)
    assert len(_said(log.read_text())) == 1


def _line_of_app(tmp_path: Path, framework: str) -> int:
    """The line of ws_app.py the framework's hanging task waits on."""
    lines = (tmp_path / "ws_app.py").read_text().splitlines()
    needle = "await asyncio.sleep(3600)" if framework == "arq" else "time.sleep(0.05)"
    found = [i + 1 for i, line in enumerate(lines) if needle in line]
    return found[1] if framework == "huey" else found[0]

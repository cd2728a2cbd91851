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
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integrations import celery_app, rq_jobs
from tests.integrations.rq_support import launch_workers
from tests.monitor.support import RedisServer, wait_for
from tests.support import free_port

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))
WAITS = "is shutting down and waits for its runs in flight to end"
ENDED = 60.0  # generous: the machine is small and shared


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url(0)
    finally:
        server.stop()


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A TCP server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield server.getsockname()[1]
    server.close()


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
        worker = start(queue.name, url=redis_url, jobs={name: {"heartbeat_timeout": 1}})
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
        worker = start(queue.name, url=redis_url)
        queue.enqueue(f"{rq_jobs.__name__}.sleepy", 3)
        wait_for("the job to start", lambda: "sleepy" in worker.output(), log=worker.log)
        os.kill(worker.proc.pid, signal.SIGTERM)
        assert _ended(worker.proc) == 0
        text = worker.output()
        assert "Job OK" in text and not _said(text)
    connection.close()

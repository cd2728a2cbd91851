"""A process that only publishes opens no port and starts no thread; a worker serves.

``instrument()`` at import, as the quickstart shows, runs in every process that imports the app:
the workers, and the web apps and scripts that only send tasks. With the default start
(``OTEL_JOBS_START=lazy``), ``/metrics`` and the watchdog start when the process becomes a
worker (the framework's worker start) or runs its first job. Real processes on a Redis of the
test's own: a script that sends a Celery task with ``.delay()`` and one that enqueues an RQ job
(each checks, from inside, that nothing listens on its port and no ``otel-jobs`` thread runs),
then the real ``celery`` and ``rq`` workers of the same app, which bind the port and record the
run, with the queue wait the publisher stamped. A plain process starts at its first ``@job``
run; ``start="eager"`` starts at ``instrument()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import scrape
from tests.support.processes import app_env, last_json
from tests.support.waiting import wait_for

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]

APP = textwrap.dedent(
    """
    import os

    import otel_jobs

    otel_jobs.instrument(prometheus_port=int(os.environ["LS_PORT"]))  # at import, for everyone

    if os.environ["LS_FRAMEWORK"] == "celery":
        from celery import Celery

        app = Celery("ls_app", broker=os.environ["LS_REDIS"])
        app.conf.task_default_queue = os.environ["LS_QUEUE"]
        app.conf.broker_connection_retry_on_startup = True

        @app.task(name="ls.add")
        def add(x, y):
            return x + y
    else:
        def add(x, y):
            return x + y
    """
)

# What the process that only publishes runs, then reports from inside.
PUBLISH = textwrap.dedent(
    """
    import json, os, socket, sys, threading

    import ls_app
    import otel_jobs

    if os.environ["LS_FRAMEWORK"] == "celery":
        ls_app.add.delay(1, 2)
        ls_app.app.close()
    else:
        from redis import Redis
        from rq import Queue

        connection = Redis.from_url(os.environ["LS_REDIS"])
        Queue(os.environ["LS_QUEUE"], connection=connection).enqueue("ls_app.add", 1, 2)
        connection.close()
    try:
        socket.create_connection(("127.0.0.1", int(os.environ["LS_PORT"])), timeout=5).close()
        listening = True
    except OSError:
        listening = False
    from otel_jobs.core import agent as agent_mod

    server = agent_mod.current().server  # read, not asked for: metrics_url() would start it
    print(json.dumps({
        "instrumented": otel_jobs.is_instrumented(),
        "url": server.url if server is not None else None,
        "listening": listening,
        "threads": sorted(t.name for t in threading.enumerate()),
    }))
    """
)


def _env(tmp_path: Path, redis_url: str, framework: str) -> dict[str, str]:
    return {**app_env(tmp_path, "ls_app", APP, "LS", redis_url, framework), "PYTHONUNBUFFERED": "1"}


def _publish(tmp_path: Path, env: dict[str, str]) -> dict[str, object]:
    return last_json(PUBLISH, tmp_path, env)


@pytest.mark.parametrize("framework", ["celery", "rq"])
def test_a_publisher_opens_no_port_and_starts_no_thread_and_its_worker_serves(
    tmp_path: Path, redis_url: str, framework: str
) -> None:
    env = _env(tmp_path, redis_url, framework)
    report = _publish(tmp_path, env)
    assert report["instrumented"] is True
    assert report["url"] is None and report["listening"] is False
    threads = report["threads"]
    assert isinstance(threads, list)
    assert [t for t in threads if str(t).startswith("otel-jobs")] == [], threads

    # The same app as a real worker: it binds the port and records the run the publisher sent,
    # with the queue wait measured from the publish time the (lazy) publisher stamped.
    if framework == "celery":
        command = [str(Path(sys.executable).with_name("celery")), "-A", "ls_app", "worker",
                   "-P", "solo", "-Q", env["LS_QUEUE"], "--without-gossip", "--without-mingle",
                   "--without-heartbeat"]  # fmt: skip
        job = "ls.add"
    else:
        command = [str(Path(sys.executable).with_name("rq")), "worker", "-u", redis_url,
                   "-c", "ls_app", env["LS_QUEUE"]]  # fmt: skip
        job = "ls_app.add"
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{env['LS_PORT']}/metrics"
        m = wait_for(
            "the worker's /metrics with the run",
            lambda: (
                (s := scrape(url)).total(
                    "otel_jobs_runs_finished_total", job_name=job, outcome="success"
                )
                == 1
                and s
            ),
            log=log,
        )
        assert m.total("otel_jobs_queue_wait_seconds_count", job_name=job) == 1
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_a_plain_process_starts_at_its_first_run_or_at_instrument_when_eager(
    tmp_path: Path,
) -> None:
    script = textwrap.dedent(
        """
        import json, sys, threading
        import otel_jobs

        eager = sys.argv[1] == "eager"  # else "lazy" (the default) or "asked"
        otel_jobs.instrument(prometheus_port=0, **({"start": "eager"} if eager else {}))

        from otel_jobs.core import agent as agent_mod

        def ours():
            return sorted(t.name for t in threading.enumerate() if t.name.startswith("otel-jobs"))

        def url():  # read without asking: metrics_url() itself starts the endpoint
            server = agent_mod.current().server
            return server.url if server is not None else None

        before = {"url": url(), "threads": ours()}

        @otel_jobs.job(name="plain.first")
        def first():
            return url()

        # "asked": metrics_url() starts the endpoint too (a process that wants its URL serves).
        during = otel_jobs.metrics_url() if sys.argv[1] == "asked" else first()
        print(json.dumps({"before": before, "during": during, "after": ours()}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "OTEL_JOBS_START"}
    reports = {}
    for mode in ("lazy", "eager", "asked"):
        done = subprocess.run(
            [sys.executable, "-c", script, mode], cwd=ROOT, env=env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        reports[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    lazy, eager, asked = reports["lazy"], reports["eager"], reports["asked"]
    for started in (lazy, asked):
        assert started["before"] == {"url": None, "threads": []}
        assert started["during"] and "otel-jobs-watchdog" in started["after"]
        assert "otel-jobs-metrics" in started["after"]
    assert eager["before"]["url"] and "otel-jobs-watchdog" in eager["before"]["threads"]
    assert eager["during"] == eager["before"]["url"]

"""A real arq worker on the real Redis whose jobs block its event loop: lag, verdict, recovery.

The worker runs in a subprocess started with arq's own command line; its settings module calls
``otel_jobs.instrument()`` at import, as users do, and keeps the watchdog's records as JSON
lines (its own logging configuration). Jobs block the loop until the test creates a flag file,
so nothing depends on how fast the machine is: every wait polls with a generous deadline.
Redis database 14 (the arq tests' own); only this module's keys are deleted, never the database.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integrations.workers import start, stop, wait_for, worker_env
from tests.support import Samples, free_port, require_redis, scrape

pytestmark = pytest.mark.broker

REDIS_DB = 14
THREAD = "MainThread"  # arq runs its loop in the main thread

WORKER_APP = textwrap.dedent(
    """
    import asyncio
    import json
    import logging
    import os
    import time

    from arq.connections import RedisSettings

    import otel_jobs


    class JsonLines(logging.Handler):
        def emit(self, record):
            fields = {k: v for k, v in record.__dict__.items()
                      if k.startswith(("stall_", "job_"))}
            fields["message"] = record.getMessage()
            with open(os.environ["TEST_RECORDS"], "a") as out:
                out.write(json.dumps(fields, default=str) + "\\n")


    records = logging.getLogger("otel_jobs")
    records.setLevel(logging.INFO)
    records.addHandler(JsonLines())

    otel_jobs.instrument(
        prometheus_port=int(os.environ["TEST_METRICS_PORT"]),
        watchdog_interval=0.2,
        loop_blocked_timeout=1.0,
    )


    async def until(path):
        while not os.path.exists(path):
            await asyncio.sleep(0.05)


    async def sleeps_in_the_loop(ctx, flag, then):
        await asyncio.sleep(0)
        while not os.path.exists(flag):
            time.sleep(0.05)  # LINE-SLEEP: synchronous, the whole loop waits
        await until(then)  # the loop runs again; the run stays in flight


    async def spins_in_the_loop(ctx, flag):
        await asyncio.sleep(0)
        count = 0
        while not os.path.exists(flag):  # LINE-SPIN
            count += 1
        return count


    async def waits_its_turn(ctx, flag):
        await until(flag)


    async def busy_but_responsive(ctx, flag):
        async def bursts():
            while not os.path.exists(flag):
                end = time.perf_counter() + 0.002
                while time.perf_counter() < end:
                    pass
                await asyncio.sleep(0)
        await asyncio.gather(*(bursts() for _ in range(10)))


    class WorkerSettings:
        functions = [sleeps_in_the_loop, spins_in_the_loop, waits_its_turn, busy_but_responsive]
        redis_settings = RedisSettings(host="127.0.0.1", port=6379, database=%(db)d)
        queue_name = os.environ["TEST_QUEUE"]
        job_timeout = 300
        poll_delay = 0.05
        max_jobs = 20
    """
)


class LoopWorker:
    def __init__(self, queue: str, url: str, records: Path, app: Path, flags: Path) -> None:
        self.queue = queue
        self.url = url
        self.records = records
        self.app = app
        self.flags = flags
        self.job_ids: list[str] = []

    def enqueue(self, function: str, *args: Any) -> str:
        job_id = f"{self.queue}-{len(self.job_ids)}"
        self.job_ids.append(job_id)

        async def go() -> None:
            from arq import create_pool
            from arq.connections import RedisSettings

            pool = await create_pool(RedisSettings(host="127.0.0.1", port=6379, database=REDIS_DB))
            try:
                job = await pool.enqueue_job(
                    function, *args, _queue_name=self.queue, _job_id=job_id
                )
                assert job is not None
            finally:
                await pool.aclose()

        asyncio.run(go())
        return job_id

    def flag(self, name: str) -> str:
        return str(self.flags / name)

    def release(self, name: str) -> None:
        (self.flags / name).touch()

    def scrape(self) -> Samples:
        return scrape(self.url)

    def logged(self) -> list[dict[str, Any]]:
        if not self.records.exists():
            return []
        return [json.loads(line) for line in self.records.read_text().splitlines() if line]

    def line_of(self, marker: str) -> int:
        lines = self.app.read_text().splitlines()
        return next(i for i, line in enumerate(lines, 1) if marker in line)

    def lag(self, le: str | None = None) -> float:
        s = self.scrape()
        if le is None:
            return s.total("otel_jobs_event_loop_lag_seconds_count", thread=THREAD)
        return s.total("otel_jobs_event_loop_lag_seconds_bucket", thread=THREAD, le=le)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[LoopWorker]:
    require_redis()
    app = tmp_path / "arq_loop_app.py"
    app.write_text(WORKER_APP % {"db": REDIS_DB})
    flags = tmp_path / "flags"
    flags.mkdir()
    port = free_port()
    queue = f"otel-jobs-test-arq-loop-{uuid.uuid4().hex[:8]}"
    records = tmp_path / "records.jsonl"
    env = worker_env(
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(Path(__file__).parents[2])]),
        TEST_METRICS_PORT=str(port),
        TEST_QUEUE=queue,
        TEST_RECORDS=str(records),
    )
    log = tmp_path / "worker.log"
    proc = start([sys.executable, "-m", "arq", "arq_loop_app.WorkerSettings"], log, env, tmp_path)
    running = LoopWorker(queue, f"http://127.0.0.1:{port}/metrics", records, app, flags)
    try:
        wait_for("the worker's /metrics", lambda: proc.poll() is None and running.scrape(), log=log)
        yield running
    finally:
        for name in ("release", "resume", "spin", "turn", "busy"):
            running.release(name)  # nothing stays blocked
        stop(proc, timeout=30)
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
        keys = [queue, f"{queue}:health-check"]
        for job_id in running.job_ids:
            keys += [f"arq:{kind}:{job_id}" for kind in ("job", "result", "in-progress", "retry")]
        client.delete(*keys)
        client.close()


def test_time_sleep_in_a_coroutine_blocks_the_loop_verdict_names_line_and_held_up_runs(
    worker: LoopWorker,
) -> None:
    q = worker.queue
    waiting = [worker.enqueue("waits_its_turn", worker.flag("turn")) for _ in range(2)]
    wait_for(
        "both waiting runs",
        lambda: (
            worker.scrape().total("otel_jobs_runs_in_progress", job_name="waits_its_turn", queue=q)
            == 2
        ),
    )
    wait_for("the free loop's probes", lambda: worker.lag() >= 3)
    blocker = worker.enqueue("sleeps_in_the_loop", worker.flag("release"), worker.flag("resume"))

    def verdict() -> dict[str, Any] | None:
        return next((r for r in worker.logged() if r.get("stall_reason") == "loop_blocked"), None)

    record = wait_for("the loop_blocked verdict", verdict)
    assert record["job_id"] == blocker and record["job_name"] == "sleeps_in_the_loop"
    assert record["stall_where"].endswith(
        f"arq_loop_app.py:{worker.line_of('LINE-SLEEP')} in sleeps_in_the_loop"
    )
    assert record["stall_state"] == "blocked"
    loop = record["stall_loop"]
    assert loop["thread"] == THREAD
    assert loop["culprit"] == {"job_name": "sleeps_in_the_loop", "job_id": blocker}
    assert sorted(r["job_id"] for r in loop["held_up"]) == sorted(waiting)
    assert "this run holds the loop; runs held up: run" in record["message"]

    s = worker.scrape()
    assert (
        s.value(
            "otel_jobs_stalls_detected_total",
            job_name="sleeps_in_the_loop",
            queue=q,
            reason="loop_blocked",
        )
        == 1
    )
    assert (
        s.value("otel_jobs_runs_stalled", job_name="sleeps_in_the_loop", queue=q, state="blocked")
        == 1
    )
    assert s.value("otel_jobs_event_loop_blocked_seconds", thread=THREAD) > 1.0
    # The held-up runs have no verdict of their own: one verdict per blocked loop.
    assert s.total("otel_jobs_stalls_detected_total", job_name="waits_its_turn", queue=q) == 0

    worker.release("release")  # the loop runs again; the run stays in flight
    wait_for(
        "the recovery",
        lambda: any(
            r.get("stall_recovered") and r.get("job_id") == blocker for r in worker.logged()
        ),
    )
    s = wait_for(
        "the blocked gauge back to 0",
        lambda: (
            (s := worker.scrape()).value("otel_jobs_event_loop_blocked_seconds", thread=THREAD) == 0
            and s
        ),
    )
    assert (
        s.value("otel_jobs_runs_stalled", job_name="sleeps_in_the_loop", queue=q, state="blocked")
        == 0
    )
    # The probe that waited for the blocked loop is in the lag histogram, above 1 s.
    assert worker.lag() > worker.lag(le="1.0")
    worker.release("resume")
    worker.release("turn")
    wait_for(
        "every run finished",
        lambda: (
            worker.scrape().total("otel_jobs_runs_finished_total", queue=q, outcome="success") == 3
        ),
    )


def test_a_cpu_loop_in_a_coroutine_is_spinning(worker: LoopWorker) -> None:
    job = worker.enqueue("spins_in_the_loop", worker.flag("spin"))
    record = wait_for(
        "the loop_blocked verdict",
        lambda: next((r for r in worker.logged() if r.get("stall_reason") == "loop_blocked"), None),
    )
    assert record["job_id"] == job
    # Looked at again each tick while the verdict stands (the first look may find the loop
    # thread waiting for a core on a loaded machine).
    wait_for(
        "the CPU loop seen spinning",
        lambda: (
            worker.scrape().total(
                "otel_jobs_runs_stalled", job_name="spins_in_the_loop", state="spinning"
            )
            == 1
        ),
    )
    line = worker.line_of("LINE-SPIN")
    assert any(
        record["stall_where"].endswith(f"arq_loop_app.py:{n} in spins_in_the_loop")
        for n in (line, line + 1)
    )
    worker.release("spin")
    wait_for(
        "the recovery or the end",
        lambda: worker.scrape().total("otel_jobs_runs_stalled", job_name="spins_in_the_loop") == 0,
    )


def test_a_busy_but_responsive_loop_never_gets_the_verdict(worker: LoopWorker) -> None:
    q = worker.queue
    before = worker.lag()
    worker.enqueue("busy_but_responsive", worker.flag("busy"))
    wait_for(
        "the busy run",
        lambda: (
            worker.scrape().total(
                "otel_jobs_runs_in_progress", job_name="busy_but_responsive", queue=q
            )
            == 1
        ),
    )
    # Thirty probes (six seconds of ticks) answered while ten tasks keep the loop busy.
    wait_for("thirty probes of the busy loop", lambda: worker.lag() - before >= 30)
    s = worker.scrape()
    assert s.total("otel_jobs_stalls_detected_total", job_name="busy_but_responsive", queue=q) == 0
    assert s.total("otel_jobs_runs_stalled", job_name="busy_but_responsive", queue=q) == 0
    assert not [r for r in worker.logged() if r.get("stall_reason")]
    worker.release("busy")
    wait_for(
        "the busy run's end",
        lambda: (
            worker.scrape().total(
                "otel_jobs_runs_finished_total",
                job_name="busy_but_responsive",
                queue=q,
                outcome="success",
            )
            == 1
        ),
    )

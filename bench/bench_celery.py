"""Per-task overhead on a real Celery worker: none vs opentelemetry-instrumentation-celery vs otel-jobs.

One run starts, in turn, a real ``celery worker`` (solo pool, Redis 127.0.0.1:6379 database 11)
in each mode, on the same trivial task:

* ``none``: no instrumentation;
* ``contrib``: opentelemetry-instrumentation-celery (``CeleryInstrumentor().instrument()``);
* ``otel-jobs``: ``otel_jobs.instrument(frameworks=["celery"], outbound=[])``: runs only;
* ``otel-jobs (default)``: ``otel_jobs.instrument()`` as users call it, outbound checks included
  (they also watch the broker's own Redis calls).

Every mode has the same SDK ``TracerProvider`` with no exporter (spans are built, not shipped),
and ``/metrics`` is served but not scraped. Before each worker starts, ``tasks`` messages are
queued by an uninstrumented publisher; the first and the last task write their ``time.time()`` to
Redis, so the figure is ``(last - first) / (tasks - 1)``: the worker's time per task, broker
round trips included, worker start-up excluded. They also write the CPU time the worker has
used so far (its process, and in the prefork pool the child's and the main process's), which
gives the CPU time per task: the cost of an instrumentation itself, without the waits on the
broker that make the time per task swing from round to round. The comparisons with contrib are
made on the CPU time. Modes take turns for ``reps`` rounds; the
overhead is the median over rounds of each mode against ``none`` in the same round. The machine
is shared and a worker's time per task swings from round to round: read the figures as orders of
magnitude.

A second scenario runs the real production pool: ``-P prefork -c 1``, the tasks spread over 50
task names (a pool child keeps a series per name it ran, and writes them all in its metrics
snapshot), in modes ``none``, ``contrib`` and ``otel-jobs (default)``, measured the same way.
Targets (issue 19): with runs only, otel-jobs' overhead per task at most contrib's (1.0x); with
the defaults, at most 1.2x contrib's.

A third scenario measures the instrumentations alone, in process: Celery's own tracer function
(``celery.app.trace.build_tracer``, what a worker runs for each task: the ``task_prerun`` /
``task_postrun`` signals, the task, its state) called in a loop in a fresh interpreter
(``python -m bench.bench_celery --trace-task``), in modes ``none``, ``contrib`` and ``otel-jobs``
(runs only) taking turns, each instrumentation installed and uninstalled between its blocks;
the CPU time per task. Without the broker's round trips, this is the figure that can tell two
costs of about 50 us apart.
``python -m bench.bench_celery [--quick]``.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery

try:
    from bench._timing import main, measured_apart, row
except ImportError:  # run as a script from bench/
    from _timing import main, measured_apart, row  # type: ignore[no-redef]

BROKER = os.environ.get("OTEL_JOBS_BENCH_REDIS", "redis://127.0.0.1:6379/11")
ROOT = Path(__file__).resolve().parents[1]
MODES = ("none", "contrib", "otel-jobs", "otel-jobs (default)")
PREFORK_MODES = ("none", "contrib", "otel-jobs (default)")
TASK_NAMES = 50  # in the prefork scenario
_MODE = os.environ.get("OJ_BENCH_CELERY_MODE")
_POOL = os.environ.get("OJ_BENCH_CELERY_POOL", "solo")


def _make_app(queue: str) -> Celery:
    celery_app = Celery("bench", broker=BROKER, set_as_current=False)
    celery_app.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,
        worker_enable_remote_control=False,
        broker_connection_retry_on_startup=True,
    )
    return celery_app


# --- the worker side (imported by `celery -A bench.bench_celery worker`) ------------------------

if _MODE is not None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())
    if _MODE == "contrib":
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()
    elif _MODE.startswith("otel-jobs"):
        import otel_jobs

        options: dict[str, Any] = {"prometheus_port": 0}
        if _MODE == "otel-jobs":
            options.update(frameworks=["celery"], outbound=[])
        otel_jobs.instrument(**options)

app = _make_app(os.environ.get("OJ_BENCH_CELERY_QUEUE", "bench"))


@app.task(name="bench.noop", shared=False)
def noop(mark: str | None = None) -> None:
    if mark is not None:
        import json

        import redis

        cpu = time.process_time()  # this process's, all its threads
        if _POOL == "prefork":  # and the main process's (it receives and hands out each task)
            cpu += _cpu_of(os.getppid())
        redis.Redis.from_url(BROKER).set(mark, json.dumps([time.time(), cpu]))


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _named(i: int) -> None:
    app.task(name=f"bench.noop{i}", shared=False)(noop.run)


for _i in range(TASK_NAMES):
    _named(_i)


# --- the driver -------------------------------------------------------------------------------


def _one(mode: str, tasks: int, pool: str = "solo") -> tuple[float, float]:
    """Seconds and CPU seconds per task for one worker run in ``mode`` (prefork: one child, 50
    task names)."""
    import redis

    client = redis.Redis.from_url(BROKER)
    queue = f"oj-bench-{uuid.uuid4().hex[:8]}"
    first, last = f"{queue}:first", f"{queue}:last"
    publisher = _make_app(queue)

    def name(i: int) -> str:
        return "bench.noop" if pool == "solo" else f"bench.noop{i % TASK_NAMES}"

    publisher.send_task(name(0), args=(first,), queue=queue)
    for i in range(tasks - 2):
        publisher.send_task(name(i + 1), queue=queue)
    publisher.send_task(name(tasks - 1), args=(last,), queue=queue)
    publisher.close()
    env = {**os.environ, "OJ_BENCH_CELERY_MODE": mode, "OJ_BENCH_CELERY_QUEUE": queue,
           "OJ_BENCH_CELERY_POOL": pool, "PYTHONPATH": str(ROOT)}  # fmt: skip
    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("celery")), "-A", "bench.bench_celery", "worker",
         "-P", pool, *(["-c", "1"] if pool == "prefork" else []), "-Q", queue, "--without-gossip", "--without-mingle",
         "--without-heartbeat", "-l", "WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while client.get(last) is None:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {mode} worker did not finish its {tasks} tasks")
            time.sleep(0.05)
        start, end = json.loads(client.get(first) or "[0, 0]"), json.loads(client.get(last) or "")
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        client.delete(first, last, queue)
        client.close()
    return (end[0] - start[0]) / (tasks - 1), (end[1] - start[1]) / (tasks - 1)


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Measure each mode; one row per instrumented mode, against ``none``.

    Ratios are taken per round (each mode against ``none`` of the same round) and their median
    kept, so that a slow moment of a shared machine weighs on both sides alike.
    """
    tasks, reps = (300, 1) if quick else (1000, 5)
    per_mode: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    for r in range(reps):
        for mode in MODES if r % 2 == 0 else tuple(reversed(MODES)):
            per_mode[mode].append(_one(mode, tasks))
    return (
        _prefork_rows(tasks, reps)
        + _rows("solo", MODES, per_mode, tasks, reps)
        + _trace_task_rows(quick)
    )


TRACE_MODES = ("none", "contrib", "otel-jobs")


def _trace_task(reps: int, number: int) -> dict[str, list[float]]:
    """In a fresh interpreter: CPU seconds per task of Celery's tracer function, per mode."""
    from celery.app.trace import build_tracer
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.trace import TracerProvider

    import otel_jobs

    trace.set_tracer_provider(TracerProvider())
    traced = Celery("bench.trace", broker="memory://", set_as_current=False)
    traced.conf.update(task_ignore_result=True)

    @traced.task(name="bench.trace.noop", shared=False)
    def empty() -> None:
        pass

    tracer = build_tracer("bench.trace.noop", empty, app=traced, eager=False, propagate=False)
    delivery = {"routing_key": "bench", "exchange": ""}

    def one() -> None:
        task_id = uuid.uuid4().hex
        tracer(task_id, (), {}, {"id": task_id, "delivery_info": delivery, "hostname": "bench"})

    def install(mode: str) -> None:
        if mode == "contrib":
            CeleryInstrumentor().instrument()
        elif mode == "otel-jobs":
            otel_jobs.instrument(frameworks=["celery"], outbound=[], prometheus_port=0)

    def uninstall(mode: str) -> None:
        if mode == "contrib":
            CeleryInstrumentor().uninstrument()
        elif mode == "otel-jobs":
            otel_jobs.uninstrument()

    per_mode: dict[str, list[float]] = {mode: [] for mode in TRACE_MODES}
    for r in range(reps):
        for mode in TRACE_MODES if r % 2 == 0 else tuple(reversed(TRACE_MODES)):
            install(mode)
            for _ in range(max(10, number // 10)):
                one()
            start = time.process_time()
            for _ in range(number):
                one()
            per_mode[mode].append((time.process_time() - start) / number)
            uninstall(mode)
    return per_mode


def _trace_task_rows(quick: bool) -> list[dict[str, Any]]:
    reps, number = (3, 200) if quick else (15, 2000)
    per_mode = measured_apart(
        "bench.bench_celery",
        "trace-task",
        reps,
        number,
        {**os.environ, "PYTHONPATH": str(ROOT)},
        900,
    )
    base = per_mode["none"]
    extra = {
        mode: statistics.median(m - b for m, b in zip(per_mode[mode], base, strict=True))
        for mode in TRACE_MODES[1:]
    }
    ratio = extra["otel-jobs"] / extra["contrib"] if extra["contrib"] > 0 else None
    return [
        row(
            "Celery task traced in process (build_tracer), CPU time over none: otel-jobs vs contrib",
            subject="otel-jobs (runs only)", value=max(extra["otel-jobs"], 1e-9) * 1e6,
            unit="us/task over none", baseline="opentelemetry-instrumentation-celery",
            baseline_value=max(extra["contrib"], 1e-9) * 1e6, ratio=ratio,
            target="<= 1x contrib's", met=None if quick or ratio is None else ratio <= 1.0,
            note=f"none {statistics.median(base) * 1e6:.1f} us/task; median of {reps} rounds "
            f"of {number} tasks, each mode installed and removed between its blocks",
        )
    ]  # fmt: skip


def _rows(
    pool: str,
    modes: tuple[str, ...],
    per_mode: dict[str, list[tuple[float, float]]],
    tasks: int,
    reps: int,
) -> list[dict[str, Any]]:
    """Time and CPU time per task of each instrumented mode against ``none``."""
    rows = []
    name = "trivial task" if pool == "solo" else "task"
    where = "solo pool" if pool == "solo" else f"prefork pool (1 child), {TASK_NAMES} task names"
    for index, what in ((0, "time"), (1, "CPU time")):
        base = [round_[index] for round_ in per_mode["none"]]
        for mode in modes[1:]:
            ours = [round_[index] for round_ in per_mode[mode]]
            extra = statistics.median(m - b for m, b in zip(ours, base, strict=True))
            rows.append(
                row(
                    f"Celery worker, {where}, Redis: {what} per {name}",
                    subject=mode, value=statistics.median(ours) * 1e6, unit="us/task",
                    baseline="none", baseline_value=statistics.median(base) * 1e6,
                    ratio=statistics.median(m / b for m, b in zip(ours, base, strict=True)),
                    note=f"{extra * 1e6:+.0f} us/task over none (median of {reps} rounds of "
                    f"{tasks} tasks)",
                )
            )  # fmt: skip
    return rows


def _prefork_rows(tasks: int, reps: int) -> list[dict[str, Any]]:
    per_mode: dict[str, list[tuple[float, float]]] = {mode: [] for mode in PREFORK_MODES}
    for r in range(reps):
        for mode in PREFORK_MODES if r % 2 == 0 else tuple(reversed(PREFORK_MODES)):
            per_mode[mode].append(_one(mode, tasks, pool="prefork"))
    return _rows("prefork", PREFORK_MODES, per_mode, tasks, reps)


if __name__ == "__main__":
    main(__doc__, run, "fewer tasks, one round", "trace-task", _trace_task)

"""Per-job overhead on real RQ workers: bare vs SDK only vs otel-jobs, ``Worker`` and ``SimpleWorker``.

One run starts, in turn, a real RQ worker (``python -m bench.bench_rq --worker MODE KIND QUEUE``,
burst mode, Redis 127.0.0.1:6379 database 15, or ``OTEL_JOBS_BENCH_RQ_REDIS``) of each kind in
each mode, on the same trivial job:

* kinds: RQ's default ``rq.Worker``, which forks a work horse per job, and ``rq.SimpleWorker``,
  which runs the jobs in the worker process;
* ``bare``: no OpenTelemetry SDK, no instrumentation;
* ``none``: the same worker with only an SDK ``TracerProvider`` (no exporter: spans are built,
  not shipped), the baseline of the target (at most +1.5 ms per job for the forking worker);
* ``otel-jobs``: the same SDK provider and ``otel_jobs.instrument(frameworks=["rq"],
  outbound=[])``, called in the worker process before the worker is created (so that the horses
  inherit it); ``/metrics`` is served but not scraped. Before each worker starts, ``jobs`` jobs are enqueued
on a queue of its own by an uninstrumented connection; the first and the last job write their
``time.time()`` to Redis, so the figure is ``(last - first) / (jobs - 1)``: the worker's time per
job, Redis round trips (and, for ``Worker``, the fork of a horse) included, worker start-up
excluded. Modes take turns for ``reps`` rounds (in an order that alternates between rounds); the
overhead is the median over rounds of ``otel-jobs`` against ``none`` in the same round. The
machine is shared and a worker's time per job swings from round to round: read the figures as
orders of magnitude.

Clean-up: each worker run has a queue name, worker name and job ids of its own (all containing
``oj-bench-rq-<hex>``); once the worker has exited, every key containing that name (the queue, its
registries, the jobs, their results, the worker's keys and the marks) is deleted and the name is
removed from RQ's ``rq:queues`` and ``rq:workers`` sets; RQ's group-cleaning lock
``rq:clean_groups``, taken by each worker at start-up, is deleted too (so that every worker starts
alike). Nothing else in the database is touched.
``python -m bench.bench_rq [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

try:
    from bench._timing import row
except ImportError:  # run as a script from bench/
    from _timing import row  # type: ignore[no-redef]

REDIS_URL = os.environ.get("OTEL_JOBS_BENCH_RQ_REDIS", "redis://127.0.0.1:6379/15")
ROOT = Path(__file__).resolve().parents[1]
MODES = ("bare", "none", "otel-jobs")
TARGET_MS = 1.5  # per job over "none", fork-per-job Worker
# kind: (worker class, benchmark name, unit, unit scale, (jobs, rounds) full, (jobs, rounds) quick)
KINDS: dict[str, tuple[str, str, str, float, tuple[int, int], tuple[int, int]]] = {
    "fork": (
        "Worker", "RQ fork-per-job Worker, Redis: time per trivial job", "ms/job", 1e3,
        (300, 5), (60, 1),
    ),
    "simple": (
        "SimpleWorker", "RQ SimpleWorker, Redis: time per trivial job", "us/job", 1e6,
        (1000, 3), (60, 1),
    ),
}  # fmt: skip


def noop(mark: str | None = None) -> None:
    """The job: nothing, except for the first and the last, which write the time to ``mark``."""
    if mark is not None:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        client.set(mark, repr(time.time()))
        client.close()


# --- the worker side (``python -m bench.bench_rq --worker MODE KIND QUEUE``) ---------------------


def _work(mode: str, kind: str, queue: str) -> None:
    if mode != "bare":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        trace.set_tracer_provider(TracerProvider())
    if mode == "otel-jobs":
        import otel_jobs

        otel_jobs.instrument(frameworks=["rq"], outbound=[], prometheus_port=0)
    import redis
    import rq

    worker_class = getattr(rq, KINDS[kind][0])
    worker = worker_class([queue], name=queue, connection=redis.Redis.from_url(REDIS_URL))
    worker.work(burst=True, logging_level="WARNING")


# --- the driver -------------------------------------------------------------------------------


def _clean(client: Any, name: str) -> None:
    keys = list(client.scan_iter(match=f"*{name}*", count=1000))
    if keys:
        client.delete(*keys)
    client.srem("rq:queues", f"rq:queue:{name}")
    client.srem("rq:workers", f"rq:worker:{name}")
    client.delete("rq:clean_groups")  # RQ's group-cleaning lock (it would expire in 10 minutes)


def _one(mode: str, kind: str, jobs: int) -> tuple[float, float]:
    """Seconds per job for one worker run of ``kind`` in ``mode``, and the minor page faults
    per job of the worker and its horses (start-up included, spread over the jobs)."""
    import resource

    import redis
    from rq import Queue

    client = redis.Redis.from_url(REDIS_URL)
    queue = f"oj-bench-rq-{uuid.uuid4().hex[:10]}"
    first, last = f"{queue}:first", f"{queue}:last"
    worker = None
    faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    try:
        marks: list[str | None] = [first] + [None] * (jobs - 2) + [last]
        Queue(queue, connection=client).enqueue_many(
            [
                Queue.prepare_data("bench.bench_rq.noop", args=(mark,), job_id=f"{queue}-{i}")
                for i, mark in enumerate(marks)
            ]
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OTEL_JOBS_BENCH_RQ_REDIS": REDIS_URL}
        worker = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_rq", "--worker", mode, kind, queue],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        try:
            _, err = worker.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the {mode} {kind} worker did not finish its {jobs} jobs") from None
        start, end = client.get(first), client.get(last)
        if worker.returncode != 0 or start is None or end is None:
            raise RuntimeError(
                f"the {mode} {kind} worker exited with {worker.returncode} without running its "
                f"{jobs} jobs: {err.decode(errors='replace')[-2000:]}"
            )
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        _clean(client, queue)
        client.close()
    faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - faults
    return (float(end) - float(start)) / (jobs - 1), faults / jobs


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Measure each worker kind in each mode; one row per kind, otel-jobs against ``none``.

    Ratios are taken per round (``otel-jobs`` against ``none`` of the same round) and their
    median kept, so that a slow moment of a shared machine weighs on both sides alike.
    """
    rows = []
    for kind, (_, benchmark, unit, scale, full, small) in KINDS.items():
        jobs, reps = small if quick else full
        per_mode: dict[str, list[float]] = {mode: [] for mode in MODES}
        faults: dict[str, list[float]] = {mode: [] for mode in MODES}
        for r in range(reps):
            for mode in MODES if r % 2 == 0 else tuple(reversed(MODES)):
                seconds, page_faults = _one(mode, kind, jobs)
                per_mode[mode].append(seconds)
                faults[mode].append(page_faults)
        base, ours, bare = per_mode["none"], per_mode["otel-jobs"], per_mode["bare"]
        ratio = statistics.median(m / b for m, b in zip(ours, base, strict=True))
        extra = statistics.median(m - b for m, b in zip(ours, base, strict=True))
        over_bare = statistics.median(m - b for m, b in zip(ours, bare, strict=True))
        digits = 2 if unit == "ms/job" else 0
        target = kind == "fork"
        rows.append(
            row(
                benchmark, subject="otel-jobs", value=statistics.median(ours) * scale, unit=unit,
                baseline="same worker, SDK tracer provider only",
                baseline_value=statistics.median(base) * scale, ratio=ratio,
                target=f"<= +{TARGET_MS:g} ms/job" if target else "",
                met=extra * 1e3 <= TARGET_MS if target and not quick else None,
                note=f"{extra * scale:+.{digits}f} {unit} over SDK only, "
                f"{over_bare * scale:+.{digits}f} over a bare worker "
                f"({statistics.median(bare) * scale:,.{digits}f}); "
                f"minor page faults per job {statistics.median(faults['otel-jobs']):,.0f} against "
                f"{statistics.median(faults['none']):,.0f} (bare {statistics.median(faults['bare']):,.0f}); "
                f"median of {reps} rounds of {jobs} jobs",
            )
        )  # fmt: skip
    return rows


if __name__ == "__main__":
    try:
        from bench.run import table
    except ImportError:  # run as a script from bench/
        from run import table  # type: ignore[no-redef]

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer jobs, one round")
    parser.add_argument(
        "--worker", nargs=3, metavar=("MODE", "KIND", "QUEUE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        _work(*args.worker)
    else:
        print(table(run(quick=args.quick)))

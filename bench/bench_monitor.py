"""What ``otel-jobs monitor`` costs: one poll of 100 queues holding 1,000,000 waiting jobs.

A ``redis-server`` of the benchmark's own (a free port, no persistence, stopped at the end; the
shared Redis is never touched) is loaded, for each framework in turn, with 100 queues of
10,000 waiting jobs each, as that framework stores them:

* **RQ**: each queue's list of job ids (``rq:queue:<name>``, registered in ``rq:queues``) and
  the job hash of its head (``enqueued_at``); the other jobs' hashes are left out, since a poll
  never reads them (the list is what RQ's queue is);
* **arq**: each queue's sorted set of job ids scored by their enqueue time (ms);
* **Celery** (kombu's Redis transport): each queue's list, whose oldest entry (index -1) is a
  real kombu message with otel-jobs' publish stamp; the others are short placeholders, since a
  poll reads only that one.

For each, the collector's ``poll()`` is timed (median of several, after one warm-up poll) and
its peak allocation measured with ``tracemalloc`` (what a poll costs in memory, not the
interpreter's). Then a real ``python -m otel_jobs monitor`` process watches the RQ queues
with ``--interval 15`` for 60 s: its CPU time over that window (the sum of its threads' run
time from ``/proc/<pid>/task/*/schedstat``, in nanoseconds) as a share of one core, and its
resident memory at the end. Quick mode: 100 queues of 100 jobs, 1 s interval, 3 s window.

``python -m bench --only monitor`` (needs Debian's ``redis-server``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._timing import row

QUEUES = 100
POLL_TARGET_MS = 100.0
MEMORY_TARGET_MB = 50.0
CPU_TARGET = 0.05  # of one core, at a 15 s interval
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_redis() -> Iterator[str]:
    """A ``redis-server`` on a free port for the benchmark alone; its URL (db 0)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _load(url: str, per_queue: int, fill: Callable[[Any, int, int], None]) -> None:
    """Empty the database, then ``fill(pipe, queue_index, start)`` in batches per queue."""
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    for q in range(QUEUES):
        for start in range(0, per_queue, 10_000):
            with client.pipeline(transaction=False) as pipe:
                fill(pipe, q, start)
                pipe.execute()
    client.close()


def _rq(url: str, per_queue: int) -> Any:
    from rq.job import Job
    from rq.queue import Queue

    from otel_jobs.monitor.rq import RQCollector

    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() - 60))

    def fill(pipe: Any, q: int, start: int) -> None:
        name = f"bench-{q:03d}"
        ids = [f"{q:03d}-{i:07d}" for i in range(start, min(start + 10_000, per_queue))]
        pipe.rpush(Queue.redis_queue_namespace_prefix + name, *ids)
        if start == 0:
            pipe.sadd(Queue.redis_queues_keys, Queue.redis_queue_namespace_prefix + name)
            pipe.hset(Job.key_for(ids[0]), mapping={"enqueued_at": stamp, "status": "queued"})

    _load(url, per_queue, fill)
    return RQCollector(url)


def _arq(url: str, per_queue: int) -> Any:
    from otel_jobs.monitor.arq import ArqCollector

    now_ms = int(time.time() * 1000) - 60_000

    def fill(pipe: Any, q: int, start: int) -> None:
        end = min(start + 10_000, per_queue)
        pipe.zadd(f"bench:arq:{q:03d}", {f"{q:03d}-{i:07d}": now_ms + i for i in range(start, end)})

    _load(url, per_queue, fill)
    return ArqCollector(url, queues=[f"bench:arq:{q:03d}" for q in range(QUEUES)])


def _celery(url: str, per_queue: int) -> Any:
    from celery import Celery

    from otel_jobs.monitor.celery import collector_for_app

    message = json.dumps(
        {
            "body": "W1tdLCB7fSwgeyJjYWxsYmFja3MiOiBudWxsfV0=",
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"task": "bench.job", "id": str(uuid.uuid4()), "eta": None,
                        "otel_jobs_published_at": time.time() - 60},
            "properties": {"delivery_tag": str(uuid.uuid4()), "priority": 0,
                           "body_encoding": "base64", "delivery_info": {"exchange": "",
                           "routing_key": "bench"}},
        }
    )  # fmt: skip

    def fill(pipe: Any, q: int, start: int) -> None:
        key = f"bench-celery-{q:03d}"
        if start == 0:
            pipe.lpush(key, message)  # the oldest, at index -1
        count = min(start + 10_000, per_queue) - max(start, 1)
        if count > 0:
            pipe.lpush(key, *[b"x"] * count)

    _load(url, per_queue, fill)
    app = Celery("bench", broker=url)
    return collector_for_app(app, queues=[f"bench-celery-{q:03d}" for q in range(QUEUES)])


def _poll_figures(collector: Any, polls: int) -> tuple[list[float], float, int]:
    """Durations (s) of ``polls`` polls after a warm-up one, the peak allocation (bytes) of one
    poll, and the jobs it counted waiting."""
    readings = collector.poll()
    waiting = sum(r.depths.get("waiting", 0) for r in readings)
    durations = []
    for _ in range(polls):
        start = time.perf_counter()
        collector.poll()
        durations.append(time.perf_counter() - start)
    tracemalloc.start()
    try:
        collector.poll()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return durations, float(peak), waiting


def _cpu_ns(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended between listing and reading
    return total


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _process_figures(url: str, interval: float, window: float) -> tuple[float, float, int]:
    """CPU share of one core and RSS (MB) of a real monitor process over ``window`` seconds."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "otel_jobs", "monitor", "--rq-redis-url", url, "--port", str(port),
         "--interval", str(interval)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:  # until its first poll is on /metrics: start-up is not the steady state
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    if b"otel_jobs_monitor_poll_duration_seconds_count" in r.read():
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the monitor did not start (exit code {proc.poll()})")
            time.sleep(0.2)
        cpu0, t0 = _cpu_ns(proc.pid), time.monotonic()
        time.sleep(window)
        cpu1, t1 = _cpu_ns(proc.pid), time.monotonic()
        rss = _rss_mb(proc.pid)
        polls = int(window // interval)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return (cpu1 - cpu0) / 1e9 / (t1 - t0), rss, polls


def run(quick: bool = False) -> list[dict[str, Any]]:
    per_queue, polls = (100, 3) if quick else (10_000, 15)
    total = per_queue * QUEUES
    rows = []
    with private_redis() as url:
        for framework, build in (("RQ", _rq), ("arq", _arq), ("Celery (Redis)", _celery)):
            collector = build(url, per_queue)
            try:
                durations, peak, waiting = _poll_figures(collector, polls)
            finally:
                collector.close()
            if waiting != total:
                raise RuntimeError(f"{framework}: the poll counted {waiting} jobs, not {total}")
            poll_ms = statistics.median(durations) * 1e3
            bench = f"Monitor poll, {QUEUES} queues, {total:,} waiting jobs"
            rows.append(
                row(
                    bench,
                    subject=f"{framework}: one poll",
                    value=poll_ms,
                    unit="ms/poll",
                    target="" if quick else f"< {POLL_TARGET_MS:g} ms",
                    met=None if quick else poll_ms < POLL_TARGET_MS,
                    note=f"median of {polls}; max {max(durations) * 1e3:.1f} ms",
                )
            )
            rows.append(
                row(
                    bench,
                    subject=f"{framework}: memory one poll allocates (peak)",
                    value=peak / 1e6,
                    unit="MB",
                    target="" if quick else f"< {MEMORY_TARGET_MB:g} MB",
                    met=None if quick else peak / 1e6 < MEMORY_TARGET_MB,
                    note="tracemalloc",
                )
            )
        # The process, on the RQ queues (the last loaded were Celery's: load RQ's again).
        _rq(url, per_queue).close()
        interval, window = (1.0, 3.0) if quick else (15.0, 60.0)
        share, rss, process_polls = _process_figures(url, interval, window)
    rows.append(
        row(
            f"otel-jobs monitor process, {QUEUES} RQ queues, {total:,} waiting jobs",
            subject=f"CPU at a {interval:g} s interval",
            value=share * 100,
            unit="% of a core",
            target="" if quick else f"< {CPU_TARGET * 100:g}%",
            met=None if quick else share < CPU_TARGET,
            note=f"{window:g} s window, about {process_polls} polls",
        )
    )
    rows.append(
        row(
            f"otel-jobs monitor process, {QUEUES} RQ queues, {total:,} waiting jobs",
            subject="resident memory",
            value=rss,
            unit="MB",
            target="" if quick else f"< {MEMORY_TARGET_MB:g} MB",
            met=None if quick else rss < MEMORY_TARGET_MB,
            note="the whole process: interpreter, redis-py, rq, prometheus-client",
        )
    )
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    from .run import table

    print(table(run(quick=parser.parse_args().quick)))

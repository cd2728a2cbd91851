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
  poll reads only that one;
* **Dramatiq** (``RedisBroker``): each queue's list of message ids and, in its ``.msgs`` hash,
  the real encoded message of its head (the others' bodies are left out: a poll counts the
  hash, ``HLEN``, and reads the head's body only);
* **Huey** (``RedisHuey``): one queue per Huey instance, so 100 instances, each a collector of
  its own polled in its own thread as the monitor does (``Monitor.poll``); each list's oldest
  entry is a real task serialized by Huey with a due time, the others placeholders.

When a RabbitMQ answers at ``OTEL_JOBS_BENCH_RABBITMQ_URL`` (default: the local one, guest),
100 queues of the benchmark's own are declared on it too (and Dramatiq's ``.DQ``/``.XQ``), with
100 ready messages each, and read by the Celery and Dramatiq collectors: a passive
``queue.declare`` per queue (three for Dramatiq), since AMQP 0-9-1 has no batch; what it costs
does not depend on the depth, RabbitMQ keeps the count. They are deleted at the end.

For each, one poll is timed (median of several, after one warm-up poll) and its peak allocation
measured with ``tracemalloc`` (what a poll costs in memory, not the interpreter's). Then two real
``python -m otel_jobs monitor`` processes at once (two monitors on one broker, for availability)
watch the RQ queues with ``--interval 15`` for 60 s, each scraped every 15 s as a Prometheus
would: the CPU time of each over that window (the sum of its threads' run time from
``/proc/<pid>/task/*/schedstat``, in nanoseconds) as a share of one core, its resident memory at
the end, and whether the two serve the same figures (every depth equal, every oldest age from
the same due time). Quick mode: 100 queues of 100 jobs, 1 s interval, 3 s window.

``python -m bench --only monitor`` (needs Debian's ``redis-server``).
"""

from __future__ import annotations

import datetime
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
#: The RabbitMQ the AMQP collectors are timed on, when one answers there (queues of its own,
#: deleted at the end). A passive ``queue.declare`` returns the count RabbitMQ keeps: what it
#: costs does not depend on the depth, so the queues hold a few messages only.
RABBITMQ_URL = os.environ.get("OTEL_JOBS_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
RABBITMQ_PER_QUEUE = 100
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


def _lists(
    key: Callable[[int], str], head: bytes | str, per_queue: int
) -> Callable[[Any, int, int], None]:
    """The ``fill`` of lists published with ``LPUSH`` and consumed from the right (kombu, Huey):
    ``head`` is each list's oldest entry (index -1), the others short placeholders."""

    def fill(pipe: Any, q: int, start: int) -> None:
        if start == 0:
            pipe.lpush(key(q), head)
        count = min(start + 10_000, per_queue) - max(start, 1)
        if count > 0:
            pipe.lpush(key(q), *[b"x"] * count)

    return fill


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

    _load(url, per_queue, _lists(lambda q: f"bench-celery-{q:03d}", message, per_queue))
    app = Celery("bench", broker=url)
    return collector_for_app(app, queues=[f"bench-celery-{q:03d}" for q in range(QUEUES)])


def _celery_held(url: str, per_queue: int) -> Any:
    """Celery's queues as :func:`_celery` loads them, and 1,000 ETA tasks held by its workers:
    kombu's ``unacked`` hash at the size up to which a poll reads it to tell each queue's
    ``scheduled`` and ``reserved`` (``UNACKED_READ_LIMIT``), each entry about 1.3 KB."""
    import base64

    import redis

    from otel_jobs.monitor.celery import UNACKED_READ_LIMIT

    collector = _celery(url, per_queue)
    eta = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 3600))
    body = base64.b64encode(b"x" * 750).decode()
    client = redis.Redis.from_url(url)
    entries = {}
    for i in range(UNACKED_READ_LIMIT):
        tag = str(uuid.uuid4())
        message = {
            "body": body, "content-encoding": "utf-8", "content-type": "application/json",
            "headers": {"task": "bench.job", "id": tag, "eta": eta},
            "properties": {"delivery_tag": tag, "priority": 0, "body_encoding": "base64"},
        }  # fmt: skip
        entries[tag] = json.dumps([message, "", f"bench-celery-{i % QUEUES:03d}"])
    client.hset("unacked", mapping=entries)
    client.close()
    return collector


def _dramatiq(url: str, per_queue: int) -> Any:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    from otel_jobs.monitor.dramatiq import collector_for_broker

    def fill(pipe: Any, q: int, start: int) -> None:
        name = f"bench-dq-{q:03d}"
        ids = [f"{q:03d}-{i:07d}" for i in range(start, min(start + 10_000, per_queue))]
        pipe.rpush(f"dramatiq:{name}", *ids)
        if start == 0:  # the head's body, published a minute ago
            head: Any = dramatiq.Message(
                queue_name=name, actor_name="bench", args=(), kwargs={}, options={},
                message_id=ids[0], message_timestamp=int((time.time() - 60) * 1000),
            )  # fmt: skip
            pipe.hset(f"dramatiq:{name}.msgs", ids[0], head.encode())

    _load(url, per_queue, fill)
    broker = RedisBroker(url=url)
    try:
        return collector_for_broker(broker, queues=[f"bench-dq-{q:03d}" for q in range(QUEUES)])
    finally:
        broker.close()  # the collector has a client of its own


class _HueyInstances:
    """100 ``RedisHuey`` instances, one queue each, read as the monitor reads them: one
    collector per instance, all polled at once by :class:`~otel_jobs.monitor.Monitor`."""

    def __init__(self, url: str, per_queue: int) -> None:
        from huey import RedisHuey

        from otel_jobs.monitor import Monitor
        from otel_jobs.monitor.huey import HueyCollector

        instances = [RedisHuey(f"bench-huey-{q:03d}", url=url) for q in range(QUEUES)]
        task = instances[0].task()(_huey_job).s()
        task.eta = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
        head = instances[0].serialize_task(task)

        _load(url, per_queue, _lists(lambda q: instances[q].storage.queue_key, head, per_queue))
        self.monitor = Monitor([HueyCollector(h) for h in instances], interval=3600, timeout=5)

    def poll(self) -> list[Any]:
        self.monitor.poll()
        outcomes = self.monitor.outcomes()
        down = [o.reason for _, o in outcomes if not o.up]
        if down or len(outcomes) != QUEUES:
            raise RuntimeError(f"Huey: {len(down)} collectors down ({down[:1]})")
        return [reading for _, o in outcomes for reading in o.readings]

    def close(self) -> None:
        self.monitor.close()


def _huey_job() -> None:
    """The task whose serialized message heads every Huey queue."""


def _poll_figures(collector: Any, polls: int) -> tuple[list[float], float, int, int]:
    """Durations (s) of ``polls`` polls after a warm-up one, the peak allocation (bytes) of one
    poll, the jobs it counted waiting and the queues it found an oldest age for."""
    readings = collector.poll()
    waiting = sum(r.depths.get("waiting", 0) for r in readings)
    aged = sum(1 for r in readings if r.oldest_due is not None)
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
    return durations, float(peak), waiting, aged


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


def _scrape(port: int) -> tuple[str, float, float]:
    """The monitor's ``/metrics`` text, and the Unix times just before and after reading it."""
    before = time.time()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return text, before, time.time()


def _figures(scraped: tuple[str, float, float]) -> tuple[dict[tuple[str, ...], float], dict]:
    """The depths of a scrape, and for each queue the interval its oldest job's due time lies
    in (the age was computed between the two clock readings around the scrape)."""
    from prometheus_client.parser import text_string_to_metric_families

    text, before, after = scraped
    depths: dict[tuple[str, ...], float] = {}
    due: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "otel_jobs_queue_depth":
                depths[(s.labels["queue"], s.labels["state"])] = s.value
            elif s.name == "otel_jobs_queue_oldest_waiting_age_seconds":
                due[s.labels["queue"]] = (before - s.value, after - s.value)
    return depths, due


def _read_alike(ports: list[int]) -> int:
    """The queues the monitors on ``ports`` read alike (every depth equal, the oldest ages from
    the same due time); ``RuntimeError`` if any differs."""
    (d1, a1), (d2, a2) = (_figures(_scrape(port)) for port in ports)
    if d1 != d2 or a1.keys() != a2.keys():
        raise RuntimeError("two monitors on one broker served different depths")
    for queue, (lo1, hi1) in a1.items():
        lo2, hi2 = a2[queue]
        if lo1 > hi2 + 1e-3 or lo2 > hi1 + 1e-3:
            raise RuntimeError(f"two monitors differ on the oldest job of {queue}")
    return len({queue for queue, _ in d1})


def _process_figures(url: str, interval: float, window: float) -> dict[str, Any]:
    """Two monitor processes on the RQ queues at once, each scraped every ``interval`` for
    ``window`` seconds: the CPU share of one core and RSS (MB) of each, and the queues they
    read alike."""
    ports = [_free_port(), _free_port()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(ROOT)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "otel_jobs",
                "monitor",
                "--rq-redis-url",
                url,
                "--port",
                str(port),
                "--interval",
                str(interval),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
        for port in ports
    ]
    try:
        deadline = time.monotonic() + 120
        for proc, port in zip(procs, ports, strict=True):
            while True:  # until its first poll is on /metrics: start-up is not the steady state
                try:
                    if "otel_jobs_monitor_poll_duration_seconds_count" in _scrape(port)[0]:
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the monitor did not start (exit code {proc.poll()})")
                time.sleep(0.2)
        cpu0, t0 = [_cpu_ns(p.pid) for p in procs], time.monotonic()
        scrapes = 0
        while (now := time.monotonic()) < t0 + window:
            if now >= t0 + scrapes * interval:  # a Prometheus scraping each every interval
                for port in ports:
                    _scrape(port)
                scrapes += 1
            time.sleep(max(0.0, min(t0 + scrapes * interval, t0 + window) - time.monotonic()))
        cpu1, t1 = [_cpu_ns(p.pid) for p in procs], time.monotonic()
        alike = _read_alike(ports)
        rss = [_rss_mb(p.pid) for p in procs]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    return {
        "shares": [(b - a) / 1e9 / (t1 - t0) for a, b in zip(cpu0, cpu1, strict=True)],
        "rss": rss,
        "polls": int(window // interval),
        "scrapes": scrapes,
        "alike": alike,
    }


FRAMEWORKS: tuple[tuple[str, Callable[[str, int], Any]], ...] = (
    ("RQ", _rq),
    ("arq", _arq),
    ("Celery (Redis)", _celery),
    ("Celery (Redis), 1,000 ETA tasks held by workers", _celery_held),
    ("Dramatiq (Redis)", _dramatiq),
    ("Huey (Redis), 100 instances", _HueyInstances),
)


def _poll_rows(
    bench: str, framework: str, collector: Any, polls: int, quick: bool, waiting: int, aged: int
) -> list[dict[str, Any]]:
    """The rows of one collector's polls: time and memory; ``RuntimeError`` unless a poll
    counted ``waiting`` jobs and found ``aged`` oldest ages."""
    try:
        durations, peak, counted, found = _poll_figures(collector, polls)
    finally:
        collector.close()
    if counted != waiting or found != aged:
        raise RuntimeError(
            f"{framework}: the poll counted {counted} jobs (not {waiting}) and found "
            f"{found} oldest ages (not {aged})"
        )
    poll_ms = statistics.median(durations) * 1e3
    return [
        row(
            bench,
            subject=f"{framework}: one poll",
            value=poll_ms,
            unit="ms/poll",
            target="" if quick else f"< {POLL_TARGET_MS:g} ms",
            met=None if quick else poll_ms < POLL_TARGET_MS,
            note=f"median of {polls}; max {max(durations) * 1e3:.1f} ms",
        ),
        row(
            bench,
            subject=f"{framework}: memory one poll allocates (peak)",
            value=peak / 1e6,
            unit="MB",
            target="" if quick else f"< {MEMORY_TARGET_MB:g} MB",
            met=None if quick else peak / 1e6 < MEMORY_TARGET_MB,
            note="tracemalloc",
        ),
    ]


@contextmanager
def rabbitmq_queues() -> Iterator[list[str] | None]:
    """:data:`QUEUES` queues of the benchmark's own on the RabbitMQ at :data:`RABBITMQ_URL`
    (with Dramatiq's delay and dead-letter queues), :data:`RABBITMQ_PER_QUEUE` ready messages
    in each, deleted at the end; None when no RabbitMQ answers there."""
    try:
        import pika

        connection = pika.BlockingConnection(
            pika.URLParameters(RABBITMQ_URL + "/%2F?connection_attempts=1&socket_timeout=5")
        )
    except Exception:  # no pika, or no RabbitMQ: the rows are left out
        yield None
        return
    names = [f"bench-monitor-{uuid.uuid4().hex[:6]}-{q:03d}" for q in range(QUEUES)]
    channel = connection.channel()
    try:
        for name in names:
            for queue in (name, f"{name}.DQ", f"{name}.XQ"):
                channel.queue_declare(queue, durable=True)
            for _ in range(RABBITMQ_PER_QUEUE):
                channel.basic_publish("", name, b"{}")
        yield names
    finally:
        for name in names:
            for queue in (name, f"{name}.DQ", f"{name}.XQ"):
                channel.queue_delete(queue)
        connection.close()


def _rabbitmq_rows(names: list[str], polls: int, quick: bool) -> list[dict[str, Any]]:
    from celery import Celery
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    from otel_jobs.monitor.celery import CeleryAMQPCollector
    from otel_jobs.monitor.dramatiq import collector_for_broker

    waiting = QUEUES * RABBITMQ_PER_QUEUE
    bench = f"Monitor poll, {QUEUES} RabbitMQ queues, {waiting:,} ready messages"
    rows = _poll_rows(
        bench,
        "Celery (RabbitMQ)",
        CeleryAMQPCollector(Celery("bench", broker=RABBITMQ_URL + "//"), names),
        polls,
        quick,
        waiting,
        0,  # AMQP cannot look at a message without taking it: no ages
    )
    broker = RabbitmqBroker(url=RABBITMQ_URL)
    try:
        dramatiq = collector_for_broker(broker, queues=names)
        rows += _poll_rows(bench, "Dramatiq (RabbitMQ)", dramatiq, polls, quick, waiting, 0)
    finally:
        broker.close()
    return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
    per_queue, polls = (100, 3) if quick else (10_000, 15)
    total = per_queue * QUEUES
    rows = []
    with rabbitmq_queues() as names:
        if names is not None:
            rows += _rabbitmq_rows(names, polls, quick)
    with private_redis() as url:
        bench = f"Monitor poll, {QUEUES} queues, {total:,} waiting jobs"
        for framework, build in FRAMEWORKS:
            rows += _poll_rows(bench, framework, build(url, per_queue), polls, quick, total, QUEUES)
        # The processes, on the RQ queues (the last loaded were Huey's: load RQ's again).
        _rq(url, per_queue).close()
        interval, window = (1.0, 3.0) if quick else (15.0, 60.0)
        found = _process_figures(url, interval, window)
    bench = f"2 otel-jobs monitor processes at once, {QUEUES} RQ queues, {total:,} waiting jobs"
    share = max(found["shares"])
    rows.append(
        row(
            bench,
            subject=f"CPU of each at a {interval:g} s interval, scraped every {interval:g} s",
            value=share * 100,
            unit="% of a core",
            target="" if quick else f"< {CPU_TARGET * 100:g}%",
            met=None if quick else share < CPU_TARGET,
            note=f"the busier of the two (the other: {min(found['shares']) * 100:.2f} %); "
            f"{window:g} s window, about {found['polls']} polls and {found['scrapes']} scrapes",
        )
    )
    rss = max(found["rss"])
    rows.append(
        row(
            bench,
            subject="resident memory of each",
            value=rss,
            unit="MB",
            target="" if quick else f"< {MEMORY_TARGET_MB:g} MB",
            met=None if quick else rss < MEMORY_TARGET_MB,
            note="the larger; the whole process: interpreter, redis-py, rq, prometheus-client",
        )
    )
    rows.append(
        row(
            bench,
            subject="queues the two read alike",
            value=float(found["alike"]),
            unit="queues",
            target="" if quick else f"all {QUEUES}",
            met=None if quick else found["alike"] == QUEUES,
            note="every depth equal, every oldest age from the same due time (else an error)",
        )
    )
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    from .run import table

    print(table(run(quick=parser.parse_args().quick)))

"""The demo's sample jobs and the threads that run them, as a framework's worker would.

Healthy jobs (:data:`HEALTHY`, taken from an in-memory queue by :func:`worker` threads, their
queue wait measured), a scheduler ticking every second (:func:`scheduler`), and the stuck runs
(:data:`STUCK` and :func:`take_lock_forever`): a call with no timeout to a server that never
answers, a loop that never heartbeats, a wait on a lock another run holds; and an asyncio loop
(:func:`event_loop`) running async jobs until one of them (``demo.resize_images``) holds it with
a blocking call for a few seconds. The line each stuck
run waits on is what the watchdog names (``tests/core/test_watchdog_demo.py`` reads it from this
file): moving a stuck job's body moves that line.
"""

from __future__ import annotations

import asyncio
import collections
import queue as queue_mod
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import otel_jobs
from otel_jobs.core import agent as agent_mod

# --- the sample jobs ------------------------------------------------------------------------


def send_email(rng: random.Random) -> None:
    time.sleep(rng.uniform(0.02, 0.3))


def charge_card(rng: random.Random) -> None:
    time.sleep(rng.uniform(0.05, 0.4))
    if rng.random() < 0.3:
        raise RuntimeError("card declined by the sample payment gateway")


def build_report(rng: random.Random) -> None:
    time.sleep(rng.uniform(1.5, 4.0))


def import_rows(rng: random.Random) -> None:
    steps = 10
    for step in range(steps):
        time.sleep(rng.uniform(0.1, 0.3))
        otel_jobs.heartbeat(progress=(step + 1) / steps, last_row=step)


class _SilentServer:
    """A local TCP server that accepts connections and never answers (a hung upstream)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, name="demo-silent-server", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


_silent: _SilentServer | None = None
_shared_lock = threading.Lock()


def open_silent_server() -> _SilentServer:
    """The hung upstream ``demo.sync_partner`` calls; close it when the demo ends."""
    global _silent
    _silent = _SilentServer()
    return _silent


@otel_jobs.job(name="demo.sync_partner", queue="integrations", max_duration=20, heartbeat_timeout=3)
def sync_partner(rng: random.Random) -> None:
    """Calls a partner API with no timeout; the partner accepts and never answers."""
    import urllib.request

    assert _silent is not None
    urllib.request.urlopen(f"http://127.0.0.1:{_silent.port}/v1/orders")


@otel_jobs.job(
    name="demo.dedupe_customers",
    queue="maintenance",
    max_duration=20,
    heartbeat_timeout=3,
    on_stall="cancel",
)
def dedupe_customers(rng: random.Random) -> None:
    """Spins in a loop whose exit condition never becomes true; the watchdog cancels it."""
    seen = 0
    while seen >= 0:
        seen += 1


@otel_jobs.job(name="demo.rebuild_index", queue="maintenance", max_duration=20, heartbeat_timeout=3)
def rebuild_index(rng: random.Random) -> None:
    """Waits for a lock that another run took and never releases."""
    with _shared_lock:
        pass


@otel_jobs.job(name="demo.fetch_feed", queue="feeds", max_duration=60, heartbeat_timeout=30)
async def fetch_feed(seconds: float) -> None:
    """A healthy async job: it awaits, so the loop stays free for the others."""
    await asyncio.sleep(seconds)


@otel_jobs.job(name="demo.resize_images", queue="feeds", max_duration=60, heartbeat_timeout=30)
async def resize_images(release: threading.Event) -> None:
    """Calls a blocking function inside a coroutine: the whole event loop waits with it."""
    await asyncio.sleep(0)
    release.wait(4.0)  # synchronous: no other coroutine of the loop runs meanwhile
    await asyncio.sleep(1.0)  # the loop runs again: its loop_blocked verdict clears


def event_loop(stop: threading.Event, rng: random.Random) -> None:
    """The demo's asyncio worker: async runs on one loop, two seconds in one of them blocks it."""

    async def main() -> None:
        started = time.monotonic()
        release = threading.Event()
        pending: set[asyncio.Future[None]] = set()
        blocking = None
        while not stop.is_set():
            pending.add(asyncio.ensure_future(fetch_feed(rng.uniform(0.1, 1.5))))
            if blocking is None and time.monotonic() - started > 2.0:
                blocking = asyncio.ensure_future(resize_images(release))
                pending.add(blocking)
            pending = {f for f in pending if not f.done()}
            await asyncio.sleep(0.3)
        release.set()
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    asyncio.run(main())


def _take_lock_forever() -> None:
    with otel_jobs.job_run(
        "demo.hold_lock", queue="maintenance", heartbeat_timeout=3, max_duration=20
    ):
        _shared_lock.acquire()
        time.sleep(3600)


@dataclass(frozen=True)
class Queued:
    """A healthy job as the demo's queue knows it: what runs, where, its limits, how often."""

    func: Callable[[random.Random], None]
    name: str
    queue: str
    max_duration: float
    heartbeat_timeout: float
    rate: float  # new jobs per second


HEALTHY: list[Queued] = [
    Queued(send_email, "demo.send_email", "mail", 5, 5, 5.0),
    Queued(charge_card, "demo.charge_card", "billing", 10, 10, 3.0),
    Queued(build_report, "demo.build_report", "reports", 30, 10, 0.4),
    Queued(import_rows, "demo.import_rows", "reports", 30, 2, 0.6),
]
STUCK: list[Callable[[random.Random], None]] = [sync_partner, dedupe_customers, rebuild_index]


def _refresh_cache(running: threading.Event) -> None:
    try:
        with otel_jobs.job_run(
            "demo.refresh_cache", queue="scheduled", max_duration=10, heartbeat_timeout=5
        ):
            time.sleep(1.6)  # longer than its 1 s schedule: the next tick finds it running
    finally:
        running.clear()


def scheduler(stop: threading.Event) -> None:
    """A tiny scheduler: ``demo.refresh_cache`` every second, at most one instance at a time.

    A tick that finds the previous run still going is skipped, as schedulers do with
    ``max_instances=1``, and counted in ``otel_jobs_runs_skipped_total{reason="max_instances"}``;
    runs missed while the worker was down are counted with ``reason="missed"``. Its one entry is
    on the schedule gauges (next due time, last start, 1 s interval).
    """
    from otel_jobs.core.schedules import Entry

    due = [time.time()]
    agent = agent_mod.current()
    if agent is not None:
        agent.telemetry.schedules.add_source(
            lambda: [Entry("demo.refresh_cache", "refresh-every-second", due[0], 1.0)]
        )
        # It starts as if the worker had been down for a few seconds: the two runs due meanwhile
        # are past their misfire grace time and are skipped as missed, as schedulers do.
        series = agent.telemetry.series("demo.refresh_cache", "scheduled")
        for _ in range(2):
            agent.telemetry.record_skipped(series, "missed")
    running = threading.Event()
    while True:
        agent = agent_mod.current()
        if agent is None:
            return
        if running.is_set():
            series = agent.telemetry.series("demo.refresh_cache", "scheduled")
            agent.telemetry.record_skipped(series, "max_instances")
        else:
            running.set()
            agent.telemetry.schedules.sent("demo.refresh_cache", "refresh-every-second")
            threading.Thread(target=_refresh_cache, args=(running,), daemon=True).start()
        due[0] = time.time() + 1.0
        if stop.wait(1.0):
            return


# --- the worker -------------------------------------------------------------------------------


def worker(jobs: queue_mod.Queue[tuple[Queued, float] | None], rng: random.Random) -> None:
    while True:
        item = jobs.get()
        if item is None:
            return
        job, enqueued_at = item
        # What a framework integration does for each message: one run, with its queue wait
        # measured from the time the job was published.
        try:
            with otel_jobs.job_run(
                job.name,
                queue=job.queue,
                max_duration=job.max_duration,
                heartbeat_timeout=job.heartbeat_timeout,
                enqueued_at=enqueued_at,
            ):
                job.func(rng)
        except Exception:
            pass


#: Jobs published on ``exports``, a queue no worker of the demo takes: their publish times.
backlog: collections.deque[float] = collections.deque()
BACKLOG_QUEUE = "exports"


def worker_once(job: Callable[[random.Random], None], rng: random.Random) -> None:
    try:
        job(rng)
    except Exception:
        pass

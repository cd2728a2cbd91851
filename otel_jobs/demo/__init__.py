"""Run sample jobs in an in-process worker and watch otel-jobs report them (``otel-jobs demo``).

No broker and no collector needed: a pool of worker threads takes jobs from an in-memory queue
(healthy, failing, slow, heartbeating with progress; their queue wait is measured), a tiny
scheduler runs a job every second that overlaps itself (its overlapping ticks are skipped and
counted), and three runs get stuck: a call with no timeout to a local server that never answers
(blocked), a loop that never heartbeats (spinning; its ``on_stall="cancel"`` makes the watchdog
end it with outcome ``timeout``), and a wait on a lock another run holds (blocked). It serves
``/metrics`` on 127.0.0.1 and shows a table of the runs in flight, with each stuck run's
verdict, state and the line it waits on, and the watchdog's verdicts below it; it stops by
itself after ``--duration`` seconds and prints a summary.

    otel-jobs demo --duration 30 --port 9464

``--no-live`` prints a table every 5 s (and the watchdog's WARNING records with their stacks)
instead of redrawing one in place.

Next to the worker, an in-process ``otel-jobs monitor`` (:mod:`otel_jobs.monitor`) watches the
demo's queues from the outside and serves its own ``/metrics`` (``--monitor-port``, the port
after ``--port`` by default): the worker pool's queue, drained, and ``exports``, where jobs are
published and that no worker takes: its depth and the age of its oldest job only grow.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import queue as queue_mod
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


def _take_lock_forever() -> None:
    with otel_jobs.job_run(
        "demo.hold_lock", queue="maintenance", heartbeat_timeout=3, max_duration=20
    ):
        _shared_lock.acquire()
        time.sleep(3600)


@dataclass(frozen=True)
class _Queued:
    """A healthy job as the demo's queue knows it: what runs, where, its limits, how often."""

    func: Callable[[random.Random], None]
    name: str
    queue: str
    max_duration: float
    heartbeat_timeout: float
    rate: float  # new jobs per second


HEALTHY: list[_Queued] = [
    _Queued(send_email, "demo.send_email", "mail", 5, 5, 5.0),
    _Queued(charge_card, "demo.charge_card", "billing", 10, 10, 3.0),
    _Queued(build_report, "demo.build_report", "reports", 30, 10, 0.4),
    _Queued(import_rows, "demo.import_rows", "reports", 30, 2, 0.6),
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


def _scheduler(stop: threading.Event) -> None:
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


def _worker(jobs: queue_mod.Queue[tuple[_Queued, float] | None], rng: random.Random) -> None:
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


class _StallLog(logging.Handler):
    """Keeps the watchdog's verdicts, read from its log records' ``extra`` fields."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.verdicts: list[dict[str, Any]] = []
        self.started = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        fields = record.__dict__
        if "stall_reason" not in fields:
            return
        if fields.get("stall_recovered"):
            self.verdicts.append({"at": time.monotonic() - self.started, "job": fields["job_name"],
                                  "verdict": "recovered", "state": "", "where": "", "policy": ""})  # fmt: skip
            return
        call = fields.get("stall_call")
        self.verdicts.append(
            {
                "at": time.monotonic() - self.started,
                "job": fields["job_name"],
                "verdict": fields["stall_verdict"],
                "state": fields["stall_state"],
                "where": fields.get("stall_where") or "?",
                "policy": fields["stall_policy"],
                "call": call["description"] if call else None,
            }
        )


def _verdict_cells(run: Any) -> tuple[str, str, str]:
    """(verdict, state, line it waits on) of a run in flight, from ``run.diagnosis``."""
    if not run.verdict:
        return "ok", "", ""
    diagnosis = run.diagnosis
    verdict = getattr(diagnosis, "verdict", run.verdict)
    where = getattr(diagnosis, "where", None)
    return verdict, run.state or "unknown", str(where) if where is not None else "?"


def _render(
    started: float, duration: float, url: str | None, stall_log: _StallLog | None = None
) -> list[str]:
    agent = agent_mod.current()
    lines = [
        f"otel-jobs demo  {time.monotonic() - started:5.1f}s / {duration:.0f}s   metrics: {url or 'off'}",
        "",
    ]
    if agent is None:
        return lines
    lines.append(
        f"{'run':<24} {'queue':<12} {'age':>6} {'beat':>6} {'progress':>8}  "
        f"{'verdict':<8} {'state':<9} waiting at"
    )
    now = time.monotonic()
    runs = sorted(agent.runs(), key=lambda r: (r.verdict is None, r.start_mono))[:14]
    for run in runs:
        progress = f"{run.progress:.0%}" if run.progress is not None else "-"
        verdict, state, where = _verdict_cells(run)
        lines.append(
            f"{run.name:<24} {run.queue:<12} {now - run.start_mono:5.1f}s {now - run.last_beat:5.1f}s "
            f"{progress:>8}  {verdict:<8} {state:<9} {where}".rstrip()
        )
    if _backlog:
        lines += [
            "",
            f"queue {BACKLOG_QUEUE!r}: {len(_backlog)} waiting, the oldest for "
            f"{time.time() - _backlog[0]:.0f}s: no worker takes it (see the monitor's /metrics)",
        ]
    if stall_log is not None and stall_log.verdicts:
        lines += ["", "watchdog verdicts (its WARNING log records):"]
        for v in stall_log.verdicts[-10:]:
            line = (
                f"  {v['at']:5.1f}s  {v['job']:<24} {v['verdict']:<9} {v['state']:<9} {v['where']}"
            )
            if v["policy"] and v["policy"] != "observe":
                line += f"  [on_stall={v['policy']}]"
            lines.append(line.rstrip())
            if v.get("call"):
                lines.append(f"          outbound call {v['call']}")
    return lines


def _summary() -> list[str]:
    from prometheus_client.parser import text_string_to_metric_families

    agent = agent_mod.current()
    if agent is None:
        return []
    from prometheus_client import generate_latest

    text = generate_latest(agent.telemetry.registry).decode()
    counts: dict[str, dict[str, float]] = {}
    stalls: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "otel_jobs_runs_finished_total" and s.value:
                counts.setdefault(s.labels["job_name"], {})[s.labels["outcome"]] = s.value
            elif s.name == "otel_jobs_stalls_detected_total" and s.value:
                stalls[s.labels["job_name"]] = stalls.get(s.labels["job_name"], 0) + s.value
    lines = ["", "summary (finished runs by outcome, stall verdicts):"]
    for name in sorted(set(counts) | set(stalls)):
        outcomes = ", ".join(f"{k}={int(v)}" for k, v in sorted(counts.get(name, {}).items()))
        in_flight = sum(1 for r in agent.runs() if r.name == name)
        lines.append(
            f"  {name:<26} {outcomes or '-':<36} in flight={in_flight} stalls={int(stalls.get(name, 0))}"
        )
    return lines


#: Jobs published on ``exports``, a queue no worker of the demo takes: their publish times.
_backlog: collections.deque[float] = collections.deque()
BACKLOG_QUEUE = "exports"


def _start_monitor(jobs: queue_mod.Queue[Any], port: int) -> tuple[Any, Any, threading.Event]:
    """The monitor of the demo's two queues, polled every second, and its endpoint."""
    from .core.exposition import serve
    from .monitor import Monitor
    from .monitor.memory import MemoryCollector

    def pool_queue() -> tuple[int, float | None]:
        with jobs.mutex:  # the head of queue.Queue's own deque, read under its lock
            head = jobs.queue[0] if jobs.queue else None
            return len(jobs.queue), head[1] if isinstance(head, tuple) else None

    def exports() -> tuple[int, float | None]:
        return len(_backlog), _backlog[0] if _backlog else None

    collector = MemoryCollector({"pool": pool_queue, BACKLOG_QUEUE: exports}, framework="demo")
    monitor = Monitor([collector], interval=1.0, timeout=1.0)
    try:
        server = serve(monitor.registry, "127.0.0.1", port)
    except OSError:
        server = serve(monitor.registry, "127.0.0.1", 0)  # its port is taken: any free one
    stop = threading.Event()
    threading.Thread(target=monitor.run, args=(stop,), name="demo-monitor", daemon=True).start()
    return monitor, server, stop


def run_demo(
    duration: float = 30.0,
    port: int = 9464,
    workers: int = 4,
    seed: int = 7,
    live: bool | None = None,
    monitor_port: int | None = None,
) -> int:
    global _silent
    rng = random.Random(seed)
    _silent = _SilentServer()
    otel_jobs.instrument(prometheus_port=port, watchdog_interval=0.5)
    agent = agent_mod.current()
    if agent is not None and agent.server is None and port != 0:
        otel_jobs.uninstrument()
        otel_jobs.instrument(prometheus_port=0, watchdog_interval=0.5)
    url = otel_jobs.metrics_url()
    jobs: queue_mod.Queue[Any] = queue_mod.Queue()
    _backlog.clear()
    if monitor_port is None:
        monitor_port = port + 1 if port else 0
    monitor, monitor_server, stop_monitor = _start_monitor(jobs, monitor_port)
    print(
        f"otel-jobs demo: serving {url} (monitor: {monitor_server.url}); running for "
        f"{duration:.0f}s",
        flush=True,
    )
    threads = [
        threading.Thread(target=_worker, args=(jobs, random.Random(seed + i)), daemon=True)
        for i in range(workers)
    ]
    for t in threads:
        t.start()
    stop_scheduler = threading.Event()
    scheduler = threading.Thread(target=_scheduler, args=(stop_scheduler,), daemon=True)
    scheduler.start()
    # The stuck runs get worker threads of their own, so the healthy jobs keep flowing.
    threading.Thread(target=_take_lock_forever, daemon=True).start()
    time.sleep(0.1)
    for stuck in STUCK:
        threading.Thread(target=_worker_once, args=(stuck, rng), daemon=True).start()
    live = sys.stdout.isatty() if live is None else live
    # The watchdog's verdicts are shown from its log records; printed as they come only when the
    # table is not redrawn in place (they carry the full stack).
    otel_logger = logging.getLogger("otel_jobs")
    stall_log = _StallLog()
    saved_level = otel_logger.level
    otel_logger.setLevel(logging.INFO)
    otel_logger.addHandler(stall_log)
    printer: logging.Handler | None = None
    if not live:
        printer = logging.StreamHandler(sys.stdout)
        printer.setLevel(logging.WARNING)
        printer.setFormatter(logging.Formatter("%(message)s\n"))
        otel_logger.addHandler(printer)
    started = time.monotonic()
    next_print = 0.0
    while (elapsed := time.monotonic() - started) < duration:
        for job in HEALTHY:
            if rng.random() < job.rate * 0.25:
                jobs.put((job, time.time()))
        if rng.random() < 0.5:  # about 2 a second on a queue no worker takes
            _backlog.append(time.time())
        if elapsed >= next_print:
            lines = _render(started, duration, url, stall_log)
            if live:
                sys.stdout.write("\x1b[H\x1b[J" + "\n".join(lines) + "\n")
            else:
                sys.stdout.write("\n".join(lines) + "\n\n")
            sys.stdout.flush()
            next_print = elapsed + (0.5 if live else 5.0)
        time.sleep(0.25)
    stop_scheduler.set()
    scheduler.join(timeout=10)
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join(timeout=10)
    print("\n".join(_summary()), flush=True)
    stop_monitor.set()
    monitor_server.stop()
    monitor.close()
    otel_jobs.uninstrument()
    otel_logger.removeHandler(stall_log)
    if printer is not None:
        otel_logger.removeHandler(printer)
    otel_logger.setLevel(saved_level)
    _silent.close()
    return 0


def _worker_once(job: Callable[[random.Random], None], rng: random.Random) -> None:
    try:
        job(rng)
    except Exception:
        pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to run (default 30)")
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("OTEL_JOBS_PROMETHEUS_PORT", 9464)),
        help="port of /metrics on 127.0.0.1 (default 9464; 0: any free port)",
    )
    parser.add_argument(
        "--monitor-port",
        type=int,
        default=None,
        help="port of the demo monitor's /metrics on 127.0.0.1 (default: --port + 1; 0: any)",
    )
    parser.add_argument(
        "--workers", type=int, default=4, help="worker threads for the healthy jobs"
    )
    parser.add_argument(
        "--no-live", action="store_true", help="print periodic tables instead of redrawing one"
    )


def run(args: argparse.Namespace) -> int:
    if args.duration <= 0:
        print("otel-jobs demo: --duration must be positive", file=sys.stderr)
        return 2
    return run_demo(
        duration=args.duration,
        port=args.port,
        workers=args.workers,
        live=False if args.no_live else None,
        monitor_port=args.monitor_port,
    )

"""Run sample jobs in an in-process worker and watch otel-jobs report them (``otel-jobs demo``).

No broker and no collector needed: a pool of worker threads takes jobs from an in-memory queue
(healthy, failing, slow, heartbeating with progress; their queue wait is measured), a tiny
scheduler runs a job every second that overlaps itself (its overlapping ticks are skipped and
counted), and three runs get stuck: a call with no timeout to a local server that never answers
(blocked), a loop that never heartbeats (spinning; its ``on_stall="cancel"`` makes the watchdog
end it with outcome ``timeout``), and a wait on a lock another run holds (blocked, named as a
``threading.Lock`` waited on without a timeout). On an asyncio loop of its own, async jobs run
until one of them calls ``time.sleep()``-like blocking code inside its coroutine: a
``loop_blocked`` verdict naming that line and the runs it holds up, then its recovery. It serves
``/metrics`` on 127.0.0.1 and shows a table of the runs in flight, with each stuck run's
verdict, state and the line it waits on, and the watchdog's verdicts below it; it stops by
itself after ``--duration`` seconds (or at Ctrl-C or SIGTERM) and prints a summary.

    otel-jobs demo --duration 30 --port 9464

``--no-live`` prints a table every 5 s (and the watchdog's WARNING records with their stacks)
instead of redrawing one in place.

Next to the worker, an in-process ``otel-jobs monitor`` (:mod:`otel_jobs.monitor`) watches the
demo's queues from the outside and serves its own ``/metrics`` (``--monitor-port``, the port
after ``--port`` by default): the worker pool's queue, drained, and ``exports``, where jobs are
published and that no worker takes: its depth and the age of its oldest job only grow.

``--prometheus`` also runs a real Prometheus (:mod:`.prometheus`), when one is on ``PATH``,
scraping both endpoints with the shipped rules at demo speed; the table shows each alert's
state next to the runs, and the summary when each alert first went pending and firing.

The package: :mod:`.jobs` (the sample jobs and the threads that run them), :mod:`.table`
(what is printed), :mod:`.prometheus`; this module starts and stops them in order. Whatever
way the demo ends, it stops what it started (the Prometheus process and its directory too).
"""

from __future__ import annotations

import argparse
import logging
import os
import queue as queue_mod
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import otel_jobs
from otel_jobs.core import agent as agent_mod

from . import prometheus as prometheus_mod
from . import table
from .jobs import (
    BACKLOG_QUEUE,
    HEALTHY,
    STUCK,
    _take_lock_forever,
    backlog,
    event_loop,
    open_silent_server,
    scheduler,
    worker,
    worker_once,
)

#: How long the demo runs when ``--duration`` is not given: long enough, with ``--prometheus``,
#: to see the alerts that need a window of data (failure ratio, overrun, backlog) fire too.
DURATION = 30.0
DURATION_WITH_PROMETHEUS = 90.0


def _start_monitor(jobs: queue_mod.Queue[Any], port: int) -> tuple[Any, Any, threading.Event]:
    """The monitor of the demo's two queues, polled every second, and its endpoint."""
    from ..core.exposition import serve
    from ..monitor import Monitor
    from ..monitor.memory import MemoryCollector

    def pool_queue() -> tuple[int, float | None]:
        with jobs.mutex:  # the head of queue.Queue's own deque, read under its lock
            head = jobs.queue[0] if jobs.queue else None
            return len(jobs.queue), head[1] if isinstance(head, tuple) else None

    def exports() -> tuple[int, float | None]:
        return len(backlog), backlog[0] if backlog else None

    collector = MemoryCollector({"pool": pool_queue, BACKLOG_QUEUE: exports}, framework="demo")
    monitor = Monitor([collector], interval=1.0, timeout=1.0)
    try:
        server = serve(monitor.registry, "127.0.0.1", port)
    except OSError:
        server = serve(monitor.registry, "127.0.0.1", 0)  # its port is taken: any free one
    stop = threading.Event()
    threading.Thread(target=monitor.run, args=(stop,), name="demo-monitor", daemon=True).start()
    return monitor, server, stop


def _on_stop_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGINT and SIGTERM end the demo in order (a second one interrupts it); returns the undo.

    Only the main thread can set handlers: called from another one, it sets none.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(f"\notel-jobs demo: {signal.Signals(signum).name}, stopping", flush=True)

    saved = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in saved.items():
            signal.signal(sig, old)

    return restore


def _start_prometheus(
    worker_url: str, monitor_url: str, stop: threading.Event
) -> prometheus_mod.DemoPrometheus | None:
    """Prometheus on the demo's endpoints, or None (with one line saying why) when it can't."""
    path = prometheus_mod.binary()
    if path is None:
        print(prometheus_mod.INSTALL_HINT, flush=True)
        return None
    prom = prometheus_mod.DemoPrometheus(path, worker_url, monitor_url)
    print(
        f"otel-jobs demo: starting Prometheus ({path}, files in {prom.dir}, removed at exit)...",
        flush=True,
    )
    try:
        prom.start(cancel=stop)
    except Exception as exc:
        prom.stop()
        print(f"otel-jobs demo: the demo runs without alerts: {exc}", flush=True)
        return None
    pid = prom.proc.pid if prom.proc is not None else 0
    print(
        f"otel-jobs demo: Prometheus {prom.url}/alerts (pid {pid}) scrapes the worker and the "
        "monitor every second, with the shipped rules at demo speed (every `for` "
        f"{prometheus_mod.DEMO_FOR})",
        flush=True,
    )
    return prom


def run_demo(
    duration: float | None = None,
    port: int = 9464,
    workers: int = 4,
    seed: int = 7,
    live: bool | None = None,
    monitor_port: int | None = None,
    prometheus: bool = False,
) -> int:
    """Run the demo (see the module docstring); 0 when it ended by itself or was asked to stop."""
    if duration is None:
        duration = DURATION_WITH_PROMETHEUS if prometheus else DURATION
    rng = random.Random(seed)
    silent = open_silent_server()
    # Eager: the demo is a worker from the start (its endpoint is printed and scraped at once).
    options: dict[str, Any] = {
        "watchdog_interval": 0.5,
        "loop_blocked_timeout": 2.0,
        "start": "eager",
    }
    otel_jobs.instrument(prometheus_port=port, **options)
    agent = agent_mod.current()
    if agent is not None and agent.server is None and port != 0:
        otel_jobs.uninstrument()
        otel_jobs.instrument(prometheus_port=0, **options)
    url = otel_jobs.metrics_url()
    jobs: queue_mod.Queue[Any] = queue_mod.Queue()
    backlog.clear()
    if monitor_port is None:
        monitor_port = port + 1 if port else 0
    monitor, monitor_server, stop_monitor = _start_monitor(jobs, monitor_port)
    stop = threading.Event()
    restore_signals = _on_stop_signals(stop)
    prom: prometheus_mod.DemoPrometheus | None = None
    otel_logger = logging.getLogger("otel_jobs")
    saved_level = otel_logger.level
    handlers: list[logging.Handler] = []
    try:
        if prometheus and url:
            prom = _start_prometheus(url, monitor_server.url, stop)
        elif prometheus:
            print("otel-jobs demo: /metrics is off (OTEL_JOBS_PROMETHEUS_ENABLED): no Prometheus")
        print(
            f"otel-jobs demo: serving {url} (monitor: {monitor_server.url}); running for "
            f"{duration:.0f}s",
            flush=True,
        )
        threads = [
            threading.Thread(target=worker, args=(jobs, random.Random(seed + i)), daemon=True)
            for i in range(workers)
        ]
        for t in threads:
            t.start()
        stop_scheduler = threading.Event()
        scheduling = threading.Thread(target=scheduler, args=(stop_scheduler,), daemon=True)
        scheduling.start()
        asyncio_worker = threading.Thread(
            target=event_loop,
            args=(stop_scheduler, random.Random(seed + 100)),
            name="demo-asyncio",
            daemon=True,
        )
        asyncio_worker.start()
        # The stuck runs get worker threads of their own, so the healthy jobs keep flowing.
        threading.Thread(target=_take_lock_forever, daemon=True).start()
        time.sleep(0.1)
        for stuck in STUCK:
            threading.Thread(target=worker_once, args=(stuck, rng), daemon=True).start()
        live = sys.stdout.isatty() if live is None else live
        started = time.monotonic()
        # The watchdog's verdicts are shown from its log records; printed as they come only
        # when the table is not redrawn in place (they carry the full stack).
        stall_log = table.StallLog(started)
        otel_logger.setLevel(logging.INFO)
        otel_logger.addHandler(stall_log)
        handlers.append(stall_log)
        if not live:
            printer = logging.StreamHandler(sys.stdout)
            printer.setLevel(logging.WARNING)
            printer.setFormatter(logging.Formatter("%(message)s\n"))
            otel_logger.addHandler(printer)
            handlers.append(printer)
        next_print = 0.0
        while (elapsed := time.monotonic() - started) < duration and not stop.is_set():
            for job in HEALTHY:
                if rng.random() < job.rate * 0.25:
                    jobs.put((job, time.time()))
            if rng.random() < 0.5:  # about 2 a second on a queue no worker takes
                backlog.append(time.time())
            if elapsed >= next_print:
                lines = table.render(started, duration, url, stall_log, prom)
                if live:
                    sys.stdout.write("\x1b[H\x1b[J" + "\n".join(lines) + "\n")
                else:
                    sys.stdout.write("\n".join(lines) + "\n\n")
                sys.stdout.flush()
                next_print = elapsed + (0.5 if live else 5.0)
            stop.wait(0.25)
        stop_scheduler.set()
        scheduling.join(timeout=10)
        asyncio_worker.join(timeout=10)
        for _ in threads:
            jobs.put(None)
        for t in threads:
            t.join(timeout=10)
        lines = table.summary()
        if prom is not None:
            lines += ["", *table.alert_lines(prom, started, active_only=False)]
        print("\n".join(lines), flush=True)
    finally:
        if prom is not None:
            prom.stop()
        stop_monitor.set()
        monitor_server.stop()
        monitor.close()
        restore_signals()  # before uninstrument(), which removes a SIGTERM handler of its own
        otel_jobs.uninstrument()
        for handler in handlers:
            otel_logger.removeHandler(handler)
        otel_logger.setLevel(saved_level)
        silent.close()
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help=f"seconds to run (default {DURATION:.0f}; {DURATION_WITH_PROMETHEUS:.0f} with "
        "--prometheus)",
    )
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
    parser.add_argument(
        "--prometheus",
        action="store_true",
        help="also run the prometheus on PATH (a temporary directory, a free port) with the "
        "shipped alert rules at demo speed, and show each alert's state",
    )


def run(args: argparse.Namespace) -> int:
    if args.duration is not None and args.duration <= 0:
        print("otel-jobs demo: --duration must be positive", file=sys.stderr)
        return 2
    try:
        return run_demo(
            duration=args.duration,
            port=args.port,
            workers=args.workers,
            live=False if args.no_live else None,
            monitor_port=args.monitor_port,
            prometheus=args.prometheus,
        )
    except KeyboardInterrupt:  # a second Ctrl-C: everything started was stopped on the way out
        return 130

"""The stuck-run watchdog: one daemon thread per worker process.

Every ``OTEL_JOBS_WATCHDOG_INTERVAL`` seconds (default 1) it looks at each run in flight:

* *stalled* (reason ``no_heartbeat``): no heartbeat for longer than the run's heartbeat timeout;
* *overran* (reason ``max_duration``): running for longer than the run's max duration.

Its own tick is exported as ``otel_jobs_watchdog_last_tick_timestamp_seconds``; a process
whose Python threads are frozen shows by that gauge going stale.

The thread protects itself: ``time.monotonic()`` for deadlines, the in-flight table copied
under its lock and decisions made on the copy, and any exception in a tick logged once and
counted while the thread keeps ticking.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from . import errors

if TYPE_CHECKING:
    from .agent import Agent
    from .run import Run

logger = logging.getLogger("otel_jobs")


class Watchdog:
    """See the module docstring."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="otel-jobs-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def after_fork_in_child(self) -> None:
        was_running = self._thread is not None
        self._thread = None
        if was_running:
            self.start()

    def _loop(self) -> None:
        interval = self._agent.settings.watchdog_interval
        stop = self._stop
        self.tick()
        while not stop.wait(interval):
            self.tick()

    def tick(self) -> None:
        """One look at every run in flight (safe to call from tests)."""
        try:
            self._tick()
        except Exception as exc:
            errors.record("watchdog", exc)
        agent = self._agent
        agent.telemetry.watchdog_last_tick = time.time()
        if agent.share.in_child:
            with errors.guard("multiprocess.flush"):
                agent.share.flush(agent.telemetry.registry)

    def _tick(self) -> None:
        now = time.monotonic()
        for run in self._agent.runs():
            if run.finished:
                continue
            if now - run.start_mono > run.max_duration:
                reason: str | None = "max_duration"
            elif now - run.last_beat > run.heartbeat_timeout:
                reason = "no_heartbeat"
            else:
                reason = None
            if reason != run.verdict:
                self._change(run, reason)

    def _change(self, run: Run, reason: str | None) -> None:
        previous, run.verdict = run.verdict, reason
        if reason is None:
            run.state = None
            logger.info(
                "otel-jobs: run %s of %s recovered (was %s)",
                run.job_id or run.key,
                run.name,
                previous,
            )
            return
        run.state = "unknown"
        self._agent.telemetry.record_stall(run.series, reason)
        logger.warning(
            "otel-jobs: run %s of %s is stuck (%s) after %.1fs",
            run.job_id or run.key,
            run.name,
            reason,
            run.elapsed(),
        )

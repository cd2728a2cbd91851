"""Runs stuck inside other runs: nested ``@job`` runs, or a recursive job 500 runs deep.

The watchdog gives each enclosing run its verdict (counted, marked on its span, its policy
applied) but with the innermost run's diagnosis and one INFO record per innermost run, instead
of a diagnosis and a WARNING each (:func:`otel_jobs.core.verdicts.split_nested` tells them
apart). An enclosing run still stuck a whole tick after its innermost run finished or recovered
is then reported in full. Called from the watchdog's tick only, under its lock.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import errors, stall_policy
from .verdicts import split_nested

if TYPE_CHECKING:
    from .agent import Agent
    from .diagnosis import Diagnosis
    from .run import Run

logger = logging.getLogger("otel_jobs")


class EnclosingRuns:
    """The enclosing runs with a verdict given under an inner run (their cover)."""

    def __init__(
        self,
        agent: Agent,
        signal: Callable[[Run, Diagnosis], None],
        diagnosis_module: Callable[[], Any],
        max_diagnoses: int,
    ) -> None:
        self._agent = agent
        self._signal = signal
        self._diagnosis_module = diagnosis_module
        self._max_diagnoses = max_diagnoses
        # run key -> (run, the inner run its verdict was given under, when that one went away)
        self._covered: dict[int, tuple[Run, Run, float | None]] = {}

    def after_fork_in_child(self) -> None:
        self._covered = {}

    def give_verdicts(self, enclosing: list[tuple[Run, str, Run]], now: float) -> None:
        """Verdicts on runs that enclose a run with a new verdict of its own (its cover).

        Counted, marked on their spans and acted on by their policies like any verdict, but
        with the cover's stack (the same thread's) and one INFO record per cover instead of a
        diagnosis and a WARNING each. Reported in full if they are still stuck a tick after
        their cover is gone (:meth:`report_uncovered`).
        """
        per_cover: dict[int, tuple[Run, int]] = {}
        for run, reason, cover in enclosing:
            with errors.guard("watchdog"):
                inner: Diagnosis | None = cover.diagnosis
                if inner is None or cover.verdict is None:
                    continue  # the cover got no verdict: decided again at the next tick
                diagnosis = dataclasses.replace(
                    inner,
                    reason=reason,
                    elapsed=run.elapsed(now),
                    since_heartbeat=run.seconds_since_heartbeat(now),
                    threshold=run.max_duration
                    if reason == "max_duration"
                    else run.heartbeat_timeout,
                    policy=run.on_stall,
                    given_at=now,
                    acted_at=None,
                )
                run.diagnosis = diagnosis
                run.state = diagnosis.state
                run.verdict = reason
                self._agent.telemetry.record_stall(run.series, reason)
                self._covered[run.key] = (run, cover, None)
                if run.span.is_recording():
                    run.span.add_event(
                        "otel_jobs.stall",
                        {
                            "otel_jobs.stall.reason": reason,
                            "otel_jobs.stall.state": diagnosis.state,
                            "otel_jobs.stall.inner_run": str(cover.job_id or cover.key),
                        },
                    )
                seen = per_cover.get(cover.key)
                per_cover[cover.key] = (cover, seen[1] + 1 if seen else 1)
                stall_policy.apply(self._agent, run, diagnosis, now)
        for cover, count in per_cover.values():
            logger.info(
                "otel-jobs: %d run(s) enclosing run %s of %s are stuck with it (counted in "
                "otel_jobs_stalls_detected_total and marked on their spans, not logged one by one)",
                count,
                cover.job_id or cover.key,
                cover.name,
                extra={
                    "job_name": cover.name,
                    "job_id": cover.job_id,
                    "stall_enclosing_runs": count,
                },
            )

    def _uncovered(self, now: float, interval: float) -> list[Run]:
        """Enclosing runs still stuck a whole tick after their cover finished or recovered."""
        due: list[Run] = []
        for key, (run, cover, gone_at) in list(self._covered.items()):
            if run.finished or run.verdict is None:
                del self._covered[key]
            elif cover.finished or cover.verdict is None:
                if gone_at is None:
                    self._covered[key] = (run, cover, now)
                elif now - gone_at >= interval:
                    del self._covered[key]
                    due.append(run)
        return due

    def report_uncovered(
        self,
        now: float,
        interval: float,
        states: dict[int, tuple[str, float | None]],
        runs: list[Run],
    ) -> None:
        """Enclosing runs still stuck a whole tick after their cover finished or recovered: the
        innermost of them reported in full, the others covered by it in turn."""
        due = self._uncovered(now, interval)
        if not due:
            return
        inner, outer = split_nested([(run, run.verdict or "") for run in due])
        frames = self._diagnosis_module().current_frames()
        for run, reason in inner[: self._max_diagnoses]:
            with errors.guard("watchdog"):
                cpu = states.get(run.native_id) if run.native_id is not None else None
                diagnosis = self._diagnosis_module().diagnose(
                    run, reason, now, frames, cpu or ("unknown", None), runs=runs
                )
                previous = run.diagnosis
                diagnosis.given_at = previous.given_at if previous is not None else now
                diagnosis.acted_at = previous.acted_at if previous is not None else None
                run.diagnosis = diagnosis
                run.state = diagnosis.state
                self._signal(run, diagnosis)
        for run, _, cover in outer:
            self._covered[run.key] = (run, cover, None)

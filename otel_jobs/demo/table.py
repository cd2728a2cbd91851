"""What ``otel-jobs demo`` prints: the table of runs in flight, the verdicts, the alerts, a summary.

Everything here reads what otel-jobs already exposes (the agent's runs and their diagnosis, the
watchdog's log records, the registry behind ``/metrics``, Prometheus' alerts); it computes no
verdict of its own, so the demo shows exactly what a user's worker would report.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from otel_jobs.core import agent as agent_mod

from .jobs import BACKLOG_QUEUE, backlog
from .prometheus import DemoPrometheus, Seen


class StallLog(logging.Handler):
    """Keeps the watchdog's verdicts, read from its log records' ``extra`` fields."""

    def __init__(self, started: float) -> None:
        super().__init__(logging.INFO)
        self.verdicts: list[dict[str, Any]] = []
        self.started = started

    def emit(self, record: logging.LogRecord) -> None:
        fields = record.__dict__
        if "stall_reason" not in fields:
            return
        if fields.get("stall_recovered"):
            self.verdicts.append({"at": time.monotonic() - self.started, "job": fields["job_name"],
                                  "verdict": "recovered", "state": "", "where": "", "policy": ""})  # fmt: skip
            return
        call = fields.get("stall_call")
        wait, loop, db = fields.get("stall_wait"), fields.get("stall_loop"), fields.get("stall_db")
        self.verdicts.append(
            {
                "at": time.monotonic() - self.started,
                "job": fields["job_name"],
                "verdict": fields["stall_verdict"],
                "state": fields["stall_state"],
                "where": fields.get("stall_where") or "?",
                "policy": fields["stall_policy"],
                "call": call["description"] if call else None,
                # What it waits on, without the holder (one line per job name in this list).
                "wait": wait["description"].split(";")[0] if wait else None,
                "held_up": len(loop["held_up"]) if loop else None,
                "db": db,
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


def _alert_cell(run: Any, alerts: list[Seen]) -> str:
    """The active alerts about a run's job and queue: ``RunStalled firing, ...``."""
    cells = [
        f"{a.short} {a.state}"
        for a in alerts  # firing first
        if a.active
        and a.labels.get("job_name") == run.name
        and a.labels.get("queue", run.queue) == run.queue
    ]
    return ", ".join(dict.fromkeys(cells))


def _at(seen: Seen, state: str, started: float) -> str:
    first = seen.first.get(state)
    return f"{state} at {first - started:5.1f}s" if first is not None else ""


def render(
    started: float,
    duration: float,
    url: str | None,
    stall_log: StallLog | None = None,
    prometheus: DemoPrometheus | None = None,
) -> list[str]:
    agent = agent_mod.current()
    head = f"otel-jobs demo  {time.monotonic() - started:5.1f}s / {duration:.0f}s   metrics: {url or 'off'}"
    if prometheus is not None:
        head += f"   alerts: {prometheus.url}/alerts"
    lines = [head, ""]
    if agent is None:
        return lines
    now = time.monotonic()
    runs = sorted(agent.runs(), key=lambda r: (r.verdict is None, r.start_mono))[:14]
    alerts = prometheus.alerts() if prometheus is not None else []
    cells = {id(run): _alert_cell(run, alerts) for run in runs}
    width = max([len("alerts"), *map(len, cells.values())])
    alert_head = f" {'alerts':<{width}}" if prometheus is not None else ""
    lines.append(
        f"{'run':<24} {'queue':<12} {'age':>6} {'beat':>6} {'progress':>8}  "
        f"{'verdict':<8} {'state':<9}{alert_head} waiting at"
    )
    for run in runs:
        progress = f"{run.progress:.0%}" if run.progress is not None else "-"
        verdict, state, where = _verdict_cells(run)
        alert = f" {cells[id(run)]:<{width}}" if prometheus is not None else ""
        lines.append(
            f"{run.name:<24} {run.queue:<12} {now - run.start_mono:5.1f}s {now - run.last_beat:5.1f}s "
            f"{progress:>8}  {verdict:<8} {state:<9}{alert} {where}".rstrip()
        )
    if backlog:
        lines += [
            "",
            f"queue {BACKLOG_QUEUE!r}: {len(backlog)} waiting, the oldest for "
            f"{time.time() - backlog[0]:.0f}s: no worker takes it (see the monitor's /metrics)",
        ]
    if prometheus is not None:
        lines += ["", *alert_lines(prometheus, started, active_only=True)]
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
            if v.get("wait"):
                lines.append(f"          {v['wait']}")
            if v["verdict"] == "loop blocked" and v.get("held_up") is not None:
                lines.append(f"          it holds up {v['held_up']} other run(s) of its event loop")
            if v.get("db"):
                from otel_jobs.core.pg_locks import describe

                lines.append(f"          {describe(v['db'])}")
    return lines


def alert_lines(prometheus: DemoPrometheus, started: float, active_only: bool) -> list[str]:
    """The alerts Prometheus holds (``active_only=False``: every alert seen during the demo)."""
    alerts = [a for a in prometheus.alerts() if a.active or not active_only]
    title = "Prometheus alerts (rules at demo speed: every `for` 10s)"
    if not active_only:
        title = "alerts seen (first pending, first firing, in the demo's time)"
    lines = [title + (":" if alerts else ": none yet")]
    if prometheus.error and active_only:
        lines.append(f"  (Prometheus did not answer: {prometheus.error})")
    for a in alerts[:14]:
        state = a.state if a.active else "resolved"
        times = ", ".join(t for t in (_at(a, "pending", started), _at(a, "firing", started)) if t)
        lines.append(f"  {state:<8} {a.name:<36} {a.subject:<36} {times}".rstrip())
    if len(alerts) > 14:
        lines.append(f"  ... and {len(alerts) - 14} more on {prometheus.url}/alerts")
    return lines


def summary() -> list[str]:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    agent = agent_mod.current()
    if agent is None:
        return []
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

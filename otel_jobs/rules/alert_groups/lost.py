"""Alerts on runs lost with their worker: counted by ``otel-jobs monitor``, redelivered to the
workers, and, for a fleet that runs no monitor, a worker that vanished with runs in flight.

``OtelJobsRunLost`` reads the monitor's ``otel_jobs_runs_lost_total`` (its selector carries
``--monitor-target-selector``). Two monitors on one Redis count each lost run once between them
(a claim in Redis), so the counts are summed across monitors, not maxed. A counter series is
born at its first lost run (value 1): ``x - (x offset W or x * 0)`` counts that first run too,
where ``increase()`` would not.

``OtelJobsWorkerVanishedWithRunsInFlight`` needs no monitor: a worker's
``otel_jobs_runs_in_progress`` series was above 0 within ``--vanished-lookback`` (its last value,
``last_over_time``) and has no sample now. That is a worker whose process ended while it ran
jobs: killed, evicted, OOM, its host lost, and in Kubernetes its target gone with it (no ``up``
series left, so ``OtelJobsTargetDown`` stays silent). A worker stopped gracefully finishes its
runs first, so its gauge is 0 before it goes away: no alert. A target that stops answering
scrapes also has its series go stale: that fires too, next to ``OtelJobsTargetDown``.
"""

from __future__ import annotations

from ..config import Option, RulesConfig, duration, positive
from ..promql import Alert, Group, num, sel
from .queues import _msel

LOST_WINDOW: Option[str] = Option(
    "lost_window",
    "15m",
    "`OtelJobsRunLost` fires while a run was counted lost by `otel-jobs monitor` within this "
    "window",
    duration,
    "DURATION",
)
REDELIVERED_RUNS: Option[float] = Option(
    "redelivered_runs",
    3.0,
    "`OtelJobsRunRedelivered` fires when more runs of a job than this were redelivered (or "
    "requeued) within `--redelivered-window`",
    positive,
    "N",
)
REDELIVERED_WINDOW: Option[str] = Option(
    "redelivered_window",
    "1h",
    "the window of `--redelivered-runs`",
    duration,
    "DURATION",
)
VANISHED_LOOKBACK: Option[str] = Option(
    "vanished_lookback",
    "10m",
    "`OtelJobsWorkerVanishedWithRunsInFlight` fires for a worker whose in-flight gauge was "
    "above 0 within this window and has no series now (no monitor needed)",
    duration,
    "DURATION",
)


def _born(series: str, window: str) -> str:
    """What ``series`` (a counter) gained over ``window``, its first value included."""
    return f"{series} - ({series} offset {window} or {series} * 0)"


def alerts(s: RulesConfig) -> list[Alert]:
    lost = _msel(s, "otel_jobs_runs_lost_total")
    lost_window = s.option(LOST_WINDOW)
    redelivered = sel(s, "otel_jobs_runs_redelivered_total")
    redelivered_window = s.option(REDELIVERED_WINDOW)
    redelivered_runs = s.option(REDELIVERED_RUNS)
    in_flight = sel(s, "otel_jobs_runs_in_progress")
    lookback = s.option(VANISHED_LOOKBACK)
    job = "{{ $labels.job_name }} (queue {{ $labels.queue }})"
    return [
        Alert(
            "OtelJobsRunLost",
            "warning",
            f"sum by (framework, job_name, queue) (\n  {_born(lost, lost_window)}\n) > 0",
            "A run was lost with its worker.",
            f"{{{{ $value }}}} run(s) of {job}, {{{{ $labels.framework }}}}, were lost in the "
            f"last {lost_window}: their worker died (killed, OOM, evicted) before they finished. "
            "The monitor's WARNING log and the '<job> lost' span name each run, its worker and "
            "its last checkpoint.",
        ),
        Alert(
            "OtelJobsRunRedelivered",
            "warning",
            f"sum by (job_name, queue) (\n  {_born(redelivered, redelivered_window)}\n)"
            f" > {num(redelivered_runs)}",
            "Runs of a job are handed out again after being lost.",
            f"{{{{ $value }}}} runs of {job} were redelivered or requeued in the last "
            f"{redelivered_window} (more than {num(redelivered_runs)}): its workers keep dying "
            "mid-run, or a Redis visibility timeout shorter than the job redelivers runs that "
            "are still running.",
        ),
        Alert(
            "OtelJobsWorkerVanishedWithRunsInFlight",
            "warning",
            f"(last_over_time({in_flight}[{lookback}]) > 0)\n"
            f"unless on (instance, job_name, queue)\n{in_flight}",
            "A worker went away while it was running jobs.",
            f"{{{{ $labels.instance }}}} had {{{{ $value }}}} run(s) of {job} in flight and its "
            "metrics are gone: the process ended mid-run (killed, OOM, evicted, host lost), and "
            "those runs were lost unless the broker redelivers them.",
            dashboard_vars=("job_name", "queue", "instance"),
        ),
    ]


GROUP = Group(
    "otel-jobs.lost",
    order=70,
    default_for={
        "OtelJobsRunLost": "0m",
        "OtelJobsRunRedelivered": "5m",
        "OtelJobsWorkerVanishedWithRunsInFlight": "2m",
    },
    alerts=alerts,
    options=(LOST_WINDOW, REDELIVERED_RUNS, REDELIVERED_WINDOW, VANISHED_LOOKBACK),
)

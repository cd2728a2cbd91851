"""Job-level alerts: durations, failures, timeouts, queue wait, a job that stopped running.

They aggregate across workers by ``--group-by``: a job's runs land on any worker, and worker
instances come and go.
"""

from __future__ import annotations

from ..config import RulesConfig
from ..promql import JOB, WHERE, Alert, Group, by, num, sel, threshold


def alerts(s: RulesConfig) -> list[Alert]:
    finished = sel(s, "otel_jobs_runs_finished_total")
    bad_finished = sel(s, "otel_jobs_runs_finished_total", 'outcome=~"failure|timeout"')
    timeouts = sel(s, "otel_jobs_runs_finished_total", 'outcome="timeout"')
    buckets = sel(s, "otel_jobs_run_duration_seconds_bucket")
    duration_p95 = (
        f"histogram_quantile(0.95, sum by ({by(s, 'le')}) (rate({buckets}[{s.duration_window}])))"
    )
    usual_p95 = (
        f"histogram_quantile(0.95, sum by ({by(s, 'le')}) "
        f"(rate({buckets}[{s.duration_window}] offset {s.usual_offset})))"
    )
    max_duration = threshold(
        f"max by ({by(s)}) ({sel(s, 'otel_jobs_run_max_duration_seconds')})",
        s.max_duration_default,
        duration_p95,
    )
    return [
        Alert(
            "OtelJobsDurationAboveMaxDuration",
            "warning",
            f"{duration_p95}\n> {max_duration}",
            "A job's p95 run duration is above its max duration.",
            f"p95 duration of {JOB}{WHERE} over {s.duration_window} is "
            "{{ $value | humanizeDuration }}, above the job's max duration.",
        ),
        Alert(
            "OtelJobsDurationAboveUsual",
            "info",
            f"{duration_p95}\n> {num(s.usual_factor)} * {usual_p95}\nand\n{duration_p95}\n"
            f"> {num(s.usual_min_seconds)}",
            "A job's p95 run duration is far above its usual.",
            f"p95 duration of {JOB}{WHERE} over {s.duration_window} is "
            f"{{{{ $value | humanizeDuration }}}}, more than {num(s.usual_factor)} times its "
            f"p95 {s.usual_offset} earlier.",
        ),
        Alert(
            "OtelJobsFailureRatioHigh",
            "warning",
            f"sum by ({by(s)}) (rate({bad_finished}[{s.failure_window}]))\n"
            f"/\nsum by ({by(s)}) (rate({finished}[{s.failure_window}]))\n"
            f"> {num(s.failure_ratio)}\n"
            f"and\nsum by ({by(s)}) (increase({finished}[{s.failure_window}])) >= "
            f"{num(s.failure_min_runs)}",
            "Many runs of a job are failing.",
            f"{{{{ $value | humanizePercentage }}}} of the runs of {JOB}{WHERE} that "
            f"finished in the last {s.failure_window} ended in failure or timeout.",
        ),
        Alert(
            "OtelJobsRunsTimingOut",
            "warning",
            f"sum by ({by(s)}) (increase({timeouts}[{s.timeout_window}])) > 0",
            "Runs of a job are ending by timeout.",
            f"About {{{{ $value | humanize }}}} run(s) of {JOB}{WHERE} ended by timeout in "
            f"the last {s.timeout_window}.",
        ),
        Alert(
            "OtelJobsQueueWaitHigh",
            "warning",
            f"histogram_quantile(0.95, sum by ({by(s, 'le')}) "
            f"(rate({sel(s, 'otel_jobs_queue_wait_seconds_bucket')}[{s.queue_wait_window}])))\n"
            f"> {num(s.queue_wait_p95)}",
            "Runs of a job wait long in their queue before they start.",
            f"p95 queue wait of {JOB}{WHERE} over {s.queue_wait_window} is "
            "{{ $value | humanizeDuration }}: the queue is backed up, often behind stuck runs.",
        ),
        Alert(
            "OtelJobsJobStoppedRunning",
            "warning",
            f"sum by ({by(s)}) (increase({finished}[{s.not_running_window}] offset "
            f"{s.not_running_offset})) > 0\nunless\n"
            f"sum by ({by(s)}) (increase({finished}[{s.not_running_window}])) > 0",
            "A job that normally runs has finished no run for a long time.",
            f"{JOB}{WHERE} finished no run in the last {s.not_running_window}; in the same "
            f"window {s.not_running_offset} earlier it finished about "
            "{{ $value | humanize }}.",
        ),
    ]


GROUP = Group(
    "otel-jobs.jobs",
    order=30,
    default_for={
        "OtelJobsDurationAboveMaxDuration": "15m",
        "OtelJobsDurationAboveUsual": "30m",
        "OtelJobsFailureRatioHigh": "10m",
        "OtelJobsRunsTimingOut": "1m",
        "OtelJobsQueueWaitHigh": "10m",
        "OtelJobsJobStoppedRunning": "15m",
    },
    alerts=alerts,
)

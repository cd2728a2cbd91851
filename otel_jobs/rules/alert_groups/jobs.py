"""Job-level alerts: durations, failures, timeouts, queue wait, a job that stopped running.

They aggregate across workers by ``--group-by``: a job's runs land on any worker, and worker
instances come and go.
"""

from __future__ import annotations

from .. import fleet
from ..config import RulesConfig
from ..promql import (
    JOB,
    RECORDS_GROUP,
    WHERE,
    Alert,
    Group,
    Record,
    by,
    num,
    sel,
    threshold,
)
from .schedules import watched

DURATION = "otel_jobs:run_duration_seconds_bucket:rate"
QUEUE_WAIT = "otel_jobs:queue_wait_seconds_bucket:rate"
FINISHED_RATE = "otel_jobs:runs_finished:rate"
FINISHED_INCREASE = "otel_jobs:runs_finished:increase"
#: The duration buckets are the most series a worker exports: read in three records groups, by
#: the last character of ``job_name`` (a-e and 0-3; f-r and 4-6; the rest), so that each
#: histogram is read whole by one group. Split by ``le``, the groups (evaluated at different
#: instants) would sum buckets of different moments: a run counted in ``+Inf`` but not yet in
#: its finite bucket puts the p95 at the largest bucket, and the duration alerts go pending for
#: a healthy job. The three cover any name.
DURATION_SHARDS = (
    'job_name=~".*[a-eA-E0-3]"',
    'job_name=~".*[f-rF-R4-6]"',
    'job_name!~".*[a-rA-R0-6]"',
)


def records(s: RulesConfig) -> list[Record]:
    """Per job across its workers: finished runs by outcome, duration and queue-wait buckets
    (``le`` kept, outcome summed), each read once over :data:`FLEET_WINDOW` (the dashboards'
    rate) with the alerts' windows summed from that read (:mod:`..fleet`)."""
    finished = fleet.windowed(
        s,
        "otel_jobs_runs_finished_total",
        ("outcome",),
        RECORDS_GROUP,
        increases=(s.failure_window, s.timeout_window, s.not_running_window),
    )
    durations = fleet.windowed(
        s,
        "otel_jobs_run_duration_seconds_bucket",
        ("le",),
        f"{RECORDS_GROUP}.durations",
        rates=(s.duration_window,),
        shards=DURATION_SHARDS,
    )
    waits = fleet.windowed(
        s,
        "otel_jobs_queue_wait_seconds_bucket",
        ("le",),
        f"{RECORDS_GROUP}.queue-wait",
        rates=(s.queue_wait_window,),
    )
    return [*finished, *durations, *waits]


def alerts(s: RulesConfig) -> list[Alert]:
    if s.recording_rules:
        return _alerts(s, *_on_records(s))
    return _alerts(s, *_on_raw_series(s))


def _on_records(s: RulesConfig) -> tuple[str, str, str, str, str, str, str, str]:
    """The alerts' terms read from the records (re-aggregated by --group-by: a no-op on records
    of the same rule file, and safe should a record carry more labels)."""

    def increase(window: str, outcome: str = "") -> str:
        matcher = f"{{{outcome}}}" if outcome else ""
        return f"sum by ({by(s)}) ({FINISHED_INCREASE}{window}{matcher})"

    duration = f"sum by ({by(s, 'le')}) ({DURATION}{s.duration_window}"
    bad = increase(s.failure_window, 'outcome=~"failure|timeout"')
    return (
        f"histogram_quantile(0.95, {duration}))",
        f"histogram_quantile(0.95, {duration} offset {s.usual_offset}))",
        # The ratio of increases over one window is the ratio of rates.
        f"{bad}\n/\n{increase(s.failure_window)}",
        increase(s.failure_window),
        increase(s.timeout_window, 'outcome="timeout"'),
        f"histogram_quantile(0.95, sum by ({by(s, 'le')}) ({QUEUE_WAIT}{s.queue_wait_window}))",
        f"{increase(s.not_running_window).removesuffix(')')} offset {s.not_running_offset})",
        increase(s.not_running_window),
    )


def _on_raw_series(s: RulesConfig) -> tuple[str, str, str, str, str, str, str, str]:
    """The same terms computed from every worker's series (``--recording-rules off``)."""
    finished = sel(s, "otel_jobs_runs_finished_total")
    bad_finished = sel(s, "otel_jobs_runs_finished_total", 'outcome=~"failure|timeout"')
    timeouts = sel(s, "otel_jobs_runs_finished_total", 'outcome="timeout"')
    buckets = sel(s, "otel_jobs_run_duration_seconds_bucket")
    waits = sel(s, "otel_jobs_queue_wait_seconds_bucket")
    return (
        f"histogram_quantile(0.95, sum by ({by(s, 'le')}) (rate({buckets}[{s.duration_window}])))",
        f"histogram_quantile(0.95, sum by ({by(s, 'le')}) "
        f"(rate({buckets}[{s.duration_window}] offset {s.usual_offset})))",
        f"sum by ({by(s)}) (rate({bad_finished}[{s.failure_window}]))\n"
        f"/\nsum by ({by(s)}) (rate({finished}[{s.failure_window}]))",
        f"sum by ({by(s)}) (increase({finished}[{s.failure_window}]))",
        f"sum by ({by(s)}) (increase({timeouts}[{s.timeout_window}]))",
        f"histogram_quantile(0.95, sum by ({by(s, 'le')}) (rate({waits}[{s.queue_wait_window}])))",
        f"sum by ({by(s)}) (increase({finished}[{s.not_running_window}] offset "
        f"{s.not_running_offset}))",
        f"sum by ({by(s)}) (increase({finished}[{s.not_running_window}]))",
    )


def _alerts(
    s: RulesConfig,
    duration_p95: str,
    usual_p95: str,
    failure_ratio: str,
    finished_runs: str,
    timed_out: str,
    queue_wait_p95: str,
    finished_before: str,
    finished_now: str,
) -> list[Alert]:
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
            f"{failure_ratio}\n> {num(s.failure_ratio)}\n"
            f"and\n{finished_runs} >= {num(s.failure_min_runs)}",
            "Many runs of a job are failing.",
            f"{{{{ $value | humanizePercentage }}}} of the runs of {JOB}{WHERE} that "
            f"finished in the last {s.failure_window} ended in failure or timeout.",
        ),
        Alert(
            "OtelJobsRunsTimingOut",
            "warning",
            f"{timed_out} > 0",
            "Runs of a job are ending by timeout.",
            f"About {{{{ $value | humanize }}}} run(s) of {JOB}{WHERE} ended by timeout in "
            f"the last {s.timeout_window}.",
        ),
        Alert(
            "OtelJobsQueueWaitHigh",
            "warning",
            f"{queue_wait_p95}\n> {num(s.queue_wait_p95)}",
            "Runs of a job wait long in their queue before they start.",
            f"p95 queue wait of {JOB}{WHERE} over {s.queue_wait_window} is "
            "{{ $value | humanizeDuration }}: the queue is backed up, often behind stuck runs.",
        ),
        Alert(
            "OtelJobsJobStoppedRunning",
            "warning",
            # A job with an expected_every or a schedule entry is OtelJobsNoRecentSuccess's.
            f"{finished_before} > 0\nunless\n{finished_now} > 0\n"
            f"unless on ({watched(s)[0]})\n{watched(s)[1]}",
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
    records=records,
)

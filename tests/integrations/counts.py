"""What a real worker's ``/metrics`` shows for the runs of one test queue, checked exactly.

The Dramatiq and Huey worker tests send the same mix of jobs (ok, later, boom, flaky, slow,
hang, ...) and check every count of every outcome, and the hung run stalled exactly once.
"""

from __future__ import annotations

from tests.support import Samples

OUTCOMES = ("success", "failure", "retry", "timeout", "cancelled")

#: The mix both worker tests send: ok x3, later (delayed), boom x2, flaky (fails once), slow
#: (past its time limit) and hang; how many times each starts, and ends with each outcome.
MIX_STARTED = {"ok": 3, "later": 1, "boom": 2, "flaky": 2, "slow": 1, "hang": 1}
MIX_FINISHED = {
    ("ok", "success"): 3,
    ("later", "success"): 1,
    ("boom", "failure"): 2,
    ("flaky", "retry"): 1,
    ("flaky", "success"): 1,
    ("slow", "timeout"): 1,
}


class QueueCounts:
    """The counts of the jobs of ``queue``; a job ``x`` is named ``prefix + x`` on /metrics."""

    def __init__(self, queue: str, prefix: str = "") -> None:
        self.queue = queue
        self.prefix = prefix

    def labels(self, job: str) -> dict[str, str]:
        return {"job_name": self.prefix + job, "queue": self.queue}

    def finished(self, s: Samples, job: str, outcome: str) -> float:
        return s.total("otel_jobs_runs_finished_total", outcome=outcome, **self.labels(job))

    def skipped(self, s: Samples, job: str, reason: str) -> float:
        return s.total("otel_jobs_runs_skipped_total", reason=reason, **self.labels(job))

    def mix_ended(self, s: Samples) -> bool:
        """Every run of the mix but the hung one has ended, as it must (before retries)."""
        return (
            self.finished(s, "ok", "success") == 3
            and self.finished(s, "later", "success") == 1
            and self.finished(s, "boom", "failure") == 2
            and self.finished(s, "flaky", "success") == 1
            and self.finished(s, "slow", "timeout") == 1
            and s.total("otel_jobs_stalls_detected_total", **self.labels("hang")) >= 1
        )

    def assert_exact(
        self, s: Samples, started: dict[str, int], finished: dict[tuple[str, str], int]
    ) -> None:
        """Each job of ``started`` started that many times, and ended with each outcome as
        many times as ``finished`` says (0 when it does not say)."""
        for job, count in started.items():
            assert s.value("otel_jobs_runs_started_total", **self.labels(job)) == count, job
        for job in started:
            for outcome in OUTCOMES:
                want = finished.get((job, outcome), 0)
                assert self.finished(s, job, outcome) == want, (job, outcome)

    def assert_stalled_once(self, s: Samples, job: str, heartbeat_timeout: float) -> None:
        """``job``'s run is in flight, stalled for want of a heartbeat, counted once."""
        labels = self.labels(job)
        assert s.value("otel_jobs_runs_in_progress", **labels) == 1
        assert s.value("otel_jobs_run_heartbeat_timeout_seconds", **labels) == heartbeat_timeout
        assert s.total("otel_jobs_runs_stalled", **labels) == 1
        assert s.value("otel_jobs_stalls_detected_total", reason="no_heartbeat", **labels) == 1
        assert s.total("otel_jobs_stalls_detected_total", **labels) == 1

"""End to end: real ``celery beat`` and ``celery worker`` on Redis, a real Prometheus with the
scheduled-job alerts rendered by the generator (short ``for`` durations and grace periods).

beat sends ``beat_app.refresh`` every 2 s. In order: the gauges on both processes, and the last
success against the run's end; three failing runs fire ``OtelJobsFailingRepeatedly`` and one
success clears it; the worker stopped (beat still sending) fires ``OtelJobsNoRecentSuccess``; beat
frozen with SIGSTOP fires ``OtelJobsScheduledRunLate``. Redis DB 7 is this module's own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from otel_jobs import rules
from tests.support import Samples, free_port, require_redis, scrape
from tests.support.processes import terminate

from .conftest import Prometheus, wait_for

pytestmark = [pytest.mark.prometheus, pytest.mark.broker]

REDIS_URL = "redis://127.0.0.1:6379/7"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REFRESH = {"job_name": "beat_app.refresh", "schedule": "refresh-every-2s"}
SCHEDULE_ALERTS = [
    "OtelJobsScheduledRunLate",
    "OtelJobsNoRecentSuccess",
    "OtelJobsFailingRepeatedly",
    "OtelJobsSchedulerAbsent",
]


class Celery:
    """A celery process (beat or worker) of tests/schedules/beat_app.py, serving /metrics."""

    def __init__(self, tmp_path: Path, role: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.log = (tmp_path / f"{role}.log").open("wb")
        args = ["beat", "--schedule", str(tmp_path / "beat-schedule")] if role == "beat" else [
            "worker", "--pool", "solo", "-Q", "beat"]  # fmt: skip
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "celery"), "-A", "beat_app", *args,
             "--loglevel", "INFO"],
            cwd=tmp_path, env={**env, "OJ_METRICS_PORT": str(self.port)},
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(f"celery {role}'s /metrics", lambda: self.proc.poll() is None and self.scrape())

    def scrape(self) -> Samples:
        return scrape(self.url)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a frozen process cannot stop
        terminate(self.proc)
        self.log.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    require_redis()
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=10, socket_connect_timeout=10)
    client.flushdb()
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
        "OJ_BEAT_BROKER": REDIS_URL,
        "OJ_FAIL_FLAG": str(tmp_path / "fail"),
        "OJ_TIMES": str(tmp_path / "times"),
    }
    environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    yield environ
    client.flushdb()
    client.close()


def firing(prometheus: Prometheus, alert: str, **labels: str) -> list[dict[str, Any]]:
    return [
        a
        for a in prometheus.alerts(alert)
        if all(a["labels"].get(k) == v for k, v in labels.items())
    ]


def notes(path: Path) -> tuple[list[float], list[float]]:
    """Times of the successful runs' last lines ("ending") and of their ends' aftermath ("ended")."""
    ending: list[float] = []
    ended: list[float] = []
    if path.exists():
        for line in path.read_text().splitlines():
            what, at = line.split()
            (ending if what == "ending" else ended).append(float(at))
    return ending, ended


def test_beat_and_worker_alerts_fire_and_clear(
    tmp_path: Path, env: dict[str, str], start_prometheus: Callable[..., Prometheus]
) -> None:
    beat = Celery(tmp_path, "beat", env)
    worker = Celery(tmp_path, "worker", env)
    try:
        config = rules.RulesConfig(
            for_durations=dict.fromkeys(SCHEDULE_ALERTS, "1s"),
            options={"schedule_grace_seconds": 3.0, "no_success_grace_seconds": 4.0},
        )
        prometheus = start_prometheus(
            [
                {
                    "job_name": "otel-jobs",
                    "scrape_timeout": "900ms",
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{beat.port}", f"127.0.0.1:{worker.port}"]}
                    ],
                }
            ],
            rules.render(config, part="all"),
        )

        # The last success is the end of the run: between the task's last line and the end of
        # the worker's handling of it.
        times = tmp_path / "times"
        wait_for("two successful runs", lambda: len(notes(times)[1]) >= 2)
        for _ in range(50):  # a scrape taken between two runs
            before = notes(times)
            m = worker.scrape()
            if notes(times) == before and len(before[0]) == len(before[1]):
                break
        ending, ended = before[0][-1], before[1][-1]
        last = m.value("otel_jobs_last_success_timestamp_seconds", job_name="beat_app.refresh")
        assert ending <= last <= ended

        b = beat.scrape()
        assert b.value("otel_jobs_schedule_interval_seconds", **REFRESH) == 2
        sent = b.value("otel_jobs_schedule_last_sent_timestamp_seconds", **REFRESH)
        assert 0 < b.value("otel_jobs_schedule_next_run_timestamp_seconds", **REFRESH) - sent <= 2
        wait_for(
            "Prometheus to have both processes' series",
            lambda: (
                prometheus.query("otel_jobs_schedule_interval_seconds")
                and prometheus.query("otel_jobs_last_success_timestamp_seconds")
            ),
        )
        for alert in SCHEDULE_ALERTS:
            assert firing(prometheus, alert) == [], alert

        # Three failing runs fire OtelJobsFailingRepeatedly; one success clears it.
        (tmp_path / "fail").touch()
        alert = wait_for(
            "OtelJobsFailingRepeatedly",
            lambda: firing(prometheus, "OtelJobsFailingRepeatedly", job_name="beat_app.refresh"),
        )
        assert float(alert[0]["value"]) >= 3
        assert worker.scrape().value("otel_jobs_consecutive_failures", **{
            "job_name": "beat_app.refresh"}) >= 3  # fmt: skip
        (tmp_path / "fail").unlink()
        wait_for(
            "OtelJobsFailingRepeatedly to clear after a success",
            lambda: (
                not firing(prometheus, "OtelJobsFailingRepeatedly")
                and not prometheus.alerts("OtelJobsFailingRepeatedly", state="pending")
            ),
        )
        assert firing(prometheus, "OtelJobsNoRecentSuccess") == []

        # The worker stops; beat keeps sending: nothing succeeds any more.
        worker.close()
        alert = wait_for(
            "OtelJobsNoRecentSuccess",
            lambda: firing(prometheus, "OtelJobsNoRecentSuccess", job_name="beat_app.refresh"),
        )
        assert float(alert[0]["value"]) > 2 + 4  # the entry's interval plus the grace
        assert firing(prometheus, "OtelJobsScheduledRunLate") == []  # beat is fine

        # beat frozen: nothing is sent any more, and it cannot be scraped.
        os.kill(beat.proc.pid, signal.SIGSTOP)
        alert = wait_for(
            "OtelJobsScheduledRunLate",
            lambda: firing(prometheus, "OtelJobsScheduledRunLate", **REFRESH),
        )
        assert float(alert[0]["value"]) > 3
    finally:
        worker.close()
        beat.close()

"""Cron scripts push their metrics to a real Pushgateway (Debian's ``prometheus-pushgateway``).

Each script is a separate Python process that instruments, runs one job and exits, as cron
would run it. Also: a real Prometheus scraping the gateway sees the last success; a gateway that
is down, or one that accepts and never answers, does not change what the script does.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

import otel_jobs
from tests.otlp_receiver import unused_port
from tests.support import Samples, agent_metrics, scrape_text
from tests.support.servers import SilentServer

from .conftest import Prometheus, running_pushgateway, wait_for

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[2]
JOB = "cron.nightly_report"

SCRIPT = textwrap.dedent(
    f"""
    import sys, time
    import otel_jobs

    otel_jobs.instrument(prometheus=False, frameworks=[], outbound=[])

    @otel_jobs.job(name={JOB!r}, queue="cron", expected_every=86400)
    def nightly_report(fail):
        if fail:
            raise RuntimeError("the report failed")
        print("ending", time.time(), flush=True)  # the job's last line

    try:
        nightly_report(sys.argv[1] == "fail")
        code = 0
    except RuntimeError:
        code = 1
    print("ended", time.time(), flush=True)
    sys.exit(code)
    """
)


def run_script(tmp_path: Path, outcome: str, url: str, timeout: float = 1.0) -> tuple[int, str]:
    script = tmp_path / "nightly_report.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OTEL_JOBS_PUSHGATEWAY_URL": url,
        "OTEL_JOBS_PUSHGATEWAY_TIMEOUT": str(timeout),
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    done = subprocess.run(
        [sys.executable, str(script), outcome],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,  # a guard against a hang, not a measurement
    )
    return done.returncode, done.stdout + done.stderr


def ending_and_ended(out: str) -> tuple[float, float]:
    """Unix times printed on the job's last line and once the run was over."""
    return float(out.split("ending ")[1].split()[0]), float(out.split("ended ")[1].split()[0])


def gateway_samples(base: str) -> Samples:
    return Samples(scrape_text(f"{base}/metrics"))


def test_a_cron_script_pushes_its_runs_and_prometheus_sees_the_last_success(
    tmp_path: Path, pushgateway: str, start_prometheus: Any
) -> None:
    host = socket.gethostname()
    assert gateway_samples(pushgateway).find("otel_jobs_runs_finished_total", job=JOB) == []
    code, out = run_script(tmp_path, "ok", pushgateway)
    assert code == 0, out
    ending, ended = ending_and_ended(out)
    m = gateway_samples(pushgateway)
    group = {"job": JOB, "instance": host, "job_name": JOB, "queue": "cron"}
    last_success = m.value("otel_jobs_last_success_timestamp_seconds", **group)
    assert ending <= last_success <= ended  # the run's end, not the time of the push
    assert m.value("otel_jobs_run_expected_every_seconds", **group) == 86400
    assert m.value("otel_jobs_consecutive_failures", **group) == 0
    assert m.value("otel_jobs_runs_finished_total", outcome="success", **group) == 1

    # The next night it fails: its push replaces the group; the last success stays the old one
    # in Prometheus (max over a window), the failure is there.
    code, out = run_script(tmp_path, "fail", pushgateway)
    assert code == 1, out
    m = gateway_samples(pushgateway)
    assert m.value("otel_jobs_consecutive_failures", **group) == 1
    assert m.value("otel_jobs_runs_finished_total", outcome="failure", **group) == 1
    assert m.find("otel_jobs_last_success_timestamp_seconds", **group) == []
    assert "internal error" not in out

    prometheus: Prometheus = start_prometheus(
        [
            {
                "job_name": "pushgateway",
                "honor_labels": True,
                "static_configs": [{"targets": [pushgateway.removeprefix("http://")]}],
            }
        ]
    )
    found = wait_for(
        "Prometheus to scrape the failure from the gateway",
        lambda: prometheus.query(f'otel_jobs_consecutive_failures{{job_name="{JOB}"}}'),
    )
    assert found[0]["metric"]["job"] == JOB
    assert found[0]["metric"]["instance"] == host
    assert float(found[0]["value"][1]) == 1

    code, out = run_script(tmp_path, "ok", pushgateway)
    assert code == 0, out
    ending, ended = ending_and_ended(out)
    seen = wait_for(
        "Prometheus to see the new last success",
        lambda: [
            r
            for r in prometheus.query(
                f'otel_jobs_last_success_timestamp_seconds{{job_name="{JOB}"}}'
            )
            if ending <= float(r["value"][1]) <= ended
        ],
    )
    assert seen[0]["metric"]["queue"] == "cron"


def test_a_gateway_that_is_down_changes_nothing_for_the_script(tmp_path: Path) -> None:
    code, out = run_script(tmp_path, "ok", f"http://127.0.0.1:{unused_port()}")
    assert code == 0, out
    assert "ended" in out
    assert out.count("cannot push to the Pushgateway") == 1, out  # logged once
    code, out = run_script(tmp_path, "fail", f"http://127.0.0.1:{unused_port()}")
    assert code == 1, out  # the job's own outcome, not otel-jobs'


class _WatchedSilentServer(SilentServer):
    """A silent server that also notes when a client gives up and closes its connection."""

    def __init__(self) -> None:
        self.given_up = threading.Event()
        super().__init__()

    def client_closed(self) -> None:
        self.given_up.set()


def test_a_gateway_that_never_answers_costs_the_script_its_timeout_only(tmp_path: Path) -> None:
    with _WatchedSilentServer() as silent:
        code, out = run_script(tmp_path, "ok", silent.endpoint, timeout=1.0)
        assert code == 0, out
        assert "ended" in out
        assert silent.connections >= 1  # the script did try to push
        # It gave up (closed the connection) rather than wait for an answer: the script ended
        # while the server was still holding every connection open.
        assert silent.given_up.wait(30)
        # Timed out, at exit or already in the background push the exit then waited for.
        assert out.count("cannot push to the Pushgateway") == 1, out


def test_uninstrument_pushes_and_the_thread_stops(instrumented: Any, pushgateway: str) -> None:
    agent = instrumented(pushgateway_url=pushgateway, pushgateway_timeout=5)
    pusher = agent.pusher
    with otel_jobs.job_run("inproc.job", queue="q"):
        pass
    otel_jobs.uninstrument()
    assert pusher._thread is not None
    pusher._thread.join(10)
    assert not pusher._thread.is_alive()
    m = gateway_samples(pushgateway)
    host = socket.gethostname()
    assert m.value(
        "otel_jobs_runs_finished_total",
        job="inproc.job", instance=host, job_name="inproc.job", queue="q", outcome="success",
    ) == 1  # fmt: skip


@pytest.mark.parametrize(
    "bad", ["localhost:9091", "ftp://gateway:9091", "http://", "http://gw:99999"]
)
def test_bad_pushgateway_settings_are_configuration_errors(bad: str) -> None:
    with pytest.raises(otel_jobs.ConfigurationError, match="pushgateway_url"):
        otel_jobs.instrument(prometheus_port=0, pushgateway_url=bad)
    with pytest.raises(otel_jobs.ConfigurationError, match="OTEL_JOBS_PUSHGATEWAY_TIMEOUT"):
        from otel_jobs.core import config

        config.load(environ={"OTEL_JOBS_PUSHGATEWAY_TIMEOUT": "0"})
    assert not otel_jobs.is_instrumented()


@pytest.mark.internal_errors("pushgateway")
def test_failed_pushes_are_counted_and_the_count_reaches_the_gateway_once_it_answers(
    instrumented: Any, tmp_path: Path
) -> None:
    port = unused_port()
    agent = instrumented(pushgateway_url=f"http://127.0.0.1:{port}", pushgateway_timeout=5)
    with otel_jobs.job_run("down.job", queue="q"):
        pass  # the job ends as usual: its push fails in the background
    failed = wait_for(
        "the failed push to be counted",
        lambda: agent_metrics().find("otel_jobs_internal_errors_total", component="pushgateway"),
    )
    assert failed[0] >= 1
    assert agent.pusher.pushes == 0
    # The gateway comes up: the next run's push carries the failures counted before it.
    with running_pushgateway(tmp_path, port) as base:
        assert gateway_samples(base).find("otel_jobs_runs_finished_total", job="down.job") == []
        with otel_jobs.job_run("down.job", queue="q"):
            pass
        group = {"job": "down.job", "instance": socket.gethostname()}
        m = wait_for(
            "the push to reach the gateway",
            lambda: (s := gateway_samples(base)).find(
                "otel_jobs_runs_finished_total", job_name="down.job", outcome="success", **group
            ) and s,
        )  # fmt: skip
        assert m.value("otel_jobs_runs_finished_total", outcome="success", **group) == 2
        assert m.value(
            "otel_jobs_internal_errors_total", component="pushgateway", **group
        ) >= failed[0]  # fmt: skip

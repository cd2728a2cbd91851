"""End to end: a real Prometheus with the shipped rules, scraping a real worker with a stuck job.

Prometheus loads the shipped rule file as it is, plus the same rules rendered by the generator
with short ``for`` durations (the shipped ones are minutes long) under other group names; it
scrapes and evaluates every second, and the worker is a separate Python process serving its own
``/metrics``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_jobs import rules
from tests.support import free_port, scrape
from tests.support.processes import terminate
from tests.support.prometheus import get_json, start_prometheus
from tests.support.waiting import wait_for

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[2]
STUCK, HEALTHY, QUEUE = "e2e.stuck_export", "e2e.send_receipt", "e2e"

WORKER = f"""
import sys, threading, time
import otel_jobs

otel_jobs.instrument(prometheus_port=int(sys.argv[1]), frameworks=[], outbound=[])

def stuck():
    # Never heartbeats and never ends: a hung call.
    with otel_jobs.job_run({STUCK!r}, queue={QUEUE!r}, heartbeat_timeout=1, max_duration=3600):
        threading.Event().wait()

threading.Thread(target=stuck, daemon=True).start()
deadline = time.monotonic() + 300  # never outlive a test that forgot to stop us
print("ready", flush=True)
while time.monotonic() < deadline:
    with otel_jobs.job_run({HEALTHY!r}, queue={QUEUE!r}, heartbeat_timeout=30, max_duration=60):
        time.sleep(0.05)
    time.sleep(0.05)
"""


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    log = (tmp_path / "worker.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(port)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for("the worker's /metrics", lambda: proc.poll() is None and scrape(url).names())
        yield f"127.0.0.1:{port}"
    finally:
        terminate(proc)
        log.close()


@pytest.fixture
def prometheus(tmp_path: Path, worker: str) -> Iterator[str]:
    config = rules.RulesConfig(for_durations=dict.fromkeys(rules.DEFAULT_FOR, "2s"))
    fast = rules.render(config).replace("- name: otel-jobs.", "- name: fast.otel-jobs.")
    (tmp_path / "fast.rules.yml").write_text(fast)
    server = start_prometheus(
        tmp_path,
        [{"job_name": "otel-jobs", "static_configs": [{"targets": [worker]}]}],
        [str(ROOT / "alerts" / "otel-jobs.rules.yml"), "fast.rules.yml"],
    )
    try:
        yield server.base
    finally:
        server.stop()


def query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    return list(get_json(url)["data"]["result"])


def test_stall_alert_fires_for_the_stuck_job_only(prometheus: str) -> None:
    groups = wait_for(
        "the rules to load", lambda: get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
    )
    shipped = [g for g in groups if g["file"].endswith("alerts/otel-jobs.rules.yml")]
    assert sum(len(g["rules"]) for g in shipped) == len(rules.DEFAULT_FOR)
    assert sum(len(g["rules"]) for g in groups) == 2 * len(rules.DEFAULT_FOR)

    def firing_stall() -> list[dict[str, Any]]:
        alerts = get_json(f"{prometheus}/api/v1/alerts")["data"]["alerts"]
        return [
            a
            for a in alerts
            if a["labels"]["alertname"] == "OtelJobsRunStalled" and a["state"] == "firing"
        ]

    stalled = wait_for("OtelJobsRunStalled to fire", firing_stall)
    # Both the fast rule and, on a slow run past its minute, the shipped one: the same alert.
    assert {a["labels"]["job_name"] for a in stalled} == {STUCK}
    labels = stalled[0]["labels"]
    assert labels["job_name"] == STUCK and labels["queue"] == QUEUE
    assert labels["severity"] == "critical" and labels["job"] == "otel-jobs"
    assert labels["state"] in ("blocked", "spinning", "unknown")
    assert f"of {STUCK} on queue {QUEUE}" in stalled[0]["annotations"]["description"]
    assert f"state {labels['state']}" in stalled[0]["annotations"]["description"]

    # The Prometheus-side check of the same run (heartbeat older than the job's 1 s timeout).
    def firing_heartbeat() -> list[dict[str, Any]]:
        alerts = get_json(f"{prometheus}/api/v1/alerts")["data"]["alerts"]
        return [
            a
            for a in alerts
            if a["labels"]["alertname"] == "OtelJobsRunNotHeartbeating" and a["state"] == "firing"
        ]

    heartbeat = wait_for("OtelJobsRunNotHeartbeating to fire", firing_heartbeat)
    assert {a["labels"]["job_name"] for a in heartbeat} == {STUCK}

    # The healthy job was scraped and evaluated all along, and nothing alerts about it.
    finished = query(
        prometheus, f'otel_jobs_runs_finished_total{{job_name="{HEALTHY}",outcome="success"}}'
    )
    assert finished and float(finished[0]["value"][1]) > 0
    alerts = get_json(f"{prometheus}/api/v1/alerts")["data"]["alerts"]
    assert [a for a in alerts if a["labels"].get("job_name") == HEALTHY] == []
    names = {a["labels"]["alertname"] for a in alerts}
    assert "OtelJobsTargetDown" not in names and "OtelJobsTargetAbsent" not in names

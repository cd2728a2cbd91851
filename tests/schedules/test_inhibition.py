"""The scheduled-job alerts page once per cause: the inhibitions of alerts/alertmanager.example.yml,
applied by a real Alertmanager (Debian's ``prometheus-alertmanager``) to alerts posted to it.

No scheduler at all holds back the late entries; a late entry holds back its job's missing
success; a missing success holds back the failures in a row; any of them holds back the
day-over-day heuristic. Alerts of other jobs (or queues) stay.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port
from tests.support.processes import terminate
from tests.support.prometheus import get_json, ready, require_binary

from .conftest import wait_for

pytestmark = pytest.mark.prometheus

EXAMPLE = Path(__file__).resolve().parents[2] / "alerts" / "alertmanager.example.yml"


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """The base URL of a real Alertmanager running the example configuration as shipped."""
    binary = require_binary("prometheus-alertmanager")
    port = free_port()
    log = (tmp_path / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={EXAMPLE}", f"--storage.path={tmp_path / 'am'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("Alertmanager", lambda: proc.poll() is None and ready(f"{base}/-/ready"))
        yield base
    finally:
        terminate(proc)
        log.close()


def post(base: str, alerts: list[dict[str, str]]) -> None:
    body = json.dumps([{"labels": labels} for labels in alerts]).encode()
    request = urllib.request.Request(
        f"{base}/api/v2/alerts", body, {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200


def inhibited(base: str, count: int) -> dict[tuple[tuple[str, str], ...], bool]:
    """Each alert Alertmanager holds (its labels) and whether an inhibition holds it back."""
    found: list[dict[str, Any]] = wait_for(
        f"Alertmanager to hold {count} alerts",
        lambda: (a := get_json(f"{base}/api/v2/alerts")) and len(a) == count and a,
    )
    return {tuple(sorted(a["labels"].items())): bool(a["status"]["inhibitedBy"]) for a in found}


def key(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def test_one_cause_pages_once(alertmanager: str) -> None:
    late = dict(alertname="OtelJobsScheduledRunLate", severity="critical", job_name="a",
                schedule="a-1m")  # fmt: skip
    alerts = [
        dict(alertname="OtelJobsSchedulerAbsent", severity="critical"),
        late,
        # a's missing success is its late entry's; b's stands alone.
        dict(alertname="OtelJobsNoRecentSuccess", severity="critical", job_name="a", queue="q"),
        dict(alertname="OtelJobsNoRecentSuccess", severity="critical", job_name="b", queue="q"),
        # b failing on queue q is why it has no recent success; on queue r it is news.
        dict(alertname="OtelJobsFailingRepeatedly", severity="warning", job_name="b", queue="q"),
        dict(alertname="OtelJobsFailingRepeatedly", severity="warning", job_name="b", queue="r"),
        # The heuristic: held back for b, not for c, which nothing else watches.
        dict(alertname="OtelJobsJobStoppedRunning", severity="warning", job_name="b", queue="q"),
        dict(alertname="OtelJobsJobStoppedRunning", severity="warning", job_name="c", queue="q"),
    ]
    post(alertmanager, alerts)
    held = inhibited(alertmanager, len(alerts))
    assert held == {
        key(alertname="OtelJobsSchedulerAbsent", severity="critical"): False,
        key(**late): True,
        key(alertname="OtelJobsNoRecentSuccess", severity="critical", job_name="a", queue="q"): (
            True
        ),
        key(alertname="OtelJobsNoRecentSuccess", severity="critical", job_name="b", queue="q"): (
            False
        ),
        key(alertname="OtelJobsFailingRepeatedly", severity="warning", job_name="b", queue="q"): (
            True
        ),
        key(alertname="OtelJobsFailingRepeatedly", severity="warning", job_name="b", queue="r"): (
            False
        ),
        key(alertname="OtelJobsJobStoppedRunning", severity="warning", job_name="b", queue="q"): (
            True
        ),
        key(alertname="OtelJobsJobStoppedRunning", severity="warning", job_name="c", queue="q"): (
            False
        ),
    }

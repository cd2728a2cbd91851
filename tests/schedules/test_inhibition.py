"""The scheduled-job alerts page once per cause: the inhibitions of alerts/alertmanager.example.yml,
applied by a real Alertmanager (Debian's ``prometheus-alertmanager``) to alerts posted to it.

No scheduler at all holds back the late entries; a late entry holds back its job's missing
success; a missing success holds back the failures in a row; any of them holds back the
day-over-day heuristic. Alerts of other jobs (or queues) stay; a missing success told by the
job name alone (no queue) holds back that job's failures on every queue.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port
from tests.support.prometheus import get_json

from .conftest import running_tool, wait_for

pytestmark = pytest.mark.prometheus

EXAMPLE = Path(__file__).resolve().parents[2] / "alerts" / "alertmanager.example.yml"


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """The base URL of a real Alertmanager running the example configuration as shipped."""
    args = [f"--config.file={EXAMPLE}", f"--storage.path={tmp_path / 'am'}",
            "--cluster.listen-address="]  # fmt: skip
    with running_tool(tmp_path, "prometheus-alertmanager", free_port(), args) as base:
        yield base


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
    def alert(name: str, **labels: str) -> dict[str, str]:
        severity = "warning" if name in ("FailingRepeatedly", "JobStoppedRunning") else "critical"
        return {"alertname": f"OtelJobs{name}", "severity": severity, **labels}

    cases = [  # each alert posted, and whether an inhibition must hold it back
        (alert("SchedulerAbsent"), False),
        (alert("ScheduledRunLate", job_name="a", schedule="a-1m"), True),
        # a's missing success is its late entry's; b's stands alone.
        (alert("NoRecentSuccess", job_name="a", queue="q"), True),
        (alert("NoRecentSuccess", job_name="b", queue="q"), False),
        # b failing on queue q is why it has no recent success; on queue r it is news.
        (alert("FailingRepeatedly", job_name="b", queue="q"), True),
        (alert("FailingRepeatedly", job_name="b", queue="r"), False),
        # d, which only a schedule entry declares, has no recent success by its name alone: its
        # failures on any queue are why.
        (alert("NoRecentSuccess", job_name="d"), False),
        (alert("FailingRepeatedly", job_name="d", queue="q"), True),
        # The heuristic: held back for b, not for c, which nothing else watches.
        (alert("JobStoppedRunning", job_name="b", queue="q"), True),
        (alert("JobStoppedRunning", job_name="c", queue="q"), False),
    ]
    post(alertmanager, [labels for labels, _ in cases])
    assert inhibited(alertmanager, len(cases)) == {key(**labels): held for labels, held in cases}

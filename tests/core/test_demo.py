"""The demo, as the README runs it: every metric of the docs/metrics.md table on its /metrics.

The table lists the workers' metrics, then (after ``<!-- metrics-table:monitor -->``) those of
``otel-jobs monitor``: the first on the demo's worker endpoint, the second on the endpoint of
the monitor the demo runs next to it, and neither on the other's.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import time

from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port, scrape_text

ROOT = pathlib.Path(__file__).resolve().parents[2]
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
# What the demo cannot produce by design: no framework (so no configuration audit or dead
# letters), no label past its cap, and no internal error.
NOT_IN_THE_DEMO = {
    "otel_jobs_config_finding",
    "otel_jobs_runs_dead_lettered_total",
    # Lost runs need a worker killed on a broker: tests/monitor/lost/.
    "otel_jobs_runs_redelivered_total",
    "otel_jobs_runs_lost_total",
    "otel_jobs_runs_requeued_total",
    "otel_jobs_label_overflow_total",
    "otel_jobs_internal_errors_total",
}


MONITOR_MARKER = "<!-- metrics-table:monitor -->"


def readme_metrics(endpoint: str | None = None) -> list[tuple[str, str, set[str]]]:
    """The table's rows (``endpoint="worker"`` or ``"monitor"``: that endpoint's only)."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    table = text[
        text.index("<!-- metrics-table:start -->") : text.index("<!-- metrics-table:end -->")
    ]
    worker, _, monitor = table.partition(MONITOR_MARKER)
    table = {"worker": worker, "monitor": monitor}.get(endpoint or "", table)
    rows = []
    for line in table.splitlines():
        m = re.match(r"\| `(otel_jobs_[a-z_]+)` \| (counter|gauge|histogram) \| ([^|]*) \|", line)
        if m:
            labels = {
                x.strip() for x in m.group(3).split(",") if x.strip() and x.strip() != "(none)"
            }
            rows.append((m.group(1), m.group(2), labels))
    return rows


def test_readme_table_lists_the_core_metrics() -> None:
    names = {name for name, _, _ in readme_metrics()}
    assert len(names) >= 17
    assert {
        "otel_jobs_runs_started_total",
        "otel_jobs_run_duration_seconds",
        "otel_jobs_runs_stalled",
    } <= names


def test_the_table_tells_the_monitors_metrics_from_the_workers() -> None:
    worker = {name for name, _, _ in readme_metrics("worker")}
    monitor = {name for name, _, _ in readme_metrics("monitor")}
    assert monitor == {
        "otel_jobs_queue_depth",
        "otel_jobs_queue_oldest_waiting_age_seconds",
        "otel_jobs_monitor_broker_up",
        "otel_jobs_monitor_poll_duration_seconds",
        "otel_jobs_runs_lost_total",
        "otel_jobs_runs_requeued_total",
    }
    assert worker and not worker & monitor
    assert worker | monitor == {name for name, _, _ in readme_metrics()}


def test_demo_serves_every_metric_of_the_readme_table_and_exits_cleanly() -> None:
    port, monitor_port = free_port(), free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "otel_jobs", "demo", "--duration", "14", "--port", str(port),
         "--monitor-port", str(monitor_port), "--no-live"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 60
        text = monitor_text = ""
        # Wait until the stuck runs have their verdicts and the slow jobs have finished once.
        while time.monotonic() < deadline:
            try:
                text = scrape_text(url)
            except OSError:
                time.sleep(0.3)
                continue
            try:
                monitor_text = scrape_text(f"http://127.0.0.1:{monitor_port}/metrics")
            except OSError:
                pass  # the demo is ending: keep the last scrape
            if (
                'otel_jobs_stalls_detected_total{job_name="demo.sync_partner"' in text
                # (labels in any order: the worker's writer puts queue before outcome)
                and re.search(
                    r'otel_jobs_runs_finished_total\{job_name="demo\.build_report",[^}]*'
                    r'outcome="success"[^}]*\} [1-9]',
                    text,
                )
                # The monitor has polled the queue nobody drains once it held a job.
                and 'otel_jobs_queue_oldest_waiting_age_seconds{framework="demo",queue="exports"}'
                in monitor_text
            ):
                break
            time.sleep(0.3)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert "summary" in output
    for endpoint, served, other in (
        ("worker", text, monitor_text),
        ("monitor", monitor_text, text),
    ):
        samples = [s for fam in text_string_to_metric_families(served) for s in fam.samples]
        for name, kind, labels in readme_metrics(endpoint):
            base = name[: -len("_total")] if kind == "counter" else name
            assert f"# TYPE {name} {kind}" in served or f"# TYPE {base} {kind}" in served, (
                f"{name} is not exposed by the {endpoint}"
            )
            if endpoint == "monitor":
                assert f"# TYPE {base} " not in other, f"{name} is on the worker's endpoint"
            if name in NOT_IN_THE_DEMO:
                continue
            wanted = {base + suffix for suffix in _SUFFIXES[kind]}
            found = [s for s in samples if s.name in wanted]
            assert found, f"the demo produced no sample of {name} on the {endpoint}'s endpoint"
            for s in found:
                assert set(s.labels) - {"le"} == labels, (name, s.labels)

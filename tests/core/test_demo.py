"""The demo, as the README runs it: every metric of the docs/metrics.md table on its /metrics."""

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
    "otel_jobs_label_overflow_total",
    "otel_jobs_internal_errors_total",
}


def readme_metrics() -> list[tuple[str, str, set[str]]]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    table = text[
        text.index("<!-- metrics-table:start -->") : text.index("<!-- metrics-table:end -->")
    ]
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


def test_demo_serves_every_metric_of_the_readme_table_and_exits_cleanly() -> None:
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "otel_jobs", "demo", "--duration", "14", "--port", str(port), "--no-live"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 60
        text = ""
        # Wait until the stuck runs have their verdicts and the slow jobs have finished once.
        while time.monotonic() < deadline:
            try:
                text = scrape_text(url)
            except OSError:
                time.sleep(0.3)
                continue
            if 'otel_jobs_stalls_detected_total{job_name="demo.sync_partner"' in text and (
                'otel_jobs_runs_finished_total{job_name="demo.build_report",outcome="success"'
                in text
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
    samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]
    for name, kind, labels in readme_metrics():
        base = name[: -len("_total")] if kind == "counter" else name
        assert f"# TYPE {name} {kind}" in text or f"# TYPE {base} {kind}" in text, (
            f"{name} is not exposed"
        )
        if name in NOT_IN_THE_DEMO:
            continue
        wanted = {base + suffix for suffix in _SUFFIXES[kind]}
        found = [s for s in samples if s.name in wanted]
        assert found, f"the demo produced no sample of {name}"
        for s in found:
            assert set(s.labels) - {"le"} == labels, (name, s.labels)

"""The demo, as the README runs it: every metric of the docs/metrics.md table on its /metrics.

The table lists the workers' metrics, then (after ``<!-- metrics-table:monitor -->``) those of
``otel-jobs monitor``: the first on the demo's worker endpoint, the second on the endpoint of
the monitor the demo runs next to it, and neither on the other's.

``otel-jobs demo --prometheus`` (marked ``prometheus``): the real command with Debian's
Prometheus fires a stall alert before its two minutes are over, shows it next to the stuck run,
and leaves neither the Prometheus process nor its directory behind, whichever way it ends;
without a ``prometheus`` on PATH it says how to install it and runs as without the flag.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port, require_binary, scrape_text

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


# --- otel-jobs demo --prometheus ------------------------------------------------------------


def _prometheus_on_path() -> None:
    require_binary("prometheus", "apt-get install -y prometheus")


class _Demo:
    """``otel-jobs demo`` in a process of its own, its output read line by line as it comes;
    as a context manager, killed at the end if it still runs."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        env = dict(env or os.environ, PYTHONUNBUFFERED="1")
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "otel_jobs", "demo", "--no-live", "--port", "0",
             "--monitor-port", "0", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def __enter__(self) -> _Demo:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._kill()

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str) -> re.Match[str]:
        """The first line matching ``pattern``; fails if the demo ends without one."""
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if m := re.search(pattern, line):
                    return m
            seen = len(self.lines)
            if self.proc.poll() is not None:
                self._reader.join(timeout=10)
                if not any(re.search(pattern, line) for line in self.lines):
                    pytest.fail(f"the demo ended without {pattern!r}:\n{self.output[-6000:]}")
            time.sleep(0.2)

    def prometheus(self) -> tuple[int, pathlib.Path]:
        """The Prometheus process and the directory the demo says it started."""
        directory = pathlib.Path(self.wait_for(r"files in (\S+), removed at exit").group(1))
        pid = int(
            self.wait_for(r"Prometheus http://127\.0\.0\.1:\d+/alerts \(pid (\d+)\)").group(1)
        )
        return pid, directory

    def end(self) -> int:
        try:
            self.proc.wait(timeout=150)
        finally:
            self._kill()
        self._reader.join(timeout=10)
        return self.proc.returncode


def _running(pid: int) -> bool:
    try:
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"prometheus" in cmdline


def _assert_prometheus_gone(pid: int, directory: pathlib.Path) -> None:
    assert not directory.exists(), f"{directory} left behind"
    assert not _running(pid), f"Prometheus (pid {pid}) left running"


@pytest.mark.prometheus
def test_demo_prometheus_fires_a_stall_alert_shown_next_to_the_run() -> None:
    _prometheus_on_path()
    # --duration 120: the demo ends after two minutes, so a stall alert must fire before.
    with _Demo("--prometheus", "--duration", "120") as demo:
        pid, directory = demo.prometheus()
        assert _running(pid) and (directory / "prometheus.yml").is_file()
        # In the alerts section, then next to the stuck run it is about in the table: its
        # verdict "stalled", or "overran" once past its max duration (20 s; the alert fires at
        # ~16 s and the table is printed every 5 s, so the row may show either).
        alert = demo.wait_for(r"^  firing\s+OtelJobsRunStalled\s+(demo\.\w+) / (\w+)\s")
        job, queue = alert.groups()
        row = demo.wait_for(
            rf"^{re.escape(job)}\s+{queue}\s.*\b(stalled|overran)\b.*RunStalled firing"
        )
        assert "RunStalled firing" in row.group(0)
        # Healthy jobs are never in an alert about a run.
        for line in demo.lines:
            if line.startswith(("demo.send_email ", "demo.import_rows ", "demo.build_report ")):
                assert "firing" not in line and "pending" not in line, line
        demo.proc.send_signal(signal.SIGTERM)
        assert demo.end() == 0, demo.output[-4000:]
    assert "SIGTERM, stopping" in demo.output
    summary = demo.output.rsplit("alerts seen", 1)[1]
    assert re.search(rf"firing\s+OtelJobsRunStalled\s+{re.escape(job)} / ", summary), summary
    _assert_prometheus_gone(pid, directory)


@pytest.mark.prometheus
@pytest.mark.parametrize("ending", ["its duration", "Ctrl-C"])
def test_demo_prometheus_is_stopped_and_removed_at_exit(ending: str) -> None:
    _prometheus_on_path()
    with _Demo("--prometheus", "--duration", "6" if ending == "its duration" else "120") as demo:
        pid, directory = demo.prometheus()
        assert _running(pid) and directory.is_dir()
        if ending == "Ctrl-C":
            demo.wait_for(r"^otel-jobs demo\s+\d")  # the first table: the jobs are running
            demo.proc.send_signal(signal.SIGINT)
        assert demo.end() == 0, demo.output[-4000:]
    assert "summary (finished runs" in demo.output
    _assert_prometheus_gone(pid, directory)


def test_demo_without_prometheus_says_how_to_install_it_and_runs(tmp_path: pathlib.Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path))  # no prometheus there
    demo = _Demo("--prometheus", "--duration", "3", env=env)
    assert demo.end() == 0, demo.output
    hints = [line for line in demo.lines if "prometheus" in line.lower() and "install" in line]
    assert len(hints) == 1 and "apt-get install prometheus" in hints[0], demo.output
    assert "summary (finished runs" in demo.output
    assert not any(line.startswith("Prometheus alerts") for line in demo.lines)

"""``otel-jobs demo`` shows each stuck run's verdict, state and the line it waits on."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from otel_jobs.demo import jobs as demo


def _line_of(func: Callable[..., Any], needle: str) -> int:
    func = getattr(func, "__wrapped__", func)
    source, first = inspect.getsourcelines(func)
    return first + next(i for i, line in enumerate(source) if needle in line)


def _verdict_line(out: str, job: str) -> str:
    section = out.rsplit("watchdog verdicts", 1)[1].split("summary (", 1)[0]
    found = [line for line in section.splitlines() if f" {job} " in line]
    assert len(found) == 1, f"no single verdict line for {job} in:\n{section}"
    return found[0]


def test_demo_shows_verdict_state_and_line_of_each_stuck_run() -> None:
    script = Path(sys.executable).with_name("otel-jobs")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "otel_jobs"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run(
        [*command, "demo", "--duration", "15", "--no-live", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    path = "otel_jobs/demo/jobs.py"
    expected = {
        "demo.sync_partner": ("blocked", _line_of(demo.sync_partner, "urlopen("), "sync_partner"),
        "demo.rebuild_index": (
            "blocked",
            _line_of(demo.rebuild_index, "with _shared_lock"),
            "rebuild_index",
        ),
        "demo.hold_lock": (
            "blocked",
            _line_of(demo._take_lock_forever, "time.sleep(3600)"),
            "_take_lock_forever",
        ),
    }
    for job, (state, line, function) in expected.items():
        verdict = _verdict_line(out, job)
        assert re.search(
            rf"\bstalled\s+{state}\s+{re.escape(path)}:{line} in {function}\b", verdict
        ), verdict
        # ... and the live table, while the run is still stuck.
        rows = [r for r in out.splitlines() if r.startswith(job + " ")]
        assert any(
            f"stalled  {state}" in r and f"{path}:{line} in {function}" in r for r in rows
        ), rows
    # The spinning run: seen spinning in its loop, then cancelled by its on_stall="cancel".
    spin = _verdict_line(out, "demo.dedupe_customers")
    loop_lines = {
        _line_of(demo.dedupe_customers, "while seen"),
        _line_of(demo.dedupe_customers, "seen += 1"),
    }
    match = re.search(rf"\bstalled\s+spinning\s+{re.escape(path)}:(\d+) in dedupe_customers", spin)
    assert match and int(match.group(1)) in loop_lines, spin
    assert "[on_stall=cancel]" in spin
    summary = out.rsplit("summary", 1)[1]
    dedupe = next(line for line in summary.splitlines() if "demo.dedupe_customers" in line)
    assert "timeout=1" in dedupe and "in flight=0" in dedupe and "stalls=1" in dedupe

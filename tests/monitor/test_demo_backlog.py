"""``otel-jobs demo`` shows a backlog building: its monitor's ``/metrics`` and its table show the
queue nobody drains (``exports``) growing, and its oldest job getting older, while the worker
pool's queue is drained."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from otel_jobs.demo.jobs import BACKLOG_QUEUE
from tests.support import Samples, free_port, scrape

from .support import ROOT, ages, depth, wait_for


def test_the_demo_shows_a_backlog_building_on_a_queue_nobody_drains(tmp_path: Path) -> None:
    port, monitor_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONUNBUFFERED"] = "1"
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "otel_jobs", "demo", "--duration", "16", "--no-live",
             "--port", str(port), "--monitor-port", str(monitor_port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{monitor_port}/metrics"
    try:

        def backlog() -> Samples | None:
            assert proc.poll() is None, log.read_text()
            try:
                samples = scrape(url)
            except OSError:
                return None
            return samples if ages(samples, "demo", BACKLOG_QUEUE) else None

        first = wait_for("the monitor to see the backlog", backlog)
        later = wait_for(
            "the backlog to grow",
            lambda: (
                (s := backlog())
                and depth(s, "demo", BACKLOG_QUEUE, "waiting")
                > depth(first, "demo", BACKLOG_QUEUE, "waiting")
                and ages(s, "demo", BACKLOG_QUEUE)[0] > ages(first, "demo", BACKLOG_QUEUE)[0] + 1
                and s
            ),
        )
        # The pool's queue is read too, and is drained: never as old as the backlog.
        assert later.find("otel_jobs_queue_depth", framework="demo", queue="pool")
        assert ages(later, "demo", "pool") == [] or (
            ages(later, "demo", "pool")[0] < ages(later, "demo", BACKLOG_QUEUE)[0]
        )
        assert later.value("otel_jobs_monitor_broker_up", framework="demo") == 1
        assert proc.wait(timeout=120) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The table says it too, each time with more jobs waiting.
    counts = [
        int(n)
        for n in re.findall(
            rf"queue '{BACKLOG_QUEUE}': (\d+) waiting, the oldest for", log.read_text()
        )
    ]
    assert len(counts) >= 2 and counts == sorted(counts) and counts[-1] > counts[0], counts

"""No false positives of the lost-run detector at the issue's full scale (issue 15).

1,000 runs (one in five lasting 1.5 s, the others 20 ms) across two Celery prefork workers of
two processes each, restarted gracefully three times (SIGTERM, warm shutdown), under a real
``otel-jobs monitor --requeue-lost`` process paused with SIGSTOP for 30 s (ten times the lease
TTL of 3 s) and resumed with SIGCONT. Reported: the runs finished (each exactly once), the runs
the monitor counted lost and requeued (both must be 0), and the wall time from the first run
sent to the last one finished.

The scenario is the test's own,
:func:`tests.monitor.lost.test_no_false_positives.restarts_and_a_paused_monitor`, imported, on
a ``redis-server`` of the benchmark's own (a free port, no persistence, stopped at the end: the
monitor reads every lease of its database, so no other test's workers may share it). Quick mode
is the test's scale: 300 runs, a 6 s pause.

Not part of ``python -m bench`` (a few minutes, and a count of 0 is its result)::

    .venv/bin/python -m bench.bench_lost_runs [--quick]

Needs Debian's ``redis-server``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from ._timing import row

RUNS, PAUSE = 1000, 30.0
QUICK_RUNS, QUICK_PAUSE = 300, 6.0


def run(quick: bool) -> list[dict[str, Any]]:
    from tests.monitor.lost.test_no_false_positives import LEASE_TTL, restarts_and_a_paused_monitor
    from tests.monitor.support import RedisServer

    runs, pause = (QUICK_RUNS, QUICK_PAUSE) if quick else (RUNS, PAUSE)
    with tempfile.TemporaryDirectory(prefix="bench-lost-") as tmp:
        directory = Path(tmp)
        server = RedisServer(directory / "redis").start()
        try:
            outcome = restarts_and_a_paused_monitor(
                server.url(0), directory, runs=runs, pause=pause, timeout=600.0
            )
        finally:
            server.stop()
    expected = sorted(f"run-{i}" for i in range(runs))
    twice = {line for line in outcome.finished if outcome.finished.count(line) > 1}
    # Once each, but for runs Celery itself handed out again (a warm shutdown's restore).
    once = sorted(set(outcome.finished)) == expected and twice <= set(outcome.redelivered)
    lost = sum(outcome.samples.find("otel_jobs_runs_lost_total"))
    requeued = sum(outcome.samples.find("otel_jobs_runs_requeued_total"))
    logged = "was lost with its worker" in outcome.monitor_log
    scenario = (
        f"{runs} runs, 2 Celery prefork workers (-c 2), 3 SIGTERM restarts, monitor SIGSTOPped "
        f"{pause:g} s (lease TTL {LEASE_TTL:g} s)"
    )
    return [
        row("lost_runs", subject="runs finished", value=float(len(outcome.finished)), unit="runs",
            target=f"{runs}, each once", met=once,
            note=f"{scenario}; finished twice after Celery's own redelivery: {len(twice)}"),
        row("lost_runs", subject="runs counted lost", value=float(lost), unit="runs",
            target="0", met=lost == 0 and not logged,
            note=f"leases seen at once: {outcome.leases_seen}; lost-run log records: {logged}"),
        row("lost_runs", subject="runs requeued", value=float(requeued), unit="runs",
            target="0", met=requeued == 0),
        row("lost_runs", subject="wall time", value=outcome.seconds, unit="s",
            note="first run sent to last run finished, restarts and the pause included"),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from .run import table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the test's scale: 300 runs, 6 s")
    args = parser.parse_args(argv)
    rows = run(args.quick)
    print(table(rows))
    return 0 if all(r["met"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

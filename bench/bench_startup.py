"""Process start-up added by ``instrument()``, in a fresh interpreter with every extra installed.

Each contender is a new ``python -c`` process, timed from ``Popen`` until it prints that it is
ready (its start-up), taking turns for ``reps`` rounds (the order alternates between rounds);
the time until it has exited is noted too (``atexit`` work, interpreter teardown):

* ``python``: ``python -c pass``, the interpreter alone;
* ``floor``: importing the OpenTelemetry SDK (``opentelemetry.sdk.trace``) and prometheus-client,
  what any instrumentation of a worker loads;
* ``otel-jobs``: ``import otel_jobs; otel_jobs.instrument(prometheus_port=0)``, with the
  defaults: every framework and client library adapter that is installed (in this virtualenv:
  all of them), the watchdog, the ``/metrics`` endpoint.

The figure is the median over rounds of ``otel-jobs`` minus ``floor`` in the same round. The note
says which of the frameworks and client libraries otel-jobs adapts were imported by
``instrument()`` itself (none should be: each adapter patches its library when the application
imports it, :mod:`otel_jobs.core.imports`). ``python -m bench.bench_startup [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:
    from bench._timing import row
except ImportError:  # run as a script from bench/
    from _timing import row  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 50.0
_READY = "; print('ready', flush=True)"
PROGRAMS = {
    "python": "pass" + _READY,
    "floor": "import opentelemetry.sdk.trace, prometheus_client" + _READY,
    "otel-jobs": "import otel_jobs; otel_jobs.instrument(prometheus_port=0)" + _READY,
}
# What instrument() must not import on the application's behalf (top-level module names).
ADAPTED = ("celery", "rq", "dramatiq", "arq", "huey", "apscheduler", "httpx", "requests",
           "urllib3", "aiohttp", "redis", "psycopg")  # fmt: skip
_IMPORTED = (
    "import sys; before = set(sys.modules); import otel_jobs; otel_jobs.instrument(prometheus_port=0); "
    "import json; print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTHON"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _time(program: str) -> tuple[float, float]:
    """Seconds until the process printed "ready", and until it exited."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", program], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.readline()
    ready = time.perf_counter() - start
    proc.stdout.read()
    if proc.wait() != 0:
        raise RuntimeError(f"python -c {program!r} failed")
    return ready, time.perf_counter() - start


def imported_by_instrument() -> list[str]:
    """The adapted libraries that ``import otel_jobs; instrument()`` imported by itself."""
    done = subprocess.run([sys.executable, "-c", _IMPORTED], cwd=ROOT, env=_env(), check=True,
                          capture_output=True, text=True)  # fmt: skip
    new = json.loads(done.stdout.strip().splitlines()[-1])
    return [name for name in ADAPTED if name in new]


def run(quick: bool = False) -> list[dict[str, Any]]:
    reps = 3 if quick else 21
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in PROGRAMS}
    for program in PROGRAMS.values():  # warm the file system cache
        _time(program)
    for r in range(reps):
        names = list(PROGRAMS) if r % 2 == 0 else list(reversed(PROGRAMS))
        for name in names:
            times[name].append(_time(PROGRAMS[name]))
    pairs = list(zip(times["otel-jobs"], times["floor"], strict=True))
    added = statistics.median(o[0] - f[0] for o, f in pairs)
    added_at_exit = statistics.median((o[1] - o[0]) - (f[1] - f[0]) for o, f in pairs)
    imported = imported_by_instrument()
    python = statistics.median(t[0] for t in times["python"])
    floor = statistics.median(t[0] for t in times["floor"])
    return [
        row(
            "process start-up added by instrument() (every extra installed)",
            subject="import otel_jobs; instrument()", value=added * 1e3, unit="ms",
            baseline="importing the OTel SDK and prometheus-client", baseline_value=floor * 1e3,
            ratio=statistics.median(t[0] for t in times["otel-jobs"]) / floor,
            target=f"<= +{TARGET_MS:g} ms, no framework imported",
            met=None if quick else added * 1e3 <= TARGET_MS and not imported,
            note=f"median of {reps} rounds, otel-jobs minus the floor; python -c pass "
            f"{python * 1e3:.0f} ms; exit +{added_at_exit * 1e3:.0f} ms more; frameworks and "
            "clients imported by instrument() itself: " + (", ".join(imported) or "none"),
        ),
    ]  # fmt: skip


if __name__ == "__main__":
    try:
        from bench.run import table
    except ImportError:  # run as a script from bench/
        from run import table  # type: ignore[no-redef]

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    print(table(run(quick=parser.parse_args().quick)))

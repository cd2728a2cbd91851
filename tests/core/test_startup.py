"""``instrument()`` imports no framework or client library on the application's behalf.

Each test runs a fresh interpreter (``python -c``) with every extra installed, as a worker
starts: what ``instrument()`` imports, that a library imported afterwards is patched at its
import, and that ``uninstrument()`` before that import leaves it unpatched. The start-up time
itself is a benchmark figure (``bench/bench_startup.py``), never asserted here.
"""

from __future__ import annotations

import os
from pathlib import Path

from otel_jobs.support import LIBRARIES
from tests.support.processes import last_json

ROOT = Path(__file__).resolve().parents[2]
#: The top-level module of every library otel-jobs adapts (urllib is the standard library's).
ADAPTED = sorted({lib.module.split(".")[0] for lib in LIBRARIES} - {"urllib"})


def _python(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object last."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(ROOT)
    return last_json(code, ROOT, env)


_PRELUDE = """
import json, sys
import otel_jobs
from otel_jobs.core import agent as agent_mod, imports
"""


def test_instrument_imports_none_of_the_adapted_libraries() -> None:
    found = _python(
        _PRELUDE
        + f"""
otel_jobs.instrument(prometheus_port=0)
names = [a.name for a in agent_mod.current().adapters]
print(json.dumps({{"imported": [m for m in {ADAPTED!r} if m in sys.modules],
                   "adapters": sorted(names), "waiting": imports.waiting()}}))
"""
    )
    assert found["imported"] == []
    # Every adapter is in place, waiting for its library (urllib.request: prometheus-client
    # imports it, so its check is installed at once).
    assert found["adapters"] == sorted(lib.name for lib in LIBRARIES)
    assert set(found["waiting"]) >= {"celery", "rq", "httpx", "redis", "requests"}  # type: ignore[arg-type]


def test_a_library_imported_after_instrument_is_patched_then_restored() -> None:
    found = _python(
        _PRELUDE
        + """
otel_jobs.instrument(prometheus_port=0, frameworks=["celery"], outbound=["requests"])
import requests.adapters
from celery import signals
send = vars(requests.adapters.HTTPAdapter)["send"]
receivers = len(signals.task_prerun.receivers)
otel_jobs.uninstrument()
restored = vars(requests.adapters.HTTPAdapter)["send"]
print(json.dumps({
    "wrapped": send is not restored, "restored": restored.__module__ == "requests.adapters",
    "receivers": receivers, "after": len(signals.task_prerun.receivers),
    "waiting": imports.waiting(),
}))
"""
    )
    assert found["wrapped"] is True
    assert found["restored"] is True
    assert found["receivers"] == 1 and found["after"] == 0
    assert found["waiting"] == []


def test_uninstrument_before_the_import_leaves_the_library_alone() -> None:
    found = _python(
        _PRELUDE
        + """
otel_jobs.instrument(prometheus_port=0, frameworks=["rq"], outbound=["requests"])
otel_jobs.uninstrument()
waiting = imports.waiting()
import requests.adapters
import rq.worker
owner = next(c for c in rq.worker.Worker.__mro__ if "perform_job" in vars(c))
print(json.dumps({
    "waiting": waiting,
    "send": vars(requests.adapters.HTTPAdapter)["send"].__module__,
    "perform_job": vars(owner)["perform_job"].__module__,
}))
"""
    )
    assert found["waiting"] == []
    assert found["send"] == "requests.adapters"
    assert str(found["perform_job"]).startswith("rq.")

"""A run never fails because another thread is importing asyncio at that moment.

otel-jobs does not import asyncio for a sync worker: a run reads ``sys.modules`` to find a
running loop and to classify a ``CancelledError``. While another thread imports asyncio, the
module is in ``sys.modules`` half made (its attributes not all set yet). Reproduced here the
way the import system leaves it: a bare module object under that name, as Python puts it there
before running the module's code (tests/reliability/test_fork_busy.py met the real race: an
exporter thread importing asyncio while jobs ran, and runs raised AttributeError).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import otel_jobs


@pytest.fixture
def half_imported_asyncio() -> Iterator[None]:
    saved = {name: sys.modules.get(name) for name in ("asyncio", "asyncio.exceptions")}
    for name in saved:
        sys.modules[name] = types.ModuleType(name)  # in sys.modules, its code not run yet
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def test_a_job_runs_and_fails_as_usual_while_asyncio_is_half_imported(
    instrumented: Callable[..., Any], half_imported_asyncio: None
) -> None:
    instrumented(frameworks=[], outbound=[], watchdog=False)

    @otel_jobs.job(name="half.ok")
    def ok() -> int:
        return 7

    @otel_jobs.job(name="half.boom")
    def boom() -> None:
        raise ValueError("boom")

    assert ok() == 7
    with pytest.raises(ValueError, match="boom"):  # the job's own exception, not otel-jobs'
        boom()
    with otel_jobs.job_run("half.block") as run:
        run.heartbeat()

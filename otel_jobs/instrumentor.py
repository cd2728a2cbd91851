"""otel-jobs as an OpenTelemetry instrumentor.

Registered under the ``opentelemetry_instrumentor`` entry point, so
``opentelemetry-instrument python worker.py`` starts otel-jobs along with the other
instrumentations; options come from the ``OTEL_JOBS_*`` environment variables. In code:

>>> from otel_jobs.instrumentor import OtelJobsInstrumentor
>>> OtelJobsInstrumentor().instrument(max_duration=600)
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from . import api


class OtelJobsInstrumentor(BaseInstrumentor):
    """``BaseInstrumentor`` front for :func:`otel_jobs.instrument` / :func:`otel_jobs.uninstrument`."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        api.instrument(**kwargs)

    def _uninstrument(self, **kwargs: Any) -> None:
        api.uninstrument()

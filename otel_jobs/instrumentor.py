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

from . import api, support


class OtelJobsInstrumentor(BaseInstrumentor):
    """``BaseInstrumentor`` front for :func:`otel_jobs.instrument` / :func:`otel_jobs.uninstrument`."""

    def instrumentation_dependencies(self) -> Collection[str]:
        """The supported range of each framework and client library installed here
        (:mod:`otel_jobs.support`), e.g. ``["celery>=5.3,<6", "redis>=4.2,<9"]``."""
        return support.requirements()

    def instrument(self, **kwargs: Any) -> Any:
        # otel-jobs checks each library's range as it installs that library's adapter (outside
        # it: warned and skipped, the others installed) instead of refusing them all, as
        # BaseInstrumentor's check would; skip_dep_check=False asks for that check anyway.
        kwargs.setdefault("skip_dep_check", True)
        return super().instrument(**kwargs)

    def _instrument(self, **kwargs: Any) -> None:
        api.instrument(**kwargs)

    def _uninstrument(self, **kwargs: Any) -> None:
        api.uninstrument()

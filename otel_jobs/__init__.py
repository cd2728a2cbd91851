"""otel-jobs: make stuck background jobs impossible to miss.

>>> import otel_jobs
>>> otel_jobs.instrument()          # once, where the worker process starts

Every run of a Celery, RQ, Dramatiq, arq, Huey or APScheduler job (or of a function marked
``@otel_jobs.job``) becomes one OpenTelemetry span and a set of Prometheus metrics; a watchdog
thread reports runs that stopped heartbeating or overran their limit, says where they are stuck,
and can cancel them; outbound calls made without a timeout are flagged with the line of code
that made them. The documentation site (``docs/``) has the settings
(``docs/configuration.md``), the metrics (``docs/metrics.md``), the shipped alerts
(``docs/alerts.md``) and dashboards (``docs/dashboards.md``).
"""

from .api import instrument, is_instrumented, job, job_run, metrics_url, uninstrument
from .core.config import ConfigurationError
from .core.errors import JobTimeoutError, OtelJobsWarning
from .core.lease import PreviousAttempt
from .core.run import Run, current_run, heartbeat
from .outbound.base import MissingTimeoutError

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "JobTimeoutError",
    "MissingTimeoutError",
    "OtelJobsWarning",
    "PreviousAttempt",
    "Run",
    "__version__",
    "current_run",
    "heartbeat",
    "instrument",
    "is_instrumented",
    "job",
    "job_run",
    "metrics_url",
    "uninstrument",
]

"""Runs lost with their worker: found from the workers' leases, counted once, optionally requeued.

Every instrumented worker process lists its runs in flight in a lease it renews from its
watchdog's tick (:mod:`otel_jobs.core.lease`). A worker that dies (``kill -9``, the OOM killer, a
pod evicted, a host lost) stops renewing; once its lease has expired, the monitor finds the runs
it listed, asks the framework which of them never finished, and for each such run counts
``otel_jobs_runs_lost_total{framework, job_name, queue}`` once, emits one ``<job> lost`` span
and one WARNING record, and applies the requeue policy (``--requeue-lost``, ``--max-lost``).
Bound: a run is found within the workers' lease TTL (``OTEL_JOBS_LEASE_TTL``, 30 s) plus one
monitor poll (``--interval``, 15 s): 45 s by default.

Layout: :mod:`.detector` (the leases read, the claim that makes two monitors count a run once,
the metrics and the policy), :mod:`.runs` (a run as its lease listed it), :mod:`.report` (its
span and log record), one module per framework for what only the framework knows
(:mod:`.celery`, :mod:`.rq`, :mod:`.dramatiq`, :mod:`.arq`, :mod:`.huey`: whether a run finished
after all, how to requeue it, where failed jobs go), and :mod:`.watch` (a framework's queue
collector and its detector polled as one collector).

The leases are in the broker's Redis for a Redis broker, else (RabbitMQ) in ``--lease-url``
(``OTEL_JOBS_LEASE_URL``, which the workers read too). Without either, a framework's lost runs
are not looked for, and the monitor says so once at start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import _redis
from ..base import Collector, logger
from .detector import Detector, LostRun
from .watch import Watched

if TYPE_CHECKING:
    from opentelemetry import trace

    from ..settings import MonitorSettings

__all__ = ["Detector", "LostRun", "Watched", "with_lost_runs"]


def with_lost_runs(
    collector: Collector,
    settings: MonitorSettings,
    owner: Any = None,
    tracer: trace.Tracer | None = None,
) -> Collector:
    """``collector`` with the lost-run detector of its framework, where leases can be read.

    ``owner``: the Celery app, the Dramatiq broker or the Huey instance the collector reads.
    """
    framework = collector.framework
    client: Any
    if settings.lease_url:
        client = _redis.from_url(settings.lease_url, settings.poll_timeout)
    else:
        client = getattr(collector, "client", None)
    if client is None:
        logger.warning(
            "otel-jobs monitor: %s: runs lost with their worker are not looked for: its broker "
            "is not a Redis; give --lease-url (the Redis the workers' OTEL_JOBS_LEASE_URL names)",
            collector.label,
        )
        return collector
    common: dict[str, Any] = {
        "requeue": settings.requeue_lost,
        "max_lost": settings.max_lost,
        "tracer": tracer,
    }
    detector: Detector
    if framework == "celery":
        from .celery import CeleryDetector

        detector = CeleryDetector(client, owner, **common)
    elif framework == "rq":
        from .rq import RQDetector

        detector = RQDetector(client, **common)
    elif framework == "dramatiq":
        from .dramatiq import DramatiqDetector

        detector = DramatiqDetector(client, owner, **common)
    elif framework == "arq":
        from .arq import ArqDetector

        detector = ArqDetector(client, **common)
    elif framework == "huey":
        from .huey import HueyDetector

        detector = HueyDetector(client, owner, **common)
    else:
        return collector
    return Watched(collector, detector)

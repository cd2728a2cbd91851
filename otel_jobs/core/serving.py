"""What :meth:`Agent.start_serving` sets going once the process serves: the ``/metrics``
endpoint (the fast writer while no forked child left a snapshot, prometheus-client's merge
otherwise), the watchdog thread and the Pushgateway pusher (see :mod:`otel_jobs.core.agent`).
Undone by :meth:`Agent.stop`. A port taken is logged with the fix, never raised.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .exposition import serve
from .multiprocess import MergedCollector
from .textformat import TextWriter

if TYPE_CHECKING:
    from .agent import Agent

logger = logging.getLogger("otel_jobs")


def start(agent: Agent) -> None:
    """The ``/metrics`` endpoint (not in a forked child: its parent serves), the watchdog and
    the Pushgateway pusher, as the settings ask."""
    settings = agent.settings
    if settings.prometheus and not agent.share.in_child:
        from prometheus_client import CollectorRegistry

        endpoint = CollectorRegistry(auto_describe=False)
        endpoint.register(MergedCollector(agent.share, agent.telemetry.registry))
        share = agent.share
        writer = agent.text_writer = TextWriter(agent.telemetry)

        def fast(encoder: Any) -> bytes | None:
            # With forked children's snapshots to merge, prometheus-client serves the merge.
            return writer.render(encoder) if share.no_child_snapshots() else None

        try:
            agent.server = serve(
                endpoint,
                settings.prometheus_addr,
                settings.prometheus_port,
                certfile=settings.prometheus_certfile,
                keyfile=settings.prometheus_keyfile,
                basic_auth=settings.prometheus_basic_auth,
                fast=fast,
            )
        except OSError as exc:
            agent.server_error = exc
            logger.error(
                "otel-jobs: cannot serve /metrics on %s:%s (%s). Jobs run as usual and spans are "
                "still recorded, but Prometheus cannot scrape this worker. Fix: choose a free port "
                "with OTEL_JOBS_PROMETHEUS_PORT (0 picks any), or stop the process holding it.",
                settings.prometheus_addr,
                settings.prometheus_port,
                exc.strerror or exc,
            )
    if settings.watchdog:
        agent.watchdog.start()
    if settings.pushgateway_url:
        from ..pushgateway import Pusher

        agent.pusher = Pusher(agent, settings.pushgateway_url, settings.pushgateway_timeout)
        agent.pusher.start()

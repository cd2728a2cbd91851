"""The consumer's entry point: ``huey_consumer worker.huey -k process -w 2``.

``huey_consumer`` imports this module before it starts its workers, so ``instrument()`` runs in
the consumer process; with ``-k process`` the worker processes are forked from it afterwards,
and the consumer serves ``/metrics`` for all of them.
"""

from tasks import huey

import otel_jobs

otel_jobs.instrument(
    # The stuck task never heartbeats: call it stalled after 5 s instead of the default 600.
    jobs={"tasks.wait_for_approval": {"heartbeat_timeout": 5}},
)

__all__ = ["huey"]

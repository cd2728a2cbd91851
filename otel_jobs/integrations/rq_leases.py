"""What an RQ run adds to its process's lease, and what a requeued job carries.

Called as the run starts (in the work horse, or in a ``SimpleWorker``): the lease
(:mod:`otel_jobs.core.lease`) lives in the job's own Redis (``job.connection``) unless
``OTEL_JOBS_LEASE_URL`` says otherwise; RQ keeps the job (arguments included) in Redis, so the
lease needs nothing more for ``otel-jobs monitor --requeue-lost`` to put it back. A job the
monitor requeued carries its previous attempt in ``job.meta`` (:data:`~otel_jobs.core.lease.
REQUEUE_MARK`): its run counts ``otel_jobs_runs_redelivered_total`` and reads
``previous_attempt`` without a round trip. A forking worker's horse ends by ``os._exit`` right
after its job: :func:`ended` takes its run out of the lease first (bounded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.lease import REQUEUE_MARK

if TYPE_CHECKING:
    from ..core.agent import Agent
    from ..core.run import Run


def started(agent: Agent, run: Run, job: Any) -> None:
    lease = agent.lease
    if lease.enabled:
        connection = job.connection
        lease.track(run, lambda: connection.connection_pool)
    meta = getattr(job, "meta", None)
    if meta and lease.requeued(run, meta.get(REQUEUE_MARK)):
        agent.telemetry.record_redelivered(run.series)


def ended(agent: Agent) -> None:
    """In a work horse about to ``os._exit``: the lease as it stands, written now."""
    agent.lease.release()

"""A job framework's own connection (a worker's broker client) is checked once, not per command.

A worker sends several Redis commands per job on its own connection (RQ's bookkeeping, Celery's
acknowledgements through kombu), outside any run, often on a client without socket timeouts.
Such a call is never reported (not the user's to fix); once one has been seen on a connection
pool, the pool's later calls outside runs skip the check altogether. Calls made on the same
pool inside a run are still checked: a job that uses the worker's connection
(``rq.get_current_job().connection``) without timeouts is reported. Real RQ code and the real
Redis (database 0, keys of the test's own, deleted after).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis

import otel_jobs
from tests.outbound.probe import flagged, here
from tests.support import require_redis

pytestmark = pytest.mark.broker


def test_the_frameworks_connection_is_skipped_outside_runs_and_checked_inside(
    outbound: Any,
) -> None:
    require_redis()
    from rq import Queue

    outbound("redis")
    client = redis.Redis(host="127.0.0.1", port=6379)  # no socket timeouts
    queue = Queue(f"otel-jobs-test-{uuid.uuid4().hex[:8]}", connection=client)
    try:
        assert queue.count == 0  # RQ's own LLEN, outside any run: never reported
        assert queue.count == 0  # the pool is known as the framework's now: not checked
        outside = here()
        client.exists(queue.key)  # outside any run on that pool: not checked either
        with otel_jobs.job_run("framework.connection"):
            inside = here()
            client.exists(queue.key)  # a job on the worker's connection: checked, reported
    finally:
        queue.delete(delete_jobs=True)
        client.close()
    assert flagged(library="redis", call_site=outside) == 0
    assert flagged(library="redis", call_site=inside) == 1
    assert flagged(library="redis") == 1

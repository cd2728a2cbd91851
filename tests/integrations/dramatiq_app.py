"""The Dramatiq test app: the module the dramatiq worker processes of the tests import, written
into the test's directory from :data:`APP` (tests/integrations/test_dramatiq.py, which also
imports it on the producer side, and tests/monitor/test_dramatiq.py).

It reads ``DQ_BROKER`` (a Redis or RabbitMQ URL), ``DQ_QUEUE`` (its actors' queue), ``DQ_STATE``
(a directory, for ``flaky``) and, with ``DQ_INSTRUMENT=1``, instruments itself on ``DQ_PORT``.
It imports nothing from ``tests`` at module level: the monitor's workers do not have the
repository on their path.
"""

from __future__ import annotations

import textwrap

APP = textwrap.dedent(
    """
    import asyncio
    import os
    import threading
    import time

    import dramatiq
    from dramatiq.middleware.asyncio import AsyncIO

    if os.environ["DQ_BROKER"].startswith("redis"):
        from dramatiq.brokers.redis import RedisBroker

        broker = RedisBroker(url=os.environ["DQ_BROKER"])
    else:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=os.environ["DQ_BROKER"])
    broker.add_middleware(AsyncIO())
    dramatiq.set_broker(broker)
    if os.environ.get("DQ_INSTRUMENT") == "1":  # instrument() in the module, not in a launcher
        import otel_jobs

        otel_jobs.instrument(prometheus_port=int(os.environ["DQ_PORT"]), frameworks=["dramatiq"])
    QUEUE = os.environ["DQ_QUEUE"]
    STATE = os.environ.get("DQ_STATE", "")


    @dramatiq.actor(queue_name=QUEUE, max_retries=0)
    def ok(i):
        return None


    @dramatiq.actor(queue_name=QUEUE, max_retries=0)
    def later():
        return None


    @dramatiq.actor(queue_name=QUEUE, max_retries=0)
    def boom(i=None):
        raise RuntimeError("boom")


    @dramatiq.actor(queue_name=QUEUE, max_retries=3, min_backoff=100, max_backoff=300)
    def flaky(key):
        from tests.integrations.job_bodies import fail_first_attempt

        fail_first_attempt(STATE, key)


    @dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=1000)
    def slow():
        for _ in range(1200):  # short sleeps: Dramatiq's time limit is an async exception
            time.sleep(0.05)


    @dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=3_600_000)
    def sleep(seconds):
        time.sleep(seconds)


    @dramatiq.actor(queue_name=QUEUE, max_retries=0)
    def hang():
        threading.Event().wait()  # never returns, never heartbeats


    @dramatiq.actor(queue_name=QUEUE, max_retries=0)
    async def hang_async():
        await asyncio.Event().wait()  # never returns, never heartbeats


    @dramatiq.actor(queue_name=QUEUE, max_retries=0)
    async def cancel_async():
        await asyncio.Event().wait()  # hung; its policy is cancel


    @dramatiq.actor(queue_name=QUEUE, max_retries=0)
    async def beat_async():
        import otel_jobs

        for i in range(30):  # 3 s, heartbeating well within its 1 s timeout
            otel_jobs.heartbeat(progress=i / 30)
            await asyncio.sleep(0.1)
    """
)

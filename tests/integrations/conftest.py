"""Fixtures shared by the integration tests: the RQ tests that run a worker in the test's own
process, and a Redis server of a module's own (the workers started from a command line)."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from redis import Redis

from tests.integrations.rq_support import redis_connection


@pytest.fixture
def redis_db() -> Iterator[Redis]:
    """A connection to the RQ tests' Redis database (the test is skipped when Redis is down)."""
    with redis_connection() as connection:
        yield connection


@pytest.fixture
def keep_signal_handlers() -> Iterator[None]:
    """rq's work() installs SIGINT/SIGTERM handlers; give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a ``redis-server`` of the test module's own, stopped after it."""
    from tests.monitor.support import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url(0)
    finally:
        server.stop()

"""Fixtures of the monitor's tests: a Redis of their own (session-wide; each module its own
database on it, emptied before each test) and RabbitMQ queue names unique to a test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.reliability.conftest import certificate  # noqa: F401 (the endpoint's TLS files)
from tests.support import require_rabbitmq
from tests.support.processes import AppWorker

from .support import RedisServer

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672"


@pytest.fixture
def processes() -> Iterator[list[AppWorker]]:
    """The worker processes a test starts (appended to this list): killed after the test."""
    started: list[AppWorker] = []
    yield started
    for process in started:
        process.stop()


@pytest.fixture
def workers(
    tmp_path: Path, processes: list[AppWorker], request: pytest.FixtureRequest
) -> Callable[[str, str], AppWorker]:
    """Starts the module's ``Worker(broker_url, queue, directory)``; killed after the test."""
    worker_class = request.module.Worker

    def start(broker_url: str, queue: str) -> AppWorker:
        processes.append(worker_class(broker_url, queue, tmp_path))
        return processes[-1]

    return start


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(Path(tmp_path_factory.mktemp("monitor-redis"))).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """``redis://.../<db>`` of the module's own database (``REDIS_DB``), emptied first."""
    import redis

    url = redis_server.url(getattr(request.module, "REDIS_DB", 0))
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url


@pytest.fixture
def rabbit_queue() -> Iterator[str]:
    """A RabbitMQ queue name of the test's own; it and its .DQ/.XQ are deleted afterwards."""
    require_rabbitmq()
    import pika

    name = f"monitor-{uuid.uuid4().hex[:10]}"
    yield name
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    channel = connection.channel()
    for queue in (name, f"{name}.DQ", f"{name}.XQ"):
        channel.queue_delete(queue)
    connection.close()

"""Helpers shared by the test suite: scraping /metrics, real services, free ports."""

from __future__ import annotations

import os
import shutil
import socket
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_text(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


class Samples:
    """Parsed samples of one scrape, looked up by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]

    def find(self, name: str, **labels: str) -> list[float]:
        return [
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        found = self.find(name, **labels)
        assert len(found) == 1, f"expected one sample {name}{labels}, found {found}"
        return found[0]

    def total(self, name: str, **labels: str) -> float:
        return sum(self.find(name, **labels))

    def names(self) -> set[str]:
        return {s.name for s in self.samples}


def scrape(url: str) -> Samples:
    return Samples(scrape_text(url))


def agent_metrics() -> Samples:
    """This process's own ``/metrics`` (the running agent's endpoint), scraped."""
    import otel_jobs

    url = otel_jobs.metrics_url()
    assert url is not None
    return scrape(url)


def otel_points(reader: Any) -> Iterator[tuple[Any, Any]]:
    """Every (metric, data point) an OpenTelemetry ``InMemoryMetricReader`` holds now."""
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    yield metric, point


@contextmanager
def emptied_redis_db(url: str) -> Iterator[Any]:
    """A connection to the Redis database ``url`` (skip without Redis), emptied before and
    after."""
    require_redis()
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def require_binary(name: str, how_to_install: str) -> str:
    """The path of program ``name``; skip (or, with CI=true, fail) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed; install it with: {how_to_install}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_service(host: str, port: int, name: str, how_to_start: str) -> None:
    """Skip (or, with CI=true, fail) when a real service is not reachable."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        message = f"{name} is not reachable on {host}:{port} ({exc}); start it with: {how_to_start}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def require_redis() -> None:
    require_service(
        "127.0.0.1", 6379, "Redis",
        "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no",
    )  # fmt: skip


def require_rabbitmq() -> None:
    require_service("127.0.0.1", 5672, "RabbitMQ", "rabbitmq-server -detached")


def require_postgres() -> None:
    require_service(
        "127.0.0.1", 5432, "PostgreSQL",
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    )  # fmt: skip


def spans_named(spans: Iterable[object], name: str) -> list[object]:
    return [s for s in spans if getattr(s, "name", None) == name]

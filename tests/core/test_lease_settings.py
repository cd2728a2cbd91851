"""The lease's settings (workers) and the lost-run flags (monitor): validated once, each bad value
refused naming the setting (keyword, variable or flag) and the value."""

from __future__ import annotations

import pytest

from otel_jobs.core import config
from otel_jobs.core.config import ConfigurationError
from otel_jobs.monitor import settings as monitor_settings


def test_defaults() -> None:
    found = config.load(environ={})
    assert (found.lease, found.lease_url, found.lease_ttl) == (True, None, 30.0)
    # A slow watchdog renews less often: the lease lasts three of its intervals.
    assert config.load(environ={"OTEL_JOBS_WATCHDOG_INTERVAL": "20"}).lease_ttl == 60.0
    assert config.load(environ={"OTEL_JOBS_LEASE_ENABLED": "false"}).lease is False


@pytest.mark.parametrize(
    ("kwargs", "environ", "named"),
    [
        ({"lease_url": "http://127.0.0.1:6379"}, {}, "lease_url='http://127.0.0.1:6379'"),
        ({"lease_url": "redis://:99999999"}, {}, "lease_url='redis://:99999999'"),
        ({}, {"OTEL_JOBS_LEASE_URL": "127.0.0.1:6379"}, "OTEL_JOBS_LEASE_URL='127.0.0.1:6379'"),
        ({"lease_ttl": 1}, {}, "lease_ttl=1.0 is not valid; accepted: at least twice the watchdog"),
        ({}, {"OTEL_JOBS_LEASE_TTL": "1.5"}, "OTEL_JOBS_LEASE_TTL=1.5 is not valid"),
        ({"lease_ttl": "inf"}, {}, "lease_ttl='inf'"),
        ({"lease_ttl": -3}, {}, "lease_ttl=-3"),
        ({}, {"OTEL_JOBS_LEASE_ENABLED": "maybe"}, "OTEL_JOBS_LEASE_ENABLED='maybe'"),
        ({"lease_ttl": 5, "watchdog_interval": 3}, {}, "lease_ttl=5.0"),
    ],
)
def test_bad_worker_settings_name_themselves(
    kwargs: dict[str, object], environ: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        config.load(environ=environ, **kwargs)
    assert named in str(caught.value)


def test_the_lease_url_password_is_not_in_the_settings_repr() -> None:
    found = config.load(environ={}, lease_url="redis://user:s3cret@127.0.0.1:6379/0")
    assert "s3cret" not in repr(found)


@pytest.mark.parametrize(
    ("given", "environ", "named"),
    [
        ({"max_lost": "-1"}, {}, "--max-lost='-1'"),
        ({"max_lost": "two"}, {}, "--max-lost='two'"),
        ({}, {"OTEL_JOBS_MONITOR_REQUEUE_LOST": "perhaps"}, "OTEL_JOBS_MONITOR_REQUEUE_LOST"),
        ({"lease_url": "amqp://h"}, {}, "--lease-url='amqp://h'"),
        ({}, {"OTEL_JOBS_LEASE_URL": "h:6379"}, "OTEL_JOBS_LEASE_URL='h:6379'"),
    ],
)
def test_bad_monitor_flags_name_themselves(
    given: dict[str, object], environ: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        monitor_settings.load({"rq_redis_url": "redis://127.0.0.1:6379/0", **given}, environ)
    assert named in str(caught.value)


def test_monitor_flags() -> None:
    found = monitor_settings.load(
        {"rq_redis_url": "redis://h/0", "requeue_lost": "true", "max_lost": "0"},
        {"OTEL_JOBS_LEASE_URL": "redis://leases/3"},
    )
    assert (found.requeue_lost, found.max_lost, found.lease_url) == (True, 0, "redis://leases/3")
    assert monitor_settings.load({"rq_redis_url": "redis://h/0"}, {}).requeue_lost is False

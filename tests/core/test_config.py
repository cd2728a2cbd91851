"""Settings: keyword arguments over environment variables, and clear errors for bad values."""

from __future__ import annotations

import math
import pathlib

import pytest

import otel_jobs
from otel_jobs.core import config

README = pathlib.Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_defaults_are_documented_values() -> None:
    s = config.load(environ={})
    assert (s.prometheus_port, s.prometheus_addr) == (9464, "127.0.0.1")
    assert (s.heartbeat_timeout, s.max_duration, s.on_stall, s.missing_timeout) == (
        600,
        3600,
        "observe",
        "warn",
    )
    assert s.otlp_traces_endpoint is None and s.otlp_metrics_endpoint is None


def test_environment_is_read_and_keywords_win() -> None:
    env = {
        "OTEL_JOBS_PROMETHEUS_PORT": "9999",
        "OTEL_JOBS_PROMETHEUS_ADDR": "0.0.0.0",
        "OTEL_JOBS_HEARTBEAT_TIMEOUT": "45.5",
        "OTEL_JOBS_MAX_DURATION": "inf",
        "OTEL_JOBS_ON_STALL": "CANCEL",
        "OTEL_JOBS_FRAMEWORKS": "celery, rq",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_SDK_DISABLED": "true",
    }
    s = config.load(environ=env, heartbeat_timeout=5)
    assert s.prometheus_port == 9999 and s.prometheus_addr == "0.0.0.0"
    assert s.heartbeat_timeout == 5  # keyword wins
    assert math.isinf(s.max_duration)
    assert s.on_stall == "cancel"
    assert s.frameworks == ("celery", "rq")
    assert s.otlp_traces_endpoint == s.otlp_metrics_endpoint == "http://127.0.0.1:4318"
    assert s.otlp_protocol == "grpc" and s.sdk_disabled


@pytest.mark.parametrize(
    ("env", "value", "accepted"),
    [
        ("OTEL_JOBS_PROMETHEUS_PORT", "abc", "TCP port"),
        ("OTEL_JOBS_PROMETHEUS_PORT", "70000", "TCP port"),
        ("OTEL_JOBS_HEARTBEAT_TIMEOUT", "-1", "positive number of seconds"),
        ("OTEL_JOBS_MAX_DURATION", "nan", "positive number of seconds"),
        ("OTEL_JOBS_ON_STALL", "panic", "observe, cancel, exit"),
        ("OTEL_JOBS_MISSING_TIMEOUT", "ignore", "warn, enforce, raise, off"),
        ("OTEL_JOBS_WATCHDOG_INTERVAL", "0", "positive number of seconds"),
        ("OTEL_JOBS_FRAMEWORKS", "celery,sidekiq", "celery, rq"),
        ("OTEL_JOBS_MAX_JOB_NAMES", "0", "whole number"),
        ("OTEL_JOBS_PROMETHEUS_ENABLED", "maybe", "true or false"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon", "grpc, http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4317", "http://"),
    ],
)
def test_bad_environment_value_names_variable_value_and_accepted(
    env: str, value: str, accepted: str
) -> None:
    with pytest.raises(config.ConfigurationError) as err:
        config.load(environ={env: value})
    message = str(err.value)
    assert env in message and repr(value) in message and accepted in message


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"prometheus_port": "abc"}, "prometheus_port"),
        ({"heartbeat_timeout": -3}, "heartbeat_timeout"),
        ({"max_duration": True}, "max_duration"),
        ({"on_stall": "kill"}, "on_stall"),
        ({"no_such_option": 1}, "no_such_option"),
        ({"jobs": {"a": {"max_duration": 0}}}, "jobs['a'].max_duration"),
        ({"jobs": {"a": {"deadline": 3}}}, "jobs['a'].deadline"),
        ({"jobs": ["a"]}, "jobs"),
        ({"prometheus_certfile": "/tmp/c.pem"}, "prometheus_keyfile"),
    ],
)
def test_bad_keyword_is_rejected_by_instrument(kwargs: dict[str, object], setting: str) -> None:
    with pytest.raises(otel_jobs.ConfigurationError) as err:
        otel_jobs.instrument(**kwargs)
    assert err.value.setting == setting
    assert setting in str(err.value)
    assert not otel_jobs.is_instrumented()


def test_basic_auth_error_does_not_echo_the_password() -> None:
    with pytest.raises(config.ConfigurationError) as err:
        config.load(environ={"OTEL_JOBS_PROMETHEUS_BASIC_AUTH": "s3cret-without-user"})
    assert "s3cret" not in str(err.value)


@pytest.mark.parametrize(
    ("setting", "value", "shown"),
    [
        ("pushgateway_url", "http://bob:s3cret@127.0.0.1:99999", "http://bob:***@127.0.0.1:99999"),
        ("OTEL_JOBS_PUSHGATEWAY_URL", "ftp://bob:s3cret@gw:9091", "ftp://bob:***@gw:9091"),
        ("pushgateway_url", "bob:s3cret@gw:9091", "bob:***@gw:9091"),
        ("pushgateway_url", "http://bob:s3/cret@gw", "http://bob:***@gw"),
        ("lease_url", "redis://:s3cret@127.0.0.1:65536/0", "redis://:***@127.0.0.1:65536/0"),
        ("OTEL_JOBS_LEASE_URL", "http://bob:s3cret@redis", "http://bob:***@redis"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://bob:s3cret@[::1", "https://bob:***@[::1"),
    ],
)
def test_a_refused_url_is_named_without_its_password(setting: str, value: str, shown: str) -> None:
    with pytest.raises(config.ConfigurationError) as err:
        if setting.isupper():
            config.load(environ={setting: value})
        else:
            config.load(environ={}, **{setting: value})
    message = str(err.value)
    assert "s3" not in message and "cret" not in message, message
    assert err.value.setting == setting and f"{setting}={shown!r}" in message, message
    assert err.value.value == shown  # as repr(settings) shows an accepted one


def test_job_decorator_validates_at_decoration_time() -> None:
    with pytest.raises(otel_jobs.ConfigurationError, match="max_duration"):
        otel_jobs.job(max_duration=-1)
    with pytest.raises(otel_jobs.ConfigurationError, match="on_stall"):
        otel_jobs.job_run("x", on_stall="nope")


def test_readme_configuration_table_matches_the_options() -> None:
    readme = README.read_text()
    start = readme.index("<!-- config-table:start -->") + len("<!-- config-table:start -->")
    end = readme.index("<!-- config-table:end -->")
    assert readme[start:end].strip() == config.markdown_table()
    for option in config.OPTIONS:
        assert option.env.startswith("OTEL_JOBS_")

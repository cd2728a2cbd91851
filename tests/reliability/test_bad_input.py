"""Bad input: every setting fuzzed, and heartbeats with values a job should never have sent.

Every option of the configuration table gets arbitrary values (hypothesis) as a keyword
argument and as an environment variable: :func:`otel_jobs.core.config.load` either accepts the
value, parsed to the documented type and range, or raises :class:`ConfigurationError` naming
the setting (the keyword or the variable) and the value; never another exception. Through
``instrument()`` itself, an accepted value leaves a process whose jobs run, and a rejected one
raises ``ConfigurationError`` before anything starts.

``heartbeat()`` with progress values that are not numbers from 0 to 1, values whose comparison
raises, or details that cannot be serialised never raises inside the job; each kind of bad
value is logged once.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import otel_jobs
from otel_jobs.core import config
from otel_jobs.core.config import OPTIONS, ConfigurationError

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.binary(max_size=8),
    st.lists(st.one_of(st.text(max_size=10), st.integers()), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    # buckets: increasing (accepted), in any order, with repeats, non-finite
    st.lists(st.floats(min_value=1e-3, max_value=1e6), min_size=1, max_size=4, unique=True).map(
        sorted
    ),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
    st.sampled_from(
        [
            "0",
            "1",
            "-1",
            "65535",
            "65536",
            "inf",
            "-inf",
            "nan",
            "1e309",
            "true",
            "off",
            " ",
            "observe",
            "CANCEL",
            "celery,rq",
            "celery,,",
            "httpx",
            "user:pw",
            ":",
            "127.0.0.1",
            "0.0.0.0",
            "::1",
            "http://127.0.0.1:4318",
            "https://user:pw@[::1]:9091/gw",
            "http://user:pw@127.0.0.1:99999",
            "http://[",
            "ftp://127.0.0.1",
            "redis://127.0.0.1:6379/0",
            "rediss://:pw@127.0.0.1:6380",
            "unix:///tmp/redis.sock",
            "redis://user:pw@:6379",
            "redis://127.0.0.1:65536",
            "lazy",
            "EAGER",
            "0.5",
            "1,10,60,300",
            "10,1",
            "1,1",
            "1,,inf",
            "1_000",
            "0x10",
            "١٢",
        ]
    ),  # fmt: skip
)
ENV_TEXT = st.one_of(
    st.text().filter(lambda t: "\x00" not in t),
    st.sampled_from(
        [
            "0",
            "1",
            "-1",
            "65536",
            "inf",
            "nan",
            "1e309",
            "yes",
            "exit",
            "rq,huey",
            "eager",
            "0.5",
            "60",
            "0.1,1,10",
            "10,1",
            "http://127.0.0.1:9091",
            "http://user:pw@127.0.0.1:99999",
            "redis://127.0.0.1:6379/0",
            "redis://:pw@127.0.0.1:99999",
            "unix:///tmp/redis.sock",
        ]
    ),
)
NAMES = [o.name for o in OPTIONS]
ENVS = [o.env for o in OPTIONS]
_TYPES: dict[str, Callable[[Any], bool]] = {
    "prometheus": lambda v: isinstance(v, bool),
    "watchdog": lambda v: isinstance(v, bool),
    "capture_args": lambda v: isinstance(v, bool),
    "prometheus_port": lambda v: isinstance(v, int) and 0 <= v <= 65535,
    "heartbeat_timeout": lambda v: isinstance(v, float) and v > 0,
    "max_duration": lambda v: isinstance(v, float) and v > 0,
    # what a thread can wait or a socket time out (a longer one raised in the watchdog's thread)
    "default_timeout": lambda v: isinstance(v, float) and 0 < v <= threading.TIMEOUT_MAX,
    "watchdog_interval": lambda v: isinstance(v, float) and 0 < v <= threading.TIMEOUT_MAX,
    "on_stall": lambda v: v in config.STALL_POLICIES,
    "missing_timeout": lambda v: v in config.TIMEOUT_POLICIES,
    "frameworks": lambda v: isinstance(v, tuple) and set(v) <= set(config.FRAMEWORKS),
    "outbound": lambda v: isinstance(v, tuple) and set(v) <= set(config.OUTBOUND_LIBRARIES),
    "max_job_names": lambda v: isinstance(v, int) and v >= 1,
    "max_queues": lambda v: isinstance(v, int) and v >= 1,
    "max_hosts": lambda v: isinstance(v, int) and v >= 1,
    "max_call_sites": lambda v: isinstance(v, int) and v >= 1,
    "prometheus_addr": lambda v: isinstance(v, str) and v.strip() == v and v != "",
    "prometheus_basic_auth": lambda v: isinstance(v, str) and ":" in v,
    "prometheus_certfile": lambda v: isinstance(v, str) and v != "",
    "prometheus_keyfile": lambda v: isinstance(v, str) and v != "",
    "multiprocess_dir": lambda v: isinstance(v, str) and v != "",
    "start": lambda v: v in config.START_MODES,
    "loop_blocked_timeout": lambda v: isinstance(v, float) and v > 0,
    "duration_buckets": lambda v: _increasing_seconds(v),
    "queue_wait_buckets": lambda v: _increasing_seconds(v),
    "pushgateway_url": lambda v: _url(v, ("http", "https")),
    "pushgateway_timeout": lambda v: isinstance(v, float) and 0 < v <= threading.TIMEOUT_MAX,
    "lease": lambda v: isinstance(v, bool),
    "lease_url": lambda v: _url(v, ("redis", "rediss", "unix")),
    "lease_ttl": lambda v: isinstance(v, float) and 0 < v <= threading.TIMEOUT_MAX,
}


def _increasing_seconds(v: object) -> bool:
    return (
        isinstance(v, tuple)
        and len(v) > 0
        and all(isinstance(b, float) and 0 < b < math.inf for b in v)
        and all(a < b for a, b in zip(v, v[1:], strict=False))
    )


def _url(v: object, schemes: tuple[str, ...]) -> bool:
    if not isinstance(v, str) or v.strip() != v:
        return False
    parts = urlsplit(v)
    return parts.scheme in schemes and (parts.scheme == "unix" or bool(parts.hostname))


def _check_rejection(error: ConfigurationError, setting: str, value: object) -> None:
    assert error.setting.startswith(setting), (error.setting, setting)
    text = str(error)
    assert setting in text and "accepted" in text
    if "basic_auth" not in setting.lower():
        shown = (repr(value), repr(str(value)), repr(str(value).strip()))
        if setting.lower().endswith("lease_ttl"):
            # refused against the watchdog interval, it is named as parsed
            # (tests/core/test_lease_settings.py): lease_ttl=1.0 for 1
            shown += tuple(repr(float(v)) for v in (value,) if _number(v))
        if _URL_SETTINGS.intersection(setting.lower().split("_")):
            # a refused URL is shown without what may be its password: user:***@host
            shown += (repr(config._url_shown(str(value).strip())),)
        assert any(v in text for v in shown), text


_URL_SETTINGS = {"url", "endpoint"}


def _number(value: object) -> bool:
    try:
        float(str(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except (ValueError, OverflowError):
        return False
    return not isinstance(value, bool)


def test_every_option_is_typed() -> None:
    assert set(_TYPES) == set(NAMES)


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(NAMES), value=ANY_VALUE)
@example(name="lease_ttl", value="1e-1")  # refused against watchdog_interval, named as parsed
@example(name="pushgateway_url", value="http://user:pw@127.0.0.1:99999")
@example(name="watchdog_interval", value=1e10)  # longer than a thread can wait
@example(name="lease_url", value="redis://:pw@[::1")
@example(name="duration_buckets", value=[0.5, 60, 3600])
@example(name="queue_wait_buckets", value="30,1")
def test_keyword_values_are_accepted_as_documented_or_rejected_by_name(
    name: str, value: object
) -> None:
    extra = {}
    if name in ("prometheus_certfile", "prometheus_keyfile"):
        extra = {
            "prometheus_keyfile" if name == "prometheus_certfile" else "prometheus_certfile": None
        }
    try:
        parsed = config.load(environ={}, **{name: value}, **extra)
    except ConfigurationError as error:
        if name in ("prometheus_certfile", "prometheus_keyfile") and value is not None:
            return  # both or neither (a test of its own in tests/core/test_config.py)
        _check_rejection(error, name, value)
        return
    if value is not None:
        assert _TYPES[name](getattr(parsed, name)), (name, value, getattr(parsed, name))


@settings(max_examples=400, deadline=None)
@given(env=st.sampled_from(ENVS), text=ENV_TEXT)
@example(env="OTEL_JOBS_LEASE_TTL", text="0.5")
@example(env="OTEL_JOBS_PUSHGATEWAY_URL", text="http://user:pw@127.0.0.1:99999")
@example(env="OTEL_JOBS_DEFAULT_TIMEOUT", text="1e10")
def test_environment_values_are_accepted_as_documented_or_rejected_by_name(
    env: str, text: str
) -> None:
    name = NAMES[ENVS.index(env)]
    environ = {env: text}
    if name in ("prometheus_certfile", "prometheus_keyfile"):
        environ = {"OTEL_JOBS_PROMETHEUS_CERTFILE": text, "OTEL_JOBS_PROMETHEUS_KEYFILE": text}
    try:
        parsed = config.load(environ=environ)
    except ConfigurationError as error:
        assert error.setting.startswith("OTEL_JOBS_PROMETHEUS_") or error.setting == env
        _check_rejection(error, error.setting, text)
        return
    if text.strip():
        assert _TYPES[name](getattr(parsed, name)), (env, text, getattr(parsed, name))


@settings(max_examples=200, deadline=None)
@given(
    env=st.sampled_from(
        ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_ENDPOINT"]
    ),
    text=ENV_TEXT,
)
def test_standard_variables_are_accepted_or_rejected_by_name(env: str, text: str) -> None:
    try:
        config.load(environ={env: text})
    except ConfigurationError as error:
        assert error.setting == env
        _check_rejection(error, env, text)


# Through instrument() itself: one setting at a time, with a free port and no network names to
# resolve or servers to reach (a Pushgateway, a Redis for the leases); an accepted value must
# leave a process whose jobs run.
_INSTRUMENT_FUZZED = [
    n
    for n in NAMES
    if n
    not in (
        "prometheus_port",
        "prometheus_addr",
        "multiprocess_dir",
        "pushgateway_url",
        "lease_url",
    )
]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(name=st.sampled_from(_INSTRUMENT_FUZZED), value=ANY_VALUE)
def test_instrument_accepts_and_runs_or_rejects_before_starting(
    metric_reader: Any, name: str, value: object
) -> None:
    # metric_reader: the suite's SDK providers are set first, so that instrument() uses them
    # rather than installing providers of its own for the rest of the session.
    if name == "watchdog_interval" and isinstance(value, (int, float)) and 0 < value < 0.01:
        value = 0.01  # accepted, but a tick every picosecond only burns this test's CPU
    options: dict[str, Any] = {"prometheus_port": 0, name: value}
    try:
        otel_jobs.instrument(**options)
    except ConfigurationError as error:
        assert not otel_jobs.is_instrumented()
        assert error.setting.startswith(("prometheus_", name))
        return
    try:

        @otel_jobs.job(name="fuzz.job")
        def job(x: int) -> int:
            otel_jobs.heartbeat(progress=0.5)
            return x + 1

        assert job(1) == 2
    finally:
        otel_jobs.uninstrument()


def test_a_tls_file_that_cannot_be_loaded_is_rejected_at_instrument(metric_reader: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bogus = os.path.join(tmp, "cert.pem")
        with open(bogus, "w") as f:
            f.write("not a certificate")
        for certfile in (bogus, os.path.join(tmp, "missing.pem")):
            with pytest.raises(ConfigurationError) as raised:
                otel_jobs.instrument(
                    prometheus_port=0, prometheus_certfile=certfile, prometheus_keyfile=certfile
                )
            assert raised.value.setting == "prometheus_certfile"
            assert certfile in str(raised.value)
            assert not otel_jobs.is_instrumented()


class _Unserialisable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __reduce__(self) -> Any:
        raise RuntimeError("no pickle")


class _BadNumber(float):
    def __ge__(self, other: object) -> bool:
        raise ArithmeticError("cannot compare")

    __le__ = __ge__


@pytest.mark.parametrize(
    "progress",
    [-0.1, 1.5, math.nan, math.inf, "50%", [0.5], True, object(), 10**400, _BadNumber(0.5)],
)
@pytest.mark.internal_errors("heartbeat")
def test_heartbeat_with_bad_values_never_raises_in_the_job(
    instrumented: Callable[..., Any], caplog: pytest.LogCaptureFixture, progress: object
) -> None:
    instrumented(watchdog_interval=0.05)
    caplog.set_level(logging.WARNING, logger="otel_jobs")

    @otel_jobs.job(name="bad.heartbeat")
    def job() -> str:
        for _ in range(3):
            otel_jobs.heartbeat(progress=progress, obj=_Unserialisable(), **{"k": object()})
            otel_jobs.heartbeat(**{f"key{i}": i for i in range(100)})  # more keys than kept
            run = otel_jobs.current_run()
            assert run is not None
            run.heartbeat(progress=progress, obj=_Unserialisable())
        return "result"

    assert job() == "result"
    messages = [r.getMessage() for r in caplog.records]
    # Each kind of bad value is logged at most once, however many heartbeats carried it.
    assert len(messages) == len(set(messages)), messages


@settings(max_examples=200, deadline=None)
@given(
    jobs=st.one_of(
        ANY_VALUE,
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.integers()),
            st.one_of(
                ANY_VALUE,
                st.dictionaries(
                    st.one_of(
                        st.sampled_from(["max_duration", "heartbeat_timeout", "on_stall"]),
                        st.text(max_size=5),
                        st.integers(),
                    ),
                    ANY_VALUE,
                    max_size=3,
                ),
            ),
            max_size=3,
        ),
    )
)
@example(jobs={"x": {1: 2, "a": 3}})  # unknown keys of mixed types
@example(jobs={"x": {"max_duration": 10**400}})
def test_per_job_settings_are_accepted_or_rejected_by_name(jobs: object) -> None:
    try:
        parsed = config.load(environ={}, jobs=jobs)
    except ConfigurationError as error:
        assert error.setting.startswith("jobs"), error.setting
        return
    for name, job in parsed.jobs.items():
        assert isinstance(name, str)
        assert job.max_duration is None or job.max_duration > 0
        assert job.heartbeat_timeout is None or job.heartbeat_timeout > 0
        assert job.on_stall in (None, *config.STALL_POLICIES)


_STANDARD_ENV_CHECK = """
import json, os, sys
import otel_jobs
from otel_jobs import ConfigurationError

results = []
for assignment in json.loads(sys.argv[1]):
    saved = dict(os.environ)
    os.environ.update(assignment)
    try:
        otel_jobs.instrument(prometheus=False, watchdog=False)
    except ConfigurationError as error:
        results.append(["ConfigurationError", error.setting, str(error)])
    except Exception as error:
        results.append([type(error).__name__, str(error), ""])
    else:
        results.append(["accepted", "", ""])
        otel_jobs.uninstrument()
    os.environ.clear()
    os.environ.update(saved)
print(json.dumps(results))
"""


def test_bad_standard_opentelemetry_variables_fail_at_instrument_with_their_names() -> None:
    import json
    import subprocess
    import sys

    # Each is rejected before any provider is set up, so one process can try them all.
    cases = [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://["}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://[", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:99999"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "10"}, "OTEL_BSP_MAX_QUEUE_SIZE"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "-1"}, "OTEL_BSP_MAX_QUEUE_SIZE"),
        # The SDK's error names every variable set: a password in a URL is not shown.
        (
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://otel:pw-s3cret@127.0.0.1:4318/v1/traces",
                "OTEL_BSP_MAX_QUEUE_SIZE": "-1",
            },
            "OTEL_BSP_MAX_QUEUE_SIZE",
        ),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:4318"  # overridden by each case
    out = subprocess.run(
        [sys.executable, "-c", _STANDARD_ENV_CHECK, json.dumps([c for c, _ in cases])],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    for (case, variable), (kind, setting, message) in zip(cases, results, strict=True):
        assert kind == "ConfigurationError", (case, kind, setting)
        assert variable in setting, (case, setting)
        assert "s3cret" not in message, message

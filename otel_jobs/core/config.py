"""One typed settings object for otel-jobs, built once at ``instrument()``.

Every option can be given as a keyword argument to ``otel_jobs.instrument()`` or as an
``OTEL_JOBS_*`` environment variable; the keyword argument wins. Values are validated here,
once, and a bad value raises :class:`ConfigurationError` naming the setting, the value and
what is accepted, so that nothing fails later inside a job.

The table of options (name, environment variable, default) is :data:`OPTIONS`; the table of
``docs/configuration.md`` is written from it and a test keeps the two in step. Each value is
read by a parser of :mod:`otel_jobs.core.parsers`, which the monitor's settings share.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .. import support
from . import parsers
from .parsers import ConfigurationError

STALL_POLICIES = ("observe", "cancel", "exit")
TIMEOUT_POLICIES = ("warn", "enforce", "raise", "off")
#: When the endpoint, the watchdog and the pusher start (Agent.start_serving).
START_MODES = ("lazy", "eager")
FRAMEWORKS = tuple(lib.name for lib in support.of_kind(support.FRAMEWORK))
OUTBOUND_LIBRARIES = tuple(lib.name for lib in support.of_kind(support.OUTBOUND))
OVERFLOW_VALUE = "__overflow__"
"""The label value that replaces any value past a label's cardinality cap."""


# How a refused URL is shown (core/parsers.py); tests/reliability/test_bad_input.py reads it here.
_url_shown = parsers.url_shown


@dataclass(frozen=True)
class JobSettings:
    """Per-job overrides (``instrument(jobs={"name": {...}})`` or ``@job(...)``)."""

    max_duration: float | None = None
    heartbeat_timeout: float | None = None
    on_stall: str | None = None
    expected_every: float | None = None


@dataclass(frozen=True)
class Settings:
    """The settings in force; see the table of ``docs/configuration.md`` for each option."""

    prometheus: bool = True
    prometheus_port: int = 9464
    prometheus_addr: str = "127.0.0.1"
    prometheus_certfile: str | None = None
    prometheus_keyfile: str | None = None
    prometheus_basic_auth: str | None = None
    start: str = "lazy"
    heartbeat_timeout: float = 600.0
    max_duration: float = 3600.0
    on_stall: str = "observe"
    missing_timeout: str = "warn"
    default_timeout: float = 30.0
    watchdog: bool = True
    watchdog_interval: float = 1.0
    loop_blocked_timeout: float = 5.0
    frameworks: tuple[str, ...] | None = None
    outbound: tuple[str, ...] | None = None
    max_job_names: int = 1000
    max_queues: int = 100
    max_hosts: int = 200
    max_call_sites: int = 500
    # The histograms' buckets (upper bounds, seconds): telemetry.DURATION_BUCKETS and
    # QUEUE_WAIT_BUCKETS, written out here because telemetry imports this module.
    duration_buckets: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 28800.0)
    queue_wait_buckets: tuple[float, ...] = (1.0, 30.0, 300.0, 1800.0)
    capture_args: bool = False
    multiprocess_dir: str | None = None
    pushgateway_url: str | None = None
    pushgateway_timeout: float = 2.0
    lease: bool = True
    lease_url: str | None = None
    lease_ttl: float = 30.0
    jobs: Mapping[str, JobSettings] = field(default_factory=dict)
    # Standard OpenTelemetry variables, read here so that a bad value fails at instrument().
    sdk_disabled: bool = False
    otlp_traces_endpoint: str | None = None
    otlp_metrics_endpoint: str | None = None
    otlp_protocol: str = "http/protobuf"

    def __repr__(self) -> str:
        # Settings end up in logs and tracebacks: the password of the endpoint's basic auth
        # (and of an OTLP URL's user:password@) is shown as ***, the user name is kept.
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "prometheus_basic_auth" and value is not None:
                value = value.partition(":")[0] + ":***"
            elif f.name.startswith(("otlp_", "pushgateway_url", "lease_url")) and isinstance(
                value, str
            ):
                value = parsers.masked_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    def for_job(self, name: str) -> JobSettings:
        return self.jobs.get(name) or _NO_JOB_SETTINGS


_NO_JOB_SETTINGS = JobSettings()


@dataclass(frozen=True)
class Option:
    """One setting: its keyword, its environment variable, how it is parsed, what it means."""

    name: str
    env: str
    parse: Callable[[str, object], Any]
    help: str


OPTIONS: tuple[Option, ...] = (
    Option(
        "prometheus",
        "OTEL_JOBS_PROMETHEUS_ENABLED",
        parsers.boolean,
        "serve the Prometheus `/metrics` endpoint",
    ),
    Option(
        "prometheus_port",
        "OTEL_JOBS_PROMETHEUS_PORT",
        parsers.port,
        "port of the `/metrics` endpoint (0: any free port)",
    ),
    Option(
        "prometheus_addr",
        "OTEL_JOBS_PROMETHEUS_ADDR",
        parsers.address,
        "address the endpoint binds; loopback by default so that nothing is exposed unless you choose to",
    ),
    Option(
        "prometheus_certfile",
        "OTEL_JOBS_PROMETHEUS_CERTFILE",
        parsers.path,
        "TLS certificate: serve `/metrics` over HTTPS",
    ),
    Option(
        "prometheus_keyfile",
        "OTEL_JOBS_PROMETHEUS_KEYFILE",
        parsers.path,
        "TLS private key for the certificate",
    ),
    Option(
        "prometheus_basic_auth",
        "OTEL_JOBS_PROMETHEUS_BASIC_AUTH",
        parsers.basic_auth,
        "`user:password` required by the endpoint (HTTP basic auth)",
    ),
    Option(
        "start",
        "OTEL_JOBS_START",
        parsers.choice(START_MODES),
        "when `/metrics`, the watchdog and the Pushgateway pusher start: `lazy` when the process becomes a worker (its framework's worker start) or runs its first job, so that a process that only publishes opens no port and starts no thread; `eager` at `instrument()`",
    ),
    Option(
        "heartbeat_timeout",
        "OTEL_JOBS_HEARTBEAT_TIMEOUT",
        parsers.seconds,
        "seconds without a heartbeat after which a run is stalled",
    ),
    Option(
        "max_duration",
        "OTEL_JOBS_MAX_DURATION",
        parsers.seconds,
        "seconds after which a run has overrun",
    ),
    Option(
        "on_stall",
        "OTEL_JOBS_ON_STALL",
        parsers.choice(STALL_POLICIES),
        "what the watchdog does to a stuck run: observe, cancel or exit",
    ),
    Option(
        "missing_timeout",
        "OTEL_JOBS_MISSING_TIMEOUT",
        parsers.choice(TIMEOUT_POLICIES),
        "outbound calls without a timeout: warn, enforce, raise or off",
    ),
    Option(
        "default_timeout",
        "OTEL_JOBS_DEFAULT_TIMEOUT",
        lambda s, v: parsers.seconds(s, v, allow_inf=False),
        "timeout (seconds) that `enforce` applies to the missing parts of a call",
    ),
    Option(
        "watchdog",
        "OTEL_JOBS_WATCHDOG_ENABLED",
        parsers.boolean,
        "run the stuck-run watchdog thread",
    ),
    Option(
        "watchdog_interval",
        "OTEL_JOBS_WATCHDOG_INTERVAL",
        lambda s, v: parsers.seconds(s, v, allow_inf=False),
        "seconds between two watchdog ticks",
    ),
    Option(
        "loop_blocked_timeout",
        "OTEL_JOBS_LOOP_BLOCKED_TIMEOUT",
        parsers.seconds,
        "seconds an asyncio event loop running runs may go without running anything before the watchdog gives a `loop_blocked` verdict (`inf`: never)",
    ),
    Option(
        "frameworks",
        "OTEL_JOBS_FRAMEWORKS",
        parsers.names(FRAMEWORKS),
        "job frameworks to hook (comma-separated); default: every one installed",
    ),
    Option(
        "outbound",
        "OTEL_JOBS_OUTBOUND",
        parsers.names(OUTBOUND_LIBRARIES),
        "outbound libraries to check for timeouts (comma-separated); default: every one installed",
    ),
    Option(
        "max_job_names",
        "OTEL_JOBS_MAX_JOB_NAMES",
        parsers.positive_int,
        "distinct `job_name` label values kept before overflow",
    ),
    Option(
        "max_queues",
        "OTEL_JOBS_MAX_QUEUES",
        parsers.positive_int,
        "distinct `queue` label values kept before overflow",
    ),
    Option(
        "max_hosts",
        "OTEL_JOBS_MAX_HOSTS",
        parsers.positive_int,
        "distinct `host` label values kept before overflow",
    ),
    Option(
        "max_call_sites",
        "OTEL_JOBS_MAX_CALL_SITES",
        parsers.positive_int,
        "distinct `call_site` label values kept before overflow",
    ),
    Option(
        "duration_buckets",
        "OTEL_JOBS_DURATION_BUCKETS",
        parsers.buckets,
        "upper bounds (seconds) of the run duration histogram's buckets; each bucket costs one series per job, queue and outcome",
    ),
    Option(
        "queue_wait_buckets",
        "OTEL_JOBS_QUEUE_WAIT_BUCKETS",
        parsers.buckets,
        "upper bounds (seconds) of the queue wait histogram's buckets; each bucket costs one series per job and queue",
    ),
    Option(
        "capture_args",
        "OTEL_JOBS_CAPTURE_ARGS",
        parsers.boolean,
        "record job arguments on spans (off: arguments may hold personal data or secrets)",
    ),
    Option(
        "multiprocess_dir",
        "OTEL_JOBS_MULTIPROCESS_DIR",
        parsers.path,
        "directory where forked children leave their metrics for the endpoint; default: a private temporary directory",
    ),
    Option(
        "pushgateway_url",
        "OTEL_JOBS_PUSHGATEWAY_URL",
        parsers.endpoint,
        "Prometheus Pushgateway that each job's metrics are pushed to at the end of every run and at exit (cron scripts, short-lived processes)",
    ),
    Option(
        "pushgateway_timeout",
        "OTEL_JOBS_PUSHGATEWAY_TIMEOUT",
        lambda s, v: parsers.seconds(s, v, allow_inf=False),
        "seconds a push may take; also the most a process waits at exit for its last push",
    ),
    Option(
        "lease",
        "OTEL_JOBS_LEASE_ENABLED",
        parsers.boolean,
        "keep a lease in Redis listing this process's runs in flight, renewed by the watchdog, so that `otel-jobs monitor` finds the runs lost with their worker (Redis brokers, or `lease_url`)",
    ),
    Option(
        "lease_url",
        "OTEL_JOBS_LEASE_URL",
        parsers.redis_url,
        "Redis for the leases where the broker is not Redis (RabbitMQ); default: the broker's own Redis",
    ),
    Option(
        "lease_ttl",
        "OTEL_JOBS_LEASE_TTL",
        lambda s, v: parsers.seconds(s, v, allow_inf=False),
        "seconds a lease lasts without renewal: a dead worker's runs are found lost within this plus one monitor poll; at least twice the watchdog interval",
    ),
)

_STANDARD_ENV = {
    "sdk_disabled": ("OTEL_SDK_DISABLED", parsers.boolean),
    "otlp_protocol": ("OTEL_EXPORTER_OTLP_PROTOCOL", parsers.choice(("grpc", "http/protobuf"))),
}

_OPTIONS_BY_NAME = {o.name: o for o in OPTIONS}
_JOB_KEYS = {"max_duration", "heartbeat_timeout", "on_stall", "expected_every"}
# Per-job keys that are no global option: how often the job must succeed ("inf": not set).
_JOB_ONLY: dict[str, Callable[[str, object], Any]] = {"expected_every": parsers.seconds}
_JOB_KEYS_TEXT = "max_duration, heartbeat_timeout, on_stall, expected_every"


def parse_job_settings(setting: str, value: object) -> JobSettings:
    """Validate one job's overrides, given as a mapping or a :class:`JobSettings`."""
    if isinstance(value, JobSettings):
        value = {k: getattr(value, k) for k in _JOB_KEYS}
    if not isinstance(value, Mapping):
        raise ConfigurationError(setting, value, f"a mapping of {_JOB_KEYS_TEXT}")
    unknown = set(value) - _JOB_KEYS
    if unknown:
        first = sorted(unknown, key=str)[0]  # by str: keys may be of mixed types
        raise ConfigurationError(f"{setting}.{first}", value[first], f"keys {_JOB_KEYS_TEXT}")
    parsed: dict[str, Any] = {}
    for key in _JOB_KEYS:
        raw = value.get(key)
        if raw is None:
            continue
        parse = _JOB_ONLY.get(key) or _OPTIONS_BY_NAME[key].parse
        parsed[key] = parse(f"{setting}.{key}", raw)
    return JobSettings(**parsed)


def load(environ: Mapping[str, str] | None = None, **kwargs: Any) -> Settings:
    """Build the settings from keyword arguments over environment variables, validating each."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = env.get(option.env)
        if raw is not None and raw.strip() != "":
            values[option.name] = option.parse(option.env, raw)
    for name, (var, parse) in _STANDARD_ENV.items():
        raw = env.get(var)
        if raw is not None and raw.strip() != "":
            values[name] = parse(var, raw)
    traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    metrics = env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if traces:
        values["otlp_traces_endpoint"] = parsers.endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", traces)
    if metrics:
        values["otlp_metrics_endpoint"] = parsers.endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", metrics)

    for name, raw in kwargs.items():
        if name == "jobs":
            if raw is None:
                continue
            if not isinstance(raw, Mapping):
                raise ConfigurationError(
                    "jobs",
                    raw,
                    'a mapping of job name to settings, e.g. {"billing.sync": {"max_duration": 60}}',
                )
            values["jobs"] = {str(k): parse_job_settings(f"jobs[{k!r}]", v) for k, v in raw.items()}
            continue
        found = _OPTIONS_BY_NAME.get(name)
        if found is None:
            accepted = ", ".join(sorted([*_OPTIONS_BY_NAME, "jobs"]))
            raise ConfigurationError(name, raw, f"keyword arguments {accepted}")
        option = found
        if raw is None:
            continue
        values[name] = option.parse(name, raw)
    if ("prometheus_certfile" in values) != ("prometheus_keyfile" in values):
        raise ConfigurationError(
            "prometheus_keyfile",
            values.get("prometheus_keyfile"),
            "both prometheus_certfile and prometheus_keyfile, or neither",
        )
    if "prometheus_certfile" in values:
        from_env = "prometheus_certfile" not in kwargs or kwargs["prometheus_certfile"] is None
        parsers.check_tls(
            "OTEL_JOBS_PROMETHEUS_CERTFILE" if from_env else "prometheus_certfile",
            values["prometheus_certfile"],
            values["prometheus_keyfile"],
        )
    interval = values.get("watchdog_interval", Settings.watchdog_interval)
    if "lease_ttl" not in values:  # a slow watchdog renews less often: a longer lease
        values["lease_ttl"] = max(Settings.lease_ttl, 3 * interval)
    lease_ttl = values["lease_ttl"]
    if lease_ttl < 2 * interval:
        from_env = "lease_ttl" not in kwargs or kwargs["lease_ttl"] is None
        raise ConfigurationError(
            "OTEL_JOBS_LEASE_TTL" if from_env else "lease_ttl",
            lease_ttl,
            f"at least twice the watchdog interval ({2 * interval:g} s): the watchdog renews it",
        )
    return Settings(**values)


def markdown_table() -> str:
    """The table of ``docs/configuration.md``, generated from :data:`OPTIONS` (a test keeps them equal)."""
    defaults = Settings()
    rows = ["| keyword argument | environment variable | default | meaning |", "|---|---|---|---|"]
    for option in OPTIONS:
        value = getattr(defaults, option.name)
        if value is None:
            shown = (
                "(none)" if option.name not in ("frameworks", "outbound") else "every one installed"
            )
        elif isinstance(value, bool):
            shown = "true" if value else "false"
        elif isinstance(value, float) and value.is_integer():
            shown = str(int(value))
        elif isinstance(value, tuple) and all(isinstance(v, float) for v in value):
            shown = ",".join(str(int(v)) if v.is_integer() else str(v) for v in value)
        else:
            shown = str(value)
        rows.append(f"| `{option.name}` | `{option.env}` | `{shown}` | {option.help} |")
    return "\n".join(rows)

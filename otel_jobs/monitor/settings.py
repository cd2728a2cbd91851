"""The monitor's one settings object: command-line flags over ``OTEL_JOBS_MONITOR_*`` variables.

Every option is a row of :data:`OPTIONS` (its flag, its variable, its parser, its meaning); the
docs' table of them is :func:`markdown_table`. :func:`load` validates each value once, with the
parsers of the worker's settings, and a bad one raises :class:`ConfigurationError` naming the
flag or the variable it came from, the value and what is accepted. The endpoint's address, TLS
files and basic auth fall back to the worker's ``OTEL_JOBS_PROMETHEUS_*`` variables, so a
host that sets those for its workers serves the monitor the same way (the port does not: the
monitor's is 9465, next to a worker's 9464).

:func:`load_object` imports what ``--celery-app``, ``--dramatiq-broker`` and ``--huey`` name.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core import parsers
from ..core.parsers import ConfigurationError

FRAMEWORKS = ("celery", "rq", "dramatiq", "arq", "huey")
_BROKERS = ("celery_app", "rq_redis_url", "dramatiq_broker", "arq_redis_url", "huey")
LOG_LEVELS = ("debug", "info", "warning", "error")


class NoBroker(ConfigurationError):
    """No broker was given: the monitor would watch nothing."""

    def __init__(self) -> None:
        flags = ", ".join("--" + n.replace("_", "-") for n in _BROKERS)
        ValueError.__init__(
            self, f"otel-jobs: no broker to watch; give at least one of {flags} (or its variable)"
        )
        self.setting, self.value, self.accepted = "broker", None, flags


@dataclass(frozen=True)
class MonitorSettings:
    """The settings of one ``otel-jobs monitor`` process (see :data:`OPTIONS`)."""

    celery_app: str | None = None
    rq_redis_url: str | None = None
    dramatiq_broker: str | None = None
    arq_redis_url: str | None = None
    huey: str | None = None
    queues: tuple[str, ...] = ()
    interval: float = 15.0
    poll_timeout: float = 5.0
    max_queues: int = 1000
    port: int = 9465
    addr: str = "127.0.0.1"
    certfile: str | None = None
    keyfile: str | None = None
    basic_auth: str | None = None
    log_level: str = "info"
    lease_url: str | None = None
    requeue_lost: bool = False
    max_lost: int = 2
    #: Where each value given came from (``--port`` or ``OTEL_JOBS_MONITOR_PORT``), for errors.
    sources: Mapping[str, str] = field(default_factory=dict)

    def source(self, name: str) -> str:
        return self.sources.get(name, "--" + name.replace("_", "-"))

    def queues_for(self, framework: str) -> tuple[str, ...]:
        """The ``--queues`` entries for ``framework``: plain names, and ``framework=name`` ones."""
        chosen = []
        for entry in self.queues:
            prefix, sep, name = entry.partition("=")
            if not sep:
                chosen.append(entry)
            elif prefix == framework:
                chosen.append(name)
        return tuple(chosen)


def _reference(setting: str, value: object) -> str:
    text = str(value).strip()
    if not text or any(c.isspace() for c in text) or text.startswith((":", ".")):
        raise ConfigurationError(setting, value, "module:attribute, e.g. proj.celery:app")
    return text


def _queues(setting: str, value: object) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    names = tuple(str(i).strip() for i in items if str(i).strip())
    accepted = "queue names, comma-separated; framework=name for one framework's only"
    if not names:
        raise ConfigurationError(setting, value, accepted)
    for name in names:
        prefix, sep, rest = name.partition("=")
        if sep and (prefix not in FRAMEWORKS or not rest):
            raise ConfigurationError(setting, value, accepted + f" ({', '.join(FRAMEWORKS)})")
    return names


def _level(setting: str, value: object) -> str:
    text = str(value).strip().lower()
    if text not in LOG_LEVELS:
        raise ConfigurationError(setting, value, "one of " + ", ".join(LOG_LEVELS))
    return text


@dataclass(frozen=True)
class MonitorOption:
    """One setting: its flag, its variable (and the worker's it falls back to), parser, meaning."""

    name: str
    parse: Callable[[str, object], Any]
    help: str
    metavar: str
    fallback_env: str | None = None
    #: A flag without a value (``--requeue-lost``); its variable takes true or false.
    switch: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "OTEL_JOBS_MONITOR_" + self.name.upper()


def _finite_seconds(setting: str, value: object) -> float:
    return parsers.seconds(setting, value, allow_inf=False)


OPTIONS: tuple[MonitorOption, ...] = (
    MonitorOption(
        "celery_app", _reference, "the Celery app whose broker and queues to watch", "MODULE:APP"
    ),
    MonitorOption("rq_redis_url", parsers.redis_url, "the Redis of the RQ queues to watch", "URL"),
    MonitorOption(
        "dramatiq_broker",
        _reference,
        "the Dramatiq broker to watch (a module alone: the global broker it sets)",
        "MODULE:BROKER",
    ),
    MonitorOption(
        "arq_redis_url", parsers.redis_url, "the Redis of the arq queues to watch", "URL"
    ),
    MonitorOption("huey", _reference, "the Huey instance (Redis storage) to watch", "MODULE:HUEY"),
    MonitorOption(
        "queues",
        _queues,
        "queues to watch instead of the ones discovered (comma-separated; framework=name for one "
        "framework's only)",
        "NAMES",
    ),
    MonitorOption(
        "interval", _finite_seconds, "seconds between two polls of the brokers", "SECONDS"
    ),
    MonitorOption(
        "poll_timeout",
        _finite_seconds,
        "seconds a poll of one broker may take (connect and reads); at most the interval "
        "(default: 5, or the interval if shorter)",
        "SECONDS",
    ),
    MonitorOption(
        "max_queues",
        parsers.positive_int,
        "queues watched per broker at most (the first by name)",
        "N",
    ),
    MonitorOption(
        "port", parsers.port, "port of the monitor's `/metrics` (0: any free port)", "PORT"
    ),
    MonitorOption(
        "addr",
        parsers.address,
        "address `/metrics` binds (loopback by default)",
        "ADDR",
        "OTEL_JOBS_PROMETHEUS_ADDR",
    ),
    MonitorOption(
        "certfile",
        parsers.path,
        "TLS certificate: serve `/metrics` over HTTPS",
        "FILE",
        "OTEL_JOBS_PROMETHEUS_CERTFILE",
    ),
    MonitorOption(
        "keyfile",
        parsers.path,
        "TLS private key for the certificate",
        "FILE",
        "OTEL_JOBS_PROMETHEUS_KEYFILE",
    ),
    MonitorOption(
        "basic_auth",
        parsers.basic_auth,
        "`user:password` required by `/metrics` (HTTP basic auth)",
        "USER:PASSWORD",
        "OTEL_JOBS_PROMETHEUS_BASIC_AUTH",
    ),
    MonitorOption("log_level", _level, "level of the monitor's log on stderr", "LEVEL"),
    MonitorOption(
        "lease_url",
        parsers.redis_url,
        "the Redis where the workers keep their leases, for lost runs where the broker is not "
        "a Redis (default: each Redis broker)",
        "URL",
        "OTEL_JOBS_LEASE_URL",
    ),
    MonitorOption(
        "requeue_lost",
        parsers.boolean,
        "put a lost run back on its queue (same id, arguments and attempt count), unless its "
        "broker redelivers it",
        "",
        switch=True,
    ),
    MonitorOption(
        "max_lost",
        parsers.non_negative_int,
        "with --requeue-lost, how many times one job is requeued at most; lost once more, it "
        "goes to its framework's failed jobs (Dramatiq: its next delivery is dead-lettered "
        "by the worker instead of run)",
        "N",
    ),
)


def load(
    given: Mapping[str, object | None] | None = None, environ: Mapping[str, str] | None = None
) -> MonitorSettings:
    """Settings from ``given`` (flag values by option name; ``None``: not given) over the
    environment; every value validated, the first bad one raised as :class:`ConfigurationError`.
    """
    given = given or {}
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        raw = given.get(option.name)
        if raw is not None:
            values[option.name] = option.parse(option.flag, raw)
            sources[option.name] = option.flag
            continue
        for var in (option.env, option.fallback_env):
            text = env.get(var) if var else None
            if text is not None and text.strip():
                values[option.name] = option.parse(var or "", text)
                sources[option.name] = var or ""
                break
    if "poll_timeout" not in values:  # by default 5 s, or the interval if shorter
        values["poll_timeout"] = min(MonitorSettings.poll_timeout, values.get("interval", 15.0))
    settings = MonitorSettings(**values, sources=sources)
    if not any(getattr(settings, name) for name in _BROKERS):
        raise NoBroker()
    if settings.poll_timeout > settings.interval:
        raise ConfigurationError(
            settings.source("poll_timeout"),
            settings.poll_timeout,
            f"at most the interval ({settings.interval:g} s)",
        )
    if (settings.certfile is None) != (settings.keyfile is None):
        missing = "keyfile" if settings.keyfile is None else "certfile"
        raise ConfigurationError(
            settings.source(missing), None, "both --certfile and --keyfile, or neither"
        )
    if settings.certfile and settings.keyfile:
        parsers.check_tls(settings.source("certfile"), settings.certfile, settings.keyfile)
    return settings


def load_object(setting: str, reference: str, what: str) -> Any:
    """Import ``module:attribute`` (or ``module.attribute``) from the working directory."""
    module_name, sep, attribute = reference.partition(":")
    if not sep and "." in reference:
        module_name, _, attribute = reference.rpartition(".")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `celery -A`, `dramatiq` and `huey_consumer` do
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if sep or exc.name != module_name or not attribute:
                raise
            # "package.module" given for a module, not "module.attribute"
            return importlib.import_module(reference)
        return getattr(module, attribute) if attribute else module
    except Exception as exc:
        raise ConfigurationError(
            setting, reference, f"module:attribute of {what}, importable here ({_why(exc)})"
        ) from None


def _why(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def markdown_table() -> str:
    """The docs' table of the monitor's options, generated from :data:`OPTIONS`."""
    defaults = MonitorSettings()
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for option in OPTIONS:
        value = getattr(defaults, option.name)
        if value in (None, ()):
            shown = "(none)"
        elif isinstance(value, bool):
            shown = f"`{str(value).lower()}`"
        elif isinstance(value, float) and value.is_integer():
            shown = f"`{int(value)}`"
        else:
            shown = f"`{value}`"
        env = f"`{option.env}`"
        if option.fallback_env:
            env += f", else `{option.fallback_env}`"
        rows.append(f"| `{option.flag}` | {env} | {shown} | {option.help} |")
    return "\n".join(rows)

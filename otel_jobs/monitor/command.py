"""Watch the queues on the brokers: backlog by state and the oldest waiting job (``otel-jobs monitor``).

    otel-jobs monitor --celery-app proj.celery:app
    otel-jobs monitor --rq-redis-url redis://127.0.0.1:6379/0 --queues default,high
    OTEL_JOBS_MONITOR_ARQ_REDIS_URL=redis://10.0.0.5:6379/0 otel-jobs monitor --port 9465

What it does, in order: validates the settings (:mod:`.settings`), imports the apps and builds
one collector per framework, reaches each broker once, starts the ``/metrics`` endpoint
(:func:`otel_jobs.core.exposition.serve`), then polls until ``SIGTERM``/``SIGINT``. Anything
wrong up to the endpoint is one line on stderr naming the flag (or variable) and the value,
and exit code 2; a broker lost later is reported on ``/metrics`` and in the log while the
monitor goes on (:mod:`.process`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, ModuleType
from typing import Any

from ..core.config import ConfigurationError
from .base import BrokerUnavailable, Collector
from .lost import with_lost_runs
from .settings import OPTIONS, MonitorSettings, load, load_object

logger = logging.getLogger("otel_jobs.monitor")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :data:`~otel_jobs.monitor.settings.OPTIONS` row (strings, parsed by ``load``)."""
    for option in OPTIONS:
        extra = f"; else ${option.fallback_env}" if option.fallback_env else ""
        kind: dict[str, Any] = (
            {"action": "store_const", "const": "true"}
            if option.switch
            else {"metavar": option.metavar}
        )
        parser.add_argument(
            option.flag,
            dest=option.name,
            default=None,
            help=f"{option.help} (${option.env}{extra})",
            **kind,
        )


def build_collectors(settings: MonitorSettings) -> list[Collector]:
    """One collector per framework configured; ``ConfigurationError`` naming the flag if not.

    Each comes with the lost-run detector of its framework (:mod:`.lost`) where it can read the
    workers' leases."""
    common: dict[str, Any] = {"timeout": settings.poll_timeout, "max_queues": settings.max_queues}
    collectors: list[Collector] = []
    if settings.celery_app:
        collectors.append(_celery(settings, common))
    if settings.rq_redis_url:
        from .rq import RQCollector

        collectors.append(_by_redis_url(RQCollector, "rq", settings, common))
    if settings.dramatiq_broker:
        collectors.append(_dramatiq(settings, common))
    if settings.arq_redis_url:
        from .arq import ArqCollector

        collectors.append(_by_redis_url(ArqCollector, "arq", settings, common))
    if settings.huey:
        collectors.append(_huey(settings))
    return collectors


def _by_redis_url(
    kind: Callable[..., Collector], framework: str, settings: Any, common: dict[str, Any]
) -> Collector:
    """The collector of a framework given by ``--<framework>-redis-url``, with its lost runs."""
    setting = f"{framework}_redis_url"
    collector = kind(
        getattr(settings, setting),
        queues=settings.queues_for(framework),
        source=settings.source(setting),
        **common,
    )
    return with_lost_runs(collector, settings)


def _needs(setting: str, value: str, package: str, extra: str) -> ConfigurationError:
    return ConfigurationError(
        setting, value, f"{package} installed (pip install 'otel-jobs[{extra}]')"
    )


def _celery(settings: MonitorSettings, common: dict[str, Any]) -> Collector:
    setting, ref = settings.source("celery_app"), str(settings.celery_app)
    try:
        from celery.app.utils import find_app

        from .celery import collector_for_app
    except ImportError:
        raise _needs(setting, ref, "celery", "celery") from None
    load_object(setting, ref, "a Celery app")  # the import error in our words, if any
    try:
        app = find_app(ref)
    except Exception as exc:
        raise ConfigurationError(setting, ref, f"a Celery app ({type(exc).__name__})") from None
    if not hasattr(app, "connection_for_read"):
        raise ConfigurationError(setting, ref, f"a Celery app (found a {type(app).__name__})")
    queues = settings.queues_for("celery")
    return _built(
        settings, "celery_app", app, lambda: collector_for_app(app, queues=queues, **common)
    )


def _dramatiq(settings: MonitorSettings, common: dict[str, Any]) -> Collector:
    setting, ref = settings.source("dramatiq_broker"), str(settings.dramatiq_broker)
    try:
        import dramatiq

        from .dramatiq import collector_for_broker
    except ImportError:
        raise _needs(setting, ref, "dramatiq", "dramatiq") from None
    found = load_object(setting, ref, "a Dramatiq broker")
    if isinstance(found, dramatiq.Broker):
        broker = found
    elif isinstance(found, ModuleType) and dramatiq.broker.global_broker is not None:
        broker = dramatiq.get_broker()  # the module set the global broker, as `dramatiq` takes it
    else:
        raise ConfigurationError(
            setting,
            ref,
            f"module:broker, or a module that calls dramatiq.set_broker() (found {found!r:.60})",
        )
    queues = settings.queues_for("dramatiq")
    return _built(
        settings,
        "dramatiq_broker",
        broker,
        lambda: collector_for_broker(broker, queues=queues, **common),
    )


def _huey(settings: MonitorSettings) -> Collector:
    setting, ref = settings.source("huey"), str(settings.huey)
    try:
        from huey import Huey

        from .huey import HueyCollector
    except ImportError:
        raise _needs(setting, ref, "huey", "huey") from None
    found = load_object(setting, ref, "a Huey instance")
    if not isinstance(found, Huey):
        raise ConfigurationError(setting, ref, f"a Huey instance (found a {type(found).__name__})")
    return _built(
        settings, "huey", found, lambda: HueyCollector(found, timeout=settings.poll_timeout)
    )


def _built(
    settings: MonitorSettings, name: str, app: Any, build: Callable[[], Collector]
) -> Collector:
    """The collector ``build()`` makes for the app (or broker) that setting ``name`` gives, with
    its lost runs; its ``ValueError`` (an unsupported broker) as the setting's error."""
    setting, ref = settings.source(name), str(getattr(settings, name))
    try:
        collector = build()
    except ValueError as exc:
        raise ConfigurationError(setting, ref, str(exc)) from None
    collector.source = setting
    return with_lost_runs(collector, settings, app)


def _value_of(settings: MonitorSettings, collector: Collector) -> str:
    for name in ("celery_app", "rq_redis_url", "dramatiq_broker", "arq_redis_url", "huey"):
        if settings.source(name) == collector.source:
            return str(getattr(settings, name))
    return collector.broker


def _refuse(exc: ConfigurationError) -> int:
    print(f"otel-jobs monitor: {str(exc).removeprefix('otel-jobs: ')}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Run the monitor until SIGTERM or SIGINT; 2 on bad settings or a broker unreachable."""
    given = {option.name: getattr(args, option.name, None) for option in OPTIONS}
    try:
        settings = load(given)
    except ConfigurationError as exc:
        return _refuse(exc)
    # Our own log at the level asked; the brokers' clients only when they have trouble to tell
    # (pika logs every connection step at INFO, and each failure is in our own line anyway).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("otel_jobs").setLevel(settings.log_level.upper())
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    with _HeldLog() as held:  # until /metrics is served: on failure, the reason alone
        _tracing()  # the lost runs' spans, exported where OTEL_EXPORTER_OTLP_* says
        try:
            collectors = build_collectors(settings)
        except ConfigurationError as exc:
            return _refuse(exc)
        for collector in collectors:
            try:
                collector.check()
            except BrokerUnavailable as exc:
                print(
                    f"otel-jobs monitor: {collector.source}={_value_of(settings, collector)}: "
                    f"cannot reach the broker at {collector.broker} ({exc})",
                    file=sys.stderr,
                )
                for c in collectors:
                    c.close()
                return 2
        return serve_until_stopped(settings, collectors, held)


class _HeldLog(logging.Filter):
    """Holds what is logged while the monitor starts (notes such as lost runs needing
    ``--lease-url``), so that a start that fails prints one line, its reason; :meth:`release`
    logs the held records once the brokers have answered and ``/metrics`` is served."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.handlers = list(logging.getLogger().handlers)

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False

    def __enter__(self) -> _HeldLog:
        for handler in self.handlers:
            handler.addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for handler in self.handlers:
            handler.removeFilter(self)

    def release(self) -> None:
        self.__exit__()
        records, self.records = self.records, []
        for record in dict.fromkeys(records):  # each handler saw it: log it once
            logging.getLogger(record.name).handle(record)


def _tracing() -> None:
    """The OpenTelemetry providers of a worker (:mod:`otel_jobs.core.providers`), from the same
    variables; spans go nowhere unless an OTLP endpoint is set."""
    from ..core import config, providers

    try:
        providers.setup(config.load())
    except ConfigurationError as exc:  # a worker-only variable the monitor does not need
        logger.warning("otel-jobs monitor: lost-run spans are not exported (%s)", exc)


def serve_until_stopped(
    settings: MonitorSettings, collectors: list[Collector], held: _HeldLog | None = None
) -> int:
    from ..core.exposition import serve
    from .process import Monitor

    monitor = Monitor(collectors, interval=settings.interval, timeout=settings.poll_timeout)
    try:
        server = serve(
            monitor.registry,
            settings.addr,
            settings.port,
            certfile=settings.certfile,
            keyfile=settings.keyfile,
            basic_auth=settings.basic_auth,
        )
    except OSError as exc:
        print(
            f"otel-jobs monitor: {settings.source('port')}={settings.port}: cannot serve /metrics "
            f"on {settings.addr}:{settings.port} ({exc.strerror or exc}); choose a free port "
            "(0 picks any)",
            file=sys.stderr,
        )
        monitor.close()
        return 2
    if held is not None:
        held.release()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    for collector in collectors:
        queues = getattr(collector, "queues", None)
        logger.info(
            "otel-jobs monitor: watching %s%s",
            collector.label,
            f" (queues: {', '.join(queues)})" if queues else " (queues discovered at each poll)",
        )
    logger.info("otel-jobs monitor: serving %s; polling every %gs", server.url, settings.interval)
    try:
        monitor.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
        monitor.close()
        from ..core import providers

        providers.flush(2000)
    logger.info("otel-jobs monitor: stopped")
    return 0

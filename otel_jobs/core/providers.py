"""Where spans and OpenTelemetry metrics go.

* A TracerProvider / MeterProvider passed to ``instrument()`` is used as it is.
* Otherwise the global ones, if the application (or ``opentelemetry-instrument``) set them.
* Otherwise otel-jobs sets up SDK providers with the resource from ``OTEL_SERVICE_NAME`` /
  ``OTEL_RESOURCE_ATTRIBUTES`` and installs them globally (so other instrumentations share
  them). They export over OTLP only when an endpoint is configured
  (``OTEL_EXPORTER_OTLP_ENDPOINT`` or the per-signal variables, protocol from
  ``OTEL_EXPORTER_OTLP_PROTOCOL``); with none, nothing connects anywhere. Without an OTLP
  metrics endpoint and without an application MeterProvider, OpenTelemetry metrics are not
  recorded at all (Prometheus has them), which keeps the per-run cost down.
* ``OTEL_SDK_DISABLED=true``: no spans and no OpenTelemetry metrics; Prometheus still works.

Global providers can be set only once per process, so the providers otel-jobs creates stay for
the life of the process; ``uninstrument()`` flushes them, and a later ``instrument()`` reuses them.

A collector that is down, refuses connections or never answers does not slow jobs down: spans
wait in the batch processor's bounded queue (``OTEL_BSP_MAX_QUEUE_SIZE``, 2048; the oldest are
dropped when it is full) and are sent from its own thread. For the exporters otel-jobs creates,
the first failed export logs one WARNING on the ``otel_jobs`` logger (endpoint and reason) and
the exporters' own per-retry messages are held back (a failing signal is warned about at most
every five minutes); one INFO says when exporting works again. A gRPC exporter gets a fresh
channel after a failed export, so it does not wait out gRPC's reconnect backoff once the
collector is back.
Flushing (``uninstrument()``, process exit, the watchdog's ``exit`` policy) waits a bounded
time, so a hung collector never holds a worker's shutdown for the exporters' retries.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace

from . import errors
from .config import ConfigurationError, Settings
from .redaction import redact

_owned_tracer_provider: trace.TracerProvider | None = None
_owned_meter_provider: metrics.MeterProvider | None = None
_inherited_meter_providers: list[metrics.MeterProvider] = []


def _fork_aware_reader(exporter: Any) -> Any:
    """A periodic reader that stays silent in a forked child.

    The SDK's reader restarts its thread after fork and would export the parent's cumulative
    points again from the child; otel-jobs builds a fresh pipeline in the child instead.
    (The class is made here, not at import: the SDK's metrics package costs a process about
    40 ms to import, and only an OTLP metrics endpoint needs it.)
    """
    global _ForkAwareReader
    if _ForkAwareReader is None:
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        class ForkAwareReader(PeriodicExportingMetricReader):
            def _at_fork_reinit(self) -> None:
                pass

        _ForkAwareReader = ForkAwareReader
    return _ForkAwareReader(exporter)


_ForkAwareReader: Any = None


@dataclass
class Pipelines:
    tracer: trace.Tracer
    meter: metrics.Meter | None
    tracer_provider: trace.TracerProvider | None = None  # for instrumentations otel-jobs starts


def _is_unset_meter_provider(provider: metrics.MeterProvider) -> bool:
    return type(provider).__name__ in ("_ProxyMeterProvider", "NoOpMeterProvider")


logger = logging.getLogger("otel_jobs")

# Loggers of the OpenTelemetry exporters and batch processor whose failure messages repeat for
# every batch and retry while a collector is unreachable.
_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.metrics._internal.export",
)


class _ExportHealth(logging.Filter):
    """One WARNING when OTLP export starts failing, one INFO when it works again.

    Attached as a filter to the exporters' loggers: the WARNING and ERROR records logged
    during an export of a watched exporter are held back (the last one is kept as the reason)
    while :meth:`watch` reports the outcome of each export in one line of its own; so is the
    batch processor's "Queue full" while a span export is failing or in progress (the WARNING
    says the oldest spans are dropped). Any other record of these loggers passes.
    """

    #: A signal whose export keeps failing and succeeding is warned about at most this often.
    WARN_EVERY_SECONDS = 300.0

    def __init__(self) -> None:
        super().__init__()
        self.failing: set[str] = set()
        self.warned_at: dict[str, float] = {}
        # Each signal exports from its own thread, which is also where its exporter logs.
        self.local = threading.local()
        self.in_export: dict[str, int] = {}  # exports in progress, by signal
        self.installed = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        if getattr(self.local, "exporting", False):
            try:
                self.local.reason = record.getMessage()[:300]
            except Exception:
                self.local.reason = str(record.msg)[:300]
            return False
        # A full queue while spans cannot get out is what the WARNING already says.
        stuck = "spans" in self.failing or self.in_export.get("spans", 0) > 0
        return not (stuck and str(record.msg).startswith("Queue full"))

    def install(self) -> None:
        if not self.installed:
            self.installed = True
            for name in _EXPORT_LOGGERS:
                logging.getLogger(name).addFilter(self)

    def watch(
        self, exporter: Any, signal: str, endpoint: str | None, *, reconnect: bool = False
    ) -> Any:
        """Wrap ``exporter.export`` to log failures and recovery once each (see the class).

        ``reconnect``: after a failed export, give the (gRPC) exporter a fresh channel.
        """
        self.install()
        export: Callable[..., Any] = exporter.export
        health = self

        def watched_export(*args: Any, **kwargs: Any) -> Any:
            health.local.reason = ""
            health.local.exporting = True
            health.in_export[signal] = health.in_export.get(signal, 0) + 1
            try:
                result = export(*args, **kwargs)
            except Exception as exc:
                health.outcome(signal, endpoint, False, repr(exc))
                raise
            finally:
                health.local.exporting = False
                health.in_export[signal] -= 1
            ok = getattr(result, "name", "") == "SUCCESS"
            health.outcome(signal, endpoint, ok, health.local.reason)
            if not ok and reconnect:
                _new_channel(exporter)
            return result

        exporter.export = watched_export
        return exporter

    def outcome(self, signal: str, endpoint: str | None, ok: bool, reason: str) -> None:
        if ok:
            if signal in self.failing:
                self.failing.discard(signal)
                logger.info("otel-jobs: OTLP export of %s to %s works again", signal, endpoint)
        elif signal not in self.failing:
            self.failing.add(signal)
            now = time.monotonic()
            if now - self.warned_at.get(signal, -math.inf) < self.WARN_EVERY_SECONDS:
                return
            self.warned_at[signal] = now
            logger.warning(
                "otel-jobs: cannot export %s over OTLP to %s (%s). Jobs are not affected: %s. "
                "Logged once until an export succeeds.",
                signal,
                endpoint,
                reason or "export failed",
                _MEANWHILE.get(signal, "nothing waits"),
            )


def _new_channel(exporter: Any) -> None:
    """Replace a gRPC exporter's channel after a failed export.

    The SDK rebuilds the channel after UNAVAILABLE only. After a collector that accepted the
    connection and never answered (DEADLINE_EXCEEDED), the old channel stays in gRPC's
    reconnect backoff, up to two minutes, long after the collector is back.
    """
    initialize = getattr(exporter, "_initialize_channel_and_stub", None)
    if initialize is None:  # another SDK version: leave reconnecting to it
        return
    try:
        channel = getattr(exporter, "_channel", None)
        if channel is not None:
            channel.close()
        initialize()
    except Exception as exc:
        errors.record("export.reconnect", exc)


_MEANWHILE = {
    "spans": "spans wait in a bounded queue, the oldest dropped when it is full",
    "metrics": "the totals are sent at the next export that gets through",
}
_health = _ExportHealth()


#: The OTLP exporter class of each signal, by module (``proto.grpc`` or ``proto.http``).
_EXPORTERS = {"spans": ("trace_exporter", "OTLPSpanExporter"),
              "metrics": ("metric_exporter", "OTLPMetricExporter")}  # fmt: skip


def _otlp_exporter(settings: Settings, signal: str) -> Any:
    """The OTLP exporter of ``signal`` ("spans" or "metrics") for the configured protocol,
    imported only when that pipeline is built, and watched for its export health."""
    module, name = _EXPORTERS[signal]
    transport = "grpc" if settings.otlp_protocol == "grpc" else "http"
    exporter = getattr(
        importlib.import_module(f"opentelemetry.exporter.otlp.proto.{transport}.{module}"), name
    )
    endpoint = (
        settings.otlp_traces_endpoint if signal == "spans" else settings.otlp_metrics_endpoint
    )
    return _health.watch(exporter(), signal, endpoint, reconnect=transport == "grpc")


def _resource(child: bool = False):  # type: ignore[no-untyped-def]
    from opentelemetry.sdk.resources import Resource

    attributes = {"process.pid": os.getpid()} if child else {}
    return Resource.create(attributes)


def _new_meter_provider(settings: Settings, child: bool = False) -> metrics.MeterProvider:
    from opentelemetry.sdk.metrics import MeterProvider

    reader = _fork_aware_reader(_otlp_exporter(settings, "metrics"))
    # Shut down by _shutdown_at_exit, in bounded time, rather than by the SDK's own atexit hook.
    provider = MeterProvider(
        resource=_resource(child), metric_readers=[reader], shutdown_on_exit=False
    )
    _register_shutdown_at_exit()
    return provider


@contextmanager
def _sdk_settings() -> Iterator[None]:
    """Turn the SDK's ValueError for a bad ``OTEL_BSP_*`` / ``OTEL_EXPORTER_OTLP_*`` variable
    into a ConfigurationError at ``instrument()``, naming the variables set."""
    try:
        yield
    except ValueError as exc:
        given = {
            k: redact(v)  # an endpoint URL may hold a password
            for k, v in os.environ.items()
            if k.startswith(("OTEL_BSP_", "OTEL_EXPORTER_OTLP_", "OTEL_METRIC_EXPORT_"))
            and "HEADERS" not in k  # headers may hold credentials
        }
        raise ConfigurationError(
            ", ".join(sorted(given)) or "OpenTelemetry SDK settings",
            given,
            f"values the OpenTelemetry SDK accepts ({redact(str(exc))})",
        ) from None


def setup(
    settings: Settings,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> Pipelines:
    """Choose or create the providers (see the module docstring)."""
    global _owned_tracer_provider, _owned_meter_provider
    from .. import __version__

    if settings.sdk_disabled:
        return Pipelines(trace.NoOpTracer(), None)

    if tracer_provider is None:
        current = trace.get_tracer_provider()
        if isinstance(current, trace.ProxyTracerProvider):
            if _owned_tracer_provider is None:
                from opentelemetry.sdk.trace import TracerProvider

                provider = TracerProvider(resource=_resource(), shutdown_on_exit=False)
                _register_shutdown_at_exit()
                if settings.otlp_traces_endpoint:
                    from opentelemetry.sdk.trace.export import BatchSpanProcessor

                    with _sdk_settings():
                        processor = BatchSpanProcessor(_otlp_exporter(settings, "spans"))
                    provider.add_span_processor(processor)
                _owned_tracer_provider = provider
                trace.set_tracer_provider(provider)
            tracer_provider = trace.get_tracer_provider()
        else:
            tracer_provider = current

    meter: metrics.Meter | None = None
    if meter_provider is None:
        current_mp = metrics.get_meter_provider()
        if not _is_unset_meter_provider(current_mp):
            meter_provider = current_mp
        elif settings.otlp_metrics_endpoint:
            if _owned_meter_provider is None:
                with _sdk_settings():
                    _owned_meter_provider = _new_meter_provider(settings)
                metrics.set_meter_provider(_owned_meter_provider)
            meter_provider = _owned_meter_provider
    if meter_provider is not None:
        meter = meter_provider.get_meter("otel_jobs", __version__)
    return Pipelines(tracer_provider.get_tracer("otel_jobs", __version__), meter, tracer_provider)


def meter_for_child(settings: Settings, inherited: metrics.Meter | None) -> metrics.Meter | None:
    """In a forked child: a fresh meter if otel-jobs owns the metrics pipeline, else the inherited one."""
    global _owned_meter_provider
    from .. import __version__

    if inherited is None or _owned_meter_provider is None:
        return inherited
    # The parent's provider stays the global one here: never flush it from the child, or the
    # parent's points would be exported again under the parent's resource.
    _inherited_meter_providers.append(_owned_meter_provider)
    _owned_meter_provider = _new_meter_provider(settings, child=True)
    return _owned_meter_provider.get_meter("otel_jobs", __version__)


def _bounded(work: Callable[[], None], timeout_millis: float) -> bool:
    """Run ``work`` in a helper thread and wait for it at most ``timeout_millis``.

    The SDK's batch processor ignores the flush timeout and waits for every export, each with
    its own retries: against a collector that never answers that is minutes, not milliseconds.
    """
    thread = threading.Thread(target=work, name="otel-jobs-flush", daemon=True)
    try:
        thread.start()
    except RuntimeError:  # no new threads (interpreter shutting down): wait inline
        work()
        return True
    thread.join(max(0.0, timeout_millis) / 1000)
    return not thread.is_alive()


def _without_span_processors(provider: Any) -> bool:
    """Whether ``provider`` is an SDK TracerProvider with no span processor (nothing it could
    hold for export). Reads the SDK's private ``_active_span_processor._span_processors``, here
    only; another SDK that lacks them reads as "may hold spans" (tests/core/test_providers_flush.py
    fails on it)."""
    processors = getattr(
        getattr(provider, "_active_span_processor", None), "_span_processors", None
    )
    return isinstance(processors, tuple) and not processors


def has_exports(*, spans_only: bool = False) -> bool:
    """Whether :func:`flush` has anything to wait for: an SDK provider that may hold spans (or
    metrics). An RQ work horse asks before it waits for its spans' export (rq_horse)."""
    return bool(_flushable(spans_only))


def _flushable(spans_only: bool) -> list[Any]:
    candidates: list[Any] = [trace.get_tracer_provider()]
    if not spans_only:
        candidates += [metrics.get_meter_provider(), _owned_meter_provider]
    return [
        provider
        for provider in candidates
        if getattr(provider, "force_flush", None) is not None
        and not any(provider is inherited for inherited in _inherited_meter_providers)
        and not _without_span_processors(provider)
    ]


def flush(timeout_millis: int = 5000, *, spans_only: bool = False, inline: bool = False) -> bool:
    """Export what the providers hold now (spans and metrics, or ``spans_only``), waiting at
    most ``timeout_millis``; True when every provider reported its export done in time.
    ``inline``: in the calling thread, which bounds the wait itself (a thread of otel-jobs'
    own that another one waits for), rather than in a helper thread."""
    providers = _flushable(spans_only)
    done: list[bool] = []

    def work() -> None:
        for provider in providers:
            try:
                done.append(bool(provider.force_flush(timeout_millis)))
            except Exception:
                done.append(False)

    if not providers:
        return True  # no SDK, or no span processor: nothing to export
    if inline:
        work()
        return all(done)
    return _bounded(work, timeout_millis) and all(done)


_shutdown_registered = False
#: How long the providers otel-jobs created may take to shut down when the process exits.
EXIT_SHUTDOWN_MILLIS = 5000


def _register_shutdown_at_exit() -> None:
    global _shutdown_registered
    if not _shutdown_registered:
        _shutdown_registered = True
        atexit.register(_shutdown_at_exit)


def _shutdown_at_exit() -> None:
    owned: list[Any] = [p for p in (_owned_tracer_provider, _owned_meter_provider) if p]

    def work() -> None:
        for provider in owned:
            try:
                provider.shutdown()
            except Exception:
                pass

    if owned:
        _bounded(work, EXIT_SHUTDOWN_MILLIS)

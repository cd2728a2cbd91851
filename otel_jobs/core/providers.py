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
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

from .config import Settings

_owned_tracer_provider: trace.TracerProvider | None = None
_owned_meter_provider: metrics.MeterProvider | None = None
_inherited_meter_providers: list[metrics.MeterProvider] = []


class _ForkAwareReader(PeriodicExportingMetricReader):
    """A periodic reader that stays silent in a forked child.

    The SDK's reader restarts its thread after fork and would export the parent's cumulative
    points again from the child; otel-jobs builds a fresh pipeline in the child instead.
    """

    def _at_fork_reinit(self) -> None:
        pass


@dataclass
class Pipelines:
    tracer: trace.Tracer
    meter: metrics.Meter | None


def _is_unset_meter_provider(provider: metrics.MeterProvider) -> bool:
    return type(provider).__name__ in ("_ProxyMeterProvider", "NoOpMeterProvider")


def _otlp_span_exporter(settings: Settings):  # type: ignore[no-untyped-def]
    if settings.otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    return OTLPSpanExporter()


def _otlp_metric_exporter(settings: Settings):  # type: ignore[no-untyped-def]
    if settings.otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # type: ignore[assignment]
    return OTLPMetricExporter()


def _resource(child: bool = False):  # type: ignore[no-untyped-def]
    from opentelemetry.sdk.resources import Resource

    attributes = {"process.pid": os.getpid()} if child else {}
    return Resource.create(attributes)


def _new_meter_provider(settings: Settings, child: bool = False) -> metrics.MeterProvider:
    from opentelemetry.sdk.metrics import MeterProvider

    reader = _ForkAwareReader(_otlp_metric_exporter(settings))
    return MeterProvider(resource=_resource(child), metric_readers=[reader])


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
                from opentelemetry.sdk.trace.export import BatchSpanProcessor

                provider = TracerProvider(resource=_resource())
                if settings.otlp_traces_endpoint:
                    provider.add_span_processor(BatchSpanProcessor(_otlp_span_exporter(settings)))
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
                _owned_meter_provider = _new_meter_provider(settings)
                metrics.set_meter_provider(_owned_meter_provider)
            meter_provider = _owned_meter_provider
    if meter_provider is not None:
        meter = meter_provider.get_meter("otel_jobs", __version__)
    return Pipelines(tracer_provider.get_tracer("otel_jobs", __version__), meter)


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


def flush(timeout_millis: int = 5000) -> None:
    """Export what the providers hold now (spans and metrics), waiting at most ``timeout_millis``."""
    for provider in (
        trace.get_tracer_provider(),
        metrics.get_meter_provider(),
        _owned_meter_provider,
    ):
        if any(provider is inherited for inherited in _inherited_meter_providers):
            continue
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is not None:
            try:
                force_flush(timeout_millis)
            except Exception:
                pass

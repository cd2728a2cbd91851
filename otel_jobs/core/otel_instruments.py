"""The OpenTelemetry side of otel-jobs' instruments, built only when a metrics pipeline exists.

The same measurements as the Prometheus instruments of :mod:`otel_jobs.core.telemetry`, named so
that they translate to the Prometheus names (``otel_jobs.run.duration`` in ``s`` becomes
``otel_jobs_run_duration_seconds``), with explicit bucket advisories; the in-flight gauges are
observable gauges read from :meth:`Telemetry.observations` at collection, never on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import schedules

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter, Observation

    from .telemetry import Telemetry

_observed: dict[int, Telemetry] = {}
"""The Telemetry each meter's observable gauges report (id of the meter: the latest one)."""


class OtelInstruments:
    """The OpenTelemetry side of the instruments (only built when a metrics pipeline exists)."""

    def __init__(self, meter: Meter, telemetry: Telemetry) -> None:
        from .telemetry import LOOP_LAG_BUCKETS  # (telemetry imports this module)

        settings = telemetry.settings
        duration_advice = list(settings.duration_buckets)
        wait_advice = list(settings.queue_wait_buckets)
        self.started = meter.create_counter(
            "otel_jobs.runs.started", unit="{run}", description="Runs started."
        )
        self.finished = meter.create_counter(
            "otel_jobs.runs.finished", unit="{run}", description="Runs finished, by outcome."
        )
        self.duration = meter.create_histogram(
            "otel_jobs.run.duration", unit="s", description="Wall time of finished runs.",
            explicit_bucket_boundaries_advisory=duration_advice,
        )  # fmt: skip
        self.queue_wait = meter.create_histogram(
            "otel_jobs.queue.wait", unit="s", description="Time from publish (or due time) to start.",
            explicit_bucket_boundaries_advisory=wait_advice,
        )  # fmt: skip
        self.stalls = meter.create_counter(
            "otel_jobs.stalls.detected", unit="{stall}", description="Stall verdicts."
        )
        self.skipped = meter.create_counter(
            "otel_jobs.runs.skipped", unit="{run}", description="Scheduled runs that never started."
        )
        self.dead_lettered = meter.create_counter(
            "otel_jobs.runs.dead_lettered",
            unit="{run}",
            description="Jobs sent to the dead-letter queue, not to be retried.",
        )
        self.redelivered = meter.create_counter(
            "otel_jobs.runs.redelivered",
            unit="{run}",
            description="Runs of a job handed out again after a run of it was lost.",
        )
        self.no_timeout = meter.create_counter(
            "otel_jobs.outbound.calls_without_timeout",
            unit="{call}",
            description="Outbound calls made without a timeout.",
        )
        self.loop_lag = meter.create_histogram(
            "otel_jobs.event_loop.lag", unit="s",
            description="How late an asyncio event loop running runs ran the watchdog's probe.",
            explicit_bucket_boundaries_advisory=list(LOOP_LAG_BUCKETS),
        )  # fmt: skip

        # The SDK keeps the first instrument of a name on a meter and ignores the callbacks of
        # a later one (instrument() after uninstrument(), a forked child on the application's
        # provider): the gauges observe the latest Telemetry of their meter, not the first.
        meter_id = id(meter)
        _observed[meter_id] = telemetry
        schedules.observe_with(meter, lambda: _observed.get(meter_id, telemetry).schedules)

        def gauge(name: str, unit: str, description: str, key: str) -> None:
            def callback(_options: Any) -> Iterable[Observation]:
                return _observed.get(meter_id, telemetry).observations(key)

            meter.create_observable_gauge(
                name, callbacks=[callback], unit=unit, description=description
            )

        gauge("otel_jobs.runs.in_progress", "{run}", "Runs in flight now.", "in_progress")
        gauge(
            "otel_jobs.oldest_run_start.timestamp",
            "s",
            "Start (Unix time) of the oldest run in flight.",
            "oldest_start",
        )
        gauge(
            "otel_jobs.stalest_heartbeat.timestamp",
            "s",
            "Oldest last heartbeat (Unix time) among runs in flight.",
            "stalest_heartbeat",
        )
        gauge("otel_jobs.run.max_duration", "s", "Max duration in force.", "max_duration")
        gauge(
            "otel_jobs.run.heartbeat_timeout",
            "s",
            "Heartbeat timeout in force.",
            "heartbeat_timeout",
        )
        gauge(
            "otel_jobs.runs.stalled", "{run}", "Runs with a stall verdict now, by state.", "stalled"
        )
        gauge(
            "otel_jobs.watchdog.last_tick.timestamp",
            "s",
            "Last watchdog tick (Unix time).",
            "watchdog",
        )
        gauge(
            "otel_jobs.last_success.timestamp",
            "s",
            "End (Unix time) of the last run that succeeded.",
            "last_success",
        )
        gauge(
            "otel_jobs.consecutive_failures",
            "{failure}",
            "Runs ended in failure or timeout since the last success.",
            "consecutive_failures",
        )
        gauge(
            "otel_jobs.run.expected_every",
            "s",
            "How often the job must succeed (+Inf: not set).",
            "expected_every",
        )
        gauge(
            "otel_jobs.event_loop.blocked",
            "s",
            "How long an asyncio event loop running runs has been unable to run anything.",
            "loop_blocked",
        )

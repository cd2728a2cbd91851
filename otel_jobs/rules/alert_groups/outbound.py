"""Alerts about outbound calls a job made without a timeout."""

from __future__ import annotations

from ..config import RulesConfig
from ..promql import WHERE, Alert, Group, sel


def alerts(s: RulesConfig) -> list[Alert]:
    no_timeout = sel(s, "otel_jobs_outbound_calls_without_timeout_total")
    return [
        Alert(
            "OtelJobsOutboundCallWithoutTimeout",
            "warning",
            # A call site's counter appears at its first call: `unless ... offset` catches
            # series that are new in the window, which increase() alone would miss.
            f"increase({no_timeout}[{s.outbound_window}]) > 0\nor\n"
            f"({no_timeout} unless {no_timeout} offset {s.outbound_window})",
            "Outbound calls were made without a timeout.",
            "{{ $labels.library }} calls to {{ $labels.host }} from {{ $labels.call_site }}"
            f"{WHERE} had no timeout ({{{{ $value | humanize }}}} in the last "
            f"{s.outbound_window}); one unanswered call hangs its job for ever.",
            dashboard_vars=("instance",),
        ),
    ]


GROUP = Group(
    "otel-jobs.outbound",
    order=40,
    default_for={"OtelJobsOutboundCallWithoutTimeout": "1m"},
    alerts=alerts,
)

"""Alerts about the asyncio event loops of the workers: a loop that has run nothing for long.

``otel_jobs_event_loop_blocked_seconds{thread}`` is how long a loop has had the watchdog's probe
waiting right now (0 while it runs callbacks): a loop that is busy but keeps answering stays
below one watchdog interval, one held by a synchronous call or a CPU loop in a coroutine grows
with every scrape. The threshold defaults to the watchdog's own ``loop_blocked_timeout``.
"""

from __future__ import annotations

from ..config import Option, RulesConfig, positive
from ..promql import Alert, Group, num, sel

LOOP_BLOCKED = Option(
    "loop_blocked_seconds",
    5.0,
    "seconds an event loop has run nothing that mean it is blocked (the watchdog's "
    "loop_blocked_timeout)",
    positive,
    "SECONDS",
)


def alerts(s: RulesConfig) -> list[Alert]:
    blocked = sel(s, "otel_jobs_event_loop_blocked_seconds")
    return [
        Alert(
            "OtelJobsEventLoopBlocked",
            "warning",
            f"{blocked} > {num(s.option(LOOP_BLOCKED))}",
            "A worker's asyncio event loop has run nothing for too long.",
            "The event loop of thread {{ $labels.thread }} on {{ $labels.instance }} has run "
            "nothing for {{ $value | humanizeDuration }}: a synchronous call or a CPU loop in a "
            "coroutine holds it, and every run on that loop waits. The watchdog's loop_blocked "
            "WARNING and stall span name the line that holds it.",
            dashboard_vars=("instance",),
        ),
    ]


GROUP = Group(
    "otel-jobs.loops",
    order=25,
    default_for={"OtelJobsEventLoopBlocked": "1m"},
    alerts=alerts,
    options=(LOOP_BLOCKED,),
)

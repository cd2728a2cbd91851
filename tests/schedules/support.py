"""Shared by the schedules tests: the names of the schedule gauges, as users query them."""

from __future__ import annotations

NEXT = "otel_jobs_schedule_next_run_timestamp_seconds"
SENT = "otel_jobs_schedule_last_sent_timestamp_seconds"
INTERVAL = "otel_jobs_schedule_interval_seconds"

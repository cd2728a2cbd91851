"""Tests of the alert rules (alerts/), the generator (otel_jobs/rules/) and the runbooks."""

from tests.support.prometheus import require_binary

__all__ = ["require_binary"]

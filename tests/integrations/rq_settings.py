"""The settings module of the RQ tests' workers (``rq worker -c tests.integrations.rq_settings``).

rq imports it when the worker starts, before the worker forks any horse: the place to call
``otel_jobs.instrument()``. The port comes from ``OTEL_JOBS_PROMETHEUS_PORT``; per-job settings
from ``OTEL_JOBS_TEST_JOBS`` (JSON). ``OTEL_JOBS_TEST_NO_INSTRUMENT=1`` leaves the worker bare.
"""

import json
import os

import otel_jobs

if os.environ.get("OTEL_JOBS_TEST_NO_INSTRUMENT") != "1":
    otel_jobs.instrument(jobs=json.loads(os.environ.get("OTEL_JOBS_TEST_JOBS") or "{}"))

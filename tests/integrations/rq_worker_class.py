"""A custom RQ worker class whose module calls instrument(): ``rq worker -w <this>.Worker``.

RQ imports this module when the worker starts (to find the class), before any job runs.
"""

import json
import os

import rq

import otel_jobs

otel_jobs.instrument(jobs=json.loads(os.environ.get("OTEL_JOBS_TEST_JOBS") or "{}"))


class Worker(rq.Worker):
    """Nothing to add: the module's import is what instruments the worker."""

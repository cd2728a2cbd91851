"""The Celery app the integration tests run in real ``celery worker`` processes.

Configured from the environment by the test that starts the worker:

* ``OJ_CELERY_BROKER``: broker URL; ``OJ_CELERY_PREFIX``: prefix of the task queues (one per test
  run, so that runs never share a queue);
* ``OJ_CELERY_PORT``: the ``/metrics`` port; ``OJ_CELERY_RELEASE_DIR``: where the hanging task
  looks for its release file; ``OJ_CELERY_SPANS``: a file the worker writes its spans to (JSON
  lines) through a real SDK pipeline; ``OJ_CELERY_CONTRIB=1``: also enable
  opentelemetry-instrumentation-celery, the way its documentation says (``worker_process_init``).

``instrument()`` is called here, in the app module: the worker's main process imports it before
the prefork pool forks its children.
"""

from __future__ import annotations

import os
import time

from celery import Celery, signals
from celery.exceptions import Ignore, Reject
from kombu import Queue

import otel_jobs

PREFIX = os.environ.get("OJ_CELERY_PREFIX", "oj-test")
FAST, SLOW = f"{PREFIX}-fast", f"{PREFIX}-slow"


class ExpectedError(Exception):
    """Declared in ``throws``: an expected outcome, not an error."""


if os.environ.get("OJ_CELERY_SPANS"):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    _spans_file = open(os.environ["OJ_CELERY_SPANS"], "a", buffering=1)  # noqa: SIM115
    _provider = TracerProvider()
    _provider.add_span_processor(
        SimpleSpanProcessor(
            ConsoleSpanExporter(out=_spans_file, formatter=lambda s: s.to_json(indent=None) + "\n")
        )
    )
    trace.set_tracer_provider(_provider)

if os.environ.get("OJ_CELERY_CONTRIB") == "1":

    @signals.worker_process_init.connect(weak=False)
    def _contrib(**_: object) -> None:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()


otel_jobs.instrument(
    prometheus_port=int(os.environ.get("OJ_CELERY_PORT", "0")),
    frameworks=["celery"],
    outbound=[],
    watchdog_interval=0.2,
    jobs={"oj.hang": {"heartbeat_timeout": 1}},
)

app = Celery("oj", broker=os.environ.get("OJ_CELERY_BROKER", "redis://127.0.0.1:6379/11"))
app.conf.update(
    task_queues=[Queue(FAST), Queue(SLOW)],
    task_default_queue=FAST,
    task_routes={"oj.hang": {"queue": SLOW}, "oj.sleep_past_limit": {"queue": SLOW}},
    task_time_limit=300,
    broker_transport_options={"visibility_timeout": 3600},
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)


@app.task(name="oj.ok", autoretry_for=(ConnectionError,))
def ok(x: int) -> int:
    return x * 2


@app.task(name="oj.fail", autoretry_for=(ConnectionError,))
def fail() -> None:
    raise ValueError("boom")


@app.task(name="oj.expected", throws=(ExpectedError,), autoretry_for=(ConnectionError,))
def expected() -> None:
    raise ExpectedError("declared")


@app.task(name="oj.retry_once", bind=True, max_retries=3)
def retry_once(self) -> str:  # type: ignore[no-untyped-def]
    if self.request.retries == 0:
        raise self.retry(countdown=0, exc=RuntimeError("try again"))
    return "done"


@app.task(name="oj.ignore", autoretry_for=(ConnectionError,))
def ignore() -> None:
    raise Ignore()


@app.task(name="oj.reject", autoretry_for=(ConnectionError,))
def reject() -> None:
    raise Reject("bad message", requeue=False)


@app.task(name="oj.hang", autoretry_for=(ConnectionError,))
def hang(token: str) -> str:
    """Blocks without heartbeating until the test creates the release file."""
    path = os.path.join(os.environ["OJ_CELERY_RELEASE_DIR"], token)
    while not os.path.exists(path):
        time.sleep(0.05)
    return "released"


@app.task(name="oj.sleep_past_limit", time_limit=1, autoretry_for=(ConnectionError,))
def sleep_past_limit() -> None:
    time.sleep(60)


@app.task(name="oj.die", autoretry_for=(ConnectionError,))
def die() -> None:
    os._exit(3)  # the pool child vanishes mid-run: WorkerLostError in the main process

"""The Celery app the integration tests run in real ``celery worker`` processes.

Configured from the environment by the test that starts the worker:

* ``OJ_CELERY_BROKER``: broker URL; ``OJ_CELERY_PREFIX``: prefix of the task queues (one per test
  run, so that runs never share a queue);
* ``OJ_CELERY_PORT``: the ``/metrics`` port; ``OJ_CELERY_RELEASE_DIR``: where the hanging task
  looks for its release file; ``OJ_CELERY_SPANS``: a file the worker writes its spans to (JSON
  lines) through a real SDK pipeline (``OJ_CELERY_SPANS_BATCH=1``: a batch span processor that
  exports only when flushed; ``OJ_CELERY_SPANS_SLOW_CHILD=S``: in the pool children, each export
  takes S seconds more); ``OJ_CELERY_MAX_TASKS_PER_CHILD``: pool children exit after that
  many tasks; ``OJ_CELERY_CONTRIB=1``: also enable
  opentelemetry-instrumentation-celery, the way its documentation says (``worker_process_init``),
  ``=first``: enable it in the app module before otel-jobs;
  ``OJ_CELERY_INSTRUMENT_IN_CHILD=1``: call ``instrument()`` in ``worker_process_init``, the
  wrong place for otel-jobs.

With ``OJ_CELERY_WORKER=1`` (set for the worker only), ``instrument()`` is called here, in the
app module: the worker's main process imports it before the prefork pool forks its children.
"""

from __future__ import annotations

import os
import signal
import time

from celery import Celery, signals
from celery.exceptions import Ignore, Reject
from kombu import Queue

import otel_jobs

PREFIX = os.environ.get("OJ_CELERY_PREFIX", "oj-test")
BROKER = os.environ.get("OJ_CELERY_BROKER", "redis://127.0.0.1:6379/11")


class ExpectedError(Exception):
    """Declared in ``throws``: an expected outcome, not an error."""


SLOW_TASKS = ("oj.hang", "oj.sleep_past_limit", "oj.deaf_past_limit", "oj.block")


def queues(prefix: str) -> tuple[str, str]:
    """The two task queues of a test run: fast tasks, and slow or stuck ones."""
    return f"{prefix}-fast", f"{prefix}-slow"


def make_app(broker: str, prefix: str) -> Celery:
    """The app (configuration only): the worker's, and the tests' publishing side."""
    fast, slow = queues(prefix)
    celery_app = Celery("oj", broker=broker, set_as_current=False)
    celery_app.conf.update(
        # auto_delete: a test run's queues vanish from RabbitMQ with its worker
        task_queues=[Queue(fast, auto_delete=True), Queue(slow, auto_delete=True)],
        task_default_queue=fast,
        task_routes={name: {"queue": slow} for name in SLOW_TASKS},
        task_time_limit=300,
        broker_transport_options={"visibility_timeout": 3600},
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
    )
    if os.environ.get("OJ_CELERY_MAX_TASKS_PER_CHILD"):
        celery_app.conf.worker_max_tasks_per_child = int(
            os.environ["OJ_CELERY_MAX_TASKS_PER_CHILD"]
        )
    return celery_app


if os.environ.get("OJ_CELERY_WORKER") == "1":
    if os.environ.get("OJ_CELERY_SPANS"):
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )

        _spans_file = open(os.environ["OJ_CELERY_SPANS"], "a", buffering=1)
        _provider = TracerProvider()
        _exporter = ConsoleSpanExporter(
            out=_spans_file, formatter=lambda s: s.to_json(indent=None) + "\n"
        )
        if os.environ.get("OJ_CELERY_SPANS_SLOW_CHILD"):
            _main_pid, _slow = os.getpid(), float(os.environ["OJ_CELERY_SPANS_SLOW_CHILD"])
            _export = _exporter.export

            def _slow_in_children(spans: object) -> object:
                if os.getpid() != _main_pid:
                    time.sleep(_slow)
                return _export(spans)  # type: ignore[arg-type]

            _exporter.export = _slow_in_children  # type: ignore[method-assign]
        if os.environ.get("OJ_CELERY_SPANS_BATCH") == "1":
            _provider.add_span_processor(
                BatchSpanProcessor(_exporter, schedule_delay_millis=600_000)
            )
        else:
            _provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(_provider)

    if os.environ.get("OJ_CELERY_CONTRIB") == "first":
        # Before otel-jobs, in the main process: its receivers come first in every child.
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()
    elif os.environ.get("OJ_CELERY_CONTRIB") == "1":

        @signals.worker_process_init.connect(weak=False)
        def _contrib(**_: object) -> None:
            from opentelemetry.instrumentation.celery import CeleryInstrumentor

            CeleryInstrumentor().instrument()

    def _instrument(**_: object) -> None:
        otel_jobs.instrument(
            prometheus_port=int(os.environ["OJ_CELERY_PORT"]),
            frameworks=["celery"],
            outbound=[],
            watchdog_interval=0.2,
            jobs={"oj.hang": {"heartbeat_timeout": 1}},
        )

    if os.environ.get("OJ_CELERY_INSTRUMENT_IN_CHILD") == "1":
        # The wrong place, on purpose: every pool child instruments itself.
        signals.worker_process_init.connect(_instrument, weak=False)
    else:
        _instrument()

app = make_app(BROKER, PREFIX)


@app.task(shared=False, name="oj.ok", autoretry_for=(ConnectionError,))
def ok(x: int) -> int:
    return x * 2


@app.task(shared=False, name="oj.fail", autoretry_for=(ConnectionError,))
def fail() -> None:
    raise ValueError("boom")


@app.task(
    shared=False, name="oj.expected", throws=(ExpectedError,), autoretry_for=(ConnectionError,)
)
def expected() -> None:
    raise ExpectedError("declared")


@app.task(shared=False, name="oj.retry_once", bind=True, max_retries=3)
def retry_once(self) -> str:  # type: ignore[no-untyped-def]
    if self.request.retries == 0:
        raise self.retry(countdown=0, exc=RuntimeError("try again"))
    return "done"


@app.task(shared=False, name="oj.ignore", autoretry_for=(ConnectionError,))
def ignore() -> None:
    raise Ignore()


@app.task(shared=False, name="oj.reject", autoretry_for=(ConnectionError,))
def reject() -> None:
    raise Reject("bad message", requeue=False)


@app.task(shared=False, name="oj.hang", autoretry_for=(ConnectionError,))
def hang(token: str) -> str:
    """Blocks without heartbeating until the test creates the release file."""
    path = os.path.join(os.environ["OJ_CELERY_RELEASE_DIR"], token)
    while not os.path.exists(path):
        time.sleep(0.05)
    return "released"


@app.task(shared=False, name="oj.sleep_past_limit", time_limit=1, autoretry_for=(ConnectionError,))
def sleep_past_limit() -> None:
    time.sleep(60)


@app.task(shared=False, name="oj.deaf_past_limit", time_limit=1, autoretry_for=(ConnectionError,))
def deaf_past_limit() -> None:
    """Holds off SIGTERM, as code stuck in C does: the hard time limit's SIGKILL ends it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    time.sleep(60)


@app.task(shared=False, name="oj.block", autoretry_for=(ConnectionError,))
def block() -> None:
    """Runs until revoked with terminate=True."""
    while True:
        time.sleep(0.05)


@app.task(shared=False, name="oj.later", autoretry_for=(ConnectionError,))
def later() -> None:
    """Sent with a countdown, and revoked before it is due."""


@app.task(shared=False, name="oj.delayed", autoretry_for=(ConnectionError,))
def delayed() -> str:
    return "due"


@app.task(shared=False, name="oj.die", autoretry_for=(ConnectionError,))
def die() -> None:
    os._exit(3)  # the pool child vanishes mid-run: WorkerLostError in the main process

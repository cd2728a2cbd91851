"""Faults inside otel-jobs: each component is forced to raise, and the job never notices.

For every component (a span processor, the collector behind ``/metrics`` and the OpenTelemetry
gauges, the watchdog tick, a heartbeat's update, a framework hook, an outbound library hook)
an exception of a class of the test's own is forced into it, several times. Each time the job's
own result, or its own exception object, comes out unchanged; the fault is counted in
``otel_jobs_internal_errors_total{component}`` on the real ``/metrics`` endpoint, and logged
exactly once, however often it happens.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

import otel_jobs
from otel_jobs.core import errors
from tests.support import Samples, scrape
from tests.support.threads import TickCounter

REPEAT = 5


class Fault(RuntimeError):
    """Raised by the test inside otel-jobs; each test uses its own subclass, logged once."""


def internal_errors(component: str) -> float:
    url = otel_jobs.metrics_url()
    assert url is not None
    return sum(scrape(url).find("otel_jobs_internal_errors_total", component=component))


def logged(caplog: pytest.LogCaptureFixture, component: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.getMessage().startswith(f"otel-jobs internal error in {component} ")
    ]


@pytest.fixture
def errors_logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.ERROR, logger="otel_jobs")
    return caplog


class _RaisingProcessor(SpanProcessor):
    def __init__(self, fault: type[Exception], on: str) -> None:
        self.fault = fault
        self.on = on

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self.on == "start":
            raise self.fault("span processor on_start")

    def on_end(self, span: Any) -> None:
        if self.on == "end":
            raise self.fault("span processor on_end")


@pytest.mark.parametrize(("on", "component"), [("start", "run.start"), ("end", "run.finish")])
@pytest.mark.internal_errors("run.start", "run.finish")
def test_a_span_processor_that_raises(
    instrumented: Callable[..., Any],
    errors_logged: pytest.LogCaptureFixture,
    on: str,
    component: str,
) -> None:
    fault = type(f"ProcessorFault_{on}", (Fault,), {})
    provider = TracerProvider()
    provider.add_span_processor(_RaisingProcessor(fault, on))
    instrumented(watchdog=False, tracer_provider=provider)
    before = internal_errors(component)
    mine = ValueError("the job's own")

    @otel_jobs.job(name=f"faults.processor.{on}")
    def job(i: int, fail: bool = False) -> int:
        if fail:
            raise mine
        return i * 2

    for i in range(REPEAT):
        assert job(i) == i * 2
        with pytest.raises(ValueError) as raised:
            job(i, fail=True)
        assert raised.value is mine
    assert internal_errors(component) - before == 2 * REPEAT
    assert len(logged(errors_logged, component)) == 1
    url = otel_jobs.metrics_url()
    assert url is not None
    s = scrape(url)  # the runs are counted all the same
    assert (
        s.value("otel_jobs_runs_started_total", job_name=f"faults.processor.{on}", queue="default")
        == 2 * REPEAT
    )


@pytest.mark.internal_errors("collect")
def test_the_collectors_raise_at_scrape(
    instrumented: Callable[..., Any],
    errors_logged: pytest.LogCaptureFixture,
    metric_reader: InMemoryMetricReader,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = instrumented(watchdog=False)
    fault = type("CollectFault", (Fault,), {})
    with otel_jobs.job_run("faults.collect"):
        pass
    before = internal_errors("collect")
    before_otel = internal_errors("collect.otel")

    def broken() -> Any:
        raise fault("in the collector")

    monkeypatch.setattr(agent.telemetry, "inflight", broken)
    url = otel_jobs.metrics_url()
    assert url is not None
    for _ in range(REPEAT):
        s = scrape(url)  # still answered and well-formed, with the counters
        assert (
            s.value("otel_jobs_runs_started_total", job_name="faults.collect", queue="default") == 1
        )
        metric_reader.get_metrics_data()  # the OpenTelemetry gauges' callbacks
    assert internal_errors("collect") - before >= REPEAT
    assert internal_errors("collect.otel") - before_otel >= REPEAT
    assert len(logged(errors_logged, "collect")) == 1
    assert len(logged(errors_logged, "collect.otel")) == 1


@pytest.mark.internal_errors("watchdog")
def test_the_watchdog_tick_raises(
    instrumented: Callable[..., Any],
    errors_logged: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = instrumented(watchdog_interval=0.02)
    fault = type("TickFault", (Fault,), {})
    before = internal_errors("watchdog")

    def broken() -> None:
        raise fault("in the tick")

    monkeypatch.setattr(agent.watchdog, "_tick", broken)
    ticks = TickCounter(agent.watchdog, monkeypatch)

    @otel_jobs.job(name="faults.watchdog")
    def job() -> str:
        deadline = time.monotonic() + 30
        while ticks.count < REPEAT and time.monotonic() < deadline:
            time.sleep(0.01)
        return "done"

    assert job() == "done"
    assert agent.watchdog.running  # the thread keeps ticking
    assert internal_errors("watchdog") - before >= REPEAT
    assert len(logged(errors_logged, "watchdog")) == 1
    url = otel_jobs.metrics_url()
    assert url is not None
    assert scrape(url).find("otel_jobs_watchdog_last_tick_timestamp_seconds")


@pytest.mark.internal_errors("heartbeat")
def test_a_heartbeat_update_raises(
    instrumented: Callable[..., Any], errors_logged: pytest.LogCaptureFixture
) -> None:
    instrumented(watchdog=False)
    fault = type("HeartbeatFault", (Fault,), {})

    class Progress(float):
        # A float whose comparison fails: what a user's numeric type can do.
        def __ge__(self, other: object) -> bool:
            raise fault("comparison")

        def __le__(self, other: object) -> bool:
            raise fault("comparison")

    before = internal_errors("heartbeat")
    with otel_jobs.job_run("faults.heartbeat") as run:
        for _ in range(REPEAT):
            otel_jobs.heartbeat(progress=Progress(0.5), step=1)
            run.heartbeat(progress=Progress(0.5))  # the run's own method too
        result = "finished"
    assert result == "finished"
    assert internal_errors("heartbeat") - before == 2 * REPEAT
    assert len(logged(errors_logged, "heartbeat")) == 1


@pytest.mark.internal_errors("integration.apscheduler")
def test_a_framework_hook_raises(
    instrumented: Callable[..., Any],
    errors_logged: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
    from apscheduler.schedulers.background import BackgroundScheduler

    agent = instrumented(frameworks=["apscheduler"], outbound=[], watchdog=False)
    fault = type("HookFault", (Fault,), {})

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise fault("in the framework hook")

    monkeypatch.setattr(agent, "start_run", broken)
    before = internal_errors("integration.apscheduler")
    mine = KeyError("the job's own")
    outcomes: list[tuple[str, Any]] = []
    done = threading.Event()

    def listener(event: Any) -> None:
        outcomes.append(("error", event.exception) if event.exception else ("ok", event.retval))
        if len(outcomes) == 2 * REPEAT:
            done.set()

    def good(i: int) -> int:
        return i + 100

    def bad() -> None:
        raise mine

    scheduler = BackgroundScheduler(timezone=timezone.utc)
    scheduler.add_listener(listener, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    for i in range(REPEAT):
        scheduler.add_job(good, args=[i], id=f"good-{i}")
        scheduler.add_job(bad, id=f"bad-{i}")
    scheduler.start()
    try:
        assert done.wait(60), outcomes
    finally:
        scheduler.shutdown(wait=True)
    assert sorted(v for k, v in outcomes if k == "ok") == [100 + i for i in range(REPEAT)]
    assert [v for k, v in outcomes if k == "error"] == [mine] * REPEAT
    assert internal_errors("integration.apscheduler") - before >= 2 * REPEAT
    assert len(logged(errors_logged, "integration.apscheduler")) == 1


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"the response"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.mark.internal_errors("outbound.requests")
def test_an_outbound_hook_raises(
    instrumented: Callable[..., Any],
    errors_logged: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    http_server: str,
) -> None:
    import requests

    agent = instrumented(frameworks=[], outbound=["requests"], watchdog=False)
    fault = type("OutboundFault", (Fault,), {})

    def broken(*args: Any, **kwargs: Any) -> None:
        raise fault("in the outbound hook")

    monkeypatch.setattr(agent.telemetry, "record_no_timeout", broken)
    before = internal_errors("outbound.requests")

    @otel_jobs.job(name="faults.outbound")
    def fetch() -> str:
        return requests.get(http_server).text  # no timeout: the check runs, and raises

    for _ in range(REPEAT):
        assert fetch() == "the response"
    assert internal_errors("outbound.requests") - before == REPEAT
    assert len(logged(errors_logged, "outbound.requests")) == 1


@pytest.mark.internal_errors("reliability.test")
def test_internal_errors_are_counted_by_component_on_metrics(
    instrumented: Callable[..., Any],
) -> None:
    instrumented(watchdog=False)
    fault = type("DirectFault", (Fault,), {})
    before = internal_errors("reliability.test")
    with errors.guard("reliability.test"):
        raise fault("counted")
    url = otel_jobs.metrics_url()
    assert url is not None
    s: Samples = scrape(url)
    assert s.value("otel_jobs_internal_errors_total", component="reliability.test") == before + 1


def test_otel_gauges_observe_the_current_agent_after_reinstrument(
    instrumented: Callable[..., Any], metric_reader: InMemoryMetricReader
) -> None:
    # The SDK keeps the first observable gauge of a name and ignores later callbacks: the
    # gauges must still read the runs of the agent in force, not of the first one.
    instrumented(watchdog=False)
    otel_jobs.uninstrument()
    instrumented(watchdog=False)

    def in_progress() -> list[float]:
        data = metric_reader.get_metrics_data()
        assert data is not None
        return [
            p.value
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == "otel_jobs.runs.in_progress"
            for p in m.data.data_points
            if (p.attributes or {}).get("job_name") == "faults.reinstrumented"
        ]

    with otel_jobs.job_run("faults.reinstrumented"):
        assert in_progress() == [1]
    assert in_progress() == [0]

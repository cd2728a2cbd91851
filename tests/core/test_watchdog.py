"""The stuck-run watchdog in one process: verdicts, diagnosis, signals, recovery, cancel.

Real threads, a real local server that accepts and never answers, a real busy loop, real
asyncio loops, the real OpenTelemetry SDK and the real ``/metrics`` endpoint. Nothing is
timed: every wait polls a condition with a generous deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import otel_jobs
from otel_jobs.core import errors, stall_policy
from otel_jobs.core.run import OutboundCall, Run
from tests.support import agent_metrics, spans_named
from tests.support.series import runs_finished, stalls_detected
from tests.support.servers import SilentServer
from tests.support.threads import JobThread, here, in_thread, run_named
from tests.support.waiting import wait_for
from tests.watchdog.support import loop_in_thread

THIS_FILE = os.path.relpath(__file__)
DEADLINE = 60.0


@pytest.fixture
def agent(instrumented: Callable[..., Any]) -> Any:
    """The agent, instrumented for the test, its watchdog thread ticking every 0.1 s."""
    return instrumented(watchdog_interval=0.1)


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    with SilentServer() as server:
        yield server


def finished_span(exporter: InMemorySpanExporter, name: str) -> Any:
    return wait_for(
        name, lambda: next(iter(spans_named(exporter.get_finished_spans(), name)), None)
    )


# --- verdicts --------------------------------------------------------------------------------


def test_stalled_within_threshold_plus_one_tick_naming_function_and_line(
    instrumented: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Ticks are driven by hand here, so "within the threshold plus one tick" is exact: the
    # first tick after the threshold passed must give the verdict.
    agent = instrumented(watchdog=False, watchdog_interval=0.05)
    caplog.set_level(logging.INFO, logger="otel_jobs")
    release = threading.Event()
    lines: list[int] = []

    @otel_jobs.job(name="wd.waits", queue="wd", heartbeat_timeout=1.0)
    def waits_for_release() -> None:
        api_token = "tok-" + "9f2c41"  # a local the diagnosis must never show
        lines.append(here() + 1)
        release.wait()
        assert api_token

    thread = in_thread(waits_for_release)
    run = run_named(agent, "wd.waits")
    agent.watchdog.tick()
    if run.seconds_since_heartbeat() < 1.0:  # true unless this machine froze for a second
        assert run.verdict is None and run.diagnosis is None
    wait_for("the heartbeat timeout to pass", lambda: run.seconds_since_heartbeat() > 1.0)
    agent.watchdog.tick()
    assert run.verdict == "no_heartbeat"
    diagnosis = run.diagnosis
    assert diagnosis.where is not None
    assert diagnosis.where.function.endswith("waits_for_release")
    assert diagnosis.where.lineno == lines[0]
    assert diagnosis.where.path == THIS_FILE
    assert diagnosis.state == "blocked" and run.state == "blocked"
    assert diagnosis.waiting_in is not None and "wait" in diagnosis.waiting_in.function
    # User frames first, innermost call last; the worker's frames above are not shown.
    stack = diagnosis.stack.splitlines()
    assert stack[0].startswith("(") and "not shown" in stack[0]
    assert f"{THIS_FILE}:{lines[0]} in " in stack[1]
    assert stack[-1].strip() == str(diagnosis.waiting_in)
    assert "tok-9f2c41" not in diagnosis.stack  # code locations only, never a variable

    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "stalled" in r.getMessage()
    ]
    assert len(warnings) == 1
    record: Any = warnings[0]
    assert f"{THIS_FILE}:{lines[0]} in " in record.getMessage()
    assert "tok-9f2c41" not in record.getMessage()
    assert record.job_name == "wd.waits" and record.job_queue == "wd"
    assert record.stall_reason == "no_heartbeat" and record.stall_state == "blocked"
    assert record.stall_where == str(diagnosis.where)
    assert record.stall_policy == "observe"

    samples = agent_metrics()
    assert stalls_detected(samples, "wd.waits", "no_heartbeat") == 1
    assert samples.value("otel_jobs_runs_stalled", job_name="wd.waits", state="blocked") == 1
    assert samples.value("otel_jobs_runs_stalled", job_name="wd.waits", state="spinning") == 0
    assert samples.value("otel_jobs_watchdog_last_tick_timestamp_seconds") > 0

    agent.watchdog.tick()  # a standing verdict is not given twice
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    release.set()
    thread.join(DEADLINE)
    samples = agent_metrics()
    assert stalls_detected(samples, "wd.waits", "no_heartbeat") == 1
    assert samples.value("otel_jobs_runs_stalled", job_name="wd.waits", state="blocked") == 0


def test_stall_span_is_exported_while_the_run_is_in_flight(
    span_exporter: InMemorySpanExporter, agent: Any
) -> None:
    release = threading.Event()

    @otel_jobs.job(name="wd.hung", queue="wd", heartbeat_timeout=0.3)
    def hung() -> None:
        release.wait()

    thread = in_thread(hung)
    run = run_named(agent, "wd.hung")
    stall = finished_span(span_exporter, "wd.hung stalled")
    # The run is still stuck and its own span not exported: the stall span is what shows it.
    assert not run.finished and not spans_named(span_exporter.get_finished_spans(), "wd.hung")
    run_context = run.span.get_span_context()
    assert stall.kind == SpanKind.INTERNAL
    assert stall.parent is not None and stall.parent.span_id == run_context.span_id
    assert stall.context.trace_id == run_context.trace_id
    assert [link.context.span_id for link in stall.links] == [run_context.span_id]
    assert stall.status.status_code == StatusCode.ERROR
    attrs = stall.attributes
    assert attrs["job.name"] == "wd.hung" and attrs["job.queue"] == "wd"
    assert attrs["otel_jobs.stall.reason"] == "no_heartbeat"
    assert attrs["otel_jobs.stall.state"] == "blocked"
    assert attrs["code.function"].endswith("hung") and attrs["code.filepath"] == THIS_FILE
    assert "hung" in attrs["otel_jobs.stall.stack"]
    assert attrs["otel_jobs.stall.since_heartbeat_s"] > 0.3
    # The watchdog's own tick keeps advancing on /metrics.
    first = agent_metrics().value("otel_jobs_watchdog_last_tick_timestamp_seconds")
    wait_for(
        "another watchdog tick",
        lambda: agent_metrics().value("otel_jobs_watchdog_last_tick_timestamp_seconds") > first,
    )
    release.set()
    thread.join(DEADLINE)
    own = finished_span(span_exporter, "wd.hung")
    assert [e.name for e in own.events] == ["otel_jobs.stall"]
    assert own.attributes["job.outcome"] == "success"


def test_overran_verdict_despite_heartbeats(
    span_exporter: InMemorySpanExporter, agent: Any
) -> None:
    release = threading.Event()

    @otel_jobs.job(name="wd.long", max_duration=0.3, heartbeat_timeout=30)
    def long_but_alive() -> None:
        while not release.wait(0.02):
            otel_jobs.heartbeat()

    thread = in_thread(long_but_alive)
    run = run_named(agent, "wd.long")
    stall = finished_span(span_exporter, "wd.long overran")
    assert run.verdict == "max_duration"
    assert stall.attributes["otel_jobs.stall.reason"] == "max_duration"
    assert stall.attributes["otel_jobs.stall.threshold_s"] == 0.3
    samples = agent_metrics()
    assert stalls_detected(samples, "wd.long", "max_duration") == 1
    assert stalls_detected(samples, "wd.long", "no_heartbeat") == 0
    release.set()
    thread.join(DEADLINE)


# --- diagnosis: states and stacks --------------------------------------------------------------


def test_socket_wait_is_blocked_and_busy_loop_is_spinning(
    instrumented: Callable[..., Any], silent_server: SilentServer
) -> None:
    agent = instrumented(watchdog_interval=0.25)
    stop = threading.Event()
    lines: dict[str, int] = {}

    @otel_jobs.job(name="wd.socket", heartbeat_timeout=0.5)
    def read_from_silent_partner() -> bytes:
        with socket.create_connection(("127.0.0.1", silent_server.port)) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:
                lines["socket"] = here() + 1
                return conn.recv(1)  # never answers: no timeout
            except ConnectionResetError:  # the server closing at the end of the test
                return b""

    @otel_jobs.job(name="wd.spin", heartbeat_timeout=0.5)
    def dedupe_forever() -> int:
        seen = 0
        lines["spin"] = here() + 1
        while not stop.is_set():
            seen += 1
        return seen

    threads = [in_thread(read_from_silent_partner), in_thread(dedupe_forever)]
    blocked = run_named(agent, "wd.socket")
    spinning = run_named(agent, "wd.spin")
    wait_for("both verdicts", lambda: blocked.verdict and spinning.verdict)
    assert blocked.diagnosis.state == "blocked" and blocked.state == "blocked"
    assert blocked.diagnosis.cpu_ratio is not None and blocked.diagnosis.cpu_ratio < 0.2
    assert blocked.diagnosis.where.function.endswith("read_from_silent_partner")
    assert blocked.diagnosis.where.lineno == lines["socket"]
    assert spinning.diagnosis.where.function.endswith("dedupe_forever")
    # The looping line, or the Event.is_set it calls, depending on where the look caught it.
    assert spinning.diagnosis.where.lineno in (lines["spin"], lines["spin"] + 1)
    # The state is looked at again each tick while the verdict stands; a busy loop burns CPU.
    wait_for("the busy loop to be seen spinning", lambda: spinning.state == "spinning")
    assert blocked.state == "blocked"
    stop.set()
    silent_server.close()
    for thread in threads:
        thread.join(DEADLINE)


def test_outbound_call_in_flight_is_part_of_the_diagnosis(
    silent_server: SilentServer, span_exporter: InMemorySpanExporter, agent: Any
) -> None:
    host = f"127.0.0.1:{silent_server.port}"

    @otel_jobs.job(name="wd.partner", heartbeat_timeout=0.3)
    def call_partner() -> None:
        run = otel_jobs.current_run()
        assert run is not None
        # What an outbound adapter records around a call (see otel_jobs.outbound).
        call = OutboundCall("socket", "RECV", host, ("read",), f"{__name__}:call_partner:{here()}")
        run.calls.append(call)
        try:
            with socket.create_connection(("127.0.0.1", silent_server.port)) as conn:
                conn.recv(1)
        except ConnectionResetError:  # the server closing at the end of the test
            pass
        finally:
            run.calls.remove(call)

    thread = in_thread(call_partner)
    run = run_named(agent, "wd.partner")
    stall = finished_span(span_exporter, "wd.partner stalled")
    call = run.diagnosis.call
    assert call["library"] == "socket" and call["host"] == host
    assert call["has_timeout"] is False and call["missing_timeout"] == ["read"]
    assert call["elapsed"] > 0
    assert stall.attributes["otel_jobs.stall.call.host"] == host
    assert stall.attributes["otel_jobs.stall.call.has_timeout"] is False
    assert "no read timeout" in stall.attributes["otel_jobs.stall.summary"]
    silent_server.close()
    thread.join(DEADLINE)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    with loop_in_thread("test-loop") as (loop, _):
        yield loop


def test_asyncio_run_stack_shows_its_coroutine_chain(
    span_exporter: InMemorySpanExporter, agent: Any, loop: asyncio.AbstractEventLoop
) -> None:
    lines: list[int] = []

    async def fetch_page(never: asyncio.Event) -> None:
        lines.append(here() + 1)
        await never.wait()

    @otel_jobs.job(name="wd.crawl", heartbeat_timeout=0.3)
    async def crawl() -> None:
        await fetch_page(asyncio.Event())

    future = asyncio.run_coroutine_threadsafe(crawl(), loop)
    run = run_named(agent, "wd.crawl")
    finished_span(span_exporter, "wd.crawl stalled")
    diagnosis = run.diagnosis
    assert diagnosis.asyncio
    functions = [f.function for f in diagnosis.frames]
    outer = next(i for i, f in enumerate(functions) if f.endswith("crawl"))
    inner = next(i for i, f in enumerate(functions) if f.endswith("fetch_page"))
    assert outer < inner  # the chain, outermost first
    assert diagnosis.where.function.endswith("fetch_page") and diagnosis.where.lineno == lines[0]
    assert "Event.wait" in str(diagnosis.waiting_in)
    # A suspended task shares its loop's thread with other tasks: its CPU is not its own.
    assert diagnosis.state == "unknown" and run.state == "unknown"
    future.cancel()
    wait_for("the cancelled coroutine to finish", lambda: run.finished)


def test_coroutine_blocking_its_loop_is_measured_like_a_thread(
    agent: Any, loop: asyncio.AbstractEventLoop
) -> None:
    release = threading.Event()
    lines: list[int] = []

    @otel_jobs.job(name="wd.blocks_loop", heartbeat_timeout=0.3)
    async def blocks_the_loop() -> None:
        await asyncio.sleep(0)
        lines.append(here() + 1)
        release.wait()  # a blocking call inside a coroutine: the whole loop waits

    future = asyncio.run_coroutine_threadsafe(blocks_the_loop(), loop)
    run = run_named(agent, "wd.blocks_loop")
    wait_for("the verdict", lambda: run.verdict)
    assert run.diagnosis.asyncio and run.diagnosis.state == "blocked"
    assert run.diagnosis.where.function.endswith("blocks_the_loop")
    assert run.diagnosis.where.lineno == lines[0]
    release.set()
    future.result(DEADLINE)


# --- heartbeats and recovery -----------------------------------------------------------------------


def test_heartbeats_keep_a_long_run_healthy(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    agent = instrumented(watchdog_interval=0.05)
    ticks_before = agent.watchdog.ticks

    @otel_jobs.job(name="wd.beating", heartbeat_timeout=1.0)
    def long_run() -> None:
        started = time.monotonic()
        while time.monotonic() - started < 2.5:  # well past its heartbeat timeout
            time.sleep(0.02)
            otel_jobs.heartbeat()

    long_run()
    assert agent.watchdog.ticks - ticks_before >= 5  # it was watched all along
    assert agent_metrics().total("otel_jobs_stalls_detected_total", job_name="wd.beating") == 0
    own = finished_span(span_exporter, "wd.beating")
    assert own.events == () or list(own.events) == []
    assert not spans_named(span_exporter.get_finished_spans(), "wd.beating stalled")


def test_resuming_heartbeats_clears_the_verdict(
    span_exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture, agent: Any
) -> None:
    caplog.set_level(logging.INFO, logger="otel_jobs")
    resume, done = threading.Event(), threading.Event()

    @otel_jobs.job(name="wd.resumes", queue="wd", heartbeat_timeout=0.5)
    def pauses_then_resumes() -> None:
        resume.wait()
        while not done.wait(0.02):
            otel_jobs.heartbeat()

    thread = in_thread(pauses_then_resumes)
    run = run_named(agent, "wd.resumes")
    wait_for("the stalled verdict", lambda: run.verdict == "no_heartbeat")
    samples = agent_metrics()
    assert samples.value("otel_jobs_runs_stalled", job_name="wd.resumes", state="blocked") == 1
    resume.set()
    wait_for("the verdict to clear", lambda: run.verdict is None)
    assert run.state is None and run.diagnosis is None
    samples = agent_metrics()
    assert samples.total("otel_jobs_runs_stalled", job_name="wd.resumes") == 0
    assert stalls_detected(samples, "wd.resumes", "no_heartbeat") == 1
    recovered = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert len(recovered) == 1 and recovered[0].levelno == logging.INFO
    done.set()
    thread.join(DEADLINE)
    own = finished_span(span_exporter, "wd.resumes")
    events = [e.name for e in own.events]
    assert events == ["otel_jobs.stall", "otel_jobs.stall.recovered"]
    assert own.events[1].attributes["otel_jobs.stall.reason"] == "no_heartbeat"
    assert own.attributes["job.outcome"] == "success"


# --- policies -----------------------------------------------------------------------------------


def test_cancel_ends_a_looping_run_with_timeout_and_the_thread_runs_the_next_job(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    instrumented(watchdog_interval=0.1)
    worker = JobThread()

    @otel_jobs.job(name="wd.loops", heartbeat_timeout=0.3, on_stall="cancel")
    def loops_forever() -> None:
        n = 0
        while n >= 0:
            n += 1

    @otel_jobs.job(name="wd.next")
    def next_job() -> int:
        return threading.get_ident()

    worker.jobs.put(loops_forever)
    worker.jobs.put(next_job)
    status, exc, ident = worker.result()
    assert status == "raised" and isinstance(exc, otel_jobs.JobTimeoutError)
    assert ident == worker.thread.ident
    status, value, ident = worker.result()
    assert status == "ok" and value == worker.thread.ident == ident
    cancelled = finished_span(span_exporter, "wd.loops")
    assert cancelled.attributes["job.outcome"] == "timeout"
    assert cancelled.status.status_code == StatusCode.ERROR
    assert finished_span(span_exporter, "wd.next").attributes["job.outcome"] == "success"
    stall = finished_span(span_exporter, "wd.loops stalled")
    assert stall.attributes["otel_jobs.stall.policy"] == "cancel"
    samples = agent_metrics()
    assert runs_finished(samples, "wd.loops", "timeout") == 1
    assert runs_finished(samples, "wd.next", "success") == 1
    worker.stop()


def test_cancel_never_lands_in_the_next_job_of_the_thread(instrumented: Callable[..., Any]) -> None:
    # The race the guard closes, made deterministic: the watchdog acts on a run that has
    # just finished while its thread already runs the next job.
    agent = instrumented(watchdog=False)
    worker = JobThread()
    release = threading.Event()
    runs: list[Run] = []

    @otel_jobs.job(name="wd.first")
    def first() -> None:
        run = otel_jobs.current_run()
        assert run is not None
        runs.append(run)

    @otel_jobs.job(name="wd.second")
    def second() -> str:
        release.wait()
        return "completed"

    worker.jobs.put(first)
    assert worker.result()[0] == "ok"
    worker.jobs.put(second)
    run_named(agent, "wd.second")
    assert stall_policy.cancel_thread(agent, runs[0]) is False
    assert not runs[0].cancelled_by_watchdog
    release.set()
    assert worker.result()[:2] == ("ok", "completed")
    worker.stop()


def test_a_cancel_landing_in_an_adapters_hook_finishes_the_run_as_timeout(
    instrumented: Callable[..., Any],
) -> None:
    # An adapter finishes its run from a hook guarded by otel-jobs (a framework's "task ended"
    # signal). The watchdog's cancel, raised asynchronously in the run's thread, can land in
    # that hook before it finishes the run: the run must not stay in flight, and the exception
    # is not an internal error. Made deterministic: the cancel is raised in the hook itself.
    from otel_jobs.core import errors

    agent = instrumented(watchdog=False, frameworks=[], outbound=[])
    run = agent.start_run("adapter.task", queue="q", job_id="t-9", framework="test")
    run.activate()
    before = errors.counts()

    @errors.guarded("integration.test")
    def on_task_success() -> None:
        assert stall_policy.cancel_thread(agent, run) is True
        for _ in range(1000):  # bytecode: the pending exception is raised here
            pass
        run.finish("success")  # never reached

    try:
        on_task_success()
        assert run.finished
        assert run not in agent.runs()
        assert errors.counts() == before
        m = agent_metrics()
        assert runs_finished(m, "adapter.task", "timeout", queue="q") == 1
        assert m.value("otel_jobs_runs_in_progress", job_name="adapter.task", queue="q") == 0
    finally:
        run.deactivate()


def test_cancel_an_asyncio_run(
    instrumented: Callable[..., Any],
    span_exporter: InMemorySpanExporter,
    loop: asyncio.AbstractEventLoop,
) -> None:
    instrumented(watchdog_interval=0.1)

    @otel_jobs.job(name="wd.async_stuck", heartbeat_timeout=0.3, on_stall="cancel")
    async def awaits_forever() -> None:
        await asyncio.Event().wait()

    async def still_alive() -> str:
        await asyncio.sleep(0)
        return "loop still runs"

    future = asyncio.run_coroutine_threadsafe(awaits_forever(), loop)
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(DEADLINE)
    cancelled = finished_span(span_exporter, "wd.async_stuck")
    assert cancelled.attributes["job.outcome"] == "timeout"
    assert (
        asyncio.run_coroutine_threadsafe(still_alive(), loop).result(DEADLINE) == "loop still runs"
    )


# --- the watchdog protects itself -------------------------------------------------------------


class CorruptThresholdError(Exception):
    """Raised by a threshold that cannot be compared: a fault inside the watchdog's tick."""


class _CorruptThreshold:
    def __radd__(self, other: object) -> float:
        raise CorruptThresholdError("threshold is corrupt")

    __add__ = __radd__


@pytest.mark.internal_errors("watchdog")
def test_watchdog_survives_an_exception_in_its_tick(
    instrumented: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    agent = instrumented(watchdog_interval=0.05)
    caplog.set_level(logging.INFO, logger="otel_jobs")
    broken = agent.start_run("wd.broken")
    broken.max_duration = _CorruptThreshold()  # type: ignore[assignment]
    before = errors.counts().get("watchdog", 0)
    release = threading.Event()

    @otel_jobs.job(name="wd.stuck_next_to_broken", heartbeat_timeout=0.3)
    def stuck() -> None:
        release.wait()

    thread = in_thread(stuck)
    good = run_named(agent, "wd.stuck_next_to_broken")
    # Every tick hits the fault; the thread logs it once, counts each, and still does its work.
    wait_for("five faulty ticks", lambda: errors.counts().get("watchdog", 0) - before >= 5)
    wait_for("the verdict of the healthy stuck run", lambda: good.verdict == "no_heartbeat")
    assert agent.watchdog.running
    logged = [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and "CorruptThresholdError" in r.getMessage()
    ]
    assert len(logged) == 1 and "watchdog" in logged[0].getMessage()
    ticks = agent.watchdog.ticks
    wait_for("more ticks", lambda: agent.watchdog.ticks > ticks + 2)
    assert agent_metrics().value("otel_jobs_internal_errors_total", component="watchdog") >= 5
    release.set()
    thread.join(DEADLINE)
    broken.finish()


def test_a_deep_stack_is_bounded_and_keeps_the_innermost_frames(agent: Any) -> None:
    from otel_jobs.core.diagnosis import MAX_FRAMES, MAX_STACK_CHARS

    release = threading.Event()
    lines: list[int] = []

    # Two functions calling each other: no frame repeats the one above it.
    def ping(depth: int) -> None:
        if depth:
            pong(depth - 1)
            return
        lines.append(here() + 1)
        release.wait()

    def pong(depth: int) -> None:
        ping(depth - 1)

    @otel_jobs.job(name="wd.deep", heartbeat_timeout=0.3)
    def deep() -> None:
        ping(300)

    thread = in_thread(deep)
    run = run_named(agent, "wd.deep")
    wait_for("the verdict", lambda: run.verdict)
    diagnosis = run.diagnosis
    assert len(diagnosis.frames) > 300  # all were read (code locations only) ...
    shown = diagnosis.stack.splitlines()
    assert len(shown) <= MAX_FRAMES + 3 and len(diagnosis.stack) <= MAX_STACK_CHARS  # ... few shown
    assert diagnosis.where.function.endswith("ping") and diagnosis.where.lineno == lines[0]
    assert any("frames ..." in line for line in shown)  # what was left out is said
    assert shown[-1].strip() == str(diagnosis.waiting_in)  # the innermost call last
    release.set()
    thread.join(DEADLINE)


def test_recursion_is_said_once() -> None:
    from otel_jobs.core.diagnosis import Frame, render

    frames = [Frame("jobs.py", 10, "walk", True)] * 250 + [Frame("jobs.py", 12, "walk", True)]
    text, where, waiting_in = render(frames)
    assert text.splitlines() == [
        "  jobs.py:10 in walk",
        "  jobs.py:10 in walk",
        "  jobs.py:10 in walk",
        "    [the frame above repeated 247 more times]",
        "  jobs.py:12 in walk",
    ]
    assert where == frames[-1] and waiting_in is None

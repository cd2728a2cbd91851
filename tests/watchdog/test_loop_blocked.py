"""Event loops held by synchronous work: lag, blocked time and the ``loop_blocked`` verdict.

Real asyncio loops in real threads running async ``@job`` runs, the real watchdog, the real
``/metrics`` endpoint parsed with prometheus-client's parser and the real SDK. Nothing is
timed: every wait polls a condition with a generous deadline, and the thresholds below only
decide when a verdict is due, never how fast anything ran.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_jobs
from otel_jobs.core.watchdog import Watchdog
from tests.support import Samples, agent_metrics, otel_points, spans_named
from tests.support.series import registry_total
from tests.support.threads import TickCounter
from tests.watchdog.support import DEADLINE, LOOP_THREAD, here, run_named, wait_for

THREAD = LOOP_THREAD  # the loop fixture's


@pytest.fixture
def agent(instrumented: Callable[..., Any]) -> Any:
    """The agent, its watchdog ticking every 0.1 s and giving the loop_blocked verdict to a run
    whose loop has run nothing for 0.5 s."""
    return instrumented(watchdog_interval=0.1, loop_blocked_timeout=0.5)


def lag_count(samples: Samples, le: str | None = None) -> float:
    if le is None:
        return samples.total("otel_jobs_event_loop_lag_seconds_count", thread=THREAD)
    return samples.total("otel_jobs_event_loop_lag_seconds_bucket", thread=THREAD, le=le)


async def until(event: threading.Event) -> None:
    """A coroutine that keeps its loop free while it waits (it awaits between looks)."""
    while not event.is_set():
        await asyncio.sleep(0.02)


def waiting_runs(
    agent: Any, loop: asyncio.AbstractEventLoop, name: str, count: int, done: threading.Event
) -> tuple[list[Any], Any]:
    """``count`` runs of an async job ``name`` started on ``loop``, each awaiting ``done``
    (the loop stays free): their futures, and the oldest run once all are in flight."""

    @otel_jobs.job(name=name, heartbeat_timeout=120)
    async def waiting() -> None:
        await until(done)

    futures = [asyncio.run_coroutine_threadsafe(waiting(), loop) for _ in range(count)]
    wait_for(f"{count} runs", lambda: len([r for r in agent.runs() if r.name == name]) == count)
    return futures, min(agent.runs(), key=lambda r: r.start_mono)


def test_a_coroutine_blocking_its_loop_gets_the_verdict_naming_its_line_and_the_runs_held_up(
    span_exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
    loop: asyncio.AbstractEventLoop,
    agent: Any,
) -> None:
    caplog.set_level(logging.INFO, logger="otel_jobs")
    release, done = threading.Event(), threading.Event()
    lines: list[int] = []

    @otel_jobs.job(name="lb.waiting", queue="async", heartbeat_timeout=120)
    async def waiting() -> None:
        await until(done)

    @otel_jobs.job(name="lb.blocks_its_loop", queue="async", heartbeat_timeout=120)
    async def blocks_its_loop() -> None:
        await asyncio.sleep(0)
        lines.append(here() + 1)
        release.wait()  # synchronous: nothing else on the loop runs meanwhile
        await until(done)  # the loop runs again, the run stays in flight

    futures = [asyncio.run_coroutine_threadsafe(waiting(), loop) for _ in range(2)]
    held = [run_named(agent, "lb.waiting")]
    held = wait_for(
        "both waiting runs",
        lambda: (
            [r for r in agent.runs() if r.name == "lb.waiting"][1:]
            and [r for r in agent.runs() if r.name == "lb.waiting"]
        ),
    )
    wait_for("a probe answered by the free loop", lambda: lag_count(agent_metrics()) >= 2)
    futures.append(asyncio.run_coroutine_threadsafe(blocks_its_loop(), loop))
    blocker = run_named(agent, "lb.blocks_its_loop")
    wait_for("the loop_blocked verdict", lambda: blocker.verdict == "loop_blocked")

    diagnosis = blocker.diagnosis
    assert diagnosis.reason == "loop_blocked" and diagnosis.verdict == "loop blocked"
    assert diagnosis.where.function.endswith("blocks_its_loop")
    assert diagnosis.where.lineno == lines[0]
    assert diagnosis.state == "blocked"  # Event.wait uses no CPU
    assert diagnosis.loop["thread"] == THREAD
    assert diagnosis.loop["blocked_s"] > 0.5
    assert diagnosis.loop["culprit"] == {
        "job_name": "lb.blocks_its_loop",
        "job_id": str(blocker.key),
    }
    assert sorted(r["job_id"] for r in diagnosis.loop["held_up"]) == sorted(
        str(r.key) for r in held
    )
    assert all(r.verdict is None for r in held)  # one verdict, on the run holding the loop
    summary = diagnosis.summary()
    assert f"its event loop (thread {THREAD}) has run nothing for" in summary
    assert "this run holds the loop; runs held up: run" in summary
    assert "waiting on a threading.Event without a timeout" in summary

    while_blocked = agent_metrics()
    assert (
        while_blocked.value(
            "otel_jobs_stalls_detected_total",
            job_name="lb.blocks_its_loop",
            queue="async",
            reason="loop_blocked",
        )
        == 1
    )
    assert (
        while_blocked.value(
            "otel_jobs_runs_stalled", job_name="lb.blocks_its_loop", queue="async", state="blocked"
        )
        == 1
    )
    assert while_blocked.value("otel_jobs_event_loop_blocked_seconds", thread=THREAD) > 0.5
    warning = next(r for r in caplog.records if getattr(r, "stall_reason", None) == "loop_blocked")
    assert warning.stall_loop["held_up"] == diagnosis.loop["held_up"]
    span = wait_for(
        "the stall span",
        lambda: next(
            iter(
                spans_named(span_exporter.get_finished_spans(), "lb.blocks_its_loop loop blocked")
            ),
            None,
        ),
    )
    assert span.attributes["otel_jobs.stall.reason"] == "loop_blocked"
    assert span.attributes["code.lineno"] == lines[0]
    assert sorted(span.attributes["otel_jobs.stall.loop.held_up_job_names"]) == ["lb.waiting"] * 2

    release.set()  # the loop runs again: the verdict clears
    wait_for("the verdict to clear", lambda: blocker.verdict is None)
    recovered = wait_for(
        "the recovery record",
        lambda: next((r for r in caplog.records if getattr(r, "stall_recovered", False)), None),
    )
    assert "its event loop runs again" in recovered.getMessage()
    after = wait_for(
        "the blocked gauge back to 0",
        lambda: (
            (s := agent_metrics()).value("otel_jobs_event_loop_blocked_seconds", thread=THREAD) == 0
            and s
        ),
    )
    assert (
        after.value(
            "otel_jobs_runs_stalled", job_name="lb.blocks_its_loop", queue="async", state="blocked"
        )
        == 0
    )
    # The lag histogram holds the probe that waited for the blocked loop: above 0.5 s.
    assert lag_count(after) > lag_count(after, le="0.5")
    done.set()
    for future in futures:
        future.result(DEADLINE)


def test_a_cpu_loop_in_a_coroutine_is_spinning(loop: asyncio.AbstractEventLoop, agent: Any) -> None:
    release = threading.Event()
    lines: list[int] = []

    @otel_jobs.job(name="lb.spins", heartbeat_timeout=120)
    async def spins() -> int:
        await asyncio.sleep(0)
        total = 0
        lines.append(here() + 1)
        while not release.is_set():
            total += 1
        return total

    future = asyncio.run_coroutine_threadsafe(spins(), loop)
    try:
        run = run_named(agent, "lb.spins")
        wait_for("the loop_blocked verdict", lambda: run.verdict == "loop_blocked")
        assert run.diagnosis.where.function.endswith("spins")
        assert run.diagnosis.where.lineno in (lines[0], lines[0] + 1)
        assert run.diagnosis.loop["held_up"] == []
        # The loop thread's CPU is looked at again each tick while the verdict stands (on a
        # loaded machine the first look may find it waiting for a core).
        wait_for("the CPU loop to be seen spinning", lambda: run.state == "spinning")
    finally:
        release.set()
    future.result(DEADLINE)


def test_code_outside_any_run_blocking_the_loop_is_reported_on_the_oldest_run(
    loop: asyncio.AbstractEventLoop, agent: Any
) -> None:
    release, done = threading.Event(), threading.Event()
    futures, oldest = waiting_runs(agent, loop, "lb.innocent", 2, done)
    line = here() + 1
    loop.call_soon_threadsafe(lambda: release.wait())  # a callback of no run holds the loop
    wait_for("the verdict on the oldest run", lambda: oldest.verdict == "loop_blocked")
    diagnosis = oldest.diagnosis
    assert diagnosis.loop["culprit"] is None
    assert "code outside any run holds the loop" in diagnosis.summary()
    assert diagnosis.where.lineno == line  # the loop thread's stack: the callback's line
    assert len(diagnosis.loop["held_up"]) == 1
    assert [r for r in agent.runs() if r.verdict is not None] == [oldest]
    release.set()
    wait_for("the verdict to clear", lambda: oldest.verdict is None)
    done.set()
    for future in futures:
        future.result(DEADLINE)


def test_a_busy_but_responsive_loop_never_gets_the_verdict(
    instrumented: Callable[..., Any],
    loop: asyncio.AbstractEventLoop,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = instrumented(watchdog_interval=0.1, loop_blocked_timeout=1.0)
    done = threading.Event()

    async def burst_worker() -> None:
        while not done.is_set():
            end = time.perf_counter() + 0.002
            while time.perf_counter() < end:  # 2 ms of CPU, then the loop's turn
                pass
            await asyncio.sleep(0)

    @otel_jobs.job(name="lb.busy", heartbeat_timeout=120)
    async def busy() -> None:
        await asyncio.gather(*(burst_worker() for _ in range(10)))

    before = lag_count(agent_metrics())
    future = asyncio.run_coroutine_threadsafe(busy(), loop)
    run = run_named(agent, "lb.busy")
    ticks = TickCounter(agent.watchdog, monkeypatch)
    wait_for("forty ticks of the busy loop", lambda: ticks.count >= 40)
    samples = agent_metrics()
    assert lag_count(samples) - before >= 20  # it was probed all along, and answered
    assert run.verdict is None and run.diagnosis is None
    assert samples.total("otel_jobs_stalls_detected_total", job_name="lb.busy") == 0
    done.set()
    future.result(DEADLINE)


def test_a_stopped_loop_is_not_blocked_and_its_pause_is_no_lag(
    monkeypatch: pytest.MonkeyPatch, agent: Any
) -> None:
    ticks = TickCounter(agent.watchdog, monkeypatch)
    paused_loop = asyncio.new_event_loop()

    @otel_jobs.job(name="lb.paused", heartbeat_timeout=120)
    async def paused() -> None:
        start = ticks.count
        while ticks.count < start + 3:  # a probe is sent while this holds the loop
            time.sleep(0.01)
        asyncio.get_running_loop().stop()  # ... and the loop stops before it could answer
        await asyncio.sleep(0)  # the run stays in flight until the loop runs again
        await asyncio.sleep(0.5)  # ... and then goes on a while with a loop that is free

    label = threading.current_thread().name
    try:
        task = paused_loop.create_task(paused())
        paused_loop.run_forever()
        run = run_named(agent, "lb.paused")
        start = ticks.count
        wait_for("thirty ticks while stopped", lambda: ticks.count >= start + 30)
        assert run.verdict is None
        assert agent_metrics().value("otel_jobs_event_loop_blocked_seconds", thread=label) == 0
        paused_loop.run_until_complete(task)
        start = ticks.count
        wait_for("ticks after the run", lambda: ticks.count >= start + 3)
    finally:
        paused_loop.close()
    samples = agent_metrics()
    total = samples.total("otel_jobs_event_loop_lag_seconds_count", thread=label)
    assert total >= 1
    # The three seconds the loop was stopped were never counted as lag.
    assert samples.total("otel_jobs_event_loop_lag_seconds_bucket", thread=label, le="2.5") == total
    assert samples.total("otel_jobs_stalls_detected_total", job_name="lb.paused") == 0


def test_a_held_up_run_stalled_first_says_its_loop_is_blocked_and_by_whom(
    instrumented: Callable[..., Any], loop: asyncio.AbstractEventLoop
) -> None:
    """A deadline verdict comes first; its diagnosis then says the loop is held, and by which run."""
    agent = instrumented(watchdog_interval=0.1, loop_blocked_timeout=120)
    release, done, holding_now = threading.Event(), threading.Event(), threading.Event()

    @otel_jobs.job(name="lb.held_up", heartbeat_timeout=0.5)
    async def held_up() -> None:
        while not done.is_set():
            if not holding_now.is_set():  # its last heartbeat: just before the loop is taken
                otel_jobs.heartbeat()
            await asyncio.sleep(0.02)

    @otel_jobs.job(name="lb.holder", heartbeat_timeout=120)
    async def holder() -> None:
        await asyncio.sleep(0)
        holding_now.set()
        release.wait()
        await until(done)

    futures = [asyncio.run_coroutine_threadsafe(held_up(), loop)]
    try:
        waiting = run_named(agent, "lb.held_up")
        wait_for("a probe answered by the free loop", lambda: lag_count(agent_metrics()) >= 1)
        futures.append(asyncio.run_coroutine_threadsafe(holder(), loop))
        holding = run_named(agent, "lb.holder")
        wait_for("the held-up run's stall", lambda: waiting.verdict == "no_heartbeat")
        diagnosis = waiting.diagnosis
        assert diagnosis.loop is not None
        assert diagnosis.loop["culprit"] == {"job_name": "lb.holder", "job_id": str(holding.key)}
        assert f"its event loop (thread {THREAD}) has run nothing for" in diagnosis.summary()
        assert f"by run {holding.key} of lb.holder" in diagnosis.summary()
        assert holding.verdict is None  # its loop_blocked_timeout (120 s) has not passed
    finally:
        release.set()
        done.set()
    for future in futures:
        future.result(DEADLINE)


def test_lag_and_blocked_time_are_opentelemetry_instruments_too(
    instrumented: Callable[..., Any],
    metric_reader: InMemoryMetricReader,
    loop: asyncio.AbstractEventLoop,
) -> None:
    agent = instrumented(watchdog_interval=0.1)
    done = threading.Event()

    @otel_jobs.job(name="lb.otel", heartbeat_timeout=120)
    async def job() -> None:
        await until(done)

    future = asyncio.run_coroutine_threadsafe(job(), loop)
    run_named(agent, "lb.otel")
    wait_for("three probes answered", lambda: lag_count(agent_metrics()) >= 3)
    seen: dict[str, Any] = {}
    for metric, point in otel_points(metric_reader):
        if point.attributes.get("thread") == THREAD:
            seen[f"{metric.name} {metric.unit}"] = point
    lag = seen["otel_jobs.event_loop.lag s"]
    assert lag.count >= 3 and list(lag.explicit_bounds)[:2] == [0.001, 0.0025]
    assert seen["otel_jobs.event_loop.blocked s"].value >= 0
    done.set()
    future.result(DEADLINE)


def test_a_coroutine_waiting_in_a_selector_of_its_own_is_no_idle_loop(
    loop: asyncio.AbstractEventLoop, agent: Any
) -> None:
    """An idle loop (its thread in its selector, called by the loop) is not woken by the probe;
    a coroutine blocked in a selector it called itself (as subprocess.run does) holds the loop."""
    import os
    import selectors

    release = threading.Event()
    lines: list[int] = []

    @otel_jobs.job(name="lb.own_selector", heartbeat_timeout=120)
    async def own_selector() -> None:
        await asyncio.sleep(0)
        read_end, write_end = os.pipe()
        with selectors.DefaultSelector() as selector:
            selector.register(read_end, selectors.EVENT_READ)
            while not release.is_set():
                lines.append(here() + 1)
                selector.select(timeout=0.05)  # nothing is ever written: it waits, synchronously
        os.close(read_end)
        os.close(write_end)

    future = asyncio.run_coroutine_threadsafe(own_selector(), loop)
    try:
        run = run_named(agent, "lb.own_selector")
        wait_for("the loop_blocked verdict", lambda: run.verdict == "loop_blocked")
        assert run.diagnosis.where.lineno == lines[0]
    finally:
        release.set()
    future.result(DEADLINE)


def stalled_runs(agent: Any, job_name: str, state: str) -> float:
    """``otel_jobs_runs_stalled{job_name, state}`` as the registry has it now."""
    return registry_total(agent, "otel_jobs_runs_stalled", job_name=job_name, state=state)


def test_the_oldest_run_given_the_verdict_keeps_the_state_of_the_loops_thread(
    instrumented: Callable[..., Any], loop: asyncio.AbstractEventLoop
) -> None:
    """The run given a loop_blocked verdict for code outside any run is suspended at an await:
    its state is the loop thread's, at the verdict and at every tick after it (it read
    ``unknown`` from the second tick on). The watchdog is ticked by hand on a controlled clock."""
    agent = instrumented(
        watchdog=False, prometheus=False, frameworks=[], outbound=[], loop_blocked_timeout=5
    )
    holding, release, done = threading.Event(), threading.Event(), threading.Event()
    futures, oldest = waiting_runs(agent, loop, "lb.suspended", 2, done)

    def holds_the_loop() -> None:
        holding.set()
        release.wait()  # no CPU: the loop's thread is blocked

    now = [time.monotonic()]
    watchdog = Watchdog(agent, clock=lambda: now[0])
    try:
        loop.call_soon_threadsafe(holds_the_loop)
        holding.wait(DEADLINE)
        watchdog.tick()  # the probe is sent to the held loop
        now[0] += 6  # past the loop_blocked_timeout: the verdict, on the oldest run
        watchdog.tick()
        assert oldest.verdict == "loop_blocked" and oldest.diagnosis.loop["culprit"] is None
        for _ in range(3):  # the state is looked at again at each tick: the loop thread's
            now[0] += 1
            watchdog.tick()
            assert oldest.verdict == "loop_blocked"
            assert oldest.state == "blocked"
            assert stalled_runs(agent, "lb.suspended", "blocked") == 1
            assert stalled_runs(agent, "lb.suspended", "unknown") == 0
    finally:
        release.set()
        done.set()
    for future in futures:
        future.result(DEADLINE)

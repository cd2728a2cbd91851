"""What a stuck run waits on: locks, events, queues, with or without a timeout, and who holds it.

Real threads blocked on the real ``threading``, ``queue`` and ``asyncio`` objects, the real
watchdog and SDK. Nothing is timed: every wait polls a condition with a generous deadline.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_jobs
from otel_jobs.core import errors, waits
from otel_jobs.core.stacks import frame_of
from tests.support import spans_named
from tests.watchdog.support import DEADLINE, here, run_named, wait_for

RLOCK_A = threading.RLock()
RLOCK_B = threading.RLock()


class Holder:
    """An object keeping its lock in a slot, as application classes do."""

    __slots__ = ("lock", "simple_queue")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.simple_queue: queue.SimpleQueue[int] = queue.SimpleQueue()


def test_two_runs_deadlocked_on_two_rlocks_name_each_other(
    span_exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture, agent: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="otel_jobs")
    both_hold = threading.Barrier(2, timeout=DEADLINE)
    lines: dict[str, int] = {}

    @otel_jobs.job(name="dl.transfer_in", queue="ledger", heartbeat_timeout=0.4)
    def transfer_in() -> None:
        with RLOCK_A:
            both_hold.wait()
            lines["in"] = here() + 1
            with RLOCK_B:
                pass

    @otel_jobs.job(name="dl.transfer_out", queue="ledger", heartbeat_timeout=0.4)
    def transfer_out() -> None:
        with RLOCK_B:
            both_hold.wait()
            lines["out"] = here() + 1
            RLOCK_A.acquire()

    for job in (transfer_in, transfer_out):
        threading.Thread(target=job, daemon=True).start()
    run_in, run_out = run_named(agent, "dl.transfer_in"), run_named(agent, "dl.transfer_out")
    wait_for("both verdicts", lambda: run_in.diagnosis and run_out.diagnosis)

    for run, other, line in ((run_in, run_out, lines["in"]), (run_out, run_in, lines["out"])):
        wait = run.diagnosis.wait
        assert run.diagnosis.where.lineno == line
        assert wait["kind"] == "threading.RLock" and wait["timeout"] is False
        assert wait["holder"]["job_name"] == other.name
        assert wait["holder"]["job_id"] == str(other.key)
        assert [d["job_name"] for d in wait["deadlock"]] == [other.name]
        summary = run.diagnosis.summary()
        assert "waiting on a threading.RLock without a timeout" in summary
        assert (
            f"deadlock: this run waits on run {other.key} of {other.name}, which waits on this run"
            in summary
        )
    # A verdict is set under the watchdog's lock and logged after it: wait for both records.
    wait_for(
        "both stall warnings",
        lambda: (
            {"dl.transfer_in", "dl.transfer_out"}
            <= {r.job_name for r in caplog.records if hasattr(r, "stall_wait")}
        ),
    )
    records = {r.job_name: r for r in caplog.records if hasattr(r, "stall_wait")}
    assert records["dl.transfer_in"].stall_wait["holder"]["job_name"] == "dl.transfer_out"
    assert records["dl.transfer_out"].stall_wait["holder"]["job_name"] == "dl.transfer_in"
    span = wait_for(
        "the stall span",
        lambda: next(
            iter(spans_named(span_exporter.get_finished_spans(), "dl.transfer_in stalled")), None
        ),
    )
    attrs = dict(span.attributes)
    assert attrs["otel_jobs.stall.wait.kind"] == "threading.RLock"
    assert attrs["otel_jobs.stall.wait.has_timeout"] is False
    assert attrs["otel_jobs.stall.wait.deadlock"] is True
    assert attrs["otel_jobs.stall.wait.holder_job_name"] == "dl.transfer_out"
    # The deadlock is real: both stay where they are (the test leaves them as daemon threads).
    assert not run_in.finished and not run_out.finished


def test_a_lock_held_by_a_thread_outside_any_run_is_no_deadlock(agent: Any) -> None:
    lock = threading.RLock()
    taken, release = threading.Event(), threading.Event()

    def plain_thread() -> None:
        with lock:
            taken.set()
            release.wait()

    holder = threading.Thread(target=plain_thread, name="cache-refresher", daemon=True)
    holder.start()
    assert taken.wait(DEADLINE)

    @otel_jobs.job(name="waits.behind_a_thread", heartbeat_timeout=0.3)
    def job() -> None:
        lock.acquire()
        lock.release()

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    run = run_named(agent, "waits.behind_a_thread")
    wait_for("the verdict", lambda: run.diagnosis)
    wait = run.diagnosis.wait
    assert wait["holder"] == {"thread": "cache-refresher", "job_name": None, "job_id": None}
    assert wait["deadlock"] is None
    assert "held by thread cache-refresher" in run.diagnosis.summary()
    release.set()
    thread.join(DEADLINE)


WAITS_WITHOUT_TIMEOUT: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "lock-with": ("threading.Lock", lambda h: h.lock.__enter__()),
    "lock-acquire": ("threading.Lock", lambda h: h.lock.acquire()),
    "lock-acquire-minus-one": ("threading.Lock", lambda h: h.lock.acquire(True, -1)),
    "event": ("threading.Event", lambda h: threading.Event().wait()),
    "condition": ("threading.Condition", lambda h: _condition_wait(None)),
    "semaphore": ("threading.Semaphore", lambda h: threading.Semaphore(0).acquire()),
    "queue-get": ("queue.Queue.get", lambda h: queue.Queue().get()),
    "simple-queue-get": ("queue.SimpleQueue.get", lambda h: h.simple_queue.get()),
}
WAITS_WITH_TIMEOUT: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "lock-acquire-timeout": ("threading.Lock", lambda h: h.lock.acquire(timeout=60)),
    "event-timeout": ("threading.Event", lambda h: threading.Event().wait(60)),
    "condition-timeout": ("threading.Condition", lambda h: _condition_wait(60)),
    "queue-get-timeout": ("queue.Queue.get", lambda h: queue.Queue().get(timeout=60)),
}


def _condition_wait(timeout: float | None) -> None:
    condition = threading.Condition()
    with condition:
        condition.wait(timeout)


@pytest.mark.parametrize(
    ("case", "has_timeout"),
    [(c, False) for c in WAITS_WITHOUT_TIMEOUT] + [(c, True) for c in WAITS_WITH_TIMEOUT],
)
def test_each_kind_of_wait_and_whether_it_has_a_timeout(
    case: str, has_timeout: bool, agent: Any
) -> None:
    kind, wait = {**WAITS_WITHOUT_TIMEOUT, **WAITS_WITH_TIMEOUT}[case]
    holder = Holder()
    holder.lock.acquire()  # held by the test: a waiter on it never gets it
    name = f"waits.{case}"
    lines: list[int] = []

    @otel_jobs.job(name=name, heartbeat_timeout=0.3)
    def job() -> None:
        lines.append(here() + 1)
        wait(holder)

    threading.Thread(target=job, daemon=True).start()
    run = run_named(agent, name)
    wait_for("the verdict", lambda: run.diagnosis)
    found = run.diagnosis.wait
    assert found is not None, run.diagnosis.summary()
    assert found["kind"] == kind
    assert found["timeout"] is has_timeout
    words = "with a timeout" if has_timeout else "without a timeout"
    assert words in found["description"]
    # "at file:line": the user's line that waits (the lambda called by the job, or the
    # helper it calls).
    assert run.diagnosis.where.function.endswith(("<lambda>", "_condition_wait"))
    assert f"at {run.diagnosis.where}" in run.diagnosis.summary()


def test_asyncio_waits_with_and_without_a_timeout(
    loop: asyncio.AbstractEventLoop, agent: Any
) -> None:
    held = asyncio.Lock()

    @otel_jobs.job(name="waits.asyncio_lock", heartbeat_timeout=0.3)
    async def forever() -> None:
        await held.acquire()  # the second acquire: never granted

    if not hasattr(asyncio, "timeout"):
        pytest.skip("asyncio.timeout() is Python 3.11+")

    @otel_jobs.job(name="waits.asyncio_event_timeout", heartbeat_timeout=0.3)
    async def bounded() -> None:
        async with asyncio.timeout(120):
            await asyncio.Event().wait()

    @otel_jobs.job(name="waits.asyncio_queue", heartbeat_timeout=0.3)
    async def queue_get() -> None:
        await asyncio.Queue().get()

    async def take_first() -> None:
        await held.acquire()

    asyncio.run_coroutine_threadsafe(take_first(), loop).result(DEADLINE)
    futures = [asyncio.run_coroutine_threadsafe(c(), loop) for c in (forever, bounded, queue_get)]
    expected = {
        "waits.asyncio_lock": ("asyncio.Lock", False),
        "waits.asyncio_event_timeout": ("asyncio.Event", True),
        "waits.asyncio_queue": ("asyncio.Queue.get", False),
    }
    for name, (kind, timeout) in expected.items():
        run = run_named(agent, name)
        wait_for(f"the verdict of {name}", lambda run=run: run.diagnosis)
        assert run.diagnosis.wait["kind"] == kind, name
        assert run.diagnosis.wait["timeout"] is timeout, name
    for future in futures:
        future.cancel()


@pytest.fixture
def blocked_frames() -> Iterator[tuple[list[Any], list[bool]]]:
    """The frames of a real thread blocked in ``lock.acquire()`` without a timeout, outermost
    first, and which of them are the user's."""
    lock = threading.Lock()
    lock.acquire()
    started = threading.Event()

    def blocked() -> None:
        started.set()
        lock.acquire()

    thread = threading.Thread(target=blocked, daemon=True)
    thread.start()
    started.wait(DEADLINE)
    assert thread.ident is not None

    def frames() -> list[Any] | None:
        raw = waits.thread_frames(sys._current_frames().get(thread.ident))  # type: ignore[arg-type]
        return raw if raw and raw[-1].f_code is blocked.__code__ else None

    raw = wait_for("the thread in lock.acquire()", frames)
    yield raw, [frame_of(f).user for f in raw]
    lock.release()
    thread.join(DEADLINE)


def test_a_lock_wait_read_from_the_bytecode_of_this_python(
    blocked_frames: tuple[list[Any], list[bool]],
) -> None:
    found = waits.find(*blocked_frames)
    assert found is not None and (found.kind, found.timeout) == ("threading.Lock", False)


def test_an_unknown_call_instruction_names_no_wait_rather_than_a_wrong_one(
    blocked_frames: tuple[list[Any], list[bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = waits._instructions

    def renamed(code: Any) -> Any:  # as a future CPython with a call opcode of another name
        instructions, by_offset = real(code)
        return [
            i._replace(opname="CALL_OF_ANOTHER_VERSION") if i.opname in waits._CALLS else i
            for i in instructions
        ], by_offset

    monkeypatch.setattr(waits, "_instructions", renamed)
    assert waits.find(*blocked_frames) is None


@pytest.mark.internal_errors("watchdog.waits")
def test_a_bytecode_layout_that_breaks_the_reader_names_no_wait_and_is_counted(
    blocked_frames: tuple[list[Any], list[bool]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreadable(code: Any) -> Any:
        raise ValueError("unknown opcode 250")  # as dis says of an opcode it does not know

    monkeypatch.setattr(waits, "_instructions", unreadable)
    assert waits.find(*blocked_frames) is None
    assert errors.counts().get("watchdog.waits", 0) >= 1

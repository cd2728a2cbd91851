"""The event-loop probe's ways to reach a loop, on real loops in real threads: a loop that is
busy gets its callback queued without a wake, one found waiting in its selector with a callback
still queued is woken, and asyncio's private internals it relies on are there (an asyncio that
changes them fails here, loudly, instead of the probe falling back in silence)."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from otel_jobs.core import loop_internals, loop_probe
from otel_jobs.core.loop_probe import LoopProbe, LoopProbes
from tests.watchdog.support import DEADLINE, loop_in_thread, wait_for


class RunOnLoop:
    """What LoopProbes.watch reads of a run."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread_id: int | None) -> None:
        self.loop, self.thread_id, self.finished = loop, thread_id, False


@pytest.fixture
def probed(
    instrumented: Callable[..., Any],
) -> Iterator[tuple[asyncio.AbstractEventLoop, LoopProbes, LoopProbe]]:
    agent = instrumented(watchdog=False, prometheus=False, frameworks=[], outbound=[])
    with loop_in_thread("test-probed-loop") as (loop, thread):
        wait_for("the loop running", lambda: loop_internals.thread_of(loop) == thread.ident)
        probes = LoopProbes(agent.telemetry)
        probes.watch([RunOnLoop(loop, thread.ident)])  # type: ignore[list-item]
        (probe,) = probes._probes.values()
        yield loop, probes, probe


def waiting_in_its_selector(probe: LoopProbe) -> bool:
    return loop_internals.idle(sys._current_frames().get(probe.thread_id))  # type: ignore[arg-type]


def test_this_pythons_asyncio_has_what_the_probe_reads(probed: Any) -> None:
    loop, _, probe = probed
    assert loop_internals.supported()
    wait_for("the idle loop seen in its selector", lambda: waiting_in_its_selector(probe))


def test_a_busy_loop_gets_the_callback_without_a_wake_and_answers_after_its_own(
    probed: Any,
) -> None:
    loop, probes, probe = probed
    holding, release = threading.Event(), threading.Event()

    def busy() -> None:
        holding.set()
        release.wait()

    loop.call_soon_threadsafe(busy)
    holding.wait(DEADLINE)
    probes.tick(loop.time())
    assert probe.posted and probe.blocked_for(loop.time()) > 0
    release.set()
    wait_for("the answer", lambda: probe.blocked_for(loop.time()) == 0)


def test_a_callback_queued_as_the_loop_went_to_wait_is_timed_again_and_the_loop_woken(
    probed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop, probes, probe = probed
    wait_for("the idle loop in its selector", lambda: waiting_in_its_selector(probe))
    with monkeypatch.context() as patch:  # the probe takes it for busy: queued, not woken
        patch.setattr(loop_probe, "idle", lambda frame: False)
        probes.tick(1.0)
    assert probe.posted and probe.sent == 1.0
    probes.tick(2.0)  # found waiting with the callback still queued
    assert not probe.posted and probe.sent == 2.0
    wait_for("the answer", lambda: probe.blocked_for(loop.time()) == 0)


def test_a_loop_of_another_kind_is_probed_through_call_soon_threadsafe(
    probed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop, probes, probe = probed
    monkeypatch.setattr(loop_probe, "idle", lambda frame: False)
    monkeypatch.setattr(loop_probe, "post", lambda *args: False)  # as for uvloop's loops
    probes.tick(loop.time())
    assert not probe.posted and probe.sent is not None
    wait_for("the answer", lambda: probe.blocked_for(loop.time()) == 0)

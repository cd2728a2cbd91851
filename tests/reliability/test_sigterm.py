"""SIGTERM: a process that nothing else handles it in exports its runs before it ends.

Real worker processes export over OTLP/HTTP to a real local receiver, with the batch span
processor and the metric reader set to export only every ten minutes: whatever the receiver
gets was flushed by the SIGTERM handler. The processes still end by the signal (-15), as they
would without otel-jobs. A plain ``@job`` process and a ``BlockingScheduler`` (APScheduler has
no SIGTERM handler) each have finished runs and one in flight, which is recorded ``cancelled``.

A handler of the application's (or of a framework, which installs its own when its worker
starts) is left alone, before or after ``instrument()``; so is ``SIG_IGN``; ``instrument()``
outside the main thread installs nothing; ``uninstrument()`` puts the default back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import otel_jobs
from tests.otlp_receiver import OtlpReceiver

DEADLINE = 90.0

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="needs POSIX signals")


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as server:
        yield server


def _env(receiver: OtlpReceiver) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CI_"))}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME="sigterm-test",
        # Nothing is exported on a schedule during the test: only the handler's flush sends.
        OTEL_BSP_SCHEDULE_DELAY="600000",
        OTEL_METRIC_EXPORT_INTERVAL="600000",
    )
    return env


def _terminate_after(receiver: OtlpReceiver, source: str, *lines: str) -> tuple[int, str]:
    """Run ``source`` in a Python process exporting to ``receiver``; wait for each of ``lines``
    on its stdout, send SIGTERM, return (status, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", source],
        env=_env(receiver),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        waiting = set(lines)
        while waiting:
            line = proc.stdout.readline()
            assert line, f"the worker ended early: {proc.stderr.read()}"
            waiting.discard(line.strip())
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=DEADLINE)
        return status, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _spans(receiver: OtlpReceiver, name: str) -> list[Any]:
    return [s for s in receiver.spans() if s.name == name]


def _finished(receiver: OtlpReceiver) -> dict[tuple[str, str], float]:
    """Cumulative sums: the last point of each series is its value."""
    points = [
        p for m in receiver.metrics() if m.name == "otel_jobs.runs.finished" for p in m.points
    ]
    return {(attrs["job_name"], attrs["outcome"]): value for attrs, value in points}


PLAIN = textwrap.dedent(
    """
    import threading
    import otel_jobs

    otel_jobs.instrument(prometheus=False)

    @otel_jobs.job(name="term.done", queue="term")
    def done(i):
        return i

    @otel_jobs.job(name="term.inflight", queue="term")
    def inflight():
        print("in flight", flush=True)
        threading.Event().wait()

    for i in range(3):
        done(i)
    inflight()
    """
)


def test_a_plain_process_exports_its_runs_and_ends_by_the_signal(receiver: OtlpReceiver) -> None:
    status, stderr = _terminate_after(receiver, PLAIN, "in flight")
    assert status == -signal.SIGTERM, stderr

    done = _spans(receiver, "term.done")
    assert [s.attributes["job.outcome"] for s in done] == ["success"] * 3
    (inflight,) = _spans(receiver, "term.inflight")
    assert inflight.attributes["job.outcome"] == "cancelled"
    assert ("otel_jobs.process_exit", {"otel_jobs.signal": "SIGTERM"}) in inflight.events
    assert _finished(receiver) == {
        ("term.done", "success"): 3.0,
        ("term.inflight", "cancelled"): 1.0,
    }


SCHEDULER = textwrap.dedent(
    """
    import threading
    import otel_jobs
    from apscheduler.schedulers.blocking import BlockingScheduler

    otel_jobs.instrument(prometheus=False)
    scheduler = BlockingScheduler()
    ticks = 0

    def tick():
        global ticks
        ticks += 1
        if ticks == 3:
            print("three ticks", flush=True)

    def hang():
        print("hanging", flush=True)
        threading.Event().wait()

    scheduler.add_job(tick, "interval", seconds=0.05, name="term.tick")
    scheduler.add_job(hang, name="term.hang")
    scheduler.start()
    """
)


def test_an_apscheduler_process_exports_its_runs(receiver: OtlpReceiver) -> None:
    pytest.importorskip("apscheduler.schedulers.blocking")
    status, stderr = _terminate_after(receiver, SCHEDULER, "three ticks", "hanging")
    assert status == -signal.SIGTERM, stderr

    outcomes = [s.attributes["job.outcome"] for s in _spans(receiver, "term.tick")]
    assert outcomes.count("success") >= 3, outcomes
    assert set(outcomes) <= {"success", "cancelled"}  # a tick may be running at the signal
    (hang,) = _spans(receiver, "term.hang")
    assert hang.attributes["job.outcome"] == "cancelled"
    assert _finished(receiver)[("term.hang", "cancelled")] == 1.0


OWN_HANDLER = textwrap.dedent(
    """
    import signal, sys, threading
    import otel_jobs

    otel_jobs.instrument(prometheus=False)
    stopping = threading.Event()
    # What a framework does when its worker starts: a handler of its own, after instrument().
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())

    @otel_jobs.job(name="term.graceful")
    def work():
        return 1

    work()
    print("ready", flush=True)
    while not stopping.wait(0.05):
        pass
    work()  # the warm shutdown finishes what it was doing
    print("graceful", flush=True)
    sys.exit(0)
    """
)


def test_a_handler_installed_after_instrument_keeps_handling_sigterm(
    receiver: OtlpReceiver,
) -> None:
    status, stderr = _terminate_after(receiver, OWN_HANDLER, "ready")
    assert status == 0, stderr
    # Exported at exit, as before: two runs, neither cancelled by otel-jobs.
    outcomes = [s.attributes["job.outcome"] for s in _spans(receiver, "term.graceful")]
    assert outcomes == ["success", "success"]


# --- which handler is in force, in this process ---------------------------------------------


@pytest.fixture
def default_sigterm() -> Iterator[None]:
    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, before)


def test_installed_over_the_default_only_and_removed_by_uninstrument(
    default_sigterm: None, instrumented: Callable[..., Any]
) -> None:
    instrumented()
    ours = signal.getsignal(signal.SIGTERM)
    assert ours is not signal.SIG_DFL and callable(ours)
    otel_jobs.instrument()  # a second call changes nothing
    assert signal.getsignal(signal.SIGTERM) is ours
    otel_jobs.uninstrument()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    instrumented()
    assert signal.getsignal(signal.SIGTERM) is ours
    otel_jobs.uninstrument()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _application_handler(signum: int, frame: object) -> None:
    pass


@pytest.mark.parametrize("handler", [_application_handler, signal.SIG_IGN], ids=["own", "ignored"])
def test_a_handler_set_before_instrument_is_left_alone(
    default_sigterm: None, instrumented: Callable[..., Any], handler: Any
) -> None:
    signal.signal(signal.SIGTERM, handler)
    instrumented()
    assert signal.getsignal(signal.SIGTERM) is handler
    otel_jobs.uninstrument()
    assert signal.getsignal(signal.SIGTERM) is handler


def test_instrument_outside_the_main_thread_installs_nothing(
    default_sigterm: None, instrumented: Callable[..., Any]
) -> None:
    failures: list[BaseException] = []

    def start() -> None:
        try:
            instrumented()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    assert not failures
    assert otel_jobs.is_instrumented()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

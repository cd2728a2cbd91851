"""Forked children: their runs reach the parent's one endpoint, nothing counted twice, nothing lingers."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import otel_jobs
from otel_jobs.core.multiprocess import IDLE_FLUSH_SECONDS
from tests.support import agent_metrics
from tests.support.series import runs_finished
from tests.support.waiting import wait_for

ctx = multiprocessing.get_context("fork")


@otel_jobs.job(name="fork.work", queue="fq")
def work(n: int) -> int:
    if n < 0:
        raise ValueError(n)
    return n


def _child_runs(count: int, fail: int, report: Any) -> None:
    for i in range(count):
        work(i)
    for _ in range(fail):
        try:
            work(-1)
        except ValueError:
            pass
    watchdogs = [t.name for t in threading.enumerate() if t.name == "otel-jobs-watchdog"]
    report.put((os.getpid(), len(watchdogs)))


def _child_hangs(ready: Any) -> None:
    with otel_jobs.job_run("fork.hang", queue="fq"):
        ready.set()
        time.sleep(600)


def test_children_runs_reach_the_parent_endpoint_exactly_once(
    instrumented: Callable[..., Any],
) -> None:
    instrumented(watchdog_interval=0.1)
    work(1)  # one run in the parent before forking: must not be duplicated by the children
    report = ctx.Queue()
    children = [ctx.Process(target=_child_runs, args=(5, 2, report)) for _ in range(3)]
    for p in children:
        p.start()
    results = [report.get(timeout=60) for _ in children]
    for p in children:
        p.join(60)
        assert p.exitcode == 0
    assert all(watchdogs == 1 for _pid, watchdogs in results)  # exactly one watchdog per child
    m = agent_metrics()
    fork_work = {"job_name": "fork.work", "queue": "fq"}
    assert m.value("otel_jobs_runs_started_total", **fork_work) == 1 + 3 * 7
    assert runs_finished(m, "fork.work", "success", queue="fq") == 1 + 3 * 5
    assert runs_finished(m, "fork.work", "failure", queue="fq") == 3 * 2
    assert m.value("otel_jobs_run_duration_seconds_count", **fork_work, outcome="success") == 16
    assert m.value("otel_jobs_runs_in_progress", **fork_work) == 0
    # Dead children were folded in once: scraping again gives the same totals.
    assert agent_metrics().value("otel_jobs_runs_started_total", **fork_work) == 22
    from otel_jobs.core import agent

    current = agent.current()
    assert current is not None
    assert list(current.share.children()) == []


def test_a_killed_child_in_flight_gauges_do_not_linger(instrumented: Callable[..., Any]) -> None:
    instrumented(watchdog_interval=0.1)
    ready = ctx.Event()
    child = ctx.Process(target=_child_hangs, args=(ready,), daemon=True)
    child.start()
    try:
        _watch_killed_child(child, ready)
    finally:
        if child.is_alive():
            child.kill()
            child.join(10)


def _watch_killed_child(child: Any, ready: Any) -> None:
    assert ready.wait(30)
    wait_for(
        "the child's run in flight",
        lambda: agent_metrics().find("otel_jobs_runs_in_progress", job_name="fork.hang") == [1.0],
    )
    m = agent_metrics()
    assert m.find("otel_jobs_oldest_run_start_timestamp_seconds", job_name="fork.hang")
    assert m.value("otel_jobs_runs_started_total", job_name="fork.hang", queue="fq") == 1
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(30)
    m = agent_metrics()
    assert m.find("otel_jobs_runs_in_progress", job_name="fork.hang") in ([], [0.0])
    assert m.find("otel_jobs_oldest_run_start_timestamp_seconds", job_name="fork.hang") == []
    assert (
        m.value("otel_jobs_runs_started_total", job_name="fork.hang", queue="fq") == 1
    )  # counts kept


def test_raw_os_fork_child_that_exits_immediately_loses_nothing(
    instrumented: Callable[..., Any],
) -> None:
    instrumented(watchdog_interval=5)
    pid = os.fork()
    if pid == 0:  # the child: run jobs and leave the way RQ's work horse does
        try:
            for i in range(4):
                work(i)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert runs_finished(agent_metrics(), "fork.work", "success", queue="fq") == 4


def test_a_lazy_child_writes_its_snapshot_at_the_tick_not_at_every_run(
    instrumented: Callable[..., Any],
) -> None:
    # A pool process (Celery's prefork child) is lazy: runs only mark its snapshot stale, its
    # watchdog's tick writes it. The owner learns when the child's last snapshot was taken,
    # also once the dead child has been folded into the archive.
    agent = instrumented(watchdog_interval=60)  # no tick during the test: the child calls it
    path = os.path.join(agent.share.directory, "{}.json")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            from otel_jobs.core import agent as agent_mod

            child = agent_mod.current()
            assert child is not None
            child.share.lazy = True
            child.watchdog.tick()  # the first tick writes the (empty) snapshot
            first = os.stat(path.format(os.getpid())).st_mtime_ns
            time.sleep(0.05)
            for i in range(3):
                work(i)
            assert os.stat(path.format(os.getpid())).st_mtime_ns == first  # not per run
            assert child.share.dirty
            child.watchdog.tick()
            assert not child.share.dirty
            written = os.stat(path.format(os.getpid())).st_mtime_ns
            assert written != first
            time.sleep(0.05)
            child.watchdog.tick()  # nothing new, nothing in flight: no write
            assert os.stat(path.format(os.getpid())).st_mtime_ns == written
            # Idle for IDLE_FLUSH_SECONDS: written again, so its last tick does not look stale.
            child.share.last_flush -= IDLE_FLUSH_SECONDS
            child.watchdog.tick()
            assert os.stat(path.format(os.getpid())).st_mtime_ns != written
            os.write(write, b"x")
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    assert os.read(read, 1) == b"x"
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    taken = agent.share.written_at(pid)
    assert taken is not None and taken <= time.time()
    m = agent_metrics()  # folds the dead child into the archive
    assert runs_finished(m, "fork.work", "success", queue="fq") == 3
    assert not os.path.exists(path.format(pid))
    assert agent.share.written_at(pid) == taken  # remembered after the fold
    assert agent.share.written_at(pid + 10_000_000) is None  # a process that left none


def _lazy_child_runs(count: int) -> None:
    from otel_jobs.core import agent as agent_mod

    child = agent_mod.current()
    assert child is not None
    child.share.lazy = True  # as a pool process's integration sets it
    for i in range(count):
        work(i)


def test_a_lazy_multiprocessing_child_writes_its_last_counts_as_it_exits(
    instrumented: Callable[..., Any],
) -> None:
    # No tick in the child's lifetime: only its exit can write what it counted (multiprocessing
    # children leave through os._exit after their finalizers, without atexit).
    instrumented(watchdog_interval=60)
    process = ctx.Process(target=_lazy_child_runs, args=(5,))
    process.start()
    process.join(30)
    assert process.exitcode == 0
    m = agent_metrics()
    assert runs_finished(m, "fork.work", "success", queue="fq") == 5
    assert m.value("otel_jobs_runs_started_total", job_name="fork.work", queue="fq") == 5

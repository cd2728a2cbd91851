"""What the lease (``otel_jobs/core/lease.py``) costs a worker: per run, and in Redis round trips.

* **Per run, on the job's path**: a run as a framework integration records it (``start_run``,
  ``activate``, the lease's ``track``, ``finish``, ``deactivate``) in a process whose lease is on
  (a real Redis, its watchdog ticking), against the same process with the lease off
  (``OTEL_JOBS_LEASE_ENABLED=false``), interleaved; the difference is the lease's cost per run
  (target: under 5 us). Also the lease's own calls alone (``track`` and ``ended``).
* **Per watchdog tick**: a process whose watchdog ticks every 50 ms, its lease renewed every
  third of a 0.6 s TTL: Redis round trips (lease writes) per tick with four long runs
  heartbeating all the time, with runs of four ticks each, one after the other (the set of
  runs in flight changes twice per run), and with runs shorter than a tick (each tracked as an
  integration does: the lease thread is woken at a run's start at most once per interval);
  target under 1 (the lease thread writes at most once per interval: runs shorter than a tick,
  one after the other, come close to it). An idle process writes nothing.
* **Written at once**: isolated runs of half a tick, one every three ticks: the share the lease
  listed while they ran (so that one killed then is found), with the lease thread woken at a
  run's start against the same runs written at the ticks only (about half of them: those a
  tick falls in).

Needs a Redis (``BENCH_REDIS_URL``, default ``redis://127.0.0.1:6379/2``); only otel-jobs' own
``otel_jobs:*`` keys are written there, and deleted afterwards.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any

import otel_jobs
from otel_jobs.core import agent as agent_mod

from ._timing import interleaved, ratio, row, us

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2")
RUN_TARGET_US = 5.0
TICK_TARGET = 1.0


def _agent(**options: Any) -> Any:
    otel_jobs.instrument(
        prometheus=False, frameworks=[], outbound=[], lease_url=REDIS_URL, **options
    )
    return agent_mod.current()


def _clean() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter("otel_jobs:*"))
    if keys:
        client.delete(*keys)
    client.close()


def per_run(quick: bool) -> list[dict[str, Any]]:
    reps, number = (3, 300) if quick else (21, 5000)
    agent = _agent()
    lease = agent.lease

    def source() -> str:
        return REDIS_URL

    def recorded() -> None:
        run = agent.start_run("bench.lease", queue="default", job_id="j", framework="bench")
        run.activate()
        lease.track(run, source)
        run.finish("success")
        run.deactivate()

    def with_lease() -> None:
        lease.enabled = True
        recorded()

    def without_lease() -> None:
        lease.enabled = False
        recorded()

    class _Run:
        key = 0

    fake = _Run()

    def calls_alone() -> None:
        lease.track(fake, source)  # type: ignore[arg-type]
        lease.ended(fake)  # type: ignore[arg-type]

    try:
        results = interleaved(
            {"with": with_lease, "without": without_lease, "calls": calls_alone},
            reps=reps,
            number=number,
        )
    finally:
        lease.enabled = True
        otel_jobs.uninstrument()
        _clean()
    on, off = results["with"]["median"], results["without"]["median"]
    ratio_on = ratio(results, "with", "without")
    # The difference taken from the per-round ratio (both sides of a round see the same
    # machine), as the other benchmarks do: medians of each side alone move with the load.
    extra = us(off) * (ratio_on - 1.0)
    return [
        row(
            "lease: cost per run on the job's path",
            subject="run with the lease on (start, track, finish)",
            value=us(on),
            unit="us/run",
            baseline="the same with OTEL_JOBS_LEASE_ENABLED=false",
            baseline_value=us(off),
            ratio=ratio_on,
            target=f"difference < {RUN_TARGET_US:g} us",
            met=extra < RUN_TARGET_US,
            note=f"difference {extra:.2f} us per run (per-round ratio x baseline)",
        ),
        row(
            "lease: track() + ended() alone",
            subject="the two calls an integration adds per run",
            value=max(us(results["calls"]["median"]), 0.001),
            unit="us/run",
            target=f"< {RUN_TARGET_US:g} us",
            met=us(results["calls"]["median"]) < RUN_TARGET_US,
            note="what the difference above is made of, without the run around it",
        ),
    ]


def _ticks(agent: Any, seconds: float, work: Any) -> tuple[int, int]:
    """Lease writes and watchdog ticks while ``work(stop)`` runs for ``seconds``."""
    stop = threading.Event()
    threads = work(stop)
    time.sleep(0.3)  # the first writes of the runs' start
    writes, ticks = agent.lease.writes, agent.watchdog.ticks
    time.sleep(seconds)
    writes, ticks = agent.lease.writes - writes, agent.watchdog.ticks - ticks
    stop.set()
    for thread in threads:
        thread.join()
    return writes, ticks


def _steady(stop: threading.Event) -> list[threading.Thread]:
    def long_run(i: int) -> None:
        with otel_jobs.job_run("bench.steady", job_id=f"steady-{i}"):
            n = 0
            while not stop.is_set():
                n += 1
                otel_jobs.heartbeat(progress=(n % 100) / 100, row=n)
                time.sleep(0.005)

    threads = [threading.Thread(target=long_run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    return threads


def _churn(seconds: float) -> Any:
    """Runs of ``seconds`` each, one after the other, each tracked as an integration tracks it
    (the lease thread woken at its start when it was not in the last watchdog interval)."""

    def work(stop: threading.Event) -> list[threading.Thread]:
        lease = agent_mod.current().lease

        def runs() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                with otel_jobs.job_run("bench.churn", job_id=f"churn-{n}") as run:
                    lease.track(run)
                    time.sleep(seconds)

        thread = threading.Thread(target=runs)
        thread.start()
        return [thread]

    return work


def per_tick(quick: bool) -> list[dict[str, Any]]:
    seconds = 1.5 if quick else 10.0
    agent = _agent(watchdog_interval=0.05, lease_ttl=0.6)
    try:
        idle_writes, idle_ticks = _ticks(agent, min(seconds, 2.0), lambda stop: [])
        steady_writes, steady_ticks = _ticks(agent, seconds, _steady)
        churn_writes, churn_ticks = _ticks(agent, seconds, _churn(0.2))
        short_writes, short_ticks = _ticks(agent, seconds, _churn(0.02))
    finally:
        otel_jobs.uninstrument()
        _clean()
    rows = []
    for subject, writes, ticks in (
        ("four long runs heartbeating all the time", steady_writes, steady_ticks),
        ("runs of four ticks, one after the other", churn_writes, churn_ticks),
        ("runs of 0.4 tick, one after the other", short_writes, short_ticks),
    ):
        per = writes / max(ticks, 1)
        rows.append(
            row(
                "lease: Redis round trips per watchdog tick",
                subject=subject,
                value=max(per, 0.001),
                unit="round trips/tick",
                target=f"< {TICK_TARGET:g}",
                met=per < TICK_TARGET,
                note=f"{writes} writes in {ticks} ticks (50 ms ticks, 0.6 s lease TTL); "
                f"idle: {idle_writes} in {idle_ticks}",
            )
        )
    return rows


def in_lease_at_once(quick: bool) -> list[dict[str, Any]]:
    """Isolated runs of half a tick, one every three ticks, tracked as an integration tracks them:
    the share of them that the lease listed while they ran (a run killed then is found), with
    the lease thread woken at a run's start, against the same runs written at the ticks only
    (that wake kept from happening), taking turns."""
    count = 20 if quick else 100
    agent = _agent(watchdog_interval=0.05, lease_ttl=0.6)
    lease = agent.lease
    listed = {True: 0, False: 0}
    try:
        for n in range(2 * count):
            woken = n % 2 == 0
            with otel_jobs.job_run("bench.isolated", job_id=f"isolated-{n}") as run:
                if not woken:
                    lease._nudge_after = math.inf
                lease.track(run)
                time.sleep(0.025)
                listed[woken] += run.key in lease.written
            lease._nudge_after = -math.inf
            time.sleep(0.15)
    finally:
        otel_jobs.uninstrument()
        _clean()
    share, base = listed[True] / count, listed[False] / count
    return [
        row(
            "lease: isolated runs listed while they ran",
            subject="runs of half a tick, one every three ticks",
            value=max(share, 0.001),
            unit="share of runs",
            baseline="the same, written at the watchdog's ticks only",
            baseline_value=max(base, 0.001),
            target=">= 0.9 (the baseline: about the share of runs a tick falls in)",
            met=share >= 0.9,
            note=f"{listed[True]} of {count}, against {listed[False]} of {count}; one missed "
            "is a run whose 25 ms passed before the lease thread's round trip",
        )
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    return per_run(quick) + per_tick(quick) + in_lease_at_once(quick)


if __name__ == "__main__":
    for found in run():
        print(found)

"""What a stuck run waits on, who holds it, and whether the holders wait on the run: the
``wait`` part of a diagnosis (:mod:`otel_jobs.core.diagnosis`), from :mod:`otel_jobs.core.waits`.

A chain of holders is followed through the runs in flight, thread by thread (at most 8), and
named a deadlock when it comes back to the run. Only the frames' code and the objects
:mod:`~otel_jobs.core.waits` recognises are read; nothing is rendered from them.
"""

from __future__ import annotations

import asyncio
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import waits
from .stacks import MAX_WALK, Frame, frame_of

if TYPE_CHECKING:
    from .run import Run


def holder_of(ident: int, by_thread: dict[int, Run]) -> dict[str, Any]:
    holder = by_thread.get(ident)
    return {
        "thread": waits.thread_owner_name(ident),
        "job_name": holder.name if holder is not None else None,
        "job_id": (holder.job_id or str(holder.key)) if holder is not None else None,
    }


def describe_wait(
    run: Run,
    raw: list[FrameType],
    frames: list[Frame],
    task: asyncio.Task[Any] | None,
    thread_frames: dict[int, FrameType],
    runs: list[Run] | None,
) -> dict[str, Any] | None:
    """What the run waits on (core.waits), with the run holding it and a deadlock named."""
    found = waits.find(raw, [f.user for f in frames], task)
    if found is None:
        return None
    by_thread: dict[int, Run] = {}
    for other in sorted(runs or (), key=lambda r: r.start_mono):
        if other.thread_id is not None and other.task is None and not other.finished:
            by_thread[other.thread_id] = other  # the innermost (latest) run of a thread
    description = found.describe()
    holder = deadlock = None
    if found.owner is not None and found.owner != run.thread_id:
        holder = holder_of(found.owner, by_thread)
        if holder["job_name"] is not None:
            description += f"; held by run {holder['job_id']} of {holder['job_name']}"
        else:
            description += f"; held by thread {holder['thread'] or found.owner}"
        deadlock = deadlock_of(run, found.owner, thread_frames, by_thread)
        if deadlock is not None:
            chain = [f"run {d['job_id']} of {d['job_name']}" for d in deadlock]
            description += "; deadlock: this run waits on " + ", which waits on ".join(
                [*chain, "this run"]
            )
    return {
        "kind": found.kind,
        "timeout": found.timeout,
        "holder": holder,
        "deadlock": deadlock,
        "description": description,
    }


def deadlock_of(
    run: Run, owner: int, thread_frames: dict[int, FrameType], by_thread: dict[int, Run]
) -> list[dict[str, Any]] | None:
    """The runs holding what each next one waits on, when that comes back to ``run``."""
    chain: list[dict[str, Any]] = []
    seen = {run.thread_id}
    while len(chain) < 8:
        holder = by_thread.get(owner)
        if holder is None or owner in seen:
            return None
        chain.append(holder_of(owner, by_thread))
        seen.add(owner)
        raw = waits.thread_frames(thread_frames.get(owner), MAX_WALK)
        found = waits.find(raw, [frame_of(f).user for f in raw])
        if found is None or found.owner is None:
            return None
        if found.owner == run.thread_id:
            return chain
        owner = found.owner
    return None

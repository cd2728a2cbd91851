"""arq: its queues are sorted sets of job ids scored by the time each job is due (ms).

``--arq-redis-url`` gives the Redis; the queue is arq's default (``arq:queue``) unless
``--queues`` names others (arq keeps no list of queues to discover them from).

A job stays in the sorted set from ``enqueue_job`` until it finishes; while a worker runs it, the
key ``arq:in-progress:<id>`` exists. So, per queue, one transaction reads how many jobs are due
(score up to now), how many are deferred to later (``scheduled``) and the ids and scores of the
oldest due jobs, :data:`PROBES` [0] of them; a second asks which of those are in progress
(``started``), with one ``MGET`` of their in-progress keys per queue. Only a queue whose probed
jobs are all in progress is probed further (the next :data:`PROBES` [1], then [2], one round
trip each). ``waiting`` is the due jobs minus those started; the oldest waiting age is from the
score (the enqueue time, or the due time of a deferred job) of the oldest due job not in
progress.

Limit: arq workers take the oldest due jobs first, so the running ones are among the oldest; a
queue with more jobs running at once than all the probes together (1,168) counts the excess as
``waiting``. arq keeps no index of failed jobs (results are keys of their own), so no ``failed``
state.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from arq.constants import default_queue_name, in_progress_key_prefix

from . import _redis
from .base import QueueReading, RedisUrlCollector

#: How many of a queue's oldest due jobs are checked for being in progress, stage by stage.
PROBES = (16, 128, 1024)


class ArqCollector(RedisUrlCollector):
    framework = "arq"
    states = ("waiting", "scheduled", "started")
    url_flag = "--arq-redis-url"

    def watched(self, queues: Sequence[str]) -> list[str]:
        return self.capped(list(queues) or [default_queue_name])

    def poll(self) -> list[QueueReading]:
        now_ms = int(time.time() * 1000)
        commands: list[tuple[Any, ...]] = []
        for q in self.queues:
            commands += [
                ("zcount", q, "-inf", now_ms),
                ("zcount", q, f"({now_ms}", "+inf"),
                ("zrangebyscore", q, "-inf", now_ms, 0, PROBES[0], True),
            ]
        values = _redis.read(self.client, commands)
        rows = [values[i : i + 3] for i in range(0, len(values), 3)]
        started = dict.fromkeys(self.queues, 0)
        oldest: dict[str, float] = {}
        # (queue, jobs probed at this stage) for the queues still without a job not in progress
        probing = [(q, row[2]) for q, row in zip(self.queues, rows, strict=True) if row[2]]
        offset = 0
        for stage, size in enumerate(PROBES):
            keys = [
                [in_progress_key_prefix + _redis.text(m) for m, _ in jobs] for _, jobs in probing
            ]
            running = _redis.read(self.client, [("mget", k) for k in keys])
            saturated = []
            for (q, jobs), flags in zip(probing, running, strict=True):
                for (_, score), busy in zip(jobs, flags, strict=True):
                    if busy is not None:
                        started[q] += 1
                    elif q not in oldest:
                        oldest[q] = float(score) / 1000.0
                if q not in oldest and len(jobs) == size:
                    saturated.append(q)  # every probed job runs: there may be more running
            offset += size
            if not saturated or stage + 1 == len(PROBES):
                break
            more = _redis.read(
                self.client,
                [
                    ("zrangebyscore", q, "-inf", now_ms, offset, PROBES[stage + 1], True)
                    for q in saturated
                ],
            )
            probing = [(q, jobs) for q, jobs in zip(saturated, more, strict=True) if jobs]
        return [
            QueueReading(
                q,
                {
                    "waiting": max(0, int(due) - started[q]),
                    "scheduled": int(later),
                    "started": started[q],
                },
                oldest.get(q),
            )
            for q, (due, later, _) in zip(self.queues, rows, strict=True)
        ]

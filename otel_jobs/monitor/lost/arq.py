"""arq: a run is lost when its lease expired; arq itself runs the job again.

An arq job stays in its queue's sorted set until it finishes; the worker running it holds
``arq:in-progress:<id>`` for the job's timeout (plus a little), and once that key is gone another
worker takes the job again, with ``job_try`` one higher. So lost runs are counted, never
requeued; a job that kills its worker every time is stopped by arq's ``max_tries``.

Finished after all: its result key (``arq:result:<id>``, kept ``keep_result`` seconds), or the
job gone from the queue and its job key deleted.
"""

from __future__ import annotations

from collections.abc import Sequence

from arq.constants import job_key_prefix, result_key_prefix

from .. import _redis
from .detector import Detector, LostRun


class ArqDetector(Detector):
    framework = "arq"
    redelivers = True

    def unfinished(self, runs: Sequence[LostRun]) -> list[bool]:
        commands: list[tuple[object, ...]] = []
        for r in runs:
            commands += [
                ("exists", result_key_prefix + (r.job_id or "")),
                ("exists", job_key_prefix + (r.job_id or "")),
            ]
        found = _redis.read(self.client, commands)
        return [
            not result and bool(job) for result, job in zip(found[::2], found[1::2], strict=True)
        ]

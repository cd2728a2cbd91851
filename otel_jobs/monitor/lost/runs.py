"""A run of an expired lease, as its worker last wrote it (:class:`LostRun`), and the attempt
record the monitor writes for the job's next run (``previous_attempt``): what
:mod:`.detector` reads and the framework modules get. The lease's format is
:mod:`otel_jobs.core.lease_records`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...core.lease_records import json_number


@dataclass
class LostRun:
    """One run of an expired lease, as its worker last wrote it."""

    lease: str
    key: str
    framework: str
    job_id: str | None
    name: str
    queue: str
    attempt: int
    started: float | None
    host: str
    pid: int
    expired_at: float
    checkpoint: Mapping[str, Any] = field(default_factory=dict)
    redelivers: bool = False
    requeue: Mapping[str, Any] | None = None
    entry: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(
        cls, lease: str, name: str, raw: Any, worker: Mapping[str, Any], expired_at: float
    ) -> LostRun | None:
        try:
            entry = json.loads(raw)
            if not isinstance(entry, dict):
                return None
            checkpoint = entry.get("checkpoint")
            return cls(
                lease=lease,
                key=name,
                framework=str(entry.get("framework") or ""),
                job_id=str(entry["job_id"]) if entry.get("job_id") is not None else None,
                name=str(entry.get("name") or "unknown"),
                queue=str(entry.get("queue") or "default"),
                attempt=int(entry.get("attempt") or 1),
                started=json_number(entry.get("started")),
                host=str(entry.get("host") or worker.get("host") or ""),
                pid=int(entry.get("pid") or worker.get("pid") or 0),
                expired_at=expired_at,
                checkpoint=checkpoint if isinstance(checkpoint, dict) else {},
                redelivers=bool(entry.get("redelivers")),
                requeue=entry.get("requeue") if isinstance(entry.get("requeue"), dict) else None,
                entry=entry,
            )
        except (ValueError, TypeError):
            return None

    def attempt_record(self) -> dict[str, Any]:
        """What the job's next run reads as ``previous_attempt`` (``lost`` added by the claim)."""
        record: dict[str, Any] = {
            "progress": self.checkpoint.get("progress"),
            "at": self.checkpoint.get("at"),
            "host": self.host,
            "pid": self.pid,
            "expired_at": self.expired_at,
            "attempt": self.attempt,
        }
        details = self.checkpoint.get("details")
        if isinstance(details, dict) and details:
            record["details"] = details
        return record

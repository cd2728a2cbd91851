"""Queues that live in the process itself (``otel-jobs demo``, tests): no broker to reach.

Each queue is a function returning ``(waiting, oldest_due)``: how many jobs wait, and since when
the oldest of them has been waiting (Unix time; ``None`` when empty).

    collector = MemoryCollector({"exports": lambda: (len(backlog), backlog[0] if backlog else None)})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .base import Collector, QueueReading

Reader = Callable[[], tuple[int, float | None]]


class MemoryCollector(Collector):
    framework = "memory"

    def __init__(self, queues: Mapping[str, Reader], framework: str = "memory") -> None:
        super().__init__("memory", "", len(queues) or 1)
        self.readers = dict(queues)
        self.framework = framework  # type: ignore[misc]  # a label chosen by the caller

    def poll(self) -> list[QueueReading]:
        readings = []
        for queue, read in self.readers.items():
            waiting, oldest = read()
            readings.append(QueueReading(queue, {"waiting": waiting}, oldest if waiting else None))
        return readings

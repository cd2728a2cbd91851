"""A queue collector and the lost-run detector of the same framework, polled as one.

The monitor sees one collector per framework and broker (:class:`Watched`): one
``otel_jobs_monitor_broker_up`` series, one log line when the broker goes away. The queue
reading comes first and decides the broker's state; the detector runs after it, and a failure
of its own Redis (``--lease-url`` elsewhere than the broker) is logged by the detector, not
taken for the broker's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...core import errors
from ..base import Collector, QueueReading
from .detector import Detector

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class Watched(Collector):
    """``inner``'s readings, then ``detector``'s lost runs; everything else is ``inner``'s."""

    def __init__(self, inner: Collector, detector: Detector) -> None:
        self.inner = inner
        self.detector = detector
        super().__init__(inner.broker, inner.source, inner.max_queues)
        self.framework = inner.framework  # type: ignore[misc]  # the inner collector's label
        self.states = inner.states  # type: ignore[misc]

    def __getattr__(self, name: str) -> Any:
        # Only reached for what this class does not have: the inner collector's queues, client...
        if name in ("inner", "detector"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def register(self, registry: CollectorRegistry) -> None:
        self.inner.register(registry)
        self.detector.register(registry)

    def check(self) -> None:
        self.inner.check()

    def poll(self) -> list[QueueReading]:
        readings = self.inner.poll()
        try:
            self.detector.poll()
        except Exception as exc:  # a bug of the detector: the queues are still read
            errors.record(f"monitor.lost.{self.framework}", exc)
        return readings

    def abort(self) -> None:
        self.inner.abort()
        self.detector.abort()

    def close(self) -> None:
        self.inner.close()
        self.detector.close()

"""What a monitor collector is: one framework on one broker, read once per poll.

A collector is a thin adapter, like the worker-side integrations: it knows where its framework
keeps its queues on its broker and how to read them cheaply, and nothing else. The monitor
(:mod:`otel_jobs.monitor.process`) owns the schedule, the deadlines, the metrics and the log.

Every hook has a default, so a new kind of collector (issue 15's lost-run detector, for one)
overrides only what it needs: :meth:`Collector.register` to add its own instruments to the
monitor's registry, :meth:`Collector.poll` to do its work once per poll.

Invariants, for every collector:

* **Read only.** Never consume, reorder, requeue, acknowledge or modify a message or a key:
  ``LLEN``/``LINDEX``/``ZCARD``/``ZCOUNT``/``HGET``/``HLEN`` on Redis, a *passive*
  ``queue.declare`` on RabbitMQ.
* **Bounded.** A poll costs a fixed number of round trips whatever the queue lengths (batched
  in pipelines), reads the head of a queue only, and every socket has a timeout.
* **Broker trouble is not a bug.** An error of the broker's client (refused, reset, timed out)
  is raised as :class:`BrokerUnavailable`; anything else is an internal error of otel-jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

logger = logging.getLogger("otel_jobs.monitor")

#: The states of ``otel_jobs_queue_depth``: what each means is in the docs' monitor page.
STATES = ("waiting", "scheduled", "reserved", "started", "deferred", "failed", "dead")


class BrokerUnavailable(Exception):
    """The broker could not be reached or did not answer in time (the reason is the message)."""


@dataclass(frozen=True)
class QueueReading:
    """One queue as one poll found it.

    ``depths`` has a count for every state the collector reports (0 included, so that the series
    are continuous); ``oldest_due`` is the Unix time from which the job at the head of the
    waiting list has been waiting (its publish time, or its due time if it was delayed), or
    ``None`` when the queue is empty or the broker cannot tell.
    """

    queue: str
    depths: Mapping[str, int]
    oldest_due: float | None = None


class Collector:
    """One framework on one broker. Subclasses set :attr:`framework` and override the hooks.

    ``broker`` is the broker's address without credentials: the ``broker`` label of
    ``otel_jobs_monitor_broker_up``. ``source`` is the flag or variable the collector was
    configured by, for error messages (``--rq-redis-url``).
    """

    framework: ClassVar[str] = "base"
    #: The states this collector counts, each reported for every queue (0 when empty).
    states: ClassVar[tuple[str, ...]] = ("waiting",)

    def __init__(self, broker: str, source: str = "", max_queues: int = 1000) -> None:
        self.broker = broker
        self.source = source
        self.max_queues = max_queues
        self._capped_at: int | None = None

    def register(self, registry: CollectorRegistry) -> None:
        """Add instruments of the collector's own to the monitor's registry (none by default)."""

    def check(self) -> None:
        """Reach the broker once, at start; raise :class:`BrokerUnavailable` if it cannot."""

    def poll(self) -> list[QueueReading]:
        """Read every queue once; raise :class:`BrokerUnavailable` if the broker fails."""
        return []

    def abort(self) -> None:
        """Called from another thread when a poll overran its deadline: close the sockets."""

    def close(self) -> None:
        """Release the collector's connections (the monitor is stopping)."""

    @property
    def label(self) -> str:
        return f"{self.framework} at {self.broker}"

    def capped(self, names: Sequence[str]) -> list[str]:
        """The first ``max_queues`` of the discovered ``names`` (sorted); says once if any are left out."""
        ordered = sorted(set(names))
        if len(ordered) > self.max_queues and self._capped_at != len(ordered):
            self._capped_at = len(ordered)
            logger.warning(
                "otel-jobs monitor: %s has %d queues; watching the first %d by name "
                "(--max-queues); left out: %s",
                self.label,
                len(ordered),
                self.max_queues,
                ", ".join(ordered[self.max_queues : self.max_queues + 5])
                + (", ..." if len(ordered) > self.max_queues + 5 else ""),
            )
        return ordered[: self.max_queues]


class RedisCollector(Collector):
    """A collector that reads one Redis through ``client`` (a bounded client of
    :mod:`._redis`): reaching it is a ``PING``, aborting and closing drop its sockets."""

    def __init__(self, client: Any, source: str = "", max_queues: int = 1000) -> None:
        from . import _redis  # not at import: Dramatiq on RabbitMQ runs without redis-py

        self.client = client
        super().__init__(_redis.address(client), source, max_queues)

    def check(self) -> None:
        from . import _redis

        _redis.ping(self.client)

    def abort(self) -> None:
        from . import _redis

        _redis.close(self.client)

    def close(self) -> None:
        self.abort()


class RedisUrlCollector(RedisCollector):
    """A collector given by a Redis URL (``--rq-redis-url``, ``--arq-redis-url``) and the
    queues to watch (:meth:`watched`: what the framework watches when none are named)."""

    #: The flag that gives the URL, for error messages.
    url_flag: ClassVar[str] = ""

    def __init__(
        self,
        url: str,
        *,
        queues: Sequence[str] = (),
        timeout: float = 5.0,
        max_queues: int = 1000,
        source: str | None = None,
    ) -> None:
        from . import _redis

        client = _redis.from_url(url, timeout)
        super().__init__(client, self.url_flag if source is None else source, max_queues)
        self.queues = self.watched(queues)

    def watched(self, queues: Sequence[str]) -> Sequence[str]:
        """The queues to read at every poll; empty: discovered at each poll."""
        return tuple(queues)


class ConnectionCollector(Collector):
    """A collector on one connection to a broker (RabbitMQ) that it opens when first needed
    (``_open``) and drops on a broker error (``_drop``), raising :class:`BrokerUnavailable`."""

    #: What the broker's client raises when the broker fails (set by the subclass).
    _errors: tuple[type[BaseException], ...] = (OSError,)

    def _open(self) -> Any:
        raise NotImplementedError

    def _drop(self) -> None:
        """Forget the connection (the next call opens another)."""

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Around calls to the broker: its errors drop the connection and become
        :class:`BrokerUnavailable`."""
        try:
            yield
        except self._errors as exc:
            self._drop()
            raise BrokerUnavailable(reason(exc)) from exc

    def check(self) -> None:
        with self._reading():
            self._open()


def reason(exc: BaseException) -> str:
    """What a broker's client error says, with its type: ``ConnectionError: Error 111 ...``.
    An error without text of its own (pika's, which have a ``repr`` only) is told by its
    ``repr``: what it wraps."""
    name = type(exc).__name__
    text = str(exc).strip() or (repr(exc).strip() if exc.args else "")
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


def due_time(published: float | None, eta: float | None) -> float | None:
    """When a job became due: its ETA if later than its publish time, else the publish time."""
    if published is None:
        return eta
    if eta is None:
        return published
    return max(published, eta)

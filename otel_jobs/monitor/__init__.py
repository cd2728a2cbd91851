"""``otel-jobs monitor``: a process of its own that watches the queues on the brokers.

Everything otel-jobs sees from inside a worker it sees when a job *starts*; a queue nobody drains
(every worker down, or every slot taken by stuck runs) is visible only from the broker. The
monitor reads each broker at a fixed interval and serves, on its own ``/metrics`` (port 9465):

* ``otel_jobs_queue_depth{framework, queue, state}``: jobs by state (waiting, scheduled,
  reserved, started, deferred, failed, dead: those the broker keeps for each framework);
* ``otel_jobs_queue_oldest_waiting_age_seconds{framework, queue}``: how long the job at the head
  of the queue has waited, where the broker can tell; no series when the queue is empty;
* ``otel_jobs_monitor_broker_up{framework, broker}`` and
  ``otel_jobs_monitor_poll_duration_seconds{framework}``.

Layout: :mod:`.base` (the collector interface and its invariants: read only, bounded, broker
errors told apart from bugs), one module per framework (:mod:`.celery`, :mod:`.rq`,
:mod:`.dramatiq`, :mod:`.arq`, :mod:`.huey`; :mod:`.memory` for in-process queues),
:mod:`.process` (the poll loop, deadlines, the exposition), :mod:`.settings` (flags and
``OTEL_JOBS_MONITOR_*``) and :mod:`.command` (the command line). A new kind of reading, such as
a lost-run detector, is one more :class:`~.base.Collector` per framework, added to the list
:func:`.command.build_collectors` returns.
"""

from __future__ import annotations

from .base import BrokerUnavailable, Collector, QueueReading
from .process import Monitor
from .settings import MonitorSettings

__all__ = ["BrokerUnavailable", "Collector", "Monitor", "MonitorSettings", "QueueReading"]

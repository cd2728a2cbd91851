"""Celery: every task execution a run, from the worker's signals, prefork children included.

The user's guide (where to call ``instrument()``, the signal-to-outcome table, time limits,
queue wait, trace context, pools, the audit's findings) is ``docs/frameworks/celery.md``.

Modules, one idea each:

* :mod:`.integration`: the adapter; the signal receivers mapping Celery onto the core's run
  lifecycle (start, activate, finish, deactivate) and the skipped-message counters.
* :mod:`.request`: pure reads of a request or message: queue, due time, time limits, trace
  context, outcome of an exception.
* :mod:`.lost`: the prefork main process recording the runs its children did not finish
  (hard time limit, ``revoke(terminate=True)``, ``WorkerLostError``), once per task id.
* :mod:`.leases`: what a run adds to its worker process's lease (core/lease.py) for
  ``otel-jobs monitor``'s lost runs, and the redelivery count.
* :mod:`.contrib`: adopting opentelemetry-instrumentation-celery's span, so a run has one span.
* :mod:`.shared_files`: the marker and notes in the multiprocess directory (every file
  operation of this integration there).
* :mod:`.audit`: the configuration audit (worker start and ``otel-jobs doctor``).
* :mod:`.beat`: beat's entries on the schedule gauges (``celery beat`` and ``worker -B``).

Invariants: a receiver never raises into Celery (guarded, counted); a run is finished exactly
once, by the process that ran it or, for a child stopped mid-run, by the main process; nothing
but the publish stamp and the trace context is written into messages.
"""

from __future__ import annotations

from .audit import audit
from .integration import Integration
from .request import FRAMEWORK, PUBLISHED_HEADER

__all__ = ["FRAMEWORK", "PUBLISHED_HEADER", "Integration", "audit"]

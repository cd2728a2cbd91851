"""Push each job's metrics to a Prometheus Pushgateway: cron scripts and other short-lived processes.

A process that exits before Prometheus scrapes it (a cron script, a Kubernetes CronJob, a
one-off command) never shows its runs on a ``/metrics`` endpoint. With ``pushgateway_url`` (or
``OTEL_JOBS_PUSHGATEWAY_URL``) set, :class:`Pusher` sends the otel-jobs metrics of each job to
the gateway, which keeps the last push for Prometheus to scrape:

* at the end of every run, from a background thread (the run's own thread only marks the job
  as having news: a set insertion under a lock);
* at exit (and at ``uninstrument()``), from the exiting thread, for every job this process ran,
  all pushes together taking at most ``pushgateway_timeout`` seconds, so that a gateway that is
  down or never answers delays the exit by at most that.

Grouping key: ``job`` is the job's name and ``instance`` the host name, so that one push
replaces (HTTP ``PUT``) that job's previous push from the same host and nothing else; the
samples are those with that ``job_name`` label, and ``otel_jobs_internal_errors_total``. Scrape
the gateway with ``honor_labels: true`` so that these labels are kept.

A push that fails is counted in ``otel_jobs_internal_errors_total{component="pushgateway"}``
and logged once; the job never sees it. Only the process that called ``instrument()`` pushes
(the merge of its forked children's metrics included); a forked child does not. The timeout
bounds each network operation (connect, send, each read); resolving the gateway's host name
is not bounded by it: use an IP address or a host name in ``/etc/hosts`` where that matters.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import Metric
from prometheus_client.exposition import basic_auth_handler, default_handler, push_to_gateway

from .core import errors

if TYPE_CHECKING:
    from .core.agent import Agent

logger = logging.getLogger("otel_jobs")

_ALWAYS = ("otel_jobs_internal_errors",)


class PushError(Exception):
    """A push to the Pushgateway that did not succeed (counted, logged once)."""


class Pusher:
    """Pushes the metrics of the jobs that ran to a Pushgateway (see the module docstring)."""

    def __init__(self, agent: Agent, url: str, timeout: float) -> None:
        self._agent = agent
        parts = urllib.parse.urlsplit(url)
        self._user = urllib.parse.unquote(parts.username or "")
        self._password = urllib.parse.unquote(parts.password or "")
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"  # an IPv6 address
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
        self.url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        self.timeout = timeout
        self.host = socket.gethostname()
        self._pid = os.getpid()
        self._news: set[str] = set()
        self._ran: set[str] = set()
        self._cond = threading.Condition()
        self._push_lock = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.pushes = 0  # successful pushes (for tests and diagnosis)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._loop, name="otel-jobs-pushgateway", daemon=True
        )
        self._thread.start()

    def run_finished(self, job_name: str) -> None:
        """A run of ``job_name`` ended in this process: push that job soon (never blocks)."""
        if os.getpid() != self._pid:
            return  # a forked child: the process that called instrument() pushes
        with self._cond:
            self._ran.add(job_name)
            self._news.add(job_name)
            self._cond.notify()

    def close(self) -> None:
        """Stop the thread and push every job that ran, within one ``timeout`` in all."""
        if os.getpid() != self._pid:
            return
        deadline = time.monotonic() + self.timeout
        with self._cond:
            self._stopping = True
            names = sorted(self._ran)
            self._news.clear()
            self._cond.notify()
        if not names:
            return
        # Wait for a push in flight, so that its older data cannot land after the last push.
        if not self._push_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            errors.record("pushgateway", PushError(self._failure("a push still in flight")))
            return
        try:
            for name in names:
                left = deadline - time.monotonic()
                if left <= 0:
                    errors.record("pushgateway", PushError(self._failure("no time left at exit")))
                    return
                self._push(name, left)
        finally:
            self._push_lock.release()

    # --- the background thread ----------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._news and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                names = sorted(self._news)
                self._news.clear()
            with self._push_lock:
                for name in names:
                    with self._cond:
                        if self._stopping:
                            return
                    self._push(name, self.timeout)

    def _push(self, job_name: str, timeout: float) -> None:
        try:
            push_to_gateway(
                self.url,
                job=job_name,
                registry=_JobMetrics(self._agent, job_name),
                grouping_key={"instance": self.host},
                timeout=timeout,
                handler=self._handler,
            )
            self.pushes += 1
        except Exception as exc:
            errors.record("pushgateway", PushError(self._failure(f"{type(exc).__name__}: {exc}")))

    def _handler(
        self, url: str, method: str, timeout: float | None, headers: list[Any], data: bytes
    ) -> Any:
        if self._user:
            return basic_auth_handler(
                url, method, timeout, headers, data, self._user, self._password
            )
        return default_handler(url, method, timeout, headers, data)

    def _failure(self, why: str) -> str:
        return (
            f"cannot push to the Pushgateway {self.url} (timeout {self.timeout:g}s): {why}. "
            "Jobs run as usual; their last results reach the gateway once it answers again."
        )


class _JobMetrics:
    """The samples of one job (and the internal error counts), as a registry to push."""

    def __init__(self, agent: Agent, job_name: str) -> None:
        self._agent = agent
        self._job_name = job_name

    def collect(self) -> Iterator[Metric]:
        from .core.multiprocess import MergedCollector

        agent = self._agent
        source = MergedCollector(agent.share, agent.telemetry.registry)
        name = self._job_name
        for family in source.collect():
            if family.name in _ALWAYS:
                samples = list(family.samples)
            else:
                samples = [s for s in family.samples if s.labels.get("job_name") == name]
            if not samples:
                continue
            kept = Metric(family.name, family.documentation, family.type, family.unit)
            kept.samples = samples
            yield kept

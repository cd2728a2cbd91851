"""A real Prometheus for ``otel-jobs demo --prometheus``: the shipped rules, fired while you watch.

:class:`DemoPrometheus` runs the ``prometheus`` binary found on ``PATH`` in a temporary
directory of its own (its configuration, the rules, its TSDB and its log), on a free port of
127.0.0.1, scraping the demo's worker (job ``otel-jobs``) and its monitor (job
``otel-jobs-monitor``, the jobs the rules select) every second and evaluating the rules every
second. The rules are the package's own (:mod:`otel_jobs.rules`), rendered for demo speed by
:func:`demo_rules`: every ``for`` and window shortened, so that a stall alert goes pending then
firing within the demo's first minute. A thread polls ``/api/v1/alerts`` once a second and keeps,
for each alert (name and labels), when the demo first saw it pending and firing.

Invariants: the demo never depends on it (any failure to start is reported in one line and the
demo runs as without it); :meth:`DemoPrometheus.stop` ends the process and removes the directory,
and the demo calls it on every way out (its end, Ctrl-C, SIGTERM). Prometheus runs in a session
of its own, so a Ctrl-C at the terminal reaches the demo only, which stops it in order. A demo
killed outright (SIGKILL) leaves both behind: nothing in the process can act then.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otel_jobs.rules import RulesConfig, render
from otel_jobs.rules.catalog import default_for

#: What to tell a user whose PATH has no ``prometheus``.
INSTALL_HINT = (
    "otel-jobs demo: no prometheus binary on PATH, the demo runs without alerts (install it: "
    "apt-get install prometheus on Debian/Ubuntu, or https://prometheus.io/download/)"
)
#: The ``for`` of every alert, and the rules' windows, at demo speed.
DEMO_FOR = "10s"
SCRAPE_INTERVAL = "1s"
#: Labels that tell one alert instance from another in the table (``alertname`` aside).
_KEY_LABELS = ("job_name", "queue", "instance", "state", "library", "host", "call_site")


def demo_rules() -> RulesConfig:
    """The shipped rules with every ``for`` at 10 s and windows of a minute or two."""
    return RulesConfig(
        for_durations={name: DEMO_FOR for name in default_for()},
        duration_window="2m",
        failure_window="1m",
        timeout_window="2m",
        queue_wait_window="1m",
        outbound_window="2m",
        options={"backlog_age_seconds": 20.0, "backlog_growing_window": "1m"},
    )


def binary() -> str | None:
    """The ``prometheus`` on ``PATH``, or None."""
    return shutil.which("prometheus")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _host_port(url: str) -> str:
    """``127.0.0.1:9464`` of ``http://127.0.0.1:9464/metrics``."""
    return url.split("://", 1)[1].split("/", 1)[0]


@dataclass
class Seen:
    """One alert (a name and its labels) as the demo saw it: its state and when it entered each."""

    name: str
    labels: Mapping[str, str]
    state: str = "pending"
    first: dict[str, float] = field(default_factory=dict)  # state -> time.monotonic()
    active: bool = True

    @property
    def short(self) -> str:
        return self.name.removeprefix("OtelJobs")

    @property
    def subject(self) -> str:
        """What it is about: ``job / queue``, a queue, or a target."""
        job, queue = self.labels.get("job_name"), self.labels.get("queue")
        if "call_site" in self.labels:
            return f"{self.labels.get('library')} to {self.labels.get('host')} from {self.labels['call_site']}"
        if job:
            return f"{job} / {queue}" if queue else job
        if queue:
            return f"queue {queue}"
        return self.labels.get("instance") or self.labels.get("job") or ""


class DemoPrometheus:
    """Prometheus scraping the demo's two endpoints with the rules at demo speed (see module)."""

    def __init__(self, path: str, worker_url: str, monitor_url: str) -> None:
        self.path = path
        self.worker = _host_port(worker_url)
        self.monitor = _host_port(monitor_url)
        self.dir = Path(tempfile.mkdtemp(prefix="otel-jobs-demo-prometheus-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, tuple[tuple[str, str], ...]], Seen] = {}
        self.error: str | None = (
            None  # the last failure to read the alerts, if the last read failed
        )
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 30.0, cancel: threading.Event | None = None) -> None:
        """Write the files, start Prometheus and wait until it scrapes both endpoints.

        Raises ``RuntimeError`` (with the tail of Prometheus' log) when it does not come up,
        or when ``cancel`` is set meanwhile (the demo was asked to stop).
        """
        rules = self.dir / "otel-jobs.rules.yml"
        rules.write_text(render(demo_rules(), part="all"))
        config = self.dir / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {
                        "scrape_interval": SCRAPE_INTERVAL,
                        "scrape_timeout": SCRAPE_INTERVAL,
                        "evaluation_interval": SCRAPE_INTERVAL,
                    },
                    "rule_files": [str(rules)],
                    "scrape_configs": [
                        {"job_name": "otel-jobs", "static_configs": [{"targets": [self.worker]}]},
                        {
                            "job_name": "otel-jobs-monitor",
                            "static_configs": [{"targets": [self.monitor]}],
                            # The pool's jobs run under their own queue labels (mail, billing,
                            # ...), so no run of queue "pool" ever finishes and the rules would
                            # take it for a queue nobody drains. A real queue is named as its
                            # runs are; the demo's undrained one is "exports".
                            "metric_relabel_configs": [
                                {"source_labels": ["queue"], "regex": "pool", "action": "drop"}
                            ],
                        },
                    ],
                },
                indent=2,
            )
        )
        self.port = _free_port()
        with open(self.dir / "prometheus.log", "wb") as log:
            self.proc = subprocess.Popen(
                [self.path, f"--config.file={config}", f"--storage.tsdb.path={self.dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir,
                start_new_session=True,  # a terminal's Ctrl-C reaches the demo, which stops it
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self._scraping_both():
            if cancel is not None and cancel.is_set():
                raise RuntimeError("stopped while Prometheus was starting")
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Prometheus did not come up: {self.log_tail() or 'no log'}")
            time.sleep(0.2)
        self._poller = threading.Thread(
            target=self._poll, name="demo-prometheus-alerts", daemon=True
        )
        self._poller.start()

    def stop(self) -> None:
        """End Prometheus (SIGTERM, then SIGKILL after 10 s) and remove its directory."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.dir / "prometheus.log").read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    # --- the HTTP API ---------------------------------------------------------------------

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=2) as resp:
            return json.loads(resp.read())

    def _scraping_both(self) -> bool:
        """Both targets scraped once (up or not): no sample of the demo is lost after this."""
        try:
            targets = self._get("/api/v1/targets?state=active")["data"]["activeTargets"]
        except (OSError, ValueError, KeyError):
            return False
        scraped = {t["labels"].get("job") for t in targets if t.get("health") != "unknown"}
        return {"otel-jobs", "otel-jobs-monitor"} <= scraped

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            try:
                alerts = self._get("/api/v1/alerts")["data"]["alerts"]
            except Exception as exc:  # the demo goes on; the table says it
                self.error = str(exc) or type(exc).__name__
                continue
            self.error = None
            self._update(alerts, time.monotonic())

    def _update(self, alerts: list[dict[str, Any]], now: float) -> None:
        with self._lock:
            for seen in self._seen.values():
                seen.active = False
            for alert in alerts:
                labels = alert.get("labels", {})
                name = labels.get("alertname", "?")
                key = (name, tuple(sorted((k, labels[k]) for k in _KEY_LABELS if k in labels)))
                if key not in self._seen:
                    self._seen[key] = Seen(name, dict(key[1]))
                seen = self._seen[key]
                seen.state = alert.get("state", "?")
                seen.active = True
                seen.first.setdefault(seen.state, now)

    def alerts(self) -> list[Seen]:
        """Every alert seen so far (those no longer active too), firing first."""
        with self._lock:
            seen = [
                Seen(s.name, s.labels, s.state, dict(s.first), s.active)
                for s in self._seen.values()
            ]
        order = {"firing": 0, "pending": 1}
        return sorted(seen, key=lambda s: (not s.active, order.get(s.state, 2), s.name, s.subject))

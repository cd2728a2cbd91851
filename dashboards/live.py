"""A live stack to prove the dashboards on: real workers scraped by a real Prometheus.

:class:`Stack` starts, on 127.0.0.1 and free ports:

* ``otel-jobs demo`` (healthy, failing, slow, progress-reporting and stuck jobs), and the
  monitor it runs next to its worker (its queues, one of them never drained), scraped as
  ``otel-jobs-monitor``;
* a queue worker (``python -m dashboards.live queue-worker``): producers put jobs on an
  in-process queue in bursts and two consumer threads run them with ``job_run(...,
  enqueued_at=...)``: a second instance, with a queue of its own, for the chained variables.
  Every fifth run counts as handed out again (``otel_jobs_runs_redelivered_total``, as an
  integration records a redelivered message), and a lost-run feed on ``--monitor-port``
  (scraped as ``otel-jobs-monitor``) has the monitor's lost-run detector count one of its
  jobs lost at every burst, requeued up to ``--max-lost`` (2) times and then not again:
  ``otel_jobs_runs_lost_total`` and ``otel_jobs_runs_requeued_total``;
* Debian's ``prometheus`` with a temporary TSDB, scraping both every second.

The tests of ``tests/dashboards`` and the preview renderer (:mod:`dashboards.preview`) use
it; :func:`substitute` turns a dashboard query into the PromQL Grafana would send.

    with Stack(duration=120) as stack:
        stack.wait_for("sum(otel_jobs_runs_stalled) > 0")
        print(stack.query("sum(otel_jobs_runs_in_progress)"))
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

PROMETHEUS = "/usr/bin/prometheus"
SCRAPE_INTERVAL = 1  # seconds
ROOT = Path(__file__).resolve().parent.parent


def prometheus_binary() -> str | None:
    """The Prometheus server binary, or None when Debian's ``prometheus`` is not installed."""
    if os.access(PROMETHEUS, os.X_OK):
        return PROMETHEUS
    return shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusError(RuntimeError):
    """Prometheus answered a query with an error."""


class Stack:
    """The demo, the queue worker and Prometheus scraping them (see the module docstring)."""

    def __init__(self, duration: float = 120.0, python: str = sys.executable) -> None:
        self.duration = duration
        self.python = python
        self.processes: list[subprocess.Popen[bytes]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="otel-jobs-dashboards-"))
        self.demo_port = free_port()
        self.monitor_port = free_port()
        self.queue_port = free_port()
        self.lost_port = free_port()
        self.prom_port = free_port()
        self.url = f"http://127.0.0.1:{self.prom_port}"
        self.started = time.time()

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        # The child keeps its own copy of the log's descriptor; ours can close at once.
        with open(self.tmp / log, "wb") as out:
            proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                start_new_session=True,
            )  # fmt: skip
        self.processes.append(proc)
        return proc

    def start(self) -> None:
        binary = prometheus_binary()
        if binary is None:
            raise FileNotFoundError("prometheus is not installed (apt-get install -y prometheus)")
        self.started = time.time()
        seconds = f"{self.duration:.0f}"
        # Prometheus first, as in production: it sees every counter from its first value.
        config = self.tmp / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {
                        "scrape_interval": f"{SCRAPE_INTERVAL}s",
                        "scrape_timeout": f"{SCRAPE_INTERVAL}s",
                        "evaluation_interval": f"{SCRAPE_INTERVAL}s",
                    },
                    # The recording rules the overview's fleet panels read.
                    "rule_files": [str(ROOT / "alerts" / "otel-jobs.records.yml")],
                    "scrape_configs": [
                        {
                            "job_name": "otel-jobs",
                            "static_configs": [
                                {
                                    "targets": [
                                        f"127.0.0.1:{self.demo_port}",
                                        f"127.0.0.1:{self.queue_port}",
                                    ]
                                }
                            ],
                        },
                        {
                            "job_name": "otel-jobs-monitor",
                            "static_configs": [
                                {
                                    "targets": [
                                        f"127.0.0.1:{self.monitor_port}",
                                        f"127.0.0.1:{self.lost_port}",
                                    ]
                                }
                            ],
                        },
                    ],
                }
            )
        )
        self._spawn(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.prom_port}", "--log.level=warn"],
            "prometheus.log",
        )  # fmt: skip
        self._wait(lambda: self._get("/-/ready") is not None, "Prometheus to be ready", 60)
        # Target discovery reaches the scrape loops a few seconds after start-up: wait until the
        # (still empty) targets are being scraped, so no early sample of the workers is lost.
        self.wait_for('count(up{job="otel-jobs"}) == 2', timeout=60)
        self._spawn(
            [self.python, "-m", "otel_jobs", "demo", "--duration", seconds,
             "--port", str(self.demo_port), "--monitor-port", str(self.monitor_port), "--no-live"],
            "demo.log",
        )  # fmt: skip
        self._spawn(
            [self.python, "-m", "dashboards.live", "queue-worker", "--duration", seconds,
             "--port", str(self.queue_port), "--monitor-port", str(self.lost_port)],
            "queue-worker.log",
        )  # fmt: skip
        # Both targets scraped successfully at least once.
        self.wait_for('count(up{job="otel-jobs"} == 1) == 2', timeout=60)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        self.processes.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def logs(self) -> str:
        parts = []
        for path in sorted(self.tmp.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    # --- the HTTP API ----------------------------------------------------------------------

    def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        url = self.url + path
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                body = resp.read().decode()
        except urllib.error.HTTPError as exc:
            body = exc.read().decode()
            try:
                error = json.loads(body).get("error", body)
            except ValueError:
                error = body
            raise PrometheusError(f"{error} (query: {params})") from None
        except OSError:
            return None
        if path.startswith("/-/"):
            return body
        data = json.loads(body)
        if data.get("status") != "success":
            raise PrometheusError(f"{data.get('error')} (query: {params})")
        return data["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query: the ``result`` list (vector) of ``/api/v1/query``."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        if data is None:
            raise PrometheusError(f"no answer from {self.url} (query: {expr})")
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(
        self, expr: str, start: float, end: float, step: float = 1.0
    ) -> list[dict[str, Any]]:
        """A range query, as a Grafana time series panel sends it: the ``result`` (matrix)."""
        data = self._get(
            "/api/v1/query_range",
            {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step},
        )
        if data is None:
            raise PrometheusError(f"no answer from {self.url} (query: {expr})")
        return list(data["result"])

    def label_values(self, label: str, match: str | None = None) -> list[str]:
        """What Grafana's ``label_values(match, label)`` asks Prometheus for."""
        params: dict[str, Any] = {"start": f"{self.started - 60:.3f}", "end": f"{time.time():.3f}"}
        if match:
            params["match[]"] = match
        data = self._get(f"/api/v1/label/{label}/values", params)
        return list(data or [])

    def wait_for(self, expr: str, timeout: float = 90.0) -> list[dict[str, Any]]:
        """Poll an instant query until it returns a sample (generous: the machine may be slow)."""
        found: list[dict[str, Any]] = []

        def ready() -> bool:
            nonlocal found
            found = self.query(expr)
            return bool(found)

        self._wait(ready, f"a result for {expr}", timeout)
        return found

    def _wait(self, check: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if check():
                    return
            except PrometheusError:
                pass
            for proc in self.processes:
                if proc.poll() is not None and proc.returncode not in (0, -signal.SIGTERM):
                    raise RuntimeError(
                        f"{proc.args!r} exited with {proc.returncode}\n{self.logs()}"
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"timed out after {timeout:.0f}s waiting for {what}\n{self.logs()}"
                )
            time.sleep(0.5)


# --- dashboard queries as Grafana sends them ------------------------------------------------

#: How Grafana fills its built-in variables for a 1 s scrape interval and a short time range.
#: ``$__rate_interval`` is max($__interval + scrape interval, 4 x scrape interval), rounded up.
BUILTINS = {
    "__rate_interval": "10s",
    "__interval": "2s",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """``expr`` with ``$name``, ``${name}`` and ``[[name]]`` replaced (longest names first)."""
    values = {**BUILTINS, **variables}

    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in values:
            raise KeyError(f"undefined variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", repl, expr)


def referenced_variables(text: str) -> set[str]:
    """Every ``$name``/``${name}``/``[[name]]`` in ``text`` except Grafana's own (``__...``)."""
    names = set()
    for match in re.finditer(r"\$\{(\w+)(?:[:.][\w.]+)?\}|\[\[(\w+)\]\]|\$(\w+)", text):
        name = match.group(1) or match.group(2) or match.group(3)
        if not name.startswith("__"):
            names.add(name)
    return names


LABEL_VALUES = re.compile(r"^label_values\((?:(?P<match>.+),\s*)?(?P<label>\w+)\)$")


def parse_label_values(query: str) -> tuple[str | None, str]:
    """``label_values(metric{...}, label)`` -> (``metric{...}``, ``label``)."""
    m = LABEL_VALUES.match(query.strip())
    if m is None:
        raise ValueError(f"not a label_values() query: {query!r}")
    return m.group("match"), m.group("label")


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data (rows and the panels nested in collapsed rows included)."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
            continue
        yield panel


def is_finite(value: str) -> bool:
    return not math.isnan(float(value)) and not math.isinf(float(value))


# --- a second, queue-fed worker -----------------------------------------------------------------


def queue_worker(
    port: int, duration: float, seed: int = 11, monitor_port: int | None = None
) -> int:
    """Jobs published on an in-process queue in bursts, consumed by two threads.

    Each run is started with ``enqueued_at`` (its publish time), so the queue wait of a burst
    grows while the consumers catch up: the shape of a queue behind busy workers. Every fifth
    run is recorded as handed out again; with ``monitor_port``, a lost-run feed (see the module
    docstring) is served there.
    """
    import queue as queue_mod

    import otel_jobs
    from otel_jobs.core import agent as agent_mod

    otel_jobs.instrument(prometheus_port=port, watchdog_interval=0.5, frameworks=[])
    rng = random.Random(seed)
    jobs: queue_mod.Queue[float | None] = queue_mod.Queue()
    agent = agent_mod.current()
    count = itertools.count(1)
    lose = _lost_feed(monitor_port) if monitor_port is not None else None

    def consume() -> None:
        while (published := jobs.get()) is not None:
            with otel_jobs.job_run(
                "shop.fulfil_order",
                queue="orders",
                enqueued_at=published,
                max_duration=10,
                heartbeat_timeout=5,
            ) as run:
                series = getattr(run, "series", None)  # none when not instrumented
                if agent is not None and series is not None and next(count) % 5 == 0:
                    agent.telemetry.record_redelivered(series)
                time.sleep(rng.uniform(0.05, 0.25))

    consumers = [threading.Thread(target=consume, daemon=True) for _ in range(2)]
    for t in consumers:
        t.start()
    stop = time.monotonic() + duration
    while time.monotonic() < stop:
        for _ in range(rng.randint(6, 14)):
            jobs.put(time.time())
        if lose is not None:
            lose()
        time.sleep(2.0)
    for _ in consumers:
        jobs.put(None)
    for t in consumers:
        t.join(timeout=10)
    otel_jobs.uninstrument()
    return 0


def _lost_feed(port: int) -> Callable[[], None]:
    """Serve the monitor's lost-run counters on ``port``; the function that loses one run.

    The runs go through the detector's own handling of a claimed lost run (count, span, log,
    requeue policy with ``--requeue-lost --max-lost 2``), without a Redis: each job id is lost
    three times (requeued twice, then not again), then the next id.
    """
    import redis
    from prometheus_client import CollectorRegistry, start_http_server

    from otel_jobs.monitor.lost.detector import Detector, LostRun

    class Feed(Detector):
        framework = "demo"

        def requeue(self, run: LostRun, attempt: Mapping[str, Any]) -> bool:
            return True

    registry = CollectorRegistry()
    detector = Feed(redis.Redis(host="127.0.0.1", port=1), requeue=True, max_lost=2)
    detector.register(registry)
    start_http_server(port, "127.0.0.1", registry)
    losses = itertools.count(0)

    def lose() -> None:
        n = next(losses)
        now = time.time()
        run = LostRun(
            lease=f"demo:{os.getpid()}:{n}", key=f"run:{n}", framework="demo",
            job_id=f"order-{n // 3}", name="shop.fulfil_order", queue="orders", attempt=1,
            started=now - 30, host="demo", pid=os.getpid(), expired_at=now - 1,
        )  # fmt: skip
        detector._lost(run, run.attempt_record(), n % 3 + 1, now)

    return lose


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="helpers of the dashboards' live checks")
    sub = parser.add_subparsers(dest="command", required=True)
    qw = sub.add_parser("queue-worker", help="run the queue-fed sample worker")
    qw.add_argument("--port", type=int, required=True)
    qw.add_argument("--duration", type=float, default=60.0)
    qw.add_argument("--monitor-port", type=int, default=None)
    args = parser.parse_args(argv)
    return queue_worker(args.port, args.duration, monitor_port=args.monitor_port)


if __name__ == "__main__":
    sys.exit(main())

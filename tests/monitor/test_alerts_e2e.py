"""End to end: a real Prometheus with the rendered rules, scraping a real ``otel-jobs monitor``
and a real, instrumented RQ worker on a Redis of the test's own.

Queue ``stuck`` has jobs and no worker; queue ``busy`` is fed all along and drained by the
worker. The rules are rendered with short ``for`` durations and thresholds (the shipped ones are
minutes long). ``OtelJobsQueueBacklogOld`` and ``OtelJobsQueueBacklogGrowing`` must fire for
``stuck``, and no backlog alert, firing or pending, ever for ``busy``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_jobs import rules
from tests.support import free_port, scrape
from tests.support.processes import terminate
from tests.support.prometheus import get_json, require_binary, start_prometheus

from .support import MonitorProcess, RedisServer, wait_for

rq = pytest.importorskip("rq")
import redis  # noqa: E402

pytestmark = [pytest.mark.prometheus, pytest.mark.broker]

WORKER = textwrap.dedent(
    """
    import sys

    import otel_jobs
    from redis import Redis
    from rq import Queue, SimpleWorker

    otel_jobs.instrument(prometheus_port=int(sys.argv[2]), frameworks=["rq"], outbound=[])
    connection = Redis.from_url(sys.argv[1])
    SimpleWorker([Queue("busy", connection=connection)], connection=connection).work()
    """
)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def feeder(own_redis: RedisServer) -> Iterator[None]:
    """Jobs on both queues all along: ``busy`` every 0.3 s, ``stuck`` every second."""
    client = redis.Redis.from_url(own_redis.url(0))
    busy, stuck = rq.Queue("busy", connection=client), rq.Queue("stuck", connection=client)
    for _ in range(3):
        stuck.enqueue("os.getpid")
    done = threading.Event()

    def feed() -> None:
        tick = 0
        while not done.wait(0.3):
            busy.enqueue("os.getpid")
            tick += 1
            if tick % 3 == 0:
                stuck.enqueue("os.getpid")

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    yield
    done.set()
    thread.join(10)
    client.close()


def test_a_queue_nobody_drains_fires_the_backlog_alerts_and_a_drained_one_never(
    tmp_path: Path, own_redis: RedisServer, feeder: None
) -> None:
    require_binary("prometheus")  # before any process is started
    url = own_redis.url(0)
    worker_port = free_port()
    (tmp_path / "worker.py").write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with open(tmp_path / "worker.log", "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, str(tmp_path / "worker.py"), url, str(worker_port)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    monitor = MonitorProcess(["--rq-redis-url", url, "--interval", "1"], tmp_path / "monitor.log")
    config = rules.RulesConfig(
        for_durations=dict.fromkeys(rules.DEFAULT_FOR, "2s"),
        options={"backlog_age_seconds": 3.0, "backlog_growing_window": "20s"},
    )
    # With the recording rules, as deployed: OtelJobsQueueBacklogGrowing reads the finished
    # runs from them.
    (tmp_path / "fast.rules.yml").write_text(rules.render(config, part="all"))
    prometheus = start_prometheus(
        tmp_path,
        [
            {"job_name": "otel-jobs-monitor",
             "static_configs": [{"targets": [f"127.0.0.1:{monitor.port}"]}]},
            {"job_name": "otel-jobs", "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]},
        ],
        ["fast.rules.yml"],
    )  # fmt: skip
    base = prometheus.base
    try:
        wait_for("the worker's /metrics", lambda: scrape(f"http://127.0.0.1:{worker_port}/metrics"))
        monitor.wait_for("the monitor's first poll", lambda s: s.find("otel_jobs_queue_depth"))
        wait_for(
            "Prometheus to load the rules",
            lambda: get_json(f"{base}/api/v1/rules")["data"]["groups"],
        )

        seen_busy: list[dict[str, Any]] = []

        def backlog_alerts_of_stuck() -> set[str] | None:
            alerts = get_json(f"{base}/api/v1/alerts")["data"]["alerts"]
            backlog = [
                a for a in alerts if a["labels"]["alertname"].startswith("OtelJobsQueueBacklog")
            ]
            seen_busy.extend(a for a in backlog if a["labels"].get("queue") == "busy")
            firing = {
                a["labels"]["alertname"]
                for a in backlog
                if a["state"] == "firing" and a["labels"].get("queue") == "stuck"
            }
            return (
                firing
                if firing == {"OtelJobsQueueBacklogOld", "OtelJobsQueueBacklogGrowing"}
                else None
            )

        wait_for(
            "both backlog alerts to fire for the stuck queue", backlog_alerts_of_stuck, timeout=180
        )
        # The drained queue was read all along (and its worker's runs were scraped).
        query = urllib.parse.urlencode(
            {"query": 'otel_jobs_queue_depth{queue="busy",state="waiting"}'}
        )
        assert get_json(f"{base}/api/v1/query?{query}")["data"]["result"]
        query = urllib.parse.urlencode({"query": 'otel_jobs_runs_finished_total{queue="busy"}'})
        finished = get_json(f"{base}/api/v1/query?{query}")["data"]["result"]
        assert finished and sum(float(r["value"][1]) for r in finished) > 0
        assert seen_busy == [], f"a backlog alert for the drained queue: {seen_busy}"
        alerts = get_json(f"{base}/api/v1/alerts")["data"]["alerts"]
        names = {a["labels"]["alertname"] for a in alerts}
        assert "OtelJobsMonitorBrokerDown" not in names and "OtelJobsMonitorAbsent" not in names
    finally:
        prometheus.stop()
        monitor.stop()
        terminate(worker)

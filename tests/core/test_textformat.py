"""otel-jobs' own text writer serves what prometheus-client served, family for family.

Both are parsed with prometheus-client's parser and compared: names, types, help, labels and
values of every sample, over a workload that touches every family otel-jobs exposes.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families

from otel_jobs.core import errors
from otel_jobs.core.multiprocess import MergedCollector
from otel_jobs.core.run import OUTCOMES
from otel_jobs.core.textformat import TextWriter
from tests.support import scrape, scrape_text

NASTY = 'say "hi" to C:\\new\nall'  # quotes, a backslash and a newline in a label value

Families = dict[str, tuple[str, str, list[tuple[str, tuple[tuple[str, str], ...], float | None]]]]


# What a client asks for: curl or a plain GET, the text format 1.0.0, Prometheus 2.x itself.
ACCEPT = {
    "text-0.0.4": "",
    "text-1.0.0": "text/plain; version=1.0.0",
    "prometheus": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
}


def _families(text: str, openmetrics: bool = False) -> Families:
    out: Families = {}
    parse = om_parse if openmetrics else text_string_to_metric_families
    for fam in parse(text):
        # The process collector's values move between two collections (CPU time, memory): its
        # families are written by prometheus-client on both paths, so only their shape is compared.
        moving = fam.name.startswith("process_")
        samples = sorted(
            (s.name, tuple(sorted(s.labels.items())), None if moving else s.value)
            for s in fam.samples
        )
        assert fam.name not in out, f"family {fam.name} written twice"
        out[fam.name] = (fam.type, fam.documentation, samples)
    return out


def _served_before(agent: Any, accept: str) -> tuple[str, str]:
    """What the endpoint served before the writer: prometheus-client over the merge collector."""
    endpoint = CollectorRegistry(auto_describe=False)
    endpoint.register(MergedCollector(agent.share, agent.telemetry.registry))
    encoder, content_type = choose_encoder(accept)
    return encoder(endpoint).decode(), content_type


def _get(url: str, accept: str) -> tuple[str, str]:
    request = urllib.request.Request(url)
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode(), response.headers["Content-Type"]


def _workload(agent: Any) -> list[Any]:
    telemetry = agent.telemetry
    for queue in ("default", "billing", NASTY):
        for name in ("reports.nightly", "mail.send", NASTY):
            for outcome in OUTCOMES:
                agent.start_run(name, queue=queue).finish(outcome)
    # A scrape in between: what the writer kept of it must not be served once values change.
    scrape_text(agent.server.url)
    for outcome in OUTCOMES:
        agent.start_run("mail.send", queue="billing").finish(outcome)
    # A run with a queue wait, one stalled by the watchdog, runs in flight, idle jobs.
    agent.start_run("imports.pull", queue="billing", enqueued_at=time.time() - 3).finish("success")
    stuck = agent.start_run("imports.stuck", queue="billing", max_duration=0.01)
    in_flight = [stuck, agent.start_run("mail.send", queue=NASTY, heartbeat_timeout=30)]
    deadline = time.monotonic() + 30
    while stuck.verdict is None and time.monotonic() < deadline:
        time.sleep(0.05)
        agent.watchdog.tick()
    assert stuck.verdict is not None, "the watchdog gave no verdict on a run past its max duration"
    series = telemetry.series("reports.nightly", "default")
    telemetry.record_stall(series, "no_heartbeat")
    telemetry.record_skipped(series, "missed")
    telemetry.record_skipped(telemetry.series(NASTY, NASTY), "max_instances")
    telemetry.record_dead_lettered(telemetry.series("mail.send", "billing"))
    telemetry.record_no_timeout("httpx", "api.example.com", f"app/{NASTY}.py:12")
    telemetry.config_findings[("celery", "visibility_timeout_below_max_duration")] = 1.0
    return in_flight


@pytest.mark.parametrize("client", list(ACCEPT))
def test_writer_serves_the_same_families_and_samples(
    instrumented: Callable[..., Any], client: str
) -> None:
    agent = instrumented(watchdog=False, max_duration=float("inf"))
    in_flight = _workload(agent)
    telemetry = agent.telemetry
    # One snapshot of the derived gauges for both sides: their timestamps are computed from the
    # clock at collection, which moves between two collections.
    snapshot = telemetry.inflight()
    telemetry.inflight = lambda: snapshot
    errors_before = errors.counts().get("textformat", 0)

    before_text, before_type = _served_before(agent, ACCEPT[client])
    openmetrics = before_type.startswith("application/openmetrics-text")
    assert openmetrics == (client == "prometheus")
    served_before = _families(before_text, openmetrics)
    assert agent.text_writer is not None
    written = agent.text_writer.written
    endpoint_text, content_type = _get(agent.server.url, ACCEPT[client])
    assert agent.text_writer.written == written + 1, "the endpoint did not use the writer"
    assert errors.counts().get("textformat", 0) == errors_before
    assert content_type == before_type
    served_now = _families(endpoint_text, openmetrics)

    assert served_now.keys() == served_before.keys()
    for name, family in served_before.items():
        assert served_now[name] == family, name
    # The workload reached what it is meant to cover (so the comparison is not vacuous).
    samples = scrape(agent.server.url)
    for outcome in OUTCOMES:
        assert (
            samples.value(
                "otel_jobs_runs_finished_total", job_name=NASTY, queue=NASTY, outcome=outcome
            )
            == 1
        )
    assert samples.value(
        "otel_jobs_run_duration_seconds_bucket", job_name=NASTY, queue="billing",
        outcome="timeout", le="+Inf",
    ) == 1  # fmt: skip
    assert samples.find("otel_jobs_queue_wait_seconds_count", job_name="imports.pull") == [1]
    assert samples.total("otel_jobs_runs_stalled", job_name="imports.stuck") == 1
    assert samples.total("otel_jobs_stalls_detected_total", job_name="imports.stuck") == 1
    assert (
        samples.value(
            "otel_jobs_runs_skipped_total", job_name=NASTY, queue=NASTY, reason="max_instances"
        )
        == 1
    )
    assert samples.value("otel_jobs_runs_dead_lettered_total", job_name="mail.send") == 1
    assert (
        samples.value(
            "otel_jobs_outbound_calls_without_timeout_total", call_site=f"app/{NASTY}.py:12"
        )
        == 1
    )
    assert samples.value(
        "otel_jobs_run_max_duration_seconds", job_name="reports.nightly", queue="default"
    ) == float("inf")
    assert (
        samples.find(  # idle job: no run in flight, no timestamp series
            "otel_jobs_oldest_run_start_timestamp_seconds", job_name="reports.nightly"
        )
        == []
    )
    assert samples.find("otel_jobs_oldest_run_start_timestamp_seconds", job_name="mail.send")
    assert samples.value("otel_jobs_watchdog_last_tick_timestamp_seconds") > 0
    assert samples.find("process_cpu_seconds_total")
    for run in in_flight:
        run.finish("success")


def test_other_formats_and_filters_stay_with_prometheus_client(
    instrumented: Callable[..., Any],
) -> None:
    password = "s3cret-scrape"
    agent = instrumented(watchdog=False, prometheus_basic_auth=f"scraper:{password}")
    agent.start_run("reports.nightly", queue=NASTY).finish("success")
    url = agent.server.url
    writer = agent.text_writer
    assert writer is not None

    def get(accept: str = "", query: str = "", auth: bool = True, gzipped: bool = False) -> Any:
        request = urllib.request.Request(url + query)
        if accept:
            request.add_header("Accept", accept)
        if gzipped:
            request.add_header("Accept-Encoding", "gzip")
        if auth:
            token = base64.b64encode(f"scraper:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), b""

    # Basic auth is checked before anything is written.
    written = writer.written
    assert get(auth=False)[0] == 401
    assert writer.written == written

    status, headers, body = get(gzipped=True)
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert writer.written == written + 1
    assert _families(gzip.decompress(body).decode())["otel_jobs_runs_started"][2] == [
        ("otel_jobs_runs_started_total", (("job_name", "reports.nightly"), ("queue", NASTY)), 1.0)
    ]

    status, headers, body = get(accept=ACCEPT["prometheus"])
    assert status == 200 and body.endswith(b"# EOF\n") and body.count(b"# EOF") == 1
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert writer.written == written + 2

    # name[] filters, OpenMetrics 2.0.0: prometheus-client's own output, as before.
    status, _, body = get(query="?name[]=otel_jobs_runs_started_total")
    assert status == 200 and b"otel_jobs_runs_finished_total" not in body
    status, headers, body = get(accept="application/openmetrics-text; version=2.0.0")
    assert status == 200 and headers["Content-Type"].startswith(
        "application/openmetrics-text; version=2.0.0"
    )
    assert writer.written == written + 2


def test_children_snapshots_are_merged_by_prometheus_client(
    instrumented: Callable[..., Any],
) -> None:
    agent = instrumented(watchdog=False)
    agent.start_run("reports.nightly").finish("success")
    writer = agent.text_writer
    assert writer is not None
    assert scrape(agent.server.url).value("otel_jobs_runs_started_total") == 1
    written = writer.written
    # A live process that has left a snapshot, as a forked child does (core/multiprocess.py).
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        snapshot = {
            "pid": child.pid,
            "families": [
                {"name": "otel_jobs_runs_started", "type": "counter", "help": "Runs started.",
                 "samples": [["otel_jobs_runs_started_total",
                              {"job_name": "reports.nightly", "queue": "default"}, 2.0]]}
            ],
        }  # fmt: skip
        with open(os.path.join(agent.share.directory, f"{child.pid}.json"), "w") as f:
            json.dump(snapshot, f)
        assert scrape(agent.server.url).value("otel_jobs_runs_started_total") == 3
        assert writer.written == written
    finally:
        child.kill()
        child.wait()


@pytest.mark.internal_errors("textformat")
def test_writer_falls_back_when_prometheus_client_changes(
    instrumented: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = instrumented(watchdog=False)
    agent.start_run("reports.nightly").finish("success")
    # A prometheus-client whose label children keep their values elsewhere.
    child = agent.telemetry.started.labels("reports.nightly", "default")
    monkeypatch.delattr(child, "_value")
    before = errors.counts().get("textformat", 0)
    assert TextWriter(agent.telemetry).render() is None
    assert errors.counts().get("textformat", 0) == before + 1


def _snapshot_samples(families: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    out = {}
    for fam in families:
        # values that move between two readings: the process's, and in-flight timestamps
        # derived from the monotonic clock at each collection
        moving = fam["name"].startswith("process_") or fam["name"].endswith("_timestamp_seconds")
        out[(fam["name"], fam["type"])] = (
            fam["help"],
            sorted(
                (s[0], tuple(sorted(s[1].items())), None if moving else s[2])
                for s in fam["samples"]
            ),
        )
    return out


@pytest.mark.internal_errors("multiprocess.serialise")
def test_snapshots_read_the_instruments_as_prometheus_client_collects_them(
    instrumented: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A forked child's snapshot reads its counters and histograms directly (a pool child with
    # many task names writes one every watchdog tick): the same families and samples as
    # prometheus-client's collect(), creation timestamps aside, which snapshots never carry.
    from otel_jobs.core import snapshots

    agent = instrumented(watchdog=False)
    _workload(agent)
    registry = agent.telemetry.registry
    direct = snapshots.serialise(registry)
    collected = snapshots.collected(registry)
    assert _snapshot_samples(direct) == _snapshot_samples(collected)
    assert sum(len(f["samples"]) for f in direct) > 500
    assert not any(s[0].endswith("_created") for f in direct for s in f["samples"])
    # The direct read failing (another prometheus-client's fields): counted, and the snapshot
    # is collected by prometheus-client instead.

    def changed(value: float) -> str:
        raise AttributeError("_upper_bounds")

    monkeypatch.setattr(snapshots, "floatToGoString", changed)
    before = errors.counts().get("multiprocess.serialise", 0)
    assert _snapshot_samples(snapshots.serialise(registry)) == _snapshot_samples(
        snapshots.collected(registry)
    )
    assert errors.counts().get("multiprocess.serialise", 0) == before + 1

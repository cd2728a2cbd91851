"""The ``/metrics`` endpoint against bad input and bad clients (issue 18, items 1 and 2).

* Label values that cannot be written as they are (a job name decoded with
  ``surrogateescape``, a 100 KB name, a forked child's snapshot holding ``"\\ud800"``) are
  served as valid UTF-8 of at most 200 characters, in the text format and in OpenMetrics, by
  otel-jobs' writer and by prometheus-client; the other series are served with them.
* A client that connects to the TLS port and sends nothing does not hold the other scrapes;
  connections past the bound are closed at once, idle ones after the idle timeout.
* Only ``/metrics`` serves metrics; the basic-auth scheme is case-insensitive; ``repr`` of the
  settings does not show the password.

Real sockets, a real TLS handshake (a certificate made with ``openssl``), the real endpoint
parsed with prometheus-client's parsers.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families

import otel_jobs
from otel_jobs.core import config, errors
from otel_jobs.core.exposition import serve
from otel_jobs.core.multiprocess import MergedCollector
from tests.support import Samples

MAX_LABEL_CHARS = 200  # the longest label value served (issue 18)
GUARD = 30.0  # seconds before a client gives up: a hang fails the test instead of blocking it

ACCEPT = {
    "text": "",
    "openmetrics": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
}
BAD_NAME = b"report-\xff.csv".decode("utf-8", "surrogateescape")
LONG_NAME = "export." + "x" * 100_000


def _get(
    url: str, accept: str = "", headers: dict[str, str] | None = None, **kw: Any
) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=GUARD, **kw) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")


def _samples(text: str, fmt: str) -> list[Any]:
    parse = om_parse if fmt == "openmetrics" else text_string_to_metric_families
    return [s for fam in parse(text) for s in fam.samples]


def _job_names(samples: list[Any]) -> set[str]:
    return {s.labels["job_name"] for s in samples if s.name == "otel_jobs_runs_started_total"}


def _by_prometheus_client(agent: Any, accept: str) -> str:
    """What the endpoint serves when its writer declines (a format or a filter it does not
    write): prometheus-client's encoder over the endpoint's collector."""
    endpoint = CollectorRegistry(auto_describe=False)
    endpoint.register(MergedCollector(agent.share, agent.telemetry.registry))
    encoder, _content_type = choose_encoder(accept)
    return str(encoder(endpoint).decode("utf-8"))


@pytest.fixture
def live_pid() -> Iterator[int]:
    """A live process other than this one, as a forked child is while the owner scrapes."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("fmt", list(ACCEPT))
@pytest.mark.parametrize("path", ["writer", "prometheus-client"])
def test_bad_and_long_job_names_never_break_the_scrape(
    instrumented: Callable[..., Any], fmt: str, path: str
) -> None:
    agent = instrumented(watchdog=False)
    with otel_jobs.job_run(BAD_NAME):
        pass
    with otel_jobs.job_run(LONG_NAME):
        pass
    with otel_jobs.job_run(LONG_NAME + "y"):  # another name with the same 200 first characters
        pass
    with otel_jobs.job_run("reports.nightly"):
        pass
    for _ in range(2):  # every later scrape too
        if path == "writer":
            status, text = _get(agent.server.url, ACCEPT[fmt])
            assert status == 200, text[-2000:]
        else:
            text = _by_prometheus_client(agent, ACCEPT[fmt])
        names = _job_names(_samples(text, fmt))
        assert "reports.nightly" in names
        assert "report-\ufffd.csv" in names
        long_ones = [n for n in names if n.startswith("export.xxx")]
        assert len(long_ones) == 2, long_ones  # still two series, each cut
        assert all(len(n) <= MAX_LABEL_CHARS for n in long_ones)
    assert len(text) < 100_000, len(text)  # not one 100 KB label value per sample


@pytest.mark.parametrize("fmt", list(ACCEPT))
def test_bad_queues_hosts_and_call_sites_are_served_clean(
    instrumented: Callable[..., Any], fmt: str
) -> None:
    # The other labels whose values come from users and frameworks go through the same caps.
    agent = instrumented(watchdog=False)
    with otel_jobs.job_run("reports.nightly", queue=BAD_NAME):
        pass
    agent.telemetry.record_no_timeout("requests", "h\udcfe.example", LONG_NAME)
    status, text = _get(agent.server.url, ACCEPT[fmt])
    assert status == 200, text[-2000:]
    samples = _samples(text, fmt)
    [queue] = {s.labels["queue"] for s in samples if s.name == "otel_jobs_runs_started_total"}
    assert queue == "report-\ufffd.csv"
    [call] = [s for s in samples if s.name == "otel_jobs_outbound_calls_without_timeout_total"]
    assert call.labels["host"] == "h\ufffd.example"
    assert len(call.labels["call_site"]) == MAX_LABEL_CHARS
    assert call.labels["call_site"].startswith("export.xxx")


@pytest.mark.parametrize("fmt", list(ACCEPT))
def test_a_childs_snapshot_with_a_lone_surrogate_never_breaks_the_scrape(
    instrumented: Callable[..., Any], live_pid: int, fmt: str
) -> None:
    agent = instrumented(watchdog=False)
    with otel_jobs.job_run("reports.nightly"):
        pass
    family = {
        "name": "otel_jobs_runs_started",
        "type": "counter",
        "help": "Runs started.",
        "samples": [
            ["otel_jobs_runs_started_total", {"job_name": "bad\ud800", "queue": "default"}, 2.0],
            ["otel_jobs_runs_started_total", {"job_name": "mail.send", "queue": "default"}, 5.0],
        ],
    }
    snapshot = json.dumps({"pid": live_pid, "families": [family]})  # "\ud800" escaped
    Path(agent.share.directory, f"{live_pid}.json").write_text(snapshot)
    status, text = _get(agent.server.url, ACCEPT[fmt])
    assert status == 200, text[-2000:]
    counts = {
        s.labels["job_name"]: s.value
        for s in _samples(text, fmt)
        if s.name == "otel_jobs_runs_started_total"
    }
    assert counts == {"reports.nightly": 1.0, "bad\ufffd": 2.0, "mail.send": 5.0}


def test_a_label_child_made_without_the_caps_is_written_clean(
    instrumented: Callable[..., Any],
) -> None:
    # A value that reached an instrument without going through the caps (another code path,
    # a future one): both writers still serve every series.
    agent = instrumented(watchdog=False)
    with otel_jobs.job_run("reports.nightly"):
        pass
    agent.telemetry.started.labels("raw\udcff", "default").inc()
    status, text = _get(agent.server.url)
    assert status == 200, text[-2000:]
    for body in (text, _by_prometheus_client(agent, "")):
        assert {"reports.nightly", "raw\ufffd"} <= _job_names(_samples(body, "text"))


@pytest.mark.internal_errors("textformat.collector", "collect")
def test_a_collector_that_cannot_be_written_leaves_the_others_served(
    instrumented: Callable[..., Any],
) -> None:
    # Other collectors of the registry (not otel-jobs' own families): one whose text cannot be
    # encoded, one whose collect() raises. The scrape serves the rest, on both writers.
    agent = instrumented(watchdog=False)
    with otel_jobs.job_run("reports.nightly"):
        pass
    agent.telemetry.registry.register(_Unwritable())
    agent.telemetry.registry.register(_Failing())
    status, text = _get(agent.server.url)
    assert status == 200, text[-2000:]
    for body in (text, _by_prometheus_client(agent, "")):
        assert "reports.nightly" in _job_names(_samples(body, "text"))
    assert errors.counts().get("collect", 0) >= 1


@pytest.mark.parametrize("value", ["abc", None, 10**400], ids=["text", "None", "huge-int"])
@pytest.mark.parametrize("fmt", list(ACCEPT))
@pytest.mark.internal_errors("textformat.collector", "collect")
def test_a_value_that_is_no_number_leaves_the_others_served_with_forked_children(
    instrumented: Callable[..., Any], live_pid: int, fmt: str, value: Any
) -> None:
    # With a forked child's snapshot to merge, the scrape is the merge's (not otel-jobs'
    # writer's): a sample of another collector whose value no float holds is left out, not a
    # 500 at every scrape. In a child, the same sample would have made its whole snapshot
    # malformed (or not written at all): it is left out of the snapshot, the rest goes in.
    from otel_jobs.core.snapshots import checked_snapshot, parse, serialise

    agent = instrumented(watchdog=False)
    with otel_jobs.job_run("reports.nightly"):
        pass
    agent.telemetry.registry.register(_Valued(value))
    Path(agent.share.directory, f"{live_pid}.json").write_text(
        json.dumps({"pid": live_pid, "families": []})
    )
    for _ in range(2):
        status, text = _get(agent.server.url, ACCEPT[fmt])
        assert status == 200, text[-2000:]
        samples = _samples(text, fmt)
        assert "reports.nightly" in _job_names(samples)
        assert [s.value for s in samples if s.name == "app_valued_good"] == [2.0]
        assert not [s for s in samples if s.name == "app_valued"]
    snapshot = json.dumps({"pid": 7, "families": serialise(agent.telemetry.registry)})
    _at, families = checked_snapshot(parse(snapshot.encode()), 7)
    assert "app_valued_good" in {f["name"] for f in families}


class _Valued:
    def __init__(self, value: Any) -> None:
        self.value = value

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import Metric

        family = Metric("app_valued", "A value of the application's.", "gauge")
        family.add_sample("app_valued", {}, self.value)
        yield family
        good = Metric("app_valued_good", "A number.", "gauge")
        good.add_sample("app_valued_good", {}, 2)
        yield good

    def describe(self) -> list[Any]:
        return []


class _Unwritable:
    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily("app_unwritable", "bad help \ud800", value=1.0)

    def describe(self) -> list[Any]:
        return []


class _Failing(_Unwritable):
    def collect(self) -> Iterator[Any]:
        raise RuntimeError("a collector that fails")


# --- the endpoint's connections --------------------------------------------------------------


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("probe", "A counter to find in the scrape.", registry=registry).inc()
    return registry


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes ``sock`` (waits up to GUARD seconds for it to)."""
    sock.settimeout(GUARD)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_silent_client_on_the_tls_port_does_not_hold_the_scrapes(
    certificate: tuple[str, str],
) -> None:
    cert, key = certificate
    server = serve(_registry(), "127.0.0.1", 0, certfile=cert, keyfile=key)
    try:
        host, port = server.address
        trusted = ssl.create_default_context(cafile=cert)
        silent = [socket.create_connection((host, port), timeout=GUARD) for _ in range(3)]
        try:
            # The silent clients are still connected, handshake not begun, while this scrape
            # completes its own handshake and gets its metrics.
            status, text = _get(server.url, context=trusted)
            assert status == 200 and "probe_total 1.0" in text
        finally:
            for sock in silent:
                sock.close()
    finally:
        server.stop()


def test_a_tls_handshake_that_never_comes_is_given_up(certificate: tuple[str, str]) -> None:
    cert, key = certificate
    server = serve(_registry(), "127.0.0.1", 0, certfile=cert, keyfile=key, handshake_timeout=0.5)
    try:
        with socket.create_connection(server.address, timeout=GUARD) as silent:
            assert _closed_by_server(silent)
    finally:
        server.stop()


def test_connections_past_the_bound_are_closed_and_idle_ones_time_out() -> None:
    server = serve(_registry(), "127.0.0.1", 0, max_connections=4, idle_timeout=1.0)
    try:
        idle = [socket.create_connection(server.address, timeout=GUARD) for _ in range(4)]
        try:
            # Once the four idle connections hold every slot, a fifth is closed on arrival.
            # (A fifth that happens to arrive after one of them timed out is served instead:
            # it sends nothing either, so it is closed at its own idle timeout.)
            extra = socket.create_connection(server.address, timeout=GUARD)
            assert _closed_by_server(extra)
            extra.close()
            # The idle connections are closed by the server, not kept for ever.
            assert all(_closed_by_server(sock) for sock in idle)
        finally:
            for sock in idle:
                sock.close()
        # And the slots they held are free again.
        status, text = _get(server.url)
        assert status == 200 and "probe_total 1.0" in text
        assert server._server.refused >= 1  # type: ignore[attr-defined]
    finally:
        server.stop()


def test_many_idle_connections_hold_a_bounded_number_of_threads() -> None:
    import threading

    from otel_jobs.core.exposition import MAX_CONNECTIONS

    server = serve(_registry(), "127.0.0.1", 0)  # the default bounds
    before = threading.active_count()
    conns = []
    try:
        for _ in range(MAX_CONNECTIONS + 100):
            conns.append(socket.create_connection(server.address, timeout=GUARD))
        # The last one is accepted after all the others (and closed, as every slot is taken).
        assert _closed_by_server(conns[-1])
        assert threading.active_count() - before <= MAX_CONNECTIONS
    finally:
        for sock in conns:
            sock.close()
        server.stop()


# --- paths, basic auth, settings ------------------------------------------------------------


def test_only_metrics_serves_metrics(instrumented: Callable[..., Any]) -> None:
    agent = instrumented(watchdog=False)
    with otel_jobs.job_run("reports.nightly"):
        pass
    base = agent.server.url.removesuffix("/metrics")
    status, text = _get(base + "/metrics")
    assert status == 200 and Samples(text).find("otel_jobs_runs_started_total")
    status, text = _get(base + "/")
    assert status == 200 and 'href="/metrics"' in text and "otel_jobs_" not in text
    for other in ("/anything", "/metrics/", "/favicon.ico", "/metricsx", "/api/v1/query"):
        status, text = _get(base + other)
        assert status == 404, other
        assert "otel_jobs_" not in text


def _basic(scheme: str, credentials: str) -> dict[str, str]:
    return {"Authorization": f"{scheme} " + base64.b64encode(credentials.encode()).decode()}


def test_basic_auth_scheme_is_case_insensitive(instrumented: Callable[..., Any]) -> None:
    agent = instrumented(watchdog=False, prometheus_basic_auth="scraper:s3cret")
    url = agent.server.url
    for scheme in ("Basic", "basic", "BASIC"):
        status, text = _get(url, headers=_basic(scheme, "scraper:s3cret"))
        assert status == 200, scheme
        assert "otel_jobs_internal_errors_total" in text
    for headers in (
        {},
        _basic("basic", "scraper:wrong"),
        _basic("Bearer", "scraper:s3cret"),
        {"Authorization": "basic"},
        {"Authorization": "basicx " + base64.b64encode(b"scraper:s3cret").decode()},
    ):
        status, text = _get(url, headers=headers)
        assert status == 401, headers
        assert "otel_jobs_" not in text
    assert _get(url.removesuffix("metrics") + "anything")[0] == 401  # auth before routing


def test_repr_of_settings_hides_the_password() -> None:
    settings = config.load({}, prometheus_basic_auth="scraper:pw-93c1d7")
    for text in (repr(settings), str(settings), f"{settings}"):
        assert "pw-93c1d7" not in text
        assert "scraper" in text  # the user name is no secret, and tells which is set
    assert settings.prometheus_basic_auth == "scraper:pw-93c1d7"  # the value itself is kept
    env = config.load({"OTEL_JOBS_PROMETHEUS_BASIC_AUTH": "u:pw-from-env"})
    assert "pw-from-env" not in repr(env)
    assert "prometheus_basic_auth=None" in repr(config.load({}))
    otlp = config.load({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://u:pw-otlp-1@collector:4318"})
    assert "pw-otlp-1" not in repr(otlp) and "collector:4318" in repr(otlp)
    assert os.environ.get("OTEL_JOBS_PROMETHEUS_BASIC_AUTH") is None

"""instrument() / uninstrument(): idempotent, mirrored, providers chosen as documented."""

from __future__ import annotations

import logging
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_jobs
from tests.support import free_port, scrape


def _threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def test_instrument_twice_says_so_once_and_uninstrument_stops_everything(
    instrumented: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    agent = instrumented()
    url = otel_jobs.metrics_url()
    assert url is not None and scrape(url).names()
    caplog.set_level(logging.INFO, logger="otel_jobs")
    otel_jobs.instrument(prometheus_port=0)
    otel_jobs.instrument(prometheus_port=0)
    again = [r for r in caplog.records if "called again" in r.getMessage()]
    assert len(again) == 1
    from otel_jobs.core import agent as agent_mod

    assert agent_mod.current() is agent  # the second call changed nothing
    assert len(_threads("otel-jobs-watchdog")) == 1
    otel_jobs.uninstrument()
    assert not otel_jobs.is_instrumented()
    assert _threads("otel-jobs-watchdog") == [] and _threads("otel-jobs-metrics") == []
    with pytest.raises(OSError):
        scrape(url)
    assert not os.path.exists(agent.share.directory)
    # ... and it can start again.
    otel_jobs.instrument(prometheus_port=0)
    assert otel_jobs.is_instrumented() and len(_threads("otel-jobs-watchdog")) == 1


def test_uses_the_application_providers(
    span_exporter: InMemorySpanExporter, instrumented: Callable[..., Any]
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    own = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(own))
    instrumented(tracer_provider=provider, watchdog=False)
    with otel_jobs.job_run("provider.job"):
        pass
    assert [s.name for s in own.get_finished_spans()] == ["provider.job"]
    assert span_exporter.get_finished_spans() == ()


def test_registered_as_an_opentelemetry_instrumentor(instrumented: Callable[..., Any]) -> None:
    from otel_jobs.instrumentor import OtelJobsInstrumentor

    names = {ep.name: ep for ep in entry_points(group="opentelemetry_instrumentor")}
    assert names["otel_jobs"].load() is OtelJobsInstrumentor
    inst = OtelJobsInstrumentor()
    inst.instrument(prometheus_port=0, watchdog=False)
    assert otel_jobs.is_instrumented()
    inst.uninstrument()
    assert not otel_jobs.is_instrumented()


def test_port_taken_logs_a_fix_and_jobs_still_run(
    instrumented: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        caplog.set_level(logging.ERROR, logger="otel_jobs")
        instrumented(prometheus_port=port, watchdog=False)
        assert otel_jobs.metrics_url() is None
        message = " ".join(r.getMessage() for r in caplog.records)
        assert str(port) in message and "OTEL_JOBS_PROMETHEUS_PORT" in message

        @otel_jobs.job
        def still_works() -> int:
            return 7

        assert still_works() == 7
    finally:
        holder.close()


_NO_NETWORK = """
import socket, sys
connects = []
def audit(event, args):
    if event == "socket.connect":
        connects.append(args[1])
sys.addaudithook(audit)
import otel_jobs
otel_jobs.instrument(prometheus_port=0, watchdog_interval=0.05)
@otel_jobs.job
def work():
    otel_jobs.heartbeat(progress=0.5)
for _ in range(20):
    work()
import time; time.sleep(0.3)
otel_jobs.uninstrument()
from opentelemetry import trace
print(type(trace.get_tracer_provider()).__module__, connects)
"""


def test_no_endpoint_means_no_connection_anywhere() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_SERVICE_NAME"] = "no-network-check"
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_NO_NETWORK)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    module, connects = out.stdout.strip().split(" ", 1)
    assert module.startswith("opentelemetry.sdk.trace")  # SDK set up because none was set
    assert connects == "[]"


def test_sdk_disabled_keeps_prometheus(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    instrumented(watchdog=False)
    otel_jobs.uninstrument()
    os.environ["OTEL_SDK_DISABLED"] = "true"
    try:
        otel_jobs.instrument(prometheus_port=0, watchdog=False)
        with otel_jobs.job_run("disabled.job"):
            pass
        url = otel_jobs.metrics_url()
        assert url is not None
        assert (
            scrape(url).value(
                "otel_jobs_runs_started_total", job_name="disabled.job", queue="default"
            )
            == 1
        )
        assert span_exporter.get_finished_spans() == ()
    finally:
        del os.environ["OTEL_SDK_DISABLED"]


def test_metrics_endpoint_binds_the_configured_address(instrumented: Callable[..., Any]) -> None:
    port = free_port()
    instrumented(prometheus_port=port, prometheus_addr="127.0.0.1", watchdog=False)
    assert otel_jobs.metrics_url() == f"http://127.0.0.1:{port}/metrics"


def test_opentelemetry_instrument_command_starts_otel_jobs() -> None:
    script = pathlib.Path(sys.executable).parent / "opentelemetry-instrument"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_JOBS_PROMETHEUS_PORT="0", OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none"
    )
    code = "import otel_jobs; print(otel_jobs.is_instrumented(), otel_jobs.metrics_url())"
    out = subprocess.run(
        [str(script), sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    instrumented, url = out.stdout.split()
    assert instrumented == "True" and url.startswith("http://127.0.0.1:")

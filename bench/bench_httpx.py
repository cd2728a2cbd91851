"""An httpx call with a timeout, under opentelemetry-instrumentation-httpx alone and under otel-jobs.

otel-jobs makes httpx's client spans with that same instrumentation and adds its timeout
check in httpcore's connection pool (see :mod:`otel_jobs.outbound.httpx`), so what is
measured is what the check adds to an instrumented call. The server is a keep-alive HTTP/1.1
server in a separate process on 127.0.0.1 (so that it does not compete for this process's
GIL); one ``httpx.Client(timeout=5)`` makes every call. The spans of both sides go to the
global tracer provider (set here, if unset, to an SDK one with a batch processor and an
exporter that drops everything): otel-jobs instruments httpx with that one.

Each round switches the instrumentation: contrib alone (calls outside any span, then inside a
parent span), otel-jobs with the calls outside a run, then inside a run (where each call is
also put in the run's in-flight calls, for the watchdog). A run's calls are compared with
contrib's calls inside a parent span, since a child span costs the SDK a little more than a
root one. A last row times otel-jobs' own per-call steps alone, which the noise of a network
call hides.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

import otel_jobs

from ._timing import interleaved, row
from .bench_core import tracer_provider

TARGET = 0.02
_PARTS = ("connect", "read", "write", "pool")

_SERVER = r"""
import http.server, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body in one segment, sent at once: otherwise Nagle's algorithm and delayed
    # acknowledgements add tens of milliseconds to every call.
    wbufsize = 65536
    disable_nagle_algorithm = True

    def do_GET(self):
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def run(quick: bool = False) -> list[dict[str, Any]]:
    import gc
    import statistics
    import time

    reps, number = (2, 20) if quick else (15, 300)
    server = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{int(server.stdout.readline())}/"
        # otel-jobs instruments httpx with the global tracer provider: both sides use it, so
        # that both make recording spans through the same batch processor.
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(tracer_provider())
        provider = trace.get_tracer_provider()
        client = httpx.Client(timeout=5.0)
        instrumentor = HTTPXClientInstrumentor()

        def calls() -> float:
            gc.collect()
            start = time.perf_counter()
            for _ in range(number):
                client.get(url, timeout=5.0).raise_for_status()
            return (time.perf_counter() - start) / number

        def contrib(in_span: bool) -> float:
            instrumentor.instrument(tracer_provider=provider)
            try:
                if not in_span:
                    return calls()
                # What a run's span is to the calls of a run: their parent. A child span costs
                # the SDK a little more than a root one; both sides pay it.
                with provider.get_tracer("bench").start_as_current_span("bench.parent"):
                    return calls()
            finally:
                instrumentor.uninstrument()

        def with_otel_jobs(in_run: bool) -> float:
            otel_jobs.instrument(
                tracer_provider=provider, prometheus=False, watchdog=False, frameworks=[],
                outbound=["httpx"],
            )  # fmt: skip
            try:
                if not in_run:
                    return calls()
                with otel_jobs.job_run("bench.httpx"):
                    return calls()
            finally:
                otel_jobs.uninstrument()

        contenders = {
            "contrib": lambda: contrib(False),
            "contrib_in_span": lambda: contrib(True),
            "otel_jobs": lambda: with_otel_jobs(False),
            "in_run": lambda: with_otel_jobs(True),
        }
        for fn in contenders.values():  # warm: connection, imports, caches
            fn()
        rounds: dict[str, list[float]] = {name: [] for name in contenders}
        for r in range(reps):
            names = list(contenders) if r % 2 == 0 else list(reversed(contenders))
            for name in names:
                rounds[name].append(contenders[name]())
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)

    def added(name: str, baseline: str) -> float:
        pairs = zip(rounds[name], rounds[baseline], strict=True)
        return statistics.median(s / b - 1 for s, b in pairs)

    base = statistics.median(rounds["contrib"]) * 1e6
    rows = []
    for name, baseline, label in (
        ("in_run", "contrib_in_span", "inside a run (contrib: inside a span)"),
        ("otel_jobs", "contrib", "outside a run"),
    ):
        extra = added(name, baseline)
        rows.append(
            row(
                f"httpx GET with a timeout, {label}",
                subject="otel-jobs (contrib spans + check)",
                value=statistics.median(rounds[name]) * 1e6,
                unit="us/call",
                baseline="opentelemetry-instrumentation-httpx alone",
                baseline_value=statistics.median(rounds[baseline]) * 1e6,
                ratio=1 + extra,
                target=f"<= +{TARGET:.0%}",
                met=None if quick else extra <= TARGET,
                note=f"{extra:+.1%} per call",
            )  # fmt: skip
        )
    rows.append(_hook_cost(quick, base))
    return rows


def _hook_cost(quick: bool, call_us: float) -> dict[str, Any]:
    """What otel-jobs runs per call, timed alone: far below the noise of a network call.

    The check in httpcore's pool (the wrapper otel-jobs installs there: the timeout read, the
    call put in and taken out of the run's in-flight calls, the heartbeat) around an empty pool
    method, and the URL hook on the span, on a real httpcore request inside a run, against the
    empty pool method alone.
    """
    import httpcore

    from otel_jobs.core import agent as agent_mod
    from otel_jobs.outbound import httpx as adapter_mod
    from otel_jobs.outbound.adapter import wrap_sync

    reps, number = (3, 200) if quick else (15, 20_000)
    provider = trace.get_tracer_provider()
    otel_jobs.instrument(
        tracer_provider=provider, prometheus=False, watchdog=False, frameworks=[],
        outbound=["httpx"],
    )  # fmt: skip
    try:
        agent = agent_mod.current()
        assert agent is not None
        checker = next(a for a in agent.adapters if a.name == "httpx").checker
        request = httpcore.Request(
            "GET", "http://127.0.0.1:8080/", extensions={"timeout": dict.fromkeys(_PARTS, 5.0)}
        )
        # The URL hook is given httpx's request (the pool check, httpcore's).
        hook_request = httpx.Request("GET", "http://127.0.0.1:8080/")
        span = provider.get_tracer("bench").start_span(
            "GET", kind=trace.SpanKind.CLIENT, attributes={"url.full": "http://127.0.0.1:8080/"}
        )

        def empty(pool: Any = None, request: Any = None) -> None:
            pass

        checked = wrap_sync(checker, adapter_mod.CHECK, empty)

        def hook() -> None:
            checked(None, request)
            adapter_mod._scrub_url(span, hook_request)

        def pool_method() -> None:
            empty(None, request)

        with otel_jobs.job_run("bench.httpx.hook"):
            results = interleaved({"hook": hook, "empty": pool_method}, reps=reps, number=number)
        span.end()
    finally:
        otel_jobs.uninstrument()
    cost = (results["hook"]["median"] - results["empty"]["median"]) * 1e6
    return row(
        "otel-jobs' httpx hooks per call, timed alone",
        subject="check + in-flight call + URL hook", value=cost, unit="us/call",
        baseline="an httpx call under contrib alone", baseline_value=call_us,
        ratio=1 + cost / call_us, target=f"<= +{TARGET:.0%}",
        met=None if quick else cost / call_us <= TARGET,
        note=f"{cost / call_us:+.2%} of the call",
    )  # fmt: skip

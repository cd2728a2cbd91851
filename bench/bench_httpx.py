"""An httpx call with a timeout, under opentelemetry-instrumentation-httpx alone and under otel-jobs.

otel-jobs makes httpx's client spans with that same instrumentation and adds its timeout
check in httpcore's connection pool (see :mod:`otel_jobs.outbound.httpx`), so what is
measured is what the check adds to an instrumented call. The server is a keep-alive HTTP/1.1
server in a separate process on 127.0.0.1 (so that it does not compete for this process's
GIL); one ``httpx.Client(timeout=5)`` makes every call. Each round switches the
instrumentation: contrib alone, otel-jobs with the call made outside a run, then inside a run
(where the call is also put in the run's in-flight calls, for the watchdog).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

import otel_jobs

from ._timing import row
from .bench_core import tracer_provider

TARGET = 0.02

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
        provider = tracer_provider()
        client = httpx.Client(timeout=5.0)
        instrumentor = HTTPXClientInstrumentor()

        def calls() -> float:
            gc.collect()
            start = time.perf_counter()
            for _ in range(number):
                client.get(url, timeout=5.0).raise_for_status()
            return (time.perf_counter() - start) / number

        def contrib() -> float:
            instrumentor.instrument(tracer_provider=provider)
            try:
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
            "contrib": contrib,
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
        provider.shutdown()
    finally:
        server.terminate()
        server.wait(timeout=10)

    def added(name: str) -> float:
        return statistics.median(
            s / b - 1 for s, b in zip(rounds[name], rounds["contrib"], strict=True)
        )

    base = statistics.median(rounds["contrib"]) * 1e6
    rows = []
    for name, label in (("in_run", "inside a run"), ("otel_jobs", "outside a run")):
        extra = added(name)
        rows.append(
            row(
                f"httpx GET with a timeout, {label}",
                subject="otel-jobs (contrib spans + check)",
                value=statistics.median(rounds[name]) * 1e6,
                unit="us/call",
                baseline="opentelemetry-instrumentation-httpx alone",
                baseline_value=base,
                ratio=1 + extra,
                target=f"<= +{TARGET:.0%}",
                met=None if quick else extra <= TARGET,
                note=f"{extra:+.1%} per call",
            )  # fmt: skip
        )
    return rows

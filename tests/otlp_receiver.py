"""Local OTLP endpoints for tests: a real receiver for both protocols, and endpoints that fail.

:class:`OtlpReceiver` speaks OTLP the way a collector does, built from opentelemetry-proto's
generated messages and services: ``protocol="grpc"`` serves the ``TraceService`` and
``MetricsService`` with grpcio, ``protocol="http/protobuf"`` serves ``POST /v1/traces`` and
``/v1/metrics`` with :mod:`http.server`. Both bind 127.0.0.1 (a free port unless one is
given) and keep every decoded ``ExportTraceServiceRequest`` / ``ExportMetricsServiceRequest``;
:meth:`OtlpReceiver.spans` and :meth:`OtlpReceiver.metrics` flatten them.

For faults outside the process: :class:`ResettingServer` accepts each connection and resets it
(TCP RST), :class:`SilentServer` accepts, reads and never answers.
"""

from __future__ import annotations

import gzip
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def any_value(value: Any) -> Any:
    """The Python value of an OTLP ``AnyValue``."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(any_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def attributes(items: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in items}


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    kind: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int
    resource: dict[str, Any]


@dataclass
class ReceivedMetric:
    """One metric of one export request; ``points`` are ``(attributes, value)`` (histograms: count)."""

    name: str
    unit: str
    kind: str  # sum, gauge, histogram, ...
    points: list[tuple[dict[str, Any], float]] = field(default_factory=list)
    resource: dict[str, Any] = field(default_factory=dict)


class OtlpReceiver:
    """A local OTLP receiver (see the module docstring). Use as a context manager or call close()."""

    def __init__(self, protocol: str = "http/protobuf", port: int = 0) -> None:
        self.protocol = protocol
        self.trace_requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self._lock = threading.Lock()
        self._grpc: Any = None
        self._http: ThreadingHTTPServer | None = None
        if protocol == "grpc":
            self.port = self._serve_grpc(port)
        elif protocol == "http/protobuf":
            self.port = self._serve_http(port)
        else:
            raise ValueError(protocol)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    # --- the two protocols --------------------------------------------------------------------

    def _serve_grpc(self, port: int) -> int:
        import grpc

        receiver = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                receiver._keep(receiver.trace_requests, request)
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                receiver._keep(receiver.metric_requests, request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        if not bound:
            raise OSError(f"cannot bind 127.0.0.1:{port}")
        server.start()
        self._grpc = server
        return int(bound)

    def _serve_http(self, port: int) -> int:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path == "/v1/traces":
                    request: Any = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                    receiver._keep(receiver.trace_requests, request)
                    reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    request = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                    receiver._keep(receiver.metric_requests, request)
                    reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
        self._http = server
        return int(server.server_address[1])

    def _keep(self, into: list[Any], request: Any) -> None:
        with self._lock:
            into.append(request)

    # --- what was received ---------------------------------------------------------------------

    def _received(
        self, requests: list[Any], resources: str, scopes: str, items: str
    ) -> Iterator[tuple[dict[str, Any], Any]]:
        """(resource attributes, item) of every item of every scope of every request so far."""
        with self._lock:
            taken = list(requests)
        for request in taken:
            for r in getattr(request, resources):
                resource = attributes(r.resource.attributes)
                for scope in getattr(r, scopes):
                    for item in getattr(scope, items):
                        yield resource, item

    def spans(self) -> list[ReceivedSpan]:
        return [
            ReceivedSpan(
                name=s.name,
                trace_id=s.trace_id.hex(),
                span_id=s.span_id.hex(),
                kind=s.kind,
                attributes=attributes(s.attributes),
                events=[(e.name, attributes(e.attributes)) for e in s.events],
                status_code=s.status.code,
                resource=resource,
            )
            for resource, s in self._received(
                self.trace_requests, "resource_spans", "scope_spans", "spans"
            )
        ]

    def metrics(self) -> list[ReceivedMetric]:
        out = []
        for resource, m in self._received(
            self.metric_requests, "resource_metrics", "scope_metrics", "metrics"
        ):
            kind = m.WhichOneof("data") or ""
            metric = ReceivedMetric(m.name, m.unit, kind, resource=resource)
            for p in getattr(m, kind).data_points if kind else []:
                if kind in ("histogram", "exponential_histogram", "summary"):
                    value = float(p.count)
                elif p.WhichOneof("value") == "as_int":
                    value = float(p.as_int)
                else:
                    value = p.as_double
                metric.points.append((attributes(p.attributes), value))
            out.append(metric)
        return out

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
        """Poll ``check`` until it returns something truthy (generous deadline: slow machines)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(0.05)
        raise AssertionError(f"the OTLP receiver did not get {what} in {timeout}s; last: {last!r}")

    def close(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait(5)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> OtlpReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- endpoints that fail ------------------------------------------------------------------------


class _AcceptingServer:
    """A TCP listener on 127.0.0.1 handing each accepted connection to :meth:`handle`."""

    def __init__(self, port: int = 0) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            self.handle(conn)

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        for conn in self._held:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes a blocked reader; the client reads b""
            except OSError:
                pass
            conn.close()

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ResettingServer(_AcceptingServer):
    """Accepts each connection and resets it at once (SO_LINGER 0: the close sends a RST)."""

    def handle(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


def unused_port() -> int:
    """A port nothing listens on now (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

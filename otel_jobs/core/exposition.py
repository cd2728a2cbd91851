"""The Prometheus ``/metrics`` endpoint of a worker.

Served with prometheus-client's own WSGI app from a daemon thread, on
``OTEL_JOBS_PROMETHEUS_ADDR:OTEL_JOBS_PROMETHEUS_PORT`` (``127.0.0.1:9464`` by default: a
worker's metrics are not published to the network unless you bind another address).
Optional TLS (``OTEL_JOBS_PROMETHEUS_CERTFILE`` / ``_KEYFILE``) and HTTP basic auth
(``OTEL_JOBS_PROMETHEUS_BASIC_AUTH="user:password"``). A scrape of a worker with no forked
children (text format or OpenMetrics 1.0.0) is written by otel-jobs' own writer
(:mod:`otel_jobs.core.textformat`: the same output, about ten times faster); ``name[]`` filters
and the merge with forked children's metrics are served by prometheus-client.

If the port is taken, :func:`serve` raises ``OSError``; ``instrument()`` logs it with the
fix and the worker goes on running its jobs without an endpoint.

What a client can do to the endpoint is bounded: the accept loop only accepts (the TLS
handshake runs in the connection's own thread, within :data:`HANDSHAKE_TIMEOUT`); at most
:data:`MAX_CONNECTIONS` connections are served at once (one thread each), a connection past
that is closed as soon as it is accepted; a connection that sends nothing for
:data:`IDLE_TIMEOUT` seconds is closed. Only ``/metrics`` serves metrics; ``/`` is a short page
that links to it, any other path is 404. The basic-auth scheme is matched case-insensitively
(RFC 7617), the credentials in constant time. A client that trickles bytes (one every few
seconds) still holds its slot until it is done: bind the endpoint where only Prometheus
reaches it.
"""

from __future__ import annotations

import base64
import gzip
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import choose_encoder, gzip_accepted

from . import errors

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


#: Connections served at once; one more is closed as soon as it is accepted. Prometheus
#: scrapes a target one request at a time: this leaves room for a few scrapers and a curl.
MAX_CONNECTIONS = 32
#: Seconds a connection may send nothing (before its request is read, or while it is).
IDLE_TIMEOUT = 10.0
#: Seconds a TLS client has to complete its handshake.
HANDSHAKE_TIMEOUT = 5.0

_INDEX = (
    b"<!doctype html><title>otel-jobs</title><h1>otel-jobs</h1>"
    b'<p>Metrics of this worker: <a href="/metrics">/metrics</a></p>\n'
)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    # Set by serve(): the TLS context (None: plain HTTP), and the bounds.
    tls: ssl.SSLContext | None = None
    handshake_timeout = HANDSHAKE_TIMEOUT
    refused = 0  # connections closed at once because MAX_CONNECTIONS were being served

    def server_bind(self) -> None:
        # Not HTTPServer.server_bind(): it asks the resolver for this host's full name (a
        # reverse DNS lookup of the bound address, 15 ms of every start-up here and seconds
        # with a slow resolver) only for the SERVER_NAME of requests, which /metrics never reads.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()

    def server_activate(self) -> None:
        super().server_activate()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def set_bound(self, connections: int) -> None:
        self._slots = threading.BoundedSemaphore(connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        # In the accept loop: nothing here may wait on the client.
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # In the connection's own thread: the handshake of one client never holds another.
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(self.handshake_timeout)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ValueError):  # a failed or timed-out handshake, a plain HTTP client
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            self.shutdown_request(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or go away are the endpoint's daily bread: not errors.
        exc = sys.exc_info()[1]
        if isinstance(exc, Exception) and not isinstance(exc, OSError):
            errors.record("endpoint", exc)


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    timeout = IDLE_TIMEOUT  # StreamRequestHandler sets it on the connection

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _with_basic_auth(app: WSGIApp, credentials: str) -> WSGIApp:
    expected = base64.b64encode(credentials.encode()).decode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
        # RFC 7617: the scheme is case-insensitive ("basic" as well as "Basic").
        valid = scheme.lower() == "basic"
        if not (
            _compare_digest(token.strip().encode("utf-8", "replace"), expected.encode()) and valid
        ):
            start_response(
                "401 Unauthorized",
                [("WWW-Authenticate", 'Basic realm="otel-jobs"'), ("Content-Type", "text/plain")],
            )
            return [b"authentication required\n"]
        return app(environ, start_response)

    return guarded


class MetricsServer:
    """A running endpoint; :meth:`stop` closes it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, scheme: str) -> None:
        self._server = server
        self._thread = thread
        self.scheme = scheme

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def close_in_child(self) -> None:
        """In a forked child: release the inherited listening socket without touching the parent's."""
        try:
            self._server.socket.close()
        except OSError:
            pass


def _routed(app: WSGIApp) -> WSGIApp:
    """``/metrics`` to ``app``; ``/`` a short page; anything else 404."""

    def route(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return app(environ, start_response)
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [_INDEX]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: metrics are served on /metrics\n"]

    return route


def _with_fast_text(app: WSGIApp, fast: Callable[[Any], bytes | None]) -> WSGIApp:
    """Serve ``fast(encoder)`` for a scrape; ``None`` (or a filter, a HEAD...) goes to ``app``."""

    def fast_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if (
            environ["REQUEST_METHOD"] == "GET"
            and environ.get("PATH_INFO") != "/favicon.ico"
            and "name[]" not in parse_qs(environ.get("QUERY_STRING", ""))
        ):
            # The same negotiation as prometheus-client's app (Prometheus asks for OpenMetrics
            # first, curl gets the text format); ``fast`` declines the encoders it cannot match.
            encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
            body = fast(encoder)
            if body is not None:
                headers = [("Content-Type", content_type)]
                if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
                    # Level 1, not prometheus-client's 9: for 1,000 jobs (3.9 MB) 6 ms instead
                    # of 60, for a body 20% larger (150 KB), sent once per scrape.
                    body = gzip.compress(body, compresslevel=1)
                    headers.append(("Content-Encoding", "gzip"))
                start_response("200 OK", headers)
                return [body]
        return app(environ, start_response)

    return fast_app


def serve(
    registry: CollectorRegistry,
    addr: str,
    port: int,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    basic_auth: str | None = None,
    fast: Callable[[Any], bytes | None] | None = None,
    max_connections: int = MAX_CONNECTIONS,
    idle_timeout: float = IDLE_TIMEOUT,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> MetricsServer:
    """Start serving ``registry`` on ``addr:port`` (port 0: a free port).

    ``fast``, if given, is asked first for the body of a scrape, with the encoder
    prometheus-client chose for it (see :mod:`otel_jobs.core.textformat`); when it returns
    ``None`` the registry is served by prometheus-client. The bounds (see the module
    docstring) default to :data:`MAX_CONNECTIONS`, :data:`IDLE_TIMEOUT` and
    :data:`HANDSHAKE_TIMEOUT`.
    """
    app: WSGIApp = make_wsgi_app(registry)
    if fast is not None:
        app = _with_fast_text(app, fast)
    app = _routed(app)
    if basic_auth:
        app = _with_basic_auth(app, basic_auth)
    base = _IPv6Server if ":" in addr else _Server
    handler = type("_Handler", (_QuietHandler,), {"timeout": idle_timeout})
    httpd = make_server(addr, port, app, server_class=base, handler_class=handler)
    httpd.set_bound(max_connections)
    httpd.handshake_timeout = handshake_timeout
    scheme = "http"
    if certfile and keyfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certfile, keyfile)
        httpd.tls = context  # the handshake runs per connection (_Server.finish_request)
        scheme = "https"
    thread = threading.Thread(
        target=httpd.serve_forever, args=(0.1,), name="otel-jobs-metrics", daemon=True
    )
    thread.start()
    return MetricsServer(httpd, thread, scheme)


def _compare_digest(a: bytes, b: bytes) -> bool:
    import hmac  # only with basic auth (hmac costs a start-up a few ms)

    return hmac.compare_digest(a, b)

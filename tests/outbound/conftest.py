"""Real local servers for the outbound tests: one that answers, one that never does."""

from __future__ import annotations

import http.server
import inspect
import logging
import selectors
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import otel_jobs
from tests.support import Samples, scrape

NO_TIMEOUT = "otel_jobs_outbound_calls_without_timeout_total"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # one write per response, no Nagle: keep-alive calls are not held up by delayed ACKs
    wbufsize = -1
    disable_nagle_algorithm = True

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.requests.append((self.command, self.path))  # type: ignore[attr-defined]
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HTTPServer(http.server.ThreadingHTTPServer):
    """Answers every request with 200 ``ok`` and remembers ``(method, path)``."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str]] = []
        self.port = self.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"


class SilentServer:
    """Accepts TCP connections, reads what is sent, and never answers.

    ``connections`` counts accepted connections and ``received`` the bytes sent to it, so a
    test can tell that nothing reached it. ``drop_all()`` closes the accepted connections
    (the client then sees the connection closed).
    """

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        self.connections = 0
        self.received = 0
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._dropping = threading.Event()
        self._dropped = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if self._dropping.is_set():
                for conn in list(self._open):
                    # linger 0: close with a reset, which every client notices at once
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self._forget(conn)
                self._dropped.set()
            for key, _ in self._selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    try:
                        conn, _addr = self._listener.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    with self._lock:
                        self.connections += 1
                        self._open.append(conn)
                    self._selector.register(conn, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data:
                    with self._lock:
                        self.received += len(data)
                else:
                    self._forget(sock)

    def _forget(self, sock: socket.socket) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        with self._lock:
            if sock in self._open:
                self._open.remove(sock)
        sock.close()

    def drop_all(self) -> None:
        """Once a request has arrived, reset every connection, now and later (clients see errors)."""
        import time

        deadline = time.monotonic() + 30
        while self.received == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        self._dropping.set()  # from now on, every connection is reset (clients may retry)
        self._dropped.wait(30)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for conn in list(self._open):
            conn.close()
        self._listener.close()
        self._selector.close()


@pytest.fixture
def http_server() -> Iterator[HTTPServer]:
    server = HTTPServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def here(offset: int = 1) -> str:
    """``module:function:line`` of the caller's line plus ``offset`` (the call under test)."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    caller = frame.f_back
    code = caller.f_code
    function = getattr(code, "co_qualname", code.co_name)
    return f"{caller.f_globals['__name__']}:{function}:{caller.f_lineno + offset}"


def metrics() -> Samples:
    url = otel_jobs.metrics_url()
    assert url is not None
    return scrape(url)


def flagged(**labels: str) -> float:
    """The no-timeout counter summed over the series matching ``labels``."""
    return metrics().total(NO_TIMEOUT, **labels)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "otel_jobs" and r.levelno == logging.WARNING and "timeout" in r.getMessage()
    ]


@pytest.fixture
def outbound(instrumented: Callable[..., Any]) -> Callable[..., Any]:
    """``outbound(library, policy, **options)``: instrument only that library's check."""

    def start(library: str, policy: str = "warn", **options: Any) -> Any:
        options.setdefault("default_timeout", 0.5)
        return instrumented(frameworks=[], outbound=[library], missing_timeout=policy, **options)

    return start


def nothing_reached(server: SilentServer) -> bool:
    """Whether no connection reached ``server`` before this check (it accepts in order)."""
    import time

    with socket.create_connection(("127.0.0.1", server.port), timeout=10):
        deadline = time.monotonic() + 30
        while server.connections == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    return server.connections == 1 and server.received == 0


def in_thread(function: Callable[[], Any], wait: float = 60.0) -> Any:
    """Run ``function`` in a thread and return what it returned or raised (as the value).

    The wait is a safety net, so that a call that hangs (the bug under test) fails the test
    instead of hanging the suite; it is far above any timeout the tests use.
    """
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(function())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(wait)
    assert not thread.is_alive(), f"the call was still hanging after {wait} s"
    return outcome[0]

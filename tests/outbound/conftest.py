"""Real local servers for the outbound tests: one that answers, one that never does
(:class:`tests.support.servers.SilentServer`); ``outbound(library, policy)`` instruments one
library's check. What the tests read back is in :mod:`tests.outbound.probe`."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.servers import SilentServer


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


@pytest.fixture
def outbound(instrumented: Callable[..., Any]) -> Callable[..., Any]:
    """``outbound(library, policy, **options)``: instrument only that library's check."""

    def start(library: str, policy: str = "warn", **options: Any) -> Any:
        options.setdefault("default_timeout", 0.5)
        return instrumented(frameworks=[], outbound=[library], missing_timeout=policy, **options)

    return start

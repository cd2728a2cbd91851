"""Local servers that misbehave, for tests of what otel-jobs does when a peer hangs."""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time


class SilentServer:
    """Accepts TCP connections, reads what is sent, and never answers (a hung server).

    ``connections`` counts accepted connections and ``received`` the bytes sent to it, so a
    test can tell that nothing reached it. ``drop_all()`` resets the accepted connections (the
    client then sees the connection closed); :meth:`client_closed` is called when a client gives
    up and closes its connection. A context manager (closed on exit). ``port`` 0: any free port.
    """

    def __init__(self, port: int = 0) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self.url = self.endpoint = f"http://127.0.0.1:{self.port}"
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
                    self.client_closed()

    def client_closed(self) -> None:
        """Called when a client closed its connection (it gave up waiting)."""

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

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

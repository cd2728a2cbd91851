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


class Forwarder:
    """A TCP port of 127.0.0.1 that forwards each connection to ``target`` (a broker or a
    database seen through a port the test controls).

    ``start()`` listens (on the same port again after a stop); ``stop_accepting()`` refuses new
    connections and keeps the ones made; ``stop()`` also cuts every connection made (the peer
    gone, as far as its clients can tell). ``port`` 0: any free port, kept across restarts.
    """

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self.port = port
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> Forwarder:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        listener.settimeout(0.1)  # a blocked accept() would keep the port bound after close()
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop_accepting(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            time.sleep(0.3)  # let the accept loop see that it is stopped (0.1 s timeout)
            listener.close()

    def stop(self) -> None:
        self.stop_accepting()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

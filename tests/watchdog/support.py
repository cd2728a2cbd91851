"""Helpers of the watchdog tests: an asyncio loop in a thread of its own, a port forwarder; the
polling (``wait_for``), ``here`` and ``run_named`` are tests.support's, importable from here
too."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.threads import here, run_named
from tests.support.waiting import wait_for

__all__ = [
    "DEADLINE",
    "LOOP_THREAD",
    "Forwarder",
    "here",
    "loop_in_thread",
    "run_named",
    "wait_for",
]

DEADLINE = 60.0
#: The name of the thread running the ``loop`` fixture's asyncio loop.
LOOP_THREAD = "test-loop"


@contextmanager
def loop_in_thread(name: str) -> Iterator[tuple[asyncio.AbstractEventLoop, threading.Thread]]:
    """A new asyncio loop running forever in a daemon thread named ``name`` (for the runs a
    test starts on it with ``run_coroutine_threadsafe``); stopped and closed at the end."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()
    try:
        yield loop, thread
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(DEADLINE)
        loop.close()


class Forwarder:
    """A local TCP port that forwards each connection to ``target``; ``close()`` stops
    accepting new connections while the ones already made keep working."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, name="test-forwarder", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
        except OSError:
            pass
        self.sock.close()

"""An APScheduler scheduler instrumented by otel-jobs: a healthy job, and one that gets stuck on
an HTTP call made without a timeout, so that its next runs are skipped (``max_instances=1``).

Run it with ``python scheduler.py`` (see README.md); Ctrl-C stops it.
"""

from __future__ import annotations

import signal
import socket
import threading
import urllib.request
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler

import otel_jobs

# Once, where the process starts (before or after the scheduler is created).
otel_jobs.instrument(
    # sync_inventory never heartbeats: call it stalled after 5 s instead of the default 600.
    jobs={"sync_inventory": {"heartbeat_timeout": 5}},
)


class SilentUpstream:
    """A local "partner API" that accepts connections and never answers."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._accepted: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}/inventory"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self._accepted.append(conn)

    def close(self) -> None:
        self._server.close()
        for conn in self._accepted:
            conn.close()  # the stuck call finally fails: the job ends and the scheduler can stop


upstream = SilentUpstream()
cache: dict[str, int] = {}


def refresh_cache() -> None:
    """Healthy: a few quick steps, with a heartbeat after each."""
    for step in range(3):
        cache[f"key{step}"] = step
        otel_jobs.heartbeat(progress=(step + 1) / 3)


def sync_inventory() -> None:
    """Stuck: no timeout on the call, and the upstream never answers."""
    with urllib.request.urlopen(upstream.url) as response:  # no timeout=: waits forever
        response.read()


def main() -> None:
    scheduler = BackgroundScheduler()
    scheduler.add_job(refresh_cache, "interval", seconds=2, name="refresh_cache")
    scheduler.add_job(
        sync_inventory, "interval", seconds=3, name="sync_inventory",
        max_instances=1,  # a stuck run blocks the next ones: they are skipped and counted
    )  # fmt: skip
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    scheduler.start()
    print(f"scheduler running; metrics on {otel_jobs.metrics_url()}; Ctrl-C to stop")
    stop.wait()
    upstream.close()
    scheduler.shutdown(wait=True)
    otel_jobs.uninstrument()


if __name__ == "__main__":
    main()

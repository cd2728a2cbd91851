"""Jobs run by the RQ tests' real workers (imported by the work horse, never instrumenting)."""

from __future__ import annotations

import os
import socket
import time

from rq import Retry, get_current_job


def ok(x: int) -> int:
    return x * 2


def boom() -> None:
    raise ValueError("boom")


def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def retry_once() -> object:
    """Asks RQ to run it again once (by returning a Retry), then succeeds."""
    job = get_current_job()
    assert job is not None
    if not job.number_of_retries:
        return Retry(max=1)
    return "done"


def hang(pid_file: str, port: int) -> None:
    """Block on an outbound call made without a timeout to a server that never answers."""
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    conn = socket.create_connection(("127.0.0.1", port))
    conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
    conn.recv(1)  # no timeout: waits for good


def instrument_inside() -> bool:
    """Calls instrument() inside the job: the wrong place."""
    import otel_jobs

    otel_jobs.instrument(prometheus_port=0)
    return otel_jobs.is_instrumented()

"""Worker processes of the tests: started with their output in a log, stopped or killed with their
whole process group, and a worker serving /metrics polled until it shows what a test waits for.

* ``worker_env(**extra)``: this process's environment without its ``OTEL_*`` settings (the worker
  configures itself), plus ``extra``;
* ``start(command, log, env, cwd)`` starts a worker with its output in ``log``; ``stop(proc)``
  stops it with a signal (killed if it does not exit) and returns its exit code;
  ``kill_group(proc)`` kills a worker started with ``new_session=True`` and all its processes;
* ``GroupWorker``: a worker (with forked processes) scraped on its /metrics until it settles;
* ``piped(command, env)``: a process the test talks to through its stdin, stdout and stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from . import Samples, free_port, scrape

#: The repository's root (on the test apps' PYTHONPATH).
ROOT = Path(__file__).resolve().parents[2]


def worker_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without ``OTEL_*`` (the test's own settings), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(extra)
    return env


def app_env(
    directory: Path, module: str, source: str, prefix: str, redis_url: str, framework: str
) -> dict[str, str]:
    """The environment of a test app written to ``directory/module.py``: the app and the
    repository on ``PYTHONPATH``, ``<prefix>_FRAMEWORK``, ``_REDIS``, ``_QUEUE`` (fresh) and
    ``_PORT`` (free) for it to read, otel-jobs' ``start`` and the OTLP endpoint left at their
    defaults (the suite sets eager start, tests/conftest.py)."""
    (directory / f"{module}.py").write_text(source)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(directory), str(ROOT)]),
        f"{prefix}_FRAMEWORK": framework,
        f"{prefix}_REDIS": redis_url,
        f"{prefix}_QUEUE": f"oj{prefix.lower()}-{uuid.uuid4().hex[:8]}",
        f"{prefix}_PORT": str(free_port()),
    }
    env.pop("OTEL_JOBS_START", None)
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    return env


def last_json(code: str, cwd: Path, env: dict[str, str]) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter that prints one JSON object last; that object."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def start(
    command: list[str],
    log: Path,
    env: dict[str, str],
    cwd: Path | None = None,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``command`` with its stdout and stderr in ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )  # fmt: skip


@contextmanager
def piped(command: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """``command`` started with its stdin, stdout and stderr as text pipes; at the end, killed if
    it still runs, and its pipes closed."""
    proc = subprocess.Popen(
        command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
    """Send ``sig`` and wait for the exit (killed after ``timeout``); the exit code."""
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a worker started in a session of its own, with every process of its group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # a hung job never returns: no graceful stop
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


class GroupWorker:
    """A worker in a session of its own (its forked processes too), serving ``url``."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        kill_group(self.proc)

    def wait_for(self, done: Callable[[Samples], bool], what: str, timeout: float = 120) -> Samples:
        """Poll /metrics until ``done(samples)``; fails at once if the worker exits."""
        deadline = time.monotonic() + timeout
        last: Samples | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                name = type(self).__name__.lower()
                pytest.fail(f"{name} exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                last = scrape(self.url)
            except OSError:
                last = None
            if last is not None and done(last):
                return last
            time.sleep(0.3)
        text = last.text if last is not None else "(no scrape)"
        pytest.fail(f"timed out waiting for {what}\n--- /metrics\n{text}\n--- log\n{self.tail()}")

    def wait_serving(self) -> Samples:
        """Until /metrics is served and shows the watchdog's ticks."""
        return self.wait_for(
            lambda s: "otel_jobs_watchdog_last_tick_timestamp_seconds" in s.names(), "/metrics"
        )

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 20 s (a server the test started)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


class AppWorker:
    """A worker process of a small app module the test writes into ``directory``, started in a
    session of its own with ``env`` (and the directory on ``PYTHONPATH``), its output in
    ``directory / log_name``; :meth:`stop` kills it with its whole process group."""

    def __init__(
        self,
        directory: Path,
        app: tuple[str, str],
        command: list[str],
        env: dict[str, str],
        log_name: str,
    ) -> None:
        module, source = app
        (directory / f"{module}.py").write_text(source)
        self.log = directory / log_name
        self.proc = start(
            command,
            self.log,
            worker_env(PYTHONPATH=str(directory), **env),
            cwd=directory,
            new_session=True,
        )

    def stop(self) -> None:
        kill_group(self.proc)

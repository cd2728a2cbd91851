"""Real Prometheus tools for the scheduled-jobs tests: a Pushgateway and a Prometheus server.

Both are Debian's binaries, started on free ports of 127.0.0.1 with their data in the test's
temporary directory, and stopped when the test ends.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port
from tests.support.processes import terminate
from tests.support.prometheus import Prometheus, ready, require_binary
from tests.support.prometheus import start_prometheus as launch_prometheus
from tests.support.waiting import wait_for

__all__ = ["Prometheus", "running_pushgateway", "running_tool", "stop", "wait_for"]

stop = terminate  # the name the schedules tests import


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """The base URL of a real Pushgateway on a free port."""
    with running_pushgateway(tmp_path, free_port()) as base:
        yield base


@contextlib.contextmanager
def running_pushgateway(tmp_path: Path, port: int) -> Iterator[str]:
    """A real Pushgateway on ``port`` of 127.0.0.1 while the block runs; its base URL.

    It keeps what is pushed in memory only: Debian's build persists it by default to one file
    under /var/lib/prometheus, from which every gateway started would load the pushes of
    earlier tests (and of other test runs).
    """
    with running_tool(tmp_path, "prometheus-pushgateway", port, ["--persistence.file="]) as base:
        yield base


@contextlib.contextmanager
def running_tool(tmp_path: Path, name: str, port: int, args: list[str]) -> Iterator[str]:
    """Debian's Prometheus tool ``name`` listening on ``port`` of 127.0.0.1 (with ``args``)
    while the block runs, once its ``/-/ready`` answers; its base URL."""
    binary = require_binary(name)
    log = (tmp_path / f"{name}-{port}.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(name, lambda: proc.poll() is None and ready(f"{base}/-/ready"))
        yield base
    finally:
        terminate(proc)
        log.close()


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """``start_prometheus(scrape_configs, rule_text=None)``: a Prometheus scraping and
    evaluating every second; stopped after the test."""
    started: list[Prometheus] = []

    def start(scrape_configs: list[dict[str, Any]], rule_text: str | None = None) -> Prometheus:
        rule_files = []
        if rule_text is not None:
            (tmp_path / "scheduled.rules.yml").write_text(rule_text)
            rule_files.append("scheduled.rules.yml")
        started.append(launch_prometheus(tmp_path, scrape_configs, rule_files))
        return started[-1]

    yield start
    for server in started:
        server.stop()

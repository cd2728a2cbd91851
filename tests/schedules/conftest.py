"""Real Prometheus tools for the scheduled-jobs tests: a Pushgateway and a Prometheus server.

Both are Debian's binaries, started on free ports of 127.0.0.1 with their data in the test's
temporary directory, and stopped when the test ends.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from otel_jobs import rules
from tests.support import IN_CI, free_port

T = TypeVar("T")
INSTALL_HINT = "apt-get install -y prometheus prometheus-pushgateway"


def require_binary(name: str) -> str:
    import shutil

    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed; install it with: {INSTALL_HINT}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 120.0) -> T:
    """Poll ``probe`` until it returns something truthy; generous, the machine may be slow."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except OSError as exc:
            last_error = exc
        else:
            if result:
                return result
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error})")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def _ready(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return bool(resp.status == 200)


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """The base URL of a real Pushgateway on a free port."""
    binary = require_binary("prometheus-pushgateway")
    port = free_port()
    log = (tmp_path / "pushgateway.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("the Pushgateway", lambda: proc.poll() is None and _ready(f"{base}/-/ready"))
        yield base
    finally:
        stop(proc)
        log.close()


class Prometheus:
    """A real Prometheus server: its base URL and a query helper."""

    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        result: list[dict[str, Any]] = get_json(url)["data"]["result"]
        return result

    def alerts(self, name: str, state: str = "firing") -> list[dict[str, Any]]:
        found = get_json(f"{self.base}/api/v1/alerts")["data"]["alerts"]
        return [a for a in found if a["labels"]["alertname"] == name and a["state"] == state]


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """``start_prometheus(scrape_configs, rule_text=None)``: a Prometheus scraping and
    evaluating every second; stopped after the test."""
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []

    def start(scrape_configs: list[dict[str, Any]], rule_text: str | None = None) -> Prometheus:
        binary = require_binary("prometheus")
        rule_files = []
        if rule_text is not None:
            (tmp_path / "scheduled.rules.yml").write_text(rule_text)
            rule_files.append("scheduled.rules.yml")
        (tmp_path / "prometheus.yml").write_text(
            rules.dump_yaml(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": rule_files,
                    "scrape_configs": scrape_configs,
                }
            )
        )
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        logs.append(log)
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        wait_for("Prometheus", lambda: proc.poll() is None and _ready(f"{base}/-/ready"))
        return Prometheus(base)

    yield start
    for proc in procs:
        stop(proc)
    for log in logs:
        log.close()

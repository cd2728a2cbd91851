"""Debian's Prometheus tools in tests: a real Prometheus server (scraping and evaluating every
second, its data in the test's directory) and the binaries' presence (skip, or with CI=true
fail, when one is not installed)."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from otel_jobs import rules

from . import free_port
from . import require_binary as _require_binary
from .processes import terminate
from .waiting import wait_for

INSTALL_HINT = "apt-get install -y prometheus prometheus-alertmanager prometheus-pushgateway"


def require_binary(name: str) -> str:
    """The path of a Prometheus tool; skip (with CI=true: fail) when it is not installed."""
    return _require_binary(name, INSTALL_HINT)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def ready(url: str) -> bool:
    """Whether ``url`` (a ``/-/ready`` endpoint) answers 200."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        return bool(resp.status == 200)


class Prometheus:
    """A real Prometheus server started by :func:`start_prometheus`: its base URL, queries."""

    def __init__(self, base: str, proc: subprocess.Popen[bytes], log: Any) -> None:
        self.base = base
        self.proc = proc
        self._log = log

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        return list(get_json(url)["data"]["result"])

    def alerts(self, name: str | None = None, state: str = "firing") -> list[dict[str, Any]]:
        """The alerts named ``name`` (every one if None) in ``state``."""
        found = get_json(f"{self.base}/api/v1/alerts")["data"]["alerts"]
        return [
            a
            for a in found
            if (name is None or a["labels"]["alertname"] == name) and a["state"] == state
        ]

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(get_json(f"{self.base}/api/v1/rules")["data"]["groups"])

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()


def start_prometheus(
    directory: Path, scrape_configs: list[dict[str, Any]], rule_files: list[str] | None = None
) -> Prometheus:
    """A Prometheus scraping and evaluating every second, with ``rule_files`` (paths, relative to
    ``directory`` or absolute), on a free port; ready when returned. Stop it with ``stop()``."""
    binary = require_binary("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": rule_files or [],
        "scrape_configs": scrape_configs,
    }
    (directory / "prometheus.yml").write_text(rules.dump_yaml(config))
    port = free_port()
    log = (directory / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=directory,
    )
    server = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_for(
            "Prometheus to be ready",
            lambda: proc.poll() is None and ready(f"{server.base}/-/ready"),
        )
    except BaseException:
        server.stop()
        raise
    return server

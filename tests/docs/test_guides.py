"""The "to a firing alert" guides (docs/guides/), run as they are written.

Each guide marks its fenced blocks with an HTML comment on the line before (invisible on the
site); the test reads the blocks from the page and does what each marker says, in page order,
in a temporary directory:

* ``<!-- guide: install -->``: what the reader installs; not run (this environment has it), but
  every line must be a ``pip install`` or an ``apt-get install``.
* ``<!-- guide: file NAME -->``: the block is written to ``NAME``.
* ``<!-- guide: run -->``: each line is a shell command that must exit 0.
* ``<!-- guide: start -->``: a long-running command (Prometheus, a worker) started in the
  background in its own process group, stopped when the guide ends.
* ``<!-- guide: see prometheus|alertmanager ALERT LABEL=VALUE... -->``: the command (a ``curl``
  of the alerts API) is run again until its JSON shows ``ALERT`` firing with those labels.

What the test changes, and only that: the ports (Prometheus 9090, Alertmanager 9093 and the
worker's 9464 become free ports; the worker is given its port by ``OTEL_JOBS_PROMETHEUS_PORT``),
and the Redis database ``/0`` becomes this module's own (``/1``: no other module uses it),
emptied before and after.
Every bash block of a guide must carry a marker, so nothing on the page goes untested.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.alerts import require_binary
from tests.support import free_port, require_service

pytestmark = [pytest.mark.prometheus, pytest.mark.broker]

ROOT = Path(__file__).resolve().parents[2]
GUIDES = ROOT / "docs" / "guides"
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"
REDIS_DB = 1  # on the shared Redis: this module's alone (a module that empties a database owns it)
MARKER = re.compile(r"<!-- guide: (\w+)(.*?) -->\n```(\w*)\n(.*?)\n```", re.S)
BLOCK = re.compile(r"(?:<!-- guide: [^\n]* -->\n)?```(\w*)\n", re.S)
WAIT_SECONDS = 240  # a bound for slow machines, not a measured time


@dataclass
class Step:
    kind: str
    args: list[str]
    lang: str
    body: str


def steps(page: Path) -> list[Step]:
    return [
        Step(kind, args.split(), lang, body)
        for kind, args, lang, body in MARKER.findall(page.read_text())
    ]


def redis_url_db() -> str:
    return f"6379/{REDIS_DB}"


@pytest.fixture
def redis_db() -> Iterator[None]:
    require_service("127.0.0.1", 6379, "Redis", "apt-get install redis-server")
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    client.flushdb()
    try:
        yield
    finally:
        client.flushdb()
        client.close()


class Guide:
    """Runs the steps of one page in ``directory``; ``stop()`` ends what it started."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ports = {"9090": free_port(), "9093": free_port(), "9464": free_port()}
        # The reader's defaults: not the suite's OTEL_JOBS_START=eager (tests/conftest.py).
        environ = {k: v for k, v in os.environ.items() if k != "OTEL_JOBS_START"}
        self.env = {
            **environ,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "OTEL_JOBS_PROMETHEUS_PORT": str(self.ports["9464"]),
            "PYTHONUNBUFFERED": "1",
        }
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def adapt(self, text: str) -> str:
        for port, free in self.ports.items():
            text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free}")
        return text.replace("6379/0", redis_url_db())

    def shell(self, command: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            **kwargs,
        )

    def do(self, step: Step) -> None:
        body = self.adapt(step.body)
        if step.kind == "install":
            for line in body.splitlines():
                command = line.split("#")[0].strip()
                assert re.match(r"(sudo )?(pip install|apt-get install) ", command), line
        elif step.kind == "file":
            (name,) = step.args
            (self.directory / name).write_text(body + "\n")
        elif step.kind == "run":
            for line in body.splitlines():
                done = self.shell(line)
                assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}\n{self.logs()}"
        elif step.kind == "start":
            log = (self.directory / f"started-{len(self.started)}.log").open("wb")
            proc = subprocess.Popen(
                ["bash", "-c", body],
                cwd=self.directory,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
            self.started.append((body, proc))
        elif step.kind == "see":
            self.see(body, step.args[0], step.args[1], dict(a.split("=", 1) for a in step.args[2:]))
        else:
            raise AssertionError(f"unknown guide step {step.kind!r}")

    def see(self, command: str, source: str, alert: str, labels: dict[str, str]) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        last = ""
        while time.monotonic() < deadline:
            for body, proc in self.started:
                assert proc.poll() is None, f"{body!r} exited\n{self.logs()}"
            done = self.shell(command)
            last = done.stdout
            if done.returncode == 0 and firing(source, done.stdout, alert, labels):
                return
            time.sleep(1)
        raise AssertionError(f"{alert} {labels} never fired in {source}: {last}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.directory.glob("started-*.log"))
        )

    def stop(self) -> None:
        for _, proc in reversed(self.started):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in reversed(self.started):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            # The whole group: a Celery worker's warm shutdown waits for the hung task, and
            # its pool children (or an RQ work horse) would outlive it.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


def firing(source: str, output: str, alert: str, labels: dict[str, str]) -> bool:
    try:
        data = json.loads(output)
    except ValueError:
        return False
    if source == "prometheus":
        alerts = data["data"]["alerts"]
        active = [a for a in alerts if a["state"] == "firing"]
    elif source == "alertmanager":
        active = [a for a in data if a["status"]["state"] == "active"]
    else:
        raise AssertionError(f"unknown alert source {source!r}")
    return any(
        a["labels"].get("alertname") == alert
        and all(a["labels"].get(k) == v for k, v in labels.items())
        for a in active
    )


PAGES = sorted(p.stem for p in GUIDES.glob("*.md") if p.stem != "index")


def test_there_is_a_guide_for_celery_rq_and_plain_job() -> None:
    assert {"celery", "rq", "job"} <= set(PAGES)


@pytest.mark.parametrize("page", PAGES)
def test_every_command_block_of_a_guide_is_run(page: str) -> None:
    text = (GUIDES / f"{page}.md").read_text()
    unmarked = [
        m.group(0)
        for m in BLOCK.finditer(text)
        if m.group(1) == "bash" and "guide:" not in m.group(0)
    ]
    assert not unmarked, f"{page}.md has bash blocks without a guide marker"
    kinds = [s.kind for s in steps(GUIDES / f"{page}.md")]
    assert kinds.count("see") >= 1 and "start" in kinds, kinds
    assert any(
        s.kind == "run" and "otel-jobs rules --stall-for" in s.body
        for s in steps(GUIDES / f"{page}.md")
    )


@pytest.mark.parametrize("page", PAGES)
def test_the_guide_makes_its_alert_fire(
    page: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    for binary in ("prometheus", "prometheus-alertmanager", "curl"):
        require_binary(binary)
    if "6379" in (GUIDES / f"{page}.md").read_text():
        request.getfixturevalue("redis_db")
    guide = Guide(tmp_path)
    try:
        for step in steps(GUIDES / f"{page}.md"):
            guide.do(step)
    finally:
        guide.stop()

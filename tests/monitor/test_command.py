"""``otel-jobs monitor`` as a real process: its settings, its exit codes, its endpoint, and two
monitors on one broker giving the same figures."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from otel_jobs.core.config import ConfigurationError
from otel_jobs.monitor import settings as monitor_settings
from otel_jobs.monitor.settings import MonitorSettings, load
from tests.otlp_receiver import unused_port
from tests.support import Samples, free_port, require_rabbitmq

from .conftest import RABBITMQ_URL
from .support import ROOT, MonitorProcess, ages, depth, wait_for

pytestmark = pytest.mark.broker

REDIS_DB = 6


def command(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "otel_jobs", "monitor", *args],
        capture_output=True, text=True, timeout=120, env=environ, cwd=ROOT,
    )  # fmt: skip


# --- settings ------------------------------------------------------------------------------------


def test_flags_over_variables_over_the_workers_variables() -> None:
    env = {
        "OTEL_JOBS_MONITOR_RQ_REDIS_URL": "redis://10.0.0.1:6379/0",
        "OTEL_JOBS_MONITOR_INTERVAL": "30",
        "OTEL_JOBS_PROMETHEUS_ADDR": "0.0.0.0",
        "OTEL_JOBS_PROMETHEUS_PORT": "9464",  # the worker's port is not the monitor's
    }
    s = load({"interval": "20"}, env)
    assert s.rq_redis_url == "redis://10.0.0.1:6379/0"
    assert s.interval == 20.0 and s.poll_timeout == 5.0
    assert s.addr == "0.0.0.0" and s.port == 9465
    assert s.source("interval") == "--interval"
    assert s.source("addr") == "OTEL_JOBS_PROMETHEUS_ADDR"
    assert load({"addr": "127.0.0.2"}, env).addr == "127.0.0.2"
    assert load({}, {**env, "OTEL_JOBS_MONITOR_ADDR": "::1"}).addr == "::1"
    # The poll's deadline defaults to the interval when that is shorter than 5 s.
    assert load({"interval": "2"}, env).poll_timeout == 2.0


def test_queues_for_each_framework() -> None:
    s = MonitorSettings(queues=("default", "rq=high", "arq=arq:low"))
    assert s.queues_for("rq") == ("default", "high")
    assert s.queues_for("arq") == ("default", "arq:low")
    assert s.queues_for("celery") == ("default",)


@pytest.mark.parametrize(
    ("given", "env", "named"),
    [
        ({"rq_redis_url": "localhost:6379"}, {}, "--rq-redis-url='localhost:6379'"),
        ({"rq_redis_url": "redis://h:99999/0"}, {}, "--rq-redis-url='redis://h:99999/0'"),
        ({"arq_redis_url": "redis://h/0", "interval": "0"}, {}, "--interval='0'"),
        ({"arq_redis_url": "redis://h/0", "interval": "inf"}, {}, "--interval='inf'"),
        ({"arq_redis_url": "redis://h/0", "poll_timeout": "20"}, {}, "--poll-timeout=20.0"),
        ({"arq_redis_url": "redis://h/0"}, {"OTEL_JOBS_MONITOR_PORT": "70000"}, "OTEL_JOBS_MONITOR_PORT='70000'"),
        ({"arq_redis_url": "redis://h/0"}, {"OTEL_JOBS_PROMETHEUS_ADDR": "a b"}, "OTEL_JOBS_PROMETHEUS_ADDR='a b'"),
        ({"arq_redis_url": "redis://h/0", "basic_auth": "nopassword"}, {}, "--basic-auth='<hidden>'"),
        ({"arq_redis_url": "redis://h/0", "certfile": "/nonexistent.pem"}, {}, "--keyfile=None"),
        ({"arq_redis_url": "redis://h/0", "queues": "celery=a,nope=b"}, {}, "--queues='celery=a,nope=b'"),
        ({"arq_redis_url": "redis://h/0", "max_queues": "0"}, {}, "--max-queues='0'"),
        ({"arq_redis_url": "redis://h/0", "log_level": "loud"}, {}, "--log-level='loud'"),
        ({"celery_app": ":app"}, {}, "--celery-app=':app'"),
    ],
)  # fmt: skip
def test_a_bad_value_is_refused_naming_its_flag_or_variable(
    given: dict[str, str], env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load(given, env)
    assert named in str(caught.value)


def test_the_options_table_lists_every_flag_and_variable_and_the_docs_show_it() -> None:
    table = monitor_settings.markdown_table()
    for option in monitor_settings.OPTIONS:
        assert f"| `{option.flag}` | `{option.env}`" in table
    text = (ROOT / "docs" / "monitor.md").read_text()
    start = text.index("<!-- monitor-options:start -->") + len("<!-- monitor-options:start -->")
    assert text[start : text.index("<!-- monitor-options:end -->")].strip() == table


# --- the command ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ((), {}, "no broker to watch"),
        (("--interval", "soon", "--rq-redis-url", "redis://h/0"), {}, "--interval='soon' is not valid"),
        (("--celery-app", "no_such_module:app"), {}, "--celery-app='no_such_module:app' is not valid"),
        (("--huey", "os.path"), {}, "--huey='os.path' is not valid; accepted: a Huey instance"),
        (("--dramatiq-broker", "os:sep"), {}, "--dramatiq-broker='os:sep' is not valid"),
        ((), {"OTEL_JOBS_MONITOR_ARQ_REDIS_URL": "http://h"}, "OTEL_JOBS_MONITOR_ARQ_REDIS_URL='http://h'"),
    ],
)  # fmt: skip
def test_bad_settings_are_one_line_and_exit_code_2(
    args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    done = command(*args, **env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("otel-jobs monitor: "), done.stderr
    assert expected in lines[0]


def test_an_unreachable_broker_at_start_is_exit_code_2_naming_the_flag() -> None:
    url = f"redis://127.0.0.1:{unused_port()}/0"
    done = command("--rq-redis-url", url)
    assert done.returncode == 2
    assert f"--rq-redis-url={url}: cannot reach the broker" in done.stderr
    done = command(OTEL_JOBS_MONITOR_ARQ_REDIS_URL=url)
    assert done.returncode == 2
    assert f"OTEL_JOBS_MONITOR_ARQ_REDIS_URL={url}: cannot reach the broker" in done.stderr


UNREACHABLE_APPS = """
from celery import Celery
from dramatiq.brokers.rabbitmq import RabbitmqBroker

app = Celery("unreachable", broker="amqp://guest:guest@127.0.0.1:{port}//")
broker = RabbitmqBroker(url="amqp://guest:guest@127.0.0.1:{port}")
broker.declare_queue("q")
"""


@pytest.mark.parametrize(
    ("flag", "ref"),
    [("--celery-app", "unreachable_apps:app"), ("--dramatiq-broker", "unreachable_apps:broker")],
)
def test_an_unreachable_rabbitmq_at_start_is_one_line_with_its_reason(
    flag: str, ref: str, tmp_path: Path
) -> None:
    # Nothing else on stderr before it (such as the note that lost runs need --lease-url on a
    # broker that is not a Redis): the one line is the reason the monitor did not start.
    pytest.importorskip("celery")
    pytest.importorskip("pika")
    port = unused_port()
    (tmp_path / "unreachable_apps.py").write_text(UNREACHABLE_APPS.format(port=port))
    done = command(flag, ref, PYTHONPATH=str(tmp_path))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"otel-jobs monitor: {flag}={ref}: cannot reach the broker at ")
    assert f"127.0.0.1:{port}" in lines[0]
    # The reason the client gave, not an empty one (pika's AMQPConnectionError has no text).
    assert "refused" in lines[0].lower(), lines[0]


def test_a_taken_port_is_exit_code_2(redis_url: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = command("--rq-redis-url", redis_url, "--port", str(port))
    assert done.returncode == 2
    assert f"--port={port}: cannot serve /metrics" in done.stderr


def test_a_taken_port_is_one_line_even_where_starting_had_notes_to_log(tmp_path: Path) -> None:
    # A Celery app on RabbitMQ: building its collector notes that lost runs need --lease-url.
    # The monitor did not start, so its one line is why.
    pytest.importorskip("celery")
    require_rabbitmq()
    import socket

    (tmp_path / "rabbit_app.py").write_text(
        f"from celery import Celery\napp = Celery('rabbit_app', broker='{RABBITMQ_URL}//')\n"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = command(
            "--celery-app", "rabbit_app:app", "--port", str(port), PYTHONPATH=str(tmp_path)
        )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--port={port}: cannot serve /metrics" in lines[0], done.stderr


def test_the_installed_command_serves_with_the_workers_basic_auth_and_stops_on_sigterm(
    redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_JOBS_PROMETHEUS_BASIC_AUTH="prom:secret", OTEL_JOBS_MONITOR_INTERVAL="0.5")
    log = tmp_path / "monitor.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "otel-jobs"), "monitor", "--rq-redis-url", redis_url,
             "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
            except urllib.error.HTTPError as exc:
                assert exc.code == 401
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        request = urllib.request.Request(
            url, headers={"Authorization": "Basic " + base64.b64encode(b"prom:secret").decode()}
        )
        while True:
            with urllib.request.urlopen(request, timeout=5) as resp:
                samples = Samples(resp.read().decode())
            if samples.find("otel_jobs_monitor_broker_up"):
                break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert samples.value("otel_jobs_monitor_broker_up", framework="rq") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()
    text = log.read_text()
    assert "watching rq at redis://127.0.0.1" in text and "stopped" in text
    assert "secret" not in text


def test_the_monitor_serves_https_with_the_workers_tls_files(
    redis_url: str, tmp_path: Path, certificate: tuple[str, str]
) -> None:
    import ssl

    cert, key = certificate
    monitor = MonitorProcess(
        ["--rq-redis-url", redis_url, "--interval", "0.5"],
        tmp_path / "monitor.log",
        OTEL_JOBS_PROMETHEUS_CERTFILE=cert,
        OTEL_JOBS_PROMETHEUS_KEYFILE=key,
    )
    url = f"https://127.0.0.1:{monitor.port}/metrics"
    context = ssl.create_default_context(cafile=cert)
    try:

        def served() -> Samples | None:
            assert monitor.proc.poll() is None, monitor.tail()
            try:
                with urllib.request.urlopen(url, timeout=5, context=context) as resp:
                    samples = Samples(resp.read().decode())
            except OSError:
                return None
            return samples if samples.find("otel_jobs_monitor_broker_up") else None

        samples = wait_for("the monitor's /metrics over HTTPS", served)
        assert samples.value("otel_jobs_monitor_broker_up", framework="rq") == 1
        # Plain HTTP on the same port is not served.
        with pytest.raises(OSError):
            urllib.request.urlopen(monitor.url, timeout=5).read()
    finally:
        assert monitor.stop() == 0, monitor.tail()


def test_two_monitor_processes_on_one_broker_agree(redis_url: str, tmp_path: Path) -> None:
    rq = pytest.importorskip("rq")
    import redis

    client = redis.Redis.from_url(redis_url)
    queue = rq.Queue("agree", connection=client)
    for _ in range(4):
        queue.enqueue("os.getpid")
    client.close()
    args = ["--rq-redis-url", redis_url, "--interval", "0.5"]
    one = MonitorProcess(args, tmp_path / "one.log")
    two = MonitorProcess(args, tmp_path / "two.log")
    try:
        ready = lambda s: s.find("otel_jobs_queue_depth", queue="agree")  # noqa: E731
        one.wait_for("the first monitor's poll", ready)
        two.wait_for("the second monitor's poll", ready)
        # Each age is scraped between two clock readings: the due time it implies lies in
        # [before - age, after - age]; the two monitors agree if those intervals meet.
        spans = []
        for monitor in (one, two):
            before = time.time()
            samples = monitor.wait_for("a scrape", lambda s: s)
            after = time.time()
            assert depth(samples, "rq", "agree", "waiting") == 4
            (age,) = ages(samples, "rq", "agree")
            spans.append((before - age, after - age))
        (lo1, hi1), (lo2, hi2) = spans
        assert lo1 <= hi2 and lo2 <= hi1, spans
    finally:
        assert one.stop() == 0 and two.stop() == 0


def test_the_broker_label_never_carries_credentials() -> None:
    celery = pytest.importorskip("celery")
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    from otel_jobs.monitor.arq import ArqCollector
    from otel_jobs.monitor.celery import collector_for_app
    from otel_jobs.monitor.dramatiq import collector_for_broker
    from otel_jobs.monitor.rq import RQCollector

    # Built, never connected: the labels come from the settings alone.
    labels = {
        RQCollector("redis://alice:s3cret@10.0.0.5:6380/2").broker: "redis://10.0.0.5:6380/2",
        ArqCollector("rediss://:s3cret@cache.internal:6379/0").broker: "rediss://cache.internal:6379/0",
        collector_for_app(celery.Celery("x", broker="amqp://bob:s3cret@mq.internal:5672/prod")).broker:
            "amqp://mq.internal:5672/prod",
        collector_for_app(celery.Celery("y", broker="redis://:s3cret@10.0.0.6:6379/4")).broker:
            "redis://10.0.0.6:6379/4",
    }  # fmt: skip
    broker = RabbitmqBroker(url="amqp://carol:s3cret@mq.internal:5672/%2F")
    try:
        labels[collector_for_broker(broker).broker] = "amqp://mq.internal:5672/%2F"
    finally:
        broker.close()
    assert labels == {label: label for label in labels.values()}
    assert not any("s3cret" in label or "@" in label for label in labels)

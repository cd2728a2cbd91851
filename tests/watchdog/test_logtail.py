"""The last log lines of a stuck run, in its verdict: what it logged, how long ago, redacted.

Real ``logging``, real threads, the real watchdog and SDK; a subprocess for what an application
without logging configuration sees. Nothing is timed.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_jobs
from otel_jobs.core import logtail
from tests.support import spans_named
from tests.watchdog.support import DEADLINE, run_named, wait_for

log = logging.getLogger("crawler")


def test_a_run_that_logs_then_hangs_shows_that_line_and_its_age(
    span_exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture, agent: Any
) -> None:
    caplog.set_level(logging.INFO)
    release = threading.Event()

    @otel_jobs.job(name="logs.crawl", heartbeat_timeout=0.5)
    def crawl() -> None:
        for page in range(1, 8):
            log.info("fetching page %d of %d", page, 20)
        release.wait()

    thread = threading.Thread(target=crawl, daemon=True)
    thread.start()
    run = run_named(agent, "logs.crawl")
    record = wait_for(
        "the verdict",
        lambda: next(
            (r for r in caplog.records if getattr(r, "stall_last_logs", None) is not None), None
        ),
    )
    last = record.stall_last_logs[-1]
    assert last["message"] == "fetching page 7 of 20"
    assert last["level"] == "INFO" and last["logger"] == "crawler"
    # Its age: logged while the run was in flight, before the verdict.
    assert 0 < last["age_s"] <= run.diagnosis.elapsed + 0.01
    assert len(record.stall_last_logs) == logtail.MAX_RECORDS  # the last five of seven
    assert [r["message"] for r in record.stall_last_logs][0] == "fetching page 3 of 20"
    summary_part = f"last log {last['age_s']:.1f}s ago: INFO fetching page 7 of 20"
    assert summary_part in record.getMessage()
    assert "last log records of the run:" in record.getMessage()
    span = wait_for(
        "the stall span",
        lambda: next(
            iter(spans_named(span_exporter.get_finished_spans(), "logs.crawl stalled")), None
        ),
    )
    assert span.attributes["otel_jobs.stall.last_log"] == "INFO crawler: fetching page 7 of 20"
    assert span.attributes["otel_jobs.stall.last_log_age_s"] == last["age_s"]
    release.set()
    thread.join(DEADLINE)


def test_kept_lines_are_redacted_bounded_and_only_the_runs_own(
    caplog: pytest.LogCaptureFixture, agent: Any
) -> None:
    caplog.set_level(logging.INFO)
    logging.getLogger("quiet").setLevel(logging.WARNING)
    inside, release = threading.Event(), threading.Event()

    @otel_jobs.job(name="logs.secrets", heartbeat_timeout=0.5)
    def job() -> None:
        log.info("GET https://bot:s3cret-pw@api.example.com/v1/items?token=tok-123 failed")
        log.warning("x" * 5000)
        logging.getLogger("quiet").info("below its logger's level: never logged, never kept")
        inside.set()
        release.wait()

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    assert inside.wait(DEADLINE)
    log.info("logged by the test's thread, outside any run")
    run = run_named(agent, "logs.secrets")
    wait_for("the verdict", lambda: run.diagnosis)
    lines = run.diagnosis.last_logs
    assert [line["level"] for line in lines] == ["INFO", "WARNING"]
    assert lines[0]["message"] == "GET https://api.example.com/v1/items?*** failed"
    assert len(lines[1]["message"]) == logtail.MAX_MESSAGE_CHARS
    rendered = run.diagnosis.message(run)
    assert "s3cret-pw" not in rendered and "tok-123" not in rendered
    assert "outside any run" not in rendered
    release.set()
    thread.join(DEADLINE)
    assert not agent.runs()


def test_logging_of_an_application_stays_as_it_was() -> None:
    """No handler is added: Python's last resort still prints an unconfigured application's
    warnings, a later basicConfig() still applies, and uninstrument() puts the factory back."""
    script = textwrap.dedent(
        """
        import logging
        import otel_jobs

        before = logging.getLogRecordFactory()
        otel_jobs.instrument(prometheus=False)
        logging.getLogger("app").warning("the last resort still prints this")
        logging.basicConfig(level=logging.INFO, format="configured: %(message)s")
        logging.getLogger("app").info("basicConfig applied")
        otel_jobs.uninstrument()
        assert logging.getLogRecordFactory() is before, "factory not restored"
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=DEADLINE
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert "the last resort still prints this" in done.stderr
    assert "configured: basicConfig applied" in done.stderr

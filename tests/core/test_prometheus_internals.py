"""prometheus-client's private names that otel-jobs reads, against the installed version.

Each test names what it reads: a release that renames one fails here, by name
(otel_jobs/core/_prometheus_internals.py), instead of a ``/metrics`` that quietly becomes slow.
The installed version must be inside the bound ``pyproject.toml`` declares.
"""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import values as prom_values
from prometheus_client.exposition import choose_encoder

from otel_jobs.core import _prometheus_internals as internals
from otel_jobs.core import errors
from otel_jobs.core.textformat import TextWriter
from tests.support import Samples

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_installed_version_is_inside_the_declared_bound() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (declared,) = [Requirement(d) for d in dependencies if d.startswith("prometheus-client")]
    assert declared == Requirement(internals.SUPPORTED)
    assert declared.specifier.contains(version("prometheus-client"), prereleases=True), (
        f"prometheus-client {version('prometheus-client')} is outside {declared}: check "
        "otel_jobs/core/_prometheus_internals.py against it, then move the bound"
    )


def test_every_read_works_on_the_installed_version() -> None:
    internals.verify()  # raises IncompatibleVersion naming what changed
    assert internals.values_in_process()


def test_each_private_name_read() -> None:
    registry = CollectorRegistry(auto_describe=False)
    runs = Counter("runs", "Runs.", ["job_name"], registry=registry)
    took = Histogram("took_seconds", "Took.", ["job_name"], buckets=(1, 10), registry=registry)
    plain = Counter("plain", "No labels.", registry=registry)
    runs.labels("a").inc(3)
    took.labels("a").observe(5)
    took.labels("a").observe(50)
    assert internals.collectors(registry) == [runs, took, plain]  # _collector_to_names
    assert [internals.labelled_kind(c) for c in (runs, took, plain)] == [
        "counter",
        "histogram",
        None,
    ]
    assert internals.family(runs) == ("runs", "Runs.", ("job_name",))
    assert internals.family(took) == ("took_seconds", "Took.", ("job_name",))
    ((values, counted),) = internals.label_children(runs)  # _lock, _metrics
    assert values == ("a",) and internals.counter_value(counted) == 3.0  # _value._value
    ((_, timed),) = internals.label_children(took)
    assert internals.histogram_values(timed) == (55.0, 0.0, 1.0, 1.0)  # _sum, _buckets
    assert internals.histogram_bounds(timed) == [1.0, 10.0, float("inf")]  # _upper_bounds


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", "text"),
        ("text/plain; version=0.0.4", "text"),
        ("application/openmetrics-text; version=1.0.0", "openmetrics"),
        ("application/openmetrics-text; version=1.0.0; escaping=dots", None),
    ],
)
def test_what_choose_encoder_returns_is_recognised(accept: str, expected: str | None) -> None:
    encoder, _content_type = choose_encoder(accept)
    assert internals.encoder_format(encoder) == expected


class _ValueKeptElsewhere(prom_values.MutexValue):
    """A value class whose float is not in ``_value``: what a future release might ship."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kept = self.__dict__.pop("_value")

    def inc(self, amount: float) -> None:
        with self._lock:
            self._kept += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        with self._lock:
            self._kept = value

    def get(self) -> float:
        with self._lock:
            return self._kept


@pytest.mark.internal_errors("prometheus_client")
def test_an_incompatible_version_is_refused_once_and_the_endpoint_still_serves(
    instrumented: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prom_values, "MutexValue", _ValueKeptElsewhere)
    monkeypatch.setattr(prom_values, "ValueClass", _ValueKeptElsewhere)
    with pytest.raises(internals.IncompatibleVersion) as refused:
        internals.verify()
    message = str(refused.value)
    assert f"prometheus-client {version('prometheus-client')} is not supported" in message
    assert "'_value'" in message and internals.SUPPORTED in message

    monkeypatch.setattr(internals, "_verified", None)  # asked again, as in a new process
    before = errors.counts().get("prometheus_client", 0)
    agent = instrumented(frameworks=[], outbound=[], watchdog=False)
    agent.start_run("reports.nightly").finish("success")
    writer = agent.text_writer
    assert isinstance(writer, TextWriter)
    with urllib.request.urlopen(agent.server.url, timeout=30) as response:
        served = Samples(response.read().decode())
    with urllib.request.urlopen(agent.server.url, timeout=30) as response:
        response.read()
    assert served.value("otel_jobs_runs_started_total", job_name="reports.nightly") == 1
    assert writer.written == 0  # prometheus-client wrote both scrapes
    assert errors.counts().get("prometheus_client", 0) == before + 1  # counted once

"""A fast writer of the Prometheus text format (0.0.4) for otel-jobs' own families.

``/metrics`` is scraped every few seconds, and a worker that has run a thousand different jobs
exposes about 38,000 samples. prometheus-client builds a ``Sample`` per value, then escapes
and formats every label of every sample at every scrape (about 10 us per sample here:
``bench/bench_scrape.py``). This writer produces the same text from the same values:

* label strings (``job_name="...",queue="..."``, escaped) are built once per label child and
  kept, and the ``le`` strings of the histogram buckets once per histogram;
* values are read from prometheus-client's label children as they stand (the same reads its
  own ``collect()`` makes, without building samples);
* the in-flight gauges come from :meth:`Telemetry.inflight`, as they do for the collector.

Only otel-jobs' own families are written this way; any other collector of the registry (the
process collector) is written by prometheus-client's ``generate_latest``. Creation timestamps
(``_created``) are left out, as the endpoint has always left them out.

The writer is used only for the plain text format, when no forked child has left metrics (the
merge of children's snapshots goes through prometheus-client). It relies on prometheus-client's
private fields (``_metrics``, ``_value``, ``_buckets``, ``_sum``): if one is missing (another
version of prometheus-client, or its multiprocess mode), :meth:`TextWriter.render` records the
error under ``textformat`` and returns ``None``, and the endpoint serves prometheus-client's
output instead, as it did before.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import values as _pc_values
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.utils import floatToGoString

from . import errors
from .telemetry import _GAUGES, _InflightCollector

if TYPE_CHECKING:
    from .telemetry import Telemetry

_COUNTED = ("counter", "histogram", "summary")

# Most values written are small whole counts: their text is looked up, not formatted.
_SMALL: dict[float, str] = {float(i): floatToGoString(i) for i in range(1024)}


def _fmt(value: float) -> str:
    text = _SMALL.get(value)
    if text is None:
        return floatToGoString(value)
    return text


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(names: Any, values: Any) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in zip(names, values, strict=True))


def _header(name: str, help_text: str, kind: str) -> str:
    help_text = help_text.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"


class _WithoutCreated:
    """A collector's families minus their creation timestamps, as the endpoint serves them."""

    def __init__(self, collector: Any) -> None:
        self._collector = collector

    def collect(self) -> Iterator[Metric]:
        for family in self._collector.collect():
            if family.type in _COUNTED:
                family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class TextWriter:
    """Writes one :class:`Telemetry` registry as text; keeps its label strings between scrapes."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry
        # (metric name, label values) -> escaped label string. Bounded like the label children
        # themselves: every label value otel-jobs records is capped (telemetry.LabelCap).
        self._label_text: dict[tuple[str, tuple[str, ...]], str] = {}
        self._gauge_text: dict[tuple[tuple[str, str], ...], str] = {}
        self._le_text: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self.written = 0
        """Scrapes written by this writer (the others were served by prometheus-client)."""

    def render(self) -> bytes | None:
        """The registry in the text format, or ``None`` if it cannot be written this way."""
        if _pc_values.ValueClass is not _pc_values.MutexValue:
            return None  # prometheus-client's multiprocess mode: values live in mmap files
        try:
            with self._lock:
                text = self._render()
                self.written += 1
            return text.encode("utf-8")
        except Exception as exc:
            errors.record("textformat", exc)
            return None

    def _render(self) -> str:
        registry = self._telemetry.registry
        with registry._lock:
            collectors = list(registry._collector_to_names)
        out: list[str] = []
        for collector in collectors:
            if isinstance(collector, _InflightCollector):
                self._inflight(collector, out)
            elif isinstance(collector, MetricWrapperBase) and collector._labelnames:
                if collector._type == "counter":
                    self._counter(collector, out)
                elif collector._type == "histogram":
                    self._histogram(collector, out)
                else:
                    out.append(generate_latest(_WithoutCreated(collector)).decode("utf-8"))
            else:
                out.append(generate_latest(_WithoutCreated(collector)).decode("utf-8"))
        return "".join(out)

    def _children(self, metric: Any) -> list[tuple[str, Any]]:
        """``(label string, child)`` for every label child of ``metric``."""
        name, labelnames = metric._name, metric._labelnames
        with metric._lock:
            items = list(metric._metrics.items())
        cache = self._label_text
        children = []
        for values, child in items:
            key = (name, values)
            text = cache.get(key)
            if text is None:
                text = cache[key] = _labels(labelnames, values)
            children.append((text, child))
        return children

    def _counter(self, metric: Any, out: list[str]) -> None:
        name = metric._name + "_total"
        out.append(_header(name, metric._documentation, "counter"))
        out.extend(
            f"{name}{{{labels}}} {_fmt(child._value._value)}\n"
            for labels, child in self._children(metric)
        )

    def _histogram(self, metric: Any, out: list[str]) -> None:
        name = metric._name
        out.append(_header(name, metric._documentation, "histogram"))
        bucket, count, total = f"{name}_bucket{{", f"{name}_count{{", f"{name}_sum{{"
        for labels, child in self._children(metric):
            bounds = child._upper_bounds
            les = self._le_text.get(name)
            if les is None or len(les) != len(bounds):
                les = self._le_text[name] = [f',le="{floatToGoString(b)}"}} ' for b in bounds]
            acc = 0.0
            for le, value in zip(les, child._buckets, strict=True):
                acc += value._value
                out.append(f"{bucket}{labels}{le}{_fmt(acc)}\n")
            out.append(f"{count}{labels}}} {_fmt(acc)}\n")
            out.append(f"{total}{labels}}} {_fmt(child._sum._value)}\n")

    def _inflight(self, collector: Any, out: list[str]) -> None:
        # The same families, in the same order, as _InflightCollector.collect(); the gauges are
        # written here from the same derivation, the two small families by prometheus-client.
        try:
            inflight = self._telemetry.inflight()
        except Exception as exc:
            errors.record("collect", exc)
            inflight = {}
        cache = self._gauge_text
        for name, help_text, key in _GAUGES:
            out.append(_header(name, help_text, "gauge"))
            for labels, value in inflight.get(key, []):
                items = tuple(labels.items())
                text = cache.get(items)
                if text is None:
                    pairs = sorted(items)
                    text = "{" + _labels([k for k, _ in pairs], [v for _, v in pairs]) + "}"
                    cache[items] = text = text if pairs else ""
                out.append(f"{name}{text} {_fmt(value)}\n")
        out.append(generate_latest(_Families(collector)).decode("utf-8"))


class _Families:
    """The families of the in-flight collector that are not derived from the runs."""

    def __init__(self, collector: _InflightCollector) -> None:
        self._collector = collector

    def collect(self) -> Iterator[Metric]:
        return self._collector.other_families()

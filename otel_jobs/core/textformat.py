"""A fast writer of ``/metrics`` (text format and OpenMetrics) for otel-jobs' own families.

``/metrics`` is scraped every few seconds, and a worker that has run a thousand different jobs
exposes about 38,000 samples. prometheus-client builds a ``Sample`` per value, then escapes
and formats every label of every sample at every scrape (about 10 us per sample here:
``bench/bench_scrape.py``). This writer produces the same exposition from the same values:

* label strings (``job_name="...",queue="..."``, escaped) are built once per label child and
  kept, and the ``le`` strings of the histogram buckets once per histogram;
* values are read from prometheus-client's label children as they stand (the same reads its
  own ``collect()`` makes, without building samples);
* the in-flight gauges come from :meth:`Telemetry.inflight`, as they do for the collector;
* the lines of a histogram child are kept and written again while its values have not changed
  since the previous scrape. What is kept is about the size of the histogram lines of one
  scrape (2.7 MB for 1,000 jobs, each with one duration histogram), held by the endpoint's writer.

Only otel-jobs' own families are written this way; any other collector of the registry (the
process collector) and the two small families of the in-flight collector (configuration
findings, internal errors) are written by prometheus-client's own encoder. Creation timestamps
(``_created``) are left out, as the endpoint has always left them out.

Which format: the one prometheus-client's ``choose_encoder`` picks for the request's ``Accept``
header, if it is the text format (0.0.4 or 1.0.0) or OpenMetrics 1.0.0 (what Prometheus asks
for first), with an escaping scheme that leaves legacy names as they are. Anything else
(OpenMetrics 2.0.0, ``escaping=dots``) is served by prometheus-client, as are ``name[]``
filters and the merge with forked children's snapshots (:mod:`otel_jobs.core.multiprocess`).

The writer reads prometheus-client's label children through
:mod:`otel_jobs.core._prometheus_internals` only (the one place that knows its private
fields). With a prometheus-client those reads do not fit (checked once per process), or should
one fail anyway (counted under ``textformat``), :meth:`TextWriter.render` returns ``None`` and
the endpoint serves prometheus-client's output instead. In prometheus-client's own multiprocess
mode (``PROMETHEUS_MULTIPROC_DIR``) it is not used at all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.utils import floatToGoString

from . import _prometheus_internals as _pc
from . import errors
from .inflight import GAUGES, InflightCollector
from .labels import clean as clean_label

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
    # Once per label child (the text is kept): a value that did not come through a cap
    # (core.labels) is made writable here, so that one bad value never fails a scrape.
    return ",".join(f'{k}="{_escape(clean_label(v))}"' for k, v in zip(names, values, strict=True))


Encoder = Callable[[Any], bytes]


def format_of(encoder: Encoder) -> str | None:
    """``"text"`` or ``"openmetrics"`` for the encoders this writer can stand in for, else None.

    ``encoder`` is what prometheus-client's ``choose_encoder`` picked for the request.
    """
    return _pc.encoder_format(encoder)


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
        # (histogram, label string) -> (sum and bucket values, the lines written from them)
        self._blocks: dict[tuple[str, str], tuple[tuple[float, ...], str]] = {}
        self._lock = threading.Lock()
        self.written = 0
        self._openmetrics = False
        """Scrapes written by this writer (the others were served by prometheus-client)."""

    def render(self, encoder: Encoder = generate_latest) -> bytes | None:
        """What ``encoder`` would make of the registry, or ``None`` if it is not written here.

        ``encoder``: prometheus-client's ``generate_latest`` (text format 0.0.4), or what its
        ``choose_encoder`` returns for the request (text 1.0.0, OpenMetrics 1.0.0).
        """
        if not _pc.direct_reads():
            return None  # its multiprocess mode (values in mmap files), or fields it lacks
        fmt = format_of(encoder)
        if fmt is None:
            return None
        try:
            with self._lock:
                text = self._render(encoder, fmt == "openmetrics")
                self.written += 1
            # "replace": the label values are clean (core.labels); should anything else hold a
            # lone surrogate, it is written as "?" rather than failing the whole scrape.
            return text.encode("utf-8", "replace")
        except Exception as exc:
            errors.record("textformat", exc)
            return None

    def _render(self, encoder: Encoder, openmetrics: bool) -> str:
        registry = self._telemetry.registry
        collectors = _pc.collectors(registry)
        self._openmetrics = openmetrics
        out: list[str] = []

        def by_prometheus_client(collector: Any) -> None:
            # One collector that cannot be written (a value prometheus-client cannot encode)
            # is left out of this scrape, counted; the other families are still served.
            try:
                text = encoder(collector).decode("utf-8")
            except Exception as exc:
                errors.record("textformat.collector", exc)
                return
            out.append(text.removesuffix("# EOF\n") if openmetrics else text)

        for collector in collectors:
            if isinstance(collector, InflightCollector):
                self._inflight(collector, out)
                by_prometheus_client(_Families(collector))
            else:
                kind = _pc.labelled_kind(collector)
                if kind == "counter":
                    self._counter(collector, out)
                elif kind == "histogram":
                    self._histogram(collector, out)
                else:
                    by_prometheus_client(_WithoutCreated(collector))
        if openmetrics:
            out.append("# EOF\n")
        return "".join(out)

    def _header(self, name: str, help_text: str, kind: str) -> str:
        help_text = help_text.replace("\\", r"\\").replace("\n", r"\n")
        if self._openmetrics:
            help_text = help_text.replace('"', r"\"")
        return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"

    def _children(self, metric: Any) -> list[tuple[str, Any]]:
        """``(label string, child)`` for every label child of ``metric``."""
        name, _, labelnames = _pc.family(metric)
        items = _pc.label_children(metric)
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
        # The text format names the family after its samples; OpenMetrics without the suffix.
        family, help_text, _ = _pc.family(metric)
        name = family + "_total"
        out.append(self._header(family if self._openmetrics else name, help_text, "counter"))
        value = _pc.counter_value
        out.extend(
            f"{name}{{{labels}}} {_fmt(value(child))}\n" for labels, child in self._children(metric)
        )

    def _histogram(self, metric: Any, out: list[str]) -> None:
        name, help_text, _ = _pc.family(metric)
        out.append(self._header(name, help_text, "histogram"))
        bucket, count, total = f"{name}_bucket{{", f"{name}_count{{", f"{name}_sum{{"
        blocks = self._blocks
        for labels, child in self._children(metric):
            # Most jobs have not run since the last scrape: their lines are the same as then.
            # The block is reused only when every bucket and the sum read the same values.
            values = _pc.histogram_values(child)
            key = (name, labels)
            kept = blocks.get(key)
            if kept is not None and kept[0] == values:
                out.append(kept[1])
                continue
            bounds = _pc.histogram_bounds(child)
            les = self._le_text.get(name)
            if les is None or len(les) != len(bounds):
                les = self._le_text[name] = [f',le="{floatToGoString(b)}"}} ' for b in bounds]
            lines = []
            acc = 0.0
            for le, value in zip(les, values[1:], strict=True):
                acc += value
                lines.append(f"{bucket}{labels}{le}{_SMALL.get(acc) or _fmt(acc)}\n")
            lines.append(f"{count}{labels}}} {_fmt(acc)}\n")
            lines.append(f"{total}{labels}}} {_fmt(values[0])}\n")
            block = "".join(lines)
            blocks[key] = (values, block)
            out.append(block)

    def _inflight(self, collector: Any, out: list[str]) -> None:
        # The same gauges, in the same order, as InflightCollector.collect(), from the same
        # derivation; its other two small families are written by prometheus-client (_render).
        try:
            inflight = self._telemetry.inflight()
        except Exception as exc:
            errors.record("collect", exc)
            inflight = {}
        cache = self._gauge_text
        for name, help_text, key in GAUGES:
            out.append(self._header(name, help_text, "gauge"))
            for labels, value in inflight.get(key, []):
                items = tuple(labels.items())
                text = cache.get(items)
                if text is None:
                    pairs = sorted(items)
                    text = "{" + _labels([k for k, _ in pairs], [v for _, v in pairs]) + "}"
                    cache[items] = text = text if pairs else ""
                out.append(f"{name}{text} {_fmt(value)}\n")


class _Families:
    """The families of the in-flight collector that are not derived from the runs."""

    def __init__(self, collector: InflightCollector) -> None:
        self._collector = collector

    def collect(self) -> Iterator[Metric]:
        return self._collector.other_families()

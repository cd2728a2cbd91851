"""Every private name of prometheus-client that otel-jobs reads, in one place.

Two hot paths read prometheus-client's label children directly instead of building its
``Sample`` tuples: the ``/metrics`` writer (:mod:`otel_jobs.core.textformat`) and a forked
child's snapshot (:mod:`otel_jobs.core.multiprocess`). What they read is here and nowhere else,
for the version range ``pyproject.toml`` declares (``prometheus-client>=0.20,<1``), and
``tests/core/test_prometheus_internals.py`` checks it against the installed version: a release
that renames one of them fails that test by name.

At run time :func:`verify` is asked once per process (:func:`direct_reads`): a
prometheus-client without these names is counted once under ``prometheus_client`` (and logged
once), and both paths then serve what prometheus-client's own ``collect()`` builds, slower but
complete. Nothing here may raise into a job.

The names read:

* ``CollectorRegistry._lock`` / ``._collector_to_names``: the registered collectors;
* ``MetricWrapperBase._type`` / ``._name`` / ``._documentation`` / ``._labelnames`` /
  ``._lock`` / ``._metrics``: a labelled metric and its label children;
* a counter child's ``_value._value``; a histogram child's ``_sum._value``,
  ``_buckets[i]._value`` and ``_upper_bounds``;
* ``values.ValueClass`` / ``values.MutexValue``: values held in this process (not in
  prometheus-client's own multiprocess mode); a run's counters and duration are recorded
  through the same children's values (``MutexValue.inc``: :func:`counter_inc`,
  :func:`histogram_observe`), without prometheus-client's checks per call;
* what ``exposition.choose_encoder`` returns: ``generate_latest`` itself, or (0.23 and later) a
  ``functools.partial`` of it with ``escaping`` and ``version`` keywords, the escaping schemes
  being ``openmetrics.exposition.UNDERSCORES`` / ``VALUES`` / ``ALLOWUTF8``.
"""

from __future__ import annotations

import functools
import threading
from bisect import bisect_left
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import values as _values
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.openmetrics import exposition as _om

from . import errors

#: The range of prometheus-client these reads are checked for (pyproject.toml says the same).
SUPPORTED = "prometheus-client>=0.20,<1"


class IncompatibleVersion(RuntimeError):
    """prometheus-client no longer has a name read here: the direct reads are not used."""


def values_in_process() -> bool:
    """Whether metric values live in this process (not in prometheus-client's mmap files)."""
    return _values.ValueClass is _values.MutexValue


def collectors(registry: CollectorRegistry) -> list[Any]:
    """The collectors registered with ``registry``, in registration order."""
    with registry._lock:
        return list(registry._collector_to_names)


def labelled_kind(collector: Any) -> str | None:
    """``"counter"``, ``"histogram"``... for a metric with labels; None for anything else."""
    if isinstance(collector, MetricWrapperBase) and collector._labelnames:
        return str(collector._type)
    return None


def family(metric: Any) -> tuple[str, str, tuple[str, ...]]:
    """``(name, help, label names)`` of a labelled metric (a counter's name without _total)."""
    return metric._name, metric._documentation, metric._labelnames


def label_children(metric: Any) -> list[tuple[tuple[str, ...], Any]]:
    """``(label values, child)`` for every label child of ``metric`` now."""
    with metric._lock:
        return list(metric._metrics.items())


#: A counter child's value (one C-level attribute read per sample: the writer's hot loop).
counter_value: Callable[[Any], float] = attrgetter("_value._value")


def histogram_values(child: Any) -> tuple[float, ...]:
    """A histogram child's ``(sum, count of bucket 1, count of bucket 2, ...)``, not cumulative."""
    return (child._sum._value, *[b._value for b in child._buckets])


def counter_inc(child: Any) -> Callable[[float], None]:
    """What increments a counter child by a non-negative amount: its value's own ``inc`` when
    the direct reads hold (the same lock and addition as ``child.inc``, minus its checks)."""
    return child._value.inc if direct_reads() else child.inc


def histogram_observe(child: Any) -> Callable[[float], None]:
    """What observes an amount into a histogram child, as ``child.observe`` does (the sum, then
    the first bucket whose bound is at least the amount; none for NaN), without its checks and
    its loop over the buckets when the direct reads hold."""
    if not direct_reads():
        return child.observe
    bounds = list(child._upper_bounds)
    incs = [bucket.inc for bucket in child._buckets]
    add_to_sum = child._sum.inc
    last = len(bounds)

    def observe(amount: float) -> None:
        add_to_sum(amount)
        i = bisect_left(bounds, amount)
        if i < last and amount <= bounds[i]:
            incs[i](1)

    return observe


def histogram_bounds(child: Any) -> list[float]:
    """The upper bounds of a histogram child's buckets (``+Inf`` last)."""
    return list(child._upper_bounds)


# Escaping schemes that leave legacy metric and label names as they are (0.23 and later).
_PLAIN_NAMES = tuple(
    getattr(_om, scheme)
    for scheme in ("UNDERSCORES", "VALUES", "ALLOWUTF8")
    if hasattr(_om, scheme)
)


def encoder_format(encoder: Any) -> str | None:
    """``"text"`` or ``"openmetrics"`` for what ``choose_encoder`` picked, if otel-jobs' writer
    produces the same bytes (text 0.0.4 / 1.0.0, OpenMetrics 1.0.0, names left as they are);
    None for anything else (OpenMetrics 2.0.0, ``escaping=dots``...)."""
    if encoder is generate_latest:
        return "text"
    if encoder is _om.generate_latest:
        return "openmetrics"  # before 0.23: no escaping, version 1.0.0
    if isinstance(encoder, functools.partial) and not encoder.args:
        options = encoder.keywords
        if _PLAIN_NAMES and options.get("escaping", _PLAIN_NAMES[0]) not in _PLAIN_NAMES:
            return None
        if encoder.func is generate_latest and set(options) <= {"escaping"}:
            return "text"
        if encoder.func is _om.generate_latest and set(options) <= {"escaping", "version"}:
            if str(options.get("version", "1.0.0")).split(".")[0] in ("0", "1"):
                return "openmetrics"
    return None


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("prometheus-client")
    except PackageNotFoundError:
        return "unknown"


def verify() -> None:
    """Raise :class:`IncompatibleVersion` unless every read above works on the installed
    prometheus-client, checked on a registry of its own with a counter and a histogram."""
    try:
        registry = CollectorRegistry(auto_describe=False)
        counter = Counter("probe", "probe", ["a"], registry=registry)
        histogram = Histogram("probe_seconds", "probe", ["a"], buckets=(1.0,), registry=registry)
        counter.labels("x").inc(2)
        histogram.labels("x").observe(0.5)
        problem = None
        if collectors(registry) != [counter, histogram]:
            problem = "CollectorRegistry._collector_to_names does not list its collectors"
        elif (labelled_kind(counter), labelled_kind(histogram)) != ("counter", "histogram"):
            problem = "MetricWrapperBase._type / _labelnames changed"
        elif family(counter) != ("probe", "probe", ("a",)):
            problem = "MetricWrapperBase._name / _documentation / _labelnames changed"
        else:
            ((values, child),) = label_children(counter)
            ((_, bucketed),) = label_children(histogram)
            if values != ("x",) or counter_value(child) != 2.0:
                problem = "a counter child's _value._value changed"
            elif histogram_values(bucketed) != (0.5, 1.0, 0.0):
                problem = "a histogram child's _sum / _buckets changed"
            elif histogram_bounds(bucketed) != [1.0, float("inf")]:
                problem = "a histogram child's _upper_bounds changed"
    except Exception as exc:  # a name that is gone raises AttributeError, or worse
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        raise IncompatibleVersion(
            f"prometheus-client {_installed_version()} is not supported by otel-jobs' direct "
            f"reads ({problem}); supported: {SUPPORTED}. /metrics is served by "
            "prometheus-client's own collect() instead (slower)."
        )


_verified: bool | None = None
_verify_lock = threading.Lock()


def direct_reads() -> bool:
    """Whether the direct reads may be used in this process: values in process, and
    :func:`verify` passed (asked once; a failure is counted under ``prometheus_client``)."""
    global _verified
    if _verified is None:
        with _verify_lock:
            if _verified is None:
                try:
                    verify()
                    _verified = True
                except IncompatibleVersion as exc:
                    errors.record("prometheus_client", exc)
                    _verified = False
    return _verified and values_in_process()

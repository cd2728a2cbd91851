"""What a forked child's metrics snapshot holds, and how snapshots are merged.

* :func:`serialise`: a registry's families as a snapshot holds them (labelled counters and
  histograms read directly through :mod:`otel_jobs.core._prometheus_internals`, about 3 times
  cheaper than prometheus-client's samples; on any failure, counted, its ``collect()``);
* :func:`parse`: a snapshot's JSON, refusing integers too long to be a count (a float cannot
  hold ``1`` followed by 400 zeros: merged, it would fail every scrape);
* :func:`checked_snapshot`: a snapshot read back, every field's type checked and label values
  cleaned before any of it is merged (the file is untrusted);
* :func:`merge_into`: families added into a merge: counters and histograms summed, gauges of
  live processes combined per metric (timestamps by minimum, counts by sum, thresholds by
  maximum), creation timestamps left out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString

from . import _prometheus_internals as _pc
from . import errors
from .labels import MAX_LABEL_CHARS, needs_cleaning, utf8
from .labels import clean as clean_label

Family = dict[str, Any]  # {"name", "type", "help", "samples": {(sample, labels): value}}
SampleKey = tuple[str, tuple[tuple[str, str], ...]]

_KINDS = {"counter", "gauge", "histogram", "summary", "gaugehistogram", "unknown", "info",
          "stateset"}  # fmt: skip
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

_MIN_GAUGES = {
    "otel_jobs_oldest_run_start_timestamp_seconds",
    "otel_jobs_stalest_heartbeat_timestamp_seconds",
    "otel_jobs_watchdog_last_tick_timestamp_seconds",
    "process_start_time_seconds",
}
_SUM_GAUGES = {
    "otel_jobs_runs_in_progress",
    "otel_jobs_runs_stalled",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
}


#: Digits of the longest integer a snapshot may hold (a pid, a failure count); its counter and
#: gauge values are floats, which JSON writes with a point or an exponent.
MAX_INT_DIGITS = 18


def _bounded_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS + (text[0] == "-"):
        raise ValueError(f"an integer of {len(text)} characters")
    return int(text)


def parse(data: bytes) -> Any:
    """The JSON of a snapshot; ``ValueError`` for malformed JSON or an integer of more than
    :data:`MAX_INT_DIGITS` digits (no float holds ``10**400``: ``OverflowError`` at every
    scrape once merged)."""
    return json.loads(data, parse_int=_bounded_int)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def checked_snapshot(snapshot: Any, pid: int) -> tuple[float | None, list[dict[str, Any]]]:
    """``(at, families)`` of a child's snapshot, after checking every field's type.

    Raises ``ValueError`` naming the first field that is not what a snapshot holds. Label
    values are cleaned (valid UTF-8, at most 200 characters) in place.
    """
    if not isinstance(snapshot, dict):
        raise ValueError(f"snapshot of {pid}: not an object")
    if snapshot.get("pid", pid) != pid:
        raise ValueError(f"snapshot of {pid}: pid {snapshot.get('pid')!r}")
    at = snapshot.get("at")
    if at is not None and not (_number(at) and math.isfinite(at)):
        raise ValueError(f"snapshot of {pid}: at={at!r}")
    families = snapshot.get("families")
    if not isinstance(families, list):
        raise ValueError(f"snapshot of {pid}: families={type(families).__name__}")
    names_ok: set[str] = set()
    for fam in families:
        if not (
            isinstance(fam, dict)
            and isinstance(fam.get("name"), str)
            and _NAME.match(fam["name"])
            and fam.get("type") in _KINDS
            and isinstance(fam.get("help"), str)
            and isinstance(fam.get("samples"), list)
        ):
            raise ValueError(f"snapshot of {pid}: a family is not name/type/help/samples")
        for sample in fam["samples"]:
            if not (isinstance(sample, list) and len(sample) == 3):
                raise ValueError(f"snapshot of {pid}: a sample of {fam['name']}")
            name, labels, value = sample
            if not _number(value) or not isinstance(labels, dict):
                raise ValueError(f"snapshot of {pid}: a sample of {fam['name']}")
            if name not in names_ok:
                if not (isinstance(name, str) and _NAME.match(name)):
                    raise ValueError(f"snapshot of {pid}: a sample name of {fam['name']}")
                names_ok.add(name)
            for key, label in labels.items():
                if key not in names_ok:
                    if not _LABEL_NAME.match(key):
                        raise ValueError(f"snapshot of {pid}: a label name of {fam['name']}")
                    names_ok.add(key)
                if not isinstance(label, str):
                    raise ValueError(f"snapshot of {pid}: a label value of {fam['name']}")
                if needs_cleaning(label):
                    labels[key] = clean_label(label)
    return (float(at) if at is not None else None), families


def serialise(registry: CollectorRegistry) -> list[dict[str, Any]]:
    """The registry's families as a snapshot holds them (creation timestamps left out).

    Labelled counters and histograms, nearly all of a worker's samples, are read from their
    label children directly: building prometheus-client's samples first costs about 3 times as
    much (a pool child with 50 task names: 9 ms against 2.5 ms). That reads private fields
    (:mod:`otel_jobs.core._prometheus_internals`), as :mod:`otel_jobs.core.textformat` does; if
    one fails, the error is counted (``multiprocess.serialise``) and prometheus-client's
    ``collect()`` is used instead.
    """
    if _pc.direct_reads():
        try:
            return _read_directly(registry)
        except Exception as exc:
            errors.record("multiprocess.serialise", exc)
    return collected(registry)


def _read_directly(registry: CollectorRegistry) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for collector in _pc.collectors(registry):
        kind = _pc.labelled_kind(collector)
        if kind not in ("counter", "histogram"):
            try:
                out.extend(_families_of(collector.collect()))
            except Exception as exc:  # one collector that fails leaves the others in
                errors.record("collect", exc)
            continue
        name, help_text, labelnames = _pc.family(collector)
        children = _pc.label_children(collector)
        samples: list[list[Any]] = []
        if kind == "counter":
            total, value = name + "_total", _pc.counter_value
            for values, child in children:
                samples.append([total, dict(zip(labelnames, values, strict=True)), value(child)])
        else:
            bounds: list[str] | None = None
            bucket, count, total = name + "_bucket", name + "_count", name + "_sum"
            for values, child in children:
                if bounds is None:
                    bounds = [floatToGoString(b) for b in _pc.histogram_bounds(child)]
                labels = dict(zip(labelnames, values, strict=True))
                child_sum, *counts = _pc.histogram_values(child)
                cumulative = 0.0
                for le, counted in zip(bounds, counts, strict=True):
                    cumulative += counted
                    samples.append([bucket, {**labels, "le": le}, cumulative])
                samples.append([count, labels, cumulative])
                samples.append([total, labels, child_sum])
        out.append({"name": name, "type": kind, "help": help_text, "samples": samples})
    return out


def collected(registry: CollectorRegistry) -> list[dict[str, Any]]:
    return list(_families_of(each_collected(registry)))


def _families_of(families: Any) -> Iterator[dict[str, Any]]:
    """Families as a snapshot and the merge hold them. A sample whose value is no number a
    float holds (another collector's ``"abc"``, ``None``, ``10**400``) is left out, counted
    under ``collect``: merged, it would fail every scrape; in a child's snapshot, the snapshot."""
    for family in families:
        counted = family.type in ("counter", "histogram", "summary")
        samples = []
        for s in family.samples:
            if counted and s.name.endswith("_created"):
                continue
            value = s.value
            if value.__class__ is not float:
                try:
                    value = float(value)  # what prometheus-client's encoders do with it
                except (TypeError, ValueError, OverflowError) as exc:
                    errors.record("collect", exc)
                    continue
            samples.append([s.name, s.labels, value])
        yield {
            "name": family.name,
            "type": family.type,
            "help": family.documentation,
            "samples": samples,
        }


def _combine(name: str, sample: str, old: float, new: float, kind: str) -> float:
    if kind in ("counter", "histogram", "summary"):
        if sample.endswith("_created"):
            return min(old, new)
        return old + new
    if name in _MIN_GAUGES:
        return min(old, new)
    if name in _SUM_GAUGES:
        return old + new
    return max(old, new)


def merge_into(
    into: dict[str, Family], families: list[dict[str, Any]], *, counters_only: bool = False
) -> None:
    for fam in families:
        kind = fam["type"]
        if counters_only and kind not in ("counter", "histogram", "summary"):
            continue
        target = into.get(fam["name"])
        if target is None:
            target = into[fam["name"]] = {
                "name": fam["name"],
                "type": kind,
                "help": fam["help"],
                "samples": {},
            }
        samples = target["samples"]
        for sample_name, labels, value in fam["samples"]:
            if sample_name.endswith("_created") and kind in ("counter", "histogram", "summary"):
                continue  # creation timestamps: noise on a worker's endpoint, and wrong once summed
            key: SampleKey = (sample_name, tuple(sorted(labels.items())))
            if key in samples:
                samples[key] = _combine(fam["name"], sample_name, samples[key], value, kind)
            else:
                samples[key] = value


def each_collected(registry: CollectorRegistry) -> Iterator[Metric]:
    """The families of ``registry``, collector by collector: one that raises is left out
    (counted under ``collect``), the others are served."""
    try:
        collectors = _pc.collectors(registry)
    except AttributeError:  # another prometheus-client: all or nothing, as it collects
        yield from registry.collect()
        return
    for collector in collectors:
        try:
            families = list(collector.collect())
        except Exception as exc:
            errors.record("collect", exc)
            continue
        yield from families


def clean_samples(family: Metric) -> None:
    """Clean the label values (and help) of ``family`` that prometheus-client could not write.

    Label values otel-jobs records are cleaned once, as they become labels, and a child's
    snapshot is cleaned as it is read; this is the last guard, on the path prometheus-client
    writes, against one value (from another collector of the registry) failing the scrape.
    """
    family.documentation = utf8(family.documentation)
    samples = family.samples
    for i, sample in enumerate(samples):
        labels = sample.labels
        for value in labels.values():
            # Inline, not any(): this runs for every sample of a scrape on this path.
            if len(value) > MAX_LABEL_CHARS or (not value.isascii() and needs_cleaning(value)):
                samples[i] = sample._replace(labels={k: clean_label(v) for k, v in labels.items()})
                break

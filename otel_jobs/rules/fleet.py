"""Fleet records: each counter read across every worker once per evaluation, windows derived.

What costs Prometheus at fleet scale is selecting every worker's series, more than the samples
in a window: on ``bench/bench_fleet.py``'s 200 simulated workers an instant ``sum`` of the 99,000
duration buckets took 0.7-1.0 s of CPU, their ``rate(...[5m])`` 1.1-1.5 s. So a metric the
records aggregate is read once per evaluation, over :data:`~.promql.FLEET_WINDOW`::

    otel_jobs:runs_finished:increase5m = sum by (job, job_name, queue, outcome) (increase(...[5m]))

and everything else is computed from that record (a few hundred series, not a few hundred
thousand): its rate (``...:rate5m``, what the dashboards' fleet panels read) and the alerts'
longer windows. A window of n x 5m is the sum of the n five-minute increases that ended at t,
t-5m, ... (``offset``), recorded by this and earlier evaluations; beyond :data:`MAX_PIECES`
pieces, whole hours are summed from the one-hour record. A window that is not a multiple of
5 minutes, or too long for both, is read from the raw series as before.

Invariants:

* The records of one metric are in one rule group, the raw read first: a window sums the
  pieces of the same evaluation (no lag between groups), and the groups do not depend on each
  other's order. Each metric has its own group, so that no group reads more than one metric's
  series (Prometheus evaluates groups concurrently).
* Where samples fall on the evaluation grid (promtool's unit tests) a sum of pieces is the raw
  window's increase: consecutive samples belong to exactly one piece, a counter reset is
  corrected in the piece where it happens.
* Off the grid (a real scrape, every s seconds) each piece extrapolates to its own edges, and
  what was counted between the two samples around a piece's edge is in no piece while that edge
  passes (one scrape interval). A steady rate still gives the raw value; otherwise a window of
  n pieces is within (n - 1) x c + 2s/(5m - 2s) of the raw increase, c being the largest
  increase between two scrapes. A window whose pieces sum to 0 takes its largest piece, so that
  "any run in the window" (``> 0``) holds exactly when it does on the raw series.
* A piece needs two samples within its 5 minutes: scrape intervals must be well under 5 m (2 m
  at most), as for the dashboards' rates. Pieces that were never evaluated (Prometheus down,
  the rules just loaded) count as nothing until the window has passed them.

``tests/alerts/test_records.py`` checks the last three with promtool.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace

from .config import RulesConfig
from .promql import FLEET_WINDOW, Record, by, num, sel

#: Pieces summed at most for one window: 24 x 5m, or 24 x 1h above two hours.
MAX_PIECES = 24
HOUR = "1h"

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def seconds(window: str) -> float:
    """A Prometheus duration (``1h30m``) in seconds."""
    return sum(float(n) * _UNITS[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", window))


def base_name(metric: str) -> str:
    """``otel_jobs_runs_finished_total`` -> ``otel_jobs:runs_finished`` (the records' prefix)."""
    return "otel_jobs:" + metric.removeprefix("otel_jobs_").removesuffix("_total")


def increase_record(metric: str, window: str) -> str:
    """The name of ``metric``'s increase over ``window`` summed across workers."""
    return f"{base_name(metric)}:increase{window}"


def _pieces(record: str, piece: str, count: int, labels: str) -> str:
    """The sum of ``count`` consecutive values of ``record`` (one ``piece`` apart), ending now.

    ``or`` keeps every piece (each gets its own ``piece`` label), so a job present in some
    pieces only (new, or gone) is summed over those, as ``increase()`` sums what it finds.
    """
    size = seconds(piece)
    terms = [record]
    for k in range(1, count):
        at = _duration(size * k)
        terms.append(f'label_replace({record} offset {at}, "piece", "{at}", "", "")')
    if count == 1:
        return f"sum by ({labels}) ({record})"
    return f"sum by ({labels}) (\n  " + "\n  or ".join(terms) + "\n)"


def _ref(record: str, shard: str) -> str:
    """``record``'s series of ``shard``, if it is written in shares."""
    return f'{record}{{shard="{shard}"}}' if shard else record


def _duration(total: float) -> str:
    """Seconds as the shortest Prometheus duration (``3600`` -> ``1h``, ``900`` -> ``15m``)."""
    for unit in ("d", "h", "m", "s"):
        if total % _UNITS[unit] == 0:
            return f"{int(total // _UNITS[unit])}{unit}"
    return f"{int(total * 1000)}ms"


def windowed(
    s: RulesConfig,
    metric: str,
    extra: tuple[str, ...],
    group: str,
    *,
    rates: Iterable[str] = (),
    increases: Iterable[str] = (),
    shards: tuple[str, ...] = (),
) -> list[Record]:
    """The records of ``metric`` summed across workers by ``--group-by`` and ``extra``.

    Always ``<base>:increase5m`` (the one read of the workers' series) and ``<base>:rate5m``;
    then ``<base>:increase<w>`` for each of ``increases`` and ``<base>:rate<w>`` for each of
    ``rates``, derived from the first as the module says. Records in dependency order.

    ``shards``: label matchers that split the series into disjoint sets covering them all, each
    read and summed in a group of its own (``<group>.1``, ...): the same records, each group
    writing its share of their series (labelled ``shard="1"``, ...), so that no group reads them
    all.
    """
    if not shards:
        return _records(s, metric, by(s, *extra), group, "", "", rates, increases)
    out = []
    for k, matcher in enumerate(shards, 1):
        shard = str(k)
        found = _records(s, metric, by(s, *extra), f"{group}.{k}", matcher, shard, rates, increases)
        out += [replace(r, labels={"shard": shard}) for r in found]
    return out


def _records(
    s: RulesConfig,
    metric: str,
    labels: str,
    group: str,
    matcher: str,
    shard: str,
    rates: Iterable[str],
    increases: Iterable[str],
) -> list[Record]:
    """The records of one group: ``matcher`` selects its workers' series, ``shard`` its share of
    the records (both empty: all of them)."""

    def ref(name: str) -> str:
        return _ref(name, shard)

    fleet = increase_record(metric, FLEET_WINDOW)
    out = [
        Record(
            fleet,
            f"sum by ({labels}) (increase({sel(s, metric, matcher)}[{FLEET_WINDOW}]))",
            group,
        ),
        Record(
            f"{base_name(metric)}:rate{FLEET_WINDOW}",
            f"{ref(fleet)} / {num(seconds(FLEET_WINDOW))}",
            group,
        ),
    ]
    wanted = [(w, "increase") for w in increases] + [(w, "rate") for w in rates]
    # Shorter windows first (an hour's record before the windows summed from it), increases
    # before rates (a rate divides the increase of its window when there is one).
    wanted = sorted(dict.fromkeys(wanted), key=lambda item: (seconds(item[0]), item[1]))
    done = {r.record for r in out}
    for window, kind in wanted:
        name = f"{base_name(metric)}:{kind}{window}"
        if name in done:
            continue
        if kind == "rate" and increase_record(metric, window) in done:
            expr = ref(increase_record(metric, window))
        else:
            expr = _window(s, metric, window, labels, group, (matcher, shard), out, done)
        if kind == "rate":
            expr = f"{expr} / {num(seconds(window))}"
        elif "offset" in expr:
            # A run counted between the two samples around a piece's edge is in no piece while
            # that edge passes it (one scrape interval): where the sum is 0, the largest piece
            # of the window, so that "any run in the window" holds as on the raw series.
            rest = _duration(seconds(window) - seconds(FLEET_WINDOW))
            expr = f"{expr} > 0\nor\nmax_over_time({ref(fleet)}[{rest}])"
        out.append(Record(name, expr, group))
        done.add(name)
    return out


def _window(
    s: RulesConfig,
    metric: str,
    window: str,
    labels: str,
    group: str,
    share: tuple[str, str],
    out: list[Record],
    done: set[str],
) -> str:
    """The increase of ``metric`` over ``window`` summed by ``labels``: from the records when
    it can be (appending the hour's record to ``out`` for a window summed from it), else read."""
    matcher, shard = share
    fleet = _ref(increase_record(metric, FLEET_WINDOW), shard)
    total, piece, hour = seconds(window), seconds(FLEET_WINDOW), seconds(HOUR)
    if total % piece == 0 and total // piece <= MAX_PIECES:
        return _pieces(fleet, FLEET_WINDOW, int(total // piece), labels)
    if total % hour == 0 and total // hour <= MAX_PIECES:
        record = increase_record(metric, HOUR)
        if record not in done:
            out.append(
                Record(record, _pieces(fleet, FLEET_WINDOW, int(hour // piece), labels), group)
            )
            done.add(record)
        return _pieces(_ref(record, shard), HOUR, int(total // hour), labels)
    return f"sum by ({labels}) (increase({sel(s, metric, matcher)}[{window}]))"

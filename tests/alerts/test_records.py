"""The recording rules: checked by promtool, and the alerts moved onto them fire as before.

"As before": the alerts rendered on the records (the default) and on every worker's raw series
(``--recording-rules off``, what the alerts were) are recorded side by side on the inputs of
``alerts/tests/jobs.yml``, ``trends.yml`` and ``queues.yml``, and at every evaluation of those
tests promtool finds the same label sets, with the same values, meeting each alert's condition.
The ``for`` of an alert only depends on that condition, so both fire in the same cases.

The records' long windows are sums of 5-minute increases (``otel_jobs.rules.fleet``): exact
where samples fall on the evaluation grid, as in those tests. Off the grid (a real scrape), the
bound the fleet module states is checked on counters scraped every 45 s.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from otel_jobs import rules
from otel_jobs.rules.promql import Record

from .test_rules import ALERTS, promtool

JOB_ALERT_TESTS = ("jobs.yml", "trends.yml", "queues.yml")
BY = "job, job_name, queue"


def _seconds(text: str) -> int:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    total, number = 0.0, ""
    i = 0
    while i < len(text):
        if text[i].isdigit():
            number += text[i]
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else text[i]
        total += int(number) * units[unit]
        number, i = "", i + len(unit)
    return int(total)


def _duration(seconds: int) -> str:
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def _compare_rules(config: rules.RulesConfig) -> dict[str, Any]:
    """A rule file recording each job-level alert's condition on records and on raw series."""
    on_records = {a.name: a.expr for g in rules.alerts(config).values() for a in g}
    raw = dataclasses.replace(config, recording_rules=False)
    on_raw = {a.name: a.expr for g in rules.alerts(raw).values() for a in g}
    moved = [name for name in on_records if on_records[name] != on_raw[name]]
    assert moved, "no alert reads the records"
    items = []
    for name in moved:
        items.append({"record": f"records_{name}", "expr": on_records[name]})
        items.append({"record": f"raw_{name}", "expr": on_raw[name]})
    return {"groups": [{"name": "compare", "rules": items}], "moved": moved}


def _differences(name: str) -> str:
    r, w = f"records_{name}", f"raw_{name}"
    return (
        f"({w} unless on ({BY}) {r}) or ({r} unless on ({BY}) {w})"
        f" or (abs({w} - on ({BY}) {r}) > 1e-9 * abs({w}))"
    )


def _write_comparison(
    tmp_path: Path,
    records_text: str,
    sources: tuple[str, ...] = JOB_ALERT_TESTS,
    config: rules.RulesConfig | None = None,
) -> list[Path]:
    compare = _compare_rules(config or rules.RulesConfig())
    (tmp_path / "records.yml").write_text(records_text)
    (tmp_path / "compare.yml").write_text(rules.dump_yaml({"groups": compare["groups"]}))
    out = []
    for source in sources:
        doc = yaml.safe_load((ALERTS / "tests" / source).read_text())
        cases = []
        # Rules are evaluated as in the source's own tests (every 5 minutes over a week for
        # the trends): the conditions are compared at each evaluation, all their `for` sees.
        step = _seconds(str(doc["evaluation_interval"]))
        for case in doc["tests"]:
            last = max(_seconds(str(c["eval_time"])) for c in case["alert_rule_test"])
            exprs = [
                {"expr": _differences(name), "eval_time": _duration(t), "exp_samples": []}
                for t in range(0, last + step, step)
                for name in compare["moved"]
            ]
            cases.append(
                {
                    "interval": case["interval"],
                    "input_series": case["input_series"],
                    "promql_expr_test": exprs,
                }
            )
        test = {
            "rule_files": ["records.yml", "compare.yml"],
            "evaluation_interval": _duration(step),
            "group_eval_order": [*_record_groups(records_text), "compare"],
            "tests": cases,
        }
        path = tmp_path / f"compare-{source}"
        path.write_text(yaml.safe_dump(test, sort_keys=False))
        out.append(path)
    return out


def _record_groups(text: str) -> list[str]:
    return [g["name"] for g in yaml.safe_load(text)["groups"]]


def test_the_records_file_is_clean_for_promtool() -> None:
    for path in rules.RECORD_FILES:
        doc = yaml.safe_load((ALERTS.parent / path).read_text())
        groups = doc["groups"] if "groups" in doc else doc["spec"]["groups"]
        # One group per metric read across the workers, the runs' first.
        names = [g["name"] for g in groups]
        assert names[0] == rules.RECORDS_GROUP and len(names) == len(set(names)) > 1
        assert all(n.startswith(f"{rules.RECORDS_GROUP}.") for n in names[1:])
        for group in groups:
            names = [r["record"] for r in group["rules"]]
            assert len(names) == len(set(names))
            assert all(n.startswith("otel_jobs:") for n in names)
    result = promtool("check", "rules", ALERTS / "otel-jobs.records.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules.records(rules.RulesConfig()))} rules found" in result.stdout


def test_alerts_on_the_records_fire_in_the_same_cases_as_on_raw_series(tmp_path: Path) -> None:
    tests = _write_comparison(tmp_path, rules.render(rules.RulesConfig(), part="records"))
    result = promtool("test", "rules", *tests)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]


def _records_text(records: list[Record]) -> str:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        rule = {"record": r.record, "expr": r.expr}
        grouped.setdefault(r.group, []).append({**rule, "labels": r.labels} if r.labels else rule)
    return rules.dump_yaml({"groups": [{"name": n, "rules": g} for n, g in grouped.items()]})


def test_the_duration_shards_take_every_job_once_with_all_its_buckets() -> None:
    """Three records groups read the duration buckets; each job name in exactly one of them.

    The groups are evaluated at different instants, so a histogram split between two of them
    would be summed from buckets of different moments (a run in ``+Inf`` not yet in its finite
    bucket: a p95 at the largest bucket, a duration alert pending for a healthy job). So the
    shards select by ``job_name`` only: every bucket of a worker's histogram in the same group.
    """
    from otel_jobs.rules.alert_groups.jobs import DURATION_SHARDS

    shards = [re.fullmatch(r'(\w+)(=~|!~)"(.*)"', m) for m in DURATION_SHARDS]
    assert all(shards)
    assert {m.group(1) for m in shards if m} == {"job_name"}
    names = ["app.job001", "app.job005", "app.job009", "tasks.send_email", "demo.import_rows"]
    names += ["reports.build", "X", "a_", "jobs.Nightly-2", "é", "", "作业", "job\u00e9Z", "9"]
    taken_by = []
    for name in names:
        taken = [bool(re.fullmatch(m.group(3), name)) == (m.group(2) == "=~") for m in shards if m]
        assert taken.count(True) == 1, (name, taken)
        taken_by.append(taken.index(True))
    assert set(taken_by) == {0, 1, 2}
    groups = yaml.safe_load(rules.render(rules.RulesConfig(), part="records"))["groups"]
    durations = [g for g in groups if ".durations" in g["name"]]
    assert [g["name"] for g in durations] == [
        f"{rules.RECORDS_GROUP}.durations.{k}" for k in (1, 2, 3)
    ]
    for group in durations:
        reads = [r["expr"] for r in group["rules"] if "otel_jobs_run_duration_seconds" in r["expr"]]
        assert reads and all("job_name" in e and "le=~" not in e for e in reads), reads


def test_other_windows_are_summed_from_hours_or_read_from_the_workers(tmp_path: Path) -> None:
    """A 6h window sums six hours, each of twelve pieces; 90m sums 18 pieces; 7m (not a multiple
    of 5m) reads the workers' series. The alerts on them fire as on raw series."""
    config = rules.RulesConfig(not_running_window="6h", failure_window="7m", duration_window="90m")
    found = {r.record: r for r in rules.records(config)}
    order = list(found)
    six_hours = found["otel_jobs:runs_finished:increase6h"].expr
    assert six_hours.count("otel_jobs:runs_finished:increase1h") == 6
    assert order.index("otel_jobs:runs_finished:increase1h") < order.index(
        "otel_jobs:runs_finished:increase6h"
    )
    assert "otel_jobs_runs_finished_total[7m]" in found["otel_jobs:runs_finished:increase7m"].expr
    ninety = found["otel_jobs:run_duration_seconds_bucket:rate90m"].expr
    assert ninety.count("otel_jobs:run_duration_seconds_bucket:increase5m") == 18
    text = rules.render(config, part="records")
    (tmp_path / "records-check.yml").write_text(text)
    result = promtool("check", "rules", tmp_path / "records-check.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tests = _write_comparison(tmp_path, text, ("jobs.yml", "trends.yml"), config)
    result = promtool("test", "rules", *tests)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]


def test_the_comparison_catches_a_record_that_differs(tmp_path: Path) -> None:
    # A 5m window recorded under the 10m name: p95 queue waits differ from the raw alert's.
    config = rules.RulesConfig()
    broken = [
        dataclasses.replace(r, expr="otel_jobs:queue_wait_seconds_bucket:rate5m")
        if r.record.endswith("queue_wait_seconds_bucket:rate10m")
        else r
        for r in rules.records(config)
    ]
    assert broken != rules.records(config)
    text = _records_text(broken)
    tests = _write_comparison(tmp_path, text, ("jobs.yml",))
    result = promtool("test", "rules", *tests)
    assert result.returncode != 0
    assert "records_OtelJobsQueueWaitHigh" in result.stdout + result.stderr


def test_the_raw_alerts_pass_the_same_unit_tests(tmp_path: Path) -> None:
    """``--recording-rules off`` renders the alerts as they were; the committed tests hold."""
    raw = rules.render(rules.RulesConfig(recording_rules=False))
    assert "otel_jobs:" not in raw
    (tmp_path / "otel-jobs.rules.yml").write_text(raw)
    (tmp_path / "tests").mkdir()
    copies = []
    for source in JOB_ALERT_TESTS:
        doc = yaml.safe_load((ALERTS / "tests" / source).read_text())
        doc["rule_files"] = ["../otel-jobs.rules.yml"]
        doc.pop("group_eval_order", None)
        copy = tmp_path / "tests" / source
        copy.write_text(yaml.safe_dump(doc, sort_keys=False))
        copies.append(copy)
    result = promtool("test", "rules", *copies)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_command_renders_the_records_and_both_parts(tmp_path: Path) -> None:
    from otel_jobs import cli

    out = tmp_path / "all.yml"
    assert (
        cli.main(["rules", "--part", "all", "--runbook-url", "https://x.example", "-o", str(out)])
        == 0
    )
    doc = yaml.safe_load(out.read_text())
    records = rules.document(rules.RulesConfig(), part="records")["groups"]
    assert doc["groups"][0]["name"] == rules.RECORDS_GROUP
    assert [g["name"] for g in doc["groups"]] == [
        g["name"] for g in records + rules.document(rules.RulesConfig())["groups"]
    ]
    result = promtool("check", "rules", out)
    assert result.returncode == 0, result.stdout + result.stderr
    selected = rules.render(rules.RulesConfig(selector='namespace="billing"'), part="records")
    read = 0
    for group in yaml.safe_load(selected)["groups"]:
        for record in group["rules"]:
            # What reads the workers' series selects; the rest reads the records only.
            if re.search(r"\botel_jobs_", record["expr"]):
                assert 'namespace="billing"' in record["expr"], record
                read += 1
            else:
                assert "otel_jobs:" in record["expr"], record
    assert read >= 5


# --- off the evaluation grid: the bound of otel_jobs.rules.fleet -----------------------------

SCRAPE = 15  # seconds between samples, as a real scrape
EVALUATION = 50  # seconds: divides 5m (pieces land on records), 1/3 of them on a sample
PIECE = 300
# Counters of job="otel-jobs", queue="q", outcome="success", 3 hours of samples; the largest
# increase between two samples of a job, summed over its workers (c).
OFF_GRID = {
    "steady": ({"w1": "0+1x720", "w2": "0+3x720"}, 4),
    "burst": ({"w1": "0x120 10+10x9 100x590"}, 10),
    "reset": ({"w1": "0+2x240 0+2x479"}, 2),
    "late": ({"w1": "_x180 5+1x540"}, 1),
    "gone": ({"w1": "0+3x360 stale"}, 3),
    # one run, counted between the samples at 4545 s and 4560 s: the piece boundary of the
    # evaluation at 4850 s falls between them.
    "once": ({"w1": "0x303 1x416"}, 1),
}


def _off_grid_test(tmp_path: Path, records_text: str) -> Path:
    """promtool cases comparing each increase record with the raw increase of its window."""
    (tmp_path / "records.yml").write_text(records_text)
    windows = {"15m": 900, "1h": 3600}
    raw = {
        "groups": [
            {
                "name": "compare",
                "rules": [
                    {
                        "record": f"raw_increase{w}",
                        "expr": f"sum by ({BY}, outcome) "
                        f"(increase(otel_jobs_runs_finished_total[{w}]))",
                    }
                    for w in windows
                ],
            }
        ]
    }
    (tmp_path / "compare.yml").write_text(rules.dump_yaml(raw))
    series = [
        {
            "series": f'otel_jobs_runs_finished_total{{job="otel-jobs",instance="{worker}:9464",'
            f'job_name="{job}",queue="q",outcome="success"}}',
            "values": values,
        }
        for job, (workers, _) in OFF_GRID.items()
        for worker, values in workers.items()
    ]
    exprs = []
    for window, seconds in windows.items():
        pieces = seconds // PIECE
        ratio = 2 * SCRAPE / (PIECE - 2 * SCRAPE)
        # Every evaluation once the window holds no series' first sample, to the last sample.
        first = -(-(seconds + 60) // EVALUATION) * EVALUATION
        for t in range(first, 3 * 3600 - 60, EVALUATION):
            for job, (_, c) in OFF_GRID.items():
                rec = f'otel_jobs:runs_finished:increase{window}{{job_name="{job}"}}'
                raw_ = f'raw_increase{window}{{job_name="{job}"}}'
                if job == "steady":
                    # A steady rate: each piece and the window extrapolate to the same line.
                    bound = f"1e-9 * {raw_}"
                else:
                    bound = f"{(pieces - 1) * c} + {ratio:.6f} * {raw_}"
                # Within the bound, and "any run in the window" the same on both.
                exprs.append(
                    {
                        "expr": f"abs({rec} - {raw_}) > {bound}"
                        f" or ({raw_} unless {rec}) or ({rec} unless {raw_})"
                        f" or ({raw_} > 0 unless {rec} > 0) or ({rec} > 0 unless {raw_} > 0)",
                        "eval_time": f"{t}s",
                        "exp_samples": [],
                    }
                )
    test = {
        "rule_files": ["records.yml", "compare.yml"],
        "evaluation_interval": f"{EVALUATION}s",
        "group_eval_order": [*_record_groups(records_text), "compare"],
        "tests": [{"interval": f"{SCRAPE}s", "input_series": series, "promql_expr_test": exprs}],
    }
    path = tmp_path / "off-grid.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    return path


def test_off_the_grid_the_windows_stay_within_the_stated_bound(tmp_path: Path) -> None:
    """Samples every 15 s, evaluations every 50 s: a 5-minute piece rarely starts or ends on a
    sample. A steady rate gives the raw value; otherwise the sum of n pieces is within
    (n - 1) x c + 2s/(5m - 2s) of the raw increase (s the scrape interval, c the largest
    increase between two scrapes), as the fleet module states, and is above 0 exactly when
    the raw increase is (the run of "once" falls between two pieces at 4850 s)."""
    path = _off_grid_test(tmp_path, rules.render(rules.RulesConfig(), part="records"))
    result = promtool("test", "rules", path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]


def test_off_the_grid_a_missing_piece_is_caught(tmp_path: Path) -> None:
    config = rules.RulesConfig()
    # The hour summed from 11 pieces instead of 12.
    broken = [
        dataclasses.replace(r, expr=re.sub(r"\n  or [^\n]*offset 55m[^\n]*", "", r.expr))
        if r.record == "otel_jobs:runs_finished:increase1h"
        else r
        for r in rules.records(config)
    ]
    assert broken != rules.records(config)
    result = promtool("test", "rules", _off_grid_test(tmp_path, _records_text(broken)))
    assert result.returncode != 0
    assert "increase1h" in result.stdout + result.stderr

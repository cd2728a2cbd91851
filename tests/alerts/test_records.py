"""The recording rules: checked by promtool, and the alerts moved onto them fire as before.

"As before": the job-level alerts rendered on the records (the default) and on every worker's
raw series (``--recording-rules off``, what the alerts were) are recorded side by side on the
inputs of ``alerts/tests/jobs.yml`` and ``trends.yml``, and at every step of those tests
promtool finds the same label sets, with the same values, meeting each alert's condition. The
``for`` of an alert only depends on that condition, so both fire in the same cases.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from otel_jobs import rules
from otel_jobs.rules.promql import Record

from .test_rules import ALERTS, promtool

JOB_ALERT_TESTS = ("jobs.yml", "trends.yml")
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
    tmp_path: Path, records_text: str, sources: tuple[str, ...] = JOB_ALERT_TESTS
) -> list[Path]:
    compare = _compare_rules(rules.RulesConfig())
    (tmp_path / "records.yml").write_text(records_text)
    (tmp_path / "compare.yml").write_text(rules.dump_yaml({"groups": compare["groups"]}))
    out = []
    for source in sources:
        doc = yaml.safe_load((ALERTS / "tests" / source).read_text())
        cases = []
        # Rules are evaluated once per sample interval (every 10 minutes over a week for the
        # trends): the conditions are compared at each step, which is all their `for` sees.
        evaluation = max(_seconds(str(c["interval"])) for c in doc["tests"])
        for case in doc["tests"]:
            step = _seconds(case["interval"])
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
            "evaluation_interval": _duration(evaluation),
            "group_eval_order": [rules.RECORDS_GROUP, "compare"],
            "tests": cases,
        }
        path = tmp_path / f"compare-{source}"
        path.write_text(yaml.safe_dump(test, sort_keys=False))
        out.append(path)
    return out


def test_the_records_file_is_clean_for_promtool() -> None:
    for path in rules.RECORD_FILES:
        doc = yaml.safe_load((ALERTS.parent / path).read_text())
        groups = doc["groups"] if "groups" in doc else doc["spec"]["groups"]
        assert [g["name"] for g in groups] == [rules.RECORDS_GROUP]
        names = [r["record"] for r in groups[0]["rules"]]
        assert len(names) == len(set(names)) and all(n.startswith("otel_jobs:") for n in names)
    result = promtool("check", "rules", ALERTS / "otel-jobs.records.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules.records(rules.RulesConfig()))} rules found" in result.stdout


def test_alerts_on_the_records_fire_in_the_same_cases_as_on_raw_series(tmp_path: Path) -> None:
    tests = _write_comparison(tmp_path, rules.render(rules.RulesConfig(), part="records"))
    result = promtool("test", "rules", *tests)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]


def test_the_comparison_catches_a_record_that_differs(tmp_path: Path) -> None:
    # A 5m window recorded under the 10m name: p95 queue waits differ from the raw alert's.
    config = rules.RulesConfig()
    broken = [
        Record(r.record, r.expr.replace("[10m]", "[5m]"))
        if r.record.endswith("queue_wait_seconds_bucket:rate10m")
        else r
        for r in rules.records(config)
    ]
    text = rules.dump_yaml(
        {
            "groups": [
                {
                    "name": rules.RECORDS_GROUP,
                    "rules": [{"record": r.record, "expr": r.expr} for r in broken],
                }
            ]
        }
    )
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
    assert doc["groups"][0]["name"] == rules.RECORDS_GROUP
    assert [g["name"] for g in doc["groups"][1:]] == [
        g["name"] for g in rules.document(rules.RulesConfig())["groups"]
    ]
    result = promtool("check", "rules", out)
    assert result.returncode == 0, result.stdout + result.stderr
    selected = rules.render(rules.RulesConfig(selector='namespace="billing"'), part="records")
    for record in yaml.safe_load(selected)["groups"][0]["rules"]:
        assert 'namespace="billing"' in record["expr"], record

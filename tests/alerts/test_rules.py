"""The rule files: generated from one configuration, valid for promtool, unit-tested, documented."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from otel_jobs import cli, rules

from . import require_binary

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "alerts"
RUNBOOKS = ROOT / "docs" / "runbooks"
TESTS = sorted((ALERTS / "tests").glob("*.yml"))


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def all_rules(doc: dict) -> list[dict]:
    groups = doc["groups"] if "groups" in doc else doc["spec"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


# --- the generator ---------------------------------------------------------------------------


def test_committed_files_are_the_generators_default_output() -> None:
    for path, text in rules.default_files().items():
        committed = (ROOT / path).read_text(encoding="utf-8")
        assert committed == text, f"{path} differs from `otel-jobs rules` output; regenerate it"


def test_yaml_written_by_hand_parses_to_the_same_data() -> None:
    config = rules.RulesConfig(selector='namespace="billing", env!~"dev|test"')
    for fmt in ("prometheus", "operator"):
        assert yaml.safe_load(rules.render(config, fmt)) == rules.document(config, fmt)


def test_the_operator_manifest_holds_the_same_groups() -> None:
    plain = yaml.safe_load((ALERTS / "otel-jobs.rules.yml").read_text())
    manifest = yaml.safe_load((ALERTS / "otel-jobs.prometheusrule.yaml").read_text())
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"]["name"] == "otel-jobs"
    assert manifest["spec"]["groups"] == plain["groups"]


def test_alerts_follow_the_naming_labels_and_annotations_rules() -> None:
    doc = yaml.safe_load((ALERTS / "otel-jobs.rules.yml").read_text())
    found = all_rules(doc)
    assert [r["alert"] for r in found] == list(rules.DEFAULT_FOR)
    for rule in found:
        assert re.fullmatch(r"OtelJobs(?:[A-Z][a-z0-9]+)+", rule["alert"]), rule["alert"]
        assert rule["labels"].keys() == {"severity"}
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        notes = rule["annotations"]
        assert notes.keys() == {"summary", "description", "runbook_url", "dashboard_url"}
        assert "{{" not in notes["summary"], "summary is fixed text"
        if not re.match(r"(?:absent\()?up\b", rule["expr"]):  # up's value says nothing more
            assert "$value" in notes["description"], rule["alert"]
        assert notes["runbook_url"] == f"{rules.DEFAULT_RUNBOOK_URL}/{rule['alert']}.md"
        assert notes["dashboard_url"].startswith(f"{rules.DEFAULT_GRAFANA_URL}/d/otel-jobs-")
        assert rule["for"] == rules.DEFAULT_FOR[rule["alert"]]


def test_rules_use_only_metrics_of_the_readme_contract() -> None:
    readme = (ROOT / "docs" / "metrics.md").read_text()
    table = readme.split("<!-- metrics-table:start -->")[1].split("<!-- metrics-table:end -->")[0]
    contract = set(re.findall(r"`(otel_jobs_\w+)`", table))
    text = (ALERTS / "otel-jobs.rules.yml").read_text()
    exprs = " ".join(r["expr"] for r in all_rules(yaml.safe_load(text)))
    used = {re.sub(r"_bucket$", "", m) for m in re.findall(r"\botel_jobs_\w+", exprs)}
    assert used, "no otel-jobs metric in the rules"
    assert used <= contract, f"not in the README metrics table: {used - contract}"


def test_selector_thresholds_and_for_durations_come_from_the_configuration() -> None:
    config = rules.RulesConfig(
        selector='namespace="billing"',
        heartbeat_timeout_default=None,
        queue_wait_p95=120,
        for_durations={"OtelJobsRunStalled": "7m"},
    )
    by_name = {r["alert"]: r for r in all_rules(rules.document(config))}
    for rule in by_name.values():
        for selector in re.findall(r"\b(?:otel_jobs_\w+|up)\b(\{[^}]*\})?", rule["expr"]):
            assert 'namespace="billing"' in selector, rule["expr"]
    assert by_name["OtelJobsRunStalled"]["for"] == "7m"
    assert (
        by_name["OtelJobsRunNotHeartbeating"]["for"]
        == rules.DEFAULT_FOR["OtelJobsRunNotHeartbeating"]
    )
    # No ceiling for jobs declaring no heartbeat timeout: the job's own gauge only.
    assert "+Inf" not in by_name["OtelJobsRunNotHeartbeating"]["expr"]
    assert re.search(r">\s*120\b", by_name["OtelJobsQueueWaitHigh"]["expr"])


def test_command_line_renders_a_checked_rule_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "billing.rules.yml"
    code = cli.main(
        [
            "rules", "--selector", 'namespace="billing"', "--stall-for", "5m",
            "--for", "OtelJobsQueueWaitHigh=30m", "--max-duration-default", "none",
            "--group-by", "namespace,job_name,queue", "--runbook-url", "https://wiki.example.com/rb/",
            "-o", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    by_name = {r["alert"]: r for r in all_rules(yaml.safe_load(out.read_text()))}
    assert by_name["OtelJobsRunStalled"]["for"] == "5m"
    assert by_name["OtelJobsRunNotHeartbeating"]["for"] == "5m"
    assert by_name["OtelJobsQueueWaitHigh"]["for"] == "30m"
    assert "sum by (namespace, job_name, queue, le)" in by_name["OtelJobsQueueWaitHigh"]["expr"]
    assert by_name["OtelJobsRunStalled"]["annotations"]["runbook_url"] == (
        "https://wiki.example.com/rb/OtelJobsRunStalled.md"
    )
    assert cli.main(["rules", "--format", "operator", "--operator-label", "release=kps"]) == 0
    manifest = yaml.safe_load(capsys.readouterr().out)
    assert manifest["metadata"]["labels"]["release"] == "kps"

    assert cli.main(["rules", "--for", "OtelJobsNoSuchAlert=1m"]) == 2
    assert "unknown alert" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["rules", "--stall-for", "two minutes"])
    with pytest.raises(SystemExit):
        cli.main(["rules", "--selector", '{namespace="billing"}'])
    assert "without braces" in capsys.readouterr().err

    result = promtool("check", "rules", out)
    assert result.returncode == 0, result.stdout + result.stderr


# --- promtool and amtool ---------------------------------------------------------------------


def test_promtool_check_rules_is_clean_for_every_rule_file(tmp_path: Path) -> None:
    result = promtool("check", "rules", ALERTS / "otel-jobs.rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules.DEFAULT_FOR)} rules found" in result.stdout
    # The Operator manifest: its embedded groups, extracted to a plain rule file.
    manifest = yaml.safe_load((ALERTS / "otel-jobs.prometheusrule.yaml").read_text())
    extracted = tmp_path / "from-manifest.rules.yml"
    extracted.write_text(rules.dump_yaml({"groups": manifest["spec"]["groups"]}))
    result = promtool("check", "rules", extracted)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules.DEFAULT_FOR)} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    assert TESTS
    result = promtool("test", "rules", *TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_would_catch_a_broken_rule(tmp_path: Path) -> None:
    # The same tests against rules whose stall threshold ignores the job's own timeout fail.
    broken = rules.render(rules.RulesConfig()).replace(
        "(otel_jobs_run_heartbeat_timeout_seconds < +Inf)",
        "(otel_jobs_run_heartbeat_timeout_seconds * 10 < +Inf)",
    )
    assert broken != rules.render(rules.RulesConfig())
    (tmp_path / "otel-jobs.rules.yml").write_text(broken)
    (tmp_path / "tests").mkdir()
    copy = tmp_path / "tests" / "runs.yml"
    copy.write_text((ALERTS / "tests" / "runs.yml").read_text())
    result = promtool("test", "rules", copy)
    assert result.returncode != 0
    assert "OtelJobsRunNotHeartbeating" in result.stdout + result.stderr


def test_every_alert_has_unit_tests_before_and_after_its_for() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fires == set(rules.DEFAULT_FOR), f"never tested firing: {set(rules.DEFAULT_FOR) - fires}"
    assert quiet == set(rules.DEFAULT_FOR), f"never tested quiet: {set(rules.DEFAULT_FOR) - quiet}"


def test_amtool_accepts_the_alertmanager_example() -> None:
    amtool = require_binary("amtool")
    result = subprocess.run(
        [amtool, "check-config", str(ALERTS / "alertmanager.example.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((ALERTS / "alertmanager.example.yml").read_text())
    routed = {m for route in config["route"]["routes"] for m in route["matchers"]}
    assert routed == {'severity="critical"', 'severity="warning"', 'severity="info"'}


# --- runbooks --------------------------------------------------------------------------------


@pytest.mark.parametrize("alert", list(rules.DEFAULT_FOR))
def test_every_alert_has_a_runbook(alert: str) -> None:
    page = RUNBOOKS / f"{alert}.md"
    assert page.is_file(), f"missing runbook {page}"
    text = page.read_text()
    assert text.startswith(f"# {alert}\n")
    for heading in ("## Meaning", "## Confirm", "## Usual causes", "## Fix", "## Verify the fix"):
        assert heading in text, f"{page.name} lacks {heading}"
    severity = {a.name: a.severity for g in rules.alerts(rules.RulesConfig()).values() for a in g}
    assert f"Severity: **{severity[alert]}**" in text
    index = (RUNBOOKS / "README.md").read_text()
    assert f"| [{alert}]({alert}.md) | {severity[alert]} |" in index


def test_readme_documents_every_generator_option_and_alert() -> None:
    readme = (ROOT / "docs" / "alerts.md").read_text()
    section = readme.split("<!-- section:alerts:start -->")[1].split("<!-- section:alerts:end -->")[
        0
    ]
    assert rules.options_table() in section
    for alert in rules.DEFAULT_FOR:
        assert f"`{alert}`" in section, alert

"""The dashboards' structure: what Grafana needs to import them unchanged, and our conventions."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards import build, live

ROOT = Path(__file__).resolve().parents[2]
DS = {"type": "prometheus", "uid": "${datasource}"}
NAMES = list(build.DASHBOARDS)


def _load(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "dashboards" / name).read_text())


@pytest.fixture(params=NAMES)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return _load(request.param)


@pytest.mark.parametrize("name", NAMES)
def test_committed_json_is_the_generator_output(name: str) -> None:
    committed = (ROOT / "dashboards" / name).read_text()
    assert committed == build.render(name), f"run: python -m dashboards.build ({name} is stale)"


def test_the_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    assert build.main(["--out", str(tmp_path)]) == 0
    assert build.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / NAMES[0]).write_text("{}\n")
    assert build.main(["--check", "--out", str(tmp_path)]) == 1


def test_identity_uid_title_tags_schema() -> None:
    overview, job = _load("otel-jobs-overview.json"), _load("otel-jobs-job.json")
    assert (overview["uid"], job["uid"]) == ("otel-jobs-overview", "otel-jobs-job")
    for d in (overview, job):
        assert d["title"].startswith("OTel Jobs / ")
        assert "otel-jobs" in d["tags"]
        assert d["schemaVersion"] == build.SCHEMA_VERSION >= 41
        assert "id" not in d or d["id"] is None  # an id would clash on import
        assert d["annotations"]["list"][0]["builtIn"] == 1


def test_the_two_dashboards_link_to_each_other() -> None:
    overview, job = _load("otel-jobs-overview.json"), _load("otel-jobs-job.json")
    assert any("/d/otel-jobs-job/" in link["url"] for link in overview["links"])
    assert any("/d/otel-jobs-overview/" in link["url"] for link in job["links"])
    for d in (overview, job):
        for link in d["links"]:
            if link["url"].startswith("/d/"):
                assert link["keepTime"] and link["includeVars"]


def test_every_panel_and_target_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    data_panels = list(live.panels(dashboard))
    assert len(data_panels) >= 15
    for panel in data_panels:
        assert panel["datasource"] == DS, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DS, panel["title"]
            assert target["expr"].strip(), panel["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DS, var["name"]


def test_panel_ids_are_unique_and_ref_ids_unique_per_panel(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    for panel in live.panels(dashboard):
        refs = [t["refId"] for t in panel["targets"]]
        assert refs[0] == "A" and len(refs) == len(set(refs)), panel["title"]


def test_grid_positions_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and 0 <= g["x"] and g["x"] + g["w"] <= 24, panel
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel.get('title')} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel.get("title", "?")


def test_every_panel_has_a_unit_and_thresholds(dashboard: dict[str, Any]) -> None:
    for panel in live.panels(dashboard):
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults.get("unit"), panel["title"]
        steps = defaults["thresholds"]["steps"]
        assert steps and steps[0]["value"] is None, panel["title"]
        if panel["type"] == "heatmap":
            assert panel["options"]["yAxis"]["unit"] == "s"
        assert panel["options"], panel["title"]  # null options break some panel editors


def test_every_referenced_variable_exists(dashboard: dict[str, Any]) -> None:
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    text = json.dumps({k: v for k, v in dashboard.items() if k != "templating"})
    for var in dashboard["templating"]["list"]:
        text += " " + json.dumps(var.get("query", ""))
    used = live.referenced_variables(text)
    assert used, "no variable used at all"
    assert used <= defined, f"undefined: {used - defined}"
    assert {"datasource", "instance", "queue", "job_name"} <= used


def test_rates_use_the_rate_interval(dashboard: dict[str, Any]) -> None:
    for panel in live.panels(dashboard):
        for target in panel["targets"]:
            windows = re.findall(r"\[([^\]]+)\]", target["expr"])
            for window in windows:
                assert window in ("$__rate_interval", "$__range"), (panel["title"], window)
            if "rate(" in target["expr"] and "[$__range]" not in target["expr"]:
                assert "[$__rate_interval]" in target["expr"], panel["title"]


def test_variables_are_chained_label_values() -> None:
    for name in NAMES:
        d = _load(name)
        v = {x["name"]: x for x in d["templating"]["list"]}
        names = [x["name"] for x in d["templating"]["list"]]
        assert names.index("instance") < names.index("queue") < names.index("job_name")
        for var, needs in (
            ("instance", []),
            ("queue", ["instance"]),
            ("job_name", ["instance", "queue"]),
        ):
            match, label = live.parse_label_values(v[var]["query"])
            assert label == var
            assert match is not None and match.startswith("otel_jobs_")
            assert live.referenced_variables(match) == set(needs), var
            assert v[var]["refresh"] == 2  # on time range change
        for var in ("instance", "queue"):
            assert v[var]["multi"] and v[var]["includeAll"] and v[var]["allValue"] == ".*"
        single = name == "otel-jobs-job.json"
        assert v["job_name"]["multi"] is not single
        assert v["job_name"]["includeAll"] is not single
        if not single:
            assert v["job_name"]["allValue"] == ".*"


def test_selectors_match_the_variable_kind() -> None:
    """Multi-value variables are matched with =~, the job dashboard's one job with =."""
    for name in NAMES:
        d = _load(name)
        single = name == "otel-jobs-job.json"
        for panel in live.panels(d):
            for target in panel["targets"]:
                expr = target["expr"]
                assert 'instance="$instance"' not in expr and 'queue="$queue"' not in expr
                if single:
                    assert 'job_name=~"$job_name"' not in expr
                else:
                    assert 'job_name="$job_name"' not in expr


def _alert_names() -> set[str]:
    rules = yaml.safe_load((ROOT / "alerts" / "otel-jobs.rules.yml").read_text())
    return {r["alert"] for group in rules["groups"] for r in group["rules"] if "alert" in r}


def test_runbook_links_name_shipped_alerts(dashboard: dict[str, Any]) -> None:
    linked = set()
    for panel in live.panels(dashboard):
        for link in panel.get("links", []):
            m = re.fullmatch(r"\$\{runbooks\}/(\w+)\.md", link["url"])
            if m:
                linked.add(m.group(1))
    assert linked, "no runbook link"
    assert linked <= _alert_names(), f"not an alert of alerts/: {linked - _alert_names()}"
    missing = [n for n in sorted(linked) if not (ROOT / "docs" / "runbooks" / f"{n}.md").exists()]
    assert not missing, f"no runbook in docs/runbooks for {missing}"
    runbooks = next(v for v in dashboard["templating"]["list"] if v["name"] == "runbooks")
    assert runbooks["type"] == "constant" and runbooks["query"] == build.DEFAULT_RUNBOOKS


def _runbook_links(dashboard: dict[str, Any]) -> list[str]:
    """Every runbook link of a dashboard, its ``${runbooks}`` resolved as Grafana would."""
    base = next(v for v in dashboard["templating"]["list"] if v["name"] == "runbooks")
    assert base["current"]["value"] == base["query"]
    links = [link for p in live.panels(dashboard) for link in p.get("links", [])]
    links += dashboard["links"]
    return [
        link["url"].replace("${runbooks}", base["query"])
        for link in links
        if link["url"].startswith("${runbooks}/")
    ]


def _rule_runbook_urls(text: str) -> dict[str, str]:
    doc = yaml.safe_load(text)
    return {
        r["alert"]: r["annotations"]["runbook_url"]
        for g in doc["groups"]
        for r in g["rules"]
        if "alert" in r
    }


def test_runbook_links_are_the_alert_rules_runbook_urls(dashboard: dict[str, Any]) -> None:
    # The links once pointed to a repository that does not exist, while the rules said
    # "placeholder": a panel's link and its alert's runbook_url are the same URL.
    shipped = _rule_runbook_urls((ROOT / "alerts" / "otel-jobs.rules.yml").read_text())
    urls = _runbook_links(dashboard)
    assert urls
    for url in urls:
        alert = url.rsplit("/", 1)[1].removesuffix(".md")
        if alert != "README":
            assert url == shipped[alert]
        assert url.startswith(build.DEFAULT_RUNBOOKS + "/")


def test_one_runbook_url_for_rules_and_dashboards(tmp_path: Path) -> None:
    from otel_jobs import cli

    base = "https://wiki.example.com/ops/otel-jobs/runbooks"
    assert cli.main(["rules", "--runbook-url", base, "-o", str(tmp_path / "rules.yml")]) == 0
    rendered = _rule_runbook_urls((tmp_path / "rules.yml").read_text())
    assert build.main(["--runbook-url", base + "/", "--out", str(tmp_path)]) == 0
    for name in NAMES:
        urls = _runbook_links(json.loads((tmp_path / name).read_text()))
        assert f"{base}/README.md" in urls
        for url in urls:
            alert = url.rsplit("/", 1)[1].removesuffix(".md")
            assert url == rendered.get(alert, f"{base}/README.md")


def test_provisioning_example_points_at_the_dashboards() -> None:
    config = yaml.safe_load((ROOT / "dashboards" / "provisioning.example.yml").read_text())
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]
    assert provider["options"].get("foldersFromFilesStructure") is not True


def test_the_readme_shows_both_previews_and_how_to_import() -> None:
    readme = (ROOT / "docs" / "dashboards.md").read_text()
    start = readme.index("<!-- section:dashboards:start -->")
    section = readme[start : readme.index("<!-- section:dashboards:end -->")]
    for name in NAMES:
        image = f"docs/images/{name.replace('.json', '.png')}"
        assert f"]({image.removeprefix('docs/')})" in section
        data = (ROOT / image).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000, image
        assert f"dashboards/{name}" in section
    assert "not a Grafana screenshot" in section
    assert "provisioning.example.yml" in section and "Import" in section


def test_the_json_reads_back_into_grafanas_typed_model(dashboard: dict[str, Any]) -> None:
    """Grafana's own schema types (foundation SDK) accept the file: panels, queries, options."""
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.models import dashboard as dm
    from grafana_foundation_sdk.models import prometheus as pm

    plugins.register_default_plugins()
    model = dm.Dashboard.from_json(dashboard)
    assert model.uid == dashboard["uid"] and len(model.uid) <= 40
    data_panels = [p for p in model.panels or [] if isinstance(p, dm.Panel)]
    assert len(data_panels) == len(list(live.panels(dashboard)))
    for panel in data_panels:
        assert panel.targets and all(isinstance(t, pm.Dataquery) for t in panel.targets)

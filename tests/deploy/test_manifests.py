"""deploy/: every manifest validates, the configs pass promtool and amtool, generated files are current.

* Core Kubernetes kinds (Deployment, ConfigMap, ...) against the Kubernetes OpenAPI schemas
  shipped by the ``kubernetes-validate`` package, strictly (an unknown field fails).
* The Prometheus Operator's kinds (PodMonitor, ServiceMonitor, PrometheusRule): a structural
  check, not the CRDs' OpenAPI schemas (no PyPI package ships those as data: the npm
  ``@kubernetes-models/prometheus-operator`` holds them compiled to JavaScript, and PyPI's
  generated models register a pytest plugin): the API group and version, the fields each object
  may hold (the operator's v1 API, as of prometheus-operator 0.80), their types and the
  duration fields' format; a PrometheusRule's groups also pass ``promtool check rules``.
* ``deploy/vm``: ``promtool check config`` (which also checks the rule files it loads) and
  ``amtool check-config``. ``deploy/monitor`` (the monitor's own files) is validated alike.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.alerts import require_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(
    p for p in DEPLOY.rglob("*.yaml") if "kubernetes" in p.parts
)  # the Kubernetes folders (deploy/kubernetes, deploy/monitor/kubernetes)
OPERATOR_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _all_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in MANIFESTS for doc in _documents(path)]


#: The fields of the operator's objects (monitoring.coreos.com/v1) that a manifest may set.
_ENDPOINT = {
    "port", "portNumber", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout",
    "honorLabels", "honorTimestamps", "trackTimestampsStaleness", "metricRelabelings",
    "relabelings", "proxyUrl", "followRedirects", "enableHttp2", "filterRunning", "basicAuth",
    "oauth2", "authorization", "bearerTokenSecret", "tlsConfig",
}  # fmt: skip
_SCRAPE_SPEC = {
    "jobLabel", "podTargetLabels", "selector", "selectorMechanism", "namespaceSelector",
    "sampleLimit", "targetLimit", "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
    "keepDroppedTargets", "attachMetadata", "scrapeProtocols", "fallbackScrapeProtocol",
    "scrapeClassicHistograms", "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor",
    "bodySizeLimit", "scrapeClass",
}  # fmt: skip
SPEC_FIELDS = {
    "PodMonitor": _SCRAPE_SPEC | {"podMetricsEndpoints"},
    "ServiceMonitor": _SCRAPE_SPEC | {"endpoints", "targetLabels"},
    "PrometheusRule": {"groups"},
}
REQUIRED = {"PodMonitor": {"selector"}, "ServiceMonitor": {"selector", "endpoints"}}
GROUP_FIELDS = {"name", "interval", "rules", "limit", "partial_response_strategy", "query_offset"}
RULE_FIELDS = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)


def operator_problems(doc: dict[str, Any]) -> list[str]:
    """What is wrong with an object of the operator's kinds (empty: nothing found)."""
    import re

    problems = []
    kind, spec = doc["kind"], doc.get("spec")
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"apiVersion {doc.get('apiVersion')!r}")
    if not doc.get("metadata", {}).get("name"):
        problems.append("metadata.name missing")
    if not isinstance(spec, dict):
        return [*problems, "spec is not a mapping"]
    problems += [f"spec.{k}: unknown field" for k in sorted(set(spec) - SPEC_FIELDS[kind])]
    problems += [f"spec.{k}: required" for k in sorted(REQUIRED.get(kind, set()) - set(spec))]
    endpoints = spec.get("podMetricsEndpoints", spec.get("endpoints", []))
    if not isinstance(endpoints, list):
        return [*problems, "endpoints: not a list"]
    for i, endpoint in enumerate(endpoints):
        if not isinstance(endpoint, dict):
            problems.append(f"endpoint {i}: not a mapping")
            continue
        problems += [f"endpoint {i}.{k}: unknown field" for k in sorted(set(endpoint) - _ENDPOINT)]
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint and not re.match(DURATION, str(endpoint[key])):
                problems.append(f"endpoint {i}.{key}: not a duration")
    for key in ("sampleLimit", "targetLimit"):
        if key in spec and not isinstance(spec[key], int):
            problems.append(f"spec.{key}: not an integer")
    if "selector" in spec and not isinstance(spec["selector"], dict):
        problems.append("spec.selector: not a label selector")
    for group in spec.get("groups", []):
        problems += [f"group {group.get('name')}: {k}" for k in sorted(set(group) - GROUP_FIELDS)]
        for rule in group.get("rules", []):
            problems += [f"rule: unknown field {k}" for k in sorted(set(rule) - RULE_FIELDS)]
            if ("record" in rule) == ("alert" in rule) or "expr" not in rule:
                problems.append(f"rule {rule}: one of record/alert, and expr")
    return problems


def test_the_kubernetes_folders_hold_the_expected_kinds() -> None:
    kinds = {doc["kind"] for _, doc in _all_documents()}
    assert {"Deployment", "PodMonitor", "PrometheusRule", "ConfigMap"} <= kinds
    assert any("monitor" in path.parts for path in MANIFESTS), "deploy/monitor is validated too"


@pytest.mark.parametrize(
    ("path", "doc"),
    [(p, d) for p, d in _all_documents() if d["kind"] not in OPERATOR_KINDS],
    ids=lambda v: v.name if isinstance(v, Path) else v.get("kind", "?"),
)
def test_core_kinds_validate_strictly_against_the_kubernetes_schema(
    path: Path, doc: dict[str, Any]
) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{path.relative_to(ROOT)}: {exc.message} at {list(exc.path)}")


@pytest.mark.parametrize(
    ("path", "doc"),
    [(p, d) for p, d in _all_documents() if d["kind"] in OPERATOR_KINDS],
    ids=lambda v: v.name if isinstance(v, Path) else v.get("kind", "?"),
)
def test_operator_kinds_hold_only_the_operators_fields(path: Path, doc: dict[str, Any]) -> None:
    assert operator_problems(doc) == [], path.relative_to(ROOT)


def test_the_operator_check_catches_a_misspelt_field() -> None:
    doc = _documents(DEPLOY / "kubernetes" / "podmonitor.yaml")[0]
    doc["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    doc["spec"]["podMetricsEndpoints"][0]["scrapeTimeout"] = "10 seconds"
    assert operator_problems(doc) == [
        "endpoint 0.intervall: unknown field",
        "endpoint 0.scrapeTimeout: not a duration",
    ]


def test_the_prometheusrules_pass_promtool(tmp_path: Path) -> None:
    from otel_jobs.rules import dump_yaml
    from tests.alerts.test_rules import promtool

    for path in sorted((DEPLOY / "kubernetes").glob("prometheusrule*.yaml")):
        (doc,) = _documents(path)
        extracted = tmp_path / f"{path.stem}.yml"
        extracted.write_text(dump_yaml({"groups": doc["spec"]["groups"]}))
        done = promtool("check", "rules", extracted)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_core_check_catches_an_unknown_field() -> None:
    import kubernetes_validate

    doc = _documents(DEPLOY / "kubernetes" / "worker-deployment.yaml")[0]
    doc["spec"]["template"]["spec"]["containers"][0]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_podmonitor_scrapes_the_worker_deployment_as_the_alerts_expect() -> None:
    (deployment,) = _documents(DEPLOY / "kubernetes" / "worker-deployment.yaml")
    (monitor,) = _documents(DEPLOY / "kubernetes" / "podmonitor.yaml")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # the job label the alerts select by default: job="otel-jobs"
    assert labels[monitor["spec"]["jobLabel"]] == "otel-jobs"
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports
    assert ports["metrics"] == int(env["OTEL_JOBS_PROMETHEUS_PORT"])
    assert env["OTEL_JOBS_PROMETHEUS_ADDR"] == "0.0.0.0"  # loopback by default
    # the monitor's pods are not scraped as workers
    (monitor_deployment,) = _documents(DEPLOY / "monitor" / "kubernetes" / "deployment.yaml")
    monitor_pods = monitor_deployment["spec"]["template"]["metadata"]["labels"]
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= monitor_pods.items()


def test_generated_manifests_are_current() -> None:
    done = subprocess.run(
        [sys.executable, str(DEPLOY / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (configmap,) = _documents(DEPLOY / "kubernetes" / "grafana-dashboards.configmap.yaml")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    for name, text in configmap["data"].items():
        assert text == (ROOT / "dashboards" / name).read_text().rstrip("\n")


def test_promtool_accepts_the_vm_prometheus_config_and_its_rule_files() -> None:
    promtool = require_binary("promtool")
    config = DEPLOY / "vm" / "prometheus.yml"
    done = subprocess.run(
        [promtool, "check", "config", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    loaded = yaml.safe_load(config.read_text())["rule_files"]
    assert [Path(f).name for f in loaded] == ["otel-jobs.records.yml", "otel-jobs.rules.yml"]
    assert "2 rule files found" in done.stdout


def test_promtool_accepts_the_monitors_scrape_config(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    for path in sorted((DEPLOY / "monitor").rglob("prometheus-scrape.yml")):
        config = yaml.safe_load(path.read_text())
        if any("kubernetes_sd_configs" in c for c in config["scrape_configs"]):
            # Debian's Prometheus is built without Kubernetes discovery: its promtool rejects
            # the field. The rest of the file must still be a scrape configuration.
            assert all(c["job_name"] for c in config["scrape_configs"]), path
            continue
        done = subprocess.run(
            [promtool, "check", "config", str(path)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"{path}: {done.stdout}{done.stderr}"


def test_amtool_accepts_the_vm_alertmanager_config() -> None:
    amtool = require_binary("amtool")
    config = DEPLOY / "vm" / "alertmanager.yml"
    done = subprocess.run(
        [amtool, "check-config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    routes = yaml.safe_load(config.read_text())["route"]["routes"]
    assert {m for r in routes for m in r["matchers"]} == {
        'severity="critical"',
        'severity="warning"',
        'severity="info"',
    }
    # One page per cause there too: every inhibition of the example Alertmanager configuration.
    shipped = yaml.safe_load(config.read_text())["inhibit_rules"]
    example = yaml.safe_load((ROOT / "alerts" / "alertmanager.example.yml").read_text())
    missing = [rule for rule in example["inhibit_rules"] if rule not in shipped]
    assert missing == [], missing


def test_the_readmes_cron_line_and_cronjob_push_to_a_pushgateway() -> None:
    """The README shows a cron script's crontab line and a Kubernetes CronJob (valid, strictly)
    that both set the Pushgateway, and the CronJob a fixed host name (one push group)."""
    import re

    import kubernetes_validate

    text = (ROOT / "README.md").read_text()
    [cron] = re.findall(r"```cron\n(.*?)```", text, flags=re.S)
    fields = cron.split()
    assert len(fields) > 6 and fields[5].startswith("OTEL_JOBS_PUSHGATEWAY_URL=http"), cron
    [doc] = [d for d in map(yaml.safe_load, re.findall(r"```yaml\n(.*?)```", text, flags=re.S))
             if isinstance(d, dict) and d.get("kind") == "CronJob"]  # fmt: skip
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    pod = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["hostname"]
    [container] = pod["containers"]
    assert "OTEL_JOBS_PUSHGATEWAY_URL" in {e["name"] for e in container["env"]}

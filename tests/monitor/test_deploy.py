"""The deployment examples of ``deploy/monitor/``: valid for their tools, and in step with the
monitor's settings and the rules' default monitor selector."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from otel_jobs import rules
from otel_jobs.monitor.settings import OPTIONS, MonitorSettings, load
from tests.alerts import require_binary

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "monitor"
K8S = DEPLOY / "kubernetes"
KNOWN_VARIABLES = {o.env for o in OPTIONS} | {o.fallback_env for o in OPTIONS if o.fallback_env}


def monitor_job() -> str:
    """The scrape job the queue alerts select by default."""
    selector = rules.RulesConfig().option(
        next(
            o
            for g in rules.catalog.found()
            for o in g.options
            if o.name == "monitor_target_selector"
        )
    )
    (job,) = re.findall(r'job="([^"]+)"', selector)
    return job


def env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def test_the_env_example_is_valid_settings() -> None:
    env = env_file(DEPLOY / "monitor.env.example")
    assert set(env) <= KNOWN_VARIABLES
    settings = load({}, env)
    assert settings.celery_app and settings.port == 9465 and settings.addr == "0.0.0.0"
    # Every variable it mentions, commented or not, is one the monitor reads.
    mentioned = set(re.findall(r"\b(OTEL_JOBS_\w+)=", (DEPLOY / "monitor.env.example").read_text()))
    assert mentioned <= KNOWN_VARIABLES, mentioned - KNOWN_VARIABLES


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the unit's syntax is not checked)")
    text = (DEPLOY / "otel-jobs-monitor.service").read_text()
    assert "ExecStart=/srv/app/.venv/bin/otel-jobs monitor" in text
    assert "EnvironmentFile=/etc/otel-jobs/monitor.env" in text
    # Verified with this machine's command and user, which exist (verify checks both).
    here = text.replace(
        "/srv/app/.venv/bin/otel-jobs", str(Path(sys.executable).parent / "otel-jobs")
    )
    here = re.sub(r"^(User|Group)=app$", r"\1=root", here, flags=re.M).replace(
        "/srv/app", str(tmp_path)
    )
    unit = tmp_path / "otel-jobs-monitor.service"
    unit.write_text(here)
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_promtool_accepts_the_scrape_config_and_its_job_is_the_alerts() -> None:
    path = DEPLOY / "prometheus-scrape.yml"
    done = subprocess.run(
        [require_binary("promtool"), "check", "config", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (job,) = yaml.safe_load(path.read_text())["scrape_configs"]
    assert job["job_name"] == monitor_job()
    assert job["static_configs"][0]["targets"][0].endswith(f":{MonitorSettings().port}")


def test_the_deployment_serves_metrics_where_the_scrape_configs_look() -> None:
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
    assert deployment["apiVersion"] == "apps/v1" and deployment["kind"] == "Deployment"
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["otel-jobs", "monitor"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {n for n in env if n.startswith("OTEL_JOBS_")} <= KNOWN_VARIABLES
    (port,) = container["ports"]
    assert port["containerPort"] == int(env["OTEL_JOBS_MONITOR_PORT"]) == MonitorSettings().port
    assert env["OTEL_JOBS_MONITOR_ADDR"] == "0.0.0.0"  # a pod's address, not loopback
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": port["name"]}

    podmonitor = yaml.safe_load((K8S / "podmonitor.yaml").read_text())
    assert podmonitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels[podmonitor["spec"]["jobLabel"]] == monitor_job()
    assert podmonitor["spec"]["podMetricsEndpoints"][0]["port"] == port["name"]

    (job,) = yaml.safe_load((K8S / "prometheus-scrape.yml").read_text())["scrape_configs"]
    assert job["job_name"] == monitor_job()
    keep = {
        tuple(r["source_labels"]): r["regex"]
        for r in job["relabel_configs"]
        if r.get("action") == "keep"
    }
    assert (
        keep[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)]
        == labels["app.kubernetes.io/name"]
    )
    assert keep[("__meta_kubernetes_pod_container_port_name",)] == port["name"]

"""runbook_url: a placeholder that says so until the user sets --runbook-url once (issue 20)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from otel_jobs import cli, rules

ROOT = Path(__file__).resolve().parents[2]


def runbook_urls(doc: dict) -> list[str]:
    groups = doc["groups"] if "groups" in doc else doc["spec"]["groups"]
    return [r["annotations"]["runbook_url"] for g in groups for r in g["rules"]]


def test_the_shipped_rules_point_to_a_placeholder_and_say_how_to_set_it() -> None:
    # The default once pointed to a repository that does not exist; `.invalid` never resolves.
    assert urlsplit(rules.DEFAULT_RUNBOOK_URL).hostname.endswith(".invalid")  # type: ignore[union-attr]
    for path in rules.DEFAULT_FILES:
        text = (ROOT / path).read_text()
        header = "".join(line for line in text.splitlines(True) if line.startswith("#"))
        assert "--runbook-url" in header and rules.DEFAULT_RUNBOOK_URL in header
        urls = runbook_urls(yaml.safe_load(text))
        assert urls and all(u.startswith(rules.DEFAULT_RUNBOOK_URL + "/") for u in urls)


def test_the_command_warns_until_runbook_url_is_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["rules", "-o", str(tmp_path / "default.yml")]) == 0
    err = capsys.readouterr().err
    assert "placeholder" in err and "--runbook-url" in err

    out = tmp_path / "ours.yml"
    base = "https://docs.example.com/ops/otel-jobs/runbooks"
    assert cli.main(["rules", "--runbook-url", base + "/", "-o", str(out)]) == 0
    assert capsys.readouterr().err == ""
    text = out.read_text()
    assert "placeholder" not in text
    assert runbook_urls(yaml.safe_load(text)) == [
        f"{base}/{alert}.md" for alert in rules.DEFAULT_FOR
    ]

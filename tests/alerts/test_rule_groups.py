"""Adding an alert group is one new module in otel_jobs/rules/alert_groups/.

The groups are found on first use, so each case runs in a fresh interpreter whose groups
package is extended with a temporary directory holding the new module.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from otel_jobs import rules

GROUP_MODULE = """
from otel_jobs.rules.config import Option, RulesConfig, positive
from otel_jobs.rules.promql import Alert, Group, num, sel

AGE = Option("test_backlog_age_seconds", 600.0, "oldest wait that is old", positive, "SECONDS")


def alerts(s: RulesConfig) -> list[Alert]:
    return [
        Alert(
            {name!r},
            "warning",
            f"{{sel(s, 'otel_jobs_test_oldest_seconds')}} > {{num(s.option(AGE))}}",
            "A queue holds an old job.",
            "Oldest job waited {{{{ $value | humanizeDuration }}}}.",
        )
    ]


GROUP = Group({group!r}, order={order}, default_for={default_for!r}, alerts=alerts,
              options=(AGE,))
"""

RUNNER = """
import sys
import otel_jobs.rules.alert_groups as package
package.__path__.append(sys.argv[1])
from otel_jobs import cli, rules
"""


def run_with_group(tmp_path: Path, code: str, **group: object) -> subprocess.CompletedProcess[str]:
    values = {
        "name": "OtelJobsTestBacklogOld",
        "group": "otel-jobs.test",
        "order": 10_000,  # after every group of the package
        "default_for": {"OtelJobsTestBacklogOld": "10m"},
        **group,
    }
    (tmp_path / "zz_test_group.py").write_text(GROUP_MODULE.format(**values))
    return subprocess.run(
        [sys.executable, "-c", RUNNER + textwrap.dedent(code), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_new_module_adds_its_alerts_options_and_for_durations(tmp_path: Path) -> None:
    result = run_with_group(
        tmp_path,
        """
        assert list(rules.DEFAULT_FOR)[-1] == "OtelJobsTestBacklogOld"
        assert "| `--test-backlog-age-seconds` | `600` | oldest wait that is old |" in (
            rules.options_table()
        )
        sys.exit(cli.main([
            "rules", "--test-backlog-age-seconds", "90", "--for", "OtelJobsTestBacklogOld=3m",
            "--selector", 'env="prod"',
        ]))
        """,
    )
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load(result.stdout)
    assert [g["name"] for g in doc["groups"]][-1] == "otel-jobs.test"
    (rule,) = doc["groups"][-1]["rules"]
    assert rule["alert"] == "OtelJobsTestBacklogOld"
    assert rule["expr"] == 'otel_jobs_test_oldest_seconds{env="prod"} > 90'
    assert rule["for"] == "3m"
    assert rule["annotations"]["runbook_url"].endswith("/OtelJobsTestBacklogOld.md")
    # The built-in groups render as before, in front of it.
    assert doc["groups"][:-1] == rules.document(rules.RulesConfig(selector='env="prod"'))["groups"]


def test_a_group_ordered_first_renders_first(tmp_path: Path) -> None:
    result = run_with_group(
        tmp_path, "print(list(rules.DEFAULT_FOR)[0], rules.document(rules.RulesConfig())"
        "['groups'][0]['name'])", order=1
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["OtelJobsTestBacklogOld", "otel-jobs.test"]


@pytest.mark.parametrize(
    ("group", "error"),
    [
        ({"name": "OtelJobsRunStalled", "default_for": {"OtelJobsRunStalled": "1m"}},
         "'OtelJobsRunStalled' is already declared (otel-jobs.runs)"),
        ({"default_for": {"OtelJobsSomethingElse": "1m"}},
         "built ['OtelJobsTestBacklogOld'], its default_for lists ['OtelJobsSomethingElse']"),
    ],
)  # fmt: skip
def test_a_malformed_group_fails_loudly_with_its_name(
    tmp_path: Path, group: dict[str, object], error: str
) -> None:
    result = run_with_group(tmp_path, "rules.render()", **group)
    assert result.returncode != 0
    assert error in result.stderr


def test_options_and_for_durations_name_unknown_entries() -> None:
    with pytest.raises(ValueError, match=r"options \['no_such_option'\]: unknown"):
        rules.RulesConfig(options={"no_such_option": 1.0})
    with pytest.raises(ValueError, match=r"for_durations \['OtelJobsNoSuchAlert'\]: unknown"):
        rules.RulesConfig(for_durations={"OtelJobsNoSuchAlert": "1m"})

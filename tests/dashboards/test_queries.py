"""Every query of both dashboards, run on a real Prometheus that scraped real workers.

One stack for the module (:class:`dashboards.live.Stack`): ``otel-jobs demo`` (healthy,
failing, slow, progress-reporting and stuck jobs, a call without a timeout) and a
queue-fed worker (queue wait), scraped every second by Debian's ``prometheus``. Variables
are substituted as Grafana does (All is ``.*``, ``$__rate_interval`` is 10s for a 1 s
scrape interval). Every query must succeed; every panel's main query (refId A) must return
at least one finite sample.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dashboards import build, live
from otel_jobs.demo import jobs as demo_jobs
from tests.support import IN_CI, scrape
from tests.support.waiting import wait_for

pytestmark = pytest.mark.prometheus

ALL = {"instance": ".*", "queue": ".*", "job_name": ".*"}


@pytest.fixture(scope="module")
def stack() -> Iterator[live.Stack]:
    if live.prometheus_binary() is None:
        message = "prometheus is not installed; install it with: apt-get install -y prometheus"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    with live.Stack(duration=240) as s:
        # The stuck runs got their stall verdicts and the counters moved within a rate window.
        s.wait_for("sum(otel_jobs_runs_stalled) > 0")
        s.wait_for("sum(increase(otel_jobs_stalls_detected_total[10s])) > 0")
        # Rates need a window of samples: wait until every overview panel has data.
        name = "otel-jobs-overview.json"
        variables = _variables(name)
        _wait_for_data(s, [p["targets"][0] for p in live.panels(_dashboard(name))], variables)
        yield s


def _dashboard(name: str) -> dict[str, Any]:
    return json.loads(build.render(name))


def _variables(name: str) -> dict[str, str]:
    values = {v["name"]: "" for v in _dashboard(name)["templating"]["list"]}
    values.update(ALL, datasource="prometheus", runbooks=build.DEFAULT_RUNBOOKS)
    return values


def _run(stack: live.Stack, target: dict[str, Any], variables: dict[str, str]) -> list[str]:
    """Run one target as Grafana would; the values it returned (as Prometheus prints them)."""
    expr = live.substitute(target["expr"], variables)
    if target.get("instant"):
        return [r["value"][1] for r in stack.query(expr)]
    end = time.time()
    result = stack.query_range(expr, max(stack.started, end - 300), end, step=1)
    return [v for series in result for _, v in series["values"]]


def _wait_for_data(
    stack: live.Stack, targets: list[dict[str, Any]], variables: dict[str, str]
) -> None:
    """Poll until every target has a finite value (data accumulates over rate windows).

    Returns quietly at the deadline: the tests then say which panels have no data.
    """
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all(any(live.is_finite(v) for v in _run(stack, t, variables)) for t in targets):
            return
        time.sleep(2)


def _served(match: str, label: str, *ports: int) -> set[str]:
    """The values of ``label`` on the variable's metric as the workers on ``ports`` serve them."""
    metric = match.partition("{")[0].strip()
    values: set[str] = set()
    for port in ports:
        samples = scrape(f"http://127.0.0.1:{port}/metrics").samples
        values |= {s.labels[label] for s in samples if s.name == metric and label in s.labels}
    return values


def test_variables_list_the_workers_queues_and_jobs(stack: live.Stack) -> None:
    # The demo's own job list (its queue-fed jobs), one job of each other kind (stuck on a call,
    # stuck spinning and cancelled: a timeout; the queue-fed worker's) and their queues: each
    # must be among the values the workers serve.
    declared = {
        "queue": {j.queue for j in demo_jobs.HEALTHY} | {"integrations", "maintenance", "orders"},
        "job_name": {j.name for j in demo_jobs.HEALTHY}
        | {"demo.sync_partner", "demo.dedupe_customers", "shop.fulfil_order"},
    }
    for name in build.DASHBOARDS:
        chain = {v["name"]: v for v in _dashboard(name)["templating"]["list"]}
        found: dict[str, set[str]] = {}
        for var in ("instance", "queue", "job_name"):
            match, label = live.parse_label_values(chain[var]["query"])
            assert match is not None
            query = live.substitute(match, ALL)
            if var == "instance":
                found[var] = set(stack.label_values(label, query))
                continue
            # Every value the two workers serve now (the demo's jobs and queues, stuck and
            # async ones included, and the queue-fed worker's), once Prometheus has scraped it.
            served = _served(match, label, stack.demo_port, stack.queue_port)
            assert declared[var] <= served, (var, declared[var] - served)
            found[var] = wait_for(
                f"the {var} variable of {name} to list {sorted(served)}",
                lambda label=label, query=query, served=served: (
                    (values := set(stack.label_values(label, query))) >= served and values
                ),
            )
        assert found["instance"] == {
            f"127.0.0.1:{stack.demo_port}",
            f"127.0.0.1:{stack.queue_port}",
        }
        # Chained: one instance narrows the queues to its own.
        match, label = live.parse_label_values(chain["queue"]["query"])
        assert match is not None
        narrowed = stack.label_values(
            label, live.substitute(match, {"instance": f"127.0.0.1:{stack.queue_port}"})
        )
        assert narrowed and sorted(narrowed) == sorted(_served(match, label, stack.queue_port))


def test_every_overview_query_succeeds_and_every_panel_has_data(stack: live.Stack) -> None:
    name = "otel-jobs-overview.json"
    variables = _variables(name)
    panels = list(live.panels(_dashboard(name)))
    empty = []
    for panel in panels:
        for target in panel["targets"]:
            values = _run(stack, target, variables)  # raises on a query Prometheus rejects
            if target["refId"] == "A" and not any(live.is_finite(v) for v in values):
                empty.append(panel["title"])
    assert not empty, f"main queries with no data: {empty}\n{stack.logs()}"


def test_every_job_query_succeeds_and_every_panel_has_data_for_some_job(
    stack: live.Stack,
) -> None:
    """The job dashboard, for each job of the workload: stuck ones fill the stall panels,
    finishing ones the duration and failure panels, the queue-fed one the queue wait."""
    name = "otel-jobs-job.json"
    panels = list(live.panels(_dashboard(name)))
    jobs = _served("otel_jobs_runs_in_progress", "job_name", stack.demo_port, stack.queue_port)
    per_job = {job: {**_variables(name), "job_name": job} for job in sorted(jobs)}
    served: dict[str, set[str]] = {p["title"]: set() for p in panels}
    for job, variables in per_job.items():
        for panel in panels:
            for target in panel["targets"]:
                values = _run(stack, target, variables)
                if target["refId"] == "A" and any(live.is_finite(v) for v in values):
                    served[panel["title"]].add(job)
    empty = [title for title, jobs in served.items() if not jobs]
    assert not empty, f"panels with no data for any job: {empty}"
    stuck, healthy, queued = "demo.sync_partner", "demo.send_email", "shop.fulfil_order"
    assert stuck in served["Runs stalled now"] and stuck in served["Stalls in time range"]
    assert stuck in served["Age of the oldest run, against the max duration"]
    assert stuck in served["Heartbeat age, against the heartbeat timeout"]
    assert healthy in served["Run duration p50 / p95 / p99, against the max duration"]
    assert "demo.charge_card" in served["Failure ratio"]
    assert queued in served["Queue wait p50 / p95 / p99"]


def test_stuck_runs_show_where_a_person_looks_first(stack: live.Stack) -> None:
    """The overview's stalled-runs table names the stuck jobs; the stall count matches them."""
    panel = next(
        p
        for p in live.panels(_dashboard("otel-jobs-overview.json"))
        if p["title"].startswith("Stalled runs now")
    )
    expr = live.substitute(panel["targets"][0]["expr"], _variables("otel-jobs-overview.json"))
    # dedupe_customers is stuck too, but the watchdog cancels it (on_stall="cancel").
    expected = {"demo.sync_partner", "demo.hold_lock", "demo.rebuild_index"}
    deadline = time.monotonic() + 90  # each verdict lands on its own watchdog tick and scrape
    while True:
        rows = stack.query(expr)
        stuck = {r["metric"]["job_name"] for r in rows}
        if expected <= stuck:
            break
        assert time.monotonic() < deadline, f"stalled runs table: {rows}"
        time.sleep(1)
    assert "demo.send_email" not in stuck
    assert all(r["metric"]["state"] in ("blocked", "spinning", "unknown") for r in rows)


def test_threshold_lines_are_the_jobs_own_thresholds(stack: live.Stack) -> None:
    """The dashed lines of the job dashboard are the thresholds the demo's jobs declare."""
    panels = {p["title"]: p for p in live.panels(_dashboard("otel-jobs-job.json"))}
    declared = {"demo.sync_partner": (20.0, 3.0), "demo.import_rows": (30.0, 2.0)}
    for job, (max_duration, heartbeat_timeout) in declared.items():
        variables = {**_variables("otel-jobs-job.json"), "job_name": job}
        for title, ref, expected in (
            ("Age of the oldest run, against the max duration", "B", max_duration),
            ("Heartbeat age, against the heartbeat timeout", "B", heartbeat_timeout),
        ):
            target = next(t for t in panels[title]["targets"] if t["refId"] == ref)
            values = {float(v) for v in _run(stack, target, variables)}
            assert values == {expected}, (job, title, values)


def test_a_cancelled_stuck_run_shows_as_a_stall_and_a_timeout(stack: live.Stack) -> None:
    """demo.dedupe_customers spins, gets a stall verdict, and the watchdog cancels it."""
    name = "otel-jobs-job.json"
    panels = {p["title"]: p for p in live.panels(_dashboard(name))}
    variables = {**_variables(name), "job_name": "demo.dedupe_customers"}
    for title in ("Stalls in time range", "Timeouts in time range"):
        target = panels[title]["targets"][0]
        # Polled: a range query's last step can fall just before the newest sample.
        deadline = time.monotonic() + 90
        while True:
            values = [float(v) for v in _run(stack, target, variables)]
            if values and max(values) > 0:
                break
            assert time.monotonic() < deadline, f"{title}: no stall or timeout counted ({values})"
            time.sleep(1)
    healthy = {**variables, "job_name": "demo.send_email"}
    for title in ("Stalls in time range", "Timeouts in time range"):
        values = [float(v) for v in _run(stack, panels[title]["targets"][0], healthy)]
        assert values and max(values) == 0, title


def test_the_queue_panels_show_a_backlog_nobody_drains(stack: live.Stack) -> None:
    """The demo's monitor reads its queues: 'exports' is never drained, so its depth and the
    age of its oldest job climb on the overview's queue panels, and the drained pool's do not."""
    panels = {p["title"]: p for p in live.panels(_dashboard("otel-jobs-overview.json"))}
    variables = _variables("otel-jobs-overview.json")
    age = live.substitute(panels["Oldest waiting job, by queue"]["targets"][0]["expr"], variables)
    depth = live.substitute(panels["Queue depth by state"]["targets"][0]["expr"], variables)

    def exports_age() -> float:
        (found,) = [r for r in stack.query(age) if r["metric"]["queue"] == "exports"]
        assert found["metric"]["framework"] == "demo"
        return float(found["value"][1])

    first = exports_age()
    deadline = time.monotonic() + 90
    while exports_age() <= first:
        assert time.monotonic() < deadline, "the age of the oldest job on 'exports' never grew"
        time.sleep(1)
    states = {
        (r["metric"]["queue"], r["metric"]["state"]): float(r["value"][1])
        for r in stack.query(depth)
    }
    assert states[("exports", "waiting")] > 0
    assert ("pool", "waiting") in states


def test_the_lost_run_panels_show_lost_requeued_and_redelivered_runs(stack: live.Stack) -> None:
    """The stack's lost-run feed loses each order three times (--max-lost 2: requeued twice,
    then not again) and its worker marks every fifth run handed out again: the overview's
    lost-run panels show them for that job and queue, lost above requeued."""
    panels = {p["title"]: p for p in live.panels(_dashboard("otel-jobs-overview.json"))}
    variables = _variables("otel-jobs-overview.json")
    lost_panel = panels["Runs lost and requeued, by job"]
    end = time.time()
    totals: dict[str, float] = {}
    for target in lost_panel["targets"]:
        expr = live.substitute(target["expr"], variables)
        series = stack.query_range(expr, max(stack.started, end - 300), end, step=1)
        assert [s["metric"] for s in series] == [
            {"framework": "demo", "job_name": "shop.fulfil_order", "queue": "orders"}
        ], (target["refId"], series)
        totals[target["refId"]] = max(float(v) for _, v in series[0]["values"])
    assert totals["A"] > 0 and totals["B"] > 0
    # The counters the panel reads: requeued stays below lost (every third loss is not requeued).
    lost = stack.query('sum(otel_jobs_runs_lost_total{job_name="shop.fulfil_order"})')
    requeued = stack.query('sum(otel_jobs_runs_requeued_total{job_name="shop.fulfil_order"})')
    assert 0 < float(requeued[0]["value"][1]) < float(lost[0]["value"][1])
    # Filtered like every fleet panel: another queue shows nothing.
    other = {**variables, "queue": "mail"}
    for target in lost_panel["targets"]:
        assert _run(stack, target, other) == []
    redelivered = panels["Runs handed out again, by job"]["targets"][0]
    expr = live.substitute(redelivered["expr"], variables)
    series = stack.query_range(expr, max(stack.started, end - 300), end, step=1)
    shown = {
        (s["metric"]["job_name"], s["metric"]["queue"])
        for s in series
        if any(float(v) > 0 for _, v in s["values"])
    }
    assert shown == {("shop.fulfil_order", "orders")}

"""Build the otel-jobs Grafana dashboards from code (grafana-foundation-sdk).

Two dashboards, written against the metrics table of ``docs/metrics.md`` (the contract):

* ``otel-jobs-overview.json`` (uid ``otel-jobs-overview``): the fleet. What is stuck now and
  where, how old the oldest runs are against their max duration, how stale their heartbeats
  are against their timeout, throughput by outcome, failure ratio, duration percentiles and
  heatmap, queue wait, the queues as the brokers hold them (depth by state and the oldest
  waiting job, from ``otel-jobs monitor``), runs lost with their worker and requeued (from the
  monitor) and handed out again (from the workers), outbound calls made without a timeout,
  and each worker's watchdog, CPU and memory.
* ``otel-jobs-job.json`` (uid ``otel-jobs-job``): one ``job_name``, with its own thresholds
  (``otel_jobs_run_max_duration_seconds``, ``otel_jobs_run_heartbeat_timeout_seconds``)
  drawn as lines, its stalls and its timeouts.

Usage, from the repository root::

    python -m dashboards.build            # rewrite dashboards/*.json
    python -m dashboards.build --check    # exit 1 if the committed JSON differs
    python -m dashboards.build --runbook-url https://git.example.com/ops/otel-jobs/blob/main/docs/runbooks

Conventions every panel follows (tests/dashboards checks them): the ``datasource``
variable on every panel and target; the chained ``instance`` -> ``queue`` -> ``job_name``
variables (``label_values()``, multi-value with All as ``.*``; the job dashboard picks one
job); ``$__rate_interval`` in every ``rate()``/``increase()`` over time; a unit and
thresholds on every panel; titles beginning ``OTel Jobs /``; links between the two
dashboards and from panels to the runbooks (``$runbooks/<AlertName>.md``, a constant
variable you can change in the dashboard settings or with ``--runbook-url``). Its default is the
rules' placeholder (``otel_jobs.rules.DEFAULT_RUNBOOK_URL``): a dashboard and an alert rendered
with the same base link to the same runbook, and neither points anywhere until the user sets it.

``schemaVersion`` is 41, the schema Grafana 12 writes. Grafana 13 reads it and applies
its one later migration (42, which rewrites ``hideFrom`` field options these dashboards
do not set), so the same file imports into both.

The timestamp gauges have no series while no run of a job is in flight, so the age panels
are empty for idle jobs (never a huge "age" computed from a stale start time).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models import prometheus as pm

from otel_jobs.rules.config import DEFAULT_RUNBOOK_URL

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 41
TAGS = ["otel-jobs", "jobs", "prometheus"]
OVERVIEW_UID = "otel-jobs-overview"
JOB_UID = "otel-jobs-job"
#: Where the runbooks are published; ``$runbooks/<AlertName>.md`` is each panel's runbook link.
#: The alert rules' own placeholder, so that one ``--runbook-url BASE`` means the same on both.
DEFAULT_RUNBOOKS = DEFAULT_RUNBOOK_URL

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label selectors. The overview takes every selected job; the job dashboard exactly one.
FLEET = 'instance=~"$instance", queue=~"$queue", job_name=~"$job_name"'
ONE_JOB = 'instance=~"$instance", queue=~"$queue", job_name="$job_name"'
INSTANCES = 'instance=~"$instance"'
# The overview's fleet panels read the recording rules (alerts/otel-jobs.records.yml): one
# series per job and queue summed across workers, so they take no instance matcher. Per-worker
# detail (the stalled-runs table, the workers row) and the job dashboard read the workers' own
# series; the overview's age panels read each job's worst worker from the records.
RECORDED = 'queue=~"$queue", job_name=~"$job_name"'
FINISHED_RATE = "otel_jobs:runs_finished:rate5m"
FAILED = 'outcome=~"failure|timeout"'

GREEN, ORANGE, RED, BLUE = "green", "orange", "red", "blue"


# --- small builders ---------------------------------------------------------------------------


def _query(
    expr: str,
    legend: str = "__auto",
    ref: str = "A",
    *,
    instant: bool = False,
    fmt: pm.PromQueryFormat | None = None,
) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS)
    q = q.instant() if instant else q.range()
    if fmt is not None:
        q = q.format(fmt)
    return q


def _steps(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


def _runbook(alert: str) -> dash.DashboardLink:
    return (
        dash.DashboardLink(f"Runbook: {alert}")
        .type(dm.DashboardLinkType.LINK)
        .url(f"${{runbooks}}/{alert}.md")
        .target_blank(True)
    )


def _job_link(title: str = "Open in OTel Jobs / Job") -> dash.DashboardLink:
    """A data link from a series or table row to the job dashboard, for its job_name."""
    return (
        dash.DashboardLink(title)
        .url(
            f"/d/{JOB_UID}/otel-jobs-job?${{__url_time_range}}&${{datasource:queryparam}}"
            "&var-job_name=${__field.labels.job_name}"
        )
        .target_blank(False)
    )


def _common(panel: Any, title: str, description: str, unit: str, w: int, h: int) -> Any:
    return panel.title(title).description(description).datasource(DS).unit(unit).span(w).height(h)


def _timeseries(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[prometheus.Dataquery],
    thresholds: dash.ThresholdsConfig,
    *,
    w: int = 12,
    h: int = 8,
    stacked: bool = False,
    threshold_lines: bool = False,
    links: Sequence[dash.DashboardLink] = (),
    data_links: Sequence[dash.DashboardLink] = (),
    min_val: float | None = 0,
) -> timeseries.Panel:
    panel = _common(timeseries.Panel(), title, description, unit, w, h)
    panel = (
        panel.targets(list(queries))
        .thresholds(thresholds)
        .legend(
            common_b.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(
            common_b.VizTooltipOptions()
            .mode(cm.TooltipDisplayMode.MULTI)
            .sort(cm.SortOrder.DESCENDING)
        )
        .line_width(1)
        .fill_opacity(25 if stacked else 10)
        .show_points(cm.VisibilityMode.NEVER)
        .span_nulls(False)
        .thresholds_style(
            common_b.GraphThresholdsStyleConfig().mode(
                cm.GraphTresholdsStyleMode.DASHED
                if threshold_lines
                else cm.GraphTresholdsStyleMode.OFF
            )
        )
    )
    if min_val is not None:
        panel = panel.min(min_val)
    if stacked:
        panel = panel.stacking(common_b.StackingConfig().mode(cm.StackingMode.NORMAL))
    if links:
        panel = panel.links(list(links))
    if data_links:
        panel = panel.data_links(list(data_links))
    return panel


def _stat(
    title: str,
    description: str,
    unit: str,
    expr: str,
    thresholds: dash.ThresholdsConfig,
    *,
    w: int = 4,
    h: int = 4,
    no_value: str = "0",
    links: Sequence[dash.DashboardLink] = (),
    decimals: int | None = None,
) -> stat.Panel:
    panel = _common(stat.Panel(), title, description, unit, w, h)
    panel = (
        panel.with_target(_query(expr, "__auto", instant=False))
        .thresholds(thresholds)
        .no_value(no_value)
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.AREA)
        .text_mode(cm.BigValueTextMode.VALUE)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if links:
        panel = panel.links(list(links))
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


def _quantiles(
    metric: str, selector: str, by: str, legend_prefix: str
) -> list[prometheus.Dataquery]:
    group = f"{by}, le" if by else "le"
    return [
        _query(
            f"histogram_quantile({q}, sum by ({group}) "
            f"(rate({metric}_bucket{{{selector}}}[$__rate_interval])))",
            f"{legend_prefix}p{int(q * 100)}",
            ref,
        )
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]


def _recorded_quantiles(
    record: str, selector: str, by: str, legend_prefix: str
) -> list[prometheus.Dataquery]:
    """p50/p95/p99 from a recording rule of bucket rates (``le`` kept)."""
    group = f"{by}, le" if by else "le"
    return [
        _query(
            f"histogram_quantile({q}, sum by ({group}) ({record}{{{selector}}}))",
            f"{legend_prefix}p{int(q * 100)}",
            ref,
        )
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]


def _heatmap(
    title: str, description: str, selector: str, *, w: int, h: int, expr: str | None = None
) -> heatmap.Panel:
    panel = _common(heatmap.Panel(), title, description, "s", w, h)
    return (
        panel.with_target(
            _query(
                expr
                or "sum by (le) (increase(otel_jobs_run_duration_seconds_bucket"
                f"{{{selector}}}[$__rate_interval]))",
                "{{le}}",
                fmt=pm.PromQueryFormat.HEATMAP,
            )
        )
        .calculate(False)
        .thresholds(_steps((None, GREEN)))
        .y_axis(heatmap.YAxisConfig().unit("s").axis_placement(cm.AxisPlacement.LEFT))
        .color(
            heatmap.HeatmapColorOptions()
            .mode(hm.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .fill("dark-orange")
            .scale(hm.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
        )
        .cell_gap(1)
        .show_tooltip()
        .show_legend()
    )


def _variables(single_job: bool) -> list[Any]:
    datasource = dash.DatasourceVariable("datasource").label("Data source").type("prometheus")
    # A constant is hidden from the variable bar and editable in the dashboard settings.
    runbooks = (
        dash.ConstantVariable("runbooks")
        .label("Runbooks URL")
        .description(
            "Where you publish otel-jobs' docs/runbooks/ (links end in /<AlertName>.md): the "
            "base given to otel-jobs rules --runbook-url. The default is a placeholder."
        )
        .value(DEFAULT_RUNBOOKS)
    )
    # Chained: each variable offers only the values that exist under the ones before it.
    chain = [
        ("instance", "Instance", "label_values(otel_jobs_runs_in_progress, instance)"),
        (
            "queue",
            "Queue",
            'label_values(otel_jobs_runs_in_progress{instance=~"$instance"}, queue)',
        ),
        (
            "job_name",
            "Job",
            'label_values(otel_jobs_runs_in_progress{instance=~"$instance", queue=~"$queue"}, job_name)',
        ),
    ]
    out: list[Any] = [datasource]
    for name, label, query in chain:
        one = single_job and name == "job_name"
        var = (
            dash.QueryVariable(name)
            .label(label)
            .datasource(DS)
            .query(query)
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
            .multi(not one)
            .include_all(not one)
        )
        if not one:
            var = var.all_value(".*")
        out.append(var)
    out.append(runbooks)
    return out


def _dashboard(uid: str, title: str, description: str, single_job: bool) -> dash.Dashboard:
    other_uid, other_title = (
        (OVERVIEW_UID, "OTel Jobs / Overview") if single_job else (JOB_UID, "OTel Jobs / Job")
    )
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .variables(_variables(single_job))
        .link(
            dash.DashboardLink(other_title)
            .type(dm.DashboardLinkType.LINK)
            .url(f"/d/{other_uid}/{other_uid}")
            .icon("dashboard")
            .include_vars(True)
            .keep_time(True)
        )
        .link(
            dash.DashboardLink("Runbooks")
            .type(dm.DashboardLinkType.LINK)
            .url("${runbooks}/README.md")
            .icon("doc")
            .target_blank(True)
        )
    )


# --- the overview ---------------------------------------------------------------------------


def overview() -> dash.Dashboard:
    d = _dashboard(
        OVERVIEW_UID,
        "OTel Jobs / Overview",
        "Background jobs watched by otel-jobs: what is stuck now, for how long, and why.",
        single_job=False,
    )
    d = d.with_row(dash.Row("Stuck now"))
    d = d.with_panel(
        _stat(
            "Runs stalled now",
            "Runs the watchdog has given a stall verdict (no heartbeat within the timeout, or over the max duration) and that are still in flight.",
            "short",
            f"sum(otel_jobs:runs_stalled:sum{{{RECORDED}}})",
            _steps((None, GREEN), (1, RED)),
            links=[_runbook("OtelJobsRunStalled")],
        )
    )
    d = d.with_panel(
        _stat(
            "Runs in progress",
            "Runs in flight now.",
            "short",
            f"sum(otel_jobs:runs_in_progress:sum{{{RECORDED}}})",
            _steps((None, BLUE)),
        )
    )
    d = d.with_panel(
        _stat(
            "Runs finished per second",
            "Runs finished per second, any outcome.",
            "ops",
            f"sum({FINISHED_RATE}{{{RECORDED}}})",
            _steps((None, BLUE)),
        )
    )
    d = d.with_panel(
        _stat(
            "Failure ratio",
            "Share of finished runs that failed or timed out.",
            "percentunit",
            f"sum({FINISHED_RATE}{{{RECORDED}, {FAILED}}})"
            f" / (sum({FINISHED_RATE}{{{RECORDED}}}) > 0)",
            _steps((None, GREEN), (0.05, ORANGE), (0.2, RED)),
            links=[_runbook("OtelJobsFailureRatioHigh")],
        )
    )
    d = d.with_panel(
        _stat(
            "Stalest watchdog tick",
            "Seconds since the least recent watchdog tick among the selected workers. A worker whose watchdog stops ticking is frozen.",
            "s",
            f"max(time() - otel_jobs_watchdog_last_tick_timestamp_seconds{{{INSTANCES}}})",
            _steps((None, GREEN), (10, ORANGE), (60, RED)),
            no_value="no watchdog",
            links=[_runbook("OtelJobsWatchdogNotTicking")],
        )
    )
    d = d.with_panel(
        _stat(
            "Calls without a timeout",
            "Outbound calls made with no effective timeout since the selected workers started (see the table below).",
            "short",
            f"sum(otel_jobs_outbound_calls_without_timeout_total{{{INSTANCES}}})",
            _steps((None, GREEN), (1, ORANGE)),
            links=[_runbook("OtelJobsOutboundCallWithoutTimeout")],
        )
    )
    stuck_table = (
        _common(
            table.Panel(),
            "Stalled runs now: which job, where, why",
            "One row per job, worker and state with runs under a stall verdict now. State: blocked (no CPU: I/O or a lock), spinning (CPU: a loop), unknown. Click a job to open its dashboard.",
            "short",
            12,
            8,
        )
        .with_target(
            _query(
                f"sum by (instance, queue, job_name, state) (otel_jobs_runs_stalled{{{FLEET}}}) > 0",
                "",
                instant=True,
                fmt=pm.PromQueryFormat.TABLE,
            )
        )
        .thresholds(_steps((None, ORANGE), (1, RED)))
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "renameByName": {"Value": "runs stalled"},
                    "indexByName": {
                        "job_name": 0,
                        "queue": 1,
                        "instance": 2,
                        "state": 3,
                        "Value": 4,
                    },
                },
            )
        )
        .sort_by([common_b.TableSortByFieldState().display_name("runs stalled").desc(True)])
        .override_by_name(
            "job_name",
            [dm.DynamicConfigValue(id_val="links", value=[_link_dict()])],
        )
        .links([_runbook("OtelJobsRunStalled")])
    )
    d = d.with_panel(stuck_table)
    d = d.with_panel(
        _timeseries(
            "Runs stalled now, by state",
            "Runs under a stall verdict, by the watchdog's diagnosis: blocked (no CPU: I/O or a lock), spinning (CPU: a loop), unknown.",
            "short",
            [_query(f"sum by (state) (otel_jobs:runs_stalled:sum{{{RECORDED}}})", "{{state}}")],
            _steps((None, GREEN), (1, RED)),
            stacked=True,
            links=[_runbook("OtelJobsRunStalled")],
        )
    )
    d = d.with_panel(
        _timeseries(
            "Age of the oldest run / its max duration",
            "For each job, the age of its oldest run in flight as a share of the job's max duration (100%: over the limit), across its workers (a recording rule: the instance filter does not apply; each worker's ages are on the job dashboard). Empty while no run of the job is in flight; 0 when the job has no max duration.",
            "percentunit",
            [
                _query(
                    "max by (queue, job_name) "
                    f"(otel_jobs:oldest_run_age_over_max_duration:max{{{RECORDED}}})",
                    "{{job_name}} ({{queue}})",
                )
            ],
            _steps((None, GREEN), (0.8, ORANGE), (1, RED)),
            threshold_lines=True,
            links=[_runbook("OtelJobsRunOverMaxDuration")],
            data_links=[_job_link()],
        )
    )
    d = d.with_panel(
        _timeseries(
            "Heartbeat age / its timeout",
            "For each job, the time since the stalest heartbeat among its runs in flight as a share of the job's heartbeat timeout (100%: the run is stalled), across its workers (a recording rule: the instance filter does not apply; each worker's heartbeat ages are on the job dashboard). Empty while no run of the job is in flight.",
            "percentunit",
            [
                _query(
                    "max by (queue, job_name) "
                    f"(otel_jobs:stalest_heartbeat_age_over_timeout:max{{{RECORDED}}})",
                    "{{job_name}} ({{queue}})",
                )
            ],
            _steps((None, GREEN), (0.8, ORANGE), (1, RED)),
            threshold_lines=True,
            links=[_runbook("OtelJobsRunNotHeartbeating")],
            data_links=[_job_link()],
        )
    )
    d = d.with_row(dash.Row("Throughput and failures"))
    d = d.with_panel(
        _timeseries(
            "Runs per second, by outcome",
            "Runs finished per second by outcome (success, failure, retry, timeout, cancelled).",
            "ops",
            [
                _query(
                    f"sum by (outcome) ({FINISHED_RATE}{{{RECORDED}}})",
                    "{{outcome}}",
                )
            ],
            _steps((None, GREEN)),
            stacked=True,
        )
    )
    d = d.with_panel(
        _timeseries(
            "Failure ratio, by job",
            "Share of each job's finished runs that failed or timed out. No line while a job finishes nothing.",
            "percentunit",
            [
                _query(
                    f"sum by (job_name) ({FINISHED_RATE}{{{RECORDED}, {FAILED}}})"
                    f" / (sum by (job_name) ({FINISHED_RATE}{{{RECORDED}}}) > 0)",
                    "{{job_name}}",
                )
            ],
            _steps((None, GREEN), (0.05, ORANGE), (0.2, RED)),
            threshold_lines=True,
            links=[_runbook("OtelJobsFailureRatioHigh")],
            data_links=[_job_link()],
        )
    )
    d = d.with_row(dash.Row("Durations and queue wait"))
    d = d.with_panel(
        _timeseries(
            "Run duration p50 / p95 / p99",
            "Wall time of finished runs, over every selected job.",
            "s",
            _recorded_quantiles("otel_jobs:run_duration_seconds_bucket:rate5m", RECORDED, "", ""),
            _steps((None, GREEN)),
            w=8,
            links=[
                _runbook("OtelJobsDurationAboveMaxDuration"),
                _runbook("OtelJobsDurationAboveUsual"),
            ],
        )
    )
    d = d.with_panel(
        _heatmap(
            "Run duration heatmap",
            "Finished runs per second in each duration bucket (over 5 minutes).",
            RECORDED,
            w=8,
            h=8,
            expr=f"sum by (le) (otel_jobs:run_duration_seconds_bucket:rate5m{{{RECORDED}}})",
        )
    )
    d = d.with_panel(
        _timeseries(
            "Queue wait p50 / p95 / p99, by queue",
            "Time from publish (or due time) to start. A queue whose wait climbs while its workers are busy is often blocked by stuck runs.",
            "s",
            _recorded_quantiles(
                "otel_jobs:queue_wait_seconds_bucket:rate5m", RECORDED, "queue", "{{queue}} "
            ),
            _steps((None, GREEN)),
            w=8,
            links=[_runbook("OtelJobsQueueWaitHigh")],
        )
    )
    d = d.with_row(dash.Row("Queues, as the brokers hold them (otel-jobs monitor)"))
    d = d.with_panel(
        _timeseries(
            "Queue depth by state",
            "Jobs in each queue by state, read from the broker by otel-jobs monitor: waiting, and where the broker keeps them scheduled, reserved, started, deferred, failed, dead. A queue no worker takes shows only under Queue = All (the variable lists the queues workers report). Empty while no monitor runs, or while it cannot read the broker.",
            "short",
            [
                _query(
                    'max by (framework, queue, state) (otel_jobs_queue_depth{queue=~"$queue"})',
                    "{{queue}} {{state}}",
                )
            ],
            _steps((None, GREEN)),
            links=[_runbook("OtelJobsQueueBacklogGrowing"), _runbook("OtelJobsMonitorBrokerDown")],
        )
    )
    d = d.with_panel(
        _timeseries(
            "Oldest waiting job, by queue",
            "How long the job at the head of each queue has waited since it was published (or became due), read from the broker by otel-jobs monitor. The line of a queue nobody drains climbs; it ends when the queue is empty. The dashed line is the default threshold of OtelJobsQueueBacklogOld (600 s).",
            "s",
            [
                _query(
                    "max by (framework, queue) "
                    '(otel_jobs_queue_oldest_waiting_age_seconds{queue=~"$queue"})',
                    "{{queue}} ({{framework}})",
                )
            ],
            _steps((None, GREEN), (600, RED)),
            threshold_lines=True,
            links=[_runbook("OtelJobsQueueBacklogOld")],
        )
    )
    d = d.with_row(dash.Row("Runs lost with their worker (otel-jobs monitor)"))
    d = d.with_panel(
        _timeseries(
            "Runs lost and requeued, by job",
            "Runs whose worker died before they finished (killed, OOM, evicted): counted once each by otel-jobs monitor when the worker's lease expired (A), and those it put back on their queue with --requeue-lost (B). A job lost more than --max-lost times is not requeued again: lost without requeued is a poison job, or a framework whose broker hands runs out again itself. Empty while no monitor runs or no run was lost.",
            "short",
            [
                _query(
                    "sum by (framework, job_name, queue) "
                    f"(increase(otel_jobs_runs_lost_total{{{RECORDED}}}[$__rate_interval]))",
                    "{{job_name}} lost ({{queue}}, {{framework}})",
                ),
                _query(
                    "sum by (framework, job_name, queue) "
                    f"(increase(otel_jobs_runs_requeued_total{{{RECORDED}}}[$__rate_interval]))",
                    "{{job_name}} requeued ({{queue}}, {{framework}})",
                    "B",
                ),
            ],
            _steps((None, GREEN), (1, ORANGE)),
            data_links=[_job_link()],
            links=[
                _runbook("OtelJobsRunLost"),
                _runbook("OtelJobsWorkerVanishedWithRunsInFlight"),
            ],
        )
    )
    d = d.with_panel(
        _timeseries(
            "Runs handed out again, by job",
            "Runs that started from a message handed out again, counted by the worker that ran them: redelivered by the broker (Celery redelivered, Dramatiq, arq, RQ's clean-up of abandoned jobs) or requeued by otel-jobs monitor after their worker died. A steady line is workers dying mid-run, or a Redis visibility timeout shorter than the job.",
            "short",
            [
                _query(
                    "sum by (job_name, queue) "
                    f"(increase(otel_jobs_runs_redelivered_total{{{FLEET}}}[$__rate_interval]))",
                    "{{job_name}} ({{queue}})",
                )
            ],
            _steps((None, GREEN), (1, ORANGE)),
            data_links=[_job_link()],
            links=[_runbook("OtelJobsRunRedelivered")],
        )
    )
    d = d.with_row(dash.Row("Scheduled jobs"))
    d = d.with_panel(_scheduled_jobs())
    d = d.with_row(dash.Row("Outbound calls without a timeout"))
    d = d.with_panel(
        _common(
            table.Panel(),
            "Calls without a timeout, by call site",
            "Outbound calls made with no effective timeout since each worker started, by library, host and the line of your code that made them (module:function:line). Any of them can hang a run forever.",
            "short",
            24,
            7,
        )
        .with_target(
            _query(
                "sum by (instance, library, host, call_site) "
                f"(otel_jobs_outbound_calls_without_timeout_total{{{INSTANCES}}})",
                "",
                instant=True,
                fmt=pm.PromQueryFormat.TABLE,
            )
        )
        .thresholds(_steps((None, ORANGE)))
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "renameByName": {"Value": "calls"},
                    "indexByName": {
                        "call_site": 0,
                        "library": 1,
                        "host": 2,
                        "instance": 3,
                        "Value": 4,
                    },
                },
            )
        )
        .sort_by([common_b.TableSortByFieldState().display_name("calls").desc(True)])
        .no_value("no call without a timeout")
        .links([_runbook("OtelJobsOutboundCallWithoutTimeout")])
    )
    d = d.with_row(dash.Row("Workers"))
    d = d.with_panel(
        _timeseries(
            "Watchdog: seconds since last tick, per instance",
            "The watchdog ticks every OTEL_JOBS_WATCHDOG_INTERVAL (1 s by default). A line that climbs is a worker whose Python threads are frozen; a line that ends is a worker gone.",
            "s",
            [
                _query(
                    f"time() - otel_jobs_watchdog_last_tick_timestamp_seconds{{{INSTANCES}}}",
                    "{{instance}}",
                )
            ],
            _steps((None, GREEN), (10, ORANGE), (60, RED)),
            w=8,
            threshold_lines=True,
            links=[_runbook("OtelJobsWatchdogNotTicking"), _runbook("OtelJobsTargetDown")],
        )
    )
    d = d.with_panel(
        _timeseries(
            "Process CPU, per instance",
            "CPU time per second of each worker process (its forked children included); 100% is one core.",
            "percentunit",
            [
                _query(
                    f"rate(process_cpu_seconds_total{{{INSTANCES}}}[$__rate_interval])"
                    " and on (instance, job) otel_jobs_runs_in_progress",
                    "{{instance}}",
                )
            ],
            _steps((None, GREEN)),
            w=8,
        )
    )
    d = d.with_panel(
        _timeseries(
            "Process memory (RSS), per instance",
            "Resident memory of each worker process (its forked children included).",
            "bytes",
            [
                _query(
                    f"process_resident_memory_bytes{{{INSTANCES}}}"
                    " and on (instance, job) otel_jobs_runs_in_progress",
                    "{{instance}}",
                )
            ],
            _steps((None, GREEN)),
            w=8,
        )
    )
    d = d.with_panel(
        _timeseries(
            "Event loops: seconds blocked now, per thread",
            "How long each asyncio event loop running otel-jobs runs has run nothing, as the watchdog's probe sees it (0 while the loop answers). A busy loop that keeps answering stays below one watchdog interval; a line that climbs is a loop held by a blocking call or a CPU loop in a coroutine, and every run on it waits. The watchdog's loop_blocked WARNING names the line.",
            "s",
            [
                _query(
                    f"otel_jobs_event_loop_blocked_seconds{{{INSTANCES}}}",
                    "{{instance}} {{thread}}",
                )
            ],
            _steps((None, GREEN), (1, ORANGE), (5, RED)),
            threshold_lines=True,
            links=[_runbook("OtelJobsEventLoopBlocked")],
        )
    )
    d = d.with_panel(
        _timeseries(
            "Event loops: lag p99, per thread",
            "How late each event loop ran the watchdog's probe callback, 99th percentile over the rate interval. A loop that keeps up stays in the first buckets (1 to 10 ms); lag that grows means coroutines hold the loop between their awaits.",
            "s",
            [
                _query(
                    "histogram_quantile(0.99, sum by (instance, thread, le) "
                    f"(rate(otel_jobs_event_loop_lag_seconds_bucket{{{INSTANCES}}}[$__rate_interval])))",
                    "{{instance}} {{thread}}",
                )
            ],
            _steps((None, GREEN), (0.1, ORANGE), (1, RED)),
            links=[_runbook("OtelJobsEventLoopBlocked")],
        )
    )
    return d


def _scheduled_jobs() -> Any:
    """One row per scheduled job: a job with an expected_every, or sent by a schedule entry."""
    entries = 'job_name=~"$job_name"'  # the schedulers' series: no worker instance or queue
    scheduled = (
        f"(max by (job_name) (otel_jobs_run_expected_every_seconds{{{RECORDED}}} < +Inf)"
        f" or max by (job_name) (otel_jobs_schedule_interval_seconds{{{entries}}}))"
    )
    columns = {
        "A": ("last success, ago", "s"),
        "B": ("must succeed every", "s"),
        "C": ("next due in", "s"),
        "D": ("failures in a row", "short"),
    }
    queries = {
        # Across every worker, restarted ones and the Pushgateway (no instance matcher).
        "A": f"(time() - max by (job_name) (otel_jobs_last_success_timestamp_seconds{{{RECORDED}}}))"
        f" and on (job_name) {scheduled}",
        "B": scheduled,
        # Negative: overdue (the scheduler sent nothing since; OtelJobsScheduledRunLate).
        "C": f"min by (job_name) (otel_jobs_schedule_next_run_timestamp_seconds{{{entries}}})"
        " - time()",
        "D": f"max by (job_name) (otel_jobs_consecutive_failures{{{RECORDED}}})"
        f" and on (job_name) {scheduled}",
    }
    panel = _common(
        table.Panel(),
        "Scheduled jobs: last success, expected every, next due, failures in a row",
        "Jobs that must succeed every so often (expected_every) or that a scheduler sends (Celery "
        "beat, APScheduler, arq cron jobs, Huey periodic tasks, rq cron). Last success: the latest "
        "of all workers and the Pushgateway. Next due in: negative when the entry is overdue and "
        "its scheduler sent nothing. Click a job to open its dashboard.",
        "s",
        24,
        7,
    )
    for ref, expr in queries.items():
        panel = panel.with_target(_query(expr, "", ref, instant=True, fmt=pm.PromQueryFormat.TABLE))
    panel = (
        panel.thresholds(_steps((None, GREEN)))
        .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "renameByName": {f"Value #{r}": name for r, (name, _) in columns.items()},
                    "indexByName": {
                        "job_name": 0,
                        **{f"Value #{r}": i for i, r in enumerate(columns, start=1)},
                    },
                },
            )
        )
        .sort_by([common_b.TableSortByFieldState().display_name("last success, ago").desc(True)])
        .override_by_name("job_name", [dm.DynamicConfigValue(id_val="links", value=[_link_dict()])])
        .override_by_name(
            "failures in a row",
            [
                dm.DynamicConfigValue(id_val="unit", value="short"),
                dm.DynamicConfigValue(
                    id_val="thresholds",
                    value={
                        "mode": "absolute",
                        "steps": [{"value": None, "color": GREEN}, {"value": 3, "color": RED}],
                    },
                ),
                dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"}),
            ],
        )
        .override_by_name(
            "next due in",
            [
                dm.DynamicConfigValue(
                    id_val="thresholds",
                    value={
                        "mode": "absolute",
                        "steps": [{"value": None, "color": RED}, {"value": -60, "color": GREEN}],
                    },
                ),
                dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"}),
            ],
        )
        .no_value("no scheduled job")
        .links(
            [
                _runbook("OtelJobsNoRecentSuccess"),
                _runbook("OtelJobsScheduledRunLate"),
                _runbook("OtelJobsFailingRepeatedly"),
            ]
        )
    )
    return panel


def _link_dict() -> dict[str, Any]:
    """A field data link (table cell) to the job dashboard for the row's job_name."""
    return {
        "title": "Open in OTel Jobs / Job",
        "url": f"/d/{JOB_UID}/otel-jobs-job?${{__url_time_range}}&${{datasource:queryparam}}"
        "&var-job_name=${__value.raw}",
    }


# --- the job dashboard ------------------------------------------------------------------------


def job() -> dash.Dashboard:
    d = _dashboard(
        JOB_UID,
        "OTel Jobs / Job",
        "One job: its runs in flight against its own max duration and heartbeat timeout, its stalls, timeouts, durations and queue wait.",
        single_job=True,
    )
    d = d.with_row(dash.Row("$job_name now"))
    stats = [
        (
            "Runs stalled now",
            "Runs of this job under a stall verdict now.",
            "short",
            f"sum(otel_jobs_runs_stalled{{{ONE_JOB}}})",
            _steps((None, GREEN), (1, RED)),
            "0",
            [_runbook("OtelJobsRunStalled")],
        ),
        (
            "Runs in progress",
            "Runs of this job in flight now.",
            "short",
            f"sum(otel_jobs_runs_in_progress{{{ONE_JOB}}})",
            _steps((None, BLUE)),
            "0",
            [],
        ),
        (
            "Oldest run age",
            "Age of this job's oldest run in flight.",
            "s",
            f"max(time() - otel_jobs_oldest_run_start_timestamp_seconds{{{ONE_JOB}}})",
            _steps((None, GREEN)),
            "no run in flight",
            [_runbook("OtelJobsRunOverMaxDuration")],
        ),
        (
            "Max duration",
            "The max duration in force for this job (from instrument(jobs=...), the job's own setting, the framework's limit, or the global default).",
            "s",
            f"max(otel_jobs_run_max_duration_seconds{{{ONE_JOB}}})",
            _steps((None, BLUE)),
            "none",
            [],
        ),
        (
            "Heartbeat timeout",
            "The heartbeat timeout in force for this job.",
            "s",
            f"max(otel_jobs_run_heartbeat_timeout_seconds{{{ONE_JOB}}})",
            _steps((None, BLUE)),
            "none",
            [],
        ),
        (
            "Stalls in time range",
            "Stall verdicts given to runs of this job during the dashboard's time range.",
            "short",
            f"sum(increase(otel_jobs_stalls_detected_total{{{ONE_JOB}}}[$__range]))",
            _steps((None, GREEN), (1, RED)),
            "0",
            [_runbook("OtelJobsRunStalled")],
        ),
        (
            "Timeouts in time range",
            "Runs of this job that ended by timeout during the dashboard's time range.",
            "short",
            f'sum(increase(otel_jobs_runs_finished_total{{{ONE_JOB}, outcome="timeout"}}[$__range]))',
            _steps((None, GREEN), (1, ORANGE)),
            "0",
            [_runbook("OtelJobsRunsTimingOut")],
        ),
        (
            "Failure ratio",
            "Share of this job's finished runs that failed or timed out.",
            "percentunit",
            f"sum(rate(otel_jobs_runs_finished_total{{{ONE_JOB}, {FAILED}}}[$__rate_interval]))"
            f" / (sum(rate(otel_jobs_runs_finished_total{{{ONE_JOB}}}[$__rate_interval])) > 0)",
            _steps((None, GREEN), (0.05, ORANGE), (0.2, RED)),
            "-",
            [_runbook("OtelJobsFailureRatioHigh")],
        ),
    ]
    for title, description, unit, expr, steps, no_value, links in stats:
        # increase() extrapolates to the range's edges: a count of events reads best whole.
        whole = 0 if "[$__range]" in expr else None
        d = d.with_panel(
            _stat(
                title,
                description,
                unit,
                expr,
                steps,
                w=3,
                no_value=no_value,
                links=links,
                decimals=whole,
            )  # fmt: skip
        )
    threshold_line = [
        dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": RED}),
        dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
        dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
        dm.DynamicConfigValue(id_val="custom.lineWidth", value=2),
    ]
    d = d.with_panel(
        _timeseries(
            "Age of the oldest run, against the max duration",
            "Age of this job's oldest run in flight on each worker; the dashed red line is the job's max duration (absent when it has none). Empty while no run is in flight.",
            "s",
            [
                _query(
                    f"max by (instance) (time() - otel_jobs_oldest_run_start_timestamp_seconds{{{ONE_JOB}}})",
                    "oldest run on {{instance}}",
                ),
                _query(
                    f"max(otel_jobs_run_max_duration_seconds{{{ONE_JOB}}}) < +Inf",
                    "max duration",
                    "B",
                ),
            ],
            _steps((None, GREEN)),
            links=[_runbook("OtelJobsRunOverMaxDuration")],
        ).override_by_name("max duration", threshold_line)
    )
    d = d.with_panel(
        _timeseries(
            "Heartbeat age, against the heartbeat timeout",
            "Time since the stalest heartbeat among this job's runs in flight on each worker; the dashed red line is the job's heartbeat timeout. Above it, the watchdog gives a stall verdict.",
            "s",
            [
                _query(
                    f"max by (instance) (time() - otel_jobs_stalest_heartbeat_timestamp_seconds{{{ONE_JOB}}})",
                    "heartbeat age on {{instance}}",
                ),
                _query(
                    f"max(otel_jobs_run_heartbeat_timeout_seconds{{{ONE_JOB}}}) < +Inf",
                    "heartbeat timeout",
                    "B",
                ),
            ],
            _steps((None, GREEN)),
            links=[_runbook("OtelJobsRunNotHeartbeating")],
        ).override_by_name("heartbeat timeout", threshold_line)
    )
    d = d.with_panel(
        _timeseries(
            "Runs stalled now, by state",
            "Runs of this job under a stall verdict, by the watchdog's diagnosis. The stack of a stalled run is in the watchdog's log line and on its span.",
            "short",
            [_query(f"sum by (state) (otel_jobs_runs_stalled{{{ONE_JOB}}})", "{{state}}")],
            _steps((None, GREEN), (1, RED)),
            w=8,
            stacked=True,
            links=[_runbook("OtelJobsRunStalled")],
        )
    )
    d = d.with_panel(
        _timeseries(
            "Recent stalls and timeouts",
            "Stall verdicts by reason (no_heartbeat, max_duration) and runs ended by timeout.",
            "short",
            [
                _query(
                    f"sum by (reason) (increase(otel_jobs_stalls_detected_total{{{ONE_JOB}}}[$__rate_interval]))",
                    "stall: {{reason}}",
                ),
                _query(
                    f'sum(increase(otel_jobs_runs_finished_total{{{ONE_JOB}, outcome="timeout"}}[$__rate_interval]))',
                    "timeout",
                    "B",
                ),
            ],
            _steps((None, GREEN)),
            w=8,
            links=[_runbook("OtelJobsRunStalled"), _runbook("OtelJobsRunsTimingOut")],
        )
    )
    d = d.with_panel(
        _timeseries(
            "Runs in progress, per instance",
            "Runs of this job in flight on each worker.",
            "short",
            [
                _query(
                    f"sum by (instance) (otel_jobs_runs_in_progress{{{ONE_JOB}}})",
                    "{{instance}}",
                )
            ],
            _steps((None, GREEN)),
            w=8,
        )
    )
    d = d.with_row(dash.Row("Throughput and failures"))
    d = d.with_panel(
        _timeseries(
            "Runs per second, by outcome",
            "Runs of this job finished per second, by outcome.",
            "ops",
            [
                _query(
                    f"sum by (outcome) (rate(otel_jobs_runs_finished_total{{{ONE_JOB}}}[$__rate_interval]))",
                    "{{outcome}}",
                ),
                _query(
                    f"sum(rate(otel_jobs_runs_started_total{{{ONE_JOB}}}[$__rate_interval]))",
                    "started",
                    "B",
                ),
            ],
            _steps((None, GREEN)),
            links=[_runbook("OtelJobsJobStoppedRunning")],
        )
    )
    d = d.with_panel(
        _timeseries(
            "Failure ratio",
            "Share of this job's finished runs that failed or timed out.",
            "percentunit",
            [
                _query(
                    f"sum(rate(otel_jobs_runs_finished_total{{{ONE_JOB}, {FAILED}}}[$__rate_interval]))"
                    f" / (sum(rate(otel_jobs_runs_finished_total{{{ONE_JOB}}}[$__rate_interval])) > 0)",
                    "failure ratio",
                )
            ],
            _steps((None, GREEN), (0.05, ORANGE), (0.2, RED)),
            threshold_lines=True,
            links=[_runbook("OtelJobsFailureRatioHigh")],
        )
    )
    d = d.with_row(dash.Row("Durations and queue wait"))
    d = d.with_panel(
        _timeseries(
            "Run duration p50 / p95 / p99, against the max duration",
            "Wall time of this job's finished runs; the dashed red line is its max duration.",
            "s",
            [
                *_quantiles("otel_jobs_run_duration_seconds", ONE_JOB, "", ""),
                _query(
                    f"max(otel_jobs_run_max_duration_seconds{{{ONE_JOB}}}) < +Inf",
                    "max duration",
                    "D",
                ),
            ],
            _steps((None, GREEN)),
            w=8,
            links=[
                _runbook("OtelJobsDurationAboveMaxDuration"),
                _runbook("OtelJobsDurationAboveUsual"),
            ],
        ).override_by_name("max duration", threshold_line)
    )
    d = d.with_panel(
        _heatmap(
            "Run duration heatmap",
            "This job's finished runs per duration bucket.",
            ONE_JOB,
            w=8,
            h=8,
        )
    )
    d = d.with_panel(
        _timeseries(
            "Queue wait p50 / p95 / p99",
            "Time from publish (or due time) to start, for this job.",
            "s",
            _quantiles("otel_jobs_queue_wait_seconds", ONE_JOB, "", ""),
            _steps((None, GREEN)),
            w=8,
            links=[_runbook("OtelJobsQueueWaitHigh")],
        )
    )
    return d


# --- output ---------------------------------------------------------------------------------

DASHBOARDS = {"otel-jobs-overview.json": overview, "otel-jobs-job.json": job}


def _with_ids(model: Any) -> Any:
    """Number every panel (rows included) from 1 in grid order: stable, unique ids."""
    for i, panel in enumerate(model.panels or [], start=1):
        panel.id_val = i
    model.schema_version = SCHEMA_VERSION
    return model


def render(name: str, runbooks: str = DEFAULT_RUNBOOKS) -> str:
    """The JSON text of one dashboard, exactly as committed."""
    model = _with_ids(DASHBOARDS[name]().build())
    data = json.loads(json.dumps(model, cls=JSONEncoder))
    data = _finish(data, runbooks)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _finish(data: dict[str, Any], runbooks: str) -> dict[str, Any]:
    """Fill what Grafana expects on import that the SDK leaves out or leaves empty."""
    data["annotations"] = {
        "list": [
            {
                "builtIn": 1,
                "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                "enable": True,
                "hide": True,
                "iconColor": "rgba(0, 211, 255, 1)",
                "name": "Annotations & Alerts",
                "type": "dashboard",
            }
        ]
    }
    data.pop("style", None)  # removed from the schema; Grafana ignores it
    for var in data["templating"]["list"]:
        var.pop("id", None)  # an all-zero placeholder the SDK adds; not part of Grafana's model
        for key in ("auto", "auto_count", "auto_min"):
            if var["type"] != "interval":
                var.pop(key, None)
        if var["name"] == "runbooks":
            var["query"] = runbooks
            var["current"] = {"text": runbooks, "value": runbooks}
            var["hide"] = 2
    for panel in data["panels"]:
        if panel["type"] == "row":
            panel.setdefault("collapsed", False)
            panel.setdefault("panels", [])
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs")
    parser.add_argument(
        "--runbook-url",
        "--runbooks",
        dest="runbooks",
        default=DEFAULT_RUNBOOKS,
        help="base URL where you publish docs/runbooks/ (BASE/AlertName.md), as given to "
        "otel-jobs rules --runbook-url (default: the same placeholder)",
    )
    parser.add_argument("--out", type=Path, default=HERE, help="directory to write to")
    args = parser.parse_args(argv)
    stale = []
    runbooks = args.runbooks.rstrip("/")
    for name in DASHBOARDS:
        text = render(name, runbooks)
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date (run python -m dashboards.build): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

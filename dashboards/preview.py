"""Render a preview image of each dashboard from real data (not a Grafana screenshot).

Grafana is not needed: this starts the live stack of :mod:`dashboards.live` (the demo and a
queue-fed worker, scraped every second by a real Prometheus), lets it run, then runs every
query of the committed dashboards exactly as Grafana would (same PromQL, variables
substituted) and draws each panel at its grid position with matplotlib: stat panels as
numbers coloured by their thresholds, time series with their threshold lines, the
heatmap, and the tables. Each image says, on it, that it is a preview rendered from
Prometheus data and not a Grafana screenshot.

    python -m dashboards.preview                       # docs/images/otel-jobs-*.png
    python -m dashboards.preview --seconds 90 --job demo.sync_partner
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from . import build, live

OUT = live.ROOT / "docs" / "images"
LABEL = "preview rendered from Prometheus data, not a Grafana screenshot"

# Grafana's dark theme, roughly.
BG, PANEL, TEXT, MUTED, GRID = "#111217", "#181b1f", "#ccccdc", "#8e8e9e", "#2c3235"
COLORS = {"green": "#73bf69", "orange": "#ff9830", "red": "#f2495c", "blue": "#5794f2"}
PALETTE = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#fade2a"]
SERIES_COLORS = {
    "success": "#73bf69", "failure": "#f2495c", "timeout": "#ff9830",
    "blocked": "#f2495c", "spinning": "#ff9830", "unknown": "#8e8e9e",
}  # fmt: skip
COL_PX, ROW_PX, DPI = 70, 30, 100


# --- units -----------------------------------------------------------------------------------


def fmt(value: float, unit: str) -> str:
    """A value as Grafana would print it in ``unit`` (the units these dashboards use)."""
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "none" if value > 0 else "-inf"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "s":
        if value >= 3600:
            return f"{value / 3600:.1f} h"
        if value >= 60:
            return f"{value / 60:.1f} min"
        if value >= 1:
            return f"{value:.1f} s"
        return f"{value * 1000:.0f} ms"
    if unit == "bytes":
        for suffix, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if value >= size:
                return f"{value / size:.1f} {suffix}"
        return f"{value:.0f} B"
    if unit == "ops":
        return f"{value:.2f} ops/s"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def axis_fmt(value: float, unit: str) -> str:
    """A shorter label for axis ticks."""
    if unit == "ops":
        return f"{value:g}/s"
    return fmt(value, unit)


def threshold_color(value: float, panel: dict[str, Any]) -> str:
    color = "green"
    for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]:
        if step["value"] is None or (not math.isnan(value) and value >= step["value"]):
            color = step["color"]
    return COLORS.get(color, color)


def legend(template: str, labels: dict[str, str]) -> str:
    if template in ("", "__auto"):
        return (
            ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"
        )
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip()


# --- drawing one panel -------------------------------------------------------------------------


def _axes_style(ax: Axes) -> None:
    ax.set_facecolor(PANEL)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(colors=MUTED, labelsize=7, length=0)
    ax.grid(True, color=GRID, linewidth=0.6)


def _no_data(ax: Axes, why: str = "No data") -> None:
    ax.text(
        0.5, 0.45, why, transform=ax.transAxes, ha="center", va="center", color=MUTED, fontsize=10
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _series(
    stack: live.Stack, target: dict[str, Any], variables: dict[str, str], start: float, end: float
) -> list[dict[str, Any]]:
    expr = live.substitute(target["expr"], variables)
    if target.get("instant"):
        return stack.query(expr, at=end)
    return stack.query_range(expr, start, end, step=1)


def draw_stat(ax: Axes, panel: dict[str, Any], result: list[dict[str, Any]]) -> None:
    unit = panel["fieldConfig"]["defaults"]["unit"]
    points = [
        (float(t), float(v)) for s in result for t, v in s["values"] if not math.isnan(float(v))
    ]
    if not points:
        text = panel["fieldConfig"]["defaults"].get("noValue", "No data")
        value = math.nan
    else:
        value = max(points)[1]  # the last value
        decimals = panel["fieldConfig"]["defaults"].get("decimals")
        text = fmt(round(value, decimals) if decimals is not None else value, unit)
    color = threshold_color(0.0 if math.isnan(value) else value, panel)
    ax.set_facecolor(color)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if points and not math.isinf(value):
        xs = [p[0] for p in sorted(points)]
        ys = [p[1] for p in sorted(points)]
        top = max(max(ys), 1e-9)
        ax.fill_between(xs, [y / top * 0.45 for y in ys], color="white", alpha=0.18, linewidth=0)
        ax.set_xlim(min(xs), max(xs))
        ax.set_ylim(0, 1)
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        color="white",
        fontsize=17,
        fontweight="bold",
    )


def draw_timeseries(
    ax: Axes,
    panel: dict[str, Any],
    data: list[tuple[dict[str, Any], list[dict[str, Any]]]],
    t0: float,
) -> None:
    _axes_style(ax)
    defaults = panel["fieldConfig"]["defaults"]
    unit = defaults["unit"]
    custom = defaults.get("custom", {})
    stacked = custom.get("stacking", {}).get("mode") == "normal"
    bars = custom.get("drawStyle") == "bars"
    dashed = {o["matcher"]["options"] for o in panel["fieldConfig"].get("overrides", [])}
    lines: list[tuple[str, list[float], list[float]]] = []
    for target, result in data:
        for s in result:
            xs = [float(t) - t0 for t, v in s["values"]]
            ys = [float(v) for t, v in s["values"]]
            lines.append((legend(target.get("legendFormat", ""), s["metric"]), xs, ys))
    finite = [(n, xs, ys) for n, xs, ys in lines if any(math.isfinite(y) for y in ys)]
    if not finite:
        _no_data(ax)
        return
    base: dict[float, float] = {}
    for i, (name, xs, ys) in enumerate(sorted(finite, key=lambda line: line[0])):
        color = SERIES_COLORS.get(name, PALETTE[i % len(PALETTE)])
        if name in dashed:
            ax.plot(xs, ys, color=COLORS["red"], linestyle=(0, (6, 4)), linewidth=1.6, label=name)
        elif bars:
            ax.bar(
                xs, ys, width=0.9, color=color, label=name, bottom=[base.get(x, 0.0) for x in xs]
            )
            for x, y in zip(xs, ys, strict=True):
                base[x] = base.get(x, 0.0) + (y if math.isfinite(y) else 0.0)
        elif stacked and not any(y for y in ys if math.isfinite(y)):
            ax.plot([], [], color=color, linewidth=1, label=name)  # in the legend, drawn as 0
        elif stacked:
            bottom = [base.get(x, 0.0) for x in xs]
            top = [b + (y if math.isfinite(y) else 0.0) for b, y in zip(bottom, ys, strict=True)]
            ax.fill_between(xs, bottom, top, color=color, alpha=0.35, linewidth=0)
            ax.plot(xs, top, color=color, linewidth=1, label=name)
            for x, y in zip(xs, top, strict=True):
                base[x] = y
        else:
            ax.plot(xs, ys, color=color, linewidth=1.2, label=name)
    if custom.get("thresholdsStyle", {}).get("mode", "off") != "off":
        for step in defaults["thresholds"]["steps"][1:]:
            ax.axhline(
                step["value"],
                color=COLORS.get(step["color"], step["color"]),
                linestyle=(0, (4, 4)),
                linewidth=1,
            )
    if defaults.get("min") == 0:
        ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: axis_fmt(v, unit)))
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0f}s"))
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) > 9:
        handles, labels = handles[:9], labels[:8] + [f"... {len(labels) - 8} more"]
    ax.legend(
        handles,
        labels,
        loc="upper left",
        fontsize=6.5,
        frameon=False,
        labelcolor=TEXT,
        ncol=2 if len(labels) > 4 else 1,
    )


def draw_heatmap(ax: Axes, panel: dict[str, Any], result: list[dict[str, Any]], t0: float) -> None:
    _axes_style(ax)
    buckets: dict[float, dict[float, float]] = {}
    for s in result:
        le = float(s["metric"].get("le", "nan"))
        buckets[le] = {float(t) - t0: float(v) for t, v in s["values"]}
    # Bucket counts are cumulative: a cell is its bucket minus the one below.
    order = sorted(buckets)
    times = sorted({t for b in buckets.values() for t in b})
    cells = []
    for i, le in enumerate(order):
        below = buckets[order[i - 1]] if i else {}
        cells.append([max(buckets[le].get(t, 0.0) - below.get(t, 0.0), 0.0) for t in times])
    used = [i for i, row in enumerate(cells) if any(v > 0 for v in row)]
    if not used or not times:
        _no_data(ax)
        return
    lo, hi = max(min(used) - 1, 0), min(max(used) + 1, len(order) - 1)
    rows = cells[lo : hi + 1]
    labels = [fmt(le, "s") if math.isfinite(le) else "+Inf" for le in order[lo : hi + 1]]
    matrix = [[v if v > 0 else math.nan for v in row] for row in rows]
    ax.imshow(matrix, aspect="auto", origin="lower", cmap="Oranges", norm=LogNorm(vmin=0.1), interpolation="nearest",
              extent=(times[0], times[-1], -0.5, len(rows) - 0.5))  # fmt: skip
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"<= {lab}" for lab in labels])
    ax.grid(False)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0f}s"))


def draw_table(ax: Axes, panel: dict[str, Any], result: list[dict[str, Any]]) -> None:
    ax.set_facecolor(PANEL)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    organize: dict[str, Any] = next(
        (t["options"] for t in panel.get("transformations", []) if t["id"] == "organize"), {}
    )
    order = sorted(organize.get("indexByName", {}), key=lambda k: organize["indexByName"][k])
    rename = organize.get("renameByName", {})
    if not result:
        _no_data(ax, panel["fieldConfig"]["defaults"].get("noValue", "No data"))
        return
    rows = sorted(result, key=lambda r: -float(r["value"][1]))[:8]
    header = [rename.get(c, c) for c in order]
    cells = [
        [
            fmt(float(r["value"][1]), "short") if c == "Value" else r["metric"].get(c, "")
            for c in order
        ]
        for r in rows
    ]
    table = ax.table(
        cellText=cells, colLabels=header, loc="upper center", cellLoc="left", colLoc="left"
    )
    table.auto_set_font_size(False)
    table.set_fontsize(7.5)
    for (row, _col), cell in table.get_celld().items():
        cell.set_edgecolor(GRID)
        cell.set_facecolor(PANEL if row else "#22252b")
        cell.get_text().set_color(TEXT if row else MUTED)
        cell.set_height(0.12)


# --- a whole dashboard ------------------------------------------------------------------------


def render(
    stack: live.Stack, name: str, variables: dict[str, str], path: Path, subtitle: str
) -> Path:
    dashboard = json.loads((build.HERE / name).read_text())
    panels = dashboard["panels"]
    height_units = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    header_px = 90
    width_px, height_px = 24 * COL_PX, height_units * ROW_PX + header_px
    fig: Figure = plt.figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, facecolor=BG)
    end = time.time()
    start = max(stack.started, end - 300)
    fig.text(
        0.01,
        1 - 22 / height_px,
        dashboard["title"],
        color=TEXT,
        fontsize=16,
        fontweight="bold",
        va="center",
    )
    fig.text(0.01, 1 - 50 / height_px, subtitle, color=MUTED, fontsize=9, va="center")
    fig.text(
        0.99,
        1 - 22 / height_px,
        LABEL.upper(),
        color=COLORS["orange"],
        fontsize=10,
        fontweight="bold",
        ha="right",
        va="center",
    )
    fig.text(
        0.99,
        1 - 50 / height_px,
        datetime.now(timezone.utc).strftime("rendered %Y-%m-%d %H:%M UTC"),
        color=MUTED,
        fontsize=8,
        ha="right",
        va="center",
    )
    pad = 4
    for panel in panels:
        g = panel["gridPos"]
        left = (g["x"] * COL_PX + pad) / width_px
        top_px = header_px + g["y"] * ROW_PX
        if panel["type"] == "row":
            fig.text(left, 1 - (top_px + ROW_PX / 2) / height_px, panel["title"].replace("$job_name", variables["job_name"]),
                     color=TEXT, fontsize=11, fontweight="bold", va="center")  # fmt: skip
            continue
        title_px = 18
        bottom = 1 - (top_px + g["h"] * ROW_PX - pad) / height_px
        height = (g["h"] * ROW_PX - 2 * pad - title_px) / height_px
        width = (g["w"] * COL_PX - 2 * pad) / width_px
        fig.patches.append(plt.Rectangle((left, bottom), width, height + title_px / height_px, transform=fig.transFigure,
                                         facecolor=PANEL, edgecolor=GRID, linewidth=0.8, zorder=-10))  # fmt: skip
        fig.text(left + 6 / width_px, bottom + height + title_px / 2 / height_px, panel["title"], color=TEXT, fontsize=8.5,
                 fontweight="bold", va="center")  # fmt: skip
        inset = 34 / width_px if panel["type"] in ("timeseries", "heatmap") else 0
        ax = fig.add_axes((left + inset + 4 / width_px, bottom + (14 / height_px if inset else 0), width - inset - 8 / width_px,
                           height - (16 / height_px if inset else 0)))  # fmt: skip
        data = [(t, _series(stack, t, variables, start, end)) for t in panel["targets"]]
        if panel["type"] == "stat":
            draw_stat(ax, panel, data[0][1])
        elif panel["type"] == "timeseries":
            draw_timeseries(ax, panel, data, start)
        elif panel["type"] == "heatmap":
            draw_heatmap(ax, panel, data[0][1], start)
        elif panel["type"] == "table":
            draw_table(ax, panel, data[0][1])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, facecolor=BG, dpi=DPI)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=90, help="how long the workload runs first"
    )
    parser.add_argument(
        "--job", default="demo.sync_partner", help="job_name shown by the job dashboard"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if live.prometheus_binary() is None:
        print("prometheus is not installed: apt-get install -y prometheus", file=sys.stderr)
        return 1
    with live.Stack(duration=args.seconds + 60) as stack:
        time.sleep(max(args.seconds - (time.time() - stack.started), 0))
        all_ = {
            "instance": ".*",
            "queue": ".*",
            "job_name": ".*",
            "runbooks": build.DEFAULT_RUNBOOKS,
        }
        span = f"last {time.time() - stack.started:.0f} s of otel-jobs demo and a queue-fed worker"
        for name, variables, subtitle in (
            ("otel-jobs-overview.json", all_, f"instance=All, queue=All, job_name=All; {span}"),
            ("otel-jobs-job.json", {**all_, "job_name": args.job}, f"job_name={args.job}; {span}"),
        ):
            path = render(
                stack, name, variables, args.out / name.replace(".json", ".png"), subtitle
            )
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

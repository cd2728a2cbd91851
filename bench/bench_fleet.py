"""A simulated fleet: a real Prometheus scraping hundreds of workers, and what it costs it.

    .venv/bin/python -m bench.bench_fleet               # 100 then 200 targets x 50 jobs (minutes)
    .venv/bin/python -m bench.bench_fleet --targets 20  # one size
    .venv/bin/python -m bench --only fleet --quick      # 20 targets, a minute (tests/bench)

What runs, on 127.0.0.1 and free ports:

* a target server (one process, one port, one path per target: ``/w/<n>/metrics``) replaying a
  recorded scrape of a real instrumented worker that ran every job name (success, failures,
  queue waits): every target serves it with its own ``instance`` label and its counters moving
  (each scrape multiplies every counter, bucket, count and sum by a factor that grows with time
  at the target's own pace, which keeps every histogram consistent);
* two real workers (``python -m dashboards.live queue-worker``);
* Debian's ``prometheus`` with a temporary TSDB, loading the shipped recording rules and alerts.

Then Prometheus' own figures are read: head series (``prometheus_tsdb_head_series``), each rule
group's evaluation time (``prometheus_rule_group_last_duration_seconds``, the median once the
records' 5-minute windows are full), all groups' together, Prometheus' CPU and resident memory,
and the slowest query of both dashboards (every panel query run as Grafana would, over the last
hour, timed at the client). Targets: every rule group under 1 s and every dashboard query under
2 s. With two sizes, the figures per added target (the slope) give 1,000 workers. The records
derive the alerts' long windows from their 5-minute reads, so the run needs minutes, not the
hour the windows span.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ._timing import row

ROOT = Path(__file__).resolve().parents[1]
RULE_TARGET, QUERY_TARGET = 1.0, 2.0


# --- a recorded worker scrape -------------------------------------------------------------------


def record_scrape(jobs: int) -> str:
    """The /metrics text of a real instrumented process that ran ``jobs`` job names."""
    code = f"""
import time, urllib.request
from opentelemetry import trace
import otel_jobs
from otel_jobs.core import agent as agent_mod
otel_jobs.instrument(tracer_provider=trace.NoOpTracerProvider(), prometheus_port=0,
                     frameworks=[], outbound=[], watchdog=False)
agent = agent_mod.current()
for i in range({jobs}):
    for k in range(5):
        run = agent.start_run(f"app.job{{i:03d}}", queue=f"q{{i % 5}}",
                              enqueued_at=time.time() - 0.2 * (k + 1))
        run.finish("failure" if (i % 10 == 0 and k == 0) else "success")
print(urllib.request.urlopen(otel_jobs.metrics_url()).read().decode())
otel_jobs.uninstrument()
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    return done.stdout


class Replay:
    """Serves the recorded scrape for ``targets`` paths, counters moving per target."""

    def __init__(self, text: str, targets: int) -> None:
        self.started = time.time()
        self.targets = targets
        self.lines: list[tuple[str, float, bool]] = []
        counted: set[str] = set()
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                if kind in ("counter", "histogram"):
                    counted.add(name)
            if not line or line.startswith("#"):
                self.lines.append((line, 0.0, False))
                continue
            head, _, value = line.rpartition(" ")
            name = head.split("{", 1)[0]
            base = name.removesuffix("_total").removesuffix("_bucket")
            base = base.removesuffix("_count").removesuffix("_sum")
            moving = name in counted or base in counted
            self.lines.append((head, float(value), moving))

    def render(self, target: int) -> bytes:
        # Target n's counters grow by (1 + n % 7) / 10 of their recorded value per minute.
        factor = 1.0 + (time.time() - self.started) / 60.0 * (1 + target % 7) / 10.0
        out = []
        for head, value, moving in self.lines:
            if not head or head.startswith("#"):
                out.append(head)
            else:
                out.append(f"{head} {value * factor if moving else value:.6g}")
        return ("\n".join(out) + "\n").encode()

    def serve(self) -> tuple[ThreadingHTTPServer, int]:
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.split("/")
                try:
                    body = replay.render(int(parts[2]))
                except (IndexError, ValueError):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, int(server.server_address[1])


# --- Prometheus ---------------------------------------------------------------------------------


def _get(url: str, params: dict[str, Any]) -> Any:
    with urllib.request.urlopen(f"{url}?{urllib.parse.urlencode(params)}", timeout=120) as resp:
        data = json.loads(resp.read())
    if data.get("status") != "success":
        raise RuntimeError(f"{params}: {data}")
    return data["data"]


def measure(targets: int, jobs: int, seconds: float, interval: int) -> dict[str, Any]:
    """Run the fleet of ``targets`` for ``seconds``; Prometheus' figures."""
    from dashboards import build, live

    binary = live.prometheus_binary()
    if binary is None:
        raise FileNotFoundError("prometheus is not installed (apt-get install -y prometheus)")
    tmp = Path(tempfile.mkdtemp(prefix="otel-jobs-fleet-"))
    replay = Replay(record_scrape(jobs), targets)
    server, port = replay.serve()
    workers = [live.free_port(), live.free_port()]
    prom_port = live.free_port()
    url = f"http://127.0.0.1:{prom_port}"
    config = {
        "global": {"scrape_interval": f"{interval}s", "scrape_timeout": f"{interval}s",
                   "evaluation_interval": f"{interval}s"},
        "rule_files": [str(ROOT / "alerts" / "otel-jobs.records.yml"),
                       str(ROOT / "alerts" / "otel-jobs.rules.yml")],
        "scrape_configs": [
            {"job_name": "otel-jobs", "static_configs": [
                {"targets": [f"127.0.0.1:{port}"],
                 "labels": {"__metrics_path__": f"/w/{n}/metrics", "instance": f"worker-{n}:9464"}}
                for n in range(targets)
            ] + [{"targets": [f"127.0.0.1:{p}" for p in workers]}]},
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{prom_port}"]}]},
        ],
    }  # fmt: skip
    (tmp / "prometheus.yml").write_text(json.dumps(config))
    procs = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        with open(tmp / "prometheus.log", "wb") as log:
            procs.append(subprocess.Popen(
                [binary, f"--config.file={tmp / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
                 "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            ))  # fmt: skip
        for p in workers:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "dashboards.live", "queue-worker", "--port", str(p),
                 "--duration", f"{seconds + 60:.0f}"], cwd=ROOT, env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            ))  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                up = _get(f"{url}/api/v1/query", {"query": 'count(up{job="otel-jobs"} == 1)'})
                if up["result"] and float(up["result"][0]["value"][1]) >= targets:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"targets not up\n{(tmp / 'prometheus.log').read_text()}")
            time.sleep(1)
        started = time.time()
        time.sleep(seconds)

        def scalar(expr: str) -> float:
            result = _get(f"{url}/api/v1/query", {"query": expr})["result"]
            return float(result[0]["value"][1]) if result else float("nan")

        # The median evaluation (the machine is shared: a single one may wait), once the 5m
        # windows the records read are full.
        window = f"{max(int(seconds) - 300 if seconds >= 360 else int(seconds), 2 * interval)}s"
        groups = {
            r["metric"]["rule_group"].rsplit(";", 1)[-1]: float(r["value"][1])
            for r in _get(f"{url}/api/v1/query", {"query": "quantile_over_time(0.5, "
                          f"prometheus_rule_group_last_duration_seconds[{window}])"})["result"]
        }  # fmt: skip
        all_groups = scalar(
            "quantile_over_time(0.5, (sum(prometheus_rule_group_last_duration_seconds))"
            f"[{window}:{interval}s])"
        )
        cpu = scalar(f'rate(process_cpu_seconds_total{{job="prometheus"}}[{window}])')
        queries: dict[str, float] = {}
        end = time.time()
        rate_interval = f"{4 * interval}s"
        for name in build.DASHBOARDS:
            dashboard = json.loads(build.render(name))
            variables = {v["name"]: ".*" for v in dashboard["templating"]["list"]}
            variables.update(datasource="prometheus", runbooks=build.DEFAULT_RUNBOOKS)
            if name == "otel-jobs-job.json":
                variables["job_name"] = "app.job001"
            for panel in live.panels(dashboard):
                for target in panel["targets"]:
                    expr = live.substitute(
                        target["expr"].replace("$__rate_interval", rate_interval), variables
                    )
                    t0 = time.perf_counter()
                    if target.get("instant"):
                        _get(f"{url}/api/v1/query", {"query": expr})
                    else:
                        _get(f"{url}/api/v1/query_range",
                             {"query": expr, "start": max(started, end - 3600), "end": end,
                              "step": interval})  # fmt: skip
                    key = f"{name.removesuffix('.json')}: {panel['title']} ({target['refId']})"
                    queries[key] = time.perf_counter() - t0
        rss = 0.0
        with open(f"/proc/{procs[0].pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = float(line.split()[1]) * 1024
        return {
            "targets": targets,
            "jobs": jobs,
            "seconds": seconds,
            "head_series": scalar("prometheus_tsdb_head_series"),
            "series_per_target": scalar('count({job="otel-jobs", instance="worker-0:9464"})'),
            "rule_groups": groups,
            "all_groups": all_groups,
            "cpu_cores": cpu,
            "queries": queries,
            "rss_bytes": rss,
        }
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        server.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def rows_of(found: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    size = f"{found['targets']} targets x {found['jobs']} jobs"
    slowest = max(found["queries"].items(), key=lambda kv: kv[1])
    out = [
        row(f"Fleet, {size}", subject="Prometheus head series", value=found["head_series"],
            unit="series", note=f"{found['series_per_target']:.0f} per replayed worker"),
        row(f"Fleet, {size}", subject="Prometheus resident memory",
            value=found["rss_bytes"] / 1e6, unit="MB"),
        row(f"Fleet, {size}", subject="Prometheus CPU (scrapes, rules, queries)",
            value=max(found["cpu_cores"], 1e-6), unit="cores"),
        row(f"Fleet, {size}", subject="all rule groups, one evaluation each (median)",
            value=max(found["all_groups"] * 1e3, 1e-3), unit="ms"),
        row(f"Fleet, {size}", subject=f"slowest dashboard query: {slowest[0]}",
            value=slowest[1] * 1e3, unit="ms",
            target="" if quick else f"< {QUERY_TARGET:g} s",
            met=None if quick else slowest[1] < QUERY_TARGET,
            note=f"median of {len(found['queries'])} queries "
            f"{statistics.median(found['queries'].values()) * 1e3:.0f} ms"),
    ]  # fmt: skip
    for group, seconds in sorted(found["rule_groups"].items()):
        out.append(
            row(
                f"Fleet, {size}",
                subject=f"rule group {group} (median evaluation)",
                value=max(seconds * 1e3, 1e-3),
                unit="ms",
                target="" if quick else f"< {RULE_TARGET:g} s",
                met=None if quick else seconds < RULE_TARGET,
            )  # fmt: skip
        )
    return out


def run(quick: bool = False) -> list[dict[str, Any]]:
    """For ``python -m bench``: 20 targets for 30 s (quick), else 200 for 8 minutes."""
    if quick:
        return rows_of(measure(20, 50, 30, 5), quick=True)
    return rows_of(measure(200, 50, 480, 15), quick=False)


def main(argv: list[str] | None = None) -> int:
    from .run import table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="100,200", help="comma-separated sizes")
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=480)
    parser.add_argument("--interval", type=int, default=15, help="scrape and rule interval")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    results = []
    for size in (int(s) for s in args.targets.split(",")):
        print(f"running {size} targets for {args.seconds:.0f}s...", file=sys.stderr, flush=True)
        results.append(measure(size, args.jobs, args.seconds, args.interval))
    rows = [r for found in results for r in rows_of(found, quick=False)]
    print(table(rows))
    for found in results:
        slowest = sorted(found["queries"].items(), key=lambda kv: -kv[1])[:3]
        print(f"\n{found['targets']} targets, slowest dashboard queries: "
              + "; ".join(f"{name} {s * 1e3:.0f} ms" for name, s in slowest))  # fmt: skip
    if len(results) >= 2:
        a, b = results[0], results[-1]
        span = b["targets"] - a["targets"]
        per_target = (b["head_series"] - a["head_series"]) / span
        print(f"\nslope: {per_target:.0f} head series per worker; at 1,000 workers: "
              f"{b['head_series'] + per_target * (1000 - b['targets']):,.0f} series")  # fmt: skip
        for group in sorted(b["rule_groups"]):
            slope = (b["rule_groups"][group] - a["rule_groups"].get(group, 0.0)) / span
            at = b["rule_groups"][group] + slope * (1000 - b["targets"])
            print(
                f"rule group {group}: {slope * 1e3:.3f} ms per worker; at 1,000: {at * 1e3:.0f} ms"
            )
        slope = (b["all_groups"] - a["all_groups"]) / span
        print(f"all rule groups: {slope * 1e3:.3f} ms per worker; at 1,000: "
              f"{(b['all_groups'] + slope * (1000 - b['targets'])) * 1e3:.0f} ms")  # fmt: skip
        slope = (b["cpu_cores"] - a["cpu_cores"]) / span
        print(f"Prometheus CPU: {slope * 1e3:.2f} millicores per worker; at 1,000: "
              f"{b['cpu_cores'] + slope * (1000 - b['targets']):.2f} cores")  # fmt: skip
        rss_slope = (b["rss_bytes"] - a["rss_bytes"]) / span
        print(f"memory: {rss_slope / 1e6:.2f} MB per worker; at 1,000: "
              f"{(b['rss_bytes'] + rss_slope * (1000 - b['targets'])) / 1e9:.1f} GB")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

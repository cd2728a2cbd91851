"""Fork safety under load: forking while the watchdog ticks, jobs run and exporters export.

A real worker subprocess exports spans over OTLP/HTTP to a local receiver (its batch processor
sending every 20 ms, a thread forcing flushes on top), ticks its watchdog every 5 ms and runs
jobs with heartbeats in four threads without pause. Meanwhile it forks children twelve times,
half with ``multiprocessing`` (fork context) and half with ``os.fork()`` called from a thread,
each child running jobs of its own and exiting at once (``os._exit``, as pools and RQ's
horse do). ``tests/core/test_fork.py`` covers forking an idle worker; this is the busy case:

* no deadlock: every child completes its jobs and exits within a generous deadline (a child
  stuck on a lock held at fork time would not);
* exactly one watchdog thread in each child;
* nothing of the parent's counted or exported twice: ``/metrics`` of the parent shows exactly
  the runs the parent made and the runs the children made, and no span reaches the receiver
  twice (a child re-exporting the spans queued in its parent would send them again).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.core.test_otlp import otlp_env
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.support import scrape

CHILD_RUNS = 20
FORKS = 12
DEADLINE = 60.0

WORKER = textwrap.dedent(
    """
    import json, multiprocessing, os, sys, threading, time
    import otel_jobs
    from opentelemetry import trace

    CHILD_RUNS, FORKS, DEADLINE = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    otel_jobs.instrument(prometheus_port=0, watchdog_interval=0.005)

    @otel_jobs.job(name="busy.parent", queue="busy")
    def parent_job():
        otel_jobs.heartbeat(progress=0.5)
        time.sleep(0.001)

    @otel_jobs.job(name="busy.child", queue="busy")
    def child_job(i):
        otel_jobs.heartbeat(progress=0.5)
        return i

    def child_body():
        done = sum(1 for i in range(CHILD_RUNS) if child_job(i) == i)
        watchdogs = sum(1 for t in threading.enumerate() if t.name == "otel-jobs-watchdog")
        trace.get_tracer_provider().force_flush()  # spans out before os._exit
        return {"pid": os.getpid(), "done": done, "watchdogs": watchdogs}

    def mp_child(queue):
        queue.put(child_body())

    stop = threading.Event()
    counts = [0, 0, 0, 0]

    def churn(k):
        while not stop.is_set():
            parent_job()
            counts[k] += 1

    def flusher():
        while not stop.is_set():
            trace.get_tracer_provider().force_flush()
            time.sleep(0.01)

    threads = [threading.Thread(target=churn, args=(k,)) for k in range(4)]
    threads.append(threading.Thread(target=flusher))
    for t in threads:
        t.start()
    time.sleep(0.3)

    ctx = multiprocessing.get_context("fork")
    reports, problems = [], []

    def wait_child(pid):
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        return "deadlocked"

    def raw_fork(out):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(read)
                os.write(write, json.dumps(child_body()).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        exit_code = wait_child(pid)
        with os.fdopen(read) as f:
            data = f.read()
        out.append((exit_code, json.loads(data) if data else None))

    for n in range(FORKS):
        if n % 2 == 0:
            queue = ctx.Queue()
            p = ctx.Process(target=mp_child, args=(queue,))
            p.start()
            p.join(DEADLINE)
            if p.is_alive():
                p.kill()
                p.join()
                problems.append("multiprocessing child deadlocked")
                continue
            reports.append(queue.get(timeout=DEADLINE) if p.exitcode == 0 else None)
            if p.exitcode != 0:
                problems.append(f"multiprocessing child exit code {p.exitcode}")
        else:
            out = []
            forker = threading.Thread(target=raw_fork, args=(out,))
            forker.start()
            forker.join(DEADLINE + 10)
            exit_code, report = out[0] if out else ("no result", None)
            if exit_code != 0:
                problems.append(f"os.fork child: {exit_code}")
            reports.append(report)
        time.sleep(0.05)

    stop.set()
    for t in threads:
        t.join()
    watchdogs = sum(1 for t in threading.enumerate() if t.name == "otel-jobs-watchdog")
    trace.get_tracer_provider().force_flush()
    print(json.dumps({
        "url": otel_jobs.metrics_url(), "parent_runs": sum(counts), "reports": reports,
        "problems": problems, "watchdogs": watchdogs,
    }), flush=True)
    sys.stdin.readline()
    otel_jobs.uninstrument()
    """
)


def test_forking_a_busy_worker_neither_deadlocks_nor_duplicates() -> None:
    with OtlpReceiver("http/protobuf") as receiver:
        env = otlp_env(
            receiver.endpoint,
            "http/protobuf",
            OTEL_BSP_SCHEDULE_DELAY="20",
            OTEL_METRIC_EXPORT_INTERVAL="100",
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(CHILD_RUNS), str(FORKS), str(DEADLINE)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdin is not None
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            report = json.loads(line)
            m = scrape(report["url"])
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()

        def children_spans() -> list[ReceivedSpan] | None:
            spans = receiver.spans()
            enough = len([s for s in spans if s.name == "busy.child"]) >= FORKS * CHILD_RUNS
            return spans if enough else None

        spans = receiver.wait_for("the children's spans", children_spans)

    assert report["problems"] == []
    children = report["reports"]
    assert len(children) == FORKS and all(c is not None for c in children)
    assert [c["done"] for c in children] == [CHILD_RUNS] * FORKS
    assert [c["watchdogs"] for c in children] == [1] * FORKS  # exactly one per child
    assert report["watchdogs"] == 1
    assert len({c["pid"] for c in children}) == FORKS

    parent_runs = report["parent_runs"]
    assert parent_runs > 0
    started = m.value("otel_jobs_runs_started_total", job_name="busy.parent", queue="busy")
    finished = m.total("otel_jobs_runs_finished_total", job_name="busy.parent", queue="busy")
    assert started == finished == parent_runs  # the parent's runs, none counted by a child
    assert m.value("otel_jobs_runs_started_total", job_name="busy.child", queue="busy") == (
        FORKS * CHILD_RUNS
    )
    assert m.value(
        "otel_jobs_runs_finished_total", job_name="busy.child", queue="busy", outcome="success"
    ) == (FORKS * CHILD_RUNS)
    # No span exported twice: a child never re-sends what its parent had queued.
    assert len({s.span_id for s in spans}) == len(spans)
    assert len([s for s in spans if s.name == "busy.child"]) == FORKS * CHILD_RUNS
    assert len([s for s in spans if s.name == "busy.parent"]) <= parent_runs

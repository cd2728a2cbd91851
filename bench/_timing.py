"""Timing helpers shared by the benchmarks: interleaved repetitions, medians, result rows, and
a benchmark measured in a process of its own (:func:`measured_apart`, :func:`main`)."""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def interleaved(
    contenders: dict[str, Callable[[], object]], *, reps: int, number: int, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """Time each contender ``number`` calls at a time, ``reps`` rounds, taking turns.

    Every round runs each contender once (in an order that alternates between rounds, so that
    none always runs right after another), in the same process. Returns, per contender, the
    median seconds per call and, per pair, nothing: ratios are taken per round by :func:`ratio`
    so that a slow moment of the machine affects both sides of a round alike. Each contender's
    ``cpu`` rounds are the calling thread's CPU time per call (``time.thread_time``): what the
    calls cost the thread that makes them, without the time it waited for the GIL while other
    threads of the process (span exporters) ran; ``ratio(..., key="cpu")`` compares those.
    """
    names = list(contenders)
    per_round: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(warmup):
        for fn in contenders.values():
            for _ in range(max(1, number // 10)):
                fn()
    for r in range(reps):
        order = names if r % 2 == 0 else list(reversed(names))
        for name in order:
            fn = contenders[name]
            gc.collect()
            start, start_cpu = time.perf_counter(), time.thread_time()
            for _ in range(number):
                fn()
            cpu[name].append((time.thread_time() - start_cpu) / number)
            per_round[name].append((time.perf_counter() - start) / number)
    return {
        name: {"median": statistics.median(v), "rounds": v, "cpu": cpu[name]}  # type: ignore[dict-item]
        for name, v in per_round.items()
    }


def ratio(results: dict[str, Any], subject: str, baseline: str, key: str = "rounds") -> float:
    """Median over rounds of subject time / baseline time in the same round (``key="cpu"``:
    of the calling thread's CPU time)."""
    pairs = zip(results[subject][key], results[baseline][key], strict=True)
    return statistics.median(s / b for s, b in pairs)


def row(
    benchmark: str,
    *,
    subject: str,
    value: float,
    unit: str,
    baseline: str | None = None,
    baseline_value: float | None = None,
    ratio: float | None = None,
    target: str = "",
    met: bool | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One line of the results table (every benchmark module returns a list of these)."""
    return {
        "benchmark": benchmark,
        "subject": subject,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": baseline_value,
        "ratio": ratio,
        "target": target,
        "met": met,
        "note": note,
    }


def us(seconds: float) -> float:
    return seconds * 1e6


def measured_apart(
    module: str, flag: str, reps: int, number: int, env: dict[str, str], timeout: float
) -> Any:
    """The JSON that ``python -m <module> --<flag> REPS NUMBER`` prints last: the measured part of
    a benchmark run in a fresh process of its own (from the repository's root, with ``env``)."""
    done = subprocess.run(
        [sys.executable, "-m", module, f"--{flag}", str(reps), str(number)],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(
            f"{module} --{flag} (the measured process) failed: {done.stderr[-3000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(
    doc: str | None,
    run: Callable[..., list[dict[str, Any]]],
    quick_help: str,
    flag: str,
    measured: Callable[[int, int], Any],
) -> None:
    """A benchmark module run on its own: its table (``--quick``: ``run(quick=True)``), or with
    the hidden ``--<flag> REPS NUMBER`` the JSON of ``measured(reps, number)`` (what
    :func:`measured_apart` starts)."""
    try:
        from bench.run import table
    except ImportError:  # run as a script from bench/
        from run import table  # type: ignore[no-redef]

    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument(f"--{flag}", nargs=2, type=int, metavar=("REPS", "NUMBER"),
                        dest="measured", help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.measured:
        print(json.dumps(measured(*args.measured)))
    else:
        print(table(run(quick=args.quick)))

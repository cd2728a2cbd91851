"""Check that every extra of otel-jobs resolves as a fresh ``pip install 'otel-jobs[extra]'`` would.

Builds the package's wheel once and asks pip for a dry-run install of ``otel-jobs[extra]`` per
extra declared in the wheel's metadata, ignoring what is installed here (the resolution of a
fresh virtualenv), two at a time; nothing is installed. ``all``, where the frameworks' pins meet,
is also resolved by the pip that ``python -m venv`` bundles (what a user's fresh virtualenv has:
its resolver backtracks differently from the newest pip's, and once walked kombu back to 2.5.16,
which does not build). ``test`` is left out: the test command installs it for real just before.
A conflict fails here, with pip's own explanation, instead of on a user's machine. Prints one line
per resolution and the time taken.

    .venv/bin/python .ci/extras_resolve.py
"""

from __future__ import annotations

import email
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARALLEL = 2
#: Installed for real by the test command; the others are resolved here.
SKIP = {"test"}
#: Also resolved by a fresh virtualenv's bundled pip.
COMBINED = {"all"}


def fresh_pip(into: str) -> list[str]:
    """The pip of a new virtualenv made from this interpreter's base Python."""
    base = getattr(sys, "_base_executable", sys.executable)
    venv = os.path.join(into, "venv")
    subprocess.run([base, "-m", "venv", venv], check=True)
    return [os.path.join(venv, "bin", "python"), "-m", "pip"]


def build_wheel(into: str) -> str:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", into, ROOT],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    (wheel,) = glob.glob(os.path.join(into, "otel_jobs-*.whl"))
    return wheel


def extras_of(wheel: str) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(archive.read(name))
    return sorted(metadata.get_all("Provides-Extra") or [])


def resolve(pip: list[str], wheel: str, extra: str, label: str) -> tuple[str, bool, str]:
    command = [
        *pip, "install", "--dry-run", "--ignore-installed", "--quiet",
        "--disable-pip-version-check", "--report", "-", f"otel-jobs[{extra}] @ file://{wheel}",
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True)
    took = f" in {time.monotonic() - started:.1f}s"
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "is ignored" not in line]
        return label, False, "\n".join(errors[-25:])
    report = json.loads(proc.stdout)
    chosen = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}
    shown = ", ".join(
        f"{name} {chosen[name]}"
        for name in ("celery", "kombu", "redis", "rq", "dramatiq", "arq", "huey", "apscheduler")
        if name in chosen
    )
    return label, True, f"{len(chosen)} packages{took}" + (f" ({shown})" if shown else "")


def main() -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="otel-jobs-extras-") as tmp:
        wheel = build_wheel(tmp)
        extras = [e for e in extras_of(wheel) if e not in SKIP]
        current = [sys.executable, "-m", "pip"]
        jobs = [(current, e, f"otel-jobs[{e}]") for e in extras]
        bundled = fresh_pip(tmp)
        jobs += [(bundled, e, f"otel-jobs[{e}] (bundled pip)") for e in extras if e in COMBINED]
        with ThreadPoolExecutor(PARALLEL) as pool:
            results = list(pool.map(lambda job: resolve(job[0], wheel, *job[1:]), jobs))
    failed = 0
    for label, ok, detail in results:
        if ok:
            print(f"extras: {label} resolves: {detail}")
        else:
            failed += 1
            print(f"extras: {label} does NOT resolve:\n{detail}", file=sys.stderr)
    print(f"extras: {len(results)} resolutions in {time.monotonic() - started:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The multiprocess directory against what other users and crashes leave in it (issue 18, item 3).

``OTEL_JOBS_MULTIPROCESS_DIR`` may be a directory other users can write to. Planted there: a
FIFO, a 100 MB sparse file, malformed snapshots, another user's snapshot with a huge counter,
symlinks to files the scraper must not publish, a symlink where a child writes its snapshot.
None of them may hang a scrape (or Celery's lost-run path), reach ``/metrics`` or the archive,
or be followed on write; each is counted once. The private default directory of an owner that
ended without cleaning up (``os._exit``, SIGKILL) is removed when the next owner starts, and
not while the owner or one of its forked children lives.

Real files, FIFOs and symlinks; live processes (a sleeping interpreter) for live children;
the real endpoint parsed with prometheus-client's parser. Tests that plant a file of another
user need root (``chown``) and skip without it.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

import otel_jobs
from otel_jobs.core import errors
from otel_jobs.core.multiprocess import MAX_FILE_BYTES, ProcessShare
from tests.support import Samples

GUARD = 30.0  # seconds before a client gives up: a hang fails the test instead of blocking it
OTHER_UID = 65534  # nobody


def _scrape(agent: Any) -> Samples:
    with urllib.request.urlopen(agent.server.url, timeout=GUARD) as response:
        assert response.status == 200
        return Samples(response.read().decode())


def _snapshot(pid: int, job: str, value: float) -> str:
    return json.dumps(
        {
            "pid": pid,
            "families": [
                {
                    "name": "otel_jobs_runs_started",
                    "type": "counter",
                    "help": "Runs started.",
                    "samples": [
                        [
                            "otel_jobs_runs_started_total",
                            {"job_name": job, "queue": "default"},
                            value,
                        ]
                    ],
                }
            ],
        }  # fmt: skip
    )


def _bad_files() -> int:
    return errors.counts().get("multiprocess.read", 0)


def _spawn_sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])


@pytest.fixture
def live_pids() -> Iterator[list[int]]:
    """Two live processes other than this one, as forked children are while the owner scrapes."""
    children = [_spawn_sleeper() for _ in range(2)]
    try:
        yield [c.pid for c in children]
    finally:
        for child in children:
            child.kill()
            child.wait()


def _dead_pid() -> int:
    child = _spawn_sleeper()
    child.kill()
    child.wait()
    return child.pid


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("planting another user's file needs root (chown)")


def _in_thread(call: Callable[[], Any]) -> Any:
    """``call()`` in a thread, failing the test (not hanging it) if it does not return."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(GUARD)
    assert not thread.is_alive(), "the call hung"
    return result[0]


@pytest.mark.internal_errors("multiprocess.read")
def test_a_fifo_never_hangs_a_scrape_or_the_lost_run_path(
    instrumented: Callable[..., Any], live_pids: list[int]
) -> None:
    agent = instrumented(watchdog=False)
    with otel_jobs.job_run("reports.nightly"):
        pass
    pid = live_pids[0]
    os.mkfifo(os.path.join(agent.share.directory, f"{pid}.json"))
    before = _bad_files()
    assert _scrape(agent).value("otel_jobs_runs_started_total", job_name="reports.nightly") == 1
    # What Celery's main process asks when a child dies: when its last snapshot was taken.
    assert _in_thread(lambda: agent.share.written_at(pid)) is None
    written = agent.text_writer.written
    assert _scrape(agent).value("otel_jobs_runs_started_total", job_name="reports.nightly") == 1
    assert agent.text_writer.written == written + 1  # a known bad file: the fast writer again
    assert _bad_files() == before + 1  # counted once, however often it is met


@pytest.mark.internal_errors("multiprocess.read")
def test_a_file_larger_than_the_cap_is_skipped_not_read_at_every_scrape(
    instrumented: Callable[..., Any], live_pids: list[int]
) -> None:
    agent = instrumented(watchdog=False)
    size = 100 * 1024 * 1024
    assert size > MAX_FILE_BYTES
    huge = Path(agent.share.directory, f"{live_pids[0]}.json")
    with open(huge, "wb") as f:
        f.truncate(size)  # sparse: costs no disk, but 100 MB to whoever reads it
    Path(agent.share.directory, f"{live_pids[1]}.json").write_text(
        _snapshot(live_pids[1], "mail.send", 5)
    )
    before, read_before = _bad_files(), _bytes_read()
    for _ in range(3):
        assert _scrape(agent).value("otel_jobs_runs_started_total", job_name="mail.send") == 5
    assert _bad_files() == before + 1
    # Refused by its size, not read (not even once) and then refused for its content.
    assert _bytes_read() - read_before < size // 4


def _bytes_read() -> int:
    """Bytes this process has read through read() and the like (Linux: /proc/self/io rchar)."""
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


def _with_a_good_child(instrumented: Callable[..., Any], good: int) -> Any:
    """An agent that ran one job, with the snapshot of live child ``good`` (5 mail.send runs)."""
    agent = instrumented(watchdog=False)
    with otel_jobs.job_run("reports.nightly"):
        pass
    Path(agent.share.directory, f"{good}.json").write_text(_snapshot(good, "mail.send", 5))
    return agent


def _assert_the_good_child_merged(agent: Any) -> None:
    """Twice: the owner's run and the good child's are served, and nothing else."""
    for _ in range(2):
        samples = _scrape(agent)
        assert samples.value("otel_jobs_runs_started_total", job_name="mail.send") == 5
        assert samples.value("otel_jobs_runs_started_total", job_name="reports.nightly") == 1
        assert samples.total("otel_jobs_runs_started_total") == 6


@pytest.mark.parametrize(
    "content",
    [
        '{"pid": PID, "families": 5}',
        '{"pid": PID, "families": [{"name": "otel_jobs_runs_started", "type": "counter", '
        '"help": "h", "samples": [["otel_jobs_runs_started_total", {"job_name": "x"}, "7"]]}]}',
        '{"pid": PID, "families": [{"name": "otel_jobs_runs_started", "type": "counter", '
        '"help": "h", "samples": [["otel_jobs_runs_started_total", {"job_name": 7}, 1]]}]}',
        '{"pid": PID, "families": [{"name": "otel_jobs_runs_started", "type": "counter", '
        '"help": "h", "samples": [["otel_jobs_runs_started_total", ["job_name"], 1]]}]}',
        '{"pid": PID, "families": [{"name": "bad name", "type": "counter", '
        '"help": "h", "samples": []}]}',
        '{"pid": PID, "families": [{"name": "otel_jobs_runs_started", "type": "counter", '
        '"help": "h", "samples": [["otel_jobs_runs_started_total", {"job name": "x"}, 1]]}]}',
        '{"pid": PID, "families": [{"name": "x", "type": "counter", "help": "h", "samples": 1}]}',
        '{"pid": PID, "at": "yesterday", "families": []}',
        # Numbers that JSON holds and a float cannot (the encoders would fail every scrape).
        '{"pid": PID, "families": [{"name": "otel_jobs_runs_started", "type": "counter", '
        '"help": "h", "samples": [["otel_jobs_runs_started_total", {"job_name": "x"}, 1'
        + "0" * 400
        + "]]}]}",
        '{"pid": PID, "at": 1' + "0" * 400 + ', "families": []}',
        '{"pid": PID, "families": [], "streaks": [["x", "default", [null, 1'
        + "0" * 400
        + ", [], null]]]}",
        '{"pid": 1, "families": []}',
        '["not", "an", "object"]',
        '{"pid": PID, "families": [',
        "\udcff",
    ],
)
@pytest.mark.internal_errors("multiprocess.read")
def test_a_malformed_snapshot_is_skipped_and_the_others_are_merged(
    instrumented: Callable[..., Any], live_pids: list[int], content: str
) -> None:
    agent = _with_a_good_child(instrumented, live_pids[1])
    bad = live_pids[0]
    Path(agent.share.directory, f"{bad}.json").write_bytes(
        content.replace("PID", str(bad)).encode("utf-8", "surrogateescape")
    )
    before = _bad_files()
    _assert_the_good_child_merged(agent)
    assert _bad_files() == before + 1
    assert agent.share.written_at(bad) is None


@pytest.mark.parametrize("name", ["\u00b2.json", "\u00b2.json.0a1b2c.tmp", "\u0663.json"])
def test_a_name_that_is_not_a_pid_in_ascii_digits_is_left_alone(
    instrumented: Callable[..., Any], live_pids: list[int], name: str
) -> None:
    # str.isdigit() holds for "²" (which int() refuses) and for Arabic-Indic digits: a name
    # alone, which any user who can write the directory can give, must not fail the merge.
    agent = _with_a_good_child(instrumented, live_pids[1])
    planted = Path(agent.share.directory, name)
    planted.write_text(_snapshot(_dead_pid(), "planted", 1e9))
    _assert_the_good_child_merged(agent)
    assert planted.exists()  # not a file of otel-jobs': neither read nor removed


def test_a_stopping_marker_whose_name_is_not_a_pid_is_left_alone(
    instrumented: Callable[..., Any],
) -> None:
    # The marker a stopping worker leaves for its forked children (core/shutdown.py), written
    # after removing the markers of dead workers: a planted "worker-stopping-²" must not stop it.
    from otel_jobs.core import shutdown

    agent = instrumented(watchdog=False)
    planted = Path(agent.share.directory, shutdown.MARKER_PREFIX + "\u00b2")
    planted.write_text("")
    try:
        shutdown.begin(agent, "celery", "send SIGQUIT")
        shutdown.check(agent)
    finally:
        shutdown._request = shutdown._marked = None
    assert Path(agent.share.directory, f"{shutdown.MARKER_PREFIX}{os.getpid()}").exists()
    assert planted.exists()


@pytest.mark.internal_errors("multiprocess.read")
def test_another_users_snapshot_is_never_merged_nor_folded_into_the_archive(
    instrumented: Callable[..., Any], live_pids: list[int]
) -> None:
    _needs_root()
    agent = instrumented(watchdog=False)
    with otel_jobs.job_run("reports.nightly"):
        pass
    planted = {live_pids[0]: "planted.live", _dead_pid(): "planted.dead"}
    for pid, job in planted.items():
        path = Path(agent.share.directory, f"{pid}.json")
        path.write_text(_snapshot(pid, job, 1e9))
        os.chown(path, OTHER_UID, OTHER_UID)
    before = _bad_files()
    for _ in range(3):
        samples = _scrape(agent)
        assert samples.total("otel_jobs_runs_started_total") == 1
        assert not samples.find("otel_jobs_runs_started_total", job_name="planted.live")
        assert not samples.find("otel_jobs_runs_started_total", job_name="planted.dead")
    assert not agent.share._archive  # nothing of the dead "child" kept for ever
    assert _bad_files() == before + 2


@pytest.mark.internal_errors("multiprocess.read")
def test_a_symlink_is_never_followed_on_read(
    instrumented: Callable[..., Any], live_pids: list[int], tmp_path: Path
) -> None:
    agent = instrumented(watchdog=False)
    # A file the scraper must not publish: another user's (root-only in the issue), and one of
    # this user's outside the directory: a symlink to either is refused, not followed.
    secret = tmp_path / "secret.json"
    secret.write_text(_snapshot(live_pids[0], "SECRET-5d1f", 1))
    secret.chmod(0o600)
    if os.geteuid() == 0:
        os.chown(secret, OTHER_UID, OTHER_UID)
    mine = tmp_path / "mine.json"
    mine.write_text(_snapshot(live_pids[1], "MINE-88a0", 1))
    os.symlink(secret, os.path.join(agent.share.directory, f"{live_pids[0]}.json"))
    os.symlink(mine, os.path.join(agent.share.directory, f"{live_pids[1]}.json"))
    before = _bad_files()
    for _ in range(2):
        text = _scrape(agent).text
        assert "SECRET-5d1f" not in text and "MINE-88a0" not in text
    assert _bad_files() == before + 2
    assert agent.share.written_at(live_pids[0]) is None


def _share_of_a_child(directory: str) -> tuple[ProcessShare, CollectorRegistry]:
    # A share whose owner is another process: this one writes its snapshot as a child does.
    registry = CollectorRegistry()
    Counter("probe", "A counter.", registry=registry).inc(3)
    return ProcessShare(directory, owner_pid=1), registry


def test_the_snapshot_writer_never_follows_a_planted_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "mp"
    share, registry = _share_of_a_child(str(directory))
    victims = [tmp_path / f"victim{i}" for i in range(3)]
    for victim in victims:
        victim.write_text("precious")
    pid = os.getpid()
    final = directory / f"{pid}.json"
    # Planted where a writer of the previous version put its temporary file, and where the
    # snapshot itself goes.
    os.symlink(victims[0], directory / f"{pid}.json.{threading.get_ident()}.tmp")
    os.symlink(victims[1], final)
    share.flush(registry)
    assert [v.read_text() for v in victims] == ["precious"] * 3
    assert stat.S_ISREG(os.lstat(final).st_mode)  # the symlink was replaced, not followed
    assert stat.S_IMODE(os.lstat(final).st_mode) == 0o600
    assert json.loads(final.read_text())["pid"] == pid
    # Planted at the very name the writer draws: it refuses to open it, and writes nothing.
    monkeypatch.setattr("secrets.token_hex", lambda n=None: "planted")
    os.symlink(victims[2], directory / f"{pid}.json.planted.tmp")
    with pytest.raises(FileExistsError):
        share.flush(registry)
    assert victims[2].read_text() == "precious"


def test_a_configured_directory_is_made_0700_and_files_0600(
    instrumented: Callable[..., Any], tmp_path: Path
) -> None:
    directory = tmp_path / "shared" / "mp"
    agent = instrumented(watchdog=False, multiprocess_dir=str(directory))
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    child_share, registry = _share_of_a_child(str(directory))
    child_share.flush(registry)
    child_share.touch("marker")
    for name in (f"{os.getpid()}.json", "marker"):
        assert stat.S_IMODE(os.lstat(directory / name).st_mode) == 0o600
    assert agent.share.exists("marker")
    os.unlink(directory / f"{os.getpid()}.json")


@pytest.mark.parametrize("kind", ["0700", "world-writable", "sticky", "another-user"])
def test_a_directory_others_control_is_warned_about_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    directory = tmp_path / "mp"
    directory.mkdir()
    mode = {"world-writable": 0o777, "sticky": 0o1777}.get(kind, 0o700)
    directory.chmod(mode)
    if kind == "another-user":
        _needs_root()
        os.chown(directory, OTHER_UID, OTHER_UID)  # its owner can plant or replace anything
    caplog.set_level("WARNING", logger="otel_jobs")
    ProcessShare(str(directory), owner_pid=os.getpid())
    warned = [r.getMessage() for r in caplog.records if str(directory) in r.getMessage()]
    if kind in ("0700", "sticky"):
        assert warned == []
    else:
        assert len(warned) == 1 and "Use a directory of mode 0700" in warned[0], warned


@pytest.mark.internal_errors("multiprocess.read")
def test_markers_of_another_user_or_not_regular_do_not_count(tmp_path: Path) -> None:
    # Celery's main process reads the markers and notes its children leave (integrations).
    share, _registry = _share_of_a_child(str(tmp_path / "mp"))
    os.mkfifo(tmp_path / "mp" / "fifo")
    os.symlink(tmp_path, tmp_path / "mp" / "link")
    before = _bad_files()
    assert not share.exists("fifo") and not share.exists("link") and not share.exists("none")
    assert _bad_files() == before + 2
    share.touch("link")  # replaced by a marker of its own, the target untouched
    assert share.exists("link") and os.path.isdir(tmp_path)
    if os.geteuid() == 0:
        planted = tmp_path / "mp" / "planted"
        planted.write_text("")
        os.chown(planted, OTHER_UID, OTHER_UID)
        assert not share.exists("planted")
    with pytest.raises(ValueError):
        share.exists("../mp/link")


# --- the private default directory ---------------------------------------------------------

_OWNER = """
import os, sys, time
import otel_jobs
otel_jobs.instrument(prometheus_port=0, watchdog=False, frameworks=[], outbound=[])
from otel_jobs.core import agent
print(agent.current().share.directory, flush=True)
if sys.argv[1] == "fork":
    child = os.fork()
    if child == 0:
        time.sleep(300)
        os._exit(0)
    print(child, flush=True)
if sys.argv[1] == "live":
    sys.stdin.read()
os._exit(0) if sys.argv[1] != "kill" else time.sleep(300)
"""


def _owner(how: str) -> tuple[subprocess.Popen[str], str, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_JOBS_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _OWNER, how],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    directory = proc.stdout.readline().strip()
    rest = [proc.stdout.readline().strip()] if how == "fork" else []
    assert os.path.isdir(directory), directory
    return proc, directory, rest


def test_private_directories_of_dead_owners_are_removed_at_start(
    instrumented: Callable[..., Any],
) -> None:
    exited, exited_dir, _ = _owner("exit")  # os._exit: no atexit, no cleanup
    exited.wait()
    killed, killed_dir, _ = _owner("kill")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    live, live_dir, _ = _owner("live")
    orphaned, orphan_dir, (child,) = _owner("fork")  # its forked child outlives it
    orphaned.wait()
    try:
        agent = instrumented(watchdog=False)
        assert not os.path.exists(exited_dir)
        assert not os.path.exists(killed_dir)
        assert os.path.isdir(live_dir)  # its owner runs
        assert os.path.isdir(orphan_dir)  # a child of its owner still writes there
        assert os.path.isdir(agent.share.directory)
        assert stat.S_IMODE(os.stat(agent.share.directory).st_mode) == 0o700
        otel_jobs.uninstrument()
        os.kill(int(child), signal.SIGKILL)
        _wait_gone(int(child))
        instrumented(watchdog=False)
        assert not os.path.exists(orphan_dir)
        assert os.path.isdir(live_dir)
    finally:
        assert live.stdin is not None
        live.stdin.close()
        live.wait()
        try:
            os.kill(int(child), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_gone(pid: int) -> None:
    # Not this process's child: it is dead (its files closed) once it is gone or a zombie.
    from otel_jobs.core.multiprocess import pid_alive

    for _ in range(int(GUARD / 0.05)):
        if not pid_alive(pid):
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"process {pid} did not end")


def test_directories_that_are_not_a_dead_owners_are_left_alone(
    instrumented: Callable[..., Any], tmp_path: Path
) -> None:
    import tempfile

    parent = Path(tempfile.gettempdir())
    made = []
    try:
        # One without an owner lock (being made right now, or left by a version without one).
        unlocked = Path(tempfile.mkdtemp(prefix="otel-jobs-", dir=parent))
        made.append(unlocked)
        # A symlink named like one, to a directory with a free lock: the link is not followed.
        target = tmp_path / "target"
        target.mkdir()
        (target / "owner.lock").write_text("")
        link = parent / f"otel-jobs-link-{os.getpid()}"
        os.symlink(target, link)
        made.append(link)
        instrumented(watchdog=False)
        assert unlocked.is_dir()
        assert (target / "owner.lock").exists() and link.is_symlink()
    finally:
        for path in made:
            if path.is_symlink():
                path.unlink()
            else:
                path.rmdir()


@pytest.mark.internal_errors("multiprocess.read")
def test_celery_markers_and_notes_go_through_the_checked_helpers(tmp_path: Path) -> None:
    # The Celery integration's files in the directory: a span note planted by someone else
    # (here a symlink) never tells the main process that a child exported the run's span, and
    # leaving a note or the marker never follows a symlink planted at its name.
    pytest.importorskip("celery")
    from otel_jobs.integrations.celery import shared_files

    share, _registry = _share_of_a_child(str(tmp_path / "mp"))
    planted_target = tmp_path / "created-through-the-link"
    note = shared_files._note_name("task-1")
    os.symlink(planted_target, tmp_path / "mp" / note)
    os.symlink(planted_target, tmp_path / "mp" / shared_files.CONTRIB_MARKER)
    assert not shared_files.span_note_left(share, "task-1")
    assert not shared_files.contrib_marker_left(share)
    shared_files.leave_span_note(share, "task-1")
    shared_files.leave_contrib_marker(share)
    assert not planted_target.exists()
    assert shared_files.span_note_left(share, "task-1")
    assert shared_files.contrib_marker_left(share)
    shared_files.remove_leftovers(share)
    assert not shared_files.span_note_left(share, "task-1")
    assert os.listdir(tmp_path / "mp") == []


@pytest.mark.internal_errors("multiprocess.read")
def test_a_directory_planted_at_a_leftovers_name_does_not_stop_their_removal(
    tmp_path: Path,
) -> None:
    # A starting Celery worker removes the marker and notes a previous one left; a directory
    # planted at one of their names is skipped (counted once), the others are still removed.
    pytest.importorskip("celery")
    from otel_jobs.integrations.celery import shared_files

    share, _registry = _share_of_a_child(str(tmp_path / "mp"))
    planted = tmp_path / "mp" / shared_files._note_name("planted")
    planted.mkdir()
    for task in ("task-1", "task-2"):
        shared_files.leave_span_note(share, task)
    shared_files.leave_contrib_marker(share)
    before = _bad_files()
    for _ in range(2):
        shared_files.remove_leftovers(share)
    assert os.listdir(tmp_path / "mp") == [planted.name]
    assert _bad_files() == before + 1

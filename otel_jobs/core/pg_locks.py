"""Who holds the PostgreSQL lock a stalled run waits for: the blocking sessions, and their runs.

When the watchdog gives a verdict to a run that is inside a psycopg statement (``run.calls``,
recorded by :mod:`otel_jobs.outbound.psycopg`), the diagnosis asks PostgreSQL who blocks that
run's backend (``pg_blocking_pids``) and, for each blocker (at most :data:`MAX_BLOCKERS`): its
backend pid, state, transaction age, wait event and query text, and, when the blocker is the
connection of another otel-jobs run of this process, that run's job name and id.

Invariants:

* **Never on the job's connection**: it is busy with the stuck statement. The lookup opens a
  connection of its own with the job connection's parameters (host, port, database, user,
  password, TLS...), ``connect_timeout`` 2 s (libpq's least), ``statement_timeout``
  :data:`LOOKUP_STATEMENT_TIMEOUT_MS`, ``application_name`` ``otel-jobs-diagnosis``, and
  closes it at once.
* **Never on the hot path**: per statement inside a run, :func:`note` keeps which connection
  the run uses (a weak dictionary lookup; the backend pid and the connection parameters are
  read once per connection). The lookup itself runs on a thread of its own, started by the
  watchdog, so a database that does not answer never delays a tick.
* **At most once per stalled call**: the answer is kept with the call (:func:`lookup`).
* **No literal is logged**: query texts go through :func:`sql_shape` (string, number and
  dollar-quoted literals become ``?``, comments go, a text cut by PostgreSQL's
  ``track_activity_query_size`` loses its unfinished literal), then are cut to
  :data:`MAX_QUERY_CHARS`. A failed lookup says why in a few words, through
  :func:`otel_jobs.core.redaction.redact`.

PostgreSQL shows another role's query text only to a superuser or a member of
``pg_read_all_stats``; otherwise it reads ``<insufficient privilege>``, shown as such.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from typing import TYPE_CHECKING, Any

from .redaction import redact
from .run import _current

if TYPE_CHECKING:
    from .run import OutboundCall, Run

#: Blockers reported at most.
MAX_BLOCKERS = 5
#: A blocker's query text is cut to this many characters (after its literals are removed).
MAX_QUERY_CHARS = 300
#: statement_timeout of the lookup's own session.
LOOKUP_STATEMENT_TIMEOUT_MS = 1000
#: connect_timeout of the lookup's connection (libpq's least is 2 s).
LOOKUP_CONNECT_TIMEOUT = 2
#: Lookups under way at once at most (a mass stall asks for the first few; the others' verdicts
#: are given without their blockers rather than opening a connection each).
MAX_LOOKUPS_AT_ONCE = 4
#: Backend pids remembered; past it, those of runs that are gone are dropped.
_MAX_PIDS = 1024

_QUERY = """
SELECT w.wait_event_type, w.wait_event, x.pid, b.state,
       EXTRACT(EPOCH FROM clock_timestamp() - b.xact_start)::float8,
       b.wait_event_type, b.wait_event, b.query
FROM pg_stat_activity AS w
LEFT JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS x(pid) ON true
LEFT JOIN pg_stat_activity AS b ON b.pid = x.pid
WHERE w.pid = %s
LIMIT %s
"""


class _Connection:
    """What the lookup needs of a job's connection, read once in the job's thread."""

    __slots__ = ("pid", "params", "password")

    def __init__(self, pid: int, params: dict[str, str], password: str | None) -> None:
        self.pid = pid
        self.params = params
        self.password = password


_connections: weakref.WeakKeyDictionary[Any, _Connection] = weakref.WeakKeyDictionary()
_run_connection: weakref.WeakKeyDictionary[Run, _Connection] = weakref.WeakKeyDictionary()
_pid_runs: dict[int, weakref.ref[Run]] = {}
_looked_up: weakref.WeakKeyDictionary[Run, tuple[OutboundCall, dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()
_lookups_under_way = 0


def note(conn: Any) -> None:
    """Called by the psycopg adapter before a statement inside a run: the run uses ``conn``."""
    run = _current.get()
    if run is None:
        return
    found = _connections.get(conn)
    if found is None:
        if conn.closed:
            return  # its statement fails by itself: nothing to remember
        info = conn.info
        found = _Connection(int(info.backend_pid), dict(info.get_parameters()), info.password)
        _connections[conn] = found
    if _run_connection.get(run) is not found:
        with _lock:
            _run_connection[run] = found
            if len(_pid_runs) >= _MAX_PIDS:
                for pid in [p for p, ref in _pid_runs.items() if ref() is None]:
                    del _pid_runs[pid]
            _pid_runs[found.pid] = weakref.ref(run)


def forget_after_fork() -> None:
    """A forked child shares none of its parent's connections' sessions in use."""
    global _lock, _lookups_under_way
    _lock = threading.Lock()
    _lookups_under_way = 0
    _run_connection.clear()
    _pid_runs.clear()
    _looked_up.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=forget_after_fork)


def wanted(run: Run) -> bool:
    """Whether to ask who blocks the run: it is inside a psycopg statement on a connection
    :func:`note` saw, and fewer than :data:`MAX_LOOKUPS_AT_ONCE` lookups are under way.

    True reserves a lookup: the caller must then call :func:`lookup`, which releases it.
    """
    global _lookups_under_way
    try:
        calls = list(run.calls)
    except Exception:
        return False
    if not calls or calls[-1].library != "psycopg" or calls[-1].method == "CONNECT":
        return False
    if run not in _run_connection:
        return False
    with _lock:
        if _lookups_under_way >= MAX_LOOKUPS_AT_ONCE:
            return False
        _lookups_under_way += 1
    return True


def lookup(run: Run) -> dict[str, Any] | None:
    """Ask PostgreSQL who blocks the run's backend (at most once per stalled call).

    Returns ``{"backend_pid", "wait_event", "blockers": [...]}`` or, when it could not ask,
    ``{"backend_pid", "error"}``; None when the run is not in a psycopg statement.
    Each blocker: ``{"pid", "state", "xact_age_s", "wait_event", "query", "job_name", "job_id"}``.
    Releases the lookup :func:`wanted` reserved.
    """
    global _lookups_under_way
    try:
        return _lookup(run)
    finally:
        with _lock:
            _lookups_under_way = max(_lookups_under_way - 1, 0)


def _lookup(run: Run) -> dict[str, Any] | None:
    try:
        call = list(run.calls)[-1]
    except (IndexError, Exception):
        return None
    kept = _looked_up.get(run)
    if kept is not None and kept[0] is call:
        return kept[1]
    found = _run_connection.get(run)
    if found is None:
        return None
    try:
        rows = _ask(found)
    except Exception as exc:  # the database cannot be asked: say so, in a few words
        answer: dict[str, Any] = {
            "backend_pid": found.pid,
            "error": redact(f"{type(exc).__name__}: {' '.join(str(exc).split())}")[:200],
        }
    else:
        answer = _answer(found.pid, rows)
    _looked_up[run] = (call, answer)
    return answer


def _ask(found: _Connection) -> list[tuple[Any, ...]]:
    import psycopg

    params: dict[str, Any] = dict(found.params)
    params.update(
        connect_timeout=str(LOOKUP_CONNECT_TIMEOUT),
        application_name="otel-jobs-diagnosis",
        options=f"-c statement_timeout={LOOKUP_STATEMENT_TIMEOUT_MS}",
    )
    if found.password:
        params["password"] = found.password
    with psycopg.connect(autocommit=True, **params) as conn:
        return list(conn.execute(_QUERY, (found.pid, MAX_BLOCKERS)).fetchall())


def _event(kind: Any, name: Any) -> str | None:
    if not kind and not name:
        return None
    return f"{kind}:{name}" if kind and name else str(kind or name)


def _answer(pid: int, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    answer: dict[str, Any] = {"backend_pid": pid, "wait_event": None, "blockers": []}
    if not rows:
        answer["error"] = "the backend is not in pg_stat_activity (its statement ended)"
        return answer
    answer["wait_event"] = _event(rows[0][0], rows[0][1])
    for _w_kind, _w_name, blocker, state, age, kind, name, query in rows:
        if blocker is None:
            continue
        entry: dict[str, Any] = {
            "pid": int(blocker),
            "state": state,
            "xact_age_s": round(float(age), 3) if age is not None else None,
            "wait_event": _event(kind, name),
            "query": sql_shape(query) if isinstance(query, str) else None,
            "job_name": None,
            "job_id": None,
        }
        ref = _pid_runs.get(int(blocker))
        holder = ref() if ref is not None else None
        if holder is not None and not holder.finished:
            entry["job_name"], entry["job_id"] = holder.name, holder.job_id or str(holder.key)
        answer["blockers"].append(entry)
    return answer


def describe(answer: dict[str, Any]) -> str:
    """One line for the verdict: who blocks the run's backend."""
    pid = answer.get("backend_pid")
    if answer.get("error"):
        return f"PostgreSQL backend {pid}: blockers not known ({answer['error']})"
    blockers = answer.get("blockers") or []
    event = answer.get("wait_event")
    head = f"PostgreSQL backend {pid} waits" + (f" on {event}" if event else "")
    if not blockers:
        return head + ", blocked by no other session"
    parts = []
    for b in blockers:
        text = f"backend {b['pid']} ({b['state'] or 'state unknown'}"
        if b["xact_age_s"] is not None:
            text += f", transaction open {b['xact_age_s']:.1f}s"
        if b["job_name"] is not None:
            text += f", run {b['job_id']} of {b['job_name']}"
        text += ")"
        if b["query"]:
            text += f": {b['query']}"
        parts.append(text)
    return f"{head}, blocked by " + "; ".join(parts)


# --- query text without literals ---------------------------------------------------------------

_SQL_TOKENS = re.compile(
    r"""
      (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
    | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*|)\$.*?(?:\$(?P=tag)\$|\Z))
    | (?P<string>(?:[EeBbXxNn]|[Uu]&)?'(?:''|\\.|[^'\\])*(?:'|\Z))
    | (?P<ident>"(?:""|[^"])*(?:"|\Z))
    | (?P<param>\$\d+)
    | (?P<number>(?<![\w$.])(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![\w.]))
    """,
    re.VERBOSE | re.DOTALL,
)


def _token(match: re.Match[str]) -> str:
    kind = match.lastgroup
    if kind == "comment":
        return " "
    if kind in ("dollar", "string", "number"):
        return "?"
    return match.group(0)


def sql_shape(query: str) -> str:
    """``query`` without its literals and comments, on one line, cut to :data:`MAX_QUERY_CHARS`.

    >>> sql_shape("UPDATE users SET password = 'hunter2' WHERE id = 42 -- reset")
    'UPDATE users SET password = ? WHERE id = ?'
    """
    shaped = " ".join(_SQL_TOKENS.sub(_token, query).split())
    if len(shaped) > MAX_QUERY_CHARS:
        shaped = shaped[: MAX_QUERY_CHARS - 3] + "..."
    return shaped

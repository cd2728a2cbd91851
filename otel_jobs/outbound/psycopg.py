"""psycopg 3 (``psycopg.connect``, ``Connection``, ``AsyncConnection``): connects and statements that can wait forever.

Three parts can be missing:

* ``connect``: a connect without ``connect_timeout`` (in the conninfo, the keyword arguments
  or ``PGCONNECT_TIMEOUT``). psycopg 3.2+ then gives up after 130 s per host, libpq's own
  guess, which is rarely what a job wants; otel-jobs flags it. Checked in
  ``Connection.connect`` / ``AsyncConnection.connect`` (and ``psycopg.connect``), which pools
  use too.
* ``statement``: a statement run on a session whose ``statement_timeout`` is 0, however it
  was set (server or role default, ``options='-c statement_timeout=5s'``, ``PGOPTIONS``,
  ``SET``). Checked in ``execute`` / ``executemany`` of the sync and async cursors
  (``Connection.execute`` goes through them).
* ``lock``: the same statement, when the session's ``lock_timeout`` is 0 too: a wait for a
  row or table lock held by another session then has no end either. Never missing alone: a
  ``statement_timeout`` bounds lock waits as well (PostgreSQL cancels the statement), so a
  session with one is not flagged, and a session with ``lock_timeout`` only is flagged for
  ``statement`` only. One call, one count: the log says "has no statement timeout and no lock
  timeout", the span attributes and :class:`otel_jobs.MissingTimeoutError` list both parts.

otel-jobs reads both settings with one query once per connection, right after connecting (one
round trip, outside any transaction), and again after a statement of yours that mentions
``statement_timeout`` or ``lock_timeout``: never a round trip per statement.

Policies:

* ``enforce`` adds ``connect_timeout`` (whole seconds, at least 2: libpq's minimum) to a
  connect without one, and sets ``statement_timeout`` on the session of a connection without
  one (``SET``, outside any transaction, right after connecting), which bounds its lock
  waits too: ``lock_timeout`` is never set (it would only ever fire first if shorter, and
  then a statement that waits for a lock would fail differently from one that runs long).
  Statements on that session stay counted, as enforced. An exceeded timeout raises psycopg's
  own ``ConnectionTimeout`` / ``QueryCanceled`` (a lock wait too).
* ``raise`` refuses a connect without ``connect_timeout``, and a statement on a session
  without ``statement_timeout`` (``missing`` naming ``lock`` too when the session has no
  ``lock_timeout``), with :class:`otel_jobs.MissingTimeoutError`, before it is sent.

Caveats: a connection opened before ``instrument()`` is probed at its first statement made
outside a transaction (until then its statements are not checked); ``SET LOCAL
statement_timeout`` (or ``lock_timeout``) is seen only for the rest of its transaction; a
query built with ``psycopg.sql`` is not searched for either.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core import errors
from ..core.pg_locks import note as note_connection
from ..core.redaction import format_host
from .adapter import CallCheck, MethodAdapter, Target, argument
from .base import Args, Checker, Kwargs, Missing

if TYPE_CHECKING:
    from ..core.agent import Agent

LIBRARY = "psycopg"
HINT = (
    "connect with connect_timeout=... and options='-c statement_timeout=...' (or SET "
    "statement_timeout; lock_timeout alone bounds only lock waits)"
)
_STATEMENT = ("statement",)
_STATEMENT_AND_LOCK = ("statement", "lock")
#: Both settings in one round trip ('0' when unset, as SHOW says).
_SHOW = "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')"

# What a connection's session is known to miss, and its host: (missing, host).
Session = tuple[Missing, str]


# --- connect -----------------------------------------------------------------------------


def _connect_params(args: Args, kwargs: Kwargs) -> dict[str, Any]:
    """The connection parameters of ``connect(conninfo="", **kwargs)``."""
    from psycopg.conninfo import conninfo_to_dict

    conninfo = argument(args, kwargs, 1, "conninfo", "")
    if "conninfo" in kwargs:
        kwargs = {k: v for k, v in kwargs.items() if k != "conninfo"}
    return conninfo_to_dict(conninfo, **kwargs)


def _connect_timeout(args: Args, kwargs: Kwargs) -> tuple[Any, Missing]:
    params = _connect_params(args, kwargs)
    value = params.get("connect_timeout")
    if value is None:
        value = os.environ.get("PGCONNECT_TIMEOUT")
    try:
        seconds = float(value) if value is not None else 0.0
    except ValueError:
        seconds = 0.0
    return params, () if seconds > 0 else ("connect",)


def _connect_describe(args: Args, kwargs: Kwargs, params: dict[str, Any]) -> tuple[str, str]:
    host = str(params.get("host") or os.environ.get("PGHOST") or "localhost").split(",")[0]
    port = str(params.get("port") or os.environ.get("PGPORT") or "5432").split(",")[0]
    if host.startswith("/"):
        return "CONNECT", f"unix:{host}"
    return "CONNECT", format_host(host, int(port) if port.isdigit() else None)


def _connect_enforce(
    args: Args, kwargs: Kwargs, params: Any, missing: Missing, default: float
) -> tuple[Args, Kwargs]:
    return args, {**kwargs, "connect_timeout": max(2, math.ceil(default))}  # libpq's minimum: 2


# --- statements --------------------------------------------------------------------------


def _conn_host(conn: Any) -> str:
    info = conn.info
    host = info.host
    if host.startswith("/"):
        return f"unix:{host}"
    return format_host(host, info.port)


def _verb(query: Any) -> str:
    if isinstance(query, bytes):
        query = query.decode("utf-8", "replace")
    if isinstance(query, str):
        words = query.split(None, 1)
        if words and words[0].isalpha():
            return words[0].upper()[:16]
    return "QUERY"


_TIMEOUT_NAMES = ("statement_timeout", "STATEMENT_TIMEOUT", "lock_timeout", "LOCK_TIMEOUT")


def _mentions_timeout(query: Any) -> bool:
    """Whether ``query`` may change the session's ``statement_timeout`` or ``lock_timeout``."""
    if isinstance(query, str):
        if "_timeout" not in query and "_TIMEOUT" not in query:
            return False  # the usual statement: two scans
        return any(name in query for name in _TIMEOUT_NAMES)
    if isinstance(query, bytes):
        if b"_timeout" not in query and b"_TIMEOUT" not in query:
            return False
        return any(name.encode() in query for name in _TIMEOUT_NAMES)
    return False


def _session_missing(row: Any) -> Missing:
    """The parts a session misses, from ``(statement_timeout, lock_timeout)`` as read."""
    if row is None or row[0] != "0":
        return ()  # a statement_timeout bounds lock waits too
    return _STATEMENT_AND_LOCK if row[1] == "0" else _STATEMENT


class _SessionChecker(Checker):
    """psycopg's checker: the lock part is worded apart, so that the log keeps saying
    "has no statement timeout" and adds "and no lock timeout"."""

    def missing_text(self, missing: tuple[str, ...]) -> str:
        if "lock" not in missing:
            return super().missing_text(missing)
        rest = tuple(part for part in missing if part != "lock")
        return f"{super().missing_text(rest)} and no lock timeout"


def _statement_describe(args: Args, kwargs: Kwargs, found: Any) -> tuple[str, str]:
    session, conn = found
    note_connection(conn)  # the run's backend, should it stall on a lock (core.pg_locks)
    host = session[1] if session is not None else _conn_host(conn)
    return _verb(argument(args, kwargs, 1, "query", None)), host


def _can_probe(conn: Any) -> bool:
    from psycopg import pq

    info = conn.info
    return (
        not conn.closed
        and info.transaction_status == pq.TransactionStatus.IDLE
        and info.pipeline_status == pq.PipelineStatus.OFF
    )


class Adapter(MethodAdapter):
    """Checks connects and cursor statements, sync and async (see the module docstring)."""

    name, hint = LIBRARY, HINT

    def __init__(self, agent: Agent) -> None:
        super().__init__(agent)
        self.checker = _SessionChecker(agent, self.name, self.hint)
        # connection -> its Session; absent: not probed yet
        self.sessions: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()
        self._execute: Callable[..., Any] | None = None  # the original Cursor.execute
        self._aexecute: Callable[..., Any] | None = None  # the original AsyncCursor.execute

    # --- the session's statement_timeout and lock_timeout ---------------------------------

    def _set_statement_timeout(self) -> str | None:
        """The SET that ``enforce`` runs on a session without a statement_timeout."""
        if not self.checker.applies_default_timeout:
            return None
        return f"SET statement_timeout = {max(1, math.ceil(self.checker.default_timeout * 1000))}"

    def _remember(self, conn: Any, row: Any) -> Missing:
        """Keep what the session's timeouts are (``row``, :data:`_SHOW`) for its statements."""
        missing = _session_missing(row)
        self.sessions[conn] = (missing, _conn_host(conn))
        return missing

    def _probe(self, conn: Any) -> None:
        """Read the session's timeouts outside any transaction (enforce: ``SET`` one too)."""
        from psycopg.rows import tuple_row

        if self._execute is None or not _can_probe(conn):
            return
        autocommit = conn.autocommit
        if not autocommit:
            conn.autocommit = True  # no transaction opened by otel-jobs; SET is session-wide
        try:
            with conn.cursor(row_factory=tuple_row) as cur:
                self._execute(cur, _SHOW)
                missing = self._remember(conn, cur.fetchone())
                setting = self._set_statement_timeout()
                if missing and setting:
                    self._execute(cur, setting)
        finally:
            if not autocommit:
                conn.autocommit = False

    async def _aprobe(self, conn: Any) -> None:
        from psycopg.rows import tuple_row

        if self._aexecute is None or not _can_probe(conn):
            return
        autocommit = conn.autocommit
        if not autocommit:
            await conn.set_autocommit(True)
        try:
            async with conn.cursor(row_factory=tuple_row) as cur:
                await self._aexecute(cur, _SHOW)
                missing = self._remember(conn, await cur.fetchone())
                setting = self._set_statement_timeout()
                if missing and setting:
                    await self._aexecute(cur, setting)
        finally:
            if not autocommit:
                await conn.set_autocommit(False)

    # --- hooks of the checks ------------------------------------------------------------------

    def _probe_connected(self, args: Args, kwargs: Kwargs, conn: Any, enforced: Missing) -> Any:
        with errors.guard("outbound.psycopg"):
            self._probe(conn)
        return conn

    async def _aprobe_connected(
        self, args: Args, kwargs: Kwargs, conn: Any, enforced: Missing
    ) -> Any:
        with errors.guard("outbound.psycopg"):
            await self._aprobe(conn)
        return conn

    def _probe_if_unknown(self, args: Args, kwargs: Kwargs) -> None:
        conn = args[0].connection
        if conn not in self.sessions:
            with errors.guard("outbound.psycopg"):
                self._probe(conn)

    async def _aprobe_if_unknown(self, args: Args, kwargs: Kwargs) -> None:
        conn = args[0].connection
        if conn not in self.sessions:
            with errors.guard("outbound.psycopg"):
                await self._aprobe(conn)

    def _statement_timeout(self, args: Args, kwargs: Kwargs) -> tuple[Any, Missing]:
        conn = args[0].connection
        session = self.sessions.get(conn)
        if _mentions_timeout(argument(args, kwargs, 1, "query", None)):
            self.sessions.pop(conn, None)  # probe again at the next statement
        return (session, conn), session[0] if session is not None else ()

    # --- patches ------------------------------------------------------------------------------

    def targets(self) -> list[Target]:
        import psycopg

        self._execute = psycopg.Cursor.execute
        self._aexecute = psycopg.AsyncCursor.execute
        read = (_connect_timeout, _connect_describe, _connect_enforce)
        connect = CallCheck(*read, after=self._probe_connected)
        aconnect = CallCheck(*read, after=self._aprobe_connected)
        read_statement = (self._statement_timeout, _statement_describe)
        statement = CallCheck(*read_statement, before=self._probe_if_unknown)
        astatement = CallCheck(*read_statement, before=self._aprobe_if_unknown)
        targets = [
            Target(psycopg.Connection, "connect", connect),
            Target(psycopg.AsyncConnection, "connect", aconnect, is_async=True),
        ]
        for cls in (psycopg.Cursor, psycopg.ServerCursor):
            targets += [Target(cls, "execute", statement), Target(cls, "executemany", statement)]
        for acls in (psycopg.AsyncCursor, psycopg.AsyncServerCursor):
            targets += [
                Target(acls, "execute", astatement, is_async=True),
                Target(acls, "executemany", astatement, is_async=True),
            ]
        return targets

    def install(self) -> None:
        import psycopg

        super().install()

        # psycopg.connect is Connection.connect bound at import: rebind it to the patched one.
        def call_the_patched_connect(original: Callable[..., Any]) -> Callable[..., Any]:
            def connect(conninfo: str = "", **kwargs: Any) -> Any:
                return psycopg.Connection.connect(conninfo, **kwargs)

            return connect

        self.patches.wrap(psycopg, "connect", call_the_patched_connect)

    def uninstall(self) -> None:
        super().uninstall()
        self.sessions.clear()

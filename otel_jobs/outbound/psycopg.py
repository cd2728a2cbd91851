"""psycopg 3 (``psycopg.connect``, ``Connection``, ``AsyncConnection``): connects and statements that can wait forever.

Two parts can be missing:

* ``connect``: a connect without ``connect_timeout`` (in the conninfo, the keyword arguments
  or ``PGCONNECT_TIMEOUT``). psycopg 3.2+ then gives up after 130 s per host, libpq's own
  guess, which is rarely what a job wants; otel-jobs flags it. Checked in
  ``Connection.connect`` / ``AsyncConnection.connect`` (and ``psycopg.connect``), which pools
  use too.
* ``statement``: a statement run on a session whose ``statement_timeout`` is 0, however it
  was set (server or role default, ``options='-c statement_timeout=5s'``, ``PGOPTIONS``,
  ``SET``). otel-jobs reads ``SHOW statement_timeout`` once per connection, right after
  connecting (one round trip, outside any transaction), and again after a statement of yours
  that mentions ``statement_timeout``. Checked in ``execute`` / ``executemany`` of the sync
  and async cursors (``Connection.execute`` goes through them).

Policies:

* ``enforce`` adds ``connect_timeout`` (whole seconds, at least 2: libpq's minimum) to a
  connect without one, and sets ``statement_timeout`` on the session of a connection without
  one (``SET``, outside any transaction, right after connecting). Statements on that session
  stay counted, as enforced. An exceeded timeout raises psycopg's own
  ``ConnectionTimeout`` / ``QueryCanceled``.
* ``raise`` refuses a connect without ``connect_timeout``, and a statement on a session
  without ``statement_timeout``, with :class:`otel_jobs.MissingTimeoutError`, before it is
  sent.

Caveats: a connection opened before ``instrument()`` is probed at its first statement made
outside a transaction (until then its statements are not checked); ``SET LOCAL
statement_timeout`` is seen only for the rest of its transaction; a query built with
``psycopg.sql`` is not searched for ``statement_timeout``.
"""

from __future__ import annotations

import math
import os
import sys
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core import errors
from ..core.patching import Patches
from ..core.run import current_run
from .base import Checker, InFlightCall, MissingTimeoutError, format_host

if TYPE_CHECKING:
    from ..core.agent import Agent

LIBRARY = "psycopg"
HINT = "connect with connect_timeout=... and options='-c statement_timeout=...' (or SET statement_timeout)"
_STATEMENT = ("statement",)
_SHOW = "SHOW statement_timeout"


def _connect_missing(conninfo: str, kwargs: dict[str, Any]) -> tuple[str, ...]:
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(conninfo, **kwargs)
    value = params.get("connect_timeout")
    if value is None:
        value = os.environ.get("PGCONNECT_TIMEOUT")
    try:
        seconds = float(value) if value is not None else 0.0
    except ValueError:
        seconds = 0.0
    return () if seconds > 0 else ("connect",)


def _connect_host(conninfo: str, kwargs: dict[str, Any]) -> str:
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(conninfo, **kwargs)
    host = str(params.get("host") or os.environ.get("PGHOST") or "localhost").split(",")[0]
    port = str(params.get("port") or os.environ.get("PGPORT") or "5432").split(",")[0]
    if host.startswith("/"):
        return f"unix:{host}"
    return format_host(host, int(port) if port.isdigit() else None)


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


def _mentions_timeout(query: Any) -> bool:
    if isinstance(query, str):
        return "statement_timeout" in query or "STATEMENT_TIMEOUT" in query
    if isinstance(query, bytes):
        return b"statement_timeout" in query or b"STATEMENT_TIMEOUT" in query
    return False


class Adapter:
    """Checks connects and cursor statements, sync and async (see the module docstring)."""

    name = LIBRARY

    def __init__(self, agent: Agent) -> None:
        self.checker = Checker(agent, LIBRARY, HINT)
        self.patches = Patches()
        # connection -> (missing parts of its statements, host); absent: not probed yet
        self.sessions: weakref.WeakKeyDictionary[Any, tuple[tuple[str, ...], str]] = (
            weakref.WeakKeyDictionary()
        )
        self._execute: Callable[..., Any] | None = None  # the original Cursor.execute
        self._aexecute: Callable[..., Any] | None = None  # the original AsyncCursor.execute

    # --- the session's statement_timeout ------------------------------------------------

    def _probe_sql(self) -> tuple[str, int]:
        return _SHOW, max(1, math.ceil(self.checker.default_timeout * 1000))

    def _can_probe(self, conn: Any) -> bool:
        from psycopg import pq

        info = conn.info
        return (
            not conn.closed
            and info.transaction_status == pq.TransactionStatus.IDLE
            and info.pipeline_status == pq.PipelineStatus.OFF
        )

    def _probe(self, conn: Any) -> tuple[tuple[str, ...], str] | None:
        """``SHOW statement_timeout`` outside any transaction (enforce: ``SET`` it too)."""
        from psycopg.rows import tuple_row

        if self._execute is None or not self._can_probe(conn):
            return None
        show, ms = self._probe_sql()
        autocommit = conn.autocommit
        if not autocommit:
            conn.autocommit = True  # no transaction opened by otel-jobs; SET is session-wide
        try:
            with conn.cursor(row_factory=tuple_row) as cur:
                self._execute(cur, show)
                row = cur.fetchone()
                missing = _STATEMENT if row is not None and row[0] == "0" else ()
                if missing and self.checker.enforce:
                    self._execute(cur, f"SET statement_timeout = {ms}")
        finally:
            if not autocommit:
                conn.autocommit = False
        state = (missing, _conn_host(conn))
        self.sessions[conn] = state
        return state

    async def _aprobe(self, conn: Any) -> tuple[tuple[str, ...], str] | None:
        from psycopg.rows import tuple_row

        if self._aexecute is None or not self._can_probe(conn):
            return None
        show, ms = self._probe_sql()
        autocommit = conn.autocommit
        if not autocommit:
            await conn.set_autocommit(True)
        try:
            async with conn.cursor(row_factory=tuple_row) as cur:
                await self._aexecute(cur, show)
                row = await cur.fetchone()
                missing = _STATEMENT if row is not None and row[0] == "0" else ()
                if missing and self.checker.enforce:
                    await self._aexecute(cur, f"SET statement_timeout = {ms}")
        finally:
            if not autocommit:
                await conn.set_autocommit(False)
        state = (missing, _conn_host(conn))
        self.sessions[conn] = state
        return state

    # --- patches ------------------------------------------------------------------------------

    def install(self) -> None:
        import psycopg
        from psycopg._server_cursor import ServerCursor
        from psycopg._server_cursor_async import AsyncServerCursor

        checker = self.checker
        adapter = self
        sessions = self.sessions

        def wrap_connect(original: Any) -> Any:
            function = original.__func__

            def connect(cls: Any, conninfo: str = "", **kwargs: Any) -> Any:
                run = current_run()
                call = None
                try:
                    missing = _connect_missing(conninfo, kwargs)
                    if missing or run is not None:
                        host = _connect_host(conninfo, kwargs)
                        call = checker.begin(run, "CONNECT", host, missing, sys._getframe())
                        if missing and checker.enforce:
                            kwargs["connect_timeout"] = max(2, math.ceil(checker.default_timeout))
                except MissingTimeoutError:
                    raise
                except Exception as exc:
                    errors.record("outbound.psycopg", exc)
                try:
                    conn = function(cls, conninfo, **kwargs)
                finally:
                    checker.end(run, call)
                with errors.guard("outbound.psycopg"):
                    adapter._probe(conn)
                return conn

            connect.__otel_jobs_wrapped__ = True  # type: ignore[attr-defined]
            return classmethod(connect)

        def wrap_aconnect(original: Any) -> Any:
            function = original.__func__

            async def connect(cls: Any, conninfo: str = "", **kwargs: Any) -> Any:
                run = current_run()
                call = None
                try:
                    missing = _connect_missing(conninfo, kwargs)
                    if missing or run is not None:
                        host = _connect_host(conninfo, kwargs)
                        call = checker.begin(
                            run, "CONNECT", host, missing, sys._getframe(), lazy_site=False
                        )
                        if missing and checker.enforce:
                            kwargs["connect_timeout"] = max(2, math.ceil(checker.default_timeout))
                except MissingTimeoutError:
                    raise
                except Exception as exc:
                    errors.record("outbound.psycopg", exc)
                try:
                    conn = await function(cls, conninfo, **kwargs)
                finally:
                    checker.end(run, call)
                with errors.guard("outbound.psycopg"):
                    await adapter._aprobe(conn)
                return conn

            connect.__otel_jobs_wrapped__ = True  # type: ignore[attr-defined]
            return classmethod(connect)

        def wrap_execute(original: Callable[..., Any]) -> Callable[..., Any]:
            def execute(cur: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
                run = current_run()
                checked = False
                conn = cur._conn
                call: InFlightCall | None
                try:
                    state = sessions.get(conn)
                    if state is None:
                        state = adapter._probe(conn)
                    missing = state[0] if state is not None else ()
                    if _mentions_timeout(query):
                        sessions.pop(conn, None)  # probe again at the next statement
                    if missing or run is not None:
                        host = state[1] if state is not None else _conn_host(conn)
                        call = checker.begin(run, _verb(query), host, missing, sys._getframe())
                        checked = True
                except MissingTimeoutError:
                    raise
                except Exception as exc:
                    errors.record("outbound.psycopg", exc)
                if not checked:
                    return original(cur, query, *args, **kwargs)
                try:
                    return original(cur, query, *args, **kwargs)
                finally:
                    checker.end(run, call)

            return execute

        def wrap_aexecute(original: Callable[..., Any]) -> Callable[..., Any]:
            async def execute(cur: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
                run = current_run()
                checked = False
                conn = cur._conn
                call: InFlightCall | None
                try:
                    state = sessions.get(conn)
                    if state is None:
                        state = await adapter._aprobe(conn)
                    missing = state[0] if state is not None else ()
                    if _mentions_timeout(query):
                        sessions.pop(conn, None)
                    if missing or run is not None:
                        host = state[1] if state is not None else _conn_host(conn)
                        call = checker.begin(
                            run, _verb(query), host, missing, sys._getframe(), lazy_site=False
                        )
                        checked = True
                except MissingTimeoutError:
                    raise
                except Exception as exc:
                    errors.record("outbound.psycopg", exc)
                if not checked:
                    return await original(cur, query, *args, **kwargs)
                try:
                    return await original(cur, query, *args, **kwargs)
                finally:
                    checker.end(run, call)

            return execute

        self._execute = psycopg.Cursor.execute
        self._aexecute = psycopg.AsyncCursor.execute
        wrap = self.patches.wrap
        wrap(psycopg.Connection, "connect", wrap_connect)
        wrap(psycopg.AsyncConnection, "connect", wrap_aconnect)

        # psycopg.connect is Connection.connect bound at import: rebind it to the patched one.
        def wrap_module_connect(original: Callable[..., Any]) -> Callable[..., Any]:
            def connect(conninfo: str = "", **kwargs: Any) -> Any:
                return psycopg.Connection.connect(conninfo, **kwargs)

            return connect

        wrap(psycopg, "connect", wrap_module_connect)
        for cls in (psycopg.Cursor, ServerCursor):
            wrap(cls, "execute", wrap_execute)
            wrap(cls, "executemany", wrap_execute)
        for acls in (psycopg.AsyncCursor, AsyncServerCursor):
            wrap(acls, "execute", wrap_aexecute)
            wrap(acls, "executemany", wrap_aexecute)

    def uninstall(self) -> None:
        self.patches.undo()
        self.sessions.clear()

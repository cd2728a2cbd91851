"""redis-py (``redis.Redis`` and ``redis.asyncio.Redis``, pipelines too): commands on a client with no socket timeouts.

A redis-py client waits forever by default: ``socket_timeout`` (every read and write) and
``socket_connect_timeout`` (which falls back to ``socket_timeout``) are None unless set, on
the client or in the URL (``redis://host:6379/0?socket_timeout=5``). Each command, and each
pipeline ``execute()``, made on such a client is flagged, for the parts that are missing
(``connect``, ``read``). Checked in ``execute_command`` of the sync and asyncio clients and in
``execute`` / ``immediate_execute_command`` of their pipelines.

* ``enforce`` gives the client's connection pool the missing timeouts
  (``OTEL_JOBS_DEFAULT_TIMEOUT``), for the connections it opens next and the ones it holds;
  commands made on that client stay counted, as enforced. An exceeded timeout raises
  redis-py's own ``redis.exceptions.TimeoutError``. Blocking commands (``BLPOP key 0``,
  ``XREAD BLOCK 0``...) then fail after that timeout: give their client its own timeout.
* ``raise`` refuses the command with :class:`otel_jobs.MissingTimeoutError` before a
  connection is taken from the pool.

Not covered: ``RedisCluster`` and ``PubSub`` (``get_message`` takes its own timeout).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core import errors
from ..core.patching import Patches
from ..core.run import current_run
from .base import Checker, InFlightCall, MissingTimeoutError, format_host

if TYPE_CHECKING:
    from ..core.agent import Agent

LIBRARY = "redis"
HINT = "create the client with socket_timeout= and socket_connect_timeout= (or ?socket_timeout= in its URL)"
_ENFORCED = "_otel_jobs_missing"  # set on a pool whose timeouts otel-jobs enforced


def _missing(pool: Any) -> tuple[str, ...]:
    enforced = pool.__dict__.get(_ENFORCED)
    if enforced is not None:
        return enforced
    kwargs = pool.connection_kwargs
    read = kwargs.get("socket_timeout")
    connect = kwargs.get("socket_connect_timeout")
    if connect is None:
        connect = read
    if read is not None and connect is not None:
        return ()
    if connect is None:
        return ("connect", "read") if read is None else ("connect",)
    return ("read",)


def _host(pool: Any) -> str:
    kwargs = pool.connection_kwargs
    path = kwargs.get("path")
    if path:
        return f"unix:{path}"
    return format_host(kwargs.get("host", "localhost"), kwargs.get("port", 6379))


def _enforce(pool: Any, missing: tuple[str, ...], default: float) -> None:
    if pool.__dict__.get(_ENFORCED) is not None:
        return
    kwargs = pool.connection_kwargs
    if "read" in missing:
        kwargs["socket_timeout"] = default
    if "connect" in missing and kwargs.get("socket_connect_timeout") is None:
        kwargs["socket_connect_timeout"] = default
    # Connections the pool already holds were built from the old settings.
    held = [
        *getattr(pool, "_available_connections", ()),
        *getattr(pool, "_in_use_connections", ()),
        *getattr(pool, "_connections", ()),
    ]
    for conn in held:
        if "connect" in missing and conn.socket_connect_timeout is None:
            conn.socket_connect_timeout = default
        if "read" in missing and conn.socket_timeout is None:
            conn.socket_timeout = default
            sock = getattr(conn, "_sock", None)
            if sock is not None:
                sock.settimeout(default)
    setattr(pool, _ENFORCED, missing)


def _command(args: tuple[Any, ...]) -> str:
    if not args:
        return "COMMAND"
    name = args[0]
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    return str(name).upper()


def _pipeline(client: Any, args: tuple[Any, ...]) -> str:
    return "MULTI" if getattr(client, "transaction", False) else "PIPELINE"


class Adapter:
    """Checks commands of the sync and asyncio clients (see the module docstring)."""

    name = LIBRARY

    def __init__(self, agent: Agent) -> None:
        self.checker = Checker(agent, LIBRARY, HINT)
        self.patches = Patches()

    def _sync(self, describe: Callable[..., str]) -> Callable[..., Callable[..., Any]]:
        checker = self.checker

        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            def command(client: Any, *args: Any, **kwargs: Any) -> Any:
                run = current_run()
                checked = False
                try:
                    pool = client.connection_pool
                    missing = _missing(pool)
                    if missing or run is not None:
                        call = checker.begin(
                            run, describe(client, args), _host(pool), missing, sys._getframe()
                        )
                        checked = True
                        if missing and checker.enforce:
                            _enforce(pool, missing, checker.default_timeout)
                except MissingTimeoutError:
                    raise
                except Exception as exc:
                    errors.record("outbound.redis", exc)
                if not checked:
                    return original(client, *args, **kwargs)
                try:
                    return original(client, *args, **kwargs)
                finally:
                    checker.end(run, call)

            return command

        return wrap

    def _async(self, describe: Callable[..., str]) -> Callable[..., Callable[..., Any]]:
        checker = self.checker

        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            async def command(client: Any, *args: Any, **kwargs: Any) -> Any:
                run = current_run()
                checked = False
                call: InFlightCall | None
                try:
                    pool = client.connection_pool
                    missing = _missing(pool)
                    if missing or run is not None:
                        call = checker.begin(
                            run, describe(client, args), _host(pool), missing, sys._getframe(),
                            lazy_site=False,
                        )  # fmt: skip
                        checked = True
                        if missing and checker.enforce:
                            _enforce(pool, missing, checker.default_timeout)
                except MissingTimeoutError:
                    raise
                except Exception as exc:
                    errors.record("outbound.redis", exc)
                if not checked:
                    return await original(client, *args, **kwargs)
                try:
                    return await original(client, *args, **kwargs)
                finally:
                    checker.end(run, call)

            return command

        return wrap

    def install(self) -> None:
        import redis.asyncio.client as async_client
        import redis.client as sync_client

        def by_command(client: Any, args: tuple[Any, ...]) -> str:
            return _command(args)

        wrap = self.patches.wrap
        wrap(sync_client.Redis, "execute_command", self._sync(by_command))
        wrap(sync_client.Pipeline, "execute", self._sync(_pipeline))
        wrap(sync_client.Pipeline, "immediate_execute_command", self._sync(by_command))
        wrap(async_client.Redis, "execute_command", self._async(by_command))
        wrap(async_client.Pipeline, "execute", self._async(_pipeline))
        wrap(async_client.Pipeline, "immediate_execute_command", self._async(by_command))

    def uninstall(self) -> None:
        self.patches.undo()

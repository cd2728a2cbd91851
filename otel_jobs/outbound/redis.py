"""redis-py (``redis.Redis`` and ``redis.asyncio.Redis``, pipelines, locks): commands on a client with no socket timeouts, and locks that can wait or be held forever.

**Commands** (library ``redis``). A redis-py client waits forever by default:
``socket_timeout`` (every read and write) and ``socket_connect_timeout`` (which falls back to
``socket_timeout``) are None unless set, on the client or in the URL
(``redis://host:6379/0?socket_timeout=5``). Each command, and each pipeline ``execute()``,
made on such a client is flagged, for the parts that are missing (``connect``, ``read``).
Checked in ``execute_command`` of the sync and asyncio clients and in ``execute`` /
``immediate_execute_command`` of their pipelines.

* ``enforce`` gives the client's connection pool the missing timeouts
  (``OTEL_JOBS_DEFAULT_TIMEOUT``), for the connections it opens next and the ones it holds;
  commands made on that client stay counted, as enforced. An exceeded timeout raises
  redis-py's own ``redis.exceptions.TimeoutError``. Blocking commands (``BLPOP key 0``,
  ``XREAD BLOCK 0``...) then fail after that timeout: give their client its own timeout.
* ``raise`` refuses the command with :class:`otel_jobs.MissingTimeoutError` before a
  connection is taken from the pool.

**Locks** (library ``redis-lock``), checked in ``Lock.acquire`` (``with client.lock(...)``
too) of the sync and asyncio clients. Two parts can be missing:

* ``blocking``: the acquire waits for the lock with no end: ``blocking`` (the call's, else the
  lock's) is true and ``blocking_timeout`` (the call's, else the lock's) is None.
* ``expiry``: the lock has no ``timeout``, so it is never released if its holder dies.

Each acquire is one call (method ``ACQUIRE <lock name>``), flagged at the line that acquires;
the commands it sends are checked as commands, but while it waits they are not heartbeats of the
run: a run waiting on a lock is seen as stalled, waiting in ``ACQUIRE``. ``enforce`` gives the acquire a
``blocking_timeout`` of ``OTEL_JOBS_DEFAULT_TIMEOUT``; a lock not acquired by then raises
redis-py's ``LockError`` (the caller asked to wait for it, so it cannot expect ``False``).
``enforce`` never gives a lock an expiry (one shorter than the work would let a second holder
in): that part is reported only. ``raise`` refuses the acquire before anything is sent.

Not covered: ``RedisCluster`` commands and ``PubSub`` (``get_message`` takes its own timeout).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from ..core.redaction import format_host
from . import _internals
from .adapter import CallCheck, MethodAdapter, Target, argument, replace_argument
from .base import Args, Checker, Kwargs, Missing

if TYPE_CHECKING:
    from ..core.agent import Agent

LIBRARY = "redis"
HINT = "create the client with socket_timeout= and socket_connect_timeout= (or ?socket_timeout= in its URL)"
LOCK_LIBRARY = "redis-lock"
LOCK_HINT = (
    "give the lock a timeout= (it expires if its holder dies) and a blocking_timeout= "
    "(client.lock(name, timeout=60, blocking_timeout=10)), and handle a lock not acquired"
)
_ENFORCED = "_otel_jobs_missing"  # set on a pool whose timeouts otel-jobs enforced
#: Set on the pool of a job framework's own client (a worker's broker connection, see
#: adapter.CallCheck.framework_own): its calls outside runs are not checked.
_FRAMEWORK_OWN = "_otel_jobs_framework_own"
_MAX_LOCK_NAME = 100  # characters of a lock's name in its method


# --- commands ----------------------------------------------------------------------------


def _pool_missing(pool: Any) -> Missing:
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


def _enforce_on_pool(pool: Any, missing: Missing, default: float) -> None:
    if pool.__dict__.get(_ENFORCED) is not None:
        return
    kwargs = pool.connection_kwargs
    if "read" in missing:
        kwargs["socket_timeout"] = default
    if "connect" in missing and kwargs.get("socket_connect_timeout") is None:
        kwargs["socket_connect_timeout"] = default
    # Connections the pool already holds were built from the old settings.
    for conn in list(_internals.redis_pool_connections(pool)):
        if "connect" in missing and conn.socket_connect_timeout is None:
            conn.socket_connect_timeout = default
        if "read" in missing and conn.socket_timeout is None:
            conn.socket_timeout = default
            sock = _internals.redis_connection_socket(conn)
            if sock is not None:
                sock.settimeout(default)
    setattr(pool, _ENFORCED, missing)


def _client_timeout(args: Args, kwargs: Kwargs) -> tuple[Any, Missing]:
    pool = args[0].connection_pool
    return pool, _pool_missing(pool)


def _describe_command(args: Args, kwargs: Kwargs, pool: Any) -> tuple[str, str]:
    name = args[1] if len(args) > 1 else "COMMAND"
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    return str(name).upper(), _host(pool)


def _describe_pipeline(args: Args, kwargs: Kwargs, pool: Any) -> tuple[str, str]:
    return ("MULTI" if getattr(args[0], "transaction", False) else "PIPELINE"), _host(pool)


def _enforce(
    args: Args, kwargs: Kwargs, pool: Any, missing: Missing, default: float
) -> tuple[Args, Kwargs]:
    _enforce_on_pool(pool, missing, default)
    return args, kwargs


def _framework_own(pool: Any) -> bool:
    return bool(pool.__dict__.get(_FRAMEWORK_OWN, False))


def _mark_framework_own(pool: Any) -> None:
    setattr(pool, _FRAMEWORK_OWN, True)


COMMAND = CallCheck(
    _client_timeout, _describe_command, _enforce,
    framework_own=_framework_own, mark_framework_own=_mark_framework_own,
)  # fmt: skip
PIPELINE = CallCheck(
    _client_timeout, _describe_pipeline, _enforce,
    framework_own=_framework_own, mark_framework_own=_mark_framework_own,
)  # fmt: skip


# --- locks -------------------------------------------------------------------------------


def _lock_method(lock: Any) -> str:
    name = lock.name
    if isinstance(name, (bytes, memoryview)):
        name = bytes(name).decode("utf-8", "replace")
    return f"ACQUIRE {str(name)[:_MAX_LOCK_NAME]}"


def _describe_lock(args: Args, kwargs: Kwargs, lock: Any) -> tuple[str, str]:
    pool = getattr(lock.redis, "connection_pool", None)  # a RedisCluster has none
    return _lock_method(lock), _host(pool) if pool is not None else "unknown"


def _acquired(args: Args, kwargs: Kwargs, acquired: Any, enforced: Missing) -> Any:
    """A lock not acquired within the enforced blocking timeout is an error, not ``False``."""
    if not acquired and "blocking" in enforced:
        from redis.exceptions import LockError

        raise LockError(
            f"otel-jobs: {_lock_method(args[0])} not acquired within OTEL_JOBS_DEFAULT_TIMEOUT, "
            "enforced because it had no blocking_timeout"
        )
    return acquired


def lock_check(acquire: Any) -> CallCheck:
    """How to read the calls of ``acquire``, a sync or asyncio ``Lock.acquire``.

    Where ``blocking`` and ``blocking_timeout`` stand differs between the two and across
    redis-py versions: they are looked up once, in its signature.
    """
    names = list(inspect.signature(acquire).parameters)
    blocking_at, timeout_at = names.index("blocking"), names.index("blocking_timeout")

    def timeout(args: Args, kwargs: Kwargs) -> tuple[Any, Missing]:
        lock = args[0]
        blocking = argument(args, kwargs, blocking_at, "blocking", None)
        waits_for = argument(args, kwargs, timeout_at, "blocking_timeout", None)
        if blocking is None:
            blocking = lock.blocking
        if waits_for is None:
            waits_for = lock.blocking_timeout
        missing: Missing = ("blocking",) if blocking and waits_for is None else ()
        return lock, missing if lock.timeout else (*missing, "expiry")

    def enforce(
        args: Args, kwargs: Kwargs, lock: Any, missing: Missing, default: float
    ) -> tuple[Args, Kwargs]:
        if "blocking" not in missing:
            return args, kwargs  # an expiry is never enforced (see the module docstring)
        return replace_argument(args, kwargs, timeout_at, "blocking_timeout", default)

    return CallCheck(timeout, _describe_lock, enforce, after=_acquired, waits=True)


class Adapter(MethodAdapter):
    """Checks commands and lock acquires of the sync and asyncio clients (see above)."""

    name, hint = LIBRARY, HINT

    def __init__(self, agent: Agent) -> None:
        super().__init__(agent)
        self.lock_checker = Checker(agent, LOCK_LIBRARY, LOCK_HINT, never_enforced=("expiry",))

    def targets(self) -> list[Target]:
        import redis.asyncio.client as async_client
        import redis.asyncio.lock as async_lock
        import redis.client as sync_client
        import redis.lock as sync_lock

        locks = self.lock_checker
        return [
            Target(sync_client.Redis, "execute_command", COMMAND),
            Target(sync_client.Pipeline, "execute", PIPELINE),
            Target(sync_client.Pipeline, "immediate_execute_command", COMMAND),
            Target(async_client.Redis, "execute_command", COMMAND, is_async=True),
            Target(async_client.Pipeline, "execute", PIPELINE, is_async=True),
            Target(async_client.Pipeline, "immediate_execute_command", COMMAND, is_async=True),
            Target(sync_lock.Lock, "acquire", lock_check(sync_lock.Lock.acquire), False, locks),
            Target(async_lock.Lock, "acquire", lock_check(async_lock.Lock.acquire), True, locks),
        ]

"""Redis clients for the collectors: bounded timeouts, no retries, credentials kept out of labels.

Every collector that reads Redis gets its client here, so that the rules hold in one place:
connect and read timeouts of ``timeout`` seconds, no automatic retry (a retry would stretch a
poll past its deadline; the next poll is the retry), and reads in one ``MULTI``/``EXEC``
transaction (a consistent snapshot: two monitors reading the same keys at the same moment get
the same figures, and counts derived from two keys never see a job half-moved).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .base import BrokerUnavailable, reason

#: What a failing Redis raises: refused, reset, timed out, loading, read-only replica, auth...
ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)


def bounded(timeout: float) -> dict[str, Any]:
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry_on_timeout": False,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }


def from_url(url: str, timeout: float) -> redis.Redis:
    """A client for ``url`` whose every call gives up after ``timeout`` seconds."""
    return redis.Redis.from_url(url, **bounded(timeout))


def from_pool(pool: Any, timeout: float) -> redis.Redis:
    """A client with the address and credentials of a framework's own pool, and our timeouts."""
    kwargs = dict(getattr(pool, "connection_kwargs", {}) or {})
    for key in ("retry", "retry_on_timeout", "socket_timeout", "socket_connect_timeout"):
        kwargs.pop(key, None)
    kwargs.update(bounded(timeout))
    new_pool = redis.ConnectionPool(
        connection_class=getattr(pool, "connection_class", redis.Connection), **kwargs
    )
    return redis.Redis(connection_pool=new_pool)


def address(client: redis.Redis) -> str:
    """``redis://host:port/db`` (or ``unix://path``) of a client: no user name, no password."""
    kw: Mapping[str, Any] = client.connection_pool.connection_kwargs
    if kw.get("path"):
        return f"unix://{kw['path']}?db={kw.get('db', 0)}"
    scheme = "rediss" if client.connection_pool.connection_class is redis.SSLConnection else "redis"
    host = kw.get("host", "localhost")
    if ":" in str(host):
        host = f"[{host}]"
    return f"{scheme}://{host}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def strip_credentials(url: str) -> str:
    """``url`` without its user name and password (``amqp://u:p@h:5672//`` -> ``amqp://h:5672//``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def read(client: redis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Run read-only ``commands`` (``("llen", key)``...) in one transaction: one round trip."""
    if not commands:
        return []
    try:
        with client.pipeline(transaction=True) as pipe:
            for name, *args in commands:
                getattr(pipe, name)(*args)
            return list(pipe.execute())
    except ERRORS as exc:
        raise BrokerUnavailable(reason(exc)) from exc


def ping(client: redis.Redis) -> None:
    try:
        client.ping()
    except ERRORS as exc:
        raise BrokerUnavailable(reason(exc)) from exc


def close(client: redis.Redis) -> None:
    try:
        client.connection_pool.disconnect()
    except Exception:  # closing a socket that another thread is using: nothing to save
        pass


def text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

"""redis-py locks, sync and asyncio, on the real Redis (database 15, flushed by this module only).

A lock acquire that can wait forever (``blocking`` without ``blocking_timeout``) or takes a lock
that never expires (no ``timeout``) is flagged as library ``redis-lock`` at the line that
acquires; one with both timeouts never is.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.lock
import redis.lock

import otel_jobs
from tests.outbound.probe import NO_TIMEOUT, flagged, here, in_thread, metrics, warnings_of
from tests.support import require_redis
from tests.support.waiting import wait_for

pytestmark = pytest.mark.broker

DB = 15
HOST = "127.0.0.1:6379"
# Socket timeouts on every client: only the locks are under test, not the commands they send.
OPTIONS: dict[str, Any] = {"host": "127.0.0.1", "port": 6379, "db": DB, "socket_timeout": 10}


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    require_redis()
    client = redis.Redis(**OPTIONS)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def lock_name() -> str:
    return f"otel-jobs-test-lock:{uuid.uuid4().hex[:8]}"


def test_a_lock_without_timeouts_is_flagged_where_it_is_acquired(
    outbound: Any, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    outbound("redis")
    name = lock_name()
    site = here()
    with client.lock(name):
        assert client.get(name) is not None  # warn changes nothing: the lock is held
    assert flagged(library="redis-lock", host=HOST, call_site=site) == 1
    assert flagged(library="redis") == 0  # the commands it sent had a socket timeout
    [message] = warnings_of(caplog)
    assert f"ACQUIRE {name} {HOST} via redis-lock has no blocking/expiry timeout" in message
    assert f"from {site}" in message and "blocking_timeout=" in message


@pytest.mark.parametrize(
    ("make", "acquire", "missing"),
    [
        ({"blocking_timeout": 5}, {}, "expiry"),
        ({"timeout": 30}, {}, "blocking"),
        ({"timeout": 30, "blocking": False}, {"blocking": True}, "blocking"),
        ({}, {"blocking": False}, "expiry"),
        ({"timeout": 0}, {"blocking_timeout": 5}, "expiry"),  # 0: redis-py sets no expiry
    ],
)
def test_only_the_missing_part_is_named(
    outbound: Any,
    client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    make: dict[str, Any],
    acquire: dict[str, Any],
    missing: str,
) -> None:
    outbound("redis")
    lock = client.lock(lock_name(), **make)
    assert lock.acquire(**acquire)
    lock.release()
    [message] = warnings_of(caplog)
    assert f"via redis-lock has no {missing} timeout" in message


def test_locks_with_both_timeouts_are_never_flagged(outbound: Any, client: redis.Redis) -> None:
    outbound("redis")
    with client.lock(lock_name(), timeout=30, blocking_timeout=5):
        pass
    lock = client.lock(lock_name(), timeout=30)
    assert lock.acquire(blocking_timeout=5)  # the call's own blocking timeout
    lock.release()
    lock = client.lock(lock_name(), timeout=30)
    assert lock.acquire(0.1, False)  # sleep, blocking=False: positions read from the signature
    lock.release()
    assert metrics().find(NO_TIMEOUT) == []


def test_asyncio_locks(outbound: Any, client: redis.Redis) -> None:
    outbound("redis")
    sites: list[str] = []
    name = lock_name()

    async def main() -> None:
        async_client = redis.asyncio.Redis(**OPTIONS)
        sites.append(here())
        async with async_client.lock(name):
            pass
        lock = async_client.lock(lock_name(), timeout=30)
        assert await lock.acquire(False, None)  # blocking=False, positionally (asyncio order)
        await lock.release()
        async with async_client.lock(lock_name(), timeout=30, blocking_timeout=5):
            pass
        await async_client.aclose()

    asyncio.run(main())
    assert flagged(library="redis-lock", call_site=sites[0]) == 1
    assert flagged(library="redis-lock") == 1


def test_enforce_turns_a_wait_forever_into_lock_error(
    outbound: Any, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    outbound("redis", "enforce", default_timeout=0.3)
    name = lock_name()
    client.set(name, "held by someone else")

    def take() -> Any:
        with client.lock(name, timeout=30):  # waits for ever without otel-jobs
            return "acquired"

    result = in_thread(take)
    assert isinstance(result, redis.exceptions.LockError), result
    assert "OTEL_JOBS_DEFAULT_TIMEOUT" in str(result)
    lock = client.lock(name, timeout=30)
    result = in_thread(lock.acquire)  # a bare acquire() too: the caller cannot expect False
    assert isinstance(result, redis.exceptions.LockError), result
    assert client.get(name) == b"held by someone else"
    assert "otel-jobs applied 0.3 s to the missing parts" in warnings_of(caplog)[0]


def test_enforce_never_gives_a_lock_an_expiry(
    outbound: Any, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    outbound("redis", "enforce", default_timeout=0.3)
    name = lock_name()
    lock = client.lock(name)
    assert lock.acquire()  # free: acquired at once
    assert client.pttl(name) == -1  # no expiry: one chosen by otel-jobs could end it early
    lock.release()
    [message] = warnings_of(caplog)
    assert "applied 0.3 s to the blocking part; it never enforces the expiry part" in message


def test_enforce_leaves_the_callers_own_blocking_timeout_alone(
    outbound: Any, client: redis.Redis
) -> None:
    outbound("redis", "enforce", default_timeout=30)
    name = lock_name()
    client.set(name, "held by someone else")
    lock = client.lock(name, blocking_timeout=0.2)  # no expiry: flagged, nothing to enforce
    assert in_thread(lock.acquire) is False  # redis-py's own answer, not a LockError
    assert flagged(library="redis-lock") == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_raise_refuses_the_acquire_before_anything_is_sent(
    outbound: Any, client: redis.Redis, kind: str
) -> None:
    outbound("redis", "raise")
    name = lock_name()
    sites: list[str] = []
    with pytest.raises(otel_jobs.MissingTimeoutError) as caught:
        if kind == "sync":
            sites.append(here())
            client.lock(name, timeout=30).acquire()
        else:

            async def main() -> None:
                async_client = redis.asyncio.Redis(**OPTIONS)
                try:
                    sites.append(here())
                    await async_client.lock(name, blocking_timeout=5).acquire()
                finally:
                    await async_client.aclose()

            asyncio.run(main())
    error = caught.value
    assert (error.library, error.method, error.host) == ("redis-lock", f"ACQUIRE {name}", HOST)
    assert error.missing == (("blocking",) if kind == "sync" else ("expiry",))
    assert error.call_site == sites[0]
    assert client.exists(name) == 0  # never taken


def test_a_run_waiting_on_a_lock_shows_it_in_flight(outbound: Any, client: redis.Redis) -> None:
    outbound("redis")
    name = lock_name()
    client.set(name, "held by someone else")
    runs: list[Any] = []
    sites: list[str] = []

    def job() -> None:
        with otel_jobs.job_run("locks.wait") as run:
            runs.append(run)
            sites.append(here())
            with client.lock(name, timeout=30):
                pass

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    waiting = wait_for(
        "the acquire in the run's calls",
        lambda: [c for c in (runs[0].calls if runs else []) if c.library == "redis-lock"],
        30,
        interval=0.01,
    )
    [call] = waiting
    assert (call.method, call.host, call.missing) == (f"ACQUIRE {name}", HOST, ("blocking",))
    assert call.call_site == sites[0]
    assert "via redis-lock (no blocking timeout)" in call.describe()
    client.delete(name)  # the holder lets go: the job takes the lock and ends
    thread.join(30)
    assert not thread.is_alive()
    assert runs[0].calls == []


def test_uninstrument_restores_acquire(instrumented: Any, client: redis.Redis) -> None:
    before = (vars(redis.lock.Lock)["acquire"], vars(redis.asyncio.lock.Lock)["acquire"])
    instrumented(frameworks=[], outbound=["redis"])
    patched = (vars(redis.lock.Lock)["acquire"], vars(redis.asyncio.lock.Lock)["acquire"])
    assert all(p is not b for p, b in zip(patched, before, strict=True))
    otel_jobs.instrument(frameworks=[], outbound=["redis"])  # a second call changes nothing
    assert (vars(redis.lock.Lock)["acquire"], vars(redis.asyncio.lock.Lock)["acquire"]) == patched
    otel_jobs.uninstrument()
    assert (vars(redis.lock.Lock)["acquire"], vars(redis.asyncio.lock.Lock)["acquire"]) == before
    with client.lock(lock_name()):  # behaviour restored
        pass


def test_the_watchdog_sees_a_run_waiting_on_a_lock_as_stalled(
    outbound: Any, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # The acquire polls Redis (SET NX every 0.1 s): those answered commands are not heartbeats.
    outbound("redis", heartbeat_timeout=0.3, watchdog_interval=0.1)
    name = lock_name()
    client.set(name, "held by someone else")
    sites: list[str] = []

    def job() -> None:
        with otel_jobs.job_run("locks.stuck"):
            sites.append(here())
            with client.lock(name, timeout=30, sleep=0.05):
                pass

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    try:
        stuck = wait_for(
            "the watchdog to report the run waiting on the lock",
            lambda: [r.getMessage() for r in caplog.records if "locks.stuck" in r.getMessage()],
            30,
            interval=0.05,
        )
    finally:
        client.delete(name)
        thread.join(30)
    assert f"outbound call ACQUIRE {name} {HOST} via redis-lock (no blocking timeout)" in stuck[0]
    assert f"from {sites[0]}" in stuck[0]

"""redis-py and psycopg 3, sync and asyncio, against the real Redis and PostgreSQL (and a silent server)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest
import redis
import redis.asyncio

import otel_jobs
from tests.outbound import probe
from tests.support import require_postgres, require_redis
from tests.support.servers import SilentServer

PG = "host=127.0.0.1 port=5432 dbname=test user=postgres"
REDIS_HOST = "127.0.0.1:6379"

pytestmark = pytest.mark.broker


# --- redis ---------------------------------------------------------------------------------


def test_redis_warn_command_and_pipeline(outbound: Any, caplog: pytest.LogCaptureFixture) -> None:
    require_redis()
    outbound("redis")
    key = f"otel-jobs-test:{uuid.uuid4()}"
    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=3)
    site = probe.here()
    client.set(key, "1", ex=60)
    pipe = client.pipeline()
    pipe.get(key)
    pipe.delete(key)
    pipe_site = probe.here()
    assert pipe.execute() == [b"1", 1]
    client.close()

    assert probe.flagged(library="redis", host=REDIS_HOST, call_site=site) == 1
    assert probe.flagged(library="redis", call_site=pipe_site) == 1
    first, second = probe.warnings_of(caplog)
    assert f"SET {REDIS_HOST} via redis has no read timeout" in first
    assert f"MULTI {REDIS_HOST} via redis has no read timeout" in second


def test_redis_with_timeouts_is_never_flagged(outbound: Any) -> None:
    require_redis()
    outbound("redis")
    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)  # connect falls back to it
    client.ping()
    client.close()
    from_url = redis.Redis.from_url("redis://127.0.0.1:6379/0?socket_timeout=5")
    from_url.ping()
    from_url.close()
    assert probe.metrics().find(probe.NO_TIMEOUT) == []


def test_redis_async_warn(outbound: Any) -> None:
    require_redis()
    outbound("redis")
    sites = []

    async def main() -> None:
        client = redis.asyncio.Redis(host="127.0.0.1", port=6379)
        sites.append(probe.here())
        assert await client.ping()
        async with client.pipeline(transaction=False) as pipe:
            pipe.ping()
            sites.append(probe.here())
            await pipe.execute()
        await client.aclose()

    asyncio.run(main())
    assert probe.flagged(library="redis", call_site=sites[0]) == 1
    assert probe.flagged(library="redis", call_site=sites[1]) == 1


def test_redis_enforce_turns_a_hang_into_redis_timeout(
    outbound: Any, silent_server: SilentServer
) -> None:
    outbound("redis", "enforce", default_timeout=0.5)
    client = redis.Redis(host="127.0.0.1", port=silent_server.port, retry_on_timeout=False)
    result = probe.in_thread(lambda: client.get("k"))
    assert isinstance(result, redis.exceptions.TimeoutError)
    assert probe.flagged(library="redis") == 1
    result = probe.in_thread(lambda: client.get("k"))  # still counted, as enforced
    assert isinstance(result, redis.exceptions.TimeoutError)
    assert probe.flagged(library="redis") == 2


def test_redis_async_enforce(outbound: Any, silent_server: SilentServer) -> None:
    outbound("redis", "enforce", default_timeout=0.5)

    async def main() -> None:
        client = redis.asyncio.Redis(host="127.0.0.1", port=silent_server.port)
        try:
            await client.get("k")
        finally:
            await client.aclose()

    with pytest.raises(redis.exceptions.TimeoutError):
        asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_redis_raise_sends_nothing(outbound: Any, silent_server: SilentServer, kind: str) -> None:
    outbound("redis", "raise")
    with pytest.raises(otel_jobs.MissingTimeoutError) as caught:
        if kind == "sync":
            redis.Redis(host="127.0.0.1", port=silent_server.port).get("k")
        else:

            async def main() -> None:
                await redis.asyncio.Redis(host="127.0.0.1", port=silent_server.port).get("k")

            asyncio.run(main())
    assert (caught.value.library, caught.value.method) == ("redis", "GET")
    assert caught.value.host == silent_server.host
    assert probe.nothing_reached(silent_server)


# --- psycopg -------------------------------------------------------------------------------


def test_psycopg_warn_connect_and_statement(
    outbound: Any, caplog: pytest.LogCaptureFixture
) -> None:
    require_postgres()
    outbound("psycopg")
    connect_site = probe.here()
    with psycopg.connect(PG) as conn:
        statement_site = probe.here()
        assert conn.execute("SELECT 1").fetchone() == (1,)
        with conn.cursor() as cur:
            cur.executemany("SELECT %s", [(1,), (2,)])
    host = "127.0.0.1:5432"
    assert probe.flagged(library="psycopg", host=host, call_site=connect_site) == 1
    assert probe.flagged(library="psycopg", host=host, call_site=statement_site) == 1
    assert probe.flagged(library="psycopg") == 3
    connect_msg, statement_msg = probe.warnings_of(caplog)[:2]
    assert f"CONNECT {host} via psycopg has no connect timeout" in connect_msg
    assert f"SELECT {host} via psycopg has no statement timeout" in statement_msg


def test_psycopg_with_timeouts_is_never_flagged(outbound: Any) -> None:
    require_postgres()
    outbound("psycopg")
    with psycopg.connect(PG, connect_timeout=5, options="-c statement_timeout=5000") as conn:
        conn.execute("SELECT 1")
    with psycopg.connect(PG + " connect_timeout=5") as conn:
        conn.execute("SET statement_timeout = '3s'")  # probe.flagged: the session had none yet
        conn.execute("SELECT 1")  # in the transaction SET opened: not checked
        conn.commit()
        conn.execute("SELECT 2")  # probed again: the session has 3 s now
    assert probe.flagged(library="psycopg") == 1


def test_psycopg_async_warn(outbound: Any) -> None:
    require_postgres()
    outbound("psycopg")
    sites = []

    async def main() -> None:
        sites.append(probe.here())
        conn = await psycopg.AsyncConnection.connect(PG)
        async with conn:
            sites.append(probe.here())
            await conn.execute("SELECT 1")
            async with conn.cursor() as cur:
                sites.append(probe.here())
                await cur.execute("SELECT 2")

    asyncio.run(main())
    for site in sites:
        assert probe.flagged(library="psycopg", call_site=site) == 1


def test_psycopg_enforce_statement_timeout(outbound: Any) -> None:
    require_postgres()
    outbound("psycopg", "enforce", default_timeout=0.5)
    with psycopg.connect(PG, connect_timeout=5) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("500ms",)
        result = probe.in_thread(lambda: conn.execute("SELECT pg_sleep(30)"))
        assert isinstance(result, psycopg.errors.QueryCanceled)
    # a session timeout of the caller's own is never overridden
    with psycopg.connect(PG, connect_timeout=5, options="-c statement_timeout=7000") as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("7s",)


def test_psycopg_async_enforce_statement_timeout(outbound: Any) -> None:
    require_postgres()
    outbound("psycopg", "enforce", default_timeout=0.5)

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(PG, connect_timeout=5) as conn:
            await conn.execute("SELECT pg_sleep(30)")

    with pytest.raises(psycopg.errors.QueryCanceled):
        asyncio.run(asyncio.wait_for(main(), 60))


def test_psycopg_enforce_connect_timeout(outbound: Any, silent_server: SilentServer) -> None:
    outbound("psycopg", "enforce", default_timeout=0.5)
    conninfo = f"host=127.0.0.1 port={silent_server.port} dbname=test user=postgres"
    result = probe.in_thread(lambda: psycopg.connect(conninfo))
    assert isinstance(result, psycopg.errors.ConnectionTimeout)


def test_psycopg_raise_refuses_connect_before_connecting(
    outbound: Any, silent_server: SilentServer
) -> None:
    outbound("psycopg", "raise")
    with pytest.raises(otel_jobs.MissingTimeoutError) as caught:
        psycopg.connect(f"host=127.0.0.1 port={silent_server.port} dbname=test user=postgres")
    assert caught.value.missing == ("connect",)
    assert probe.nothing_reached(silent_server)

    async def main() -> None:
        await psycopg.AsyncConnection.connect(
            host="127.0.0.1", port=silent_server.port, dbname="test", user="postgres"
        )

    with pytest.raises(otel_jobs.MissingTimeoutError):
        asyncio.run(main())
    assert silent_server.connections == 1  # only probe.nothing_reached's own


def test_psycopg_raise_refuses_statement_before_sending(outbound: Any) -> None:
    require_postgres()
    outbound("psycopg", "raise")
    table = f"otel_jobs_refused_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, connect_timeout=5, autocommit=True) as conn:
        with pytest.raises(otel_jobs.MissingTimeoutError) as caught:
            site = probe.here()
            conn.execute(f"CREATE TABLE {table} (id int)")
        assert (caught.value.method, caught.value.call_site) == ("CREATE", site)
    with psycopg.connect(PG, connect_timeout=5, options="-c statement_timeout=5000") as conn:
        found = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
    assert found == (None,)  # the refused statement never reached the server


# --- psycopg: lock_timeout (a lock wait is bounded by either setting) ----------------------

NEITHER = "-c statement_timeout=0 -c lock_timeout=0"  # explicit: whatever the server's defaults


def test_psycopg_lock_part_only_when_both_timeouts_are_absent(
    outbound: Any, caplog: pytest.LogCaptureFixture
) -> None:
    require_postgres()
    outbound("psycopg")
    host = "127.0.0.1:5432"
    with psycopg.connect(PG, connect_timeout=5, options=NEITHER) as conn:
        neither = probe.here()
        conn.execute("SELECT 1")
    with psycopg.connect(PG, connect_timeout=5, options="-c lock_timeout=5000") as conn:
        lock_only = probe.here()
        conn.execute("SELECT 2")
    with psycopg.connect(PG, connect_timeout=5, options="-c statement_timeout=5000") as conn:
        conn.execute("SELECT 3")  # never probe.flagged: the statement timeout bounds lock waits
    with psycopg.connect(PG, connect_timeout=5, options=NEITHER, autocommit=True) as conn:
        set_site = probe.here()
        conn.execute("SET lock_timeout = '2s'")  # probe.flagged: the session had neither yet
        after_set = probe.here()
        conn.execute("SELECT 4")  # read again: a lock timeout now, no statement timeout

    for site in (neither, lock_only, set_site, after_set):
        assert probe.flagged(library="psycopg", host=host, call_site=site) == 1
    assert probe.flagged(library="psycopg") == 4
    logged = probe.warnings_of(caplog)
    assert len(logged) == 4
    both = "has no statement timeout and no lock timeout"
    assert f"SELECT {host} via psycopg {both}, from {neither}:" in logged[0]
    assert f"SELECT {host} via psycopg has no statement timeout, from {lock_only}:" in logged[1]
    assert f"SET {host} via psycopg {both}, from {set_site}:" in logged[2]
    assert f"SELECT {host} via psycopg has no statement timeout, from {after_set}:" in logged[3]


def test_psycopg_raise_names_the_lock_part(outbound: Any) -> None:
    require_postgres()
    outbound("psycopg", "raise")
    with psycopg.connect(PG, connect_timeout=5, options=NEITHER) as conn:
        with pytest.raises(otel_jobs.MissingTimeoutError) as caught:
            site = probe.here()
            conn.execute("SELECT 1")
        assert (caught.value.missing, caught.value.call_site) == (("statement", "lock"), site)
        assert "no statement/lock timeout" in str(caught.value)
    with psycopg.connect(PG, connect_timeout=5, options="-c lock_timeout=5000") as conn:
        with pytest.raises(otel_jobs.MissingTimeoutError) as caught:
            conn.execute("SELECT 1")
        assert caught.value.missing == ("statement",)
    with psycopg.connect(PG, connect_timeout=5, options="-c statement_timeout=5000") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)  # not refused

    async def main() -> tuple[str, ...]:
        conn = await psycopg.AsyncConnection.connect(PG, connect_timeout=5, options=NEITHER)
        async with conn:
            try:
                await conn.execute("SELECT 1")
            except otel_jobs.MissingTimeoutError as exc:
                return exc.missing
        return ()

    assert asyncio.run(main()) == ("statement", "lock")


def test_psycopg_enforce_bounds_a_lock_wait(
    outbound: Any, caplog: pytest.LogCaptureFixture
) -> None:
    require_postgres()
    outbound("psycopg", "enforce", default_timeout=0.5)
    table = f"otel_jobs_locked_{uuid.uuid4().hex[:8]}"
    bounded = "-c statement_timeout=5000"
    with psycopg.connect(PG, connect_timeout=5, options=bounded, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")
        conn.execute(f"INSERT INTO {table} VALUES (1, 1)")
    try:
        with psycopg.connect(PG, connect_timeout=5, options=bounded) as holder:
            holder.execute(f"UPDATE {table} SET v = 2 WHERE id = 1")  # holds the row lock
            with psycopg.connect(PG, connect_timeout=5, options=NEITHER) as waiter:
                locked = f"SELECT v FROM {table} WHERE id = 1 FOR UPDATE"
                result = probe.in_thread(lambda: waiter.execute(locked))
            holder.rollback()
    finally:
        with psycopg.connect(PG, connect_timeout=5, options=bounded, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
    # the statement timeout enforced on the session ended the lock wait (not a lock_timeout)
    assert isinstance(result, psycopg.errors.QueryCanceled)
    assert not isinstance(result, psycopg.errors.LockNotAvailable)
    [logged] = probe.warnings_of(caplog)  # the waiter's statement, the only one probe.flagged
    assert "has no statement timeout and no lock timeout" in logged
    assert "otel-jobs applied 0.5 s to the missing parts" in logged

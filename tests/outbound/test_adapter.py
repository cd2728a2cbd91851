"""The one wrapper of every outbound check (otel_jobs/outbound/adapter.py), on a small library
made here: what an adapter's CallCheck functions and hooks get, and what happens when one fails."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.instrumentation.utils import suppress_instrumentation

import otel_jobs
from otel_jobs.core import errors
from otel_jobs.outbound.adapter import CallCheck, wrap_async, wrap_sync
from otel_jobs.outbound.base import Checker
from tests.outbound.probe import flagged, here

LIBRARY = "test-library"


class Client:
    """A client library: ``get(url, timeout=None)``; None waits forever."""

    def __init__(self) -> None:
        self.seen: list[Any] = []  # what each call was made with, and the run's calls meanwhile

    def get(self, url: str, timeout: float | None = None) -> str:
        run = otel_jobs.current_run()
        self.seen.append((timeout, [c.method for c in run.calls] if run else None))
        return f"got {url}"

    async def aget(self, url: str, timeout: float | None = None) -> str:
        await asyncio.sleep(0)
        return self.get(url, timeout)


def _timeout(args: Any, kwargs: Any) -> Any:
    timeout = kwargs.get("timeout")
    return timeout, () if timeout is not None else ("read",)


def _describe(args: Any, kwargs: Any, timeout: Any) -> tuple[str, str]:
    return "GET", args[1]


def _enforce(args: Any, kwargs: Any, timeout: Any, missing: Any, default: float) -> Any:
    return args, {**kwargs, "timeout": default}


CHECK = CallCheck(_timeout, _describe, _enforce)


def broken(*args: Any) -> Any:
    raise RuntimeError("an adapter's own bug")


def checker_with(instrumented: Any, **options: Any) -> Checker:
    """A Checker of the library made here, under an agent instrumented with ``options``."""
    return Checker(instrumented(frameworks=[], outbound=[], **options), LIBRARY, "timeout=")


@pytest.fixture
def checker(instrumented: Any) -> Checker:
    return checker_with(instrumented)


@pytest.mark.internal_errors("outbound.test-library")
def test_a_call_whose_timeout_cannot_be_read_goes_on_untracked_and_is_counted(
    checker: Checker,
) -> None:
    client = Client()
    get = wrap_sync(checker, CallCheck(broken, _describe, _enforce), Client.get)
    before = errors.counts().get(f"outbound.{LIBRARY}", 0)
    with otel_jobs.job_run("unreadable"):
        assert get(client, "h:1") == "got h:1"
    assert client.seen == [(None, [])]  # called as made, never in the run's calls
    assert errors.counts()[f"outbound.{LIBRARY}"] == before + 1
    assert flagged(library=LIBRARY) == 0


@pytest.mark.internal_errors("outbound.test-library")
def test_an_enforce_that_fails_leaves_no_call_in_flight(instrumented: Any) -> None:
    client = Client()
    checker = checker_with(instrumented, missing_timeout="enforce")
    get = wrap_sync(checker, CallCheck(_timeout, _describe, broken), Client.get)
    before = errors.counts().get(f"outbound.{LIBRARY}", 0)
    with otel_jobs.job_run("enforce.fails") as run:
        assert isinstance(run, otel_jobs.Run)
        beat = run.last_beat
        assert get(client, "h:1") == "got h:1"
        assert run.calls == []  # ended although enforce failed after begin
        assert run.last_beat > beat  # and the call was a heartbeat
    assert client.seen == [(None, ["GET"])]  # called as made, tracked while in flight
    assert errors.counts()[f"outbound.{LIBRARY}"] == before + 1
    assert flagged(library=LIBRARY) == 1


def test_hooks_run_around_the_call_and_after_sees_the_enforced_parts(instrumented: Any) -> None:
    checker = checker_with(instrumented, missing_timeout="enforce", default_timeout=7)
    order: list[Any] = []

    def before(args: Any, kwargs: Any) -> None:
        order.append(("before", kwargs.get("timeout")))

    def after(args: Any, kwargs: Any, result: str, enforced: Any) -> str:
        order.append(("after", kwargs["timeout"], enforced))
        if result == "got refuse:1":
            raise LookupError("the adapter's answer, on purpose")
        return result.upper()

    client = Client()
    get = wrap_sync(checker, CallCheck(_timeout, _describe, _enforce, before, after), Client.get)
    assert get(client, "h:1") == "GOT H:1"
    assert get(client, "h:1", timeout=2) == "GOT H:1"
    with pytest.raises(LookupError):
        get(client, "refuse:1", timeout=3)
    assert order == [
        ("before", None), ("after", 7, ("read",)),
        ("before", 2), ("after", 2, ()),
        ("before", 3), ("after", 3, ()),
    ]  # fmt: skip
    assert [timeout for timeout, _ in client.seen] == [7, 2, 3]


def test_async_hooks_are_awaited_and_the_call_site_is_the_callers(checker: Checker) -> None:
    order: list[str] = []

    async def before(args: Any, kwargs: Any) -> None:
        await asyncio.sleep(0)
        order.append("before")

    async def after(args: Any, kwargs: Any, result: str, enforced: Any) -> str:
        await asyncio.sleep(0)
        order.append("after")
        return result

    aget = wrap_async(checker, CallCheck(_timeout, _describe, _enforce, before, after), Client.aget)
    sites: list[str] = []

    async def main() -> None:
        async with otel_jobs.job_run("async.hooks"):
            sites.append(here())
            assert await aget(Client(), "h:2") == "got h:2"

    asyncio.run(main())
    assert order == ["before", "after"]
    assert flagged(library=LIBRARY, call_site=sites[0]) == 1


def test_outermost_only_checks_a_nested_call_once_and_a_suppressed_call_never(
    checker: Checker,
) -> None:
    check = CallCheck(_timeout, _describe, _enforce, outermost_only=True)
    client = Client()
    inner = wrap_sync(checker, check, Client.get)

    def outer_get(self: Client, url: str, timeout: float | None = None) -> str:
        return inner(self, url, timeout=timeout)  # a library calling another underneath

    outer = wrap_sync(checker, check, outer_get)
    outer(client, "h:3")
    assert flagged(library=LIBRARY) == 1
    with suppress_instrumentation():
        inner(client, "h:3")
    assert flagged(library=LIBRARY) == 1
    inner(client, "h:3")
    assert flagged(library=LIBRARY) == 2

"""Dramatiq's async actors: the run follows its coroutine onto Dramatiq's event-loop thread.

:func:`bind_run_to_coroutine` wraps ``EventLoopThread.run_coroutine`` (installed by
:class:`otel_jobs.integrations.dramatiq.Integration`): see the Dramatiq module's docstring.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from ..core import errors
from ..core.run import current_run


def bind_run_to_coroutine(original: Any) -> Any:
    """Wrap ``EventLoopThread.run_coroutine``: an async actor's run follows its coroutine.

    The worker thread waits while the coroutine runs on the event-loop thread; bound to the
    coroutine's task, the run is diagnosed from the coroutine's await chain and the loop
    thread's CPU time, and the ``cancel`` policy cancels the task.
    """

    def run_coroutine(loop_thread: Any, coro: Any) -> Any:
        run = current_run()
        if run is None or run.finished:
            return original(loop_thread, coro)

        waiting_native_id = run.native_id  # the worker thread's, which waits meanwhile

        async def bound() -> Any:
            with errors.guard("integration.dramatiq.async"):
                run.task = asyncio.current_task()
                run.loop = asyncio.get_running_loop()
                run.native_id = threading.get_native_id()
            try:
                return await coro
            finally:
                run.task = run.loop = None
                run.native_id = waiting_native_id

        return original(loop_thread, bound())

    return run_coroutine

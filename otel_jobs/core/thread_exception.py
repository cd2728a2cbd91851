"""Raising an exception inside another thread: CPython's ``PyThreadState_SetAsyncExc``.

The one place otel-jobs calls into the C API (the watchdog's ``cancel`` policy,
:mod:`otel_jobs.core.stall_policy`), apart from the policy that decides when; as dramatiq keeps
its ``raise_thread_exception`` apart from its time limits. The exception is raised at the next
Python instruction the thread runs: a thread blocked inside a C call (a socket read without a
timeout, ``time.sleep``) sees it only when that call returns.
"""

from __future__ import annotations

import ctypes

_set_async_exc = ctypes.pythonapi["PyThreadState_SetAsyncExc"]
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)
_set_async_exc.restype = ctypes.c_int
# The same C function with a NULL exception: clears a pending one.
_clear_async_exc = ctypes.pythonapi["PyThreadState_SetAsyncExc"]
_clear_async_exc.argtypes = (ctypes.c_ulong, ctypes.c_void_p)
_clear_async_exc.restype = ctypes.c_int


def raise_thread_exception(thread_id: int, exception: type[BaseException]) -> bool:
    """Schedule ``exception`` (a class, instantiated without arguments in the thread) in the
    thread ``thread_id`` (``threading.get_ident()``); False if no such thread.

    The caller must make sure the thread still runs what the exception is meant for: it lands in
    whatever the thread runs next.
    """
    modified = _set_async_exc(thread_id, exception)
    if modified > 1:  # cannot happen with a live thread id; undo as the C API asks
        _clear_async_exc(thread_id, None)
        return False
    return modified == 1

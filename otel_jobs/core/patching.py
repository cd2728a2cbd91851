"""Patch and unpatch, mirrored: every patch records how to undo itself.

>>> patches = Patches()
>>> patches.wrap(requests.adapters.HTTPAdapter, "send", lambda original: checked(original))
>>> patches.undo()     # restores exactly what was there before

Wrapping twice is refused (the second ``wrap`` of the same attribute is a no-op), so
``instrument()`` twice never double-wraps; wrappers are marked with ``__otel_jobs_wrapped__``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

_MARK = "__otel_jobs_wrapped__"


class Patches:
    """A list of patches applied by one adapter, undone in reverse order."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, Any, bool]] = []

    def wrap(
        self, owner: Any, attribute: str, make_wrapper: Callable[[Any], Callable[..., Any]]
    ) -> bool:
        """Replace ``owner.attribute`` by ``make_wrapper(original)``; False if already wrapped.

        A classmethod or staticmethod of a class stays one: ``make_wrapper`` is given its plain
        function (which takes the class first, for a classmethod) and the wrapper is made the
        same kind of method, wherever in the class's MRO the original is defined.
        """
        is_class = isinstance(owner, type)
        had_own = attribute in vars(owner) if is_class else hasattr(owner, attribute)
        original = getattr(owner, attribute)
        if getattr(original, _MARK, False):
            return False
        kind = None
        if is_class:
            found = inspect.getattr_static(owner, attribute)
            if isinstance(found, (classmethod, staticmethod)):
                kind, original = type(found), found.__func__
        wrapper = make_wrapper(original)
        if callable(original):
            try:
                functools.update_wrapper(wrapper, original)
            except (AttributeError, TypeError):
                pass
        setattr(wrapper, _MARK, True)
        raw = vars(owner)[attribute] if is_class and had_own else original
        setattr(owner, attribute, wrapper if kind is None else kind(wrapper))
        self._undo.append((owner, attribute, raw, had_own))
        return True

    def undo(self) -> None:
        while self._undo:
            owner, attribute, original, had_own = self._undo.pop()
            if had_own or not isinstance(owner, type):
                setattr(owner, attribute, original)
            else:
                delattr(owner, attribute)

"""Patches: a classmethod or staticmethod stays one when wrapped, and undo restores what was there."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from otel_jobs.core.patching import Patches


class Base:
    @classmethod
    def make(cls, value: int) -> tuple[type, int]:
        return cls, value

    @staticmethod
    def double(value: int) -> int:
        return value * 2

    def method(self, value: int) -> int:
        return value + 1


class Child(Base):
    pass


def logging_wrapper(seen: list[tuple[Any, ...]]) -> Callable[[Callable[..., Any]], Any]:
    def make_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            seen.append(args)
            return original(*args, **kwargs)

        return wrapper

    return make_wrapper


def test_a_classmethod_stays_a_classmethod_and_gets_the_class_it_is_called_on() -> None:
    seen: list[tuple[Any, ...]] = []
    before = vars(Base)["make"]
    patches = Patches()
    assert patches.wrap(Base, "make", logging_wrapper(seen))
    assert isinstance(vars(Base)["make"], classmethod)
    assert Base.make(1) == (Base, 1)
    assert Child.make(2) == (Child, 2)  # inherited: still bound to the class it is called on
    assert Child().make(3) == (Child, 3)
    assert seen == [(Base, 1), (Child, 2), (Child, 3)]
    assert not patches.wrap(Base, "make", logging_wrapper(seen))  # never wrapped twice
    patches.undo()
    assert vars(Base)["make"] is before


def test_a_staticmethod_stays_a_staticmethod() -> None:
    seen: list[tuple[Any, ...]] = []
    before = vars(Base)["double"]
    patches = Patches()
    patches.wrap(Base, "double", logging_wrapper(seen))
    assert isinstance(vars(Base)["double"], staticmethod)
    assert Base().double(4) == 8  # called on an instance: no self slipped in
    assert Base.double(5) == 10
    assert seen == [(4,), (5,)]
    patches.undo()
    assert vars(Base)["double"] is before


def test_a_method_inherited_from_a_base_is_wrapped_on_the_subclass_and_removed_after() -> None:
    seen: list[tuple[Any, ...]] = []
    patches = Patches()
    patches.wrap(Child, "make", logging_wrapper(seen))
    patches.wrap(Child, "method", logging_wrapper(seen))
    assert isinstance(vars(Child)["make"], classmethod)
    assert Child.make(1) == (Child, 1)
    assert Base.make(1) == (Base, 1)  # the base class is left alone
    assert Child().method(1) == 2
    assert len(seen) == 2
    patches.undo()
    assert "make" not in vars(Child) and "method" not in vars(Child)
    assert Child.make(1) == (Child, 1)

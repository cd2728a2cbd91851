"""Which Dramatiq brokers otel-jobs' middleware goes on: the global broker and those bound to
module-level names when ``instrument()`` runs (:func:`existing_brokers`), and every broker
created afterwards unless it was given an empty middleware list (:func:`no_middleware_asked`).
See :mod:`otel_jobs.integrations.dramatiq`.
"""

from __future__ import annotations

import sys
from typing import Any

import dramatiq
import dramatiq.broker


def no_middleware_asked(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether ``Broker.__init__`` was given an empty middleware list (``middleware=[]``)."""
    given = kwargs["middleware"] if "middleware" in kwargs else (args[0] if args else None)
    try:
        return given is not None and len(given) == 0
    except TypeError:  # an iterator, used up by now: not an explicit empty list
        return False


def existing_brokers() -> list[dramatiq.Broker]:
    """The global broker and brokers bound to module-level names (created before instrument())."""
    found: dict[int, dramatiq.Broker] = {}
    if isinstance(dramatiq.broker.global_broker, dramatiq.Broker):
        found[id(dramatiq.broker.global_broker)] = dramatiq.broker.global_broker
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict) or namespace.get("__name__", "").startswith("dramatiq"):
            continue
        for value in list(namespace.values()):
            try:
                if isinstance(value, dramatiq.Broker):
                    found[id(value)] = value
            except Exception:  # a lazy proxy whose __class__ raises outside its context
                continue
    return list(found.values())

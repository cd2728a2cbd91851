"""Huey: a run is lost when its lease expired; Huey keeps no record of a task in progress.

Huey removes a message from its queue when a consumer takes it: a consumer that dies mid-task
loses it for good, and nothing in Redis says that it was running. Lost runs are counted and
logged (with the task id and its checkpoint); requeueing them is not supported yet.
"""

from __future__ import annotations

from typing import Any

from .detector import Detector


class HueyDetector(Detector):
    framework = "huey"
    requeues = False

    def __init__(self, client: Any, huey: Any = None, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.huey = huey

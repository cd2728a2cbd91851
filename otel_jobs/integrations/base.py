"""The base class of framework integrations: hooks that all default to nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..core.agent import Agent

logger = logging.getLogger("otel_jobs")


class Integration:
    """One framework's adapter. ``install`` connects or patches; ``uninstall`` undoes exactly that."""

    name = "base"

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def install(self) -> None:
        """Connect to the framework's hooks."""

    def uninstall(self) -> None:
        """Disconnect everything :meth:`install` connected."""


@dataclass(frozen=True)
class Finding:
    """A queue configuration mistake found by an integration's audit (or ``otel-jobs doctor``)."""

    framework: str
    finding: str  # a short stable id, e.g. "no_time_limit"; the label of otel_jobs_config_finding
    message: str  # what is wrong and how to fix it, for a person


def report_findings(agent: Agent, findings: list[Finding]) -> None:
    """Log each finding once (WARNING) and set ``otel_jobs_config_finding{framework, finding}`` to 1."""
    for f in findings:
        key = (f.framework, f.finding)
        if key in agent.telemetry.config_findings:
            continue
        agent.telemetry.config_findings[key] = 1.0
        logger.warning("otel-jobs: %s configuration: %s", f.framework, f.message)

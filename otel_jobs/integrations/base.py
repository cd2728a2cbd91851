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

    @property
    def active(self) -> bool:
        """Whether the agent that installed this integration still runs: a patched hook that
        outlives ``uninstrument()`` (a job submitted before it) calls straight through."""
        return not self.agent.stopped

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


class _WorkerLogForward(logging.Handler):
    """Hands otel-jobs' records to a worker's own logger while nothing else would show them."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers or any(h is not self for h in logger.handlers):
            return  # the application's logging shows them
        self.target.handle(record)


def follow_worker_logging(target: logging.Logger) -> None:
    """Show otel-jobs' log records (stall verdicts, audit findings) through ``target``'s
    handlers while the application configured none for them.

    For frameworks whose worker sets up a logger of its own and leaves the root logger bare
    (``rq worker`` sets up ``rq.worker``): otherwise Python's last-resort handler prints them as
    bare lines on stderr. Undone by :func:`unfollow_worker_logging`.
    """
    unfollow_worker_logging()
    logger.addHandler(_WorkerLogForward(target))


def unfollow_worker_logging() -> None:
    """Undo :func:`follow_worker_logging`."""
    for handler in list(logger.handlers):
        if isinstance(handler, _WorkerLogForward):
            logger.removeHandler(handler)


def report_findings(agent: Agent, findings: list[Finding]) -> None:
    """Log each finding once (WARNING) and set ``otel_jobs_config_finding{framework, finding}`` to 1."""
    for f in findings:
        key = (f.framework, f.finding)
        if key in agent.telemetry.config_findings:
            continue
        agent.telemetry.config_findings[key] = 1.0
        logger.warning("otel-jobs: %s configuration: %s", f.framework, f.message)

"""Tests of the alert rules (alerts/), the generator (otel_jobs/rules.py) and the runbooks."""

from __future__ import annotations

import shutil

import pytest

from tests.support import IN_CI

INSTALL_HINT = "apt-get install -y prometheus prometheus-alertmanager"


def require_binary(name: str) -> str:
    """The path of a Prometheus tool; skip (with CI=true: fail) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed; install it with: {INSTALL_HINT}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path

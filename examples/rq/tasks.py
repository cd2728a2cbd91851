"""The jobs of the example: one healthy, one that hangs on an outbound call without a timeout."""

from __future__ import annotations

import time
import urllib.request

import otel_jobs


def build_report(pages: int) -> int:
    """Healthy: renders its pages and says so with a heartbeat after each."""
    for page in range(pages):
        time.sleep(0.1)  # render one page
        otel_jobs.heartbeat(progress=(page + 1) / pages, last_page=page)
    return pages


def fetch_invoice(url: str) -> bytes:
    """Stuck: calls a partner API with no timeout; the partner accepts and never answers."""
    with urllib.request.urlopen(url) as response:  # no timeout=: waits for good
        return response.read()

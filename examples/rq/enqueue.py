"""Enqueue three healthy reports and one invoice fetch that hangs."""

from __future__ import annotations

import os

from redis import Redis
from rq import Queue, Retry
from tasks import build_report, fetch_invoice

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PARTNER = f"http://127.0.0.1:{os.environ.get('PARTNER_PORT', '8099')}/invoices/42"

if __name__ == "__main__":
    connection = Redis.from_url(REDIS_URL, socket_timeout=30, socket_connect_timeout=10)
    reports = Queue("reports", connection=connection, default_timeout=120)
    billing = Queue("billing", connection=connection, default_timeout=300)
    for pages in (3, 5, 8):
        reports.enqueue(build_report, pages, retry=Retry(max=2, interval=[5, 30]))
    job = billing.enqueue(fetch_invoice, PARTNER, retry=Retry(max=2, interval=[60, 300]))
    print(f"enqueued 3 reports and invoice fetch {job.id}")

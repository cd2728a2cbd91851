"""Enqueue three healthy reports and one request that gets stuck."""

import uuid

from tasks import send_report, wait_for_approval

for pages in (3, 5, 8):
    send_report(pages)
wait_for_approval(uuid.uuid4().hex)
print("enqueued 3 reports and 1 approval request")

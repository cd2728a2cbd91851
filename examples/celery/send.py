"""Publish ten healthy tasks and one that will hang.

Importing ``proj`` instruments this process too: each message carries its publish time (for
``otel_jobs_queue_wait_seconds``) and the trace context. This process only publishes, so it does
not serve ``/metrics`` (the worker does, on the same port).
"""

import os

os.environ.setdefault("OTEL_JOBS_PROMETHEUS_ENABLED", "false")

from proj import app

for i in range(10):
    app.send_task("example.resize_image", args=(i,))
app.send_task("example.fetch_partner_report", args=("acme",))
print("sent 10 x example.resize_image and 1 x example.fetch_partner_report")

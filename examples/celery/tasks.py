"""Two tasks: one healthy, one that hangs on an outbound call made without a timeout."""

import os
import time
import urllib.request

from proj import app

import otel_jobs


@app.task(name="example.resize_image", autoretry_for=(OSError,), retry_backoff=True)
def resize_image(image_id: int) -> str:
    for step in range(5):
        time.sleep(0.1)  # the work
        otel_jobs.heartbeat(progress=(step + 1) / 5)
    return f"image {image_id} resized"


@app.task(name="example.fetch_partner_report", autoretry_for=(OSError,), max_retries=2)
def fetch_partner_report(partner: str) -> bytes:
    # No timeout: if the partner accepts the connection and never answers, this waits forever
    # (here, until the task's 60 s time limit kills it).
    url = os.environ.get("PARTNER_URL", "http://127.0.0.1:8099/report")
    with urllib.request.urlopen(f"{url}?partner={partner}") as response:
        return bytes(response.read())

"""Send three healthy reports and one request that gets stuck."""

import uuid

from tasks import broker, send_report, wait_for_approval

for pages in (3, 5, 8):
    send_report.send(pages)
wait_for_approval.send(uuid.uuid4().hex)
broker.close()
print("sent 3 reports and 1 approval request")

"""A partner API that accepts connections and never answers (what makes fetch_invoice hang)."""

from __future__ import annotations

import os
import socket
import time

PORT = int(os.environ.get("PARTNER_PORT", "8099"))

if __name__ == "__main__":
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", PORT))
    server.listen(64)
    print(f"partner API on http://127.0.0.1:{PORT}/ accepts and never answers", flush=True)
    held = []
    while True:
        conn, _ = server.accept()
        held.append(conn)  # keep it open, say nothing
        time.sleep(0)

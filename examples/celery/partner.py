"""A partner API that accepts connections and never answers (127.0.0.1:8099)."""

import socket
import time

with socket.create_server(("127.0.0.1", 8099)) as server:
    print("partner listening on 127.0.0.1:8099, never answering")
    held = []
    while True:
        connection, _ = server.accept()
        held.append(connection)  # keep it open, say nothing
        time.sleep(0)

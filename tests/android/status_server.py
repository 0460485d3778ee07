"""A loopback HTTP server standing in for Google's attestation status list (offline here)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LIST_A = b'{"entries": {"c8966fcb2fbb0d7a": {"status": "SUSPENDED"}}}'
LIST_B = b'{"entries": {"2c8cdddfd5e03bfc": {"status": "REVOKED"}}}'


class StatusServer:
    """Serves whatever ``body``/``status``/``cache_control`` say; counts requests."""

    def __init__(self) -> None:
        self.body = LIST_A
        self.status = 200
        self.cache_control = "public, max-age=3600"
        self.headers: dict[str, str] = {}  # sent too
        self.drip = 0.0  # seconds between the body's bytes, as a stalling server would
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", outer.cache_control)
                self.send_header("Content-Length", str(len(outer.body)))
                for name, value in outer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if not outer.drip:
                    self.wfile.write(outer.body)
                    return
                for offset in range(len(outer.body)):
                    self.wfile.write(outer.body[offset : offset + 1])
                    self.wfile.flush()
                    time.sleep(outer.drip)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/attestation/status"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.drip = 0.0  # a dripping handler finishes at once (its client has gone)
        self.server.shutdown()
        self.server.server_close()



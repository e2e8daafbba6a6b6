"""A webhook receiver on loopback for the tests: a real HTTP server in a thread that checks
each delivery's Standard Webhooks signature and timestamp (``core.webhooks.verify``), counts
every delivery by ``webhook-id``, and answers with a status the test chooses."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from core.webhooks import verify


@dataclass
class Received:
    """What arrived: every POST in order, and those that were answered 2xx."""

    secret: str = ""
    status: int = 200  # what to answer now
    posts: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def accepted(self) -> list[dict[str, Any]]:
        """The deliveries answered 2xx (with a valid signature)."""
        with self.lock:
            return [p for p in self.posts if p["answered"] < 300]

    def accepted_ids(self) -> list[str]:
        return [p["id"] for p in self.accepted]

    def events(self) -> list[str]:
        return [p["body"]["type"] for p in self.accepted]


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, Received]]:
    """Yields the receiver's URL and what it received; set ``secret`` before deliveries."""
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            with received.lock:
                try:
                    verify(received.secret, headers, body)
                    status = received.status
                except ValueError:
                    received.bad_signatures += 1
                    status = 401
                received.posts.append(
                    {
                        "id": headers.get("webhook-id"),
                        "timestamp": headers.get("webhook-timestamp"),
                        "body": json.loads(body),
                        "answered": status,
                    }
                )
            self.send_response(status)
            if 300 <= status < 400:  # a redirect the sender must not follow
                self.send_header("location", f"http://127.0.0.1:{self.server.server_address[1]}/x")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:  # quiet
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()

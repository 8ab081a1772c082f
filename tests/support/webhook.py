"""A real HTTP webhook receiver for tests (stdlib server in a thread)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    url: str
    received: list[Received] = field(default_factory=list)
    # Status codes to answer with, in order; 200 once they run out.
    script: list[int] = field(default_factory=list)


Answer = tuple[int, bytes]


@contextmanager
def post_server(
    answer: Callable[[str, dict[str, str], bytes], Answer], port: int = 0
) -> Iterator[str]:
    """A real HTTP server on ``port`` (any free one by default) that answers every POST with
    ``answer(path, headers, body)`` -> (status, JSON body bytes); calls are serialised. Yields
    ``http://127.0.0.1:PORT``."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            with lock:
                status, data = answer(self.path, headers, body)
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def webhook_receiver(port: int = 0) -> Iterator[WebhookReceiver]:
    """A receiver on ``port`` (any free one by default; a fixed one lets a test bring a
    receiver "back up" at the URL the fleet has been failing to reach)."""
    state = WebhookReceiver(url="")

    def answer(path: str, headers: dict[str, str], body: bytes) -> Answer:
        status = state.script.pop(0) if state.script else 200
        if status < 300:
            state.received.append(Received(path, headers, body))
        return status, b""

    with post_server(answer, port) as base:
        state.url = f"{base}/hook"
        yield state

"""A webhook receiver on loopback: a real HTTP server in a thread that records every POST.

It answers ``status`` (200 unless the test changes it); while ``hold()`` is on, each POST
is recorded and then waits, unanswered, until ``release()``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import standardwebhooks

WAIT_SECONDS = 60.0  # a bound on a hang, not a measurement


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered (0: held, never answered)

    def verify(self, secret: str) -> dict[str, Any]:
        """The payload, once the Standard Webhooks signature checks out with ``secret``."""
        payload = standardwebhooks.Webhook(secret).verify(self.body, self.headers)
        assert isinstance(payload, dict)
        return payload


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.status = 200
        self._changed = threading.Condition()
        self._released = threading.Event()
        self._released.set()
        self.url = ""

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def record(self, headers: dict[str, str], body: bytes) -> int:
        status = self.status if self._released.is_set() else 0
        with self._changed:
            self.received.append(Received(headers, body, status))
            self._changed.notify_all()
        self._released.wait(WAIT_SECONDS)
        return self.status

    def wait_for(self, count: int, what: str = "deliveries") -> list[Received]:
        """Once at least ``count`` POSTs have arrived: all of them."""
        with self._changed:
            arrived = self._changed.wait_for(lambda: len(self.received) >= count, WAIT_SECONDS)
            assert arrived, f"{what}: {len(self.received)} of {count} arrived"
            return list(self.received)


@contextmanager
def serve_receiver() -> Iterator[Receiver]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status = receiver.record(headers, body)
            try:
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
            except OSError:  # the sender is gone (killed): nobody to answer
                pass

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

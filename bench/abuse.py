"""python -m bench.abuse: what one abusive client costs everyone else (issue 19's figures).

Each measurement runs ``batchd serve`` in its own process on loopback and times another
client's ``GET /v1/messages/batches/{id}`` before and during the abuse, for a bounded time:

* ``pdf``: a batch of 8 crafted PDFs (100 pages sharing one content stream, about 120 KB
  each) on an ``openai`` backend;
* ``slow``: 1,100 connections that present a wrong key, declare a 1 MB body and then send
  one byte every 4 s; the server is started with the common soft open-file limit of 1,024.

Prints one JSON row per phase: retrieves done, failed, p50 and p95 in milliseconds.
"""

from __future__ import annotations

import base64
import contextlib
import json
import resource
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.keys import make_keys
from tests.support.openai_upstream import serve_openai
from tests.support.pdf import shared_stream_pdf

from bench import harness

WINDOW_SECONDS = 20.0
SLOW_CONNECTIONS = 1_100


def _retrieves(
    url: str, until: Callable[[], bool], limit: float, key: str = "sk"
) -> dict[str, Any]:
    """Retrieve ``url`` one call after another until ``until()`` or ``limit`` seconds."""
    took, failed, deadline = [], 0, time.monotonic() + limit
    request = urllib.request.Request(url, headers={"x-api-key": key})
    while time.monotonic() < deadline and not until():
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                answer.read()
            took.append((time.perf_counter() - started) * 1000)
        except OSError:
            failed += 1
    p50 = statistics.median(took) if took else None
    p95 = harness.percentile(took, 95) if len(took) >= 2 else None
    return {"retrieves": len(took), "failed": failed, "p50_ms": p50, "p95_ms": p95}


def _mock_batch(url: str, key: str = "sk") -> str:
    body = {
        "requests": [
            {
                "custom_id": "a",
                "params": {
                    "model": "mock",
                    "max_tokens": 1,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            }
        ]
    }
    request = urllib.request.Request(
        f"{url}/v1/messages/batches",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "x-api-key": key},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return str(json.loads(answer.read())["id"])


def pdf(workdir: Path) -> list[dict[str, Any]]:
    data = base64.b64encode(shared_stream_pdf(100, 1500)).decode()
    document = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": data},
    }
    params = {
        "model": "local-chat",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": [document, {"type": "text", "text": "?"}]}],
    }
    body = json.dumps({"requests": [{"custom_id": f"p{i}", "params": params} for i in range(8)]})
    with serve_openai() as fake:
        backend = {"name": "local", "kind": "openai", "base_url": fake.url, "models": ["local-*"]}
        with harness.batchd(workdir / "pdf", backends=[backend]) as server:
            other = f"{server.url}/v1/messages/batches/{_mock_batch(server.url)}"
            rows = [{"phase": "idle", **_retrieves(other, lambda: False, 3)}]
            pdfs = harness.post_json(f"{server.url}/v1/messages/batches", body.encode())
            status = f"{server.url}/v1/messages/batches/{pdfs['id']}"

            def ended() -> bool:
                with urllib.request.urlopen(status, timeout=60) as answer:
                    return bool(json.loads(answer.read())["processing_status"] == "ended")

            started = time.monotonic()
            rows.append(
                {"phase": "during 8 crafted PDFs", **_retrieves(other, ended, WINDOW_SECONDS)}
            )
            rows[-1]["pdf_batch_s"] = round(time.monotonic() - started, 1)
    return rows


def _slow_client(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        b"POST /v1/messages/batches HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: sk-wrong\r\n"
        b"content-type: application/json\r\nContent-Length: 1000000\r\n\r\n{"
    )
    return sock


def slow(workdir: Path) -> list[dict[str, Any]]:
    (workdir / "slow").mkdir(parents=True, exist_ok=True)
    key = make_keys(workdir / "slow" / harness.SQLITE_FILE, {"alice": "team-a"})["alice"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))  # the server's start
    try:
        server_cm = harness.batchd(workdir / "slow", engine=False)
        server = server_cm.__enter__()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))  # this process needs more
    try:
        other = f"{server.url}/v1/messages/batches/{_mock_batch(server.url, key)}"
        rows = [{"phase": "idle", **_retrieves(other, lambda: False, 3, key)}]
        port = int(server.url.rsplit(":", 1)[1])
        sockets = []
        for _ in range(SLOW_CONNECTIONS):
            with contextlib.suppress(OSError):
                sockets.append(_slow_client(port))
        opened, last_byte = len(sockets), time.monotonic()

        def trickle() -> bool:  # one byte every 4 s on every connection still open
            nonlocal last_byte
            if time.monotonic() - last_byte >= 4:
                last_byte = time.monotonic()
                for sock in list(sockets):
                    try:
                        sock.send(b" ")
                    except OSError:
                        sockets.remove(sock)
            return False

        during = _retrieves(other, trickle, WINDOW_SECONDS, key)
        rows.append(
            {
                "phase": f"during {SLOW_CONNECTIONS} slow connections",
                "opened": opened,
                **during,
                "still_open": len(sockets),
            }
        )
        for sock in sockets:
            sock.close()
    finally:
        server_cm.__exit__(None, None, None)
    return rows


def main() -> int:
    chosen = sys.argv[1:] or ["pdf", "slow"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            for row in {"pdf": pdf, "slow": slow}[name](Path(tmp)):
                sys.stdout.write(json.dumps({"scenario": name, **row}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A resilient httpx client against a local flaky server.

Starts a small uvicorn server on 127.0.0.1 (a free port) that fails on purpose, then shows:
a retried 503 with Retry-After, a POST that is not retried, a streamed upload sent once, and
a per-host circuit breaker that opens for a dead host while another host keeps working.

Run: python examples/httpx_client.py
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import uvicorn

import resilient
from resilient.httpx import ResilientTransport

hits: Counter[str] = Counter()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """503 (Retry-After: 0) twice on /flaky, 503 on /charge and /upload, 500 on /broken."""
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    path = scope["path"]
    hits[path] += 1
    status, headers = 200, [(b"content-length", b"2")]
    if path == "/flaky" and hits[path] <= 2:
        status = 503
        headers.append((b"retry-after", b"0"))
    elif path in ("/broken", "/charge", "/upload"):
        status = 500 if path == "/broken" else 503
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


def start_server() -> tuple[uvicorn.Server, int]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, server.servers[0].sockets[0].getsockname()[1]


async def upload() -> AsyncIterator[bytes]:
    yield b"a streamed "
    yield b"upload"


async def main(port: int) -> None:
    pipeline = resilient.Pipeline(
        resilient.Timeout(5.0, name="total"),
        resilient.Retry(attempts=3, base_delay=0.05, max_delay=0.5),
        resilient.CircuitBreaker(failure_rate=0.5, window=30.0, minimum_calls=10, open_for=30.0),
        resilient.Timeout(1.0, name="attempt"),
        name="example-api",
    )
    transport = ResilientTransport(
        pipeline,
        httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=2)),
        propagate_deadline=True,
    )
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(f"{base}/flaky", extensions={"resilient.route": "/flaky"})
        print(f"GET /flaky -> {response.status_code} after {hits['/flaky']} attempts")

        response = await client.post(f"{base}/charge", json={"amount": 10})
        print(f"POST /charge -> {response.status_code}, sent {hits['/charge']} time (no retry)")

        response = await client.post(
            f"{base}/charge", json={"amount": 10}, headers={"Idempotency-Key": "order-7"}
        )
        print(f"POST /charge with Idempotency-Key -> sent {hits['/charge'] - 1} more times")

        response = await client.put(f"{base}/upload", content=upload())
        print(
            f"PUT /upload (streamed body) -> {response.status_code}, sent {hits['/upload']} "
            "time: a stream cannot be replayed"
        )

        for _ in range(6):
            try:
                await client.get(f"{base}/broken")
            except resilient.CircuitOpenError as exc:
                print(f"GET /broken -> circuit open for {exc.key} after {hits['/broken']} calls")
                break
        response = await client.get(f"http://localhost:{port}/fine")
        print(f"GET localhost/fine -> {response.status_code}: another host is not affected")


if __name__ == "__main__":
    server, port = start_server()
    try:
        anyio.run(main, port)
    finally:
        server.should_exit = True

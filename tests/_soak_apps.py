"""The processes of the soak test (tests/test_soak.py), each run as ``python _soak_apps.py``.

- ``upstream``: a uvicorn server whose ``/data`` answers through ``resilient.chaos`` faults
  (errors, throttles, latency, and a short full outage every few seconds); ``/chaos`` tells
  what was injected.
- ``service <upstream url>``: a uvicorn server behind ``ResilienceMiddleware`` whose
  ``/work`` calls the upstream through ``resilient.httpx.standard()`` (a pool of 4
  connections). ``/stats`` (excluded from the middleware) reports the public snapshots of
  every stateful part and the memory traced by ``tracemalloc`` after a full collection.

Each process prints ``PORT <n>`` once it listens, then serves until killed.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import tracemalloc
from collections import Counter
from typing import Any

import httpx
import uvicorn

import resilient
import resilient.httpx
from resilient.asgi import ResilienceMiddleware
from resilient.chaos import Chaos, ChaosMiddleware, Phase, Scenario

CLIENT_KEYS = tuple(f"client-{i}" for i in range(200))
APP_HEADER = (b"x-soak", b"app")  # marks the responses the service's own code sent


async def _json(send: Any, status: int, data: object, *, app: bool = False) -> None:
    body = json.dumps(data).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if app:
        headers.append(APP_HEADER)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Any) -> None:
    message = await receive()
    while message["type"] == "http.request" and message.get("more_body"):
        message = await receive()


def upstream() -> Any:
    """The faulty upstream: steady faults, and an outage of 0.4 s every 4 s."""
    steady = {
        "error_rate": 0.15,
        "throttle_rate": 0.05,
        "latency": (0.0, 0.15),
        "latency_rate": 0.3,
    }
    chaos = Chaos(
        Scenario(
            Phase("steady", 3.6, **steady),  # type: ignore[arg-type]
            Phase("outage", 0.4, error_rate=1.0),
            repeat=True,
        ),
        enabled=True,
        seed=21,
    )

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await _drain(receive)
        if scope["path"] == "/chaos":
            counts = chaos.counts
            await _json(
                send,
                200,
                {
                    "calls": counts.calls,
                    "errors": counts.errors,
                    "throttled": counts.throttled,
                    "delayed": counts.delayed,
                },
            )
            return
        await _json(send, 200, {"value": 1})

    return ChaosMiddleware(app, chaos=chaos, exclude_paths=["/chaos"])


def service(upstream_url: str) -> Any:
    """The service under test, with small limits so that every part is exercised."""
    transport = resilient.httpx.standard(
        base_url=upstream_url,
        limits=httpx.Limits(max_connections=4),
        total_timeout=1.5,
        attempt_timeout=0.4,
        attempts=3,
        base_delay=0.02,
        max_delay=0.2,
        failure_rate=0.5,
        window=5.0,
        minimum_calls=10,
        open_for=0.5,
        rate=100.0,
        burst=10,
        rate_max_wait=0.05,
        max_concurrent=12,
        max_waiting=12,
        max_wait=0.2,
        propagate_deadline=True,
    )
    client = httpx.AsyncClient(
        base_url=upstream_url, transport=transport, timeout=httpx.Timeout(5.0, pool=1.0)
    )
    upstream_key = f"{httpx.URL(upstream_url).host}:{httpx.URL(upstream_url).port}"
    outcomes: Counter[str] = Counter()
    middleware: ResilienceMiddleware

    def stats() -> dict[str, Any]:
        gc.collect()
        policies = transport.pipeline.policies
        bulkhead = next(p for p in policies if isinstance(p, resilient.Bulkhead))
        limiter = next(p for p in policies if isinstance(p, resilient.RateLimiter))
        breaker = next(p for p in policies if isinstance(p, resilient.CircuitBreaker))
        pool = transport.pool_snapshot()
        assert pool is not None
        # httpcore's own view: httpx does not expose its pool, httpcore's pool lists its
        # connections publicly. A connection neither idle nor closed at rest is leaked
        # (encode/httpcore#1093 leaves them "connecting" forever).
        connections = transport.transport._pool.connections  # type: ignore[attr-defined]
        busy = sum(not (c.is_idle() or c.is_closed()) for c in connections)
        own_limiter = middleware.rate_limiter
        assert own_limiter is not None
        return {
            "memory": tracemalloc.get_traced_memory()[0],
            "outcomes": dict(outcomes),
            "middleware": {
                "in_flight": middleware.in_flight,
                "waiting": middleware.waiting,
                "limiter_waiting": sum(own_limiter.snapshot(k).waiting for k in CLIENT_KEYS),
            },
            "upstream": {
                "bulkhead_running": bulkhead.snapshot(upstream_key).running,
                "bulkhead_waiting": bulkhead.snapshot(upstream_key).waiting,
                "limiter_waiting": limiter.snapshot(upstream_key).waiting,
                "breaker_probes": sum(s.probes for s in breaker.snapshots()),
                "breaker_states": sorted({s.state for s in breaker.snapshots()}),
                "pool_running": pool.running,
                "pool_waiting": pool.waiting,
                "httpcore_connections_busy": busy,
            },
        }

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await _drain(receive)
        if scope["path"] == "/stats":
            await _json(send, 200, stats())
            return
        if scope["path"] == "/probe":  # the pool itself, past the pipeline (and its breaker)
            request = httpx.Request("GET", f"{upstream_url}/chaos")
            request.extensions["timeout"] = httpx.Timeout(2.0).as_dict()
            try:
                answer = await transport.transport.handle_async_request(request)
                await answer.aread()
                await answer.aclose()
            except httpx.HTTPError as exc:
                await _json(send, 503, {"pool": type(exc).__name__})
                return
            await _json(send, answer.status_code, {"pool": "serves"})
            return
        try:
            response = await client.get("/data", extensions={"resilient.route": "/data"})
        except httpx.HTTPError as exc:  # every refusal of the transport is one (issue 19)
            outcomes[type(exc).__name__] += 1
            await _json(send, 503, {"error": type(exc).__name__}, app=True)
            return
        outcomes[f"upstream {response.status_code}"] += 1
        status = 200 if response.status_code < 400 else 502
        await _json(send, status, {"upstream": response.status_code}, app=True)

    def client_key(scope: dict[str, Any]) -> str | None:
        for name, value in scope["headers"]:
            if name == b"x-client":
                return value.decode("latin-1")
        return None

    middleware = ResilienceMiddleware(
        app,
        max_concurrent=24,
        max_waiting=24,
        max_wait=0.1,
        rate=5.0,
        burst=5,
        client_key=client_key,
        timeout=2.0,
        exclude=["/stats", "/probe"],
    )
    return middleware


def main() -> None:
    kind = sys.argv[1]
    if kind == "service":
        tracemalloc.start()
        app = service(sys.argv[2])
    else:
        app = upstream()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="off",
        log_level="error",
        access_log=False,
        backlog=1024,
        # Longer than any soak: an idle keep-alive connection is never closed by the server
        # just as the load process reuses it (a race of HTTP/1.1 itself, not of the library).
        timeout_keep_alive=120,
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        running = asyncio.create_task(server.serve())
        while not server.started:  # startup only
            if running.done():
                running.result()  # the error that stopped it
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        print(f"PORT {port}", flush=True)
        await running

    asyncio.run(serve())


if __name__ == "__main__":
    main()

"""Getting started: a FastAPI service that calls two upstreams and protects itself.

The service (the first half of this file) is what docs/getting-started.md builds step by step:

- two httpx clients, one per upstream, each through ``resilient.httpx.standard()``: a total and
  a per-attempt timeout, retries with backoff under a retry budget, a circuit breaker and a
  bulkhead per host;
- a ``@resilient.retry`` decorator on a call that is not HTTP (a flaky key-value store);
- ``ResilienceMiddleware`` in front of the app: load shedding, per-client rate limits and a
  deadline for every request;
- Prometheus metrics of all of it on ``/metrics``.

Run it against real upstreams with uvicorn (from this folder):

    INVENTORY_URL=http://inventory:8080 PRICING_URL=http://pricing:8080 \\
        uvicorn getting_started:app --port 8000

Or run the self-check (what ``make test`` does): ``python examples/getting_started.py``
starts two fake upstreams and the service on 127.0.0.1, sends a few requests, prints what
happened and exits in about a second.
"""

from __future__ import annotations

# --8<-- [start:imports]
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse

import resilient
import resilient.httpx
from resilient.asgi import ResilienceMiddleware
from resilient.telemetry import prometheus

# --8<-- [end:imports]


class KeyValueStore:
    """Stands in for a cache or a database client whose connection drops now and then."""

    def __init__(self, data: dict[str, float]) -> None:
        self.data = data
        self.calls = 0

    async def get(self, key: str) -> float:
        self.calls += 1
        if self.calls % 2 == 1:  # every other call fails, as a dropped connection would
            raise ConnectionError("connection reset by peer")
        return self.data.get(key, 0.0)


store = KeyValueStore({"discount:apple": 0.2})


# --8<-- [start:decorator]
# Not HTTP: retried on network errors (ConnectionError is transient), never on a bug.
@resilient.retry(attempts=3, base_delay=0.05, name="discounts")
async def discount_for(sku: str) -> float:
    return await store.get(f"discount:{sku}")


# --8<-- [end:decorator]
# --8<-- [start:clients]
@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One client per upstream for the life of the service: each keeps its connection pool and
    # its resilience state (breaker, bulkhead, retry budget) across requests.
    async with (
        httpx.AsyncClient(
            base_url=os.environ.get("INVENTORY_URL", "http://127.0.0.1:8001"),
            transport=resilient.httpx.standard(
                name="inventory", total_timeout=2.0, attempt_timeout=0.5
            ),
        ) as inventory,
        httpx.AsyncClient(
            base_url=os.environ.get("PRICING_URL", "http://127.0.0.1:8002"),
            transport=resilient.httpx.standard(name="pricing", total_timeout=2.0),
        ) as pricing,
    ):
        app.state.inventory = inventory
        app.state.pricing = pricing
        yield


# --8<-- [end:clients]
# --8<-- [start:app]
app = FastAPI(lifespan=lifespan)
app.add_middleware(
    ResilienceMiddleware,
    max_concurrent=100,  # requests running at once; more wait briefly, then get 503
    rate=100.0,  # requests a second per client, 429 beyond...
    burst=20,  # ...after a burst of 20
    timeout=5.0,  # the app must start answering within 5 s, else 504
)
app.mount("/metrics", prometheus.asgi_app())  # Prometheus scrapes every metric here


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}  # never shed nor rate limited: /health is excluded by default


# --8<-- [end:app]
# --8<-- [start:handler]
@app.get("/items/{sku}")
async def item(sku: str) -> JSONResponse:
    inventory: httpx.AsyncClient = app.state.inventory
    pricing: httpx.AsyncClient = app.state.pricing
    try:
        # The route names the operation in metrics and spans (never the raw URL).
        stock = await inventory.get(f"/stock/{sku}", extensions={"resilient.route": "/stock/{sku}"})
        price = await pricing.get(f"/prices/{sku}", extensions={"resilient.route": "/prices/{sku}"})
        stock.raise_for_status()  # a 5xx still there after the retries
        price.raise_for_status()
    except resilient.TimeoutExceeded:
        return JSONResponse({"error": "upstream too slow"}, status_code=504)
    except resilient.RejectedError as exc:  # breaker open, bulkhead full, rate limited
        retry_after = str(max(1, round(exc.retry_after or 1)))
        return JSONResponse(
            {"error": str(exc)}, status_code=503, headers={"Retry-After": retry_after}
        )
    except httpx.HTTPError as exc:  # connection errors, 4xx and 5xx answers
        return JSONResponse({"error": type(exc).__name__}, status_code=502)
    amount = price.json()["price"] * (1 - await discount_for(sku))
    return JSONResponse({"sku": sku, "stock": stock.json()["stock"], "price": round(amount, 2)})


# --8<-- [end:handler]


# Everything below is the self-check: fake upstreams and a few requests. A service stops above.


async def fake_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Inventory and pricing in one ASGI app: 503 on every first /stock call, 500 for 'bad'."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    seen[path] = seen.get(path, 0) + 1
    status, body = 200, b'{"stock": 7}' if path.startswith("/stock/") else b'{"price": 9.5}'
    if path.startswith("/stock/") and seen[path] == 1:
        status, body = 503, b"{}"  # a hiccup: the client retries it
    if path == "/prices/bad":
        status, body = 500, b"{}"  # a bug upstream: retried, then reported as 502
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


seen: dict[str, int] = {}


def calls_per_pipeline(exposition: str) -> dict[str, int]:
    """Calls recorded per pipeline in a Prometheus scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    calls: dict[str, int] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "resilient_call_duration_seconds_count":
                pipeline = sample.labels["resilient_pipeline"]
                calls[pipeline] = calls.get(pipeline, 0) + int(sample.value)
    return calls


async def self_check() -> None:
    import asyncio

    import uvicorn

    async def serve(asgi_app: Any, lifespan: Any) -> tuple[uvicorn.Server, asyncio.Task[None]]:
        config = uvicorn.Config(
            asgi_app, host="127.0.0.1", port=0, log_level="warning", lifespan=lifespan
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await asyncio.sleep(0.01)
        return server, task

    def url(server: uvicorn.Server) -> str:
        return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"

    upstream, upstream_task = await serve(fake_upstream, "off")
    os.environ["INVENTORY_URL"] = os.environ["PRICING_URL"] = url(upstream)
    service, service_task = await serve(app, "on")
    try:
        async with httpx.AsyncClient(base_url=url(service)) as client:
            statuses = []
            for path in ("/items/apple", "/items/pear", "/items/bad", "/health"):
                response = await client.get(path)
                statuses.append(response.status_code)
                print(f"GET {path:<12} -> {response.status_code} {response.text}")
            print(f"upstream saw: {seen}")
            print("  (the first call to each /stock/ path got a 503 and was retried;")
            print("   /prices/bad answered 500 to all 3 attempts, so the service answered 502)")
            print(f"key-value store calls: {store.calls} (every other one failed and was retried)")
            metrics = await client.get("/metrics", follow_redirects=True)
            calls = calls_per_pipeline(metrics.text)
            print("resilient_call_duration_seconds_count on /metrics, per pipeline:", calls)
        expected = [200, 200, 502, 200]
        if statuses != expected or not {"inventory", "pricing", "discounts"} <= calls.keys():
            raise SystemExit(f"self-check failed: statuses {statuses} != {expected} or {calls}")
    finally:
        service.should_exit = upstream.should_exit = True
        await asyncio.gather(service_task, upstream_task)


if __name__ == "__main__":
    import asyncio

    asyncio.run(self_check())

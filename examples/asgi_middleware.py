"""ResilienceMiddleware on a Starlette app: load shedding, per-client rate limits, deadlines,
and a /metrics route that is never limited.

Runs in a second, in process (httpx's ASGITransport, no server):
    .venv/bin/python examples/asgi_middleware.py
"""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from resilient.asgi import ResilienceMiddleware
from resilient.telemetry import prometheus

release = asyncio.Event()


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def report(request: Request) -> JSONResponse:
    await release.wait()  # a slow report: holds its slot until released
    return JSONResponse({"rows": 3})


async def stuck(request: Request) -> PlainTextResponse:
    await asyncio.sleep(3600)  # never answers in time: cancelled after `timeout`
    return PlainTextResponse("never")


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("alive")


app = Starlette(
    routes=[
        Route("/", hello),
        Route("/report", report),
        Route("/stuck", stuck),
        Route("/healthz", health),
    ]
)
# /metrics and /metrics/ both answer (no redirect); the middleware never limits them.
prometheus.add_route(app, registry=CollectorRegistry())
app.add_middleware(
    ResilienceMiddleware,
    max_concurrent=2,  # two requests run at once...
    max_waiting=0,  # ...and none queue: the third is shed with 503 at once
    rate=5.0,  # five requests a second per client...
    burst=3,  # ...three back to back
    timeout=0.2,  # the app must start its response within 200 ms, else 504
    trusted_hops=1,  # one proxy in front: the client is the last X-Forwarded-For entry
)


async def main() -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        r = await client.get("/")
        print("GET /            ->", r.status_code, "RateLimit:", r.headers["ratelimit"])

        r = await client.get("/stuck")
        print("GET /stuck       ->", r.status_code, "(the app was cancelled)")

        for i in range(3):
            r = await client.get("/")
            print(f"GET / again #{i + 1}   ->", r.status_code, r.headers.get("retry-after", ""))

        await asyncio.sleep(1.0)  # the client's bucket refills

        async with asyncio.TaskGroup() as tg:
            reports = [tg.create_task(client.get("/report")) for _ in range(2)]
            await asyncio.sleep(0.05)
            shed = await client.get("/report", headers={"x-forwarded-for": "192.0.2.1"})
            print(
                "3rd /report      ->", shed.status_code, "Retry-After:", shed.headers["retry-after"]
            )
            probe = await client.get("/healthz")
            print("GET /healthz     ->", probe.status_code, "(probes are never shed)")
            release.set()
        print("first 2 /report  ->", [t.result().status_code for t in reports])

        scrapes = [(await client.get(path)).status_code for path in ["/metrics", "/metrics/"] * 3]
        print("6 scrapes        ->", scrapes, "(never limited, never redirected)")


if __name__ == "__main__":
    asyncio.run(main())

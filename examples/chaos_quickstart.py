"""Fault injection: a client-side policy, a server-side ASGI middleware, and inside httpx.

Run: .venv/bin/python examples/chaos_quickstart.py  (about one second, no network)
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import resilient
from resilient.chaos import (
    Chaos,
    ChaosError,
    ChaosMiddleware,
    ChaosPolicy,
    Injection,
    Phase,
    Scenario,
)
from resilient.httpx import ResilientTransport


async def fetch_price(item: str) -> float:
    return 9.99


async def client_side() -> None:
    # 30 % of calls fail, 10 % are throttled, 20 % take 50 ms longer: reproducible with seed=1.
    chaos = Chaos(
        Phase(error_rate=0.3, throttle_rate=0.1, latency=0.05, latency_rate=0.2),
        enabled=True,  # chaos is off unless switched on
        seed=1,
    )
    pipeline = resilient.Pipeline(resilient.Timeout(1.0), ChaosPolicy(chaos), name="prices")
    outcomes: Counter[str] = Counter()
    for _ in range(50):
        try:
            await pipeline.call(fetch_price, "book")
            outcomes["ok"] += 1
        except ChaosError as exc:
            outcomes[exc.fault] += 1
    print("client side, 50 calls:", dict(outcomes), "| controller counts:", chaos.counts)

    chaos.disable()  # switch off at run time: every call passes through
    assert await pipeline.call(fetch_price, "book") == 9.99


async def server_side() -> None:
    async def price(request: Request) -> PlainTextResponse:
        return PlainTextResponse("9.99")

    app = Starlette(routes=[Route("/price", price)])
    # A scripted incident: 0.2 s healthy, 0.2 s full outage, then recovery.
    chaos = Chaos(
        Scenario(Phase("healthy", 0.2), Phase("outage", 0.2, error_rate=1.0), Phase("recovery")),
        enabled=True,
        seed=1,
    )
    app.add_middleware(ChaosMiddleware, chaos=chaos, exclude_paths=["/health"])
    transport = httpx.ASGITransport(app=app)
    statuses: list[tuple[str, int]] = []
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream") as client:
        loop = asyncio.get_running_loop()
        for _ in range(12):
            phase = chaos.phase(loop.time()).name
            response = await client.get("/price")
            statuses.append((phase, response.status_code))
            await asyncio.sleep(0.05)
    print("server side, status per request:")
    for phase, status in statuses:
        print(f"  {phase:<9} {status}")


def injected_response(injection: Injection, ctx: resilient.extend.Context) -> httpx.Response:
    """What an injected fault looks like to an httpx client: a response with its status."""
    headers = {"Retry-After": f"{injection.retry_after:g}"} if injection.retry_after else {}
    return httpx.Response(injection.status, headers=headers, text=f"chaos: {injection.phase}")


async def inside_httpx() -> None:
    # The policy goes last in the transport's pipeline, so each attempt draws its own fate and
    # the retry policy sees injected 503s and 429s exactly like real ones.
    chaos = Chaos(Phase(error_rate=0.4, throttle_rate=0.1, retry_after=0.01), enabled=True, seed=2)
    pipeline = resilient.Pipeline(
        resilient.Timeout(2.0),
        resilient.Retry(attempts=4, base_delay=0.01, budget=None),
        ChaosPolicy(chaos, outcome=injected_response),
        name="prices",
    )
    upstream = httpx.MockTransport(lambda request: httpx.Response(200, text="9.99"))
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, upstream)) as client:
        statuses = Counter([(await client.get("http://prices/")).status_code for _ in range(30)])
    print(f"inside httpx, 30 requests with retries: {dict(statuses)} | {chaos.counts}")


async def main() -> None:
    await client_side()
    await server_side()
    await inside_httpx()


if __name__ == "__main__":
    asyncio.run(main())

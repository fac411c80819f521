"""Overload control in one run: an adaptive limit finding a dependency's capacity, adaptive
LIFO shedding a stale queue, and client-side throttling against an upstream that sheds.

Run: python examples/overload.py
"""

from __future__ import annotations

import anyio
import anyio.lowlevel

import resilient
from resilient.testing import FakeClock


async def adaptive_limit() -> None:
    """A dependency that runs 8 calls at once (10 ms each); more wait inside it. The
    bulkhead starts at 40 and learns to send about 8-12."""
    print("adaptive limit (Vegas) in front of a dependency that runs 8 at once:")
    bulkhead = resilient.Bulkhead(
        max_concurrent=resilient.AdaptiveLimit(initial_limit=40), max_waiting=0
    )
    for second in range(6):
        for _ in range(100):  # one round: admit what the limit allows, report latencies
            admitted = 0
            while bulkhead.try_acquire():
                admitted += 1
            latency = 0.010 * max(1.0, admitted / 8)  # more than 8 in flight queue inside
            for _ in range(admitted):
                bulkhead.release(latency=latency)
        print(f"  after {100 * (second + 1):3d} rounds: limit {bulkhead.max_concurrent}")


async def adaptive_lifo() -> None:
    """One slot, held while 30 callers queue 5 ms apart: the queue has stood past 100 ms,
    so the release serves the freshest and sheds the stale ones."""
    print("adaptive LIFO: one slot held while 30 callers queue 5 ms apart")
    clock = FakeClock()
    bulkhead = resilient.Bulkhead(max_concurrent=1, max_waiting=50, queue="lifo")
    pipeline = resilient.Pipeline(bulkhead, clock=clock, telemetry=False)
    hold = anyio.Event()
    served: list[int] = []
    shed: list[int] = []

    async def caller(i: int) -> None:
        async def work() -> None:
            served.append(i)

        try:
            await pipeline.call(work)
        except resilient.BulkheadFullError:
            shed.append(i)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.call, hold.wait)
        await anyio.lowlevel.checkpoint()
        for i in range(30):
            tg.start_soon(caller, i)
            for _ in range(5):
                await anyio.lowlevel.checkpoint()
            if i < 29:
                clock.advance(0.005)
        hold.set()
    print(f"  served {served} (freshest first); shed {len(shed)} stale waiters")


async def throttle() -> None:
    """An upstream that takes 5 requests a second; the client wants 20 a second."""
    print("Throttle(k=2) against an upstream taking 5/s, offered 20/s for 60 s:")
    clock = FakeClock()
    import httpx

    sent = accepted = refused = 0
    current = [-1, 0]

    async def upstream() -> httpx.Response:
        nonlocal sent, accepted
        sent += 1
        second = int(clock.now())
        if current[0] != second:
            current[:] = [second, 0]
        if current[1] >= 5:
            return httpx.Response(503)
        current[1] += 1
        accepted += 1
        return httpx.Response(200)

    throttle = resilient.Throttle(k=2.0, window=20.0)
    pipeline = resilient.Pipeline(throttle, clock=clock, telemetry=False)
    for _ in range(1200):
        try:
            await pipeline.call(upstream)
        except resilient.RateLimitedError:
            refused += 1
        clock.advance(0.05)
    print(f"  sent {sent} ({sent / 60:.1f}/s), accepted {accepted}, refused locally {refused}")


async def main() -> None:
    await adaptive_limit()
    await adaptive_lifo()
    await throttle()


if __name__ == "__main__":
    anyio.run(main)

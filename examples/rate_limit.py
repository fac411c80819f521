"""Token-bucket rate limiting: refuse with an exact retry_after, wait fairly, or limit per key.

Run: python examples/rate_limit.py
"""

from __future__ import annotations

import math

import anyio
import anyio.lowlevel

import resilient


async def ping(n: int) -> int:
    return n


async def refuse_at_once() -> None:
    limiter = resilient.RateLimiter(rate=20.0, burst=5, max_wait=0, name="api")
    pipeline = resilient.Pipeline(limiter)
    print("burst of 8 calls, RateLimiter(rate=20, burst=5, max_wait=0):")
    for n in range(8):
        try:
            await pipeline.call(ping, n)
            print(f"  call {n}: admitted ({limiter.snapshot().tokens:.2f} tokens left)")
        except resilient.RateLimitedError as exc:
            print(f"  call {n}: refused, retry after {exc.retry_after * 1000:.1f} ms")


async def wait_in_line() -> None:
    limiter = resilient.RateLimiter(rate=20.0, burst=2, max_wait=0.2, name="api")
    pipeline = resilient.Pipeline(limiter)
    start = anyio.current_time()
    print("7 concurrent calls, RateLimiter(rate=20, burst=2, max_wait=0.2):")

    async def caller(n: int) -> None:
        try:
            await pipeline.call(ping, n)
            print(f"  call {n}: admitted after {anyio.current_time() - start:.2f}s")
        except resilient.RateLimitedError as exc:
            print(f"  call {n}: refused at once, tokens in {exc.retry_after:.2f}s > max_wait")

    async with anyio.create_task_group() as tg:
        for n in range(7):
            tg.start_soon(caller, n)
            await anyio.lowlevel.checkpoint()


async def per_client_headers() -> None:
    limiter = resilient.RateLimiter(rate=1.0, burst=3, max_wait=0, per_key=True)
    print("per-client limits with the numbers for RateLimit headers:")
    for client in ("198.51.100.7", "198.51.100.7", "203.0.113.9", "198.51.100.7", "198.51.100.7"):
        status = await limiter.try_acquire(client)
        headers = {
            "RateLimit-Limit": f"{status.limit:g}",
            "RateLimit-Remaining": str(math.floor(status.remaining)),
            "RateLimit-Reset": str(math.ceil(status.reset)),
        }
        if not status.allowed:
            headers["Retry-After"] = str(math.ceil(status.retry_after))
        print(f"  {client}: {'200' if status.allowed else '429'} {headers}")


async def main() -> None:
    await refuse_at_once()
    await wait_in_line()
    await per_client_headers()


if __name__ == "__main__":
    anyio.run(main)

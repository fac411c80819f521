"""Limits suite: Bulkhead and RateLimiter on the uncontended path against the primitives and peers.

Direct use (``async with``) against ``asyncio.Semaphore``, ``anyio.CapacityLimiter``,
aiolimiter and hyx's token bucket; through a pipeline (``Pipeline(policy).wrap(f)``) against
the peers' decorators. Rate limiters are set so they never wait. Memory per keyed bucket is
checked by ``tests/test_ratelimit.py`` (tracemalloc).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import resilient
from benchmarks._harness import Case, run_cases

HUGE_RATE = 1e12


async def _f() -> int:
    return 1


def _loop_call(make: Callable[[], Callable[[], Awaitable[Any]]]) -> Case:
    """A case awaiting ``fn()`` n times; ``fn`` is built on first use, inside the loop
    (some peers bind to the running loop at construction)."""
    built: list[Callable[[], Awaitable[Any]]] = []

    async def run(n: int) -> None:
        if not built:
            built.append(make())
        fn = built[0]
        for i in range(n):
            await fn()
            if i % 128 == 0:
                await asyncio.sleep(0)

    return run


def _loop_with(make: Callable[[], Any]) -> Case:
    """A case running ``async with cm: await f()`` n times (``cm`` built inside the loop)."""
    built: list[Any] = []

    async def run(n: int) -> None:
        if not built:
            built.append(make())
        cm = built[0]
        for i in range(n):
            async with cm:
                await _f()
            if i % 128 == 0:
                await asyncio.sleep(0)

    return run


def _decorated(decorator: Any) -> Callable[[], Awaitable[Any]]:
    @decorator
    async def run() -> Any:
        return await _f()

    return run  # type: ignore[no-any-return]


def cases() -> dict[str, Case]:
    import aiolimiter
    import anyio
    from hyx.bulkhead import bulkhead
    from hyx.ratelimit import tokenbucket

    keyed = resilient.RateLimiter(rate=HUGE_RATE, burst=1_000_000, max_wait=0)
    keys = [f"198.51.100.{i}" for i in range(64)]

    def try_acquire() -> Callable[[], Awaitable[Any]]:
        counter = iter(range(1 << 62))

        async def run() -> Any:
            return await keyed.try_acquire(keys[next(counter) & 63])

        return run

    return {
        "bare await": _loop_call(lambda: _f),
        # concurrency
        "asyncio.Semaphore: async with": _loop_with(lambda: asyncio.Semaphore(32)),
        "anyio.CapacityLimiter: async with": _loop_with(lambda: anyio.CapacityLimiter(32)),
        "hyx @bulkhead": _loop_call(
            lambda: _decorated(bulkhead(max_concurrency=32, max_capacity=64))
        ),
        "Bulkhead: async with": _loop_with(lambda: resilient.Bulkhead(max_concurrent=32)),
        "Pipeline(Bulkhead).wrap": _loop_call(
            lambda: resilient.Pipeline(resilient.Bulkhead(), telemetry=False).wrap(_f)
        ),
        # rate
        "aiolimiter: async with": _loop_with(lambda: aiolimiter.AsyncLimiter(HUGE_RATE, 1)),
        "hyx tokenbucket: async with": _loop_with(
            lambda: tokenbucket(max_executions=HUGE_RATE, per_time_secs=1, bucket_size=1e6)
        ),
        "RateLimiter: async with": _loop_with(
            lambda: resilient.RateLimiter(rate=HUGE_RATE, burst=1_000_000)
        ),
        "Pipeline(RateLimiter).wrap": _loop_call(
            lambda: resilient.Pipeline(
                resilient.RateLimiter(rate=HUGE_RATE, burst=1_000_000), telemetry=False
            ).wrap(_f)
        ),
        "RateLimiter.try_acquire(key), 64 keys": _loop_call(try_acquire),
    }


# (case, reference, target ratio): the targets on the uncontended path.
GATES = [
    ("Bulkhead: async with", "bare await", 5.0),
    ("Bulkhead: async with", "asyncio.Semaphore: async with", 1.0),
    ("Pipeline(Bulkhead).wrap", "hyx @bulkhead", 1.0),
    ("RateLimiter: async with", "bare await", 5.0),
    # An exact bucket reads the clock on every call; hyx's never does on its fast path (it
    # refills only once empty), so parity is the realistic bound here.
    ("RateLimiter: async with", "hyx tokenbucket: async with", 1.1),
    ("Pipeline(RateLimiter).wrap", "aiolimiter: async with", 1.2),
]


def run(*, quick: bool) -> dict[str, float]:
    results = run_cases(cases(), calls=4_000 if quick else 40_000, rounds=5 if quick else 9)
    return {name: r.median_ns for name, r in results.items()}

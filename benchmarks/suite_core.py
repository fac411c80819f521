"""Core suite: the cost of an empty Pipeline and of Pipeline(Timeout) on asyncio."""

from __future__ import annotations

import asyncio

import resilient
from benchmarks._harness import Case, run_cases


async def _f() -> int:
    return 1


def cases() -> dict[str, Case]:
    empty = resilient.Pipeline(telemetry=False)
    timed = resilient.Pipeline(resilient.Timeout(30.0), telemetry=False)

    async def bare(n: int) -> None:
        for i in range(n):
            await _f()
            if i % 128 == 0:
                await asyncio.sleep(0)

    async def asyncio_timeout(n: int) -> None:
        for i in range(n):
            async with asyncio.timeout(30.0):
                await _f()
            if i % 128 == 0:
                await asyncio.sleep(0)

    async def pipeline_empty(n: int) -> None:
        call = empty.call
        for i in range(n):
            await call(_f)
            if i % 128 == 0:
                await asyncio.sleep(0)

    async def pipeline_timeout(n: int) -> None:
        call = timed.call
        for i in range(n):
            await call(_f)
            if i % 128 == 0:
                await asyncio.sleep(0)

    return {
        "bare await": bare,
        "asyncio.timeout block": asyncio_timeout,
        "Pipeline()": pipeline_empty,
        "Pipeline(Timeout)": pipeline_timeout,
    }


# (case, reference, target ratio): checked in quick mode with a generous margin.
GATES = [
    ("Pipeline()", "bare await", 4.0),
    ("Pipeline(Timeout)", "asyncio.timeout block", 1.5),
]


def run(*, quick: bool) -> dict[str, float]:
    results = run_cases(cases(), calls=5_000 if quick else 50_000, rounds=5 if quick else 9)
    return {name: r.median_ns for name, r in results.items()}

"""Core suite: an empty Pipeline, Pipeline(Timeout), and a nested pipeline against the flat one."""

from __future__ import annotations

import asyncio

import resilient
from benchmarks._harness import Case, run_cases, summary


async def _f() -> int:
    return 1


def cases() -> dict[str, Case]:
    empty = resilient.Pipeline(telemetry=False)
    timed = resilient.Pipeline(resilient.Timeout(30.0), telemetry=False)

    def policies() -> list[resilient.extend.Policy]:
        return [
            resilient.Timeout(30.0),
            resilient.Retry(attempts=3),
            resilient.CircuitBreaker(),
            resilient.Bulkhead(max_concurrent=64),
            resilient.Timeout(5.0),
        ]

    flat = resilient.Pipeline(*policies(), telemetry=False)
    a, b, c, d, e = policies()
    # The same five policies, the middle three in a pipeline of their own: composed once
    # into the outer chain, so it should cost what the flat one costs.
    nested = resilient.Pipeline(a, resilient.Pipeline(b, c, d, telemetry=False), e, telemetry=False)

    def through(pipeline: resilient.Pipeline) -> Case:
        async def run(n: int) -> None:
            call = pipeline.call
            for i in range(n):
                await call(_f)
                if i % 128 == 0:
                    await asyncio.sleep(0)

        return run

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
        "5 policies, flat": through(flat),
        "5 policies, 3 in a nested Pipeline": through(nested),
    }


# (case, reference, target ratio): checked in quick mode with a generous margin.
# Only comparisons with what a user could write instead (no gate against a bare await: that
# measures noise of a tenth of a microsecond, not something a user feels).
GATES = [
    ("Pipeline(Timeout)", "asyncio.timeout block", 1.5),
    ("5 policies, 3 in a nested Pipeline", "5 policies, flat", 1.1),
]


def run(*, quick: bool) -> dict[str, float]:
    results = run_cases(cases(), calls=1_500 if quick else 50_000, rounds=31 if quick else 9)
    return summary(results, quick=quick)

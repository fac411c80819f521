"""Timing harness shared by the suites: interleaved rounds, medians, ratios in one run."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Case = Callable[[int], Awaitable[None]]
"""An async function running its snippet ``n`` times (it yields to the loop every 128)."""


@dataclass
class Result:
    name: str
    samples_ns: list[float] = field(default_factory=list)

    @property
    def median_ns(self) -> float:
        return statistics.median(self.samples_ns)

    @property
    def min_ns(self) -> float:
        return min(self.samples_ns)


def run_cases(cases: dict[str, Case], *, calls: int, rounds: int) -> dict[str, Result]:
    """Run every case ``rounds`` times, round-robin, on one asyncio loop; ns per call."""
    results = {name: Result(name) for name in cases}

    async def main() -> None:
        for case in cases.values():  # warm-up: imports, caches, first-call costs
            await case(max(calls // 10, 10))
        for _ in range(rounds):
            for name, case in cases.items():
                gc.collect()
                start = time.perf_counter_ns()
                await case(calls)
                results[name].samples_ns.append((time.perf_counter_ns() - start) / calls)

    asyncio.run(main())
    return results

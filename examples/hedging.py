"""Hedging in three short scenes: run with ``python examples/hedging.py`` (about two seconds).

1. A dependency answering in 10 ms, except 2 % of calls that take 300 ms: the tail before
   and after adding ``Hedge()`` (its delay adapts to the p95 of what it observes).
2. A hedge wins: its answer is returned and the slow original is cancelled (a circuit
   breaker inside counts no failure for it).
3. When not to hedge: an overloaded dependency, where every call is slow; the retry budget
   caps the extra attempts hedges may add.
"""

from __future__ import annotations

import random

import anyio

from resilient import (
    CircuitBreaker,
    Hedge,
    Pipeline,
    RetryBudget,
    Timeout,
)
from resilient.events import (
    Event,
    HedgeEnded,
    HedgeStarted,
)


class Dependency:
    """Answers in ``fast`` seconds; a fraction ``slow_share`` of calls takes ``slow`` seconds."""

    def __init__(self, *, fast: float, slow: float, slow_share: float, seed: int = 1) -> None:
        self.fast, self.slow, self.slow_share = fast, slow, slow_share
        self.random = random.Random(seed)
        self.attempts = 0

    async def __call__(self) -> str:
        self.attempts += 1
        slow = self.random.random() < self.slow_share
        await anyio.sleep(self.slow if slow else self.fast)
        return "ok"


async def measure(pipeline: Pipeline, dependency: Dependency, calls: int) -> list[float]:
    latencies: list[float] = []
    limit = anyio.CapacityLimiter(20)  # 20 callers at a time

    async def one() -> None:
        async with limit:
            started = anyio.current_time()
            await pipeline.call(dependency)
            latencies.append(anyio.current_time() - started)

    async with anyio.create_task_group() as tg:
        for _ in range(calls):
            tg.start_soon(one)
    return sorted(latencies)


def p(latencies: list[float], q: float) -> float:
    return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000


async def the_tail() -> None:
    print("1. a slow tail, with and without a hedge")
    for label, policies in (("no hedge", []), ("Hedge()", [Hedge()])):
        dependency = Dependency(fast=0.010, slow=0.300, slow_share=0.02)
        pipeline = Pipeline(*policies, Timeout(2.0), name="search")
        latencies = await measure(pipeline, dependency, calls=600)
        extra = dependency.attempts / len(latencies) - 1
        print(
            f"  {label:9s} p50 {p(latencies, 0.50):5.1f} ms   p99 {p(latencies, 0.99):5.1f} ms"
            f"   extra attempts {extra:5.1%}"
        )


async def a_hedge_wins() -> None:
    print("2. the hedge answers first; the slow original is cancelled, not failed")

    def show(event: Event) -> None:
        if isinstance(event, HedgeStarted):
            print(f"  hedge {event.hedge} started after {event.delay * 1000:.0f} ms")
        elif isinstance(event, HedgeEnded):
            print(f"  winner: {event.winner}, losers cancelled: {event.cancelled}")

    attempts = 0

    async def first_one_is_stuck() -> str:
        nonlocal attempts
        attempts += 1
        await anyio.sleep(5.0 if attempts == 1 else 0.010)
        return f"answer of attempt {attempts}"

    breaker = CircuitBreaker(minimum_calls=1, failure_rate=0.01)
    pipeline = Pipeline(Hedge(delay=0.05), breaker, listeners=[show], name="profile")
    started = anyio.current_time()
    answer = await pipeline.call(first_one_is_stuck)
    elapsed = (anyio.current_time() - started) * 1000
    snapshot = breaker.snapshot()
    print(f"  -> {answer!r} in {elapsed:.0f} ms (not 5 s)")
    print(
        f"  breaker: {snapshot.state}, {snapshot.failures} failure(s) in {snapshot.calls} call(s)"
    )


async def overload() -> None:
    print("3. an overloaded dependency: every call is slow; the budget caps the hedges")
    refused = 0

    def count(event: Event) -> None:
        nonlocal refused
        refused += type(event).__name__ == "BudgetRefused"

    dependency = Dependency(fast=0.100, slow=0.100, slow_share=0.0)
    budget = RetryBudget(ratio=0.1, reserve=5)
    pipeline = Pipeline(Hedge(delay=0.02, budget=budget), listeners=[count], name="overload")
    latencies = await measure(pipeline, dependency, calls=200)
    extra = dependency.attempts / len(latencies) - 1
    print(
        f"  every call passed its 20 ms delay, yet only {extra:.0%} extra attempts "
        f"({refused} hedges refused by the budget)"
    )


async def main() -> None:
    await the_tail()
    await a_hedge_wins()
    await overload()


if __name__ == "__main__":
    anyio.run(main)

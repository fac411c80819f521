"""Timing harness shared by the suites: interleaved rounds, medians, ratios in one run.

A suite module (``benchmarks/suite_*.py``) defines:

- ``run(*, quick: bool) -> dict[str, float]``: its measurements, case name -> value
  (nanoseconds per call unless the module says otherwise);
- ``GATES``: ``[(case, reference, target), ...]``; the runner fails quick mode when
  ``value[case] / value[reference]`` exceeds ``target`` times its margin. A gate whose case or
  reference is missing from the results (a feature not built yet) is reported as skipped;
- optionally ``UNIT`` (``"ns"`` by default; ``"bytes"`` for memory), ``REFERENCE`` (the case
  the report's "x ref" column divides by; default: the first case), ``TITLE`` and ``NOTES``
  (case -> a short note for the report).

Timings: every case runs its snippet ``n`` times in a loop that yields to the event loop
every 128 iterations (as real code does between requests; without it cancelled timer handles
pile up and inflate every timeout); rounds are interleaved round-robin over all cases so
that machine noise hits every case alike; the report uses the median over rounds.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Case = Callable[[int], Awaitable[None]]
"""An async function running its snippet ``n`` times (it yields to the loop every 128)."""

YIELD_EVERY = 128


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
        # What the warm-up built (peers, policies, maps of 100,000 keys) stays alive for the
        # whole run: keep it out of the collections made before each sample.
        gc.collect()
        gc.freeze()
        for _ in range(rounds):
            for name, case in cases.items():
                gc.collect()
                start = time.perf_counter_ns()
                await case(calls)
                results[name].samples_ns.append((time.perf_counter_ns() - start) / calls)

    try:
        asyncio.run(main())
    finally:
        gc.unfreeze()
    return results


def run_timed(
    cases: dict[str, Case] | Callable[[], dict[str, Case]],
    *,
    quick: bool,
    sample_seconds: float | None = None,
    rounds: int | None = None,
) -> dict[str, Result]:
    """Like ``run_cases``, but each case gets its own call count, calibrated so one sample
    takes about ``sample_seconds`` (quick: 2 ms x 41 rounds; full: 150 ms x 9 rounds).

    A 100 us peer and a 0.3 us bare await then cost the same wall time, which keeps quick
    mode fast whatever the suite measures. ``cases`` may be a function building the cases:
    it is then called inside the running loop (some peers bind to the loop at construction).
    """
    # Quick mode: many short samples, so that the fastest of them (see ``summary``) is one that
    # no other process interrupted, even on a machine kept busy by other CPU-bound work.
    sample = sample_seconds if sample_seconds is not None else (0.002 if quick else 0.15)
    rounds = rounds if rounds is not None else (41 if quick else 9)
    results: dict[str, Result] = {}
    counts: dict[str, int] = {}

    async def main() -> None:
        built = cases() if callable(cases) else cases
        results.update({name: Result(name) for name in built})
        for name, case in built.items():
            await case(YIELD_EVERY)  # warm-up: imports, caches, first-call costs
            start = time.perf_counter_ns()
            await case(YIELD_EVERY)
            per_call = max((time.perf_counter_ns() - start) / YIELD_EVERY, 1.0)
            n = int(sample * 1e9 / per_call)
            counts[name] = max(YIELD_EVERY, min(n - n % YIELD_EVERY, 500_000))
        gc.collect()
        gc.freeze()  # what the cases built stays alive: out of the per-sample collections
        for _ in range(rounds):
            for name, case in built.items():
                calls = counts[name]
                gc.collect()
                start = time.perf_counter_ns()
                await case(calls)
                results[name].samples_ns.append((time.perf_counter_ns() - start) / calls)

    try:
        asyncio.run(main())
    finally:
        gc.unfreeze()
    return results


def medians(results: dict[str, Result]) -> dict[str, float]:
    """Case name -> median ns per call."""
    return {name: r.median_ns for name, r in results.items()}


def summary(results: dict[str, Result], *, quick: bool) -> dict[str, float]:
    """Case name -> ns per call: the fastest round in quick mode, the median in full mode.

    Quick mode runs while the machine may be busy (CI, the test suite just before): a busy
    neighbour only ever adds time, so the fastest of several short rounds is the steadier
    estimate of what the code itself costs. Full mode, run on a quiet machine, reports the
    median, which also reflects ordinary variation.
    """
    if quick:
        return {name: r.min_ns for name, r in results.items()}
    return medians(results)


def loop(fn: Callable[[], Awaitable[Any]]) -> Case:
    """A case awaiting ``fn()`` ``n`` times, yielding to the event loop every 128 calls."""

    async def case(n: int) -> None:
        sleep = asyncio.sleep
        for i in range(n):
            await fn()
            if not i % YIELD_EVERY:
                await sleep(0)

    return case


def failing_loop(
    fn: Callable[[], Awaitable[Any]], exceptions: tuple[type[BaseException], ...]
) -> Case:
    """Like ``loop`` but swallows ``exceptions`` raised by ``fn()`` (failure paths)."""

    async def case(n: int) -> None:
        sleep = asyncio.sleep
        for i in range(n):
            try:  # noqa: SIM105 - contextlib.suppress costs more than the code measured
                await fn()
            except exceptions:
                pass
            if not i % YIELD_EVERY:
                await sleep(0)

    return case


async def bytes_per_instance(
    factory: Callable[[], object],
    *,
    count: int = 1000,
    exercise: Callable[[Any], Awaitable[Any]] | None = None,
) -> float:
    """Memory held per instance built by ``factory`` (tracemalloc, ``count`` instances).

    With ``exercise``, each instance is used once (``await exercise(instance)``) before the
    measurement, so lazily allocated state (a first window bucket, a first token refill) is
    counted. Everything the instances keep alive is included. Call it inside a running loop.
    """
    holder: list[object] = [None] * count
    if exercise is not None:  # warm up the code path once: first-call caches are not per instance
        await exercise(factory())
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(count):
            holder[i] = factory()
        if exercise is not None:
            for instance in holder:
                await exercise(instance)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    del holder
    return grown / count

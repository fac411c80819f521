"""Retry suite: the success path and the cost of a retried attempt, next to the peers.

Cases (ns per call, asyncio):

- ``bare await``: the reference, ``await f()``.
- ``Pipeline(Retry) success``: a successful call through ``Pipeline(Retry())`` with the default
  budget (the way users run it).
- ``hyx retry success``: hyx's ``@retry`` decorator, the fastest retry peer.
- ``... per retried attempt``: a function failing 10 times with ``ConnectionError`` before it
  succeeds, zero backoff, no budget; the time per call divided by the 10 retried attempts.

Full mode adds tenacity, stamina and backoff (slow: measured with fewer calls in a second group;
their figures are for the side-by-side table, not for gates).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import resilient
from benchmarks._harness import Case, run_cases, summary

RETRIES = 10  # retried attempts per call in the "per retried attempt" cases


async def _f() -> int:
    return 1


class _Flaky:
    """Fails ``RETRIES`` times in a row, then succeeds; the cycle repeats call after call."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    async def __call__(self) -> int:
        self.n += 1
        if self.n % (RETRIES + 1):
            raise ConnectionError("flaky")
        return 1


def _flaky_function() -> Callable[[], Awaitable[int]]:
    # A plain `async def`: some peers only recognise coroutine functions, not async callables.
    flaky = _Flaky()

    async def flaky_call() -> int:
        return await flaky()

    return flaky_call


def _loop(call: Callable[[], Awaitable[Any]]) -> Case:
    async def case(n: int) -> None:
        for i in range(n):
            await call()
            if i % 128 == 0:
                await asyncio.sleep(0)

    return case


def _retried(call: Callable[[], Awaitable[Any]]) -> Case:
    # n retried attempts = n // RETRIES calls; the harness divides by n.
    async def case(n: int) -> None:
        for i in range(max(n // RETRIES, 1)):
            await call()
            if i % 16 == 0:
                await asyncio.sleep(0)

    return case


def _ours() -> dict[str, Case]:
    ok = resilient.Pipeline(resilient.Retry(), telemetry=False)
    flaky_fn = _flaky_function()
    flaky = resilient.Pipeline(
        resilient.Retry(attempts=RETRIES + 1, base_delay=0.0, max_delay=0.0, budget=None),
        telemetry=False,
    )

    async def success() -> int:
        return await ok.call(_f)

    async def retried() -> int:
        return await flaky.call(flaky_fn)

    return {
        "Pipeline(Retry) success": _loop(success),
        "Retry per retried attempt": _retried(retried),
    }


def _hyx() -> dict[str, Case]:
    from hyx.retry import retry

    ok = retry(on=ConnectionError, attempts=3, backoff=0.0)(_f)
    flaky = retry(on=ConnectionError, attempts=RETRIES, backoff=0.0)(_flaky_function())
    return {"hyx retry success": _loop(ok), "hyx per retried attempt": _retried(flaky)}


def _slow_peers() -> dict[str, Case]:
    import backoff
    import stamina
    import tenacity

    stamina.instrumentation.set_on_retry_hooks([])  # no logging hook: the bare mechanism

    def ten(attempts: int) -> Callable[[Any], Any]:
        return tenacity.retry(
            stop=tenacity.stop_after_attempt(attempts),
            wait=tenacity.wait_none(),
            retry=tenacity.retry_if_exception_type(ConnectionError),
        )

    def sta(attempts: int) -> Callable[[Any], Any]:
        return stamina.retry(
            on=ConnectionError, attempts=attempts, wait_initial=0.0, wait_max=0.0, wait_jitter=0.0
        )

    def bac(attempts: int) -> Callable[[Any], Any]:
        return backoff.on_exception(
            backoff.constant, ConnectionError, max_tries=attempts, interval=0, jitter=None
        )

    cases: dict[str, Case] = {}
    for name, deco in (("tenacity", ten), ("stamina", sta), ("backoff", bac)):
        cases[f"{name} success"] = _loop(deco(3)(_f))
        cases[f"{name} per retried attempt"] = _retried(deco(RETRIES + 1)(_flaky_function()))
    return cases


async def _bare() -> int:
    return await _f()


def cases() -> dict[str, Case]:
    return {"bare await": _loop(_bare), **_ours(), **_hyx()}


# (case, reference, target ratio): checked in quick mode with a generous margin.
# Measured side by side, ours is at parity with hyx on success (the per-call Context of the
# pipeline is most of our cost) and much cheaper per retried attempt. docs/performance.md has
# the numbers.
GATES = [
    ("Pipeline(Retry) success", "hyx retry success", 1.0),
    ("Retry per retried attempt", "hyx per retried attempt", 1 / 3),
]


def run(*, quick: bool) -> dict[str, float]:
    results = run_cases(cases(), calls=1_500 if quick else 50_000, rounds=31 if quick else 9)
    medians = summary(results, quick=quick)
    if not quick:
        slow = run_cases(_slow_peers(), calls=2_000, rounds=5)
        medians.update({name: r.median_ns for name, r in slow.items()})
    return medians

"""Failure path: what each retried attempt costs (the call fails twice, then succeeds).

Backoff waits are configured to zero so only the machinery is measured; our retry budget is
off (every call here retries twice, which any budget would refuse). "per retried
attempt" = (failure-path time - the same wrapper's success-path time) / 2, both measured in
this run; the success-path cases are not reported separately (see ``suite_policies``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import resilient
from benchmarks import _peers as p
from benchmarks._harness import Case, loop, run_timed, summary

TITLE = "Failure path: cost per retried attempt (fails twice, then succeeds; zero backoff)"
REFERENCE = "hand-rolled loop + sleep(0): per retried attempt"

OURS = "resilient Retry: per retried attempt"

NOTES = {
    "hand-rolled loop: per retried attempt": "try/except in a for loop: the floor",
    REFERENCE: "plus one event-loop yield per retry, as most libraries do",
    "stamina: per retried attempt": "hooks off (by default it logs and counts every retry)",
}

# The per-attempt figures are differences of two medians, too noisy in quick mode to gate
# tightly; the timed comparison is gated on the whole failure path instead.
GATES = [
    (OURS, REFERENCE, 2.0),
    (
        "resilient Retry + Timeout(attempt): fail, fail, succeed",
        "sketch5 + asyncio.timeout: fail, fail, succeed",
        1.3,
    ),
    (OURS, "tenacity: per retried attempt", 0.25),
]


class Flaky:
    """An async callable failing ``failures`` times in a row, then succeeding, in cycles."""

    __slots__ = ("calls", "failures")

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0

    async def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("flaky")
        self.calls = 0
        return 1


def _pair(build: Callable[[Flaky], p.Fn]) -> tuple[Case, Case]:
    """(success case, fail-fail-succeed case) for one wrapper around its own ``Flaky``."""
    flaky = Flaky()
    fn = build(flaky)
    inner = loop(fn)

    async def success(n: int) -> None:
        flaky.failures, flaky.calls = 0, 0
        await inner(n)

    async def failing(n: int) -> None:
        flaky.failures, flaky.calls = 2, 0
        await inner(n)

    return success, failing


def _hand_rolled(flaky: Flaky, *, yield_per_retry: bool) -> p.Fn:
    async def run() -> Any:
        for attempt in range(3):
            try:
                return await flaky()
            except ConnectionError:
                if attempt == 2:
                    raise
                if yield_per_retry:
                    await asyncio.sleep(0)
        raise AssertionError("unreachable")

    return run


def _tenacity(flaky: Flaky) -> p.Fn:
    import tenacity

    return tenacity.retry(  # type: ignore[no-any-return]
        stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_none(), reraise=True
    )(flaky.__call__)


def _stamina(flaky: Flaky) -> p.Fn:
    import stamina
    import stamina.instrumentation

    stamina.instrumentation.set_on_retry_hooks([])
    return stamina.retry(  # type: ignore[no-any-return]
        on=ConnectionError, attempts=3, wait_initial=0, wait_max=0, wait_jitter=0
    )(flaky.__call__)


def _backoff(flaky: Flaky) -> p.Fn:
    import backoff

    return backoff.on_exception(  # type: ignore[no-any-return]
        backoff.expo, ConnectionError, max_tries=3, factor=0
    )(flaky.__call__)


def _hyx(flaky: Flaky) -> p.Fn:
    from hyx.retry import retry
    from hyx.retry.backoffs import expo
    from hyx.retry.jitters import full

    return retry(  # type: ignore[no-any-return]
        on=ConnectionError, attempts=3, backoff=expo(min_delay_secs=0, jitter=full)
    )(flaky.__call__)


def _pyresilience(flaky: Flaky) -> p.Fn:
    from pyresilience import RetryConfig
    from pyresilience import resilient as pyres

    return pyres(  # type: ignore[no-any-return]
        retry=RetryConfig(max_attempts=3, delay=0.0, jitter=False, retry_on=(ConnectionError,))
    )(flaky.__call__)


def _ours_retry() -> Any | None:
    if not p.has("Retry"):
        return None
    for base_delay in (0.0, 1e-9):  # zero if the policy allows it
        try:
            # budget off: a call failing twice in every three attempts would exhaust any
            # budget at once; its bookkeeping on the success path is in suite_stacks
            return p.retry_policy(base_delay=base_delay, max_delay=base_delay or 1e-9, budget=None)
        except resilient.ConfigurationError:
            continue
    return None


def _ours(flaky: Flaky, *, timed: bool) -> p.Fn:
    policies = [_ours_retry()]
    if timed:
        policies.append(resilient.Timeout(2.0))
    pipeline = resilient.Pipeline(*policies, name="bench", telemetry=False)
    return p.wrapped(pipeline, flaky.__call__)


def _builders() -> dict[str, Callable[[Flaky], p.Fn]]:
    builders: dict[str, Callable[[Flaky], p.Fn]] = {
        "hand-rolled loop": lambda flaky: _hand_rolled(flaky, yield_per_retry=False),
        "hand-rolled loop + sleep(0)": lambda flaky: _hand_rolled(flaky, yield_per_retry=True),
        "sketch5 + asyncio.timeout": lambda flaky: p.sketch5(fn=flaky.__call__),
        "tenacity": _tenacity,
        "stamina": _stamina,
        "backoff": _backoff,
        "hyx": _hyx,
        "pyresilience": _pyresilience,
    }
    if _ours_retry() is not None:
        builders["resilient Retry"] = lambda flaky: _ours(flaky, timed=False)
        builders["resilient Retry + Timeout(attempt)"] = lambda flaky: _ours(flaky, timed=True)
    return builders


def run(*, quick: bool) -> dict[str, float]:
    names = list(_builders())

    def cases() -> dict[str, Case]:
        out: dict[str, Case] = {}
        for name, build in _builders().items():
            success, failing = _pair(build)
            out[f"{name}: success"] = success
            out[f"{name}: fail, fail, succeed"] = failing
        return out

    measured = summary(run_timed(cases, quick=quick), quick=quick)
    report: dict[str, float] = {}
    for name in names:
        per_retry = (measured[f"{name}: fail, fail, succeed"] - measured[f"{name}: success"]) / 2
        report[f"{name}: per retried attempt"] = max(per_retry, 1.0)
    for name in names:
        report[f"{name}: fail, fail, succeed"] = measured[f"{name}: fail, fail, succeed"]
    return report

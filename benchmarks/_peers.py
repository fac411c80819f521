"""Shared builders: the hand-written five-policy sketch, peer stacks and our own pipelines.

Every builder returns a zero-argument async callable running one successful call of ``f``
through the stack, so the suites time them all with the same loop (``_harness.loop``).
Rate limiters are configured so they never wait (10^12 per second), breakers never open,
timeouts never fire: this is the success path.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import resilient

Fn = Callable[[], Awaitable[Any]]
HUGE_RATE = 1e12


async def f() -> int:
    """The function every case calls: returns at once."""
    return 1


class SketchOpen(Exception):
    pass


class Sketch5:
    """A hand-written five-policy sketch (not a peer: a floor).

    Retry loop (3 attempts), consecutive-failure breaker, token bucket with a monotonic
    refill, bulkhead counter, and an optional per-attempt ``asyncio.timeout``: the decision
    logic a careful engineer would write inline, with nothing configurable.
    """

    __slots__ = (
        "burst",
        "failures",
        "in_flight",
        "last",
        "limit",
        "opened_at",
        "rate",
        "timeout",
        "tokens",
    )

    def __init__(self, *, timeout: float | None = 2.0) -> None:
        self.failures = 0
        self.opened_at = -1.0
        self.rate = HUGE_RATE
        self.burst = 1e6
        self.tokens = 1e6
        self.last = time.monotonic()
        self.in_flight = 0
        self.limit = 32
        self.timeout = timeout

    async def call(self, fn: Fn) -> Any:
        for attempt in range(3):
            now = time.monotonic()
            if self.opened_at >= 0.0 and now - self.opened_at < 5.0:
                raise SketchOpen
            tokens = self.tokens + (now - self.last) * self.rate
            self.tokens = self.burst if tokens > self.burst else tokens
            self.last = now
            if self.tokens < 1.0:
                raise SketchOpen
            self.tokens -= 1.0
            if self.in_flight >= self.limit:
                raise SketchOpen
            self.in_flight += 1
            try:
                if self.timeout is None:
                    result = await fn()
                else:
                    async with asyncio.timeout(self.timeout):
                        result = await fn()
            except Exception:
                self.failures += 1
                if self.failures >= 5:
                    self.opened_at = now
                if attempt == 2:
                    raise
                continue
            finally:
                self.in_flight -= 1
            self.failures = 0
            return result
        raise AssertionError("unreachable")


def sketch5(*, timeout: float | None = 2.0, fn: Fn = f) -> Fn:
    sketch = Sketch5(timeout=timeout)
    call = sketch.call

    async def run() -> Any:
        return await call(fn)

    return run


def peer_stack(fn: Fn = f) -> Fn:
    """What a user builds today: tenacity + aiobreaker + Semaphore + aiolimiter + asyncio.timeout.

    Ordered retry -> breaker -> bulkhead -> rate limiter -> timeout -> fn.
    """
    import aiobreaker
    import aiolimiter
    import tenacity

    breaker = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(seconds=30))
    semaphore = asyncio.Semaphore(32)
    limiter = aiolimiter.AsyncLimiter(HUGE_RATE, 1)

    @tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_exponential_jitter(initial=0.1, max=5.0),
        reraise=True,
    )
    @breaker
    async def run() -> Any:
        async with semaphore, limiter, asyncio.timeout(2.0):
            return await fn()

    return run


def hyx_stack(fn: Fn = f) -> Fn:
    """hyx's five policies: retry + consecutive breaker + bulkhead + token bucket + timeout."""
    from hyx.bulkhead import bulkhead
    from hyx.circuitbreaker import consecutive_breaker
    from hyx.ratelimit import tokenbucket
    from hyx.retry import retry
    from hyx.retry.backoffs import expo
    from hyx.retry.jitters import full
    from hyx.timeout import timeout

    @retry(attempts=3, backoff=expo(min_delay_secs=0.1, max_delay_secs=5.0, jitter=full))
    @consecutive_breaker(failure_threshold=5, recovery_time_secs=30)
    @bulkhead(max_concurrency=32, max_capacity=64)
    @tokenbucket(max_executions=HUGE_RATE, per_time_secs=1, bucket_size=1e6)
    @timeout(2.0)
    async def run() -> Any:
        return await fn()

    return run


def pyresilience_stack(fn: Fn = f) -> Fn:
    """pyresilience's ``@resilient`` with retry, breaker, bulkhead, rate limiter and timeout."""
    from pyresilience import (
        BulkheadConfig,
        CircuitBreakerConfig,
        RateLimiterConfig,
        RetryConfig,
        TimeoutConfig,
    )
    from pyresilience import (
        resilient as pyres,
    )

    @pyres(
        retry=RetryConfig(max_attempts=3, delay=0.1),
        timeout=TimeoutConfig(seconds=2.0),
        circuit_breaker=CircuitBreakerConfig(),
        bulkhead=BulkheadConfig(max_concurrent=32),
        rate_limiter=RateLimiterConfig(max_calls=10**12, period=1.0),
    )
    async def run() -> Any:
        return await fn()

    return run


# --- our own pipelines, built from what exists in this checkout -----------------------------


def has(*names: str) -> bool:
    """Whether ``resilient`` exports all these names (other features land over time)."""
    return all(hasattr(resilient, name) for name in names)


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def retry_policy(**overrides: Any) -> Any:
    options: dict[str, Any] = {"attempts": 3, "base_delay": 0.1, "max_delay": 5.0}
    options.update(overrides)
    return resilient.Retry(**options)  # type: ignore[attr-defined]


def breaker_policy(**overrides: Any) -> Any:
    options: dict[str, Any] = {
        "failure_rate": 0.5,
        "window": 30.0,
        "minimum_calls": 20,
        "open_for": 5.0,
    }
    options.update(overrides)
    return resilient.CircuitBreaker(**options)  # type: ignore[attr-defined]


def limiter_policy(**overrides: Any) -> Any:
    options: dict[str, Any] = {"rate": HUGE_RATE, "burst": 1_000_000}
    options.update(overrides)
    return resilient.RateLimiter(**options)  # type: ignore[attr-defined]


def bulkhead_policy(**overrides: Any) -> Any:
    options: dict[str, Any] = {"max_concurrent": 32}
    options.update(overrides)
    return resilient.Bulkhead(**options)  # type: ignore[attr-defined]


def five_policies() -> resilient.Pipeline | None:
    """``Timeout -> Retry(+budget) -> CircuitBreaker -> RateLimiter -> Bulkhead -> Timeout``,
    spelled out, when every policy exists; else ``None``."""
    if not has("Retry", "RetryBudget", "CircuitBreaker", "RateLimiter", "Bulkhead"):
        return None
    return resilient.Pipeline(
        resilient.Timeout(10.0),
        retry_policy(budget=resilient.RetryBudget()),  # type: ignore[attr-defined]
        breaker_policy(),
        limiter_policy(),
        bulkhead_policy(),
        resilient.Timeout(2.0),
        name="bench",
        telemetry=False,
    )


def standard_pipeline() -> Any | None:
    """``resilient.standard(...)`` with telemetry off and a rate limit that never waits, or
    ``None`` before it exists."""
    standard = getattr(resilient, "standard", None)
    if standard is None:
        return None
    options: dict[str, Any] = {}
    for name, value in (("name", "bench"), ("telemetry", False), ("rate", HUGE_RATE)):
        if _accepts(standard, name):
            options[name] = value
    return standard(**options)


def wrapped(pipeline: Any, fn: Fn = f) -> Fn:
    """``pipeline.wrap(fn)``: the decorator form users write."""
    return pipeline.wrap(fn)  # type: ignore[no-any-return]

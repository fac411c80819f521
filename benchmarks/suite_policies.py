"""Each policy alone against the peers that do the same job (success path, asyncio).

Peers are used the way their documentation shows (decorators or ``async with``); ours as
``Pipeline(policy).wrap(f)`` with telemetry off. Our rows appear once the policy exists.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import resilient
from benchmarks import _peers as p
from benchmarks._harness import Case, loop, run_timed, summary

TITLE = "Each policy alone vs the peers (success path, telemetry off)"
REFERENCE = "bare await"

OURS_RETRY = "retry: resilient Retry"
OURS_BREAKER = "breaker: resilient CircuitBreaker"
OURS_LIMITER = "ratelimit: resilient RateLimiter"
OURS_BULKHEAD = "bulkhead: resilient Bulkhead"
OURS_TIMEOUT = "timeout: resilient Timeout"

NOTES = {
    "breaker: pybreaker `with calling()`": "no native asyncio: sync context manager",
    "bulkhead: asyncio.Semaphore": "the primitive, not a bulkhead (no queue bound, no rejection)",
    "timeout: asyncio.timeout": "the primitive",
}

# Ours against the fastest peer doing the same job (PERFORMANCE.md per-policy goals), with
# room for the Pipeline's per-call Context the peers' decorators do not build. The breaker:
# its step alone is gated at parity with circuitbreaker in suite_breaker; here, decorated,
# it also pays the Context (circuitbreaker's decorator counts consecutive failures and
# builds nothing per call), so the bound is wider.
GATES = [
    (OURS_RETRY, "retry: hyx @retry", 1.5),
    (OURS_BREAKER, "breaker: circuitbreaker @circuit", 2.0),
    (OURS_LIMITER, "ratelimit: aiolimiter `async with`", 1.5),
    (OURS_BULKHEAD, "bulkhead: hyx @bulkhead", 1.0),
    (OURS_TIMEOUT, "timeout: asyncio.timeout", 1.3),
]


def _decorated(decorator: Any) -> p.Fn:
    @decorator
    async def run() -> Any:
        return await p.f()

    return run  # type: ignore[no-any-return]


def _ours(policy: Any) -> p.Fn:
    return p.wrapped(resilient.Pipeline(policy, name="bench", telemetry=False))


def cases() -> dict[str, Case]:
    import aiobreaker
    import aiolimiter
    import backoff
    import circuitbreaker
    import pybreaker
    import stamina
    import tenacity
    from hyx.bulkhead import bulkhead
    from hyx.circuitbreaker import consecutive_breaker
    from hyx.ratelimit import tokenbucket
    from hyx.retry import retry as hyx_retry
    from hyx.retry.backoffs import expo
    from hyx.retry.jitters import full
    from hyx.timeout import timeout as hyx_timeout
    from pyresilience import (
        BulkheadConfig,
        CircuitBreakerConfig,
        RateLimiterConfig,
        RetryConfig,
    )
    from pyresilience import resilient as pyres

    out: dict[str, Case] = {"bare await": loop(p.f)}

    # retry
    out["retry: tenacity @retry"] = loop(
        _decorated(tenacity.retry(stop=tenacity.stop_after_attempt(3), reraise=True))
    )
    out["retry: stamina @retry"] = loop(_decorated(stamina.retry(on=Exception, attempts=3)))
    out["retry: backoff @on_exception"] = loop(
        _decorated(backoff.on_exception(backoff.expo, Exception, max_tries=3))
    )
    out["retry: hyx @retry"] = loop(
        _decorated(hyx_retry(attempts=3, backoff=expo(min_delay_secs=0.1, jitter=full)))
    )
    out["retry: pyresilience @resilient(retry)"] = loop(
        _decorated(pyres(retry=RetryConfig(max_attempts=3, delay=0.1)))
    )
    if p.has("Retry"):
        out[OURS_RETRY] = loop(_ours(p.retry_policy()))

    # circuit breaker
    aio_breaker = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(seconds=30))
    out["breaker: aiobreaker @breaker"] = loop(_decorated(aio_breaker))
    py_breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)

    async def pybreaker_call() -> Any:
        with py_breaker.calling():
            return await p.f()

    out["breaker: pybreaker `with calling()`"] = loop(pybreaker_call)
    out["breaker: circuitbreaker @circuit"] = loop(
        _decorated(circuitbreaker.circuit(failure_threshold=5, recovery_timeout=30))
    )
    out["breaker: hyx @consecutive_breaker"] = loop(
        _decorated(consecutive_breaker(failure_threshold=5, recovery_time_secs=30))
    )
    out["breaker: pyresilience @resilient(circuit_breaker)"] = loop(
        _decorated(pyres(circuit_breaker=CircuitBreakerConfig()))
    )
    if p.has("CircuitBreaker"):
        out[OURS_BREAKER] = loop(_ours(p.breaker_policy()))

    # rate limiter (configured so it never waits)
    limiter = aiolimiter.AsyncLimiter(p.HUGE_RATE, 1)

    async def aiolimiter_call() -> Any:
        async with limiter:
            return await p.f()

    out["ratelimit: aiolimiter `async with`"] = loop(aiolimiter_call)
    out["ratelimit: hyx @tokenbucket"] = loop(
        _decorated(tokenbucket(max_executions=p.HUGE_RATE, per_time_secs=1, bucket_size=1e6))
    )
    out["ratelimit: pyresilience @resilient(rate_limiter)"] = loop(
        _decorated(pyres(rate_limiter=RateLimiterConfig(max_calls=10**12, period=1.0)))
    )
    if p.has("RateLimiter"):
        out[OURS_LIMITER] = loop(_ours(p.limiter_policy()))

    # bulkhead
    semaphore = asyncio.Semaphore(32)

    async def semaphore_call() -> Any:
        async with semaphore:
            return await p.f()

    out["bulkhead: asyncio.Semaphore"] = loop(semaphore_call)
    out["bulkhead: hyx @bulkhead"] = loop(_decorated(bulkhead(max_concurrency=32, max_capacity=64)))
    out["bulkhead: pyresilience @resilient(bulkhead)"] = loop(
        _decorated(pyres(bulkhead=BulkheadConfig(max_concurrent=32)))
    )
    if p.has("Bulkhead"):
        out[OURS_BULKHEAD] = loop(_ours(p.bulkhead_policy()))

    # timeout
    async def asyncio_timeout_call() -> Any:
        async with asyncio.timeout(2.0):
            return await p.f()

    out["timeout: asyncio.timeout"] = loop(asyncio_timeout_call)
    out["timeout: hyx @timeout"] = loop(_decorated(hyx_timeout(2.0)))
    out[OURS_TIMEOUT] = loop(_ours(resilient.Timeout(2.0)))
    return out


def run(*, quick: bool) -> dict[str, float]:
    return summary(run_timed(cases, quick=quick), quick=quick)

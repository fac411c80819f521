"""Fallback in four short scenes: run with ``python examples/fallback.py`` (instant).

1. A value when the dependency fails (after the retries inside ran out).
2. A handler receiving the outcome: the last good answer, served from a cache.
3. An open circuit breaker answered by the fallback, and a client error that is not.
4. Cancellation never falls back.
"""

from __future__ import annotations

import anyio

from resilient import (
    CircuitBreaker,
    Fallback,
    Outcome,
    Pipeline,
    Retry,
    Verdict,
    on_exception,
)
from resilient.events import (
    Event,
    FallbackUsed,
)


def show(event: Event) -> None:
    if isinstance(event, FallbackUsed):
        print(f"    fallback used: {event.verdict.value} ({event.error_type or 'a result'})")


async def down() -> list[str]:
    raise ConnectionError("connection refused")


async def a_value() -> None:
    print("1. a fixed value once the retries ran out")
    pipeline = Pipeline(
        Fallback(value=[]),  # outermost: it answers for everything inside
        Retry(attempts=3, base_delay=0.001),
        listeners=[show],
        name="recommendations",
    )
    print(f"  -> {await pipeline.call(down)!r}")


async def a_handler() -> None:
    print("2. a handler: the last good answer from a cache")
    cache = {"ada": ["book", "lamp"]}

    async def from_cache(outcome: Outcome) -> list[str]:
        print(f"    the call failed with {outcome.exception!r}; serving the cached copy")
        return cache["ada"]

    pipeline = Pipeline(Fallback(handler=from_cache), name="recommendations")
    print(f"  -> {await pipeline.call(down)!r}")


async def breaker_and_client_errors() -> None:
    print("3. an open circuit falls back; a client error (the caller's fault) does not")
    breaker = CircuitBreaker(minimum_calls=1, failure_rate=0.5, open_for=30.0)
    pipeline = Pipeline(
        Fallback(value="default profile"),
        breaker,
        classify=[on_exception(KeyError, verdict=Verdict.CLIENT_ERROR)],
        listeners=[show],
        name="profiles",
    )
    print(f"  -> {await pipeline.call(down)!r} (the failure opened the circuit)")

    async def fine() -> str:
        return "fresh profile"

    print(f"  -> {await pipeline.call(fine)!r} (the circuit is {breaker.snapshot().state})")

    async def no_such_user() -> str:
        raise KeyError("user 42")

    breaker.reset()
    try:
        await pipeline.call(no_such_user)
    except KeyError as exc:
        print(f"  -> KeyError propagates: {exc!r}")


async def cancellation() -> None:
    print("4. cancellation never falls back")
    pipeline = Pipeline(Fallback(value="cached"), listeners=[show], name="slow")

    async def slow() -> str:
        await anyio.sleep(10.0)
        return "late"

    with anyio.move_on_after(0.01) as scope:
        await pipeline.call(slow)
    print(f"  -> cancelled: {scope.cancelled_caught}, no fallback used")


async def main() -> None:
    await a_value()
    await a_handler()
    await breaker_and_client_errors()
    await cancellation()


if __name__ == "__main__":
    anyio.run(main)

"""Shared helpers for the circuit breaker tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from resilient import BulkheadFullError, CircuitBreaker, Classifier, Pipeline, Verdict, on_exception
from resilient.events import CircuitStateChanged
from resilient.testing import EventRecorder, FakeClock


class NotFound(Exception):
    """A client error (CLIENT_ERROR under CLASSIFY)."""


CLASSIFY = Classifier(on_exception(NotFound, verdict=Verdict.CLIENT_ERROR))


def make(
    clock: FakeClock, events: EventRecorder | None = None, **options: Any
) -> tuple[CircuitBreaker, Pipeline]:
    """A breaker without jitter (unless asked) in a pipeline on ``clock``.

    Unless asked, it is a classic breaker: calls never wait out an open state
    (``max_waiting=0``) and only the window's rates trip it (``consecutive_failures=None``);
    tests/test_circuit_wait.py covers those two.
    """
    options.setdefault("open_jitter", 0.0)
    options.setdefault("max_waiting", 0)
    options.setdefault("consecutive_failures", None)
    breaker = CircuitBreaker(**options)
    pipeline = Pipeline(
        breaker,
        clock=clock,
        classify=CLASSIFY,
        listeners=[events] if events is not None else [],
        telemetry=False,
    )
    return breaker, pipeline


async def succeed() -> str:
    return "ok"


async def fail() -> str:
    raise ConnectionError("down")


async def client_error() -> str:
    raise NotFound("no such user")


async def rejected() -> str:
    raise BulkheadFullError("full", policy="bulkhead")


async def call(
    pipeline: Pipeline, fn: Callable[[], Awaitable[str]], key: str | None = None
) -> str | BaseException:
    """Run ``fn`` through ``pipeline``; return its result or the Exception it raised."""
    try:
        result: str = await pipeline.run(pipeline.context(fn, key=key))
    except Exception as exc:
        return exc
    return result


async def calls(
    pipeline: Pipeline, fn: Callable[[], Awaitable[str]], n: int, key: str | None = None
) -> list[str | BaseException]:
    return [await call(pipeline, fn, key) for _ in range(n)]


def transitions(events: EventRecorder) -> list[tuple[str, str]]:
    return [(e.previous, e.state) for e in events.of_type(CircuitStateChanged)]

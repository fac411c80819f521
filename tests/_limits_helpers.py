"""Helpers shared by the bulkhead and rate limiter tests."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.lowlevel

from resilient._clock import TimerScope
from resilient.testing import FakeClock


async def until(condition: Callable[[], bool], *, limit: int = 200) -> None:
    """Yield to the event loop until ``condition()`` holds (no real time passes)."""
    for _ in range(limit):
        if condition():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("condition not reached after yielding to the event loop")


async def settle(rounds: int = 20) -> None:
    """Let every runnable task run until it blocks (a few loop iterations)."""
    for _ in range(rounds):
        await anyio.lowlevel.checkpoint()


class CountingClock:
    """A FakeClock that counts reads and armed timers."""

    def __init__(self, inner: FakeClock | None = None) -> None:
        self.inner = inner or FakeClock()
        self.reads = 0
        self.armed: list[float] = []

    def now(self) -> float:
        self.reads += 1
        return self.inner.now()

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)

    def timeout_at(self, deadline: float) -> TimerScope:
        self.armed.append(deadline)
        return self.inner.timeout_at(deadline)

"""Helpers shared by the bulkhead and rate limiter tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner if inner is not None else FakeClock()
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


class ManualClock:
    """Virtual time that moves only when the test calls ``advance()``.

    Unlike ``FakeClock`` (whose sleeps return at once), a sleep here blocks until the test
    moves time past its end, so several callers can be waiting at the same moment.
    """

    def __init__(self) -> None:
        self.inner = FakeClock()

    def now(self) -> float:
        return self.inner.now()

    def advance(self, seconds: float) -> None:
        self.inner.advance(seconds)

    async def sleep(self, seconds: float) -> None:
        try:
            async with self.inner.timeout_at(self.inner.now() + max(seconds, 0.0)):
                await anyio.sleep_forever()
        except TimeoutError:
            pass

    def timeout_at(self, deadline: float) -> TimerScope:
        return self.inner.timeout_at(deadline)

    async def run_until(self, done: Callable[[], bool], *, step: float, limit: int = 1000) -> None:
        """Advance by ``step`` (letting tasks run in between) until ``done()``."""
        for _ in range(limit):
            await settle()
            if done():
                return
            self.advance(step)
        raise AssertionError("not done after advancing the clock")

"""Admission for the middleware: a concurrency gate with a short FIFO queue, per-client buckets.

Stand-ins with the smallest surface the middleware needs, until the library's ``Bulkhead``
and keyed ``RateLimiter`` direct-acquire API are available to plug in.
"""

from __future__ import annotations

import math
from collections import deque
from typing import final

import anyio

from resilient._keyed import BoundedKeyMap

__all__ = ["Buckets", "Slots", "Waiter"]


@final
class Waiter:
    """One request queued for a slot."""

    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


@final
class Slots:
    """``limit`` requests run; up to ``max_waiting`` wait in FIFO order for a free slot."""

    __slots__ = ("active", "limit", "max_waiting", "waiters")

    def __init__(self, limit: int, max_waiting: int) -> None:
        self.limit = limit
        self.max_waiting = max_waiting
        self.active = 0
        self.waiters: deque[Waiter] = deque()

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits (no yield, no allocation)."""
        if self.active < self.limit and not self.waiters:
            self.active += 1
            return True
        return False

    def enqueue(self) -> Waiter | None:
        """Join the queue, or ``None`` when it is full."""
        if len(self.waiters) >= self.max_waiting:
            return None
        waiter = Waiter()
        self.waiters.append(waiter)
        return waiter

    async def wait(self, waiter: Waiter) -> None:
        """Wait for ``waiter``'s slot; a cancelled wait leaves the queue (or passes the slot on)."""
        admitted = False
        try:
            await waiter.event.wait()
            admitted = True
        finally:
            if not admitted:
                if waiter.granted:
                    waiter.granted = False
                    self.release()
                else:
                    self.waiters.remove(waiter)

    def release(self) -> None:
        """Free a slot: hand it to the first waiter, if any."""
        if self.waiters:
            waiter = self.waiters.popleft()
            waiter.granted = True
            waiter.event.set()
            return
        self.active -= 1


@final
class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


@final
class Buckets:
    """A token bucket per client key: ``rate`` tokens a second, at most ``burst`` stored."""

    __slots__ = ("_buckets", "burst", "rate")

    def __init__(self, rate: float, burst: int, max_keys: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: BoundedKeyMap[_Bucket] = BoundedKeyMap(
            lambda _key: _Bucket(float(burst), -math.inf),
            max_keys=max_keys,
            idle_ttl=max(burst / rate, 1.0),
            parameter="ResilienceMiddleware.max_keys",
        )

    def acquire(self, key: str, now: float) -> tuple[float, float]:
        """Take a token for ``key``: ``(retry_after, tokens_left)``; ``retry_after`` is 0 if taken.

        On refusal ``retry_after`` is the exact seconds until a token is available.
        """
        bucket = self._buckets.get(key, now)
        tokens = bucket.tokens
        if bucket.updated != now:
            elapsed = now - bucket.updated
            tokens = min(float(self.burst), tokens + elapsed * self.rate)
            bucket.updated = now
        if tokens >= 1.0:
            bucket.tokens = tokens - 1.0
            return 0.0, bucket.tokens
        bucket.tokens = tokens
        return (1.0 - tokens) / self.rate, tokens

    def __len__(self) -> int:
        return len(self._buckets)

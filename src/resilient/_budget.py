"""``RetryBudget``: retries stay a bounded fraction of traffic, whatever ``attempts`` says."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import final

from . import _validate as check

__all__ = ["RetryBudget"]

# 10 calls x 0.1 is 0.9999999999999999 in binary floating point: still one whole retry.
_EPSILON = 1e-9

# Calls are counted without reading the clock and folded into the balance (with their time) at
# least every FOLD_EVERY calls, or sooner when a retry asks for a token.
FOLD_EVERY = 64


@final
class RetryBudget:
    """A token bucket of retries, shared by every ``Retry`` that holds it.

    One token is one retry. Tokens come from two places:

    - **earned**: every call (its first attempt, never a retry) earns ``ratio`` tokens. Earned
      tokens fade with a time constant of ``window`` seconds, so they reflect recent traffic:
      at a steady ``r`` calls per second the balance settles near ``ratio * r * window``, which
      lets a short burst of failures be retried in full while a lasting outage gets retries
      for at most ``ratio`` of calls (the SRE book's 10 % per client).
    - **reserve**: ``reserve`` tokens for low traffic, where ``ratio`` earns too little. A fresh
      budget starts with a full reserve. A spent reserve refills over ``window`` seconds, but
      the refill is collected only by a call that ends without a dependency failure (success or
      client error). While the dependency fails every attempt nothing is collected, so the
      reserve cannot keep an overloaded dependency overloaded; the first success after it
      recovers brings the reserve back.

    With the defaults, a client sending 80 calls/s to a dependency that fails every attempt
    makes about 1.10 attempts per call in steady state (1 + ``ratio``), whatever ``attempts``
    the retry allows.

    Time is whatever the caller passes in as ``now`` (``Retry`` passes ``ctx.clock.now()``); the
    budget never reads a clock of its own. Share one budget between pipelines that call the
    same dependency and run on the same clock and event loop thread. The counters are plain
    numbers: safe between tasks of one event loop, not across threads.

    Args:
        ratio: tokens earned per call, in [0, 1] (default 0.1: retries <= 10 % of calls).
        reserve: tokens available for low traffic, >= 0 (default 5).
        window: seconds over which earned tokens fade and the reserve refills, > 0 (default
            10, Finagle's ``ttl``).

    Raises:
        ConfigurationError: an option out of range.
    """

    __slots__ = (
        "_calls",
        "_drawn_at",
        "_earned",
        "_ratio",
        "_reserve",
        "_rolled_at",
        "_tokens",
        "_window",
    )

    def __init__(self, *, ratio: float = 0.1, reserve: float = 5, window: float = 10.0) -> None:
        self._ratio = check.number("RetryBudget.ratio", ratio, minimum=0.0, maximum=1.0)
        self._reserve = check.non_negative("RetryBudget.reserve", reserve)
        self._window = check.positive("RetryBudget.window", window)
        # `_calls` is bumped on the hot path without reading the clock; the calls are folded
        # into `_earned` with their time every FOLD_EVERY calls or when a retry asks for a
        # token (see `_roll`).
        self._calls = 0
        self._earned = 0.0
        self._rolled_at: float | None = None
        self._tokens = self._reserve  # the reserve's current level
        self._drawn_at: float | None = None  # since when the reserve has been refilling

    @property
    def ratio(self) -> float:
        """Tokens earned per call."""
        return self._ratio

    @property
    def reserve(self) -> float:
        """Size of the reserve for low traffic."""
        return self._reserve

    @property
    def window(self) -> float:
        """Seconds over which earned tokens fade and the reserve refills."""
        return self._window

    def deposit(self, now: float) -> None:
        """Record one call (a first attempt) made at ``now``: it earns ``ratio`` tokens."""
        self._calls += 1
        if self._calls >= FOLD_EVERY:
            self._roll(now)

    def record_call(self, clock: Callable[[], float]) -> None:
        """Record one call (a first attempt), reading ``clock()`` only when it is needed.

        Calls are counted without reading the clock and folded into the balance, with their
        time, every ``FOLD_EVERY`` calls (``Retry`` uses this on every call).
        """
        self._calls += 1
        if self._calls >= FOLD_EVERY:
            self._roll(clock())

    @property
    def refilling(self) -> bool:
        """Whether the reserve is below its size: a success would collect its refill.

        While false, ``record_success`` does nothing, so callers may skip reading the clock.
        """
        return self._tokens < self._reserve

    def _roll(self, now: float) -> None:
        calls = self._calls
        self._calls = 0
        last = self._rolled_at
        self._rolled_at = now
        # Exponential fading with time constant `window`. The calls since the last roll are
        # taken as spread evenly over the interval, each fading from its own arrival:
        # integral of e^(-(dt - t)/w) dt/dt over [0, dt] = (1 - e^(-x)) / x, with x = dt/w.
        x = 0.0 if last is None or now <= last else (now - last) / self._window
        if x == 0.0:  # no time passed (or too little to tell apart on this window): no fading
            self._earned += self._ratio * calls
            return
        keep = math.exp(-x)
        spread = -math.expm1(-x) / x
        self._earned = self._earned * keep + self._ratio * calls * spread

    def _refill(self, now: float) -> None:
        drawn_at = self._drawn_at
        if drawn_at is None:
            self._tokens = self._reserve
            return
        if now > drawn_at:
            tokens = self._tokens + (now - drawn_at) * self._reserve / self._window
            self._tokens = tokens if tokens < self._reserve else self._reserve
            self._drawn_at = now

    def record_success(self, now: float) -> None:
        """A call ended without a dependency failure: collect the reserve's refill.

        Costs nothing (no clock needed) while the reserve is full; ``Retry`` skips the call
        entirely then.
        """
        if self._tokens < self._reserve:
            self._refill(now)
            if self._tokens >= self._reserve:
                self._drawn_at = None

    def available(self, now: float) -> float:
        """Retries the budget would allow at ``now`` (earned plus reserve tokens)."""
        self._roll(now)
        return self._earned + self._tokens

    def try_withdraw(self, now: float) -> bool:
        """Take one token for a retry at ``now``; ``False`` (and nothing taken) when empty."""
        self._roll(now)
        earned = self._earned
        if earned >= 1.0 - _EPSILON:
            self._earned = earned - 1.0 if earned > 1.0 else 0.0
            return True
        if earned + self._tokens < 1.0 - _EPSILON:
            return False
        # Earned tokens are spent first; the rest comes from the reserve.
        if self._drawn_at is None:
            self._drawn_at = now
        tokens = self._tokens - (1.0 - earned)
        self._tokens = tokens if tokens > 0.0 else 0.0
        self._earned = 0.0
        return True

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self._ratio:g}, reserve={self._reserve:g}, "
            f"window={self._window:g})"
        )

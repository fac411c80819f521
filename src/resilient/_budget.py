"""``RetryBudget``: retries stay a bounded fraction of traffic, whatever ``attempts`` says."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import final

from . import _validate as check

__all__ = ["RetryBudget"]

# 10 calls x 0.1 is 0.9999999999999999 in binary floating point: still one whole retry.
_EPSILON = 1e-9

# Calls that earn are counted without reading the clock and folded into the balance (with
# their time) at least every FOLD_EVERY calls, or sooner when a retry asks for a token.
FOLD_EVERY = 64


@final
class RetryBudget:
    """A token bucket of retries, shared by every ``Retry`` (and ``Hedge``) that holds it.

    One token is one retry (or hedge). The budget tells independent transient errors, which
    retries fix, from a dead or overloaded dependency, which retries only load further:

    - **earned**: every call that ends **without a dependency failure** (a success or a client
      error) earns ``ratio`` tokens; a failed call earns nothing. Earned tokens fade with a time
      constant of ``window`` seconds, so they reflect recent traffic.
    - **refunded**: a retry or hedge costs one token, and gets it back (``refund``) when it
      succeeds: it proved the failure transient. Only retries that fail again really spend.
    - **reserve**: ``reserve`` tokens for low traffic, where ``ratio`` earns too little. A fresh
      budget starts with a full reserve. A spent reserve refills over ``window`` seconds, but
      the refill is collected only by a call that ends without a dependency failure.

    So retries are paid for by successes: with the default ``ratio`` of 0.2, a dependency
    failing a random 30 % of attempts earns about 0.19 tokens per call and its failed retries
    cost about 0.12, so every retry is allowed (``Retry(attempts=3)`` succeeds for 97.3 % of
    calls, the most three attempts can give). A dead dependency earns nothing and refunds
    nothing: once the banked tokens and the reserve are spent, no retry is made (about 1.5 %
    extra load over two minutes after a healthy minute at 100 calls/s). An overloaded one earns
    only from its successes, so retries shrink with goodput and cannot keep it overloaded.

    Time is whatever the caller passes in as ``now`` (``Retry`` passes ``ctx.clock.now()``); the
    budget never reads a clock of its own. Share one budget between pipelines that call the
    same dependency and run on the same clock and event loop thread. The counters are plain
    numbers: safe between tasks of one event loop, not across threads.

    Args:
        ratio: tokens earned per call that ends without a dependency failure, in [0, 1]
            (default 0.2: AWS's retry quota and Finagle's budget are both 1 in 5).
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

    def __init__(self, *, ratio: float = 0.2, reserve: float = 5, window: float = 10.0) -> None:
        self._ratio = check.number("RetryBudget.ratio", ratio, minimum=0.0, maximum=1.0)
        self._reserve = check.non_negative("RetryBudget.reserve", reserve)
        self._window = check.positive("RetryBudget.window", window)
        # `_calls` is bumped on the hot path without reading the clock; the calls are folded
        # into `_earned` with their time every FOLD_EVERY calls or when a retry asks for a
        # token (see `_roll`). The very first call is folded at once, so that every later fold
        # knows since when its calls were counted (and fades them).
        self._calls = 0
        self._earned = 0.0
        self._rolled_at: float | None = None
        self._tokens = self._reserve  # the reserve's current level
        self._drawn_at: float | None = None  # since when the reserve has been refilling

    @property
    def ratio(self) -> float:
        """Tokens earned per call that ends without a dependency failure."""
        return self._ratio

    @property
    def reserve(self) -> float:
        """Size of the reserve for low traffic."""
        return self._reserve

    @property
    def window(self) -> float:
        """Seconds over which earned tokens fade and the reserve refills."""
        return self._window

    def earn(self, clock: Callable[[], float]) -> None:
        """A call ended without a dependency failure (a success or a client error).

        It earns ``ratio`` tokens and collects the reserve's refill. The clock is read only
        when it is needed: calls are counted and folded into the balance, with their time,
        every ``FOLD_EVERY`` calls, and ``clock()`` is read for the refill only while the
        reserve is below its size. ``Retry`` calls this once per call that did not fail.
        """
        self._count(clock)
        if self._tokens < self._reserve:
            self.record_success(clock())

    def deposit(self, now: float) -> None:
        """Earn ``ratio`` tokens for one call that ended without a dependency failure at ``now``.

        Unlike ``earn`` it does not collect the reserve's refill (``record_success`` does).
        """
        self._count(lambda: now)

    def record_call(self, clock: Callable[[], float]) -> None:
        """Deprecated: earn ``ratio`` tokens for one call, reading ``clock()`` only when folding.

        Calls used to earn when they started; they now earn when they end without a
        dependency failure. Call ``earn(clock)`` then instead (it also collects the reserve's
        refill). This still earns ``ratio`` tokens, as ``deposit`` does.
        """
        warnings.warn(
            "RetryBudget.record_call() is deprecated: calls earn when they end without a "
            "dependency failure; call RetryBudget.earn(clock) then",
            DeprecationWarning,
            stacklevel=2,
        )
        self._count(clock)

    def _count(self, clock: Callable[[], float]) -> None:
        # One earning call: a counter bump, folded into the balance with its time (the one
        # clock read) every FOLD_EVERY calls, and at once for the very first call.
        self._calls += 1
        if self._calls >= FOLD_EVERY or self._rolled_at is None:
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

        It earns nothing (``earn`` does both). Costs nothing (no clock needed) while the
        reserve is full; callers may skip it then (see ``refilling``).
        """
        if self._tokens < self._reserve:
            self._refill(now)
            if self._tokens >= self._reserve:
                self._drawn_at = None

    def refund(self, now: float) -> None:
        """A retry or hedge that took a token succeeded at ``now``: give its token back.

        A retry that succeeds proved the failure transient, so it costs nothing; only retries
        that fail again spend the budget. The token goes back to the reserve while it is below
        its size, the rest to the earned balance (where it fades like earned tokens). Call it
        only for an attempt that ``try_withdraw`` paid for and that ended without a dependency
        failure (``Retry`` and ``Hedge`` do).
        """
        room = self._reserve - self._tokens
        rest = 1.0
        if room > 0.0:
            if room > 1.0:
                self._tokens += 1.0
                return
            self._tokens = self._reserve
            self._drawn_at = None
            rest -= room
        if rest > 0.0:
            self._roll(now)
            self._earned += rest

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

"""The token-bucket arithmetic: one number per bucket, pure functions, no clock of its own.

The state of a bucket is the time at which it will be full again (``full_at``, the
"theoretical arrival time" of GCRA). Tokens at ``now`` are ``burst - (full_at - now) * rate``,
clipped to ``[0, burst]``; taking ``cost`` tokens moves ``full_at`` forward by
``cost / rate``. A bucket idle for any length of time is simply full: idle time never buys
more than ``burst`` tokens. One float per bucket, no background task, no timer.

This is the only copy of the arithmetic: the in-memory store, the limiter's own unkeyed
bucket, and shared stores (Redis applies the same rule in a script) all follow it.
"""

from __future__ import annotations

import math

__all__ = ["EMPTY", "TOLERANCE", "bucket_take", "bucket_tokens"]

TOLERANCE = 1e-9
"""Tokens: a shortfall smaller than this is floating-point noise, not a shortfall."""

EMPTY = -math.inf
"""The state of a bucket never used: full at any time."""


def bucket_take(
    full_at: float, now: float, cost: float, rate: float, burst: float
) -> tuple[float, float]:
    """Try to take ``cost`` tokens from a bucket whose state is ``full_at``, at time ``now``.

    Returns ``(state, wait)``: when ``wait == 0.0`` the tokens were taken and ``state`` is
    the new ``full_at``; otherwise nothing was taken, ``state`` is the state to keep and
    ``wait`` is exactly how many seconds until ``cost`` tokens are available.

    A grant leaves the state at most one refill (``burst / rate``, plus float noise) ahead
    of ``now``; a state two refills ahead can only come from a clock whose base changed (a
    new trio run starts its clock at a random offset). The bucket then counts as empty,
    never as a free refill.
    """
    if full_at < now:
        full_at = now
    elif (full_at - now) * rate > 2.0 * burst:
        full_at = now + burst / rate
    short = (full_at - now) * rate + cost - burst  # tokens missing (<= 0: enough)
    if short <= TOLERANCE:
        return full_at + cost / rate, 0.0
    return full_at, short / rate


def bucket_tokens(full_at: float, now: float, rate: float, burst: float) -> float:
    """Tokens available at ``now`` in a bucket whose state is ``full_at`` (0 to ``burst``)."""
    debt = full_at - now
    if debt <= 0.0:
        return burst
    tokens = burst - debt * rate
    return tokens if tokens > 0.0 else 0.0

"""Backoff delays: exponential growth, a cap, and jitter.

Every strategy is a pure function ``(n, base, cap, draw, previous) -> seconds``:

- ``n``: how many retries were already made before this one (0 before the first retry);
- ``base`` and ``cap``: the first step and the largest delay, in seconds;
- ``draw``: one random number in [0, 1) (the caller owns the random source);
- ``previous``: the delay chosen before the previous retry (only ``decorrelated`` uses it;
  pass 0 before the first retry).

The ceiling of retry ``n`` is ``min(cap, base * 2**n)``. It is computed without overflow for any
``n`` (thousands of retries included), and every result is finite and in ``[0, cap]``, whatever
``draw`` is.
"""

from __future__ import annotations

from collections.abc import Callable
from math import ldexp
from typing import Final

__all__ = [
    "JITTERS",
    "Backoff",
    "ceiling",
    "decorrelated_jitter",
    "equal_jitter",
    "full_jitter",
    "no_jitter",
]

Backoff = Callable[[int, float, float, float, float], float]
"""``(n, base, cap, draw, previous) -> delay``: see the module docstring."""


def ceiling(n: int, base: float, cap: float) -> float:
    """The largest delay of retry ``n``: ``min(cap, base * 2**n)``, overflow-free."""
    if n <= 0:
        return base if base < cap else cap
    try:
        grown = ldexp(base, n)  # base * 2**n exactly, without building 2**n
    except OverflowError:  # beyond the largest float: certainly above any finite cap
        return cap
    return grown if grown < cap else cap


# Every strategy ends with the same guard against a random source returning garbage (NaN,
# negative, >= 1): the contract is "always a finite delay in [0, cap]", so a bad draw can neither
# park nor crash a caller. It is inlined in each function: this runs once per retry.


def full_jitter(n: int, base: float, cap: float, draw: float, previous: float = 0.0) -> float:
    """Uniform in ``[0, min(cap, base * 2**n)]`` (AWS "full jitter"; the default)."""
    # ceiling(n, base, cap), inlined: the default strategy runs once per retry.
    if n <= 0:
        high = base
    else:
        try:
            high = ldexp(base, n)
        except OverflowError:
            high = cap
    delay = draw * (high if high < cap else cap)
    if 0.0 <= delay <= cap:
        return delay
    return cap if delay > cap else 0.0


def equal_jitter(n: int, base: float, cap: float, draw: float, previous: float = 0.0) -> float:
    """Half the ceiling plus a uniform draw over the other half: ``[c/2, c]``."""
    half = ceiling(n, base, cap) / 2.0
    delay = half + draw * half
    if 0.0 <= delay <= cap:
        return delay
    return cap if delay > cap else 0.0


def decorrelated_jitter(
    n: int, base: float, cap: float, draw: float, previous: float = 0.0
) -> float:
    """Uniform in ``[base, 3 * previous]`` (``previous`` = ``base`` at first), capped.

    Marc Brooker's "decorrelated jitter": each delay depends on the previous one rather than on
    ``n``, so the sequence grows about 3x per retry on average and stays decorrelated.
    """
    low = base if base < cap else cap
    last = previous if previous > low else low
    delay = low + draw * (last * 3.0 - low)
    if 0.0 <= delay <= cap:
        return delay
    return cap if delay > cap else 0.0


def no_jitter(n: int, base: float, cap: float, draw: float, previous: float = 0.0) -> float:
    """Exactly ``min(cap, base * 2**n)``: plain exponential backoff (for comparison)."""
    return ceiling(n, base, cap)


JITTERS: Final[dict[str, Backoff]] = {
    "full": full_jitter,
    "equal": equal_jitter,
    "decorrelated": decorrelated_jitter,
    "none": no_jitter,
}
"""The strategies ``Retry(jitter=...)`` accepts, by name."""

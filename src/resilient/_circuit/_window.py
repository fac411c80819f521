"""The breaker's sliding windows: where outcomes are counted, and how old ones leave.

Two kinds, one interface (``new_ring``, ``record``, ``clear``, ``totals``), chosen once when
the breaker is built:

- ``TimeWindow``: the last ``window`` seconds in ``buckets`` buckets; per bucket, counts of
  calls, failures (and slow calls when tracked). The window moves on calls only: a bucket that
  ended is zeroed when the next outcome comes (``roll``).
- ``CountWindow``: the last ``window`` calls, one outcome code per call in a ring; recording
  overwrites the oldest. No clock.

Both keep the running totals on the ``State`` (``calls``, ``failures``, ``slow``), so reading
the failure rate never scans the ring.

Both also tell whether the newest outcomes are a run of failures (``in_run``, the
``consecutive_failures`` trip) at no cost on a success: a count window reads its last codes;
a time window counts the run on each failure, and knows a success came since the last
failure when the successes in the window (``calls - failures``) differ from ``mark``, the
number it held then (kept exact as buckets leave: their successes are taken off ``mark``).
"""

from __future__ import annotations

import math
from array import array
from typing import final

from ._state import CLOSED, FAILED, FORCED_CLOSED, NEVER, SLOW, State

__all__ = ["CountWindow", "TimeWindow"]

_TEMPLATES: dict[tuple[bool, int], array[int] | bytes] = {}


def _zeros(timed: bool, size: int) -> array[int] | bytes:
    # One shared all-zero template per window shape, copied into rings to clear them.
    template = _TEMPLATES.get((timed, size))
    if template is None:
        template = _TEMPLATES[timed, size] = array("I", bytes(4 * size)) if timed else bytes(size)
    return template


def _clear(st: State, zeros: array[int] | bytes) -> None:
    st.ring[:] = zeros  # type: ignore[assignment]
    st.head = NEVER
    st.edge = -math.inf
    st.pos = 0
    st.calls = st.failures = st.slow = 0
    st.run = st.mark = 0


@final
class TimeWindow:
    """The last ``buckets * width`` seconds, in ``buckets`` buckets of ``width`` seconds."""

    __slots__ = ("buckets", "size", "tracks_slow", "width", "zeros")

    def __init__(self, buckets: int, width: float, *, tracks_slow: bool) -> None:
        self.buckets = buckets
        self.width = width
        self.tracks_slow = tracks_slow
        # calls, failures (and slow calls) per bucket, one array
        self.size = buckets * (3 if tracks_slow else 2)
        self.zeros = _zeros(True, self.size)

    def new_ring(self) -> array[int]:
        return array("I", self.zeros)

    def record(self, st: State, code: int, now: float) -> None:
        """Count one outcome (``CALL``, with ``FAILED`` / ``SLOW`` bits) at ``now``."""
        if now >= st.edge:
            self.roll(st, now)
        ring = st.ring
        pos = st.pos
        buckets = self.buckets
        ring[pos] += 1
        st.calls += 1
        if code & FAILED:
            ring[buckets + pos] += 1
            failures = st.failures = st.failures + 1
            successes = st.calls - failures
            st.run = st.run + 1 if successes == st.mark else 1
            st.mark = successes
        if code & SLOW:
            ring[2 * buckets + pos] += 1
            st.slow += 1

    def in_run(self, st: State, n: int) -> bool:
        """Whether the last ``n`` outcomes recorded are failures (none since a success)."""
        return st.run >= n and st.calls - st.failures == st.mark

    def roll(self, st: State, now: float) -> None:
        """Make the bucket holding ``now`` the newest, dropping buckets that left."""
        width = self.width
        epoch = int(now // width)
        if (epoch + 1) * width <= now:  # float rounding: the bucket must end after now
            epoch += 1
        st.edge = (epoch + 1) * width
        steps = epoch - st.head
        if steps <= 0:
            return
        buckets = self.buckets
        st.head = epoch
        ring = st.ring
        if steps >= buckets:
            ring[:] = self.zeros  # type: ignore[assignment]
            st.calls = st.failures = st.slow = 0
            st.run = st.mark = 0  # a whole window without a call: a new run
            st.pos = epoch % buckets
            return
        pos = st.pos
        slow = self.tracks_slow
        for _ in range(steps):
            pos += 1
            if pos == buckets:
                pos = 0
            calls = ring[pos]
            if calls:
                ring[pos] = 0
                st.calls -= calls
                failures = ring[buckets + pos]
                st.mark -= calls - failures  # the successes that leave
                if failures:
                    ring[buckets + pos] = 0
                    st.failures -= failures
                if slow:
                    slowed = ring[2 * buckets + pos]
                    if slowed:
                        ring[2 * buckets + pos] = 0
                        st.slow -= slowed
        st.pos = pos

    def clear(self, st: State) -> None:
        _clear(st, self.zeros)

    def totals(self, st: State, now: float | None) -> tuple[int, int, int]:
        """Window totals, leaving out buckets that expired by ``now`` (without changing them)."""
        calls, failures, slow = st.calls, st.failures, st.slow
        if now is None or st.kind not in (CLOSED, FORCED_CLOSED):
            return calls, failures, slow
        steps = int(now // self.width) - st.head
        buckets = self.buckets
        if steps <= 0:
            return calls, failures, slow
        if steps >= buckets:
            return 0, 0, 0
        ring = st.ring
        pos = st.pos
        for _ in range(steps):
            pos = (pos + 1) % buckets
            calls -= ring[pos]
            failures -= ring[buckets + pos]
            if self.tracks_slow:
                slow -= ring[2 * buckets + pos]
        return calls, failures, slow


@final
class CountWindow:
    """The last ``size`` calls: one outcome code per call, the oldest overwritten."""

    __slots__ = ("size", "zeros")

    def __init__(self, size: int) -> None:
        self.size = size
        self.zeros = _zeros(False, size)

    def new_ring(self) -> bytearray:
        return bytearray(self.size)

    def record(self, st: State, code: int, now: float) -> None:
        """Count one outcome, overwriting the oldest (``now`` is not needed)."""
        ring = st.ring
        pos = st.pos
        old = ring[pos]
        ring[pos] = code
        st.pos = 0 if pos + 1 == self.size else pos + 1
        if old == 0:
            st.calls += 1
        else:
            if old & FAILED:
                st.failures -= 1
            if old & SLOW:
                st.slow -= 1
        if code & FAILED:
            st.failures += 1
        if code & SLOW:
            st.slow += 1

    def in_run(self, st: State, n: int) -> bool:
        """Whether the last ``n`` outcomes recorded are failures (read from the ring)."""
        if st.failures < n or n > self.size:
            return False
        ring = st.ring
        pos = st.pos
        size = self.size
        for _ in range(n):
            pos = pos - 1 if pos else size - 1
            if not ring[pos] & FAILED:
                return False
        return True

    def clear(self, st: State) -> None:
        _clear(st, self.zeros)

    def totals(self, st: State, now: float | None) -> tuple[int, int, int]:
        """Window totals (a count window does not expire with time)."""
        return st.calls, st.failures, st.slow


Window = TimeWindow | CountWindow
"""Either kind: what the breaker records into."""

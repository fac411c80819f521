"""The breaker's states: their names, the per-state record, outcome codes, the snapshot.

Each state carries a *generation* number, bumped on every transition. A call remembers the
generation it was admitted in; when it ends in a later generation it is a straggler: it never
opens or closes the breaker, releases no probe slot it does not own, and is only recorded in
the window when the breaker is still in the kind of state that admitted it.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Final, final

from resilient._classify import ClassifierLike, Verdict
from resilient._context import Context
from resilient._exceptions import TimeoutExceeded

if TYPE_CHECKING:
    from ._room import Room

__all__ = ["CircuitSnapshot", "State"]

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"
FORCED_OPEN: Final = "forced_open"
FORCED_CLOSED: Final = "forced_closed"
DISABLED: Final = "disabled"

SUCCESS = Verdict.SUCCESS
TRANSIENT = Verdict.TRANSIENT
FAILURE = Verdict.FAILURE
NEUTRAL = Verdict.REJECTED
MANUAL = frozenset((FORCED_OPEN, FORCED_CLOSED, DISABLED))
NEVER = -(2**62)  # bucket epoch of an empty time window: the first outcome resets it

# Outcome codes in a count window (one byte per call): recorded, failed, slow.
CALL = 1
FAILED = 2
SLOW = 4


def exception_verdict(classifier: ClassifierLike, exc: Exception, ctx: Context) -> Verdict:
    """The verdict the breaker records for ``exc`` (the exception path only)."""
    if (
        isinstance(exc, TimeoutExceeded)
        and exc.policy == ctx.deadline_source
        and exc.timeout == ctx.deadline_timeout
        and ctx.deadline != math.inf
    ):
        # The deadline that fired is the one enclosing the breaker (an outer Timeout whose
        # timer an inner Timeout armed for it): the caller's limit, neutral like the
        # cancellation an outer timer of its own would have caused.
        return NEUTRAL
    return classifier.classify_exception(exc).verdict


def exact_ratio(value: float) -> tuple[int, int]:
    # Rates as exact fractions so that thresholds hold at their exact boundaries:
    # 3 failures in 30 calls reach failure_rate=0.1 (0.1 * 30 is 3.0000000000000004 in floats).
    exact = Fraction(value).limit_denominator(1_000_000)
    return exact.numerator, exact.denominator


@final
class State:
    """The state of one breaker (or of one key of a keyed breaker) and its window.

    ``calls``, ``failures`` and ``slow`` are the window's totals while closed and the probe
    tally while half-open. ``ring`` holds the window: per-bucket counts (time window: calls,
    then failures, then slow calls, ``buckets`` entries each; ``head`` is the newest bucket's
    epoch, ``pos`` its index and ``edge`` the time it ends) or one outcome code per call
    (count window; ``pos`` is the next slot to overwrite).

    ``run`` counts the failures in a row in a time window, ``mark`` the successes it held at
    the last failure (the ``consecutive_failures`` trip, see ``_window``);
    ``room`` holds the callers waiting out an open state (``_room``), made on first use.
    """

    __slots__ = (
        "calls",
        "edge",
        "failures",
        "gen",
        "head",
        "key",
        "kind",
        "mark",
        "pos",
        "probe_at",
        "probes",
        "ring",
        "room",
        "run",
        "slow",
        "trips",
        "until",
    )

    def __init__(self, key: str | None, kind: str, ring: array[int] | bytearray) -> None:
        self.key = key
        self.kind = kind
        self.gen = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0
        self.ring = ring
        self.head = NEVER
        self.edge = -math.inf
        self.pos = 0
        self.probes = 0
        self.trips = 0
        self.until = math.inf
        self.run = 0  # failures in a row (time window; a count window reads its ring)
        self.mark = 0  # successes in the window at the last failure (time window)
        self.probe_at = 0.0  # open: when a waiting caller may probe next (see Machine.move)
        self.room: Room | None = None  # callers waiting out the open state (made on demand)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitSnapshot:
    """A point-in-time view of one breaker state (one key of a keyed breaker).

    Attributes:
        name: the breaker's name.
        key: the partition key, ``None`` for the breaker's unkeyed state.
        state: ``"closed"``, ``"open"``, ``"half_open"``, ``"forced_open"``,
            ``"forced_closed"`` or ``"disabled"``. An open breaker whose open time has passed
            still reads ``"open"``: it becomes half-open at its next call.
        calls: outcomes recorded in the window (while half-open: probe outcomes so far).
        failures: of those, failures (TRANSIENT or FAILURE verdicts).
        slow_calls: of those, calls slower than ``slow_call_duration``.
        failure_rate: ``failures / calls`` (0.0 with no calls).
        slow_call_rate: ``slow_calls / calls`` (0.0 with no calls).
        open_until: while open, the clock time at which the next call becomes a probe;
            otherwise ``None``.
        trips: consecutive openings without a successful close (drives ``open_for`` growth).
        probes: half-open probes in flight.
        waiting: callers waiting out the open state (``max_waiting``).
    """

    name: str
    key: str | None
    state: str
    calls: int
    failures: int
    slow_calls: int
    failure_rate: float
    slow_call_rate: float
    open_until: float | None
    trips: int
    probes: int
    waiting: int = 0


def evictable(state: State) -> bool:
    # A key an operator forced open, forced closed or disabled keeps that state past its idle
    # time (the max_keys bound still applies). A key with callers waiting in its room, or
    # released from it and still running, stays too: they hold on to this very state.
    room = state.room
    return state.kind not in MANUAL and (room is None or not (room.waiters or room.inflight))

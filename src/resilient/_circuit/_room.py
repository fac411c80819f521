"""The waiting room: callers that wait out an open breaker instead of failing at once.

A call that finds its state open (or half-open with every probe slot taken) may wait, within
``max_wait`` and its own deadline, in a bounded FIFO queue per state (per key). While it
waits it sends nothing upstream. Three things end a wait:

- **Probe.** The first waiter (the *head*) becomes the half-open probe as soon as
  ``probe_interval`` has passed since the state opened (or since the last probe started),
  whatever ``open_for`` says: its real call is the trial. Only the head ever sleeps on the
  clock (to that time); the others wait on an event, with a timer at their give-up time.
- **Release.** When the breaker closes, the waiters go in arrival order, *paced* by a slow
  start: ``FIRST_BATCH`` (2) are released at once, and each released call that succeeds
  releases two more (its own place and one extra); one that fails or ends neutral releases
  one (its place). So the number in flight doubles per round trip while the dependency
  answers, and a dependency that came back weak is not hit by the whole queue. If the
  breaker reopens meanwhile, released callers that have not started yet go back to the
  front of the queue and the rest keep waiting. Forced closed or disabled: all go at once.
- **Failure.** A waiter whose give-up time (``min(deadline, start + max_wait)``, with
  ``start`` the beginning of its deadline when it has one, so one call's attempts share
  ``max_wait``) is not
  after the next probe fails at once with the breaker's ``CircuitOpenError`` (it would wait
  in vain); one whose time runs out fails at that moment; forced open fails everyone.

Every wait is level-triggered: a woken waiter looks at the state again and decides, so a
spurious or late wake-up is harmless. ``Machine.move`` calls ``moved`` on each transition,
and every way out of a wait (success, failure, timeout, cancellation) removes the waiter,
gives back a release it did not use, and wakes the next head: nothing leaks, nothing is
stuck behind a caller that left.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Final, final

import anyio

from resilient._context import Context
from resilient._events import CircuitWaitEnded, CircuitWaitStarted

from ._state import CLOSED, DISABLED, FORCED_CLOSED, FORCED_OPEN, HALF_OPEN, OPEN, State

if TYPE_CHECKING:
    from resilient._clock import Clock

    from ._machine import Machine

__all__ = ["FIRST_BATCH", "Room", "wait"]

FIRST_BATCH: Final = 2
"""Waiters released at once when the breaker closes (then two more per success)."""


@final
class Waiter:
    """One caller waiting in a room."""

    __slots__ = ("event", "give_up", "released", "scope")

    def __init__(self, give_up: float) -> None:
        self.give_up = give_up
        self.released = False  # handed a place among the calls let through after a close
        self.event: anyio.Event | None = None
        self.scope: anyio.CancelScope | None = None  # the head's sleep until its probe time

    def wake(self) -> None:
        if self.event is not None:
            self.event.set()
        if self.scope is not None:
            self.scope.cancel()


@final
class Room:
    """The waiters of one state, and the pacing of their release.

    ``inflight`` counts the released callers not yet finished (woken or running); while
    closed at most ``window`` of them are out, and ``window`` grows by one per success.
    """

    __slots__ = ("inflight", "waiters", "window")

    def __init__(self) -> None:
        self.waiters: deque[Waiter] = deque()
        self.inflight = 0
        self.window = 0

    def release(self, st: State) -> None:
        """Let waiters go, in order, as far as the state and the pacing allow."""
        kind = st.kind
        limit: float
        if kind is CLOSED:
            limit = self.window
        elif kind is FORCED_CLOSED or kind is DISABLED:
            limit = math.inf
        else:
            return
        waiters = self.waiters
        while waiters and self.inflight < limit:
            waiter = waiters.popleft()
            waiter.released = True
            self.inflight += 1
            waiter.wake()

    def done(self, st: State, success: bool) -> None:
        """A released call ended: its place, and one more after a success, go to waiters."""
        self.inflight -= 1
        if success:
            self.window += 1
        if self.waiters:
            self.release(st)
        elif not self.inflight:
            self.window = 0

    def moved(self, st: State, now_probe: float) -> None:
        """The state changed (``Machine.move``): wake whoever must act on it."""
        kind = st.kind
        waiters = self.waiters
        if not waiters:
            return
        if kind is CLOSED:
            self.window = FIRST_BATCH  # every close starts slow again
            self.release(st)
        elif kind is FORCED_CLOSED or kind is DISABLED:
            self.release(st)
        elif kind is OPEN:
            # The head sleeps until the next probe; whoever cannot outlast it fails now.
            waiters[0].wake()
            for waiter in waiters:
                if waiter.give_up <= now_probe:
                    waiter.wake()
        elif kind is HALF_OPEN:
            waiters[0].wake()
        else:  # forced open: everyone fails
            for waiter in waiters:
                waiter.wake()

    def wake_head(self) -> None:
        if self.waiters:
            self.waiters[0].wake()


def next_probe(st: State) -> float:
    """When the head of an open state's room may probe."""
    return min(st.probe_at, st.until)


async def wait(m: Machine, st: State, ctx: Context, now: float) -> tuple[str, float]:
    """Wait out an open (or fully probed half-open) state: ``(kind to run in, now)``.

    Returns ``HALF_OPEN`` to run as a probe (the slot is taken by ``Machine.probe`` before
    any checkpoint), ``CLOSED`` or ``FORCED_CLOSED`` to run as a released call (report its
    end to ``Room.done``), or ``DISABLED`` (likewise, nothing recorded).

    Raises:
        CircuitOpenError: the room is full, the wait would be in vain, ran out, or the
            breaker was forced open (its ``CallRejected`` delivered once).
    """
    room = st.room
    if room is None:
        room = st.room = Room()
    if not room.waiters:
        taken = _probe_now(m, st, ctx, now)
        if taken is not None:
            return taken, now
    waiter = _enter(m, st, ctx, room, now)
    listening = ctx.listening or bool(m.listeners)
    if listening:
        m.deliver_wait(
            ctx,
            CircuitWaitStarted(
                pipeline=ctx.pipeline,
                operation=ctx.operation,
                policy=m.name,
                at=now,
                key=st.key,
                waiting=len(room.waiters),
                give_up=waiter.give_up,
            ),
        )
    clock = ctx.clock if m.clock is None else m.clock
    start = now
    outcome = "cancelled"
    run: str | None = None
    try:
        while True:
            decided, run = _decide(m, st, ctx, waiter, now)
            if decided:
                outcome = decided
                if run is not None:
                    return run, now
                reason = "wait_timeout" if decided == "timeout" else st.kind
                raise m.reject(st, ctx, reason, _retry_after(st, now), now)
            await _pause(clock, st, room, waiter, now)
            now = clock.now()
    finally:
        waiter.scope = None
        if run is None:  # leaving without running: hold no place, block no one
            _leave(st, room, waiter)
        if listening:
            at = clock.now()
            m.deliver_wait(
                ctx,
                CircuitWaitEnded(
                    pipeline=ctx.pipeline,
                    operation=ctx.operation,
                    policy=m.name,
                    at=at,
                    key=st.key,
                    outcome=outcome,
                    waited=at - start,
                ),
            )


def _enter(m: Machine, st: State, ctx: Context, room: Room, now: float) -> Waiter:
    """Queue the caller, or refuse it at once (room full, no time, next probe too late)."""
    deadline = ctx.deadline
    give_up = min(deadline, now + m.max_wait)
    if deadline != math.inf:
        # The attempts of one call share its max_wait: counted from when its deadline began
        # (the enclosing Timeout's start), a retry does not wait all over again.
        give_up = min(give_up, deadline - ctx.deadline_timeout + m.max_wait)
    kind = st.kind
    if (
        len(room.waiters) >= m.max_waiting
        or give_up <= now
        or (kind is OPEN and give_up <= next_probe(st))
    ):
        raise m.reject(st, ctx, kind, _retry_after(st, now), now)
    waiter = Waiter(give_up)
    room.waiters.append(waiter)
    return waiter


def _decide(
    m: Machine, st: State, ctx: Context, waiter: Waiter, now: float
) -> tuple[str, str | None]:
    """One look at the state for a waiter: ``(outcome, kind to run in)`` to leave (the kind
    is ``None`` for a refusal: outcome ``failed`` or ``timeout``), ``("", None)`` to wait on.
    Level-triggered: any wake-up, spurious or late, just decides again."""
    kind = st.kind
    room = st.room
    assert room is not None  # a waiter waits in its state's room
    released = _go(room, waiter, kind)
    if released is not None:
        return "released", released
    if kind is FORCED_OPEN:
        return "failed", None
    if room.waiters[0] is waiter:
        taken = _probe_now(m, st, ctx, now, waiter=waiter, room=room)
        if taken is not None:
            return "probe", taken
    if kind is OPEN and waiter.give_up <= next_probe(st):
        return "failed", None  # the next probe comes too late for this caller
    if now >= waiter.give_up:
        return "timeout", None
    return "", None


def _go(room: Room, waiter: Waiter, kind: str) -> str | None:
    """The kind a waiter may run in now, if the breaker lets it go: a released caller while
    calls pass (re-queued at the front if the breaker reopened first), or anyone when it is
    forced closed or disabled."""
    if waiter.released:
        if kind is CLOSED or kind is FORCED_CLOSED or kind is DISABLED:
            return kind
        waiter.released = False
        room.inflight -= 1
        room.waiters.appendleft(waiter)
    if kind is FORCED_CLOSED or kind is DISABLED:
        room.waiters.remove(waiter)
        waiter.released = True
        room.inflight += 1
        return kind
    return None


async def _pause(clock: Clock, st: State, room: Room, waiter: Waiter, now: float) -> None:
    """Wait until something may have changed for a queued waiter."""
    if st.kind is OPEN and room.waiters[0] is waiter:
        # The head sleeps until its probe time (on the clock: a fake clock moves); a
        # transition wakes it early by cancelling the sleep.
        with anyio.CancelScope() as scope:
            waiter.scope = scope
            await clock.sleep(next_probe(st) - now)
        waiter.scope = None
        return
    event = waiter.event = anyio.Event()
    try:
        if waiter.give_up == math.inf:
            await event.wait()
        else:
            async with clock.timeout_at(waiter.give_up):
                await event.wait()
    except TimeoutError:
        pass  # our timer: the next decision sees the time is up
    finally:
        waiter.event = None


def _leave(st: State, room: Room, waiter: Waiter) -> None:
    """A waiter leaving without running: give back an unused release, or leave the queue
    and wake the next head if it was the head."""
    if waiter.released:
        waiter.released = False
        room.done(st, False)
        return
    waiters = room.waiters
    head = waiters[0] is waiter
    waiters.remove(waiter)
    if head:
        room.wake_head()


def _probe_now(
    m: Machine,
    st: State,
    ctx: Context,
    now: float,
    *,
    waiter: Waiter | None = None,
    room: Room | None = None,
) -> str | None:
    """Take the probe now if the head may (``HALF_OPEN``), else ``None``; never waits."""
    kind = st.kind
    if kind is OPEN:
        if now < next_probe(st):
            return None
    elif kind is HALF_OPEN:
        if st.probes + st.calls >= m.half_open_calls:
            return None
    else:
        return None
    if waiter is not None and room is not None:
        room.waiters.popleft()  # the head leaves the queue to probe
        room.wake_head()  # the next head: another slot, or the next probe time
    if kind is OPEN:
        m.move(st, HALF_OPEN, ctx, now)
    return HALF_OPEN


def _retry_after(st: State, now: float) -> float | None:
    if st.kind is OPEN:
        return max(0.0, next_probe(st) - now)
    return None

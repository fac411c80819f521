"""The breaker's state machine: admission, probes, recording outcomes and the transitions.

::

    closed --(window reaches a rate)--> open --(open time passed, next call)--> half_open
    half_open --(every planned probe succeeded)--> closed
    half_open --(the probes' verdict is a failure, or max_half_open passed)--> open
    closed --(consecutive_failures failures in a row)--> open
    any --(manual control)--> forced_open | forced_closed | disabled | closed

``Machine`` holds what the transitions need (thresholds, open-time growth, the window, the
listeners) and the breaker's clock. ``admit`` decides a call outside the plain closed state,
``probe`` runs a half-open probe (its slot accounting), and ``finish`` is the one place that
records an outcome: into the window while closed, into the probe tally while half-open.

Callers that wait out an open state (``max_waiting``) do so in the state's room (``_room``):
``admit`` sends them there (``WAIT``), ``waited`` runs them as the probe or as released calls,
and ``move`` tells the room about every transition.

The clock is bound once (``bind``), by the first call that reaches the breaker; every time the
machine reads comes from it. Manual control may run before that: it reads no clock then.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final, final

from resilient._classify import ClassifierLike, Verdict
from resilient._clock import Clock
from resilient._context import Context
from resilient._events import (
    CallRejected,
    CircuitStateChanged,
    CircuitWaitEnded,
    CircuitWaitStarted,
    Event,
    Listener,
    notify,
)
from resilient._exceptions import CircuitOpenError
from resilient._pipeline import Call

from ._room import Room, wait
from ._state import (
    CALL,
    CLOSED,
    DISABLED,
    FAILED,
    FAILURE,
    FORCED_CLOSED,
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    SLOW,
    SUCCESS,
    TRANSIENT,
    State,
    exception_verdict,
)
from ._window import Window

__all__ = ["WAIT", "Machine"]

WAIT: Final = "wait"
"""What ``admit`` returns for a call that may wait out an open state."""


def _unbound_now() -> float:
    return 0.0  # manual control before any call: no clock yet


@final
class Machine:
    """The transitions of one breaker's states (every key's), on the breaker's clock."""

    __slots__ = (
        "clock",
        "consecutive",
        "fp",
        "fq",
        "growth",
        "growth_steps",
        "half_open_calls",
        "jitter",
        "listeners",
        "max_half_open",
        "max_open_for",
        "max_wait",
        "max_waiting",
        "minimum_calls",
        "name",
        "now",
        "open_for",
        "probe_interval",
        "slow_after",
        "sp",
        "sq",
        "timed",
        "window",
    )

    def __init__(
        self,
        name: str,
        window: Window,
        *,
        timed: bool,
        rates: tuple[int, int, int, int],
        minimum_calls: int,
        half_open_calls: int,
        slow_after: float | None,
        open_times: tuple[float, float, int, float, float],
        max_half_open: float | None,
        listeners: tuple[Listener, ...],
        consecutive: int | None = None,
        waiting: tuple[int, float, float] = (0, 0.0, 0.2),
    ) -> None:
        self.name = name
        self.window = window
        self.timed = timed
        self.fp, self.fq, self.sp, self.sq = rates
        self.minimum_calls = minimum_calls
        self.half_open_calls = half_open_calls
        self.slow_after = slow_after
        self.open_for, self.growth, self.growth_steps, self.max_open_for, self.jitter = open_times
        self.max_half_open = max_half_open
        self.listeners = listeners
        # failures in a row that open the breaker (never reached when None)
        self.consecutive = 2**62 if consecutive is None else consecutive
        self.max_waiting, self.max_wait, self.probe_interval = waiting
        self.clock: Clock | None = None
        self.now: Callable[[], float] = _unbound_now
        """The bound clock's time; 0.0 before the first call binds a clock."""

    def bind(self, clock: Clock) -> None:
        """Take ``clock`` as the breaker's clock, unless one is bound already."""
        if self.clock is None:
            self.clock = clock
            # The clock's own method: reading the time costs no frame of the machine's.
            self.now = clock.now

    # -- admission and probes ---------------------------------------------------------------

    def admit(self, st: State, ctx: Context) -> tuple[str, float]:
        """Admit a call outside the plain closed state: ``(state admitted in, start time)``.

        Raises:
            CircuitOpenError: open, forced open, or half-open with every probe slot taken.
        """
        kind = st.kind
        if kind is OPEN:
            now = self.now()
            if self.max_waiting:
                return WAIT, now  # the room decides: probe now, wait, or refuse
            if now < st.until:
                raise self.reject(st, ctx, OPEN, st.until - now, now)
            self.move(st, HALF_OPEN, ctx, now)
            return HALF_OPEN, now
        if kind is HALF_OPEN:
            if st.probes + st.calls >= self.half_open_calls:
                now = self.now()
                if now >= st.until:  # max_half_open passed with probes still out: reopen
                    self.move(st, OPEN, ctx, now)
                    if self.max_waiting:
                        return WAIT, now
                    raise self.reject(st, ctx, OPEN, st.until - now, now)
                if self.max_waiting:
                    return WAIT, now
                raise self.reject(st, ctx, HALF_OPEN, self.open_for, now)
        elif kind is FORCED_OPEN:
            raise self.reject(st, ctx, FORCED_OPEN, None, None)
        elif kind is DISABLED:
            return kind, 0.0
        # closed with slowness tracked, forced closed, or a probe: the start time if needed
        return kind, self.now() if self.slow_after is not None else 0.0

    async def probe(
        self, call: Call, ctx: Context, st: State, start: float, classifier: ClassifierLike
    ) -> Any:
        """Run a half-open probe; its slot is given back however it ends.

        The ``finally`` runs for a success, a failure, a neutral outcome, a cancellation or
        any other ``BaseException``. A recorded outcome uses the slot up (``st.calls``); a
        neutral one frees it for another probe.
        """
        gen = st.gen
        st.probes += 1
        try:
            result, _ = await self.recorded(call, ctx, st, HALF_OPEN, start, classifier)
            return result
        finally:
            if st.gen == gen:  # after a transition the slots were renewed: not ours to free
                st.probes -= 1
                room = st.room
                if room is not None and room.waiters:
                    room.wake_head()  # a slot left unused (a neutral end): the next may probe

    async def waited(
        self, call: Call, ctx: Context, st: State, now: float, classifier: ClassifierLike
    ) -> Any:
        """Run a call that ``admit`` sent to the room: wait, then probe or run released.

        Raises:
            CircuitOpenError: refused by the room (full, in vain, timed out, forced open).
        """
        kind, start = await wait(self, st, ctx, now)
        if kind is HALF_OPEN:
            return await self.probe(call, ctx, st, start, classifier)
        room: Room = st.room  # type: ignore[assignment]  # made by wait()
        success = False
        try:
            if kind is DISABLED:
                result = await call(ctx)
                success = True
                return result
            result, verdict = await self.recorded(call, ctx, st, kind, start, classifier)
            success = verdict is SUCCESS
            return result
        finally:
            room.done(st, success)

    async def recorded(  # noqa: PLR0917 - internal, the finish() arguments in order
        self,
        call: Call,
        ctx: Context,
        st: State,
        kind: str,
        start: float,
        classifier: ClassifierLike,
    ) -> tuple[Any, Verdict]:
        """Run ``call`` in ``kind`` and record its outcome (``finish``): ``(result, verdict)``."""
        gen = st.gen
        try:
            result = await call(ctx)
        except Exception as exc:
            self.finish(st, gen, kind, exception_verdict(classifier, exc, ctx), start, ctx)
            raise
        verdict = classifier.classify_result(result).verdict
        self.finish(st, gen, kind, verdict, start, ctx)
        return result, verdict

    # -- recording outcomes -----------------------------------------------------------------

    def finish(  # noqa: PLR0917 - internal, positional for speed
        self, st: State, gen: int, admitted: str, verdict: Verdict, start: float, ctx: Context
    ) -> None:
        """Record the outcome of a call admitted in state ``admitted`` at generation ``gen``."""
        if verdict is SUCCESS:
            code = CALL
        elif verdict is TRANSIENT or verdict is FAILURE:
            code = CALL | FAILED
        else:
            return  # CLIENT_ERROR, REJECTED: neutral
        kind = st.kind
        current = st.gen == gen
        if not current and (
            kind is not admitted or (kind is not CLOSED and kind is not FORCED_CLOSED)
        ):
            return  # a straggler from a state that is gone
        slow_after = self.slow_after
        timed = self.timed or slow_after is not None or kind is HALF_OPEN
        now = self.now() if timed else 0.0
        if slow_after is not None and now - start > slow_after:
            code |= SLOW
        if kind is HALF_OPEN:
            self.judge_probe(st, code, ctx, now)
            return
        self.window.record(st, code, now)
        # Only a window holding failures (or slow calls) can trip: a success that completes
        # minimum_calls at the threshold opens the breaker too (that call keeps its result).
        if current and kind is CLOSED and (st.failures or st.slow) and self.tripped(st):
            self.move(st, OPEN, ctx, now if timed else self.now())

    def judge_probe(self, st: State, code: int, ctx: Context, now: float) -> None:
        """Count a half-open probe's outcome: reopen on a failed verdict, close when done."""
        st.calls += 1
        if code & FAILED:
            st.failures += 1
        if code & SLOW:
            st.slow += 1
        if self.probes_failed(st):
            self.move(st, OPEN, ctx, now)
        elif st.calls >= self.half_open_calls:
            self.move(st, CLOSED, ctx, now)

    def tripped(self, st: State) -> bool:
        """Whether a closed window reached a rate, or a run of failures, that opens it.

        The run is the window's to tell (``in_run``): it costs nothing on a success.
        """
        if self.window.in_run(st, self.consecutive):
            return True
        calls = st.calls
        if calls < self.minimum_calls:
            return False
        if st.failures * self.fq >= self.fp * calls:
            return True
        return self.slow_after is not None and st.slow * self.sq >= self.sp * calls

    def probes_failed(self, st: State) -> bool:
        """Whether the probes' verdict is a failure already.

        Judged against the full probe count, so a verdict that later probes cannot change
        reopens the breaker at once.
        """
        planned = self.half_open_calls
        if st.failures * self.fq >= self.fp * planned:
            return True
        return self.slow_after is not None and st.slow * self.sq >= self.sp * planned

    # -- transitions and events -------------------------------------------------------------

    def move(self, st: State, kind: str, ctx: Context | None, now: float) -> None:
        """Enter ``kind`` at ``now``, in a new generation (``ctx``: None for manual control)."""
        previous = st.kind
        st.kind = kind
        st.gen += 1
        st.probes = 0
        st.run = 0  # every state starts a new run of failures
        st.until = math.inf
        if kind is OPEN:
            st.trips += 1
            steps = min(st.trips - 1, self.growth_steps)
            base = min(self.open_for * self.growth**steps, self.max_open_for)
            jitter = self.jitter * ctx.random() if ctx is not None and self.jitter else 0.0
            st.until = now + base * (1.0 - jitter)
            # Waiting callers probe every probe_interval: after this opening, or after the
            # failed probe started (half-open set that time; a slow probe's failure is
            # followed by the next probe at once).
            if previous is HALF_OPEN:
                st.probe_at = max(now, st.probe_at)
            else:
                st.probe_at = now + self.probe_interval
        elif kind is HALF_OPEN:
            st.probe_at = now + self.probe_interval  # the earliest next probe if this fails
            self.window.clear(st)
            if self.max_half_open is not None:
                st.until = now + self.max_half_open
        elif kind is CLOSED or kind is FORCED_CLOSED:
            self.window.clear(st)
            st.trips = 0
        room = st.room
        if room is not None and room.waiters:
            room.moved(st, min(st.probe_at, st.until))
        if previous != kind:
            self._emit_change(st, previous, ctx, now)

    def _emit_change(self, st: State, previous: str, ctx: Context | None, now: float) -> None:
        listening = ctx is not None and ctx.listening
        if not (listening or self.listeners):
            return
        event = CircuitStateChanged(
            pipeline=ctx.pipeline if ctx is not None else "",
            operation=ctx.operation if ctx is not None else "",
            policy=self.name,
            at=now,
            previous=previous,
            state=st.kind,
            key=st.key,
        )
        self._deliver(event, ctx if listening else None)

    def deliver_wait(self, ctx: Context, event: CircuitWaitStarted | CircuitWaitEnded) -> None:
        """Deliver a room's event (call only when ``ctx.listening`` or listeners)."""
        self._deliver(event, ctx if ctx.listening else None)

    def _deliver(self, event: Event, ctx: Context | None) -> None:
        if ctx is not None:
            ctx.emit(event)
        notify(self.listeners, event)

    def reject(
        self,
        st: State,
        ctx: Context,
        reason: str,
        retry_after: float | None,
        now: float | None,
    ) -> CircuitOpenError:
        """The ``CircuitOpenError`` refusing a call (its ``CallRejected`` event delivered)."""
        state = st.kind
        where = "" if st.key is None else f" for {st.key!r}"
        hint = "" if retry_after is None else f"; retry after {retry_after:.3g}s"
        error = CircuitOpenError(
            f"circuit breaker {self.name!r} is {state}{where}{hint}",
            policy=self.name,
            retry_after=retry_after,
            state=state,
            key=st.key,
        )
        if ctx.listening or self.listeners:
            self._deliver(
                CallRejected(
                    pipeline=ctx.pipeline,
                    operation=ctx.operation,
                    policy=self.name,
                    at=self.now() if now is None else now,
                    reason=reason,
                    retry_after=error.retry_after,
                    error_type="resilient.CircuitOpenError",
                ),
                ctx if ctx.listening else None,
            )
        return error

"""Injected time: the ``Clock`` protocol and the default clock.

Every policy reads time and waits through the clock of the call's context, never through
``time`` or ``asyncio`` directly. That makes every policy deterministic under
``resilient.testing.FakeClock`` and under trio's ``MockClock``.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import sys
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol, final, runtime_checkable

import anyio

__all__ = ["Clock", "SystemClock", "Timer", "TimerScope", "call_at", "current_loop"]

_sniffio_local: Any
try:  # trio depends on sniffio and names itself in sniffio's thread-local while it runs
    from sniffio import thread_local as _sniffio_local
except ImportError:  # pragma: no cover - without sniffio there is no trio either
    _sniffio_local = None

_monotonic = time.monotonic
_get_ident = threading.get_ident


def _on_trio() -> bool:
    # A thread-local read: cheaper than asyncio._get_running_loop(), which makes a getpid()
    # system call on every use in CPython 3.11.
    return _sniffio_local is not None and _sniffio_local.name == "trio"


@runtime_checkable
class TimerScope(Protocol):
    """An async context manager that interrupts its body at a deadline.

    On expiry the body is cancelled and ``TimeoutError`` is raised from ``__aexit__``;
    ``expired()`` then tells this scope's own expiry apart from a ``TimeoutError`` raised by
    the body itself. An outer cancellation is never turned into ``TimeoutError``.

    A scope may also offer its synchronous halves, ``arm()`` (enter) and
    ``disarm(exc_type) -> bool`` (exit; true when the body's exception is this scope's own
    cancellation, to be replaced by a timeout error). ``Timeout`` uses them when present and
    saves the two coroutines of an ``async with``; the default clock's scopes have them.
    """

    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...

    def expired(self) -> bool: ...


@runtime_checkable
class Clock(Protocol):
    """Monotonic time, sleeping and deadlines for one pipeline.

    ``now()`` and ``timeout_at()`` share one time base: deadlines are ``now() + seconds``.
    """

    def now(self) -> float:
        """Current monotonic time in seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a checkpoint even when ``seconds <= 0``)."""
        ...

    def timeout_at(self, deadline: float) -> TimerScope:
        """A scope that cancels its body when ``now()`` reaches ``deadline``."""
        ...


@final
class _AnyioTimer:
    """Timer scope for any anyio backend (trio in practice) built on a cancel scope."""

    __slots__ = ("_scope",)

    def __init__(self, deadline: float) -> None:
        self._scope = anyio.CancelScope(deadline=deadline)

    async def __aenter__(self) -> _AnyioTimer:
        self._scope.__enter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._scope.__exit__(exc_type, exc, tb) and self._scope.cancelled_caught:
            raise TimeoutError
        return None

    def expired(self) -> bool:
        return self._scope.cancelled_caught


# Timer coalescing (asyncio). A loop timer per deadline (``loop.call_at`` plus ``cancel()``)
# costs a TimerHandle, a context copy and a heap push, and a cancelled handle stays in the heap
# until the loop rebuilds it. Deadlines of one length entered one after another never
# decrease, so timers are kept in *lanes*: insertion-ordered dicts whose deadlines never
# decrease, each with one loop timer armed at its earliest live deadline. Arming is a dict
# insert, cancelling a dict delete; the lane's loop timer fires at its head's deadline, fires
# every timer that is due and re-arms for the new head. A timer that fits no lane (a deadline
# earlier than every lane's newest, with all lanes in use) gets a loop timer of its own.
_MAX_LANES = 8


class _Scheduled:
    """What a lane holds: a deadline (on ``time.monotonic()``) and what to do when it is due.

    The base of ``Timer`` (a callback) and ``_AsyncioTimer`` (a timeout scope).
    """

    __slots__ = ("_handle", "_lane", "deadline")

    deadline: float
    _lane: _Lane | None
    _handle: asyncio.TimerHandle | None

    def fire(self) -> None:
        raise NotImplementedError


@final
class _Lane:
    """Timers of one loop in non-decreasing deadline order, and the loop timer for the first."""

    __slots__ = ("armed", "handle", "tail", "timers")

    def __init__(self) -> None:
        self.timers: dict[_Scheduled, None] = {}
        self.tail = -math.inf  # the newest deadline inserted since the lane was last empty
        self.handle: asyncio.TimerHandle | None = None
        self.armed = math.inf  # when the handle fires

    def fire(self) -> None:
        self.handle = None
        self.armed = math.inf
        timers = self.timers
        now = _monotonic()
        due = []
        for timer in timers:
            if timer.deadline > now:
                break
            due.append(timer)
        for timer in due:
            del timers[timer]
            timer._lane = None
            timer.fire()
        if timers:
            self.arm(asyncio.get_running_loop(), next(iter(timers)).deadline)
        else:
            self.tail = -math.inf

    def arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.armed = deadline
        self.handle = _call_at(loop, deadline, self.fire)


_STDLIB_TIME = asyncio.BaseEventLoop.time


def _call_at(
    loop: asyncio.AbstractEventLoop, deadline: float, callback: Callable[[], object]
) -> asyncio.TimerHandle:
    # The timer runs in an empty context: a copy of the arming call's context would keep that
    # call's state (its Context, arguments, a request) alive for as long as the timer waits.
    if type(loop).time is _STDLIB_TIME:  # asyncio's loops: time() is time.monotonic()
        return loop.call_at(deadline, callback, context=_EMPTY_CONTEXT)
    # Other loops (uvloop) keep a millisecond clock cached at the start of each loop
    # iteration and round delays to the millisecond: measured from time.monotonic(), a timer
    # fires up to a millisecond (or an iteration) early, and the lane then re-arms again and
    # again until the deadline. Measured on the loop's own clock and rounded up to the next
    # millisecond, it fires once, never before the deadline.
    loop_now = loop.time()
    if abs(loop_now - _monotonic()) > 1.0:  # another time base: measure from ours
        loop_now = _monotonic()
    delay = math.ceil((deadline - loop_now) * 1000.0) / 1000.0
    return loop.call_later(delay, callback, context=_EMPTY_CONTEXT)


_EMPTY_CONTEXT = contextvars.Context()


# The running loop without asyncio.get_running_loop(), which makes a getpid() system call on
# every use in CPython 3.11. A loop records the thread running it; only one loop runs per
# thread, so the last loop seen, if it runs on this thread, is the running loop here.
# (Held weakly: a finished loop and everything on it, timer lanes included, can go.)
_last_loop: Callable[[], Any] = lambda: None  # noqa: E731 - a dead weak reference


def current_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio event loop, or ``None`` on trio (or outside any loop).

    The one loop lookup of the library: cached per thread, so it costs no system call.
    """
    global _last_loop  # noqa: PLW0603 - a one-entry cache, checked on every use
    loop = _last_loop()
    if loop is not None and loop._thread_id == _get_ident():
        return loop  # type: ignore[no-any-return]
    if _on_trio():
        return None
    running: asyncio.AbstractEventLoop | None = asyncio._get_running_loop()
    if running is not None and getattr(running, "_thread_id", None) is not None:
        _last_loop = weakref.ref(running)  # asyncio's loops (and subclasses) record their thread
    return running


def _loop_lanes(loop: asyncio.AbstractEventLoop) -> list[_Lane] | None:
    # A loop's lanes live on the loop object itself, so they go away with it.
    try:
        return loop._resilient_timer_lanes  # type: ignore[attr-defined,no-any-return]
    except AttributeError:
        pass
    lanes: list[_Lane] = []
    try:
        loop._resilient_timer_lanes = lanes  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # pragma: no cover - a loop without __dict__
        return None
    return lanes


def _schedule(loop: asyncio.AbstractEventLoop, timer: _Scheduled) -> None:
    deadline = timer.deadline
    lanes = _loop_lanes(loop)
    # Best fit: the lane whose newest deadline is the latest one not after ours, so that
    # timers of different lengths settle in lanes of their own.
    best = None
    for lane in lanes or ():
        if lane.tail <= deadline and (best is None or lane.tail > best.tail):
            best = lane
    if best is None:
        if lanes is None or len(lanes) >= _MAX_LANES:
            timer._lane = None
            timer._handle = _call_at(loop, deadline, timer.fire)
            return
        best = _Lane()
        lanes.append(best)
    timer._lane = best
    timer._handle = None
    best.tail = deadline
    best.timers[timer] = None
    if deadline < best.armed:  # an empty lane whose loop timer is set for a later deadline
        best.arm(loop, deadline)


def _unschedule(timer: _Scheduled) -> None:
    lane = timer._lane
    if lane is not None:
        timers = lane.timers
        del timers[timer]
        timer._lane = None
        if not timers:
            lane.tail = -math.inf
    elif timer._handle is not None:
        timer._handle.cancel()
        timer._handle = None


@final
class Timer(_Scheduled):
    """A callback armed at a deadline on the running event loop (see ``call_at``)."""

    __slots__ = ("_callback", "fired")

    def __init__(self, deadline: float, callback: Callable[[], object]) -> None:
        self.deadline = deadline
        self._callback = callback
        self._lane = self._handle = None
        self.fired = False

    def fire(self) -> None:
        """Run the callback now (the timer service calls it at the deadline)."""
        self.fired = True
        self._callback()

    def cancel(self) -> None:
        """Stop the timer; nothing happens if it fired already. Costs a dict delete."""
        if not self.fired:
            _unschedule(self)

    def __repr__(self) -> str:
        return f"Timer(deadline={self.deadline!r}, fired={self.fired})"


def call_at(deadline: float, callback: Callable[[], object]) -> Timer:
    """Run ``callback()`` on the running asyncio loop when ``time.monotonic()`` reaches
    ``deadline`` (the base of ``SystemClock().now()`` on asyncio).

    Timers share coalesced loop timers (lanes), so arming and cancelling cost a dict insert
    and delete; a timer never fires before its deadline (on uvloop too). The callback runs
    in an empty ``contextvars.Context`` and must not raise. ``deadline=math.inf`` arms
    nothing. For callers that run many short-lived deadlines (a server's requests).

    Raises:
        RuntimeError: no asyncio event loop runs in this thread (on trio, use anyio's cancel
            scopes: trio keeps its deadlines in one structure already).
    """
    loop = current_loop()
    if loop is None:
        raise RuntimeError("resilient.timers.call_at needs a running asyncio event loop")
    timer = Timer(deadline, callback)
    if deadline != math.inf:
        _schedule(loop, timer)
    return timer


@final
class _AsyncioTimer(_Scheduled):
    """``asyncio.timeout_at`` without its rescheduling machinery, on the coalesced timers.

    Same cancellation accounting as ``asyncio.Timeout``: it converts the cancellation it caused
    into ``TimeoutError`` only when no other cancellation is pending (``Task.uncancel``), so an
    outer cancellation is never swallowed. ``arm()`` and ``disarm()`` are the synchronous
    halves of ``__aenter__`` and ``__aexit__`` (``Timeout`` calls them directly: no coroutine
    per scope).
    """

    __slots__ = ("_cancelling", "_fired", "_task")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._fired = False
        self._lane = self._handle = None

    def arm(self) -> None:
        """Start timing (the task to cancel is the current one)."""
        loop = current_loop()
        task = asyncio.current_task(loop)
        if task is None:  # pragma: no cover - only reachable outside a task
            raise RuntimeError("a timeout needs to run inside an asyncio task")
        self._task = task
        self._cancelling = task.cancelling()
        if self.deadline != math.inf:  # an infinite deadline never fires: nothing to arm
            _schedule(loop, self)  # type: ignore[arg-type]  # a task implies a loop

    def fire(self) -> None:
        self._fired = True
        self._task.cancel()

    def disarm(self, exc_type: type[BaseException] | None) -> bool:
        """Stop timing; whether the body's ``exc_type`` is this timer's cancellation.

        When true the caller raises its timeout error in place of the cancellation.
        """
        if not self._fired:
            _unschedule(self)
            return False
        return self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError

    async def __aenter__(self) -> _AsyncioTimer:
        self.arm()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self.disarm(exc_type):
            raise TimeoutError from exc
        return None

    def expired(self) -> bool:
        return self._fired


@final
class SystemClock:
    """The default clock: real monotonic time, on asyncio and on trio.

    On asyncio it reads ``time.monotonic()`` and uses the loop's own primitives (``asyncio.sleep``
    and a lean equivalent of ``asyncio.timeout_at``, armed relative to now); on trio it reads
    ``trio.current_time()`` and waits through anyio, so trio's ``MockClock`` drives it. Nothing
    is captured at construction: one instance serves successive ``asyncio.run()`` calls and trio
    alike.
    """

    __slots__ = ()

    def now(self) -> float:
        # _on_trio() inlined: every policy reads the clock on every call.
        if _sniffio_local is not None and _sniffio_local.name == "trio":
            return sys.modules["trio"].current_time()  # type: ignore[no-any-return]
        return _monotonic()

    async def sleep(self, seconds: float) -> None:
        if _on_trio():
            await anyio.sleep(seconds if seconds > 0.0 else 0.0)
        else:
            await asyncio.sleep(seconds if seconds > 0.0 else 0.0)

    def timeout_at(self, deadline: float) -> TimerScope:
        if _on_trio():
            return _AnyioTimer(deadline)
        return _AsyncioTimer(deadline)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()

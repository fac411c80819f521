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

__all__ = ["Clock", "SystemClock", "TimerScope"]

_sniffio_local: Any
try:  # trio depends on sniffio and names itself in sniffio's thread-local while it runs
    from sniffio import thread_local as _sniffio_local
except ImportError:  # pragma: no cover - without sniffio there is no trio either
    _sniffio_local = None

_monotonic = time.monotonic
_get_ident = threading.get_ident


def _on_trio() -> bool:
    # About 0.1 us, against 0.24 us for asyncio._get_running_loop(), which makes a getpid()
    # system call on every use in CPython 3.11.
    return _sniffio_local is not None and _sniffio_local.name == "trio"


@runtime_checkable
class TimerScope(Protocol):
    """An async context manager that interrupts its body at a deadline.

    On expiry the body is cancelled and ``TimeoutError`` is raised from ``__aexit__``;
    ``expired()`` then tells this scope's own expiry apart from a ``TimeoutError`` raised by
    the body itself. An outer cancellation is never turned into ``TimeoutError``.
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


# Timer coalescing (asyncio). Arming a loop timer per scope (``loop.call_later`` plus
# ``handle.cancel()``) costs about 1.5 us on CPython 3.11: a TimerHandle, a context copy, a
# heap push, and cancelled handles left in the heap until the loop rebuilds it. Timeouts of one
# length entered one after another have non-decreasing deadlines, so scopes are kept in
# *lanes*: insertion-ordered dicts whose deadlines never decrease, each with one loop timer
# armed at its earliest live deadline. Entering a scope is a dict insert, leaving it a dict
# delete; the lane's timer fires at its head's deadline, cancels the expired scopes' tasks (as
# asyncio.timeout does) and re-arms for the new head. A scope that fits no lane (a deadline
# earlier than every lane's newest, with all lanes in use) gets a loop timer of its own.
_MAX_LANES = 8


@final
class _Lane:
    """Scopes of one loop in non-decreasing deadline order, and the timer for the earliest."""

    __slots__ = ("armed", "handle", "scopes", "tail")

    def __init__(self) -> None:
        self.scopes: dict[_AsyncioTimer, None] = {}
        self.tail = -math.inf  # the newest deadline inserted since the lane was last empty
        self.handle: asyncio.TimerHandle | None = None
        self.armed = math.inf  # when the handle fires

    def fire(self) -> None:
        self.handle = None
        self.armed = math.inf
        scopes = self.scopes
        now = _monotonic()
        expired = []
        for scope in scopes:
            if scope._deadline > now:
                break
            expired.append(scope)
        for scope in expired:
            del scopes[scope]
            scope._fire()
        if scopes:
            self.arm(asyncio.get_running_loop(), next(iter(scopes))._deadline)
        else:
            self.tail = -math.inf

    def arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.armed = deadline
        self.handle = _call_at(loop, deadline, self.fire)


def _call_at(
    loop: asyncio.AbstractEventLoop, deadline: float, callback: Callable[[], object]
) -> asyncio.TimerHandle:
    # Deadlines are on time.monotonic(); arming relative to it is exact whatever time base the
    # loop uses (uvloop's loop.time() is a cached millisecond clock). The timer runs in an
    # empty context: a copy of the arming call's context would keep that call's state (its
    # Context, arguments, a request) alive for as long as the timer waits.
    return loop.call_later(deadline - _monotonic(), callback, context=contextvars.Context())


# The running loop without asyncio.get_running_loop(), which makes a getpid() system call on
# every use in CPython 3.11 (about 0.25 us here, more on a VM where a system call is costly).
# A loop records the thread running it; only one loop runs per thread, so the last loop seen,
# if it runs on this thread, is the running loop here.
# (Held weakly: a finished loop and everything on it, timer lanes included, can go.)
_last_loop: Callable[[], Any] = lambda: None  # noqa: E731 - a dead weak reference


def _running_loop() -> asyncio.AbstractEventLoop:
    global _last_loop  # noqa: PLW0603 - a one-entry cache, checked on every use
    loop = _last_loop()
    if loop is not None and loop._thread_id == _get_ident():
        return loop  # type: ignore[no-any-return]
    loop = asyncio.get_running_loop()
    if getattr(loop, "_thread_id", None) is not None:  # asyncio's loops (and subclasses)
        _last_loop = weakref.ref(loop)
    return loop


def _loop_lanes(loop: asyncio.AbstractEventLoop) -> list[_Lane] | None:
    # A loop's lanes live on the loop object itself, so they go away with it.
    lanes: list[_Lane] = []
    try:
        loop._resilient_timer_lanes = lanes  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # pragma: no cover - a loop without __dict__
        return None
    return lanes


@final
class _AsyncioTimer:
    """``asyncio.timeout_at`` without its rescheduling machinery, on coalesced loop timers.

    Same cancellation accounting as ``asyncio.Timeout``: it converts the cancellation it caused
    into ``TimeoutError`` only when no other cancellation is pending (``Task.uncancel``), so an
    outer cancellation is never swallowed. ``arm()`` and ``disarm()`` are the synchronous
    halves of ``__aenter__`` and ``__aexit__`` (``Timeout`` calls them directly: no coroutine
    per scope).
    """

    __slots__ = ("_cancelling", "_deadline", "_fired", "_handle", "_lane", "_task")

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline
        self._fired = False

    def arm(self) -> None:
        """Start timing (the task to cancel is the current one)."""
        # The running loop (without a system call), then the task of that loop.
        loop = _running_loop()
        task = asyncio.current_task(loop)
        if task is None:  # pragma: no cover - only reachable outside a task
            raise RuntimeError("a timeout needs to run inside an asyncio task")
        self._task = task
        self._cancelling = task.cancelling()
        deadline = self._deadline
        if deadline == math.inf:  # never fires: nothing to arm
            self._lane = self._handle = None
            return
        try:
            lanes = loop._resilient_timer_lanes  # type: ignore[attr-defined]
        except AttributeError:
            lanes = _loop_lanes(loop)
        # Best fit: the lane whose newest deadline is the latest one not after ours, so that
        # timeouts of different lengths settle in lanes of their own.
        best = None
        for lane in lanes or ():
            if lane.tail <= deadline and (best is None or lane.tail > best.tail):
                best = lane
        if best is None:
            if lanes is None or len(lanes) >= _MAX_LANES:
                self._lane = None
                self._handle = _call_at(loop, deadline, self._fire)
                return
            best = _Lane()
            lanes.append(best)
        self._lane = best
        best.tail = deadline
        best.scopes[self] = None
        if deadline < best.armed:  # an empty lane whose timer is set for a later deadline
            best.arm(loop, deadline)

    def _fire(self) -> None:
        self._fired = True
        self._task.cancel()

    def disarm(self, exc_type: type[BaseException] | None) -> bool:
        """Stop timing; whether the body's ``exc_type`` is this timer's cancellation.

        When true the caller raises its timeout error in place of the cancellation.
        """
        if not self._fired:
            lane = self._lane
            if lane is None:
                if self._handle is not None:
                    self._handle.cancel()
            else:
                scopes = lane.scopes
                del scopes[self]
                if not scopes:
                    lane.tail = -math.inf
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

"""Injected time: the ``Clock`` protocol and the default clock.

Every policy reads time and waits through the clock of the call's context, never through
``time`` or ``asyncio`` directly. That makes every policy deterministic under
``resilient.testing.FakeClock`` and under trio's ``MockClock``.
"""

from __future__ import annotations

import asyncio
import sys
import time
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


@final
class _AsyncioTimer:
    """``asyncio.timeout_at`` without its rescheduling machinery (about 1 us cheaper).

    Same cancellation accounting as ``asyncio.Timeout``: it converts the cancellation it caused
    into ``TimeoutError`` only when no other cancellation is pending (``Task.uncancel``), so an
    outer cancellation is never swallowed.
    """

    __slots__ = ("_cancelling", "_deadline", "_fired", "_handle", "_task")

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline
        self._fired = False

    async def __aenter__(self) -> _AsyncioTimer:
        # One running-loop lookup (it costs a getpid() system call on CPython 3.11), then the
        # task of that loop without a second lookup.
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:  # pragma: no cover - only reachable outside a task
            raise RuntimeError("a timeout needs to run inside an asyncio task")
        self._task = task
        self._cancelling = task.cancelling()
        # Deadlines are on time.monotonic(); arming relative to it is exact whatever time base
        # the loop uses (uvloop's loop.time() is a cached millisecond clock).
        self._handle = loop.call_later(self._deadline - _monotonic(), self._fire)
        return self

    def _fire(self) -> None:
        self._fired = True
        self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._handle.cancel()
        if (
            self._fired
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
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

"""Test helpers: virtual time and event recording.

``FakeClock`` makes every policy deterministic: sleeps return at once and are recorded,
virtual time moves only when something sleeps or the test calls ``advance()``, and timeouts
fire exactly when virtual time reaches their deadline::

    clock = FakeClock()
    pipeline = Pipeline(Retry(attempts=3, jitter="none"), clock=clock)
    ...  # a call failing twice with a ConnectionError, then succeeding
    assert clock.sleeps == [0.1, 0.2]

On trio, ``trio.testing.MockClock(autojump_threshold=0)`` with the default clock works too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import TracebackType
from typing import TypeVar, final

import anyio
import anyio.lowlevel

from ._events import Event

__all__ = ["EventRecorder", "FakeClock"]

E = TypeVar("E", bound=Event)


@final
class _FakeTimer:
    __slots__ = ("_clock", "_fired", "_scope", "_task", "deadline")

    def __init__(self, clock: FakeClock, deadline: float) -> None:
        self._clock = clock
        self.deadline = deadline
        self._fired = False
        self._scope = anyio.CancelScope()
        self._task = 0

    def _fire(self) -> None:
        self._fired = True
        self._scope.cancel()

    async def __aenter__(self) -> _FakeTimer:
        self._scope.__enter__()
        self._task = anyio.get_current_task().id
        if self.deadline <= self._clock.now():
            self._fire()
        else:
            self._clock._timers.append(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self in self._clock._timers:
            self._clock._timers.remove(self)
        swallowed = self._scope.__exit__(exc_type, exc, tb)
        if swallowed and self._fired and self._scope.cancelled_caught:
            raise TimeoutError
        return None

    def expired(self) -> bool:
        return self._fired and self._scope.cancelled_caught


@final
class FakeClock:
    """A virtual clock: instant, recorded sleeps and exact timeouts.

    - ``now()`` returns virtual time, starting at ``start``.
    - ``await sleep(d)`` records ``d`` in ``sleeps``, moves virtual time forward by ``d`` (or
      only up to the deadline of a timeout enclosing the sleeping task, which then fires) and
      yields once to the event loop.
    - ``advance(d)`` moves virtual time from test code and fires every timeout it passes; the
      cancelled tasks notice at their next checkpoint.

    Virtual time is shared: concurrent sleepers advance it one after another. A sleep is cut
    short only by a timeout entered in the same task (a child task's sleep runs to its end and
    the parent's timeout then fires). Use trio's ``MockClock`` when a test needs overlapping
    sleeps or timeouts around task groups.

    Args:
        start: the initial virtual time.
    """

    __slots__ = ("_now", "_timers", "sleeps")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self.sleeps: list[float] = []
        self._timers: list[_FakeTimer] = []

    def now(self) -> float:
        """The current virtual time."""
        return self._now

    @property
    def slept(self) -> float:
        """Total of all recorded sleeps."""
        return math.fsum(self.sleeps)

    def advance(self, seconds: float) -> None:
        """Move virtual time forward by ``seconds`` and fire the timeouts it passes."""
        if not seconds >= 0:
            raise ValueError(f"FakeClock.advance(seconds={seconds!r}): must be >= 0")
        self._move_to(self._now + seconds)

    def _move_to(self, target: float) -> None:
        self._now = max(self._now, target)
        for timer in sorted(self._timers, key=lambda t: t.deadline):
            if timer.deadline <= self._now:
                self._timers.remove(timer)
                timer._fire()

    async def sleep(self, seconds: float) -> None:
        """Record ``seconds`` and advance virtual time (see the class docstring)."""
        seconds = max(0.0, float(seconds))
        self.sleeps.append(seconds)
        target = self._now + seconds
        task = anyio.get_current_task().id
        enclosing = [t.deadline for t in self._timers if t._task == task and t.deadline < target]
        self._move_to(min(enclosing, default=target))
        await anyio.lowlevel.checkpoint()

    def timeout_at(self, deadline: float) -> _FakeTimer:
        """A timer scope that fires when virtual time reaches ``deadline``."""
        return _FakeTimer(self, deadline)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now:g}, sleeps={len(self.sleeps)})"


@final
class EventRecorder:
    """A listener that keeps every event, for assertions::

    events = EventRecorder()
    pipeline = Pipeline(..., listeners=[events])
    assert [e.delay for e in events.of_type(RetryScheduled)] == [...]
    """

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of_type(self, kind: type[E]) -> list[E]:
        """The recorded events of one type, in order."""
        return [e for e in self.events if isinstance(e, kind)]

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def clear(self) -> None:
        """Forget everything recorded so far."""
        self.events.clear()

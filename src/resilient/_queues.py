"""Queue disciplines for callers waiting for a bulkhead slot: FIFO, CoDel, adaptive LIFO.

A discipline decides which waiter a freed slot goes to, and which waiters are shed because
they queued too long. It never sleeps and never reads a clock of its own: the bulkhead passes
the clock its waiters use. One discipline object describes the policy (it holds options only);
``new_queue()`` makes the state for one partition.

CoDel and adaptive LIFO follow Facebook's "Fail at Scale" (ACM Queue, 2015): when the queue
has not been empty for ``interval``, a waiter that queued longer than ``target`` is shed at the
next hand-off (its caller has probably given up, and serving it only delays fresher work); a
waiter never queues longer than ``interval``. Adaptive LIFO serves the newest waiter first while
the queue is in that standing state, and in arrival order otherwise.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final, Protocol, final

import anyio

from . import _validate as check
from ._clock import Clock
from ._exceptions import ConfigurationError

__all__ = ["FIFO", "AdaptiveLIFO", "CoDel", "QueueDiscipline", "WaitQueue", "queue_discipline"]


@final
class Waiter:
    """One caller waiting for a slot: woken with ``granted`` (a slot) or ``dropped`` (shed)."""

    __slots__ = ("at", "dropped", "event", "granted")

    def __init__(self, at: float = 0.0) -> None:
        self.event = anyio.Event()
        self.granted = False
        self.dropped = False
        self.at = at


class WaitQueue(Protocol):
    """The waiting callers of one partition (made by ``QueueDiscipline.new_queue``)."""

    def __len__(self) -> int: ...

    def push(self, waiter: Waiter, clock: Clock) -> None:
        """Queue ``waiter`` (its ``at`` is set by the caller from ``clock``)."""
        ...

    def take(self) -> Waiter | None:
        """The waiter to hand the next slot to (removed), shedding stale ones; or ``None``."""
        ...

    def remove(self, waiter: Waiter) -> None:
        """Forget a waiter that left (timed out or cancelled) without a slot."""
        ...


class QueueDiscipline(Protocol):
    """Options of a discipline; ``new_queue()`` makes one partition's queue."""

    @property
    def name(self) -> str:
        """``"fifo"``, ``"codel"``, ``"lifo"`` or your discipline's name."""
        ...

    @property
    def max_queue_time(self) -> float:
        """Seconds a waiter may queue at most, whatever ``max_wait`` allows (``inf``: none)."""
        ...

    def new_queue(self) -> WaitQueue: ...


@final
class _FifoQueue:
    __slots__ = ("_q",)

    def __init__(self) -> None:
        self._q: deque[Waiter] = deque()

    def __len__(self) -> int:
        return len(self._q)

    def push(self, waiter: Waiter, clock: Clock) -> None:
        self._q.append(waiter)

    def take(self) -> Waiter | None:
        q = self._q
        return q.popleft() if q else None

    def remove(self, waiter: Waiter) -> None:
        self._q.remove(waiter)


@final
class FIFO:
    """First come, first served; nobody is shed for queueing long (``max_wait`` bounds it).

    The default: fair, predictable, and with the bulkhead's small waiting room and one-second
    ``max_wait`` already bounded.
    """

    __slots__ = ()
    name: Final = "fifo"
    max_queue_time: Final = math.inf

    def new_queue(self) -> WaitQueue:
        """A new, empty queue."""
        return _FifoQueue()

    def __repr__(self) -> str:
        return "FIFO()"


@final
class _CoDelQueue:
    """FIFO or adaptive LIFO with CoDel shedding (``lifo`` selects the order under load)."""

    __slots__ = ("_clock", "_interval", "_lifo", "_nonempty_since", "_q", "_target")

    def __init__(self, target: float, interval: float, lifo: bool) -> None:
        self._q: deque[Waiter] = deque()
        self._target = target
        self._interval = interval
        self._lifo = lifo
        self._clock: Clock | None = None
        self._nonempty_since = 0.0

    def __len__(self) -> int:
        return len(self._q)

    def push(self, waiter: Waiter, clock: Clock) -> None:
        q = self._q
        if not q:
            self._nonempty_since = waiter.at
        self._clock = clock
        q.append(waiter)

    def take(self) -> Waiter | None:
        q = self._q
        if not q:
            return None
        clock = self._clock
        assert clock is not None
        now = clock.now()
        if now - self._nonempty_since > self._interval:
            # A standing queue: shed every waiter older than the target (oldest first: they
            # are at the left in arrival order), then serve the newest when LIFO.
            stale = now - self._target
            while q and q[0].at < stale:
                shed = q.popleft()
                shed.dropped = True
                shed.event.set()
            if not q:
                self._nonempty_since = now
                return None
            waiter = q.pop() if self._lifo else q.popleft()
        else:
            waiter = q.popleft()
        if not q:
            self._nonempty_since = now
        return waiter

    def remove(self, waiter: Waiter) -> None:
        self._q.remove(waiter)


@final
class CoDel:
    """Shed waiters that queued past ``target`` once the queue stood for ``interval``.

    Served in arrival order. While the queue keeps emptying (a burst being absorbed) waiters
    may queue up to ``interval``; once it has not been empty for ``interval`` (a standing
    queue: the service cannot keep up) each hand-off first sheds every waiter older than
    ``target`` with ``BulkheadFullError``. No waiter queues longer than ``interval``.

    Args:
        target: seconds of queueing accepted in a standing queue (Facebook: 5 ms).
        interval: seconds the queue may stay non-empty before it counts as standing, and the
            longest any waiter queues (Facebook: 100 ms).

    Raises:
        ConfigurationError: an option is out of range.
    """

    __slots__ = ("interval", "target")
    name: Final = "codel"

    def __init__(self, *, target: float = 0.005, interval: float = 0.1) -> None:
        self.target = check.positive("CoDel.target", target)
        self.interval = check.positive("CoDel.interval", interval)
        if self.interval < self.target:
            raise ConfigurationError("CoDel.interval", interval, f"must be >= target ({target:g})")

    @property
    def max_queue_time(self) -> float:
        """No waiter queues longer than ``interval``."""
        return self.interval

    def new_queue(self) -> WaitQueue:
        """A new, empty queue."""
        return _CoDelQueue(self.target, self.interval, lifo=False)

    def __repr__(self) -> str:
        return f"CoDel(target={self.target:g}, interval={self.interval:g})"


@final
class AdaptiveLIFO:
    """CoDel, serving the newest waiter first while the queue is standing.

    In arrival order while the queue keeps emptying; once it has not been empty for
    ``interval``, the freshest waiter (whose caller most likely still waits) goes first, and
    waiters older than ``target`` are shed as with ``CoDel``.

    Args:
        target: as for ``CoDel`` (5 ms).
        interval: as for ``CoDel`` (100 ms).

    Raises:
        ConfigurationError: an option is out of range.
    """

    __slots__ = ("interval", "target")
    name: Final = "lifo"

    def __init__(self, *, target: float = 0.005, interval: float = 0.1) -> None:
        self.target = check.positive("AdaptiveLIFO.target", target)
        self.interval = check.positive("AdaptiveLIFO.interval", interval)
        if self.interval < self.target:
            raise ConfigurationError(
                "AdaptiveLIFO.interval", interval, f"must be >= target ({target:g})"
            )

    @property
    def max_queue_time(self) -> float:
        """No waiter queues longer than ``interval``."""
        return self.interval

    def new_queue(self) -> WaitQueue:
        """A new, empty queue."""
        return _CoDelQueue(self.target, self.interval, lifo=True)

    def __repr__(self) -> str:
        return f"AdaptiveLIFO(target={self.target:g}, interval={self.interval:g})"


_BY_NAME: Final = {"fifo": FIFO, "codel": CoDel, "lifo": AdaptiveLIFO}


def queue_discipline(parameter: str, value: object) -> QueueDiscipline:
    """``"fifo"``, ``"codel"``, ``"lifo"`` or a discipline object, as a discipline.

    Raises:
        ConfigurationError: anything else (naming ``parameter``).
    """
    if isinstance(value, str):
        kind = _BY_NAME.get(value)
        if kind is None:
            raise ConfigurationError(parameter, value, f"expected one of {tuple(_BY_NAME)}")
        return kind()  # type: ignore[no-any-return]
    if callable(getattr(value, "new_queue", None)) and isinstance(
        getattr(value, "max_queue_time", None), int | float
    ):
        return value  # type: ignore[return-value]
    raise ConfigurationError(
        parameter, value, f"expected one of {tuple(_BY_NAME)} or a queue discipline object"
    )

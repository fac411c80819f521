"""``Bulkhead``: bound how many calls run at once, with a small, fair waiting room.

The uncontended path is a plain counter: no lock, no yield, no allocation. Only when every
slot is taken does a caller get a waiter (an event in a FIFO queue, created lazily). A
released slot is handed directly to the first waiter, so a newcomer can never overtake the
queue, and a waiter that is cancelled after it was handed a slot passes the slot on: no slot
is ever lost or counted twice, whatever is cancelled when.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, final

import anyio

from . import _validate as check
from ._clock import SYSTEM_CLOCK, Clock
from ._context import Context
from ._events import WaitEnded, report_rejection
from ._exceptions import BulkheadFullError, ConfigurationError
from ._keyed import BoundedKeyMap
from ._pipeline import Call, PolicyDecorator

__all__ = ["Bulkhead", "BulkheadSnapshot"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadSnapshot:
    """A point-in-time view of a bulkhead (one partition for keyed bulkheads).

    Attributes:
        running: calls holding a slot.
        waiting: calls queued for a slot.
        max_concurrent: the configured number of slots.
        max_waiting: the configured size of the waiting room.
        keys: partitions currently tracked (0 for an unkeyed bulkhead).
    """

    running: int
    waiting: int
    max_concurrent: int
    max_waiting: int
    keys: int = 0


@final
class _Waiter:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


@final
class _Slots:
    """One partition: a counter and a FIFO of waiters created on first contention.

    Invariant: ``waiters`` is non-empty only while ``running == max_concurrent`` (a released
    slot goes to the first waiter instead of back to the counter).
    """

    __slots__ = ("running", "waiters")

    def __init__(self, _key: str = "") -> None:
        self.running = 0
        self.waiters: deque[_Waiter] | None = None


def _release(slots: _Slots) -> None:
    """Give a slot back: straight to the first waiter if any, else to the counter."""
    waiters = slots.waiters
    if waiters:
        waiter = waiters.popleft()
        waiter.granted = True
        waiter.event.set()
    else:
        slots.running -= 1


def _idle(slots: _Slots) -> bool:
    return slots.running == 0 and not slots.waiters


@final
class Bulkhead(PolicyDecorator):
    """Run at most ``max_concurrent`` calls at once; let a few more wait, briefly, in order.

    Calls beyond ``max_concurrent`` wait in FIFO order, at most ``max_waiting`` of them, each
    for at most ``max_wait`` seconds and never past the call's deadline. Anything beyond fails
    at once with ``BulkheadFullError``. A wait cut short by the call's deadline raises the
    deadline's ``TimeoutExceeded`` instead (``ctx.deadline_exceeded()``).

    The same instance may be shared by many pipelines and tasks, created at import time and
    used from successive ``asyncio.run()`` calls and from trio: it captures no event loop.
    Outside a pipeline it is an async context manager (``async with bulkhead: ...``).

    Args:
        max_concurrent: calls allowed to run at once (>= 1).
        max_waiting: calls allowed to wait for a slot (>= 0; 0 rejects at once when full).
        max_wait: seconds a call may wait for a slot (>= 0, ``math.inf`` allowed; 0 never
            waits).
        per_key: keep one set of slots per ``ctx.key`` (for example per host); calls without
            a key share one partition.
        max_keys: the most partitions kept when ``per_key`` (least recently used evicted).
        idle_ttl: seconds after which an idle partition may be dropped when ``per_key``.
        retry_after: the ``retry_after`` hint put on ``BulkheadFullError`` (seconds); by
            default ``max_wait`` when it is positive and finite, else ``None``.
        clock: clock for waits when used outside a pipeline (default: the event loop's);
            inside a pipeline the pipeline's clock is used.
        name: the policy's name in events, errors and telemetry.

    Raises:
        ConfigurationError: an option is out of range or of the wrong type.
    """

    __slots__ = (
        "_clock",
        "_keys",
        "_max",
        "_max_wait",
        "_max_waiting",
        "_retry_after",
        "_slots",
        "name",
    )

    deadline_aware: ClassVar[bool] = True

    def __init__(
        self,
        *,
        max_concurrent: int = 32,
        max_waiting: int = 64,
        max_wait: float = 1.0,
        per_key: bool = False,
        max_keys: int = 10_000,
        idle_ttl: float = 60.0,
        retry_after: float | None = None,
        clock: Clock | None = None,
        name: str = "bulkhead",
    ) -> None:
        self.name = check.name("Bulkhead.name", name)
        self._max = check.integer("Bulkhead.max_concurrent", max_concurrent, minimum=1)
        self._max_waiting = check.integer("Bulkhead.max_waiting", max_waiting, minimum=0)
        self._max_wait = check.non_negative("Bulkhead.max_wait", max_wait, allow_inf=True)
        if not isinstance(per_key, bool):
            raise ConfigurationError("Bulkhead.per_key", per_key, "expected True or False")
        hint = check.optional(check.non_negative, "Bulkhead.retry_after", retry_after)
        if hint is None and 0.0 < self._max_wait < math.inf:
            hint = self._max_wait
        self._retry_after = hint
        if clock is not None and not callable(getattr(clock, "timeout_at", None)):
            raise ConfigurationError("Bulkhead.clock", clock, "expected a Clock")
        self._clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self._slots = _Slots()
        self._keys: BoundedKeyMap[_Slots] | None = None
        if per_key:
            self._keys = BoundedKeyMap(
                _Slots,
                max_keys=max_keys,
                idle_ttl=idle_ttl,
                evictable=_idle,
                parameter="Bulkhead.max_keys",
            )
        else:
            check.integer("Bulkhead.max_keys", max_keys, minimum=1)
            check.positive("Bulkhead.idle_ttl", idle_ttl)

    @property
    def max_concurrent(self) -> int:
        """Calls allowed to run at once."""
        return self._max

    @property
    def max_waiting(self) -> int:
        """Calls allowed to wait for a slot."""
        return self._max_waiting

    @property
    def max_wait(self) -> float:
        """Seconds a call may wait for a slot."""
        return self._max_wait

    @property
    def per_key(self) -> bool:
        """Whether slots are kept per ``ctx.key``."""
        return self._keys is not None

    def snapshot(self, key: str | None = None) -> BulkheadSnapshot:
        """Running and waiting calls now, for ``key``'s partition when keyed.

        ``key=None`` is the unkeyed bulkhead (or the partition of calls without a key).
        """
        keys = self._keys
        slots = self._slots if key is None or keys is None else keys.peek(key)
        running = waiting = 0
        if slots is not None:
            running = slots.running
            waiting = len(slots.waiters) if slots.waiters else 0
        return BulkheadSnapshot(
            running=running,
            waiting=waiting,
            max_concurrent=self._max,
            max_waiting=self._max_waiting,
            keys=0 if keys is None else len(keys),
        )

    # -- pipeline path ---------------------------------------------------------------------

    async def execute(self, call: Call, ctx: Context, /) -> Any:
        """Run ``call`` holding a slot; wait for one or refuse as configured.

        Raises:
            BulkheadFullError: no slot, and the waiting room is full or the wait ran out.
            TimeoutExceeded: the call's deadline ended the wait.
        """
        keys = self._keys
        key = ctx.key
        slots = self._slots if keys is None or key is None else keys.get(key, ctx.clock.now())
        if slots.running < self._max:  # try_acquire(), for a partition already looked up
            slots.running += 1
        else:
            await self._wait(slots, ctx)
        try:
            return await call(ctx)
        finally:
            _release(slots)

    # -- admission for integrations and direct use ----------------------------------------

    def _partition(self, key: str | None) -> _Slots:
        keys = self._keys
        if keys is None or key is None:
            return self._slots
        return keys.get(key, self._clock.now())

    def try_acquire(self, key: str | None = None) -> bool:
        """Take a slot now if one is free; never waits, never raises a refusal.

        Callers already waiting keep their turn: while any wait, every slot is taken, so this
        returns ``False``. A ``True`` must be paired with exactly one ``release(key)``.

        Args:
            key: the partition when ``per_key`` (``None``: the shared partition).
        """
        slots = self._partition(key)
        if slots.running < self._max:
            slots.running += 1
            return True
        return False

    async def acquire(self, key: str | None = None) -> None:
        """Take a slot, waiting in FIFO order as configured; pair with ``release(key)``.

        Never yields while a slot is free. The wait is bounded by ``max_wait`` and by the
        deadline of an enclosing resilient call (``resilient.remaining()``).

        Raises:
            BulkheadFullError: no slot, and the waiting room is full or the wait ran out.
            TimeoutExceeded: an enclosing resilient deadline ended the wait.
        """
        slots = self._partition(key)
        if slots.running < self._max:
            slots.running += 1
            return
        await self._wait(slots, self._direct_context(key))

    def release(self, key: str | None = None) -> None:
        """Give back a slot taken by ``try_acquire(key)`` or ``acquire(key)``.

        The slot goes straight to the first waiter, if any, so nobody can overtake the queue.

        Raises:
            RuntimeError: no slot of this partition is held.
        """
        keys = self._keys
        slots = self._slots if keys is None or key is None else keys.peek(key)
        if slots is None or (slots.running <= 0 and not slots.waiters):
            raise RuntimeError(f"bulkhead {self.name!r}: release() without a held slot")
        _release(slots)

    async def __aenter__(self) -> None:
        """Take a slot (waiting as configured) for the body of ``async with bulkhead:``.

        Raises:
            BulkheadFullError: no slot, and the waiting room is full or the wait ran out.
            TimeoutExceeded: an enclosing resilient deadline ended the wait.
        """
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _release(self._slots)

    def _direct_context(self, key: str | None = None) -> Context:
        # Only on the contended path: gives direct use the deadline of an enclosing pipeline
        # call (when it runs on the same clock) and the same rejection code as a pipeline.
        return Context.detached(self.name, self._clock, key)

    # -- contended path --------------------------------------------------------------------

    async def _wait(self, slots: _Slots, ctx: Context) -> None:
        """Return holding a slot, or raise; on any exit without a slot, hold nothing."""
        waiters = slots.waiters
        if waiters is None:
            waiters = slots.waiters = deque()
        if self._max_wait <= 0.0 or len(waiters) >= self._max_waiting:
            raise self._refuse(ctx, "full", None)
        clock = ctx.clock
        start = clock.now()
        deadline = ctx.deadline
        limit = start + self._max_wait
        by_deadline = deadline < limit
        until = deadline if by_deadline else limit
        if until <= start:
            raise self._refuse(ctx, "deadline", None)
        waiter = _Waiter()
        waiters.append(waiter)
        admitted = False
        try:
            if until == math.inf:
                await waiter.event.wait()
            else:
                async with clock.timeout_at(until):
                    await waiter.event.wait()
            admitted = True
        except TimeoutError:
            pass  # our timer: the wait ran out (handled below, after the cleanup)
        finally:
            if not admitted:
                if waiter.granted:
                    # Handed a slot at the very moment the wait ended (cancelled or timed
                    # out): pass it on so it is neither lost nor held by a caller who left.
                    _release(slots)
                else:
                    waiters.remove(waiter)
        waited = clock.now() - start
        if not admitted:
            raise self._refuse(ctx, "deadline" if by_deadline else "wait_timeout", waited)
        if ctx.listening:
            ctx.emit(
                WaitEnded(
                    pipeline=ctx.pipeline,
                    operation=ctx.operation,
                    policy=self.name,
                    at=clock.now(),
                    waited=waited,
                    admitted=True,
                )
            )

    def _refuse(self, ctx: Context, reason: str, waited: float | None) -> Exception:
        exc: Exception
        if reason == "deadline":
            exc = ctx.deadline_exceeded()
            hint = None
        else:
            hint = self._retry_after
            if reason == "full":
                message = (
                    f"bulkhead {self.name!r} is full: {self._max} running, "
                    f"{self._max_waiting} waiting at most"
                )
                if self._max_waiting and self._max_wait <= 0.0:
                    message += " (max_wait=0: callers never wait)"
            else:
                message = f"bulkhead {self.name!r}: no slot freed within {self._max_wait:g}s"
            exc = BulkheadFullError(message, policy=self.name, retry_after=hint)
        if ctx.listening:
            report_rejection(ctx, self.name, exc, reason=reason, retry_after=hint, waited=waited)
        return exc

    def __repr__(self) -> str:
        return (
            f"Bulkhead(max_concurrent={self._max}, max_waiting={self._max_waiting}, "
            f"max_wait={self._max_wait:g}, name={self.name!r})"
        )

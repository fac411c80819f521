"""``Bulkhead``: bound how many calls run at once, with a small, fair waiting room.

The uncontended path is a plain counter: no lock, no yield, no allocation. Only when every
slot is taken does a caller get a waiter (an event in a FIFO queue, created lazily). A
released slot is handed directly to the first waiter, so a newcomer can never overtake the
queue, and a waiter that is cancelled after it was handed a slot passes the slot on: no slot
is ever lost or counted twice, whatever is cancelled when.

``max_concurrent`` may be an ``AdaptiveLimit``: admission then compares with the limit it
learned, and every completed call reports its latency (and whether it was dropped) to it. The
waiting room's order and shedding are a queue discipline (``queue=``): FIFO by default, CoDel
or adaptive LIFO (see ``_queues``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from time import monotonic as _monotonic
from types import TracebackType
from typing import Any, ClassVar, Final, final

from . import _validate as check
from ._clock import SYSTEM_CLOCK, Clock
from ._context import Context
from ._events import report_rejection, report_wait_ended
from ._exceptions import BulkheadFullError, ConfigurationError, RejectedError
from ._keyed import BoundedKeyMap
from ._limits import AdaptiveLimit
from ._pipeline import Call, PolicyDecorator
from ._queues import FIFO, QueueDiscipline, Waiter, WaitQueue, queue_discipline

__all__ = ["Bulkhead", "BulkheadSnapshot"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadSnapshot:
    """A point-in-time view of a bulkhead (one partition for keyed bulkheads).

    Attributes:
        running: calls holding a slot.
        waiting: calls queued for a slot.
        max_concurrent: the number of slots now (an adaptive limit's current value).
        max_waiting: the configured size of the waiting room.
        keys: partitions currently tracked (0 for an unkeyed bulkhead).
    """

    running: int
    waiting: int
    max_concurrent: int
    max_waiting: int
    keys: int = 0


_FIFO: Final = FIFO()


@final
class _Slots:
    """One partition: a counter, its limit, and a queue of waiters made on first contention.

    Invariant: ``waiters`` is non-empty only while ``running >= limit`` (a released slot goes
    to the next waiter instead of back to the counter). ``limit`` is fixed, or follows an
    adaptive limit (it may then drop below ``running``: releases shrink ``running`` first).
    """

    __slots__ = ("discipline", "limit", "running", "waiters")

    def __init__(self, _key: str = "", limit: int = 0, discipline: QueueDiscipline = _FIFO) -> None:
        self.running = 0
        self.limit = limit
        self.discipline = discipline
        self.waiters: WaitQueue | None = None


def _release(slots: _Slots) -> None:
    """Give a slot back: straight to the next waiter if any, else to the counter."""
    waiters = slots.waiters
    if waiters and slots.running <= slots.limit:
        waiter = waiters.take()
        if waiter is not None:
            waiter.granted = True
            waiter.event.set()
            return
    slots.running -= 1


def _why(waiter: Waiter, by_discipline: bool, by_deadline: bool) -> str:
    """The refusal reason of a wait that ended without a slot."""
    if waiter.dropped or (by_discipline and not by_deadline):
        return "queue_shed"
    return "deadline" if by_deadline else "wait_timeout"


def _admit_waiters(slots: _Slots) -> None:
    """After the limit grew: hand the new slots to waiters."""
    waiters = slots.waiters
    while waiters and slots.running < slots.limit:
        waiter = waiters.take()
        if waiter is None:
            return
        slots.running += 1
        waiter.granted = True
        waiter.event.set()


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

    ``max_concurrent`` may be an ``AdaptiveLimit``: the number of slots then follows the
    latency of the calls (see docs/overload.md). Calls that complete report their latency to
    it; a call that raised a timeout or a refusal (``TimeoutError``, ``RejectedError``)
    reports a drop; other errors and cancellations report nothing.

    Args:
        max_concurrent: calls allowed to run at once (>= 1), or an ``AdaptiveLimit`` (not with
            ``per_key``; one bulkhead per ``AdaptiveLimit`` instance).
        max_waiting: calls allowed to wait for a slot (>= 0; 0 rejects at once when full).
        max_wait: seconds a call may wait for a slot (>= 0, ``math.inf`` allowed; 0 never
            waits).
        queue: the waiting room's discipline: ``"fifo"`` (default: arrival order, no
            shedding), ``"codel"`` (shed waiters queued past 5 ms once the queue stood for
            100 ms; nobody queues past 100 ms), ``"lifo"`` (CoDel, serving the newest first
            while the queue stands), or a ``resilient.overload`` discipline object
            (``CoDel(target=..., interval=...)``, ``AdaptiveLIFO(...)``).
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
        "_adaptive",
        "_clock",
        "_discipline",
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
        max_concurrent: int | AdaptiveLimit = 32,
        max_waiting: int = 64,
        max_wait: float = 1.0,
        queue: str | QueueDiscipline = "fifo",
        per_key: bool = False,
        max_keys: int = 10_000,
        idle_ttl: float = 60.0,
        retry_after: float | None = None,
        clock: Clock | None = None,
        name: str = "bulkhead",
    ) -> None:
        self.name = check.name("Bulkhead.name", name)
        adaptive: AdaptiveLimit | None = None
        if isinstance(max_concurrent, AdaptiveLimit):
            adaptive = max_concurrent
            if per_key:
                raise ConfigurationError(
                    "Bulkhead.max_concurrent",
                    max_concurrent,
                    "an AdaptiveLimit learns one dependency's capacity: not with per_key=True",
                )
            adaptive.claim(self, "Bulkhead.max_concurrent")
            self._max = adaptive.limit
        else:
            self._max = check.integer("Bulkhead.max_concurrent", max_concurrent, minimum=1)
        self._adaptive = adaptive
        self._discipline = queue_discipline("Bulkhead.queue", queue)
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
        self._slots = _Slots(limit=self._max, discipline=self._discipline)
        self._keys: BoundedKeyMap[_Slots] | None = None
        if per_key:
            limit, discipline = self._max, self._discipline
            self._keys = BoundedKeyMap(
                lambda _key: _Slots(limit=limit, discipline=discipline),
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
        """Calls allowed to run at once now (an adaptive limit's current value)."""
        adaptive = self._adaptive
        return self._max if adaptive is None else adaptive.limit

    @property
    def adaptive_limit(self) -> AdaptiveLimit | None:
        """The ``AdaptiveLimit`` the slots follow, or ``None`` for a fixed number."""
        return self._adaptive

    @property
    def queue(self) -> QueueDiscipline:
        """The waiting room's discipline."""
        return self._discipline

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
            max_concurrent=self.max_concurrent,
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
        adaptive = self._adaptive
        if adaptive is None:
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
        # Adaptive (one unkeyed partition): the limit learns from every completed call.
        slots = self._slots
        if slots.running < slots.limit:
            slots.running += 1
        else:
            await self._wait(slots, ctx)
        clock = ctx.clock
        # A latency is a difference: the system clock's own base (trio's clock on trio) is
        # not needed, and time.monotonic() skips the backend check of SYSTEM_CLOCK.now().
        now = _monotonic if clock is SYSTEM_CLOCK else clock.now
        start = now()
        try:
            result = await call(ctx)
        except (TimeoutError, RejectedError):
            self._sample_and_release(slots, now() - start, True)
            raise
        except BaseException:
            _release(slots)  # an error unrelated to load, or a cancellation: nothing learned
            raise
        # _sample_and_release(), inlined for the common case.
        before = slots.limit
        limit = slots.limit = adaptive.update(now() - start, slots.running)
        if slots.waiters:
            _release(slots)
            if limit > before:
                _admit_waiters(slots)
        else:
            slots.running -= 1
        return result

    def _sample_and_release(self, slots: _Slots, rtt: float, dropped: bool) -> None:
        adaptive = self._adaptive
        assert adaptive is not None
        before = slots.limit
        limit = slots.limit = adaptive.update(rtt, slots.running, dropped)
        _release(slots)
        if limit > before:
            _admit_waiters(slots)

    # -- admission for integrations and direct use ----------------------------------------

    def _partition(self, key: str | None) -> _Slots:
        keys = self._keys
        if keys is None or key is None:
            return self._slots
        return keys.get(key, self._clock.now())

    def try_acquire(self, key: str | None = None, *, headroom: int = 0) -> bool:
        """Take a slot now if one is free; never waits, never raises a refusal.

        Callers already waiting keep their turn: while any wait, every slot is taken, so this
        returns ``False``. A ``True`` must be paired with exactly one ``release(key)``.

        Args:
            key: the partition when ``per_key`` (``None``: the shared partition).
            headroom: take a slot only if at least this many would stay free (slots kept
                for more important callers, as the middleware's criticality does).
        """
        slots = self._partition(key)
        if slots.running + headroom < slots.limit:
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
        if slots.running < slots.limit:
            slots.running += 1
            return
        await self._wait(slots, self._direct_context(key))

    def release(
        self, key: str | None = None, *, latency: float | None = None, dropped: bool = False
    ) -> None:
        """Give back a slot taken by ``try_acquire(key)`` or ``acquire(key)``.

        The slot goes straight to the next waiter, if any, so nobody can overtake the queue.
        With an ``AdaptiveLimit``, pass the call's ``latency`` (seconds it held the slot) and
        whether it was ``dropped`` (timed out, or refused downstream) so the limit learns from
        it; without ``latency`` nothing is learned from this call.

        Raises:
            RuntimeError: no slot of this partition is held.
        """
        keys = self._keys
        slots = self._slots if keys is None or key is None else keys.peek(key)
        if slots is None or slots.running <= 0:
            raise RuntimeError(f"bulkhead {self.name!r}: release() without a held slot")
        if latency is not None and self._adaptive is not None:
            self._sample_and_release(slots, latency, dropped)
        else:
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
            waiters = slots.waiters = slots.discipline.new_queue()
        if self._max_wait <= 0.0 or len(waiters) >= self._max_waiting:
            raise self._refuse(ctx, "full", None)
        clock = ctx.clock
        start = clock.now()
        deadline = ctx.deadline
        cap = slots.discipline.max_queue_time
        by_discipline = cap < self._max_wait
        limit = start + (cap if by_discipline else self._max_wait)
        by_deadline = deadline < limit
        until = deadline if by_deadline else limit
        if until <= start:
            raise self._refuse(ctx, "deadline", None)
        waiter = Waiter(start)
        waiters.push(waiter, clock)
        admitted = False
        try:
            if until == math.inf:
                await waiter.event.wait()
            else:
                async with clock.timeout_at(until):
                    await waiter.event.wait()
            admitted = waiter.granted
        except TimeoutError:
            pass  # our timer: the wait ran out (handled below, after the cleanup)
        finally:
            if not admitted:
                if waiter.granted:
                    # Handed a slot at the very moment the wait ended (cancelled or timed
                    # out): pass it on so it is neither lost nor held by a caller who left.
                    _release(slots)
                elif not waiter.dropped:
                    waiters.remove(waiter)
        waited = clock.now() - start
        if not admitted:
            raise self._refuse(ctx, _why(waiter, by_discipline, by_deadline), waited)
        if ctx.listening:
            report_wait_ended(ctx, self.name, clock.now(), waited, admitted=True)

    def _refuse(self, ctx: Context, reason: str, waited: float | None) -> Exception:
        exc: Exception
        if reason == "deadline":
            exc = ctx.deadline_exceeded()
            hint = None
        else:
            hint = self._retry_after
            if reason == "full":
                message = (
                    f"bulkhead {self.name!r} is full: {self.max_concurrent} running, "
                    f"{self._max_waiting} waiting at most"
                )
                if self._max_waiting and self._max_wait <= 0.0:
                    message += " (max_wait=0: callers never wait)"
            elif reason == "queue_shed":
                message = (
                    f"bulkhead {self.name!r}: shed from a standing queue "
                    f"({self._discipline!r}) after waiting {waited or 0.0:.3g}s"
                )
            else:
                message = f"bulkhead {self.name!r}: no slot freed within {self._max_wait:g}s"
            exc = BulkheadFullError(message, policy=self.name, retry_after=hint)
        if ctx.listening:
            report_rejection(ctx, self.name, exc, reason=reason, retry_after=hint, waited=waited)
        return exc

    def __repr__(self) -> str:
        limit = self._adaptive if self._adaptive is not None else self._max
        discipline = self._discipline
        queue = "" if discipline.name == "fifo" else f", queue={discipline!r}"
        return (
            f"Bulkhead(max_concurrent={limit!r}, max_waiting={self._max_waiting}, "
            f"max_wait={self._max_wait:g}{queue}, name={self.name!r})"
        )

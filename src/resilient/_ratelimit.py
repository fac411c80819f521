"""``RateLimiter``: a token bucket on the monotonic clock, with fair, bounded waiting.

Three layers, kept apart so that a shared store (Redis, for a fleet) can reuse the rest:

- the bucket arithmetic (``resilient._bucket``: ``bucket_take``, ``bucket_tokens``), pure
  functions on one number per bucket;
- where that number lives: a ``BucketStore`` (``MemoryBucketStore`` by default, one
  bounded map of buckets per limiter);
- the local policy: the FIFO queue of waiting callers, deadlines, events, errors.

Every admission, whether through a pipeline, ``async with``, ``acquire()`` or an
integration's synchronous ``try_acquire_nowait()``, steps a bucket with ``bucket_take``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, NamedTuple, Protocol, final, runtime_checkable

import anyio

from . import _validate as check
from ._bucket import EMPTY, TOLERANCE, bucket_take, bucket_tokens
from ._clock import SYSTEM_CLOCK, Clock
from ._context import Context
from ._events import report_rejection, report_wait_ended
from ._exceptions import ConfigurationError, RateLimitedError
from ._keyed import BoundedKeyMap
from ._pipeline import Call, PolicyDecorator

__all__ = [
    "BucketStore",
    "MemoryBucketStore",
    "RateLimitStatus",
    "RateLimiter",
    "RateLimiterSnapshot",
    "TakeResult",
    "bucket_take",
    "bucket_tokens",
]

# -- storage -------------------------------------------------------------------------------


class TakeResult(NamedTuple):
    """A store's answer to ``take``: the decision and the tokens left, in one reply.

    Attributes:
        wait: ``0.0`` when the tokens were taken; otherwise nothing was taken and this is
            the seconds until ``cost`` tokens will be available.
        tokens: the tokens left in the bucket after this decision (``0`` to ``burst``).
    """

    wait: float
    tokens: float


@runtime_checkable
class BucketStore(Protocol):
    """Where token-bucket state lives. Each method is atomic for one key.

    ``key`` is ``None`` for an unkeyed limiter (and for calls without a key), else the
    partition key. ``now`` is the caller's monotonic clock: an in-process store uses it; a
    store shared by several processes must use one time base for all of them instead (for
    example the Redis server's ``TIME``) and may ignore it. Waits are returned in seconds.
    The arithmetic to apply is ``bucket_take`` / ``bucket_tokens`` (one number per key).

    ``take`` answers the decision and the tokens left together, so a remote store decides
    in one round trip (``RateLimiter.try_acquire`` needs both for RateLimit headers).
    """

    async def take(
        self, key: str | None, cost: float, *, rate: float, burst: float, now: float
    ) -> TakeResult:
        """Take ``cost`` tokens if the bucket holds them.

        Returns ``TakeResult(wait, tokens)``: ``wait`` is ``0.0`` when taken; otherwise
        nothing was taken and ``wait`` is the seconds until ``cost`` tokens will be
        available. ``tokens`` is what the bucket holds after the decision.
        """
        ...

    async def tokens(self, key: str | None, *, rate: float, burst: float, now: float) -> float:
        """The tokens available now (``0`` to ``burst``), taking none."""
        ...


@final
class _Cell:
    __slots__ = ("full_at",)

    def __init__(self, _key: str = "") -> None:
        self.full_at = EMPTY


@final
class MemoryBucketStore:
    """The default ``BucketStore``: buckets in this process, bounded in number.

    A bucket that is full is identical to a new one, so idle eviction drops only full
    buckets (lossless); the ``max_keys`` bound evicts the least recently used bucket
    regardless, which at worst refills that key early. Pass one instance to several limiters
    to make them share quotas (keys are not namespaced).

    Args:
        max_keys: the most keyed buckets kept (>= 1).
        idle_ttl: seconds a bucket must be unused before idle eviction considers it.

    Raises:
        ConfigurationError: an option is out of range.
    """

    __slots__ = ("_cell", "_idle_ttl", "_keys", "_max_keys", "_now")

    def __init__(self, *, max_keys: int = 10_000, idle_ttl: float = 60.0) -> None:
        self._max_keys = check.integer("MemoryBucketStore.max_keys", max_keys, minimum=1)
        self._idle_ttl = check.positive("MemoryBucketStore.idle_ttl", idle_ttl)
        self._cell = _Cell()
        self._now = EMPTY
        self._keys: BoundedKeyMap[_Cell] | None = None  # built on the first keyed call

    def _is_full(self, cell: _Cell) -> bool:
        return cell.full_at <= self._now

    def _get(self, key: str | None, now: float) -> _Cell:
        if key is None:
            return self._cell
        keys = self._keys
        if keys is None:
            keys = self._keys = BoundedKeyMap(
                _Cell, max_keys=self._max_keys, idle_ttl=self._idle_ttl, evictable=self._is_full
            )
        self._now = now
        return keys.get(key, now)

    def take_now(
        self, key: str | None, cost: float, rate: float, burst: float, now: float
    ) -> float:
        """Synchronous ``take`` (the limiter's fast path)."""
        cell = self._get(key, now)
        cell.full_at, wait = bucket_take(cell.full_at, now, cost, rate, burst)
        return wait

    def tokens_now(self, key: str | None, rate: float, burst: float, now: float) -> float:
        """Synchronous ``tokens``; does not create a bucket for an unknown key."""
        if key is None:
            cell: _Cell | None = self._cell
        else:
            cell = self._keys.peek(key) if self._keys is not None else None
        if cell is None:
            return burst
        return bucket_tokens(cell.full_at, now, rate, burst)

    async def take(
        self, key: str | None, cost: float, *, rate: float, burst: float, now: float
    ) -> TakeResult:
        """See ``BucketStore.take``."""
        wait = self.take_now(key, cost, rate, burst, now)
        return TakeResult(wait, self.tokens_now(key, rate, burst, now))

    async def tokens(self, key: str | None, *, rate: float, burst: float, now: float) -> float:
        """See ``BucketStore.tokens``."""
        return self.tokens_now(key, rate, burst, now)

    def __len__(self) -> int:
        """Keyed buckets currently kept."""
        return len(self._keys) if self._keys is not None else 0


# -- results -------------------------------------------------------------------------------


class RateLimitStatus(NamedTuple):
    """The answer of ``RateLimiter.try_acquire`` / ``status``, with the numbers for headers.

    Maps onto the IETF RateLimit header fields: ``limit`` is the quota (``burst``),
    ``remaining`` the tokens left, ``reset`` the seconds until the bucket is full again;
    ``retry_after`` feeds ``Retry-After`` on refusal. (A named tuple: built on every request
    by servers, so kept cheap.)

    Attributes:
        allowed: whether the tokens were taken (``try_acquire``) or are available now
            (``status``).
        limit: the bucket size (``burst``).
        remaining: tokens available after this decision (fractional; floor it for headers).
        reset: seconds until the bucket is full again (0 when full).
        retry_after: seconds until the requested tokens are available (0 when allowed).
        rate: tokens added per second.
    """

    allowed: bool
    limit: float
    remaining: float
    reset: float
    retry_after: float
    rate: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimiterSnapshot:
    """A point-in-time view of a limiter (of one key's bucket when keyed).

    Attributes:
        tokens: tokens available now (``nan`` when the store cannot be read synchronously
            or the clock cannot be read in this thread).
        rate: tokens added per second.
        burst: the bucket size.
        waiting: callers queued for tokens on this bucket.
        keys: keyed buckets currently kept by the in-memory store (0 when unkeyed).
    """

    tokens: float
    rate: float
    burst: float
    waiting: int
    keys: int = 0


# -- the policy ----------------------------------------------------------------------------


@final
class _Waiter:
    __slots__ = ("cost", "event")

    def __init__(self, cost: float, event: anyio.Event | None) -> None:
        self.cost = cost
        self.event = event


@final
class _Queue:
    """Callers waiting on one bucket, first come first served; exists only while non-empty."""

    __slots__ = ("pending", "waiters")

    def __init__(self) -> None:
        self.waiters: deque[_Waiter] = deque()
        self.pending = 0.0


CostLike = float | Callable[[Context], float]


@final
class RateLimiter(PolicyDecorator):
    """Admit calls at ``rate`` per second on average, in bursts of at most ``burst``.

    A token bucket on the monotonic clock: it holds up to ``burst`` tokens and gains
    ``rate`` tokens per second; each call takes ``cost`` tokens (1 by default). A call that
    finds too few tokens waits, in FIFO order, when the limiter can tell that its tokens
    will come within ``max_wait`` seconds and before the call's deadline; otherwise it fails
    at once with ``RateLimitedError`` whose ``retry_after`` is exactly when they will be
    there. ``max_wait=0`` never waits. A waiter that is cancelled takes nothing and leaves
    the queue at once; each grant wakes only the next waiter.

    With ``per_key=True`` the limiter keeps one bucket per ``ctx.key`` (integrations set it:
    the httpx transport to the host, the ASGI middleware to the client address), bounded in
    number with idle eviction. Outside a pipeline use ``await limiter.acquire(key)``,
    ``limiter.try_acquire_nowait(key)`` (one synchronous decision; returns the numbers for
    RateLimit headers), its awaitable twin ``try_acquire(key)`` (for shared stores) or
    ``async with limiter:``; these always use the bucket of the key passed.

    The same instance may be created at import time and shared by tasks, pipelines,
    successive ``asyncio.run()`` calls and trio: it captures no event loop.

    Args:
        rate: tokens added per second (> 0).
        burst: the bucket size, the most tokens available at once (>= 1).
        max_wait: the longest a call may wait for its tokens, in seconds (>= 0,
            ``math.inf`` allowed; 0 never waits).
        cost: tokens each call takes through a pipeline: a number in (0, burst], or a
            function of the call's ``Context`` returning one.
        per_key: one bucket per ``ctx.key``; calls without a key share one bucket.
        max_keys: the most keyed buckets kept in memory (default store only).
        idle_ttl: seconds before an unused keyed bucket may be evicted (default store
            only); default ``burst / rate``, the time to refill: evicting then loses nothing.
        store: where bucket state lives (default: buckets in this process; see
            ``BucketStore``).
        clock: clock for the direct API (``acquire``, ``try_acquire``, ``status``,
            ``snapshot``, ``async with``); default the event loop's. Inside a pipeline the
            pipeline's clock is used. Use one time base per limiter.
        name: the policy's name in events, errors and telemetry.

    Raises:
        ConfigurationError: an option is out of range or of the wrong type (naming it).
    """

    # Memory matters (one limiter per host or tenant is common): no precomputed floats, no
    # bound methods, and the map of keyed buckets is built only when a key is first used.
    __slots__ = (
        "_burst",
        "_clock",
        "_cost",
        "_cost_fn",
        "_full_at",
        "_idle_ttl",
        "_max_keys",
        "_max_wait",
        "_memory",
        "_per_key",
        "_queues",
        "_rate",
        "_store",
        "name",
    )

    deadline_aware: ClassVar[bool] = True

    def __init__(
        self,
        *,
        rate: float = 100.0,
        burst: float = 20,
        max_wait: float = 0.5,
        cost: CostLike = 1.0,
        per_key: bool = False,
        max_keys: int = 10_000,
        idle_ttl: float | None = None,
        store: BucketStore | None = None,
        clock: Clock | None = None,
        name: str = "rate_limiter",
    ) -> None:
        self.name = check.name("RateLimiter.name", name)
        self._rate = check.positive("RateLimiter.rate", rate)
        self._burst = check.number("RateLimiter.burst", burst, minimum=1.0)
        self._max_wait = check.non_negative("RateLimiter.max_wait", max_wait, allow_inf=True)
        self._cost_fn: Callable[[Context], float] | None = None
        self._cost = 1.0
        if callable(cost):
            self._cost_fn = cost
        else:
            self._cost = self._check_cost(cost)
        if not isinstance(per_key, bool):
            raise ConfigurationError("RateLimiter.per_key", per_key, "expected True or False")
        self._per_key = per_key
        self._max_keys = check.integer("RateLimiter.max_keys", max_keys, minimum=1)
        self._idle_ttl = check.optional(check.positive, "RateLimiter.idle_ttl", idle_ttl)
        if store is not None and not (
            callable(getattr(store, "take", None)) and callable(getattr(store, "tokens", None))
        ):
            raise ConfigurationError(
                "RateLimiter.store", store, "expected a BucketStore (take() and tokens())"
            )
        self._store = store
        # Buckets read synchronously: the caller's MemoryBucketStore, or ours (made lazily).
        self._memory = store if isinstance(store, MemoryBucketStore) else None
        # The default store's unkeyed bucket lives here, read and stepped inline.
        self._full_at = EMPTY
        if clock is not None and not callable(getattr(clock, "now", None)):
            raise ConfigurationError("RateLimiter.clock", clock, "expected a Clock")
        self._clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self._queues: dict[str | None, _Queue] | None = None

    def _check_cost(self, cost: object) -> float:
        value = check.positive("RateLimiter.cost", cost)
        if value > self._burst:
            raise ConfigurationError(
                "RateLimiter.cost",
                cost,
                f"a call costing more than burst={self._burst:g} tokens could never be admitted",
            )
        return value

    def _cost_arg(self, cost: object) -> float:
        if (
            isinstance(cost, int | float)
            and not isinstance(cost, bool)
            and 0.0 < cost <= self._burst
        ):
            return float(cost)
        return self._check_cost(cost)

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return self._rate

    @property
    def burst(self) -> float:
        """The bucket size."""
        return self._burst

    @property
    def max_wait(self) -> float:
        """The longest a call may wait for tokens, in seconds."""
        return self._max_wait

    @property
    def per_key(self) -> bool:
        """Whether pipeline calls use one bucket per ``ctx.key``."""
        return self._per_key

    @property
    def store(self) -> BucketStore | None:
        """The store given at construction (``None``: buckets kept in this process)."""
        return self._store

    # -- pipeline path ---------------------------------------------------------------------

    async def execute(self, call: Call, ctx: Context, /) -> Any:
        """Run ``call`` once its tokens are taken; wait for them or refuse as configured.

        Raises:
            RateLimitedError: the tokens will not come within ``max_wait`` (or before the
                call's deadline); ``retry_after`` says when they will.
            TimeoutExceeded: the call's deadline ended a wait already started.
            ConfigurationError: a ``cost`` function returned a cost outside (0, burst].
        """
        cost = self._cost if self._cost_fn is None else self._cost_arg(self._cost_fn(ctx))
        key = ctx.key if self._per_key else None
        now = ctx.clock.now()
        wait = self._take_now(key, cost, now)
        if wait != 0.0:  # refused, or only the queue or an asynchronous store can tell
            await self._acquire_slow(key, cost, ctx, wait, now)
        return await call(ctx)

    # -- admission for integrations and direct use ----------------------------------------

    async def acquire(self, key: str | None = None, *, cost: float = 1.0) -> None:
        """Take ``cost`` tokens from ``key``'s bucket, waiting as configured.

        Args:
            key: the partition (``None``: the unkeyed bucket).
            cost: tokens to take, in (0, burst].

        Raises:
            RateLimitedError: the tokens will not come within ``max_wait``.
            TimeoutExceeded: an enclosing resilient deadline ended the wait.
            ConfigurationError: ``cost`` is outside (0, burst].
        """
        cost = self._cost_arg(cost)
        now = self._clock.now()
        wait = self._take_now(key, cost, now)
        if wait != 0.0:
            await self._acquire_slow(key, cost, self._direct_context(key), wait, now)

    def try_acquire_nowait(
        self, key: str | None = None, *, cost: float = 1.0, now: float | None = None
    ) -> RateLimitStatus | None:
        """One synchronous admission decision: take ``cost`` tokens now if they are there.

        Never waits and never raises a refusal. Callers already queued for the bucket keep
        their turn: while any wait, this refuses. For integrations on their hot path (the ASGI
        middleware decides every request with it).

        Args:
            key: the bucket (``None``: the unkeyed bucket).
            cost: tokens to take, in (0, burst].
            now: the time on the limiter's clock, when the caller has read it already.

        Returns:
            A ``RateLimitStatus`` (``allowed``, ``retry_after``, ``remaining`` and the rest
            of the RateLimit header numbers), or ``None`` when the limiter's store answers
            only asynchronously (a shared store such as Redis): use ``try_acquire`` then.

        Raises:
            ConfigurationError: ``cost`` is outside (0, burst].
        """
        cost = self._cost_arg(cost)
        if self._store is not None and self._memory is None:
            return None
        if now is None:
            now = self._clock.now()
        queue = self._queues.get(key) if self._queues else None
        if queue is not None:
            tokens = self._tokens_now(key, now)
            return self._status(
                False, tokens, max(0.0, (queue.pending + cost - tokens) / self._rate)
            )
        wait = self._take_now(key, cost, now)
        return self._status(not wait, self._tokens_now(key, now), wait or 0.0)

    async def try_acquire(self, key: str | None = None, *, cost: float = 1.0) -> RateLimitStatus:
        """Take ``cost`` tokens now if possible; never waits, never raises a refusal.

        ``try_acquire_nowait`` without the ``None``: a shared store is asked asynchronously.

        Returns:
            A ``RateLimitStatus``: ``allowed``, the exact ``retry_after`` on refusal, and
            ``limit`` / ``remaining`` / ``reset`` for RateLimit headers.

        Raises:
            ConfigurationError: ``cost`` is outside (0, burst].
        """
        status = self.try_acquire_nowait(key, cost=cost)
        if status is not None:
            return status
        store = self._store
        assert store is not None  # only a store without a synchronous side returns None
        cost = self._cost_arg(cost)
        now = self._clock.now()
        rate, burst = self._rate, self._burst
        queue = self._queues.get(key) if self._queues else None
        if queue is not None:
            tokens = await store.tokens(key, rate=rate, burst=burst, now=now)
            return self._status(False, tokens, max(0.0, (queue.pending + cost - tokens) / rate))
        # One call answers both (one round trip for a remote store).
        wait, tokens = await store.take(key, cost, rate=rate, burst=burst, now=now)
        return self._status(not wait, tokens, wait)

    async def status(self, key: str | None = None, *, cost: float = 1.0) -> RateLimitStatus:
        """The bucket's numbers now, taking nothing (``allowed``: ``cost`` tokens are there).

        Raises:
            ConfigurationError: ``cost`` is outside (0, burst].
        """
        cost = self._cost_arg(cost)
        now = self._clock.now()
        tokens = await self._tokens(key, now)
        queue = self._queues.get(key) if self._queues else None
        short = (queue.pending if queue is not None else 0.0) + cost - tokens
        wait = short / self._rate if short > TOLERANCE else 0.0
        return self._status(not wait, tokens, wait)

    def _status(self, allowed: bool, tokens: float, wait: float) -> RateLimitStatus:
        burst = self._burst
        rate = self._rate
        return RateLimitStatus(allowed, burst, tokens, (burst - tokens) / rate, wait, rate)

    async def __aenter__(self) -> None:
        """Take one token from the unkeyed bucket for ``async with limiter:``.

        Raises:
            RateLimitedError: the token will not come within ``max_wait``.
            TimeoutExceeded: an enclosing resilient deadline ended the wait.
        """
        now = self._clock.now()
        wait = self._take_now(None, 1.0, now)
        if wait != 0.0:
            await self._acquire_slow(None, 1.0, self._direct_context(), wait, now)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def snapshot(self, key: str | None = None, *, now: float | None = None) -> RateLimiterSnapshot:
        """Tokens and waiting callers of ``key``'s bucket (``None``: the unkeyed bucket).

        Args:
            key: the partition.
            now: the time to evaluate at (default: the limiter's clock, when it can be read
                in this thread).
        """
        queue = self._queues.get(key) if self._queues else None
        tokens = math.nan
        if self._store is None or self._memory is not None:
            if now is None:
                try:
                    now = self._clock.now()
                except Exception:
                    now = None  # a clock that cannot be read in this thread
            if now is not None:
                tokens = self._tokens_now(key, now)
        return RateLimiterSnapshot(
            tokens=tokens,
            rate=self._rate,
            burst=self._burst,
            waiting=len(queue.waiters) if queue is not None else 0,
            keys=len(self._memory) if self._memory is not None else 0,
        )

    def _direct_context(self, key: str | None = None) -> Context:
        # Only on the contended path: gives direct use the deadline of an enclosing pipeline
        # call (when it runs on the same clock) and the same rejection code as a pipeline.
        return Context.detached(self.name, self._clock, key)

    # -- where the buckets are ---------------------------------------------------------------

    def _keyed(self) -> MemoryBucketStore:
        memory = self._memory
        if memory is None:
            memory = self._memory = MemoryBucketStore(
                max_keys=self._max_keys,
                idle_ttl=self._idle_ttl if self._idle_ttl is not None else self._burst / self._rate,
            )
        return memory

    def _take_now(self, key: str | None, cost: float, now: float) -> float | None:
        # The one synchronous step of a bucket: the seconds to wait (0.0: taken), or None
        # when callers are queued for this bucket (they keep their turn) or only an
        # asynchronous store can answer.
        queues = self._queues
        if queues and key in queues:
            return None
        store = self._store
        if key is None and store is None:  # _step(), for the limiter's own bucket
            self._full_at, wait = bucket_take(self._full_at, now, cost, self._rate, self._burst)
            return wait
        if store is not None and self._memory is None:
            return None
        return self._keyed().take_now(key, cost, self._rate, self._burst, now)

    def _step(self, key: str | None, cost: float, now: float) -> float:
        # bucket_take on the bucket in this process: the limiter's own unkeyed one, or the
        # in-memory store's.
        if key is None and self._store is None:
            self._full_at, wait = bucket_take(self._full_at, now, cost, self._rate, self._burst)
            return wait
        return self._keyed().take_now(key, cost, self._rate, self._burst, now)

    def _tokens_now(self, key: str | None, now: float) -> float:
        if key is None and self._store is None:
            return bucket_tokens(self._full_at, now, self._rate, self._burst)
        if self._memory is None:
            return self._burst  # no keyed bucket yet: every one is full
        return self._memory.tokens_now(key, self._rate, self._burst, now)

    async def _take(self, key: str | None, cost: float, now: float) -> float:
        # Takes for the caller at the head of the queue (so never refused for the queue).
        store = self._store
        if store is None or self._memory is not None:
            return self._step(key, cost, now)
        return (await store.take(key, cost, rate=self._rate, burst=self._burst, now=now)).wait

    async def _tokens(self, key: str | None, now: float) -> float:
        store = self._store
        if store is None or self._memory is not None:
            return self._tokens_now(key, now)
        return await store.tokens(key, rate=self._rate, burst=self._burst, now=now)

    # -- contended path --------------------------------------------------------------------

    async def _acquire_slow(
        self, key: str | None, cost: float, ctx: Context, wait: float | None, now: float
    ) -> None:
        """Return once ``cost`` tokens are taken for ``key``, or raise having taken none.

        ``wait`` is the shortfall already measured at ``now`` by a refused take, or ``None``
        when callers are queued for this bucket (then measure the queue ahead).
        """
        clock = ctx.clock
        queue = self._queues.get(key) if self._queues else None
        if queue is not None:
            now = clock.now()
            tokens = await self._tokens(key, now)
            wait = max(0.0, (queue.pending + cost - tokens) / self._rate)
        elif wait is None:
            now = clock.now()
            wait = await self._take(key, cost, now)
            if not wait:
                return
        if wait > self._max_wait:
            raise self._refuse(ctx, "rate_limited", wait, None)
        deadline = ctx.deadline
        if now + wait > deadline:
            raise self._refuse(ctx, "deadline", wait, None)
        limit = now + self._max_wait
        by_deadline = deadline < limit
        queue, waiter = self._join(key, cost)
        try:
            shortfall = await self._wait_turn(
                key,
                waiter,
                queue,
                clock=clock,
                until=deadline if by_deadline else limit,
                shortfall=wait,
            )
        finally:
            self._leave(key, waiter, queue)
        waited = clock.now() - now
        if shortfall is not None:
            raise self._refuse(
                ctx, "deadline_cut" if by_deadline else "wait_timeout", shortfall, waited
            )
        if ctx.listening:
            report_wait_ended(ctx, self.name, clock.now(), waited, admitted=True)

    def _join(self, key: str | None, cost: float) -> tuple[_Queue, _Waiter]:
        # The end of the bucket's queue (made on first use).
        queues = self._queues
        if queues is None:
            queues = self._queues = {}
        queue = queues.get(key)
        if queue is None:
            queue = queues[key] = _Queue()
        waiters = queue.waiters
        waiter = _Waiter(cost, anyio.Event() if waiters else None)
        waiters.append(waiter)
        queue.pending += cost
        return queue, waiter

    async def _wait_turn(
        self,
        key: str | None,
        waiter: _Waiter,
        queue: _Queue,
        *,
        clock: Clock,
        until: float,
        shortfall: float,
    ) -> float | None:
        """Wait in line, then for the tokens: ``None`` once taken, else the shortfall left."""
        waiters = queue.waiters
        while True:
            if waiters[0] is waiter:
                now = clock.now()
                shortfall = await self._take(key, waiter.cost, now)
                if not shortfall:
                    return None
                if now + shortfall > until:
                    return shortfall  # the tokens cannot come in time any more (shared store)
                await clock.sleep(shortfall)
                continue
            event = waiter.event
            if event is None:
                event = waiter.event = anyio.Event()
            if until == math.inf:
                await event.wait()
                continue
            try:
                async with clock.timeout_at(until):
                    await event.wait()
            except TimeoutError:
                if not event.is_set():
                    return shortfall

    def _leave(self, key: str | None, waiter: _Waiter, queue: _Queue) -> None:
        # Out of the queue however the wait ended; the head's departure wakes the next one.
        waiters = queue.waiters
        if waiters and waiters[0] is waiter:
            waiters.popleft()
            if waiters:
                event = waiters[0].event
                if event is not None:
                    event.set()
        else:
            waiters.remove(waiter)
        queue.pending -= waiter.cost
        if not waiters:
            queue.pending = 0.0
            queues = self._queues
            if queues is not None and queues.get(key) is queue:
                del queues[key]

    def _refuse(self, ctx: Context, reason: str, wait: float, waited: float | None) -> Exception:
        exc: Exception
        hint: float | None = wait
        if reason == "deadline_cut":
            reason = "deadline"
            exc = ctx.deadline_exceeded()
            hint = None
        elif reason == "deadline":
            exc = RateLimitedError(
                f"rate limiter {self.name!r}: tokens available in {wait:.6g}s, after the "
                "call's deadline",
                policy=self.name,
                retry_after=wait,
            )
        else:
            exc = RateLimitedError(
                f"rate limiter {self.name!r}: {self._rate:g}/s (burst {self._burst:g}) "
                f"exceeded; tokens available in {wait:.6g}s (max_wait={self._max_wait:g}s)",
                policy=self.name,
                retry_after=wait,
            )
        if ctx.listening:
            report_rejection(ctx, self.name, exc, reason=reason, retry_after=hint, waited=waited)
        return exc

    # -- reconfiguration (used by resilient.config reloads) ----------------------------------

    def reconfigure(self, *, now: float | None = None, **options: Any) -> RateLimiter:
        """A limiter with ``options`` changed that keeps this limiter's tokens.

        ``options`` are constructor keywords; the ones not given keep this limiter's values.
        Each bucket this limiter keeps in memory (the unkeyed one and every keyed one) holds
        in the new limiter the tokens it holds at ``now`` (capped at the new ``burst``) and
        refills at the new ``rate`` from there. Buckets in a ``store`` given to the
        constructor belong to that store, which the new limiter keeps using. Callers already
        waiting for tokens finish their wait on this limiter.

        Args:
            now: the time of the handover on the clock calls use (default: this limiter's
                clock).
            **options: constructor keywords to change.

        Raises:
            ConfigurationError: an unknown or invalid option (this limiter is unchanged).
        """
        current = {
            "rate": self._rate,
            "burst": self._burst,
            "max_wait": self._max_wait,
            "cost": self._cost_fn if self._cost_fn is not None else self._cost,
            "per_key": self._per_key,
            "max_keys": self._max_keys,
            "idle_ttl": self._idle_ttl,
            "store": self._store,
            "clock": self._clock,
            "name": self.name,
        }
        for option, value in options.items():
            if option not in current:
                raise ConfigurationError(
                    f"RateLimiter.reconfigure.{option}", value, "not an option"
                )
        new = RateLimiter(**{**current, **options})
        at = self._clock.now() if now is None else now

        def carried(full_at: float) -> float:
            if full_at == EMPTY:
                return EMPTY
            tokens = min(bucket_tokens(full_at, at, self._rate, self._burst), new._burst)
            return at + (new._burst - tokens) / new._rate

        new._full_at = carried(self._full_at)
        memory = self._memory
        if memory is not None and self._store is None and new._store is None:
            mine = new._keyed()
            mine._cell.full_at = carried(memory._cell.full_at)
            for key, cell in memory._keys.items() if memory._keys is not None else ():
                mine._get(key, at).full_at = carried(cell.full_at)
        return new

    def __repr__(self) -> str:
        return (
            f"RateLimiter(rate={self._rate:g}, burst={self._burst:g}, "
            f"max_wait={self._max_wait:g}, name={self.name!r})"
        )

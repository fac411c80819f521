"""RateLimiter: an exact token bucket with fair, bounded, cancellation-safe waiting."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import math
import random
import tracemalloc
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilient
from _limits_helpers import CountingClock, ManualClock, until
from resilient import (
    ConfigurationError,
    Pipeline,
    RateLimitedError,
    RateLimiter,
    Timeout,
    TimeoutExceeded,
)
from resilient._ratelimit import bucket_take, bucket_tokens
from resilient.events import CallRejected, WaitEnded
from resilient.extend import BucketStore, MemoryBucketStore, RateLimitStatus, TakeResult
from resilient.testing import EventRecorder, FakeClock


async def noop() -> None:
    pass


def drained(clock: resilient.extend.Clock, **options: Any) -> RateLimiter:
    """A limiter on ``clock`` whose bucket is empty at ``clock.now()``."""
    limiter = RateLimiter(clock=clock, **options)
    assert limiter._take_now(None, limiter.burst, clock.now()) == 0.0
    return limiter


# -- arithmetic ---------------------------------------------------------------------------


async def test_burst_is_admitted_at_once_then_refused_with_exact_retry_after(
    clock: FakeClock, events: EventRecorder
) -> None:
    limiter = RateLimiter(rate=10.0, burst=5, max_wait=0, name="api")
    pipeline = Pipeline(limiter, clock=clock, listeners=[events])
    for _ in range(5):
        await pipeline.call(noop)
    with pytest.raises(RateLimitedError) as info:
        await pipeline.call(noop)
    assert clock.now() == 0.0
    assert info.value.retry_after == pytest.approx(0.1, abs=1e-12)
    assert info.value.policy == "api"
    [rejected] = events.of_type(CallRejected)
    assert (rejected.reason, rejected.error_type) == ("rate_limited", "resilient.RateLimitedError")
    assert rejected.retry_after == pytest.approx(0.1, abs=1e-12)
    assert not events.of_type(WaitEnded)


async def test_refill_arithmetic_is_exact(clock: FakeClock) -> None:
    limiter = drained(clock, rate=4.0, burst=8, max_wait=0)
    clock.advance(0.5)
    assert limiter.snapshot().tokens == pytest.approx(2.0, abs=1e-12)
    refused = await limiter.try_acquire(cost=3)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.25, abs=1e-12)
    assert refused.remaining == pytest.approx(2.0, abs=1e-12)
    allowed = await limiter.try_acquire(cost=2)
    assert allowed.allowed
    assert allowed.retry_after == 0.0
    assert allowed.remaining == pytest.approx(0.0, abs=1e-12)
    assert allowed.reset == pytest.approx(2.0, abs=1e-12)  # 8 tokens at 4 per second
    assert allowed.limit == 8
    clock.advance(1.25)
    assert limiter.snapshot().tokens == pytest.approx(5.0, abs=1e-12)


async def test_an_hour_idle_refills_to_burst_and_not_one_token_more(clock: FakeClock) -> None:
    limiter = drained(clock, rate=10.0, burst=5, max_wait=0)
    clock.advance(3600.0)
    assert limiter.snapshot().tokens == 5
    pipeline = Pipeline(limiter, clock=clock)
    for _ in range(5):
        await pipeline.call(noop)
    with pytest.raises(RateLimitedError) as info:
        await pipeline.call(noop)
    assert info.value.retry_after == pytest.approx(0.1, abs=1e-9)


@pytest.mark.parametrize("cost", [1, 2.5, 4])
async def test_retry_after_is_exactly_when_the_tokens_are_there(
    clock: FakeClock, cost: float
) -> None:
    limiter = drained(clock, rate=3.0, burst=4, max_wait=0)
    clock.advance(0.2)
    with pytest.raises(RateLimitedError) as info:
        await limiter.acquire(cost=cost)
    retry_after = info.value.retry_after
    assert retry_after == pytest.approx(cost / 3.0 - 0.2, abs=1e-12)
    clock.advance(retry_after * 0.999)
    assert not (await limiter.try_acquire(cost=cost)).allowed
    clock.advance(retry_after * 0.001)
    assert (await limiter.try_acquire(cost=cost)).allowed


def test_bucket_arithmetic_reference() -> None:
    state, wait = bucket_take(-math.inf, 100.0, 2.0, rate=4.0, burst=8.0)
    assert (state, wait) == (100.5, 0.0)  # 2 tokens = half a second of debt
    assert bucket_tokens(state, 100.0, 4.0, 8.0) == 6.0
    assert bucket_tokens(state, 101.0, 4.0, 8.0) == 8.0  # never above burst
    state, wait = bucket_take(102.0, 100.0, 1.0, rate=4.0, burst=8.0)
    assert (state, wait) == (102.0, 0.25)  # empty: one token in a quarter second


@pytest.mark.parametrize(("now", "rate"), [(0.1, 10.0), (137.1, 20.0), (100_000.3, 10.0)])
def test_a_refused_take_never_changes_the_state(now: float, rate: float) -> None:
    """Float noise can leave a drained bucket a hair past one full refill; that must not
    look like a clock that went backwards."""
    state = -math.inf
    for _ in range(3):
        state, wait = bucket_take(state, now, 1.0, rate, 3.0)
        assert wait == 0.0
    assert (state - now) * rate > 3.0  # the noise this test is about
    assert bucket_take(state, now, 1.0, rate, 3.0) == (state, pytest.approx(1.0 / rate))


def test_clock_going_backwards_counts_as_empty_never_as_a_refill() -> None:
    # A state far ahead of now (a new trio run, whose clock starts at a random offset).
    state, wait = bucket_take(50_000.0, 10.0, 1.0, rate=1.0, burst=5.0)
    assert (state, wait) == (15.0, 1.0)
    assert bucket_tokens(state, 10.0, 1.0, 5.0) == 0.0


# -- per-call cost --------------------------------------------------------------------------


async def test_cost_above_burst_is_a_clear_error_and_takes_nothing(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=1.0, burst=5, max_wait=math.inf, clock=clock)
    with pytest.raises(ConfigurationError) as info:
        await limiter.acquire(cost=6)
    assert (info.value.parameter, info.value.value) == ("RateLimiter.cost", 6)
    assert "burst=5" in str(info.value)
    assert limiter.snapshot().tokens == 5
    assert clock.now() == 0.0  # no hang


@pytest.mark.parametrize("cost", [0, -1, math.nan, math.inf, "1", True])
async def test_invalid_per_call_cost_is_refused(clock: FakeClock, cost: object) -> None:
    limiter = RateLimiter(clock=clock)
    with pytest.raises(ConfigurationError) as info:
        await limiter.try_acquire(cost=cost)  # type: ignore[arg-type]
    assert info.value.parameter == "RateLimiter.cost"


async def test_cost_function_sets_the_cost_of_each_pipeline_call(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=1.0, burst=10, max_wait=0, cost=lambda ctx: ctx.args[0])
    pipeline = Pipeline(limiter, clock=clock)

    async def upload(size: int) -> int:
        return size

    assert await pipeline.call(upload, 7) == 7
    assert limiter.snapshot(now=0.0).tokens == 3
    with pytest.raises(RateLimitedError) as info:
        await pipeline.call(upload, 5)
    assert info.value.retry_after == pytest.approx(2.0)
    with pytest.raises(ConfigurationError, match=r"RateLimiter\.cost=11"):
        await pipeline.call(upload, 11)


# -- waiting ---------------------------------------------------------------------------------


async def test_waiters_are_admitted_in_order_at_their_exact_times(
    events: EventRecorder,
) -> None:
    clock = ManualClock()
    costs = {"big": 3, "a": 1, "b": 1}
    limiter = drained(clock, rate=1.0, burst=3, max_wait=10.0, cost=lambda c: costs[c.args[0]])
    pipeline = Pipeline(limiter, clock=clock, listeners=[events])
    admitted: list[tuple[str, float]] = []

    async def record(name: str) -> None:
        admitted.append((name, clock.now()))

    async with anyio.create_task_group() as tg:
        for i, name in enumerate(costs):
            tg.start_soon(pipeline.call, record, name)
            await until(lambda i=i: limiter.snapshot().waiting == i + 1)  # type: ignore[misc]
        assert clock.now() == 0.0  # all three queued at once
        await clock.run_until(lambda: len(admitted) == 3, step=0.5)
    # The large request is not overtaken by the small ones behind it, though a token for
    # them was there after one second.
    assert admitted == [("big", 3.0), ("a", 4.0), ("b", 5.0)]
    assert [(e.waited, e.admitted) for e in events.of_type(WaitEnded)] == [
        (3.0, True),
        (4.0, True),
        (5.0, True),
    ]


async def test_newcomer_never_takes_tokens_promised_to_a_queued_caller() -> None:
    clock = ManualClock()
    costs = {"big": 3, "newcomer": 1}
    limiter = drained(clock, rate=1.0, burst=3, max_wait=10.0, cost=lambda c: costs[c.args[0]])
    pipeline = Pipeline(limiter, clock=clock)
    admitted: list[tuple[str, float]] = []

    async def record(name: str) -> None:
        admitted.append((name, clock.now()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.call, record, "big")
        await until(lambda: limiter.snapshot().waiting == 1)
        clock.advance(1.0)  # one token is there, enough for the newcomer alone
        tg.start_soon(pipeline.call, record, "newcomer")
        await until(lambda: limiter.snapshot().waiting == 2)
        await clock.run_until(lambda: len(admitted) == 2, step=0.5)
    assert admitted == [("big", 3.0), ("newcomer", 4.0)]


async def test_wait_longer_than_max_wait_is_refused_at_once_with_exact_retry_after() -> None:
    clock = ManualClock()
    limiter = drained(clock, rate=1.0, burst=1, max_wait=1.5)
    pipeline = Pipeline(limiter, clock=clock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.call, noop)
        await until(lambda: limiter.snapshot().waiting == 1)
        with pytest.raises(RateLimitedError) as info:
            await pipeline.call(noop)  # one caller ahead: its token at 1 s, ours at 2 s
        assert info.value.retry_after == 2.0
        assert clock.now() == 0.0
        await clock.run_until(lambda: limiter.snapshot().waiting == 0, step=0.5)


async def test_wait_past_the_deadline_is_refused_at_once(
    clock: FakeClock, events: EventRecorder
) -> None:
    limiter = drained(clock, rate=1.0, burst=1, max_wait=5.0)
    pipeline = Pipeline(Timeout(0.5), limiter, Timeout(10.0), clock=clock, listeners=[events])
    with pytest.raises(RateLimitedError) as info:
        await pipeline.call(noop)
    assert clock.now() == 0.0
    assert info.value.retry_after == pytest.approx(1.0)
    assert events.of_type(CallRejected)[0].reason == "deadline"


async def test_max_wait_inf_waits_as_long_as_needed(clock: FakeClock) -> None:
    limiter = drained(clock, rate=0.01, burst=1, max_wait=math.inf)
    await Pipeline(limiter, clock=clock).call(noop)
    assert clock.now() == pytest.approx(100.0)


async def test_cancelled_waiter_consumes_nothing_and_leaves_at_once() -> None:
    clock = ManualClock()
    limiter = drained(clock, rate=1.0, burst=1, max_wait=10.0)
    pipeline = Pipeline(limiter, clock=clock)
    admitted: list[float] = []
    first = anyio.CancelScope()

    async def record() -> None:
        admitted.append(clock.now())

    async def cancelled_waiter() -> None:
        with first:
            await pipeline.call(record)

    async with anyio.create_task_group() as tg:
        tg.start_soon(cancelled_waiter)
        await until(lambda: limiter.snapshot().waiting == 1)
        tg.start_soon(pipeline.call, record)
        await until(lambda: limiter.snapshot().waiting == 2)
        first.cancel()
        await until(lambda: limiter.snapshot().waiting == 1)  # gone at once
        await clock.run_until(lambda: bool(admitted), step=0.25)
    assert first.cancelled_caught
    assert admitted == [1.0]  # the second caller got the token the first never took
    assert limiter.snapshot().waiting == 0
    assert limiter.snapshot(now=2.0).tokens == pytest.approx(1.0)


async def test_a_queue_on_one_key_never_delays_another_key() -> None:
    clock = ManualClock()
    limiter = RateLimiter(rate=1.0, burst=1, max_wait=10.0, clock=clock)  # type: ignore[arg-type]
    pipeline = Pipeline(limiter, clock=clock)  # type: ignore[arg-type]
    await limiter.acquire("busy")
    async with anyio.create_task_group() as tg:
        tg.start_soon(limiter.acquire, "busy")
        await until(lambda: limiter.snapshot("busy").waiting == 1)
        await limiter.acquire("idle")  # admitted at once, no wait
        await pipeline.call(noop)  # the unkeyed bucket too
        assert clock.now() == 0.0
        assert limiter.snapshot("busy").waiting == 1  # still queued while the others pass
        await clock.run_until(lambda: limiter.snapshot("busy").waiting == 0, step=0.5)


async def test_one_grant_wakes_one_waiter() -> None:
    """50 queued callers: each grant wakes only the next, so clock reads grow linearly."""
    manual = ManualClock()
    clock = CountingClock(manual)
    limiter = drained(clock, rate=1.0, burst=1, max_wait=math.inf)  # type: ignore[arg-type]
    pipeline = Pipeline(limiter, clock=clock)  # type: ignore[arg-type]
    order: list[int] = []

    async def record(i: int) -> None:
        order.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(pipeline.call, record, i)
            await until(lambda i=i: limiter.snapshot().waiting == i + 1)  # type: ignore[misc]
        clock.reads = 0
        # Wake-ups come from the clock's timers (the head's sleep) and from grants only.
        await manual.run_until(lambda: len(order) == 50, step=1.0)
    assert order == list(range(50))
    assert manual.now() == 50.0
    assert clock.reads <= 4 * 50  # a thundering herd would need about 50 * 50 / 2


@pytest.mark.parametrize(("rate", "max_wait"), [(1.0, 0.0), (0.001, 10.0)])
async def test_a_thousand_concurrent_acquires_of_a_four_token_bucket_grant_exactly_four(
    clock: FakeClock, rate: float, max_wait: float
) -> None:
    limiter = RateLimiter(rate=rate, burst=4, max_wait=max_wait)
    pipeline = Pipeline(limiter, clock=clock)
    granted = 0
    refused = 0

    async def work() -> None:
        nonlocal granted
        await anyio.lowlevel.checkpoint()
        granted += 1

    async def caller() -> None:
        nonlocal refused
        try:
            await pipeline.call(work)
        except RateLimitedError:
            refused += 1

    async with anyio.create_task_group() as tg:
        for _ in range(1000):
            tg.start_soon(caller)
    assert (granted, refused) == (4, 996)


@pytest.mark.parametrize("mode", ["constant", "cost_function", "direct"])
async def test_random_cancellations_take_tokens_only_for_admitted_calls(mode: str) -> None:
    """Hundreds of rounds of waiters cancelled at random: replaying the admissions through the
    reference arithmetic reproduces the bucket exactly (nothing taken by a cancelled waiter,
    nothing granted beyond the bucket) and the queue is always left empty."""
    rng = random.Random(f"ratelimit-{mode}")
    clock = FakeClock()
    rate, burst = 20.0, 3.0
    if mode == "cost_function":
        limiter = RateLimiter(rate=rate, burst=burst, max_wait=0.3, cost=lambda ctx: ctx.args[0])
    else:
        limiter = RateLimiter(rate=rate, burst=burst, max_wait=0.3, clock=clock)
    pipeline = Pipeline(limiter, clock=clock, telemetry=False)
    log: list[tuple[float, float]] = []

    async def work(cost: float) -> None:
        log.append((clock.now(), cost))
        await anyio.lowlevel.checkpoint()

    async def caller(scope: anyio.CancelScope, cost: float) -> None:
        with scope, contextlib.suppress(RateLimitedError):
            if mode == "direct":
                await limiter.acquire(cost=cost)
                await work(cost)
            else:
                await pipeline.call(work, cost)

    for _ in range(400):
        scopes = [anyio.CancelScope() for _ in range(6)]
        async with anyio.create_task_group() as tg:
            for scope in scopes:
                cost = 1.0 if mode == "constant" else float(rng.randint(1, 3))
                tg.start_soon(caller, scope, cost)
            for _ in range(rng.randint(0, 6)):
                await anyio.lowlevel.checkpoint()
                action = rng.random()
                if action < 0.5:
                    rng.choice(scopes).cancel()
                elif action < 0.7:
                    clock.advance(rng.choice((0.0, 0.05, 0.2)))
        assert limiter.snapshot(now=clock.now()).waiting == 0
        assert not limiter._queues
    state = -math.inf
    for at, cost in log:
        state, wait = bucket_take(state, at, cost, rate, burst)
        assert wait == 0.0
    assert limiter._full_at == state
    assert len(log) > 400


# -- keys -----------------------------------------------------------------------------------


async def test_per_key_limiter_keeps_one_bucket_per_key(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_wait=0, per_key=True)
    pipeline = Pipeline(limiter, clock=clock)

    async def call(key: str | None) -> None:
        await pipeline.run(pipeline.context(noop, (), key=key))

    await call("client-a")
    await call("client-b")
    await call(None)  # calls without a key share one bucket
    for key in ("client-a", "client-b", None):
        with pytest.raises(RateLimitedError):
            await call(key)
    assert limiter.snapshot().keys == 2


async def test_keyed_buckets_are_bounded_in_number(clock: FakeClock) -> None:
    limiter = RateLimiter(per_key=True, max_keys=100)
    pipeline = Pipeline(limiter, clock=clock)
    for i in range(1000):
        await pipeline.run(pipeline.context(noop, (), key=f"10.0.{i // 256}.{i % 256}"))
    assert limiter.snapshot().keys == 100


async def test_idle_eviction_drops_only_full_buckets(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=1.0, burst=2, max_wait=0, clock=clock)
    await limiter.acquire("spent", cost=2)
    # Default idle_ttl is burst / rate = 2 s: after 1 s the bucket is not full, and kept.
    clock.advance(1.0)
    await limiter.acquire("other")
    assert (await limiter.status("spent")).remaining == pytest.approx(1.0)
    assert limiter.snapshot().keys == 2
    clock.advance(1.5)
    await limiter.acquire("third")
    assert limiter.snapshot().keys == 2  # "spent" was full again, so dropping it lost nothing
    assert (await limiter.status("spent")).remaining == 2


def test_memory_per_keyed_bucket_is_at_most_300_bytes() -> None:
    limiter = RateLimiter(rate=10.0, burst=5, per_key=True, max_keys=100_000)
    store = limiter._keyed()
    keys = [f"10.1.{i // 256}.{i % 256}" for i in range(20_000)]  # the caller's strings
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, key in enumerate(keys):
            store.take_now(key, 1.0, 10.0, 5.0, 1.0 + i * 1e-6)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(store) == 20_000
    assert (after - before) / len(keys) <= 300


# -- direct use -----------------------------------------------------------------------------


async def test_try_acquire_gives_the_numbers_for_rate_limit_headers(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=2.0, burst=10, clock=clock)
    status = await limiter.try_acquire("198.51.100.7", cost=4)
    assert status == RateLimitStatus(
        allowed=True, limit=10, remaining=6, reset=2.0, retry_after=0.0, rate=2.0
    )
    status = await limiter.try_acquire("198.51.100.7", cost=8)
    assert (status.allowed, status.remaining, status.retry_after) == (False, 6, 1.0)
    peek = await limiter.status("198.51.100.7")
    assert (peek.allowed, peek.remaining) == (True, 6)
    assert (await limiter.status("203.0.113.1")).remaining == 10  # unknown key: full


async def test_try_acquire_never_jumps_the_queue() -> None:
    clock = ManualClock()
    limiter = drained(clock, rate=1.0, burst=2, max_wait=10.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(limiter.acquire, cost=2))
        await until(lambda: limiter.snapshot().waiting == 1)
        clock.advance(1.0)
        status = await limiter.try_acquire()  # a token is there, but it is promised
        assert not status.allowed
        assert status.retry_after == 2.0
        assert status.remaining == 1.0
        await clock.run_until(lambda: limiter.snapshot().waiting == 0, step=1.0)


async def test_direct_acquire_waits_as_configured(clock: FakeClock) -> None:
    limiter = drained(clock, rate=4.0, burst=4, max_wait=0.75)
    await limiter.acquire(cost=2)
    assert clock.now() == 0.5
    with pytest.raises(RateLimitedError) as info:
        await limiter.acquire(cost=4)
    assert info.value.retry_after == 1.0
    assert clock.now() == 0.5


async def test_async_with_takes_one_token(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=1.0, burst=2, max_wait=0, clock=clock)
    async with limiter:
        pass
    async with limiter:
        pass
    with pytest.raises(RateLimitedError):
        async with limiter:
            pass
    assert limiter.snapshot().tokens == 0


async def test_uncontended_path_is_not_a_checkpoint_and_creates_no_queue() -> None:
    limiter = RateLimiter(rate=1000.0, burst=10)

    async def work() -> int:
        return 1

    pipeline = Pipeline(limiter)
    with anyio.CancelScope() as scope:
        scope.cancel()
        assert await pipeline.call(work) == 1
        async with limiter:
            pass
    assert limiter._queues is None


async def test_decorator_form(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_wait=0)

    @limiter
    async def fetch() -> str:
        return "ok"

    assert await fetch() == "ok"
    with pytest.raises(RateLimitedError):
        await fetch()


# -- stores ---------------------------------------------------------------------------------


class AsyncOnlyStore:
    """A store that is not a MemoryBucketStore: the limiter goes through the protocol."""

    def __init__(self) -> None:
        self.inner = MemoryBucketStore()
        self.calls = 0

    async def take(
        self, key: str | None, cost: float, *, rate: float, burst: float, now: float
    ) -> TakeResult:
        self.calls += 1
        await anyio.lowlevel.checkpoint()  # as a network store would
        wait = self.inner.take_now(key, cost, rate, burst, now)
        return TakeResult(wait, self.inner.tokens_now(key, rate, burst, now))

    async def tokens(self, key: str | None, *, rate: float, burst: float, now: float) -> float:
        return self.inner.tokens_now(key, rate, burst, now)


async def test_custom_store_is_used_through_the_protocol(clock: FakeClock) -> None:
    store = AsyncOnlyStore()
    assert isinstance(store, BucketStore)
    limiter = RateLimiter(rate=1.0, burst=1, max_wait=5.0, store=store)
    pipeline = Pipeline(limiter, clock=clock)
    admitted: list[float] = []

    async def record() -> None:
        admitted.append(clock.now())

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(pipeline.call, record)
            await settle_once()
    assert admitted == [0.0, 1.0, 2.0]
    assert store.calls >= 3
    assert math.isnan(limiter.snapshot().tokens)  # not readable without I/O


async def test_try_acquire_through_a_store_is_one_store_call(clock: FakeClock) -> None:
    """The decision and the tokens left come back from one ``take`` (one round trip)."""

    class Counting(AsyncOnlyStore):
        reads = 0

        async def tokens(self, key: str | None, *, rate: float, burst: float, now: float) -> float:
            self.reads += 1
            return await super().tokens(key, rate=rate, burst=burst, now=now)

    store = Counting()
    limiter = RateLimiter(rate=1.0, burst=2, max_wait=0, store=store, clock=clock)
    first = await limiter.try_acquire("k")
    second = await limiter.try_acquire("k")
    third = await limiter.try_acquire("k")
    assert (first.allowed, first.remaining) == (True, 1.0)
    assert (second.allowed, second.remaining) == (True, 0.0)
    assert (third.allowed, third.retry_after) == (False, 1.0)
    assert (store.calls, store.reads) == (3, 0)


async def settle_once() -> None:
    for _ in range(5):
        await anyio.lowlevel.checkpoint()


async def test_two_limiters_sharing_a_store_share_the_quota(clock: FakeClock) -> None:
    store = MemoryBucketStore()
    first = RateLimiter(rate=1.0, burst=2, max_wait=0, store=store, clock=clock)
    second = RateLimiter(rate=1.0, burst=2, max_wait=0, store=store, clock=clock)
    await first.acquire("tenant-1")
    await second.acquire("tenant-1")
    with pytest.raises(RateLimitedError):
        await first.acquire("tenant-1")


# -- event loops, snapshots, options ----------------------------------------------------------


def test_one_instance_serves_successive_event_loops() -> None:
    """Created outside any loop; waits under two asyncio.run() calls, then under trio."""
    trio = pytest.importorskip("trio")
    from trio.testing import MockClock

    limiter = RateLimiter(rate=10.0, burst=2, max_wait=5.0)

    async def contended(clock: resilient.extend.Clock | None) -> int:
        pipeline = Pipeline(limiter, clock=clock)
        done = 0

        async def work() -> None:
            nonlocal done
            done += 1

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(pipeline.call, work)
        return done

    assert asyncio.run(contended(FakeClock())) == 6
    assert asyncio.run(contended(FakeClock())) == 6  # this clock starts over at 0
    assert trio.run(contended, None, clock=MockClock(autojump_threshold=0)) == 6
    assert limiter.snapshot(now=0).waiting == 0


def test_snapshot_works_outside_an_event_loop() -> None:
    """Telemetry may read gauges from a thread with no event loop (a metrics exporter)."""
    limiter = RateLimiter(rate=5.0, burst=3)
    snapshot = limiter.snapshot()
    assert (snapshot.tokens, snapshot.rate, snapshot.burst) == (3, 5.0, 3)
    assert (snapshot.waiting, snapshot.keys) == (0, 0)
    assert limiter.snapshot(now=12.0).tokens == 3


def test_snapshot_reports_unknown_tokens_when_the_clock_cannot_be_read() -> None:
    class NoClock:
        def now(self) -> float:
            raise RuntimeError("no event loop in this thread")

    limiter = RateLimiter(rate=5.0, burst=3, clock=NoClock())  # type: ignore[arg-type]
    assert math.isnan(limiter.snapshot().tokens)
    assert limiter.snapshot(now=1.0).tokens == 3


@given(
    steps=st.lists(
        st.tuples(st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.37, 1.0, 3600.0]), st.booleans()),
        max_size=40,
    )
)
@settings(max_examples=60, deadline=None)
def test_inline_fast_paths_agree_with_the_reference_arithmetic(
    steps: list[tuple[float, bool]],
) -> None:
    """Pipeline and ``async with`` fast paths step the bucket exactly like bucket_take."""
    clock = FakeClock(start=1000.0)
    limiter = RateLimiter(rate=10.0, burst=3, max_wait=0, clock=clock)
    pipeline = Pipeline(limiter, clock=clock)

    async def admit(through_pipeline: bool) -> None:
        if through_pipeline:
            await pipeline.call(noop)
        else:
            async with limiter:
                pass

    async def main() -> None:
        state = -math.inf
        for dt, through_pipeline in steps:
            clock.advance(dt)
            expected, wait = bucket_take(state, clock.now(), 1.0, 10.0, 3.0)
            if wait == 0.0:
                await admit(through_pipeline)
            else:
                with pytest.raises(RateLimitedError) as info:
                    await admit(through_pipeline)
                assert info.value.retry_after == wait
            state = expected
            assert limiter._full_at == state

    anyio.run(main)


@pytest.mark.parametrize(
    ("options", "parameter", "value"),
    [
        ({"rate": 0}, "RateLimiter.rate", 0),
        ({"rate": -1.0}, "RateLimiter.rate", -1.0),
        ({"rate": math.inf}, "RateLimiter.rate", math.inf),
        ({"rate": "100"}, "RateLimiter.rate", "100"),
        ({"burst": 0.5}, "RateLimiter.burst", 0.5),
        ({"burst": 0}, "RateLimiter.burst", 0),
        ({"max_wait": -0.5}, "RateLimiter.max_wait", -0.5),
        ({"cost": 0}, "RateLimiter.cost", 0),
        ({"cost": 21}, "RateLimiter.cost", 21),
        ({"per_key": 1}, "RateLimiter.per_key", 1),
        ({"max_keys": 0}, "RateLimiter.max_keys", 0),
        ({"idle_ttl": 0}, "RateLimiter.idle_ttl", 0),
        ({"store": object()}, "RateLimiter.store", None),
        ({"clock": object()}, "RateLimiter.clock", None),
        ({"name": " "}, "RateLimiter.name", " "),
    ],
)
def test_bad_options_name_the_parameter_and_value(
    options: dict[str, object], parameter: str, value: object
) -> None:
    with pytest.raises(ConfigurationError) as info:
        RateLimiter(**options)  # type: ignore[arg-type]
    assert info.value.parameter == parameter
    if value is not None:
        assert info.value.value == value
    assert parameter in str(info.value)


def test_nan_rate_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"RateLimiter\.rate=nan"):
        RateLimiter(rate=math.nan)


def test_defaults_and_read_only_options() -> None:
    limiter = RateLimiter()
    assert (limiter.rate, limiter.burst, limiter.max_wait) == (100.0, 20, 0.5)
    assert not limiter.per_key
    assert limiter.name == "rate_limiter"
    assert limiter.deadline_aware
    with pytest.raises(AttributeError):
        limiter.rate = 5.0  # type: ignore[misc]
    assert "rate=100" in repr(limiter)


async def test_deadline_ends_a_wait_in_progress_with_the_deadlines_timeout(
    clock: FakeClock,
) -> None:
    """With a shared store that keeps refusing, the call's deadline still ends the wait."""

    class Stingy(AsyncOnlyStore):
        async def take(
            self, key: str | None, cost: float, *, rate: float, burst: float, now: float
        ) -> TakeResult:
            await super().take(key, cost, rate=rate, burst=burst, now=now)
            return TakeResult(0.4, 0.0)  # another process always got there first

        async def tokens(self, key: str | None, *, rate: float, burst: float, now: float) -> float:
            return 0.0

    limiter = RateLimiter(rate=1.0, burst=1, max_wait=5.0, store=Stingy())
    pipeline = Pipeline(Timeout(1.0, name="total"), limiter, Timeout(9.0), clock=clock)
    with pytest.raises(TimeoutExceeded) as info:
        await pipeline.call(noop)
    assert info.value.policy == "total"
    assert clock.now() <= 1.0


def test_try_acquire_nowait_decides_synchronously_with_header_numbers() -> None:
    """One synchronous decision: allowed, retry_after and remaining, for a key."""
    clock = FakeClock(start=100.0)
    limiter = RateLimiter(rate=2.0, burst=2, max_wait=0, clock=clock)
    first = limiter.try_acquire_nowait("client")
    assert first is not None
    assert first.allowed
    assert first.remaining == 1.0
    second = limiter.try_acquire_nowait("client")
    assert second is not None
    assert second.allowed
    assert second.remaining == 0.0
    third = limiter.try_acquire_nowait("client")
    assert third is not None
    assert not third.allowed
    assert third.retry_after == pytest.approx(0.5)
    assert third.remaining == 0.0
    assert third.reset == pytest.approx(1.0)
    other = limiter.try_acquire_nowait("other")  # another key has its own bucket
    assert other is not None
    assert other.allowed
    clock.advance(0.5)
    again = limiter.try_acquire_nowait("client", now=clock.now())
    assert again is not None
    assert again.allowed


async def test_try_acquire_nowait_and_the_pipeline_share_one_bucket(clock: FakeClock) -> None:
    limiter = RateLimiter(rate=1.0, burst=2, max_wait=0)
    pipeline = Pipeline(limiter, clock=clock)
    await pipeline.call(noop)
    status = limiter.try_acquire_nowait(now=clock.now())
    assert status is not None
    assert status.allowed
    assert status.remaining == 0.0
    with pytest.raises(RateLimitedError):
        await pipeline.call(noop)


async def test_try_acquire_nowait_leaves_an_asynchronous_store_to_try_acquire() -> None:
    class SlowStore:
        def __init__(self) -> None:
            self.inner = MemoryBucketStore()

        async def take(
            self, key: str | None, cost: float, *, rate: float, burst: float, now: float
        ) -> float:
            return await self.inner.take(key, cost, rate=rate, burst=burst, now=now)

        async def tokens(self, key: str | None, *, rate: float, burst: float, now: float) -> float:
            return await self.inner.tokens(key, rate=rate, burst=burst, now=now)

    limiter = RateLimiter(rate=1.0, burst=1, max_wait=0, store=SlowStore(), clock=FakeClock())
    assert limiter.try_acquire_nowait("k") is None
    assert (await limiter.try_acquire("k")).allowed
    refused = await limiter.try_acquire("k")
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(1.0)


async def test_try_acquire_nowait_refuses_while_callers_queue_for_the_bucket() -> None:
    clock = ManualClock()
    limiter = RateLimiter(rate=1.0, burst=1, max_wait=10.0, clock=clock)  # type: ignore[arg-type]
    await limiter.acquire("busy")
    async with anyio.create_task_group() as tg:
        tg.start_soon(limiter.acquire, "busy")
        await until(lambda: limiter.snapshot("busy").waiting == 1)
        clock.advance(1.0)  # the token is back, but the queued caller owns it
        status = limiter.try_acquire_nowait("busy")
        assert status is not None
        assert not status.allowed
        assert status.retry_after == pytest.approx(1.0)  # after the queue ahead
        await clock.run_until(lambda: limiter.snapshot("busy").waiting == 0, step=0.5)


async def test_admission_paths_mixed_at_random_step_one_bucket_exactly() -> None:
    """A long-lived limiter: try_acquire_nowait, try_acquire, async with and pipeline calls,
    keyed and unkeyed, interleaved with time passing: every decision is the reference
    arithmetic's, per key."""
    rng = random.Random(21)
    clock = FakeClock(start=50.0)
    limiter = RateLimiter(rate=5.0, burst=3, max_wait=0, per_key=True, clock=clock)
    pipeline = Pipeline(limiter, clock=clock, telemetry=False)
    model: dict[str | None, float] = {}
    for _ in range(600):
        clock.advance(rng.choice((0.0, 0.0, 0.05, 0.1, 0.35, 1.0)))
        key = rng.choice((None, "a", "b"))
        cost = rng.choice((1.0, 1.0, 2.0))
        path = rng.randrange(4)
        state, wait = bucket_take(model.get(key, -math.inf), clock.now(), cost, 5.0, 3.0)
        if path == 0:
            status = limiter.try_acquire_nowait(key, cost=cost)
            assert status is not None
            allowed, retry_after = status.allowed, status.retry_after
        elif path == 1:
            status = await limiter.try_acquire(key, cost=cost)
            allowed, retry_after = status.allowed, status.retry_after
        elif path == 2 and key is None and cost == 1.0:
            try:
                async with limiter:
                    pass
                allowed, retry_after = True, 0.0
            except RateLimitedError as exc:
                allowed, retry_after = False, exc.retry_after or 0.0
        else:
            try:
                if cost == 1.0:  # the pipeline's calls cost the limiter's configured 1 token
                    await pipeline.run(pipeline.context(noop, key=key))
                else:
                    await limiter.acquire(key, cost=cost)
                allowed, retry_after = True, 0.0
            except RateLimitedError as exc:
                allowed, retry_after = False, exc.retry_after or 0.0
        assert allowed == (wait == 0.0), (key, cost, path)
        assert retry_after == pytest.approx(wait)
        model[key] = state

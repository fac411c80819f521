"""CircuitBreaker.reconfigure and RateLimiter.reconfigure: new settings, the same state."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import pytest

from resilient import (
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    Pipeline,
    RateLimitedError,
    RateLimiter,
)
from resilient.events import CircuitStateChanged
from resilient.testing import EventRecorder, FakeClock


async def fail() -> None:
    raise ConnectionError("down")


async def ok() -> str:
    return "ok"


async def _calls(pipeline: Pipeline, fn: Any, n: int) -> None:
    for _ in range(n):
        with contextlib.suppress(ConnectionError, CircuitOpenError):
            await pipeline.call(fn)


async def test_an_open_breaker_stays_open_with_new_thresholds(clock: FakeClock) -> None:
    events = EventRecorder()
    old = CircuitBreaker(
        minimum_calls=4, open_for=30.0, open_jitter=0.0, max_waiting=0, listeners=[events]
    )
    await _calls(Pipeline(old, clock=clock), fail, 4)
    assert old.snapshot().state == "open"
    until = old.snapshot().open_until
    new = old.reconfigure(failure_rate=0.9, minimum_calls=50)
    assert (new.failure_rate, new.minimum_calls) == (0.9, 50)
    assert new.open_for == 30.0  # options not given keep their values
    snapshot = new.snapshot()
    assert (snapshot.state, snapshot.open_until, snapshot.trips) == ("open", until, 1)
    with pytest.raises(CircuitOpenError):
        await Pipeline(new, clock=clock).call(ok)
    clock.advance(30.0)
    assert await Pipeline(new, clock=clock).call(ok) == "ok"  # the probe closes it
    assert new.snapshot().state == "closed"
    assert [e.state for e in events.of_type(CircuitStateChanged)] == [
        "open",
        "half_open",
        "closed",
    ]  # the listeners came along


async def test_the_window_carries_over_and_new_thresholds_judge_it(clock: FakeClock) -> None:
    old = CircuitBreaker(failure_rate=0.8, minimum_calls=10)
    pipeline = Pipeline(old, clock=clock)
    await _calls(pipeline, fail, 6)
    await _calls(pipeline, ok, 4)
    assert (old.snapshot().calls, old.snapshot().failures) == (10, 6)
    assert old.snapshot().state == "closed"  # 60 % < 80 %
    new = old.reconfigure(failure_rate=0.5)
    assert (new.snapshot().calls, new.snapshot().failures) == (10, 6)
    await _calls(Pipeline(new, clock=clock), fail, 1)  # 7 of 11 >= 50 %: opens
    assert new.snapshot().state == "open"


async def test_calls_admitted_before_count_in_the_shared_window(clock: FakeClock) -> None:
    """A call admitted by the old breaker that ends after the handover is still recorded."""
    old = CircuitBreaker(minimum_calls=50)
    started = anyio.Event()
    release = anyio.Event()

    async def slow_failure() -> None:
        started.set()
        await release.wait()
        raise ConnectionError("late")

    new: CircuitBreaker | None = None

    async def straggler() -> None:
        with pytest.raises(ConnectionError):
            await Pipeline(old, clock=clock).call(slow_failure)

    async with anyio.create_task_group() as tg:
        tg.start_soon(straggler)
        await started.wait()
        new = old.reconfigure(minimum_calls=40)
        release.set()
    assert new is not None
    assert (new.snapshot().calls, new.snapshot().failures) == (1, 1)


async def test_a_new_window_shape_keeps_the_state_and_empties_the_window(
    clock: FakeClock,
) -> None:
    old = CircuitBreaker(minimum_calls=4, open_for=30.0, open_jitter=0.0)
    await _calls(Pipeline(old, clock=clock), fail, 4)
    new = old.reconfigure(window=60.0, minimum_calls=4)
    assert new.snapshot().state == "open"
    assert new.snapshot().calls == 0
    clock.advance(30.0)
    assert await Pipeline(new, clock=clock).call(ok) == "ok"
    assert new.snapshot().state == "closed"
    counted = old.reconfigure(window_type="count", window=10, minimum_calls=4)
    assert counted.snapshot().state == "open"


async def test_keyed_states_carry_over(clock: FakeClock) -> None:
    old = CircuitBreaker(minimum_calls=2, open_for=30.0)
    pipeline = Pipeline(old, clock=clock)
    for _ in range(2):
        ctx = pipeline.context(fail, key="bad.example")
        with pytest.raises(ConnectionError):
            await pipeline.run(ctx)
        await pipeline.run(pipeline.context(ok, key="good.example"))
    new = old.reconfigure(failure_rate=0.6, max_keys=10)
    assert new.snapshot("bad.example").state == "open"
    assert new.snapshot("good.example").state == "closed"
    assert new.snapshot("good.example").calls == 2
    assert new.max_keys == 10


def test_unknown_or_invalid_options_leave_the_breaker_unchanged() -> None:
    old = CircuitBreaker(failure_rate=0.5)
    with pytest.raises(ConfigurationError, match=r"CircuitBreaker\.reconfigure\.failure_rat"):
        old.reconfigure(failure_rat=0.2)
    with pytest.raises(ConfigurationError, match=r"CircuitBreaker\.failure_rate"):
        old.reconfigure(failure_rate=1.5)
    assert old.failure_rate == 0.5


async def test_limiter_tokens_survive_a_rate_change(clock: FakeClock) -> None:
    old = RateLimiter(rate=1.0, burst=10, max_wait=0.0, clock=clock)
    pipeline = Pipeline(old, clock=clock)
    for _ in range(8):
        await pipeline.call(ok)
    assert old.snapshot().tokens == pytest.approx(2.0)
    new = old.reconfigure(rate=5.0)
    assert new.rate == 5.0
    assert new.burst == 10.0
    assert new.snapshot().tokens == pytest.approx(2.0)
    clock.advance(1.0)
    assert new.snapshot().tokens == pytest.approx(7.0)


async def test_limiter_tokens_are_capped_by_a_smaller_burst(clock: FakeClock) -> None:
    old = RateLimiter(rate=1.0, burst=10, max_wait=0.0, clock=clock)
    new = old.reconfigure(burst=3)
    assert new.snapshot().tokens == pytest.approx(3.0)
    pipeline = Pipeline(new, clock=clock)
    for _ in range(3):
        await pipeline.call(ok)
    with pytest.raises(RateLimitedError):
        await pipeline.call(ok)


async def test_keyed_limiter_buckets_carry_over(clock: FakeClock) -> None:
    old = RateLimiter(rate=1.0, burst=4, max_wait=0.0, per_key=True, clock=clock)
    for _ in range(3):
        await old.acquire("tenant-a")
    await old.acquire("tenant-b")
    new = old.reconfigure(rate=2.0, now=clock.now())
    assert new.snapshot("tenant-a").tokens == pytest.approx(1.0)
    assert new.snapshot("tenant-b").tokens == pytest.approx(3.0)
    assert new.snapshot("tenant-c").tokens == pytest.approx(4.0)
    clock.advance(0.5)
    assert new.snapshot("tenant-a").tokens == pytest.approx(2.0)


def test_limiter_refuses_unknown_options() -> None:
    old = RateLimiter(rate=1.0)
    with pytest.raises(ConfigurationError, match=r"RateLimiter\.reconfigure\.rat"):
        old.reconfigure(rat=2.0)
    with pytest.raises(ConfigurationError, match=r"RateLimiter\.rate"):
        old.reconfigure(rate=-1.0)

"""Timeout: own deadlines raise TimeoutExceeded, everything else passes through untouched."""

from __future__ import annotations

import math

import anyio
import pytest

import resilient
from resilient import Pipeline, Timeout, TimeoutExceeded
from resilient._clock import TimerScope
from resilient.testing import EventRecorder, FakeClock


class CountingClock:
    """A FakeClock that counts armed timers (to check one timer per attempt)."""

    def __init__(self) -> None:
        self.inner = FakeClock()
        self.armed: list[float] = []

    def now(self) -> float:
        return self.inner.now()

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)

    def timeout_at(self, deadline: float) -> TimerScope:
        self.armed.append(deadline)
        return self.inner.timeout_at(deadline)


async def test_call_within_time_returns_result(clock: FakeClock) -> None:
    async def work() -> str:
        await clock.sleep(1.0)
        return "done"

    assert await Pipeline(Timeout(2.0), clock=clock).call(work) == "done"
    assert clock.now() == 1.0


async def test_own_deadline_raises_timeout_exceeded_at_exact_time(clock: FakeClock) -> None:
    async def work() -> None:
        await clock.sleep(5.0)

    with pytest.raises(TimeoutExceeded) as info:
        await Pipeline(Timeout(2.0, name="attempt"), clock=clock).call(work)
    assert clock.now() == 2.0
    assert info.value.policy == "attempt"
    assert info.value.timeout == 2.0
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, resilient.RejectedError)


async def test_users_own_timeout_error_passes_through(clock: FakeClock) -> None:
    async def work() -> None:
        raise TimeoutError("the database said so")

    with pytest.raises(TimeoutError, match="the database said so") as info:
        await Pipeline(Timeout(2.0), clock=clock).call(work)
    assert not isinstance(info.value, TimeoutExceeded)


async def test_outer_cancellation_stays_a_cancellation() -> None:
    # A real clock here: the outer scope's cancellation must not become TimeoutExceeded,
    # even though the Timeout's scope is active when it arrives.
    reached = anyio.Event()

    async def work() -> None:
        reached.set()
        await anyio.sleep_forever()

    pipeline = Pipeline(Timeout(60.0))
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:

            async def cancel_when_reached() -> None:
                await reached.wait()
                scope.cancel()

            tg.start_soon(cancel_when_reached)
            await pipeline.call(work)
    assert scope.cancelled_caught


async def test_deadline_is_visible_inside_the_call(clock: FakeClock) -> None:
    async def work() -> float:
        await clock.sleep(0.5)
        return resilient.remaining()

    assert await Pipeline(Timeout(2.0), clock=clock).call(work) == pytest.approx(1.5)
    assert resilient.remaining() == math.inf


async def test_tighter_outer_deadline_wins_and_names_the_outer_policy(clock: FakeClock) -> None:
    async def work() -> None:
        await clock.sleep(10.0)

    pipeline = Pipeline(Timeout(1.0, name="total"), Timeout(5.0, name="attempt"), clock=clock)
    with pytest.raises(TimeoutExceeded) as info:
        await pipeline.call(work)
    assert clock.now() == 1.0
    assert info.value.policy == "total"
    assert info.value.timeout == 1.0


async def test_tighter_inner_deadline_wins(clock: FakeClock) -> None:
    async def work() -> None:
        await clock.sleep(10.0)

    pipeline = Pipeline(Timeout(5.0, name="total"), Timeout(1.0, name="attempt"), clock=clock)
    with pytest.raises(TimeoutExceeded) as info:
        await pipeline.call(work)
    assert clock.now() == 1.0
    assert info.value.policy == "attempt"


async def test_outer_timeout_arms_no_timer_when_an_inner_one_exists() -> None:
    clock = CountingClock()

    async def work() -> str:
        return "ok"

    pipeline = Pipeline(Timeout(1.0), Timeout(5.0), clock=clock)  # type: ignore[arg-type]
    assert await pipeline.call(work) == "ok"
    assert clock.armed == [1.0]  # one timer, at the tighter deadline


async def test_outer_timeout_arms_its_own_timer_behind_an_unknown_policy() -> None:
    clock = CountingClock()

    class Passthrough:
        name = "custom"

        async def execute(
            self, call: resilient.extend.Call, ctx: resilient.extend.Context, /
        ) -> object:
            return await call(ctx)

    async def work() -> str:
        return "ok"

    pipeline = Pipeline(Timeout(1.0), Passthrough(), Timeout(5.0), clock=clock)  # type: ignore[arg-type]
    assert await pipeline.call(work) == "ok"
    assert clock.armed == [1.0, 1.0]  # a custom policy might wait: both deadlines are armed


async def test_nested_pipeline_inherits_the_tighter_deadline(clock: FakeClock) -> None:
    inner = Pipeline(Timeout(30.0, name="inner"), clock=clock)

    async def leaf() -> None:
        await clock.sleep(10.0)

    async def outer_work() -> None:
        await inner.call(leaf)

    with pytest.raises(TimeoutExceeded) as info:
        await Pipeline(Timeout(2.0, name="outer"), clock=clock).call(outer_work)
    assert clock.now() == 2.0
    assert info.value.policy == "outer"


async def test_expired_enclosing_deadline_does_not_start_the_call(clock: FakeClock) -> None:
    started = []
    inner = Pipeline(Timeout(30.0), clock=clock)

    async def leaf() -> None:
        started.append(True)

    async def outer_work() -> None:
        clock.advance(3.0)  # the outer deadline passes without a checkpoint
        await inner.call(leaf)

    with pytest.raises(TimeoutExceeded):
        await Pipeline(Timeout(2.0, name="outer"), clock=clock).call(outer_work)
    assert started == []


async def test_timeout_fired_event_names_the_policy(clock: FakeClock) -> None:
    events = EventRecorder()

    async def work() -> None:
        await clock.sleep(5.0)

    pipeline = Pipeline(Timeout(2.0, name="attempt"), clock=clock, listeners=[events])
    with pytest.raises(TimeoutExceeded):
        await pipeline.call(work)
    [fired] = events.of_type(resilient.events.TimeoutFired)
    assert (fired.policy, fired.timeout, fired.at) == ("attempt", 2.0, 2.0)


async def test_infinite_timeout_never_fires(clock: FakeClock) -> None:
    async def work() -> str:
        await clock.sleep(1e9)
        return "ok"

    assert await Pipeline(Timeout(math.inf), clock=clock).call(work) == "ok"


async def test_real_clock_timeout_fires() -> None:
    pipeline = Pipeline(Timeout(0.01))
    with pytest.raises(TimeoutExceeded):
        await pipeline.call(anyio.sleep_forever)


async def test_timeout_as_decorator(clock: FakeClock) -> None:
    timeout = Timeout(1.0)

    async def slow(seconds: float) -> float:
        await anyio.sleep(seconds)
        return seconds

    decorated = timeout(slow)
    assert await decorated(0) == 0
    assert decorated.__wrapped__ is slow  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", [0, -1, math.nan, "1", None, True, -math.inf])
def test_invalid_seconds_are_refused(bad: object) -> None:
    with pytest.raises(resilient.ConfigurationError, match=r"Timeout\.seconds"):
        Timeout(bad)  # type: ignore[arg-type]


def test_trio_mock_clock_drives_the_default_clock() -> None:
    trio = pytest.importorskip("trio")
    from trio.testing import MockClock

    async def main() -> tuple[float, float]:
        start = trio.current_time()
        with pytest.raises(TimeoutExceeded):
            await Pipeline(Timeout(30.0)).call(trio.sleep, 3600)
        return start, trio.current_time()

    start, end = trio.run(main, clock=MockClock(autojump_threshold=0))
    assert end - start == pytest.approx(30.0)

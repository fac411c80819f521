"""Clocks: the default clock on both backends, FakeClock's virtual time and recording."""

from __future__ import annotations

import anyio
import pytest

from resilient import Pipeline, Timeout
from resilient.extend import SystemClock
from resilient.testing import EventRecorder, FakeClock


async def test_system_clock_is_monotonic_and_sleeps() -> None:
    clock = SystemClock()
    before = clock.now()
    await clock.sleep(0)
    await clock.sleep(-1)  # negative sleeps are a checkpoint, not an error
    assert clock.now() >= before


async def test_system_clock_timer_fires_and_reports_expiry() -> None:
    clock = SystemClock()
    timer = clock.timeout_at(clock.now() + 0.01)
    with pytest.raises(TimeoutError):
        async with timer:
            await anyio.sleep_forever()
    assert timer.expired()


async def test_system_clock_timer_does_not_claim_a_user_timeout_error() -> None:
    clock = SystemClock()
    timer = clock.timeout_at(clock.now() + 60)
    with pytest.raises(TimeoutError):
        async with timer:
            raise TimeoutError
    assert not timer.expired()


async def test_fake_clock_records_sleeps_and_advances(clock: FakeClock) -> None:
    await clock.sleep(0.5)
    await clock.sleep(1.5)
    assert clock.sleeps == [0.5, 1.5]
    assert clock.now() == 2.0
    assert clock.slept == 2.0


async def test_fake_clock_sleep_stops_at_an_enclosing_deadline(clock: FakeClock) -> None:
    timer = clock.timeout_at(1.0)
    with pytest.raises(TimeoutError):
        async with timer:
            await clock.sleep(10.0)
    assert clock.now() == 1.0
    assert timer.expired()


async def test_fake_clock_advance_fires_a_waiting_tasks_timer(clock: FakeClock) -> None:
    outcome: list[str] = []

    async def waiter() -> None:
        try:
            async with clock.timeout_at(5.0):
                await anyio.Event().wait()
        except TimeoutError:
            outcome.append("timed out")

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0)
        await anyio.sleep(0)
        clock.advance(4.9)
        await anyio.sleep(0)
        assert outcome == []
        clock.advance(0.1)
    assert outcome == ["timed out"]


async def test_fake_clock_past_deadline_fires_immediately(clock: FakeClock) -> None:
    clock.advance(10)
    with pytest.raises(TimeoutError):
        async with clock.timeout_at(5.0):
            await anyio.sleep(0)


def test_fake_clock_refuses_negative_advance() -> None:
    with pytest.raises(ValueError, match="advance"):
        FakeClock().advance(-1)


async def test_one_pipeline_serves_successive_event_loops() -> None:
    pipeline = Pipeline(Timeout(5.0))

    async def work() -> int:
        await anyio.sleep(0)
        return 1

    assert await pipeline.call(work) == 1
    # and again on a fresh loop of each backend, from a worker thread
    for backend in ("asyncio", "trio"):
        result = await anyio.to_thread.run_sync(
            lambda b=backend: anyio.run(pipeline.call, work, backend=b)
        )
        assert result == 1


def test_event_recorder_filters_by_type() -> None:
    from resilient.events import TimeoutFired, WaitEnded

    recorder = EventRecorder()
    fired = TimeoutFired(pipeline="p", operation="o", policy="t", at=0.0, timeout=1.0)
    waited = WaitEnded(pipeline="p", operation="o", policy="b", at=0.0, waited=1.0, admitted=True)
    recorder(fired)
    recorder(waited)
    assert recorder.of_type(TimeoutFired) == [fired]
    assert list(recorder) == [fired, waited]
    recorder.clear()
    assert len(recorder) == 0

"""CircuitBreaker under concurrency: exact half-open probing, one trip, stragglers, slot release.

Every test runs on asyncio and on trio.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest

from _circuit_helpers import call, client_error, fail, make, succeed, transitions
from resilient import CircuitOpenError
from resilient.events import CircuitStateChanged
from resilient.testing import EventRecorder, FakeClock


async def _trip_and_wait(clock: FakeClock, pipeline: object, open_for: float = 5.0) -> None:
    await call(pipeline, fail)  # type: ignore[arg-type]
    clock.advance(open_for)


@pytest.mark.parametrize("half_open_calls", [1, 3])
async def test_hundred_concurrent_calls_at_half_open_reach_a_hanging_dependency_exactly_n_times(
    clock: FakeClock, half_open_calls: int
) -> None:
    breaker, pipeline = make(clock, minimum_calls=1, half_open_calls=half_open_calls)
    await _trip_and_wait(clock, pipeline)
    reached = 0
    rejected = 0
    done = anyio.Event()

    async def hanging() -> str:
        nonlocal reached
        reached += 1
        await anyio.sleep_forever()
        return "never"

    async def caller() -> None:
        nonlocal rejected
        if isinstance(await call(pipeline, hanging), CircuitOpenError):
            rejected += 1
            if rejected == 100 - half_open_calls:
                done.set()

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(caller)
        await done.wait()
        assert reached == half_open_calls
        assert breaker.snapshot().probes == half_open_calls
        tg.cancel_scope.cancel()
    # The cancelled probes were neutral and gave their slots back: never stuck half-open.
    snap = breaker.snapshot()
    assert (snap.state, snap.probes, snap.calls) == ("half_open", 0, 0)
    assert await call(pipeline, succeed) == "ok"
    if half_open_calls == 1:
        assert breaker.snapshot().state == "closed"


async def test_thousand_concurrent_failures_open_it_exactly_once(clock: FakeClock) -> None:
    events = EventRecorder()
    breaker, pipeline = make(clock, events, minimum_calls=20)
    go = anyio.Event()
    outcomes: list[object] = []

    async def failing() -> str:
        await go.wait()
        raise ConnectionError("down")

    async def caller() -> None:
        outcomes.append(await call(pipeline, failing))

    async with anyio.create_task_group() as tg:
        for _ in range(1000):
            tg.start_soon(caller)
        await anyio.wait_all_tasks_blocked()
        go.set()
    assert len(outcomes) == 1000
    assert all(isinstance(o, ConnectionError) for o in outcomes), "all were admitted"
    assert transitions(events) == [("closed", "open")]
    assert len(events.of_type(CircuitStateChanged)) == 1
    assert breaker.snapshot().calls == 20, "stragglers are not recorded while open"
    assert isinstance(await call(pipeline, succeed), CircuitOpenError)


async def test_straggler_failure_after_reclose_does_not_reopen_by_itself(
    clock: FakeClock, events: EventRecorder
) -> None:
    breaker, pipeline = make(clock, events, minimum_calls=1)
    release = anyio.Event()

    async def slow_failure() -> str:
        await release.wait()
        raise ConnectionError("late")

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, pipeline, slow_failure)  # admitted while closed
        await anyio.wait_all_tasks_blocked()
        await call(pipeline, fail)  # trips
        clock.advance(5.0)
        assert await call(pipeline, succeed) == "ok"  # probe closes it
        assert breaker.snapshot().state == "closed"
        release.set()
    snap = breaker.snapshot()
    assert snap.state == "closed", "one failure would reach minimum_calls=1, but it is stale"
    assert (snap.calls, snap.failures) == (1, 1), "it still counts in the new closed window"
    assert transitions(events) == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


async def test_straggler_success_does_not_close_an_open_breaker(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=1)
    release = anyio.Event()

    async def slow_success() -> str:
        await release.wait()
        return "late"

    results: list[object] = []

    async def straggler() -> None:
        results.append(await call(pipeline, slow_success))

    async with anyio.create_task_group() as tg:
        tg.start_soon(straggler)
        await anyio.wait_all_tasks_blocked()
        await call(pipeline, fail)
        assert breaker.snapshot().state == "open"
        release.set()
    assert results == ["late"]
    snap = breaker.snapshot()
    assert (snap.state, snap.calls, snap.failures) == ("open", 1, 1)


async def test_straggler_probe_from_an_earlier_half_open_cannot_close_it(
    clock: FakeClock,
) -> None:
    breaker, pipeline = make(clock, minimum_calls=1, max_half_open=1.0)
    await _trip_and_wait(clock, pipeline)
    release_first = anyio.Event()
    release_second = anyio.Event()

    async def first_probe() -> str:
        await release_first.wait()
        return "first"

    async def second_probe() -> str:
        await release_second.wait()
        return "second"

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, pipeline, first_probe)
        await anyio.wait_all_tasks_blocked()
        clock.advance(1.0)  # the probe did not answer within max_half_open
        assert isinstance(await call(pipeline, succeed), CircuitOpenError)  # reopens
        clock.advance(10.0)  # second trip: open for 10 s
        tg.start_soon(call, pipeline, second_probe)
        await anyio.wait_all_tasks_blocked()
        assert breaker.snapshot().probes == 1
        release_first.set()  # the old probe succeeds: stale
        await anyio.wait_all_tasks_blocked()
        snap = breaker.snapshot()
        assert (snap.state, snap.probes, snap.calls) == ("half_open", 1, 0)
        assert isinstance(await call(pipeline, succeed), CircuitOpenError)
        release_second.set()
    assert breaker.snapshot().state == "closed"


class Abort(BaseException):
    """Not an Exception: like KeyboardInterrupt or SystemExit."""


async def _end_with_success() -> str:
    return "ok"


async def _end_with_base_exception() -> str:
    raise Abort


@pytest.mark.parametrize(
    ("ending", "state_after"),
    [
        ("success", "closed"),
        ("failure", "open"),
        ("client_error", "half_open"),
        ("cancellation", "half_open"),
        ("base_exception", "half_open"),
    ],
)
async def test_probe_slot_is_released_however_the_probe_ends(
    clock: FakeClock, ending: str, state_after: str
) -> None:
    breaker, pipeline = make(clock, minimum_calls=1)
    await _trip_and_wait(clock, pipeline)
    if ending == "cancellation":
        with anyio.CancelScope() as scope:

            async def cancelled() -> str:
                scope.cancel()
                await anyio.sleep_forever()
                return "never"

            await call(pipeline, cancelled)
        assert scope.cancelled_caught
    elif ending == "base_exception":
        with pytest.raises(Abort):
            await call(pipeline, _end_with_base_exception)
    else:
        fn: Callable[[], Awaitable[str]] = {
            "success": succeed,
            "failure": fail,
            "client_error": client_error,
        }[ending]
        await call(pipeline, fn)
    snap = breaker.snapshot()
    assert (snap.state, snap.probes) == (state_after, 0)
    if state_after == "half_open":
        # The slot is free again: the next call is admitted as a probe and decides.
        assert await call(pipeline, succeed) == "ok"
        assert breaker.snapshot().state == "closed"


async def test_cancelled_calls_while_closed_are_neutral(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=1)

    async def hang() -> str:
        await anyio.sleep_forever()
        return "never"

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(call, pipeline, hang)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    snap = breaker.snapshot()
    assert (snap.state, snap.calls) == ("closed", 0)


async def test_reset_during_a_probe_renews_the_slots(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=1)
    await _trip_and_wait(clock, pipeline)
    release = anyio.Event()

    async def probe() -> str:
        await release.wait()
        raise ConnectionError("still down")

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, pipeline, probe)
        await anyio.wait_all_tasks_blocked()
        breaker.reset()
        assert breaker.snapshot().probes == 0
        release.set()
    snap = breaker.snapshot()
    assert (snap.state, snap.calls) == ("closed", 0), "a stale probe's failure is not recorded"

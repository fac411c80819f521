"""The default clock's coalesced timers on asyncio (lanes of scopes sharing one loop timer).

These run on asyncio only (trio has its own deadlines) and use short real timeouts: each test
asserts which scopes expired and in what order, never how long anything took.
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import threading
import time
import weakref

import pytest

from resilient import Pipeline, Timeout, TimeoutExceeded
from resilient.extend import SystemClock

clock = SystemClock()


async def _hang() -> None:
    await asyncio.Event().wait()


async def _quick() -> str:
    await asyncio.sleep(0)
    return "ok"


def _lanes() -> list[object]:
    loop = asyncio.get_running_loop()
    return getattr(loop, "_resilient_timer_lanes", [])


def test_concurrent_scopes_of_one_length_expire_exactly_when_they_hang() -> None:
    async def main() -> tuple[list[str], int]:
        pipeline = Pipeline(Timeout(0.05), telemetry=False)

        async def one(i: int) -> str:
            try:
                return await pipeline.call(_hang if i % 2 else _quick)
            except TimeoutExceeded:
                return "timeout"

        outcomes = await asyncio.gather(*(one(i) for i in range(200)))
        return outcomes, len(_lanes())

    outcomes, lanes = asyncio.run(main())
    assert outcomes == ["ok" if i % 2 == 0 else "timeout" for i in range(200)]
    assert lanes == 1  # 200 scopes of one length shared one lane (and one loop timer)


def test_a_shorter_timeout_entered_later_still_fires_first() -> None:
    async def main() -> list[str]:
        finished: list[str] = []
        long, short = Pipeline(Timeout(0.3)), Pipeline(Timeout(0.03))

        async def one(pipeline: Pipeline, label: str) -> None:
            with pytest.raises(TimeoutExceeded):
                await pipeline.call(_hang)
            finished.append(label)

        async with asyncio.timeout(10):  # a lost timer fails the test instead of hanging it
            await asyncio.gather(
                *(one(long, "long") for _ in range(5)), *(one(short, "short") for _ in range(5))
            )
        return finished

    assert asyncio.run(main()) == ["short"] * 5 + ["long"] * 5


def test_an_emptied_lane_rearms_for_an_earlier_deadline() -> None:
    async def main() -> None:
        # A 60 s scope leaves its lane empty with the lane's timer still set 60 s out; a 20 ms
        # scope then takes that lane and must not wait for the stale timer.
        assert await Pipeline(Timeout(60.0)).call(_quick) == "ok"
        async with asyncio.timeout(10):
            with pytest.raises(TimeoutExceeded):
                await Pipeline(Timeout(0.02)).call(_hang)

    asyncio.run(main())


def test_deadlines_in_falling_order_open_lanes_then_own_timers_and_all_fire_in_order() -> None:
    async def main() -> tuple[list[int], int]:
        fired: list[int] = []

        async def one(i: int) -> None:
            # Entered in order i = 0..11 with deadlines falling: none fits an existing lane.
            timer = clock.timeout_at(clock.now() + 0.02 + 0.01 * (12 - i))
            with pytest.raises(TimeoutError):
                async with timer:
                    await _hang()
            assert timer.expired()
            fired.append(i)

        async with asyncio.timeout(10):
            await asyncio.gather(*(one(i) for i in range(12)))
        return fired, len(_lanes())

    fired, lanes = asyncio.run(main())
    assert fired == list(range(11, -1, -1))  # earliest deadline first
    assert lanes == 8  # the lane limit; the other four scopes had loop timers of their own


def test_nested_scopes_in_one_lane_report_the_inner_expiry() -> None:
    async def main() -> None:
        inner = Pipeline(Timeout(0.02, name="inner"))
        outer = Pipeline(Timeout(0.5, name="outer"))

        async def nested() -> None:
            await inner.call(_hang)

        with pytest.raises(TimeoutExceeded) as caught:
            await outer.call(nested)
        assert caught.value.policy == "inner"

    asyncio.run(main())


def test_an_outer_cancellation_of_a_laned_scope_stays_a_cancellation() -> None:
    async def main() -> int:
        pipeline = Pipeline(Timeout(60.0))
        tasks = [asyncio.ensure_future(pipeline.call(_hang)) for _ in range(3)]
        await asyncio.sleep(0)
        tasks[1].cancel()
        with pytest.raises(asyncio.CancelledError):
            await tasks[1]
        for task in (tasks[0], tasks[2]):  # the others are still timed, and still running
            assert not task.done()
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return sum(len(lane.timers) for lane in _lanes())  # type: ignore[attr-defined]

    assert asyncio.run(main()) == 0  # every scope left its lane


def test_a_scope_that_exits_early_leaves_the_lane_and_is_never_cancelled() -> None:
    async def main() -> int:
        pipeline = Pipeline(Timeout(0.02))
        for _ in range(50):
            assert await pipeline.call(_quick) == "ok"
        await asyncio.sleep(0.05)  # past every deadline: the lane fires with nothing to do
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    assert asyncio.run(main()) == 0


def test_lanes_go_away_with_their_event_loop() -> None:
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def main() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        assert await Pipeline(Timeout(60.0)).call(_quick) == "ok"  # leaves a lane timer armed
        assert _lanes()

    asyncio.run(main())
    gc.collect()
    assert loops[0]() is None


def test_an_infinite_deadline_arms_nothing_and_leaves_the_lanes_to_finite_ones() -> None:
    async def main() -> tuple[int, str]:
        forever = asyncio.ensure_future(Pipeline(Timeout(math.inf)).call(_hang))
        await asyncio.sleep(0)
        short = Pipeline(Timeout(0.02))
        for _ in range(3):  # each joins the one lane an infinite scope would otherwise block
            with pytest.raises(TimeoutExceeded):
                await short.call(_hang)
        lanes = len(_lanes())
        forever.cancel()
        outcome = "cancelled"
        try:
            await forever
        except asyncio.CancelledError:
            pass
        else:  # pragma: no cover - the assertion below reports it
            outcome = "finished"
        return lanes, outcome

    assert asyncio.run(main()) == (1, "cancelled")


def test_an_armed_lane_timer_holds_no_reference_to_the_call_that_armed_it() -> None:
    class Payload:
        pass

    async def main() -> bool:
        async def work(payload: Payload) -> str:
            return "ok"

        payload = Payload()
        ref = weakref.ref(payload)
        assert await Pipeline(Timeout(60.0)).call(work, payload) == "ok"
        assert any(lane.handle is not None for lane in _lanes())  # type: ignore[attr-defined]
        del payload
        gc.collect()
        return ref() is None

    assert asyncio.run(main())


def test_timers_fire_on_the_right_loop_across_successive_loops_and_threads() -> None:
    pipeline = Pipeline(Timeout(0.02))

    async def main() -> str:
        async with asyncio.timeout(10):  # a timer armed on the wrong loop fails, not hangs
            with pytest.raises(TimeoutExceeded):
                await pipeline.call(_hang)
            assert await pipeline.call(_quick) == "ok"
        return "done"

    # Successive loops on this thread: the first loop stopped, the second must be used.
    assert asyncio.run(main()) == "done"
    assert asyncio.run(main()) == "done"

    # Loops running at the same time on several threads: each arms its timers on its own loop.
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                results.append(asyncio.run(main()))
        except BaseException as exc:  # pragma: no cover - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert (errors, results) == ([], ["done"] * 15)


def test_random_mix_of_lengths_completions_and_cancellations_ends_with_empty_lanes() -> None:
    """500 calls with 12 timeout lengths (more than the lane limit), some finishing early, some
    hanging past their deadline, some cancelled from outside: each ends the way it must."""
    rng = random.Random(1127)

    async def main() -> tuple[list[tuple[str, str]], int]:
        lengths = [0.01 + 0.005 * i for i in range(12)]
        plans = [(rng.choice(lengths), rng.choice(("quick", "hang", "cancel"))) for _ in range(500)]

        async def one(seconds: float, plan: str) -> str:
            try:
                await Pipeline(Timeout(seconds), telemetry=False).call(
                    _quick if plan == "quick" else _hang
                )
            except TimeoutExceeded:
                return "timeout"
            return "ok"

        tasks = [asyncio.ensure_future(one(seconds, plan)) for seconds, plan in plans]
        await asyncio.sleep(0)  # every call has entered its timer
        for task, (_, plan) in zip(tasks, plans, strict=True):
            if plan == "cancel":
                task.cancel()
        async with asyncio.timeout(10):
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        seen = [
            (plan, "cancelled" if isinstance(out, asyncio.CancelledError) else str(out))
            for (_, plan), out in zip(plans, outcomes, strict=True)
        ]
        left = sum(len(lane.timers) for lane in _lanes())  # type: ignore[attr-defined]
        return seen, left

    seen, left = asyncio.run(main())
    expected = {"quick": "ok", "hang": "timeout", "cancel": "cancelled"}
    assert [outcome for _, outcome in seen] == [expected[plan] for plan, _ in seen]
    assert left == 0


def _early_fires_and_arms(run: object, monkeypatch: pytest.MonkeyPatch) -> tuple[float, int, int]:
    """Run 40 timed-out scopes; how early the worst fired, how many lane timers were armed."""
    from resilient import _clock

    arms = 0
    original = _clock._Lane.arm

    def counting_arm(self: object, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        nonlocal arms
        arms += 1
        original(self, loop, deadline)  # type: ignore[arg-type]

    monkeypatch.setattr(_clock._Lane, "arm", counting_arm)
    early: list[float] = []

    async def main() -> None:
        for i in range(40):
            deadline = clock.now() + 0.004 + i * 0.0001
            try:
                async with clock.timeout_at(deadline):
                    await asyncio.sleep(1)
            except TimeoutError:
                early.append(deadline - time.monotonic())

    run(main())  # type: ignore[operator]
    return max(early), arms, len(early)


def test_timers_never_fire_early_nor_rearm_on_the_default_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worst, arms, fired = _early_fires_and_arms(asyncio.run, monkeypatch)
    assert fired == 40
    assert worst <= 0.0  # no scope expired before its deadline
    assert arms <= 40 + 2  # one loop timer per scope here (each lane empties in between)


def test_timers_never_fire_early_nor_rearm_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop's cached millisecond clock once made lane timers fire early and re-arm ~20x."""
    uvloop = pytest.importorskip("uvloop")
    worst, arms, fired = _early_fires_and_arms(uvloop.run, monkeypatch)
    assert fired == 40
    assert worst <= 0.0
    assert arms <= 40 + 2


def test_call_at_runs_callbacks_at_their_deadlines_in_order_and_cancel_stops_one() -> None:
    from resilient.timers import call_at, current_loop

    async def main() -> tuple[list[str], list[bool], int]:
        assert current_loop() is asyncio.get_running_loop()
        fired: list[str] = []
        now = clock.now()
        timers = [
            call_at(now + 0.02, lambda: fired.append("b")),
            call_at(now + 0.01, lambda: fired.append("a")),  # earlier, entered later
            call_at(now + 0.03, lambda: fired.append("cancelled")),
            call_at(now + 0.04, lambda: fired.append("c")),
            call_at(math.inf, lambda: fired.append("never")),
        ]
        timers[2].cancel()
        timers[2].cancel()  # idempotent
        await asyncio.sleep(0.08)
        timers[0].cancel()  # after it fired: nothing happens
        return fired, [t.fired for t in timers], sum(len(lane.timers) for lane in _lanes())  # type: ignore[attr-defined]

    fired, flags, left = asyncio.run(main())
    assert fired == ["a", "b", "c"]
    assert flags == [True, True, False, True, False]
    assert left == 0


def test_call_at_on_uvloop_never_fires_before_the_deadline() -> None:
    uvloop = pytest.importorskip("uvloop")
    from resilient.timers import call_at

    async def main() -> list[float]:
        lateness: list[float] = []
        done = asyncio.Event()
        for i in range(30):
            deadline = time.monotonic() + 0.002 + i * 0.0003
            call_at(deadline, lambda d=deadline: lateness.append(time.monotonic() - d))  # type: ignore[misc]
        call_at(time.monotonic() + 0.05, done.set)
        await done.wait()
        return lateness

    lateness = uvloop.run(main())
    assert len(lateness) == 30
    assert min(lateness) >= 0.0


def test_call_at_refuses_to_run_without_an_asyncio_loop() -> None:
    import trio

    from resilient.timers import call_at, current_loop

    async def main() -> None:
        assert current_loop() is None
        with pytest.raises(RuntimeError, match="asyncio event loop"):
            call_at(1.0, lambda: None)

    trio.run(main)

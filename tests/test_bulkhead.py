"""Bulkhead: bounded concurrency, a bounded FIFO waiting room, no slot ever lost or duplicated."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random

import anyio
import anyio.lowlevel
import pytest

import resilient
from _limits_helpers import CountingClock, settle, until
from resilient import (
    Bulkhead,
    BulkheadFullError,
    ConfigurationError,
    Pipeline,
    Timeout,
    TimeoutExceeded,
)
from resilient.events import CallRejected, WaitEnded
from resilient.extend import BulkheadSnapshot
from resilient.testing import EventRecorder, FakeClock


class Gate:
    """Calls that block until released, recording how many run at once."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.running = 0
        self.peak = 0
        self.entered: list[str] = []

    async def __call__(self, name: str = "") -> str:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.entered.append(name)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return name


async def test_uncontended_call_holds_a_slot_only_while_it_runs(clock: FakeClock) -> None:
    bulkhead = Bulkhead(max_concurrent=2)
    seen: list[BulkheadSnapshot] = []

    async def work() -> str:
        seen.append(bulkhead.snapshot())
        return "ok"

    assert await Pipeline(bulkhead, clock=clock).call(work) == "ok"
    assert seen[0].running == 1
    assert bulkhead.snapshot() == BulkheadSnapshot(
        running=0, waiting=0, max_concurrent=2, max_waiting=64
    )


async def test_uncontended_path_is_not_a_checkpoint_and_allocates_no_waiters() -> None:
    """A free slot is taken without yielding: even a cancelled scope lets the call through."""
    bulkhead = Bulkhead(max_concurrent=1)

    async def work() -> int:
        return 1

    pipeline = Pipeline(bulkhead)
    with anyio.CancelScope() as scope:
        scope.cancel()
        assert await pipeline.call(work) == 1
    assert bulkhead._slots.waiters is None  # the waiting room is created on first contention


async def test_at_most_max_concurrent_calls_run_at_once(clock: FakeClock) -> None:
    bulkhead = Bulkhead(max_concurrent=3, max_waiting=10, max_wait=math.inf)
    pipeline = Pipeline(bulkhead, clock=clock)
    gate = Gate()
    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(pipeline.call, gate, str(i))
        await until(lambda: bulkhead.snapshot().waiting == 5)
        assert gate.running == 3
        gate.release.set()
    assert gate.peak == 3
    assert len(gate.entered) == 8
    assert bulkhead.snapshot().running == 0


async def test_waiters_are_admitted_in_arrival_order(clock: FakeClock) -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_waiting=10, max_wait=math.inf)
    pipeline = Pipeline(bulkhead, clock=clock)
    order: list[str] = []
    hold = anyio.Event()

    async def first() -> None:
        order.append("first")
        await hold.wait()

    async def record(name: str) -> None:
        order.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.call, first)
        await until(lambda: bulkhead.snapshot().running == 1)
        for i, name in enumerate("abcde"):
            tg.start_soon(pipeline.call, record, name)
            await until(lambda i=i: bulkhead.snapshot().waiting == i + 1)  # type: ignore[misc]
        hold.set()
    assert order == ["first", "a", "b", "c", "d", "e"]


async def test_released_slot_goes_to_the_waiter_not_to_a_newcomer(clock: FakeClock) -> None:
    """A caller that releases and immediately calls again queues behind the waiter."""
    bulkhead = Bulkhead(max_concurrent=1, max_waiting=10, max_wait=math.inf)
    pipeline = Pipeline(bulkhead, clock=clock)
    order: list[str] = []
    hold = anyio.Event()

    async def step(name: str, wait: bool = False) -> None:
        order.append(name)
        if wait:
            await hold.wait()

    async def twice() -> None:
        await pipeline.call(step, "a1", True)
        await pipeline.call(step, "a2")

    async with anyio.create_task_group() as tg:
        tg.start_soon(twice)
        await until(lambda: bulkhead.snapshot().running == 1)
        tg.start_soon(pipeline.call, step, "b")
        await until(lambda: bulkhead.snapshot().waiting == 1)
        hold.set()
    assert order == ["a1", "b", "a2"]


async def test_full_waiting_room_rejects_at_once(clock: FakeClock, events: EventRecorder) -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_waiting=1, max_wait=2.0, name="db")
    pipeline = Pipeline(bulkhead, clock=clock, listeners=[events])
    gate = Gate()
    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.call, gate)
        tg.start_soon(pipeline.call, gate)
        await until(lambda: bulkhead.snapshot().waiting == 1)
        with pytest.raises(BulkheadFullError) as info:
            await pipeline.call(gate)
        assert clock.now() == 0.0  # refused without waiting
        gate.release.set()
    assert info.value.policy == "db"
    assert info.value.retry_after == 2.0
    assert "db" in str(info.value)
    [rejected] = events.of_type(CallRejected)
    assert (rejected.reason, rejected.error_type, rejected.retry_after) == (
        "full",
        "resilient.BulkheadFullError",
        2.0,
    )
    assert rejected.policy == "db"


async def test_max_wait_zero_never_waits(clock: FakeClock) -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_waiting=10, max_wait=0)
    pipeline = Pipeline(bulkhead, clock=clock)
    gate = Gate()
    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.call, gate)
        await until(lambda: gate.running == 1)
        with pytest.raises(BulkheadFullError) as info:
            await pipeline.call(gate)
        gate.release.set()
    assert info.value.retry_after is None  # no wait configured: nothing to suggest
    assert bulkhead.snapshot().waiting == 0


async def test_explicit_retry_after_hint_is_reported(clock: FakeClock) -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_waiting=0, retry_after=3.5)
    pipeline = Pipeline(bulkhead, clock=clock)
    gate = Gate()
    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.call, gate)
        await until(lambda: gate.running == 1)
        with pytest.raises(BulkheadFullError) as info:
            await pipeline.call(gate)
        gate.release.set()
    assert info.value.retry_after == 3.5


async def test_wait_ends_after_max_wait_and_leaves_the_queue(
    clock: FakeClock, events: EventRecorder
) -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_waiting=5, max_wait=1.5)
    pipeline = Pipeline(bulkhead, clock=clock, listeners=[events])
    gate = Gate()
    outcome: list[BaseException] = []

    async def waiter() -> None:
        try:
            await pipeline.call(gate)
        except BulkheadFullError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.call, gate)
        await until(lambda: gate.running == 1)
        tg.start_soon(waiter)
        await until(lambda: bulkhead.snapshot().waiting == 1)
        clock.advance(1.0)
        await settle()
        assert not outcome
        clock.advance(0.5)
        await until(lambda: bool(outcome))
        assert bulkhead.snapshot().waiting == 0
        gate.release.set()
    assert "1.5s" in str(outcome[0])
    [waited] = events.of_type(WaitEnded)
    assert (waited.waited, waited.admitted) == (1.5, False)
    assert events.of_type(CallRejected)[0].reason == "wait_timeout"
    assert bulkhead.snapshot().running == 0


async def test_admitted_waiter_reports_how_long_it_waited(
    clock: FakeClock, events: EventRecorder
) -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_wait=10.0)
    pipeline = Pipeline(bulkhead, clock=clock, listeners=[events])
    gate = Gate()
    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.call, gate)
        await until(lambda: gate.running == 1)
        tg.start_soon(pipeline.call, gate)
        await until(lambda: bulkhead.snapshot().waiting == 1)
        clock.advance(0.25)
        gate.release.set()
    [waited] = events.of_type(WaitEnded)
    assert (waited.waited, waited.admitted, waited.policy) == (0.25, True, "bulkhead")
    assert not events.of_type(CallRejected)


async def test_call_deadline_cuts_the_wait_with_the_deadlines_timeout(
    clock: FakeClock, events: EventRecorder
) -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_wait=5.0)
    gate = Gate()
    holder = Pipeline(bulkhead, clock=clock)
    # The outer Timeout arms no timer of its own (the bulkhead honours ctx.deadline).
    timed = Pipeline(
        Timeout(0.5, name="total"), bulkhead, Timeout(10.0), clock=clock, listeners=[events]
    )
    outcome: list[BaseException] = []

    async def waiter() -> None:
        try:
            await timed.call(gate)
        except TimeoutExceeded as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder.call, gate)
        await until(lambda: gate.running == 1)
        tg.start_soon(waiter)
        await until(lambda: bulkhead.snapshot().waiting == 1)
        clock.advance(0.5)
        await until(lambda: bool(outcome))
        gate.release.set()
    assert outcome[0].policy == "total"  # type: ignore[attr-defined]
    assert events.of_type(CallRejected)[0].reason == "deadline"
    assert events.of_type(CallRejected)[0].error_type == "resilient.TimeoutExceeded"
    assert bulkhead.snapshot() == BulkheadSnapshot(
        running=0, waiting=0, max_concurrent=1, max_waiting=64
    )


async def test_outer_timeout_arms_no_timer_around_an_uncontended_bulkhead() -> None:
    clock = CountingClock()

    async def work() -> str:
        return "ok"

    pipeline = Pipeline(Timeout(1.0), Bulkhead(), Timeout(5.0), clock=clock)  # type: ignore[arg-type]
    assert await pipeline.call(work) == "ok"
    assert clock.armed == [1.0]


async def test_full_bulkhead_past_the_deadline_refuses_at_once(clock: FakeClock) -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_wait=5.0)
    gate = Gate()
    ctx = Pipeline(bulkhead, clock=clock).context(gate)
    ctx.tighten(0.0, source="total", timeout=1.0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(Pipeline(bulkhead, clock=clock).call, gate)
        await until(lambda: gate.running == 1)
        with pytest.raises(TimeoutExceeded):
            await bulkhead.execute(lambda c: gate(), ctx)
        assert bulkhead.snapshot().waiting == 0
        gate.release.set()


async def test_cancelled_waiter_leaves_the_queue_at_once(clock: FakeClock) -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_wait=math.inf)
    pipeline = Pipeline(bulkhead, clock=clock)
    gate = Gate()
    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.call, gate)
        await until(lambda: gate.running == 1)
        with anyio.CancelScope() as scope:

            async def cancel_when_queued() -> None:
                await until(lambda: bulkhead.snapshot().waiting == 1)
                scope.cancel()

            tg.start_soon(cancel_when_queued)
            await pipeline.call(gate)
        assert scope.cancelled_caught
        assert bulkhead.snapshot().waiting == 0
        assert bulkhead.snapshot().running == 1
        gate.release.set()
    assert bulkhead.snapshot().running == 0


async def test_call_cancelled_while_running_gives_its_slot_back(clock: FakeClock) -> None:
    bulkhead = Bulkhead(max_concurrent=1)
    pipeline = Pipeline(bulkhead, clock=clock)
    gate = Gate()
    with anyio.move_on_after(0):  # real clock scope, cancelled at the first checkpoint
        await pipeline.call(gate)
    assert bulkhead.snapshot().running == 0
    gate.release.set()
    assert await pipeline.call(gate, "again") == "again"


async def test_waiter_cancelled_after_being_handed_the_slot_passes_it_on(
    clock: FakeClock,
) -> None:
    """The handover instant: B is granted the slot and cancelled before it resumes."""
    bulkhead = Bulkhead(max_concurrent=1, max_wait=math.inf)
    pipeline = Pipeline(bulkhead, clock=clock)
    b_scope = anyio.CancelScope()
    entered: list[str] = []

    async def a() -> None:
        entered.append("a")
        await until(lambda: bulkhead.snapshot().waiting == 2)
        b_scope.cancel()  # then return: the release hands the slot to the cancelled B

    async def b() -> None:
        with b_scope:
            await pipeline.call(record, "b")

    async def record(name: str) -> None:
        entered.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.call, a)
        await until(lambda: bulkhead.snapshot().running == 1)
        tg.start_soon(b)
        await until(lambda: bulkhead.snapshot().waiting == 1)
        tg.start_soon(pipeline.call, record, "c")
    assert entered == ["a", "c"]
    assert b_scope.cancelled_caught
    assert bulkhead.snapshot().running == 0
    assert bulkhead.snapshot().waiting == 0


async def test_waiter_timing_out_as_it_is_handed_the_slot_passes_it_on(
    clock: FakeClock,
) -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_waiting=5, max_wait=1.0)
    pipeline = Pipeline(bulkhead, clock=clock)
    rejected: list[BaseException] = []
    entered: list[str] = []

    async def a() -> None:
        entered.append("a")
        await until(lambda: bulkhead.snapshot().waiting == 2)
        clock.advance(1.0 - clock.now())  # B's wait runs out; the release below grants B

    async def b() -> None:
        try:
            await pipeline.call(record, "b")
        except BulkheadFullError as exc:
            rejected.append(exc)

    async def record(name: str) -> None:
        entered.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.call, a)
        await until(lambda: bulkhead.snapshot().running == 1)
        tg.start_soon(b)
        await until(lambda: bulkhead.snapshot().waiting == 1)
        clock.advance(0.5)  # C arrives later, so its own wait has not run out at 1.0
        tg.start_soon(pipeline.call, record, "c")
    assert entered == ["a", "c"]
    assert len(rejected) == 1
    assert bulkhead.snapshot() == BulkheadSnapshot(
        running=0, waiting=0, max_concurrent=1, max_waiting=5
    )


@pytest.mark.parametrize("seed", [1, 2])
async def test_random_cancellations_never_lose_or_duplicate_a_slot(seed: int) -> None:
    """Thousands of rounds of callers cancelled at random points (waiting, running, handed
    a slot); afterwards nothing is held and a fresh call is admitted at once."""
    rng = random.Random(seed)
    clock = FakeClock()
    bulkhead = Bulkhead(max_concurrent=3, max_waiting=4, max_wait=0.5)
    pipeline = Pipeline(bulkhead, clock=clock, telemetry=False)
    inside = 0
    peak = 0
    admitted = 0

    async def work(steps: int) -> None:
        nonlocal inside, peak, admitted
        inside += 1
        admitted += 1
        peak = max(peak, inside)
        try:
            for _ in range(steps):
                await anyio.lowlevel.checkpoint()
        finally:
            inside -= 1

    async def caller(scope: anyio.CancelScope, steps: int) -> None:
        with scope, contextlib.suppress(BulkheadFullError):
            await pipeline.call(work, steps)

    for _ in range(1500):
        scopes = [anyio.CancelScope() for _ in range(8)]
        async with anyio.create_task_group() as tg:
            for scope in scopes:
                tg.start_soon(caller, scope, rng.randint(0, 3))
            for _ in range(rng.randint(0, 8)):
                await anyio.lowlevel.checkpoint()
                action = rng.random()
                if action < 0.6:
                    rng.choice(scopes).cancel()
                elif action < 0.75:
                    clock.advance(rng.choice((0.0, 0.25, 0.5)))
            await settle()
            clock.advance(1.0)  # ends every wait left: a lost slot fails the round, never hangs
        snapshot = bulkhead.snapshot()
        assert (snapshot.running, snapshot.waiting, inside) == (0, 0, 0)
        assert peak <= 3
    assert admitted > 1000
    start = clock.now()
    with anyio.CancelScope() as scope:
        scope.cancel()  # admitted without a checkpoint, so the cancelled scope is irrelevant
        await pipeline.call(work, 0)
    assert clock.now() == start


async def test_per_key_partitions_are_independent(clock: FakeClock) -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_waiting=0, per_key=True)
    pipeline = Pipeline(bulkhead, clock=clock)
    gate = Gate()

    async def call(key: str | None) -> None:
        await pipeline.run(pipeline.context(gate, (), key=key))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "a.example")
        tg.start_soon(call, "b.example")
        tg.start_soon(call, None)
        await until(lambda: gate.running == 3)
        with pytest.raises(BulkheadFullError):
            await call("a.example")
        assert bulkhead.snapshot("a.example").running == 1
        assert bulkhead.snapshot().running == 1  # the partition of calls without a key
        assert bulkhead.snapshot().keys == 2
        gate.release.set()
    assert bulkhead.snapshot("a.example").running == 0
    assert bulkhead.snapshot("unknown").running == 0


async def test_per_key_partitions_are_bounded(clock: FakeClock) -> None:
    bulkhead = Bulkhead(per_key=True, max_keys=3)
    pipeline = Pipeline(bulkhead, clock=clock)

    async def work() -> None:
        pass

    for i in range(20):
        await pipeline.run(pipeline.context(work, (), key=f"host-{i}"))
    assert bulkhead.snapshot().keys == 3


async def test_async_with_limits_direct_use() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_waiting=0)
    async with bulkhead:
        assert bulkhead.snapshot().running == 1
        with pytest.raises(BulkheadFullError):
            async with bulkhead:
                pass
    assert bulkhead.snapshot().running == 0


async def test_direct_use_waits_within_the_enclosing_deadline(clock: FakeClock) -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_wait=10.0, clock=clock)
    gate = Gate()

    async def inner() -> None:
        async with bulkhead:
            pass

    outcome: list[BaseException] = []

    async def waiter() -> None:
        try:
            await Pipeline(Timeout(2.0, name="request"), clock=clock).call(inner)
        except TimeoutExceeded as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:

        async def hold() -> None:
            async with bulkhead:
                await gate()

        tg.start_soon(hold)
        await until(lambda: gate.running == 1)
        tg.start_soon(waiter)
        await until(lambda: bulkhead.snapshot().waiting == 1)
        clock.advance(2.0)
        await until(lambda: bool(outcome))
        gate.release.set()
    assert clock.now() == 2.0
    assert bulkhead.snapshot().running == 0


async def test_decorator_form_shares_the_instance(clock: FakeClock) -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_waiting=0)
    gate = Gate()

    @bulkhead
    async def slow() -> None:
        await gate()

    @bulkhead
    async def other() -> None:
        pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow)
        await until(lambda: gate.running == 1)
        with pytest.raises(BulkheadFullError):
            await other()
        gate.release.set()


def test_one_instance_serves_successive_event_loops() -> None:
    """Created outside any loop, used by two asyncio.run() calls and then by trio."""
    trio = pytest.importorskip("trio")
    from trio.testing import MockClock

    bulkhead = Bulkhead(max_concurrent=1, max_waiting=4, max_wait=5.0)

    async def contended(clock: resilient.extend.Clock | None) -> list[int]:
        pipeline = Pipeline(bulkhead, clock=clock)
        done: list[int] = []

        async def work(i: int) -> None:
            await anyio.lowlevel.checkpoint()
            done.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(pipeline.call, work, i)
        return done

    assert sorted(asyncio.run(contended(FakeClock()))) == [0, 1, 2, 3]
    assert sorted(asyncio.run(contended(None))) == [0, 1, 2, 3]
    assert sorted(trio.run(contended, None, clock=MockClock(autojump_threshold=0))) == [0, 1, 2, 3]
    assert bulkhead.snapshot().running == 0


@pytest.mark.parametrize(
    ("options", "parameter", "value"),
    [
        ({"max_concurrent": 0}, "Bulkhead.max_concurrent", 0),
        ({"max_concurrent": 2.5}, "Bulkhead.max_concurrent", 2.5),
        ({"max_concurrent": True}, "Bulkhead.max_concurrent", True),
        ({"max_waiting": -1}, "Bulkhead.max_waiting", -1),
        ({"max_wait": -0.1}, "Bulkhead.max_wait", -0.1),
        ({"per_key": "yes"}, "Bulkhead.per_key", "yes"),
        ({"max_keys": 0}, "Bulkhead.max_keys", 0),
        ({"idle_ttl": 0}, "Bulkhead.idle_ttl", 0),
        ({"per_key": True, "idle_ttl": -1}, "Bulkhead.idle_ttl", -1),
        ({"per_key": True, "max_keys": 0}, "Bulkhead.max_keys", 0),
        ({"retry_after": -1}, "Bulkhead.retry_after", -1),
        ({"name": ""}, "Bulkhead.name", ""),
    ],
)
def test_bad_options_name_the_parameter_and_value(
    options: dict[str, object], parameter: str, value: object
) -> None:
    with pytest.raises(ConfigurationError) as info:
        Bulkhead(**options)  # type: ignore[arg-type]
    assert info.value.parameter == parameter
    assert info.value.value == value
    assert parameter in str(info.value)


def test_nan_max_wait_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"Bulkhead\.max_wait=nan"):
        Bulkhead(max_wait=math.nan)


def test_a_clock_without_timeouts_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"Bulkhead\.clock"):
        Bulkhead(clock=object())  # type: ignore[arg-type]


def test_options_are_read_only_properties() -> None:
    bulkhead = Bulkhead(max_concurrent=4, max_waiting=2, max_wait=0.5)
    assert (bulkhead.max_concurrent, bulkhead.max_waiting, bulkhead.max_wait) == (4, 2, 0.5)
    assert not bulkhead.per_key
    assert bulkhead.deadline_aware
    with pytest.raises(AttributeError):
        bulkhead.max_concurrent = 5  # type: ignore[misc]
    assert "max_concurrent=4" in repr(bulkhead)


def test_defaults_match_the_documented_contract() -> None:
    bulkhead = Bulkhead()
    assert (bulkhead.max_concurrent, bulkhead.max_waiting, bulkhead.max_wait) == (32, 64, 1.0)
    assert bulkhead.name == "bulkhead"


async def test_try_acquire_and_release_share_slots_with_the_policy() -> None:
    """The synchronous admission calls count against the same slots as pipeline calls."""
    bulkhead = Bulkhead(max_concurrent=2, max_waiting=0)
    pipeline = Pipeline(bulkhead)
    assert bulkhead.try_acquire()
    assert bulkhead.try_acquire()
    assert not bulkhead.try_acquire()  # full: refused at once, nothing taken
    with pytest.raises(BulkheadFullError):
        await pipeline.call(anyio.lowlevel.checkpoint)
    bulkhead.release()
    assert bulkhead.snapshot().running == 1
    await pipeline.call(anyio.lowlevel.checkpoint)
    bulkhead.release()
    assert bulkhead.snapshot().running == 0
    with pytest.raises(RuntimeError, match="without a held slot"):
        bulkhead.release()


async def test_release_hands_the_slot_to_the_first_waiter() -> None:
    clock = FakeClock()
    bulkhead = Bulkhead(max_concurrent=1, max_waiting=4, max_wait=10.0, clock=clock)
    assert bulkhead.try_acquire()
    order: list[int] = []

    async def wait(i: int) -> None:
        await bulkhead.acquire()
        order.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(wait, i)
            await until(lambda n=i + 1: bulkhead.snapshot().waiting == n)  # type: ignore[misc]
        assert not bulkhead.try_acquire()  # a newcomer never overtakes the queue
        for _ in range(3):
            bulkhead.release()
            await settle()
    assert order == [0, 1, 2]
    assert bulkhead.snapshot() == BulkheadSnapshot(
        running=1, waiting=0, max_concurrent=1, max_waiting=4
    )
    bulkhead.release()
    assert bulkhead.snapshot().running == 0


async def test_keyed_try_acquire_uses_the_partition_of_its_key() -> None:
    bulkhead = Bulkhead(max_concurrent=1, per_key=True)
    assert bulkhead.try_acquire("a")
    assert not bulkhead.try_acquire("a")
    assert bulkhead.try_acquire("b")  # another partition
    assert bulkhead.try_acquire()  # calls without a key share their own partition
    assert bulkhead.snapshot("a").running == 1
    bulkhead.release("a")
    bulkhead.release("b")
    bulkhead.release()
    assert [bulkhead.snapshot(k).running for k in ("a", "b", None)] == [0, 0, 0]


async def test_admission_calls_and_pipeline_calls_mixed_at_random_lose_no_slot() -> None:
    """A long-lived bulkhead: try_acquire/release, acquire with cancellations, and pipeline
    calls interleaved at random; the slots always add up and all come back."""
    rng = random.Random(15)
    clock = FakeClock()
    bulkhead = Bulkhead(max_concurrent=3, max_waiting=4, max_wait=5.0, clock=clock)
    pipeline = Pipeline(bulkhead, clock=clock, telemetry=False)
    held = 0  # slots taken by try_acquire()/acquire() and not yet released
    gate = anyio.Event()

    async def in_pipeline() -> None:
        with contextlib.suppress(BulkheadFullError):
            await pipeline.call(gate.wait)

    async def waiting_acquire(scope: anyio.CancelScope) -> None:
        nonlocal held
        with scope:
            try:
                await bulkhead.acquire()
            except BulkheadFullError:
                return
            held += 1

    async with anyio.create_task_group() as tg:
        scopes: list[anyio.CancelScope] = []
        for _ in range(300):
            op = rng.random()
            if op < 0.3:
                if bulkhead.try_acquire():
                    held += 1
            elif op < 0.5 and held:
                bulkhead.release()
                held -= 1
            elif op < 0.65:
                tg.start_soon(in_pipeline)
            elif op < 0.8:
                scope = anyio.CancelScope()
                scopes.append(scope)
                tg.start_soon(waiting_acquire, scope)
            elif scopes:
                scopes.pop(rng.randrange(len(scopes))).cancel()
            await settle(3)
            snap = bulkhead.snapshot()
            assert 0 <= snap.running <= 3
            assert snap.waiting <= 4
            assert held <= snap.running
            if rng.random() < 0.1:  # let the pipeline calls finish now and then
                gate.set()
                await settle()
                gate = anyio.Event()
        for scope in scopes:
            scope.cancel()
        gate.set()
        await settle()
        for _ in range(held):
            bulkhead.release()
        held = 0
        await settle()
    assert bulkhead.snapshot() == BulkheadSnapshot(
        running=0, waiting=0, max_concurrent=3, max_waiting=4
    )

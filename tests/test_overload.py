"""Adaptive limits (Gradient2, Vegas, AIMD), the bulkhead that follows them, and the queue
disciplines of its waiting room (FIFO, CoDel, adaptive LIFO)."""

from __future__ import annotations

import contextlib
import math
import random

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilient
from _limits_helpers import settle, until
from resilient import (
    AdaptiveLimit,
    Bulkhead,
    BulkheadFullError,
    ConfigurationError,
    Pipeline,
    Timeout,
    TimeoutExceeded,
)
from resilient.events import CallRejected
from resilient.overload import AIMD, FIFO, AdaptiveLIFO, CoDel, Gradient2, Vegas
from resilient.testing import EventRecorder, FakeClock

# -- the algorithms, pure ------------------------------------------------------------------

latencies = st.one_of(
    st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    st.sampled_from([0.0, 1e-9, math.inf, math.nan, -1.0, 1e300]),
)
samples = st.lists(
    st.tuples(latencies, st.integers(min_value=0, max_value=10_000), st.booleans()),
    max_size=300,
)


@pytest.mark.parametrize("algorithm", ["gradient2", "vegas", "aimd"])
@given(sequence=samples, bounds=st.tuples(st.integers(1, 50), st.integers(0, 300)))
@settings(max_examples=120, deadline=None)
def test_the_limit_stays_within_min_and_max_whatever_the_latencies(
    algorithm: str, sequence: list[tuple[float, int, bool]], bounds: tuple[int, int]
) -> None:
    low, extra = bounds
    limit = AdaptiveLimit(algorithm, initial_limit=low, min_limit=low, max_limit=low + extra)
    for rtt, inflight, dropped in sequence:
        value = limit.update(rtt, inflight, dropped)
        assert isinstance(value, int)
        assert low <= value <= low + extra
        assert value == limit.limit


def test_a_misbehaving_custom_algorithm_is_clamped() -> None:
    class Wild:
        def __init__(self) -> None:
            self.values = iter([math.nan, -5.0, 1e9, 7.5])

        def update(self, limit: float, rtt: float, inflight: int, dropped: bool) -> float:
            return next(self.values)

    limit = AdaptiveLimit(Wild(), initial_limit=5, min_limit=2, max_limit=10)
    assert [limit.update(0.1, 5) for _ in range(4)] == [2, 2, 10, 7]


def test_gradient2_grows_while_latency_holds_and_shrinks_when_it_climbs() -> None:
    limit = AdaptiveLimit("gradient2", initial_limit=20, max_limit=200)
    for _ in range(200):
        limit.update(0.010, inflight=limit.limit)
    grown = limit.limit
    assert grown > 60  # +queue_size*smoothing per busy sample
    for _ in range(40):
        limit.update(0.050, inflight=limit.limit)  # 5x the long-term average
    assert limit.limit < grown / 4


def test_gradient2_learns_nothing_while_the_limit_is_not_in_use() -> None:
    limit = AdaptiveLimit("gradient2", initial_limit=40)
    for _ in range(100):
        limit.update(0.010, inflight=3)
    assert limit.limit == 40


def test_aimd_adds_one_while_busy_and_backs_off_on_a_drop_or_a_slow_call() -> None:
    limit = AdaptiveLimit("aimd", initial_limit=20, min_limit=5, backoff=0.5, timeout=1.0)
    assert limit.update(0.1, inflight=10) == 21
    assert limit.update(0.1, inflight=2) == 21  # not busy: no growth
    assert limit.update(0.1, inflight=21, dropped=True) == 10
    assert limit.update(2.0, inflight=10) == 5  # slower than timeout: a drop
    assert limit.update(2.0, inflight=10) == 5  # min_limit holds


def test_vegas_settles_near_the_capacity_of_a_queueing_dependency() -> None:
    """A dependency that runs 16 at once, each 10 ms; more in flight queue (latency grows)."""
    limit = AdaptiveLimit("vegas", initial_limit=4, max_limit=1000)
    capacity, work = 16, 0.010
    history = []
    for _ in range(3000):
        inflight = limit.limit
        limit.update(work * max(1.0, inflight / capacity), inflight)
        history.append(limit.limit)
    tail = history[-1000:]
    assert capacity <= sum(tail) / len(tail) <= capacity + 8
    assert min(tail) >= capacity / 2  # the probe halves it now and then to drain the queue
    assert max(tail) <= capacity + 12


def test_a_dropped_call_lowers_the_limit_but_never_its_latency_floor() -> None:
    """A call cut short after 20 ms says nothing about a 100 ms dependency: if it became the
    no-load RTT, every normal call would look queued and the limit would never grow again."""
    for algorithm in ("vegas", "gradient2"):
        limit = AdaptiveLimit(algorithm, initial_limit=2, max_limit=50)
        for _ in range(5):
            limit.update(0.100, inflight=limit.limit)
        before = limit.limit
        limit.update(0.020, inflight=limit.limit, dropped=True)
        assert limit.limit < before or limit.limit == 1
        for _ in range(40):
            limit.update(0.100, inflight=limit.limit)
        assert limit.limit > before, algorithm


def test_algorithm_objects_expose_their_anchored_defaults() -> None:
    g = Gradient2()
    assert (g.smoothing, g.tolerance, g.queue_size) == (0.2, 1.5, 4.0)
    assert (AIMD().backoff, AIMD().timeout) == (0.9, 5.0)
    assert (Vegas().smoothing, Vegas().probe_multiplier) == (0.25, 30)
    assert (Vegas().alpha, Vegas().beta) == (2.0, 4.0)
    limit = AdaptiveLimit()
    assert (limit.algorithm_name, limit.limit, limit.min_limit, limit.max_limit) == (
        "vegas",
        20,
        1,
        200,
    )
    assert isinstance(limit.algorithm, Vegas)


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"algorithm": "bbr"}, "AdaptiveLimit.algorithm"),
        ({"algorithm": object()}, "AdaptiveLimit.algorithm"),
        ({"algorithm": "aimd", "tolerance": 2.0}, "AdaptiveLimit.tolerance"),
        ({"algorithm": "vegas", "backoff": 0.9}, "AdaptiveLimit.backoff"),
        ({"algorithm": AIMD(), "timeout": 1.0}, "AdaptiveLimit.timeout"),
        ({"min_limit": 0}, "AdaptiveLimit.min_limit"),
        ({"min_limit": 10, "max_limit": 5, "initial_limit": 7}, "AdaptiveLimit.max_limit"),
        ({"initial_limit": 500}, "AdaptiveLimit.initial_limit"),
        ({"smoothing": 0.0}, "AdaptiveLimit.smoothing"),
        ({"algorithm": "gradient2", "tolerance": 0.5}, "AdaptiveLimit.tolerance"),
        ({"tolerance": 2.0}, "AdaptiveLimit.tolerance"),
        ({"beta": 1.5}, "AdaptiveLimit.beta"),
        ({"alpha": -1.0}, "AdaptiveLimit.alpha"),
        ({"algorithm": "aimd", "backoff": 0.2}, "AdaptiveLimit.backoff"),
    ],
)
def test_bad_options_name_the_parameter(kwargs: dict[str, object], parameter: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        AdaptiveLimit(**kwargs)  # type: ignore[arg-type]
    assert info.value.parameter == parameter


def test_an_adaptive_limit_belongs_to_one_unkeyed_bulkhead() -> None:
    limit = AdaptiveLimit()
    Bulkhead(max_concurrent=limit)
    with pytest.raises(ConfigurationError, match=r"Bulkhead\.max_concurrent"):
        Bulkhead(max_concurrent=limit)
    with pytest.raises(ConfigurationError, match="per_key"):
        Bulkhead(max_concurrent=AdaptiveLimit(), per_key=True)
    with pytest.raises(ConfigurationError, match=r"Bulkhead\.queue"):
        Bulkhead(queue="random")
    with pytest.raises(ConfigurationError, match=r"CoDel\.interval"):
        CoDel(target=0.5, interval=0.1)


# -- the bulkhead follows the limit ---------------------------------------------------------


def test_admission_follows_the_limit_of_a_simulated_fixed_capacity_service() -> None:
    """Through the public admission API: admit what the limit allows, report latencies of a
    service that runs 12 at once (more queue inside it); the bulkhead settles near 12."""
    limit = AdaptiveLimit("vegas", initial_limit=2, max_limit=500)
    bulkhead = Bulkhead(max_concurrent=limit, max_waiting=0)
    capacity, work = 12, 0.02
    admitted_per_round = []
    for _ in range(400):
        admitted = 0
        while bulkhead.try_acquire():
            admitted += 1
        latency = work * max(1.0, admitted / capacity)
        for _ in range(admitted):
            bulkhead.release(latency=latency)
        admitted_per_round.append(admitted)
        assert bulkhead.snapshot().running == 0
    tail = admitted_per_round[-200:]
    assert capacity <= sum(tail) / len(tail) <= capacity + 8
    assert capacity // 2 <= min(tail)
    assert max(tail) <= capacity + 10
    assert bulkhead.snapshot().max_concurrent == limit.limit


async def test_timeouts_inside_the_bulkhead_shrink_the_limit(clock: FakeClock) -> None:
    limit = AdaptiveLimit("aimd", initial_limit=20, min_limit=2, backoff=0.5)
    bulkhead = Bulkhead(max_concurrent=limit)
    pipeline = Pipeline(bulkhead, Timeout(1.0), clock=clock)

    async def slow() -> None:
        await clock.sleep(5.0)

    for expected in (10, 5, 2, 2):
        with pytest.raises(TimeoutExceeded):
            await pipeline.call(slow)
        assert bulkhead.max_concurrent == expected
    assert bulkhead.snapshot().running == 0

    async def app_error() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await pipeline.call(app_error)
    assert bulkhead.max_concurrent == 2  # an error unrelated to load teaches nothing


async def test_a_shrunk_limit_holds_newcomers_and_a_grown_one_admits_waiters(
    clock: FakeClock,
) -> None:
    limit = AdaptiveLimit("aimd", initial_limit=4, min_limit=1, max_limit=10, backoff=0.5)
    bulkhead = Bulkhead(max_concurrent=limit, max_waiting=10, max_wait=math.inf)
    running = 0
    gate = anyio.Event()

    async def held() -> None:
        nonlocal running
        running += 1
        try:
            await gate.wait()
        finally:
            running -= 1

    pipeline = Pipeline(bulkhead, clock=clock)
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(pipeline.call, held)
        await until(lambda: running == 4)
        # A drop reported through the public API halves the limit below the running calls.
        assert bulkhead.try_acquire() is False
        tg.start_soon(pipeline.call, held)
        await until(lambda: bulkhead.snapshot().waiting == 1)
        limit.update(0.1, 4, dropped=True)
        assert limit.limit == 2
        gate.set()
    assert running == 0
    snapshot = bulkhead.snapshot()
    assert (snapshot.running, snapshot.waiting) == (0, 0)
    # The completions were busy (inflight >= limit/2): AIMD grew it by one each, from 2.
    assert bulkhead.max_concurrent == limit.limit == 5
    gate = anyio.Event()
    async with anyio.create_task_group() as tg:
        for _ in range(7):
            tg.start_soon(pipeline.call, held)
        await until(lambda: bulkhead.snapshot().waiting == 2)
        assert running == 5
        assert not bulkhead.try_acquire()  # waiters keep their turn
        gate.set()
    assert bulkhead.snapshot().running == 0


async def test_release_with_latency_grows_the_limit_and_admits_a_waiter(
    clock: FakeClock,
) -> None:
    limit = AdaptiveLimit("aimd", initial_limit=2, max_limit=10)
    bulkhead = Bulkhead(max_concurrent=limit, max_waiting=5, max_wait=math.inf, clock=clock)
    assert bulkhead.try_acquire()
    assert bulkhead.try_acquire()
    admitted: list[int] = []

    async def waiter(i: int) -> None:
        await bulkhead.acquire()
        admitted.append(i)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, 1)
        tg.start_soon(waiter, 2)
        await until(lambda: bulkhead.snapshot().waiting == 2)
        # One call completes busy: its slot goes to waiter 1, the new slot to waiter 2.
        bulkhead.release(latency=0.01)
        await until(lambda: len(admitted) == 2)
    assert sorted(admitted) == [1, 2]  # both granted at once (wake order is the loop's)
    assert limit.limit == 3
    assert bulkhead.snapshot().running == 3
    for _ in range(3):
        bulkhead.release()
    with pytest.raises(RuntimeError):
        bulkhead.release()


def test_headroom_keeps_slots_free_for_more_important_callers() -> None:
    bulkhead = Bulkhead(max_concurrent=10)
    taken = 0
    while bulkhead.try_acquire(headroom=3):
        taken += 1
    assert taken == 7
    assert bulkhead.try_acquire(headroom=0)
    assert bulkhead.snapshot().running == 8


async def test_the_limit_gauge_follows_the_adaptive_limit(clock: FakeClock) -> None:
    from test_telemetry_support import Otel, attrs

    otel = Otel.create()
    limit = AdaptiveLimit("aimd", initial_limit=8, backoff=0.5)
    bulkhead = Bulkhead(max_concurrent=limit, name="pool")
    pipeline = Pipeline(bulkhead, Timeout(0.5), name="db", clock=clock, telemetry=otel.telemetry)
    assert otel.values("resilient.bulkhead.limit") == {attrs(pipeline="db", policy="pool"): 8}

    async def slow() -> None:
        await clock.sleep(1.0)

    with pytest.raises(TimeoutExceeded):
        await pipeline.call(slow)
    assert otel.values("resilient.bulkhead.limit") == {attrs(pipeline="db", policy="pool"): 4}


def test_standard_accepts_an_adaptive_limit_and_an_opt_in_throttle() -> None:
    limit = AdaptiveLimit()
    pipeline = resilient.standard(max_concurrent=limit, throttle=True)
    kinds = [type(p).__name__ for p in pipeline.policies]
    assert kinds.index("Retry") < kinds.index("Throttle") < kinds.index("CircuitBreaker")
    (bulkhead,) = [p for p in pipeline.policies if isinstance(p, Bulkhead)]
    assert bulkhead.adaptive_limit is limit
    assert "Throttle" not in [type(p).__name__ for p in resilient.standard().policies]
    with pytest.raises(ConfigurationError, match=r"standard\.throttle"):
        resilient.standard(throttle="yes")  # type: ignore[arg-type]


# -- queue disciplines ------------------------------------------------------------------------


async def _burst(
    clock: FakeClock, queue: object, arrivals: int, gap: float
) -> tuple[list[int], list[int], list[float], Bulkhead]:
    """One slot held; ``arrivals`` callers queue ``gap`` apart; then the slot is released
    ten times, ``gap`` apart. Returns (served order, shed, waits of the served)."""
    bulkhead = Bulkhead(max_concurrent=1, max_waiting=100, max_wait=10.0, queue=queue)  # type: ignore[arg-type]
    recorder = EventRecorder()
    pipeline = Pipeline(bulkhead, clock=clock, listeners=[recorder])
    served: list[int] = []
    shed: list[int] = []
    waits: list[float] = []
    hold = anyio.Event()

    async def holder() -> None:
        await hold.wait()

    async def caller(i: int) -> None:
        queued_at = clock.now()

        async def work() -> None:
            served.append(i)
            waits.append(clock.now() - queued_at)

        try:
            await pipeline.call(work)
        except BulkheadFullError:
            shed.append(i)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.call, holder)
        await until(lambda: bulkhead.snapshot().running == 1)
        for i in range(arrivals):
            tg.start_soon(caller, i)
            queued = i + 1
            await until(lambda: bulkhead.snapshot().waiting + len(shed) == queued)  # noqa: B023
            if i < arrivals - 1:
                clock.advance(gap)
        hold.set()
        await settle()
    rejected = recorder.of_type(CallRejected)
    assert len(rejected) == len(shed)
    return served, shed, waits, bulkhead


async def test_fifo_serves_a_burst_in_arrival_order(clock: FakeClock) -> None:
    served, shed, _, _ = await _burst(clock, "fifo", arrivals=12, gap=0.02)
    assert served == list(range(12))
    assert shed == []


async def test_adaptive_lifo_serves_the_freshest_of_a_standing_queue_and_sheds_the_stale(
    clock: FakeClock,
) -> None:
    # 60 arrivals 2 ms apart: the queue has stood 118 ms (> interval, 100 ms) at the release;
    # the first ones already left on their own after 100 ms.
    served, shed, waits, bulkhead = await _burst(clock, "lifo", arrivals=60, gap=0.002)
    assert served == [59, 58, 57]  # the newest first; all queued less than target (5 ms)
    assert sorted(shed) == list(range(57))
    assert max(waits) <= 0.005
    assert bulkhead.snapshot().waiting == 0


async def test_codel_sheds_waiters_older_than_the_target_once_the_queue_stands(
    clock: FakeClock,
) -> None:
    served, shed, waits, _ = await _burst(clock, "codel", arrivals=60, gap=0.002)
    assert served == [57, 58, 59]  # arrival order among the fresh ones
    assert sorted(shed) == list(range(57))
    assert max(waits) <= 0.005


async def test_codel_lets_a_short_burst_queue_up_to_the_interval(clock: FakeClock) -> None:
    # 4 arrivals 10 ms apart: the queue stood 40 ms < interval: nobody is shed.
    served, shed, _, _ = await _burst(clock, CoDel(target=0.005, interval=0.1), 4, 0.01)
    assert served == [0, 1, 2, 3]
    assert shed == []


async def test_a_waiter_never_queues_past_the_codel_interval(clock: FakeClock) -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_waiting=5, max_wait=10.0, queue="codel")
    recorder = EventRecorder()
    pipeline = Pipeline(bulkhead, clock=clock, listeners=[recorder])
    hold = anyio.Event()

    async def holder() -> None:
        await hold.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.call, holder)
        await until(lambda: bulkhead.snapshot().running == 1)
        start = clock.now()
        errors: list[BaseException] = []

        async def waiter() -> None:
            try:
                await pipeline.call(holder)
            except BulkheadFullError as exc:
                errors.append(exc)

        tg.start_soon(waiter)
        await until(lambda: bulkhead.snapshot().waiting == 1)
        clock.advance(0.1)
        await until(lambda: bool(errors))
        assert "standing queue" in str(errors[0])
        assert clock.now() - start == pytest.approx(0.1)
        assert bulkhead.snapshot().waiting == 0
        hold.set()
    (event,) = recorder.of_type(CallRejected)
    assert event.reason == "queue_shed"


@pytest.mark.parametrize("queue", ["fifo", "codel", "lifo"])
@pytest.mark.parametrize("seed", [3, 4])
async def test_random_cancellations_never_leak_a_slot_with_an_adaptive_limit(
    queue: str, seed: int
) -> None:
    """Callers cancelled at random (waiting, running, handed a slot, shed) while the limit
    moves with every completion: nothing is held afterwards and the limit stays in bounds."""
    rng = random.Random(seed)
    clock = FakeClock()
    limit = AdaptiveLimit("aimd", initial_limit=3, min_limit=1, max_limit=6, timeout=0.3)
    bulkhead = Bulkhead(max_concurrent=limit, max_waiting=4, max_wait=0.5, queue=queue)
    pipeline = Pipeline(bulkhead, clock=clock, telemetry=False)
    inside = 0
    admitted = 0

    async def work(steps: int, slow: bool) -> None:
        nonlocal inside, admitted
        inside += 1
        admitted += 1
        assert inside <= 6
        try:
            for _ in range(steps):
                await anyio.lowlevel.checkpoint()
            if slow:
                raise TimeoutError  # a drop: the limit shrinks
        finally:
            inside -= 1

    async def caller(scope: anyio.CancelScope, steps: int, slow: bool) -> None:
        with scope, contextlib.suppress(BulkheadFullError, TimeoutError):
            await pipeline.call(work, steps, slow)

    for _ in range(600):
        scopes = [anyio.CancelScope() for _ in range(9)]
        async with anyio.create_task_group() as tg:
            for scope in scopes:
                tg.start_soon(caller, scope, rng.randint(0, 3), rng.random() < 0.2)
            for _ in range(rng.randint(0, 8)):
                await anyio.lowlevel.checkpoint()
                action = rng.random()
                if action < 0.5:
                    rng.choice(scopes).cancel()
                elif action < 0.75:
                    clock.advance(rng.choice((0.0, 0.003, 0.05, 0.2)))
            await settle()
            clock.advance(1.0)  # ends every wait left
        snapshot = bulkhead.snapshot()
        assert (snapshot.running, snapshot.waiting, inside) == (0, 0, 0)
        assert 1 <= limit.limit <= 6
    assert admitted > 500
    assert bulkhead.try_acquire()
    bulkhead.release()


def test_discipline_objects_and_names() -> None:
    assert Bulkhead().queue.name == "fifo"
    assert isinstance(Bulkhead(queue="lifo").queue, AdaptiveLIFO)
    assert isinstance(Bulkhead(queue=FIFO()).queue, FIFO)
    assert "queue=CoDel(target=0.005, interval=0.1)" in repr(Bulkhead(queue="codel"))
    assert "AdaptiveLimit('vegas'" in repr(Bulkhead(max_concurrent=AdaptiveLimit()))

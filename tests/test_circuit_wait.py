"""CircuitBreaker: waiting out an open circuit, paced release, and the consecutive-failures trip.

Virtual time only (``FakeClock``); every test runs on asyncio and on trio. On a ``FakeClock``
the waiter at the head of the queue sleeps on the clock until its probe time, so virtual time
moves by itself while callers wait; the others wait on events with timers at their give-up
time, fired as time passes.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from _circuit_helpers import CLASSIFY, call, calls, client_error, fail, make, rejected, succeed
from resilient import (
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    Pipeline,
    Retry,
    Timeout,
    TimeoutExceeded,
)
from resilient.events import CallRejected, CircuitStateChanged, CircuitWaitEnded, CircuitWaitStarted
from resilient.testing import EventRecorder, FakeClock


def waiting(
    clock: FakeClock, events: EventRecorder | None = None, **options: Any
) -> tuple[CircuitBreaker, Pipeline]:
    """A breaker that lets callers wait (the defaults), opened by one failure in tests."""
    options.setdefault("max_waiting", 100)
    options.setdefault("consecutive_failures", 10)
    options.setdefault("minimum_calls", 1)
    return make(clock, events, **options)


def with_timeout(
    breaker: CircuitBreaker, clock: FakeClock, seconds: float, events: EventRecorder | None = None
) -> Pipeline:
    return Pipeline(
        Timeout(seconds),
        breaker,
        clock=clock,
        classify=CLASSIFY,
        listeners=[events] if events is not None else [],
        telemetry=False,
    )


class Gate:
    """A dependency the test answers by hand: each call waits until ``answer``."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.pending: list[tuple[anyio.Event, list[BaseException | None]]] = []
        self.starts: list[float] = []
        self.auto: bool | None = None  # True: succeed at once; False: fail at once

    async def __call__(self) -> str:
        self.starts.append(self.clock.now())
        if self.auto is not None:
            if self.auto:
                return "ok"
            raise ConnectionError("down")
        event = anyio.Event()
        verdict: list[BaseException | None] = [None]
        self.pending.append((event, verdict))
        await event.wait()
        if verdict[0] is not None:
            raise verdict[0]
        return "ok"

    def answer(self, *, ok: bool | list[bool] = True) -> int:
        """Answer every pending call (all alike, or one verdict each in order)."""
        pending, self.pending = self.pending, []
        for i, (event, verdict) in enumerate(pending):
            good = ok[i] if isinstance(ok, list) else ok
            verdict[0] = None if good else ConnectionError("down")
            event.set()
        return len(pending)


def outcomes(events: EventRecorder) -> list[str]:
    return [e.outcome for e in events.of_type(CircuitWaitEnded)]


# -- one caller -----------------------------------------------------------------------------


async def test_a_call_on_an_open_breaker_waits_and_becomes_the_probe(
    clock: FakeClock, events: EventRecorder
) -> None:
    breaker, pipeline = waiting(clock, events)
    assert isinstance(await call(pipeline, fail), ConnectionError)
    assert breaker.snapshot().state == "open"
    assert await call(pipeline, succeed) == "ok"  # waited probe_interval, then probed
    assert clock.now() == pytest.approx(0.2)
    assert breaker.snapshot().state == "closed"
    (started,) = events.of_type(CircuitWaitStarted)
    assert (started.waiting, started.give_up, started.key) == (1, 1.0, None)
    (ended,) = events.of_type(CircuitWaitEnded)
    assert (ended.outcome, ended.waited) == ("probe", pytest.approx(0.2))
    assert not events.of_type(CallRejected)


async def test_open_time_does_not_delay_a_waiting_probe(clock: FakeClock) -> None:
    _breaker, pipeline = waiting(clock, open_for=60.0, probe_interval=0.3)
    await call(pipeline, fail)
    assert await call(pipeline, succeed) == "ok"
    assert clock.now() == pytest.approx(0.3)


async def test_a_caller_arriving_after_the_probe_interval_probes_at_once(clock: FakeClock) -> None:
    _breaker, pipeline = waiting(clock)
    await call(pipeline, fail)
    clock.advance(3.0)
    assert await call(pipeline, succeed) == "ok"
    assert clock.now() == 3.0


async def test_max_waiting_zero_fails_at_once_as_before(clock: FakeClock) -> None:
    _breaker, pipeline = waiting(clock, max_waiting=0)
    await call(pipeline, fail)
    assert isinstance(await call(pipeline, succeed), CircuitOpenError)
    assert clock.now() == 0.0


@pytest.mark.parametrize("limit", ["deadline", "max_wait"])
async def test_a_caller_that_cannot_outlast_the_next_probe_fails_at_once(
    clock: FakeClock, events: EventRecorder, limit: str
) -> None:
    if limit == "deadline":
        breaker, _ = waiting(clock, events)
        pipeline = with_timeout(breaker, clock, 0.15, events)
    else:
        breaker, pipeline = waiting(clock, events, max_wait=0.15)
    await call(pipeline, fail)
    error = await call(pipeline, succeed)
    assert isinstance(error, CircuitOpenError)
    assert error.retry_after == pytest.approx(0.2)
    assert clock.now() == 0.0, "no point waiting in vain"
    assert len(events.of_type(CallRejected)) == 1
    assert not events.of_type(CircuitWaitStarted)


async def test_the_attempts_of_one_call_share_its_max_wait(clock: FakeClock) -> None:
    """Counted from the start of the call's deadline: a retry does not wait all over again."""
    breaker = CircuitBreaker(
        minimum_calls=1, max_wait=0.5, open_jitter=0.0, consecutive_failures=None
    )
    pipeline = Pipeline(
        Timeout(5.0),
        Retry(attempts=10, base_delay=0.0, budget=None),
        breaker,
        clock=clock,
        classify=CLASSIFY,
        telemetry=False,
    )
    probes: list[float] = []

    async def down() -> str:
        probes.append(clock.now())
        raise ConnectionError("503")

    await call(Pipeline(breaker, clock=clock, telemetry=False), fail)  # opens it at 0
    # Attempt 1 waits and probes at 0.2, attempt 2 at 0.4; attempt 3 could only wait until
    # 0.5 (0 + max_wait), before the next probe at 0.6: it fails at once.
    assert isinstance(await call(pipeline, down), CircuitOpenError)
    assert probes == [pytest.approx(0.2), pytest.approx(0.4)]
    assert clock.now() == pytest.approx(0.4)


async def test_forced_open_never_waits(clock: FakeClock) -> None:
    breaker, pipeline = waiting(clock)
    breaker.force_open()
    assert isinstance(await call(pipeline, succeed), CircuitOpenError)
    assert clock.now() == 0.0


async def test_disabled_and_forced_closed_are_unaffected(clock: FakeClock) -> None:
    breaker, pipeline = waiting(clock)
    breaker.disable()
    await calls(pipeline, fail, 30)
    assert breaker.snapshot().state == "disabled"
    breaker.force_closed()
    await calls(pipeline, fail, 30)
    assert breaker.snapshot().state == "forced_closed"
    assert clock.now() == 0.0


# -- many callers: probe, release, failure --------------------------------------------------


async def _start(  # noqa: PLR0917 - a test helper, read at its call sites
    tg: anyio.abc.TaskGroup,
    pipeline: Pipeline,
    fn: Any,
    n: int,
    results: list[tuple[float, float, object]],
    clock: FakeClock,
    key: str | None = None,
) -> None:
    async def one() -> None:
        start = clock.now()
        outcome = await call(pipeline, fn, key)
        results.append((start, clock.now(), outcome))

    for _ in range(n):
        tg.start_soon(one)
    await anyio.wait_all_tasks_blocked()


async def test_waiters_are_released_after_a_successful_probe_paced_by_slow_start(
    clock: FakeClock, events: EventRecorder
) -> None:
    breaker, pipeline = waiting(clock, events)
    gate = Gate(clock)
    await call(pipeline, fail)
    results: list[tuple[float, float, object]] = []
    rounds: list[tuple[float, int]] = []
    async with anyio.create_task_group() as tg:
        await _start(tg, pipeline, gate, 40, results, clock)
        assert len(gate.pending) == 1, "one probe, the rest wait and send nothing"
        assert breaker.snapshot().waiting == 39
        while gate.pending:
            rounds.append((clock.now(), len(gate.pending)))
            clock.advance(0.05)  # each round trip takes 50 ms
            gate.answer()
            await anyio.wait_all_tasks_blocked()
    # The probe, then 2, 4, 8, 16 and the rest: the queue never hits the dependency at once.
    assert [n for _, n in rounds] == [1, 2, 4, 8, 16, 9]
    assert [t for t, _ in rounds] == pytest.approx([0.2, 0.25, 0.3, 0.35, 0.4, 0.45])
    assert all(outcome == "ok" for _, _, outcome in results)
    assert sorted(outcomes(events)) == ["probe"] + ["released"] * 39
    assert breaker.snapshot().state == "closed"
    assert breaker.snapshot().waiting == 0


async def test_a_released_call_that_reopens_the_breaker_sends_the_rest_back_to_waiting(
    clock: FakeClock,
) -> None:
    breaker, pipeline = waiting(clock, failure_rate=0.5, minimum_calls=1)
    gate = Gate(clock)
    await call(pipeline, fail)
    results: list[tuple[float, float, object]] = []
    async with anyio.create_task_group() as tg:
        await _start(tg, pipeline, gate, 10, results, clock)
        gate.answer()  # the probe succeeds: closed, 2 released
        await anyio.wait_all_tasks_blocked()
        assert len(gate.pending) == 2
        reopened_at = clock.now()
        gate.answer(ok=[False, True])  # the first fails: 1/1 reopens; the second straggles
        await anyio.wait_all_tasks_blocked()
        # Nobody else was released: the head waited probe_interval and is the next probe.
        assert len(gate.pending) == 1
        assert gate.starts[-1] == pytest.approx(reopened_at + 0.2)
        assert breaker.snapshot().waiting == 6
        while gate.pending:
            gate.answer()
            await anyio.wait_all_tasks_blocked()
    assert sorted(type(r).__name__ for _, _, r in results) == ["ConnectionError"] + ["str"] * 9
    assert breaker.snapshot().state == "closed"


async def test_failed_probes_fail_the_waiters_that_cannot_outlast_the_next_one(
    clock: FakeClock, events: EventRecorder
) -> None:
    breaker, pipeline = waiting(clock, events)
    gate = Gate(clock)
    await call(pipeline, fail)
    results: list[tuple[float, float, object]] = []
    async with anyio.create_task_group() as tg:
        await _start(tg, pipeline, gate, 10, results, clock)
        while gate.pending:
            gate.answer(ok=False)
            await anyio.wait_all_tasks_blocked()
    probes = [r for r in results if isinstance(r[2], ConnectionError)]
    refused = [r for r in results if isinstance(r[2], CircuitOpenError)]
    assert len(probes) + len(refused) == 10
    # One probe per probe_interval, each a waiter; none of them waited past max_wait.
    assert all(b - a >= 0.2 - 1e-9 for a, b in zip(gate.starts[1:], gate.starts[2:], strict=False))
    assert all(end - start <= 1.0 + 1e-9 for start, end, _ in results)
    # The others failed at once when the last probe they could outlast failed.
    last_probe = gate.starts[-1]
    assert refused
    assert all(end == pytest.approx(last_probe) for _, end, _ in refused)
    assert all(start + 1.0 <= last_probe + 0.2 + 1e-9 for start, _, _ in refused)
    assert len(events.of_type(CallRejected)) == len(refused), "each rejection reported once"
    assert outcomes(events).count("failed") == len(refused)
    assert breaker.snapshot().waiting == 0


async def test_a_waiter_never_waits_past_max_wait(clock: FakeClock, events: EventRecorder) -> None:
    breaker, pipeline = waiting(clock, events, max_wait=0.5)
    gate = Gate(clock)
    await call(pipeline, fail)
    results: list[tuple[float, float, object]] = []
    async with anyio.create_task_group() as tg:
        await _start(tg, pipeline, gate, 4, results, clock)  # a probe that hangs, 3 waiters
        assert (len(gate.pending), breaker.snapshot().waiting) == (1, 3)
        clock.advance(0.49)
        await anyio.wait_all_tasks_blocked()
        assert breaker.snapshot().waiting == 3
        clock.advance(0.01)
        await anyio.wait_all_tasks_blocked()
        assert breaker.snapshot().waiting == 0
        gate.answer()
    refused = [(s, e) for s, e, r in results if isinstance(r, CircuitOpenError)]
    assert len(refused) == 3
    assert all(e - s == pytest.approx(0.5) for s, e in refused)
    assert outcomes(events).count("timeout") == 3
    assert [e.reason for e in events.of_type(CallRejected)] == ["wait_timeout"] * 3


async def test_a_waiter_never_waits_past_its_deadline(clock: FakeClock) -> None:
    breaker, _ = waiting(clock)
    pipeline = with_timeout(breaker, clock, 0.5)
    gate = Gate(clock)
    await call(pipeline, fail)
    results: list[tuple[float, float, object]] = []
    async with anyio.create_task_group() as tg:
        await _start(tg, pipeline, gate, 4, results, clock)
        for _ in range(20):  # in steps, so each timer fires at its own time
            clock.advance(0.05)
            await anyio.wait_all_tasks_blocked()
        assert breaker.snapshot().waiting == 0
        gate.answer()
    assert len(results) == 4
    for start, end, outcome in results:
        assert isinstance(outcome, CircuitOpenError | TimeoutExceeded)
        assert end - start <= 0.5 + 0.05 + 1e-9


async def test_the_waiting_room_is_bounded(clock: FakeClock, events: EventRecorder) -> None:
    breaker, pipeline = waiting(clock, events, max_waiting=3)
    gate = Gate(clock)
    await call(pipeline, fail)
    results: list[tuple[float, float, object]] = []
    async with anyio.create_task_group() as tg:
        # The head counts while it waits for its probe time: start it, then 3 waiters.
        await _start(tg, pipeline, gate, 1, results, clock)
        assert (breaker.snapshot().probes, breaker.snapshot().waiting) == (1, 0)
        await _start(tg, pipeline, gate, 3, results, clock)
        assert breaker.snapshot().waiting == 3
        now = clock.now()
        overflow = await call(pipeline, succeed)
        assert isinstance(overflow, CircuitOpenError)
        assert clock.now() == now, "the (max_waiting+1)-th fails at once"
        assert len(events.of_type(CallRejected)) == 1
        while gate.pending:
            gate.answer()
            await anyio.wait_all_tasks_blocked()
    assert [r for _, _, r in results] == ["ok"] * 4


async def test_force_open_fails_the_waiters_and_reset_releases_them(
    clock: FakeClock, events: EventRecorder
) -> None:
    breaker, pipeline = waiting(clock, events)
    gate = Gate(clock)
    await call(pipeline, fail)
    results: list[tuple[float, float, object]] = []
    async with anyio.create_task_group() as tg:
        await _start(tg, pipeline, gate, 5, results, clock)  # probe + 4 waiters
        breaker.force_open()
        await anyio.wait_all_tasks_blocked()
        assert breaker.snapshot().waiting == 0
        gate.answer()
    assert sum(isinstance(r, CircuitOpenError) for _, _, r in results) == 4
    breaker.reset()
    await call(pipeline, fail)
    results.clear()
    async with anyio.create_task_group() as tg:
        await _start(tg, pipeline, gate, 5, results, clock)
        breaker.reset()  # an operator closes it: the waiters go, paced
        await anyio.wait_all_tasks_blocked()
        assert len(gate.pending) == 1 + 2
        while gate.pending:
            gate.answer()
            await anyio.wait_all_tasks_blocked()
    assert [r for _, _, r in results] == ["ok"] * 5


async def test_released_callers_that_find_it_reopened_go_back_to_deciding(
    clock: FakeClock,
) -> None:
    """Released, then forced open before they ran: they fail at once, not at give-up."""
    breaker = None

    def on_close(event: object) -> None:
        if isinstance(event, CircuitStateChanged) and event.state == "closed":
            assert breaker is not None
            breaker.force_open()  # after the close released the first two

    breaker, pipeline = waiting(clock, listeners=[on_close])
    gate = Gate(clock)
    await call(pipeline, fail)
    results: list[tuple[float, float, object]] = []
    async with anyio.create_task_group() as tg:
        await _start(tg, pipeline, gate, 6, results, clock)
        probe_time = clock.now()
        gate.answer()
        await anyio.wait_all_tasks_blocked()
    assert sorted(type(r).__name__ for _, _, r in results) == ["CircuitOpenError"] * 5 + ["str"]
    assert all(end == probe_time for _, end, r in results if isinstance(r, CircuitOpenError))
    assert not gate.pending
    assert breaker.snapshot().waiting == 0


async def test_a_cancelled_probe_lets_the_next_waiter_probe(clock: FakeClock) -> None:
    breaker, pipeline = waiting(clock)
    gate = Gate(clock)
    await call(pipeline, fail)
    results: list[object] = []
    async with anyio.create_task_group() as tg:
        probe_scope = anyio.CancelScope()

        async def probe() -> None:
            with probe_scope:
                results.append(await call(pipeline, gate))

        tg.start_soon(probe)
        await anyio.wait_all_tasks_blocked()
        assert breaker.snapshot().probes == 1

        async def one() -> None:
            results.append(await call(pipeline, gate))

        tg.start_soon(one)
        await anyio.wait_all_tasks_blocked()
        assert breaker.snapshot().waiting == 1
        probe_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        snap = breaker.snapshot()
        assert (snap.state, snap.probes, snap.waiting) == ("half_open", 1, 0)
        assert len(gate.pending) == 2  # the cancelled probe's entry and the new probe
        gate.answer()
    assert results == ["ok"]
    assert breaker.snapshot().state == "closed"


async def settle(rng: random.Random) -> None:
    """Let the other tasks run a random number of steps (not necessarily until blocked)."""
    for _ in range(rng.randrange(1, 20)):
        await anyio.lowlevel.checkpoint()


@pytest.mark.parametrize("seed", range(3))
async def test_random_cancellations_leak_nothing(seed: int) -> None:
    """1,000 calls through outages; waiters and probes cancelled at random."""
    rng = random.Random(seed)
    clock = FakeClock()
    events = EventRecorder()
    breaker, pipeline = waiting(
        clock, events, max_waiting=25, consecutive_failures=3, minimum_calls=5, open_for=1.0
    )
    gate = Gate(clock)
    scopes: list[anyio.CancelScope] = []
    finished = 0

    async def one() -> None:
        nonlocal finished
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            try:
                await call(pipeline, gate, rng.choice((None, None, "k")))
            finally:
                scopes.remove(scope)
        finished += 1

    async with anyio.create_task_group() as tg:
        started = 0
        while started < 1000:
            for _ in range(min(rng.randrange(0, 8), 1000 - started)):
                tg.start_soon(one)
                started += 1
            await settle(rng)
            for scope in rng.sample(scopes, k=min(len(scopes), rng.randrange(0, 4))):
                scope.cancel()
            if gate.pending and rng.random() < 0.6:
                up = rng.random() < 0.5
                gate.answer(ok=[up or rng.random() < 0.2 for _ in gate.pending])
            clock.advance(rng.choice((0.0, 0.05, 0.2, 0.5)))
            await settle(rng)
        await anyio.wait_all_tasks_blocked()
        for scope in list(scopes):
            scope.cancel()
        gate.answer()
        await anyio.wait_all_tasks_blocked()
    assert finished == 1000
    # Every way out of a wait happened, many times over.
    ends = outcomes(events)
    counts = {o: ends.count(o) for o in ("probe", "released", "cancelled", "timeout")}
    assert min(counts.values()) >= 3, counts
    assert counts["cancelled"] >= 50, counts
    assert len(events.of_type(CircuitWaitStarted)) == len(ends)
    assert not gate.pending or all(e.is_set() for e, _ in gate.pending)
    for snap in breaker.snapshots():
        assert snap.waiting == 0, snap
        assert snap.probes == 0, snap
        room = breaker._state.room if snap.key is None else breaker._keys.peek(snap.key).room  # type: ignore[union-attr]
        assert room is None or (room.inflight, len(room.waiters)) == (0, 0)
    # Still consistent: a recovery releases a fresh queue, paced, for both keys.
    gate.auto = None
    for key in (None, "k"):
        breaker.force_open(key)
        breaker.reset(key)
        await call(pipeline, fail, key)
        await call(pipeline, fail, key)
        await call(pipeline, fail, key)
        assert breaker.snapshot(key).state == "open"
        results: list[tuple[float, float, object]] = []
        async with anyio.create_task_group() as tg:
            await _start(tg, pipeline, gate, 12, results, clock, key)
            sizes = []
            while gate.pending:
                sizes.append(gate.answer())
                await anyio.wait_all_tasks_blocked()
        assert sizes == [1, 2, 4, 5]
        assert [r for _, _, r in results] == ["ok"] * 12


# -- keys -----------------------------------------------------------------------------------


async def test_each_key_has_its_own_waiting_room(clock: FakeClock) -> None:
    breaker, pipeline = waiting(clock)
    gate = Gate(clock)
    await call(pipeline, fail, "a")
    results: list[tuple[float, float, object]] = []
    async with anyio.create_task_group() as tg:
        await _start(tg, pipeline, gate, 5, results, clock, "a")
        assert breaker.snapshot("a").waiting == 4
        assert await call(pipeline, succeed, "b") == "ok"  # another host: unaffected
        assert breaker.snapshot("b").waiting == 0
        while gate.pending:
            gate.answer()
            await anyio.wait_all_tasks_blocked()
    assert [r for _, _, r in results] == ["ok"] * 5


# -- recovery is detected promptly ----------------------------------------------------------


@pytest.mark.parametrize("back_at", [3.0, 3.01, 3.07, 3.13, 3.19, 3.24])
async def test_first_success_comes_within_a_probe_interval_and_a_probe_latency(
    clock: FakeClock, back_at: float
) -> None:
    latency = 0.05
    breaker, _ = waiting(clock, minimum_calls=20)  # only the consecutive trip opens it
    pipeline = with_timeout(breaker, clock, 2.0)
    starts: list[float] = []

    async def dependency() -> str:
        up = clock.now() >= back_at
        starts.append(clock.now())
        await clock.sleep(latency)
        if not up:
            raise ConnectionError("503")
        return "ok"

    outcomes_: list[object] = []
    while not outcomes_ or outcomes_[-1] != "ok":
        outcomes_.append(await call(pipeline, dependency))
    assert all(isinstance(o, ConnectionError) for o in outcomes_[:10])
    assert breaker.snapshot().state == "closed"
    recovered = clock.now()
    assert recovered <= back_at + 0.2 + latency + 1e-9
    probes = starts[10:]
    assert all(b - a >= 0.2 - 1e-9 for a, b in itertools.pairwise(probes))


# -- the consecutive-failures trip ----------------------------------------------------------


async def test_ten_failures_in_a_row_open_at_once_despite_a_healthy_window(
    clock: FakeClock, events: EventRecorder
) -> None:
    breaker, pipeline = make(clock, events, consecutive_failures=10, minimum_calls=20)
    await calls(pipeline, succeed, 200)
    await calls(pipeline, fail, 9)
    assert breaker.snapshot().state == "closed"
    assert isinstance(await call(pipeline, fail), ConnectionError), "the tripping call's error"
    snap = breaker.snapshot()
    assert (snap.state, snap.calls, snap.failures) == ("open", 210, 10)
    assert [(e.previous, e.state) for e in events.of_type(CircuitStateChanged)] == [
        ("closed", "open")
    ]


async def test_a_success_resets_the_run(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, consecutive_failures=10, minimum_calls=100)
    for _ in range(5):
        await calls(pipeline, fail, 9)
        await call(pipeline, succeed)
    assert breaker.snapshot().state == "closed"


@pytest.mark.parametrize("neutral", [client_error, rejected])
async def test_neutral_outcomes_neither_extend_nor_reset_the_run(
    clock: FakeClock, neutral: Any
) -> None:
    breaker, pipeline = make(clock, consecutive_failures=10, minimum_calls=100)
    await calls(pipeline, fail, 5)
    await calls(pipeline, neutral, 20)
    await calls(pipeline, fail, 4)
    assert breaker.snapshot().state == "closed"
    await call(pipeline, fail)
    assert breaker.snapshot().state == "open"


async def test_a_count_window_reads_the_run_from_its_ring(clock: FakeClock) -> None:
    breaker, pipeline = make(
        clock, window_type="count", window=50, minimum_calls=50, consecutive_failures=5
    )
    await calls(pipeline, succeed, 30)
    await calls(pipeline, fail, 4)
    await call(pipeline, client_error)  # neutral: not in the ring
    await call(pipeline, succeed)
    await calls(pipeline, fail, 4)
    assert breaker.snapshot().state == "closed"
    await call(pipeline, fail)
    assert breaker.snapshot().state == "open"


async def test_a_run_in_a_time_window_survives_buckets_leaving(clock: FakeClock) -> None:
    # 30 s window in 3 s buckets; the first bucket (a failure and a success) leaves the
    # window before the last failure of the run arrives: the run goes on.
    breaker, pipeline = make(clock, minimum_calls=100, consecutive_failures=3)
    await call(pipeline, fail)  # t=0
    clock.advance(1.0)
    await call(pipeline, succeed)  # t=1: ends that run
    clock.advance(2.5)
    await call(pipeline, fail)  # t=3.5: run 1
    clock.advance(0.5)
    await call(pipeline, fail)  # t=4: run 2
    clock.advance(27.5)
    assert breaker.snapshot().state == "closed"
    await call(pipeline, fail)  # t=31.5: the t=0..3 bucket leaves; run 3
    assert breaker.snapshot().state == "open"


async def test_a_whole_window_without_calls_starts_a_new_run(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=100, consecutive_failures=3)
    await calls(pipeline, fail, 2)
    clock.advance(31.0)
    await calls(pipeline, fail, 2)
    assert breaker.snapshot().state == "closed"
    await call(pipeline, fail)
    assert breaker.snapshot().state == "open"


async def test_consecutive_failures_none_leaves_the_window_alone(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, consecutive_failures=None)
    await calls(pipeline, succeed, 100)
    await calls(pipeline, fail, 60)
    assert breaker.snapshot().state == "closed"  # 60/160 < 0.5


async def test_the_run_starts_over_after_the_breaker_closes(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, consecutive_failures=3, minimum_calls=100, open_for=1.0)
    await calls(pipeline, fail, 3)
    assert breaker.snapshot().state == "open"
    clock.advance(1.0)
    assert await call(pipeline, succeed) == "ok"
    await calls(pipeline, fail, 2)
    assert breaker.snapshot().state == "closed"
    await call(pipeline, fail)
    assert breaker.snapshot().state == "open"


# -- a long-lived breaker -------------------------------------------------------------------


async def test_one_breaker_serves_mixed_calls_through_outage_and_recovery_cycles(
    clock: FakeClock, events: EventRecorder
) -> None:
    breaker, _ = waiting(clock, events, minimum_calls=20, failure_rate=0.5)
    pipeline = Pipeline(
        Timeout(2.0), breaker, clock=clock, classify=CLASSIFY, listeners=[events], telemetry=False
    )
    gate = Gate(clock)
    rng = random.Random(7)
    for cycle in range(4):
        # healthy, with client errors and the odd failure: stays closed
        for _ in range(60):
            fn = rng.choice((succeed, succeed, succeed, client_error, rejected, fail))
            await call(pipeline, fn)
            clock.advance(0.05)
        assert breaker.snapshot().state == "closed", cycle
        # outage: opens after 10 failures in a row, then waiters probe and fail
        gate.auto = False
        for _ in range(10):
            assert isinstance(await call(pipeline, gate), ConnectionError)
        assert breaker.snapshot().state == "open"
        hits = len(gate.starts)
        results: list[tuple[float, float, object]] = []
        async with anyio.create_task_group() as tg:
            await _start(tg, pipeline, gate, 20, results, clock)
        assert all(end - start <= 1.0 + 1e-9 for start, end, _ in results)
        assert len(gate.starts) - hits <= 6, "probes only, one per probe_interval"
        # recovery: a burst of waiters, one probe, then paced release
        gate.auto = None
        clock.advance(1.0)
        results.clear()
        async with anyio.create_task_group() as tg:
            await _start(tg, pipeline, gate, 30, results, clock)
            sizes = []
            while gate.pending:
                sizes.append(gate.answer())
                clock.advance(0.05)
                await anyio.wait_all_tasks_blocked()
        assert sizes[:3] == [1, 2, 4], cycle
        assert [r for _, _, r in results] == ["ok"] * 30
        snap = breaker.snapshot()
        assert (snap.state, snap.waiting, snap.probes) == ("closed", 0, 0)
        clock.advance(40.0)  # the window forgets the outage
    # Every refused waiter was reported once; nobody was refused without waiting.
    refused = sum(o in {"failed", "timeout"} for o in outcomes(events))
    assert refused
    assert len(events.of_type(CallRejected)) == refused


# -- options --------------------------------------------------------------------------------


def test_defaults() -> None:
    breaker = CircuitBreaker()
    assert breaker.consecutive_failures == 10
    assert (breaker.max_waiting, breaker.max_wait, breaker.probe_interval) == (100, 1.0, 0.2)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("consecutive_failures", 0),
        ("consecutive_failures", 2.5),
        ("max_waiting", -1),
        ("max_waiting", True),
        ("max_wait", -0.1),
        ("max_wait", math.nan),
        ("probe_interval", 0.0),
        ("probe_interval", math.inf),
    ],
)
def test_bad_values_name_the_parameter_and_value(option: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        CircuitBreaker(**{option: value})
    assert f"CircuitBreaker.{option}" in str(info.value)
    assert repr(value) in str(info.value)


async def test_reconfigure_changes_the_waiting_options_and_keeps_the_state(
    clock: FakeClock,
) -> None:
    breaker, pipeline = waiting(clock)
    await call(pipeline, fail)
    new = breaker.reconfigure(max_waiting=0, consecutive_failures=None, probe_interval=0.5)
    assert (new.max_waiting, new.consecutive_failures, new.probe_interval) == (0, None, 0.5)
    assert new.max_wait == 1.0
    assert new.snapshot().state == "open"
    again = Pipeline(new, clock=clock, classify=CLASSIFY, telemetry=False)
    assert isinstance(await call(again, succeed), CircuitOpenError)

"""Hedge: another attempt beside a slow one; the first acceptable answer wins.

Latency tests run in trio's virtual time (``MockClock(autojump_threshold=0)``), where tasks
really overlap; behaviour tests run on asyncio and trio with ``FakeClock``, the test moving
virtual time itself (``advance``) while the attempts wait on events it controls.
"""

from __future__ import annotations

import contextvars
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio
from trio.testing import MockClock

import resilient
from resilient import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    ConfigurationError,
    Hedge,
    Pipeline,
    RateLimiter,
    Retry,
    RetryBudget,
    Timeout,
    Verdict,
    on_exception,
    on_result,
)
from resilient._hedge import LatencyHistogram
from resilient.events import (
    AttemptEnded,
    AttemptStarted,
    BudgetRefused,
    HedgeEnded,
    HedgeStarted,
)
from resilient.extend import CircuitSnapshot, Context
from resilient.testing import EventRecorder, FakeClock
from test_telemetry_support import Otel, attrs, event_dicts


def run_virtual(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run ``fn`` on trio in virtual time: sleeps take no real time, tasks overlap."""
    return trio.run(fn, *args, clock=MockClock(autojump_threshold=0))


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def until(condition: Callable[[], bool], *, steps: int = 200) -> None:
    for _ in range(steps):
        if condition():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("condition never became true")


class Gate:
    """A dependency whose attempts block until the test lets each one answer."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self.answers: dict[int, tuple[anyio.Event, list[Any]]] = {}

    async def __call__(self) -> Any:
        number = len(self.started) + 1
        self.started.append(number)
        event, outcome = self.answers.setdefault(number, (anyio.Event(), []))
        try:
            await event.wait()
        except BaseException:
            self.cancelled.append(number)
            raise
        value = outcome[0]
        if isinstance(value, BaseException):
            raise value
        return value

    def answer(self, number: int, value: Any) -> None:
        event, outcome = self.answers.setdefault(number, (anyio.Event(), []))
        outcome.append(value)
        event.set()


async def start_and_hedge(
    tg: anyio.abc.TaskGroup, pipeline: Pipeline, gate: Gate, clock: FakeClock, out: list[Any]
) -> None:
    async def run() -> None:
        try:
            out.append(await pipeline.call(gate))
        except Exception as exc:
            out.append(exc)

    tg.start_soon(run)
    await until(lambda: len(gate.started) == 1)
    clock.advance(0.05)  # the original has not answered within the delay
    await until(lambda: len(gate.started) == 2)


# -- the tail is cut -------------------------------------------------------------------------


def _tail_run(hedged: bool, workers: int) -> tuple[float, int, int]:
    """2,000 calls to a dependency answering in 10 ms, 2 % of calls at 1 s: (p99, attempts,
    calls)."""

    async def main() -> tuple[float, int, int]:
        rng = random.Random(1234)
        attempts = 0

        async def dependency() -> str:
            nonlocal attempts
            attempts += 1
            await trio.sleep(1.0 if rng.random() < 0.02 else 0.010)
            return "ok"

        policies = [Hedge()] if hedged else []
        pipeline = Pipeline(*policies, telemetry=False)
        latencies: list[float] = []

        async def worker(calls: int) -> None:
            for _ in range(calls):
                started = trio.current_time()
                assert await pipeline.call(dependency) == "ok"
                latencies.append(trio.current_time() - started)

        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker, 2000 // workers)
        return quantile(latencies, 0.99), attempts, len(latencies)

    result: tuple[float, int, int] = run_virtual(main)
    return result


@pytest.mark.parametrize("workers", [1, 20])
def test_adaptive_hedging_cuts_p99_at_least_5x_with_at_most_5_percent_more_attempts(
    workers: int,
) -> None:
    """10 ms answers with 2 % at 1 s: the default Hedge (p95 delay) cuts p99 >= 5x, <= 5 %
    extra attempts (sequential callers and 20 concurrent ones)."""
    plain_p99, plain_attempts, calls = _tail_run(hedged=False, workers=workers)
    hedged_p99, hedged_attempts, hedged_calls = _tail_run(hedged=True, workers=workers)
    assert calls == hedged_calls == 2000
    assert plain_attempts == calls
    assert plain_p99 == pytest.approx(1.0)
    assert hedged_p99 * 5 <= plain_p99
    assert hedged_attempts <= calls * 1.05


def test_fixed_delay_hedges_only_calls_slower_than_the_delay() -> None:
    """delay=0.05: the 1 s calls are hedged (answering at ~60 ms), the 10 ms ones never."""

    async def main() -> tuple[list[float], int]:
        slow = {3, 7}
        attempts = 0
        seen: set[int] = set()

        async def dependency(i: int) -> int:
            nonlocal attempts
            attempts += 1
            first = i not in seen
            seen.add(i)
            await trio.sleep(1.0 if i in slow and first else 0.010)
            return i

        pipeline = Pipeline(Hedge(delay=0.05), telemetry=False)
        latencies = []
        for i in range(10):
            started = trio.current_time()
            assert await pipeline.call(dependency, i) == i
            latencies.append(trio.current_time() - started)
        return latencies, attempts

    latencies, attempts = run_virtual(main)
    assert attempts == 12
    assert latencies[3] == pytest.approx(0.06)
    assert latencies[7] == pytest.approx(0.06)
    assert max(lat for i, lat in enumerate(latencies) if i not in (3, 7)) == pytest.approx(0.01)


# -- who wins, who is cancelled --------------------------------------------------------------


async def test_a_fast_hedge_wins_and_the_slow_original_is_cancelled(clock: FakeClock) -> None:
    """The hedge answers first: its result is the call's; the original is cancelled."""
    events = EventRecorder()
    gate = Gate()
    pipeline = Pipeline(Hedge(delay=0.05), clock=clock, listeners=[events])
    out: list[Any] = []
    async with anyio.create_task_group() as tg:
        await start_and_hedge(tg, pipeline, gate, clock, out)
        gate.answer(2, "hedge")
    assert out == ["hedge"]
    assert gate.cancelled == [1]
    (started,) = events.of_type(HedgeStarted)
    assert (started.hedge, started.attempt, started.delay) == (1, 2, 0.05)
    (ended,) = events.of_type(HedgeEnded)
    assert (ended.winner, ended.attempts, ended.cancelled, ended.verdict) == (
        "hedge",
        2,
        1,
        Verdict.SUCCESS,
    )
    kinds = [(e.attempt, e.kind) for e in events.of_type(AttemptStarted)]
    assert kinds == [(1, "original"), (2, "hedge")]
    # The loser was cancelled: it has no AttemptEnded (no verdict, never a failure).
    assert [(e.attempt, e.kind) for e in events.of_type(AttemptEnded)] == [(2, "hedge")]


async def test_the_original_answering_after_a_hedge_started_wins(clock: FakeClock) -> None:
    """Hedged, but the original answers first: the hedge is cancelled, winner "original"."""
    events = EventRecorder()
    gate = Gate()
    pipeline = Pipeline(Hedge(delay=0.05), clock=clock, listeners=[events])
    out: list[Any] = []
    async with anyio.create_task_group() as tg:
        await start_and_hedge(tg, pipeline, gate, clock, out)
        gate.answer(1, "original")
    assert out == ["original"]
    assert gate.cancelled == [2]
    (ended,) = events.of_type(HedgeEnded)
    assert (ended.winner, ended.cancelled) == ("original", 1)


async def test_an_answer_before_the_delay_sends_no_hedge(clock: FakeClock) -> None:
    """Answered within the delay: one attempt, no hedge event, no task left behind."""
    events = EventRecorder()
    gate = Gate()
    gate.answer(1, "fast")
    pipeline = Pipeline(Hedge(delay=0.05), clock=clock, listeners=[events])
    assert await pipeline.call(gate) == "fast"
    assert gate.started == [1]
    assert events.events == []  # attempts are reported for hedged calls only


async def test_a_client_error_ends_the_call_at_once(clock: FakeClock) -> None:
    """A CLIENT_ERROR from the hedge is the call's outcome; the original is cancelled."""
    gate = Gate()
    pipeline = Pipeline(
        Hedge(delay=0.05),
        clock=clock,
        classify=[on_exception(ValueError, verdict=Verdict.CLIENT_ERROR)],
    )
    out: list[Any] = []
    async with anyio.create_task_group() as tg:
        await start_and_hedge(tg, pipeline, gate, clock, out)
        gate.answer(2, ValueError("bad request"))
    assert [type(e) for e in out] == [ValueError]
    assert gate.cancelled == [1]


async def test_a_client_error_before_the_delay_sends_no_hedge(clock: FakeClock) -> None:
    """The original's CLIENT_ERROR within the delay: raised as is, nothing else sent."""
    gate = Gate()
    gate.answer(1, ValueError("bad request"))
    pipeline = Pipeline(
        Hedge(delay=0.05),
        clock=clock,
        classify=[on_exception(ValueError, verdict=Verdict.CLIENT_ERROR)],
    )
    with pytest.raises(ValueError, match="bad request"):
        await pipeline.call(gate)
    assert gate.started == [1]


async def test_a_transient_failure_of_one_attempt_lets_the_other_go_on(
    clock: FakeClock,
) -> None:
    """The hedge fails with a ConnectionError: the original goes on and its answer wins."""
    events = EventRecorder()
    gate = Gate()
    pipeline = Pipeline(Hedge(delay=0.05), clock=clock, listeners=[events])
    out: list[Any] = []
    async with anyio.create_task_group() as tg:
        await start_and_hedge(tg, pipeline, gate, clock, out)
        gate.answer(2, ConnectionError("reset"))
        await until(lambda: len(events.of_type(AttemptEnded)) == 1)
        assert out == []
        gate.answer(1, "slow but fine")
    assert out == ["slow but fine"]
    assert gate.cancelled == []
    (ended,) = events.of_type(HedgeEnded)
    assert (ended.winner, ended.cancelled) == ("original", 0)


async def test_when_every_attempt_fails_the_last_transient_failure_is_raised(
    clock: FakeClock,
) -> None:
    """Both attempts fail: the call raises the dependency's failure, not a refusal of ours."""
    events = EventRecorder()
    gate = Gate()
    pipeline = Pipeline(Hedge(delay=0.05), clock=clock, listeners=[events])
    out: list[Any] = []
    async with anyio.create_task_group() as tg:
        await start_and_hedge(tg, pipeline, gate, clock, out)
        failure = ConnectionError("original failed")
        gate.answer(1, failure)
        await until(lambda: len(events.of_type(AttemptEnded)) == 1)
        gate.answer(2, BulkheadFullError("full", policy="bulkhead"))
    assert out == [failure]
    (ended,) = events.of_type(HedgeEnded)
    assert (ended.winner, ended.verdict) == ("none", Verdict.TRANSIENT)


async def test_a_transient_result_replaced_by_a_winner_is_discarded(clock: FakeClock) -> None:
    """A 503-like result loses to a later success: ``on_discard`` releases it."""
    discarded: list[Any] = []
    events = EventRecorder()
    gate = Gate()
    pipeline = Pipeline(
        Hedge(delay=0.05, on_discard=discarded.append),
        clock=clock,
        classify=[on_result(lambda r: r == 503, verdict=Verdict.TRANSIENT)],
        listeners=[events],
    )
    out: list[Any] = []
    async with anyio.create_task_group() as tg:
        await start_and_hedge(tg, pipeline, gate, clock, out)
        gate.answer(1, 503)
        await until(lambda: len(events.of_type(AttemptEnded)) == 1)
        assert discarded == []  # still the call's answer if the hedge fails too
        gate.answer(2, 200)
    assert out == [200]
    assert discarded == [503]


def test_a_result_arriving_in_the_same_instant_as_the_winner_is_discarded() -> None:
    """Original and hedge answer at the same virtual instant: the loser's result, when it got
    that far before being cancelled, is discarded (released), never returned.

    trio runs the tasks woken together in a random order, so the scenario is repeated: the
    loser completes in most runs.
    """

    async def main() -> tuple[Any, list[Any], list[str]]:
        discarded: list[Any] = []
        completed: list[str] = []
        count = 0
        end = trio.current_time() + 0.1

        async def dependency() -> str:
            nonlocal count
            count += 1
            mine = count
            await trio.sleep_until(end)  # the original and its hedge (at 0.05) both end here
            completed.append(f"answer {mine}")
            return f"answer {mine}"

        pipeline = Pipeline(Hedge(delay=0.05, on_discard=discarded.append), telemetry=False)
        return await pipeline.call(dependency), discarded, completed

    both = 0
    for _ in range(10):
        result, discarded, completed = run_virtual(main)
        assert result in completed
        assert discarded == [answer for answer in completed if answer != result]
        both += len(completed) == 2
    assert both > 0


# -- losers are never failures ---------------------------------------------------------------


def test_a_breaker_inside_never_counts_a_cancelled_loser() -> None:
    """200 calls, every 4th slow and won by its hedge: the breaker inside sees only
    successes (the cancelled originals are neutral), and stays closed."""

    async def main() -> tuple[CircuitSnapshot, int]:
        breaker = CircuitBreaker(failure_rate=0.1, minimum_calls=5, window=1000.0)
        pipeline = Pipeline(Hedge(delay=0.05, budget=None), breaker, telemetry=False)
        cancelled = 0
        seen: set[int] = set()

        async def dependency(i: int) -> int:
            nonlocal cancelled
            first = i not in seen
            seen.add(i)
            try:
                await trio.sleep(1.0 if i % 4 == 0 and first else 0.01)
            except trio.Cancelled:
                cancelled += 1
                raise
            return i

        for i in range(200):
            assert await pipeline.call(dependency, i) == i
        return breaker.snapshot(), cancelled

    snapshot, cancelled = run_virtual(main)
    assert cancelled == 50
    assert snapshot.state == "closed"
    assert snapshot.failures == 0
    assert snapshot.calls == 200  # the winners: 150 originals, 50 hedges


# -- budget, deadline, idempotency ------------------------------------------------------------


def refunded_hedges(events: EventRecorder) -> int:
    """Hedges that won without a dependency failure: their budget token came back."""
    return sum(
        1
        for e in events.of_type(HedgeEnded)
        if e.winner == "hedge" and e.verdict in (Verdict.SUCCESS, Verdict.CLIENT_ERROR)
    )


async def test_hedges_spend_the_budget_and_stop_when_it_is_empty(clock: FakeClock) -> None:
    """A budget of two tokens: two slow calls are hedged (the originals win: the hedges are
    spent), the third is refused a hedge."""
    events = EventRecorder()
    budget = RetryBudget(ratio=0.0, reserve=2, window=1e9)
    pipeline = Pipeline(Hedge(delay=0.05, budget=budget), clock=clock, listeners=[events])
    for expected in ("one", "two"):
        gate = Gate()
        out: list[Any] = []
        async with anyio.create_task_group() as tg:
            await start_and_hedge(tg, pipeline, gate, clock, out)
            gate.answer(1, expected)
        assert out == [expected]
    assert budget.available(clock.now()) == pytest.approx(0.0, abs=1e-6)
    gate = Gate()
    out = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            out.append(await pipeline.call(gate))

        tg.start_soon(run)
        await until(lambda: len(gate.started) == 1)
        clock.advance(0.05)
        await until(lambda: len(events.of_type(BudgetRefused)) == 1)
        gate.answer(1, "waited")
    assert out == ["waited"]
    assert gate.started == [1]
    (refused,) = events.of_type(BudgetRefused)
    assert refused.policy == "hedge"
    assert len(events.of_type(HedgeStarted)) == 2


async def test_a_hedge_that_wins_gets_its_token_back(clock: FakeClock) -> None:
    """A one-token budget: a hedge that wins with a success is refunded, so every slow call
    may hedge; a hedge that loses is spent."""
    events = EventRecorder()
    budget = RetryBudget(ratio=0.0, reserve=1, window=1e9)
    pipeline = Pipeline(Hedge(delay=0.05, budget=budget), clock=clock, listeners=[events])
    for expected in ("one", "two", "three"):
        gate = Gate()
        out: list[Any] = []
        async with anyio.create_task_group() as tg:
            await start_and_hedge(tg, pipeline, gate, clock, out)
            gate.answer(2, expected)  # the hedge wins
        assert out == [expected]
    assert budget.available(clock.now()) == pytest.approx(1.0)
    assert len(events.of_type(HedgeStarted)) == 3
    gate = Gate()
    out = []
    async with anyio.create_task_group() as tg:
        await start_and_hedge(tg, pipeline, gate, clock, out)
        gate.answer(1, "original")  # the hedge loses: its token is spent
    assert budget.available(clock.now()) == pytest.approx(0.0, abs=1e-6)


async def test_hedged_calls_earn_when_they_do_not_fail(clock: FakeClock) -> None:
    """deposit=True: each call ending without a dependency failure earns ``ratio``; a failed
    one earns nothing. deposit=False: nothing is earned here."""

    async def ok() -> str:
        return "ok"

    async def down() -> str:
        raise ConnectionError("down")

    earning = RetryBudget(ratio=0.5, reserve=0)
    silent = RetryBudget(ratio=0.5, reserve=0)
    for budget, deposit in ((earning, True), (silent, False)):
        pipeline = Pipeline(Hedge(delay=3600.0, budget=budget, deposit=deposit), clock=clock)
        for _ in range(4):
            assert await pipeline.call(ok) == "ok"
            with pytest.raises(ConnectionError):
                await pipeline.call(down)
    assert earning.available(clock.now()) == pytest.approx(2.0)
    assert silent.available(clock.now()) == 0.0


async def test_calls_no_hedge_could_join_still_earn(clock: FakeClock) -> None:
    """A deadline shorter than the delay: the call runs once, and still earns when it does
    not fail (a Hedge alone, deposit=True, on a short-deadline dependency)."""

    async def ok() -> str:
        return "ok"

    async def down() -> str:
        raise ConnectionError("down")

    budget = RetryBudget(ratio=0.5, reserve=0)
    pipeline = Pipeline(Timeout(1.0), Hedge(delay=3600.0, budget=budget), clock=clock)
    for _ in range(4):
        assert await pipeline.call(ok) == "ok"
        with pytest.raises(ConnectionError):
            await pipeline.call(down)
    assert budget.available(clock.now()) == pytest.approx(2.0)


async def test_hedges_and_retries_share_one_budget(clock: FakeClock) -> None:
    """A hedge spends the budget's last token: the Retry around it is then refused."""
    budget = RetryBudget(ratio=0.0, reserve=1, window=1e9)
    events = EventRecorder()
    pipeline = Pipeline(
        Retry(attempts=3, base_delay=0.0, max_delay=0.0, budget=budget),
        Hedge(delay=0.05, budget=budget, deposit=False),
        clock=clock,
        listeners=[events],
    )
    gate = Gate()
    out: list[Any] = []
    async with anyio.create_task_group() as tg:
        await start_and_hedge(tg, pipeline, gate, clock, out)
        gate.answer(1, ConnectionError("one"))
        await until(lambda: len(events.of_type(AttemptEnded)) == 1)
        gate.answer(2, ConnectionError("two"))
    assert [type(e) for e in out] == [ConnectionError]
    assert gate.started == [1, 2]  # no retry: the hedge spent the only token
    assert [e.policy for e in events.of_type(BudgetRefused)] == ["retry"]


async def test_no_hedge_when_the_deadline_comes_before_the_delay(clock: FakeClock) -> None:
    """An enclosing 30 ms deadline and a 50 ms delay: the call is never hedged."""
    events = EventRecorder()
    pipeline = Pipeline(
        Timeout(0.03), Hedge(delay=0.05), Timeout(1.0), clock=clock, listeners=[events]
    )

    async def slow() -> str:
        await clock.sleep(1.0)
        return "late"

    with pytest.raises(resilient.TimeoutExceeded):
        await pipeline.call(slow)
    assert events.of_type(HedgeStarted) == []


async def test_a_call_marked_not_resendable_is_never_hedged(clock: FakeClock) -> None:
    """``ctx.resendable = False`` (an integration's verdict): one attempt, however slow."""
    pipeline = Pipeline(Hedge(delay=0.0), clock=clock)
    gate = Gate()
    ctx = pipeline.context(gate)
    ctx.resendable = False
    async with anyio.create_task_group() as tg:
        out: list[Any] = []

        async def run() -> None:
            out.append(await pipeline.run(ctx))

        tg.start_soon(run)
        await until(lambda: len(gate.started) == 1)
        clock.advance(10.0)
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        assert gate.started == [1]
        gate.answer(1, "only one")
    assert out == ["only one"]


async def test_each_hedge_runs_on_its_own_copy_of_the_context(clock: FakeClock) -> None:
    """Inner policies see a Context per attempt (kind "hedge" for the hedge) and the call's
    Context is left as it was (the inner Timeout restores its own deadline)."""
    seen: list[tuple[int, str, float]] = []

    class Spy:
        name = "spy"

        async def execute(self, call: Any, ctx: Context, /) -> Any:
            seen.append((id(ctx), ctx.attempt_kind, ctx.deadline))
            return await call(ctx)

    gate = Gate()
    pipeline = Pipeline(Hedge(delay=0.05), Timeout(5.0), Spy(), clock=clock)
    ctx = pipeline.context(gate)
    out: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            out.append(await pipeline.run(ctx))

        tg.start_soon(run)
        await until(lambda: len(gate.started) == 1)
        clock.advance(0.05)
        await until(lambda: len(gate.started) == 2)
        gate.answer(2, "hedge")
    assert out == ["hedge"]
    (original_id, original_kind, first_deadline), (hedge_id, hedge_kind, second_deadline) = seen
    assert original_id == id(ctx) != hedge_id
    assert (original_kind, hedge_kind) == ("original", "hedge")
    assert (first_deadline, second_deadline) == (5.0, 5.05)
    assert ctx.deadline == math.inf
    assert ctx.attempt_kind == "original"


async def test_max_hedges_two_sends_two_hedges_one_delay_apart(clock: FakeClock) -> None:
    """max_hedges=2: a second hedge starts one more delay after the first."""
    events = EventRecorder()
    gate = Gate()
    pipeline = Pipeline(
        Hedge(delay=0.05, max_hedges=2, budget=None), clock=clock, listeners=[events]
    )
    out: list[Any] = []
    async with anyio.create_task_group() as tg:
        await start_and_hedge(tg, pipeline, gate, clock, out)
        clock.advance(0.05)
        await until(lambda: len(gate.started) == 3)
        gate.answer(3, "third")
    assert out == ["third"]
    assert sorted(gate.cancelled) == [1, 2]
    assert [(e.hedge, e.at) for e in events.of_type(HedgeStarted)] == [(1, 0.05), (2, 0.1)]


async def test_max_hedges_zero_turns_hedging_off(clock: FakeClock) -> None:
    gate = Gate()
    pipeline = Pipeline(Hedge(delay=0.0, max_hedges=0), clock=clock)
    gate.answer(1, "plain")
    assert await pipeline.call(gate) == "plain"
    assert gate.started == [1]


async def test_outer_cancellation_cancels_every_attempt(clock: FakeClock) -> None:
    """The caller gives up: the original and its hedge are both cancelled, nothing raised
    but the cancellation."""
    gate = Gate()
    pipeline = Pipeline(Hedge(delay=0.05), clock=clock)
    out: list[Any] = []
    async with anyio.create_task_group() as tg:
        await start_and_hedge(tg, pipeline, gate, clock, out)
        tg.cancel_scope.cancel()
    assert out == []
    assert sorted(gate.cancelled) == [1, 2]


# -- nothing leaks -----------------------------------------------------------------------------


async def _thousand_calls(
    clock: Any, sleep: Callable[[float], Awaitable[None]], now: Callable[[], float]
) -> tuple[int, int, float, float, int, int]:
    budget = RetryBudget(ratio=0.0, reserve=10_000, window=1e12)
    events = EventRecorder()
    bulkhead = Bulkhead(max_concurrent=4, max_waiting=1000, max_wait=100.0)
    limiter = RateLimiter(rate=2000.0, burst=5, max_wait=100.0)
    pipeline = Pipeline(
        Hedge(delay=0.02, budget=budget),
        limiter,
        bulkhead,
        Timeout(0.5),
        clock=clock,
        listeners=[events],
        telemetry=False,
    )
    rng = random.Random(99)
    outcomes = {"ok": 0, "cancelled": 0, "failed": 0}

    async def dependency(latency: float, fails: bool) -> str:
        await sleep(latency)
        if fails:
            raise ConnectionError("reset")
        return "ok"

    async def one(latency: float, fails: bool, cancel_after: int | None) -> None:
        with anyio.CancelScope() as scope:
            if cancel_after is not None:

                async def canceller() -> None:
                    for _ in range(cancel_after):
                        await anyio.lowlevel.checkpoint()
                    scope.cancel()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(canceller)
                    try:
                        await pipeline.call(dependency, latency, fails)
                        outcomes["ok"] += 1
                    except ConnectionError:
                        outcomes["failed"] += 1
                    tg.cancel_scope.cancel()
                return
            try:
                await pipeline.call(dependency, latency, fails)
                outcomes["ok"] += 1
            except ConnectionError:
                outcomes["failed"] += 1
        if scope.cancelled_caught:
            outcomes["cancelled"] += 1

    for _ in range(50):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                latency = rng.choice((0.005, 0.01, 0.05, 0.2))
                fails = rng.random() < 0.1
                cancel_after = rng.choice((None, None, 1, 3, 10, 30))
                tg.start_soon(one, latency, fails, cancel_after)
    started = len(events.of_type(HedgeStarted))
    won = refunded_hedges(events)
    assert sum(outcomes.values()) == 1000
    assert outcomes["cancelled"] > 100
    assert started > 50
    bulk = bulkhead.snapshot()
    lim = limiter.snapshot(now=now() + 10.0)  # long after: the bucket is full again
    return (
        bulk.running + bulk.waiting,
        lim.waiting,
        lim.tokens,
        budget.available(now()) - (10_000 - started + won),
        started,
        outcomes["ok"],
    )


def test_nothing_leaks_after_1000_hedged_calls_with_random_cancellations_trio() -> None:
    """trio, virtual time: slots, queued waiters and limiter tokens all come back; the
    budget lost exactly one token per hedge started that did not win (a winner's comes back)."""

    async def main() -> Any:
        return await _thousand_calls(None, trio.sleep, trio.current_time)

    slots, waiting, tokens, budget_drift, _, ok = run_virtual(main)
    assert (slots, waiting) == (0, 0)
    assert tokens == pytest.approx(5.0)
    assert budget_drift == pytest.approx(0.0, abs=1e-6)
    assert ok > 200


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_nothing_leaks_after_1000_hedged_calls_with_random_cancellations_asyncio(
    anyio_backend: str,
) -> None:
    """asyncio with FakeClock: the same accounting as on trio."""
    clock = FakeClock()
    slots, waiting, tokens, budget_drift, _, ok = await _thousand_calls(
        clock, clock.sleep, clock.now
    )
    assert (slots, waiting) == (0, 0)
    assert tokens == pytest.approx(5.0)
    assert budget_drift == pytest.approx(0.0, abs=1e-6)
    assert ok > 200


# -- the adaptive delay ------------------------------------------------------------------------


def test_latency_histogram_reports_the_cap_until_it_has_enough_samples() -> None:
    histogram = LatencyHistogram(floor=0.005, cap=1.0, min_samples=20)
    for _ in range(19):
        histogram.record(0.01)
    assert histogram.delay() == 1.0
    histogram.record(0.01)
    assert 0.01 <= histogram.delay() < 0.01 * 1.1


def test_latency_histogram_finds_the_percentile_within_one_bucket() -> None:
    """1,000 latencies uniform over 10..100 ms: p95 ~ 95.5 ms, within a bucket's width."""
    histogram = LatencyHistogram(percentile=0.95, floor=0.005, cap=1.0, decay=10_000)
    for i in range(1000):
        histogram.record(0.010 + 0.090 * i / 999)
    width = (1.0 / 0.005) ** (1 / 63)
    assert 0.0955 <= histogram.delay() <= 0.0955 * width


def test_latency_histogram_stays_within_floor_and_cap() -> None:
    histogram = LatencyHistogram(floor=0.005, cap=1.0, min_samples=1)
    for _ in range(100):
        histogram.record(0.0001)
    assert histogram.delay() == 0.005
    for _ in range(10_000):
        histogram.record(30.0)
    assert histogram.delay() == 1.0


def test_latency_histogram_follows_a_shift_and_keeps_fixed_memory() -> None:
    """After latencies move from 10 ms to 200 ms, decay lets the delay follow; the counts
    never grow beyond their fixed number of buckets."""
    histogram = LatencyHistogram(floor=0.005, cap=1.0, decay=1024)
    for _ in range(5000):
        histogram.record(0.01)
    assert histogram.delay() < 0.012
    for _ in range(5000):
        histogram.record(0.2)
    assert 0.2 <= histogram.delay() < 0.2 * 1.1
    assert histogram.samples < 2048


def test_adaptive_delay_follows_observed_latency() -> None:
    """The Hedge's own delay moves to the p95 of what it observed."""

    async def main() -> tuple[float, float]:
        hedge = Hedge(min_samples=20)
        pipeline = Pipeline(hedge, telemetry=False)
        before = hedge.delay

        async def dependency() -> None:
            await trio.sleep(0.04)

        for _ in range(100):
            await pipeline.call(dependency)
        return before, hedge.delay

    before, after = run_virtual(main)
    assert before == 1.0
    assert 0.04 <= after < 0.04 * 1.1


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"delay": -1.0}, "Hedge.delay"),
        ({"delay": "fast"}, "Hedge.delay"),
        ({"delay": math.nan}, "Hedge.delay"),
        ({"max_hedges": -1}, "Hedge.max_hedges"),
        ({"percentile": 1.0}, "Hedge.percentile"),
        ({"percentile": 0.0}, "Hedge.percentile"),
        ({"min_delay": 0.0}, "Hedge.min_delay"),
        ({"min_delay": 2.0, "max_delay": 1.0}, "Hedge.max_delay"),
        ({"min_samples": 0}, "Hedge.min_samples"),
        ({"budget": object()}, "Hedge.budget"),
        ({"deposit": "yes"}, "Hedge.deposit"),
        ({"on_discard": 3}, "Hedge.on_discard"),
        ({"delay": 0.05, "percentile": 0.99}, "Hedge.percentile"),
        ({"delay": 0.05, "max_delay": 2.0}, "Hedge.max_delay"),
        ({"budget": None, "deposit": False}, "Hedge.deposit"),
        ({"name": ""}, "Hedge.name"),
    ],
)
def test_invalid_options_name_the_parameter(options: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ConfigurationError, match=parameter.replace(".", r"\.")):
        Hedge(**options)


def test_options_are_readable() -> None:
    budget = RetryBudget()
    hedge = Hedge(delay=0.05, max_hedges=2, budget=budget)
    assert (hedge.delay, hedge.max_hedges, hedge.budget, hedge.adaptive) == (
        0.05,
        2,
        budget,
        False,
    )
    assert Hedge().adaptive
    assert Hedge(budget=None).budget is None
    assert "Hedge(delay=0.05, max_hedges=2" in repr(hedge)


async def test_hedge_as_a_decorator(clock: FakeClock) -> None:
    @Hedge(delay=0.05)
    async def double(x: int) -> int:
        return 2 * x

    assert await double(21) == 42


# -- telemetry ---------------------------------------------------------------------------------


async def test_telemetry_labels_original_and_hedge_attempts(clock: FakeClock) -> None:
    """Real OTel SDK: a hedge span event, the hedges counter, and attempt events and the
    attempt histogram labelled original / hedge; the cancelled loser records no attempt."""
    otel = Otel.create()
    gate = Gate()
    pipeline = Pipeline(Hedge(delay=0.05), name="search", clock=clock, telemetry=otel.telemetry)
    ctx = pipeline.context(gate, operation="query")
    out: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            out.append(await pipeline.run(ctx))

        tg.start_soon(run)
        await until(lambda: len(gate.started) == 1)
        clock.advance(0.05)
        await until(lambda: len(gate.started) == 2)
        gate.answer(2, "hedge")
    assert out == ["hedge"]
    span = otel.span("search query")
    names = [name for name, _ in event_dicts(span)]
    assert names == ["resilient.hedge", "resilient.attempt", "resilient.hedge.ended"]
    hedge, attempt, ended = (a for _, a in event_dicts(span))
    assert hedge == {
        "resilient.policy": "hedge",
        "resilient.hedge": 1,
        "resilient.attempt": 2,
        "resilient.hedge.delay": 0.05,
    }
    assert attempt["resilient.attempt.kind"] == "hedge"
    assert ended == {
        "resilient.policy": "hedge",
        "resilient.hedge.winner": "hedge",
        "resilient.attempts": 2,
        "resilient.hedge.cancelled": 1,
        "resilient.verdict": "success",
    }
    assert otel.values("resilient.hedges") == {
        attrs(pipeline="search", operation="query", policy="hedge"): 1
    }
    durations = otel.values("resilient.attempt.duration")
    assert list(durations) == [
        attrs(pipeline="search", operation="query", policy="hedge", verdict="success")
        | {("resilient.attempt.kind", "hedge")}
    ]


# -- asyncio with the system clock: the original runs in the caller's task ------------------
#
# There, hedges start from a loop timer. These tests need no virtual time: delay=0 starts the
# hedge at the loop's next iteration, delay=3600 never; the attempts wait on events.

asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])


async def start_inline(
    tg: anyio.abc.TaskGroup, pipeline: Pipeline, gate: Gate, out: list[Any]
) -> None:
    async def run() -> None:
        try:
            out.append(await pipeline.call(gate))
        except Exception as exc:
            out.append(exc)

    tg.start_soon(run)
    await until(lambda: len(gate.started) == 2)


@asyncio_only
async def test_inline_a_hedge_winning_cuts_the_original_in_the_callers_task(
    anyio_backend: str,
) -> None:
    """The original (inside an attempt Timeout) is cancelled in the caller's task when the
    hedge wins; the call returns the hedge's answer and the task is not left cancelled."""
    events = EventRecorder()
    gate = Gate()
    pipeline = Pipeline(Hedge(delay=0.0), Timeout(60.0), listeners=[events])
    out: list[Any] = []
    async with anyio.create_task_group() as tg:
        await start_inline(tg, pipeline, gate, out)
        gate.answer(2, "hedge")
    assert out == ["hedge"]
    assert gate.cancelled == [1]
    (ended,) = events.of_type(HedgeEnded)
    assert (ended.winner, ended.cancelled) == ("hedge", 1)
    # The caller's task goes on normally: the next call through the same policy works.
    gate2 = Gate()
    gate2.answer(1, "next")
    assert await Pipeline(Hedge(delay=3600.0)).call(gate2) == "next"


@asyncio_only
async def test_inline_the_original_winning_cancels_the_hedge_task(anyio_backend: str) -> None:
    events = EventRecorder()
    gate = Gate()
    pipeline = Pipeline(Hedge(delay=0.0), listeners=[events])
    out: list[Any] = []
    async with anyio.create_task_group() as tg:
        await start_inline(tg, pipeline, gate, out)
        gate.answer(1, "original")
    assert out == ["original"]
    assert gate.cancelled == [2]
    (ended,) = events.of_type(HedgeEnded)
    assert (ended.winner, ended.cancelled) == ("original", 1)


@asyncio_only
async def test_inline_a_transient_original_waits_for_its_hedge(anyio_backend: str) -> None:
    """The original fails with a ConnectionError: the caller waits for the hedge's answer."""
    gate = Gate()
    pipeline = Pipeline(Hedge(delay=0.0))
    out: list[Any] = []
    async with anyio.create_task_group() as tg:
        await start_inline(tg, pipeline, gate, out)
        gate.answer(1, ConnectionError("reset"))
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        assert out == []
        gate.answer(2, "hedge")
    assert out == ["hedge"]


@asyncio_only
async def test_inline_every_attempt_failing_raises_the_last_failure(anyio_backend: str) -> None:
    gate = Gate()
    pipeline = Pipeline(Hedge(delay=0.0))
    out: list[Any] = []
    second = ConnectionError("second")
    async with anyio.create_task_group() as tg:
        await start_inline(tg, pipeline, gate, out)
        gate.answer(1, ConnectionError("first"))
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        gate.answer(2, second)
    assert out == [second]


@asyncio_only
async def test_inline_a_client_error_of_the_hedge_ends_the_call(anyio_backend: str) -> None:
    gate = Gate()
    pipeline = Pipeline(
        Hedge(delay=0.0), classify=[on_exception(ValueError, verdict=Verdict.CLIENT_ERROR)]
    )
    out: list[Any] = []
    async with anyio.create_task_group() as tg:
        await start_inline(tg, pipeline, gate, out)
        gate.answer(2, ValueError("bad"))
    assert [type(e) for e in out] == [ValueError]
    assert gate.cancelled == [1]


@asyncio_only
async def test_inline_outer_cancellation_cancels_both_attempts(anyio_backend: str) -> None:
    gate = Gate()
    pipeline = Pipeline(Hedge(delay=0.0))
    out: list[Any] = []
    async with anyio.create_task_group() as tg:
        await start_inline(tg, pipeline, gate, out)
        tg.cancel_scope.cancel()
    assert out == []
    assert sorted(gate.cancelled) == [1, 2]


@asyncio_only
async def test_inline_an_answer_within_the_delay_starts_nothing(anyio_backend: str) -> None:
    events = EventRecorder()
    hedge = Hedge(delay=3600.0)
    pipeline = Pipeline(hedge, listeners=[events])
    for i in range(50):
        gate = Gate()
        gate.answer(1, i)
        assert await pipeline.call(gate) == i
        assert gate.started == [1]
    assert events.of_type(HedgeStarted) == []


@asyncio_only
async def test_inline_nothing_leaks_after_1000_calls_with_random_cancellations(
    anyio_backend: str,
) -> None:
    """The caller's-task way under random cancellations: slots, waiters and budget tokens
    all accounted for (attempts take a random number of loop iterations; delay 0)."""
    budget = RetryBudget(ratio=0.0, reserve=100_000, window=1e12)
    events = EventRecorder()
    bulkhead = Bulkhead(max_concurrent=4, max_waiting=1000, max_wait=60.0)
    pipeline = Pipeline(
        Hedge(delay=0.0, budget=budget),
        bulkhead,
        Timeout(60.0),
        listeners=[events],
        telemetry=False,
    )
    rng = random.Random(7)
    outcomes = {"ok": 0, "failed": 0}

    async def dependency(steps: int, fails: bool) -> str:
        for _ in range(steps):
            await anyio.lowlevel.checkpoint()
        if fails:
            raise ConnectionError("reset")
        return "ok"

    async def one(steps: int, fails: bool, cancel_after: int | None) -> None:
        async with anyio.create_task_group() as tg:
            if cancel_after is not None:

                async def canceller() -> None:
                    for _ in range(cancel_after):
                        await anyio.lowlevel.checkpoint()
                    tg.cancel_scope.cancel()

                tg.start_soon(canceller)
            try:
                await pipeline.call(dependency, steps, fails)
                outcomes["ok"] += 1
            except ConnectionError:
                outcomes["failed"] += 1
            tg.cancel_scope.cancel()

    finished = 0
    for _ in range(50):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(
                    one,
                    rng.randrange(0, 8),
                    rng.random() < 0.2,
                    rng.choice((None, None, 1, 2, 5, 12)),
                )
        finished += 20
    started = len(events.of_type(HedgeStarted))
    won = refunded_hedges(events)
    assert finished == 1000
    assert started > 100
    assert outcomes["ok"] > 200
    snapshot = bulkhead.snapshot()
    assert (snapshot.running, snapshot.waiting) == (0, 0)
    assert budget.available(0.0) - (100_000 - started + won) == pytest.approx(0.0, abs=1e-6)
    # The caller's tasks are clean: no pending cancellation leaks into the next await.
    await anyio.lowlevel.checkpoint()


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


async def test_hedges_see_the_callers_context_variables() -> None:
    """A hedge runs in the caller's context variables (a request id, the current span), on
    the caller's-task way (asyncio) and in a task group (trio)."""
    seen: list[str] = []
    gate = Gate()

    async def dependency() -> Any:
        seen.append(REQUEST_ID.get())
        return await gate()

    pipeline = Pipeline(Hedge(delay=0.0))
    out: list[Any] = []

    async def run(request_id: str) -> None:
        REQUEST_ID.set(request_id)
        out.append(await pipeline.call(dependency))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "req-42")
        await until(lambda: len(gate.started) == 2)
        gate.answer(2, "hedge")
    assert out == ["hedge"]
    assert seen == ["req-42", "req-42"]


@asyncio_only
async def test_inline_calls_answered_in_time_refill_the_reserve_hedges_spent(
    anyio_backend: str,
) -> None:
    """A one-token reserve: a failed hedged call spends it; a quick success (answered before
    any hedge) collects the refill, so the next slow call may hedge again."""
    budget = RetryBudget(ratio=0.0, reserve=1, window=1e-9)
    events = EventRecorder()
    pipeline = Pipeline(Hedge(delay=0.0, budget=budget), listeners=[events])

    async def hedged_and_failed() -> None:
        gate = Gate()
        out: list[Any] = []
        async with anyio.create_task_group() as tg:
            await start_inline(tg, pipeline, gate, out)
            gate.answer(1, ConnectionError("one"))
            for _ in range(10):
                await anyio.lowlevel.checkpoint()
            gate.answer(2, ConnectionError("two"))
        assert [type(e) for e in out] == [ConnectionError]

    async def quick() -> str:
        return "quick"  # answers before the loop runs the hedge timer

    await hedged_and_failed()
    assert budget.available(0.0) < 1.0  # spent, and failures collect no refill
    assert await pipeline.call(quick) == "quick"
    assert budget.available(0.0) >= 1.0
    await hedged_and_failed()
    assert len(events.of_type(HedgeStarted)) == 2


@asyncio_only
async def test_inline_an_original_swallowing_its_cut_still_loses(anyio_backend: str) -> None:
    """An original that catches the cancellation and returns anyway: the hedge's answer
    stands, the original's value is discarded, and the caller's task carries no leftover
    cancellation into its next await."""
    discarded: list[Any] = []
    started: list[int] = []
    hedge_answer = anyio.Event()

    async def stubborn() -> str:
        started.append(len(started) + 1)
        if len(started) == 1:
            try:
                await anyio.sleep_forever()
            except BaseException:
                return "swallowed"  # the misbehaviour under test
        await hedge_answer.wait()
        return "hedge"

    pipeline = Pipeline(Hedge(delay=0.0, on_discard=discarded.append))
    out: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            out.append(await pipeline.call(stubborn))
            await anyio.lowlevel.checkpoint()  # would raise a leftover cancellation
            out.append("next await fine")

        tg.start_soon(run)
        await until(lambda: len(started) == 2)
        hedge_answer.set()
    assert out == ["hedge", "next await fine"]
    assert discarded == ["swallowed"]


def test_an_outer_deadline_cuts_the_original_and_its_hedge_together() -> None:
    """Timeout(0.1) > Hedge(0.05) > Timeout(1.0): the outer timeout arms no timer of its own
    (the hedge is deadline-aware); each attempt's timer is armed at the call's deadline, the
    hedge's too, so the call ends at 0.1 s with a timeout naming the outer policy."""

    async def main() -> tuple[float, str, int]:
        attempts = 0

        async def slow() -> None:
            nonlocal attempts
            attempts += 1
            await trio.sleep(5.0)

        pipeline = Pipeline(
            Timeout(0.1, name="total"),
            Hedge(delay=0.05, budget=None),
            Timeout(1.0, name="attempt"),
            telemetry=False,
        )
        started = trio.current_time()
        with pytest.raises(resilient.TimeoutExceeded) as info:
            await pipeline.call(slow)
        return trio.current_time() - started, info.value.policy, attempts

    elapsed, policy, attempts = run_virtual(main)
    assert elapsed == pytest.approx(0.1)
    assert policy == "total"
    assert attempts == 2


@asyncio_only
async def test_inline_two_hedges_start_and_the_third_attempt_wins(anyio_backend: str) -> None:
    """max_hedges=2 on the caller's-task way: two hedge tasks, the last one's answer wins,
    the original and the first hedge are cancelled."""
    events = EventRecorder()
    gate = Gate()
    pipeline = Pipeline(Hedge(delay=0.0, max_hedges=2, budget=None), listeners=[events])
    out: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            out.append(await pipeline.call(gate))

        tg.start_soon(run)
        await until(lambda: len(gate.started) == 3)
        gate.answer(3, "third")
    assert out == ["third"]
    assert sorted(gate.cancelled) == [1, 2]
    assert [e.hedge for e in events.of_type(HedgeStarted)] == [1, 2]
    (ended,) = events.of_type(HedgeEnded)
    assert (ended.winner, ended.attempts, ended.cancelled) == ("hedge", 3, 2)


def test_the_standard_order_with_a_hedge_over_2000_mixed_calls() -> None:
    """Timeout > Retry > Hedge > CircuitBreaker > Bulkhead > Timeout, one shared budget, 20
    callers, a dependency answering in 10 ms with 2 % of attempts at 1 s and 5 % failing:
    all but a handful of calls succeed (hedges that win and retries that succeed get their
    tokens back; measured: all 2,000), the tail is cut, retries and hedges together stay under
    20 % more attempts (measured: 8.5 %), the breaker stays closed and the bulkhead ends
    empty."""

    async def main() -> tuple[int, float, int, str, int]:
        rng = random.Random(2024)
        budget = RetryBudget(ratio=0.1)
        breaker = CircuitBreaker()
        bulkhead = Bulkhead(max_concurrent=20, max_waiting=100)
        pipeline = Pipeline(
            Timeout(2.0),
            Retry(attempts=3, base_delay=0.01, budget=budget),
            Hedge(budget=budget, deposit=False),
            breaker,
            bulkhead,
            Timeout(0.5),
            random=random.Random(7).random,  # the retries' jitter, seeded like the dependency
            telemetry=False,
        )
        attempts = 0
        ok = 0
        latencies: list[float] = []

        async def dependency() -> str:
            nonlocal attempts
            attempts += 1
            draw = rng.random()
            await trio.sleep(1.0 if draw < 0.02 else 0.010)
            if draw > 0.95:
                raise ConnectionError("reset")
            return "ok"

        async def worker() -> None:
            nonlocal ok
            for _ in range(100):
                started = trio.current_time()
                try:
                    await pipeline.call(dependency)
                    ok += 1
                except (ConnectionError, resilient.TimeoutExceeded):
                    pass  # retries refused by the shared budget: a handful
                latencies.append(trio.current_time() - started)

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(worker)
        snapshot = bulkhead.snapshot()
        return ok, quantile(latencies, 0.99), attempts, breaker.snapshot().state, snapshot.running

    ok, p99, attempts, state, running = run_virtual(main)
    assert ok >= 1985
    assert p99 < 0.1  # without the hedge: the 1 s attempts, cut at 0.5 s and retried
    assert attempts <= 2000 * 1.2
    assert state == "closed"
    assert running == 0

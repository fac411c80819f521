"""RetryBudget arithmetic under scripted sequences of calls, retries and successes."""

from __future__ import annotations

import contextlib
import math
import random

import pytest
import trio
from trio.testing import MockClock

from _budget_sim import Sim, flaky, steady
from resilient import ConfigurationError, Pipeline, Retry, RetryBudget


def run_outage(budget: RetryBudget, *, rate: float, seconds: float, attempts: int) -> list[int]:
    """Calls at ``rate``/s to a dependency failing every attempt; attempts made by each call.

    A failed call earns nothing (no ``deposit``) and no retry is refunded."""
    made = []
    for i in range(int(rate * seconds)):
        now = i / rate
        n = 1
        while n < attempts and budget.try_withdraw(now):
            n += 1
        made.append(n)
    return made


def healthy(budget: RetryBudget, *, rate: float, seconds: float, start: float = 0.0) -> float:
    """Calls at ``rate``/s that all succeed (each earns); returns the time after the last."""
    for i in range(int(rate * seconds)):
        budget.deposit(start + i / rate)
    return start + int(rate * seconds) / rate


def test_fresh_budget_lets_the_reserve_through_without_any_traffic() -> None:
    budget = RetryBudget(reserve=3)
    assert [budget.try_withdraw(float(t)) for t in range(5)] == [True, True, True, False, False]


def test_five_successes_earn_one_retry_at_the_default_ratio() -> None:
    budget = RetryBudget(reserve=0)
    for _ in range(4):
        budget.deposit(0.0)
    assert not budget.try_withdraw(0.0)
    budget.deposit(0.0)  # the fifth: 5 x 0.2, one whole retry despite binary rounding
    assert budget.try_withdraw(0.0)
    assert not budget.try_withdraw(0.0)


def test_ten_successes_earn_one_retry_at_ratio_one_tenth() -> None:
    budget = RetryBudget(ratio=0.1, reserve=0)
    for _ in range(9):
        budget.deposit(0.0)
    assert not budget.try_withdraw(0.0)
    budget.deposit(0.0)  # the tenth: 10 x 0.1 is 0.9999999999999999, still one retry
    assert budget.try_withdraw(0.0)


def test_80_calls_per_second_to_a_dead_dependency_make_no_retries_in_steady_state() -> None:
    """After a healthy minute, a dead dependency gets the banked tokens and the reserve once,
    then nothing: failed calls earn nothing."""
    budget = RetryBudget()
    start = healthy(budget, rate=80.0, seconds=60.0)
    banked = budget.available(start)
    assert banked == pytest.approx(0.2 * 80 * 10 + 5, rel=0.01)  # ratio * rate * window + reserve
    made = []
    for i in range(80 * 120):
        now = start + i / 80
        n = 1
        while n < 4 and budget.try_withdraw(now):
            n += 1
        made.append(n)
    assert sum(n - 1 for n in made) <= banked  # the bank, spent once (it also fades)
    assert sum(made) / len(made) <= 1.02
    steady = made[len(made) // 2 :]  # the last 60 s
    assert sum(steady) / len(steady) == 1.0


def test_finagle_sized_reserve_is_spent_once_too() -> None:
    """Why the reserve is not a rate: Finagle's 10 retries/s alone gives 1.125 at 80/s; ours is
    a pool that only successes refill, so even a big one is spent once."""
    made = run_outage(RetryBudget(reserve=100), rate=80.0, seconds=120.0, attempts=4)
    assert sum(n - 1 for n in made) == 100
    steady = made[len(made) // 2 :]
    assert sum(steady) / len(steady) == 1.0


def test_reserve_is_spent_once_during_an_outage_and_not_refilled_by_time() -> None:
    budget = RetryBudget(ratio=0.0, reserve=5, window=10.0)
    made = run_outage(budget, rate=1.0, seconds=600.0, attempts=2)
    assert sum(n - 1 for n in made) == 5
    assert made[:5] == [2] * 5
    assert set(made[5:]) == {1}


def test_reserve_refill_is_collected_by_a_success() -> None:
    budget = RetryBudget(ratio=0.0, reserve=4, window=10.0)
    for _ in range(4):
        assert budget.try_withdraw(0.0)
    assert not budget.try_withdraw(100.0)  # time alone refills nothing
    budget.record_success(100.0)  # the dependency answered: the accrued refill is collected
    assert budget.available(100.0) == 4.0


def test_reserve_refills_in_proportion_to_time_up_to_its_size() -> None:
    budget = RetryBudget(ratio=0.0, reserve=4, window=10.0)
    for _ in range(4):
        assert budget.try_withdraw(0.0)
    budget.record_success(5.0)  # half the window: half the reserve
    assert budget.available(5.0) == pytest.approx(2.0)
    budget.record_success(5.0)  # no time passed: nothing more
    assert budget.available(5.0) == pytest.approx(2.0)
    budget.record_success(60.0)
    assert budget.available(60.0) == 4.0


def test_retries_come_back_as_soon_as_the_dependency_recovers() -> None:
    budget = RetryBudget()
    start = healthy(budget, rate=1.0, seconds=60.0)
    made = run_outage(budget, rate=1.0, seconds=300.0, attempts=3)
    assert sum(n - 1 for n in made[-250:]) == 0  # a long outage: no retries at all
    assert budget.available(start + 300.0) < 1.0  # ... and nothing left over
    budget.earn(lambda: start + 300.0)  # the first success after the outage
    assert budget.try_withdraw(start + 301.0)  # the next failure is retried again
    assert budget.available(start + 301.0) >= 3.0


def test_earned_tokens_let_a_short_burst_of_failures_be_retried_in_full() -> None:
    budget = RetryBudget(reserve=0)
    start = healthy(budget, rate=80.0, seconds=30.0)  # 30 s of healthy traffic at 80 calls/s
    retried = 0
    for i in range(80):  # then one second in which every call fails once, earning nothing
        now = start + i / 80
        retried += budget.try_withdraw(now)
    assert retried == 80  # ... and every failure is retried (the retries failed too)


def test_earned_tokens_fade_with_time() -> None:
    budget = RetryBudget(ratio=0.1, reserve=0, window=10.0)
    for _ in range(100):
        budget.deposit(0.0)
    assert budget.available(0.0) == pytest.approx(10.0)
    assert budget.available(10.0) == pytest.approx(10.0 / math.e)
    assert budget.available(200.0) < 1e-6


def test_healthy_traffic_banks_about_ratio_times_rate_times_window() -> None:
    budget = RetryBudget(ratio=0.1, reserve=0, window=10.0)
    for i in range(3600):  # one hour at 1 call/s
        budget.deposit(float(i))
    assert budget.available(3600.0) == pytest.approx(1.0, rel=0.1)


def test_a_refused_withdrawal_takes_nothing() -> None:
    budget = RetryBudget(ratio=0.1, reserve=0)
    for _ in range(5):
        budget.deposit(0.0)
    assert not budget.try_withdraw(0.0)
    assert budget.available(0.0) == pytest.approx(0.5)


def test_earned_tokens_are_spent_before_the_reserve() -> None:
    budget = RetryBudget(ratio=0.5, reserve=2)
    for _ in range(4):
        budget.deposit(0.0)
    assert budget.try_withdraw(0.0)
    assert budget.try_withdraw(0.0)
    assert budget.available(0.0) == pytest.approx(2.0)  # the reserve is untouched


def test_time_going_backwards_never_raises_nor_mints_tokens() -> None:
    budget = RetryBudget(ratio=0.1, reserve=1)
    budget.deposit(100.0)
    assert budget.try_withdraw(100.0)
    assert not budget.try_withdraw(50.0)
    budget.record_success(10.0)
    assert budget.available(10.0) == pytest.approx(0.1)


def test_options_are_read_only_properties_with_documented_defaults() -> None:
    budget = RetryBudget()
    assert (budget.ratio, budget.reserve, budget.window) == (0.2, 5.0, 10.0)
    with pytest.raises(AttributeError):
        budget.ratio = 0.5  # type: ignore[misc]
    assert repr(budget) == "RetryBudget(ratio=0.2, reserve=5, window=10)"


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("ratio", -0.1),
        ("ratio", 1.5),
        ("ratio", math.nan),
        ("ratio", "0.1"),
        ("reserve", -1),
        ("reserve", math.inf),
        ("reserve", True),
        ("window", 0),
        ("window", -5.0),
        ("window", math.inf),
    ],
)
def test_bad_options_name_the_parameter_and_value(parameter: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RetryBudget(**{parameter: value})  # type: ignore[arg-type]
    assert caught.value.parameter == f"RetryBudget.{parameter}"
    assert caught.value.value is value
    assert f"RetryBudget.{parameter}=" in str(caught.value)


def test_earn_reads_the_clock_only_when_folding() -> None:
    """``earn`` counts calls without the clock and folds them in every FOLD_EVERY (and the
    very first call at once, so that later folds know since when they counted)."""
    from resilient._budget import FOLD_EVERY

    reads: list[float] = []

    def clock() -> float:
        reads.append(0.0)
        return 0.0

    budget = RetryBudget(ratio=0.5, reserve=0)
    for _ in range(FOLD_EVERY * 3):
        budget.earn(clock)
    assert len(reads) == 3  # the first call, then calls 65 and 129
    assert budget.available(0.0) == pytest.approx(0.5 * FOLD_EVERY * 3)


def test_earn_with_a_full_reserve_never_reads_the_clock_between_folds() -> None:
    from resilient._budget import FOLD_EVERY

    reads: list[float] = []
    budget = RetryBudget()
    budget.earn(lambda: 0.0)
    for _ in range(FOLD_EVERY - 2):
        budget.earn(lambda: reads.append(0.0) or 0.0)
    assert reads == []


def test_earn_collects_the_reserve_refill_as_record_success_does() -> None:
    budget = RetryBudget(ratio=0.0, reserve=2, window=10.0)
    assert budget.try_withdraw(0.0)
    assert budget.try_withdraw(0.0)
    budget.earn(lambda: 5.0)  # half a window: one token back
    assert budget.available(5.0) == pytest.approx(1.0)


def test_record_call_is_deprecated_and_still_earns() -> None:
    budget = RetryBudget(ratio=0.5, reserve=0)
    with pytest.warns(DeprecationWarning, match=r"RetryBudget\.earn"):
        budget.record_call(lambda: 0.0)
    assert budget.available(0.0) == pytest.approx(0.5)


def test_first_calls_fade_from_when_they_were_made() -> None:
    """A quiet client: calls folded late still fade from their own time, not from the fold."""
    budget = RetryBudget(ratio=1.0, reserve=0, window=10.0)
    for i in range(10):
        budget.deposit(float(i))  # fewer than FOLD_EVERY: counted, folded at the next read
    # The first call is folded at once, so the other nine are taken as spread over [0, 1000]
    # (most of them faded); before, all ten were added unfaded, as if made at 1000.
    assert budget.available(1000.0) < 0.1


# -- refunds ------------------------------------------------------------------------------------


def test_a_refunded_retry_costs_nothing() -> None:
    budget = RetryBudget(ratio=0.0, reserve=1, window=10.0)
    assert budget.try_withdraw(0.0)
    assert not budget.try_withdraw(0.0)
    budget.refund(0.0)  # the retry succeeded
    assert budget.available(0.0) == pytest.approx(1.0)
    assert budget.try_withdraw(0.0)


def test_refunded_tokens_fade_like_earned_ones() -> None:
    budget = RetryBudget(ratio=0.0, reserve=0, window=10.0)
    budget.refund(0.0)
    assert budget.available(10.0) == pytest.approx(1.0 / math.e)


def test_a_refund_fills_the_reserve_first_then_the_earned_balance() -> None:
    budget = RetryBudget(ratio=0.0, reserve=2, window=10.0)
    assert budget.try_withdraw(0.0)  # the reserve: 1 left
    budget.record_success(2.5)  # a quarter of the window refilled: 1.5
    budget.refund(2.5)  # 0.5 fills the reserve, the other 0.5 goes to the earned balance
    assert not budget.refilling
    assert budget.available(2.5) == pytest.approx(2.5)
    assert budget.available(12.5) == pytest.approx(2.0 + 0.5 / math.e)


def test_retries_that_keep_succeeding_are_never_refused() -> None:
    """One token is enough for any number of retries that succeed, one after the other."""
    budget = RetryBudget(ratio=0.0, reserve=1, window=10.0)
    for i in range(1000):
        assert budget.try_withdraw(i / 100)
        budget.refund(i / 100)


def test_only_failed_retries_spend_the_budget() -> None:
    budget = RetryBudget(ratio=0.0, reserve=3, window=1e9)
    for _ in range(3):
        assert budget.try_withdraw(0.0)  # a retry that fails again: spent
    assert not budget.try_withdraw(0.0)


# -- the acceptance numbers, through Retry (tests/_budget_sim.py: the real Retry, virtual time) -


@pytest.mark.parametrize(("attempts", "best"), [(3, 1 - 0.3**3), (4, 1 - 0.3**4)])
def test_independent_failures_are_retried_in_full(attempts: int, best: float) -> None:
    """30 % of attempts fail at random: the default budget lets nearly every retry through,
    so success is the most ``attempts`` can give (97.3 % with 3, 99.2 % with 4)."""
    sim = Sim(attempts=attempts, budget=RetryBudget(), seed=1)
    steady(sim, flaky(sim, 0.3), rate=100.0, calls=10_000)
    sim.run()
    assert sim.success >= best - 0.005
    assert sim.success >= (0.97 if attempts == 3 else 0.985)
    no_budget = Sim(attempts=attempts, budget=None, seed=1)
    steady(no_budget, flaky(no_budget, 0.3), rate=100.0, calls=10_000)
    no_budget.run()
    assert sim.success >= no_budget.success - 0.005  # the budget refused (almost) nothing


@pytest.mark.parametrize("rate", [1.0, 10.0, 1000.0])
def test_independent_failures_at_any_rate(rate: float) -> None:
    sim = Sim(attempts=3, budget=RetryBudget(), seed=2)
    steady(sim, flaky(sim, 0.3), rate=rate, calls=10_000)
    sim.run()
    assert sim.success >= 0.965


def test_the_old_ratio_of_one_tenth_would_refuse_retries_of_independent_failures() -> None:
    """Why 0.2: at 30 % failures, 0.1 x 97 % earned per call is less than the 0.117 failed
    retries per call cost, so some retries are refused."""
    sim = Sim(attempts=3, budget=RetryBudget(ratio=0.1), seed=1)
    steady(sim, flaky(sim, 0.3), rate=100.0, calls=10_000)
    sim.run()
    assert sim.success < 0.95


@pytest.mark.parametrize("attempts", [3, 5])
@pytest.mark.parametrize("rate", [1.0, 100.0])
def test_a_full_outage_after_a_healthy_minute_adds_under_ten_percent(
    attempts: int, rate: float
) -> None:
    sim = Sim(attempts=attempts, budget=RetryBudget(), seed=1)

    async def attempt() -> str:
        await sim.wait(sim.clock.t + 0.01)
        if sim.clock.t >= 60.0:
            raise ConnectionError("down")
        return "ok"

    outage = steady(sim, attempt, rate=rate, calls=int(rate * 60))
    sim.run()
    calls, attempts_before = sim.calls, sim.attempts
    steady(sim, attempt, rate=rate, calls=int(rate * 120), start=outage)
    sim.run()
    per_call = (sim.attempts - attempts_before) / (sim.calls - calls)
    assert per_call <= 1.10
    if rate >= 100.0:
        assert per_call <= 1.02  # the bank (ratio * rate * window) is small next to 2 minutes


def test_retries_return_once_the_dependency_is_back() -> None:
    """A minute of outage, then 30 % failures again: from the first second, retries are allowed
    (the first success collects the reserve's refill; successes earn again)."""
    sim = Sim(attempts=3, budget=RetryBudget(), seed=3)
    rng = random.Random(5)

    async def attempt() -> str:
        await sim.wait(sim.clock.t + 0.01)
        t = sim.clock.t
        if 60.0 <= t < 120.0 or rng.random() < 0.3:
            raise ConnectionError("503")
        return "ok"

    steady(sim, attempt, rate=100.0, calls=100 * 180)
    sim.run()
    for start, stop in ((120.0, 121.0), (121.0, 180.0)):  # the first second back, the rest
        failed = sum(start <= t < stop for t in sim.failed)
        ok = sum(start <= t < stop for t in sim.ok)
        assert failed / (failed + ok) <= 0.04  # back to ~2.7 % failed calls (no budget: 2.7 %)


def test_refilling_tells_when_a_success_would_collect_the_reserve() -> None:
    budget = RetryBudget(ratio=0.0, reserve=2, window=10.0)
    assert not budget.refilling  # a fresh reserve is full: record_success has nothing to do
    assert budget.try_withdraw(0.0)
    assert budget.refilling
    budget.record_success(100.0)  # a success after a full window collects the whole refill
    assert not budget.refilling
    assert budget.available(100.0) == pytest.approx(2.0)


def test_the_simulation_agrees_with_a_real_event_loop_in_virtual_time() -> None:
    """The same experiment on trio with ``MockClock`` (real tasks overlapping, real timers):
    30 % independent failures, 3,000 calls at 100/s, ``Retry(attempts=3)``, default budget."""

    async def main() -> tuple[int, int]:
        rng = random.Random(11)
        pipeline = Pipeline(Retry(attempts=3), random=rng.random, telemetry=False)
        ok = 0
        attempts = 0

        async def dependency() -> str:
            nonlocal attempts
            attempts += 1
            await trio.sleep(0.01)
            if rng.random() < 0.3:
                raise ConnectionError("503")
            return "ok"

        async def one() -> None:
            nonlocal ok
            with contextlib.suppress(ConnectionError):
                await pipeline.call(dependency)
                ok += 1

        async with trio.open_nursery() as nursery:
            for _ in range(3000):
                nursery.start_soon(one)
                await trio.sleep(0.01)
        return ok, attempts

    ok, attempts = trio.run(main, clock=MockClock(autojump_threshold=0))
    assert ok / 3000 >= 0.96
    assert attempts / 3000 == pytest.approx(1.39, abs=0.03)

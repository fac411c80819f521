"""The retry-storm experiment: a short overload locks a system with plain retries in, and the
retry budget lets it recover.

A FIFO server of 100 requests/s serves clients sending 75 calls/s (Poisson arrivals, seeded),
each attempt abandoned after 1 s; the server still does the work of abandoned requests. For 3 s
its capacity drops to 25 requests/s (a garbage-collection pause, a noisy neighbour), or the
load spikes to 200 calls/s for 2 s. Then everything is back to normal, except the queue.

- Plain retries (``Retry(attempts=3, budget=None)``): every call that times out sends up to
  two more attempts, the server is offered about 2.3x its load (more than its capacity), the
  queue never drains and every attempt times out until the end of the run: a metastable
  failure, sustained by the retries alone.
- The default budget: a timed-out call earns nothing and a retry that times out again is not
  refunded, so once the tokens banked by the healthy traffic are spent, retries stop, the
  queue drains and goodput is back at the offered load a few seconds after the trigger.

Everything runs the real ``Retry`` and ``RetryBudget`` in virtual time (``_budget_sim``).
"""

from __future__ import annotations

import random

import pytest

from _budget_sim import Server, Sim
from resilient import RetryBudget

CAPACITY = 100.0  # requests per second
LOAD = 75.0  # calls per second, 75 % of capacity
TIMEOUT = 1.0  # seconds before a client abandons an attempt
TRIGGERS = {"dip": (30.0, 33.0), "spike": (30.0, 32.0)}  # when each trigger acts
END = 90.0  # the run's length


def run(
    budget: RetryBudget | None, *, attempts: int = 3, trigger: str = "dip", seed: int = 1
) -> tuple[Sim, list[int]]:
    """The experiment; goodput as successful calls completed in each virtual second."""
    start, stop = TRIGGERS[trigger]
    sim = Sim(attempts=attempts, budget=budget, seed=seed)

    def capacity(t: float) -> float:
        return 25.0 if trigger == "dip" and start <= t < stop else CAPACITY

    server = Server(sim, capacity, TIMEOUT)
    arrivals = random.Random(seed)
    t = 0.0
    while True:
        rate = 200.0 if trigger == "spike" and start <= t < stop else LOAD
        t += arrivals.expovariate(rate)
        if t >= END:
            break
        sim.schedule(t, server.attempt)
    sim.run()
    goodput = [0] * int(END)
    for done in sim.ok:
        if done < END:
            goodput[int(done)] += 1
    return sim, goodput


def recovered_after(goodput: list[int], after: float) -> float | None:
    """Seconds after ``after`` from which every 3 s average of goodput stays >= 80 % of the
    offered load until the end; ``None``: never."""
    n = len(goodput)
    for s in range(int(after), n - 3):
        if all(sum(goodput[k : k + 3]) / 3 >= 0.8 * LOAD for k in range(s, n - 3)):
            return s - after
    return None


def mean(values: list[int]) -> float:
    return sum(values) / len(values)


@pytest.mark.parametrize("trigger", ["dip", "spike"])
def test_healthy_before_the_trigger_with_or_without_budget(trigger: str) -> None:
    for budget in (None, RetryBudget()):
        _, goodput = run(budget, trigger=trigger)
        assert mean(goodput[5:30]) == pytest.approx(LOAD, rel=0.05)


@pytest.mark.parametrize("trigger", ["dip", "spike"])
def test_plain_retries_stay_locked_up_after_the_trigger(trigger: str) -> None:
    sim, goodput = run(None, trigger=trigger)
    end_of_trigger = TRIGGERS[trigger][1]
    assert recovered_after(goodput, end_of_trigger) is None
    # From a few seconds after the trigger to the end: (almost) nothing succeeds.
    assert mean(goodput[int(end_of_trigger) + 3 :]) < 0.02 * LOAD
    assert sim.load > 2.2  # attempts per call: the retries are the overload


@pytest.mark.parametrize("trigger", ["dip", "spike"])
def test_the_default_budget_recovers_within_seconds_of_the_trigger(trigger: str) -> None:
    sim, goodput = run(RetryBudget(), trigger=trigger)
    recovery = recovered_after(goodput, TRIGGERS[trigger][1])
    assert recovery is not None
    assert recovery <= 12.0
    assert mean(goodput[60:]) == pytest.approx(LOAD, rel=0.05)
    assert sim.load < 1.05  # the whole run: retries added under 5 % load


@pytest.mark.parametrize("trigger", ["dip", "spike"])
def test_the_budget_costs_only_seconds_next_to_no_retries_at_all(trigger: str) -> None:
    """The price of the budget's banked tokens: they are spent into the overload once, so the
    queue takes a few seconds longer to drain than with no retries (``attempts=1``)."""
    _, with_budget = run(RetryBudget(), trigger=trigger)
    _, no_retries = run(None, attempts=1, trigger=trigger)
    budget_recovery = recovered_after(with_budget, TRIGGERS[trigger][1])
    bare_recovery = recovered_after(no_retries, TRIGGERS[trigger][1])
    assert budget_recovery is not None
    assert bare_recovery is not None
    assert budget_recovery - bare_recovery <= 8.0


@pytest.mark.parametrize("seed", range(2, 6))
def test_the_outcome_does_not_hang_on_one_lucky_seed(seed: int) -> None:
    _, plain = run(None, seed=seed)
    _, budgeted = run(RetryBudget(), seed=seed)
    assert recovered_after(plain, TRIGGERS["dip"][1]) is None
    recovery = recovered_after(budgeted, TRIGGERS["dip"][1])
    assert recovery is not None
    assert recovery <= 12.0

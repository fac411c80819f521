"""resilient.standard(): the recommended pipeline, in order, working end to end."""

from __future__ import annotations

import itertools
import math

import anyio
import pytest

import resilient
from resilient import (
    Bulkhead,
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    RateLimiter,
    Retry,
    Timeout,
    TimeoutExceeded,
)
from resilient.events import CircuitStateChanged
from resilient.testing import EventRecorder, FakeClock


def kinds(pipeline: resilient.Pipeline) -> list[str]:
    return [type(p).__name__ for p in pipeline.policies]


def test_default_order_follows_the_design() -> None:
    """The attempt timeout hedges by default (tests/test_standard_hedge.py); with
    ``hedge_on_attempt_timeout=False`` it is the innermost, cutting Timeout."""
    pipeline = resilient.standard("payments")
    assert pipeline.name == "payments"
    assert kinds(pipeline) == ["Timeout", "Retry", "CircuitBreaker", "Hedge", "Bulkhead"]
    pipeline = resilient.standard("payments", hedge_on_attempt_timeout=False)
    assert kinds(pipeline) == ["Timeout", "Retry", "CircuitBreaker", "Bulkhead", "Timeout"]
    total, retry, *_, attempt = pipeline.policies
    assert isinstance(total, Timeout)
    assert isinstance(attempt, Timeout)
    assert (total.name, total.seconds) == ("total_timeout", 30.0)
    assert (attempt.name, attempt.seconds) == ("attempt_timeout", 10.0)
    assert isinstance(retry, Retry)
    assert retry.attempts == 4  # 3 retries
    assert retry.budget is not None


def test_rate_limiter_sits_between_breaker_and_bulkhead() -> None:
    pipeline = resilient.standard(rate=50.0, hedge_on_attempt_timeout=False)
    assert kinds(pipeline) == [
        "Timeout",
        "Retry",
        "CircuitBreaker",
        "RateLimiter",
        "Bulkhead",
        "Timeout",
    ]
    limiter = pipeline.policies[3]
    assert isinstance(limiter, RateLimiter)
    assert (limiter.rate, limiter.burst) == (50.0, 50.0)


def test_each_step_can_be_left_out() -> None:
    pipeline = resilient.standard(
        total_timeout=None,
        attempt_timeout=None,
        attempts=1,
        circuit_breaker=False,
        max_concurrent=None,
    )
    assert kinds(pipeline) == []


def test_options_reach_the_policies() -> None:
    pipeline = resilient.standard(
        attempts=5, failure_rate=0.25, minimum_calls=7, open_for=2.0, max_concurrent=3, budget=None
    )
    retry, breaker, _, bulkhead = pipeline.policies[1:5]
    assert isinstance(retry, Retry)
    assert isinstance(breaker, CircuitBreaker)
    assert isinstance(bulkhead, Bulkhead)
    assert (retry.attempts, retry.budget) == (5, None)
    assert (breaker.failure_rate, breaker.minimum_calls, breaker.open_for) == (0.25, 7, 2.0)
    assert bulkhead.max_concurrent == 3


def test_invalid_options_name_the_option_as_written() -> None:
    """An error names the option of standard() the caller wrote, not the policy's."""
    cases = {
        "attempts": 0,
        "total_timeout": -1,
        "attempt_timeout": 0,
        "max_concurrent": 0,
        "failure_rate": 2.0,
        "open_for": -1.0,
        "max_waiting": -1,
    }
    for option, value in cases.items():
        with pytest.raises(ConfigurationError) as caught:
            resilient.standard(**{option: value})
        assert caught.value.parameter == f"standard.{option}"
        assert caught.value.value == value


def test_the_two_timeouts_are_told_apart() -> None:
    """Each timeout reports its own option (both used to say ``Timeout.seconds``)."""
    with pytest.raises(ConfigurationError, match=r"^standard\.total_timeout=nan"):
        resilient.standard(total_timeout=math.nan)
    with pytest.raises(ConfigurationError, match=r"^standard\.attempt_timeout=nan"):
        resilient.standard(attempt_timeout=math.nan)


def test_a_rate_that_is_not_a_finite_number_is_refused_by_name() -> None:
    """``rate=nan`` and ``rate=inf`` are ConfigurationErrors naming ``standard.rate`` (they
    were a ValueError and an OverflowError from deep inside)."""
    for value in (math.nan, math.inf, -math.inf, 5e-324, True, "10"):
        with pytest.raises(ConfigurationError) as caught:
            resilient.standard(rate=value)
        assert caught.value.parameter == "standard.rate"


def test_attempts_true_is_refused_not_taken_as_one() -> None:
    """``attempts=True`` is a mistake, not 1 (it used to drop the Retry step silently)."""
    for value in (True, False, 2.0):
        with pytest.raises(ConfigurationError) as caught:
            resilient.standard(attempts=value)
        assert caught.value.parameter == "standard.attempts"


def test_an_option_without_the_one_it_needs_is_refused() -> None:
    """Options of a step that is left out would be silently ignored: they are refused,
    naming both the option and the one it needs."""
    cases: list[tuple[dict[str, object], str, str]] = [
        ({"burst": 10}, "burst", "rate"),
        ({"rate_max_wait": 0.5}, "rate_max_wait", "rate"),
        ({"attempts": 1, "base_delay": 1.0}, "base_delay", "attempts"),
        ({"attempts": 1, "budget": None}, "budget", "attempts"),
        ({"circuit_breaker": False, "failure_rate": 0.2}, "failure_rate", "circuit_breaker"),
        ({"circuit_breaker": False, "open_for": 9.0}, "open_for", "circuit_breaker"),
        ({"max_concurrent": None, "max_waiting": 5}, "max_waiting", "max_concurrent"),
        ({"max_concurrent": None, "max_wait": 2.0}, "max_wait", "max_concurrent"),
    ]
    for options, option, needed in cases:
        with pytest.raises(ConfigurationError) as caught:
            resilient.standard(**options)  # type: ignore[arg-type]
        assert caught.value.parameter == f"standard.{option}"
        assert f"standard.{needed}" in str(caught.value)
    # The defaults, passed explicitly, are not an error.
    pipeline = resilient.standard(rate=None, burst=None, rate_max_wait=0.0, attempts=1)
    assert "RateLimiter" not in kinds(pipeline)


def test_an_attempt_timeout_above_the_total_is_refused_naming_both() -> None:
    """``attempt_timeout=5, total_timeout=2`` cannot work: refused at construction."""
    with pytest.raises(ConfigurationError) as caught:
        resilient.standard(attempt_timeout=5.0, total_timeout=2.0)
    assert caught.value.parameter == "standard.attempt_timeout"
    assert "standard.total_timeout=2.0" in str(caught.value)
    assert kinds(resilient.standard(attempt_timeout=2.0, total_timeout=2.0))[0] == "Timeout"
    assert len(resilient.standard(attempt_timeout=math.inf, total_timeout=None).policies) == 4


def test_the_default_attempt_timeout_never_exceeds_a_shorter_total() -> None:
    """Only ``total_timeout=2`` given: the default 10 s attempt timeout follows it down."""
    hedge = resilient.standard(total_timeout=2.0).policies[3]
    assert isinstance(hedge, resilient.Hedge)
    assert hedge.delay == 2.0
    short = resilient.standard(total_timeout=2.0, hedge_on_attempt_timeout=False).policies
    assert isinstance(short[-1], Timeout)
    assert short[-1].seconds == 2.0
    default = resilient.standard(hedge_on_attempt_timeout=False).policies
    assert isinstance(default[-1], Timeout)
    assert default[-1].seconds == 10.0
    unbounded = resilient.standard(total_timeout=None).policies
    assert isinstance(unbounded[-1], Timeout)
    assert unbounded[-1].seconds == 10.0


async def test_transient_failures_are_retried_then_succeed(clock: FakeClock) -> None:
    events = EventRecorder()
    pipeline = resilient.standard(clock=clock, listeners=[events], telemetry=False)
    outcomes = [ConnectionResetError("reset"), ConnectionResetError("reset"), "ok"]

    async def flaky() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert await pipeline.call(flaky) == "ok"
    assert len(events.of_type(resilient.events.RetryScheduled)) == 2
    assert all(0.0 <= d <= 0.2 for d in clock.sleeps)


async def test_client_errors_are_not_retried_and_never_open_the_breaker(clock: FakeClock) -> None:
    classify = [resilient.on_exception(KeyError, verdict=resilient.Verdict.CLIENT_ERROR)]
    pipeline = resilient.standard(clock=clock, classify=classify, minimum_calls=5, telemetry=False)
    calls = 0

    async def not_found() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("no such user")

    for _ in range(50):
        with pytest.raises(KeyError):
            await pipeline.call(not_found)
    assert calls == 50  # one attempt each, never refused by the breaker
    breaker = pipeline.policies[2]
    assert isinstance(breaker, CircuitBreaker)
    assert breaker.snapshot().state == "closed"


async def test_a_dead_dependency_opens_the_breaker_and_only_probes_reach_it(
    clock: FakeClock,
) -> None:
    events = EventRecorder()
    pipeline = resilient.standard(
        clock=clock, minimum_calls=4, budget=None, telemetry=False, listeners=[events]
    )
    reached: list[float] = []

    async def dead() -> None:
        reached.append(clock.now())
        raise ConnectionRefusedError("down")

    raised: list[str] = []
    for _ in range(10):
        try:
            await pipeline.call(dead)
        except (ConnectionRefusedError, CircuitOpenError) as exc:
            raised.append(type(exc).__name__)
    assert raised[0] == "ConnectionRefusedError"  # the dependency's own error first
    (opened,) = [e.at for e in events.of_type(CircuitStateChanged) if e.previous == "closed"]
    before = [t for t in reached if t <= opened]
    assert len(before) == 4  # minimum_calls failures open it
    # Open: callers wait for it, and only one of them at a time, every probe_interval
    # (0.2 s), reaches the dependency as the half-open probe.
    probes = reached[4:]
    assert probes
    assert all(b - a >= 0.2 - 1e-9 for a, b in itertools.pairwise(probes))
    assert len(probes) <= (clock.now() - opened) / 0.2 + 1


async def test_attempt_timeout_is_retried_within_the_total(clock: FakeClock) -> None:
    """The cutting attempt timeout (hedge_on_attempt_timeout=False): each cut attempt is
    retried within the total."""
    pipeline = resilient.standard(
        clock=clock,
        total_timeout=5.0,
        attempt_timeout=1.0,
        attempts=10,
        hedge_on_attempt_timeout=False,
        telemetry=False,
    )
    attempts = 0

    async def hangs() -> None:
        nonlocal attempts
        attempts += 1
        await clock.sleep(100)

    with pytest.raises(TimeoutExceeded):
        await pipeline.call(hangs)
    assert clock.now() <= 5.0
    assert attempts >= 2


async def test_works_with_the_real_clock() -> None:
    pipeline = resilient.standard(total_timeout=2.0, attempt_timeout=1.0)

    async def work() -> int:
        await anyio.sleep(0)
        return 42

    assert await pipeline.call(work) == 42

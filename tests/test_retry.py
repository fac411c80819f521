"""Retry: what is retried, what the caller gets back, exact delays, budget, events, options."""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest

import resilient
from resilient import (
    BulkheadFullError,
    Classifier,
    ConfigurationError,
    Pipeline,
    Retry,
    RetryBudget,
    Timeout,
    Verdict,
    on_exception,
    on_result,
)
from resilient.events import (
    AttemptEnded,
    AttemptStarted,
    BudgetRefused,
    RetryGaveUp,
    RetryScheduled,
)
from resilient.extend import Context
from resilient.testing import EventRecorder, FakeClock


class Script:
    """An async callable playing scripted outcomes: exceptions are raised, values returned.

    The last outcome repeats once the script runs out.
    """

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def __call__(self) -> object:
        outcome = self.outcomes[min(self.calls, len(self.outcomes) - 1)]
        self.calls += 1
        if isinstance(outcome, type) and issubclass(outcome, BaseException):
            raise outcome(f"attempt {self.calls}")
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class AttemptRecorder:
    """An inner policy recording ``ctx.attempt`` for every attempt it sees."""

    name = "recorder"

    def __init__(self) -> None:
        self.attempts: list[int] = []

    async def execute(self, call: Any, ctx: Context, /) -> Any:
        self.attempts.append(ctx.attempt)
        return await call(ctx)


def half() -> float:
    return 0.5


def pipeline(*policies: Any, clock: FakeClock, **options: Any) -> Pipeline:
    options.setdefault("random", half)
    return Pipeline(*policies, clock=clock, telemetry=False, **options)


# --- what is retried -------------------------------------------------------------------------


async def test_a_success_on_the_first_attempt_calls_once_and_never_sleeps(
    clock: FakeClock,
) -> None:
    fn = Script("ok")
    assert await pipeline(Retry(), clock=clock).call(fn) == "ok"
    assert fn.calls == 1
    assert clock.sleeps == []


async def test_transient_exceptions_are_retried_until_a_success(clock: FakeClock) -> None:
    fn = Script(ConnectionError, TimeoutError, "ok")
    assert await pipeline(Retry(), clock=clock).call(fn) == "ok"
    assert fn.calls == 3
    assert clock.sleeps == [0.05, 0.1]  # full jitter, draw 0.5: half of 0.1, then of 0.2


async def test_attempts_counts_the_first_call_and_the_last_exception_is_raised(
    clock: FakeClock,
) -> None:
    errors = [ConnectionError("first"), ConnectionError("second"), ConnectionError("third")]
    fn = Script(*errors)
    with pytest.raises(ConnectionError) as caught:
        await pipeline(Retry(attempts=3), clock=clock).call(fn)
    assert caught.value is errors[2]  # the original object, not a wrapper
    assert fn.calls == 3
    assert caught.value.__notes__ == [
        "resilient: 'retry' made 3 attempts; gave up: no attempts left"
    ]
    assert not hasattr(errors[0], "__notes__")


async def test_attempts_one_never_retries_but_says_why(clock: FakeClock) -> None:
    fn = Script(ConnectionError)
    with pytest.raises(ConnectionError) as caught:
        await pipeline(Retry(attempts=1), clock=clock).call(fn)
    assert fn.calls == 1
    assert caught.value.__notes__ == [
        "resilient: 'retry' made 1 attempt; gave up: no attempts left"
    ]


@pytest.mark.parametrize(
    ("error", "classify"),
    [
        (ValueError("a bug"), None),  # FAILURE by default
        (KeyError("missing"), Classifier(on_exception(KeyError, verdict=Verdict.CLIENT_ERROR))),
        (BulkheadFullError("full", policy="bulkhead"), None),  # REJECTED: our own refusal
    ],
    ids=["failure", "client_error", "rejected"],
)
async def test_non_transient_outcomes_are_raised_at_once_untouched(
    clock: FakeClock, error: Exception, classify: Classifier | None
) -> None:
    fn = Script(error)
    with pytest.raises(type(error)) as caught:
        await pipeline(Retry(classify=classify), clock=clock).call(fn)
    assert caught.value is error
    assert fn.calls == 1
    assert clock.sleeps == []
    assert not hasattr(error, "__notes__")


async def test_a_non_retryable_failure_after_retries_says_how_many_attempts(
    clock: FakeClock,
) -> None:
    fn = Script(ConnectionError, ValueError)
    with pytest.raises(ValueError, match="attempt 2") as caught:
        await pipeline(Retry(), clock=clock).call(fn)
    assert caught.value.__notes__ == ["resilient: 'retry' made 2 attempts; not retryable"]


@pytest.mark.parametrize("listening", [False, True], ids=["fast_path", "listening"])
async def test_an_exception_object_raised_again_and_again_keeps_one_note_per_message(
    clock: FakeClock, listening: bool
) -> None:
    """A shared exception instance re-raised on every call (or through nested retries) does
    not collect one more copy of the same note per call: its notes stay bounded."""
    shared = ConnectionError("shared instance")
    fn = Script(shared)
    listeners = [EventRecorder()] if listening else []
    outer = Retry(attempts=2, base_delay=0.0, budget=None, name="outer")
    inner = Retry(attempts=3, base_delay=0.0, budget=None, name="inner")
    p = pipeline(outer, inner, clock=clock, listeners=listeners)
    for _ in range(5):
        with pytest.raises(ConnectionError) as caught:
            await p.call(fn)
        assert caught.value is shared
    assert fn.calls == 5 * 2 * 3
    assert shared.__notes__ == [
        "resilient: 'inner' made 3 attempts; gave up: no attempts left",
        "resilient: 'outer' made 2 attempts; gave up: no attempts left",
    ]


async def test_a_per_attempt_timeout_is_retried(clock: FakeClock) -> None:
    calls = 0

    async def slow_then_fast() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await clock.sleep(10.0)  # cut at 1.0 by the per-attempt Timeout
        return "ok"

    p = pipeline(Retry(), Timeout(1.0), clock=clock)
    assert await p.call(slow_then_fast) == "ok"
    assert calls == 2


async def test_base_exceptions_are_never_retried(clock: FakeClock) -> None:
    class Stop(BaseException):
        pass

    fn = Script(Stop)
    with pytest.raises(Stop):
        await pipeline(Retry(), clock=clock).call(fn)
    assert fn.calls == 1


# --- results that are failures ---------------------------------------------------------------


class Response:
    def __init__(self, status: int) -> None:
        self.status = status


def http_rules() -> Classifier:
    return Classifier(on_result(lambda r: r.status == 503, verdict=Verdict.TRANSIENT))


async def test_a_transient_result_is_retried_and_the_last_one_returned(clock: FakeClock) -> None:
    responses = [Response(503), Response(503), Response(503)]
    fn = Script(*responses)
    result = await pipeline(Retry(classify=http_rules()), clock=clock).call(fn)
    assert result is responses[2]
    assert fn.calls == 3


async def test_a_transient_result_then_a_success_returns_the_success(clock: FakeClock) -> None:
    fn = Script(Response(503), Response(200))
    result = await pipeline(Retry(classify=http_rules()), clock=clock).call(fn)
    assert result.status == 200


async def test_each_result_is_classified_once(clock: FakeClock) -> None:
    seen: list[int] = []

    def unavailable(response: Response) -> bool:
        seen.append(response.status)
        return response.status == 503

    rules = Classifier(on_result(unavailable, verdict=Verdict.TRANSIENT))
    fn = Script(Response(503), Response(503), Response(200))
    await pipeline(Retry(classify=rules), clock=clock).call(fn)
    assert seen == [503, 503, 200]


async def test_on_discard_gets_every_dropped_result_but_not_the_returned_one(
    clock: FakeClock,
) -> None:
    responses = [Response(503), Response(503), Response(503)]
    discarded: list[object] = []
    retry = Retry(classify=http_rules(), on_discard=discarded.append)
    result = await pipeline(retry, clock=clock).call(Script(*responses))
    assert discarded == responses[:2]
    assert result is responses[2]


async def test_an_async_on_discard_is_awaited(clock: FakeClock) -> None:
    closed: list[object] = []

    async def close(response: object) -> None:
        closed.append(response)

    first = Response(503)
    retry = Retry(classify=http_rules(), on_discard=close)
    await pipeline(retry, clock=clock).call(Script(first, Response(200)))
    assert closed == [first]


async def test_a_failing_on_discard_is_logged_and_the_retry_goes_on(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(response: object) -> None:
        raise RuntimeError("cannot close")

    retry = Retry(classify=http_rules(), on_discard=broken)
    with caplog.at_level(logging.ERROR, logger="resilient"):
        result = await pipeline(retry, clock=clock).call(Script(Response(503), Response(200)))
    assert result.status == 200
    assert "on_discard" in caplog.text


# --- classification source -------------------------------------------------------------------


async def test_without_classify_the_pipelines_classifier_decides(clock: FakeClock) -> None:
    rules = Classifier(on_exception(ValueError, verdict=Verdict.TRANSIENT))
    fn = Script(ValueError, "ok")
    assert await pipeline(Retry(), clock=clock, classify=rules).call(fn) == "ok"
    assert fn.calls == 2


async def test_retry_classify_overrides_the_pipelines_classifier(clock: FakeClock) -> None:
    pipeline_rules = Classifier(on_exception(ValueError, verdict=Verdict.TRANSIENT))
    retry_rules = Classifier(on_exception(ValueError, verdict=Verdict.FAILURE))
    fn = Script(ValueError, "ok")
    p = pipeline(Retry(classify=retry_rules), clock=clock, classify=pipeline_rules)
    with pytest.raises(ValueError):
        await p.call(fn)
    assert fn.calls == 1


async def test_a_classify_function_is_accepted(clock: FakeClock) -> None:
    def rule(outcome: resilient.Outcome) -> Verdict | None:
        return Verdict.TRANSIENT if isinstance(outcome.exception, KeyError) else None

    fn = Script(KeyError, "ok")
    assert await pipeline(Retry(classify=rule), clock=clock).call(fn) == "ok"


# --- exact delays ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("jitter", "expected"),
    [
        ("full", [0.05, 0.1, 0.2, 0.4, 0.5]),
        ("equal", [0.075, 0.15, 0.3, 0.6, 0.75]),
        ("none", [0.1, 0.2, 0.4, 0.8, 1.0]),
        ("decorrelated", [0.2, 0.35, 0.575, 0.9125, 1.0]),
    ],
)
async def test_delays_follow_the_jitter_strategy_exactly(
    clock: FakeClock, jitter: str, expected: list[float]
) -> None:
    retry = Retry(attempts=6, base_delay=0.1, max_delay=1.0, jitter=jitter, budget=None)
    with pytest.raises(ConnectionError):
        await pipeline(retry, clock=clock).call(Script(ConnectionError))
    assert clock.sleeps == pytest.approx(expected)


async def test_the_first_retry_waits_at_most_base_delay(clock: FakeClock) -> None:
    """Numbering: the delay before retry n (n = 0 first) is at most base_delay * 2**n."""
    retry = Retry(attempts=4, base_delay=0.1, max_delay=10.0, budget=None)
    p = pipeline(retry, clock=clock, random=lambda: 0.999999)
    with pytest.raises(ConnectionError):
        await p.call(Script(ConnectionError))
    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.4], rel=1e-5)


async def test_max_delay_caps_computed_delays(clock: FakeClock) -> None:
    retry = Retry(attempts=6, base_delay=1.0, max_delay=3.0, jitter="none", budget=None)
    with pytest.raises(ConnectionError):
        await pipeline(retry, clock=clock).call(Script(ConnectionError))
    assert clock.sleeps == [1.0, 2.0, 3.0, 3.0, 3.0]


async def test_zero_delay_retries_without_sleeping(clock: FakeClock) -> None:
    fn = Script(ConnectionError, ConnectionError, "ok")
    retry = Retry(base_delay=0.0, max_delay=0.0)
    assert await pipeline(retry, clock=clock).call(fn) == "ok"
    assert clock.sleeps == []


@pytest.mark.parametrize("jitter", ["full", "equal", "decorrelated", "none"])
async def test_zero_max_delay_draws_no_jitter(clock: FakeClock, jitter: str) -> None:
    draws = 0

    def counting_random() -> float:
        nonlocal draws
        draws += 1
        return 0.5

    fn = Script(ConnectionError, ConnectionError, "ok")
    retry = Retry(base_delay=0.0, max_delay=0.0, jitter=jitter)  # type: ignore[arg-type]
    p = Pipeline(retry, clock=clock, random=counting_random, telemetry=False)
    assert await p.call(fn) == "ok"
    assert (clock.sleeps, draws) == ([], 0)


async def test_thousands_of_attempts_keep_finite_capped_delays(clock: FakeClock) -> None:
    retry = Retry(attempts=3000, base_delay=0.001, max_delay=0.5, budget=None)
    fn = Script(ConnectionError)
    p = Pipeline(retry, clock=clock, telemetry=False)  # the real default random source
    with pytest.raises(ConnectionError):
        await p.call(fn)
    assert fn.calls == 3000
    assert all(0.0 <= s <= 0.5 for s in clock.sleeps)
    assert math.isfinite(clock.slept)


# --- attempt numbers, events -----------------------------------------------------------------


async def test_inner_policies_see_the_attempt_number(clock: FakeClock) -> None:
    recorder = AttemptRecorder()
    fn = Script(ConnectionError, ConnectionError, "ok")
    await pipeline(Retry(), recorder, clock=clock).call(fn)
    assert recorder.attempts == [1, 2, 3]


async def test_events_describe_every_attempt_and_retry(
    clock: FakeClock, events: EventRecorder
) -> None:
    fn = Script(ConnectionError, ConnectionError, "ok")
    p = pipeline(Retry(name="r"), clock=clock, listeners=[events], name="svc")
    await p.call(fn)
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "AttemptStarted",
        "AttemptEnded",
        "RetryScheduled",
        "AttemptStarted",
        "AttemptEnded",
        "RetryScheduled",
        "AttemptStarted",
        "AttemptEnded",
    ]
    assert [e.attempt for e in events.of_type(AttemptStarted)] == [1, 2, 3]
    ended = events.of_type(AttemptEnded)
    assert [e.verdict for e in ended] == [Verdict.TRANSIENT, Verdict.TRANSIENT, Verdict.SUCCESS]
    assert [e.error_type for e in ended] == ["ConnectionError", "ConnectionError", None]
    scheduled = events.of_type(RetryScheduled)
    assert [(e.attempt, e.delay, e.retry_after) for e in scheduled] == [
        (1, 0.05, None),
        (2, 0.1, None),
    ]
    assert all(e.policy == "r" and e.pipeline == "svc" for e in events)
    assert [e.at for e in events.of_type(AttemptStarted)] == [0.0, 0.05, 0.15000000000000002]


async def test_attempt_duration_is_measured_on_the_pipeline_clock(
    clock: FakeClock, events: EventRecorder
) -> None:
    async def slow() -> str:
        await clock.sleep(0.25)
        return "ok"

    await pipeline(Retry(), clock=clock, listeners=[events]).call(slow)
    assert [e.duration for e in events.of_type(AttemptEnded)] == [0.25]


@pytest.mark.parametrize(
    "case",
    [
        ({"attempts": 2}, ConnectionError, "attempts", 2),
        ({}, ValueError, "verdict", 1),
        ({"budget": RetryBudget(ratio=0.0, reserve=0)}, ConnectionError, "budget", 1),
    ],
    ids=["attempts", "verdict", "budget"],
)
async def test_giving_up_reports_why(
    clock: FakeClock,
    events: EventRecorder,
    case: tuple[dict[str, Any], type[Exception], str, int],
) -> None:
    options, error, reason, attempts = case
    p = pipeline(Retry(**options), clock=clock, listeners=[events])
    with pytest.raises(error):
        await p.call(Script(error))
    (gave_up,) = events.of_type(RetryGaveUp)
    assert (gave_up.reason, gave_up.attempts) == (reason, attempts)
    assert gave_up.error_type == error.__name__


async def test_a_budget_refusal_is_reported_and_noted(
    clock: FakeClock, events: EventRecorder
) -> None:
    retry = Retry(budget=RetryBudget(ratio=0.0, reserve=1))
    p = pipeline(retry, clock=clock, listeners=[events])
    with pytest.raises(ConnectionError) as caught:
        await p.call(Script(ConnectionError))
    assert [e.attempt for e in events.of_type(BudgetRefused)] == [2]
    assert caught.value.__notes__ == [
        "resilient: 'retry' made 2 attempts; gave up: retry budget exhausted"
    ]


async def test_success_and_client_errors_emit_no_gave_up_event(
    clock: FakeClock, events: EventRecorder
) -> None:
    rules = Classifier(on_exception(KeyError, verdict=Verdict.CLIENT_ERROR))
    p = pipeline(Retry(classify=rules), clock=clock, listeners=[events])
    await p.call(Script("ok"))
    with pytest.raises(KeyError):
        await p.call(Script(KeyError))
    assert events.of_type(RetryGaveUp) == []


async def test_no_event_is_built_when_nobody_listens(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(**kwargs: object) -> None:
        raise AssertionError("an event was built without listeners")

    for name in ("RetryScheduled", "RetryGaveUp"):
        monkeypatch.setattr(f"resilient._retry.{name}", forbidden)
    # Attempt events are built by the reporters Retry shares with Hedge.
    for name in ("AttemptStarted", "AttemptEnded", "BudgetRefused"):
        monkeypatch.setattr(f"resilient._events.{name}", forbidden)
    fn = Script(ConnectionError, "ok")
    assert await pipeline(Retry(), clock=clock).call(fn) == "ok"
    with pytest.raises(ConnectionError):
        await pipeline(Retry(attempts=2), clock=clock).call(Script(ConnectionError))


# --- budget ----------------------------------------------------------------------------------


def test_each_retry_gets_its_own_budget_by_default() -> None:
    first, second = Retry(), Retry()
    assert isinstance(first.budget, RetryBudget)
    assert isinstance(second.budget, RetryBudget)
    assert first.budget is not second.budget
    assert Retry(budget=None).budget is None


async def test_the_default_budget_limits_retries_of_a_dead_dependency(clock: FakeClock) -> None:
    fn = Script(ConnectionError)
    p = pipeline(Retry(attempts=3, base_delay=0.0, max_delay=0.0), clock=clock)
    for _ in range(20):
        with pytest.raises(ConnectionError):
            await p.call(fn)
    # 20 first attempts; retries: the reserve (5) only, not 2 per call (failed calls earn
    # nothing).
    assert fn.calls == 20 + 5


async def test_budget_none_switches_budgeting_off(clock: FakeClock) -> None:
    fn = Script(ConnectionError)
    p = pipeline(Retry(attempts=3, base_delay=0.0, max_delay=0.0, budget=None), clock=clock)
    for _ in range(20):
        with pytest.raises(ConnectionError):
            await p.call(fn)
    assert fn.calls == 60


async def test_a_shared_budget_is_spent_by_every_pipeline_holding_it(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.0, reserve=2)
    first = pipeline(Retry(attempts=3, budget=budget), clock=clock)
    second = pipeline(Retry(attempts=3, budget=budget), clock=clock)
    a, b = Script(ConnectionError), Script(ConnectionError)
    with pytest.raises(ConnectionError):
        await first.call(a)
    with pytest.raises(ConnectionError):
        await second.call(b)
    assert (a.calls, b.calls) == (3, 1)


async def test_80_calls_per_second_to_a_dead_dependency_make_about_1_01_attempts_per_call(
    clock: FakeClock,
) -> None:
    """End to end through Retry(attempts=4): the budget, not `attempts`, sets the amplification.

    A healthy minute banks tokens (ratio * rate * window = 160, plus the reserve); two minutes
    of outage spend them once and earn nothing: about 1.01 attempts per call over the outage,
    and exactly 1 in its second minute."""
    ok = Script("ok")
    p = pipeline(Retry(attempts=4, base_delay=0.0, max_delay=0.0), clock=clock)
    for _ in range(80 * 60):
        await p.call(ok)
        clock.advance(1 / 80)
    fn = Script(ConnectionError)
    attempts_at_60s = 0
    for i in range(80 * 120):
        if i == 80 * 60:
            attempts_at_60s = fn.calls
        with pytest.raises(ConnectionError):
            await p.call(fn)
        clock.advance(1 / 80)
    assert fn.calls / (80 * 120) <= 1.02
    assert fn.calls - 80 * 120 <= 0.2 * 80 * 10 + 5
    assert fn.calls - attempts_at_60s == 80 * 60  # the second minute: no retry at all


async def test_a_retry_that_succeeds_gets_its_token_back(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.0, reserve=1)
    p = pipeline(Retry(attempts=3, base_delay=0.0, max_delay=0.0, budget=budget), clock=clock)
    for _ in range(50):  # every call fails once: one token carries all 50 retries
        assert await p.call(Script(ConnectionError, "ok")) == "ok"
    assert budget.available(clock.now()) == pytest.approx(1.0)
    with pytest.raises(ConnectionError):
        await p.call(Script(ConnectionError, ConnectionError, ConnectionError))
    assert budget.available(clock.now()) == pytest.approx(0.0)  # a retry that failed spent it


async def test_a_retry_answered_with_a_client_error_gets_its_token_back(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.0, reserve=1)
    classify = [on_exception(KeyError, verdict=Verdict.CLIENT_ERROR)]
    p = pipeline(
        Retry(attempts=2, base_delay=0.0, max_delay=0.0, budget=budget, classify=classify),
        clock=clock,
    )
    with pytest.raises(KeyError):
        await p.call(Script(ConnectionError, KeyError))
    assert budget.available(clock.now()) == pytest.approx(1.0)


async def test_only_calls_that_did_not_fail_earn(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.5, reserve=0)
    p = pipeline(Retry(attempts=1, budget=budget), clock=clock)
    for _ in range(4):
        with pytest.raises(ConnectionError):
            await p.call(Script(ConnectionError))
        with pytest.raises(RuntimeError):  # FAILURE: a dependency failure too
            await p.call(Script(RuntimeError))
    assert budget.available(clock.now()) == 0.0
    for _ in range(4):
        assert await p.call(Script("ok")) == "ok"
    assert budget.available(clock.now()) == pytest.approx(2.0)


async def test_a_success_refills_the_reserve_for_the_next_incident(clock: FakeClock) -> None:
    retry = Retry(attempts=2, base_delay=0.0, max_delay=0.0, budget=RetryBudget(reserve=2))
    p = pipeline(retry, clock=clock)
    dead = Script(ConnectionError)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            await p.call(dead)
    assert dead.calls == 3 + 2  # the reserve is spent
    clock.advance(60.0)
    assert await p.call(Script("ok")) == "ok"  # the dependency is back
    flaky = Script(ConnectionError, "ok")
    assert await p.call(flaky) == "ok"  # and retries with it
    assert flaky.calls == 2


# --- decorator, options ----------------------------------------------------------------------


async def test_retry_decorates_an_async_function() -> None:
    calls = 0

    @Retry(attempts=3, base_delay=0.0, max_delay=0.0)
    async def flaky(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError
        return x * 2

    assert await flaky(21) == 42
    assert calls == 3


def test_defaults_are_documented_values() -> None:
    retry = Retry()
    assert (retry.attempts, retry.base_delay, retry.max_delay, retry.jitter) == (
        3,
        0.1,
        5.0,
        "full",
    )
    assert retry.max_retry_after == 60.0
    assert retry.name == "retry"
    assert Retry.deadline_aware is True
    assert "attempts=3" in repr(retry)


def test_options_are_read_only() -> None:
    with pytest.raises(AttributeError):
        Retry().attempts = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("attempts", 0),
        ("attempts", -1),
        ("attempts", 2.5),
        ("attempts", True),
        ("base_delay", -0.1),
        ("base_delay", math.nan),
        ("base_delay", math.inf),
        ("max_delay", -1.0),
        ("max_delay", math.inf),
        ("jitter", "gaussian"),
        ("jitter", None),
        ("budget", 0.1),
        ("max_retry_after", -1.0),
        ("max_retry_after", math.nan),
        ("max_retry_after", math.inf),
        ("on_discard", "close"),
        ("name", ""),
        ("classify", 42),
    ],
)
def test_bad_options_raise_configuration_error_naming_parameter_and_value(
    parameter: str, value: object
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Retry(**{parameter: value})
    assert caught.value.parameter == f"Retry.{parameter}"
    assert f"Retry.{parameter}={value!r}" in str(caught.value)


def test_max_delay_below_base_delay_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"Retry.max_delay=0.5 .*base_delay"):
        Retry(base_delay=1.0, max_delay=0.5)


async def test_a_rejection_after_real_failures_keeps_the_last_failure_as_context(
    clock: FakeClock,
) -> None:
    """An inner breaker opening mid-retry: the caller's error still leads to the real failure."""
    from resilient import CircuitOpenError

    outcomes: list[Exception] = [ConnectionResetError("reset by peer"), CircuitOpenError("open")]

    async def flaky() -> None:
        raise outcomes.pop(0)

    with pytest.raises(CircuitOpenError) as info:
        await Pipeline(Retry(attempts=5, budget=None), clock=clock).call(flaky)
    assert isinstance(info.value.__context__, ConnectionResetError)

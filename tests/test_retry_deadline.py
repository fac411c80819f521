"""Retry under deadlines, and server back-off hints (retry_after)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from resilient import (
    Classification,
    Classifier,
    Pipeline,
    Retry,
    Timeout,
    TimeoutExceeded,
    Verdict,
    on_result,
)
from resilient.events import RetryGaveUp, RetryScheduled
from resilient.testing import EventRecorder, FakeClock


class Failing:
    """Always raises a fresh ``ConnectionError``; remembers the last one and the call times."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.starts: list[float] = []
        self.last: ConnectionError | None = None

    async def __call__(self) -> None:
        self.starts.append(self.clock.now())
        self.last = ConnectionError(f"attempt {len(self.starts)}")
        raise self.last


class Hinting:
    """A classifier: every exception is TRANSIENT with the given ``retry_after`` hint."""

    def __init__(self, hint: object) -> None:
        self.hint = hint

    def classify_result(self, result: object, /) -> Classification:
        return Classification(Verdict.SUCCESS)

    def classify_exception(self, exc: BaseException, /) -> Classification:
        return Classification(Verdict.TRANSIENT, self.hint)  # type: ignore[arg-type]


def half() -> float:
    return 0.5


def pipeline(*policies: Any, clock: FakeClock, **options: Any) -> Pipeline:
    return Pipeline(*policies, clock=clock, random=half, telemetry=False, **options)


# --- deadlines -------------------------------------------------------------------------------


async def test_a_retry_never_sleeps_past_the_deadline_and_raises_the_last_real_failure(
    clock: FakeClock, events: EventRecorder
) -> None:
    fn = Failing(clock)
    retry = Retry(attempts=10, base_delay=0.3, max_delay=10.0, jitter="none", budget=None)
    p = pipeline(Timeout(1.0), retry, clock=clock, listeners=[events])
    with pytest.raises(ConnectionError) as caught:
        await p.call(fn)
    # Delays 0.3 and 0.6 fit (t = 0.9); the next, 1.2, would cross the deadline at 1.0.
    assert clock.sleeps == [0.3, 0.6]
    assert fn.starts == [0.0, 0.3, pytest.approx(0.9)]
    assert caught.value is fn.last
    assert not isinstance(caught.value, TimeoutExceeded)
    assert caught.value.__notes__ == [
        "resilient: 'retry' made 3 attempts; "
        "gave up: the next attempt could not start before the deadline"
    ]
    (gave_up,) = events.of_type(RetryGaveUp)
    assert (gave_up.reason, gave_up.attempts) == ("deadline", 3)


async def test_a_delay_ending_exactly_at_the_deadline_is_not_taken(clock: FakeClock) -> None:
    fn = Failing(clock)
    retry = Retry(attempts=5, base_delay=0.5, max_delay=0.5, jitter="none", budget=None)
    with pytest.raises(ConnectionError):
        await pipeline(Timeout(1.0), retry, clock=clock).call(fn)
    assert clock.sleeps == [0.5]  # 0.5 + 0.5 would start an attempt at the deadline itself
    assert len(fn.starts) == 2


async def test_the_deadline_of_an_enclosing_pipeline_is_honoured(clock: FakeClock) -> None:
    fn = Failing(clock)
    outer = pipeline(Timeout(1.0), clock=clock)
    retry = Retry(attempts=10, base_delay=0.3, max_delay=10.0, jitter="none", budget=None)
    inner = pipeline(retry, clock=clock)
    with pytest.raises(ConnectionError):
        await outer.call(inner.call, fn)
    assert clock.sleeps == [0.3, 0.6]


async def test_total_and_per_attempt_timeouts_bound_every_attempt(clock: FakeClock) -> None:
    """Timeout(total) -> Retry -> Timeout(attempt): the standard order."""
    starts: list[float] = []

    async def hangs() -> None:
        starts.append(clock.now())
        await clock.sleep(100.0)

    retry = Retry(attempts=10, base_delay=0.0, max_delay=0.0, budget=None)
    p = pipeline(Timeout(2.5, name="total"), retry, Timeout(1.0, name="attempt"), clock=clock)
    with pytest.raises(TimeoutExceeded) as caught:
        await p.call(hangs)
    assert starts == [0.0, 1.0, 2.0]  # the third attempt is cut by the total deadline
    assert clock.now() == 2.5
    assert caught.value.policy == "total"


async def test_without_a_deadline_every_attempt_is_made(clock: FakeClock) -> None:
    fn = Failing(clock)
    retry = Retry(attempts=4, base_delay=10.0, max_delay=100.0, jitter="none", budget=None)
    with pytest.raises(ConnectionError):
        await pipeline(retry, clock=clock).call(fn)
    assert clock.sleeps == [10.0, 20.0, 40.0]


# --- server hints ----------------------------------------------------------------------------


async def test_a_hint_replaces_the_computed_delay_even_above_max_delay(
    clock: FakeClock, events: EventRecorder
) -> None:
    retry = Retry(attempts=3, max_delay=0.5, classify=Hinting(2.0), budget=None)
    with pytest.raises(ConnectionError):
        await pipeline(retry, clock=clock, listeners=[events]).call(Failing(clock))
    assert clock.sleeps == [2.0, 2.0]
    assert [e.retry_after for e in events.of_type(RetryScheduled)] == [2.0, 2.0]


async def test_a_hint_above_max_retry_after_is_clamped(clock: FakeClock) -> None:
    retry = Retry(attempts=2, classify=Hinting(120), max_retry_after=60.0, budget=None)
    with pytest.raises(ConnectionError):
        await pipeline(retry, clock=clock).call(Failing(clock))
    assert clock.sleeps == [60.0]


async def test_a_huge_finite_hint_waits_max_retry_after_at_most(clock: FakeClock) -> None:
    retry = Retry(attempts=2, classify=Hinting(1e300), max_retry_after=30.0, budget=None)
    with pytest.raises(ConnectionError):
        await pipeline(retry, clock=clock).call(Failing(clock))
    assert clock.sleeps == [30.0]


@pytest.mark.parametrize(
    "hint",
    [math.nan, -1.0, -math.inf, math.inf, "soon", b"2", 10**400, True, [1.0], object()],
    ids=repr,
)
async def test_garbage_hints_fall_back_to_the_computed_delay(
    clock: FakeClock, events: EventRecorder, hint: object
) -> None:
    retry = Retry(attempts=2, classify=Hinting(hint), budget=None)
    with pytest.raises(ConnectionError):
        await pipeline(retry, clock=clock, listeners=[events]).call(Failing(clock))
    assert clock.sleeps == [0.05]
    assert [e.retry_after for e in events.of_type(RetryScheduled)] == [None]


async def test_a_zero_hint_retries_at_once(clock: FakeClock) -> None:
    retry = Retry(attempts=3, classify=Hinting(0), budget=None)
    fn = Failing(clock)
    with pytest.raises(ConnectionError):
        await pipeline(retry, clock=clock).call(fn)
    assert clock.sleeps == []
    assert len(fn.starts) == 3


async def test_a_hint_reaching_the_deadline_gives_up_at_once(
    clock: FakeClock, events: EventRecorder
) -> None:
    fn = Failing(clock)
    retry = Retry(attempts=3, classify=Hinting(10.0), budget=None)
    with pytest.raises(ConnectionError) as caught:
        await pipeline(Timeout(5.0), retry, clock=clock, listeners=[events]).call(fn)
    assert clock.sleeps == []  # nobody is parked waiting for a retry that cannot happen
    assert caught.value is fn.last
    assert [e.reason for e in events.of_type(RetryGaveUp)] == ["deadline"]


async def test_a_hint_within_the_deadline_is_honoured(clock: FakeClock) -> None:
    retry = Retry(attempts=2, classify=Hinting(4.0), budget=None)
    with pytest.raises(ConnectionError):
        await pipeline(Timeout(5.0), retry, clock=clock).call(Failing(clock))
    assert clock.sleeps == [4.0]


@pytest.mark.parametrize("per_attempt", [False, True], ids=["total", "total+attempt"])
async def test_a_slow_on_discard_is_cut_at_the_deadline(
    clock: FakeClock, per_attempt: bool
) -> None:
    """With an inner Timeout the outer one arms no timer: Retry bounds its own waits."""

    class Response:
        status = 503

    async def slow_close(response: object) -> None:
        await clock.sleep(100.0)

    rules = Classifier(on_result(lambda r: r.status == 503, verdict=Verdict.TRANSIENT))
    retry = Retry(classify=rules, on_discard=slow_close, budget=None)
    calls = 0

    async def fn() -> Response:
        nonlocal calls
        calls += 1
        return Response()

    policies: list[Any] = [Timeout(5.0, name="total"), retry]
    if per_attempt:
        policies.append(Timeout(1.0))
    with pytest.raises(TimeoutExceeded) as caught:
        await pipeline(*policies, clock=clock).call(fn)
    assert caught.value.policy == "total"
    assert clock.now() == 5.0  # not 100: the wait ended at the deadline
    assert calls == 1


async def test_a_retry_given_up_because_on_discard_used_the_time_left_is_reported(
    clock: FakeClock, events: EventRecorder
) -> None:
    """The deadline reached while releasing a dropped result ends the retry like any other
    deadline: a ``RetryGaveUp(reason="deadline")`` event and a note on the error."""

    class Response:
        status = 503

    async def slow_close(response: object) -> None:
        await clock.sleep(100.0)

    rules = Classifier(on_result(lambda r: r.status == 503, verdict=Verdict.TRANSIENT))
    retry = Retry(classify=rules, on_discard=slow_close, budget=None)

    async def fn() -> Response:
        return Response()

    p = pipeline(Timeout(5.0, name="total"), retry, Timeout(1.0), clock=clock, listeners=[events])
    with pytest.raises(TimeoutExceeded) as caught:
        await p.call(fn)
    assert caught.value.policy == "total"
    (gave_up,) = events.of_type(RetryGaveUp)
    assert (gave_up.reason, gave_up.attempts) == ("deadline", 1)
    assert caught.value.__notes__ == [
        "resilient: 'retry' made 1 attempt; "
        "gave up: the next attempt could not start before the deadline"
    ]

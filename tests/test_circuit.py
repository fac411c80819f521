"""CircuitBreaker: the state machine, thresholds, windows, what counts, manual control, options."""

from __future__ import annotations

import math
from typing import Any

import pytest

import resilient
from _circuit_helpers import (
    CLASSIFY,
    NotFound,
    call,
    calls,
    client_error,
    fail,
    make,
    rejected,
    succeed,
    transitions,
)
from resilient import (
    CircuitBreaker,
    CircuitOpenError,
    Classifier,
    ConfigurationError,
    Pipeline,
    Timeout,
    TimeoutExceeded,
    Verdict,
    on_exception,
    on_result,
)
from resilient.events import CallRejected, CircuitStateChanged
from resilient.extend import CircuitSnapshot
from resilient.testing import EventRecorder, FakeClock

# -- opening: thresholds at their exact boundaries -----------------------------------------


async def test_opens_when_failure_rate_reaches_threshold_with_minimum_calls(
    clock: FakeClock, events: EventRecorder
) -> None:
    breaker, pipeline = make(clock, events, minimum_calls=4, failure_rate=0.5)
    assert await calls(pipeline, succeed, 2) == ["ok", "ok"]
    assert isinstance(await call(pipeline, fail), ConnectionError)  # 1/3: too few calls
    assert breaker.snapshot().state == "closed"
    tripping = await call(pipeline, fail)  # 2/4 = 0.5 reaches 0.5
    assert isinstance(tripping, ConnectionError), "the tripping call raises its own error"
    assert breaker.snapshot().state == "open"
    assert isinstance(await call(pipeline, succeed), CircuitOpenError)
    assert transitions(events) == [("closed", "open")]


async def test_rate_just_below_threshold_stays_closed(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=10, failure_rate=0.5)
    await calls(pipeline, succeed, 6)
    await calls(pipeline, fail, 4)  # 4/10
    assert breaker.snapshot().state == "closed"
    await call(pipeline, succeed)  # 4/11
    await call(pipeline, fail)  # 5/12
    assert breaker.snapshot().state == "closed"
    await call(pipeline, fail)  # 6/13 < 0.5
    assert breaker.snapshot().state == "closed"
    await call(pipeline, fail)  # 7/14 = 0.5
    assert breaker.snapshot().state == "open"


@pytest.mark.parametrize(("failures", "state"), [(2, "closed"), (3, "open")])
async def test_failure_rate_boundary_is_exact_despite_float_rounding(
    clock: FakeClock, failures: int, state: str
) -> None:
    # 0.1 * 30 is 3.0000000000000004 in floats: 3 failures in 30 calls must still reach 10 %.
    breaker, pipeline = make(clock, minimum_calls=30, failure_rate=0.1)
    await calls(pipeline, succeed, 30 - failures)
    await calls(pipeline, fail, failures)
    assert breaker.snapshot().calls == 30
    assert breaker.snapshot().state == state


async def test_minimum_calls_boundary(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=20, failure_rate=0.5)
    await calls(pipeline, fail, 19)
    assert breaker.snapshot().state == "closed", "19 failures are fewer than minimum_calls"
    await call(pipeline, fail)
    assert breaker.snapshot().state == "open"


async def test_a_success_completing_minimum_calls_opens_and_returns_its_result(
    clock: FakeClock,
) -> None:
    breaker, pipeline = make(clock, minimum_calls=4, failure_rate=0.5)
    await calls(pipeline, fail, 2)
    assert await call(pipeline, succeed) == "ok"
    assert breaker.snapshot().state == "closed"
    assert await call(pipeline, succeed) == "ok"  # 2 failures in 4 calls: at the threshold
    assert breaker.snapshot().state == "open"


async def test_failure_rate_one_needs_every_call_to_fail(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=3, failure_rate=1.0)
    await call(pipeline, succeed)
    await calls(pipeline, fail, 20)
    assert breaker.snapshot().state == "closed"
    fresh, pipeline = make(clock, minimum_calls=3, failure_rate=1.0)
    await calls(pipeline, fail, 3)
    assert fresh.snapshot().state == "open"


# -- open, half-open, close ----------------------------------------------------------------


async def test_open_fails_fast_with_retry_after_then_probes_after_open_for(
    clock: FakeClock, events: EventRecorder
) -> None:
    breaker, pipeline = make(clock, events, minimum_calls=1, open_for=5.0, name="payments")
    await call(pipeline, fail)
    assert breaker.snapshot().open_until == 5.0
    reached = []

    async def dependency() -> str:
        reached.append(clock.now())
        return "ok"

    clock.advance(4.75)
    error = await call(pipeline, dependency)
    assert isinstance(error, CircuitOpenError)
    assert error.policy == "payments"
    assert error.state == "open"
    assert error.key is None
    assert error.retry_after == pytest.approx(0.25)
    assert reached == [], "an open breaker never reaches the dependency"
    clock.advance(0.25)
    assert await call(pipeline, dependency) == "ok"
    assert reached == [5.0]
    assert breaker.snapshot().state == "closed"
    assert transitions(events) == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    rejection = events.of_type(CallRejected)
    assert [(r.reason, r.error_type, r.policy) for r in rejection] == [
        ("open", "resilient.CircuitOpenError", "payments")
    ]
    assert rejection[0].retry_after == pytest.approx(0.25)


async def test_failed_probe_reopens_with_open_time_growing_up_to_the_cap(
    clock: FakeClock,
) -> None:
    breaker, pipeline = make(
        clock, minimum_calls=1, open_for=5.0, open_for_growth=2.0, max_open_for=15.0
    )
    await call(pipeline, fail)
    opened_for = []
    for _ in range(4):
        snap = breaker.snapshot()
        assert snap.open_until is not None
        opened_for.append(snap.open_until - clock.now())
        clock.advance(snap.open_until - clock.now())
        assert isinstance(await call(pipeline, fail), ConnectionError)  # the probe fails
    assert opened_for == [5.0, 10.0, 15.0, 15.0]
    assert breaker.snapshot().trips == 5


async def test_closing_resets_the_open_time_growth(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=1, open_for=5.0)
    await call(pipeline, fail)
    clock.advance(5.0)
    await call(pipeline, fail)  # failed probe: next open time 10
    clock.advance(10.0)
    await call(pipeline, succeed)  # closes
    assert breaker.snapshot().trips == 0
    await call(pipeline, fail)
    assert breaker.snapshot().open_until == clock.now() + 5.0


async def test_jitter_takes_a_random_fraction_off_the_open_time(clock: FakeClock) -> None:
    breaker = CircuitBreaker(minimum_calls=1, open_for=8.0, open_jitter=0.5)
    pipeline = Pipeline(breaker, clock=clock, random=lambda: 0.5, telemetry=False)
    await call(pipeline, fail)
    assert breaker.snapshot().open_until == 8.0 * (1 - 0.5 * 0.5)


async def test_default_jitter_spreads_open_times_below_open_for(clock: FakeClock) -> None:
    ends = set()
    for draw in (0.0, 0.3, 0.99):
        breaker = CircuitBreaker(minimum_calls=1)
        pipeline = Pipeline(breaker, clock=clock, random=lambda d=draw: d, telemetry=False)
        await call(pipeline, fail)
        until = breaker.snapshot().open_until
        assert until is not None
        assert 4.5 <= until <= 5.0
        ends.add(until)
    assert len(ends) == 3


async def test_half_open_calls_probes_decide_by_failure_rate(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=1, half_open_calls=3, failure_rate=0.5)
    await call(pipeline, fail)
    clock.advance(5.0)
    await call(pipeline, succeed)
    await call(pipeline, fail)
    assert breaker.snapshot().state == "half_open"
    assert breaker.snapshot().calls == 2
    await call(pipeline, succeed)  # 1 failure in 3 probes < 0.5
    assert breaker.snapshot().state == "closed"


async def test_half_open_reopens_as_soon_as_the_probe_verdict_is_certain(
    clock: FakeClock,
) -> None:
    breaker, pipeline = make(clock, minimum_calls=1, half_open_calls=4, failure_rate=0.5)
    await call(pipeline, fail)
    clock.advance(5.0)
    await call(pipeline, fail)
    assert breaker.snapshot().state == "half_open"
    await call(pipeline, fail)  # 2 of 4 planned probes failed: 0.5 whatever comes next
    assert breaker.snapshot().state == "open"


# -- the time window -----------------------------------------------------------------------


async def test_sparse_failures_older_than_the_window_never_open_it(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=2, failure_rate=0.5, window=30.0)
    for _ in range(20):
        await call(pipeline, fail)
        assert breaker.snapshot().state == "closed"
        assert breaker.snapshot().calls == 1
        clock.advance(30.0)


async def test_failures_inside_the_window_resolution_still_open_it(clock: FakeClock) -> None:
    # 10 buckets of 3 s: an outcome stays in the window at least 27 s.
    breaker, pipeline = make(clock, minimum_calls=2, failure_rate=0.5, window=30.0)
    await call(pipeline, fail)
    clock.advance(26.9)
    await call(pipeline, fail)
    assert breaker.snapshot().state == "open"


async def test_outcomes_leave_the_window_bucket_by_bucket(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=100, window=10.0, buckets=10)
    await call(pipeline, fail)  # t=0, bucket [0, 1)
    clock.advance(4.5)
    await calls(pipeline, succeed, 2)  # bucket [4, 5)
    clock.advance(5.4)  # t=9.9: both buckets in the window
    assert breaker.snapshot(now=clock.now()).calls == 3
    clock.advance(0.1)  # t=10: bucket [0, 1) left
    snap = breaker.snapshot(now=clock.now())
    assert (snap.calls, snap.failures) == (2, 0)
    assert breaker.snapshot().calls == 3, "without now the window is as of the last call"
    clock.advance(5.0)
    assert breaker.snapshot(now=clock.now()).calls == 0
    await call(pipeline, succeed)
    assert breaker.snapshot().calls == 1


async def test_recording_drops_expired_buckets_and_keeps_the_rest(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=100, window=10.0, buckets=10)
    await call(pipeline, fail)  # t=0
    clock.advance(3.0)
    await call(pipeline, fail)  # t=3
    clock.advance(2.0)
    await call(pipeline, succeed)  # t=5
    clock.advance(5.5)
    await call(pipeline, succeed)  # t=10.5: the t=0 bucket left, t=3 and t=5 stay
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures) == (3, 1)
    clock.advance(3.0)
    await call(pipeline, succeed)  # t=13.5: the t=3 bucket left too
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures) == (3, 0)


async def test_window_restarts_after_a_long_silence(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=2, window=10.0)
    await call(pipeline, fail)
    clock.advance(1000.0)
    await call(pipeline, fail)
    assert breaker.snapshot().calls == 1
    assert breaker.snapshot().state == "closed"


# -- the count window ----------------------------------------------------------------------


async def test_count_window_keeps_the_last_n_outcomes(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, window_type="count", window=4, minimum_calls=4)
    await call(pipeline, fail)
    await calls(pipeline, succeed, 3)  # F S S S: 1/4
    assert breaker.snapshot().failure_rate == 0.25
    await call(pipeline, fail)  # S S S F: the first failure left
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures, snap.state) == (4, 1, "closed")
    await call(pipeline, fail)  # S S F F: 2/4
    assert breaker.snapshot().state == "open"


async def test_count_window_ignores_time(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, window_type="count", window=10, minimum_calls=2)
    await call(pipeline, fail)
    clock.advance(10_000.0)
    await call(pipeline, fail)
    assert breaker.snapshot().state == "open"


async def test_count_window_defaults_to_100_calls() -> None:
    breaker = CircuitBreaker(window_type="count")
    assert breaker.window == 100
    assert breaker.window_type == "count"
    assert CircuitBreaker().window == 30.0


# -- what counts -----------------------------------------------------------------------------


async def test_client_errors_never_open_and_do_not_count_as_successes(
    clock: FakeClock,
) -> None:
    breaker, pipeline = make(clock, minimum_calls=2)
    for error in await calls(pipeline, client_error, 100):
        assert isinstance(error, NotFound)
    assert breaker.snapshot().calls == 0
    assert breaker.snapshot().state == "closed"
    await call(pipeline, fail)
    await calls(pipeline, client_error, 50)
    await call(pipeline, fail)
    assert breaker.snapshot().state == "open", "client errors do not dilute the failure rate"


async def test_our_own_rejections_are_neutral(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=1)
    await calls(pipeline, rejected, 10)
    assert breaker.snapshot().calls == 0
    assert breaker.snapshot().state == "closed"


async def test_inner_timeout_counts_as_a_failure(clock: FakeClock) -> None:
    breaker = CircuitBreaker(minimum_calls=2, open_jitter=0.0)
    pipeline = Pipeline(breaker, Timeout(1.0), clock=clock, telemetry=False)

    async def hang() -> str:
        await clock.sleep(60.0)
        return "late"

    for _ in range(2):
        assert isinstance(await call(pipeline, hang), TimeoutExceeded)
    assert breaker.snapshot().failures == 2
    assert breaker.snapshot().state == "open"


class _Opaque:
    """A policy without the ``deadline_aware`` promise: the outer Timeout arms its own timer."""

    name = "opaque"

    async def execute(self, call: Any, ctx: Any, /) -> Any:
        return await call(ctx)


@pytest.mark.parametrize("outer_timer", [False, True], ids=["delegated", "armed"])
async def test_the_total_deadline_outside_the_breaker_is_neutral_with_an_inner_timeout(
    clock: FakeClock, outer_timer: bool
) -> None:
    """A total Timeout outside the breaker that expires is the caller's limit, not the
    dependency's failure, whether or not it delegated its timer to the inner Timeout."""
    breaker = CircuitBreaker(minimum_calls=1, open_jitter=0.0)
    outer: tuple[Any, ...] = (Timeout(1.0), _Opaque()) if outer_timer else (Timeout(1.0),)
    pipeline = Pipeline(*outer, breaker, Timeout(5.0), clock=clock, telemetry=False)

    async def hang() -> str:
        await clock.sleep(60.0)
        return "late"

    for _ in range(3):
        assert isinstance(await call(pipeline, hang), TimeoutExceeded)
    assert breaker.snapshot().calls == 0
    assert breaker.snapshot().state == "closed"


async def test_the_inner_timeout_firing_first_still_counts_inside_a_total_deadline(
    clock: FakeClock,
) -> None:
    breaker = CircuitBreaker(minimum_calls=2, open_jitter=0.0)
    pipeline = Pipeline(Timeout(10.0), breaker, Timeout(1.0), clock=clock, telemetry=False)

    async def hang() -> str:
        await clock.sleep(60.0)
        return "late"

    for _ in range(2):
        assert isinstance(await call(pipeline, hang), TimeoutExceeded)
    assert breaker.snapshot().failures == 2
    assert breaker.snapshot().state == "open"


async def test_returned_value_classified_as_failure_counts_and_is_returned(
    clock: FakeClock,
) -> None:
    breaker = CircuitBreaker(minimum_calls=2, open_jitter=0.0)
    classify = Classifier(on_result(lambda r: r == "503", verdict=Verdict.TRANSIENT))
    pipeline = Pipeline(breaker, clock=clock, classify=classify, telemetry=False)

    async def unavailable() -> str:
        return "503"

    assert await call(pipeline, unavailable) == "503"
    assert await call(pipeline, unavailable) == "503"
    assert breaker.snapshot().state == "open"


async def test_breaker_classify_overrides_the_pipeline_classifier(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        minimum_calls=1, classify=[on_exception(NotFound, verdict=Verdict.FAILURE)]
    )
    pipeline = Pipeline(breaker, clock=clock, classify=CLASSIFY, telemetry=False)
    await call(pipeline, client_error)
    assert breaker.snapshot().state == "open"


# -- slow calls ----------------------------------------------------------------------------


def _taking(clock: FakeClock, seconds: float, *, ok: bool = True) -> Any:
    async def work() -> str:
        await clock.sleep(seconds)
        if not ok:
            raise ConnectionError("slow and failed")
        return "ok"

    return work


async def test_slow_call_rate_opens_the_breaker(clock: FakeClock) -> None:
    breaker, pipeline = make(
        clock, minimum_calls=4, slow_call_duration=1.0, slow_call_rate=0.5, failure_rate=1.0
    )
    await calls(pipeline, _taking(clock, 0.1), 2)
    await call(pipeline, _taking(clock, 1.5))
    snap = breaker.snapshot()
    assert (snap.calls, snap.slow_calls, snap.failures) == (3, 1, 0)
    await call(pipeline, _taking(clock, 2.0))  # 2 slow of 4
    assert breaker.snapshot().state == "open"


async def test_a_call_exactly_at_slow_call_duration_is_not_slow(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=1, slow_call_duration=1.0, slow_call_rate=1.0)
    await call(pipeline, _taking(clock, 1.0))
    assert breaker.snapshot().slow_calls == 0
    assert breaker.snapshot().state == "closed"


async def test_slow_failure_counts_as_slow_and_failed(clock: FakeClock) -> None:
    breaker, pipeline = make(
        clock, minimum_calls=10, slow_call_duration=1.0, window_type="count", window=10
    )
    await call(pipeline, _taking(clock, 3.0, ok=False))
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures, snap.slow_calls) == (1, 1, 1)


async def test_slow_probe_reopens_the_breaker(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=1, slow_call_duration=1.0, slow_call_rate=1.0)
    await call(pipeline, fail)
    assert breaker.snapshot().state == "open"
    clock.advance(5.0)
    assert await call(pipeline, _taking(clock, 2.0)) == "ok"
    assert breaker.snapshot().state == "open"


async def test_slow_calls_leave_the_time_window(clock: FakeClock) -> None:
    breaker, pipeline = make(
        clock, minimum_calls=2, slow_call_duration=1.0, slow_call_rate=1.0, window=10.0
    )
    await call(pipeline, _taking(clock, 2.0))
    clock.advance(20.0)
    await call(pipeline, _taking(clock, 2.0))
    snap = breaker.snapshot()
    assert (snap.calls, snap.slow_calls, snap.state) == (1, 1, "closed")


# -- manual control, snapshot and events ---------------------------------------------------


async def test_force_open_rejects_until_reset(clock: FakeClock, events: EventRecorder) -> None:
    own = EventRecorder()
    breaker, pipeline = make(clock, events, listeners=[own])
    breaker.force_open()
    error = await call(pipeline, succeed)
    assert isinstance(error, CircuitOpenError)
    assert error.state == "forced_open"
    assert error.retry_after is None
    assert [e.reason for e in events.of_type(CallRejected)] == ["forced_open"]
    clock.advance(3600.0)
    assert isinstance(await call(pipeline, succeed), CircuitOpenError)
    breaker.reset()
    assert await call(pipeline, succeed) == "ok"
    assert transitions(own) == [("closed", "forced_open"), ("forced_open", "closed")]
    manual = own.of_type(CircuitStateChanged)[0]
    assert (manual.pipeline, manual.policy, manual.key) == ("", "circuit_breaker", None)


async def test_force_closed_records_but_never_opens(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=1)
    breaker.force_closed()
    await calls(pipeline, fail, 50)
    snap = breaker.snapshot()
    assert (snap.state, snap.failures, snap.failure_rate) == ("forced_closed", 50, 1.0)
    breaker.reset()
    assert breaker.snapshot().calls == 0
    await call(pipeline, fail)
    assert breaker.snapshot().state == "open"


async def test_disable_admits_everything_and_records_nothing(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=1)
    await call(pipeline, fail)
    assert breaker.snapshot().state == "open"
    breaker.disable()
    assert await call(pipeline, succeed) == "ok"
    await calls(pipeline, fail, 10)
    assert breaker.snapshot().state == "disabled"
    assert breaker.snapshot().calls == 1, "the statistics stay as they were when disabled"
    breaker.reset()
    assert breaker.snapshot().state == "closed"


async def test_reset_ends_an_open_state_and_forgets_trips(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=1)
    await call(pipeline, fail)
    clock.advance(5.0)
    await call(pipeline, fail)
    assert breaker.snapshot().trips == 2
    breaker.reset()
    snap = breaker.snapshot()
    assert (snap.state, snap.trips, snap.calls, snap.open_until) == ("closed", 0, 0, None)
    assert await call(pipeline, succeed) == "ok"


async def test_snapshot_is_a_frozen_dataclass_with_window_statistics(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=100, name="users")
    await calls(pipeline, succeed, 3)
    await call(pipeline, fail)
    snap = breaker.snapshot()
    assert isinstance(snap, CircuitSnapshot)
    assert snap == CircuitSnapshot(
        name="users",
        key=None,
        state="closed",
        calls=4,
        failures=1,
        slow_calls=0,
        failure_rate=0.25,
        slow_call_rate=0.0,
        open_until=None,
        trips=0,
        probes=0,
    )
    with pytest.raises(AttributeError):
        snap.state = "open"  # type: ignore[misc]


async def test_events_carry_pipeline_operation_and_time(
    clock: FakeClock, events: EventRecorder
) -> None:
    _, pipeline = make(clock, events, minimum_calls=1)
    clock.advance(7.0)
    await call(pipeline, fail)
    change = events.of_type(CircuitStateChanged)[0]
    assert (change.pipeline, change.operation, change.at) == ("default", "fail", 7.0)
    assert (change.previous, change.state, change.key) == ("closed", "open", None)


async def test_no_events_are_built_when_nobody_listens(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=1)
    await call(pipeline, fail)
    assert isinstance(await call(pipeline, fail), CircuitOpenError)
    assert breaker.snapshot().state == "open"


async def test_raising_breaker_listener_never_changes_the_outcome(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: object) -> None:
        raise RuntimeError("listener bug")

    breaker, pipeline = make(clock, minimum_calls=1, listeners=[broken])
    assert isinstance(await call(pipeline, fail), ConnectionError)
    assert isinstance(await call(pipeline, succeed), CircuitOpenError)
    assert breaker.snapshot().state == "open"
    assert "listener bug" in caplog.text


async def test_max_half_open_reopens_when_probes_never_answer(clock: FakeClock) -> None:
    import anyio

    breaker, pipeline = make(clock, minimum_calls=1, max_half_open=2.0)
    await call(pipeline, fail)
    clock.advance(5.0)
    probe_started = anyio.Event()

    async def hang() -> str:
        probe_started.set()
        await anyio.sleep_forever()
        return "never"

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, pipeline, hang)
        await probe_started.wait()
        assert isinstance(await call(pipeline, succeed), CircuitOpenError)  # slot taken
        clock.advance(2.0)
        error = await call(pipeline, succeed)
        assert isinstance(error, CircuitOpenError)
        assert error.state == "open"
        assert breaker.snapshot().state == "open"
        assert breaker.snapshot().trips == 2
        tg.cancel_scope.cancel()
    clock.advance(10.0)
    assert await call(pipeline, succeed) == "ok"
    assert breaker.snapshot().state == "closed"


# -- decorator, repr, options --------------------------------------------------------------


async def test_breaker_decorates_a_function(clock: FakeClock) -> None:
    breaker = CircuitBreaker(minimum_calls=1, max_waiting=0)

    @breaker
    async def flaky(n: int) -> int:
        if n < 0:
            raise ConnectionError("down")
        return n * 2

    assert await flaky(2) == 4
    with pytest.raises(ConnectionError):
        await flaky(-1)
    with pytest.raises(CircuitOpenError):
        await flaky(2)


async def test_execute_runs_outside_a_composed_pipeline(clock: FakeClock) -> None:
    breaker = CircuitBreaker(minimum_calls=1, max_waiting=0)
    outer = Pipeline(Pipeline(breaker), clock=clock, telemetry=False)
    await call(outer, fail)
    assert isinstance(await call(outer, succeed), CircuitOpenError)


def test_breaker_is_adeadline_aware_policy() -> None:
    breaker = CircuitBreaker()
    assert isinstance(breaker, resilient.extend.Policy)
    assert CircuitBreaker.deadline_aware is True
    assert "CircuitBreaker(failure_rate=0.5, window=30s" in repr(breaker)
    assert "window=100 calls" in repr(CircuitBreaker(window_type="count"))


def test_options_are_readable() -> None:
    breaker = CircuitBreaker(
        failure_rate=0.25,
        window=60.0,
        minimum_calls=50,
        open_for=10.0,
        half_open_calls=3,
        slow_call_duration=2.0,
        slow_call_rate=0.8,
        per_key=False,
        max_keys=10,
    )
    assert breaker.failure_rate == 0.25
    assert breaker.window == 60.0
    assert breaker.minimum_calls == 50
    assert breaker.open_for == 10.0
    assert breaker.max_open_for == 60.0
    assert breaker.half_open_calls == 3
    assert breaker.slow_call_duration == 2.0
    assert breaker.slow_call_rate == 0.8
    assert breaker.per_key is False
    assert breaker.max_keys == 10
    assert CircuitBreaker(open_for=120.0).max_open_for == 120.0


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"failure_rate": 0}, "CircuitBreaker.failure_rate"),
        ({"failure_rate": 1.5}, "CircuitBreaker.failure_rate"),
        ({"failure_rate": math.nan}, "CircuitBreaker.failure_rate"),
        ({"window": 0}, "CircuitBreaker.window"),
        ({"window": -1.0}, "CircuitBreaker.window"),
        ({"window": math.inf}, "CircuitBreaker.window"),
        ({"window_type": "count", "window": 2.5}, "CircuitBreaker.window"),
        (
            {"window_type": "count", "window": 10, "minimum_calls": 11},
            "CircuitBreaker.minimum_calls",
        ),
        ({"window_type": "sliding"}, "CircuitBreaker.window_type"),
        ({"minimum_calls": 0}, "CircuitBreaker.minimum_calls"),
        ({"minimum_calls": 2.0}, "CircuitBreaker.minimum_calls"),
        ({"open_for": 0}, "CircuitBreaker.open_for"),
        ({"half_open_calls": 0}, "CircuitBreaker.half_open_calls"),
        ({"half_open_calls": True}, "CircuitBreaker.half_open_calls"),
        ({"slow_call_duration": 0}, "CircuitBreaker.slow_call_duration"),
        ({"slow_call_rate": 0}, "CircuitBreaker.slow_call_rate"),
        ({"buckets": 0}, "CircuitBreaker.buckets"),
        ({"open_for_growth": 0.5}, "CircuitBreaker.open_for_growth"),
        ({"max_open_for": 1.0}, "CircuitBreaker.max_open_for"),
        ({"open_jitter": 1.0}, "CircuitBreaker.open_jitter"),
        ({"open_jitter": -0.1}, "CircuitBreaker.open_jitter"),
        ({"max_half_open": 0}, "CircuitBreaker.max_half_open"),
        ({"classify": 42}, "CircuitBreaker.classify"),
        ({"per_key": "yes"}, "CircuitBreaker.per_key"),
        ({"max_keys": 0}, "CircuitBreaker.max_keys"),
        ({"key_idle": -5}, "CircuitBreaker.key_idle"),
        ({"listeners": [42]}, "CircuitBreaker.listeners"),
        ({"name": ""}, "CircuitBreaker.name"),
    ],
)
def test_bad_options_raise_configuration_error(options: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        CircuitBreaker(**options)
    assert info.value.parameter == parameter


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        CircuitBreaker(0.5)  # type: ignore[misc]


# -- the clock, bound once ------------------------------------------------------------------


async def test_the_first_call_binds_the_clock_every_later_time_comes_from_it() -> None:
    first, second = FakeClock(), FakeClock(start=1000.0)
    breaker = CircuitBreaker(minimum_calls=1, open_for=5.0, open_jitter=0.0)
    await call(Pipeline(breaker, clock=first, telemetry=False), succeed)
    # A pipeline on another clock: the breaker keeps the times of the clock it was bound to.
    await call(Pipeline(breaker, clock=second, telemetry=False), fail)
    assert breaker.snapshot().open_until == 5.0
    first.advance(5.0)
    assert await call(Pipeline(breaker, clock=second, telemetry=False), succeed) == "ok"
    assert breaker.snapshot().state == "closed"


async def test_manual_control_reads_the_bound_clock(clock: FakeClock) -> None:
    own = EventRecorder()
    breaker, pipeline = make(clock, listeners=[own])
    breaker.force_open()  # before any call: no clock bound yet
    clock.advance(7.0)
    assert isinstance(await call(pipeline, succeed), CircuitOpenError)  # binds the clock
    clock.advance(3.0)
    breaker.reset()
    assert [e.at for e in own.of_type(CircuitStateChanged)] == [0.0, 10.0]


async def test_a_reconfigured_breaker_keeps_the_clock_of_its_states(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=1, open_for=5.0)
    clock.advance(100.0)
    await call(pipeline, fail)
    new = breaker.reconfigure(open_for=10.0)
    other = Pipeline(new, clock=FakeClock(), telemetry=False)  # a clock at 0.0
    assert isinstance(await call(other, succeed), CircuitOpenError), "open until 105.0"
    clock.advance(5.0)
    assert await call(other, succeed) == "ok"

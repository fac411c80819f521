"""A lone breaker, observed or not: whatever watches the calls (listeners, telemetry), the
breaker must decide and record exactly the same. These tests drive an unobserved pipeline and
an observed one side by side. (A private "direct" path once served the unobserved case; the
breaker now has one path, and these tests keep both uses honest.)"""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest

from resilient import CircuitBreaker, CircuitOpenError, Pipeline, Verdict, on_exception, on_result
from resilient.events import CircuitStateChanged
from resilient.testing import EventRecorder, FakeClock
from test_telemetry_support import Otel


class Boom(Exception):
    pass


class BadInput(Exception):
    pass


def _classify() -> list[Any]:
    return [
        on_exception(BadInput, verdict=Verdict.CLIENT_ERROR),
        on_result(lambda r: r == "degraded", verdict=Verdict.TRANSIENT),
    ]


def _pipelines(breaker_options: dict[str, Any], clock: FakeClock) -> tuple[Pipeline, Pipeline]:
    """The same breaker configuration on the direct path and on the general path."""
    options = {"classify": _classify(), **breaker_options}
    direct = Pipeline(
        CircuitBreaker(**options),
        clock=clock,
        telemetry=False,
        random=random.Random(7).random,  # the same open-time jitter on both paths
    )
    # A listener makes the pipeline build a Context per call: the general path.
    general = Pipeline(
        CircuitBreaker(**options),
        clock=clock,
        telemetry=False,
        random=random.Random(7).random,
        listeners=[lambda _: None],
    )
    return direct, general


async def _outcome(pipeline: Pipeline, kind: str) -> str:
    async def work() -> str:
        if kind == "boom":
            raise Boom
        if kind == "bad":
            raise BadInput
        return kind

    try:
        return await pipeline.call(work)
    except CircuitOpenError:
        return "rejected"
    except Boom:
        return "boom"
    except BadInput:
        return "bad"


def _view(breaker: CircuitBreaker) -> tuple[Any, ...]:
    s = breaker.snapshot()
    return (s.state, s.calls, s.failures, s.open_until, s.trips, s.probes)


@pytest.mark.parametrize(
    "options",
    [
        {"window": 10.0, "minimum_calls": 5, "failure_rate": 0.5, "open_jitter": 0.0},
        {"window_type": "count", "window": 8, "minimum_calls": 4, "failure_rate": 0.25},
        {"window": 2.0, "buckets": 4, "minimum_calls": 3, "failure_rate": 1.0, "open_for": 1.0},
    ],
)
async def test_direct_path_matches_the_general_path_call_for_call(options: dict[str, Any]) -> None:
    clock = FakeClock()
    direct, general = _pipelines(options, clock)
    rng = random.Random(20261127)
    kinds = ["ok"] * 6 + ["boom", "boom", "bad", "degraded"]
    for step in range(3000):
        kind = rng.choice(kinds)
        outcomes = (await _outcome(direct, kind), await _outcome(general, kind))
        assert outcomes[0] == outcomes[1], (step, kind)
        views = (_view(direct.policies[0]), _view(general.policies[0]))  # type: ignore[arg-type]
        assert views[0] == views[1], (step, kind)
        clock.advance(rng.choice((0.0, 0.0, 0.05, 0.3, 1.5)))


async def test_failures_on_the_direct_path_open_the_breaker_and_later_calls_never_run() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(minimum_calls=3, failure_rate=0.5, open_for=5.0, max_waiting=0)
    pipeline = Pipeline(breaker, clock=clock, telemetry=False)
    ran = 0

    async def failing() -> None:
        nonlocal ran
        ran += 1
        raise Boom

    for _ in range(3):
        with pytest.raises(Boom):  # the tripping call raises its own error
            await pipeline.call(failing)
    with pytest.raises(CircuitOpenError):
        await pipeline.call(failing)
    assert ran == 3
    assert breaker.snapshot().state == "open"


async def test_a_success_that_completes_minimum_calls_at_the_threshold_opens_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(minimum_calls=4, failure_rate=0.5)
    pipeline = Pipeline(breaker, clock=clock, telemetry=False)
    for kind in ("boom", "boom", "ok"):
        await _outcome(pipeline, kind)
    assert breaker.snapshot().state == "closed"
    assert await _outcome(pipeline, "ok") == "ok"  # 2 of 4 failed: at the threshold
    assert breaker.snapshot().state == "open"


async def test_results_classified_as_failures_count_on_the_direct_path() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        minimum_calls=2, classify=[on_result(lambda r: r == "degraded", verdict=Verdict.TRANSIENT)]
    )
    pipeline = Pipeline(breaker, clock=clock, telemetry=False)
    for _ in range(2):
        assert await _outcome(pipeline, "degraded") == "degraded"
    assert breaker.snapshot().state == "open"


async def test_cancellation_on_the_direct_path_is_neutral() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(minimum_calls=1)
    pipeline = Pipeline(breaker, clock=clock, telemetry=False)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await pipeline.call(anyio.sleep_forever)
    assert (breaker.snapshot().calls, breaker.snapshot().state) == (0, "closed")


async def test_a_straggler_failure_on_the_direct_path_does_not_reopen_a_reclosed_breaker() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(minimum_calls=1)
    pipeline = Pipeline(breaker, clock=clock, telemetry=False)
    started, release = anyio.Event(), anyio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        raise Boom

    async def straggler() -> None:
        with pytest.raises(Boom):
            await pipeline.call(slow)

    async with anyio.create_task_group() as tg:
        tg.start_soon(straggler)
        await started.wait()
        breaker.force_open()
        breaker.reset()  # closed again, in a new generation
        release.set()
    # One failure with minimum_calls=1 would open it, but it was admitted before the reset.
    assert breaker.snapshot().state == "closed"


async def test_the_breakers_own_listeners_see_transitions_made_on_the_direct_path() -> None:
    clock = FakeClock()
    events = EventRecorder()
    breaker = CircuitBreaker(minimum_calls=1, listeners=[events])
    pipeline = Pipeline(breaker, clock=clock, telemetry=False, name="p")

    async def fetch_user() -> None:
        raise Boom

    with pytest.raises(Boom):
        await pipeline.call(fetch_user)
    [change] = events.of_type(CircuitStateChanged)
    assert (change.pipeline, change.operation, change.state) == (
        "p",
        fetch_user.__qualname__,
        "open",
    )


async def test_wrapped_functions_take_the_direct_path_with_the_same_behaviour() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(minimum_calls=3, max_waiting=0)
    calls = 0

    @Pipeline(breaker, clock=clock, telemetry=False).wrap
    async def flaky(fail: bool) -> str:
        nonlocal calls
        calls += 1
        if fail:
            raise Boom
        return "ok"

    assert await flaky(False) == "ok"
    for _ in range(2):
        with pytest.raises(Boom):
            await flaky(True)
    with pytest.raises(CircuitOpenError):
        await flaky(False)
    assert calls == 3
    clock.advance(60.0)
    assert await flaky(False) == "ok"  # the half-open probe, through the full chain
    assert breaker.snapshot().state == "closed"


async def test_default_telemetry_without_an_sdk_decides_like_no_telemetry() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(minimum_calls=3, max_waiting=0)
    pipeline = Pipeline(breaker, clock=clock)  # telemetry on, as users build it
    assert pipeline.observer is not None
    for kind in ("ok", "boom", "boom"):
        await _outcome(pipeline, kind)
    assert await _outcome(pipeline, "ok") == "rejected"  # 2 of 3 failed: opened


async def test_a_recording_observer_sees_every_call_of_a_lone_breaker() -> None:
    otel = Otel.create()
    clock = FakeClock()
    breaker = CircuitBreaker(minimum_calls=2, max_waiting=0)
    pipeline = Pipeline(breaker, clock=clock, name="p", telemetry=otel.telemetry)

    async def fetch() -> str:
        return "ok"

    async def broken() -> str:
        raise Boom

    assert await pipeline.call(fetch) == "ok"
    with pytest.raises(Boom):
        await pipeline.call(broken)
    with pytest.raises(CircuitOpenError):
        await pipeline.call(fetch)
    # Every call is a span: the observed path, not the direct one, while the SDK records.
    assert len(otel.exporter.get_finished_spans()) == 3


async def test_a_wrapped_function_with_a_recording_observer_is_observed() -> None:
    otel = Otel.create()
    clock = FakeClock()

    @Pipeline(CircuitBreaker(), clock=clock, name="p", telemetry=otel.telemetry).wrap
    async def fetch() -> str:
        return "ok"

    for _ in range(3):
        assert await fetch() == "ok"
    assert len(otel.exporter.get_finished_spans()) == 3

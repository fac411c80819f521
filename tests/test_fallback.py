"""Fallback: a substitute answer when the call fails in a chosen way."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from resilient import (
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    Fallback,
    Outcome,
    Pipeline,
    Retry,
    Timeout,
    TimeoutExceeded,
    Verdict,
    on_exception,
    on_result,
)
from resilient.events import (
    FallbackUsed,
)
from resilient.testing import EventRecorder, FakeClock


async def fails(exc: BaseException) -> str:
    raise exc


async def returns(value: Any) -> Any:
    return value


async def test_a_transient_failure_falls_back_to_the_value(clock: FakeClock) -> None:
    events = EventRecorder()
    pipeline = Pipeline(Fallback(value="cached"), clock=clock, listeners=[events])
    assert await pipeline.call(fails, ConnectionError("reset")) == "cached"
    (used,) = events.of_type(FallbackUsed)
    assert (used.policy, used.verdict, used.error_type) == (
        "fallback",
        Verdict.TRANSIENT,
        "ConnectionError",
    )


async def test_a_refusal_of_an_inner_policy_falls_back(clock: FakeClock) -> None:
    """An open circuit (REJECTED) is answered by the fallback, by default."""
    breaker = CircuitBreaker(minimum_calls=1, failure_rate=0.5, max_waiting=0)
    pipeline = Pipeline(Fallback(value="stale"), breaker, clock=clock)
    assert await pipeline.call(fails, ConnectionError("down")) == "stale"  # opens it
    assert breaker.snapshot().state == "open"
    events = EventRecorder()
    pipeline = Pipeline(Fallback(value="stale"), breaker, clock=clock, listeners=[events])
    assert await pipeline.call(returns, "fresh") == "stale"
    (used,) = events.of_type(FallbackUsed)
    assert used.verdict is Verdict.REJECTED
    assert used.error_type == "resilient.CircuitOpenError"


async def test_a_client_error_propagates_by_default(clock: FakeClock) -> None:
    """The caller's fault is not the dependency's: no fallback, the error as raised."""
    pipeline = Pipeline(
        Fallback(value="cached"),
        clock=clock,
        classify=[on_exception(KeyError, verdict=Verdict.CLIENT_ERROR)],
    )
    with pytest.raises(KeyError):
        await pipeline.call(fails, KeyError("no such user"))


async def test_only_the_chosen_verdicts_fall_back(clock: FakeClock) -> None:
    """verdicts={FAILURE}: a FAILURE falls back, a TRANSIENT failure propagates."""
    pipeline = Pipeline(Fallback(value="x", verdicts={Verdict.FAILURE}), clock=clock)
    assert await pipeline.call(fails, RuntimeError("bug upstream")) == "x"
    with pytest.raises(ConnectionError):
        await pipeline.call(fails, ConnectionError("reset"))


async def test_chosen_exception_types_fall_back_whatever_their_verdict(
    clock: FakeClock,
) -> None:
    """exceptions=(LookupError,) and no verdicts: only LookupError (and subclasses)."""
    events = EventRecorder()
    pipeline = Pipeline(
        Fallback(value=None, verdicts=(), exceptions=(LookupError,)),
        clock=clock,
        classify=[on_exception(KeyError, verdict=Verdict.CLIENT_ERROR)],
        listeners=[events],
    )
    assert await pipeline.call(fails, KeyError("missing")) is None
    with pytest.raises(ConnectionError):
        await pipeline.call(fails, ConnectionError("reset"))
    (used,) = events.of_type(FallbackUsed)
    assert used.verdict is Verdict.CLIENT_ERROR


async def test_the_handler_receives_the_outcome(clock: FakeClock) -> None:
    seen: list[Outcome] = []

    async def handler(outcome: Outcome) -> str:
        seen.append(outcome)
        return f"fallback for {type(outcome.exception).__name__}"

    pipeline = Pipeline(Fallback(handler=handler), clock=clock)
    error = ConnectionError("reset")
    assert await pipeline.call(fails, error) == "fallback for ConnectionError"
    assert seen == [Outcome(exception=error)]


async def test_a_plain_function_handler_works_too(clock: FakeClock) -> None:
    pipeline = Pipeline(Fallback(handler=lambda outcome: "sync"), clock=clock)
    assert await pipeline.call(fails, ConnectionError("reset")) == "sync"


async def test_a_failed_result_falls_back_and_is_discarded(clock: FakeClock) -> None:
    """A returned value classified TRANSIENT (an HTTP 503) is replaced and released."""
    released: list[Any] = []
    events = EventRecorder()
    pipeline = Pipeline(
        Fallback(value=200, on_discard=released.append),
        clock=clock,
        classify=[on_result(lambda r: r == 503, verdict=Verdict.TRANSIENT)],
        listeners=[events],
    )
    assert await pipeline.call(returns, 503) == 200
    assert await pipeline.call(returns, 201) == 201
    assert released == [503]
    (used,) = events.of_type(FallbackUsed)
    assert (used.verdict, used.error_type) == (Verdict.TRANSIENT, None)


async def test_a_handler_given_the_failed_result_may_keep_it(clock: FakeClock) -> None:
    released: list[Any] = []

    async def keep(outcome: Outcome) -> Any:
        return outcome.result

    pipeline = Pipeline(
        Fallback(handler=keep, on_discard=released.append),
        clock=clock,
        classify=[on_result(lambda r: r == 503, verdict=Verdict.TRANSIENT)],
    )
    assert await pipeline.call(returns, 503) == 503
    assert released == []  # what is returned is never released


async def test_the_handler_raising_propagates_chained_to_the_failure(clock: FakeClock) -> None:
    async def handler(outcome: Outcome) -> str:
        raise LookupError("no cached copy either")

    pipeline = Pipeline(Fallback(handler=handler), clock=clock)
    with pytest.raises(LookupError) as info:
        await pipeline.call(fails, ConnectionError("reset"))
    assert isinstance(info.value.__context__, ConnectionError)


async def test_cancellation_never_falls_back(clock: FakeClock) -> None:
    """The caller cancels: the cancellation propagates, no fallback, no event."""
    events = EventRecorder()
    started = anyio.Event()

    async def waits() -> str:
        started.set()
        await anyio.sleep_forever()
        return "never"  # pragma: no cover

    pipeline = Pipeline(Fallback(value="cached"), clock=clock, listeners=[events])
    out: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            out.append(await pipeline.call(waits))

        tg.start_soon(run)
        await started.wait()
        tg.cancel_scope.cancel()
    assert out == []
    assert events.of_type(FallbackUsed) == []


async def test_an_enclosing_timeout_is_not_answered_by_an_inner_fallback(
    clock: FakeClock,
) -> None:
    """Timeout outside the fallback cuts it as a cancellation: TimeoutExceeded, no fallback.
    The same timeout inside the fallback is a failure that falls back."""

    async def slow() -> str:
        await clock.sleep(5.0)
        return "late"

    outside = Pipeline(Timeout(1.0), Fallback(value="cached"), clock=clock)
    with pytest.raises(TimeoutExceeded):
        await outside.call(slow)
    inside = Pipeline(Fallback(value="cached"), Timeout(1.0), clock=clock)
    assert await inside.call(slow) == "cached"


async def test_the_fallback_answers_after_retries_ran_out(clock: FakeClock) -> None:
    """Fallback outermost: the Retry inside makes its attempts first."""
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        raise ConnectionError("reset")

    pipeline = Pipeline(
        Fallback(value="default"),
        Retry(attempts=3, base_delay=0.0, max_delay=0.0, budget=None),
        clock=clock,
    )
    assert await pipeline.call(flaky) == "default"
    assert len(calls) == 3


async def test_success_passes_through_untouched(clock: FakeClock) -> None:
    events = EventRecorder()
    pipeline = Pipeline(Fallback(value="cached"), clock=clock, listeners=[events])
    for i in range(5):
        assert await pipeline.call(returns, i) == i
    assert events.of_type(FallbackUsed) == []


async def test_fallback_as_a_decorator(clock: FakeClock) -> None:
    @Fallback(value=[])
    async def recommendations(user: str) -> list[str]:
        raise CircuitOpenError("open", policy="breaker")

    assert await recommendations("ada") == []


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({}, "Fallback.handler"),
        ({"value": 1, "handler": returns}, "Fallback.handler"),
        ({"handler": 3}, "Fallback.handler"),
        ({"value": 1, "verdicts": [Verdict.SUCCESS]}, "Fallback.verdicts"),
        ({"value": 1, "verdicts": ["transient"]}, "Fallback.verdicts"),
        ({"value": 1, "exceptions": (BaseException,)}, "Fallback.exceptions"),
        ({"value": 1, "exceptions": (asyncio.CancelledError,)}, "Fallback.exceptions"),
        ({"value": 1, "exceptions": ("ValueError",)}, "Fallback.exceptions"),
        ({"value": 1, "on_discard": 3}, "Fallback.on_discard"),
        ({"value": 1, "verdicts": ()}, "Fallback.verdicts"),
        ({"value": 1, "name": ""}, "Fallback.name"),
    ],
)
def test_invalid_options_name_the_parameter(options: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ConfigurationError, match=parameter.replace(".", r"\.")):
        Fallback(**options)


def test_options_are_readable() -> None:
    fallback = Fallback(value=0, verdicts=Verdict.FAILURE, exceptions=KeyError)
    assert fallback.verdicts == frozenset({Verdict.FAILURE})
    assert fallback.exceptions == (KeyError,)
    assert repr(fallback) == "Fallback(value=0, verdicts={FAILURE}, name='fallback')"


async def test_an_enclosing_timeout_still_bounds_a_slow_handler(clock: FakeClock) -> None:
    """Timeout > Fallback > Timeout: the outer timeout keeps its own timer, so a handler that
    waits too long is cut by it."""

    async def slow_cache(outcome: Outcome) -> str:
        await clock.sleep(10.0)
        return "cached"

    pipeline = Pipeline(Timeout(2.0), Fallback(handler=slow_cache), Timeout(1.0), clock=clock)
    with pytest.raises(TimeoutExceeded):
        await pipeline.call(fails, ConnectionError("reset"))
    assert clock.now() == pytest.approx(2.0)

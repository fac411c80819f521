"""The public policy protocol: a user-written policy gets exactly what the built-ins get."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from _limits_helpers import CountingClock
from resilient import (
    Bulkhead,
    CircuitBreaker,
    Pipeline,
    RateLimiter,
    Retry,
    Timeout,
    TimeoutExceeded,
)
from resilient.extend import Call, ComposablePolicy, Context, Policy, PolicyBase, deadline_aware
from resilient.testing import FakeClock


class UserPolicy(PolicyBase):
    """A policy written against ``resilient.extend`` only, counting its compositions."""

    deadline_aware: ClassVar[bool] = True

    def __init__(self) -> None:
        self.name = "user"
        self.composed = 0
        self.seen: list[int] = []

    async def execute(self, call: Call, ctx: Context, /) -> Any:
        self.seen.append(ctx.attempt)
        return await call(ctx)

    def compose(self, inner: Call, after: tuple[Policy, ...], /) -> Call:
        self.composed += 1
        execute = self.execute

        async def step(ctx: Context) -> Any:
            return await execute(inner, ctx)

        return step


class Unaware(UserPolicy):
    """The same policy without the deadline promise."""

    deadline_aware: ClassVar[bool] = False


def _standard_with(policy: Policy, clock: CountingClock, **options: Any) -> Pipeline:
    """``standard()``'s order with a user policy in the middle."""
    return Pipeline(
        Timeout(10.0),
        Retry(attempts=3, base_delay=0.01),
        CircuitBreaker(),
        policy,
        RateLimiter(rate=1000.0, burst=100),
        Bulkhead(max_concurrent=10),
        Timeout(1.0),
        clock=clock,  # type: ignore[arg-type]
        **options,
    )


def _flaky(fail: int) -> Any:
    tries = 0

    async def work() -> str:
        nonlocal tries
        tries += 1
        if tries <= fail:
            raise ConnectionError("reset")
        return "ok"

    return work


def test_the_protocol_types_describe_the_user_policy() -> None:
    policy = UserPolicy()
    assert isinstance(policy, Policy)
    assert isinstance(policy, ComposablePolicy)
    assert deadline_aware(policy)
    assert not deadline_aware(Unaware())
    assert not deadline_aware(object())


async def test_a_user_policy_in_a_standard_pipeline_gets_one_timer_per_attempt() -> None:
    clock = CountingClock()
    policy = UserPolicy()
    pipeline = _standard_with(policy, clock)
    assert await pipeline.call(_flaky(2)) == "ok"
    assert policy.seen == [1, 2, 3]
    assert len(clock.armed) == 3  # the outer Timeout delegated: one timer per attempt


async def test_a_policy_without_the_promise_makes_the_outer_timeout_arm_its_own() -> None:
    clock = CountingClock()
    pipeline = _standard_with(Unaware(), clock)
    assert await pipeline.call(_flaky(2)) == "ok"
    assert len(clock.armed) == 1 + 3


async def test_a_user_policy_is_composed_once_whatever_the_number_of_calls() -> None:
    clock = CountingClock()
    policy = UserPolicy()
    pipeline = _standard_with(policy, clock, telemetry=False)
    assert policy.composed == 1
    for _ in range(20):
        await pipeline.call(_flaky(0))
    wrapped = pipeline.wrap(_flaky(0))
    for _ in range(5):
        await wrapped()
    assert policy.composed == 1
    assert len(policy.seen) == 25


async def test_a_nested_pipeline_composes_once_into_the_outer_chain() -> None:
    clock = CountingClock()
    policy = UserPolicy()
    retry = Retry(attempts=3, base_delay=0.01, budget=None)
    inner = Pipeline(retry, policy, clock=clock)  # type: ignore[arg-type]
    assert policy.composed == 1  # the inner pipeline's own chain
    outer = Pipeline(Timeout(10.0), inner, Timeout(1.0), clock=clock)  # type: ignore[arg-type]
    assert policy.composed == 2  # and once more inside the outer chain, never per call
    for _ in range(10):
        assert await outer.call(_flaky(1)) == "ok"
    assert policy.composed == 2
    # Both timeouts of the outer pipeline see through the nested one: the outer Timeout
    # delegates across it, so each attempt arms one timer.
    assert len(clock.armed) == 10 * 2


async def test_the_outer_deadline_still_fires_through_a_delegating_user_policy() -> None:
    clock = FakeClock()

    async def hang() -> None:
        await clock.sleep(60.0)

    pipeline = Pipeline(
        Timeout(2.0, name="total"),
        Retry(attempts=50, base_delay=0.0, max_delay=0.0),
        UserPolicy(),
        Timeout(1.5, name="attempt"),
        clock=clock,
    )
    with pytest.raises(TimeoutExceeded) as info:
        await pipeline.call(hang)
    assert clock.now() == pytest.approx(2.0)
    assert info.value.policy == "total"


async def test_a_policy_without_compose_runs_through_execute() -> None:
    class Plain:
        name = "plain"

        def __init__(self) -> None:
            self.calls = 0

        async def execute(self, call: Call, ctx: Context, /) -> Any:
            self.calls += 1
            return await call(ctx)

    plain = Plain()
    pipeline = Pipeline(plain, clock=FakeClock())
    assert isinstance(plain, Policy)
    assert not isinstance(plain, ComposablePolicy)
    for _ in range(3):
        assert await pipeline.call(_flaky(0)) == "ok"
    assert plain.calls == 3

"""Decorators: pipelines, policies and the standalone forms on functions, methods,
classmethods and staticmethods; state sharing; refusals at decoration; exactly-once calls."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

import resilient
from resilient import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    Pipeline,
    RateLimitedError,
    Retry,
    Timeout,
    TimeoutExceeded,
)
from resilient.testing import FakeClock


class Flaky(Exception):
    pass


def test_wrap_keeps_name_docstring_signature_and_wrapped() -> None:
    async def fetch(user_id: str, *, verbose: bool = False) -> int:
        """Fetch a user."""
        return 1

    for decorate in (
        Pipeline(Timeout(1.0)).wrap,
        Timeout(1.0),
        resilient.retry(attempts=2),
        resilient.circuit_breaker(),
        resilient.timeout(1.0),
        resilient.bulkhead(max_concurrent=2),
        resilient.rate_limit(rate=5.0),
    ):
        wrapped = decorate(fetch)
        assert wrapped.__name__ == "fetch"
        assert wrapped.__doc__ == "Fetch a user."
        assert wrapped.__wrapped__ is fetch  # type: ignore[attr-defined]
        assert inspect.signature(wrapped) == inspect.signature(fetch)
        assert inspect.iscoroutinefunction(wrapped)


async def test_methods_classmethods_and_staticmethods_in_either_order(clock: FakeClock) -> None:
    retry = resilient.retry(attempts=3, base_delay=0.1, budget=None, clock=clock)
    seen: list[Any] = []

    class Service:
        def __init__(self, name: str) -> None:
            self.name = name

        @retry
        async def method(self, x: int) -> str:
            seen.append(("method", self.name, x))
            return f"{self.name}:{x}"

        @retry
        @classmethod
        async def build(cls, name: str) -> Service:
            seen.append(("build", cls.__name__))
            return cls(name)

        @classmethod
        @retry
        async def build2(cls, name: str) -> Service:
            return cls(name)

        @retry
        @staticmethod
        async def helper(flag: bool) -> int:
            return int(flag)

        @staticmethod
        @retry
        async def helper2(flag: bool) -> int:
            return int(flag) + 1

    service = Service("a")
    assert await service.method(2) == "a:2"
    assert (await Service.build("b")).name == "b"
    assert (await service.build2("c")).name == "c"
    assert await Service.helper(True) == 1
    assert await service.helper2(True) == 2
    assert seen == [("method", "a", 2), ("build", "Service")]
    assert Service.__dict__["build"].__func__.__name__ == "build"


async def test_each_admitted_attempt_runs_the_function_exactly_once(clock: FakeClock) -> None:
    calls = 0

    @resilient.retry(attempts=4, base_delay=0.1, budget=None, clock=clock)
    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("transient: retried")
        return "ok"

    assert await flaky() == "ok"
    assert calls == 3


async def test_a_rejected_call_never_enters_the_function() -> None:
    entered = 0
    breaker = CircuitBreaker()
    breaker.force_open()

    @resilient.circuit_breaker(breaker)
    async def guarded() -> None:
        nonlocal entered
        entered += 1

    with pytest.raises(CircuitOpenError):
        await guarded()
    assert entered == 0  # and no "coroutine was never awaited" (warnings are errors here)


async def test_each_decorated_function_gets_its_own_breaker(clock: FakeClock) -> None:
    breaker = resilient.circuit_breaker(
        failure_rate=0.5, minimum_calls=2, window=60.0, open_for=30.0, max_waiting=0, clock=clock
    )

    @breaker
    async def failing() -> None:
        raise Flaky

    @breaker
    async def healthy() -> str:
        return "fine"

    for _ in range(2):
        with pytest.raises(Flaky):
            await failing()
    with pytest.raises(CircuitOpenError):
        await failing()
    assert await healthy() == "fine"  # its breaker is its own


async def test_a_breaker_instance_passed_in_is_shared(clock: FakeClock) -> None:
    shared = CircuitBreaker(
        failure_rate=0.5, minimum_calls=2, window=60.0, open_for=30.0, max_waiting=0
    )

    @resilient.circuit_breaker(shared, clock=clock)
    async def failing() -> None:
        raise Flaky

    @resilient.circuit_breaker(shared, clock=clock)
    async def healthy() -> str:
        return "fine"

    for _ in range(2):
        with pytest.raises(Flaky):
            await failing()
    with pytest.raises(CircuitOpenError):
        await healthy()


async def test_timeout_decorator_cancels_a_slow_call(clock: FakeClock) -> None:
    cancelled = False

    @resilient.timeout(1.0, clock=clock)
    async def slow() -> None:
        nonlocal cancelled
        try:
            await clock.sleep(5.0)
        except anyio.get_cancelled_exc_class():
            cancelled = True
            raise

    with pytest.raises(TimeoutExceeded):
        await slow()
    assert cancelled
    assert clock.now() == pytest.approx(1.0)


async def test_rate_limit_decorator_refuses_beyond_the_burst(clock: FakeClock) -> None:
    entered = 0

    @resilient.rate_limit(rate=1.0, burst=1, max_wait=0.0, clock=clock)
    async def paced() -> None:
        nonlocal entered
        entered += 1

    await paced()
    with pytest.raises(RateLimitedError) as info:
        await paced()
    assert entered == 1
    assert info.value.retry_after == pytest.approx(1.0)


async def test_bulkhead_decorator_refuses_a_second_concurrent_call() -> None:
    release = anyio.Event()
    entered = 0

    @resilient.bulkhead(max_concurrent=1, max_waiting=0)
    async def exclusive() -> None:
        nonlocal entered
        entered += 1
        await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(exclusive)
        while entered == 0:
            await anyio.sleep(0)
        with pytest.raises(BulkheadFullError):
            await exclusive()
        release.set()
    assert entered == 1


async def test_policy_instances_decorate_and_share_their_state() -> None:
    shared = Bulkhead(max_concurrent=1, max_waiting=0)
    release = anyio.Event()

    @shared
    async def first() -> None:
        await release.wait()

    @shared.wrap
    async def second() -> None:
        pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        while shared.snapshot().running == 0:
            await anyio.sleep(0)
        with pytest.raises(BulkheadFullError):
            await second()
        release.set()


def test_sync_functions_are_refused_at_decoration() -> None:
    def sync() -> int:
        return 1

    for decorate in (
        Pipeline().wrap,
        Retry(),
        resilient.retry(),
        resilient.circuit_breaker(),
        resilient.timeout(1.0),
        resilient.bulkhead(),
        resilient.rate_limit(),
    ):
        with pytest.raises(TypeError, match="async function"):
            decorate(sync)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="async function"):
            decorate(staticmethod(sync))  # type: ignore[arg-type]


def test_async_generators_are_refused_at_decoration() -> None:
    async def stream() -> AsyncIterator[int]:
        yield 1

    for decorate in (Pipeline().wrap, Timeout(1.0), resilient.retry()):
        with pytest.raises(TypeError, match="async generator"):
            decorate(stream)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="async generator"):
            decorate(classmethod(stream))  # type: ignore[arg-type]


def test_invalid_options_are_refused_at_decoration_naming_them() -> None:
    with pytest.raises(ConfigurationError) as info:
        resilient.retry(attempts=0)
    assert info.value.parameter == "Retry.attempts"
    with pytest.raises(ConfigurationError):
        resilient.timeout(-1.0)
    with pytest.raises(ConfigurationError):
        resilient.circuit_breaker(CircuitBreaker(), failure_rate=0.5)
    with pytest.raises(ConfigurationError):
        resilient.bulkhead(Retry())  # type: ignore[arg-type]


async def test_async_callable_objects_can_be_wrapped() -> None:
    class Handler:
        async def __call__(self, x: int) -> int:
            return x * 2

    wrapped = Pipeline(Timeout(1.0)).wrap(Handler())
    assert await wrapped(21) == 42


async def test_bare_decorators_work_like_tenacitys() -> None:
    """``@resilient.retry`` without parentheses decorates with the policy's defaults (as
    tenacity and stamina do); so do the breaker, bulkhead and rate-limit decorators."""
    calls = 0

    @resilient.retry
    async def flaky(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("transient")
        return x * 2

    async def plain(x: int) -> int:
        return x + 1

    # The bare form has no clock option: one real backoff of Retry's default (at most 0.1 s).
    assert await flaky(21) == 42
    assert calls == 2
    assert flaky.__name__ == "flaky"
    assert inspect.signature(flaky) == inspect.signature(plain)
    for bare in (resilient.circuit_breaker, resilient.bulkhead, resilient.rate_limit):
        assert await bare(plain)(1) == 2


async def test_bare_decorators_on_methods_classmethods_and_staticmethods() -> None:
    """Bare forms accept what the parenthesized forms accept, in either order."""

    class Service:
        @resilient.retry
        async def method(self, x: int) -> int:
            return x

        @resilient.retry
        @classmethod
        async def build(cls, x: int) -> int:
            return x + 1

        @resilient.circuit_breaker
        @staticmethod
        async def helper(x: int) -> int:
            return x + 2

    assert await Service().method(1) == 1
    assert await Service.build(1) == 2
    assert await Service.helper(1) == 3


def test_a_bare_decorator_still_refuses_a_sync_function() -> None:
    def sync() -> int:
        return 1

    with pytest.raises(TypeError, match="async function"):
        resilient.retry(sync)  # type: ignore[call-overload]


def test_a_bare_timeout_shows_the_fix() -> None:
    """``@resilient.timeout`` needs its seconds: the error says how to write it."""
    with pytest.raises(ConfigurationError) as info:

        @resilient.timeout  # type: ignore[arg-type]
        async def slow() -> None: ...

    assert info.value.parameter == "timeout.seconds"
    assert "@resilient.timeout(2.0)" in str(info.value)


def test_another_policy_passed_positionally_is_still_refused() -> None:
    """A wrong policy instance is not mistaken for a function to decorate."""
    with pytest.raises(ConfigurationError, match=r"expected a Bulkhead"):
        resilient.bulkhead(Retry())  # type: ignore[call-overload]

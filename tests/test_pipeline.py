"""Pipeline: order, composition once, calls, decoration, listeners and observers."""

from __future__ import annotations

import functools
import logging
from typing import Any

import pytest

import resilient
from resilient import Pipeline
from resilient.extend import Context
from resilient.testing import FakeClock


class Recorder:
    """A policy that records entry and exit around the rest of the chain."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.binds = 0

    def compose(
        self, inner: resilient.extend.Call, after: tuple[resilient.extend.Policy, ...]
    ) -> resilient.extend.Call:
        self.binds += 1
        return functools.partial(self.execute, inner)

    async def execute(self, call: resilient.extend.Call, ctx: Context, /) -> Any:
        self.log.append(f"enter {self.name}")
        try:
            return await call(ctx)
        finally:
            self.log.append(f"exit {self.name}")


async def test_first_policy_is_outermost() -> None:
    log: list[str] = []

    async def work() -> str:
        log.append("call")
        return "ok"

    pipeline = Pipeline(Recorder("A", log), Recorder("B", log), Recorder("C", log))
    assert await pipeline.call(work) == "ok"
    assert log == ["enter A", "enter B", "enter C", "call", "exit C", "exit B", "exit A"]


async def test_chain_is_composed_once_not_per_call() -> None:
    log: list[str] = []
    a, b = Recorder("A", log), Recorder("B", log)
    pipeline = Pipeline(a, b)

    async def work() -> None:
        return None

    for _ in range(5):
        await pipeline.call(work)
    assert (a.binds, b.binds) == (1, 1)


async def test_call_passes_positional_and_keyword_arguments() -> None:
    async def work(a: int, b: int, *, c: int) -> tuple[int, int, int]:
        return a, b, c

    assert await Pipeline(resilient.Timeout(5)).call(work, 1, 2, c=3) == (1, 2, 3)
    assert await Pipeline().call(work, 1, 2, c=3) == (1, 2, 3)


async def test_context_carries_operation_pipeline_and_attempt() -> None:
    seen: list[Context] = []

    class Peek:
        name = "peek"

        async def execute(self, call: resilient.extend.Call, ctx: Context, /) -> Any:
            seen.append(ctx)
            return await call(ctx)

    async def fetch_user() -> None:
        return None

    await Pipeline(Peek(), name="users").call(fetch_user)
    [ctx] = seen
    assert (ctx.pipeline, ctx.operation, ctx.attempt, ctx.key) == (
        "users",
        "test_context_carries_operation_pipeline_and_attempt.<locals>.fetch_user",
        1,
        None,
    )


async def test_each_call_gets_its_own_context() -> None:
    seen: list[Context] = []

    class Peek:
        name = "peek"

        async def execute(self, call: resilient.extend.Call, ctx: Context, /) -> Any:
            seen.append(ctx)
            return await call(ctx)

    async def work() -> None:
        return None

    pipeline = Pipeline(Peek())
    await pipeline.call(work)
    await pipeline.call(work)
    assert seen[0] is not seen[1]


async def test_wrap_keeps_metadata_and_runs_through_the_pipeline(clock: FakeClock) -> None:
    pipeline = Pipeline(resilient.Timeout(1.0), clock=clock)

    async def fetch(user_id: str) -> str:
        """Fetch a user."""
        await clock.sleep(5)
        return user_id

    wrapped = pipeline.wrap(fetch)
    assert wrapped.__name__ == "fetch"
    assert wrapped.__doc__ == "Fetch a user."
    assert wrapped.__wrapped__ is fetch  # type: ignore[attr-defined]
    with pytest.raises(resilient.TimeoutExceeded):
        await wrapped("42")


def test_wrap_refuses_a_sync_function() -> None:
    def sync() -> None:
        return None

    with pytest.raises(TypeError, match="async function"):
        Pipeline().wrap(sync)  # type: ignore[arg-type]


def test_wrap_refuses_an_async_generator() -> None:
    async def agen() -> Any:
        yield 1

    with pytest.raises(TypeError, match="async generator"):
        Pipeline().wrap(agen)


def test_non_policy_is_refused_with_its_position() -> None:
    with pytest.raises(resilient.ConfigurationError, match=r"Pipeline\.policies\[1\]"):
        Pipeline(resilient.Timeout(1), object())  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_bad_name_is_refused(bad: object) -> None:
    with pytest.raises(resilient.ConfigurationError, match=r"Pipeline\.name"):
        Pipeline(name=bad)  # type: ignore[arg-type]


def test_bad_clock_and_random_are_refused() -> None:
    with pytest.raises(resilient.ConfigurationError, match=r"Pipeline\.clock"):
        Pipeline(clock=object())  # type: ignore[arg-type]
    with pytest.raises(resilient.ConfigurationError, match=r"Pipeline\.random"):
        Pipeline(random=0.5)  # type: ignore[arg-type]
    with pytest.raises(resilient.ConfigurationError, match=r"Pipeline\.telemetry"):
        Pipeline(telemetry="yes")  # type: ignore[arg-type]


async def test_raising_listener_never_changes_the_outcome(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: resilient.events.Event) -> None:
        raise RuntimeError("listener bug")

    async def work() -> None:
        await clock.sleep(5)

    pipeline = Pipeline(resilient.Timeout(1.0), clock=clock, listeners=[broken])
    with (
        caplog.at_level(logging.ERROR, logger="resilient"),
        pytest.raises(resilient.TimeoutExceeded),
    ):
        await pipeline.call(work)
    assert "listener" in caplog.text


class Observer:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, object]] = []
        self.fail = fail

    def start(self, ctx: Context, /) -> None:
        self.calls.append(("start", ctx.operation))
        if self.fail:
            raise RuntimeError("start")

    def end(self, ctx: Context, error: BaseException | None, result: object, /) -> None:
        self.calls.append(("end", type(error).__name__ if error else None))
        if self.fail:
            raise RuntimeError("end")

    def event(self, ctx: Context, event: resilient.events.Event, /) -> None:
        self.calls.append(("event", type(event).__name__))
        if self.fail:
            raise RuntimeError("event")


async def test_observer_sees_start_events_and_end(clock: FakeClock) -> None:
    observer = Observer()

    async def work() -> None:
        await clock.sleep(5)

    pipeline = Pipeline(resilient.Timeout(1.0), clock=clock, telemetry=observer)
    with pytest.raises(resilient.TimeoutExceeded):
        await pipeline.call(work)
    assert observer.calls == [
        ("start", work.__qualname__),
        ("event", "TimeoutFired"),
        ("end", "TimeoutExceeded"),
    ]


async def test_observer_without_policies_still_observes() -> None:
    observer = Observer()

    async def work() -> int:
        return 7

    assert await Pipeline(telemetry=observer).call(work) == 7
    assert [c[0] for c in observer.calls] == ["start", "end"]


async def test_raising_observer_never_changes_the_outcome(caplog: pytest.LogCaptureFixture) -> None:
    async def work() -> int:
        return 7

    with caplog.at_level(logging.ERROR, logger="resilient"):
        assert await Pipeline(telemetry=Observer(fail=True)).call(work) == 7
    assert caplog.text.count("raised") >= 2


async def test_pipeline_nests_as_a_policy() -> None:
    log: list[str] = []
    inner = Pipeline(Recorder("B", log), Recorder("C", log))

    async def work() -> str:
        log.append("call")
        return "ok"

    assert await Pipeline(Recorder("A", log), inner).call(work) == "ok"
    assert log == ["enter A", "enter B", "enter C", "call", "exit C", "exit B", "exit A"]


async def test_context_factory_and_run_for_integrations() -> None:
    async def work(x: int) -> int:
        return x * 2

    pipeline = Pipeline(resilient.Timeout(1.0), name="api")
    ctx = pipeline.context(work, (21,), operation="GET /items/{id}", key="example.org")
    assert (ctx.operation, ctx.key) == ("GET /items/{id}", "example.org")
    assert await pipeline.run(ctx) == 42


def test_repr_lists_policies() -> None:
    assert (
        repr(Pipeline(resilient.Timeout(1), name="x"))
        == "Pipeline(Timeout(1, name='timeout'), name='x')"
    )
    nested = Pipeline(Pipeline(resilient.Timeout(2), name="in"), name="out")
    assert repr(nested) == "Pipeline(Pipeline(Timeout(2, name='timeout'), name='in'), name='out')"
    assert repr(Pipeline(name="empty")) == "Pipeline(name='empty')"

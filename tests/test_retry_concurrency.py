"""Retry under concurrency and cancellation (asyncio and trio), and its random source."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from typing import Any

import anyio
import pytest

from resilient import Pipeline, Retry
from resilient.events import AttemptEnded, RetryScheduled
from resilient.extend import Context
from resilient.testing import EventRecorder, FakeClock


class ParkingClock:
    """Virtual time that stands still; ``sleep`` parks until the caller is cancelled."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.sleeping = anyio.Event()

    def now(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.sleeping.set()
        await anyio.sleep_forever()

    def timeout_at(self, deadline: float) -> Any:
        raise AssertionError("no timeout in these tests")


class AttemptsByOperation:
    """An inner policy recording ``ctx.attempt`` per operation."""

    name = "recorder"

    def __init__(self) -> None:
        self.seen: dict[str, list[int]] = defaultdict(list)

    async def execute(self, call: Any, ctx: Context, /) -> Any:
        self.seen[ctx.operation].append(ctx.attempt)
        await anyio.lowlevel.checkpoint()  # let the other calls interleave
        return await call(ctx)


async def test_50_concurrent_calls_keep_their_own_attempts_and_delays(
    clock: FakeClock, events: EventRecorder
) -> None:
    recorder = AttemptsByOperation()
    retry = Retry(attempts=4, base_delay=0.01, max_delay=1.0, jitter="none", budget=None)
    p = Pipeline(retry, recorder, clock=clock, listeners=[events], telemetry=False)
    failures = {f"call-{i}": i % 4 for i in range(50)}
    results: dict[str, str] = {}

    async def one(operation: str) -> None:
        left = failures[operation]

        async def fn() -> str:
            nonlocal left
            await anyio.lowlevel.checkpoint()
            if left:
                left -= 1
                raise ConnectionError(operation)
            return operation

        results[operation] = await p.run(p.context(fn, operation=operation))

    async with anyio.create_task_group() as tg:
        for operation in failures:
            tg.start_soon(one, operation)

    assert results == {op: op for op in failures}
    for operation, failed in failures.items():
        assert recorder.seen[operation] == list(range(1, failed + 2))
        scheduled = [e for e in events.of_type(RetryScheduled) if e.operation == operation]
        assert [e.attempt for e in scheduled] == list(range(1, failed + 1))
        assert [e.delay for e in scheduled] == [0.01, 0.02, 0.04][:failed]
        ended = [e for e in events.of_type(AttemptEnded) if e.operation == operation]
        assert len(ended) == failed + 1


async def test_cancellation_during_an_attempt_is_not_retried(events: EventRecorder) -> None:
    clock = ParkingClock()
    started = anyio.Event()
    calls = 0
    outcome: list[str] = []

    async def hangs() -> None:
        nonlocal calls
        calls += 1
        started.set()
        await anyio.sleep_forever()

    p = Pipeline(Retry(), clock=clock, listeners=[events], telemetry=False)

    async def caller() -> None:
        try:
            await p.call(hangs)
            outcome.append("returned")
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await started.wait()
        tg.cancel_scope.cancel()

    assert outcome == ["cancelled"]
    assert calls == 1
    assert clock.sleeps == []
    assert events.of_type(AttemptEnded) == []  # a cancelled attempt has no verdict
    assert events.of_type(RetryScheduled) == []


async def test_cancellation_during_backoff_stops_the_retries() -> None:
    clock = ParkingClock()
    calls = 0
    outcome: list[str] = []

    async def fails() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError

    p = Pipeline(Retry(attempts=5), clock=clock, random=lambda: 0.5, telemetry=False)

    async def caller() -> None:
        try:
            await p.call(fails)
            outcome.append("returned")
        except ConnectionError:
            outcome.append("gave up")
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await clock.sleeping.wait()
        tg.cancel_scope.cancel()

    assert outcome == ["cancelled"]  # the cancellation, not the ConnectionError
    assert calls == 1
    assert clock.sleeps == [0.05]


async def test_cancellation_during_an_attempt_with_the_default_clock() -> None:
    """The real clock too: a scope cancelled during the attempt ends the call, no retry."""
    calls = 0

    async def hangs() -> None:
        nonlocal calls
        calls += 1
        await anyio.sleep_forever()

    p = Pipeline(Retry(), telemetry=False)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await p.call(hangs)
    assert scope.cancelled_caught
    assert calls == 1


async def test_independent_pipelines_do_not_share_a_delay_sequence() -> None:
    sequences = []
    for _ in range(2):
        clock = FakeClock()
        p = Pipeline(Retry(attempts=6, budget=None), clock=clock, telemetry=False)

        async def fails() -> None:
            raise ConnectionError

        with pytest.raises(ConnectionError):
            await p.call(fails)
        sequences.append(clock.sleeps)
    assert len(sequences[0]) == 5
    assert sequences[0] != sequences[1]


_FORK_CHECK = """
import os
from resilient._context import default_random
read_end, write_end = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(write_end, repr([default_random() for _ in range(8)]).encode())
    os._exit(0)
os.close(write_end)
parent = repr([default_random() for _ in range(8)])
with os.fdopen(read_end, "rb") as pipe:
    child = pipe.read().decode()
os.waitpid(pid, 0)
print(parent)
print(child)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_process_draws_a_different_random_sequence() -> None:
    # Forked from a fresh single-threaded interpreter, not from the test runner.
    out = subprocess.run(
        [sys.executable, "-c", _FORK_CHECK], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    parent, child = out
    assert parent.startswith("[")
    assert child.startswith("[")
    assert child != parent

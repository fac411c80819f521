"""Testing code that uses resilient: virtual time and recorded events, never a real sleep.

Run: python examples/testing.py

Each ``test_*`` function below is a pytest test as you would write it (with the anyio pytest
plugin and a ``clock`` fixture, see docs/testing.md). This script runs them itself: on asyncio
with ``FakeClock``, then on trio with trio's ``MockClock``, and prints how much virtual time
each covered in how much real time.
"""

from __future__ import annotations

import time

import anyio
import pytest
import trio.testing

import resilient
from resilient import CircuitOpenError, TimeoutExceeded
from resilient.events import CircuitWaitEnded, RetryScheduled
from resilient.extend import Clock, SystemClock
from resilient.testing import EventRecorder, FakeClock


# --8<-- [start:code]
class Inventory:
    """The dependency, faked: fails ``failures`` times, then answers after ``delay``."""

    def __init__(self, clock: Clock, failures: int = 0, delay: float = 0.0) -> None:
        self.clock = clock  # a fake waits on the test's clock, so its delays are virtual too
        self.failures = failures
        self.delay = delay
        self.calls = 0

    async def stock(self, sku: str) -> int:
        self.calls += 1
        await self.clock.sleep(self.delay)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("connection reset")
        return 7


def inventory_pipeline(clock: Clock, events: EventRecorder) -> resilient.Pipeline:
    """Built as the application builds it; a test passes its clock and a recorder."""
    return resilient.standard(
        "inventory",
        attempts=3,
        attempt_timeout=2.0,
        total_timeout=10.0,
        minimum_calls=3,
        clock=clock,
        listeners=[events],
        telemetry=False,  # a test needs no OpenTelemetry
    )


# --8<-- [end:code]
# --8<-- [start:tests]
async def test_two_failures_are_retried(clock: Clock) -> None:
    events = EventRecorder()
    pipeline = inventory_pipeline(clock, events)
    inventory = Inventory(clock, failures=2)

    assert await pipeline.call(inventory.stock, "sku-1") == 7
    assert inventory.calls == 3
    assert len(events.of_type(RetryScheduled)) == 2


async def test_a_slow_dependency_ends_at_the_total_timeout(clock: Clock) -> None:
    pipeline = inventory_pipeline(clock, EventRecorder())
    inventory = Inventory(clock, delay=3600.0)

    with pytest.raises(TimeoutExceeded) as raised:
        await pipeline.call(inventory.stock, "sku-1")
    # The attempt timeout (2 s) hedges rather than cuts: the slow attempt keeps running and
    # another starts beside it (on trio's MockClock, where sleeps overlap; FakeClock runs
    # sleeps one after another), until the total timeout ends the call.
    assert raised.value.policy == "total_timeout"
    assert 1 <= inventory.calls <= 3


async def test_with_the_cutting_attempt_timeout_each_attempt_is_cut(clock: Clock) -> None:
    pipeline = resilient.standard(
        "inventory",
        attempts=3,
        attempt_timeout=2.0,
        hedge_on_attempt_timeout=False,
        clock=clock,
        telemetry=False,
    )
    inventory = Inventory(clock, delay=3600.0)

    with pytest.raises(TimeoutExceeded) as raised:
        await pipeline.call(inventory.stock, "sku-1")
    assert raised.value.policy == "attempt_timeout"  # each attempt cut after 2 virtual seconds
    assert inventory.calls == 3


async def test_the_breaker_opens_then_closes_after_a_probe(clock: Clock) -> None:
    events = EventRecorder()
    pipeline = inventory_pipeline(clock, events)
    down = Inventory(clock, failures=1_000)
    with pytest.raises(ConnectionError):  # 3 attempts, 3 failures (minimum_calls=3): it opens
        await pipeline.call(down.stock, "sku-1")

    # The next call waits out the open circuit (up to 1 s) and goes as the probe 0.2 s
    # (probe_interval) later, virtually; the dependency is back, so the breaker closes.
    start = clock.now()
    assert await pipeline.call(Inventory(clock).stock, "sku-1") == 7
    assert clock.now() - start == pytest.approx(0.2)
    assert [e.outcome for e in events.of_type(CircuitWaitEnded)] == ["probe"]

    # While it stays down, a caller waits at most 1 s (max_wait), then fails fast.
    with pytest.raises(ConnectionError):  # 3 more failures in a row: open again
        await pipeline.call(down.stock, "sku-1")
    with pytest.raises((ConnectionError, CircuitOpenError)):
        await pipeline.call(down.stock, "sku-1")  # probes (and fails) every 0.2 s meanwhile


# --8<-- [end:tests]
TESTS = (
    test_two_failures_are_retried,
    test_a_slow_dependency_ends_at_the_total_timeout,
    test_with_the_cutting_attempt_timeout_each_attempt_is_cut,
    test_the_breaker_opens_then_closes_after_a_probe,
)


async def run_with_fake_clock() -> None:
    for test in TESTS:
        clock = FakeClock()
        started = time.perf_counter()
        await test(clock)
        real = time.perf_counter() - started
        print(
            f"asyncio + FakeClock  {test.__name__:<52} {clock.now():6.2f} s virtual, "
            f"{real * 1000:5.1f} ms real"
        )


async def run_on_trio() -> None:
    for test in TESTS:
        started_virtual = trio.current_time()
        started = time.perf_counter()
        await test(SystemClock())  # trio's clock: MockClock makes it virtual
        real = time.perf_counter() - started
        print(
            f"trio + MockClock     {test.__name__:<52} "
            f"{trio.current_time() - started_virtual:6.2f} s virtual, {real * 1000:5.1f} ms real"
        )


if __name__ == "__main__":
    anyio.run(run_with_fake_clock)
    anyio.run(
        run_on_trio,
        backend="trio",
        backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)},
    )

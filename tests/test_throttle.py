"""Throttle: client-side adaptive throttling (SRE), with a real pipeline and httpx responses."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Awaitable, Callable

import anyio
import httpx
import pytest

from _limits_helpers import until
from resilient import (
    Bulkhead,
    BulkheadFullError,
    ConfigurationError,
    Pipeline,
    RateLimitedError,
    Retry,
    Throttle,
)
from resilient.events import CallRejected
from resilient.overload import is_overload
from resilient.testing import EventRecorder, FakeClock


class Upstream:
    """Answers 503 to a share of the requests it receives; counts what it received."""

    def __init__(self, reject: float, seed: int = 7) -> None:
        self.reject = reject
        self.received = 0
        self.accepted = 0
        self.rng = random.Random(seed)

    async def __call__(self) -> httpx.Response:
        self.received += 1
        if self.rng.random() < self.reject:
            return httpx.Response(503)
        self.accepted += 1
        return httpx.Response(200)


def pipeline_for(throttle: Throttle, clock: FakeClock, seed: int = 1) -> Pipeline:
    return Pipeline(throttle, clock=clock, random=random.Random(seed).random, telemetry=False)


async def drive(
    pipeline: Pipeline,
    upstream: Callable[[], Awaitable[httpx.Response]],
    clock: FakeClock,
    calls: int,
    every: float,
) -> int:
    """``calls`` requests ``every`` seconds apart; returns how many were refused locally."""
    refused = 0
    for _ in range(calls):
        try:
            await pipeline.call(upstream)
        except RateLimitedError:
            refused += 1
        clock.advance(every)
    return refused


async def test_against_an_upstream_rejecting_half_it_sends_about_k_times_the_accepts(
    clock: FakeClock,
) -> None:
    throttle = Throttle(k=2.0, window=60.0, max_rejection=1.0)
    upstream = Upstream(0.5)
    await drive(pipeline_for(throttle, clock), upstream, clock, 6000, 0.05)
    assert upstream.received <= 2.0 * upstream.accepted * 1.1 + 10


class Capacity:
    """Accepts at most ``per_second`` requests each second (whole seconds), 429 beyond."""

    def __init__(self, clock: FakeClock, per_second: int) -> None:
        self.clock = clock
        self.per_second = per_second
        self.second = -1
        self.used = 0
        self.received = 0
        self.accepted = 0

    async def __call__(self) -> httpx.Response:
        self.received += 1
        second = int(self.clock.now())
        if second != self.second:
            self.second, self.used = second, 0
        if self.used >= self.per_second:
            return httpx.Response(429)
        self.used += 1
        self.accepted += 1
        return httpx.Response(200)


@pytest.mark.parametrize("k", [2.0, 1.5])
async def test_against_a_saturated_upstream_it_sends_about_k_times_its_capacity(
    clock: FakeClock, k: float
) -> None:
    """Offered 20/s to an upstream taking 5/s: without throttling it would receive 20/s."""
    throttle = Throttle(k=k, window=30.0, max_rejection=1.0)
    upstream = Capacity(clock, per_second=5)
    pipeline = pipeline_for(throttle, clock)
    await drive(pipeline, upstream, clock, 1200, 0.05)  # one minute to settle
    upstream.received = upstream.accepted = 0
    refused = await drive(pipeline, upstream, clock, 2400, 0.05)  # two minutes measured
    assert upstream.accepted >= 0.9 * 5 * 120  # the upstream stays busy
    assert upstream.received <= k * upstream.accepted * 1.15
    assert refused >= 2400 - k * upstream.accepted * 1.15


async def test_nothing_is_refused_while_the_upstream_accepts(clock: FakeClock) -> None:
    throttle = Throttle()
    upstream = Upstream(0.0)
    assert await drive(pipeline_for(throttle, clock), upstream, clock, 2000, 0.01) == 0
    snapshot = throttle.snapshot(clock.now())
    assert snapshot.rejection_probability == 0.0
    assert snapshot.requests == snapshot.accepts > 0


async def test_recovers_within_one_window_after_the_upstream_recovers(clock: FakeClock) -> None:
    window = 30.0
    throttle = Throttle(k=2.0, window=window, buckets=10)
    pipeline = pipeline_for(throttle, clock)
    upstream = Upstream(1.0)
    await drive(pipeline, upstream, clock, 1200, 0.05)  # 60 s of an upstream shedding all
    assert throttle.rejection_probability(clock.now()) == pytest.approx(0.9)  # max_rejection
    upstream.reject = 0.0
    recovered_at = clock.now()
    refused_late = 0
    for _ in range(int(2 * window / 0.05)):
        try:
            await pipeline.call(upstream)
        except RateLimitedError:
            if clock.now() - recovered_at >= window:
                refused_late += 1
        clock.advance(0.05)
    assert refused_late == 0
    assert throttle.rejection_probability(clock.now()) == 0.0


async def test_memory_is_bounded_and_old_counts_leave_the_window(clock: FakeClock) -> None:
    throttle = Throttle(window=10.0, buckets=5)
    for i in range(100_000):
        throttle.record(accepted=i % 3 == 0, now=i * 0.001)
    assert len(throttle._requests) == len(throttle._accepts) == 5
    now = 100.0
    snapshot = throttle.snapshot(now - 0.001)
    assert snapshot.requests <= 10_000  # only the last 10 s (10 000 records)
    assert throttle.snapshot(now + 10.0).requests == 0


async def test_refusals_inside_and_cancellations_are_not_counted(clock: FakeClock) -> None:
    throttle = Throttle()
    bulkhead = Bulkhead(max_concurrent=1, max_waiting=0)
    pipeline = Pipeline(throttle, bulkhead, clock=clock, telemetry=False)
    gate = anyio.Event()

    async def held() -> int:
        await gate.wait()
        return 200

    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.call, held)
        await until(lambda: bulkhead.snapshot().running == 1)
        with pytest.raises(BulkheadFullError):
            await pipeline.call(held)  # refused inside: never reached the upstream
        tg.cancel_scope.cancel()  # the held call is cancelled: no outcome to count
    snapshot = throttle.snapshot(clock.now())
    assert (snapshot.requests, snapshot.accepts) == (0, 0)


async def test_a_refusal_is_a_rate_limited_error_reported_as_throttled(clock: FakeClock) -> None:
    recorder = EventRecorder()
    throttle = Throttle(name="upstream_throttle", max_rejection=1.0)
    for _ in range(50):
        throttle.record(accepted=False, now=0.0)
    pipeline = Pipeline(
        throttle, clock=clock, listeners=[recorder], random=lambda: 0.0, telemetry=False
    )
    upstream = Upstream(0.0)
    with pytest.raises(RateLimitedError, match="refused locally") as info:
        await pipeline.call(upstream)
    assert info.value.policy == "upstream_throttle"
    assert upstream.received == 0
    (event,) = recorder.of_type(CallRejected)
    assert event.reason == "throttled"


async def test_a_retry_does_not_retry_a_local_refusal(clock: FakeClock) -> None:
    throttle = Throttle(max_rejection=1.0)
    for _ in range(50):
        throttle.record(accepted=False, now=0.0)
    upstream = Upstream(0.0)
    pipeline = Pipeline(
        Retry(attempts=3, budget=None),
        throttle,
        clock=clock,
        random=lambda: 0.0,  # p = 50/51: refused whatever the draw above 0.98
        telemetry=False,
    )
    with pytest.raises(RateLimitedError):
        await pipeline.call(upstream)
    assert upstream.received == 0
    assert clock.slept == 0.0


def test_the_default_overload_test_reads_statuses() -> None:
    from resilient import Outcome

    request = httpx.Request("GET", "http://upstream.test/")
    assert is_overload(Outcome(result=httpx.Response(429)))
    assert is_overload(Outcome(result=httpx.Response(503)))
    assert not is_overload(Outcome(result=httpx.Response(500)))
    error = httpx.HTTPStatusError("shed", request=request, response=httpx.Response(503))
    assert is_overload(Outcome(exception=error))
    assert not is_overload(Outcome(exception=ConnectionError()))
    assert not is_overload(Outcome(result="ok"))


async def test_a_custom_overload_test(clock: FakeClock) -> None:
    throttle = Throttle(overload=lambda o: o.result == "busy", max_rejection=1.0)
    pipeline = pipeline_for(throttle, clock)

    async def busy() -> str:
        return "busy"

    for _ in range(20):
        with contextlib.suppress(RateLimitedError):  # refused locally: still a request
            await pipeline.call(busy)
    snapshot = throttle.snapshot(clock.now())
    assert (snapshot.requests, snapshot.accepts) == (20, 0)
    assert snapshot.rejection_probability == pytest.approx(20 / 21)


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"k": 1.0}, "Throttle.k"),
        ({"window": 0}, "Throttle.window"),
        ({"buckets": 0}, "Throttle.buckets"),
        ({"max_rejection": 0.0}, "Throttle.max_rejection"),
        ({"overload": 3}, "Throttle.overload"),
        ({"clock": object()}, "Throttle.clock"),
    ],
)
def test_bad_options_name_the_parameter(kwargs: dict[str, object], parameter: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Throttle(**kwargs)  # type: ignore[arg-type]
    assert info.value.parameter == parameter

"""Telemetry with the library's real policies (Retry, RetryBudget, CircuitBreaker, Timeout)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import anyio
import anyio.lowlevel
import pytest
from opentelemetry.trace import StatusCode

from resilient import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    Pipeline,
    RateLimitedError,
    RateLimiter,
    Retry,
    RetryBudget,
    Timeout,
    TimeoutExceeded,
    standard,
)
from resilient.testing import FakeClock
from test_telemetry_support import Otel, attrs, event_dicts

CALL = "resilient.call.duration"


@pytest.fixture
def otel() -> Otel:
    return Otel.create()


async def charge(clock: FakeClock, failures: list[BaseException], seconds: float = 0.1) -> str:
    await clock.sleep(seconds)
    if failures:
        raise failures.pop(0)
    return "ok"


async def test_retry_then_success(otel: Otel, clock: FakeClock) -> None:
    """Real Retry: attempt events numbered 1, 2; one retry with its delay and cause."""
    retry = Retry(attempts=3, base_delay=0.2, jitter="none", budget=None)
    pipeline = Pipeline(retry, name="payments", clock=clock, telemetry=otel.telemetry)
    assert await pipeline.call(charge, clock, [ConnectionError("reset")]) == "ok"
    span = otel.span("payments charge")
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes is not None
    assert span.attributes["resilient.attempts"] == 2
    assert event_dicts(span) == [
        (
            "resilient.attempt",
            {
                "resilient.policy": "retry",
                "resilient.attempt": 1,
                "resilient.attempt.kind": "original",
                "resilient.verdict": "transient",
                "resilient.duration": pytest.approx(0.1),
                "error.type": "ConnectionError",
            },
        ),
        (
            "resilient.retry",
            {
                "resilient.policy": "retry",
                "resilient.attempt": 1,
                "resilient.retry.delay": pytest.approx(0.2),
                "resilient.verdict": "transient",
                "error.type": "ConnectionError",
            },
        ),
        (
            "resilient.attempt",
            {
                "resilient.policy": "retry",
                "resilient.attempt": 2,
                "resilient.attempt.kind": "retry",
                "resilient.verdict": "success",
                "resilient.duration": pytest.approx(0.1),
            },
        ),
    ]
    assert otel.values("resilient.retries") == {
        attrs(
            pipeline="payments", operation="charge", policy="retry", error_type="ConnectionError"
        ): 1
    }
    assert otel.values(CALL) == {
        attrs(pipeline="payments", operation="charge", verdict="success"): (1, pytest.approx(0.4))
    }
    assert sum(v[0] for v in otel.values("resilient.attempt.duration").values()) == 2


async def test_retry_exhausted(otel: Otel, clock: FakeClock) -> None:
    """Real Retry running out of attempts: gave_up (reason attempts), status ERROR."""
    retry = Retry(attempts=3, base_delay=0.0, budget=None)
    pipeline = Pipeline(retry, name="payments", clock=clock, telemetry=otel.telemetry)
    with pytest.raises(ConnectionError):
        await pipeline.call(charge, clock, [ConnectionError("a"), ConnectionError("b")] * 2)
    span = otel.span("payments charge")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["resilient.attempts"] == 3
    assert span.attributes["error.type"] == "ConnectionError"
    assert event_dicts(span)[-1] == (
        "resilient.retry.gave_up",
        {
            "resilient.policy": "retry",
            "resilient.attempts": 3,
            "resilient.reason": "attempts",
            "resilient.verdict": "transient",
            "error.type": "ConnectionError",
        },
    )
    assert otel.values("resilient.retry.gave_up") == {
        attrs(
            pipeline="payments",
            operation="charge",
            policy="retry",
            reason="attempts",
            error_type="ConnectionError",
        ): 1
    }
    assert sum(otel.values("resilient.retries").values()) == 2


async def test_retry_budget_refusal(otel: Otel, clock: FakeClock) -> None:
    """An empty RetryBudget refuses the retry: budget event, refusal counter, gave_up budget."""
    retry = Retry(attempts=3, base_delay=0.0, budget=RetryBudget(ratio=0.0, reserve=0))
    pipeline = Pipeline(retry, name="payments", clock=clock, telemetry=otel.telemetry)
    with pytest.raises(ConnectionError):
        await pipeline.call(charge, clock, [ConnectionError("a")])
    span = otel.span("payments charge")
    names = [name for name, _ in event_dicts(span)]
    assert names == [
        "resilient.attempt",
        "resilient.retry.budget_refused",
        "resilient.retry.gave_up",
    ]
    assert otel.values("resilient.retry.budget.refusals") == {
        attrs(pipeline="payments", operation="charge", policy="retry"): 1
    }
    assert [dict(k)["resilient.reason"] for k in otel.values("resilient.retry.gave_up")] == [
        "budget"
    ]


async def test_attempt_timeouts_inside_retry(otel: Otel, clock: FakeClock) -> None:
    """Per-attempt Timeout under Retry: a timeout event per attempt, one error.type spelling."""
    pipeline = Pipeline(
        Retry(attempts=2, base_delay=0.0, budget=None),
        Timeout(1.0, name="attempt_timeout"),
        name="search",
        clock=clock,
        telemetry=otel.telemetry,
    )
    with pytest.raises(TimeoutExceeded):
        await pipeline.call(charge, clock, [], 5.0)
    span = otel.span("search charge")
    timeouts = [a for name, a in event_dicts(span) if name == "resilient.timeout"]
    assert timeouts == [{"resilient.policy": "attempt_timeout", "resilient.timeout": 1.0}] * 2
    attempt_types = {
        a["error.type"] for name, a in event_dicts(span) if name == "resilient.attempt"
    }
    assert attempt_types == {"resilient.TimeoutExceeded"}
    assert span.attributes is not None
    assert span.attributes["error.type"] == "resilient.TimeoutExceeded"
    assert otel.values("resilient.timeouts") == {
        attrs(pipeline="search", operation="charge", policy="attempt_timeout"): 2
    }


async def test_breaker_opens_rejects_and_reports_its_state(otel: Otel, clock: FakeClock) -> None:
    """Real CircuitBreaker: the transition, the rejection (not an error) and the state gauge."""
    breaker = CircuitBreaker(
        minimum_calls=2, failure_rate=0.5, open_for=5.0, max_waiting=0, name="breaker"
    )
    pipeline = Pipeline(breaker, name="payments", clock=clock, telemetry=otel.telemetry)

    def states() -> dict[str, int]:
        return {
            dict(k)["resilient.circuit.state"]: v
            for k, v in otel.values("resilient.circuit.state").items()
        }

    assert states() == {"closed": 1, "open": 0, "half_open": 0}
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await pipeline.call(charge, clock, [ConnectionError("down")])
    with pytest.raises(CircuitOpenError):
        await pipeline.call(charge, clock, [])
    tripping, rejected = otel.spans("payments charge")[1:]
    assert (
        "resilient.circuit.state_change",
        {
            "resilient.policy": "breaker",
            "resilient.circuit.state": "open",
            "resilient.circuit.previous_state": "closed",
        },
    ) in event_dicts(tripping)
    assert rejected.status.status_code is StatusCode.UNSET
    assert rejected.attributes is not None
    assert rejected.attributes["resilient.verdict"] == "rejected"
    assert rejected.attributes["error.type"] == "resilient.CircuitOpenError"
    ((name, event),) = event_dicts(rejected)
    assert name == "resilient.rejected"
    assert event["resilient.reason"] == "open"
    assert event["error.type"] == "resilient.CircuitOpenError"
    assert event["resilient.retry_after"] > 0
    assert otel.values("resilient.circuit.transitions") == {
        attrs(pipeline="payments", policy="breaker", state="open", previous_state="closed"): 1
    }
    assert otel.values("resilient.rejections") == {
        attrs(
            pipeline="payments",
            operation="charge",
            policy="breaker",
            reason="open",
            error_type="resilient.CircuitOpenError",
        ): 1
    }
    assert states() == {"closed": 0, "open": 1, "half_open": 0}


async def test_a_wait_for_an_open_breaker_is_a_span_event_and_a_wait_duration(
    otel: Otel, clock: FakeClock
) -> None:
    """A caller that waits out an open breaker: both ends of the wait on its span, the time
    in the wait histogram (admitted: it went as the probe)."""
    breaker = CircuitBreaker(minimum_calls=1, failure_rate=0.5, name="breaker")
    pipeline = Pipeline(breaker, name="payments", clock=clock, telemetry=otel.telemetry)
    with pytest.raises(ConnectionError):
        await pipeline.call(charge, clock, [ConnectionError("down")])
    assert await pipeline.call(charge, clock, []) == "ok"  # waits 0.2 s, probes, closes
    waited = otel.spans("payments charge")[-1]
    events = event_dicts(waited)
    assert [name for name, _ in events] == [
        "resilient.circuit.wait.started",
        "resilient.circuit.state_change",
        "resilient.circuit.wait",
        "resilient.circuit.state_change",
    ]
    started, ended = events[0][1], events[2][1]
    assert started["resilient.policy"] == "breaker"
    assert started["resilient.circuit.waiting"] == 1
    assert ended["resilient.circuit.wait.outcome"] == "probe"
    assert ended["resilient.waited"] == pytest.approx(0.2)
    assert ended["resilient.admitted"] is True
    assert waited.status.status_code is StatusCode.UNSET
    (key,) = otel.values("resilient.wait.duration")
    assert dict(key)["resilient.policy"] == "breaker"
    assert dict(key)["resilient.admitted"] is True


async def test_keyed_breaker_gauge_counts_circuits_per_state(otel: Otel, clock: FakeClock) -> None:
    """A per-key breaker: the gauge counts keys in each state; keys never become attributes."""
    breaker = CircuitBreaker(minimum_calls=1, failure_rate=0.5, name="per_host")
    pipeline = Pipeline(breaker, name="http", clock=clock, telemetry=otel.telemetry)
    for host, failures in (("a.example", [ConnectionError("x")]), ("b.example", [])):
        ctx = pipeline.context(charge, (clock, failures), key=host)
        with pytest.raises(ConnectionError) if failures else contextlib.nullcontext():
            await pipeline.run(ctx)
    values = otel.values("resilient.circuit.state")
    assert {dict(k)["resilient.circuit.state"]: v for k, v in values.items()} == {
        "closed": 1,
        "open": 1,
        "half_open": 0,
    }
    assert not any("example" in str(v) for k in values for _, v in k)


async def test_full_bulkhead_rejects_and_the_gauges_show_running_and_waiting(
    otel: Otel, clock: FakeClock
) -> None:
    """Real Bulkhead: running/waiting gauges while calls hold and queue; a full one rejects."""
    bulkhead = Bulkhead(max_concurrent=1, max_waiting=1, max_wait=math.inf, name="pool")
    pipeline = Pipeline(bulkhead, name="db", clock=clock, telemetry=otel.telemetry)
    release = anyio.Event()

    async def query() -> str:
        await release.wait()
        return "rows"

    def gauge(name: str) -> dict[frozenset[tuple[str, object]], object]:
        return otel.values(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.call, query)
        await wait_until(lambda: bulkhead.snapshot().running == 1)
        tg.start_soon(pipeline.call, query)
        await wait_until(lambda: bulkhead.snapshot().waiting == 1)
        assert gauge("resilient.bulkhead.running") == {attrs(pipeline="db", policy="pool"): 1}
        assert gauge("resilient.bulkhead.waiting") == {attrs(pipeline="db", policy="pool"): 1}
        with pytest.raises(BulkheadFullError):
            await pipeline.call(query)
        release.set()
    assert gauge("resilient.bulkhead.running") == {attrs(pipeline="db", policy="pool"): 0}
    assert otel.values("resilient.rejections") == {
        attrs(
            pipeline="db",
            operation="test_full_bulkhead_rejects_and_the_gauges_show_running_and_waiting."
            "<locals>.query",
            policy="pool",
            reason="full",
            error_type="resilient.BulkheadFullError",
        ): 1
    }
    waits = otel.values("resilient.wait.duration")
    assert [dict(k)["resilient.admitted"] for k in waits] == [True]
    rejected = [
        s
        for s in otel.spans()
        if s.attributes and s.attributes.get("resilient.verdict") == "rejected"
    ]
    assert len(rejected) == 1
    assert rejected[0].status.status_code is StatusCode.UNSET


async def test_rate_limited_calls_and_the_tokens_gauge(otel: Otel, clock: FakeClock) -> None:
    """Real RateLimiter: tokens gauge, a wait recorded when admitted late, then a rejection."""
    limiter = RateLimiter(rate=1.0, burst=2, max_wait=1.0, name="quota")
    pipeline = Pipeline(limiter, name="api", clock=clock, telemetry=otel.telemetry)
    assert otel.values("resilient.ratelimiter.tokens") == {
        attrs(pipeline="api", policy="quota"): 2.0
    }
    assert await pipeline.call(charge, clock, [], 0.0) == "ok"
    assert await pipeline.call(charge, clock, [], 0.0) == "ok"
    assert otel.values("resilient.ratelimiter.tokens") == {
        attrs(pipeline="api", policy="quota"): 0.0
    }
    assert await pipeline.call(charge, clock, [], 0.0) == "ok"  # waits 1 s for a token
    assert otel.values("resilient.wait.duration") == {
        attrs(pipeline="api", operation="charge", policy="quota", admitted=True): (1, 1.0)
    }
    limiter_no_wait = RateLimiter(rate=1.0, burst=1, max_wait=0.0, name="strict")
    strict = Pipeline(limiter_no_wait, name="api2", clock=clock, telemetry=otel.telemetry)
    assert await strict.call(charge, clock, [], 0.0) == "ok"
    with pytest.raises(RateLimitedError) as caught:
        await strict.call(charge, clock, [], 0.0)
    assert otel.values("resilient.rejections") == {
        attrs(
            pipeline="api2",
            operation="charge",
            policy="strict",
            reason=caught.value.args and _reason(otel),
            error_type="resilient.RateLimitedError",
        ): 1
    }
    span = otel.spans("api2 charge")[-1]
    ((name, event),) = event_dicts(span)
    assert name == "resilient.rejected"
    assert event["resilient.retry_after"] == pytest.approx(1.0)


def _reason(otel: Otel) -> str:
    (key,) = otel.values("resilient.rejections")
    return str(dict(key)["resilient.reason"])


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Let other tasks run until ``predicate()`` holds (no time passes)."""
    for _ in range(1000):
        if predicate():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("condition never held")


async def test_standard_pipeline_reports_through_every_policy(otel: Otel, clock: FakeClock) -> None:
    """resilient.standard(): one span per call; a retried failure shows attempt and retry."""
    pipeline = standard(name="payments", clock=clock, telemetry=otel.telemetry)
    assert await pipeline.call(charge, clock, [ConnectionError("reset")]) == "ok"
    span = otel.span("payments charge")
    names = [name for name, _ in event_dicts(span)]
    assert names.count("resilient.attempt") == 2
    assert names.count("resilient.retry") == 1
    assert span.status.status_code is StatusCode.UNSET

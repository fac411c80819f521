"""Telemetry: spans, span events, statuses and metrics, with the real OpenTelemetry SDK."""

from __future__ import annotations

import contextlib
import gc
import logging
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode

from resilient import (
    BulkheadFullError,
    CircuitOpenError,
    Classifier,
    ConfigurationError,
    Pipeline,
    RateLimitedError,
    Telemetry,
    Timeout,
    TimeoutExceeded,
    Verdict,
    on_exception,
    on_result,
)
from resilient.telemetry import METRICS
from resilient.testing import EventRecorder, FakeClock
from test_telemetry_support import (
    FakeRetry,
    Otel,
    Probe,
    Refuse,
    Snapshot,
    Stateful,
    attrs,
    event_dicts,
)

CALL = "resilient.call.duration"
SECRET = "user=alice&token=s3cr3t"
T = TypeVar("T")


@pytest.fixture
def otel() -> Otel:
    return Otel.create()


async def fetch_user(user_id: str, clock: FakeClock | None = None) -> str:
    if clock is not None:
        await clock.sleep(0.25)
    return f"user {user_id}"


async def charge(body: Callable[[], Awaitable[T]]) -> T:
    """An operation named "charge" running ``body`` (a static operation name for asserts)."""
    return await body()


async def lookup(body: Callable[[], Awaitable[T]]) -> T:
    return await body()


async def get(body: Callable[[], Awaitable[T]]) -> T:
    return await body()


async def slow(body: Callable[[], Awaitable[T]]) -> T:
    return await body()


async def work(body: Callable[[], Awaitable[T]]) -> T:
    return await body()


async def query(body: Callable[[], Awaitable[T]]) -> T:
    return await body()


# -- spans ----------------------------------------------------------------------------------


async def test_success_span_is_a_child_of_the_callers_span(otel: Otel, clock: FakeClock) -> None:
    """One INTERNAL span per call, named after pipeline and operation, in the caller's trace."""
    pipeline = Pipeline(name="payments", clock=clock, telemetry=otel.telemetry)
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("handler") as parent:
        assert await pipeline.call(fetch_user, "u1", clock) == "user u1"
        assert trace.get_current_span() is parent  # the caller's context is restored
    span = otel.span("payments fetch_user")
    assert span.kind is SpanKind.INTERNAL
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "resilient.pipeline": "payments",
        "resilient.operation": "fetch_user",
        "resilient.verdict": "success",
        "resilient.attempts": 1,
    }
    assert otel.values(CALL) == {
        attrs(pipeline="payments", operation="fetch_user", verdict="success"): (1, 0.25)
    }


async def test_the_callees_spans_nest_under_the_pipeline_span(otel: Otel) -> None:
    """The pipeline span is current inside the call and published in ctx.span."""
    probe = Probe()
    pipeline = Pipeline(probe, name="db", telemetry=otel.telemetry)
    tracer = otel.tracer_provider.get_tracer("app")
    seen: list[Any] = []

    async def query_body() -> None:
        seen.append(trace.get_current_span())
        with tracer.start_as_current_span("SELECT"):
            pass

    await pipeline.call(query, query_body)
    outer = otel.span("db query")
    inner = otel.span("SELECT")
    assert inner.parent is not None
    assert inner.parent.span_id == outer.context.span_id
    assert seen[0].get_span_context().span_id == outer.context.span_id
    assert probe.spans[0] is seen[0]
    assert probe.listening == [True]


async def test_client_error_is_not_a_span_error(otel: Otel) -> None:
    """A CLIENT_ERROR verdict keeps status UNSET but names the error type."""
    pipeline = Pipeline(
        name="users",
        classify=[on_exception(KeyError, verdict=Verdict.CLIENT_ERROR)],
        telemetry=otel.telemetry,
    )

    async def lookup_body() -> None:
        raise KeyError(SECRET)

    with pytest.raises(KeyError):
        await pipeline.call(lookup, lookup_body)
    span = otel.span("users lookup")
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes is not None
    assert span.attributes["resilient.verdict"] == "client_error"
    assert span.attributes["error.type"] == "KeyError"
    assert list(otel.values(CALL)) == [
        attrs(pipeline="users", operation="lookup", verdict="client_error", error_type="KeyError")
    ]


async def test_failure_is_an_error_without_exception_text(otel: Otel) -> None:
    """An unclassified exception: status ERROR, error.type, and never the exception's message."""
    pipeline = Pipeline(name="payments", telemetry=otel.telemetry)

    async def charge_body() -> None:
        raise RuntimeError(f"GET https://api.example/charge?{SECRET}")

    with pytest.raises(RuntimeError):
        await pipeline.call(charge, charge_body)
    span = otel.span("payments charge")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["resilient.verdict"] == "failure"
    assert span.attributes["error.type"] == "RuntimeError"
    assert SECRET not in repr(span.to_json())
    assert list(otel.values(CALL)) == [
        attrs(pipeline="payments", operation="charge", verdict="failure", error_type="RuntimeError")
    ]


async def test_failure_result_is_an_error(otel: Otel) -> None:
    """A returned value classified TRANSIENT (a 503 response) is a failure of the call."""
    pipeline = Pipeline(
        name="http",
        classify=[on_result(lambda r: r == 503, verdict=Verdict.TRANSIENT)],
        telemetry=otel.telemetry,
    )

    async def get_body() -> int:
        return 503

    assert await pipeline.call(get, get_body) == 503
    span = otel.span("http get")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["resilient.verdict"] == "transient"
    assert "error.type" not in span.attributes
    assert list(otel.values(CALL)) == [attrs(pipeline="http", operation="get", verdict="transient")]


async def test_timeout_records_an_event_a_counter_and_an_error(
    otel: Otel, clock: FakeClock
) -> None:
    """A Timeout firing: span event with policy and seconds, resilient.timeouts, ERROR."""
    pipeline = Pipeline(
        Timeout(1.0, name="deadline"), name="search", clock=clock, telemetry=otel.telemetry
    )

    async def slow_body() -> None:
        await clock.sleep(5.0)

    with pytest.raises(TimeoutExceeded):
        await pipeline.call(slow, slow_body)
    span = otel.span("search slow")
    assert span.status.status_code is StatusCode.ERROR
    assert event_dicts(span) == [
        ("resilient.timeout", {"resilient.policy": "deadline", "resilient.timeout": 1.0})
    ]
    assert otel.values("resilient.timeouts") == {
        attrs(pipeline="search", operation="slow", policy="deadline"): 1
    }
    assert otel.values(CALL) == {
        attrs(
            pipeline="search",
            operation="slow",
            verdict="transient",
            error_type="resilient.TimeoutExceeded",
        ): (1, 1.0)
    }


async def test_caller_cancellation_ends_the_span_without_error(otel: Otel) -> None:
    """A cancelled call ends its span (status UNSET, verdict cancelled) and restores context."""
    pipeline = Pipeline(Timeout(30.0), name="jobs", telemetry=otel.telemetry)
    before = trace.get_current_span()
    with anyio.CancelScope() as scope:

        async def work_body() -> None:
            scope.cancel()
            await anyio.sleep_forever()

        await pipeline.call(work, work_body)
    assert scope.cancelled_caught
    assert trace.get_current_span() is before
    span = otel.span("jobs work")
    assert span.end_time is not None
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes is not None
    assert span.attributes["resilient.verdict"] == "cancelled"
    assert "error.type" not in span.attributes
    assert list(otel.values(CALL)) == [
        attrs(pipeline="jobs", operation="work", verdict="cancelled")
    ]
    assert otel.values("resilient.timeouts") == {}


async def test_retry_then_success_shows_every_attempt(otel: Otel, clock: FakeClock) -> None:
    """Each attempt is a span event with its number; retries carry delay and cause."""
    pipeline = Pipeline(
        FakeRetry(3, delay=0.5), name="payments", clock=clock, telemetry=otel.telemetry
    )
    failures = [ConnectionError(SECRET)]

    async def charge_body() -> str:
        await clock.sleep(0.1)
        if failures:
            raise failures.pop()
        return "ok"

    assert await pipeline.call(charge, charge_body) == "ok"
    span = otel.span("payments charge")
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes is not None
    assert span.attributes["resilient.attempts"] == 2
    assert span.attributes["resilient.verdict"] == "success"
    assert [name for name, _ in event_dicts(span)] == [
        "resilient.attempt",
        "resilient.retry",
        "resilient.attempt",
    ]
    first, retry, second = (a for _, a in event_dicts(span))
    assert first == {
        "resilient.policy": "retry",
        "resilient.attempt": 1,
        "resilient.attempt.kind": "original",
        "resilient.verdict": "transient",
        "resilient.duration": pytest.approx(0.1),
        "error.type": "ConnectionError",
    }
    assert retry == {
        "resilient.policy": "retry",
        "resilient.attempt": 1,
        "resilient.retry.delay": 0.5,
        "resilient.verdict": "transient",
        "error.type": "ConnectionError",
    }
    assert second["resilient.attempt"] == 2
    assert second["resilient.verdict"] == "success"
    assert second["resilient.attempt.kind"] == "retry"
    assert otel.values("resilient.retries") == {
        attrs(
            pipeline="payments", operation="charge", policy="retry", error_type="ConnectionError"
        ): 1
    }
    attempts = otel.values("resilient.attempt.duration")
    assert {k: v[0] for k, v in attempts.items()} == {
        attrs(
            pipeline="payments",
            operation="charge",
            policy="retry",
            verdict="transient",
            error_type="ConnectionError",
        )
        | {("resilient.attempt.kind", "original")}: 1,
        attrs(pipeline="payments", operation="charge", policy="retry", verdict="success")
        | {("resilient.attempt.kind", "retry")}: 1,
    }
    assert otel.values(CALL) == {
        attrs(pipeline="payments", operation="charge", verdict="success"): (
            1,
            pytest.approx(0.7),
        )
    }
    assert SECRET not in repr(span.to_json())


async def test_exhausted_retries_record_the_give_up(otel: Otel, clock: FakeClock) -> None:
    """Retries running out: a gave_up event and counter with the reason, status ERROR."""
    pipeline = Pipeline(
        FakeRetry(3, delay=0.0), name="payments", clock=clock, telemetry=otel.telemetry
    )

    async def charge_body() -> None:
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError):
        await pipeline.call(charge, charge_body)
    span = otel.span("payments charge")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["resilient.attempts"] == 3
    names = [name for name, _ in event_dicts(span)]
    assert names.count("resilient.attempt") == 3
    assert names.count("resilient.retry") == 2
    assert names[-1] == "resilient.retry.gave_up"
    assert event_dicts(span)[-1][1] == {
        "resilient.policy": "retry",
        "resilient.attempts": 3,
        "resilient.reason": "attempts",
        "resilient.verdict": "transient",
        "error.type": "ConnectionError",
    }
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


async def test_budget_refusal_is_counted(otel: Otel, clock: FakeClock) -> None:
    """A retry budget refusing a retry: span event and resilient.retry.budget.refusals."""
    pipeline = Pipeline(
        FakeRetry(5, delay=0.0, budget=0), name="payments", clock=clock, telemetry=otel.telemetry
    )

    async def charge_body() -> None:
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError):
        await pipeline.call(charge, charge_body)
    span = otel.span("payments charge")
    assert (
        "resilient.retry.budget_refused",
        {"resilient.policy": "retry", "resilient.attempt": 1},
    ) in (event_dicts(span))
    assert otel.values("resilient.retry.budget.refusals") == {
        attrs(pipeline="payments", operation="charge", policy="retry"): 1
    }


async def test_open_breaker_rejection_and_transition(otel: Otel) -> None:
    """An open circuit: rejection event and counter, transition counter, not a span error."""
    breaker = Refuse(
        CircuitOpenError("open", policy="breaker", retry_after=4.0),
        reason="open",
        name="breaker",
        transition=("closed", "open"),
    )
    pipeline = Pipeline(breaker, name="payments", telemetry=otel.telemetry)

    async def charge_body() -> None:
        raise AssertionError("never runs")

    with pytest.raises(CircuitOpenError):
        await pipeline.call(charge, charge_body)
    span = otel.span("payments charge")
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes is not None
    assert span.attributes["resilient.verdict"] == "rejected"
    assert event_dicts(span) == [
        (
            "resilient.circuit.state_change",
            {
                "resilient.policy": "breaker",
                "resilient.circuit.state": "open",
                "resilient.circuit.previous_state": "closed",
                "resilient.circuit.key": "h1",
            },
        ),
        (
            "resilient.rejected",
            {
                "resilient.policy": "breaker",
                "resilient.reason": "open",
                "error.type": "resilient.CircuitOpenError",
                "resilient.retry_after": 4.0,
            },
        ),
    ]
    assert otel.values("resilient.rejections") == {
        attrs(
            pipeline="payments",
            operation="charge",
            policy="breaker",
            reason="open",
            error_type="resilient.CircuitOpenError",
        ): 1
    }
    assert otel.values("resilient.circuit.transitions") == {
        attrs(pipeline="payments", policy="breaker", state="open", previous_state="closed"): 1
    }


async def test_full_bulkhead_records_the_wait_and_the_rejection(otel: Otel) -> None:
    """A bulkhead refusing after a wait: wait histogram (admitted=false) and rejection."""
    bulkhead = Refuse(
        BulkheadFullError("full", policy="pool"), reason="full", name="pool", waited=0.5
    )
    pipeline = Pipeline(bulkhead, name="payments", telemetry=otel.telemetry)

    async def charge_body() -> None:
        raise AssertionError("never runs")

    with pytest.raises(BulkheadFullError):
        await pipeline.call(charge, charge_body)
    span = otel.span("payments charge")
    assert event_dicts(span)[0] == (
        "resilient.wait",
        {"resilient.policy": "pool", "resilient.waited": 0.5, "resilient.admitted": False},
    )
    assert otel.values("resilient.wait.duration") == {
        attrs(pipeline="payments", operation="charge", policy="pool", admitted=False): (1, 0.5)
    }
    assert otel.values("resilient.rejections") == {
        attrs(
            pipeline="payments",
            operation="charge",
            policy="pool",
            reason="full",
            error_type="resilient.BulkheadFullError",
        ): 1
    }


async def test_rate_limited_call_is_a_rejection_per_policy(otel: Otel) -> None:
    """A rate limiter refusing: rejection counted under its policy name with retry_after."""
    limiter = Refuse(
        RateLimitedError("slow down", policy="limiter", retry_after=0.2),
        reason="rate_limited",
        name="limiter",
    )
    pipeline = Pipeline(limiter, name="payments", telemetry=otel.telemetry)

    async def charge_body() -> None:
        raise AssertionError("never runs")

    with pytest.raises(RateLimitedError):
        await pipeline.call(charge, charge_body)
    span = otel.span("payments charge")
    assert span.status.status_code is StatusCode.UNSET
    assert event_dicts(span)[-1][1]["resilient.retry_after"] == 0.2
    assert otel.values("resilient.rejections") == {
        attrs(
            pipeline="payments",
            operation="charge",
            policy="limiter",
            reason="rate_limited",
            error_type="resilient.RateLimitedError",
        ): 1
    }
    assert list(otel.values(CALL)) == [
        attrs(
            pipeline="payments",
            operation="charge",
            verdict="rejected",
            error_type="resilient.RateLimitedError",
        )
    ]


# -- gauges ---------------------------------------------------------------------------------


def test_gauges_read_the_policies_of_live_pipelines(otel: Otel) -> None:
    """Breaker state (one series per state), bulkhead running/waiting, limiter tokens."""
    breaker = Stateful("breaker", Snapshot(state="closed"))
    bulkhead = Stateful("pool", Snapshot(running=3, waiting=1))
    limiter = Stateful("limiter", Snapshot(tokens=7.5))
    pipeline = Pipeline(breaker, limiter, bulkhead, name="payments", telemetry=otel.telemetry)

    def states() -> dict[str, int]:
        return {
            dict(k)["resilient.circuit.state"]: v
            for k, v in otel.values("resilient.circuit.state").items()
        }

    assert states() == {"closed": 1, "open": 0, "half_open": 0}
    breaker.current = Snapshot(state="half_open")
    assert states() == {"closed": 0, "open": 0, "half_open": 1}
    assert otel.values("resilient.bulkhead.running") == {
        attrs(pipeline="payments", policy="pool"): 3
    }
    assert otel.values("resilient.bulkhead.waiting") == {
        attrs(pipeline="payments", policy="pool"): 1
    }
    assert otel.values("resilient.ratelimiter.tokens") == {
        attrs(pipeline="payments", policy="limiter"): 7.5
    }
    assert pipeline.observer is not None


def test_gauges_see_policies_of_nested_pipelines_and_unknown_states(otel: Otel) -> None:
    """Policies inside a nested pipeline are observed; an unknown state is still reported."""
    inner = Pipeline(Stateful("breaker", Snapshot(state="FORCED_OPEN")), name="inner")
    outer = Pipeline(inner, name="outer", telemetry=otel.telemetry)
    assert {
        dict(k)["resilient.circuit.state"]: v
        for k, v in otel.values("resilient.circuit.state").items()
        if dict(k)["resilient.pipeline"] == "outer"
    } == {"closed": 0, "open": 0, "half_open": 0, "forced_open": 1}
    assert outer.observer is not None


def test_gauges_forget_pipelines_that_were_garbage_collected(otel: Otel) -> None:
    """Pipelines are tracked weakly: a dropped pipeline's series disappear."""
    pipeline = Pipeline(
        Stateful("pool", Snapshot(running=2, waiting=0)), name="tmp", telemetry=otel.telemetry
    )
    assert otel.values("resilient.bulkhead.running") == {attrs(pipeline="tmp", policy="pool"): 2}
    del pipeline
    gc.collect()
    assert otel.values("resilient.bulkhead.running") == {}


def test_a_failing_snapshot_does_not_break_collection(otel: Otel) -> None:
    """A policy whose snapshot() raises is skipped; the others are still reported."""

    class Broken(Stateful):
        def snapshot(self) -> Snapshot:
            raise RuntimeError("boom")

    pipeline = Pipeline(
        Broken("bad", Snapshot()),
        Stateful("pool", Snapshot(running=1, waiting=0)),
        name="p",
        telemetry=otel.telemetry,
    )
    assert otel.values("resilient.bulkhead.running") == {attrs(pipeline="p", policy="pool"): 1}
    assert pipeline.observer is not None


# -- switches and fast paths ----------------------------------------------------------------


async def test_telemetry_false_records_nothing(otel: Otel) -> None:
    """telemetry=False: no observer, no span, no metric."""
    pipeline = Pipeline(Probe(), telemetry=False)
    assert pipeline.observer is None
    await pipeline.call(fetch_user, "u1")
    assert otel.spans() == []


async def test_metrics_only_and_tracing_only(clock: FakeClock) -> None:
    """Telemetry(tracing=False) records metrics only; Telemetry(metrics=False) spans only."""
    metrics_only = Otel.create(tracing=False)
    tracing_only = Otel.create(metrics=False)
    for otel in (metrics_only, tracing_only):
        pipeline = Pipeline(Timeout(1.0), name="p", clock=clock, telemetry=otel.telemetry)
        await pipeline.call(fetch_user, "u1")
    assert metrics_only.spans() == []
    assert len(metrics_only.points(CALL)) == 1
    assert len(tracing_only.spans("p fetch_user")) == 1
    assert tracing_only.points(CALL) == []


async def test_nothing_recording_means_no_events_are_built() -> None:
    """No-op providers: no observer at all; sampled-out spans and no metrics: not listening."""
    noop = Telemetry(tracer_provider=NoOpTracerProvider(), meter_provider=NoOpMeterProvider())
    assert Pipeline(telemetry=noop).observer is None
    sampled_out = Telemetry(tracer_provider=TracerProvider(sampler=ALWAYS_OFF), metrics=False)
    probe = Probe()
    pipeline = Pipeline(probe, telemetry=sampled_out)
    await pipeline.call(fetch_user, "u1")
    assert probe.listening == [False]
    assert probe.spans == [None]


async def test_listeners_still_get_events_when_nothing_records() -> None:
    """Opting out of events never silences the pipeline's own listeners."""
    events = EventRecorder()
    sampled_out = Telemetry(tracer_provider=TracerProvider(sampler=ALWAYS_OFF), metrics=False)
    probe = Probe()
    pipeline = Pipeline(probe, FakeRetry(1), listeners=[events], telemetry=sampled_out)
    await pipeline.call(fetch_user, "u1")
    assert probe.listening == [True]
    assert len(events) == 2


def test_bad_options_are_configuration_errors() -> None:
    """Telemetry validates its options and names the parameter."""
    with pytest.raises(ConfigurationError, match=r"Telemetry\.tracing"):
        Telemetry(tracing="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"Telemetry\.tracer_provider"):
        Telemetry(tracer_provider=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"Telemetry\.meter_provider"):
        Telemetry(meter_provider=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"Telemetry\.max_operations"):
        Telemetry(max_operations=0)


def test_metric_names_are_stable() -> None:
    """The instrument table is the documented contract (names, units)."""
    assert [(m.name, m.unit) for m in METRICS] == [
        ("resilient.call.duration", "s"),
        ("resilient.attempt.duration", "s"),
        ("resilient.retries", "{retry}"),
        ("resilient.retry.gave_up", "{call}"),
        ("resilient.retry.budget.refusals", "{retry}"),
        ("resilient.rejections", "{call}"),
        ("resilient.timeouts", "{timeout}"),
        ("resilient.wait.duration", "s"),
        ("resilient.circuit.transitions", "{transition}"),
        ("resilient.circuit.state", "{circuit}"),
        ("resilient.bulkhead.running", "{call}"),
        ("resilient.bulkhead.waiting", "{call}"),
        ("resilient.bulkhead.limit", "{call}"),
        ("resilient.ratelimiter.tokens", "{token}"),
        ("resilient.ratelimiter.waiting", "{call}"),
        ("resilient.hedges", "{hedge}"),
        ("resilient.fallbacks", "{call}"),
    ]


def test_docs_table_lists_every_metric() -> None:
    """docs/telemetry.md documents each instrument with its Prometheus name."""
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "telemetry.md").read_text()
    for m in METRICS:
        assert f"`{m.name}`" in doc
        assert f"`{m.prometheus_name}`" in doc


# -- observes, never steers -----------------------------------------------------------------


class _Raising(SpanProcessor):
    def on_start(self, span: Any, parent_context: Any = None) -> None:
        raise RuntimeError("exporter down")

    def on_end(self, span: Any) -> None:
        raise RuntimeError("exporter down")


async def test_a_raising_span_processor_never_changes_the_outcome(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Exporters failing at span start and end: the call's result and context are unchanged."""
    provider = TracerProvider()
    provider.add_span_processor(_Raising())
    pipeline = Pipeline(Timeout(1.0), telemetry=Telemetry(tracer_provider=provider))
    before = trace.get_current_span()
    with caplog.at_level(logging.ERROR, logger="resilient"):
        assert await pipeline.call(fetch_user, "u1") == "user u1"
    assert trace.get_current_span() is before
    assert "outcome is unchanged" in caplog.text


async def test_a_slow_exporter_does_not_make_a_timeout_fire(otel: Otel, clock: FakeClock) -> None:
    """An exporter blocking 100 s (virtual) at span start and end is outside the call's time."""

    class Blocking(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            clock.advance(100.0)

        def on_end(self, span: Any) -> None:
            clock.advance(100.0)

    otel.tracer_provider.add_span_processor(Blocking())
    pipeline = Pipeline(Timeout(1.0), clock=clock, telemetry=otel.telemetry)
    assert await pipeline.call(fetch_user, "u1", clock) == "user u1"
    assert otel.values(CALL) == {
        attrs(pipeline="default", operation="fetch_user", verdict="success"): (1, 0.25)
    }


async def test_failing_instruments_and_classifier_never_change_the_outcome() -> None:
    """A meter whose instruments raise, a classifier that raises: result returned, span ended."""

    class Boom:
        def __getattr__(self, name: str) -> Any:
            def fail(*args: Any, **kwargs: Any) -> Any:
                raise RuntimeError("metrics backend down")

            return fail

    class BadMeterProvider:
        def get_meter(self, *args: Any, **kwargs: Any) -> Any:
            class Meter:
                def __getattr__(self, name: str) -> Any:
                    return lambda *a, **k: Boom()

            return Meter()

    otel = Otel.create()
    telemetry = Telemetry(tracer_provider=otel.tracer_provider, meter_provider=BadMeterProvider())  # type: ignore[arg-type]

    def broken(outcome: Any) -> Any:
        raise ValueError("classifier bug")

    pipeline = Pipeline(
        FakeRetry(1), Timeout(1.0), name="p", classify=Classifier(), telemetry=telemetry
    )
    assert await pipeline.call(fetch_user, "u1") == "user u1"
    broken_pipeline = Pipeline(name="q", classify=broken, telemetry=otel.telemetry)
    assert await broken_pipeline.call(fetch_user, "u2") == "user u2"
    assert len(otel.spans("p fetch_user")) == 1
    assert len(otel.spans("q fetch_user")) == 1


# -- bounded attributes ---------------------------------------------------------------------


async def test_too_many_operations_fold_into_other(otel: Otel) -> None:
    """Past max_operations distinct operations, further ones are reported as _OTHER."""
    otel = Otel.create(max_operations=2)
    pipeline = Pipeline(name="gw", telemetry=otel.telemetry)
    for route in ("/a", "/b", "/c", "/d"):
        ctx = pipeline.context(fetch_user, ("u",), operation=route)
        await pipeline.run(ctx)
    ops = sorted(dict(k)["resilient.operation"] for k in otel.values(CALL))
    assert ops == ["/a", "/b", "_OTHER"]
    assert sorted(s.name for s in otel.spans()) == ["gw /a", "gw /b", "gw _OTHER", "gw _OTHER"]


def test_100k_calls_with_distinct_inputs_keep_the_series_constant() -> None:
    """Operation comes from the function's name, never its arguments: series stay constant."""
    otel = Otel.create(tracing=False)
    pipeline = Pipeline(FakeRetry(2, delay=0.0), name="users", telemetry=otel.telemetry)

    async def get_user(user_id: str, url: str) -> str:
        if user_id.endswith("7"):
            raise ConnectionError(url)
        return user_id

    def series() -> int:
        data = otel.reader.get_metrics_data()
        assert data is not None
        return sum(
            len(m.data.data_points)
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        )

    async def calls(start: int, stop: int) -> None:
        for i in range(start, stop):
            with contextlib.suppress(ConnectionError):
                await pipeline.call(get_user, f"user-{i}", f"https://x.example/u/{i}?t={i}")

    anyio.run(calls, 0, 100)
    before = series()
    anyio.run(calls, 100, 100_000)
    assert series() == before
    labels = {v for p in otel.points(CALL) for v in p.attributes.values()}
    assert not any("user-" in str(v) or "example" in str(v) for v in labels)
    (total,) = [
        p.count for p in otel.points(CALL) if p.attributes["resilient.verdict"] == "success"
    ]
    assert total == 90_000


# -- the global providers (a fresh process each: they can be set only once) -----------------


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_default_telemetry_follows_an_sdk_installed_after_the_pipeline() -> None:
    """Pipelines built before the app installs the SDK start reporting once it is installed."""
    out = _run(
        """
        import anyio, resilient
        from opentelemetry import trace, metrics
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        seen = []
        class Probe:
            name = "probe"
            async def execute(self, call, ctx):
                seen.append(ctx.listening)
                return await call(ctx)

        pipeline = resilient.Pipeline(Probe(), name="early")
        async def f():
            return 1
        anyio.run(pipeline.call, f)
        exporter = InMemorySpanExporter()
        tp = TracerProvider()
        tp.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(tp)
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        anyio.run(pipeline.call, f)
        names = [s.name for s in exporter.get_finished_spans()]
        data = reader.get_metrics_data()
        count = [m.data.data_points[0].count for rm in data.resource_metrics
                 for sm in rm.scope_metrics for m in sm.metrics
                 if m.name == "resilient.call.duration"]
        print(seen, names, count)
        """
    )
    assert out == "[False, True] ['early f'] [1]"


def test_an_explicit_noop_global_provider_turns_reporting_off() -> None:
    """An application that sets no-op global providers gets no spans and no events."""
    out = _run(
        """
        import anyio, resilient
        from opentelemetry import trace, metrics
        trace.set_tracer_provider(trace.NoOpTracerProvider())
        metrics.set_meter_provider(metrics.NoOpMeterProvider())
        seen = []
        class Probe:
            name = "probe"
            async def execute(self, call, ctx):
                seen.append((ctx.listening, ctx.span))
                return await call(ctx)
        pipeline = resilient.Pipeline(Probe())
        async def f():
            return 1
        anyio.run(pipeline.call, f)
        print(seen)
        """
    )
    assert out == "[(False, None)]"


def test_gauges_report_pipelines_built_before_the_sdk_and_never_called() -> None:
    """A pipeline built before the global meter provider is set shows in the gauges at once."""
    out = _run(
        """
        import anyio, resilient
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        class Snap:
            running, waiting = 4, 0
        class Pool:
            name = "pool"
            def snapshot(self):
                return Snap()
            async def execute(self, call, ctx):
                return await call(ctx)

        early = resilient.Pipeline(Pool(), name="early", telemetry=resilient.Telemetry())
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        metrics.set_meter_provider(provider)
        # Another pipeline's first call creates the instruments on the new provider.
        async def f():
            return 1
        anyio.run(resilient.Pipeline(name="other").call, f)
        data = reader.get_metrics_data()
        print([(dict(p.attributes), p.value) for rm in data.resource_metrics
               for sm in rm.scope_metrics for m in sm.metrics
               if m.name == "resilient.bulkhead.running" for p in m.data.data_points])
        """
    )
    assert out == "[({'resilient.pipeline': 'early', 'resilient.policy': 'pool'}, 4)]"

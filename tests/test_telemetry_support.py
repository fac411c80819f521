"""Helpers shared by the telemetry tests (no tests here): a real OpenTelemetry SDK with
in-memory exporters, and small policies that emit the library's real event types (stand-ins
for policies built elsewhere)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from resilient import RejectedError, Telemetry
from resilient.events import (
    AttemptEnded,
    AttemptStarted,
    BudgetRefused,
    CallRejected,
    CircuitStateChanged,
    RetryGaveUp,
    RetryScheduled,
    WaitEnded,
)
from resilient.extend import Call, Context


@dataclass
class Otel:
    """An SDK tracer and meter provider recording in memory, and a Telemetry using them."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    telemetry: Telemetry

    @classmethod
    def create(cls, **telemetry_options: Any) -> Otel:
        exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        reader = InMemoryMetricReader()
        meter_provider = MeterProvider(metric_readers=[reader])
        telemetry = Telemetry(
            tracer_provider=tracer_provider, meter_provider=meter_provider, **telemetry_options
        )
        return cls(tracer_provider, meter_provider, exporter, reader, telemetry)

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        spans = list(self.exporter.get_finished_spans())
        return [s for s in spans if name is None or s.name == name]

    def span(self, name: str) -> ReadableSpan:
        (span,) = self.spans(name)
        return span

    def points(self, metric: str) -> list[Any]:
        """The data points of one instrument (cumulative), [] when it has none."""
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        found: list[Any] = []
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for m in scope_metrics.metrics:
                    if m.name == metric:
                        found.extend(m.data.data_points)
        return found

    def values(self, metric: str) -> dict[frozenset[tuple[str, Any]], Any]:
        """attributes -> value (counters, gauges) or (count, sum) (histograms)."""
        out: dict[frozenset[tuple[str, Any]], Any] = {}
        for p in self.points(metric):
            key = frozenset(p.attributes.items())
            out[key] = (p.count, p.sum) if hasattr(p, "bucket_counts") else p.value
        return out


def attrs(**kw: Any) -> frozenset[tuple[str, Any]]:
    """Attribute set from keywords: ``pipeline=`` -> ``resilient.pipeline`` etc."""
    names = {"error_type": "error.type", "state": "resilient.circuit.state"}
    names["previous_state"] = "resilient.circuit.previous_state"
    return frozenset((names.get(k, f"resilient.{k}"), v) for k, v in kw.items())


def event_dicts(span: ReadableSpan) -> list[tuple[str, dict[str, Any]]]:
    return [(e.name, dict(e.attributes or {})) for e in span.events]


def _error_type(exc: BaseException | None) -> str | None:
    return None if exc is None else type(exc).__qualname__


class FakeRetry:
    """Retries TRANSIENT outcomes after ``delay``, emitting the events a Retry emits."""

    def __init__(
        self,
        attempts: int = 3,
        *,
        delay: float = 0.5,
        budget: int | None = None,
        name: str = "retry",
    ) -> None:
        self.attempts = attempts
        self.delay = delay
        self.budget = budget
        self.name = name

    async def execute(self, call: Call, ctx: Context, /) -> Any:
        attempt = 0
        while True:
            attempt += 1
            ctx.attempt = attempt
            common = {"pipeline": ctx.pipeline, "operation": ctx.operation, "policy": self.name}
            if ctx.listening:
                ctx.emit(AttemptStarted(**common, at=ctx.clock.now(), attempt=attempt))
            started = ctx.clock.now()
            error: Exception | None = None
            result: Any = None
            try:
                result = await call(ctx)
            except Exception as exc:
                error = exc
                classification = ctx.classifier.classify_exception(exc)
            else:
                classification = ctx.classifier.classify_result(result)
            verdict = classification.verdict
            kind = _error_type(error)
            if ctx.listening:
                ctx.emit(
                    AttemptEnded(
                        **common,
                        at=ctx.clock.now(),
                        attempt=attempt,
                        verdict=verdict,
                        duration=ctx.clock.now() - started,
                        error_type=kind,
                    )
                )
            stop = None
            if not verdict.is_retryable:
                stop = "verdict" if verdict.is_failure else None
            elif attempt >= self.attempts:
                stop = "attempts"
            elif self.budget is not None and self.budget <= 0:
                if ctx.listening:
                    ctx.emit(BudgetRefused(**common, at=ctx.clock.now(), attempt=attempt))
                stop = "budget"
            if stop is not None and ctx.listening:
                ctx.emit(
                    RetryGaveUp(
                        **common,
                        at=ctx.clock.now(),
                        attempts=attempt,
                        reason=stop,
                        verdict=verdict,
                        error_type=kind,
                    )
                )
            if stop is not None or not verdict.is_retryable:
                if error is not None:
                    raise error
                return result
            if self.budget is not None:
                self.budget -= 1
            if ctx.listening:
                ctx.emit(
                    RetryScheduled(
                        **common,
                        at=ctx.clock.now(),
                        attempt=attempt,
                        delay=self.delay,
                        verdict=verdict,
                        error_type=kind,
                        retry_after=classification.retry_after,
                    )
                )
            await ctx.clock.sleep(self.delay)


class Refuse:
    """Refuses every call like a breaker, bulkhead or limiter would, with the real events."""

    def __init__(
        self,
        error: RejectedError,
        *,
        reason: str,
        name: str,
        waited: float | None = None,
        transition: tuple[str, str] | None = None,
    ) -> None:
        self.error = error
        self.reason = reason
        self.name = name
        self.waited = waited
        self.transition = transition

    async def execute(self, call: Call, ctx: Context, /) -> Any:
        common = {"pipeline": ctx.pipeline, "operation": ctx.operation, "policy": self.name}
        if ctx.listening:
            if self.transition is not None:
                previous, state = self.transition
                ctx.emit(
                    CircuitStateChanged(
                        **common, at=ctx.clock.now(), previous=previous, state=state, key="h1"
                    )
                )
            if self.waited is not None:
                ctx.emit(
                    WaitEnded(**common, at=ctx.clock.now(), waited=self.waited, admitted=False)
                )
            ctx.emit(
                CallRejected(
                    **common,
                    at=ctx.clock.now(),
                    reason=self.reason,
                    retry_after=self.error.retry_after,
                    error_type=type(self.error).__qualname__,
                )
            )
        raise self.error


@dataclass
class Snapshot:
    state: Any = None
    running: Any = None
    waiting: Any = None
    tokens: Any = None


class Stateful:
    """A pass-through policy exposing ``snapshot()`` like breakers, bulkheads and limiters."""

    def __init__(self, name: str, snapshot: Snapshot) -> None:
        self.name = name
        self.current = snapshot

    def snapshot(self) -> Snapshot:
        return self.current

    async def execute(self, call: Call, ctx: Context, /) -> Any:
        return await call(ctx)


class Probe:
    """Records what a policy sees of the call's context."""

    def __init__(self, name: str = "probe") -> None:
        self.name = name
        self.listening: list[bool] = []
        self.spans: list[Any] = []

    async def execute(self, call: Call, ctx: Context, /) -> Any:
        self.listening.append(ctx.listening)
        self.spans.append(ctx.span)
        return await call(ctx)


def names_of(spans: Sequence[ReadableSpan]) -> list[str]:
    return [s.name for s in spans]

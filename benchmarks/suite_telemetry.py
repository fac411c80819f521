"""Telemetry suite: what reporting through OpenTelemetry costs a standard pipeline.

Two questions, each answered by ratios measured in the same run:

1. No SDK installed (the default ``ProxyTracerProvider`` and no-op meter): the standard
   pipeline with telemetry on against the same pipeline with ``telemetry=False``.
2. SDK installed (a span processor with a discarding exporter, an in-memory metric reader):
   what the pipeline's telemetry adds over ``telemetry=False``, against what the very same
   OpenTelemetry calls cost when written by hand around the untelemetered pipeline ("bare").
   The gap between the two is the library's own overhead around the SDK.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import resilient
from benchmarks._harness import Case, run_cases
from resilient.telemetry import _names as names
from resilient.testing import EventRecorder


async def _f() -> int:
    return 1


def _standard(telemetry: Any) -> resilient.Pipeline:
    """What ``resilient.standard()`` builds, with its defaults."""
    return resilient.standard(name="bench", telemetry=telemetry)


class _Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _loop(call: Any) -> Case:
    async def case(n: int) -> None:
        for i in range(n):
            await call(_f)
            if i % 128 == 0:
                await asyncio.sleep(0)

    return case


def cases() -> dict[str, Case]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(_Discard()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    sdk = resilient.Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)

    off = _standard(False)
    on_api = _standard(True)  # the global providers: none is set in this process
    on_sdk = _standard(sdk)

    # What the observer does on this pipeline's success path, done by hand: the same span,
    # one span event and one histogram point per attempt event, the call histogram.
    recorder = EventRecorder()
    probe = resilient.standard(name="bench", telemetry=False, listeners=[recorder])
    asyncio.run(probe.call(_f))
    attempt_events = len(recorder.of_type(resilient.events.AttemptEnded))

    tracer = tracer_provider.get_tracer("bare")
    meter = meter_provider.get_meter("bare")
    call_hist = meter.create_histogram("bare.call.duration", unit="s")
    attempt_hist = meter.create_histogram("bare.attempt.duration", unit="s")
    span_attrs = {names.PIPELINE: "bench", names.OPERATION: "_f"}
    call_attrs = {**span_attrs, names.VERDICT: "success"}
    attempt_attrs = {**call_attrs, names.POLICY: "retry"}
    event_attrs = {names.POLICY: "retry", names.ATTEMPT: 1, names.VERDICT: "success"}
    kind = otel_trace.SpanKind.INTERNAL
    off_call = off.call

    async def bare_call(fn: Any) -> Any:
        clock = asyncio.get_running_loop().time
        span = tracer.start_span("bench _f", kind=kind, attributes=span_attrs)
        if span.is_recording():
            started = clock()
            token = otel_context.attach(otel_trace.set_span_in_context(span))
        result = await off_call(fn)
        for _ in range(attempt_events):
            span.add_event("resilient.attempt", {**event_attrs, names.DURATION: 0.0})
            attempt_hist.record(0.0, attempt_attrs)
        elapsed = clock() - started
        otel_context.detach(token)
        call_hist.record(elapsed, call_attrs)
        span.set_attributes({names.VERDICT: "success", names.ATTEMPTS: 1})
        span.end()
        return result

    return {
        "standard, telemetry=False": _loop(off.call),
        "standard, telemetry on, no SDK": _loop(on_api.call),
        "standard, telemetry on, SDK": _loop(on_sdk.call),
        "standard, telemetry=False + bare OTel calls (SDK)": _loop(bare_call),
    }


# (case, reference, target ratio): checked in quick mode with a generous margin.
GATES = [
    ("standard, telemetry on, no SDK", "standard, telemetry=False", 1.15),
    ("standard, telemetry on, SDK", "standard, telemetry=False + bare OTel calls (SDK)", 1.2),
    ("telemetry cost with SDK (delta)", "bare OTel calls cost (delta)", 1.2),
]


def run(*, quick: bool) -> dict[str, float]:
    # The fastest round of each case, not the median: on a shared machine other processes only
    # ever add time, and the SDK cases are long enough for that noise to come and go between
    # rounds. Many short rounds, interleaved, give each case the same quiet moments.
    results = run_cases(cases(), calls=500 if quick else 2_000, rounds=21 if quick else 41)
    best = {name: r.min_ns for name, r in results.items()}
    off = best["standard, telemetry=False"]
    best["telemetry cost with SDK (delta)"] = best["standard, telemetry on, SDK"] - off
    best["bare OTel calls cost (delta)"] = (
        best["standard, telemetry=False + bare OTel calls (SDK)"] - off
    )
    return best

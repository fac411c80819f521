"""Telemetry: OpenTelemetry spans and Prometheus metrics from a pipeline, with no extra code.

Run: python examples/telemetry.py

The application configures OpenTelemetry once (here: spans kept in memory, metrics served on
/metrics). Every pipeline then reports: a span per call with its events, and metrics under
stable names. Finally the example scrapes its own /metrics like Prometheus would.
"""

from __future__ import annotations

import anyio
import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import resilient
from resilient.telemetry import prometheus

# 1. The application's OpenTelemetry setup (usually an OTLP exporter instead of memory).
spans = InMemorySpanExporter()
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
trace.set_tracer_provider(tracer_provider)

# 2. Prometheus: install the exporter as the global meter provider and serve /metrics.
#    (In a Starlette/FastAPI app: prometheus.add_route(app), which serves /metrics.)
server = prometheus.start_http_server(0, "127.0.0.1")  # port 0: any free port

# 3. Pipelines, built as usual: no telemetry code at all.
inventory = resilient.standard("inventory", attempt_timeout=0.05)
failures = [ConnectionError("connection reset")]


async def get_stock(sku: str) -> int:
    if sku == "flaky" and failures:
        raise failures.pop()  # fails once: retried
    if sku == "slow":
        await anyio.sleep(1.0)  # longer than the 50 ms attempt timeout, every attempt
    return 42


async def main() -> None:
    tracer = trace.get_tracer("shop")
    with tracer.start_as_current_span("GET /cart"):  # the caller's own span: the parent
        print("stock:", await inventory.call(get_stock, "sku-1"))
        print("stock after a retry:", await inventory.call(get_stock, "flaky"))
        try:
            await inventory.call(get_stock, "slow")
        except resilient.TimeoutExceeded as exc:
            print("timed out:", str(exc).splitlines()[0])

    # OpenTelemetry's span status is UNSET unless something went wrong (libraries never set
    # OK): ERROR marks a call that failed, not one that succeeded after a retry.
    print("\nspans (status UNSET = no error, ERROR = the call failed):")
    finished = spans.get_finished_spans()
    for span in finished:
        attrs = dict(span.attributes or {})
        if "resilient.verdict" not in attrs:
            # Not the library's: the application's own span, the parent of the calls above.
            children = [
                s for s in finished if s.parent and s.parent.span_id == span.context.span_id
            ]
            print(f"  {span.name:<20} the caller's own span, parent of {len(children)} call spans")
            continue
        print(
            f"  {span.name:<20} status={span.status.status_code.name:<5} "
            f"verdict={attrs['resilient.verdict']:<9} "
            f"attempts={attrs.get('resilient.attempts')}"
        )
        for event in span.events:
            details = {
                key.removeprefix("resilient."): round(v, 4) if isinstance(v, float) else v
                for key, v in (event.attributes or {}).items()
            }
            print(f"      {event.name:<18} {details}")

    async with httpx.AsyncClient() as client:
        text = (await client.get(server.url)).text
    print(f"\nscraped {server.url} (resilient_* samples):")
    for line in text.splitlines():
        if line.startswith("resilient_") and ("_count" in line or "_total" in line):
            print("  " + _without_scope_labels(line))


def _without_scope_labels(line: str) -> str:
    # The exporter adds otel_scope_* labels to every sample; hidden here for readability.
    head, _, rest = line.partition("{")
    labels, _, value = rest.partition("}")
    kept = [label for label in labels.split(",") if not label.startswith("otel_scope")]
    return f"{head}{{{','.join(kept)}}}{value}"


anyio.run(main)
server.close()

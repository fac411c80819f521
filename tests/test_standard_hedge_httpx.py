"""resilient.httpx.standard() hedges at the attempt timeout, and the hedging bugs it exposed.

Each regression test below failed on the transport before the fix:

- a cancelled loser's client span ended with status ERROR;
- with max_hedges >= 2 a call could return a closed, buffered 503 (a hedge starting closed
  the response the round still held);
- concurrent attempts shared one ``httpx.Request`` (headers rewritten under each other).

MockTransport tests run in trio's virtual time; the leak test uses a real 4-connection httpx
pool against a real uvicorn server on 127.0.0.1 (tests/_live_server.py).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
import trio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import resilient
import resilient.httpx
from resilient import Hedge, Pipeline, RetryBudget
from resilient.events import HedgeStarted, RetryScheduled
from resilient.extend import SystemClock
from resilient.httpx import ResilientTransport
from resilient.testing import EventRecorder
from test_hedge import run_virtual
from test_httpx_e2e import POOL_TIMEOUT, Server, live_server, pool, server

__all__ = ["live_server", "server"]  # the fixtures, imported for this module


class Upstream:
    """Answers each request after its scripted latency (default: the first one slow)."""

    def __init__(self, latencies: list[float] | None = None) -> None:
        self.latencies = latencies or [1.0]
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        number = len(self.requests)
        self.requests.append(request)
        latency = self.latencies[number] if number < len(self.latencies) else 0.01
        await trio.sleep(latency)
        return httpx.Response(200, content=f"answer {number + 1}".encode())


def _otel() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


# -- the preset ------------------------------------------------------------------------------


def test_a_get_is_hedged_at_the_attempt_timeout() -> None:
    """The slow original keeps running past attempt_timeout, a hedge starts beside it and
    answers first (at 0.05 + 0.01 s)."""
    upstream = Upstream()

    async def main() -> tuple[str, float, int]:
        events = EventRecorder()
        transport = resilient.httpx.standard(
            httpx.MockTransport(upstream),
            total_timeout=2.0,
            attempt_timeout=0.05,
            listeners=[events],
            telemetry=False,
        )
        async with httpx.AsyncClient(transport=transport) as client:
            started = trio.current_time()
            response = await client.get("http://upstream/items")
            elapsed = trio.current_time() - started
        return response.text, elapsed, len(events.of_type(HedgeStarted))

    text, elapsed, hedges = run_virtual(main)
    assert (text, hedges) == ("answer 2", 1)
    assert elapsed == pytest.approx(0.06)


def test_a_post_without_idempotency_key_is_never_hedged_but_cut_at_the_attempt_timeout() -> None:
    """A POST that may not be sent twice runs once: no hedge, and the attempt timeout still
    cuts it (it is not left to the total timeout)."""
    upstream = Upstream()

    async def main() -> tuple[BaseException | None, float, int]:
        events = EventRecorder()
        transport = resilient.httpx.standard(
            httpx.MockTransport(upstream),
            total_timeout=2.0,
            attempt_timeout=0.05,
            listeners=[events],
            telemetry=False,
        )
        error: BaseException | None = None
        async with httpx.AsyncClient(transport=transport) as client:
            started = trio.current_time()
            try:
                await client.post("http://upstream/orders", content=b"{}")
            except httpx.HTTPError as exc:
                error = exc
            elapsed = trio.current_time() - started
        return error, elapsed, len(events.of_type(HedgeStarted))

    error, elapsed, hedges = run_virtual(main)
    assert isinstance(error, resilient.TimeoutExceeded)
    assert error.policy == "attempt_timeout"
    assert hedges == 0
    assert len(upstream.requests) == 1
    assert elapsed == pytest.approx(0.05)


# -- bug a: a cancelled loser is not an error --------------------------------------------------


def test_the_losing_attempts_span_is_not_an_error() -> None:
    """The slow original loses to its hedge and is cancelled: its client span ends with
    status UNSET and ``resilient.attempt.cancelled="lost"`` (it used to be ERROR, with
    ``error.type="cancelled"``); the winner's span is a plain success."""
    provider, exporter = _otel()
    upstream = Upstream()

    async def main() -> int:
        transport = resilient.httpx.standard(
            httpx.MockTransport(upstream),
            total_timeout=2.0,
            attempt_timeout=0.05,
            tracer_provider=provider,
        )
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get("http://upstream/items")
        return response.status_code

    assert run_virtual(main) == 200
    spans = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
    assert len(spans) == 2
    original, hedge = spans
    assert (original.attributes or {}).get("resilient.attempt.kind") == "original"
    assert (hedge.attributes or {}).get("resilient.attempt.kind") == "hedge"
    assert original.status.status_code is StatusCode.UNSET
    assert (original.attributes or {}).get("resilient.attempt.cancelled") == "lost"
    assert "error.type" not in (original.attributes or {})
    assert hedge.status.status_code is StatusCode.UNSET
    assert (hedge.attributes or {}).get("http.response.status_code") == 200


def test_an_attempt_cut_by_the_deadline_is_still_an_error() -> None:
    """Not a loser: the total timeout cuts the only attempt of a POST; its span is ERROR."""
    provider, exporter = _otel()
    upstream = Upstream([5.0])

    async def main() -> None:
        transport = resilient.httpx.standard(
            httpx.MockTransport(upstream),
            total_timeout=0.5,
            attempt_timeout=0.5,
            tracer_provider=provider,
        )
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(resilient.TimeoutExceeded):
                await client.post("http://upstream/orders", content=b"{}")

    run_virtual(main)
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {}).get("error.type") == "cancelled"


# -- bug b: a buffered 503 the round still holds is never closed under it ------------------


class SlowBody(httpx.AsyncByteStream):
    def __init__(self, content: bytes, delay: float) -> None:
        self.content = content
        self.delay = delay

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await trio.sleep(self.delay)
        yield self.content


def test_a_buffered_503_returned_after_two_hedges_is_readable() -> None:
    """max_hedges=2, every attempt answers 503 (buffered: small, with a content-length).
    The original's headers arrive at 0.09 s and its body at 0.11 s; the second hedge starts
    at 0.1 s, while the original is being buffered. The original settles last, so the call
    returns its 503: it must be readable (a hedge starting used to close it: StreamClosed)."""
    script = [(0.09, 0.02), (0.02, 0.0), (0.005, 0.0)]  # (headers after, body after)
    sent: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        number = len(sent)
        sent.append(number)
        latency, body_latency = script[number]
        await trio.sleep(latency)
        body = f"busy {number + 1}".encode()
        return httpx.Response(
            503, headers={"content-length": str(len(body))}, stream=SlowBody(body, body_latency)
        )

    async def main() -> tuple[int, str]:
        pipeline = Pipeline(Hedge(delay=0.05, max_hedges=2, budget=None), telemetry=False)
        transport = ResilientTransport(pipeline, httpx.MockTransport(handler))
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get("http://upstream/items")
        return response.status_code, response.text

    assert run_virtual(main) == (503, "busy 1")
    assert sent == [0, 1, 2]


# -- bug c: each attempt sends a request of its own --------------------------------------------


def test_concurrent_attempts_send_their_own_request() -> None:
    """The original and its hedge are two ``httpx.Request`` objects: each carries its own
    deadline header and the trace context of its own span (the hedge used to rewrite the
    headers of the request the original was sending). The body is sent whole by both."""
    provider, exporter = _otel()
    upstream = Upstream()
    bodies: list[bytes] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(await request.aread())
        return await upstream(request)

    async def main() -> None:
        transport = resilient.httpx.standard(
            httpx.MockTransport(handler),
            total_timeout=2.0,
            attempt_timeout=0.05,
            propagate_deadline=True,
            tracer_provider=provider,
        )
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.put("http://upstream/items/1", content=b"payload")
            assert response.text == "answer 2"

    run_virtual(main)
    original, hedge = upstream.requests
    assert original is not hedge
    assert bodies == [b"payload", b"payload"]
    assert original.headers["x-request-deadline"] == "2000"
    assert hedge.headers["x-request-deadline"] == "1950"
    spans = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
    for request, span in zip((original, hedge), spans, strict=True):
        assert span.context is not None
        assert f"{span.context.span_id:016x}" in request.headers["traceparent"]


def test_a_multipart_body_with_a_file_is_retried_but_never_hedged(tmp_path: Any) -> None:
    """Two copies of a multipart body would seek the same file at once: such a request is
    not hedged; its slow attempt is cut at the attempt timeout and retried instead (one
    attempt after another, the file rewound)."""
    upstream = Upstream()
    path = tmp_path / "report.csv"
    path.write_bytes(b"a,b\n1,2\n")

    async def main() -> int:
        events = EventRecorder()
        transport = resilient.httpx.standard(
            httpx.MockTransport(upstream),
            total_timeout=2.0,
            attempt_timeout=0.05,
            listeners=[events],
            telemetry=False,
        )
        async with httpx.AsyncClient(transport=transport) as client:
            with path.open("rb") as file:
                response = await client.put("http://upstream/reports", files={"report": file})
        assert response.status_code == 200
        return len(events.of_type(HedgeStarted))

    assert run_virtual(main) == 0
    assert len(upstream.requests) == 2


# -- telemetry -------------------------------------------------------------------------------


def test_attempt_kind_holds_through_standard_with_the_otel_sdk() -> None:
    """The real OpenTelemetry SDK: client spans say original / hedge / retry, and so do the
    pipeline's attempt metrics (``resilient.attempt.kind``) and the hedge counter."""
    provider, exporter = _otel()
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    # The original fails fast (503): the Retry backs off and sends a retry, which is slow;
    # at the attempt timeout a hedge starts beside it and wins.
    answers = iter([(0.01, 503), (1.0, 200), (0.01, 200)])

    async def handler(request: httpx.Request) -> httpx.Response:
        latency, status = next(answers)
        await trio.sleep(latency)
        return httpx.Response(status, content=b"x")

    async def main() -> int:
        transport = resilient.httpx.standard(
            httpx.MockTransport(handler),
            total_timeout=5.0,
            attempt_timeout=0.05,
            base_delay=0.01,
            tracer_provider=provider,
            telemetry=resilient.Telemetry(tracer_provider=provider, meter_provider=meters),
        )
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get("http://upstream/items")
        return response.status_code

    assert run_virtual(main) == 200
    client_spans = sorted(
        (s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT),
        key=lambda s: s.start_time or 0,
    )
    kinds = [(s.attributes or {}).get("resilient.attempt.kind") for s in client_spans]
    assert kinds == ["original", "retry", "hedge"]
    lost = [(s.attributes or {}).get("resilient.attempt.cancelled") for s in client_spans]
    assert lost == [None, "lost", None]
    data = reader.get_metrics_data()
    assert data is not None
    seen: dict[str, set[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    kind = (point.attributes or {}).get("resilient.attempt.kind")
                    if kind is not None:
                        seen.setdefault(metric.name, set()).add(kind)
    assert seen, "no metric point carries resilient.attempt.kind"
    assert {"retry", "hedge"} <= set().union(*seen.values())


# -- nothing leaks: a real pool, a real server ---------------------------------------------


@pytest.mark.slow
async def test_nothing_leaks_after_1000_hedged_requests_with_random_cancellations(
    server: Server,
) -> None:
    """One long-lived resilient.httpx.standard() transport over a real 16-connection pool:
    1,000 GETs, 4 at a time, whose first copy hangs (each is hedged at a 2 ms attempt
    timeout; up to 4 attempts each), a quarter of them cancelled by the caller at a random
    moment. Afterwards no pool connection, no
    bulkhead slot and no budget token is left held, and the pool still serves requests."""
    for i in range(1000):
        server.script.plan(f"/h/{i}", "hang", 200)
    budget = RetryBudget(ratio=0.0, reserve=100_000, window=1e12)
    events = EventRecorder()
    transport = resilient.httpx.standard(
        pool(16),
        total_timeout=5.0,
        attempt_timeout=0.002,
        budget=budget,
        max_concurrent=16,
        listeners=[events],
        telemetry=False,
    )
    bulkhead = transport.pipeline.policies[-1]
    assert isinstance(bulkhead, resilient.Bulkhead)
    rng = random.Random(5)
    outcomes = {"ok": 0, "cancelled": 0}
    async with httpx.AsyncClient(transport=transport, timeout=POOL_TIMEOUT) as client:

        async def one(i: int, cancel_after: float | None) -> None:
            with anyio.move_on_after(cancel_after if cancel_after is not None else 60.0) as scope:
                response = await client.get(server.url(f"/h/{i}"))
                assert response.status_code == 200
                outcomes["ok"] += 1
            if scope.cancelled_caught:
                outcomes["cancelled"] += 1

        limiter = anyio.Semaphore(4)

        async def limited(i: int, cancel_after: float | None) -> None:
            async with limiter:
                await one(i, cancel_after)

        async with anyio.create_task_group() as group:
            for i in range(1000):
                cancel_after = rng.uniform(0.0, 0.004) if rng.random() < 0.25 else None
                group.start_soon(limited, i, cancel_after)
        server.script.plan("/after", 200)
        assert (await client.get(server.url("/after"))).status_code == 200
        snapshot = transport.pool_snapshot()
        assert snapshot is not None
        assert (snapshot.running, snapshot.waiting) == (0, 0)
    assert outcomes["ok"] + outcomes["cancelled"] == 1000
    assert outcomes["ok"] > 500
    hedges = len(events.of_type(HedgeStarted))
    retries = len(events.of_type(RetryScheduled))
    assert hedges > 500
    held = bulkhead.snapshot("127.0.0.1:" + str(server.port))
    assert (held.running, held.waiting) == (0, 0)
    # Every token taken for a hedge or retry is either still spent or refunded (a hedge or
    # retry that succeeded gets its token back): none is lost, none is minted.
    drift = budget.available(SystemClock().now()) - (100_000 - hedges - retries)
    assert -1e-3 <= drift <= hedges + retries

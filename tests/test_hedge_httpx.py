"""Hedging through ``resilient.httpx``: only requests that may be sent twice are hedged, and
every response that loses is closed (its connection goes back to the pool)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from trio.testing import MockClock

from resilient import (
    Hedge,
    Pipeline,
)
from resilient.events import (
    HedgeStarted,
)
from resilient.httpx import ResilientTransport
from resilient.testing import EventRecorder


class Body(httpx.AsyncByteStream):
    """A response body that records whether it was closed."""

    def __init__(self, content: bytes) -> None:
        self.content = content
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.content

    async def aclose(self) -> None:
        self.closed = True


class Upstream:
    """An upstream whose first request of each call is slow (1 s) and later ones fast."""

    def __init__(
        self, *, same_instant: bool = False, script: list[tuple[float, int]] | None = None
    ) -> None:
        self.requests: list[httpx.Request] = []
        self.bodies: list[Body] = []
        self.same_instant = same_instant
        self.script = script  # (latency, status) of each request, in order
        self.end = 0.0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        number = len(self.requests)
        status = 200
        if self.script is not None:
            latency, status = self.script[number - 1]
            await trio.sleep(latency)
        elif self.same_instant:
            if number == 1:
                self.end = trio.current_time() + 0.1
            await trio.sleep_until(self.end)
        else:
            await trio.sleep(1.0 if number == 1 else 0.01)
        body = Body(f"answer {number}".encode())
        self.bodies.append(body)
        return httpx.Response(status, stream=body)


def run(fn: Any, *args: Any) -> Any:
    return trio.run(fn, *args, clock=MockClock(autojump_threshold=0))


async def _send(method: str, headers: dict[str, str], upstream: Upstream) -> Any:
    events = EventRecorder()
    pipeline = Pipeline(Hedge(delay=0.05, budget=None), listeners=[events], telemetry=False)
    transport = ResilientTransport(pipeline, httpx.MockTransport(upstream))
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream") as client:
        started = trio.current_time()
        response = await client.request(method, "/orders", headers=headers, content=b"{}")
        elapsed = trio.current_time() - started
    return response, elapsed, len(events.of_type(HedgeStarted))


@pytest.mark.parametrize(
    ("method", "headers"),
    [("POST", {}), ("PATCH", {})],
    ids=["POST", "PATCH"],
)
def test_a_request_without_idempotency_is_never_hedged(
    method: str, headers: dict[str, str]
) -> None:
    """A POST without an Idempotency-Key waits for its one slow attempt: sent once."""
    upstream = Upstream()
    response, elapsed, hedges = run(_send, method, headers, upstream)
    assert response.status_code == 200
    assert len(upstream.requests) == 1
    assert hedges == 0
    assert elapsed == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("method", "headers"),
    [("GET", {}), ("PUT", {}), ("POST", {"Idempotency-Key": "order-42"})],
    ids=["GET", "PUT", "POST+Idempotency-Key"],
)
def test_a_request_that_may_be_resent_is_hedged(method: str, headers: dict[str, str]) -> None:
    """Idempotent methods and keyed POSTs are hedged: the hedge's answer comes back at
    ~60 ms and the slow original's response is never left open."""
    upstream = Upstream()
    response, elapsed, hedges = run(_send, method, headers, upstream)
    assert response.status_code == 200
    assert response.text == "answer 2"
    assert len(upstream.requests) == 2
    assert hedges == 1
    assert elapsed == pytest.approx(0.06)
    assert [r.method for r in upstream.requests] == [method, method]


def test_a_response_losing_in_the_same_instant_is_closed() -> None:
    """Original and hedge answer at the same virtual instant: the caller gets one response,
    the other one (when it got that far before being cancelled) is closed by the transport.

    trio runs the tasks woken together in a random order, so the scenario is repeated: the
    loser completes its request in most runs.
    """
    completed_losers = 0
    for _ in range(10):
        upstream = Upstream(same_instant=True)
        response, _, hedges = run(_send, "GET", {}, upstream)
        assert hedges == 1
        losers = [body for body in upstream.bodies if body.content != response.content]
        assert all(body.closed for body in losers)
        completed_losers += len(losers)
    assert completed_losers > 0


def test_a_failed_response_replaced_by_the_hedges_answer_is_closed() -> None:
    """The original answers 503 (streamed, not buffered) while its hedge is still running;
    the hedge's 200 wins: the 503's body is closed, not left holding a connection."""
    upstream = Upstream(script=[(0.08, 503), (0.05, 200)])
    response, elapsed, hedges = run(_send, "GET", {}, upstream)
    assert (response.status_code, hedges) == (200, 1)
    assert elapsed == pytest.approx(0.1)
    assert upstream.bodies[0].closed


def test_client_spans_label_the_original_and_the_hedge() -> None:
    """With the OTel SDK: one client span per attempt, ``resilient.attempt.kind`` original
    then hedge; the cancelled original's span ends too."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    upstream = Upstream()

    async def main() -> int:
        pipeline = Pipeline(Hedge(delay=0.05, budget=None), telemetry=False)
        transport = ResilientTransport(
            pipeline, httpx.MockTransport(upstream), telemetry=True, tracer_provider=provider
        )
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get("http://upstream/items")
        return response.status_code

    assert run(main) == 200
    spans = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
    kinds = [(s.attributes or {}).get("resilient.attempt.kind") for s in spans]
    assert kinds == ["original", "hedge"]

"""ResilientTransport: bodies, closing, naming, deadlines, spans and lifecycle."""

from __future__ import annotations

import contextlib
import io
import types
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import resilient
import resilient.httpx
from resilient import ConfigurationError, Timeout, Verdict, on_result
from resilient.extend import Context
from resilient.httpx import (
    DEADLINE_HEADER,
    ROUTE_EXTENSION,
    ResilientTransport,
    UnsafeResendError,
    http_classifier,
)
from resilient.testing import FakeClock

URL = "http://svc.test/items"


class Body(httpx.AsyncByteStream):
    """A response body that records whether it was read and closed."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.read = False
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.read = True
        yield self.data

    async def aclose(self) -> None:
        self.closed = True


Step = int | tuple[int, dict[str, str]] | Exception | Callable[[httpx.Request], Any]


class Upstream(httpx.AsyncBaseTransport):
    """A scripted server: answers in order (the last step repeats) and records requests."""

    def __init__(self, *script: Step, body: bytes = b"body", length: bool = True) -> None:
        self.script = script or (200,)
        self.body = body
        self.length = length
        self.requests: list[httpx.Request] = []
        self.headers: list[httpx.Headers] = []
        self.bodies: list[bytes] = []
        self.streams: list[Body] = []
        self.closed = False
        self.entered = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.headers.append(request.headers.copy())
        assert isinstance(request.stream, httpx.AsyncByteStream)
        self.bodies.append(b"".join([chunk async for chunk in request.stream]))
        step = self.script[min(len(self.requests), len(self.script)) - 1]
        if isinstance(step, Exception):
            raise step
        if callable(step):
            step = await step(request)
        status, headers = step if isinstance(step, tuple) else (step, {})
        if self.length:
            headers = {**headers, "content-length": str(len(self.body))}
        stream = Body(self.body)
        self.streams.append(stream)
        return httpx.Response(status, headers=headers, stream=stream, request=request)

    async def __aenter__(self) -> Upstream:
        self.entered = True
        return self

    async def aclose(self) -> None:
        self.closed = True


class Attempts:
    """A minimal retry policy for tests: retries what the call's classifier calls retryable."""

    name = "attempts"

    def __init__(self, attempts: int, *, delay: float = 0.0) -> None:
        self.attempts = attempts
        self.delay = delay
        self.between: list[Callable[[], None]] = []

    async def execute(self, call: Any, ctx: Context, /) -> Any:
        for attempt in range(1, self.attempts + 1):
            ctx.attempt = attempt
            try:
                result = await call(ctx)
            except Exception as exc:
                verdict = ctx.classifier.classify_exception(exc).verdict
                if attempt == self.attempts or not verdict.is_retryable:
                    raise
            else:
                verdict = ctx.classifier.classify_result(result).verdict
                if attempt == self.attempts or not verdict.is_retryable:
                    return result
            for hook in self.between:
                hook()
            await ctx.clock.sleep(self.delay)
        raise AssertionError("unreachable")


class Capture:
    """Records what the transport put in the context."""

    name = "capture"

    def __init__(self) -> None:
        self.contexts: list[tuple[str, str | None, Any]] = []

    async def execute(self, call: Any, ctx: Context, /) -> Any:
        self.contexts.append((ctx.operation, ctx.key, ctx.classifier))
        return await call(ctx)


def client_for(
    upstream: httpx.AsyncBaseTransport, *policies: Any, clock: Any = None, **options: Any
) -> httpx.AsyncClient:
    pipeline = resilient.Pipeline(*policies, clock=clock, telemetry=False)
    return httpx.AsyncClient(transport=ResilientTransport(pipeline, upstream, **options))


# --- request bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"content": b"\x00payload\xff" * 100},
        {"content": "text body"},
        {"json": {"id": 7, "tags": ["a", "b"]}},
        {"data": {"field": "value"}},
        {"files": {"upload": ("a.bin", io.BytesIO(b"file bytes" * 50))}},
        {"files": {"upload": ("a.txt", b"inline bytes")}, "data": {"k": "v"}},
    ],
    ids=["bytes", "text", "json", "form", "multipart-file", "multipart-bytes"],
)
async def test_in_memory_bodies_are_resent_byte_for_byte(body: dict[str, Any]) -> None:
    """Every attempt sends exactly the same non-empty body."""
    upstream = Upstream(503, 503, 200)
    async with client_for(upstream, Attempts(3)) as client:
        response = await client.put(URL, **body)
    assert response.status_code == 200
    assert len(upstream.bodies) == 3
    assert upstream.bodies[0]
    assert upstream.bodies[0] == upstream.bodies[1] == upstream.bodies[2]


async def _chunks() -> AsyncIterator[bytes]:
    for part in (b"stream-", b"ed-", b"body"):
        yield part


@pytest.mark.parametrize("failure", [503, httpx.ReadError("reset"), httpx.ConnectError("no")])
async def test_streamed_body_is_never_retried(failure: Step) -> None:
    """A body from an async iterator is sent once, whole, and the failure is not retried."""
    upstream = Upstream(failure, 200)
    capture = Capture()
    async with client_for(upstream, Attempts(3), capture) as client:
        if isinstance(failure, Exception):
            with pytest.raises(type(failure)):
                await client.put(URL, content=_chunks())
        else:
            response = await client.put(URL, content=_chunks())
            assert response.status_code == 503
    assert upstream.bodies == [b"stream-ed-body"]
    classifier = capture.contexts[0][2]
    outcome = (
        classifier.classify_exception(failure)
        if isinstance(failure, Exception)
        else classifier.classify_result(httpx.Response(503))
    )
    assert outcome.verdict is Verdict.FAILURE


class Twice:
    """A policy that ignores classification and always runs the call a second time."""

    name = "twice"

    async def execute(self, call: Any, ctx: Context, /) -> Any:
        with contextlib.suppress(Exception):
            await call(ctx)
        return await call(ctx)


async def test_streamed_body_is_never_resent_even_when_a_policy_insists() -> None:
    """A policy retrying regardless gets the first answer again; the stream is sent once."""
    upstream = Upstream(503, 200, body=b"first answer")
    async with client_for(upstream, Twice()) as client:
        response = await client.put(URL, content=_chunks())
    assert response.status_code == 503
    assert response.content == b"first answer"
    assert upstream.bodies == [b"stream-ed-body"]


@pytest.mark.parametrize(
    ("first", "sends"),
    [
        (503, 1),
        (httpx.ReadError("reset"), 1),
        (httpx.ConnectError("refused"), 2),
    ],
)
async def test_post_is_resent_only_when_it_never_left_whatever_the_policy(
    first: Step, sends: int
) -> None:
    """The transport itself refuses to send a POST twice, unless it provably never left."""
    upstream = Upstream(first, 200)
    async with client_for(upstream, Twice()) as client:
        if isinstance(first, Exception) and sends == 1:
            with pytest.raises(type(first)):
                await client.post(URL, content=b"charge")
        else:
            response = await client.post(URL, content=b"charge")
            assert response.status_code == (200 if sends == 2 else first)
    assert len(upstream.requests) == sends


async def test_cut_post_is_not_resent(clock: FakeClock) -> None:
    """A POST whose attempt was cut by a timeout cannot be replayed: UnsafeResendError."""

    async def slow(request: httpx.Request) -> int:
        await clock.sleep(5.0)
        return 200

    upstream = Upstream(slow, 200)
    async with client_for(upstream, Twice(), Timeout(1.0), clock=clock) as client:
        with pytest.raises(UnsafeResendError) as caught:
            await client.post(URL, content=b"charge")
    assert isinstance(caught.value, httpx.RequestError)
    assert isinstance(caught.value, resilient.ResilientError)
    assert len(upstream.requests) == 1


class _Pipe:
    """A file-like upload that can be read once (a pipe or a socket)."""

    name = "pipe.bin"

    def __init__(self) -> None:
        self._data = io.BytesIO(b"once only")

    def read(self, size: int = -1) -> bytes:
        return self._data.read(size)

    def seekable(self) -> bool:
        return False


async def test_non_seekable_multipart_upload_is_not_retried() -> None:
    """A multipart body with a non-seekable file cannot be replayed, so it is sent once."""
    upstream = Upstream(503, 200)
    async with client_for(upstream, Attempts(3)) as client:
        response = await client.put(URL, files={"f": _Pipe()})  # type: ignore[dict-item]
    assert response.status_code == 503
    assert len(upstream.bodies) == 1
    assert b"once only" in upstream.bodies[0]


async def test_request_read_into_memory_becomes_replayable() -> None:
    """A streamed request the caller read first (request.aread()) is retried normally."""
    upstream = Upstream(503, 200)
    async with client_for(upstream, Attempts(3)) as client:
        request = client.build_request("PUT", URL, content=_chunks())
        await request.aread()
        response = await client.send(request)
    assert response.status_code == 200
    assert upstream.bodies == [b"stream-ed-body"] * 2


# --- closing discarded responses ----------------------------------------------------------


async def test_small_retryable_response_is_released_before_the_retry_waits() -> None:
    """A 503 with a small body is read and closed before the retry policy sleeps."""
    upstream = Upstream(503, 200)
    retry = Attempts(2)
    seen: list[tuple[bool, bool]] = []
    first = upstream.streams
    retry.between.append(lambda: seen.append((first[0].read, first[0].closed)))
    async with client_for(upstream, retry) as client:
        response = await client.get(URL)
    assert seen == [(True, True)]
    assert response.status_code == 200


async def test_exhausted_retries_return_the_last_response_with_its_body() -> None:
    """The caller gets the last 503 whole; every earlier response was closed."""
    upstream = Upstream(503, body=b"busy, come back later")
    async with client_for(upstream, Attempts(3)) as client:
        response = await client.get(URL)
    assert response.status_code == 503
    assert response.text == "busy, come back later"
    assert len(upstream.streams) == 3
    assert all(stream.closed for stream in upstream.streams)


async def test_unknown_length_response_is_closed_when_the_next_attempt_starts() -> None:
    """A chunked 503 is not buffered; it is closed as soon as the next attempt begins."""
    upstream = Upstream(503, 503, 200, length=False)
    retry = Attempts(3)
    seen: list[list[bool]] = []
    retry.between.append(lambda: seen.append([s.closed for s in upstream.streams]))
    async with client_for(upstream, retry) as client:
        response = await client.get(URL)
        assert response.content == b"body"
    assert seen == [[False], [True, False]]
    assert [s.closed for s in upstream.streams] == [True, True, True]


async def test_buffer_limit_zero_disables_buffering() -> None:
    """With buffer_limit=0 a retryable response is closed, not read, when discarded."""
    upstream = Upstream(503, 200)
    async with client_for(upstream, Attempts(2), buffer_limit=0) as client:
        await client.get(URL)
    assert (upstream.streams[0].read, upstream.streams[0].closed) == (False, True)


class RaiseAfter:
    """Runs the call, then fails (as a timeout firing during a backoff would)."""

    name = "raise-after"

    async def execute(self, call: Any, ctx: Context, /) -> Any:
        await call(ctx)
        raise RuntimeError("policy failed after the attempt")


async def test_response_is_closed_when_the_pipeline_raises() -> None:
    """A response the pipeline never returns is closed when the call fails."""
    upstream = Upstream(200)
    async with client_for(upstream, RaiseAfter()) as client:
        with pytest.raises(RuntimeError):
            await client.get(URL)
    assert upstream.streams[0].closed


class Fallback:
    """Returns its own response instead of the attempt's."""

    name = "fallback"

    async def execute(self, call: Any, ctx: Context, /) -> Any:
        await call(ctx)
        return httpx.Response(203, content=b"cached")


async def test_attempt_response_is_closed_when_a_policy_returns_another() -> None:
    """When a policy substitutes a result, the attempt's response is released."""
    upstream = Upstream(500)
    async with client_for(upstream, Fallback()) as client:
        response = await client.get(URL)
    assert response.status_code == 203
    assert response.content == b"cached"
    assert upstream.streams[0].closed


class CancelAfter:
    """Cancels the caller's scope once the attempt returned."""

    name = "cancel-after"

    def __init__(self) -> None:
        self.scope: anyio.CancelScope | None = None

    async def execute(self, call: Any, ctx: Context, /) -> Any:
        result = await call(ctx)
        assert self.scope is not None
        self.scope.cancel()
        await anyio.lowlevel.checkpoint()
        return result


async def test_cancelled_call_closes_the_response_it_held() -> None:
    """Cancellation propagates and still releases the attempt's connection."""
    upstream = Upstream(200)
    policy = CancelAfter()
    async with client_for(upstream, policy) as client:
        with anyio.CancelScope() as scope:
            policy.scope = scope
            await client.get(URL)
        assert scope.cancelled_caught
    assert upstream.streams[0].closed


async def test_attempt_timeout_leaves_nothing_open(clock: FakeClock) -> None:
    """A per-attempt timeout cutting a slow upstream is retried; no response stays open."""

    async def slow(request: httpx.Request) -> int:
        await clock.sleep(10.0)
        return 200

    upstream = Upstream(slow, 200)
    async with client_for(upstream, Attempts(2), Timeout(1.0), clock=clock) as client:
        response = await client.get(URL)
    assert response.status_code == 200
    assert len(upstream.requests) == 2
    assert len(upstream.streams) == 1
    assert clock.now() == 1.0


async def test_concurrent_requests_keep_their_own_state() -> None:
    """Per-request state lives in the call: concurrent retried requests never mix bodies."""

    async def echo(request: httpx.Request) -> tuple[int, dict[str, str]]:
        await anyio.lowlevel.checkpoint()
        return 200, {"x-echo": request.content.decode()}

    counts: dict[str, int] = {}

    async def flaky(request: httpx.Request) -> Any:
        name = request.content.decode()
        counts[name] = counts.get(name, 0) + 1
        if counts[name] == 1:
            return 503
        return await echo(request)

    upstream = Upstream(flaky)
    results: dict[str, str] = {}
    async with client_for(upstream, Attempts(3)) as client:

        async def one(i: int) -> None:
            response = await client.post(URL, content=f"req-{i}", headers={"Idempotency-Key": "k"})
            results[f"req-{i}"] = response.headers["x-echo"]

        async with anyio.create_task_group() as group:
            for i in range(50):
                group.start_soon(one, i)
    assert results == {f"req-{i}": f"req-{i}" for i in range(50)}
    assert set(counts.values()) == {2}


# --- operation, key and classifier --------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "extensions", "operation", "key"),
    [
        ("http://svc.test/users/42?token=s3cret", {}, "GET svc.test", "svc.test"),
        ("http://svc.test:8080/users/42", {}, "GET svc.test:8080", "svc.test:8080"),
        ("https://u:pw@svc.test/users/42", {}, "GET svc.test", "svc.test"),
        (
            "http://svc.test/users/42?q=1",
            {ROUTE_EXTENSION: "/users/{id}"},
            "GET /users/{id}",
            "svc.test",
        ),
        ("http://svc.test/users/42", {ROUTE_EXTENSION: 42}, "GET svc.test", "svc.test"),
    ],
)
async def test_operation_is_bounded_and_key_is_the_host(
    url: str, extensions: dict[str, Any], operation: str, key: str
) -> None:
    """Operation is method + route template or host, never the URL; key is host[:port]."""
    capture = Capture()
    async with client_for(Upstream(200), capture) as client:
        await client.get(url, extensions=extensions)
    assert capture.contexts[0][:2] == (operation, key)


async def test_hosts_get_their_own_keys() -> None:
    """Two hosts through one transport are two partitions for keyed policies."""
    capture = Capture()
    async with client_for(Upstream(200), capture) as client:
        await client.get("http://a.test/")
        await client.get("http://b.test/")
    assert [c[1] for c in capture.contexts] == ["a.test", "b.test"]


async def test_pipeline_classifier_replaces_the_http_table() -> None:
    """A classifier given to the pipeline is the one the transport uses."""
    upstream = Upstream(404, 200)
    pipeline = resilient.Pipeline(
        Attempts(3),
        classify=[on_result(lambda r: r.status_code == 404, verdict=Verdict.TRANSIENT)],
        telemetry=False,
    )
    async with httpx.AsyncClient(transport=ResilientTransport(pipeline, upstream)) as client:
        response = await client.get(URL)
    assert response.status_code == 200
    assert len(upstream.requests) == 2


async def test_classify_option_wins_over_the_pipeline() -> None:
    """ResilientTransport(classify=...) overrides both the pipeline's and the default."""
    upstream = Upstream(418, 200)
    pipeline = resilient.Pipeline(
        Attempts(3),
        classify=[on_result(lambda r: True, verdict=Verdict.SUCCESS)],
        telemetry=False,
    )
    classify = http_classifier(on_result(lambda r: r.status_code == 418, verdict=Verdict.TRANSIENT))
    transport = ResilientTransport(pipeline, upstream, classify=classify)
    assert transport.classifier is classify
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(URL)
    assert response.status_code == 200


async def test_user_classifier_still_protects_posts() -> None:
    """Idempotency applies on top of a user classifier: a POST 503 is not retried."""
    upstream = Upstream(503, 200)
    classify = [on_result(lambda r: r.status_code == 503, verdict=Verdict.TRANSIENT)]
    async with client_for(upstream, Attempts(3), classify=classify) as client:
        response = await client.post(URL, content=b"charge")
    assert response.status_code == 503
    assert len(upstream.requests) == 1


# --- deadline propagation -----------------------------------------------------------------


async def test_remaining_deadline_is_sent_on_every_attempt(clock: FakeClock) -> None:
    """Each attempt carries the milliseconds the caller still waits."""
    upstream = Upstream(503, 503, 200)
    async with client_for(
        upstream, Timeout(2.0), Attempts(3, delay=0.5), clock=clock, propagate_deadline=True
    ) as client:
        await client.get(URL)
    assert [h[DEADLINE_HEADER] for h in upstream.headers] == ["2000", "1500", "1000"]


async def test_deadline_of_a_per_attempt_timeout_is_the_tighter_one(clock: FakeClock) -> None:
    """With a total and a per-attempt timeout the header carries the tighter budget."""
    upstream = Upstream(200)
    async with client_for(
        upstream, Timeout(5.0), Timeout(0.25), clock=clock, propagate_deadline=True
    ) as client:
        await client.get(URL)
    assert upstream.requests[0].headers[DEADLINE_HEADER] == "250"


async def test_enclosing_deadline_is_propagated(clock: FakeClock) -> None:
    """A request made inside another pipeline's call carries that call's remaining time."""
    upstream = Upstream(200)
    outer = resilient.Pipeline(Timeout(4.0), clock=clock, telemetry=False)
    async with client_for(upstream, clock=clock, propagate_deadline=True) as client:

        async def handler() -> httpx.Response:
            await clock.sleep(1.5)
            return await client.get(URL)

        await outer.call(handler)
    assert upstream.headers[0][DEADLINE_HEADER] == "2500"


async def test_no_deadline_header_without_a_deadline_or_opt_in(clock: FakeClock) -> None:
    """Nothing is sent when the call has no deadline, or propagation is off."""
    unbounded = Upstream(200)
    async with client_for(unbounded, clock=clock, propagate_deadline=True) as client:
        await client.get(URL)
    quiet = Upstream(200)
    async with client_for(quiet, Timeout(1.0), clock=clock) as client:
        await client.get(URL)
    assert DEADLINE_HEADER not in unbounded.requests[0].headers
    assert DEADLINE_HEADER not in quiet.requests[0].headers


async def test_deadline_header_name_is_configurable(clock: FakeClock) -> None:
    """deadline_header renames the header."""
    upstream = Upstream(200)
    async with client_for(
        upstream,
        Timeout(3.0),
        clock=clock,
        propagate_deadline=True,
        deadline_header="X-Budget-Ms",
    ) as client:
        await client.get(URL)
    assert upstream.requests[0].headers["x-budget-ms"] == "3000"


# --- telemetry ----------------------------------------------------------------------------


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_one_client_span_per_attempt_with_http_semconv(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """Each attempt is a CLIENT span with method, server, status and resend count."""
    provider, exporter = spans
    upstream = Upstream(503, 503, 200)
    async with client_for(
        upstream, Attempts(3), telemetry=True, tracer_provider=provider
    ) as client:
        await client.get("http://user:secretpw@svc.test:8080/items/9?token=s3cret")
    finished = exporter.get_finished_spans()
    assert [s.name for s in finished] == ["GET", "GET", "GET"]
    assert {s.kind for s in finished} == {trace.SpanKind.CLIENT}
    first, second, third = (_attrs(s) for s in finished)
    assert first["http.request.method"] == "GET"
    assert first["server.address"] == "svc.test"
    assert first["server.port"] == 8080
    assert first["url.full"] == "http://svc.test:8080/items/9"
    assert "http.request.resend_count" not in first
    assert (second["http.request.resend_count"], third["http.request.resend_count"]) == (1, 2)
    assert [a["http.response.status_code"] for a in (first, second, third)] == [503, 503, 200]
    assert (first["error.type"], "error.type" in third) == ("503", False)
    assert finished[0].status.status_code is trace.StatusCode.ERROR
    assert finished[2].status.status_code is trace.StatusCode.UNSET
    text = repr([_attrs(s) for s in finished])
    assert "s3cret" not in text
    assert "secretpw" not in text


async def test_span_names_use_the_route_template(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """With a route template the span is "GET /items/{id}" and carries url.template."""
    provider, exporter = spans
    async with client_for(Upstream(200), telemetry=True, tracer_provider=provider) as client:
        await client.get(URL + "/9", extensions={ROUTE_EXTENSION: "/items/{id}"})
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /items/{id}"
    assert _attrs(span)["url.template"] == "/items/{id}"


async def test_failed_attempt_span_records_the_error_type(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """An exception ends the attempt span with error.type and an error status."""
    provider, exporter = spans
    upstream = Upstream(httpx.ConnectError("refused"))
    async with client_for(upstream, telemetry=True, tracer_provider=provider) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(URL)
    (span,) = exporter.get_finished_spans()
    assert _attrs(span)["error.type"] == "httpx.ConnectError"
    assert "http.response.status_code" not in _attrs(span)
    assert span.status.status_code is trace.StatusCode.ERROR


async def test_trace_context_is_injected_per_attempt(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """Each attempt sends its own span as the traceparent."""
    provider, exporter = spans
    upstream = Upstream(503, 200)
    async with client_for(
        upstream, Attempts(2), telemetry=True, tracer_provider=provider
    ) as client:
        await client.get(URL)
    sent = [h["traceparent"] for h in upstream.headers]
    expected = [
        f"00-{s.context.trace_id:032x}-{s.context.span_id:016x}-{s.context.trace_flags:02x}"
        for s in exporter.get_finished_spans()
    ]
    assert sent == expected


class SpanInContext:
    """Stands in for the telemetry observer: stores the pipeline call's span in ctx.span."""

    name = "span-in-context"

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    async def execute(self, call: Any, ctx: Context, /) -> Any:
        span = self.tracer.start_span("pipeline call")
        ctx.span = span
        try:
            return await call(ctx)
        finally:
            span.end()


async def test_attempt_spans_are_children_of_the_call_span(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """ctx.span, when it is an OpenTelemetry span, is the parent of every attempt."""
    provider, exporter = spans
    policy = SpanInContext(provider.get_tracer("test"))
    async with client_for(
        Upstream(503, 200), policy, Attempts(2), telemetry=True, tracer_provider=provider
    ) as client:
        await client.get(URL)
    *attempts, call = exporter.get_finished_spans()
    assert call.name == "pipeline call"
    assert [s.parent.span_id if s.parent else None for s in attempts] == [call.context.span_id] * 2


async def test_attempt_spans_nest_under_the_telemetry_layers_call_span(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """With resilient's own telemetry on, each attempt is a child of the pipeline call span."""
    from resilient.telemetry import Telemetry

    provider, exporter = spans
    pipeline = resilient.Pipeline(
        Attempts(2),
        name="api",
        telemetry=Telemetry(tracer_provider=provider, metrics=False),
    )
    transport = ResilientTransport(pipeline, Upstream(503, 200), tracer_provider=provider)
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get(URL, extensions={ROUTE_EXTENSION: "/items"})
    finished = exporter.get_finished_spans()
    attempts = [s for s in finished if s.kind is trace.SpanKind.CLIENT]
    (call,) = [s for s in finished if s.kind is not trace.SpanKind.CLIENT]
    assert [s.name for s in attempts] == ["GET /items", "GET /items"]
    assert {s.parent.span_id for s in attempts if s.parent} == {call.context.span_id}
    assert len(attempts) == 2


async def test_attempt_spans_default_to_the_current_span(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """Without a call span, attempts are children of the caller's current span."""
    provider, exporter = spans
    tracer = provider.get_tracer("test")
    async with client_for(Upstream(200), telemetry=True, tracer_provider=provider) as client:
        with tracer.start_as_current_span("handler") as handler:
            await client.get(URL)
    attempt, _ = exporter.get_finished_spans()
    assert attempt.parent is not None
    assert attempt.parent.span_id == handler.get_span_context().span_id


async def test_cancelled_attempt_span_is_ended(
    spans: tuple[TracerProvider, InMemorySpanExporter], clock: FakeClock
) -> None:
    """An attempt cut by a timeout still ends its span, marked cancelled."""
    provider, exporter = spans

    async def slow(request: httpx.Request) -> int:
        await clock.sleep(5.0)
        return 200

    async with client_for(
        Upstream(slow), Timeout(1.0), clock=clock, telemetry=True, tracer_provider=provider
    ) as client:
        with pytest.raises(resilient.TimeoutExceeded):
            await client.get(URL)
    (span,) = exporter.get_finished_spans()
    assert _attrs(span)["error.type"] == "cancelled"


class NullObserver:
    def start(self, ctx: Context, /) -> None:
        pass

    def end(self, ctx: Context, error: BaseException | None, /, *rest: Any) -> None:
        pass

    def event(self, ctx: Context, event: Any, /) -> None:
        pass


async def test_spans_follow_the_pipelines_telemetry_switch(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """telemetry=None: spans when the pipeline has telemetry, none when it is off."""
    provider, exporter = spans
    quiet = resilient.Pipeline(telemetry=False)
    observed = resilient.Pipeline(telemetry=NullObserver())
    for pipeline in (quiet, observed):
        transport = ResilientTransport(pipeline, Upstream(200), tracer_provider=provider)
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get(URL)
    assert len(exporter.get_finished_spans()) == 1


async def test_no_sdk_means_no_span_until_one_is_configured(
    spans: tuple[TracerProvider, InMemorySpanExporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an SDK nothing is created; an SDK configured later is picked up."""
    provider, exporter = spans
    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)
    upstream = Upstream(200)
    async with client_for(upstream, telemetry=True) as client:
        await client.get(URL)
        monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
        await client.get(URL)
    assert "traceparent" not in upstream.headers[0]
    assert "traceparent" in upstream.headers[1]
    assert len(exporter.get_finished_spans()) == 1


async def test_telemetry_false_sends_no_trace_context(
    spans: tuple[TracerProvider, InMemorySpanExporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With telemetry off nothing is recorded and no traceparent is added, even with an SDK
    configured globally (a ``tracer_provider=`` with ``telemetry=False`` is refused)."""
    provider, exporter = spans
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    upstream = Upstream(200)
    async with client_for(upstream, telemetry=False) as client:
        await client.get(URL)
    assert exporter.get_finished_spans() == ()
    assert "traceparent" not in upstream.requests[0].headers


# --- lifecycle and configuration ----------------------------------------------------------


async def test_closing_the_client_closes_the_wrapped_transport() -> None:
    """The client's close reaches the transport being wrapped."""
    upstream = Upstream(200)
    async with client_for(upstream) as client:
        await client.get(URL)
        assert upstream.entered
    assert upstream.closed


async def test_aclose_closes_the_wrapped_transport() -> None:
    """ResilientTransport.aclose() closes what it wraps."""
    upstream = Upstream(200)
    transport = ResilientTransport(resilient.Pipeline(telemetry=False), upstream)
    await transport.aclose()
    assert upstream.closed
    assert transport.transport is upstream


def test_default_transport_is_an_http_transport() -> None:
    """Without a transport, requests go through httpx.AsyncHTTPTransport."""
    transport = ResilientTransport(resilient.Pipeline(telemetry=False))
    assert isinstance(transport.transport, httpx.AsyncHTTPTransport)


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"pipeline": object()}, "ResilientTransport.pipeline"),
        ({"transport": object()}, "ResilientTransport.transport"),
        ({"retry_methods": "GET"}, "ResilientTransport.retry_methods"),
        ({"retry_methods": ["GET", "BAD METHOD"]}, "ResilientTransport.retry_methods"),
        ({"idempotency_header": "bad header"}, "ResilientTransport.idempotency_header"),
        ({"deadline_header": ""}, "ResilientTransport.deadline_header"),
        ({"propagate_deadline": "yes"}, "ResilientTransport.propagate_deadline"),
        ({"telemetry": "on"}, "ResilientTransport.telemetry"),
        ({"buffer_limit": -1}, "ResilientTransport.buffer_limit"),
        ({"classify": 42}, "ResilientTransport.classify"),
    ],
)
def test_invalid_options_name_the_parameter(options: dict[str, Any], parameter: str) -> None:
    """Every refused option says which one and why."""
    arguments: dict[str, Any] = {"pipeline": resilient.Pipeline(telemetry=False)}
    arguments.update(options)
    with pytest.raises(ConfigurationError) as caught:
        ResilientTransport(**arguments)
    assert caught.value.parameter == parameter


def test_public_names_are_sorted_and_complete() -> None:
    """resilient.httpx exports an (isort-style) sorted __all__ matching its public names."""
    module = resilient.httpx
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }

    def isort_style(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert list(module.__all__) == sorted(set(module.__all__), key=isort_style)
    assert public - {"annotations"} == set(module.__all__)


async def test_non_retryable_post_failures_still_open_the_breaker(clock: FakeClock) -> None:
    """A POST 503 is FAILURE: not retried, but it counts against the host's breaker."""
    upstream = Upstream(503)
    breaker = resilient.CircuitBreaker(
        failure_rate=0.5, window=60.0, minimum_calls=5, max_waiting=0
    )
    async with client_for(upstream, Attempts(3), breaker, clock=clock) as client:
        for _ in range(5):
            assert (await client.post(URL, content=b"{}")).status_code == 503
        with pytest.raises(resilient.CircuitOpenError):
            await client.post(URL, content=b"{}")
    assert len(upstream.requests) == 5


# --- the standard preset ------------------------------------------------------------------


def test_standard_builds_the_recommended_order_per_host() -> None:
    """standard(): resilient.standard()'s order, with per-host breaker, limiter and bulkhead."""
    transport = resilient.httpx.standard(
        Upstream(200),
        total_timeout=8.0,
        attempt_timeout=2.0,
        attempts=4,
        minimum_calls=10,
        rate=50.0,
        max_concurrent=8,
    )
    total, retry, breaker, hedge, limiter, bulkhead = transport.pipeline.policies
    assert isinstance(total, Timeout)
    assert isinstance(retry, resilient.Retry)
    assert isinstance(hedge, resilient.Hedge)
    assert isinstance(breaker, resilient.CircuitBreaker)
    assert isinstance(limiter, resilient.RateLimiter)
    assert isinstance(bulkhead, resilient.Bulkhead)
    attempt = hedge.unhedged  # the cut of a request that may not be sent twice
    assert isinstance(attempt, Timeout)
    assert (total.seconds, hedge.delay, attempt.seconds) == (8.0, 2.0, 2.0)
    assert hedge.budget is retry.budget
    assert (retry.attempts, breaker.minimum_calls, bulkhead.max_concurrent) == (4, 10, 8)
    assert (breaker.per_key, limiter.per_key, bulkhead.per_key) == (True, True, True)
    assert transport.pipeline.name == "http"
    assert isinstance(transport.classifier, resilient.Classifier)


async def test_standard_retries_and_isolates_hosts(clock: FakeClock) -> None:
    """The preset retries a 503 and opens the breaker of a failing host only."""
    upstream = Upstream(503, 200)
    transport = resilient.httpx.standard(upstream, clock=clock, minimum_calls=4, telemetry=False)
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("http://a.test/")).status_code == 200
        assert len(upstream.requests) == 2
        upstream.script = (500,)
        refused: list[str | None] = []
        for _ in range(5):
            try:
                await client.get("http://a.test/")
            except resilient.CircuitOpenError as exc:
                refused.append(exc.key)
        # a.test's breaker opened (its callers then wait and probe it, once per 0.2 s)
        breaker = transport.pipeline.policies[2]
        assert isinstance(breaker, resilient.CircuitBreaker)
        assert breaker.snapshot("a.test").trips >= 1
        assert set(refused) <= {"a.test"}
        upstream.script = (200,)
        assert (await client.get("http://b.test/")).status_code == 200
        assert breaker.snapshot("b.test").state == "closed"


def test_standard_validates_through_the_policies() -> None:
    """Bad preset options are refused with the name the caller wrote."""
    with pytest.raises(ConfigurationError) as caught:
        resilient.httpx.standard(attempts=0)
    assert caught.value.parameter == "standard.attempts"
    with pytest.raises(ConfigurationError) as caught:
        resilient.httpx.standard(buffer_limit=-1)
    assert caught.value.parameter == "standard.buffer_limit"
    with pytest.raises(ConfigurationError) as caught:
        resilient.httpx.standard(per_key=False)
    assert caught.value.parameter == "standard.per_key"


async def test_standard_bulkhead_keeps_hosts_apart(clock: FakeClock) -> None:
    """A host whose calls hang holds only its own bulkhead slots."""
    release = anyio.Event()

    async def route(request: httpx.Request) -> int:
        if request.url.host == "slow.test":
            await release.wait()
        return 200

    upstream = Upstream(route)
    transport = resilient.httpx.standard(
        upstream,
        clock=clock,
        max_concurrent=1,
        max_waiting=0,
        total_timeout=None,
        attempt_timeout=None,
        attempts=1,
        telemetry=False,
    )
    async with httpx.AsyncClient(transport=transport) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.get, "http://slow.test/")
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(resilient.BulkheadFullError):
            await client.get("http://slow.test/")
        assert (await client.get("http://fast.test/")).status_code == 200
        release.set()


def test_standard_names_the_pipeline_after_its_upstream() -> None:
    """Two upstreams never share a metric series: the pipeline takes the host (and a
    non-default port) of ``base_url`` unless ``name=`` is given."""
    assert resilient.httpx.standard(base_url="https://payments.example/v1").pipeline.name == (
        "payments.example"
    )
    assert resilient.httpx.standard(base_url="http://127.0.0.1:8080").pipeline.name == (
        "127.0.0.1:8080"
    )
    named = resilient.httpx.standard(name="billing", base_url="https://payments.example")
    assert named.pipeline.name == "billing"
    assert resilient.httpx.standard().pipeline.name == "http"
    for bad in ("/relative/path", 42, ""):
        with pytest.raises(ConfigurationError) as caught:
            resilient.httpx.standard(base_url=bad)  # type: ignore[arg-type]
        assert caught.value.parameter == "standard.base_url"

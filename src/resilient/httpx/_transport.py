"""``ResilientTransport``: a whole pipeline behind an ``httpx.AsyncClient``."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, Final, TypeVar, final

import anyio
import httpx
from opentelemetry import trace

from resilient import Bulkhead, RejectedError, __version__
from resilient import _validate as check
from resilient._classify import DEFAULT_CLASSIFIER, ClassifierLike, Outcome, Verdict, as_classifier
from resilient._classify import Classification as _Classification
from resilient._exceptions import ConfigurationError, ResilientError
from resilient._pipeline import Pipeline
from resilient.extend import BulkheadSnapshot
from resilient.timers import current_loop

from ._classify import NEVER_SENT, NotRetryable, http_classifier
from ._errors import as_http_error
from ._spans import end_span, start_span

__all__ = [
    "DEADLINE_HEADER",
    "DEFAULT_BUFFER_LIMIT",
    "IDEMPOTENT_EXTENSION",
    "IDEMPOTENT_METHODS",
    "ROUTE_EXTENSION",
    "ResilientTransport",
    "UnsafeResendError",
]

IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
"""Methods RFC 9110 defines as idempotent: retried by default."""

ROUTE_EXTENSION: Final = "resilient.route"
"""Request extension naming the route template, e.g. ``{"resilient.route": "/users/{id}"}``.

It becomes the operation (``"GET /users/{id}"``) in events, metrics and span names.
"""

IDEMPOTENT_EXTENSION: Final = "resilient.idempotent"
"""Request extension overriding idempotency for one request: ``True`` allows retries of a
POST or PATCH, ``False`` forbids them for any method."""

DEADLINE_HEADER: Final = "x-request-deadline"
"""Header carrying the caller's remaining time budget to the server.

Its value is the number of milliseconds the caller still waits, a non-negative decimal
integer measured when the attempt is sent (relative, so the two clocks need not agree).
``resilient.asgi`` reads it on the server side.
"""

DEFAULT_BUFFER_LIMIT: Final = 64 * 1024
"""The default ``buffer_limit``: bytes of a request body buffered so it can be sent again."""

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_NO_BODY_STATUSES = frozenset({204, 304})
_T = TypeVar("_T")
_UNBOUNDED = 10**15  # the pool gate's waiting room: unbounded (httpx's pool timeout bounds it)


def _replayable(stream: object) -> bool:
    """Whether a request body can be sent again byte for byte."""
    if isinstance(stream, httpx.ByteStream):
        return True
    # Multipart bodies are rebuilt from their fields on every iteration; files are rewound
    # by httpx, which works only for seekable files.
    fields = getattr(stream, "fields", None)
    if type(stream).__name__ != "MultipartStream" or not isinstance(fields, list):
        return False
    for field in fields:
        file = getattr(field, "file", None)
        if file is None or isinstance(file, str | bytes):
            continue
        seekable = getattr(file, "seekable", None)
        if not (callable(seekable) and seekable()):
            return False
    return True


def _shareable(stream: object) -> bool:
    """Whether two attempts may send a (replayable) body at the same time: bytes in memory
    yes; a multipart body with open files no (both copies would seek the same file)."""
    if isinstance(stream, httpx.ByteStream):
        return True
    fields = getattr(stream, "fields", None)
    return isinstance(fields, list) and all(
        isinstance(getattr(field, "file", None), str | bytes | None) for field in fields
    )


def _copy(request: httpx.Request) -> httpx.Request:
    """A request of its own for one attempt: its own headers (the deadline and trace
    headers differ per attempt) and extensions; the same replayable body."""
    return httpx.Request(
        request.method,
        request.url,
        headers=request.headers.copy(),
        stream=request.stream,
        extensions=dict(request.extensions),
    )


async def _close(response: httpx.Response) -> None:
    # Shielded: a discarded response must release its pooled connection even when the
    # task is being cancelled (a timeout cutting a call must not poison the pool).
    with contextlib.suppress(Exception):
        await _to_the_end(response.aclose)


async def _send_to_the_end(
    transport: httpx.AsyncBaseTransport, request: httpx.Request
) -> httpx.Response:
    """``transport.handle_async_request(request)``, whose cleanup a cancellation cannot cut.

    On asyncio the request runs in a task of its own, and a cancellation of the caller
    reaches it as an anyio cancel scope's, which httpcore's shielded cleanup holds off (a
    task cancellation would cut it and leave the connection busy forever). The caller waits
    for that cleanup, then its cancellation goes on. On trio shields hold anyway.
    """
    loop = current_loop()
    if loop is None:
        return await transport.handle_async_request(request)
    scope = anyio.CancelScope()

    async def send() -> httpx.Response | None:
        with scope:
            return await transport.handle_async_request(request)
        return None  # cancelled through the scope

    task, answer = _apart(loop, send)
    try:
        response = await answer
    except asyncio.CancelledError:
        scope.cancel()
        late = await _end_of(task)
        if late is not None:  # it answered as the caller left: give the connection back
            await _to_the_end(late.aclose)
        raise
    assert response is not None
    return response


async def _to_the_end(close: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``close()`` to its end even if the caller is cancelled meanwhile, then re-raise.

    httpcore shields its cleanup with anyio cancel scopes; asyncio's ``Task.cancel()`` (what
    ``asyncio.timeout`` and the library's own timers use) goes through them, and a second
    cancellation landing while httpcore returns a connection leaves the pool believing the
    connection busy forever. On asyncio the close therefore runs in a task of its own, which
    such a cancellation cannot reach; on trio the shield is enough.
    """
    loop = current_loop()
    if loop is None:  # trio: its cancellation respects the shield
        with anyio.CancelScope(shield=True):
            await close()
        return
    task, answer = _apart(loop, close)
    try:
        await answer
    except asyncio.CancelledError:
        await _end_of(task)  # finish closing first; the cancellation then goes on
        raise


def _apart(
    loop: asyncio.AbstractEventLoop, work: Callable[[], Coroutine[Any, Any, _T]]
) -> tuple[asyncio.Task[_T | None], asyncio.Future[_T]]:
    """Run ``work()`` in a task of its own; return the task and a future of its outcome.

    Awaiting the future, unlike awaiting the task, never cancels the task: a cancellation
    of the caller cancels the future alone. The task settles the future itself, which wakes
    the caller one loop iteration sooner than ``asyncio.shield(task)`` would. The task's
    own result is ``work()``'s result too (``None`` when it raised): a caller that left can
    still get hold of it through ``_end_of(task)``.
    """
    answer: asyncio.Future[_T] = loop.create_future()

    async def settle() -> _T | None:
        try:
            result = await work()
        except asyncio.CancelledError:
            answer.cancel()
            raise
        except Exception as exc:
            if not answer.done():
                answer.set_exception(exc)
            return None
        if not answer.done():
            answer.set_result(result)
        return result

    return loop.create_task(settle()), answer


async def _end_of(task: asyncio.Task[_T | None]) -> _T | None:
    """Wait for ``task`` to end, whatever cancellations the caller meanwhile receives (the
    caller re-raises its own); its result (``None`` when it was cancelled)."""
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    return None if task.cancelled() else task.result()


def _pool_size(transport: httpx.AsyncBaseTransport) -> int | None:
    """The ``max_connections`` of an ``httpx.AsyncHTTPTransport``'s pool (``None``: unknown).

    httpx and httpcore do not publish it; a transport they built has it on its pool.
    """
    if not isinstance(transport, httpx.AsyncHTTPTransport):
        return None
    size = getattr(getattr(transport, "_pool", None), "_max_connections", None)
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    return None


@final
class _PoolGate:
    """Admits at most as many requests into the connection pool as it has connections.

    httpcore's pool leaks a connection when a request is cancelled while it waits inside the
    pool for a connection (encode/httpcore#1093): the connection created for it stays
    "connecting" forever, until the pool answers every request with ``PoolTimeout``. Waiting
    here instead, in a ``Bulkhead`` (FIFO, cancel-safe: a slot handed to a caller that is
    cancelled at that moment is passed on), means no request ever waits inside httpcore's
    pool. A slot is held until the response is closed, exactly as long as the pool holds
    the connection.
    """

    __slots__ = ("bulkhead", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.bulkhead = Bulkhead(
            max_concurrent=size, max_waiting=_UNBOUNDED, max_wait=math.inf, name="http_pool"
        )

    async def enter(self, request: httpx.Request, ctx: Any) -> None:
        """Take a slot, waiting at most httpx's pool timeout (then ``httpx.PoolTimeout``)."""
        bulkhead = self.bulkhead
        if bulkhead.try_acquire():
            return
        timeouts = request.extensions.get("timeout")
        limit = timeouts.get("pool") if isinstance(timeouts, dict) else None
        if limit is None:
            await bulkhead.acquire()
            return
        clock = ctx.clock
        scope = clock.timeout_at(clock.now() + limit)
        try:
            async with scope:
                await bulkhead.acquire()
        except TimeoutError:
            if not scope.expired():
                raise  # the call's own deadline, not the pool timeout
            raise httpx.PoolTimeout(
                f"resilient: no connection of the pool ({self.size}) freed within {limit:g}s",
                request=request,
            ) from None

    def leave(self) -> None:
        """Give the slot back."""
        self.bulkhead.release()


_gates: weakref.WeakKeyDictionary[httpx.AsyncBaseTransport, _PoolGate] = weakref.WeakKeyDictionary()


def _gate_for(transport: httpx.AsyncBaseTransport, limits: httpx.Limits | None) -> _PoolGate | None:
    """The one gate of ``transport``'s pool, shared by every ``ResilientTransport`` over it."""
    pooled = _pool_size(transport)
    if pooled is not None and pooled > _UNBOUNDED:
        pooled = None  # httpcore keeps "no limit" as sys.maxsize
    size = pooled if limits is None else limits.max_connections
    if pooled is not None and limits is not None and limits.max_connections != pooled:
        raise ConfigurationError(
            "ResilientTransport.limits",
            limits,
            f"max_connections={limits.max_connections} disagrees with the transport's own pool "
            f"({pooled} connections); give the limits to the transport, or to this option alone",
        )
    if size is None or size > _UNBOUNDED:
        return None  # no limit (httpcore reads None as sys.maxsize): the pool never queues
    if size < 1:
        raise ConfigurationError(
            "ResilientTransport.limits.max_connections", size, "must be at least 1"
        )
    gate = _gates.get(transport)
    if gate is None:
        gate = _gates[transport] = _PoolGate(size)
    elif gate.size != size:
        raise ConfigurationError(
            "ResilientTransport.limits",
            limits,
            f"the transport's pool is already gated at {gate.size} connections by another "
            "ResilientTransport",
        )
    return gate


@final
class _HeldStream(httpx.AsyncByteStream):
    """A response body holding a pool slot until it is closed (once, whatever happens)."""

    __slots__ = ("_gate", "_stream")

    def __init__(self, stream: httpx.AsyncByteStream, gate: _PoolGate) -> None:
        self._stream = stream
        self._gate: _PoolGate | None = gate

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        gate = self._gate
        if gate is None:
            return
        self._gate = None
        try:
            # To its end, so the pool gets its connection back (httpcore updates its own
            # bookkeeping here) before the slot is given to the next caller.
            await _to_the_end(self._stream.aclose)
        finally:
            gate.leave()


async def _send_gated(
    transport: httpx.AsyncBaseTransport, gate: _PoolGate, request: httpx.Request, ctx: Any
) -> httpx.Response:
    """Send holding a slot of the pool gate, until the response is closed."""
    await gate.enter(request, ctx)
    try:
        response = await _send_to_the_end(transport, request)
    except BaseException:
        gate.leave()
        raise
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    response.stream = _HeldStream(stream, gate)
    return response


@final
class _Tracing:
    """The attempt tracer, resolved once an SDK (a real tracer provider) is configured."""

    __slots__ = ("_provider", "_tracer")

    def __init__(self, provider: trace.TracerProvider | None) -> None:
        self._provider = provider
        self._tracer: trace.Tracer | None = None

    def tracer(self) -> trace.Tracer | None:
        tracer = self._tracer
        if tracer is not None:
            return tracer
        provider = self._provider or trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider):
            return None  # no SDK configured (yet): no span at all, not even a no-op one
        tracer = self._tracer = provider.get_tracer("resilient.httpx", __version__)
        return tracer


@final
class UnsafeResendError(httpx.RequestError, ResilientError):
    """A policy asked to send a request again when sending it twice is not safe.

    The transport classifies such requests (a POST without an ``Idempotency-Key``, a streamed
    body) as not retryable; a retry policy with its own ``classify=`` may still try again.
    The transport then answers with the previous attempt's outcome without re-sending; this
    error is raised only when there is no such outcome (the previous attempt was cancelled).
    """


@final
class _Exchange:
    """One request through the pipeline: the function each attempt calls, and its state."""

    __slots__ = (
        "ctx",
        "ended",
        "error",
        "inflight",
        "last",
        "left",
        "owner",
        "replayable",
        "request",
        "resendable",
        "route",
        "sends",
        "stray",
    )

    def __init__(
        self,
        owner: ResilientTransport,
        request: httpx.Request,
        route: str | None,
        replayable: bool,
        resendable: bool,
    ) -> None:
        self.owner = owner
        self.request = request
        self.route = route
        self.replayable = replayable
        self.resendable = resendable
        self.sends = 0
        self.left = False
        self.last: httpx.Response | None = None
        self.error: Exception | None = None
        self.stray: list[httpx.Response] | None = None
        self.inflight = 0
        self.ended = 0  # attempts that returned or raised (cancelled ones excluded)
        self.ctx: Any = None

    def _replay(self) -> httpx.Response:
        # Not safe to send again: answer with what the server already said (or what failed).
        if self.error is not None:
            raise self.error
        if self.last is not None:
            return self.last
        raise UnsafeResendError(
            f"resilient: {self.request.method} {self.ctx.key} is not safe to send twice (not "
            "idempotent, or a streamed body), and its previous attempt was cut; not re-sent"
        )

    async def _again(self) -> httpx.Response | None:
        """Before a resend: the answer to give instead when it is not safe, else ``None``."""
        if not self.resendable and (self.left or not self.replayable):
            return self._replay()
        last = self.last
        if last is not None and not self.inflight:
            # A new attempt while none runs (a retry) means the previous response is being
            # discarded, whatever the retry policy does with it: release its connection now.
            # Not beside a running attempt (a hedge): the round may still answer with it;
            # every response not returned is closed when the request ends.
            self.last = None
            await _close(last)
        return None

    async def __call__(self) -> httpx.Response:
        if self.sends:
            instead = await self._again()
            if instead is not None:
                return instead
        owner = self.owner
        ctx = self.ctx
        inflight = self.inflight
        request, span = self._prepare(inflight)
        settled: httpx.Response | None = None
        failed: BaseException | None = None
        ended = self.ended
        gate = owner._gate
        self.inflight = inflight + 1
        try:
            if gate is None:
                response = await owner._transport.handle_async_request(request)
            else:
                response = await _send_gated(owner._transport, gate, request, ctx)
            self._keep(response)
            if owner._buffer_limit and owner._worth_buffering(response, ctx, request):
                await owner._buffer(response)
            settled = response
        except Exception as exc:
            self.error = failed = exc
            if isinstance(exc, NEVER_SENT):
                self.left = False
            raise
        finally:
            self.inflight -= 1
            lost = False
            if settled is None and failed is None:
                # Cancelled. Another attempt of this request ended meanwhile, before the
                # deadline: it won and this one lost (not an error of this attempt).
                lost = self.ended > ended and ctx.clock.now() < ctx.deadline
            else:
                self.ended += 1
            if span is not None:
                end_span(span, settled, failed, lost=lost)
        return response

    def _prepare(self, inflight: int) -> tuple[httpx.Request, trace.Span | None]:
        """The request this attempt sends (its own copy beside a running attempt, which is
        sending the original object right now) and its client span."""
        request = self.request
        owner = self.owner
        ctx = self.ctx
        if inflight:
            request = _copy(request)
        header = owner._deadline_header
        if header is not None:
            remaining = ctx.remaining()
            if remaining != math.inf:
                request.headers[header] = str(max(0, int(remaining * 1000.0)))
        resends = self.sends
        self.sends = resends + 1
        self.left = True  # until proven otherwise: a cut attempt may have reached the server
        self.error = None
        tracing = owner._tracing
        tracer = None if tracing is None else tracing.tracer()
        if tracer is None:
            return request, None
        # An attempt starting while another runs is a hedge (retries never overlap).
        kind = "hedge" if inflight else ctx.attempt_kind
        return request, start_span(tracer, request, self.route, resends, ctx.span, kind)

    def _keep(self, response: httpx.Response) -> None:
        # Concurrent (hedged) attempts: every response not returned gets closed at the end.
        if self.last is not None:
            if self.stray is None:
                self.stray = []
            self.stray.append(self.last)
        self.last = response


def _wrapped(
    transport: httpx.AsyncBaseTransport | None, limits: httpx.Limits | None
) -> httpx.AsyncBaseTransport:
    """The transport that sends requests: the one given, or one built with ``limits``."""
    if limits is not None:
        if not isinstance(limits, httpx.Limits):
            raise ConfigurationError(
                "ResilientTransport.limits", limits, "expected an httpx.Limits or None"
            )
        check.optional(
            check.integer, "ResilientTransport.limits.max_connections", limits.max_connections
        )
    if transport is None:
        return (
            httpx.AsyncHTTPTransport()
            if limits is None
            else httpx.AsyncHTTPTransport(limits=limits)
        )
    if not callable(getattr(transport, "handle_async_request", None)):
        raise ConfigurationError(
            "ResilientTransport.transport", transport, "expected an httpx async transport"
        )
    return transport


def _methods(retry_methods: object) -> frozenset[str]:
    if isinstance(retry_methods, str) or not isinstance(retry_methods, Iterable):
        raise ConfigurationError(
            "ResilientTransport.retry_methods", retry_methods, "expected a set of methods"
        )
    methods = []
    for method in retry_methods:
        if not isinstance(method, str) or not _TOKEN.match(method):
            raise ConfigurationError(
                "ResilientTransport.retry_methods", method, "expected an HTTP method name"
            )
        methods.append(method.upper())
    return frozenset(methods)


def _headers(
    idempotency_header: object, deadline_header: object, propagate_deadline: object
) -> tuple[str | None, str | None]:
    """(idempotency header, deadline header to send or ``None``), checked together."""
    if idempotency_header is not None and not (
        isinstance(idempotency_header, str) and _TOKEN.match(idempotency_header)
    ):
        raise ConfigurationError(
            "ResilientTransport.idempotency_header",
            idempotency_header,
            "expected a header name or None",
        )
    if not isinstance(deadline_header, str) or not _TOKEN.match(deadline_header):
        raise ConfigurationError(
            "ResilientTransport.deadline_header", deadline_header, "expected a header name"
        )
    if not isinstance(propagate_deadline, bool):
        raise ConfigurationError(
            "ResilientTransport.propagate_deadline", propagate_deadline, "expected a bool"
        )
    if not propagate_deadline and deadline_header.lower() != DEADLINE_HEADER:
        raise ConfigurationError(
            "ResilientTransport.deadline_header",
            deadline_header,
            "only means something with ResilientTransport.propagate_deadline=True",
        )
    return idempotency_header, deadline_header.lower() if propagate_deadline else None


def _tracing(
    telemetry: object, tracer_provider: trace.TracerProvider | None, pipeline: Pipeline
) -> _Tracing | None:
    if telemetry is None:
        telemetry = pipeline.observer is not None
    elif not isinstance(telemetry, bool):
        raise ConfigurationError(
            "ResilientTransport.telemetry", telemetry, "expected True, False or None"
        )
    elif tracer_provider is not None and not telemetry:
        raise ConfigurationError(
            "ResilientTransport.tracer_provider",
            tracer_provider,
            "only means something without ResilientTransport.telemetry=False",
        )
    return _Tracing(tracer_provider) if telemetry else None


@final
class ResilientTransport(httpx.AsyncBaseTransport):
    """An httpx transport running every request through a ``Pipeline``.

    Use it as ``httpx.AsyncClient(transport=ResilientTransport(pipeline))``. Each request
    is one pipeline call whose attempts each send the request through the wrapped transport:

    - operation ``"<METHOD> <route>"`` when the request names its route template in the
      ``resilient.route`` extension, else ``"<METHOD> <host[:port]>"``; never the raw URL;
    - key ``host[:port]``, so keyed breakers and limiters isolate hosts from one another;
    - classified by ``classify``, else the pipeline's own classifier when it was given one,
      else ``http_classifier()`` (status table, transport errors, ``Retry-After``);
    - idempotency: only requests with a method in ``retry_methods``, an ``Idempotency-Key``
      header or the ``resilient.idempotent`` extension may be retried; for any other request
      a retryable failure becomes a FAILURE (counts against the breaker, not retried), except
      failures where the request provably never left (connect errors, connect and pool
      timeouts);
    - a body held in memory is re-sent byte for byte; a streamed body that cannot be
      replayed makes the request non-retryable and is never re-sent (not even empty);
    - every discarded response is closed, so retries never leak pooled connections;
    - no request waits inside httpcore's pool (where a cancelled waiter leaks a connection,
      encode/httpcore#1093): requests queue in a cancel-safe gate sized to the pool's
      ``max_connections`` and hold their slot until their response is closed;
    - a policy's refusal (``resilient.CircuitOpenError``, ``TimeoutExceeded``, ...) is raised
      refined into httpx's tree (``resilient.httpx.CircuitOpenError`` is also an
      ``httpx.TransportError``), so ``except httpx.HTTPError`` catches everything.

    The transport adds no policy of its own: what runs is exactly the pipeline.

    Args:
        pipeline: the policies to run each request through.
        transport: the transport that sends requests (default ``httpx.AsyncHTTPTransport()``);
            closed when this transport is closed.
        classify: classification replacing the default (a ``Classifier``, rules or a
            function of an ``Outcome``); build on ``http_classifier(*rules)`` to keep the
            HTTP table.
        retry_methods: methods that may be retried (default: the idempotent methods).
        idempotency_header: a header whose presence makes any request retryable (``None``
            to disable).
        propagate_deadline: send the remaining deadline in ``deadline_header`` on each
            attempt when the call has one.
        deadline_header: the header name for ``propagate_deadline``.
        telemetry: per-attempt OpenTelemetry client spans; ``None`` (default) follows the
            pipeline (on when the pipeline has telemetry).
        tracer_provider: the OpenTelemetry tracer provider (default: the global one).
        buffer_limit: a retryable response (a 503, a 429) whose body is at most this many
            bytes is read at once and its connection released, so a call waiting to retry
            holds no connection; ``0`` disables it.
        limits: the pool's ``httpx.Limits``: the default transport is built with them, and
            the pool gate is sized to their ``max_connections`` (default: read from an
            ``httpx.AsyncHTTPTransport``; no gate for other transports).

    Raises:
        ConfigurationError: an invalid option, or ``limits`` disagreeing with the gate another
            ``ResilientTransport`` already put on the same transport.
    """

    __slots__ = (
        "_buffer_limit",
        "_classifier",
        "_context",
        "_deadline_header",
        "_gate",
        "_idempotency_header",
        "_not_replayable",
        "_not_retryable",
        "_pipeline",
        "_plain_http",
        "_retry_methods",
        "_run",
        "_tracing",
        "_transport",
    )

    def __init__(
        self,
        pipeline: Pipeline,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        classify: ClassifierLike
        | Callable[[Outcome], _Classification | Verdict | None]
        | Iterable[Any]
        | None = None,
        retry_methods: Iterable[str] = IDEMPOTENT_METHODS,
        idempotency_header: str | None = "Idempotency-Key",
        propagate_deadline: bool = False,
        deadline_header: str = DEADLINE_HEADER,
        telemetry: bool | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        buffer_limit: int = DEFAULT_BUFFER_LIMIT,
        limits: httpx.Limits | None = None,
    ) -> None:
        options: dict[str, object] = {
            "pipeline": pipeline,
            "idempotency_header": idempotency_header,
            "deadline_header": deadline_header,
            "propagate_deadline": propagate_deadline,
            "telemetry": telemetry,
        }
        if not isinstance(options["pipeline"], Pipeline):
            raise ConfigurationError(
                "ResilientTransport.pipeline", pipeline, "expected a resilient.Pipeline"
            )
        transport = _wrapped(transport, limits)
        self._gate = _gate_for(transport, limits)
        self._pipeline = pipeline
        self._transport = transport
        self._context = pipeline.context
        self._run = pipeline.run
        classifier = as_classifier("ResilientTransport.classify", classify)
        if classifier is None:
            own = pipeline.classifier
            classifier = own if own is not DEFAULT_CLASSIFIER else http_classifier()
        # With the plain HTTP table (no user rules) a status below 400 is never retryable.
        self._plain_http = classify is None and classifier is not pipeline.classifier
        self._classifier: ClassifierLike = classifier
        self._not_retryable = NotRetryable(classifier, unsent_ok=True)
        self._not_replayable = NotRetryable(classifier, unsent_ok=False)
        self._retry_methods = _methods(retry_methods)
        self._idempotency_header, self._deadline_header = _headers(
            options["idempotency_header"], options["deadline_header"], propagate_deadline
        )
        self._tracing = _tracing(options["telemetry"], tracer_provider, pipeline)
        self._buffer_limit = check.integer(
            "ResilientTransport.buffer_limit", buffer_limit, minimum=0
        )

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline every request runs through."""
        return self._pipeline

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        """The wrapped transport that sends requests."""
        return self._transport

    def pool_snapshot(self) -> BulkheadSnapshot | None:
        """Requests holding a pool connection now (``running``) and waiting for one.

        A response holds its connection until it is closed. ``None`` when the transport does
        not know the pool's size (a transport other than ``httpx.AsyncHTTPTransport`` and no
        ``limits=``): requests then go to the wrapped transport unqueued.
        """
        gate = self._gate
        return None if gate is None else gate.bulkhead.snapshot()

    @property
    def classifier(self) -> ClassifierLike:
        """The classification used for requests that may be retried."""
        return self._classifier

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the pipeline and return the response it settles on.

        Raises:
            httpx.HTTPError: whatever the last attempt raised (httpx's exceptions,
                ``httpx.PoolTimeout`` from the pool gate), or a policy's refusal refined into
                httpx's tree (``resilient.httpx.CircuitOpenError``, ``TimeoutExceeded``...).
        """
        url = request.url
        host = url.host
        port = url.port
        key = host if port is None else f"{host}:{port}"
        method = request.method
        extensions = request.extensions
        route = extensions.get(ROUTE_EXTENSION)
        if not (route and isinstance(route, str)):
            route = None
        replayable = _replayable(request.stream)
        idempotent = extensions.get(IDEMPOTENT_EXTENSION)
        if idempotent is None:
            idempotent = method in self._retry_methods or (
                self._idempotency_header is not None and self._idempotency_header in request.headers
            )
        classifier: Any
        if not replayable:
            classifier = self._not_replayable
        else:
            classifier = self._classifier if idempotent else self._not_retryable
        exchange = _Exchange(self, request, route, replayable, replayable and bool(idempotent))
        ctx = self._context(
            exchange,
            operation=f"{method} {route or key}",
            key=key,
            classify=classifier,
        )
        exchange.ctx = ctx
        ctx.extra = request
        # A Hedge never sends an unsafe request twice, nor a body two copies cannot send at
        # the same time (files of a multipart body: retried one after another, not hedged).
        ctx.resendable = exchange.resendable and _shareable(request.stream)
        result: Any = None
        try:
            result = await self._run(ctx)
            return result  # type: ignore[no-any-return]
        except RejectedError as exc:
            as_http_error(exc, request)  # refined in place: the same exception, also httpx's
            raise
        finally:
            last = exchange.last
            if last is not None and last is not result:
                await _close(last)
            for response in exchange.stray or ():
                if response is not result:
                    await _close(response)

    def _worth_buffering(self, response: httpx.Response, ctx: Any, request: httpx.Request) -> bool:
        # A response the pipeline may retry is read now (when small) so that its connection
        # returns to the pool before the retry policy sleeps; the caller still gets the
        # whole body if this response ends up being returned. Synchronous on purpose: the
        # success path pays no coroutine (and, with the plain HTTP table, no classification).
        if self._plain_http and response.status_code < 400:
            return False
        try:
            verdict = ctx.classifier.classify_result(response).verdict
        except Exception:
            return False  # a broken classifier is reported by the policies that use it
        if verdict is not Verdict.TRANSIENT:
            return False
        if request.method != "HEAD" and response.status_code not in _NO_BODY_STATUSES:
            length = response.headers.get("content-length")
            if length is None or not length.isdigit() or int(length) > self._buffer_limit:
                return False  # unknown or large: closed when discarded instead
        stream = response.stream
        return isinstance(stream, httpx.AsyncByteStream) and not isinstance(
            stream, httpx.ByteStream
        )

    @staticmethod
    async def _buffer(response: httpx.Response) -> None:
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        body = None
        try:
            body = b"".join([chunk async for chunk in stream])
        finally:
            if body is None:
                await _close(response)
        await stream.aclose()
        response.stream = httpx.ByteStream(body)

    async def __aenter__(self) -> ResilientTransport:
        """Enter the wrapped transport."""
        await self._transport.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        """Exit (and so close) the wrapped transport."""
        await self._transport.__aexit__(exc_type, exc_value, traceback)

    async def aclose(self) -> None:
        """Close the wrapped transport and its connection pool."""
        await self._transport.aclose()

    def __repr__(self) -> str:
        return f"ResilientTransport({self._pipeline!r}, {self._transport!r})"

"""``ResilienceMiddleware``: protect a service from overload, abusive clients and dead work."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, final

import anyio

from resilient import _validate as check
from resilient._bulkhead import Bulkhead, _release, _Slots
from resilient._clock import SYSTEM_CLOCK, Clock
from resilient._context import Context, pop_deadline, push_deadline
from resilient._events import CallRejected, Listener, report_listener_error
from resilient._exceptions import (
    BulkheadFullError,
    ConfigurationError,
    RateLimitedError,
    RejectedError,
    TimeoutExceeded,
)
from resilient._pipeline import Pipeline
from resilient._ratelimit import RateLimiter
from resilient.overload import AdaptiveLimit, QueueDiscipline

from ._client import NO_PEER_KEY, ClientKeyResolver
from ._guard import (
    DISCONNECT,
    DONE,
    STREAMING,
    Exchange,
    Message,
    Receive,
    Scope,
    ScopeExchange,
    Send,
    Wheel,
    WheelExchange,
    new_request_deadline,
    new_scope_exchange,
    new_wheel_exchange,
)
from ._shedding import Shedding, concurrency_limit

__all__ = ["DEFAULT_EXCLUDE", "ASGIApp", "ResilienceMiddleware"]

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application."""

DEFAULT_EXCLUDE: Final = ("/health", "/healthz", "/livez", "/readyz")
"""Paths never shed, limited or timed out by default: orchestrator probes."""

_running_loop = asyncio._get_running_loop
_monotonic = time.monotonic
_current_task = asyncio.current_task
_get_ident = threading.get_ident
_ceil = math.ceil
_INF: Final = math.inf
_HEADER_MODES: Final = ("ietf", "legacy", "none")
_METHODS: Final = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)
_MAX_OPERATIONS: Final = 512
_MAX_HEADER_SETS: Final = 1024
_PROBE_INTERVAL: Final = 1.0  # seconds between telemetry probes while nothing records


def _plain(status: int, text: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[Message, Message]:
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(text)).encode()),
            *headers,
        ],
    }
    return start, {"type": "http.response.body", "body": text, "more_body": False}


async def _consume_cancellation(task: asyncio.Task[Any], cancelling: int) -> None:
    # We asked for a cancellation the app never saw (it returned first, or swallowed it):
    # take it here so it cannot hit the server's next await.
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError:
        if task.cancelling() > cancelling:
            raise


def _caller_deadline(value: bytes, now: float) -> float | None:
    # The caller's remaining time in milliseconds -> an absolute deadline (None: unusable).
    try:
        remaining = float(value) / 1000.0
    except ValueError:
        return None
    if not math.isfinite(remaining):
        return None
    return now + max(remaining, 0.0)


def _seconds_header(seconds: float) -> bytes:
    # Integer seconds, never 0: a client told "0" retries at once and is refused again.
    return str(max(1, math.ceil(seconds - 1e-9))).encode()


@final
class ResilienceMiddleware:
    """Pure ASGI middleware that protects the service it wraps.

    - **Load shedding**: ``max_concurrent`` requests run at once, up to ``max_waiting`` more
      wait at most ``max_wait`` seconds for a slot, the rest get ``503`` with
      ``Retry-After`` at once. A queued request whose client left or whose deadline passed is
      dropped without running.
    - **Rate limiting per client**: a token bucket per client key (``rate`` per second,
      ``burst`` at most); a refused request gets ``429`` with ``Retry-After`` (whole seconds
      until a token is available) and the IETF ``RateLimit``/``RateLimit-Policy`` headers.
    - **Deadlines**: the app must start its response within ``timeout`` seconds, else the
      client gets ``504`` and the app is cancelled. ``total_timeout`` bounds the whole
      response, streaming included; a caller's ``deadline_header`` tightens both. A deadline
      passing after the response started aborts it (the server closes the connection) rather
      than sending a second response.
    - **Client disconnect** cancels the app's work and frees its slot.

    Lifespan scopes pass through untouched; websocket scopes too, unless
    ``limit_websockets`` (handshakes are then rate-limited and shed, without holding a slot).
    The request body is never read by the middleware and responses pass through message by
    message. The app runs in the caller's task: context variables it sets stay visible.

    Use ``app.add_middleware(ResilienceMiddleware, max_concurrent=100, rate=200.0,
    timeout=5.0)`` in Starlette/FastAPI, or wrap any ASGI app:
    ``ResilienceMiddleware(app, max_concurrent=100)``.

    Args:
        app: the ASGI application to protect.
        max_concurrent: requests allowed to run at once (``None``: no limit), or an
            ``AdaptiveLimit`` that learns it from the requests' latency.
        max_waiting: requests allowed to wait for a slot (default: ``max_concurrent``).
        max_wait: the longest a request waits for a slot, in seconds (default 0.25).
        shed_retry_after: the ``Retry-After`` seconds sent with a ``503`` (default 1).
        rate: requests per second per client (``None``: no rate limit).
        burst: requests a client may send back to back (default: a tenth of a second's
            worth of ``rate``, at least 1).
        client_key: ``scope -> str | None`` giving the rate-limit key; ``None`` falls back to
            the default (the peer address, or forwarded address behind trusted proxies).
        trusted_proxies: addresses/networks of proxies whose forwarding header is believed;
            ``"unix"`` trusts a peer-less (unix socket) connection.
        forwarded_header: ``"x-forwarded-for"`` (default) or ``"forwarded"``.
        ipv6_prefix: IPv6 clients share a bucket per ``/ipv6_prefix`` network (default 64).
        max_keys: the most client buckets kept (least recently used evicted first).
        rate_limit_headers: ``"ietf"`` (``RateLimit-Policy`` and ``RateLimit``, the current
            httpapi draft), ``"legacy"`` (``RateLimit-Limit``/``-Remaining``/``-Reset``) or
            ``"none"``.
        timeout: seconds the app may take to start its response (``None``: no limit).
        total_timeout: seconds the whole response may take, streaming included.
        deadline_header: request header with the caller's remaining time in milliseconds
            (``None`` to ignore callers' deadlines).
        exclude: paths never shed, limited or timed out (exact, or a prefix ending in
            ``*``); default: common health-check paths.
        limit_websockets: apply rate limiting and shedding to websocket handshakes.
        queue: the waiting room's discipline (``Bulkhead.queue``): ``"fifo"`` (default),
            ``"codel"``, ``"lifo"`` or a discipline object (docs/overload.md).
        criticality: a request header name (values ``critical``, ``default``,
            ``sheddable``) or a function ``scope -> str | None`` giving each request's
            class; lower classes are shed first (docs/overload.md). ``None``: one class.
        critical_reserve: with ``criticality``, the share of ``max_concurrent`` only
            critical requests may use (sheddable ones leave twice that free), in [0, 0.5].
        name: the pipeline name in telemetry (default ``"asgi"``).
        clock: time source (default: the event loop's clock).
        listeners: event listeners (``CallRejected`` for every refusal).
        telemetry: as for ``Pipeline``: metrics and spans per route template.

    Raises:
        ConfigurationError: an invalid option.
    """

    __slots__ = (
        "_app",
        "_bulkhead",
        "_burst",
        "_clock",
        "_deadline_header",
        "_exclude_any",
        "_exclude_exact",
        "_exclude_prefixes",
        "_fast",
        "_header_cache",
        "_header_mode",
        "_header_mode_on",
        "_key",
        "_key_fallback",
        "_last_headers",
        "_last_remaining",
        "_last_reset",
        "_limit_websockets",
        "_limiter",
        "_listening",
        "_loop",
        "_max_wait",
        "_observe",
        "_operations",
        "_peer_key",
        "_pipeline",
        "_policy_header",
        "_quiet_until",
        "_rate",
        "_recording",
        "_shed_retry_after",
        "_shedding",
        "_slot_limit",
        "_slots",
        "_timed",
        "_timeout",
        "_total_timeout",
        "_wheel",
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_concurrent: int | AdaptiveLimit | None = None,
        max_waiting: int | None = None,
        max_wait: float = 0.25,
        shed_retry_after: float = 1.0,
        rate: float | None = None,
        burst: int | None = None,
        client_key: Callable[[Scope], str | None] | None = None,
        trusted_proxies: Iterable[str] = (),
        forwarded_header: str = "x-forwarded-for",
        ipv6_prefix: int = 64,
        max_keys: int = 10_000,
        rate_limit_headers: str = "ietf",
        timeout: float | None = None,
        total_timeout: float | None = None,
        deadline_header: str | None = "x-request-deadline",
        exclude: Iterable[str] = DEFAULT_EXCLUDE,
        limit_websockets: bool = False,
        name: str = "asgi",
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
        telemetry: Any = True,
        queue: str | QueueDiscipline = "fifo",
        criticality: str | Callable[[Scope], str | None] | None = None,
        critical_reserve: float = 0.2,
    ) -> None:
        if not callable(app):
            raise ConfigurationError("ResilienceMiddleware.app", app, "expected an ASGI app")
        self._app = app
        p = "ResilienceMiddleware."
        self._max_wait = check.non_negative(p + "max_wait", max_wait)
        self._shed_retry_after = check.positive(p + "shed_retry_after", shed_retry_after)
        self._clock: Clock = SYSTEM_CLOCK if clock is None else clock
        self._bulkhead: Bulkhead | None = None
        if max_concurrent is not None:
            limit = concurrency_limit(p + "max_concurrent", max_concurrent)
            if max_waiting is not None:
                waiting = max_waiting
            else:
                waiting = limit if isinstance(limit, int) else limit.max_limit
            self._bulkhead = Bulkhead(
                max_concurrent=limit,
                queue=queue,
                max_waiting=check.integer(p + "max_waiting", waiting, minimum=0),
                max_wait=self._max_wait,
                retry_after=self._shed_retry_after,
                clock=self._clock,
                name="load_shedding",
            )
        elif max_waiting is not None:
            raise ConfigurationError(
                p + "max_waiting", max_waiting, "needs max_concurrent to be set"
            )
        self._key = ClientKeyResolver(
            trusted_proxies=trusted_proxies,
            forwarded_header=forwarded_header,
            ipv6_prefix=ipv6_prefix,
        )
        self._key_fallback = (
            None if client_key is None else check.callable_(p + "client_key", client_key)
        )
        self._peer_key: Callable[[str], str] | None = (
            self._key.normalize if client_key is None and not self._key.uses_headers else None
        )
        self._header_mode = check.choice(
            p + "rate_limit_headers", rate_limit_headers, _HEADER_MODES
        )
        self._header_mode_on = self._header_mode != "none"
        self._limiter: RateLimiter | None = None
        self._rate = 1.0
        self._burst = 1.0
        self._policy_header: tuple[tuple[bytes, bytes], ...] = ()
        self._header_cache: dict[tuple[int, int], tuple[tuple[bytes, bytes], ...]] = {}
        self._last_remaining = -1
        self._last_reset = -1
        self._last_headers: tuple[tuple[bytes, bytes], ...] = ()
        if rate is not None:
            rate = check.positive(p + "rate", rate)
            if burst is None:
                burst = max(1, math.ceil(rate / 10))
            burst = check.integer(p + "burst", burst, minimum=1)
            max_keys = check.integer(p + "max_keys", max_keys, minimum=1)
            self._limiter = RateLimiter(
                rate=rate,
                burst=burst,
                max_wait=0.0,
                per_key=True,
                max_keys=max_keys,
                clock=self._clock,
                name="rate_limit",
            )
            self._rate = float(rate)
            self._burst = float(burst)
            window = max(1, math.ceil(burst / rate))
            if self._header_mode == "ietf":
                self._policy_header = (
                    (b"ratelimit-policy", f'"default";q={burst};w={window}'.encode()),
                )
            elif self._header_mode == "legacy":
                self._policy_header = ((b"ratelimit-limit", str(burst).encode()),)
        elif burst is not None:
            raise ConfigurationError(p + "burst", burst, "needs rate to be set")
        self._timeout = math.inf if timeout is None else check.positive(p + "timeout", timeout)
        self._total_timeout = (
            math.inf
            if total_timeout is None
            else check.positive(p + "total_timeout", total_timeout)
        )
        self._timed = self._timeout != math.inf or self._total_timeout != math.inf
        if deadline_header is not None:
            given: object = deadline_header
            if not isinstance(given, str) or not given.strip():
                raise ConfigurationError(
                    p + "deadline_header", deadline_header, "expected a header name or None"
                )
            self._deadline_header: bytes | None = deadline_header.strip().lower().encode()
        else:
            self._deadline_header = None
        exact: set[str] = set()
        prefixes: list[str] = []
        if isinstance(exclude, str):
            exclude = [exclude]
        for path in exclude:
            entry: object = path
            if not isinstance(entry, str) or not path.startswith("/"):
                raise ConfigurationError(p + "exclude", path, "expected paths starting with '/'")
            if path.endswith("*"):
                prefixes.append(path[:-1])
            else:
                exact.add(path)
        self._exclude_exact = frozenset(exact)
        self._exclude_prefixes = tuple(prefixes)
        self._exclude_any = bool(exact or prefixes)
        self._limit_websockets = bool(limit_websockets)
        listeners = tuple(listeners)
        self._pipeline = Pipeline(
            name=check.name(p + "name", name),
            clock=self._clock,
            listeners=listeners,
            telemetry=telemetry,
        )
        # Per request, a Context and the observer's start/end only while something records:
        # a listener, or telemetry with an SDK installed (``recording()`` is the cheap probe).
        observer = self._pipeline.observer
        self._listening = bool(listeners)
        self._observe = observer is not None or self._listening
        probe = getattr(observer, "recording", None)
        self._recording: Callable[[], bool] | None = probe if callable(probe) else None
        self._quiet_until = -math.inf  # no need to ask _recording() before (time.monotonic)
        self._slots: _Slots = _Slots()
        self._slot_limit = 0
        if self._bulkhead is not None:
            # The uncontended path takes and returns the bulkhead's slot inline.
            self._slots = self._bulkhead._slots
            self._slot_limit = self._bulkhead.max_concurrent
        # Adaptive limit or criticality: every request goes through the overload helper.
        self._shedding = Shedding.create(
            self._bulkhead,
            criticality=criticality,
            critical_reserve=critical_reserve,
            clock=self._clock,
        )
        if self._shedding is not None:
            self._slot_limit = 0
        # The wheel runtime needs asyncio's own clock; other clocks use the anyio runtime.
        self._fast = self._clock is SYSTEM_CLOCK
        self._wheel: Wheel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # see __call__
        self._operations: set[str] = set()

    @property
    def app(self) -> ASGIApp:
        """The wrapped application."""
        return self._app

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline whose name, listeners and telemetry the middleware reports through."""
        return self._pipeline

    @property
    def bulkhead(self) -> Bulkhead | None:
        """The ``Bulkhead`` that sheds load (``None`` without ``max_concurrent``)."""
        return self._bulkhead

    @property
    def rate_limiter(self) -> RateLimiter | None:
        """The per-client ``RateLimiter`` (``None`` without ``rate``)."""
        return self._limiter

    @property
    def in_flight(self) -> int:
        """Requests holding a concurrency slot right now."""
        return 0 if self._bulkhead is None else self._bulkhead.snapshot().running

    @property
    def waiting(self) -> int:
        """Requests queued for a slot right now."""
        return 0 if self._bulkhead is None else self._bulkhead.snapshot().waiting

    def _excluded(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        if path in self._exclude_exact:
            return True
        return bool(self._exclude_prefixes) and path.startswith(self._exclude_prefixes)

    def client_key(self, scope: Scope) -> str:
        """The rate-limit key of the request described by ``scope``."""
        custom = self._key_fallback
        if custom is not None:
            key = custom(scope)
            if key is not None:
                return str(key)[:256]
        return self._key(scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            if (
                scope["type"] == "websocket"
                and self._limit_websockets
                and not self._excluded(scope)
            ):
                await self._websocket(scope, receive, send)
            else:
                await self._app(scope, receive, send)
            return
        if self._exclude_any:
            path = scope.get("path", "")
            if path in self._exclude_exact or (
                self._exclude_prefixes and path.startswith(self._exclude_prefixes)
            ):
                await self._app(scope, receive, send)
                return
        # The hot path, in one frame: nothing below allocates for a feature not configured.
        # asyncio with the system clock runs on the shared wheel in the request's own task.
        # The loop is looked up once (a lookup costs a getpid() system call on CPython 3.11):
        # while it runs on this thread, it is the running loop here.
        task: asyncio.Task[Any] | None = None
        loop = self._loop
        if loop is not None and loop._thread_id == _get_ident():  # type: ignore[attr-defined]
            task = _current_task(loop)
        elif self._fast:
            task = self._find_task()
            if task is not None:
                loop = task.get_loop()
        if task is not None:
            # The system clock on asyncio reads time.monotonic(): the same number, directly.
            now = mono = _monotonic()
        else:
            mono = _monotonic()
            now = self._clock.now()
        ctx: Context | None = None
        if self._observe and (
            self._listening or (mono >= self._quiet_until and self._recording_now(mono))
        ):
            ctx = self._begin(scope)
        error: BaseException | None = None
        try:
            extra: tuple[tuple[bytes, bytes], ...] | None = None
            limiter = self._limiter
            if limiter is not None:
                peer_key = self._peer_key
                if peer_key is not None:  # no custom key, no trusted proxy: the peer address
                    client = scope.get("client")
                    key = peer_key(client[0]) if client else NO_PEER_KEY
                else:
                    key = self.client_key(scope)
                took = limiter._try_take_one_now(key, now)
                if took is None:  # an external store, or a queue: the asynchronous path
                    status = await limiter.try_acquire(key)
                    allowed, wait, tokens = status.allowed, status.retry_after, status.remaining
                else:
                    wait, tokens = took
                    allowed = not wait
                if self._header_mode_on:
                    # tokens is in [0, burst]: whole tokens left, whole seconds until full.
                    remaining = int(tokens + 1e-9)
                    reset = _ceil((self._burst - tokens) / self._rate - 1e-9)
                    if remaining == self._last_remaining and reset == self._last_reset:
                        extra = self._last_headers
                    else:
                        extra = self._rate_headers(remaining, reset)
                if not allowed:
                    await self._rate_limited(ctx, send, wait, extra or ())
                    return

            if self._timed:
                start_deadline = now + self._timeout
                end_deadline = now + self._total_timeout
            else:
                start_deadline = end_deadline = _INF
            header = self._deadline_header
            if header is not None:
                for name, value in scope.get("headers", ()):
                    if name == header:
                        caller = _caller_deadline(value, now)
                        if caller is not None:
                            if caller <= now:
                                await self._caller_deadline_passed(ctx, send, extra)
                                return
                            end_deadline = min(end_deadline, caller)
                        break
            if end_deadline < start_deadline:  # noqa: PLR1730 - min() costs a call per request
                start_deadline = end_deadline

            # The app's own resilient calls inherit the time left (resilient.remaining()),
            # and so does the bulkhead's queue wait.
            published = (
                None
                if start_deadline == _INF
                else new_request_deadline(self._clock, start_deadline, end_deadline, now)
            )
            if task is None:
                await self._run_anyio(
                    new_scope_exchange(scope, receive, send, now, extra, published, self._clock),
                    ctx,
                    send,
                )
                return
            wheel = self._wheel
            if wheel is None or wheel.loop is not loop:
                assert loop is not None
                wheel = self._wheel = Wheel(loop)
            exchange = new_wheel_exchange(scope, receive, send, now, extra, published, wheel, task)
            refusal: RejectedError | None = None
            cancelling = task.cancelling()
            wheel.recent[exchange] = None  # looked at on the next tick if still running
            if wheel.armed is None:
                wheel.arm_next()
            # The app's own resilient calls inherit the time left (resilient.remaining()),
            # and so does the bulkhead's queue wait: the published deadline reads like a
            # Context.
            token = None if published is None else push_deadline(published)  # type: ignore[arg-type]
            try:
                slots = self._slots
                if self._bulkhead is None:
                    await self._app(scope, exchange.receive, exchange.send)
                elif slots.running < self._slot_limit:
                    slots.running += 1  # a free slot: no yield, no allocation
                    try:
                        await self._app(scope, exchange.receive, exchange.send)
                    finally:
                        if slots.waiters:
                            _release(slots)
                        else:
                            slots.running -= 1
                else:
                    refusal = await self._queue_and_run(exchange)
            except asyncio.CancelledError:
                if exchange.reason is None or task.uncancel() > cancelling:
                    raise
            else:
                if exchange.reason is not None and task.uncancel() <= cancelling:
                    await _consume_cancellation(task, cancelling)
            finally:
                if token is not None:
                    pop_deadline(token)
                if exchange.tick or exchange.watch is not None:
                    exchange.finish()
                else:  # finish(), inlined for a request that ended before its first tick
                    exchange.phase = DONE
                    wheel.recent.pop(exchange, None)
            if refusal is not None:
                await self._refused(refusal, ctx, send, extra)
            elif exchange.reason is not None:
                await self._after_fire(exchange, ctx, send)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if ctx is not None:
                self._end(ctx, scope, error)

    def _find_task(self) -> asyncio.Task[Any] | None:
        # The asyncio task running this request, or None (trio, including trio as an asyncio
        # guest, or no task): the anyio runtime then. Caches a loop that records the thread
        # it runs on (asyncio's own loops do), so later requests skip this lookup.
        loop = _running_loop()
        if loop is None:
            return None
        task = _current_task(loop)
        if task is not None and getattr(loop, "_thread_id", None) == _get_ident():
            self._loop = loop
        return task

    async def _queue_and_run(self, exchange: WheelExchange) -> RejectedError | None:
        # No free slot: queue in the bulkhead (bounded by max_wait and the deadline).
        bulkhead = self._bulkhead
        assert bulkhead is not None
        if self._shedding is not None:
            return await self._shedding.run(
                self._app, exchange.scope, exchange.receive, exchange.send
            )
        try:
            await bulkhead.__aenter__()
        except (BulkheadFullError, TimeoutExceeded) as exc:
            return exc  # full, waited too long, or the deadline passed: never ran
        try:
            await self._app(exchange.scope, exchange.receive, exchange.send)
        finally:
            _release(self._slots)
        return None

    async def _refused(
        self,
        refusal: RejectedError,
        ctx: Context | None,
        send: Send,
        extra: tuple[tuple[bytes, bytes], ...] | None,
    ) -> None:
        if isinstance(refusal, BulkheadFullError):
            await self._shed(ctx, send, extra, waited=self._max_wait > 0.0)
        else:
            await self._reject(
                ctx,
                send,
                status=504,
                text=b"Gateway Timeout\n",
                exc=refusal,
                reason="deadline",
                headers=[*extra] if extra else [],
            )

    # -- HTTP ---------------------------------------------------------------------------------

    def _begin(self, scope: Scope) -> Context:
        method = scope.get("method", "")
        ctx = self._pipeline.context(operation=method if method in _METHODS else "OTHER")
        observer = ctx.observer
        if observer is not None:
            try:
                observer.start(ctx)
            except Exception:
                report_listener_error(observer)
        return ctx

    def _end(self, ctx: Context, scope: Scope, error: BaseException | None) -> None:
        ctx.operation = self._operation(scope, ctx.operation)
        observer = ctx.observer
        if observer is not None:
            try:
                observer.end(ctx, error if error is not None else ctx.extra, None)
            except Exception:
                report_listener_error(observer)

    def _operation(self, scope: Scope, fallback: str) -> str:
        # The route template once the app's router matched (Starlette/FastAPI set
        # scope["route"]); never the raw path. Bounded: at most _MAX_OPERATIONS names.
        route = scope.get("route")
        template = getattr(route, "path_format", None) or getattr(route, "path", None)
        if not isinstance(template, str) or not template:
            return fallback
        operations = self._operations
        if template not in operations:
            if len(operations) >= _MAX_OPERATIONS:
                return fallback
            operations.add(template)
        return template

    async def _rate_limited(
        self,
        ctx: Context | None,
        send: Send,
        retry_after: float,
        extra: tuple[tuple[bytes, bytes], ...],
    ) -> None:
        await self._reject(
            ctx,
            send,
            status=429,
            text=b"Too Many Requests\n",
            exc=RateLimitedError(
                "rate limit exceeded for this client",
                policy="rate_limit",
                retry_after=retry_after,
            ),
            reason="rate_limited",
            headers=[(b"retry-after", _seconds_header(retry_after)), *extra],
        )

    async def _caller_deadline_passed(
        self, ctx: Context | None, send: Send, extra: tuple[tuple[bytes, bytes], ...] | None
    ) -> None:
        await self._reject(
            ctx,
            send,
            status=504,
            text=b"Gateway Timeout\n",
            exc=TimeoutExceeded(
                "the caller's deadline passed before the request started",
                policy="request_timeout",
                timeout=0.0,
            ),
            reason="deadline",
            headers=[*extra] if extra else [],
        )

    async def _admit_and_run(self, exchange: Exchange) -> RejectedError | None:
        bulkhead = self._bulkhead
        if bulkhead is None:
            await self._app(exchange.scope, exchange.receive, exchange.send)
            return None
        if self._shedding is not None:
            return await self._shedding.run(
                self._app, exchange.scope, exchange.receive, exchange.send
            )
        try:
            await bulkhead.__aenter__()  # no yield while a slot is free
        except (BulkheadFullError, TimeoutExceeded) as exc:
            return exc  # refused (full, waited too long, or the deadline passed): never ran
        try:
            await self._app(exchange.scope, exchange.receive, exchange.send)
        finally:
            await bulkhead.__aexit__(None, None, None)
        return None

    async def _run_anyio(self, exchange: ScopeExchange, ctx: Context | None, send: Send) -> None:
        # trio, custom clocks (FakeClock), or no asyncio task: an anyio cancel scope in this
        # task, the timer and the disconnect watcher in helper tasks.
        published = exchange.published
        token = None if published is None else push_deadline(published)  # type: ignore[arg-type]
        error: Exception | None = None
        refusal: RejectedError | None = None
        try:
            async with anyio.create_task_group() as tg:
                exchange.task_group = tg
                exchange.cancel_scope = anyio.CancelScope()
                if exchange.published is not None:
                    exchange.tick = 1  # a timer holds the deadline: moving it needs rearm()
                    tg.start_soon(exchange.timer)
                exchange._start_watcher()
                try:
                    with exchange.cancel_scope:
                        refusal = await self._admit_and_run(exchange)
                except Exception as exc:  # re-raised below, outside the task group (no group)
                    error = exc
                finally:
                    exchange.finish()
                    tg.cancel_scope.cancel()
        finally:
            if token is not None:
                pop_deadline(token)
            exchange.finish()
        if error is not None:
            raise error
        if refusal is not None:
            await self._refused(refusal, ctx, send, exchange.extra_headers)
        elif exchange.reason is not None:
            await self._after_fire(exchange, ctx, send)

    async def _after_fire(self, exchange: Exchange, ctx: Context | None, send: Send) -> None:
        if exchange.reason == DISCONNECT:
            if ctx is not None:
                ctx.extra = asyncio.CancelledError("client disconnected")
            return
        phase = exchange.fired_phase
        now = self._clock.now()
        if ctx is not None:
            ctx.operation = self._operation(exchange.scope, ctx.operation)
        published = exchange.published
        assert published is not None  # only a deadline fires for a timeout
        if phase >= STREAMING:
            # Too late for a 504: abort the response; the server closes the connection.
            raise TimeoutExceeded(
                "request deadline exceeded after the response started",
                policy="request_timeout",
                timeout=published.end - exchange.started_at,
            )
        timeout = published.deadline_timeout
        exc = TimeoutExceeded(
            f"request deadline of {timeout:g}s exceeded",
            policy="request_timeout",
            timeout=timeout,
        )
        if ctx is not None and ctx.listening:
            ctx.emit(
                CallRejected(
                    pipeline=ctx.pipeline,
                    operation=ctx.operation,
                    policy="request_timeout",
                    at=now,
                    reason="deadline",
                    retry_after=None,
                    error_type="TimeoutExceeded",
                )
            )
        if ctx is not None:
            ctx.extra = exc
        start, body = _plain(504, b"Gateway Timeout\n", [])
        await send(start)
        await send(body)

    # -- refusals -----------------------------------------------------------------------------

    def _rate_headers(self, remaining: int, reset: int) -> tuple[tuple[bytes, bytes], ...]:
        # Built once per (remaining, reset) pair: a client under its limit sees few. The
        # last pair is remembered apart (consecutive requests mostly share it).
        cache = self._header_cache
        found = cache.get((remaining, reset))
        if found is None:
            if self._header_mode == "ietf":
                found = (
                    *self._policy_header,
                    (b"ratelimit", b'"default";r=%d;t=%d' % (remaining, reset)),
                )
            else:
                found = (
                    *self._policy_header,
                    (b"ratelimit-remaining", b"%d" % remaining),
                    (b"ratelimit-reset", b"%d" % reset),
                )
            if len(cache) < _MAX_HEADER_SETS:
                cache[(remaining, reset)] = found
        self._last_remaining = remaining
        self._last_reset = reset
        self._last_headers = found
        return found

    def _headers_for(self, tokens: float, until_full: float) -> tuple[tuple[bytes, bytes], ...]:
        # The RateLimit headers for a bucket holding ``tokens``, full in ``until_full`` s.
        if not self._header_mode_on:
            return ()
        remaining = int(tokens + 1e-9) if tokens > 0.0 else 0
        reset = _ceil(until_full - 1e-9) if until_full > 0.0 else 0
        return self._rate_headers(remaining, reset)

    def _recording_now(self, now: float) -> bool:
        # Whether telemetry records (an SDK is installed). While it does not, ask again at
        # most once a second: an SDK installed later is picked up within a second.
        recording = self._recording
        if recording is None or recording():
            return True
        self._quiet_until = now + _PROBE_INTERVAL
        return False

    async def _shed(
        self,
        ctx: Context | None,
        send: Send,
        extra: tuple[tuple[bytes, bytes], ...] | None,
        *,
        waited: bool = False,
    ) -> None:
        retry_after = self._shed_retry_after
        exc = BulkheadFullError(
            "server overloaded: no free slot" + (" in time" if waited else ""),
            policy="load_shedding",
            retry_after=retry_after,
        )
        await self._reject(
            ctx,
            send,
            status=503,
            text=b"Service Unavailable\n",
            exc=exc,
            reason="wait_timeout" if waited else "full",
            headers=[(b"retry-after", _seconds_header(retry_after)), *(extra or ())],
        )

    async def _reject(
        self,
        ctx: Context | None,
        send: Send,
        *,
        status: int,
        text: bytes,
        exc: RejectedError,
        reason: str,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        if ctx is not None:
            ctx.extra = exc
            if ctx.listening:
                ctx.emit(
                    CallRejected(
                        pipeline=ctx.pipeline,
                        operation=ctx.operation,
                        policy=exc.policy,
                        at=ctx.clock.now(),
                        reason=reason,
                        retry_after=exc.retry_after,
                        error_type=type(exc).__name__,
                    )
                )
        start, body = _plain(status, text, headers)
        await send(start)
        await send(body)

    # -- websockets ---------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal: tuple[int, bytes, list[tuple[bytes, bytes]]] | None = None
        limiter = self._limiter
        if limiter is not None:
            decision = await limiter.try_acquire(self.client_key(scope))
            if not decision.allowed:
                refusal = (
                    429,
                    b"Too Many Requests\n",
                    [
                        (b"retry-after", _seconds_header(decision.retry_after)),
                        *self._headers_for(decision.remaining, decision.reset),
                    ],
                )
        bulkhead = self._bulkhead
        if (
            refusal is None
            and bulkhead is not None
            and bulkhead.snapshot().running >= bulkhead.max_concurrent
        ):
            refusal = (
                503,
                b"Service Unavailable\n",
                [(b"retry-after", _seconds_header(self._shed_retry_after))],
            )
        if refusal is None:
            await self._app(scope, receive, send)
            return
        status, text, headers = refusal
        message = await receive()
        if message.get("type") != "websocket.connect":
            return
        if "websocket.http.response" in scope.get("extensions", {}):
            start, body = _plain(status, text, headers)
            start["type"] = "websocket.http.response.start"
            body["type"] = "websocket.http.response.body"
            await send(start)
            await send(body)
        else:
            await send({"type": "websocket.close", "code": 1013, "reason": "try again later"})

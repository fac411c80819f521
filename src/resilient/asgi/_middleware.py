"""``ResilienceMiddleware``: protect a service from overload, abusive clients and dead work."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, final

import anyio

from resilient import _validate as check
from resilient._bulkhead import Bulkhead
from resilient._classify import Classifier, Verdict, on_result
from resilient._clock import SYSTEM_CLOCK  # the default clock: deadlines are shared on it
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
from resilient._ratelimit import BucketStore, RateLimiter, RateLimitStatus
from resilient.overload import AdaptiveLimit, QueueDiscipline
from resilient.timers import Clock, SystemClock, current_loop

from ._client import NO_PEER_KEY, ClientKeyResolver
from ._guard import (
    DISCONNECT,
    STREAMING,
    Arrivals,
    Exchange,
    Message,
    Receive,
    RequestDeadline,
    Scope,
    ScopeExchange,
    Send,
    TimerExchange,
    new_request_deadline,
    new_scope_exchange,
    new_timer_exchange,
)
from ._shedding import Shedding, concurrency_limit

__all__ = ["DEFAULT_EXCLUDE", "ASGIApp", "ResilienceMiddleware"]

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application."""

DEFAULT_EXCLUDE: Final = ("/health", "/healthz", "/livez", "/readyz", "/metrics", "/metrics/")
"""Paths never shed, limited or timed out unless ``exclude_defaults=False``: orchestrator
probes and the Prometheus scrape endpoint (``resilient.telemetry.prometheus.add_route``)."""

_monotonic = time.monotonic
_current_task = asyncio.current_task
_ceil = math.ceil
_INF: Final = math.inf
_HEADER_MODES: Final = ("ietf", "legacy", "none")
_PASSED: Final = new_request_deadline(SYSTEM_CLOCK, 0.0, 0.0, 0.0)  # by identity: expired
_METHODS: Final = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)
_MAX_OPERATIONS: Final = 512
_P: Final = "ResilienceMiddleware."
# Bounds that keep every derived number finite (window, timers, header values).
FOREVER: Final = 1e9  # seconds (~31 years): a timeout this long or longer is no timeout
_DAY: Final = 86_400.0
_MIN_RATE: Final = 1e-6  # requests per second: one per ~11.6 days
_MAX_RATE: Final = 1e9
_MAX_BURST: Final = 1_000_000_000
_MAX_HEADER_SETS: Final = 1024
_PROBE_INTERVAL: Final = 1.0  # seconds between telemetry probes while nothing records

Refusal = str | RejectedError
"""Why a request never ran: a shed reason (``"full"``, ``"wait_timeout"``) or the deadline."""


def _seconds(parameter: str, value: object, *, allow_zero: bool = False) -> float:
    # A duration option: a finite number > 0 (>= 0 with allow_zero), or infinity. Anything
    # from FOREVER on means "no limit": deadline arithmetic on it stays finite.
    seconds = check.number(parameter, value, inclusive=allow_zero, allow_inf=True)
    return _INF if seconds >= FOREVER else seconds


def _is_server_error(status: object) -> bool:
    return isinstance(status, int) and status >= 500


def _is_client_error(status: object) -> bool:
    return isinstance(status, int) and 400 <= status < 500


# The outcome of a request the app answered, for telemetry: the response status.
_RESPONSE_CLASSIFIER: Final = Classifier(
    on_result(_is_server_error, verdict=Verdict.FAILURE),
    on_result(_is_client_error, verdict=Verdict.CLIENT_ERROR),
)


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
    if not remaining < FOREVER:  # NaN, infinite or absurdly far: no usable deadline
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
            ``AdaptiveLimit`` that learns it from the requests' latency (docs/overload.md).
        max_waiting: requests allowed to wait for a slot (default: ``max_concurrent``).
        max_wait: the longest a request waits for a slot, in seconds (default 0.25).
        shed_retry_after: the ``Retry-After`` seconds sent with a ``503`` (default 1, at
            most a day).
        rate: requests per second per client, 1e-6 to 1e9 (``None``: no rate limit).
        burst: requests a client may send back to back (default: a tenth of a second's
            worth of ``rate``, at least 1; at most 1e9).
        client_key: ``scope -> str | None`` giving the rate-limit key; ``None`` falls back to
            the default (the peer address, or forwarded address behind trusted proxies).
        trusted_proxies: addresses/networks of proxies whose forwarding header is believed;
            ``"unix"`` trusts a peer-less (unix socket) connection. Every host inside a
            trusted range may name any client in the header: prefer ``trusted_hops``.
        trusted_hops: the number of proxies in front of the service (each appends the
            address it saw to the forwarding header): the client is that many hops from the
            right, whatever a host behind them writes. With ``trusted_proxies`` too, the
            header is read only when the peer is one of them.
        forwarded_header: ``"x-forwarded-for"`` (default) or ``"forwarded"``.
        ipv6_prefix: IPv6 clients share a bucket per ``/ipv6_prefix`` network (default 64).
        max_keys: the most client buckets kept (least recently used evicted first).
        rate_store: where the client buckets live (a ``BucketStore``; default: this
            process). ``resilient.redis.RedisBucketStore`` shares each client's quota
            across every worker and server of the fleet.
        rate_limit_headers: ``"ietf"`` (``RateLimit-Policy`` and ``RateLimit``, the current
            httpapi draft), ``"legacy"`` (``RateLimit-Limit``/``-Remaining``/``-Reset``) or
            ``"none"``.
        timeout: seconds the app may take to start its response (``None``, ``math.inf`` or
            anything from ``FOREVER``, a billion seconds, on: no limit; above 1e15
            refused, as every number of the library).
        total_timeout: seconds the whole response may take, streaming included (as
            ``timeout`` for no limit).
        deadline_header: request header with the caller's remaining time in milliseconds
            (``None`` to ignore callers' deadlines).
        exclude: more paths never shed, limited or timed out (exact, or a prefix ending in
            ``*``), in addition to ``DEFAULT_EXCLUDE`` (health checks and ``/metrics``).
        exclude_defaults: ``False`` to drop ``DEFAULT_EXCLUDE`` (then only ``exclude``).
        limit_websockets: apply rate limiting and shedding to websocket handshakes.
        name: the pipeline name in telemetry (default ``"asgi"``).
        clock: time source (default: the event loop's clock).
        listeners: event listeners (``CallRejected`` for every refusal).
        telemetry: as for ``Pipeline``: metrics and spans per route template. A request's
            verdict is ``failure`` when the app answers 5xx, ``client_error`` for 4xx.
        queue: the waiting room's discipline (``Bulkhead.queue``): ``"fifo"`` (default),
            ``"codel"``, ``"lifo"`` or a discipline object (docs/overload.md).
        criticality: a request header name (values ``critical``, ``default``,
            ``sheddable``) or a function ``scope -> str | None`` giving each request's
            class; lower classes are shed first (docs/overload.md). ``None``: one class.
        critical_reserve: with ``criticality``, the share of ``max_concurrent`` only
            critical requests may use (sheddable ones leave twice that free), in [0, 0.5].

    Raises:
        ConfigurationError: an invalid option.
    """

    __slots__ = (
        "_app",
        "_arrivals",
        "_bulkhead",
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
        "_max_wait",
        "_observe",
        "_operations",
        "_peer_key",
        "_pipeline",
        "_policy_header",
        "_quiet_until",
        "_recording",
        "_shed_retry_after",
        "_shedding",
        "_timed",
        "_timeout",
        "_total_timeout",
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
        trusted_hops: int | None = None,
        forwarded_header: str = "x-forwarded-for",
        ipv6_prefix: int = 64,
        max_keys: int = 10_000,
        rate_store: BucketStore | None = None,
        rate_limit_headers: str = "ietf",
        timeout: float | None = None,
        total_timeout: float | None = None,
        deadline_header: str | None = "x-request-deadline",
        exclude: Iterable[str] = (),
        exclude_defaults: bool = True,
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
        if clock is not None and not callable(getattr(clock, "timeout_at", None)):
            raise ConfigurationError("ResilienceMiddleware.clock", clock, "expected a Clock")
        self._clock: Clock = SYSTEM_CLOCK if clock is None else clock
        self._init_shedding(max_concurrent, max_waiting, max_wait, shed_retry_after, queue)
        # Adaptive limit or criticality: every request goes through the overload helper.
        self._shedding = Shedding.create(
            self._bulkhead,
            criticality=criticality,
            critical_reserve=critical_reserve,
            clock=self._clock,
        )
        self._init_client_key(
            client_key, trusted_proxies, trusted_hops, forwarded_header, ipv6_prefix
        )
        self._init_rate_limit(rate, burst, max_keys, rate_store, rate_limit_headers)
        self._init_deadlines(timeout, total_timeout, deadline_header)
        self._init_exclude(exclude, exclude_defaults, limit_websockets)
        self._init_telemetry(name, listeners, telemetry)
        # The timer runtime needs the system clock (on asyncio: time.monotonic(), the timer
        # service's time base); other clocks use the anyio runtime.
        self._fast = type(self._clock) is SystemClock
        # The running loop's arrivals (set by _current_task() before any request uses them).
        self._arrivals: Arrivals | None = None
        self._operations: set[str] = set()

    def _init_shedding(
        self,
        max_concurrent: object,
        max_waiting: object,
        max_wait: object,
        retry_after: object,
        queue: str | QueueDiscipline = "fifo",
    ) -> None:
        # Load shedding: a Bulkhead whose queue wait is bounded by max_wait.
        self._max_wait = _seconds(_P + "max_wait", max_wait, allow_zero=True)
        self._shed_retry_after = check.number(
            _P + "shed_retry_after", retry_after, minimum=0.0, inclusive=False, maximum=_DAY
        )
        self._bulkhead: Bulkhead | None = None
        if max_concurrent is None:
            if max_waiting is not None:
                raise ConfigurationError(
                    _P + "max_waiting", max_waiting, "needs max_concurrent to be set"
                )
            return
        limit = concurrency_limit(_P + "max_concurrent", max_concurrent)
        if max_waiting is not None:
            waiting = max_waiting
        else:
            waiting = limit if isinstance(limit, int) else limit.max_limit
        self._bulkhead = Bulkhead(
            max_concurrent=limit,
            queue=queue,
            max_waiting=check.integer(_P + "max_waiting", waiting, minimum=0),
            max_wait=self._max_wait,
            retry_after=self._shed_retry_after,
            clock=self._clock,
            name="load_shedding",
        )

    def _init_client_key(
        self,
        client_key: Callable[[Scope], str | None] | None,
        trusted_proxies: Iterable[str],
        trusted_hops: int | None,
        forwarded_header: str,
        ipv6_prefix: int,
    ) -> None:
        self._key = ClientKeyResolver(
            trusted_proxies=trusted_proxies,
            trusted_hops=trusted_hops,
            forwarded_header=forwarded_header,
            ipv6_prefix=ipv6_prefix,
        )
        self._key_fallback = (
            None if client_key is None else check.callable_(_P + "client_key", client_key)
        )
        # No custom key and no forwarding header to read: the key is the peer address.
        self._peer_key: Callable[[str], str] | None = (
            self._key.normalize if client_key is None and not self._key.uses_headers else None
        )

    def _init_rate_limit(
        self,
        rate: object,
        burst: object,
        max_keys: object,
        store: BucketStore | None,
        header_mode: object,
    ) -> None:
        # The per-client RateLimiter and the RateLimit headers it answers with.
        self._header_mode = check.choice(_P + "rate_limit_headers", header_mode, _HEADER_MODES)
        self._header_mode_on = self._header_mode != "none"
        self._limiter: RateLimiter | None = None
        self._policy_header: tuple[tuple[bytes, bytes], ...] = ()
        self._header_cache: dict[tuple[int, int], tuple[tuple[bytes, bytes], ...]] = {}
        self._last_remaining = -1
        self._last_reset = -1
        self._last_headers: tuple[tuple[bytes, bytes], ...] = ()
        if rate is None:
            if burst is not None:
                raise ConfigurationError(_P + "burst", burst, "needs rate to be set")
            if store is not None:
                raise ConfigurationError(_P + "rate_store", store, "needs rate to be set")
            return
        per_second = check.number(_P + "rate", rate, minimum=_MIN_RATE, maximum=_MAX_RATE)
        if burst is None:
            burst = max(1, math.ceil(per_second / 10))
        size = check.integer(_P + "burst", burst, minimum=1, maximum=_MAX_BURST)
        self._limiter = RateLimiter(
            rate=per_second,
            burst=size,
            max_wait=0.0,
            per_key=True,
            max_keys=check.integer(_P + "max_keys", max_keys, minimum=1),
            store=store,
            clock=self._clock,
            name="rate_limit",
        )
        window = max(1, math.ceil(size / per_second))
        if self._header_mode == "ietf":
            self._policy_header = (
                (b"ratelimit-policy", f'"default";q={size};w={window}'.encode()),
            )
        elif self._header_mode == "legacy":
            self._policy_header = ((b"ratelimit-limit", str(size).encode()),)

    def _init_deadlines(self, timeout: object, total_timeout: object, header: object) -> None:
        self._timeout = _INF if timeout is None else _seconds(_P + "timeout", timeout)
        self._total_timeout = (
            _INF if total_timeout is None else _seconds(_P + "total_timeout", total_timeout)
        )
        if self._total_timeout < self._timeout < _INF:
            raise ConfigurationError(
                _P + "timeout",
                timeout,
                f"must not exceed {_P}total_timeout={total_timeout!r} (the response could never "
                "start in time and still finish within the total)",
            )
        self._timed = self._timeout != _INF or self._total_timeout != _INF
        self._deadline_header: bytes | None = None
        if header is not None:
            if not isinstance(header, str) or not header.strip():
                raise ConfigurationError(
                    _P + "deadline_header", header, "expected a header name or None"
                )
            self._deadline_header = header.strip().lower().encode()

    def _init_exclude(
        self, exclude: Iterable[str], exclude_defaults: object, limit_websockets: object
    ) -> None:
        if not isinstance(exclude_defaults, bool):
            raise ConfigurationError(
                _P + "exclude_defaults", exclude_defaults, "expected True or False"
            )
        if isinstance(exclude, str):
            exclude = [exclude]
        exact: set[str] = set()
        prefixes: list[str] = []
        for path in (*(DEFAULT_EXCLUDE if exclude_defaults else ()), *exclude):
            entry: object = path
            if not isinstance(entry, str) or not path.startswith("/"):
                raise ConfigurationError(_P + "exclude", path, "expected paths starting with '/'")
            if path.endswith("*"):
                prefixes.append(path[:-1])
            else:
                exact.add(path)
        self._exclude_exact = frozenset(exact)
        self._exclude_prefixes = tuple(prefixes)
        self._exclude_any = bool(exact or prefixes)
        if not isinstance(limit_websockets, bool):
            raise ConfigurationError(
                _P + "limit_websockets", limit_websockets, "expected True or False"
            )
        self._limit_websockets = limit_websockets

    def _init_telemetry(self, name: str, listeners: Iterable[Listener], telemetry: Any) -> None:
        listeners = tuple(listeners)
        self._pipeline = Pipeline(
            name=check.name(_P + "name", name),
            clock=self._clock,
            classify=_RESPONSE_CLASSIFIER,
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
        self._quiet_until = -_INF  # no need to ask _recording() before (time.monotonic)

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
            await self._not_http(scope, receive, send)
            return
        if self._exclude_any:
            path = scope.get("path", "")
            if path in self._exclude_exact or (
                self._exclude_prefixes and path.startswith(self._exclude_prefixes)
            ):
                await self._app(scope, receive, send)
                return
        # Nothing below allocates for a feature not configured. asyncio with the system
        # clock runs on the timer service, in the request's own task.
        task = self._current_task()  # None: the anyio runtime
        # The system clock on asyncio reads time.monotonic(): the same number, directly.
        mono = _monotonic()
        now = mono if task is not None else self._clock.now()
        ctx = self._context_for(scope, mono) if self._observe else None
        error: BaseException | None = None
        status: int | None = None
        try:
            extra: tuple[tuple[bytes, bytes], ...] | None = None
            limiter = self._limiter
            if limiter is not None:  # one synchronous decision, unless the store is remote
                key = self._rate_key(scope)
                decision = limiter.try_acquire_nowait(key, now=now)
                if decision is None:
                    decision = await limiter.try_acquire(key)
                extra = self._headers_of(decision)
                if not decision.allowed:
                    await self._rate_limited(ctx, send, decision.retry_after, extra)
                    return
            published = self._request_deadline(scope, now)
            if published is _PASSED:
                await self._caller_deadline_passed(ctx, send, extra)
            elif task is None:
                status = await self._run_anyio(
                    new_scope_exchange(scope, receive, send, now, extra, published, self._clock),
                    ctx,
                    send,
                )
            else:
                status = await self._run_timed(
                    new_timer_exchange(
                        scope,
                        receive,
                        send,
                        now,
                        extra,
                        published,
                        self._arrivals,  # type: ignore[arg-type] # set with task
                        task,
                    ),
                    ctx,
                    send,
                )
        except BaseException as exc:
            error = exc
            raise
        finally:
            if ctx is not None:
                self._end(ctx, scope, error, status)

    def _context_for(self, scope: Scope, mono: float) -> Context | None:
        # A Context for the observer and listeners, or None while nothing records.
        if self._listening or (mono >= self._quiet_until and self._recording_now(mono)):
            return self._begin(scope)
        return None

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Lifespan passes through; websockets too unless limit_websockets.
        if scope["type"] == "websocket" and self._limit_websockets and not self._excluded(scope):
            await self._websocket(scope, receive, send)
        else:
            await self._app(scope, receive, send)

    def _current_task(self) -> asyncio.Task[Any] | None:
        # The asyncio task to run the request in on the timer service, or None for the anyio
        # runtime (trio, trio as an asyncio guest, a custom clock, or no task).
        # Makes self._arrivals those of the running loop.
        if not self._fast:
            return None
        loop = current_loop()
        if loop is None:
            return None
        arrivals = self._arrivals
        if arrivals is None or arrivals.loop is not loop:
            self._arrivals = Arrivals(loop)
        return _current_task(loop)

    def _rate_key(self, scope: Scope) -> str:
        peer_key = self._peer_key
        if peer_key is not None:  # no custom key, no trusted proxy: the peer address
            client = scope.get("client")
            return peer_key(client[0]) if client else NO_PEER_KEY
        return self.client_key(scope)

    def _headers_of(self, status: RateLimitStatus) -> tuple[tuple[bytes, bytes], ...]:
        # The RateLimit headers of a decision: whole tokens left, whole seconds until full.
        if not self._header_mode_on:
            return ()
        remaining = int(status.remaining + 1e-9)
        reset = _ceil(status.reset - 1e-9)
        if remaining == self._last_remaining and reset == self._last_reset:
            return self._last_headers
        return self._rate_headers(remaining, reset)

    def _request_deadline(self, scope: Scope, now: float) -> RequestDeadline | None:
        # The request's deadline: the configured timeouts tightened by the caller's header.
        # None: no deadline at all; _PASSED: the caller's deadline already passed.
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
                            return _PASSED
                        end_deadline = min(end_deadline, caller)
                    break
        if end_deadline < start_deadline:  # noqa: PLR1730 - min() costs a call per request
            start_deadline = end_deadline
        if start_deadline == _INF:
            return None
        # The app's own resilient calls inherit the time left (resilient.remaining()), and
        # so does the bulkhead's queue wait: the published deadline reads like a Context.
        return new_request_deadline(self._clock, start_deadline, end_deadline, now)

    async def _run_timed(
        self, exchange: TimerExchange, ctx: Context | None, send: Send
    ) -> int | None:
        # asyncio, system clock: the app runs in this task and a timer of the timer service
        # cancels it (Task.cancel(), balanced with uncancel() as asyncio.timeout does).
        # Returns the status the app answered with (None: the middleware answered, or
        # nobody did).
        task = exchange.task
        cancelling = task.cancelling()
        exchange.start()
        published = exchange.published
        token = None if published is None else push_deadline(published)  # type: ignore[arg-type]
        refusal: Refusal | None = None
        bulkhead = self._bulkhead
        try:
            # _run_in_slot(), inlined for the free slot: no coroutine of ours in between.
            if bulkhead is None:
                await self._app(exchange.scope, exchange.receive, exchange.send)
            elif self._shedding is None and bulkhead.try_acquire():
                try:
                    await self._app(exchange.scope, exchange.receive, exchange.send)
                finally:
                    bulkhead.release()
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
            exchange.finish()
        if refusal is None and exchange.reason is None:
            return exchange.status  # the app answered
        return await self._outcome(exchange, refusal, ctx, send)

    async def _run_anyio(
        self, exchange: ScopeExchange, ctx: Context | None, send: Send
    ) -> int | None:
        # trio, custom clocks (FakeClock), or no asyncio task: an anyio cancel scope in this
        # task, the timer and the disconnect watcher in helper tasks. Returns as _run_timed.
        published = exchange.published
        token = None if published is None else push_deadline(published)  # type: ignore[arg-type]
        error: Exception | None = None
        refusal: Refusal | None = None
        try:
            async with anyio.create_task_group() as tg:
                exchange.task_group = tg
                exchange.cancel_scope = anyio.CancelScope()
                if published is not None:
                    exchange.timed = True  # moving the deadline wakes the timer task
                    tg.start_soon(exchange.timer)
                exchange._start_watcher()
                try:
                    with exchange.cancel_scope:
                        refusal = await self._run_in_slot(exchange)
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
        return await self._outcome(exchange, refusal, ctx, send)

    async def _outcome(
        self, exchange: Exchange, refusal: Refusal | None, ctx: Context | None, send: Send
    ) -> int | None:
        # After the app ran (or was refused a slot): answer for it when it could not.
        if refusal is not None:
            await self._refused(refusal, ctx, send, exchange.extra_headers)
            return None
        if exchange.reason is not None:
            await self._after_fire(exchange, ctx, send)
            return None
        return exchange.status

    async def _run_in_slot(self, exchange: Exchange) -> Refusal | None:
        # Run the app holding a concurrency slot, queueing for one when none is free. The
        # anyio runtime's; _run_timed, the hot path, has it inline (one coroutine less per
        # request, measurable in the server's CPU per request).
        bulkhead = self._bulkhead
        if bulkhead is None:
            await self._app(exchange.scope, exchange.receive, exchange.send)
        elif self._shedding is None and bulkhead.try_acquire():  # a free slot: no yield
            try:
                await self._app(exchange.scope, exchange.receive, exchange.send)
            finally:
                bulkhead.release()
        else:
            return await self._queue_and_run(exchange)
        return None

    async def _queue_and_run(self, exchange: Exchange) -> Refusal | None:
        # No free slot: queue in the bulkhead (bounded by max_wait and the deadline).
        bulkhead = self._bulkhead
        assert bulkhead is not None
        if self._shedding is not None:  # an adaptive limit or criticality (_shedding.py)
            return await self._shedding.run(
                self._app, exchange.scope, exchange.receive, exchange.send
            )
        if self._max_wait <= 0.0 or bulkhead.snapshot().waiting >= bulkhead.max_waiting:
            return "full"  # refused at once: nobody waits
        try:
            await bulkhead.acquire()  # bounded by max_wait and the published deadline
        except BulkheadFullError:
            return "wait_timeout"  # no slot freed within max_wait: never ran
        except TimeoutExceeded as exc:
            return exc  # the request's deadline passed while it waited: never ran
        try:
            await self._app(exchange.scope, exchange.receive, exchange.send)
        finally:
            bulkhead.release()
        return None

    async def _refused(
        self,
        refusal: Refusal,
        ctx: Context | None,
        send: Send,
        extra: tuple[tuple[bytes, bytes], ...] | None,
    ) -> None:
        if isinstance(refusal, str):
            await self._shed(ctx, send, extra, reason=refusal)
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

    def _end(
        self, ctx: Context, scope: Scope, error: BaseException | None, status: int | None
    ) -> None:
        # The outcome: an exception (raised, or the refusal in ctx.extra), else the status
        # the app answered with (its 5xx are failures, its 4xx client errors).
        ctx.operation = self._operation(scope, ctx.operation)
        observer = ctx.observer
        if observer is not None:
            try:
                observer.end(ctx, error if error is not None else ctx.extra, status)
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
        reason: str,
    ) -> None:
        # reason: "full" (refused at once: the waiting room was full, or nobody may wait)
        # or "wait_timeout" (it waited max_wait and no slot freed).
        retry_after = self._shed_retry_after
        exc = BulkheadFullError(
            "server overloaded: no free slot" + (" in time" if reason == "wait_timeout" else ""),
            policy="load_shedding",
            retry_after=retry_after,
        )
        await self._reject(
            ctx,
            send,
            status=503,
            text=b"Service Unavailable\n",
            exc=exc,
            reason=reason,
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

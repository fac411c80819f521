"""Per-request guard: deadlines and client-disconnect cancellation, in the request's own task.

The app runs in the task that called the middleware, so context variables it sets stay
visible to outer layers. Two interchangeable runtimes cancel it:

- ``TimerExchange``, on asyncio with the system clock (the production case): the library's
  timer service (``resilient.timers.call_at``) and ``Task.cancel()`` issued from a timer
  callback, balanced with ``uncancel()`` exactly as ``asyncio.timeout`` does. A new request
  joins the loop's ``Arrivals`` (a dict store), looked at together by one timer
  ``WATCH_AFTER`` later: a request that finishes before (most of them) costs a dict store
  and pop, no timer of its own, no extra task, no cancel scope. Still running then, it gets
  its disconnect watcher and a timer of its own at its deadline.
- ``ScopeExchange`` everywhere else (trio, custom clocks such as ``FakeClock``): an anyio
  cancel scope in the same task plus two helper tasks, a timer on the configured clock and the
  disconnect watcher.

A request with a deadline publishes a ``RequestDeadline`` (what ``resilient.remaining()`` and
nested pipelines read); it is also the guard's deadline. Disconnect watching never reads the
request body: the watcher calls ``receive()`` only once no body is left (a request without a
body by its headers, or after the app itself received the last chunk), and a message it takes
early is handed to the app unchanged.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, final

import anyio
import anyio.abc

from resilient.timers import Clock, Timer, call_at

__all__ = [
    "DISCONNECT",
    "DONE",
    "QUEUED",
    "RUNNING",
    "STREAMING",
    "TIMEOUT",
    "TRAILING",
    "Arrivals",
    "Exchange",
    "RequestDeadline",
    "ScopeExchange",
    "TimerExchange",
    "new_request_deadline",
    "new_scope_exchange",
    "new_timer_exchange",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Phases of one exchange.
QUEUED: Final = 0  # waiting for a concurrency slot
RUNNING: Final = 1  # the app runs; no response started yet
STREAMING: Final = 2  # response started, not complete
TRAILING: Final = 3  # response started, not complete, and it ends with trailers
DONE: Final = 4  # response complete (or the middleware is finishing)

# Why the guard cancelled the app.
TIMEOUT: Final = "timeout"
DISCONNECT: Final = "disconnect"

WATCH_AFTER: Final = 0.01  # a request still running after this gets a disconnect watcher
_DISCONNECT_MESSAGE: Final = {"type": "http.disconnect"}
_monotonic = time.monotonic  # the system clock on asyncio, and the timer service's time base
_new = object.__new__
_INF: Final = math.inf


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


@final
class _Watch:
    """Disconnect-watching state of one exchange, created when a watcher starts or the client
    is seen leaving (most requests finish before either happens and never build one)."""

    __slots__ = ("event", "gone", "stash", "task")

    def __init__(self) -> None:
        self.task: Any = None  # the watcher: an asyncio.Task, or True while an anyio one runs
        self.stash: Message | None = None  # a message the watcher took, for the app
        self.gone = False  # the client disconnected
        self.event: asyncio.Event | anyio.Event | None = None  # the app waits for the watcher


# Objects built per request are built by functions rather than by calling the class: a
# class call running a Python __init__ costs more than a function that makes the object and
# sets its slots (docs/asgi.md, "Performance").


@final
class RequestDeadline:
    """A request's deadline as nested pipelines and ``resilient.remaining()`` see it.

    Published in the deadline context variable while the app runs (duck-typed as a
    ``Context``), and the guard's own deadline: ``deadline`` is the current one (until the
    response starts, then ``end``). Deliberately small and holding nothing of the request:
    contexts copied during the request (loop callbacks, a server's keep-alive timer) may
    keep it alive for a while; a published exchange kept the whole request (scope, server
    callables) alive with it, enough to set off the garbage collector every few requests.
    Built by ``new_request_deadline()``.
    """

    __slots__ = ("clock", "deadline", "deadline_timeout", "end")

    deadline_source: Final = "request_timeout"
    clock: Clock
    deadline: float  # the current deadline (absolute, on clock)
    deadline_timeout: float  # the length of the deadline before the response starts
    end: float  # the deadline once the response started

    def remaining(self) -> float:
        """Seconds left before the request's current deadline."""
        deadline = self.deadline
        return _INF if deadline == _INF else deadline - self.clock.now()


def new_request_deadline(clock: Clock, start: float, end: float, now: float) -> RequestDeadline:
    """The deadline of a request started at ``now``: ``start`` until it responds, then ``end``."""
    published = _new(RequestDeadline)
    published.clock = clock
    published.deadline = start
    published.deadline_timeout = start - now
    published.end = end
    return published


class Exchange:
    """The state of one HTTP request/response passing through the middleware.

    ``receive``/``send`` wrap the server's callables: they track the response phase, hand
    over a message the watcher took early, add headers to the response start and drop
    anything the app sends after the guard has cancelled it. Two runtimes subclass it:
    ``TimerExchange`` (asyncio, system clock) and ``ScopeExchange`` (anyio); each is built
    by its ``new_*`` function.
    """

    __slots__ = (
        "_receive",
        "_send",
        "body_done",
        "extra_headers",
        "fired_phase",
        "phase",
        "published",
        "reason",
        "receiving",
        "scope",
        "started_at",
        "status",
        "timed",
        "watch",
    )

    scope: Scope
    _receive: Receive
    _send: Send
    started_at: float
    extra_headers: tuple[tuple[bytes, bytes], ...] | None  # added to the response start
    published: RequestDeadline | None  # None: no deadline at all
    phase: int
    reason: str | None  # why the guard fired (None: it did not)
    fired_phase: int  # the phase when it fired (set by fire())
    body_done: bool  # the app received the whole request body
    receiving: bool  # the app waits in receive()
    status: int | None  # the status of the app's response, once it started
    timed: bool  # a timer holds the deadline: moving the deadline needs rearm()
    watch: _Watch | None

    def _init(  # noqa: PLR0917 - built once per request: positional is the cheap call
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        now: float,
        extra_headers: tuple[tuple[bytes, bytes], ...] | None,
        published: RequestDeadline | None,
    ) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.started_at = now
        self.extra_headers = extra_headers
        self.published = published
        self.phase = RUNNING
        self.reason = None
        self.body_done = False
        self.receiving = False
        self.status = None
        self.timed = False
        self.watch = None

    # -- the app's view of the server --------------------------------------------------------

    async def receive(self) -> Message:
        """``receive`` as seen by the app."""
        watch = self.watch
        while watch is not None:
            stash = watch.stash
            if stash is not None:
                watch.stash = None
                return stash
            if watch.gone:
                return dict(_DISCONNECT_MESSAGE)
            if watch.task is None:
                break
            # The watcher owns the server's receive: wait for what it takes next.
            await self._wait_watch(watch)
        self.receiving = True
        try:
            message = await self._receive()
        finally:
            self.receiving = False
        kind = message.get("type")
        if kind == "http.request":
            if not message.get("more_body", False):
                self.body_done = True
                if self.phase < DONE and self._watch_due():
                    self._start_watcher()
        elif kind == "http.disconnect":
            self._client_gone(from_app=True)
        return message

    def send(self, message: Message) -> Awaitable[None]:
        """``send`` as seen by the app.

        A plain function returning the server's own awaitable: the app's ``await send(...)``
        then awaits the server directly, no coroutine of ours in between.
        """
        if self.reason is not None:
            return _nothing()  # the guard fired: nothing more from the app reaches the client
        phase = self.phase
        if phase == RUNNING:
            if message["type"] == "http.response.start":
                message = self._started(message)
        elif phase == STREAMING:
            if message["type"] == "http.response.body":
                if not message.get("more_body"):  # complete: _complete(), inlined
                    self.phase = DONE
                    if self.watch is not None:
                        self.finish()
            else:
                self._check_last(message)
        elif phase == TRAILING:
            self._check_last(message)
        return self._send(message)

    def _started(self, message: Message) -> Message:
        # The response starts: add our headers, and the deadline becomes the end deadline.
        self.phase = TRAILING if message.get("trailers") else STREAMING
        self.status = message.get("status")
        extra = self.extra_headers
        if extra:  # a copy: the app may reuse its message and headers list
            headers = [*message.get("headers", ()), *extra]
            message = dict(message)
            message["headers"] = headers
        published = self.published
        if published is not None and published.end != published.deadline:
            published.deadline = published.end
            if self.timed:
                self.rearm()
        return message

    def _check_last(self, message: Message) -> None:
        # A response with trailers (or sent from a file) ends with their last message.
        kind = message["type"]
        if kind == "http.response.pathsend" or (
            kind == "http.response.trailers" and not message.get("more_trailers")
        ):
            self._complete()

    def _complete(self) -> None:
        # The last message is not cut by a deadline while it is written: a DONE exchange
        # never fires. The middleware forgets it when the app returns.
        self.phase = DONE
        if self.watch is not None:
            self.finish()  # the watcher has nothing left to watch

    # -- lifecycle (each runtime completes these) --------------------------------------------

    def finish(self) -> None:
        """The middleware is leaving: disarm everything (idempotent)."""
        raise NotImplementedError

    def rearm(self) -> None:
        """The deadline (``published.deadline``) moved: move the timer holding it."""
        raise NotImplementedError

    def fire(self, reason: str) -> None:
        """Cancel the app (a deadline passed or the client left), once."""
        if self.phase == DONE or self.reason is not None:
            return
        self.reason = reason
        self.fired_phase = self.phase
        self._cancel()

    def _cancel(self) -> None:
        raise NotImplementedError

    def _watch_due(self) -> bool:
        return True

    def _spawn_watcher(self, watch: _Watch) -> None:
        raise NotImplementedError

    def _new_event(self) -> asyncio.Event | anyio.Event:
        raise NotImplementedError

    def _start_watcher(self) -> None:
        watch = self.watch
        if watch is not None and (watch.task is not None or watch.stash is not None or watch.gone):
            return
        if self.receiving:
            return
        if not self.body_done and _has_body(self.scope):
            return  # the app will read the body; watching starts after its last chunk
        if watch is None:
            watch = self.watch = _Watch()
        self._spawn_watcher(watch)

    async def _watch(self) -> None:
        watch = self.watch
        assert watch is not None
        try:
            while True:
                message = await self._receive()
                kind = message.get("type")
                if kind == "http.request":
                    # An empty chunk taken earlier carries nothing: replacing it keeps the
                    # body the app will read identical.
                    watch.stash = message
                    self._signal(watch)
                    if message.get("more_body", False):
                        if message.get("body"):
                            break  # a body after all: the app reads it; watch again after it
                        continue
                    self.body_done = True
                    continue
                if kind == "http.disconnect":
                    self._client_gone(from_app=False)
                    return
        except Exception:
            pass
        watch.task = None

    def _client_gone(self, *, from_app: bool) -> None:
        watch = self.watch
        if watch is None:
            watch = self.watch = _Watch()
        watch.gone = True
        self._signal(watch)
        if self.phase != DONE:
            self._deliver_gone(from_app=from_app)

    def _deliver_gone(self, *, from_app: bool) -> None:
        self.fire(DISCONNECT)

    async def _wait_watch(self, watch: _Watch) -> None:
        event = watch.event
        if event is None or event.is_set():
            event = watch.event = self._new_event()
        await event.wait()

    @staticmethod
    def _signal(watch: _Watch) -> None:
        event = watch.event
        if event is not None:
            event.set()


@final
class Arrivals:
    """Requests that arrived on one asyncio loop and have not been looked at yet.

    Most requests finish within ``WATCH_AFTER``: for them, arriving is a dict store and
    finishing a dict pop. One timer of the timer service looks at every request still here
    ``WATCH_AFTER`` after the first of them arrived; a request still running then gets its
    disconnect watcher and a timer of its own at its deadline (or, arrived only just
    before, waits for the next look). A timer is pending whenever a request is here, so
    nobody waits for anything but its own deadline.
    """

    __slots__ = ("loop", "requests", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.requests: dict[TimerExchange, None] = {}
        self.timer: Timer | None = None

    def add(self, exchange: TimerExchange, now: float) -> None:
        """Look at ``exchange`` at the next look (``TimerExchange.start`` inlines this)."""
        self.requests[exchange] = None
        if self.timer is None:
            self.arm(now)

    def arm(self, now: float) -> None:
        """Set the next look ``WATCH_AFTER`` from ``now``."""
        self.timer = call_at(now + WATCH_AFTER, self._look)

    def _look(self) -> None:
        self.timer = None
        requests = self.requests
        self.requests = {}
        for exchange in requests:
            try:
                exchange.due()
            except Exception as exc:  # one request's failure must not skip the others
                self.loop.call_exception_handler(
                    {"message": "resilient: request timer failed", "exception": exc}
                )


@final
class TimerExchange(Exchange):
    """The asyncio runtime: the loop's ``Arrivals``, a timer of the library's timer service
    once the request ran ``WATCH_AFTER``, and ``Task.cancel()``."""

    __slots__ = ("arrivals", "task", "timer")

    arrivals: Arrivals
    task: asyncio.Task[Any]
    timer: Timer | None  # a timer of its own: at the deadline (or a very short deadline)

    def start(self) -> None:
        """Join the arrivals, or arm a timer of its own for a deadline sooner than a look."""
        published = self.published
        now = self.started_at
        if published is not None and published.deadline < now + WATCH_AFTER:
            self.timer = call_at(published.deadline, self.due)
            self.timed = True
            return
        arrivals = self.arrivals
        arrivals.requests[self] = None
        if arrivals.timer is None:
            arrivals.arm(now)

    def finish(self) -> None:
        """The middleware is leaving: disarm everything (idempotent).

        For most requests: ``phase = DONE`` and the pop from the arrivals.
        """
        self.phase = DONE
        self.arrivals.requests.pop(self, None)
        timer = self.timer
        if timer is not None:
            timer.cancel()
            self.timer = None
            self.timed = False
        watch = self.watch
        if watch is not None:
            watcher = watch.task
            if watcher is not None and watcher is not True:
                watcher.cancel()

    def rearm(self) -> None:
        """The deadline moved: move the pending timer if it would now fire too late.

        A timer due before the new deadline (the watch time, or the old deadline: the
        deadline only moves later when the response starts) stays: ``due()`` reads the
        current deadline when it fires.
        """
        timer = self.timer
        published = self.published
        if timer is None or published is None or timer.deadline <= published.deadline:
            return
        timer.cancel()
        self.timer = call_at(published.deadline, self.due)

    def _cancel(self) -> None:
        task = self.task
        if not task.done():
            task.cancel()

    def due(self) -> None:
        """Timer callback: the deadline passed, or it is time to start watching."""
        self.timer = None
        self.timed = False
        if self.phase == DONE or self.reason is not None:
            return
        now = _monotonic()
        published = self.published
        deadline = _INF if published is None else published.deadline
        if now >= deadline:
            self.fire(TIMEOUT)
            return
        watch = self.watch
        if watch is None or watch.task is None:
            if now < self.started_at + WATCH_AFTER:
                self.arrivals.add(self, now)  # too young: at the next look
                return
            self._start_watcher()
        if deadline != _INF:  # the timer service arms nothing for math.inf; skip the object
            self.timer = call_at(deadline, self.due)
            self.timed = True

    def _watch_due(self) -> bool:
        return _monotonic() >= self.started_at + WATCH_AFTER

    def _spawn_watcher(self, watch: _Watch) -> None:
        watch.task = task = self.task.get_loop().create_task(self._watch())
        task.add_done_callback(_retrieve)

    def _new_event(self) -> asyncio.Event:
        return asyncio.Event()

    def _deliver_gone(self, *, from_app: bool) -> None:
        if from_app:
            # Never cancel our own running task: deliver it from a loop callback, where the
            # task is suspended, so the cancellation lands at the app's current await.
            self.task.get_loop().call_soon(self.fire, DISCONNECT)
        else:
            self.fire(DISCONNECT)


def new_timer_exchange(  # noqa: PLR0917 - built once per request: positional is the cheap call
    scope: Scope,
    receive: Receive,
    send: Send,
    now: float,
    extra_headers: tuple[tuple[bytes, bytes], ...] | None,
    published: RequestDeadline | None,
    arrivals: Arrivals,
    task: asyncio.Task[Any],
) -> TimerExchange:
    """A ``TimerExchange`` for a request started at ``now`` (``Exchange._init`` inlined)."""
    exchange = _new(TimerExchange)
    exchange.scope = scope
    exchange._receive = receive
    exchange._send = send
    exchange.started_at = now
    exchange.extra_headers = extra_headers
    exchange.published = published
    exchange.phase = RUNNING
    exchange.reason = None
    exchange.body_done = False
    exchange.receiving = False
    exchange.status = None
    exchange.timed = False
    exchange.watch = None
    exchange.arrivals = arrivals
    exchange.task = task
    exchange.timer = None
    return exchange


@final
class ScopeExchange(Exchange):
    """The anyio runtime: a cancel scope in the request's task, a timer task on ``clock``."""

    __slots__ = ("cancel_scope", "clock", "rearmed", "task_group")

    clock: Clock
    task_group: anyio.abc.TaskGroup | None
    cancel_scope: anyio.CancelScope | None
    rearmed: anyio.Event | None

    def finish(self) -> None:
        """The middleware is leaving: disarm everything (idempotent)."""
        self.phase = DONE
        rearmed = self.rearmed
        if rearmed is not None:
            rearmed.set()

    def rearm(self) -> None:
        """The deadline moved: wake the timer."""
        rearmed = self.rearmed
        if rearmed is not None:
            rearmed.set()

    def _cancel(self) -> None:
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

    def _spawn_watcher(self, watch: _Watch) -> None:
        if self.task_group is not None:
            watch.task = True
            self.task_group.start_soon(self._watch)

    def _new_event(self) -> anyio.Event:
        return anyio.Event()

    async def timer(self) -> None:
        """Helper task: fire when the current deadline passes on ``clock``."""
        clock = self.clock
        published = self.published
        assert published is not None
        while self.phase != DONE and self.reason is None:
            deadline = published.deadline
            event = self.rearmed = anyio.Event()
            if deadline == _INF:
                await event.wait()
                continue
            scope = clock.timeout_at(deadline)
            try:
                async with scope:
                    await event.wait()
            except TimeoutError:
                if scope.expired() and published.deadline == deadline:
                    self.fire(TIMEOUT)
                    return


def new_scope_exchange(  # noqa: PLR0917 - positional, as new_timer_exchange
    scope: Scope,
    receive: Receive,
    send: Send,
    now: float,
    extra_headers: tuple[tuple[bytes, bytes], ...] | None,
    published: RequestDeadline | None,
    clock: Clock,
) -> ScopeExchange:
    """A ``ScopeExchange`` for a request started at ``now`` on ``clock``."""
    exchange = _new(ScopeExchange)
    exchange._init(scope, receive, send, now, extra_headers, published)
    exchange.clock = clock
    exchange.task_group = None
    exchange.cancel_scope = None
    exchange.rearmed = None
    return exchange


async def _nothing() -> None:
    return None


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # never "exception was never retrieved"

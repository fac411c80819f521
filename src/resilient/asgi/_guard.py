"""Per-request guard: deadlines and client-disconnect cancellation, in the request's own task.

The app runs in the task that called the middleware, so context variables it sets stay
visible to outer layers. Two interchangeable runtimes cancel it:

- on asyncio with the system clock (the production case), a coarse timer wheel shared by
  every request (one loop timer for all, 10 ms resolution) and ``Task.cancel()`` issued from
  loop callbacks, balanced with ``uncancel()`` exactly as ``asyncio.timeout`` does. A request
  that finishes within one tick (most of them) costs two dict operations and no timer handle,
  no extra task, no cancel scope.
- everywhere else (trio, custom clocks such as ``FakeClock``), an anyio cancel scope in the
  same task plus two helper tasks: a timer on the configured clock and the disconnect watcher.

Disconnect watching never reads the request body: the watcher calls ``receive()`` only once
no body is left (a request without a body by its headers, or after the app itself received
the last chunk), and a message it takes early is handed to the app unchanged.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, MutableMapping
from heapq import heappop, heappush
from typing import Any, Final, final

import anyio
import anyio.abc

from resilient._clock import Clock

__all__ = ["DISCONNECT", "DONE", "QUEUED", "RUNNING", "STREAMING", "TIMEOUT", "Exchange", "Wheel"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Phases of one exchange.
QUEUED: Final = 0  # waiting for a concurrency slot
RUNNING: Final = 1  # the app runs; no response started yet
STREAMING: Final = 2  # response started, not complete
DONE: Final = 3  # response complete (or the middleware is finishing)

# Why the guard cancelled the app.
TIMEOUT: Final = "timeout"
DISCONNECT: Final = "disconnect"

TICKS_PER_SECOND: Final = 100  # wheel resolution: 10 ms
WATCH_AFTER: Final = 0.01  # a request still running after this gets a disconnect watcher
_EPSILON_TICKS: Final = 1e-3
_DISCONNECT_MESSAGE: Final = {"type": "http.disconnect"}


@final
class Wheel:
    """A coarse timer shared by every request on one asyncio loop.

    A new request is only added to ``recent`` (no timer handle, no computation) and removed
    from it when it finishes, so a finished request is not kept alive until the tick. At the
    next 10 ms tick, requests still running are looked at: their disconnect watcher starts
    and, if they have a deadline, they move to the bucket of the tick it falls in. Buckets
    are dicts keyed by tick; one loop timer is armed for the earliest tick.
    """

    __slots__ = ("_buckets", "_handle", "_loop", "_ticks", "armed", "recent")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buckets: dict[int, dict[Exchange, None]] = {}
        self._ticks: list[int] = []
        self._handle: asyncio.TimerHandle | None = None
        self.armed: int | None = None
        self.recent: dict[Exchange, None] = {}

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop this wheel belongs to."""
        return self._loop

    def enter(self, exchange: Exchange) -> None:
        """A request started: look at it at the next tick (the hot path: one dict store)."""
        self.recent[exchange] = None
        if self.armed is None:
            self._arm(math.floor(self._loop.time() * TICKS_PER_SECOND) + 1)

    def add(self, exchange: Exchange, due: float) -> int:
        """Call ``exchange.due()`` at the first tick at or after ``due``; returns the tick."""
        tick = math.ceil(due * TICKS_PER_SECOND - _EPSILON_TICKS)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            heappush(self._ticks, tick)
            if self.armed is None or tick < self.armed:
                self._arm(tick)
        bucket[exchange] = None
        return tick

    def discard(self, exchange: Exchange, tick: int) -> None:
        """Forget ``exchange`` registered at ``tick`` (empty buckets expire on their own)."""
        bucket = self._buckets.get(tick)
        if bucket is not None:
            bucket.pop(exchange, None)

    def _arm(self, tick: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self.armed = tick
        self._handle = self._loop.call_at(tick / TICKS_PER_SECOND, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self.armed = None
        limit = self._loop.time() * TICKS_PER_SECOND + _EPSILON_TICKS
        ticks = self._ticks
        due: list[Exchange] = []
        recent = self.recent
        if recent:
            self.recent = {}
            due.extend(recent)
        while ticks and ticks[0] <= limit:
            bucket = self._buckets.pop(heappop(ticks), None)
            if bucket:
                due.extend(bucket)
        for exchange in due:
            exchange.due()
        if self.armed is None:
            if ticks:
                self._arm(ticks[0])
            elif self.recent:
                self._arm(math.floor(limit) + 1)

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values()) + len(self.recent)


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


@final
class Exchange:
    """The state of one HTTP request/response passing through the middleware.

    ``receive``/``send`` wrap the server's callables: they track the response phase, hand
    over a message the watcher took early, add headers to the response start and drop
    anything the app sends after the guard has cancelled it.
    """

    __slots__ = (
        "_receive",
        "_send",
        "body_done",
        "cancel_scope",
        "clock",
        "deadline",
        "end_deadline",
        "extra_headers",
        "fired_phase",
        "gone",
        "phase",
        "rearmed",
        "reason",
        "receiving",
        "scope",
        "start_deadline",
        "started_at",
        "stash",
        "task",
        "task_group",
        "tick",
        "trailers",
        "watch_event",
        "watcher",
        "wheel",
    )

    def __init__(  # noqa: PLR0917 - built once per request: positional is the cheap call
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        clock: Clock,
        now: float,
        start_deadline: float,
        end_deadline: float,
        extra_headers: tuple[tuple[bytes, bytes], ...] | None,
        wheel: Wheel | None = None,
        task: asyncio.Task[Any] | None = None,
    ) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.clock = clock
        self.started_at = now
        self.start_deadline = start_deadline
        self.end_deadline = end_deadline
        self.extra_headers = extra_headers
        self.phase = RUNNING
        self.reason: str | None = None
        self.fired_phase = RUNNING
        self.deadline = start_deadline
        self.trailers = False
        self.body_done = False
        self.receiving = False
        self.gone = False
        self.watch_event: asyncio.Event | anyio.Event | None = None
        self.stash: Message | None = None
        self.watcher: Any = None  # asyncio.Task, or True while an anyio watcher runs
        # asyncio runtime
        self.wheel = wheel
        self.task = task
        self.tick = 0
        # anyio runtime
        self.task_group: anyio.abc.TaskGroup | None = None
        self.cancel_scope: anyio.CancelScope | None = None
        self.rearmed: anyio.Event | None = None

    # -- what resilient.remaining() and nested pipelines read (duck-typed as a Context) ----

    deadline_source: Final = "request_timeout"

    @property
    def deadline_timeout(self) -> float:
        """The length of the request's deadline, from its start."""
        return self.start_deadline - self.started_at

    def remaining(self) -> float:
        """Seconds left before the request's current deadline."""
        deadline = self.deadline
        return math.inf if deadline == math.inf else deadline - self.clock.now()

    # -- the app's view of the server --------------------------------------------------------

    async def receive(self) -> Message:
        """``receive`` as seen by the app."""
        while True:
            stash = self.stash
            if stash is not None:
                self.stash = None
                return stash
            if self.gone:
                return dict(_DISCONNECT_MESSAGE)
            if self.watcher is None:
                break
            # The watcher owns the server's receive: wait for what it takes next.
            await self._wait_watch()
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

    async def send(self, message: Message) -> None:
        """``send`` as seen by the app."""
        if self.reason is not None:
            return  # the guard fired: nothing more from the app reaches the client
        kind = message["type"]
        if self.phase == RUNNING:
            if kind == "http.response.start":
                if message.get("trailers", False):
                    self.trailers = True
                extra = self.extra_headers
                if extra:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
                self.phase = STREAMING
                if self.end_deadline != self.start_deadline:
                    self.rearm(self.end_deadline)
        elif self.phase == STREAMING:
            if kind == "http.response.body":
                complete = not message.get("more_body", False) and not self.trailers
            elif kind == "http.response.trailers":
                complete = not message.get("more_trailers", False)
            else:
                complete = kind == "http.response.pathsend"
            if complete:
                self.finish()  # the last message is not cut by a deadline while it is written
        await self._send(message)

    # -- lifecycle ----------------------------------------------------------------------------

    def finish(self) -> None:
        """The response is complete (or the middleware is leaving): disarm everything."""
        if self.phase == DONE:
            return
        self.phase = DONE
        wheel = self.wheel
        if wheel is not None:
            wheel.recent.pop(self, None)
            if self.tick:
                wheel.discard(self, self.tick)
            watcher = self.watcher
            if watcher is not None and watcher is not True:
                watcher.cancel()
        else:
            self.deadline = math.inf
            rearmed = self.rearmed
            if rearmed is not None:
                rearmed.set()

    def rearm(self, deadline: float) -> None:
        """Move the guard's deadline (a new phase)."""
        self.deadline = deadline
        wheel = self.wheel
        if wheel is not None:
            if self.tick:  # already past its first tick: move to the new deadline's bucket
                wheel.discard(self, self.tick)
                self.tick = 0 if deadline == math.inf else wheel.add(self, deadline)
        else:
            rearmed = self.rearmed
            if rearmed is not None:
                rearmed.set()

    def fire(self, reason: str) -> None:
        """Cancel the app (a deadline passed or the client left), once."""
        if self.phase == DONE or self.reason is not None:
            return
        self.reason = reason
        self.fired_phase = self.phase
        if self.wheel is not None:
            task = self.task
            if task is not None and not task.done():
                task.cancel()
        elif self.cancel_scope is not None:
            self.cancel_scope.cancel()

    # -- asyncio runtime ----------------------------------------------------------------------

    def due(self) -> None:
        """Wheel callback: the deadline passed, or it is time to start watching."""
        if self.phase == DONE or self.reason is not None:
            return
        self.tick = 0
        now = self.clock.now()
        if now >= self.deadline:
            self.fire(TIMEOUT)
            return
        wheel = self.wheel
        assert wheel is not None
        due = self.deadline
        if self.watcher is None:
            watch_at = self.started_at + WATCH_AFTER
            if now < watch_at:
                due = min(due, watch_at)  # too young: look again later
            else:
                self._start_watcher()
        if due != math.inf:
            self.tick = wheel.add(self, due)

    def _watch_due(self) -> bool:
        if self.wheel is None:
            return True
        return self.clock.now() >= self.started_at + WATCH_AFTER

    def _start_watcher(self) -> None:
        if self.watcher is not None or self.receiving or self.stash is not None or self.gone:
            return
        if not self.body_done and _has_body(self.scope):
            return  # the app will read the body; watching starts after its last chunk
        if self.wheel is not None:
            self.watcher = task = self.wheel.loop.create_task(self._watch())
            task.add_done_callback(_retrieve)
        elif self.task_group is not None:
            self.watcher = True
            self.task_group.start_soon(self._watch)

    async def _watch(self) -> None:
        try:
            while True:
                message = await self._receive()
                kind = message.get("type")
                if kind == "http.request":
                    # An empty chunk taken earlier carries nothing: replacing it keeps the
                    # body the app will read identical.
                    self.stash = message
                    self._signal()
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
        self.watcher = None

    def _client_gone(self, *, from_app: bool) -> None:
        self.gone = True
        self._signal()
        if self.phase == DONE:
            return
        wheel = self.wheel
        if wheel is not None and from_app:
            # Never cancel our own running task: deliver it from a loop callback, where the
            # task is suspended, so the cancellation lands at the app's current await.
            wheel.loop.call_soon(self.fire, DISCONNECT)
        else:
            self.fire(DISCONNECT)

    async def _wait_watch(self) -> None:
        event = self.watch_event
        if event is None or event.is_set():
            event = self.watch_event = asyncio.Event() if self.wheel is not None else anyio.Event()
        await event.wait()

    def _signal(self) -> None:
        event = self.watch_event
        if event is not None:
            event.set()

    # -- anyio runtime ------------------------------------------------------------------------

    async def timer(self) -> None:
        """Helper task (anyio runtime): fire when the current deadline passes on ``clock``."""
        clock = self.clock
        while self.phase != DONE and self.reason is None:
            deadline = self.deadline
            event = self.rearmed = anyio.Event()
            if deadline == math.inf:
                await event.wait()
                continue
            scope = clock.timeout_at(deadline)
            try:
                async with scope:
                    await event.wait()
            except TimeoutError:
                if scope.expired() and self.deadline == deadline:
                    self.fire(TIMEOUT)
                    return


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # never "exception was never retrieved"

"""The transport never lets a request wait inside httpcore's pool (encode/httpcore#1093).

httpcore leaks a connection when a request is cancelled while it waits in the pool for one:
the connection made for it stays "connecting" forever, and once every connection of the pool
is lost that way each request fails with ``PoolTimeout`` against a healthy server. The
transport queues requests in its own cancel-safe gate, sized to the pool, instead.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

import resilient
from _live_server import serve
from resilient import Timeout
from resilient.httpx import ResilientTransport
from resilient.testing import FakeClock


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await receive()
    if scope["path"] == "/slow":
        await anyio.sleep(0.2)  # longer than the attempt timeout: every caller is cut
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with serve(_app) as bound:
        yield bound


def _counts(transport: ResilientTransport) -> tuple[int, int]:
    """(requests holding a pool slot, requests waiting for one)."""
    snapshot = transport.pool_snapshot()
    assert snapshot is not None
    return snapshot.running, snapshot.waiting


def _pool(connections: int) -> httpx.AsyncHTTPTransport:
    return httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=connections))


@pytest.mark.slow
async def test_cancelled_waiters_do_not_poison_a_pool_of_two(port: int) -> None:
    """50 callers on 2 connections, cut by attempt timeouts while they wait: the same client
    then answers every request (httpcore alone ends with every connection leaked)."""
    inner = _pool(2)
    pipeline = resilient.Pipeline(
        resilient.Retry(attempts=3, base_delay=0.0, max_delay=0.0, budget=None),
        Timeout(0.1),
        telemetry=False,
    )
    transport = ResilientTransport(pipeline, inner)
    # The pool timeout is longer than the attempt timeout: callers are cancelled while waiting.
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(10.0, pool=5.0)) as c:
        cut = 0

        async def caller() -> None:
            nonlocal cut
            with pytest.raises(resilient.TimeoutExceeded):
                await c.get(f"http://127.0.0.1:{port}/slow")
            cut += 1

        for _ in range(3):
            async with anyio.create_task_group() as group:
                for _ in range(50):
                    group.start_soon(caller)
        assert cut == 150
        statuses = [(await c.get(f"http://127.0.0.1:{port}/ok")).status_code for _ in range(20)]
        assert statuses == [200] * 20
        snapshot = transport.pool_snapshot()
        assert snapshot is not None
        assert (snapshot.running, snapshot.waiting, snapshot.max_concurrent) == (0, 0, 2)


@pytest.mark.slow
@pytest.mark.parametrize("expiry", [5.0, 0.0], ids=["keep-alive", "no-keep-alive"])
async def test_random_cancellations_leave_every_slot_free(port: int, expiry: float) -> None:
    """Callers cancelled from outside at random moments (waiting, sending, reading) leave the
    gate empty and the pool serving, also when every idle connection has expired (httpcore
    then closes connections as requests enter)."""
    rng = random.Random(7)
    inner = httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=2, keepalive_expiry=expiry)
    )
    transport = ResilientTransport(resilient.Pipeline(telemetry=False), inner)
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(10.0)) as client:

        async def caller(delay: float) -> None:
            with anyio.move_on_after(delay):
                response = await client.get(f"http://127.0.0.1:{port}/slow")
                assert response.status_code == 200

        async with anyio.create_task_group() as group:
            for _ in range(60):
                group.start_soon(caller, rng.uniform(0.0, 0.5))
        snapshot = transport.pool_snapshot()
        assert snapshot is not None
        assert (snapshot.running, snapshot.waiting) == (0, 0)
        for _ in range(5):
            assert (await client.get(f"http://127.0.0.1:{port}/ok")).status_code == 200


class _Held(httpx.AsyncBaseTransport):
    """A transport whose responses stream until the test lets them finish."""

    def __init__(self) -> None:
        self.sent = 0
        self.release = anyio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        release = self.release

        async def body() -> AsyncIterator[bytes]:
            await release.wait()
            yield b"done"

        return httpx.Response(200, stream=_Stream(body()))


class _Stream(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            yield chunk


async def test_a_response_holds_its_slot_until_it_is_closed() -> None:
    """A streamed response keeps its pool slot until closed; the next request waits for it."""
    upstream = _Held()
    transport = ResilientTransport(
        resilient.Pipeline(telemetry=False), upstream, limits=httpx.Limits(max_connections=1)
    )
    async with httpx.AsyncClient(transport=transport) as client:
        async with client.stream("GET", "http://svc.test/a") as first:
            assert first.status_code == 200
            assert _counts(transport) == (1, 0)
            async with anyio.create_task_group() as group:
                group.start_soon(client.get, "http://svc.test/b")
                await anyio.wait_all_tasks_blocked()
                assert _counts(transport) == (1, 1)
                assert upstream.sent == 1  # the second request waits here, not in the pool
                upstream.release.set()
                await first.aread()
        assert _counts(transport) == (0, 0)
        assert upstream.sent == 2


async def test_a_cancelled_waiter_takes_no_slot() -> None:
    """Cancelling a request queued for the pool frees its place; the slot stays with the
    running request, then returns when its response is closed."""
    upstream = _Held()
    transport = ResilientTransport(
        resilient.Pipeline(telemetry=False), upstream, limits=httpx.Limits(max_connections=1)
    )
    async with httpx.AsyncClient(transport=transport) as client:
        async with client.stream("GET", "http://svc.test/a") as first:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as group:
                    group.start_soon(client.get, "http://svc.test/b")
                    await anyio.wait_all_tasks_blocked()
                    scope.cancel()
            assert _counts(transport) == (1, 0)
            upstream.release.set()
            await first.aread()
        assert _counts(transport) == (0, 0)
        assert upstream.sent == 1


async def test_waiting_longer_than_the_pool_timeout_is_a_pool_timeout() -> None:
    """A request that finds no free connection within httpx's pool timeout gets
    ``httpx.PoolTimeout`` (never sent, so safe to retry), as httpcore would raise."""
    clock = FakeClock()
    upstream = _Held()
    transport = ResilientTransport(
        resilient.Pipeline(telemetry=False, clock=clock),
        upstream,
        limits=httpx.Limits(max_connections=1),
    )
    timeout = httpx.Timeout(5.0, pool=2.0)
    async with (
        httpx.AsyncClient(transport=transport, timeout=timeout) as c,
        c.stream("GET", "http://svc.test/a"),
    ):
        async with anyio.create_task_group() as group:

            async def second() -> None:
                with pytest.raises(httpx.PoolTimeout):
                    await c.get("http://svc.test/b")

            group.start_soon(second)
            await anyio.wait_all_tasks_blocked()
            clock.advance(2.0)
        upstream.release.set()
    assert _counts(transport) == (0, 0)
    assert upstream.sent == 1


def test_the_gate_is_sized_to_the_pool_it_fronts() -> None:
    """The gate takes the size of the pool: built from ``limits``, read from an httpx
    transport, none for an unlimited pool or a transport of unknown size."""
    pipeline = resilient.Pipeline(telemetry=False)

    def size(transport: ResilientTransport) -> int | None:
        snapshot = transport.pool_snapshot()
        return None if snapshot is None else snapshot.max_concurrent

    assert size(ResilientTransport(pipeline)) == 100  # httpx's default pool
    assert size(ResilientTransport(pipeline, limits=httpx.Limits(max_connections=3))) == 3
    assert size(ResilientTransport(pipeline, _pool(7))) == 7
    assert size(ResilientTransport(pipeline, limits=httpx.Limits(max_connections=None))) is None
    assert size(ResilientTransport(pipeline, _Held())) is None
    with pytest.raises(resilient.ConfigurationError, match=r"ResilientTransport\.limits"):
        ResilientTransport(pipeline, limits=3)  # type: ignore[arg-type]


async def test_transports_sharing_a_pool_share_its_gate() -> None:
    """Two ``ResilientTransport`` over one transport queue in one gate of the pool's size
    (two gates would let twice as many requests wait inside the pool)."""
    upstream = _Held()
    one = httpx.Limits(max_connections=1)
    first = ResilientTransport(resilient.Pipeline(telemetry=False), upstream, limits=one)
    second = ResilientTransport(
        resilient.Pipeline(Timeout(1.0), telemetry=False), upstream, limits=one
    )
    async with (
        httpx.AsyncClient(transport=first) as a,
        httpx.AsyncClient(transport=second) as b,
        a.stream("GET", "http://svc.test/a"),
    ):
        assert _counts(second) == (1, 0)
        async with anyio.create_task_group() as group:
            group.start_soon(b.get, "http://svc.test/b")
            await anyio.wait_all_tasks_blocked()
            assert _counts(first) == (1, 1)  # b's request waits for the slot a's response holds
            group.cancel_scope.cancel()
        assert upstream.sent == 1
        upstream.release.set()
    assert _counts(first) == _counts(second) == (0, 0)
    with pytest.raises(resilient.ConfigurationError, match=r"already gated at 1"):
        ResilientTransport(
            resilient.Pipeline(telemetry=False), upstream, limits=httpx.Limits(max_connections=5)
        )


def test_transport_options_that_cannot_work_together_are_refused_naming_both() -> None:
    """Options meaningless without another, or contradicting the wrapped pool, are refused
    at construction with both options in the message."""
    pipeline = resilient.Pipeline(telemetry=False)
    cases: list[tuple[dict[str, object], str, str]] = [
        ({"deadline_header": "x-budget"}, "deadline_header", "propagate_deadline"),
        ({"telemetry": False, "tracer_provider": object()}, "tracer_provider", "telemetry"),
        ({"limits": httpx.Limits(max_connections=10)}, "limits", "pool (2 connections)"),
    ]
    for options, option, other in cases:
        with pytest.raises(resilient.ConfigurationError) as caught:
            ResilientTransport(pipeline, _pool(2), **options)  # type: ignore[arg-type]
        assert caught.value.parameter == f"ResilientTransport.{option}"
        assert other in str(caught.value)
    # The same values that agree are accepted.
    ResilientTransport(pipeline, _pool(2), limits=httpx.Limits(max_connections=2))
    ResilientTransport(pipeline, _pool(2), propagate_deadline=True, deadline_header="x-budget")


class _ShieldedCleanup(httpx.AsyncBaseTransport):
    """Cleans up like httpcore: on cancellation, a shielded cleanup that awaits a few times
    (httpcore returns the connection to the pool there); records whether it finished."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.cleaned = False
        self.closed_bodies = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            self.started.set()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                for _ in range(5):
                    await anyio.lowlevel.checkpoint()
                self.cleaned = True
        raise AssertionError("unreachable")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_second_task_cancellation_cannot_cut_the_pools_cleanup() -> None:
    """asyncio only (trio's cancellation always respects shields): two ``Task.cancel()``
    in a row, as two timers firing together do, still let the wrapped transport finish its
    shielded cleanup before the caller's cancellation goes on; the slot is then free."""
    upstream = _ShieldedCleanup()
    transport = ResilientTransport(
        resilient.Pipeline(telemetry=False), upstream, limits=httpx.Limits(max_connections=1)
    )
    async with httpx.AsyncClient(transport=transport) as client:
        caller = asyncio.ensure_future(client.get("http://svc.test/"))
        await upstream.started.wait()
        caller.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        caller.cancel()  # lands while the cleanup awaits inside its shield
        with pytest.raises(asyncio.CancelledError):
            await caller
    assert upstream.cleaned
    assert _counts(transport) == (0, 0)


class _Body(httpx.AsyncByteStream):
    """A response body that records whether it was closed."""

    def __init__(self) -> None:
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"ok"

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()
        self.closed = True


class _Answering(httpx.AsyncBaseTransport):
    """Answers at once, calling ``just_before()`` as it does (to time a cancellation), then
    answering right away or (``pause``) after one more checkpoint."""

    def __init__(self, *, pause: bool = False) -> None:
        self.body = _Body()
        self.just_before: Any = None
        self.pause = pause

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await anyio.lowlevel.checkpoint()
        self.just_before()
        if self.pause:
            await anyio.lowlevel.checkpoint()
        return httpx.Response(200, stream=self.body)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_response_the_cancelled_caller_never_got_is_closed(when: str) -> None:
    """asyncio only: a caller cancelled as the wrapped transport answers, before the answer
    reached it (``before``) or after it was handed over but before the caller resumed
    (``after``), raises its cancellation; the response is closed and the slot is free."""
    upstream = _Answering()
    transport = ResilientTransport(
        resilient.Pipeline(telemetry=False), upstream, limits=httpx.Limits(max_connections=1)
    )
    async with httpx.AsyncClient(transport=transport) as client:
        caller = asyncio.ensure_future(client.get("http://svc.test/"))
        loop = asyncio.get_running_loop()
        upstream.just_before = (
            caller.cancel if when == "before" else lambda: loop.call_soon(caller.cancel)
        )
        with pytest.raises(asyncio.CancelledError):
            await caller
    assert upstream.body.closed
    assert _counts(transport) == (0, 0)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_cancelled_sending_task_cancels_the_caller() -> None:
    """asyncio only: when the task sending a request is itself cancelled (say, by a shutdown
    cancelling every task), the caller is cancelled too, and does not wait forever."""
    upstream = _Answering(pause=True)
    transport = ResilientTransport(
        resilient.Pipeline(telemetry=False), upstream, limits=httpx.Limits(max_connections=1)
    )

    def cancel_the_sender() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()

    upstream.just_before = cancel_the_sender
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(asyncio.CancelledError):
            await client.get("http://svc.test/")
    assert _counts(transport) == (0, 0)

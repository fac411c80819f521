"""ResilienceMiddleware at the ASGI level: Starlette and FastAPI apps through httpx's
ASGITransport, and raw ASGI conversations for what a transport cannot show (disconnects,
lifespan, websockets). Every test runs on asyncio and trio; time is virtual (FakeClock)."""

from __future__ import annotations

import contextvars
import math
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import resilient
from resilient import ConfigurationError
from resilient.asgi import ResilienceMiddleware
from resilient.events import CallRejected
from resilient.testing import EventRecorder, FakeClock
from test_telemetry_support import Otel

Message = dict[str, Any]


class Conn:
    """A fake server side of one connection: scripted receive, recorded send."""

    def __init__(self, *messages: Message) -> None:
        self.inbox = list(messages) or [{"type": "http.request", "body": b"", "more_body": False}]
        self.sent: list[Message] = []
        self.gone = anyio.Event()
        self.receive_calls = 0
        self.on_send: Callable[[Message], Awaitable[None]] | None = None

    async def receive(self) -> Message:
        self.receive_calls += 1
        if self.inbox:
            return self.inbox.pop(0)
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if self.on_send is not None:
            await self.on_send(message)

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) <= 1, "more than one response start"
        return starts[0]["status"] if starts else None

    def header(self, name: bytes) -> bytes | None:
        for m in self.sent:
            if m["type"] == "http.response.start":
                for k, v in m["headers"]:
                    if k == name:
                        return bytes(v)
        return None


def scope(
    path: str = "/",
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] | None = ("203.0.113.7", 5000),
    method: str = "GET",
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers or [(b"host", b"test")],
        "client": client,
        "server": ("127.0.0.1", 8000),
    }


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
    await send({"type": "http.response.body", "body": b"ok"})


def client(app: Any, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", **kwargs
    )


# -- pass-through ---------------------------------------------------------------------------


async def test_response_passes_through_unchanged_when_nothing_is_configured() -> None:
    conn = Conn()
    await ResilienceMiddleware(ok_app)(scope(), conn.receive, conn.send)
    assert conn.sent == [
        {"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]},
        {"type": "http.response.body", "body": b"ok"},
    ]


async def test_lifespan_scope_reaches_the_app_and_startup_runs() -> None:
    started: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                started.append("startup")
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    conn = Conn({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"})
    mw = ResilienceMiddleware(app, max_concurrent=1, rate=1.0, timeout=1.0)
    await mw({"type": "lifespan", "asgi": {"version": "3.0"}}, conn.receive, conn.send)
    assert started == ["startup"]
    assert [m["type"] for m in conn.sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


async def test_context_variables_set_by_the_app_stay_visible_to_the_caller() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        var.set("set by the app")
        await ok_app(scope, receive, send)

    conn = Conn()
    clock = FakeClock()
    for mw in (
        ResilienceMiddleware(app, max_concurrent=2, rate=5.0, timeout=5.0),
        ResilienceMiddleware(app, max_concurrent=2, timeout=5.0, clock=clock),
    ):
        var.set("unset")
        await mw(scope(), conn.receive, conn.send)
        assert var.get() == "set by the app"


async def test_request_body_is_left_for_the_app_to_read_chunk_by_chunk() -> None:
    chunks = [
        {"type": "http.request", "body": b"one", "more_body": True},
        {"type": "http.request", "body": b"two", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": False},
    ]
    conn = Conn(*chunks)
    seen: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert conn.receive_calls == 0, "the middleware read the body before the app"
        while True:
            message = await receive()
            seen.append(message)
            if not message.get("more_body"):
                break
        await ok_app(scope, receive, send)

    headers = [(b"host", b"t"), (b"transfer-encoding", b"chunked")]
    for mw in (
        ResilienceMiddleware(app, max_concurrent=1, timeout=5.0, rate=10.0),
        ResilienceMiddleware(app, max_concurrent=1, timeout=5.0, clock=FakeClock()),
    ):
        conn.inbox = list(chunks)
        conn.receive_calls = 0
        seen.clear()
        await mw(scope(method="POST", headers=headers), conn.receive, conn.send)
        assert seen == chunks


async def test_streaming_response_is_forwarded_chunk_by_chunk_with_one_start() -> None:
    forwarded = [anyio.Event() for _ in range(3)]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"%d" % i, "more_body": True})
            # The next chunk is produced only once this one reached the server: no buffering.
            with anyio.fail_after(5):
                await forwarded[i].wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    conn = Conn()

    async def on_send(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("more_body"):
            forwarded[int(message["body"])].set()

    conn.on_send = on_send
    mw = ResilienceMiddleware(app, timeout=1.0, total_timeout=60.0, clock=FakeClock())
    await mw(scope(), conn.receive, conn.send)
    assert conn.status == 200
    assert [m.get("body") for m in conn.sent[1:]] == [b"0", b"1", b"2", b""]


async def test_sse_stream_from_starlette_arrives_event_by_event() -> None:
    async def events(request: Request) -> StreamingResponse:
        async def gen() -> AsyncIterator[str]:
            for i in range(3):
                yield f"data: {i}\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/events", events)])
    app.add_middleware(ResilienceMiddleware, max_concurrent=4, rate=100.0, timeout=5.0)
    async with client(app) as c, c.stream("GET", "/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line]
    assert lines == ["data: 0", "data: 1", "data: 2"]


async def test_excluded_path_passes_even_when_every_slot_is_taken() -> None:
    release = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/work":
            await release.wait()
        await ok_app(scope, receive, send)

    mw = ResilienceMiddleware(app, max_concurrent=1, max_waiting=0)
    busy = Conn()
    async with anyio.create_task_group() as tg:
        tg.start_soon(mw, scope("/work"), busy.receive, busy.send)
        await wait_until(lambda: mw.in_flight == 1)
        shed, health = Conn(), Conn()
        await mw(scope("/work"), shed.receive, shed.send)
        await mw(scope("/healthz"), health.receive, health.send)
        release.set()
    assert shed.status == 503
    assert health.status == 200
    assert busy.status == 200


# -- load shedding --------------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():
            await anyio.sleep(0)


async def test_burst_beyond_slots_and_queue_is_shed_at_once_with_retry_after() -> None:
    release = anyio.Event()
    ran = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal ran
        ran += 1
        await release.wait()
        await ok_app(scope, receive, send)

    mw = ResilienceMiddleware(app, max_concurrent=2, max_waiting=1, max_wait=10.0)
    conns = [Conn() for _ in range(6)]
    async with anyio.create_task_group() as tg:
        for conn in conns[:3]:
            tg.start_soon(mw, scope(), conn.receive, conn.send)
        await wait_until(lambda: mw.in_flight == 2 and mw.waiting == 1)
        for conn in conns[3:]:  # the burst: refused at once, without running
            await mw(scope(), conn.receive, conn.send)
            assert conn.status == 503
            assert conn.header(b"retry-after") == b"1"
        assert ran == 2
        release.set()
    assert [c.status for c in conns] == [200, 200, 200, 503, 503, 503]
    assert ran == 3
    assert mw.in_flight == 0
    assert mw.waiting == 0


async def test_burst_of_concurrent_requests_through_fastapi_is_shed() -> None:
    api = FastAPI()
    release = anyio.Event()

    @api.get("/work")
    async def work() -> dict[str, str]:
        await release.wait()
        return {"done": "yes"}

    api.add_middleware(ResilienceMiddleware, max_concurrent=3, max_waiting=0)
    statuses: list[int] = []
    retry_after: set[str] = set()
    async with client(api) as c:

        async def one() -> None:
            r = await c.get("/work")
            statuses.append(r.status_code)
            if r.status_code == 503:
                retry_after.add(r.headers["retry-after"])
                assert r.text == "Service Unavailable\n"

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
            await wait_until(lambda: len(statuses) == 7)
            release.set()
    assert sorted(statuses) == [200] * 3 + [503] * 7
    assert retry_after == {"1"}


async def test_queued_request_waits_at_most_max_wait_then_gets_503(clock: FakeClock) -> None:
    release = anyio.Event()
    ran = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal ran
        ran += 1
        await release.wait()
        await ok_app(scope, receive, send)

    mw = ResilienceMiddleware(app, max_concurrent=1, max_waiting=4, max_wait=0.5, clock=clock)
    first, queued = Conn(), Conn()
    async with anyio.create_task_group() as tg:
        tg.start_soon(mw, scope(), first.receive, first.send)
        await wait_until(lambda: mw.in_flight == 1)
        tg.start_soon(mw, scope(), queued.receive, queued.send)
        await wait_until(lambda: mw.waiting == 1)
        clock.advance(0.49)
        await anyio.sleep(0)
        assert queued.status is None
        clock.advance(0.02)
        await wait_until(lambda: queued.status is not None)
        release.set()
    assert queued.status == 503
    assert ran == 1
    assert mw.waiting == 0


async def test_queued_request_whose_client_left_is_dropped_without_running(
    clock: FakeClock,
) -> None:
    release = anyio.Event()
    ran = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal ran
        ran += 1
        await release.wait()
        await ok_app(scope, receive, send)

    mw = ResilienceMiddleware(app, max_concurrent=1, max_wait=30.0, clock=clock)
    first, queued = Conn(), Conn()
    async with anyio.create_task_group() as tg:
        tg.start_soon(mw, scope(), first.receive, first.send)
        await wait_until(lambda: mw.in_flight == 1)
        tg.start_soon(mw, scope(), queued.receive, queued.send)
        await wait_until(lambda: mw.waiting == 1)
        queued.gone.set()  # the queued client hangs up
        await wait_until(lambda: mw.waiting == 0)
        release.set()
    assert ran == 1
    assert queued.sent == []
    assert first.status == 200


async def test_queued_request_whose_deadline_passed_is_dropped_without_running(
    clock: FakeClock,
) -> None:
    release = anyio.Event()
    ran = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal ran
        ran += 1
        await release.wait()
        await ok_app(scope, receive, send)

    mw = ResilienceMiddleware(app, max_concurrent=1, max_wait=30.0, clock=clock)
    first, queued = Conn(), Conn()
    deadline = [(b"host", b"t"), (b"x-request-deadline", b"200")]
    async with anyio.create_task_group() as tg:
        tg.start_soon(mw, scope(), first.receive, first.send)
        await wait_until(lambda: mw.in_flight == 1)
        tg.start_soon(mw, scope(headers=deadline), queued.receive, queued.send)
        await wait_until(lambda: mw.waiting == 1)
        clock.advance(0.2)
        await wait_until(lambda: queued.status is not None)
        release.set()
    assert queued.status == 504
    assert ran == 1


async def test_slot_is_handed_to_the_queued_request_in_order() -> None:
    release = anyio.Event()
    order: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        order.append(scope["path"])
        if scope["path"] == "/a":
            await release.wait()
        await ok_app(scope, receive, send)

    mw = ResilienceMiddleware(app, max_concurrent=1, max_waiting=2, max_wait=30.0)
    async with anyio.create_task_group() as tg:
        conns = {p: Conn() for p in ("/a", "/b", "/c")}
        tg.start_soon(mw, scope("/a"), conns["/a"].receive, conns["/a"].send)
        await wait_until(lambda: mw.in_flight == 1)
        tg.start_soon(mw, scope("/b"), conns["/b"].receive, conns["/b"].send)
        await wait_until(lambda: mw.waiting == 1)
        tg.start_soon(mw, scope("/c"), conns["/c"].receive, conns["/c"].send)
        await wait_until(lambda: mw.waiting == 2)
        release.set()
    assert order == ["/a", "/b", "/c"]
    assert all(c.status == 200 for c in conns.values())


# -- rate limiting --------------------------------------------------------------------------


async def test_429_carries_retry_after_and_ietf_ratelimit_headers(clock: FakeClock) -> None:
    app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok"))])
    app.add_middleware(ResilienceMiddleware, rate=0.5, burst=2, clock=clock)
    async with client(app) as c:
        first = await c.get("/")
        second = await c.get("/")
        third = await c.get("/")
        clock.advance(2.0)
        later = await c.get("/")
    assert first.status_code == second.status_code == 200
    assert first.headers["ratelimit-policy"] == '"default";q=2;w=4'
    assert first.headers["ratelimit"] == '"default";r=1;t=2'
    assert second.headers["ratelimit"] == '"default";r=0;t=4'
    assert third.status_code == 429
    # A token comes back every 2 s: Retry-After is the real wait, in whole seconds.
    assert third.headers["retry-after"] == "2"
    assert third.headers["ratelimit"] == '"default";r=0;t=4'
    assert third.headers["ratelimit-policy"] == '"default";q=2;w=4'
    assert later.status_code == 200


async def test_retry_after_is_rounded_up_to_a_whole_second_at_least_one(clock: FakeClock) -> None:
    mw = ResilienceMiddleware(ok_app, rate=3.0, burst=1, clock=clock)
    first, second = Conn(), Conn()
    await mw(scope(), first.receive, first.send)
    await mw(scope(), second.receive, second.send)
    assert second.status == 429
    assert second.header(b"retry-after") == b"1"  # 0.33 s rounds up, never to 0


async def test_legacy_ratelimit_headers_on_request(clock: FakeClock) -> None:
    mw = ResilienceMiddleware(ok_app, rate=1.0, burst=3, rate_limit_headers="legacy", clock=clock)
    conn = Conn()
    await mw(scope(), conn.receive, conn.send)
    assert conn.header(b"ratelimit-limit") == b"3"
    assert conn.header(b"ratelimit-remaining") == b"2"
    assert conn.header(b"ratelimit-reset") == b"1"
    assert conn.header(b"ratelimit") is None


async def test_each_client_address_has_its_own_bucket(clock: FakeClock) -> None:
    mw = ResilienceMiddleware(ok_app, rate=1.0, burst=1, clock=clock)
    statuses = []
    for peer in ("198.51.100.1", "198.51.100.2", "198.51.100.1"):
        conn = Conn()
        await mw(scope(client=(peer, 1000)), conn.receive, conn.send)
        statuses.append(conn.status)
    assert statuses == [200, 200, 429]


async def test_spoofed_x_forwarded_for_without_trusted_proxies_is_ignored(
    clock: FakeClock,
) -> None:
    app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok"))])
    app.add_middleware(ResilienceMiddleware, rate=1.0, burst=1, clock=clock)
    async with client(app) as c:
        statuses = [
            (await c.get("/", headers={"x-forwarded-for": f"192.0.2.{i}"})).status_code
            for i in range(3)
        ]
    assert statuses == [200, 429, 429]


async def test_rotating_the_spoofed_part_behind_a_trusted_proxy_earns_no_fresh_bucket(
    clock: FakeClock,
) -> None:
    app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok"))])
    # ASGITransport's peer is 127.0.0.1: our proxy. It appends the address it saw.
    app.add_middleware(
        ResilienceMiddleware, rate=1.0, burst=1, trusted_proxies=["127.0.0.1"], clock=clock
    )
    async with client(app) as c:
        spoofed = [
            (await c.get("/", headers={"x-forwarded-for": f"10.9.9.{i}, 198.51.100.20"}))
            for i in range(3)
        ]
        other = await c.get("/", headers={"x-forwarded-for": "198.51.100.21"})
    assert [r.status_code for r in spoofed] == [200, 429, 429]
    assert other.status_code == 200


async def test_custom_key_function_partitions_buckets(clock: FakeClock) -> None:
    def by_api_key(scope: Any) -> str | None:
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                return "key:" + value.decode()
        return None

    mw = ResilienceMiddleware(ok_app, rate=1.0, burst=1, client_key=by_api_key, clock=clock)
    statuses = []
    for api_key in (b"a", b"b", b"a"):
        conn = Conn()
        await mw(scope(headers=[(b"x-api-key", api_key)]), conn.receive, conn.send)
        statuses.append(conn.status)
    assert statuses == [200, 200, 429]


async def test_unix_socket_clients_share_the_documented_fallback_bucket(clock: FakeClock) -> None:
    mw = ResilienceMiddleware(ok_app, rate=1.0, burst=1, clock=clock)
    assert mw.client_key(scope(client=None)) == resilient.asgi.NO_PEER_KEY
    first, second = Conn(), Conn()
    await mw(scope(client=None), first.receive, first.send)
    await mw(scope(client=None), second.receive, second.send)
    assert (first.status, second.status) == (200, 429)


async def test_client_buckets_are_bounded_in_number(clock: FakeClock) -> None:
    mw = ResilienceMiddleware(ok_app, rate=1.0, burst=1, max_keys=100, clock=clock)
    for i in range(1000):
        conn = Conn()
        await mw(scope(client=(f"10.1.{i // 250}.{i % 250}", 1)), conn.receive, conn.send)
        assert conn.status == 200
    assert mw.rate_limiter is not None
    assert mw.rate_limiter.snapshot("10.1.3.249").keys <= 100


# -- timeouts -------------------------------------------------------------------------------


async def test_app_not_starting_its_response_in_time_gets_504_and_is_cancelled(
    clock: FakeClock,
) -> None:
    cancelled = anyio.Event()

    async def slow(request: Request) -> Response:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")

    app = Starlette(routes=[Route("/slow", slow)])
    app.add_middleware(ResilienceMiddleware, timeout=5.0, clock=clock)
    async with client(app) as c, anyio.create_task_group() as tg:
        responses: list[httpx.Response] = []

        async def call() -> None:
            responses.append(await c.get("/slow"))

        tg.start_soon(call)
        await anyio.sleep(0.01)  # let the request reach the app (real loop turns, no timing)
        clock.advance(4.9)
        await anyio.sleep(0)
        assert not responses
        clock.advance(0.2)
    assert cancelled.is_set()
    assert responses[0].status_code == 504
    assert responses[0].text == "Gateway Timeout\n"


async def test_deadline_after_the_response_started_aborts_instead_of_a_second_response(
    clock: FakeClock,
) -> None:
    cancelled = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    mw = ResilienceMiddleware(app, timeout=1.0, total_timeout=10.0, clock=clock)
    conn = Conn()
    errors: list[Exception] = []

    async def serve() -> None:
        try:
            await mw(scope(), conn.receive, conn.send)
        except Exception as exc:  # what the server sees: it closes the connection
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        await wait_until(lambda: len(conn.sent) == 2)
        clock.advance(5.0)  # past `timeout`: the response had started in time
        await anyio.sleep(0)
        assert not cancelled.is_set()
        clock.advance(5.0)  # past total_timeout
    assert cancelled.is_set()
    assert len(errors) == 1
    assert isinstance(errors[0], resilient.TimeoutExceeded)
    assert "after the response started" in str(errors[0])
    assert conn.status == 200  # one start, no second response
    assert conn.sent[-1] == {"type": "http.response.body", "body": b"partial", "more_body": True}


@pytest.mark.parametrize("trailers", [True, False])
async def test_a_response_is_guarded_until_its_last_message(
    clock: FakeClock, trailers: bool
) -> None:
    """With trailers declared, the last body chunk does not complete the response: a deadline
    passing before the trailers aborts it. Without, the app's work after the last chunk is
    not cut (the response is complete)."""
    proceed = anyio.Event()
    finished = False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal finished
        await send({"type": "http.response.start", "status": 200, "trailers": trailers})
        await send({"type": "http.response.body", "body": b"all", "more_body": False})
        await proceed.wait()
        if trailers:
            await send({"type": "http.response.trailers", "headers": [], "more_trailers": False})
        finished = True

    mw = ResilienceMiddleware(app, total_timeout=10.0, clock=clock)
    conn = Conn()
    errors: list[Exception] = []

    async def serve() -> None:
        try:
            await mw(scope(), conn.receive, conn.send)
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        await wait_until(lambda: len(conn.sent) == 2)
        clock.advance(20.0)  # past total_timeout
        if trailers:
            await wait_until(lambda: bool(errors))
        proceed.set()
    if trailers:
        assert [type(e) for e in errors] == [resilient.TimeoutExceeded]
        assert not finished
    else:
        assert errors == []
        assert finished
    assert [m["type"] for m in conn.sent][-1] == "http.response.body"


async def test_streaming_after_start_is_not_cut_by_the_start_timeout(clock: FakeClock) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(3):
            await clock.sleep(1.0)
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    conn = Conn()
    await ResilienceMiddleware(app, timeout=0.5, clock=clock)(scope(), conn.receive, conn.send)
    assert b"".join(m.get("body", b"") for m in conn.sent) == b"xxx"


async def test_caller_deadline_header_tightens_the_timeout(clock: FakeClock) -> None:
    started = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        await anyio.sleep_forever()

    mw = ResilienceMiddleware(app, timeout=30.0, clock=clock)
    conn = Conn()
    async with anyio.create_task_group() as tg:
        tg.start_soon(mw, scope(headers=[(b"x-request-deadline", b"250")]), conn.receive, conn.send)
        await started.wait()
        clock.advance(0.25)
    assert conn.status == 504


async def test_expired_caller_deadline_is_refused_without_running() -> None:
    ran = False

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal ran
        ran = True

    conn = Conn()
    mw = ResilienceMiddleware(app)
    await mw(scope(headers=[(b"x-request-deadline", b"0")]), conn.receive, conn.send)
    assert conn.status == 504
    assert not ran


async def test_app_sees_the_request_deadline_through_resilient_remaining(
    clock: FakeClock,
) -> None:
    seen: list[float] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(resilient.remaining())
        await ok_app(scope, receive, send)

    mw = ResilienceMiddleware(app, timeout=5.0, clock=clock)
    conn = Conn()
    await mw(scope(headers=[(b"x-request-deadline", b"1500")]), conn.receive, conn.send)
    assert seen == [pytest.approx(1.5)]
    await ResilienceMiddleware(app)(scope(), conn.receive, conn.send)
    assert seen[-1] == math.inf


async def test_pipelines_in_the_app_inherit_the_request_deadline_on_the_system_clock() -> None:
    """A pipeline called by the app starts from the request's deadline (not its own 60 s),
    on the default clock (asyncio: the timer runtime); no deadline is left afterwards."""
    seen: list[float] = []

    async def remaining() -> float:
        return resilient.remaining()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(await resilient.Pipeline(resilient.Timeout(60.0)).call(remaining))
        await ok_app(scope, receive, send)
        seen.append(await resilient.Pipeline(resilient.Timeout(60.0)).call(remaining))

    conn = Conn()
    await ResilienceMiddleware(app, timeout=5.0)(scope(), conn.receive, conn.send)
    assert conn.status == 200
    assert 0.0 < seen[0] <= 5.0
    assert 5.0 < seen[1] <= 60.0  # the response started: no start deadline any more
    assert resilient.remaining() == math.inf


async def test_a_context_copied_during_the_request_does_not_keep_the_request_alive() -> None:
    """Loop callbacks and server timers scheduled by the app copy its context, deadline
    included; that copy must not hold the request (scope, server callables) once it ended."""
    copies: list[contextvars.Context] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        copies.append(contextvars.copy_context())  # as a keep-alive timer armed in send does
        await ok_app(scope, receive, send)

    conn = Conn()
    await ResilienceMiddleware(app, timeout=5.0)(scope(), conn.receive, conn.send)
    assert conn.status == 200
    [published] = [v for v in copies[0].values() if hasattr(v, "deadline_source")]
    assert published.deadline_timeout == pytest.approx(5.0)
    alive = weakref.ref(conn)
    del conn
    assert alive() is None  # freed by reference counting: nothing in the copy points to it


async def test_telemetry_without_an_sdk_is_probed_at_most_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While nothing records, requests skip the telemetry probe; an SDK installed later is
    picked up within a second."""
    import resilient.asgi._middleware as module

    now = [1000.0]
    monkeypatch.setattr(module, "_monotonic", lambda: now[0])
    probes: list[float] = []
    recording = False

    def probe() -> bool:
        probes.append(now[0])
        return recording

    starts: list[str] = []

    class Observer:  # a CallObserver with the cheap recording() probe, as Telemetry has
        def start(self, ctx: Any) -> None:
            starts.append(ctx.operation)

        def end(self, ctx: Any, error: Any, result: Any) -> None:
            pass

        def event(self, ctx: Any, event: Any) -> None:
            pass

        def recording(self) -> bool:
            return probe()

    mw = ResilienceMiddleware(ok_app, telemetry=Observer())
    for _ in range(5):
        await mw(scope(), Conn().receive, Conn().send)
    now[0] += 0.5
    await mw(scope(), Conn().receive, Conn().send)
    assert probes == [1000.0]  # one probe for six requests
    recording = True  # an SDK is installed
    now[0] += 0.5
    await mw(scope(), Conn().receive, Conn().send)
    assert probes == [1000.0, 1001.0]
    assert starts == ["GET"]


@pytest.mark.parametrize("anyio_backend", ["trio"])  # asyncio: see test_asgi_server.py
async def test_timeouts_on_the_system_clock_fire_on_trio_with_virtual_time() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await anyio.sleep_forever()

    conn = Conn()
    await ResilienceMiddleware(app, timeout=3.0)(scope(), conn.receive, conn.send)
    assert conn.status == 504


_MOCK_CLOCK_TEST = "test_timeouts_on_the_system_clock_fire_on_trio_with_virtual_time"


@pytest.fixture
def anyio_backend_options(anyio_backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    # trio's virtual clock only for the test that asks for it (it would also jump the clock
    # inside httpx's and Starlette's own waits).
    if anyio_backend == "trio" and request.function.__name__ == _MOCK_CLOCK_TEST:
        import trio.testing

        return {"clock": trio.testing.MockClock(autojump_threshold=0)}
    return {}


# -- client disconnect ----------------------------------------------------------------------


@pytest.mark.parametrize("use_fake_clock", [True, False], ids=["fake-clock", "system-clock"])
async def test_client_disconnect_cancels_the_app_and_frees_its_slot(use_fake_clock: bool) -> None:
    cancelled = anyio.Event()
    started = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/quick":
            await ok_app(scope, receive, send)
            return
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    clock = FakeClock() if use_fake_clock else None
    mw = ResilienceMiddleware(app, max_concurrent=1, max_waiting=0, clock=clock)
    conn = Conn()
    async with anyio.create_task_group() as tg:
        tg.start_soon(mw, scope("/slow"), conn.receive, conn.send)
        await started.wait()
        conn.gone.set()
        with anyio.fail_after(5):
            await cancelled.wait()
    assert conn.sent == []
    assert mw.in_flight == 0
    after = Conn()
    await mw(scope("/quick"), after.receive, after.send)
    assert after.status == 200


async def test_disconnect_seen_by_the_app_itself_cancels_its_remaining_work() -> None:
    cancelled = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = await receive()
        assert body["type"] == "http.request"
        message = await receive()
        assert message["type"] == "http.disconnect"
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    conn = Conn(
        {"type": "http.request", "body": b"x", "more_body": False},
        {"type": "http.disconnect"},
    )
    headers = [(b"content-length", b"1")]
    await ResilienceMiddleware(app, max_concurrent=1)(
        scope(method="POST", headers=headers), conn.receive, conn.send
    )
    assert cancelled.is_set()
    assert conn.sent == []


async def test_background_work_after_the_response_completed_is_not_cancelled() -> None:
    finished = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await ok_app(scope, receive, send)
        await receive()  # the client has its response and hangs up
        await anyio.sleep(0)
        finished.set()

    conn = Conn()
    conn.gone.set()
    await ResilienceMiddleware(app, max_concurrent=1)(scope(), conn.receive, conn.send)
    assert finished.is_set()
    assert conn.status == 200


# -- websockets -----------------------------------------------------------------------------


async def echo_ws(scope: Any, receive: Any, send: Any) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    message = await receive()
    await send({"type": "websocket.send", "text": "echo:" + message["text"]})
    await send({"type": "websocket.close", "code": 1000})


def ws_scope(extensions: dict[str, Any] | None = None) -> dict[str, Any]:
    s = scope("/ws")
    s["type"] = "websocket"
    s["scheme"] = "ws"
    s["subprotocols"] = []
    s["extensions"] = extensions or {}
    return s


async def test_websocket_passes_through_untouched_by_default() -> None:
    conn = Conn({"type": "websocket.connect"}, {"type": "websocket.receive", "text": "hi"})
    mw = ResilienceMiddleware(echo_ws, max_concurrent=1, rate=1.0, burst=1, timeout=1.0)
    for _ in range(2):  # not rate limited either
        conn.inbox = [
            {"type": "websocket.connect"},
            {"type": "websocket.receive", "text": "hi"},
        ]
        conn.sent.clear()
        await mw(ws_scope(), conn.receive, conn.send)
        assert [m["type"] for m in conn.sent] == [
            "websocket.accept",
            "websocket.send",
            "websocket.close",
        ]
        assert conn.sent[1]["text"] == "echo:hi"


async def test_limited_websocket_handshake_is_refused_when_rate_limited(clock: FakeClock) -> None:
    mw = ResilienceMiddleware(echo_ws, rate=1.0, burst=1, limit_websockets=True, clock=clock)
    first = Conn({"type": "websocket.connect"}, {"type": "websocket.receive", "text": "a"})
    await mw(ws_scope(), first.receive, first.send)
    assert first.sent[0]["type"] == "websocket.accept"
    second = Conn({"type": "websocket.connect"})
    await mw(ws_scope(), second.receive, second.send)
    assert second.sent == [{"type": "websocket.close", "code": 1013, "reason": "try again later"}]
    third = Conn({"type": "websocket.connect"})
    await mw(ws_scope({"websocket.http.response": {}}), third.receive, third.send)
    assert third.sent[0]["type"] == "websocket.http.response.start"
    assert third.sent[0]["status"] == 429


async def test_starlette_websocket_route_works_behind_the_middleware() -> None:
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello " + await websocket.receive_text())
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/ws", ws)])
    app.add_middleware(ResilienceMiddleware, max_concurrent=1, rate=5.0, limit_websockets=True)
    conn = Conn({"type": "websocket.connect"}, {"type": "websocket.receive", "text": "you"})
    await app(ws_scope(), conn.receive, conn.send)
    assert [m["type"] for m in conn.sent] == [
        "websocket.accept",
        "websocket.send",
        "websocket.close",
    ]
    assert conn.sent[1]["text"] == "hello you"


# -- telemetry ------------------------------------------------------------------------------


async def test_rejections_are_reported_per_route_template(clock: FakeClock) -> None:
    api = FastAPI()

    @api.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        await anyio.sleep_forever()
        return {"id": item_id}

    events = EventRecorder()
    api.add_middleware(
        ResilienceMiddleware, timeout=1.0, rate=0.1, burst=1, listeners=[events], clock=clock
    )
    async with client(api) as c, anyio.create_task_group() as tg:
        responses: list[httpx.Response] = []

        async def call() -> None:
            responses.append(await c.get("/items/42"))

        tg.start_soon(call)
        await anyio.sleep(0.01)
        clock.advance(1.0)
        await wait_until(lambda: bool(responses))
        limited = await c.get("/items/43")
    rejected = events.of_type(CallRejected)
    assert responses[0].status_code == 504
    assert limited.status_code == 429
    assert [(e.operation, e.reason, e.policy) for e in rejected] == [
        ("/items/{item_id}", "deadline", "request_timeout"),
        ("GET", "rate_limited", "rate_limit"),
    ]


async def test_spans_and_metrics_are_named_by_route_template_never_the_raw_path() -> None:
    """The observer takes the route template the middleware learns after routing."""
    otel = Otel.create()

    async def user(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["id"])

    app = Starlette(routes=[Route("/users/{id}", user)])
    app.add_middleware(ResilienceMiddleware, telemetry=otel.telemetry)
    async with client(app) as c:
        assert (await c.get("/users/42")).text == "42"
        assert (await c.get("/users/7")).text == "7"
        assert (await c.get("/nowhere/13")).status_code == 404
    spans = otel.spans()
    assert [s.name for s in spans] == ["asgi /users/{id}", "asgi /users/{id}", "asgi GET"]
    assert [s.attributes["resilient.operation"] for s in spans if s.attributes] == [
        "/users/{id}",
        "/users/{id}",
        "GET",
    ]
    points = otel.points("resilient.call.duration")
    assert sorted((p.attributes["resilient.operation"], p.count) for p in points) == [
        ("/users/{id}", 2),
        ("GET", 1),
    ]
    for text in [s.name for s in spans] + [str(p.attributes) for p in points]:
        assert "42" not in text
        assert "13" not in text


async def test_route_names_stay_bounded_by_the_observer() -> None:
    """Past Telemetry(max_operations) distinct names, later routes are reported as _OTHER."""
    otel = Otel.create(max_operations=2)  # "GET" (the name at start) and one template

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/a/{x}", hello), Route("/b/{x}", hello)])
    app.add_middleware(ResilienceMiddleware, telemetry=otel.telemetry)
    async with client(app) as c:
        await c.get("/a/1")
        await c.get("/b/2")
    assert [s.name for s in otel.spans()] == ["asgi /a/{x}", "asgi _OTHER"]


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"max_concurrent": 0}, "ResilienceMiddleware.max_concurrent"),
        ({"max_waiting": 3}, "ResilienceMiddleware.max_waiting"),
        ({"rate": -1.0}, "ResilienceMiddleware.rate"),
        ({"rate": 1.0, "burst": 0}, "ResilienceMiddleware.burst"),
        ({"burst": 3}, "ResilienceMiddleware.burst"),
        ({"timeout": 0}, "ResilienceMiddleware.timeout"),
        ({"trusted_proxies": ["not-an-ip"]}, "ResilienceMiddleware.trusted_proxies"),
        ({"forwarded_header": "x-real-ip"}, "ResilienceMiddleware.forwarded_header"),
        ({"rate_limit_headers": "all"}, "ResilienceMiddleware.rate_limit_headers"),
        ({"exclude": ["health"]}, "ResilienceMiddleware.exclude"),
        ({"deadline_header": ""}, "ResilienceMiddleware.deadline_header"),
    ],
)
def test_invalid_options_name_the_parameter(kwargs: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        ResilienceMiddleware(ok_app, **kwargs)
    assert info.value.parameter == parameter


def test_default_burst_is_a_tenth_of_a_second_of_rate() -> None:
    limiter = ResilienceMiddleware(ok_app, rate=200.0).rate_limiter
    assert limiter is not None
    assert limiter.burst == 20
    assert ResilienceMiddleware(ok_app, rate=2.0).rate_limiter.burst == 1  # type: ignore[union-attr]

"""ResilienceMiddleware behind a real uvicorn server on 127.0.0.1 (a free port), asyncio only:
uvicorn runs on asyncio. These tests use the system clock, so the deadlines here are short
real ones; each test is bounded by ``fail_after``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from resilient.asgi import ResilienceMiddleware
from resilient.telemetry import prometheus

pytestmark = pytest.mark.slow


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Run ``app`` on uvicorn at 127.0.0.1 on a free port; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # proxy_headers=False: uvicorn would otherwise rewrite the client address from
    # X-Forwarded-For itself for loopback peers; the middleware's own handling is under test.
    config = uvicorn.Config(
        app, lifespan="on", log_level="critical", access_log=False, proxy_headers=False
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        with anyio.fail_after(10):
            while not server.started:
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        try:
            with anyio.fail_after(10):
                await task
        finally:
            sock.close()


def make_app(**options: Any) -> tuple[Starlette, dict[str, Any]]:
    state: dict[str, Any] = {
        "started": False,
        "release": asyncio.Event(),
        "cancelled": asyncio.Event(),
        "in_slow": asyncio.Event(),
        "gate": asyncio.Event(),
    }

    async def quick(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def wait(request: Request) -> Response:
        await state["release"].wait()
        return PlainTextResponse("done")

    async def slow(request: Request) -> Response:
        state["in_slow"].set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            state["cancelled"].set()
            raise
        return PlainTextResponse("late")

    async def stall_after_start(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"first chunk\n"
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                state["cancelled"].set()
                raise
            yield b"never\n"

        return StreamingResponse(body(), media_type="text/plain")

    async def events(request: Request) -> Response:
        async def gen() -> AsyncIterator[str]:
            yield "data: one\n\n"
            await state["gate"].wait()  # set by the client once it has read "one"
            yield "data: two\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("echo:" + await websocket.receive_text())
        await websocket.close()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["started"] = True
        yield

    app = Starlette(
        routes=[
            Route("/quick", quick),
            Route("/wait", wait),
            Route("/slow", slow),
            Route("/stall", stall_after_start),
            Route("/events", events),
            WebSocketRoute("/ws", echo),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(ResilienceMiddleware, **options)
    return app, state


async def test_lifespan_startup_runs_and_requests_are_served() -> None:
    app, state = make_app(max_concurrent=4, rate=100.0, timeout=5.0)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/quick")
    assert state["started"]
    assert response.status_code == 200
    assert response.text == "ok"
    assert response.headers["ratelimit-policy"] == '"default";q=10;w=1'


async def test_burst_of_concurrent_requests_is_shed_with_503_and_retry_after() -> None:
    app, state = make_app(max_concurrent=2, max_waiting=0)
    statuses: list[int] = []
    retry_after: set[str] = set()
    limits = httpx.Limits(max_connections=20)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, limits=limits) as client:

        async def one() -> None:
            response = await client.get("/wait")
            statuses.append(response.status_code)
            if response.status_code == 503:
                retry_after.add(response.headers["retry-after"])

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(one)
                while len(statuses) < 8:
                    await asyncio.sleep(0.01)
                state["release"].set()
    assert sorted(statuses) == [200, 200] + [503] * 8
    assert retry_after == {"1"}


async def test_rate_limited_client_gets_429_with_retry_after_and_ratelimit_headers() -> None:
    app, _ = make_app(rate=0.5, burst=1)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        first = await client.get("/quick")
        second = await client.get("/quick")
    assert first.status_code == 200
    assert second.status_code == 429
    assert second.headers["retry-after"] == "2"
    assert second.headers["ratelimit"] == '"default";r=0;t=2'
    assert second.headers["ratelimit-policy"] == '"default";q=1;w=2'


async def test_spoofed_x_forwarded_for_does_not_earn_fresh_buckets() -> None:
    app, _ = make_app(rate=0.5, burst=1)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        statuses = [
            (await client.get("/quick", headers={"x-forwarded-for": f"192.0.2.{i}"})).status_code
            for i in range(4)
        ]
    assert statuses == [200, 429, 429, 429]


async def test_behind_a_trusted_proxy_the_right_most_untrusted_hop_is_the_client() -> None:
    app, _ = make_app(rate=0.5, burst=1, trusted_proxies=["127.0.0.1"])
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        rotated = [
            await client.get("/quick", headers={"x-forwarded-for": f"10.0.0.{i}, 198.51.100.7"})
            for i in range(3)
        ]
        other = await client.get("/quick", headers={"x-forwarded-for": "198.51.100.8"})
    assert [r.status_code for r in rotated] == [200, 429, 429]
    assert other.status_code == 200


async def test_with_hop_counting_a_host_behind_the_proxy_cannot_spend_anothers_bucket() -> None:
    """The loopback client plays the one ingress proxy; a pod inside the trusted range sends
    a header naming a victim, and the ingress appends the pod's own address."""
    app, _ = make_app(rate=0.5, burst=1, trusted_proxies=["127.0.0.0/8"], trusted_hops=1)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        from_pod = [
            await client.get("/quick", headers={"x-forwarded-for": "198.51.100.9, 10.1.2.3"})
            for _ in range(3)
        ]
        victim = await client.get("/quick", headers={"x-forwarded-for": "198.51.100.9"})
    assert [r.status_code for r in from_pod] == [200, 429, 429]
    assert victim.status_code == 200


async def test_metrics_route_is_served_without_redirect_and_never_rate_limited() -> None:
    app, _ = make_app(rate=0.5, burst=1)
    prometheus.add_route(app, registry=CollectorRegistry())
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/quick")).status_code == 200
        assert (await client.get("/quick")).status_code == 429
        scrapes = [await client.get(path) for path in ["/metrics", "/metrics/"] * 3]
    assert [r.status_code for r in scrapes] == [200] * 6  # httpx follows no redirect
    assert all("ratelimit" not in r.headers for r in scrapes)
    assert all(r.headers["content-type"].startswith("text/plain") for r in scrapes)


async def test_app_too_slow_to_start_its_response_gets_504_and_is_cancelled() -> None:
    app, state = make_app(timeout=0.2)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        with anyio.fail_after(10):
            response = await client.get("/slow")
            await state["cancelled"].wait()
    assert response.status_code == 504


async def test_deadline_after_response_start_closes_the_connection() -> None:
    app, state = make_app(total_timeout=0.3)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        received: list[bytes] = []

        async def read() -> None:
            async with client.stream("GET", "/stall") as response:
                assert response.status_code == 200
                async for chunk in response.aiter_bytes():
                    received.append(chunk)

        with anyio.fail_after(10):
            with pytest.raises(httpx.RemoteProtocolError):
                await read()
        with anyio.fail_after(10):
            await state["cancelled"].wait()
    assert b"".join(received) == b"first chunk\n"


async def test_sse_events_arrive_one_by_one_through_the_server() -> None:
    app, state = make_app(max_concurrent=4, rate=100.0, timeout=5.0)
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as client:
        lines: list[str] = []
        with anyio.fail_after(10):
            async with client.stream("GET", "/events") as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                async for line in response.aiter_lines():
                    if line:
                        lines.append(line)
                        state["gate"].set()  # "two" exists only after "one" arrived
    assert lines == ["data: one", "data: two"]


async def test_client_disconnect_cancels_the_app_and_frees_its_slot() -> None:
    app, state = make_app(max_concurrent=1, max_waiting=0)
    async with serve(app) as url:
        port = int(url.rsplit(":", 1)[1])
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
        await writer.drain()
        with anyio.fail_after(10):
            await state["in_slow"].wait()
        writer.close()  # the client gives up
        await writer.wait_closed()
        with anyio.fail_after(10):
            await state["cancelled"].wait()
        async with httpx.AsyncClient(base_url=url) as client:
            with anyio.fail_after(10):
                while (response := await client.get("/quick")).status_code == 503:
                    await asyncio.sleep(0.01)  # the slot frees as the cancelled app unwinds
    assert response.status_code == 200


async def test_websocket_works_behind_the_middleware() -> None:
    app, _ = make_app(max_concurrent=1, rate=0.5, burst=1, timeout=0.5)
    async with serve(app) as url:
        ws_url = url.replace("http", "ws") + "/ws"
        with anyio.fail_after(10):
            for _ in range(2):  # websockets are not limited unless asked
                async with ws_connect(ws_url) as ws:
                    await ws.send("hi")
                    assert await ws.recv() == "echo:hi"


async def test_limited_websocket_handshakes_are_refused_once_over_the_rate() -> None:
    app, _ = make_app(rate=0.5, burst=1, limit_websockets=True)
    async with serve(app) as url:
        ws_url = url.replace("http", "ws") + "/ws"
        with anyio.fail_after(10):
            async with ws_connect(ws_url) as ws:
                await ws.send("hi")
                assert await ws.recv() == "echo:hi"
            with pytest.raises(InvalidStatus) as info:
                async with ws_connect(ws_url):
                    pass
    assert info.value.response.status_code in (429, 403)

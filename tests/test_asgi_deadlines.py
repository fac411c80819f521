"""Deadlines of ONE long-lived ResilienceMiddleware behind a real server on 127.0.0.1.

Long and short deadlines (the configured ``timeout``/``total_timeout``, the caller's
``x-request-deadline``) interleave across many requests, in every order (every ordered pair of
request kinds follows each other) and all at once: each request ends by its own deadline,
never held back by a longer deadline that an earlier request left on the middleware's timer
(issue 21, finding 7). Runs on asyncio and uvloop (uvicorn) and on trio (hypercorn's trio
worker). The bounds are generous (a short deadline's 504 must come long before the
configured timeout could have produced it, and long before the app would have answered);
what they check is which deadline ended each request, not how precisely.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from resilient.asgi import ResilienceMiddleware

pytestmark = pytest.mark.slow

TIMEOUT = 1.0  # the configured deadline to start responding
TOTAL = 30.0  # the configured deadline of the whole response: far away
NEVER = 60.0  # an app that would answer after this is never meant to answer


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


@dataclass(frozen=True)
class Kind:
    """One kind of request and what must happen to it."""

    name: str
    query: str  # what the app does: sleep=<s before responding>, stream=<s streaming after>
    header: int | None  # the caller's deadline in milliseconds
    status: int | None  # expected status; None: the response is cut after it started
    at_least: float  # seconds the request must take (its deadline, less a little)
    at_most: float  # seconds it may take (generous)


KINDS = (
    Kind("quick", "sleep=0", None, 200, 0.0, 3.0),
    # Starts its response at once, then streams: its deadline moves to TOTAL (30 s). (The
    # old timer wheel then kept that far tick armed and looked at no new request before it.)
    Kind("stream", "sleep=0&stream=0.3", None, 200, 0.25, 3.0),
    Kind("configured", f"sleep={NEVER}", None, 504, TIMEOUT - 0.05, TIMEOUT + 1.8),
    # A caller's deadline far shorter than the configured timeout.
    Kind("caller_short", f"sleep={NEVER}", 100, 504, 0.09, 0.7),
    # A caller's deadline longer than the app needs: it answers.
    Kind("caller_long", "sleep=0.1", 20_000, 200, 0.09, 3.0),
    # A caller's deadline passing while the response streams: the response is cut.
    Kind("caller_stream", f"sleep=0&stream={NEVER}", 400, None, 0.35, TIMEOUT + 0.2),
)


def every_ordered_pair(count: int) -> list[int]:
    """A sequence of 0..count-1 in which every ordered pair (a, b) appears as neighbours."""
    # A de Bruijn sequence B(count, 2), closed into a path.
    sequence: list[int] = []
    a = [0] * (count * 2)

    def db(t: int, p: int) -> None:
        if t > 2:
            if 2 % p == 0:
                sequence.extend(a[1 : p + 1])
        else:
            a[t] = a[t - p]
            db(t + 1, p)
            for j in range(a[t - p] + 1, count):
                a[t] = j
                db(t + 1, t)

    db(1, 1)
    return [*sequence, sequence[0]]


def make_app() -> Starlette:
    async def work(request: Request) -> Response:
        await anyio.sleep(float(request.query_params.get("sleep", "0")))
        stream = float(request.query_params.get("stream", "0"))
        if not stream:
            return PlainTextResponse("ok")

        async def body() -> AsyncIterator[bytes]:
            yield b"first\n"
            await anyio.sleep(stream)
            yield b"last\n"

        return StreamingResponse(body(), media_type="text/plain")

    return Starlette(routes=[Route("/work", work)])


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def serve(app: Any, backend: str) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 (uvicorn on asyncio, hypercorn on trio); yields the URL."""
    if backend == "trio":
        from hypercorn.config import Config
        from hypercorn.trio import serve as hypercorn_serve

        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.graceful_timeout = 1.0
        config.accesslog = None
        config.errorlog = None
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            binds = await tg.start(
                functools.partial(hypercorn_serve, app, config, shutdown_trigger=stop.wait)
            )
            try:
                yield binds[0]
            finally:
                stop.set()
        return
    import uvicorn

    sock = _free_socket()
    config = uvicorn.Config(app, lifespan="off", log_level="critical", access_log=False)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        with anyio.fail_after(10):
            while not server.started:
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        server.force_exit = True  # do not wait for a request a failed test left running
        with anyio.fail_after(10):
            await task
        sock.close()


async def run_one(client: httpx.AsyncClient, kind: Kind, where: str) -> tuple[int | None, float]:
    """Send one request of ``kind``; its status (None: cut mid-response) and duration."""
    headers = {} if kind.header is None else {"x-request-deadline": str(kind.header)}
    started = time.monotonic()
    try:
        async with client.stream("GET", "/work?" + kind.query, headers=headers) as response:
            body = await response.aread()
        status: int | None = response.status_code
        if status == 200 and "stream" in kind.query:
            assert body == b"first\nlast\n"
    except httpx.TimeoutException:
        # Held back far past its deadline: the failure this file is about.
        pytest.fail(f"{where}: {kind.name} still running {time.monotonic() - started:.1f}s later")
    except httpx.TransportError:
        status = None  # the server closed the connection mid-response
    return status, time.monotonic() - started


async def collect(
    client: httpx.AsyncClient,
    kind: Kind,
    where: str,
    results: list[tuple[Kind, int | None, float]],
) -> None:
    status, took = await run_one(client, kind, where)
    results.append((kind, status, took))


def check(kind: Kind, status: int | None, took: float, where: str) -> None:
    assert status == kind.status, f"{where}: {kind.name} got {status}, expected {kind.status}"
    assert kind.at_least <= took <= kind.at_most, (
        f"{where}: {kind.name} took {took:.3f}s, expected {kind.at_least}..{kind.at_most}s"
    )


async def test_long_and_short_deadlines_interleave_on_one_long_lived_middleware(
    anyio_backend: Any,
) -> None:
    backend = anyio_backend if isinstance(anyio_backend, str) else anyio_backend[0]
    middleware = ResilienceMiddleware(
        make_app(), timeout=TIMEOUT, total_timeout=TOTAL, max_concurrent=64
    )
    order = every_ordered_pair(len(KINDS))
    rng = random.Random(21)
    with anyio.fail_after(120):
        async with (
            serve(middleware, backend) as url,
            # A client timeout far past every deadline: a request held back fails loudly.
            httpx.AsyncClient(base_url=url, timeout=8.0) as client,
        ):
            # One after another: every kind follows every kind (and itself).
            for position, index in enumerate(order):
                kind = KINDS[index]
                after = KINDS[order[position - 1]].name if position else "nothing"
                where = f"sequential, after {after}"
                status, took = await run_one(client, kind, where)
                check(kind, status, took, where)
            # All at once, in shuffled start orders: each ends by its own deadline.
            for round_ in range(2):
                batch = [kind for kind in KINDS for _ in range(2)]
                rng.shuffle(batch)
                where = f"concurrent round {round_}"
                results: list[tuple[Kind, int | None, float]] = []
                async with anyio.create_task_group() as tg:
                    for kind in batch:
                        tg.start_soon(collect, client, kind, where, results)
                for kind, status, took in results:
                    check(kind, status, took, where)
                # Started together, they end in the order of their deadlines.
                ends = {k.name: [t for kind, _, t in results if kind is k] for k in KINDS}
                assert max(ends["caller_short"]) < min(ends["configured"]), where
                assert max(ends["caller_stream"]) < min(ends["configured"]), where
    # Nothing is left running or queued once every request ended.
    assert middleware.in_flight == 0
    assert middleware.waiting == 0

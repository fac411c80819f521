"""End to end: ResilientTransport against a real uvicorn server on 127.0.0.1.

The server runs in a thread (its own asyncio loop) and answers each path from a script: a
status (optionally with headers), ``"hang"`` (never answer; wait for the client to go away) or
``"echo"``. Every test runs on asyncio and on trio.
"""

from __future__ import annotations

import email.utils
import socket
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest

import resilient
from _live_server import serve
from resilient import Timeout
from resilient.httpx import DEADLINE_HEADER, ResilientTransport, http_classifier
from resilient.testing import FakeClock

pytestmark = pytest.mark.slow

Step = int | tuple[int, dict[str, str]] | str


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Script:
    """What the server answers, per path, and what it received."""

    plans: dict[str, deque[Step]] = field(default_factory=dict)
    repeat: dict[str, Step] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def plan(self, path: str, *steps: Step) -> None:
        """Answer ``path`` with ``steps`` in order; the last one repeats."""
        with self.lock:
            self.plans[path] = deque(steps[:-1])
            self.repeat[path] = steps[-1]

    def next(self, path: str) -> Step:
        with self.lock:
            queue = self.plans.get(path)
            if queue:
                return queue.popleft()
            return self.repeat.get(path, 200)

    def hits_of(self, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path]

    def reset(self) -> None:
        with self.lock:
            self.plans.clear()
            self.repeat.clear()
            self.hits.clear()


class App:
    """A tiny ASGI app following a Script."""

    def __init__(self, script: Script) -> None:
        self.script = script

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        with self.script.lock:
            self.script.hits.append(Hit(scope["method"], path, headers, body))
        step = self.script.next(path)
        if step == "hang":
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        content = b"ok"
        extra: dict[str, str] = {}
        if step == "echo":
            status = 200
            content = body
            extra = {"x-deadline": headers.get(DEADLINE_HEADER, "")}
        elif isinstance(step, tuple):
            status, extra = step
            content = b"scripted"
        else:
            assert isinstance(step, int)
            status = step
            content = b"ok" if status < 400 else b"failure body"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", str(len(content)).encode())]
                + [(k.encode(), v.encode()) for k, v in extra.items()],
            }
        )
        await send({"type": "http.response.body", "body": content})


@dataclass
class Server:
    port: int
    script: Script

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
def live_server() -> Iterator[Server]:
    script = Script()
    with serve(App(script)) as port:
        yield Server(port, script)


@pytest.fixture
def server(live_server: Server) -> Server:
    live_server.script.reset()
    return live_server


def pool(connections: int = 2) -> httpx.AsyncHTTPTransport:
    return httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    )


POOL_TIMEOUT = httpx.Timeout(10.0, pool=5.0)


def retry(attempts: int = 3) -> resilient.Retry:
    """The real Retry policy, without waits or budget (deterministic counts)."""
    return resilient.Retry(attempts=attempts, base_delay=0.0, max_delay=0.0, budget=None)


async def _gather(count: int, concurrency: int, job: Any) -> None:
    limiter = anyio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with limiter:
            await job(i)

    async with anyio.create_task_group() as group:
        for i in range(count):
            group.start_soon(one, i)


async def test_pool_of_two_survives_500_timeouts(server: Server) -> None:
    """500 requests cut by timeouts (ours and httpx's) leave a 2-connection pool healthy."""
    server.script.plan("/hang", "hang")
    shared = pool(2)
    # Three clients share one pool; none is closed before the end (closing a client closes
    # its transport, and so the shared pool).
    cut_by_pipeline = httpx.AsyncClient(
        transport=ResilientTransport(resilient.Pipeline(Timeout(0.003), telemetry=False), shared),
        timeout=POOL_TIMEOUT,
    )
    cut_by_httpx = httpx.AsyncClient(
        transport=ResilientTransport(resilient.Pipeline(telemetry=False), shared),
        timeout=httpx.Timeout(0.003, pool=2.0),
    )
    healthy = httpx.AsyncClient(
        transport=ResilientTransport(resilient.Pipeline(Timeout(10.0), telemetry=False), shared),
        timeout=POOL_TIMEOUT,
    )
    timeouts = 0

    async def hang(i: int) -> None:
        nonlocal timeouts
        if i % 2:
            with pytest.raises(resilient.TimeoutExceeded):
                await cut_by_pipeline.get(server.url("/hang"))
        else:
            with pytest.raises(httpx.TimeoutException):
                await cut_by_httpx.get(server.url("/hang"))
        timeouts += 1

    statuses: list[int] = []

    async def ok(i: int) -> None:
        statuses.append((await healthy.get(server.url("/ok"))).status_code)

    try:
        await _gather(500, 10, hang)
        assert timeouts == 500
        await _gather(100, 10, ok)
    finally:
        await healthy.aclose()
    assert statuses == [200] * 100
    assert len(server.script.hits_of("/ok")) == 100


async def test_pool_of_two_serves_many_retried_requests(server: Server) -> None:
    """Hundreds of 503-then-200 requests, 20 at a time, through 2 connections: no PoolTimeout."""
    for i in range(400):
        server.script.plan(f"/r/{i}", 503, 200)
    transport = ResilientTransport(resilient.Pipeline(retry(3), telemetry=False), pool(2))
    statuses: list[int] = []
    async with httpx.AsyncClient(transport=transport, timeout=POOL_TIMEOUT) as client:

        async def job(i: int) -> None:
            statuses.append((await client.get(server.url(f"/r/{i}"))).status_code)

        await _gather(400, 20, job)
    assert statuses == [200] * 400
    assert len(server.script.hits) == 800


async def test_exhausted_retries_return_the_last_503_and_release_connections(
    server: Server,
) -> None:
    """Exhausted retries hand back the last 503 with its body; the pool stays usable."""
    server.script.plan("/down", 503)
    transport = ResilientTransport(resilient.Pipeline(retry(3), telemetry=False), pool(2))
    async with httpx.AsyncClient(transport=transport, timeout=POOL_TIMEOUT) as client:
        bodies: list[bytes] = []

        async def job(i: int) -> None:
            response = await client.get(server.url("/down"))
            assert response.status_code == 503
            bodies.append(response.content)

        await _gather(100, 20, job)
        assert bodies == [b"failure body"] * 100
        assert (await client.get(server.url("/fine"))).status_code == 200
    assert len(server.script.hits_of("/down")) == 300


async def _body() -> AsyncIterator[bytes]:
    for part in (b"first,", b"second,", b"third"):
        yield part


async def test_put_with_streamed_body_is_sent_once(server: Server) -> None:
    """A streamed PUT that gets a 503 is not retried: the server saw one whole body."""
    server.script.plan("/upload", 503, 200)
    transport = ResilientTransport(resilient.Pipeline(retry(3), telemetry=False), pool(2))
    async with httpx.AsyncClient(transport=transport, timeout=POOL_TIMEOUT) as client:
        response = await client.put(server.url("/upload"), content=_body())
    assert response.status_code == 503
    assert [h.body for h in server.script.hits_of("/upload")] == [b"first,second,third"]


async def test_put_with_bytes_body_is_resent_whole(server: Server) -> None:
    """A PUT with an in-memory body is retried and the server gets the same bytes each time."""
    server.script.plan("/upload", 503, 502, 200)
    payload = bytes(range(256)) * 64
    transport = ResilientTransport(resilient.Pipeline(retry(3), telemetry=False), pool(2))
    async with httpx.AsyncClient(transport=transport, timeout=POOL_TIMEOUT) as client:
        response = await client.put(server.url("/upload"), content=payload)
    assert response.status_code == 200
    assert [h.body for h in server.script.hits_of("/upload")] == [payload] * 3


async def test_post_is_not_retried_but_a_refused_connection_is(server: Server) -> None:
    """A POST 503 is final; a POST to a closed port is retried (it never left)."""
    server.script.plan("/charge", 503, 200)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: connections are refused
    transport = ResilientTransport(resilient.Pipeline(retry(3), telemetry=False), pool(2))
    async with httpx.AsyncClient(transport=transport, timeout=POOL_TIMEOUT) as client:
        response = await client.post(server.url("/charge"), content=b"{}")
        assert response.status_code == 503
        with pytest.raises(httpx.ConnectError):
            await client.post(f"http://127.0.0.1:{dead_port}/charge", content=b"{}")
    assert len(server.script.hits_of("/charge")) == 1


async def test_deadline_reaches_the_server(server: Server) -> None:
    """The remaining budget travels in the deadline header."""
    server.script.plan("/echo", "echo")
    transport = ResilientTransport(
        resilient.Pipeline(Timeout(5.0), telemetry=False), pool(2), propagate_deadline=True
    )
    async with httpx.AsyncClient(transport=transport, timeout=POOL_TIMEOUT) as client:
        response = await client.post(server.url("/echo"), content=b"x")
    sent = int(response.headers["x-deadline"])
    assert 4000 < sent <= 5000


async def test_breaker_opens_for_the_failing_host_only(server: Server) -> None:
    """After enough 500s the breaker for one host opens; another host is untouched."""
    server.script.plan("/down", 500)
    breaker = resilient.CircuitBreaker(
        failure_rate=0.5, window=60.0, minimum_calls=5, open_for=60.0, max_waiting=0
    )
    transport = ResilientTransport(resilient.Pipeline(breaker, telemetry=False), pool(2))
    async with httpx.AsyncClient(transport=transport, timeout=POOL_TIMEOUT) as client:
        for _ in range(5):
            assert (await client.get(server.url("/down"))).status_code == 500
        with pytest.raises(resilient.CircuitOpenError) as caught:
            await client.get(server.url("/down"))
        assert caught.value.key == f"127.0.0.1:{server.port}"
        healthy = await client.get(server.url("/fine", host="localhost"))
        assert healthy.status_code == 200
        with pytest.raises(resilient.CircuitOpenError):
            await client.get(server.url("/fine"))
    assert len(server.script.hits_of("/down")) == 5
    assert len(server.script.hits_of("/fine")) == 1


async def test_client_errors_never_open_the_breaker(server: Server) -> None:
    """404s are the caller's mistake: the breaker stays closed."""
    server.script.plan("/missing", 404)
    breaker = resilient.CircuitBreaker(failure_rate=0.5, window=60.0, minimum_calls=5)
    transport = ResilientTransport(resilient.Pipeline(breaker, telemetry=False), pool(2))
    async with httpx.AsyncClient(transport=transport, timeout=POOL_TIMEOUT) as client:
        for _ in range(20):
            assert (await client.get(server.url("/missing"))).status_code == 404
    assert len(server.script.hits_of("/missing")) == 20


async def test_retry_after_sets_the_delays(server: Server) -> None:
    """A 429 with delay-seconds, then a 503 with an HTTP-date: the retry waits exactly so."""
    now = 1_800_000_000.0
    server.script.plan(
        "/limited",
        (429, {"retry-after": "2"}),
        (503, {"retry-after": email.utils.formatdate(now + 3.0, usegmt=True)}),
        200,
    )
    clock = FakeClock()
    pipeline = resilient.Pipeline(
        resilient.Retry(attempts=3, base_delay=0.5, max_delay=0.5, budget=None),
        clock=clock,
        telemetry=False,
    )
    transport = ResilientTransport(
        pipeline, pool(2), classify=http_classifier(wall_clock=lambda: now)
    )
    async with httpx.AsyncClient(transport=transport, timeout=POOL_TIMEOUT) as client:
        response = await client.get(server.url("/limited"))
    assert response.status_code == 200
    assert clock.sleeps == [2.0, 3.0]
    assert len(server.script.hits_of("/limited")) == 3


async def test_retry_after_is_clamped_by_the_retry_policy(server: Server) -> None:
    """A server asking for 10 minutes gets the Retry policy's max_retry_after."""
    server.script.plan("/slow-down", (503, {"retry-after": "600"}), 200)
    clock = FakeClock()
    pipeline = resilient.Pipeline(
        resilient.Retry(attempts=2, max_retry_after=30.0, budget=None),
        clock=clock,
        telemetry=False,
    )
    transport = ResilientTransport(pipeline, pool(2))
    async with httpx.AsyncClient(transport=transport, timeout=POOL_TIMEOUT) as client:
        response = await client.get(server.url("/slow-down"))
    assert response.status_code == 200
    assert clock.sleeps == [30.0]


async def test_exhausted_retries_give_the_last_response(server: Server) -> None:
    """When every attempt is a 503 the caller gets the third 503, body included."""
    server.script.plan("/busy", *[(503, {"x-attempt": str(n)}) for n in (1, 2, 3)])
    transport = ResilientTransport(resilient.Pipeline(retry(3), telemetry=False), pool(2))
    async with httpx.AsyncClient(transport=transport, timeout=POOL_TIMEOUT) as client:
        response = await client.get(server.url("/busy"))
    assert response.status_code == 503
    assert response.headers["x-attempt"] == "3"
    assert response.content == b"scripted"

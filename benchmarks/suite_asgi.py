"""ASGI suite: what ResilienceMiddleware costs a real uvicorn server when nothing is shed.

uvicorn servers (httptools, one worker each) serve a trivial raw ASGI app and a trivial
Starlette route, each bare and behind ``ResilienceMiddleware(max_concurrent=100,
rate=<never reached>, timeout=5.0)``. A load generator in a separate process keeps 8
keep-alive connections busy against one server at a time, alternating between them in short
rounds (a bare asyncio protocol, so that the server, not the client, sets the pace); each
case reports nanoseconds per request: 1e9 / throughput, and the server process's own CPU time
per request (Linux schedstat), the steadier of the two on a shared machine. A server behind a
middleware that only wraps ``send`` shows the floor of any response-aware middleware. The
in-process cases time the middleware's own work around a trivial app with no server at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks._harness import Case, run_cases
from resilient.asgi import ResilienceMiddleware

CONNECTIONS = 8
_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
_OPTIONS: dict[str, Any] = {"max_concurrent": 100, "rate": 1e9, "timeout": 5.0}


async def trivial_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].replace("lifespan.", "")
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


protected_app = ResilienceMiddleware(trivial_app, **_OPTIONS)


class _SendWrapper:
    """The least any response-aware middleware does: its own ``send`` seeing each message."""

    __slots__ = ("_send", "started")

    def __init__(self, send: Any) -> None:
        self._send = send
        self.started = False

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


class FloorMiddleware:
    """A pure-ASGI middleware doing nothing but wrap ``send``: the floor for any middleware
    that must see the response start (as one adding headers or timing out requests must)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _SendWrapper(send).send)


def _starlette(protected: bool | str) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", hello)])
    if protected == "floor":
        app.add_middleware(FloorMiddleware)
    elif protected:
        app.add_middleware(ResilienceMiddleware, **_OPTIONS)
    return app


def _serve(which: str, port: int) -> None:  # runs in the server process
    import uvicorn

    app = {
        "protected": protected_app,
        "plain": trivial_app,
        "starlette": _starlette(False),
        "starlette+protected": _starlette(True),
        "starlette+floor": _starlette("floor"),
    }[which]
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


class _Client(asyncio.Protocol):
    """One keep-alive connection sending the next request as soon as a response is complete.

    A bare protocol, not streams: the load generator must cost far less per request than the
    server, or it, not the server, would set the pace.
    """

    def __init__(self, stop: float, done: asyncio.Future[int]) -> None:
        self.stop = stop
        self.done = done
        self.count = 0
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(_REQUEST)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            at = buffer.find(b"content-length: ", 0, end)
            length = int(buffer[at + 16 : buffer.index(b"\r\n", at)]) if at >= 0 else 0
            if len(buffer) < end + 4 + length:
                break
            buffer = buffer[end + 4 + length :]
            self.count += 1
            if time.perf_counter() >= self.stop:
                assert self.transport is not None
                self.transport.close()
                if not self.done.done():
                    self.done.set_result(self.count)
                return
            assert self.transport is not None
            self.transport.write(_REQUEST)
        self.buffer = buffer

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.count)


async def _burst(port: int, seconds: float) -> tuple[float, int]:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    stop = start + seconds
    futures: list[asyncio.Future[int]] = []
    for _ in range(CONNECTIONS):
        done: asyncio.Future[int] = loop.create_future()
        futures.append(done)
        await loop.create_connection(lambda done=done: _Client(stop, done), "127.0.0.1", port)
    count = sum(await asyncio.gather(*futures))
    return count / (time.perf_counter() - start), count


def _load() -> None:  # runs in the load process: "port seconds" per line -> requests/s
    for line in sys.stdin:
        port, seconds = line.split()
        rps, count = asyncio.run(_burst(int(port), float(seconds)))
        print(rps, count, flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


def _python(code: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", code], text=True, env=env, **kwargs)


def _cpu_ns(pid: int) -> int:
    """Nanoseconds the process's main thread has run on a CPU (Linux schedstat)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def server_throughput(*, rounds: int, seconds: float) -> dict[str, float]:
    """ns per request of each server, median over interleaved rounds: wall (1e9 / throughput)
    and cpu (the server's own CPU time per request)."""
    which = {
        "uvicorn: trivial ASGI app": "plain",
        "uvicorn: + ResilienceMiddleware": "protected",
        "uvicorn+Starlette: trivial route": "starlette",
        "uvicorn+Starlette: + ResilienceMiddleware": "starlette+protected",
        "uvicorn+Starlette: + send-wrapping floor": "starlette+floor",
    }
    ports = {name: _free_port() for name in which}
    servers = [
        _python(
            f"from benchmarks.suite_asgi import _serve; _serve({which[name]!r}, {port})",
            stdout=subprocess.DEVNULL,
        )
        for name, port in ports.items()
    ]
    load = _python(
        "from benchmarks.suite_asgi import _load; _load()",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert load.stdin is not None
    assert load.stdout is not None
    pids = dict(zip(ports, (server.pid for server in servers), strict=True))
    samples: dict[str, list[float]] = {name: [] for name in ports}
    cpu: dict[str, list[float]] = {name: [] for name in ports}
    try:
        for port in ports.values():
            _wait_ready(port, time.monotonic() + 20)
        for round_ in range(rounds + 1):  # round 0 warms both servers up
            order = list(ports.items()) if round_ % 2 else list(reversed(ports.items()))
            for name, port in order:
                before = _cpu_ns(pids[name])
                load.stdin.write(f"{port} {seconds}\n")
                load.stdin.flush()
                rps, count = load.stdout.readline().split()
                used = _cpu_ns(pids[name]) - before
                if round_:
                    samples[name].append(1e9 / float(rps))
                    cpu[name].append(used / int(count))
    finally:
        load.stdin.close()
        load.wait(timeout=30)
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
    results = {name: statistics.median(values) for name, values in samples.items()}
    for name, values in cpu.items():
        # The median: minima proved unsteady here too (a Starlette route once measured
        # cheaper than the bare ASGI app), the host's load and clock speed vary by the second.
        results[name.replace(":", " cpu:", 1)] = statistics.median(values)
    return results


def cases() -> dict[str, Case]:
    """In-process: one request through the app, bare and behind the middleware."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 5000),
    }
    request = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return request

    async def send(message: Any) -> None:
        pass

    async def bare(n: int) -> None:
        for i in range(n):
            await trivial_app(scope, receive, send)
            if i % 128 == 0:
                await asyncio.sleep(0)

    async def protected(n: int) -> None:
        for i in range(n):
            await protected_app(scope, receive, send)
            if i % 128 == 0:
                await asyncio.sleep(0)

    return {"in-process: trivial app": bare, "in-process: + ResilienceMiddleware": protected}


# The target: at most 5% of throughput when nothing is shed, i.e. 1.05. NOT MET on
# this shared 2-core machine (docs/asgi.md, "Performance"): the median ratio measures
# 1.3-1.6x, against 0.9-1.1x for a middleware that only wraps send (the floor any
# response-aware middleware pays), with round-to-round noise of 20-30%. Gated on the server's
# own CPU time per request (a saturated single worker serves 1 / that per second; unlike the
# wall ratio it is not flattered when the load generator sets the pace), at the level measured
# so that regressions fail; tighten to 1.05 when it is met.
GATES = [
    ("uvicorn+Starlette cpu: + ResilienceMiddleware", "uvicorn+Starlette cpu: trivial route", 1.4),
]


def run(*, quick: bool) -> dict[str, float]:
    inproc = run_cases(cases(), calls=2_000 if quick else 20_000, rounds=5 if quick else 9)
    results = {name: r.median_ns for name, r in inproc.items()}
    results.update(server_throughput(rounds=6 if quick else 12, seconds=0.4 if quick else 1.5))
    return results


if __name__ == "__main__":
    print(json.dumps(run(quick="--full" not in sys.argv), indent=2))

"""ASGI suite: what ResilienceMiddleware costs a real uvicorn server when nothing is shed.

One uvicorn server process (httptools, asyncio loop, one worker, access log and proxy headers
off, no lifespan) serves every case: a trivial Starlette route, bare, behind
``ResilienceMiddleware(max_concurrent=100, rate=<never reached>, timeout=5.0)`` (the typical
configuration of docs/asgi.md) and behind ``ResilienceMiddleware()`` (the defaults: caller
deadlines, health-check exclusions, disconnect cancellation, telemetry without an SDK). Full
mode adds two controls: a minimal pure-ASGI middleware whose ``async`` send wrapper sees each
message (what the simplest response-aware middleware costs), and the bare route sending
itself the two RateLimit headers the middleware adds (what those bytes cost the server,
whoever writes them); and a trivial raw ASGI app, bare and protected. Between rounds the
benchmark tells the server (a line on its stdin) which app the connections opened next serve.
A load generator in a separate process keeps 8 keep-alive connections busy for a fixed time
per round (a bare asyncio protocol, cheaper per request than the server, so that the server
sets the pace). Each case reports, per request, the wall time (1e9 / requests per second,
``uvicorn...:``) and the server process's own CPU time (``uvicorn... cpu:``, Linux
schedstat).

Why this is fair on a noisy shared machine:

- one server process for both sides of every ratio: no per-process bias (hash seed, memory
  layout, which core the scheduler favours), which alone made two identical servers differ
  by 10-15% when each case had its own process;
- the same server configuration, the same request and the same load, by construction;
- short rounds, interleaved ABBA (every other round runs the cases in reverse order), so a
  drift in the machine's speed hits both sides alike; a warm-up round (imports, Starlette's
  middleware stack, caches) is discarded; the server collects garbage at every switch;
- paired ratios: a case's value is its reference's median times the median over rounds of
  ``case / reference`` measured in the same round, seconds apart: a burst of load from other
  jobs spoils one round's pair, not the median. Two identical arms measure 1.00 +- 0.01;
- the gates are on server CPU per request, the capacity of a saturated worker (throughput =
  1 / CPU per request): unlike the wall time it is not flattered when the load generator,
  sharing two cores with the server, sets the pace. Both are reported.

The in-process cases time the middleware's own work around a trivial app, no server.
"""

from __future__ import annotations

import asyncio
import gc
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
default_app = ResilienceMiddleware(trivial_app)


class _SendWrapper:
    """What the simplest response-aware middleware does: an ``async`` send seeing each message."""

    __slots__ = ("_send", "started")

    def __init__(self, send: Any) -> None:
        self._send = send
        self.started = False

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


class FloorMiddleware:
    """A pure-ASGI middleware doing nothing but wrap ``send`` the usual way (a coroutine per
    message): what any middleware that must see the response start costs at least, written
    plainly. (ResilienceMiddleware's send returns the server's own awaitable instead.)"""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _SendWrapper(send).send)


def _rate_headers() -> list[tuple[bytes, bytes]]:
    """The RateLimit headers ``ResilienceMiddleware(**_OPTIONS)`` adds to a response."""
    captured: list[tuple[bytes, bytes]] = []
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": ("h", 1)}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            captured.extend(message["headers"])

    asyncio.run(ResilienceMiddleware(trivial_app, **_OPTIONS)(scope, receive, send))
    return [(name, value) for name, value in captured if name.startswith(b"ratelimit")]


def _starlette(variant: str = "") -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    extra = _rate_headers() if variant == "headers" else []

    async def hello_with_headers(request: Any) -> PlainTextResponse:
        response = PlainTextResponse("ok")
        response.raw_headers.extend(extra)
        return response

    app = Starlette(routes=[Route("/", hello_with_headers if extra else hello)])
    if variant == "floor":
        app.add_middleware(FloorMiddleware)
    elif variant == "protected":
        app.add_middleware(ResilienceMiddleware, **_OPTIONS)
    elif variant == "defaults":
        app.add_middleware(ResilienceMiddleware)
    return app


def _apps() -> dict[str, Any]:
    return {
        "plain": trivial_app,
        "protected": protected_app,
        "starlette": _starlette(),
        "starlette+protected": _starlette("protected"),
        "starlette+defaults": _starlette("defaults"),
        "starlette+floor": _starlette("floor"),
        "starlette+headers": _starlette("headers"),
    }


def _serve(port: int) -> None:  # runs in the server process
    """One uvicorn server for every app: a line ``<app>`` on stdin makes the connections
    opened from then on serve that app (uvicorn reads ``config.loaded_app`` per connection);
    the server answers ``ok`` once it has switched."""
    import uvicorn

    apps = _apps()
    config = uvicorn.Config(
        trivial_app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="asyncio",
        lifespan="off",
        access_log=False,
        proxy_headers=False,
        log_level="warning",
    )
    config.load()
    server = uvicorn.Server(config)
    pending = b""

    def command() -> None:
        nonlocal pending
        data = os.read(0, 4096)
        if not data:
            server.should_exit = True
            return
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            config.loaded_app = apps[line.decode().strip()]
            gc.collect()  # every round starts from the same garbage
            os.write(1, b"ok\n")

    async def main() -> None:
        asyncio.get_running_loop().add_reader(0, command)
        await server.serve()

    asyncio.run(main())


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


# case -> (app the server runs, the reference case of its ratio)
SERVER_CASES: dict[str, tuple[str, str]] = {
    "uvicorn+Starlette: trivial route": ("starlette", ""),
    "uvicorn+Starlette: + ResilienceMiddleware": (
        "starlette+protected",
        "uvicorn+Starlette: trivial route",
    ),
    "uvicorn+Starlette: + ResilienceMiddleware() defaults": (
        "starlette+defaults",
        "uvicorn+Starlette: trivial route",
    ),
    "uvicorn+Starlette: + minimal send-wrapping middleware": (
        "starlette+floor",
        "uvicorn+Starlette: trivial route",
    ),
    "uvicorn+Starlette: route sending the same RateLimit headers": (
        "starlette+headers",
        "uvicorn+Starlette: trivial route",
    ),
    "uvicorn: trivial ASGI app": ("plain", ""),
    "uvicorn: + ResilienceMiddleware": ("protected", "uvicorn: trivial ASGI app"),
}
QUICK_SERVER_CASES = list(SERVER_CASES)[:3]


def server_samples(
    cases: dict[str, str], *, rounds: int, seconds: float, warmup: int = 1
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per round and case (``name -> app``): wall ns per request (1e9 / throughput) and
    server CPU ns per request. One server process serves every case in turn; round ``i``
    runs the cases in order, round ``i + 1`` in reverse (ABBA)."""
    port = _free_port()
    server = _python(
        f"from benchmarks.suite_asgi import _serve; _serve({port})",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    load = _python(
        "from benchmarks.suite_asgi import _load; _load()",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert server.stdin is not None
    assert server.stdout is not None
    assert load.stdin is not None
    assert load.stdout is not None
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    try:
        _wait_ready(port, time.monotonic() + 20)
        for round_ in range(warmup + rounds):
            order = list(cases.items())
            if round_ % 2:
                order.reverse()
            for name, app in order:
                server.stdin.write(app + "\n")
                server.stdin.flush()
                if server.stdout.readline().strip() != "ok":
                    raise RuntimeError("the server did not switch apps")
                before = _cpu_ns(server.pid)
                load.stdin.write(f"{port} {seconds}\n")
                load.stdin.flush()
                rps, count = load.stdout.readline().split()
                used = _cpu_ns(server.pid) - before
                if round_ >= warmup:
                    wall[name].append(1e9 / float(rps))
                    cpu[name].append(used / int(count))
    finally:
        load.stdin.close()
        load.wait(timeout=30)
        server.stdin.close()  # the server exits at the end of its stdin
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.terminate()
            server.wait(timeout=30)
    return wall, cpu


def paired(samples: dict[str, list[float]], reference: str, case: str) -> float:
    """The reference's median times the median of the per-round ratios case / reference."""
    ratios = [c / r for c, r in zip(samples[case], samples[reference], strict=True)]
    return statistics.median(samples[reference]) * statistics.median(ratios)


def server_throughput(*, names: list[str], rounds: int, seconds: float) -> dict[str, float]:
    """ns per request of each case: wall (1e9 / throughput) and ``cpu`` (the server's own
    CPU time per request), paired with the case's reference over interleaved rounds."""
    wall, cpu = server_samples(
        {name: SERVER_CASES[name][0] for name in names}, rounds=rounds, seconds=seconds
    )
    results: dict[str, float] = {}
    for label, samples in (("", wall), (" cpu", cpu)):
        for name in names:
            reference = SERVER_CASES[name][1]
            value = (
                paired(samples, reference, name) if reference else statistics.median(samples[name])
            )
            results[name.replace(":", label + ":", 1)] = value
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

    def loop_of(app: Any) -> Case:
        async def case(n: int) -> None:
            for i in range(n):
                await app(scope, receive, send)
                if i % 128 == 0:
                    await asyncio.sleep(0)

        return case

    return {
        "in-process: trivial app": loop_of(trivial_app),
        "in-process: + ResilienceMiddleware": loop_of(protected_app),
        "in-process: + ResilienceMiddleware() defaults": loop_of(default_app),
        **{
            f"in-process: new client, {kept:,} keys kept": _new_clients(kept, receive, send)
            for kept in (1_000, 100_000)
        },
    }


def _new_clients(kept: int, receive: Any, send: Any) -> Case:
    """A rate-limited middleware holding ``kept`` client buckets; every request is from a
    client it never saw (a key flood: each one evicts the least recently used bucket)."""
    app = ResilienceMiddleware(
        trivial_app, rate=1e9, burst=1, max_keys=kept, client_key=lambda scope: scope["key"]
    )
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 5000),
        "key": "",
    }
    counter = iter(range(1 << 62))
    filled = False

    async def case(n: int) -> None:
        nonlocal filled
        if not filled:  # the warm-up fills the map: from then on every new key evicts one
            filled = True
            for _ in range(kept):
                scope["key"] = f"c{next(counter)}"
                await app(scope, receive, send)
        for i in range(n):
            scope["key"] = f"c{next(counter)}"
            await app(scope, receive, send)
            if i % 128 == 0:
                await asyncio.sleep(0)

    return case


# The target: at most 5% of throughput when nothing is shed, i.e. 1.05. NOT MET on
# this shared 2-core machine (docs/asgi.md, "Performance"): 15 quick runs measured the typical
# configuration at 1.17-1.30x and the defaults at 1.05-1.19x (a trivial route costs uvicorn
# little CPU, so the typical configuration's RateLimit headers alone cost the server 2-4%;
# figures in docs/performance.md). Gated on the server's CPU time per request at the level
# that holds, so that a regression fails; tighten towards 1.05 as the numbers allow.
GATES = [
    # A key flood costs O(1) per request: the keyed map is an LRU (issue 21, finding 1).
    (
        "in-process: new client, 100,000 keys kept",
        "in-process: new client, 1,000 keys kept",
        1.5,
    ),
    ("uvicorn+Starlette cpu: + ResilienceMiddleware", "uvicorn+Starlette cpu: trivial route", 1.35),
    (
        "uvicorn+Starlette cpu: + ResilienceMiddleware() defaults",
        "uvicorn+Starlette cpu: trivial route",
        1.25,
    ),
]


def run(*, quick: bool) -> dict[str, float]:
    inproc = run_cases(cases(), calls=2_000 if quick else 20_000, rounds=5 if quick else 9)
    results = {name: r.median_ns for name, r in inproc.items()}
    results.update(
        server_throughput(
            names=QUICK_SERVER_CASES if quick else list(SERVER_CASES),
            rounds=16 if quick else 24,
            seconds=0.1 if quick else 0.5,
        )
    )
    return results


if __name__ == "__main__":
    print(json.dumps(run(quick="--full" not in sys.argv), indent=2))

"""Real Redis for the tests: find a server, or start ``redis-server`` on a free port.

Also a script: ``python tests/_redis_helpers.py hammer URL PREFIX RATE BURST SECONDS LEASE``
takes tokens from one shared key as fast as it can for a few seconds from a start time it
reads on stdin, and prints how many were admitted, how many decisions it made and how many
fell back, and when it really started and stopped (one of the processes of the fleet
test); and ``make_app`` is the ASGI app the two-server test runs under uvicorn.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str, timeout: float = 0.5) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class RedisServer:
    """A ``redis-server`` of this test run on a port of its own (killed and restarted at will)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10.0
        while not answers(self.url, 0.2):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as in a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


def shared_url() -> str | None:
    """``$REDIS_URL``, else a server on 127.0.0.1:6379; ``None`` when neither answers."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url
    default = "redis://127.0.0.1:6379/0"
    return default if answers(default) else None


# -- a process of the fleet ------------------------------------------------------------------


def hammer(argv: list[str]) -> None:
    """One process of the fleet: ``URL PREFIX RATE BURST SECONDS LEASE``.

    Prints ``ready`` once connected, reads the wall-clock start time from stdin, takes
    tokens from one shared key until ``SECONDS`` later, then prints its numbers.
    """
    import asyncio

    from resilient import RateLimiter
    from resilient.redis import RedisBucketStore

    url, prefix = argv[0], argv[1]
    rate, burst, seconds = (float(x) for x in argv[2:5])
    lease = int(argv[5])

    async def run() -> tuple[int, int, int, float, float]:
        fallbacks: list[object] = []
        store = RedisBucketStore(
            url, prefix=prefix, timeout=1.0, lease=lease, listeners=[fallbacks.append]
        )
        limiter = RateLimiter(rate=rate, burst=burst, max_wait=0, store=store)
        admitted = decisions = 0
        await limiter.try_acquire("warm-up")  # connect and load the script before the start
        print("ready", flush=True)
        start = float(sys.stdin.readline())
        end = start + seconds
        while time.time() < start:
            await asyncio.sleep(0.001)
        first = time.time()  # late when the machine is busy: the window is measured
        while time.time() < end:
            status = await limiter.try_acquire("shared")
            decisions += 1
            admitted += status.allowed
        last = time.time()
        await store.aclose()
        return admitted, decisions, len(fallbacks), first, last

    print(*asyncio.run(run()))


# -- the app behind two uvicorn processes ----------------------------------------------------


def make_app() -> Any:
    """An ASGI app behind ``ResilienceMiddleware`` with its per-client limit in Redis."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from resilient.asgi import ResilienceMiddleware
    from resilient.redis import RedisBucketStore

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/", hello)])
    store = RedisBucketStore(
        os.environ["TEST_REDIS_URL"], prefix=os.environ["TEST_REDIS_PREFIX"], timeout=1.0
    )
    return ResilienceMiddleware(app, rate=0.01, burst=10, rate_store=store)


def start_uvicorn(url: str, prefix: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "TEST_REDIS_URL": url,
        "TEST_REDIS_PREFIX": prefix,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent.parent / "src"), str(Path(__file__).parent)]
        ),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "_redis_helpers:make_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-proxy-headers",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return process, port


if __name__ == "__main__":
    if sys.argv[1] == "hammer":
        hammer(sys.argv[2:])

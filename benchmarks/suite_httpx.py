"""httpx suite: a real loopback request, plain and through resilience stacks.

A uvicorn server (its own process, 127.0.0.1, a 2-byte 200 response) answers sequential
``client.get`` calls from one keep-alive client per case. Every ratio is to the plain request
in the same run. Telemetry is off everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiobreaker
import aiolimiter
import httpx
import httpx_retries
import tenacity

import resilient
import resilient.httpx
from benchmarks._harness import Case, run_cases, summary
from resilient.httpx import ResilientTransport


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The server side: a 2-byte 200 for every request."""
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.contextmanager
def _server() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.suite_httpx:app",
            "--host=127.0.0.1",
            f"--port={port}",
            "--log-level=warning",
            "--no-access-log",
            "--lifespan=off",
        ],
        cwd=root,
        env={**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'src'}"},
    )
    try:
        deadline = time.monotonic() + 20.0
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the benchmark server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        process.wait(10.0)


def _loop(client: httpx.AsyncClient, url: str) -> Case:
    async def case(n: int) -> None:
        get = client.get
        for _ in range(n):
            await get(url)

    return case


def cases(url: str) -> dict[str, Case]:
    plain = httpx.AsyncClient()
    standard = httpx.AsyncClient(transport=resilient.httpx.standard(telemetry=False))
    empty = httpx.AsyncClient(transport=ResilientTransport(resilient.Pipeline(telemetry=False)))
    retries = httpx.AsyncClient(
        transport=httpx_retries.RetryTransport(
            httpx.AsyncHTTPTransport(), retry=httpx_retries.Retry(total=3, backoff_factor=0.5)
        )
    )
    tenacity_client = httpx.AsyncClient()

    @tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_exponential_jitter(),
        reraise=True,
    )
    async def tenacity_get(url: str) -> httpx.Response:
        return await tenacity_client.get(url)

    stack_client = httpx.AsyncClient()
    breaker = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(seconds=30))
    semaphore = asyncio.Semaphore(100)
    limiter = aiolimiter.AsyncLimiter(10**12, 1)

    async def guarded(url: str) -> httpx.Response:
        async with semaphore, limiter, asyncio.timeout(30.0):
            return await stack_client.get(url)

    @tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_exponential_jitter(),
        reraise=True,
    )
    async def stack_get(url: str) -> httpx.Response:
        response: httpx.Response = await breaker.call_async(guarded, url)
        return response

    async def tenacity_case(n: int) -> None:
        for _ in range(n):
            await tenacity_get(url)

    async def stack_case(n: int) -> None:
        for _ in range(n):
            await stack_get(url)

    return {
        "plain client.get": _loop(plain, url),
        "resilient: standard() transport": _loop(standard, url),
        "resilient: empty pipeline transport": _loop(empty, url),
        "httpx-retries RetryTransport(total=3)": _loop(retries, url),
        "tenacity @retry around client.get": tenacity_case,
        "peer stack (tenacity+aiobreaker+Semaphore+aiolimiter+timeout)": stack_case,
    }


# (case, reference, target ratio). The target is +2% over a plain loopback request; the gate
# leaves room for loopback noise (about +-9% between runs on a shared machine).
GATES = [
    ("resilient: standard() transport", "plain client.get", 1.06),
]


def run(*, quick: bool) -> dict[str, float]:
    with _server() as url:
        # Quick mode: many short rounds and the fastest of each case (see _harness.summary):
        # a loopback request shares the CPU with the server and with anything else running.
        results = run_cases(cases(url), calls=20 if quick else 300, rounds=21 if quick else 15)
    return summary(results, quick=quick)

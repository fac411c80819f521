"""Fault injection switched off costs next to nothing (client policy and ASGI middleware)."""

from __future__ import annotations

from typing import Any

import resilient
from benchmarks import _peers as p
from benchmarks._harness import Case, loop, run_timed, summary
from resilient.chaos import Chaos, ChaosMiddleware, ChaosPolicy, Phase

TITLE = "Chaos switched off: per-call overhead"
REFERENCE = "bare await"

NOTES = {
    "Pipeline(Timeout, ChaosPolicy off)": "ChaosPolicy left in the pipeline, disabled",
    "ASGI app via ChaosMiddleware off": "one request through the middleware, disabled",
}

GATES = [
    ("Pipeline(Timeout, ChaosPolicy off)", "Pipeline(Timeout)", 1.15),
    ("ASGI app via ChaosMiddleware off", "ASGI app", 2.0),  # an app doing nothing: x2 is tiny
]


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b""}


async def _send(message: Any) -> None:
    return None


def cases() -> dict[str, Case]:
    chaos = Chaos(Phase(error_rate=1.0, latency=1.0))  # would fail every call, if enabled
    timed = resilient.Pipeline(resilient.Timeout(2.0), name="bench", telemetry=False)
    chaotic = resilient.Pipeline(
        resilient.Timeout(2.0), ChaosPolicy(chaos), name="bench", telemetry=False
    )
    middleware = ChaosMiddleware(_app, chaos=chaos)
    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}

    async def plain_request() -> None:
        await _app(scope, _receive, _send)

    async def chaos_request() -> None:
        await middleware(scope, _receive, _send)

    return {
        "bare await": loop(p.f),
        "Pipeline(Timeout)": loop(p.wrapped(timed)),
        "Pipeline(Timeout, ChaosPolicy off)": loop(p.wrapped(chaotic)),
        "ASGI app": loop(plain_request),
        "ASGI app via ChaosMiddleware off": loop(chaos_request),
    }


def run(*, quick: bool) -> dict[str, float]:
    return summary(run_timed(cases, quick=quick), quick=quick)

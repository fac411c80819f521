"""Five jobs together: the standard pipeline against the hand-written sketch and peer stacks.

Success path, asyncio, telemetry off. The five jobs: a total timeout, retries (with a budget),
a circuit breaker, a rate limiter, a bulkhead and a per-attempt timeout.
"""

from __future__ import annotations

from benchmarks import _peers as p
from benchmarks._harness import Case, loop, run_timed, summary

TITLE = "Five policies together (success path, telemetry off)"
REFERENCE = "bare await"

STANDARD = "resilient.standard() (telemetry off)"
EXPLICIT = "resilient: 5 policies spelled out (telemetry off)"
SKETCH = "sketch5: hand-written + asyncio.timeout"
PEER_STACK = "peers: tenacity+aiobreaker+Semaphore+aiolimiter+asyncio.timeout"

NOTES = {
    "sketch5: hand-written, no timeout": "the decision logic alone: the floor",
    SKETCH: "one asyncio.timeout per attempt: the realistic floor",
    PEER_STACK: "what a user builds today",
    STANDARD: "Timeout > Retry(+budget) > CircuitBreaker > Hedge > RateLimiter > Bulkhead",
}

# (case, reference, target): the targets; quick mode allows 1.5x on top.
GATES = [
    (STANDARD, SKETCH, 1.3),
    (STANDARD, PEER_STACK, 1 / 5),
    (EXPLICIT, SKETCH, 1.3),
    (EXPLICIT, PEER_STACK, 1 / 5),
]


def cases() -> dict[str, Case]:
    out: dict[str, Case] = {
        "bare await": loop(p.f),
        "sketch5: hand-written, no timeout": loop(p.sketch5(timeout=None)),
        SKETCH: loop(p.sketch5()),
        PEER_STACK: loop(p.peer_stack()),
        "hyx: 5 policies": loop(p.hyx_stack()),
        "pyresilience: 5 policies": loop(p.pyresilience_stack()),
    }
    standard = p.standard_pipeline()
    if standard is not None:
        out[STANDARD] = loop(p.wrapped(standard))
    explicit = p.five_policies()
    if explicit is not None:
        out[EXPLICIT] = loop(p.wrapped(explicit))
    return out


def run(*, quick: bool) -> dict[str, float]:
    return summary(run_timed(cases, quick=quick), quick=quick)

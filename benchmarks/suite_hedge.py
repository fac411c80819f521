"""Hedge and Fallback on the success path: what they cost when nothing goes wrong.

asyncio, telemetry off. "standard" is the recommended five-job pipeline; the hedged variants
insert a ``Hedge`` right inside the retry (where each hedge then goes through the breaker, the
limiter, the bulkhead and the attempt timeout like any attempt). The dependency answers at
once, so no hedge is ever sent: the figure is the price of being ready to hedge.
"""

from __future__ import annotations

from typing import Any

from benchmarks import _peers as p
from benchmarks._harness import Case, loop, run_timed, summary

TITLE = "Hedge and Fallback on the success path (no hedge sent, telemetry off)"
REFERENCE = "bare await"

STANDARD = "standard pipeline"
FIXED = "standard + Hedge(delay=1 s)"
ADAPTIVE = "standard + Hedge() (adaptive delay)"
FALLBACK = "Fallback + standard"

NOTES = {
    STANDARD: "Timeout > Retry(+budget) > CircuitBreaker > RateLimiter > Bulkhead > Timeout",
    FIXED: "the original runs in the caller's task; one shared loop timer per Hedge",
    ADAPTIVE: "the same, plus a latency histogram update per call",
    FALLBACK: "a Fallback outermost",
}

# (case, reference, target): the targets; quick mode allows 1.5x on top.
GATES = [
    (FIXED, STANDARD, 1.5),
    (ADAPTIVE, STANDARD, 1.5),
    (FALLBACK, STANDARD, 1.2),
]


def _pipeline(*, hedge: Any = None, fallback: Any = None) -> Any:
    import resilient

    policies: list[Any] = [
        resilient.Timeout(30.0),
        resilient.Retry(),
        resilient.CircuitBreaker(),
        resilient.RateLimiter(rate=p.HUGE_RATE, burst=1_000_000),
        resilient.Bulkhead(max_concurrent=100, max_waiting=100),
        resilient.Timeout(10.0),
    ]
    if hedge is not None:
        policies.insert(2, hedge)
    if fallback is not None:
        policies.insert(0, fallback)
    return resilient.Pipeline(*policies, name="bench", telemetry=False)


def cases() -> dict[str, Case]:
    import resilient

    out: dict[str, Case] = {
        "bare await": loop(p.f),
        STANDARD: loop(p.wrapped(_pipeline())),
    }
    if hasattr(resilient, "Hedge"):
        out[FIXED] = loop(p.wrapped(_pipeline(hedge=resilient.Hedge(delay=1.0))))
        out[ADAPTIVE] = loop(p.wrapped(_pipeline(hedge=resilient.Hedge())))
    if hasattr(resilient, "Fallback"):
        out[FALLBACK] = loop(p.wrapped(_pipeline(fallback=resilient.Fallback(value=0))))
    return out


def run(*, quick: bool) -> dict[str, float]:
    return summary(run_timed(cases, quick=quick), quick=quick)

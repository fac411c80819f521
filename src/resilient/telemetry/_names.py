"""Stable telemetry names: instruments, attributes, span events (renaming one breaks users)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["METRICS", "MetricInfo"]

SCOPE: Final = "resilient"

# Attribute keys: bounded values only (a static name, an enum value, a class name).
PIPELINE: Final = "resilient.pipeline"
POLICY: Final = "resilient.policy"
OPERATION: Final = "resilient.operation"
VERDICT: Final = "resilient.verdict"
ERROR_TYPE: Final = "error.type"
REASON: Final = "resilient.reason"
STATE: Final = "resilient.circuit.state"
PREVIOUS_STATE: Final = "resilient.circuit.previous_state"
ADMITTED: Final = "resilient.admitted"
ATTEMPT_KIND: Final = "resilient.attempt.kind"
"""``original``, ``retry`` or ``hedge``: what an attempt was sent as."""
# Span-only attributes (numbers and per-call details, never used on metrics).
ATTEMPT: Final = "resilient.attempt"
ATTEMPTS: Final = "resilient.attempts"
DURATION: Final = "resilient.duration"
DELAY: Final = "resilient.retry.delay"
RETRY_AFTER: Final = "resilient.retry_after"
TIMEOUT: Final = "resilient.timeout"
WAITED: Final = "resilient.waited"
CIRCUIT_KEY: Final = "resilient.circuit.key"
WAIT_OUTCOME: Final = "resilient.circuit.wait.outcome"
"""``probe``, ``released``, ``failed``, ``timeout`` or ``cancelled``: how a breaker wait ended."""
WAITING: Final = "resilient.circuit.waiting"
GIVE_UP: Final = "resilient.circuit.give_up"
HEDGE: Final = "resilient.hedge"
HEDGE_DELAY: Final = "resilient.hedge.delay"
WINNER: Final = "resilient.hedge.winner"
CANCELLED_ATTEMPTS: Final = "resilient.hedge.cancelled"

CANCELLED: Final = "cancelled"
"""The ``resilient.verdict`` of a call its caller cancelled (not a failure)."""
OTHER: Final = "_OTHER"
"""Replaces an attribute value once too many distinct values were seen (a cardinality guard)."""

# Span event names.
EV_ATTEMPT: Final = "resilient.attempt"
EV_RETRY: Final = "resilient.retry"
EV_GAVE_UP: Final = "resilient.retry.gave_up"
EV_BUDGET: Final = "resilient.retry.budget_refused"
EV_REJECTED: Final = "resilient.rejected"
EV_CIRCUIT: Final = "resilient.circuit.state_change"
EV_TIMEOUT: Final = "resilient.timeout"
EV_WAIT: Final = "resilient.wait"
EV_CIRCUIT_WAIT_STARTED: Final = "resilient.circuit.wait.started"
EV_CIRCUIT_WAIT: Final = "resilient.circuit.wait"
EV_HEDGE: Final = "resilient.hedge"
EV_HEDGE_ENDED: Final = "resilient.hedge.ended"
EV_FALLBACK: Final = "resilient.fallback"

# Instrument names.
CALL_DURATION: Final = "resilient.call.duration"
ATTEMPT_DURATION: Final = "resilient.attempt.duration"
RETRIES: Final = "resilient.retries"
RETRY_GAVE_UP: Final = "resilient.retry.gave_up"
BUDGET_REFUSALS: Final = "resilient.retry.budget.refusals"
REJECTIONS: Final = "resilient.rejections"
TIMEOUTS: Final = "resilient.timeouts"
WAIT_DURATION: Final = "resilient.wait.duration"
CIRCUIT_TRANSITIONS: Final = "resilient.circuit.transitions"
CIRCUIT_STATE: Final = "resilient.circuit.state"
BULKHEAD_RUNNING: Final = "resilient.bulkhead.running"
BULKHEAD_WAITING: Final = "resilient.bulkhead.waiting"
BULKHEAD_LIMIT: Final = "resilient.bulkhead.limit"
RATELIMITER_TOKENS: Final = "resilient.ratelimiter.tokens"
RATELIMITER_WAITING: Final = "resilient.ratelimiter.waiting"
HEDGES: Final = "resilient.hedges"
FALLBACKS: Final = "resilient.fallbacks"

# Seconds: from 1 ms to 1 min, the range of a dependency call (OTel's default boundaries are
# meant for milliseconds and would put every call in the first bucket).
DURATION_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    30.0,
    60.0,
)


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """One instrument: its OpenTelemetry name, kind, unit, attributes and meaning."""

    name: str
    instrument: str
    unit: str
    attributes: tuple[str, ...]
    description: str

    @property
    def prometheus_name(self) -> str:
        """The name the OpenTelemetry Prometheus exporter gives it (unit and ``_total``)."""
        base = self.name.replace(".", "_")
        if self.unit == "s":
            base += "_seconds"
        if self.instrument == "Counter":
            base += "_total"
        return base


_CALL = (PIPELINE, OPERATION)
METRICS: Final = (
    MetricInfo(
        CALL_DURATION,
        "Histogram",
        "s",
        (*_CALL, VERDICT, ERROR_TYPE),
        "Duration of pipeline calls, retries and waits included, by final verdict.",
    ),
    MetricInfo(
        ATTEMPT_DURATION,
        "Histogram",
        "s",
        (*_CALL, POLICY, ATTEMPT_KIND, VERDICT, ERROR_TYPE),
        "Duration of each attempt made by a Retry or Hedge policy, by the attempt's kind "
        "(original, retry, hedge) and verdict.",
    ),
    MetricInfo(
        RETRIES,
        "Counter",
        "{retry}",
        (*_CALL, POLICY, ERROR_TYPE),
        "Retries scheduled after a retryable outcome.",
    ),
    MetricInfo(
        RETRY_GAVE_UP,
        "Counter",
        "{call}",
        (*_CALL, POLICY, REASON, ERROR_TYPE),
        "Calls a Retry policy ended without success, by reason (attempts, deadline, budget, "
        "verdict: the outcome was not retryable).",
    ),
    MetricInfo(
        BUDGET_REFUSALS,
        "Counter",
        "{retry}",
        (*_CALL, POLICY),
        "Retries the retry budget refused.",
    ),
    MetricInfo(
        REJECTIONS,
        "Counter",
        "{call}",
        (*_CALL, POLICY, REASON, ERROR_TYPE),
        "Calls a policy refused to run (open circuit, full bulkhead, rate limited, ...).",
    ),
    MetricInfo(
        TIMEOUTS,
        "Counter",
        "{timeout}",
        (*_CALL, POLICY),
        "Calls or attempts a Timeout policy cut.",
    ),
    MetricInfo(
        WAIT_DURATION,
        "Histogram",
        "s",
        (*_CALL, POLICY, ADMITTED),
        "Time calls waited in a bulkhead or rate-limiter queue, admitted or not.",
    ),
    MetricInfo(
        CIRCUIT_TRANSITIONS,
        "Counter",
        "{transition}",
        (PIPELINE, POLICY, STATE, PREVIOUS_STATE),
        "Circuit-breaker state changes, by new and previous state.",
    ),
    MetricInfo(
        CIRCUIT_STATE,
        "ObservableUpDownCounter",
        "{circuit}",
        (PIPELINE, POLICY, STATE),
        "Circuits in each state (closed, open, half_open always reported): 1 for the state of "
        "an unkeyed breaker, the number of keys in it for a keyed one.",
    ),
    MetricInfo(
        BULKHEAD_RUNNING,
        "ObservableUpDownCounter",
        "{call}",
        (PIPELINE, POLICY),
        "Calls running inside a bulkhead.",
    ),
    MetricInfo(
        BULKHEAD_WAITING,
        "ObservableUpDownCounter",
        "{call}",
        (PIPELINE, POLICY),
        "Calls waiting for a bulkhead permit.",
    ),
    MetricInfo(
        BULKHEAD_LIMIT,
        "ObservableGauge",
        "{call}",
        (PIPELINE, POLICY),
        "Calls a bulkhead admits at once now: an adaptive limit's current value, or the fixed "
        "max_concurrent (summed over the partitions of a keyed bulkhead).",
    ),
    MetricInfo(
        RATELIMITER_TOKENS,
        "ObservableGauge",
        "{token}",
        (PIPELINE, POLICY),
        "Tokens available in a rate limiter's bucket (unkeyed limiters).",
    ),
    MetricInfo(
        RATELIMITER_WAITING,
        "ObservableUpDownCounter",
        "{call}",
        (PIPELINE, POLICY),
        "Calls waiting for rate-limiter tokens.",
    ),
    MetricInfo(
        HEDGES,
        "Counter",
        "{hedge}",
        (*_CALL, POLICY),
        "Hedges started: attempts sent beside one that had not answered within the delay.",
    ),
    MetricInfo(
        FALLBACKS,
        "Counter",
        "{call}",
        (*_CALL, POLICY, VERDICT, ERROR_TYPE),
        "Calls whose failure a Fallback policy replaced, by the failure's verdict.",
    ),
)
"""Every instrument the telemetry layer creates (the table in docs/telemetry.md)."""

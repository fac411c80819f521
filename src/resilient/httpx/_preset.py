"""``standard()``: the recommended HTTP pipeline behind a transport, in one call."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import httpx
from opentelemetry import trace

from resilient._circuit import CircuitBreaker
from resilient._classify import Classification, ClassifierLike, Outcome, Verdict
from resilient._clock import Clock
from resilient._pipeline import Pipeline, Policy
from resilient._retry import Retry
from resilient._timeout import Timeout

from ._transport import DEADLINE_HEADER, IDEMPOTENT_METHODS, ResilientTransport

__all__ = ["standard"]


def standard(
    transport: httpx.AsyncBaseTransport | None = None,
    *,
    name: str = "http",
    timeout: float = 10.0,
    attempt_timeout: float = 3.0,
    attempts: int = 3,
    base_delay: float = 0.2,
    max_delay: float = 5.0,
    failure_rate: float = 0.5,
    window: float = 30.0,
    minimum_calls: int = 20,
    open_for: float = 5.0,
    classify: ClassifierLike
    | Callable[[Outcome], Classification | Verdict | None]
    | Iterable[Any]
    | None = None,
    retry_methods: Iterable[str] = IDEMPOTENT_METHODS,
    idempotency_header: str | None = "Idempotency-Key",
    propagate_deadline: bool = False,
    deadline_header: str = DEADLINE_HEADER,
    clock: Clock | None = None,
    telemetry: bool = True,
    tracer_provider: trace.TracerProvider | None = None,
) -> ResilientTransport:
    """A ``ResilientTransport`` running the recommended pipeline for an HTTP dependency.

    ``Timeout(timeout) -> Retry -> CircuitBreaker -> Timeout(attempt_timeout)``: the total
    timeout bounds retries and their waits; retries sit outside the breaker so an open circuit
    is not hammered; the breaker keeps one state per host, so a dead host never blocks a
    healthy one.

    Args:
        transport: what sends requests (default ``httpx.AsyncHTTPTransport()``).
        name: the pipeline's name (a bounded telemetry attribute).
        timeout: seconds for the whole request, retries included.
        attempt_timeout: seconds for each attempt (until the response headers arrive).
        attempts: total attempts, the first included.
        base_delay: ceiling of the first retry's delay (full jitter), seconds.
        max_delay: largest computed retry delay, seconds.
        failure_rate: failure rate over ``window`` seconds that opens a host's breaker.
        window: the breaker's window, seconds.
        minimum_calls: calls in the window before the rate is judged.
        open_for: seconds a breaker stays open before probing.
        classify: classification replacing ``http_classifier()``.
        retry_methods: methods that may be retried.
        idempotency_header: a header making any request retryable (``None`` to disable).
        propagate_deadline: send the remaining deadline upstream in ``deadline_header``.
        deadline_header: the header for it.
        clock: the pipeline's clock (tests).
        telemetry: pipeline telemetry and per-attempt spans.
        tracer_provider: the OpenTelemetry tracer provider for attempt spans.

    Raises:
        ConfigurationError: an invalid option (the message names it).
    """
    policies: list[Policy] = [
        Timeout(timeout, name="total"),
        Retry(attempts=attempts, base_delay=base_delay, max_delay=max_delay),
        CircuitBreaker(
            failure_rate=failure_rate,
            window=window,
            minimum_calls=minimum_calls,
            open_for=open_for,
        ),
    ]
    policies.append(Timeout(attempt_timeout, name="attempt"))
    pipeline = Pipeline(*policies, name=name, clock=clock, telemetry=telemetry)
    return ResilientTransport(
        pipeline,
        transport,
        classify=classify,
        retry_methods=retry_methods,
        idempotency_header=idempotency_header,
        propagate_deadline=propagate_deadline,
        deadline_header=deadline_header,
        telemetry=telemetry,
        tracer_provider=tracer_provider,
    )

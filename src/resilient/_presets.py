"""``standard()``: the recommended pipeline, in the recommended order, with documented defaults."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ._bulkhead import Bulkhead
from ._circuit import CircuitBreaker
from ._classify import ClassifierLike
from ._clock import Clock
from ._events import CallObserver, Listener
from ._exceptions import ConfigurationError
from ._limits import AdaptiveLimit
from ._pipeline import ObserverFactory, Pipeline, Policy
from ._ratelimit import RateLimiter
from ._retry import Retry
from ._throttle import Throttle
from ._timeout import Timeout

__all__ = ["standard"]

_DEFAULT: Any = object()


def standard(
    name: str = "default",
    *,
    total_timeout: float | None = 30.0,
    attempt_timeout: float | None = 10.0,
    attempts: int = 3,
    base_delay: float = 0.1,
    max_delay: float = 5.0,
    budget: Any = _DEFAULT,
    circuit_breaker: bool = True,
    failure_rate: float = 0.5,
    window: float = 30.0,
    minimum_calls: int = 20,
    open_for: float = 5.0,
    rate: float | None = None,
    burst: int | None = None,
    rate_max_wait: float = 0.0,
    max_concurrent: int | AdaptiveLimit | None = 100,
    max_waiting: int = 100,
    max_wait: float = 1.0,
    per_key: bool = False,
    throttle: bool | Throttle = False,
    classify: ClassifierLike | Callable[..., Any] | Iterable[Any] | None = None,
    clock: Clock | None = None,
    random: Callable[[], float] | None = None,
    listeners: Iterable[Listener] = (),
    telemetry: bool | CallObserver | ObserverFactory = True,
) -> Pipeline:
    """Build the recommended pipeline for calls to one dependency.

    Order, outermost first (each step is left out when its option is ``None``/``False``)::

        Timeout(total_timeout) -> Retry(attempts, budget) -> [Throttle] -> CircuitBreaker
            -> RateLimiter(rate) -> Bulkhead(max_concurrent) -> Timeout(attempt_timeout)

    Retry sits outside the breaker so an open circuit is not hammered; the breaker outside the
    limiter so an open circuit spends no tokens; the bulkhead inside the retry so a call
    sleeping in backoff holds no slot; the total timeout arms no timer of its own (the
    attempt timeout is armed at the tighter of the two deadlines).

    Defaults (compare Microsoft's standard resilience handler: total 30 s, attempt 10 s, 3
    retries, breaker 10 % over 30 s with 100 calls minimum, break 5 s): total 30 s, attempt
    10 s, 3 attempts (2 retries) with full jitter from 0.1 s capped at 5 s under a retry
    budget (10 % of traffic plus a small reserve), a breaker opening at 50 % failures over
    30 s once 20 calls were seen, for 5 s; 100 concurrent calls with 100 more waiting up to
    1 s; no client-side rate limit unless ``rate`` is given (quotas are upstream-specific).

    Args:
        name: the pipeline's name (a telemetry attribute).
        total_timeout: seconds for the whole call, retries included, or ``None``.
        attempt_timeout: seconds for each attempt, or ``None``.
        attempts: attempts including the first (``Retry.attempts``); 1 disables retries.
        base_delay: ``Retry.base_delay``.
        max_delay: ``Retry.max_delay``.
        budget: ``Retry.budget`` (default: a fresh ``RetryBudget()``; ``None`` disables it).
        circuit_breaker: include a ``CircuitBreaker`` (per key when integrations set one).
        failure_rate: ``CircuitBreaker.failure_rate``.
        window: ``CircuitBreaker.window`` in seconds.
        minimum_calls: ``CircuitBreaker.minimum_calls``.
        open_for: ``CircuitBreaker.open_for``.
        rate: tokens per second for a ``RateLimiter``, or ``None`` for no limiter.
        burst: ``RateLimiter.burst`` (default: ``max(1, int(rate))``).
        rate_max_wait: ``RateLimiter.max_wait``.
        max_concurrent: ``Bulkhead.max_concurrent`` (a number or an ``AdaptiveLimit``), or
            ``None`` for no bulkhead.
        max_waiting: ``Bulkhead.max_waiting``.
        max_wait: ``Bulkhead.max_wait``.
        per_key: give the rate limiter and the bulkhead one state per ``ctx.key`` (the httpx
            transport sets the host) instead of one shared by all calls.
        throttle: ``True`` or a ``Throttle`` adds client-side adaptive throttling right
            inside the retry (each attempt counts); off by default because the breaker
            already refuses calls at the same 50 % shed rate (docs/overload.md).
        classify: the pipeline's classifier.
        clock: the pipeline's clock.
        random: the pipeline's random source.
        listeners: event listeners.
        telemetry: as for ``Pipeline``.

    Raises:
        ConfigurationError: any invalid option, naming the policy's parameter.
    """
    policies: list[Policy] = []
    if total_timeout is not None:
        policies.append(Timeout(total_timeout, name="total_timeout"))
    if attempts != 1:
        retry_options: dict[str, Any] = {}
        if budget is not _DEFAULT:
            retry_options["budget"] = budget
        policies.append(
            Retry(attempts=attempts, base_delay=base_delay, max_delay=max_delay, **retry_options)
        )
    if throttle is not False:
        if throttle is True:
            throttle = Throttle()
        elif not isinstance(throttle, Throttle):
            raise ConfigurationError("standard.throttle", throttle, "expected a bool or a Throttle")
        policies.append(throttle)
    if circuit_breaker:
        policies.append(
            CircuitBreaker(
                failure_rate=failure_rate,
                window=window,
                minimum_calls=minimum_calls,
                open_for=open_for,
            )
        )
    if rate is not None:
        policies.append(
            RateLimiter(
                rate=rate,
                burst=burst if burst is not None else max(1, int(rate)),
                max_wait=rate_max_wait,
                per_key=per_key,
            )
        )
    if max_concurrent is not None:
        policies.append(
            Bulkhead(
                max_concurrent=max_concurrent,
                max_waiting=max_waiting,
                max_wait=max_wait,
                per_key=per_key,
            )
        )
    if attempt_timeout is not None:
        policies.append(Timeout(attempt_timeout, name="attempt_timeout"))
    return Pipeline(
        *policies,
        name=name,
        clock=clock,
        random=random,
        classify=classify,
        listeners=listeners,
        telemetry=telemetry,
    )

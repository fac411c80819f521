"""``standard()``: the recommended pipeline, in the recommended order, with documented defaults."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from . import _validate as check
from ._bulkhead import Bulkhead
from ._circuit import CircuitBreaker
from ._classify import ClassifierLike
from ._clock import Clock
from ._events import CallObserver, Listener
from ._exceptions import ConfigurationError
from ._hedge import Hedge
from ._limits import AdaptiveLimit
from ._pipeline import ObserverFactory, Pipeline, Policy
from ._ratelimit import BucketStore, RateLimiter
from ._retry import Retry
from ._throttle import Throttle
from ._timeout import Timeout

__all__ = ["standard"]

_DEFAULT: Any = object()
_ATTEMPT_TIMEOUT = 10.0

# The policies' parameters, by the option of standard() that sets them: an error names the
# option the caller wrote.
_RETRY_OPTIONS = {
    "Retry.attempts": "attempts",
    "Retry.base_delay": "base_delay",
    "Retry.max_delay": "max_delay",
    "Retry.budget": "budget",
}
_BREAKER_OPTIONS = {
    "CircuitBreaker.failure_rate": "failure_rate",
    "CircuitBreaker.window": "window",
    "CircuitBreaker.minimum_calls": "minimum_calls",
    "CircuitBreaker.open_for": "open_for",
}
_LIMITER_OPTIONS = {
    "RateLimiter.rate": "rate",
    "RateLimiter.burst": "burst",
    "RateLimiter.max_wait": "rate_max_wait",
    "RateLimiter.store": "rate_store",
}
_BULKHEAD_OPTIONS = {
    "Bulkhead.max_concurrent": "max_concurrent",
    "Bulkhead.max_waiting": "max_waiting",
    "Bulkhead.max_wait": "max_wait",
}
# Defaults of the options that only mean something with another one (see _check_combinations).
_DEFAULTS: dict[str, object] = {
    "base_delay": 0.1,
    "max_delay": 5.0,
    "budget": _DEFAULT,
    "failure_rate": 0.5,
    "window": 30.0,
    "minimum_calls": 20,
    "open_for": 5.0,
    "burst": None,
    "rate_max_wait": 0.0,
    "max_waiting": 100,
    "max_wait": 1.0,
}

P = TypeVar("P")


def _named(options: dict[str, str], build: Callable[[], P]) -> P:
    return check.renamed(options, build, prefix="standard")


def _unused(options: dict[str, object], enabler: str, why: str) -> None:
    for option, value in options.items():
        default = _DEFAULTS[option]
        if value is not default and value != default:
            raise ConfigurationError(
                f"standard.{option}", value, f"only means something with standard.{enabler} ({why})"
            )


def _check_combinations(
    *,
    total_timeout: object,
    attempt_timeout: object,
    attempts: object,
    retry_options: dict[str, object],
    circuit_breaker: object,
    breaker_options: dict[str, object],
    rate: object,
    limiter_options: dict[str, object],
    max_concurrent: object,
    bulkhead_options: dict[str, object],
    per_key: object,
    hedge_on_attempt_timeout: object,
) -> bool:
    """Refuse options that cannot work together, naming both (before any policy is built);
    whether the attempt timeout hedges."""
    total = check.optional(check.positive, "standard.total_timeout", total_timeout, allow_inf=True)
    attempt = check.optional(
        check.positive, "standard.attempt_timeout", attempt_timeout, allow_inf=True
    )
    if total is not None and attempt is not None and attempt > total:
        raise ConfigurationError(
            "standard.attempt_timeout",
            attempt_timeout,
            f"must not exceed standard.total_timeout={total_timeout!r} (no attempt could use "
            "its own timeout)",
        )
    if check.integer("standard.attempts", attempts, minimum=1) == 1:
        _unused(retry_options, "attempts", "attempts=1 makes no retry")
    for option, value in (("circuit_breaker", circuit_breaker), ("per_key", per_key)):
        if not isinstance(value, bool):
            raise ConfigurationError(f"standard.{option}", value, "expected True or False")
    if not circuit_breaker:
        _unused(breaker_options, "circuit_breaker", "circuit_breaker=False builds no breaker")
    if check.optional(check.positive, "standard.rate", rate) is None:
        _unused(limiter_options, "rate", "rate=None builds no rate limiter")
    if max_concurrent is None:
        _unused(bulkhead_options, "max_concurrent", "max_concurrent=None builds no bulkhead")
    elif not isinstance(max_concurrent, AdaptiveLimit):
        check.integer("standard.max_concurrent", max_concurrent, minimum=1)
    return _hedging(hedge_on_attempt_timeout, total, attempt, attempts)


def _hedging(
    hedge_on_attempt_timeout: object, total: float | None, attempt: float | None, attempts: object
) -> bool:
    """Whether the attempt timeout hedges (``None``: when it can); refuse what cannot."""
    if hedge_on_attempt_timeout is not None and not isinstance(hedge_on_attempt_timeout, bool):
        raise ConfigurationError(
            "standard.hedge_on_attempt_timeout",
            hedge_on_attempt_timeout,
            "expected True, False or None",
        )
    # Hedging keeps a slow attempt running: only a total timeout bounds it then. It needs an
    # attempt timeout to hedge at, and attempts to hedge with.
    finite = math.isfinite
    missing = (
        (
            "total_timeout",
            total if total is not None and finite(total) else None,
            "nothing would bound the attempts left running",
        ),
        (
            "attempt_timeout",
            attempt if attempt is not None and finite(attempt) else None,
            "there is no attempt timeout to hedge at",
        ),
        ("attempts", None if attempts == 1 else attempts, "attempts=1 allows no second attempt"),
    )
    for option, value, why in missing:
        if value is None:
            if hedge_on_attempt_timeout:
                written = {"total_timeout": total, "attempt_timeout": attempt}.get(option, 1)
                raise ConfigurationError(
                    "standard.hedge_on_attempt_timeout",
                    hedge_on_attempt_timeout,
                    f"needs standard.{option} (given standard.{option}={written!r}: {why})",
                )
            return False
    return hedge_on_attempt_timeout is not False


def _default_attempt_timeout(total_timeout: object) -> float:
    # 10 s per attempt, unless the whole call has less (then one timer bounds both).
    numeric = isinstance(total_timeout, int | float) and not isinstance(total_timeout, bool)
    if numeric and 0 < total_timeout < _ATTEMPT_TIMEOUT:  # type: ignore[operator]
        return float(total_timeout)  # type: ignore[arg-type]
    return _ATTEMPT_TIMEOUT


def _throttle(throttle: object) -> list[Policy]:
    """The Throttle step: none for ``False``, a default one for ``True``, or the one given."""
    if throttle is False:
        return []
    if throttle is True:
        return [Throttle()]
    if not isinstance(throttle, Throttle):
        raise ConfigurationError("standard.throttle", throttle, "expected a bool or a Throttle")
    return [throttle]


def standard(
    name: str = "default",
    *,
    total_timeout: float | None = 30.0,
    attempt_timeout: float | None = _DEFAULT,
    attempts: int = 4,
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
    rate_store: BucketStore | None = None,
    max_concurrent: int | AdaptiveLimit | None = 100,
    max_waiting: int = 100,
    max_wait: float = 1.0,
    per_key: bool = False,
    throttle: bool | Throttle = False,
    hedge_on_attempt_timeout: bool | None = None,
    classify: ClassifierLike | Callable[..., Any] | Iterable[Any] | None = None,
    clock: Clock | None = None,
    random: Callable[[], float] | None = None,
    listeners: Iterable[Listener] = (),
    telemetry: bool | CallObserver | ObserverFactory = True,
) -> Pipeline:
    """Build the recommended pipeline for calls to one dependency.

    Order, outermost first (each step is left out when its option is ``None``/``False``)::

        Timeout(total_timeout) -> Retry(attempts, budget) -> [Throttle] -> CircuitBreaker
            -> Hedge(delay=attempt_timeout) -> RateLimiter(rate) -> Bulkhead(max_concurrent)

    The attempt timeout *hedges* (Envoy's ``hedge_on_per_try_timeout``): when an attempt has
    not answered within ``attempt_timeout``, it keeps running and another attempt starts
    beside it (up to ``attempts - 1`` hedges, each ``attempt_timeout`` after the previous);
    the first acceptable answer wins and the others are cancelled (a breaker counts nothing
    for them). The total timeout bounds every attempt. Hedges and retries spend one
    ``RetryBudget`` (the Retry's; only the Retry earns). A call that may not be sent twice
    (``ctx.resendable`` false: a POST without an idempotency key through
    ``resilient.httpx``) is never hedged and is cut at ``attempt_timeout`` instead. With
    ``hedge_on_attempt_timeout=False`` (or without a total timeout, or with ``attempts=1``)
    the attempt timeout cuts, as an innermost ``Timeout(attempt_timeout)``::

        Timeout(total_timeout) -> Retry(attempts, budget) -> [Throttle] -> CircuitBreaker
            -> RateLimiter(rate) -> Bulkhead(max_concurrent) -> Timeout(attempt_timeout)

    Retry sits outside the breaker so an open circuit is not hammered; the breaker outside the
    hedge so a call waiting out an open circuit (it has sent nothing) is not hedged, and a
    hedged round counts once, by its first answer; the breaker outside the limiter so an open
    circuit spends no tokens; the bulkhead inside the retry so a call
    sleeping in backoff holds no slot (each hedge takes its own slot).

    Defaults (compare Microsoft's standard resilience handler: total 30 s, attempt 10 s, 3
    retries, breaker 10 % over 30 s with 100 calls minimum, break 5 s): total 30 s, attempt
    10 s (hedged at, not cut), 4 attempts (3 retries, like Microsoft's handler, Polly and
    httpx-retries) with full jitter from 0.1 s capped at 5 s under a retry budget (calls that
    succeed earn 0.2 retries, a retry or hedge that succeeds gets its token back, plus a small
    reserve; shared with the hedges: the budget bounds the extra load, not ``attempts``), a
    breaker opening at 50 % failures over 30 s once 20 calls were seen or at 10 failures in
    a row, for 5 s, which callers with time left wait out (up to 1 s, probing every 0.2 s);
    100 concurrent calls with 100 more waiting up to 1 s; no client-side rate limit
    unless ``rate`` is given (quotas are upstream-specific).

    Args:
        name: the pipeline's name (a telemetry attribute).
        total_timeout: seconds for the whole call, retries included, or ``None``.
        attempt_timeout: seconds for each attempt before it is hedged (or cut, see
            ``hedge_on_attempt_timeout``), or ``None`` (default: 10 s, or the
            ``total_timeout`` when that is shorter; given explicitly, it may not exceed it).
        attempts: attempts including the first (``Retry.attempts``, default 4); 1 disables
            retries (and hedging). Also bounds the hedges of one attempt (``attempts - 1``).
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
        rate_store: ``RateLimiter.store``: where the buckets live (default: this process;
            ``resilient.redis.RedisBucketStore`` shares the quota across a fleet).
        max_concurrent: ``Bulkhead.max_concurrent`` (a number or an ``AdaptiveLimit``), or
            ``None`` for no bulkhead.
        max_waiting: ``Bulkhead.max_waiting``.
        max_wait: ``Bulkhead.max_wait``.
        per_key: give the rate limiter and the bulkhead one state per ``ctx.key`` (the httpx
            transport sets the host) instead of one shared by all calls.
        throttle: ``True`` or a ``Throttle`` adds client-side adaptive throttling right
            inside the retry (each attempt counts); off by default because the breaker
            already refuses calls at the same 50 % shed rate (docs/overload.md).
        hedge_on_attempt_timeout: ``None`` (default): the attempt timeout hedges when there
            is a finite ``total_timeout``, an ``attempt_timeout`` and ``attempts > 1``, and
            cuts otherwise; ``True`` insists (a ``ConfigurationError`` names the missing
            option); ``False`` restores the cutting attempt ``Timeout`` exactly.
        classify: the pipeline's classifier.
        clock: the pipeline's clock.
        random: the pipeline's random source.
        listeners: event listeners.
        telemetry: as for ``Pipeline``.

    Raises:
        ConfigurationError: an invalid option, named as written here
            (``standard.attempt_timeout``); an option that only means something with another
            one (``burst`` without ``rate``, breaker options with ``circuit_breaker=False``,
            retry options with ``attempts=1``, bulkhead options with ``max_concurrent=None``,
            ``hedge_on_attempt_timeout=True`` without a ``total_timeout``), or an
            ``attempt_timeout`` above the ``total_timeout``: both options are named.
    """
    if attempt_timeout is _DEFAULT:
        attempt_timeout = _default_attempt_timeout(total_timeout)
    policies: list[Policy] = []
    hedging = _check_combinations(
        total_timeout=total_timeout,
        attempt_timeout=attempt_timeout,
        attempts=attempts,
        retry_options={"base_delay": base_delay, "max_delay": max_delay, "budget": budget},
        circuit_breaker=circuit_breaker,
        breaker_options={
            "failure_rate": failure_rate,
            "window": window,
            "minimum_calls": minimum_calls,
            "open_for": open_for,
        },
        rate=rate,
        limiter_options={"burst": burst, "rate_max_wait": rate_max_wait},
        max_concurrent=max_concurrent,
        bulkhead_options={"max_waiting": max_waiting, "max_wait": max_wait},
        per_key=per_key,
        hedge_on_attempt_timeout=hedge_on_attempt_timeout,
    )
    if total_timeout is not None:
        policies.append(
            _named(
                {"Timeout.seconds": "total_timeout"},
                lambda: Timeout(total_timeout, name="total_timeout"),
            )
        )
    hedge: Hedge | None = None
    if attempts != 1:
        retry_options: dict[str, Any] = {}
        if budget is not _DEFAULT:
            retry_options["budget"] = budget
        retry = _named(
            _RETRY_OPTIONS,
            lambda: Retry(
                attempts=attempts, base_delay=base_delay, max_delay=max_delay, **retry_options
            ),
        )
        policies.append(retry)
        if hedging and attempt_timeout is not None:
            # Envoy's hedge_on_per_try_timeout: the attempt timeout starts another attempt
            # beside the slow one instead of cutting it; the total timeout bounds them all.
            # Hedges spend the Retry's own budget (one allowance for both; only the Retry
            # earns), and a call that may not be sent twice keeps the attempt timeout as a cut.
            shared = retry.budget
            hedge = Hedge(
                delay=attempt_timeout,
                max_hedges=attempts - 1,
                budget=shared,
                deposit=shared is None,
                unhedged=Timeout(attempt_timeout, name="attempt_timeout"),
            )
    policies += _throttle(throttle)
    if circuit_breaker:
        policies.append(
            _named(
                _BREAKER_OPTIONS,
                lambda: CircuitBreaker(
                    failure_rate=failure_rate,
                    window=window,
                    minimum_calls=minimum_calls,
                    open_for=open_for,
                ),
            )
        )
    if hedge is not None:
        # Inside the breaker: a call waiting out an open circuit has sent nothing and is not
        # hedged, and the breaker judges a hedged round by its first answer.
        policies.append(hedge)
    if rate is None and rate_store is not None:
        raise ConfigurationError("standard.rate_store", rate_store, "needs rate to be set")
    if rate is not None:
        policies.append(
            _named(
                _LIMITER_OPTIONS,
                lambda: RateLimiter(
                    rate=rate,
                    burst=burst if burst is not None else max(1, int(rate)),
                    max_wait=rate_max_wait,
                    per_key=per_key,
                    store=rate_store,
                ),
            )
        )
    if max_concurrent is not None:
        policies.append(
            _named(
                _BULKHEAD_OPTIONS,
                lambda: Bulkhead(
                    max_concurrent=max_concurrent,
                    max_waiting=max_waiting,
                    max_wait=max_wait,
                    per_key=per_key,
                ),
            )
        )
    if attempt_timeout is not None and not hedging:
        policies.append(
            _named(
                {"Timeout.seconds": "attempt_timeout"},
                lambda: Timeout(attempt_timeout, name="attempt_timeout"),
            )
        )
    return _named(
        {
            "Pipeline.name": "name",
            "Pipeline.clock": "clock",
            "Pipeline.random": "random",
            "Pipeline.classify": "classify",
            "Pipeline.listeners": "listeners",
            "Pipeline.telemetry": "telemetry",
        },
        lambda: Pipeline(
            *policies,
            name=name,
            clock=clock,
            random=random,
            classify=classify,
            listeners=listeners,
            telemetry=telemetry,
        ),
    )

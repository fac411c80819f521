"""Effective settings -> policies, through the public constructors only.

The order is ``resilient.standard()``'s: ``Timeout(total) -> Retry(+budget) -> CircuitBreaker
-> Hedge(attempt, the Retry's budget) -> RateLimiter -> Bulkhead``, or with ``timeout.hedge =
false`` (or no total timeout, or no retries) ``... -> Bulkhead -> Timeout(attempt)``. Each
policy is a *component* with the keys it was built from, so a reload rebuilds only what changed
and keeps the rest (and its state).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from resilient import Bulkhead, CircuitBreaker, Hedge, RateLimiter, Retry, RetryBudget, Timeout
from resilient.events import Listener
from resilient.extend import Policy

from ._load import PipelineSettings

__all__ = ["COMPONENTS", "build_policies", "component_keys", "describe"]

COMPONENTS = (
    "timeout.total",
    "retry",
    "breaker",
    "hedge",
    "limiter",
    "bulkhead",
    "timeout.attempt",
)
"""The components of a configured pipeline, outermost first."""

# Whether the attempt timeout hedges depends on these (and the hedge holds the Retry's budget:
# it is rebuilt with the Retry).
_HEDGE_KEYS = ("timeout.total", "timeout.attempt", "timeout.hedge")


def component_keys(settings: PipelineSettings, component: str) -> tuple[tuple[str, object], ...]:
    """The settings a component is built from (equal tuples: the same policy)."""
    if component == "timeout.total":
        return ((component, settings[component]),)
    if component in ("hedge", "timeout.attempt"):
        retry = component_keys(settings, "retry")
        return (*((key, settings[key]) for key in _HEDGE_KEYS), *retry)
    return tuple((k, v) for k, v in settings.values.items() if k.startswith(component + "."))


def hedging(s: PipelineSettings) -> bool:
    """Whether the attempt timeout hedges (``standard()``'s ``hedge_on_attempt_timeout``)."""
    total, attempt = s["timeout.total"], s["timeout.attempt"]
    return bool(
        s["timeout.hedge"]
        and total is not None
        and math.isfinite(total)
        and attempt is not None
        and math.isfinite(attempt)
        and s["retry.enabled"]
        and s["retry.attempts"] > 1
    )


def _budget(s: PipelineSettings) -> RetryBudget | None:
    if not s["retry.budget.enabled"]:
        return None
    return RetryBudget(
        ratio=s["retry.budget.ratio"],
        reserve=s["retry.budget.reserve"],
        window=s["retry.budget.window"],
    )


Options = tuple[type[Any], tuple[Any, ...], dict[str, Any]]


def _timeout(s: PipelineSettings, component: str, **_: Any) -> Options | None:
    seconds = s[component]
    if component == "timeout.attempt" and hedging(s):
        return None  # the hedge's delay (and its cut of calls it never hedges)
    name = "total_timeout" if component == "timeout.total" else "attempt_timeout"
    return None if seconds is None else (Timeout, (seconds,), {"name": name})


def _hedge(s: PipelineSettings, _: str, *, budget: Any, **__: Any) -> Options | None:
    if not hedging(s):
        return None
    seconds = s["timeout.attempt"]
    shared = budget if isinstance(budget, RetryBudget) else None
    options = {
        "delay": seconds,
        "max_hedges": s["retry.attempts"] - 1,
        "budget": shared,
        "deposit": shared is None,
        "unhedged": Timeout(seconds, name="attempt_timeout"),
    }
    return Hedge, (), options


def _retry(s: PipelineSettings, _: str, *, budget: Any, **__: Any) -> Options | None:
    if not s["retry.enabled"] or s["retry.attempts"] == 1:
        return None
    options = {
        "attempts": s["retry.attempts"],
        "base_delay": s["retry.base_delay"],
        "max_delay": s["retry.max_delay"],
        "jitter": s["retry.jitter"],
        "budget": _budget(s) if budget is True else budget or None,
        "max_retry_after": s["retry.max_retry_after"],
    }
    return Retry, (), options


_BREAKER_KEYS = (
    "failure_rate", "window", "window_type", "minimum_calls", "open_for", "half_open_calls",
    "slow_call_duration", "slow_call_rate", "buckets", "open_for_growth", "max_open_for",
    "open_jitter", "max_half_open", "per_key", "max_keys", "key_idle",
    "consecutive_failures", "max_waiting", "max_wait", "probe_interval",
)  # fmt: skip


def _breaker(s: PipelineSettings, _: str, *, listeners: Any, **__: Any) -> Options | None:
    if not s["breaker.enabled"]:
        return None
    options = {key: s[f"breaker.{key}"] for key in _BREAKER_KEYS}
    return CircuitBreaker, (), {**options, "listeners": listeners}


def _limiter(s: PipelineSettings, _: str, **__: Any) -> Options | None:
    if not s["limiter.enabled"]:
        return None
    keys = ("rate", "burst", "max_wait", "per_key")
    return RateLimiter, (), {key: s[f"limiter.{key}"] for key in keys}


def _bulkhead(s: PipelineSettings, _: str, **__: Any) -> Options | None:
    if not s["bulkhead.enabled"]:
        return None
    keys = ("max_concurrent", "max_waiting", "max_wait", "per_key")
    return Bulkhead, (), {key: s[f"bulkhead.{key}"] for key in keys}


_BUILDERS: Mapping[str, Callable[..., Options | None]] = {
    "timeout.total": _timeout,
    "retry": _retry,
    "breaker": _breaker,
    "hedge": _hedge,
    "limiter": _limiter,
    "bulkhead": _bulkhead,
    "timeout.attempt": _timeout,
}


def component_options(
    settings: PipelineSettings,
    component: str,
    *,
    listeners: tuple[Listener, ...] = (),
    budget: RetryBudget | bool | None = True,
) -> Options | None:
    """``(constructor, args, keyword options)`` of one component, or ``None`` when left out.

    Args:
        settings: the effective settings.
        component: one of ``COMPONENTS``.
        listeners: given to the circuit breaker (the registry counts openings with them).
        budget: the retry budget to use (``True``: a new one from the settings); for the
            hedge, the Retry's budget (``None`` when the Retry has none).

    Raises:
        KeyError: ``component`` is not one of ``COMPONENTS``.
    """
    return _BUILDERS[component](settings, component, listeners=listeners, budget=budget)


def build_component(
    settings: PipelineSettings,
    component: str,
    *,
    listeners: tuple[Listener, ...] = (),
    budget: RetryBudget | bool | None = True,
) -> Policy | None:
    """One component's policy, or ``None`` when the settings leave it out.

    Raises:
        ConfigurationError: an option the constructor refuses.
    """
    options = component_options(settings, component, listeners=listeners, budget=budget)
    if options is None:
        return None
    constructor, args, kwargs = options
    return constructor(*args, **kwargs)  # type: ignore[no-any-return]


def build_policies(
    settings: PipelineSettings, *, listeners: tuple[Listener, ...] = ()
) -> dict[str, Policy]:
    """Component -> policy for every component the settings include, outermost first.

    Raises:
        ConfigurationError: an option a constructor refuses (names the constructor option).
    """
    built: dict[str, Policy] = {}
    for component in COMPONENTS:
        budget: RetryBudget | bool | None = True
        if component == "hedge":
            budget = getattr(built.get("retry"), "budget", None)
        policy = build_component(settings, component, listeners=listeners, budget=budget)
        if policy is not None:
            built[component] = policy
    return built


def _number(value: object) -> object:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


_DESCRIBE: Mapping[type, Callable[[Any], dict[str, object]]] = {
    Timeout: lambda p: {"seconds": p.seconds},
    Hedge: lambda p: {
        "delay": p.delay,
        "max_hedges": p.max_hedges,
        "budget": "the retry's" if p.budget is not None else None,
    },
    Retry: lambda p: {
        "attempts": p.attempts,
        "base_delay": p.base_delay,
        "max_delay": p.max_delay,
        "jitter": p.jitter,
        "max_retry_after": p.max_retry_after,
        "budget": None
        if p.budget is None
        else {"ratio": p.budget.ratio, "reserve": p.budget.reserve, "window": p.budget.window},
    },
    CircuitBreaker: lambda p: {
        "failure_rate": p.failure_rate,
        "window": _number(p.window),
        "window_type": p.window_type,
        "minimum_calls": p.minimum_calls,
        "open_for": p.open_for,
        "max_open_for": p.max_open_for,
        "half_open_calls": p.half_open_calls,
        "slow_call_duration": p.slow_call_duration,
        "slow_call_rate": p.slow_call_rate,
        "per_key": p.per_key,
        "max_keys": p.max_keys,
    },
    RateLimiter: lambda p: {
        "rate": p.rate,
        "burst": p.burst,
        "max_wait": p.max_wait,
        "per_key": p.per_key,
    },
    Bulkhead: lambda p: {
        "max_concurrent": p.max_concurrent,
        "max_waiting": p.max_waiting,
        "max_wait": p.max_wait,
        "per_key": p.per_key,
    },
}


def describe(
    policies: tuple[Policy, ...] | list[Policy],
) -> list[tuple[str, str, dict[str, object]]]:
    """``(type, name, public settings)`` for each policy, outermost first (for comparisons)."""
    out: list[tuple[str, str, dict[str, object]]] = []
    for policy in policies:
        read = _DESCRIBE.get(type(policy))
        out.append((type(policy).__name__, policy.name, read(policy) if read is not None else {}))
    return out

"""resilient: async resilience policies for services that call other services.

Retries with jittered backoff and budgets, circuit breakers, bulkheads, rate limits, timeouts
and deadlines, composed into a ``Pipeline`` that runs on asyncio and trio (through anyio).

This namespace holds what an application writes: the policies, ``Pipeline``, ``standard()``,
the decorators, ``Verdict`` and the classification rules, the exceptions and ``Telemetry``.
Named submodules hold the rest: ``resilient.events`` (what policies report),
``resilient.extend`` (writing a policy: the protocol, ``Context``, clocks, stores, snapshot
types), ``resilient.timers`` (the timer service), ``resilient.testing`` (virtual time).

Everything the library raises derives from ``ResilientError``::

    ResilientError
     +-- ConfigurationError        (also a ValueError: a bad option, at construction)
     +-- RejectedError             (a policy refused the call; .policy, .retry_after)
          +-- CircuitOpenError     (.key, .state)
          +-- BulkheadFullError
          +-- RateLimitedError
          +-- TimeoutExceeded      (also a builtin TimeoutError; .timeout)

When retries run out the caller gets the last original exception (with a note), never a
wrapper.
"""

from __future__ import annotations

import warnings as _warnings

from . import events as events
from . import extend as extend
from . import timers as timers
from ._budget import RetryBudget
from ._bulkhead import Bulkhead
from ._circuit import CircuitBreaker
from ._classify import Classification, Classifier, Outcome, Verdict, on_exception, on_result
from ._context import remaining
from ._decorators import bulkhead, circuit_breaker, rate_limit, retry, timeout
from ._exceptions import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigurationError,
    RateLimitedError,
    RejectedError,
    ResilientError,
    TimeoutExceeded,
)
from ._fallback import Fallback
from ._hedge import Hedge
from ._limits import AdaptiveLimit
from ._pipeline import Pipeline
from ._presets import standard
from ._ratelimit import RateLimiter
from ._retry import Retry
from ._throttle import Throttle
from ._timeout import Timeout
from .telemetry import Telemetry

__version__ = "0.1.0.dev0"

__all__ = [
    "AdaptiveLimit",
    "Bulkhead",
    "BulkheadFullError",
    "CircuitBreaker",
    "CircuitOpenError",
    "Classification",
    "Classifier",
    "ConfigurationError",
    "Fallback",
    "Hedge",
    "Outcome",
    "Pipeline",
    "RateLimitedError",
    "RateLimiter",
    "RejectedError",
    "ResilientError",
    "Retry",
    "RetryBudget",
    "Telemetry",
    "Throttle",
    "Timeout",
    "TimeoutExceeded",
    "Verdict",
    "bulkhead",
    "circuit_breaker",
    "on_exception",
    "on_result",
    "rate_limit",
    "remaining",
    "retry",
    "standard",
    "timeout",
]

# Names that lived here before the namespace was trimmed: still importable, with a warning
# saying where they live now.
_MOVED = dict.fromkeys(events.__all__, "resilient.events") | {
    name: "resilient.extend"
    for name in extend.__all__
    if name not in ("ComposablePolicy", "PolicyBase", "bucket_take", "bucket_tokens")
    and name not in ("compose", "deadline_aware", "Outcome")
}


def __getattr__(name: str) -> object:
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module 'resilient' has no attribute {name!r}")
    _warnings.warn(
        f"resilient.{name} moved to {home}.{name}; import it from there",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(events if home == "resilient.events" else extend, name)

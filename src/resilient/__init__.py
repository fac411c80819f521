"""resilient: async resilience policies for services that call other services.

Retries with jittered backoff and budgets, circuit breakers, bulkheads, rate limits, timeouts
and deadlines, composed into a ``Pipeline`` that runs on asyncio and trio (through anyio).
"""

from __future__ import annotations

from ._budget import RetryBudget
from ._bulkhead import Bulkhead, BulkheadSnapshot
from ._circuit import CircuitBreaker, CircuitSnapshot
from ._classify import (
    Classification,
    Classifier,
    ClassifierLike,
    Outcome,
    Verdict,
    on_exception,
    on_result,
)
from ._clock import Clock, SystemClock, TimerScope
from ._context import Context, remaining
from ._decorators import AsyncDecorator, bulkhead, circuit_breaker, rate_limit, retry, timeout
from ._events import (
    AttemptEnded,
    AttemptStarted,
    BudgetRefused,
    CallObserver,
    CallRejected,
    CircuitStateChanged,
    Event,
    Listener,
    RetryGaveUp,
    RetryScheduled,
    TimeoutFired,
    WaitEnded,
)
from ._exceptions import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigurationError,
    RateLimitedError,
    RejectedError,
    ResilientError,
    TimeoutExceeded,
)
from ._limits import AdaptiveLimit
from ._pipeline import Call, Pipeline, Policy
from ._presets import standard
from ._ratelimit import (
    BucketStore,
    MemoryBucketStore,
    RateLimiter,
    RateLimiterSnapshot,
    RateLimitStatus,
)
from ._retry import Retry
from ._throttle import Throttle
from ._timeout import Timeout
from .telemetry import Telemetry

__version__ = "0.1.0.dev0"

__all__ = [
    "AdaptiveLimit",
    "AsyncDecorator",
    "AttemptEnded",
    "AttemptStarted",
    "BucketStore",
    "BudgetRefused",
    "Bulkhead",
    "BulkheadFullError",
    "BulkheadSnapshot",
    "Call",
    "CallObserver",
    "CallRejected",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitSnapshot",
    "CircuitStateChanged",
    "Classification",
    "Classifier",
    "ClassifierLike",
    "Clock",
    "ConfigurationError",
    "Context",
    "Event",
    "Listener",
    "MemoryBucketStore",
    "Outcome",
    "Pipeline",
    "Policy",
    "RateLimitStatus",
    "RateLimitedError",
    "RateLimiter",
    "RateLimiterSnapshot",
    "RejectedError",
    "ResilientError",
    "Retry",
    "RetryBudget",
    "RetryGaveUp",
    "RetryScheduled",
    "SystemClock",
    "Telemetry",
    "Throttle",
    "Timeout",
    "TimeoutExceeded",
    "TimeoutFired",
    "TimerScope",
    "Verdict",
    "WaitEnded",
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

"""What a policy author needs: the policy protocol and the types around it.

An application composes policies with ``resilient.Pipeline``; a library or an application
that writes a policy of its own imports from here. A policy is any object with a ``name``
and ``async execute(call, ctx)``; two optional members make it a first-class citizen of a
pipeline, exactly as the built-in policies are (docs/pipeline.md, "Writing a policy"):

- ``compose(inner, after) -> Call``: build the chain step once, when the pipeline is built;
- ``deadline_aware = True``: every wait of the policy is bounded by ``ctx.deadline``, so an
  outer ``Timeout`` lets the inner one arm the only timer of an attempt.

``PolicyBase`` gives a policy the decorator form (``@MyPolicy(...)``) for free. The
snapshot and status types the policies return, the clock protocol and the bucket store
protocol (for a shared store such as Redis) live here too.
"""

from __future__ import annotations

from ._bucket import bucket_take, bucket_tokens
from ._bulkhead import BulkheadSnapshot
from ._circuit import CircuitSnapshot
from ._classify import ClassifierLike, Outcome
from ._clock import Clock, SystemClock, TimerScope
from ._context import Context
from ._decorators import AsyncDecorator
from ._events import CallObserver, Listener
from ._pipeline import Call, ComposablePolicy, Policy, compose, deadline_aware
from ._pipeline import PolicyDecorator as PolicyBase
from ._ratelimit import (
    BucketStore,
    MemoryBucketStore,
    RateLimiterSnapshot,
    RateLimitStatus,
    TakeResult,
)

__all__ = [
    "AsyncDecorator",
    "BucketStore",
    "BulkheadSnapshot",
    "Call",
    "CallObserver",
    "CircuitSnapshot",
    "ClassifierLike",
    "Clock",
    "ComposablePolicy",
    "Context",
    "Listener",
    "MemoryBucketStore",
    "Outcome",
    "Policy",
    "PolicyBase",
    "RateLimitStatus",
    "RateLimiterSnapshot",
    "SystemClock",
    "TakeResult",
    "TimerScope",
    "bucket_take",
    "bucket_tokens",
    "compose",
    "deadline_aware",
]

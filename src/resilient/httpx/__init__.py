"""httpx integration: a whole resilience pipeline as an ``httpx`` transport.

::

    import httpx
    import resilient
    from resilient.httpx import ResilientTransport

    pipeline = resilient.Pipeline(resilient.Timeout(10.0), ..., name="payments")
    client = httpx.AsyncClient(transport=ResilientTransport(pipeline))

Importing this module requires httpx (``pip install resilient-patterns[httpx]``);
``import resilient`` alone never imports it.
"""

from __future__ import annotations

from ._classify import (
    FAILURE_STATUSES,
    TRANSIENT_STATUSES,
    http_classifier,
    parse_retry_after,
    retry_after_seconds,
)
from ._errors import (
    BulkheadFullError,
    CircuitOpenError,
    RateLimitedError,
    RejectedError,
    TimeoutExceeded,
)
from ._preset import standard
from ._transport import (
    DEADLINE_HEADER,
    IDEMPOTENT_EXTENSION,
    IDEMPOTENT_METHODS,
    ROUTE_EXTENSION,
    ResilientTransport,
    UnsafeResendError,
)

__all__ = [
    "DEADLINE_HEADER",
    "FAILURE_STATUSES",
    "IDEMPOTENT_EXTENSION",
    "IDEMPOTENT_METHODS",
    "ROUTE_EXTENSION",
    "TRANSIENT_STATUSES",
    "BulkheadFullError",
    "CircuitOpenError",
    "RateLimitedError",
    "RejectedError",
    "ResilientTransport",
    "TimeoutExceeded",
    "UnsafeResendError",
    "http_classifier",
    "parse_retry_after",
    "retry_after_seconds",
    "standard",
]

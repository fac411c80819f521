"""Overload control: adaptive concurrency limits, queue disciplines, client-side throttling.

``resilient.AdaptiveLimit`` and ``resilient.Throttle`` are what an application usually writes;
this module holds the parts one tunes or replaces (docs/overload.md):

- limit algorithms for ``AdaptiveLimit(algorithm=...)``: ``Gradient2``, ``Vegas``, ``AIMD``,
  or any ``LimitAlgorithm``;
- queue disciplines for ``Bulkhead(queue=...)`` and the middleware: ``FIFO``, ``CoDel``,
  ``AdaptiveLIFO``, or any ``QueueDiscipline`` (its queue is a ``WaitQueue`` of ``Waiter``);
- ``is_overload``, the default test of an upstream's shed a ``Throttle`` counts;
  ``ThrottleSnapshot``.
"""

from __future__ import annotations

from ._limits import AIMD, AdaptiveLimit, Gradient2, LimitAlgorithm, Vegas
from ._queues import FIFO, AdaptiveLIFO, CoDel, QueueDiscipline, Waiter, WaitQueue
from ._throttle import Throttle, ThrottleSnapshot, is_overload

__all__ = [
    "AIMD",
    "FIFO",
    "AdaptiveLIFO",
    "AdaptiveLimit",
    "CoDel",
    "Gradient2",
    "LimitAlgorithm",
    "QueueDiscipline",
    "Throttle",
    "ThrottleSnapshot",
    "Vegas",
    "WaitQueue",
    "Waiter",
    "is_overload",
]

"""What the policies report: typed, frozen events, the listener hook and the call observer.

Pass listeners to a pipeline (``Pipeline(..., listeners=[print])``) or a policy; each receives
every event as it happens. Policies build an event only when someone listens, so an
unobserved pipeline pays nothing. A listener that raises is logged and ignored: observation
never changes an outcome. ``resilient.testing.EventRecorder`` collects them in tests.

Every event carries ``pipeline``, ``operation``, ``policy`` and ``at`` (the pipeline clock's
time); see each class for the rest.
"""

from __future__ import annotations

from ._events import (
    AttemptEnded,
    AttemptStarted,
    BudgetRefused,
    CallObserver,
    CallRejected,
    CircuitStateChanged,
    CircuitWaitEnded,
    CircuitWaitStarted,
    Event,
    Listener,
    RetryGaveUp,
    RetryScheduled,
    TimeoutFired,
    WaitEnded,
)
from ._fallback import FallbackUsed
from ._hedge import HedgeEnded, HedgeStarted

__all__ = [
    "AttemptEnded",
    "AttemptStarted",
    "BudgetRefused",
    "CallObserver",
    "CallRejected",
    "CircuitStateChanged",
    "CircuitWaitEnded",
    "CircuitWaitStarted",
    "Event",
    "FallbackUsed",
    "HedgeEnded",
    "HedgeStarted",
    "Listener",
    "RetryGaveUp",
    "RetryScheduled",
    "TimeoutFired",
    "WaitEnded",
]

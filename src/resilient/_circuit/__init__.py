"""``CircuitBreaker``, in its parts.

- ``_state``: the states' names, the per-state record (``State``, one per key), outcome codes,
  and ``CircuitSnapshot``;
- ``_window``: the two window kinds (``TimeWindow``, ``CountWindow``) that count outcomes;
- ``_breaker``: the policy: configuration, the call path (admit, probe, record each outcome
  in one place, ``_finish``), the state machine's transitions, keyed state and manual control.

The breaker keeps its state on the instance (shared by every task that calls through it) and
everything about one call in locals, so it needs no lock: the event loop is single-threaded
and no state is read and written across an ``await`` without accounting for what changed.
"""

from __future__ import annotations

from ._breaker import CircuitBreaker
from ._state import CircuitSnapshot

__all__ = ["CircuitBreaker", "CircuitSnapshot"]

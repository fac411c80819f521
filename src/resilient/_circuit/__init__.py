"""``CircuitBreaker``, in its parts.

- ``_state``: the states' names, the per-state record (``State``, one per key), outcome codes,
  and ``CircuitSnapshot``;
- ``_window``: the two window kinds (``TimeWindow``, ``CountWindow``) that count outcomes;
- ``_room``: the waiting room of an open state: callers that wait it out, the probe pacing
  and the paced release;
- ``_machine``: the state machine: admission, probe accounting, recording each outcome in one
  place (``Machine.finish``), the transitions and their events, on the breaker's one clock;
- ``_breaker``: the policy: configuration, the call path (``execute`` / ``compose``), keyed
  state, manual control, snapshots and ``reconfigure()``.

The breaker keeps its state on the instance (shared by every task that calls through it) and
everything about one call in locals, so it needs no lock: the event loop is single-threaded
and no state is read and written across an ``await`` without accounting for what changed.
"""

from __future__ import annotations

from ._breaker import CircuitBreaker
from ._state import CircuitSnapshot

__all__ = ["CircuitBreaker", "CircuitSnapshot"]

"""The timer service: one loop lookup, one way to run something at a deadline.

Everything in the library that waits for a deadline goes through here: ``Timeout`` (through
``SystemClock.timeout_at``), the bulkhead and rate-limiter queues, and integrations that keep
many short-lived deadlines (the ASGI middleware's requests). The asyncio and trio differences
stay inside:

- on asyncio, deadlines are on ``time.monotonic()`` and timers are coalesced in *lanes* (one
  loop timer per run of non-decreasing deadlines), so arming and cancelling cost a dict insert
  and delete, and a timer never fires before its deadline, on uvloop too;
- on trio, ``SystemClock`` reads ``trio.current_time()`` and its scopes are anyio cancel
  scopes: trio keeps its deadlines in one structure already (``call_at`` is asyncio only).

Names:

- ``current_loop()``: the running asyncio loop (cached per thread), or ``None`` on trio.
- ``call_at(deadline, callback) -> Timer``: run ``callback()`` at ``deadline``;
  ``Timer.cancel()`` stops it.
- ``SystemClock`` / ``Clock`` / ``TimerScope``: the clock a pipeline reads and waits with.
"""

from __future__ import annotations

from ._clock import Clock, SystemClock, Timer, TimerScope, call_at, current_loop

__all__ = ["Clock", "SystemClock", "Timer", "TimerScope", "call_at", "current_loop"]

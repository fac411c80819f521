"""``CircuitBreaker``: the policy: configuration, the call path, keyed state, manual control.

The state machine (admission, probes, recording outcomes, transitions, events) is
``_machine.Machine``; the windows are in ``_window``, the per-key record in ``_state``.

**The clock.** A breaker keeps the times of its states (open until, window buckets) on one
clock, bound once: by the first call that reaches it, to that call's pipeline clock
(``ctx.clock``); every later time is read from it, whichever pipeline the call comes
through, so share a breaker only between pipelines on the same clock. A breaker made by
``reconfigure()`` keeps its predecessor's clock. Manual control (``force_open()``,
``reset()``...) works before the first call too: with no clock bound, its events carry
``at=0.0`` and the keys it creates count as used at time 0.0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Literal, final

from resilient import _validate as check
from resilient._classify import DEFAULT_CLASSIFIER, ClassifierLike, Outcome, Verdict, as_classifier
from resilient._classify import Classification as _Classification
from resilient._context import Context
from resilient._events import Listener
from resilient._exceptions import ConfigurationError
from resilient._keyed import BoundedKeyMap
from resilient._pipeline import Call, Policy, PolicyDecorator

from ._machine import WAIT, Machine
from ._state import (
    CLOSED,
    DISABLED,
    FORCED_CLOSED,
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    SUCCESS,
    CircuitSnapshot,
    State,
    evictable,
    exact_ratio,
    exception_verdict,
)
from ._window import CountWindow, TimeWindow

__all__ = ["CircuitBreaker"]

MIN_BUCKET = 1e-6
"""The narrowest bucket of a time window, in seconds: finer is noise (and float trouble)."""


def _same_shape(a: TimeWindow | CountWindow, b: TimeWindow | CountWindow) -> bool:
    """Whether states of a breaker with window ``a`` can serve one with window ``b``."""
    if isinstance(a, TimeWindow) and isinstance(b, TimeWindow):
        return (a.buckets, a.width, a.tracks_slow) == (b.buckets, b.width, b.tracks_slow)
    return isinstance(a, CountWindow) and isinstance(b, CountWindow) and a.size == b.size


def open_schedule(open_for: float, growth: float, max_open_for: float | None) -> tuple[float, int]:
    """``(max_open_for, growth steps)``: how long the open time may grow, in how many steps.

    Growth stops once the cap is reached; counting steps avoids float overflow on the way.

    Raises:
        ConfigurationError: the cap cannot be reached in a finite number of steps (an
            ``open_for`` so small, or a cap so large, that their ratio overflows).
    """
    if max_open_for is None:
        cap = max(60.0, open_for)
    else:
        cap = check.number("CircuitBreaker.max_open_for", max_open_for, minimum=open_for)
    if growth == 1.0:
        return cap, 0
    ratio = cap / open_for
    steps = math.log(ratio) / math.log(growth)
    if not math.isfinite(steps):
        raise ConfigurationError(
            "CircuitBreaker.open_for" if max_open_for is None else "CircuitBreaker.max_open_for",
            open_for if max_open_for is None else max_open_for,
            f"open_for={open_for!r} and max_open_for={cap!r} are too far apart to grow between",
        )
    return cap, math.ceil(steps)


@final
class CircuitBreaker(PolicyDecorator):
    """Stop calling a dependency that fails too often, and probe it carefully before resuming.

    **Closed**, every call runs and its outcome is recorded in a sliding window: the last
    ``window`` seconds (default) or the last ``window`` calls (``window_type="count"``). When at
    least ``minimum_calls`` outcomes are in the window and the failure rate reaches
    ``failure_rate`` (or, with ``slow_call_duration`` set, the slow-call rate reaches
    ``slow_call_rate``), the breaker **opens**: the call that tripped it raises its own error,
    later calls fail fast with ``CircuitOpenError`` for ``open_for`` seconds (growing on repeated
    trips up to ``max_open_for``, with jitter). Then it is **half-open**: exactly
    ``half_open_calls`` probes run, every other call fails fast; the probes' outcomes close it
    again or reopen it. ``consecutive_failures`` failures in a row open it at once too,
    whatever the window says (an outage after a long healthy stretch).

    **Waiting out an open circuit.** A call that finds the breaker open (or half-open with
    every probe slot taken) may wait instead of failing: at most ``max_waiting`` callers per
    state (per key), each for at most ``max_wait`` seconds and never past its deadline. While
    anyone waits, the first waiter is sent as the half-open probe every ``probe_interval``
    seconds (``open_for`` then only governs callers that do not wait). When a probe closes
    the breaker the waiters are released in order, paced by a slow start (2 at once, then
    two more per success); when it fails, the waiters that cannot outlast the next probe fail
    with ``CircuitOpenError`` at once. ``max_waiting=0`` fails every call at once, as a
    classic breaker does. Forced open never waits.

    What counts: TRANSIENT and FAILURE verdicts are failures; SUCCESS is a success;
    CLIENT_ERROR and REJECTED are neutral (not recorded at all), and so is a cancellation (any
    ``BaseException`` that is not an ``Exception``). A ``TimeoutExceeded`` from an inner
    ``Timeout`` is TRANSIENT under the default classifier, so a failure.

    When a call's ``ctx.key`` is set (the httpx transport sets the host), the breaker keeps one
    independent state per key, at most ``max_keys`` of them (least recently used evicted, idle
    keys dropped after ``key_idle`` seconds). ``per_key=False`` shares one state for all keys.

    Args:
        failure_rate: failure rate in (0, 1] that opens the breaker (reached: ``>=``).
        window: the window's length: seconds for a time window (default 30.0), a number of
            calls for a count window (default 100).
        minimum_calls: outcomes the window must hold before the rates are judged (>= 1).
        open_for: seconds the breaker stays open after its first trip.
        half_open_calls: probes admitted while half-open; their outcomes decide.
        slow_call_duration: calls taking longer than this (seconds, on the pipeline's clock)
            are slow; ``None`` (default) does not track slowness.
        slow_call_rate: slow-call rate in (0, 1] that opens the breaker.
        window_type: ``"time"`` (default) or ``"count"``.
        buckets: resolution of a time window: outcomes leave the window between
            ``window * (1 - 1/buckets)`` and ``window`` seconds after they were recorded.
        open_for_growth: factor applied to the open time on each consecutive trip (a failed
            probe reopens the breaker); 1.0 keeps it constant.
        max_open_for: cap on the grown open time (default: 60 s, or ``open_for`` if larger).
        open_jitter: fraction in [0, 1) of the open time drawn at random (``ctx.random``) and
            taken off, so breakers that opened together do not probe in lockstep.
        max_half_open: seconds the breaker waits for its probes' outcomes; after that the next
            call reopens it (the outstanding probes become stragglers). ``None``: wait.
        classify: classifier for outcomes (default: the call's ``ctx.classifier``).
        per_key: keep one state per ``ctx.key`` (default) or one for all calls.
        max_keys: the most keys kept at once.
        key_idle: seconds after which an unused key may be dropped (``None``: only the
            ``max_keys`` bound applies).
        listeners: callables receiving every ``CircuitStateChanged``, ``CallRejected``,
            ``CircuitWaitStarted`` and ``CircuitWaitEnded`` of this breaker, including
            transitions made by manual control (which have no call).
        consecutive_failures: failures in a row (while closed) that open the breaker at once
            (>= 1); ``None`` disables this trip. Successes reset the run; neutral outcomes
            (client errors, rejections, cancellations) neither extend nor reset it.
        max_waiting: callers that may wait for an open breaker, per state (per key); a caller
            finding the room full fails at once. 0: nobody waits.
        max_wait: the longest a caller waits (seconds, also capped by its deadline). With a
            deadline it counts from when the deadline began (``deadline`` minus its
            timeout), so the attempts of one call share it.
        probe_interval: while callers wait, one of them probes at most this often (seconds).
        name: the policy's name in errors, events and telemetry.

    Raises:
        ConfigurationError: an option is invalid (names the option and the value).
    """

    __slots__ = (
        "_buckets",
        "_classifier",
        "_consecutive",
        "_default_kind",
        "_fp",
        "_fq",
        "_growth",
        "_growth_steps",
        "_half_open_calls",
        "_jitter",
        "_key_idle",
        "_keys",
        "_listeners",
        "_machine",
        "_max_half_open",
        "_max_keys",
        "_max_open_for",
        "_max_wait",
        "_max_waiting",
        "_minimum_calls",
        "_open_for",
        "_per_key",
        "_probe_interval",
        "_ring",
        "_slow_after",
        "_slow_rate",
        "_sp",
        "_sq",
        "_state",
        "_timed",
        "_width",
        "_window",
        "name",
    )

    deadline_aware: ClassVar[bool] = True  # its waits end by the call's deadline

    def __init__(
        self,
        *,
        failure_rate: float = 0.5,
        window: float | None = None,
        minimum_calls: int = 20,
        open_for: float = 5.0,
        half_open_calls: int = 1,
        slow_call_duration: float | None = None,
        slow_call_rate: float = 1.0,
        window_type: Literal["time", "count"] = "time",
        buckets: int = 10,
        open_for_growth: float = 2.0,
        max_open_for: float | None = None,
        open_jitter: float = 0.1,
        max_half_open: float | None = None,
        classify: ClassifierLike
        | Callable[[Outcome], _Classification | Verdict | None]
        | Iterable[Any]
        | None = None,
        per_key: bool = True,
        max_keys: int = 1000,
        key_idle: float | None = 600.0,
        listeners: Iterable[Listener] = (),
        consecutive_failures: int | None = 10,
        max_waiting: int = 100,
        max_wait: float = 1.0,
        probe_interval: float = 0.2,
        name: str = "circuit_breaker",
    ) -> None:
        self.name = check.name("CircuitBreaker.name", name)
        rate = check.fraction("CircuitBreaker.failure_rate", failure_rate)
        self._fp, self._fq = exact_ratio(rate)
        self._minimum_calls = check.integer("CircuitBreaker.minimum_calls", minimum_calls)
        kind = check.choice("CircuitBreaker.window_type", window_type, ("time", "count"))
        self._timed = kind == "time"
        self._window: float
        if self._timed:
            self._window = check.positive(
                "CircuitBreaker.window", 30.0 if window is None else window
            )
            self._buckets = check.integer("CircuitBreaker.buckets", buckets, maximum=1000)
            self._width = self._window / self._buckets
            if self._width < MIN_BUCKET:
                raise ConfigurationError(
                    "CircuitBreaker.window",
                    window,
                    f"too short for {self._buckets} buckets (each under a microsecond)",
                )
        else:
            size = check.integer(
                "CircuitBreaker.window", 100 if window is None else window, maximum=1_000_000
            )
            if self._minimum_calls > size:
                raise ConfigurationError(
                    "CircuitBreaker.minimum_calls",
                    minimum_calls,
                    f"exceeds the count window ({size} calls): the breaker could never open",
                )
            self._window = size
            self._buckets = check.integer("CircuitBreaker.buckets", buckets, maximum=1000)
            self._width = math.inf
        self._open_for = check.positive("CircuitBreaker.open_for", open_for)
        self._half_open_calls = check.integer("CircuitBreaker.half_open_calls", half_open_calls)
        self._slow_after = check.optional(
            check.positive, "CircuitBreaker.slow_call_duration", slow_call_duration
        )
        self._slow_rate = check.fraction("CircuitBreaker.slow_call_rate", slow_call_rate)
        self._sp, self._sq = exact_ratio(self._slow_rate)
        self._growth = check.number("CircuitBreaker.open_for_growth", open_for_growth, minimum=1.0)
        self._max_open_for, self._growth_steps = open_schedule(
            self._open_for, self._growth, max_open_for
        )
        self._jitter = check.number("CircuitBreaker.open_jitter", open_jitter, maximum=1.0)
        if self._jitter >= 1.0:
            raise ConfigurationError("CircuitBreaker.open_jitter", open_jitter, "must be < 1")
        self._max_half_open = check.optional(
            check.positive, "CircuitBreaker.max_half_open", max_half_open
        )
        self._classifier = as_classifier("CircuitBreaker.classify", classify)
        if not isinstance(per_key, bool):
            raise ConfigurationError("CircuitBreaker.per_key", per_key, "expected True or False")
        self._per_key = per_key
        self._max_keys = check.integer("CircuitBreaker.max_keys", max_keys)
        self._key_idle = check.optional(check.positive, "CircuitBreaker.key_idle", key_idle)
        listeners = tuple(listeners)
        for listener in listeners:
            check.callable_("CircuitBreaker.listeners", listener)
        self._listeners = listeners
        self._consecutive = check.optional(
            check.integer, "CircuitBreaker.consecutive_failures", consecutive_failures
        )
        self._max_waiting = check.integer(
            "CircuitBreaker.max_waiting", max_waiting, minimum=0, maximum=1_000_000
        )
        self._max_wait = check.non_negative("CircuitBreaker.max_wait", max_wait, allow_inf=True)
        self._probe_interval = check.positive("CircuitBreaker.probe_interval", probe_interval)
        self._ring: TimeWindow | CountWindow = (
            TimeWindow(self._buckets, self._width, tracks_slow=self._slow_after is not None)
            if self._timed
            else CountWindow(int(self._window))
        )
        self._keys: BoundedKeyMap[State] | None = None
        self._default_kind = CLOSED
        self._machine = Machine(
            self.name,
            self._ring,
            timed=self._timed,
            rates=(self._fp, self._fq, self._sp, self._sq),
            minimum_calls=self._minimum_calls,
            half_open_calls=self._half_open_calls,
            slow_after=self._slow_after,
            open_times=(
                self._open_for,
                self._growth,
                self._growth_steps,
                self._max_open_for,
                self._jitter,
            ),
            max_half_open=self._max_half_open,
            listeners=self._listeners,
            consecutive=self._consecutive,
            # max_wait=0: nobody could wait, so nobody enters the room
            waiting=(
                self._max_waiting if self._max_wait > 0.0 else 0,
                self._max_wait,
                self._probe_interval,
            ),
        )
        self._state = self._new_state(None)

    # -- options (read-only) ---------------------------------------------------------------

    @property
    def failure_rate(self) -> float:
        """The failure rate that opens the breaker."""
        return self._fp / self._fq

    @property
    def window(self) -> float:
        """The window: seconds (time window) or calls (count window)."""
        return self._window

    @property
    def window_type(self) -> str:
        """``"time"`` or ``"count"``."""
        return "time" if self._timed else "count"

    @property
    def minimum_calls(self) -> int:
        """Outcomes the window must hold before the rates are judged."""
        return self._minimum_calls

    @property
    def open_for(self) -> float:
        """Seconds open after a first trip (before growth and jitter)."""
        return self._open_for

    @property
    def max_open_for(self) -> float:
        """Cap on the grown open time."""
        return self._max_open_for

    @property
    def half_open_calls(self) -> int:
        """Probes admitted while half-open."""
        return self._half_open_calls

    @property
    def slow_call_duration(self) -> float | None:
        """Duration above which a call is slow (``None``: slowness not tracked)."""
        return self._slow_after

    @property
    def slow_call_rate(self) -> float:
        """The slow-call rate that opens the breaker."""
        return self._slow_rate

    @property
    def consecutive_failures(self) -> int | None:
        """Failures in a row that open the breaker (``None``: this trip is off)."""
        return self._consecutive

    @property
    def max_waiting(self) -> int:
        """Callers that may wait for an open breaker, per state."""
        return self._max_waiting

    @property
    def max_wait(self) -> float:
        """The longest a caller waits for an open breaker, in seconds."""
        return self._max_wait

    @property
    def probe_interval(self) -> float:
        """While callers wait, the least time between two probes, in seconds."""
        return self._probe_interval

    @property
    def per_key(self) -> bool:
        """Whether state is kept per ``ctx.key``."""
        return self._per_key

    @property
    def max_keys(self) -> int:
        """The most keys kept at once."""
        return self._max_keys

    # -- the call path ----------------------------------------------------------------------

    async def execute(self, call: Call, ctx: Context, /) -> Any:
        """Run ``call`` if the breaker admits it and record its outcome.

        Raises:
            CircuitOpenError: the breaker is open, forced open, or half-open with every probe
                slot taken (after waiting, when the call may wait).
            Exception: whatever ``call`` raised (recorded first), including the error of the
                call that trips the breaker.

        A pipeline composes the breaker's step once (``compose``); calling ``execute``
        directly works the same but builds that step on every call.
        """
        return await self._runner(call)(ctx)

    def compose(self, inner: Call, after: tuple[Policy, ...], /) -> Call:
        """The chain step around ``inner``, built once per pipeline."""
        return self._runner(inner)

    def _runner(self, inner: Call) -> Call:
        """The chain step running ``inner`` through this breaker.

        One path for every state: the machine's ``admit`` decides (and may refuse) outside
        the plain closed state, and its ``finish`` records every outcome.
        """
        machine = self._machine
        default = self._state
        per_key = self._per_key
        keyed = self._keyed
        own = self._classifier
        admit = machine.admit
        probe = machine.probe
        waited = machine.waited
        finish = machine.finish
        closed = CLOSED
        success = SUCCESS
        default_classifier = DEFAULT_CLASSIFIER
        tracked = self._slow_after is not None  # slowness needs each call's start time

        async def run(ctx: Context) -> Any:
            if machine.clock is None:  # the first call binds the breaker to its clock
                machine.bind(ctx.clock)
            key = ctx.key
            st = default if key is None or not per_key else keyed(key)
            kind = st.kind
            start = 0.0
            if kind is not closed or tracked:
                kind, start = admit(st, ctx)
                if kind is DISABLED:
                    return await inner(ctx)
                if kind is HALF_OPEN:
                    return await probe(inner, ctx, st, start, own or ctx.classifier)
                if kind is WAIT:
                    return await waited(inner, ctx, st, start, own or ctx.classifier)
            gen = st.gen
            try:
                result = await inner(ctx)
            except Exception as exc:
                verdict = exception_verdict(own or ctx.classifier, exc, ctx)
                finish(st, gen, kind, verdict, start, ctx)
                raise
            classifier = own or ctx.classifier
            # The default classifier has no result rules: every returned value is a success.
            if classifier is default_classifier:
                finish(st, gen, kind, success, start, ctx)
            else:
                finish(st, gen, kind, classifier.classify_result(result).verdict, start, ctx)
            return result

        return run

    # -- keys -------------------------------------------------------------------------------

    def _new_state(self, key: str | None) -> State:
        return State(key, self._default_kind, self._ring.new_ring())

    def _key_map(self) -> BoundedKeyMap[State]:
        keys = self._keys
        if keys is None:
            keys = self._keys = BoundedKeyMap(
                self._new_state,
                max_keys=self._max_keys,
                idle_ttl=self._key_idle,
                evictable=evictable,
                parameter="CircuitBreaker.max_keys",
            )
        return keys

    def _keyed(self, key: str) -> State:
        return self._key_map().get(key, self._machine.now())

    def _states(self, key: str | None) -> list[State]:
        if key is None:
            keys = self._keys
            return [self._state] + ([st for _, st in keys.items()] if keys is not None else [])
        if not self._per_key:
            raise ValueError(f"CircuitBreaker({self.name!r}) has per_key=False: no key {key!r}")
        return [self._key_map().get(key, self._machine.now())]

    # -- manual control and inspection ------------------------------------------------------

    def _manual(self, kind: str, key: str | None) -> None:
        if key is None:
            self._default_kind = kind
        now = self._machine.now()
        for st in self._states(key):
            self._machine.move(st, kind, None, now)

    def force_open(self, key: str | None = None) -> None:
        """Reject every call until ``reset()``, ``force_closed()`` or ``disable()``.

        Args:
            key: one key of a keyed breaker; ``None`` applies to every key, existing or new.

        Raises:
            ValueError: a key given to a breaker with ``per_key=False``.
        """
        self._manual(FORCED_OPEN, key)

    def force_closed(self, key: str | None = None) -> None:
        """Admit every call and keep recording the window, but never open.

        Args:
            key: one key of a keyed breaker; ``None`` applies to every key, existing or new.

        Raises:
            ValueError: a key given to a breaker with ``per_key=False``.
        """
        self._manual(FORCED_CLOSED, key)

    def disable(self, key: str | None = None) -> None:
        """Admit every call and record nothing (the cheapest state) until ``reset()``.

        Args:
            key: one key of a keyed breaker; ``None`` applies to every key, existing or new.

        Raises:
            ValueError: a key given to a breaker with ``per_key=False``.
        """
        self._manual(DISABLED, key)

    def reset(self, key: str | None = None) -> None:
        """Return to closed with an empty window and no trips (also ends manual states).

        Args:
            key: one key of a keyed breaker; ``None`` resets every key and the default.

        Raises:
            ValueError: a key given to a breaker with ``per_key=False``.
        """
        self._manual(CLOSED, key)

    def snapshot(self, key: str | None = None, *, now: float | None = None) -> CircuitSnapshot:
        """The state and window statistics of the breaker, or of one key.

        Args:
            key: a key of a keyed breaker (a key never seen reads as a fresh closed state and
                is not created); ``None`` for the unkeyed state.
            now: the pipeline clock's current time, to leave out outcomes that have expired
                from a time window since the last call (the window moves only on calls).

        Raises:
            ValueError: a key given to a breaker with ``per_key=False``.
        """
        if key is None:
            st = self._state
        elif not self._per_key:
            raise ValueError(f"CircuitBreaker({self.name!r}) has per_key=False: no key {key!r}")
        else:
            found = self._keys.peek(key) if self._keys is not None else None
            st = found if found is not None else State(key, self._default_kind, bytearray())
        return self._snapshot(st, now)

    def snapshots(self, *, now: float | None = None) -> list[CircuitSnapshot]:
        """Snapshots of the unkeyed state and of every key currently kept."""
        return [self._snapshot(st, now) for st in self._states(None)]

    def _snapshot(self, st: State, now: float | None) -> CircuitSnapshot:
        calls, failures, slow = self._ring.totals(st, now)
        return CircuitSnapshot(
            name=self.name,
            key=st.key,
            state=st.kind,
            calls=calls,
            failures=failures,
            slow_calls=slow,
            failure_rate=failures / calls if calls else 0.0,
            slow_call_rate=slow / calls if calls else 0.0,
            open_until=st.until if st.kind is OPEN else None,
            trips=st.trips,
            probes=st.probes,
            waiting=len(st.room.waiters) if st.room is not None else 0,
        )

    # -- reconfiguration (used by resilient.config reloads) ----------------------------------

    def reconfigure(self, **options: Any) -> CircuitBreaker:
        """A breaker with ``options`` changed that takes over this breaker's state.

        ``options`` are constructor keywords; the ones not given keep this breaker's values.
        Every state (the unkeyed one and each key's) carries over: its kind (closed, open
        until the same time, half-open, forced, disabled) and its trips; and, when the
        window keeps its shape (``window_type``, ``window``, ``buckets``, and whether slow
        calls are tracked), the outcomes in it. The two breakers then share those states, so
        calls this breaker already admitted still count when they end. When the shape
        changes, each window starts empty and outstanding probes become stragglers. New
        thresholds apply from the next outcome. Give new calls to the returned breaker; this
        one keeps serving only the calls it admitted.

        Raises:
            ConfigurationError: an unknown or invalid option (this breaker is unchanged).
        """
        current = self._options()
        for option, value in options.items():
            if option not in current:
                raise ConfigurationError(
                    f"CircuitBreaker.reconfigure.{option}", value, "not an option"
                )
        new = CircuitBreaker(**{**current, **options})
        new._default_kind = self._default_kind
        if self._machine.clock is not None:  # the states' times are on that clock
            new._machine.bind(self._machine.clock)
        same = _same_shape(self._ring, new._ring)
        new._state = self._state if same else new._carried(self._state)
        if self._keys is not None and new._per_key:
            pending = {key: st if same else new._carried(st) for key, st in self._keys.items()}

            def adopt(key: str) -> State:
                found = pending.pop(key, None)
                return new._new_state(key) if found is None else found

            keys = new._keys = BoundedKeyMap(
                adopt,
                max_keys=new._max_keys,
                idle_ttl=new._key_idle,
                evictable=evictable,
                parameter="CircuitBreaker.max_keys",
            )
            now = new._machine.now()
            for key in list(pending):  # least recently used first, as they were
                keys.get(key, now)
        return new

    def _options(self) -> dict[str, Any]:
        return {
            "failure_rate": self._fp / self._fq,
            "window": self._window,
            "minimum_calls": self._minimum_calls,
            "open_for": self._open_for,
            "half_open_calls": self._half_open_calls,
            "slow_call_duration": self._slow_after,
            "slow_call_rate": self._slow_rate,
            "window_type": "time" if self._timed else "count",
            "buckets": self._buckets,
            "open_for_growth": self._growth,
            "max_open_for": self._max_open_for,
            "open_jitter": self._jitter,
            "max_half_open": self._max_half_open,
            "classify": self._classifier,
            "per_key": self._per_key,
            "max_keys": self._max_keys,
            "key_idle": self._key_idle,
            "listeners": self._listeners,
            "consecutive_failures": self._consecutive,
            "max_waiting": self._max_waiting,
            "max_wait": self._max_wait,
            "probe_interval": self._probe_interval,
            "name": self.name,
        }

    def _carried(self, old: State) -> State:
        # The state's kind, open time and trips in a window of this breaker's shape; a new
        # generation, so calls admitted under the old one are stragglers.
        st = State(old.key, old.kind, self._ring.new_ring())
        st.gen = old.gen + 1
        st.trips = old.trips
        st.until = old.until
        st.probe_at = old.probe_at
        return st

    def __repr__(self) -> str:
        window = f"{self._window:g}s" if self._timed else f"{self._window} calls"
        return (
            f"CircuitBreaker(failure_rate={self.failure_rate:g}, window={window}, "
            f"minimum_calls={self._minimum_calls}, open_for={self._open_for:g}, "
            f"half_open_calls={self._half_open_calls}, name={self.name!r})"
        )

"""``Hedge``: when an attempt is slow to answer, start another beside it; the first answer wins."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import inspect
import logging
import math
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, final

import anyio

from . import _validate as check
from ._budget import RetryBudget
from ._classify import (
    DEFAULT_CLASSIFIER,
    Classification,
    ClassifierLike,
    Outcome,
    Verdict,
    as_classifier,
    default_exception_verdict,
)
from ._clock import SystemClock, Timer, call_at, current_loop
from ._context import Context
from ._events import (
    Event,
    report_attempt_ended,
    report_attempt_started,
    report_budget_refused,
)
from ._exceptions import ConfigurationError
from ._pipeline import Call, Policy, PolicyDecorator

__all__ = ["Hedge", "HedgeEnded", "HedgeStarted"]

logger = logging.getLogger("resilient")

_SUCCESS: Final = Verdict.SUCCESS
_CLIENT_ERROR: Final = Verdict.CLIENT_ERROR
_TRANSIENT: Final = Verdict.TRANSIENT
_REJECTED: Final = Verdict.REJECTED
_INF: Final = math.inf
_NOT_FAILED: Final = frozenset({_SUCCESS, _CLIENT_ERROR})
_ADAPTIVE: Final = "adaptive"
_REFRESH: Final = 16


@dataclass(slots=True, kw_only=True)
class HedgeStarted(Event):
    """A hedge started: no attempt of the call had answered ``delay`` seconds after the last
    one started.

    ``hedge`` numbers the hedges of one call (1 for the first); ``attempt`` is the attempt's
    number within the call's hedged round (2 for the first hedge; the original is 1).
    """

    hedge: int
    attempt: int
    delay: float


@dataclass(slots=True, kw_only=True)
class HedgeEnded(Event):
    """A call that sent at least one hedge ended.

    ``winner`` is ``"original"`` or ``"hedge"`` (whose outcome the call returns), or ``"none"``
    when every attempt failed; ``attempts`` counts the attempts started (the original
    included) and ``cancelled`` the losers that were still running and were cancelled.
    """

    winner: str
    attempts: int
    cancelled: int
    verdict: Verdict


@final
class LatencyHistogram:
    """Recent attempt latencies in a fixed, log-spaced histogram, for an adaptive delay.

    Memory is bounded: ``buckets`` integer counters between ``floor`` and ``cap`` (each bucket
    ``(cap / floor) ** (1 / (buckets - 1))`` times wider than the previous; with the defaults
    of ``Hedge``, 64 buckets from 5 ms to 1 s, about 9 % apart). Latencies at or below
    ``floor`` land in the first bucket, latencies above ``cap`` in the last. Every ``decay``
    recordings all counts are halved, so the histogram follows the last one or two thousand
    attempts and forgets older ones. The percentile is recomputed every 16 recordings.

    Args:
        percentile: the quantile ``delay()`` reports, in (0, 1).
        floor: the smallest delay reported, > 0.
        cap: the largest delay reported, > ``floor``; also what ``delay()`` reports before
            ``min_samples`` latencies were recorded.
        min_samples: recordings needed before the quantile is trusted, >= 1.
        buckets: number of counters, >= 2.
        decay: recordings between two halvings of every count, >= 2.

    Raises:
        ConfigurationError: an option out of range.
    """

    __slots__ = (
        "_cached",
        "_cap",
        "_counts",
        "_decay",
        "_edges",
        "_floor",
        "_last",
        "_min_samples",
        "_percentile",
        "_refresh",
        "_since_decay",
        "_stale",
        "_total",
    )

    def __init__(
        self,
        *,
        percentile: float = 0.95,
        floor: float = 0.005,
        cap: float = 1.0,
        min_samples: int = 20,
        buckets: int = 64,
        decay: int = 1024,
    ) -> None:
        self._percentile = check.number("Hedge.percentile", percentile, minimum=0.0, maximum=1.0)
        if not 0.0 < self._percentile < 1.0:
            raise ConfigurationError("Hedge.percentile", percentile, "must be in (0, 1)")
        self._floor = check.positive("Hedge.min_delay", floor)
        self._cap = check.positive("Hedge.max_delay", cap)
        if self._cap <= self._floor:
            raise ConfigurationError(
                "Hedge.max_delay", cap, f"must be > min_delay ({self._floor:g})"
            )
        self._min_samples = check.integer("Hedge.min_samples", min_samples, minimum=1)
        count = check.integer("LatencyHistogram.buckets", buckets, minimum=2)
        self._decay = check.integer("LatencyHistogram.decay", decay, minimum=2)
        ratio = (self._cap / self._floor) ** (1.0 / (count - 1))
        # The last edge is the cap itself, whatever the rounding of the powers.
        self._edges = (*(self._floor * ratio**i for i in range(count - 1)), self._cap)
        self._counts = [0] * count
        self._last = count - 1
        self._total = 0
        self._since_decay = 0
        self._cached = self._cap
        self._stale = False
        self._refresh = _REFRESH

    @property
    def samples(self) -> int:
        """Recordings currently counted (after decay)."""
        return self._total

    def record(self, seconds: float) -> None:
        """Count one attempt that took ``seconds`` (or at least that long, if cut short)."""
        # The bucket whose upper edge is the first at or above `seconds` (the last one for
        # anything above the cap).
        index = bisect_left(self._edges, seconds)
        index = min(self._last, index)
        self._counts[index] += 1
        self._total += 1
        self._refresh -= 1
        if self._refresh <= 0 or self._total <= self._min_samples:
            # The percentile is a walk over every bucket: redone every REFRESH recordings
            # (and at each one while warming up), not on every call.
            self._stale = True
            self._refresh = _REFRESH
        self._since_decay += 1
        if self._since_decay >= self._decay:
            self._since_decay = 0
            counts = self._counts
            for i, value in enumerate(counts):
                counts[i] = value >> 1
            self._total = sum(counts)

    def delay(self) -> float:
        """The ``percentile`` of recent latencies (a bucket's upper edge), within the bounds."""
        if not self._stale:
            return self._cached
        self._stale = False
        total = self._total
        if total < self._min_samples:
            self._cached = self._cap
            return self._cap
        target = self._percentile * total
        seen = 0
        edges = self._edges
        for index, count in enumerate(self._counts):
            seen += count
            if seen >= target:
                self._cached = edges[index]
                return self._cached
        self._cached = self._cap  # pragma: no cover - the counts always reach the total
        return self._cap


def race_verdict(
    hedge: Hedge, ctx: Context, error: Exception | None, result: object = None
) -> Verdict:
    """The verdict of an outcome under the hedge's classifier (else the call's)."""
    classifier = hedge._classifier or ctx.classifier
    if error is None:
        if classifier is DEFAULT_CLASSIFIER:
            return _SUCCESS  # it has no result rules: every returned value is a success
        return classifier.classify_result(result).verdict
    if classifier is DEFAULT_CLASSIFIER:
        return default_exception_verdict(error).verdict
    return classifier.classify_exception(error).verdict


class _Default:
    __slots__ = ()

    def __repr__(self) -> str:
        return "RetryBudget()"


_DEFAULT_BUDGET: Final = _Default()


@final
class _Round:
    """The attempts of one hedged call: who is running, who won, what failed.

    Two ways to run a round share this state. The general one (any clock, asyncio or trio)
    runs every attempt in a task group and waits on ``done``. The inline one (asyncio with the
    system clock, the common case) runs the original in the caller's own task; the call waits
    for its delay in the Hedge's queue (``_Queue``), and a round is built, and hedges started
    as tasks, only if the delay passes. ``timer`` then arms the next hedge, if any.
    """

    __slots__ = (
        "attempt_number",
        "begun",
        "call",
        "cancelled",
        "cancelling",
        "classify_exception",
        "classify_result",
        "context",
        "ctx",
        "deadline",
        "deadline_source",
        "deadline_timeout",
        "delay",
        "done",
        "error",
        "failed",
        "finished",
        "hedge",
        "hedges",
        "host",
        "host_cancelled",
        "kind",
        "launched",
        "original_running",
        "pending",
        "result",
        "started",
        "tasks",
        "timer",
        "verdict",
        "waiter",
    )

    def __init__(self, hedge: Hedge, call: Call, ctx: Context, delay: float) -> None:
        self.hedge = hedge
        self.call = call
        self.ctx = ctx
        self.delay = delay
        # The original runs on `ctx` itself and inner policies change it while it runs (an
        # attempt Timeout tightens the deadline): hedges start from the call's state as it is
        # now, not as the original's attempt left it.
        self.deadline = ctx.deadline
        self.deadline_source = ctx.deadline_source
        self.deadline_timeout = ctx.deadline_timeout
        self.attempt_number = ctx.attempt
        self.begun = 0.0  # when the original started
        self.launched = False  # the delay passed (prepare() ran)
        self.original_running = True  # inline: the original runs in the caller's task
        self.host_cancelled = False  # inline: a hedge won and cut the original
        self.timer: Timer | None = None
        self.done: anyio.Event | None = None  # the general way's signal

    def prepare(self) -> None:
        """The rest of the state, once the round may have more than one attempt."""
        self.launched = True
        classifier = self.hedge._classifier
        if classifier is None:
            classifier = self.ctx.classifier
        self.classify_result = classifier.classify_result
        self.classify_exception = (
            default_exception_verdict
            if classifier is DEFAULT_CLASSIFIER
            else classifier.classify_exception
        )
        self.started = 1  # attempts started, the original included
        self.pending = 1  # attempts still running
        self.hedges = 0
        self.cancelled = 0  # losers cancelled while running
        self.finished = False  # an attempt's outcome ends the call
        self.failed = False  # no attempt is running and every one failed
        self.result: Any = None
        self.error: Exception | None = None
        self.verdict: Verdict = _TRANSIENT
        self.kind = "none"
        self.waiter: asyncio.Future[None] | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.cancelling = 0

    # -- shared ------------------------------------------------------------------------------

    def may_hedge(self, now: float) -> bool:
        """Whether another hedge may start at ``now`` (count, deadline, budget)."""
        hedge = self.hedge
        if self.hedges >= hedge._max_hedges or now >= self.deadline:
            return False
        budget = hedge._budget
        if budget is not None and not budget.try_withdraw(now):
            ctx = self.ctx
            if ctx.listening:
                report_budget_refused(ctx, hedge.name, now, self.started)
            return False
        return True

    def twin(self, now: float) -> Context:
        """Count a new hedge (its event included) and the Context it runs on."""
        ctx = self.ctx
        if ctx.listening and not self.hedges:
            # Attempts are reported for hedged calls only: the original's start, now.
            report_attempt_started(ctx, self.hedge.name, self.begun, 1, ctx.attempt_kind)
        self.hedges += 1
        self.started += 1
        self.pending += 1
        if ctx.listening:
            ctx.emit(
                HedgeStarted(
                    pipeline=ctx.pipeline,
                    operation=ctx.operation,
                    policy=self.hedge.name,
                    at=now,
                    hedge=self.hedges,
                    attempt=self.started,
                    delay=self.delay,
                )
            )
        twin = copy.copy(ctx)
        twin.attempt_kind = "hedge"
        twin.attempt = self.attempt_number
        twin.deadline = self.deadline
        twin.deadline_source = self.deadline_source
        twin.deadline_timeout = self.deadline_timeout
        return twin

    def begin(self, ctx: Context, number: int) -> tuple[str, float]:
        """An attempt starts: its kind and start time (and its event)."""
        kind = ctx.attempt_kind if number == 1 else "hedge"
        started = ctx.clock.now()
        if ctx.listening and number > 1:  # the original's start is reported by twin()
            report_attempt_started(ctx, self.hedge.name, started, number, kind)
        return kind, started

    def cut(self, ctx: Context, started: float) -> None:
        """An attempt was cancelled (a loser, or the whole call)."""
        self.pending -= 1
        if self.finished:
            self.cancelled += 1
        latency = self.hedge._latency
        if latency is not None:
            # It took at least this long: a cut-short slow attempt still shapes the tail.
            latency.record(ctx.clock.now() - started)

    async def attempt(self, ctx: Context, number: int) -> None:
        """Run one attempt in its own task and settle its outcome into the round."""
        kind, started = self.begin(ctx, number)
        result: Any = None
        error: Exception | None = None
        try:
            result = await self.call(ctx)
        except Exception as exc:
            error = exc
        except BaseException:
            self.cut(ctx, started)
            raise
        try:
            await self.settle(ctx, (number, kind, started), result, error)
        finally:
            error = None  # no reference cycle through this frame's traceback

    def classify(self, result: Any, error: Exception | None) -> tuple[Any, Any, Verdict]:
        """(result, error, verdict) of an outcome; a broken classifier's error is the
        outcome then (raised as is, never wrapped in an exception group)."""
        try:
            if error is None:
                return result, None, self.classify_result(result).verdict
            return None, error, self.classify_exception(error).verdict
        except Exception as exc:
            return None, exc, Verdict.FAILURE

    async def settle(
        self,
        ctx: Context,
        attempt: tuple[int, str, float],
        result: Any,
        error: Exception | None,
    ) -> None:
        """Classify an attempt's outcome (number, kind, start); decide the call if it is
        acceptable."""
        number, kind, started = attempt
        hedge = self.hedge
        self.pending -= 1
        result, error, verdict = self.classify(result, error)
        now = ctx.clock.now()
        latency = hedge._latency
        if latency is not None and verdict is not _REJECTED:
            latency.record(now - started)
        if ctx.listening and self.hedges:
            report_attempt_ended(ctx, hedge.name, now, number, verdict, started, error, kind)
        if self.finished:
            # Another attempt already won (both ended in the same instant).
            if error is None:
                await hedge._discard(result)
        elif verdict is _TRANSIENT or verdict is _REJECTED:
            await self.failure(kind, result, error, verdict)
        else:
            # SUCCESS, CLIENT_ERROR (the caller's fault: another attempt would not help) or
            # FAILURE (retrying cannot fix it): this outcome is the call's.
            previous = self.result if self.error is None else None
            self.finished = True
            self.result, self.error, self.verdict, self.kind = result, error, verdict, kind
            if previous is not None:
                await hedge._discard(previous)
            self.decided()

    async def failure(
        self, kind: str, result: Any, error: Exception | None, verdict: Verdict
    ) -> None:
        """One attempt failed: the others go on. The round keeps the most useful failure to
        report: a dependency's own answer over a refusal of ours."""
        hedge = self.hedge
        if self.verdict is _REJECTED or verdict is _TRANSIENT or self.kind == "none":
            previous = self.result if self.error is None else None
            self.result, self.error, self.verdict, self.kind = result, error, verdict, kind
            if previous is not None:
                await hedge._discard(previous)
        elif error is None:
            await hedge._discard(result)
        if self.pending == 0:
            self.failed = True
            self.decided()

    def decided(self) -> None:
        """The call's outcome is known: wake whoever waits for it."""
        if self.done is not None:
            self.done.set()
            return
        if self.original_running:
            # Inline: the original runs in the caller's task; it lost, cut it there.
            host = self.host
            assert host is not None
            self.host_cancelled = True
            self.cancelling = host.cancelling()
            host.cancel()
        elif self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def outcome(self) -> Any:
        """Report the end of the round (budget, event) and return or raise its outcome."""
        hedge = self.hedge
        ctx = self.ctx
        budget = hedge._budget
        verdict = self.verdict
        if budget is not None and (verdict is _SUCCESS or verdict is _CLIENT_ERROR):
            if self.kind == "hedge":
                budget.refund(ctx.clock.now())  # a winning hedge proved itself: its token back
            if hedge._earns is not None:
                hedge._earns.earn(ctx.clock.now)
        if self.hedges and ctx.listening:
            winner = "none"
            if self.finished:
                winner = "hedge" if self.kind == "hedge" else "original"
            ctx.emit(
                HedgeEnded(
                    pipeline=ctx.pipeline,
                    operation=ctx.operation,
                    policy=hedge.name,
                    at=ctx.clock.now(),
                    winner=winner,
                    attempts=self.started,
                    cancelled=self.cancelled,
                    verdict=verdict,
                )
            )
        error = self.error
        if error is not None:
            self.error = None
            try:
                raise error
            finally:
                error = None
        result = self.result
        self.result = None
        return result

    # -- the inline way (asyncio, system clock) ---------------------------------------------

    host: asyncio.Task[Any]
    context: contextvars.Context

    def launch(self) -> None:
        """Timer: the delay passed without an answer; start a hedge if allowed."""
        self.timer = None
        if not self.launched:
            self.prepare()
        elif self.finished or self.failed:
            return
        now = self.ctx.clock.now()
        if not self.may_hedge(now):
            return
        twin = self.twin(now)
        task = self.host.get_loop().create_task(
            self.attempt(twin, self.started), context=self.context
        )
        self.tasks.append(task)
        if self.hedges < self.hedge._max_hedges:
            self.timer = call_at(now + self.delay, self.launch)

    async def interrupted(self, ctx: Context, started: float) -> bool:
        """The original (in the caller's task) was cancelled after the delay passed: whether
        by a winning hedge (else by the caller). Every attempt has ended when this returns."""
        ours = self.our_cut(ctx, started)
        await self.wind_up()
        return ours

    def our_cut(self, ctx: Context, started: float) -> bool:
        """The original ended in a cancellation: whether it was ours (a hedge won)."""
        self.original_running = False
        ours = self.host_cancelled and self.host.uncancel() <= self.cancelling
        self.cut(ctx, started)
        return ours

    async def after_original(self, ctx: Context, started: float, result: Any, error: Any) -> Any:
        """The original ended (without being cut) after the delay passed: settle it and
        wait, if need be, for the hedges."""
        self.original_running = False
        if self.host_cancelled:
            # A hedge won while the original was ending, and the original swallowed the
            # cancellation: balance it; the winner's outcome stands.
            self.host.uncancel()
            if error is None:
                await self.hedge._discard(result)
        elif self.hedges == 0:
            # The delay passed but no hedge could start (budget, deadline).
            self.hedge._answered(ctx, started, result, error)
            if error is not None:
                raise error
            return result
        else:
            await self.settle(ctx, (1, ctx.attempt_kind, started), result, error)
            result = error = None
            if not (self.finished or self.failed):
                self.waiter = self.host.get_loop().create_future()
                try:
                    await self.waiter
                except BaseException:
                    await self.wind_up()
                    raise
        await self.wind_up()
        return self.outcome()

    async def wind_up(self) -> None:
        """Stop the timer, cancel the hedges still running and wait until they have ended.

        Waits even when the caller is cancelled meanwhile (then re-raises): a hedge's inner
        policies release what they hold before the call returns.
        """
        timer = self.timer
        if timer is not None:
            timer.cancel()
            self.timer = None
        running = [task for task in self.tasks if not task.done()]
        for task in running:
            task.cancel()
        interrupted: BaseException | None = None
        while running:
            try:
                await asyncio.wait(running)
            except BaseException as exc:
                interrupted = exc
            running = [task for task in running if not task.done()]
        if interrupted is not None:
            try:
                raise interrupted
            finally:
                interrupted = None


# The calls of one Hedge waiting for their delay, on one asyncio loop: an insertion-ordered
# dict and one timer of the timer service armed at the earliest. Entering and leaving cost a
# dict insert and delete (no timer object, no round object per call): most calls answer within
# the delay. With a fixed delay the calls' fire times never decrease in insertion order, so
# the timer looks at the head only; an adaptive delay that shrinks breaks the order until the
# queue empties, and the timer then scans every waiting call.
_Waiting = tuple[
    float,  # fire at
    "asyncio.Task[Any]",  # the caller's task, running the original
    Context,
    Call,
    float,  # the original's start
    float,  # the delay
    contextvars.Context,  # the caller's context variables, as they were
    tuple[float, str, float, int],  # the call's deadline, its source and timeout, attempt
]


@final
class _Queue:
    """The calls of one Hedge on one asyncio loop whose delay has not passed yet."""

    __slots__ = (
        "armed",
        "hedge",
        "launched",
        "loop",
        "next",
        "ordered",
        "tail",
        "timer",
        "waiting",
    )

    def __init__(self, hedge: Hedge, loop: asyncio.AbstractEventLoop) -> None:
        self.hedge = hedge
        self.loop = loop
        self.waiting: dict[int, _Waiting] = {}
        self.launched: dict[int, _Round] = {}  # calls whose delay passed, until they end
        self.next = 0
        self.tail = -math.inf  # the latest fire time queued since the queue was last empty
        self.ordered = True
        self.timer: Timer | None = None
        self.armed = math.inf

    def add(self, entry: _Waiting) -> int:
        key = self.next
        self.next = key + 1
        at = entry[0]
        if at < self.tail:
            self.ordered = False
        else:
            self.tail = at
        self.waiting[key] = entry
        if at < self.armed:
            self.arm(at)
        return key

    def arm(self, at: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.armed = at
        self.timer = call_at(at, self.fire)

    def fire(self) -> None:
        self.timer = None
        self.armed = math.inf
        waiting = self.waiting
        if not waiting:
            return
        now = next(iter(waiting.values()))[2].clock.now()
        due = []
        for key, entry in waiting.items():
            if entry[0] <= now:
                due.append(key)
            elif self.ordered:
                break
        for key in due:
            _, host, ctx, call, started, delay, context, state = waiting.pop(key)
            race = self.launched[key] = _Round(self.hedge, call, ctx, delay)
            # The call's state when it reached the hedge, not the original attempt's.
            race.deadline, race.deadline_source, race.deadline_timeout = state[:3]
            race.attempt_number = state[3]
            race.host = host
            race.context = context
            race.begun = started
            race.launch()
        if waiting:
            if self.ordered:
                self.arm(next(iter(waiting.values()))[0])
            else:
                self.arm(min(entry[0] for entry in waiting.values()))
        else:
            self.tail = -math.inf
            self.ordered = True


@final
class Hedge(PolicyDecorator):
    """Start another attempt beside a slow one; the first acceptable answer wins.

    The call's first attempt (the *original*) starts at once. When no attempt has answered
    ``delay`` seconds after the last one started, a *hedge* starts concurrently, up to
    ``max_hedges`` of them. The first outcome classified SUCCESS, CLIENT_ERROR (the caller's
    fault: no other attempt would do better) or FAILURE (retrying cannot fix it) ends the call
    at once, and the attempts still running are cancelled: their inner policies release what
    they hold (bulkhead slots, connections) and a circuit breaker inside counts nothing for
    them, since cancellation is never a failure. A TRANSIENT or REJECTED outcome of one attempt
    lets the others go on; when every started attempt has failed, the call ends with the last
    TRANSIENT failure (or the last refusal): a ``Retry`` around the hedge may then try again.

    ``delay`` is a number of seconds, or ``"adaptive"`` (the default): the ``percentile`` of
    the latencies this hedge observed (a ``LatencyHistogram``, bounded memory), kept within
    ``[min_delay, max_delay]``, and ``max_delay`` until ``min_samples`` attempts were seen.
    Hedging at the 95th percentile sends about 5 % more attempts and cuts the slowest 5 %
    (Dean and Barroso, "The Tail at Scale").

    Each hedge spends one token of ``budget``, the same ``RetryBudget`` retries use: an
    overloaded dependency, whose every call is slow, gets at most ``ratio`` more load from
    hedges. A hedge that wins with a success gets its token back (``RetryBudget.refund``); each
    call that ends without a dependency failure earns ``ratio`` tokens (``deposit=False`` when
    a ``Retry`` holding the same budget already counts the calls).

    A call marked not resendable (``ctx.resendable`` false, as ``resilient.httpx`` does for a
    POST without an idempotency key) is never hedged; neither is a call whose deadline comes
    before a hedge could start. Each hedge runs on its own copy of the call's ``Context``
    (``attempt_kind == "hedge"``), so inner policies never share per-attempt state.

    Args:
        delay: seconds without an answer before a hedge starts, >= 0, or ``"adaptive"``.
        max_hedges: hedges per call at most, >= 0 (default 1; 0 turns hedging off).
        percentile: adaptive delay only: the latency quantile to hedge at, in (0, 1) (0.95).
        min_delay: adaptive delay only: the smallest delay, > 0 (0.005 s).
        max_delay: adaptive delay only: the largest delay, > ``min_delay`` (1.0 s).
        min_samples: adaptive delay only: latencies needed before the percentile is used (20).
        budget: a ``RetryBudget`` shared with retries; by default a fresh ``RetryBudget()``
            per ``Hedge``; ``None`` turns budgeting off.
        deposit: whether calls that end without a dependency failure earn budget tokens (and
            collect the reserve's refill) here (default True); ``False`` when a ``Retry``
            holding the same budget already does.
        classify: how outcomes are classified; ``None`` (default) uses the pipeline's.
        on_discard: called with a returned value that loses (a TRANSIENT result replaced by
            a later one, or a result arriving after another attempt won), for example to
            release a response; may return an awaitable (awaited, shielded from cancellation,
            so it must not block). Its exceptions are logged and ignored.
        unhedged: a policy run around each call this hedge never hedges (one not
            ``resendable``, or every call when ``max_hedges=0``), typically an attempt
            ``Timeout``: ``resilient.standard()`` gives ``Timeout(attempt_timeout,
            name="attempt_timeout")``, so a POST without an idempotency key is still cut at
            the attempt timeout while a GET is hedged there instead. ``None`` (default): such
            calls run as they are.
        name: the policy's name in events and telemetry (default ``"hedge"``).

    Raises:
        ConfigurationError: an invalid option (the message names it and the value).
    """

    __slots__ = (
        "_budget",
        "_classifier",
        "_cut",
        "_delay",
        "_deposit",
        "_earns",
        "_latency",
        "_max_hedges",
        "_on_discard",
        "_queue",
        "name",
    )

    # Its own waits end when its attempts end, and it starts no hedge past ctx.deadline: an
    # outer Timeout may leave the timing to an inner one.
    deadline_aware: ClassVar[bool] = True

    def __init__(
        self,
        *,
        delay: float | str = _ADAPTIVE,
        max_hedges: int = 1,
        percentile: float | None = None,
        min_delay: float | None = None,
        max_delay: float | None = None,
        min_samples: int | None = None,
        budget: RetryBudget | _Default | None = _DEFAULT_BUDGET,
        deposit: bool = True,
        classify: ClassifierLike
        | Callable[[Outcome], Classification | Verdict | None]
        | Iterable[Any]
        | None = None,
        on_discard: Callable[[Any], object] | None = None,
        unhedged: Policy | None = None,
        name: str = "hedge",
    ) -> None:
        self._latency: LatencyHistogram | None
        adaptive = {
            "percentile": percentile,
            "min_delay": min_delay,
            "max_delay": max_delay,
            "min_samples": min_samples,
        }
        if delay == _ADAPTIVE and isinstance(delay, str):
            self._delay = _INF
            self._latency = LatencyHistogram(
                percentile=0.95 if percentile is None else percentile,
                floor=0.005 if min_delay is None else min_delay,
                cap=1.0 if max_delay is None else max_delay,
                min_samples=20 if min_samples is None else min_samples,
            )
        elif isinstance(delay, str):
            raise ConfigurationError("Hedge.delay", delay, 'expected seconds or "adaptive"')
        else:
            self._delay = check.non_negative("Hedge.delay", delay)
            self._latency = None
            for option, value in adaptive.items():
                if value is not None:
                    raise ConfigurationError(
                        f"Hedge.{option}", value, 'applies to delay="adaptive" only'
                    )
        self._max_hedges = check.integer("Hedge.max_hedges", max_hedges, minimum=0)
        if isinstance(budget, _Default):
            budget = RetryBudget()
        elif budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigurationError("Hedge.budget", budget, "expected a RetryBudget or None")
        self._budget: RetryBudget | None = budget
        if not isinstance(deposit, bool):
            raise ConfigurationError("Hedge.deposit", deposit, "expected a bool")
        if budget is None and not deposit:
            raise ConfigurationError("Hedge.deposit", deposit, "applies to a budget (budget=None)")
        self._deposit = deposit
        # Where calls that did not fail earn (and collect the reserve's refill): here, or,
        # with deposit=False, wherever the budget's owner (a Retry) does it.
        self._earns = budget if deposit else None
        self._classifier = as_classifier("Hedge.classify", classify)
        self._on_discard = check.optional(check.callable_, "Hedge.on_discard", on_discard)
        if unhedged is not None and not callable(getattr(unhedged, "execute", None)):
            raise ConfigurationError(
                "Hedge.unhedged", unhedged, "expected a policy (such as a Timeout) or None"
            )
        self._cut: Policy | None = unhedged
        self.name = check.name("Hedge.name", name)
        self._queue: _Queue | None = None

    @property
    def delay(self) -> float:
        """The delay a call starting now would wait before its first hedge, in seconds."""
        latency = self._latency
        return self._delay if latency is None else latency.delay()

    @property
    def adaptive(self) -> bool:
        """Whether the delay follows observed latencies."""
        return self._latency is not None

    @property
    def max_hedges(self) -> int:
        """Hedges per call at most."""
        return self._max_hedges

    @property
    def budget(self) -> RetryBudget | None:
        """The budget hedges spend, or ``None`` when budgeting is off."""
        return self._budget

    @property
    def unhedged(self) -> Policy | None:
        """The policy run around calls that are never hedged, or ``None``."""
        return self._cut

    async def execute(self, call: Call, ctx: Context, /) -> Any:
        """Run ``call``, hedging it when it is slow to answer (see the class docstring)."""
        if self._max_hedges == 0 or not ctx.resendable:
            return await self._unhedged(call, ctx)
        clock = ctx.clock
        now = clock.now()
        latency = self._latency
        delay = self._delay if latency is None else latency.delay()
        queue = None if now + delay >= ctx.deadline else self._queue_on(clock)
        if queue is None:
            return await self._general(call, ctx, now, delay)
        # asyncio, system clock (every call's path when no hedge is sent, in one coroutine
        # frame): the original runs in this task; the call waits for its delay in the queue
        # (a dict insert), and hedges start as tasks only if the delay passes.
        host = asyncio.current_task(queue.loop)
        assert host is not None
        waiting = queue.waiting
        key = queue.add(
            (
                now + delay,
                host,
                ctx,
                call,
                now,
                delay,
                # Hedges run in the caller's context variables as they are now (the timer's
                # callback runs in an empty context).
                contextvars.copy_context(),
                (ctx.deadline, ctx.deadline_source, ctx.deadline_timeout, ctx.attempt),
            )
        )
        try:
            result = await call(ctx)
        except Exception as exc:
            if waiting.pop(key, None) is None:
                return await queue.launched.pop(key).after_original(ctx, now, None, exc)
            self._answered(ctx, now, None, exc)
            raise
        except BaseException:
            if waiting.pop(key, None) is not None:
                raise  # cancelled before its delay passed: nothing else runs
            race = queue.launched.pop(key)
            if await race.interrupted(ctx, now):
                return race.outcome()  # a hedge won and cut the original
            raise  # the caller's cancellation: every attempt has ended
        if waiting.pop(key, None) is None:
            return await queue.launched.pop(key).after_original(ctx, now, result, None)
        if latency is not None:
            latency.record(clock.now() - now)
        if self._earns is not None:
            self._earn(ctx, result)
        return result

    async def _unhedged(self, call: Call, ctx: Context) -> Any:
        """A call never hedged: as it is, or through the ``unhedged`` policy."""
        cut = self._cut
        if cut is None:
            return await call(ctx)
        return await cut.execute(call, ctx)

    def _queue_on(self, clock: object) -> _Queue | None:
        """The queue of the caller's asyncio loop with the system clock, else ``None``."""
        if type(clock) is not SystemClock:
            return None
        loop = current_loop()
        if loop is None:
            return None
        queue = self._queue
        if queue is None or queue.loop is not loop:
            if queue is not None and (queue.waiting or queue.launched):
                return None  # another loop is using this Hedge right now (threads)
            self._queue = queue = _Queue(self, loop)
        return queue

    async def _general(self, call: Call, ctx: Context, now: float, delay: float) -> Any:
        """A call that no hedge could join before its deadline runs as a plain attempt (its
        latency recorded, its success earning, as for any call answered before its delay);
        any other runs every attempt in a task group (any clock and backend)."""
        if now + delay < ctx.deadline:
            return await self._grouped(call, ctx, delay)
        try:
            result = await call(ctx)
        except Exception as exc:
            self._answered(ctx, now, None, exc)
            raise
        self._answered(ctx, now, result, None)
        return result

    def _answered(self, ctx: Context, started: float, result: Any, error: Any) -> None:
        """The bookkeeping of an original answered before any hedge started."""
        latency = self._latency
        if latency is not None and (
            error is None or race_verdict(self, ctx, error) is not _REJECTED
        ):
            latency.record(ctx.clock.now() - started)
        if error is None and self._earns is not None:
            self._earn(ctx, result)

    def _earn(self, ctx: Context, result: Any) -> None:
        """A call that returned: it earns (``deposit``) unless its value is a failure."""
        earns = self._earns
        if earns is not None and race_verdict(self, ctx, None, result) in _NOT_FAILED:
            earns.earn(ctx.clock.now)

    async def _grouped(self, call: Call, ctx: Context, delay: float) -> Any:
        """Any clock and backend: every attempt in a task group."""
        clock = ctx.clock
        race = _Round(self, call, ctx, delay)
        race.original_running = False  # it runs in a task of the group
        race.begun = clock.now()
        race.prepare()
        race.done = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(race.attempt, ctx, 1)
            while True:
                if await self._settled(race, clock.now() + delay, ctx):
                    break
                # Nobody answered in time: may a hedge start?
                now = clock.now()
                if not race.may_hedge(now):
                    await race.done.wait()
                    break
                twin = race.twin(now)
                group.start_soon(race.attempt, twin, race.started)
            # The call is decided: the attempts still running lost.
            group.cancel_scope.cancel()
        return race.outcome()

    @staticmethod
    async def _settled(race: _Round, until: float, ctx: Context) -> bool:
        """Wait until the round is decided (``True``) or until ``until`` (``False``)."""
        done = race.done
        assert done is not None
        if done.is_set():
            return True
        timer = ctx.clock.timeout_at(until)
        try:
            async with timer:
                await done.wait()
        except TimeoutError:
            if not timer.expired():
                raise
            return done.is_set()
        return True

    async def _discard(self, result: Any) -> None:
        on_discard = self._on_discard
        if on_discard is None:
            return
        try:
            outcome = on_discard(result)
            if inspect.isawaitable(outcome):
                with anyio.CancelScope(shield=True):
                    await outcome
        except Exception:
            logger.exception(
                "resilient: %s on_discard %r raised; the call goes on", self.name, on_discard
            )

    def __repr__(self) -> str:
        delay = "'adaptive'" if self._latency is not None else f"{self._delay:g}"
        cut = "" if self._cut is None else f"unhedged={self._cut!r}, "
        return (
            f"Hedge(delay={delay}, max_hedges={self._max_hedges}, budget={self._budget!r}, "
            f"{cut}name={self.name!r})"
        )

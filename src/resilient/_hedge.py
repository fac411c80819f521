"""``Hedge``: when an attempt is slow to answer, start another beside it; the first answer wins."""

from __future__ import annotations

import copy
import inspect
import logging
import math
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
from ._context import Context
from ._events import AttemptEnded, AttemptStarted, BudgetRefused, Event, error_type
from ._exceptions import ConfigurationError
from ._pipeline import Call, PolicyDecorator

__all__ = ["Hedge", "HedgeEnded", "HedgeStarted"]

logger = logging.getLogger("resilient")

_SUCCESS: Final = Verdict.SUCCESS
_CLIENT_ERROR: Final = Verdict.CLIENT_ERROR
_TRANSIENT: Final = Verdict.TRANSIENT
_REJECTED: Final = Verdict.REJECTED
_INF: Final = math.inf
_ADAPTIVE: Final = "adaptive"


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
    attempts and forgets older ones.

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
        "_log_floor",
        "_min_samples",
        "_percentile",
        "_scale",
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
        self._log_floor = math.log(self._floor)
        self._scale = (count - 1) / (math.log(self._cap) - self._log_floor)
        ratio = (self._cap / self._floor) ** (1.0 / (count - 1))
        # The last edge is the cap itself, whatever the rounding of the powers.
        self._edges = (*(self._floor * ratio**i for i in range(count - 1)), self._cap)
        self._counts = [0] * count
        self._total = 0
        self._since_decay = 0
        self._cached = self._cap
        self._stale = False

    @property
    def samples(self) -> int:
        """Recordings currently counted (after decay)."""
        return self._total

    def record(self, seconds: float) -> None:
        """Count one attempt that took ``seconds`` (or at least that long, if cut short)."""
        if seconds <= self._floor:
            index = 0
        else:
            # The bucket whose upper edge is the first at or above `seconds`.
            index = math.ceil((math.log(seconds) - self._log_floor) * self._scale - 1e-9)
            last = len(self._counts) - 1
            index = min(index, last)
        self._counts[index] += 1
        self._total += 1
        self._stale = True
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


class _Default:
    __slots__ = ()

    def __repr__(self) -> str:
        return "RetryBudget()"


_DEFAULT_BUDGET: Final = _Default()


@final
class _Round:
    """The attempts of one hedged call: who is running, who won, what failed."""

    __slots__ = (
        "call",
        "cancelled",
        "classify_exception",
        "classify_result",
        "done",
        "error",
        "failed",
        "finished",
        "hedge",
        "kind",
        "pending",
        "result",
        "started",
        "verdict",
    )

    def __init__(self, hedge: Hedge, call: Call, ctx: Context) -> None:
        self.hedge = hedge
        self.call = call
        classifier = hedge._classifier
        if classifier is None:
            classifier = ctx.classifier
        self.classify_result = classifier.classify_result
        self.classify_exception = (
            default_exception_verdict
            if classifier is DEFAULT_CLASSIFIER
            else classifier.classify_exception
        )
        self.done = anyio.Event()
        self.started = 0  # attempts started
        self.pending = 0  # attempts still running
        self.cancelled = 0  # losers cancelled while running
        self.finished = False  # an attempt's outcome ends the call
        self.failed = False  # no attempt is running and every one failed
        self.result: Any = None
        self.error: Exception | None = None
        self.verdict: Verdict = _TRANSIENT
        self.kind = "none"

    async def attempt(self, ctx: Context, number: int) -> None:
        """Run one attempt and settle its outcome into the round."""
        hedge = self.hedge
        clock = ctx.clock
        listening = ctx.listening
        kind = ctx.attempt_kind if number == 1 else "hedge"
        started = clock.now()
        if listening:
            ctx.emit(
                AttemptStarted(
                    pipeline=ctx.pipeline,
                    operation=ctx.operation,
                    policy=hedge.name,
                    at=started,
                    attempt=number,
                    kind=kind,
                )
            )
        result: Any = None
        error: Exception | None = None
        try:
            result = await self.call(ctx)
        except Exception as exc:
            error = exc
        except BaseException:
            # Cancelled: a loser (or the whole call). Its latency is at least this long: the
            # adaptive delay counts it so that cut-short slow attempts still shape the tail.
            self.pending -= 1
            if self.finished:
                self.cancelled += 1
            latency = hedge._latency
            if latency is not None:
                latency.record(clock.now() - started)
            raise
        self.pending -= 1
        try:
            try:
                if error is None:
                    classification = self.classify_result(result)
                else:
                    classification = self.classify_exception(error)
                verdict = classification.verdict
            except Exception as exc:
                # A broken classifier: its error is the call's outcome, raised as is (never
                # wrapped in an exception group by the task group).
                result, error, verdict = None, exc, Verdict.FAILURE
            now = clock.now()
            latency = hedge._latency
            if latency is not None and verdict is not _REJECTED:
                latency.record(now - started)
            if listening:
                ctx.emit(
                    AttemptEnded(
                        pipeline=ctx.pipeline,
                        operation=ctx.operation,
                        policy=hedge.name,
                        at=now,
                        attempt=number,
                        verdict=verdict,
                        duration=now - started,
                        error_type=None if error is None else error_type(error),
                        kind=kind,
                    )
                )
            if self.finished:
                # Another attempt already won (both ended in the same instant).
                if error is None:
                    await hedge._discard(result)
                return
            if verdict is _TRANSIENT or verdict is _REJECTED:
                # One attempt failing lets the others go on; the round keeps the most useful
                # failure to report: a dependency's own answer over a refusal of ours.
                if self.verdict is _REJECTED or verdict is _TRANSIENT or self.kind == "none":
                    previous = self.result if self.error is None else None
                    self.result, self.error, self.verdict = result, error, verdict
                    self.kind = kind
                    if previous is not None:
                        await hedge._discard(previous)
                elif error is None:
                    await hedge._discard(result)
                if self.pending == 0:
                    self.failed = True
                    self.done.set()
                return
            # SUCCESS, CLIENT_ERROR (the caller's fault: another attempt would not help) or
            # FAILURE (retrying cannot fix it): this outcome is the call's.
            previous = self.result if self.error is None else None
            self.finished = True
            self.result, self.error, self.verdict, self.kind = result, error, verdict, kind
            if previous is not None:
                await hedge._discard(previous)
            self.done.set()
        finally:
            error = None  # no reference cycle through this frame's traceback


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
    hedges. The first attempt of each call earns ``ratio`` tokens (``deposit=False`` when a
    ``Retry`` holding the same budget already counts the calls).

    A call marked not resendable (``ctx.resendable`` false, as ``resilient.httpx`` does for a
    POST without an idempotency key) is never hedged; neither is a call whose deadline comes
    before a hedge could start. Each hedge runs on its own copy of the call's ``Context``
    (``attempt_kind == "hedge"``), so inner policies never share per-attempt state.

    Args:
        delay: seconds without an answer before a hedge starts, >= 0, or ``"adaptive"``.
        max_hedges: hedges per call at most, >= 0 (default 1; 0 turns hedging off).
        percentile: adaptive delay: the latency quantile to hedge at, in (0, 1) (0.95).
        min_delay: adaptive delay: the smallest delay, > 0 (0.005 s).
        max_delay: adaptive delay: the largest delay, > ``min_delay`` (1.0 s).
        min_samples: adaptive delay: latencies needed before the percentile is used (20).
        budget: a ``RetryBudget`` shared with retries; by default a fresh ``RetryBudget()``
            per ``Hedge``; ``None`` turns budgeting off.
        deposit: whether each call's first attempt earns budget tokens here (default True).
        classify: how outcomes are classified; ``None`` (default) uses the pipeline's.
        on_discard: called with a returned value that loses (a TRANSIENT result replaced by
            a later one, or a result arriving after another attempt won), for example to
            release a response; may return an awaitable (awaited, shielded from cancellation,
            so it must not block). Its exceptions are logged and ignored.
        name: the policy's name in events and telemetry (default ``"hedge"``).

    Raises:
        ConfigurationError: an invalid option (the message names it and the value).
    """

    __slots__ = (
        "_budget",
        "_classifier",
        "_delay",
        "_deposit",
        "_latency",
        "_max_hedges",
        "_on_discard",
        "name",
    )

    # Its own waits end when its attempts end, and it starts no hedge past ctx.deadline: an
    # outer Timeout may leave the timing to an inner one.
    _deadline_aware: ClassVar[bool] = True

    def __init__(
        self,
        *,
        delay: float | str = _ADAPTIVE,
        max_hedges: int = 1,
        percentile: float = 0.95,
        min_delay: float = 0.005,
        max_delay: float = 1.0,
        min_samples: int = 20,
        budget: RetryBudget | _Default | None = _DEFAULT_BUDGET,
        deposit: bool = True,
        classify: ClassifierLike
        | Callable[[Outcome], Classification | Verdict | None]
        | Iterable[Any]
        | None = None,
        on_discard: Callable[[Any], object] | None = None,
        name: str = "hedge",
    ) -> None:
        self._latency: LatencyHistogram | None
        if delay == _ADAPTIVE and isinstance(delay, str):
            self._delay = _INF
            self._latency = LatencyHistogram(
                percentile=percentile,
                floor=min_delay,
                cap=max_delay,
                min_samples=min_samples,
            )
        elif isinstance(delay, str):
            raise ConfigurationError("Hedge.delay", delay, 'expected seconds or "adaptive"')
        else:
            self._delay = check.non_negative("Hedge.delay", delay)
            self._latency = None
        self._max_hedges = check.integer("Hedge.max_hedges", max_hedges, minimum=0)
        if isinstance(budget, _Default):
            budget = RetryBudget()
        elif budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigurationError("Hedge.budget", budget, "expected a RetryBudget or None")
        self._budget: RetryBudget | None = budget
        if not isinstance(deposit, bool):
            raise ConfigurationError("Hedge.deposit", deposit, "expected a bool")
        self._deposit = deposit
        self._classifier = as_classifier("Hedge.classify", classify)
        self._on_discard = check.optional(check.callable_, "Hedge.on_discard", on_discard)
        self.name = check.name("Hedge.name", name)

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

    async def execute(self, call: Call, ctx: Context, /) -> Any:
        """Run ``call``, hedging it when it is slow to answer (see the class docstring)."""
        if self._max_hedges == 0 or not ctx.resendable:
            return await call(ctx)
        clock = ctx.clock
        now = clock.now()
        budget = self._budget
        if budget is not None and self._deposit and ctx.attempt == 1:
            budget.deposit(now)
        latency = self._latency
        delay = self._delay if latency is None else latency.delay()
        if now + delay >= ctx.deadline:
            # No hedge could start before the deadline: a plain attempt (still timed when
            # the delay adapts, so the histogram sees every latency).
            if latency is None:
                return await call(ctx)
            return await self._timed(call, ctx, now)
        return await self._race(call, ctx, delay)

    async def _timed(self, call: Call, ctx: Context, started: float) -> Any:
        latency = self._latency
        assert latency is not None
        clock = ctx.clock
        try:
            result = await call(ctx)
        except Exception:
            latency.record(clock.now() - started)
            raise
        latency.record(clock.now() - started)
        return result

    async def _race(self, call: Call, ctx: Context, delay: float) -> Any:
        clock = ctx.clock
        budget = self._budget
        race = _Round(self, call, ctx)
        hedges = 0
        # The original runs on `ctx` itself and inner policies change it while it runs (an
        # attempt Timeout tightens the deadline): hedges start from the call's state as it is
        # now, not as the original's attempt left it.
        deadline, source, timeout = ctx.deadline, ctx.deadline_source, ctx.deadline_timeout
        attempt = ctx.attempt
        async with anyio.create_task_group() as group:
            race.started = race.pending = 1
            group.start_soon(race.attempt, ctx, 1)
            while True:
                if await self._settled(race, clock.now() + delay, ctx):
                    break
                # Nobody answered in time: may a hedge start?
                now = clock.now()
                if hedges >= self._max_hedges or now + delay >= deadline:
                    await race.done.wait()
                    break
                if budget is not None and not budget.try_withdraw(now):
                    if ctx.listening:
                        ctx.emit(
                            BudgetRefused(
                                pipeline=ctx.pipeline,
                                operation=ctx.operation,
                                policy=self.name,
                                at=now,
                                attempt=race.started,
                            )
                        )
                    await race.done.wait()
                    break
                hedges += 1
                race.started += 1
                race.pending += 1
                if ctx.listening:
                    ctx.emit(
                        HedgeStarted(
                            pipeline=ctx.pipeline,
                            operation=ctx.operation,
                            policy=self.name,
                            at=now,
                            hedge=hedges,
                            attempt=race.started,
                            delay=delay,
                        )
                    )
                twin = copy.copy(ctx)
                twin.attempt_kind = "hedge"
                twin.attempt = attempt
                twin.deadline, twin.deadline_source, twin.deadline_timeout = (
                    deadline,
                    source,
                    timeout,
                )
                group.start_soon(race.attempt, twin, race.started)
            # The call is decided: the attempts still running lost.
            group.cancel_scope.cancel()
        if budget is not None and (race.verdict is _SUCCESS or race.verdict is _CLIENT_ERROR):
            budget.record_success(clock.now())
        if hedges and ctx.listening:
            ctx.emit(
                HedgeEnded(
                    pipeline=ctx.pipeline,
                    operation=ctx.operation,
                    policy=self.name,
                    at=clock.now(),
                    winner=("hedge" if race.kind == "hedge" else "original")
                    if race.finished
                    else "none",
                    attempts=race.started,
                    cancelled=race.cancelled,
                    verdict=race.verdict,
                )
            )
        error = race.error
        if error is not None:
            race.error = None
            try:
                raise error
            finally:
                error = None
        return race.result

    @staticmethod
    async def _settled(race: _Round, until: float, ctx: Context) -> bool:
        """Wait until the round is decided (``True``) or until ``until`` (``False``)."""
        if race.done.is_set():
            return True
        timer = ctx.clock.timeout_at(until)
        try:
            async with timer:
                await race.done.wait()
        except TimeoutError:
            if not timer.expired():
                raise
            return race.done.is_set()
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
        return (
            f"Hedge(delay={delay}, max_hedges={self._max_hedges}, budget={self._budget!r}, "
            f"name={self.name!r})"
        )

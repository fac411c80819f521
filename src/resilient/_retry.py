"""``Retry``: retry transient failures with jittered exponential backoff, a budget and deadlines."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Final, final

from . import _validate as check
from ._backoff import JITTERS
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
from ._clock import Clock
from ._context import Context
from ._events import (
    RetryGaveUp,
    RetryScheduled,
    error_type,
    report_attempt_ended,
    report_attempt_started,
    report_budget_refused,
)
from ._exceptions import ConfigurationError
from ._pipeline import Call, PolicyDecorator

__all__ = ["Retry"]

logger = logging.getLogger("resilient")

_TRANSIENT: Final = Verdict.TRANSIENT
_SUCCESS: Final = Verdict.SUCCESS
_CLIENT_ERROR: Final = Verdict.CLIENT_ERROR
_REJECTED: Final = Verdict.REJECTED
_INF: Final = math.inf


class _Default:
    __slots__ = ()

    def __repr__(self) -> str:
        return "RetryBudget()"


_DEFAULT_BUDGET: Final = _Default()


async def _attempt(call: Call, ctx: Context) -> tuple[Any, Exception | None]:
    # One attempt: its result, or the Exception it raised (cancellation propagates).
    try:
        return await call(ctx), None
    except Exception as exc:
        return None, exc


def _chain_last_failure(error: Exception | None, last: Exception | None) -> None:
    # An inner policy refused a retry (an open circuit; ``last`` is None otherwise): keep the
    # dependency's own last failure reachable from what the caller gets.
    if error is not None and last is not None and error is not last and error.__context__ is None:
        error.__context__ = last


def _usable_hint(value: object) -> float | None:
    # A server hint is untrusted input: anything but a finite number >= 0 is ignored, and
    # converting it must not raise (an int too large for a float, a str, a bool ...).
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    if seconds >= 0.0 and seconds != _INF:  # NaN fails the comparison
        return seconds
    return None


def _error_type(error: BaseException | None) -> str | None:
    return None if error is None else error_type(error)


@final
class Retry(PolicyDecorator):
    """Retry transient failures with capped exponential backoff and jitter.

    Only outcomes classified TRANSIENT are retried; CLIENT_ERROR, FAILURE and REJECTED (an
    inner policy refusing, such as an open circuit) are returned or raised at once, and
    cancellation is never retried. When it gives up, the caller gets the last original exception
    (with a note saying how many attempts were made) or, when the failure was a returned value
    (such as an HTTP 503 response), that value. Never a wrapper.

    The delay before a retry, when ``n`` retries were already made (``n = 0`` before the first
    retry), is drawn from ``min(max_delay, base_delay * 2**n)`` by the jitter strategy; full
    jitter (the default) draws it uniformly from ``[0, that]``. A server hint (a classification's
    ``retry_after``, e.g. from ``Retry-After``) replaces the computed delay, clamped to
    ``max_retry_after``; hints that are not finite numbers >= 0 are ignored.

    Deadlines: a retry never sleeps past the call's deadline (``ctx.deadline``, set by an
    enclosing ``Timeout``) and never starts an attempt whose delay would reach it; it gives up
    with the last real failure instead of a timeout.

    Args:
        attempts: total attempts, the first call included, >= 1 (default 3).
        base_delay: ceiling of the first retry's delay in seconds, >= 0 (default 0.1).
        max_delay: largest computed delay in seconds, >= ``base_delay`` (default 5.0).
        jitter: ``"full"`` (default), ``"equal"``, ``"decorrelated"`` or ``"none"``.
        budget: a ``RetryBudget`` (shareable between policies and pipelines calling the same
            dependency); by default a fresh ``RetryBudget()`` per ``Retry``; ``None`` turns
            budgeting off.
        classify: how outcomes are classified (a ``Classifier``, rules, or a function of an
            ``Outcome``); ``None`` (default) uses the pipeline's classifier.
        max_retry_after: the longest server hint honoured, in seconds, >= 0 (default 60.0).
        on_discard: called with a returned value classified TRANSIENT that is about to be
            dropped for a retry (for example to release a response); may return an awaitable,
            which is awaited. Its exceptions are logged and ignored.
        name: the policy's name in events, notes and telemetry (default ``"retry"``).

    Raises:
        ConfigurationError: an invalid option (the message names it and the value).
    """

    __slots__ = (
        "_attempts",
        "_base",
        "_budget",
        "_cap",
        "_classifier",
        "_jitter",
        "_jitter_name",
        "_max_retry_after",
        "_on_discard",
        "name",
    )

    deadline_aware: ClassVar[bool] = True

    def __init__(
        self,
        *,
        attempts: int = 3,
        base_delay: float = 0.1,
        max_delay: float = 5.0,
        jitter: str = "full",
        budget: RetryBudget | _Default | None = _DEFAULT_BUDGET,
        classify: ClassifierLike
        | Callable[[Outcome], Classification | Verdict | None]
        | Iterable[Any]
        | None = None,
        max_retry_after: float = 60.0,
        on_discard: Callable[[Any], object] | None = None,
        name: str = "retry",
    ) -> None:
        self._attempts = check.integer("Retry.attempts", attempts, minimum=1)
        self._base = check.non_negative("Retry.base_delay", base_delay)
        self._cap = check.non_negative("Retry.max_delay", max_delay)
        if self._cap < self._base:
            raise ConfigurationError(
                "Retry.max_delay", max_delay, f"must be >= base_delay ({self._base:g})"
            )
        self._jitter_name = check.choice("Retry.jitter", jitter, tuple(JITTERS))
        self._jitter = JITTERS[self._jitter_name]
        if isinstance(budget, _Default):
            budget = RetryBudget()
        elif budget is not None and not isinstance(budget, RetryBudget):
            raise ConfigurationError("Retry.budget", budget, "expected a RetryBudget or None")
        self._budget: RetryBudget | None = budget
        self._classifier = as_classifier("Retry.classify", classify)
        self._max_retry_after = check.non_negative("Retry.max_retry_after", max_retry_after)
        self._on_discard = check.optional(check.callable_, "Retry.on_discard", on_discard)
        self.name = check.name("Retry.name", name)

    @property
    def attempts(self) -> int:
        """Total attempts allowed, the first call included."""
        return self._attempts

    @property
    def base_delay(self) -> float:
        """Ceiling of the first retry's delay, in seconds."""
        return self._base

    @property
    def max_delay(self) -> float:
        """Largest computed delay, in seconds."""
        return self._cap

    @property
    def jitter(self) -> str:
        """The jitter strategy's name."""
        return self._jitter_name

    @property
    def budget(self) -> RetryBudget | None:
        """The retry budget, or ``None`` when budgeting is off."""
        return self._budget

    @property
    def max_retry_after(self) -> float:
        """The longest server hint honoured, in seconds."""
        return self._max_retry_after

    async def execute(self, call: Call, ctx: Context, /) -> Any:
        """Run ``call`` and retry it while its outcome is TRANSIENT (see the class docstring)."""
        if ctx.listening:
            return await self._run(call, ctx, None, None, pending=False, classification=None)
        budget = self._budget
        ctx.attempt = 1
        try:
            result = await call(ctx)
        except Exception as exc:
            error: Exception | None = exc
            result = None
        else:
            classifier = self._classifier
            if classifier is None:
                classifier = ctx.classifier
            first: Classification | None
            if classifier is DEFAULT_CLASSIFIER:
                verdict = _SUCCESS  # it has no result rules: every returned value is a success
                first = None
            else:
                first = classifier.classify_result(result)
                verdict = first.verdict
            if verdict is not _TRANSIENT:
                if budget is not None and (verdict is _SUCCESS or verdict is _CLIENT_ERROR):
                    budget.earn(ctx.clock.now)  # a counter bump; the clock is rarely read
                return result
            error = None
            return await self._run(call, ctx, result, None, pending=True, classification=first)
        try:
            return await self._run(call, ctx, None, error, pending=True, classification=None)
        finally:
            error = None  # no reference cycle through this frame's traceback

    async def _run(
        self,
        call: Call,
        ctx: Context,
        result: Any,
        error: Exception | None,
        *,
        pending: bool,
        classification: Classification | None,
    ) -> Any:
        """The general loop: events, classification, backoff, deadline and budget.

        ``pending`` means attempt 1 already ran (without events) and produced ``result`` or
        ``error`` (and, for a result, its ``classification``); otherwise attempt 1 runs here.
        """
        clock = ctx.clock
        budget = self._budget
        classify_result, classify_exception = self._classifiers(ctx)
        listening = ctx.listening  # fixed for the call (an observer decides before the chain)
        attempt = 1
        previous = 0.0
        last_error: Exception | None = None
        reason: str | None
        try:
            while True:
                started = None
                if pending:
                    pending = False
                else:
                    ctx.attempt = attempt
                    started = self._attempt_started(ctx, attempt) if listening else None
                    result, error = await _attempt(call, ctx)
                if classification is None:
                    classification = (
                        classify_result(result) if error is None else classify_exception(error)
                    )
                verdict = classification.verdict
                if started is not None:
                    report_attempt_ended(
                        ctx, self.name, ctx.clock.now(), attempt, verdict, started, error
                    )
                if verdict is not _TRANSIENT:
                    reason = self._settled(verdict, clock, budget, attempt)
                    break
                # A transient failure: may we retry, and after how long?
                delay, previous, reason = self._plan(ctx, attempt, classification, previous, error)
                if reason is None and error is None and self._on_discard is not None:
                    result, error, reason = await self._discard_before_retry(result, ctx, delay)
                if reason is not None:
                    break
                last_error = error or last_error
                result = error = classification = None
                if delay > 0.0:
                    await clock.sleep(delay)
                # A zero delay retries at once: yielding to the event loop here would cost more
                # than the retry itself, and the number of attempts is bounded.
                attempt += 1
                ctx.attempt_kind = "retry"
            _chain_last_failure(error, last_error if verdict is _REJECTED else None)
            last_error = None
            self._ended(ctx, attempt, error, reason, verdict)
            if error is not None:
                raise error
            return result
        finally:
            error = None

    def _classifiers(
        self, ctx: Context
    ) -> tuple[Callable[[Any], Classification], Callable[[Exception], Classification]]:
        classifier = self._classifier
        if classifier is None:
            classifier = ctx.classifier
        if classifier is DEFAULT_CLASSIFIER:
            # What the rule-less default classifier ends up calling for an exception.
            return classifier.classify_result, default_exception_verdict
        return classifier.classify_result, classifier.classify_exception

    @staticmethod
    def _settled(
        verdict: Verdict, clock: Clock, budget: RetryBudget | None, attempt: int
    ) -> str | None:
        # A final verdict. A call that ended without a dependency failure (a success or a
        # client error) earns budget tokens; when a retry got that answer, the retry proved
        # the failure transient and its token is refunded.
        if verdict is _SUCCESS or verdict is _CLIENT_ERROR:
            if budget is not None:
                if attempt > 1:
                    budget.refund(clock.now())
                budget.earn(clock.now)
            return None
        return "verdict"

    def _plan(
        self,
        ctx: Context,
        attempt: int,
        classification: Classification,
        previous: float,
        error: Exception | None,
    ) -> tuple[float, float, str | None]:
        """``(delay, previous delay, why not)`` for the retry after a transient ``attempt``.

        A ``None`` reason means the retry goes ahead (its budget token is taken, and the
        ``RetryScheduled`` event reported).
        """
        if attempt >= self._attempts:
            return 0.0, previous, "attempts"
        if self._cap > 0.0:
            delay = previous = self._jitter(
                attempt - 1, self._base, self._cap, ctx.random(), previous
            )
        else:
            delay = 0.0  # max_delay=0: immediate retries, no random draw needed
        delay, hint = self._honour_hint(classification.retry_after, delay)
        reason = self._refusal(ctx, attempt, delay, self._budget)
        if reason is None and ctx.listening:
            self._scheduled(ctx, attempt, delay, classification.verdict, error, hint)
        return delay, previous, reason

    def _attempt_started(self, ctx: Context, attempt: int) -> float:
        started = ctx.clock.now()
        report_attempt_started(ctx, self.name, started, attempt)
        return started

    def _honour_hint(self, hint: float | None, delay: float) -> tuple[float, float | None]:
        # A server's hint (Retry-After) replaces the computed delay, capped by
        # max_retry_after; an unusable hint is ignored.
        if hint is None:
            return delay, None
        seconds = _usable_hint(hint)
        if seconds is None:
            return delay, None
        hint = min(seconds, self._max_retry_after)
        return hint, hint

    def _refusal(
        self, ctx: Context, attempt: int, delay: float, budget: RetryBudget | None
    ) -> str | None:
        """Why the retry after ``delay`` may not happen (``None``: it may; a token is taken)."""
        clock = ctx.clock
        deadline = ctx.deadline
        if deadline != _INF and clock.now() + delay >= deadline:
            return "deadline"
        if budget is not None and not budget.try_withdraw(clock.now()):
            if ctx.listening:
                report_budget_refused(ctx, self.name, clock.now(), attempt)
            return "budget"
        return None

    def _scheduled(  # noqa: PLR0917 - private, one call site, the event's fields in order
        self,
        ctx: Context,
        attempt: int,
        delay: float,
        verdict: Verdict,
        error: Exception | None,
        hint: float | None,
    ) -> None:
        ctx.emit(
            RetryScheduled(
                pipeline=ctx.pipeline,
                operation=ctx.operation,
                policy=self.name,
                at=ctx.clock.now(),
                attempt=attempt,
                delay=delay,
                verdict=verdict,
                error_type=_error_type(error),
                retry_after=hint,
            )
        )

    async def _discard_before_retry(
        self, result: Any, ctx: Context, delay: float
    ) -> tuple[Any, Exception | None, str | None]:
        # A retried result is released first (on_discard: close a response). When that took
        # the time the retry needed, the result is gone and the deadline is the failure left
        # to report.
        await self._discard(result, ctx)
        if ctx.clock.now() + delay >= ctx.deadline:
            return None, ctx.deadline_exceeded(), "deadline"
        return result, None, None

    async def _discard(self, result: Any, ctx: Context) -> None:
        on_discard = self._on_discard
        try:
            outcome = on_discard(result)  # type: ignore[misc]
            if inspect.isawaitable(outcome):
                deadline = ctx.deadline
                if deadline == _INF:
                    await outcome
                else:
                    # Every wait of a deadline-aware policy ends by the deadline, this one too.
                    async with ctx.clock.timeout_at(deadline):
                        await outcome
        except Exception:
            logger.exception(
                "resilient: %s on_discard %r raised; the retry goes on", self.name, on_discard
            )

    def _ended(
        self,
        ctx: Context,
        attempt: int,
        error: Exception | None,
        reason: str | None,
        verdict: Verdict,
    ) -> None:
        """Report the end of the loop: a ``RetryGaveUp`` event and the note on ``error``."""
        if reason is not None and ctx.listening:
            ctx.emit(
                RetryGaveUp(
                    pipeline=ctx.pipeline,
                    operation=ctx.operation,
                    policy=self.name,
                    at=ctx.clock.now(),
                    attempts=attempt,
                    reason=reason,
                    verdict=verdict,
                    error_type=_error_type(error),
                )
            )
        if error is not None and (attempt > 1 or verdict is _TRANSIENT):
            note = _note(self.name, attempt, reason)
            # The same exception object may come back again (a shared instance raised on every
            # call, or nested retries re-raising it): one copy of a note is enough, and notes
            # must not grow with the number of calls.
            notes = getattr(error, "__notes__", None)
            if notes is None or note not in notes:
                error.add_note(note)

    def __repr__(self) -> str:
        return (
            f"Retry(attempts={self._attempts}, base_delay={self._base:g}, "
            f"max_delay={self._cap:g}, jitter={self._jitter_name!r}, budget={self._budget!r}, "
            f"name={self.name!r})"
        )


_REASONS: Final = {
    None: "",
    "verdict": "; not retryable",
    "attempts": "; gave up: no attempts left",
    "deadline": "; gave up: the next attempt could not start before the deadline",
    "budget": "; gave up: retry budget exhausted",
}


def _note(name: str, attempts: int, reason: str | None) -> str:
    plural = "attempt" if attempts == 1 else "attempts"
    return f"resilient: {name!r} made {attempts} {plural}{_REASONS[reason]}"

"""Typed events that policies report, and the listener hook.

Policies emit an event only when someone listens (``ctx.listening``), so an unobserved
pipeline pays nothing for them. Listeners are plain callables; one that raises is logged and
ignored: observation never changes an outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ._classify import Verdict

if TYPE_CHECKING:
    from ._context import Context

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
    "Listener",
    "RetryGaveUp",
    "RetryScheduled",
    "TimeoutFired",
    "WaitEnded",
]

logger = logging.getLogger("resilient")


@dataclass(slots=True, kw_only=True)
class Event:
    """Base of every event.

    Events are plain slotted records, not frozen ones: a frozen dataclass costs twice as much
    to build, and with an OpenTelemetry SDK installed a retry emits two per attempt. Treat
    them as read-only; every listener receives the same object.

    Attributes:
        pipeline: name of the pipeline running the call.
        operation: the call's operation (a static name or route template, never a raw URL).
        policy: name of the policy reporting the event (``""`` for the pipeline itself).
        at: the pipeline clock's time when the event happened.
    """

    pipeline: str
    operation: str
    policy: str
    at: float


@dataclass(slots=True, kw_only=True)
class AttemptStarted(Event):
    """An attempt (1 for the first call) is about to run.

    ``kind`` is ``"original"``, ``"retry"`` or ``"hedge"``; ``None`` (what ``Retry`` sends)
    means attempt 1 is the original and later ones are retries.
    """

    attempt: int
    kind: str | None = None


@dataclass(slots=True, kw_only=True)
class AttemptEnded(Event):
    """An attempt finished with a verdict after ``duration`` seconds.

    ``error_type`` is the exception's qualified class name, ``None`` for a returned value.
    ``kind`` is as in ``AttemptStarted``.
    """

    attempt: int
    verdict: Verdict
    duration: float
    error_type: str | None
    kind: str | None = None


@dataclass(slots=True, kw_only=True)
class RetryScheduled(Event):
    """Attempt ``attempt`` failed with a retryable verdict; the next starts after ``delay``.

    ``retry_after`` is the server hint that set the delay, if any.
    """

    attempt: int
    delay: float
    verdict: Verdict
    error_type: str | None
    retry_after: float | None


@dataclass(slots=True, kw_only=True)
class RetryGaveUp(Event):
    """The retry policy stopped after ``attempts`` attempts.

    ``reason`` is one of ``"attempts"`` (all used), ``"deadline"`` (the next attempt could not
    finish in time), ``"budget"`` (the retry budget refused) or ``"verdict"`` (not retryable).
    """

    attempts: int
    reason: str
    verdict: Verdict
    error_type: str | None


@dataclass(slots=True, kw_only=True)
class BudgetRefused(Event):
    """The retry budget refused a retry after attempt ``attempt``."""

    attempt: int


@dataclass(slots=True, kw_only=True)
class CallRejected(Event):
    """A policy refused the call (breaker open, bulkhead full, rate limited, ...).

    ``reason`` is a short bounded word (``"open"``, ``"half_open"``, ``"full"``,
    ``"rate_limited"``, ``"wait_timeout"``, ``"deadline"``); ``error_type`` names the exception
    raised to the caller.
    """

    reason: str
    retry_after: float | None
    error_type: str


@dataclass(slots=True, kw_only=True)
class CircuitStateChanged(Event):
    """A breaker moved from ``previous`` to ``state`` (``key`` for keyed breakers)."""

    previous: str
    state: str
    key: str | None


@dataclass(slots=True, kw_only=True)
class CircuitWaitStarted(Event):
    """A call found its breaker open and waits for it (``key`` for keyed breakers).

    ``waiting`` counts the callers waiting for that state, this one included; ``give_up``
    is the clock time at which this one stops waiting (its ``max_wait`` or its deadline).
    """

    key: str | None
    waiting: int
    give_up: float


@dataclass(slots=True, kw_only=True)
class CircuitWaitEnded(Event):
    """A call stopped waiting for an open breaker after ``waited`` seconds.

    ``outcome`` is ``"probe"`` (sent as the half-open probe), ``"released"`` (the breaker
    closed and let it go), ``"failed"`` (refused: a failed probe it could not outlast, or the
    breaker forced open), ``"timeout"`` (its ``max_wait`` or deadline ran out) or
    ``"cancelled"``. A failed or timed-out wait is also reported as ``CallRejected``.
    """

    key: str | None
    outcome: str
    waited: float


@dataclass(slots=True, kw_only=True)
class TimeoutFired(Event):
    """A timeout policy's own deadline cut the call after ``timeout`` seconds."""

    timeout: float


@dataclass(slots=True, kw_only=True)
class WaitEnded(Event):
    """A call waited ``waited`` seconds in a bulkhead or rate limiter queue.

    ``admitted`` is false when the wait ended in a rejection.
    """

    waited: float
    admitted: bool


Listener = Callable[[Event], None]


class CallObserver(Protocol):
    """Seam for telemetry: sees every call of a pipeline and every event of those calls.

    ``start`` may set ``ctx.listening`` to ``False`` to opt out of events for that call (for
    example when nothing is recording), may publish the call's span in ``ctx.span`` and may
    keep private per-call state in ``ctx.telemetry``. ``end`` receives the exception the call
    raised (``None`` on return) and the returned value (``None`` when it raised). Exceptions
    raised by an observer are logged and swallowed by the pipeline.
    """

    def start(self, ctx: Context, /) -> None: ...

    def end(self, ctx: Context, error: BaseException | None, result: object, /) -> None: ...

    def event(self, ctx: Context, event: Event, /) -> None: ...


def report_listener_error(listener: object) -> None:
    """Log (never raise) an exception raised by a listener or observer."""
    logger.exception("resilient: listener %r raised; the call's outcome is unchanged", listener)


def notify(listeners: tuple[Listener, ...], event: Event) -> None:
    """Give ``event`` to each listener; one that raises is logged and the rest still run."""
    for listener in listeners:
        try:
            listener(event)
        except Exception:
            report_listener_error(listener)


_ERROR_TYPES: dict[type[BaseException], str] = {}
_MAX_ERROR_TYPES = 1024


def error_type(exc: BaseException) -> str:
    """The bounded ``error.type`` of an exception, spelled by its public import path.

    Builtins stay bare (``ConnectionError``); other classes get their module with private
    components dropped (``resilient._exceptions.TimeoutExceeded`` ->
    ``resilient.TimeoutExceeded``, ``httpx._exceptions.ConnectError`` -> ``httpx.ConnectError``).
    Every policy and the telemetry layer spell the same exception the same way.
    """
    cls = type(exc)
    name = _ERROR_TYPES.get(cls)
    if name is None:
        module = cls.__module__
        if module == "builtins":
            name = cls.__qualname__
        else:
            public = ".".join(p for p in module.split(".") if not p.startswith("_"))
            name = f"{public}.{cls.__qualname__}" if public else cls.__qualname__
        if len(_ERROR_TYPES) < _MAX_ERROR_TYPES:
            _ERROR_TYPES[cls] = name
    return name


def report_attempt_started(
    ctx: Context, policy: str, at: float, attempt: int, kind: str | None = None
) -> None:
    """Emit ``AttemptStarted`` (``Retry`` and ``Hedge`` report attempts alike).

    Call only when ``ctx.listening``.
    """
    ctx.emit(
        AttemptStarted(
            pipeline=ctx.pipeline,
            operation=ctx.operation,
            policy=policy,
            at=at,
            attempt=attempt,
            kind=kind,
        )
    )


def report_attempt_ended(  # noqa: PLR0917 - the event's fields, in its order
    ctx: Context,
    policy: str,
    at: float,
    attempt: int,
    verdict: Verdict,
    started: float,
    error: BaseException | None,
    kind: str | None = None,
) -> None:
    """Emit ``AttemptEnded`` for an attempt that began at ``started`` and ended at ``at``.

    Call only when ``ctx.listening``.
    """
    ctx.emit(
        AttemptEnded(
            pipeline=ctx.pipeline,
            operation=ctx.operation,
            policy=policy,
            at=at,
            attempt=attempt,
            verdict=verdict,
            duration=at - started,
            error_type=None if error is None else error_type(error),
            kind=kind,
        )
    )


def report_budget_refused(ctx: Context, policy: str, at: float, attempt: int) -> None:
    """Emit ``BudgetRefused`` (``Retry`` and ``Hedge`` alike): no budget for another attempt.

    Call only when ``ctx.listening``.
    """
    ctx.emit(
        BudgetRefused(
            pipeline=ctx.pipeline, operation=ctx.operation, policy=policy, at=at, attempt=attempt
        )
    )


def report_wait_ended(
    ctx: Context, policy: str, at: float, waited: float, *, admitted: bool
) -> None:
    """Emit ``WaitEnded``: a call left a queue after ``waited`` seconds, admitted or not.

    Call only when ``ctx.listening``.
    """
    ctx.emit(
        WaitEnded(
            pipeline=ctx.pipeline,
            operation=ctx.operation,
            policy=policy,
            at=at,
            waited=waited,
            admitted=admitted,
        )
    )


def report_rejection(
    ctx: Context,
    policy: str,
    exc: BaseException,
    *,
    reason: str,
    retry_after: float | None,
    waited: float | None = None,
) -> None:
    """Emit a queue policy's refusal: ``WaitEnded(admitted=False)`` if it waited, then
    ``CallRejected``. Call only when ``ctx.listening``."""
    at = ctx.clock.now()
    if waited is not None:
        report_wait_ended(ctx, policy, at, waited, admitted=False)
    ctx.emit(
        CallRejected(
            pipeline=ctx.pipeline,
            operation=ctx.operation,
            policy=policy,
            at=at,
            reason=reason,
            retry_after=retry_after,
            error_type=error_type(exc),
        )
    )

"""``Fallback``: answer with a substitute when the call fails in a chosen way."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, final

from . import _validate as check
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
from ._events import Event, error_type
from ._exceptions import ConfigurationError
from ._pipeline import Call, PolicyDecorator

__all__ = ["Fallback", "FallbackUsed"]

logger = logging.getLogger("resilient")

_UNSET: Final[Any] = object()

DEFAULT_VERDICTS: Final = frozenset({Verdict.TRANSIENT, Verdict.FAILURE, Verdict.REJECTED})
"""The verdicts that fall back by default: the dependency failed, or a policy refused."""


@dataclass(slots=True, kw_only=True)
class FallbackUsed(Event):
    """The call failed with ``verdict`` (``error_type`` names the exception, ``None`` for a
    returned value such as an HTTP 503) and the fallback's answer replaced the outcome."""

    verdict: Verdict
    error_type: str | None


@final
class Fallback(PolicyDecorator):
    """Replace a failed call's outcome with a substitute (Polly's fallback strategy).

    Give exactly one of ``value`` (returned as is) or ``handler`` (a function, usually async,
    called with the failed ``Outcome``: ``outcome.exception`` or ``outcome.result``; what it
    returns, awaited if awaitable, is the call's result; what it raises propagates, chained to
    the original failure).

    The call falls back when its outcome's verdict is in ``verdicts`` (by default TRANSIENT,
    FAILURE and REJECTED: the dependency failed or a policy refused; a CLIENT_ERROR is the
    caller's fault and propagates), or when it raised an instance of one of ``exceptions``
    (whatever its verdict). Everything else propagates unchanged. Cancellation never falls
    back (only ``Exception`` is caught), and neither does a timeout of an *enclosing*
    ``Timeout``, which reaches this policy as a cancellation; place the fallback outside the
    timeouts it should cover.

    Args:
        value: the substitute result.
        handler: ``async (outcome) -> result`` (or a plain function), called on a failure
            that falls back.
        verdicts: verdicts that fall back (an iterable of ``Verdict``; empty: only
            ``exceptions`` do).
        exceptions: ``Exception`` subclasses that fall back whatever their verdict.
        classify: how outcomes are classified; ``None`` (default) uses the pipeline's.
        on_discard: called with a returned value being replaced (for example to release a
            response); may return an awaitable, which is awaited. Its exceptions are logged
            and ignored.
        name: the policy's name in events and telemetry (default ``"fallback"``).

    Raises:
        ConfigurationError: neither or both of ``value`` and ``handler``, or another invalid
            option (the message names it and the value).
    """

    __slots__ = (
        "_classifier",
        "_exceptions",
        "_handler",
        "_on_discard",
        "_value",
        "_verdicts",
        "name",
    )

    # Not deadline-aware: the handler is the user's code and may wait (a cache lookup), so an
    # enclosing Timeout keeps its own timer instead of leaving the timing to an inner one.
    deadline_aware: ClassVar[bool] = False

    def __init__(
        self,
        *,
        value: Any = _UNSET,
        handler: Callable[[Outcome], Awaitable[Any] | Any] | None = None,
        verdicts: Verdict | Iterable[Verdict] = DEFAULT_VERDICTS,
        exceptions: type[Exception] | Iterable[type[Exception]] = (),
        classify: ClassifierLike
        | Callable[[Outcome], Classification | Verdict | None]
        | Iterable[Any]
        | None = None,
        on_discard: Callable[[Any], object] | None = None,
        name: str = "fallback",
    ) -> None:
        if (value is _UNSET) == (handler is None):
            raise ConfigurationError(
                "Fallback.handler", handler, "give exactly one of value= or handler="
            )
        check.optional(check.callable_, "Fallback.handler", handler)
        self._value = value
        self._handler = handler
        given: Any = verdicts  # one Verdict or an iterable of them, checked below
        chosen = []
        items: Iterable[object] = (given,) if isinstance(given, Verdict) else given
        for verdict in items:
            if not isinstance(verdict, Verdict) or verdict is Verdict.SUCCESS:
                raise ConfigurationError(
                    "Fallback.verdicts", verdict, "expected failure verdicts (not SUCCESS)"
                )
            chosen.append(verdict)
        self._verdicts = frozenset(chosen)
        kinds: Any = exceptions  # one type or an iterable of them, checked below
        types: list[type[Exception]] = []
        members: Iterable[object] = (kinds,) if isinstance(kinds, type) else kinds
        for kind in members:
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                raise ConfigurationError(
                    "Fallback.exceptions",
                    kind,
                    "expected Exception subclasses (cancellation never falls back)",
                )
            types.append(kind)
        self._exceptions = tuple(types)
        if not self._verdicts and not self._exceptions:
            raise ConfigurationError(
                "Fallback.verdicts", verdicts, "no verdict and no exception type: it never applies"
            )
        self._classifier = as_classifier("Fallback.classify", classify)
        self._on_discard = check.optional(check.callable_, "Fallback.on_discard", on_discard)
        self.name = check.name("Fallback.name", name)

    @property
    def verdicts(self) -> frozenset[Verdict]:
        """The verdicts that fall back."""
        return self._verdicts

    @property
    def exceptions(self) -> tuple[type[Exception], ...]:
        """The exception types that fall back whatever their verdict."""
        return self._exceptions

    async def execute(self, call: Call, ctx: Context, /) -> Any:
        """Run ``call``; on a chosen failure return the fallback's answer instead."""
        classifier = self._classifier
        if classifier is None:
            classifier = ctx.classifier
        try:
            result = await call(ctx)
        except Exception as exc:
            verdict = self._verdict_of(classifier, exc)
            if verdict not in self._verdicts and not isinstance(exc, self._exceptions):
                raise
            self._used(ctx, verdict, exc)
            if self._handler is None:
                return self._value
            # Called inside the except block: what the handler raises is chained to `exc`.
            return await self._answer(Outcome(exception=exc))
        if not self._verdicts or classifier is DEFAULT_CLASSIFIER:
            return result  # the default classifier calls every returned value a success
        verdict = classifier.classify_result(result).verdict
        if verdict not in self._verdicts:
            return result
        self._used(ctx, verdict, None)
        if self._handler is None:
            await self._discard(result)
            return self._value
        answer = await self._answer(Outcome(result=result))
        if answer is not result:
            await self._discard(result)
        return answer

    async def _answer(self, outcome: Outcome) -> Any:
        handler = self._handler
        assert handler is not None
        answer = handler(outcome)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer

    @staticmethod
    def _verdict_of(classifier: ClassifierLike, exc: Exception) -> Verdict:
        if classifier is DEFAULT_CLASSIFIER:
            return default_exception_verdict(exc).verdict
        return classifier.classify_exception(exc).verdict

    def _used(self, ctx: Context, verdict: Verdict, exc: Exception | None) -> None:
        if ctx.listening:
            ctx.emit(
                FallbackUsed(
                    pipeline=ctx.pipeline,
                    operation=ctx.operation,
                    policy=self.name,
                    at=ctx.clock.now(),
                    verdict=verdict,
                    error_type=None if exc is None else error_type(exc),
                )
            )

    async def _discard(self, result: Any) -> None:
        on_discard = self._on_discard
        if on_discard is None:
            return
        try:
            outcome = on_discard(result)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            logger.exception(
                "resilient: %s on_discard %r raised; the fallback goes on", self.name, on_discard
            )

    def __repr__(self) -> str:
        what = f"value={self._value!r}" if self._handler is None else f"handler={self._handler!r}"
        verdicts = ", ".join(sorted(v.name for v in self._verdicts))
        return f"Fallback({what}, verdicts={{{verdicts}}}, name={self.name!r})"

"""Classification: one ``Verdict`` for every outcome, exception or returned value."""

from __future__ import annotations

import enum
import errno
import math
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, final, runtime_checkable

from ._exceptions import ConfigurationError, RejectedError, TimeoutExceeded

__all__ = [
    "Classification",
    "Classifier",
    "ClassifierLike",
    "Outcome",
    "Rule",
    "Verdict",
    "on_exception",
    "on_result",
]


@final
class Verdict(enum.Enum):
    """What an outcome means for the caller and for the dependency.

    ============  =======  ==========================  =================================
    verdict       retried  counts against dependency   examples
    ============  =======  ==========================  =================================
    SUCCESS       no       no (a success)              2xx, 3xx, a returned value
    CLIENT_ERROR  no       no (neutral)                400, 404, 422; bad input
    TRANSIENT     yes      yes (a failure)             500, 502, 503, 429; network; timeout
    FAILURE       no       yes (a failure)             501, 505; errors retrying cannot fix
    REJECTED      no       no (neutral)                a policy of ours refused the call
    ============  =======  ==========================  =================================
    """

    SUCCESS = "success"
    CLIENT_ERROR = "client_error"
    TRANSIENT = "transient"
    FAILURE = "failure"
    REJECTED = "rejected"

    @property
    def is_failure(self) -> bool:
        """True when the outcome counts against the dependency (a breaker failure)."""
        return self is Verdict.TRANSIENT or self is Verdict.FAILURE

    @property
    def is_retryable(self) -> bool:
        """True when a retry may help."""
        return self is Verdict.TRANSIENT


@final
@dataclass(frozen=True, slots=True)
class Classification:
    """A verdict plus an optional server hint of when to try again.

    ``retry_after`` is advisory: a hint of seconds from the server (``Retry-After``) or from a
    rejecting policy. Consumers must treat garbage (negative, NaN, inf) as absent.
    """

    verdict: Verdict
    retry_after: float | None = None


@final
@dataclass(frozen=True, slots=True)
class Outcome:
    """What a call produced: a returned value or an exception (then ``result`` is ``None``)."""

    result: object = None
    exception: BaseException | None = None


SUCCESS = Classification(Verdict.SUCCESS)
CLIENT_ERROR = Classification(Verdict.CLIENT_ERROR)
TRANSIENT = Classification(Verdict.TRANSIENT)
FAILURE = Classification(Verdict.FAILURE)
REJECTED = Classification(Verdict.REJECTED)
_BY_VERDICT = {c.verdict: c for c in (SUCCESS, CLIENT_ERROR, TRANSIENT, FAILURE, REJECTED)}


@runtime_checkable
class ClassifierLike(Protocol):
    """What policies need from a classifier: one method per kind of outcome."""

    def classify_result(self, result: object, /) -> Classification: ...

    def classify_exception(self, exc: BaseException, /) -> Classification: ...


class Rule(Protocol):
    """One classification rule; ``None`` means "not mine, ask the next rule"."""

    def match_exception(self, exc: BaseException, /) -> Classification | None: ...

    def match_result(self, result: object, /) -> Classification | None: ...

    @property
    def handles_exceptions(self) -> bool: ...

    @property
    def handles_results(self) -> bool: ...


def _as_classification(value: object, origin: str) -> Classification | None:
    if value is None or isinstance(value, Classification):
        return value
    if isinstance(value, Verdict):
        return _BY_VERDICT[value]
    raise TypeError(f"{origin} returned {value!r}; expected a Verdict, Classification or None")


def _hint(value: object) -> float | None:
    # Server hints are untrusted: anything that is not a finite non-negative number is absent.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0.0:
        return None
    return seconds


def _with_hint(
    verdict: Verdict, retry_after: Callable[[Any], object] | None, subject: object
) -> Classification:
    if retry_after is None:
        return _BY_VERDICT[verdict]
    try:
        hint = _hint(retry_after(subject))
    except Exception:
        hint = None
    return _BY_VERDICT[verdict] if hint is None else Classification(verdict, hint)


def _check_verdict(parameter: str, verdict: object) -> Verdict:
    if not isinstance(verdict, Verdict):
        raise ConfigurationError(parameter, verdict, "expected a resilient.Verdict")
    return verdict


@final
class _ExceptionRule:
    __slots__ = ("_retry_after", "_targets_rejections", "_types", "_verdict", "_when")

    handles_exceptions = True
    handles_results = False

    def __init__(
        self,
        types: tuple[type[BaseException], ...],
        verdict: Verdict,
        when: Callable[[Any], bool] | None,
        retry_after: Callable[[Any], object] | None,
    ) -> None:
        self._types = types
        self._verdict = verdict
        self._when = when
        self._retry_after = retry_after
        self._targets_rejections = any(issubclass(t, RejectedError) for t in types)

    def match_exception(self, exc: BaseException, /) -> Classification | None:
        if not isinstance(exc, self._types):
            return None
        if (
            isinstance(exc, RejectedError)
            and not isinstance(exc, TimeoutExceeded)
            and not self._targets_rejections
        ):
            # A broad rule (``Exception``) must not turn our own refusals into retries.
            return None
        if self._when is not None and not self._when(exc):
            return None
        return _with_hint(self._verdict, self._retry_after, exc)

    def match_result(self, result: object, /) -> Classification | None:
        return None


@final
class _ResultRule:
    __slots__ = ("_predicate", "_retry_after", "_verdict")

    handles_exceptions = False
    handles_results = True

    def __init__(
        self,
        predicate: Callable[[Any], bool],
        verdict: Verdict,
        retry_after: Callable[[Any], object] | None,
    ) -> None:
        self._predicate = predicate
        self._verdict = verdict
        self._retry_after = retry_after

    def match_exception(self, exc: BaseException, /) -> Classification | None:
        return None

    def match_result(self, result: object, /) -> Classification | None:
        if not self._predicate(result):
            return None
        return _with_hint(self._verdict, self._retry_after, result)


@final
class _FunctionRule:
    """A plain ``(Outcome) -> Verdict | Classification | None`` function as a rule."""

    __slots__ = ("_fn",)

    handles_exceptions = True
    handles_results = True

    def __init__(self, fn: Callable[[Outcome], Classification | Verdict | None]) -> None:
        self._fn = fn

    def match_exception(self, exc: BaseException, /) -> Classification | None:
        return _as_classification(self._fn(Outcome(exception=exc)), repr(self._fn))

    def match_result(self, result: object, /) -> Classification | None:
        return _as_classification(self._fn(Outcome(result=result)), repr(self._fn))


def on_exception(
    *types: type[BaseException],
    verdict: Verdict,
    when: Callable[[Any], bool] | None = None,
    retry_after: Callable[[Any], object] | None = None,
) -> Rule:
    """A rule for exceptions of the given types.

    Args:
        *types: exception classes to match (``isinstance``).
        verdict: the verdict for a match.
        when: optional predicate on the exception; the rule matches only when it is true.
        retry_after: optional function of the exception returning seconds to wait before a
            retry (a server hint); invalid results are ignored.

    A rule whose types do not name a ``RejectedError`` subclass never matches the library's
    own rejections (open circuit, full bulkhead, rate limited), so ``on_exception(Exception,
    ...)`` cannot make a retry hammer an open breaker.

    Raises:
        ConfigurationError: no types, a non-exception type, or a bad verdict.
    """
    if not types:
        raise ConfigurationError("on_exception.types", types, "name at least one exception type")
    for t in types:
        candidate: object = t
        if not (isinstance(candidate, type) and issubclass(candidate, BaseException)):
            raise ConfigurationError("on_exception.types", t, "expected an exception class")
    _check_verdict("on_exception.verdict", verdict)
    if when is not None and not callable(when):
        raise ConfigurationError("on_exception.when", when, "expected a callable")
    if retry_after is not None and not callable(retry_after):
        raise ConfigurationError("on_exception.retry_after", retry_after, "expected a callable")
    return _ExceptionRule(types, verdict, when, retry_after)


def on_result(
    predicate: Callable[[Any], bool],
    *,
    verdict: Verdict,
    retry_after: Callable[[Any], object] | None = None,
) -> Rule:
    """A rule for returned values for which ``predicate(result)`` is true.

    Args:
        predicate: test on the returned value (for example ``lambda r: r.status_code == 503``).
        verdict: the verdict for a match.
        retry_after: optional function of the result returning seconds to wait before a retry.

    Raises:
        ConfigurationError: a non-callable predicate or a bad verdict.
    """
    if not callable(predicate):
        raise ConfigurationError("on_result.predicate", predicate, "expected a callable")
    _check_verdict("on_result.verdict", verdict)
    if retry_after is not None and not callable(retry_after):
        raise ConfigurationError("on_result.retry_after", retry_after, "expected a callable")
    return _ResultRule(predicate, verdict, retry_after)


_NETWORK_ERRNOS = frozenset(
    getattr(errno, code)
    for code in (
        "ECONNREFUSED",
        "ECONNRESET",
        "ECONNABORTED",
        "EPIPE",
        "ETIMEDOUT",
        "ENETUNREACH",
        "ENETDOWN",
        "ENETRESET",
        "EHOSTUNREACH",
        "EHOSTDOWN",
        "EAGAIN",
    )
    if hasattr(errno, code)
)


# A tuple built once: `A | B | C` inside the function would build a union object per call.
_TRANSIENT_TYPES = (TimeoutError, ConnectionError, socket.gaierror)


def default_exception_verdict(exc: BaseException) -> Classification:
    """The documented default for exceptions no rule matched.

    - the library's own rejections (``RejectedError`` except ``TimeoutExceeded``): REJECTED;
    - timeouts (``TimeoutError``, including ``TimeoutExceeded``): TRANSIENT;
    - network errors (``ConnectionError``, ``socket.gaierror``, ``OSError`` with a network
      errno, anyio's ``BrokenResourceError``): TRANSIENT;
    - anything else: FAILURE.
    """
    if isinstance(exc, RejectedError) and not isinstance(exc, TimeoutExceeded):
        return REJECTED
    if isinstance(exc, _TRANSIENT_TYPES):
        return TRANSIENT
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
        return TRANSIENT
    if type(exc).__name__ == "BrokenResourceError" and type(exc).__module__.startswith("anyio"):
        return TRANSIENT
    return FAILURE


@final
class Classifier:
    """Composable classification rules; the first rule that matches wins.

    Rules not matching fall through to the defaults: returned values are SUCCESS, exceptions
    follow ``default_exception_verdict`` (timeouts and network errors TRANSIENT, the library's
    own rejections REJECTED, everything else FAILURE).

    Args:
        *rules: rules from ``on_exception`` / ``on_result``, or plain functions of an
            ``Outcome`` returning a ``Verdict``, a ``Classification`` or ``None``.

    Raises:
        ConfigurationError: a rule that is neither.
    """

    __slots__ = ("_exception_rules", "_result_rules", "_rules")

    def __init__(self, *rules: Rule | Callable[[Outcome], Classification | Verdict | None]) -> None:
        normalized: list[Rule] = []
        for rule in rules:
            if isinstance(rule, _ExceptionRule | _ResultRule | _FunctionRule):
                normalized.append(rule)
            elif hasattr(rule, "match_exception") and hasattr(rule, "match_result"):
                normalized.append(rule)  # type: ignore[arg-type]
            elif callable(rule):
                normalized.append(_FunctionRule(rule))
            else:
                raise ConfigurationError("Classifier.rules", rule, "expected a rule or a callable")
        self._rules = tuple(normalized)
        self._exception_rules = tuple(r for r in normalized if r.handles_exceptions)
        self._result_rules = tuple(r for r in normalized if r.handles_results)

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules, in the order they are tried."""
        return self._rules

    def classify_result(self, result: object, /) -> Classification:
        """Classify a returned value."""
        for rule in self._result_rules:
            found = rule.match_result(result)
            if found is not None:
                return found
        return SUCCESS

    def classify_exception(self, exc: BaseException, /) -> Classification:
        """Classify a raised exception."""
        for rule in self._exception_rules:
            found = rule.match_exception(exc)
            if found is not None:
                return found
        return default_exception_verdict(exc)

    def __call__(self, outcome: Outcome, /) -> Classification:
        """Classify an ``Outcome`` (exception if set, else result)."""
        if outcome.exception is not None:
            return self.classify_exception(outcome.exception)
        return self.classify_result(outcome.result)

    def extended(
        self, *rules: Rule | Callable[[Outcome], Classification | Verdict | None]
    ) -> Classifier:
        """A new classifier trying ``rules`` first, then this one's."""
        return Classifier(*rules, *self._rules)

    def __repr__(self) -> str:
        return f"Classifier({len(self._rules)} rules)"


DEFAULT_CLASSIFIER = Classifier()


def as_classifier(
    parameter: str,
    value: ClassifierLike
    | Callable[[Outcome], Classification | Verdict | None]
    | Iterable[Any]
    | None,
) -> ClassifierLike | None:
    """Normalize a ``classify=`` option: a classifier, a rule function, or rules."""
    if value is None:
        return None
    if hasattr(value, "classify_result") and hasattr(value, "classify_exception"):
        return value  # type: ignore[return-value]
    if callable(value):
        return Classifier(value)
    if isinstance(value, list | tuple):
        return Classifier(*value)
    raise ConfigurationError(parameter, value, "expected a Classifier, rules or a function")

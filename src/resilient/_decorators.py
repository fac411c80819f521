"""Standalone decorators: ``@resilient.retry(...)``, ``@resilient.circuit_breaker(...)``, ...

Each builds its policy when it decorates, so every decorated function gets its own state (one
breaker, one bucket, one set of slots per function) unless a policy instance is passed in,
which is then shared by every function it decorates. Options are checked at decoration time.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from ._bulkhead import Bulkhead
from ._circuit import CircuitBreaker
from ._clock import Clock
from ._events import Listener
from ._exceptions import ConfigurationError
from ._pipeline import Pipeline, Policy
from ._ratelimit import RateLimiter
from ._retry import Retry
from ._timeout import Timeout

__all__ = ["AsyncDecorator", "bulkhead", "circuit_breaker", "rate_limit", "retry", "timeout"]

T = TypeVar("T")
P = ParamSpec("P")
C = TypeVar("C")


class AsyncDecorator(Protocol):
    """What the standalone decorators return: decorates an async function, method,
    ``classmethod`` or ``staticmethod``, keeping its signature."""

    @overload
    def __call__(
        self, fn: classmethod[C, P, Awaitable[T]], /
    ) -> classmethod[C, P, Coroutine[Any, Any, T]]: ...
    @overload
    def __call__(
        self, fn: staticmethod[P, Awaitable[T]], /
    ) -> staticmethod[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]: ...


class _Decorator:
    """Builds a fresh policy (or uses the given one) for each function it decorates."""

    __slots__ = ("_clock", "_listeners", "_make", "_telemetry")

    def __init__(
        self,
        make: Callable[[], Policy],
        *,
        clock: Clock | None,
        listeners: Iterable[Listener],
        telemetry: bool,
    ) -> None:
        make()  # validate the options now, at decoration time, naming the bad one
        self._make = make
        self._clock = clock
        self._listeners = tuple(listeners)
        self._telemetry = telemetry

    def __call__(self, fn: Any, /) -> Any:
        policy = self._make()
        pipeline = Pipeline(
            policy,
            name=policy.name,
            clock=self._clock,
            listeners=self._listeners,
            telemetry=self._telemetry,
        )
        return pipeline.wrap(fn)


def _decoratable(value: object) -> bool:
    """Whether ``value`` is what a bare ``@decorator`` (no parentheses) receives."""
    return (
        inspect.isfunction(value)
        or inspect.ismethod(value)
        or isinstance(value, classmethod | staticmethod)
        or inspect.iscoroutinefunction(value)
    )


def _bare_or_factory(
    kind: type[Any],
    given: Any,
    options: dict[str, Any],
    *,
    clock: Clock | None,
    listeners: Iterable[Listener],
    telemetry: bool,
) -> Any:
    """The decorator, or, for a bare ``@resilient.retry``, the decorated function itself
    (with the policy's defaults, as tenacity's and stamina's bare decorators do)."""
    if given is not None and not isinstance(given, kind) and _decoratable(given):
        decorator = _Decorator(kind, clock=clock, listeners=listeners, telemetry=telemetry)
        return decorator(given)
    return _Decorator(
        _given(kind, given, options), clock=clock, listeners=listeners, telemetry=telemetry
    )


def _given(kind: type[Any], instance: object, options: dict[str, Any]) -> Callable[[], Any]:
    if instance is None:
        return lambda: kind(**options)
    if not isinstance(instance, kind):
        raise ConfigurationError(
            f"{kind.__name__}.instance", instance, f"expected a {kind.__name__}"
        )
    if options:
        raise ConfigurationError(
            f"{kind.__name__}.instance",
            instance,
            "pass either an instance or options, not both",
        )
    return lambda: instance


@overload
def retry(
    policy: Retry | None = None,
    /,
    *,
    clock: Clock | None = None,
    listeners: Iterable[Listener] = (),
    telemetry: bool = True,
    **options: Any,
) -> AsyncDecorator: ...
@overload
def retry(fn: classmethod[C, P, Awaitable[T]], /) -> classmethod[C, P, Coroutine[Any, Any, T]]: ...
@overload
def retry(fn: staticmethod[P, Awaitable[T]], /) -> staticmethod[P, Coroutine[Any, Any, T]]: ...
@overload
def retry(fn: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]: ...


def retry(
    policy: Any = None,
    /,
    *,
    clock: Clock | None = None,
    listeners: Iterable[Listener] = (),
    telemetry: bool = True,
    **options: Any,
) -> Any:
    """Retry the decorated async function: ``@resilient.retry(attempts=4, base_delay=0.2)``.

    Args:
        policy: a ``Retry`` to use (shared); or none, and ``options`` build one.
        clock: the pipeline's clock (default: the event loop's; ``FakeClock`` in tests).
        listeners: event listeners.
        telemetry: as for ``Pipeline``.
        **options: keyword options of ``Retry`` (``attempts``, ``base_delay``, ...).

    Raises:
        ConfigurationError: an invalid option, at decoration time.
        TypeError: the decorated function is not async (when decorating).
    """
    return _bare_or_factory(
        Retry, policy, options, clock=clock, listeners=listeners, telemetry=telemetry
    )


@overload
def circuit_breaker(
    breaker: CircuitBreaker | None = None,
    /,
    *,
    clock: Clock | None = None,
    listeners: Iterable[Listener] = (),
    telemetry: bool = True,
    **options: Any,
) -> AsyncDecorator: ...
@overload
def circuit_breaker(
    fn: classmethod[C, P, Awaitable[T]], /
) -> classmethod[C, P, Coroutine[Any, Any, T]]: ...
@overload
def circuit_breaker(
    fn: staticmethod[P, Awaitable[T]], /
) -> staticmethod[P, Coroutine[Any, Any, T]]: ...
@overload
def circuit_breaker(fn: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]: ...


def circuit_breaker(
    breaker: Any = None,
    /,
    *,
    clock: Clock | None = None,
    listeners: Iterable[Listener] = (),
    telemetry: bool = True,
    **options: Any,
) -> Any:
    """Guard the decorated function with a circuit breaker.

    Each decorated function gets its own breaker, built from ``options``; pass a
    ``CircuitBreaker`` instance to share one between functions.

    Args:
        breaker: a ``CircuitBreaker`` to share; or none, and ``options`` build one per function.
        clock: the pipeline's clock.
        listeners: event listeners.
        telemetry: as for ``Pipeline``.
        **options: keyword options of ``CircuitBreaker`` (``failure_rate``, ``open_for``, ...).

    Raises:
        ConfigurationError: an invalid option, at decoration time.
    """
    return _bare_or_factory(
        CircuitBreaker, breaker, options, clock=clock, listeners=listeners, telemetry=telemetry
    )


def timeout(
    seconds: float,
    /,
    *,
    name: str = "timeout",
    clock: Clock | None = None,
    listeners: Iterable[Listener] = (),
    telemetry: bool = True,
) -> AsyncDecorator:
    """Cancel the decorated call after ``seconds``: ``@resilient.timeout(2.0)``.

    Raises:
        ConfigurationError: ``seconds`` is not a positive number, at decoration time (a bare
            ``@resilient.timeout`` has no seconds: the message shows the fix).
    """
    if _decoratable(seconds):
        raise ConfigurationError(
            "timeout.seconds",
            seconds,
            "@resilient.timeout needs the time allowed: write @resilient.timeout(2.0) "
            "(seconds), not a bare @resilient.timeout",
        )
    return _Decorator(
        lambda: Timeout(seconds, name=name),
        clock=clock,
        listeners=listeners,
        telemetry=telemetry,
    )


@overload
def bulkhead(
    policy: Bulkhead | None = None,
    /,
    *,
    clock: Clock | None = None,
    listeners: Iterable[Listener] = (),
    telemetry: bool = True,
    **options: Any,
) -> AsyncDecorator: ...
@overload
def bulkhead(
    fn: classmethod[C, P, Awaitable[T]], /
) -> classmethod[C, P, Coroutine[Any, Any, T]]: ...
@overload
def bulkhead(fn: staticmethod[P, Awaitable[T]], /) -> staticmethod[P, Coroutine[Any, Any, T]]: ...
@overload
def bulkhead(fn: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]: ...


def bulkhead(
    policy: Any = None,
    /,
    *,
    clock: Clock | None = None,
    listeners: Iterable[Listener] = (),
    telemetry: bool = True,
    **options: Any,
) -> Any:
    """Limit concurrent calls of the decorated function: ``@resilient.bulkhead(max_concurrent=8)``.

    Each decorated function gets its own slots unless a ``Bulkhead`` instance is passed.

    Raises:
        ConfigurationError: an invalid option, at decoration time.
    """
    return _bare_or_factory(
        Bulkhead, policy, options, clock=clock, listeners=listeners, telemetry=telemetry
    )


@overload
def rate_limit(
    limiter: RateLimiter | None = None,
    /,
    *,
    clock: Clock | None = None,
    listeners: Iterable[Listener] = (),
    telemetry: bool = True,
    **options: Any,
) -> AsyncDecorator: ...
@overload
def rate_limit(
    fn: classmethod[C, P, Awaitable[T]], /
) -> classmethod[C, P, Coroutine[Any, Any, T]]: ...
@overload
def rate_limit(fn: staticmethod[P, Awaitable[T]], /) -> staticmethod[P, Coroutine[Any, Any, T]]: ...
@overload
def rate_limit(fn: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]: ...


def rate_limit(
    limiter: Any = None,
    /,
    *,
    clock: Clock | None = None,
    listeners: Iterable[Listener] = (),
    telemetry: bool = True,
    **options: Any,
) -> Any:
    """Rate-limit calls of the decorated function: ``@resilient.rate_limit(rate=10, burst=5)``.

    Each decorated function gets its own bucket unless a ``RateLimiter`` instance is passed.

    Raises:
        ConfigurationError: an invalid option, at decoration time.
    """
    return _bare_or_factory(
        RateLimiter, limiter, options, clock=clock, listeners=listeners, telemetry=telemetry
    )

"""The core abstraction: ``Policy`` and the ``Pipeline`` that composes policies."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, ParamSpec, Protocol, TypeVar, final, overload, runtime_checkable

from . import _validate as check
from ._classify import DEFAULT_CLASSIFIER, ClassifierLike, Outcome, Verdict, as_classifier
from ._classify import Classification as _Classification
from ._clock import SYSTEM_CLOCK, Clock
from ._context import Context, default_random
from ._events import CallObserver, Listener, report_listener_error
from ._exceptions import ConfigurationError

__all__ = ["Call", "Pipeline", "Policy"]

T = TypeVar("T")
P = ParamSpec("P")
C = TypeVar("C")

Call = Callable[[Context], Awaitable[Any]]
"""The next step of a chain: run the rest of the pipeline (and the user's function)."""


@runtime_checkable
class Policy(Protocol):
    """A resilience policy: runs ``call`` (the rest of the chain) under its rules.

    Implementations catch ``Exception``, never ``BaseException``: cancellation always
    propagates untouched.
    """

    name: str

    async def execute(self, call: Call, ctx: Context, /) -> Any: ...


DirectHooks = tuple[
    Callable[[], Any],
    Callable[[Any, Any], bool],
    Callable[[Any, Any, Context], None],
    Callable[[Any, Exception, Context], None],
]
"""What a policy's optional ``_direct(clock, classifier)`` returns: ``(enter, leave, complete,
fail)``, synchronous hooks that let a pipeline whose only policy it is await the function
itself. ``enter()`` returns a token, or ``None`` to run the full chain; after the function
returned, ``leave(token, result)`` returns whether it handled the outcome, and if not the
pipeline calls ``complete(token, result, ctx)``; when it raised an ``Exception``, the pipeline
calls ``fail(token, exc, ctx)`` and re-raises. A ``BaseException`` (cancellation) calls nothing:
a policy offering hooks holds nothing that would need releasing."""

ObserverFactory = Callable[["Pipeline"], CallObserver | None]
_observer_factory: ObserverFactory | None = None


def install_observer_factory(factory: ObserverFactory | None) -> None:
    """Set what ``Pipeline(telemetry=True)`` uses to observe calls (the telemetry layer)."""
    global _observer_factory  # noqa: PLW0603 - a process-wide seam set once at import
    _observer_factory = factory


def _invoke(ctx: Context) -> Awaitable[Any]:
    # The innermost step: the user's function. A plain function returning the awaitable saves
    # a coroutine frame per attempt; every policy awaits what `call(ctx)` returns at once.
    return ctx.fn(*ctx.args, **ctx.kwargs)  # type: ignore[misc,no-any-return]


def _bind(policy: Policy, inner: Call, later: tuple[Policy, ...]) -> Call:
    bind = getattr(policy, "_bind", None)
    if bind is not None:
        return bind(inner, later)  # type: ignore[no-any-return]
    return functools.partial(policy.execute, inner)


def _compose(policies: tuple[Policy, ...], innermost: Call) -> Call:
    call = innermost
    for index in range(len(policies) - 1, -1, -1):
        call = _bind(policies[index], call, policies[index + 1 :])
    return call


def _check_async_callable(fn: object, where: str) -> None:
    target = fn.__func__ if isinstance(fn, classmethod | staticmethod) else fn
    if inspect.isasyncgenfunction(target):
        raise TypeError(
            f"{where} needs an async function returning a value; {target!r} is an async "
            "generator function, whose calls cannot be retried or timed as one unit"
        )
    if inspect.iscoroutinefunction(target):
        return
    call = getattr(target, "__call__", None)  # noqa: B004 - async __call__ on an object
    if call is not None and inspect.iscoroutinefunction(call) and not inspect.isfunction(target):
        return
    raise TypeError(
        f"{where} needs an async function (async def); {target!r} is not one. "
        "Wrap blocking code with anyio.to_thread.run_sync inside an async function."
    )


@final
class Pipeline:
    """A chain of policies run around an async callable. A pipeline is itself a ``Policy``.

    **The first policy listed is the outermost**: ``Pipeline(A, B, C)`` runs ``A(B(C(fn)))``.
    The recommended order (what ``resilient.standard()`` builds) is
    ``Timeout(total) -> Retry -> CircuitBreaker -> RateLimiter -> Bulkhead -> Timeout(attempt)``.
    The chain is composed once, here; each call only creates its ``Context``.

    Args:
        *policies: the policies, outermost first.
        name: the pipeline's name (a bounded telemetry attribute).
        clock: time source for every policy (default: the running event loop's clock).
        random: random source ``() -> float`` for jitter (default: a private generator).
        classify: how outcomes are classified (default: ``Classifier()`` defaults).
        listeners: callables receiving every ``Event`` of every call.
        telemetry: ``True`` (default) reports through OpenTelemetry when the telemetry layer is
            installed; ``False`` turns it off; a ``resilient.Telemetry(...)`` (any callable
            taking the pipeline and returning an observer) or an observer object replaces it.

    Raises:
        ConfigurationError: an invalid option or something that is not a policy.
    """

    __slots__ = (
        "_chain",
        "_classifier",
        "_clock",
        "_hooks",
        "_listeners",
        "_name",
        "_observer",
        "_policies",
        "_random",
        "_recording",
        "name",
    )

    def __init__(
        self,
        *policies: Policy,
        name: str = "default",
        clock: Clock | None = None,
        random: Callable[[], float] | None = None,
        classify: ClassifierLike
        | Callable[[Outcome], _Classification | Verdict | None]
        | Iterable[Any]
        | None = None,
        listeners: Iterable[Listener] = (),
        telemetry: bool | CallObserver | ObserverFactory = True,
    ) -> None:
        self.name = self._name = check.name("Pipeline.name", name)
        for index, policy in enumerate(policies):
            if not callable(getattr(policy, "execute", None)) or not isinstance(
                getattr(policy, "name", None), str
            ):
                raise ConfigurationError(
                    f"Pipeline.policies[{index}]", policy, "expected a policy (name and execute())"
                )
        self._policies = tuple(policies)
        if clock is None:
            clock = SYSTEM_CLOCK
        elif not (
            callable(getattr(clock, "now", None)) and callable(getattr(clock, "sleep", None))
        ):
            raise ConfigurationError(
                "Pipeline.clock", clock, "expected a Clock (now() and sleep())"
            )
        self._clock: Clock = clock
        self._random = check.callable_("Pipeline.random", random or default_random)
        self._classifier: ClassifierLike = (
            as_classifier("Pipeline.classify", classify) or DEFAULT_CLASSIFIER
        )
        listeners = tuple(listeners)
        for listener in listeners:
            check.callable_("Pipeline.listeners", listener)
        self._listeners = listeners
        observer: CallObserver | None
        if telemetry is True:
            observer = None
            if _observer_factory is not None:
                try:
                    observer = _observer_factory(self)
                except Exception:
                    report_listener_error(_observer_factory)
        elif telemetry is False:
            observer = None
        elif all(callable(getattr(telemetry, m, None)) for m in ("start", "end", "event")):
            observer = telemetry  # type: ignore[assignment]
        elif callable(telemetry):
            observer = telemetry(self)
        else:
            raise ConfigurationError(
                "Pipeline.telemetry",
                telemetry,
                "expected True, False, a Telemetry or a CallObserver",
            )
        self._observer = observer
        self._chain: Call | None = (
            _compose(self._policies, _invoke) if self._policies or observer is not None else None
        )
        # One policy offering synchronous hooks, and nobody observing calls: `call()` and
        # `wrap()` await the function themselves and build a Context only when an outcome
        # needs one (about half the cost of a single-policy pipeline). With telemetry on,
        # that holds while the observer says nothing would be recorded (no OpenTelemetry SDK
        # configured): its `recording()` probe is checked on every call.
        self._hooks: DirectHooks | None = None
        self._recording: Callable[[], bool] | None = None
        if len(self._policies) == 1 and not listeners:
            direct = getattr(self._policies[0], "_direct", None)
            recording = None if observer is None else getattr(observer, "recording", None)
            if direct is not None and (observer is None or callable(recording)):
                self._hooks = direct(self._clock, self._classifier)
                self._recording = recording

    @property
    def policies(self) -> tuple[Policy, ...]:
        """The policies, outermost first."""
        return self._policies

    @property
    def clock(self) -> Clock:
        """The clock every policy of this pipeline uses."""
        return self._clock

    @property
    def classifier(self) -> ClassifierLike:
        """The pipeline's classifier."""
        return self._classifier

    @property
    def observer(self) -> CallObserver | None:
        """The telemetry observer, or ``None`` when telemetry is off."""
        return self._observer

    def context(
        self,
        fn: Callable[..., Awaitable[Any]] | None = None,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        operation: str | None = None,
        key: str | None = None,
        classify: ClassifierLike | None = None,
    ) -> Context:
        """A fresh ``Context`` for one call (for integrations and custom runners)."""
        if operation is None:
            operation = getattr(fn, "__qualname__", None) or "call"
        return Context(
            self._name,
            operation,
            self._clock,
            self._random,
            classify if classify is not None else self._classifier,
            fn,
            args,
            kwargs,
            key,
            self._listeners,
            self._observer,
        )

    def _quiet_context(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        operation: str | None,
    ) -> Context:
        # The context the direct path builds when an outcome needs one: nobody observes the
        # call (no listener; an observer, if any, records nothing), so no event is built.
        ctx = self.context(fn, args, kwargs, operation=operation)
        ctx.observer = None
        ctx.listening = False
        return ctx

    async def run(self, ctx: Context) -> Any:
        """Run the whole chain for a prepared ``ctx`` (see ``context()``)."""
        chain = self._chain
        if chain is None:
            return await _invoke(ctx)
        if self._observer is None:
            return await chain(ctx)
        return await self._observed(chain, ctx)

    async def _observed(self, chain: Call, ctx: Context) -> Any:
        observer = self._observer
        assert observer is not None
        try:
            observer.start(ctx)
        except Exception:
            report_listener_error(observer)
        try:
            result = await chain(ctx)
        except BaseException as exc:
            try:
                observer.end(ctx, exc, None)
            except Exception:
                report_listener_error(observer)
            raise
        try:
            observer.end(ctx, None, result)
        except Exception:
            report_listener_error(observer)
        return result

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``await fn(*args, **kwargs)`` through the pipeline and return its result.

        Raises:
            Exception: whatever the call finally raised (the last original exception when
                retries ran out), or a ``RejectedError`` when a policy refused the call.
        """
        chain = self._chain
        if chain is None:
            return await fn(*args, **kwargs)
        direct = self._hooks
        if direct is not None and (self._recording is None or not self._recording()):
            enter, leave, complete, fail = direct
            token = enter()
            if token is not None:
                try:
                    value: T = await fn(*args, **kwargs)
                except Exception as exc:
                    fail(token, exc, self._quiet_context(fn, args, kwargs, None))
                    raise
                if not leave(token, value):
                    complete(token, value, self._quiet_context(fn, args, kwargs, None))
                return value
        ctx = Context(
            self._name,
            getattr(fn, "__qualname__", None) or "call",
            self._clock,
            self._random,
            self._classifier,
            fn,
            args,
            kwargs,
            None,
            self._listeners,
            self._observer,
        )
        observer = self._observer
        if observer is None:
            result: T = await chain(ctx)
            return result
        # The observed path, inlined (not `await self._observed(...)`): telemetry is on by
        # default, so this is every user's hot path and a coroutine frame is ~0.3 us.
        try:
            observer.start(ctx)
        except Exception:
            report_listener_error(observer)
        try:
            result = await chain(ctx)
        except BaseException as exc:
            try:
                observer.end(ctx, exc, None)
            except Exception:
                report_listener_error(observer)
            raise
        try:
            observer.end(ctx, None, result)
        except Exception:
            report_listener_error(observer)
        return result

    @overload
    def wrap(
        self, fn: classmethod[C, P, Awaitable[T]]
    ) -> classmethod[C, P, Coroutine[Any, Any, T]]: ...
    @overload
    def wrap(
        self, fn: staticmethod[P, Awaitable[T]]
    ) -> staticmethod[P, Coroutine[Any, Any, T]]: ...
    @overload
    def wrap(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def wrap(self, fn: Any) -> Any:
        """Decorate an async function so every call runs through this pipeline.

        Works on functions, methods, ``classmethod`` and ``staticmethod`` objects (either
        decorator order) and objects with an ``async def __call__``. The signature (for type
        checkers), name, docstring and ``__wrapped__`` are kept. Each call runs ``fn`` once
        per attempt the policies admit; a refused call never calls it (no coroutine is
        created, so none is left un-awaited).

        Raises:
            TypeError: ``fn`` is not an async function (a sync function or an async
                generator), at decoration time.
        """
        if isinstance(fn, classmethod):
            return classmethod(self.wrap(fn.__func__))
        if isinstance(fn, staticmethod):
            return staticmethod(self.wrap(fn.__func__))
        return _wrap(self, fn, f"Pipeline({self._name!r}).wrap")

    async def execute(self, call: Call, ctx: Context, /) -> Any:
        """Run this pipeline's policies around ``call`` inside another pipeline's call."""
        if not self._policies:
            return await call(ctx)
        return await _compose(self._policies, call)(ctx)

    def __repr__(self) -> str:
        inner = ", ".join(type(p).__name__ for p in self._policies)
        return f"Pipeline({inner}, name={self._name!r})"


class PolicyDecorator:
    """Mixin giving a policy the decorator form: ``@Retry(...)`` or ``policy.wrap(fn)``.

    The decorated function runs through ``Pipeline(policy, name=policy.name)``; the policy
    instance (and so its state: a breaker's window, a bucket's tokens) is shared by every
    function it decorates.
    """

    __slots__ = ()

    name: str

    @overload
    def wrap(
        self, fn: classmethod[C, P, Awaitable[T]]
    ) -> classmethod[C, P, Coroutine[Any, Any, T]]: ...
    @overload
    def wrap(
        self, fn: staticmethod[P, Awaitable[T]]
    ) -> staticmethod[P, Coroutine[Any, Any, T]]: ...
    @overload
    def wrap(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def wrap(self, fn: Any) -> Any:
        """Decorate an async function with this policy alone (see ``Pipeline.wrap``).

        Raises:
            TypeError: ``fn`` is not an async function, at decoration time.
        """
        if isinstance(fn, classmethod):
            return classmethod(self.wrap(fn.__func__))
        if isinstance(fn, staticmethod):
            return staticmethod(self.wrap(fn.__func__))
        where = f"{type(self).__name__}({self.name!r})"
        return _wrap(Pipeline(self, name=self.name), fn, where)  # type: ignore[arg-type]

    @overload
    def __call__(
        self, fn: classmethod[C, P, Awaitable[T]]
    ) -> classmethod[C, P, Coroutine[Any, Any, T]]: ...
    @overload
    def __call__(
        self, fn: staticmethod[P, Awaitable[T]]
    ) -> staticmethod[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __call__(self, fn: Any) -> Any:
        """Same as ``wrap``: lets the policy be used as ``@policy``."""
        return self.wrap(fn)


def _wrap(pipeline: Pipeline, fn: Callable[P, Awaitable[T]], where: str) -> Any:
    _check_async_callable(fn, where)
    operation = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    # A pipeline is immutable: everything a call needs is looked up once, here. The wrapper
    # builds its Context positionally, as Pipeline.call does (no context()/run() layers).
    name, clock, random, classifier = (
        pipeline._name,
        pipeline._clock,
        pipeline._random,
        pipeline._classifier,
    )
    listeners, observer, observed = pipeline._listeners, pipeline._observer, pipeline._observed
    chain = pipeline._chain if pipeline._chain is not None else _invoke

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        ctx = Context(
            name, operation, clock, random, classifier, fn, args, kwargs, None, listeners, observer
        )
        if observer is None:
            result: T = await chain(ctx)
        else:
            result = await observed(chain, ctx)
        return result

    direct = pipeline._hooks
    if direct is None:
        return wrapper
    enter, leave, complete, fail = direct
    recording = pipeline._recording
    quiet_context = pipeline._quiet_context

    @functools.wraps(fn)
    async def direct_wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        if recording is None or not recording():
            token = enter()
            if token is not None:
                try:
                    result: T = await fn(*args, **kwargs)
                except Exception as exc:
                    fail(token, exc, quiet_context(fn, args, kwargs, operation))
                    raise
                if not leave(token, result):
                    complete(token, result, quiet_context(fn, args, kwargs, operation))
                return result
        # Not admitted by the hooks, or telemetry records: the general path.
        return await wrapper(*args, **kwargs)

    return direct_wrapper

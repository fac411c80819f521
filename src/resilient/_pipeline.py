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

__all__ = ["Call", "ComposablePolicy", "Pipeline", "Policy", "compose", "deadline_aware"]

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

    Two optional members let the pipeline specialise a policy when it is built; the built-in
    policies use nothing else (see docs/pipeline.md, "Writing a policy"):

    - ``compose(inner, after) -> Call`` (``ComposablePolicy``): the step to place in the
      chain around ``inner``. Called once, when a pipeline is built, with ``after`` the
      policies that run inside this one (nested pipelines included). Without it the step is
      ``functools.partial(policy.execute, inner)``.
    - ``deadline_aware: bool`` (a class attribute): ``True`` promises that every wait the
      policy does (sleeps, queues) is bounded by ``ctx.deadline``. An outer ``Timeout`` then
      lets an inner ``Timeout`` arm the only timer of the attempt.
    """

    name: str

    async def execute(self, call: Call, ctx: Context, /) -> Any: ...


@runtime_checkable
class ComposablePolicy(Policy, Protocol):
    """A ``Policy`` that builds its own chain step once, when a pipeline is composed."""

    def compose(self, inner: Call, after: tuple[Policy, ...], /) -> Call:
        """The step running ``inner`` under this policy (``after``: the policies inside)."""
        ...


def deadline_aware(policy: object) -> bool:
    """Whether ``policy`` promises that its waits are bounded by ``ctx.deadline``."""
    return getattr(policy, "deadline_aware", False) is True


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


def compose(policies: tuple[Policy, ...], innermost: Call, after: tuple[Policy, ...] = ()) -> Call:
    """The chain running ``innermost`` under ``policies`` (outermost first), built once.

    Each policy is asked for its step by ``compose(inner, after)`` when it has one, with the
    policies that run inside it (``after`` extends that list beyond ``policies``).
    """
    call = innermost
    for index in range(len(policies) - 1, -1, -1):
        policy = policies[index]
        own = getattr(policy, "compose", None)
        if own is None:
            call = functools.partial(policy.execute, call)
        else:
            call = own(call, policies[index + 1 :] + after)
    return call


def _observer_for(
    pipeline: Pipeline, telemetry: bool | CallObserver | ObserverFactory
) -> CallObserver | None:
    """The observer ``Pipeline(telemetry=...)`` asks for (see ``Pipeline``).

    Raises:
        ConfigurationError: ``telemetry`` is none of the accepted kinds.
    """
    if telemetry is False:
        return None
    if telemetry is True:
        if _observer_factory is None:
            return None
        try:
            return _observer_factory(pipeline)
        except Exception:
            report_listener_error(_observer_factory)
            return None
    if all(callable(getattr(telemetry, m, None)) for m in ("start", "end", "event")):
        return telemetry  # type: ignore[return-value]
    if callable(telemetry):
        return telemetry(pipeline)
    raise ConfigurationError(
        "Pipeline.telemetry", telemetry, "expected True, False, a Telemetry or a CallObserver"
    )


async def _observe(observer: CallObserver, chain: Call, ctx: Context) -> Any:
    # The observer's step: start, the rest of the chain, end. What the observer raises is
    # reported and ignored: observation never changes an outcome.
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
        "_listeners",
        "_name",
        "_observer",
        "_policies",
        "_random",
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
        observer = _observer_for(self, telemetry)
        self._observer = observer
        # The chain, composed once; an observer is its outermost step (the one place that
        # starts and ends a call's observation, whichever way the call comes in).
        chain = compose(self._policies, _invoke)
        if observer is not None:
            chain = functools.partial(_observe, observer, chain)
        self._chain: Call | None = chain if self._policies or observer is not None else None

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

    async def run(self, ctx: Context) -> Any:
        """Run the whole chain for a prepared ``ctx`` (see ``context()``)."""
        chain = self._chain
        if chain is None:
            return await _invoke(ctx)
        return await chain(ctx)

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``await fn(*args, **kwargs)`` through the pipeline and return its result.

        Raises:
            Exception: whatever the call finally raised (the last original exception when
                retries ran out), or a ``RejectedError`` when a policy refused the call.
        """
        chain = self._chain
        if chain is None:
            return await fn(*args, **kwargs)
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
        result: T = await chain(ctx)
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

    @property
    def deadline_aware(self) -> bool:
        """A pipeline keeps the promise when every one of its policies does."""
        return all(deadline_aware(policy) for policy in self._policies)

    def compose(self, inner: Call, after: tuple[Policy, ...], /) -> Call:
        """This pipeline's policies around ``inner``, composed once into the outer chain.

        A pipeline nested in a pipeline adds no step of its own: its policies join the outer
        chain as if they were listed there (its name, clock, telemetry and listeners are the
        outer pipeline's for those calls).
        """
        return compose(self._policies, inner, after)

    async def execute(self, call: Call, ctx: Context, /) -> Any:
        """Run this pipeline's policies around ``call`` (composing them on every use).

        Inside another pipeline ``compose`` is used instead, once.
        """
        return await compose(self._policies, call)(ctx)

    def __repr__(self) -> str:
        inner = "".join(f"{p!r}, " for p in self._policies)
        return f"Pipeline({inner}name={self._name!r})"


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
    listeners, observer = pipeline._listeners, pipeline._observer
    chain = pipeline._chain if pipeline._chain is not None else _invoke

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        ctx = Context(
            name, operation, clock, random, classifier, fn, args, kwargs, None, listeners, observer
        )
        result: T = await chain(ctx)
        return result

    return wrapper

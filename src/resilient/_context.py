"""Per-call state: the ``Context`` that flows through every policy of one call.

Shared state (breaker windows, bucket tokens, bulkhead permits) lives on policy instances;
everything that belongs to one call (attempt number, deadline, operation) lives here.
The current deadline is also kept in a context variable so that a pipeline called from inside
another pipeline's call inherits the tighter deadline, and so user code can ask
``resilient.remaining()``.
"""

from __future__ import annotations

import math
import os
import random as _random
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, final

from ._classify import DEFAULT_CLASSIFIER, ClassifierLike
from ._clock import Clock
from ._events import CallObserver, Event, Listener, notify, report_listener_error
from ._exceptions import TimeoutExceeded

__all__ = ["Context", "remaining"]


# One private generator for the whole process, reseeded in every forked child so that
# processes forked from one parent never draw the same jitter sequence.
_rng = _random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_rng.seed)
default_random: Callable[[], float] = _rng.random


def remaining() -> float:
    """Seconds left before the innermost enclosing resilient deadline (``math.inf`` if none).

    Inside a call run by a pipeline with a ``Timeout``, this is the time the call still has;
    code may use it to size its own waits or to send a deadline upstream.
    """
    current = _DEADLINE.get()
    if current is None:
        return math.inf
    return current.remaining()


@final
class Context:
    """The state of one call through a pipeline.

    Attributes:
        pipeline: the pipeline's name.
        operation: a bounded name for what is called (function name or route template).
        attempt: the current attempt number, 1-based (set by ``Retry``; 1 without it).
        attempt_kind: what the running attempt is: ``"original"``, ``"retry"`` or ``"hedge"``
            (a bounded telemetry attribute; ``Hedge`` runs each hedge on a copy of the context
            marked ``"hedge"``; ``Retry`` marks attempts after the first ``"retry"``).
        resendable: whether the call may be sent more than once (``True`` by default); an
            integration sets ``False`` when re-sending is unsafe (an HTTP POST without an
            idempotency key), and ``Hedge`` then never starts a second attempt.
        deadline: absolute time (on ``clock``) by which the call must finish; ``math.inf``
            when unbounded. Policies only ever tighten it.
        clock: the pipeline's clock.
        random: the pipeline's random source, ``() -> float`` in [0, 1).
        classifier: the classifier for this call (the pipeline's, or an integration's).
        key: partition key for keyed policies (for example the host), or ``None``.
        listening: whether anyone observes events; policies build events only when true.
        span: the call's OpenTelemetry span while it is recording, else ``None`` (set by the
            telemetry observer; integrations parent their own spans on it).
        telemetry: private per-call state of the telemetry observer.
        extra: per-call slot for integrations (for example the httpx request), or ``None``.
    """

    __slots__ = (
        "args",
        "attempt",
        "attempt_kind",
        "classifier",
        "clock",
        "deadline",
        "deadline_source",
        "deadline_timeout",
        "extra",
        "fn",
        "key",
        "kwargs",
        "listeners",
        "listening",
        "observer",
        "operation",
        "pipeline",
        "random",
        "resendable",
        "span",
        "telemetry",
    )

    pipeline: str
    operation: str
    attempt: int
    attempt_kind: str
    resendable: bool
    clock: Clock
    random: Callable[[], float]
    classifier: ClassifierLike
    fn: Callable[..., Any] | None
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    key: str | None
    listeners: tuple[Listener, ...]
    observer: CallObserver | None
    listening: bool
    span: Any
    telemetry: Any
    extra: Any
    deadline: float
    deadline_source: str
    deadline_timeout: float

    def __init__(  # noqa: PLR0917 - built on every call: positional is the cheap call
        self,
        pipeline: str,
        operation: str,
        clock: Clock,
        random: Callable[[], float],
        classifier: ClassifierLike,
        fn: Callable[..., Any] | None = None,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        key: str | None = None,
        listeners: tuple[Listener, ...] = (),
        observer: CallObserver | None = None,
    ) -> None:
        # Positional parameters on purpose: a Context is built on every call, and keyword
        # argument parsing alone would double the cost of an empty pipeline.
        self.pipeline = pipeline
        self.operation = operation
        self.attempt = 1
        self.attempt_kind = "original"
        self.resendable = True
        self.clock = clock
        self.random = random
        self.classifier = classifier
        self.fn = fn
        self.args = args
        self.kwargs = kwargs if kwargs is not None else {}
        self.key = key
        self.listeners = listeners
        self.observer = observer
        self.listening = bool(listeners) or observer is not None
        self.span = None
        self.telemetry = None
        self.extra = None
        inherited = _DEADLINE.get()
        if inherited is not None and inherited.clock is clock:
            self.deadline = inherited.deadline
            self.deadline_source = inherited.deadline_source
            self.deadline_timeout = inherited.deadline_timeout
        else:
            self.deadline = math.inf
            self.deadline_source = ""
            self.deadline_timeout = math.inf

    @classmethod
    def detached(cls, name: str, clock: Clock, key: str | None = None) -> Context:
        """A context for a policy used on its own (``async with bulkhead:``, ``acquire()``).

        It carries the deadline of an enclosing resilient call on the same clock, the
        default classifier and no listener, so the policy's waits and refusals work as in a
        pipeline named after the policy.
        """
        return cls(name, name, clock, default_random, DEFAULT_CLASSIFIER, None, (), None, key)

    def remaining(self) -> float:
        """Seconds left before this call's deadline (``math.inf`` when unbounded)."""
        deadline = self.deadline
        if deadline == math.inf:
            return math.inf
        return deadline - self.clock.now()

    def tighten(self, deadline: float, *, source: str, timeout: float) -> bool:
        """Lower the call's deadline to ``deadline`` if that is tighter.

        Returns whether the deadline changed. The tighter deadline always wins.
        """
        if deadline < self.deadline:
            self.deadline = deadline
            self.deadline_source = source
            self.deadline_timeout = timeout
            return True
        return False

    def deadline_exceeded(self) -> TimeoutExceeded:
        """The exception to raise when a wait is cut by this call's deadline."""
        source = self.deadline_source or "enclosing deadline"
        timeout = self.deadline_timeout
        if math.isfinite(timeout):
            message = f"{source}: deadline of {timeout:g}s exceeded"
        else:
            message = f"{source}: deadline exceeded"
        return TimeoutExceeded(message, policy=self.deadline_source, timeout=timeout)

    def emit(self, event: Event) -> None:
        """Deliver ``event`` to the pipeline's listeners and observer; never raises."""
        notify(self.listeners, event)
        observer = self.observer
        if observer is not None:
            try:
                observer.event(self, event)
            except Exception:
                report_listener_error(observer)

    def __repr__(self) -> str:
        return (
            f"<Context pipeline={self.pipeline!r} operation={self.operation!r} "
            f"attempt={self.attempt} remaining={self.remaining():.3f}>"
        )


# The context of the innermost call whose deadline is armed (set by Timeout while its timer
# runs). Storing the Context itself costs no allocation; its deadline fields are exactly the
# armed scope's for as long as the variable points at it.
_DEADLINE: ContextVar[Context | None] = ContextVar("resilient_deadline", default=None)

push_deadline = _DEADLINE.set
"""Publish ``ctx``'s deadline to code running inside (nested pipelines, ``remaining()``)."""

pop_deadline = _DEADLINE.reset
"""Undo ``push_deadline`` with the token it returned."""

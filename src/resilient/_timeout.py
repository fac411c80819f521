"""``Timeout``: bound a call (outermost) or each attempt (innermost) in time."""

from __future__ import annotations

import functools
from typing import Any, ClassVar, final

from . import _validate as check
from ._context import Context, pop_deadline, push_deadline
from ._events import TimeoutFired
from ._exceptions import TimeoutExceeded
from ._pipeline import Call, Pipeline, Policy, PolicyDecorator, deadline_aware

__all__ = ["Timeout"]


def _delegates(after: tuple[Policy, ...]) -> bool | None:
    # An outer Timeout need not arm a timer of its own when an inner Timeout comes later and
    # every policy in between honours ctx.deadline in its own waits: the inner timer is then
    # armed at the tighter of the two deadlines. One armed timer per attempt is the floor.
    # None: no Timeout inside and no policy that breaks the promise (nested pipelines are
    # looked into, since their policies join the chain).
    for policy in after:
        if isinstance(policy, Timeout):
            return True
        if isinstance(policy, Pipeline):
            inside = _delegates(policy.policies)
            if inside is not None:
                return inside
        elif not deadline_aware(policy):
            return False
    return None


@final
class Timeout(PolicyDecorator):
    """Cancel the rest of the chain when ``seconds`` have passed.

    Placed first in a pipeline it bounds the whole call, retries and waits included; placed
    last it bounds each attempt. It records its deadline in the call's context so inner
    policies (a retry deciding whether to wait, a bulkhead queue) and nested pipelines see the
    time left (``resilient.remaining()``); the tighter deadline always wins.

    Only this policy's own expiry raises ``TimeoutExceeded`` (a ``RejectedError`` and a builtin
    ``TimeoutError``). A ``TimeoutError`` raised by the wrapped code passes through untouched,
    and an outer cancellation stays a cancellation, on asyncio and on trio.

    Args:
        seconds: the time allowed, > 0 (``math.inf`` is allowed and never fires).
        name: the policy's name in events, errors and telemetry.

    Raises:
        ConfigurationError: ``seconds`` is not a positive number.
    """

    __slots__ = ("_seconds", "name")

    deadline_aware: ClassVar[bool] = True

    def __init__(self, seconds: float, /, *, name: str = "timeout") -> None:
        self._seconds = check.positive("Timeout.seconds", seconds, allow_inf=True)
        self.name = check.name("Timeout.name", name)

    @property
    def seconds(self) -> float:
        """The configured time limit."""
        return self._seconds

    def compose(self, inner: Call, after: tuple[Policy, ...], /) -> Call:
        """The chain step: with an inner ``Timeout`` and only deadline-aware policies in
        between, record the deadline and let the inner timer enforce it; else arm a timer."""
        if _delegates(after):
            return functools.partial(self._record, inner)
        return functools.partial(self.execute, inner)

    async def _record(self, call: Call, ctx: Context) -> Any:
        deadline = ctx.clock.now() + self._seconds
        outer = ctx.deadline
        if deadline >= outer:
            return await call(ctx)
        outer_source = ctx.deadline_source
        outer_timeout = ctx.deadline_timeout
        ctx.deadline = deadline
        ctx.deadline_source = self.name
        ctx.deadline_timeout = self._seconds
        try:
            return await call(ctx)
        finally:
            ctx.deadline = outer
            ctx.deadline_source = outer_source
            ctx.deadline_timeout = outer_timeout

    async def execute(self, call: Call, ctx: Context, /) -> Any:
        """Run ``call`` with a timer armed at the tighter of this timeout and ``ctx.deadline``."""
        clock = ctx.clock
        now = clock.now()
        seconds = self._seconds
        deadline = now + seconds
        outer = ctx.deadline
        mine = deadline < outer
        if mine:
            outer_source = ctx.deadline_source
            outer_timeout = ctx.deadline_timeout
            ctx.deadline = deadline
            ctx.deadline_source = self.name
            ctx.deadline_timeout = seconds
        else:
            deadline = outer
            if deadline <= now:
                # An enclosing deadline already passed: do not start work that cannot finish.
                raise ctx.deadline_exceeded()
        token = push_deadline(ctx)
        timer = clock.timeout_at(deadline)
        try:
            arm = getattr(timer, "arm", None)
            if arm is not None:
                # A scope with synchronous halves (the default clock's): no coroutine for the
                # `async with` on every call.
                disarm = timer.disarm  # type: ignore[attr-defined]
                arm()
                try:
                    result = await call(ctx)
                except BaseException as exc:
                    if disarm(type(exc)):
                        raise TimeoutError from exc  # renamed below, as `async with` would
                    raise
                disarm(None)
                return result
            async with timer:
                return await call(ctx)
        except TimeoutError:
            if not timer.expired():
                raise  # the wrapped code's own TimeoutError: not ours to rename
            raise self._expired(ctx, mine) from None
        finally:
            pop_deadline(token)
            if mine:
                ctx.deadline = outer
                ctx.deadline_source = outer_source
                ctx.deadline_timeout = outer_timeout

    def _expired(self, ctx: Context, mine: bool) -> TimeoutExceeded:
        # Called with ctx still holding the deadline that fired (restored afterwards).
        if ctx.listening:
            ctx.emit(
                TimeoutFired(
                    pipeline=ctx.pipeline,
                    operation=ctx.operation,
                    policy=ctx.deadline_source or self.name,
                    at=ctx.clock.now(),
                    timeout=ctx.deadline_timeout,
                )
            )
        if mine:
            return TimeoutExceeded(
                f"{self.name}: timed out after {self._seconds:g}s",
                policy=self.name,
                timeout=self._seconds,
            )
        return ctx.deadline_exceeded()

    def __repr__(self) -> str:
        return f"Timeout({self._seconds:g}, name={self.name!r})"

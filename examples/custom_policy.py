"""Writing a policy: run with ``python examples/custom_policy.py`` (instant, virtual time).

``SlowCallLog`` records calls that take longer than a threshold. It is written against the
public protocol only (``resilient.extend``) and gets what the built-in policies get:

- ``compose()`` builds its chain step once, when the pipeline is built (not per call);
- ``deadline_aware = True`` (it never waits) lets the outer ``Timeout`` hand its deadline to
  the inner one, so each attempt arms exactly one timer, as with the built-ins alone.
"""

from __future__ import annotations

from typing import Any, ClassVar

import anyio

from resilient import Pipeline, Retry, Timeout
from resilient.extend import Call, Context, Policy, PolicyBase, TimerScope
from resilient.testing import FakeClock


class SlowCallLog(PolicyBase):
    """Log every call through this policy that takes longer than ``threshold`` seconds."""

    deadline_aware: ClassVar[bool] = True  # it never waits: the promise is easy to keep

    def __init__(self, threshold: float, *, name: str = "slow_call_log") -> None:
        self.name = name
        self.threshold = threshold
        self.slow: list[tuple[str, int, float]] = []

    async def execute(self, call: Call, ctx: Context, /) -> Any:
        """Run the rest of the chain, timing it on the pipeline's clock."""
        start = ctx.clock.now()
        try:
            return await call(ctx)
        finally:
            took = ctx.clock.now() - start
            if took > self.threshold:
                self.slow.append((ctx.operation, ctx.attempt, took))

    def __repr__(self) -> str:
        return f"SlowCallLog({self.threshold:g}, name={self.name!r})"

    def compose(self, inner: Call, after: tuple[Policy, ...], /) -> Call:
        """The chain step, built once per pipeline: a closure over ``inner``."""
        execute = self.execute

        async def step(ctx: Context) -> Any:
            return await execute(inner, ctx)

        return step


class CountingClock:
    """Virtual time (a ``FakeClock``) that also counts armed timers."""

    def __init__(self) -> None:
        self.inner = FakeClock()
        self.armed = 0

    def now(self) -> float:
        return self.inner.now()

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)

    def timeout_at(self, deadline: float) -> TimerScope:
        self.armed += 1
        return self.inner.timeout_at(deadline)


async def main() -> None:
    clock = CountingClock()
    log = SlowCallLog(threshold=0.2)
    pipeline = Pipeline(
        Timeout(5.0),  # the whole call
        Retry(attempts=3, base_delay=0.01),  # ConnectionError is transient by default
        log,
        Timeout(1.0),  # each attempt
        clock=clock,
        name="inventory",
    )
    tries = 0

    async def fetch_stock(sku: str) -> int:
        nonlocal tries
        tries += 1
        await clock.sleep(0.3)  # a slow dependency
        if tries < 3:
            raise ConnectionError("reset by peer")
        return 42

    print(pipeline)
    stock = await pipeline.call(fetch_stock, "sku-1")
    print(f"stock={stock} after {tries} attempts")
    print(f"timers armed: {clock.armed} (one per attempt, none for the outer Timeout)")
    for operation, attempt, took in log.slow:
        print(f"slow: {operation} attempt {attempt} took {took:.2f}s")


if __name__ == "__main__":
    anyio.run(main)

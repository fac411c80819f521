"""A discrete-event simulator that runs the real ``Retry`` (and its ``RetryBudget``) in virtual
time, with thousands of concurrent calls, in a fraction of a second.

Every call is a coroutine from ``Pipeline.call``; the only things it awaits are the clock's
``sleep`` (the retry's backoff) and the simulated dependency, both of which yield the virtual
time at which they want to wake up. ``Sim.run`` keeps those coroutines in a heap ordered by
wake-up time and resumes them one by one: no event loop, no real sleep, deterministic.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from resilient import Pipeline, Retry, RetryBudget


class _Wake:
    """Awaited by a simulated task: resume it at virtual time ``at``."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at

    def __await__(self) -> Generator[float, None, None]:
        yield self.at


class SimClock:
    """The pipeline's clock: virtual time that ``Sim.run`` moves."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        await _Wake(self.t + max(0.0, seconds))

    def timeout_at(self, deadline: float) -> Any:  # pragma: no cover - no Timeout policy here
        raise NotImplementedError("the simulation models attempt timeouts in the dependency")


class Sim:
    """Calls arriving at given times, each one through ``pipeline``, to completion."""

    def __init__(self, *, attempts: int, budget: RetryBudget | None, seed: int) -> None:
        self.clock = SimClock()
        self.rng = random.Random(seed)
        self.pipeline = Pipeline(
            Retry(attempts=attempts, budget=budget),
            clock=self.clock,
            random=self.rng.random,
            telemetry=False,
        )
        self._heap: list[tuple[float, int, Coroutine[Any, Any, Any], float]] = []
        self._seq = 0
        self.calls = 0
        self.attempts = 0
        self.ok: list[float] = []  # completion times of the calls that succeeded
        self.failed: list[float] = []  # completion times of the calls that failed

    def wait(self, at: float) -> _Wake:
        """For a dependency: resume the attempt at virtual time ``at``."""
        return _Wake(at)

    def schedule(self, at: float, attempt: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """A call arrives at ``at``; each of its attempts runs ``attempt()``."""

        async def one() -> Any:
            self.attempts += 1
            return await attempt()

        self.calls += 1
        self._push(at, self.pipeline.call(one), at)

    def _push(self, at: float, coro: Coroutine[Any, Any, Any], arrived: float) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, coro, arrived))

    def run(self) -> None:
        heap = self._heap
        clock = self.clock
        while heap:
            at, _, coro, arrived = heapq.heappop(heap)
            clock.t = max(clock.t, at)
            try:
                wake = coro.send(None)
            except StopIteration:
                self.ok.append(clock.t)
            except Exception:
                self.failed.append(clock.t)
            else:
                self._push(wake, coro, arrived)

    @property
    def success(self) -> float:
        return len(self.ok) / self.calls

    @property
    def load(self) -> float:
        """Attempts per call."""
        return self.attempts / self.calls


def flaky(sim: Sim, failure_rate: float, latency: float = 0.01) -> Callable[[], Any]:
    """A dependency failing ``failure_rate`` of attempts, independently, after ``latency``."""
    rng = random.Random(7)

    async def attempt() -> str:
        await sim.wait(sim.clock.t + latency)
        if rng.random() < failure_rate:
            raise ConnectionError("503")
        return "ok"

    return attempt


class Server:
    """A FIFO server of ``capacity(t)`` requests per second behind clients that give up on an
    attempt after ``timeout`` seconds (a TimeoutError, TRANSIENT). The server still does the
    work of an abandoned request: a long queue makes every attempt time out, and retries make
    the queue longer."""

    def __init__(self, sim: Sim, capacity: Callable[[float], float], timeout: float) -> None:
        self.sim = sim
        self.capacity = capacity
        self.timeout = timeout
        self.free_at = 0.0  # when the server finishes the work queued so far

    async def attempt(self) -> str:
        now = self.sim.clock.t
        start = max(now, self.free_at)
        finish = start + 1.0 / self.capacity(start)
        self.free_at = finish
        deadline = now + self.timeout
        if finish <= deadline:
            await self.sim.wait(finish)
            return "ok"
        await self.sim.wait(deadline)
        raise TimeoutError("attempt timed out")


def steady(
    sim: Sim, attempt: Callable[[], Any], *, rate: float, calls: int, start: float = 0.0
) -> float:
    """``calls`` calls at ``rate`` per second from ``start``; returns the time after the last."""
    for i in range(calls):
        sim.schedule(start + i / rate, attempt)
    return start + calls / rate

"""Retry in five short scenes: run with ``python examples/retry_basics.py`` (about a second).

1. Transient failures are retried with full jitter; a bug is not.
2. A failed *result* (an HTTP-like 503) is retried, and returned as is when retries run out.
3. A server hint (Retry-After) replaces the computed delay.
4. A deadline: the retry stops before it, with the real failure, not a timeout.
5. A shared retry budget keeps a dead dependency from seeing 3x its traffic.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import anyio

from resilient import Classifier, Pipeline, Retry, RetryBudget, Timeout, Verdict, on_result
from resilient.events import Event, RetryGaveUp, RetryScheduled


def show(event: Event) -> None:
    if isinstance(event, RetryScheduled):
        hint = f", server asked for {event.retry_after:g}s" if event.retry_after else ""
        print(
            f"    attempt {event.attempt} failed ({event.error_type or event.verdict.value}); "
            f"retrying in {event.delay * 1000:.1f} ms{hint}"
        )
    elif isinstance(event, RetryGaveUp):
        print(f"    gave up after {event.attempts} attempt(s): {event.reason}")


class Flaky:
    """A dependency failing ``failures`` times with a connection error, then answering."""

    def __init__(self, failures: int) -> None:
        self.left = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.left:
            self.left -= 1
            raise ConnectionError("connection reset by peer")
        return "hello"


@dataclass
class Response:
    status: int
    retry_after: float | None = None


async def transient_and_bugs() -> None:
    print("1. transient failures are retried, bugs are not")
    pipeline = Pipeline(Retry(attempts=4, base_delay=0.01), listeners=[show], name="scene1")
    flaky = Flaky(failures=2)
    print(f"  -> {await pipeline.call(flaky)!r} after {flaky.calls} calls")

    async def buggy() -> None:
        raise KeyError("user_id")

    try:
        await pipeline.call(buggy)
    except KeyError as exc:
        print(f"  -> KeyError raised at once, untouched: {exc!r}")


async def failed_results() -> None:
    print("2. a 503 response is a failure too; the last one is returned, not an exception")
    rules = Classifier(on_result(lambda r: r.status >= 500, verdict=Verdict.TRANSIENT))
    closed: list[Response] = []
    retry = Retry(attempts=3, base_delay=0.01, classify=rules, on_discard=closed.append)
    pipeline = Pipeline(retry, listeners=[show], name="scene2")

    async def unavailable() -> Response:
        return Response(503)

    response = await pipeline.call(unavailable)
    print(f"  -> got status {response.status}; {len(closed)} earlier ones went to on_discard")


async def server_hint() -> None:
    print("3. Retry-After replaces the computed delay (clamped to max_retry_after)")
    rules = Classifier(
        on_result(
            lambda r: r.status == 429,
            verdict=Verdict.TRANSIENT,
            retry_after=lambda r: r.retry_after,
        )
    )
    answers = iter([Response(429, retry_after=0.05), Response(200)])

    async def throttled() -> Response:
        return next(answers)

    pipeline = Pipeline(Retry(classify=rules), listeners=[show], name="scene3")
    print(f"  -> status {(await pipeline.call(throttled)).status}")


async def deadline() -> None:
    print("4. within Timeout(0.1): no retry that would end past the deadline")
    retry = Retry(attempts=10, base_delay=0.03, jitter="none")
    pipeline = Pipeline(Timeout(0.1), retry, listeners=[show], name="scene4")
    try:
        await pipeline.call(Flaky(failures=100))
    except ConnectionError as exc:
        print(f"  -> {type(exc).__name__}: {exc} | {exc.__notes__[0]}")


async def budget() -> None:
    print("5. a budget shared by two pipelines: a dead dependency gets the reserve, not 200%")
    shared = RetryBudget(ratio=0.2, reserve=5)
    users = Pipeline(Retry(attempts=3, base_delay=0.0, budget=shared), name="users")
    orders = Pipeline(Retry(attempts=3, base_delay=0.0, budget=shared), name="orders")
    dead = Flaky(failures=10**9)
    for i in range(200):
        with contextlib.suppress(ConnectionError):
            await (users if i % 2 else orders).call(dead)
    print(f"  -> 200 calls made {dead.calls} attempts ({dead.calls / 200:.2f} per call)")


async def main() -> None:
    for scene in (transient_and_bugs, failed_results, server_hint, deadline, budget):
        await scene()
        print()


if __name__ == "__main__":
    anyio.run(main)

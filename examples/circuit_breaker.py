"""A circuit breaker in front of a flaky dependency: open, fail fast, probe, close; per host.

Run: python examples/circuit_breaker.py
"""

from __future__ import annotations

import anyio
import anyio.lowlevel

import resilient


class Dependency:
    """A fake remote service that can be switched down and up."""

    def __init__(self) -> None:
        self.up = True
        self.calls = 0

    async def get(self, host: str) -> str:
        self.calls += 1
        await anyio.lowlevel.checkpoint()
        if not self.up:
            raise ConnectionError(f"{host}: connection refused")
        return f"{host}: 200 OK"


def show(event: resilient.events.Event) -> None:
    if isinstance(event, resilient.events.CircuitStateChanged):
        where = f" [{event.key}]" if event.key else ""
        print(f"  event: {event.previous} -> {event.state}{where}")


breaker = resilient.CircuitBreaker(
    failure_rate=0.5,
    window=10.0,
    minimum_calls=4,
    open_for=0.2,  # short, so the example finishes quickly
    name="inventory",
)
pipeline = resilient.Pipeline(breaker, resilient.Timeout(1.0), listeners=[show], name="shop")


async def get(dependency: Dependency, host: str) -> str:
    # The httpx transport sets the key to the request's host; here we set it by hand.
    ctx = pipeline.context(dependency.get, (host,), key=host, operation="GET /stock")
    try:
        result: str = await pipeline.run(ctx)
    except resilient.CircuitOpenError as exc:
        return f"fail fast: {exc} (state={exc.state})"
    except ConnectionError as exc:
        return f"error: {exc}"
    return result


async def main() -> None:
    eu, us = Dependency(), Dependency()
    print("1. eu goes down; the call that trips the breaker raises its own error")
    eu.up = False
    for _ in range(5):
        print("  ", await get(eu, "eu.example.org"))
    print(f"   eu was reached {eu.calls} times: the 5th call never left the process")

    print("2. another host is not affected")
    print("  ", await get(us, "us.example.org"))

    print("3. eu comes back; after open_for one probe closes the breaker")
    eu.up = True
    await anyio.sleep(0.25)
    print("  ", await get(eu, "eu.example.org"))

    print("4. snapshots (the telemetry layer reads .state)")
    for snap in breaker.snapshots():
        rate = f"{snap.failure_rate:.0%}"
        print(f"   key={snap.key}: {snap.state}, {snap.calls} calls, {rate} failed")

    print("5. manual control: force one host open, then reset")
    breaker.force_open("us.example.org")
    print("  ", await get(us, "us.example.org"))
    breaker.reset("us.example.org")
    print("  ", await get(us, "us.example.org"))


if __name__ == "__main__":
    anyio.run(main)

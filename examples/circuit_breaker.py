"""A circuit breaker in front of a flaky dependency: open, wait or fail fast, probe, close.

Per host; callers with time to spare wait out the open circuit while one of them probes.

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


WAITS: list[str] = []


def show(event: resilient.events.Event) -> None:
    if isinstance(event, resilient.events.CircuitStateChanged):
        where = f" [{event.key}]" if event.key else ""
        print(f"  event: {event.previous} -> {event.state}{where}")
    elif isinstance(event, resilient.events.CircuitWaitEnded):
        WAITS.append(event.outcome)


breaker = resilient.CircuitBreaker(
    failure_rate=0.5,
    window=10.0,
    minimum_calls=4,
    open_for=0.2,  # short, so the example finishes quickly
    max_wait=0.5,  # callers wait out an open circuit for up to 0.5 s...
    probe_interval=0.05,  # ...while one of them probes every 50 ms
    name="inventory",
)
pipeline = resilient.Pipeline(breaker, resilient.Timeout(1.0), listeners=[show], name="shop")
# A caller in a hurry: its 30 ms deadline ends before the next probe, so it never waits.
hurried = resilient.Pipeline(resilient.Timeout(0.03), breaker, listeners=[show], name="hurried")


async def get(dependency: Dependency, host: str, via: resilient.Pipeline = pipeline) -> str:
    # The httpx transport sets the key to the request's host; here we set it by hand.
    ctx = via.context(dependency.get, (host,), key=host, operation="GET /stock")
    try:
        result: str = await via.run(ctx)
    except resilient.CircuitOpenError as exc:
        return f"fail fast: {exc} (state={exc.state})"
    except ConnectionError as exc:
        return f"error: {exc}"
    return result


async def main() -> None:
    eu, us = Dependency(), Dependency()
    print("1. eu goes down; the call that trips the breaker raises its own error")
    eu.up = False
    for _ in range(4):
        print("  ", await get(eu, "eu.example.org"))
    assert breaker.snapshot("eu.example.org").state == "open"
    refused = await get(eu, "eu.example.org", via=hurried)
    print("  ", refused)
    assert refused.startswith("fail fast")
    print(f"   eu was reached {eu.calls} times: the hurried call never left the process")
    assert eu.calls == 4

    print("2. another host is not affected")
    print("  ", await get(us, "us.example.org"))

    print("3. ten callers wait while eu is down; one probe every 50 ms; eu comes back")
    results: list[str] = []

    async def caller() -> None:
        results.append(await get(eu, "eu.example.org"))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(caller)
        await anyio.sleep(0.07)  # two probes fail meanwhile (at 0 and 50 ms)
        eu.up = True
    ok = sum(r.endswith("200 OK") for r in results)
    print(f"   {ok} of 10 got through; waits ended: {sorted(set(WAITS))}")
    print(f"   eu was reached {eu.calls - 4} times: probes, then the waiters, paced")
    assert ok >= 5  # the probes that failed before eu came back raised its error
    assert "released" in WAITS
    assert breaker.snapshot("eu.example.org").state == "closed"

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

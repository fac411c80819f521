"""Decorators: pipelines and single policies on functions, methods, class- and staticmethods.

.venv/bin/python examples/decorators.py
"""

from __future__ import annotations

import asyncio

import resilient

attempts: list[str] = []


@resilient.retry(attempts=4, base_delay=0.01)
async def fetch_price(symbol: str) -> float:
    """Flaky upstream: fails twice, then answers."""
    attempts.append(symbol)
    if len(attempts) < 3:
        raise ConnectionError("upstream reset the connection")
    return 42.0


@resilient.circuit_breaker(failure_rate=0.5, minimum_calls=2, open_for=30.0)
async def charge(amount: int) -> str:
    raise ConnectionError("payment provider down")


class Inventory:
    pipeline = resilient.Pipeline(resilient.Timeout(0.5), resilient.Retry(attempts=2))

    @pipeline.wrap
    async def count(self, sku: str) -> int:
        return len(sku)

    @resilient.timeout(0.05)
    @classmethod
    async def slow_report(cls) -> str:
        await asyncio.sleep(1)
        return "never"

    @resilient.rate_limit(rate=1.0, burst=1, max_wait=0.0)
    @staticmethod
    async def export() -> str:
        return "exported"


async def main() -> None:
    print("fetch_price:", await fetch_price("ACME"), f"after {len(attempts)} attempts")
    print("name and docstring kept:", fetch_price.__name__, "-", fetch_price.__doc__)

    for _ in range(3):
        try:
            await charge(10)
        except ConnectionError as exc:
            print("charge failed:", exc)
        except resilient.CircuitOpenError as exc:
            print("charge refused without calling the provider:", exc)

    print("Inventory().count:", await Inventory().count("abc"))
    try:
        await Inventory.slow_report()
    except resilient.TimeoutExceeded as exc:
        print("slow_report:", exc)
    print("export:", await Inventory.export())
    try:
        await Inventory.export()
    except resilient.RateLimitedError as exc:
        print(f"export again: refused, retry after {exc.retry_after:.1f}s")

    try:

        @resilient.retry()
        def not_async() -> int:  # type: ignore[arg-type]
            return 1
    except TypeError as exc:
        print("sync function refused at decoration:", str(exc).split(";")[0])


if __name__ == "__main__":
    asyncio.run(main())

"""A bulkhead: two calls at a time, two more may wait briefly, the rest are refused at once.

Run: python examples/bulkhead.py
"""

from __future__ import annotations

import anyio
import anyio.lowlevel

import resilient

bulkhead = resilient.Bulkhead(max_concurrent=2, max_waiting=2, max_wait=0.25, name="db")


def report(event: resilient.events.Event) -> None:
    if isinstance(event, resilient.events.WaitEnded):
        verdict = "admitted" if event.admitted else "gave up"
        print(f"    [event] waited {event.waited:.2f}s, {verdict}")
    elif isinstance(event, resilient.events.CallRejected):
        print(f"    [event] refused: {event.reason}")


pipeline = resilient.Pipeline(bulkhead, name="example", listeners=[report])


async def query(n: int) -> str:
    snapshot = bulkhead.snapshot()
    print(f"  query {n} runs ({snapshot.running} running, {snapshot.waiting} waiting)")
    await anyio.sleep(0.1)
    return f"rows for {n}"


async def caller(n: int) -> None:
    try:
        await pipeline.call(query, n)
    except resilient.BulkheadFullError as exc:
        print(f"  query {n} refused at once: {exc} (retry_after={exc.retry_after})")


async def main() -> None:
    print("six concurrent queries against Bulkhead(max_concurrent=2, max_waiting=2):")
    async with anyio.create_task_group() as tg:
        for n in range(6):
            tg.start_soon(caller, n)
            await anyio.lowlevel.checkpoint()  # start them in order
    print(f"afterwards: {bulkhead.snapshot()}")

    print("direct use, as a context manager:")
    async with bulkhead:
        print(f"  inside: {bulkhead.snapshot().running} slot held")


if __name__ == "__main__":
    anyio.run(main)

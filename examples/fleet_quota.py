"""Two processes share one quota through Redis (``resilient.redis.RedisBucketStore``).

An upstream grants the whole service 20 requests per second (bursts of 5). Each process
of the service has its own ``RateLimiter``, but their buckets live in Redis, so together
they stay within the quota; with in-process buckets each would take the full 20/s.

Run: ``python examples/fleet_quota.py`` (needs the ``redis`` extra and a Redis server:
``$REDIS_URL``, default ``redis://127.0.0.1:6379/0``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from resilient import RateLimiter
from resilient.redis import RedisBucketStore

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
RATE, BURST, SECONDS = 20.0, 5, 1.0


async def one_process(prefix: str, start: float) -> int:
    """Call the upstream as often as the shared quota allows until ``start + SECONDS``."""
    store = RedisBucketStore(URL, prefix=prefix, timeout=0.5)
    limiter = RateLimiter(rate=RATE, burst=BURST, max_wait=0.0, store=store)
    admitted = 0
    await asyncio.sleep(max(0.0, start - time.time()))
    while time.time() < start + SECONDS:
        status = await limiter.try_acquire("partner-api")  # one Redis round trip
        if status.allowed:
            admitted += 1  # ... call the upstream here ...
        else:
            await asyncio.sleep(min(status.retry_after, 0.01))
    await store.aclose()
    return admitted


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        print(asyncio.run(one_process(sys.argv[2], float(sys.argv[3]))))
        return
    prefix = f"example:fleet:{os.getpid()}"  # one quota per run of the example
    start = time.time() + 1.0  # both processes started and connected by then
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "worker", prefix, str(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    counts = [int(worker.communicate(timeout=30)[0]) for worker in workers]
    quota = RATE * SECONDS + BURST
    print(f"process 1 admitted {counts[0]}, process 2 admitted {counts[1]}")
    print(f"together {sum(counts)}; the shared quota allows {quota:g} in {SECONDS:g} s")
    print(f"(two in-process limiters would have admitted about {2 * quota:g})")


if __name__ == "__main__":
    main()

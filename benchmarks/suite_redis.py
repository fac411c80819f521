"""Redis suite: rate-limit decisions in a shared Redis against the peers and one round trip.

Every case makes one decision per call against the same Redis server in the same run:
``RateLimiter`` + ``RedisBucketStore`` (``try_acquire``, which also answers the tokens left,
and ``acquire``), the ``limits`` library's async Redis strategies (redis-py implementation)
and ``pyrate-limiter``'s async ``RedisBucket``; the references are one raw round trip of
redis-py: ``EVALSHA`` of the store's own script (the floor of any script-based decision) and
``PING``. Rates are set so that nothing is refused. Each value is the mean of the fastest
tenth of many short interleaved rounds (a busy machine only adds time). The server is
``$REDIS_URL``, else 127.0.0.1:6379, else a ``redis-server`` started for the suite on a free
port; with no Redis at all the suite measures nothing and its gates are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from benchmarks._harness import Case, run_cases

TITLE = "Shared rate limits in Redis: one decision per call, same server, same run"
REFERENCE = "raw EVALSHA (redis-py, the store's script)"
HUGE = 1e9
NOTES = {
    "raw EVALSHA (redis-py, the store's script)": "one round trip: the floor",
    "raw PING (redis-py)": "one round trip, no script",
    "limits FixedWindow.hit (redis-py)": "a counter per window: bursts of 2x at window edges",
    "limits MovingWindow.hit (redis-py)": "a log of every hit (sorted set)",
    "limits SlidingWindowCounter.hit (redis-py)": "two counters, weighted",
    "pyrate-limiter RedisBucket (async)": "a log of every hit (sorted set), client clock",
    "RateLimiter.try_acquire + RedisBucketStore(lease=100)": "hot key: 1 round trip per 100",
}


@contextlib.contextmanager
def _redis_url() -> Iterator[str | None]:
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    import redis

    probe = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        probe.ping()
        yield url
        return
    except redis.RedisError:
        pass
    finally:
        probe.close()
    if shutil.which("redis-server") is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(200):
            client = redis.Redis.from_url(url)
            try:
                client.ping()
                break
            except redis.RedisError:
                time.sleep(0.02)
            finally:
                client.close()
        yield url
    finally:
        server.kill()
        server.wait()


def _loop_call(make: Callable[[], Awaitable[Callable[[], Awaitable[Any]]]]) -> Case:
    """A case awaiting ``fn()`` n times; ``fn`` is built on first use, inside the loop."""
    built: list[Callable[[], Awaitable[Any]]] = []

    async def run(n: int) -> None:
        if not built:
            built.append(await make())
        fn = built[0]
        for i in range(n):
            await fn()
            if i % 128 == 0:
                await asyncio.sleep(0)

    return run


def cases(url: str) -> dict[str, Case]:
    import redis.asyncio
    from limits import RateLimitItemPerSecond
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import (
        FixedWindowRateLimiter,
        MovingWindowRateLimiter,
        SlidingWindowCounterRateLimiter,
    )
    from pyrate_limiter import Duration, Limiter, Rate, RedisBucket

    from resilient import RateLimiter
    from resilient.redis import SCRIPT, RedisBucketStore

    run_id = uuid.uuid4().hex[:8]
    clients: list[Any] = []

    async def client() -> Any:
        made = redis.asyncio.Redis.from_url(url, socket_timeout=None)  # as the store builds it
        clients.append(made)
        return made

    async def raw_evalsha() -> Callable[[], Awaitable[Any]]:
        c = await client()
        sha = await c.script_load(SCRIPT)
        key = f"bench:{run_id}:raw:{{k}}"
        return lambda: c.evalsha(sha, 1, key, 1, HUGE, HUGE)

    async def raw_ping() -> Callable[[], Awaitable[Any]]:
        c = await client()
        return c.ping  # type: ignore[no-any-return]

    def store_limiter(lease: int = 0) -> RateLimiter:
        store = RedisBucketStore(
            url, prefix=f"bench:{run_id}:{lease}", timeout=1.0, lease=lease, telemetry=False
        )
        return RateLimiter(rate=HUGE, burst=HUGE, max_wait=0, store=store)

    async def try_acquire() -> Callable[[], Awaitable[Any]]:
        limiter = store_limiter()
        return lambda: limiter.try_acquire("k")

    async def leased() -> Callable[[], Awaitable[Any]]:
        limiter = store_limiter(lease=100)
        return lambda: limiter.try_acquire("k")

    async def acquire() -> Callable[[], Awaitable[Any]]:
        limiter = store_limiter()
        return lambda: limiter.acquire("k")

    item = RateLimitItemPerSecond(10**9)

    def limits_case(strategy: Any) -> Callable[[], Awaitable[Callable[[], Awaitable[Any]]]]:
        async def make() -> Callable[[], Awaitable[Any]]:
            storage = RedisStorage(f"async+{url}", implementation="redispy")
            limiter = strategy(storage)
            key = f"bench-{run_id}-{strategy.__name__}"
            return lambda: limiter.hit(item, key)

        return make

    async def pyrate() -> Callable[[], Awaitable[Any]]:
        c = await client()
        bucket = await RedisBucket.init([Rate(10**9, Duration.SECOND)], c, f"bench:{run_id}:pyrate")
        limiter = Limiter(bucket)
        return lambda: limiter.try_acquire_async("k", blocking=False)

    return {
        REFERENCE: _loop_call(raw_evalsha),
        "raw PING (redis-py)": _loop_call(raw_ping),
        "RateLimiter.try_acquire + RedisBucketStore": _loop_call(try_acquire),
        "RateLimiter.acquire + RedisBucketStore": _loop_call(acquire),
        "RateLimiter.try_acquire + RedisBucketStore(lease=100)": _loop_call(leased),
        "limits FixedWindow.hit (redis-py)": _loop_call(limits_case(FixedWindowRateLimiter)),
        "limits MovingWindow.hit (redis-py)": _loop_call(limits_case(MovingWindowRateLimiter)),
        "limits SlidingWindowCounter.hit (redis-py)": _loop_call(
            limits_case(SlidingWindowCounterRateLimiter)
        ),
        "pyrate-limiter RedisBucket (async)": _loop_call(pyrate),
    }


# (case, reference, target ratio). A decision costs at most one round trip + 30 %, and is
# at least as fast as each peer doing the same job (a smooth limit with a burst) on the same
# server. Both sides of every ratio wait on the same Redis in the same run: a busy machine
# slows both.
GATES = [
    ("RateLimiter.try_acquire + RedisBucketStore", REFERENCE, 1.3),
    ("RateLimiter.acquire + RedisBucketStore", REFERENCE, 1.3),
    ("RateLimiter.try_acquire + RedisBucketStore", "limits MovingWindow.hit (redis-py)", 1.0),
    (
        "RateLimiter.try_acquire + RedisBucketStore",
        "limits SlidingWindowCounter.hit (redis-py)",
        1.0,
    ),
    ("RateLimiter.try_acquire + RedisBucketStore", "pyrate-limiter RedisBucket (async)", 1.0),
    # Leasing pays when a key is hot: most decisions never leave the process.
    (
        "RateLimiter.try_acquire + RedisBucketStore(lease=100)",
        "RateLimiter.try_acquire + RedisBucketStore",
        0.5,
    ),
]


def run(*, quick: bool) -> dict[str, float]:
    with _redis_url() as url:
        if url is None:
            return {}
        # Many short interleaved rounds: each case meets the machine's quiet moments and its
        # busy ones alike.
        results = run_cases(cases(url), calls=20, rounds=150 if quick else 600)
    # The fastest tenth of the rounds: every case waits on the same server, and another
    # process taking the CPU (the server's or ours) only ever adds time to a round.
    return {name: _low_decile(r.samples_ns) for name, r in results.items()}


def _low_decile(samples: list[float]) -> float:
    ordered = sorted(samples)
    return statistics.mean(ordered[: max(1, len(ordered) // 10)])

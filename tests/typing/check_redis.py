"""Checked by ``mypy --strict`` (``make typecheck``): the Redis store is a ``BucketStore``."""

from __future__ import annotations

from typing import assert_type

import redis.asyncio

import resilient
from resilient.extend import BucketStore, TakeResult
from resilient.redis import RedisBucketStore

store = RedisBucketStore("redis://127.0.0.1:6379/0", prefix="app", on_unavailable="deny")
given = RedisBucketStore(redis.asyncio.Redis(), prefix="app", lease=10)
RedisBucketStore("redis://127.0.0.1:6379/0", on_unavailable="open")  # type: ignore[arg-type]
protocol: BucketStore = store
limiter = resilient.RateLimiter(rate=100.0, burst=10, store=store)
pipeline = resilient.standard("partner", rate=100.0, rate_store=given)


async def use() -> None:
    assert_type(await store.take("k", 1.0, rate=1.0, burst=1.0, now=0.0), TakeResult)
    assert_type(await store.tokens(None, rate=1.0, burst=1.0, now=0.0), float)
    assert_type((await limiter.try_acquire("k")).remaining, float)
    await store.aclose()

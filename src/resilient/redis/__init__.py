"""Quotas shared by a fleet: a ``BucketStore`` in Redis for ``RateLimiter(store=...)``.

Needs the ``redis`` extra (``pip install "resilient-patterns[redis]"``, which installs
redis-py) and asyncio: redis-py's asyncio client does not run on trio. See docs/fleet.md.
"""

from __future__ import annotations

try:
    import redis.asyncio  # noqa: F401  # the dependency check, with a clear message
except ImportError as exc:  # pragma: no cover - the extra is installed in development
    raise ImportError(
        "resilient.redis needs redis-py: pip install 'resilient-patterns[redis]'"
    ) from exc

from ._store import SCRIPT, RedisBucketStore, StoreFallback

__all__ = ["SCRIPT", "RedisBucketStore", "StoreFallback"]

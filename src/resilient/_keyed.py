"""A bounded map of per-key state (one breaker or bucket per host, client or tenant).

Keys often come from outside (a host name, a client address), so the number of entries is
bounded: the least recently used entry is evicted when a new key would exceed ``max_keys``,
and entries unused for ``idle_ttl`` seconds are dropped as new keys arrive. Memory therefore
stays bounded whatever keys an attacker chooses.

Every operation is O(1) whatever ``max_keys`` is: the entries are an ``OrderedDict`` in least
recently used order (a hit is ``move_to_end``, the bound is ``popitem(last=False)``), and idle
eviction looks at no more than ``SWEEP`` of the oldest entries per new key. Each new key adds
one entry and may drop up to ``SWEEP``, so idle entries still drain faster than keys arrive:
the work is amortized and never a scan of the whole map on a request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, final

from . import _validate as check

__all__ = ["BoundedKeyMap"]

V = TypeVar("V")

SWEEP = 2
"""The most idle entries examined when a new key arrives (amortized idle eviction)."""


@final
class _Entry(Generic[V]):
    # Mutable on purpose: a hit only updates `last`, allocating nothing on the hot path.
    __slots__ = ("last", "value")

    def __init__(self, value: V, last: float) -> None:
        self.value = value
        self.last = last


@final
class BoundedKeyMap(Generic[V]):
    """Per-key values created on demand, bounded in number, idle entries evicted.

    Args:
        factory: builds the value for a new key.
        max_keys: the most keys kept at once (>= 1).
        idle_ttl: seconds after which an unused entry may be evicted (``None``: only the
            ``max_keys`` bound applies).
        evictable: optional test; an entry for which it returns ``False`` (for example a
            bulkhead with calls in flight) is kept past its idle time, though never past the
            ``max_keys`` bound.
        parameter: the owner's name, for error messages.
    """

    __slots__ = ("_entries", "_evictable", "_factory", "_idle_ttl", "_max_keys")

    def __init__(
        self,
        factory: Callable[[str], V],
        *,
        max_keys: int,
        idle_ttl: float | None = None,
        evictable: Callable[[V], bool] | None = None,
        parameter: str = "max_keys",
    ) -> None:
        self._factory = factory
        self._max_keys = check.integer(parameter, max_keys, minimum=1)
        self._idle_ttl = (
            None
            if idle_ttl is None
            else check.positive(parameter.replace("max_keys", "idle_ttl"), idle_ttl)
        )
        self._evictable = evictable
        # key -> (value, last use time); ordered from least to most recently used.
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()

    @property
    def max_keys(self) -> int:
        """The bound on the number of keys."""
        return self._max_keys

    def get(self, key: str, now: float) -> V:
        """The value for ``key``, created if absent; marks it used at ``now``."""
        entries = self._entries
        found = entries.get(key)
        if found is not None:
            found.last = now
            entries.move_to_end(key)
            return found.value
        self._evict(now)
        value = self._factory(key)
        entries[key] = _Entry(value, now)
        return value

    def peek(self, key: str) -> V | None:
        """The value for ``key`` if present, without creating or touching it."""
        found = self._entries.get(key)
        return None if found is None else found.value

    def _evict(self, now: float) -> None:
        entries = self._entries
        ttl = self._idle_ttl
        if ttl is not None:
            evictable = self._evictable
            for _ in range(SWEEP):
                if not entries:
                    break
                key = next(iter(entries))  # the least recently used: O(1) on an OrderedDict
                entry = entries[key]
                if now - entry.last < ttl:
                    break
                if evictable is None or evictable(entry.value):
                    del entries[key]
                else:
                    # Idle by the clock but busy (a bulkhead with calls in flight): it counts
                    # as used now, so the sweep moves on instead of meeting it on every insert.
                    entry.last = now
                    entries.move_to_end(key)
        while len(entries) >= self._max_keys:
            entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def items(self) -> Iterator[tuple[str, V]]:
        """(key, value) pairs, least recently used first."""
        for key, entry in list(self._entries.items()):
            yield key, entry.value

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()

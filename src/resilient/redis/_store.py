"""``RedisBucketStore``: token buckets in Redis, one atomic script call per decision.

The bucket is the library's own (GCRA: one number per key, ``full_at``, the time at which the
bucket is full again; the arithmetic of the in-memory bucket), computed by a Lua script on the Redis
server with the server's clock, so processes whose clocks disagree still share one quota.
Every Redis call goes through a ``Pipeline(CircuitBreaker, Timeout)`` of the library: a slow
or dead server costs one short timeout per call until the breaker opens, then nothing; every
decision Redis cannot make is made locally by the ``on_unavailable`` mode.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, final

from opentelemetry import metrics
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from resilient import (
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    Pipeline,
    Timeout,
)
from resilient.events import Event
from resilient.extend import Listener, MemoryBucketStore, TakeResult
from resilient.telemetry import Telemetry
from resilient.timers import current_loop

__all__ = ["SCRIPT", "RedisBucketStore", "StoreFallback"]

logger = logging.getLogger("resilient.redis")

SCRIPT: Final = """\
-- resilient's token bucket (GCRA), the in-memory bucket's arithmetic (bucket_take), on the server's
-- clock. KEYS[1]: the bucket. ARGV: cost (0: read only), rate (tokens/s), burst (tokens),
-- and optionally most (a lease: take up to `most` whole tokens when at least `cost` are there).
-- State: full_at, the server time (s) at which the bucket is full again; a missing key is a
-- full bucket, so every write expires when the bucket would be full (nothing is lost).
-- Returns "wait tokens taken", one string: Redis would truncate Lua numbers to integers, and one
-- bulk string is the cheapest reply to parse.
local t = redis.call('TIME')
-- seconds since 2023-11-14 (1.7e9): small numbers keep sub-microsecond precision
local now = (tonumber(t[1]) - 1700000000) + tonumber(t[2]) * 1e-6
local cost = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local most = tonumber(ARGV[4]) or cost
local full_at = now
local stored = redis.call('GET', KEYS[1])
if stored then full_at = tonumber(stored) or now end
local write = false
if full_at < now then
  full_at = now
elseif (full_at - now) * rate > 2 * burst then
  -- two refills ahead: the server clock went back; count the bucket empty, not full
  full_at = now + burst / rate
  write = true
end
local wait = 0
local taken = 0
if cost > 0 then
  local short = (full_at - now) * rate + cost - burst
  if short <= 1e-9 then
    taken = cost
    if most > cost then
      taken = math.min(most, cost + math.floor(1e-9 - short))
    end
    full_at = full_at + taken / rate
    write = true
  else
    wait = short / rate
  end
end
if write then
  redis.call('SET', KEYS[1], string.format('%.17g', full_at),
             'PX', math.ceil((full_at - now) * 1000) + 1)
end
local tokens = burst - (full_at - now) * rate
if tokens < 0 then tokens = 0 elseif tokens > burst then tokens = burst end
return string.format('%.17g %.17g %.17g', wait, tokens, taken)
"""
"""The Lua script every decision runs (by its SHA1, ``EVALSHA``)."""

_SHA: Final = hashlib.sha1(SCRIPT.encode(), usedforsecurity=False).hexdigest()
_MODES: Final = ("local", "allow", "deny")
_NO_LOOP: Final = object()

Mode = Literal["local", "allow", "deny"]


@dataclass(slots=True, kw_only=True)
class StoreFallback(Event):
    """A decision the store made without Redis.

    ``pipeline`` and ``policy`` are the store's name, ``operation`` is ``"take"`` or
    ``"tokens"``, ``at`` the limiter's clock.

    Attributes:
        mode: the ``on_unavailable`` mode that decided (``"local"``, ``"allow"``, ``"deny"``).
        reason: ``"timeout"`` (Redis slower than ``timeout``), ``"error"`` (a connection or
            server error) or ``"open"`` (the breaker is open: Redis was not tried).
        error_type: the exception's class, spelled by its public import path.
    """

    mode: str
    reason: str
    error_type: str


@final
class _Lease:
    """Tokens this process took from Redis ahead of use (``lease``), spendable until ``until``."""

    __slots__ = ("seen", "tokens", "until")

    def __init__(self, tokens: float, until: float, seen: float) -> None:
        self.tokens = tokens
        self.until = until
        self.seen = seen  # the shared bucket's tokens at the last round trip


def _error_type(exc: BaseException) -> str:
    cls = type(exc)
    module = ".".join(p for p in cls.__module__.split(".") if not p.startswith("_"))
    return cls.__qualname__ if module in ("", "builtins") else f"{module}.{cls.__qualname__}"


def _positive(parameter: str, value: object, *, most: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(parameter, value, "expected a number > 0")
    if not math.isfinite(value):
        raise ConfigurationError(parameter, value, "expected a finite number")
    if value > most:
        raise ConfigurationError(parameter, value, f"expected at most {most:g}")
    return float(value)


def _count(parameter: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(parameter, value, f"expected an int >= {minimum}")
    return value


def _text(parameter: str, value: object, *, braces: bool = True) -> str:
    if not (isinstance(value, str) and value):
        raise ConfigurationError(parameter, value, "expected a non-empty string")
    if not braces and ("{" in value or "}" in value):
        raise ConfigurationError(parameter, value, "braces would break the keys' hash tags")
    return value


def _connection(url_or_client: object) -> tuple[str | None, Any]:
    """``(url, None)`` for a URL (the store builds its clients), ``(None, client)`` else."""
    if isinstance(url_or_client, str):
        try:
            parse_url(url_or_client)  # what redis-py will refuse, refused now
        except ValueError as exc:
            shown = urllib.parse.urlsplit(url_or_client)._replace(netloc="...").geturl()
            raise ConfigurationError(
                "RedisBucketStore.url_or_client",
                shown,  # never the credentials
                f"expected a URL (redis://, rediss://, unix://) or a client: {exc}",
            ) from None
        return url_or_client, None
    if callable(getattr(url_or_client, "evalsha", None)):
        return None, url_or_client
    raise ConfigurationError(
        "RedisBucketStore.url_or_client",
        url_or_client,
        "expected a Redis URL or a redis.asyncio client",
    )


@final
class RedisBucketStore:
    """A ``BucketStore`` in Redis: one quota shared by every process that uses the same keys.

    Each decision is one ``EVALSHA`` of ``SCRIPT`` (loaded on first use and again after a
    server restart or failover, when Redis answers ``NOSCRIPT``), which reads the server's
    ``TIME``, applies the library's token-bucket arithmetic and answers the wait and the
    tokens left together. Keys are ``{prefix}:{{key}}`` (the key is a Redis Cluster hash tag,
    so each bucket lives in one slot and buckets spread over the cluster) and expire when the
    bucket would be full again.

    Redis calls run through ``Pipeline(breaker, Timeout(timeout))``. A decision that Redis
    cannot make (an error, an answer slower than ``timeout``, or the breaker open) is made by
    ``on_unavailable``:

    - ``"local"`` (default): an in-process bucket with ``rate * local_share`` tokens per
      second and ``burst * local_share`` tokens (at least the call's cost);
    - ``"allow"``: admit (fail open);
    - ``"deny"``: refuse with ``retry_after = deny_retry_after`` (fail closed).

    No Redis exception ever reaches the caller; each fallback is reported as a
    ``StoreFallback`` event to ``listeners``, counted by the OpenTelemetry counter
    ``resilient.store.fallbacks`` and logged when an outage starts and ends. The breaker
    probes Redis again after ``open_for`` and the client reconnects by itself.

    asyncio only: redis-py's asyncio client does not run on trio, where a decision raises
    ``ConfigurationError``. A client built from a URL belongs to the event loop that first
    used it; a new loop gets a new client (close the old one with ``aclose()`` first).

    Args:
        url_or_client: a Redis URL (``redis://host:6379/0``, ``rediss://``, ``unix://``) or a
            ``redis.asyncio.Redis`` / ``RedisCluster`` client (then the caller owns it).
        prefix: the start of every key; one per application and quota (no braces).
        timeout: seconds a decision may wait for Redis before ``on_unavailable`` decides.
        on_unavailable: ``"local"``, ``"allow"`` or ``"deny"``.
        local_share: the fraction in (0, 1] of the quota the local fallback enforces; set it
            to ``1 / processes`` to keep a fleet within the shared quota during an outage.
        deny_retry_after: the ``retry_after`` in seconds of a ``"deny"`` refusal.
        local_max_keys: the most keyed buckets the local fallback keeps.
        max_connections: connections a client built from a URL opens at most; a decision
            finding them all busy waits for one, within ``timeout`` (a client passed in
            brings its own pool).
        lease: for hot keys, take up to this many tokens per round trip and spend them
            locally (0: off, every decision is a round trip). See docs/fleet.md for the
            bound on over-admission it costs.
        lease_ttl: seconds (on the limiter's clock) a leased token stays spendable; unspent
            ones are dropped, never returned.
        breaker: the breaker around Redis (default: opens at 50 % failures once 5 calls were
            seen in 10 s, probes after 0.5 s, backing off to at most 5 s; no caller waits
            for it: an open breaker makes the decision ``on_unavailable`` at once).
        listeners: callables receiving ``StoreFallback`` events and the events of the breaker
            (``CircuitStateChanged``, ``CallRejected``).
        telemetry: telemetry of the Redis calls, as for ``Pipeline`` (spans and metrics under
            the pipeline name ``name``).
        meter_provider: the OpenTelemetry meter provider for ``resilient.store.fallbacks``
            (default: the global one).
        name: the store's name in events, logs and telemetry.

    Raises:
        ConfigurationError: an option is invalid (naming it).
    """

    __slots__ = (
        "_breaker",
        "_client",
        "_deny_retry_after",
        "_down",
        "_fallbacks",
        "_lease",
        "_lease_ttl",
        "_leases",
        "_listeners",
        "_local",
        "_loop",
        "_max_connections",
        "_max_leases",
        "_meter_provider",
        "_mode",
        "_owned",
        "_pipeline",
        "_prefix",
        "_share",
        "_slots",
        "_timeout",
        "_unkeyed",
        "_url",
        "name",
    )

    def __init__(
        self,
        url_or_client: str | Redis | RedisCluster,
        *,
        prefix: str = "resilient",
        timeout: float = 0.005,
        on_unavailable: Mode = "local",
        local_share: float = 1.0,
        deny_retry_after: float = 1.0,
        local_max_keys: int = 10_000,
        max_connections: int = 32,
        lease: int = 0,
        lease_ttl: float = 0.5,
        breaker: CircuitBreaker | None = None,
        listeners: Iterable[Listener] = (),
        telemetry: bool | Telemetry = True,
        meter_provider: metrics.MeterProvider | None = None,
        name: str = "redis",
    ) -> None:
        p = "RedisBucketStore."
        self._url, self._client = _connection(url_or_client)
        self._owned = self._url is not None
        self._prefix = _text(p + "prefix", prefix, braces=False)
        self._unkeyed = f"{prefix}:-"  # never braced, so never equal to a keyed bucket's
        self.name = _text(p + "name", name)
        self._timeout = _positive(p + "timeout", timeout)
        if on_unavailable not in _MODES:
            raise ConfigurationError(
                p + "on_unavailable", on_unavailable, "expected 'local', 'allow' or 'deny'"
            )
        self._mode: str = on_unavailable
        self._share = _positive(p + "local_share", local_share, most=1.0)
        self._deny_retry_after = _positive(p + "deny_retry_after", deny_retry_after)
        self._max_leases = _count(p + "local_max_keys", local_max_keys, minimum=1)
        self._local = MemoryBucketStore(max_keys=local_max_keys)
        self._max_connections = _count(p + "max_connections", max_connections, minimum=1)
        self._lease = _count(p + "lease", lease, minimum=0)
        if lease == 1:
            raise ConfigurationError(p + "lease", lease, "expected 0 (off) or an int >= 2")
        self._lease_ttl = _positive(p + "lease_ttl", lease_ttl)
        self._leases: dict[str | None, _Lease] = {}
        self._slots: asyncio.Semaphore | None = None  # made with the client, per loop
        if breaker is None:
            breaker = CircuitBreaker(
                failure_rate=0.5,
                window=10.0,
                minimum_calls=5,
                open_for=0.5,
                max_open_for=5.0,
                per_key=False,
                max_waiting=0,  # an open breaker decides by on_unavailable at once
                name=self.name,
            )
        elif not isinstance(breaker, CircuitBreaker):
            raise ConfigurationError(p + "breaker", breaker, "expected a CircuitBreaker")
        self._breaker = breaker
        self._listeners: Sequence[Listener] = tuple(listeners)
        for listener in self._listeners:
            if not callable(listener):
                raise ConfigurationError(p + "listeners", listener, "expected a callable")
        self._pipeline = Pipeline(
            breaker,
            Timeout(self._timeout, name="redis_timeout"),
            name=self.name,
            listeners=self._listeners,
            telemetry=telemetry,
        )
        self._meter_provider = meter_provider
        self._fallbacks: Any = None  # the OpenTelemetry counter, made on the first fallback
        # The loop the client belongs to; never None, so trio (no loop) never matches it.
        self._loop: object = _NO_LOOP
        self._down = False

    # -- configuration (read-only) -------------------------------------------------------------

    @property
    def prefix(self) -> str:
        """The start of every key."""
        return self._prefix

    @property
    def timeout(self) -> float:
        """Seconds a decision waits for Redis."""
        return self._timeout

    @property
    def on_unavailable(self) -> str:
        """What decides while Redis cannot: ``"local"``, ``"allow"`` or ``"deny"``."""
        return self._mode

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker around Redis (for ``snapshot()`` and manual control)."""
        return self._breaker

    def redis_key(self, key: str | None) -> str:
        """The Redis key holding ``key``'s bucket (``None``: the unkeyed bucket)."""
        if key is None:
            return self._unkeyed
        return f"{self._prefix}:{{{key}}}"

    # -- the BucketStore protocol ------------------------------------------------------------

    async def take(
        self, key: str | None, cost: float, *, rate: float, burst: float, now: float
    ) -> TakeResult:
        """Take ``cost`` tokens from ``key``'s bucket in Redis; see ``BucketStore.take``.

        Raises:
            ConfigurationError: not running on asyncio (redis-py needs it).
        """
        most = cost
        if self._lease and cost <= self._lease:
            held = self._leases.get(key)
            if held is not None:
                if held.tokens >= cost - 1e-9 and now < held.until:
                    held.tokens -= cost
                    return TakeResult(0.0, held.seen + held.tokens)
                del self._leases[key]  # spent or expired: the unspent rest is dropped
            most = self._lease
        client = self._client if current_loop() is self._loop else self._client_for_loop()
        try:
            reply = await self._pipeline.call(
                self._script,
                client,
                self._unkeyed if key is None else f"{self._prefix}:{{{key}}}",
                cost,
                rate,
                burst,
                most,
            )
            parts = reply.split()
            wait = float(parts[0])
            tokens = float(parts[1])
            taken = float(parts[2])
        except Exception as exc:
            return self._decide_locally(
                "take", exc=exc, key=key, cost=cost, rate=rate, burst=burst, now=now
            )
        if self._down:
            self._recovered()
        if taken > cost:
            self._keep_lease(key, taken - cost, tokens, now)
            return TakeResult(wait, tokens + taken - cost)
        return TakeResult(wait, tokens)

    def _keep_lease(self, key: str | None, extra: float, seen: float, now: float) -> None:
        leases = self._leases
        held = leases.get(key)
        if held is not None:  # another task of this process leased meanwhile: keep both
            extra += held.tokens
        elif len(leases) >= self._max_leases:
            del leases[next(iter(leases))]  # the oldest lease: at worst its rest is dropped
        leases[key] = _Lease(extra, now + self._lease_ttl, seen)

    async def tokens(self, key: str | None, *, rate: float, burst: float, now: float) -> float:
        """The tokens in ``key``'s bucket now, taking none; see ``BucketStore.tokens``.

        Raises:
            ConfigurationError: not running on asyncio (redis-py needs it).
        """
        client = self._client if current_loop() is self._loop else self._client_for_loop()
        try:
            reply = await self._pipeline.call(
                self._script, client, self.redis_key(key), 0, rate, burst, 0
            )
            tokens = reply.split()[1]
        except Exception as exc:
            return self._decide_locally(
                "tokens", exc=exc, key=key, cost=0.0, rate=rate, burst=burst, now=now
            ).tokens
        if self._down:
            self._recovered()
        held = self._leases.get(key) if self._leases else None
        if held is not None and now < held.until:
            return float(tokens) + held.tokens
        return float(tokens)

    async def aclose(self) -> None:
        """Close the connections of a client the store built from a URL (not a given one)."""
        client = self._client
        if self._owned and client is not None:
            self._client = None
            self._slots = None
            self._loop = _NO_LOOP
            await client.aclose()

    # -- internals ---------------------------------------------------------------------------

    def _client_for_loop(self) -> Any:
        loop = current_loop()
        if loop is None:
            raise ConfigurationError(
                "RedisBucketStore",
                self,
                "needs asyncio: redis-py's asyncio client does not run on trio "
                "(use an in-process store there)",
            )
        if loop is self._loop:
            return self._client
        self._loop = loop
        if self._owned:
            # Connections belong to the loop that opened them; a new loop needs its own.
            assert self._url is not None
            self._client = Redis.from_url(
                self._url,
                max_connections=self._max_connections,
                # The store's Timeout bounds every call; a retry inside redis-py would only
                # spend that time on a server that just failed...
                retry=RedisRetry(NoBackoff(), 0),
                # ... and a read timeout of redis-py's would arm a second timer per call.
                socket_timeout=None,
                socket_connect_timeout=max(1.0, self._timeout),
                health_check_interval=0,
            )
            # A burst of concurrent decisions shares the connections instead of failing with
            # "too many connections"; the wait for one counts against the store's timeout.
            # (A semaphore of ours: redis-py's blocking pool costs several times more.)
            self._slots = asyncio.Semaphore(self._max_connections)
        return self._client

    async def _script(  # noqa: PLR0917 - positional: Pipeline.call passes them through
        self, client: Any, redis_key: str, cost: float, rate: float, burst: float, most: float
    ) -> bytes | str:
        slots = self._slots
        if slots is not None:
            await slots.acquire()
        try:
            try:
                reply: bytes | str = await client.evalsha(
                    _SHA, 1, redis_key, cost, rate, burst, most
                )
            except NoScriptError:
                # First use on this server, or it restarted or failed over: EVAL runs the
                # script and caches it, so the next EVALSHA finds it.
                reply = await client.eval(SCRIPT, 1, redis_key, cost, rate, burst, most)
        finally:
            if slots is not None:
                slots.release()
        return reply

    def _decide_locally(
        self,
        operation: str,
        *,
        exc: Exception,
        key: str | None,
        cost: float,
        rate: float,
        burst: float,
        now: float,
    ) -> TakeResult:
        mode = self._mode
        if isinstance(exc, CircuitOpenError):
            reason = "open"
        elif isinstance(exc, TimeoutError):
            reason = "timeout"
        else:
            reason = "error"
        self._report(operation, exc, reason, now)
        if mode == "allow":
            return TakeResult(0.0, max(burst - cost, 0.0))
        if mode == "deny":
            return TakeResult(self._deny_retry_after if cost else 0.0, 0.0)
        share = self._share
        local_rate = rate * share
        local_burst = max(burst * share, cost, 1.0) if share < 1.0 else burst
        local = self._local
        wait = local.take_now(key, cost, local_rate, local_burst, now) if cost else 0.0
        return TakeResult(wait, local.tokens_now(key, local_rate, local_burst, now))

    def _report(self, operation: str, exc: Exception, reason: str, now: float) -> None:
        kind = _error_type(exc)
        if not self._down:
            self._down = True
            logger.warning(
                "resilient: Redis store %r unavailable (%s: %s); deciding %r until it answers",
                self.name,
                reason,
                kind,
                self._mode,
            )
        try:
            counter = self._fallbacks
            if counter is None:
                provider = self._meter_provider or metrics.get_meter_provider()
                counter = self._fallbacks = provider.get_meter("resilient").create_counter(
                    "resilient.store.fallbacks",
                    unit="{decision}",
                    description="Rate-limit decisions made without the shared store",
                )
            counter.add(
                1,
                {
                    "resilient.store": self.name,
                    "resilient.store.mode": self._mode,
                    "resilient.reason": reason,
                    "error.type": kind,
                },
            )
        except Exception:  # telemetry observes, it never changes a decision
            logger.exception("resilient: recording a store fallback failed")
        if self._listeners:
            event = StoreFallback(
                pipeline=self.name,
                operation=operation,
                policy=self.name,
                at=now,
                mode=self._mode,
                reason=reason,
                error_type=kind,
            )
            for listener in self._listeners:
                try:
                    listener(event)
                except Exception:
                    logger.exception("resilient: listener %r raised; ignored", listener)

    def _recovered(self) -> None:
        self._down = False
        logger.warning("resilient: Redis store %r answers again", self.name)

    def __repr__(self) -> str:
        if self._url is not None:
            parts = urllib.parse.urlsplit(self._url)
            where = f"{parts.scheme}://{parts.hostname or ''}" + (
                f":{parts.port}" if parts.port else ""
            )  # never the credentials
        else:
            where = type(self._client).__name__
        return (
            f"RedisBucketStore({where!r}, prefix={self._prefix!r}, timeout={self._timeout:g}, "
            f"on_unavailable={self._mode!r})"
        )

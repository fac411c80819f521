"""``RedisBucketStore`` against a real Redis server (never a mock).

The server is ``$REDIS_URL``, else 127.0.0.1:6379, else a ``redis-server`` started here; tests
that kill Redis or read its command statistics start a server of their own on a free port.
Under CI (``CI=true``) a missing Redis fails these tests instead of skipping them.

redis-py's client runs on asyncio only: these tests run on asyncio, and one checks that trio
gets a clear ``ConfigurationError``. Redis decides on its own clock, so the few waits here are
real and short; every one is bounded.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import resilient
from _redis_helpers import RedisServer, shared_url, start_uvicorn
from resilient import CircuitBreaker, ConfigurationError, RateLimitedError, RateLimiter
from resilient.events import CircuitStateChanged, Event
from resilient.extend import MemoryBucketStore, TakeResult
from resilient.redis import RedisBucketStore, StoreFallback
from resilient.telemetry import Telemetry
from resilient.testing import FakeClock

HELPERS = Path(__file__).with_name("_redis_helpers.py")
SRC = Path(__file__).parent.parent / "src"


def missing_redis() -> None:
    message = "no Redis: set REDIS_URL, run one on 127.0.0.1:6379 or put redis-server on PATH"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    url = shared_url()
    if url is not None:
        yield url
        return
    if not RedisServer.available():
        missing_redis()
    server = RedisServer().start()
    yield server.url
    server.kill()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A server of this test alone (killed, restarted, its statistics read)."""
    if not RedisServer.available():
        missing_redis()
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's client is asyncio-only


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def store(redis_url: str, prefix: str) -> AsyncIterator[RedisBucketStore]:
    store = RedisBucketStore(redis_url, prefix=prefix, timeout=1.0)
    yield store
    await store.aclose()


def command_calls(server: RedisServer) -> dict[str, int]:
    """``INFO commandstats``: calls per command."""
    client = server.client()
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


# -- the bucket ------------------------------------------------------------------------------


async def test_a_burst_is_admitted_then_refused_with_the_exact_wait(
    store: RedisBucketStore,
) -> None:
    limiter = RateLimiter(rate=0.01, burst=5, max_wait=0, store=store)
    statuses = [await limiter.try_acquire("client") for _ in range(7)]
    assert [s.allowed for s in statuses] == [True] * 5 + [False] * 2
    assert [round(s.remaining, 3) for s in statuses[:5]] == [4.0, 3.0, 2.0, 1.0, 0.0]
    # the 6th token comes one refill interval (100 s at 0.01/s) after the first was taken
    assert 99.0 < statuses[5].retry_after <= 100.0
    with pytest.raises(RateLimitedError) as info:
        await limiter.acquire("client")
    assert info.value.retry_after is not None
    assert 99.0 < info.value.retry_after <= 100.0
    other = await limiter.try_acquire("another client")
    assert other.allowed
    assert round(other.remaining, 3) == 4.0


async def test_cost_and_read_only_tokens(store: RedisBucketStore) -> None:
    taken = await store.take("k", 3.0, rate=0.01, burst=4, now=0.0)
    assert taken.wait == 0.0
    assert round(taken.tokens, 3) == 1.0
    refused = await store.take("k", 2.0, rate=0.01, burst=4, now=0.0)
    assert 99.0 < refused.wait <= 100.0  # one token short
    assert round(refused.tokens, 3) == 1.0  # a refusal takes nothing
    for _ in range(3):
        assert round(await store.tokens("k", rate=0.01, burst=4, now=0.0), 3) == 1.0
    assert await store.tokens("never used", rate=0.01, burst=4, now=0.0) == 4.0


async def test_the_script_decides_as_the_in_memory_bucket(store: RedisBucketStore) -> None:
    """300 mixed takes and reads on 5 keys against ``MemoryBucketStore`` at a frozen time.

    At 0.001 token/s the bucket gains under 0.01 token while the test runs: with whole costs
    every decision is the same, and the numbers agree within that refill.
    """
    rng = random.Random(17)
    reference = MemoryBucketStore()
    rate, burst = 0.001, 7.0
    for _ in range(300):
        key = f"k{rng.randrange(5)}"
        if rng.random() < 0.2:
            got = await store.tokens(key, rate=rate, burst=burst, now=0.0)
            assert got == pytest.approx(reference.tokens_now(key, rate, burst, 0.0), abs=0.01)
            continue
        cost = float(rng.choice((1, 2, 3)))
        taken = await store.take(key, cost, rate=rate, burst=burst, now=0.0)
        wait = reference.take_now(key, cost, rate, burst, 0.0)
        assert (taken.wait == 0.0) == (wait == 0.0)
        assert taken.wait == pytest.approx(wait, abs=10.0)  # seconds: 0.01 token at 0.001/s
        assert taken.tokens == pytest.approx(reference.tokens_now(key, rate, burst, 0.0), abs=0.01)


async def test_the_bucket_refills_at_rate_on_the_servers_clock(store: RedisBucketStore) -> None:
    limiter = RateLimiter(rate=50.0, burst=1, max_wait=1.0, store=store)
    start = time.monotonic()
    for _ in range(6):  # the first is the burst, the next five wait 20 ms each
        await limiter.acquire()
    elapsed = time.monotonic() - start
    assert 0.09 <= elapsed < 1.0


async def test_unkeyed_and_keyed_buckets_are_separate_keys(
    store: RedisBucketStore, redis_url: str, prefix: str
) -> None:
    assert store.redis_key(None) == f"{prefix}:-"
    assert store.redis_key("a:b") == f"{prefix}:{{a:b}}"
    await store.take(None, 1.0, rate=0.01, burst=1, now=0.0)
    keyed = await store.take("-", 1.0, rate=0.01, burst=1, now=0.0)
    assert keyed.wait == 0.0


async def test_any_key_string_is_its_own_bucket(store: RedisBucketStore) -> None:
    """Braces, separators, unicode, the empty string and long keys: distinct buckets."""
    keys = ["a}b", "{x}", "a:{b}", "", "-", "é🙂", "k" * 2000, "x\r\ny"]
    first = [await store.take(k, 1.0, rate=0.01, burst=1, now=0.0) for k in keys]
    again = [await store.take(k, 1.0, rate=0.01, burst=1, now=0.0) for k in keys]
    assert all(r.wait == 0.0 for r in first)  # each key had its own full bucket
    assert all(r.wait > 0.0 for r in again)


async def test_every_key_written_has_a_ttl_of_one_refill_at_most(
    store: RedisBucketStore, redis_url: str, prefix: str
) -> None:
    limiter = RateLimiter(rate=2.0, burst=10, max_wait=0, per_key=True, store=store)
    for i in range(30):
        await limiter.try_acquire(f"client-{i % 7}")
    await limiter.try_acquire()
    await store.tokens("read only", rate=2.0, burst=10, now=0.0)
    sync = redis.Redis.from_url(redis_url)
    try:
        keys = list(sync.scan_iter(match=f"{prefix}:*"))
        assert len(keys) == 8  # 7 clients and the unkeyed bucket; a read writes nothing
        for key in keys:
            ttl = sync.pttl(key)
            # a key expires when its bucket is full again: at most burst / rate = 5 s
            assert 0 < ttl <= 5_001, (key, ttl)
    finally:
        sync.close()


async def test_one_script_call_per_decision(own_redis: RedisServer, prefix: str) -> None:
    store = RedisBucketStore(own_redis.url, prefix=prefix, timeout=1.0)
    limiter = RateLimiter(rate=1000.0, burst=100, max_wait=0, per_key=True, store=store)
    await limiter.try_acquire("warm-up")  # connects, loads the script (EVALSHA, then EVAL)
    before = command_calls(own_redis)
    decisions = 200
    for i in range(decisions):
        await limiter.try_acquire(f"k{i % 3}")
    after = command_calls(own_redis)
    await store.aclose()
    spent = {name: after[name] - before.get(name, 0) for name in after}
    spent = {name: n for name, n in spent.items() if n}
    assert spent.pop("info") == 1  # our own INFO...
    spent.pop("hello", None)  # ...and the handshake of its connection
    spent.pop("client", None)
    assert spent.pop("evalsha") == decisions  # one script call per decision
    # Redis also counts the commands the script runs inside that call; nothing else was sent
    # (no EVAL: the script stayed loaded; no separate read of the tokens).
    assert set(spent) <= {"time", "get", "set"}, spent
    assert spent["time"] == spent["get"] == decisions


async def test_concurrent_decisions_share_a_bounded_pool(
    own_redis: RedisServer, prefix: str
) -> None:
    """200 decisions at once through 4 connections: all decided by Redis, none fell back."""
    seen: list[Event] = []
    store = RedisBucketStore(
        own_redis.url, prefix=prefix, timeout=5.0, max_connections=4, listeners=[seen.append]
    )
    limiter = RateLimiter(rate=0.01, burst=150, max_wait=0, store=store)
    statuses = await asyncio.gather(*(limiter.try_acquire("k") for _ in range(200)))
    sync = own_redis.client()
    try:
        clients = sync.client_list()
    finally:
        sync.close()
    await store.aclose()
    assert sum(s.allowed for s in statuses) == 150
    assert seen == []
    assert len(clients) <= 5  # ours and the CLIENT LIST connection


async def test_a_lease_takes_many_tokens_in_one_round_trip(
    own_redis: RedisServer, prefix: str
) -> None:
    store = RedisBucketStore(own_redis.url, prefix=prefix, timeout=1.0, lease=10)
    limiter = RateLimiter(rate=0.01, burst=100, max_wait=0, store=store)
    await limiter.try_acquire("warm-up")
    before = command_calls(own_redis)
    statuses = [await limiter.try_acquire("hot") for _ in range(50)]
    after = command_calls(own_redis)
    await store.aclose()
    assert all(s.allowed for s in statuses)
    assert after["evalsha"] - before["evalsha"] == 5  # 50 decisions, 10 per round trip
    assert round(statuses[0].remaining, 3) == 99.0  # the shared bucket's 90 + 9 held here
    assert round(statuses[9].remaining, 3) == 90.0


async def test_a_lease_is_spent_by_its_process_then_expires(
    redis_url: str, prefix: str, clock: FakeClock
) -> None:
    """Two processes on a 5-token bucket: the first leases all 5; the second is refused
    until the lease expires unspent (dropped, not returned)."""
    first = RedisBucketStore(redis_url, prefix=prefix, timeout=1.0, lease=10, lease_ttl=0.5)
    second = RedisBucketStore(redis_url, prefix=prefix, timeout=1.0)
    a = RateLimiter(rate=0.01, burst=5, max_wait=0, store=first, clock=clock)
    b = RateLimiter(rate=0.01, burst=5, max_wait=0, store=second, clock=clock)
    assert (await a.try_acquire()).allowed  # one round trip took all 5 tokens, 4 held
    assert not (await b.try_acquire()).allowed
    assert [(await a.try_acquire()).allowed for _ in range(2)] == [True, True]  # 2 held
    clock.advance(1.0)  # the limiter's clock: a leased token is spendable for 0.5 s
    assert not (await a.try_acquire()).allowed  # the 2 held expired; Redis has none
    await first.aclose()
    await second.aclose()


async def test_the_script_is_reloaded_after_the_server_forgets_it(
    own_redis: RedisServer, prefix: str
) -> None:
    seen: list[Event] = []
    store = RedisBucketStore(own_redis.url, prefix=prefix, timeout=1.0, listeners=[seen.append])
    limiter = RateLimiter(rate=0.01, burst=3, max_wait=0, store=store)
    assert (await limiter.try_acquire()).allowed
    sync = own_redis.client()
    sync.script_flush()  # what a restart or a failover to a fresh replica does
    before = command_calls(own_redis)
    assert (await limiter.try_acquire()).allowed
    assert (await limiter.try_acquire()).allowed
    assert not (await limiter.try_acquire()).allowed
    spent = command_calls(own_redis)
    sync.close()
    await store.aclose()
    assert spent["eval"] - before.get("eval", 0) == 1  # reloaded once
    assert seen == []  # no fallback: the reload happened inside the decision


# -- a fleet ----------------------------------------------------------------------------------


@pytest.mark.parametrize("lease", [0, 10])
def test_six_processes_share_one_quota(redis_url: str, prefix: str, lease: int) -> None:
    """Admitted in total: rate * seconds + burst, within 3 % (and a lease per process)."""
    # A burst of a whole second of refill: a fleet that all stalls for less than that on a
    # busy machine loses no token (a full bucket stops filling).
    rate, burst, seconds = 200.0, 200.0, 2.5
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    processes = [
        subprocess.Popen(
            [sys.executable, str(HELPERS), "hammer", redis_url, prefix]
            + [str(x) for x in (rate, burst, seconds, lease)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(6)
    ]
    results = []
    try:
        for process in processes:  # every process imported, connected and warmed up
            assert process.stdout is not None
            assert process.stderr is not None
            if process.stdout.readline() != b"ready\n":
                pytest.fail(process.stderr.read().decode()[-2000:])
        start = time.time() + 0.3
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(f"{start}\n".encode())
            process.stdin.close()
        for process in processes:
            assert process.stdout is not None
            assert process.stderr is not None
            out = process.stdout.read()
            err = process.stderr.read()
            assert process.wait(timeout=30) == 0, err.decode()[-2000:]
            results.append([float(x) for x in out.split()])
    finally:
        for process in processes:
            process.kill()
            process.wait()
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
    admitted = sum(r[0] for r in results)
    decisions = sum(r[1] for r in results)
    fallbacks = sum(r[2] for r in results)
    # The window really hammered: from the first decision of any process (the bucket full)
    # to the last (a process slow to start on a busy machine shortens it, never lengthens).
    window = max(r[4] for r in results) - min(r[3] for r in results)
    assert seconds - 0.5 < window < seconds + 0.5
    expected = rate * window + burst  # ~700; six local limiters would admit six times that
    assert fallbacks == 0
    assert decisions > 1.5 * expected  # the processes asked for more than the quota
    # Leased tokens are taken from the shared bucket before they are spent: at the end of the
    # window each process may hold up to one lease it took but did not spend.
    assert expected - 6 * lease - 0.03 * expected <= admitted <= expected + 0.03 * expected, (
        admitted,
        expected,
        results,
    )
    assert all(r[0] > 0 for r in results)  # every process got a share


async def test_middleware_behind_two_servers_shares_one_clients_quota(
    redis_url: str, prefix: str
) -> None:
    servers = [start_uvicorn(redis_url, prefix) for _ in range(2)]
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            for process, port in servers:
                for _ in range(200):
                    try:
                        await client.get(f"http://127.0.0.1:{port}/healthz")
                        break
                    except httpx.TransportError:
                        if process.poll() is not None:
                            assert process.stderr is not None
                            pytest.fail(process.stderr.read().decode()[-2000:])
                        await asyncio.sleep(0.05)
            codes: dict[int, list[int]] = {port: [] for _, port in servers}
            remaining: list[str] = []
            for i in range(30):  # one client, alternating between the two servers
                port = servers[i % 2][1]
                response = await client.get(f"http://127.0.0.1:{port}/")
                codes[port].append(response.status_code)
                remaining.append(response.headers["ratelimit"].split(";")[1])
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait(timeout=10)
            if process.stderr is not None:
                process.stderr.close()
    ok = sum(c.count(200) for c in codes.values())
    assert ok == 10  # the burst, once for both servers (each alone would admit 10)
    assert all(c.count(200) > 0 for c in codes.values())
    assert sum(c.count(429) for c in codes.values()) == 20
    # the RateLimit header counts down one bucket, whichever server answered
    assert remaining[:10] == [f"r={n}" for n in range(9, -1, -1)]
    assert set(remaining[10:]) == {"r=0"}


# -- outages ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["local", "allow", "deny"])
async def test_redis_killed_mid_run(own_redis: RedisServer, prefix: str, mode: str) -> None:
    """Decisions come back within the timeout, only library errors escape, then it reconnects."""
    timeout = 0.05
    seen: list[Event] = []
    store = RedisBucketStore(
        own_redis.url,
        prefix=prefix,
        timeout=timeout,
        on_unavailable=mode,  # type: ignore[arg-type]
        deny_retry_after=2.0,
        listeners=[seen.append],
    )
    limiter = RateLimiter(rate=0.01, burst=3, max_wait=0, store=store)

    async def decide() -> tuple[bool, float | None, float]:
        began = time.monotonic()
        try:
            await limiter.acquire()
            allowed, retry_after = True, None
        except RateLimitedError as exc:  # a library error; anything else fails the test
            allowed, retry_after = False, exc.retry_after
        return allowed, retry_after, time.monotonic() - began

    assert (await decide())[0]  # Redis took one token of three
    own_redis.kill()
    during = [await decide() for _ in range(20)]
    # each decision is bounded by the timeout (plus scheduling slack on a busy machine)
    assert max(d[2] for d in during) < timeout + 0.25
    allowed = [d[0] for d in during]
    if mode == "allow":
        assert all(allowed)
    elif mode == "deny":
        assert not any(allowed)
        assert {d[1] for d in during} == {2.0}
    else:
        assert allowed == [True] * 3 + [False] * 17  # a local bucket of the same size
    fallbacks = [e for e in seen if isinstance(e, StoreFallback)]
    assert len(fallbacks) == 20
    assert {e.mode for e in fallbacks} == {mode}
    assert {e.reason for e in fallbacks} <= {"error", "timeout", "open"}
    assert "open" in {e.reason for e in fallbacks}  # the breaker spared Redis the rest
    assert any(isinstance(e, CircuitStateChanged) and e.state == "open" for e in seen)

    own_redis.start()  # same port, empty: no keys, no script
    reached = False
    for _ in range(100):  # the breaker probes within its open time (at most 5 s)
        seen.clear()
        status = await limiter.try_acquire("after")
        if not any(isinstance(e, StoreFallback) for e in seen):
            reached = status.allowed
            break
        await asyncio.sleep(0.1)
    assert reached
    sync = own_redis.client()
    try:
        assert sync.exists(store.redis_key("after"))  # the decision was made in Redis
    finally:
        sync.close()
    await store.aclose()


async def test_a_slow_redis_costs_one_timeout_then_nothing(
    own_redis: RedisServer, prefix: str
) -> None:
    seen: list[Event] = []
    store = RedisBucketStore(own_redis.url, prefix=prefix, timeout=0.02, listeners=[seen.append])
    assert (await store.take("k", 1.0, rate=0.01, burst=5, now=0.0)).wait == 0.0
    pauser = own_redis.client()
    pauser.client_pause(800, all=True)  # Redis stops answering
    results, took = [], []
    try:
        for _ in range(10):
            began = time.monotonic()
            results.append(await store.take("k", 1.0, rate=0.01, burst=5, now=0.0))
            took.append(time.monotonic() - began)
    finally:
        pauser.client_unpause()
        pauser.close()
    assert max(took) < 0.02 + 0.25  # the timeout, plus scheduling slack on a busy machine
    # decided by the local bucket: 5 tokens, and the limiter's clock stands still at 0
    assert [r.wait == 0.0 for r in results] == [True] * 5 + [False] * 5
    reasons = [e.reason for e in seen if isinstance(e, StoreFallback)]
    assert reasons[0] == "timeout"
    assert reasons.count("timeout") <= 5  # then the breaker opened: no more waiting
    assert reasons[-1] == "open"
    await store.aclose()


def metric_points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


async def test_errors_and_fallbacks_are_counted_in_metrics(prefix: str) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    port = RedisServer().port  # nothing listens there
    store = RedisBucketStore(
        f"redis://127.0.0.1:{port}/0",
        prefix=prefix,
        on_unavailable="allow",
        meter_provider=provider,
        telemetry=Telemetry(meter_provider=provider, tracing=False),
    )
    for _ in range(8):
        assert await store.take("k", 1.0, rate=1.0, burst=1, now=0.0) == TakeResult(0.0, 0.0)
    fallbacks = metric_points(reader, "resilient.store.fallbacks")
    assert sum(getattr(p, "value", 0) for p in fallbacks) == 8
    attributes = [dict(p.attributes or {}) for p in fallbacks]
    assert {a["resilient.store.mode"] for a in attributes} == {"allow"}
    assert {a["resilient.store"] for a in attributes} == {"redis"}
    assert {a["resilient.reason"] for a in attributes} == {"error", "open"}
    assert all(a["error.type"] for a in attributes)
    # The Redis calls are a pipeline of the library: its own metrics show the errors (the
    # calls that reached the network) and the breaker's refusals (the ones that did not).
    calls = metric_points(reader, "resilient.call.duration")
    assert {dict(p.attributes or {})["resilient.pipeline"] for p in calls} == {"redis"}
    assert sum(getattr(p, "count", 0) for p in calls) == 8
    rejections = metric_points(reader, "resilient.rejections")
    assert sum(getattr(p, "value", 0) for p in rejections) == 3  # 5 errors opened it
    assert {dict(p.attributes or {})["resilient.reason"] for p in rejections} == {"open"}


async def test_local_fallback_enforces_its_share_of_the_quota(prefix: str) -> None:
    port = RedisServer().port  # nothing listens there
    store = RedisBucketStore(
        f"redis://127.0.0.1:{port}/0", prefix=prefix, local_share=0.25, telemetry=False
    )
    limiter = RateLimiter(rate=0.01, burst=8, max_wait=0, store=store)
    allowed = [(await limiter.try_acquire()).allowed for _ in range(4)]
    assert allowed == [True, True, False, False]  # 8 * 0.25 tokens in this process


async def test_deny_lets_a_patient_caller_ask_again_before_refusing(
    prefix: str, clock: FakeClock
) -> None:
    """With ``max_wait`` above ``deny_retry_after`` the caller waits and asks Redis again
    (it may be back), then is refused once ``max_wait`` is spent."""
    port = RedisServer().port  # nothing listens there
    seen: list[Event] = []
    store = RedisBucketStore(
        f"redis://127.0.0.1:{port}/0",
        prefix=prefix,
        on_unavailable="deny",
        deny_retry_after=1.0,
        listeners=[seen.append],
        telemetry=False,
    )
    limiter = RateLimiter(rate=1.0, burst=1, max_wait=3.5, store=store, clock=clock)
    with pytest.raises(RateLimitedError) as info:
        await limiter.acquire()
    assert info.value.retry_after == 1.0
    assert 3.0 <= clock.now() <= 3.5
    asked = sorted({e.at for e in seen if isinstance(e, StoreFallback)})
    assert asked == [0.0, 1.0, 2.0, 3.0]  # Redis asked again after each retry_after


async def test_a_cancelled_decision_propagates_the_cancellation(
    own_redis: RedisServer, prefix: str
) -> None:
    seen: list[Event] = []
    store = RedisBucketStore(own_redis.url, prefix=prefix, timeout=5.0, listeners=[seen.append])
    await store.take("k", 1.0, rate=1.0, burst=5, now=0.0)
    pauser = own_redis.client()
    pauser.client_pause(600, all=True)
    try:
        task = asyncio.ensure_future(store.take("k", 1.0, rate=1.0, burst=5, now=0.0))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        pauser.client_unpause()
        pauser.close()
    assert seen == []  # a cancellation is not an outage
    assert (await store.take("k", 1.0, rate=1.0, burst=5, now=0.0)).wait == 0.0
    await store.aclose()


# -- integration points ------------------------------------------------------------------------


def test_one_store_serves_successive_event_loops(redis_url: str, prefix: str) -> None:
    """Built outside any loop and used by two ``asyncio.run()`` in turn (closed after each)."""
    store = RedisBucketStore(redis_url, prefix=prefix, timeout=1.0)
    limiter = RateLimiter(rate=0.01, burst=3, max_wait=0, store=store)

    async def two() -> list[bool]:
        try:
            return [(await limiter.try_acquire()).allowed for _ in range(2)]
        finally:
            await store.aclose()

    assert asyncio.run(two()) == [True, True]
    assert asyncio.run(two()) == [True, False]  # the same bucket, on a new connection


async def test_standard_pipeline_takes_the_store(store: RedisBucketStore) -> None:
    pipeline = resilient.standard(rate=0.01, burst=2, rate_store=store, attempts=1)

    async def work() -> str:
        return "done"

    assert await pipeline.call(work) == "done"
    assert await pipeline.call(work) == "done"
    with pytest.raises(RateLimitedError):
        await pipeline.call(work)
    other = resilient.standard(rate=0.01, burst=2, rate_store=store, attempts=1)
    with pytest.raises(RateLimitedError):  # another pipeline (process) on the same quota
        await other.call(work)


async def test_a_user_supplied_client_is_used_and_left_open(redis_url: str, prefix: str) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)
    store = RedisBucketStore(client, prefix=prefix)
    assert (await store.take("k", 1.0, rate=1.0, burst=1, now=0.0)).wait == 0.0
    await store.aclose()
    assert await client.ping()  # not ours to close
    await client.aclose()


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.parametrize("given", ["url", "client"])
async def test_trio_gets_a_clear_configuration_error(
    redis_url: str, prefix: str, given: str
) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)  # built, never connected
    store = RedisBucketStore(redis_url if given == "url" else client, prefix=prefix)
    limiter = RateLimiter(rate=1.0, burst=1, store=store)
    for _ in range(2):
        with pytest.raises(ConfigurationError, match="needs asyncio"):
            await limiter.acquire()
        with pytest.raises(ConfigurationError, match="needs asyncio"):
            await limiter.try_acquire("k")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("url_or_client", "localhost:6379"),
        ("url_or_client", "http://127.0.0.1:6379"),
        ("url_or_client", "redis://127.0.0.1:port"),
        ("url_or_client", 6379),
        ("prefix", ""),
        ("prefix", "app:{x}"),
        ("timeout", 0),
        ("timeout", math.inf),
        ("on_unavailable", "open"),
        ("local_share", 0.0),
        ("local_share", 1.5),
        ("deny_retry_after", -1.0),
        ("local_max_keys", 0),
        ("max_connections", 0),
        ("lease", 1),
        ("lease", -1),
        ("lease_ttl", 0),
        ("breaker", "yes"),
        ("listeners", [42]),
        ("name", ""),
    ],
)
def test_bad_options_name_the_parameter(option: str, value: object) -> None:
    options: dict[str, object] = {"url_or_client": "redis://127.0.0.1:6379/0", option: value}
    url = options.pop("url_or_client")
    with pytest.raises(ConfigurationError) as info:
        RedisBucketStore(url, **options)  # type: ignore[arg-type]
    assert info.value.parameter == f"RedisBucketStore.{option}"


def test_repr_and_errors_never_show_credentials() -> None:
    store = RedisBucketStore("redis://user:s3cret@127.0.0.1:6379/0", prefix="app")
    assert "s3cret" not in repr(store)
    assert "127.0.0.1:6379" in repr(store)
    with pytest.raises(ConfigurationError) as info:
        RedisBucketStore("redis://user:s3cret@127.0.0.1:port/0")
    assert "s3cret" not in str(info.value)


def test_a_custom_breaker_is_used() -> None:
    breaker = CircuitBreaker(minimum_calls=1, per_key=False)
    store = RedisBucketStore("redis://127.0.0.1:6379/0", breaker=breaker)
    assert store.breaker is breaker

"""The middleware's overload control: an adaptive limit learning from requests, a queue
discipline, and criticality (critical / default / sheddable) shedding the lower classes first."""

from __future__ import annotations

import math
import random
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from _limits_helpers import settle, until
from resilient import AdaptiveLimit, ConfigurationError
from resilient.asgi import ResilienceMiddleware
from resilient.testing import FakeClock
from test_asgi import Conn, scope


class Samples:
    """A LimitAlgorithm that records what the middleware reports and keeps the limit."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, int, bool]] = []

    def update(self, limit: float, rtt: float, inflight: int, dropped: bool) -> float:
        self.seen.append((rtt, inflight, dropped))
        return limit


def header(value: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"test"), (b"x-criticality", value.encode())]


async def test_each_request_reports_its_latency_and_drops_to_the_limit(clock: FakeClock) -> None:
    samples = Samples()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await clock.sleep(0.25)
        if scope["path"] == "/slow-db":
            raise TimeoutError("the database timed out")
        if scope["path"] == "/bug":
            raise KeyError("bug")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = ResilienceMiddleware(
        app, max_concurrent=AdaptiveLimit(samples, initial_limit=4), clock=clock
    )
    conn = Conn()
    await mw(scope("/"), conn.receive, conn.send)
    assert conn.status == 200
    with pytest.raises(TimeoutError):
        await mw(scope("/slow-db"), Conn().receive, Conn().send)
    with pytest.raises(KeyError):
        await mw(scope("/bug"), Conn().receive, Conn().send)  # the app's bug: not a sample
    assert samples.seen == [(0.25, 1, False), (0.25, 1, True)]
    assert mw.in_flight == 0


async def test_real_app_on_the_default_clock_reports_latencies() -> None:
    """The asyncio fast path (system clock) and trio alike go through the same helper."""
    samples = Samples()

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/", hello)])
    mw = ResilienceMiddleware(app, max_concurrent=AdaptiveLimit(samples), queue="lifo")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=mw), base_url="http://test"
    ) as client:
        for _ in range(5):
            assert (await client.get("/")).status_code == 200
    assert len(samples.seen) == 5
    assert all(
        rtt >= 0.0 and inflight == 1 and not dropped for rtt, inflight, dropped in samples.seen
    )
    assert mw.bulkhead is not None
    assert mw.bulkhead.queue.name == "lifo"


async def test_an_adaptive_limit_shrinks_when_requests_time_out(clock: FakeClock) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise TimeoutError

    limit = AdaptiveLimit("aimd", initial_limit=16, min_limit=2, backoff=0.5)
    mw = ResilienceMiddleware(app, max_concurrent=limit, clock=clock)
    for expected in (8, 4, 2, 2):
        with pytest.raises(TimeoutError):
            await mw(scope(), Conn().receive, Conn().send)
        assert mw.bulkhead is not None
        assert mw.bulkhead.max_concurrent == expected


class Service:
    """An app whose requests all finish when the test ends a round."""

    def __init__(self) -> None:
        self.round = anyio.Event()
        self.running = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.running += 1
        try:
            await self.round.wait()
        finally:
            self.running -= 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    def end_round(self) -> None:
        ended, self.round = self.round, anyio.Event()
        ended.set()


async def test_at_twice_capacity_critical_requests_succeed_and_sheddable_absorb_the_shedding(
    clock: FakeClock,
) -> None:
    """Each round 20 requests arrive (a third of each class) at a service that completes 10
    per round: critical ones keep >= 95% success; the sheddable ones are refused first."""
    capacity = 10
    service = Service()
    mw = ResilienceMiddleware(
        service,
        max_concurrent=capacity,
        max_wait=30.0,
        criticality="x-criticality",
        clock=clock,
    )
    rng = random.Random(5)
    results: dict[str, list[int]] = {"critical": [], "default": [], "sheddable": []}

    async def request(kind: str) -> None:
        conn = Conn()
        await mw(scope("/work", headers=header(kind)), conn.receive, conn.send)
        assert conn.status is not None
        results[kind].append(conn.status)

    async with anyio.create_task_group() as tg:
        for _ in range(60):
            for _ in range(2 * capacity):
                tg.start_soon(request, rng.choice(("critical", "default", "sheddable")))
                await settle(3)
            assert service.running <= capacity
            service.end_round()
            await settle()
        while service.running or mw.waiting:
            service.end_round()
            await settle()

    def success(kind: str) -> float:
        return results[kind].count(200) / len(results[kind])

    assert success("critical") >= 0.95
    assert success("sheddable") < success("default") < success("critical")
    assert success("sheddable") < 0.3
    refused = {k: v.count(503) for k, v in results.items()}
    assert refused["sheddable"] > refused["default"] > refused["critical"]
    served = sum(v.count(200) for v in results.values())
    assert served >= 0.9 * 60 * capacity  # the capacity stays in use


async def test_criticality_from_a_function_and_health_paths_stay_excluded(
    clock: FakeClock,
) -> None:
    service = Service()

    def criticality(scope: Any) -> str | None:
        return "sheddable" if scope["path"].startswith("/batch") else None

    mw = ResilienceMiddleware(
        service, max_concurrent=5, criticality=criticality, critical_reserve=0.2, clock=clock
    )
    conns = [Conn() for _ in range(8)]
    async with anyio.create_task_group() as tg:
        for i, conn in enumerate(conns):
            path = "/batch/run" if i % 2 else "/api"
            tg.start_soon(mw, scope(path), conn.receive, conn.send)
            await settle(3)
        # Sheddable requests leave 2 of 5 slots free, default ones (None) leave 1.
        await until(lambda: sum(c.status == 503 for c in conns) >= 1)
        # Every slot a sheddable request may use is taken; a health check still gets in.
        health = Conn()
        running = service.running
        tg.start_soon(
            mw, scope("/healthz", headers=header("sheddable")), health.receive, health.send
        )
        await until(lambda: service.running == running + 1)
        service.end_round()
    assert health.status == 200
    statuses = [c.status for c in conns]
    admitted_api = [s for i, s in enumerate(statuses) if i % 2 == 0].count(200)
    admitted_batch = [s for i, s in enumerate(statuses) if i % 2].count(200)
    # In arrival order: api, batch, api take 3 slots; the next batch would leave fewer than 2
    # free, the next api fewer than 1: the last slot stays for critical requests.
    assert admitted_batch == 1
    assert admitted_api == 3


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"criticality": "x-criticality"}, "ResilienceMiddleware.criticality"),
        ({"max_concurrent": 4, "criticality": 5}, "ResilienceMiddleware.criticality"),
        ({"max_concurrent": 4, "criticality": "bad header"}, "ResilienceMiddleware.criticality"),
        ({"max_concurrent": 4, "critical_reserve": 0.9}, "ResilienceMiddleware.critical_reserve"),
        ({"max_concurrent": 4, "queue": "stack"}, "Bulkhead.queue"),
        ({"max_concurrent": 2.5}, "ResilienceMiddleware.max_concurrent"),
    ],
)
def test_bad_options_name_the_parameter(kwargs: dict[str, Any], parameter: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    with pytest.raises(ConfigurationError) as info:
        ResilienceMiddleware(app, **kwargs)
    assert info.value.parameter == parameter


def test_the_waiting_room_of_an_adaptive_middleware_defaults_to_its_max_limit() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    mw = ResilienceMiddleware(app, max_concurrent=AdaptiveLimit(max_limit=64))
    assert mw.bulkhead is not None
    assert mw.bulkhead.max_waiting == 64
    assert mw.bulkhead.max_concurrent == 20
    assert math.isfinite(mw.bulkhead.max_wait)


@pytest.mark.parametrize("seed", [11, 12])
async def test_random_cancellations_through_the_middleware_never_leak_a_slot(
    clock: FakeClock, seed: int
) -> None:
    """Requests of random classes cancelled at random points (waiting for a slot, running,
    refused) while an adaptive limit moves: afterwards no slot is held and none waits."""
    rng = random.Random(seed)
    service = Service()
    limit = AdaptiveLimit("aimd", initial_limit=4, min_limit=1, max_limit=6, backoff=0.5)
    mw = ResilienceMiddleware(
        service,
        max_concurrent=limit,
        max_waiting=3,
        max_wait=5.0,
        criticality="x-criticality",
        clock=clock,
    )
    assert mw.bulkhead is not None
    bulkhead = mw.bulkhead

    async def request(scope_: anyio.CancelScope, kind: str) -> None:
        with scope_:
            conn = Conn()
            await mw(scope("/work", headers=header(kind)), conn.receive, conn.send)

    for _ in range(150):
        scopes = [anyio.CancelScope() for _ in range(8)]
        async with anyio.create_task_group() as tg:
            for s in scopes:
                tg.start_soon(request, s, rng.choice(("critical", "default", "sheddable")))
            for _ in range(rng.randint(1, 6)):
                await settle(2)
                action = rng.random()
                if action < 0.4:
                    rng.choice(scopes).cancel()
                elif action < 0.8:
                    service.end_round()
                else:
                    clock.advance(rng.choice((0.5, 5.0)))
            for _ in range(50):
                snapshot = bulkhead.snapshot()
                # (a waiter handed a slot holds it before its app starts: count the slots)
                if not (service.running or snapshot.running or snapshot.waiting):
                    break
                service.end_round()
                clock.advance(5.0)
                await settle()
            else:
                raise AssertionError(f"stuck: {service.running} running, {bulkhead.snapshot()}")
        snapshot = bulkhead.snapshot()
        assert (snapshot.running, snapshot.waiting, service.running) == (0, 0, 0)
        assert 1 <= limit.limit <= 6
    assert bulkhead.try_acquire()
    bulkhead.release()

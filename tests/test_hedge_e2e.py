"""End to end: hedged requests through ResilientTransport against a real uvicorn server on
127.0.0.1 and a real 2-connection httpx pool.

Each request's first copy to arrive hangs until the client goes away; the other answers. The
hedge starts at once (``delay=0``), so no test waits on a wall clock: every call ends when
the answering copy is back, and the hanging copy is cancelled (its connection closed).
"""

from __future__ import annotations

import httpx
import pytest

import resilient
from resilient import (
    Hedge,
)
from resilient.events import (
    HedgeEnded,
)
from resilient.httpx import ResilientTransport
from resilient.testing import EventRecorder
from test_httpx_e2e import POOL_TIMEOUT, Server, _gather, live_server, pool, server

pytestmark = pytest.mark.slow

__all__ = ["live_server", "server"]  # the fixtures, imported for this module


async def test_hedged_gets_through_a_pool_of_two_never_leak_a_connection(
    server: Server,
) -> None:
    """200 requests one after another, each hedged once through 2 pooled connections (one
    per copy): every request gets the answering copy's 200, each copy reached the server,
    the hanging copy is cancelled and its connection released, so the next request finds
    the pool free (a leaked connection would end in a PoolTimeout)."""
    for i in range(200):
        server.script.plan(f"/h/{i}", "hang", 200)
    events = EventRecorder()
    pipeline = resilient.Pipeline(
        Hedge(delay=0.0, budget=None), listeners=[events], telemetry=False
    )
    transport = ResilientTransport(pipeline, pool(2))
    statuses: list[int] = []
    async with httpx.AsyncClient(transport=transport, timeout=POOL_TIMEOUT) as client:

        async def job(i: int) -> None:
            statuses.append((await client.get(server.url(f"/h/{i}"))).status_code)

        await _gather(200, 1, job)
        ended = events.of_type(HedgeEnded)
        server.script.plan("/after", 200)
        assert (await client.get(server.url("/after"))).status_code == 200
    assert statuses == [200] * 200
    assert all(len(server.script.hits_of(f"/h/{i}")) == 2 for i in range(200))
    assert len(ended) == 200
    assert all(e.winner in ("original", "hedge") and e.cancelled == 1 for e in ended)


async def test_a_post_without_idempotency_key_is_sent_once(server: Server) -> None:
    """A POST through a hedging pipeline: one copy reaches the server, even with delay=0."""
    server.script.plan("/orders", 201)
    pipeline = resilient.Pipeline(Hedge(delay=0.0, budget=None), telemetry=False)
    transport = ResilientTransport(pipeline, pool(2))
    async with httpx.AsyncClient(transport=transport, timeout=POOL_TIMEOUT) as client:
        response = await client.post(server.url("/orders"), content=b"{}")
    assert response.status_code == 201
    assert [h.method for h in server.script.hits_of("/orders")] == ["POST"]

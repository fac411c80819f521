"""Soak: nothing is lost end to end, with real processes on 127.0.0.1.

A uvicorn service behind ``ResilienceMiddleware`` calls a faulty upstream (``resilient.chaos``:
errors, throttles, latency, a 0.4 s outage every 4 s) through ``resilient.httpx.standard()``
with a pool of 4 connections. This process loads it with random client keys, random
caller deadlines (``x-request-deadline``), and requests it abandons at random moments. At the
end, once the load stops: no bulkhead slot, limiter waiter, breaker probe or pool connection is
still held (public snapshots); the memory the service traces is flat after the warm-up; and
every response is one the service meant to send (no 500).

Short by default (5 s of load per backend, in ``make test``); ``RESILIENT_SOAK=full``
runs a minute per backend. ``RESILIENT_SOAK_REPORT=path`` writes the figures as JSON.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from _soak_apps import CLIENT_KEYS

pytestmark = pytest.mark.slow

FULL = os.environ.get("RESILIENT_SOAK") == "full"
LOAD_SECONDS = 60.0 if FULL else 5.0
WORKERS = 48
APPS = Path(__file__).with_name("_soak_apps.py")
HOT_KEYS = CLIENT_KEYS[:3]
# Statuses the service means to send: its own answers (marked x-soak: app) and the
# middleware's documented refusals.
APP_STATUSES = {200, 502, 503}
MIDDLEWARE_STATUSES = {429, 503, 504}
MEMORY_SLACK = 256 * 1024  # bytes of noise allowed between the warm-up and the end


@contextmanager
def _process(*args: str) -> Iterator[str]:
    """Start ``_soak_apps.py args``; yield its base URL; kill it at the end."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(APPS.parent), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, str(APPS), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # setup only: the child prints its port once it listens
        assert line.startswith("PORT "), (line, proc.stderr.read() if proc.stderr else "")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.kill()
        _, errors = proc.communicate(timeout=10)
        assert "Traceback" not in errors, errors[-4000:]


async def _stats(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    response = await client.get(f"{url}/stats")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def _leftovers(stats: dict[str, Any]) -> dict[str, int]:
    held = {f"middleware.{k}": v for k, v in stats["middleware"].items()}
    held.update({f"upstream.{k}": v for k, v in stats["upstream"].items() if k != "breaker_states"})
    return held


async def test_nothing_is_lost_under_faults_cancellations_and_deadlines() -> None:
    """Real processes, random keys, cancellations, deadlines and upstream faults: at the end
    nothing is held, memory is flat, and every response is one the service meant."""
    rng = random.Random(1093)
    statuses: Counter[str] = Counter()
    unexpected: list[str] = []
    dropped: Counter[str] = Counter()
    abandoned = 0
    sent = 0
    with _process("upstream") as upstream, _process("service", upstream) as service:
        limits = httpx.Limits(max_connections=WORKERS, max_keepalive_connections=WORKERS)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(10.0)) as client:
            warm_memory: int | None = None
            started = time.monotonic()  # the soak's own time budget, not a test assertion

            async def worker() -> None:
                nonlocal abandoned, sent
                while time.monotonic() - started < LOAD_SECONDS:
                    # A few hot clients go over their rate limit; the rest spread thin.
                    keys = HOT_KEYS if rng.random() < 0.3 else CLIENT_KEYS
                    headers = {"x-client": rng.choice(keys)}
                    if rng.random() < 0.3:
                        headers["x-request-deadline"] = str(rng.randint(20, 1500))
                    patience = rng.uniform(0.0, 0.6) if rng.random() < 0.15 else 30.0
                    sent += 1
                    try:
                        with anyio.move_on_after(patience) as scope:
                            response = await client.get(f"{service}/work", headers=headers)
                    except httpx.TransportError as exc:
                        # A keep-alive connection the server closed as this process reused
                        # it; counted (and bounded below), the service's own errors show up
                        # as tracebacks in its log, which fail the test.
                        dropped[type(exc).__name__] += 1
                        continue
                    if scope.cancelled_caught:
                        abandoned += 1
                        continue
                    mine = response.headers.get("x-soak") == "app"
                    allowed = APP_STATUSES if mine else MIDDLEWARE_STATUSES
                    statuses[f"{response.status_code}{'' if mine else ' (middleware)'}"] += 1
                    if response.status_code not in allowed:
                        unexpected.append(f"{response.status_code} {response.text[:200]}")

            async def warm_up() -> None:
                nonlocal warm_memory
                await anyio.sleep(LOAD_SECONDS * 0.3)
                warm_memory = (await _stats(client, service))["memory"]

            async with anyio.create_task_group() as group:
                group.start_soon(warm_up)
                for _ in range(WORKERS):
                    group.start_soon(worker)

            # Quiesce: the service finishes what abandoned requests left running (bounded by
            # its 2 s request timeout), then every count must be back to zero.
            stats = await _stats(client, service)
            deadline = time.monotonic() + 10.0
            while any(_leftovers(stats).values()) and time.monotonic() < deadline:
                await anyio.sleep(0.2)
                stats = await _stats(client, service)
            # A second look after the pool's own bookkeeping settles (idle connections).
            await anyio.sleep(0.5)
            stats = await _stats(client, service)
            chaos = (await client.get(f"{upstream}/chaos")).json()
            # The service's pool still answers at once: nothing was poisoned.
            after = await client.get(f"{service}/probe")
    figures = {
        "seconds": LOAD_SECONDS,
        "requests_sent": sent,
        "abandoned_by_the_caller": abandoned,
        "connections_dropped": dict(dropped),
        "responses": dict(sorted(statuses.items())),
        "service_outcomes": stats["outcomes"],
        "upstream_faults": chaos,
        "leftovers": _leftovers(stats),
        "breaker_states_at_end": stats["upstream"]["breaker_states"],
        "memory_after_warm_up": warm_memory,
        "memory_at_end": stats["memory"],
        "after_the_soak": f"{after.status_code} {after.text[:80]}",
    }
    report = os.environ.get("RESILIENT_SOAK_REPORT")
    if report:
        path = anyio.Path(report)
        before = await path.read_text(encoding="utf-8") if await path.exists() else ""
        await path.write_text(before + json.dumps(figures) + "\n", encoding="utf-8")
    print(json.dumps(figures, indent=1))
    assert unexpected == [], unexpected[:10]
    assert "500" not in " ".join(statuses)
    assert sum(dropped.values()) <= max(5, sent // 100), dropped
    assert not any(figures["leftovers"].values()), figures["leftovers"]
    assert warm_memory is not None
    assert stats["memory"] - warm_memory < MEMORY_SLACK, figures
    assert after.status_code == 200, figures["after_the_soak"]  # the pool still serves
    # The soak did what it claims: faults were injected, callers left, deadlines cut work.
    assert chaos["errors"] > 0
    assert abandoned > 0
    assert statuses["429 (middleware)"] > 0
    assert sent > 50  # even on a busy machine

"""Overload suite: what an adaptive Bulkhead costs per call, and what it buys under overload.

Quick and full mode: a call through ``Pipeline(Bulkhead(max_concurrent=AdaptiveLimit()))``
against the same pipeline with a fixed ``max_concurrent`` (same run; gate: 1.5x).

Full mode (and ``python -m benchmarks.suite_overload --server``) also runs the real-process
experiment of docs/overload.md: a uvicorn service whose handler has a fixed capacity (at most
``C`` requests run at once, each for ``WORK`` seconds; more queue inside the service) behind
``ResilienceMiddleware``, offered load from a separate process (open loop, fixed arrival
rate) by clients with a short deadline. It reports goodput (responses within the deadline per
second) as a share of the capacity, the admitted requests' p99 latency against the unloaded
latency, for an adaptive limit and for a fixed limit of 10x the capacity, at 2x and at 0.7x
the capacity, and draws ``docs/overload.png`` (limit and latency over time). Bounded: about
a minute.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import resilient
from benchmarks._harness import Case, run_cases, summary

ROOT = Path(__file__).resolve().parent.parent
CAPACITY = 4  # requests the service runs at once
WORK = 0.1  # seconds each takes: capacity = 40 requests per second
DEADLINE = 0.5  # the clients' deadline (5x the work)
PHASE = 12.0  # seconds of load per configuration


async def _f() -> int:
    return 1


def _through(pipeline_factory: Any) -> Case:
    built: list[Any] = []

    async def run(n: int) -> None:
        if not built:
            built.append(pipeline_factory().wrap(_f))
        fn = built[0]
        for i in range(n):
            await fn()
            if i % 128 == 0:
                await asyncio.sleep(0)

    return run


def cases() -> dict[str, Case]:
    return {
        "Pipeline(Bulkhead(32)).wrap": _through(
            lambda: resilient.Pipeline(resilient.Bulkhead(max_concurrent=32), telemetry=False)
        ),
        "Pipeline(Bulkhead(AdaptiveLimit())).wrap": _through(
            lambda: resilient.Pipeline(
                resilient.Bulkhead(max_concurrent=resilient.AdaptiveLimit()), telemetry=False
            )
        ),
        "Pipeline(Bulkhead(AdaptiveLimit('gradient2'))).wrap": _through(
            lambda: resilient.Pipeline(
                resilient.Bulkhead(max_concurrent=resilient.AdaptiveLimit("gradient2")),
                telemetry=False,
            )
        ),
    }


GATES = [
    ("Pipeline(Bulkhead(AdaptiveLimit())).wrap", "Pipeline(Bulkhead(32)).wrap", 1.5),
    ("Pipeline(Bulkhead(AdaptiveLimit('gradient2'))).wrap", "Pipeline(Bulkhead(32)).wrap", 1.5),
]
REFERENCE = "Pipeline(Bulkhead(32)).wrap"
NOTES = {
    "Pipeline(Bulkhead(AdaptiveLimit())).wrap": "two clock reads and one Vegas update per call",
}


def run(*, quick: bool) -> dict[str, float]:
    # Quick mode: the fastest round of each case (see _harness.summary).
    results = run_cases(cases(), calls=1_000 if quick else 20_000, rounds=31 if quick else 25)
    out = summary(results, quick=quick)
    if not quick:
        out.update(server_experiment(plot=ROOT / "docs" / "overload.png"))
    return out


# -- the real-process experiment ------------------------------------------------------------


def _serve(port: int, mode: str, stats_path: str) -> None:  # runs in the server process
    import uvicorn

    from resilient.asgi import ResilienceMiddleware

    inside = asyncio.Semaphore(CAPACITY)

    async def service(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        async with inside:  # at most CAPACITY at once; the rest queue here, inside
            await asyncio.sleep(WORK)
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    options: dict[str, Any] = {"deadline_header": "x-request-deadline", "exclude": ()}
    if mode == "adaptive":
        app = ResilienceMiddleware(
            service,
            # The defaults, started at the capacity (to keep the run short); no waiting room:
            # what the limit refuses gets a 503 at once.
            max_concurrent=resilient.AdaptiveLimit(initial_limit=CAPACITY, max_limit=400),
            max_waiting=0,
            **options,
        )
    elif mode == "fixed":
        app = ResilienceMiddleware(
            service, max_concurrent=10 * CAPACITY, max_waiting=10 * CAPACITY, **options
        )
    else:
        raise SystemExit(f"unknown mode {mode}")
    timeline: list[tuple[float, int, int]] = []

    async def sample() -> None:
        start = time.monotonic()
        bulkhead = app.bulkhead
        assert bulkhead is not None
        while True:
            snap = bulkhead.snapshot()
            timeline.append((time.monotonic() - start, snap.max_concurrent, snap.running))
            if len(timeline) % 10 == 0:  # uvicorn re-raises SIGTERM: no code runs after it
                Path(stats_path).write_text(json.dumps(timeline))  # noqa: ASYNC240 - a few KB
            await asyncio.sleep(0.05)

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off")
    server = uvicorn.Server(config)

    async def main() -> None:
        sampler = asyncio.ensure_future(sample())
        await server.serve()
        sampler.cancel()

    asyncio.run(main())


async def _get(pool: list[Any], port: int) -> int:
    """One keep-alive HTTP/1.1 GET on a raw connection (much cheaper than a full client, so
    the load generator is never the bottleneck); returns the status."""
    if pool:
        reader, writer = pool.pop()
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await reader.readexactly(length)
    except BaseException:
        writer.close()  # abandoned mid-request: the server sees the disconnect
        raise
    pool.append((reader, writer))
    return status


_REQUEST = b"GET / HTTP/1.1\r\nhost: bench\r\nx-request-deadline: %d\r\n\r\n" % int(DEADLINE * 1000)


async def _load(port: int, rate: float, seconds: float) -> list[tuple[float, float, int]]:
    """Open-loop arrivals at ``rate`` per second for ``seconds``; each request gives up at
    ``DEADLINE``. Returns (sent at, latency, status; 0 = gave up) per request."""
    records: list[tuple[float, float, int]] = []
    pool: list[Any] = []
    start = time.monotonic()

    async def one(at: float) -> None:
        t0 = time.monotonic()
        try:
            status = await asyncio.wait_for(_get(pool, port), DEADLINE)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            status = 0
        records.append((at, time.monotonic() - t0, status))

    tasks = set()
    i = 0
    while (now := time.monotonic() - start) < seconds:
        due = i / rate
        if due > now:
            await asyncio.sleep(due - now)
        task = asyncio.ensure_future(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    await asyncio.gather(*tasks)
    for _, writer in pool:
        writer.close()
    return records


def _load_main(port: int, rate: float, seconds: float, out: str) -> None:  # the client process
    Path(out).write_text(json.dumps(asyncio.run(_load(port, rate, seconds))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _phase(mode: str, rate: float, seconds: float, tmp: Path) -> dict[str, Any]:
    port = _free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    stats = tmp / f"stats-{mode}-{rate:g}.json"
    records = tmp / f"load-{mode}-{rate:g}.json"
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.suite_overload", "--serve", str(port), mode, str(stats)],
        env=env,
        cwd=ROOT,
    )
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.suite_overload",
                "--load",
                str(port),
                str(rate),
                str(seconds),
                str(records),
            ],
            env=env,
            cwd=ROOT,
            check=True,
            timeout=seconds + 30,
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
    data: list[tuple[float, float, int]] = json.loads(records.read_text())
    timeline = json.loads(stats.read_text()) if stats.exists() else []
    return {"records": data, "timeline": timeline, "seconds": seconds}


def _summary(phase: dict[str, Any], skip: float = 2.0) -> dict[str, float]:
    records = [r for r in phase["records"] if r[0] >= skip]
    span = phase["seconds"] - skip
    good = [r for r in records if r[2] == 200 and r[1] <= DEADLINE]
    admitted = sorted(r[1] for r in records if r[2] == 200)
    p99 = admitted[int(0.99 * (len(admitted) - 1))] if admitted else float("inf")
    return {
        "goodput": len(good) / span,
        "goodput_share": len(good) / span / (CAPACITY / WORK),
        "p99": p99,
        "p50": admitted[len(admitted) // 2] if admitted else float("inf"),
        "shed": sum(1 for r in records if r[2] == 503) / max(len(records), 1),
    }


def server_experiment(plot: Path | None = None, seconds: float = PHASE) -> dict[str, float]:
    """Run the phases; return the headline numbers (and draw ``plot``)."""
    import tempfile

    capacity = CAPACITY / WORK
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        unloaded = _phase("adaptive", 0.2 * capacity, 4.0, tmp)
        base = _summary(unloaded, skip=0.5)["p50"]
        phases = {
            "adaptive 2x": _phase("adaptive", 2 * capacity, seconds, tmp),
            "fixed 10x capacity, 2x": _phase("fixed", 2 * capacity, seconds, tmp),
            "adaptive 0.7x": _phase("adaptive", 0.7 * capacity, seconds / 2, tmp),
            "fixed 10x capacity, 0.7x": _phase("fixed", 0.7 * capacity, seconds / 2, tmp),
        }
    out: dict[str, float] = {"unloaded p50 latency (ms)": base * 1e3}
    for label, phase in phases.items():
        summary = _summary(phase)
        out[f"{label}: goodput (% of capacity)"] = 100 * summary["goodput_share"]
        out[f"{label}: admitted p99 (x unloaded)"] = summary["p99"] / base
        out[f"{label}: shed (%)"] = 100 * summary["shed"]
    if plot is not None:
        _plot(phases, base, plot)
    return out


def _plot(phases: dict[str, dict[str, Any]], base: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for label in ("adaptive 2x", "fixed 10x capacity, 2x"):
        phase = phases[label]
        t = [row[0] for row in phase["timeline"]]
        axes[0].plot(t, [row[1] for row in phase["timeline"]], label=f"{label}: limit")
        axes[0].plot(
            t, [row[2] for row in phase["timeline"]], linestyle=":", label=f"{label}: running"
        )
        ok = [(r[0], r[1] * 1e3) for r in phase["records"] if r[2] == 200]
        axes[1].scatter(
            [x for x, _ in ok], [y for _, y in ok], s=2, alpha=0.4, label=f"{label}: 200s"
        )
    axes[0].axhline(CAPACITY, color="grey", linewidth=0.8, label="service capacity")
    axes[0].set_ylabel("concurrent requests")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7, loc="upper left")
    axes[1].axhline(DEADLINE * 1e3, color="red", linewidth=0.8, label="client deadline")
    axes[1].axhline(3 * base * 1e3, color="grey", linewidth=0.8, label="3x unloaded")
    axes[1].set_ylabel("latency of 200 responses (ms)")
    axes[1].set_xlabel("seconds")
    axes[1].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"2x overload: service runs {CAPACITY} at once, {WORK * 1e3:g} ms each")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        _serve(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "--load":
        _load_main(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
    elif sys.argv[1] == "--server":
        for key, value in server_experiment(plot=ROOT / "docs" / "overload.png").items():
            print(f"{key:50s} {value:8.1f}")

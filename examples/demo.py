"""`make demo`: the same traffic through a plain client and a resilient one, during an incident.

A real uvicorn upstream on 127.0.0.1 (a free port) plays a scripted incident with
``resilient.chaos.ChaosMiddleware``: healthy, error burst, latency spike, full outage,
recovery. Three clients send the same open-loop workload at the same time, each to its own
copy of the upstream (same script, same seed), so every client lives through the same
incident:

- ``resilient``: ``httpx.AsyncClient(transport=resilient.httpx.standard(total_timeout=2.0,
  attempt_timeout=0.25))``, every other option at its documented default;
- ``plain httpx``: ``httpx.AsyncClient()`` as most services use it (no retries);
- ``httpx-retries``: the popular retrying transport (3 retries, exponential backoff).

It leads with what a reader looks at first (did the requests succeed, the load on the upstream
during the outage, p99 latency; resilient next to the best peer on each), then prints a
side-by-side table (success rate, latency percentiles, load on the upstream,
retries, budget refusals, breaker openings, time to recover after the outage), writes a PNG
chart and prints its path, and serves the library's metrics on ``/metrics`` while it runs.

Run: ``make demo`` (or ``.venv/bin/python examples/demo.py``); about 25 seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

import resilient
from resilient.chaos import Chaos, ChaosMiddleware, Scenario

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "demo-output"
SEED = 20261127
BUCKET = 0.5  # seconds per point on the chart and for "time to recover"
RECOVERED = 0.95  # success rate of a bucket that counts as "recovered"


def incident(scale: float = 1.0, *, rate: float | None = None) -> Scenario:
    """The scripted incident the upstream plays (``scale`` stretches every phase).

    With the workload's ``rate``, the healthy phase is half a request period longer, so every
    phase boundary falls midway between two requests: a request sent right at a boundary
    would meet one phase or the other by a millisecond of jitter, and be counted in the
    other one.
    """
    lead = 0.0 if rate is None else 0.5 / rate
    return Scenario.incident(
        healthy=3.0 * scale + lead,
        error_burst=3.0 * scale,
        latency_spike=3.0 * scale,
        outage=3.0 * scale,
        recovery=4.0 * scale,
        burst_error_rate=0.3,  # 30 % of the requests answer 503 (one bad replica of three)
        spike_latency=(0.8, 1.2),  # 30 % of the requests take about a second
        spike_rate=0.3,
        status=503,
    )


# --------------------------------------------------------------------------------------------
# the upstream: one uvicorn server, one chaos-wrapped copy of the service per client


class Upstream:
    """An ASGI app serving ``/<client>/...``; each client's path has its own ``Chaos``.

    Every request that reaches the server is counted (with its arrival time), including
    those the chaos middleware answers: that is the load the clients put on the upstream.
    """

    def __init__(self, clients: list[str], scenario: Scenario) -> None:
        self.arrivals: dict[str, list[float]] = {name: [] for name in clients}
        self.chaos = {name: Chaos(scenario, seed=SEED) for name in clients}
        self._apps = {
            name: ChaosMiddleware(self._service, chaos=chaos) for name, chaos in self.chaos.items()
        }

    @staticmethod
    async def _service(scope: Any, receive: Any, send: Any) -> None:
        body = b'{"price": 9.99}'
        headers = [(b"content-type", b"application/json"), (b"content-length", b"15")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        client = scope["path"].split("/", 2)[1]
        app = self._apps.get(client)
        if app is None:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        self.arrivals[client].append(time.monotonic())
        await app(scope, receive, send)

    def start_incident(self) -> None:
        """Arm every copy: each script starts at its first request."""
        for chaos in self.chaos.values():
            chaos.restart()
            chaos.enable()


class Server:
    """uvicorn serving an ASGI app on 127.0.0.1 (a free port) from a background thread."""

    def __init__(self, app: Any) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", access_log=False, timeout_keep_alive=30
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the upstream server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10.0)
        self._socket.close()


# --------------------------------------------------------------------------------------------
# the clients


@dataclass
class Counters:
    """What the resilient pipeline reported through its event listener."""

    retries: int = 0
    hedges: int = 0
    budget_refusals: int = 0
    breaker_openings: int = 0

    def __call__(self, event: resilient.events.Event) -> None:
        if isinstance(event, resilient.events.RetryScheduled):
            self.retries += 1
        elif isinstance(event, resilient.events.HedgeStarted):
            self.hedges += 1
        elif isinstance(event, resilient.events.BudgetRefused):
            self.budget_refusals += 1
        elif isinstance(event, resilient.events.CircuitStateChanged) and event.state == "open":
            self.breaker_openings += 1


@dataclass
class Client:
    name: str
    label: str
    http: httpx.AsyncClient
    counters: Counters | None = None  # resilient only
    records: list[tuple[float, float, bool]] = field(default_factory=list)  # start, s, ok


def plain_client(base: str) -> Client:
    http = httpx.AsyncClient(base_url=f"{base}/plain", limits=httpx.Limits(max_connections=200))
    return Client("plain", "plain httpx", http)


def retrying_client(base: str) -> Client:
    from httpx_retries import Retry, RetryTransport

    transport = RetryTransport(
        transport=httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=200)),
        retry=Retry(total=3, backoff_factor=0.1),
    )
    http = httpx.AsyncClient(base_url=f"{base}/retries", transport=transport)
    return Client("retries", "httpx-retries", http)


# The resilient client's settings: the two timeouts a service sets for a dependency that
# answers in milliseconds. Everything else is resilient.httpx.standard()'s documented default
# (4 attempts under an adaptive retry budget, a breaker that callers can wait out, hedging
# when an attempt outlives its timeout, a bulkhead of 100).
RESILIENT_OPTIONS: dict[str, Any] = {
    "total_timeout": 2.0,  # the caller waits at most this long, retries included
    "attempt_timeout": 0.25,  # an attempt slower than this gets a hedge beside it
}


def resilient_client(base: str) -> Client | None:
    """``resilient.httpx.standard()``; ``None`` when the httpx integration is missing."""
    try:
        from resilient.httpx import standard  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None
    counters = Counters()
    transport = standard(
        httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=200)),
        name="demo",
        listeners=[counters],
        **RESILIENT_OPTIONS,
    )
    http = httpx.AsyncClient(base_url=f"{base}/resilient", transport=transport)
    return Client("resilient", "resilient", http, counters)


async def drive(client: Client, *, start: float, duration: float, rate: float) -> None:
    """Open-loop workload: a request every ``1/rate`` s, whether earlier ones finished or not."""

    async def one() -> None:
        began = time.monotonic()
        try:
            response = await client.http.get("/price")
            ok = response.status_code < 400
        except Exception:
            ok = False
        client.records.append((began - start, time.monotonic() - began, ok))

    async with asyncio.TaskGroup() as tasks:
        for i in range(int(duration * rate)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.create_task(one())


# --------------------------------------------------------------------------------------------
# results


@dataclass
class Summary:
    label: str
    sent: int
    success_rate: float
    p50: float
    p95: float
    p99: float
    upstream: int
    retries: int | None
    hedges: int | None
    budget_refusals: int | None
    breaker_openings: int | None
    recovery: float | None  # seconds after the outage ended; None: not within the run
    by_phase: dict[str, float]  # success rate of the requests started in each phase
    outage_load: float  # upstream requests per request sent, during the outage


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def buckets(records: list[tuple[float, Any, bool]], end: float) -> list[tuple[float, float]]:
    """(bucket start, success rate) of the requests started in each bucket."""
    out = []
    for i in range(math.ceil(end / BUCKET)):
        inside = [r[-1] for r in records if i * BUCKET <= r[0] < (i + 1) * BUCKET]
        if inside:
            out.append((i * BUCKET, sum(inside) / len(inside)))
    return out


def load(arrivals: list[float], start: float, end: float) -> list[tuple[float, float]]:
    """(bucket start, requests per second received by the upstream)."""
    counts = [0] * math.ceil(end / BUCKET)
    for at in arrivals:
        index = int((at - start) / BUCKET)
        if 0 <= index < len(counts):
            counts[index] += 1
    return [(i * BUCKET, c / BUCKET) for i, c in enumerate(counts)]


def summarize(
    client: Client,
    arrivals: list[float],
    *,
    scenario: Scenario,
    script_start: float,
    start: float,
    end: float,
) -> Summary:
    """The table's column for one client.

    ``script_start`` is when this client's copy of the upstream started its script (seconds
    after the workload started at ``start``): phases are attributed on that copy's timeline.
    """
    records = client.records
    latencies = [seconds for _, seconds, _ in records]
    by_phase: dict[str, list[bool]] = {phase.name: [] for phase in scenario.phases}
    for began, _, ok in records:
        by_phase[scenario.phase_at(began - script_start).name].append(ok)
    outage_start, outage_end = (
        script_start + scenario.timeline()[3][0],
        script_start + scenario.timeline()[3][1],
    )
    recovery = None
    after = [(began - outage_end, ok) for began, _, ok in records if began >= outage_end]
    for offset, rate in buckets(after, end - outage_end):  # buckets start at the outage's end
        if rate >= RECOVERED:
            recovery = offset
            break
    sent_in_outage = sum(outage_start <= began < outage_end for began, _, _ in records)
    received_in_outage = sum(outage_start <= at - start < outage_end for at in arrivals)
    counters = client.counters
    retries: int | None
    if counters is not None:
        retries = counters.retries
    elif client.name == "retries":
        retries = len(arrivals) - len(records)
    else:
        retries = 0
    return Summary(
        label=client.label,
        sent=len(records),
        success_rate=sum(ok for _, _, ok in records) / max(len(records), 1),
        p50=_percentile(latencies, 0.50),
        p95=_percentile(latencies, 0.95),
        p99=_percentile(latencies, 0.99),
        upstream=len(arrivals),
        retries=retries,
        hedges=None if counters is None else counters.hedges,
        budget_refusals=None if counters is None else counters.budget_refusals,
        breaker_openings=None if counters is None else counters.breaker_openings,
        recovery=recovery,
        by_phase={k: sum(v) / len(v) for k, v in by_phase.items() if v},
        outage_load=received_in_outage / max(sent_in_outage, 1),
    )


def table(summaries: list[Summary], phases: list[str]) -> str:
    def opt(value: int | None) -> str:
        return "-" if value is None else f"{value:,}"

    rows: list[tuple[str, Callable[[Summary], str]]] = [
        ("requests sent by the app", lambda s: f"{s.sent:,}"),
        ("success rate", lambda s: f"{s.success_rate:.1%}"),
        *[
            (f"  during {name}", lambda s, name=name: f"{s.by_phase.get(name, math.nan):.1%}")
            for name in phases
        ],
        ("latency p50", lambda s: f"{s.p50 * 1000:,.0f} ms"),
        ("latency p95", lambda s: f"{s.p95 * 1000:,.0f} ms"),
        ("latency p99", lambda s: f"{s.p99 * 1000:,.0f} ms"),
        ("requests the upstream received", lambda s: f"{s.upstream:,}"),
        ("load amplification", lambda s: f"{s.upstream / max(s.sent, 1):.2f}x"),
        ("  during the outage", lambda s: f"{s.outage_load:.2f}x"),
        ("retries", lambda s: opt(s.retries)),
        ("hedges (a second attempt beside a slow one)", lambda s: opt(s.hedges)),
        ("retry budget refusals", lambda s: opt(s.budget_refusals)),
        ("breaker openings", lambda s: opt(s.breaker_openings)),
        (
            "time to recover after the outage",
            lambda s: "not within the run" if s.recovery is None else f"{s.recovery:.1f} s",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    columns = [max(len(s.label), 12) for s in summaries]
    pairs = list(zip(summaries, columns, strict=True))
    header = " " * width + "  " + "  ".join(s.label.rjust(w) for s, w in pairs)
    lines = [header, "-" * len(header)]
    for name, cell in rows:
        cells = "  ".join(cell(s).rjust(w) for s, w in pairs)
        lines.append(f"{name.ljust(width)}  {cells}")
    return "\n".join(lines)


def chart(
    *,
    clients: list[Client],
    upstream: Upstream,
    scenario: Scenario,
    start: float,
    end: float,
    path: Path,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"plain": "#7f7f7f", "retries": "#ff7f0e", "resilient": "#1f77b4"}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    shades = {"healthy": None, "recovery": None, "error burst": "#ffd8d8",
              "latency spike": "#fff1c9", "outage": "#f4b6b6"}  # fmt: skip
    for begin, phase_end, phase in scenario.timeline():
        finish = min(phase_end, end)
        color = shades.get(phase.name, "#eeeeee")
        for ax in (top, bottom):
            if color:
                ax.axvspan(begin, finish, color=color, alpha=0.6, lw=0)
        top.text((begin + finish) / 2, 1.07, phase.name, ha="center", fontsize=8)
    for client in clients:
        points = buckets(client.records, end)
        style = {"label": client.label, "color": colors[client.name], "lw": 2}
        top.plot([t + BUCKET / 2 for t, _ in points], [r for _, r in points],
                 drawstyle="steps-mid", **style)  # fmt: skip
        received = load(upstream.arrivals[client.name], start, end)
        bottom.plot([t + BUCKET / 2 for t, _ in received], [r for _, r in received],
                    drawstyle="steps-mid", **style)  # fmt: skip
    top.set_ylabel("success rate")
    top.set_ylim(-0.02, 1.13)
    top.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    top.legend(loc="lower left", fontsize=8)
    top.set_title("Same traffic, same incident: success rate and load on the upstream", loc="left")
    bottom.set_ylabel("upstream load (req/s)")
    bottom.set_xlabel("seconds since the workload started")
    bottom.set_xlim(0, end)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# the library's metrics, served on /metrics while the demo runs

_SHOWN = (
    "resilient_call_duration_seconds_count",
    "resilient_retries_total",
    "resilient_retry_budget_refusals_total",
    "resilient_retry_gave_up_total",
    "resilient_rejections_total",
    "resilient_circuit_transitions_total",
    "resilient_timeouts_total",
)


def start_metrics() -> Any | None:
    """Serve the library's metrics (``resilient.telemetry.prometheus``) on a free port."""
    try:
        from resilient.telemetry import prometheus
    except ImportError:  # the prometheus extra is not installed
        return None
    return prometheus.start_http_server(0, "127.0.0.1")


def metrics_excerpt(url: str, per_family: int = 2) -> list[str]:
    """A few of the demo pipeline's samples as Prometheus scrapes them (``otel_scope_*``
    labels left out for width)."""
    text = httpx.get(url, timeout=5.0).text
    shown: dict[str, list[str]] = {family: [] for family in _SHOWN}
    for line in text.splitlines():
        family = line.split("{", 1)[0]
        if family in shown and 'resilient_pipeline="demo"' in line:
            shown[family].append(re.sub(r'otel_scope_\w+="[^"]*",?', "", line))
    return [line for lines in shown.values() for line in sorted(lines)[:per_family]]


# --------------------------------------------------------------------------------------------


@dataclass
class Incident:
    """One run of the incident: the clients, what the upstream saw, and the summaries."""

    scenario: Scenario
    upstream: Upstream
    clients: list[Client]
    summaries: list[Summary]  # resilient first, then the peers
    start: float
    end: float


async def play(
    *,
    rate: float,
    scale: float,
    metrics_url: str | None = None,
    scenario: Scenario | None = None,
) -> Incident:
    """Run the incident once against every client at the same time and summarize it.

    ``scenario`` replaces the demo's incident (its five phases, in the same order, are what
    the summary reports on).
    """
    if scenario is None:
        scenario = incident(scale, rate=rate)
    duration = scenario.duration
    names = ["resilient", "plain", "retries"]
    upstream = Upstream(names, scenario)
    with Server(upstream) as server:
        print(f"upstream: uvicorn on {server.url}, playing: "
              + " -> ".join(f"{p.name} ({p.duration:g} s)" for p in scenario.phases))  # fmt: skip
        clients = []
        ours = resilient_client(server.url)
        if ours is None:
            print("note: resilient.httpx / resilient.standard() are not available in this "
                  "checkout; showing the other clients only")  # fmt: skip
        else:
            clients.append(ours)
        clients += [plain_client(server.url), retrying_client(server.url)]
        for client in clients:  # open the connections before the clock starts
            await client.http.get("/warmup")
        for name in upstream.arrivals:
            upstream.arrivals[name].clear()
        if metrics_url is not None:
            print(f"metrics: {metrics_url} (resilient's own metrics, while the demo runs)")
        print(f"workload: {rate:g} requests/s per client for {duration:g} s, open loop, "
              f"{len(clients)} clients at once ...")  # fmt: skip
        upstream.start_incident()
        start = time.monotonic() + 0.05
        await asyncio.gather(
            *(drive(c, start=start, duration=duration, rate=rate) for c in clients)
        )
        end = time.monotonic() - start
        for client in clients:
            await client.http.aclose()
    summaries = []
    for client in clients:
        # The chaos middleware's clock (the server loop's) and ours are both time.monotonic().
        started_at = upstream.chaos[client.name].started_at
        script_start = 0.0 if started_at is None else started_at - start
        summaries.append(
            summarize(
                client,
                upstream.arrivals[client.name],
                scenario=scenario,
                script_start=script_start,
                start=start,
                end=end,
            )
        )
    return Incident(scenario, upstream, clients, summaries, start, end)


def headline(summaries: list[Summary]) -> str:
    """What a reader looks at first: did the requests succeed, at what cost, how fast."""
    ours, peers = summaries[0], summaries[1:]
    if not peers:
        return ""
    best = max(peers, key=lambda s: s.success_rate)
    lowest = min(peers, key=lambda s: s.p99)
    return "\n".join(
        (
            f"{ours.label} next to the best peer, same traffic, same incident:",
            f"  requests that succeeded    {ours.success_rate:6.1%}  vs {best.success_rate:6.1%}"
            f"  ({best.label})",
            f"  upstream load, outage      {ours.outage_load:5.2f}x  vs {best.outage_load:5.2f}x"
            f"  ({best.label})",
            f"  latency p99             {ours.p99 * 1000:6,.0f} ms  vs {lowest.p99 * 1000:6,.0f} ms"
            f"  ({lowest.label})",
        )
    )


async def run(*, rate: float, scale: float, output: Path) -> int:
    metrics = start_metrics()
    played = await play(
        rate=rate, scale=scale, metrics_url=None if metrics is None else metrics.url
    )
    summaries = played.summaries
    print()
    print(headline(summaries))
    print()
    print(table(summaries, [phase.name for phase in played.scenario.phases]))
    print()
    print(
        "Latency counts every request, failed ones included (a fast failure is a latency the\n"
        f"caller sees too). Recovered: the first {BUCKET:g} s after the outage with >= "
        f"{RECOVERED:.0%} successes.\n"
        "Only the two timeouts are set; the rest is resilient.httpx.standard()'s defaults. It\n"
        "retries the 503s of the error burst under a budget that refunds successful retries;\n"
        "when an attempt outlives its 250 ms it sends a hedge beside it and keeps the first\n"
        "answer; in the outage its breaker opens, sends nothing but one probe every 0.2 s, and\n"
        "holds callers (up to 1 s) until a probe succeeds, so the requests of the outage's\n"
        "last second get through without a retry storm."
    )
    path = chart(
        clients=played.clients,
        upstream=played.upstream,
        scenario=played.scenario,
        start=played.start,
        end=played.end,
        path=output / "demo.png",
    )
    print(f"\nchart: {path}")
    if metrics is not None:
        print(f"\n{metrics.url} (an excerpt):")
        for line in metrics_excerpt(metrics.url):
            print(f"  {line}")
        metrics.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="requests/s per client")
    parser.add_argument("--scale", type=float, default=1.0, help="stretch the incident")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where the chart goes")
    args = parser.parse_args(argv)
    return asyncio.run(run(rate=args.rate, scale=args.scale, output=args.output))


if __name__ == "__main__":
    sys.exit(main())

"""Marc Brooker's 2015 jitter simulation, re-run with the library's own backoff functions.

The model of "Exponential Backoff And Jitter" (AWS Architecture Blog, 2015; the idea of
aws-samples/aws-arch-backoff-simulator, re-implemented here): ``N`` clients each want to update
one row guarded by optimistic concurrency control. A client reads the row's version, then writes
with that version; the write succeeds only if nobody wrote in between. A client whose write
fails backs off, then reads and writes again, until it succeeds once. Every message crosses a
network whose delay is ``|Normal(10 ms, 2 ms)|``. Backoff: base 5 ms, cap 2 s; the first failure
is attempt 1, so the first delay is drawn from ``min(cap, base * 2**1)`` (Brooker's numbering).

Strategies: the library's ``full``, ``equal`` and ``decorrelated`` jitter, its ``none``
(exponential without jitter), and no backoff at all. Measured: writes sent (``calls``, the work
the contended resource does) and the virtual time until the last client succeeds.

Virtual time and a fixed seed: the figures are the same on every machine and every run.
``python -m benchmarks.suite_jitter`` prints the Markdown table used in docs/performance.md.
"""

from __future__ import annotations

import heapq
import random
import statistics
from collections.abc import Callable

from resilient._backoff import decorrelated_jitter, equal_jitter, full_jitter, no_jitter

BASE_MS = 5.0
CAP_MS = 2000.0
NET_MEAN_MS = 10.0
NET_SD_MS = 2.0
CLIENTS = (50, 100)
SEED = 2015

Strategy = Callable[[int, float, float, float, float], float]


def _no_backoff(n: int, base: float, cap: float, draw: float, previous: float = 0.0) -> float:
    return 0.0


STRATEGIES: dict[str, Strategy] = {
    "full jitter": full_jitter,
    "equal jitter": equal_jitter,
    "decorrelated jitter": decorrelated_jitter,
    "exponential, no jitter": no_jitter,
    "no backoff": _no_backoff,
}

# Event kinds, in the order a client goes through them.
_READ, _READ_REPLY, _WRITE, _WRITE_REPLY = range(4)


def simulate(clients: int, strategy: Strategy, rng: random.Random) -> tuple[int, float]:
    """One run: every client updates the row once. Returns (writes sent, time of the last)."""
    normal = rng.normalvariate
    draw = rng.random

    def net() -> float:
        return abs(normal(NET_MEAN_MS, NET_SD_MS))

    version = 0
    calls = 0
    failures = [0] * clients
    previous = [0.0] * clients
    seen = [0] * clients  # the version each client read
    ok = [False] * clients  # the outcome of each client's last write
    queue: list[tuple[float, int, int, int]] = []
    seq = 0  # ties in time are served in the order they were scheduled
    for client in range(clients):
        heapq.heappush(queue, (net(), seq, _READ, client))
        seq += 1
    now = 0.0
    while queue:
        now, _, kind, client = heapq.heappop(queue)
        if kind == _READ:  # the server answers with the current version
            seen[client] = version
            at = now + net()
            kind = _READ_REPLY
        elif kind == _READ_REPLY:  # the client sends its write
            at = now + net()
            kind = _WRITE
        elif kind == _WRITE:  # the server applies it only if nobody wrote in between
            calls += 1
            ok[client] = seen[client] == version
            if ok[client]:
                version += 1
            at = now + net()
            kind = _WRITE_REPLY
        else:  # _WRITE_REPLY: done, or back off and start over
            if ok[client]:
                continue
            failures[client] += 1
            delay = strategy(failures[client], BASE_MS, CAP_MS, draw(), previous[client])
            previous[client] = delay
            at = now + net() + delay
            kind = _READ
        heapq.heappush(queue, (at, seq, kind, client))
        seq += 1
    return calls, now


def run_all(repetitions: int) -> dict[str, float]:
    """Mean calls and mean completion time per (strategy, N) over ``repetitions`` seeded runs."""
    out: dict[str, float] = {}
    for clients in CLIENTS:
        for index, (name, strategy) in enumerate(STRATEGIES.items()):
            rng = random.Random(SEED * 1000 + clients * 10 + index)
            runs = [simulate(clients, strategy, rng) for _ in range(repetitions)]
            out[f"{name} N={clients} calls"] = statistics.fmean(c for c, _ in runs)
            out[f"{name} N={clients} time ms"] = statistics.fmean(t for _, t in runs)
    return out


def cases() -> dict[str, object]:
    return {}  # no timed cases: this suite counts work in virtual time


UNIT = "virtual"  # counts and virtual milliseconds, not wall-clock time

# Brooker's ranking by calls: full < equal < decorrelated < exponential < none, and full jitter
# under half the calls of plain exponential backoff at N=100. Deterministic: no margin needed,
# but the runner applies its quick-mode margin anyway.
GATES = [
    ("full jitter N=100 calls", "exponential, no jitter N=100 calls", 0.5),
    *[
        (f"{a} N={n} calls", f"{b} N={n} calls", 1.0)
        for n in CLIENTS
        for a, b in (
            ("full jitter", "equal jitter"),
            ("equal jitter", "decorrelated jitter"),
            ("decorrelated jitter", "exponential, no jitter"),
            ("exponential, no jitter", "no backoff"),
        )
    ],
]


def run(*, quick: bool) -> dict[str, float]:
    return run_all(repetitions=20 if quick else 100)


def markdown(results: dict[str, float]) -> str:
    """The results as a Markdown table: one row per strategy, calls and time per N."""
    header = "| strategy |" + "".join(f" calls, N={n} | time, N={n} |" for n in CLIENTS)
    rule = "|---|" + "---:|---:|" * len(CLIENTS)
    rows = [header, rule]
    for name in STRATEGIES:
        cells = "".join(
            f" {results[f'{name} N={n} calls']:,.0f} | "
            f"{results[f'{name} N={n} time ms'] / 1000:.2f} s |"
            for n in CLIENTS
        )
        rows.append(f"| {name} |{cells}")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown(run(quick=False)))

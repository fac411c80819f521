"""Breaker suite: the closed-state success path next to peer breakers, and memory per breaker.

Cases (ns per successful call, one asyncio loop, interleaved rounds, fastest round):

- ``bare await``: the reference.
- ``Pipeline(pass-through)``: a pipeline whose only policy awaits the rest of the chain; the
  pipeline's general per-call cost (a ``Context`` and one chain step per policy).
- ``Pipeline(CircuitBreaker())``: the issue's measure (time window, the default), on the
  direct path a pipeline takes when a breaker is its only policy and nobody listens.
- ``Pipeline(CircuitBreaker(count))``: a count window (no clock read on success).
- ``Pipeline(CircuitBreaker()), telemetry on, no SDK``: as users build it; the direct path
  holds while the telemetry observer's ``recording()`` probe says nothing would be recorded.
- ``breaker step (time|count window)``: the breaker's composed chain step awaited with one
  pre-built context: the breaker's own cost without the pipeline's.
- ``pass-through step``: a chain step that only awaits the rest (one coroutine layer): the
  floor for any policy.
- ``bare await + clock.now()``: a bare await plus the one clock read a time window needs per
  call (``SystemClock.now()`` costs 2-3 bare awaits on CPython 3.11, whose
  ``asyncio._get_running_loop()`` makes a ``getpid()`` system call every time).
- ``circuitbreaker`` / ``aiobreaker`` / ``pybreaker``: the peers' success paths (pybreaker has
  no native asyncio: its sync ``calling()`` context manager around the await).

The memory figures (bytes per breaker, tracemalloc) are reported as pseudo-cases ``mem: ...``
in bytes, not ns (the runner prints every figure divided by 1,000: for these, kilobytes);
their gates compare them with a 1,024-byte reference.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any

import resilient
from benchmarks._harness import Case, run_cases
from resilient._pipeline import _invoke
from resilient.extend import Context


async def _f() -> int:
    return 1


class _PassThrough:
    """A policy that only awaits the rest of the chain."""

    name = "pass"

    async def execute(self, call: Any, ctx: Context, /) -> Any:
        return await call(ctx)


def _pass_step(inner: Any) -> Any:
    async def step(ctx: Context) -> Any:
        return await inner(ctx)

    return step


def cases() -> dict[str, Case]:
    import aiobreaker
    import circuitbreaker
    import pybreaker

    passthrough = resilient.Pipeline(_PassThrough(), telemetry=False)
    timed = resilient.Pipeline(resilient.CircuitBreaker(), telemetry=False)
    observed = resilient.Pipeline(resilient.CircuitBreaker())  # telemetry on, no SDK here
    counted = resilient.Pipeline(
        resilient.CircuitBreaker(window_type="count", window=100), telemetry=False
    )
    step_timed = resilient.CircuitBreaker().compose(_invoke, ())
    step_counted = resilient.CircuitBreaker(window_type="count", window=100).compose(_invoke, ())
    clock = resilient.extend.SystemClock()
    step_pass = _pass_step(_invoke)
    ctx = resilient.Pipeline(telemetry=False).context(_f)
    cb_peer = circuitbreaker.CircuitBreaker()(_f)
    aio_peer = aiobreaker.CircuitBreaker()
    py_peer = pybreaker.CircuitBreaker()

    async def bare(n: int) -> None:
        for i in range(n):
            await _f()
            if i % 128 == 0:
                await asyncio.sleep(0)

    async def pipeline_pass(n: int) -> None:
        call = passthrough.call
        for i in range(n):
            await call(_f)
            if i % 128 == 0:
                await asyncio.sleep(0)

    async def pipeline_timed(n: int) -> None:
        call = timed.call
        for i in range(n):
            await call(_f)
            if i % 128 == 0:
                await asyncio.sleep(0)

    async def pipeline_observed(n: int) -> None:
        call = observed.call
        for i in range(n):
            await call(_f)
            if i % 128 == 0:
                await asyncio.sleep(0)

    async def pipeline_counted(n: int) -> None:
        call = counted.call
        for i in range(n):
            await call(_f)
            if i % 128 == 0:
                await asyncio.sleep(0)

    async def bare_and_clock(n: int) -> None:
        now = clock.now
        for i in range(n):
            await _f()
            now()
            if i % 128 == 0:
                await asyncio.sleep(0)

    async def pass_step(n: int) -> None:
        for i in range(n):
            await step_pass(ctx)
            if i % 128 == 0:
                await asyncio.sleep(0)

    async def breaker_step_timed(n: int) -> None:
        for i in range(n):
            await step_timed(ctx)
            if i % 128 == 0:
                await asyncio.sleep(0)

    async def breaker_step_counted(n: int) -> None:
        for i in range(n):
            await step_counted(ctx)
            if i % 128 == 0:
                await asyncio.sleep(0)

    async def peer_circuitbreaker(n: int) -> None:
        for i in range(n):
            await cb_peer()
            if i % 128 == 0:
                await asyncio.sleep(0)

    async def peer_aiobreaker(n: int) -> None:
        call = aio_peer.call_async
        for i in range(n):
            await call(_f)
            if i % 128 == 0:
                await asyncio.sleep(0)

    async def peer_pybreaker(n: int) -> None:
        calling = py_peer.calling
        for i in range(n):
            with calling():
                await _f()
            if i % 128 == 0:
                await asyncio.sleep(0)

    return {
        "bare await": bare,
        "bare await + clock.now()": bare_and_clock,
        "Pipeline(pass-through)": pipeline_pass,
        "Pipeline(CircuitBreaker())": pipeline_timed,
        "Pipeline(CircuitBreaker(count))": pipeline_counted,
        "Pipeline(CircuitBreaker()), telemetry on, no SDK": pipeline_observed,
        "pass-through step": pass_step,
        "breaker step (time window)": breaker_step_timed,
        "breaker step (count window)": breaker_step_counted,
        "circuitbreaker": peer_circuitbreaker,
        "aiobreaker": peer_aiobreaker,
        "pybreaker": peer_pybreaker,
    }


def memory() -> dict[str, float]:
    """Bytes per breaker (tracemalloc): a whole breaker, and one more key of a keyed one."""
    names = [f"host-{i:05d}.example.org" for i in range(10_000)]
    keyed = resilient.CircuitBreaker(max_keys=20_000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        breakers = [resilient.CircuitBreaker() for _ in range(1_000)]
        whole = (tracemalloc.get_traced_memory()[0] - before) / len(breakers)
        before = tracemalloc.get_traced_memory()[0]
        key_map = keyed._key_map()
        for name in names:
            key_map.get(name, 0.0)
        per_key = (tracemalloc.get_traced_memory()[0] - before) / len(names)
    finally:
        tracemalloc.stop()
    return {
        "mem: CircuitBreaker() (us column = KB)": whole,
        "mem: one more key (us column = KB)": per_key,
        "mem: 1 KiB reference (us column = KB)": 1024.0,
    }


# (case, reference, target ratio): against peer breakers in the same run (no gate against a
# bare await or a pass-through policy: those measure a tenth of a microsecond of noise).
# circuitbreaker counts consecutive failures, without a window, half-open gating or
# classification: the count window (no clock read) matches it, the time window reads the
# clock on every call.
GATES = [
    ("breaker step (count window)", "circuitbreaker", 1.0),
    ("breaker step (time window)", "circuitbreaker", 1.3),
    ("breaker step (time window)", "aiobreaker", 1.0),
    ("mem: CircuitBreaker() (us column = KB)", "mem: 1 KiB reference (us column = KB)", 1.0),
    ("mem: one more key (us column = KB)", "mem: 1 KiB reference (us column = KB)", 1.0),
]


def run(*, quick: bool) -> dict[str, float]:
    # The fastest round of each case: on this shared 2-core machine other processes only ever
    # add time, and they do so in bursts that can cover several rounds of one case.
    results = run_cases(cases(), calls=1_000 if quick else 20_000, rounds=31 if quick else 25)
    fastest = {name: r.min_ns for name, r in results.items()}
    fastest.update(memory())
    return fastest

"""One validation rule for every public option, checked with hostile values (Hypothesis).

For every option of every public constructor (the policies, ``standard()``, the decorators,
the middleware, the transport, chaos phases, the serializer), a hostile value (NaN, either
infinity, a bool, a string, ``None``, zero, negatives, 5e-324, 1e308, ints beyond the float
range...) gives either a ``ConfigurationError`` at construction that names the option, or an
object that then works: one call through it succeeds (on asyncio and on trio).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resilient
import resilient.asgi
import resilient.chaos
import resilient.extend
import resilient.httpx
import resilient.serde
from resilient.testing import FakeClock

EDGES: list[object] = [
    math.nan,
    math.inf,
    -math.inf,
    True,
    False,
    0,
    0.0,
    -0.0,
    -1,
    -1e-9,
    5e-324,
    1e-300,
    1e-10,
    1e-9,
    0.5,
    1,
    2,
    1e15,
    1.0000001e15,
    1e307,
    1e308,
    10**15,
    10**15 + 1,
    sys.maxsize,
    2**64,
    10**400,
    "1",
    b"1",
    None,
    [],
]

HOSTILE = st.one_of(
    st.sampled_from(EDGES),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=10**300, max_value=10**400),
    st.booleans(),
    st.text(max_size=2),
    st.none(),
)

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


async def _ok() -> int:
    return 1


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _upstream() -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok"))


async def _through_pipeline(obj: Any) -> None:
    pipeline = obj if isinstance(obj, resilient.Pipeline) else None
    if pipeline is None:
        pipeline = resilient.Pipeline(obj, clock=FakeClock(), telemetry=False)
    assert await pipeline.call(_ok) == 1


async def _through_client(transport: httpx.AsyncBaseTransport) -> None:
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("http://svc.test/")).status_code == 200


async def _through_timed_client(transport: httpx.AsyncBaseTransport) -> None:
    # On the real clock a tiny timeout may fire first: a 504 is the middleware working.
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            assert (await client.get("http://svc.test/")).status_code in (200, 504)


async def _through_decorator(decorator: Any) -> None:
    assert await decorator(_ok)() == 1


async def _through_chaos(phase: resilient.chaos.Phase) -> None:
    chaos = resilient.chaos.Chaos(phase, enabled=True, seed=1)
    pipeline = resilient.Pipeline(
        resilient.chaos.ChaosPolicy(chaos), clock=FakeClock(), telemetry=False
    )
    with contextlib.suppress(resilient.chaos.ChaosError):  # a fault it was asked to inject
        assert await pipeline.call(_ok) == 1


async def _through_chaos_controller(chaos: resilient.chaos.Chaos) -> None:
    chaos.enable()
    pipeline = resilient.Pipeline(
        resilient.chaos.ChaosPolicy(chaos), clock=FakeClock(), telemetry=False
    )
    with contextlib.suppress(resilient.chaos.ChaosError):
        assert await pipeline.call(_ok) == 1


async def _through_serializer(serializer: resilient.serde.VersionedSerializer[Any]) -> None:
    record = {"name": "ada", "tags": [1, 2]}
    failed: resilient.serde.SerdeError | None = None
    try:
        payload = serializer.dumps(record)
    except resilient.serde.SerdeError as error:
        failed = error
    if failed is None:
        assert serializer.loads(payload) == record
        return
    # A tiny max_size or max_depth is a limit doing its job on this record.
    limit = failed if isinstance(failed, _LIMITS) else failed.__cause__
    assert isinstance(limit, _LIMITS) or "over max_size" in str(failed), failed


_LIMITS = (resilient.serde.PayloadTooLargeError, resilient.serde.NestingTooDeepError)


@dataclass(frozen=True)
class Target:
    """A public constructor: how to build it with some options, and how to use it once."""

    prefix: str
    build: Callable[..., Any]
    options: tuple[str, ...]
    use: Callable[[Any], Any]
    wrap: dict[str, Callable[[object], object]] = field(default_factory=dict)


def _timeout(seconds: object) -> resilient.Timeout:
    return resilient.Timeout(seconds)  # type: ignore[arg-type]


def _standard(**options: Any) -> resilient.Pipeline:
    return resilient.standard(clock=FakeClock(), telemetry=False, **options)


def _http_standard(**options: Any) -> resilient.httpx.ResilientTransport:
    return resilient.httpx.standard(_upstream(), clock=FakeClock(), telemetry=False, **options)


STANDARD_OPTIONS = (
    "total_timeout",
    "attempt_timeout",
    "attempts",
    "base_delay",
    "max_delay",
    "circuit_breaker",
    "failure_rate",
    "window",
    "minimum_calls",
    "open_for",
    "rate",
    "burst",
    "rate_max_wait",
    "max_concurrent",
    "max_waiting",
    "max_wait",
    "per_key",
)

TARGETS = {
    "Retry": Target(
        "Retry",
        resilient.Retry,
        ("attempts", "base_delay", "max_delay", "max_retry_after"),
        _through_pipeline,
    ),
    "RetryBudget": Target(
        "RetryBudget",
        lambda **kw: resilient.Retry(budget=resilient.RetryBudget(**kw)),
        ("ratio", "reserve", "window"),
        _through_pipeline,
    ),
    "CircuitBreaker": Target(
        "CircuitBreaker",
        resilient.CircuitBreaker,
        (
            "failure_rate",
            "window",
            "minimum_calls",
            "open_for",
            "half_open_calls",
            "slow_call_duration",
            "slow_call_rate",
            "buckets",
            "open_for_growth",
            "max_open_for",
            "open_jitter",
            "max_half_open",
            "per_key",
            "max_keys",
            "key_idle",
        ),
        _through_pipeline,
    ),
    "Bulkhead": Target(
        "Bulkhead",
        resilient.Bulkhead,
        (
            "max_concurrent",
            "max_waiting",
            "max_wait",
            "per_key",
            "max_keys",
            "idle_ttl",
            "retry_after",
        ),
        _through_pipeline,
    ),
    "RateLimiter": Target(
        "RateLimiter",
        resilient.RateLimiter,
        ("rate", "burst", "max_wait", "cost", "per_key", "max_keys", "idle_ttl"),
        _through_pipeline,
    ),
    "Timeout": Target("Timeout", _timeout, ("seconds",), _through_pipeline),
    "standard": Target("standard", _standard, STANDARD_OPTIONS, _through_pipeline),
    "retry": Target(
        "Retry",
        lambda **kw: resilient.retry(clock=FakeClock(), telemetry=False, **kw),
        ("attempts", "base_delay", "max_delay"),
        _through_decorator,
    ),
    "timeout": Target(
        "Timeout",
        lambda seconds: resilient.timeout(seconds, clock=FakeClock(), telemetry=False),
        ("seconds",),
        _through_decorator,
    ),
    "bulkhead": Target(
        "Bulkhead",
        lambda **kw: resilient.bulkhead(clock=FakeClock(), telemetry=False, **kw),
        ("max_concurrent", "max_waiting", "max_wait"),
        _through_decorator,
    ),
    "rate_limit": Target(
        "RateLimiter",
        lambda **kw: resilient.rate_limit(clock=FakeClock(), telemetry=False, **kw),
        ("rate", "burst", "max_wait"),
        _through_decorator,
    ),
    "circuit_breaker": Target(
        "CircuitBreaker",
        lambda **kw: resilient.circuit_breaker(clock=FakeClock(), telemetry=False, **kw),
        ("failure_rate", "window", "minimum_calls", "open_for"),
        _through_decorator,
    ),
    "ResilienceMiddleware": Target(
        "ResilienceMiddleware",
        lambda **kw: httpx.ASGITransport(
            resilient.asgi.ResilienceMiddleware(_asgi_app, clock=FakeClock(), telemetry=False, **kw)
        ),
        (
            "max_concurrent",
            "max_waiting",
            "max_wait",
            "shed_retry_after",
            "rate",
            "burst",
            "ipv6_prefix",
            "max_keys",
            "timeout",
            "total_timeout",
            "limit_websockets",
        ),
        _through_client,
    ),
    # The middleware's timer wheel runs only on the loop's own clock (finding 5 of issue 21:
    # a total_timeout of 1e307 overflowed inside its loop callback).
    "ResilienceMiddleware (loop clock)": Target(
        "ResilienceMiddleware",
        lambda **kw: httpx.ASGITransport(
            resilient.asgi.ResilienceMiddleware(_asgi_app, telemetry=False, **kw)
        ),
        ("timeout", "total_timeout", "max_wait", "shed_retry_after"),
        _through_timed_client,
    ),
    "ResilientTransport": Target(
        "ResilientTransport",
        lambda **kw: resilient.httpx.ResilientTransport(
            resilient.Pipeline(telemetry=False), _upstream(), **kw
        ),
        ("buffer_limit", "propagate_deadline", "telemetry", "limits"),
        _through_client,
        wrap={"limits": lambda value: httpx.Limits(max_connections=value)},  # type: ignore[arg-type]
    ),
    "httpx.standard": Target(
        "standard",
        _http_standard,
        (*STANDARD_OPTIONS[:-1], "buffer_limit", "limits"),
        _through_client,
        wrap={"limits": lambda value: httpx.Limits(max_connections=value)},  # type: ignore[arg-type]
    ),
    "Phase": Target(
        "Phase",
        resilient.chaos.Phase,
        (
            "duration",
            "error_rate",
            "error_status",
            "throttle_rate",
            "retry_after",
            "latency",
            "latency_rate",
        ),
        _through_chaos,
    ),
    "MemoryBucketStore": Target(
        "MemoryBucketStore",
        lambda **kw: resilient.RateLimiter(store=resilient.extend.MemoryBucketStore(**kw)),
        ("max_keys", "idle_ttl"),
        _through_pipeline,
    ),
    "VersionedSerializer": Target(
        "VersionedSerializer",
        lambda **kw: resilient.serde.VersionedSerializer(
            versions=[resilient.serde.Version(1)], **{"write": 1, **kw}
        ),
        ("max_size", "max_depth", "write"),
        _through_serializer,
    ),
    "Version": Target(
        "Version",
        lambda number: resilient.serde.VersionedSerializer(
            versions=[resilient.serde.Version(number)], write=number
        ),
        ("number",),
        _through_serializer,
    ),
    "Telemetry": Target(
        "Telemetry",
        lambda **kw: resilient.Pipeline(
            resilient.Timeout(1.0), clock=FakeClock(), telemetry=resilient.Telemetry(**kw)
        ),
        ("max_operations",),
        _through_pipeline,
    ),
    "Chaos": Target(
        "Chaos",
        lambda **kw: resilient.chaos.Chaos(resilient.chaos.Phase(error_rate=0.5), **kw),
        ("seed",),
        _through_chaos_controller,
    ),
    "ZlibCodec": Target(
        "ZlibCodec",
        lambda **kw: resilient.serde.VersionedSerializer(
            versions=[resilient.serde.Version(1, codec=resilient.serde.ZlibCodec(**kw))], write=1
        ),
        ("level",),
        _through_serializer,
    ),
}

CASES = [(name, option) for name, target in TARGETS.items() for option in target.options]


def _named(error: resilient.ConfigurationError, target: Target, drawn: set[str]) -> bool:
    """Whether the error names a drawn option: as its parameter, or (a refusal relating two
    options, such as ``max_delay`` below ``base_delay``) in its message."""
    prefix = f"{target.prefix}."
    if error.parameter.startswith(prefix):
        named = error.parameter[len(prefix) :].split(".")[0]
        if named in drawn:
            return True
        return any(option in str(error) for option in drawn)
    return False


def _check(target: Target, options: dict[str, object]) -> None:
    arguments = {
        option: target.wrap[option](value) if option in target.wrap else value
        for option, value in options.items()
    }
    refused: resilient.ConfigurationError | None = None
    try:
        target.build(**arguments)
    except resilient.ConfigurationError as error:
        refused = error
    if refused is not None:
        assert _named(refused, target, set(options)), (refused.parameter, str(refused), options)
        return
    for backend in ("asyncio", "trio"):
        anyio.run(target.use, target.build(**arguments), backend=backend)


@pytest.mark.parametrize(("target", "option"), CASES, ids=[f"{t}.{o}" for t, o in CASES])
@SETTINGS
@given(value=HOSTILE)
def test_a_hostile_value_is_refused_by_name_or_works(
    target: str, option: str, value: object
) -> None:
    """One hostile value for one option: a ConfigurationError naming it, or a working object."""
    _check(TARGETS[target], {option: value})


@pytest.mark.parametrize("target", list(TARGETS))
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(data=st.data())
def test_hostile_combinations_are_refused_by_name_or_work(target: str, data: st.DataObject) -> None:
    """Several options at once (related ones too: burst and rate, the two timeouts)."""
    spec = TARGETS[target]
    chosen = data.draw(
        st.lists(st.sampled_from(spec.options), min_size=1, max_size=4, unique=True),
        label="options",
    )
    values = {
        option: data.draw(HOSTILE | st.sampled_from([0.5, 1, 3, 10.0]), label=option)
        for option in chosen
    }
    _check(spec, values)

"""Hostile numbers for every numeric option of every policy: refused at construction with a
ConfigurationError naming the option, or an object that then works (issue 21, finding 5:
``CircuitBreaker(open_for=5e-324)`` raised OverflowError at construction)."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient import (
    Bulkhead,
    CircuitBreaker,
    ConfigurationError,
    Pipeline,
    RateLimiter,
    RejectedError,
    Retry,
    RetryBudget,
    Timeout,
)
from resilient.testing import FakeClock

HOSTILE: list[Any] = [
    5e-324,
    1e-300,
    1e-9,
    0.5,
    3,
    1e300,
    1.7976931348623157e308,
    math.inf,
    -math.inf,
    math.nan,
    0,
    -1,
    True,
    False,
    "1",
    None,
]

OPTIONS: dict[str, tuple[type[Any], list[str]]] = {
    "Timeout": (Timeout, ["seconds"]),
    "Retry": (Retry, ["attempts", "base_delay", "max_delay", "max_retry_after"]),
    "RetryBudget": (RetryBudget, ["ratio", "reserve", "window"]),
    "CircuitBreaker": (
        CircuitBreaker,
        [
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
            "max_keys",
            "key_idle",
        ],
    ),
    "Bulkhead": (
        Bulkhead,
        ["max_concurrent", "max_waiting", "max_wait", "max_keys", "idle_ttl", "retry_after"],
    ),
    "RateLimiter": (RateLimiter, ["rate", "burst", "max_wait", "cost", "max_keys", "idle_ttl"]),
}

# Outcomes a working pipeline may end with: its own refusals, the dependency's failure.
EXPECTED = (RejectedError, ConnectionError)


def _build(kind: str, option: str, value: Any) -> Any:
    cls, _ = OPTIONS[kind]
    if kind == "Timeout":
        return cls(value)
    if kind == "RetryBudget":
        return Retry(attempts=3, budget=cls(**{option: value}))
    if kind == "CircuitBreaker":
        base: dict[str, Any] = {"minimum_calls": 2, "open_jitter": 0.0}
        base[option] = value
        return cls(**base)
    return cls(**{option: value})


async def _exercise(policy: Any) -> None:
    """Failures, successes, time passing (a breaker opens and probes, tokens refill)."""
    clock = FakeClock()
    pipeline = Pipeline(policy, clock=clock, telemetry=False)
    tries = 0

    async def flaky(key: str) -> str:
        nonlocal tries
        tries += 1
        if tries % 3:
            raise ConnectionError("down")
        return key

    for step in range(12):
        ctx = pipeline.context(flaky, (f"k{step % 3}",), key=f"k{step % 3}")
        with contextlib.suppress(EXPECTED):
            await pipeline.run(ctx)
        clock.advance(0.5 if step % 2 else 1e-6)
    clock.advance(1e6)
    with contextlib.suppress(EXPECTED):
        await pipeline.call(flaky, "late")


def _built_or_refused_by_name(kind: str, option: str, value: Any) -> Any:
    """The policy, or ``None`` when construction refused ``value`` naming ``option``."""
    try:
        return _build(kind, option, value)
    except ConfigurationError as exc:
        refused = exc
    assert option in str(refused), (value, refused)  # names the exact option
    return None


CASES = [(kind, option) for kind, (_, options) in OPTIONS.items() for option in options]


@pytest.mark.parametrize(("kind", "option"), CASES, ids=[f"{k}.{o}" for k, o in CASES])
async def test_a_hostile_value_is_refused_by_name_or_works(kind: str, option: str) -> None:
    for value in HOSTILE:
        policy = _built_or_refused_by_name(kind, option, value)
        if policy is None:
            continue
        # Accepted: it must work, and nothing but the library's own errors or the
        # dependency's failure may come out (no OverflowError, ValueError, ZeroDivisionError).
        await _exercise(policy)


@settings(max_examples=400, deadline=None)
@given(
    case=st.sampled_from(CASES),
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(min_value=-1e-300, max_value=1e-300),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.booleans(),
        st.none(),
    ),
)
def test_any_number_is_refused_by_name_or_works(case: tuple[str, str], value: Any) -> None:
    """The same rule, over every float, int and bool Hypothesis can think of."""
    kind, option = case
    policy = _built_or_refused_by_name(kind, option, value)
    if policy is not None:
        anyio.run(_exercise, policy)

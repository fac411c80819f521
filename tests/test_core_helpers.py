"""Core helpers: option validation, exceptions, the bounded per-key map."""

from __future__ import annotations

import math
import pickle

import pytest

from resilient import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigurationError,
    RejectedError,
    TimeoutExceeded,
)
from resilient import _validate as check
from resilient._keyed import BoundedKeyMap


def test_configuration_error_names_parameter_and_value() -> None:
    with pytest.raises(ConfigurationError) as info:
        check.positive("Retry.base_delay", -0.5)
    assert info.value.parameter == "Retry.base_delay"
    assert info.value.value == -0.5
    assert "Retry.base_delay=-0.5" in str(info.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "1", None, True, [1]])
def test_numbers_refuse_nan_inf_and_non_numbers(bad: object) -> None:
    with pytest.raises(ConfigurationError):
        check.number("x", bad)


def test_number_ranges() -> None:
    assert check.non_negative("x", 0) == 0.0
    assert check.positive("x", math.inf, allow_inf=True) == math.inf
    assert check.fraction("x", 1) == 1.0
    with pytest.raises(ConfigurationError, match="must be > 0"):
        check.positive("x", 0)
    with pytest.raises(ConfigurationError, match="must be <= 1"):
        check.fraction("x", 1.5)
    with pytest.raises(ConfigurationError, match="must be >= 1"):
        check.integer("x", 0)
    with pytest.raises(ConfigurationError, match="expected an integer"):
        check.integer("x", 2.0)
    with pytest.raises(ConfigurationError, match="expected one of"):
        check.choice("jitter", "fuzzy", ("full", "none"))


@pytest.mark.parametrize(
    "exc",
    [
        RejectedError("no", policy="p", retry_after=1.5),
        CircuitOpenError("open", policy="cb", retry_after=2.0, state="half_open", key="h"),
        BulkheadFullError("full", policy="bh"),
        TimeoutExceeded("late", policy="t", timeout=3.0),
        ConfigurationError("Retry.attempts", 0, "must be >= 1"),
    ],
)
def test_exceptions_survive_pickling(exc: Exception) -> None:
    clone = pickle.loads(pickle.dumps(exc))
    assert type(clone) is type(exc)
    assert str(clone) == str(exc)
    assert vars(clone) == vars(exc)


@pytest.mark.parametrize("garbage", [-1.0, math.nan, math.inf])
def test_rejected_error_drops_invalid_retry_after(garbage: float) -> None:
    assert RejectedError("x", retry_after=garbage).retry_after is None


def test_bounded_map_creates_on_demand_and_reuses() -> None:
    made: list[str] = []
    keyed = BoundedKeyMap(lambda k: made.append(k) or [k], max_keys=3)
    first = keyed.get("a", 0.0)
    assert keyed.get("a", 1.0) is first
    assert made == ["a"]


def test_bounded_map_evicts_least_recently_used_at_the_bound() -> None:
    keyed: BoundedKeyMap[str] = BoundedKeyMap(str.upper, max_keys=2)
    keyed.get("a", 0.0)
    keyed.get("b", 1.0)
    keyed.get("a", 2.0)  # a is now the most recent
    keyed.get("c", 3.0)
    assert sorted(k for k, _ in keyed.items()) == ["a", "c"]
    for i in range(10_000):
        keyed.get(f"attacker-{i}", 4.0)
    assert len(keyed) == 2


def test_bounded_map_drops_idle_entries_unless_busy() -> None:
    busy = {"b"}
    keyed: BoundedKeyMap[str] = BoundedKeyMap(
        str, max_keys=100, idle_ttl=10.0, evictable=lambda v: v not in busy
    )
    keyed.get("a", 0.0)
    keyed.get("b", 0.0)
    keyed.get("c", 5.0)
    keyed.get("d", 10.0)  # a and b are idle for 10 s; b is busy and stays
    assert "a" not in keyed
    assert "b" in keyed
    assert keyed.peek("c") == "c"
    assert keyed.peek("zzz") is None


def test_bounded_map_validates_its_bound() -> None:
    with pytest.raises(ConfigurationError, match="max_keys"):
        BoundedKeyMap(str, max_keys=0)


def test_bounded_map_examines_a_bounded_number_of_entries_per_new_key() -> None:
    """A key flood costs O(1) per new key: idle eviction never scans the whole map."""
    from resilient._keyed import SWEEP

    looked = 0

    def busy(_value: str) -> bool:
        nonlocal looked
        looked += 1
        return False  # every entry busy: the old code re-checked all of them per insert

    keyed: BoundedKeyMap[str] = BoundedKeyMap(str, max_keys=20_000, idle_ttl=1.0, evictable=busy)
    for i in range(10_000):
        keyed.get(f"k{i}", 0.0)
    looked = 0
    for i in range(1_000):
        keyed.get(f"new{i}", 5.0)  # every old entry is idle now, and none may go
    assert looked <= SWEEP * 1_000
    assert len(keyed) == 11_000  # busy entries are kept (only the max_keys bound drops them)


def test_bounded_map_idle_entries_drain_as_new_keys_arrive() -> None:
    keyed: BoundedKeyMap[str] = BoundedKeyMap(str, max_keys=100_000, idle_ttl=1.0)
    for i in range(1_000):
        keyed.get(f"old{i}", 0.0)
    for i in range(600):
        keyed.get(f"new{i}", 10.0)
    # each new key drops up to SWEEP idle ones: 1,000 idle entries gone within 500 inserts
    assert sum(1 for key, _ in keyed.items() if key.startswith("old")) == 0
    assert len(keyed) == 600

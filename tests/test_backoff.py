"""Backoff strategies: exact ceilings, bounds for any input, and their distributions."""

from __future__ import annotations

import importlib.util
import math
import random
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from resilient._backoff import (
    JITTERS,
    ceiling,
    decorrelated_jitter,
    equal_jitter,
    full_jitter,
    no_jitter,
)

# Chi-square critical values at significance 0.001 (the test fails by chance once in 1000
# seeds; the seed is fixed, so it is deterministic). Degrees of freedom = bins - 1.
CHI2_CRITICAL_0_001 = {9: 27.877, 19: 43.820}


def chi_square_uniform(samples: list[float], low: float, high: float, bins: int) -> float:
    """Pearson's statistic of ``samples`` against the uniform distribution on [low, high]."""
    counts = [0] * bins
    width = (high - low) / bins
    for value in samples:
        index = min(int((value - low) / width), bins - 1)
        counts[index] += 1
    expected = len(samples) / bins
    return sum((count - expected) ** 2 / expected for count in counts)


def test_ceiling_doubles_from_base_and_stops_at_cap() -> None:
    assert [ceiling(n, 0.1, 5.0) for n in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


def test_ceiling_is_the_cap_when_base_exceeds_it() -> None:
    assert ceiling(0, 2.0, 1.0) == 1.0


def test_ceiling_has_no_overflow_for_huge_retry_numbers() -> None:
    for n in (1023, 1024, 5_000, 10**9, 10**30):
        assert ceiling(n, 0.1, 5.0) == 5.0
    # Exact up to the float range (no clamping of n), then the cap.
    assert ceiling(1023, 1e-300, 1e308) == pytest.approx(1e-300 * 2.0**1023)
    for n in (5_000, 10**9, 10**30):
        assert ceiling(n, 1e-300, 1e308) == 1e308
    assert ceiling(10**30, 0.0, 5.0) == 0.0


def test_full_jitter_scales_the_draw_over_the_ceiling() -> None:
    assert full_jitter(0, 0.1, 5.0, 0.0) == 0.0
    assert full_jitter(0, 0.1, 5.0, 0.5) == 0.05
    assert full_jitter(2, 0.1, 5.0, 0.5) == 0.2
    assert full_jitter(40, 0.1, 5.0, 0.5) == 2.5


def test_equal_jitter_keeps_half_the_ceiling() -> None:
    assert equal_jitter(2, 0.1, 5.0, 0.0) == 0.2
    assert equal_jitter(2, 0.1, 5.0, 0.5) == pytest.approx(0.3)
    assert equal_jitter(40, 0.1, 5.0, 0.999999) == pytest.approx(5.0, abs=1e-5)


def test_decorrelated_jitter_grows_from_the_previous_delay() -> None:
    assert decorrelated_jitter(0, 0.1, 5.0, 0.0, 0.0) == 0.1  # first: U[base, 3*base]
    assert decorrelated_jitter(0, 0.1, 5.0, 0.5, 0.0) == pytest.approx(0.2)
    assert decorrelated_jitter(5, 0.1, 5.0, 0.5, 1.0) == pytest.approx(1.55)  # U[0.1, 3.0]
    assert decorrelated_jitter(5, 0.1, 5.0, 0.9, 4.0) == 5.0  # capped


def test_no_jitter_is_plain_exponential() -> None:
    assert [no_jitter(n, 0.1, 1.0, 0.7) for n in range(5)] == [0.1, 0.2, 0.4, 0.8, 1.0]


@pytest.mark.parametrize("name", sorted(JITTERS))
def test_every_strategy_is_finite_and_bounded_for_any_input(name: str) -> None:
    strategy = JITTERS[name]
    draws = (0.0, 0.3, 0.999999, -1.0, 2.0, math.nan, math.inf, -math.inf)
    previous = (0.0, 1.0, 1e308, math.inf, math.nan)
    for n in (0, 1, 7, 63, 1023, 1024, 5_000, 10**9):
        for draw in draws:
            for prev in previous:
                delay = strategy(n, 0.1, 5.0, draw, prev)
                assert math.isfinite(delay)
                assert 0.0 <= delay <= 5.0


@pytest.mark.parametrize("name", sorted(JITTERS))
def test_thousands_of_consecutive_retries_stay_bounded(name: str) -> None:
    strategy = JITTERS[name]
    rng = random.Random(7)
    previous = 0.0
    for n in range(5_000):
        previous = strategy(n, 0.05, 2.0, rng.random(), previous)
        assert 0.0 <= previous <= 2.0


def test_a_zero_base_means_no_delay() -> None:
    for strategy in (full_jitter, equal_jitter, no_jitter):
        assert strategy(10, 0.0, 0.0, 0.5) == 0.0


def _samples(strategy: Callable[[float], float], count: int = 20_000) -> list[float]:
    rng = random.Random(20151)
    return [strategy(rng.random()) for _ in range(count)]


def test_full_jitter_is_uniform_over_zero_to_ceiling() -> None:
    samples = _samples(lambda d: full_jitter(3, 0.1, 5.0, d))
    assert min(samples) >= 0.0
    assert max(samples) <= 0.8
    statistic = chi_square_uniform(samples, 0.0, 0.8, bins=20)
    assert statistic < CHI2_CRITICAL_0_001[19]
    assert sum(samples) / len(samples) == pytest.approx(0.4, rel=0.02)


def test_equal_jitter_is_uniform_over_the_upper_half() -> None:
    samples = _samples(lambda d: equal_jitter(3, 0.1, 5.0, d))
    assert min(samples) >= 0.4
    assert max(samples) <= 0.8
    assert chi_square_uniform(samples, 0.4, 0.8, bins=20) < CHI2_CRITICAL_0_001[19]


def test_decorrelated_jitter_is_uniform_between_base_and_three_times_previous() -> None:
    samples = _samples(lambda d: decorrelated_jitter(0, 0.1, 5.0, d, 0.5))
    assert min(samples) >= 0.1
    assert max(samples) <= 1.5
    assert chi_square_uniform(samples, 0.1, 1.5, bins=10) < CHI2_CRITICAL_0_001[9]


def test_the_goodness_of_fit_check_rejects_a_skewed_distribution() -> None:
    """The chi-square check has teeth: squared draws over the same range fail it."""
    samples = _samples(lambda d: full_jitter(3, 0.1, 5.0, d * d))
    assert chi_square_uniform(samples, 0.0, 0.8, bins=20) > CHI2_CRITICAL_0_001[19]


def _jitter_suite() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "suite_jitter.py"
    spec = importlib.util.spec_from_file_location("suite_jitter", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_brookers_simulation_ranks_the_library_strategies_as_published() -> None:
    """Calls at N=50 and N=100: full < equal < decorrelated < exponential < none."""
    suite = _jitter_suite()
    results = suite.run_all(repetitions=20)
    order = ["full jitter", "equal jitter", "decorrelated jitter", "exponential, no jitter"]
    order.append("no backoff")
    for clients in (50, 100):
        calls = [results[f"{name} N={clients} calls"] for name in order]
        assert calls == sorted(calls)
        assert len(set(calls)) == len(calls)
    full = results["full jitter N=100 calls"]
    assert full < 0.5 * results["exponential, no jitter N=100 calls"]
    assert "| full jitter |" in suite.markdown(results)

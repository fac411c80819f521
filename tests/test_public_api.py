"""The public surface: a flat, sorted namespace that matches what the package exports."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

import resilient


def test_all_is_sorted_and_unique() -> None:
    assert list(resilient.__all__) == sorted(set(resilient.__all__))


def test_all_matches_public_names() -> None:
    public = {
        name
        for name, value in vars(resilient).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - {"annotations"} == set(resilient.__all__)


def test_the_top_level_holds_what_an_application_writes() -> None:
    assert set(resilient.__all__) == {
        # the policies, the pipeline, the preset and the decorators
        "Pipeline", "Retry", "RetryBudget", "CircuitBreaker", "Bulkhead", "RateLimiter",
        "Timeout", "Hedge", "Fallback", "standard", "retry", "circuit_breaker", "bulkhead",
        "rate_limit", "timeout",
        # classification
        "Verdict", "Classification", "Classifier", "Outcome", "on_exception", "on_result",
        # the exceptions
        "ResilientError", "RejectedError", "CircuitOpenError", "BulkheadFullError",
        "RateLimitedError", "TimeoutExceeded", "ConfigurationError",
        # telemetry and the time left
        "Telemetry", "remaining",
        # overload control (DESIGN.md)
        "AdaptiveLimit", "Throttle",
    }  # fmt: skip


def test_events_and_extension_types_live_in_named_submodules() -> None:
    import resilient.events
    import resilient.extend
    import resilient.timers

    assert {"Event", "CallRejected", "RetryScheduled", "Listener"} <= set(resilient.events.__all__)
    assert {"Policy", "ComposablePolicy", "Call", "Context", "Clock", "BucketStore"} <= set(
        resilient.extend.__all__
    )
    assert {"call_at", "current_loop", "Timer", "SystemClock"} <= set(resilient.timers.__all__)
    for module in (resilient.events, resilient.extend, resilient.timers):
        assert list(module.__all__) == sorted(set(module.__all__))
        for name in module.__all__:
            assert getattr(module, name) is not None


def test_a_moved_name_still_resolves_with_a_warning_naming_its_new_home() -> None:
    with pytest.warns(DeprecationWarning, match=r"resilient\.events\.CallRejected"):
        moved = resilient.CallRejected  # type: ignore[attr-defined]
    assert moved is resilient.events.CallRejected
    with pytest.warns(DeprecationWarning, match=r"resilient\.extend\.Context"):
        assert resilient.Context is resilient.extend.Context  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        _ = resilient.NoSuchThing  # type: ignore[attr-defined]


def test_the_exception_tree_is_drawn_once_in_the_package_docstring() -> None:
    doc = resilient.__doc__ or ""
    for name in (
        "ResilientError", "ConfigurationError", "RejectedError", "CircuitOpenError",
        "BulkheadFullError", "RateLimitedError", "TimeoutExceeded",
    ):  # fmt: skip
        assert name in doc


def test_every_exported_name_resolves() -> None:
    for name in resilient.__all__:
        assert getattr(resilient, name) is not None


def test_exception_tree() -> None:
    assert issubclass(resilient.RejectedError, resilient.ResilientError)
    for exc in (
        resilient.CircuitOpenError,
        resilient.BulkheadFullError,
        resilient.RateLimitedError,
        resilient.TimeoutExceeded,
    ):
        assert issubclass(exc, resilient.RejectedError)
    assert issubclass(resilient.TimeoutExceeded, TimeoutError)
    assert issubclass(resilient.ConfigurationError, ValueError)
    assert issubclass(resilient.ConfigurationError, resilient.ResilientError)


def test_import_loads_no_optional_dependency() -> None:
    code = (
        "import sys, resilient\n"
        "bad = [m for m in ('httpx', 'starlette', 'prometheus_client', 'opentelemetry.sdk',"
        " 'fastapi', 'uvicorn', 'trio', 'redis') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""

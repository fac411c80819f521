"""The public surface: a flat, sorted namespace that matches what the package exports."""

from __future__ import annotations

import subprocess
import sys
import types

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

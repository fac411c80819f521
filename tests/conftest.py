"""Shared fixtures: every async test runs once on asyncio and once on trio."""

from __future__ import annotations

import pytest

from resilient.testing import EventRecorder, FakeClock


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def events() -> EventRecorder:
    return EventRecorder()

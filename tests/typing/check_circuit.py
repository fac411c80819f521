"""Checked by ``mypy --strict`` (``make typecheck``): the breaker decorator keeps signatures."""

from __future__ import annotations

from typing import assert_type

import resilient

breaker = resilient.CircuitBreaker(failure_rate=0.5, window=30.0, minimum_calls=20)


@breaker
async def fetch(user_id: str, *, verbose: bool = False) -> dict[str, int]:
    return {user_id: int(verbose)}


async def use() -> None:
    assert_type(await fetch("a", verbose=True), dict[str, int])
    await fetch(1)  # type: ignore[arg-type]
    snapshot = breaker.snapshot("api.example.org")
    assert_type(snapshot, resilient.extend.CircuitSnapshot)
    assert_type(snapshot.state, str)
    assert_type(snapshot.open_until, float | None)

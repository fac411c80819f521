"""Checked by ``mypy --strict`` (``make typecheck``): Retry keeps signatures and option types."""

from __future__ import annotations

from typing import assert_type

import resilient

retry = resilient.Retry(attempts=4, base_delay=0.1, max_delay=5.0, jitter="full")
shared = resilient.RetryBudget(ratio=0.1, reserve=5, window=10.0)
pipeline = resilient.Pipeline(resilient.Retry(budget=shared), name="typing-retry")


@resilient.Retry(attempts=2, budget=None)
async def fetch(user_id: str, *, verbose: bool = False) -> dict[str, int]:
    return {user_id: int(verbose)}


async def use() -> None:
    assert_type(await fetch("a", verbose=True), dict[str, int])
    assert_type(await pipeline.call(fetch, "b"), dict[str, int])
    assert_type(retry.budget, resilient.RetryBudget | None)
    await fetch(1)  # type: ignore[arg-type]
    resilient.Retry(attempts="3")  # type: ignore[arg-type]

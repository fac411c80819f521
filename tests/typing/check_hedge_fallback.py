"""Checked by ``mypy --strict`` (``make typecheck``): Hedge and Fallback keep signatures."""

from __future__ import annotations

from typing import assert_type

import resilient
from resilient import Outcome, Verdict

hedge = resilient.Hedge(delay=0.05, max_hedges=1)


@hedge
async def search(query: str, *, limit: int = 10) -> list[str]:
    return [query] * limit


async def cached(outcome: Outcome) -> list[str]:
    return []


@resilient.Fallback(handler=cached, verdicts={Verdict.TRANSIENT}, exceptions=KeyError)
async def recommend(user_id: str) -> list[str]:
    return [user_id]


@resilient.Fallback(value=0)
async def count() -> int:
    return 1


async def use() -> None:
    assert_type(await search("a", limit=2), list[str])
    await search(1)  # type: ignore[arg-type]
    assert_type(await recommend("ada"), list[str])
    assert_type(await count(), int)
    assert_type(hedge.delay, float)
    assert_type(hedge.budget, resilient.RetryBudget | None)

"""Checked by ``mypy --strict`` (``make typecheck``): decorators keep signatures."""

from __future__ import annotations

from typing import assert_type

import resilient

pipeline = resilient.Pipeline(resilient.Timeout(1.0), name="typing")


@pipeline.wrap
async def fetch(user_id: str, *, verbose: bool = False) -> dict[str, int]:
    return {user_id: int(verbose)}


async def use() -> None:
    assert_type(await fetch("a", verbose=True), dict[str, int])
    assert_type(await pipeline.call(fetch, "b"), dict[str, int])
    # Wrong argument types are caught by the type checker:
    await fetch(1)  # type: ignore[arg-type]
    await pipeline.call(fetch, "b", verbose="yes")  # type: ignore[arg-type]

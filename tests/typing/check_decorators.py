"""Checked by ``mypy --strict`` (``make typecheck``): every decorator form keeps signatures."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, assert_type

import resilient

pipeline = resilient.Pipeline(resilient.Timeout(1.0), name="typing")


@resilient.retry(attempts=3)
async def fetch(user_id: str, *, verbose: bool = False) -> dict[str, int]:
    return {user_id: int(verbose)}


@resilient.circuit_breaker(failure_rate=0.5)
async def charge(amount: int) -> bool:
    return amount > 0


@resilient.timeout(2.0)
async def slow(x: float) -> float:
    return x


@resilient.bulkhead(max_concurrent=4)
async def limited() -> None:
    return None


@resilient.rate_limit(rate=10.0, burst=5)
async def paced(n: int) -> list[int]:
    return [n]


@resilient.Timeout(1.0)
async def policy_decorated(a: int, b: int) -> int:
    return a + b


class Service:
    @pipeline.wrap
    async def method(self, x: int) -> str:
        return str(x)

    @pipeline.wrap
    @classmethod
    async def build(cls, name: str) -> Service:
        return cls()

    @resilient.retry(attempts=2)
    @staticmethod
    async def helper(flag: bool) -> int:
        return int(flag)

    @classmethod
    @resilient.timeout(1.0)
    async def other_order(cls, n: int) -> int:
        return n


async def use() -> None:
    assert_type(await fetch("a", verbose=True), dict[str, int])
    assert_type(await charge(3), bool)
    assert_type(await slow(1.0), float)
    assert_type(await limited(), None)
    assert_type(await paced(2), list[int])
    assert_type(await policy_decorated(1, 2), int)
    coroutine: Coroutine[Any, Any, str] = Service().method(1)
    assert_type(await coroutine, str)
    assert_type(await Service().method(1), str)
    assert_type(await Service.build("x"), Service)
    assert_type(await Service.helper(True), int)
    assert_type(await Service.other_order(3), int)
    # Wrong argument types are caught by the type checker:
    await fetch(1)  # type: ignore[arg-type]
    await charge("3")  # type: ignore[arg-type]
    await Service().method("x")  # type: ignore[arg-type]
    await Service.build(1)  # type: ignore[arg-type]
    await Service.helper(1.5)  # type: ignore[arg-type]


@resilient.retry
async def bare(user_id: str) -> int:
    return len(user_id)


class BareService:
    @resilient.circuit_breaker
    @classmethod
    async def make(cls, n: int) -> int:
        return n

    @resilient.bulkhead
    @staticmethod
    async def helper(n: int) -> str:
        return str(n)


async def use_bare() -> None:
    assert_type(await bare("x"), int)
    assert_type(await BareService.make(1), int)
    assert_type(await BareService.helper(1), str)
    assert_type(await resilient.rate_limit(bare)("y"), int)
    await bare(1)  # type: ignore[arg-type]

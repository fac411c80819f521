"""Per-key breakers: one independent state per ctx.key, bounded in number, addressable."""

from __future__ import annotations

import tracemalloc

import pytest

from _circuit_helpers import call, calls, fail, make, succeed
from resilient import CircuitBreaker, CircuitOpenError
from resilient.events import CircuitStateChanged
from resilient.testing import EventRecorder, FakeClock


async def test_one_failing_key_never_blocks_another(
    clock: FakeClock, events: EventRecorder
) -> None:
    breaker, pipeline = make(clock, events, minimum_calls=2)
    await calls(pipeline, fail, 2, key="bad.example")
    error = await call(pipeline, succeed, key="bad.example")
    assert isinstance(error, CircuitOpenError)
    assert error.key == "bad.example"
    assert "bad.example" in str(error)
    assert await call(pipeline, succeed, key="good.example") == "ok"
    assert await call(pipeline, succeed) == "ok", "the unkeyed state is its own"
    assert breaker.snapshot("bad.example").state == "open"
    assert breaker.snapshot("good.example").state == "closed"
    assert breaker.snapshot().state == "closed"
    change = events.of_type(CircuitStateChanged)
    assert [(e.key, e.state) for e in change] == [("bad.example", "open")]


async def test_each_key_has_its_own_window(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=4)
    for _ in range(3):
        await call(pipeline, fail, key="a")
        await call(pipeline, fail, key="b")
    assert breaker.snapshot("a").calls == 3
    assert breaker.snapshot("a").state == "closed", "failures of b do not count for a"


async def test_number_of_keys_is_bounded(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, max_keys=3)
    for i in range(50):
        await call(pipeline, succeed, key=f"attacker-{i}.example")
    keyed = [s.key for s in breaker.snapshots() if s.key is not None]
    assert keyed == ["attacker-47.example", "attacker-48.example", "attacker-49.example"]


async def test_idle_keys_are_dropped(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, key_idle=10.0, minimum_calls=1)
    await call(pipeline, fail, key="old")
    assert breaker.snapshot("old").state == "open"
    clock.advance(11.0)
    await call(pipeline, succeed, key="new")
    assert [s.key for s in breaker.snapshots()] == [None, "new"]
    assert await call(pipeline, succeed, key="old") == "ok", "a dropped key starts closed"


async def test_keys_set_by_hand_outlive_their_idle_time(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, key_idle=10.0)
    breaker.force_open("blocked")
    clock.advance(100.0)
    await call(pipeline, succeed, key="other")
    assert breaker.snapshot("blocked").state == "forced_open"
    assert isinstance(await call(pipeline, succeed, key="blocked"), CircuitOpenError)


async def test_per_key_false_shares_one_state(clock: FakeClock) -> None:
    breaker, pipeline = make(clock, minimum_calls=2, per_key=False)
    await call(pipeline, fail, key="a")
    await call(pipeline, fail, key="b")
    error = await call(pipeline, succeed, key="c")
    assert isinstance(error, CircuitOpenError)
    assert error.key is None
    assert breaker.snapshot().state == "open"
    with pytest.raises(ValueError, match="per_key=False"):
        breaker.snapshot("a")
    with pytest.raises(ValueError, match="per_key=False"):
        breaker.force_open("a")


async def test_manual_control_addresses_one_key(clock: FakeClock) -> None:
    own = EventRecorder()
    breaker, pipeline = make(clock, listeners=[own])
    breaker.force_open("a")
    assert isinstance(await call(pipeline, succeed, key="a"), CircuitOpenError)
    assert await call(pipeline, succeed, key="b") == "ok"
    assert await call(pipeline, succeed) == "ok"
    breaker.reset("a")
    assert await call(pipeline, succeed, key="a") == "ok"
    assert [(e.key, e.state) for e in own.of_type(CircuitStateChanged)] == [
        ("a", "forced_open"),
        ("a", "closed"),
    ]


async def test_manual_control_without_key_covers_every_key_and_new_ones(
    clock: FakeClock,
) -> None:
    breaker, pipeline = make(clock)
    await call(pipeline, succeed, key="existing")
    breaker.force_open()
    assert isinstance(await call(pipeline, succeed, key="existing"), CircuitOpenError)
    assert isinstance(await call(pipeline, succeed, key="brand-new"), CircuitOpenError)
    assert isinstance(await call(pipeline, succeed), CircuitOpenError)
    assert {s.state for s in breaker.snapshots()} == {"forced_open"}
    breaker.reset()
    assert await call(pipeline, succeed, key="existing") == "ok"
    assert await call(pipeline, succeed, key="another") == "ok"
    assert {s.state for s in breaker.snapshots()} == {"closed"}


async def test_snapshot_of_an_unknown_key_does_not_create_it(clock: FakeClock) -> None:
    breaker, _ = make(clock)
    snap = breaker.snapshot("never-seen")
    assert (snap.key, snap.state, snap.calls) == ("never-seen", "closed", 0)
    assert [s.key for s in breaker.snapshots()] == [None]


def test_a_keyed_state_with_its_window_stays_under_one_kib() -> None:
    breaker = CircuitBreaker(max_keys=20_000)
    keys = breaker._key_map()
    names = [f"host-{i:05d}.example.org" for i in range(10_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for name in names:
            keys.get(name, 0.0)
        per_key = (tracemalloc.get_traced_memory()[0] - before) / len(names)
        before = tracemalloc.get_traced_memory()[0]
        breakers = [CircuitBreaker() for _ in range(1000)]
        per_breaker = (tracemalloc.get_traced_memory()[0] - before) / len(breakers)
    finally:
        tracemalloc.stop()
    assert per_key < 1024
    assert per_breaker < 1024

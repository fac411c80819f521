"""resilient.config: reloads, atomic under load, state kept, refusals harmless, the watcher."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

import resilient
import resilient.config as rc
from resilient import Bulkhead, CircuitBreaker, RateLimiter, Retry
from resilient.testing import EventRecorder, FakeClock


def _config(attempts: int, attempt_timeout: float, slots: int, rate: float) -> dict[str, Any]:
    return {
        "pipelines": {
            "dep": {
                "timeout": {"total": False, "attempt": attempt_timeout},
                "retry": {
                    "attempts": attempts,
                    "base_delay": 0.01,
                    "jitter": "none",
                    "budget": {"enabled": False},
                },
                "breaker": {"enabled": False},
                "limiter": {"rate": rate, "burst": 10_000.0, "max_wait": 0.0},
                "bulkhead": {"max_concurrent": slots, "max_waiting": 1000, "max_wait": 100.0},
            }
        }
    }


A = _config(attempts=2, attempt_timeout=1.0, slots=5, rate=1000.0)
B = _config(attempts=4, attempt_timeout=2.0, slots=7, rate=2000.0)
BROKEN = {"pipelines": {"dep": {"retry": {"attempts": 0}, "breaker": {"widow": 1}}}}


async def test_reload_under_load_never_mixes_configurations(clock: FakeClock) -> None:
    """Concurrent calls across many reloads (and refused ones): each call runs under A or B
    whole (its attempt count and its attempt timeout match), and no permit or token leaks."""
    registry = rc.load(A, env={}, clock=clock, telemetry=False)
    pipeline = registry["dep"]
    seen: dict[int, list[float]] = {}
    used: set[int] = set()
    policies: list[Any] = list(registry.policy("dep").policies)

    async def flaky(call: int) -> None:
        seen.setdefault(call, []).append(round(resilient.remaining(), 6))
        await anyio.lowlevel.checkpoint()
        raise ConnectionError("down")

    async def caller(call: int) -> None:
        with pytest.raises(ConnectionError):
            await pipeline.call(flaky, call)
        used.add(call)

    refused = 0

    async def reloader() -> None:
        nonlocal refused
        for round_ in range(40):
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            before = registry.policy("dep").policies
            generation = registry.policy("dep").generation
            if round_ % 5 == 4:
                with pytest.raises(rc.InvalidConfigError):
                    registry.reload(BROKEN)
                assert registry.policy("dep").policies == before
                assert registry.policy("dep").generation == generation
                refused += 1
                continue
            registry.reload(B if round_ % 2 == 0 else A)
            policies.extend(registry.policy("dep").policies)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reloader)
        for call in range(300):
            tg.start_soon(caller, call)
            if call % 10 == 0:
                await anyio.lowlevel.checkpoint()

    assert refused == 8
    assert len(used) == 300
    shapes = {tuple(v) for v in seen.values()}
    assert shapes <= {(1.0, 1.0), (2.0, 2.0, 2.0, 2.0)}
    assert shapes == {(1.0, 1.0), (2.0, 2.0, 2.0, 2.0)}  # both ran under load
    bulkheads = {id(p): p for p in policies if isinstance(p, Bulkhead)}
    limiters = {id(p): p for p in policies if isinstance(p, RateLimiter)}
    assert len(bulkheads) >= 2
    for bulkhead in bulkheads.values():
        snapshot = bulkhead.snapshot()
        assert (snapshot.running, snapshot.waiting) == (0, 0)
    clock.advance(60.0)
    for limiter in limiters.values():
        assert limiter.snapshot(now=clock.now()).tokens == limiter.burst


async def test_refused_reload_changes_nothing_and_says_why(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    events = EventRecorder()
    registry = rc.load(A, env={}, clock=clock, listeners=[events], telemetry=False)
    policy = registry.policy("dep")
    before = (policy.policies, policy.settings, registry.config)
    with (
        caplog.at_level(logging.WARNING, logger="resilient.config"),
        pytest.raises(rc.InvalidConfigError) as info,
    ):
        registry.reload(BROKEN)
    assert {p.key for p in info.value.problems} == {"retry.attempts", "breaker.widow"}
    assert (policy.policies, policy.settings, registry.config) == before
    (event,) = events.of_type(rc.ConfigReloaded)
    assert event.applied is False
    assert len(event.problems) == 2
    assert "reload refused, nothing changed" in caplog.text
    calls = 0

    async def ok() -> int:
        nonlocal calls
        calls += 1
        return calls

    assert await registry["dep"].call(ok) == 1


async def test_reload_keeps_unchanged_policies_and_reports_changes(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    events = EventRecorder()
    config: dict[str, Any] = {
        "pipelines": {"a": {"retry": {"attempts": 3}}, "b": {}},
        "servers": {"public": {"max_concurrent": 10}},
    }
    registry = rc.load(config, env={}, clock=clock, listeners=[events], telemetry=False)
    old = dict(
        zip(
            ("total", "retry", "breaker", "hedge", "bulkhead"),
            registry.policy("a").policies,
            strict=True,
        )
    )
    handle = registry["a"]
    b_policies = registry.policy("b").policies
    config["pipelines"]["a"]["retry"]["attempts"] = 5
    config["pipelines"]["c"] = {}
    config["servers"]["public"]["max_concurrent"] = 20
    with caplog.at_level(logging.INFO, logger="resilient.config"):
        report = registry.reload(config)
    new = registry.policy("a").policies
    assert registry["a"] is handle
    assert new[0] is old["total"]
    assert new[2] is old["breaker"]
    assert new[4] is old["bulkhead"]
    assert new[1] is not old["retry"]
    assert isinstance(new[1], Retry)
    assert new[1].attempts == 5
    assert new[1].budget is old["retry"].budget  # the budget's keys did not change: its tokens stay
    # The hedge follows the Retry (max_hedges = attempts - 1) and still shares its budget.
    assert new[3] is not old["hedge"]
    assert isinstance(new[3], resilient.Hedge)
    assert new[3].max_hedges == 4
    assert new[3].budget is new[1].budget
    assert registry.policy("b").policies == b_policies
    assert [str(c) for c in report.changes] == [
        "[pipelines.a] retry.attempts: 3 -> 5",
        "[pipelines.c] added",
        "[servers.public] max_concurrent: 10 -> 20",
    ]
    assert report.restart_required == ("servers.public",)
    assert "c" in registry
    (event,) = events.of_type(rc.ConfigReloaded)
    assert event.applied is True
    assert event.changes == report.changes
    assert "retry.attempts: 3 -> 5" in caplog.text
    assert registry.policy("a").generation > 0
    assert registry.reload(config).changed is False  # nothing new: nothing rebuilt
    assert registry.policy("a").policies == new


async def test_a_removed_pipeline_keeps_running_for_holders(clock: FakeClock) -> None:
    registry = rc.load({"pipelines": {"a": {}, "b": {}}}, env={}, clock=clock, telemetry=False)
    held = registry["b"]
    report = registry.reload({"pipelines": {"a": {}}})
    assert [str(c) for c in report.changes] == ["[pipelines.b] removed"]
    assert "b" not in registry

    async def ok() -> str:
        return "ok"

    assert await held.call(ok) == "ok"


async def test_breaker_state_survives_a_threshold_change(clock: FakeClock) -> None:
    """A breaker that opened stays open when only its thresholds change; its window too."""
    config: dict[str, Any] = {
        "pipelines": {
            "dep": {
                "timeout": {"total": False, "attempt": False},
                "retry": {"enabled": False},
                "bulkhead": {"enabled": False},
                "breaker": {
                    "minimum_calls": 4,
                    "failure_rate": 0.5,
                    "open_for": 30.0,
                    "max_waiting": 0,
                },
            }
        }
    }
    registry = rc.load(config, env={}, clock=clock, telemetry=False)

    async def fail() -> None:
        raise ConnectionError

    for _ in range(4):
        with pytest.raises(ConnectionError):
            await registry["dep"].call(fail)
    (breaker,) = registry.policy("dep").policies
    assert isinstance(breaker, CircuitBreaker)
    assert breaker.snapshot().state == "open"
    config["pipelines"]["dep"]["breaker"]["failure_rate"] = 0.9
    config["pipelines"]["dep"]["breaker"]["minimum_calls"] = 10
    report = registry.reload(config)
    assert report.kept_state == ("dep.breaker",)
    (after,) = registry.policy("dep").policies
    assert isinstance(after, CircuitBreaker)
    assert (after.failure_rate, after.minimum_calls) == (0.9, 10)
    assert after.snapshot().state == "open"
    with pytest.raises(resilient.CircuitOpenError):
        await registry["dep"].call(fail)


async def test_limiter_tokens_survive_a_rate_change(clock: FakeClock) -> None:
    config: dict[str, Any] = {
        "pipelines": {
            "dep": {
                "timeout": {"total": False, "attempt": False},
                "retry": {"enabled": False},
                "breaker": {"enabled": False},
                "bulkhead": {"enabled": False},
                "limiter": {"rate": 1.0, "burst": 10.0},
            }
        }
    }
    registry = rc.load(config, env={}, clock=clock, telemetry=False)

    async def ok() -> None:
        return None

    for _ in range(8):
        await registry["dep"].call(ok)
    (limiter,) = registry.policy("dep").policies
    assert isinstance(limiter, RateLimiter)
    assert limiter.snapshot(now=clock.now()).tokens == pytest.approx(2.0)
    config["pipelines"]["dep"]["limiter"]["rate"] = 5.0
    report = registry.reload(config)
    assert report.kept_state == ("dep.limiter",)
    (after,) = registry.policy("dep").policies
    assert isinstance(after, RateLimiter)
    assert after.rate == 5.0
    assert after.snapshot(now=clock.now()).tokens == pytest.approx(2.0)
    clock.advance(1.0)
    assert after.snapshot(now=clock.now()).tokens == pytest.approx(7.0)  # refills at 5/s


async def test_watch_reloads_a_changed_file_and_survives_a_broken_one(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "resilience.toml"
    path.write_text("[pipelines.dep]\nretry.attempts = 2\n", encoding="utf-8")
    events = EventRecorder()
    registry = rc.load(path, env={}, clock=clock, listeners=[events], telemetry=False)
    assert registry.poll_file() is None

    def rewrite(text: str, stamp: int) -> None:
        path.write_text(text, encoding="utf-8")
        os.utime(path, ns=(stamp, stamp))

    async def until(predicate: Any) -> None:
        for _ in range(1000):
            if predicate():
                return
            await anyio.lowlevel.checkpoint()
        raise AssertionError("the watcher did not react")

    async with anyio.create_task_group() as tg:
        tg.start_soon(registry.watch, 0.5)
        rewrite("[pipelines.dep]\nretry.attempts = 4\n", 10**18)
        await until(lambda: registry.settings("dep")["retry.attempts"] == 4)
        rewrite("[pipelines.dep]\nretry.attempts = zero\n", 2 * 10**18)
        await until(lambda: any(not e.applied for e in events.of_type(rc.ConfigReloaded)))
        rewrite("[pipelines.dep]\nretry.attempts = 5\n", 3 * 10**18)
        await until(lambda: registry.settings("dep")["retry.attempts"] == 5)
        tg.cancel_scope.cancel()
    applied = [e.applied for e in events.of_type(rc.ConfigReloaded)]
    assert applied == [True, False, True]
    assert clock.slept > 0  # it waited on the registry's clock between polls


async def test_watch_needs_a_file() -> None:
    registry = rc.load({"pipelines": {"a": {}}}, env={})
    with pytest.raises(resilient.ConfigurationError, match=r"Registry\.watch"):
        await registry.watch()
    with pytest.raises(resilient.ConfigurationError, match=r"reload\.source"):
        registry.reload()


async def test_an_httpx_transport_follows_reloads(clock: FakeClock) -> None:
    """A client built once on a configured pipeline retries as the current file says."""
    httpx = pytest.importorskip("httpx")
    from resilient.httpx import standard

    sent = 0

    def upstream(request: Any) -> Any:
        nonlocal sent
        sent += 1
        return httpx.Response(503)

    config: dict[str, Any] = {"pipelines": {"api": {"retry": {"attempts": 2, "base_delay": 0.0}}}}
    registry = rc.load(config, env={}, clock=clock, telemetry=False)
    transport = standard(httpx.MockTransport(upstream), config=registry["api"])
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get("http://api.test/x")).status_code == 503
        assert sent == 2
        config["pipelines"]["api"]["retry"]["attempts"] = 4
        registry.reload(config)
        assert (await client.get("http://api.test/x")).status_code == 503
        assert sent == 6


async def test_calls_during_a_rollout_run_one_configuration_each_and_leak_nothing(
    clock: FakeClock,
) -> None:
    """Concurrent callers split between the control and the new group: each call runs under
    one of them whole, and both groups' bulkheads end empty."""
    plan = {"enabled": True, "first_share": 0.5, "bake": 1000.0, "min_calls": 10_000}
    registry = rc.load({**A, "rollout": plan}, env={}, clock=clock, telemetry=False)
    registry.reload({**B, "rollout": plan})
    policy = registry.policy("dep")
    rollout = policy.rollout
    assert rollout is not None
    candidate = policy.candidate
    assert candidate is not None
    assert candidate["retry.attempts"] == 4
    seen: dict[int, list[float]] = {}

    async def flaky(call: int) -> None:
        seen.setdefault(call, []).append(round(resilient.remaining(), 6))
        await anyio.lowlevel.checkpoint()
        raise ConnectionError("down")

    async def caller(call: int) -> None:
        with rc.caller(f"user-{call}"), pytest.raises(ConnectionError):
            await registry["dep"].call(flaky, call)

    async with anyio.create_task_group() as tg:
        for call in range(200):
            tg.start_soon(caller, call)
    shapes = [tuple(v) for v in seen.values()]
    assert set(shapes) == {(1.0, 1.0), (2.0, 2.0, 2.0, 2.0)}
    new_calls = sum(1 for s in shapes if len(s) == 4)
    assert 0 < new_calls < 200
    assert rollout.status().total_new_calls == new_calls
    assert rollout.status().total_calls == 200
    bulkheads = [
        p for p in (*policy.policies, *policy.candidate_policies) if isinstance(p, Bulkhead)
    ]
    assert len(bulkheads) == 2
    for bulkhead in bulkheads:
        assert (bulkhead.snapshot().running, bulkhead.snapshot().waiting) == (0, 0)

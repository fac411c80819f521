"""resilient.config: phased rollouts judged against a control group, rolled back when worse."""

from __future__ import annotations

import contextlib
import itertools
import random
from typing import Any

import pytest

import resilient.config as rc
from resilient import CircuitOpenError, ConfigurationError
from resilient.serde import Version, VersionedSerializer
from resilient.testing import EventRecorder, FakeClock

PLAN = {"enabled": True, "first_share": 0.1, "growth": 2.0, "bake": 60.0, "min_calls": 30}


def _pipeline(**sections: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "timeout": {"total": False, "attempt": False},
        "retry": {"attempts": 2, "base_delay": 0.0, "budget": {"enabled": False}},
        "breaker": {"failure_rate": 0.5, "minimum_calls": 20, "window": 30.0},
        "bulkhead": {"enabled": False},
    }
    for name, values in sections.items():
        base[name] = {**base[name], **values}
    return base


class Traffic:
    """Callers u0..u999 calling a dependency that fails a given share of attempts."""

    def __init__(self, registry: rc.Registry, clock: FakeClock, failing: float) -> None:
        self.registry = registry
        self.clock = clock
        self.failing = failing
        self.random = random.Random(7)
        self.shares: list[float] = []
        self.calls = 0

    async def run(self, calls: int, *, persistent: bool = False) -> None:
        pipeline = self.registry["dep"]
        for _ in range(calls):
            self.calls += 1
            user = f"u{self.random.randrange(1000)}"
            doomed = self.random.random() < self.failing

            async def dependency(doomed: bool = doomed) -> str:
                if doomed if persistent else self.random.random() < self.failing:
                    raise ConnectionError("refused")
                return "ok"

            with rc.caller(user), contextlib.suppress(ConnectionError, CircuitOpenError):
                await pipeline.call(dependency)
            rollout = self.registry.policy("dep").rollout
            self.shares.append(0.0 if rollout is None else rollout.share)
            self.clock.advance(0.05)


async def _start(
    clock: FakeClock, new: dict[str, Any], events: EventRecorder, **plan: Any
) -> rc.Registry:
    old = {"pipelines": {"dep": _pipeline()}, "rollout": {**PLAN, **plan}}
    registry = rc.load(old, env={}, clock=clock, listeners=[events], telemetry=False)
    report = registry.reload({"pipelines": {"dep": new}, "rollout": {**PLAN, **plan}})
    assert report.phased == ("dep",)
    return registry


async def test_a_breaker_that_trips_on_normal_traffic_is_rolled_back_in_the_first_phase(
    clock: FakeClock,
) -> None:
    events = EventRecorder()
    eager = _pipeline(breaker={"failure_rate": 0.05, "minimum_calls": 5})
    registry = await _start(clock, eager, events)
    old_settings = registry.settings("dep")
    traffic = Traffic(registry, clock, failing=0.1)
    await traffic.run(3000)
    decisions = [(e.decision, e.phase, e.share) for e in events.of_type(rc.RolloutChanged)]
    assert decisions[0] == ("started", 1, 0.1)
    assert decisions[-1][0] == "rolled_back"
    assert [d for d, _, _ in decisions] == ["started", "rolled_back"]
    assert max(traffic.shares) == 0.1
    assert registry.policy("dep").rollout is None
    assert registry.settings("dep") == old_settings
    (rolled_back,) = [e for e in events.of_type(rc.RolloutChanged) if e.decision == "rolled_back"]
    assert "breaker openings" in rolled_back.reason or "failure rate" in rolled_back.reason
    # The change reached only its first phase's callers: the reload reported it phased, the
    # rollback came before any growth, and the same change is not tried again.
    assert registry.reload({"pipelines": {"dep": eager}, "rollout": PLAN}).skipped == ("dep",)
    assert registry.policy("dep").rollout is None


async def test_a_retry_count_that_doubles_the_load_is_rolled_back(clock: FakeClock) -> None:
    events = EventRecorder()
    hammering = _pipeline(retry={"attempts": 5}, breaker={"enabled": False})
    old = _pipeline(breaker={"enabled": False})
    registry = rc.load(
        {"pipelines": {"dep": old}, "rollout": PLAN},
        env={},
        clock=clock,
        listeners=[events],
        telemetry=False,
    )
    registry.reload({"pipelines": {"dep": hammering}, "rollout": PLAN})
    rollout = registry.policy("dep").rollout
    assert rollout is not None
    traffic = Traffic(registry, clock, failing=0.4)
    await traffic.run(3000, persistent=True)
    status = rollout.status()
    assert status.state == "rolled_back"
    assert status.phase == 1
    assert "attempts per call" in status.reason
    assert max(traffic.shares) == 0.1
    assert status.total_new_calls <= 0.15 * status.total_calls
    assert registry.policy("dep").rollout is None
    assert registry.settings("dep")["retry.attempts"] == 2


async def test_a_good_change_reaches_every_caller_through_its_phases(clock: FakeClock) -> None:
    events = EventRecorder()
    better = _pipeline(breaker={"open_for": 8.0}, retry={"attempts": 3})
    registry = await _start(clock, better, events, max_failure_rate_increase=0.1)
    traffic = Traffic(registry, clock, failing=0.05)
    await traffic.run(8000)
    decisions = [(e.decision, round(e.share, 6)) for e in events.of_type(rc.RolloutChanged)]
    assert decisions == [
        ("started", 0.1),
        ("advanced", 0.2),
        ("advanced", 0.4),
        ("advanced", 0.8),
        ("completed", 1.0),
    ]
    assert registry.policy("dep").rollout is None
    assert registry.settings("dep")["retry.attempts"] == 3
    assert registry.config.pipelines["dep"]["breaker.open_for"] == 8.0
    assert sorted(set(traffic.shares)) == [0.0, 0.1, 0.2, 0.4, 0.8]
    # each phase lasted at least its bake time
    advanced = [e.at for e in events.of_type(rc.RolloutChanged) if e.decision != "started"]
    assert all(b - a >= 60.0 for a, b in itertools.pairwise(advanced))


async def test_a_caller_keeps_its_group_and_groups_only_grow(clock: FakeClock) -> None:
    rollout = rc.Rollout(
        "change", rc.RolloutPlan(first_share=0.1, bake=1.0, min_calls=1), clock=clock
    )
    users = [f"user-{i}" for i in range(2000)]
    first = {u for u in users if rollout.choose(u)}
    assert first == {u for u in users if rollout.choose(u)}  # stable
    assert 0.07 < len(first) / len(users) < 0.13
    assert first == {u for u in users if rc.bucket(u, "change") < 0.1}  # same on every host
    for _ in range(2):
        rollout.record(True, failed=False)
        rollout.record(False, failed=False)
    clock.advance(1.0)
    rollout.record(False, failed=False)
    assert rollout.phase == 2
    second = {u for u in users if rollout.choose(u)}
    assert first < second


async def test_unkeyed_calls_are_spread_by_count(clock: FakeClock) -> None:
    rollout = rc.Rollout("change", rc.RolloutPlan(first_share=0.25), clock=clock)
    chosen = sum(rollout.choose() for _ in range(1000))
    assert 240 <= chosen <= 260


def _users(write: int = 1) -> VersionedSerializer[Any]:
    return VersionedSerializer(
        versions=[
            Version(1),
            Version(
                2,
                upgrade=lambda d: {**d, "email": d.get("email")},
                # v1 keeps a set email as an extra field: nothing is lost
                downgrade=lambda d: {k: v for k, v in d.items() if v is not None or k != "email"},
            ),
        ],
        write=write,
        writable=(1, 2),
        name="user",
    )


async def test_the_serde_write_switch_never_writes_the_new_version_outside_the_share(
    clock: FakeClock,
) -> None:
    events = EventRecorder()
    users = _users()
    plan = rc.RolloutPlan(first_share=0.05, growth=2.0, bake=30.0, min_calls=20)
    switch = rc.VersionSwitch(users, 2, plan, clock=clock, listeners=(events,))
    rng = random.Random(3)
    written = {1: 0, 2: 0}
    for _ in range(6000):
        key = f"tenant-{rng.randrange(500)}"
        share = switch.rollout.share
        inside = rc.bucket(key, switch.rollout.name) < share
        payload = switch.dumps({"id": 1, "email": "a@b.c"}, key=key)
        version = users.version_of(payload)
        assert version is not None
        if not inside:
            assert version == 1, (key, share)
        written[version] += 1
        assert users.loads(payload)["id"] == 1  # readers read both
        switch.record(version, failed=False)
        clock.advance(0.05)
    assert switch.rollout.state == "completed"
    assert written[2] > 0
    assert [e.decision for e in events.of_type(rc.RolloutChanged)][-1] == "completed"


async def test_a_failing_serde_switch_is_rolled_back_and_nobody_writes_the_new_version(
    clock: FakeClock,
) -> None:
    users = _users()
    plan = rc.RolloutPlan(first_share=0.1, bake=30.0, min_calls=20)
    switch = rc.VersionSwitch(users, 2, plan, clock=clock)
    rng = random.Random(5)
    for _ in range(2000):
        key = f"tenant-{rng.randrange(500)}"
        version = users.version_of(switch.dumps({"id": 2, "email": None}, key=key))
        assert version is not None
        switch.record(version, failed=version == 2)  # consumers choke on v2
        clock.advance(0.05)
    assert switch.rollout.state == "rolled_back"
    assert switch.rollout.phase == 1
    assert all(
        users.version_of(switch.dumps({"id": 3, "email": None}, key=f"tenant-{i}")) == 1
        for i in range(500)
    )


def test_a_switch_needs_phase_one_first() -> None:
    clock = FakeClock()
    reads_v1 = VersionedSerializer(
        versions=[Version(1), Version(2, upgrade=dict, downgrade=dict)],
        write=1,
        read=(1,),
        name="old",
    )
    with pytest.raises(ConfigurationError, match="phase one"):
        rc.VersionSwitch(reads_v1, 2, clock=clock)
    writes_v1 = VersionedSerializer(
        versions=[Version(1), Version(2, upgrade=dict, downgrade=dict)], write=1, name="w"
    )
    with pytest.raises(ConfigurationError, match="writable"):
        rc.VersionSwitch(writes_v1, 2, clock=clock)
    with pytest.raises(ConfigurationError, match="already the version written"):
        rc.VersionSwitch(_users(write=2), 2, clock=clock)


def test_plan_shares_grow_geometrically() -> None:
    assert rc.RolloutPlan(first_share=0.01).shares() == (
        0.01,
        0.02,
        0.04,
        0.08,
        0.16,
        0.32,
        0.64,
        1.0,
    )
    assert rc.RolloutPlan(first_share=0.2, growth=1.5).shares() == pytest.approx(
        (0.2, 0.3, 0.45, 0.675, 1.0)
    )
    with pytest.raises(ConfigurationError, match=r"RolloutPlan\.growth"):
        rc.RolloutPlan(growth=1.0)


async def test_a_newer_change_replaces_a_rollout_and_going_back_cancels_it(
    clock: FakeClock,
) -> None:
    events = EventRecorder()
    registry = await _start(clock, _pipeline(retry={"attempts": 3}), events)
    first = registry.policy("dep").rollout
    assert first is not None
    registry.reload({"pipelines": {"dep": _pipeline(retry={"attempts": 4})}, "rollout": PLAN})
    second = registry.policy("dep").rollout
    assert second is not None
    assert second is not first
    assert first.state == "rolled_back"
    registry.reload({"pipelines": {"dep": _pipeline()}, "rollout": PLAN})
    assert registry.policy("dep").rollout is None
    assert second.status().reason == "replaced by a newer change"
    assert [e.decision for e in events.of_type(rc.RolloutChanged)] == [
        "started",
        "abandoned",
        "started",
        "abandoned",
    ]


async def test_rollout_progress_is_visible_in_metrics(clock: FakeClock) -> None:
    """The phase and share as gauges, every decision counted (real OpenTelemetry SDK)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    events = EventRecorder()
    old = {"pipelines": {"dep": _pipeline()}, "rollout": PLAN}
    registry = rc.load(
        old, env={}, clock=clock, listeners=[events], telemetry=False, meter_provider=provider
    )
    registry.reload({"pipelines": {"dep": _pipeline(retry={"attempts": 3})}, "rollout": PLAN})

    def points() -> dict[str, list[tuple[dict[str, Any], float]]]:
        data = reader.get_metrics_data()
        assert data is not None
        out: dict[str, list[tuple[dict[str, Any], float]]] = {}
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    out[metric.name] = [
                        (dict(p.attributes or {}), p.value) for p in metric.data.data_points
                    ]
        return out

    first = points()
    assert first["resilient.config.rollout.share"] == [({"resilient.pipeline": "dep"}, 0.1)]
    assert first["resilient.config.rollout.phase"] == [({"resilient.pipeline": "dep"}, 1)]
    traffic = Traffic(registry, clock, failing=0.0)
    await traffic.run(1400)
    later = points()
    assert later["resilient.config.rollout.share"] == [({"resilient.pipeline": "dep"}, 0.2)]
    decisions = {a["resilient.decision"]: v for a, v in later["resilient.config.rollout.decisions"]}
    assert decisions == {"started": 1, "advanced": 1}
    provider.shutdown()


def test_noise_alone_does_not_roll_back_a_neutral_change() -> None:
    """Both groups fail 5 % of calls at random: the change goes through every phase."""
    clock = FakeClock()
    plan = rc.RolloutPlan(first_share=0.05, bake=10.0, min_calls=300)
    for seed in range(5):
        rollout = rc.Rollout(f"neutral-{seed}", plan, clock=clock)
        rng = random.Random(seed)
        while rollout.state == "running":
            new = rollout.choose(f"user-{rng.randrange(100_000)}")
            rollout.record(new, failed=rng.random() < 0.05, latency=rng.uniform(0.01, 0.03))
            clock.advance(0.001)
        assert rollout.state == "completed", rollout.status()


def test_a_slightly_worse_change_is_rolled_back_when_its_phase_ends() -> None:
    """9 % failures against 5 % (margin 2 points): not clear early, decided by the bake."""
    clock = FakeClock()
    events = EventRecorder()
    plan = rc.RolloutPlan(first_share=0.1, bake=30.0, min_calls=50)
    rollout = rc.Rollout("slightly-worse", plan, clock=clock, listeners=(events,))
    counts = {True: 0, False: 0}
    while rollout.state == "running":
        new = rollout.choose()
        counts[new] += 1
        failed = counts[new] % (11 if new else 20) == 0
        rollout.record(new, failed=failed)
        clock.advance(0.01)
    assert rollout.state == "rolled_back"
    assert rollout.phase == 1
    assert "failure rate" in rollout.status().reason
    (decision,) = [e for e in events.of_type(rc.RolloutChanged) if e.decision == "rolled_back"]
    assert decision.at >= 30.0  # the bake of the first phase ran out first


def test_a_clearly_worse_change_is_rolled_back_before_its_phase_ends() -> None:
    clock = FakeClock()
    plan = rc.RolloutPlan(first_share=0.1, bake=300.0, min_calls=50)
    rollout = rc.Rollout("clearly-worse", plan, clock=clock)
    counts = {True: 0, False: 0}
    while rollout.state == "running":
        new = rollout.choose()
        counts[new] += 1
        rollout.record(new, failed=new and counts[new] % 2 == 0)  # 50 % against 0 %
        clock.advance(0.01)
    assert rollout.state == "rolled_back"
    assert clock.now() < 300.0
    assert counts[True] == 50  # as soon as the new group had min_calls


class _ExecuteOnly:
    """A user's policy delegating to another policy's ``execute`` (no ``compose``)."""

    def __init__(self, inner: Any) -> None:
        self.name = "execute_only"
        self.inner = inner

    async def execute(self, call: Any, ctx: Any, /) -> Any:
        return await self.inner.execute(call, ctx)


@pytest.mark.parametrize("path", ["nested pipeline", "execute"])
async def test_a_configured_pipeline_used_inside_another_still_counts_attempts(
    clock: FakeClock, path: str
) -> None:
    """Inside a user's pipeline (composed, or through ``execute``), the rollout still sees
    each call's attempts: a retry storm is caught there too."""
    from resilient import Pipeline, Timeout

    registry = rc.load(
        {"pipelines": {"dep": _pipeline(breaker={"enabled": False})}, "rollout": PLAN},
        env={},
        clock=clock,
        telemetry=False,
    )
    storm = _pipeline(retry={"attempts": 6}, breaker={"enabled": False})
    registry.reload({"pipelines": {"dep": storm}, "rollout": PLAN})
    rollout = registry.policy("dep").rollout
    assert rollout is not None
    inner = registry["dep"] if path == "nested pipeline" else _ExecuteOnly(registry.policy("dep"))
    outer = Pipeline(Timeout(100.0), inner, clock=clock, telemetry=False)

    async def down() -> None:
        raise ConnectionError

    for n in range(2000):
        with rc.caller(f"u{n % 700}"), contextlib.suppress(ConnectionError):
            await outer.call(down)
        if rollout.state != "running":
            break
    assert rollout.state == "rolled_back"
    assert "attempts per call" in rollout.status().reason

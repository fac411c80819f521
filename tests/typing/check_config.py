"""Checked by ``mypy --strict`` (``make typecheck``): the configuration API's types."""

from __future__ import annotations

from typing import assert_type

import resilient
import resilient.config
from resilient.config import (
    ConfiguredPolicy,
    InvalidConfigError,
    PipelineSettings,
    Problem,
    ReloadReport,
    Rollout,
    RolloutPlan,
    RolloutStatus,
    VersionSwitch,
)
from resilient.serde import Version, VersionedSerializer
from resilient.testing import FakeClock

registry = resilient.config.load({"pipelines": {"payments": {}}}, env={})
assert_type(registry["payments"], resilient.Pipeline)
assert_type(registry.settings("payments"), PipelineSettings)
assert_type(registry.policy("payments"), ConfiguredPolicy)
assert_type(registry.reload({"pipelines": {"payments": {}}}), ReloadReport)
assert_type(registry.server("public"), dict[str, object])
assert_type(registry.rollouts(), dict[str, RolloutStatus])


async def charge(order: str) -> int:
    return len(order)


async def use() -> None:
    assert_type(await registry["payments"].call(charge, "order-1"), int)
    await registry["payments"].call(charge, 1)  # type: ignore[arg-type]


try:
    resilient.config.load("resilience.toml")
except InvalidConfigError as exc:
    assert_type(exc.problems, tuple[Problem, ...])

clock = FakeClock()
rollout = Rollout("change", RolloutPlan(first_share=0.05), clock=clock)
assert_type(rollout.choose("tenant-1"), bool)
users = VersionedSerializer(
    versions=[Version(1), Version(2, upgrade=dict, downgrade=dict)], write=1, writable=(1, 2)
)
switch = VersionSwitch(users, 2, clock=clock)
assert_type(switch.dumps({"id": 1}, key="tenant-1"), bytes)
assert_type(switch.version_for("tenant-1"), int)

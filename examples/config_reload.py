"""Resilience settings as data: load, reload without a restart, roll a change out in phases.

A checkout service calls three dependencies (payments, inventory, search) through pipelines
described in examples/config/resilience.toml. While traffic flows, the file is edited three
times and a watcher picks each edit up:

1. a bad change: a payments breaker that trips on normal traffic. It is rolled out to 5 % of
   callers first, does worse than the control group, and is rolled back automatically;
2. a typo: the reload is refused with every problem listed, and nothing changes;
3. a good change: fewer inventory retries. It grows phase by phase to every caller.

The environment shortens the bake time (``RESILIENT__ROLLOUT__BAKE``), the backoff and the
payments quota, the way an operator overrides settings without editing the file.

Run: python examples/config_reload.py
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import anyio
import anyio.lowlevel

import resilient
import resilient.config
from resilient.config import ConfigReloaded, RolloutChanged
from resilient.events import Event

HERE = Path(__file__).parent
OVERRIDES = {
    "RESILIENT__ROLLOUT__BAKE": "0.3",  # seconds per phase instead of the file's 300
    "RESILIENT__ROLLOUT__MIN_CALLS": "100",
    # the in-process stand-ins have no quota and need no long backoff: traffic runs at full speed
    "RESILIENT__PIPELINES__PAYMENTS__LIMITER__ENABLED": "false",
    "RESILIENT__PIPELINES__PAYMENTS__RETRY__BASE_DELAY": "0.001",
    "RESILIENT__PIPELINES__INVENTORY__RETRY__BASE_DELAY": "0.001",
}


DECISIONS: list[RolloutChanged] = []
ENDS = ("completed", "rolled_back")


def report(event: Event) -> None:
    """Print configuration events (the pipelines' call events are ignored here)."""
    if isinstance(event, ConfigReloaded):
        if event.applied:
            changes = ", ".join(str(c) for c in event.changes)
            phased = f" (phased: {', '.join(event.phased)})" if event.phased else ""
            print(f"  reload applied: {changes}{phased}")
        elif event.problems:
            print(f"  reload refused, {len(event.problems)} problems, nothing changed:")
            for problem in event.problems:
                print(f"    {problem}")
    elif isinstance(event, RolloutChanged):
        DECISIONS.append(event)
        reason = f" - {event.reason}" if event.reason else ""
        print(f"  rollout of {event.pipeline}: {event.decision}, share {event.share:.0%}{reason}")


class Dependency:
    """An in-process stand-in for a remote service that fails a share of requests."""

    def __init__(self, failing: float) -> None:
        self.failing = failing
        self.random = random.Random(1)

    async def __call__(self) -> str:
        await anyio.lowlevel.checkpoint()
        if self.random.random() < self.failing:
            raise ConnectionError("connection reset")
        return "ok"


DEPENDENCIES = {
    "payments": Dependency(0.05),
    "inventory": Dependency(0.02),
    "search": Dependency(0.0),
}


async def traffic(pipelines: resilient.config.Registry, calls: int) -> tuple[int, int]:
    """``calls`` calls per dependency from 500 callers; returns (succeeded, failed)."""
    ok = failed = 0
    for n in range(calls):
        with resilient.config.caller(f"customer-{n % 500}"):
            for name, dependency in DEPENDENCIES.items():
                try:
                    await pipelines[name].call(dependency)
                    ok += 1
                except (ConnectionError, resilient.RejectedError):
                    failed += 1
        if n % 50 == 0:
            await anyio.sleep(0.01)
    return ok, failed


async def rollout_of(name: str, pipelines: resilient.config.Registry) -> str:
    """Send traffic until the rollout of pipeline ``name`` ends; its last decision."""
    for _ in range(500):
        last = DECISIONS[-1] if DECISIONS else None
        if last is not None and last.pipeline == name and last.decision in ENDS:
            return last.decision
        await traffic(pipelines, 100)
    raise RuntimeError(f"the rollout of {name} did not end")


async def main() -> None:
    folder = Path(tempfile.mkdtemp())
    path = folder / "resilience.toml"
    shutil.copy(HERE / "config" / "resilience.toml", path)
    text = path.read_text(encoding="utf-8")
    pipelines = resilient.config.load(path, env=OVERRIDES, listeners=[report])
    payments = pipelines.settings("payments")
    print(f"loaded {list(pipelines)} from {path.name}")
    print(
        f"  payments: {payments['retry.attempts']} attempts, breaker at "
        f"{payments['breaker.failure_rate']:.0%}, limiter "
        f"{'on' if payments['limiter.enabled'] else 'off (environment)'}"
    )

    def edit(old: str, new: str) -> None:
        nonlocal text
        assert old in text
        text = text.replace(old, new)
        path.write_text(text, encoding="utf-8")

    async with anyio.create_task_group() as tg:
        tg.start_soon(pipelines.watch, 0.05)
        ok, failed = await traffic(pipelines, 200)
        print(f"steady traffic: {ok} calls succeeded, {failed} failed")

        print("edit 1: a payments breaker that opens at 1 % failures after 5 calls")
        edit("failure_rate = 0.3\n", "failure_rate = 0.01\nminimum_calls = 5\n")
        assert await rollout_of("payments", pipelines) == "rolled_back"
        rate = pipelines.settings("payments")["breaker.failure_rate"]
        print(f"  payments breaker still at {rate:.0%}")

        print("edit 2: a typo in a key and a bad value")
        edit("bulkhead.max_wait = 0.1", "bulkhead.max_wiat = 0.1\nbreaker.failure_rate = 2")
        before = pipelines.policy("inventory").generation
        await anyio.sleep(0.2)
        assert pipelines.policy("inventory").generation == before
        edit("bulkhead.max_wiat = 0.1\nbreaker.failure_rate = 2", "bulkhead.max_wait = 0.1")

        print("edit 3: inventory retries 4 -> 3")
        edit("retry.attempts = 4", "retry.attempts = 3")
        assert await rollout_of("inventory", pipelines) == "completed"
        print(f"  inventory now makes {pipelines.settings('inventory')['retry.attempts']} attempts")
        tg.cancel_scope.cancel()
    shutil.rmtree(folder)


if __name__ == "__main__":
    anyio.run(main)

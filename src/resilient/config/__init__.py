"""Configuration as data: named pipelines from TOML or a dict, reloaded and rolled out safely.

::

    import resilient.config

    pipelines = resilient.config.load("resilience.toml")
    payments = pipelines["payments"]              # a resilient.Pipeline, stable across reloads
    await payments.call(charge, order)

    pipelines.reload()                            # validate fully, then swap atomically
    task_group.start_soon(pipelines.watch)        # or reload whenever the file changes

Every key, the environment rule (``RESILIENT__PIPELINES__PAYMENTS__RETRY__ATTEMPTS=5``),
reloads and phased rollouts are described in docs/configuration.md. The JSON Schema of the
format ships as ``resilient/config/resilience.schema.json``.
"""

from __future__ import annotations

from importlib import resources

from ._build import describe
from ._load import (
    ENV_PREFIX,
    Change,
    Config,
    InvalidConfigError,
    PipelineSettings,
    Problem,
    parse,
    read,
)
from ._registry import ConfigReloaded, ConfiguredPolicy, Registry, ReloadReport, load
from ._rollout import (
    Rollout,
    RolloutChanged,
    RolloutPlan,
    RolloutStatus,
    VersionSwitch,
    bucket,
    caller,
)
from ._schema import json_schema

__all__ = [
    "ENV_PREFIX",
    "Change",
    "Config",
    "ConfigReloaded",
    "ConfiguredPolicy",
    "InvalidConfigError",
    "PipelineSettings",
    "Problem",
    "Registry",
    "ReloadReport",
    "Rollout",
    "RolloutChanged",
    "RolloutPlan",
    "RolloutStatus",
    "VersionSwitch",
    "bucket",
    "caller",
    "describe",
    "json_schema",
    "load",
    "parse",
    "read",
    "schema_path",
]


def schema_path() -> str:
    """The path of the JSON Schema shipped with the package (for editors and CI)."""
    return str(resources.files(__name__).joinpath("resilience.schema.json"))

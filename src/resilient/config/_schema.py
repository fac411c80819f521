"""The configuration format, defined once: every key, its type, range, default and meaning.

Validation, environment overrides, the effective-settings printout, the JSON Schema shipped
with the package and the format reference in docs/configuration.md all read these tables.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "PIPELINE_KEYS",
    "ROLLOUT_KEYS",
    "SERVER_KEYS",
    "Key",
    "json_schema",
]

Kind = Literal["number", "integer", "boolean", "string"]


@dataclass(frozen=True, slots=True)
class Key:
    """One key of the format.

    Attributes:
        path: the dotted path inside its table (``"retry.budget.ratio"``).
        kind: the TOML/JSON type.
        default: the value when no table sets it (``None``: off, or computed, see ``doc``).
        doc: one sentence for the reference and the schema's description.
        minimum: the smallest value allowed (inclusive).
        above: a value that must be exceeded (exclusive minimum).
        maximum: the largest value allowed (inclusive).
        below: a value that must not be reached (exclusive maximum).
        choices: the allowed strings.
        off: ``false`` is also accepted and means "off" (stored as ``None``).
    """

    path: str
    kind: Kind
    default: object
    doc: str
    minimum: float | None = None
    above: float | None = None
    maximum: float | None = None
    below: float | None = None
    choices: tuple[str, ...] = ()
    off: bool = False

    def expects(self) -> str:
        """What the key accepts, in words (for error messages and the reference)."""
        if self.choices:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "boolean":
            text = "true or false"
        else:
            text = "an integer" if self.kind == "integer" else "a number"
            bounds = []
            if self.above is not None:
                bounds.append(f"> {self.above:g}")
            if self.minimum is not None:
                bounds.append(f">= {self.minimum:g}")
            if self.below is not None:
                bounds.append(f"< {self.below:g}")
            if self.maximum is not None:
                bounds.append(f"<= {self.maximum:g}")
            if bounds:
                text += " " + " and ".join(bounds)
        if self.off:
            text += ", or false (off)"
        return text

    def check(self, value: object) -> tuple[object, str | None]:
        """``(normalized value, None)`` or ``(value, reason)`` when ``value`` is refused."""
        if self.off and value is False:
            return None, None
        if self.kind == "boolean":
            accepted = isinstance(value, bool)
        elif self.kind == "string":
            accepted = isinstance(value, str) and (not self.choices or value in self.choices)
        else:
            return self._check_number(value)
        return (value, None) if accepted else (value, self.expects())

    def _check_number(self, value: object) -> tuple[object, str | None]:
        wanted = int if self.kind == "integer" else int | float
        # bool is an int, but `attempts = true` is a mistake, not a number.
        if isinstance(value, bool) or not isinstance(value, wanted):
            return value, self.expects()
        number = float(value)
        if not math.isfinite(number):
            return value, self.expects() + " (finite)"
        if (
            (self.minimum is not None and number < self.minimum)
            or (self.above is not None and number <= self.above)
            or (self.maximum is not None and number > self.maximum)
            or (self.below is not None and number >= self.below)
        ):
            return value, self.expects()
        return (value if self.kind == "integer" else number), None


def _keys(*keys: Key) -> dict[str, Key]:
    return {key.path: key for key in keys}


PIPELINE_KEYS: Final = _keys(
    Key(
        "timeout.total",
        "number",
        30.0,
        "Seconds for the whole call, retries included.",
        above=0,
        off=True,
    ),
    Key(
        "timeout.attempt",
        "number",
        10.0,
        "Seconds for each attempt (default: 10, or timeout.total when shorter).",
        above=0,
        off=True,
    ),
    Key(
        "timeout.hedge",
        "boolean",
        True,
        "Hedge at timeout.attempt instead of cutting (when timeout.total is set and retries "
        "are on), as standard()'s hedge_on_attempt_timeout.",
    ),
    Key("retry.enabled", "boolean", True, "Retry failed attempts (false: one attempt)."),
    Key(
        "retry.attempts",
        "integer",
        4,
        "Attempts including the first; 1 disables retries.",
        minimum=1,
    ),
    Key(
        "retry.base_delay", "number", 0.1, "Backoff before the first retry, in seconds.", minimum=0
    ),
    Key("retry.max_delay", "number", 5.0, "Cap on any backoff, in seconds.", minimum=0),
    Key(
        "retry.jitter",
        "string",
        "full",
        "How backoff is randomized.",
        choices=("full", "equal", "decorrelated", "none"),
    ),
    Key(
        "retry.max_retry_after",
        "number",
        60.0,
        "Longest server Retry-After hint honoured, in seconds.",
        minimum=0,
    ),
    Key("retry.budget.enabled", "boolean", True, "Bound retries by a retry budget."),
    Key(
        "retry.budget.ratio",
        "number",
        0.2,
        "Retry tokens earned per call that ends without a dependency failure.",
        minimum=0,
        maximum=1,
    ),
    Key("retry.budget.reserve", "number", 5.0, "Retry tokens kept for low traffic.", minimum=0),
    Key("retry.budget.window", "number", 10.0, "Seconds over which earned tokens fade.", above=0),
    Key("breaker.enabled", "boolean", True, "Include a circuit breaker."),
    Key(
        "breaker.failure_rate",
        "number",
        0.5,
        "Failure rate that opens the breaker.",
        above=0,
        maximum=1,
    ),
    Key(
        "breaker.window_type",
        "string",
        "time",
        "A window of seconds or of calls.",
        choices=("time", "count"),
    ),
    Key(
        "breaker.window",
        "number",
        None,
        "Window length: seconds (time window, default 30) or calls (count window, default 100).",
        above=0,
    ),
    Key(
        "breaker.minimum_calls",
        "integer",
        20,
        "Outcomes the window must hold before rates are judged.",
        minimum=1,
    ),
    Key("breaker.open_for", "number", 5.0, "Seconds open after a first trip.", above=0),
    Key("breaker.half_open_calls", "integer", 1, "Probes admitted while half-open.", minimum=1),
    Key(
        "breaker.slow_call_duration",
        "number",
        None,
        "Calls slower than this many seconds are slow (default: not tracked).",
        above=0,
        off=True,
    ),
    Key(
        "breaker.slow_call_rate",
        "number",
        1.0,
        "Slow-call rate that opens the breaker.",
        above=0,
        maximum=1,
    ),
    Key("breaker.buckets", "integer", 10, "Resolution of a time window.", minimum=1, maximum=1000),
    Key(
        "breaker.open_for_growth",
        "number",
        2.0,
        "Factor applied to the open time on each consecutive trip.",
        minimum=1,
    ),
    Key(
        "breaker.max_open_for",
        "number",
        None,
        "Cap on the grown open time (default: 60 s, or open_for if larger).",
        above=0,
    ),
    Key(
        "breaker.open_jitter",
        "number",
        0.1,
        "Fraction of the open time drawn at random.",
        minimum=0,
        below=1,
    ),
    Key(
        "breaker.max_half_open",
        "number",
        None,
        "Seconds to wait for probes' outcomes (default: wait).",
        above=0,
        off=True,
    ),
    Key(
        "breaker.consecutive_failures",
        "integer",
        10,
        "Failures in a row that open the breaker at once (false: off).",
        minimum=1,
        off=True,
    ),
    Key(
        "breaker.max_waiting",
        "integer",
        100,
        "Callers that may wait out an open breaker, per key (0: fail at once).",
        minimum=0,
    ),
    Key(
        "breaker.max_wait",
        "number",
        1.0,
        "Longest wait for an open breaker, in seconds (also capped by the deadline).",
        minimum=0,
    ),
    Key(
        "breaker.probe_interval",
        "number",
        0.2,
        "While callers wait, the least seconds between two probes.",
        above=0,
    ),
    Key("breaker.per_key", "boolean", True, "One state per call key (the httpx host)."),
    Key("breaker.max_keys", "integer", 1000, "The most keys kept at once.", minimum=1),
    Key(
        "breaker.key_idle",
        "number",
        600.0,
        "Seconds after which an idle key is dropped.",
        above=0,
        off=True,
    ),
    Key(
        "limiter.enabled",
        "boolean",
        None,
        "Include a rate limiter (default: when limiter.rate is set).",
    ),
    Key("limiter.rate", "number", None, "Tokens per second.", above=0, off=True),
    Key(
        "limiter.burst",
        "number",
        None,
        "Tokens available back to back (default: rate, at least 1).",
        minimum=1,
    ),
    Key("limiter.max_wait", "number", 0.0, "Seconds a call may wait for a token.", minimum=0),
    Key("limiter.per_key", "boolean", False, "One bucket per call key."),
    Key("bulkhead.enabled", "boolean", True, "Include a bulkhead."),
    Key("bulkhead.max_concurrent", "integer", 100, "Calls running at once.", minimum=1),
    Key("bulkhead.max_waiting", "integer", 100, "Calls waiting for a slot.", minimum=0),
    Key("bulkhead.max_wait", "number", 1.0, "Seconds a call may wait for a slot.", minimum=0),
    Key("bulkhead.per_key", "boolean", False, "One bulkhead per call key."),
)
"""Keys of ``[defaults]`` and of each ``[pipelines.NAME]`` table."""

SERVER_KEYS: Final = _keys(
    Key(
        "max_concurrent",
        "integer",
        None,
        "Requests running at once (default: no limit).",
        minimum=1,
        off=True,
    ),
    Key(
        "max_waiting",
        "integer",
        None,
        "Requests waiting for a slot (default: max_concurrent).",
        minimum=0,
    ),
    Key("max_wait", "number", 0.25, "Seconds a request may wait for a slot.", minimum=0),
    Key("shed_retry_after", "number", 1.0, "Retry-After seconds sent with a 503.", above=0),
    Key(
        "rate",
        "number",
        None,
        "Requests per second per client (default: no limit).",
        above=0,
        off=True,
    ),
    Key("burst", "integer", None, "Requests a client may send back to back.", minimum=1),
    Key(
        "timeout",
        "number",
        None,
        "Seconds the app may take to start its response.",
        above=0,
        off=True,
    ),
    Key("total_timeout", "number", None, "Seconds the whole response may take.", above=0, off=True),
)
"""Keys of each ``[servers.NAME]`` table (``ResilienceMiddleware`` options)."""

ROLLOUT_KEYS: Final = _keys(
    Key(
        "enabled",
        "boolean",
        False,
        "Roll changed pipelines out in phases on reload instead of at once.",
    ),
    Key("first_share", "number", 0.01, "Share of callers in the first phase.", above=0, maximum=1),
    Key("growth", "number", 2.0, "Factor by which the share grows at each phase.", minimum=1.1),
    Key("bake", "number", 300.0, "Seconds each phase runs before it may grow.", above=0),
    Key(
        "min_calls",
        "integer",
        100,
        "Calls each group needs in a phase before rates are compared.",
        minimum=1,
    ),
    Key(
        "max_failure_rate_increase",
        "number",
        0.02,
        "Failure rate the new group may exceed the control group's by (absolute).",
        minimum=0,
        maximum=1,
    ),
    Key(
        "max_latency_increase",
        "number",
        0.25,
        "Relative increase of mean latency tolerated (0.25: 25 % slower).",
        minimum=0,
    ),
    Key(
        "min_latency_increase",
        "number",
        0.005,
        "Seconds of mean latency increase always tolerated (noise on fast calls).",
        minimum=0,
    ),
    Key(
        "max_load_increase",
        "number",
        0.25,
        "Relative increase of attempts per call tolerated.",
        minimum=0,
    ),
    Key(
        "max_extra_breaker_openings",
        "integer",
        0,
        "Breaker openings the new group may have beyond the control group's.",
        minimum=0,
    ),
)
"""Keys of the ``[rollout]`` table."""

TOP_LEVEL: Final = ("defaults", "pipelines", "servers", "rollout")

SCHEMA_ID: Final = "https://resilient.invalid/schemas/resilience.schema.json"


def _key_schema(key: Key) -> dict[str, Any]:
    schema: dict[str, Any] = {"description": key.doc}
    base: dict[str, Any] = {"type": key.kind}
    for bound, name in (
        (key.minimum, "minimum"),
        (key.above, "exclusiveMinimum"),
        (key.maximum, "maximum"),
        (key.below, "exclusiveMaximum"),
    ):
        if bound is not None:
            base[name] = bound
    if key.choices:
        base["enum"] = list(key.choices)
    if key.off:
        schema["anyOf"] = [base, {"const": False}]
    else:
        schema.update(base)
    if key.default is not None:
        schema["default"] = key.default
    return schema


def _nested(keys: dict[str, Key]) -> dict[str, Any]:
    """An object schema (closed: unknown keys refused) from dotted paths."""
    root: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": {}}
    for path, key in keys.items():
        node = root
        *tables, leaf = path.split(".")
        for table in tables:
            node = node["properties"].setdefault(
                table, {"type": "object", "additionalProperties": False, "properties": {}}
            )
        node["properties"][leaf] = _key_schema(key)
    return root


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a configuration file, built from the key tables."""
    pipeline = _nested(PIPELINE_KEYS)
    server = _nested(SERVER_KEYS)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "resilient configuration",
        "description": "Named resilience pipelines for resilient.config.load().",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "defaults": {**pipeline, "description": "Settings every pipeline starts from."},
            "pipelines": {
                "type": "object",
                "description": "Named pipelines: [pipelines.NAME].",
                "additionalProperties": {"$ref": "#/$defs/pipeline"},
            },
            "servers": {
                "type": "object",
                "description": "Named ResilienceMiddleware settings: [servers.NAME].",
                "additionalProperties": {"$ref": "#/$defs/server"},
            },
            "rollout": {**_nested(ROLLOUT_KEYS), "description": "How changes are rolled out."},
        },
        "$defs": {"pipeline": pipeline, "server": server},
    }


def schema_text() -> str:
    """The schema as the shipped file holds it (sorted keys, two-space indent, final newline)."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"

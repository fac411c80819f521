"""Reading a configuration: TOML or a dict, ``[defaults]``, environment overrides, validation.

Every problem is collected before anything is reported, so one run of ``python -m resilient
check`` lists all of them, each with its file, line (when the text is known), table and key.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, final

from resilient import ConfigurationError, ResilientError

from ._schema import PIPELINE_KEYS, ROLLOUT_KEYS, SERVER_KEYS, TOP_LEVEL, Key

__all__ = [
    "ENV_PREFIX",
    "Change",
    "Config",
    "InvalidConfigError",
    "PipelineSettings",
    "Problem",
    "parse",
]

ENV_PREFIX = "RESILIENT"
"""Environment variables ``RESILIENT__<TABLE>__...__<KEY>`` override the file (see docs)."""


@final
@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration.

    Attributes:
        source: the file (or ``"<dict>"``, or ``"environment"``).
        line: the line in the file, when known.
        table: the table holding the key (``"pipelines.payments"``), ``""`` at the top.
        key: the dotted key inside the table (``"retry.attempts"``), ``""`` for a table.
        message: what is wrong, and what would be right.
    """

    source: str
    line: int | None
    table: str
    key: str
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        place = f"[{self.table}]" if self.table else "top level"
        if self.key:
            place += f" {self.key}"
        return f"{where}: {place}: {self.message}"


@final
class InvalidConfigError(ResilientError, ValueError):
    """A configuration was refused; ``problems`` lists every problem found, not the first.

    Attributes:
        problems: each problem with its source, line, table and key.
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(
            f"{count} problem{'s' if count != 1 else ''} in the configuration:\n{lines}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # Rebuilt from the problems, not the message (multiprocessing, task queues).
        return (InvalidConfigError, (self.problems,))


@final
@dataclass(frozen=True, slots=True)
class Change:
    """One setting that differs between two configurations.

    Attributes:
        scope: ``"pipelines.NAME"``, ``"servers.NAME"`` or ``"rollout"``.
        key: the dotted key (``""`` when the whole table was added or removed).
        old: the previous effective value (``None`` when added or off).
        new: the new effective value (``None`` when removed or off).
    """

    scope: str
    key: str
    old: object
    new: object

    def __str__(self) -> str:
        if not self.key:
            return f"[{self.scope}] {'added' if self.old is None else 'removed'}"
        return f"[{self.scope}] {self.key}: {_show(self.old)} -> {_show(self.new)}"


def _show(value: object) -> str:
    if value is None:
        return "off"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float):
        return repr(value)
    return str(value)


@final
@dataclass(frozen=True, slots=True)
class PipelineSettings:
    """The effective settings of one pipeline: every key of the format, resolved.

    Attributes:
        name: the pipeline's name.
        values: dotted key -> value; ``None`` means off (a timeout, the limiter's rate).
    """

    name: str
    values: Mapping[str, object] = field(repr=False)

    def __getitem__(self, key: str) -> Any:
        """The effective value of a dotted key (``settings["retry.attempts"]``).

        Raises:
            KeyError: not a key of the format.
        """
        return self.values[key]

    def diff(self, other: PipelineSettings) -> tuple[Change, ...]:
        """The keys whose value differs in ``other``, in format order."""
        scope = f"pipelines.{self.name}"
        return tuple(
            Change(scope, key, self.values[key], other.values[key])
            for key in PIPELINE_KEYS
            if self.values[key] != other.values[key]
        )

    def to_toml(self) -> str:
        """The effective settings as a TOML table (what ``python -m resilient check`` prints)."""
        lines = [f"[pipelines.{_table_name(self.name)}]"]
        for key, value in self.values.items():
            if value is not None:
                lines.append(f"{key} = {_toml(value)}")
            elif PIPELINE_KEYS[key].off:
                lines.append(f"{key} = false")
            else:
                lines.append(f"# {key} is not set")
        return "\n".join(lines)


def _table_name(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


@final
@dataclass(frozen=True, slots=True)
class Config:
    """A whole validated configuration.

    Attributes:
        source: where it came from (a path, ``"<dict>"``).
        pipelines: name -> effective settings.
        servers: name -> ``ResilienceMiddleware`` keyword arguments.
        rollout: the ``[rollout]`` table's effective values.
    """

    source: str
    pipelines: Mapping[str, PipelineSettings]
    servers: Mapping[str, Mapping[str, object]]
    rollout: Mapping[str, object]

    def to_toml(self) -> str:
        """The whole effective configuration as TOML (loads back to the same settings)."""
        parts = [settings.to_toml() for settings in self.pipelines.values()]
        tables = [(f"servers.{_table_name(n)}", v, SERVER_KEYS) for n, v in self.servers.items()]
        tables.append(("rollout", self.rollout, ROLLOUT_KEYS))
        for table, values, keys in tables:
            lines = [f"[{table}]"]
            for key, value in values.items():
                if value is None:
                    lines.append(f"{key} = false" if keys[key].off else f"# {key} is not set")
                else:
                    lines.append(f"{key} = {_toml(value)}")
            parts.append("\n".join(lines))
        return "\n\n".join(parts) + "\n"

    def diff(self, other: Config) -> tuple[Change, ...]:
        """Every setting that differs in ``other`` (added and removed tables included)."""
        changes: list[Change] = []
        for name, settings in self.pipelines.items():
            if name not in other.pipelines:
                changes.append(Change(f"pipelines.{name}", "", settings, None))
            else:
                changes.extend(settings.diff(other.pipelines[name]))
        changes.extend(
            Change(f"pipelines.{name}", "", None, settings)
            for name, settings in other.pipelines.items()
            if name not in self.pipelines
        )
        for name, options in self.servers.items():
            new = other.servers.get(name)
            if new is None:
                changes.append(Change(f"servers.{name}", "", options, None))
                continue
            changes.extend(
                Change(f"servers.{name}", k, options[k], new[k])
                for k in options
                if options[k] != new[k]
            )
        changes.extend(
            Change(f"servers.{name}", "", None, options)
            for name, options in other.servers.items()
            if name not in self.servers
        )
        changes.extend(
            Change("rollout", k, self.rollout[k], other.rollout[k])
            for k in self.rollout
            if self.rollout[k] != other.rollout[k]
        )
        return tuple(changes)


# -- locating keys in TOML text ------------------------------------------------------------

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_ASSIGN = re.compile(
    r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*="
)


def _split_dotted(text: str) -> tuple[str, ...]:
    parts = re.findall(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+)", text)
    return tuple(a or b or c for a, b, c in parts)


def _locate(text: str) -> dict[tuple[str, ...], int]:
    """Best-effort map from a key path (tables included) to the line defining it."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            table = _split_dotted(header.group(1))
            lines.setdefault(table, number)
            continue
        assign = _ASSIGN.match(line)
        if assign:
            path = table + _split_dotted(assign.group(1))
            for end in range(len(table) + 1, len(path) + 1):
                lines.setdefault(path[:end], number)
    return lines


# -- parsing -------------------------------------------------------------------------------


class _Collector:
    def __init__(self, source: str, text: str | None) -> None:
        self.source = source
        self.lines = _locate(text) if text is not None else {}
        self.problems: list[Problem] = []

    def add(self, table: str, key: str, message: str, *, source: str | None = None) -> None:
        line = None
        if source is None:
            path = tuple(p for p in (table.split(".") if table else [])) + (
                tuple(key.split(".")) if key else ()
            )
            while path and line is None:
                line = self.lines.get(path)
                path = path[:-1]
        self.problems.append(Problem(source or self.source, line, table, key, message))


def _hint(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _flatten(
    table: Mapping[str, Any], keys: Mapping[str, Key], where: str, out: _Collector
) -> dict[str, object]:
    """Dotted key -> checked value for one table; unknown keys and bad values reported."""
    values: dict[str, object] = {}
    tables = {p.rsplit(".", 1)[0] for p in keys if "." in p}
    tables |= {t.rsplit(".", 1)[0] for t in tables if "." in t}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for name, value in node.items():
            path = f"{prefix}{name}"
            if isinstance(value, Mapping):
                if path in tables:
                    walk(value, path + ".")
                elif path in keys:
                    out.add(where, path, f"expected {keys[path].expects()}, got a table")
                else:
                    candidates = [t for t in tables if t.startswith(prefix)] + list(keys)
                    out.add(where, path, "unknown table" + _hint(path, candidates))
                continue
            key = keys.get(path)
            if key is None:
                if path in tables:
                    out.add(where, path, "expected a table of keys, got a value")
                else:
                    out.add(where, path, "unknown key" + _hint(path, keys))
                continue
            checked, reason = key.check(value)
            if reason is not None:
                out.add(where, path, f"expected {reason}, got {_show_raw(value)}")
            else:
                values[path] = checked

    walk(table, "")
    return values


def _show_raw(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "an array"
    return repr(value)


def _env_name(part: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", part.upper())


_BOOLEANS: Final = {"true": True, "1": True, "yes": True, "on": True}
_BOOLEANS_FALSE: Final = {"false": False, "0": False, "no": False, "off": False}


def _env_value(key: Key, raw: str) -> tuple[object, str | None]:
    """The typed value of an environment variable, or ``(raw, reason)`` (then checked)."""
    text = raw.strip()
    lowered = text.lower()
    if (key.off and lowered in ("false", "off")) or key.kind == "boolean":
        value = {**_BOOLEANS, **_BOOLEANS_FALSE}.get(lowered)
        return (raw, "true or false") if value is None else (value, None)
    if key.kind == "string":
        return text, None
    try:
        number: object = int(text) if key.kind == "integer" else float(text)
    except ValueError:
        return raw, key.expects()
    return number, None  # NaN and infinities are refused by Key.check


def _environment(
    env: Mapping[str, str],
    prefix: str,
    pipelines: Iterable[str],
    servers: Iterable[str],
    out: _Collector,
) -> dict[tuple[str, str], dict[str, object]]:
    """(scope kind, name) -> overrides, from ``PREFIX__TABLE__...__KEY`` variables."""
    head = prefix + "__"
    found: dict[tuple[str, str], dict[str, object]] = {}
    named = {"PIPELINES": {}, "SERVERS": {}}  # type: dict[str, dict[str, str]]
    for kind, names in (("PIPELINES", pipelines), ("SERVERS", servers)):
        for name in names:
            named[kind].setdefault(_env_name(name), name)
    for variable in sorted(env):
        if not variable.startswith(head):
            continue
        parts = variable[len(head) :].split("__")
        scope = parts[0]
        keys: Mapping[str, Key]
        if scope == "DEFAULTS":
            target, rest, keys = ("defaults", ""), parts[1:], PIPELINE_KEYS
        elif scope == "ROLLOUT":
            target, rest, keys = ("rollout", ""), parts[1:], ROLLOUT_KEYS
        elif scope in named and len(parts) > 1:
            found_name = named[scope].get(parts[1])
            if found_name is None:
                table = "pipelines" if scope == "PIPELINES" else "servers"
                out.add(
                    "",
                    "",
                    f"{variable} names {table}.{parts[1].lower()}, which the file does not "
                    "define" + _hint(parts[1].lower(), [n.lower() for n in named[scope]]),
                    source="environment",
                )
                continue
            kind = "pipelines" if scope == "PIPELINES" else "servers"
            target, rest = (kind, found_name), parts[2:]
            keys = PIPELINE_KEYS if scope == "PIPELINES" else SERVER_KEYS
        else:
            out.add(
                "",
                "",
                f"{variable}: expected {head}DEFAULTS__..., {head}PIPELINES__<name>__..., "
                f"{head}SERVERS__<name>__... or {head}ROLLOUT__..."
                + _hint(scope, ("DEFAULTS", "PIPELINES", "SERVERS", "ROLLOUT")),
                source="environment",
            )
            continue
        path = ".".join(p.lower() for p in rest)
        table = target[0] if not target[1] else f"{target[0]}.{target[1]}"
        key = keys.get(path)
        if key is None:
            out.add(
                table, path, f"{variable}: unknown key" + _hint(path, keys), source="environment"
            )
            continue
        value, reason = _env_value(key, env[variable])
        if reason is None:
            value, reason = key.check(value)
        if reason is not None:
            out.add(
                table,
                path,
                f"{variable}: expected {reason}, got {env[variable]!r}",
                source="environment",
            )
            continue
        found.setdefault(target, {})[path] = value
    return found


def _resolve(values: dict[str, object]) -> dict[str, object]:
    """Fill in the defaults that depend on other keys."""
    if values["breaker.window"] is None:
        values["breaker.window"] = 30.0 if values["breaker.window_type"] == "time" else 100
    elif values["breaker.window_type"] == "count":
        window = values["breaker.window"]
        if isinstance(window, float) and window.is_integer():
            values["breaker.window"] = int(window)
    if values["breaker.max_open_for"] is None:
        values["breaker.max_open_for"] = max(60.0, float(values["breaker.open_for"]))  # type: ignore[arg-type]
    if values["limiter.enabled"] is None:
        values["limiter.enabled"] = values["limiter.rate"] is not None
    if values["limiter.burst"] is None and values["limiter.rate"] is not None:
        values["limiter.burst"] = float(max(1, int(values["limiter.rate"])))  # type: ignore[call-overload]
    return values


def _default_attempt(total: object) -> float:
    # As resilient.standard(): 10 s per attempt, or the whole call's time when that is shorter.
    default = float(PIPELINE_KEYS["timeout.attempt"].default)  # type: ignore[arg-type]
    return min(default, total) if isinstance(total, float) else default


def _cross_checks(settings: PipelineSettings, table: str, out: _Collector) -> None:
    v = settings.values
    attempt, total = v["timeout.attempt"], v["timeout.total"]
    if attempt is not None and total is not None and attempt > total:  # type: ignore[operator]
        out.add(
            table,
            "timeout.attempt",
            f"{attempt!r} exceeds timeout.total={total!r}: no attempt could use its own timeout",
        )
    if v["limiter.enabled"] and v["limiter.rate"] is None:
        out.add(table, "limiter.rate", "the limiter is enabled but has no rate")
    if v["breaker.window_type"] == "count" and not isinstance(v["breaker.window"], int):
        out.add(table, "breaker.window", "a count window needs a whole number of calls")
    if v["retry.base_delay"] > v["retry.max_delay"]:  # type: ignore[operator]
        out.add(table, "retry.base_delay", "is larger than retry.max_delay")


def _named_tables(
    tables: Mapping[str, Any], keys: Mapping[str, Key], kind: str, out: _Collector
) -> dict[str, dict[str, object]]:
    """``[kind.NAME]`` tables, flattened and checked; their names must map to distinct
    environment names."""
    found: dict[str, dict[str, object]] = {}
    seen: dict[str, str] = {}
    for name, body in tables.items():
        if not str(name).strip():
            out.add(kind, repr(name), "a table needs a non-empty name")
        elif not isinstance(body, Mapping):
            out.add(kind, str(name), f"expected a table, got {_show_raw(body)}")
        else:
            found[name] = _flatten(body, keys, f"{kind}.{name}", out)
            other = seen.setdefault(_env_name(name), name)
            if other != name:
                out.add(kind, name, f"same environment name as {other!r}: rename one")
    return found


def _servers(
    tables: dict[str, dict[str, object]],
    overrides: Mapping[tuple[str, str], dict[str, object]],
    out: _Collector,
) -> dict[str, Mapping[str, object]]:
    servers: dict[str, Mapping[str, object]] = {}
    for name, own in tables.items():
        values = {path: key.default for path, key in SERVER_KEYS.items()}
        values.update(own)
        values.update(overrides.get(("servers", name), {}))
        if values["max_waiting"] is not None and values["max_concurrent"] is None:
            out.add(f"servers.{name}", "max_waiting", "needs max_concurrent")
        if values["burst"] is not None and values["rate"] is None:
            out.add(f"servers.{name}", "burst", "needs rate")
        servers[name] = MappingProxyType(values)
    return servers


def _constructor_checks(pipelines: Mapping[str, PipelineSettings], out: _Collector) -> None:
    """Rules only the constructors know (ranges that depend on other options)."""
    from ._build import build_policies  # _build reads settings defined here

    for name, settings in pipelines.items():
        try:
            build_policies(settings)
        except ConfigurationError as exc:
            out.add(f"pipelines.{name}", _key_of(exc.parameter), str(exc))


def parse(
    data: Mapping[str, Any],
    *,
    source: str = "<dict>",
    text: str | None = None,
    env: Mapping[str, str] | None = None,
    env_prefix: str = ENV_PREFIX,
) -> Config:
    """Validate ``data`` (a parsed TOML document or any dict of the same shape).

    Args:
        data: the document.
        source: its name in problems (a path).
        text: the document's text, to give problems a line number.
        env: the environment to read overrides from (default ``os.environ``); ``{}`` for none.
        env_prefix: the variables' prefix.

    Raises:
        InvalidConfigError: every problem found, with its location.
    """
    out = _Collector(source, text)
    if not isinstance(data, Mapping):
        raise InvalidConfigError([Problem(source, None, "", "", "expected a table (a dict)")])
    for name in data:
        if name not in TOP_LEVEL:
            out.add("", str(name), "unknown table" + _hint(str(name), TOP_LEVEL))

    def table(name: str) -> Mapping[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, Mapping):
            out.add("", name, f"expected a table, got {_show_raw(value)}")
            return {}
        return value

    defaults = _flatten(table("defaults"), PIPELINE_KEYS, "defaults", out)
    rollout = _flatten(table("rollout"), ROLLOUT_KEYS, "rollout", out)
    pipeline_tables = _named_tables(table("pipelines"), PIPELINE_KEYS, "pipelines", out)
    server_tables = _named_tables(table("servers"), SERVER_KEYS, "servers", out)
    overrides = _environment(
        os.environ if env is None else env, env_prefix, pipeline_tables, server_tables, out
    )
    pipelines: dict[str, PipelineSettings] = {}
    for name, own in pipeline_tables.items():
        values = {path: key.default for path, key in PIPELINE_KEYS.items()}
        # Precedence: built-in, [defaults], [pipelines.NAME], then the environment likewise.
        layers = (
            defaults,
            own,
            overrides.get(("defaults", ""), {}),
            overrides.get(("pipelines", name), {}),
        )
        for layer in layers:
            values.update(layer)
        if not any("timeout.attempt" in layer for layer in layers):
            values["timeout.attempt"] = _default_attempt(values["timeout.total"])
        pipelines[name] = PipelineSettings(name, MappingProxyType(_resolve(values)))
        _cross_checks(pipelines[name], f"pipelines.{name}", out)
    plan = {path: key.default for path, key in ROLLOUT_KEYS.items()}
    plan.update(rollout)
    plan.update(overrides.get(("rollout", ""), {}))
    config = Config(
        source,
        MappingProxyType(pipelines),
        MappingProxyType(_servers(server_tables, overrides, out)),
        MappingProxyType(plan),
    )
    if not pipelines and not out.problems:
        out.add("", "pipelines", "no pipeline defined: add a [pipelines.NAME] table")
    if not out.problems:
        _constructor_checks(pipelines, out)
    if out.problems:
        raise InvalidConfigError(out.problems)
    return config


_PARAMETERS = {
    "Retry": "retry",
    "RetryBudget": "retry.budget",
    "CircuitBreaker": "breaker",
    "RateLimiter": "limiter",
    "Bulkhead": "bulkhead",
    "Timeout": "timeout",
}


def _key_of(parameter: str) -> str:
    policy, _, option = parameter.partition(".")
    section = _PARAMETERS.get(policy)
    return f"{section}.{option}" if section else parameter


def read(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    env_prefix: str = ENV_PREFIX,
) -> Config:
    """Read and validate a TOML file (see ``parse``).

    Raises:
        InvalidConfigError: the file cannot be read or parsed, or any problem in it.
    """
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidConfigError([Problem(name, None, "", "", f"cannot read: {exc}")]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        raise InvalidConfigError([Problem(name, line, "", "", f"not valid TOML: {exc}")]) from exc
    return parse(data, source=name, text=text, env=env, env_prefix=env_prefix)

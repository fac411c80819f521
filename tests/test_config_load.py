"""resilient.config: the format, validation, environment overrides, the schema, the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import resilient
import resilient.config as rc
from resilient import (
    Bulkhead,
    CircuitBreaker,
    ConfigurationError,
    Pipeline,
    RateLimiter,
    Retry,
    RetryBudget,
    Timeout,
)
from resilient.config._schema import PIPELINE_KEYS, ROLLOUT_KEYS, SERVER_KEYS, schema_text

ROOT = Path(__file__).resolve().parent.parent

# Every key of a pipeline table set to a value that differs from its default.
EVERY_KEY: dict[str, Any] = {
    "timeout": {"total": 12.5, "attempt": 2.5, "hedge": False},
    "retry": {
        "enabled": True,
        "attempts": 5,
        "base_delay": 0.2,
        "max_delay": 3.0,
        "jitter": "equal",
        "max_retry_after": 30.0,
        "budget": {"enabled": True, "ratio": 0.3, "reserve": 7.0, "window": 20.0},
    },
    "breaker": {
        "enabled": True,
        "failure_rate": 0.3,
        "window_type": "count",
        "window": 50,
        "minimum_calls": 10,
        "open_for": 7.0,
        "half_open_calls": 3,
        "slow_call_duration": 1.5,
        "slow_call_rate": 0.8,
        "buckets": 20,
        "open_for_growth": 1.5,
        "max_open_for": 90.0,
        "open_jitter": 0.2,
        "max_half_open": 4.0,
        "per_key": False,
        "max_keys": 50,
        "key_idle": 120.0,
        "consecutive_failures": 6,
        "max_waiting": 20,
        "max_wait": 0.5,
        "probe_interval": 0.1,
    },
    "limiter": {"enabled": True, "rate": 40.0, "burst": 8.0, "max_wait": 0.25, "per_key": True},
    "bulkhead": {
        "enabled": True,
        "max_concurrent": 16,
        "max_waiting": 4,
        "max_wait": 0.5,
        "per_key": True,
    },
}


def equivalent_python() -> list[Any]:
    """EVERY_KEY written by hand with the public constructors."""
    return [
        Timeout(12.5, name="total_timeout"),
        Retry(
            attempts=5,
            base_delay=0.2,
            max_delay=3.0,
            jitter="equal",
            max_retry_after=30.0,
            budget=RetryBudget(ratio=0.3, reserve=7.0, window=20.0),
        ),
        CircuitBreaker(
            failure_rate=0.3,
            window_type="count",
            window=50,
            minimum_calls=10,
            open_for=7.0,
            half_open_calls=3,
            slow_call_duration=1.5,
            slow_call_rate=0.8,
            buckets=20,
            open_for_growth=1.5,
            max_open_for=90.0,
            open_jitter=0.2,
            max_half_open=4.0,
            per_key=False,
            max_keys=50,
            key_idle=120.0,
            consecutive_failures=6,
            max_waiting=20,
            max_wait=0.5,
            probe_interval=0.1,
        ),
        RateLimiter(rate=40.0, burst=8.0, max_wait=0.25, per_key=True),
        Bulkhead(max_concurrent=16, max_waiting=4, max_wait=0.5, per_key=True),
        Timeout(2.5, name="attempt_timeout"),
    ]


def _slots(cls: type) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names.extend([slots] if isinstance(slots, str) else slots)
    return names


def effective(policy: object) -> dict[str, object]:
    """Every plain setting a policy holds (slots with numbers, strings, booleans, None)."""
    out: dict[str, object] = {"type": type(policy).__name__}
    for name in _slots(type(policy)):
        value = getattr(policy, name, None)
        if isinstance(value, RetryBudget):
            out[name] = effective(value)
        elif value is None or isinstance(value, int | float | str | bool):
            out[name] = value
    return out


def _dotted(table: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, value in table.items():
        if isinstance(value, dict):
            keys |= _dotted(value, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def test_every_key_round_trips_to_the_equivalent_python_pipeline() -> None:
    assert _dotted(EVERY_KEY) == set(PIPELINE_KEYS), "the test must set every key"
    registry = rc.load({"pipelines": {"p": EVERY_KEY}}, env={})
    built = registry.policy("p").policies
    by_hand = equivalent_python()
    assert [effective(p) for p in built] == [effective(p) for p in by_hand]
    assert [repr(p) for p in built] == [repr(p) for p in by_hand]
    assert rc.describe(built) == rc.describe(by_hand)


def _with(table: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    out = json.loads(json.dumps(table))
    node = out
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


@pytest.mark.parametrize("path", sorted(PIPELINE_KEYS))
def test_each_key_changes_the_pipeline(path: str) -> None:
    """Setting one key alone changes what is built: no key is silently ignored."""
    value: Any = EVERY_KEY
    for part in path.split("."):
        value = value[part]
    if path.endswith(".enabled"):
        value = False  # on by default (the limiter: on once it has a rate)
    base: dict[str, Any] = {}
    if path.startswith("limiter.") and path != "limiter.rate":
        base = {"limiter": {"rate": 40.0}}
    plain = rc.load({"pipelines": {"p": base}}, env={})
    changed = rc.load({"pipelines": {"p": _with(base, path, value)}}, env={})
    before = [effective(p) for p in plain.policy("p").policies]
    after = [effective(p) for p in changed.policy("p").policies]
    assert before != after


def test_an_empty_pipeline_is_resilient_standard() -> None:
    registry = rc.load({"pipelines": {"orders": {}}}, env={})
    assert [effective(p) for p in registry.policy("orders").policies] == [
        effective(p) for p in resilient.standard("orders").policies
    ]


def test_defaults_apply_to_every_pipeline_and_a_pipeline_overrides_them() -> None:
    registry = rc.load(
        {
            "defaults": {"retry": {"attempts": 2}, "breaker": {"open_for": 9.0}},
            "pipelines": {"a": {}, "b": {"retry": {"attempts": 6}}},
        },
        env={},
    )
    assert registry.settings("a")["retry.attempts"] == 2
    assert registry.settings("b")["retry.attempts"] == 6
    assert registry.settings("b")["breaker.open_for"] == 9.0


def test_the_attempt_timeout_hedges_with_the_retrys_budget_unless_turned_off() -> None:
    """As standard(): the hedge shares the Retry's budget (a reload that rebuilds the Retry
    rebuilds the hedge with it); ``timeout.hedge = false`` is the cutting attempt timeout."""
    registry = rc.load(
        {"pipelines": {"h": {"timeout": {"attempt": 0.5}}, "cut": {"timeout": {"hedge": False}}}},
        env={},
    )
    retry, _, hedge = registry.policy("h").policies[1:4]
    assert isinstance(retry, Retry)
    assert isinstance(hedge, resilient.Hedge)
    assert (hedge.delay, hedge.max_hedges) == (0.5, 3)
    assert hedge.budget is retry.budget
    assert [type(p).__name__ for p in registry.policy("cut").policies][-1] == "Timeout"
    registry.reload(
        {
            "pipelines": {
                "h": {"timeout": {"attempt": 0.5}, "retry": {"budget": {"ratio": 0.3}}},
                "cut": {"timeout": {"hedge": False}},
            }
        }
    )
    retry, _, hedge = registry.policy("h").policies[1:4]
    assert isinstance(retry, Retry)
    assert isinstance(hedge, resilient.Hedge)
    assert retry.budget is not None
    assert retry.budget.ratio == 0.3
    assert hedge.budget is retry.budget


def test_false_turns_optional_parts_off() -> None:
    registry = rc.load(
        {
            "defaults": {"limiter": {"rate": 10.0}},
            "pipelines": {
                "bare": {
                    "timeout": {"total": False, "attempt": False},
                    "retry": {"enabled": False},
                    "breaker": {"enabled": False},
                    "limiter": {"enabled": False},
                    "bulkhead": {"enabled": False},
                },
                "limited": {},
            },
        },
        env={},
    )
    assert registry.policy("bare").policies == ()
    assert [type(p).__name__ for p in registry.policy("limited").policies] == [
        "Timeout",
        "Retry",
        "CircuitBreaker",
        "Hedge",
        "RateLimiter",
        "Bulkhead",
    ]


def test_a_file_with_several_mistakes_reports_all_of_them_with_locations(
    tmp_path: Path,
) -> None:
    path = tmp_path / "resilience.toml"
    path.write_text(
        "[defaults]\n"  # 1
        "retry.atempts = 3\n"  # 2
        "\n"  # 3
        "[pipelines.payments]\n"  # 4
        "retry.attempts = 0\n"  # 5
        "breaker.failure_rate = 1.5\n"  # 6
        "timeout.total = -1\n"  # 7
        "\n"  # 8
        "[pipelines.search.bulkhead]\n"  # 9
        'max_concurrent = "ten"\n'  # 10
        "\n"  # 11
        "[rollot]\n"  # 12
        "enabled = true\n",
        encoding="utf-8",
    )
    with pytest.raises(rc.InvalidConfigError) as info:
        rc.load(path, env={})
    found = {(p.line, p.table, p.key) for p in info.value.problems}
    assert found == {
        (2, "defaults", "retry.atempts"),
        (5, "pipelines.payments", "retry.attempts"),
        (6, "pipelines.payments", "breaker.failure_rate"),
        (7, "pipelines.payments", "timeout.total"),
        (10, "pipelines.search", "bulkhead.max_concurrent"),
        (12, "", "rollot"),
    }
    text = str(info.value)
    assert text.startswith("6 problems")
    assert (
        f"{path}:2: [defaults] retry.atempts: unknown key (did you mean 'retry.attempts'?)" in text
    )
    assert "did you mean 'rollout'?" in text
    assert "expected an integer >= 1, got 0" in text
    assert all(p.source == str(path) for p in info.value.problems)


def test_unknown_keys_and_tables_are_errors_with_a_hint() -> None:
    with pytest.raises(rc.InvalidConfigError) as info:
        rc.load(
            {"pipelines": {"p": {"breaker": {"failure_rat": 0.2}, "retries": {"attempts": 2}}}},
            env={},
        )
    messages = sorted(p.message for p in info.value.problems)
    assert messages == [
        "unknown key (did you mean 'breaker.failure_rate'?)",
        "unknown table (did you mean 'retry'?)",
    ]


def test_rules_only_a_constructor_knows_are_reported_against_the_key() -> None:
    with pytest.raises(rc.InvalidConfigError) as info:
        rc.load(
            {
                "pipelines": {
                    "p": {"breaker": {"window_type": "count", "window": 10, "minimum_calls": 20}}
                }
            },
            env={},
        )
    (problem,) = info.value.problems
    assert (problem.table, problem.key) == ("pipelines.p", "breaker.minimum_calls")
    assert "could never open" in problem.message


def test_type_errors_are_not_coerced() -> None:
    with pytest.raises(rc.InvalidConfigError) as info:
        rc.load({"pipelines": {"p": {"retry": {"attempts": 2.5, "enabled": "yes"}}}}, env={})
    assert {p.key for p in info.value.problems} == {"retry.attempts", "retry.enabled"}


def test_environment_overrides_win_and_are_typed() -> None:
    env = {
        "RESILIENT__PIPELINES__PAYMENTS_EU__RETRY__ATTEMPTS": "7",
        "RESILIENT__PIPELINES__PAYMENTS_EU__BREAKER__ENABLED": "false",
        "RESILIENT__DEFAULTS__TIMEOUT__TOTAL": "off",
        "RESILIENT__DEFAULTS__BULKHEAD__MAX_WAIT": "0.75",
        "RESILIENT__ROLLOUT__FIRST_SHARE": "0.05",
        "RESILIENT__SERVERS__PUBLIC__RATE": "250",
        "OTHER_VARIABLE": "ignored",
    }
    registry = rc.load(
        {
            "defaults": {"timeout": {"total": 20.0}},
            "pipelines": {"payments-eu": {"retry": {"attempts": 2}, "bulkhead": {"max_wait": 2.0}}},
            "servers": {"public": {"rate": 100.0}},
        },
        env=env,
    )
    settings = registry.settings("payments-eu")
    assert settings["retry.attempts"] == 7
    assert type(settings["retry.attempts"]) is int
    assert settings["breaker.enabled"] is False
    assert settings["timeout.total"] is None
    assert settings["bulkhead.max_wait"] == 0.75  # the environment beats the file's pipeline
    assert registry.config.rollout["first_share"] == 0.05
    assert registry.server("public")["rate"] == 250.0
    names = [type(p).__name__ for p in registry.policy("payments-eu").policies]
    assert names == ["Retry", "Bulkhead", "Timeout"]


def test_environment_mistakes_are_reported_with_the_variable() -> None:
    env = {
        "RESILIENT__PIPELINES__PAYMENTS__RETRY__ATTEMPTS": "five",
        "RESILIENT__PIPELINES__PAYMNTS__RETRY__ATTEMPTS": "2",
        "RESILIENT__PIPELINES__PAYMENTS__RETRY__ATEMPTS": "2",
        "RESILIENT__DEFAUTLS__RETRY__ATTEMPTS": "2",
    }
    with pytest.raises(rc.InvalidConfigError) as info:
        rc.load({"pipelines": {"payments": {}}}, env=env)
    text = str(info.value)
    assert len(info.value.problems) == 4
    assert all(p.source == "environment" for p in info.value.problems)
    assert "RESILIENT__PIPELINES__PAYMENTS__RETRY__ATTEMPTS: expected an integer" in text
    assert "PAYMNTS" in text
    assert "did you mean" in text
    assert "unknown key (did you mean 'retry.attempts'?)" in text
    assert "RESILIENT__DEFAUTLS__RETRY__ATTEMPTS" in text


def test_os_environ_is_the_default_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESILIENT__PIPELINES__P__RETRY__ATTEMPTS", "4")
    assert rc.load({"pipelines": {"p": {}}}).settings("p")["retry.attempts"] == 4


def test_a_dict_from_json_or_yaml_loads_like_toml(tmp_path: Path) -> None:
    text = "[pipelines.p]\nretry.attempts = 4\n[pipelines.p.breaker]\nfailure_rate = 0.25\n"
    path = tmp_path / "r.toml"
    path.write_text(text, encoding="utf-8")
    from_file = rc.load(path, env={}).settings("p")
    from_dict = rc.load(json.loads(json.dumps(tomllib.loads(text))), env={}).settings("p")
    assert from_file.values == from_dict.values


def test_the_printed_effective_settings_load_back_to_the_same_settings() -> None:
    registry = rc.load({"pipelines": {"p": EVERY_KEY}}, env={})
    text = registry.settings("p").to_toml()
    again = rc.load(tomllib.loads(text), env={})
    assert again.settings("p").values == registry.settings("p").values


def test_shipped_schema_is_the_generated_one() -> None:
    shipped = Path(rc.schema_path()).read_text(encoding="utf-8")
    assert shipped == schema_text()
    assert json.loads(shipped) == rc.json_schema()


def test_schema_is_closed_and_lists_every_key() -> None:
    schema = rc.json_schema()
    pipeline = schema["$defs"]["pipeline"]
    assert schema["additionalProperties"] is False
    assert pipeline["additionalProperties"] is False

    def leaves(node: dict[str, Any], prefix: str = "") -> set[str]:
        out: set[str] = set()
        for name, sub in node["properties"].items():
            if "properties" in sub:
                assert sub["additionalProperties"] is False
                out |= leaves(sub, f"{prefix}{name}.")
            else:
                out.add(prefix + name)
        return out

    assert leaves(pipeline) == set(PIPELINE_KEYS)
    assert leaves(schema["$defs"]["server"]) == set(SERVER_KEYS)
    assert leaves(schema["properties"]["rollout"]) == set(ROLLOUT_KEYS)


def _schema_errors(value: Any, schema: dict[str, Any], root: dict[str, Any], at: str) -> list[str]:
    """A validator for the keywords the generated schema uses (no dependency needed)."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    if "anyOf" in schema:
        options = [_schema_errors(value, s, root, at) for s in schema["anyOf"]]
        return [] if any(not o for o in options) else [f"{at}: no alternative matches"]
    if "const" in schema:
        return [] if value == schema["const"] else [f"{at}: not {schema['const']!r}"]
    kind = schema.get("type")
    types = {"object": dict, "number": (int, float), "integer": int, "boolean": bool, "string": str}
    if kind and (
        not isinstance(value, types[kind])
        or (kind in ("number", "integer") and isinstance(value, bool))
    ):
        return [f"{at}: not a {kind}"]
    errors = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{at}: not one of {schema['enum']}")
    for word, test in (
        ("minimum", lambda v, b: v >= b),
        ("maximum", lambda v, b: v <= b),
        ("exclusiveMinimum", lambda v, b: v > b),
        ("exclusiveMaximum", lambda v, b: v < b),
    ):
        if word in schema and not test(value, schema[word]):
            errors.append(f"{at}: {word} {schema[word]}")
    if kind == "object":
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, sub in value.items():
            if name in props:
                errors += _schema_errors(sub, props[name], root, f"{at}.{name}")
            elif extra is False:
                errors.append(f"{at}.{name}: not allowed")
            elif isinstance(extra, dict):
                errors += _schema_errors(sub, extra, root, f"{at}.{name}")
    return errors


def test_schema_accepts_the_example_and_refuses_mistakes() -> None:
    schema = rc.json_schema()
    example = tomllib.loads((ROOT / "examples/config/resilience.toml").read_text("utf-8"))
    assert _schema_errors(example, schema, schema, "$") == []
    example["pipelines"]["payments"]["retry"]["atempts"] = 3
    example["pipelines"]["search"]["timeout"]["total"] = -1.0
    example["pipelines"]["search"]["timeout"]["attempt"] = True
    assert sorted(_schema_errors(example, schema, schema, "$")) == [
        "$.pipelines.payments.retry.atempts: not allowed",
        "$.pipelines.search.timeout.attempt: no alternative matches",
        "$.pipelines.search.timeout.total: no alternative matches",
    ]


def test_docs_reference_matches_the_schema() -> None:
    """docs/configuration.md has one reference row per key, with the key's default."""
    text = (ROOT / "docs/configuration.md").read_text(encoding="utf-8")
    for heading, keys in (
        ("### `[defaults]` and `[pipelines.NAME]`", PIPELINE_KEYS),
        ("### `[servers.NAME]`", SERVER_KEYS),
        ("### `[rollout]`", ROLLOUT_KEYS),
    ):
        section = text.split(heading, 1)[1].split("\n\n", 2)[1]
        rows = re.findall(r"^\| `([a-z_.]+)` \| ([^|]+) \| ([^|]+) \|", section, re.MULTILINE)
        assert [r[0] for r in rows] == list(keys), heading
        for path, default, accepts in rows:
            key = keys[path]
            expected = "—" if key.default is None else f"`{json.dumps(key.default)}`"
            assert default.strip() == expected, f"{path}: docs say {default}, schema {expected}"
            assert accepts.strip() == key.expects(), path


def test_check_command_prints_the_effective_pipelines(tmp_path: Path) -> None:
    example = ROOT / "examples/config/resilience.toml"
    out = subprocess.run(
        [sys.executable, "-m", "resilient", "check", str(example), "--no-env"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "valid, 3 pipelines" in out
    printed = tomllib.loads(out)
    assert set(printed["pipelines"]) == {"payments", "inventory", "search"}
    registry = rc.load(example, env={})
    again = rc.load(printed, env={})
    for name in registry:
        assert again.settings(name).values == registry.settings(name).values
    assert again.config.servers == registry.config.servers
    assert again.config.rollout == registry.config.rollout


def test_check_command_lists_every_problem_and_fails(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[pipelines.a]\nretry.attempts = 0\nbreaker.widow = 3\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "resilient", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert f"{path}:2: [pipelines.a] retry.attempts" in result.stderr
    assert f"{path}:3: [pipelines.a] breaker.widow: unknown key" in result.stderr


def test_check_command_sees_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text("[pipelines.a]\n", encoding="utf-8")
    env = {"RESILIENT__PIPELINES__A__RETRY__ATTEMPTS": "zero", "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-m", "resilient", "check", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env={**env, "PYTHONPATH": str(ROOT / "src")},
    )
    assert result.returncode == 1
    assert "RESILIENT__PIPELINES__A__RETRY__ATTEMPTS" in result.stderr


def test_main_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, resilient.__main__\n"
        "bad = [m for m in ('resilient.config', 'httpx', 'tomllib', 'opentelemetry.sdk')"
        " if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_httpx_standard_takes_a_configured_pipeline() -> None:
    httpx_mod = pytest.importorskip("resilient.httpx")
    registry = rc.load({"pipelines": {"payments": {}}}, env={})
    transport = httpx_mod.standard(config=registry["payments"])
    assert transport.pipeline is registry["payments"]
    with pytest.raises(ConfigurationError, match=r"standard\.config"):
        httpx_mod.standard(config=registry["payments"], attempts=2)
    with pytest.raises(ConfigurationError, match=r"standard\.config"):
        httpx_mod.standard(config="payments")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"standard\.name"):
        httpx_mod.standard(config=registry["payments"], name="other")


async def test_server_tables_configure_the_middleware() -> None:
    """[servers.NAME] as ResilienceMiddleware options: a real request sees its rate limit."""
    httpx = pytest.importorskip("httpx")
    from resilient.asgi import ResilienceMiddleware

    registry = rc.load(
        {
            "pipelines": {"p": {}},
            "servers": {"public": {"max_concurrent": 50, "rate": 0.5, "burst": 1}},
        },
        env={},
    )
    options = registry.server("public")
    assert options["max_concurrent"] == 50
    assert options["timeout"] is None

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guarded = ResilienceMiddleware(app, **options)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=guarded)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/")).status_code == 200
        refused = await client.get("/")
        assert refused.status_code == 429
        assert refused.headers["ratelimit-policy"] == '"default";q=1;w=2'
    with pytest.raises(rc.InvalidConfigError, match="needs rate"):
        rc.load({"pipelines": {"p": {}}, "servers": {"s": {"burst": 3}}}, env={})


def test_registry_is_a_mapping_of_stable_pipelines() -> None:
    registry = rc.load({"pipelines": {"a": {}, "b": {}}}, env={})
    assert list(registry) == ["a", "b"]
    assert len(registry) == 2
    assert registry["a"] is registry["a"]
    assert isinstance(registry["a"], Pipeline)
    assert registry["a"].name == "a"
    with pytest.raises(KeyError):
        registry["c"]


def test_no_pipeline_is_an_error() -> None:
    with pytest.raises(rc.InvalidConfigError, match="no pipeline defined"):
        rc.load({}, env={})


def test_importing_the_config_package_stays_light() -> None:
    code = (
        "import sys, resilient.config\n"
        "bad = [m for m in ('httpx', 'starlette', 'redis', 'prometheus_client',"
        " 'opentelemetry.sdk') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_a_file_that_is_not_toml_is_one_problem_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[pipelines.a]\nretry.attempts = = 3\n", encoding="utf-8")
    with pytest.raises(rc.InvalidConfigError) as info:
        rc.load(path, env={})
    (problem,) = info.value.problems
    assert "not valid TOML" in problem.message
    assert "line 2" in problem.message
    assert isinstance(info.value, resilient.ResilientError)
    assert isinstance(info.value, ValueError)
    with pytest.raises(rc.InvalidConfigError, match="cannot read"):
        rc.load(tmp_path / "missing.toml", env={})


def _value_strategy(key: Any) -> Any:
    from hypothesis import strategies as st

    if key.choices:
        base = st.sampled_from(key.choices)
    elif key.kind == "boolean":
        base = st.booleans()
    elif key.kind == "integer":
        low = int(key.minimum if key.minimum is not None else (key.above or 0) + 1)
        high = int(key.maximum) if key.maximum is not None else low + 500
        base = st.integers(min_value=low, max_value=high)
    else:
        low = key.minimum if key.minimum is not None else (key.above or 0) + 1e-3
        high = key.maximum if key.maximum is not None else low + 1000.0
        if key.below is not None:
            high = key.below - 1e-3
        # Valid numbers under the one validation rule: 0, or at least 1e-9 in size.
        base = st.floats(min_value=low, max_value=high, allow_nan=False).map(
            lambda v: 0.0 if 0.0 < abs(v) < 1e-9 else v
        )
    return st.one_of(base, st.just(False)) if key.off else base


def test_random_valid_tables_survive_the_printed_round_trip() -> None:
    """Any valid pipeline table loads, prints as TOML and loads back to the same settings."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    tables = st.fixed_dictionaries(
        {},
        optional={path: _value_strategy(key) for path, key in PIPELINE_KEYS.items()},
    )

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(tables)
    def check(flat: dict[str, Any]) -> None:
        table: dict[str, Any] = {}
        for path, value in flat.items():
            table = _with(table, path, value)
        try:
            registry = rc.load({"pipelines": {"p": table}}, env={})
        except rc.InvalidConfigError as exc:
            # What the schema cannot say (rules across keys, a constructor's finer limits) is
            # still reported against the key that holds the value.
            for problem in exc.problems:
                assert problem.table == "pipelines.p", str(problem)
                assert problem.key in PIPELINE_KEYS, str(problem)
            return
        printed = tomllib.loads(registry.settings("p").to_toml())
        again = rc.load(printed, env={})
        assert again.settings("p").values == registry.settings("p").values

    check()


def test_schema_command_prints_the_shipped_schema() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "resilient", "schema"], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == rc.json_schema()


def test_the_rollout_table_and_the_plan_have_the_same_options() -> None:
    from dataclasses import fields

    plan_fields = {f.name: f.default for f in fields(rc.RolloutPlan)}
    table = {k: key.default for k, key in ROLLOUT_KEYS.items() if k != "enabled"}
    assert plan_fields == table


def test_the_error_survives_pickling() -> None:
    import pickle

    with pytest.raises(rc.InvalidConfigError) as info:
        rc.load({"pipelines": {"p": {"retry": {"attempts": 0}}}}, env={})
    again = pickle.loads(pickle.dumps(info.value))
    assert again.problems == info.value.problems
    assert str(again) == str(info.value)


def test_problems_of_a_dict_source_name_its_origin() -> None:
    with pytest.raises(rc.InvalidConfigError) as info:
        rc.load({"pipelines": {"p": {"retry": {"atempts": 2}}}}, env={}, origin="r.yaml")
    (problem,) = info.value.problems
    assert str(problem) == (
        "r.yaml: [pipelines.p] retry.atempts: unknown key (did you mean 'retry.attempts'?)"
    )


@pytest.mark.parametrize("total", [2.0, 30.0, False])
def test_the_attempt_timeout_follows_a_shorter_total_as_in_standard(total: Any) -> None:
    registry = rc.load({"pipelines": {"p": {"timeout": {"total": total}}}}, env={})
    python = resilient.standard("p", total_timeout=total or None)
    assert [effective(p) for p in registry.policy("p").policies] == [
        effective(p) for p in python.policies
    ]


def test_an_attempt_timeout_above_the_total_is_refused() -> None:
    with pytest.raises(rc.InvalidConfigError) as info:
        rc.load(
            {
                "defaults": {"timeout": {"attempt": 5.0}},
                "pipelines": {"p": {"timeout": {"total": 2.0}}},
            },
            env={},
        )
    (problem,) = info.value.problems
    assert (problem.table, problem.key) == ("pipelines.p", "timeout.attempt")
    assert "exceeds timeout.total=2.0" in problem.message

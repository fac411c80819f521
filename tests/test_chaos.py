"""resilient.chaos: seedable, switchable fault injection on the client and the server side."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
from typing import Any

import anyio
import pytest

import resilient
from resilient import ConfigurationError, Pipeline, Timeout, TimeoutExceeded, Verdict
from resilient._classify import DEFAULT_CLASSIFIER
from resilient.chaos import (
    Chaos,
    ChaosCounts,
    ChaosError,
    ChaosMiddleware,
    ChaosPolicy,
    FaultInjected,
    Injection,
    Phase,
    Scenario,
)
from resilient.testing import EventRecorder, FakeClock

# ---------------------------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"error_rate": 1.5}, "Phase.error_rate"),
        ({"error_rate": -0.1}, "Phase.error_rate"),
        ({"throttle_rate": 0.6, "error_rate": 0.6}, "Phase.throttle_rate"),
        ({"latency": -1.0}, "Phase.latency"),
        ({"latency": (2.0, 1.0)}, "Phase.latency"),
        ({"latency": (1.0, 2.0, 3.0)}, "Phase.latency"),
        ({"latency": math.inf}, "Phase.latency"),
        ({"error_status": 600}, "Phase.error_status"),
        ({"retry_after": math.nan}, "Phase.retry_after"),
        ({"duration": 0.0}, "Phase.duration"),
        ({"name": ""}, "Phase.name"),
    ],
)
def test_phase_refuses_invalid_options_naming_the_parameter(
    kwargs: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        Phase(**kwargs)
    assert info.value.parameter == parameter


def test_default_phase_and_controller_inject_nothing() -> None:
    assert not Phase().injects
    chaos = Chaos(enabled=True, seed=1)
    assert all(chaos.draw(float(t)) is None for t in range(100))


def test_scenario_refuses_endless_phase_before_the_last_and_endless_repeat() -> None:
    with pytest.raises(ConfigurationError, match=r"phases\[0\]\.duration"):
        Scenario(Phase("a"), Phase("b", 1.0))
    with pytest.raises(ConfigurationError, match=r"Scenario\.repeat"):
        Scenario(Phase("a", 1.0), Phase("b"), repeat=True)
    with pytest.raises(ConfigurationError, match=r"Scenario\.phases"):
        Scenario()
    with pytest.raises(ConfigurationError, match=r"Chaos\.faults"):
        Chaos("outage")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"Chaos\.seed"):
        Chaos(seed=1.5)  # type: ignore[arg-type]


def test_scenario_phase_at_follows_the_script_and_keeps_the_last_phase() -> None:
    script = Scenario(Phase("a", 1.0), Phase("b", 2.0), Phase("c", 1.0))
    assert [script.phase_at(t).name for t in (-1.0, 0.0, 0.99, 1.0, 2.5, 3.0, 3.5, 100.0)] == [
        "a", "a", "a", "b", "b", "c", "c", "c",
    ]  # fmt: skip
    assert [(s, e, p.name) for s, e, p in script.timeline()] == [
        (0.0, 1.0, "a"),
        (1.0, 3.0, "b"),
        (3.0, 4.0, "c"),
    ]
    assert script.duration == 4.0


def test_repeating_scenario_loops() -> None:
    script = Scenario(Phase("up", 1.0), Phase("down", 1.0), repeat=True)
    assert [script.phase_at(t).name for t in (0.5, 1.5, 2.5, 3.5)] == ["up", "down", "up", "down"]


def test_incident_preset_has_the_five_phases_in_order() -> None:
    script = Scenario.incident(healthy=1, error_burst=2, latency_spike=3, outage=4, recovery=5)
    assert [p.name for p in script.phases] == [
        "healthy", "error burst", "latency spike", "outage", "recovery",
    ]  # fmt: skip
    assert [p.duration for p in script.phases] == [1, 2, 3, 4, 5]
    assert script.phases[3].error_rate == 1.0
    assert not script.phases[0].injects
    assert not script.phases[4].injects


# ---------------------------------------------------------------------------------------------
# the controller


def _fates(chaos: Chaos, n: int, now: float = 0.0) -> list[str | None]:
    out = []
    for _ in range(n):
        injection = chaos.draw(now)
        out.append(None if injection is None else injection.fault or "latency")
    return out


def test_off_by_default_even_with_rates_configured() -> None:
    chaos = Chaos(Phase(error_rate=1.0))
    assert not chaos.enabled
    assert _fates(chaos, 20) == [None] * 20
    assert chaos.counts == ChaosCounts()


def test_same_seed_gives_the_same_faults_and_other_seeds_differ() -> None:
    phase = Phase(error_rate=0.3, throttle_rate=0.2, latency=0.1, latency_rate=0.5)
    first = _fates(Chaos(phase, enabled=True, seed=7), 200)
    again = _fates(Chaos(phase, enabled=True, seed=7), 200)
    other = _fates(Chaos(phase, enabled=True, seed=8), 200)
    assert first == again
    assert first != other


def test_restart_replays_the_same_sequence_and_resets_counts() -> None:
    chaos = Chaos(Phase(error_rate=0.5), enabled=True, seed=3)
    first = _fates(chaos, 50)
    assert chaos.counts.calls == 50
    chaos.restart()
    assert chaos.counts == ChaosCounts()
    assert _fates(chaos, 50) == first


def test_injection_rates_are_honoured_over_many_calls() -> None:
    chaos = Chaos(Phase(error_rate=0.2, throttle_rate=0.1), enabled=True, seed=11)
    fates = _fates(chaos, 5000)
    assert 0.18 < fates.count("error") / 5000 < 0.22
    assert 0.08 < fates.count("throttle") / 5000 < 0.12
    counts = chaos.counts
    assert (counts.calls, counts.errors, counts.throttled) == (
        5000,
        fates.count("error"),
        fates.count("throttle"),
    )


def test_latency_range_is_drawn_inside_its_bounds() -> None:
    chaos = Chaos(Phase(latency=(0.5, 1.5)), enabled=True, seed=5)
    delays = []
    for _ in range(500):
        injection = chaos.draw(0.0)
        assert injection is not None
        delays.append(injection.delay)
    assert min(delays) >= 0.5
    assert max(delays) <= 1.5
    assert max(delays) - min(delays) > 0.9  # spread over the range, not a constant


def test_throttle_injection_carries_429_and_retry_after() -> None:
    chaos = Chaos(Phase(throttle_rate=1.0, retry_after=2.5), enabled=True)
    assert chaos.draw(0.0) == Injection("faults", 0.0, "throttle", 429, 2.5)


def test_script_starts_at_the_first_call_and_follows_time() -> None:
    chaos = Chaos(Scenario(Phase("ok", 10.0), Phase("down", 5.0, error_rate=1.0), Phase("back")))
    chaos.enable()
    assert chaos.draw(100.0) is None  # the script starts here, at t=100
    assert chaos.started_at == 100.0
    assert chaos.phase(109.0).name == "ok"
    down = chaos.draw(110.0)
    assert down is not None
    assert (down.phase, down.fault) == ("down", "error")
    assert chaos.draw(115.0) is None
    assert chaos.phase(115.0).name == "back"


def test_switching_at_run_time() -> None:
    chaos = Chaos(Phase(error_rate=1.0), seed=1)
    chaos.enabled = True
    assert _fates(chaos, 3) == ["error"] * 3
    chaos.disable()
    assert _fates(chaos, 3) == [None] * 3
    chaos.enable()
    chaos.play(Phase("slow", latency=1.0))
    assert _fates(chaos, 2) == ["latency", "latency"]


def test_enabling_and_playing_restart_the_script() -> None:
    chaos = Chaos(Scenario(Phase("a", 1.0), Phase("b")), enabled=True)
    chaos.draw(0.0)
    assert chaos.phase(5.0).name == "b"
    chaos.disable()
    chaos.enable()
    assert chaos.started_at is None
    chaos.draw(5.0)
    assert chaos.phase(5.5).name == "a"
    chaos.play(Scenario(Phase("c", 1.0), Phase("d")))
    assert chaos.started_at is None


def test_chaos_error_is_transient_for_the_default_classifier_and_pickles() -> None:
    exc = ChaosError("boom", fault="throttle", status=429, retry_after=1.0, phase="p")
    assert DEFAULT_CLASSIFIER.classify_exception(exc).verdict is Verdict.TRANSIENT
    assert isinstance(exc, resilient.ResilientError)
    assert isinstance(exc, ConnectionError)
    copy = pickle.loads(pickle.dumps(exc))
    assert (str(copy), copy.fault, copy.status, copy.retry_after, copy.phase) == (
        "boom",
        "throttle",
        429,
        1.0,
        "p",
    )


def test_import_resilient_does_not_import_chaos() -> None:
    code = "import sys, resilient; print('resilient.chaos' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "False"


# ---------------------------------------------------------------------------------------------
# the client-side policy


async def _ok() -> str:
    return "ok"


async def test_policy_passes_through_while_disabled(clock: FakeClock) -> None:
    chaos = Chaos(Phase(error_rate=1.0, latency=5.0))
    pipeline = Pipeline(ChaosPolicy(chaos), clock=clock, telemetry=False)
    assert await pipeline.call(_ok) == "ok"
    assert clock.sleeps == []


async def test_policy_raises_injected_errors_before_the_call(clock: FakeClock) -> None:
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        return "ok"

    chaos = Chaos(Phase("burst", error_rate=1.0, error_status=502), enabled=True)
    pipeline = Pipeline(ChaosPolicy(chaos), clock=clock, telemetry=False)
    with pytest.raises(ChaosError) as info:
        await pipeline.call(fn)
    assert (info.value.status, info.value.phase, info.value.fault) == (502, "burst", "error")
    assert calls == 0


async def test_policy_throttle_raises_with_retry_after(clock: FakeClock) -> None:
    chaos = Chaos(Phase(throttle_rate=1.0, retry_after=3.0), enabled=True)
    pipeline = Pipeline(ChaosPolicy(chaos), clock=clock, telemetry=False)
    with pytest.raises(ChaosError) as info:
        await pipeline.call(_ok)
    assert (info.value.fault, info.value.status, info.value.retry_after) == ("throttle", 429, 3.0)


async def test_policy_adds_latency_through_the_pipeline_clock(clock: FakeClock) -> None:
    chaos = Chaos(Phase(latency=2.0), enabled=True)
    pipeline = Pipeline(ChaosPolicy(chaos), clock=clock, telemetry=False)
    assert await pipeline.call(_ok) == "ok"
    assert clock.sleeps == [2.0]
    assert clock.now() == 2.0


async def test_injected_latency_is_cut_by_the_call_deadline(clock: FakeClock) -> None:
    chaos = Chaos(Phase(latency=5.0), enabled=True)
    pipeline = Pipeline(Timeout(1.0), ChaosPolicy(chaos), clock=clock, telemetry=False)
    with pytest.raises(TimeoutExceeded):
        await pipeline.call(_ok)
    assert clock.now() == pytest.approx(1.0)


async def test_injected_latency_inside_an_attempt_timeout_times_out(clock: FakeClock) -> None:
    chaos = Chaos(Phase(latency=5.0), enabled=True)
    pipeline = Pipeline(Timeout(1.0), ChaosPolicy(chaos), Timeout(0.5), clock=clock)
    with pytest.raises(TimeoutExceeded):
        await pipeline.call(_ok)
    assert clock.now() == pytest.approx(1.0)


async def test_policy_outcome_hook_returns_a_value_instead_of_raising(clock: FakeClock) -> None:
    chaos = Chaos(Phase(error_rate=1.0, error_status=503), enabled=True)
    policy = ChaosPolicy(chaos, outcome=lambda injection, ctx: ("status", injection.status))
    pipeline = Pipeline(policy, clock=clock, telemetry=False)
    assert await pipeline.call(_ok) == ("status", 503)


async def test_policy_custom_exception_factory(clock: FakeClock) -> None:
    chaos = Chaos(Phase(error_rate=1.0), enabled=True)
    policy = ChaosPolicy(chaos, exception=lambda injection: KeyError(injection.phase))
    with pytest.raises(KeyError, match="faults"):
        await Pipeline(policy, clock=clock, telemetry=False).call(_ok)


async def test_policy_emits_fault_injected_events(clock: FakeClock, events: EventRecorder) -> None:
    chaos = Chaos(Phase("slow", latency=1.0, error_rate=1.0), enabled=True)
    pipeline = Pipeline(ChaosPolicy(chaos), clock=clock, listeners=[events], name="p")
    with pytest.raises(ChaosError):
        await pipeline.call(_ok)
    [event] = events.of_type(FaultInjected)
    assert (event.pipeline, event.policy, event.fault, event.delay, event.phase) == (
        "p",
        "chaos",
        "error",
        1.0,
        "slow",
    )


async def test_policy_follows_the_scenario_on_the_pipeline_clock(clock: FakeClock) -> None:
    # Seeded: an unseeded burst of 10 calls at a 50% error rate is all errors (or all
    # successes) once in about 500 runs.
    chaos = Chaos(
        Scenario.incident(healthy=10, error_burst=10, latency_spike=10, outage=10), seed=7
    )
    chaos.enable()
    pipeline = Pipeline(ChaosPolicy(chaos), clock=clock, telemetry=False)
    seen: dict[str, list[str]] = {}
    for _ in range(50):
        phase = chaos.phase(clock.now()).name
        try:
            await pipeline.call(_ok)
            seen.setdefault(phase, []).append("ok")
        except ChaosError:
            seen.setdefault(phase, []).append("error")
        clock.advance(1.0)
    assert set(seen["healthy"]) == {"ok"}
    assert set(seen["error burst"]) == {"ok", "error"}
    assert set(seen["outage"]) == {"error"}
    assert set(seen["recovery"]) == {"ok"}


async def test_cancellation_during_injected_latency_propagates() -> None:
    ran = False

    async def fn() -> None:
        nonlocal ran
        ran = True

    chaos = Chaos(Phase(latency=10.0), enabled=True)
    pipeline = Pipeline(ChaosPolicy(chaos), telemetry=False)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await pipeline.call(fn)
    assert scope.cancelled_caught
    assert not ran


async def test_concurrent_calls_share_one_controller(clock: FakeClock) -> None:
    chaos = Chaos(Phase(error_rate=0.5), enabled=True, seed=2)
    pipeline = Pipeline(ChaosPolicy(chaos), clock=clock, telemetry=False)
    outcomes: list[str] = []

    async def one() -> None:
        try:
            await pipeline.call(_ok)
            outcomes.append("ok")
        except ChaosError:
            outcomes.append("error")

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(one)
    assert len(outcomes) == 100
    assert chaos.counts.calls == 100
    assert outcomes.count("error") == chaos.counts.errors


def test_policy_is_a_decorator_and_validates_its_options() -> None:
    chaos = Chaos(Phase(error_rate=1.0), enabled=True)

    @ChaosPolicy(chaos)
    async def fn() -> str:
        return "ok"

    with pytest.raises(ChaosError):
        anyio.run(fn)
    with pytest.raises(ConfigurationError, match=r"ChaosPolicy\.chaos"):
        ChaosPolicy(Phase())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"ChaosPolicy\.outcome"):
        ChaosPolicy(chaos, outcome=3)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# the ASGI middleware


class _App:
    """A tiny ASGI app that counts requests and answers 200 "ok"."""

    def __init__(self) -> None:
        self.requests = 0
        self.lifespan = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            self.lifespan += 1
            return
        self.requests += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def _request(app: Any, path: str = "/") -> tuple[int, dict[str, str], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": []}
    await app(scope, receive, send)
    start, body = sent[0], sent[1]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, body["body"]


async def test_middleware_passes_through_while_disabled(clock: FakeClock) -> None:
    app = _App()
    middleware = ChaosMiddleware(app, chaos=Chaos(Phase(error_rate=1.0)), clock=clock)
    assert (await _request(middleware))[0] == 200
    assert app.requests == 1


async def test_middleware_answers_injected_errors_without_calling_the_app(
    clock: FakeClock,
) -> None:
    app = _App()
    chaos = Chaos(Phase("outage", error_rate=1.0, error_status=503), enabled=True)
    status, headers, body = await _request(ChaosMiddleware(app, chaos=chaos, clock=clock))
    assert status == 503
    assert headers["x-chaos-fault"] == "error"
    assert b"outage" in body
    assert int(headers["content-length"]) == len(body)
    assert app.requests == 0


async def test_middleware_throttles_with_429_and_retry_after(clock: FakeClock) -> None:
    app = _App()
    chaos = Chaos(Phase(throttle_rate=1.0, retry_after=1.2), enabled=True)
    status, headers, _ = await _request(ChaosMiddleware(app, chaos=chaos, clock=clock))
    assert status == 429
    assert headers["retry-after"] == "2"  # whole seconds, rounded up
    assert app.requests == 0


async def test_middleware_delays_through_its_clock(clock: FakeClock) -> None:
    app = _App()
    chaos = Chaos(Phase(latency=0.75), enabled=True)
    status, _, _ = await _request(ChaosMiddleware(app, chaos=chaos, clock=clock))
    assert status == 200
    assert clock.sleeps == [0.75]
    assert app.requests == 1


async def test_middleware_can_raise_instead_of_answering(clock: FakeClock) -> None:
    chaos = Chaos(Phase(error_rate=1.0), enabled=True)
    middleware = ChaosMiddleware(_App(), chaos=chaos, clock=clock, errors="exception")
    with pytest.raises(ChaosError):
        await _request(middleware)


async def test_middleware_leaves_excluded_paths_and_other_scopes_alone(clock: FakeClock) -> None:
    app = _App()
    chaos = Chaos(Phase(error_rate=1.0), enabled=True)
    middleware = ChaosMiddleware(app, chaos=chaos, clock=clock, exclude_paths=["/metrics"])
    assert (await _request(middleware, "/metrics"))[0] == 200
    await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert (app.requests, app.lifespan) == (1, 1)
    assert chaos.counts.calls == 0


async def test_middleware_plays_the_scenario_on_its_clock(clock: FakeClock) -> None:
    app = _App()
    chaos = Chaos(Scenario(Phase("ok", 5.0), Phase("down", 5.0, error_rate=1.0), Phase("back")))
    chaos.enable()
    middleware = ChaosMiddleware(app, chaos=chaos, clock=clock)
    statuses = []
    for _ in range(12):
        statuses.append((await _request(middleware))[0])
        clock.advance(1.0)
    assert statuses == [200] * 5 + [503] * 5 + [200] * 2


def test_middleware_default_clock_is_the_event_loop_clock_on_trio() -> None:
    """An injected 30 s delay takes 30 s of trio's virtual time (MockClock), no real time."""
    import trio
    import trio.testing

    async def main() -> tuple[int, float]:
        chaos = Chaos(Phase(latency=30.0), enabled=True)
        start = trio.current_time()
        status, _, _ = await _request(ChaosMiddleware(_App(), chaos=chaos))
        return status, trio.current_time() - start

    status, elapsed = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert status == 200
    assert elapsed == pytest.approx(30.0)


async def test_middleware_through_httpx_and_starlette() -> None:
    """Starlette's add_middleware and an httpx client see the injected responses."""
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/", hello)])
    chaos = Chaos(Phase(throttle_rate=1.0, retry_after=2.0))
    app.add_middleware(ChaosMiddleware, chaos=chaos)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://upstream") as client:
        assert (await client.get("/")).text == "hello"
        chaos.enable()
        response = await client.get("/")
        assert (response.status_code, response.headers["retry-after"]) == (429, "2")
        chaos.disable()
        assert (await client.get("/")).status_code == 200


def test_middleware_validates_its_options() -> None:
    with pytest.raises(ConfigurationError, match=r"ChaosMiddleware\.errors"):
        ChaosMiddleware(_App(), chaos=Chaos(), errors="crash")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"ChaosMiddleware\.chaos"):
        ChaosMiddleware(_App(), chaos=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"ChaosMiddleware\.clock"):
        ChaosMiddleware(_App(), chaos=Chaos(), clock=object())  # type: ignore[arg-type]

"""Fault injection: make a dependency misbehave on purpose, reproducibly.

``resilient.chaos`` injects the faults a real dependency produces — error responses or
exceptions, added latency, ``429 Too Many Requests`` with ``Retry-After``, a full outage —
at configured rates, optionally following a script of phases over time (healthy, error burst,
latency spike, outage, recovery). It has two ends that share one controller:

- ``ChaosPolicy``: a client-side ``Policy``; put it last in a ``Pipeline`` and each attempt
  may fail, be delayed or be throttled before it reaches the real call.
- ``ChaosMiddleware``: a server-side, pure ASGI middleware; an upstream service answers
  with injected errors, throttles and delays.

**Off by default.** A ``Chaos`` controller injects nothing until it is enabled
(``Chaos(..., enabled=True)`` or ``chaos.enabled = True`` at run time), and every injection
rate defaults to zero. Chaos code that reaches production with a configuration but without
the explicit switch does nothing.

**Reproducible.** With ``seed=``, the n-th call the controller decides for gets the same
faults in every run (each decision draws exactly three numbers from the controller's own
generator, whatever the phase), and ``restart()`` replays the same sequence.

This module is an integration: ``import resilient`` does not import it.
"""

from __future__ import annotations

import bisect
import math
import random as _random
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple, final

from . import _validate as check
from ._clock import SYSTEM_CLOCK, Clock
from ._context import Context
from ._events import Event
from ._exceptions import ConfigurationError, ResilientError
from ._pipeline import Call, PolicyDecorator

__all__ = [
    "Chaos",
    "ChaosCounts",
    "ChaosError",
    "ChaosMiddleware",
    "ChaosPolicy",
    "FaultInjected",
    "Injection",
    "Phase",
    "Scenario",
]

Fault = Literal["error", "throttle"]

# Minimal ASGI types, so that this module needs no web framework.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ChaosError(ResilientError, ConnectionError):
    """An injected failure of the dependency.

    It is a ``ConnectionError``, so the default classifier treats it as TRANSIENT (retried,
    counted by breakers), like the network failure it stands for.

    Attributes:
        fault: ``"error"`` or ``"throttle"``.
        status: the HTTP status the fault stands for (503 by default, 429 for a throttle).
        retry_after: the server hint in seconds for a throttle, else ``None``.
        phase: the name of the scenario phase that injected it.
    """

    def __init__(
        self,
        message: str,
        *,
        fault: Fault = "error",
        status: int = 503,
        retry_after: float | None = None,
        phase: str = "",
    ) -> None:
        super().__init__(message)
        self.fault = fault
        self.status = status
        self.retry_after = retry_after
        self.phase = phase

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_chaos_error, (str(self), self.__dict__))


def _rebuild_chaos_error(message: str, state: dict[str, Any]) -> ChaosError:
    exc = ChaosError(message)
    exc.__dict__.update(state)
    return exc


def _latency(value: object) -> tuple[float, float]:
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ConfigurationError("Phase.latency", value, "expected seconds or (low, high)")
        low = check.non_negative("Phase.latency", value[0])
        high = check.non_negative("Phase.latency", value[1])
        if high < low:
            raise ConfigurationError("Phase.latency", value, "low must be <= high")
        return (low, high)
    seconds = check.non_negative("Phase.latency", value)
    return (seconds, seconds)


@final
@dataclass(frozen=True, slots=True)
class Phase:
    """What to inject, and for how long, in one phase of a scenario.

    Each call draws independently: with probability ``latency_rate`` it is delayed by
    ``latency`` seconds (a fixed value, or uniform in a ``(low, high)`` range); then with
    probability ``error_rate`` it fails, else with probability ``throttle_rate`` it is
    throttled (429 with ``Retry-After``), else it reaches the real call. Every rate defaults
    to zero: ``Phase()`` injects nothing. ``latency`` alone delays every call
    (``latency_rate`` defaults to 1).

    Args:
        name: the phase's name (shown in errors, events, headers and charts).
        duration: seconds the phase lasts in a ``Scenario`` (``math.inf``: until the end).
        error_rate: fraction of calls that fail, in [0, 1] (1 = full outage).
        error_status: the HTTP status of an injected error (server side; default 503).
        throttle_rate: fraction of calls answered 429 ``Too Many Requests``, in [0, 1].
        retry_after: the ``Retry-After`` hint of a throttle, in seconds (default 1).
        latency: added delay in seconds, or a ``(low, high)`` range drawn uniformly.
        latency_rate: fraction of calls delayed, in [0, 1] (default 1: every call, when
            ``latency`` is set).

    Raises:
        ConfigurationError: a rate outside [0, 1], ``error_rate + throttle_rate > 1``, a
            negative or non-finite delay, a status outside 100-599, or an empty name.
    """

    name: str = "faults"
    duration: float = math.inf
    _: KW_ONLY
    error_rate: float = 0.0
    error_status: int = 503
    throttle_rate: float = 0.0
    retry_after: float = 1.0
    latency: float | tuple[float, float] = 0.0
    latency_rate: float = 1.0
    _latency_range: tuple[float, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        check.name("Phase.name", self.name)
        set_(self, "duration", check.positive("Phase.duration", self.duration, allow_inf=True))
        error_rate = check.fraction("Phase.error_rate", self.error_rate, allow_zero=True)
        throttle_rate = check.fraction("Phase.throttle_rate", self.throttle_rate, allow_zero=True)
        if error_rate + throttle_rate > 1.0:
            raise ConfigurationError(
                "Phase.throttle_rate", throttle_rate, "error_rate + throttle_rate must be <= 1"
            )
        set_(self, "error_rate", error_rate)
        set_(self, "throttle_rate", throttle_rate)
        check.integer("Phase.error_status", self.error_status, minimum=100, maximum=599)
        set_(self, "retry_after", check.non_negative("Phase.retry_after", self.retry_after))
        set_(
            self,
            "latency_rate",
            check.fraction("Phase.latency_rate", self.latency_rate, allow_zero=True),
        )
        set_(self, "_latency_range", _latency(self.latency))

    @property
    def injects(self) -> bool:
        """Whether this phase can inject anything at all."""
        return (
            self.error_rate > 0.0
            or self.throttle_rate > 0.0
            or (self.latency_rate > 0.0 and self._latency_range[1] > 0.0)
        )


@final
class Scenario:
    """A script of phases played over time, from the first call after a (re)start.

    After the last phase ends the last phase stays in force, unless ``repeat`` is set: then
    the script starts over.

    Args:
        *phases: the phases in order; only the last may last forever (``math.inf``).
        repeat: loop the script (its total duration must then be finite).

    Raises:
        ConfigurationError: no phase, something that is not a ``Phase``, an endless phase
            before the last, or ``repeat`` with an endless script.
    """

    __slots__ = ("_ends", "_phases", "_repeat", "_total")

    def __init__(self, *phases: Phase, repeat: bool = False) -> None:
        if not phases:
            raise ConfigurationError("Scenario.phases", phases, "give at least one Phase")
        for index, phase in enumerate(phases):
            if not isinstance(phase, Phase):
                raise ConfigurationError(f"Scenario.phases[{index}]", phase, "expected a Phase")
            if math.isinf(phase.duration) and index != len(phases) - 1:
                raise ConfigurationError(
                    f"Scenario.phases[{index}].duration",
                    phase.duration,
                    "only the last phase may be endless",
                )
        ends: list[float] = []
        total = 0.0
        for phase in phases:
            total += phase.duration
            ends.append(total)
        if repeat and math.isinf(total):
            raise ConfigurationError("Scenario.repeat", repeat, "a repeating script must be finite")
        self._phases = tuple(phases)
        self._ends = tuple(ends)
        self._total = total
        self._repeat = bool(repeat)

    @classmethod
    def incident(
        cls,
        *,
        healthy: float = 5.0,
        error_burst: float = 5.0,
        latency_spike: float = 5.0,
        outage: float = 5.0,
        recovery: float = math.inf,
        burst_error_rate: float = 0.5,
        spike_latency: float | tuple[float, float] = 1.0,
        spike_rate: float = 0.5,
        status: int = 503,
    ) -> Scenario:
        """The classic incident: healthy, error burst, latency spike, full outage, recovery.

        Args:
            healthy: seconds of normal service first.
            error_burst: seconds during which ``burst_error_rate`` of calls fail.
            latency_spike: seconds during which ``spike_rate`` of calls are delayed by
                ``spike_latency``.
            outage: seconds during which every call fails.
            recovery: seconds of normal service at the end (default: forever).
            burst_error_rate: fraction of calls failing during the burst.
            spike_latency: the delay of slow calls during the spike (seconds or a range).
            spike_rate: fraction of calls delayed during the spike.
            status: HTTP status of the injected errors.

        Raises:
            ConfigurationError: an invalid duration, rate or status.
        """
        return cls(
            Phase("healthy", healthy),
            Phase("error burst", error_burst, error_rate=burst_error_rate, error_status=status),
            Phase("latency spike", latency_spike, latency=spike_latency, latency_rate=spike_rate),
            Phase("outage", outage, error_rate=1.0, error_status=status),
            Phase("recovery", recovery),
        )

    @property
    def phases(self) -> tuple[Phase, ...]:
        """The phases, in order."""
        return self._phases

    @property
    def duration(self) -> float:
        """Total length of one pass through the script (``math.inf`` if it ends endless)."""
        return self._total

    @property
    def repeat(self) -> bool:
        """Whether the script loops."""
        return self._repeat

    def timeline(self) -> list[tuple[float, float, Phase]]:
        """``(start, end, phase)`` for each phase, in seconds from the script's start."""
        start = 0.0
        out = []
        for end, phase in zip(self._ends, self._phases, strict=True):
            out.append((start, end, phase))
            start = end
        return out

    def phase_at(self, elapsed: float) -> Phase:
        """The phase in force ``elapsed`` seconds after the script started."""
        if elapsed <= 0.0:
            return self._phases[0]
        if self._repeat:
            elapsed %= self._total
        index = bisect.bisect_right(self._ends, elapsed)
        if index >= len(self._phases):
            return self._phases[-1]
        return self._phases[index]

    def __repr__(self) -> str:
        names = ", ".join(repr(p.name) for p in self._phases)
        return f"Scenario({names}{', repeat=True' if self._repeat else ''})"


class Injection(NamedTuple):
    """What one call gets: a delay, then possibly a fault.

    Attributes:
        phase: the name of the phase in force.
        delay: seconds to wait before answering (0 for none).
        fault: ``"error"``, ``"throttle"`` or ``None`` (after the delay, the call proceeds).
        status: the HTTP status of the fault (the phase's ``error_status``, or 429).
        retry_after: the ``Retry-After`` hint of a throttle in seconds, else ``None``.
    """

    phase: str
    delay: float
    fault: Fault | None
    status: int
    retry_after: float | None


@final
@dataclass(frozen=True, slots=True)
class ChaosCounts:
    """How many calls a controller decided for, and what it injected (a snapshot).

    Attributes:
        calls: decisions made while enabled.
        delayed: calls given added latency.
        errors: calls failed with an error.
        throttled: calls answered with a throttle (429).
    """

    calls: int = 0
    delayed: int = 0
    errors: int = 0
    throttled: int = 0


@final
class Chaos:
    """The switchable, seedable controller shared by ``ChaosPolicy`` and ``ChaosMiddleware``.

    It injects nothing until enabled. The script's clock starts at the first call decided
    after it was enabled, restarted (``restart()``) or given a new script (``play()``), so
    the incident begins when traffic does. Time comes from the caller (``draw(now)``): the
    policy passes its pipeline's clock, the middleware its own; share one controller only
    between users of the same clock.

    Args:
        faults: a ``Phase`` (constant faults) or a ``Scenario`` (phases over time); default
            ``Phase()``, which injects nothing.
        enabled: whether faults are injected now (default ``False``: off).
        seed: seed of the controller's own random generator; the same seed gives the same
            faults for the same sequence of calls. ``None`` seeds from the OS.

    Raises:
        ConfigurationError: ``faults`` is neither a ``Phase`` nor a ``Scenario``, or a bad seed.
    """

    __slots__ = (
        "_calls",
        "_delayed",
        "_enabled",
        "_errors",
        "_random",
        "_scenario",
        "_seed",
        "_started",
        "_throttled",
    )

    def __init__(
        self,
        faults: Phase | Scenario | None = None,
        *,
        enabled: bool = False,
        seed: int | None = None,
    ) -> None:
        self._scenario = _as_scenario("Chaos.faults", faults)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigurationError("Chaos.seed", seed, "expected an integer or None")
        self._seed = seed
        self._random = _random.Random(seed)
        self._enabled = bool(enabled)
        self._started: float | None = None
        self._calls = self._delayed = self._errors = self._throttled = 0

    @property
    def enabled(self) -> bool:
        """Whether faults are injected. Switching it on restarts the script."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        if value and not self._enabled:
            self._started = None
        self._enabled = bool(value)

    def enable(self) -> None:
        """Start injecting (the script starts at the next call)."""
        self.enabled = True

    def disable(self) -> None:
        """Stop injecting: every call passes through untouched."""
        self.enabled = False

    @property
    def scenario(self) -> Scenario:
        """The script being played (a single ``Phase`` is a one-phase script)."""
        return self._scenario

    @property
    def seed(self) -> int | None:
        """The configured seed."""
        return self._seed

    @property
    def started_at(self) -> float | None:
        """The clock time the script started at, or ``None`` before the first call."""
        return self._started

    def play(self, faults: Phase | Scenario) -> None:
        """Replace the script at run time; it starts at the next call.

        Raises:
            ConfigurationError: ``faults`` is neither a ``Phase`` nor a ``Scenario``.
        """
        self._scenario = _as_scenario("Chaos.play.faults", faults)
        self._started = None

    def restart(self, *, seed: int | None = None) -> None:
        """Replay from the start: the script restarts at the next call and the generator is
        reseeded (with ``seed``, else the configured seed), so the faults repeat exactly.
        Counters are reset too.
        """
        self._started = None
        self._random.seed(self._seed if seed is None else seed)
        self._calls = self._delayed = self._errors = self._throttled = 0

    def phase(self, now: float) -> Phase:
        """The phase in force at clock time ``now`` (the first phase before the start)."""
        started = self._started
        return self._scenario.phase_at(0.0 if started is None else now - started)

    @property
    def counts(self) -> ChaosCounts:
        """A snapshot of the counters since construction or the last ``restart()``."""
        return ChaosCounts(self._calls, self._delayed, self._errors, self._throttled)

    def draw(self, now: float) -> Injection | None:
        """Decide the fate of one call at clock time ``now``.

        Returns ``None`` when the call proceeds untouched (always, while disabled). Each
        decision draws exactly three numbers from the generator, so faults depend only on
        the seed and the call's position in the sequence.
        """
        if not self._enabled:
            return None
        started = self._started
        if started is None:
            started = self._started = now
        phase = self._scenario.phase_at(now - started)
        rand = self._random.random
        u_latency, u_fault, u_amount = rand(), rand(), rand()
        self._calls += 1
        delay = 0.0
        if u_latency < phase.latency_rate:
            low, high = phase._latency_range
            delay = low + (high - low) * u_amount
            if delay > 0.0:
                self._delayed += 1
        if u_fault < phase.error_rate:
            self._errors += 1
            return Injection(phase.name, delay, "error", phase.error_status, None)
        if u_fault < phase.error_rate + phase.throttle_rate:
            self._throttled += 1
            return Injection(phase.name, delay, "throttle", 429, phase.retry_after)
        if delay > 0.0:
            return Injection(phase.name, delay, None, 200, None)
        return None

    def __repr__(self) -> str:
        state = "enabled" if self._enabled else "disabled"
        return f"Chaos({self._scenario!r}, {state}, seed={self._seed!r})"


def _as_scenario(parameter: str, faults: object) -> Scenario:
    if faults is None:
        return Scenario(Phase())
    if isinstance(faults, Phase):
        return Scenario(faults)
    if isinstance(faults, Scenario):
        return faults
    raise ConfigurationError(parameter, faults, "expected a Phase or a Scenario")


@dataclass(slots=True, kw_only=True)
class FaultInjected(Event):
    """``ChaosPolicy`` injected a fault into a call.

    ``fault`` is ``"error"``, ``"throttle"`` or ``"latency"`` (a delay only); ``delay`` is
    the injected latency in seconds (0 for none); ``phase`` the scenario phase.
    """

    fault: str
    delay: float
    phase: str


def _default_exception(injection: Injection) -> BaseException:
    if injection.fault == "throttle":
        message = f"chaos: injected throttle (429, retry after {injection.retry_after:g}s)"
    else:
        message = f"chaos: injected error ({injection.status})"
    return ChaosError(
        f"{message} in phase {injection.phase!r}",
        fault=injection.fault or "error",
        status=injection.status,
        retry_after=injection.retry_after,
        phase=injection.phase,
    )


@final
class ChaosPolicy(PolicyDecorator):
    """A client-side policy that injects the controller's faults into calls.

    Put it last in a pipeline (inside the attempt timeout) so every attempt draws its own
    fate: a delay (through the pipeline's clock, so virtual in tests), then a fault raised
    as an exception (``ChaosError`` by default: TRANSIENT for the default classifier) or
    returned as a value by ``outcome``. A call that draws no fault runs normally. While the
    controller is disabled the policy costs one attribute check.

    An injected delay honours the call's deadline: when it would outlast ``ctx.deadline``
    the policy waits until the deadline and raises the deadline's ``TimeoutExceeded``, as a
    slow dependency cut by a timeout would.

    Args:
        chaos: the controller (rates, script, switch, seed).
        exception: builds the exception to raise for a fault from its ``Injection``
            (default: a ``ChaosError`` carrying status and ``retry_after``).
        outcome: when given, faults return ``outcome(injection, ctx)`` instead of raising
            (for example an HTTP response with the injected status).
        name: the policy's name in events.

    Raises:
        ConfigurationError: ``chaos`` is not a ``Chaos``, or a hook is not callable.
    """

    __slots__ = ("_chaos", "_exception", "_outcome", "name")

    deadline_aware: ClassVar[bool] = True

    def __init__(
        self,
        chaos: Chaos,
        *,
        exception: Callable[[Injection], BaseException] | None = None,
        outcome: Callable[[Injection, Context], Any] | None = None,
        name: str = "chaos",
    ) -> None:
        if not isinstance(chaos, Chaos):
            raise ConfigurationError("ChaosPolicy.chaos", chaos, "expected a resilient.chaos.Chaos")
        self._chaos = chaos
        self._exception = check.callable_(
            "ChaosPolicy.exception", exception if exception is not None else _default_exception
        )
        self._outcome = check.optional(check.callable_, "ChaosPolicy.outcome", outcome)
        self.name = check.name("ChaosPolicy.name", name)

    @property
    def chaos(self) -> Chaos:
        """The controller."""
        return self._chaos

    async def execute(self, call: Call, ctx: Context, /) -> Any:
        """Inject this call's faults (if any) and otherwise run ``call``."""
        chaos = self._chaos
        if not chaos._enabled:
            return await call(ctx)
        clock = ctx.clock
        injection = chaos.draw(clock.now())
        if injection is None:
            return await call(ctx)
        if ctx.listening:
            ctx.emit(
                FaultInjected(
                    pipeline=ctx.pipeline,
                    operation=ctx.operation,
                    policy=self.name,
                    at=clock.now(),
                    fault=injection.fault or "latency",
                    delay=injection.delay,
                    phase=injection.phase,
                )
            )
        delay = injection.delay
        if delay > 0.0:
            deadline = ctx.deadline
            if deadline != math.inf:
                left = deadline - clock.now()
                if left <= delay:
                    await clock.sleep(left)
                    raise ctx.deadline_exceeded()
            await clock.sleep(delay)
        if injection.fault is None:
            return await call(ctx)
        if self._outcome is not None:
            return self._outcome(injection, ctx)
        raise self._exception(injection)

    def __repr__(self) -> str:
        return f"ChaosPolicy({self._chaos!r}, name={self.name!r})"


@final
class ChaosMiddleware:
    """A pure ASGI middleware that makes a service misbehave as its ``Chaos`` says.

    For each HTTP request (other scopes, excluded paths and every request while the
    controller is disabled pass through untouched) it waits the injected delay on its
    clock, then answers an injected error with the phase's status, or a throttle with
    ``429`` and a ``Retry-After`` header (whole seconds, rounded up), without calling the
    application. Injected responses carry an ``x-chaos-fault`` header naming the fault.
    With ``errors="exception"`` an injected error raises ``ChaosError`` into the server
    instead, as a crashing application would (servers answer 500 and log it).

    Works with Starlette's ``app.add_middleware(ChaosMiddleware, chaos=chaos)``.

    Args:
        app: the ASGI application to wrap.
        chaos: the controller.
        clock: where time comes from (default: the running event loop's clock).
        errors: ``"response"`` (default) or ``"exception"``.
        exclude_paths: request paths never touched (health checks, ``/metrics``).

    Raises:
        ConfigurationError: an invalid option.
    """

    __slots__ = ("_app", "_chaos", "_clock", "_errors", "_exclude")

    def __init__(
        self,
        app: ASGIApp,
        *,
        chaos: Chaos,
        clock: Clock | None = None,
        errors: Literal["response", "exception"] = "response",
        exclude_paths: Iterable[str] = (),
    ) -> None:
        if not isinstance(chaos, Chaos):
            raise ConfigurationError(
                "ChaosMiddleware.chaos", chaos, "expected a resilient.chaos.Chaos"
            )
        self._app = check.callable_("ChaosMiddleware.app", app)
        self._chaos = chaos
        if clock is not None and not (
            callable(getattr(clock, "now", None)) and callable(getattr(clock, "sleep", None))
        ):
            raise ConfigurationError("ChaosMiddleware.clock", clock, "expected a Clock")
        self._clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self._errors = check.choice("ChaosMiddleware.errors", errors, ("response", "exception"))
        self._exclude = frozenset(exclude_paths)

    @property
    def chaos(self) -> Chaos:
        """The controller."""
        return self._chaos

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        chaos = self._chaos
        if not chaos._enabled or scope["type"] != "http" or scope.get("path") in self._exclude:
            await self._app(scope, receive, send)
            return
        clock = self._clock
        injection = chaos.draw(clock.now())
        if injection is None:
            await self._app(scope, receive, send)
            return
        if injection.delay > 0.0:
            await clock.sleep(injection.delay)
        if injection.fault is None:
            await self._app(scope, receive, send)
            return
        if injection.fault == "error" and self._errors == "exception":
            raise _default_exception(injection)
        await _respond(send, injection)

    def __repr__(self) -> str:
        return f"ChaosMiddleware({self._app!r}, chaos={self._chaos!r})"


async def _respond(send: Send, injection: Injection) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"x-chaos-fault", (injection.fault or "error").encode()),
    ]
    if injection.fault == "throttle":
        hint = injection.retry_after or 0.0
        headers.append((b"retry-after", str(math.ceil(hint)).encode()))
        body = f"chaos: throttled in phase {injection.phase!r}\n".encode()
    else:
        body = f"chaos: injected {injection.status} in phase {injection.phase!r}\n".encode()
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": injection.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

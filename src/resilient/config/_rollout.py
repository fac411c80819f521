"""Phased rollout: a change reaches a growing share of callers and is judged against the rest.

Callers are split by a stable hash of their key, so a caller stays in its group for the whole
rollout (and on every instance of a fleet: the hash is the same everywhere). The share grows
geometrically, one phase per ``bake`` seconds; within each phase the new group is compared
with the control group on failure rate, breaker openings, latency and load (attempts per
call), and the change is rolled back as soon as it is worse by more than the plan allows.

Nothing runs in the background: the rollout advances when outcomes are recorded or when
``poll()`` is called, on the clock it was given (``FakeClock`` in tests).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import math
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, final

from opentelemetry import metrics as otel_metrics

from resilient import ConfigurationError
from resilient import _validate as check
from resilient._events import report_listener_error
from resilient.events import Event, Listener
from resilient.extend import Clock

__all__ = [
    "Rollout",
    "RolloutChanged",
    "RolloutPlan",
    "RolloutStatus",
    "VersionSwitch",
    "bucket",
    "caller",
]

logger = logging.getLogger("resilient.config")

_caller: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "resilient_config_caller", default=None
)

RUNNING: Final = "running"
COMPLETED: Final = "completed"
ROLLED_BACK: Final = "rolled_back"
_GOLDEN = 0.6180339887498949  # spreads unkeyed calls evenly over [0, 1)


# -- telemetry -----------------------------------------------------------------------------

SHARE_METRIC: Final = "resilient.config.rollout.share"
PHASE_METRIC: Final = "resilient.config.rollout.phase"
DECISIONS_METRIC: Final = "resilient.config.rollout.decisions"


@final
class _Instruments:
    """One meter provider's rollout instruments, reporting every live rollout bound to it."""

    def __init__(self, provider: otel_metrics.MeterProvider) -> None:
        meter = provider.get_meter("resilient")
        self.rollouts: weakref.WeakSet[Rollout] = weakref.WeakSet()
        self.decisions = meter.create_counter(
            DECISIONS_METRIC,
            unit="{decision}",
            description="Rollout decisions: started, advanced, completed, rolled_back, abandoned.",
        )
        meter.create_observable_gauge(
            SHARE_METRIC,
            callbacks=[self._shares],
            unit="1",
            description="Share of callers in the new group of each running rollout.",
        )
        meter.create_observable_gauge(
            PHASE_METRIC,
            callbacks=[self._phases],
            unit="{phase}",
            description="Current phase of each running rollout (from 1).",
        )

    def _observe(self, field: str) -> list[otel_metrics.Observation]:
        return [
            otel_metrics.Observation(getattr(rollout, field), {"resilient.pipeline": rollout.name})
            for rollout in list(self.rollouts)
            if rollout.state == RUNNING
        ]

    def _shares(self, _options: otel_metrics.CallbackOptions) -> list[otel_metrics.Observation]:
        return self._observe("share")

    def _phases(self, _options: otel_metrics.CallbackOptions) -> list[otel_metrics.Observation]:
        return self._observe("phase")


_instruments: dict[int, tuple[otel_metrics.MeterProvider, _Instruments]] = {}


def _instruments_for(provider: otel_metrics.MeterProvider | None) -> _Instruments | None:
    if provider is None:
        provider = otel_metrics.get_meter_provider()
    entry = _instruments.get(id(provider))
    if entry is None or entry[0] is not provider:
        try:
            entry = (provider, _Instruments(provider))
        except Exception:  # telemetry observes and never steers
            report_listener_error(provider)
            return None
        _instruments[id(provider)] = entry
    return entry[1]


@contextlib.contextmanager
def caller(key: str) -> Iterator[None]:
    """Calls made inside the block are bucketed by ``key`` (a tenant, a user, a client id).

    Without it a configured pipeline buckets a call by its ``ctx.key`` (the httpx host), and
    a call with no key at all by a call counter (then a share of calls, not of callers).
    """
    token = _caller.set(key)
    try:
        yield
    finally:
        _caller.reset(token)


def current_caller() -> str | None:
    """The key set by the innermost ``caller()`` block, if any."""
    return _caller.get()


def bucket(key: str, salt: str = "") -> float:
    """A caller's position in [0, 1): the same on every process for the same key and salt."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutPlan:
    """How a change is rolled out (the ``[rollout]`` table).

    Args:
        first_share: share of callers in the first phase, in (0, 1].
        growth: factor the share grows by at each phase (>= 1.1; 2.0 doubles).
        bake: seconds each phase runs before it may grow.
        min_calls: calls each group needs in a phase before rates are compared; a phase does
            not grow before the new group had them.
        max_failure_rate_increase: how much higher (absolute) the new group's failure rate
            may be.
        max_latency_increase: relative increase of mean latency tolerated.
        min_latency_increase: seconds of mean latency increase always tolerated: on calls
            taking a millisecond, scheduling noise alone would exceed a relative margin.
        max_load_increase: relative increase of attempts per call tolerated.
        max_extra_breaker_openings: breaker openings the new group may have beyond the
            control group's in a phase.

    Raises:
        ConfigurationError: an option out of range.
    """

    first_share: float = 0.01
    growth: float = 2.0
    bake: float = 300.0
    min_calls: int = 100
    max_failure_rate_increase: float = 0.02
    max_latency_increase: float = 0.25
    min_latency_increase: float = 0.005
    max_load_increase: float = 0.25
    max_extra_breaker_openings: int = 0

    def __post_init__(self) -> None:
        check.fraction("RolloutPlan.first_share", self.first_share)
        check.number("RolloutPlan.growth", self.growth, minimum=1.1)
        check.positive("RolloutPlan.bake", self.bake)
        check.integer("RolloutPlan.min_calls", self.min_calls)
        check.fraction(
            "RolloutPlan.max_failure_rate_increase",
            self.max_failure_rate_increase,
            allow_zero=True,
        )
        check.non_negative("RolloutPlan.max_latency_increase", self.max_latency_increase)
        check.non_negative("RolloutPlan.min_latency_increase", self.min_latency_increase)
        check.non_negative("RolloutPlan.max_load_increase", self.max_load_increase)
        check.integer(
            "RolloutPlan.max_extra_breaker_openings", self.max_extra_breaker_openings, minimum=0
        )

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> RolloutPlan:
        """A plan from the ``[rollout]`` table's values (``enabled`` ignored)."""
        return cls(**{k: v for k, v in values.items() if k != "enabled"})  # type: ignore[arg-type]

    def shares(self) -> tuple[float, ...]:
        """The share of each phase: ``first_share * growth**n``, the last one 1.0."""
        out = []
        share = self.first_share
        while share < 1.0:
            out.append(share)
            share *= self.growth
        out.append(1.0)
        return tuple(out)


@dataclass(slots=True)
class _Group:
    calls: int = 0
    failures: int = 0
    attempts: int = 0
    attempts_sq: int = 0
    latency: float = 0.0
    latency_sq: float = 0.0
    openings: int = 0

    def failure_rate(self) -> tuple[float, float]:
        """(mean, variance of one call) of failing."""
        p = self.failures / self.calls if self.calls else 0.0
        return p, p * (1.0 - p)

    def mean_latency(self) -> tuple[float, float]:
        return _moments(self.latency, self.latency_sq, self.calls)

    def load(self) -> tuple[float, float]:
        return _moments(self.attempts, self.attempts_sq, self.calls)


def _moments(total: float, squares: float, count: int) -> tuple[float, float]:
    if not count:
        return 0.0, 0.0
    mean = total / count
    return mean, max(0.0, squares / count - mean * mean)


# Standard errors by which a difference must exceed its margin to roll a change back: before
# the bake time is over (judged on every call, so a stricter bar keeps noise from deciding),
# and after it (one-sided 95 %). Beyond the margin without that evidence, the phase goes on.
_EARLY_Z: Final = 3.0
_FINAL_Z: Final = 1.645


def _excess(new: tuple[float, float], control: tuple[float, float], n: int, m: int) -> float:
    """Standard errors of the difference of two group means (infinite when both are exact)."""
    se = math.sqrt(new[1] / n + control[1] / m)
    return math.inf if se == 0.0 else 1.0 / se


@final
@dataclass(frozen=True, slots=True)
class RolloutStatus:
    """Where a rollout stands.

    Attributes:
        name: what is rolled out (a pipeline's name, a serializer's).
        state: ``"running"``, ``"completed"`` or ``"rolled_back"``.
        phase: the phase number, from 1 (``len(shares)`` once completed).
        share: the share of callers in the new group now (0.0 once rolled back).
        reason: why it was rolled back, else ``""``.
        new_calls: calls the new group made in this phase.
        control_calls: calls the control group made in this phase.
        total_new_calls: calls the new group made since the rollout started.
        total_calls: calls made since the rollout started.
    """

    name: str
    state: str
    phase: int
    share: float
    reason: str
    new_calls: int
    control_calls: int
    total_new_calls: int
    total_calls: int


@dataclass(slots=True, kw_only=True)
class RolloutChanged(Event):
    """A rollout started, grew, completed or was rolled back.

    ``pipeline`` is the rolled-out name, ``operation`` is ``"rollout"``, ``policy`` is ``""``.
    """

    decision: str
    phase: int
    share: float
    reason: str


class _Decisions(Protocol):
    def __call__(self, rollout: Rollout, decision: str, /) -> None: ...


@final
class Rollout:
    """Expose a change to a growing share of callers; roll it back when it does worse.

    ``choose(key)`` says whether a caller is in the new group; outcomes are reported with
    ``record()`` (a configured pipeline does both itself). The share starts at the plan's
    ``first_share`` and grows by ``growth`` after each ``bake`` seconds, provided each group
    had ``min_calls`` calls in the phase and the new group was not worse. Compared per phase:
    breaker openings (at once), failure rate (absolute margin), attempts per call and mean
    latency (relative margins). A rate rolls the change back when it exceeds its margin by
    three standard errors of the difference before the bake is over, by 1.645 after it; a
    phase grows once its bake is over and no rate exceeds its margin (until then it goes on
    gathering calls). Once rolled back the share is 0 and stays there.

    Args:
        name: what is rolled out (events and telemetry name it).
        plan: the phases and margins.
        clock: the time source (phases are timed on it).
        salt: mixed into the caller hash so that different rollouts pick different callers
            first (default: ``name``).
        listeners: receive a ``RolloutChanged`` at every decision.
        on_decision: called with ``(rollout, decision)`` after each decision.
        meter_provider: where the ``resilient.config.rollout.*`` metrics go (default: the
            global OpenTelemetry meter provider).

    Raises:
        ConfigurationError: an invalid option.
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_control",
        "_counter",
        "_instruments",
        "_listeners",
        "_new",
        "_on_decision",
        "_phase",
        "_reason",
        "_salt",
        "_share",
        "_shares",
        "_started",
        "_state",
        "_total_calls",
        "_total_new",
        "name",
        "plan",
    )

    def __init__(
        self,
        name: str,
        plan: RolloutPlan | None = None,
        *,
        clock: Clock,
        salt: str | None = None,
        listeners: tuple[Listener, ...] = (),
        on_decision: _Decisions | None = None,
        meter_provider: otel_metrics.MeterProvider | None = None,
    ) -> None:
        self.name = check.name("Rollout.name", name)
        if plan is None:
            plan = RolloutPlan()
        elif not isinstance(plan, RolloutPlan):
            raise ConfigurationError("Rollout.plan", plan, "expected a RolloutPlan")
        self.plan = plan
        if not (callable(getattr(clock, "now", None))):
            raise ConfigurationError("Rollout.clock", clock, "expected a Clock")
        self._clock = clock
        self._salt = name if salt is None else salt
        for listener in listeners:
            check.callable_("Rollout.listeners", listener)
        self._listeners = tuple(listeners)
        self._on_decision = on_decision
        self._shares = plan.shares()
        self._phase = 1
        self._share = self._shares[0]
        self._state = RUNNING if self._share < 1.0 else COMPLETED
        self._reason = ""
        self._started: float | None = None  # the first poll starts the clock
        self._new = _Group()
        self._control = _Group()
        self._counter = 0
        self._total_calls = 0
        self._total_new = 0
        self._instruments = _instruments_for(meter_provider)
        if self._instruments is not None:
            self._instruments.rollouts.add(self)
        self._decide("started" if self._state == RUNNING else COMPLETED)

    # -- who is in -------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``"running"``, ``"completed"`` or ``"rolled_back"``."""
        return self._state

    @property
    def share(self) -> float:
        """The share of callers in the new group now."""
        return self._share

    @property
    def phase(self) -> int:
        """The current phase, from 1."""
        return self._phase

    def choose(self, key: str | None = None) -> bool:
        """Whether a call by ``key`` belongs to the new group (``False`` once rolled back).

        ``None`` uses the key of an enclosing ``caller()`` block, else a call counter (an even
        spread of calls). A key's group only ever moves from control to new as the share grows.
        """
        share = self._share
        if share >= 1.0:
            return True
        if share <= 0.0:
            return False
        if key is None:
            key = _caller.get()
        if key is None:
            self._counter += 1
            return (self._counter * _GOLDEN) % 1.0 < share
        return bucket(key, self._salt) < share

    # -- what happened ---------------------------------------------------------------------

    def record(
        self,
        new: bool,
        *,
        failed: bool,
        latency: float = 0.0,
        attempts: int = 1,
    ) -> None:
        """Report one call's outcome for its group, then judge the phase.

        Args:
            new: the call ran in the new group (what ``choose()`` said).
            failed: the call failed in a way that counts (not a caller's mistake).
            latency: the call's duration in seconds.
            attempts: the attempts it made on the dependency (its load).
        """
        if self._state != RUNNING:
            return
        group = self._new if new else self._control
        group.calls += 1
        group.failures += failed
        group.latency += latency
        group.latency_sq += latency * latency
        group.attempts += attempts
        group.attempts_sq += attempts * attempts
        self._total_calls += 1
        self._total_new += new
        self.poll()

    def record_opening(self, new: bool) -> None:
        """Report a circuit breaker opening in one group."""
        if self._state != RUNNING:
            return
        (self._new if new else self._control).openings += 1
        self.poll()

    def poll(self) -> str:
        """Judge the phase now: roll back, grow, complete or wait. Returns the state."""
        if self._state != RUNNING:
            return self._state
        plan = self.plan
        new, control = self._new, self._control
        extra = new.openings - control.openings
        if extra > plan.max_extra_breaker_openings:
            return self._roll_back(
                f"breaker openings {new.openings} vs {control.openings} in the control group"
            )
        now = self._clock.now()
        if self._started is None:
            self._started = now
        if new.calls < plan.min_calls or control.calls < plan.min_calls:
            return self._state
        if now - self._started < plan.bake:
            worse = self._worse(new, control, _EARLY_Z)
            return self._roll_back(worse) if worse else self._state
        worse = self._worse(new, control, _FINAL_Z)
        if worse:
            return self._roll_back(worse)
        if not self._worse(new, control, 0.0):
            self._advance()
        # else: beyond the margin but not clearly: the phase bakes on, gathering evidence.
        return self._state

    def _worse(self, new: _Group, control: _Group, z: float) -> str:
        """Why the new group is worse by more than the plan allows (``""``: it is not).

        With ``z > 0`` the excess over the margin must also be ``z`` standard errors of the
        difference (early in a phase); with ``z == 0`` the margin alone decides.
        """
        plan = self.plan
        n, m = new.calls, control.calls

        def beyond(a: tuple[float, float], b: tuple[float, float], allowed: float) -> bool:
            excess = a[0] - b[0] - allowed
            return excess > 0.0 and excess * _excess(a, b, n, m) >= z

        fr_new, fr_control = new.failure_rate(), control.failure_rate()
        if beyond(fr_new, fr_control, plan.max_failure_rate_increase):
            return f"failure rate {fr_new[0]:.3g} vs {fr_control[0]:.3g} in the control group"
        load_new, load_control = new.load(), control.load()
        if beyond(load_new, load_control, load_control[0] * plan.max_load_increase):
            return (
                f"attempts per call {load_new[0]:.3g} vs {load_control[0]:.3g} in the control group"
            )
        lat_new, lat_control = new.mean_latency(), control.mean_latency()
        allowed = max(lat_control[0] * plan.max_latency_increase, plan.min_latency_increase)
        if beyond(lat_new, lat_control, allowed):
            return f"mean latency {lat_new[0]:.3g}s vs {lat_control[0]:.3g}s in the control group"
        return ""

    def _advance(self) -> None:
        self._phase += 1
        self._share = self._shares[self._phase - 1]
        self._started = self._clock.now()
        self._new = _Group()
        self._control = _Group()
        if self._share >= 1.0:
            self._state = COMPLETED
            self._decide(COMPLETED)
        else:
            self._decide("advanced")

    def _roll_back(self, reason: str) -> str:
        self._state = ROLLED_BACK
        self._share = 0.0
        self._reason = reason
        self._decide(ROLLED_BACK)
        return self._state

    def abandon(self) -> None:
        """Stop the rollout (a newer change replaces it): the share drops to 0."""
        if self._state == RUNNING:
            self._state = ROLLED_BACK
            self._share = 0.0
            self._reason = "replaced by a newer change"
            self._decide("abandoned")

    def status(self) -> RolloutStatus:
        """The rollout's state, phase, share and counts."""
        return RolloutStatus(
            name=self.name,
            state=self._state,
            phase=self._phase,
            share=self._share,
            reason=self._reason,
            new_calls=self._new.calls,
            control_calls=self._control.calls,
            total_new_calls=self._total_new,
            total_calls=self._total_calls,
        )

    def _decide(self, decision: str) -> None:
        event = RolloutChanged(
            pipeline=self.name,
            operation="rollout",
            policy="",
            at=self._clock.now(),
            decision=decision,
            phase=self._phase,
            share=self._share,
            reason=self._reason,
        )
        level = logging.WARNING if decision == ROLLED_BACK else logging.INFO
        logger.log(
            level,
            "rollout of %r %s: phase %d, share %.4g%s",
            self.name,
            decision,
            self._phase,
            self._share,
            f" ({self._reason})" if self._reason else "",
        )
        if self._instruments is not None:
            try:
                self._instruments.decisions.add(
                    1, {"resilient.pipeline": self.name, "resilient.decision": decision}
                )
            except Exception:
                report_listener_error(self._instruments)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                report_listener_error(listener)
        if self._on_decision is not None:
            try:
                self._on_decision(self, decision)
            except Exception:
                report_listener_error(self._on_decision)

    def __repr__(self) -> str:
        return (
            f"Rollout({self.name!r}, state={self._state!r}, phase={self._phase}, "
            f"share={self._share:g})"
        )


class _Serializer(Protocol):
    @property
    def write_version(self) -> int: ...
    @property
    def read_versions(self) -> tuple[int, ...]: ...
    @property
    def writable_versions(self) -> tuple[int, ...]: ...
    @property
    def name(self) -> str: ...
    def dumps(self, obj: Any, *, version: int | None = None) -> bytes: ...


@final
class VersionSwitch:
    """Roll out a serializer's new write version like a configuration change.

    Phase two of the serde playbook (start writing the new version) as a phased rollout:
    callers in the new group write ``version``, everyone else the serializer's current
    ``write_version``. Readers must already read ``version`` (phase one done), which is
    checked here. Report what happened to written data (a consumer failing to read it, a
    write failing) with ``record()``; a worse new group rolls the switch back, after which
    nobody writes the new version.

    Args:
        serializer: a ``resilient.serde.VersionedSerializer``.
        version: the version to start writing.
        plan: the phases and margins.
        clock: the time source.
        listeners: receive a ``RolloutChanged`` at every decision.

    Raises:
        ConfigurationError: ``version`` is not readable, or not newer than what is written.
    """

    __slots__ = ("_old", "_serializer", "rollout", "version")

    def __init__(
        self,
        serializer: _Serializer,
        version: int,
        plan: RolloutPlan | None = None,
        *,
        clock: Clock,
        listeners: tuple[Listener, ...] = (),
    ) -> None:
        if not callable(getattr(serializer, "dumps", None)):
            raise ConfigurationError(
                "VersionSwitch.serializer", serializer, "expected a VersionedSerializer"
            )
        if version not in serializer.read_versions:
            raise ConfigurationError(
                "VersionSwitch.version",
                version,
                f"not read by {serializer.name!r} (reads {serializer.read_versions}): ship "
                "phase one (read the new version everywhere) first",
            )
        if version not in serializer.writable_versions:
            raise ConfigurationError(
                "VersionSwitch.version",
                version,
                f"not writable by {serializer.name!r}: declare writable=(old, new) on the "
                "serializer",
            )
        if version == serializer.write_version:
            raise ConfigurationError(
                "VersionSwitch.version", version, "is already the version written"
            )
        self._serializer = serializer
        self._old = serializer.write_version
        self.version = version
        self.rollout = Rollout(
            f"{serializer.name}:v{version}",
            plan,
            clock=clock,
            listeners=listeners,
        )

    def version_for(self, key: str | None = None) -> int:
        """The version a caller writes (see ``Rollout.choose`` for ``key``)."""
        return self.version if self.rollout.choose(key) else self._old

    def dumps(self, obj: Any, *, key: str | None = None) -> bytes:
        """``serializer.dumps(obj)`` in the version ``key``'s group writes.

        Raises:
            Whatever ``dumps`` raises.
        """
        return self._serializer.dumps(obj, version=self.version_for(key))

    def record(self, version: int, *, failed: bool, latency: float = 0.0) -> None:
        """Report the outcome of handling data written in ``version`` (what was written)."""
        self.rollout.record(version == self.version, failed=failed, latency=latency)

    def __repr__(self) -> str:
        name = self._serializer.name
        return f"VersionSwitch({name!r}, {self._old} -> {self.version}, {self.rollout!r})"

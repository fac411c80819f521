"""The registry: named pipelines with stable handles, reloaded atomically, rolled out in phases.

``registry["payments"]`` is a real ``resilient.Pipeline`` whose single policy is a
``ConfiguredPolicy``. That policy holds the *active* configuration, an immutable record of
policies; each call reads it once, when the call starts, and runs under it to the end. A
reload builds and validates everything first, then swaps the records of every changed
pipeline in one synchronous step (no ``await`` in between), so a call sees the old
configuration or the new one, never a mix. Policies whose settings did not change are kept
as they are (with their state); changed ones are rebuilt, and a breaker's or a limiter's
state is carried over when the policy can take new settings (see ``reconfigure``).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, final

import anyio

from resilient import ConfigurationError, Pipeline, RateLimiter, Verdict
from resilient._events import report_listener_error
from resilient.events import CircuitStateChanged, Event, Listener
from resilient.extend import Call, ClassifierLike, Clock, Context, Policy, SystemClock, compose

from ._build import COMPONENTS, component_keys, component_options
from ._load import ENV_PREFIX, Change, Config, InvalidConfigError, PipelineSettings, parse, read
from ._rollout import COMPLETED, ROLLED_BACK, Rollout, RolloutPlan, RolloutStatus, current_caller

__all__ = ["ConfigReloaded", "ConfiguredPolicy", "Registry", "ReloadReport", "load"]

logger = logging.getLogger("resilient.config")

_MAX_CHAINS: Final = 8


# The attempts of the call running in this context during a rollout (its load on the
# dependency). A context variable, so a chain composed once counts for whichever call runs it,
# hedged attempts in child tasks included.
_ATTEMPTS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "resilient_config_attempts", default=None
)


def _counting(inner: Call) -> Call:
    """``inner``, counting each attempt that reaches it for the running rollout call."""

    def counted(ctx: Context) -> Awaitable[Any]:
        box = _ATTEMPTS.get()
        if box is not None:
            box[0] += 1
        return inner(ctx)

    return counted


@final
class _Active:
    """One pipeline's configuration as calls see it: settings and policies, never mutated."""

    __slots__ = ("_chains", "components", "generation", "policies", "settings")

    def __init__(
        self, settings: PipelineSettings, components: dict[str, Policy], generation: int
    ) -> None:
        self.settings = settings
        self.components = components
        self.policies = tuple(components[c] for c in COMPONENTS if c in components)
        self.generation = generation
        self._chains: dict[tuple[Call, tuple[Policy, ...]], Call] = {}

    def chain(self, inner: Call, after: tuple[Policy, ...] = ()) -> Call:
        """These policies around ``inner``, composed once per configuration and chain."""
        # A pipeline composes its steps once, so `inner` is the same object on every call and
        # this is one dict hit; a caller passing a fresh `inner` each time composes each time.
        key = (inner, after)
        chain = self._chains.get(key)
        if chain is None:
            chain = compose(self.policies, inner, after)
            if len(self._chains) < _MAX_CHAINS:
                self._chains[key] = chain
        return chain


@final
class _Trial:
    """A rollout in progress: the candidate configuration and the rollout judging it."""

    __slots__ = ("candidate", "rollout")

    def __init__(self, candidate: _Active, rollout: Rollout) -> None:
        self.candidate = candidate
        self.rollout = rollout


@dataclass(slots=True)
class _Work:
    """What a reload will do, built before anything is applied."""

    changes: tuple[Change, ...] = ()
    swaps: dict[str, _Active] = field(default_factory=dict)
    trials: dict[str, _Active] = field(default_factory=dict)
    cancels: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    reset: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    quiet: set[str] = field(default_factory=set)


@final
class ConfiguredPolicy:
    """The single policy of a configured pipeline: runs the active configuration's policies.

    Hand it (inside its ``Pipeline``) to anything that takes a pipeline; a reload changes what
    it runs between calls, never during one. While a rollout is in progress, each call runs the
    new configuration or the old one depending on its caller's group.
    """

    __slots__ = ("_active", "_trial", "name")

    def __init__(self, name: str, active: _Active) -> None:
        self.name = name
        self._active = active
        self._trial: _Trial | None = None

    @property
    def settings(self) -> PipelineSettings:
        """The settings calls outside a rollout's new group run under."""
        return self._active.settings

    @property
    def policies(self) -> tuple[Policy, ...]:
        """The active policies, outermost first."""
        return self._active.policies

    @property
    def generation(self) -> int:
        """Bumped each time a reload changes this pipeline."""
        return self._active.generation

    @property
    def rollout(self) -> Rollout | None:
        """The rollout in progress for this pipeline, if any."""
        trial = self._trial
        return None if trial is None else trial.rollout

    @property
    def candidate(self) -> PipelineSettings | None:
        """The settings being rolled out, if any."""
        trial = self._trial
        return None if trial is None else trial.candidate.settings

    @property
    def candidate_policies(self) -> tuple[Policy, ...]:
        """The policies of the configuration being rolled out (empty when none is)."""
        trial = self._trial
        return () if trial is None else trial.candidate.policies

    async def execute(self, call: Call, ctx: Context, /) -> Any:
        """Run ``call`` under the configuration active when the call starts."""
        trial = self._trial
        if trial is None:
            return await self._active.chain(call)(ctx)
        return await self._trial_run(trial, self._active, _counting(call), (), ctx)

    def compose(self, inner: Call, after: tuple[Policy, ...], /) -> Call:
        """The pipeline step: each call picks the active configuration's chain (built once)."""

        seen: _Active | None = None
        chain: Call = inner
        counted = _counting(inner)  # during a rollout: the chains count attempts

        async def step(ctx: Context) -> Any:
            nonlocal seen, chain
            active = self._active
            if self._trial is None:
                if active is not seen:  # the first call after a reload
                    seen, chain = active, active.chain(inner, after)
                return await chain(ctx)
            return await self._trial_run(self._trial, active, counted, after, ctx)

        return step

    async def _trial_run(
        self,
        trial: _Trial,
        control: _Active,
        call: Call,
        after: tuple[Policy, ...],
        ctx: Context,
    ) -> Any:
        rollout = trial.rollout
        key = current_caller()
        new = rollout.choose(key if key is not None else ctx.key)
        chain = (trial.candidate if new else control).chain(call, after)
        attempts = [0]
        token = _ATTEMPTS.set(attempts)
        clock = ctx.clock
        started = clock.now()
        try:
            result = await chain(ctx)
        except Exception as exc:
            verdict = ctx.classifier.classify_exception(exc).verdict
            rollout.record(
                new,
                failed=verdict is not Verdict.CLIENT_ERROR,
                latency=clock.now() - started,
                attempts=attempts[0],
            )
            raise
        finally:
            _ATTEMPTS.reset(token)
        verdict = ctx.classifier.classify_result(result).verdict
        rollout.record(
            new, failed=verdict.is_failure, latency=clock.now() - started, attempts=attempts[0]
        )
        return result

    def __repr__(self) -> str:
        inner = ", ".join(type(p).__name__ for p in self._active.policies)
        return f"ConfiguredPolicy({self.name!r}: {inner}, generation={self._active.generation})"


@dataclass(slots=True, kw_only=True)
class ConfigReloaded(Event):
    """A reload was applied or refused.

    ``pipeline`` is ``""`` (a reload concerns the registry), ``operation`` ``"reload"``,
    ``policy`` ``""``.

    Attributes:
        source: the configuration's source.
        applied: whether anything changed (``False``: refused, or nothing to do).
        changes: every setting that differs.
        kept_state: ``"pipeline.component"`` of each changed policy whose state was carried
            over.
        reset: ``"pipeline.component"`` of each changed policy that starts with fresh state.
        phased: pipelines whose change started a rollout instead of applying at once.
        restart_required: ``servers.NAME`` tables that changed (middleware reads them once).
        problems: why the reload was refused (each with its location).
    """

    source: str
    applied: bool
    changes: tuple[Change, ...] = ()
    kept_state: tuple[str, ...] = ()
    reset: tuple[str, ...] = ()
    phased: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What a reload did (the same facts as its ``ConfigReloaded`` event).

    Attributes:
        changes: every setting that differs from the previous configuration.
        kept_state: changed policies whose state was carried over (``"payments.breaker"``).
        reset: changed policies that start with fresh state.
        phased: pipelines whose change is being rolled out in phases.
        restart_required: server tables that changed.
        skipped: pipelines whose change was rolled back earlier and is not retried.
    """

    changes: tuple[Change, ...] = ()
    kept_state: tuple[str, ...] = ()
    reset: tuple[str, ...] = ()
    phased: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()
    skipped: tuple[str, ...] = field(default=())

    @property
    def changed(self) -> bool:
        """Whether the reload changed anything."""
        return bool(self.changes)


def _carry_state(old: Policy, options: dict[str, Any], now: float | None) -> Policy | None:
    """A policy with new ``options`` that keeps ``old``'s state, or ``None``.

    Uses the public ``reconfigure(**options)`` of ``CircuitBreaker`` (window and state) and
    ``RateLimiter`` (tokens, given the time ``now``); other policies are rebuilt fresh.
    """
    reconfigure = getattr(old, "reconfigure", None)
    if reconfigure is None:
        return None
    if isinstance(old, RateLimiter):
        options = {**options, "now": now}
    return reconfigure(**options)  # type: ignore[no-any-return]


@final
class Registry(Mapping[str, Pipeline]):
    """Named pipelines built from a configuration; see ``resilient.config.load``.

    ``registry[name]`` returns the same ``Pipeline`` object for the registry's lifetime, so
    it can be handed to an httpx transport or a decorator once and still follow reloads.
    """

    def __init__(
        self,
        config: Config,
        *,
        path: str | None,
        env: Mapping[str, str] | None,
        env_prefix: str,
        clock: Clock | None,
        random: Callable[[], float] | None,
        classify: Any,
        listeners: Iterable[Listener],
        telemetry: Any,
        meter_provider: Any = None,
    ) -> None:
        self._meter_provider = meter_provider
        self._path = path
        self._env = env
        self._env_prefix = env_prefix
        self._given_clock = clock  # the pipelines' (None: the default)
        self._clock: Clock = SystemClock() if clock is None else clock
        self._random = random
        self._classify = classify
        self._listeners = tuple(listeners)
        self._telemetry = telemetry
        self._config = config
        self._policies: dict[str, ConfiguredPolicy] = {}
        self._pipelines: dict[str, Pipeline] = {}
        self._retired: dict[str, PipelineSettings] = {}
        self._stamp = self._file_stamp()
        self._generation = 0
        for name, settings in config.pipelines.items():
            self._add(name, settings)

    # -- the mapping -------------------------------------------------------------------------

    def __getitem__(self, name: str) -> Pipeline:
        return self._pipelines[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._pipelines)

    def __len__(self) -> int:
        return len(self._pipelines)

    @property
    def config(self) -> Config:
        """The configuration last applied (a rollout in progress is not part of it yet)."""
        return self._config

    @property
    def path(self) -> str | None:
        """The file the registry reloads from, if any."""
        return self._path

    def policy(self, name: str) -> ConfiguredPolicy:
        """The ``ConfiguredPolicy`` inside ``registry[name]`` (its settings, its rollout)."""
        return self._policies[name]

    def settings(self, name: str) -> PipelineSettings:
        """The effective settings of pipeline ``name`` (outside a rollout's new group)."""
        return self._policies[name].settings

    def server(self, name: str) -> dict[str, object]:
        """``ResilienceMiddleware`` keyword arguments from ``[servers.NAME]``.

        Use ``app.add_middleware(ResilienceMiddleware, **registry.server("public"))``.
        """
        return dict(self._config.servers[name])

    def rollouts(self) -> dict[str, RolloutStatus]:
        """The status of each rollout in progress, by pipeline name."""
        return {
            name: rollout.status()
            for name, policy in self._policies.items()
            if (rollout := policy.rollout) is not None
        }

    # -- building ----------------------------------------------------------------------------

    def _breaker_listener(self, name: str, holder: list[Policy]) -> Listener:
        def listener(event: Event) -> None:
            if not isinstance(event, CircuitStateChanged) or event.state != "open":
                return
            policy = self._policies.get(name)
            trial = None if policy is None else policy._trial
            if trial is not None and holder:
                new = trial.candidate.components.get("breaker") is holder[0]
                trial.rollout.record_opening(new)

        return listener

    def _build(
        self, name: str, settings: PipelineSettings, old: _Active | None, carry: bool
    ) -> tuple[dict[str, Policy], list[str], list[str]]:
        """Components for ``settings``: unchanged ones reused, changed ones rebuilt.

        Raises:
            ConfigurationError: a constructor refused an option (validation prevents it).
        """
        components: dict[str, Policy] = {}
        kept: list[str] = []
        reset: list[str] = []
        for component in COMPONENTS:
            previous = None if old is None else old.components.get(component)
            if (
                old is not None
                and previous is not None
                and component_keys(old.settings, component) == component_keys(settings, component)
            ):
                components[component] = previous
                continue
            holder: list[Policy] = []
            listeners = (self._breaker_listener(name, holder),) if component == "breaker" else ()
            budget: Any = True
            if component == "hedge":
                budget = getattr(components.get("retry"), "budget", None)
            elif old is not None and component == "retry" and previous is not None:
                # The budget is a token bucket of its own: kept when its keys did not change.
                old_budget = getattr(previous, "budget", None)
                same = component_keys(old.settings, "retry.budget") == component_keys(
                    settings, "retry.budget"
                )
                if same and old_budget is not None:
                    budget = old_budget
            options = component_options(settings, component, listeners=listeners, budget=budget)
            if options is None:
                continue
            constructor, args, kwargs = options
            policy: Policy | None = None
            if previous is not None and carry and type(previous) is constructor:
                policy = _carry_state(previous, kwargs, self._now())
                if policy is not None:
                    kept.append(f"{name}.{component}")
            if policy is None:
                policy = constructor(*args, **kwargs)
                if previous is not None:
                    reset.append(f"{name}.{component}")
            holder.append(policy)
            components[component] = policy
        return components, kept, reset

    def _add(self, name: str, settings: PipelineSettings) -> None:
        components, _, _ = self._build(name, settings, None, carry=False)
        policy = ConfiguredPolicy(name, _Active(settings, components, self._generation))
        self._policies[name] = policy
        self._pipelines[name] = Pipeline(
            policy,
            name=name,
            clock=self._given_clock,
            random=self._random,
            classify=self._classify,
            listeners=self._listeners,
            telemetry=self._telemetry,
        )

    # -- reloading ---------------------------------------------------------------------------

    def _file_stamp(self) -> tuple[int, int] | None:
        if self._path is None:
            return None
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _emit(self, event: ConfigReloaded) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                report_listener_error(listener)

    def _now(self) -> float:
        try:
            return self._clock.now()
        except Exception:  # a clock bound to a loop that is not running
            return 0.0

    def reload(
        self,
        source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        *,
        phased: bool | None = None,
    ) -> ReloadReport:
        """Validate a new configuration completely, then apply it atomically.

        Unchanged policies are kept with their state; changed breakers and limiters carry
        their state over when they support it; the rest is rebuilt. With ``phased`` (default:
        the new file's ``[rollout] enabled``), each changed pipeline is rolled out in phases
        instead (see ``Rollout``). A pipeline whose change was rolled back is not retried
        until its settings change again.

        Args:
            source: a file or a dict (default: the file the registry was loaded from).
            phased: roll changes out in phases (``None``: as the configuration says).

        Raises:
            InvalidConfigError: the new configuration is invalid; nothing was changed.
        """
        if source is None:
            if self._path is None:
                raise ConfigurationError(
                    "Registry.reload.source", None, "the registry was not loaded from a file"
                )
            source = self._path
        stamp = self._file_stamp()
        try:
            if isinstance(source, Mapping):
                config = parse(source, env=self._env, env_prefix=self._env_prefix)
            else:
                config = read(source, env=self._env, env_prefix=self._env_prefix)
        except InvalidConfigError as exc:
            logger.warning("configuration reload refused, nothing changed:\n%s", exc)
            self._emit(
                ConfigReloaded(
                    pipeline="",
                    operation="reload",
                    policy="",
                    at=self._now(),
                    source=str(source) if not isinstance(source, Mapping) else "<dict>",
                    applied=False,
                    problems=tuple(str(p) for p in exc.problems),
                )
            )
            raise
        if not isinstance(source, Mapping):
            self._stamp = stamp
        return self._apply(config, phased)

    def _apply(self, config: Config, phased: bool | None) -> ReloadReport:
        if phased is None:
            phased = bool(config.rollout["enabled"])
        plan = RolloutPlan.from_mapping(config.rollout)
        self._generation += 1
        work = self._plan(config, phased and plan.first_share < 1.0)
        self._commit(config, work, plan)
        changes = tuple(
            c for c in work.changes if c.scope.removeprefix("pipelines.") not in work.quiet
        )
        report = ReloadReport(
            changes=changes,
            kept_state=tuple(work.kept),
            reset=tuple(work.reset),
            phased=tuple(work.trials),
            restart_required=tuple(
                sorted({c.scope for c in changes if c.scope.startswith("servers.")})
            ),
            skipped=tuple(work.skipped),
        )
        self._announce(config.source, report)
        return report

    def _plan(self, config: Config, phased: bool) -> _Work:
        """Build every record a reload needs, touching nothing that calls can see."""
        work = _Work(changes=self._config.diff(config))
        for name, settings in config.pipelines.items():
            policy = self._policies.get(name)
            if policy is None:
                continue
            current, trial = policy._active, policy._trial
            if settings == current.settings:
                if trial is not None:
                    work.cancels.append(name)  # the file went back to what runs
            elif trial is not None and settings == trial.candidate.settings:
                work.quiet.add(name)  # the same change is already rolling out
            elif phased and self._retired.get(name) == settings:
                work.skipped.append(name)
                work.quiet.add(name)
            elif phased:
                components, _, _ = self._build(name, settings, None, carry=False)
                work.trials[name] = _Active(settings, components, self._generation)
            else:
                components, kept, reset = self._build(name, settings, current, carry=True)
                work.kept += kept
                work.reset += reset
                work.swaps[name] = _Active(settings, components, self._generation)
        return work

    def _commit(self, config: Config, work: _Work, plan: RolloutPlan) -> None:
        """Apply ``work`` in one synchronous step: a call starting after it sees only new
        records, a call already running keeps the record it started with."""
        for name in [*work.cancels, *work.swaps, *work.trials]:
            policy = self._policies[name]
            if policy._trial is not None:
                policy._trial.rollout.abandon()
                policy._trial = None
        for name, active in work.swaps.items():
            self._policies[name]._active = active
        for name, candidate in work.trials.items():
            rollout = self._new_rollout(name, candidate.settings, plan)  # emits "started"
            self._policies[name]._trial = _Trial(candidate, rollout)
        for name, settings in config.pipelines.items():
            if name not in self._policies:
                self._add(name, settings)
        for name in [name for name in self._policies if name not in config.pipelines]:
            # A removed pipeline's handle keeps running its last configuration.
            del self._pipelines[name]
            del self._policies[name]
        self._config = Config(
            config.source,
            {name: self._policies[name].settings for name in config.pipelines},
            config.servers,
            config.rollout,
        )

    def _announce(self, source: str, report: ReloadReport) -> None:
        if report.changes:
            logger.info(
                "configuration reloaded from %s: %d change(s)%s\n%s",
                source,
                len(report.changes),
                f", phased: {', '.join(report.phased)}" if report.phased else "",
                "\n".join(f"  {c}" for c in report.changes),
            )
        self._emit(
            ConfigReloaded(
                pipeline="",
                operation="reload",
                policy="",
                at=self._now(),
                source=source,
                applied=bool(report.changes),
                changes=report.changes,
                kept_state=report.kept_state,
                reset=report.reset,
                phased=report.phased,
                restart_required=report.restart_required,
            )
        )

    def _new_rollout(self, name: str, settings: PipelineSettings, plan: RolloutPlan) -> Rollout:
        return Rollout(
            name,
            plan,
            clock=self._clock,
            # The same change picks the same callers on every instance of a fleet.
            salt=f"{name}:{_stable(settings)}",
            listeners=self._listeners,
            on_decision=functools.partial(self._decided, name),
            meter_provider=self._meter_provider,
        )

    def _decided(self, name: str, rollout: Rollout, decision: str) -> None:
        policy = self._policies.get(name)
        if policy is None or policy._trial is None or policy._trial.rollout is not rollout:
            return
        trial = policy._trial
        if decision == COMPLETED:
            policy._active = trial.candidate
            policy._trial = None
            self._config = Config(
                self._config.source,
                {**self._config.pipelines, name: trial.candidate.settings},
                self._config.servers,
                self._config.rollout,
            )
        elif decision == ROLLED_BACK:
            policy._trial = None
            self._retired[name] = trial.candidate.settings

    def poll_file(self) -> ReloadReport | None:
        """Reload if the file changed since it was last read (by modification time and size).

        Returns:
            The reload's report, or ``None`` when the file did not change or the new content
            was refused (the refusal is logged and reported as an event; nothing changed).
        """
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return None
        try:
            return self.reload()
        except InvalidConfigError:
            self._stamp = stamp  # do not re-report the same broken file every poll
            return None

    async def watch(self, interval: float = 1.0) -> None:
        """Poll the file every ``interval`` seconds (on the registry's clock) and reload it.

        Runs until cancelled: ``task_group.start_soon(registry.watch)``. A refused file is
        logged and reported; the running configuration stays.

        Raises:
            ConfigurationError: the registry was not loaded from a file, or ``interval`` <= 0.
        """
        if self._path is None:
            raise ConfigurationError("Registry.watch", None, "the registry has no file")
        if not interval > 0:
            raise ConfigurationError("Registry.watch.interval", interval, "must be > 0")
        while True:
            await self._clock.sleep(interval)
            # stat() is a short blocking call; a thread hop would cost more than it saves.
            self.poll_file()
            await anyio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"Registry({list(self._pipelines)!r}, source={self._config.source!r})"


def _stable(settings: PipelineSettings) -> str:
    import hashlib

    text = repr(sorted(settings.values.items(), key=lambda kv: kv[0]))
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def load(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    env_prefix: str = ENV_PREFIX,
    clock: Clock | None = None,
    random: Callable[[], float] | None = None,
    classify: ClassifierLike | Callable[..., Any] | Iterable[Any] | None = None,
    listeners: Iterable[Listener] = (),
    telemetry: Any = True,
    meter_provider: Any = None,
    origin: str = "<dict>",
) -> Registry:
    """Named pipelines from a TOML file or a dict: ``load("resilience.toml")["payments"]``.

    Args:
        source: a TOML file's path, or a dict of the same shape (from YAML, JSON, ...).
        env: environment for overrides (default ``os.environ``; ``{}`` ignores it).
        env_prefix: prefix of override variables (``RESILIENT__PIPELINES__PAYMENTS__...``).
        clock: every pipeline's clock (and the rollouts').
        random: every pipeline's random source.
        classify: every pipeline's classifier.
        listeners: receive every call event of every pipeline, plus ``ConfigReloaded`` and
            ``RolloutChanged``.
        telemetry: as for ``Pipeline``.
        meter_provider: where rollout metrics go (default: the global meter provider).
        origin: how problems name a dict source (the YAML or JSON file it came from).

    Raises:
        InvalidConfigError: every problem in the configuration, with its location.
    """
    if isinstance(source, Mapping):
        config = parse(source, source=origin, env=env, env_prefix=env_prefix)
        path = None
    else:
        path = os.fspath(source)
        config = read(path, env=env, env_prefix=env_prefix)
        path = str(Path(path))
    return Registry(
        config,
        path=path,
        env=env,
        env_prefix=env_prefix,
        clock=clock,
        random=random,
        classify=classify,
        listeners=listeners,
        telemetry=telemetry,
        meter_provider=meter_provider,
    )

"""OpenTelemetry spans and metrics for every pipeline call, at near-zero cost when unobserved.

Cost model (see docs/telemetry.md): per call the observer reads two cached references. While
no SDK is installed they are "pending" and each costs one read of a module global of the
OpenTelemetry API; the call then opts out of events (``ctx.listening = False``) and ``end`` is
one attribute test. Once an SDK provider is installed the tracer and instruments are resolved
once and reused: a span is started with ``start_span`` (never ``start_as_current_span``) and
made current only when it records.
"""

from __future__ import annotations

import inspect
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, final

import opentelemetry.trace as _otel_trace
from opentelemetry import context as _otel_context
from opentelemetry import metrics as _otel_metrics
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, NoOpMeter, Observation
from opentelemetry.trace import NoOpTracer, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace import TracerProvider as _TracerProvider

from resilient import _exceptions
from resilient import _validate as check
from resilient._context import Context
from resilient._events import (
    AttemptEnded,
    BudgetRefused,
    CallObserver,
    CallRejected,
    CircuitStateChanged,
    CircuitWaitEnded,
    CircuitWaitStarted,
    Event,
    RetryGaveUp,
    RetryScheduled,
    TimeoutFired,
    WaitEnded,
    error_type,
    report_listener_error,
)
from resilient._exceptions import ConfigurationError
from resilient._fallback import FallbackUsed
from resilient._hedge import HedgeEnded, HedgeStarted

from . import _names as n

if TYPE_CHECKING:
    from resilient._pipeline import Pipeline

# The API's process-wide provider slots (None until an application sets a provider): reading
# one is the cheapest "is an SDK installed yet?" test. Without them (a future API) the observer
# uses the API's proxies instead, which is correct but costs a no-op span per call.
from opentelemetry.metrics import _internal as _otel_metrics_internal

_HAS_GLOBAL_SLOTS = hasattr(_otel_trace, "_TRACER_PROVIDER") and hasattr(
    _otel_metrics_internal, "_METER_PROVIDER"
)

__all__ = ["Telemetry"]

_VERSION: Final = "0.1.0.dev0"
_PENDING: Final[Any] = object()  # "no global provider yet": poll the API's slot again next call
_INTERNAL: Final = SpanKind.INTERNAL
_FAILURE_VERDICTS: Final = frozenset({"transient", "failure"})
_KNOWN_STATES: Final = ("closed", "open", "half_open")
_MAX_ATTRIBUTE_SETS: Final = 10_000
_MAX_ERROR_TYPES: Final = 1_000

AttributeMap = Mapping[str, str | bool | int | float]


def _installed_tracer_provider() -> _TracerProvider | None:
    return _otel_trace._TRACER_PROVIDER


def installed_meter_provider() -> MeterProvider | None:
    return _otel_metrics_internal._METER_PROVIDER


def _tracer_from(provider: _TracerProvider) -> Tracer | None:
    tracer = provider.get_tracer(n.SCOPE, _VERSION)
    return None if isinstance(tracer, NoOpTracer) else tracer


# ---------------------------------------------------------------------------------------------
# Instruments: one set per meter provider, shared by every Telemetry that reports to it (the
# SDK keeps the first observable instrument of a name, so callbacks must not be registered twice).

# Two locks. Gauge callbacks run inside the SDK's collection lock and take only
# `_observers_lock`, which is never held while calling the SDK; `_registry_lock` is held while
# registering instruments with the SDK but never taken by a callback: no lock-order inversion.
_registry_lock = threading.Lock()
_instruments_by_provider: weakref.WeakKeyDictionary[MeterProvider, _Instruments | None] = (
    weakref.WeakKeyDictionary()
)
_observers_lock = threading.Lock()
_observers: weakref.WeakSet[_Observer] = weakref.WeakSet()


def _instruments_for(provider: MeterProvider) -> _Instruments | None:
    with _registry_lock:
        try:
            return _instruments_by_provider[provider]
        except KeyError:
            pass
        except TypeError:  # pragma: no cover - a provider that cannot be weakly referenced
            return _Instruments.create(provider)
        # Created under the lock: the SDK keeps the first observable instrument of a name, so
        # a second set racing this one would have its callbacks silently dropped.
        instruments = _Instruments.create(provider)
        _instruments_by_provider[provider] = instruments
        return instruments


_INFO = {m.name: m for m in n.METRICS}


@final
class _Instruments:
    """The synchronous instruments, and the observable gauges reading live policies."""

    __slots__ = (
        "__weakref__",
        "_provider",
        "attempt_duration",
        "budget_refusals",
        "call_duration",
        "fallbacks",
        "gave_up",
        "hedges",
        "rejections",
        "retries",
        "timeouts",
        "transitions",
        "wait_duration",
    )

    @classmethod
    def create(cls, provider: MeterProvider) -> _Instruments | None:
        meter = provider.get_meter(n.SCOPE, _VERSION)
        if isinstance(meter, NoOpMeter):
            return None
        return cls(meter, provider)

    def __init__(self, meter: Meter, provider: MeterProvider) -> None:
        self._provider = weakref.ref(provider)

        def histogram(name: str) -> Any:
            info = _INFO[name]
            return meter.create_histogram(
                name,
                unit=info.unit,
                description=info.description,
                explicit_bucket_boundaries_advisory=n.DURATION_BUCKETS,
            )

        def counter(name: str) -> Any:
            info = _INFO[name]
            return meter.create_counter(name, unit=info.unit, description=info.description)

        self.call_duration = histogram(n.CALL_DURATION)
        self.attempt_duration = histogram(n.ATTEMPT_DURATION)
        self.wait_duration = histogram(n.WAIT_DURATION)
        self.retries = counter(n.RETRIES)
        self.gave_up = counter(n.RETRY_GAVE_UP)
        self.budget_refusals = counter(n.BUDGET_REFUSALS)
        self.rejections = counter(n.REJECTIONS)
        self.timeouts = counter(n.TIMEOUTS)
        self.transitions = counter(n.CIRCUIT_TRANSITIONS)
        self.hedges = counter(n.HEDGES)
        self.fallbacks = counter(n.FALLBACKS)
        # Callbacks hold only a weak reference: the meter provider must not keep us alive.
        ref = weakref.ref(self)

        def observe(method: Callable[[_Instruments], list[Observation]]) -> Any:
            def callback(options: CallbackOptions) -> Iterable[Observation]:
                instruments = ref()
                return () if instruments is None else method(instruments)

            return callback

        for name, method, create in (
            (
                n.CIRCUIT_STATE,
                _Instruments._circuit_states,
                meter.create_observable_up_down_counter,
            ),
            (n.BULKHEAD_RUNNING, _Instruments._running, meter.create_observable_up_down_counter),
            (n.BULKHEAD_WAITING, _Instruments._waiting, meter.create_observable_up_down_counter),
            (n.BULKHEAD_LIMIT, _Instruments._limit, meter.create_observable_gauge),
            (n.RATELIMITER_TOKENS, _Instruments._tokens, meter.create_observable_gauge),
            (
                n.RATELIMITER_WAITING,
                _Instruments._limiter_waiting,
                meter.create_observable_up_down_counter,
            ),
        ):
            info = _INFO[name]
            create(name, [observe(method)], unit=info.unit, description=info.description)

    def _snapshots(self) -> Iterator[tuple[dict[str, str], list[object]]]:
        """(attributes, snapshots) for each stateful policy of each live pipeline reporting here.

        A keyed policy (a breaker per host) gives one snapshot per key through ``snapshots()``;
        the gauges aggregate them, since a key is not a bounded attribute.
        """
        with _observers_lock:
            observers = list(_observers)
        for observer in observers:
            telemetry = observer._telemetry
            instruments = telemetry._instruments
            if instruments is _PENDING and installed_meter_provider() is self._provider():
                # Built before the global provider was set and not called since: it reports
                # here from now on.
                telemetry._instruments = instruments = self
            if instruments is not self:
                continue
            if not observer._stateful:
                continue
            try:
                # The pipeline's clock: a limiter's tokens and a breaker's window are counted
                # on it (it may not be readable from the collecting thread).
                now: float | None = observer._clock.now()
            except Exception:
                now = None
            for stateful in observer._stateful:
                try:
                    snapshots = stateful.snapshots(now)
                except Exception:  # a policy's snapshot failing must not break the scrape
                    continue
                yield {n.PIPELINE: observer._pipeline, n.POLICY: stateful.name}, snapshots

    def _circuit_states(self) -> list[Observation]:
        out: list[Observation] = []
        for attrs, snapshots in self._snapshots():
            counts = dict.fromkeys(_KNOWN_STATES, 0)
            found = False
            keyed = any(getattr(s, "key", None) is not None for s in snapshots)
            for snapshot in snapshots:
                if keyed and _unused_default(snapshot):
                    continue  # a per-host breaker's never-used unkeyed state is not a circuit
                state = _state_name(getattr(snapshot, "state", None))
                if state is not None:
                    found = True
                    counts[state] = counts.get(state, 0) + 1
            if found:
                out.extend(Observation(c, {**attrs, n.STATE: s}) for s, c in counts.items())
        return out

    def _number(self, kind: str, field: str) -> list[Observation]:
        """Sum of ``field`` over the snapshots of policies of one kind (``kind`` is a field
        only that kind's snapshots have: ``running`` for bulkheads, ``tokens`` for limiters)."""
        out: list[Observation] = []
        for attrs, snapshots in self._snapshots():
            numbers = [
                value
                for snapshot in snapshots
                if isinstance(getattr(snapshot, kind, None), int | float)
                for value in (getattr(snapshot, field, None),)
                if isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
            ]
            if numbers:
                out.append(Observation(sum(numbers), attrs))
        return out

    def _running(self) -> list[Observation]:
        return self._number("running", "running")

    def _waiting(self) -> list[Observation]:
        return self._number("running", "waiting")

    def _limit(self) -> list[Observation]:
        return self._number("running", "max_concurrent")

    def _limiter_waiting(self) -> list[Observation]:
        return self._number("tokens", "waiting")

    def _tokens(self) -> list[Observation]:
        out: list[Observation] = []
        for attrs, snapshots in self._snapshots():
            # Tokens of different keys do not add up: only an unkeyed bucket is reported, and
            # not when it cannot be read from the collecting thread (nan).
            if len(snapshots) == 1:
                value = getattr(snapshots[0], "tokens", None)
                if (
                    isinstance(value, int | float)
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                ):
                    out.append(Observation(value, attrs))
        return out


def _unused_default(snapshot: object) -> bool:
    return (
        getattr(snapshot, "key", None) is None
        and getattr(snapshot, "calls", None) == 0
        and getattr(snapshot, "state", None) == "closed"
    )


def _state_name(state: object) -> str | None:
    if isinstance(state, str):
        return state.lower()
    value = getattr(state, "value", None)  # an Enum
    if isinstance(value, str):
        return value.lower()
    name = getattr(state, "name", None)
    return name.lower() if isinstance(name, str) else None


# ---------------------------------------------------------------------------------------------


@final
class Telemetry:
    """Where pipelines report: OpenTelemetry spans and metrics.

    Every pipeline reports through ``Telemetry()`` by default, that is through the global
    OpenTelemetry providers: an application that installs the SDK (even after its pipelines
    were built) gets spans and metrics, and one that does not pays almost nothing. Pass an
    instance as ``Pipeline(telemetry=...)`` to report elsewhere or to turn one signal off::

        Pipeline(..., telemetry=Telemetry(tracer_provider=tp, meter_provider=mp))
        Pipeline(..., telemetry=Telemetry(tracing=False))   # metrics only

    Args:
        tracer_provider: the provider for spans; ``None`` (default) follows the global one.
        meter_provider: the provider for metrics; ``None`` (default) follows the global one.
        tracing: whether to record spans.
        metrics: whether to record metrics.
        max_operations: distinct ``operation`` values kept per pipeline; later ones are
            reported as ``_OTHER`` (a guard against unbounded attribute values).

    Raises:
        ConfigurationError: an option of the wrong type.
    """

    __slots__ = ("__weakref__", "_instruments", "_max_operations", "_tracer")

    def __init__(
        self,
        *,
        tracer_provider: _TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        tracing: bool = True,
        metrics: bool = True,
        max_operations: int = 1000,
    ) -> None:
        for parameter, value in (("tracing", tracing), ("metrics", metrics)):
            if not isinstance(value, bool):
                raise ConfigurationError(f"Telemetry.{parameter}", value, "expected a bool")
        if tracer_provider is not None and not callable(
            getattr(tracer_provider, "get_tracer", None)
        ):
            raise ConfigurationError(
                "Telemetry.tracer_provider", tracer_provider, "expected a TracerProvider"
            )
        if meter_provider is not None and not callable(getattr(meter_provider, "get_meter", None)):
            raise ConfigurationError(
                "Telemetry.meter_provider", meter_provider, "expected a MeterProvider"
            )
        self._max_operations = check.integer("Telemetry.max_operations", max_operations, minimum=1)
        self._tracer: Any
        self._instruments: Any
        if not tracing:
            self._tracer = None
        elif tracer_provider is not None:
            self._tracer = _tracer_from(tracer_provider)
        else:
            global_provider = _otel_trace.get_tracer_provider()  # loads OTEL_PYTHON_TRACER_PROVIDER
            # Without the API's slot, the global proxy tracer follows a later SDK installation.
            self._tracer = _PENDING if _HAS_GLOBAL_SLOTS else _tracer_from(global_provider)
        if not metrics:
            self._instruments = None
        elif meter_provider is not None:
            self._instruments = _instruments_for(meter_provider)
        else:
            global_meter_provider = _otel_metrics.get_meter_provider()
            self._instruments = (
                _PENDING if _HAS_GLOBAL_SLOTS else _instruments_for(global_meter_provider)
            )

    def __call__(self, pipeline: Pipeline) -> CallObserver | None:
        """The observer for one pipeline (``Pipeline`` calls this when it is built)."""
        if self._tracer is None and self._instruments is None:
            return None
        observer = _Observer(self, pipeline)
        with _observers_lock:
            _observers.add(observer)
        return observer

    def _poll_tracer(self) -> Tracer | None:
        provider = _installed_tracer_provider()
        if provider is None:
            return None
        tracer = _tracer_from(provider)
        self._tracer = tracer
        return tracer

    def _poll_instruments(self) -> _Instruments | None:
        provider = installed_meter_provider()
        if provider is None:
            return None
        instruments = _instruments_for(provider)
        self._instruments = instruments
        return instruments

    def __repr__(self) -> str:
        def show(value: object) -> str:
            return "pending" if value is _PENDING else "off" if value is None else "on"

        return f"<Telemetry tracing={show(self._tracer)} metrics={show(self._instruments)}>"


_error_names: dict[str, str] = {}
_OUR_EXCEPTIONS: Final = frozenset(
    name for name, value in vars(_exceptions).items() if isinstance(value, type)
)


def _public_name(name: str) -> str:
    """``error.type`` spelled by its public import path, whoever formatted it.

    Private module components are dropped (``resilient._exceptions.TimeoutExceeded`` ->
    ``resilient.TimeoutExceeded``, the name users import), and a bare name of one of the
    library's own exceptions gets its package (``CircuitOpenError`` ->
    ``resilient.CircuitOpenError``), so the same exception reads the same in span events,
    call attributes and metrics. Builtins stay bare (``ConnectionError``).
    """
    found = _error_names.get(name)
    if found is None:
        if "." not in name:
            found = f"resilient.{name}" if name in _OUR_EXCEPTIONS else name
        else:
            parts = name.split(".")
            found = ".".join([p for p in parts[:-1] if not p.startswith("_")] + parts[-1:])
        if len(_error_names) < _MAX_ERROR_TYPES:
            _error_names[name] = found
    return found


def _error_type(exc: BaseException) -> str:
    """The ``error.type`` of an exception (see ``resilient._events.error_type``)."""
    return _public_name(error_type(exc))


def _event_error(name: str | None) -> str | None:
    return None if name is None else _public_name(name)


@final
class _Op:
    """Everything precomputed for one operation of one pipeline."""

    __slots__ = ("attrs", "name", "span_attrs", "span_name")

    def __init__(self, pipeline: str, operation: str) -> None:
        self.name = operation
        self.span_name = f"{pipeline} {operation}"
        self.span_attrs: AttributeMap = {n.PIPELINE: pipeline, n.OPERATION: operation}
        # (verdict, error type) -> attributes of resilient.call.duration
        self.attrs: dict[tuple[str, str | None], AttributeMap] = {}


# Metric attribute sets by kind (besides resilient.pipeline), indexed by the kind's number.
_ATTEMPT: Final = 0
_RETRY: Final = 1
_GAVE_UP: Final = 2
_BUDGET: Final = 3
_REJECTED: Final = 4
_CIRCUIT: Final = 5
_TIMEOUT: Final = 6
_WAIT: Final = 7
_HEDGE: Final = 8
_FALLBACK: Final = 9
_METRIC_ATTRIBUTES: Final = (
    (n.OPERATION, n.POLICY, n.ATTEMPT_KIND, n.VERDICT, n.ERROR_TYPE),
    (n.OPERATION, n.POLICY, n.ERROR_TYPE),
    (n.OPERATION, n.POLICY, n.REASON, n.ERROR_TYPE),
    (n.OPERATION, n.POLICY),
    (n.OPERATION, n.POLICY, n.REASON, n.ERROR_TYPE),
    (n.POLICY, n.STATE, n.PREVIOUS_STATE),
    (n.OPERATION, n.POLICY),
    (n.OPERATION, n.POLICY, n.ADMITTED),
    (n.OPERATION, n.POLICY),
    (n.OPERATION, n.POLICY, n.VERDICT, n.ERROR_TYPE),
)


# Per-call state in ctx.telemetry: (started, span or None, context token or None,
# instruments or None, operation).
_State = tuple[float, Span | None, Any, _Instruments | None, _Op]


@final
class _Observer:
    """Observes the calls of one pipeline (the ``CallObserver`` installed in it)."""

    __slots__ = (
        "__weakref__",
        "_attrs",
        "_clock",
        "_max_operations",
        "_ops",
        "_pipeline",
        "_stateful",
        "_telemetry",
    )

    def __init__(self, telemetry: Telemetry, pipeline: Pipeline) -> None:
        self._telemetry = telemetry
        self._pipeline: str = pipeline.name
        self._max_operations = telemetry._max_operations
        self._ops: dict[str, _Op] = {}
        self._attrs: dict[tuple[object, ...], AttributeMap] = {}
        self._clock = pipeline.clock
        self._stateful = tuple(_stateful_policies(pipeline.policies))

    # -- the hot path ---------------------------------------------------------------------

    def start(self, ctx: Context, /) -> None:
        """Open the call's span (current only if it records) and note the start time."""
        telemetry = self._telemetry
        tracer = telemetry._tracer
        if tracer is _PENDING:  # inlined check: one module-global read while no SDK is set
            tracer = None if _otel_trace._TRACER_PROVIDER is None else telemetry._poll_tracer()
        instruments = telemetry._instruments
        if instruments is _PENDING:
            instruments = (
                None
                if _otel_metrics_internal._METER_PROVIDER is None
                else telemetry._poll_instruments()
            )
        if tracer is None and instruments is None:
            if not ctx.listeners:
                ctx.listening = False  # nothing records: policies skip building events
            return
        op = self._ops.get(ctx.operation) or self._new_op(ctx.operation)
        if tracer is not None:
            span = tracer.start_span(op.span_name, kind=_INTERNAL, attributes=op.span_attrs)
            if span.is_recording():
                started = ctx.clock.now()
                token = _otel_context.attach(_otel_trace.set_span_in_context(span))
                ctx.telemetry = (started, span, token, instruments, op)
                ctx.span = span
                return
            if instruments is None:
                if not ctx.listeners:
                    ctx.listening = False
                return
        ctx.telemetry = (ctx.clock.now(), None, None, instruments, op)

    def recording(self) -> bool:
        """Whether a call starting now would record a span or metrics.

        Cheap (the same checks ``start`` makes first): an integration may skip the per-call
        ``Context``, ``start`` and ``end`` while it is ``False`` and no listener is set.
        """
        telemetry = self._telemetry
        tracer = telemetry._tracer
        if tracer is _PENDING:
            tracer = None if _otel_trace._TRACER_PROVIDER is None else telemetry._poll_tracer()
        if tracer is not None:
            return True
        instruments = telemetry._instruments
        if instruments is _PENDING:
            instruments = (
                None
                if _otel_metrics_internal._METER_PROVIDER is None
                else telemetry._poll_instruments()
            )
        return instruments is not None

    def end(self, ctx: Context, error: BaseException | None, result: object, /) -> None:
        """Record the call's duration and verdict, then end its span."""
        state: _State | None = ctx.telemetry
        if state is None:
            return
        ctx.telemetry = None
        started, span, token, instruments, op = state
        elapsed = ctx.clock.now() - started
        if token is not None:
            _otel_context.detach(token)  # never raises
        verdict, error_kind = _outcome(ctx, error, result)
        if ctx.operation != op.name:
            # Named only during the call (an ASGI route template once routing matched):
            # the span and the call's metrics take the final name, within the same bound.
            op = self._ops.get(ctx.operation) or self._new_op(ctx.operation)
            if span is not None:
                try:
                    span.update_name(op.span_name)
                    span.set_attribute(n.OPERATION, op.name)
                except Exception:
                    report_listener_error(self)
        try:
            if instruments is not None:
                key = (verdict, error_kind)
                attrs = op.attrs.get(key)
                if attrs is None:
                    attrs = self._call_attrs(op, verdict, error_kind)
                instruments.call_duration.record(elapsed, attrs)
        finally:
            if span is not None:
                _finish_span(span, verdict, error_kind, ctx.attempt)

    def event(self, ctx: Context, event: Event, /) -> None:
        """Turn a policy event into a span event and metric points."""
        state: _State | None = ctx.telemetry
        if state is None:
            return
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, state, event)

    # -- helpers (cold) -------------------------------------------------------------------

    def _new_op(self, operation: str) -> _Op:
        if len(self._ops) >= self._max_operations:
            other = self._ops.get(n.OTHER)
            if other is None:
                other = self._ops[n.OTHER] = _Op(self._pipeline, n.OTHER)
            return other
        op = self._ops[operation] = _Op(self._pipeline, operation)
        return op

    def _call_attrs(self, op: _Op, verdict: str, error_kind: str | None) -> AttributeMap:
        attrs: dict[str, str | bool | int | float] = dict(op.span_attrs)
        attrs[n.VERDICT] = verdict
        if error_kind is not None:
            attrs[n.ERROR_TYPE] = error_kind
        if len(op.attrs) < _MAX_ATTRIBUTE_SETS:
            op.attrs[(verdict, error_kind)] = attrs
        return attrs

    def _metric_attrs(self, *key: object) -> AttributeMap:
        """The cached attribute set of a metric point: ``key`` is (kind, *values).

        The key tuple is the only allocation on a hit; ``None`` values are left out.
        """
        attrs = self._attrs.get(key)
        if attrs is None:
            names: tuple[str, ...] = _METRIC_ATTRIBUTES[key[0]]  # type: ignore[call-overload]
            attrs = {n.PIPELINE: self._pipeline}
            attrs.update((k, v) for k, v in zip(names, key[1:], strict=True) if v is not None)  # type: ignore[misc]
            if len(self._attrs) < _MAX_ATTRIBUTE_SETS:
                self._attrs[key] = attrs
        return attrs

    def _on_attempt_ended(self, state: _State, e: AttemptEnded) -> None:
        _, span, _, instruments, op = state
        error = _event_error(e.error_type)
        verdict = e.verdict.value
        kind = e.kind
        if kind is None:  # Retry's events: the first attempt is the original
            kind = "original" if e.attempt == 1 else "retry"
        if span is not None:
            attrs: dict[str, str | int | float] = {
                n.POLICY: e.policy,
                n.ATTEMPT: e.attempt,
                n.ATTEMPT_KIND: kind,
                n.VERDICT: verdict,
                n.DURATION: e.duration,
            }
            if error is not None:
                attrs[n.ERROR_TYPE] = error
            span.add_event(n.EV_ATTEMPT, attrs)
        if instruments is not None:
            instruments.attempt_duration.record(
                e.duration,
                self._metric_attrs(_ATTEMPT, op.name, e.policy, kind, verdict, error),
            )

    def _on_retry(self, state: _State, e: RetryScheduled) -> None:
        _, span, _, instruments, op = state
        error = _event_error(e.error_type)
        if span is not None:
            attrs: dict[str, str | int | float] = {
                n.POLICY: e.policy,
                n.ATTEMPT: e.attempt,
                n.DELAY: e.delay,
                n.VERDICT: e.verdict.value,
            }
            if error is not None:
                attrs[n.ERROR_TYPE] = error
            if e.retry_after is not None:
                attrs[n.RETRY_AFTER] = e.retry_after
            span.add_event(n.EV_RETRY, attrs)
        if instruments is not None:
            instruments.retries.add(
                1,
                self._metric_attrs(_RETRY, op.name, e.policy, error),
            )

    def _on_gave_up(self, state: _State, e: RetryGaveUp) -> None:
        _, span, _, instruments, op = state
        error = _event_error(e.error_type)
        if span is not None:
            attrs: dict[str, str | int] = {
                n.POLICY: e.policy,
                n.ATTEMPTS: e.attempts,
                n.REASON: e.reason,
                n.VERDICT: e.verdict.value,
            }
            if error is not None:
                attrs[n.ERROR_TYPE] = error
            span.add_event(n.EV_GAVE_UP, attrs)
        if instruments is not None:
            instruments.gave_up.add(
                1,
                self._metric_attrs(_GAVE_UP, op.name, e.policy, e.reason, error),
            )

    def _on_budget(self, state: _State, e: BudgetRefused) -> None:
        _, span, _, instruments, op = state
        if span is not None:
            span.add_event(n.EV_BUDGET, {n.POLICY: e.policy, n.ATTEMPT: e.attempt})
        if instruments is not None:
            instruments.budget_refusals.add(
                1,
                self._metric_attrs(_BUDGET, op.name, e.policy),
            )

    def _on_rejected(self, state: _State, e: CallRejected) -> None:
        _, span, _, instruments, op = state
        error = _public_name(e.error_type)
        if span is not None:
            attrs: dict[str, str | float] = {
                n.POLICY: e.policy,
                n.REASON: e.reason,
                n.ERROR_TYPE: error,
            }
            if e.retry_after is not None:
                attrs[n.RETRY_AFTER] = e.retry_after
            span.add_event(n.EV_REJECTED, attrs)
        if instruments is not None:
            instruments.rejections.add(
                1,
                self._metric_attrs(_REJECTED, op.name, e.policy, e.reason, error),
            )

    def _on_circuit(self, state: _State, e: CircuitStateChanged) -> None:
        _, span, _, instruments, _ = state
        if span is not None:
            attrs = {n.POLICY: e.policy, n.STATE: e.state, n.PREVIOUS_STATE: e.previous}
            if e.key is not None:
                attrs[n.CIRCUIT_KEY] = e.key
            span.add_event(n.EV_CIRCUIT, attrs)
        if instruments is not None:
            instruments.transitions.add(
                1,
                self._metric_attrs(_CIRCUIT, e.policy, e.state, e.previous),
            )

    def _on_timeout(self, state: _State, e: TimeoutFired) -> None:
        _, span, _, instruments, op = state
        if span is not None:
            span.add_event(n.EV_TIMEOUT, {n.POLICY: e.policy, n.TIMEOUT: e.timeout})
        if instruments is not None:
            instruments.timeouts.add(
                1,
                self._metric_attrs(_TIMEOUT, op.name, e.policy),
            )

    def _on_wait(self, state: _State, e: WaitEnded) -> None:
        _, span, _, instruments, op = state
        if span is not None:
            span.add_event(
                n.EV_WAIT, {n.POLICY: e.policy, n.WAITED: e.waited, n.ADMITTED: e.admitted}
            )
        if instruments is not None:
            instruments.wait_duration.record(
                e.waited,
                self._metric_attrs(_WAIT, op.name, e.policy, e.admitted),
            )

    def _on_circuit_wait_started(self, state: _State, e: CircuitWaitStarted) -> None:
        span = state[1]
        if span is not None:
            attrs: dict[str, str | int | float] = {
                n.POLICY: e.policy,
                n.WAITING: e.waiting,
                n.GIVE_UP: e.give_up,
            }
            if e.key is not None:
                attrs[n.CIRCUIT_KEY] = e.key
            span.add_event(n.EV_CIRCUIT_WAIT_STARTED, attrs)

    def _on_circuit_wait(self, state: _State, e: CircuitWaitEnded) -> None:
        _, span, _, instruments, op = state
        admitted = e.outcome in {"probe", "released"}
        if span is not None:
            attrs: dict[str, str | float | bool] = {
                n.POLICY: e.policy,
                n.WAIT_OUTCOME: e.outcome,
                n.WAITED: e.waited,
                n.ADMITTED: admitted,
            }
            if e.key is not None:
                attrs[n.CIRCUIT_KEY] = e.key
            span.add_event(n.EV_CIRCUIT_WAIT, attrs)
        if instruments is not None:
            # the same histogram as bulkhead and rate-limiter waits (filter on the policy)
            instruments.wait_duration.record(
                e.waited,
                self._metric_attrs(_WAIT, op.name, e.policy, admitted),
            )

    def _on_hedge(self, state: _State, e: HedgeStarted) -> None:
        _, span, _, instruments, op = state
        if span is not None:
            span.add_event(
                n.EV_HEDGE,
                {
                    n.POLICY: e.policy,
                    n.HEDGE: e.hedge,
                    n.ATTEMPT: e.attempt,
                    n.HEDGE_DELAY: e.delay,
                },
            )
        if instruments is not None:
            instruments.hedges.add(1, self._metric_attrs(_HEDGE, op.name, e.policy))

    def _on_hedge_ended(self, state: _State, e: HedgeEnded) -> None:
        span = state[1]
        if span is not None:
            span.add_event(
                n.EV_HEDGE_ENDED,
                {
                    n.POLICY: e.policy,
                    n.WINNER: e.winner,
                    n.ATTEMPTS: e.attempts,
                    n.CANCELLED_ATTEMPTS: e.cancelled,
                    n.VERDICT: e.verdict.value,
                },
            )

    def _on_fallback(self, state: _State, e: FallbackUsed) -> None:
        _, span, _, instruments, op = state
        error = _event_error(e.error_type)
        verdict = e.verdict.value
        if span is not None:
            attrs: dict[str, str] = {n.POLICY: e.policy, n.VERDICT: verdict}
            if error is not None:
                attrs[n.ERROR_TYPE] = error
            span.add_event(n.EV_FALLBACK, attrs)
        if instruments is not None:
            instruments.fallbacks.add(
                1, self._metric_attrs(_FALLBACK, op.name, e.policy, verdict, error)
            )

    def __repr__(self) -> str:
        return f"<telemetry observer of pipeline {self._pipeline!r}>"


_HANDLERS: Final[dict[type[Event], Callable[[_Observer, _State, Any], None]]] = {
    AttemptEnded: _Observer._on_attempt_ended,
    RetryScheduled: _Observer._on_retry,
    RetryGaveUp: _Observer._on_gave_up,
    BudgetRefused: _Observer._on_budget,
    CallRejected: _Observer._on_rejected,
    CircuitStateChanged: _Observer._on_circuit,
    TimeoutFired: _Observer._on_timeout,
    WaitEnded: _Observer._on_wait,
    CircuitWaitStarted: _Observer._on_circuit_wait_started,
    CircuitWaitEnded: _Observer._on_circuit_wait,
    HedgeStarted: _Observer._on_hedge,
    HedgeEnded: _Observer._on_hedge_ended,
    FallbackUsed: _Observer._on_fallback,
}


def _outcome(ctx: Context, error: BaseException | None, result: object) -> tuple[str, str | None]:
    """(verdict value, error type) of a finished call; never raises."""
    if error is None:
        try:
            return ctx.classifier.classify_result(result).verdict.value, None
        except Exception:
            return "success", None  # it returned; a broken classifier does not make it fail
    if not isinstance(error, Exception):
        return n.CANCELLED, None  # the caller's cancellation: not an error of the call
    kind = _error_type(error)
    try:
        return ctx.classifier.classify_exception(error).verdict.value, kind
    except Exception:
        return "failure", kind


def _finish_span(span: Span, verdict: str, error_kind: str | None, attempts: int) -> None:
    try:
        attrs: dict[str, str | int] = {n.VERDICT: verdict, n.ATTEMPTS: attempts}
        if error_kind is not None:
            attrs[n.ERROR_TYPE] = error_kind
        span.set_attributes(attrs)
        if verdict in _FAILURE_VERDICTS:
            # No exception message: it can carry URLs, credentials or user data.
            span.set_status(Status(StatusCode.ERROR, f"{verdict}: {error_kind or 'result'}"))
    finally:
        span.end()


@final
class _Stateful:
    """A policy the gauges read: how to take its snapshots."""

    __slots__ = ("many", "name", "read", "takes_now")

    def __init__(self, name: str, read: Callable[..., Any], many: bool) -> None:
        self.name = name
        self.read = read
        self.many = many
        try:
            self.takes_now = "now" in inspect.signature(read).parameters
        except (TypeError, ValueError):
            self.takes_now = False

    def snapshots(self, now: float | None) -> list[object]:
        """One snapshot per key (a keyed policy with ``snapshots()``) or the one snapshot."""
        result = self.read(now=now) if self.takes_now and now is not None else self.read()
        return list(result) if self.many else [result]


def _stateful_policies(policies: Iterable[object]) -> Iterator[_Stateful]:
    """The policies exposing ``snapshots()`` or ``snapshot()``, nested pipelines included."""
    seen: set[int] = set()
    stack = list(policies)[::-1]
    while stack:
        policy = stack.pop()
        if id(policy) in seen:
            continue
        seen.add(id(policy))
        name = str(getattr(policy, "name", type(policy).__name__))
        many = getattr(policy, "snapshots", None)
        if callable(many):
            yield _Stateful(name, many, many=True)
            continue
        one = getattr(policy, "snapshot", None)
        if callable(one):
            yield _Stateful(name, one, many=False)
            continue
        inner = getattr(policy, "policies", None)
        if isinstance(inner, tuple):
            stack.extend(inner[::-1])

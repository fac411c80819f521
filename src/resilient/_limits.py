"""Adaptive concurrency limits: how many calls may run at once, learned from their latency.

The algorithms are pure: each ``update()`` takes one completed call's round-trip time, the
number of calls in flight when it completed, and whether it was dropped (timed out or
refused downstream), and returns the new limit. No clock, no I/O, no event loop: a test
drives them with any sequence of numbers. ``AdaptiveLimit`` is the object a user passes as
``max_concurrent``: it validates the options, owns one algorithm and keeps the whole-number
limit a bulkhead compares against at admission.

The algorithms follow Netflix's concurrency-limits (``limit/AIMDLimit``, ``Gradient2Limit``,
``VegasLimit``) and keep its parameter names where they exist; the defaults differ where a
Python service differs (see docs/overload.md).
"""

from __future__ import annotations

import math
from typing import Final, Protocol, final, runtime_checkable

from . import _validate as check
from ._exceptions import ConfigurationError

__all__ = ["AIMD", "AdaptiveLimit", "Gradient2", "LimitAlgorithm", "Vegas"]

ALGORITHMS: Final = ("vegas", "gradient2", "aimd")
_INF: Final = math.inf


@runtime_checkable
class LimitAlgorithm(Protocol):
    """What ``AdaptiveLimit`` needs from an algorithm (the built-ins, or your own)."""

    def update(self, limit: float, rtt: float, inflight: int, dropped: bool) -> float:
        """Return the new limit after one call completed.

        Args:
            limit: the current (unrounded) limit.
            rtt: seconds the call held its slot.
            inflight: calls holding a slot when it completed (itself included).
            dropped: the call timed out or was refused downstream (an overload signal).
        """
        ...


@final
class AIMD:
    """Additive increase, multiplicative decrease: +1 while busy, x ``backoff`` on a drop.

    A call that was dropped or took longer than ``timeout`` multiplies the limit by
    ``backoff``; a call completing while at least half of the limit was in use adds one.
    Latency below ``timeout`` is not otherwise looked at: AIMD reacts to loss, not to queues.

    Args:
        backoff: the factor applied on a drop, in (0.5, 1) (Netflix: 0.9).
        timeout: seconds beyond which a completed call counts as a drop (Netflix: 5 s).

    Raises:
        ConfigurationError: an option is out of range.
    """

    __slots__ = ("backoff", "timeout")

    def __init__(self, *, backoff: float = 0.9, timeout: float = 5.0) -> None:
        self.backoff = check.number("AdaptiveLimit.backoff", backoff, minimum=0.5, maximum=0.999)
        self.timeout = check.positive("AdaptiveLimit.timeout", timeout, allow_inf=True)

    def update(self, limit: float, rtt: float, inflight: int, dropped: bool) -> float:
        """See ``LimitAlgorithm.update``."""
        if dropped or rtt > self.timeout:
            return limit * self.backoff
        if inflight * 2 >= limit:
            return limit + 1.0
        return limit


@final
class Gradient2:
    """Netflix's Gradient2: compare a short-term RTT with a long-term average of it.

    ``gradient = clamp(tolerance * long_rtt / rtt, 0.5, 1)``; the new limit is
    ``limit * gradient + queue_size``, smoothed by ``smoothing``. While latency stays within
    ``tolerance`` times its long-term average the limit grows by about ``smoothing *
    queue_size`` a call; beyond, it shrinks (at most halving per step before smoothing). When
    the limit is not in use (fewer than half in flight) nothing is learned. The long average
    decays toward the short one when it is more than twice as high, so a recovered service is
    not judged against the slow past forever.

    It reacts to latency *changes*: under a sustained overload the long-term average catches
    up with the queueing latency and the limit drifts up (in a simulation of a service running
    16 at once it settles far above 16). Prefer ``Vegas`` for a dependency with a fixed
    capacity; Gradient2 suits one whose latency baseline moves with its traffic mix.

    Args:
        smoothing: weight of each new estimate, in (0, 1] (Netflix: 0.2).
        tolerance: how much slower than the long-term average calls may get before the limit
            shrinks, >= 1 (Netflix: 1.5).
        queue_size: headroom added to every estimate, >= 0 (Netflix: 4).
        long_window: samples in the long-term average (Netflix: 600).

    Raises:
        ConfigurationError: an option is out of range.
    """

    __slots__ = ("_long", "_long_factor", "queue_size", "smoothing", "tolerance")

    def __init__(
        self,
        *,
        smoothing: float = 0.2,
        tolerance: float = 1.5,
        queue_size: float = 4.0,
        long_window: int = 600,
    ) -> None:
        self.smoothing = check.fraction("AdaptiveLimit.smoothing", smoothing)
        self.tolerance = check.number("AdaptiveLimit.tolerance", tolerance, minimum=1.0)
        self.queue_size = check.non_negative("AdaptiveLimit.queue_size", queue_size)
        window = check.integer("AdaptiveLimit.long_window", long_window, minimum=1)
        self._long_factor = 2.0 / (window + 1)
        self._long = 0.0  # 0: no sample yet

    @property
    def long_rtt(self) -> float:
        """The long-term average RTT (0 before the first sample)."""
        return self._long

    def update(self, limit: float, rtt: float, inflight: int, dropped: bool) -> float:
        """See ``LimitAlgorithm.update``."""
        if dropped:
            # Cut short at any point: no latency to learn from; the smoothed halving.
            return limit * (1.0 - 0.5 * self.smoothing)
        if not 0.0 < rtt < _INF:  # NaN too
            return limit
        long = self._long
        long = rtt if long == 0.0 else long + (rtt - long) * self._long_factor
        if long > 2.0 * rtt:
            long *= 0.95  # recovering: let the long view catch up with the better present
        self._long = long
        if inflight * 2 < limit:
            return limit  # application-limited: the latency says nothing about the limit
        gradient = max(0.5, min(1.0, self.tolerance * long / rtt))
        estimate = limit * gradient + self.queue_size
        return limit * (1.0 - self.smoothing) + estimate * self.smoothing


@final
class Vegas:
    """TCP Vegas applied to calls: estimate the queue from the lowest RTT seen.

    ``queue = limit * (1 - rtt_noload / rtt)``, where ``rtt_noload`` is the lowest RTT seen.
    Fewer than ``alpha * log10(limit)`` queued (at least 1): the limit grows; more than
    ``beta * log10(limit)`` (at least 2): it shrinks; a drop shrinks it too. Netflix uses
    3 and 6; the defaults here, 2 and 4, keep the queue in front of a dependency that runs
    only a few calls at once short enough for its callers' deadlines (docs/overload.md).

    Every ``probe_multiplier * limit`` samples the no-load RTT is measured again, in case the
    dependency became slower: unlike Netflix (which takes the next sample, inflated by the
    very queue Vegas keeps), the limit is halved for ``limit`` samples so the queue drains,
    and the lowest RTT seen meanwhile becomes the new floor (as BBR's PROBE_RTT does).

    Args:
        smoothing: weight of each new estimate, in (0, 1] (Netflix: 1.0; here 0.25: a
            per-call update otherwise reacts several times to one queue before its effect
            shows, and the limit swings around the capacity).
        probe_multiplier: re-measure the no-load RTT after this many limits' worth of
            samples (Netflix: 30).
        alpha: grow while fewer than ``alpha * log10(limit)`` calls queue (Netflix: 3).
        beta: shrink while more than ``beta * log10(limit)`` queue, > alpha (Netflix: 6).

    Raises:
        ConfigurationError: an option is out of range.
    """

    __slots__ = (
        "_alpha",
        "_beta",
        "_for_limit",
        "_noload",
        "_probe_at",
        "_probe_left",
        "_probe_min",
        "_resume",
        "_samples",
        "_step",
        "alpha",
        "beta",
        "probe_multiplier",
        "smoothing",
    )

    def __init__(
        self,
        *,
        smoothing: float = 0.25,
        probe_multiplier: int = 30,
        alpha: float = 2.0,
        beta: float = 4.0,
    ) -> None:
        self.smoothing = check.fraction("AdaptiveLimit.smoothing", smoothing)
        self.alpha = check.positive("AdaptiveLimit.alpha", alpha)
        self.beta = check.positive("AdaptiveLimit.beta", beta)
        if self.beta <= self.alpha:
            raise ConfigurationError("AdaptiveLimit.beta", beta, f"must be > alpha ({alpha:g})")
        self.probe_multiplier = check.integer(
            "AdaptiveLimit.probe_multiplier", probe_multiplier, minimum=1
        )
        self._noload = math.inf
        self._samples = 0
        self._probe_at = 0.0
        self._probe_left = 0
        self._probe_min = math.inf
        self._resume = 0.0
        self._for_limit = -1.0
        self._alpha = self._beta = self._step = 1.0

    @property
    def rtt_noload(self) -> float:
        """The lowest RTT seen since the last probe (``inf`` before any)."""
        return self._noload

    def update(self, limit: float, rtt: float, inflight: int, dropped: bool) -> float:
        """See ``LimitAlgorithm.update``."""
        if dropped:
            # A dropped call's time says nothing about the dependency's latency (it may have
            # been cut short at any point): it only lowers the limit.
            return limit - max(1.0, math.log10(max(limit, 1.0))) * self.smoothing
        if not 0.0 < rtt < _INF:  # NaN too
            return limit
        self._samples += 1
        if self._probe_left or self._samples >= self._probe_at:
            return self._probe(limit, rtt)
        if rtt < self._noload:
            self._noload = rtt
            return limit
        if inflight * 2 < limit:
            return limit  # not using the limit: its latency says nothing about the limit
        if limit != self._for_limit:  # the thresholds move only with the limit: cached
            log = math.log10(max(limit, 1.0))
            self._for_limit = limit
            self._alpha = max(1.0, self.alpha * log)
            self._beta = max(2.0, self.beta * log)
            self._step = max(1.0, log)
        queue = limit * (1.0 - self._noload / rtt)
        step = 0.0
        if queue < self._alpha:
            step = self._step
        elif queue > self._beta and inflight <= limit:
            # (More in flight than the limit: calls admitted before the last decrease are
            # still draining; their latency was already answered.)
            step = -self._step
        return limit + step * self.smoothing

    def _probe(self, limit: float, rtt: float) -> float:
        """Re-measure the no-load RTT: halve the limit for ``limit`` samples, keep the lowest."""
        if self._probe_left:
            self._probe_min = min(self._probe_min, rtt)
            self._probe_left -= 1
            if self._probe_left:
                return limit
            self._noload = self._probe_min
            return max(limit, self._resume)
        self._probe_at = self._samples + self.probe_multiplier * max(limit, 1.0)
        if self._noload == math.inf:
            self._noload = rtt
            return limit
        # Drain the queue for a while to see the dependency's latency without it.
        self._probe_left = max(int(limit), 1)
        self._probe_min = rtt
        self._resume = limit
        return limit * 0.5


_OPTIONS: Final[dict[str, tuple[str, ...]]] = {
    "gradient2": ("smoothing", "tolerance", "queue_size", "long_window"),
    "vegas": ("smoothing", "probe_multiplier", "alpha", "beta"),
    "aimd": ("backoff", "timeout"),
}


@final
class AdaptiveLimit:
    """A concurrency limit that adapts to latency; pass it wherever ``max_concurrent`` goes.

    ``Bulkhead(max_concurrent=AdaptiveLimit())``, ``standard(max_concurrent=AdaptiveLimit())``
    and ``ResilienceMiddleware(app, max_concurrent=AdaptiveLimit())`` admit calls while fewer
    than ``limit`` run, and report every completed call's latency (and whether it was dropped:
    timed out or refused downstream) so the limit follows what the dependency can take.

    An instance holds the learned limit: give each bulkhead its own (a second bulkhead refuses
    one already in use, and a keyed bulkhead refuses one altogether).

    Args:
        algorithm: ``"vegas"`` (default: it settles a few calls above what the dependency
            runs at once), ``"gradient2"``, ``"aimd"``, or an object with
            ``update(limit, rtt, inflight, dropped) -> float`` (``LimitAlgorithm``).
        initial_limit: the limit before anything was learned (Netflix: 20).
        min_limit: the limit never goes below this (>= 1; Netflix: 20 for Gradient2/AIMD).
        max_limit: the limit never goes above this (Netflix: 200 Gradient2/AIMD, 1000 Vegas).
        smoothing: Gradient2 (0.2) and Vegas (0.25; Netflix 1.0) only: weight of each new
            estimate.
        tolerance: Gradient2 only (1.5): latency growth tolerated before shrinking.
        queue_size: Gradient2 only (4): headroom added to each estimate.
        long_window: Gradient2 only (600): samples in the long-term RTT average.
        probe_multiplier: Vegas only (30): how often the no-load RTT is re-measured.
        alpha: Vegas only (2; Netflix 3): grow below ``alpha * log10(limit)`` queued.
        beta: Vegas only (4; Netflix 6): shrink above ``beta * log10(limit)`` queued.
        backoff: AIMD only (0.9): factor applied on a drop.
        timeout: AIMD only (5 s): a call slower than this counts as a drop.

    Raises:
        ConfigurationError: an option out of range, or given for an algorithm that has no
            use for it (named in the error).
    """

    __slots__ = (
        "_algorithm",
        "_limit",
        "_owner",
        "algorithm_name",
        "limit",
        "max_limit",
        "min_limit",
    )

    def __init__(
        self,
        algorithm: str | LimitAlgorithm = "vegas",
        *,
        initial_limit: int = 20,
        min_limit: int = 1,
        max_limit: int = 200,
        smoothing: float | None = None,
        tolerance: float | None = None,
        queue_size: float | None = None,
        long_window: int | None = None,
        probe_multiplier: int | None = None,
        alpha: float | None = None,
        beta: float | None = None,
        backoff: float | None = None,
        timeout: float | None = None,
    ) -> None:
        given = {
            "smoothing": smoothing,
            "tolerance": tolerance,
            "queue_size": queue_size,
            "long_window": long_window,
            "probe_multiplier": probe_multiplier,
            "alpha": alpha,
            "beta": beta,
            "backoff": backoff,
            "timeout": timeout,
        }
        options = {k: v for k, v in given.items() if v is not None}
        impl: LimitAlgorithm
        if isinstance(algorithm, str):
            name = check.choice("AdaptiveLimit.algorithm", algorithm, ALGORITHMS)
            for option, value in options.items():
                if option not in _OPTIONS[name]:
                    raise ConfigurationError(
                        f"AdaptiveLimit.{option}", value, f"not an option of {name!r}"
                    )
            if name == "gradient2":
                impl = Gradient2(**options)  # type: ignore[arg-type]
            elif name == "vegas":
                impl = Vegas(**options)  # type: ignore[arg-type]
            else:
                impl = AIMD(**options)
        else:
            if not callable(getattr(algorithm, "update", None)):
                raise ConfigurationError(
                    "AdaptiveLimit.algorithm",
                    algorithm,
                    f"expected one of {ALGORITHMS} or a LimitAlgorithm",
                )
            for option, value in options.items():
                raise ConfigurationError(
                    f"AdaptiveLimit.{option}", value, "configure the algorithm object instead"
                )
            impl = algorithm
            name = type(algorithm).__name__.lower()
        self.algorithm_name = name
        self._algorithm = impl
        self.min_limit = check.integer("AdaptiveLimit.min_limit", min_limit, minimum=1)
        self.max_limit = check.integer("AdaptiveLimit.max_limit", max_limit, minimum=1)
        if self.max_limit < self.min_limit:
            raise ConfigurationError(
                "AdaptiveLimit.max_limit", max_limit, f"must be >= min_limit ({min_limit})"
            )
        initial = check.integer("AdaptiveLimit.initial_limit", initial_limit, minimum=1)
        if not self.min_limit <= initial <= self.max_limit:
            raise ConfigurationError(
                "AdaptiveLimit.initial_limit",
                initial_limit,
                f"must be within [min_limit, max_limit] = [{min_limit}, {max_limit}]",
            )
        self._limit = float(initial)
        self.limit = initial
        """The current limit: calls admitted while fewer than this run."""
        self._owner: object | None = None

    @property
    def algorithm(self) -> LimitAlgorithm:
        """The algorithm object that adapts the limit."""
        return self._algorithm

    def update(self, rtt: float, inflight: int, dropped: bool = False) -> int:
        """Learn from one completed call; return the new (whole) limit.

        Args:
            rtt: seconds the call held its slot.
            inflight: calls holding a slot when it completed, itself included.
            dropped: the call timed out or was refused downstream.
        """
        current = self._limit
        new = self._algorithm.update(current, rtt, inflight, dropped)
        if new == current:
            return self.limit
        # Clamped here, whatever the algorithm returns (NaN included): the bounds are a
        # promise to the operator, not a property each algorithm must keep.
        if not new >= self.min_limit:
            new = float(self.min_limit)
        elif new > self.max_limit:
            new = float(self.max_limit)
        self._limit = new
        limit = self.limit = int(new)
        return limit

    def claim(self, owner: object, parameter: str) -> None:
        """Bind this limit to the one policy that uses it.

        Raises:
            ConfigurationError: another policy already uses it.
        """
        if self._owner is not None and self._owner is not owner:
            raise ConfigurationError(
                parameter, self, "this AdaptiveLimit is already used by another bulkhead"
            )
        self._owner = owner

    def __repr__(self) -> str:
        return (
            f"AdaptiveLimit({self.algorithm_name!r}, limit={self.limit}, "
            f"min_limit={self.min_limit}, max_limit={self.max_limit})"
        )

"""``Throttle``: client-side adaptive throttling (Google SRE book, "Handling Overload").

Each client counts, over a sliding window, the requests it attempted and the ones the upstream
accepted. While the upstream accepts most of them nothing happens. When it sheds (429, 503),
the client itself refuses new requests, before sending them, with probability

    max(0, (requests - k * accepts) / (requests + 1))

so an overloaded upstream receives about ``k`` times what it accepts instead of every retry of
every client. Refused requests count as requests: the longer the upstream sheds, the more the
client refuses; once it accepts again the probability falls back as the window slides.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, final

from . import _validate as check
from ._classify import Outcome
from ._clock import SYSTEM_CLOCK, Clock
from ._context import Context
from ._events import report_rejection
from ._exceptions import ConfigurationError, RateLimitedError, RejectedError
from ._pipeline import Call, PolicyDecorator

__all__ = ["Throttle", "ThrottleSnapshot", "is_overload"]

OVERLOAD_STATUSES: Final = frozenset({429, 503})
_RECENT_MINIMUM: Final = 10  # requests a bucket needs before its own ratio is trusted


def _status(value: object) -> object:
    status = getattr(value, "status_code", None)
    return getattr(value, "status", None) if status is None else status


def is_overload(outcome: Outcome) -> bool:
    """The default test of an upstream's shed: status 429 or 503.

    Looks at the returned value's ``status_code`` (or ``status``; an ``httpx.Response``, an
    aiohttp response) and, for an exception, at its own status or its ``response``'s (an
    ``httpx.HTTPStatusError``). Anything else, errors and timeouts included, means the
    upstream took the request.
    """
    exc = outcome.exception
    if exc is None:
        return _status(outcome.result) in OVERLOAD_STATUSES
    if _status(exc) in OVERLOAD_STATUSES:
        return True
    return _status(getattr(exc, "response", None)) in OVERLOAD_STATUSES


@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottleSnapshot:
    """The window now.

    Attributes:
        requests: requests attempted in the window (refused locally included).
        accepts: requests the upstream accepted in the window.
        rejection_probability: the chance the next request is refused locally.
    """

    requests: int
    accepts: int
    rejection_probability: float


@final
class Throttle(PolicyDecorator):
    """Refuse requests locally while the upstream sheds load (SRE adaptive throttling).

    Counts requests and the upstream's accepts over the last ``window`` seconds and refuses a
    new request, without calling it, with probability ``max(0, (requests - k * accepts) /
    (requests + 1))``, at most ``max_rejection``. A refusal raises ``RateLimitedError``
    (``policy`` = this throttle's name; a ``RejectedError``, so a retry does not retry it).

    What counts as "rejected by the upstream" is ``overload(outcome)``: by default status 429
    or 503 on the result (an ``httpx.Response``) or on the exception (``HTTPStatusError``).
    Pass your own for other protocols, for example ``overload=lambda o: isinstance(
    o.exception, grpc.aio.AioRpcError) and o.exception.code() == RESOURCE_EXHAUSTED``.
    Refusals by policies inside this one (an open circuit, a full bulkhead) never reached the
    upstream and are not counted; cancelled calls are not counted either.

    Memory is bounded: ``buckets`` counters, whatever the traffic.

    Args:
        k: how many requests the client may send per accepted one before refusing, > 1
            (SRE: 2; lower is more aggressive, 1.1 suits an expensive upstream).
        window: seconds of history (SRE: 2 minutes; default 120).
        buckets: slices the window is counted in (the window slides by ``window/buckets``).
        max_rejection: the highest refusal probability, in (0, 1]; below 1 some requests
            always probe the upstream so a recovery is seen at once (failsafe-go: 0.9).
        overload: ``Outcome -> bool``: the upstream shed this request.
        clock: clock when used outside a pipeline; in a pipeline, the pipeline's.
        name: the policy's name in events, errors and telemetry.

    Raises:
        ConfigurationError: an option is out of range or of the wrong type.
    """

    __slots__ = (
        "_accepts",
        "_clock",
        "_k",
        "_max_rejection",
        "_overload",
        "_requests",
        "_slot",
        "_total_accepts",
        "_total_requests",
        "_width",
        "name",
    )

    deadline_aware: ClassVar[bool] = True

    def __init__(
        self,
        *,
        k: float = 2.0,
        window: float = 120.0,
        buckets: int = 12,
        max_rejection: float = 0.9,
        overload: Callable[[Outcome], bool] = is_overload,
        clock: Clock | None = None,
        name: str = "throttle",
    ) -> None:
        self.name = check.name("Throttle.name", name)
        self._k = check.number("Throttle.k", k, minimum=1.0, inclusive=False)
        window = check.positive("Throttle.window", window)
        count = check.integer("Throttle.buckets", buckets, minimum=1, maximum=10_000)
        self._max_rejection = check.fraction("Throttle.max_rejection", max_rejection)
        self._overload = check.callable_("Throttle.overload", overload)
        if clock is not None and not callable(getattr(clock, "now", None)):
            raise ConfigurationError("Throttle.clock", clock, "expected a Clock")
        self._clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        self._width = window / count
        self._requests = [0] * count
        self._accepts = [0] * count
        self._slot = -(2**62)  # the newest slice counted (none yet)
        self._total_requests = 0
        self._total_accepts = 0

    @property
    def k(self) -> float:
        """Requests allowed per accepted request before local refusals start."""
        return self._k

    @property
    def window(self) -> float:
        """Seconds of history."""
        return self._width * len(self._requests)

    # -- the window -----------------------------------------------------------------------

    def _bucket(self, now: float) -> int:
        """The bucket of ``now``, with every bucket older than the window emptied."""
        slot = math.floor(now / self._width)
        last = self._slot
        n = len(self._requests)
        if slot > last:
            # Empty the buckets that fell out of the window: at most n of them.
            for s in range(max(last + 1, slot - n + 1), slot + 1):
                i = s % n
                self._total_requests -= self._requests[i]
                self._total_accepts -= self._accepts[i]
                self._requests[i] = self._accepts[i] = 0
            self._slot = last = slot
        # A clock going backwards (a new FakeClock) keeps counting in the newest bucket.
        return last % n

    def rejection_probability(self, now: float | None = None) -> float:
        """The chance the next request is refused locally (at ``now`` on the clock)."""
        self._bucket(self._clock.now() if now is None else now)
        return self._probability()

    def _probability(self) -> float:
        requests = self._total_requests
        k = self._k
        p = (requests - k * self._total_accepts) / (requests + 1)
        if p <= 0.0:
            return 0.0
        # The same ratio over the last full bucket alone, once it saw enough requests: when the
        # upstream recovers, the window still remembers a minute of refusals, but the last
        # bucket already shows the accepts; taking the lower of the two, the share sent about
        # doubles each bucket, so the client is back to sending everything within a window.
        i = (self._slot - 1) % len(self._requests)
        recent = self._requests[i]
        if recent >= _RECENT_MINIMUM:
            p = min(p, (recent - k * self._accepts[i]) / (recent + 1))
            if p <= 0.0:
                return 0.0
        return min(p, self._max_rejection)

    def record(self, accepted: bool, now: float | None = None) -> None:
        """Count one request the upstream ``accepted`` or not (for integrations and tests)."""
        i = self._bucket(self._clock.now() if now is None else now)
        self._requests[i] += 1
        self._total_requests += 1
        if accepted:
            self._accepts[i] += 1
            self._total_accepts += 1

    def snapshot(self, now: float | None = None) -> ThrottleSnapshot:
        """Requests, accepts and the refusal probability over the window now."""
        probability = self.rejection_probability(now)
        return ThrottleSnapshot(
            requests=self._total_requests,
            accepts=self._total_accepts,
            rejection_probability=probability,
        )

    # -- the policy ---------------------------------------------------------------------------

    async def execute(self, call: Call, ctx: Context, /) -> Any:
        """Run ``call`` unless refused locally; count the outcome.

        Raises:
            RateLimitedError: refused locally (the upstream sheds load).
        """
        clock = ctx.clock
        i = self._bucket(clock.now())
        if self._total_requests > self._k * self._total_accepts:  # else p == 0: no draw
            p = self._probability()
            if ctx.random() < p:
                self._requests[i] += 1
                self._total_requests += 1
                raise self._refuse(ctx, p)
        try:
            result = await call(ctx)
        except Exception as exc:
            shed = self._overload(Outcome(exception=exc))
            if shed or not isinstance(exc, RejectedError) or isinstance(exc, TimeoutError):
                self.record(not shed, clock.now())
            # else a policy inside refused (open circuit, full bulkhead): it never left
            raise
        self.record(not self._overload(Outcome(result=result)), clock.now())
        return result

    def _refuse(self, ctx: Context, p: float) -> RateLimitedError:
        exc = RateLimitedError(
            f"throttle {self.name!r}: the upstream is shedding load; refused locally "
            f"(p={p:.2f} over the last {self.window:g}s)",
            policy=self.name,
        )
        if ctx.listening:
            report_rejection(ctx, self.name, exc, reason="throttled", retry_after=None)
        return exc

    def __repr__(self) -> str:
        return f"Throttle(k={self._k:g}, window={self.window:g}, name={self.name!r})"

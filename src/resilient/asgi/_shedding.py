"""Overload control for the middleware: adaptive limits and criticality, on the Bulkhead's
public admission API (``acquire``, ``try_acquire(headroom=)``, ``release(latency=)``).

The middleware hands a request here instead of taking a slot inline when its
``max_concurrent`` is an ``AdaptiveLimit`` or when ``criticality`` is set:

- **critical** requests use the whole limit and may queue for a slot;
- **default** requests take a slot only while ``critical_reserve`` of the limit stays free, and
  never queue (they would queue ahead of critical ones);
- **sheddable** requests take a slot only while twice that stays free, and never queue.

So as load grows the sheddable requests are refused first, then the default ones, and the
reserve is left to critical requests. Without ``criticality`` every request is treated as the
middleware always did (all may queue), and only the latency is reported.

Each request that ran reports its latency to the adaptive limit; one the middleware's timeout
or the client's disconnect cut (a cancellation) or that raised a timeout or refusal reports a
drop. Health paths never get here (``exclude``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, MutableMapping
from typing import Any, Final, final

from resilient import (
    AdaptiveLimit,
    Bulkhead,
    BulkheadFullError,
    ConfigurationError,
    RejectedError,
    TimeoutExceeded,
)
from resilient import _validate as check
from resilient.extend import Clock

__all__ = ["CRITICALITIES", "Shedding", "concurrency_limit"]

Scope = MutableMapping[str, Any]
CRITICALITIES: Final = ("critical", "default", "sheddable")
_CRITICAL: Final = 0
_DEFAULT: Final = 1
_BY_NAME: Final = {name.encode(): rank for rank, name in enumerate(CRITICALITIES)}
_BY_TEXT: Final = dict(enumerate(CRITICALITIES))
_TEXT_RANK: Final = {name: rank for rank, name in enumerate(CRITICALITIES)}


def concurrency_limit(parameter: str, value: object) -> int | AdaptiveLimit:
    """``max_concurrent``: a whole number >= 1 or an ``AdaptiveLimit``.

    Raises:
        ConfigurationError: anything else.
    """
    if isinstance(value, AdaptiveLimit):
        return value
    return check.integer(parameter, value, minimum=1)


@final
class Shedding:
    """Admission by criticality and latency reporting for one middleware's bulkhead."""

    __slots__ = ("_bulkhead", "_clock", "_function", "_header", "_reserve")

    def __init__(
        self,
        bulkhead: Bulkhead,
        *,
        criticality: str | Callable[[Scope], str | None] | None,
        critical_reserve: float,
        clock: Clock,
        parameter: str = "ResilienceMiddleware.",
    ) -> None:
        self._bulkhead = bulkhead
        self._clock = clock
        self._header: bytes | None = None
        self._function: Callable[[Scope], str | None] | None = None
        if isinstance(criticality, str):
            if not criticality or not criticality.isascii() or " " in criticality:
                raise ConfigurationError(
                    parameter + "criticality", criticality, "expected a header name"
                )
            self._header = criticality.lower().encode("ascii")
        elif callable(criticality):
            self._function = criticality
        elif criticality is not None:
            raise ConfigurationError(
                parameter + "criticality",
                criticality,
                "expected a header name, a function scope -> 'critical'|'default'|'sheddable', "
                "or None",
            )
        self._reserve = check.number(
            parameter + "critical_reserve", critical_reserve, minimum=0.0, maximum=0.5
        )

    @classmethod
    def create(
        cls,
        bulkhead: Bulkhead | None,
        *,
        criticality: str | Callable[[Scope], str | None] | None,
        critical_reserve: float,
        clock: Clock,
        parameter: str = "ResilienceMiddleware.",
    ) -> Shedding | None:
        """The helper when the middleware needs one (an adaptive limit or criticality).

        Raises:
            ConfigurationError: ``criticality`` without ``max_concurrent``, or a bad option.
        """
        if bulkhead is None:
            if criticality is not None:
                raise ConfigurationError(
                    parameter + "criticality", criticality, "needs max_concurrent to be set"
                )
            return None
        if criticality is None and bulkhead.adaptive_limit is None:
            check.number(parameter + "critical_reserve", critical_reserve, maximum=0.5)
            return None
        return cls(
            bulkhead,
            criticality=criticality,
            critical_reserve=critical_reserve,
            clock=clock,
            parameter=parameter,
        )

    def criticality(self, scope: Scope) -> str:
        """The request's class: ``"critical"``, ``"default"`` or ``"sheddable"``.

        Unknown or missing values are ``"default"``.
        """
        return _BY_TEXT[self._rank(scope)]

    def _rank(self, scope: Scope) -> int:
        header = self._header
        if header is not None:
            for name, value in scope.get("headers", ()):
                if name == header:
                    return _BY_NAME.get(value.strip().lower(), _DEFAULT)
            return _DEFAULT
        function = self._function
        if function is not None:
            label = function(scope)
            return _DEFAULT if label is None else _TEXT_RANK.get(str(label).lower(), _DEFAULT)
        return _DEFAULT

    async def run(
        self, app: Any, scope: Scope, receive: Any, send: Any
    ) -> str | RejectedError | None:
        """Admit the request by its class, run ``app``, report its latency.

        Returns:
            ``None`` once the app ran; else why it never ran, as the middleware's other
            refusals: ``"full"`` (refused at once: no slot its class may take, or the waiting
            room is full), ``"wait_timeout"`` (it waited and no slot came, or the queue
            discipline shed it), or the ``TimeoutExceeded`` of its deadline.
        """
        bulkhead = self._bulkhead
        classified = self._header is not None or self._function is not None
        rank = self._rank(scope) if classified else _CRITICAL
        if rank == _CRITICAL:
            if not bulkhead.try_acquire():
                if bulkhead.max_wait <= 0.0 or (
                    bulkhead.snapshot().waiting >= bulkhead.max_waiting
                ):
                    return "full"
                try:
                    await bulkhead.acquire()  # bounded by max_wait and the deadline
                except BulkheadFullError:
                    return "wait_timeout"
                except TimeoutExceeded as exc:
                    return exc
        elif not bulkhead.try_acquire(
            headroom=math.ceil(bulkhead.max_concurrent * self._reserve * rank)
        ):
            return "full"  # the slots left are kept for more critical requests
        clock = self._clock
        start = clock.now()
        try:
            await app(scope, receive, send)
        except (TimeoutError, RejectedError):
            bulkhead.release(latency=clock.now() - start, dropped=True)
            raise
        except Exception:
            bulkhead.release()  # the app's own bug says nothing about load
            raise
        except BaseException:
            # Cancelled: the middleware's timeout fired or the client left. Both mostly mean
            # "too slow"; either way the slot is given back.
            bulkhead.release(latency=clock.now() - start, dropped=True)
            raise
        bulkhead.release(latency=clock.now() - start)
        return None

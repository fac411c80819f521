"""What a request through ``ResilientTransport`` raises: the library's errors, in httpx's tree.

Each refusal a policy raises inside the transport (an open circuit, a full bulkhead, no rate
limit token, a timeout) reaches the caller as a class that is both the library's exception
and an ``httpx.TransportError``, so ``except httpx.HTTPError`` handlers written for plain
httpx keep catching everything a request can raise, and ``except resilient.CircuitOpenError``
keeps working too.
"""

from __future__ import annotations

import threading
from typing import Final, final

import httpx

import resilient

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
    "RateLimitedError",
    "RejectedError",
    "TimeoutExceeded",
]


class RejectedError(resilient.RejectedError, httpx.TransportError):
    """A policy refused a request: a ``resilient.RejectedError`` and an ``httpx.TransportError``.

    Raised (as a subclass of the policy's own exception class) for refusals that have no
    dedicated class below, such as a user-written policy's.
    """


@final
class CircuitOpenError(resilient.CircuitOpenError, RejectedError):
    """The host's circuit is open: a ``resilient.CircuitOpenError`` and an httpx error."""


@final
class BulkheadFullError(resilient.BulkheadFullError, RejectedError):
    """No concurrency slot: a ``resilient.BulkheadFullError`` and an httpx error."""


@final
class RateLimitedError(resilient.RateLimitedError, RejectedError):
    """No rate-limit token in time: a ``resilient.RateLimitedError`` and an httpx error."""


@final
class TimeoutExceeded(resilient.TimeoutExceeded, RejectedError, httpx.TimeoutException):
    """A resilient deadline cut the request: a ``resilient.TimeoutExceeded`` (so a builtin
    ``TimeoutError``) and an ``httpx.TimeoutException``."""


_KNOWN: Final[dict[type[BaseException], type[RejectedError]]] = {
    resilient.CircuitOpenError: CircuitOpenError,
    resilient.BulkheadFullError: BulkheadFullError,
    resilient.RateLimitedError: RateLimitedError,
    resilient.TimeoutExceeded: TimeoutExceeded,
    resilient.RejectedError: RejectedError,
}
_made: dict[type[BaseException], type[RejectedError]] = {}
_lock = threading.Lock()


def _reduce(self: resilient.RejectedError) -> tuple[object, ...]:
    # A made class has no importable name: pickle as the policy's own class, refined again
    # when loaded.
    original = type(self).__mro__[1]
    return (_restore, (original, self.args, dict(self.__dict__)))


def _restore(
    cls: type[resilient.RejectedError], args: tuple[object, ...], state: dict[str, object]
) -> resilient.RejectedError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(state)
    exc.__class__ = _http_class(cls)
    return exc


def _http_class(cls: type[resilient.RejectedError]) -> type[RejectedError]:
    known = _KNOWN.get(cls) or _made.get(cls)
    if known is not None:
        return known
    # Another RejectedError subclass (a user's policy): one httpx-flavoured subclass per class,
    # made once, so ``except ThatClass`` and ``except httpx.HTTPError`` both still match.
    bases: tuple[type, ...] = (cls, RejectedError)
    if issubclass(cls, TimeoutError):
        bases = (cls, RejectedError, httpx.TimeoutException)
    with _lock:
        made = _made.get(cls)
        if made is None:
            namespace = {"__module__": cls.__module__, "__slots__": (), "__reduce__": _reduce}
            made = type(cls.__name__, bases, namespace)
            _made[cls] = made
    return made


def as_http_error(exc: resilient.RejectedError, request: httpx.Request) -> BaseException:
    """``exc`` itself, now also an ``httpx.TransportError`` carrying ``request``.

    The class of the very exception the policy raised is refined in place, so its message,
    attributes (``retry_after``, ``state``...), notes and traceback are the policy's: no
    wrapper. An exception whose class cannot be refined is returned unchanged.
    """
    if isinstance(exc, httpx.HTTPError):
        return exc  # already both (a nested ResilientTransport refined it)
    try:
        exc.__class__ = _http_class(type(exc))
    except TypeError:  # pragma: no cover - a subclass with an incompatible layout (__slots__)
        return exc
    exc.request = request  # type: ignore[attr-defined]  # refined: now an httpx.RequestError
    return exc

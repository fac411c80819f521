"""The exception tree: everything the library raises derives from ``ResilientError``."""

from __future__ import annotations

import math
from typing import final

__all__ = [
    "BulkheadFullError",
    "CircuitOpenError",
    "ConfigurationError",
    "RateLimitedError",
    "RejectedError",
    "ResilientError",
    "TimeoutExceeded",
]


class ResilientError(Exception):
    """Root of every exception raised by resilient itself."""


class RejectedError(ResilientError):
    """A policy refused to run (or to finish) a call.

    Attributes:
        policy: name of the policy that refused.
        retry_after: seconds after which the same call may be admitted, when the policy knows
            (``None`` when it cannot tell).
    """

    def __init__(self, message: str, *, policy: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.policy = policy
        if retry_after is not None and not (retry_after >= 0.0 and math.isfinite(retry_after)):
            retry_after = None
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only constructors do not survive pickling by default (multiprocessing,
        # task queues); rebuild from the instance dict instead.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(
    cls: type[RejectedError], args: tuple[object, ...], state: dict[str, object]
) -> RejectedError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(state)
    return exc


class CircuitOpenError(RejectedError):
    """The circuit breaker is open (or half-open with every probe slot taken).

    Attributes:
        state: the breaker state that refused the call (``"open"``, ``"half_open"``,
            ``"forced_open"``).
        key: the partition key for keyed breakers, else ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        policy: str = "",
        retry_after: float | None = None,
        state: str = "open",
        key: str | None = None,
    ) -> None:
        super().__init__(message, policy=policy, retry_after=retry_after)
        self.state = state
        self.key = key


class BulkheadFullError(RejectedError):
    """Every concurrency slot is taken and the waiting room is full (or the wait ran out)."""


class RateLimitedError(RejectedError):
    """The rate limiter has no token for this call within its allowed wait."""


class TimeoutExceeded(RejectedError, TimeoutError):
    """A ``Timeout`` policy's own deadline fired.

    It is also a builtin ``TimeoutError`` so generic handlers catch it. A ``TimeoutError``
    raised by the wrapped code itself is never converted into this.

    Attributes:
        timeout: the configured seconds of the timeout that fired (``math.inf`` when the
            deadline came from an enclosing scope whose length is unknown).
    """

    def __init__(
        self,
        message: str,
        *,
        policy: str = "",
        retry_after: float | None = None,
        timeout: float = math.inf,
    ) -> None:
        super().__init__(message, policy=policy, retry_after=retry_after)
        self.timeout = timeout


@final
class ConfigurationError(ResilientError, ValueError):
    """An option given to a constructor is invalid.

    Raised at construction time, never per call. The message names the parameter and the
    value received.

    Attributes:
        parameter: the option's name, e.g. ``"Retry.attempts"``.
        value: the value that was refused.
    """

    def __init__(self, parameter: str, value: object, reason: str) -> None:
        super().__init__(f"{parameter}={value!r} is invalid: {reason}")
        self.parameter = parameter
        self.value = value

    def __reduce__(self) -> tuple[object, ...]:
        return (_config_error, (self.parameter, self.value, str(self)))


def _config_error(parameter: str, value: object, message: str) -> ConfigurationError:
    exc = ConfigurationError.__new__(ConfigurationError)
    ValueError.__init__(exc, message)
    exc.parameter = parameter
    exc.value = value
    return exc

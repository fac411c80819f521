"""Validation of constructor options: every refusal names the parameter and the value.

One rule for every public option (policies, ``standard()``, the middleware, the transport),
applied here so that every constructor gets it by calling these checks:

- a number must be a real number: ``bool`` (``attempts=True``), strings and ``None`` are
  refused where a number is wanted;
- NaN is refused everywhere; infinity only where the option says it means "no limit";
- a number is 0 or between ``SMALLEST`` (1e-9) and ``LARGEST`` (1e15) in size: below or
  above that, the arithmetic done on it (``1 / rate``, ``now + seconds``, a timer's tick
  count) overflows or loses all precision, and no real configuration needs it (1e-9 s is a
  nanosecond, 1e15 s is 30 million years; 1e15 tokens per second is a petabyte a second);
- a whole number is at most ``LARGEST`` too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

from ._exceptions import ConfigurationError

T = TypeVar("T")

SMALLEST = 1e-9
"""The smallest size of a non-zero number option."""

LARGEST = 1e15
"""The largest finite number option (and whole-number option)."""


def _is_real(value: object) -> bool:
    # bool is an int, but `Retry(attempts=True)` is a mistake, not a number.
    return isinstance(value, int | float) and not isinstance(value, bool)


def number(
    parameter: str,
    value: object,
    *,
    minimum: float = 0.0,
    inclusive: bool = True,
    allow_inf: bool = False,
    maximum: float | None = None,
) -> float:
    """Return ``value`` as a float after checking it is a finite real in range.

    Raises:
        ConfigurationError: wrong type, NaN, infinity (unless allowed) or out of range.
    """
    if not _is_real(value):
        raise ConfigurationError(parameter, value, f"expected a number, got {type(value).__name__}")
    try:
        result = float(value)  # type: ignore[arg-type]
    except OverflowError:  # an int beyond the float range
        raise ConfigurationError(parameter, value, f"must be <= {LARGEST:g}") from None
    if math.isnan(result):
        raise ConfigurationError(parameter, value, "NaN is not a valid number")
    if math.isinf(result) and not (allow_inf and result > 0):
        raise ConfigurationError(parameter, value, "must be finite")
    if inclusive and result < minimum:
        raise ConfigurationError(parameter, value, f"must be >= {minimum:g}")
    if not inclusive and result <= minimum:
        raise ConfigurationError(parameter, value, f"must be > {minimum:g}")
    if maximum is not None and result > maximum:
        raise ConfigurationError(parameter, value, f"must be <= {maximum:g}")
    if result != 0.0 and not math.isinf(result):
        size = abs(result)
        if size < SMALLEST:
            raise ConfigurationError(
                parameter, value, f"must be 0 or at least {SMALLEST:g} (arithmetic on it overflows)"
            )
        if size > LARGEST:
            hint = " (math.inf means no limit)" if allow_inf else ""
            raise ConfigurationError(parameter, value, f"must be <= {LARGEST:g}{hint}")
    return result


def positive(parameter: str, value: object, *, allow_inf: bool = False) -> float:
    """A number strictly greater than zero."""
    return number(parameter, value, minimum=0.0, inclusive=False, allow_inf=allow_inf)


def non_negative(parameter: str, value: object, *, allow_inf: bool = False) -> float:
    """A number greater than or equal to zero."""
    return number(parameter, value, minimum=0.0, inclusive=True, allow_inf=allow_inf)


def fraction(parameter: str, value: object, *, allow_zero: bool = False) -> float:
    """A number in (0, 1], or [0, 1] when ``allow_zero``."""
    return number(parameter, value, minimum=0.0, inclusive=allow_zero, maximum=1.0)


def integer(parameter: str, value: object, *, minimum: int = 1, maximum: int | None = None) -> int:
    """A whole number (``bool`` refused) in range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(
            parameter, value, f"expected an integer, got {type(value).__name__}"
        )
    if value < minimum:
        raise ConfigurationError(parameter, value, f"must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigurationError(parameter, value, f"must be <= {maximum}")
    if value > LARGEST:
        raise ConfigurationError(parameter, value, f"must be <= {int(LARGEST)}")
    return value


def name(parameter: str, value: object) -> str:
    """A non-empty string used as a bounded telemetry attribute."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(parameter, value, "expected a non-empty string")
    return value


def choice(parameter: str, value: object, allowed: tuple[str, ...]) -> str:
    """One of a fixed set of strings."""
    if value not in allowed:
        raise ConfigurationError(parameter, value, f"expected one of {', '.join(allowed)}")
    return str(value)


def callable_(parameter: str, value: T) -> T:
    """Any callable."""
    if not callable(value):
        raise ConfigurationError(parameter, value, "expected a callable")
    return value


def renamed(options: dict[str, str], build: Callable[[], T], *, prefix: str) -> T:
    """``build()``, with a ``ConfigurationError`` about an inner parameter renamed.

    A preset (``standard()``) builds policies from its own options; an error must name the
    option the caller wrote (``standard.attempt_timeout``), not the policy's parameter
    (``Timeout.seconds``). ``options`` maps inner parameters to the caller's option names.
    """
    try:
        return build()
    except ConfigurationError as exc:
        option = options.get(exc.parameter)
        if option is None:
            raise
        _, _, reason = str(exc).partition(" is invalid: ")
        raise ConfigurationError(f"{prefix}.{option}", exc.value, reason) from None


def optional(check: Callable[..., T], parameter: str, value: object, **kwargs: Any) -> T | None:
    """Apply ``check`` unless ``value`` is ``None``."""
    if value is None:
        return None
    return check(parameter, value, **kwargs)

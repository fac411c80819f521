"""Validation of constructor options: every refusal names the parameter and the value."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

from ._exceptions import ConfigurationError

T = TypeVar("T")


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
    except OverflowError:  # an int beyond any float
        raise ConfigurationError(parameter, value, "must be finite") from None
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


def optional(check: Callable[..., T], parameter: str, value: object, **kwargs: Any) -> T | None:
    """Apply ``check`` unless ``value`` is ``None``."""
    if value is None:
        return None
    return check(parameter, value, **kwargs)

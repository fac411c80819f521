"""HTTP classification: the status table, transport errors, ``Retry-After`` and idempotency."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, final

import httpx

from resilient._classify import Classification, Classifier, Outcome, Rule, Verdict, on_exception

__all__ = [
    "FAILURE_STATUSES",
    "TRANSIENT_STATUSES",
    "http_classifier",
    "parse_retry_after",
    "retry_after_seconds",
]

TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
"""Statuses a retry may fix: TRANSIENT (retried, count against the dependency)."""

FAILURE_STATUSES = frozenset({501, 505})
"""Server errors a retry cannot fix: FAILURE (not retried, count against the dependency).

Every other 5xx is a FAILURE too; every other 4xx is a CLIENT_ERROR; 1xx, 2xx and 3xx are
SUCCESS.
"""

_HINTED_STATUSES = frozenset({429, 503})

# Failures where the request provably never reached the server: no connection was obtained.
NEVER_SENT: tuple[type[BaseException], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)

_SUCCESS = Classification(Verdict.SUCCESS)
_CLIENT_ERROR = Classification(Verdict.CLIENT_ERROR)
_TRANSIENT = Classification(Verdict.TRANSIENT)
_FAILURE = Classification(Verdict.FAILURE)


def _status_table() -> tuple[Classification, ...]:
    table = []
    for status in range(600):
        if status in TRANSIENT_STATUSES:
            table.append(_TRANSIENT)
        elif status >= 500:
            table.append(_FAILURE)
        elif status >= 400:
            table.append(_CLIENT_ERROR)
        else:
            table.append(_SUCCESS)
    return tuple(table)


_TABLE = _status_table()


def _http_date(value: str, now: float) -> float | None:
    # email.utils parses the three HTTP-date formats of RFC 9110 (IMF-fixdate, RFC 850 and
    # asctime) and tolerates numeric zones; every HTTP-date is UTC, and asctime has no zone.
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    year = parsed[0]
    _, comma, rest = value.partition(",")
    date = rest.split(maxsplit=1)[0] if comma and rest.strip() else ""
    if date.count("-") == 2 and len(date.rsplit("-", 1)[1]) == 2:
        # RFC 850 has a two-digit year: RFC 9110 section 5.6.7 reads one that would be more
        # than 50 years in the future as the most recent past year with those digits.
        this_year = time.gmtime(now).tm_year
        year = this_year - this_year % 100 + year % 100
        if year > this_year + 50:
            year -= 100
    month, day, hour, minute, second = parsed[1:6]
    # datetime validates every field (timegm would quietly roll 32 January into February).
    at = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=UTC)
    return at.timestamp() - (parsed[9] or 0)


def parse_retry_after(value: str, *, now: float) -> float | None:
    """Seconds to wait according to a ``Retry-After`` header value, or ``None`` if malformed.

    Accepts delay-seconds (``"120"``; a decimal fraction is tolerated) and an HTTP-date in any
    of the three formats of RFC 9110 (IMF-fixdate ``Sun, 06 Nov 1994 08:49:37 GMT``, RFC 850
    ``Sunday, 06-Nov-94 08:49:37 GMT`` and asctime ``Sun Nov  6 08:49:37 1994``). A date in
    the past gives ``0.0``.

    Args:
        value: the header value.
        now: the current wall-clock time in seconds since the epoch (HTTP-dates are absolute).
    """
    text = value.strip()
    if not text or len(text) > 64:
        return None
    if text[0].isdigit():
        return _delay_seconds(text)
    try:
        at = _http_date(text, now)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    if at is None:
        return None
    return max(0.0, at - now)


def _delay_seconds(text: str) -> float | None:
    # delay-seconds: digits, with one decimal fraction tolerated ("1.5", never "1." or "1e3").
    if not text.replace(".", "", 1).isdigit() or text.endswith("."):
        return None
    try:
        seconds = float(text)
    except (ValueError, OverflowError):
        return None
    return seconds if math.isfinite(seconds) else None


def retry_after_seconds(
    response: httpx.Response, *, wall_clock: Callable[[], float] = time.time
) -> float | None:
    """The ``Retry-After`` hint of a response in seconds, or ``None`` (absent or malformed).

    Args:
        response: the response to read.
        wall_clock: current time in seconds since the epoch, for HTTP-date values.
    """
    value = response.headers.get("retry-after")
    if value is None:
        return None
    return parse_retry_after(value, now=wall_clock())


@final
class _StatusRule:
    """The status table as one rule: a single lookup per response."""

    __slots__ = ("_wall_clock",)

    handles_exceptions = False
    handles_results = True

    def __init__(self, wall_clock: Callable[[], float]) -> None:
        self._wall_clock = wall_clock

    def match_exception(self, exc: BaseException, /) -> Classification | None:
        return None

    def match_result(self, result: object, /) -> Classification | None:
        if not isinstance(result, httpx.Response):
            return None
        status = result.status_code
        if status in _HINTED_STATUSES:
            value = result.headers.get("retry-after")
            if value is not None:
                hint = parse_retry_after(value, now=self._wall_clock())
                if hint is not None:
                    return Classification(Verdict.TRANSIENT, hint)
            return _TRANSIENT
        if 100 <= status < 600:
            return _TABLE[status]
        return _FAILURE  # not an HTTP status at all


def http_classifier(
    *rules: Rule | Callable[[Outcome], Classification | Verdict | None],
    wall_clock: Callable[[], float] | None = None,
) -> Classifier:
    """The HTTP classification ``ResilientTransport`` uses unless told otherwise.

    ==================================================  ============
    outcome                                             verdict
    ==================================================  ============
    1xx, 2xx, 3xx                                       SUCCESS
    408, 425, 429, 500, 502, 503, 504                   TRANSIENT
    501, 505 and every other 5xx                        FAILURE
    every other 4xx (400, 401, 403, 404, 409, 422 ...)  CLIENT_ERROR
    connect errors, connect and pool timeouts           TRANSIENT
    read / write errors and timeouts, server hang-ups   TRANSIENT
    an invalid request (unsupported scheme, bad header) CLIENT_ERROR
    anything else                                       the core defaults
    ==================================================  ============

    A ``Retry-After`` header on a 429 or 503 (delay-seconds or an HTTP-date) becomes the
    classification's ``retry_after`` hint; malformed values are ignored.

    Args:
        *rules: your own rules (``on_result`` / ``on_exception`` / functions), tried first:
            they override any row of the table.
        wall_clock: current time in seconds since the epoch, for ``Retry-After`` dates
            (default ``time.time``; inject one in tests).

    Raises:
        ConfigurationError: a rule that is not a rule.
    """
    status_rule: Any = _StatusRule(wall_clock if wall_clock is not None else time.time)
    return Classifier(
        *rules,
        status_rule,
        on_exception(httpx.TimeoutException, httpx.NetworkError, verdict=Verdict.TRANSIENT),
        on_exception(httpx.RemoteProtocolError, verdict=Verdict.TRANSIENT),
        on_exception(
            httpx.UnsupportedProtocol, httpx.LocalProtocolError, verdict=Verdict.CLIENT_ERROR
        ),
    )


@final
class NotRetryable:
    """Wraps a classifier for a request that must not be sent twice.

    TRANSIENT becomes FAILURE (still a failure for breakers, never retried), except, when
    ``unsent_ok``, for failures where the request provably never left (``NEVER_SENT``).
    """

    __slots__ = ("_base", "_unsent_ok")

    def __init__(self, base: Any, *, unsent_ok: bool) -> None:
        self._base = base
        self._unsent_ok = unsent_ok

    def classify_result(self, result: object, /) -> Classification:
        found: Classification = self._base.classify_result(result)
        return _FAILURE if found.verdict is Verdict.TRANSIENT else found

    def classify_exception(self, exc: BaseException, /) -> Classification:
        found: Classification = self._base.classify_exception(exc)
        if found.verdict is not Verdict.TRANSIENT:
            return found
        if self._unsent_ok and isinstance(exc, NEVER_SENT):
            return found
        return _FAILURE

"""HTTP classification: the status table, transport errors, Retry-After and idempotency."""

from __future__ import annotations

import calendar
import contextlib
from typing import Any

import httpx
import pytest
import respx

import resilient
from resilient import Classification, Verdict, on_exception, on_result
from resilient.extend import Context
from resilient.httpx import (
    IDEMPOTENT_EXTENSION,
    ResilientTransport,
    http_classifier,
    parse_retry_after,
    retry_after_seconds,
)

NOW = float(calendar.timegm((2026, 3, 1, 12, 0, 0)))  # Sun, 01 Mar 2026 12:00:00 GMT

T = Verdict.TRANSIENT
F = Verdict.FAILURE
C = Verdict.CLIENT_ERROR
S = Verdict.SUCCESS


class Attempts:
    """A minimal retry policy for tests: retries what the call's classifier calls retryable."""

    name = "attempts"

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts
        self.seen: list[Classification] = []

    async def execute(self, call: Any, ctx: Context, /) -> Any:
        for attempt in range(1, self.attempts + 1):
            ctx.attempt = attempt
            try:
                result = await call(ctx)
            except Exception as exc:
                found = ctx.classifier.classify_exception(exc)
                self.seen.append(found)
                if attempt == self.attempts or not found.verdict.is_retryable:
                    raise
            else:
                found = ctx.classifier.classify_result(result)
                self.seen.append(found)
                if attempt == self.attempts or not found.verdict.is_retryable:
                    return result
            await ctx.clock.sleep(0.0)
        raise AssertionError("unreachable")


def _client(router: respx.MockRouter, policy: Any, **options: Any) -> httpx.AsyncClient:
    pipeline = resilient.Pipeline(policy, telemetry=False)
    transport = ResilientTransport(pipeline, httpx.MockTransport(router.async_handler), **options)
    return httpx.AsyncClient(transport=transport)


STATUS_TABLE = [
    (200, S),
    (201, S),
    (204, S),
    (301, S),
    (304, S),
    (400, C),
    (401, C),
    (403, C),
    (404, C),
    (409, C),
    (418, C),
    (422, C),
    (408, T),
    (425, T),
    (429, T),
    (500, T),
    (502, T),
    (503, T),
    (504, T),
    (501, F),
    (505, F),
    (507, F),
    (599, F),
]


@pytest.mark.parametrize(("status", "verdict"), STATUS_TABLE)
async def test_status_table_through_the_transport(status: int, verdict: Verdict) -> None:
    """Each status gets the verdict of the issue's table, as the pipeline sees it."""
    probe = Attempts(1)
    async with respx.mock(assert_all_called=True) as router:
        router.get("http://svc.test/item").mock(return_value=httpx.Response(status))
        async with _client(router, probe) as client:
            response = await client.get("http://svc.test/item")
    assert response.status_code == status
    assert [c.verdict for c in probe.seen] == [verdict]


TRANSPORT_ERRORS = [
    (httpx.ConnectError("refused"), T),
    (httpx.ConnectTimeout("slow connect"), T),
    (httpx.PoolTimeout("pool exhausted"), T),
    (httpx.ReadError("reset"), T),
    (httpx.WriteError("broken pipe"), T),
    (httpx.ReadTimeout("slow read"), T),
    (httpx.WriteTimeout("slow write"), T),
    (httpx.RemoteProtocolError("server disconnected"), T),
    (httpx.UnsupportedProtocol("ftp://"), C),
    (httpx.LocalProtocolError("bad header"), C),
    (httpx.DecodingError("bad gzip"), F),
    (RuntimeError("bug"), F),
]


@pytest.mark.parametrize(
    ("error", "verdict"), TRANSPORT_ERRORS, ids=[type(e).__name__ for e, _ in TRANSPORT_ERRORS]
)
async def test_transport_errors_through_the_transport(error: Exception, verdict: Verdict) -> None:
    """Connect, read and write failures are transient; an invalid request is the caller's."""
    probe = Attempts(1)
    async with respx.mock() as router:
        router.get("http://svc.test/item").mock(side_effect=error)
        async with _client(router, probe) as client:
            with pytest.raises(type(error)):
                await client.get("http://svc.test/item")
    assert [c.verdict for c in probe.seen] == [verdict]


def test_user_rules_override_the_table() -> None:
    """Rules given to http_classifier are tried before the HTTP table."""
    classifier = http_classifier(
        on_result(lambda r: r.status_code == 404, verdict=Verdict.TRANSIENT),
        on_exception(httpx.ConnectError, verdict=Verdict.FAILURE),
    )
    assert classifier.classify_result(httpx.Response(404)).verdict is T
    assert classifier.classify_result(httpx.Response(400)).verdict is C
    assert classifier.classify_exception(httpx.ConnectError("x")).verdict is F
    assert classifier.classify_exception(httpx.ReadError("x")).verdict is T


def test_library_rejections_stay_rejected() -> None:
    """An open circuit or a timeout of ours keeps the core's verdicts under the HTTP rules."""
    classifier = http_classifier()
    open_circuit = resilient.CircuitOpenError("open", policy="breaker", key="svc.test")
    assert classifier.classify_exception(open_circuit).verdict is Verdict.REJECTED
    timeout = resilient.TimeoutExceeded("t", policy="timeout", timeout=1.0)
    assert classifier.classify_exception(timeout).verdict is T


def test_non_response_results_fall_to_the_defaults() -> None:
    """The HTTP table only speaks for httpx responses."""
    assert http_classifier().classify_result("not a response").verdict is S


# --- Retry-After -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("Sun, 01 Mar 2026 12:00:30 GMT", 30.0),  # IMF-fixdate
        ("Sunday, 01-Mar-26 12:00:30 GMT", 30.0),  # RFC 850
        ("Sun Mar  1 12:00:30 2026", 30.0),  # asctime
        ("Sun, 01 Mar 2026 12:02:00 GMT", 120.0),
        ("Sun, 01 Mar 2026 11:00:00 GMT", 0.0),  # in the past: retry now
        ("Sun, 01 Mar 2026 13:00:30 +0100", 30.0),  # a numeric zone is tolerated
    ],
)
def test_retry_after_formats(value: str, seconds: float) -> None:
    """Delta-seconds and the three HTTP-date formats of RFC 9110 give seconds to wait."""
    assert parse_retry_after(value, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "-5",
        "soon",
        "1e3",
        "12abc",
        "1.",
        "1.2.3",
        "9" * 5000,
        "Sun, 32 Mar 2026 12:00:30 GMT",
        "Sun, 01 Foo 2026 12:00:30 GMT",
        "Sun, 01 Mar 2026",
        "Sun, 01 Mar 2026 25:00:00 GMT",
    ],
)
def test_malformed_retry_after_is_ignored(value: str) -> None:
    """A value that is neither delta-seconds nor a valid HTTP-date gives no hint."""
    assert parse_retry_after(value, now=NOW) is None


def test_rfc850_two_digit_years_follow_rfc9110() -> None:
    """A two-digit year more than 50 years ahead means the previous century."""
    # 2070 is 44 years after 2026: still the future.
    assert parse_retry_after("Tuesday, 01-Jan-70 00:00:00 GMT", now=NOW) == pytest.approx(
        calendar.timegm((2070, 1, 1, 0, 0, 0)) - NOW
    )
    # 2080 would be 54 years ahead: read as 1980, in the past.
    assert parse_retry_after("Tuesday, 01-Jan-80 00:00:00 GMT", now=NOW) == 0.0


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_becomes_the_hint_on_429_and_503(status: int) -> None:
    """The hint uses the injected wall clock for HTTP-dates."""
    classifier = http_classifier(wall_clock=lambda: NOW)
    seconds = httpx.Response(status, headers={"Retry-After": "3"})
    dated = httpx.Response(status, headers={"Retry-After": "Sun, 01 Mar 2026 12:00:09 GMT"})
    garbage = httpx.Response(status, headers={"Retry-After": "later"})
    assert classifier.classify_result(seconds) == Classification(T, 3.0)
    assert classifier.classify_result(dated) == Classification(T, 9.0)
    assert classifier.classify_result(garbage) == Classification(T, None)


def test_retry_after_is_ignored_on_other_statuses() -> None:
    """Only 429 and 503 carry a Retry-After hint."""
    classifier = http_classifier(wall_clock=lambda: NOW)
    response = httpx.Response(500, headers={"Retry-After": "3"})
    assert classifier.classify_result(response) == Classification(T, None)


def test_retry_after_seconds_reads_a_response() -> None:
    """The helper for custom classifiers reads the header with the given clock."""
    response = httpx.Response(429, headers={"Retry-After": "Sun Mar  1 12:01:00 2026"})
    assert retry_after_seconds(response, wall_clock=lambda: NOW) == 60.0
    assert retry_after_seconds(httpx.Response(429)) is None


# --- idempotency --------------------------------------------------------------------------

IDEMPOTENT = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]
FAILURES: list[tuple[str, Any]] = [
    ("503", httpx.Response(503)),
    ("read-error", httpx.ReadError("reset")),
    ("read-timeout", httpx.ReadTimeout("slow")),
    ("connect-error", httpx.ConnectError("refused")),
    ("pool-timeout", httpx.PoolTimeout("busy")),
]
NEVER_SENT = {"connect-error", "pool-timeout"}


async def _sends(method: str, failure: Any, **request: Any) -> tuple[int, Verdict]:
    probe = Attempts(3)
    async with respx.mock() as router:
        route = router.route(method=method, url="http://svc.test/thing")
        if isinstance(failure, httpx.Response):
            route.mock(return_value=failure)
        else:
            route.mock(side_effect=failure)
        async with _client(router, probe, **request.pop("transport", {})) as client:
            with contextlib.suppress(httpx.HTTPError):
                await client.request(method, "http://svc.test/thing", content=b"{}", **request)
        return route.call_count, probe.seen[-1].verdict


@pytest.mark.parametrize("method", IDEMPOTENT)
@pytest.mark.parametrize(("name", "failure"), FAILURES, ids=[n for n, _ in FAILURES])
async def test_idempotent_methods_are_retried(method: str, name: str, failure: Any) -> None:
    """GET, HEAD, OPTIONS, PUT, DELETE and TRACE are retried on every transient failure."""
    assert await _sends(method, failure) == (3, T)


@pytest.mark.parametrize("method", ["POST", "PATCH"])
@pytest.mark.parametrize(("name", "failure"), FAILURES, ids=[n for n, _ in FAILURES])
async def test_post_and_patch_are_retried_only_when_never_sent(
    method: str, name: str, failure: Any
) -> None:
    """Without opt-in, POST/PATCH fail once as FAILURE unless the request never left."""
    expected = (3, T) if name in NEVER_SENT else (1, F)
    assert await _sends(method, failure) == expected


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_idempotency_key_allows_retries(method: str) -> None:
    """An Idempotency-Key header makes a POST or PATCH retryable."""
    sent = await _sends(method, httpx.Response(503), headers={"Idempotency-Key": "k-1"})
    assert sent == (3, T)


async def test_extension_opts_a_post_in() -> None:
    """The resilient.idempotent extension allows retries of one POST."""
    sent = await _sends("POST", httpx.Response(503), extensions={IDEMPOTENT_EXTENSION: True})
    assert sent == (3, T)


async def test_extension_opts_a_get_out() -> None:
    """resilient.idempotent=False forbids retries even of a GET."""
    sent = await _sends("GET", httpx.Response(503), extensions={IDEMPOTENT_EXTENSION: False})
    assert sent == (1, F)


async def test_retry_methods_opt_post_in_for_the_whole_transport() -> None:
    """retry_methods decides which methods are retried."""
    options = {"retry_methods": {"get", "post"}}
    assert await _sends("POST", httpx.Response(503), transport=options) == (3, T)
    assert await _sends("PUT", httpx.Response(503), transport=options) == (1, F)


async def test_idempotency_header_can_be_renamed_or_disabled() -> None:
    """idempotency_header names the opt-in header; None ignores it."""
    renamed = {"idempotency_header": "X-Request-Id"}
    disabled = {"idempotency_header": None}
    key = {"X-Request-Id": "r-1", "Idempotency-Key": "k-1"}
    assert await _sends("POST", httpx.Response(503), headers=key, transport=renamed) == (3, T)
    assert await _sends("POST", httpx.Response(503), headers=key, transport=disabled) == (1, F)


async def test_non_idempotent_client_errors_stay_client_errors() -> None:
    """A 404 on a POST is still the caller's mistake, not a dependency failure."""
    assert await _sends("POST", httpx.Response(404)) == (1, C)

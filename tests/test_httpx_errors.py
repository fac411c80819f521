"""What a request through the transport raises: the library's errors inside httpx's tree."""

from __future__ import annotations

import math
import pickle

import anyio
import httpx
import pytest

import resilient
import resilient.extend
import resilient.httpx
from resilient import Bulkhead, CircuitBreaker, RateLimiter, Timeout
from resilient.httpx import ResilientTransport
from resilient.testing import FakeClock

URL = "http://svc.test/items"


class _Reply(httpx.AsyncBaseTransport):
    """Answers every request with ``status`` (after ``hold``, when given, is set)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.sent = 0
        self.hold: anyio.Event | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        if self.hold is not None:
            await self.hold.wait()
        return httpx.Response(self.status, content=b"x")


def _client(
    *policies: object, upstream: httpx.AsyncBaseTransport | None = None, **kw: object
) -> httpx.AsyncClient:
    pipeline = resilient.Pipeline(*policies, telemetry=False, **kw)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=ResilientTransport(pipeline, upstream or _Reply()))


async def test_an_open_circuit_is_an_httpx_transport_error() -> None:
    """A request refused by an open breaker raises an error that ``except httpx.HTTPError``
    and ``except resilient.CircuitOpenError`` both catch, with the breaker's attributes."""
    clock = FakeClock()
    breaker = CircuitBreaker(
        failure_rate=0.5, window=10.0, minimum_calls=2, open_for=30.0, max_waiting=0
    )
    async with _client(breaker, upstream=_Reply(503), clock=clock) as client:
        for _ in range(2):
            assert (await client.get(URL)).status_code == 503
        with pytest.raises(httpx.HTTPError) as caught:
            await client.get(URL)
    error = caught.value
    assert isinstance(error, httpx.TransportError)
    assert isinstance(error, resilient.CircuitOpenError)
    assert isinstance(error, resilient.httpx.CircuitOpenError)
    assert error.state == "open"
    assert error.key == "svc.test"
    assert error.retry_after is not None
    assert 0.0 < error.retry_after <= 30.0
    assert error.request.url == URL


async def test_a_full_bulkhead_is_an_httpx_transport_error() -> None:
    """A request refused by a full bulkhead is a ``resilient.BulkheadFullError`` and an
    ``httpx.TransportError``."""
    upstream = _Reply()
    upstream.hold = anyio.Event()
    bulkhead = Bulkhead(max_concurrent=1, max_waiting=0)
    async with (
        _client(bulkhead, upstream=upstream) as client,
        anyio.create_task_group() as group,
    ):
        group.start_soon(client.get, URL)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(httpx.TransportError) as caught:
            await client.get(URL)
        upstream.hold.set()
    assert isinstance(caught.value, resilient.BulkheadFullError)
    assert upstream.sent == 1


async def test_a_rate_limited_request_is_an_httpx_transport_error() -> None:
    """No token: a ``resilient.RateLimitedError`` and an ``httpx.TransportError``, with the
    limiter's ``retry_after``."""
    limiter = RateLimiter(rate=1.0, burst=1, max_wait=0.0)
    async with _client(limiter, clock=FakeClock()) as client:
        assert (await client.get(URL)).status_code == 200
        with pytest.raises(httpx.TransportError) as caught:
            await client.get(URL)
    assert isinstance(caught.value, resilient.RateLimitedError)
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > 0.0


async def test_a_resilient_timeout_is_an_httpx_timeout_exception() -> None:
    """The pipeline's timeout is an ``httpx.TimeoutException`` (as httpx's own timeouts are),
    a ``resilient.TimeoutExceeded`` and a builtin ``TimeoutError``."""
    upstream = _Reply()
    upstream.hold = anyio.Event()
    clock = FakeClock()

    async def call(client: httpx.AsyncClient) -> None:
        with pytest.raises(httpx.TimeoutException) as caught:
            await client.get(URL)
        error = caught.value
        assert isinstance(error, resilient.TimeoutExceeded)
        assert isinstance(error, TimeoutError)
        assert error.timeout == 2.0
        assert error.request.method == "GET"

    async with (
        _client(Timeout(2.0), upstream=upstream, clock=clock) as client,
        anyio.create_task_group() as group,
    ):
        group.start_soon(call, client)
        await anyio.wait_all_tasks_blocked()
        clock.advance(2.0)


class ShedError(resilient.RejectedError):
    """A user's own rejection."""


class Shed:
    """A user-written policy refusing every call."""

    name = "shed"

    async def execute(self, call: object, ctx: resilient.extend.Context, /) -> object:
        raise ShedError("shed", policy=self.name, retry_after=1.5)


async def test_a_user_policys_rejection_keeps_its_class_and_joins_httpx() -> None:
    """A rejection class the library does not know is still caught by its own class, by
    ``resilient.RejectedError`` and by ``httpx.TransportError``."""
    async with _client(Shed()) as client:
        for _ in range(2):  # the refined class is made once and reused
            with pytest.raises(ShedError) as caught:
                await client.get(URL)
            assert isinstance(caught.value, httpx.TransportError)
            assert isinstance(caught.value, resilient.httpx.RejectedError)
            assert caught.value.retry_after == 1.5


async def test_the_error_is_the_policys_own_exception() -> None:
    """No wrapper: the exception keeps the policy's message, notes, and no new cause; it
    pickles (for task queues) with its attributes."""
    async with _client(Shed()) as client:
        with pytest.raises(ShedError) as caught:
            await client.get(URL)
    error = caught.value
    assert str(error) == "shed"
    assert error.__cause__ is None
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert copy.retry_after == 1.5


async def test_httpx_errors_from_the_wire_are_unchanged() -> None:
    """Errors raised by httpx itself (a refused connection) reach the caller as they are."""

    class Refused(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused", request=request)

    async with _client(upstream=Refused()) as client:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get(URL)
    assert not isinstance(caught.value, resilient.ResilientError)


def test_the_exported_classes_form_both_trees() -> None:
    """Each exported class is a subclass of the library's class and of httpx's."""
    pairs = {
        resilient.httpx.CircuitOpenError: (resilient.CircuitOpenError, httpx.TransportError),
        resilient.httpx.BulkheadFullError: (resilient.BulkheadFullError, httpx.TransportError),
        resilient.httpx.RateLimitedError: (resilient.RateLimitedError, httpx.TransportError),
        resilient.httpx.TimeoutExceeded: (resilient.TimeoutExceeded, httpx.TimeoutException),
        resilient.httpx.RejectedError: (resilient.RejectedError, httpx.TransportError),
    }
    for cls, bases in pairs.items():
        assert issubclass(cls, bases)
    assert math.isinf(resilient.httpx.TimeoutExceeded("t").timeout)

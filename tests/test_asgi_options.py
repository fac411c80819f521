"""ResilienceMiddleware options against hostile values, proxy hop counting, exclusions, the
outcome it reports (verdict, shed reason) and the /metrics helper behind it. Every test runs
on asyncio and trio."""

from __future__ import annotations

import math
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import resilient
from resilient import ConfigurationError, Pipeline, Telemetry, Timeout
from resilient.asgi import ResilienceMiddleware
from resilient.events import CallRejected
from resilient.telemetry import prometheus
from resilient.testing import EventRecorder, FakeClock
from test_asgi import Conn, ok_app, scope, wait_until
from test_telemetry_support import Otel

P = "ResilienceMiddleware."


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


# -- extreme numbers (issue 21, finding 5) ---------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"rate": 5e-324}, "rate"),  # burst / rate overflowed to infinity
        ({"rate": 1e308}, "rate"),
        ({"rate": math.nan}, "rate"),
        ({"rate": math.inf}, "rate"),
        ({"rate": True}, "rate"),
        ({"rate": 1.0, "burst": 10**400}, "burst"),  # too large for a float
        ({"timeout": math.nan}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"total_timeout": 0.0}, "total_timeout"),
        ({"max_concurrent": 1, "max_wait": math.nan}, "max_wait"),
        ({"shed_retry_after": 1e307}, "shed_retry_after"),
        ({"shed_retry_after": math.inf}, "shed_retry_after"),
        ({"trusted_hops": 0}, "trusted_hops"),
        ({"trusted_hops": True}, "trusted_hops"),
        ({"trusted_hops": "1"}, "trusted_hops"),
        ({"exclude_defaults": "no"}, "exclude_defaults"),
        ({"limit_websockets": 1}, "limit_websockets"),
        ({"clock": object()}, "clock"),
    ],
)
def test_hostile_numbers_and_types_are_refused_naming_the_option(
    kwargs: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        ResilienceMiddleware(ok_app, **kwargs)
    assert info.value.parameter == P + parameter


async def test_effectively_infinite_timeouts_arm_nothing_and_short_deadlines_still_fire() -> None:
    """A timeout of 1e307 s overflowed the (former) timer wheel's tick arithmetic inside its
    loop callback, which aborted that tick for every request in flight: a short caller
    deadline beside it then never fired. Now such a value is refused at construction (one
    validation rule for every option), the largest accepted timeout and a huge caller
    header arm nothing that overflows, and a short deadline beside them still fires."""
    seen: dict[str, float] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen[scope["path"]] = resilient.remaining()
        if scope["path"] == "/forever":
            await anyio.sleep_forever()
        await ok_app(scope, receive, send)

    for option in ("timeout", "total_timeout"):
        with pytest.raises(ConfigurationError) as info:
            ResilienceMiddleware(app, **{option: 1e307})
        assert info.value.parameter == P + option
    mw = ResilienceMiddleware(app, timeout=1e15, total_timeout=1e15)
    configured, short, huge_header = Conn(), Conn(), Conn()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            # In flight together: the far deadlines and a 50 ms caller deadline.
            tg.start_soon(mw, scope("/a"), configured.receive, configured.send)
            tg.start_soon(
                mw,
                scope("/forever", headers=[(b"x-request-deadline", b"50")]),
                short.receive,
                short.send,
            )
            tg.start_soon(
                mw,
                scope("/b", headers=[(b"x-request-deadline", b"1e308")]),
                huge_header.receive,
                huge_header.send,
            )
    assert (configured.status, short.status, huge_header.status) == (200, 504, 200)
    assert seen["/a"] > 1e14
    assert seen["/b"] > 1e14
    assert 0.0 < seen["/forever"] <= 0.05


async def test_a_long_deadline_seen_earlier_never_holds_back_a_shorter_one() -> None:
    """Issue 21, finding 7, in process (tests/test_asgi_deadlines.py has it on real servers):
    after one ordinary request that ran long enough to be looked at with its 30 s deadline,
    a caller's 50 ms deadline on the same middleware still ends its request."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await anyio.sleep(0.05 if scope["path"] == "/ordinary" else 3600)
        await ok_app(scope, receive, send)

    mw = ResilienceMiddleware(app, timeout=30.0)
    for _ in range(3):
        ordinary, hurried = Conn(), Conn()
        with anyio.fail_after(5):
            await mw(scope("/ordinary"), ordinary.receive, ordinary.send)
            await mw(
                scope("/hurried", headers=[(b"x-request-deadline", b"50")]),
                hurried.receive,
                hurried.send,
            )
        assert (ordinary.status, hurried.status) == (200, 504)


@pytest.mark.parametrize("respond_after", [0.0, 0.03])
async def test_on_the_system_clock_the_deadline_moves_to_total_timeout_when_the_response_starts(
    respond_after: float,
) -> None:
    """The start deadline (50 ms) stops at the response start, before or after the request
    was first looked at (10 ms); the total deadline (300 ms) then cuts the stream."""
    cut = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await anyio.sleep(respond_after)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await anyio.sleep(0.1)  # past the start deadline: not cut
        await send({"type": "http.response.body", "body": b"b", "more_body": True})
        try:
            await anyio.sleep_forever()
        finally:
            cut.set()

    mw = ResilienceMiddleware(app, timeout=0.05, total_timeout=0.3)
    conn = Conn()
    with anyio.fail_after(5), pytest.raises(resilient.TimeoutExceeded):
        await mw(scope(), conn.receive, conn.send)
    assert cut.is_set()
    assert conn.status == 200
    assert [m.get("body") for m in conn.sent[1:]] == [b"a", b"b"]


async def test_on_the_system_clock_a_request_whose_body_is_unread_still_meets_its_deadline() -> (
    None
):
    """No disconnect watcher can start while the app has not read the body; the deadline
    still ends the request."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await anyio.sleep_forever()  # never reads the body

    mw = ResilienceMiddleware(app, timeout=30.0)
    body = {"type": "http.request", "body": b"x" * 10, "more_body": False}
    conn = Conn(body)
    request = scope(
        "/upload",
        headers=[(b"content-length", b"10"), (b"x-request-deadline", b"60")],
        method="POST",
    )
    with anyio.fail_after(5):
        await mw(request, conn.receive, conn.send)
    assert conn.status == 504
    assert conn.receive_calls == 0  # the middleware never touched the body


_HOSTILE = st.one_of(
    st.sampled_from([0, -1, 5e-324, 1e-300, 1e307, 1e308, math.inf, -math.inf, math.nan, True]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**20), max_value=10**400),
    st.sampled_from(["1", None, b"1", [1]]),
)
_NUMERIC_OPTIONS = (
    "max_concurrent",
    "max_waiting",
    "max_wait",
    "shed_retry_after",
    "rate",
    "burst",
    "trusted_hops",
    "ipv6_prefix",
    "max_keys",
    "timeout",
    "total_timeout",
)
_NEEDS = {"max_waiting": {"max_concurrent": 2}, "burst": {"rate": 10.0}, "max_keys": {"rate": 1.0}}


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(option=st.sampled_from(_NUMERIC_OPTIONS), value=_HOSTILE)
async def test_every_numeric_option_refuses_a_hostile_value_or_then_works(
    option: str, value: Any
) -> None:
    """One rule for every option: a ConfigurationError naming it at construction, or a
    middleware that then answers requests (never an exception from deep inside)."""
    kwargs = {**_NEEDS.get(option, {}), option: value}
    try:
        mw = ResilienceMiddleware(ok_app, **kwargs)
    except ConfigurationError as exc:
        refused = exc.parameter
    else:
        refused = None
    if refused is not None:
        assert refused == P + option
        return
    for path in ("/", "/again"):
        conn = Conn()
        with anyio.fail_after(5):
            await mw(scope(path), conn.receive, conn.send)
        assert conn.status in (200, 429, 504)


# -- trusted proxy hops (issue 21, finding 2) ------------------------------------------------

INGRESS = "10.0.0.1"  # the one proxy in front of the service
POD = "10.1.2.3"  # a host inside the trusted range, behind the ingress like any client
VICTIM = "198.51.100.9"


def via_ingress(*xff: str) -> dict[str, Any]:
    """A request the ingress forwarded, appending the address it saw to X-Forwarded-For."""
    return scope(
        "/", headers=[(b"x-forwarded-for", ", ".join(xff).encode())], client=(INGRESS, 443)
    )


def test_ranges_let_a_host_inside_them_pick_another_clients_key() -> None:
    """The danger docs/asgi.md warns about: a range trusts every host in it."""
    mw = ResilienceMiddleware(ok_app, rate=1.0, trusted_proxies=["10.0.0.0/8"])
    assert mw.client_key(via_ingress(VICTIM, POD)) == VICTIM


@pytest.mark.parametrize("ranges", [(), ("10.0.0.0/8",)])
async def test_with_hop_counting_a_host_inside_a_trusted_range_cannot_take_another_key(
    clock: FakeClock, ranges: tuple[str, ...]
) -> None:
    mw = ResilienceMiddleware(
        ok_app, rate=1.0, burst=2, trusted_hops=1, trusted_proxies=ranges, clock=clock
    )
    assert mw.client_key(via_ingress(VICTIM, POD)) == POD
    # The pod spends its own bucket whatever it claims; the victim keeps its own.
    statuses = []
    for _ in range(3):
        conn = Conn()
        await mw(via_ingress(VICTIM, POD), conn.receive, conn.send)
        statuses.append(conn.status)
    assert statuses == [200, 200, 429]
    victim = Conn()
    await mw(via_ingress(VICTIM), victim.receive, victim.send)
    assert victim.status == 200
    assert victim.header(b"ratelimit") == b'"default";r=1;t=1'


def test_hop_counting_takes_the_nth_hop_from_the_right_and_ignores_short_headers() -> None:
    mw = ResilienceMiddleware(ok_app, rate=1.0, trusted_hops=2)
    # client -> CDN (appends the client) -> ingress (appends the CDN) -> service
    assert mw.client_key(via_ingress("6.6.6.6", VICTIM, "192.0.2.10")) == VICTIM
    # Fewer hops than proxies: it did not come through them; the peer is the client.
    assert mw.client_key(via_ingress(VICTIM)) == INGRESS
    assert mw.client_key(scope("/", client=(VICTIM, 1))) == VICTIM


def test_hop_counting_with_ranges_reads_the_header_only_from_a_trusted_peer() -> None:
    mw = ResilienceMiddleware(ok_app, rate=1.0, trusted_hops=1, trusted_proxies=[INGRESS])
    assert mw.client_key(via_ingress(VICTIM, POD)) == POD
    direct = scope("/", headers=[(b"x-forwarded-for", VICTIM.encode())], client=(POD, 1))
    assert mw.client_key(direct) == POD  # not a proxy: its header is ignored


def test_hop_counting_behind_a_trusted_unix_socket_proxy() -> None:
    mw = ResilienceMiddleware(ok_app, rate=1.0, trusted_hops=1, trusted_proxies=["unix"])
    over_socket = scope("/", headers=[(b"x-forwarded-for", b"6.6.6.6, 192.0.2.5")], client=None)
    assert mw.client_key(over_socket) == "192.0.2.5"
    direct = scope("/", headers=[(b"x-forwarded-for", b"192.0.2.5")], client=(POD, 1))
    assert mw.client_key(direct) == POD  # a TCP peer is not the trusted socket


def test_hop_counting_reads_rfc_7239_forwarded_too() -> None:
    mw = ResilienceMiddleware(ok_app, rate=1.0, trusted_hops=1, forwarded_header="forwarded")
    request = scope(
        "/",
        headers=[(b"forwarded", f'for={VICTIM};proto=https, for="{POD}:4711"'.encode())],
        client=(INGRESS, 443),
    )
    assert mw.client_key(request) == POD


# -- exclusions (issue 19, item 2) -----------------------------------------------------------


def blocking_app(gate: anyio.Event) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/work":
            await gate.wait()
        await ok_app(scope, receive, send)

    return app


async def statuses_while_busy(
    mw: ResilienceMiddleware, gate: anyio.Event, paths: list[str]
) -> list[int | None]:
    """Statuses of ``paths`` requested while the only slot is taken and nobody may wait."""
    busy = Conn()
    statuses: list[int | None] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(mw, scope("/work"), busy.receive, busy.send)
        await wait_until(lambda: mw.in_flight == 1)
        for path in paths:
            conn = Conn()
            await mw(scope(path), conn.receive, conn.send)
            statuses.append(conn.status)
        gate.set()
    assert busy.status == 200
    return statuses


PATHS = ["/healthz", "/internal/x", "/metrics", "/metrics/", "/other"]


async def test_exclude_adds_to_the_default_health_paths() -> None:
    gate = anyio.Event()
    mw = ResilienceMiddleware(
        blocking_app(gate), max_concurrent=1, max_waiting=0, exclude=["/internal/*"]
    )
    assert await statuses_while_busy(mw, gate, PATHS) == [200, 200, 200, 200, 503]


async def test_exclude_defaults_false_replaces_the_defaults() -> None:
    gate = anyio.Event()
    mw = ResilienceMiddleware(
        blocking_app(gate),
        max_concurrent=1,
        max_waiting=0,
        exclude=["/internal/*"],
        exclude_defaults=False,
    )
    assert await statuses_while_busy(mw, gate, PATHS) == [503, 200, 503, 503, 503]


# -- what the middleware reports (issue 19, item 4) ------------------------------------------


async def test_the_apps_own_5xx_is_a_failure_and_4xx_a_client_error_in_telemetry() -> None:
    otel = Otel.create()

    async def answer(request: Request) -> Response:
        return PlainTextResponse("x", status_code=int(request.path_params["code"]))

    app = Starlette(routes=[Route("/status/{code}", answer)])
    app.add_middleware(ResilienceMiddleware, telemetry=otel.telemetry)
    async with client(app) as c:
        for code in (200, 502, 500, 404, 503):
            assert (await c.get(f"/status/{code}")).status_code == code
    verdicts = sorted(
        (p.attributes["resilient.verdict"], p.count) for p in otel.points("resilient.call.duration")
    )
    assert verdicts == [("client_error", 1), ("failure", 3), ("success", 1)]
    failed = [s for s in otel.spans() if not s.status.is_ok]
    assert len(failed) == 3


async def test_shed_reason_is_full_when_refused_at_once_and_wait_timeout_after_waiting(
    clock: FakeClock,
) -> None:
    events = EventRecorder()
    gate = anyio.Event()
    mw = ResilienceMiddleware(
        blocking_app(gate),
        max_concurrent=1,
        max_waiting=1,
        max_wait=0.5,
        clock=clock,
        listeners=[events],
    )
    busy, waited, at_once = Conn(), Conn(), Conn()
    async with anyio.create_task_group() as tg:
        tg.start_soon(mw, scope("/work"), busy.receive, busy.send)
        await wait_until(lambda: mw.in_flight == 1)
        tg.start_soon(mw, scope("/"), waited.receive, waited.send)
        await wait_until(lambda: mw.waiting == 1)
        await mw(scope("/"), at_once.receive, at_once.send)  # the waiting room is full
        clock.advance(0.6)
        await wait_until(lambda: waited.status is not None)
        gate.set()
    assert (at_once.status, waited.status, busy.status) == (503, 503, 200)
    assert [(e.policy, e.reason) for e in events.of_type(CallRejected)] == [
        ("load_shedding", "full"),
        ("load_shedding", "wait_timeout"),
    ]


# -- the /metrics helper behind the middleware (issue 19, item 5) ----------------------------


async def test_metrics_route_answers_with_and_without_slash_and_is_never_limited(
    clock: FakeClock,
) -> None:
    registry = CollectorRegistry()
    telemetry = Telemetry(meter_provider=prometheus.meter_provider(registry=registry))
    pipeline = Pipeline(Timeout(1.0), name="upstream", clock=clock, telemetry=telemetry)

    async def hello(request: Request) -> Response:
        return PlainTextResponse(await pipeline.call(_ok))

    app = Starlette(routes=[Route("/hello", hello)])
    prometheus.add_route(app, registry=registry)
    app.add_middleware(ResilienceMiddleware, rate=1.0, burst=1, clock=clock)
    # Raw ASGI conversations (httpx's ASGITransport leaks its body iterator on trio).
    statuses = []
    for path in ("/hello", "/hello", "/metrics", "/metrics/", "/metrics", "/metrics/"):
        conn = Conn()
        await app(scope(path), conn.receive, conn.send)
        statuses.append(conn.status)
        if path.startswith("/metrics"):
            assert conn.header(b"ratelimit") is None
            body = b"".join(m.get("body", b"") for m in conn.sent)
            assert b'resilient_pipeline="upstream"' in body
    # The client's bucket is empty after one request; /metrics never redirects nor limits.
    assert statuses == [200, 429, 200, 200, 200, 200]


async def _ok() -> str:
    return "ok"


def test_add_route_refuses_what_it_cannot_route() -> None:
    registry = CollectorRegistry()
    with pytest.raises(ConfigurationError) as info:
        prometheus.add_route(object(), registry=registry)
    assert info.value.parameter == "add_route.app"
    with pytest.raises(ConfigurationError) as info:
        prometheus.add_route(Starlette(), "metrics", registry=registry)
    assert info.value.parameter == "add_route.path"


def test_a_timeout_above_the_total_timeout_is_refused_naming_both() -> None:
    """``timeout=5, total_timeout=2`` cannot work: refused at construction, both named."""
    with pytest.raises(ConfigurationError) as info:
        ResilienceMiddleware(ok_app, timeout=5.0, total_timeout=2.0)
    assert info.value.parameter == P + "timeout"
    assert P + "total_timeout=2.0" in str(info.value)
    ResilienceMiddleware(ok_app, timeout=2.0, total_timeout=2.0)
    ResilienceMiddleware(ok_app, timeout=5.0)
    ResilienceMiddleware(ok_app, total_timeout=2.0)

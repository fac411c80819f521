"""Per-attempt OpenTelemetry client spans following the HTTP semantic conventions."""

from __future__ import annotations

from typing import Any

import httpx
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

__all__ = ["end_span", "start_span"]

_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def start_span(  # noqa: PLR0917
    tracer: trace.Tracer,
    request: httpx.Request,
    route: str | None,
    resends: int,
    parent: Any,
    kind: str = "original",
) -> trace.Span:
    """Start the client span of one attempt; inject its trace context into the request.

    Only bounded, credential-free attributes: method, host, port, scheme and path (never the
    query string or user info), the route template when known, the resend count and the
    attempt's kind (``resilient.attempt.kind``: ``original``, ``retry`` or ``hedge``).
    """
    context = trace.set_span_in_context(parent) if isinstance(parent, trace.Span) else None
    method = request.method
    known = method in _KNOWN_METHODS
    span = tracer.start_span(
        f"{method if known else 'HTTP'} {route}" if route else (method if known else "HTTP"),
        context=context,
        kind=SpanKind.CLIENT,
    )
    if not span.is_recording():
        return span
    url = request.url
    port = url.port or _DEFAULT_PORTS.get(url.scheme)
    attributes: dict[str, Any] = {
        "http.request.method": method if known else "_OTHER",
        "server.address": url.host,
        "url.scheme": url.scheme,
        "url.full": f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}",
    }
    if port is not None:
        attributes["server.port"] = port
    if not known:
        attributes["http.request.method_original"] = method
    if route:
        attributes["url.template"] = route
    if resends:
        attributes["http.request.resend_count"] = resends
    attributes["resilient.attempt.kind"] = kind
    span.set_attributes(attributes)
    propagate.inject(request.headers, context=trace.set_span_in_context(span))
    return span


def _error_type(error: BaseException | None) -> str:
    if error is None:
        return "cancelled"
    kind = type(error)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def end_span(
    span: trace.Span,
    response: httpx.Response | None,
    error: BaseException | None,
    *,
    lost: bool = False,
) -> None:
    """Record the attempt's outcome on its span and end it.

    An attempt cancelled because another attempt of the same request won (``lost``: a hedge
    race) is not an error: its status stays unset and ``resilient.attempt.cancelled`` says
    it lost. Any other cancellation (a timeout, the caller leaving) is an error whose
    ``error.type`` is ``cancelled``.
    """
    if span.is_recording():
        if lost:
            span.set_attribute("resilient.attempt.cancelled", "lost")
        elif response is not None:
            status = response.status_code
            span.set_attribute("http.response.status_code", status)
            version = response.http_version
            if version.startswith("HTTP/"):
                span.set_attribute("network.protocol.version", version[5:])
            if status >= 400:
                span.set_attribute("error.type", str(status))
                span.set_status(Status(StatusCode.ERROR))
        else:
            # Never the message: it may quote a URL. A missing error is a cancellation.
            span.set_attribute("error.type", _error_type(error))
            span.set_status(Status(StatusCode.ERROR))
    span.end()

"""``standard()``: the recommended pipeline behind a transport, one state per host."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import httpx
from opentelemetry import trace

from resilient import _validate as check
from resilient._classify import Classification, ClassifierLike, Outcome, Verdict
from resilient._exceptions import ConfigurationError
from resilient._pipeline import Pipeline
from resilient._presets import standard as _standard_pipeline

from ._transport import (
    DEADLINE_HEADER,
    DEFAULT_BUFFER_LIMIT,
    IDEMPOTENT_METHODS,
    ResilientTransport,
)

__all__ = ["standard"]


def standard(
    transport: httpx.AsyncBaseTransport | None = None,
    *,
    name: str | None = None,
    base_url: str | httpx.URL | None = None,
    classify: ClassifierLike
    | Callable[[Outcome], Classification | Verdict | None]
    | Iterable[Any]
    | None = None,
    retry_methods: Iterable[str] = IDEMPOTENT_METHODS,
    idempotency_header: str | None = "Idempotency-Key",
    propagate_deadline: bool = False,
    deadline_header: str = DEADLINE_HEADER,
    tracer_provider: trace.TracerProvider | None = None,
    buffer_limit: int = DEFAULT_BUFFER_LIMIT,
    limits: httpx.Limits | None = None,
    config: Pipeline | None = None,
    **options: Any,
) -> ResilientTransport:
    """A ``ResilientTransport`` running ``resilient.standard()`` with one state per host.

    The pipeline is ``resilient.standard(name, per_key=True, **options)``:
    ``Timeout(total) -> Retry -> CircuitBreaker -> Hedge(delay=attempt_timeout) ->
    [RateLimiter] -> Bulkhead`` with its documented defaults; the breaker, the bulkhead and
    the rate limiter (when ``rate`` is given) keep one state per host (``ctx.key``), so a
    dead or slow host never blocks a healthy one. Requests are classified by
    ``http_classifier()`` unless ``classify`` is given.

    The attempt timeout hedges (Envoy's ``hedge_on_per_try_timeout``): a request that may be
    sent twice (an idempotent method, an ``Idempotency-Key``, the ``resilient.idempotent``
    extension) and whose body is bytes in memory keeps its slow attempt running when
    ``attempt_timeout`` passes and sends a copy beside it; the first acceptable response
    wins, the other attempt is cancelled and its connection released. Any other request (a
    POST without a key, a streamed body, a multipart body with files) is never hedged and
    is cut at ``attempt_timeout`` as before. ``hedge_on_attempt_timeout=False`` restores the
    cutting attempt timeout for every request.

    Args:
        transport: what sends requests (default ``httpx.AsyncHTTPTransport()``).
        name: the pipeline's name (a bounded telemetry attribute); default: the host (and
            port, when not the scheme's) of ``base_url``, else ``"http"``. Name each upstream
            so two of them never share a metric series.
        base_url: the upstream this transport calls (the client's ``base_url``): names the
            pipeline when ``name`` is not given.
        classify: classification replacing ``http_classifier()`` (given to the transport,
            which keeps its idempotency rules on top of it).
        retry_methods: methods that may be retried.
        idempotency_header: a header making any request retryable (``None`` to disable).
        propagate_deadline: send the remaining deadline upstream in ``deadline_header``.
        deadline_header: the header for it.
        tracer_provider: the OpenTelemetry tracer provider for attempt spans.
        buffer_limit: see ``ResilientTransport``.
        limits: see ``ResilientTransport``.
        config: a configured pipeline (``resilient.config.load(...)["payments"]``) to run
            instead of building one; it follows reloads. ``name`` and ``**options`` are then
            not used (give neither).
        **options: any option of ``resilient.standard()`` (``total_timeout``,
            ``attempt_timeout``, ``attempts``, ``hedge_on_attempt_timeout``, ``rate``,
            ``rate_store`` (a fleet-wide quota per host, e.g.
            ``resilient.redis.RedisBucketStore``), ``max_concurrent``,
            ``clock``, ``telemetry``, ...), except ``classify`` and ``per_key``.

    Raises:
        ConfigurationError: an invalid option (the message names it).
    """
    for taken in ("per_key", "classify"):
        if taken in options:
            raise ConfigurationError(
                f"standard.{taken}", options[taken], "set by resilient.httpx.standard() itself"
            )
    if config is not None and name is not None:
        raise ConfigurationError(
            "standard.name", name, "given with config: the configured pipeline has its name"
        )
    if name is None:
        name = _name_of(base_url)
    elif base_url is not None:
        _name_of(base_url)  # still checked
    if config is not None:
        if not isinstance(config, Pipeline):
            raise ConfigurationError(
                "standard.config", config, "expected a pipeline from resilient.config.load()"
            )
        if options:
            raise ConfigurationError(
                "standard.config",
                config,
                f"given with options {sorted(options)}: set them in the configuration instead",
            )
        pipeline = config
    else:
        pipeline = _standard_pipeline(name, per_key=True, **options)
    transport_options: dict[str, Any] = {
        "classify": classify,
        "retry_methods": retry_methods,
        "idempotency_header": idempotency_header,
        "propagate_deadline": propagate_deadline,
        "deadline_header": deadline_header,
        "tracer_provider": tracer_provider,
        "buffer_limit": buffer_limit,
        "limits": limits,
    }
    names = {f"ResilientTransport.{option}": option for option in transport_options}
    names["ResilientTransport.transport"] = "transport"
    names["ResilientTransport.limits.max_connections"] = "limits.max_connections"
    return check.renamed(
        names,
        lambda: ResilientTransport(pipeline, transport, **transport_options),
        prefix="standard",
    )


def _name_of(base_url: object) -> str:
    """The pipeline name for an upstream: ``host`` or ``host:port`` of its URL."""
    if base_url is None:
        return "http"
    try:
        url = httpx.URL(base_url) if isinstance(base_url, str | httpx.URL) else None
    except (httpx.InvalidURL, TypeError, ValueError):
        url = None
    if url is None or not url.host:
        raise ConfigurationError(
            "standard.base_url", base_url, "expected an absolute http(s) URL or None"
        )
    return url.host if url.port is None else f"{url.host}:{url.port}"

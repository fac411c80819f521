"""Serve resilient's metrics, and every other OpenTelemetry metric, on ``/metrics``.

Needs the ``prometheus`` extra (``pip install 'resilient-patterns[prometheus]'``: the
OpenTelemetry SDK, its Prometheus exporter and prometheus-client). Two lines in a service::

    from resilient.telemetry import prometheus

    prometheus.add_route(app)  # Starlette / FastAPI: /metrics (and /metrics/), no redirect
    # or, for any service: a background thread serving http://localhost:9464/metrics
    prometheus.start_http_server()

``ResilienceMiddleware`` never limits, sheds or times out ``/metrics`` and ``/metrics/``
(they are in its default exclusions): a busy service is still scraped.

Metrics are recorded once, through OpenTelemetry, and the OpenTelemetry Prometheus exporter
translates them at scrape time following the OpenTelemetry-to-Prometheus rules:
``resilient.call.duration`` (unit ``s``) becomes the histogram
``resilient_call_duration_seconds``, counters get ``_total``, attribute keys become labels
(``resilient.pipeline`` -> ``resilient_pipeline``, ``error.type`` -> ``error_type``).
"""

from __future__ import annotations

import threading
from typing import Any, final

from opentelemetry import metrics as _otel_metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app
from prometheus_client import start_http_server as _start_http_server

from resilient import _validate as check
from resilient._exceptions import ConfigurationError

from ._otel import installed_meter_provider

__all__ = [
    "MetricsApp",
    "MetricsServer",
    "add_route",
    "asgi_app",
    "install",
    "meter_provider",
    "start_http_server",
]

DEFAULT_PORT = 9464
"""The OpenTelemetry specification's default Prometheus exporter port."""
DEFAULT_HOST = "localhost"
"""The OpenTelemetry specification's default host: pass ``"0.0.0.0"`` to be scraped remotely."""

_install_lock = threading.Lock()
_installed: MeterProvider | None = None


def meter_provider(
    *, registry: CollectorRegistry = REGISTRY, resource: Resource | None = None
) -> MeterProvider:
    """A new OpenTelemetry SDK ``MeterProvider`` whose metrics ``registry`` exposes.

    Use it when you do not want to touch the global provider, and pass it to
    ``Telemetry(meter_provider=...)``; serve ``registry`` with ``asgi_app(registry)`` or
    ``start_http_server(registry=registry)``.

    Args:
        registry: the prometheus-client registry to expose the metrics in.
        resource: the OpenTelemetry resource (default: from ``OTEL_SERVICE_NAME`` and
            ``OTEL_RESOURCE_ATTRIBUTES``); it becomes Prometheus's ``target_info``.
    """
    reader = PrometheusMetricReader(registry=registry)
    return MeterProvider(metric_readers=[reader], resource=resource or Resource.create())


def install() -> MeterProvider:
    """Make the global OpenTelemetry meter provider export to prometheus-client's registry.

    When no global meter provider is set, installs one (``meter_provider()``) as the global
    provider, so the metrics of every OpenTelemetry-instrumented library reach ``/metrics``.
    When the application already set an SDK provider with a ``PrometheusMetricReader``, uses
    it. Calling it again returns the same provider.

    Raises:
        ConfigurationError: the application already set a global meter provider that does not
            export to Prometheus (add ``PrometheusMetricReader()`` to its ``metric_readers``,
            or use ``meter_provider()`` with ``Telemetry(meter_provider=...)``).
    """
    global _installed  # noqa: PLW0603 - one global provider per process, by OpenTelemetry's design
    with _install_lock:
        if _installed is not None:
            return _installed
        _otel_metrics.get_meter_provider()  # loads an OTEL_PYTHON_METER_PROVIDER, if any
        current = installed_meter_provider()
        if current is None:
            provider = meter_provider()
            _otel_metrics.set_meter_provider(provider)
            current = installed_meter_provider()
            if current is provider:
                _installed = provider
                return provider
        # The SDK keeps its readers privately (the attribute moved between releases).
        readers: Any = getattr(current, "_metric_readers", None) or getattr(
            getattr(current, "_sdk_config", None), "metric_readers", None
        )
        if isinstance(current, MeterProvider) and any(
            isinstance(reader, PrometheusMetricReader) for reader in readers or ()
        ):
            _installed = current
            return current
        raise ConfigurationError(
            "global MeterProvider",
            current,
            "it was set without a PrometheusMetricReader; add PrometheusMetricReader() to its "
            "metric_readers, or report to resilient.telemetry.prometheus.meter_provider() "
            "through Telemetry(meter_provider=...)",
        )


@final
class MetricsApp:
    """An ASGI app answering every HTTP request it is routed to with the metrics.

    Built by ``asgi_app()``. An object rather than a function, so that a Starlette
    ``Route`` takes it as an ASGI app (a plain function would be called as an endpoint).
    """

    __slots__ = ("_app", "registry")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._app = make_asgi_app(registry)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve one request in the Prometheus text (or OpenMetrics) format."""
        await self._app(scope, receive, send)


def asgi_app(registry: CollectorRegistry | None = None) -> MetricsApp:
    """An ASGI app serving the metrics in the Prometheus text (or OpenMetrics) format.

    It answers whatever path it is routed to; ``add_route()`` routes it on a Starlette or
    FastAPI app. Without ``registry`` it serves prometheus-client's default registry and
    calls ``install()`` first.

    Args:
        registry: the registry to serve (for a provider from ``meter_provider(registry=...)``).

    Raises:
        ConfigurationError: see ``install()``.
    """
    if registry is None:
        install()
        registry = REGISTRY
    return MetricsApp(registry)


def add_route(
    app: Any, path: str = "/metrics", *, registry: CollectorRegistry | None = None
) -> MetricsApp:
    """Serve the metrics at ``path`` on a Starlette or FastAPI app.

    Both ``path`` and ``path + "/"`` answer 200 (``app.mount(path, ...)`` would answer
    ``path`` with a 307 redirect), and neither appears in FastAPI's OpenAPI schema.
    ``ResilienceMiddleware`` excludes ``/metrics`` and ``/metrics/`` by default; pass
    another ``path`` to its ``exclude`` as well.

    Args:
        app: a Starlette or FastAPI application (anything with Starlette's ``add_route``).
        path: where to serve, starting with ``/`` (default ``/metrics``).
        registry: as for ``asgi_app()``.

    Returns:
        The ``MetricsApp`` now routed at ``path``.

    Raises:
        ConfigurationError: an invalid ``path`` or ``app``, or see ``install()``.
    """
    given: object = path
    if not isinstance(given, str) or not path.startswith("/") or path.rstrip("/") == "":
        raise ConfigurationError("add_route.path", path, "expected a path such as '/metrics'")
    add = getattr(app, "add_route", None)
    if not callable(add):
        raise ConfigurationError(
            "add_route.app", app, "expected a Starlette or FastAPI app (else use asgi_app())"
        )
    metrics = asgi_app(registry)
    base = path.rstrip("/")
    for route in (base, base + "/"):
        add(route, metrics, include_in_schema=False)
    return metrics


@final
class MetricsServer:
    """A running metrics HTTP server (a daemon thread); ``close()`` stops it."""

    __slots__ = ("_server", "_thread", "host", "port")

    def __init__(self, server: Any, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port: int = server.server_address[1]

    @property
    def url(self) -> str:
        """The metrics URL, for example ``http://localhost:9464/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}>"


def start_http_server(
    port: int = DEFAULT_PORT,
    host: str = DEFAULT_HOST,
    *,
    registry: CollectorRegistry | None = None,
) -> MetricsServer:
    """Serve the metrics over HTTP from a daemon thread (prometheus-client's server).

    Args:
        port: TCP port (0 picks a free one; see ``MetricsServer.port``).
        host: interface to bind; ``"0.0.0.0"`` to be scraped from other machines.
        registry: the registry to serve; without it, the default one after ``install()``.

    Raises:
        ConfigurationError: an invalid port, or see ``install()``.
        OSError: the port is taken.
    """
    check.integer("start_http_server.port", port, minimum=0, maximum=65535)
    if registry is None:
        install()
        registry = REGISTRY
    server, thread = _start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread, host)

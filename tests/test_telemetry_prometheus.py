"""Prometheus exposition: a real /metrics endpoint, scraped and parsed with prometheus-client."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from resilient import (
    Bulkhead,
    CircuitBreaker,
    CircuitOpenError,
    ConfigurationError,
    Fallback,
    Hedge,
    Pipeline,
    RateLimiter,
    Retry,
    RetryBudget,
    Telemetry,
    Timeout,
    TimeoutExceeded,
)
from resilient.telemetry import METRICS, prometheus
from resilient.testing import FakeClock


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


async def flaky(failures: list[Exception]) -> str:
    if failures:
        raise failures.pop()
    return "ok"


async def twins(calls: list[int], gate: anyio.Event) -> str:
    """The first attempt answers (a failure) only once a second one ran (and failed)."""
    calls.append(len(calls))
    if len(calls) == 1:
        await gate.wait()
        raise ConnectionError("original")
    gate.set()
    raise ConnectionError("hedge")


async def stuck(clock: FakeClock) -> None:
    await clock.sleep(10.0)


async def _exercise(telemetry: Telemetry, clock: FakeClock) -> list[Pipeline]:
    """Calls through the real policies touching every instrument; returns the pipelines
    (the gauges report live pipelines only)."""
    budget = RetryBudget(ratio=0.0, reserve=1)
    payments = Pipeline(
        Retry(attempts=2, base_delay=0.1, jitter="none", budget=budget),
        CircuitBreaker(minimum_calls=100, name="breaker"),
        RateLimiter(rate=1.0, burst=3, max_wait=5.0, name="limiter"),
        Bulkhead(max_concurrent=4, name="pool"),
        Timeout(1.0),
        name="payments",
        clock=clock,
        telemetry=telemetry,
    )
    assert await payments.call(flaky, [ConnectionError("x")]) == "ok"  # retried once
    # The successful retry got its token back; a retry elsewhere spends it.
    assert budget.try_withdraw(clock.now())
    with pytest.raises(ConnectionError):  # the budget's only token is spent: refused
        await payments.call(flaky, [ConnectionError("x"), ConnectionError("y")])
    with pytest.raises(TimeoutExceeded):  # the limiter is empty: this call waits first
        await payments.call(stuck, clock)
    search = Pipeline(
        CircuitBreaker(minimum_calls=1, failure_rate=0.5, max_waiting=0, name="breaker"),
        name="search",
        clock=clock,
        telemetry=telemetry,
    )
    with pytest.raises(ConnectionError):  # opens the circuit
        await search.call(flaky, [ConnectionError("x")])
    with pytest.raises(CircuitOpenError):
        await search.call(flaky, [])
    backup = Pipeline(
        Fallback(value="cached"),
        Hedge(delay=0.0, budget=None),  # the hedge starts at once; both attempts fail
        name="backup",
        clock=clock,
        telemetry=telemetry,
    )
    calls: list[int] = []
    assert await backup.call(twins, calls, anyio.Event()) == "cached"
    assert calls == [0, 1]  # the original and its hedge
    return [payments, search, backup]


async def test_metrics_endpoint_serves_every_metric_with_prometheus_names(
    clock: FakeClock,
) -> None:
    """A real HTTP /metrics on 127.0.0.1: each instrument under its Prometheus name."""
    registry = CollectorRegistry()
    telemetry = Telemetry(meter_provider=prometheus.meter_provider(registry=registry))
    pipelines = await _exercise(telemetry, clock)
    server = prometheus.start_http_server(0, "127.0.0.1", registry=registry)
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        async with httpx.AsyncClient() as client:
            response = await client.get(server.url)
    finally:
        server.close()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = _families(response.text)
    samples = {s.name for f in families.values() for s in f.samples}
    for metric in METRICS:
        expected = metric.prometheus_name
        if metric.instrument == "Histogram":
            expected += "_count"
        assert expected in samples, metric.name

    duration = families["resilient_call_duration_seconds"]
    assert duration.type == "histogram"
    assert duration.unit in {"seconds", ""}
    counts = {
        (
            s.labels["resilient_pipeline"],
            s.labels["resilient_verdict"],
            s.labels["error_type"],
        ): s.value
        for s in duration.samples
        if s.name.endswith("_count")
    }
    assert counts == {
        ("payments", "success", ""): 1.0,
        ("payments", "transient", "ConnectionError"): 1.0,
        ("payments", "transient", "resilient.TimeoutExceeded"): 1.0,
        ("search", "transient", "ConnectionError"): 1.0,
        ("search", "rejected", "resilient.CircuitOpenError"): 1.0,
        ("backup", "success", ""): 1.0,
    }
    retries = families["resilient_retries"]
    assert retries.type == "counter"
    assert sum(s.value for s in retries.samples if s.name == "resilient_retries_total") == 1.0
    states = {
        (s.labels["resilient_pipeline"], s.labels["resilient_circuit_state"]): s.value
        for s in families["resilient_circuit_state"].samples
    }
    assert states == {
        ("payments", "closed"): 1.0,
        ("payments", "open"): 0.0,
        ("payments", "half_open"): 0.0,
        ("search", "closed"): 0.0,
        ("search", "open"): 1.0,
        ("search", "half_open"): 0.0,
    }
    (waiting,) = families["resilient_bulkhead_waiting"].samples
    assert waiting.value == 0.0
    assert waiting.labels["resilient_policy"] == "pool"
    assert waiting.labels["otel_scope_name"] == "resilient"
    (wait,) = [
        s for s in families["resilient_wait_duration_seconds"].samples if s.name.endswith("_count")
    ]
    assert wait.labels["resilient_policy"] == "limiter"
    assert wait.labels["resilient_admitted"] == "true"
    refusals = families["resilient_retry_budget_refusals"].samples
    assert sum(s.value for s in refusals if s.name.endswith("_total")) == 2.0
    (hedges,) = [s for s in families["resilient_hedges"].samples if s.name.endswith("_total")]
    assert (hedges.labels["resilient_pipeline"], hedges.value) == ("backup", 1.0)
    (fallbacks,) = [s for s in families["resilient_fallbacks"].samples if s.name.endswith("_total")]
    assert fallbacks.labels["resilient_verdict"] == "transient"
    assert fallbacks.labels["error_type"] == "ConnectionError"
    assert len(pipelines) == 3


async def test_asgi_app_serves_the_text_format(clock: FakeClock) -> None:
    """The ASGI app answers GET with the Prometheus text format of the registry."""
    registry = CollectorRegistry()
    telemetry = Telemetry(meter_provider=prometheus.meter_provider(registry=registry))
    pipeline = Pipeline(Timeout(1.0), name="api", clock=clock, telemetry=telemetry)
    assert await pipeline.call(flaky, []) == "ok"
    app = prometheus.asgi_app(registry)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"", "headers": []}
    await app(scope, receive, send)
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    assert start["status"] == 200
    assert dict(start["headers"])[b"Content-Type"].startswith(b"text/plain")
    text = body.decode()
    (sample,) = [
        s
        for s in _families(text)["resilient_call_duration_seconds"].samples
        if s.name == "resilient_call_duration_seconds_count"
    ]
    assert sample.labels["resilient_pipeline"] == "api"
    assert sample.labels["resilient_operation"] == "flaky"
    assert sample.value == 1.0


def test_start_http_server_validates_the_port() -> None:
    """A port outside 0..65535 is a configuration error naming the parameter."""
    with pytest.raises(ConfigurationError, match="port"):
        prometheus.start_http_server(70000, registry=CollectorRegistry())


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False
    )


def test_install_makes_the_global_provider_export_to_prometheus() -> None:
    """install() sets a global SDK provider feeding the default registry; once."""
    out = _run(
        """
        import anyio, resilient
        from prometheus_client import generate_latest
        from resilient.telemetry import prometheus
        pipeline = resilient.Pipeline(name="early")   # built before install(): still reports
        first = prometheus.install()
        assert prometheus.install() is first
        async def f():
            return 1
        anyio.run(pipeline.call, f)
        text = generate_latest().decode()
        print([line for line in text.splitlines()
               if line.startswith("resilient_call_duration_seconds_count")])
        """
    )
    assert out.returncode == 0, out.stderr
    assert 'resilient_pipeline="early"' in out.stdout
    assert out.stdout.strip().endswith("1.0']")


def test_install_uses_an_app_provider_that_already_exports_to_prometheus() -> None:
    """An application's own SDK provider with a PrometheusMetricReader is kept."""
    out = _run(
        """
        from opentelemetry import metrics
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from resilient.telemetry import prometheus
        mine = MeterProvider(metric_readers=[PrometheusMetricReader()])
        metrics.set_meter_provider(mine)
        print(prometheus.install() is mine)
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_install_refuses_a_global_provider_without_prometheus() -> None:
    """A global provider that does not export to Prometheus: a clear ConfigurationError."""
    out = _run(
        """
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from resilient import ConfigurationError
        from resilient.telemetry import prometheus
        metrics.set_meter_provider(MeterProvider())
        try:
            prometheus.asgi_app()
        except ConfigurationError as exc:
            print("refused:", exc)
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused:")
    assert "PrometheusMetricReader" in out.stdout

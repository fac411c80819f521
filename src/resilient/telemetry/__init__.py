"""Telemetry: OpenTelemetry spans and metrics for every pipeline, and Prometheus exposition.

Importing ``resilient`` installs ``Telemetry()`` as the default for every ``Pipeline``: spans
and metrics go to the global OpenTelemetry providers when the application installed the SDK,
and cost almost nothing when it did not. ``Pipeline(telemetry=False)`` turns it off for one
pipeline; ``Pipeline(telemetry=Telemetry(...))`` sends it elsewhere.

``resilient.telemetry.prometheus`` (the ``prometheus`` extra) serves the metrics on
``/metrics``. See docs/telemetry.md for the span and metric reference.
"""

from __future__ import annotations

from resilient._pipeline import install_observer_factory

from ._names import METRICS, MetricInfo
from ._otel import Telemetry

__all__ = ["METRICS", "MetricInfo", "Telemetry"]

install_observer_factory(Telemetry())

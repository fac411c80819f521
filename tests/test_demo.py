"""`make demo` end to end, shortened: a real uvicorn upstream, the clients, the table, the chart."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).parent.parent / "examples" / "demo.py"


@pytest.mark.slow
def test_demo_runs_and_reports_side_by_side(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(DEMO.parent.parent / "src")}
    done = subprocess.run(
        [sys.executable, str(DEMO), "--scale", "0.25", "--rate", "12", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    for row in ("success rate", "latency p99", "requests the upstream received",
                "load amplification", "time to recover after the outage"):  # fmt: skip
        assert row in out
    lines = out.splitlines()
    header = lines[next(i for i, line in enumerate(lines) if line.startswith("---")) - 1]
    assert header.split() == ["resilient", "plain", "httpx", "httpx-retries"]
    assert "next to the best peer" in out
    assert "breaker openings" in out
    assert "resilient_call_duration_seconds_count{" in out  # scraped from /metrics
    chart = tmp_path / "demo.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"chart: {chart}" in out

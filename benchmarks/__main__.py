"""Benchmark runner: ``python -m benchmarks --quick`` (CI gate) or ``--full``.

Each suite runs in its own process; every ratio compares two cases measured in the same run.
Quick mode fails (exit 1) when a ratio exceeds its target by more than the margin.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

SUITES = [
    "suite_core",
    "suite_breaker",
    "suite_retry",
    "suite_jitter",
    "suite_serde",
    "suite_limits",
    "suite_telemetry",
    "suite_asgi",
    "suite_httpx",
]
QUICK_MARGIN = 1.5  # quick mode fails only past 1.5x the target: noisy shared machines


def _run_suite_in_process(suite: str, quick: bool) -> dict[str, float]:
    code = (
        "import json, importlib;"
        f"m = importlib.import_module('benchmarks.{suite}');"
        f"print(json.dumps(m.run(quick={quick})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short run with ratio gates (CI)")
    mode.add_argument("--full", action="store_true", help="long run; writes results/")
    parser.add_argument("--suite", action="append", help="run only these suites")
    args = parser.parse_args(argv)
    quick = not args.full
    failures: list[str] = []
    report: dict[str, dict[str, float]] = {}
    for suite in args.suite or SUITES:
        medians = _run_suite_in_process(suite, quick)
        report[suite] = medians
        print(f"\n## {suite} ({'quick' if quick else 'full'})")
        module = importlib.import_module(f"benchmarks.{suite}")
        unit = getattr(module, "UNIT", None)  # suites counting something other than time
        for name, ns in medians.items():
            if unit is None:
                print(f"  {name:<50} {ns / 1000:9.2f} us")
            else:
                print(f"  {name:<50} {ns:9.2f} ({unit})")
        for case, reference, target in getattr(module, "GATES", []):
            ratio = medians[case] / medians[reference]
            limit = target * QUICK_MARGIN if quick else target
            verdict = "ok" if ratio <= limit else "FAIL"
            print(f"  gate {case} / {reference}: {ratio:.2f}x (target {target}x) {verdict}")
            if ratio > limit:
                failures.append(f"{suite}: {case} / {reference} = {ratio:.2f}x > {limit:.2f}x")
    if not quick:
        out = Path(__file__).parent / "results"
        out.mkdir(exist_ok=True)
        (out / "results.json").write_text(json.dumps(report, indent=2))
    if failures:
        print("\nbenchmark gates failed:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

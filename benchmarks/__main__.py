"""Benchmark runner: ``python -m benchmarks --quick`` (CI gate) or ``--full``.

Each suite runs in its own process; every ratio compares two cases measured in the same run.
Quick mode fails (exit 1) when a ratio exceeds its target by more than the margin, or when a
suite crashes. Full mode runs longer, reports targets missed (without failing) and refreshes
``docs/performance.md`` and ``docs/performance.png``. Both write the results as JSON
(``benchmarks/results/<mode>.json``, or ``--json PATH``).

To add a suite: write ``benchmarks/suite_<name>.py`` (see ``_harness.py`` for what a suite
module defines) and append its module name to ``SUITES``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
    "suite_overload",
    "suite_redis",
    "suite_hedge",
]
# The cross-cutting comparisons (issue 10): five policies together, each policy vs its peers,
# the failure path, memory, chaos switched off. Feature suites go in the list above.
SUITES += ["suite_stacks", "suite_policies", "suite_failure", "suite_memory", "suite_chaos"]
QUICK_MARGIN = 1.5  # quick mode fails only past 1.5x the target: noisy shared machines
SUITE_TIMEOUT = {True: 120.0, False: 1800.0}  # seconds per suite process, quick / full
ROOT = Path(__file__).resolve().parent.parent
_MARK = "@@benchmark-result@@"

_CHILD = f"""
import importlib, json, sys
suite, quick = sys.argv[1], sys.argv[2] == "1"
module = importlib.import_module("benchmarks." + suite)
results = module.run(quick=quick)
doc = (module.__doc__ or suite).strip().splitlines()[0]
print()
print({_MARK!r} + json.dumps({{
    "results": {{k: float(v) for k, v in results.items()}},
    "unit": getattr(module, "UNIT", "ns"),
    "reference": getattr(module, "REFERENCE", None),
    "title": getattr(module, "TITLE", None) or doc,
    "notes": dict(getattr(module, "NOTES", {{}})),
    "gates": [list(g) for g in getattr(module, "GATES", [])],
}}))
"""


def _run_suite_in_process(suite: str, quick: bool) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, suite, "1" if quick else "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=SUITE_TIMEOUT[quick],
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"exit status {proc.returncode}\n{proc.stderr.strip()[-3000:]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_MARK):
            return dict(json.loads(line[len(_MARK) :]))
    raise RuntimeError(f"no result line in its output\n{proc.stdout[-2000:]}")


def _format_value(value: float, unit: str) -> str:
    if unit == "ns":
        return f"{value / 1000:10.2f} us"
    return f"{value:10.1f} {unit}"


def evaluate_gates(data: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    """The gates of one suite's data, each with its ratio, limit and verdict."""
    results = data["results"]
    out = []
    for case, reference, target in data["gates"]:
        limit = target * QUICK_MARGIN if quick else target
        if case not in results or reference not in results or not results[reference]:
            out.append({"case": case, "reference": reference, "target": target,
                        "limit": limit, "ratio": None, "verdict": "skipped"})  # fmt: skip
            continue
        ratio = results[case] / results[reference]
        if ratio <= target:
            verdict = "ok"
        elif ratio <= limit:
            verdict = "within margin"
        else:
            verdict = "FAIL" if quick else "missed"
        out.append({"case": case, "reference": reference, "target": target,
                    "limit": limit, "ratio": ratio, "verdict": verdict})  # fmt: skip
    return out


def _environment() -> dict[str, Any]:
    from importlib import metadata

    versions = {}
    for dist in ("resilient-patterns", "anyio", "tenacity", "stamina", "backoff", "aiobreaker",
                 "pybreaker", "circuitbreaker", "aiolimiter", "httpx-retries", "hyx",
                 "pyresilience", "httpx", "uvicorn"):  # fmt: skip
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "versions": versions,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short run with ratio gates (CI)")
    mode.add_argument("--full", action="store_true", help="long run; refreshes docs/performance.*")
    parser.add_argument("--suite", action="append", help="run only these suites")
    parser.add_argument("--json", type=Path, help="where to write the JSON results")
    parser.add_argument("--no-docs", action="store_true", help="full mode: leave docs/ alone")
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    parser.add_argument(
        "--report", type=Path, metavar="JSON", help="rewrite docs/ from a full run's JSON; no run"
    )
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(SUITES))
        return 0
    if args.report:
        from benchmarks._report import write_docs

        for path in write_docs(json.loads(args.report.read_text()), ROOT / "docs"):
            print(f"wrote {path}")
        return 0
    quick = not args.full
    suites = args.suite or SUITES
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s): {', '.join(unknown)}; see --list")
    failures: list[str] = []
    report: dict[str, Any] = {"mode": "quick" if quick else "full", "suites": {}}
    started = time.perf_counter()
    for suite in suites:
        t0 = time.perf_counter()
        try:
            data = _run_suite_in_process(suite, quick)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"\n## {suite}: FAILED to run: {exc}")
            failures.append(f"{suite}: did not run ({str(exc).splitlines()[0]})")
            continue
        data["seconds"] = round(time.perf_counter() - t0, 2)
        data["gate_results"] = evaluate_gates(data, quick)
        report["suites"][suite] = data
        print(f"\n## {suite} ({report['mode']}, {data['seconds']:.1f} s): {data['title']}")
        for name, value in data["results"].items():
            print(f"  {name:<66} {_format_value(value, data['unit'])}")
        for gate in data["gate_results"]:
            ratio = "n/a" if gate["ratio"] is None else f"{gate['ratio']:.2f}x"
            print(f"  gate {gate['case']} / {gate['reference']}: {ratio} "
                  f"(target {gate['target']:.3g}x) {gate['verdict']}")  # fmt: skip
            if gate["verdict"] == "FAIL":
                failures.append(f"{suite}: {gate['case']} / {gate['reference']} = "
                                f"{gate['ratio']:.2f}x > {gate['limit']:.2f}x")  # fmt: skip
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["environment"] = _environment()
    out = args.json or ROOT / "benchmarks" / "results" / f"{report['mode']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{len(report['suites'])} suites in {report['seconds']:.1f} s; results: {out}")
    if not quick and not args.no_docs:
        from benchmarks._report import write_docs

        for path in write_docs(report, ROOT / "docs"):
            print(f"wrote {path}")
    if failures:
        print("\nbenchmark gates failed:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

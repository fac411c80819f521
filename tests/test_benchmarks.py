"""The benchmark runner's bookkeeping: gates, skipped gates, and the docs it regenerates."""

from __future__ import annotations

from typing import Any

from benchmarks.__main__ import QUICK_MARGIN, evaluate_gates
from benchmarks._report import BEGIN, END, merge, render


def _data(results: dict[str, float], gates: list[tuple[str, str, float]]) -> dict[str, Any]:
    return {"results": results, "gates": [list(g) for g in gates]}


def test_quick_gate_fails_only_past_the_margin() -> None:
    data = _data(
        {"ref": 100.0, "ok": 120.0, "noisy": 140.0, "slow": 100.0 * 1.3 * QUICK_MARGIN + 1},
        [("ok", "ref", 1.3), ("noisy", "ref", 1.3), ("slow", "ref", 1.3)],
    )
    verdicts = [g["verdict"] for g in evaluate_gates(data, quick=True)]
    assert verdicts == ["ok", "within margin", "FAIL"]


def test_full_mode_reports_missed_targets_without_failing() -> None:
    data = _data({"ref": 100.0, "case": 140.0}, [("case", "ref", 1.3)])
    [gate] = evaluate_gates(data, quick=False)
    assert gate["verdict"] == "missed"


def test_gate_on_a_case_not_built_yet_is_skipped() -> None:
    data = _data({"ref": 100.0}, [("resilient.standard()", "ref", 1.3)])
    [gate] = evaluate_gates(data, quick=True)
    assert (gate["verdict"], gate["ratio"]) == ("skipped", None)


def _report() -> dict[str, Any]:
    data = _data({"bare await": 100.0, "mine": 250.0}, [("mine", "bare await", 3.0)])
    data.update(unit="ns", reference="bare await", title="Suite title", notes={"mine": "n"})
    data["gate_results"] = evaluate_gates(data, quick=False)
    env = {"date": "d", "machine": "m", "implementation": "CPython", "python": "3.11",
           "versions": {"hyx": "0.0.2"}}  # fmt: skip
    return {"suites": {"suite_x": data}, "environment": env, "seconds": 1.0}


def test_render_has_targets_and_a_ratio_column() -> None:
    block = render(_report(), chart=True)
    assert block.startswith(BEGIN)
    assert block.endswith(END)
    assert "| mine / bare await | 2.50x | <= 3x | ok | suite_x |" in block
    assert "| mine | 0.25 | 2.50 | n |" in block
    assert "![benchmark chart](performance.png)" in block


def test_regenerating_keeps_sections_written_by_others() -> None:
    jitter = "## Jitter simulation\n\nWritten by the retry suite.\n"
    first = merge(f"# Performance\n\n{jitter}", render(_report(), chart=False))
    assert jitter in first
    assert first.index(BEGIN) < first.index("## Jitter simulation")
    second = merge(first.replace("2.50x", "9.99x"), render(_report(), chart=False))
    assert second == first  # the generated block is replaced, the rest kept verbatim
    assert second.count(BEGIN) == 1

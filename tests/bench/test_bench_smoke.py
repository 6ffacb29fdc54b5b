"""The core benchmark runs end to end and writes a report with every figure (no timings checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "core.py"

EXPECTED_ROWS = [
    "| (a) insert 10,000 rows in one transaction, tracked / untracked |",
    "| (b) 10,000 single-row UPDATE transactions, tracked / untracked |",
    "| (c) merge 40,000 cells into an empty replica |",
    "| (c) merge / executemany INSERT of the same 10,000 rows into a plain table |",
    "| (d) db.changes() over 40,000 cells |",
    "| (d) db.changes() / plain `SELECT *` + fetchall() of the same 10,000 rows |",
    "| (d) raw SQL read of the metadata joined to the table (context) |",
    "| (e) metadata bytes per replicated cell |",
    "| (f) re-merge of the same 40,000 cells (all lose) |",
    "| (f) re-merge / executemany INSERT of the same 10,000 rows into a plain table |",
    "| (g) incremental sync, 200 rounds: changes_since + merge |",
]


@pytest.mark.slow
def test_quick_benchmark_writes_a_report_with_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = out.read_text()
    table = [line for line in report.splitlines() if line.startswith("| (")]
    assert len(table) == len(EXPECTED_ROWS)
    for expected, line in zip(EXPECTED_ROWS, table, strict=True):
        assert line.startswith(expected)
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 5, line  # measure, result, detail, target, status
        assert cells[1], line  # a result was measured
        assert cells[4] in ("met", "**missed**", "-"), line
    for section in ("## Machine", "## Figures", "## Missed targets", "## Where the time goes"):
        assert section in report
    assert "SQLite: " in report and "nproc: " in report


@pytest.mark.slow
def test_quick_gc_benchmark_reports_every_figure_and_meets_its_targets(tmp_path: Path) -> None:
    out = tmp_path / "results-gc.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT.with_name("gc.py")), "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = out.read_text()
    for row in (
        "| metadata per live cell |",
        "| per tombstone, before collection |",
        "| per tombstone, after collection |",
    ):
        assert row in report, row
    # Byte counts and tombstone counts, not timings: these hold on any machine.
    assert "all younger than the horizon** " in report and "horizon: met" in report
    assert "target < 5%: met" in report
    assert "0 left on the relay" in report

"""The cluster benchmark (bench/cluster.py) runs end to end on its own private PostgreSQL,
nginx and relay nodes and writes a report with every figure (no timings checked)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "cluster.py"
NUMBER = r"\d+(\.\d+)?"


@pytest.mark.slow
@pytest.mark.e2e
def test_quick_cluster_benchmark_writes_a_report_with_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRSYNC_RELAY_")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=env,
    )
    required = any(os.environ.get(v) == "1" for v in ("CRSYNC_REQUIRE_PG", "CRSYNC_REQUIRE_NGINX"))
    if proc.returncode == 2 and "needs PostgreSQL and nginx" in proc.stderr and not required:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = out.read_text()
    for n in (1, 2, 3):
        row = rf"\| {n} \| {NUMBER} \| {NUMBER} ms \| {NUMBER} ms \| [1-9]\d* \|"
        assert re.search(row, report), f"no throughput row for {n} node(s):\n{report}"
    for receiver in ("same node", "other node"):
        assert re.search(rf"\| {receiver} \| {NUMBER} ms \| {NUMBER} ms \|", report), report
    assert re.search(rf"- median {NUMBER} ms, max {NUMBER} ms", report), report
    assert re.search(r"[1-9]\d* devices\s+were on it", report), report  # the kill moved someone
    for backend in ("PostgreSQL", "SQLite"):
        assert re.search(rf"\| {backend} \| [1-9]\d* \| [1-9]\d* \|", report), report
    assert "cores" in report

"""The existing-app example runs: adopting crsync on a populated database converges."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path


def _notes(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT n.title, n.body, n.pinned, (SELECT group_concat(tag, ',') FROM "
            "(SELECT tag FROM tags WHERE note_id = n.id ORDER BY tag)) "
            "FROM notes AS n ORDER BY n.title"
        ).fetchall()
    finally:
        conn.close()


def test_existing_app_example_backfills_syncs_and_converges(
    run_example: Callable[..., str], tmp_path: Path
) -> None:
    out = run_example("existing_app.py")
    assert "refused: table 'notes': has a UNIQUE index notes_title on (title)" in out
    assert "backfilled feed: 16 changes" in out
    assert "feed since 1: 5 changes" in out
    assert "phone merged 21 changes, 21 applied" in out
    assert out.rstrip().endswith("converged: yes")

    # The files themselves, read with plain sqlite3 as the app would.
    laptop, phone = _notes(tmp_path / "notes.db"), _notes(tmp_path / "phone-notes.db")
    assert (
        laptop
        == phone
        == [
            ("Books", "read Designing Data-Intensive Applications", 0, "home"),
            ("Groceries", "milk, eggs, coffee", 0, "home"),
            ("Trip", "train booked, seat 42", 1, "travel"),
        ]
    )


def test_existing_app_example_can_rerun_in_the_same_directory(
    run_example: Callable[..., str],
) -> None:
    for _ in range(2):  # the fixture keeps the files in the same tmp_path both times
        assert run_example("existing_app.py").rstrip().endswith("converged: yes")

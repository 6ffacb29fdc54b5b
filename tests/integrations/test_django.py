"""Django: real migrations (``call_command("migrate")``) on SQLite with the
``crsync.contrib.django`` app installed. Each step runs in a process of its own (Django's
settings and app registry are process-global)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import crsync

pytest.importorskip("django")

RUN = Path(__file__).parent / "django_project" / "run.py"


def step(db: Path | str, name: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(RUN), str(db), name], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def rows(path: Path, table: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
    finally:
        conn.close()


def test_migrate_tracks_models_and_retracks_after_a_rebuild(tmp_path: Path) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"

    first = step(a, "0001")  # creates the tables: tracked by post_migrate
    assert first["tracked"] == ["notes_note", "notes_tag"]
    assert first["tag_id"] > 2**32  # crsync.new_id(), the model's default
    assert [c[:2] for c in first["captured"]] == [
        ["notes_note", "done"],
        ["notes_note", "title"],
        ["notes_tag", "name"],
        ["notes_tag", "note_id"],
    ]

    second = step(a, "0002")  # AlterField: Django's schema editor rebuilds notes_note
    assert "varchar(200)" in second["schema"]
    assert second["readopted"] > 0  # the rebuilt table's rows, re-adopted by post_migrate
    assert ["notes_note", "title", "written after 0002"] in second["captured"]
    assert ["notes_tag", "name", "0002"] in second["captured"]

    step(b, "0002")  # another device, migrated straight to the new schema, writing too
    da, db_ = crsync.connect(a), crsync.connect(b)
    db_.merge(da.changes())
    da.merge(db_.changes())
    for table in ("notes_note", "notes_tag"):
        assert rows(a, table) == rows(b, table)
    assert len(rows(b, "notes_note")) == 3
    titles = {r[2] for r in rows(b, "notes_note")}
    assert titles == {"written after 0001", "written after 0002"}


def test_an_in_memory_database_is_not_tracked_and_cannot_sync(tmp_path: Path) -> None:
    report = step(":memory:", "memory")
    assert report["error"] == "UnsupportedDatabaseError"
    assert "in-memory" in report["message"]

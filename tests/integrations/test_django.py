"""Django: real migrations (``call_command("migrate")``) on SQLite with the
``crsync.contrib.django`` app installed. Each step runs in a process of its own (Django's
settings and app registry are process-global)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import crsync

pytest.importorskip("django")

RUN = Path(__file__).parent / "django_project" / "run.py"


def run(db: Path | str, name: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(RUN), str(db), name],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def step(db: Path | str, name: str) -> dict[str, Any]:
    proc = run(db, name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def rows(path: Path, table: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
    finally:
        conn.close()


@pytest.mark.slow
def test_migrate_tracks_models_and_retracks_after_a_rebuild(tmp_path: Path) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"

    first = step(a, "0001")  # creates the tables: tracked by post_migrate
    assert first["tracked"] == ["notes_note", "notes_tag"]
    assert first["tag_id"] > 2**32  # crsync.new_id(), the model's default
    assert [c[:2] for c in first["captured"]] == [
        ["notes_note", "done"],
        ["notes_note", "title"],
        ["notes_tag", "color"],  # the insert records every column (NULL here)
        ["notes_tag", "name"],
        ["notes_tag", "note_id"],
    ]

    second = step(a, "0002")  # AlterField: Django's schema editor rebuilds notes_note
    assert "varchar(200)" in second["schema"]
    assert second["readopted"] > 0  # the rebuilt table's rows, re-adopted by post_migrate
    assert ["notes_note", "title", "written after 0002"] in second["captured"]
    assert ["notes_tag", "name", "0002"] in second["captured"]

    third = step(a, "0003")  # RemoveField: crsync's backend rebuilds notes_tag
    assert "color" not in third["tag_schema"]
    assert ["notes_tag", "name", "0003"] in third["captured"]

    step(b, "0003")  # another device, migrated straight to the new schema, writing too
    da, db_ = crsync.connect(a), crsync.connect(b)
    db_.merge(da.changes())
    da.merge(db_.changes())
    for table in ("notes_note", "notes_tag"):
        assert rows(a, table) == rows(b, table)
    assert len(rows(b, "notes_note")) == 4
    titles = {r[2] for r in rows(b, "notes_note")}
    assert titles == {"written after 0001", "written after 0002", "written after 0003"}


def test_removing_a_field_needs_the_crsync_backend(tmp_path: Path) -> None:
    """Django's own backend drops the column with ALTER TABLE, which SQLite refuses on a
    tracked table; nothing is half-applied (the migration rolls back)."""
    path = tmp_path / "a.db"
    step(path, "0002")
    proc = run(path, "0003", CRSYNC_TEST_ENGINE="django.db.backends.sqlite3")
    assert proc.returncode != 0
    assert "error in trigger notes_tag__crsync_upd after drop column" in proc.stderr
    assert "color" not in step(path, "0003")["tag_schema"]  # crsync's backend then works


def test_an_in_memory_database_is_not_tracked_and_cannot_sync(tmp_path: Path) -> None:
    report = step(":memory:", "memory")
    assert report["error"] == "UnsupportedDatabaseError"
    assert "in-memory" in report["message"]

"""Two database files converge by exchanging their change feeds (the core's main job)."""

from __future__ import annotations

from pathlib import Path

import crsync


def _open(path: Path) -> crsync.Database:
    db = crsync.connect(path)
    db.conn.execute(
        "CREATE TABLE IF NOT EXISTS todos "
        "(id TEXT PRIMARY KEY NOT NULL, title TEXT, done INTEGER DEFAULT 0)"
    )
    db.track("todos")
    return db


def test_two_files_converge_after_concurrent_edits(tmp_path: Path) -> None:
    a, b = _open(tmp_path / "a.db"), _open(tmp_path / "b.db")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'milk')")
    b.conn.execute("INSERT INTO todos (id, title) VALUES ('2', 'eggs')")
    b.merge(a.changes())
    a.merge(b.changes())
    a.conn.execute("UPDATE todos SET done = 1 WHERE id = '2'")
    b.conn.execute("DELETE FROM todos WHERE id = '1'")
    va, vb = a.db_version, b.db_version
    b.merge(a.changes(since=0))
    a.merge(b.changes(since=0))
    rows = "SELECT * FROM todos ORDER BY id"
    assert a.conn.execute(rows).fetchall() == b.conn.execute(rows).fetchall() == [("2", "eggs", 1)]
    assert a.db_version >= va and b.db_version >= vb

"""``crsync rekey`` and ``--integer-keys``: keeping integer keys safely from the command line."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import crsync
from crsync.cli import main


def _app(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT);
        CREATE TABLE attachments (id TEXT PRIMARY KEY NOT NULL, note INTEGER
            REFERENCES notes(id), name TEXT);
        CREATE TABLE tags (id TEXT PRIMARY KEY NOT NULL, note INTEGER, tag TEXT);
        INSERT INTO notes (title) VALUES ('one'), ('two');
        INSERT INTO attachments VALUES ('a1', 2, 'b.png');
        INSERT INTO tags VALUES ('t1', 1, 'x');
        """
    )
    conn.commit()
    conn.close()
    return path


def _pairs(db: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT a.name, n.title FROM attachments a JOIN notes n ON n.id = a.note UNION ALL "
            "SELECT t.tag, n.title FROM tags t JOIN notes n ON n.id = t.note ORDER BY 1"
        ).fetchall()
    finally:
        conn.close()


def test_track_refuses_an_integer_key_and_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _app(tmp_path / "app.db")
    assert main(["track", str(db), "notes"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("crsync: error: table 'notes'")
    assert "--integer-keys app-assigned" in err and "crsync rekey" in err
    assert main(["triggers", str(db), "notes"]) != 0
    assert main(["triggers", str(db), "notes", "--integer-keys", "app-assigned"]) == 0
    assert main(["track", str(db), "notes", "--integer-keys", "app-assigned"]) == 0
    assert crsync.connect(db).tracked_tables() == ["notes"]


def test_rekey_rewrites_keys_and_references_then_the_table_can_be_tracked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _app(tmp_path / "app.db")
    before = _pairs(db)
    assert main(["rekey", str(db), "notes", "--ref", "tags.note"]) == 0
    out = capsys.readouterr().out
    assert "re-keyed 2 rows of notes (id)" in out
    assert "attachments.note (foreign key)" in out and "tags.note (--ref)" in out
    assert _pairs(db) == before
    conn = sqlite3.connect(db)
    assert all(i > 2**32 for (i,) in conn.execute("SELECT id FROM notes"))
    conn.close()
    assert main(["track", str(db), "notes", "--integer-keys", "app-assigned"]) == 0
    # a tracked table is never re-keyed: its keys are the rows' identity everywhere
    assert main(["rekey", str(db), "notes"]) != 0
    assert "is tracked" in capsys.readouterr().err


def test_rekey_with_a_bad_reference_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _app(tmp_path / "app.db")
    assert main(["rekey", str(db), "notes", "--ref", "tags.missing"]) != 0
    assert "no column" in capsys.readouterr().err
    conn = sqlite3.connect(db)
    assert [r[0] for r in conn.execute("SELECT id FROM notes ORDER BY id")] == [1, 2]
    conn.close()

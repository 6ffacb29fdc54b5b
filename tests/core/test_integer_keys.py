"""Integer keys that stay unique across devices: crsync.new_id() and re-keying existing rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from core_helpers import SITE_A, SITE_B, open_db

import crsync
from crsync import SchemaError
from crsync.ids import find_references


def test_new_id_is_a_positive_signed_64_bit_integer_and_does_not_repeat() -> None:
    ids = [crsync.new_id() for _ in range(100_000)]
    assert all(isinstance(i, int) and 0 < i < 2**63 for i in ids)
    assert len(set(ids)) == len(ids)
    # spread over the whole range (random bits, not a counter)
    assert max(ids) > 2**62 and min(ids) < 2**60
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in ids[:1000]])
    assert conn.execute("SELECT typeof(id), count(*) FROM t GROUP BY 1").fetchall() == [
        ("integer", 1000)
    ]


NOTES = "CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT)"


def test_two_devices_inserting_with_new_id_keep_both_rows() -> None:
    a, b = open_db(site=SITE_A), open_db(site=SITE_B)
    for db in (a, b):
        db.conn.execute(NOTES)
        db.track("notes", integer_keys="app-assigned")
    a.conn.execute("INSERT INTO notes (id, title) VALUES (?, 'from a')", (crsync.new_id(),))
    b.conn.execute("INSERT INTO notes (id, title) VALUES (?, 'from b')", (crsync.new_id(),))
    a.merge(b.changes())
    b.merge(a.changes())
    for db in (a, b):
        titles = sorted(r[0] for r in db.conn.execute("SELECT title FROM notes"))
        assert titles == ["from a", "from b"]


def test_the_data_loss_the_refusal_prevents() -> None:
    """Why track() refuses by default: SQLite-assigned ids collide across devices."""
    a, b = open_db(site=SITE_A), open_db(site=SITE_B)
    for db in (a, b):
        db.conn.execute(NOTES)
        with pytest.raises(SchemaError):
            db.track("notes")
        db.track("notes", integer_keys="app-assigned")  # a broken promise, for the demo
    a.conn.execute("INSERT INTO notes (title) VALUES ('from a')")
    b.conn.execute("INSERT INTO notes (title) VALUES ('from b')")
    a.merge(b.changes())
    assert a.conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 1


def _library(path: Path | str = ":memory:") -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        """
        PRAGMA foreign_keys = ON;
        CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT, parent INTEGER
            REFERENCES notes(id));
        CREATE TABLE attachments (id INTEGER PRIMARY KEY, note INTEGER NOT NULL
            REFERENCES notes ON DELETE CASCADE, name TEXT);
        CREATE TABLE cascading (id INTEGER PRIMARY KEY, note INTEGER
            REFERENCES notes(id) ON UPDATE CASCADE);
        CREATE TABLE tags (note_id INTEGER, tag TEXT);  -- no declared foreign key
        INSERT INTO notes VALUES (1, 'one', NULL), (2, 'two', 1), (3, 'three', 2);
        INSERT INTO attachments VALUES (1, 1, 'a.png'), (2, 3, 'b.png'), (3, 3, 'c.png');
        INSERT INTO cascading VALUES (1, 2);
        INSERT INTO tags VALUES (1, 'x'), (3, 'y'), (99, 'dangling stays');
        """
    )
    return conn


def _graph(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    """The data with keys replaced by titles: what re-keying must keep."""
    return [
        *conn.execute(
            "SELECT n.title, p.title FROM notes n LEFT JOIN notes p ON p.id = n.parent "
            "ORDER BY n.title"
        ),
        *conn.execute(
            "SELECT a.name, n.title FROM attachments a JOIN notes n ON n.id = a.note "
            "ORDER BY a.name"
        ),
        *conn.execute("SELECT 'c', n.title FROM cascading c JOIN notes n ON n.id = c.note"),
        *conn.execute(
            "SELECT t.tag, n.title FROM tags t LEFT JOIN notes n ON n.id = t.note_id ORDER BY t.tag"
        ),
    ]


def test_rekey_moves_keys_to_new_ids_and_keeps_every_reference() -> None:
    conn = _library()
    before = _graph(conn)
    result = crsync.rekey(conn, "notes", ["tags.note_id"])
    assert result.rows == 3
    assert {str(r) for r in result.references} == {
        "notes.parent",
        "attachments.note",
        "cascading.note",
        "tags.note_id",
    }
    ids = [r[0] for r in conn.execute("SELECT id FROM notes")]
    assert all(i > 2**32 for i in ids)
    assert _graph(conn) == before
    assert conn.execute("SELECT note_id FROM tags WHERE tag = 'dangling stays'").fetchone() == (99,)
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert not conn.in_transaction


def test_references_are_found_through_declared_foreign_keys() -> None:
    conn = _library()
    refs = find_references(conn, "notes", "id")
    assert sorted(map(str, refs)) == ["attachments.note", "cascading.note", "notes.parent"]


def test_rekey_is_all_or_nothing() -> None:
    conn = _library()
    before = conn.execute("SELECT * FROM notes ORDER BY id").fetchall()
    calls = 0

    def failing_id() -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("boom")
        return crsync.new_id()

    with pytest.raises(RuntimeError):
        crsync.rekey(conn, "notes", make_id=failing_id)
    assert conn.execute("SELECT * FROM notes ORDER BY id").fetchall() == before
    assert not conn.in_transaction


def test_rekey_refuses_a_tracked_table_and_explains() -> None:
    db = open_db()
    db.conn.execute(NOTES)
    db.track("notes", integer_keys="app-assigned")
    with pytest.raises(SchemaError, match="is tracked") as err:
        crsync.rekey(db.conn, "notes")
    assert "untrack" in str(err.value)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nope.x", "no such table"),
        ("tags.nope", "no column"),
        ("tags", "table.column"),
        ("notes.id", "itself"),
    ],
)
def test_rekey_refuses_bad_references(ref: str, message: str) -> None:
    conn = _library()
    before = _graph(conn)
    with pytest.raises(crsync.CrsyncError, match=message):
        crsync.rekey(conn, "notes", [ref])
    assert _graph(conn) == before


def test_rekey_refuses_a_table_without_one_integer_key() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL)")
    with pytest.raises(SchemaError, match="one INTEGER column"):
        crsync.rekey(conn, "t")


def test_rekeyed_tables_sync_between_devices(tmp_path: Path) -> None:
    """The whole recipe: re-key, track with the opt-in, insert with new_id(), sync."""
    _library(tmp_path / "a.db").close()
    a = crsync.connect(tmp_path / "a.db")
    a.conn.execute("PRAGMA foreign_keys = OFF")
    crsync.rekey(a.conn, "notes", ["tags.note_id"])
    a.conn.executescript(
        """
        CREATE TABLE notes2 (id INTEGER PRIMARY KEY, title TEXT, parent INTEGER);
        INSERT INTO notes2 SELECT * FROM notes;
        DROP TABLE notes;
        ALTER TABLE notes2 RENAME TO notes;
        """
    )
    a.track("notes", integer_keys="app-assigned")
    b = crsync.connect(tmp_path / "b.db")
    b.conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT, parent INTEGER)")
    b.track("notes", integer_keys="app-assigned")
    b.merge(a.changes())
    a.conn.execute("INSERT INTO notes (id, title) VALUES (?, 'four')", (crsync.new_id(),))
    b.conn.execute("INSERT INTO notes (id, title) VALUES (?, 'five')", (crsync.new_id(),))
    a.merge(b.changes())
    b.merge(a.changes())
    q = "SELECT id, title, parent FROM notes ORDER BY id"
    assert a.conn.execute(q).fetchall() == b.conn.execute(q).fetchall()
    assert len(a.conn.execute(q).fetchall()) == 5

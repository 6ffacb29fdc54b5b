"""A copied database file is a second replica: it must get its own site id, by itself."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

import crsync
from crsync import identity

TODOS = "CREATE TABLE todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, done INTEGER DEFAULT 0)"


def _make(path: Path) -> crsync.Database:
    db = crsync.connect(path)
    db.conn.execute(TODOS)
    db.track("todos")
    db.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'before the copy')")
    return db


def _copy_with_wal(src: Path, dst: Path) -> None:
    """Copy a database as a file manager would while the app has it open: the file and
    whatever its WAL holds."""
    for suffix in ("", "-wal"):
        s = Path(str(src) + suffix)
        if s.exists():
            shutil.copy(s, str(dst) + suffix)


def _rows(db: crsync.Database) -> list[tuple[object, ...]]:
    return db.conn.execute("SELECT id, title FROM todos ORDER BY id").fetchall()


def test_a_copied_file_gets_a_new_site_id_and_the_original_keeps_its_own(
    tmp_path: Path,
) -> None:
    a = _make(tmp_path / "app.db")
    site = a.site_id
    a.close()  # checkpointed: the copy is the file alone
    shutil.copy(tmp_path / "app.db", tmp_path / "copy.db")
    copy = crsync.connect(tmp_path / "copy.db")
    original = crsync.connect(tmp_path / "app.db")
    assert original.site_id == site
    assert copy.site_id != site and len(copy.site_id) == 16
    # the copied history stays attributed to the site that made it
    assert {c.site_id for c in copy.changes()} == {site}
    # and the copy does not reset again on the next open
    new = copy.site_id
    copy.close()
    assert crsync.connect(tmp_path / "copy.db").site_id == new


def test_a_copy_taken_with_its_wal_while_the_app_has_the_file_open_gets_a_new_site_id(
    tmp_path: Path,
) -> None:
    a = _make(tmp_path / "app.db")
    assert Path(str(tmp_path / "app.db") + "-wal").stat().st_size > 0
    _copy_with_wal(tmp_path / "app.db", tmp_path / "copy.db")
    copy = crsync.connect(tmp_path / "copy.db")
    assert copy.site_id != a.site_id
    assert _rows(copy) == [("1", "before the copy")]
    assert crsync.connect(tmp_path / "app.db").site_id == a.site_id


def test_copies_that_both_write_converge_through_their_change_feeds(tmp_path: Path) -> None:
    a = _make(tmp_path / "app.db")
    a.close()
    shutil.copy(tmp_path / "app.db", tmp_path / "copy.db")
    a = crsync.connect(tmp_path / "app.db")
    b = crsync.connect(tmp_path / "copy.db")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('a', 'written on the original')")
    b.conn.execute("INSERT INTO todos (id, title) VALUES ('b', 'written on the copy')")
    b.conn.execute("UPDATE todos SET title = 'edited on the copy' WHERE id = '1'")
    # A relay never sends a site its own changes back: exchange as it would.
    a.merge(b.changes(exclude_site=a.site_id))
    b.merge(a.changes(exclude_site=b.site_id))
    expected = [
        ("1", "edited on the copy"),
        ("a", "written on the original"),
        ("b", "written on the copy"),
    ]
    assert _rows(a) == expected
    assert _rows(b) == expected


def test_reopening_checkpointing_and_vacuum_keep_the_site_id(tmp_path: Path) -> None:
    a = _make(tmp_path / "app.db")
    site = a.site_id
    for _ in range(3):
        a.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        a.conn.execute("VACUUM")
        a.close()
        a = crsync.connect(tmp_path / "app.db")
        assert a.site_id == site
    assert identity.full_push_pending(a.conn) is None


def test_a_file_renamed_in_place_keeps_its_site_id(tmp_path: Path) -> None:
    a = _make(tmp_path / "app.db")
    site = a.site_id
    a.close()
    (tmp_path / "moved").mkdir()
    os.rename(tmp_path / "app.db", tmp_path / "moved" / "renamed.db")
    b = crsync.connect(tmp_path / "moved" / "renamed.db")
    assert b.site_id == site
    stored = identity.stored(b.conn)
    assert stored is not None and stored.path == os.path.realpath(tmp_path / "moved" / "renamed.db")


def test_a_file_replaced_by_a_copy_is_a_new_replica(tmp_path: Path) -> None:
    """A save that writes a new file and renames it over the old one gives a new inode: the
    reset it causes costs one full push, and nothing of the data."""
    a = _make(tmp_path / "app.db")
    site = a.site_id
    a.close()
    shutil.copy(tmp_path / "app.db", tmp_path / "app.db.tmp")
    os.replace(tmp_path / "app.db.tmp", tmp_path / "app.db")
    b = crsync.connect(tmp_path / "app.db")
    assert b.site_id != site
    assert _rows(b) == [("1", "before the copy")]
    assert {c.site_id for c in b.changes()} == {site}
    assert identity.full_push_pending(b.conn) is not None


def test_a_reset_asks_the_next_peer_for_a_full_push(tmp_path: Path) -> None:
    a = _make(tmp_path / "app.db")
    assert identity.full_push_pending(a.conn) is None
    a.reset_site()
    token = identity.full_push_pending(a.conn)
    assert token is not None
    identity.clear_full_push(a.conn, "another request")
    assert identity.full_push_pending(a.conn) == token
    identity.clear_full_push(a.conn, token)
    assert identity.full_push_pending(a.conn) is None


def test_two_connections_opening_a_copy_together_reset_it_once(tmp_path: Path) -> None:
    a = _make(tmp_path / "app.db")
    a.close()
    shutil.copy(tmp_path / "app.db", tmp_path / "copy.db")
    first = crsync.connect(tmp_path / "copy.db")
    second = crsync.connect(tmp_path / "copy.db")
    assert first.site_id == second.site_id
    sites = first.conn.execute("SELECT count(*) FROM crsync_sites").fetchone()[0]
    assert sites == 2  # the copy's own id and the original's, nothing more


def test_a_read_only_connection_does_not_write_the_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    a = _make(tmp_path / "app.db")
    site = a.site_id
    a.close()
    shutil.copy(tmp_path / "app.db", tmp_path / "copy.db")
    conn = sqlite3.connect(tmp_path / "copy.db", isolation_level=None)
    with monkeypatch.context() as m:
        m.setattr(crsync.Database, "_check_file_identity", lambda self: None)
        db = crsync.connect(conn)
    before = conn.execute("SELECT key, value FROM crsync_meta ORDER BY key").fetchall()
    conn.execute("PRAGMA query_only = 1")
    with caplog.at_level(logging.WARNING, logger="crsync"):
        db._check_file_identity()
    assert "identity_unchecked" in caplog.text
    assert db.site_id == site
    assert conn.execute("SELECT key, value FROM crsync_meta ORDER BY key").fetchall() == before
    conn.execute("PRAGMA query_only = 0")
    db._check_file_identity()  # the next writer resets it
    assert db.site_id != site


def test_in_memory_databases_have_no_file_identity() -> None:
    db = crsync.connect(":memory:")
    assert identity.stored(db.conn) is None

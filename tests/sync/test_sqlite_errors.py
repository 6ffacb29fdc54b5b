"""Which local SQLite failures a Peer retries: real errors from real SQLite, not made-up ones."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from crsync._sqlite_errors import error_name, is_transient, sqlite_cause
from crsync.errors import CrsyncError


def _error(fn: object) -> sqlite3.Error:
    try:
        fn()  # type: ignore[operator]
    except sqlite3.Error as exc:
        return exc
    raise AssertionError("no SQLite error")


def test_locked_busy_and_full_are_transient(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    app = sqlite3.connect(path, isolation_level=None)
    app.execute("PRAGMA journal_mode = WAL")
    app.execute("CREATE TABLE t (x)")
    other = sqlite3.connect(path, isolation_level=None, timeout=0.05)
    app.execute("BEGIN IMMEDIATE")
    busy = _error(lambda: other.execute("BEGIN IMMEDIATE"))
    app.execute("ROLLBACK")
    assert error_name(busy) == "SQLITE_BUSY" and is_transient(busy)

    # Disk full, as SQLite reports it when the file cannot grow (SQLITE_FULL).
    full_conn = sqlite3.connect(tmp_path / "full.db", isolation_level=None)
    full_conn.execute("CREATE TABLE t (x)")
    pages = full_conn.execute("PRAGMA page_count").fetchone()[0]
    full_conn.execute(f"PRAGMA max_page_count = {pages}")
    full = _error(lambda: full_conn.execute("INSERT INTO t VALUES (randomblob(100000))"))
    assert error_name(full) == "SQLITE_FULL" and is_transient(full)

    # Wrapped by crsync (CrsyncError from the sqlite3 error): still found and still transient.
    try:
        raise CrsyncError(f"cannot start a write transaction: {busy}") from busy
    except CrsyncError as wrapped:
        assert sqlite_cause(wrapped) is busy


def test_corrupt_readonly_and_bad_sql_are_not_transient(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    notadb = _error(lambda: sqlite3.connect(junk).execute("SELECT * FROM sqlite_master"))
    assert error_name(notadb) == "SQLITE_NOTADB" and not is_transient(notadb)

    path = tmp_path / "a.db"
    sqlite3.connect(path, isolation_level=None).execute("CREATE TABLE t (x)")
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    readonly = _error(lambda: ro.execute("INSERT INTO t VALUES (1)"))
    assert error_name(readonly).startswith("SQLITE_READONLY") and not is_transient(readonly)

    missing = _error(lambda: ro.execute("SELECT * FROM no_such_table"))
    assert error_name(missing) == "SQLITE_ERROR" and not is_transient(missing)


@pytest.mark.parametrize(
    "message,transient",
    [
        ("database is locked", True),
        ("disk I/O error", True),
        ("database or disk is full", True),
        ("no such table: t", False),
        ("database disk image is malformed", False),
    ],
)
def test_errors_without_a_code_are_sorted_by_message(message: str, transient: bool) -> None:
    assert is_transient(sqlite3.OperationalError(message)) is transient

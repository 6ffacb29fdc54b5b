"""Read-only opens: reading and the change feed work, nothing is written, writes fail clearly."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from core_helpers import SITE_A

import crsync
from crsync import ReadOnlyError


@pytest.fixture
def app_db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "app.db"
    db = crsync.connect(path)
    db.conn.execute("UPDATE crsync_sites SET site_id = ? WHERE ordinal = 0", (SITE_A,))
    db.conn.execute("CREATE TABLE t(id TEXT PRIMARY KEY NOT NULL, a, b)")
    db.track("t")
    db.conn.execute("INSERT INTO t VALUES ('r1', 1, 'x'), ('r2', 2, 'y')")
    assert db.db_version == 1  # sealed
    db.close()
    yield path


def digest(path: Path) -> str:
    """The database file and its WAL (the -shm holds readers' marks: readers write it)."""
    h = hashlib.sha256()
    for p in sorted(path.parent.glob(path.name + "*")):
        if p.name.endswith("-shm") or p.stat().st_size == 0:
            continue
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def ro_uri(path: Path) -> str:
    return f"file:{path}?mode=ro"


def test_read_only_uri_reads_the_feed(app_db: Path) -> None:
    rw_changes = [c.as_tuple() for c in crsync.connect(app_db).changes()]
    db = crsync.connect(ro_uri(app_db))
    try:
        assert db.read_only
        assert db.tracked_tables() == ["t"]
        assert db.db_version == 1
        assert [c.as_tuple() for c in db.changes()] == rw_changes
        assert db.changes_since(1) == (1, [])
        assert set(db.schema_fingerprints()) == {"t"}
        assert db.site_id == SITE_A
        assert db.conn.execute("SELECT count(*) FROM t").fetchone()[0] == 2
    finally:
        db.close()


def test_read_only_open_writes_nothing(app_db: Path) -> None:
    rw = crsync.connect(app_db)
    rw.conn.execute("INSERT INTO t VALUES ('r3', 3, 'z')")  # open version 2, unsealed
    before = digest(app_db)
    db = crsync.connect(ro_uri(app_db))
    db.changes()
    _ = db.db_version
    db.tracked_tables()
    db.close()
    assert digest(app_db) == before
    rw.close()


def test_read_only_reports_up_to_the_last_sealed_version(app_db: Path) -> None:
    rw = crsync.connect(app_db)
    ro = crsync.connect(ro_uri(app_db))
    try:
        rw.conn.execute("INSERT INTO t VALUES ('r3', 3, 'z')")
        # the open version cannot be sealed by a reader that cannot write: not reported yet,
        # so a cursor taken now still sees 'r3' later (the 'since' contract holds)
        upto, ch = ro.changes_since(0)
        assert upto == 1
        assert {crsync.unpack_pk(c.pk) for c in ch} == {("r1",), ("r2",)}
        assert rw.db_version == 2  # a read-write reader seals
        rw.conn.execute("INSERT INTO t VALUES ('r4', 4, 'w')")  # joins version 3
        upto2, ch2 = ro.changes_since(upto)
        assert upto2 == 2
        assert {crsync.unpack_pk(c.pk) for c in ch2} == {("r3",)}
    finally:
        ro.close()
        rw.close()


def test_wrapping_a_read_only_connection(app_db: Path) -> None:
    conn = sqlite3.connect(ro_uri(app_db), uri=True, isolation_level=None)
    db = crsync.connect(conn)
    assert db.read_only
    assert len(db.changes()) == 4
    db.close()
    conn.close()


def test_immutable_uri_is_read_only(app_db: Path) -> None:
    db = crsync.connect(f"file:{app_db}?immutable=1")
    assert db.read_only
    assert len(db.changes()) == 4
    with pytest.raises(ReadOnlyError):
        db.track("t")
    db.close()


def test_query_only_connection_is_read_only(app_db: Path) -> None:
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.execute("PRAGMA query_only = 1")
    db = crsync.connect(conn)
    assert db.read_only
    assert db.db_version == 1
    conn.close()


def test_file_without_write_permission_is_read_only(app_db: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    app_db.chmod(stat.S_IRUSR)
    try:
        db = crsync.connect(app_db)
        assert db.read_only
        assert len(db.changes()) == 4
        db.close()
    finally:
        app_db.chmod(stat.S_IRUSR | stat.S_IWUSR)


@pytest.mark.parametrize(
    "write",
    [
        lambda db: db.track("t"),
        lambda db: db.untrack("t"),
        lambda db: db.merge([("t", crsync.pack_pk(("r9",)), "a", 1, 1, 1, b"\x02" * 16, 1, 0)]),
        lambda db: db.reset_site(),
        lambda db: db.migrate("t").__enter__(),
    ],
    ids=["track", "untrack", "merge", "reset_site", "migrate"],
)
def test_writes_on_a_read_only_database_raise_read_only_error(app_db: Path, write: object) -> None:
    before = digest(app_db)
    db = crsync.connect(ro_uri(app_db))
    with pytest.raises(ReadOnlyError, match="read-only"):
        write(db)  # type: ignore[operator]
    db.close()
    assert digest(app_db) == before


def test_read_only_file_without_metadata_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t(id TEXT PRIMARY KEY NOT NULL)")
    conn.close()
    with pytest.raises(ReadOnlyError, match="no crsync metadata"):
        crsync.connect(ro_uri(path))


def test_file_uri_read_write_opens_the_named_file(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = crsync.connect(f"file:{path}")
    assert not db.read_only
    assert db.path == str(path)
    db.close()
    assert path.exists()


def test_wrapping_a_default_connection_of_a_crsync_file_stays_out_of_a_transaction(
    app_db: Path,
) -> None:
    """The read-only probe is a DML statement: Python's default transaction control would
    open a transaction before it, which then broke every write."""
    conn = sqlite3.connect(app_db)  # isolation_level "" (implicit BEGIN before DML)
    db = crsync.connect(conn)
    assert not db.read_only
    assert not conn.in_transaction
    db.track("t")
    conn.execute("INSERT INTO t VALUES ('r3', 3, 'z')")
    conn.commit()
    assert len(db.changes()) == 6
    conn.close()

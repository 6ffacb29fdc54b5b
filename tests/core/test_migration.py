"""Forward compatibility: changes for columns/tables a database does not have yet are kept
aside and applied after migrate()/track(); migrations keep clocks."""

from __future__ import annotations

from core_helpers import SITE_A, SITE_B, cells, dump, open_db, rows

import crsync
from crsync import pack_pk

OLD_T = "CREATE TABLE t(id TEXT PRIMARY KEY NOT NULL, a, b)"


def old_db(site: bytes = SITE_B) -> crsync.Database:
    db = open_db(site=site)
    db.conn.execute(OLD_T)
    db.track("t")
    return db


def new_db(site: bytes = SITE_A) -> crsync.Database:
    db = open_db(site=site)
    db.conn.execute(OLD_T)
    db.track("t")
    with db.migrate("t") as conn:
        conn.execute("ALTER TABLE t ADD COLUMN c TEXT")
    db.conn.execute("CREATE TABLE n(k INTEGER PRIMARY KEY NOT NULL, v)")
    db.track("n", integer_keys="app-assigned")
    return db


def test_changes_for_unknown_column_and_table_wait_then_apply_after_migration() -> None:
    a, b = new_db(), old_db()
    a.conn.execute("INSERT INTO t VALUES('r1', 1, 'x', 'new col')")
    a.conn.execute("INSERT INTO t VALUES('r2', 2, 'y', NULL)")
    a.conn.execute("INSERT INTO n VALUES(1, 'new table')")
    b.conn.execute("INSERT INTO t VALUES('b1', 3, 'z')")
    schema = b.conn.execute("SELECT name, sql FROM sqlite_schema ORDER BY name").fetchall()
    wins = b.merge(a.changes())
    assert wins == 4  # a and b of r1 and r2
    assert b.pending_count() == 3  # c of r1 and r2, v of n
    assert b.conn.execute("SELECT name, sql FROM sqlite_schema ORDER BY name").fetchall() == schema
    assert rows(b.conn, "t") == [
        (("str", "b1"), ("int", 3), ("str", "z")),
        (("str", "r1"), ("int", 1), ("str", "x")),
        (("str", "r2"), ("int", 2), ("str", "y")),
    ]
    # the old database syncs back what it can: the new database gets b1
    a.merge(b.changes())
    assert b.merge(a.changes()) == 0  # nothing new; the kept-aside ones stay kept aside
    assert b.pending_count() == 3

    with b.migrate("t") as conn:
        conn.execute("ALTER TABLE t ADD COLUMN c TEXT")
    assert b.pending_count() == 1
    b.conn.execute("CREATE TABLE n(k INTEGER PRIMARY KEY NOT NULL, v)")
    b.track("n", integer_keys="app-assigned")
    assert b.pending_count() == 0
    for table in ("t", "n"):
        assert rows(a.conn, table) == rows(b.conn, table)
    assert cells(a) == cells(b)
    a.merge(b.changes())
    assert cells(a) == cells(b)


def test_kept_aside_change_loses_to_a_newer_one_after_migration() -> None:
    a, b = new_db(), old_db()
    a.conn.execute("INSERT INTO t VALUES('r1', 1, 'x', 'first')")
    b.merge(a.changes())
    v = a.db_version
    a.conn.execute("UPDATE t SET c = 'second'")
    b.merge(a.changes(since=v))
    assert b.pending_count() == 2
    with b.migrate("t") as conn:
        conn.execute("ALTER TABLE t ADD COLUMN c TEXT")
    assert b.conn.execute("SELECT c FROM t").fetchone() == ("second",)
    assert b.pending_count() == 0


def test_pending_change_for_a_row_deleted_meanwhile_stays_deleted() -> None:
    a, b = new_db(), old_db()
    a.conn.execute("INSERT INTO t VALUES('r1', 1, 'x', 'c')")
    b.merge(a.changes())
    b.conn.execute("DELETE FROM t")
    with b.migrate("t") as conn:
        conn.execute("ALTER TABLE t ADD COLUMN c TEXT")
    assert rows(b.conn, "t") == []
    a.merge(b.changes())
    assert rows(a.conn, "t") == []


def test_migrate_keeps_existing_clocks_and_versions() -> None:
    b = old_db()
    b.conn.execute("INSERT INTO t VALUES('r1', 1, 'x')")
    b.conn.execute("UPDATE t SET a = 2")
    b.conn.execute("UPDATE t SET a = 3")
    before, v = {(c.cid, c.col_version, c.db_version, c.seq) for c in b.changes()}, b.db_version
    with b.migrate("t") as conn:
        conn.execute("ALTER TABLE t ADD COLUMN c DEFAULT 'd'")
    after = {(c.cid, c.col_version, c.db_version, c.seq) for c in b.changes()}
    assert after == before  # the new column equals its default: no clock, nothing new
    assert b.db_version == v
    b.conn.execute("UPDATE t SET c = 'set'")
    assert {(c.cid, c.col_version) for c in b.changes(since=v)} == {("c", 1)}
    assert ("a", 3) in {(c.cid, c.col_version) for c in b.changes()}


def test_migrate_gives_clocks_to_non_default_values_written_during_the_migration() -> None:
    b = old_db()
    b.conn.execute("INSERT INTO t VALUES('r1', 1, 'x')")
    b.conn.execute("INSERT INTO t VALUES('r2', 1, 'x')")
    with b.migrate("t") as conn:
        conn.execute("ALTER TABLE t ADD COLUMN c DEFAULT 0")
        conn.execute("UPDATE t SET c = 7 WHERE id = 'r2'")
    got = {(crsync.unpack_pk(c.pk)[0], c.cid, c.val) for c in b.changes() if c.cid == "c"}
    assert got == {("r2", "c", 7)}


def test_drop_column_inside_migrate() -> None:
    a, b = old_db(SITE_A), old_db(SITE_B)
    a.conn.execute("INSERT INTO t VALUES('r1', 1, 'x')")
    b.merge(a.changes())
    for db in (a, b):
        with db.migrate("t") as conn:
            conn.execute("ALTER TABLE t DROP COLUMN b")
    assert {c.cid for c in a.changes()} == {"a"}
    a.conn.execute("UPDATE t SET a = 10")
    a.conn.execute("INSERT INTO t VALUES('r2', 2)")
    b.merge(a.changes())
    assert rows(a.conn, "t") == rows(b.conn, "t")
    assert cells(a) == cells(b)
    # a column added later re-uses nothing of the dropped one
    with b.migrate("t") as conn:
        conn.execute("ALTER TABLE t ADD COLUMN b")
    assert {c.cid for c in b.changes()} == {"a"}
    b.conn.execute("UPDATE t SET b = 'again' WHERE id = 'r1'")
    assert {(c.cid, c.col_version) for c in b.changes() if c.cid == "b"} == {("b", 1)}


def test_migrate_failure_rolls_back_and_keeps_tracking() -> None:
    b = old_db()
    b.conn.execute("INSERT INTO t VALUES('r1', 1, 'x')")
    _ = b.db_version
    before = dump(b.conn)
    try:
        with b.migrate("t") as conn:
            conn.execute("ALTER TABLE t ADD COLUMN c")
            raise RuntimeError("app bug")
    except RuntimeError:
        pass
    assert dump(b.conn) == before
    b.conn.execute("UPDATE t SET a = 5")
    assert any(c.cid == "a" and c.val == 5 for c in b.changes())


def test_migrate_refuses_a_change_that_makes_the_table_unreplicable() -> None:
    b = old_db()
    before = dump(b.conn)
    try:
        with b.migrate("t") as conn:
            conn.execute("CREATE UNIQUE INDEX t_a ON t(a)")
    except crsync.SchemaError as exc:
        assert "UNIQUE" in str(exc)
    else:
        raise AssertionError("migrate accepted a UNIQUE index")
    assert dump(b.conn) == before
    assert b.tracked_tables() == ["t"]


def test_kept_aside_change_with_wrong_pk_arity_is_dropped_when_table_appears() -> None:
    b = old_db()
    good = ("n", pack_pk([1]), "v", "ok", 1, 1, SITE_A, 1, 0)
    wrong = ("n", pack_pk([1, 2]), "v", "bad", 1, 1, SITE_A, 1, 1)
    b.merge([good, wrong])
    assert b.pending_count() == 2
    b.conn.execute("CREATE TABLE n(k INTEGER PRIMARY KEY NOT NULL, v)")
    b.track("n", integer_keys="app-assigned")
    assert b.pending_count() == 0
    assert b.conn.execute("SELECT * FROM n").fetchall() == [(1, "ok")]


def test_migrate_of_untracked_table_is_refused() -> None:
    b = old_db()
    b.conn.execute("CREATE TABLE z(id TEXT PRIMARY KEY NOT NULL)")
    try:
        with b.migrate("z"):
            pass
    except crsync.NotTrackedError:
        pass
    else:
        raise AssertionError("migrate of an untracked table was accepted")


def test_track_again_applies_changes_kept_aside_that_have_become_applicable() -> None:
    """A run that stopped between a migration and applying kept changes catches up."""
    b = old_db()
    b.conn.execute(
        "INSERT INTO crsync_pending VALUES ('t', ?, 'a', 'late', 1, 1, ?, 1, 0)",
        (pack_pk(["r9"]), SITE_A),
    )
    b.track("t")
    assert b.pending_count() == 0
    assert b.conn.execute("SELECT id, a FROM t").fetchall() == [("r9", "late")]
